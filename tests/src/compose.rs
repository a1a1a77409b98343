//! fanout as containers, for the tests across container hosts: the image
//! built by `deploy/build-image` (and the Python image of
//! `deploy/build-python-images`), and compose projects of
//! `deploy/compose/docker-compose.yml` (or of other files there, see
//! [`ComposeProject::with_files`]), each under its own project name, with
//! its own network and index volume, removed (containers, network, volume)
//! when the [`ComposeProject`] is dropped, whether the test passed or not.
//!
//! Every `docker` and `docker-compose` command runs bounded in time. Without
//! a usable Docker engine, [`docker_unavailable`] says why, and the tests
//! skip with that reason printed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::binary::{CommandOutput, run_bounded};
use crate::workspace_root;

/// The bound on one docker command (a compose `up` that builds nothing).
const COMMAND_LIMIT: Duration = Duration::from_secs(180);
/// The bound on building the image (a release build from nothing).
const BUILD_LIMIT: Duration = Duration::from_secs(2400);

/// Why container tests cannot run here, if they cannot.
pub fn docker_unavailable() -> Option<String> {
    static REASON: OnceLock<Option<String>> = OnceLock::new();
    REASON
        .get_or_init(|| {
            for (program, args) in [("docker", &["info"][..]), ("docker-compose", &["version"])] {
                let mut command = Command::new(program);
                command.args(args);
                match run_bounded(command, Duration::from_secs(30)) {
                    Ok(output) if output.status.success() => {}
                    Ok(output) => {
                        return Some(format!(
                            "`{program} {}` failed: {}",
                            args.join(" "),
                            output.stderr.trim()
                        ));
                    }
                    Err(error) => return Some(format!("`{program}` cannot run: {error:#}")),
                }
            }
            None
        })
        .clone()
}

/// The image under test: `deploy/build-image` run once per test process (a
/// no-op build when nothing changed), so the image holds the code under test.
/// `FANOUT_TEST_IMAGE` names an image to use as it is instead.
pub fn image() -> anyhow::Result<String> {
    static IMAGE: OnceLock<Result<String, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            if let Ok(image) = std::env::var("FANOUT_TEST_IMAGE") {
                return Ok(image);
            }
            let image = "fanout/fanout:test".to_owned();
            let mut command = Command::new(workspace_root().join("deploy/build-image"));
            command.env("FANOUT_IMAGE", &image);
            let output = run_bounded(command, BUILD_LIMIT).map_err(|error| format!("{error:#}"))?;
            output
                .expect_success("deploy/build-image")
                .map_err(|error| format!("{error:#}"))?;
            eprintln!("{}", output.stdout.trim());
            Ok(image)
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// What building the Python image came to.
#[derive(Debug, Clone)]
pub enum PythonImage {
    /// The image's name.
    Built(String),
    /// Its base cannot be made on this machine (not root, no debootstrap)
    /// and none is cached: why.
    CannotBuildHere(String),
}

/// The Python image (python/fanout_py's leaves and mergers):
/// `deploy/build-python-images` run once per test process (its base image,
/// wheels and root filesystem come from its cache after the first run), as
/// `fanout/python:test`. `FANOUT_TEST_PYTHON_IMAGE` names an image to use as
/// it is instead.
pub fn python_image() -> anyhow::Result<PythonImage> {
    static IMAGE: OnceLock<Result<PythonImage, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            if let Ok(image) = std::env::var("FANOUT_TEST_PYTHON_IMAGE") {
                return Ok(PythonImage::Built(image));
            }
            let image = "fanout/python:test".to_owned();
            let mut command = Command::new(workspace_root().join("deploy/build-python-images"));
            command.env("FANOUT_PYTHON_IMAGE", &image);
            let output = run_bounded(command, BUILD_LIMIT).map_err(|error| format!("{error:#}"))?;
            // Exit status 3: the script says it cannot make the base here.
            if output.status.code() == Some(3) {
                return Ok(PythonImage::CannotBuildHere(
                    output.stderr.trim().to_owned(),
                ));
            }
            output
                .expect_success("deploy/build-python-images")
                .map_err(|error| format!("{error:#}"))?;
            // Its steps (a base made or reused, how long debootstrap took).
            for line in output.stderr.lines() {
                if line.starts_with("build-python-images:") {
                    eprintln!("{line}");
                }
            }
            eprintln!("{}", output.stdout.trim());
            Ok(PythonImage::Built(image))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Runs `docker <args>`, bounded; fails unless it exits 0.
pub fn docker(args: &[&str]) -> anyhow::Result<String> {
    let mut command = Command::new("docker");
    command.args(args);
    let output = run_bounded(command, COMMAND_LIMIT)?;
    output.expect_success(&format!("docker {}", args.join(" ")))?;
    Ok(output.stdout)
}

/// `127.0.0.1:PORT` with a port free now.
fn free_loopback_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    let port = listener.local_addr().expect("its address").port();
    format!("127.0.0.1:{port}")
}

/// One compose project of `deploy/compose/docker-compose.yml` (or of the
/// files given to [`ComposeProject::with_files`]).
pub struct ComposeProject {
    name: String,
    files: Vec<PathBuf>,
    env: Vec<(String, String)>,
    started: Instant,
}

impl ComposeProject {
    /// A project named `fanout-test-<label>-<pid>` of `image`, its root
    /// and its metrics published on free loopback ports; `env` sets the compose file's
    /// variables (`FANOUT_CORPUS`, ...). Nothing runs until [`Self::up`].
    pub fn new(label: &str, image: &str, env: &[(&str, &str)]) -> ComposeProject {
        // Fixed host ports (free now), so that they stay the same when the
        // root's container restarts (a random one would change).
        let mut all: Vec<(String, String)> = vec![
            ("FANOUT_IMAGE".into(), image.into()),
            ("FANOUT_MERGER_IMAGE".into(), image.into()),
            ("FANOUT_ROOT_PUBLISH".into(), free_loopback_port()),
            ("FANOUT_METRICS_PUBLISH".into(), free_loopback_port()),
        ];
        for (key, value) in env {
            all.retain(|(existing, _)| existing != key);
            all.push(((*key).into(), (*value).into()));
        }
        ComposeProject {
            name: format!("fanout-test-{label}-{}", std::process::id()),
            files: vec![workspace_root().join("deploy/compose/docker-compose.yml")],
            env: all,
            started: Instant::now(),
        }
    }

    /// The project of these compose files of `deploy/compose/` instead (in
    /// this order: later ones override earlier ones), e.g.
    /// `["docker-compose.yml", "python-merger.yml"]`.
    pub fn with_files(mut self, files: &[&str]) -> ComposeProject {
        let folder = workspace_root().join("deploy/compose");
        self.files = files.iter().map(|file| folder.join(file)).collect();
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The project's private network.
    pub fn network(&self) -> String {
        format!("{}_cluster", self.name)
    }

    /// Runs `docker-compose -p NAME -f FILE... <args>`, bounded.
    pub fn compose(&self, args: &[&str]) -> anyhow::Result<CommandOutput> {
        let mut command = Command::new("docker-compose");
        command.args(["--ansi", "never"]).args(["-p", &self.name]);
        for file in &self.files {
            command.arg("-f").arg(file);
        }
        command.args(args).current_dir(workspace_root());
        for (key, value) in &self.env {
            command.env(key, value);
        }
        run_bounded(command, COMMAND_LIMIT)
    }

    /// Like [`Self::compose`], failing unless it exits 0.
    pub fn compose_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self.compose(args)?;
        output.expect_success(&format!("docker-compose {}", args.join(" ")))?;
        Ok(output.stdout)
    }

    /// `up -d`: returns once every service with a health check is healthy
    /// (compose waits for the leaves; this waits for the root and merger).
    pub fn up(&mut self) -> anyhow::Result<Duration> {
        self.started = Instant::now();
        self.compose_ok(&["up", "-d"])?;
        for service in ["root", "merger"] {
            self.wait_healthy(service, Duration::from_secs(120))?;
        }
        Ok(self.started.elapsed())
    }

    /// The ids of `service`'s containers, running or not.
    pub fn containers(&self, service: &str) -> anyhow::Result<Vec<String>> {
        let listed = self.compose_ok(&["ps", "-q", service])?;
        Ok(listed
            .lines()
            .map(str::to_owned)
            .filter(|id| !id.is_empty())
            .collect())
    }

    /// The one container of a service that has one.
    pub fn container(&self, service: &str) -> anyhow::Result<String> {
        let mut containers = self.containers(service)?;
        if containers.len() != 1 {
            bail!("{service} has {} containers, not one", containers.len());
        }
        Ok(containers.remove(0))
    }

    /// `{{.State.Health.Status}}` of a container (`healthy`, `starting`, ...).
    pub fn health(container: &str) -> anyhow::Result<String> {
        Ok(
            docker(&["inspect", "-f", "{{.State.Health.Status}}", container])?
                .trim()
                .to_owned(),
        )
    }

    /// Waits until every container of `service` is healthy.
    pub fn wait_healthy(&self, service: &str, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let containers = self.containers(service)?;
            let mut states = Vec::new();
            for container in &containers {
                states.push(Self::health(container)?);
            }
            if !states.is_empty() && states.iter().all(|state| state == "healthy") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{service} is not healthy after {limit:?}: {states:?}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The host address `service`'s container `port` is published on.
    pub fn published(&self, service: &str, port: u16) -> anyhow::Result<SocketAddr> {
        let printed = self.compose_ok(&["port", service, &port.to_string()])?;
        printed
            .trim()
            .parse()
            .with_context(|| format!("`docker-compose port {service} {port}` printed {printed:?}"))
    }

    /// The root's gRPC address on the host.
    pub fn root_addr(&self) -> anyhow::Result<SocketAddr> {
        self.published("root", 50051)
    }

    /// A container's address on the project's network.
    pub fn ip_of(&self, container: &str) -> anyhow::Result<String> {
        let format = format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            self.network()
        );
        Ok(docker(&["inspect", "-f", &format, container])?
            .trim()
            .to_owned())
    }

    /// The last lines of every container's log.
    pub fn log_tail(&self) -> String {
        match self.compose(&["logs", "--no-color", "--tail", "40"]) {
            Ok(output) => output.combined(),
            Err(error) => format!("(no logs: {error:#})"),
        }
    }
}

impl Drop for ComposeProject {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- compose project {} after {:?}, its logs' tails:\n{}",
                self.name,
                self.started.elapsed(),
                self.log_tail()
            );
            // The whole logs, for what the tails do not show.
            let path = std::env::temp_dir().join(format!("{}.log", self.name));
            if let Ok(output) = self.compose(&["logs", "--no-color", "--timestamps"])
                && std::fs::write(&path, output.combined()).is_ok()
            {
                eprintln!("--- every container's log: {}", path.display());
            }
        }
        // Paused containers cannot be stopped: unpause first.
        let listed = self.compose_ok(&["ps", "-q"]).unwrap_or_default();
        for container in listed.lines().filter(|id| !id.is_empty()) {
            let _ = docker(&["unpause", container]);
        }
        match self.compose(&["down", "--volumes", "--remove-orphans", "--timeout", "2"]) {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!("compose down {} failed:\n{}", self.name, output.combined()),
            Err(error) => eprintln!("compose down {} failed: {error:#}", self.name),
        }
    }
}
