//! The root's one error type, and the one place it becomes a `tonic::Status`.

use std::path::PathBuf;

use tonic::{Code, Status};

/// Everything that can go wrong in the root: bad configuration (before the
/// server starts) and failed requests (answered to the caller as a status).
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    // ---- configuration ----
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

    // ---- requests ----
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
}

impl From<RootError> for Status {
    fn from(error: RootError) -> Status {
        match error {
            RootError::InvalidRequest(message) => Status::invalid_argument(message),
            RootError::ShardsUnavailable(message) => Status::unavailable(message),
            RootError::DeadlineExceeded(message) => Status::deadline_exceeded(message),
            RootError::LeafRejected(status) | RootError::Merger(status) => {
                status_without_expired_cancellation(status)
            }
            RootError::Internal(message) => Status::internal(message),
            configuration => Status::failed_precondition(configuration.to_string()),
        }
    }
}

/// tonic reports a call whose own timeout expired as CANCELLED; a caller
/// must see DEADLINE_EXCEEDED instead.
fn status_without_expired_cancellation(status: Status) -> Status {
    if status.code() == Code::Cancelled && crate::shard_call::is_expired_timeout(&status) {
        return Status::deadline_exceeded(format!("deadline exceeded: {}", status.message()));
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_errors_map_to_their_codes() {
        let status = Status::from(RootError::InvalidRequest("query is empty".into()));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "query is empty");
        let status = Status::from(RootError::DeadlineExceeded("late".into()));
        assert_eq!(status.code(), Code::DeadlineExceeded);
        let status = Status::from(RootError::LeafRejected(Status::invalid_argument("bad")));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "bad");
    }

    #[test]
    fn a_plain_cancellation_from_a_merger_stays_cancelled() {
        let status = Status::from(RootError::Merger(Status::cancelled("gone")));
        assert_eq!(status.code(), Code::Cancelled);
    }
}
