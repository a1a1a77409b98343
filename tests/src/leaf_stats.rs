//! A leaf's own counts of its calls (`fanout-leaf-stats`, read from the
//! metadata of a `Leaf/Info` response): what a test reads to prove what
//! happened at the leaf, not only what the root says.

use std::net::SocketAddr;

use anyhow::Context;
use fanout_leaf::service::{LEAF_STATS_METADATA, LeafStats};
use fanout_proto::v1::InfoRequest;
use fanout_proto::v1::leaf_client::LeafClient;

use fanout_cluster::health;

/// The counts of the leaf at `addr`, now.
pub async fn leaf_stats(addr: SocketAddr) -> anyhow::Result<LeafStats> {
    let channel = health::connect(addr).await?;
    let response = LeafClient::new(channel)
        .info(InfoRequest {})
        .await
        .with_context(|| format!("the leaf at {addr} does not answer Info"))?;
    let header = response
        .metadata()
        .get(LEAF_STATS_METADATA)
        .context("Info carries no leaf stats")?
        .to_str()
        .context("the leaf stats header is not ASCII")?;
    LeafStats::from_header(header)
        .with_context(|| format!("cannot parse the leaf stats {header:?}"))
}
