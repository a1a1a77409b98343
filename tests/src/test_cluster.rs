//! A whole fanout cluster of real processes on loopback, started with
//! fanout-cluster's launcher: S x R leaves (one per shard folder of an index),
//! optionally a merger process, and a root pointed at them with
//! `--shard i=addr,addr` flags. And the one search call the tests make.
//!
//! [`TestCluster::start`] returns once every process has announced its
//! address and reports SERVING; dropping the cluster kills them all. Each
//! process logs to a file of its own in a [`ScratchDir`]; when the cluster is
//! dropped during a panic (a failing test), every process prints the tail of
//! its log and the folder is kept.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use fanout_cluster::{
    Cluster, ClusterProcess, LEAF_SERVICE_NAME, MERGER_SERVICE_NAME, ReadyIndex, Role,
    SEARCH_SERVICE_NAME, health, root_args, start_leaves, start_merger, wait_until_serving,
};
use fanout_proto::search::v1::search_client::SearchClient;
use fanout_proto::search::v1::{SearchRequest, SearchResponse};
use fanout_proto::v1::root_client::RootClient;
use futures::future::try_join_all;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::binary::asks_for_metrics;
use crate::{FanoutBinary, IndexFixture, ScratchDir};

/// Longest wait for the processes started together to announce their addresses.
const ANNOUNCE_LIMIT: Duration = Duration::from_secs(60);
/// Longest wait for the processes to report SERVING after announcing.
const HEALTHY_LIMIT: Duration = Duration::from_secs(30);

/// Where the root's merge runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergerPlacement {
    /// A `fanout merger` process, passed to the root as `--merger URL`.
    Separate,
    /// The root's in-process top-k merge (no `--merger`).
    Embedded,
}

/// The index a cluster serves.
#[derive(Debug, Clone)]
enum ClusterIndex {
    /// Built already (holds `index.json`, `shard-<i>/`).
    Dir(PathBuf),
    /// BEIR SciFact in this many shards, built once and shared
    /// ([`IndexFixture::scifact`]).
    SciFact { shards: u32 },
}

/// The shape of a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    index: ClusterIndex,
    /// Leaves per shard.
    pub replicas: u32,
    pub merger: MergerPlacement,
    /// The root's `--default-timeout-ms`; `None` keeps its default.
    pub root_timeout: Option<Duration>,
    /// More flags for every leaf (e.g. `--drain-delay-ms 500`).
    pub leaf_args: Vec<String>,
    /// More flags for one leaf only: `(shard, replica, flags)`.
    pub leaf_args_for: Vec<(u32, u32, Vec<String>)>,
    /// More flags for the root.
    pub root_args: Vec<String>,
    /// Set in every process's environment (e.g. `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub env: Vec<(String, String)>,
    /// Every process's `--log-format` (`text` unless set).
    pub log_format: &'static str,
}

impl ClusterOptions {
    /// A cluster over the index built in `index_dir` (by `fanout index`):
    /// one replica per shard, a separate merger, the root's default timeout.
    pub fn new(index_dir: impl Into<PathBuf>) -> ClusterOptions {
        ClusterOptions::over(ClusterIndex::Dir(index_dir.into()))
    }

    /// The same over SciFact in `shards` shards, built (once, and shared by
    /// every test binary) when the cluster starts.
    pub fn scifact(shards: u32) -> ClusterOptions {
        ClusterOptions::over(ClusterIndex::SciFact { shards })
    }

    fn over(index: ClusterIndex) -> ClusterOptions {
        ClusterOptions {
            index,
            replicas: 1,
            merger: MergerPlacement::Separate,
            root_timeout: None,
            leaf_args: Vec::new(),
            leaf_args_for: Vec::new(),
            root_args: Vec::new(),
            env: Vec::new(),
            log_format: "text",
        }
    }

    /// Sets `name=value` in every process's environment.
    pub fn env(mut self, name: &str, value: &str) -> ClusterOptions {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// JSON log lines from every process.
    pub fn json_logs(mut self) -> ClusterOptions {
        self.log_format = "json";
        self
    }

    /// Adds flags for the leaf serving `replica` of `shard` only.
    pub fn leaf_args_for(mut self, shard: u32, replica: u32, args: &[&str]) -> ClusterOptions {
        let args = args.iter().map(|arg| (*arg).to_owned()).collect();
        self.leaf_args_for.push((shard, replica, args));
        self
    }

    /// Adds flags for the root.
    pub fn root_args(mut self, args: &[&str]) -> ClusterOptions {
        self.root_args
            .extend(args.iter().map(|arg| (*arg).to_owned()));
        self
    }

    pub fn replicas(mut self, replicas: u32) -> ClusterOptions {
        self.replicas = replicas;
        self
    }

    pub fn merger(mut self, merger: MergerPlacement) -> ClusterOptions {
        self.merger = merger;
        self
    }

    pub fn root_timeout(mut self, timeout: Duration) -> ClusterOptions {
        self.root_timeout = Some(timeout);
        self
    }

    /// The flags of every leaf, then those of this one.
    fn leaf_flags(&self, shard: u32, replica: u32) -> Vec<OsString> {
        let mut args: Vec<OsString> = self.leaf_args.iter().map(OsString::from).collect();
        for (for_shard, for_replica, extra) in &self.leaf_args_for {
            if (*for_shard, *for_replica) == (shard, replica) {
                args.extend(extra.iter().map(OsString::from));
            }
        }
        args
    }
}

/// A running cluster: its processes, then (dropped last, so that the
/// processes can print the tails of their logs first) the folder of logs.
pub struct TestCluster {
    processes: Cluster,
    shard_count: u32,
    replicas: u32,
    logs: ScratchDir,
}

impl TestCluster {
    /// Starts every process and waits until all report SERVING: leaves and
    /// merger first, so that the root starts with healthy backends.
    pub async fn start(
        binary: &FanoutBinary,
        options: ClusterOptions,
    ) -> anyhow::Result<TestCluster> {
        anyhow::ensure!(
            options.replicas >= 1,
            "a cluster needs at least one replica per shard"
        );
        let index_dir = match &options.index {
            ClusterIndex::Dir(dir) => dir.clone(),
            ClusterIndex::SciFact { shards } => IndexFixture::scifact(binary, *shards)
                .with_context(|| format!("SciFact in {shards} shards does not build"))?
                .dir()
                .to_owned(),
        };
        let index = ReadyIndex::open(&index_dir)?;
        let logs = ScratchDir::new(binary.scratch_root(), "cluster")?;
        let mut launcher = binary.launcher(logs.path());
        launcher.log_format = options.log_format;
        launcher.env.extend(
            options
                .env
                .iter()
                .map(|(name, value)| (OsString::from(name), OsString::from(value))),
        );
        let mut processes = Cluster::default();

        start_leaves(
            &mut processes,
            &launcher,
            &index,
            options.replicas,
            |shard, replica| options.leaf_flags(shard, replica),
        )?;
        if options.merger == MergerPlacement::Separate {
            start_merger(&mut processes, &launcher)?;
        }
        processes.admit_all(Instant::now() + ANNOUNCE_LIMIT).await?;
        let healthy_by = Instant::now() + HEALTHY_LIMIT;
        try_join_all(
            processes
                .processes
                .iter()
                .map(|process| until_ready(process, healthy_by)),
        )
        .await?;

        let shard_count = index.manifest.shard_count;
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut args = root_args(&processes, shard_count, any_port)?;
        if let Some(timeout) = options.root_timeout {
            args.push("--default-timeout-ms".into());
            args.push(timeout.as_millis().to_string().into());
        }
        args.extend(options.root_args.iter().map(OsString::from));
        processes.start(&launcher, Role::ROOT, &args)?;
        processes.admit_all(Instant::now() + ANNOUNCE_LIMIT).await?;
        let root = processes
            .process(Role::ROOT)
            .context("the root is missing from the cluster")?;
        until_ready(root, Instant::now() + HEALTHY_LIMIT).await?;

        Ok(TestCluster {
            processes,
            shard_count,
            replicas: options.replicas,
            logs,
        })
    }

    pub fn root(&self) -> &ClusterProcess {
        self.processes
            .process(Role::ROOT)
            .expect("a started cluster has a root")
    }

    pub fn root_url(&self) -> String {
        self.root().url()
    }

    pub fn merger(&self) -> Option<&ClusterProcess> {
        self.processes.process(Role::Merger)
    }

    /// The leaf serving `replica` of `shard`. Panics if out of range.
    pub fn leaf(&self, shard: u32, replica: u32) -> &ClusterProcess {
        self.processes
            .process(Role::Leaf {
                shard_id: shard,
                replica,
            })
            .unwrap_or_else(|| {
                panic!(
                    "no leaf {shard}.{replica} in a cluster of {} shards x {} replicas",
                    self.shard_count, self.replicas
                )
            })
    }

    /// Every process: the leaves, the merger, the root.
    pub fn processes(&self) -> impl Iterator<Item = &ClusterProcess> {
        self.processes.processes.iter()
    }

    pub fn shard_count(&self) -> u32 {
        self.shard_count
    }

    pub fn replicas(&self) -> u32 {
        self.replicas
    }

    /// Where the processes' logs are.
    pub fn log_dir(&self) -> &Path {
        self.logs.path()
    }

    /// A channel to the root, connected now.
    pub async fn root_channel(&self) -> anyhow::Result<Channel> {
        health::connect(self.root().addr).await
    }

    /// A `fanout.search.v1.Search` client on the root.
    pub async fn search_client(&self) -> anyhow::Result<SearchClient<Channel>> {
        Ok(SearchClient::new(self.root_channel().await?))
    }

    /// A `fanout.v1.Root` client on the root.
    pub async fn root_client(&self) -> anyhow::Result<RootClient<Channel>> {
        Ok(RootClient::new(self.root_channel().await?))
    }
}

/// Waits until `process` has said where it serves metrics (if its flags ask
/// for an endpoint) and its service's health is SERVING.
async fn until_ready(process: &ClusterProcess, deadline: Instant) -> anyhow::Result<()> {
    let label = process.role.label();
    if asks_for_metrics(process.args()) {
        process.wait_for_metrics_addr(deadline).await?;
    }
    let service = match process.role {
        Role::Leaf { .. } => LEAF_SERVICE_NAME,
        Role::Merger => MERGER_SERVICE_NAME,
        Role::Root { .. } | Role::Up => SEARCH_SERVICE_NAME,
    };
    wait_until_serving(process.addr, service, deadline)
        .await
        .with_context(|| format!("{label} did not become healthy"))
}

/// The cluster a test runs against, started with `options`; fails the test
/// if it does not start.
pub async fn start_cluster(binary: &FanoutBinary, options: ClusterOptions) -> TestCluster {
    TestCluster::start(binary, options)
        .await
        .unwrap_or_else(|error| panic!("the cluster does not start: {error:#}"))
}

/// One `Search` call with `timeout` as its `grpc-timeout`.
pub async fn search(
    client: &SearchClient<Channel>,
    request: SearchRequest,
    timeout: Duration,
) -> Result<SearchResponse, tonic::Status> {
    let mut request = tonic::Request::new(request);
    request.set_timeout(timeout);
    Ok(client.clone().search(request).await?.into_inner())
}
