//! The shards as the root sees them: each shard's replicas, and what is
//! known of its size, for `Coverage.docs_total` (the leaves' `Info` answers,
//! asked in the background until every shard has answered once, and later
//! the `docs_searched` of each answer).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fanout_proto::v1::InfoRequest;

use crate::discovery::DnsCounts;
use crate::replica::ReplicaSet;

/// Every shard, by shard id.
#[derive(Debug)]
pub struct Shards {
    /// Index = shard id.
    pub sets: Vec<ReplicaSet>,
    pub doc_counts: ShardDocCounts,
    /// Each shard's index generation, as last seen.
    pub generations: ShardGenerations,
    /// By shard id: failures to resolve the shard's `dns:` names.
    pub dns_counts: Vec<DnsCounts>,
}

impl Shards {
    pub fn new(sets: Vec<ReplicaSet>) -> Shards {
        Shards {
            doc_counts: ShardDocCounts::unknown(sets.len()),
            generations: ShardGenerations::unknown(sets.len()),
            dns_counts: sets.iter().map(|_| DnsCounts::default()).collect(),
            sets,
        }
    }

    /// Whether any shard has a `dns:` source.
    pub fn has_dns_sources(&self) -> bool {
        self.sets.iter().any(ReplicaSet::has_dns_sources)
    }

    pub fn count(&self) -> usize {
        self.sets.len()
    }
}

/// `u64::MAX` stands for "not known yet".
const UNKNOWN: u64 = u64::MAX;
/// How long one `Info` call may take.
const INFO_TIMEOUT: Duration = Duration::from_secs(1);
/// First and longest pause between rounds of `Info` calls to unknown shards.
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(500);
const LONGEST_RETRY_PAUSE: Duration = Duration::from_secs(30);

/// Last known document count of every shard.
#[derive(Debug)]
pub struct ShardDocCounts {
    counts: Vec<AtomicU64>,
}

impl ShardDocCounts {
    pub fn unknown(shard_count: usize) -> Self {
        Self {
            counts: (0..shard_count).map(|_| AtomicU64::new(UNKNOWN)).collect(),
        }
    }

    pub fn record(&self, shard_id: u32, doc_count: u64) {
        if let Some(count) = self.counts.get(shard_id as usize) {
            count.store(doc_count.min(UNKNOWN - 1), Ordering::Relaxed);
        }
    }

    pub fn get(&self, shard_id: u32) -> Option<u64> {
        let count = self.counts.get(shard_id as usize)?.load(Ordering::Relaxed);
        (count != UNKNOWN).then_some(count)
    }

    /// Documents in all shards; 0 while any shard's count is unknown.
    pub fn total(&self) -> u64 {
        let mut total = 0_u64;
        for count in &self.counts {
            let count = count.load(Ordering::Relaxed);
            if count == UNKNOWN {
                return 0;
            }
            total = total.saturating_add(count);
        }
        total
    }

    fn all_known(&self) -> bool {
        self.counts
            .iter()
            .all(|count| count.load(Ordering::Relaxed) != UNKNOWN)
    }
}

/// Asks the replicas of every shard whose size is unknown for `Info`, round
/// after round with a growing pause, until every shard is known.
pub async fn learn_doc_counts(shards: Arc<Shards>) {
    let mut pause = FIRST_RETRY_PAUSE;
    loop {
        for replica_set in &shards.sets {
            if shards.doc_counts.get(replica_set.shard_id).is_some() {
                continue;
            }
            for replica in replica_set.members().iter() {
                let mut request = tonic::Request::new(InfoRequest {});
                request.set_timeout(INFO_TIMEOUT);
                let mut client = replica.leaf_client();
                let call = client.info(request);
                let info = match tokio::time::timeout(INFO_TIMEOUT, call).await {
                    Ok(Ok(response)) => response.into_inner(),
                    Ok(Err(status)) => {
                        let (code, message) = (status.code(), status.message());
                        tracing::debug!(replica = %replica.address, ?code, message, "leaf info failed");
                        continue;
                    }
                    Err(_) => continue,
                };
                if info.shard_id != replica_set.shard_id
                    || info.shard_count != shards.count() as u32
                {
                    tracing::warn!(
                        replica = %replica.address,
                        expected_shard = replica_set.shard_id,
                        expected_shard_count = shards.count(),
                        reported_shard = info.shard_id,
                        reported_shard_count = info.shard_count,
                        "a leaf serves another shard than the topology says"
                    );
                    continue;
                }
                shards
                    .doc_counts
                    .record(replica_set.shard_id, info.doc_count);
                shards
                    .generations
                    .record(replica_set.shard_id, &info.generation);
                break;
            }
        }
        if shards.doc_counts.all_known() {
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(LONGEST_RETRY_PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_is_known_only_once_every_shard_is() {
        let counts = ShardDocCounts::unknown(2);
        assert_eq!(counts.total(), 0);
        counts.record(0, 10);
        assert_eq!(counts.get(0), Some(10));
        assert_eq!(counts.get(1), None);
        assert_eq!(counts.total(), 0);
        counts.record(1, 5);
        assert_eq!(counts.total(), 15);
        counts.record(7, 5);
        assert_eq!(counts.get(7), None);
    }
}

/// Each shard's index generation as the root last saw it: from every
/// answer (`ExecuteResponse.generation`), from the leaves' `Info` at start,
/// and, while the result cache is on, from `Info` polled every so often
/// ([`watch_generations`]), so that a shard re-indexed while every request
/// is answered from the cache is noticed within the poll period. Empty:
/// unknown (or a leaf that reports none).
#[derive(Debug)]
pub struct ShardGenerations {
    generations: std::sync::RwLock<Vec<Arc<str>>>,
}

impl ShardGenerations {
    pub fn unknown(shard_count: usize) -> Self {
        Self {
            generations: std::sync::RwLock::new(vec![Arc::from(""); shard_count]),
        }
    }

    /// Every shard's generation now.
    pub fn snapshot(&self) -> Vec<Arc<str>> {
        self.generations
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Notes that `shard_id` answered from `generation` (ignored when empty:
    /// a leaf that reports none tells nothing).
    pub fn record(&self, shard_id: u32, generation: &str) {
        if generation.is_empty() {
            return;
        }
        let index = shard_id as usize;
        let same = self
            .generations
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(index)
            .is_some_and(|known| **known == *generation);
        if same {
            return;
        }
        let mut generations = self
            .generations
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(known) = generations.get_mut(index) {
            if !known.is_empty() {
                tracing::info!(shard_id, from = %known, to = generation, "the shard's index generation changed");
            }
            *known = Arc::from(generation);
        }
    }
}

/// Asks one replica of every shard for its `Info` every `every` and notes
/// the generation; runs until its task is dropped with the root.
pub async fn watch_generations(shards: Arc<Shards>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        for replica_set in &shards.sets {
            for replica in replica_set.members().iter() {
                let mut request = tonic::Request::new(InfoRequest {});
                request.set_timeout(INFO_TIMEOUT);
                let mut client = replica.leaf_client();
                let Ok(Ok(info)) = tokio::time::timeout(INFO_TIMEOUT, client.info(request)).await
                else {
                    continue;
                };
                let info = info.into_inner();
                if info.shard_id == replica_set.shard_id {
                    shards
                        .generations
                        .record(replica_set.shard_id, &info.generation);
                }
                break;
            }
        }
    }
}

#[cfg(test)]
mod generation_tests {
    use super::*;

    #[test]
    fn generations_follow_the_answers_and_ignore_empty_ones() {
        let generations = ShardGenerations::unknown(2);
        assert_eq!(generations.snapshot(), vec![Arc::from(""), Arc::from("")]);
        generations.record(0, "g1");
        generations.record(1, "");
        generations.record(7, "out of range");
        assert_eq!(
            generations.snapshot(),
            vec![Arc::<str>::from("g1"), Arc::from("")]
        );
        generations.record(0, "g2");
        assert_eq!(&*generations.snapshot()[0], "g2");
    }
}
