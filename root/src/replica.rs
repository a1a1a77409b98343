//! The leaf replicas of one shard: one lazily connected channel per replica
//! plus the [`ReplicaSelector`] that picks among them.

use std::time::Duration;

use fanout_proto::v1::leaf_client::LeafClient;
use tonic::transport::{Channel, Endpoint};

use crate::error::RootError;
use crate::hedge::tower_baseline::TowerHedgeSlot;
use crate::selector::{ReplicaSelector, SelectorOptions};
use crate::topology::ShardReplicas;

/// How long establishing a connection to a leaf may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Interval of HTTP/2 keepalive pings to leaves.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// Time a keepalive ping may go unanswered before the connection is dropped.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// One leaf replica.
#[derive(Debug)]
pub struct Replica {
    /// `http://host:port`.
    pub address: String,
    channel: Channel,
}

impl Replica {
    /// A client for one call (clients are cheap clones of the channel).
    pub fn leaf_client(&self) -> LeafClient<Channel> {
        LeafClient::new(self.channel.clone())
    }
}

/// The replicas of one shard.
#[derive(Debug)]
pub struct ReplicaSet {
    pub shard_id: u32,
    pub replicas: Vec<Replica>,
    pub selector: ReplicaSelector,
    /// tower's hedge of this shard, used only under `--hedge tower`.
    pub tower_hedge: TowerHedgeSlot,
}

impl ReplicaSet {
    /// Channels to every replica, connected lazily on first use (so a leaf
    /// that is down when the root starts does not stop the root).
    /// Must run inside a tokio runtime.
    pub fn connect_lazily(shard: &ShardReplicas) -> Result<ReplicaSet, RootError> {
        Self::connect_lazily_with(shard, SelectorOptions::default())
    }

    /// [`connect_lazily`](Self::connect_lazily) with these selector options.
    pub fn connect_lazily_with(
        shard: &ShardReplicas,
        options: SelectorOptions,
    ) -> Result<ReplicaSet, RootError> {
        let mut replicas = Vec::with_capacity(shard.replicas.len());
        for address in &shard.replicas {
            let url = crate::topology::normalized_replica_url(address).map_err(|reason| {
                RootError::BadReplicaAddress {
                    shard_id: shard.shard_id,
                    address: address.clone(),
                    reason,
                }
            })?;
            let endpoint = Endpoint::from_shared(url.clone())
                .map_err(|error| RootError::BadReplicaAddress {
                    shard_id: shard.shard_id,
                    address: address.clone(),
                    reason: error.to_string(),
                })?
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(true);
            replicas.push(Replica {
                address: url,
                channel: endpoint.connect_lazy(),
            });
        }
        if replicas.is_empty() {
            return Err(RootError::NoReplicas {
                shard_id: shard.shard_id,
            });
        }
        Ok(ReplicaSet {
            shard_id: shard.shard_id,
            selector: ReplicaSelector::new(replicas.len(), options),
            replicas,
            tower_hedge: TowerHedgeSlot::default(),
        })
    }
}

impl ReplicaSet {
    /// Shard 0 over `count` replicas at unused loopback ports, never
    /// connected: for unit tests that call through a fake `execute`.
    #[cfg(test)]
    pub(crate) fn for_tests(count: usize) -> ReplicaSet {
        let shard = ShardReplicas {
            shard_id: 0,
            replicas: (1..=count)
                .map(|port| format!("127.0.0.1:{port}"))
                .collect(),
        };
        ReplicaSet::connect_lazily(&shard).expect("loopback addresses are valid")
    }
}
