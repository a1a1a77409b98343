//! `fanout loadgen run | plot | scenario`: open-loop load against a root or
//! a leaf, plots of its reports, and whole benchmark scenarios.
//!
//! ```text
//! fanout loadgen run --target search --addr 127.0.0.1:50051 --rate 200 --duration 30s \
//!     --queries queries.jsonl --json run.json --hdr-log run.hlog --plot run.png
//! fanout loadgen plot before.json after.json --out compare.png
//! fanout loadgen scenario loadgen/scenarios/hedging-stragglers.toml
//! ```
//! Every flag can also come from its `FANOUT_LOADGEN_...` environment
//! variable. The flags are checked and the files they name read here,
//! before the runtime starts; the work itself is `fanout_loadgen::commands`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use fanout_loadgen::commands::{
    PlotPlan, RunPlan, ScenarioPlan, plot_reports, run_and_report, run_scenario_and_report,
};
use fanout_loadgen::plot::check_png_path;
use fanout_loadgen::runner::DEFAULT_MAX_IN_FLIGHT;
use fanout_loadgen::target::read_payload_file;
use fanout_loadgen::{
    ArrivalProcess, HedgeRequest, LoadgenError, QueryFormat, QueryOrder, QuerySet, RequestTemplate,
    RunOptions, Schedule, StopCondition, TargetKind, TargetSpec,
};
use fanout_proto::search::v1::QueryMode;
use fanout_runtime::duration::parse_duration;

/// Open-loop load generation against a fanout root or leaf, and plots of its reports.
#[derive(Debug, Clone, Args)]
pub struct LoadgenArgs {
    #[command(subcommand)]
    pub command: LoadgenCommand,
}

// Parsed once per process, so the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Subcommand)]
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

/// `--target`, as clap shows it in `--help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetKindArg {
    /// The root's `fanout.search.v1.Search/Search`.
    Search,
    /// One leaf's `fanout.v1.Leaf/Execute` with a `ShardSearchRequest` payload.
    Leaf,
    /// The root's generic `fanout.v1.Root/Query`.
    Query,
}

impl From<TargetKindArg> for TargetKind {
    fn from(kind: TargetKindArg) -> TargetKind {
        match kind {
            TargetKindArg::Search => TargetKind::Search,
            TargetKindArg::Leaf => TargetKind::Leaf,
            TargetKindArg::Query => TargetKind::Query,
        }
    }
}

/// `--arrivals`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ArrivalsArg {
    /// Evenly spaced, exactly `rate` a second (wrk2's constant throughput).
    Constant,
    /// A Poisson process: independent exponential gaps with mean `1 / rate`.
    Poisson,
}

impl From<ArrivalsArg> for ArrivalProcess {
    fn from(arrivals: ArrivalsArg) -> ArrivalProcess {
        match arrivals {
            ArrivalsArg::Constant => ArrivalProcess::Constant,
            ArrivalsArg::Poisson => ArrivalProcess::Poisson,
        }
    }
}

/// `--query-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QueryFormatArg {
    /// Decided by the first non-blank line: JSON with `_id` is BEIR, JSON with
    /// `query` is benchmark-game, anything else plain text.
    Auto,
    Text,
    BenchmarkGame,
    Beir,
}

impl From<QueryFormatArg> for QueryFormat {
    fn from(format: QueryFormatArg) -> QueryFormat {
        match format {
            QueryFormatArg::Auto => QueryFormat::Auto,
            QueryFormatArg::Text => QueryFormat::Text,
            QueryFormatArg::BenchmarkGame => QueryFormat::BenchmarkGame,
            QueryFormatArg::Beir => QueryFormat::Beir,
        }
    }
}

/// `--order`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QueryOrderArg {
    /// As in the source.
    InOrder,
    /// Shuffled once by the run's seed, then cycled in that order.
    Shuffled,
}

impl From<QueryOrderArg> for QueryOrder {
    fn from(order: QueryOrderArg) -> QueryOrder {
        match order {
            QueryOrderArg::InOrder => QueryOrder::InOrder,
            QueryOrderArg::Shuffled => QueryOrder::Shuffled,
        }
    }
}

/// `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
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

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// What to drive: the root's Search, one leaf's Execute, or the root's generic Query.
    #[arg(
        long,
        value_enum,
        default_value = "search",
        env = "FANOUT_LOADGEN_TARGET"
    )]
    pub target: TargetKindArg,

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
    pub arrivals: ArrivalsArg,

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
    #[arg(long, default_value_t = DEFAULT_MAX_IN_FLIGHT, env = "FANOUT_LOADGEN_MAX_IN_FLIGHT")]
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
    pub query_format: QueryFormatArg,

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
    pub order: QueryOrderArg,

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

#[derive(Debug, Clone, Args)]
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

#[derive(Debug, Clone, Args)]
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

/// Validated `fanout loadgen`: the subcommand's plan, its files read.
#[derive(Debug)]
pub enum LoadgenPlan {
    Run(RunPlan),
    Plot(PlotPlan),
    Scenario(ScenarioPlan),
}

impl LoadgenArgs {
    /// Checks the flags and reads the files they name, without starting
    /// anything (a failure is a usage error).
    pub fn validate(self) -> anyhow::Result<LoadgenPlan> {
        Ok(match self.command {
            LoadgenCommand::Run(run_args) => LoadgenPlan::Run(run_args.validate()?),
            LoadgenCommand::Plot(plot_args) => LoadgenPlan::Plot(plot_args.validate()?),
            LoadgenCommand::Scenario(scenario_args) => {
                LoadgenPlan::Scenario(scenario_args.validate()?)
            }
        })
    }
}

impl RunArgs {
    /// Validates the flags and loads the queries and the payload file.
    pub fn validate(self) -> Result<RunPlan, LoadgenError> {
        let invalid = |text: String| Err(LoadgenError::InvalidOption(text));
        let target = TargetKind::from(self.target);
        let schedule = Schedule::new(self.rate, self.arrivals.into(), self.seed)?;
        if self.connections == 0 {
            return invalid("--connections must be at least 1".to_string());
        }
        if !(0.0..=1.0).contains(&self.min_coverage) {
            return invalid(format!(
                "--min-coverage must be within 0..=1, got {}",
                self.min_coverage
            ));
        }
        if self.payload_file.is_some() && target != TargetKind::Query {
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
            (Some(path), _) => {
                QuerySet::from_file(path, self.query_format.into(), self.tag.as_deref())?
            }
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
        .ordered(self.order.into(), self.seed);
        let stop = match self.requests {
            Some(requests) => StopCondition::Requests(requests),
            None => StopCondition::Duration(self.duration),
        };
        let options = RunOptions {
            label: self.label,
            warmup: self.warmup,
            stop,
            max_in_flight: self.max_in_flight,
            timeout: Duration::from_millis(self.timeout_ms),
            progress: !self.no_progress && RunOptions::stderr_is_terminal(),
            hdr_log: self.hdr_log,
            late_launch_threshold: Duration::from_micros(self.late_launch_threshold_us),
            keep_shard_samples: false,
            keep_timeline: false,
        };
        options.validate()?;
        Ok(RunPlan {
            target: TargetSpec {
                tls: None,
                kind: target,
                addr: self.addr,
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
            json: self.json,
            plot: self.plot,
        })
    }
}

impl PlotArgs {
    pub fn validate(self) -> Result<PlotPlan, LoadgenError> {
        let plan = PlotPlan {
            reports: self.reports,
            out: self.out,
            title: self.title,
        };
        plan.validate()?;
        Ok(plan)
    }
}

impl ScenarioArgs {
    /// Reads and checks the scenario file and the files it names.
    pub fn validate(self) -> Result<ScenarioPlan, LoadgenError> {
        Ok(ScenarioPlan {
            scenario: fanout_loadgen::scenario::load_checked(&self.file)?,
            check: self.check,
            out_dir: self.out,
            data_dir: self.data_dir,
            duration: self.duration,
            rounds: self.rounds,
        })
    }
}

/// Runs `fanout loadgen run | plot | scenario`.
pub async fn run(plan: LoadgenPlan) -> anyhow::Result<ExitCode> {
    match plan {
        LoadgenPlan::Run(plan) => run_and_report(&plan).await?,
        LoadgenPlan::Plot(plan) => plot_reports(&plan)?,
        LoadgenPlan::Scenario(plan) => run_scenario_and_report(&plan).await?,
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::Cli;

    fn parse(arguments: &[&str]) -> LoadgenArgs {
        let cli = Cli::try_parse_from(
            ["fanout", "loadgen"]
                .into_iter()
                .chain(arguments.iter().copied()),
        )
        .unwrap();
        let crate::cmd::Command::Loadgen(args) = cli.command else {
            panic!("parsed as another subcommand");
        };
        args
    }

    fn run_plan(arguments: &[&str]) -> RunPlan {
        match parse(arguments).validate().unwrap() {
            LoadgenPlan::Run(plan) => plan,
            other => panic!("expected a run plan, got {other:?}"),
        }
    }

    fn loadgen_command() -> clap::Command {
        Cli::command()
            .find_subcommand("loadgen")
            .expect("loadgen is a subcommand")
            .clone()
    }

    #[test]
    fn the_command_definition_is_consistent() {
        let mut command = loadgen_command();
        command.build();
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
        let command = loadgen_command();
        for subcommand in command.get_subcommands() {
            for argument in subcommand.get_arguments() {
                if argument.is_positional() || argument.get_id() == "help" {
                    continue;
                }
                if argument.is_global_set() {
                    // --log-format, the binary's own global flag.
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
    fn durations_need_a_unit() {
        let duration = |text: &str| {
            let LoadgenCommand::Run(run_args) =
                parse(&["run", "--query", "a", "--duration", text]).command
            else {
                panic!("expected the run subcommand");
            };
            run_args.duration
        };
        assert_eq!(duration("500ms"), Duration::from_millis(500));
        assert_eq!(duration("10s"), Duration::from_secs(10));
        assert_eq!(duration("1.5s"), Duration::from_millis(1500));
        assert_eq!(duration("2m"), Duration::from_secs(120));
        for bad in ["3", "ten seconds", "5parsecs"] {
            let error = Cli::try_parse_from(["fanout", "loadgen", "run", "--duration", bad])
                .unwrap_err()
                .to_string();
            assert!(error.contains("250ms, 2s, 1m or 1.5s"), "{bad}: {error}");
        }
    }

    #[test]
    fn run_flags_become_a_run_plan() {
        let plan = run_plan(&[
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
        assert_eq!(plan.schedule.rate_per_second(), 250.0);
        assert_eq!(plan.schedule.arrivals(), ArrivalProcess::Poisson);
        assert_eq!(plan.options.stop, StopCondition::Requests(1000));
        assert_eq!(plan.options.warmup, Duration::from_secs(2));
        assert_eq!(plan.queries.len(), 2);
        assert_eq!(plan.queries.order(), QueryOrder::Shuffled);
        assert_eq!(plan.target.request.k, 20);
        assert_eq!(plan.target.request.mode, QueryMode::Syntax);
        assert!(plan.target.request.allow_partial);
        assert_eq!(plan.target.connections, 4);
        assert_eq!(plan.target.kind, TargetKind::Search);
    }

    #[test]
    fn output_flags_reach_the_run_plan() {
        let queries = std::env::temp_dir().join(format!(
            "fanout-cli-loadgen-queries-{}.jsonl",
            std::process::id()
        ));
        std::fs::write(
            &queries,
            "{\"query\": \"the\", \"tags\": [\"term\"]}\n{\"query\": \"griffith observatory\", \"tags\": [\"union\"]}\n",
        )
        .unwrap();
        let plan = run_plan(&[
            "run",
            "--addr",
            "127.0.0.1:4000",
            "--duration",
            "1s",
            "--warmup",
            "100ms",
            "--queries",
            &queries.display().to_string(),
            "--tag",
            "union",
            "--json",
            "run.json",
            "--hdr-log",
            "run.hlog",
            "--plot",
            "run.png",
            "--label",
            "cli run",
            "--hedge",
            "fixed:0.25",
        ]);
        std::fs::remove_file(&queries).unwrap();
        assert_eq!(plan.target.addr, "127.0.0.1:4000");
        assert_eq!(
            plan.options.stop,
            StopCondition::Duration(Duration::from_secs(1))
        );
        assert_eq!(plan.options.warmup, Duration::from_millis(100));
        assert_eq!(plan.queries.len(), 1, "only the union query");
        assert_eq!(plan.json, Some(PathBuf::from("run.json")));
        assert_eq!(plan.options.hdr_log, Some(PathBuf::from("run.hlog")));
        assert_eq!(plan.plot, Some(PathBuf::from("run.png")));
        assert_eq!(plan.options.label.as_deref(), Some("cli run"));
        assert_eq!(plan.target.request.hedge.delay_micros, 250);
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
        // The Any's protobuf encoding, written out: field 1 (type_url) and
        // field 2 (value), each a tag, a one-byte length and the bytes.
        let mut encoded = Vec::new();
        for (tag, bytes) in [
            (0x0a, payload.type_url.as_bytes()),
            (0x12, &payload.value[..]),
        ] {
            encoded.push(tag);
            encoded.push(u8::try_from(bytes.len()).expect("short enough for one length byte"));
            encoded.extend_from_slice(bytes);
        }
        std::fs::write(&path, encoded).unwrap();
        let path_text = path.display().to_string();
        let plan = run_plan(&["run", "--target", "query", "--payload-file", &path_text]);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(plan.target.request.payload, Some(payload));
        assert_eq!(plan.queries.len(), 1);
    }
}
