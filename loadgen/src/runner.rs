//! The open-loop runner: [`run_load`].
//!
//! A dedicated launcher thread walks the schedule and, at each intended send
//! instant, spawns the request as its own tokio task; it never waits for an
//! earlier response. It sleeps with the operating system's timer (tens of
//! microseconds of slack) rather than tokio's millisecond timer wheel, so
//! launches are not rounded up to the next millisecond. When more than
//! `max_in_flight` requests are outstanding the next launch waits for one to
//! finish: it is then late, and the lateness is counted, reported and, since
//! latency runs from the intended send time, included in its latency.
//!
//! Each finished request sends a `Completion` to the collector (this
//! function's own task), which keeps the histograms, the per-second
//! intervals (and the interval log), and prints progress.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fanout_proto::search::v1::QueryMode;
use hdrhistogram::Histogram;
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::error::LoadgenError;
use crate::interval_log::{IntervalLogOutput, IntervalLogWriterOnFile, write_interval};
use crate::queries::QuerySet;
use crate::report::{
    CoverageReport, GeneratorReport, IntervalReport, LatencyReport, LoadReport, QueriesReport,
    REPORT_SCHEMA_VERSION, RunReport, TargetReport, ms, percentile_points,
};
use crate::schedule::{ArrivalOffsets, Schedule};
use fanout_proto::status::code_name;

use crate::target::{CallOutcome, LoadTarget, ShardSample};

pub const DEFAULT_WARMUP: Duration = Duration::from_secs(2);
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1000;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_LATE_LAUNCH_THRESHOLD: Duration = Duration::from_millis(1);

/// Histograms hold 1 µs to 1 hour at 3 significant digits.
const MAX_RECORDED_MICROS: u64 = 3_600_000_000;
/// The first launch is scheduled this far in the future so the thread is up in time.
const LAUNCH_HEADSTART: Duration = Duration::from_millis(5);
/// The launcher checks for a stop request at least this often while it sleeps.
const LAUNCHER_WAKE_SLICE: Duration = Duration::from_millis(50);
const MAX_DISTINCT_ERROR_MESSAGES: usize = 20;
const MAX_ERROR_MESSAGE_CHARS: usize = 200;
const OTHER_ERROR_MESSAGES: &str = "(other messages)";

/// When the measured part of a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCondition {
    /// Requests intended in this long after the warmup.
    Duration(Duration),
    /// This many requests after the warmup.
    Requests(u64),
}

/// How a run goes, besides its target, schedule and queries.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOptions {
    /// Names the run in reports and plots; a default is derived when `None`.
    pub label: Option<String>,
    /// Requests intended in this first stretch are sent but not measured.
    pub warmup: Duration,
    pub stop: StopCondition,
    pub max_in_flight: usize,
    /// Per request; an expired one counts as DEADLINE_EXCEEDED.
    pub timeout: Duration,
    /// A progress line on stderr once a second.
    pub progress: bool,
    /// Where to write the HdrHistogram interval log.
    pub hdr_log: Option<PathBuf>,
    /// Launches later than this count as late.
    pub late_launch_threshold: Duration,
    /// Keep every measured successful response's shard timings in
    /// [`RunOutcome::samples`] (for the ideal hedging bound).
    pub keep_shard_samples: bool,
}

/// One measured successful request, as [`RunOptions::keep_shard_samples`] keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuerySample {
    /// From the intended send time to the response.
    pub latency_us: u64,
    pub shards: Vec<ShardSample>,
}

/// A run's report with what the JSON leaves out: the full latency histogram
/// (to merge several runs) and, when asked for, the per-request samples.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub report: RunReport,
    /// Measured requests, all statuses, in microseconds.
    pub latency: Histogram<u64>,
    pub samples: Vec<QuerySample>,
}

impl RunOptions {
    pub fn new(stop: StopCondition) -> RunOptions {
        RunOptions {
            label: None,
            warmup: DEFAULT_WARMUP,
            stop,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            timeout: DEFAULT_TIMEOUT,
            progress: false,
            hdr_log: None,
            late_launch_threshold: DEFAULT_LATE_LAUNCH_THRESHOLD,
            keep_shard_samples: false,
        }
    }

    /// Whether stderr is a terminal, the condition for progress lines.
    pub fn stderr_is_terminal() -> bool {
        std::io::stderr().is_terminal()
    }

    pub fn validate(&self) -> Result<(), LoadgenError> {
        let invalid = |text: &str| Err(LoadgenError::InvalidOption(text.to_string()));
        match self.stop {
            StopCondition::Duration(duration) if duration.is_zero() => {
                return invalid("duration must be above zero");
            }
            StopCondition::Requests(0) => return invalid("requests must be at least 1"),
            _ => {}
        }
        if self.max_in_flight == 0 {
            return invalid("max in flight must be at least 1");
        }
        if self.max_in_flight > Semaphore::MAX_PERMITS {
            return invalid("max in flight is too large");
        }
        if self.timeout.is_zero() {
            return invalid("timeout must be above zero");
        }
        Ok(())
    }
}

/// Runs `queries` against `target` on `schedule`; see the module docs.
pub async fn run_load(
    target: &LoadTarget,
    schedule: &Schedule,
    queries: &QuerySet,
    options: &RunOptions,
) -> Result<RunReport, LoadgenError> {
    run_load_until(target, schedule, queries, options, std::future::pending()).await
}

/// [`run_load`] that also ends the schedule early when `stop` resolves (e.g.
/// Ctrl-C); requests in flight then finish (or time out) and the report says
/// `interrupted`. Dropping the returned future stops the launcher too.
pub async fn run_load_until(
    target: &LoadTarget,
    schedule: &Schedule,
    queries: &QuerySet,
    options: &RunOptions,
    stop: impl Future<Output = ()>,
) -> Result<RunReport, LoadgenError> {
    run_load_detailed(target, schedule, queries, options, stop)
        .await
        .map(|outcome| outcome.report)
}

/// [`run_load_until`] that also returns the latency histogram and the kept samples.
pub async fn run_load_detailed(
    target: &LoadTarget,
    schedule: &Schedule,
    queries: &QuerySet,
    options: &RunOptions,
    stop: impl Future<Output = ()>,
) -> Result<RunOutcome, LoadgenError> {
    options.validate()?;
    let mut interval_log = match &options.hdr_log {
        Some(path) => Some(IntervalLogOutput::create(path)?),
        None => None,
    };

    let start = Instant::now() + LAUNCH_HEADSTART;
    let started_at_system = SystemTime::now() + LAUNCH_HEADSTART;
    let measure_start = start + options.warmup;
    let stop_requested = Arc::new(AtomicBool::new(false));
    let _stop_launcher_when_dropped = StopOnDrop(stop_requested.clone());
    let launched_total = Arc::new(AtomicU64::new(0));
    let (completion_sender, mut completion_receiver) = mpsc::unbounded_channel();
    let (stats_sender, stats_receiver) = oneshot::channel();
    let plan = LaunchPlan {
        runtime: Handle::current(),
        target: target.clone(),
        queries: queries.clone(),
        offsets: schedule.offsets(),
        start,
        warmup: options.warmup,
        stop: options.stop,
        timeout: options.timeout,
        late_threshold: options.late_launch_threshold,
        in_flight: Arc::new(Semaphore::new(options.max_in_flight)),
        max_in_flight: options.max_in_flight,
        stop_requested: stop_requested.clone(),
        launched_total: launched_total.clone(),
        completions: completion_sender,
    };
    std::thread::Builder::new()
        .name("loadgen-launcher".to_string())
        .spawn(move || {
            let stats = launch_on_schedule(plan);
            // The receiver is gone only when the run itself was dropped.
            let _ = stats_sender.send(stats);
        })
        .map_err(|error| LoadgenError::Launcher(error.to_string()))?;

    let label = options
        .label
        .clone()
        .unwrap_or_else(|| default_label(target, schedule));
    let mut log_writer = match interval_log.as_mut() {
        Some(output) => Some(output.begin(started_at_system + options.warmup, &label)?),
        None => None,
    };
    let mut recorder = RunRecorder::new(measure_start, schedule.rate_per_second());
    recorder.keep_samples = options.keep_shard_samples;
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::from_std(start + Duration::from_secs(1)),
        Duration::from_secs(1),
    );
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stop = std::pin::pin!(stop);
    let mut interrupted = false;
    loop {
        tokio::select! {
            completion = completion_receiver.recv() => match completion {
                Some(completion) => recorder.record(completion, &mut log_writer),
                None => break,
            },
            _ = ticker.tick() => {
                let now = Instant::now();
                recorder.close_intervals_before(now, &mut log_writer);
                if options.progress {
                    eprintln!("{}", recorder.progress_line(now, start, launched_total.load(Ordering::Relaxed)));
                }
            }
            () = &mut stop, if !interrupted => {
                interrupted = true;
                stop_requested.store(true, Ordering::Relaxed);
            }
        }
    }
    let stats = stats_receiver.await.map_err(|_| {
        LoadgenError::Launcher("the launcher thread ended without its statistics".to_string())
    })?;
    recorder.close_last_interval(&mut log_writer);
    drop(log_writer);
    if let Some(Err(error)) = interval_log.map(IntervalLogOutput::finish) {
        recorder.warnings.push(error.to_string());
    }
    let interrupted = interrupted || stats.stopped_early;
    let latency = recorder.latency.clone();
    let samples = std::mem::take(&mut recorder.samples);
    let report = recorder.into_report(ReportContext {
        label,
        started_at_system,
        interrupted,
        target,
        schedule,
        queries,
        options,
        stats,
    });
    Ok(RunOutcome {
        report,
        latency,
        samples,
    })
}

/// Sets the stop flag when the run's future is dropped, so the launcher thread ends too.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn default_label(target: &LoadTarget, schedule: &Schedule) -> String {
    format!(
        "{} {} {} req/s",
        target.kind().name(),
        schedule.arrivals().name(),
        schedule.rate_per_second()
    )
}

fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that satisfy the crate's requirements (low >= 1, high >= 2 * low).
    Histogram::new_with_bounds(1, MAX_RECORDED_MICROS, 3).expect("constant histogram bounds")
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// What the launcher thread needs; moved into it.
struct LaunchPlan {
    runtime: Handle,
    target: LoadTarget,
    queries: QuerySet,
    offsets: ArrivalOffsets,
    start: Instant,
    warmup: Duration,
    stop: StopCondition,
    timeout: Duration,
    late_threshold: Duration,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    stop_requested: Arc<AtomicBool>,
    launched_total: Arc<AtomicU64>,
    completions: mpsc::UnboundedSender<Completion>,
}

/// What the launcher saw of its own punctuality (measured launches only).
struct LaunchStats {
    launched_measured: u64,
    lag: Histogram<u64>,
    late_launches: u64,
    in_flight_cap_waits: u64,
    max_in_flight_observed: u64,
    stopped_early: bool,
}

/// One finished request.
struct Completion {
    intended: Instant,
    completed: Instant,
    measured: bool,
    outcome: CallOutcome,
}

fn launch_on_schedule(plan: LaunchPlan) -> LaunchStats {
    let mut stats = LaunchStats {
        launched_measured: 0,
        lag: new_histogram(),
        late_launches: 0,
        in_flight_cap_waits: 0,
        max_in_flight_observed: 0,
        stopped_early: false,
    };
    for (request_number, offset) in (0u64..).zip(plan.offsets) {
        let measured = offset >= plan.warmup;
        let schedule_done = match plan.stop {
            StopCondition::Duration(duration) => offset >= plan.warmup + duration,
            StopCondition::Requests(requests) => measured && stats.launched_measured >= requests,
        };
        if schedule_done {
            break;
        }
        let intended = plan.start + offset;
        if !sleep_until(intended, &plan.stop_requested) || plan.completions.is_closed() {
            stats.stopped_early = true;
            break;
        }
        let permit = match plan.in_flight.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if measured {
                    stats.in_flight_cap_waits += 1;
                }
                // Waiting here is the point: the cap holds back every later launch,
                // and their lateness shows in their latency and in the report.
                match plan
                    .runtime
                    .block_on(plan.in_flight.clone().acquire_owned())
                {
                    Ok(permit) => permit,
                    Err(_closed) => break, // never closed; nothing left to do if it were
                }
            }
        };
        let launched = Instant::now();
        if measured {
            let lag = launched.saturating_duration_since(intended);
            stats.lag.saturating_record(micros(lag));
            if lag > plan.late_threshold {
                stats.late_launches += 1;
            }
            let in_flight_now = (plan.max_in_flight - plan.in_flight.available_permits()) as u64;
            stats.max_in_flight_observed = stats.max_in_flight_observed.max(in_flight_now);
            stats.launched_measured += 1;
        }
        plan.launched_total.fetch_add(1, Ordering::Relaxed);
        let target = plan.target.clone();
        let query = plan.queries.query_for(request_number).clone();
        let completions = plan.completions.clone();
        let timeout = plan.timeout;
        plan.runtime.spawn(async move {
            let outcome = target.call(&query, timeout, request_number).await;
            let completed = Instant::now();
            drop(permit);
            // The receiver is gone only when the run was dropped; nothing to record then.
            let _ = completions.send(Completion {
                intended,
                completed,
                measured,
                outcome,
            });
        });
    }
    stats
}

/// Sleeps until `deadline` with the OS timer; false when a stop was requested first.
fn sleep_until(deadline: Instant, stop_requested: &AtomicBool) -> bool {
    loop {
        if stop_requested.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        std::thread::sleep((deadline - now).min(LAUNCHER_WAKE_SLICE));
    }
}

/// The collector's state.
struct RunRecorder {
    measure_start: Instant,
    target_rps: f64,
    latency: Histogram<u64>,
    ok: u64,
    errors: u64,
    status_codes: BTreeMap<String, u64>,
    error_messages: BTreeMap<String, u64>,
    coverage: CoverageReport,
    warmup_completions: u64,
    last_measured_completion: Option<Instant>,
    interval_index: u64,
    interval_histogram: Histogram<u64>,
    interval_errors: u64,
    intervals: Vec<IntervalReport>,
    completed_at_last_progress: u64,
    warnings: Vec<String>,
    log_failed: bool,
    keep_samples: bool,
    samples: Vec<QuerySample>,
}

impl RunRecorder {
    fn new(measure_start: Instant, target_rps: f64) -> RunRecorder {
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
            samples: Vec::new(),
        }
    }

    fn record(&mut self, completion: Completion, log: &mut Option<IntervalLogWriterOnFile<'_>>) {
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

    fn count_error_message(&mut self, code: &str, message: &str) {
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
    fn close_intervals_before(
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

    fn close_intervals_up_to(&mut self, index: u64, log: &mut Option<IntervalLogWriterOnFile<'_>>) {
        while self.interval_index < index {
            self.close_current_interval(Duration::from_secs(1), log);
            self.interval_index += 1;
        }
    }

    /// Closes the interval the last completion fell in, cut at that completion.
    fn close_last_interval(&mut self, log: &mut Option<IntervalLogWriterOnFile<'_>>) {
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

    fn close_current_interval(
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

    fn progress_line(&mut self, now: Instant, start: Instant, launched_total: u64) -> String {
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

    fn into_report(mut self, context: ReportContext<'_>) -> RunReport {
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

struct ReportContext<'a> {
    label: String,
    started_at_system: SystemTime,
    interrupted: bool,
    target: &'a LoadTarget,
    schedule: &'a Schedule,
    queries: &'a QuerySet,
    options: &'a RunOptions,
    stats: LaunchStats,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_validated() {
        let mut options = RunOptions::new(StopCondition::Duration(Duration::from_secs(1)));
        assert!(options.validate().is_ok());
        options.max_in_flight = 0;
        assert!(options.validate().is_err());
        let options = RunOptions::new(StopCondition::Requests(0));
        assert!(options.validate().is_err());
        let options = RunOptions::new(StopCondition::Duration(Duration::ZERO));
        assert!(options.validate().is_err());
    }

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
