//! `fanout loadgen scenario` end to end: a small scenario file (SciFact, 2
//! shards x 2 replicas with seeded stragglers, hedging off vs a fixed 1 ms
//! hedge, two rounds, an ideal bound) run by the real binary, which starts
//! its own cluster. The outputs must exist, the variants must have run
//! interleaved, and the table's figures must add up to the runs' reports.
//! Interrupted, a scenario stops the processes it started.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fanout_tests::processes::{children_of, is_alive};
use fanout_tests::{ScratchDir, fanout_binary, workspace_root};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn u64_at(value: &Value, key: &str) -> u64 {
    value[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a count: {value}"))
}

fn row<'a>(summary: &'a Value, variant: &str) -> &'a Value {
    summary["rows"]
        .as_array()
        .expect("rows is a list")
        .iter()
        .find(|row| row["variant"] == variant)
        .unwrap_or_else(|| panic!("no row for {variant}: {summary}"))
}

#[tokio::test]
async fn a_scenario_starts_its_cluster_interleaves_its_variants_and_adds_up() {
    let binary = fanout_binary!();
    let scratch = ScratchDir::new(binary.scratch_root(), "scenario").expect("scratch folder");
    let data = workspace_root().join("data/beir-scifact");
    let scenario = format!(
        r#"
name = "e2e"
rounds = 2

[cluster]
corpus = "{corpus}"
id_field = "_id"
shards = 2
replicas = 2
search_threads = 1
leaf_args = ["--fault", "seed={{leaf}}", "--fault", "straggler=0.2x6"]

[load]
rate = 20
warmup = "500ms"
duration = "2s"
queries = "{queries}"

[[variant]]
name = "off"
root_args = ["--hedge", "off"]

[[variant]]
name = "hedged"
root_args = ["--hedge", "fixed:1"]

[compare]
baseline = "off"
ideal = [{{ variant = "hedged", from = "off" }}]
"#,
        corpus = data.join("corpus.jsonl.gz").display(),
        queries = data.join("queries.jsonl").display(),
    );
    let file = scratch.path().join("e2e.toml");
    std::fs::write(&file, scenario).expect("scenario written");
    let out = scratch.path().join("out");
    let data_dir = scratch.path().join("indexes");

    let output = binary
        .run(
            [
                "loadgen".as_ref(),
                "scenario".as_ref(),
                file.as_os_str(),
                "--out".as_ref(),
                out.as_os_str(),
                "--data-dir".as_ref(),
                data_dir.as_os_str(),
            ],
            Duration::from_secs(180),
        )
        .expect("the scenario runs");
    output
        .expect_success("fanout loadgen scenario")
        .expect("the scenario succeeds");
    assert!(
        output.stdout.contains("| variant |") && output.stdout.contains("| hedged |"),
        "the table is printed:\n{}",
        output.stdout
    );

    // Every run has its report and interval log; the rounds alternate variants.
    let runs = ["off-r1", "hedged-r1", "off-r2", "hedged-r2"];
    let reports: Vec<Value> = runs
        .iter()
        .map(|run| {
            assert!(out.join(format!("runs/{run}.hlog")).is_file(), "{run}.hlog");
            read_json(&out.join(format!("runs/{run}.json")))
        })
        .collect();
    let starts: Vec<u64> = reports
        .iter()
        .map(|report| u64_at(report, "started_at_unix_ms"))
        .collect();
    assert!(
        starts.windows(2).all(|pair| pair[0] < pair[1]),
        "runs went off r1, hedged r1, off r2, hedged r2: {starts:?}"
    );

    let summary = read_json(&out.join("summary.json"));
    for (variant, own_reports) in [
        ("off", [&reports[0], &reports[2]]),
        ("hedged", [&reports[1], &reports[3]]),
    ] {
        let row = row(&summary, variant);
        let requests: u64 = own_reports
            .iter()
            .map(|report| u64_at(report, "count"))
            .sum();
        assert_eq!(
            u64_at(row, "requests"),
            requests,
            "{variant}: rounds merged"
        );
        assert_eq!(u64_at(row, "errors"), 0, "{variant}: {row}");
        assert_eq!(u64_at(row, "rounds"), 2);
        let hedges: u64 = own_reports
            .iter()
            .map(|report| u64_at(&report["coverage"], "hedges"))
            .sum();
        assert_eq!(u64_at(row, "hedges"), hedges, "{variant}: hedges summed");
    }
    let off = row(&summary, "off");
    let hedged = row(&summary, "hedged");
    assert_eq!(u64_at(off, "hedges"), 0, "hedging off sends no hedge");
    assert_eq!(off["extra_calls"].as_f64(), Some(0.0));
    // One call in five straggles at 6x a body of well over 1 ms: the fixed
    // 1 ms hedge fires on many calls.
    assert!(u64_at(hedged, "hedges") > 0, "{hedged}");
    let extra_calls = hedged["extra_calls"].as_f64().expect("a fraction");
    assert!(extra_calls > 0.0 && extra_calls <= 1.0, "{hedged}");
    assert!(
        off["vs_baseline"]["p99"].as_f64() == Some(1.0),
        "the baseline over itself is 1"
    );

    let ideal = &summary["ideals"][0];
    assert_eq!(ideal["variant"], "hedged");
    assert!(u64_at(ideal, "requests_resampled") > 0, "{ideal}");
    assert_eq!(ideal["hedge_rate"].as_f64(), Some(extra_calls));
    // Each resampled request is at most as slow as its recorded self.
    let ideal_p99 = u64_at(&ideal["ideal"], "p99_us");
    let off_p99 = u64_at(&off["latency"], "p99_us");
    assert!(
        ideal_p99 as f64 <= off_p99 as f64 * 1.01,
        "ideal p99 {ideal_p99} µs, off p99 {off_p99} µs"
    );

    let table = std::fs::read_to_string(out.join("comparison.md")).expect("comparison.md");
    assert!(table.contains("Ideal hedging bound"), "{table}");
    let png = std::fs::read(out.join("percentiles.png")).expect("the plot is written");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    for log in ["leaf-0-0.log", "leaf-1-1.log", "root.log", "root-1.log"] {
        assert!(
            out.join("logs/cluster-0").join(log).is_file(),
            "{log} is kept"
        );
    }
}

#[test]
fn a_bad_scenario_is_refused_before_anything_starts() {
    let binary = fanout_binary!();
    let scratch = ScratchDir::new(binary.scratch_root(), "scenario-bad").expect("scratch folder");
    let file = scratch.path().join("bad.toml");
    std::fs::write(
        &file,
        "name = \"bad\"\n[cluster]\ncorpus = \"c.jsonl\"\n[load]\nrate = 10\nqueries = \"q.txt\"\n\
         [[variant]]\nname = \"a\"\nshards = 0\n",
    )
    .expect("scenario written");
    let output = binary
        .run(
            ["loadgen".as_ref(), "scenario".as_ref(), file.as_os_str()],
            Duration::from_secs(30),
        )
        .expect("the command runs");
    assert_eq!(output.status.code(), Some(64), "{}", output.combined());
    assert!(
        output.stderr.contains("bad.toml") && output.stderr.contains("shards must be 1..=64"),
        "the error names the file and the key: {}",
        output.stderr
    );
    // The files it names are checked too.
    std::fs::write(
        &file,
        "name = \"bad\"\n[cluster]\ncorpus = \"missing.jsonl\"\n[load]\nrate = 10\nqueries = \"q.txt\"\n\
         [[variant]]\nname = \"a\"\n",
    )
    .expect("scenario written");
    let output = binary
        .run(
            [
                "loadgen".as_ref(),
                "scenario".as_ref(),
                file.as_os_str(),
                "--check".as_ref(),
            ],
            Duration::from_secs(30),
        )
        .expect("the command runs");
    assert_eq!(output.status.code(), Some(64), "{}", output.combined());
    assert!(output.stderr.contains("missing.jsonl"), "{}", output.stderr);
}

#[test]
fn an_interrupted_scenario_stops_its_cluster() {
    let binary = fanout_binary!();
    let scratch =
        ScratchDir::new(binary.scratch_root(), "scenario-interrupted").expect("scratch folder");
    let data = workspace_root().join("data/beir-scifact");
    let scenario = format!(
        "name = \"interrupted\"\nrounds = 1\n[cluster]\ncorpus = \"{}\"\nid_field = \"_id\"\n\
         shards = 1\nreplicas = 2\n[load]\nrate = 5\nwarmup = \"1s\"\nduration = \"60s\"\n\
         queries = \"{}\"\n[[variant]]\nname = \"only\"\n",
        data.join("corpus.jsonl.gz").display(),
        data.join("queries.jsonl").display(),
    );
    let file = scratch.path().join("interrupted.toml");
    std::fs::write(&file, scenario).expect("scenario written");
    let mut command = binary.command();
    command
        .args(["loadgen".as_ref(), "scenario".as_ref(), file.as_os_str()])
        .arg("--out")
        .arg(scratch.path().join("out"))
        .arg("--data-dir")
        .arg(scratch.path().join("indexes"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("the scenario starts");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (up_sender, up) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("cluster 0 is up") {
                let _ = up_sender.send(());
            }
        }
    });
    if up.recv_timeout(Duration::from_secs(120)).is_err() {
        let _ = child.kill();
        panic!("the scenario's cluster did not come up");
    }
    let children = children_of(child.id());
    assert_eq!(
        children.len(),
        3,
        "two leaves and a root run under the scenario: {children:?}"
    );

    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).expect("SIGINT is sent");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("the scenario can be waited for") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the scenario still runs 30 s after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        !status.success(),
        "an interrupted scenario is a failure: {status:?}"
    );
    let alive: Vec<u32> = children.into_iter().filter(|pid| is_alive(*pid)).collect();
    assert!(alive.is_empty(), "processes left behind: {alive:?}");
}
