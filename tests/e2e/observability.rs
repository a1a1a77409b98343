//! The dashboard and the alert rules of deploy/observability against the
//! real tools, Debian's `promtool` and `prometheus` (package `prometheus`,
//! which `.ci/run` installs). Both tests run the checks of
//! deploy/observability/tests/test_observability.py (standard-library
//! Python, also runnable on its own) with this build's binary:
//!
//! - `RulesTest`: `promtool check rules` on fanout-alerts.yaml, `promtool
//!   test rules` on fanout-alerts.test.yaml (and every alert has a case
//!   there), `promtool check config` on the scrape config, as shipped and as
//!   filled from `fanout up` output.
//! - `PrometheusServerTest`: a real Prometheus (its own config, a free port,
//!   its TSDB in a scratch folder, a 1 s scrape interval, the rules loaded)
//!   scrapes `fanout up --metrics` (2 shards x 2 replicas) while `fanout
//!   loadgen run --rate 40 --duration 12s` drives the root; read back through
//!   `/api/v1/query`, `rate(fanout_root_requests_total{code="OK"}[10s])` must
//!   be within 25% of the load generator's OK rate and
//!   `histogram_quantile(0.5, ...)` within the bucket bounds of its median;
//!   then every rule evaluates without error, none fires, the series
//!   Prometheus makes itself (`up`) exist for every target, and every
//!   dashboard query is valid PromQL.
//!
//! The rest of that suite (the dashboard's structure, and every metric name
//! the dashboard's and the rules' PromQL use present in a live exposition)
//! runs in tests/e2e/kubernetes.rs.
//!
//! The tools are looked up as `PROMTOOL_BIN` / `PROMETHEUS_BIN`, else on
//! PATH. Where one is missing the test fails, saying how to install it,
//! unless `FANOUT_SKIP_PROMETHEUS=1` is set: then it passes and says on
//! stderr what it did not check.
//!
//! Cleanup: the suite starts `fanout up`, Prometheus and the load generator
//! with `setpriv --pdeathsig TERM`, and stops them in its cleanups; the
//! interpreter itself is started the same way here and killed after its time
//! limit, so a killed or timed-out run leaves no process behind.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fanout_tests::binary::run_bounded;
use fanout_tests::fanout_binary;

const SKIP_VARIABLE: &str = "FANOUT_SKIP_PROMETHEUS";

/// This checkout: the folder above this package's (cli/), from this test's
/// own manifest path (not the harness crate's `workspace_root()`, which
/// names whichever checkout last built that crate where two checkouts share
/// a target folder).
fn checkout() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    path.canonicalize().unwrap_or(path)
}

/// `$variable` (when it names a file), else `name` on PATH.
fn tool(variable: &str, name: &str) -> Option<PathBuf> {
    match std::env::var_os(variable).filter(|path| !path.is_empty()) {
        Some(path) => Some(PathBuf::from(path)).filter(|path| path.is_file()),
        None => on_path(name),
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// The tools as (variable, path), or None when one is missing and
/// `FANOUT_SKIP_PROMETHEUS=1` says to skip; panics when one is missing
/// otherwise.
fn required_tools(tools: &[(&'static str, &'static str)]) -> Option<Vec<(&'static str, PathBuf)>> {
    let found: Vec<_> = tools
        .iter()
        .map(|(variable, name)| (*variable, *name, tool(variable, name)))
        .collect();
    let missing: Vec<String> = found
        .iter()
        .filter(|(_, _, path)| path.is_none())
        .map(|(variable, name, _)| match std::env::var_os(variable) {
            Some(path) if !path.is_empty() => {
                format!("{name} ({variable}={} is no file)", path.to_string_lossy())
            }
            _ => format!("{name} (not on PATH, {variable} unset)"),
        })
        .collect();
    if missing.is_empty() {
        return Some(
            found
                .into_iter()
                .map(|(variable, _, path)| (variable, path.expect("found")))
                .collect(),
        );
    }
    let how = "install Debian's prometheus package (apt-get install -y --no-install-recommends \
               prometheus; .ci/run does), or point PROMTOOL_BIN / PROMETHEUS_BIN at Prometheus 2.x tools";
    if std::env::var(SKIP_VARIABLE).as_deref() == Ok("1") {
        eprintln!(
            "\n*** {SKIP_VARIABLE}=1: NOT CHECKED: missing {}. To check: {how}.\n",
            missing.join(", ")
        );
        return None;
    }
    panic!(
        "missing {}: {how}. To skip this check on purpose, set {SKIP_VARIABLE}=1.",
        missing.join(", ")
    );
}

/// `$FANOUT_PYTHON`, else the workspace's .venv, else `python3` (the suite
/// needs only the standard library).
fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("FANOUT_PYTHON") {
        return PathBuf::from(python);
    }
    let venv = checkout().join(".venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// Runs the suite's test classes `classes` (bounded by `limit`), checks that
/// it passed with each of `tests` run and nothing skipped, and returns its
/// report.
fn run_suite(
    classes: &[&str],
    tests: &[&str],
    tools: &[(&'static str, PathBuf)],
    limit: Duration,
) -> String {
    let binary = fanout_binary!();
    let mut argv: Vec<OsString> = Vec::new();
    // The interpreter gets SIGTERM if this thread dies first (and passes it
    // on the same way to what it started).
    let setpriv = on_path("setpriv");
    if let Some(setpriv) = &setpriv {
        argv.extend([
            setpriv.into(),
            "--pdeathsig".into(),
            "TERM".into(),
            "--".into(),
        ]);
    }
    argv.push(python().into());
    argv.extend(
        [
            "-m",
            "unittest",
            "discover",
            "-v",
            "-s",
            "deploy/observability/tests",
        ]
        .map(OsString::from),
    );
    for class in classes {
        argv.extend(["-k".into(), OsString::from(class)]);
    }
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .current_dir(checkout())
        .env("FANOUT_BIN", binary.path())
        .env("PYTHONDONTWRITEBYTECODE", "1");
    for (variable, path) in tools {
        command.env(variable, path);
    }
    let started = Instant::now();
    let output = run_bounded(command, limit).expect("the observability checks run in time");
    let report = output.combined();
    println!("{report}");
    assert!(
        output.status.success(),
        "deploy/observability/tests ({}) failed:\n{report}",
        classes.join(", ")
    );
    let not_run: Vec<&&str> = tests
        .iter()
        .filter(|test| !report.contains(&format!("{test} (")))
        .collect();
    assert!(
        not_run.is_empty() && !report.contains("skipped"),
        "checks skipped or not run ({not_run:?}):\n{report}"
    );
    println!(
        "deploy/observability/tests {} passed in {:.1?}",
        classes.join(", "),
        started.elapsed()
    );
    report
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests_pass() {
    let Some(tools) = required_tools(&[("PROMTOOL_BIN", "promtool")]) else {
        return;
    };
    run_suite(
        &["RulesTest"],
        &[
            "test_check_rules",
            "test_rule_unit_tests",
            "test_every_alert_has_a_unit_test",
            "test_check_config",
        ],
        &tools,
        Duration::from_secs(120),
    );
}

#[test]
fn a_real_prometheus_scraping_fanout_up_reads_what_the_load_generator_measured() {
    let Some(tools) = required_tools(&[
        ("PROMTOOL_BIN", "promtool"),
        ("PROMETHEUS_BIN", "prometheus"),
    ]) else {
        return;
    };
    let report = run_suite(
        &["PrometheusServerTest"],
        &["test_prometheus_agrees_with_loadgen"],
        &tools,
        Duration::from_secs(600),
    );
    // The figures, for the log.
    for line in report
        .lines()
        .filter(|line| line.starts_with("rate: ") || line.starts_with("p50: "))
    {
        println!("{line}");
    }
}
