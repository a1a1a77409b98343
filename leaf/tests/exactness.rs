//! Distributed search with global statistics equals one index over the whole
//! corpus, and that index reaches the expected relevance.
//!
//! BEIR SciFact is built twice: with 4 shards and with 1. Every test query
//! (the 300 judged ones) runs in natural mode on each of the 4 shards, with
//! the build's global statistics, and the shard answers are merged by
//! (score descending, id ascending). The single index is searched with plain
//! tantivy (`TopDocs`, top 100, sorted by (score descending, id ascending),
//! first 10 kept). Both must give the same ids in the same order with scores
//! within 1e-5 relative; the second page (via `search_after`) must match too.
//! nDCG@10 of the single index must reach 0.68.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use fanout_leaf::{
    IndexBuildOptions, LeafError, QueryMode, ShardSearcher, build_index, build_query,
    open_reference_index, rank_order, shard_dir_name,
};
use fanout_proto::search::v1::{SearchAfter, ShardSearchRequest};
use tantivy::collector::{Count, TopDocs};
use tantivy::schema::Value;
use tantivy::{Searcher, TantivyDocument};

const SHARDS: u32 = 4;
const PAGE: usize = 10;
const REFERENCE_DEPTH: usize = 100;
const MAX_RELATIVE_SCORE_ERROR: f32 = 1e-5;
const MIN_NDCG_AT_10: f64 = 0.68;

fn scifact_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/beir-scifact")
}

#[derive(Debug, Clone)]
struct Ranked {
    id: String,
    score: f32,
}

fn sort_ranked(hits: &mut [Ranked]) {
    hits.sort_by(|left, right| rank_order(left.score, &left.id, right.score, &right.id));
}

/// Query id -> text, for the queries judged in the test split.
fn test_queries() -> Vec<(String, String)> {
    let judged: BTreeSet<String> = test_qrels().into_keys().collect();
    let text = std::fs::read_to_string(scifact_dir().join("queries.jsonl")).unwrap();
    let mut queries: Vec<(String, String)> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                value["_id"].as_str().unwrap().to_string(),
                value["text"].as_str().unwrap().to_string(),
            )
        })
        .filter(|(id, _)| judged.contains(id))
        .collect();
    queries.sort();
    queries
}

/// Query id -> (document id -> relevance).
fn test_qrels() -> HashMap<String, HashMap<String, u32>> {
    let text = std::fs::read_to_string(scifact_dir().join("qrels/test.tsv")).unwrap();
    let mut qrels: HashMap<String, HashMap<String, u32>> = HashMap::new();
    for line in text.lines().skip(1).filter(|line| !line.trim().is_empty()) {
        let columns: Vec<&str> = line.split('\t').collect();
        let relevance: u32 = columns[2].trim().parse().unwrap();
        qrels
            .entry(columns[0].to_string())
            .or_default()
            .insert(columns[1].to_string(), relevance);
    }
    qrels
}

/// nDCG@10 with linear gains, as trec_eval's ndcg_cut_10 (BEIR's metric).
fn ndcg_at_10(ranked_ids: &[String], judgments: &HashMap<String, u32>) -> f64 {
    let discount = |rank: usize| 1.0 / ((rank + 2) as f64).log2();
    let dcg: f64 = ranked_ids
        .iter()
        .take(10)
        .enumerate()
        .map(|(rank, id)| f64::from(*judgments.get(id).unwrap_or(&0)) * discount(rank))
        .sum();
    let mut ideal: Vec<u32> = judgments
        .values()
        .copied()
        .filter(|&gain| gain > 0)
        .collect();
    ideal.sort_unstable_by(|left, right| right.cmp(left));
    let ideal_dcg: f64 = ideal
        .iter()
        .take(10)
        .enumerate()
        .map(|(rank, gain)| f64::from(*gain) * discount(rank))
        .sum();
    if ideal_dcg == 0.0 {
        0.0
    } else {
        dcg / ideal_dcg
    }
}

fn build(out_dir: &Path, shards: u32) {
    let options = IndexBuildOptions {
        input: scifact_dir().join("corpus.jsonl.gz"),
        out_dir: out_dir.to_path_buf(),
        shards,
        id_field: "_id".into(),
        writer_memory_bytes: 64_000_000,
        threads: 2,
        ..IndexBuildOptions::default()
    };
    let started = Instant::now();
    let report = build_index(&options).unwrap();
    println!(
        "built SciFact with {shards} shard(s): {} documents {:?} in {:?}",
        report.docs_indexed,
        report.shard_doc_counts,
        started.elapsed()
    );
    assert_eq!(report.docs_indexed, 5183);
    assert!(report.bad_lines.is_empty());
}

struct ReferenceAnswer {
    /// (score desc, id asc), REFERENCE_DEPTH deep.
    ranked: Vec<Ranked>,
    total_hits: u64,
}

fn reference_search(
    searcher: &Searcher,
    index: &tantivy::Index,
    query: &str,
) -> Result<ReferenceAnswer, LeafError> {
    let id_field = index.schema().get_field("id").unwrap();
    let parsed = build_query(index, query, QueryMode::Natural)?;
    let (top_docs, total_hits) = searcher
        .search(
            parsed.as_ref(),
            &(TopDocs::with_limit(REFERENCE_DEPTH).order_by_score(), Count),
        )
        .unwrap();
    let mut ranked: Vec<Ranked> = top_docs
        .into_iter()
        .map(|(score, address)| {
            let document: TantivyDocument = searcher.doc(address).unwrap();
            let id = document
                .get_first(id_field)
                .and_then(|value| value.as_str())
                .unwrap();
            Ranked {
                id: id.to_string(),
                score,
            }
        })
        .collect();
    sort_ranked(&mut ranked);
    Ok(ReferenceAnswer {
        ranked,
        total_hits: total_hits as u64,
    })
}

/// One page of the distributed search: every shard's top PAGE, merged.
fn distributed_search(
    shards: &[ShardSearcher],
    query: &str,
    search_after: Option<&Ranked>,
) -> Result<(Vec<Ranked>, u64), LeafError> {
    let request = ShardSearchRequest {
        query: query.to_string(),
        mode: QueryMode::Natural as i32,
        k: PAGE as u32,
        filters: Vec::new(),
        search_after: search_after.map(|after| SearchAfter {
            score: after.score,
            id: after.id.clone(),
        }),
    };
    let mut merged = Vec::new();
    let mut total_hits = 0;
    for shard in shards {
        let response = shard.search(&request, &|| false)?;
        assert_eq!(response.generation, shard.manifest().generation);
        total_hits += response.total_hits;
        merged.extend(response.hits.into_iter().map(|hit| {
            assert_eq!(hit.shard_id, shard.manifest().shard_id);
            Ranked {
                id: hit.id,
                score: hit.score,
            }
        }));
    }
    sort_ranked(&mut merged);
    merged.truncate(PAGE);
    Ok((merged, total_hits))
}

fn assert_same_page(
    query_id: &str,
    page: &str,
    expected: &[Ranked],
    actual: &[Ranked],
    worst_error: &mut f32,
) {
    let expected_ids: Vec<&str> = expected.iter().map(|hit| hit.id.as_str()).collect();
    let actual_ids: Vec<&str> = actual.iter().map(|hit| hit.id.as_str()).collect();
    assert_eq!(
        actual_ids, expected_ids,
        "query {query_id}, {page}: ids differ"
    );
    for (expected, actual) in expected.iter().zip(actual) {
        let relative =
            (expected.score - actual.score).abs() / expected.score.abs().max(f32::MIN_POSITIVE);
        *worst_error = worst_error.max(relative);
        assert!(
            relative <= MAX_RELATIVE_SCORE_ERROR,
            "query {query_id}, {page}, id {}: score {} vs {} in the single index",
            actual.id,
            actual.score,
            expected.score
        );
    }
}

#[test]
fn distributed_scores_equal_the_single_index_and_relevance_holds() {
    let scratch = tempfile::tempdir().unwrap();
    let sharded_dir = scratch.path().join("sharded");
    let single_dir = scratch.path().join("single");
    build(&sharded_dir, SHARDS);
    build(&single_dir, 1);

    let shards: Vec<ShardSearcher> = (0..SHARDS)
        .map(|shard| ShardSearcher::open(&sharded_dir.join(shard_dir_name(shard))).unwrap())
        .collect();
    let reference_index = open_reference_index(&single_dir.join(shard_dir_name(0))).unwrap();
    let reference_searcher = reference_index.reader().unwrap().searcher();

    let queries = test_queries();
    let qrels = test_qrels();
    assert_eq!(queries.len(), 300, "SciFact's test split has 300 queries");

    let started = Instant::now();
    let mut ndcg_sum = 0.0;
    let mut worst_error = 0.0f32;
    let mut second_pages_compared = 0;
    for (query_id, query) in &queries {
        let reference = reference_search(&reference_searcher, &reference_index, query);
        let distributed = distributed_search(&shards, query, None);
        let (reference, (first_page, total_hits)) = match (reference, distributed) {
            (Ok(reference), Ok(distributed)) => (reference, distributed),
            (
                Err(LeafError::QueryHasNoSearchableTerms),
                Err(LeafError::QueryHasNoSearchableTerms),
            ) => {
                println!("query {query_id} has no searchable terms: {query:?}");
                continue;
            }
            (reference, distributed) => panic!(
                "query {query_id}: the single index says {:?}, the shards {:?}",
                reference.err(),
                distributed.err()
            ),
        };
        assert_eq!(
            total_hits, reference.total_hits,
            "query {query_id}: total hits"
        );
        let expected_first: Vec<Ranked> = reference.ranked.iter().take(PAGE).cloned().collect();
        assert_same_page(
            query_id,
            "page 1",
            &expected_first,
            &first_page,
            &mut worst_error,
        );

        // The next page through search_after (the reference is 100 deep).
        if let Some(last) = first_page.last() {
            let (second_page, _) = distributed_search(&shards, query, Some(last)).unwrap();
            let expected_second: Vec<Ranked> = reference
                .ranked
                .iter()
                .skip(PAGE)
                .take(PAGE)
                .cloned()
                .collect();
            assert_same_page(
                query_id,
                "page 2",
                &expected_second,
                &second_page,
                &mut worst_error,
            );
            second_pages_compared += 1;
        }

        let ranked_ids: Vec<String> = expected_first.into_iter().map(|hit| hit.id).collect();
        ndcg_sum += ndcg_at_10(&ranked_ids, &qrels[query_id]);
    }
    let ndcg = ndcg_sum / queries.len() as f64;
    println!(
        "{} queries: the 4-shard search with global statistics equals the single index \
         (top {PAGE}, and {second_pages_compared} second pages via search_after); \
         worst relative score difference {worst_error:e}; searched in {:?}",
        queries.len(),
        started.elapsed()
    );
    println!("nDCG@10 of the single index on SciFact test (natural mode): {ndcg:.4}");
    assert!(
        ndcg >= MIN_NDCG_AT_10,
        "nDCG@10 {ndcg:.4} is below {MIN_NDCG_AT_10}"
    );
}

#[test]
fn local_statistics_would_not_be_exact() {
    // The exactness above must come from the global statistics: without them
    // the shards score with their own document frequencies and the scores
    // differ from the single index. Checked on one query, one shard.
    let scratch = tempfile::tempdir().unwrap();
    let corpus = scratch.path().join("corpus.jsonl");
    let mut lines = String::new();
    for number in 0..40 {
        let text = if number % 4 == 0 {
            "rare word here"
        } else {
            "common words only"
        };
        lines.push_str(&format!(
            "{{\"id\": \"doc-{number}\", \"title\": \"\", \"text\": \"{text} {number}\"}}\n"
        ));
    }
    std::fs::write(&corpus, lines).unwrap();
    let out_dir = scratch.path().join("index");
    build_index(&IndexBuildOptions {
        input: corpus,
        out_dir: out_dir.clone(),
        shards: 2,
        threads: 1,
        writer_memory_bytes: 30_000_000,
        ..IndexBuildOptions::default()
    })
    .unwrap();
    let shard_dir = out_dir.join(shard_dir_name(0));
    let request = ShardSearchRequest {
        query: "rare".into(),
        k: 1,
        ..Default::default()
    };
    let global = ShardSearcher::open(&shard_dir)
        .unwrap()
        .search(&request, &|| false)
        .unwrap();
    // The same shard's index searched with its own statistics, as tantivy
    // does by default.
    let index = open_reference_index(&shard_dir).unwrap();
    let searcher = index.reader().unwrap().searcher();
    let query = build_query(&index, "rare", QueryMode::Natural).unwrap();
    let local = searcher
        .search(query.as_ref(), &TopDocs::with_limit(1).order_by_score())
        .unwrap();
    let (local_score, local_address) = local[0];
    let document: TantivyDocument = searcher.doc(local_address).unwrap();
    let id_field = index.schema().get_field("id").unwrap();
    let local_id = document
        .get_first(id_field)
        .and_then(|value| value.as_str())
        .unwrap();
    assert_eq!(global.hits[0].id, local_id);
    assert_ne!(global.hits[0].score, local_score);
}
