//! The leaf replicas of one shard.
//!
//! A shard's replicas come from its topology entry: fixed addresses
//! (`host:port`, a host name resolved again at each connection) and DNS
//! names (`dns:host:port`) standing for every address the name resolves to,
//! as a scaled compose service or a Kubernetes headless Service presents
//! its replicas. The members are a snapshot ([`Members`]) swapped whole
//! when a re-resolution changes them (see [`crate::discovery`]): a shard
//! call keeps the snapshot it started with, so calls in flight on a replica
//! that left finish on it, and a replica that stays keeps its selector
//! state (latency estimate, probation, calls in flight).
//!
//! Each replica's health service is watched (`grpc.health.v1`, service
//! `fanout.v1.Leaf`): a replica that says NOT_SERVING, a leaf draining
//! before it stops, gets no new calls while another replica can take them.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use fanout_proto::v1::leaf_client::LeafClient;
use fanout_runtime::client::{internal_endpoint, lazy_channel};
use fanout_runtime::tls::ClientTls;
use tokio_util::task::AbortOnDropHandle;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::error::RootError;
use crate::selector::{Health, Member, ReplicaSelector, ReplicaState, SelectorOptions};
use crate::topology::ShardReplicas;

/// The service name a leaf reports its health under.
pub const LEAF_SERVICE: &str = "fanout.v1.Leaf";
/// First pause between health checks of a replica that is not serving or
/// not reachable; it doubles up to [`HEALTH_POLL_LONGEST`].
const HEALTH_POLL_FIRST: Duration = Duration::from_millis(250);
const HEALTH_POLL_LONGEST: Duration = Duration::from_secs(2);
/// Limit of one health check.
const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// Where a shard's replicas come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaSource {
    /// One replica: `http://host:port`.
    Address(String),
    /// Every address `host` resolves to, each a replica on `port`.
    Dns { host: String, port: u16 },
}

impl ReplicaSource {
    /// Reads a validated topology entry (`http://host:port` or
    /// `dns:host:port`).
    pub fn parse(entry: &str) -> Result<ReplicaSource, String> {
        match entry.strip_prefix("dns:") {
            Some(rest) => {
                let (host, port) = crate::topology::dns_host_port(rest)?;
                Ok(ReplicaSource::Dns { host, port })
            }
            None => Ok(ReplicaSource::Address(
                crate::topology::normalized_replica_url(entry)?,
            )),
        }
    }
}

impl std::fmt::Display for ReplicaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplicaSource::Address(url) => f.write_str(url),
            ReplicaSource::Dns { host, port } => write!(f, "dns:{host}:{port}"),
        }
    }
}

/// One leaf replica.
#[derive(Debug)]
pub struct Replica {
    /// `http://host:port`, as dialed (an IP address for a member found by DNS).
    pub address: String,
    /// The `dns:` name it was found by; `None` for a fixed address.
    pub origin: Option<String>,
    channel: Channel,
    state: ReplicaState,
    /// Watches the replica's health for as long as the replica is used.
    _health_watch: Option<AbortOnDropHandle<()>>,
}

impl Replica {
    /// A replica at `address` (`http://host:port`), connected lazily, its
    /// health watched if `watch_health`, over TLS with `tls` (the server
    /// name checked is the `dns:` name the replica was found by, else the
    /// host of its address). Must run inside a tokio runtime.
    fn new(
        address: String,
        origin: Option<String>,
        options: &SelectorOptions,
        watch_health: bool,
        tls: Option<&ClientTls>,
    ) -> Result<Arc<Replica>, String> {
        let server_name = origin.as_deref().and_then(dns_host);
        let channel = lazy_channel(&internal_endpoint(&address, tls, server_name)?);
        Ok(Arc::new_cyclic(|replica: &Weak<Replica>| {
            let watch = watch_health.then(|| {
                AbortOnDropHandle::new(tokio::spawn(watch_health_of(
                    replica.clone(),
                    channel.clone(),
                )))
            });
            Replica {
                address,
                origin,
                channel,
                state: ReplicaState::new(options),
                _health_watch: watch,
            }
        }))
    }

    /// A client for one call (clients are cheap clones of the channel).
    pub fn leaf_client(&self) -> LeafClient<Channel> {
        LeafClient::new(self.channel.clone())
    }

    /// Its load and health, as the selector keeps them.
    pub fn state(&self) -> &ReplicaState {
        &self.state
    }
}

/// The host of a `dns:host:port` name.
fn dns_host(origin: &str) -> Option<&str> {
    let name = origin.strip_prefix("dns:")?;
    let (host, _port) = name.rsplit_once(':')?;
    Some(host)
}

impl Member for Arc<Replica> {
    fn state(&self) -> &ReplicaState {
        &self.state
    }
}

/// A snapshot of a shard's members. Indexes into it are what the selector
/// and a shard call's attempts speak of.
pub type Members = Arc<[Arc<Replica>]>;

/// The replicas of one shard.
#[derive(Debug)]
pub struct ReplicaSet {
    pub shard_id: u32,
    pub sources: Vec<ReplicaSource>,
    members: RwLock<Members>,
    pub selector: ReplicaSelector,
    watch_health: bool,
    /// TLS to every member, when the root has it.
    tls: Option<ClientTls>,
}

impl ReplicaSet {
    /// The shard's fixed replicas, channels connected lazily on first use
    /// (so a leaf that is down when the root starts does not stop the
    /// root); its `dns:` names have no members until resolved
    /// ([`crate::discovery`]). Must run inside a tokio runtime.
    pub fn connect_lazily_with(
        shard: &ShardReplicas,
        options: SelectorOptions,
        watch_health: bool,
        tls: Option<ClientTls>,
    ) -> Result<ReplicaSet, RootError> {
        let bad_address = |address: &str, reason: String| RootError::BadReplicaAddress {
            shard_id: shard.shard_id,
            address: address.to_owned(),
            reason,
        };
        let mut sources = Vec::with_capacity(shard.replicas.len());
        let mut members = Vec::new();
        for entry in &shard.replicas {
            let source =
                ReplicaSource::parse(entry).map_err(|reason| bad_address(entry, reason))?;
            if let ReplicaSource::Address(url) = &source {
                members.push(
                    Replica::new(url.clone(), None, &options, watch_health, tls.as_ref())
                        .map_err(|reason| bad_address(entry, reason))?,
                );
            }
            sources.push(source);
        }
        if sources.is_empty() {
            return Err(RootError::NoReplicas {
                shard_id: shard.shard_id,
            });
        }
        Ok(ReplicaSet {
            shard_id: shard.shard_id,
            sources,
            members: RwLock::new(members.into()),
            selector: ReplicaSelector::new(options),
            watch_health,
            tls,
        })
    }

    /// The members now.
    pub fn members(&self) -> Members {
        Arc::clone(
            &self
                .members
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Whether any source is a DNS name (to be resolved, and re-resolved).
    pub fn has_dns_sources(&self) -> bool {
        self.sources
            .iter()
            .any(|source| matches!(source, ReplicaSource::Dns { .. }))
    }

    /// Makes the members `wanted`, `(address, origin)` pairs: a replica
    /// already a member stays the same replica (its state and connection
    /// kept), a new one is connected lazily, one no longer wanted leaves
    /// (its calls in flight finish). Returns the addresses that joined and
    /// those that left. Must run inside a tokio runtime.
    pub fn update_members(
        &self,
        wanted: Vec<(String, Option<String>)>,
    ) -> (Vec<String>, Vec<String>) {
        let current = self.members();
        let mut by_address: HashMap<&str, &Arc<Replica>> = current
            .iter()
            .map(|replica| (replica.address.as_str(), replica))
            .collect();
        let mut next = Vec::with_capacity(wanted.len());
        let mut joined = Vec::new();
        for (address, origin) in wanted {
            if next
                .iter()
                .any(|replica: &Arc<Replica>| replica.address == address)
            {
                continue;
            }
            if let Some(replica) = by_address.remove(address.as_str()) {
                next.push(Arc::clone(replica));
                continue;
            }
            match Replica::new(
                address.clone(),
                origin,
                self.selector.options(),
                self.watch_health,
                self.tls.as_ref(),
            ) {
                Ok(replica) => {
                    joined.push(address);
                    next.push(replica);
                }
                Err(reason) => {
                    tracing::warn!(shard_id = self.shard_id, %address, %reason, "cannot use a resolved replica address");
                }
            }
        }
        let left: Vec<String> = by_address
            .keys()
            .map(|address| (*address).to_owned())
            .collect();
        if !joined.is_empty() || !left.is_empty() {
            *self
                .members
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = next.into();
        }
        (joined, left)
    }

    /// The members' addresses, in order (for tests).
    #[cfg(test)]
    pub(crate) fn addresses(&self) -> Vec<String> {
        self.members()
            .iter()
            .map(|replica| replica.address.clone())
            .collect()
    }

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
        ReplicaSet::connect_lazily_with(&shard, SelectorOptions::default(), false, None)
            .expect("loopback addresses are valid")
    }
}

/// Follows a replica's health for as long as it exists: a `Watch` stream
/// while it is serving; checks with a growing pause while it is not, or
/// cannot be reached (a draining leaf must be able to finish its calls and
/// stop, which an open `Watch` stream would hold up). A leaf without a
/// health service is judged by its calls alone.
async fn watch_health_of(replica: Weak<Replica>, channel: Channel) {
    let mut client = HealthClient::new(channel);
    let mut service = LEAF_SERVICE;
    let set = |health: Health| -> bool {
        match replica.upgrade() {
            Some(replica) => {
                replica.state.set_health(health);
                true
            }
            None => false,
        }
    };
    loop {
        // Watch while serving.
        let request = HealthCheckRequest {
            service: service.to_owned(),
        };
        match client.watch(request).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(answer)) => match answer.status() {
                            ServingStatus::Serving => {
                                if !set(Health::Serving) {
                                    return;
                                }
                            }
                            ServingStatus::ServiceUnknown if !service.is_empty() => {
                                // A leaf that names no service: its overall health.
                                service = "";
                                break;
                            }
                            _ => {
                                if !set(Health::NotServing) {
                                    return;
                                }
                                break;
                            }
                        },
                        Ok(None) | Err(_) => {
                            if !set(Health::Unknown) {
                                return;
                            }
                            break;
                        }
                    }
                }
            }
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                set(Health::Unknown);
                return;
            }
            Err(status) if status.code() == tonic::Code::NotFound && !service.is_empty() => {
                service = "";
                continue;
            }
            Err(_) => {
                if !set(Health::Unknown) {
                    return;
                }
            }
        }
        if matches!(
            replica.upgrade().map(|r| r.state.health()),
            Some(Health::Serving)
        ) {
            continue;
        }
        // Not serving, or not reachable: check until it says SERVING.
        let mut pause = HEALTH_POLL_FIRST;
        loop {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(HEALTH_POLL_LONGEST);
            let mut request = tonic::Request::new(HealthCheckRequest {
                service: service.to_owned(),
            });
            request.set_timeout(HEALTH_CHECK_TIMEOUT);
            let answer = tokio::time::timeout(HEALTH_CHECK_TIMEOUT, client.check(request)).await;
            let health = match answer {
                Ok(Ok(answer)) => match answer.into_inner().status() {
                    ServingStatus::Serving => Health::Serving,
                    _ => Health::NotServing,
                },
                Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                    set(Health::Unknown);
                    return;
                }
                Ok(Err(status))
                    if status.code() == tonic::Code::NotFound && !service.is_empty() =>
                {
                    service = "";
                    continue;
                }
                Ok(Err(_)) | Err(_) => Health::Unknown,
            };
            if !set(health) {
                return;
            }
            if health == Health::Serving {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_replica_that_stays_keeps_its_state_across_a_re_resolution() {
        let set = ReplicaSet::for_tests(2);
        let before = set.members();
        // Calls sent to the replica that stays: its state must come along.
        drop(set.selector.begin_attempt(&before, 1));
        let staying = Arc::clone(&before[1]);
        let wanted = |ports: &[u16]| -> Vec<(String, Option<String>)> {
            ports
                .iter()
                .map(|port| {
                    (
                        format!("http://127.0.0.1:{port}"),
                        Some("dns:leaf:7000".into()),
                    )
                })
                .collect()
        };

        let (joined, left) = set.update_members(wanted(&[2, 3]));
        assert_eq!(joined, vec!["http://127.0.0.1:3"]);
        assert_eq!(left, vec!["http://127.0.0.1:1"]);
        assert_eq!(
            set.addresses(),
            vec!["http://127.0.0.1:2", "http://127.0.0.1:3"]
        );
        let after = set.members();
        assert!(
            Arc::ptr_eq(&after[0], &staying),
            "the same replica, not a new one"
        );
        assert_eq!(after[0].state().calls(), 1);
        assert_eq!(after[1].state().calls(), 0);
        // A snapshot taken before still holds the replica that left, so the
        // calls in flight on it finish.
        assert_eq!(before[0].address, "http://127.0.0.1:1");

        // The same answer again changes nothing; duplicates count once.
        let (joined, left) = set.update_members(wanted(&[3, 2, 3]));
        assert!(joined.is_empty() && left.is_empty(), "{joined:?} {left:?}");
        assert!(Arc::ptr_eq(&set.members()[0], &staying));
    }

    #[test]
    fn sources_parse_as_addresses_or_dns_names() {
        assert_eq!(
            ReplicaSource::parse("dns:leaf-0:7000").unwrap().to_string(),
            "dns:leaf-0:7000"
        );
        assert!(matches!(
            ReplicaSource::parse("127.0.0.1:7001").unwrap(),
            ReplicaSource::Address(url) if url == "http://127.0.0.1:7001"
        ));
        for bad in ["dns:leaf-0", "dns::7000", "dns:leaf-0:port"] {
            assert!(ReplicaSource::parse(bad).is_err(), "{bad}");
        }
    }
}
