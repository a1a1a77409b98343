//! The work of `fanout loadgen run | plot | scenario` once their flags are
//! checked. The command line itself (clap, the flags and their checks) is
//! the `fanout` binary's `cmd::loadgen`: it turns the flags into a
//! [`RunPlan`], a [`PlotPlan`] or a [`ScenarioPlan`] before any runtime
//! exists, then hands the plan to [`run_and_report`], [`plot_reports`] or
//! [`run_scenario_and_report`]. Nothing here reads a flag.

use std::path::PathBuf;
use std::time::Duration;

use fanout_cluster::current_executable;
use fanout_cluster::workspace::{default_data_dir, workspace_root};

use crate::error::LoadgenError;
use crate::plot::{check_png_path, plot_percentiles};
use crate::queries::QuerySet;
use crate::report::RunReport;
use crate::runner::{RunOptions, StopCondition, run_load_until};
use crate::scenario::{Scenario, ScenarioOptions, run_scenario};
use crate::schedule::Schedule;
use crate::target::{LoadTarget, TargetSpec};

/// `fanout loadgen run`: everything a run needs, read and checked; built
/// without a runtime.
#[derive(Debug, Clone)]
pub struct RunPlan {
    pub target: TargetSpec,
    pub schedule: Schedule,
    pub queries: QuerySet,
    pub options: RunOptions,
    /// Where to write the JSON report.
    pub json: Option<PathBuf>,
    /// Where to write a latency-by-percentile plot of the run (PNG).
    pub plot: Option<PathBuf>,
}

/// `fanout loadgen plot`: JSON reports drawn into one PNG, one curve each.
#[derive(Debug, Clone, PartialEq)]
pub struct PlotPlan {
    pub reports: Vec<PathBuf>,
    pub out: PathBuf,
    pub title: Option<String>,
}

/// `fanout loadgen scenario`: a scenario read and checked (its files
/// present), and how to run it.
#[derive(Debug, Clone)]
pub struct ScenarioPlan {
    pub scenario: Scenario,
    /// Only say that the scenario and its files are fine; start nothing.
    pub check: bool,
    /// Where the outputs go; default `target/scenarios/<name>` in the workspace.
    pub out_dir: Option<PathBuf>,
    /// Where indexes are built and kept; default `.fanout` in the workspace.
    pub data_dir: Option<PathBuf>,
    /// Overrides the scenario's measured duration.
    pub duration: Option<Duration>,
    /// Overrides the scenario's rounds.
    pub rounds: Option<u32>,
}

impl PlotPlan {
    /// At least one report, and an output that ends in `.png`.
    pub fn validate(&self) -> Result<(), LoadgenError> {
        if self.reports.is_empty() {
            return Err(LoadgenError::InvalidOption(
                "plot needs at least one json report".to_string(),
            ));
        }
        check_png_path(&self.out)
    }
}

/// Runs the load, prints its text summary on stdout, and writes the JSON
/// report, the interval log and the plot the plan asks for. Ctrl-C ends the
/// schedule early (the report then says `interrupted`).
pub async fn run_and_report(plan: &RunPlan) -> Result<(), LoadgenError> {
    let target = LoadTarget::connect(plan.target.clone()).await?;
    let bound = match plan.options.stop {
        StopCondition::Duration(duration) => format!("for {:.3} s", duration.as_secs_f64()),
        StopCondition::Requests(requests) => format!("for {requests} requests"),
    };
    eprintln!(
        "loadgen: {} {} over {} connection(s), {} arrivals at {} req/s {bound} after {:.3} s of warmup, queries from {} ({}); Ctrl-C stops early",
        target.kind().method(),
        target.addr(),
        target.connections(),
        plan.schedule.arrivals().name(),
        plan.schedule.rate_per_second(),
        plan.options.warmup.as_secs_f64(),
        plan.queries.source_name(),
        plan.queries.len(),
    );
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // Without a signal handler the run just goes to its end.
            std::future::pending::<()>().await;
        }
    };
    let report = run_load_until(
        &target,
        &plan.schedule,
        &plan.queries,
        &plan.options,
        ctrl_c,
    )
    .await?;
    print!("{}", report.render_text());
    if let Some(path) = &plan.json {
        report.write_json(path)?;
        eprintln!("loadgen: wrote the json report to {}", path.display());
    }
    if let Some(path) = &plan.options.hdr_log {
        eprintln!("loadgen: wrote the hdr interval log to {}", path.display());
    }
    if let Some(path) = &plan.plot {
        plot_percentiles(std::slice::from_ref(&report), path, None)?;
        eprintln!("loadgen: wrote the plot to {}", path.display());
    }
    Ok(())
}

/// Reads the plan's reports and draws them into its PNG.
pub fn plot_reports(plan: &PlotPlan) -> Result<(), LoadgenError> {
    plan.validate()?;
    let reports = plan
        .reports
        .iter()
        .map(|path| RunReport::read_json(path))
        .collect::<Result<Vec<_>, _>>()?;
    plot_percentiles(&reports, &plan.out, plan.title.as_deref())?;
    eprintln!("loadgen: wrote the plot to {}", plan.out.display());
    Ok(())
}

/// Runs the scenario (or, with `check`, only says it is fine) and prints
/// its comparison table on stdout.
pub async fn run_scenario_and_report(plan: &ScenarioPlan) -> anyhow::Result<()> {
    let scenario = &plan.scenario;
    if plan.check {
        println!(
            "scenario {}: {} variants, {} rounds; files present",
            scenario.name,
            scenario.variants.len(),
            scenario.rounds
        );
        return Ok(());
    }
    let out_dir = plan.out_dir.clone().unwrap_or_else(|| {
        workspace_root()
            .unwrap_or_default()
            .join("target/scenarios")
            .join(&scenario.name)
    });
    let options = ScenarioOptions {
        executable: current_executable()?,
        out_dir: out_dir.clone(),
        data_dir: plan.data_dir.clone().unwrap_or_else(default_data_dir),
        index_threads: std::thread::available_parallelism().map_or(1, usize::from),
        duration: plan.duration,
        rounds: plan.rounds,
    };
    let comparison = run_scenario(scenario, &options).await?;
    println!("{}", comparison.to_markdown());
    eprintln!(
        "loadgen: wrote comparison.md, summary.json, percentiles.png, runs/ and logs/ to {}",
        out_dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plot_needs_reports_and_a_png() {
        let plan = |reports: &[&str], out: &str| PlotPlan {
            reports: reports.iter().map(PathBuf::from).collect(),
            out: PathBuf::from(out),
            title: None,
        };
        assert!(plan(&["a.json"], "x.png").validate().is_ok());
        assert!(plan(&["a.json"], "x.PNG").validate().is_ok());
        assert!(plan(&["a.json"], "x.jpg").validate().is_err());
        assert!(plan(&[], "x.png").validate().is_err());
    }
}
