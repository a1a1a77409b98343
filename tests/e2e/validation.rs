//! What a caller gets for mistakes, and what operators get from the process:
//!
//! - invalid requests (empty query, k out of range) are INVALID_ARGUMENT;
//! - a deadline too short to do anything is DEADLINE_EXCEEDED, never
//!   CANCELLED (tonic's own mapping of an expired timeout);
//! - `fanout index` names the line of a bad input line, and skips it only when
//!   told to, saying so;
//! - bad flags exit 64;
//! - a leaf told to stop reports NOT_SERVING while it drains;
//! - reflection lists exactly the services each server serves.

use std::error::Error;
use std::ffi::OsString;
use std::time::{Duration, Instant};

use fanout_proto::search::v1::SearchRequest;
use fanout_tests::{
    ClusterOptions, IndexFixture, LEAF_SERVICE_NAME, MergerPlacement, Role, ScratchDir,
    fanout_binary, health, search, start_cluster, wait_until_serving, within,
};
use nix::sys::signal::Signal;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

const SEARCH_LIMIT: Duration = Duration::from_secs(10);
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// 4 shards, the root's embedded merge.
fn cluster_options() -> ClusterOptions {
    ClusterOptions::scifact(4).merger(MergerPlacement::Embedded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_are_invalid_argument() {
    let cluster = start_cluster(&fanout_binary!(), cluster_options()).await;
    let client = cluster.search_client().await.expect("client connects");
    let query = |query: &str, k: u32| SearchRequest {
        query: query.into(),
        k,
        ..Default::default()
    };

    let status = search(&client, query("", 10), SEARCH_LIMIT)
        .await
        .expect_err("an empty query is rejected");
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "empty query: {status:?}"
    );

    let status = search(&client, query("cancer", 10_001), SEARCH_LIMIT)
        .await
        .expect_err("k = 10001 is rejected");
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "k = 10001: {status:?}"
    );

    // The largest k is allowed: every match comes back, up to 10000.
    let largest = search(&client, query("cancer cells", 10_000), SEARCH_LIMIT)
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
    let cluster = start_cluster(&fanout_binary!(), cluster_options()).await;
    let client = cluster.search_client().await.expect("client connects");
    let request = SearchRequest {
        query: "stem cells".into(),
        k: 10,
        ..Default::default()
    };

    // A deadline in the request body: no client-side timer races the server.
    let in_body = SearchRequest {
        timeout_millis: 1,
        ..request.clone()
    };
    let status = search(&client, in_body, SEARCH_LIMIT)
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
        let result = within(
            SEARCH_LIMIT,
            "a tiny-deadline search",
            search(&client, request.clone(), timeout),
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
    let index_into = |out: &str, shards: u32, extra: &[&str]| {
        let mut args = vec![
            "index".to_owned(),
            "--input".to_owned(),
            input.display().to_string(),
            "--shards".to_owned(),
            shards.to_string(),
            "--out".to_owned(),
            scratch.path().join(out).display().to_string(),
            "--no-progress".to_owned(),
        ];
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        binary.run(&args, RUN_LIMIT).expect("fanout index runs")
    };
    let index =
        |out: &str, skip: bool| index_into(out, 2, if skip { &["--skip-bad-lines"] } else { &[] });

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

    // An index is never overwritten; --if-missing keeps one of the same
    // shard count (a one-shot index job that runs on every start).
    let again = index_into("lenient", 2, &["--skip-bad-lines"]);
    assert!(
        !again.status.success(),
        "a build over an index must fail:\n{}",
        again.combined()
    );
    let kept = index_into("lenient", 2, &["--skip-bad-lines", "--if-missing"]);
    kept.expect_success("fanout index --if-missing")
        .expect("an existing index is kept");
    assert!(kept.combined().contains("kept"), "{}", kept.combined());
    let reshaped = index_into("lenient", 3, &["--skip-bad-lines", "--if-missing"]);
    assert!(
        !reshaped.status.success() && reshaped.combined().contains("not 3"),
        "an index of another shard count is not taken for the one asked:\n{}",
        reshaped.combined()
    );
    let unchanged = IndexFixture::open(&scratch.path().join("lenient")).expect("index.json");
    assert_eq!(unchanged.shard_count(), 2, "the index was left as it was");
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
    let args: Vec<OsString> = vec![
        "--shard-dir".into(),
        index.shard_dir(0).into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--drain-delay-ms".into(),
        "500".into(),
    ];
    let leaf_role = Role::Leaf {
        shard_id: 0,
        replica: 0,
    };
    let leaf = binary
        .start(leaf_role, &args, logs.path(), Duration::from_secs(60))
        .await
        .expect("leaf starts");
    let serving_by = tokio::time::Instant::now() + Duration::from_secs(30);
    wait_until_serving(leaf.addr, LEAF_SERVICE_NAME, serving_by)
        .await
        .expect("leaf serves");
    let channel = health::connect(leaf.addr).await.expect("connects");
    // `fanout health`, the probe of container health checks, agrees.
    let probe = |service: &str| {
        let addr = leaf.addr.to_string();
        let args = [
            "health",
            addr.as_str(),
            "--service",
            service,
            "--timeout-ms",
            "2000",
        ];
        binary.run(args, RUN_LIMIT).expect("fanout health runs")
    };
    let serving = probe("fanout.v1.Leaf");
    assert_eq!(serving.status.code(), Some(0), "{}", serving.combined());
    assert!(serving.stdout.contains("SERVING"), "{}", serving.combined());
    let unknown = probe("no.such.Service");
    assert_eq!(unknown.status.code(), Some(1), "{}", unknown.combined());

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
    let draining = probe("");
    assert_eq!(draining.status.code(), Some(1), "{}", draining.combined());
    if signalled.elapsed() < Duration::from_millis(450) {
        // Still within the drain delay: the leaf itself said so.
        assert!(
            draining.stderr.contains("NOT_SERVING"),
            "{}",
            draining.combined()
        );
    }
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
    let gone = probe("");
    assert_eq!(
        gone.status.code(),
        Some(1),
        "nothing listens: {}",
        gone.combined()
    );
    assert!(
        exited_after >= Duration::from_millis(500),
        "the leaf exited after {exited_after:?}, before its 500 ms drain delay"
    );
}

/// The services a server's reflection (v1) lists.
async fn reflected_services(addr: std::net::SocketAddr) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let channel = health::connect(addr).await.expect("connects");
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = within(
        SEARCH_LIMIT,
        "reflection",
        client.server_reflection_info(futures::stream::iter([request])),
    )
    .await
    .expect("reflection answers in time")
    .expect("reflection answers")
    .into_inner();
    let response = within(SEARCH_LIMIT, "the service list", responses.message())
        .await
        .expect("a reflection response in time")
        .expect("a reflection response")
        .expect("a list");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("not a service list: {response:?}");
    };
    let mut names: Vec<String> = list
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_exactly_the_services_each_server_serves() {
    let options = ClusterOptions::scifact(2).merger(MergerPlacement::Separate);
    let cluster = start_cluster(&fanout_binary!(), options).await;
    let expected = |served: &[&str]| {
        let mut names: Vec<String> = served
            .iter()
            .chain(fanout_runtime::serve::ALWAYS_SERVED.iter())
            .map(|name| (*name).to_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        reflected_services(cluster.root().addr).await,
        expected(&["fanout.search.v1.Search", "fanout.v1.Root"]),
        "the root"
    );
    assert_eq!(
        reflected_services(cluster.leaf(0, 0).addr).await,
        expected(&["fanout.v1.Leaf"]),
        "a leaf"
    );
    let merger = cluster.merger().expect("a merger process");
    assert_eq!(
        reflected_services(merger.addr).await,
        expected(&["fanout.v1.Merger"]),
        "the merger"
    );

    // --no-reflection: none at all.
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    let binary = fanout_binary!();
    let logs = ScratchDir::new(binary.scratch_root(), "no-reflection").expect("scratch folder");
    let quiet = binary
        .start(
            Role::Merger,
            &["--listen", "127.0.0.1:0", "--no-reflection"].map(OsString::from),
            logs.path(),
            RUN_LIMIT,
        )
        .await
        .expect("a merger starts");
    let channel = health::connect(quiet.addr).await.expect("connects");
    let status = ServerReflectionClient::new(channel)
        .server_reflection_info(futures::stream::iter(Vec::new()))
        .await
        .expect_err("no reflection");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
}
