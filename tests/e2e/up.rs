//! `fanout up`, the front door of the README: one command builds the shard
//! indexes, starts leaves, a merger and a root as child processes, answers
//! searches, and on Ctrl-C stops every process it started. A second `up` over
//! the same data folder reuses the index instead of building it again.

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use fanout_proto::search::v1::SearchRequest;
use fanout_proto::search::v1::search_client::SearchClient;
use fanout_tests::processes::{children_of, is_alive};
use fanout_tests::{ChildProcess, ScratchDir, fanout_binary, health, within, workspace_root};
use nix::sys::signal::Signal;

const SHARDS: usize = 2;
const REPLICAS: usize = 2;
const START_LIMIT: Duration = Duration::from_secs(180);
const STOP_LIMIT: Duration = Duration::from_secs(20);

fn up_args(data_dir: &Path) -> Vec<OsString> {
    let corpus = workspace_root().join("data/beir-scifact/corpus.jsonl.gz");
    let mut args: Vec<OsString> = ["up", "--corpus"].map(OsString::from).into();
    args.push(corpus.into());
    for arg in [
        "--id-field",
        "_id",
        "--shards",
        "2",
        "--replicas",
        "2",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
    ] {
        args.push(arg.into());
    }
    args.push(data_dir.into());
    args
}

/// Starts `up`, checks it answers a search with full coverage over
/// S x R leaves + merger + root, then SIGINTs it and checks every child is gone.
async fn up_round(
    binary: &fanout_tests::FanoutBinary,
    data_dir: &Path,
    log_dir: &Path,
    name: &str,
    metrics: bool,
) -> String {
    let mut args = up_args(data_dir);
    if metrics {
        args.push("--metrics".into());
    }
    let up = ChildProcess::start(binary, name, args, log_dir, START_LIMIT)
        .await
        .expect("fanout up starts and announces its endpoint");

    let channel = within(
        Duration::from_secs(10),
        "connecting to the root",
        health::connect(up.addr()),
    )
    .await
    .and_then(|connected| connected)
    .expect("the root accepts connections");
    let response = within(
        Duration::from_secs(10),
        "a search through up's root",
        SearchClient::new(channel).search(SearchRequest {
            query: "vitamin D deficiency and bone fractures".into(),
            k: 5,
            ..Default::default()
        }),
    )
    .await
    .expect("the search answers in time")
    .expect("the search succeeds")
    .into_inner();
    assert_eq!(response.hits.len(), 5, "{response:?}");
    assert!(
        response
            .hits
            .iter()
            .all(|hit| !hit.fields.get("title").is_none_or(String::is_empty)),
        "every hit has its title: {response:?}"
    );
    let coverage = response.coverage.expect("coverage is always set");
    assert_eq!(
        (coverage.shards_total, coverage.shards_answered),
        (SHARDS as u32, SHARDS as u32)
    );
    assert!(!coverage.partial);

    if metrics {
        let addr = up
            .metrics_addr()
            .expect("up --metrics announces the root's metrics endpoint");
        let scrape = fanout_tests::metrics::scrape(addr)
            .await
            .expect("the root serves /metrics");
        assert_eq!(
            scrape.sum(
                "fanout_root_requests_total",
                &[("method", "search"), ("code", "OK")]
            ),
            1.0,
            "the one search is counted"
        );
    }

    let children = children_of(up.pid());
    assert_eq!(
        children.len(),
        SHARDS * REPLICAS + 2,
        "up runs {SHARDS}x{REPLICAS} leaves, a merger and a root: {children:?}"
    );

    up.signal(Signal::SIGINT).expect("SIGINT reaches up");
    let status = up
        .wait_for_exit(STOP_LIMIT)
        .await
        .expect("up exits after SIGINT");
    assert!(status.success(), "up exits cleanly on SIGINT: {status:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let alive: Vec<u32> = children
            .iter()
            .copied()
            .filter(|pid| is_alive(*pid))
            .collect();
        if alive.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "children still running after up stopped: {alive:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::read_to_string(up.stderr_log()).unwrap_or_default()
}

#[tokio::test]
async fn up_builds_serves_stops_every_child_and_reuses_its_index() {
    let binary = fanout_binary!();
    let scratch = ScratchDir::new(binary.scratch_root(), "up").expect("scratch folder");
    let data_dir = scratch.path().join("data");

    let first = up_round(&binary, &data_dir, scratch.path(), "up-first", false).await;
    assert!(
        !first.contains("using the index in"),
        "the first up builds its index:\n{first}"
    );
    let second = up_round(&binary, &data_dir, scratch.path(), "up-second", true).await;
    assert!(
        second.contains("using the index in"),
        "the second up reuses the index:\n{second}"
    );
}
