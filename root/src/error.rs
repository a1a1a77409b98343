//! The root's two error types: [`RootError`], what stops a root from
//! starting or serving (bad configuration), and [`RequestError`], what ends
//! one request, with the one place it becomes a `tonic::Status`.

use std::path::PathBuf;

use fanout_proto::status::bounded;
use tonic::{Code, Status};

/// What stops a root from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("cannot read topology file {path}: {source}")]
    TopologyRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid topology: {reason}")]
    TopologyParse { reason: String },
    #[error("invalid topology: no shards")]
    NoShards,
    #[error("invalid topology: shard {shard_id} appears more than once")]
    DuplicateShard { shard_id: u32 },
    #[error("invalid topology: shard {shard_id} is missing (shard ids must be 0..{shard_count})")]
    MissingShard { shard_id: u32, shard_count: u32 },
    #[error("invalid topology: shard {shard_id} has no replicas")]
    NoReplicas { shard_id: u32 },
    #[error("invalid topology: shard {shard_id} lists replica {address:?} twice")]
    DuplicateReplica { shard_id: u32, address: String },
    #[error("invalid topology: shard {shard_id} replica {address:?}: {reason}")]
    BadReplicaAddress {
        shard_id: u32,
        address: String,
        reason: String,
    },
    #[error("invalid --shard {flag:?}: {reason}")]
    BadShardFlag { flag: String, reason: String },
    #[error("invalid root configuration: {reason}")]
    Config { reason: String },
    #[error("cannot reach the merger at {url:?}: {reason}")]
    MergerConnect { url: String, reason: String },
    #[error("cannot serve: {0}")]
    Serve(#[from] fanout_runtime::serve::ServeError),
}

/// What ends one request; answered to its caller as a status.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The request is malformed; nothing was sent to the leaves.
    #[error("{0}")]
    InvalidRequest(String),
    /// Shards failed and the caller's policy does not accept the coverage left.
    #[error("{0}")]
    ShardsUnavailable(String),
    /// The deadline passed before enough shards answered.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A leaf rejected the request itself (INVALID_ARGUMENT, say): the
    /// caller gets the leaf's status unchanged.
    #[error("leaf error: {}", .0.message())]
    LeafRejected(Status),
    /// The merger failed; the caller gets its status unchanged.
    #[error("merger error: {}", .0.message())]
    Merger(Status),
    /// The merger answered something the root cannot read.
    #[error("{0}")]
    Internal(String),
    /// The request crashed the leaf replicas it reached, or is quarantined
    /// for having done so (see `crash.rs`).
    #[error("{0}")]
    RequestOfDeath(String),
}

impl From<RequestError> for Status {
    fn from(error: RequestError) -> Status {
        match error {
            RequestError::InvalidRequest(message) => Status::invalid_argument(bounded(message)),
            RequestError::ShardsUnavailable(message) => Status::unavailable(bounded(message)),
            RequestError::DeadlineExceeded(message) => Status::deadline_exceeded(bounded(message)),
            RequestError::LeafRejected(status) => status_for_caller(status),
            RequestError::Merger(status) => merger_status_for_caller(status),
            RequestError::Internal(message) | RequestError::RequestOfDeath(message) => {
                Status::internal(bounded(message))
            }
        }
    }
}

/// A status from a leaf or the merger as the caller gets it: its code and
/// (bounded) message, without the transport's error chain and metadata.
fn status_for_caller(status: Status) -> Status {
    let status = status_without_expired_cancellation(status);
    Status::new(status.code(), bounded(status.message().to_owned()))
}

/// The merger's failure as the caller sees it. A CANCELLED from the merger
/// call while the caller is still waiting means the call to the merger broke
/// (its connection reset it), not that the caller went away: UNAVAILABLE.
fn merger_status_for_caller(status: Status) -> Status {
    let status = status_for_caller(status);
    if status.code() == Code::Cancelled {
        return Status::unavailable(bounded(format!(
            "the merge was cut off: {}",
            status.message()
        )));
    }
    status
}

/// tonic reports a call whose own timeout expired as CANCELLED; a caller
/// must see DEADLINE_EXCEEDED instead.
fn status_without_expired_cancellation(status: Status) -> Status {
    if status.code() == Code::Cancelled && fanout_proto::status::is_expired_timeout(&status) {
        return Status::deadline_exceeded(format!("deadline exceeded: {}", status.message()));
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_errors_map_to_their_codes() {
        let status = Status::from(RequestError::InvalidRequest("query is empty".into()));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "query is empty");
        let status = Status::from(RequestError::DeadlineExceeded("late".into()));
        assert_eq!(status.code(), Code::DeadlineExceeded);
        let status = Status::from(RequestError::LeafRejected(Status::invalid_argument("bad")));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "bad");
    }

    #[test]
    fn a_cancelled_merge_reaches_a_waiting_caller_as_unavailable() {
        let status = Status::from(RequestError::Merger(Status::cancelled("gone")));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "the merge was cut off: gone");
    }

    #[test]
    fn messages_from_leaves_are_bounded() {
        let status = Status::from(RequestError::LeafRejected(Status::invalid_argument(
            "x".repeat(100_000),
        )));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().len() <= fanout_proto::status::MAX_MESSAGE_BYTES);
    }
}
