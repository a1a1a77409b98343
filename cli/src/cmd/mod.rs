//! The subcommands. Each module holds its clap `Args`, a `validate` step that
//! runs before the tokio runtime exists (its errors exit with 64), and an async
//! `run` on the validated configuration.
//!
//! - [`index`]: build a sharded index from JSON Lines.
//! - [`leaf`], [`merger`], [`root`]: serve one role until SIGINT/SIGTERM.
//! - [`up`]: a whole local cluster of child processes, the embedded default.
//! - [`search`]: one query against a root, as a table or JSON.
//! - [`eval`]: relevance (nDCG@10, Recall@100, MAP@100) on a BEIR test set.
//! - [`grpc_status`]: how a gRPC error is printed.
//! - [`human`]: numbers, durations and truncation for people to read.

pub mod eval;
pub mod grpc_status;
pub mod human;
pub mod index;
pub mod leaf;
pub mod merger;
pub mod root;
pub mod search;
pub mod up;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use fanout_runtime::announce;
use fanout_runtime::metrics::Registry;
use fanout_runtime::metrics_http::{MetricsEndpoint, MetricsTask};
use fanout_runtime::serve::DrainOptions;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a sharded index from a JSON Lines corpus (plain or gzip).
    Index(index::IndexArgs),
    /// Serve one shard of an index built by `fanout index`.
    Leaf(leaf::LeafArgs),
    /// Serve the top-k merge as a separate process.
    Merger(merger::MergerArgs),
    /// Serve the public Search and Root APIs over a topology of leaves.
    Root(root::RootArgs),
    /// Start a whole local cluster (index, leaves, merger, root) in one command.
    Up(up::UpArgs),
    /// Send one query to a root and print the hits.
    Search(search::SearchArgs),
    /// Measure relevance on a BEIR test set (nDCG@10, Recall@100, MAP@100).
    Eval(eval::EvalArgs),
    /// Open-loop load generation against a root or a leaf, and latency plots.
    Loadgen(fanout_loadgen::LoadgenArgs),
}

/// A subcommand whose configuration has been checked.
pub enum Validated {
    Index(index::IndexPlan),
    Leaf(leaf::LeafPlan),
    Merger(merger::MergerPlan),
    Root(root::RootPlan),
    Up(up::UpPlan),
    Search(search::SearchArgs),
    Eval(eval::EvalPlan),
    Loadgen(fanout_loadgen::LoadgenArgs),
}

impl Command {
    /// Checks the configuration without starting anything.
    pub fn validate(self) -> anyhow::Result<Validated> {
        Ok(match self {
            Command::Index(args) => Validated::Index(args.validate()?),
            Command::Leaf(args) => Validated::Leaf(args.validate()?),
            Command::Merger(args) => Validated::Merger(args.validate()),
            Command::Root(args) => Validated::Root(args.validate()?),
            Command::Up(args) => Validated::Up(args.validate()?),
            Command::Search(args) => Validated::Search(args.validate()?),
            Command::Eval(args) => Validated::Eval(args.validate()?),
            Command::Loadgen(args) => {
                args.validate()?;
                Validated::Loadgen(args)
            }
        })
    }
}

impl Validated {
    /// Runs the command; `log_format` is passed on to child processes.
    pub async fn run(self, log_format: LogFormatArg) -> anyhow::Result<ExitCode> {
        match self {
            Validated::Index(plan) => index::run(plan).await,
            Validated::Leaf(plan) => leaf::run(plan).await,
            Validated::Merger(plan) => merger::run(plan).await,
            Validated::Root(plan) => root::run(plan).await,
            Validated::Up(plan) => up::run(plan, log_format).await,
            Validated::Search(args) => search::run(args).await,
            Validated::Eval(plan) => eval::run(plan).await,
            Validated::Loadgen(args) => {
                fanout_loadgen::run(args).await?;
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

/// `--log-format`, as clap shows it in `--help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

impl LogFormatArg {
    /// The flag value, to pass on to child processes.
    pub fn as_flag_value(self) -> &'static str {
        match self {
            LogFormatArg::Text => "text",
            LogFormatArg::Json => "json",
        }
    }
}

impl From<LogFormatArg> for fanout_runtime::telemetry::LogFormat {
    fn from(format: LogFormatArg) -> Self {
        match format {
            LogFormatArg::Text => fanout_runtime::telemetry::LogFormat::Text,
            LogFormatArg::Json => fanout_runtime::telemetry::LogFormat::Json,
        }
    }
}

/// Drain options of a server from its `--drain-delay-ms`, default grace.
pub fn drain_options(drain_delay_ms: u64) -> DrainOptions {
    DrainOptions {
        drain_delay: Duration::from_millis(drain_delay_ms),
        ..DrainOptions::default()
    }
}

/// `addr` as a URL tonic can connect to (`host:port` gets `http://` in
/// front); `flag` names the flag in the error.
pub fn grpc_url(flag: &str, addr: &str) -> anyhow::Result<String> {
    let url = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
        .with_context(|| format!("{flag} {addr:?} is not a URL such as http://127.0.0.1:50051"))?;
    if endpoint.uri().host().is_none_or(str::is_empty) {
        bail!("{flag} {addr:?} has no host: use a URL such as http://127.0.0.1:50051");
    }
    Ok(url)
}

/// Binds `--metrics-listen`, when given.
pub async fn bind_metrics(addr: Option<SocketAddr>) -> anyhow::Result<Option<MetricsEndpoint>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let endpoint = MetricsEndpoint::bind(addr)
        .await
        .with_context(|| format!("cannot listen on --metrics-listen {addr}"))?;
    Ok(Some(endpoint))
}

/// Announces the metrics endpoint (after the service's own announce line,
/// which readers expect first) and serves `registry` on it until the
/// returned task is dropped, that is until the service stops.
pub fn serve_metrics(
    role: &str,
    endpoint: Option<MetricsEndpoint>,
    registry: Arc<Registry>,
) -> Option<MetricsTask> {
    let endpoint = endpoint?;
    let addr = endpoint.local_addr();
    tracing::info!(%addr, "metrics served on /metrics");
    announce::announce_metrics(role, addr);
    Some(endpoint.spawn(registry))
}

/// Threads the machine offers (1 when it cannot tell).
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use crate::Cli;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn root_needs_exactly_one_of_topology_and_shards() {
        assert!(Cli::try_parse_from(["fanout", "root"]).is_err());
        assert!(
            Cli::try_parse_from([
                "fanout",
                "root",
                "--topology",
                "t.toml",
                "--shard",
                "0=127.0.0.1:1"
            ])
            .is_err()
        );
        assert!(Cli::try_parse_from(["fanout", "root", "--shard", "0=127.0.0.1:1"]).is_ok());
        assert!(Cli::try_parse_from(["fanout", "root", "--topology", "t.toml"]).is_ok());
    }

    #[test]
    fn root_takes_repeated_shard_flags() {
        let cli = Cli::try_parse_from([
            "fanout",
            "root",
            "--shard",
            "0=127.0.0.1:1,127.0.0.1:2",
            "--shard",
            "1=127.0.0.1:3",
        ])
        .unwrap();
        let crate::cmd::Command::Root(args) = cli.command else {
            panic!("parsed as another subcommand");
        };
        assert_eq!(args.shard, ["0=127.0.0.1:1,127.0.0.1:2", "1=127.0.0.1:3"]);
    }

    #[test]
    fn rejects_a_bad_log_format_and_a_bad_listen_address() {
        assert!(Cli::try_parse_from(["fanout", "--log-format", "xml", "merger"]).is_err());
        assert!(Cli::try_parse_from(["fanout", "merger", "--listen", "localhost"]).is_err());
        assert!(Cli::try_parse_from(["fanout", "merger", "--log-format", "json"]).is_ok());
    }

    #[test]
    fn accepts_urls_and_host_ports_and_rejects_the_rest() {
        use crate::cmd::grpc_url;
        assert_eq!(
            grpc_url("--addr", "http://127.0.0.1:50051").unwrap(),
            "http://127.0.0.1:50051"
        );
        assert_eq!(
            grpc_url("--addr", "127.0.0.1:4000").unwrap(),
            "http://127.0.0.1:4000"
        );
        let error = grpc_url("--merger", "not a url").unwrap_err().to_string();
        assert!(error.starts_with("--merger"), "{error}");
    }

    #[test]
    fn metrics_listen_is_an_optional_socket_address_of_root_and_leaf() {
        let root = |extra: &[&str]| {
            let mut args = vec!["fanout", "root", "--shard", "0=127.0.0.1:1"];
            args.extend_from_slice(extra);
            Cli::try_parse_from(args)
        };
        let cli = root(&["--metrics-listen", "127.0.0.1:0"]).unwrap();
        let crate::cmd::Command::Root(args) = cli.command else {
            panic!("parsed as another subcommand");
        };
        assert_eq!(args.metrics_listen, Some("127.0.0.1:0".parse().unwrap()));
        let cli = root(&[]).unwrap();
        let crate::cmd::Command::Root(args) = cli.command else {
            panic!("parsed as another subcommand");
        };
        assert_eq!(args.metrics_listen, None, "off by default");
        let error = root(&["--metrics-listen", "localhost"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--metrics-listen"), "{error}");
        assert!(
            Cli::try_parse_from([
                "fanout",
                "leaf",
                "--shard-dir",
                "d",
                "--metrics-listen",
                "127.0.0.1:9100"
            ])
            .is_ok()
        );
    }

    #[test]
    fn search_defaults_match_the_documentation() {
        let cli = Cli::try_parse_from(["fanout", "search", "video editor"]).unwrap();
        let crate::cmd::Command::Search(args) = cli.command else {
            panic!("parsed as another subcommand");
        };
        assert_eq!(args.query, "video editor");
        assert_eq!(args.k, 10);
        assert_eq!(args.addr, "http://127.0.0.1:50051");
        assert!(!args.syntax && !args.json && !args.allow_partial);
    }
}
