//! Relevance through the whole cluster (4 shards, the root's embedded merge):
//! nDCG@10 over the 300 SciFact test queries, measured here and by
//! `fanout eval`; and free text full of punctuation is a query, not a syntax
//! error, while real syntax errors in `--syntax` mode are the caller's.

use std::time::Duration;

use fanout_proto::search::v1::{QueryMode, SearchRequest, SearchResponse};
use fanout_tests::{
    ClusterOptions, MergerPlacement, beir, fanout_binary, ndcg_at_k, search, start_cluster, within,
    workspace_root,
};
use futures::StreamExt;
use tonic::Code;

/// What the analyzer and best-fields scoring must reach on SciFact (the BEIR
/// paper's Elasticsearch BM25 has 0.665).
const MIN_NDCG_AT_10: f64 = 0.68;
const SEARCH_LIMIT: Duration = Duration::from_secs(10);
const ALL_SEARCHES_LIMIT: Duration = Duration::from_secs(300);
const EVAL_LIMIT: Duration = Duration::from_secs(300);

/// 4 shards, the root's embedded merge.
fn cluster_options() -> ClusterOptions {
    ClusterOptions::scifact(4).merger(MergerPlacement::Embedded)
}

fn request(query: &str, mode: QueryMode, k: u32) -> SearchRequest {
    SearchRequest {
        query: query.to_owned(),
        k,
        mode: mode.into(),
        ..Default::default()
    }
}

/// The first number after `label` in `text` (e.g. `nDCG@10: 0.6912`).
fn number_after(text: &str, label: &str) -> Option<f64> {
    let rest = &text[text.find(label)? + label.len()..];
    rest.split(|c: char| c.is_whitespace() || c == ':' || c == '=' || c == ',')
        .filter(|token| !token.is_empty())
        .take(3)
        .find_map(|token| token.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scifact_ndcg_at_10_through_the_cluster_and_fanout_eval() {
    let (queries, qrels) = beir::scifact_test().expect("SciFact test queries load");
    let cluster = start_cluster(&fanout_binary!(), cluster_options()).await;
    let client = cluster.search_client().await.expect("client connects");

    let searches = futures::stream::iter(&queries)
        .map(|query| {
            search(
                &client,
                request(&query.text, QueryMode::Natural, 10),
                SEARCH_LIMIT,
            )
        })
        .buffered(4)
        .collect::<Vec<_>>();
    let responses = within(ALL_SEARCHES_LIMIT, "300 searches", searches)
        .await
        .expect("searches finish");
    let mut total = 0.0;
    for (query, response) in queries.iter().zip(responses) {
        let response = response.unwrap_or_else(|status| panic!("query {}: {status:?}", query.id));
        let ranked: Vec<&str> = response.hits.iter().map(|hit| hit.id.as_str()).collect();
        total += ndcg_at_k(&ranked, qrels.judged(&query.id), 10);
    }
    let ndcg = total / queries.len() as f64;
    println!(
        "SciFact test nDCG@10 through the cluster: {ndcg:.4} over {} queries",
        queries.len()
    );
    assert!(
        ndcg >= MIN_NDCG_AT_10,
        "nDCG@10 {ndcg:.4} < {MIN_NDCG_AT_10}"
    );

    let data = workspace_root().join("data/beir-scifact");
    let root_url = cluster.root_url();
    let binary = fanout_binary!();
    let eval = tokio::task::spawn_blocking(move || {
        binary.run(
            [
                "eval".as_ref(),
                "--queries".as_ref(),
                data.join("queries.jsonl").as_os_str(),
                "--qrels".as_ref(),
                data.join("qrels/test.tsv").as_os_str(),
                "--addr".as_ref(),
                root_url.as_ref(),
                "--min-ndcg".as_ref(),
                MIN_NDCG_AT_10.to_string().as_ref(),
            ],
            EVAL_LIMIT,
        )
    })
    .await
    .expect("the eval thread does not panic")
    .expect("fanout eval runs");
    println!("fanout eval printed:\n{}", eval.combined());
    eval.expect_success("fanout eval")
        .expect("fanout eval exits 0");
    let printed = eval.combined();
    let eval_ndcg = number_after(&printed, "nDCG@10")
        .unwrap_or_else(|| panic!("fanout eval printed no nDCG@10 value:\n{printed}"));
    assert!(
        (eval_ndcg - ndcg).abs() < 0.001,
        "fanout eval says nDCG@10 {eval_ndcg}, the harness measured {ndcg:.4}"
    );
    assert!(
        printed.contains("300"),
        "fanout eval does not print the number of queries (300):\n{printed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn natural_mode_takes_punctuation_as_text_and_syntax_mode_reports_errors() {
    let cluster = start_cluster(&fanout_binary!(), cluster_options()).await;
    let client = cluster.search_client().await.expect("client connects");

    // (query, whether SciFact surely has a match for its words)
    let free_text = [
        ("IL-6: role (in) inflammation?", true),
        ("a+b -c \"unbalanced", false),
        ("title:(unclosed", false),
        ("[1 TO 5] cancer AND OR NOT", true),
        ("p53 && || ! ^2 ~ * stem-cells {braces} \\back\\slash", true),
        ("what is the role of TNF-α in insulin resistance?", true),
    ];
    for (query, must_match) in free_text {
        let response = search(
            &client,
            request(query, QueryMode::Natural, 10),
            SEARCH_LIMIT,
        )
        .await
        .unwrap_or_else(|status| panic!("natural query {query:?} failed: {status:?}"));
        if must_match {
            assert!(
                !response.hits.is_empty(),
                "natural query {query:?} found nothing"
            );
        }
    }
    let inflammation = search(
        &client,
        request("IL-6: role (in) inflammation?", QueryMode::Natural, 10),
        SEARCH_LIMIT,
    )
    .await
    .expect("IL-6 query answers");
    let plain = search(
        &client,
        request("IL 6 role in inflammation", QueryMode::Natural, 10),
        SEARCH_LIMIT,
    )
    .await
    .expect("plain query answers");
    let ids = |response: &SearchResponse| {
        response
            .hits
            .iter()
            .map(|hit| hit.id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(&inflammation),
        ids(&plain),
        "punctuation changed the result of a natural-mode query"
    );

    let valid_syntax = search(
        &client,
        request("title:cancer AND \"stem cells\"", QueryMode::Syntax, 10),
        SEARCH_LIMIT,
    )
    .await
    .expect("a valid syntax-mode query answers");
    assert!(
        !valid_syntax.hits.is_empty(),
        "title:cancer AND \"stem cells\" found nothing"
    );

    for garbage in ["title:(unclosed", "nosuchfield:word", "\"unbalanced"] {
        let status = search(
            &client,
            request(garbage, QueryMode::Syntax, 10),
            SEARCH_LIMIT,
        )
        .await
        .expect_err(&format!("syntax-mode {garbage:?} must be rejected"));
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "syntax-mode {garbage:?}: {status:?}"
        );
        let message = status.message().to_lowercase();
        assert!(
            message.contains("query") || message.contains("syntax") || message.contains("pars"),
            "the error for {garbage:?} does not say what is wrong: {:?}",
            status.message()
        );
    }
}

#[test]
fn finds_the_number_after_a_label() {
    assert_eq!(
        number_after("queries 300\nnDCG@10: 0.6912\n", "nDCG@10"),
        Some(0.6912)
    );
    assert_eq!(
        number_after("nDCG@10 = 0.5 Recall@100 0.9", "nDCG@10"),
        Some(0.5)
    );
    assert_eq!(number_after("no metric here", "nDCG@10"), None);
}
