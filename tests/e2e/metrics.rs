//! The `/metrics` endpoints of a real cluster, scraped over real sockets.
//!
//! - A 2-shard x 2-replica cluster whose shard-0 leaves straggle half the
//!   time (`--fault straggler=0.5x20`), with a fixed 3 ms hedge delay, so
//!   that hedges happen: after a bounded run of searches the root's
//!   lifetime counts equal the sums of the responses' `ShardTiming`s
//!   (attempts, hedges, hedges won and suppressed, retries), every search is
//!   counted as OK, and what the leaves say they received lies between the
//!   root's primary calls and all the calls it sent; each leaf's metrics
//!   agree with its own `fanout-leaf-stats` metadata.
//! - A bad `--metrics-listen` exits 64 naming the flag.

use std::time::Duration;

use fanout_leaf::service::{LEAF_STATS_METADATA, LeafStats};
use fanout_proto::search::v1::{SearchRequest, SearchResponse};
use fanout_proto::v1::InfoRequest;
use fanout_proto::v1::leaf_client::LeafClient;
use fanout_tests::metrics::{Scrape, get, scrape};
use fanout_tests::{
    ClusterOptions, ClusterProcess, MergerPlacement, beir, fanout_binary, health, search,
    start_cluster, within,
};

const SHARDS: u32 = 2;
const REPLICAS: u32 = 2;
const SEARCHES: usize = 60;
const METRICS_FLAGS: [&str; 2] = ["--metrics-listen", "127.0.0.1:0"];

/// What the responses said, summed over every search and shard.
#[derive(Debug, Default)]
struct TimingSums {
    attempts: u64,
    hedges: u64,
    hedges_won: u64,
    hedges_suppressed: u64,
    retries: u64,
}

impl TimingSums {
    fn add(&mut self, response: &SearchResponse) {
        for timing in &response.shards {
            self.attempts += u64::from(timing.attempts);
            self.hedges += u64::from(timing.hedges);
            self.hedges_won += u64::from(timing.hedges_won);
            self.hedges_suppressed += u64::from(timing.hedges_suppressed);
            self.retries += u64::from(timing.retries);
        }
    }
}

/// 2 x 2, the shard-0 leaves straggling, a metrics endpoint on the root and
/// on every leaf.
fn cluster_options() -> ClusterOptions {
    let straggle = ["--fault", "latency=1ms", "--fault", "straggler=0.5x20"];
    let mut options = ClusterOptions::scifact(SHARDS)
        .replicas(REPLICAS)
        .merger(MergerPlacement::Embedded)
        .root_args(&["--hedge", "fixed:3"])
        .root_args(&METRICS_FLAGS)
        .leaf_args_for(0, 0, &straggle)
        .leaf_args_for(0, 0, &["--fault", "seed=1"])
        .leaf_args_for(0, 1, &straggle)
        .leaf_args_for(0, 1, &["--fault", "seed=2"]);
    options.leaf_args = METRICS_FLAGS
        .iter()
        .map(|flag| (*flag).to_owned())
        .collect();
    options
}

async fn scrape_of(process: &ClusterProcess) -> Scrape {
    let addr = process
        .metrics_addr()
        .unwrap_or_else(|| panic!("{} announced no metrics address", process.role.label()));
    scrape(addr)
        .await
        .unwrap_or_else(|error| panic!("scraping {}: {error:#}", process.role.label()))
}

/// The leaf's own counts, from an Info call's metadata.
async fn leaf_stats(process: &ClusterProcess) -> LeafStats {
    let channel = health::connect(process.addr).await.expect("leaf connects");
    let response = within(
        Duration::from_secs(10),
        "Leaf/Info",
        LeafClient::new(channel).info(InfoRequest {}),
    )
    .await
    .expect("Info answers in time")
    .expect("Info succeeds");
    let header = response
        .metadata()
        .get(LEAF_STATS_METADATA)
        .and_then(|value| value.to_str().ok())
        .expect("Info carries the leaf stats");
    LeafStats::from_header(header).expect("the leaf stats parse")
}

/// Scrapes `leaf` until no Execute call is in flight (losing hedges end a
/// moment after the search that dropped them), at most a few seconds.
async fn settled_scrape(leaf: &ClusterProcess) -> Scrape {
    let mut scrape = scrape_of(leaf).await;
    for _ in 0..50 {
        if scrape.sum("fanout_leaf_calls_in_flight", &[]) == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        scrape = scrape_of(leaf).await;
    }
    scrape
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_and_leaf_metrics_add_up_to_what_the_responses_say() {
    let cluster = start_cluster(&fanout_binary!(), cluster_options()).await;
    let client = cluster.search_client().await.expect("client connects");
    let queries = beir::scifact_test().expect("SciFact test queries load").0;

    let mut sums = TimingSums::default();
    for query in queries.iter().take(SEARCHES) {
        let request = SearchRequest {
            query: query.text.clone(),
            k: 10,
            ..Default::default()
        };
        let response = within(
            Duration::from_secs(10),
            "a search",
            search(&client, request, Duration::from_secs(5)),
        )
        .await
        .expect("the search answers in time")
        .unwrap_or_else(|status| panic!("query {} failed: {status:?}", query.id));
        let coverage = response.coverage.clone().unwrap_or_default();
        assert_eq!(
            coverage.shards_answered, SHARDS,
            "query {}: {coverage:?}",
            query.id
        );
        sums.add(&response);
    }
    let searches = SEARCHES.min(queries.len()) as f64;
    println!("responses: {sums:?}");

    let root = scrape_of(cluster.root()).await;
    assert_eq!(root.types["fanout_root_shard_attempts_total"], "counter");
    assert_eq!(
        root.types["fanout_root_request_duration_seconds"],
        "histogram"
    );
    let fan_out = [("phase", "fanout")];
    let root_sum = |name: &str| root.sum(name, &fan_out);
    assert_eq!(
        root.sum(
            "fanout_root_requests_total",
            &[("method", "search"), ("code", "OK")]
        ),
        searches
    );
    assert_eq!(
        root.sum("fanout_root_requests_total", &[]),
        searches,
        "no search counted under another code"
    );
    assert_eq!(
        root.sum(
            "fanout_root_request_duration_seconds_count",
            &[("method", "search")]
        ),
        searches
    );
    assert_eq!(
        root_sum("fanout_root_shard_attempts_total"),
        sums.attempts as f64
    );
    assert_eq!(
        root_sum("fanout_root_shard_hedges_total"),
        sums.hedges as f64
    );
    assert_eq!(
        root_sum("fanout_root_shard_hedges_won_total"),
        sums.hedges_won as f64
    );
    assert_eq!(
        root_sum("fanout_root_shard_hedges_suppressed_total"),
        sums.hedges_suppressed as f64
    );
    assert_eq!(
        root_sum("fanout_root_shard_retries_total"),
        sums.retries as f64
    );
    assert!(
        sums.hedges > 0,
        "the straggling shard-0 leaves caused no hedge: {sums:?}"
    );
    for shard in 0..SHARDS {
        let shard = shard.to_string();
        assert_eq!(
            root.sum(
                "fanout_root_shard_attempts_total",
                &[("shard", &shard), ("phase", "fanout"), ("kind", "primary")]
            ),
            searches,
            "one primary call per shard per search"
        );
        // Every search got every shard's answer, in time: no coverage lost.
        let of_shard = [("shard", shard.as_str()), ("phase", "fanout")];
        let outcome = |outcome: &str| {
            root.sum(
                "fanout_root_shard_outcomes_total",
                &[of_shard[0], of_shard[1], ("outcome", outcome)],
            )
        };
        assert_eq!(outcome("answered"), searches, "shard {shard} answered");
        assert_eq!(outcome("failed") + outcome("timed_out"), 0.0);
        assert_eq!(
            root.sum("fanout_root_shard_duration_seconds_count", &of_shard),
            searches,
            "shard {shard}: one latency per answered call"
        );
    }
    assert_eq!(root.sum("fanout_root_partial_answers_total", &[]), 0.0);
    assert_eq!(
        root.count("fanout_root_replica_outstanding_calls", &[]),
        (SHARDS * REPLICAS) as usize
    );
    assert_eq!(root.count("fanout_root_hedge_budget_tokens", &[]), 1);

    for shard in 0..SHARDS {
        let label = shard.to_string();
        let root_primaries = root.sum(
            "fanout_root_shard_attempts_total",
            &[("shard", &label), ("kind", "primary")],
        );
        let root_attempts = root.sum("fanout_root_shard_attempts_total", &[("shard", &label)]);
        let mut received = 0.0;
        for replica in 0..REPLICAS {
            let leaf = cluster.leaf(shard, replica);
            let metrics = settled_scrape(leaf).await;
            let stats = leaf_stats(leaf).await;
            let execute = metrics.sum("fanout_leaf_calls_total", &[("method", "execute")]);
            println!(
                "{}: {execute} execute calls, {stats:?}, faults {}",
                leaf.role.label(),
                metrics.sum("fanout_leaf_faults_injected_total", &[])
            );
            assert_eq!(execute, stats.calls as f64, "{}: calls", leaf.role.label());
            assert_eq!(
                metrics.sum("fanout_leaf_calls_total", &[("code", "CANCELLED")]),
                stats.cancelled as f64,
                "{}: cancelled calls are the dropped ones",
                leaf.role.label()
            );
            assert_eq!(
                metrics.sum("fanout_leaf_cancelled_calls_total", &[]),
                stats.cancelled as f64
            );
            for (outcome, count) in [
                ("skipped", stats.work_skipped),
                ("abandoned", stats.work_abandoned),
                ("completed", stats.work_completed),
            ] {
                assert_eq!(
                    metrics.sum("fanout_leaf_work_total", &[("outcome", outcome)]),
                    count as f64,
                    "{}: work {outcome}",
                    leaf.role.label()
                );
            }
            let info = [("method", "info"), ("code", "OK")];
            let info_after = scrape_of(leaf).await.sum("fanout_leaf_calls_total", &info);
            assert_eq!(
                info_after,
                metrics.sum("fanout_leaf_calls_total", &info) + 1.0,
                "{}: the test's own Info call is counted",
                leaf.role.label()
            );
            let faults = metrics.count("fanout_leaf_faults_injected_total", &[]);
            if shard == 0 {
                assert!(
                    metrics.sum(
                        "fanout_leaf_faults_injected_total",
                        &[("kind", "straggler")]
                    ) > 0.0,
                    "{}: no straggler injected",
                    leaf.role.label()
                );
            } else {
                assert_eq!(
                    faults,
                    0,
                    "{}: faults family without --fault",
                    leaf.role.label()
                );
            }
            received += execute;
        }
        println!(
            "shard {shard}: root sent {root_attempts} ({root_primaries} primary), leaves received {received}"
        );
        assert!(
            received >= root_primaries && received <= root_attempts,
            "shard {shard}: leaves received {received}, the root sent {root_primaries} primary \
             calls and {root_attempts} in all"
        );
    }

    let missing = get(
        cluster.root().metrics_addr().expect("root metrics"),
        "/nope",
    )
    .await
    .expect("the endpoint answers");
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
}

#[test]
fn a_bad_metrics_listen_address_exits_64_naming_the_flag() {
    let binary = fanout_binary!();
    for args in [
        vec![
            "root",
            "--shard",
            "0=127.0.0.1:1",
            "--metrics-listen",
            "localhost",
        ],
        vec![
            "leaf",
            "--shard-dir",
            ".",
            "--metrics-listen",
            "127.0.0.1:port",
        ],
    ] {
        let output = binary
            .run(&args, Duration::from_secs(30))
            .expect("fanout runs");
        assert_eq!(
            output.status.code(),
            Some(64),
            "fanout {args:?}:\n{}",
            output.combined()
        );
        assert!(
            output.stderr.contains("--metrics-listen"),
            "fanout {args:?}:\n{}",
            output.combined()
        );
    }
}
