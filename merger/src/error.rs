//! Every way a merge can fail in this crate, and the one place each becomes a
//! `tonic::Status`.

use fanout_proto::any::UnpackError;
use fanout_runtime::deadline::TimeoutError;
use fanout_runtime::serve::ServeError;
use tonic::{Code, Status};

/// Errors of the merger crate: serving, connecting, the streaming contract and
/// the top-k merge. Merge code that must answer a `Status` converts with `?` or
/// `Status::from`; `impl From<MergerError> for Status` is the only mapping.
#[derive(Debug, thiserror::Error)]
pub enum MergerError {
    /// `MergerEndpoint::connect` was given something that is not a URL.
    #[error("invalid merger url {}: {reason}", fanout_proto::status::quote(.url))]
    InvalidUrl { url: String, reason: String },
    /// The gRPC server failed.
    #[error(transparent)]
    Serve(#[from] ServeError),

    // The streaming contract, as the merger service sees it.
    #[error("first message must be start")]
    FirstMessageNotStart,
    #[error("start sent twice")]
    StartSentTwice,
    #[error("merge input message without a kind")]
    InputWithoutKind,
    #[error("merge input ended before end")]
    InputEndedBeforeEnd,
    #[error("merge input broke, the client went away: {0}")]
    ClientWentAway(String),
    #[error("merge deadline exceeded")]
    DeadlineExceeded,
    #[error("input after end")]
    InputAfterEnd,
    #[error("merger overloaded: {limit} merges are open, the limit")]
    TooManySessions { limit: usize },
    #[error("unusable grpc-timeout: {0}")]
    InvalidTimeout(#[from] TimeoutError),

    // The streaming contract, as the root sees a remote merger.
    #[error("the merger sent a result before end")]
    ResultBeforeEnd,
    #[error("the merger closed the merge without a result")]
    ClosedWithoutResult,
    #[error("the merger sent a result without a payload")]
    ResultWithoutPayload,
    #[error("the merger sent an output message without a kind")]
    OutputWithoutKind,

    // The top-k search merge.
    #[error("merge start carries no request payload")]
    StartWithoutRequest,
    #[error("partial of shard {shard_id} carries no payload")]
    PartialWithoutPayload { shard_id: u32 },
    #[error("{0}")]
    WrongPayload(#[from] UnpackError),
    #[error("partial of shard {shard_id} is for a shard >= shard_count {shard_count}")]
    ShardOutOfRange { shard_id: u32, shard_count: u32 },
    #[error("hit {id:?} of shard {shard_id} has a NaN score")]
    NanScore { shard_id: u32, id: String },
}

impl From<MergerError> for Status {
    fn from(error: MergerError) -> Status {
        let code = match &error {
            MergerError::InvalidUrl { .. }
            | MergerError::FirstMessageNotStart
            | MergerError::StartSentTwice
            | MergerError::InputWithoutKind
            | MergerError::InvalidTimeout(_)
            | MergerError::StartWithoutRequest
            | MergerError::PartialWithoutPayload { .. }
            | MergerError::WrongPayload(_)
            | MergerError::ShardOutOfRange { .. }
            | MergerError::InputAfterEnd
            | MergerError::NanScore { .. } => Code::InvalidArgument,
            MergerError::TooManySessions { .. } => Code::ResourceExhausted,
            MergerError::InputEndedBeforeEnd => Code::Aborted,
            MergerError::ClientWentAway(_) => Code::Cancelled,
            MergerError::DeadlineExceeded => Code::DeadlineExceeded,
            MergerError::Serve(_)
            | MergerError::ResultBeforeEnd
            | MergerError::ClosedWithoutResult
            | MergerError::ResultWithoutPayload
            | MergerError::OutputWithoutKind => Code::Internal,
        };
        Status::new(code, error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_violations_map_to_their_codes() {
        let status = Status::from(MergerError::FirstMessageNotStart);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "first message must be start");
        assert_eq!(
            Status::from(MergerError::InputEndedBeforeEnd).code(),
            Code::Aborted
        );
        assert_eq!(
            Status::from(MergerError::ClientWentAway("reset".into())).code(),
            Code::Cancelled
        );
        assert_eq!(
            Status::from(MergerError::DeadlineExceeded).code(),
            Code::DeadlineExceeded
        );
        assert_eq!(
            Status::from(MergerError::ClosedWithoutResult).code(),
            Code::Internal
        );
    }
}
