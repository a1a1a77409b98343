//! Child processes of a local cluster (`fanout up`, `fanout loadgen scenario`,
//! the cross-process tests): started from the fanout binary, their port-0
//! addresses read from their announce lines, their output forwarded with a
//! prefix or written to a log file each, signalled one by one, stopped with
//! SIGTERM (then SIGKILL) and never left behind.
//!
//! Children of `fanout up` and of scenarios run in their own process group,
//! so a Ctrl-C in the terminal reaches the parent alone and the parent stops
//! them in order (root first). Every child is spawned with `kill_on_drop`,
//! and [`Cluster`] kills what is left when dropped, so an error or a panic in
//! the parent takes the children down too. A child whose output goes to a
//! log file prints the file's tail when dropped during a panic (a failing
//! test), so the failure shows what the child said.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
use fanout_runtime::announce::{parse_listening_line, parse_metrics_line};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Lines of a child's log shown when it fails to start or to exit, or is
/// dropped during a panic.
const TAIL_LINES: usize = 40;
/// Time between two looks at a child that is expected to exit or to announce
/// its metrics endpoint.
const CHILD_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// What a child process is, for reports and for what its loss means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// `fanout up` itself, a whole local cluster in one child (the
    /// cross-process tests start it so); it announces `fanout up listening on
    /// ADDR`, its root's address.
    Up,
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
            Role::Up => "up",
        }
    }

    /// A short label for output prefixes: `leaf 2.1` is shard 2's replica 1.
    pub fn label(self) -> String {
        match self {
            Role::Leaf { shard_id, replica } => format!("leaf {shard_id}.{replica}"),
            Role::Merger => "merger".to_owned(),
            Role::Root { index: 0 } => "root".to_owned(),
            Role::Root { index } => format!("root {index}"),
            Role::Up => "up".to_owned(),
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
    /// The flags it was started with (after the subcommand).
    args: Vec<OsString>,
    /// When it announced its address.
    pub announced_at: Instant,
    /// Behind a lock, so that a shared reference can signal the child or
    /// ask whether it exited.
    state: Mutex<ChildState>,
    /// The `/metrics` endpoint the child announced (with `--metrics-listen`).
    metrics: Arc<OnceLock<SocketAddr>>,
    /// The file its output goes to ([`ChildOutput::Files`]).
    log: Option<PathBuf>,
}

/// A child and what is known of its end.
struct ChildState {
    child: Child,
    /// Set once the process has been seen to exit (it is reaped then, and
    /// its pid may belong to another process: no signal may go to it).
    exit_status: Option<ExitStatus>,
}

impl ChildState {
    /// The exit status, if the child has exited; recorded once seen.
    fn poll_exit(&mut self) -> std::io::Result<Option<ExitStatus>> {
        if self.exit_status.is_none() {
            self.exit_status = self.child.try_wait()?;
        }
        Ok(self.exit_status)
    }

    /// Sends `signal` to the child at `pid`, unless it has exited.
    fn signal(&mut self, pid: u32, signal: Signal) -> anyhow::Result<()> {
        if let Some(status) = self.poll_exit()? {
            bail!("it already exited ({status})");
        }
        let raw_pid = i32::try_from(pid).context("pid out of range")?;
        kill(Pid::from_raw(raw_pid), signal)?;
        Ok(())
    }
}

impl StartingProcess {
    fn announced(self, addr: SocketAddr) -> ClusterProcess {
        ClusterProcess {
            role: self.role,
            pid: self.pid,
            addr,
            args: self.args,
            announced_at: Instant::now(),
            state: Mutex::new(ChildState {
                child: self.child,
                exit_status: None,
            }),
            metrics: self.metrics,
            log: self.log,
        }
    }
}

impl ClusterProcess {
    /// Whether it runs, as far as the cluster has seen: set by
    /// [`Cluster::next_exit`], [`Cluster::stop`] and
    /// [`ClusterProcess::try_wait`]. A child seen to exit by `try_wait` is
    /// not reported by `next_exit` again.
    pub fn is_running(&self) -> bool {
        self.lock().exit_status.is_none()
    }

    /// The status it was seen to exit with.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.lock().exit_status
    }

    /// The exit status if the child has exited by now (without waiting).
    pub fn try_wait(&self) -> std::io::Result<Option<ExitStatus>> {
        self.lock().poll_exit()
    }

    /// Sends `signal`, unless the child has already exited (and been
    /// reaped, which would make its pid another process's).
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        self.lock().signal(self.pid, signal).with_context(|| {
            format!(
                "cannot send {signal} to {} (pid {})",
                self.role.label(),
                self.pid
            )
        })
    }

    /// SIGSTOP: the process freezes, its sockets stay open.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal(Signal::SIGSTOP)
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal(Signal::SIGCONT)
    }

    /// SIGKILL, unless it has already exited; the exit is seen by the next
    /// [`try_wait`](Self::try_wait) or wait.
    pub fn kill(&self) {
        let mut state = self.lock();
        if state.exit_status.is_none() {
            let _ = state.child.start_kill();
        }
    }

    /// Waits at most `limit` for the child to exit on its own; SIGKILL and an
    /// error (with the tail of its log) after that.
    pub async fn wait_for_exit(&self, limit: Duration) -> anyhow::Result<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if started.elapsed() > limit {
                self.kill();
                bail!(
                    "{} (pid {}) did not exit within {limit:?}; killed it\n{}",
                    self.role.label(),
                    self.pid,
                    self.log_tail_section()
                );
            }
            tokio::time::sleep(CHILD_POLL_INTERVAL).await;
        }
    }

    /// `http://<addr>`, for tonic and for `--merger`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The file its output goes to, with [`ChildOutput::Files`].
    pub fn log_path(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// The last `lines` lines of its log file (or a note saying there is none).
    pub fn log_tail(&self, lines: usize) -> String {
        match &self.log {
            Some(log) => read_tail(log, lines),
            None => "(no log file: its output is forwarded)".to_owned(),
        }
    }

    /// The flags it was started with (after the subcommand, before
    /// `--log-format`).
    pub fn args(&self) -> &[OsString] {
        &self.args
    }

    /// The flags to start this child again where it listened: its own, with
    /// `--listen` (and `--metrics-listen`, once announced) set to the
    /// addresses it announced.
    pub fn restart_args(&self) -> Vec<OsString> {
        let mut args = self.args.clone();
        let mut set = |flag: &str, value: String| match args.iter().position(|arg| arg == flag) {
            Some(at) if at + 1 < args.len() => args[at + 1] = OsString::from(value),
            _ => {
                args.push(OsString::from(flag));
                args.push(OsString::from(value));
            }
        };
        set("--listen", self.addr.to_string());
        if let Some(metrics) = self.metrics_addr() {
            set("--metrics-listen", metrics.to_string());
        }
        args
    }

    /// Where the child serves `GET /metrics`, once it has said so.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.get().copied()
    }

    /// Where the child serves `GET /metrics`, waiting until `deadline` for
    /// the line that says so (it follows the listening line at once, when
    /// the child was started with `--metrics-listen`).
    pub async fn wait_for_metrics_addr(&self, deadline: Instant) -> anyhow::Result<SocketAddr> {
        loop {
            if let Some(addr) = self.metrics_addr() {
                return Ok(addr);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} (pid {}) did not say where it serves metrics\n{}",
                    self.role.label(),
                    self.pid,
                    self.log_tail_section()
                );
            }
            tokio::time::sleep(CHILD_POLL_INTERVAL).await;
        }
    }

    fn log_tail_section(&self) -> String {
        log_tail_section(self.log.as_deref())
    }

    fn lock(&self) -> MutexGuard<'_, ChildState> {
        // A panic while holding the lock leaves the child usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn state_mut(&mut self) -> &mut ChildState {
        self.state
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for ClusterProcess {
    fn drop(&mut self) {
        // During a panic (a failing test), show what the child said.
        if std::thread::panicking()
            && let Some(log) = &self.log
        {
            eprintln!(
                "--- {} (pid {}, {}): the last {TAIL_LINES} lines of {}\n{}",
                self.role.label(),
                self.pid,
                self.addr,
                log.display(),
                read_tail(log, TAIL_LINES)
            );
        }
    }
}

/// The last `lines` lines of a file, or a note saying why there are none.
fn read_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(error) => format!("(cannot read {}: {error})", path.display()),
    }
}

/// The tail of a child's log, headed, for an error message; empty without a log.
fn log_tail_section(log: Option<&Path>) -> String {
    match log {
        Some(log) => format!(
            "--- the last {TAIL_LINES} lines of {}\n{}",
            log.display(),
            read_tail(log, TAIL_LINES)
        ),
        None => String::new(),
    }
}

/// A child that has not announced its address yet.
pub struct StartingProcess {
    role: Role,
    pid: u32,
    args: Vec<OsString>,
    child: Child,
    announced: oneshot::Receiver<SocketAddr>,
    metrics: Arc<OnceLock<SocketAddr>>,
    log: Option<PathBuf>,
}

/// Where a child's output (its logs on stderr, anything but the announce
/// line on stdout) goes.
#[derive(Debug, Clone)]
pub enum ChildOutput {
    /// To this process's stdout and stderr, each line prefixed with the
    /// child's label when `prefix` is set (not for JSON logs).
    Forward { prefix: bool },
    /// To `<dir>/<label>.log`, one file a child (for long runs whose output
    /// would drown the terminal, e.g. benchmark scenarios, and for tests).
    /// The child writes its stderr there itself, so it never waits for this
    /// process to copy its logs.
    Files { dir: PathBuf },
}

/// How children are started: which binary, with which log format, output,
/// environment and process group.
pub struct Launcher {
    pub executable: PathBuf,
    pub log_format: &'static str,
    pub output: ChildOutput,
    /// Set in every child's environment, which is this process's less its
    /// `FANOUT_*` variables.
    pub env: Vec<(OsString, OsString)>,
    /// Each child in a process group of its own, so that a Ctrl-C in the
    /// terminal reaches the parent alone and the parent stops the children
    /// in order (`fanout up`, scenarios). Otherwise they share the parent's
    /// group, and a Ctrl-C that ends the parent (a test run) ends them too.
    pub own_process_group: bool,
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
                // One write a line: the child writes its stderr to the same file.
                let _ = file.write_all(format!("{line}\n").as_bytes());
            }
        }
    }
}

impl Launcher {
    /// Children of `executable`, each in a process group of its own, with
    /// nothing added to their environment.
    pub fn new(executable: PathBuf, log_format: &'static str, output: ChildOutput) -> Launcher {
        Launcher {
            executable,
            log_format,
            output,
            env: Vec::new(),
            own_process_group: true,
        }
    }

    /// Starts `fanout <role> <args>`; its output goes where the launcher
    /// says. [`StartingProcess`] is its handle until it announces its address.
    pub fn spawn(&self, role: Role, args: &[OsString]) -> anyhow::Result<StartingProcess> {
        let mut command = Command::new(&self.executable);
        command
            .arg(role.subcommand())
            .args(args)
            .arg("--log-format")
            .arg(self.log_format)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        if self.own_process_group {
            command.process_group(0);
        }
        // The child's flags are all on its command line; `up`'s own FANOUT_*
        // settings (FANOUT_LISTEN, say) must not leak into it.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("FANOUT_") {
                command.env_remove(name);
            }
        }
        command.envs(self.env.iter().map(|(name, value)| (name, value)));
        let (sink, log) = match &self.output {
            ChildOutput::Forward { prefix } => {
                command.stderr(Stdio::piped());
                let prefix = if *prefix {
                    format!("{} | ", role.label())
                } else {
                    String::new()
                };
                (LineSink::Terminal { prefix }, None)
            }
            ChildOutput::Files { dir } => {
                let path = dir.join(format!("{}.log", role.file_stem()));
                let file = File::create(&path)
                    .with_context(|| format!("cannot create the log file {}", path.display()))?;
                // One open file for both: the child's stderr and the lines
                // of its stdout written here share its offset.
                let stderr = file
                    .try_clone()
                    .with_context(|| format!("cannot share the log file {}", path.display()))?;
                command.stderr(Stdio::from(stderr));
                (LineSink::File(Arc::new(Mutex::new(file))), Some(path))
            }
        };
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", role.label()))?;
        let Some(pid) = child.id() else {
            bail!("{} exited as soon as it started", role.label());
        };
        let (announce_sender, announced) = oneshot::channel();
        // Stdout was requested just above, so it is present.
        let stdout = child.stdout.take().expect("stdout is piped");
        let metrics = Arc::new(OnceLock::new());
        tokio::spawn(forward_stdout(
            stdout,
            role,
            sink.clone(),
            announce_sender,
            metrics.clone(),
        ));
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(forward_stderr(stderr, sink));
        }
        Ok(StartingProcess {
            role,
            pid,
            args: args.to_vec(),
            child,
            announced,
            metrics,
            log,
        })
    }

    /// Starts `fanout <role> <args>` and waits until `deadline` for its
    /// announce line; a child that does not announce is killed.
    pub async fn start(
        &self,
        role: Role,
        args: &[OsString],
        deadline: Instant,
    ) -> anyhow::Result<ClusterProcess> {
        let mut starting = self.spawn(role, args)?;
        // On an error, dropping `starting` kills the child.
        let addr = wait_for_announce(&mut starting, deadline).await?;
        Ok(starting.announced(addr))
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

/// The address a starting child announces, or why it will not (with the
/// tail of its log, if it has one).
async fn wait_for_announce(
    starting: &mut StartingProcess,
    deadline: Instant,
) -> anyhow::Result<SocketAddr> {
    announce_of(starting, deadline)
        .await
        .map_err(|error| match &starting.log {
            Some(log) => anyhow::anyhow!("{error:#}\n{}", log_tail_section(Some(log))),
            None => error,
        })
}

async fn announce_of(
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
            let starting = self.starting.remove(0);
            self.processes.push(starting.announced(addr));
        }
        Ok(())
    }

    /// Starts the child at `index` again (it has exited), with the same
    /// flags but listening where it did before (`--listen` and
    /// `--metrics-listen` set to its announced addresses), so that its peers
    /// reach it again without being told; waits until `deadline` for its
    /// announce line.
    pub async fn restart(
        &mut self,
        index: usize,
        launcher: &Launcher,
        deadline: Instant,
    ) -> anyhow::Result<()> {
        let process = &self.processes[index];
        anyhow::ensure!(
            !process.is_running(),
            "{} still runs; it cannot be restarted",
            process.role.label()
        );
        let args = process.restart_args();
        self.processes[index] = launcher.start(process.role, &args, deadline).await?;
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
                    let status = process.state_mut().child.wait().await;
                    (index, status.unwrap_or_else(|_| ExitStatus::default()))
                })
            })
            .collect();
        if waits.is_empty() {
            return std::future::pending().await;
        }
        let ((index, status), _, _) = futures::future::select_all(waits).await;
        self.processes[index].state_mut().exit_status = Some(status);
        (index, status)
    }

    /// Stops every child: the root first (so no new query starts), then the
    /// rest; SIGTERM, up to `grace` for each group, then SIGKILL.
    pub async fn stop(&mut self, grace: Duration) {
        // Children that never announced are stopped the same way; their
        // address is never shown.
        let unannounced = self
            .starting
            .drain(..)
            .map(|starting| starting.announced(SocketAddr::from(([0, 0, 0, 0], 0))));
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
            let _ = process.state_mut().child.start_kill();
        }
    }
}

async fn stop_processes(mut processes: Vec<&mut ClusterProcess>, grace: Duration) {
    for process in &mut processes {
        let pid = process.pid;
        // One that has already exited is not signalled; the wait that
        // follows sees its exit.
        let _ = process.state_mut().signal(pid, Signal::SIGTERM);
    }
    let waits = processes.into_iter().map(|process| async move {
        let label = process.role.label();
        let pid = process.pid;
        let state = process.state_mut();
        match tokio::time::timeout(grace, state.child.wait()).await {
            Ok(status) => {
                state.exit_status = Some(status.unwrap_or_default());
            }
            Err(_) => {
                eprintln!("{label} (pid {pid}) still runs {grace:?} after SIGTERM: killing it");
                let _ = state.child.kill().await;
                state.exit_status = Some(state.child.wait().await.unwrap_or_default());
            }
        }
    });
    futures::future::join_all(waits).await;
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
        assert_eq!(
            (Role::Up.subcommand(), Role::Up.file_stem()),
            ("up", "up".to_owned())
        );
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
    async fn a_restart_listens_where_the_child_announced() {
        let child = Command::new("true").kill_on_drop(true).spawn().unwrap();
        let metrics = Arc::new(OnceLock::new());
        let _ = metrics.set("127.0.0.1:9100".parse().unwrap());
        let process = ClusterProcess {
            role: Role::ROOT,
            pid: 1,
            addr: "127.0.0.1:50051".parse().unwrap(),
            args: [
                "--shard",
                "0=a:1",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ]
            .map(OsString::from)
            .to_vec(),
            announced_at: Instant::now(),
            state: Mutex::new(ChildState {
                child,
                exit_status: None,
            }),
            metrics,
            log: None,
        };
        assert_eq!(
            process.restart_args(),
            [
                "--shard",
                "0=a:1",
                "--listen",
                "127.0.0.1:50051",
                "--metrics-listen",
                "127.0.0.1:9100"
            ]
            .map(OsString::from)
            .to_vec()
        );
    }

    #[tokio::test]
    async fn stops_a_child_that_ignores_nothing_and_kills_one_that_ignores_sigterm() {
        let mut cluster = Cluster::default();
        // `exec` so that the signal reaches the sleep itself; an ignored
        // signal stays ignored across exec. Each says `ready` once its trap
        // (if any) is in place, and the test waits for that.
        for script in [
            "echo ready; exec sleep 30",
            "trap '' TERM; echo ready; exec sleep 30",
        ] {
            let mut child = Command::new("sh")
                .arg("-c")
                .arg(script)
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            let mut ready = String::new();
            BufReader::new(stdout).read_line(&mut ready).await.unwrap();
            assert_eq!(ready.trim(), "ready");
            let pid = child.id().unwrap();
            cluster.processes.push(ClusterProcess {
                role: Role::Merger,
                pid,
                addr: "127.0.0.1:1".parse().unwrap(),
                args: Vec::new(),
                announced_at: Instant::now(),
                state: Mutex::new(ChildState {
                    child,
                    exit_status: None,
                }),
                metrics: Arc::default(),
                log: None,
            });
        }
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
        let first = cluster.processes[0].exit_status().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&first),
            Some(15)
        );
    }

    /// A stand-in for the fanout binary: logs a line, announces both
    /// addresses, then sleeps.
    const FAKE_FANOUT: &str = "#!/bin/sh\n\
        echo \"starting $1 $2\" >&2\n\
        echo \"fanout $1 listening on 127.0.0.1:4321\"\n\
        echo \"fanout $1 metrics on 127.0.0.1:4322\"\n\
        exec sleep 30\n";

    #[tokio::test]
    async fn a_started_child_logs_to_its_file_and_answers_to_signals() {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::ExitStatusExt;

        let dir =
            std::env::temp_dir().join(format!("fanout-cluster-launcher-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let executable = dir.join("fake-fanout");
        std::fs::write(&executable, FAKE_FANOUT).unwrap();
        std::fs::set_permissions(&executable, std::fs::Permissions::from_mode(0o755)).unwrap();
        let launcher = Launcher {
            own_process_group: false,
            ..Launcher::new(executable, "text", ChildOutput::Files { dir: dir.clone() })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        // Another test's fork may briefly hold the script open for writing
        // (ETXTBSY): try again.
        let mut attempts = 0;
        let process = loop {
            match launcher
                .start(Role::Up, &[OsString::from("--x")], deadline)
                .await
            {
                Ok(process) => break process,
                Err(error) if attempts < 5 => {
                    attempts += 1;
                    eprintln!("attempt {attempts}: {error:#}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("{error:#}"),
            }
        };
        assert_eq!(process.addr, "127.0.0.1:4321".parse().unwrap());
        assert_eq!(process.url(), "http://127.0.0.1:4321");
        let metrics = process.wait_for_metrics_addr(deadline).await.unwrap();
        assert_eq!(metrics, "127.0.0.1:4322".parse().unwrap());
        assert_eq!(process.log_path(), Some(dir.join("up.log").as_path()));
        assert!(process.try_wait().unwrap().is_none());
        process.pause().unwrap();
        process.resume().unwrap();
        process.signal(Signal::SIGTERM).unwrap();
        let status = process
            .wait_for_exit(Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(status.signal(), Some(15));
        assert!(!process.is_running());
        assert_eq!(process.try_wait().unwrap(), Some(status));
        let error = process.signal(Signal::SIGCONT).unwrap_err();
        assert!(format!("{error:#}").contains("already exited"), "{error:#}");
        // Its stderr went to the file; the announce lines did not.
        assert_eq!(process.log_tail(10), "starting up --x");
        drop(process);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
