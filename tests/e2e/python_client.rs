//! A client nobody on the project wrote: Python's grpcio, with stubs generated
//! from `proto/proto` at test time, against a small cluster (2 shards x 1
//! replica over a generated corpus). The checks are in
//! `tests/python/client_test.py`: health, reflection, Search, an
//! INVALID_ARGUMENT for an empty query.
//!
//! The interpreter is `$FANOUT_PYTHON`, else `<workspace>/.venv/bin/python`
//! (which `.ci/run` creates from `tests/python/requirements.txt`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use fanout_tests::binary::run_bounded;
use fanout_tests::{
    ClusterOptions, CorpusSpec, IndexFixture, MergerPlacement, ScratchDir, fanout_binary,
    start_cluster, workspace_root,
};

const SCRIPT_LIMIT: Duration = Duration::from_secs(180);

const CORPUS: &str = concat!(
    r#"{"id": "py-1", "title": "Hedged requests cut tail latency", "text": "Sending a second request to another replica after a short delay trims the slowest responses."}"#,
    "\n",
    r#"{"id": "py-2", "title": "Streaming merge of partial results", "text": "Each shard's answer is merged as soon as it arrives instead of waiting for all of them."}"#,
    "\n",
    r#"{"id": "py-3", "title": "Exact scores with global statistics", "text": "Leaves score with corpus-wide inverse document frequency, so shards agree on every score."}"#,
    "\n",
    r#"{"id": "py-4", "title": "Draining a server", "text": "Health turns NOT_SERVING, then the server stops accepting connections and waits for calls in flight."}"#,
    "\n",
    r#"{"id": "py-5", "title": "Coverage is data", "text": "A partial answer says how many shards answered, and the caller decides whether that is enough."}"#,
    "\n",
    r#"{"id": "py-6", "title": "Deadlines travel with the request", "text": "The root reads the caller's timeout, keeps a margin, and passes the rest to every leaf."}"#,
    "\n",
);

fn python_interpreter() -> PathBuf {
    if let Some(python) = std::env::var_os("FANOUT_PYTHON") {
        return PathBuf::from(python);
    }
    let venv_python = workspace_root().join(".venv/bin/python");
    assert!(
        venv_python.exists(),
        "no Python for the client test: {} does not exist and FANOUT_PYTHON is not set. \
         Run .ci/run, or: python3 -m venv .venv && .venv/bin/pip install -r tests/python/requirements.txt",
        venv_python.display()
    );
    venv_python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_grpcio_client_uses_health_reflection_and_search() {
    let python = python_interpreter();
    let binary = fanout_binary!();
    let scratch = ScratchDir::new(binary.scratch_root(), "python-client").expect("scratch folder");
    let corpus = scratch.path().join("corpus.jsonl");
    std::fs::write(&corpus, CORPUS).expect("corpus written");
    let spec = CorpusSpec {
        label: "python-client".into(),
        input: corpus,
        shards: 2,
        extra_args: Vec::new(),
    };
    let index_dir = scratch.path().join("index");
    let index = IndexFixture::build(&binary, &spec, &index_dir).expect("the small corpus indexes");
    assert_eq!(index.doc_count(), 6);

    let options = ClusterOptions::new(index.dir()).merger(MergerPlacement::Embedded);
    let cluster = start_cluster(&binary, options).await;

    let mut command = Command::new(&python);
    command
        .arg(workspace_root().join("tests/python/client_test.py"))
        .arg("--addr")
        .arg(cluster.root().addr.to_string())
        .arg("--proto-dir")
        .arg(workspace_root().join("proto/proto"))
        .args(["--query", "inverse document frequency global statistics"])
        .args(["--expect-id", "py-3"])
        .args(["--shards", "2"]);
    let output = tokio::task::spawn_blocking(move || run_bounded(command, SCRIPT_LIMIT))
        .await
        .expect("the script thread does not panic")
        .unwrap_or_else(|error| panic!("cannot run {}: {error:#}", python.display()));
    println!("{}", output.combined());
    assert!(
        output.status.success(),
        "the Python client failed ({}):\n{}",
        output.status,
        output.combined()
    );
    assert!(
        output.stdout.contains("python client: all checks passed"),
        "{}",
        output.stdout
    );
}
