//! `fanout up`: the embedded default. One command builds the index of the
//! bundled corpus (first run only), starts S x R leaves, a merger and a root as
//! child processes of this binary, waits until the root is SERVING, prints the
//! endpoint and example commands, and stops everything on Ctrl-C or SIGTERM.
//!
//! - [`cached_index`]: the index, built once per corpus and shard count.
//! - [`cluster`]: starting, watching and stopping the child processes.

mod cached_index;
mod cluster;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use fanout_runtime::announce;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::time::Instant;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::cmd::up::cached_index::{IndexSource, ReadyIndex, ensure_index};
use crate::cmd::up::cluster::{Cluster, ClusterProcess, Launcher, Role, current_executable};
use crate::cmd::{LogFormatArg, available_cores, grpc_status, human};

/// Longest wait for every child to announce its address and the root to be SERVING.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Time between two health checks of the root while it starts.
const HEALTH_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long each group of children may take to stop after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// The service whose health says the root is ready.
const SEARCH_SERVICE_NAME: &str = "fanout.search.v1.Search";
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
}

/// Validated `fanout up`.
pub struct UpPlan {
    source: IndexSource,
    data_dir: PathBuf,
    replicas: u32,
    listen: SocketAddr,
    embedded_merger: bool,
    rebuild: bool,
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
        })
    }
}

/// The workspace this binary was built from, when it is still there (so that
/// `cargo run -- up` finds the bundled corpus from any directory).
fn workspace_root() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    root.join("Cargo.toml")
        .is_file()
        .then(|| root.to_path_buf())
}

fn default_data_dir() -> PathBuf {
    workspace_root().map_or_else(|| PathBuf::from(".fanout"), |root| root.join(".fanout"))
}

/// `path` if it names a file from here, else the same path in the workspace.
fn resolve_in_workspace(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let in_workspace = workspace_root()
        .filter(|_| path.is_relative())
        .map(|root| root.join(path));
    if let Some(found) = in_workspace.filter(|candidate| candidate.is_file()) {
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

/// SIGINT, SIGTERM and SIGHUP, listened for from the start: a signal that
/// arrived before anyone listened would kill `up` and orphan its children.
struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl StopSignals {
    fn register() -> anyhow::Result<StopSignals> {
        let listen = |kind| signal(kind).context("cannot listen for signals");
        Ok(StopSignals {
            interrupt: listen(SignalKind::interrupt())?,
            terminate: listen(SignalKind::terminate())?,
            hangup: listen(SignalKind::hangup())?,
        })
    }

    /// The name of the next stop signal.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.hangup.recv() => "SIGHUP",
        }
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
        ready = ensure_index(&plan.source, &plan.data_dir, plan.rebuild) => ready?,
        signal = signals.recv() => {
            eprintln!("{signal}: index build interrupted");
            return Ok(ExitCode::from(EXIT_INTERRUPTED));
        }
    };
    if !ready.built_now {
        eprintln!("using the index in {}", ready.dir.display());
    }

    let launcher = Launcher {
        executable: current_executable()?,
        log_format: log_format.as_flag_value(),
        prefix_output: log_format == LogFormatArg::Text,
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
    let any_port = OsString::from("127.0.0.1:0");

    for shard in &ready.manifest.shards {
        let shard_dir = ready.dir.join(&shard.dir);
        for replica in 0..plan.replicas {
            let role = Role::Leaf {
                shard_id: shard.shard_id,
                replica,
            };
            let args = [
                OsString::from("--shard-dir"),
                shard_dir.clone().into_os_string(),
                OsString::from("--listen"),
                any_port.clone(),
                OsString::from("--search-threads"),
                OsString::from(search_threads.to_string()),
            ];
            cluster.start(launcher, role, &args)?;
        }
    }
    if !plan.embedded_merger {
        let args = [OsString::from("--listen"), any_port.clone()];
        cluster.start(launcher, Role::Merger, &args)?;
    }
    // Every process starts at once; their announce lines are read in turn.
    cluster.admit_all(deadline).await?;

    let mut root_args = vec![
        OsString::from("--listen"),
        OsString::from(plan.listen.to_string()),
    ];
    for shard_id in 0..ready.manifest.shard_count {
        let replicas: Vec<String> = leaves_of_shard(cluster, shard_id)
            .map(|leaf| leaf.addr.to_string())
            .collect();
        root_args.push(OsString::from("--shard"));
        root_args.push(OsString::from(format!("{shard_id}={}", replicas.join(","))));
    }
    if let Some(merger) = process_of(cluster, Role::Merger) {
        root_args.push(OsString::from("--merger"));
        root_args.push(OsString::from(format!("http://{}", merger.addr)));
    }
    cluster.start(launcher, Role::Root, &root_args)?;
    cluster.admit_all(deadline).await?;
    let root_addr = process_of(cluster, Role::Root)
        .context("the root is missing from the cluster")?
        .addr;
    wait_until_serving(root_addr, deadline).await?;
    Ok(root_addr)
}

fn leaves_of_shard(cluster: &Cluster, shard_id: u32) -> impl Iterator<Item = &ClusterProcess> {
    cluster.processes.iter().filter(
        move |process| matches!(process.role, Role::Leaf { shard_id: id, .. } if id == shard_id),
    )
}

fn process_of(cluster: &Cluster, role: Role) -> Option<&ClusterProcess> {
    cluster
        .processes
        .iter()
        .find(|process| process.role == role)
}

/// Polls the root's `grpc.health.v1` until Search is SERVING or `deadline` passes.
async fn wait_until_serving(addr: SocketAddr, deadline: Instant) -> anyhow::Result<()> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .context("the root's address is not a URL")?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(1));
    loop {
        let problem = match check_health(&endpoint).await {
            Ok(ServingStatus::Serving) => return Ok(()),
            Ok(status) => format!("health is {}", status.as_str_name()),
            Err(problem) => problem,
        };
        if Instant::now() + HEALTH_POLL_INTERVAL >= deadline {
            bail!("the root at {addr} is not SERVING after {STARTUP_TIMEOUT:?}: {problem}");
        }
        tokio::time::sleep(HEALTH_POLL_INTERVAL).await;
    }
}

async fn check_health(endpoint: &Endpoint) -> Result<ServingStatus, String> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|error| error.to_string())?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: SEARCH_SERVICE_NAME.to_owned(),
        })
        .await
        .map_err(|status| grpc_status::describe(&status))?;
    Ok(ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown))
}

/// The endpoint, who serves what, and commands to try.
fn print_cluster(cluster: &Cluster, ready: &ReadyIndex, root_addr: SocketAddr, replicas: u32) {
    let manifest = &ready.manifest;
    let root_pid = process_of(cluster, Role::Root).map_or(0, |root| root.pid);
    println!();
    println!(
        "fanout is up: {} docs in {} shards x {replicas} replicas",
        human::thousands(manifest.doc_count),
        manifest.shard_count,
    );
    println!("  endpoint  http://{root_addr}  (root, pid {root_pid})");
    match process_of(cluster, Role::Merger) {
        Some(merger) => println!("  merger    http://{}  (pid {})", merger.addr, merger.pid),
        None => println!("  merger    embedded in the root"),
    }
    for shard in &manifest.shards {
        let leaves: Vec<String> = leaves_of_shard(cluster, shard.shard_id)
            .map(|leaf| format!("{} (pid {})", leaf.addr, leaf.pid))
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
    fn finds_the_bundled_corpus_from_the_workspace() {
        // Tests run in cli/, where data/ does not exist: the workspace lookup finds it.
        let corpus = resolve_in_workspace(Path::new("data/debian-descriptions.jsonl.gz")).unwrap();
        assert!(corpus.is_file(), "{}", corpus.display());
        assert!(resolve_in_workspace(Path::new("data/no-such-corpus.jsonl")).is_err());
    }

    #[test]
    fn the_default_data_dir_is_in_the_workspace() {
        let data_dir = default_data_dir();
        assert!(data_dir.ends_with(".fanout"));
        assert!(data_dir.parent().unwrap().join("Cargo.toml").is_file());
    }
}
