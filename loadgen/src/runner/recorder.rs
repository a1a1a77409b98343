//! The collector's state, [`RunRecorder`]: every completion recorded into
//! the latency histogram, the status and error-message counts, the coverage
//! sums, the per-second intervals (and the interval log), and the progress
//! lines printed once a second.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fanout_proto::status::code_name;
use hdrhistogram::Histogram;

use crate::interval_log::{IntervalLogWriterOnFile, write_interval};
use crate::report::{CoverageReport, IntervalReport, ms};
use crate::target::CallOutcome;

use super::{QuerySample, TimelineSample, micros, new_histogram};

const MAX_DISTINCT_ERROR_MESSAGES: usize = 20;
const MAX_ERROR_MESSAGE_CHARS: usize = 200;
const OTHER_ERROR_MESSAGES: &str = "(other messages)";

/// One finished request.
pub(super) struct Completion {
    pub(super) intended: Instant,
    pub(super) completed: Instant,
    pub(super) measured: bool,
    pub(super) outcome: CallOutcome,
}

/// The collector's state.
pub(super) struct RunRecorder {
    pub(super) measure_start: Instant,
    pub(super) target_rps: f64,
    pub(super) latency: Histogram<u64>,
    pub(super) ok: u64,
    pub(super) errors: u64,
    pub(super) status_codes: BTreeMap<String, u64>,
    pub(super) error_messages: BTreeMap<String, u64>,
    pub(super) coverage: CoverageReport,
    pub(super) warmup_completions: u64,
    pub(super) last_measured_completion: Option<Instant>,
    pub(super) interval_index: u64,
    pub(super) interval_histogram: Histogram<u64>,
    pub(super) interval_errors: u64,
    pub(super) intervals: Vec<IntervalReport>,
    pub(super) completed_at_last_progress: u64,
    pub(super) warnings: Vec<String>,
    pub(super) log_failed: bool,
    pub(super) keep_samples: bool,
    pub(super) samples: Vec<QuerySample>,
    pub(super) keep_timeline: bool,
    pub(super) timeline: Vec<TimelineSample>,
}

impl RunRecorder {
    pub(super) fn new(measure_start: Instant, target_rps: f64) -> RunRecorder {
        RunRecorder {
            measure_start,
            target_rps,
            latency: new_histogram(),
            ok: 0,
            errors: 0,
            status_codes: BTreeMap::new(),
            error_messages: BTreeMap::new(),
            coverage: CoverageReport::default(),
            warmup_completions: 0,
            last_measured_completion: None,
            interval_index: 0,
            interval_histogram: new_histogram(),
            interval_errors: 0,
            intervals: Vec::new(),
            completed_at_last_progress: 0,
            warnings: Vec::new(),
            log_failed: false,
            keep_samples: false,
            keep_timeline: false,
            timeline: Vec::new(),
            samples: Vec::new(),
        }
    }

    pub(super) fn record(
        &mut self,
        completion: Completion,
        log: &mut Option<IntervalLogWriterOnFile<'_>>,
    ) {
        if !completion.measured {
            self.warmup_completions += 1;
            return;
        }
        let latency_us = micros(
            completion
                .completed
                .saturating_duration_since(completion.intended),
        );
        self.latency.saturating_record(latency_us);
        let outcome = completion.outcome;
        let code = code_name(outcome.code);
        *self.status_codes.entry(code.to_string()).or_insert(0) += 1;
        let failed = outcome.code != tonic::Code::Ok;
        if failed {
            self.errors += 1;
            self.count_error_message(code, outcome.error_message.as_deref().unwrap_or(""));
        } else {
            self.ok += 1;
        }
        if self.keep_timeline {
            self.timeline.push(TimelineSample {
                intended_at: completion
                    .intended
                    .saturating_duration_since(self.measure_start),
                latency_us,
                code: outcome.code,
            });
        }
        if self.keep_samples && !failed {
            self.samples.push(QuerySample {
                latency_us,
                shards: outcome.shards,
            });
        }
        if let Some(coverage) = outcome.coverage {
            self.coverage.responses_with_coverage += 1;
            self.coverage.partial_responses += u64::from(coverage.partial);
            self.coverage.shard_calls += coverage.primary_calls;
            self.coverage.attempts += coverage.attempts;
            self.coverage.hedges += coverage.hedges;
            self.coverage.retries += coverage.retries;
            self.coverage.fetch_hedges += coverage.fetch_hedges;
            self.coverage.fetch_retries += coverage.fetch_retries;
        }
        self.last_measured_completion = Some(
            self.last_measured_completion
                .map_or(completion.completed, |last| last.max(completion.completed)),
        );

        let interval_index = completion
            .completed
            .saturating_duration_since(self.measure_start)
            .as_secs();
        // A completion that arrives after its second was closed lands in the current one.
        self.close_intervals_up_to(interval_index, log);
        self.interval_histogram.saturating_record(latency_us);
        self.interval_errors += u64::from(failed);
    }

    pub(super) fn count_error_message(&mut self, code: &str, message: &str) {
        let mut key = format!("{code}: {message}");
        if key.chars().count() > MAX_ERROR_MESSAGE_CHARS {
            key = key
                .chars()
                .take(MAX_ERROR_MESSAGE_CHARS)
                .collect::<String>()
                + "...";
        }
        if !self.error_messages.contains_key(&key)
            && self.error_messages.len() >= MAX_DISTINCT_ERROR_MESSAGES
        {
            key = OTHER_ERROR_MESSAGES.to_string();
        }
        *self.error_messages.entry(key).or_insert(0) += 1;
    }

    /// Closes every interval that ended before `now`, empty ones included.
    pub(super) fn close_intervals_before(
        &mut self,
        now: Instant,
        log: &mut Option<IntervalLogWriterOnFile<'_>>,
    ) {
        if now < self.measure_start {
            return;
        }
        let now_index = (now - self.measure_start).as_secs();
        self.close_intervals_up_to(now_index, log);
    }

    pub(super) fn close_intervals_up_to(
        &mut self,
        index: u64,
        log: &mut Option<IntervalLogWriterOnFile<'_>>,
    ) {
        while self.interval_index < index {
            self.close_current_interval(Duration::from_secs(1), log);
            self.interval_index += 1;
        }
    }

    /// Closes the interval the last completion fell in, cut at that completion.
    pub(super) fn close_last_interval(&mut self, log: &mut Option<IntervalLogWriterOnFile<'_>>) {
        if self.interval_histogram.is_empty() {
            return;
        }
        let interval_start = self.measure_start + Duration::from_secs(self.interval_index);
        let end = self.last_measured_completion.unwrap_or(interval_start);
        let length = end
            .saturating_duration_since(interval_start)
            .max(Duration::from_millis(1));
        self.close_current_interval(length.min(Duration::from_secs(1)), log);
    }

    pub(super) fn close_current_interval(
        &mut self,
        length: Duration,
        log: &mut Option<IntervalLogWriterOnFile<'_>>,
    ) {
        let histogram = &self.interval_histogram;
        let (p50, p99, max) = if histogram.is_empty() {
            (0, 0, 0)
        } else {
            (
                histogram.value_at_quantile(0.5),
                histogram.value_at_quantile(0.99),
                histogram.max(),
            )
        };
        self.intervals.push(IntervalReport {
            start_ms: self.interval_index * 1000,
            duration_ms: u64::try_from(length.as_millis()).unwrap_or(u64::MAX),
            count: histogram.len(),
            errors: self.interval_errors,
            p50_us: p50,
            p99_us: p99,
            max_us: max,
        });
        let writer = if self.log_failed { None } else { log.as_mut() };
        if let Some(writer) = writer {
            let start = Duration::from_secs(self.interval_index);
            if let Err(reason) = write_interval(writer, histogram, start, length) {
                self.log_failed = true;
                self.warnings
                    .push(format!("the hdr interval log is incomplete: {reason}"));
            }
        }
        self.interval_histogram.reset();
        self.interval_errors = 0;
    }

    pub(super) fn progress_line(
        &mut self,
        now: Instant,
        start: Instant,
        launched_total: u64,
    ) -> String {
        let elapsed = now.saturating_duration_since(start).as_secs();
        let completed_total = self.warmup_completions + self.latency.len();
        let in_flight = launched_total.saturating_sub(completed_total);
        if now < self.measure_start {
            return format!(
                "[{elapsed:>4}s] warming up: {completed_total} done, {in_flight} in flight"
            );
        }
        let measured = self.latency.len();
        let last_second = measured - self.completed_at_last_progress.min(measured);
        self.completed_at_last_progress = measured;
        let (p50, p99) = if self.latency.is_empty() {
            (0, 0)
        } else {
            (
                self.latency.value_at_quantile(0.5),
                self.latency.value_at_quantile(0.99),
            )
        };
        format!(
            "[{elapsed:>4}s] {measured} done, {last_second}/s (target {:.0}/s), {} error{}, p50 {} ms, p99 {} ms, {in_flight} in flight",
            self.target_rps,
            self.errors,
            if self.errors == 1 { "" } else { "s" },
            ms(p50),
            ms(p99)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_error_messages_are_capped() {
        let mut recorder = RunRecorder::new(Instant::now(), 10.0);
        for index in 0..30 {
            recorder.count_error_message("UNAVAILABLE", &format!("replica {index} down"));
        }
        recorder.count_error_message("UNAVAILABLE", "replica 0 down");
        assert_eq!(
            recorder.error_messages.len(),
            MAX_DISTINCT_ERROR_MESSAGES + 1
        );
        assert_eq!(recorder.error_messages[OTHER_ERROR_MESSAGES], 10);
        assert_eq!(recorder.error_messages["UNAVAILABLE: replica 0 down"], 2);
    }

    #[test]
    fn progress_lines_say_warmup_then_rate_errors_and_percentiles() {
        let start = Instant::now();
        let measure_start = start + Duration::from_secs(1);
        let mut recorder = RunRecorder::new(measure_start, 50.0);
        let warming = recorder.progress_line(start + Duration::from_millis(500), start, 3);
        assert!(warming.contains("warming up"), "{warming}");
        let mut no_log = None;
        for (index, code) in [tonic::Code::Ok, tonic::Code::Ok, tonic::Code::Unavailable]
            .into_iter()
            .enumerate()
        {
            recorder.record(
                Completion {
                    intended: measure_start,
                    completed: measure_start + Duration::from_millis(2 + index as u64),
                    measured: true,
                    outcome: CallOutcome {
                        code,
                        error_message: None,
                        coverage: None,
                        shards: Vec::new(),
                    },
                },
                &mut no_log,
            );
        }
        let line = recorder.progress_line(measure_start + Duration::from_secs(1), start, 5);
        assert!(
            line.starts_with("[   2s] 3 done, 3/s (target 50/s), 1 error, p50 "),
            "{line}"
        );
        assert!(line.ends_with("2 in flight"), "{line}");
    }

    #[test]
    fn intervals_close_by_completion_second_including_empty_ones() {
        let measure_start = Instant::now();
        let mut recorder = RunRecorder::new(measure_start, 10.0);
        let mut no_log = None;
        let completion = |completed_after: Duration| Completion {
            intended: measure_start,
            completed: measure_start + completed_after,
            measured: true,
            outcome: CallOutcome {
                code: tonic::Code::Ok,
                error_message: None,
                coverage: None,
                shards: Vec::new(),
            },
        };
        recorder.record(completion(Duration::from_millis(100)), &mut no_log);
        recorder.record(completion(Duration::from_millis(900)), &mut no_log);
        recorder.record(completion(Duration::from_millis(3_200)), &mut no_log);
        recorder.close_last_interval(&mut no_log);
        let counts: Vec<u64> = recorder
            .intervals
            .iter()
            .map(|interval| interval.count)
            .collect();
        assert_eq!(counts, [2, 0, 0, 1]);
        assert_eq!(recorder.intervals[3].start_ms, 3_000);
        assert_eq!(recorder.intervals[3].duration_ms, 200);
        assert_eq!(
            recorder.intervals[0].max_us,
            recorder.latency.highest_equivalent(900_000)
        );
    }
}
