//! `fanout up`: the embedded default. One command builds the index of the
//! bundled corpus (first run only), starts S x R leaves, a merger and a root as
//! child processes of this binary, waits until the root is SERVING, prints the
//! endpoint and example commands, and stops everything on Ctrl-C or SIGTERM.
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
use fanout_cluster::signals::StopSignals;
use fanout_cluster::workspace::{default_data_dir, find_in_workspace, workspace_root};
use fanout_cluster::{
    ChildOutput, Cluster, IndexSource, Launcher, ReadyIndex, Role, SEARCH_SERVICE_NAME,
    current_executable, ensure_index, root_args, start_leaves, start_merger, wait_until_serving,
};
use fanout_runtime::announce;
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

pub async fn run(plan: UpPlan, log_format: LogFormatArg) -> anyhow::Result<ExitCode> {
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

    let launcher = Launcher {
        executable: current_executable()?,
        log_format: log_format.as_flag_value(),
        output: ChildOutput::Forward {
            prefix: log_format == LogFormatArg::Text,
        },
    };
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
    print_cluster(&cluster, &ready, root_addr, plan.replicas);
    announce::announce_listening("up", root_addr);
    if let Some(metrics) = cluster
        .process(Role::ROOT)
        .and_then(|root| root.metrics_addr())
    {
        // The root's endpoint is the cluster's: scripts find it as up's own.
        announce::announce_metrics("up", metrics);
    }

    let outcome = loop {
        tokio::select! {
            signal = signals.recv() => {
                eprintln!("{signal}: stopping {} processes", cluster.running_count());
                break ExitCode::SUCCESS;
            }
            (index, status) = cluster.next_exit() => {
                let process = &cluster.processes[index];
                let what = format!("{} (pid {}, {})", process.role.label(), process.pid, process.addr);
                let Role::Leaf { shard_id, .. } = process.role else {
                    eprintln!("{what} exited unexpectedly ({status}): stopping the cluster");
                    break ExitCode::FAILURE;
                };
                let replicas_left = cluster
                    .processes
                    .iter()
                    .filter(|other| other.is_running())
                    .filter(|other| matches!(other.role, Role::Leaf { shard_id: id, .. } if id == shard_id))
                    .count();
                if replicas_left == 0 {
                    eprintln!(
                        "{what} exited unexpectedly ({status}): shard {shard_id} has no replica left, \
                         searches fail unless --allow-partial"
                    );
                } else {
                    eprintln!(
                        "{what} exited unexpectedly ({status}): shard {shard_id} goes on with \
                         {replicas_left} of {} replicas",
                        plan.replicas
                    );
                }
            }
        }
    };
    cluster.stop(STOP_GRACE).await;
    eprintln!("every fanout process has stopped");
    Ok(outcome)
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
        args
    })?;
    if !plan.embedded_merger {
        start_merger(cluster, launcher)?;
    }
    // Every process starts at once; their announce lines are read in turn.
    cluster.admit_all(deadline).await?;

    let mut args = root_args(cluster, ready.manifest.shard_count, plan.listen)?;
    args.extend(metrics_args());
    cluster.start(launcher, Role::ROOT, &args)?;
    cluster.admit_all(deadline).await?;
    let root_addr = cluster
        .process(Role::ROOT)
        .context("the root is missing from the cluster")?
        .addr;
    wait_until_serving(root_addr, SEARCH_SERVICE_NAME, deadline).await?;
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
fn print_cluster(cluster: &Cluster, ready: &ReadyIndex, root_addr: SocketAddr, replicas: u32) {
    let manifest = &ready.manifest;
    let root_pid = cluster.process(Role::ROOT).map_or(0, |root| root.pid);
    println!();
    println!(
        "fanout is up: {} docs in {} shards x {replicas} replicas",
        human::thousands(manifest.doc_count),
        manifest.shard_count,
    );
    println!("  endpoint  http://{root_addr}  (root, pid {root_pid})");
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
    let addr_flag = if root_addr.to_string() == "127.0.0.1:50051" {
        String::new()
    } else {
        format!("--addr http://{root_addr} ")
    };
    println!("try:");
    println!("  fanout search {addr_flag}\"free software video editor\"");
    println!("  fanout search {addr_flag}--snippets -k 5 \"video editor\"");
    println!(
        "  grpcurl -plaintext -d '{{\"query\":\"video editor\",\"k\":5}}' {root_addr} fanout.search.v1.Search/Search"
    );
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
