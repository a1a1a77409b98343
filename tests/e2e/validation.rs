//! What a caller gets for mistakes, and what operators get from the process:
//!
//! - invalid requests (empty query, k out of range) are INVALID_ARGUMENT;
//! - a deadline too short to do anything is DEADLINE_EXCEEDED, never
//!   CANCELLED (tonic's own mapping of an expired timeout);
//! - `fanout index` names the line of a bad input line, and skips it only when
//!   told to, saying so;
//! - bad flags exit 64;
//! - a leaf told to stop reports NOT_SERVING while it drains.

use std::error::Error;
use std::time::{Duration, Instant};

use fanout_proto::search::v1::SearchRequest;
use fanout_proto::search::v1::search_client::SearchClient;
use fanout_tests::{
    ChildProcess, Cluster, ClusterOptions, IndexFixture, MergerPlacement, ScratchDir,
    fanout_binary, health, within,
};
use nix::sys::signal::Signal;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

const SEARCH_LIMIT: Duration = Duration::from_secs(10);
const RUN_LIMIT: Duration = Duration::from_secs(60);

async fn start_cluster() -> Cluster {
    let binary = fanout_binary!();
    let index = IndexFixture::scifact(&binary, 4).expect("SciFact in 4 shards builds");
    let options = ClusterOptions::new(index.dir()).merger(MergerPlacement::Embedded);
    Cluster::start(&binary, options)
        .await
        .expect("cluster starts")
}

async fn search(
    mut client: SearchClient<Channel>,
    request: SearchRequest,
) -> Result<fanout_proto::search::v1::SearchResponse, tonic::Status> {
    let mut request = tonic::Request::new(request);
    request.set_timeout(SEARCH_LIMIT);
    Ok(client.search(request).await?.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_are_invalid_argument() {
    let cluster = start_cluster().await;
    let client = cluster.search_client().await.expect("client connects");
    let query = |query: &str, k: u32| SearchRequest {
        query: query.into(),
        k,
        ..Default::default()
    };

    let status = search(client.clone(), query("", 10))
        .await
        .expect_err("an empty query is rejected");
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "empty query: {status:?}"
    );

    let status = search(client.clone(), query("cancer", 10_001))
        .await
        .expect_err("k = 10001 is rejected");
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "k = 10001: {status:?}"
    );

    // The largest k is allowed: every match comes back, up to 10000.
    let largest = search(client.clone(), query("cancer cells", 10_000))
        .await
        .expect("k = 10000 is allowed");
    assert!(
        largest.total_hits > 10,
        "cancer cells matches only {} documents",
        largest.total_hits
    );
    assert_eq!(largest.hits.len() as u64, largest.total_hits.min(10_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_deadlines_are_deadline_exceeded_not_cancelled() {
    let cluster = start_cluster().await;
    let client = cluster.search_client().await.expect("client connects");
    let request = SearchRequest {
        query: "stem cells".into(),
        k: 10,
        ..Default::default()
    };

    // A deadline in the request body: no client-side timer races the server.
    let mut in_body = tonic::Request::new(SearchRequest {
        timeout_millis: 1,
        ..request.clone()
    });
    in_body.set_timeout(SEARCH_LIMIT);
    let status = client
        .clone()
        .search(in_body)
        .await
        .expect_err("timeout_millis = 1 cannot be met");
    assert_eq!(
        status.code(),
        Code::DeadlineExceeded,
        "timeout_millis = 1: {status:?}"
    );

    // A tiny grpc-timeout. Two timers race the root's own answer, and neither
    // is the root's to stop:
    // - tonic's client enforces the timeout too and reports its own expiry as
    //   CANCELLED with the TimeoutExpired error as source;
    // - tonic's server wraps every handler in the same timeout and answers
    //   CANCELLED "Timeout expired" if the handler has not answered by then
    //   (on a loaded machine the handler may not even have been scheduled).
    // Such attempts say nothing about the root and are tried again. Every
    // answer that came from the root's handler must be DEADLINE_EXCEEDED, and
    // there must be such answers.
    let mut handler_answers = Vec::new();
    let mut client_expiries = 0;
    let mut server_timer_expiries = 0;
    for timeout in [1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 4].map(Duration::from_millis) {
        let mut tiny = tonic::Request::new(request.clone());
        tiny.set_timeout(timeout);
        let result = within(
            SEARCH_LIMIT,
            "a tiny-deadline search",
            client.clone().search(tiny),
        )
        .await
        .expect("the search ends");
        let status = result.expect_err("a few milliseconds cannot be met");
        let expired_in_client = status
            .source()
            .is_some_and(|source| source.downcast_ref::<tonic::TimeoutExpired>().is_some());
        let expired_in_server_framework =
            status.code() == Code::Cancelled && status.message() == "Timeout expired";
        if expired_in_client {
            client_expiries += 1;
        } else if expired_in_server_framework {
            server_timer_expiries += 1;
        } else {
            handler_answers.push((timeout, status.code(), status.message().to_owned()));
        }
    }
    println!(
        "tiny grpc-timeout: {client_expiries} client-side expiries, {server_timer_expiries} \
         expiries of tonic's server timer, root answers {handler_answers:?}"
    );
    assert!(
        !handler_answers.is_empty(),
        "a timer expired first on every attempt; no answer of the root to check"
    );
    for (timeout, code, message) in &handler_answers {
        assert_eq!(
            *code,
            Code::DeadlineExceeded,
            "grpc-timeout {timeout:?}: the root answered {code:?} {message:?}"
        );
    }
}

#[test]
fn index_names_the_bad_line_and_skips_it_only_when_told() {
    let binary = fanout_binary!();
    let scratch = ScratchDir::new(binary.scratch_root(), "bad-lines").expect("scratch folder");
    let input = scratch.path().join("corpus.jsonl");
    std::fs::write(
        &input,
        concat!(
            "{\"id\": \"a\", \"title\": \"first\", \"text\": \"one\"}\n",
            "{\"id\": \"b\", \"title\": \"second\", \"text\": \"two\"}\n",
            "{\"id\": \"c\", \"title\": \"third\", \n",
            "{\"id\": \"d\", \"title\": \"fourth\", \"text\": \"four\"}\n",
        ),
    )
    .expect("corpus written");
    let index = |out: &str, skip: bool| {
        let mut args = vec![
            "index".to_owned(),
            "--input".to_owned(),
            input.display().to_string(),
            "--shards".to_owned(),
            "2".to_owned(),
            "--out".to_owned(),
            scratch.path().join(out).display().to_string(),
            "--no-progress".to_owned(),
        ];
        if skip {
            args.push("--skip-bad-lines".to_owned());
        }
        binary.run(&args, RUN_LIMIT).expect("fanout index runs")
    };

    let failed = index("strict", false);
    assert!(
        !failed.status.success(),
        "a bad line must fail the build:\n{}",
        failed.combined()
    );
    assert!(
        failed.combined().contains("line 3"),
        "the failure does not name line 3:\n{}",
        failed.combined()
    );
    assert!(
        !scratch.path().join("strict/index.json").exists(),
        "a failed build left a finished-looking index"
    );

    let skipped = index("lenient", true);
    skipped
        .expect_success("fanout index --skip-bad-lines")
        .expect("skipping succeeds");
    assert!(
        skipped.combined().contains("line 3"),
        "the skipped line is not reported:\n{}",
        skipped.combined()
    );
    let built = IndexFixture::open(&scratch.path().join("lenient")).expect("index.json");
    assert_eq!(built.doc_count(), 3, "three good lines, three documents");
    assert_eq!(built.shard_count(), 2);
}

#[test]
fn bad_flags_exit_64() {
    let binary = fanout_binary!();
    for args in [
        vec!["leaf", "--no-such-flag"],
        vec![
            "root",
            "--listen",
            "127.0.0.1:0",
            "--shard",
            "not-a-shard-flag",
        ],
        vec!["search", "cancer", "-k", "many"],
    ] {
        let output = binary.run(&args, RUN_LIMIT).expect("fanout runs");
        assert_eq!(
            output.status.code(),
            Some(64),
            "fanout {args:?}:\n{}",
            output.combined()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_leaf_reports_not_serving_before_it_exits() {
    let binary = fanout_binary!();
    let index = IndexFixture::scifact(&binary, 4).expect("SciFact in 4 shards builds");
    let logs = ScratchDir::new(binary.scratch_root(), "drain").expect("scratch folder");
    let args = vec![
        "leaf".into(),
        "--shard-dir".into(),
        index.shard_dir(0).into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--drain-delay-ms".into(),
        "500".into(),
    ];
    let leaf = ChildProcess::start(&binary, "leaf", args, logs.path(), Duration::from_secs(60))
        .await
        .expect("leaf starts");
    health::wait_until_serving(leaf.addr(), Duration::from_secs(30))
        .await
        .expect("leaf serves");
    let channel = health::connect(leaf.addr()).await.expect("connects");

    let signalled = Instant::now();
    leaf.signal(Signal::SIGTERM).expect("SIGTERM sent");
    health::wait_for_status(
        channel.clone(),
        "",
        ServingStatus::NotServing,
        Duration::from_millis(450),
    )
    .await
    .expect("NOT_SERVING during the drain delay");
    let not_serving_after = signalled.elapsed();
    let service_status = health::health_status(channel, "fanout.v1.Leaf").await;
    let status = leaf
        .wait_for_exit(Duration::from_secs(20))
        .await
        .expect("the leaf exits after draining");
    let exited_after = signalled.elapsed();
    println!("NOT_SERVING after {not_serving_after:?}, exited after {exited_after:?} ({status})");
    assert_eq!(
        service_status.expect("the leaf still answers health checks while draining"),
        ServingStatus::NotServing,
        "fanout.v1.Leaf is still SERVING while draining"
    );
    assert!(status.success(), "a drained leaf exits 0, not {status}");
    assert!(
        exited_after >= Duration::from_millis(500),
        "the leaf exited after {exited_after:?}, before its 500 ms drain delay"
    );
}
