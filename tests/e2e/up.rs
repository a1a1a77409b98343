//! `fanout up`, the front door of the README: one command builds the shard
//! indexes, starts leaves, a merger and a root as child processes, answers
//! searches, and on Ctrl-C stops every process it started. A second `up` over
//! the same data folder reuses the index instead of building it again.

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use fanout_proto::search::v1::SearchRequest;
use fanout_proto::search::v1::search_client::SearchClient;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fanout_tests::processes::{child_running, children_of, is_alive};
use fanout_tests::{
    ClusterProcess, Role, ScratchDir, fanout_binary, health, search, within, workspace_root,
};
use nix::sys::signal::Signal;

const SHARDS: usize = 2;
const REPLICAS: usize = 2;
const START_LIMIT: Duration = Duration::from_secs(180);
const STOP_LIMIT: Duration = Duration::from_secs(20);

fn up_args(data_dir: &Path) -> Vec<OsString> {
    let corpus = workspace_root().join("data/beir-scifact/corpus.jsonl.gz");
    let mut args: Vec<OsString> = vec!["--corpus".into()];
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

/// Starts `up` (its log in `log_dir`), checks it answers a search with full
/// coverage over S x R leaves + merger + root, then SIGINTs it and checks
/// every child is gone; returns its log.
async fn up_round(
    binary: &fanout_tests::FanoutBinary,
    data_dir: &Path,
    log_dir: &Path,
    metrics: bool,
) -> String {
    let mut args = up_args(data_dir);
    if metrics {
        args.push("--metrics".into());
    }
    std::fs::create_dir_all(log_dir).expect("log folder");
    let up = binary
        .start(Role::Up, &args, log_dir, START_LIMIT)
        .await
        .expect("fanout up starts and announces its endpoint");

    let channel = within(
        Duration::from_secs(10),
        "connecting to the root",
        health::connect(up.addr),
    )
    .await
    .and_then(|connected| connected)
    .expect("the root accepts connections");
    let request = SearchRequest {
        query: "vitamin D deficiency and bone fractures".into(),
        k: 5,
        ..Default::default()
    };
    let response = within(
        Duration::from_secs(10),
        "a search through up's root",
        search(
            &SearchClient::new(channel),
            request,
            Duration::from_secs(10),
        ),
    )
    .await
    .expect("the search answers in time")
    .expect("the search succeeds");
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

    let children = children_of(up.pid);
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
    std::fs::read_to_string(up.log_path().expect("up logs to a file")).unwrap_or_default()
}

#[tokio::test]
async fn up_builds_serves_stops_every_child_and_reuses_its_index() {
    let binary = fanout_binary!();
    let scratch = ScratchDir::new(binary.scratch_root(), "up").expect("scratch folder");
    let data_dir = scratch.path().join("data");

    let first_logs = scratch.path().join("first");
    let first = up_round(&binary, &data_dir, &first_logs, false).await;
    assert!(
        !first.contains("using the index in"),
        "the first up builds its index:\n{first}"
    );
    let second_logs = scratch.path().join("second");
    let second = up_round(&binary, &data_dir, &second_logs, true).await;
    assert!(
        second.contains("using the index in"),
        "the second up reuses the index:\n{second}"
    );
}

/// Searches without pause until `stop`; the statuses of the failures, and
/// how many searches were sent.
async fn search_until(
    client: SearchClient<tonic::transport::Channel>,
    stop: Arc<AtomicBool>,
) -> (usize, Vec<String>) {
    let (mut sent, mut failures) = (0, Vec::new());
    while !stop.load(Ordering::SeqCst) {
        let request = SearchRequest {
            query: "vitamin D deficiency and bone fractures".into(),
            k: 5,
            ..Default::default()
        };
        sent += 1;
        match search(&client, request, Duration::from_secs(2)).await {
            Ok(response) => {
                let coverage = response.coverage.unwrap_or_default();
                if coverage.partial {
                    failures.push(format!("partial: {coverage:?}"));
                }
            }
            Err(status) => failures.push(format!("{:?}: {}", status.code(), status.message())),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (sent, failures)
}

/// Waits until `up` again runs as many children as it started with, one of
/// them new (not in `before`), and returns the new one's pid.
async fn wait_for_restart(up: &ClusterProcess, before: &[u32]) -> u32 {
    within(Duration::from_secs(30), "the child's restart", async {
        loop {
            let children = children_of(up.pid);
            // A child just forked shows up's own command line until it execs.
            let new_child = children.iter().copied().find(|pid| {
                !before.contains(pid)
                    && fanout_tests::processes::command_line(*pid)
                        .get(1)
                        .is_some_and(|subcommand| subcommand != "up")
            });
            if children.len() == SHARDS * REPLICAS + 2
                && let Some(pid) = new_child
            {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("up restarts the child")
}

#[tokio::test]
async fn up_restarts_a_child_that_dies_while_the_others_keep_answering() {
    let binary = fanout_binary!();
    let scratch = ScratchDir::new(binary.scratch_root(), "up-supervision").expect("scratch folder");
    let data_dir = scratch.path().join("data");
    let up = binary
        .start(Role::Up, &up_args(&data_dir), scratch.path(), START_LIMIT)
        .await
        .expect("fanout up starts");
    let channel = within(
        Duration::from_secs(10),
        "connecting",
        health::connect(up.addr),
    )
    .await
    .and_then(|connected| connected)
    .expect("the root accepts connections");
    let client = SearchClient::new(channel);

    // A leaf and the merger die under load: nothing fails meanwhile (the
    // leaf's sibling takes its shard, the root merges in-process).
    let stop = Arc::new(AtomicBool::new(false));
    let searching = tokio::spawn(search_until(client.clone(), Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    for role in ["leaf", "merger"] {
        let pid = child_running(up.pid, role).expect("up runs the child");
        let before = children_of(up.pid);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL)
            .expect("SIGKILL reaches the child");
        let restarted = wait_for_restart(&up, &before).await;
        assert_eq!(
            fanout_tests::processes::command_line(restarted)
                .get(1)
                .map(String::as_str),
            Some(role),
            "the new child is a {role}"
        );
        println!("{role} pid {pid} killed, restarted as pid {restarted}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let (sent, failures) = searching.await.expect("the search loop ends");
    println!("{sent} searches while a leaf and the merger died and came back");
    assert!(sent > 20, "too few searches ({sent}) to test anything");
    assert!(failures.is_empty(), "searches failed: {failures:?}");

    // The root dies: searches fail until it is back, at the same address.
    let root = child_running(up.pid, "root").expect("up runs a root");
    let before = children_of(up.pid);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(root as i32), Signal::SIGKILL)
        .expect("SIGKILL reaches the root");
    wait_for_restart(&up, &before).await;
    let answered = within(
        Duration::from_secs(30),
        "a search after the root's restart",
        async {
            loop {
                let request = SearchRequest {
                    query: "vitamin D".into(),
                    ..Default::default()
                };
                if let Ok(response) = search(&client, request, Duration::from_secs(2)).await {
                    return response;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        },
    )
    .await
    .expect("the restarted root answers");
    assert!(!answered.hits.is_empty());

    up.signal(Signal::SIGINT).expect("SIGINT reaches up");
    up.wait_for_exit(STOP_LIMIT)
        .await
        .expect("up exits after SIGINT");
    let log =
        std::fs::read_to_string(up.log_path().expect("up logs to a file")).unwrap_or_default();
    for role in ["leaf", "merger", "root"] {
        assert!(
            log.lines()
                .any(|line| line.contains("restarted") && line.starts_with(role)),
            "up's log tells of the {role}'s restart:\n{log}"
        );
    }
}

/// `fanout up --tls`: a CA made for the run, TLS on every hop; the root
/// answers a client that trusts the CA, and not a plaintext one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_with_tls_answers_only_over_tls() {
    let binary = fanout_binary!();
    let scratch = ScratchDir::new(binary.scratch_root(), "up-tls").expect("scratch folder");
    let data_dir = scratch.path().join("data");
    let mut args = up_args(&data_dir);
    args.push("--tls".into());
    let up = binary
        .start(Role::Up, &args, scratch.path(), START_LIMIT)
        .await
        .expect("fanout up --tls starts and announces its endpoint");
    let ca = data_dir.join("tls").join("ca.pem");
    let root = format!("http://{}", up.addr);
    let search = |tls: bool| {
        let mut args = vec!["search", "--addr", &root, "--timeout-ms", "10000"];
        let ca = ca.to_str().expect("UTF-8");
        if tls {
            args.extend(["--tls-ca", ca]);
        }
        args.push("vitamin D");
        tokio::task::block_in_place(|| binary.run(&args, Duration::from_secs(30)))
            .expect("fanout search runs")
    };
    let over_tls = search(true);
    assert_eq!(over_tls.status.code(), Some(0), "{}", over_tls.combined());
    let plaintext = search(false);
    assert_eq!(
        plaintext.status.code(),
        Some(1),
        "a plaintext search was answered: {}",
        plaintext.combined()
    );
    let log = std::fs::read_to_string(up.log_path().expect("a log")).unwrap_or_default();
    assert!(log.contains("over TLS"), "{log}");
    up.signal(Signal::SIGINT).expect("SIGINT");
    up.wait_for_exit(STOP_LIMIT).await.expect("up stops");
}
