//! How long a request may take. The overall timeout is the smallest of the
//! caller's `grpc-timeout`, the request's own limit (`timeout_millis` of a
//! search) and the root's default; the root keeps `deadline_margin` of it to
//! answer in, and gives the rest to the leaf and merger calls.

use std::time::Duration;

use tokio::time::Instant;
use tonic::metadata::MetadataMap;

use crate::error::RequestError;

/// The time frame of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestDeadline {
    pub started_at: Instant,
    /// When the leaf and merger calls must be over.
    pub deadline: Instant,
}

impl RequestDeadline {
    /// Reads the caller's `grpc-timeout` (malformed: INVALID_ARGUMENT) and
    /// combines it with the request's limit and the root's settings.
    pub fn for_request(
        started_at: Instant,
        metadata: &MetadataMap,
        request_timeout: Option<Duration>,
        default_timeout: Duration,
        deadline_margin: Duration,
    ) -> Result<RequestDeadline, RequestError> {
        let caller_timeout = fanout_runtime::deadline::timeout_from_metadata(metadata)
            .map_err(|error| RequestError::InvalidRequest(error.to_string()))?;
        let budget = leaf_budget(
            caller_timeout,
            request_timeout,
            default_timeout,
            deadline_margin,
        );
        Ok(RequestDeadline {
            started_at,
            deadline: started_at + budget,
        })
    }

    /// Time left before the deadline (zero once it has passed).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    pub fn has_passed(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// The same start, ending `fraction` of the way to the deadline.
    pub fn shortened_to(&self, fraction: f64) -> RequestDeadline {
        let budget = self.deadline.saturating_duration_since(self.started_at);
        RequestDeadline {
            started_at: self.started_at,
            deadline: self.started_at + budget.mul_f64(fraction.clamp(0.0, 1.0)),
        }
    }
}

/// The time leaves and mergers get: the smallest of the limits, less the margin.
pub fn leaf_budget(
    caller_timeout: Option<Duration>,
    request_timeout: Option<Duration>,
    default_timeout: Duration,
    deadline_margin: Duration,
) -> Duration {
    let overall = [caller_timeout, request_timeout, Some(default_timeout)]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(default_timeout);
    overall.saturating_sub(deadline_margin)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: Duration = Duration::from_secs(10);
    const MARGIN: Duration = Duration::from_millis(5);

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    #[test]
    fn the_smallest_limit_wins_minus_the_margin() {
        assert_eq!(leaf_budget(None, None, DEFAULT, MARGIN), ms(9_995));
        assert_eq!(leaf_budget(Some(ms(200)), None, DEFAULT, MARGIN), ms(195));
        assert_eq!(leaf_budget(None, Some(ms(300)), DEFAULT, MARGIN), ms(295));
        assert_eq!(
            leaf_budget(Some(ms(200)), Some(ms(300)), DEFAULT, MARGIN),
            ms(195)
        );
        assert_eq!(
            leaf_budget(Some(ms(900)), Some(ms(300)), DEFAULT, MARGIN),
            ms(295)
        );
        assert_eq!(
            leaf_budget(Some(ms(60_000)), None, DEFAULT, MARGIN),
            ms(9_995)
        );
    }

    #[test]
    fn a_timeout_within_the_margin_leaves_nothing() {
        assert_eq!(
            leaf_budget(Some(ms(3)), None, DEFAULT, MARGIN),
            Duration::ZERO
        );
    }

    #[tokio::test(start_paused = true)]
    async fn reads_grpc_timeout_from_metadata() {
        let started_at = Instant::now();
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", "100m".parse().unwrap());
        let deadline =
            RequestDeadline::for_request(started_at, &metadata, Some(ms(500)), DEFAULT, MARGIN)
                .unwrap();
        assert_eq!(deadline.deadline - started_at, ms(95));
        assert_eq!(deadline.remaining(), ms(95));
        tokio::time::advance(ms(95)).await;
        assert!(deadline.has_passed());
        assert_eq!(deadline.shortened_to(0.8).deadline - started_at, ms(76));
    }

    #[test]
    fn a_malformed_grpc_timeout_is_an_invalid_argument() {
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", "soon".parse().unwrap());
        let error = RequestDeadline::for_request(Instant::now(), &metadata, None, DEFAULT, MARGIN)
            .unwrap_err();
        assert!(matches!(error, RequestError::InvalidRequest(_)), "{error}");
        assert_eq!(
            tonic::Status::from(error).code(),
            tonic::Code::InvalidArgument
        );
    }
}
