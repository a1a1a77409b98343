//! A request that kills the leaf serving it costs one replica per shard,
//! not the shard or the cluster.
//!
//! Every leaf of a 4 x 2 cluster runs with `--fault abort-on=MARKER`: any
//! request whose payload holds the marker aborts the process at once, the
//! way a query of death would. While two clients search without pause, one
//! marked query is sent. The root must answer it with INTERNAL naming it a
//! request of death, after exactly one replica of each shard died (the one
//! it reached first; its sibling is never sent the request), and every other
//! query must keep full coverage. The same query sent again is refused
//! before any leaf sees it, and kills nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fanout_proto::search::v1::SearchRequest;
use fanout_tests::{
    ClusterOptions, MergerPlacement, TestCluster, beir, fanout_binary, search, start_cluster,
    within,
};
use tonic::Code;

const SHARDS: u32 = 4;
const MARKER: &str = "zzdeathzz";
const DEADLINE: Duration = Duration::from_secs(2);

fn request(query: &str) -> SearchRequest {
    SearchRequest {
        query: query.to_owned(),
        k: 10,
        ..Default::default()
    }
}

fn dead_leaves(cluster: &TestCluster) -> Vec<(u32, u32)> {
    let mut dead = Vec::new();
    for shard in 0..cluster.shard_count() {
        for replica in 0..cluster.replicas() {
            if cluster
                .leaf(shard, replica)
                .try_wait()
                .expect("the leaf's status is readable")
                .is_some()
            {
                dead.push((shard, replica));
            }
        }
    }
    dead
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_of_death_costs_one_replica_per_shard_and_is_then_refused() {
    let marker_fault = format!("abort-on={MARKER}");
    let mut options = ClusterOptions::scifact(SHARDS)
        .replicas(2)
        .merger(MergerPlacement::Separate)
        // Hedge early, so that a hedge would go out before the first replica
        // has died, if the root did not hold hedges back until a shard answers.
        .root_args(&["--hedge", "fixed:0.5"]);
    options.leaf_args = vec!["--fault".into(), marker_fault];
    let cluster = start_cluster(&fanout_binary!(), options).await;
    let client = cluster.search_client().await.expect("client connects");
    let (queries, _) = beir::scifact_test().expect("SciFact test queries load");
    let queries = Arc::new(queries);

    // Background searches, before, during and after the request of death.
    let stop = Arc::new(AtomicBool::new(false));
    let mut background = tokio::task::JoinSet::new();
    for task in 0..2 {
        let (client, queries, stop) = (client.clone(), Arc::clone(&queries), Arc::clone(&stop));
        background.spawn(async move {
            let (mut answered, mut problems) = (0usize, Vec::new());
            let mut n = task;
            while !stop.load(Ordering::SeqCst) {
                let query = &queries[n % queries.len()];
                n += 2;
                match search(&client, request(&query.text), DEADLINE).await {
                    Ok(response) => {
                        let coverage = response.coverage.unwrap_or_default();
                        if coverage.shards_answered != SHARDS || coverage.partial {
                            problems.push(format!("{}: coverage {coverage:?}", query.id));
                        }
                    }
                    Err(status) => problems.push(format!("{}: {status:?}", query.id)),
                }
                answered += 1;
            }
            (answered, problems)
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    let deadly = search(&client, request(&format!("stem cell {MARKER}")), DEADLINE)
        .await
        .expect_err("the request of death gets an error");
    println!(
        "the request of death: {deadly:?} after {:?}",
        started.elapsed()
    );
    assert_eq!(deadly.code(), Code::Internal, "{deadly:?}");
    assert!(
        deadly.message().starts_with("request of death:"),
        "{}",
        deadly.message()
    );

    // The replicas it reached die; give the last of them a moment to be reaped.
    let dead = within(
        Duration::from_secs(10),
        "the crashed leaves to exit",
        async {
            loop {
                let dead = dead_leaves(&cluster);
                if dead.len() >= SHARDS as usize {
                    return dead;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        },
    )
    .await
    .expect("a replica of every shard dies");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dead = dead_leaves(&cluster).max(dead);
    let mut shards_hit: Vec<u32> = dead.iter().map(|(shard, _)| *shard).collect();
    shards_hit.dedup();
    assert_eq!(
        shards_hit,
        (0..SHARDS).collect::<Vec<_>>(),
        "exactly one replica of each shard died: {dead:?}"
    );

    // Asked again, it is refused before any leaf is called.
    let refused = search(&client, request(&format!("stem cell {MARKER}")), DEADLINE)
        .await
        .expect_err("the quarantined request is refused");
    assert_eq!(refused.code(), Code::Internal, "{refused:?}");
    assert!(
        refused.message().contains("quarantined"),
        "{}",
        refused.message()
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let results = within(
        Duration::from_secs(30),
        "the background searches",
        background.join_all(),
    )
    .await
    .expect("the background searches end");
    let answered: usize = results.iter().map(|(answered, _)| answered).sum();
    let problems: Vec<String> = results
        .into_iter()
        .flat_map(|(_, problems)| problems)
        .collect();
    println!(
        "{answered} background searches, {} failed or partial; replicas lost: {dead:?}",
        problems.len()
    );
    assert!(
        answered > 20,
        "too few background searches ({answered}) to test anything"
    );
    assert!(
        problems.is_empty(),
        "background searches lost coverage: {:?}",
        &problems[..problems.len().min(10)]
    );
    assert_eq!(
        dead_leaves(&cluster),
        dead,
        "the refused request killed nothing more"
    );
}
