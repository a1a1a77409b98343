//! The top-k collector of a shard: hits ordered by score descending, ties
//! broken by id ascending (byte order), so that merging shards is
//! deterministic whatever order they answer in.
//!
//! Within a segment the `id` fast field is a string column whose ordinals are
//! sorted like the strings themselves, so the segment collector compares
//! `(score, ordinal)` pairs (no string work per document) and only the
//! segment's final top k have their ordinals turned into ids, in
//! [`Collector::merge_fruits`]. A `search_after` key (the last hit of the
//! previous page) keeps only hits strictly after it in that order; it becomes
//! a per-segment ordinal bound. The collector also counts every matching
//! document (`total_hits`, not reduced by `search_after`).
//!
//! Every match is scored (no Block-WAND pruning): natural-mode queries are
//! unions of `DisjunctionMaxQuery`s, which tantivy cannot prune anyway, and
//! the total count needs every match.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::{StrColumn, TermOrdHit};
use tantivy::{DocId, Score, SegmentOrdinal, SegmentReader};

use crate::schema::ID_FIELD;

/// One hit of a shard's top k.
#[derive(Debug, Clone, PartialEq)]
pub struct RankedHit {
    pub score: Score,
    pub id: String,
    pub segment_ord: u32,
    pub doc_id: DocId,
}

/// A shard's top k and the number of documents matching the query.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TopHits {
    /// Best first: score descending, then id ascending.
    pub hits: Vec<RankedHit>,
    pub total_hits: u64,
}

/// Where the previous page ended.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchAfterKey {
    pub score: Score,
    pub id: String,
}

/// The ranking order: `Less` when `(left_score, left_id)` ranks before
/// `(right_score, right_id)`: higher score first, then smaller id (bytes).
pub fn rank_order(
    left_score: Score,
    left_id: &str,
    right_score: Score,
    right_id: &str,
) -> Ordering {
    right_score
        .total_cmp(&left_score)
        .then_with(|| left_id.as_bytes().cmp(right_id.as_bytes()))
}

/// Collects the top `limit` hits (after `search_after`, if given) and counts
/// all matches.
#[derive(Debug, Clone)]
pub struct TopHitsCollector {
    limit: usize,
    search_after: Option<SearchAfterKey>,
}

impl TopHitsCollector {
    pub fn new(limit: usize, search_after: Option<SearchAfterKey>) -> TopHitsCollector {
        TopHitsCollector {
            limit,
            search_after,
        }
    }
}

/// A segment's hit while collecting: the id is still a column ordinal.
#[derive(Debug, Clone, Copy)]
struct SegmentHit {
    score: Score,
    id_ord: u64,
    doc: DocId,
}

/// Greater means ranks worse, so a `BinaryHeap` keeps the worst kept hit on top.
impl Ord for SegmentHit {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .score
            .total_cmp(&self.score)
            .then_with(|| self.id_ord.cmp(&other.id_ord))
            .then_with(|| self.doc.cmp(&other.doc))
    }
}

impl PartialOrd for SegmentHit {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for SegmentHit {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for SegmentHit {}

/// The per-segment part of [`TopHitsCollector`].
pub struct TopHitsSegmentCollector {
    limit: usize,
    segment_ord: SegmentOrdinal,
    ids: Option<StrColumn>,
    /// `(score, first id ordinal after the key's id)` of `search_after`.
    after: Option<(Score, u64)>,
    kept: BinaryHeap<SegmentHit>,
    matched: u64,
}

/// What one segment found, ids not yet resolved.
pub struct SegmentTopHits {
    segment_ord: SegmentOrdinal,
    ids: Option<StrColumn>,
    /// Best first.
    hits: Vec<SegmentHit>,
    matched: u64,
}

impl Collector for TopHitsCollector {
    type Fruit = TopHits;
    type Child = TopHitsSegmentCollector;

    fn for_segment(
        &self,
        segment_ord: SegmentOrdinal,
        segment: &SegmentReader,
    ) -> tantivy::Result<TopHitsSegmentCollector> {
        let ids = segment.fast_fields().str(ID_FIELD)?;
        let after = match (&self.search_after, &ids) {
            (None, _) => None,
            // A segment without ids has nothing to collect anyway.
            (Some(key), None) => Some((key.score, u64::MAX)),
            (Some(key), Some(ids)) => {
                let first_ord_after = match ids.dictionary().term_ord_or_next(&key.id)? {
                    TermOrdHit::Exact(ord) => ord.saturating_add(1),
                    TermOrdHit::Next(ord) => ord,
                };
                Some((key.score, first_ord_after))
            }
        };
        Ok(TopHitsSegmentCollector {
            limit: self.limit,
            segment_ord,
            ids,
            after,
            kept: BinaryHeap::with_capacity(self.limit.min(1024) + 1),
            matched: 0,
        })
    }

    fn requires_scoring(&self) -> bool {
        true
    }

    fn merge_fruits(&self, segment_fruits: Vec<SegmentTopHits>) -> tantivy::Result<TopHits> {
        let mut total_hits = 0u64;
        let mut hits = Vec::new();
        for fruit in segment_fruits {
            total_hits += fruit.matched;
            let Some(ids) = fruit.ids else {
                continue;
            };
            for hit in fruit.hits {
                let mut id = String::new();
                if !ids.ord_to_str(hit.id_ord, &mut id)? {
                    return Err(tantivy::TantivyError::InternalError(format!(
                        "id ordinal {} is missing from segment {}",
                        hit.id_ord, fruit.segment_ord
                    )));
                }
                hits.push(RankedHit {
                    score: hit.score,
                    id,
                    segment_ord: fruit.segment_ord,
                    doc_id: hit.doc,
                });
            }
        }
        hits.sort_by(|left, right| rank_order(left.score, &left.id, right.score, &right.id));
        hits.truncate(self.limit);
        Ok(TopHits { hits, total_hits })
    }
}

impl SegmentCollector for TopHitsSegmentCollector {
    type Fruit = SegmentTopHits;

    fn collect(&mut self, doc: DocId, score: Score) {
        self.matched += 1;
        if self.limit == 0 {
            return;
        }
        // Every document of a fanout index has exactly one id; one without is
        // counted but cannot be returned.
        let Some(id_ord) = self.ids.as_ref().and_then(|ids| ids.ords().first(doc)) else {
            return;
        };
        if let Some((after_score, first_ord_after)) = self.after {
            match score.total_cmp(&after_score) {
                Ordering::Greater => return,
                Ordering::Equal if id_ord < first_ord_after => return,
                _ => {}
            }
        }
        let hit = SegmentHit { score, id_ord, doc };
        if self.kept.len() < self.limit {
            self.kept.push(hit);
            return;
        }
        if let Some(mut worst) = self.kept.peek_mut()
            && hit < *worst
        {
            *worst = hit;
        }
    }

    fn harvest(self) -> SegmentTopHits {
        SegmentTopHits {
            segment_ord: self.segment_ord,
            ids: self.ids,
            hits: self.kept.into_sorted_vec(),
            matched: self.matched,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{SearchFields, index_in_ram};
    use tantivy::query::{AllQuery, ConstScoreQuery, Query, TermQuery};
    use tantivy::schema::IndexRecordOption;
    use tantivy::{Index, Term};

    /// Ids inserted out of order over two segments. Every document holds
    /// "tie" once with nothing else, so they all score the same, except "z",
    /// which holds it four times and scores higher despite its id.
    fn index_with_ties() -> Index {
        index_in_ram(&[
            &[
                ("m", "", "tie"),
                ("c", "", "tie"),
                ("x", "", "tie"),
                ("y", "", "other"),
            ],
            &[
                ("a", "", "tie"),
                ("z", "", "tie tie tie tie"),
                ("q", "", "tie"),
                ("b", "", "tie"),
            ],
        ])
    }

    fn collect(index: &Index, query: &dyn Query, collector: &TopHitsCollector) -> TopHits {
        index
            .reader()
            .unwrap()
            .searcher()
            .search(query, collector)
            .unwrap()
    }

    fn ids(top: &TopHits) -> Vec<&str> {
        top.hits.iter().map(|hit| hit.id.as_str()).collect()
    }

    fn tie_query(index: &Index) -> TermQuery {
        let fields = SearchFields::from_schema(&index.schema()).unwrap();
        TermQuery::new(
            Term::from_field_text(fields.text, "tie"),
            IndexRecordOption::WithFreqs,
        )
    }

    fn after(hit: &RankedHit) -> Option<SearchAfterKey> {
        Some(SearchAfterKey {
            score: hit.score,
            id: hit.id.clone(),
        })
    }

    #[test]
    fn orders_by_score_then_id_across_segments() {
        let index = index_with_ties();
        assert_eq!(index.searchable_segment_ids().unwrap().len(), 2);
        let top = collect(&index, &tie_query(&index), &TopHitsCollector::new(4, None));
        assert_eq!(ids(&top), ["z", "a", "b", "c"]);
        assert_eq!(top.total_hits, 7);
        assert!(top.hits[0].score > top.hits[1].score);
        assert!(
            top.hits[1..]
                .iter()
                .all(|hit| hit.score == top.hits[1].score)
        );

        assert_eq!(rank_order(2.0, "z", 1.0, "a"), Ordering::Less);
        assert_eq!(rank_order(1.0, "a", 1.0, "b"), Ordering::Less);
        assert_eq!(rank_order(1.0, "b", 1.0, "a"), Ordering::Greater);
        assert_eq!(rank_order(1.0, "B", 1.0, "a"), Ordering::Less, "byte order");
    }

    #[test]
    fn equal_scores_with_a_constant_score_query_sort_by_id() {
        let index = index_with_ties();
        let query = ConstScoreQuery::new(Box::new(AllQuery), 1.0);
        let top = collect(&index, &query, &TopHitsCollector::new(10, None));
        assert_eq!(ids(&top), ["a", "b", "c", "m", "q", "x", "y", "z"]);
    }

    #[test]
    fn search_after_pages_through_every_hit_once() {
        let index = index_with_ties();
        let query = tie_query(&index);
        let everything = collect(&index, &query, &TopHitsCollector::new(100, None));
        let mut paged = Vec::new();
        let mut key = None;
        loop {
            let page = collect(&index, &query, &TopHitsCollector::new(2, key.clone()));
            assert_eq!(page.total_hits, 7, "total counts every match");
            let Some(last) = page.hits.last() else {
                break;
            };
            key = after(last);
            paged.extend(page.hits);
        }
        assert_eq!(paged, everything.hits);
        assert_eq!(paged.len(), 7);
    }

    #[test]
    fn search_after_keeps_only_hits_strictly_after_the_key() {
        let index = index_with_ties();
        let query = tie_query(&index);
        let top = collect(&index, &query, &TopHitsCollector::new(10, None));
        let tied_score = top.hits[1].score;

        // A key id that is not in the index: continue from the next id.
        let key = SearchAfterKey {
            score: tied_score,
            id: "d".into(),
        };
        let page = collect(&index, &query, &TopHitsCollector::new(10, Some(key)));
        assert_eq!(ids(&page), ["m", "q", "x"]);

        // After the top hit: everything else.
        let page = collect(
            &index,
            &query,
            &TopHitsCollector::new(10, after(&top.hits[0])),
        );
        assert_eq!(ids(&page), ["a", "b", "c", "m", "q", "x"]);

        // A key with a lower score than every hit, or past the last id: nothing.
        let key = SearchAfterKey {
            score: tied_score / 2.0,
            id: "".into(),
        };
        assert!(
            collect(&index, &query, &TopHitsCollector::new(10, Some(key)))
                .hits
                .is_empty()
        );
        let key = SearchAfterKey {
            score: tied_score,
            id: "zzz".into(),
        };
        assert!(
            collect(&index, &query, &TopHitsCollector::new(10, Some(key)))
                .hits
                .is_empty()
        );
    }

    #[test]
    fn a_zero_limit_still_counts() {
        let index = index_with_ties();
        let top = collect(&index, &tie_query(&index), &TopHitsCollector::new(0, None));
        assert!(top.hits.is_empty());
        assert_eq!(top.total_hits, 7);
    }
}
