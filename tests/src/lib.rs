//! Harness for fanout's cross-process tests: real `fanout` processes (leaves,
//! merger, root) on loopback, started from the freshly built binary.
//!
//! The tests themselves live in `tests/e2e/*.rs` and are compiled as
//! integration tests of the `fanout` package (see the `[[test]]` sections of
//! `cli/Cargo.toml`), so that Cargo builds the `fanout` binary first and hands
//! its path over as `CARGO_BIN_EXE_fanout`. A test gets hold of it with
//! [`fanout_binary!`].
//!
//! Modules:
//! - [`binary`]: [`FanoutBinary`], the binary under test: runs one-shot
//!   subcommands (`index`, `eval`) to completion, bounded in time.
//! - [`scratch`]: [`ScratchDir`], a folder for logs and small files, removed on
//!   drop unless the test failed.
//! - [`child_process`]: [`ChildProcess`], one long-running `fanout` service:
//!   reads its announce line, keeps its stderr in a log, SIGKILLed on drop.
//! - [`health`]: `grpc.health.v1` checks and [`wait_until_serving`].
//! - [`index_fixture`]: [`IndexFixture`], shard indexes built once with
//!   `fanout index` and cached on disk for every test binary to share.
//! - [`cluster`]: [`Cluster`], S x R leaves, a merger and a root, all healthy
//!   before the test starts, all killed on drop.
//! - [`leaf_stats`]: a leaf's own call counts (`fanout-leaf-stats`), asked directly.
//! - [`metrics`]: `GET /metrics` over a raw socket and a parser of the
//!   Prometheus text format, to compare a service's counts with what a test
//!   saw.
//! - [`beir`]: BEIR relevance collections (SciFact): judged queries and qrels.
//! - [`ndcg`]: nDCG@k with graded gains and a log2 discount.
//! - [`processes`]: children and liveness of pids, from `/proc`.
//! - [`time_limit`]: [`within`], so that no await in a test can hang.

pub mod beir;
pub mod binary;
pub mod child_process;
pub mod cluster;
pub mod health;
pub mod index_fixture;
pub mod leaf_stats;
pub mod metrics;
pub mod ndcg;
pub mod processes;
pub mod scratch;
pub mod time_limit;

use std::path::PathBuf;

pub use beir::{BeirQuery, Qrels};
pub use binary::{CommandOutput, FanoutBinary};
pub use child_process::ChildProcess;
pub use cluster::{Cluster, ClusterOptions, MergerPlacement};
pub use health::{health_status, wait_for_status, wait_until_serving};
pub use index_fixture::{CorpusSpec, IndexFixture};
pub use leaf_stats::leaf_stats;
pub use ndcg::ndcg_at_k;
pub use scratch::ScratchDir;
pub use time_limit::within;

/// The workspace root (where `data/`, `proto/` and `Cargo.lock` are).
pub fn workspace_root() -> PathBuf {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    path.canonicalize().unwrap_or(path)
}

/// The `fanout` binary of the package whose integration test expands this,
/// with that package's `CARGO_TARGET_TMPDIR` as the place for caches and logs.
/// Only usable in integration tests of the `fanout` package.
#[macro_export]
macro_rules! fanout_binary {
    () => {
        $crate::FanoutBinary::new(env!("CARGO_BIN_EXE_fanout"), env!("CARGO_TARGET_TMPDIR"))
    };
}
