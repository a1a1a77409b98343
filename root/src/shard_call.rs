//! One shard's part of a request: `Leaf/Execute` on the best replica, and on
//! a retryable failure on the next best one not yet tried, until one answers,
//! the replicas run out or the deadline passes. Both phases of a search use it.
//!
//! - Retryable (UNAVAILABLE, RESOURCE_EXHAUSTED, ABORTED, a leaf's
//!   `fanout-retryable: true`, or a failure of the connection itself): try
//!   another replica.
//! - About the request (INVALID_ARGUMENT, OUT_OF_RANGE, PERMISSION_DENIED,
//!   UNAUTHENTICATED): every replica would say the same; the caller gets the
//!   status as is, at once.
//! - Any other error (INTERNAL, FAILED_PRECONDITION, ...): the shard failed;
//!   not retried, the coverage policy decides.
//! - The deadline passed (tonic's expired timeout, which it reports as
//!   CANCELLED, or DEADLINE_EXCEEDED from the leaf): the shard timed out.

use std::error::Error as _;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fanout_proto::Any;
use fanout_proto::retry::is_retryable;
use fanout_proto::v1::{ExecuteRequest, ExecuteResponse};
use tokio::time::Instant;
use tonic::{Code, Status};
use tracing::Instrument;

use crate::replica::ReplicaSet;
use crate::selector::AttemptFailure;

/// One shard call to make.
pub struct ShardCall<'a> {
    pub replica_set: &'a ReplicaSet,
    pub payload: &'a Any,
    pub request_id: &'a str,
    pub deadline: Instant,
    /// Replica to try first (phase two goes back to the one that answered
    /// phase one); `None` lets the selector choose.
    pub preferred_replica: Option<usize>,
    /// Counts the attempts sent; still readable when the call is cancelled.
    pub attempts: &'a AtomicU32,
}

/// A replica's answer.
#[derive(Debug)]
pub struct ShardAnswer {
    pub response: ExecuteResponse,
    pub replica_index: usize,
    /// 0 for the first attempt.
    pub attempt: u32,
    /// From the shard's first attempt to this answer.
    pub latency: Duration,
}

/// How a shard call ended.
#[derive(Debug)]
pub enum ShardCallOutcome {
    Answered(ShardAnswer),
    /// Every replica tried failed, or one failed in a way not worth retrying;
    /// the last status.
    Failed(Status),
    /// A leaf rejected the request itself: the caller's error, not the shard's.
    Rejected(Status),
    /// The deadline passed first.
    TimedOut,
}

enum AttemptError {
    TimedOut,
    Retryable,
    RequestRejected,
    ShardFailed,
}

/// Calls the shard, failing over between its replicas.
pub async fn call_shard_with_failover(call: ShardCall<'_>) -> ShardCallOutcome {
    let ShardCall {
        replica_set,
        payload,
        request_id,
        deadline,
        preferred_replica,
        attempts,
    } = call;
    let shard_id = replica_set.shard_id;
    let selector = &replica_set.selector;
    let first_attempt_at = Instant::now();
    let mut tried: Vec<usize> = Vec::with_capacity(replica_set.replicas.len());
    let mut last_failure: Option<Status> = None;
    loop {
        let preferred = preferred_replica
            .filter(|index| tried.is_empty() && *index < replica_set.replicas.len());
        let Some(replica_index) = preferred.or_else(|| selector.choose(&tried)) else {
            return ShardCallOutcome::Failed(last_failure.unwrap_or_else(|| {
                Status::unavailable(format!("shard {shard_id} has no replicas"))
            }));
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return ShardCallOutcome::TimedOut;
        }
        let attempt = tried.len() as u32;
        tried.push(replica_index);
        attempts.fetch_add(1, Ordering::Relaxed);
        let replica = &replica_set.replicas[replica_index];
        let mut request = tonic::Request::new(ExecuteRequest {
            payload: Some(payload.clone()),
            shard_id,
            attempt,
            request_id: request_id.to_owned(),
        });
        request.set_timeout(remaining);

        let span =
            tracing::debug_span!("shard_attempt", shard_id, attempt, replica = %replica.address);
        let recorder = selector.begin_attempt(replica_index);
        let mut client = replica.leaf_client();
        let result = tokio::time::timeout_at(deadline, client.execute(request))
            .instrument(span.clone())
            .await;
        let status = match result {
            Ok(Ok(response)) => {
                recorder.succeeded();
                return ShardCallOutcome::Answered(ShardAnswer {
                    response: response.into_inner(),
                    replica_index,
                    attempt,
                    latency: first_attempt_at.elapsed(),
                });
            }
            Ok(Err(status)) => status,
            Err(_elapsed) => {
                recorder.failed(AttemptFailure::TimedOut);
                return ShardCallOutcome::TimedOut;
            }
        };
        let code = status.code();
        let message = status.message();
        match classify(&status, deadline) {
            AttemptError::TimedOut => {
                recorder.failed(AttemptFailure::TimedOut);
                return ShardCallOutcome::TimedOut;
            }
            AttemptError::Retryable => {
                recorder.failed(AttemptFailure::Retryable);
                tracing::debug!(parent: &span, ?code, message, "attempt failed; trying another replica");
                last_failure = Some(status);
            }
            AttemptError::RequestRejected => {
                recorder.failed(AttemptFailure::Answered);
                tracing::debug!(parent: &span, ?code, message, "the leaf rejected the request");
                return ShardCallOutcome::Rejected(status);
            }
            AttemptError::ShardFailed => {
                recorder.failed(AttemptFailure::Answered);
                tracing::debug!(parent: &span, ?code, message, "attempt failed; not retryable");
                return ShardCallOutcome::Failed(status);
            }
        }
    }
}

fn classify(status: &Status, deadline: Instant) -> AttemptError {
    let code = status.code();
    if is_expired_timeout(status)
        || code == Code::DeadlineExceeded
        || (code == Code::Cancelled && Instant::now() >= deadline)
    {
        return AttemptError::TimedOut;
    }
    if is_retryable(status) || is_transport_failure(status) {
        return AttemptError::Retryable;
    }
    match code {
        Code::InvalidArgument
        | Code::OutOfRange
        | Code::PermissionDenied
        | Code::Unauthenticated => AttemptError::RequestRejected,
        _ => AttemptError::ShardFailed,
    }
}

/// Whether tonic ended the call because its own timeout expired (it reports
/// that as CANCELLED "Timeout expired").
pub fn is_expired_timeout(status: &Status) -> bool {
    let mut source = status.source();
    while let Some(error) = source {
        if error.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// Whether the status was made on this side of the wire from a transport
/// error (connection refused, reset, closed mid-call) rather than received
/// from the leaf: a status from the wire carries no source error.
fn is_transport_failure(status: &Status) -> bool {
    status.source().is_some() && !is_expired_timeout(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn far_deadline() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn classifies_statuses_from_the_wire() {
        let deadline = far_deadline();
        assert!(matches!(
            classify(&Status::unavailable("down"), deadline),
            AttemptError::Retryable
        ));
        assert!(matches!(
            classify(&Status::aborted("x"), deadline),
            AttemptError::Retryable
        ));
        assert!(matches!(
            classify(&Status::invalid_argument("bad query"), deadline),
            AttemptError::RequestRejected
        ));
        assert!(matches!(
            classify(&Status::internal("bug"), deadline),
            AttemptError::ShardFailed
        ));
        assert!(matches!(
            classify(&Status::deadline_exceeded("late"), deadline),
            AttemptError::TimedOut
        ));
        assert!(matches!(
            classify(&Status::cancelled("x"), deadline),
            AttemptError::ShardFailed
        ));
        let retryable_internal = fanout_proto::retry::with_retryable(Status::internal("x"), true);
        assert!(matches!(
            classify(&retryable_internal, deadline),
            AttemptError::Retryable
        ));
    }

    #[test]
    fn an_expired_tonic_timeout_is_a_time_out_and_a_transport_error_is_retryable() {
        let deadline = far_deadline();
        let expired = Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(expired.code(), Code::Cancelled);
        assert!(is_expired_timeout(&expired));
        assert!(matches!(
            classify(&expired, deadline),
            AttemptError::TimedOut
        ));

        let mut reset = Status::unknown("connection closed before message completed");
        reset.set_source(Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert!(is_transport_failure(&reset));
        assert!(matches!(
            classify(&reset, deadline),
            AttemptError::Retryable
        ));
    }
}
