//! A whole fanout cluster of real processes on loopback: S x R leaves (one
//! per shard folder of an index), optionally a merger process, and a root
//! pointed at them with `--shard i=addr,addr` flags.
//!
//! [`Cluster::start`] returns once every process has announced its address
//! and reports SERVING; dropping the cluster kills them all (root first).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use fanout_proto::search::v1::search_client::SearchClient;
use fanout_proto::v1::root_client::RootClient;
use futures::future::try_join_all;
use tonic::transport::Channel;

use crate::{ChildProcess, FanoutBinary, IndexFixture, ScratchDir, health, wait_until_serving};

/// Longest wait for one process to announce its address.
const ANNOUNCE_LIMIT: Duration = Duration::from_secs(60);
/// Longest wait for one process to report SERVING after announcing.
const HEALTHY_LIMIT: Duration = Duration::from_secs(30);

/// Where the root's merge runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergerPlacement {
    /// A `fanout merger` process, passed to the root as `--merger URL`.
    Separate,
    /// The root's in-process top-k merge (no `--merger`).
    Embedded,
}

/// The shape of a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// An index built by `fanout index` (holds `index.json`, `shard-<i>/`).
    pub index_dir: PathBuf,
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
}

impl ClusterOptions {
    /// One replica per shard, a separate merger, the root's default timeout.
    pub fn new(index_dir: impl Into<PathBuf>) -> ClusterOptions {
        ClusterOptions {
            index_dir: index_dir.into(),
            replicas: 1,
            merger: MergerPlacement::Separate,
            root_timeout: None,
            leaf_args: Vec::new(),
            leaf_args_for: Vec::new(),
            root_args: Vec::new(),
        }
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
}

/// A running cluster. Fields drop in order: root, merger, leaves, logs.
#[derive(Debug)]
pub struct Cluster {
    root: ChildProcess,
    merger: Option<ChildProcess>,
    /// `leaves[shard][replica]`.
    leaves: Vec<Vec<ChildProcess>>,
    logs: ScratchDir,
}

impl Cluster {
    /// Starts every process and waits until all report SERVING.
    pub async fn start(binary: &FanoutBinary, options: ClusterOptions) -> anyhow::Result<Cluster> {
        let index = IndexFixture::open(&options.index_dir)?;
        let logs = ScratchDir::new(binary.scratch_root(), "cluster")?;
        anyhow::ensure!(
            options.replicas >= 1,
            "a cluster needs at least one replica per shard"
        );

        let leaf_starts = (0..index.shard_count()).flat_map(|shard| {
            let index = &index;
            let options = &options;
            let logs = &logs;
            (0..options.replicas).map(move |replica| {
                let mut args: Vec<OsString> = vec![
                    "leaf".into(),
                    "--shard-dir".into(),
                    index.shard_dir(shard).into(),
                    "--listen".into(),
                    "127.0.0.1:0".into(),
                ];
                args.extend(options.leaf_args.iter().map(OsString::from));
                for (for_shard, for_replica, extra) in &options.leaf_args_for {
                    if (*for_shard, *for_replica) == (shard, replica) {
                        args.extend(extra.iter().map(OsString::from));
                    }
                }
                let name = format!("leaf-{shard}-{replica}");
                async move {
                    ChildProcess::start(binary, &name, args, logs.path(), ANNOUNCE_LIMIT).await
                }
            })
        });
        let merger_start = async {
            match options.merger {
                MergerPlacement::Embedded => Ok(None),
                MergerPlacement::Separate => {
                    let args = vec!["merger".into(), "--listen".into(), "127.0.0.1:0".into()];
                    ChildProcess::start(binary, "merger", args, logs.path(), ANNOUNCE_LIMIT)
                        .await
                        .map(Some)
                }
            }
        };
        let (flat_leaves, merger) = futures::try_join!(try_join_all(leaf_starts), merger_start)?;

        let mut leaves: Vec<Vec<ChildProcess>> = Vec::new();
        let mut flat_leaves = flat_leaves.into_iter();
        for _ in 0..index.shard_count() {
            leaves.push(
                flat_leaves
                    .by_ref()
                    .take(options.replicas as usize)
                    .collect(),
            );
        }

        let mut root_args: Vec<OsString> =
            vec!["root".into(), "--listen".into(), "127.0.0.1:0".into()];
        for (shard, replicas) in leaves.iter().enumerate() {
            let addrs: Vec<String> = replicas
                .iter()
                .map(|leaf| leaf.addr().to_string())
                .collect();
            root_args.push("--shard".into());
            root_args.push(format!("{shard}={}", addrs.join(",")).into());
        }
        if let Some(merger) = &merger {
            root_args.push("--merger".into());
            root_args.push(merger.url().into());
        }
        if let Some(timeout) = options.root_timeout {
            root_args.push("--default-timeout-ms".into());
            root_args.push(timeout.as_millis().to_string().into());
        }
        root_args.extend(options.root_args.iter().map(OsString::from));

        // Leaves and merger first, so the root starts with healthy backends.
        let backends = leaves.iter().flatten().chain(merger.as_ref());
        try_join_all(backends.map(|process| async move {
            wait_until_serving(process.addr(), HEALTHY_LIMIT)
                .await
                .with_context(|| format!("{} did not become healthy", process.name()))
        }))
        .await?;
        let root =
            ChildProcess::start(binary, "root", root_args, logs.path(), ANNOUNCE_LIMIT).await?;
        wait_until_serving(root.addr(), HEALTHY_LIMIT)
            .await
            .context("the root did not become healthy")?;

        Ok(Cluster {
            root,
            merger,
            leaves,
            logs,
        })
    }

    pub fn root(&self) -> &ChildProcess {
        &self.root
    }

    pub fn root_url(&self) -> String {
        self.root.url()
    }

    pub fn merger(&self) -> Option<&ChildProcess> {
        self.merger.as_ref()
    }

    /// The leaf serving `replica` of `shard`. Panics if out of range.
    pub fn leaf(&self, shard: u32, replica: u32) -> &ChildProcess {
        &self.leaves[shard as usize][replica as usize]
    }

    pub fn shard_count(&self) -> u32 {
        self.leaves.len() as u32
    }

    pub fn replicas(&self) -> u32 {
        self.leaves
            .first()
            .map_or(0, |replicas| replicas.len() as u32)
    }

    /// Where the processes' stderr logs are.
    pub fn log_dir(&self) -> &std::path::Path {
        self.logs.path()
    }

    /// A channel to the root, connected now.
    pub async fn root_channel(&self) -> anyhow::Result<Channel> {
        health::connect(self.root.addr()).await
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
