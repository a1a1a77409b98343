//! Child processes of a local cluster (`fanout up`, `fanout loadgen scenario`):
//! started from the fanout binary, their port-0 addresses read from their
//! announce lines, their output forwarded with a prefix or written to a log
//! file each, stopped with SIGTERM (then SIGKILL) and never left behind.
//!
//! Children run in their own process group, so a Ctrl-C in the terminal
//! reaches the parent alone and the parent stops them in order (root first).
//! Every child is spawned with `kill_on_drop`, and [`Cluster`] kills what is
//! left when dropped, so an error or a panic in the parent takes the children
//! down too.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
use fanout_runtime::announce::{parse_listening_line, parse_metrics_line};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// What a child process is, for reports and for what its loss means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leaf {
        shard_id: u32,
        replica: u32,
    },
    Merger,
    /// `index` tells apart several roots over the same leaves (0 for the first).
    Root {
        index: u32,
    },
}

impl Role {
    /// The first (usually only) root.
    pub const ROOT: Role = Role::Root { index: 0 };
}

impl Role {
    /// The role name in announce lines and on the command line.
    pub fn subcommand(self) -> &'static str {
        match self {
            Role::Leaf { .. } => "leaf",
            Role::Merger => "merger",
            Role::Root { .. } => "root",
        }
    }

    /// A short label for output prefixes: `leaf 2.1` is shard 2's replica 1.
    pub fn label(self) -> String {
        match self {
            Role::Leaf { shard_id, replica } => format!("leaf {shard_id}.{replica}"),
            Role::Merger => "merger".to_owned(),
            Role::Root { index: 0 } => "root".to_owned(),
            Role::Root { index } => format!("root {index}"),
        }
    }

    /// The label as a file name: `leaf-2-1`, `root-1`.
    pub fn file_stem(self) -> String {
        self.label().replace(['.', ' '], "-")
    }
}

/// A started child that has announced its address.
pub struct ClusterProcess {
    pub role: Role,
    pub pid: u32,
    pub addr: SocketAddr,
    child: Child,
    /// Set once the process has been seen to exit.
    exit_status: Option<ExitStatus>,
    /// The `/metrics` endpoint the child announced (with `--metrics-listen`).
    metrics: Arc<OnceLock<SocketAddr>>,
}

impl ClusterProcess {
    pub fn is_running(&self) -> bool {
        self.exit_status.is_none()
    }

    /// Where the child serves `GET /metrics`, once it has said so.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.get().copied()
    }
}

/// A child that has not announced its address yet.
pub struct StartingProcess {
    role: Role,
    pid: u32,
    child: Child,
    announced: oneshot::Receiver<SocketAddr>,
    metrics: Arc<OnceLock<SocketAddr>>,
}

/// Where a child's output (its logs on stderr, anything but the announce
/// line on stdout) goes.
#[derive(Debug, Clone)]
pub enum ChildOutput {
    /// To this process's stdout and stderr, each line prefixed with the
    /// child's label when `prefix` is set (not for JSON logs).
    Forward { prefix: bool },
    /// To `<dir>/<label>.log`, one file a child (for long runs whose output
    /// would drown the terminal, e.g. benchmark scenarios).
    Files { dir: PathBuf },
}

/// How children are started: which binary, with which log format.
pub struct Launcher {
    pub executable: PathBuf,
    pub log_format: &'static str,
    pub output: ChildOutput,
}

/// Where the forwarding tasks write one child's lines.
#[derive(Clone)]
enum LineSink {
    Terminal { prefix: String },
    File(Arc<Mutex<File>>),
}

/// Which of the child's streams a line came from.
#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

impl LineSink {
    /// Writes a line of the child's `stream`: to the same stream of ours, or
    /// to the child's log file.
    fn write_line(&self, stream: Stream, line: &str) {
        match (self, stream) {
            (LineSink::Terminal { prefix }, Stream::Stdout) => {
                let _ = writeln!(std::io::stdout().lock(), "{prefix}{line}");
            }
            (LineSink::Terminal { prefix }, Stream::Stderr) => {
                let _ = writeln!(std::io::stderr().lock(), "{prefix}{line}");
            }
            (LineSink::File(file), _) => {
                // A poisoned lock only means another line's write panicked; keep logging.
                let mut file = file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let _ = writeln!(file, "{line}");
            }
        }
    }
}

impl Launcher {
    /// Starts `fanout <role> <args>`; its stdout and stderr are forwarded.
    pub fn spawn(&self, role: Role, args: &[OsString]) -> anyhow::Result<StartingProcess> {
        let mut command = Command::new(&self.executable);
        command
            .arg(role.subcommand())
            .args(args)
            .arg("--log-format")
            .arg(self.log_format)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        // The child's flags are all on its command line; `up`'s own FANOUT_*
        // settings (FANOUT_LISTEN, say) must not leak into it.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("FANOUT_") {
                command.env_remove(name);
            }
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", role.label()))?;
        let Some(pid) = child.id() else {
            bail!("{} exited as soon as it started", role.label());
        };
        let sink = match &self.output {
            ChildOutput::Forward { prefix: true } => LineSink::Terminal {
                prefix: format!("{} | ", role.label()),
            },
            ChildOutput::Forward { prefix: false } => LineSink::Terminal {
                prefix: String::new(),
            },
            ChildOutput::Files { dir } => {
                let path = dir.join(format!("{}.log", role.file_stem()));
                let file = File::create(&path)
                    .with_context(|| format!("cannot create the log file {}", path.display()))?;
                LineSink::File(Arc::new(Mutex::new(file)))
            }
        };
        let (announce_sender, announced) = oneshot::channel();
        // Both pipes were requested just above, so both are present.
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let metrics = Arc::new(OnceLock::new());
        tokio::spawn(forward_stdout(
            stdout,
            role,
            sink.clone(),
            announce_sender,
            metrics.clone(),
        ));
        tokio::spawn(forward_stderr(stderr, sink));
        Ok(StartingProcess {
            role,
            pid,
            child,
            announced,
            metrics,
        })
    }
}

/// Reads a child's stdout: the announce line goes to `announce_sender`, the
/// metrics line to `metrics`, every other line to `sink`.
async fn forward_stdout(
    stdout: impl AsyncRead + Unpin,
    role: Role,
    sink: LineSink,
    announce_sender: oneshot::Sender<SocketAddr>,
    metrics: Arc<OnceLock<SocketAddr>>,
) {
    let mut announce_sender = Some(announce_sender);
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some((_, addr)) = parse_metrics_line(&line)
            .filter(|(announced_role, _)| *announced_role == role.subcommand())
        {
            let _ = metrics.set(addr);
            continue;
        }
        let announced_addr = parse_listening_line(&line)
            .filter(|(announced_role, _)| *announced_role == role.subcommand())
            .map(|(_, addr)| addr);
        match (announced_addr, announce_sender.take()) {
            (Some(addr), Some(sender)) => {
                let _ = sender.send(addr);
                continue;
            }
            (_, sender) => announce_sender = sender,
        }
        sink.write_line(Stream::Stdout, &line);
    }
}

/// Copies a child's stderr (its logs) to `sink`, line by line.
async fn forward_stderr(stderr: impl AsyncRead + Unpin, sink: LineSink) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        sink.write_line(Stream::Stderr, &line);
    }
}

/// Every child of a local cluster. Dropping it kills whatever still runs.
#[derive(Default)]
pub struct Cluster {
    /// Children that have announced their address, in start order.
    pub processes: Vec<ClusterProcess>,
    /// Children started but not heard from yet.
    starting: Vec<StartingProcess>,
}

/// The address a starting child announces, or why it will not.
async fn wait_for_announce(
    starting: &mut StartingProcess,
    deadline: Instant,
) -> anyhow::Result<SocketAddr> {
    let label = starting.role.label();
    let pid = starting.pid;
    tokio::select! {
        announced = &mut starting.announced => match announced {
            Ok(addr) => Ok(addr),
            // The stdout reader ended without the line: the child closed
            // stdout, most likely by exiting.
            Err(_) => match tokio::time::timeout_at(deadline, starting.child.wait()).await {
                Ok(Ok(status)) => bail!("{label} (pid {pid}) exited with {status} before listening"),
                _ => bail!("{label} (pid {pid}) closed its stdout before listening"),
            },
        },
        status = starting.child.wait() => match status {
            Ok(status) => bail!("{label} (pid {pid}) exited with {status} before listening"),
            Err(error) => bail!("cannot wait for {label} (pid {pid}): {error}"),
        },
        () = tokio::time::sleep_until(deadline) => {
            bail!("{label} (pid {pid}) did not say where it listens within the startup time")
        }
    }
}

impl Cluster {
    /// Starts `fanout <role> <args>`; [`Cluster::admit_all`] waits for its address.
    pub fn start(
        &mut self,
        launcher: &Launcher,
        role: Role,
        args: &[OsString],
    ) -> anyhow::Result<()> {
        let starting = launcher.spawn(role, args)?;
        self.starting.push(starting);
        Ok(())
    }

    /// Waits (until `deadline`) for the announce line of every started child.
    /// A child that fails to announce stays in the cluster, for [`Cluster::stop`].
    pub async fn admit_all(&mut self, deadline: Instant) -> anyhow::Result<()> {
        while let Some(starting) = self.starting.first_mut() {
            let addr = wait_for_announce(starting, deadline).await?;
            let StartingProcess {
                role,
                pid,
                child,
                metrics,
                ..
            } = self.starting.remove(0);
            self.processes.push(ClusterProcess {
                role,
                pid,
                addr,
                child,
                exit_status: None,
                metrics,
            });
        }
        Ok(())
    }

    /// The announced leaves of one shard, in replica order.
    pub fn leaves_of_shard(&self, shard_id: u32) -> impl Iterator<Item = &ClusterProcess> {
        self.processes.iter().filter(
            move |process| matches!(process.role, Role::Leaf { shard_id: id, .. } if id == shard_id),
        )
    }

    /// The announced process with this role.
    pub fn process(&self, role: Role) -> Option<&ClusterProcess> {
        self.processes.iter().find(|process| process.role == role)
    }

    /// Children started, announced or not, that have not been seen to exit.
    pub fn running_count(&self) -> usize {
        let announced = self.processes.iter().filter(|process| process.is_running());
        announced.count() + self.starting.len()
    }

    /// The next child to exit, with its index and status; pending while none runs.
    pub async fn next_exit(&mut self) -> (usize, ExitStatus) {
        let waits: Vec<_> = self
            .processes
            .iter_mut()
            .enumerate()
            .filter(|(_, process)| process.is_running())
            .map(|(index, process)| {
                Box::pin(async move {
                    // `wait` fails only if the child was already reaped, which
                    // only this loop does: report it as a plain exit.
                    let status = process.child.wait().await;
                    (index, status.unwrap_or_else(|_| ExitStatus::default()))
                })
            })
            .collect();
        if waits.is_empty() {
            return std::future::pending().await;
        }
        let ((index, status), _, _) = futures::future::select_all(waits).await;
        self.processes[index].exit_status = Some(status);
        (index, status)
    }

    /// Stops every child: the root first (so no new query starts), then the
    /// rest; SIGTERM, up to `grace` for each group, then SIGKILL.
    pub async fn stop(&mut self, grace: Duration) {
        // Children that never announced are stopped the same way; their
        // address is never shown.
        let unannounced = self.starting.drain(..).map(|starting| ClusterProcess {
            role: starting.role,
            pid: starting.pid,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            child: starting.child,
            exit_status: None,
            metrics: starting.metrics,
        });
        self.processes.extend(unannounced);
        let (roots, others): (Vec<_>, Vec<_>) = self
            .processes
            .iter_mut()
            .filter(|process| process.is_running())
            .partition(|process| matches!(process.role, Role::Root { .. }));
        stop_processes(roots, grace).await;
        stop_processes(others, grace).await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for process in self
            .processes
            .iter_mut()
            .filter(|process| process.is_running())
        {
            // SIGKILL; kill_on_drop would do it too, this says it plainly.
            let _ = process.child.start_kill();
        }
    }
}

async fn stop_processes(processes: Vec<&mut ClusterProcess>, grace: Duration) {
    for process in &processes {
        send_sigterm(process.pid);
    }
    let waits = processes.into_iter().map(|process| async move {
        let label = process.role.label();
        let pid = process.pid;
        match tokio::time::timeout(grace, process.child.wait()).await {
            Ok(status) => {
                process.exit_status = Some(status.unwrap_or_default());
            }
            Err(_) => {
                eprintln!("{label} (pid {pid}) still runs {grace:?} after SIGTERM: killing it");
                let _ = process.child.kill().await;
                process.exit_status = Some(process.child.wait().await.unwrap_or_default());
            }
        }
    });
    futures::future::join_all(waits).await;
}

fn send_sigterm(pid: u32) {
    let Ok(raw_pid) = i32::try_from(pid) else {
        return;
    };
    // ESRCH (already gone) is fine: the wait that follows sees the exit.
    let _ = kill(Pid::from_raw(raw_pid), Signal::SIGTERM);
}

/// The executable to start children from: this very binary.
pub fn current_executable() -> anyhow::Result<PathBuf> {
    let executable = std::env::current_exe().context("cannot find the fanout executable")?;
    if !Path::new(&executable).is_file() {
        bail!("the fanout executable {} is gone", executable.display());
    }
    Ok(executable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_say_which_shard_and_replica() {
        assert_eq!(
            Role::Leaf {
                shard_id: 2,
                replica: 1
            }
            .label(),
            "leaf 2.1"
        );
        assert_eq!(
            Role::Leaf {
                shard_id: 2,
                replica: 1
            }
            .subcommand(),
            "leaf"
        );
        assert_eq!(Role::ROOT.label(), "root");
        assert_eq!(Role::Root { index: 2 }.label(), "root 2");
        assert_eq!(
            Role::Leaf {
                shard_id: 2,
                replica: 1
            }
            .file_stem(),
            "leaf-2-1"
        );
    }

    #[tokio::test]
    async fn stops_a_child_that_ignores_nothing_and_kills_one_that_ignores_sigterm() {
        let mut cluster = Cluster::default();
        // `exec` so that the signal reaches the sleep itself; an ignored
        // signal stays ignored across exec.
        for script in ["exec sleep 30", "trap '' TERM; exec sleep 30"] {
            let child = Command::new("sh")
                .arg("-c")
                .arg(script)
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let pid = child.id().unwrap();
            cluster.processes.push(ClusterProcess {
                role: Role::Merger,
                pid,
                addr: "127.0.0.1:1".parse().unwrap(),
                child,
                exit_status: None,
                metrics: Arc::default(),
            });
        }
        // Give the shell time to install its trap.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let grace = Duration::from_millis(500);
        let started = std::time::Instant::now();
        cluster.stop(grace).await;
        assert!(
            cluster
                .processes
                .iter()
                .all(|process| !process.is_running())
        );
        for process in &cluster.processes {
            let alive = kill(Pid::from_raw(process.pid as i32), None).is_ok();
            assert!(!alive, "pid {} still exists", process.pid);
        }
        // The TERM-ignoring one needed the SIGKILL after the grace period.
        assert!(started.elapsed() >= grace);
        // The other one stopped on SIGTERM: its status says so.
        let first = cluster.processes[0].exit_status.unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&first),
            Some(15)
        );
    }
}
