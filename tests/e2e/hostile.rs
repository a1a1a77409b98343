//! Hostile input through a real cluster: every request a hostile caller can
//! send gets the right status with a short message, and costs no process.
//!
//! - Requests of death by nesting (1,000 unclosed `(`, 5,000 balanced ones,
//!   2,000 `title:(`, 1,000 `-(`, 10,000 `NOT`), huge queries in both modes,
//!   40 KB field names, `title:*`-style queries the schema cannot answer,
//!   100,000 repeated fields: INVALID_ARGUMENT, to the root and directly to
//!   a leaf, each answered within a second.
//! - Bytes that are not the message they claim to be (undecodable protobuf,
//!   invalid UTF-8), a 1 MB type URL: INVALID_ARGUMENT, at root and leaf.
//! - Afterwards every process still runs and an ordinary search has full
//!   coverage.
//!
//! And the merge has no single point of failure: with two merger processes,
//! killing the first under load fails no search.

use std::ffi::OsString;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut};
use fanout_proto::Any;
use fanout_proto::search::v1::search_client::SearchClient;
use fanout_proto::search::v1::{QueryMode, SearchRequest, ShardSearchRequest};
use fanout_proto::v1::leaf_client::LeafClient;
use fanout_proto::v1::root_client::RootClient;
use fanout_proto::v1::{ExecuteRequest, QueryRequest};
use fanout_tests::{
    ClusterOptions, MergerPlacement, Role, TestCluster, fanout_binary, search, start_cluster,
    within,
};
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

const SHARDS: u32 = 4;
/// Each hostile request must be answered within this (on a loaded 2-core
/// machine, a debug build).
const ANSWER_LIMIT: Duration = Duration::from_secs(2);

/// 4 shards x 2 replicas, a merger process.
fn cluster_options() -> ClusterOptions {
    ClusterOptions::scifact(SHARDS)
        .replicas(2)
        .merger(MergerPlacement::Separate)
}

fn hostile_queries() -> Vec<(&'static str, QueryMode, String)> {
    let syntax = QueryMode::Syntax;
    let natural = QueryMode::Natural;
    vec![
        (
            "1,000 unclosed (",
            syntax,
            format!("{}rust", "(".repeat(1000)),
        ),
        (
            "5,000 balanced ( )",
            syntax,
            format!("{}rust{}", "(".repeat(5000), ")".repeat(5000)),
        ),
        (
            "2,000 title:(",
            syntax,
            format!("{}rust", "title:(".repeat(2000)),
        ),
        ("1,000 -(", syntax, format!("{}rust", "-(".repeat(1000))),
        (
            "10,000 NOT",
            syntax,
            format!("{}rust", "NOT ".repeat(10_000)),
        ),
        ("40 NOT", syntax, format!("{}rust", "NOT ".repeat(40))),
        (
            "a 40 KB field name",
            syntax,
            format!("title:{}", "x".repeat(40_000)),
        ),
        (
            "a 10 KB field name",
            syntax,
            format!("{}:rust", "y".repeat(10_000)),
        ),
        ("title:*", syntax, "title:*".to_owned()),
        ("text:*", syntax, "text:*".to_owned()),
        ("nosuch:*", syntax, "nosuch:*".to_owned()),
        (
            "40,000 distinct words",
            natural,
            (0..40_000).map(|n| format!("w{n} ")).collect(),
        ),
        (
            "2,000 distinct words",
            natural,
            (0..2_000).map(|n| format!("w{n} ")).collect(),
        ),
        ("a 1 MB query", natural, "rust ".repeat(200_000)),
    ]
}

/// A codec that sends raw bytes as the message and decodes nothing: for
/// requests that are not what they claim to be.
#[derive(Debug, Clone, Default)]
struct RawBytes;

impl Codec for RawBytes {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytes;
    type Decoder = RawBytes;
    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }
    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

impl Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let bytes = buf.chunk().to_vec();
        buf.advance(bytes.len());
        Ok(Some(bytes))
    }
}

/// Sends `body` as the request of `path` on `channel`.
async fn raw_call(channel: Channel, path: &'static str, body: Vec<u8>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("the channel is ready");
    let mut request = tonic::Request::new(body);
    request.set_timeout(ANSWER_LIMIT);
    match grpc
        .unary(request, path.parse().expect("a valid path"), RawBytes)
        .await
    {
        Ok(_) => tonic::Status::ok("answered"),
        Err(status) => status,
    }
}

fn assert_invalid_argument(what: &str, status: &tonic::Status, took: Duration) {
    println!(
        "{what}: {:?} in {took:?}: {}",
        status.code(),
        fanout_proto::status::quote(status.message())
    );
    assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    assert!(
        status.message().len() <= fanout_proto::status::MAX_MESSAGE_BYTES,
        "{what}: a message of {} bytes",
        status.message().len()
    );
    assert!(took < ANSWER_LIMIT, "{what} took {took:?}");
}

fn all_alive(cluster: &TestCluster) -> Result<(), String> {
    for process in cluster.processes() {
        if let Some(status) = process.try_wait().map_err(|error| error.to_string())? {
            return Err(format!(
                "{} exited ({status}):\n{}",
                process.role.label(),
                process.log_tail(20)
            ));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_invalid_argument_and_cost_no_process() {
    let cluster = start_cluster(&fanout_binary!(), cluster_options()).await;
    let client = cluster.search_client().await.expect("client connects");
    let leaf_channel = Channel::from_shared(cluster.leaf(0, 0).url())
        .expect("a leaf URL")
        .connect()
        .await
        .expect("the leaf accepts connections");

    for (what, mode, query) in hostile_queries() {
        // Through the root.
        let request = SearchRequest {
            query: query.clone(),
            mode: mode as i32,
            ..Default::default()
        };
        let started = Instant::now();
        let status = search(&client, request, ANSWER_LIMIT)
            .await
            .expect_err("a hostile query is refused");
        assert_invalid_argument(&format!("{what} (root)"), &status, started.elapsed());

        // Straight to a leaf, which must survive direct calls too.
        let payload = fanout_proto::any::pack(&ShardSearchRequest {
            query,
            mode: mode as i32,
            k: 10,
            ..Default::default()
        });
        let mut request = tonic::Request::new(ExecuteRequest {
            payload: Some(payload),
            shard_id: 0,
            ..Default::default()
        });
        request.set_timeout(ANSWER_LIMIT);
        let started = Instant::now();
        let status = LeafClient::new(leaf_channel.clone())
            .execute(request)
            .await
            .expect_err("a hostile query is refused by the leaf");
        assert_invalid_argument(&format!("{what} (leaf)"), &status, started.elapsed());
    }

    // A search naming one field 100,000 times, and a 40 KB unknown field.
    for (what, fields) in [
        ("100,000 repeated fields", vec!["title".to_owned(); 100_000]),
        ("a 40 KB field", vec!["f".repeat(40_000)]),
    ] {
        let request = SearchRequest {
            query: "cells".into(),
            fields,
            ..Default::default()
        };
        let started = Instant::now();
        match search(&client, request, ANSWER_LIMIT).await {
            // Repeats of a known field are merged into one.
            Ok(response) => assert!(what.contains("repeated"), "{what}: {response:?}"),
            Err(status) => assert_invalid_argument(what, &status, started.elapsed()),
        }
    }

    // Bytes that are not the message they claim to be.
    let root_channel = cluster.root_channel().await.expect("root channel");
    let not_utf8 = vec![0x0a, 0x03, 0xff, 0xfe, 0xfd];
    let not_protobuf = vec![0xff; 64];
    for (what, channel, path, body) in [
        (
            "invalid UTF-8 (root)",
            root_channel.clone(),
            "/fanout.search.v1.Search/Search",
            not_utf8.clone(),
        ),
        (
            "undecodable bytes (root)",
            root_channel.clone(),
            "/fanout.search.v1.Search/Search",
            not_protobuf.clone(),
        ),
        (
            "undecodable bytes (root query)",
            root_channel.clone(),
            "/fanout.v1.Root/Query",
            not_protobuf.clone(),
        ),
        (
            "invalid UTF-8 (leaf)",
            leaf_channel.clone(),
            "/fanout.v1.Leaf/Execute",
            vec![0x22, 0x03, 0xff, 0xfe, 0xfd],
        ),
        (
            "undecodable bytes (leaf)",
            leaf_channel.clone(),
            "/fanout.v1.Leaf/Execute",
            not_protobuf.clone(),
        ),
    ] {
        let started = Instant::now();
        let status = raw_call(channel, path, body).await;
        assert_invalid_argument(what, &status, started.elapsed());
    }

    // A 1 MB type URL, to the root's generic API and to a leaf.
    let huge_type = Any {
        type_url: format!("type.googleapis.com/{}", "x".repeat(1 << 20)),
        value: Vec::new(),
    };
    let mut request = tonic::Request::new(QueryRequest {
        payload: Some(huge_type.clone()),
        ..Default::default()
    });
    request.set_timeout(ANSWER_LIMIT);
    let started = Instant::now();
    let status = RootClient::new(root_channel.clone())
        .query(request)
        .await
        .expect_err("a 1 MB type URL is refused");
    assert_invalid_argument("a 1 MB type URL (root query)", &status, started.elapsed());
    let mut request = tonic::Request::new(ExecuteRequest {
        payload: Some(huge_type),
        shard_id: 0,
        ..Default::default()
    });
    request.set_timeout(ANSWER_LIMIT);
    let started = Instant::now();
    let status = LeafClient::new(leaf_channel.clone())
        .execute(request)
        .await
        .expect_err("a 1 MB type URL is refused by the leaf");
    assert_invalid_argument("a 1 MB type URL (leaf)", &status, started.elapsed());

    all_alive(&cluster).expect("no process died");
    let request = SearchRequest {
        query: "stem cell differentiation".into(),
        ..Default::default()
    };
    let response = search(&client, request, ANSWER_LIMIT)
        .await
        .expect("an ordinary search answers");
    let coverage = response.coverage.unwrap_or_default();
    assert_eq!(coverage.shards_answered, SHARDS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_merger_under_load_fails_no_search_when_there_is_another() {
    let binary = fanout_binary!();
    let logs =
        fanout_tests::ScratchDir::new(binary.scratch_root(), "second-merger").expect("scratch");
    let second = binary
        .start(
            Role::Merger,
            &["--listen", "127.0.0.1:0"].map(OsString::from),
            logs.path(),
            Duration::from_secs(30),
        )
        .await
        .expect("a second merger starts");
    let second_url = second.url();
    let options = cluster_options().root_args(&["--merger", &second_url]);
    let cluster = start_cluster(&binary, options).await;
    let client: SearchClient<Channel> = cluster.search_client().await.expect("client connects");

    let stop = Arc::new(AtomicBool::new(false));
    let mut searching = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let (client, stop) = (client.clone(), Arc::clone(&stop));
        searching.spawn(async move {
            let (mut sent, mut failures) = (0usize, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                let request = SearchRequest {
                    query: "vitamin D deficiency".into(),
                    ..Default::default()
                };
                sent += 1;
                if let Err(status) = search(&client, request, Duration::from_secs(2)).await {
                    failures.push(format!("{status:?}"));
                }
            }
            (sent, failures)
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.merger().expect("the cluster's merger").kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::SeqCst);
    let results = within(
        Duration::from_secs(30),
        "the searches",
        searching.join_all(),
    )
    .await
    .expect("the searches end");
    let sent: usize = results.iter().map(|(sent, _)| sent).sum();
    let failures: Vec<String> = results
        .into_iter()
        .flat_map(|(_, failures)| failures)
        .collect();
    println!(
        "{sent} searches while the first merger died, {} failed",
        failures.len()
    );
    assert!(sent > 20, "too few searches ({sent})");
    assert!(failures.is_empty(), "{failures:?}");
    assert!(
        second.try_wait().expect("status").is_none(),
        "the second merger still runs"
    );
}
