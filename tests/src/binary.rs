//! The `fanout` binary under test: one-shot runs of it (`fanout index`,
//! `fanout eval`) that must finish within a time limit, and its long-running
//! services (leaf, merger, root, `up`), started through fanout-cluster's
//! launcher.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fanout_cluster::{ChildOutput, ClusterProcess, Launcher, Role};

/// The binary plus the folder where tests keep caches and logs.
#[derive(Debug, Clone)]
pub struct FanoutBinary {
    path: PathBuf,
    scratch_root: PathBuf,
}

/// What a finished one-shot run printed.
#[derive(Debug, Clone)]
pub struct CommandOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CommandOutput {
    /// Stdout and stderr together, for assertions on what a person would read.
    pub fn combined(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// Fails with everything printed unless the run exited 0.
    pub fn expect_success(&self, what: &str) -> anyhow::Result<&Self> {
        if !self.status.success() {
            bail!(
                "{what} failed with {}\n--- stdout\n{}\n--- stderr\n{}",
                self.status,
                self.stdout,
                self.stderr
            );
        }
        Ok(self)
    }
}

impl FanoutBinary {
    /// `path` is `CARGO_BIN_EXE_fanout`; `target_tmp_dir` is `CARGO_TARGET_TMPDIR`
    /// (the harness keeps its files in `fanout-tests/` under it).
    pub fn new(path: impl Into<PathBuf>, target_tmp_dir: impl AsRef<Path>) -> FanoutBinary {
        FanoutBinary {
            path: path.into(),
            scratch_root: target_tmp_dir.as_ref().join("fanout-tests"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where caches (built indexes) and per-test scratch folders go.
    pub fn scratch_root(&self) -> &Path {
        &self.scratch_root
    }

    /// A command for the binary with stdin closed and no `FANOUT_*` variable
    /// inherited: every flag has an env twin, and a stray one in the test's
    /// environment would change what the child does. `NO_COLOR` keeps escape
    /// codes out of the logs the harness prints.
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.path);
        command.stdin(Stdio::null()).env("NO_COLOR", "1");
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("FANOUT_") {
                command.env_remove(name);
            }
        }
        command
    }

    /// How the harness starts the binary's services (fanout-cluster's
    /// launcher): each child's output in `<log_dir>/<label>.log`, without
    /// colour codes, no `FANOUT_*` variable inherited (see
    /// [`command`](Self::command)), and the children in the test's process
    /// group, so that a Ctrl-C that ends the test run ends them too.
    pub fn launcher(&self, log_dir: &Path) -> Launcher {
        Launcher {
            env: vec![(OsString::from("NO_COLOR"), OsString::from("1"))],
            own_process_group: false,
            ..Launcher::new(
                self.path.clone(),
                "text",
                ChildOutput::Files {
                    dir: log_dir.to_owned(),
                },
            )
        }
    }

    /// Starts `fanout <role> <args>` on its own (not in a
    /// [`TestCluster`](crate::TestCluster)) with its log in `log_dir`, and
    /// waits at most `limit` for its announce line, and for its metrics line
    /// too when `args` ask for a metrics endpoint. Dropping it kills it.
    pub async fn start(
        &self,
        role: Role,
        args: &[OsString],
        log_dir: &Path,
        limit: Duration,
    ) -> anyhow::Result<ClusterProcess> {
        let deadline = tokio::time::Instant::now() + limit;
        let process = self.launcher(log_dir).start(role, args, deadline).await?;
        if asks_for_metrics(args) {
            process.wait_for_metrics_addr(deadline).await?;
        }
        Ok(process)
    }

    /// Runs `fanout <args>` to completion, killing it after `limit`. Blocks the
    /// calling thread (call it from `spawn_blocking` where that matters).
    pub fn run<I, S>(&self, args: I, limit: Duration) -> anyhow::Result<CommandOutput>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = self.command();
        command.args(args);
        run_bounded(command, limit)
    }
}

/// Whether a service started with `args` announces a metrics endpoint:
/// `--metrics-listen` (root, leaf) or `--metrics` (`up`, for its root's).
pub(crate) fn asks_for_metrics(args: &[OsString]) -> bool {
    args.iter()
        .any(|arg| arg == "--metrics-listen" || arg == "--metrics")
}

/// Runs a command with piped stdout and stderr, killing it after `limit`.
pub fn run_bounded(mut command: Command, limit: Duration) -> anyhow::Result<CommandOutput> {
    let description = format!("{command:?}");
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {description}"))?;
    let stdout = read_to_string_in_thread(child.stdout.take());
    let stderr = read_to_string_in_thread(child.stderr.take());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = stderr.join().unwrap_or_default();
            bail!("{description} did not finish within {limit:?}\n--- stderr\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(CommandOutput {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

fn read_to_string_in_thread(
    pipe: Option<impl Read + Send + 'static>,
) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_status() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo out; echo err >&2; exit 3"]);
        let output = run_bounded(command, Duration::from_secs(10)).unwrap();
        assert_eq!(output.status.code(), Some(3));
        assert_eq!(output.stdout.trim(), "out");
        assert_eq!(output.stderr.trim(), "err");
        assert!(output.expect_success("sh").is_err());
    }

    #[test]
    fn kills_what_outlives_the_limit() {
        let mut command = Command::new("sleep");
        command.arg("30");
        let started = Instant::now();
        let error = run_bounded(command, Duration::from_millis(200)).unwrap_err();
        assert!(error.to_string().contains("did not finish"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
