//! fanout's Python services (`python/fanout_py`) as real processes: the
//! interpreter the tests use, and one service started with
//! `python -m fanout_py.<module> --listen 127.0.0.1:0 ...`, its announce
//! line read in time, its stderr in a log file, killed on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::workspace_root;

/// `$FANOUT_PYTHON`, else `<workspace>/.venv/bin/python` (which `.ci/run`
/// creates from `tests/python/requirements.txt`); panics with how to make
/// one when neither exists.
pub fn python_interpreter() -> PathBuf {
    if let Some(python) = std::env::var_os("FANOUT_PYTHON") {
        return PathBuf::from(python);
    }
    let venv_python = workspace_root().join(".venv/bin/python");
    assert!(
        venv_python.exists(),
        "no Python for the test: {} does not exist and FANOUT_PYTHON is not set. \
         Run .ci/run, or: python3 -m venv .venv && .venv/bin/pip install -r tests/python/requirements.txt",
        venv_python.display()
    );
    venv_python
}

/// One running Python service.
pub struct PythonService {
    pub addr: SocketAddr,
    child: Child,
    log: PathBuf,
}

impl PythonService {
    /// Starts `python -m module --listen 127.0.0.1:0 args...` in `python/`,
    /// its stderr in `<log_dir>/<label>.log`, and waits at most `limit` for
    /// `fanout <role> listening on ADDR`.
    pub async fn start(
        module: &str,
        args: &[String],
        label: &str,
        log_dir: &Path,
        limit: Duration,
    ) -> anyhow::Result<PythonService> {
        let log = log_dir.join(format!("{label}.log"));
        let stderr = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let python_dir = workspace_root().join("python");
        let mut command = Command::new(python_interpreter());
        command
            .args(["-m", module, "--listen", "127.0.0.1:0"])
            .args(args)
            .current_dir(&python_dir)
            .env("PYTHONPATH", &python_dir)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {command:?}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut service = PythonService {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child,
            log,
        };
        let announced = async {
            let stdout = tokio::process::ChildStdout::from_std(stdout)?;
            let mut lines = BufReader::new(stdout).lines();
            while let Some(line) = lines.next_line().await? {
                if let Some(addr) = line
                    .strip_prefix("fanout ")
                    .and_then(|rest| rest.split_once(" listening on "))
                    .map(|(_, addr)| addr.trim().to_owned())
                {
                    return addr.parse::<SocketAddr>().context("the announced address");
                }
            }
            bail!("it exited before announcing")
        };
        match tokio::time::timeout(limit, announced).await {
            Ok(Ok(addr)) => service.addr = addr,
            Ok(Err(error)) => bail!("{module}: {error:#}\n{}", service.log_tail(30)),
            Err(_) => bail!(
                "{module} did not announce within {limit:?}\n{}",
                service.log_tail(30)
            ),
        }
        Ok(service)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reaped.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether it has exited (reaping it if so).
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n");
        format!("--- {} (last {lines} lines)\n{tail}", self.log.display())
    }
}

impl Drop for PythonService {
    fn drop(&mut self) {
        self.kill();
    }
}
