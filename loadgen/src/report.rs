//! The result of a run: [`RunReport`], which is also the JSON report
//! (`--json`, schema documented in `loadgen/REPORT_SCHEMA.md`), and its text
//! summary in the shape ghz users know.
//!
//! Every latency is in whole microseconds and measured from the request's
//! intended send time, so it includes any time the request spent waiting
//! for the generator or the server to catch up.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::error::LoadgenError;
use crate::queries::{QueryFormat, QueryOrder};
use crate::schedule::ArrivalProcess;
use crate::target::TargetKind;

/// Bumped whenever a field changes meaning or disappears (adding one is not a bump).
pub const REPORT_SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunReport {
    pub schema_version: u32,
    /// Names the run in plots and summaries.
    pub label: String,
    /// Wall-clock time of the first intended send (warmup included).
    pub started_at_unix_ms: u64,
    /// The run was stopped (Ctrl-C) before its schedule ended.
    pub interrupted: bool,
    pub target: TargetReport,
    pub load: LoadReport,
    pub queries: QueriesReport,
    /// Measured requests that completed, whatever their status (warmup excluded).
    pub count: u64,
    pub ok: u64,
    pub errors: u64,
    /// Requests scheduled during the warmup, sent but excluded from everything else.
    pub warmup_requests: u64,
    /// From the end of the warmup to the last measured completion.
    pub measured_seconds: f64,
    /// `count / measured_seconds`.
    pub achieved_rps: f64,
    pub latency: LatencyReport,
    /// The latency distribution, for plots: HdrHistogram's percentile iteration.
    pub percentiles: Vec<PercentilePoint>,
    /// Status code name (`OK`, `DEADLINE_EXCEEDED`, ...) to count.
    pub status_codes: BTreeMap<String, u64>,
    /// `CODE: message` to count, at most 20 distinct, the rest under `(other messages)`.
    pub error_messages: BTreeMap<String, u64>,
    pub coverage: CoverageReport,
    pub generator: GeneratorReport,
    /// One entry a second of the measured part, by completion time.
    pub intervals: Vec<IntervalReport>,
    /// Things the reader must know, e.g. that the generator fell behind.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetReport {
    pub kind: TargetKind,
    /// Full gRPC method, e.g. `/fanout.search.v1.Search/Search`.
    pub method: String,
    pub addr: String,
    pub connections: u64,
    pub k: u32,
    /// `natural` or `syntax`.
    pub mode: String,
    pub allow_partial: bool,
    pub min_coverage: f64,
    pub snippets: bool,
    pub shard_id: u32,
    /// Type URL of the fixed payload (`query` target with a payload file), else null.
    pub payload_type_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadReport {
    pub arrivals: ArrivalProcess,
    pub target_rps: f64,
    pub seed: u64,
    pub warmup_ms: u64,
    /// Measured duration asked for, or null when the run was bounded by `requests`.
    pub duration_ms: Option<u64>,
    /// Measured requests asked for, or null when the run was bounded by `duration_ms`.
    pub requests: Option<u64>,
    pub max_in_flight: u64,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueriesReport {
    pub source: String,
    pub format: QueryFormat,
    pub order: QueryOrder,
    /// Queries in the source after filtering; requests cycle through them.
    pub distinct: u64,
}

/// Latency of the measured requests, all statuses, in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyReport {
    pub fastest_us: u64,
    pub average_us: f64,
    pub slowest_us: u64,
    pub stdev_us: f64,
    pub p50_us: u64,
    pub p75_us: u64,
    pub p90_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub p99_9_us: u64,
    pub p99_99_us: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PercentilePoint {
    /// 0..=100.
    pub percentile: f64,
    /// The highest latency at or below `percentile`.
    pub latency_us: u64,
    /// Requests at or below `latency_us`.
    pub count: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoverageReport {
    /// Successful responses that carried coverage (`search` and `query` targets).
    pub responses_with_coverage: u64,
    /// Of those, responses whose coverage was partial.
    pub partial_responses: u64,
    /// Primary leaf calls of every successful response, both phases: one per
    /// shard for the search, one per shard holding final hits for the fetch.
    #[serde(default)]
    pub shard_calls: u64,
    /// `ShardTiming.attempts + fetch_attempts` summed likewise: every leaf call.
    #[serde(default)]
    pub attempts: u64,
    /// `ShardTiming.hedges` summed over every shard of every successful response.
    pub hedges: u64,
    /// `ShardTiming.retries`, summed likewise.
    pub retries: u64,
    /// `ShardTiming.fetch_hedges`, summed likewise (the fetch phase).
    #[serde(default)]
    pub fetch_hedges: u64,
    /// `ShardTiming.fetch_retries`, summed likewise.
    #[serde(default)]
    pub fetch_retries: u64,
}

/// Whether the generator kept its schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorReport {
    /// Measured requests launched.
    pub launched: u64,
    /// Launch lag: actual send time minus intended send time.
    pub launch_lag_p50_us: u64,
    pub launch_lag_p99_us: u64,
    pub launch_lag_max_us: u64,
    pub late_threshold_us: u64,
    /// Launches later than `late_threshold_us`.
    pub late_launches: u64,
    /// Launches that had to wait because `max_in_flight` requests were outstanding.
    pub in_flight_cap_waits: u64,
    pub max_in_flight_observed: u64,
    /// `launch_lag_p99_us > late_threshold_us` or `in_flight_cap_waits > 0`.
    pub behind_schedule: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntervalReport {
    /// Start of the interval, from the end of the warmup.
    pub start_ms: u64,
    pub duration_ms: u64,
    /// Requests that completed in the interval.
    pub count: u64,
    pub errors: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl LatencyReport {
    pub fn from_histogram(histogram: &Histogram<u64>) -> LatencyReport {
        if histogram.is_empty() {
            return LatencyReport {
                fastest_us: 0,
                average_us: 0.0,
                slowest_us: 0,
                stdev_us: 0.0,
                p50_us: 0,
                p75_us: 0,
                p90_us: 0,
                p95_us: 0,
                p99_us: 0,
                p99_9_us: 0,
                p99_99_us: 0,
            };
        }
        LatencyReport {
            fastest_us: histogram.min(),
            average_us: histogram.mean(),
            slowest_us: histogram.max(),
            stdev_us: histogram.stdev(),
            p50_us: histogram.value_at_quantile(0.50),
            p75_us: histogram.value_at_quantile(0.75),
            p90_us: histogram.value_at_quantile(0.90),
            p95_us: histogram.value_at_quantile(0.95),
            p99_us: histogram.value_at_quantile(0.99),
            p99_9_us: histogram.value_at_quantile(0.999),
            p99_99_us: histogram.value_at_quantile(0.9999),
        }
    }
}

/// HdrHistogram's percentile iteration (5 steps per halving of the tail).
pub fn percentile_points(histogram: &Histogram<u64>) -> Vec<PercentilePoint> {
    let mut points = Vec::new();
    let mut cumulative = 0u64;
    for step in histogram.iter_quantiles(5) {
        cumulative += step.count_since_last_iteration();
        points.push(PercentilePoint {
            percentile: step.quantile_iterated_to() * 100.0,
            latency_us: step.value_iterated_to(),
            count: cumulative,
        });
    }
    points
}

impl RunReport {
    pub fn to_json_pretty(&self) -> String {
        // A report holds only strings, numbers, booleans, maps with string keys and
        // sequences, all of which serde_json can encode.
        serde_json::to_string_pretty(self).expect("a report always serializes")
    }

    pub fn write_json(&self, path: &Path) -> Result<(), LoadgenError> {
        let mut text = self.to_json_pretty();
        text.push('\n');
        std::fs::write(path, text).map_err(|error| LoadgenError::WriteOutput {
            what: "json report",
            path: path.to_path_buf(),
            reason: error.to_string(),
        })
    }

    pub fn read_json(path: &Path) -> Result<RunReport, LoadgenError> {
        let read_error = |reason: String| LoadgenError::ReadReport {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|error| read_error(error.to_string()))?;
        let version: SchemaVersionOnly =
            serde_json::from_str(&text).map_err(|error| read_error(error.to_string()))?;
        if version.schema_version != REPORT_SCHEMA_VERSION {
            return Err(read_error(format!(
                "schema_version {} is not the supported {REPORT_SCHEMA_VERSION}",
                version.schema_version
            )));
        }
        serde_json::from_str(&text).map_err(|error| read_error(error.to_string()))
    }

    /// The text summary printed at the end of a run.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail, hence the ignored results below.
        let _ = writeln!(out, "Summary: {}", self.label);
        let _ = writeln!(
            out,
            "  Target:        {} {} ({} connection{})",
            self.target.method,
            self.target.addr,
            self.target.connections,
            plural(self.target.connections)
        );
        let _ = writeln!(
            out,
            "  Queries:       {} ({}, {}, {} distinct)",
            self.queries.source,
            self.queries.format.name(),
            self.queries.order.name(),
            self.queries.distinct
        );
        let bound = match (self.load.duration_ms, self.load.requests) {
            (_, Some(requests)) => format!("{requests} requests"),
            (Some(duration_ms), None) => seconds(duration_ms as f64 / 1000.0),
            (None, None) => "unbounded".to_string(),
        };
        let _ = writeln!(
            out,
            "  Schedule:      {} arrivals at {:.2} req/s for {bound}, seed {}, warmup {} ({} requests excluded)",
            self.load.arrivals.name(),
            self.load.target_rps,
            self.load.seed,
            seconds(self.load.warmup_ms as f64 / 1000.0),
            self.warmup_requests
        );
        if self.interrupted {
            let _ = writeln!(out, "  Interrupted:   stopped before the schedule ended");
        }
        let _ = writeln!(out, "  Count:         {}", self.count);
        let _ = writeln!(out, "  Total:         {}", seconds(self.measured_seconds));
        let _ = writeln!(
            out,
            "  Requests/sec:  {:.2} achieved, {:.2} target",
            self.achieved_rps, self.load.target_rps
        );
        let _ = writeln!(out, "  Fastest:       {} ms", ms(self.latency.fastest_us));
        let _ = writeln!(
            out,
            "  Average:       {:.3} ms",
            self.latency.average_us / 1000.0
        );
        let _ = writeln!(out, "  Slowest:       {} ms", ms(self.latency.slowest_us));
        let _ = writeln!(out);
        let _ = writeln!(out, "Latency distribution (from the intended send time):");
        for (name, value) in [
            ("p50", self.latency.p50_us),
            ("p90", self.latency.p90_us),
            ("p99", self.latency.p99_us),
            ("p99.9", self.latency.p99_9_us),
            ("max", self.latency.slowest_us),
        ] {
            let _ = writeln!(out, "  {name:<6} {:>12} ms", ms(value));
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "Status code distribution:");
        if self.status_codes.is_empty() {
            let _ = writeln!(out, "  (no responses)");
        }
        for (code, count) in &self.status_codes {
            let _ = writeln!(
                out,
                "  [{code}]{:width$}{count} response{}",
                "",
                plural(*count),
                width = 22usize.saturating_sub(code.len())
            );
        }
        if !self.error_messages.is_empty() {
            let _ = writeln!(out);
            let _ = writeln!(out, "Error distribution:");
            let mut by_count: Vec<(&String, &u64)> = self.error_messages.iter().collect();
            by_count.sort_by(|left, right| right.1.cmp(left.1).then(left.0.cmp(right.0)));
            for (message, count) in by_count {
                let _ = writeln!(out, "  [{count}] {message}");
            }
        }
        if self.coverage.responses_with_coverage > 0 {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "Coverage: {} partial of {} responses; {} hedge{} and {} retr{} over all shards",
                self.coverage.partial_responses,
                self.coverage.responses_with_coverage,
                self.coverage.hedges,
                plural(self.coverage.hedges),
                self.coverage.retries,
                if self.coverage.retries == 1 {
                    "y"
                } else {
                    "ies"
                }
            );
        }
        let generator = &self.generator;
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Generator: launch lag p50 {} ms, p99 {} ms, max {} ms; {} launch{} later than {} ms; {} waited for the in-flight cap ({}); at most {} in flight",
            ms(generator.launch_lag_p50_us),
            ms(generator.launch_lag_p99_us),
            ms(generator.launch_lag_max_us),
            generator.late_launches,
            if generator.late_launches == 1 {
                ""
            } else {
                "es"
            },
            ms(generator.late_threshold_us),
            generator.in_flight_cap_waits,
            self.load.max_in_flight,
            generator.max_in_flight_observed
        );
        for warning in &self.warnings {
            let _ = writeln!(out, "WARNING: {warning}");
        }
        out
    }
}

#[derive(Deserialize)]
struct SchemaVersionOnly {
    schema_version: u32,
}

fn plural(count: u64) -> &'static str {
    if count == 1 { "" } else { "s" }
}

/// Microseconds as milliseconds with microsecond precision.
pub(crate) fn ms(micros: u64) -> String {
    format!("{}.{:03}", micros / 1000, micros % 1000)
}

fn seconds(value: f64) -> String {
    format!("{value:.3} s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_keep_microseconds() {
        assert_eq!(ms(0), "0.000");
        assert_eq!(ms(1), "0.001");
        assert_eq!(ms(203_456), "203.456");
    }

    #[test]
    fn latency_report_and_percentiles_follow_the_histogram() {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for value in 1..=1000u64 {
            histogram.record(value * 1000).unwrap();
        }
        let latency = LatencyReport::from_histogram(&histogram);
        assert_eq!(latency.fastest_us, 1000);
        assert!((latency.p50_us as i64 - 500_000).abs() < 500, "{latency:?}");
        assert!(
            (latency.p99_us as i64 - 990_000).abs() < 1000,
            "{latency:?}"
        );
        assert!(latency.slowest_us >= 1_000_000 && latency.slowest_us < 1_001_000);
        let points = percentile_points(&histogram);
        assert_eq!(points.last().unwrap().count, 1000);
        assert_eq!(points.last().unwrap().percentile, 100.0);
        assert!(
            points
                .windows(2)
                .all(|pair| pair[0].latency_us <= pair[1].latency_us)
        );
        assert!(points.len() > 20);

        let empty = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        assert_eq!(LatencyReport::from_histogram(&empty).slowest_us, 0);
        assert!(percentile_points(&empty).is_empty());
    }
}
