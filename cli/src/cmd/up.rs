//! `fanout up`: the embedded default. One command builds the index of the
//! bundled corpus (first run only), starts S x R leaves, a merger and a root as
//! child processes of this binary, waits until the root is SERVING, prints the
//! endpoint and example commands, restarts any child that dies (with a
//! backoff, where it listened), and stops everything on Ctrl-C or SIGTERM.
//!
//! The index cache and the process supervision are `fanout-cluster`'s, shared
//! with the benchmark scenarios.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use fanout_cluster::certs::LocalTls;
use fanout_cluster::signals::StopSignals;
use fanout_cluster::workspace::{default_data_dir, find_in_workspace, workspace_root};
use fanout_cluster::{
    ChildOutput, Cluster, IndexSource, Launcher, ReadyIndex, RestartBackoff, Role,
    SEARCH_SERVICE_NAME, current_executable, ensure_index, root_args, start_leaves,
    start_merger_with, wait_until_serving_over,
};
use fanout_runtime::announce;
use fanout_runtime::tls::ClientTls;
use tokio::time::Instant;

use crate::cmd::{LogFormatArg, available_cores, human, index};

/// Longest wait for every child to announce its address and the root to be SERVING.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long each group of children may take to stop after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Exit status after an interrupted start (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: u8 = 130;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// JSON Lines corpus to serve; a relative path is looked up in the current
    /// directory, then in the fanout workspace.
    #[arg(
        long,
        default_value = "data/debian-descriptions.jsonl.gz",
        env = "FANOUT_CORPUS"
    )]
    pub corpus: PathBuf,
    /// Number of shards.
    #[arg(long, default_value_t = 4, env = "FANOUT_SHARDS",
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub shards: u32,
    /// Leaf processes per shard.
    #[arg(long, default_value_t = 2, env = "FANOUT_REPLICAS",
          value_parser = clap::value_parser!(u32).range(1..=8))]
    pub replicas: u32,
    /// Address of the root (the cluster's endpoint); leaves and merger take free ports.
    #[arg(long, default_value = "127.0.0.1:50051", env = "FANOUT_LISTEN")]
    pub listen: SocketAddr,
    /// Where indexes are kept between runs [default: .fanout in the fanout workspace].
    #[arg(long, env = "FANOUT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Merge inside the root instead of starting a merger process.
    #[arg(long, env = "FANOUT_EMBEDDED_MERGER")]
    pub embedded_merger: bool,
    /// JSON field holding the document id.
    #[arg(long, default_value = "id", env = "FANOUT_ID_FIELD")]
    pub id_field: String,
    /// JSON field holding the title.
    #[arg(long, default_value = "title", env = "FANOUT_TITLE_FIELD")]
    pub title_field: String,
    /// JSON field holding the body text.
    #[arg(long, default_value = "text", env = "FANOUT_TEXT_FIELD")]
    pub text_field: String,
    /// Build the index again even when a previous run's index fits.
    #[arg(long, env = "FANOUT_REBUILD")]
    pub rebuild: bool,
    /// Serve Prometheus metrics (`GET /metrics`) from the root and every leaf,
    /// each on a free port, listed once the cluster is up.
    #[arg(long, env = "FANOUT_UP_METRICS")]
    pub metrics: bool,
    /// TLS on every hop, with a CA made for this run (in the data
    /// directory's tls/): mutual TLS between the root and its leaves and
    /// merger; the root's API over TLS (clients trust tls/ca.pem).
    #[arg(long, env = "FANOUT_UP_TLS")]
    pub tls: bool,
}

/// Validated `fanout up`.
pub struct UpPlan {
    source: IndexSource,
    data_dir: PathBuf,
    replicas: u32,
    listen: SocketAddr,
    embedded_merger: bool,
    rebuild: bool,
    metrics: bool,
    tls: bool,
}

impl UpArgs {
    pub fn validate(self) -> anyhow::Result<UpPlan> {
        let corpus = resolve_in_workspace(&self.corpus)?;
        let data_dir = self.data_dir.unwrap_or_else(default_data_dir);
        if data_dir.exists() && !data_dir.is_dir() {
            bail!("--data-dir {} is not a directory", data_dir.display());
        }
        Ok(UpPlan {
            source: IndexSource {
                corpus,
                shards: self.shards,
                id_field: self.id_field,
                title_field: self.title_field,
                text_field: self.text_field,
            },
            data_dir,
            replicas: self.replicas,
            listen: self.listen,
            embedded_merger: self.embedded_merger,
            rebuild: self.rebuild,
            metrics: self.metrics,
            tls: self.tls,
        })
    }
}

/// `path` if it names a file from here, else the same path in the workspace.
fn resolve_in_workspace(path: &Path) -> anyhow::Result<PathBuf> {
    if let Some(found) = find_in_workspace(path) {
        return Ok(found);
    }
    match workspace_root().filter(|_| path.is_relative()) {
        Some(root) => bail!(
            "--corpus {} is neither in the current directory nor in {}",
            path.display(),
            root.display()
        ),
        None => bail!("--corpus {} is not a readable file", path.display()),
    }
}

/// What tells the processes `up` starts to export their spans: the
/// standard OTLP variable, and fanout's for the ratio (the launcher strips
/// `up`'s own `FANOUT_*` variables and sets these after).
fn trace_environment(
    traces: &fanout_runtime::telemetry::TraceSettings,
) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    let mut env = Vec::new();
    if let Some(endpoint) = &traces.otlp_endpoint {
        env.push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.into()));
    }
    if let Some(ratio) = traces.sample_ratio {
        env.push(("FANOUT_TRACE_SAMPLE_RATIO".into(), ratio.to_string().into()));
    }
    env
}

pub async fn run(
    plan: UpPlan,
    log_format: LogFormatArg,
    traces: &fanout_runtime::telemetry::TraceSettings,
) -> anyhow::Result<ExitCode> {
    let mut signals = StopSignals::register()?;
    if plan.listen.port() != 0 {
        // Fail now rather than after building the index and starting the leaves.
        std::net::TcpListener::bind(plan.listen).with_context(|| {
            format!(
                "cannot listen on {} (another `fanout up`?); pass --listen with another address",
                plan.listen
            )
        })?;
    }
    let ready = tokio::select! {
        ready = ensure_index(&plan.source, &plan.data_dir, plan.rebuild, available_cores()) => ready?,
        signal = signals.recv() => {
            eprintln!("{signal}: index build interrupted");
            return Ok(ExitCode::from(EXIT_INTERRUPTED));
        }
    };
    match &ready.built_now {
        Some(report) => index::print_report(report),
        None => eprintln!("using the index in {}", ready.dir.display()),
    }

    let mut launcher = Launcher::new(
        current_executable()?,
        log_format.as_flag_value(),
        ChildOutput::Forward {
            prefix: log_format == LogFormatArg::Text,
        },
    );
    launcher.env.extend(trace_environment(traces));
    let mut cluster = Cluster::default();
    let started = tokio::select! {
        started = start_cluster(&mut cluster, &launcher, &plan, &ready) => started,
        signal = signals.recv() => {
            eprintln!("{signal}: stopping {} processes", cluster.running_count());
            cluster.stop(STOP_GRACE).await;
            return Ok(ExitCode::from(EXIT_INTERRUPTED));
        }
    };
    let root_addr = match started {
        Ok(root_addr) => root_addr,
        Err(error) => {
            cluster.stop(STOP_GRACE).await;
            return Err(error.context("the cluster did not start"));
        }
    };
    let tls_ca = plan.tls.then(|| plan.data_dir.join("tls").join("ca.pem"));
    print_cluster(
        &cluster,
        &ready,
        root_addr,
        plan.replicas,
        tls_ca.as_deref(),
    );
    announce::announce_listening("up", root_addr);
    if let Some(metrics) = cluster
        .process(Role::ROOT)
        .and_then(|root| root.metrics_addr())
    {
        // The root's endpoint is the cluster's: scripts find it as up's own.
        announce::announce_metrics("up", metrics);
    }

    let outcome = supervise(&mut cluster, &launcher, &mut signals, plan.replicas).await;
    cluster.stop(STOP_GRACE).await;
    eprintln!("every fanout process has stopped");
    Ok(outcome)
}

/// Keeps the cluster running until a stop signal: a child that dies is
/// started again where it listened, after a backoff ([`RestartBackoff`]),
/// while the others go on serving (a dead leaf's siblings take its shard,
/// a dead merger's merges fall back to the root's embedded one).
async fn supervise(
    cluster: &mut Cluster,
    launcher: &Launcher,
    signals: &mut StopSignals,
    replicas: u32,
) -> ExitCode {
    let mut backoff = RestartBackoff::default();
    // Children waiting to be started again: when, and which.
    let mut restarts: Vec<(Instant, usize)> = Vec::new();
    loop {
        let next_restart = restarts.iter().map(|(at, _)| *at).min();
        tokio::select! {
            signal = signals.recv() => {
                eprintln!("{signal}: stopping {} processes", cluster.running_count());
                return ExitCode::SUCCESS;
            }
            (index, status) = cluster.next_exit() => {
                let process = &cluster.processes[index];
                let what = format!("{} (pid {}, {})", process.role.label(), process.pid, process.addr);
                let (delay, count) = backoff.next_delay(process.role, process.announced_at.elapsed());
                eprintln!(
                    "{what} exited unexpectedly ({status}); {}; restarting it in {} (restart {count} in a row)",
                    what_its_loss_means(cluster, process.role, replicas),
                    human::micros(delay.as_micros() as u64),
                );
                restarts.push((Instant::now() + delay, index));
            }
            () = sleep_until_or_forever(next_restart) => {
                let now = Instant::now();
                let due: Vec<usize> = restarts.iter().filter(|(at, _)| *at <= now).map(|(_, index)| *index).collect();
                restarts.retain(|(at, _)| *at > now);
                for index in due {
                    let role = cluster.processes[index].role;
                    let deadline = Instant::now() + STARTUP_TIMEOUT;
                    match cluster.restart(index, launcher, deadline).await {
                        Ok(()) => {
                            let process = &cluster.processes[index];
                            eprintln!("{} restarted (pid {}, {})", role.label(), process.pid, process.addr);
                        }
                        Err(error) => {
                            let (delay, count) = backoff.next_delay(role, Duration::ZERO);
                            eprintln!(
                                "{} did not restart ({error:#}); trying again in {} (restart {count} in a row)",
                                role.label(),
                                human::micros(delay.as_micros() as u64),
                            );
                            restarts.push((Instant::now() + delay, index));
                        }
                    }
                }
            }
        }
    }
}

async fn sleep_until_or_forever(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What the cluster does without `role` until it is back.
fn what_its_loss_means(cluster: &Cluster, role: Role, replicas: u32) -> String {
    match role {
        Role::Leaf { shard_id, .. } => {
            let replicas_left = cluster
                .leaves_of_shard(shard_id)
                .filter(|leaf| leaf.is_running())
                .count();
            if replicas_left == 0 {
                format!(
                    "shard {shard_id} has no replica left: searches fail unless --allow-partial"
                )
            } else {
                format!("shard {shard_id} goes on with {replicas_left} of {replicas} replicas")
            }
        }
        Role::Merger => "the root merges in-process meanwhile".to_owned(),
        Role::Root { .. } => "searches fail until it is back".to_owned(),
        // `up` starts no `up`.
        Role::Up => "its cluster is gone until it is back".to_owned(),
    }
}

/// Starts leaves and merger, then the root over their addresses; returns the
/// root's address once its Search service is SERVING.
async fn start_cluster(
    cluster: &mut Cluster,
    launcher: &Launcher,
    plan: &UpPlan,
    ready: &ReadyIndex,
) -> anyhow::Result<SocketAddr> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let tls = if plan.tls {
        Some(LocalTls::make(&plan.data_dir.join("tls"), "fanout up")?)
    } else {
        None
    };
    let server_tls = |mutual: bool| -> Vec<OsString> {
        tls.as_ref()
            .map(|tls| tls.server_args(mutual))
            .unwrap_or_default()
    };
    let leaf_count = ready.manifest.shard_count * plan.replicas;
    let search_threads = (available_cores() / leaf_count as usize).max(1);
    let metrics_args = || {
        let args = ["--metrics-listen", "127.0.0.1:0"].map(OsString::from);
        if plan.metrics {
            args.to_vec()
        } else {
            Vec::new()
        }
    };
    start_leaves(cluster, launcher, ready, plan.replicas, |_, _| {
        let mut args = vec![
            OsString::from("--search-threads"),
            OsString::from(search_threads.to_string()),
        ];
        args.extend(metrics_args());
        args.extend(server_tls(true));
        args
    })?;
    if !plan.embedded_merger {
        start_merger_with(cluster, launcher, &server_tls(true))?;
    }
    // Every process starts at once; their announce lines are read in turn.
    cluster.admit_all(deadline).await?;

    let mut args = root_args(cluster, ready.manifest.shard_count, plan.listen)?;
    if !plan.embedded_merger {
        // `fanout merger` is the top-k merge: the root can stand in for it.
        args.extend(["--merger-fallback", "embedded"].map(OsString::from));
    }
    args.extend(metrics_args());
    if let Some(tls) = &tls {
        args.extend(tls.root_args());
    }
    cluster.start(launcher, Role::ROOT, &args)?;
    cluster.admit_all(deadline).await?;
    let root_addr = cluster
        .process(Role::ROOT)
        .context("the root is missing from the cluster")?
        .addr;
    let client_tls = match &tls {
        Some(tls) => Some(ClientTls::load(&tls.ca, None).context("the cluster's CA")?),
        None => None,
    };
    wait_until_serving_over(
        root_addr,
        client_tls.as_ref(),
        SEARCH_SERVICE_NAME,
        deadline,
    )
    .await?;
    if plan.metrics {
        wait_for_metrics_lines(cluster, deadline).await;
    }
    Ok(root_addr)
}

/// The metrics line follows each child's listening line at once; waits (a
/// little, boundedly) until every root and leaf has said where it serves.
async fn wait_for_metrics_lines(cluster: &Cluster, deadline: Instant) {
    let missing = || {
        cluster
            .processes
            .iter()
            .filter(|process| process.role != Role::Merger)
            .any(|process| process.metrics_addr().is_none())
    };
    let limit = deadline.min(Instant::now() + Duration::from_secs(2));
    while missing() && Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The endpoint, who serves what, and commands to try.
fn print_cluster(
    cluster: &Cluster,
    ready: &ReadyIndex,
    root_addr: SocketAddr,
    replicas: u32,
    tls_ca: Option<&Path>,
) {
    let manifest = &ready.manifest;
    let root_pid = cluster.process(Role::ROOT).map_or(0, |root| root.pid);
    println!();
    println!(
        "fanout is up: {} docs in {} shards x {replicas} replicas",
        human::thousands(manifest.doc_count),
        manifest.shard_count,
    );
    match tls_ca {
        None => println!("  endpoint  http://{root_addr}  (root, pid {root_pid})"),
        Some(ca) => println!(
            "  endpoint  {root_addr} over TLS, CA {}  (root, pid {root_pid}; mutual TLS to leaves and merger)",
            ca.display()
        ),
    }
    let metrics_of = |role| {
        cluster
            .process(role)
            .and_then(|process| process.metrics_addr())
    };
    if let Some(metrics) = metrics_of(Role::ROOT) {
        println!("  metrics   http://{metrics}/metrics  (root)");
    }
    match cluster.process(Role::Merger) {
        Some(merger) => println!("  merger    http://{}  (pid {})", merger.addr, merger.pid),
        None => println!("  merger    embedded in the root"),
    }
    for shard in &manifest.shards {
        let leaves: Vec<String> = cluster
            .leaves_of_shard(shard.shard_id)
            .map(|leaf| match leaf.metrics_addr() {
                Some(metrics) => format!("{} (pid {}, metrics {metrics})", leaf.addr, leaf.pid),
                None => format!("{} (pid {})", leaf.addr, leaf.pid),
            })
            .collect();
        println!(
            "  shard {:<3} {:>8} docs  {}",
            shard.shard_id,
            human::thousands(shard.doc_count),
            leaves.join("  ")
        );
    }
    println!("  index     {}", ready.dir.display());
    println!();
    let mut addr_flag = if root_addr.to_string() == "127.0.0.1:50051" {
        String::new()
    } else {
        format!("--addr http://{root_addr} ")
    };
    if let Some(ca) = tls_ca {
        addr_flag.push_str(&format!("--tls-ca {} ", ca.display()));
    }
    println!("try:");
    println!("  fanout search {addr_flag}\"free software video editor\"");
    println!("  fanout search {addr_flag}--snippets -k 5 \"video editor\"");
    match tls_ca {
        None => println!(
            "  grpcurl -plaintext -d '{{\"query\":\"video editor\",\"k\":5}}' {root_addr} fanout.search.v1.Search/Search"
        ),
        Some(ca) => println!(
            "  grpcurl -cacert {} -d '{{\"query\":\"video editor\",\"k\":5}}' {root_addr} fanout.search.v1.Search/Search",
            ca.display()
        ),
    }
    println!();
    println!("Ctrl-C stops every process.");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_corpus_is_named() {
        let error = resolve_in_workspace(Path::new("data/no-such-corpus.jsonl")).unwrap_err();
        assert!(error.to_string().contains("no-such-corpus"), "{error}");
    }
}
