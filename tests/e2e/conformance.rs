//! The contract test kit (`fanout conformance leaf|merger ADDR`) against real
//! services over real sockets:
//!
//! - fanout's own leaf and merger pass it (the leaf also its drain on
//!   SIGTERM);
//! - the Python leaf (SQLite FTS5) and the Python top-k merger, written
//!   against the .proto files alone, pass it;
//! - deliberately broken implementations fail it with a readable reason: a
//!   leaf that ignores deadlines and cancellation, a merger that answers
//!   before `end`.

use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use fanout_conformance::{LeafOptions, Verdict, check_leaf};
use fanout_proto::any;
use fanout_proto::search::v1::{ShardSearchRequest, ShardSearchResponse};
use fanout_proto::v1::leaf_server::{Leaf, LeafServer};
use fanout_proto::v1::merge_input::Kind as InputKind;
use fanout_proto::v1::merge_output::Kind as OutputKind;
use fanout_proto::v1::merger_server::{Merger, MergerServer};
use fanout_proto::v1::{
    ExecuteRequest, ExecuteResponse, InfoRequest, InfoResponse, MergeInput, MergeOutput,
    MergeResult,
};
use fanout_tests::python::PythonService;
use fanout_tests::{
    FanoutBinary, IndexFixture, LEAF_SERVICE_NAME, Role, ScratchDir, fanout_binary,
    wait_until_serving, workspace_root,
};
use futures::Stream;
use tokio::net::TcpListener;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::server::Router;
use tonic::{Request, Response, Status, Streaming};

/// How long one run of the kit may take.
const KIT_LIMIT: Duration = Duration::from_secs(180);
const START_LIMIT: Duration = Duration::from_secs(60);

/// Runs `fanout conformance <args>`; returns its exit code and table.
fn kit(binary: &FanoutBinary, args: &[String]) -> (Option<i32>, String) {
    let mut all = vec!["conformance".to_owned()];
    all.extend_from_slice(args);
    let output = binary.run(&all, KIT_LIMIT).expect("the kit runs");
    println!("{}", output.stdout);
    (output.status.code(), output.combined())
}

/// The kit's table, with every check named passing.
fn assert_passed(table: &str, code: Option<i32>, checks: &[&str]) {
    assert_eq!(code, Some(0), "the kit found a failure:\n{table}");
    for check in checks {
        let passed = table.lines().any(|line| {
            line.starts_with(check) && line[check.len()..].trim_start().starts_with("pass")
        });
        assert!(passed, "{check} did not pass:\n{table}");
    }
}

const LEAF_CHECKS: &[&str] = &[
    "health",
    "info",
    "execute",
    "fetch",
    "wrong shard id",
    "unknown type URL",
    "no payload",
    "undecodable payload",
    "deadline",
    "cancellation",
    "concurrency",
];

const MERGER_CHECKS: &[&str] = &[
    "health",
    "merge",
    "partial coverage",
    "no partials",
    "early enough",
    "unknown shard",
    "input after end",
    "first message not start",
    "stream cut midway",
    "deadline",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanouts_own_leaf_and_merger_pass_the_kit() {
    let binary = fanout_binary!();
    let index = IndexFixture::scifact(&binary, 2).expect("SciFact in 2 shards builds");
    let logs = ScratchDir::new(binary.scratch_root(), "conformance-rust").expect("scratch folder");
    let leaf_args: Vec<OsString> = [
        "--shard-dir".into(),
        index.shard_dir(1).into_os_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--drain-delay-ms".into(),
        "300".into(),
    ]
    .to_vec();
    let leaf = binary
        .start(
            Role::Leaf {
                shard_id: 1,
                replica: 0,
            },
            &leaf_args,
            logs.path(),
            START_LIMIT,
        )
        .await
        .expect("the leaf starts");
    wait_until_serving(
        leaf.addr,
        LEAF_SERVICE_NAME,
        tokio::time::Instant::now() + START_LIMIT,
    )
    .await
    .expect("the leaf serves");
    let merger = binary
        .start(
            Role::Merger,
            &["--listen", "127.0.0.1:0"].map(OsString::from),
            logs.path(),
            START_LIMIT,
        )
        .await
        .expect("the merger starts");

    let args = [
        "leaf".to_owned(),
        leaf.addr.to_string(),
        "--shard-id".to_owned(),
        "1".to_owned(),
        "--sigterm-pid".to_owned(),
        leaf.pid.to_string(),
    ];
    let (code, table) = kit(&binary, &args);
    assert_passed(&table, code, LEAF_CHECKS);
    assert_passed(&table, code, &["overload", "drain on SIGTERM"]);
    leaf.wait_for_exit(Duration::from_secs(15))
        .await
        .expect("the leaf exits after SIGTERM");

    let (code, table) = kit(&binary, &["merger".to_owned(), merger.addr.to_string()]);
    assert_passed(&table, code, MERGER_CHECKS);
}

/// The first `count` SciFact documents as the Python leaf reads them
/// (`id`, `title`, `text`).
fn scifact_slice(folder: &Path, count: usize) -> PathBuf {
    let source = workspace_root().join("data/beir-scifact/corpus.jsonl.gz");
    let file = std::fs::File::open(&source).expect("SciFact is bundled");
    let reader = std::io::BufReader::new(flate2::read::GzDecoder::new(file));
    let path = folder.join("scifact-slice.jsonl");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).expect("slice file"));
    for line in reader.lines().take(count) {
        let mut document: serde_json::Value =
            serde_json::from_str(&line.expect("a line")).expect("a JSON line");
        let id = document["_id"].take();
        document["id"] = id;
        writeln!(out, "{document}").expect("written");
    }
    out.flush().expect("flushed");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_leaf_and_merger_pass_the_kit() {
    let binary = fanout_binary!();
    let logs =
        ScratchDir::new(binary.scratch_root(), "conformance-python").expect("scratch folder");
    let corpus = scifact_slice(logs.path(), 1_000);
    let leaf_args = [
        "--corpus".to_owned(),
        corpus.display().to_string(),
        "--shard-id".to_owned(),
        "0".to_owned(),
        "--shard-count".to_owned(),
        "2".to_owned(),
        "--drain-delay-ms".to_owned(),
        "300".to_owned(),
    ];
    let mut leaf = PythonService::start(
        "fanout_py.sqlite_leaf",
        &leaf_args,
        "sqlite-leaf",
        logs.path(),
        START_LIMIT,
    )
    .await
    .expect("the Python leaf starts");
    let merger = PythonService::start(
        "fanout_py.topk_merger",
        &[],
        "topk-merger",
        logs.path(),
        START_LIMIT,
    )
    .await
    .expect("the Python merger starts");

    let args = [
        "leaf".to_owned(),
        leaf.addr.to_string(),
        "--shard-id".to_owned(),
        "0".to_owned(),
        "--sigterm-pid".to_owned(),
        leaf.pid().to_string(),
    ];
    let (code, table) = kit(&binary, &args);
    if code != Some(0) {
        println!("{}", leaf.log_tail(40));
    }
    assert_passed(&table, code, LEAF_CHECKS);
    assert_passed(&table, code, &["drain on SIGTERM"]);
    let exited = (0..300).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        leaf.has_exited()
    });
    assert!(
        exited,
        "the Python leaf did not exit after SIGTERM\n{}",
        leaf.log_tail(20)
    );

    let (code, table) = kit(&binary, &["merger".to_owned(), merger.addr.to_string()]);
    if code != Some(0) {
        println!("{}", merger.log_tail(40));
    }
    assert_passed(&table, code, MERGER_CHECKS);
}

/// Serves `services` (beside grpc.health.v1, SERVING) on a free loopback
/// port until the test ends.
async fn serve(services: impl FnOnce(Router) -> Router) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
    let addr = listener.local_addr().expect("its address");
    let (_reporter, health) = tonic_health::server::health_reporter();
    let router = services(tonic::transport::Server::builder().add_service(health));
    tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
    addr
}

/// A leaf that never looks at the deadline or at cancellation: every call
/// is a job in the queue of two worker threads, and a heavy one sleeps
/// 600 ms there, whatever happened to its caller meanwhile (a dropped call
/// leaves its job queued). Everything else it answers as the contract says.
#[derive(Clone)]
struct DeadlineIgnoringLeaf {
    jobs: std::sync::mpsc::Sender<(bool, tokio::sync::oneshot::Sender<()>)>,
}

impl DeadlineIgnoringLeaf {
    fn start() -> DeadlineIgnoringLeaf {
        let (jobs, queue) = std::sync::mpsc::channel::<(bool, tokio::sync::oneshot::Sender<()>)>();
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for _ in 0..2 {
            let queue = Arc::clone(&queue);
            std::thread::spawn(move || {
                loop {
                    let job = queue.lock().expect("the queue").recv();
                    let Ok((heavy, done)) = job else { return };
                    if heavy {
                        std::thread::sleep(Duration::from_millis(600));
                    }
                    let _ = done.send(());
                }
            });
        }
        DeadlineIgnoringLeaf { jobs }
    }
}

#[tonic::async_trait]
impl Leaf for DeadlineIgnoringLeaf {
    async fn execute(
        &self,
        request: Request<ExecuteRequest>,
    ) -> Result<Response<ExecuteResponse>, Status> {
        let request = request.into_inner();
        if request.shard_id != 0 {
            return Err(Status::failed_precondition("this leaf serves shard 0"));
        }
        let payload = request
            .payload
            .ok_or_else(|| Status::invalid_argument("no payload"))?;
        let search: ShardSearchRequest =
            any::unpack(&payload).map_err(|error| Status::invalid_argument(error.to_string()))?;
        let heavy = search.query.split_whitespace().count() > 10;
        let (done, finished) = tokio::sync::oneshot::channel();
        self.jobs.send((heavy, done)).expect("the workers run");
        finished.await.expect("the job ran");
        Ok(Response::new(ExecuteResponse {
            payload: Some(any::pack(&ShardSearchResponse::default())),
            generation: "broken".to_owned(),
            ..ExecuteResponse::default()
        }))
    }

    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Ok(Response::new(InfoResponse {
            shard_id: 0,
            shard_count: 1,
            generation: "broken".to_owned(),
            doc_count: 0,
            capabilities: vec![any::type_url::<ShardSearchRequest>()],
        }))
    }
}

/// A merger that answers with the first partial it gets, before `end`.
#[derive(Clone)]
struct EarlyMerger;

type Outputs = Pin<Box<dyn Stream<Item = Result<MergeOutput, Status>> + Send>>;

#[tonic::async_trait]
impl Merger for EarlyMerger {
    type MergeStream = Outputs;

    async fn merge(
        &self,
        request: Request<Streaming<MergeInput>>,
    ) -> Result<Response<Outputs>, Status> {
        let mut input = request.into_inner();
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut answered = false;
            while let Ok(Some(message)) = input.message().await {
                if let Some(InputKind::Partial(partial)) = message.kind
                    && !answered
                {
                    answered = true;
                    let result = MergeOutput {
                        kind: Some(OutputKind::Result(MergeResult {
                            payload: partial.payload,
                        })),
                    };
                    let _ = sender.send(Ok(result)).await;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_implementations_fail_the_kit_with_a_reason() {
    let broken = DeadlineIgnoringLeaf::start();
    let leaf = serve(|router| router.add_service(LeafServer::new(broken))).await;
    let mut options = LeafOptions::new(format!("http://{leaf}"));
    options.overload_calls = 8;
    let report = check_leaf(&options).await;
    println!("{report}");
    let deadline = report.check("deadline").expect("the deadline check ran");
    assert_eq!(deadline.verdict, Verdict::Fail, "{report}");
    assert!(
        deadline
            .seen
            .contains("does not stop at the caller's deadline"),
        "{}",
        deadline.seen
    );
    let cancellation = report
        .check("cancellation")
        .expect("the cancellation check ran");
    assert_eq!(cancellation.verdict, Verdict::Fail, "{report}");
    assert!(
        cancellation.seen.contains("abandoned work"),
        "{}",
        cancellation.seen
    );
    // What it does right still passes.
    for check in ["health", "info", "execute", "wrong shard id", "no payload"] {
        assert_eq!(
            report.check(check).map(|c| c.verdict),
            Some(Verdict::Pass),
            "{check}: {report}"
        );
    }

    // The command says so too, and exits 1.
    let merger = serve(|router| router.add_service(MergerServer::new(EarlyMerger))).await;
    let binary = fanout_binary!();
    let (code, table) = tokio::task::spawn_blocking(move || {
        kit(&binary, &["merger".to_owned(), merger.to_string()])
    })
    .await
    .expect("the kit ran");
    assert_eq!(code, Some(1), "{table}");
    let merge = table
        .lines()
        .find(|line| line.starts_with("merge "))
        .expect("a merge row");
    assert!(merge.contains("FAIL"), "{table}");
    assert!(
        merge.contains("a result after 1 of 3 partials, before end"),
        "{table}"
    );
}

/// The second workload, k nearest neighbours: its Python leaf and merger
/// pass the same kit with the workload's own payloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_knn_leaf_and_merger_pass_the_kit() {
    let binary = fanout_binary!();
    let logs = ScratchDir::new(binary.scratch_root(), "conformance-knn").expect("scratch folder");
    let leaf_args = [
        "--shard-id",
        "1",
        "--shard-count",
        "2",
        "--vectors",
        "2000",
        "--dim",
        "16",
    ]
    .map(str::to_owned);
    let leaf = PythonService::start(
        "fanout_py.knn_leaf",
        &leaf_args,
        "knn-leaf",
        logs.path(),
        START_LIMIT,
    )
    .await
    .expect("the k-NN leaf starts");
    let merger = PythonService::start(
        "fanout_py.knn_merger",
        &[],
        "knn-merger",
        logs.path(),
        START_LIMIT,
    )
    .await
    .expect("the k-NN merger starts");
    let args = [
        "leaf",
        &leaf.addr.to_string(),
        "--shard-id",
        "1",
        "--knn-dim",
        "16",
    ]
    .map(str::to_owned);
    let (code, table) = kit(&binary, &args);
    if code != Some(0) {
        println!("{}", leaf.log_tail(40));
    }
    let knn_checks: Vec<&str> = LEAF_CHECKS
        .iter()
        .copied()
        .filter(|check| *check != "fetch")
        .collect();
    assert_passed(&table, code, &knn_checks);
    assert!(table.contains("KnnResponse"), "{table}");

    let args = ["merger", &merger.addr.to_string(), "--workload", "knn"].map(str::to_owned);
    let (code, table) = kit(&binary, &args);
    if code != Some(0) {
        println!("{}", merger.log_tail(40));
    }
    assert_passed(&table, code, MERGER_CHECKS);
    assert!(table.contains("nearest 5: a0 b0 c0 a1 a9"), "{table}");
}
