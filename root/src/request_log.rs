//! One log line per request at the root, in its request span (so a JSON
//! line carries the span's `request_id` and `trace_id`): at INFO with the
//! outcome (status, coverage, hedges and retries, from the result cache or
//! not, took), at WARN instead
//! when the request took longer than the slow threshold, with every shard's
//! timing. Target `fanout_root::requests`: `RUST_LOG=info,fanout_root::requests=warn`
//! keeps only the slow and failed ones.

use std::fmt::Write as _;
use std::time::Duration;

use fanout_proto::v1::{Coverage, ShardTiming};
use tonic::Status;
use tracing::Level;

/// When a request counts as slow (`--slow-request-ms`); `None`: never.
#[derive(Debug, Clone, Copy)]
pub struct RequestLog {
    pub slow_threshold: Option<Duration>,
}

impl Default for RequestLog {
    fn default() -> Self {
        RequestLog {
            slow_threshold: Some(Duration::from_secs(1)),
        }
    }
}

impl RequestLog {
    fn is_slow(&self, took: Duration) -> bool {
        self.slow_threshold
            .is_some_and(|threshold| took >= threshold)
    }

    /// A request answered OK.
    pub fn answered(
        &self,
        span: &tracing::Span,
        method: &'static str,
        coverage: Option<&Coverage>,
        shards: &[ShardTiming],
        cached: bool,
        took: Duration,
    ) {
        let (shards_answered, shards_total, partial) = coverage.map_or((0, 0, false), |coverage| {
            (
                coverage.shards_answered,
                coverage.shards_total,
                coverage.partial,
            )
        });
        let hedges: u32 = shards
            .iter()
            .map(|shard| shard.hedges + shard.fetch_hedges)
            .sum();
        let hedges_won: u32 = shards
            .iter()
            .map(|shard| shard.hedges_won + shard.fetch_hedges_won)
            .sum();
        let retries: u32 = shards
            .iter()
            .map(|shard| shard.retries + shard.fetch_retries)
            .sum();
        let took_ms = took.as_secs_f64() * 1e3;
        // The same fields at either level; the slow line adds the shards'.
        macro_rules! answered_line {
            ($level:expr, $($rest:tt)*) => {
                tracing::event!(
                    target: "fanout_root::requests",
                    parent: span,
                    $level,
                    method,
                    code = "OK",
                    shards_answered,
                    shards_total,
                    partial,
                    hedges,
                    hedges_won,
                    retries,
                    cached,
                    took_ms,
                    $($rest)*
                )
            };
        }
        if self.is_slow(took) {
            answered_line!(Level::WARN, shards = %shard_timings(shards), "slow request");
        } else {
            answered_line!(Level::INFO, "request answered");
        }
    }

    /// A request answered with an error status.
    pub fn failed(
        &self,
        span: &tracing::Span,
        method: &'static str,
        status: &Status,
        took: Duration,
    ) {
        let code = fanout_proto::status::code_name(status.code());
        let took_ms = took.as_secs_f64() * 1e3;
        let message = status.message();
        if self.is_slow(took) {
            tracing::warn!(target: "fanout_root::requests", parent: span, method, code, message, took_ms, "slow request failed");
        } else {
            tracing::info!(target: "fanout_root::requests", parent: span, method, code, message, took_ms, "request failed");
        }
    }
}

/// Every shard's timing in one field: `shard=replica attempts latency_ms
/// (fetch fetch_ms)`, `;` between shards.
fn shard_timings(shards: &[ShardTiming]) -> String {
    let mut text = String::new();
    for (index, shard) in shards.iter().enumerate() {
        if index > 0 {
            text.push_str("; ");
        }
        let _ = write!(
            text,
            "{}={} attempts={} hedges={} retries={} latency_ms={:.2}",
            shard.shard_id,
            if shard.replica.is_empty() {
                "-"
            } else {
                &shard.replica
            },
            shard.attempts,
            shard.hedges,
            shard.retries,
            shard.latency_micros as f64 / 1e3,
        );
        if shard.fetch_attempts > 0 {
            let _ = write!(
                text,
                " fetch_ms={:.2}",
                shard.fetch_latency_micros as f64 / 1e3
            );
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_means_at_or_over_the_threshold() {
        let log = RequestLog {
            slow_threshold: Some(Duration::from_millis(100)),
        };
        assert!(!log.is_slow(Duration::from_millis(99)));
        assert!(log.is_slow(Duration::from_millis(100)));
        let never = RequestLog {
            slow_threshold: None,
        };
        assert!(!never.is_slow(Duration::from_secs(3600)));
    }

    #[test]
    fn shard_timings_name_every_shard() {
        let shards = [
            ShardTiming {
                shard_id: 0,
                replica: "http://127.0.0.1:7001".into(),
                attempts: 2,
                hedges: 1,
                latency_micros: 1500,
                fetch_attempts: 1,
                fetch_latency_micros: 300,
                ..ShardTiming::default()
            },
            ShardTiming {
                shard_id: 1,
                ..ShardTiming::default()
            },
        ];
        assert_eq!(
            shard_timings(&shards),
            "0=http://127.0.0.1:7001 attempts=2 hedges=1 retries=0 latency_ms=1.50 fetch_ms=0.30; \
             1=- attempts=0 hedges=0 retries=0 latency_ms=0.00"
        );
    }
}
