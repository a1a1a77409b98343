//! Mixed clusters of local processes: fanout's Rust root with the Python
//! leaves and mergers of `python/fanout_py` (written against the .proto files
//! alone), all real processes on loopback.
//!
//! - The Python top-k merger as the root's `--merger`, over Rust leaves
//!   (SciFact, 2 shards): every hit, score and shard, the total and the
//!   coverage are those of the same leaves merged by `fanout merger` (whose
//!   scores are exact global BM25, `exactness.rs`); once
//!   the Python merger is SIGKILLed its root fails, so its merges did go
//!   through it.
//! - The root over Python SQLite leaves (SciFact, 2 shards x 2 replicas) and
//!   the Python merger: full coverage, phase two's stored fields; then one
//!   leaf replica SIGKILLed under an open-loop load: no query fails, and the
//!   surviving replica serves its shard.
//! - The non-search workload through the generic `fanout.v1.Root/Query`:
//!   Python k-NN leaves and merger; the neighbours equal a brute force over
//!   the same vectors, generated here as `fanout_py/knn_data.py` describes.
//! - The guides' examples (`python/examples`, as `docs/write-your-own-*.md`
//!   start them) pass `fanout conformance leaf` (the drain on SIGTERM
//!   included) and `fanout conformance merger --workload knn`.
//! - The Python suite itself (`python -m unittest discover -s python/tests
//!   -t python`), with this build's `fanout` binary for its tests behind the
//!   Rust root, so that `cargo test --workspace` runs it.
//!
//! The interpreter is `$FANOUT_PYTHON`, else `<workspace>/.venv/bin/python`.
//! The tests run one at a time (a lock): on a 2-core machine each one's
//! processes would otherwise slow the others'. Every wait is bounded, every
//! child is killed on drop, and a failing test prints each child's log tail.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use fanout_proto::any;
use fanout_proto::knn::v1::{KnnRequest, KnnResponse};
use fanout_proto::search::v1::search_client::SearchClient;
use fanout_proto::search::v1::{SearchRequest, SearchResponse};
use fanout_proto::v1::root_client::RootClient;
use fanout_proto::v1::{Coverage, QueryRequest, QueryResponse};
use fanout_runtime::hashing::{SplitMix64, splitmix64};
use fanout_tests::binary::run_bounded;
use fanout_tests::open_loop::{OpenLoop, PhaseStats};
use fanout_tests::python::{PythonService, python_interpreter};
use fanout_tests::{
    ClusterOptions, ClusterProcess, FanoutBinary, LEAF_SERVICE_NAME, MERGER_SERVICE_NAME,
    MergerPlacement, Role, SEARCH_SERVICE_NAME, ScratchDir, beir, fanout_binary, health, search,
    start_cluster, wait_until_serving, within, workspace_root,
};
use futures::future::try_join_all;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::Channel;

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// Longest wait for a process to announce its address.
const START_LIMIT: Duration = Duration::from_secs(60);
/// Longest wait for a process to report SERVING once it announced.
const HEALTHY_LIMIT: Duration = Duration::from_secs(30);
/// `grpc-timeout` of one call.
const CALL_LIMIT: Duration = Duration::from_secs(10);
/// The whole Python suite.
const SUITE_LIMIT: Duration = Duration::from_secs(300);
/// Documents of BEIR SciFact.
const SCIFACT_DOCS: u64 = 5183;

/// Python services and roots started by one test, and the folder of their
/// logs (dropped last, kept when the test fails). Dropped during a panic, it
/// prints every Python service's log tail; the roots print their own.
struct Mixed {
    roots: Vec<ClusterProcess>,
    services: Vec<PythonService>,
    labels: Vec<String>,
    logs: ScratchDir,
}

impl Mixed {
    fn new(binary: &FanoutBinary, label: &str) -> Mixed {
        Mixed {
            roots: Vec::new(),
            services: Vec::new(),
            labels: Vec::new(),
            logs: ScratchDir::new(binary.scratch_root(), label).expect("scratch folder"),
        }
    }

    fn dir(&self) -> &Path {
        self.logs.path()
    }

    /// Starts every `(label, module, args)` at once, waits for their
    /// announce lines and for `service` to be SERVING on each; returns their
    /// indexes in [`Mixed::service`].
    async fn start_python(
        &mut self,
        service: &str,
        specs: Vec<(String, &str, Vec<String>)>,
    ) -> Vec<usize> {
        let dir = self.dir().to_owned();
        let starts = specs.iter().map(|(label, module, args)| {
            let dir = dir.clone();
            async move {
                PythonService::start(module, args, label, &dir, START_LIMIT)
                    .await
                    .map_err(|error| {
                        anyhow::anyhow!("{label} ({module}) does not start: {error:#}")
                    })
            }
        });
        let started = try_join_all(starts).await.unwrap_or_else(|error| {
            panic!("{error:#}");
        });
        let first = self.services.len();
        for ((label, _, _), process) in specs.into_iter().zip(started) {
            self.labels.push(label);
            self.services.push(process);
        }
        let healthy_by = Instant::now() + HEALTHY_LIMIT;
        for index in first..self.services.len() {
            wait_until_serving(self.services[index].addr, service, healthy_by)
                .await
                .unwrap_or_else(|error| panic!("{} is not SERVING: {error:#}", self.labels[index]));
        }
        (first..self.services.len()).collect()
    }

    fn service(&mut self, index: usize) -> &mut PythonService {
        &mut self.services[index]
    }

    /// Starts `fanout root` over `shards` (each shard's replica addresses)
    /// with the merger at `merger_url`, and waits until it is SERVING.
    async fn start_root(
        &mut self,
        binary: &FanoutBinary,
        index: u32,
        shards: &[Vec<SocketAddr>],
        merger_url: &str,
    ) -> SocketAddr {
        let mut args: Vec<OsString> = vec!["--listen".into(), "127.0.0.1:0".into()];
        for (shard_id, replicas) in shards.iter().enumerate() {
            let replicas: Vec<String> = replicas.iter().map(ToString::to_string).collect();
            args.push("--shard".into());
            args.push(format!("{shard_id}={}", replicas.join(",")).into());
        }
        args.push("--merger".into());
        args.push(merger_url.into());
        let root = binary
            .start(Role::Root { index }, &args, self.logs.path(), START_LIMIT)
            .await
            .unwrap_or_else(|error| panic!("the root does not start: {error:#}"));
        let addr = root.addr;
        self.roots.push(root);
        wait_until_serving(addr, SEARCH_SERVICE_NAME, Instant::now() + HEALTHY_LIMIT)
            .await
            .unwrap_or_else(|error| panic!("the root is not SERVING: {error:#}"));
        addr
    }
}

impl Drop for Mixed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (label, service) in self.labels.iter().zip(&self.services) {
                eprintln!("=== {label}\n{}", service.log_tail(40));
            }
        }
    }
}

async fn channel(addr: SocketAddr) -> Channel {
    within(CALL_LIMIT, "connecting", health::connect(addr))
        .await
        .and_then(|connected| connected)
        .unwrap_or_else(|error| panic!("cannot connect to {addr}: {error:#}"))
}

fn request(query: &str) -> SearchRequest {
    SearchRequest {
        query: query.to_owned(),
        k: 10,
        fields: vec!["title".into()],
        ..Default::default()
    }
}

/// Why `coverage` is not every one of `shards` shards over `docs` documents.
fn coverage_problem(coverage: Option<&Coverage>, shards: u32, docs: u64) -> Option<String> {
    let coverage = coverage.cloned().unwrap_or_default();
    let full = coverage.shards_total == shards
        && coverage.shards_answered == shards
        && coverage.shards_failed == 0
        && coverage.shards_timed_out == 0
        && !coverage.partial
        && coverage.docs_covered == docs;
    (!full)
        .then(|| format!("coverage is not {shards}/{shards} shards of {docs} docs: {coverage:?}"))
}

/// The hits as comparable rows: id, the score's bits, shard, title.
fn hit_rows(response: &SearchResponse) -> Vec<(String, u32, u32, String)> {
    response
        .hits
        .iter()
        .map(|hit| {
            let title = hit.fields.get("title").cloned().unwrap_or_default();
            (hit.id.clone(), hit.score.to_bits(), hit.shard_id, title)
        })
        .collect()
}

fn scifact_queries(count: usize) -> Vec<String> {
    let (queries, _) = beir::scifact_test().expect("SciFact test queries load");
    queries
        .into_iter()
        .take(count)
        .map(|query| query.text)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_merger_behind_the_rust_root_merges_like_the_rust_merger() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let binary = fanout_binary!();
    let options = ClusterOptions::scifact(2).merger(MergerPlacement::Separate);
    // Root 0: fanout's leaves and `fanout merger`.
    let cluster = start_cluster(&binary, options).await;
    let mut mixed = Mixed::new(&binary, "python-merger");
    let merger = mixed
        .start_python(
            MERGER_SERVICE_NAME,
            vec![("python-merger".into(), "fanout_py.topk_merger", Vec::new())],
        )
        .await[0];
    let merger_url = mixed.service(merger).url();
    // Root 1: the same leaves, the Python merger.
    let shards: Vec<Vec<SocketAddr>> = (0..2)
        .map(|shard| vec![cluster.leaf(shard, 0).addr])
        .collect();
    let python_root = mixed.start_root(&binary, 1, &shards, &merger_url).await;

    let rust = SearchClient::new(cluster.root_channel().await.expect("root 0 connects"));
    let python = SearchClient::new(channel(python_root).await);
    let queries = scifact_queries(40);
    let mut with_hits = 0;
    for query in &queries {
        let expected = search(&rust, request(query), CALL_LIMIT)
            .await
            .unwrap_or_else(|status| panic!("{query:?} through the Rust merger: {status:?}"));
        let merged = search(&python, request(query), CALL_LIMIT)
            .await
            .unwrap_or_else(|status| panic!("{query:?} through the Python merger: {status:?}"));
        for (merge, response) in [("Rust", &expected), ("Python", &merged)] {
            if let Some(problem) = coverage_problem(response.coverage.as_ref(), 2, SCIFACT_DOCS) {
                panic!("{query:?} merged in {merge}: {problem}");
            }
        }
        assert_eq!(
            hit_rows(&merged),
            hit_rows(&expected),
            "{query:?}: the Python merger's hits differ from the Rust merger's"
        );
        assert_eq!(
            merged.total_hits, expected.total_hits,
            "{query:?}: total hits"
        );
        if !merged.hits.is_empty() {
            with_hits += 1;
        }
    }
    assert!(
        with_hits >= queries.len() * 9 / 10,
        "only {with_hits} of {} queries found anything",
        queries.len()
    );

    // Its merges went through the Python merger: without it (and no
    // embedded fallback), its root fails while root 0 still answers.
    mixed.service(merger).kill();
    let query = &queries[0];
    let without = search(&python, request(query), CALL_LIMIT).await;
    assert!(
        without.is_err(),
        "root 1 still answered with its merger dead: {without:?}"
    );
    println!("root 1 without its merger: {:?}", without.err());
    search(&rust, request(query), CALL_LIMIT)
        .await
        .expect("root 0 still answers");
}

/// SciFact as `fanout_py.sqlite_leaf` reads it (`id` for BEIR's `_id`), and
/// each document's title.
fn scifact_with_ids(path: &Path) -> HashMap<String, String> {
    let file = std::fs::File::open(workspace_root().join("data/beir-scifact/corpus.jsonl.gz"))
        .expect("SciFact's corpus opens");
    let reader = BufReader::new(flate2::read::GzDecoder::new(file));
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("corpus written"));
    let mut titles = HashMap::new();
    for line in reader.lines() {
        let line = line.expect("SciFact reads");
        let document: serde_json::Value = serde_json::from_str(&line).expect("SciFact is JSON");
        let id = document["_id"].as_str().expect("an _id").to_owned();
        let title = document["title"].as_str().unwrap_or_default().to_owned();
        let text = document["text"].as_str().unwrap_or_default();
        let converted = serde_json::json!({"id": id, "title": title, "text": text});
        writeln!(out, "{converted}").expect("corpus written");
        titles.insert(id, title);
    }
    out.flush().expect("corpus written");
    titles
}

/// Load on the Python leaves: requests a second, before and after the kill.
const LOAD_RATE: f64 = 25.0;
const LOAD_BEFORE_KILL: Duration = Duration::from_secs(2);
const LOAD_AFTER_KILL: Duration = Duration::from_secs(4);
const LOAD_DEADLINE: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_leaves_behind_the_rust_root_lose_no_query_when_a_replica_is_killed() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let binary = fanout_binary!();
    let mut mixed = Mixed::new(&binary, "python-leaves");
    let corpus = mixed.dir().join("scifact.jsonl");
    let titles = scifact_with_ids(&corpus);
    let corpus = corpus.display().to_string();
    let leaf_specs = (0..2u32)
        .flat_map(|shard| (0..2u32).map(move |replica| (shard, replica)))
        .map(|(shard, replica)| {
            let args = vec![
                "--corpus".into(),
                corpus.clone(),
                "--shard-id".into(),
                shard.to_string(),
                "--shard-count".into(),
                "2".into(),
            ];
            (
                format!("sqlite-leaf-{shard}-{replica}"),
                "fanout_py.sqlite_leaf",
                args,
            )
        })
        .collect();
    // Shard s replica r is service 2s + r.
    let leaves = mixed.start_python(LEAF_SERVICE_NAME, leaf_specs).await;
    let merger = mixed
        .start_python(
            MERGER_SERVICE_NAME,
            vec![("python-merger".into(), "fanout_py.topk_merger", Vec::new())],
        )
        .await[0];
    let addrs: Vec<SocketAddr> = leaves
        .iter()
        .map(|&leaf| mixed.service(leaf).addr)
        .collect();
    let shards = vec![vec![addrs[0], addrs[1]], vec![addrs[2], addrs[3]]];
    let merger_url = mixed.service(merger).url();
    let root = mixed.start_root(&binary, 0, &shards, &merger_url).await;
    let client = SearchClient::new(channel(root).await);
    let docs = u64::try_from(titles.len()).expect("a count");

    let queries = scifact_queries(60);
    let mut with_hits = 0;
    let mut shard_0_replica = None;
    for query in queries.iter().take(20) {
        let response = search(&client, request(query), CALL_LIMIT)
            .await
            .unwrap_or_else(|status| panic!("{query:?}: {status:?}"));
        if let Some(problem) = coverage_problem(response.coverage.as_ref(), 2, docs) {
            panic!("{query:?}: {problem}");
        }
        // Phase two fetched each winner's stored title from its shard.
        for hit in &response.hits {
            assert_eq!(
                hit.fields.get("title"),
                titles.get(&hit.id),
                "{query:?}: hit {}",
                hit.id
            );
        }
        let scores: Vec<f32> = response.hits.iter().map(|hit| hit.score).collect();
        assert!(
            scores.windows(2).all(|pair| pair[0] >= pair[1]),
            "{query:?}: scores not in order: {scores:?}"
        );
        with_hits += usize::from(!response.hits.is_empty());
        shard_0_replica = replica_of(&response, 0);
    }
    assert!(
        with_hits >= 18,
        "only {with_hits} of 20 queries found anything"
    );

    // SIGKILL the replica of shard 0 that answered last, under an open-loop load.
    let victim = addrs[..2]
        .iter()
        .position(|addr| Some(*addr) == shard_0_replica)
        .unwrap_or_else(|| panic!("shard 0 was answered by {shard_0_replica:?}, not {addrs:?}"));
    let survivor = addrs[1 - victim];
    let load = OpenLoop::start(client.clone(), queries, LOAD_RATE, LOAD_DEADLINE, 2);
    tokio::time::sleep(LOAD_BEFORE_KILL).await;
    let killed_at = load.now();
    mixed.service(leaves[victim]).kill();
    assert!(
        mixed.service(leaves[victim]).has_exited(),
        "the killed leaf still runs"
    );
    tokio::time::sleep(LOAD_AFTER_KILL).await;
    let outcomes = within(
        Duration::from_secs(60),
        "the load's last answers",
        load.finish(),
    )
    .await
    .expect("every request of the load ends");
    let before = PhaseStats::of(&outcomes, Duration::ZERO, killed_at);
    let after = PhaseStats::of(&outcomes, killed_at, Duration::MAX);
    println!("killed shard 0's replica at {}", addrs[victim]);
    println!("before the kill: {}", before.line());
    println!("after the kill:  {}", after.line());
    assert!(before.sent > 0 && after.sent > 0, "{before:?} {after:?}");
    assert_eq!(before.failed, 0, "before the kill: {:?}", before.problems);
    assert_eq!(after.failed, 0, "after the kill: {:?}", after.problems);

    // The survivor serves shard 0 now, with full coverage.
    for query in scifact_queries(20) {
        let response = search(&client, request(&query), CALL_LIMIT)
            .await
            .unwrap_or_else(|status| panic!("{query:?} after the kill: {status:?}"));
        if let Some(problem) = coverage_problem(response.coverage.as_ref(), 2, docs) {
            panic!("{query:?} after the kill: {problem}");
        }
        assert_eq!(
            replica_of(&response, 0),
            Some(survivor),
            "{query:?} after the kill: {:?}",
            response.shards
        );
    }
}

/// The replica whose answer for `shard` was used, from the response's timings.
fn replica_of(response: &SearchResponse, shard: u32) -> Option<SocketAddr> {
    let timing = response
        .shards
        .iter()
        .find(|timing| timing.shard_id == shard)?;
    let replica = timing
        .replica
        .strip_prefix("http://")
        .unwrap_or(&timing.replica);
    replica.parse().ok()
}

/// The k-NN shards: vectors a shard, their dimension, the seed.
const KNN_VECTORS: usize = 1000;
const KNN_DIM: usize = 16;
const KNN_SEED: u64 = 11;
const KNN_K: usize = 10;

/// Vector `index` of `shard`, as `fanout_py/knn_data.py` makes it: SplitMix64
/// seeded with `mix(mix(mix(seed) ^ shard) ^ index)`, each component
/// `(z >> 40) / 2^24 * 2 - 1` of its next output `z`.
fn knn_vector(seed: u64, shard: u64, index: u64, dim: usize) -> Vec<f64> {
    let state = splitmix64(splitmix64(splitmix64(seed) ^ shard) ^ index);
    let mut generator = SplitMix64::new(state);
    (0..dim)
        .map(|_| {
            let z = generator.next_u64();
            (z >> 40) as f64 / f64::from(1u32 << 24) * 2.0 - 1.0
        })
        .collect()
}

/// The exact k nearest of `query` over every shard: (id, squared distance
/// rounded to f32, shard), by distance then id.
fn brute_force(query: &[f32], shards: u64) -> Vec<(String, f32, u32)> {
    let mut all: Vec<(f32, String, u32)> = Vec::new();
    for shard in 0..shards {
        for index in 0..KNN_VECTORS as u64 {
            let vector = knn_vector(KNN_SEED, shard, index, KNN_DIM);
            let squared: f64 = vector
                .iter()
                .zip(query)
                .map(|(v, q)| (v - f64::from(*q)).powi(2))
                .sum();
            let shard_id = u32::try_from(shard).expect("a shard id");
            all.push((squared as f32, format!("s{shard}-{index}"), shard_id));
        }
    }
    all.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    all.into_iter()
        .take(KNN_K)
        .map(|(distance, id, shard)| (id, distance, shard))
        .collect()
}

async fn query(
    client: &RootClient<Channel>,
    knn: &KnnRequest,
) -> Result<QueryResponse, tonic::Status> {
    let mut request = tonic::Request::new(QueryRequest {
        payload: Some(any::pack(knn)),
        ..Default::default()
    });
    request.set_timeout(CALL_LIMIT);
    Ok(client.clone().query(request).await?.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knn_through_the_generic_query_api_equals_a_brute_force() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let binary = fanout_binary!();
    let mut mixed = Mixed::new(&binary, "python-knn");
    let leaf_specs = (0..2u32)
        .map(|shard| {
            let args = [
                "--shard-id",
                &shard.to_string(),
                "--shard-count",
                "2",
                "--vectors",
                &KNN_VECTORS.to_string(),
                "--dim",
                &KNN_DIM.to_string(),
                "--seed",
                &KNN_SEED.to_string(),
            ]
            .map(str::to_owned)
            .to_vec();
            (format!("knn-leaf-{shard}"), "fanout_py.knn_leaf", args)
        })
        .collect();
    let leaves = mixed.start_python(LEAF_SERVICE_NAME, leaf_specs).await;
    let merger = mixed
        .start_python(
            MERGER_SERVICE_NAME,
            vec![("knn-merger".into(), "fanout_py.knn_merger", Vec::new())],
        )
        .await[0];
    let shards: Vec<Vec<SocketAddr>> = leaves
        .iter()
        .map(|&leaf| vec![mixed.service(leaf).addr])
        .collect();
    let merger_url = mixed.service(merger).url();
    let root = mixed.start_root(&binary, 0, &shards, &merger_url).await;
    let client = RootClient::new(channel(root).await);

    let mut random = SplitMix64::new(2026);
    for _ in 0..8 {
        let vector: Vec<f32> = (0..KNN_DIM)
            .map(|_| ((random.next_u64() >> 40) as f64 / f64::from(1u32 << 24) * 2.0 - 1.0) as f32)
            .collect();
        let knn = KnnRequest {
            vector: vector.clone(),
            k: KNN_K as u32,
        };
        let response = query(&client, &knn)
            .await
            .unwrap_or_else(|status| panic!("Query: {status:?}"));
        let docs = 2 * KNN_VECTORS as u64;
        if let Some(problem) = coverage_problem(response.coverage.as_ref(), 2, docs) {
            panic!("{problem}");
        }
        assert_eq!(response.shards.len(), 2, "{:?}", response.shards);
        let payload = response.payload.expect("the merger's payload");
        let merged: KnnResponse = any::unpack(&payload).expect("a KnnResponse");
        assert_eq!(merged.vectors_searched, docs);
        let expected = brute_force(&vector, 2);
        let ids: Vec<(&str, u32)> = merged
            .neighbors
            .iter()
            .map(|n| (n.id.as_str(), n.shard_id))
            .collect();
        let expected_ids: Vec<(&str, u32)> = expected
            .iter()
            .map(|(id, _, shard)| (id.as_str(), *shard))
            .collect();
        assert_eq!(ids, expected_ids, "the neighbours of {vector:?}");
        for (neighbor, (_, distance, _)) in merged.neighbors.iter().zip(&expected) {
            assert!(
                (neighbor.distance - distance).abs() <= 1e-5 * distance.max(1.0),
                "{}: distance {} but the brute force says {distance}",
                neighbor.id,
                neighbor.distance
            );
        }
    }

    // A request error of the Python leaves reaches the caller as it is.
    let wrong = KnnRequest {
        vector: vec![0.5; KNN_DIM + 1],
        k: 3,
    };
    let status = query(&client, &wrong)
        .await
        .expect_err("a vector of another dimension");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

#[test]
fn the_python_suite_passes() {
    let _serial = ONE_AT_A_TIME.blocking_lock();
    let python = python_interpreter();
    let root = workspace_root();
    let mut command = Command::new(&python);
    command
        .args([
            "-m",
            "unittest",
            "discover",
            "-v",
            "-s",
            "python/tests",
            "-t",
            "python",
        ])
        .current_dir(&root)
        // Its tests behind the Rust root use this build's binary.
        .env("FANOUT_BIN", env!("CARGO_BIN_EXE_fanout"))
        .env(
            "FANOUT_PY_TEST_WATCHDOG_S",
            (SUITE_LIMIT.as_secs() - 20).to_string(),
        )
        .env("PYTHONUNBUFFERED", "1");
    let started = std::time::Instant::now();
    let output = run_bounded(command, SUITE_LIMIT)
        .unwrap_or_else(|error| panic!("cannot run {}: {error:#}", python.display()));
    let text = output.combined();
    println!("{text}\nthe Python suite took {:.1?}", started.elapsed());
    assert!(
        output.status.success(),
        "the Python suite failed ({}):\n{text}",
        output.status
    );
    // Not skipped for want of a binary: the tests behind the Rust root ran.
    for test in [
        "test_search_through_the_root",
        "test_knn_through_the_generic_root_query",
    ] {
        assert!(
            text.lines()
                .any(|line| line.starts_with(test) && line.trim_end().ends_with("ok")),
            "{test} did not run and pass:\n{text}"
        );
    }
}

/// Runs `fanout <args>` (the conformance kit) to completion; its exit code
/// and its table.
fn conformance_kit(binary: &FanoutBinary, args: &[String]) -> (Option<i32>, String) {
    let output = binary
        .run(args, Duration::from_secs(120))
        .unwrap_or_else(|error| panic!("fanout {args:?} does not finish: {error:#}"));
    println!("{}", output.combined());
    (output.status.code(), output.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_examples_pass_the_conformance_kit() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let binary = fanout_binary!();
    let mut mixed = Mixed::new(&binary, "python-examples");
    // As docs/write-your-own-leaf.md and -merger.md run them.
    let leaf_args = [
        "--shard-id",
        "0",
        "--shard-count",
        "2",
        "--drain-delay-ms",
        "500",
    ];
    let leaf = mixed
        .start_python(
            LEAF_SERVICE_NAME,
            vec![(
                "minimal-leaf".into(),
                "examples.minimal_leaf",
                leaf_args.map(str::to_owned).to_vec(),
            )],
        )
        .await[0];
    let merger = mixed
        .start_python(
            MERGER_SERVICE_NAME,
            vec![(
                "minimal-merger".into(),
                "examples.minimal_merger",
                Vec::new(),
            )],
        )
        .await[0];
    let (leaf_addr, leaf_pid) = (mixed.service(leaf).addr, mixed.service(leaf).pid());
    let merger_addr = mixed.service(merger).addr;

    let args =
        format!("conformance leaf {leaf_addr} --shard-id 0 --knn-dim 8 --sigterm-pid {leaf_pid}");
    let args: Vec<String> = args.split(' ').map(str::to_owned).collect();
    let (code, table) = tokio::task::spawn_blocking({
        let binary = binary.clone();
        move || conformance_kit(&binary, &args)
    })
    .await
    .expect("the kit's thread does not panic");
    assert_eq!(code, Some(0), "the example leaf fails the kit:\n{table}");
    assert!(table.contains(" 0 failed"), "{table}");
    assert!(table.contains("drain on SIGTERM     pass"), "{table}");
    let exited = within(
        Duration::from_secs(15),
        "the leaf's exit after SIGTERM",
        async {
            while !mixed.service(leaf).has_exited() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        },
    )
    .await;
    assert!(
        exited.is_ok(),
        "the example leaf did not stop after SIGTERM"
    );

    let args = format!("conformance merger {merger_addr} --workload knn");
    let args: Vec<String> = args.split(' ').map(str::to_owned).collect();
    let (code, table) = tokio::task::spawn_blocking({
        let binary = binary.clone();
        move || conformance_kit(&binary, &args)
    })
    .await
    .expect("the kit's thread does not panic");
    assert_eq!(code, Some(0), "the example merger fails the kit:\n{table}");
    assert!(table.contains(" 0 failed"), "{table}");
}
