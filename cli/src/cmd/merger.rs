//! `fanout merger`: serve the top-k merge as its own process.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use fanout_merger::TopKMerge;
use fanout_runtime::serve::DrainOptions;
use fanout_runtime::{announce, shutdown};
use tokio::net::TcpListener;

use crate::cmd::drain_options;

#[derive(Debug, Args)]
pub struct MergerArgs {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0", env = "FANOUT_LISTEN")]
    pub listen: SocketAddr,
    /// On shutdown, report NOT_SERVING this long before refusing new calls.
    #[arg(long, default_value_t = 0, env = "FANOUT_DRAIN_DELAY_MS")]
    pub drain_delay_ms: u64,
}

/// Validated `fanout merger`.
pub struct MergerPlan {
    listen: SocketAddr,
    drain: DrainOptions,
}

impl MergerArgs {
    pub fn validate(self) -> MergerPlan {
        MergerPlan {
            listen: self.listen,
            drain: drain_options(self.drain_delay_ms),
        }
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
    fanout_merger::serve(
        listener,
        Arc::new(TopKMerge),
        plan.drain,
        shutdown::signal(),
    )
    .await
    .context("the merger stopped with an error")?;
    Ok(ExitCode::SUCCESS)
}
