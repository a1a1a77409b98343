//! Distributed BM25 is exact: for every SciFact test query, a cluster of
//! 4 shards x 2 replicas with a separate merger process returns the same top
//! 10 as one tantivy index over the whole corpus: same ids, same order,
//! scores within 1e-5 (relative), the same number of matches, full coverage.
//!
//! The single index is built with `fanout index --shards 1` and searched in
//! this process with the leaf's own query builder and plain tantivy, ties
//! broken like the leaves do (score descending, then id ascending).

use std::time::Duration;

use fanout_proto::search::v1::{QueryMode, SearchRequest, SearchResponse};
use fanout_tests::{
    BeirQuery, ClusterOptions, IndexFixture, MergerPlacement, beir, fanout_binary, search,
    start_cluster, within,
};
use futures::StreamExt;
use tantivy::collector::{Count, TopDocs};
use tantivy::schema::Value;
use tantivy::{Searcher, TantivyDocument};

const K: usize = 10;
/// Hits the reference collects before re-sorting ties by id.
const REFERENCE_DEPTH: usize = 100;
const SCORE_RELATIVE_TOLERANCE: f32 = 1e-5;
const SEARCH_LIMIT: Duration = Duration::from_secs(10);
const ALL_SEARCHES_LIMIT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
struct RankedId {
    id: String,
    score: f32,
}

struct ReferenceAnswer {
    top: Vec<RankedId>,
    total_hits: u64,
}

fn reference_search(searcher: &Searcher, index: &tantivy::Index, query: &str) -> ReferenceAnswer {
    let id_field = index
        .schema()
        .get_field("id")
        .expect("fanout's schema has an id field");
    let parsed = fanout_leaf::build_query(index, query, QueryMode::Natural)
        .unwrap_or_else(|error| panic!("the reference cannot build {query:?}: {error}"));
    let (top_docs, total_hits) = searcher
        .search(
            &*parsed,
            &(TopDocs::with_limit(REFERENCE_DEPTH).order_by_score(), Count),
        )
        .expect("the reference search runs");
    let mut top: Vec<RankedId> = top_docs
        .into_iter()
        .map(|(score, address)| {
            let document: TantivyDocument = searcher.doc(address).expect("stored document");
            let id = document
                .get_first(id_field)
                .and_then(|value| value.as_str())
                .expect("every document stores its id")
                .to_owned();
            RankedId { id, score }
        })
        .collect();
    top.sort_by(|left, right| {
        right
            .score
            .total_cmp(&left.score)
            .then_with(|| left.id.as_bytes().cmp(right.id.as_bytes()))
    });
    top.truncate(K);
    ReferenceAnswer {
        top,
        total_hits: total_hits as u64,
    }
}

fn cluster_request(query: &BeirQuery) -> SearchRequest {
    SearchRequest {
        query: query.text.clone(),
        k: K as u32,
        mode: QueryMode::Natural.into(),
        ..Default::default()
    }
}

fn scores_match(left: f32, right: f32) -> bool {
    (left - right).abs() <= SCORE_RELATIVE_TOLERANCE * left.abs().max(right.abs())
}

/// Describes how `response` differs from `expected`, if it does.
fn differences(
    query: &BeirQuery,
    expected: &ReferenceAnswer,
    response: &SearchResponse,
) -> Option<String> {
    let coverage = response.coverage.clone().unwrap_or_default();
    let mut problems = Vec::new();
    if coverage.shards_total != 4 || coverage.shards_answered != 4 || coverage.partial {
        problems.push(format!(
            "coverage {}/{} partial={}",
            coverage.shards_answered, coverage.shards_total, coverage.partial
        ));
    }
    if response.total_hits != expected.total_hits {
        problems.push(format!(
            "total_hits {} != reference {}",
            response.total_hits, expected.total_hits
        ));
    }
    let got: Vec<RankedId> = response
        .hits
        .iter()
        .map(|hit| RankedId {
            id: hit.id.clone(),
            score: hit.score,
        })
        .collect();
    let same_ids = got.len() == expected.top.len()
        && got
            .iter()
            .zip(&expected.top)
            .all(|(left, right)| left.id == right.id);
    let same_scores = same_ids
        && got
            .iter()
            .zip(&expected.top)
            .all(|(left, right)| scores_match(left.score, right.score));
    if !same_ids || !same_scores {
        problems.push(format!(
            "top {K}:\n  cluster   {got:?}\n  reference {:?}",
            expected.top
        ));
    }
    if problems.is_empty() {
        return None;
    }
    Some(format!(
        "query {} {:?}: {}",
        query.id,
        query.text,
        problems.join("; ")
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_top_10_equals_a_single_index_for_every_scifact_test_query() {
    let binary = fanout_binary!();
    let sharded = IndexFixture::scifact(&binary, 4).expect("SciFact in 4 shards builds");
    let single = IndexFixture::scifact(&binary, 1).expect("SciFact in 1 shard builds");
    assert_eq!(sharded.doc_count(), single.doc_count());
    let (queries, _) = beir::scifact_test().expect("SciFact test queries load");
    assert_eq!(queries.len(), 300);

    let reference_index = fanout_leaf::open_reference_index(&single.shard_dir(0))
        .expect("the single-shard index opens");
    let reader = reference_index.reader().expect("reader");
    let searcher = reader.searcher();
    let expected: Vec<ReferenceAnswer> = queries
        .iter()
        .map(|query| reference_search(&searcher, &reference_index, &query.text))
        .collect();
    let with_hits = expected
        .iter()
        .filter(|answer| !answer.top.is_empty())
        .count();
    assert!(
        with_hits >= 290,
        "only {with_hits} of 300 queries match anything in the reference"
    );

    let options = ClusterOptions::new(sharded.dir())
        .replicas(2)
        .merger(MergerPlacement::Separate);
    let cluster = start_cluster(&binary, options).await;
    let client = cluster.search_client().await.expect("client connects");

    let searches = futures::stream::iter(&queries)
        .map(|query| search(&client, cluster_request(query), SEARCH_LIMIT))
        .buffered(4)
        .collect::<Vec<_>>();
    let responses = within(ALL_SEARCHES_LIMIT, "300 searches", searches)
        .await
        .expect("searches finish");

    let mut mismatches = Vec::new();
    for ((query, expected), response) in queries.iter().zip(&expected).zip(responses) {
        match response {
            Ok(response) => mismatches.extend(differences(query, expected, &response)),
            Err(status) => {
                mismatches.push(format!("query {} {:?}: {status:?}", query.id, query.text))
            }
        }
    }
    println!(
        "exactness: {} of {} queries identical to the single index",
        queries.len() - mismatches.len(),
        queries.len()
    );
    assert!(
        mismatches.is_empty(),
        "{} of {} queries differ from the single index; first ones:\n{}",
        mismatches.len(),
        queries.len(),
        mismatches
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
