//! One long-running `fanout` service (leaf, merger, root) as a child process.
//!
//! The child binds port 0 and announces its address on stdout
//! (`fanout leaf listening on 127.0.0.1:40123`, see
//! `fanout_runtime::announce`); [`ChildProcess::start`] waits for that line,
//! then a thread keeps draining stdout so the child never blocks on a full
//! pipe. A child started with `--metrics-listen` also announces its metrics
//! endpoint on the next line (`fanout leaf metrics on ADDR`), which
//! [`ChildProcess::start`] then waits for too ([`ChildProcess::metrics_addr`]).
//! Stderr (the logs) goes to a file, whose tail is printed when the
//! child is dropped during a panic, that is when a test fails. Dropping a
//! `ChildProcess` SIGKILLs it.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::FanoutBinary;

/// Lines of stderr printed for each child when a test fails.
const STDERR_TAIL_LINES: usize = 40;

/// A running `fanout` service that has announced its address.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    pid: u32,
    child: Mutex<Child>,
    stderr_log: PathBuf,
}

/// Kills the child if starting it fails half-way (no announce line, timeout,
/// or the future dropped).
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl ChildProcess {
    /// Starts `fanout <args>` and waits at most `announce_limit` for its
    /// announce line. `name` (e.g. `leaf-0-1`) names its stderr log in `log_dir`.
    pub async fn start(
        binary: &FanoutBinary,
        name: &str,
        args: Vec<OsString>,
        log_dir: &Path,
        announce_limit: Duration,
    ) -> anyhow::Result<ChildProcess> {
        let stderr_log = log_dir.join(format!("{name}.stderr.log"));
        let stderr_file = File::create(&stderr_log)
            .with_context(|| format!("cannot create {}", stderr_log.display()))?;
        let mut command = binary.command();
        command
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr_file));
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {name}: {command:?}"))?;
        let mut guard = KillOnDrop(Some(child));
        let child = guard.0.as_mut().expect("the guard was just filled");
        let pid = child.id();
        let stdout = child.stdout.take().expect("stdout was configured as piped");

        let (announced_tx, announced_rx) = tokio::sync::oneshot::channel();
        // `up --metrics` announces its root's endpoint as its own.
        let wants_metrics = args
            .iter()
            .any(|arg| arg == "--metrics-listen" || arg == "--metrics");
        let (metrics_tx, metrics_rx) = tokio::sync::oneshot::channel();
        let metrics_tx = wants_metrics.then_some(metrics_tx);
        let thread_name = format!("{name}-stdout");
        std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || drain_stdout(stdout, announced_tx, metrics_tx))
            .context("cannot start the stdout reader thread")?;

        let started = tokio::time::Instant::now();
        let announced = tokio::time::timeout(announce_limit, announced_rx).await;
        let addr = match announced {
            Ok(Ok(Ok(addr))) => addr,
            Ok(Ok(Err(reason))) => bail!(
                "{name} ({command:?}) {reason}\n--- stderr\n{}",
                read_tail(&stderr_log, STDERR_TAIL_LINES)
            ),
            Ok(Err(_)) => bail!("{name}: the stdout reader thread died"),
            Err(_) => bail!(
                "{name} ({command:?}) did not announce its address within {announce_limit:?}\n--- stderr\n{}",
                read_tail(&stderr_log, STDERR_TAIL_LINES)
            ),
        };
        let metrics_addr = if wants_metrics {
            // Printed right after the listening line.
            let left = announce_limit.saturating_sub(started.elapsed());
            match tokio::time::timeout(left, metrics_rx).await {
                Ok(Ok(addr)) => Some(addr),
                _ => bail!(
                    "{name} ({command:?}) did not announce its metrics address\n--- stderr\n{}",
                    read_tail(&stderr_log, STDERR_TAIL_LINES)
                ),
            }
        } else {
            None
        };
        let child = guard.0.take().expect("the guard was just filled");
        Ok(ChildProcess {
            name: name.to_owned(),
            addr,
            metrics_addr,
            pid,
            child: Mutex::new(child),
            stderr_log,
        })
    }

    /// The address it announced.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The metrics endpoint it announced, when started with `--metrics-listen`.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// `http://<addr>`, for tonic and for `--merger`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn stderr_log(&self) -> &Path {
        &self.stderr_log
    }

    /// The last `lines` lines the child logged.
    pub fn stderr_tail(&self, lines: usize) -> String {
        read_tail(&self.stderr_log, lines)
    }

    /// SIGKILL, then reap. Does nothing if it already exited.
    pub fn kill(&self) {
        let mut child = self.lock_child();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Sends `signal` unless the child has already exited (and been reaped,
    /// which would make the pid reusable).
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let mut child = self.lock_child();
        if let Some(status) = child.try_wait()? {
            bail!("{} already exited ({status})", self.name);
        }
        let pid = i32::try_from(self.pid).context("pid out of range")?;
        nix::sys::signal::kill(Pid::from_raw(pid), signal)
            .with_context(|| format!("cannot send {signal} to {}", self.name))
    }

    /// SIGSTOP: the process freezes, its sockets stay open.
    pub fn stop(&self) -> anyhow::Result<()> {
        self.signal(Signal::SIGSTOP)
    }

    /// SIGCONT after [`stop`](Self::stop).
    pub fn cont(&self) -> anyhow::Result<()> {
        self.signal(Signal::SIGCONT)
    }

    /// SIGTERM, then waits at most `limit` for a graceful exit (SIGKILL and an
    /// error if it does not come).
    pub async fn terminate(&self, limit: Duration) -> anyhow::Result<ExitStatus> {
        self.signal(Signal::SIGTERM)?;
        self.wait_for_exit(limit).await
    }

    /// Waits at most `limit` for the child to exit on its own; SIGKILL and an
    /// error after that.
    pub async fn wait_for_exit(&self, limit: Duration) -> anyhow::Result<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if started.elapsed() > limit {
                self.kill();
                return Err(anyhow!(
                    "{} did not exit within {limit:?}; killed it\n--- stderr\n{}",
                    self.name,
                    self.stderr_tail(STDERR_TAIL_LINES)
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The exit status if the child has exited.
    pub fn try_wait(&self) -> anyhow::Result<Option<ExitStatus>> {
        Ok(self.lock_child().try_wait()?)
    }

    fn lock_child(&self) -> std::sync::MutexGuard<'_, Child> {
        // A panic while holding this lock leaves the Child usable, so a
        // poisoned lock is recovered rather than propagated.
        self.child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- {} (pid {}, {}) stderr, last {STDERR_TAIL_LINES} lines of {}\n{}",
                self.name,
                self.pid,
                self.addr,
                self.stderr_log.display(),
                self.stderr_tail(STDERR_TAIL_LINES)
            );
        }
        self.kill();
    }
}

/// Reads stdout until the announce line (sent on `announced`) and, when
/// asked for, the metrics line (sent on `metrics`), then drains the rest
/// until the child closes it.
fn drain_stdout(
    stdout: std::process::ChildStdout,
    announced: tokio::sync::oneshot::Sender<Result<SocketAddr, String>>,
    mut metrics: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) {
    use fanout_runtime::announce::{parse_listening_line, parse_metrics_line};
    let mut announced = Some(announced);
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        if let Some((_, addr)) = parse_listening_line(&line)
            && let Some(sender) = announced.take()
        {
            let _ = sender.send(Ok(addr));
        } else if let Some((_, addr)) = parse_metrics_line(&line)
            && let Some(sender) = metrics.take()
        {
            let _ = sender.send(addr);
        }
    }
    if let Some(sender) = announced {
        let _ = sender.send(Err(
            "exited (closed stdout) before announcing its address".into()
        ));
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
