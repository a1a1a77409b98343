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
//!
//! The module's files: this one holds the options and the run itself
//! ([`run_load_detailed`] wires the parts together); `launcher` is the
//! launcher thread that keeps the schedule and the in-flight cap;
//! `recorder` is the collector's state, which records every completion
//! (histograms, status counts, per-second intervals, the interval log,
//! progress lines); `reporting` turns a finished recorder into the
//! [`RunReport`].

mod launcher;
mod recorder;
mod reporting;

use std::future::Future;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::error::LoadgenError;
use crate::interval_log::IntervalLogOutput;
use crate::queries::QuerySet;
use crate::report::RunReport;
use crate::schedule::Schedule;
use crate::target::{LoadTarget, ShardSample};

use launcher::{LaunchPlan, launch_on_schedule};
use recorder::RunRecorder;
use reporting::ReportContext;

pub const DEFAULT_WARMUP: Duration = Duration::from_secs(2);
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1000;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_LATE_LAUNCH_THRESHOLD: Duration = Duration::from_millis(1);

/// Histograms hold 1 µs to 1 hour at 3 significant digits.
const MAX_RECORDED_MICROS: u64 = 3_600_000_000;
/// The first launch is scheduled this far in the future so the thread is up in time.
const LAUNCH_HEADSTART: Duration = Duration::from_millis(5);

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
    /// Keep when every measured request was meant to leave, its latency and
    /// its status, in [`RunOutcome::timeline`] (for phased runs).
    pub keep_timeline: bool,
}

/// One measured request, as [`RunOptions::keep_timeline`] keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineSample {
    /// When it was meant to leave, from the start of the measured part.
    pub intended_at: Duration,
    /// From then to its answer.
    pub latency_us: u64,
    pub code: tonic::Code,
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
    /// Every measured request in completion order, when asked for.
    pub timeline: Vec<TimelineSample>,
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
            keep_timeline: false,
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
    recorder.keep_timeline = options.keep_timeline;
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
    let timeline = std::mem::take(&mut recorder.timeline);
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
        timeline,
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
}
