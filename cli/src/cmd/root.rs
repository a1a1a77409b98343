//! `fanout root`: the public Search and Root APIs over a topology of leaves.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use fanout_root::{
    DEFAULT_DEADLINE_MARGIN, HedgePolicy, HedgeSettings, HedgeTimer, LatencyEstimate, RootConfig,
    RootServer, Topology,
};
use fanout_runtime::{announce, shutdown};
use tokio::net::TcpListener;

use crate::cmd::{bind_metrics, drain_options, grpc_url, serve_metrics};

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("shards_from").required(true).multiple(false)
    .args(["topology", "shard"]))]
pub struct RootArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:50051", env = "FANOUT_LISTEN")]
    pub listen: SocketAddr,
    /// TOML topology file: `[[shards]]` tables with `id` and `replicas`.
    #[arg(long, env = "FANOUT_TOPOLOGY")]
    pub topology: Option<PathBuf>,
    /// One shard's replicas, `ID=ADDR,ADDR`; repeat once per shard
    /// (in FANOUT_SHARD, separate shards with `;`).
    #[arg(
        long,
        value_name = "ID=ADDR,ADDR",
        env = "FANOUT_SHARD",
        value_delimiter = ';'
    )]
    pub shard: Vec<String>,
    /// URL of a merger process (`http://127.0.0.1:7000`); without it the root merges in-process.
    #[arg(long, env = "FANOUT_MERGER")]
    pub merger: Option<String>,
    /// Time limit of a request whose caller sets none, in milliseconds.
    #[arg(long, default_value_t = 10_000, env = "FANOUT_DEFAULT_TIMEOUT_MS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub default_timeout_ms: u64,
    /// On shutdown, report NOT_SERVING this long before refusing new calls.
    #[arg(long, default_value_t = 0, env = "FANOUT_DRAIN_DELAY_MS")]
    pub drain_delay_ms: u64,
    /// Hedging of shard calls: `off`, `fixed:<ms>` (fractions allowed),
    /// `adaptive` (a percentile of each shard's recent latency) or `tower`
    /// (tower's hedge middleware, a baseline for benchmarks: at most one
    /// hedge, after --hedge-percentile of the last second's latency once it
    /// holds 10 samples, no budget).
    #[arg(long, default_value = "adaptive", env = "FANOUT_HEDGE")]
    pub hedge: HedgePolicy,
    /// The percentile of recent shard latency an adaptive hedge waits for.
    #[arg(long, default_value_t = 95.0, env = "FANOUT_HEDGE_PERCENTILE")]
    pub hedge_percentile: f64,
    /// The shortest adaptive hedge delay, in microseconds.
    #[arg(long, default_value_t = 200, env = "FANOUT_HEDGE_FLOOR_US")]
    pub hedge_floor_us: u64,
    /// The longest adaptive hedge delay, in microseconds.
    #[arg(long, default_value_t = 500_000, env = "FANOUT_HEDGE_CEILING_US")]
    pub hedge_ceiling_us: u64,
    /// Hedges and retries allowed, in percent of primary shard calls.
    #[arg(long, default_value_t = 5.0, env = "FANOUT_HEDGE_BUDGET_PERCENT")]
    pub hedge_budget_percent: f64,
    /// Hedges and retries allowed per second on top of the percentage.
    #[arg(long, default_value_t = 10.0, env = "FANOUT_HEDGE_BUDGET_FLOOR")]
    pub hedge_budget_floor: f64,
    /// How attempts given up (overtaken by a hedge, timed out) enter the
    /// adaptive delay's latency estimate: `censored` (lower bounds,
    /// Kaplan-Meier) or `plain` (their time until given up, as a latency).
    #[arg(long, default_value = "censored", env = "FANOUT_HEDGE_ESTIMATE")]
    pub hedge_estimate: LatencyEstimate,
    /// Serve Prometheus metrics on `GET /metrics` at this address (its own
    /// port; port 0 picks a free one, printed on stdout). Off by default.
    #[arg(long, value_name = "ADDR", env = "FANOUT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

/// Validated `fanout root`.
pub struct RootPlan {
    config: RootConfig,
    listen: SocketAddr,
    metrics_listen: Option<SocketAddr>,
}

impl RootArgs {
    pub fn validate(self) -> anyhow::Result<RootPlan> {
        let topology = match (&self.topology, self.shard.is_empty()) {
            (Some(path), true) => Topology::from_toml_file(path)
                .with_context(|| format!("bad --topology {}", path.display()))?,
            (None, false) => Topology::from_shard_flags(&self.shard).context("bad --shard")?,
            _ => bail!(
                "give either --topology FILE or --shard ID=ADDR,... (one per shard), not both"
            ),
        };
        let merger = match &self.merger {
            Some(merger) => Some(grpc_url("--merger", merger)?),
            None => None,
        };
        let config = RootConfig {
            topology,
            merger,
            default_timeout: Duration::from_millis(self.default_timeout_ms),
            deadline_margin: DEFAULT_DEADLINE_MARGIN,
            drain: drain_options(self.drain_delay_ms),
            hedge: HedgeSettings {
                policy: self.hedge,
                percentile: self.hedge_percentile,
                floor: Duration::from_micros(self.hedge_floor_us),
                ceiling: Duration::from_micros(self.hedge_ceiling_us),
                budget_percent: self.hedge_budget_percent,
                budget_floor_per_second: self.hedge_budget_floor,
                timer: HedgeTimer::Precise,
                estimate: self.hedge_estimate,
            },
        };
        config.validate().context("bad root configuration")?;
        Ok(RootPlan {
            config,
            listen: self.listen,
            metrics_listen: self.metrics_listen,
        })
    }
}

pub async fn run(plan: RootPlan) -> anyhow::Result<ExitCode> {
    let RootPlan {
        config,
        listen,
        metrics_listen,
    } = plan;
    let shard_count = config.topology.shards.len();
    let merger = config.merger.clone();
    let server = RootServer::new(config)
        .await
        .context("cannot start the root")?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let local_addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    let metrics = bind_metrics(metrics_listen).await?;
    tracing::info!(
        %local_addr,
        shard_count,
        merger = merger.as_deref().unwrap_or("embedded"),
        "root serving"
    );
    announce::announce_listening("root", local_addr);
    let _metrics_task = serve_metrics("root", metrics, server.metrics_registry());
    server
        .serve(listener, shutdown::signal())
        .await
        .context("the root stopped with an error")?;
    Ok(ExitCode::SUCCESS)
}
