//! The one error type of the leaf crate, and its mapping to `tonic::Status`.
//!
//! Every failure of the index build, of opening a shard and of serving a call
//! is a [`LeafError`]. [`From<LeafError> for tonic::Status`] below is the only
//! place where leaf errors become gRPC statuses.

use std::path::PathBuf;
use std::time::Duration;

use fanout_proto::search::limits::LimitExceeded;
use fanout_proto::status::{bounded, quote};
use fanout_runtime::serve::ServeError;

/// Everything that can go wrong in the leaf crate.
#[derive(Debug, thiserror::Error)]
pub enum LeafError {
    // ---- the caller's request is wrong (INVALID_ARGUMENT) ----
    /// A natural-mode query held nothing but stop words and punctuation.
    #[error("query has no searchable terms")]
    QueryHasNoSearchableTerms,

    /// A syntax-mode query does not parse.
    #[error("{}", describe_syntax_error(.message, *.position))]
    QuerySyntax {
        message: String,
        /// Byte offset in the query where the parser gave up, when known.
        position: Option<usize>,
    },

    /// The query is over one of the query limits (bytes, depth, clauses,
    /// distinct terms).
    #[error("{0}")]
    QueryLimit(#[from] LimitExceeded),

    /// The query parses but asks for something this index cannot do
    /// (`title:*` needs a fast field, say).
    #[error("unsupported query: {0}")]
    UnsupportedQuery(String),

    /// A filter names a field that cannot be filtered on.
    #[error("cannot filter on field {}: only \"id\" can be filtered on", quote(.field))]
    UnknownFilterField { field: String },

    /// A fetch asks for a stored field the schema does not have.
    #[error("unknown stored field {}: expected one of id, title, text", quote(.field))]
    UnknownStoredField { field: String },

    /// A request field is out of range (k, search_after, ...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// Execute was sent a payload this leaf does not understand.
    #[error("unsupported payload type {}: this leaf understands {supported}", quote(.type_url))]
    UnsupportedPayload { type_url: String, supported: String },

    /// The payload's bytes do not decode as the message its type URL names.
    #[error("malformed payload: {0}")]
    MalformedPayload(String),

    // ---- the request went to the wrong place (FAILED_PRECONDITION) ----
    /// The root believes this leaf serves another shard.
    #[error("this leaf serves shard {served} but the request is for shard {requested}")]
    WrongShard { served: u32, requested: u32 },

    // ---- the leaf is too busy (RESOURCE_EXHAUSTED, retryable) ----
    #[error("leaf overloaded: {in_flight} calls in flight, limit {limit}")]
    Overloaded { in_flight: u32, limit: u32 },

    /// The work would wait in the queue longer than the leaf allows, or
    /// longer than the caller's deadline leaves.
    #[error(
        "leaf overloaded: the queue's expected wait of {} ms is more than {} ({} ms)",
        .expected_wait.as_millis(), .bound, .allowed.as_millis()
    )]
    QueueTooLong {
        expected_wait: Duration,
        allowed: Duration,
        /// "the queue time limit" or "the time the deadline leaves".
        bound: &'static str,
    },

    // ---- the caller's deadline (DEADLINE_EXCEEDED) ----
    /// The deadline passed while the work waited in the queue; it was not started.
    #[error("the deadline passed after {} ms in the leaf's queue; the work was not started", .queued.as_millis())]
    DeadlineExpiredInQueue { queued: Duration },

    // ---- an injected fault (UNAVAILABLE, retryable) ----
    /// `--fault unavailable=P` drew this call.
    #[error("injected fault: unavailable")]
    InjectedUnavailable,

    // ---- the caller went away (CANCELLED) ----
    #[error("the call was cancelled before its work finished")]
    Cancelled,

    // ---- configuration ----
    #[error("invalid leaf configuration: {0}")]
    InvalidConfig(String),

    // ---- index build ----
    #[error("invalid index build options: {0}")]
    InvalidBuildOptions(String),

    /// A bad input line under [`crate::BadLinePolicy::Fail`].
    #[error("bad input line {line} of {}: {reason}", path.display())]
    BadLine {
        path: PathBuf,
        line: u64,
        reason: String,
    },

    #[error("output directory {} already holds files; choose an empty or new directory", .0.display())]
    OutputNotEmpty(PathBuf),

    #[error("input {} holds no indexable documents", .0.display())]
    NoDocuments(PathBuf),

    // ---- index files ----
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("manifest {}: {reason}", path.display())]
    Manifest { path: PathBuf, reason: String },

    #[error("global statistics {}: {reason}", path.display())]
    GlobalStatistics { path: PathBuf, reason: String },

    #[error(
        "global statistics {} belong to generation {stats_generation:?} but the shard is generation {shard_generation:?}; rebuild the index",
        path.display()
    )]
    GenerationMismatch {
        path: PathBuf,
        stats_generation: String,
        shard_generation: String,
    },

    #[error("the index does not have the fanout schema: {0}")]
    Schema(String),

    #[error("tantivy: {0}")]
    Tantivy(#[from] tantivy::TantivyError),

    // ---- serving ----
    /// The work failed on a bug (it panicked; the leaf's log has the panic).
    #[error("the search failed on an internal error; the leaf's log has it")]
    WorkerLost,

    #[error("cannot start the search thread pool: {0}")]
    ThreadPool(#[from] rayon::ThreadPoolBuildError),

    #[error(transparent)]
    Serve(#[from] ServeError),
}

fn describe_syntax_error(message: &str, position: Option<usize>) -> String {
    match position {
        Some(position) => format!("query syntax error at position {position}: {message}"),
        None => format!("query syntax error: {message}"),
    }
}

impl LeafError {
    /// An I/O error on `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> LeafError {
        LeafError::Io {
            path: path.into(),
            source,
        }
    }
}

/// The single mapping from leaf errors to gRPC statuses.
impl From<LeafError> for tonic::Status {
    fn from(error: LeafError) -> tonic::Status {
        let message = bounded(error.to_string());
        match error {
            LeafError::QueryHasNoSearchableTerms
            | LeafError::QuerySyntax { .. }
            | LeafError::QueryLimit(_)
            | LeafError::UnsupportedQuery(_)
            | LeafError::UnknownFilterField { .. }
            | LeafError::UnknownStoredField { .. }
            | LeafError::InvalidRequest(_)
            | LeafError::UnsupportedPayload { .. }
            | LeafError::MalformedPayload(_) => tonic::Status::invalid_argument(message),
            LeafError::WrongShard { .. } => tonic::Status::failed_precondition(message),
            LeafError::Overloaded { .. } | LeafError::QueueTooLong { .. } => {
                tonic::Status::resource_exhausted(message)
            }
            LeafError::DeadlineExpiredInQueue { .. } => tonic::Status::deadline_exceeded(message),
            LeafError::InjectedUnavailable => tonic::Status::unavailable(message),
            LeafError::Cancelled => tonic::Status::cancelled(message),
            LeafError::InvalidConfig(_)
            | LeafError::InvalidBuildOptions(_)
            | LeafError::BadLine { .. }
            | LeafError::OutputNotEmpty(_)
            | LeafError::NoDocuments(_)
            | LeafError::Io { .. }
            | LeafError::Manifest { .. }
            | LeafError::GlobalStatistics { .. }
            | LeafError::GenerationMismatch { .. }
            | LeafError::Schema(_)
            | LeafError::Tantivy(_)
            | LeafError::WorkerLost
            | LeafError::ThreadPool(_)
            | LeafError::Serve(_) => tonic::Status::internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn statuses_follow_the_kind_of_error() {
        let cases = [
            (LeafError::QueryHasNoSearchableTerms, Code::InvalidArgument),
            (
                LeafError::QuerySyntax {
                    message: "unbalanced parenthesis".into(),
                    position: Some(4),
                },
                Code::InvalidArgument,
            ),
            (
                LeafError::UnsupportedPayload {
                    type_url: "type.googleapis.com/x.Y".into(),
                    supported: "a, b".into(),
                },
                Code::InvalidArgument,
            ),
            (
                LeafError::WrongShard {
                    served: 1,
                    requested: 2,
                },
                Code::FailedPrecondition,
            ),
            (
                LeafError::Overloaded {
                    in_flight: 9,
                    limit: 8,
                },
                Code::ResourceExhausted,
            ),
            (LeafError::InjectedUnavailable, Code::Unavailable),
            (
                LeafError::io("/x", std::io::Error::other("disk on fire")),
                Code::Internal,
            ),
        ];
        for (error, code) in cases {
            let status = tonic::Status::from(error);
            assert_eq!(status.code(), code, "{}", status.message());
        }
    }

    #[test]
    fn syntax_errors_carry_their_position() {
        let error = LeafError::QuerySyntax {
            message: "expected a closing quote".into(),
            position: Some(7),
        };
        assert_eq!(
            error.to_string(),
            "query syntax error at position 7: expected a closing quote"
        );
    }
}
