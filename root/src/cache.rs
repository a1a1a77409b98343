//! The root's result cache: whole `SearchResponse`s of complete answers,
//! bounded in bytes, least recently used out first (the caching layer in
//! front of a replicated service).
//!
//! An entry's key is the normalized request ([`CacheKey::of`]: what decides
//! the answer, the query with its whitespace runs folded in natural mode,
//! not the hedging or the time limit) and the index generation of every
//! shard, as the root last saw it ([`crate::shards::ShardGenerations`]: from
//! each answer, and from `Info` polled in the background while the cache is
//! on). A new generation on any shard makes every older key unreachable (the
//! entries age out); an answer whose shards were not all at the generations
//! of its key, a partial answer and a failure are never stored; a shard with
//! no generation (a leaf that reports none) turns caching off for every
//! request. `SearchRequest.no_cache` skips the cache both ways.
//!
//! Equality is on the whole key bytes (a 64-bit hash only finds the slot),
//! so two requests never share an answer by collision.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use fanout_proto::search::v1::SearchResponse;
use fanout_runtime::hashing::fnv1a_64;
use fanout_runtime::metrics::Counter;
use prost::Message;

use crate::search::ValidatedSearch;

/// Fixed cost of an entry on top of its key and response bytes: the maps'
/// slots and the entry's own fields, roughly.
const ENTRY_OVERHEAD_BYTES: usize = 160;

/// What decides a search's answer, as bytes, plus the shards' generations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    bytes: Vec<u8>,
    hash: u64,
}

impl CacheKey {
    /// The key of `search` over shards at `generations`; `None` when a
    /// generation is unknown (no caching then).
    pub fn of(search: &ValidatedSearch, generations: &[Arc<str>]) -> Option<CacheKey> {
        if generations.iter().any(|generation| generation.is_empty()) {
            return None;
        }
        let mut shard_request = search.shard_request.clone();
        if shard_request.mode == fanout_proto::search::v1::QueryMode::Natural as i32 {
            shard_request.query = fold_whitespace(&shard_request.query);
        }
        let mut bytes = Vec::with_capacity(shard_request.encoded_len() + 64);
        // Length-prefixed pieces: no two different requests write the same bytes.
        let mut piece = |data: &[u8]| {
            bytes.extend_from_slice(&(data.len() as u64).to_le_bytes());
            bytes.extend_from_slice(data);
        };
        piece(&shard_request.encode_to_vec());
        for field in &search.fetch.fields {
            piece(field.as_bytes());
        }
        piece(&[u8::from(search.fetch.snippets)]);
        piece(&[u8::from(search.policy.allow_partial)]);
        piece(&search.policy.min_coverage.to_le_bytes());
        for generation in generations {
            piece(generation.as_bytes());
        }
        Some(CacheKey {
            hash: fnv1a_64(&bytes),
            bytes,
        })
    }
}

/// Runs of whitespace as one space, none at the ends: a natural-language
/// query's words are what count.
fn fold_whitespace(query: &str) -> String {
    query.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The cache's counts, also the root's metrics.
#[derive(Debug)]
pub struct CacheCounters {
    pub hits: Counter,
    pub misses: Counter,
    pub inserts: Counter,
    pub evictions: Counter,
    /// Requests with `no_cache`, and requests with no key (a shard's
    /// generation unknown).
    pub bypassed: Counter,
}

/// See the module docs.
#[derive(Debug)]
pub struct ResultCache {
    capacity_bytes: usize,
    state: Mutex<State>,
    pub counters: CacheCounters,
}

#[derive(Debug, Default)]
struct State {
    /// By key hash: the entries with that hash (almost always one).
    entries: HashMap<u64, Vec<Entry>>,
    /// Use tick -> key hash, oldest first.
    by_use: BTreeMap<u64, u64>,
    bytes: usize,
    count: usize,
    tick: u64,
}

#[derive(Debug)]
struct Entry {
    key: Vec<u8>,
    response: Arc<SearchResponse>,
    bytes: usize,
    last_use: u64,
}

impl ResultCache {
    pub fn new(capacity_bytes: usize, counters: CacheCounters) -> ResultCache {
        ResultCache {
            capacity_bytes,
            state: Mutex::new(State::default()),
            counters,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The stored answer of `key`, counted as a hit or a miss.
    pub fn get(&self, key: &CacheKey) -> Option<Arc<SearchResponse>> {
        let mut state = self.lock();
        state.tick += 1;
        let tick = state.tick;
        let found = state.entries.get_mut(&key.hash).and_then(|entries| {
            let entry = entries.iter_mut().find(|entry| entry.key == key.bytes)?;
            let previous = std::mem::replace(&mut entry.last_use, tick);
            Some((previous, Arc::clone(&entry.response)))
        });
        match found {
            Some((previous, response)) => {
                state.by_use.remove(&previous);
                state.by_use.insert(tick, key.hash);
                drop(state);
                self.counters.hits.inc();
                Some(response)
            }
            None => {
                drop(state);
                self.counters.misses.inc();
                None
            }
        }
    }

    /// Stores `response` (a complete answer) under `key`, evicting the least
    /// recently used entries to make room; an answer larger than the whole
    /// cache is not stored.
    pub fn insert(&self, key: CacheKey, response: SearchResponse) {
        let bytes = key.bytes.len() + response.encoded_len() + ENTRY_OVERHEAD_BYTES;
        if bytes > self.capacity_bytes {
            return;
        }
        let mut state = self.lock();
        state.remove(&key);
        let mut evicted = 0_u64;
        while state.bytes + bytes > self.capacity_bytes {
            let Some((_, hash)) = state.by_use.pop_first() else {
                break;
            };
            state.evict_oldest_of(hash);
            evicted += 1;
        }
        state.tick += 1;
        let tick = state.tick;
        state.by_use.insert(tick, key.hash);
        state.bytes += bytes;
        state.count += 1;
        state.entries.entry(key.hash).or_default().push(Entry {
            key: key.bytes,
            response: Arc::new(response),
            bytes,
            last_use: tick,
        });
        drop(state);
        self.counters.inserts.inc();
        self.counters.evictions.add(evicted);
    }

    /// (entries, bytes) held now.
    pub fn size(&self) -> (usize, usize) {
        let state = self.lock();
        (state.count, state.bytes)
    }

    pub fn capacity_bytes(&self) -> usize {
        self.capacity_bytes
    }
}

impl State {
    /// Removes the entry of `key`, if there is one.
    fn remove(&mut self, key: &CacheKey) {
        let Some(entries) = self.entries.get_mut(&key.hash) else {
            return;
        };
        if let Some(index) = entries.iter().position(|entry| entry.key == key.bytes) {
            let entry = entries.swap_remove(index);
            self.by_use.remove(&entry.last_use);
            self.bytes -= entry.bytes;
            self.count -= 1;
        }
        if entries.is_empty() {
            self.entries.remove(&key.hash);
        }
    }

    /// Evicts the least recently used entry with this hash (the one whose
    /// use tick was just taken off `by_use`).
    fn evict_oldest_of(&mut self, hash: u64) {
        let Some(entries) = self.entries.get_mut(&hash) else {
            return;
        };
        let Some(index) = entries
            .iter()
            .enumerate()
            .min_by_key(|(_, entry)| entry.last_use)
            .map(|(index, _)| index)
        else {
            return;
        };
        let entry = entries.swap_remove(index);
        self.bytes -= entry.bytes;
        self.count -= 1;
        if entries.is_empty() {
            self.entries.remove(&hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::FetchOptions;
    use crate::policy::CoveragePolicy;
    use fanout_proto::search::v1::{Hit, QueryMode, ShardSearchRequest};
    use fanout_runtime::metrics::Registry;

    fn counters(registry: &Registry) -> CacheCounters {
        let counter = |name: &str| registry.counter(name, "test");
        CacheCounters {
            hits: counter("hits"),
            misses: counter("misses"),
            inserts: counter("inserts"),
            evictions: counter("evictions"),
            bypassed: counter("bypassed"),
        }
    }

    fn search(query: &str, mode: QueryMode) -> ValidatedSearch {
        ValidatedSearch {
            shard_request: ShardSearchRequest {
                query: query.to_owned(),
                mode: mode as i32,
                k: 10,
                ..ShardSearchRequest::default()
            },
            fetch: FetchOptions {
                fields: vec!["id".into(), "title".into()],
                snippets: false,
                query: query.to_owned(),
                mode,
            },
            policy: CoveragePolicy {
                allow_partial: false,
                min_coverage: 0.0,
            },
            timeout: None,
            hedge: None,
        }
    }

    fn generations(values: &[&str]) -> Vec<Arc<str>> {
        values.iter().map(|value| Arc::from(*value)).collect()
    }

    fn response(id: &str) -> SearchResponse {
        SearchResponse {
            hits: vec![Hit {
                id: id.to_owned(),
                ..Hit::default()
            }],
            ..SearchResponse::default()
        }
    }

    #[test]
    fn keys_fold_whitespace_in_natural_mode_only_and_carry_the_generations() {
        let gens = generations(&["g1", "g2"]);
        let key = |query: &str, mode| CacheKey::of(&search(query, mode), &gens).unwrap();
        assert_eq!(
            key("  rust   borrow\tchecker ", QueryMode::Natural),
            key("rust borrow checker", QueryMode::Natural)
        );
        assert_ne!(
            key("\"a  b\"", QueryMode::Syntax),
            key("\"a b\"", QueryMode::Syntax)
        );
        assert_ne!(
            key("rust", QueryMode::Natural),
            key("rust", QueryMode::Syntax)
        );
        let request = search("rust", QueryMode::Natural);
        assert_ne!(
            CacheKey::of(&request, &generations(&["g1", "g2"])),
            CacheKey::of(&request, &generations(&["g1", "g3"]))
        );
        assert_eq!(CacheKey::of(&request, &generations(&["g1", ""])), None);
        let mut with_snippets = search("rust", QueryMode::Natural);
        with_snippets.fetch.snippets = true;
        assert_ne!(
            CacheKey::of(&with_snippets, &gens),
            CacheKey::of(&request, &gens)
        );
        // The time limit and the hedging do not change the answer.
        let mut hedged = search("rust", QueryMode::Natural);
        hedged.timeout = Some(std::time::Duration::from_millis(5));
        hedged.hedge = Some(crate::hedge::HedgePolicy::Off);
        assert_eq!(CacheKey::of(&hedged, &gens), CacheKey::of(&request, &gens));
    }

    #[test]
    fn hits_misses_and_a_new_generation() {
        let registry = Registry::new();
        let cache = ResultCache::new(1 << 20, counters(&registry));
        let request = search("rust", QueryMode::Natural);
        let old = CacheKey::of(&request, &generations(&["g1"])).unwrap();
        assert!(cache.get(&old).is_none());
        cache.insert(old.clone(), response("a"));
        assert_eq!(cache.get(&old).unwrap().hits[0].id, "a");
        let new = CacheKey::of(&request, &generations(&["g2"])).unwrap();
        assert!(
            cache.get(&new).is_none(),
            "never across a generation change"
        );
        assert_eq!(cache.counters.hits.get(), 1);
        assert_eq!(cache.counters.misses.get(), 2);
    }

    #[test]
    fn stays_within_its_bytes_evicting_the_least_recently_used() {
        let registry = Registry::new();
        let gens = generations(&["g"]);
        let key = |query: &str| CacheKey::of(&search(query, QueryMode::Natural), &gens).unwrap();
        let one = key("q0").bytes.len() + response("q0").encoded_len() + ENTRY_OVERHEAD_BYTES;
        let cache = ResultCache::new(3 * one, counters(&registry));
        for query in ["q0", "q1", "q2"] {
            cache.insert(key(query), response(query));
        }
        assert_eq!(cache.size(), (3, 3 * one));
        // q0 used, so q1 is the least recently used when q3 comes.
        assert!(cache.get(&key("q0")).is_some());
        cache.insert(key("q3"), response("q3"));
        assert_eq!(cache.size(), (3, 3 * one));
        assert!(cache.get(&key("q1")).is_none());
        for query in ["q0", "q2", "q3"] {
            assert!(cache.get(&key(query)).is_some(), "{query}");
        }
        assert_eq!(cache.counters.evictions.get(), 1);
        // Re-inserting a key replaces its entry.
        cache.insert(key("q3"), response("q3"));
        assert_eq!(cache.size(), (3, 3 * one));
        // An answer larger than the cache is not stored.
        let small = ResultCache::new(10, counters(&Registry::new()));
        small.insert(key("q0"), response("q0"));
        assert_eq!(small.size(), (0, 0));
    }

    #[test]
    fn equal_hashes_never_share_an_answer() {
        let registry = Registry::new();
        let cache = ResultCache::new(1 << 20, counters(&registry));
        let gens = generations(&["g"]);
        let first = CacheKey::of(&search("a", QueryMode::Natural), &gens).unwrap();
        let mut second = CacheKey::of(&search("b", QueryMode::Natural), &gens).unwrap();
        second.hash = first.hash;
        cache.insert(first.clone(), response("a"));
        assert!(cache.get(&second).is_none());
        cache.insert(second.clone(), response("b"));
        assert_eq!(cache.get(&first).unwrap().hits[0].id, "a");
        assert_eq!(cache.get(&second).unwrap().hits[0].id, "b");
        assert_eq!(cache.size().0, 2);
    }
}
