//! Replicas die; the cluster keeps answering.
//!
//! - One replica of shard 0 is SIGKILLed while queries run: every query still
//!   answers with full coverage, served by the other replica.
//! - Every replica of shard 1 is SIGKILLed: with `allow_partial` the answer
//!   covers 3 of 4 shards and says so; without it the status is UNAVAILABLE;
//!   both well within the deadline.
//!
//! The two tests run one after the other (a lock), so that neither's timing
//! suffers from the other's load on a 2-core machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fanout_proto::search::v1::{SearchRequest, SearchResponse};
use fanout_tests::{
    BeirQuery, ClusterOptions, MergerPlacement, beir, fanout_binary, search, start_cluster, within,
};
use tokio::sync::Mutex;
use tonic::Code;

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

const SHARDS: u32 = 4;
const QUERY_TASKS: usize = 4;
const QUERIES_PER_TASK: usize = 50;
/// Queries answered before the replica is killed.
const KILL_AFTER: usize = 20;
const SEARCH_LIMIT: Duration = Duration::from_secs(5);
const DEADLINE: Duration = Duration::from_secs(2);
/// Time allowed beyond the deadline for the answer to come back.
const DEADLINE_SLACK: Duration = Duration::from_millis(1000);

/// 4 shards x 2 replicas, a merger process.
fn cluster_options() -> ClusterOptions {
    ClusterOptions::scifact(SHARDS)
        .replicas(2)
        .merger(MergerPlacement::Separate)
}

fn full_coverage_problem(response: &SearchResponse) -> Option<String> {
    let coverage = response.coverage.clone().unwrap_or_default();
    if coverage.shards_total == SHARDS && coverage.shards_answered == SHARDS && !coverage.partial {
        return None;
    }
    Some(format!(
        "coverage {}/{} partial={} failures={:?}",
        coverage.shards_answered, coverage.shards_total, coverage.partial, coverage.failures
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_replica_mid_stream_loses_no_query() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let (queries, _) = beir::scifact_test().expect("SciFact test queries load");
    let queries: Arc<Vec<BeirQuery>> = Arc::new(queries);
    let cluster = start_cluster(&fanout_binary!(), cluster_options()).await;
    let client = cluster.search_client().await.expect("client connects");

    let answered = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..QUERY_TASKS {
        let client = client.clone();
        let queries = Arc::clone(&queries);
        let answered = Arc::clone(&answered);
        tasks.spawn(async move {
            let mut problems = Vec::new();
            let mut shard_0_replicas = Vec::new();
            for n in 0..QUERIES_PER_TASK {
                let query = &queries[(task * QUERIES_PER_TASK + n) % queries.len()];
                let request = SearchRequest {
                    query: query.text.clone(),
                    k: 10,
                    ..Default::default()
                };
                match search(&client, request, SEARCH_LIMIT).await {
                    Ok(response) => {
                        shard_0_replicas.extend(
                            response
                                .shards
                                .iter()
                                .filter(|timing| timing.shard_id == 0)
                                .map(|timing| timing.replica.clone()),
                        );
                        if let Some(problem) = full_coverage_problem(&response) {
                            problems.push(format!("query {}: {problem}", query.id));
                        } else if response.hits.is_empty() {
                            problems.push(format!("query {}: no hits", query.id));
                        }
                    }
                    Err(status) => problems.push(format!("query {}: {status:?}", query.id)),
                }
                answered.fetch_add(1, Ordering::SeqCst);
            }
            (problems, shard_0_replicas)
        });
    }

    let wait_for_some_answers = async {
        while answered.load(Ordering::SeqCst) < KILL_AFTER {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    within(
        Duration::from_secs(60),
        "the first queries",
        wait_for_some_answers,
    )
    .await
    .expect("queries are answered before the kill");
    let answered_at_kill = answered.load(Ordering::SeqCst);
    cluster.leaf(0, 0).kill();
    println!("killed leaf 0/0 after {answered_at_kill} answers");

    let all = within(
        Duration::from_secs(300),
        "the query stream",
        tasks.join_all(),
    )
    .await
    .expect("the query tasks finish");
    let total = QUERY_TASKS * QUERIES_PER_TASK;
    assert!(
        answered_at_kill < total / 2,
        "the kill came too late ({answered_at_kill} of {total} answered) to test anything"
    );
    let (problems, shard_0_replicas): (Vec<Vec<String>>, Vec<Vec<String>>) =
        all.into_iter().unzip();
    let problems: Vec<String> = problems.into_iter().flatten().collect();
    let killed_addr = cluster.leaf(0, 0).addr.to_string();
    let answers_from_killed = shard_0_replicas
        .iter()
        .flatten()
        .filter(|replica| replica.ends_with(&killed_addr))
        .count();
    println!(
        "the killed replica answered shard 0 for {answers_from_killed} queries before it died"
    );
    assert!(
        answers_from_killed > 0,
        "the root never used replica 0/0 ({killed_addr}), so killing it tested nothing; \
         shard 0 was answered by {:?}",
        shard_0_replicas
            .iter()
            .flatten()
            .collect::<std::collections::BTreeSet<_>>()
    );
    println!(
        "{} of {total} queries answered with full coverage",
        total - problems.len()
    );
    assert!(
        problems.is_empty(),
        "{} of {total} queries failed or lost coverage after a replica died; first ones:\n{}",
        problems.len(),
        problems
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        cluster.leaf(0, 1).try_wait().expect("status").is_none(),
        "the surviving replica of shard 0 died too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_whole_shard_is_partial_with_allow_partial_and_unavailable_without() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = start_cluster(&fanout_binary!(), cluster_options()).await;
    let client = cluster.search_client().await.expect("client connects");
    let request = |allow_partial: bool| SearchRequest {
        query: "stem cells differentiation".into(),
        k: 10,
        timeout_millis: DEADLINE.as_millis() as u32,
        allow_partial,
        ..Default::default()
    };
    let before = search(&client, request(false), DEADLINE)
        .await
        .expect("the healthy cluster answers");
    assert!(
        full_coverage_problem(&before).is_none(),
        "{:?}",
        before.coverage
    );
    assert!(
        before.hits.iter().any(|hit| hit.shard_id == 1),
        "the query should have hits in shard 1 to lose: {:?}",
        before.hits
    );

    cluster.leaf(1, 0).kill();
    cluster.leaf(1, 1).kill();

    // Several rounds: the first meets fresh connection errors, later ones a
    // root that has already seen the replicas fail.
    for round in 0..3 {
        let started = Instant::now();
        let partial = search(&client, request(true), DEADLINE + DEADLINE_SLACK)
            .await
            .unwrap_or_else(|status| panic!("round {round}: allow_partial failed: {status:?}"));
        let elapsed = started.elapsed();
        let coverage = partial.coverage.clone().unwrap_or_default();
        assert_eq!(coverage.shards_total, SHARDS, "round {round}: {coverage:?}");
        assert_eq!(
            coverage.shards_answered,
            SHARDS - 1,
            "round {round}: {coverage:?}"
        );
        assert!(
            coverage.partial,
            "round {round}: partial flag not set: {coverage:?}"
        );
        assert_eq!(
            coverage.shards_failed + coverage.shards_timed_out,
            1,
            "round {round}: the lost shard is neither failed nor timed out: {coverage:?}"
        );
        assert!(
            coverage
                .failures
                .iter()
                .any(|failure| failure.shard_id == 1)
                || coverage.shards_timed_out == 1,
            "round {round}: no failure reported for shard 1: {coverage:?}"
        );
        assert!(
            !partial.hits.is_empty(),
            "round {round}: no hits from the other shards"
        );
        assert!(
            partial.hits.iter().all(|hit| hit.shard_id != 1),
            "round {round}: hits from a dead shard: {:?}",
            partial.hits
        );
        assert!(
            elapsed < DEADLINE + DEADLINE_SLACK,
            "round {round}: the partial answer took {elapsed:?}"
        );

        let started = Instant::now();
        let status = search(&client, request(false), DEADLINE + DEADLINE_SLACK)
            .await
            .expect_err("without allow_partial a lost shard is an error");
        let elapsed = started.elapsed();
        assert_eq!(
            status.code(),
            Code::Unavailable,
            "round {round}: {status:?}"
        );
        assert!(
            elapsed < DEADLINE + DEADLINE_SLACK,
            "round {round}: the error took {elapsed:?}"
        );
        println!(
            "round {round}: partial answer {:?}, unavailable in {elapsed:?}",
            coverage
        );
    }
}
