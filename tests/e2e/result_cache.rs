//! The root's result cache, over a real cluster: SciFact in 2 shards, one
//! leaf each, a root with `--result-cache-mb 8` polling the shards'
//! generations every 100 ms.
//!
//! - A repeated search is answered from the cache (`cached`), with hits,
//!   total and coverage identical to the uncached answer, and no leaf
//!   called; the same query with other whitespace is the same entry;
//!   `no_cache` calls the leaves again and stores nothing.
//! - A partial answer (one shard's leaf killed, `allow_partial`) is not
//!   stored: asked again, it is not answered from the cache.
//! - A new index generation on a shard (its leaf restarted on a rebuilt
//!   index, same address) is noticed by the poll: the entry stored before
//!   is not served, the answer is fetched and stored anew.
//! - The root's metrics count the hits, misses, inserts and bypasses.

use std::ffi::OsString;
use std::time::Duration;

use fanout_cluster::{ReadyIndex, Role};
use fanout_proto::search::v1::{SearchRequest, SearchResponse};
use fanout_tests::metrics::scrape;
use fanout_tests::{
    ClusterOptions, CorpusSpec, IndexFixture, MergerPlacement, ScratchDir, fanout_binary,
    leaf_stats, search, start_cluster,
};

const TIMEOUT: Duration = Duration::from_secs(10);
const QUERY: &str = "vitamin d deficiency and bone density";

fn request(query: &str) -> SearchRequest {
    SearchRequest {
        query: query.to_owned(),
        k: 10,
        fields: vec!["id".into(), "title".into()],
        ..SearchRequest::default()
    }
}

/// What must be the same in a cached and an uncached answer.
fn answer(response: &SearchResponse) -> (Vec<(String, f32, u32)>, u64, String) {
    let hits = response
        .hits
        .iter()
        .map(|hit| {
            (
                format!("{}|{:?}", hit.id, hit.fields),
                hit.score,
                hit.shard_id,
            )
        })
        .collect();
    (
        hits,
        response.total_hits,
        format!("{:?}", response.coverage),
    )
}

async fn leaf_calls(cluster: &fanout_tests::TestCluster) -> u64 {
    let mut calls = 0;
    for shard in 0..cluster.shard_count() {
        calls += leaf_stats(cluster.leaf(shard, 0).addr)
            .await
            .expect("the leaf answers Info")
            .calls;
    }
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_repeated_searches_from_the_cache_and_never_across_generations() {
    let binary = fanout_binary!();
    let options = ClusterOptions::scifact(2)
        .merger(MergerPlacement::Embedded)
        .root_args(&[
            "--result-cache-mb",
            "8",
            "--result-cache-check-ms",
            "100",
            "--metrics-listen",
            "127.0.0.1:0",
        ]);
    let cluster = start_cluster(&binary, options).await;
    let client = cluster.search_client().await.expect("the root answers");

    // A miss, then a hit that calls no leaf.
    let first = search(&client, request(QUERY), TIMEOUT).await.unwrap();
    assert!(!first.cached);
    assert!(!first.hits.is_empty());
    let calls_before = leaf_calls(&cluster).await;
    let second = search(&client, request(QUERY), TIMEOUT).await.unwrap();
    assert!(
        second.cached,
        "a repeated search is answered from the cache"
    );
    assert_eq!(answer(&second), answer(&first));
    assert!(
        second.shards.is_empty(),
        "no shard was called: {:?}",
        second.shards
    );
    let folded = search(
        &client,
        request("  vitamin d   deficiency and bone\tdensity "),
        TIMEOUT,
    )
    .await
    .unwrap();
    assert!(folded.cached, "whitespace does not make another entry");
    assert_eq!(answer(&folded), answer(&first));
    assert_eq!(
        leaf_calls(&cluster).await,
        calls_before,
        "hits call no leaf"
    );

    // no_cache: the leaves again, and the same answer.
    let bypass = search(
        &client,
        SearchRequest {
            no_cache: true,
            ..request(QUERY)
        },
        TIMEOUT,
    )
    .await
    .unwrap();
    assert!(!bypass.cached);
    assert_eq!(answer(&bypass), answer(&first));
    assert!(leaf_calls(&cluster).await > calls_before);

    // A new generation on shard 1: its leaf restarted, where it was, on a
    // rebuilt index of the same corpus.
    let scratch = ScratchDir::new(binary.scratch_root(), "rebuilt").unwrap();
    let rebuilt = IndexFixture::build(
        &binary,
        &CorpusSpec::scifact(2),
        &scratch.path().join("index"),
    )
    .expect("the index rebuilds");
    let rebuilt = ReadyIndex::open(rebuilt.dir()).unwrap();
    let shard_dir = rebuilt.dir.join(&rebuilt.manifest.shards[1].dir);
    let old_leaf = cluster.leaf(1, 0);
    let mut args: Vec<OsString> = old_leaf.restart_args();
    let at = args.iter().position(|arg| arg == "--shard-dir").unwrap();
    args[at + 1] = shard_dir.into_os_string();
    old_leaf.kill();
    let new_leaf = binary
        .start(
            Role::Leaf {
                shard_id: 1,
                replica: 0,
            },
            &args,
            scratch.path(),
            TIMEOUT,
        )
        .await
        .expect("the leaf restarts on the rebuilt index");
    // Until the poll notices, the stored answer (complete, of the old
    // generation) may still be served.
    let mut hits_while_noticing = 0.0;
    let mut noticed = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let again = search(&client, request(QUERY), TIMEOUT).await.unwrap();
        if again.cached {
            hits_while_noticing += 1.0;
        } else {
            noticed = true;
            assert_eq!(answer(&again).0.len(), answer(&first).0.len());
            break;
        }
    }
    assert!(noticed, "the entry of the old generation is still served");
    let stored_anew = search(&client, request(QUERY), TIMEOUT).await.unwrap();
    assert!(stored_anew.cached, "the new generation's answer is stored");

    // A partial answer is not stored.
    new_leaf.kill();
    let partial_request = SearchRequest {
        allow_partial: true,
        ..request("statin therapy and cholesterol")
    };
    let partial = search(&client, partial_request.clone(), TIMEOUT)
        .await
        .unwrap();
    assert!(
        partial.coverage.as_ref().unwrap().partial,
        "{:?}",
        partial.coverage
    );
    let partial_again = search(&client, partial_request, TIMEOUT).await.unwrap();
    assert!(
        !partial_again.cached,
        "a partial answer is never served from the cache"
    );

    // The counts.
    let metrics = scrape(cluster.root().metrics_addr().expect("the root's metrics"))
        .await
        .unwrap();
    let count = |name: &str| metrics.sum(name, &[]);
    assert_eq!(
        count("fanout_root_result_cache_hits_total"),
        3.0 + hits_while_noticing
    );
    assert_eq!(count("fanout_root_result_cache_bypassed_total"), 1.0);
    assert_eq!(count("fanout_root_result_cache_inserts_total"), 2.0);
    assert!(count("fanout_root_result_cache_misses_total") >= 4.0);
    assert_eq!(count("fanout_root_result_cache_entries"), 2.0);
    assert!(count("fanout_root_result_cache_bytes") > 0.0);
    assert_eq!(
        count("fanout_root_result_cache_capacity_bytes"),
        (8 << 20) as f64
    );
}
