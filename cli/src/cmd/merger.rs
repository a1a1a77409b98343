//! `fanout merger`: serve the top-k merge as its own process.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use fanout_merger::{MergerLimits, TopKMerge};
use fanout_runtime::serve::DrainOptions;
use fanout_runtime::{announce, shutdown};
use tokio::net::TcpListener;

use crate::cmd::{ServerTlsArgs, ServerTlsPlan, drain_options};

#[derive(Debug, Args)]
pub struct MergerArgs {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0", env = "FANOUT_LISTEN")]
    pub listen: SocketAddr,
    /// On shutdown, report NOT_SERVING this long before refusing new calls.
    #[arg(long, default_value_t = 0, env = "FANOUT_DRAIN_DELAY_MS")]
    pub drain_delay_ms: u64,
    /// Merges open at once; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = MergerLimits::default().max_sessions,
          env = "FANOUT_MAX_SESSIONS",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_sessions: usize,
    /// The longest a merge whose caller set no deadline stays open, in milliseconds.
    #[arg(long, default_value_t = MergerLimits::default().max_session_time.as_millis() as u64,
          env = "FANOUT_MAX_SESSION_MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_session_ms: u64,
    #[command(flatten)]
    pub tls: ServerTlsArgs,
}

/// Validated `fanout merger`.
pub struct MergerPlan {
    listen: SocketAddr,
    drain: DrainOptions,
    limits: MergerLimits,
    tls: ServerTlsPlan,
}

impl MergerArgs {
    pub fn validate(self) -> anyhow::Result<MergerPlan> {
        Ok(MergerPlan {
            tls: self.tls.validate()?,
            listen: self.listen,
            drain: drain_options(self.drain_delay_ms),
            limits: MergerLimits {
                max_sessions: self.max_sessions,
                max_session_time: Duration::from_millis(self.max_session_ms),
            },
        })
    }
}

pub async fn run(plan: MergerPlan) -> anyhow::Result<ExitCode> {
    let listener = TcpListener::bind(plan.listen)
        .await
        .with_context(|| format!("cannot listen on {}", plan.listen))?;
    let local_addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    tracing::info!(%local_addr, "merger serving the top-k merge");
    announce::announce_listening("merger", local_addr);
    let transport = plan.tls.transport().await?;
    fanout_merger::serve_over(
        listener,
        transport,
        Arc::new(TopKMerge),
        plan.limits,
        plan.drain,
        shutdown::signal(),
    )
    .await
    .context("the merger stopped with an error")?;
    Ok(ExitCode::SUCCESS)
}
