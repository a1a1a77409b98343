//! fanout's open-loop load generator, a library: `fanout loadgen` (the
//! binary's `cmd::loadgen`) is its command line, and the benchmark
//! scenarios use it too.
//!
//! Requests leave at the instants an arrival schedule dictates, whatever the
//! server does, and each latency is measured from the request's *intended*
//! send time (wrk2's correction for coordinated omission): a stalled server
//! shows up as many slow requests, not as one slow request and a quiet gap.
//!
//! Map of the modules, in the order a run uses them:
//! - [`schedule`]: arrival schedules (constant rate, Poisson), reproducible by seed.
//! - [`seeded_random`]: the small seeded PRNG behind Poisson gaps and query shuffling.
//! - [`queries`]: query sources (plain text, search-benchmark-game JSONL, BEIR
//!   `queries.jsonl`), their order, and cycling through them.
//! - [`target`]: what is driven (`Search/Search`, `Leaf/Execute`, `Root/Query`) over
//!   several HTTP/2 connections, and what one call's outcome was.
//! - [`runner`]: [`run_load`]: the launcher thread that keeps the schedule, the
//!   in-flight cap, and the collector that records every completion.
//! - [`report`]: [`RunReport`], the result of a run (also the JSON report, schema in
//!   `REPORT_SCHEMA.md`), and its text summary.
//! - [`interval_log`]: the HdrHistogram interval log, one histogram a second.
//! - [`plot`]: latency-by-percentile plots of one or several reports (PNG).
//! - [`ideal`]: the ideal hedged latency, resampled from a hedging-off run.
//! - [`scenario`]: `fanout loadgen scenario`: clusters started from a TOML
//!   file, variants run interleaved, a comparison table and plots.
//! - [`commands`]: the work of `fanout loadgen run | plot | scenario` once the
//!   command line has checked its flags: [`RunPlan`] and [`run_and_report`],
//!   [`PlotPlan`] and [`plot_reports`], [`ScenarioPlan`] and [`run_scenario_and_report`].
//! - [`error`]: [`LoadgenError`], the crate's one error type.

pub mod commands;
pub mod error;
pub mod ideal;
pub mod interval_log;
pub mod plot;
pub mod queries;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod schedule;
pub mod seeded_random;
pub mod target;

pub use commands::{
    PlotPlan, RunPlan, ScenarioPlan, plot_reports, run_and_report, run_scenario_and_report,
};
pub use error::LoadgenError;
pub use queries::{QueryFormat, QueryOrder, QuerySet};
pub use report::RunReport;
pub use runner::{
    QuerySample, RunOptions, RunOutcome, StopCondition, run_load, run_load_detailed, run_load_until,
};
pub use schedule::{ArrivalProcess, Schedule};
pub use target::{HedgeRequest, LoadTarget, RequestTemplate, TargetKind, TargetSpec, TargetTls};
