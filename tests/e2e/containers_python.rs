//! Mixed clusters as containers: fanout's root with Python services
//! (python/fanout_py, the image of deploy/build-python-images), each its own
//! container on a private network, as deploy/compose describes them.
//!
//! - (a) `docker-compose.yml` + `python-merger.yml`: fanout's root and 4 x 2
//!   Rust leaves over SciFact, the Python top-k merger as the root's sidecar.
//!   Every query covers all shards and the whole corpus, its merges go to the
//!   sidecar (none to the root's embedded fallback), and its hits and scores
//!   are those of a local cluster of fanout processes merging in Rust.
//! - (b) `python-leaves.yml`: fanout's root over 2 shards x 2 replicas of the
//!   Python SQLite leaf (the corpus mounted read-only), the Python merger as
//!   its sidecar. Every query covers both shards and the whole corpus; a leaf
//!   container passes `fanout conformance leaf`; then,
//!   under an open-loop load, every leaf call held 100 ms, `docker kill` of a
//!   Python leaf replica while it has calls in flight, and its restart: not
//!   one query fails, and the restarted replica gets calls again.
//!
//! Both images are built first (from their caches when nothing changed).
//! Where the Python image's base cannot be made (not root, no debootstrap)
//! and none is cached, the test prints why and passes without running.
//! Everything a project made (containers, network, volume) is removed when it
//! ends, failed or not. Without Docker the test prints why and passes
//! without running.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fanout_proto::search::v1::search_client::SearchClient;
use fanout_proto::search::v1::{SearchRequest, SearchResponse};
use fanout_tests::compose::{self, ComposeProject, PythonImage, docker};
use fanout_tests::metrics::{scrape, until_replica_calls};
use fanout_tests::open_loop::{OpenLoop, PhaseStats};
use fanout_tests::{ClusterOptions, beir, fanout_binary, health, search, start_cluster};
use tokio::task::block_in_place;
use tonic::transport::Channel;

/// SciFact's documents (data/README.md).
const SCIFACT_DOCS: u64 = 5_183;
/// The bundled Debian descriptions, repeated ids skipped (data/README.md).
const DEBIAN_DOCS: u64 = 63_905;
/// The sidecar's URL, as the root labels its merges.
const SIDECAR: &str = "http://127.0.0.1:7100";
/// Requests a second of the load in (b): Python leaves on a 2-core host.
const RATE: f64 = 20.0;
/// How long every leaf call of (b) is held (`--delay-ms`), so that the killed
/// replica has calls in flight (a query holds two: search, then fetch).
const LEAF_DELAY_MS: &str = "100";
const DEADLINE: Duration = Duration::from_secs(2);

/// Queries for the Debian package descriptions.
const DEBIAN_QUERIES: &[&str] = &[
    "network file system",
    "python library for parsing xml",
    "web browser",
    "text editor for programmers",
    "video player",
    "audio codec",
    "database server",
    "image viewer",
    "c compiler",
    "chess game",
    "mail client",
    "monospace font",
    "linux kernel documentation",
    "ssh server",
    "backup tool",
    "pdf reader",
    "music player",
    "version control system",
    "spreadsheet",
    "scientific plotting",
    "regular expression library",
    "bittorrent client",
    "virtual machine emulator",
    "perl module for http",
];

async fn client(addr: SocketAddr) -> SearchClient<Channel> {
    SearchClient::new(health::connect(addr).await.expect("the root is reachable"))
}

/// Each query's answer, checked for full coverage: every shard answered and
/// the documents covered are the whole corpus.
async fn answers(
    client: &SearchClient<Channel>,
    queries: &[&str],
    shards: u32,
    docs: u64,
) -> Vec<SearchResponse> {
    let mut all = Vec::new();
    for query in queries {
        let request = SearchRequest {
            query: (*query).to_owned(),
            k: 10,
            ..Default::default()
        };
        let response = search(client, request, Duration::from_secs(10))
            .await
            .unwrap_or_else(|status| panic!("{query:?} is answered: {status:?}"));
        let coverage = response.coverage.clone().unwrap_or_default();
        assert!(
            !coverage.partial
                && coverage.shards_total == shards
                && coverage.shards_answered == shards,
            "{query:?}: not every shard answered: {coverage:?}"
        );
        assert_eq!(
            coverage.docs_covered, docs,
            "{query:?}: the documents covered are not the corpus: {coverage:?}"
        );
        all.push(response);
    }
    assert!(
        all.iter()
            .filter(|response| response.hits.len() == 10)
            .count()
            > queries.len() / 2,
        "the queries find documents"
    );
    all
}

/// The root's merges per merger (its URL, or `embedded`), and failures.
async fn merges(metrics: SocketAddr) -> (BTreeMap<String, f64>, f64) {
    let scraped = scrape(metrics).await.expect("the root's metrics scrape");
    let merges = scraped
        .samples
        .iter()
        .filter(|sample| sample.name == "fanout_root_merges_total")
        .map(|sample| {
            let merger = sample.labels.get("merger").cloned().unwrap_or_default();
            (merger, sample.value)
        })
        .collect();
    (
        merges,
        scraped.sum("fanout_root_merger_failures_total", &[]),
    )
}

/// The image a container was created from.
fn image_of(container: &str) -> String {
    docker(&["inspect", "-f", "{{.Config.Image}}", container])
        .expect("docker inspect")
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_clusters_answer_in_containers_and_ride_out_a_python_leaf_kill() {
    if let Some(reason) = compose::docker_unavailable() {
        println!("skipped: no Docker here ({reason})");
        return;
    }
    let started = Instant::now();
    let python = match block_in_place(compose::python_image).expect("the Python image builds") {
        PythonImage::Built(python) => python,
        PythonImage::CannotBuildHere(reason) => {
            println!("skipped: the Python image cannot be built here ({reason})");
            return;
        }
    };
    let image = block_in_place(compose::image).expect("the fanout image builds");
    let inspected = docker(&[
        "image",
        "inspect",
        "-f",
        "{{.Config.User}} {{.Size}}",
        &python,
    ])
    .expect("the Python image is there");
    let (user, size) = inspected.trim().split_once(' ').expect("user and size");
    assert_eq!(user, "65532:65532", "the Python image runs as uid 65532");
    println!(
        "images {image}, {python} ({:.1} MiB): {:.1?}",
        size.parse::<f64>().unwrap_or(0.0) / 1_048_576.0,
        started.elapsed()
    );

    let merger_started = Instant::now();
    rust_leaves_with_the_python_merger(&image, &python).await;
    println!(
        "(a) Rust leaves, Python merger: {:.1?}",
        merger_started.elapsed()
    );

    let leaves_started = Instant::now();
    python_leaves_under_the_rust_root(&image, &python).await;
    println!(
        "(b) Python leaves under the Rust root: {:.1?}",
        leaves_started.elapsed()
    );
    println!("whole test: {:.1?}", started.elapsed());
}

/// (a): the Python top-k merger as the sidecar of fanout's root.
async fn rust_leaves_with_the_python_merger(image: &str, python: &str) {
    let scifact = beir::scifact_dir().display().to_string();
    let mut project = ComposeProject::new(
        "pymerger",
        image,
        &[
            ("FANOUT_PYTHON_IMAGE", python),
            ("FANOUT_DATA", &scifact),
            ("FANOUT_CORPUS", "corpus.jsonl.gz"),
            ("FANOUT_ID_FIELD", "_id"),
        ],
    )
    .with_files(&["docker-compose.yml", "python-merger.yml"]);
    let up = block_in_place(|| project.up()).expect("the cluster starts");
    println!("(a) up, index built, root and merger healthy: {up:.1?}");
    let (root, metrics, merger) = block_in_place(|| {
        (
            project.root_addr().expect("the root is published"),
            project.published("root", 9100).expect("metrics published"),
            project.container("merger").expect("the merger"),
        )
    });
    assert_eq!(
        image_of(&merger),
        python,
        "the sidecar is the Python merger"
    );

    let (queries, _) = beir::scifact_test().expect("SciFact test queries load");
    let sample: Vec<&str> = queries[..30]
        .iter()
        .map(|query| query.text.as_str())
        .collect();
    let root_client = client(root).await;
    let (before, failures_before) = merges(metrics).await;
    let in_containers = answers(&root_client, &sample, 4, SCIFACT_DOCS).await;
    let (after, failures_after) = merges(metrics).await;
    let grown = |merger: &str| {
        after.get(merger).copied().unwrap_or(0.0) - before.get(merger).copied().unwrap_or(0.0)
    };
    assert!(
        grown(SIDECAR) >= sample.len() as f64,
        "every query merged on the Python sidecar: merges {before:?} -> {after:?}"
    );
    assert_eq!(
        grown("embedded"),
        0.0,
        "no merge fell back in-process: {before:?} -> {after:?}"
    );
    assert_eq!(
        failures_after, failures_before,
        "no merge found the sidecar unreachable"
    );

    // The same hits and scores as fanout's processes merging in Rust.
    let local = start_cluster(&fanout_binary!(), ClusterOptions::scifact(4)).await;
    let local_client = local.search_client().await.expect("the local root answers");
    let local_answers = answers(&local_client, &sample, 4, SCIFACT_DOCS).await;
    for ((query, got), want) in sample.iter().zip(&in_containers).zip(&local_answers) {
        let hits = |response: &SearchResponse| {
            response
                .hits
                .iter()
                .map(|hit| (hit.id.clone(), hit.score))
                .collect::<Vec<_>>()
        };
        let (got, want) = (hits(got), hits(want));
        assert_eq!(
            got.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            want.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            "{query:?}: the Python merger's hits differ from fanout's own merge"
        );
        for ((_, a), (_, b)) in got.iter().zip(&want) {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                "{query:?}: scores {got:?} vs {want:?}"
            );
        }
    }
    println!(
        "(a) {} queries through the Python merger: 4/4 shards, {SCIFACT_DOCS} documents covered, \
         the hits of fanout's own merge",
        sample.len()
    );
}

/// The root's leaf calls in flight to `replica` of `shard` now.
async fn outstanding(metrics: SocketAddr, shard: u32, replica: &str) -> f64 {
    let scraped = scrape(metrics).await.expect("the root's metrics scrape");
    scraped.sum(
        "fanout_root_replica_outstanding_calls",
        &[("shard", &shard.to_string()), ("replica", replica)],
    )
}

/// Leaf calls lost to a broken connection, and retries, so far.
async fn lost_and_retried(metrics: SocketAddr) -> (f64, f64) {
    let scraped = scrape(metrics).await.expect("the root's metrics scrape");
    (
        scraped.sum("fanout_root_lost_calls_total", &[]),
        scraped.sum("fanout_root_shard_retries_total", &[]),
    )
}

/// Waits until the root's calls to `replica` of `shard` grow.
async fn until_called(metrics: SocketAddr, shard: u32, replica: &str, limit: Duration) -> Duration {
    let calls = |map: &BTreeMap<String, f64>| map.get(replica).copied().unwrap_or(0.0);
    let what = format!("{replica} gets calls");
    until_replica_calls(metrics, shard, limit, &what, |before, now| {
        calls(now) > calls(before)
    })
    .await
}

fn replica_url(project: &ComposeProject, container: &str) -> String {
    format!(
        "http://{}:7000",
        project.ip_of(container).expect("the container's address")
    )
}

/// (b): fanout's root over Python SQLite leaves, one killed under load.
async fn python_leaves_under_the_rust_root(image: &str, python: &str) {
    let data = fanout_tests::workspace_root().join("data");
    let data = data.display().to_string();
    let mut project = ComposeProject::new(
        "pyleaves",
        image,
        &[
            ("FANOUT_PYTHON_IMAGE", python),
            ("FANOUT_DATA", &data),
            ("FANOUT_CORPUS", "debian-descriptions.jsonl.gz"),
            ("FANOUT_LEAF_ARGS", &format!("--delay-ms {LEAF_DELAY_MS}")),
        ],
    )
    .with_files(&["python-leaves.yml"]);
    let up = block_in_place(|| project.up()).expect("the cluster starts");
    println!("(b) up, leaves built their shards, root and merger healthy: {up:.1?}");
    let (root, metrics, killed) = block_in_place(|| {
        for service in ["leaf-0", "leaf-1", "merger"] {
            let containers = project.containers(service).expect("the containers");
            let want = if service == "merger" { 1 } else { 2 };
            assert_eq!(containers.len(), want, "{service}: {containers:?}");
            for container in &containers {
                assert_eq!(image_of(container), python, "{service} is Python");
            }
        }
        (
            project.root_addr().expect("the root is published"),
            project.published("root", 9100).expect("metrics published"),
            project.containers("leaf-0").expect("leaf-0's containers")[0].clone(),
        )
    });
    let root_client = client(root).await;
    let (before, _) = merges(metrics).await;
    answers(&root_client, DEBIAN_QUERIES, 2, DEBIAN_DOCS).await;
    let (after, _) = merges(metrics).await;
    assert!(
        after.get(SIDECAR).copied().unwrap_or(0.0) - before.get(SIDECAR).copied().unwrap_or(0.0)
            >= DEBIAN_QUERIES.len() as f64,
        "the queries merged on the Python sidecar: {before:?} -> {after:?}"
    );
    println!(
        "(b) {} queries: 2/2 shards, {DEBIAN_DOCS} documents covered",
        DEBIAN_QUERIES.len()
    );

    // The contract kit against a Python leaf container, as anyone would run
    // it against theirs (no SIGTERM: the kit is not in the container's pid
    // namespace).
    let checked = block_in_place(|| {
        let container = &project.containers("leaf-1").expect("leaf-1's containers")[1];
        let url = replica_url(&project, container);
        fanout_binary!()
            .run(
                [
                    "conformance",
                    "leaf",
                    &url,
                    "--shard-id",
                    "1",
                    "--overload-calls",
                    "64",
                ],
                Duration::from_secs(120),
            )
            .expect("the kit runs")
    });
    println!("{}", checked.stdout);
    assert_eq!(
        checked.status.code(),
        Some(0),
        "a Python leaf container fails the kit:\n{}",
        checked.combined()
    );

    let queries: Vec<String> = DEBIAN_QUERIES
        .iter()
        .map(|&query| query.to_owned())
        .collect();
    let load = OpenLoop::start(root_client, queries, RATE, DEADLINE, 2);
    tokio::time::sleep(Duration::from_secs(8)).await;
    let normal_end = load.now();

    // The replica to kill is getting calls, and has some in flight now (or
    // the kill would prove little).
    let killed_url = block_in_place(|| replica_url(&project, &killed));
    until_called(metrics, 0, &killed_url, Duration::from_secs(5)).await;
    let gate = Instant::now();
    let in_flight = loop {
        let now = outstanding(metrics, 0, &killed_url).await;
        if now >= 1.0 || gate.elapsed() > Duration::from_secs(5) {
            break now;
        }
    };
    let (lost_before, retried_before) = lost_and_retried(metrics).await;
    let kill_from = load.now();
    block_in_place(|| docker(&["kill", &killed])).expect("docker kill a Python leaf");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let restart = Instant::now();
    block_in_place(|| {
        docker(&["start", &killed]).expect("the killed leaf starts again");
        project
            .wait_healthy("leaf-0", Duration::from_secs(60))
            .expect("leaf-0 is healthy again");
    });
    let healthy_after = restart.elapsed();
    let restarted_url = block_in_place(|| replica_url(&project, &killed));
    let called_after = until_called(metrics, 0, &restarted_url, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kill_to = load.now();
    let outcomes = load.finish().await;
    let (lost_after, retried_after) = lost_and_retried(metrics).await;

    let normal = PhaseStats::of(&outcomes, Duration::ZERO, normal_end);
    let kill = PhaseStats::of(&outcomes, kill_from, kill_to);
    println!(
        "(b) {RATE} requests/s, deadline {DEADLINE:?}, every leaf call held {LEAF_DELAY_MS} ms:"
    );
    println!("  {:<34} {}", "normal", normal.line());
    println!("  {:<34} {}", "kill a Python leaf, restart it", kill.line());
    println!(
        "  the killed leaf was healthy {healthy_after:.1?} after `docker start`, called again \
         {called_after:.1?} later"
    );
    println!(
        "  calls in flight on it just before the kill: {in_flight}; leaf calls lost to the kill: {}, \
         retries during the phase: {}",
        lost_after - lost_before,
        retried_after - retried_before
    );
    assert!(normal.sent >= 100, "the load ran: {normal:?}");
    assert_eq!(normal.failed, 0, "normal: {:?}", normal.problems);
    assert!(kill.sent >= 100, "the load ran through the kill: {kill:?}");
    assert_eq!(
        kill.failed, 0,
        "killing a Python leaf replica failed queries: {:?}",
        kill.problems
    );
}
