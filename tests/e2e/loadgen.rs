//! `fanout loadgen run` against a real local cluster (SciFact, 2 shards x 1
//! replica, merger process): a few seconds of open-loop load, then the JSON
//! report is read back and its counts must add up.

use std::time::Duration;

use fanout_tests::{
    ClusterOptions, MergerPlacement, ScratchDir, fanout_binary, start_cluster, workspace_root,
};
use serde_json::Value;

const RATE: f64 = 50.0;
const MEASURED_SECONDS: f64 = 2.0;

fn number(report: &Value, path: &[&str]) -> f64 {
    let mut value = report;
    for key in path {
        value = &value[*key];
    }
    value
        .as_f64()
        .unwrap_or_else(|| panic!("report field {path:?} is not a number: {value}"))
}

#[tokio::test]
async fn a_short_run_against_a_real_cluster_adds_up() {
    let binary = fanout_binary!();
    let options = ClusterOptions::scifact(2).merger(MergerPlacement::Separate);
    let cluster = start_cluster(&binary, options).await;
    let scratch = ScratchDir::new(binary.scratch_root(), "loadgen").expect("scratch folder");
    let json = scratch.path().join("report.json");
    let queries = workspace_root().join("data/beir-scifact/queries.jsonl");

    let output = binary
        .run(
            [
                "loadgen".as_ref(),
                "run".as_ref(),
                "--target".as_ref(),
                "search".as_ref(),
                "--addr".as_ref(),
                cluster.root_url().as_ref(),
                "--rate".as_ref(),
                RATE.to_string().as_ref(),
                "--duration".as_ref(),
                "2s".as_ref(),
                "--warmup".as_ref(),
                "500ms".as_ref(),
                "--queries".as_ref(),
                queries.as_os_str(),
                "--json".as_ref(),
                json.as_os_str(),
                "--no-progress".as_ref(),
            ],
            Duration::from_secs(60),
        )
        .expect("loadgen runs");
    output
        .expect_success("fanout loadgen run")
        .expect("loadgen succeeds");
    println!("{}", output.combined());

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the report is written"))
            .expect("the report is JSON");
    assert_eq!(report["schema_version"], 1);
    let count = number(&report, &["count"]);
    let ok = number(&report, &["ok"]);
    let errors = number(&report, &["errors"]);
    assert_eq!(ok + errors, count, "ok + errors = count");
    let by_code: f64 = report["status_codes"]
        .as_object()
        .expect("status_codes is an object")
        .values()
        .map(|value| value.as_f64().expect("a count"))
        .sum();
    assert_eq!(by_code, count, "the status code distribution sums to count");
    assert_eq!(errors, 0.0, "no errors against a healthy cluster: {report}");
    let expected = RATE * MEASURED_SECONDS;
    assert!(
        (count - expected).abs() <= expected * 0.2,
        "{count} requests measured, {expected} scheduled"
    );
    // SciFact has 1,109 queries: every response covers both shards.
    assert_eq!(
        number(&report, &["coverage", "responses_with_coverage"]),
        ok
    );
    assert_eq!(number(&report, &["coverage", "partial_responses"]), 0.0);

    let percentiles =
        ["p50_us", "p90_us", "p99_us", "p99_9_us"].map(|name| number(&report, &["latency", name]));
    assert!(
        percentiles[0] > 0.0,
        "latencies are measured: {percentiles:?}"
    );
    assert!(
        percentiles.windows(2).all(|pair| pair[0] <= pair[1]),
        "percentiles ascend: {percentiles:?}"
    );
    assert!(number(&report, &["latency", "slowest_us"]) >= percentiles[3]);
}
