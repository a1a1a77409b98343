//! What every request handler of the root shares: the replica sets of the
//! shards, the merger, the known shard sizes, the timeout settings and the
//! metrics.

use std::time::Duration;

use fanout_merger::MergerEndpoint;

use crate::hedge::{HedgeBudget, HedgePolicy, HedgeSettings};
use crate::metrics::RootMetrics;
use crate::replica::ReplicaSet;
use crate::shard_info::ShardDocCounts;

#[derive(Debug)]
pub struct Cluster {
    /// Index = shard id.
    pub shards: Vec<ReplicaSet>,
    pub merger: MergerEndpoint,
    pub doc_counts: ShardDocCounts,
    pub default_timeout: Duration,
    pub deadline_margin: Duration,
    pub hedge: HedgeSettings,
    /// Shared by every request's hedges and retries.
    pub hedge_budget: HedgeBudget,
    /// Counted by every request; served by `--metrics-listen`.
    pub metrics: RootMetrics,
}

impl Cluster {
    /// The policy of a request: its own, else the root's.
    pub fn hedge_policy(&self, requested: Option<HedgePolicy>) -> HedgePolicy {
        requested.unwrap_or(self.hedge.policy)
    }
}
