//! The report of a finished run: [`RunRecorder::into_report`] adds the
//! launcher's punctuality, the target, the schedule and the options to what
//! the recorder measured, and the warnings they call for.

use std::time::{SystemTime, UNIX_EPOCH};

use fanout_proto::search::v1::QueryMode;

use crate::queries::QuerySet;
use crate::report::{
    GeneratorReport, LatencyReport, LoadReport, QueriesReport, REPORT_SCHEMA_VERSION, RunReport,
    TargetReport, ms, percentile_points,
};
use crate::schedule::Schedule;
use crate::target::LoadTarget;

use super::launcher::LaunchStats;
use super::recorder::RunRecorder;
use super::{RunOptions, StopCondition, micros};

impl RunRecorder {
    pub(super) fn into_report(mut self, context: ReportContext<'_>) -> RunReport {
        let ReportContext {
            label,
            started_at_system,
            interrupted,
            target,
            schedule,
            queries,
            options,
            stats,
        } = context;
        let count = self.latency.len();
        let measured_seconds = self.last_measured_completion.map_or(0.0, |last| {
            last.saturating_duration_since(self.measure_start)
                .as_secs_f64()
        });
        let achieved_rps = if measured_seconds > 0.0 {
            count as f64 / measured_seconds
        } else {
            0.0
        };
        let lag_quantile = |quantile: f64| {
            if stats.lag.is_empty() {
                0
            } else {
                stats.lag.value_at_quantile(quantile)
            }
        };
        let late_threshold_us = micros(options.late_launch_threshold);
        let launch_lag_p99_us = lag_quantile(0.99);
        let behind_schedule =
            launch_lag_p99_us > late_threshold_us || stats.in_flight_cap_waits > 0;
        if launch_lag_p99_us > late_threshold_us {
            self.warnings.push(format!(
                "the generator fell behind its schedule: launch lag p99 {} ms (max {} ms) is above {} ms; latencies include that lag, and the server was offered less than the target rate at times",
                ms(launch_lag_p99_us),
                ms(stats.lag.max()),
                ms(late_threshold_us)
            ));
        }
        if stats.in_flight_cap_waits > 0 {
            self.warnings.push(format!(
                "{} launches waited because {} requests were in flight (--max-in-flight); the latencies of the delayed requests include the wait",
                stats.in_flight_cap_waits, options.max_in_flight
            ));
        }
        if self.errors > 0 && self.ok == 0 {
            self.warnings
                .push("every measured request failed".to_string());
        }
        let request = target.request();
        RunReport {
            schema_version: REPORT_SCHEMA_VERSION,
            label,
            started_at_unix_ms: started_at_system
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| {
                    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
                }),
            interrupted,
            target: TargetReport {
                kind: target.kind(),
                method: target.kind().method().to_string(),
                addr: target.addr().to_string(),
                connections: target.connections() as u64,
                k: request.k,
                mode: match request.mode {
                    QueryMode::Natural => "natural".to_string(),
                    QueryMode::Syntax => "syntax".to_string(),
                },
                allow_partial: request.allow_partial,
                min_coverage: request.min_coverage,
                snippets: request.snippets,
                shard_id: request.shard_id,
                payload_type_url: request.payload.as_ref().map(|any| any.type_url.clone()),
            },
            load: LoadReport {
                arrivals: schedule.arrivals(),
                target_rps: schedule.rate_per_second(),
                seed: schedule.seed(),
                warmup_ms: u64::try_from(options.warmup.as_millis()).unwrap_or(u64::MAX),
                duration_ms: match options.stop {
                    StopCondition::Duration(duration) => {
                        Some(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
                    }
                    StopCondition::Requests(_) => None,
                },
                requests: match options.stop {
                    StopCondition::Duration(_) => None,
                    StopCondition::Requests(requests) => Some(requests),
                },
                max_in_flight: options.max_in_flight as u64,
                timeout_ms: u64::try_from(options.timeout.as_millis()).unwrap_or(u64::MAX),
            },
            queries: QueriesReport {
                source: queries.source_name().to_string(),
                format: queries.format(),
                order: queries.order(),
                distinct: queries.len() as u64,
            },
            count,
            ok: self.ok,
            errors: self.errors,
            warmup_requests: self.warmup_completions,
            measured_seconds,
            achieved_rps,
            latency: LatencyReport::from_histogram(&self.latency),
            percentiles: percentile_points(&self.latency),
            status_codes: self.status_codes,
            error_messages: self.error_messages,
            coverage: self.coverage,
            generator: GeneratorReport {
                launched: stats.launched_measured,
                launch_lag_p50_us: lag_quantile(0.5),
                launch_lag_p99_us,
                launch_lag_max_us: if stats.lag.is_empty() {
                    0
                } else {
                    stats.lag.max()
                },
                late_threshold_us,
                late_launches: stats.late_launches,
                in_flight_cap_waits: stats.in_flight_cap_waits,
                max_in_flight_observed: stats.max_in_flight_observed,
                behind_schedule,
            },
            intervals: self.intervals,
            warnings: self.warnings,
        }
    }
}

pub(super) struct ReportContext<'a> {
    pub(super) label: String,
    pub(super) started_at_system: SystemTime,
    pub(super) interrupted: bool,
    pub(super) target: &'a LoadTarget,
    pub(super) schedule: &'a Schedule,
    pub(super) queries: &'a QuerySet,
    pub(super) options: &'a RunOptions,
    pub(super) stats: LaunchStats,
}
