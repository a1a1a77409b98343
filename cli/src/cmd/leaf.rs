//! `fanout leaf`: serve one shard until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use fanout_leaf::{FaultPlan, LeafAdmission, LeafConfig, LeafServer};
use fanout_runtime::{announce, shutdown};
use tokio::net::TcpListener;

use crate::cmd::{
    QueryLimitArgs, ServerTlsArgs, ServerTlsPlan, available_cores, bind_metrics, drain_options,
    serve_metrics,
};

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
    /// unavailable=P, abort-on=MARKER (aborts the process on a request whose
    /// payload holds MARKER) (durations with their unit: 250us, 3ms, 1.5s).
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
    #[command(flatten)]
    pub query_limits: QueryLimitArgs,
    /// Calls queued or running per search thread beyond which new ones are
    /// refused with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = LeafAdmission::default().max_calls_in_flight_per_thread,
          env = "FANOUT_MAX_CALLS_PER_THREAD", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_calls_per_thread: u32,
    /// Calls whose expected wait in the search queue is longer than this
    /// (in milliseconds) are refused with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = LeafAdmission::default().max_queue_wait.as_millis() as u64,
          env = "FANOUT_MAX_QUEUE_WAIT_MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_queue_wait_ms: u64,
    #[command(flatten)]
    pub tls: ServerTlsArgs,
}

/// Validated `fanout leaf`: the shard is open, ready to serve.
pub struct LeafPlan {
    server: LeafServer,
    listen: SocketAddr,
    metrics_listen: Option<SocketAddr>,
    tls: ServerTlsPlan,
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
        let tls = self.tls.validate()?;
        let config = LeafConfig {
            search_threads: self
                .search_threads
                .map_or_else(available_cores, |threads| threads as usize),
            drain: drain_options(self.drain_delay_ms),
            query_limits: self.query_limits.limits(),
            admission: LeafAdmission {
                max_calls_in_flight_per_thread: self.max_calls_per_thread,
                max_queue_wait: std::time::Duration::from_millis(self.max_queue_wait_ms),
            },
            ..LeafConfig::new(&self.shard_dir)
        };
        let server = LeafServer::open(config)
            .with_context(|| format!("cannot open the shard in {}", self.shard_dir.display()))?
            .with_faults(faults);
        Ok(LeafPlan {
            server,
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            tls,
        })
    }
}

pub async fn run(plan: LeafPlan) -> anyhow::Result<ExitCode> {
    let LeafPlan {
        server,
        listen,
        metrics_listen,
        tls,
    } = plan;
    let transport = tls.transport().await?;
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
        .with_transport(transport)
        .serve(listener, shutdown::signal())
        .await
        .context("the leaf stopped with an error")?;
    Ok(ExitCode::SUCCESS)
}
