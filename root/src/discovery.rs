//! Replicas found by DNS: every `dns:host:port` source of a shard is
//! resolved when the root starts and again every
//! [`DiscoverySettings::dns_refresh`], and the shard's members follow the
//! answers ([`ReplicaSet::update_members`]): an address that appears becomes
//! a replica and gets calls, one that disappears gets no new calls while
//! its calls in flight finish, one that stays keeps its state.
//!
//! A failed or empty answer changes nothing: the members last found by
//! that name stay (a DNS outage must not empty a shard that still works;
//! replicas that are really gone fail their calls, cool down, and are
//! avoided). The root logs each change of membership, and the first failure
//! of a name after a success; `fanout_root_dns_failures_total` counts them
//! all.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fanout_runtime::dns::{lookup, system_resolver};
use hickory_resolver::TokioResolver;

use crate::config::DiscoverySettings;
use crate::replica::{ReplicaSet, ReplicaSource};
use crate::shards::Shards;

/// First pause before resolving again after a failure; it doubles up to
/// the refresh interval.
const RETRY_FIRST: Duration = Duration::from_millis(250);

/// Resolution failures of one shard's names, for the metrics.
#[derive(Debug, Default)]
pub struct DnsCounts {
    pub failures: AtomicU64,
}

/// Resolves every `dns:` source once and updates the members; `false` if
/// any name could not be resolved.
pub async fn resolve_all(shards: &Shards, resolver: &TokioResolver) -> bool {
    let mut all_resolved = true;
    for (replica_set, counts) in shards.sets.iter().zip(&shards.dns_counts) {
        if replica_set.has_dns_sources() {
            all_resolved &= resolve_set(replica_set, resolver, counts).await;
        }
    }
    all_resolved
}

/// Re-resolves the shards' names for as long as the root runs: every
/// `settings.dns_refresh`, sooner after a failure.
pub async fn keep_resolving(shards: Arc<Shards>, settings: DiscoverySettings) {
    let resolver = system_resolver();
    let mut pause = settings.dns_refresh;
    loop {
        tokio::time::sleep(pause).await;
        pause = if resolve_all(&shards, &resolver).await {
            settings.dns_refresh
        } else if pause >= settings.dns_refresh {
            RETRY_FIRST.min(settings.dns_refresh)
        } else {
            (pause * 2).min(settings.dns_refresh)
        };
    }
}

async fn resolve_set(
    replica_set: &ReplicaSet,
    resolver: &TokioResolver,
    counts: &DnsCounts,
) -> bool {
    let shard_id = replica_set.shard_id;
    let current = replica_set.members();
    let mut wanted: Vec<(String, Option<String>)> = Vec::new();
    let mut all_resolved = true;
    for source in &replica_set.sources {
        match source {
            ReplicaSource::Address(url) => wanted.push((url.clone(), None)),
            ReplicaSource::Dns { host, port } => {
                let name = source.to_string();
                match lookup(resolver, host).await {
                    Ok(addresses) => wanted.extend(addresses.into_iter().map(|ip| {
                        let address = std::net::SocketAddr::new(ip, *port);
                        (format!("http://{address}"), Some(name.clone()))
                    })),
                    Err(reason) => {
                        all_resolved = false;
                        let before = counts.failures.fetch_add(1, Ordering::Relaxed);
                        let kept: Vec<_> = current
                            .iter()
                            .filter(|replica| replica.origin.as_deref() == Some(name.as_str()))
                            .collect();
                        if before == 0 || !kept.is_empty() {
                            tracing::warn!(
                                shard_id,
                                source = %name,
                                %reason,
                                kept = kept.len(),
                                "cannot resolve a shard's replicas; keeping those found before"
                            );
                        }
                        wanted.extend(
                            kept.into_iter()
                                .map(|replica| (replica.address.clone(), replica.origin.clone())),
                        );
                    }
                }
            }
        }
    }
    let (joined, left) = replica_set.update_members(wanted);
    if !joined.is_empty() || !left.is_empty() {
        tracing::info!(
            shard_id,
            joined = ?joined,
            left = ?left,
            members = replica_set.members().len(),
            "the shard's replicas changed"
        );
    }
    all_resolved
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::SelectorOptions;
    use crate::topology::ShardReplicas;

    fn set_of(entries: &[&str]) -> ReplicaSet {
        let shard = ShardReplicas {
            shard_id: 0,
            replicas: entries.iter().map(|entry| (*entry).to_owned()).collect(),
        };
        ReplicaSet::connect_lazily_with(&shard, SelectorOptions::default(), false, None)
            .expect("valid entries")
    }

    #[tokio::test]
    async fn a_name_resolves_to_members_beside_fixed_addresses() {
        // localhost comes from /etc/hosts: no DNS server needed.
        let set = set_of(&["dns:localhost:7000", "127.0.0.2:7001"]);
        assert!(set.has_dns_sources());
        let counts = DnsCounts::default();
        assert!(resolve_set(&set, &system_resolver(), &counts).await);
        let members = set.addresses();
        assert!(
            members.contains(&"http://127.0.0.2:7001".to_owned()),
            "{members:?}"
        );
        assert!(
            members.contains(&"http://127.0.0.1:7000".to_owned()),
            "{members:?}"
        );
        assert_eq!(counts.failures.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_failed_answer_keeps_the_members_found_before() {
        let set = set_of(&["dns:no-such-replica.invalid:7000"]);
        // As if an earlier answer had found two replicas by that name.
        let origin = Some("dns:no-such-replica.invalid:7000".to_owned());
        set.update_members(vec![
            ("http://10.0.0.1:7000".into(), origin.clone()),
            ("http://10.0.0.2:7000".into(), origin),
        ]);
        let counts = DnsCounts::default();
        assert!(!resolve_set(&set, &system_resolver(), &counts).await);
        assert_eq!(
            set.addresses(),
            vec!["http://10.0.0.1:7000", "http://10.0.0.2:7000"]
        );
        assert_eq!(counts.failures.load(Ordering::Relaxed), 1);
    }
}
