//! The reference merge of the search workload: the global top k of the
//! shards' top k, ordered by score descending, ties by id ascending (the order
//! every leaf sorts its own hits in).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashSet};

use fanout_proto::any;
use fanout_proto::search::v1::{ShardHit, ShardSearchRequest, ShardSearchResponse};
use fanout_proto::v1::{MergeEnd, MergeStart, ShardPartial};

use crate::error::MergerError;
use crate::merge::{Merge, MergeState, Progress};

/// The number of hits when the request asks for 0.
pub const DEFAULT_K: u32 = 10;

/// Merges `fanout.search.v1.ShardSearchResponse` partials into one
/// `ShardSearchResponse` holding the global top k.
///
/// - `start.request` must be the `ShardSearchRequest` the root fanned out; k
///   comes from it (0 means [`DEFAULT_K`]). Its `search_after` needs nothing
///   here: every leaf already skipped the hits up to it, so the union of their
///   answers is exactly the candidates of the next page.
/// - Each partial is folded into a bounded heap of k hits as it arrives; the
///   partials themselves are not kept. Hits are stamped with the shard id of
///   the partial that carried them (the root knows which shard answered, and
///   the fetch phase routes by it). A hit with a NaN score is INVALID_ARGUMENT.
/// - `total_hits` and `docs_searched` are summed over the partials; the first
///   non-empty `generation` is kept (a disagreeing shard is logged).
/// - A second partial for a shard already merged (a hedge loser delivered
///   late) is ignored with a warning; a shard id >= `shard_count` is
///   INVALID_ARGUMENT.
///
/// It never answers [`Progress::Enough`]: a shard that has not answered may
/// hold a better hit than any seen so far, so no prefix of the shards can fix
/// the top k. Early termination is for merges that can know (quorum reads,
/// existence checks, first-match).
#[derive(Debug, Clone, Copy, Default)]
pub struct TopKMerge;

impl Merge for TopKMerge {
    fn start(&self, start: &MergeStart) -> Result<Box<dyn MergeState>, tonic::Status> {
        let payload = start
            .request
            .as_ref()
            .ok_or(MergerError::StartWithoutRequest)?;
        let request: ShardSearchRequest = any::unpack(payload).map_err(MergerError::from)?;
        let k = if request.k == 0 { DEFAULT_K } else { request.k };
        Ok(Box::new(TopKState::new(k as usize, start.shard_count)))
    }
}

/// The merge of one search request.
#[derive(Debug)]
struct TopKState {
    k: usize,
    shard_count: u32,
    /// The best hits so far, the worst of them on top.
    best_hits: BinaryHeap<RankedHit>,
    shards_merged: HashSet<u32>,
    total_hits: u64,
    docs_searched: u64,
    generation: String,
}

impl TopKState {
    fn new(k: usize, shard_count: u32) -> Self {
        // k comes from the caller: let a huge one grow as hits arrive.
        const MAX_PREALLOCATED_HITS: usize = 1024;
        Self {
            k,
            shard_count,
            best_hits: BinaryHeap::with_capacity(k.min(MAX_PREALLOCATED_HITS) + 1),
            shards_merged: HashSet::new(),
            total_hits: 0,
            docs_searched: 0,
            generation: String::new(),
        }
    }

    fn offer(&mut self, hit: ShardHit) {
        let candidate = RankedHit(hit);
        if self.best_hits.len() == self.k {
            let Some(worst_kept) = self.best_hits.peek() else {
                // k is at least 1 here, so a full heap is never empty.
                return;
            };
            if candidate >= *worst_kept {
                return;
            }
            self.best_hits.pop();
        }
        self.best_hits.push(candidate);
    }

    fn keep_generation(&mut self, shard_id: u32, generation: String) {
        if generation.is_empty() || generation == self.generation {
            return;
        }
        if self.generation.is_empty() {
            self.generation = generation;
            return;
        }
        tracing::warn!(
            shard_id,
            kept = %self.generation,
            reported = %generation,
            "shards disagree on the index generation; keeping the first"
        );
    }
}

impl MergeState for TopKState {
    fn add(&mut self, partial: ShardPartial) -> Result<Progress, tonic::Status> {
        let shard_id = partial.shard_id;
        if shard_id >= self.shard_count {
            return Err(MergerError::ShardOutOfRange {
                shard_id,
                shard_count: self.shard_count,
            }
            .into());
        }
        if self.shards_merged.contains(&shard_id) {
            tracing::warn!(
                shard_id,
                replica = %partial.replica,
                attempt = partial.attempt,
                "ignoring a second partial for a shard already merged"
            );
            return Ok(Progress::Continue);
        }
        let payload = partial
            .payload
            .as_ref()
            .ok_or(MergerError::PartialWithoutPayload { shard_id })?;
        let response: ShardSearchResponse = any::unpack(payload).map_err(MergerError::from)?;
        // Check the whole partial before merging any of it, so a rejected
        // partial leaves the state as it was.
        if let Some(bad_hit) = response.hits.iter().find(|hit| hit.score.is_nan()) {
            return Err(MergerError::NanScore {
                shard_id,
                id: bad_hit.id.clone(),
            }
            .into());
        }

        self.shards_merged.insert(shard_id);
        self.total_hits = self.total_hits.saturating_add(response.total_hits);
        self.docs_searched = self.docs_searched.saturating_add(response.docs_searched);
        self.keep_generation(shard_id, response.generation);
        for mut hit in response.hits {
            hit.shard_id = shard_id;
            self.offer(hit);
        }
        Ok(Progress::Continue)
    }

    fn finish(self: Box<Self>, _end: MergeEnd) -> Result<prost_types::Any, tonic::Status> {
        let hits = self
            .best_hits
            .into_sorted_vec()
            .into_iter()
            .map(|ranked| ranked.0)
            .collect();
        Ok(any::pack(&ShardSearchResponse {
            hits,
            total_hits: self.total_hits,
            generation: self.generation,
            docs_searched: self.docs_searched,
        }))
    }
}

/// The order of results: a hit that ranks better compares *less* (score
/// descending, then id ascending, then shard id ascending so equal hits from
/// two shards still order deterministically). Scores are never NaN here.
fn compare_hits(a: &ShardHit, b: &ShardHit) -> Ordering {
    b.score
        .partial_cmp(&a.score)
        // NaN scores are rejected before a hit is ranked.
        .unwrap_or(Ordering::Equal)
        .then_with(|| a.id.cmp(&b.id))
        .then_with(|| a.shard_id.cmp(&b.shard_id))
}

/// A hit ordered by [`compare_hits`]: in a max-heap the worst hit is on top.
#[derive(Debug)]
struct RankedHit(ShardHit);

impl Ord for RankedHit {
    fn cmp(&self, other: &Self) -> Ordering {
        compare_hits(&self.0, &other.0)
    }
}

impl PartialOrd for RankedHit {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for RankedHit {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for RankedHit {}

#[cfg(test)]
mod tests {
    use super::*;
    use fanout_proto::search::v1::SearchAfter;
    use fanout_runtime::hashing::SplitMix64;
    use tonic::Code;

    fn hit(id: &str, score: f32) -> ShardHit {
        ShardHit {
            id: id.to_owned(),
            score,
            ..Default::default()
        }
    }

    fn start(k: u32, shard_count: u32) -> MergeStart {
        MergeStart {
            request: Some(any::pack(&ShardSearchRequest {
                query: "debian".into(),
                k,
                ..Default::default()
            })),
            shard_count,
            ..Default::default()
        }
    }

    fn partial(shard_id: u32, response: ShardSearchResponse) -> ShardPartial {
        ShardPartial {
            shard_id,
            replica: format!("127.0.0.1:70{shard_id:02}"),
            payload: Some(any::pack(&response)),
            ..Default::default()
        }
    }

    fn hits_partial(shard_id: u32, hits: Vec<ShardHit>) -> ShardPartial {
        let total_hits = hits.len() as u64;
        partial(
            shard_id,
            ShardSearchResponse {
                hits,
                total_hits,
                generation: "g1".into(),
                docs_searched: 100,
            },
        )
    }

    fn merge_all(
        start: &MergeStart,
        partials: Vec<ShardPartial>,
    ) -> Result<ShardSearchResponse, tonic::Status> {
        let mut state = TopKMerge.start(start)?;
        for partial in partials {
            assert_eq!(state.add(partial)?, Progress::Continue);
        }
        let result = state.finish(MergeEnd::default())?;
        Ok(any::unpack(&result).expect("the top-k merge answers a ShardSearchResponse"))
    }

    fn ids_and_scores(response: &ShardSearchResponse) -> Vec<(String, f32, u32)> {
        response
            .hits
            .iter()
            .map(|hit| (hit.id.clone(), hit.score, hit.shard_id))
            .collect()
    }

    #[test]
    fn orders_by_score_then_id_and_stamps_the_shard() {
        let response = merge_all(
            &start(10, 3),
            vec![
                hits_partial(0, vec![hit("d", 3.0), hit("b", 1.0)]),
                hits_partial(1, vec![hit("c", 3.0), hit("a", 1.0)]),
                hits_partial(2, vec![hit("e", 5.0)]),
            ],
        )
        .unwrap();
        assert_eq!(
            ids_and_scores(&response),
            vec![
                ("e".into(), 5.0, 2),
                ("c".into(), 3.0, 1),
                ("d".into(), 3.0, 0),
                ("a".into(), 1.0, 1),
                ("b".into(), 1.0, 0),
            ]
        );
    }

    #[test]
    fn keeps_only_k_hits_and_zero_means_ten() {
        let many_hits = |shard: u32| {
            (0..8)
                .map(|index| hit(&format!("s{shard}-{index}"), (shard * 8 + index) as f32))
                .collect::<Vec<_>>()
        };
        let response = merge_all(
            &start(3, 2),
            vec![hits_partial(0, many_hits(0)), hits_partial(1, many_hits(1))],
        )
        .unwrap();
        let ids: Vec<_> = response.hits.iter().map(|hit| hit.id.as_str()).collect();
        assert_eq!(ids, ["s1-7", "s1-6", "s1-5"]);

        let response = merge_all(
            &start(0, 2),
            vec![hits_partial(0, many_hits(0)), hits_partial(1, many_hits(1))],
        )
        .unwrap();
        assert_eq!(response.hits.len(), DEFAULT_K as usize);
        assert_eq!(response.hits[9].id, "s0-6");
    }

    #[test]
    fn search_after_does_not_change_the_merge() {
        let partials = || {
            vec![
                hits_partial(0, vec![hit("x", 2.0), hit("y", 1.5)]),
                hits_partial(1, vec![hit("z", 1.75)]),
            ]
        };
        let plain = merge_all(&start(2, 2), partials()).unwrap();
        let mut paged_start = start(2, 2);
        paged_start.request = Some(any::pack(&ShardSearchRequest {
            query: "debian".into(),
            k: 2,
            search_after: Some(SearchAfter {
                score: 2.5,
                id: "w".into(),
            }),
            ..Default::default()
        }));
        let paged = merge_all(&paged_start, partials()).unwrap();
        assert_eq!(paged, plain);
        assert_eq!(ids_and_scores(&paged)[1], ("z".into(), 1.75, 1));
    }

    #[test]
    fn ignores_a_second_partial_for_the_same_shard() {
        let response = merge_all(
            &start(10, 2),
            vec![
                hits_partial(0, vec![hit("a", 1.0)]),
                hits_partial(0, vec![hit("hedge-loser", 9.0)]),
                hits_partial(1, vec![hit("b", 2.0)]),
            ],
        )
        .unwrap();
        let ids: Vec<_> = response.hits.iter().map(|hit| hit.id.as_str()).collect();
        assert_eq!(ids, ["b", "a"]);
        assert_eq!(response.total_hits, 2);
        assert_eq!(response.docs_searched, 200);
    }

    #[test]
    fn sums_totals_and_keeps_the_first_generation() {
        let mut state = TopKMerge.start(&start(5, 3)).unwrap();
        let responses = [
            ShardSearchResponse {
                hits: vec![hit("a", 1.0)],
                total_hits: 40,
                generation: String::new(),
                docs_searched: 1000,
            },
            ShardSearchResponse {
                hits: vec![],
                total_hits: 2,
                generation: "gen-a".into(),
                docs_searched: 900,
            },
            ShardSearchResponse {
                hits: vec![hit("b", 3.0)],
                total_hits: 7,
                generation: "gen-b".into(),
                docs_searched: 1100,
            },
        ];
        for (shard_id, response) in responses.into_iter().enumerate() {
            state.add(partial(shard_id as u32, response)).unwrap();
        }
        let result = state.finish(MergeEnd::default()).unwrap();
        let response: ShardSearchResponse = any::unpack(&result).unwrap();
        assert_eq!(response.total_hits, 49);
        assert_eq!(response.docs_searched, 3000);
        assert_eq!(response.generation, "gen-a");
        assert_eq!(response.hits.len(), 2);
    }

    #[test]
    fn rejects_a_request_of_another_type() {
        let wrong_start = MergeStart {
            request: Some(any::pack(&ShardSearchResponse::default())),
            shard_count: 1,
            ..Default::default()
        };
        let status = TopKMerge.start(&wrong_start).err().unwrap();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status
                .message()
                .contains("type.googleapis.com/fanout.search.v1.ShardSearchResponse"),
            "{}",
            status.message()
        );
        let no_request = MergeStart {
            shard_count: 1,
            ..Default::default()
        };
        let status = TopKMerge.start(&no_request).err().unwrap();
        assert_eq!(status.code(), Code::InvalidArgument);
    }

    #[test]
    fn rejects_a_partial_of_another_type() {
        let mut state = TopKMerge.start(&start(10, 2)).unwrap();
        let wrong = ShardPartial {
            shard_id: 0,
            payload: Some(any::pack(&ShardSearchRequest::default())),
            ..Default::default()
        };
        let status = state.add(wrong).unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status
                .message()
                .contains("type.googleapis.com/fanout.search.v1.ShardSearchRequest"),
            "{}",
            status.message()
        );
        let empty = ShardPartial {
            shard_id: 1,
            ..Default::default()
        };
        assert_eq!(state.add(empty).unwrap_err().code(), Code::InvalidArgument);
    }

    #[test]
    fn rejects_nan_scores_and_unknown_shards() {
        let mut state = TopKMerge.start(&start(10, 2)).unwrap();
        let status = state
            .add(hits_partial(0, vec![hit("ok", 1.0), hit("bad", f32::NAN)]))
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("\"bad\""), "{}", status.message());
        let status = state.add(hits_partial(2, vec![hit("c", 1.0)])).unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("shard 2"), "{}", status.message());
        // The rejected partial left nothing behind: shard 0 may still answer.
        state.add(hits_partial(0, vec![hit("a", 1.0)])).unwrap();
        let result = state.finish(MergeEnd::default()).unwrap();
        let response: ShardSearchResponse = any::unpack(&result).unwrap();
        assert_eq!(ids_and_scores(&response), vec![("a".into(), 1.0, 0)]);
    }

    /// SplitMix64 (`fanout_runtime::hashing`): a tiny deterministic
    /// generator, enough to vary test inputs.
    struct TestRandom(SplitMix64);

    impl TestRandom {
        fn below(&mut self, bound: u64) -> u64 {
            self.0.next_u64() % bound
        }
    }

    #[test]
    fn incremental_merge_equals_sorting_everything() {
        let mut random = TestRandom(SplitMix64::new(0x5eed));
        for round in 0..300 {
            let shard_count = 1 + random.below(6) as u32;
            let k = random.below(12) as u32; // 0 exercises the default
            let mut all_hits = Vec::new();
            let mut partials = Vec::new();
            for shard_id in 0..shard_count {
                let hit_count = random.below(15);
                let mut ids_in_shard = HashSet::new();
                let mut hits: Vec<ShardHit> = (0..hit_count)
                    .map(|index| ShardHit {
                        // Few distinct scores, so ties by id happen often.
                        score: random.below(5) as f32 * 0.5,
                        // Ids repeat across shards (ties down to the shard id)
                        // but, as in an index, not within one.
                        id: format!("doc-{:02}", random.below(40)),
                        shard_id,
                        segment_ord: 0,
                        doc_id: index as u32,
                    })
                    .filter(|hit| ids_in_shard.insert(hit.id.clone()))
                    .collect();
                // Leaves answer in rank order; the merge must not depend on it.
                if random.below(2) == 0 {
                    hits.sort_by(compare_hits);
                }
                all_hits.extend(hits.iter().cloned());
                partials.push(hits_partial(shard_id, hits));
            }
            // Partials arrive in any order.
            for index in (1..partials.len()).rev() {
                let other = random.below(index as u64 + 1) as usize;
                partials.swap(index, other);
            }

            let merged = merge_all(&start(k, shard_count), partials).unwrap();
            all_hits.sort_by(compare_hits);
            let effective_k = if k == 0 { DEFAULT_K } else { k } as usize;
            all_hits.truncate(effective_k);
            assert_eq!(merged.hits, all_hits, "round {round}");
        }
    }
}
