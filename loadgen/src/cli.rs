//! The `fanout loadgen` front end: [`LoadgenArgs`] (clap) and [`run`].
//!
//! ```text
//! fanout loadgen run --target search --addr 127.0.0.1:50051 --rate 200 --duration 30s \
//!     --queries queries.jsonl --json run.json --hdr-log run.hlog --plot run.png
//! fanout loadgen plot before.json after.json --out compare.png
//! fanout loadgen scenario loadgen/scenarios/hedging-stragglers.toml
//! ```
//! Every flag can also come from its `FANOUT_LOADGEN_...` environment variable.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fanout_proto::Any;
use fanout_proto::search::v1::QueryMode;
use prost::Message;

use fanout_cluster::current_executable;
use fanout_cluster::workspace::{default_data_dir, workspace_root};

use crate::error::LoadgenError;
use crate::plot::plot_percentiles;
use crate::queries::{QueryFormat, QueryOrder, QuerySet};
use crate::report::RunReport;
use crate::runner::{RunOptions, StopCondition, run_load_until};
use crate::scenario::{Scenario, ScenarioOptions, run_scenario};
use crate::schedule::{ArrivalProcess, Schedule};
use crate::target::{HedgeRequest, LoadTarget, RequestTemplate, TargetKind, TargetSpec};

/// Open-loop load generation against a fanout root or leaf, and plots of its reports.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenArgs {
    #[command(subcommand)]
    pub command: LoadgenCommand,
}

// Parsed once per process, so the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, clap::Subcommand)]
pub enum LoadgenCommand {
    /// Send requests on a schedule (never waiting for responses) and report
    /// latency measured from each request's intended send time.
    Run(RunArgs),
    /// Plot latency by percentile of one or several JSON reports into one PNG.
    Plot(PlotArgs),
    /// Run a benchmark scenario (TOML): start its clusters, run its variants
    /// interleaved, write a comparison table, reports and plots.
    Scenario(ScenarioArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QueryModeArg {
    /// Free text as people type it.
    Natural,
    /// tantivy query syntax.
    Syntax,
}

impl From<QueryModeArg> for QueryMode {
    fn from(mode: QueryModeArg) -> QueryMode {
        match mode {
            QueryModeArg::Natural => QueryMode::Natural,
            QueryModeArg::Syntax => QueryMode::Syntax,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// What to drive: the root's Search, one leaf's Execute, or the root's generic Query.
    #[arg(
        long,
        value_enum,
        default_value = "search",
        env = "FANOUT_LOADGEN_TARGET"
    )]
    pub target: TargetKind,

    /// Address of the root (search, query) or leaf (leaf): host:port or http://host:port.
    #[arg(
        long,
        default_value = "http://127.0.0.1:50051",
        env = "FANOUT_LOADGEN_ADDR"
    )]
    pub addr: String,

    /// Requests a second, whatever the server does.
    #[arg(long, default_value_t = 100.0, env = "FANOUT_LOADGEN_RATE")]
    pub rate: f64,

    /// Evenly spaced (constant) or Poisson arrivals.
    #[arg(
        long,
        value_enum,
        default_value = "constant",
        env = "FANOUT_LOADGEN_ARRIVALS"
    )]
    pub arrivals: ArrivalProcess,

    /// How long to measure, after the warmup (e.g. 500ms, 10s, 2m).
    #[arg(long, default_value = "10s", value_parser = parse_duration, env = "FANOUT_LOADGEN_DURATION")]
    pub duration: Duration,

    /// Measure this many requests instead of running for --duration.
    #[arg(long, env = "FANOUT_LOADGEN_REQUESTS")]
    pub requests: Option<u64>,

    /// Requests scheduled in this first stretch are sent but left out of the results.
    #[arg(long, default_value = "2s", value_parser = parse_duration, env = "FANOUT_LOADGEN_WARMUP")]
    pub warmup: Duration,

    /// Seed of the Poisson arrivals and of --order shuffled.
    #[arg(long, default_value_t = 1, env = "FANOUT_LOADGEN_SEED")]
    pub seed: u64,

    /// At most this many requests outstanding; a launch beyond it waits and is reported late.
    #[arg(long, default_value_t = crate::runner::DEFAULT_MAX_IN_FLIGHT, env = "FANOUT_LOADGEN_MAX_IN_FLIGHT")]
    pub max_in_flight: usize,

    /// HTTP/2 connections to the target, used round-robin.
    #[arg(long, default_value_t = 4, env = "FANOUT_LOADGEN_CONNECTIONS")]
    pub connections: usize,

    /// Per-request timeout (also sent as grpc-timeout); expired requests count as DEADLINE_EXCEEDED.
    #[arg(long, default_value_t = 5000, env = "FANOUT_LOADGEN_TIMEOUT_MS")]
    pub timeout_ms: u64,

    /// Query file: plain text (one a line), search-benchmark-game JSONL or BEIR queries.jsonl.
    #[arg(long, env = "FANOUT_LOADGEN_QUERIES")]
    pub queries: Option<PathBuf>,

    /// A query to send (repeatable), instead of --queries.
    #[arg(long = "query", env = "FANOUT_LOADGEN_QUERY")]
    pub query: Vec<String>,

    /// Format of --queries; auto decides from the first line.
    #[arg(
        long,
        value_enum,
        default_value = "auto",
        env = "FANOUT_LOADGEN_QUERY_FORMAT"
    )]
    pub query_format: QueryFormat,

    /// Only the benchmark-game queries carrying this tag (e.g. union, intersection, phrase).
    #[arg(long, env = "FANOUT_LOADGEN_TAG")]
    pub tag: Option<String>,

    /// Send the queries in file order, or shuffled once by --seed; they cycle when exhausted.
    #[arg(
        long,
        value_enum,
        default_value = "in-order",
        env = "FANOUT_LOADGEN_ORDER"
    )]
    pub order: QueryOrder,

    /// Hits asked for.
    #[arg(short = 'k', long, default_value_t = 10, env = "FANOUT_LOADGEN_K")]
    pub k: u32,

    /// How the query text is read.
    #[arg(
        long,
        value_enum,
        default_value = "natural",
        env = "FANOUT_LOADGEN_MODE"
    )]
    pub mode: QueryModeArg,

    /// search, query: answer with the shards that answered instead of failing.
    #[arg(long, env = "FANOUT_LOADGEN_ALLOW_PARTIAL")]
    pub allow_partial: bool,

    /// search, query: with --allow-partial, the least fraction (0..1] of shards that must answer.
    #[arg(long, default_value_t = 0.0, env = "FANOUT_LOADGEN_MIN_COVERAGE")]
    pub min_coverage: f64,

    /// search: ask for snippets.
    #[arg(long, env = "FANOUT_LOADGEN_SNIPPETS")]
    pub snippets: bool,

    /// search, query: the hedging to ask the root for: default (the root's own),
    /// off, adaptive or fixed:<ms>.
    #[arg(long, default_value = "default", env = "FANOUT_LOADGEN_HEDGE")]
    pub hedge: HedgeRequest,

    /// leaf: the shard id to send (the leaf answers FAILED_PRECONDITION for another shard).
    #[arg(long, default_value_t = 0, env = "FANOUT_LOADGEN_SHARD_ID")]
    pub shard_id: u32,

    /// query: a file holding one encoded google.protobuf.Any, sent as every request's
    /// payload. Without it each query is packed as a fanout.search.v1.ShardSearchRequest.
    #[arg(long, env = "FANOUT_LOADGEN_PAYLOAD_FILE")]
    pub payload_file: Option<PathBuf>,

    /// Write the JSON report here (schema: loadgen/REPORT_SCHEMA.md).
    #[arg(long, env = "FANOUT_LOADGEN_JSON")]
    pub json: Option<PathBuf>,

    /// Write an HdrHistogram interval log here (one histogram a second, microseconds).
    #[arg(long, env = "FANOUT_LOADGEN_HDR_LOG")]
    pub hdr_log: Option<PathBuf>,

    /// Write a latency-by-percentile plot of this run here (PNG).
    #[arg(long, env = "FANOUT_LOADGEN_PLOT")]
    pub plot: Option<PathBuf>,

    /// Name of the run in reports and plots.
    #[arg(long, env = "FANOUT_LOADGEN_LABEL")]
    pub label: Option<String>,

    /// No progress lines on stderr (they appear only when stderr is a terminal anyway).
    #[arg(long, env = "FANOUT_LOADGEN_NO_PROGRESS")]
    pub no_progress: bool,

    /// Launches later than this many microseconds count as late.
    #[arg(
        long,
        default_value_t = 1000,
        env = "FANOUT_LOADGEN_LATE_LAUNCH_THRESHOLD_US"
    )]
    pub late_launch_threshold_us: u64,
}

#[derive(Debug, Clone, clap::Args)]
pub struct PlotArgs {
    /// JSON reports written by `fanout loadgen run --json`; one curve each.
    #[arg(required = true)]
    pub reports: Vec<PathBuf>,

    /// The PNG to write.
    #[arg(long, env = "FANOUT_LOADGEN_PLOT_OUT")]
    pub out: PathBuf,

    /// Title of the plot.
    #[arg(long, env = "FANOUT_LOADGEN_PLOT_TITLE")]
    pub title: Option<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ScenarioArgs {
    /// The scenario file (see loadgen/SCENARIOS.md; shipped ones in loadgen/scenarios/).
    pub file: PathBuf,

    /// Where reports, logs, the table and the plot go
    /// [default: target/scenarios/<name> in the fanout workspace].
    #[arg(long, env = "FANOUT_LOADGEN_SCENARIO_OUT")]
    pub out: Option<PathBuf>,

    /// Where indexes are built and kept between runs [default: .fanout in the fanout workspace].
    #[arg(long, env = "FANOUT_LOADGEN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Measure each run this long instead of the scenario's duration (e.g. 3s for a quick look).
    #[arg(long, value_parser = parse_duration, env = "FANOUT_LOADGEN_SCENARIO_DURATION")]
    pub duration: Option<Duration>,

    /// Run this many rounds instead of the scenario's.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), env = "FANOUT_LOADGEN_SCENARIO_ROUNDS")]
    pub rounds: Option<u32>,

    /// Only read and check the scenario and the files it names; start nothing.
    #[arg(long, env = "FANOUT_LOADGEN_SCENARIO_CHECK")]
    pub check: bool,
}

impl ScenarioArgs {
    /// Reads and checks the scenario file and the files it names.
    pub fn load(&self) -> Result<Scenario, LoadgenError> {
        let scenario = Scenario::load(&self.file)?;
        crate::scenario::check_files(&scenario).map_err(|error| LoadgenError::Scenario {
            path: self.file.clone(),
            reason: error.to_string(),
        })?;
        Ok(scenario)
    }
}

/// Everything a run needs, read and checked; built without a runtime.
#[derive(Debug, Clone)]
pub struct PreparedRun {
    pub target: TargetSpec,
    pub schedule: Schedule,
    pub queries: QuerySet,
    pub options: RunOptions,
    pub json: Option<PathBuf>,
    pub plot: Option<PathBuf>,
}

impl LoadgenArgs {
    /// Checks the flags and reads the files they name, without starting anything;
    /// meant to run before the tokio runtime starts (a failure is a usage error).
    pub fn validate(&self) -> Result<(), LoadgenError> {
        match &self.command {
            LoadgenCommand::Run(run_args) => run_args.prepare().map(|_| ()),
            LoadgenCommand::Plot(plot_args) => plot_args.validate(),
            LoadgenCommand::Scenario(scenario_args) => scenario_args.load().map(|_| ()),
        }
    }
}

impl RunArgs {
    /// Validates the flags and loads the queries and the payload file.
    pub fn prepare(&self) -> Result<PreparedRun, LoadgenError> {
        let invalid = |text: String| Err(LoadgenError::InvalidOption(text));
        let schedule = Schedule::new(self.rate, self.arrivals, self.seed)?;
        if self.connections == 0 {
            return invalid("--connections must be at least 1".to_string());
        }
        if !(0.0..=1.0).contains(&self.min_coverage) {
            return invalid(format!(
                "--min-coverage must be within 0..=1, got {}",
                self.min_coverage
            ));
        }
        if self.payload_file.is_some() && self.target != TargetKind::Query {
            return invalid("--payload-file needs --target query".to_string());
        }
        if self.queries.is_some() && !self.query.is_empty() {
            return invalid("give --queries FILE or --query TEXT, not both".to_string());
        }
        if self.tag.is_some() && self.queries.is_none() {
            return invalid("--tag filters a --queries file".to_string());
        }
        for path in [&self.plot].into_iter().flatten() {
            check_png_path(path)?;
        }
        let payload = match &self.payload_file {
            Some(path) => Some(read_payload_file(path)?),
            None => None,
        };
        let queries = match (&self.queries, &payload) {
            (Some(path), _) => QuerySet::from_file(path, self.query_format, self.tag.as_deref())?,
            (None, _) if !self.query.is_empty() => {
                QuerySet::from_queries("--query", self.query.clone())?
            }
            (None, Some(payload)) => QuerySet::from_queries(
                &format!("payload file ({})", payload.type_url),
                vec![payload.type_url.clone()],
            )?,
            (None, None) => {
                return invalid(
                    "no queries: give --queries FILE or --query TEXT (or --payload-file with --target query)"
                        .to_string(),
                );
            }
        }
        .ordered(self.order, self.seed);
        let stop = match self.requests {
            Some(requests) => StopCondition::Requests(requests),
            None => StopCondition::Duration(self.duration),
        };
        let options = RunOptions {
            label: self.label.clone(),
            warmup: self.warmup,
            stop,
            max_in_flight: self.max_in_flight,
            timeout: Duration::from_millis(self.timeout_ms),
            progress: !self.no_progress && RunOptions::stderr_is_terminal(),
            hdr_log: self.hdr_log.clone(),
            late_launch_threshold: Duration::from_micros(self.late_launch_threshold_us),
            keep_shard_samples: false,
        };
        options.validate()?;
        Ok(PreparedRun {
            target: TargetSpec {
                kind: self.target,
                addr: self.addr.clone(),
                connections: self.connections,
                request: RequestTemplate {
                    k: self.k,
                    mode: self.mode.into(),
                    allow_partial: self.allow_partial,
                    min_coverage: self.min_coverage,
                    snippets: self.snippets,
                    shard_id: self.shard_id,
                    payload,
                    hedge: self.hedge,
                },
            },
            schedule,
            queries,
            options,
            json: self.json.clone(),
            plot: self.plot.clone(),
        })
    }
}

impl PlotArgs {
    pub fn validate(&self) -> Result<(), LoadgenError> {
        if self.reports.is_empty() {
            return Err(LoadgenError::InvalidOption(
                "plot needs at least one json report".to_string(),
            ));
        }
        check_png_path(&self.out)
    }
}

/// Runs `fanout loadgen run | plot`.
pub async fn run(args: LoadgenArgs) -> anyhow::Result<()> {
    match args.command {
        LoadgenCommand::Run(run_args) => run_and_report(&run_args).await?,
        LoadgenCommand::Plot(plot_args) => plot_reports(&plot_args)?,
        LoadgenCommand::Scenario(scenario_args) => run_scenario_command(&scenario_args).await?,
    }
    Ok(())
}

async fn run_scenario_command(args: &ScenarioArgs) -> anyhow::Result<()> {
    let scenario = args.load()?;
    if args.check {
        println!(
            "scenario {}: {} variants, {} rounds; files present",
            scenario.name,
            scenario.variants.len(),
            scenario.rounds
        );
        return Ok(());
    }
    let out_dir = args.out.clone().unwrap_or_else(|| {
        workspace_root()
            .unwrap_or_default()
            .join("target/scenarios")
            .join(&scenario.name)
    });
    let options = ScenarioOptions {
        executable: current_executable()?,
        out_dir: out_dir.clone(),
        data_dir: args.data_dir.clone().unwrap_or_else(default_data_dir),
        index_threads: std::thread::available_parallelism().map_or(1, usize::from),
        duration: args.duration,
        rounds: args.rounds,
    };
    let comparison = run_scenario(&scenario, &options).await?;
    println!("{}", comparison.to_markdown());
    eprintln!(
        "loadgen: wrote comparison.md, summary.json, percentiles.png, runs/ and logs/ to {}",
        out_dir.display()
    );
    Ok(())
}

async fn run_and_report(args: &RunArgs) -> Result<(), LoadgenError> {
    let prepared = args.prepare()?;
    let target = LoadTarget::connect(prepared.target.clone()).await?;
    let bound = match prepared.options.stop {
        StopCondition::Duration(duration) => format!("for {:.3} s", duration.as_secs_f64()),
        StopCondition::Requests(requests) => format!("for {requests} requests"),
    };
    eprintln!(
        "loadgen: {} {} over {} connection(s), {} arrivals at {} req/s {bound} after {:.3} s of warmup, queries from {} ({}); Ctrl-C stops early",
        target.kind().method(),
        target.addr(),
        target.connections(),
        prepared.schedule.arrivals().name(),
        prepared.schedule.rate_per_second(),
        prepared.options.warmup.as_secs_f64(),
        prepared.queries.source_name(),
        prepared.queries.len(),
    );
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // Without a signal handler the run just goes to its end.
            std::future::pending::<()>().await;
        }
    };
    let report = run_load_until(
        &target,
        &prepared.schedule,
        &prepared.queries,
        &prepared.options,
        ctrl_c,
    )
    .await?;
    print!("{}", report.render_text());
    if let Some(path) = &prepared.json {
        report.write_json(path)?;
        eprintln!("loadgen: wrote the json report to {}", path.display());
    }
    if let Some(path) = &prepared.options.hdr_log {
        eprintln!("loadgen: wrote the hdr interval log to {}", path.display());
    }
    if let Some(path) = &prepared.plot {
        plot_percentiles(std::slice::from_ref(&report), path, None)?;
        eprintln!("loadgen: wrote the plot to {}", path.display());
    }
    Ok(())
}

fn plot_reports(args: &PlotArgs) -> Result<(), LoadgenError> {
    args.validate()?;
    let reports = args
        .reports
        .iter()
        .map(|path| RunReport::read_json(path))
        .collect::<Result<Vec<_>, _>>()?;
    plot_percentiles(&reports, &args.out, args.title.as_deref())?;
    eprintln!("loadgen: wrote the plot to {}", args.out.display());
    Ok(())
}

fn check_png_path(path: &Path) -> Result<(), LoadgenError> {
    let is_png = path
        .extension()
        .is_some_and(|extension| extension.eq_ignore_ascii_case("png"));
    if is_png {
        return Ok(());
    }
    Err(LoadgenError::InvalidOption(format!(
        "plots are png files, {} does not end in .png",
        path.display()
    )))
}

fn read_payload_file(path: &Path) -> Result<Any, LoadgenError> {
    let payload_error = |reason: String| LoadgenError::PayloadFile {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|error| payload_error(error.to_string()))?;
    let payload = Any::decode(bytes.as_slice())
        .map_err(|error| payload_error(format!("not an encoded google.protobuf.Any: {error}")))?;
    if payload.type_url.is_empty() {
        return Err(payload_error(
            "the google.protobuf.Any has no type url".to_string(),
        ));
    }
    Ok(payload)
}

/// Parses `500ms`, `10s`, `1.5s`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split_at = text
        .find(|character: char| !(character.is_ascii_digit() || character == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split_at);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 500ms, 10s or 2m"))?;
    let seconds_per_unit = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("unknown duration unit {other:?} in {text:?}")),
    };
    Duration::try_from_secs_f64(value * seconds_per_unit)
        .map_err(|error| format!("{text:?} is out of range: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, clap::Parser)]
    struct TestCli {
        #[command(flatten)]
        loadgen: LoadgenArgs,
    }

    fn parse(arguments: &[&str]) -> LoadgenArgs {
        TestCli::try_parse_from(std::iter::once("loadgen").chain(arguments.iter().copied()))
            .unwrap()
            .loadgen
    }

    #[test]
    fn the_command_definition_is_consistent() {
        use clap::CommandFactory;
        TestCli::command().debug_assert();
        let mut command = TestCli::command();
        let run_help = command
            .find_subcommand_mut("run")
            .expect("run is a subcommand")
            .render_long_help()
            .to_string();
        for flag in [
            "--rate",
            "--arrivals",
            "--max-in-flight",
            "--hdr-log",
            "FANOUT_LOADGEN_RATE",
        ] {
            assert!(run_help.contains(flag), "{flag} missing from\n{run_help}");
        }
    }

    #[test]
    fn every_flag_reads_its_environment_variable() {
        use clap::CommandFactory;
        let command = TestCli::command();
        for subcommand in command.get_subcommands() {
            for argument in subcommand.get_arguments() {
                if argument.is_positional() || argument.get_id() == "help" {
                    continue;
                }
                let variable = argument
                    .get_env()
                    .map(|name| name.to_string_lossy().to_string());
                assert!(
                    variable
                        .as_deref()
                        .is_some_and(|name| name.starts_with("FANOUT_LOADGEN_")),
                    "--{} has no FANOUT_LOADGEN_ variable",
                    argument.get_id()
                );
            }
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("ten seconds").is_err());
        assert!(parse_duration("5parsecs").is_err());
    }

    #[test]
    fn run_flags_become_a_prepared_run() {
        let args = parse(&[
            "run",
            "--rate",
            "250",
            "--arrivals",
            "poisson",
            "--requests",
            "1000",
            "--query",
            "rust",
            "--query",
            "tail latency",
            "--order",
            "shuffled",
            "--seed",
            "4",
            "-k",
            "20",
            "--mode",
            "syntax",
            "--allow-partial",
            "--min-coverage",
            "0.5",
        ]);
        args.validate().unwrap();
        let LoadgenCommand::Run(run_args) = args.command else {
            panic!("expected the run subcommand");
        };
        let prepared = run_args.prepare().unwrap();
        assert_eq!(prepared.schedule.rate_per_second(), 250.0);
        assert_eq!(prepared.schedule.arrivals(), ArrivalProcess::Poisson);
        assert_eq!(prepared.options.stop, StopCondition::Requests(1000));
        assert_eq!(prepared.options.warmup, Duration::from_secs(2));
        assert_eq!(prepared.queries.len(), 2);
        assert_eq!(prepared.target.request.k, 20);
        assert_eq!(prepared.target.request.mode, QueryMode::Syntax);
        assert!(prepared.target.request.allow_partial);
        assert_eq!(prepared.target.connections, 4);
    }

    #[test]
    fn bad_flag_combinations_are_rejected() {
        for arguments in [
            &["run", "--rate", "0", "--query", "a"][..],
            &["run"][..],
            &["run", "--query", "a", "--payload-file", "x.bin"][..],
            &["run", "--query", "a", "--tag", "union"][..],
            &["run", "--query", "a", "--connections", "0"][..],
            &["run", "--query", "a", "--plot", "out.svg"][..],
            &["run", "--query", "a", "--min-coverage", "1.5"][..],
        ] {
            assert!(parse(arguments).validate().is_err(), "{arguments:?}");
        }
        assert!(
            parse(&["plot", "a.json", "--out", "x.jpg"])
                .validate()
                .is_err()
        );
        assert!(
            parse(&["plot", "a.json", "--out", "x.png"])
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn a_payload_file_holds_an_encoded_any() {
        let path =
            std::env::temp_dir().join(format!("fanout-loadgen-payload-{}.bin", std::process::id()));
        let payload = fanout_proto::any::pack(&fanout_proto::search::v1::ShardSearchRequest {
            query: "rust".to_string(),
            k: 5,
            ..Default::default()
        });
        std::fs::write(&path, payload.encode_to_vec()).unwrap();
        let path_text = path.display().to_string();
        let args = parse(&["run", "--target", "query", "--payload-file", &path_text]);
        let LoadgenCommand::Run(run_args) = args.command else {
            panic!("expected the run subcommand");
        };
        let prepared = run_args.prepare().unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(prepared.target.request.payload, Some(payload));
        assert_eq!(prepared.queries.len(), 1);
    }
}
