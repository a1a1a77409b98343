//! `fanout leaf`: serve one shard until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use fanout_leaf::{FaultPlan, LeafConfig, LeafServer};
use fanout_runtime::{announce, shutdown};
use tokio::net::TcpListener;

use crate::cmd::{available_cores, bind_metrics, drain_options, serve_metrics};

#[derive(Debug, Args)]
pub struct LeafArgs {
    /// Shard directory written by `fanout index` (holds shard.json).
    #[arg(long, env = "FANOUT_SHARD_DIR")]
    pub shard_dir: PathBuf,
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0", env = "FANOUT_LISTEN")]
    pub listen: SocketAddr,
    /// Threads searching this shard (default: the number of cores).
    #[arg(long, env = "FANOUT_SEARCH_THREADS", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub search_threads: Option<u64>,
    /// On shutdown, report NOT_SERVING this long before refusing new calls.
    #[arg(long, default_value_t = 0, env = "FANOUT_DRAIN_DELAY_MS")]
    pub drain_delay_ms: u64,
    /// Inject a fault, for tests and benchmarks (repeatable; off by default):
    /// seed=N, latency=D or D1..D2, straggler=PxK, straggler-step=AFTER:P,
    /// pareto=SCALE:SHAPE, episodes=EVERY:LENGTHxK (slow episodes starting
    /// as a seeded Poisson process with mean gap EVERY, each LENGTH long,
    /// calls K times slower during one), inherent=PxD, hang[=P],
    /// unavailable=P (durations like 250us, 3ms, 2s).
    #[arg(
        long = "fault",
        value_name = "SPEC",
        env = "FANOUT_FAULT",
        value_delimiter = ';'
    )]
    pub faults: Vec<String>,
    /// Serve Prometheus metrics on `GET /metrics` at this address (its own
    /// port; port 0 picks a free one, printed on stdout). Off by default.
    #[arg(long, value_name = "ADDR", env = "FANOUT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

/// Validated `fanout leaf`: the shard is open, ready to serve.
pub struct LeafPlan {
    server: LeafServer,
    listen: SocketAddr,
    metrics_listen: Option<SocketAddr>,
}

impl LeafArgs {
    pub fn validate(self) -> anyhow::Result<LeafPlan> {
        if !self.shard_dir.is_dir() {
            bail!(
                "--shard-dir {} is not a directory",
                self.shard_dir.display()
            );
        }
        let faults = FaultPlan::parse(&self.faults).map_err(anyhow::Error::msg)?;
        let config = LeafConfig {
            shard_dir: self.shard_dir.clone(),
            search_threads: self
                .search_threads
                .map_or_else(available_cores, |threads| threads as usize),
            drain: drain_options(self.drain_delay_ms),
        };
        let server = LeafServer::open(config)
            .with_context(|| format!("cannot open the shard in {}", self.shard_dir.display()))?
            .with_faults(faults);
        Ok(LeafPlan {
            server,
            listen: self.listen,
            metrics_listen: self.metrics_listen,
        })
    }
}

pub async fn run(plan: LeafPlan) -> anyhow::Result<ExitCode> {
    let LeafPlan {
        server,
        listen,
        metrics_listen,
    } = plan;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let local_addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    let metrics = bind_metrics(metrics_listen).await?;
    let manifest = server.manifest();
    tracing::info!(
        shard_id = manifest.shard_id,
        shard_count = manifest.shard_count,
        doc_count = manifest.doc_count,
        generation = %manifest.generation,
        %local_addr,
        "leaf serving"
    );
    announce::announce_listening("leaf", local_addr);
    let _metrics_task = serve_metrics("leaf", metrics, server.metrics_registry());
    server
        .serve(listener, shutdown::signal())
        .await
        .context("the leaf stopped with an error")?;
    Ok(ExitCode::SUCCESS)
}
