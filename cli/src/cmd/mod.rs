//! The subcommands. Each module holds its clap `Args`, a `validate` step that
//! runs before the tokio runtime exists (its errors exit with 64), and an async
//! `run` on the validated configuration.
//!
//! - [`index`]: build a sharded index from JSON Lines.
//! - [`leaf`], [`merger`], [`root`]: serve one role until SIGINT/SIGTERM.
//! - [`up`]: a whole local cluster of child processes, the embedded default.
//! - [`search`]: one query against a root, as a table or JSON.
//! - [`health`]: one grpc.health.v1 check, the probe of containers.
//! - [`conformance`]: the contract test kit against anyone's leaf or merger.
//! - [`deploy`]: Kubernetes manifests for S shards, and the leaf pods' index copy.
//! - [`loadgen`]: open-loop load, plots of its reports, benchmark scenarios
//!   (the work itself is the `fanout-loadgen` library).
//! - [`eval`]: relevance (nDCG@10, Recall@100, MAP@100) on a BEIR test set.
//! - [`grpc_status`]: how a gRPC error is printed.
//! - [`human`]: numbers, durations and truncation for people to read.

pub mod conformance;
pub mod deploy;
pub mod eval;
pub mod grpc_status;
pub mod health;
pub mod human;
pub mod index;
pub mod leaf;
pub mod loadgen;
pub mod merger;
pub mod root;
pub mod search;
pub mod up;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use fanout_proto::search::limits::QueryLimits;
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
    Root(Box<root::RootArgs>),
    /// Start a whole local cluster (index, leaves, merger, root) in one command.
    Up(up::UpArgs),
    /// Send one query to a root and print the hits.
    Search(search::SearchArgs),
    /// Measure relevance on a BEIR test set (nDCG@10, Recall@100, MAP@100).
    Eval(eval::EvalArgs),
    /// Check a server's grpc.health.v1 status: exit 0 when SERVING.
    Health(health::HealthArgs),
    /// Open-loop load generation against a root or a leaf, and latency plots.
    Loadgen(loadgen::LoadgenArgs),
    /// Check a leaf or merger (anyone's, in any language) against fanout's
    /// contracts: a table of checks, exit 1 when one fails.
    Conformance(conformance::ConformanceArgs),
    /// Render Kubernetes manifests for S shards x R replicas; copy a shard
    /// into a leaf pod's volume.
    Deploy(deploy::DeployArgs),
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
    Health(health::HealthPlan),
    Loadgen(loadgen::LoadgenPlan),
    Conformance(conformance::ConformancePlan),
    Deploy(deploy::DeployPlan),
}

impl Command {
    /// Checks the configuration without starting anything.
    /// The role whose spans are exported when an OTLP endpoint is given:
    /// the three services (`fanout search --trace` forces sampling with a
    /// traceparent, without spans of its own).
    pub fn traced_role(&self) -> Option<&'static str> {
        match self {
            Command::Leaf(_) => Some("leaf"),
            Command::Merger(_) => Some("merger"),
            Command::Root(_) => Some("root"),
            _ => None,
        }
    }

    pub fn validate(self) -> anyhow::Result<Validated> {
        Ok(match self {
            Command::Index(args) => Validated::Index(args.validate()?),
            Command::Leaf(args) => Validated::Leaf(args.validate()?),
            Command::Merger(args) => Validated::Merger(args.validate()?),
            Command::Root(args) => Validated::Root(args.validate()?),
            Command::Up(args) => Validated::Up(args.validate()?),
            Command::Search(args) => Validated::Search(args.validate()?),
            Command::Eval(args) => Validated::Eval(args.validate()?),
            Command::Health(args) => Validated::Health(args.validate()?),
            Command::Loadgen(args) => Validated::Loadgen(args.validate()?),
            Command::Conformance(args) => Validated::Conformance(args.validate()?),
            Command::Deploy(args) => Validated::Deploy(args.validate()?),
        })
    }
}

impl Validated {
    /// Runs the command; `log_format` is passed on to child processes.
    pub async fn run(
        self,
        log_format: LogFormatArg,
        traces: &fanout_runtime::telemetry::TraceSettings,
    ) -> anyhow::Result<ExitCode> {
        match self {
            Validated::Index(plan) => index::run(plan).await,
            Validated::Leaf(plan) => leaf::run(plan).await,
            Validated::Merger(plan) => merger::run(plan).await,
            Validated::Root(plan) => root::run(plan).await,
            Validated::Up(plan) => up::run(plan, log_format, traces).await,
            Validated::Search(args) => search::run(args).await,
            Validated::Eval(plan) => eval::run(plan).await,
            Validated::Health(plan) => health::run(plan).await,
            Validated::Loadgen(plan) => loadgen::run(plan).await,
            Validated::Conformance(plan) => conformance::run(plan).await,
            Validated::Deploy(plan) => deploy::run(plan).await,
        }
    }
}

/// The limits on search queries, the same flags on root and leaf (the root
/// checks them before any leaf is called, every leaf again).
#[derive(Debug, Clone, Args)]
pub struct QueryLimitArgs {
    /// The longest query, in bytes.
    #[arg(long, default_value_t = QueryLimits::DEFAULT.max_bytes, env = "FANOUT_MAX_QUERY_BYTES",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1 << 24))]
    pub max_query_bytes: usize,
    /// The deepest nesting of a syntax query (parentheses and NOTs).
    #[arg(long, default_value_t = QueryLimits::DEFAULT.max_depth, env = "FANOUT_MAX_QUERY_DEPTH",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub max_query_depth: usize,
    /// The most words and phrases of a query.
    #[arg(long, default_value_t = QueryLimits::DEFAULT.max_clauses, env = "FANOUT_MAX_QUERY_CLAUSES",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1 << 20))]
    pub max_query_clauses: usize,
    /// The most distinct terms of a natural-language query, after analysis.
    #[arg(long, default_value_t = QueryLimits::DEFAULT.max_terms, env = "FANOUT_MAX_QUERY_TERMS",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1 << 20))]
    pub max_query_terms: usize,
}

impl QueryLimitArgs {
    pub fn limits(&self) -> QueryLimits {
        QueryLimits {
            max_bytes: self.max_query_bytes,
            max_depth: self.max_query_depth,
            max_clauses: self.max_query_clauses,
            max_terms: self.max_query_terms,
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
    fanout_runtime::client::grpc_url(addr).map_err(|reason| {
        anyhow::anyhow!("{flag} {addr:?} is not a URL such as http://127.0.0.1:50051: {reason}")
    })
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

/// A server's TLS and exposure flags, the same on root, leaf and merger.
#[derive(Debug, Clone, Args)]
pub struct ServerTlsArgs {
    /// The server's certificate chain (PEM): with --tls-key, it serves
    /// over TLS (reloaded on SIGHUP). The root also presents it to leaves
    /// and mergers that ask for a client certificate.
    #[arg(long, env = "FANOUT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The certificate's private key (PEM), readable by its owner only.
    #[arg(long, env = "FANOUT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Accept only clients with a certificate from this CA (mutual TLS).
    #[arg(long, env = "FANOUT_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<std::path::PathBuf>,
    /// Also serve grpc.health.v1 alone, in plaintext, on this address: for
    /// probes that carry no certificate (Kubernetes' gRPC probe speaks no
    /// TLS). Only health is there.
    #[arg(long, env = "FANOUT_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
    /// Serve no server reflection (it lists the services served, and their
    /// messages).
    #[arg(long, env = "FANOUT_NO_REFLECTION")]
    pub no_reflection: bool,
}

/// What [`ServerTlsArgs`] resolve to before the runtime starts.
#[derive(Debug)]
pub struct ServerTlsPlan {
    pub tls: Option<Arc<fanout_runtime::tls::ServerTls>>,
    pub health_listen: Option<SocketAddr>,
    pub reflection: bool,
}

impl ServerTlsArgs {
    /// Reads the certificate and key (a bad file exits 64).
    pub fn validate(&self) -> anyhow::Result<ServerTlsPlan> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(Arc::new(
                fanout_runtime::tls::ServerTls::load(fanout_runtime::tls::ServerTlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: self.tls_client_ca.clone(),
                })
                .context("bad --tls-cert, --tls-key or --tls-client-ca")?,
            )),
            _ => None,
        };
        Ok(ServerTlsPlan {
            tls,
            health_listen: self.health_listen,
            reflection: !self.no_reflection,
        })
    }
}

impl ServerTlsPlan {
    /// Binds the health listener and starts reloading the certificate on
    /// SIGHUP.
    pub async fn transport(self) -> anyhow::Result<fanout_runtime::serve::ServerTransport> {
        let health_listener = match self.health_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on --health-listen {addr}"))?,
            ),
            None => None,
        };
        if let Some(addr) = health_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
        {
            tracing::info!(%addr, "health alone, in plaintext");
        }
        if let Some(tls) = &self.tls {
            let tls = Arc::clone(tls);
            fanout_runtime::shutdown::on_sighup("the TLS certificate", move || {
                tls.reload()
                    .map(|()| format!("reloaded from {}", tls.files().cert.display()))
                    .map_err(|error| error.to_string())
            });
        }
        Ok(fanout_runtime::serve::ServerTransport {
            tls: self.tls,
            health_listener,
            reflection: self.reflection,
        })
    }
}

/// A client's TLS flags (`fanout search`, `fanout health`).
#[derive(Debug, Clone, Args)]
pub struct ClientTlsArgs {
    /// Speak TLS, trusting this CA (PEM).
    #[arg(long, env = "FANOUT_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Present this certificate (PEM) to a server that asks for one
    /// (mutual TLS), with --tls-key.
    #[arg(long, env = "FANOUT_TLS_CERT", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The certificate's private key (PEM), readable by its owner only.
    #[arg(long, env = "FANOUT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// The name the server's certificate must hold (default: the host of
    /// the address).
    #[arg(long, env = "FANOUT_TLS_SERVER_NAME", requires = "tls_ca")]
    pub tls_server_name: Option<String>,
}

impl ClientTlsArgs {
    /// The endpoint of `url`, over TLS when --tls-ca is given.
    pub fn endpoint(&self, url: &str) -> anyhow::Result<tonic::transport::Endpoint> {
        let tls = match &self.tls_ca {
            None => None,
            Some(ca) => {
                let identity = self.tls_cert.as_deref().zip(self.tls_key.as_deref());
                Some(
                    fanout_runtime::tls::ClientTls::load(ca, identity)
                        .context("bad --tls-ca, --tls-cert or --tls-key")?,
                )
            }
        };
        fanout_runtime::client::endpoint(url, tls.as_ref(), self.tls_server_name.as_deref())
            .map_err(anyhow::Error::msg)
    }
}
