//! Harness for fanout's cross-process tests: real `fanout` processes (leaves,
//! merger, root) on loopback, started from the freshly built binary.
//!
//! The tests themselves live in `tests/e2e/*.rs` and are compiled as
//! integration tests of the `fanout` package (see the `[[test]]` sections of
//! `cli/Cargo.toml`), so that Cargo builds the `fanout` binary first and hands
//! its path over as `CARGO_BIN_EXE_fanout`. A test gets hold of it with
//! [`fanout_binary!`].
//!
//! Every long-running process (leaf, merger, root, `fanout up` itself) is
//! started through the `fanout-cluster` crate, the same launcher as `fanout
//! up` and `fanout loadgen scenario` use: [`ClusterProcess`] is a test's
//! handle on one (its addresses, signals, whether it exited, its log).
//!
//! Modules:
//! - [`binary`]: [`FanoutBinary`], the binary under test: runs one-shot
//!   subcommands (`index`, `eval`) to completion, bounded in time, and starts
//!   one service on its own ([`FanoutBinary::start`]) with fanout-cluster's
//!   launcher, its log in a file.
//! - [`test_cluster`]: [`TestCluster`], S x R leaves, a merger and a root,
//!   all healthy before the test starts, all killed on drop, each process's
//!   log tail printed when a test fails; [`start_cluster`] and [`search`],
//!   what every test of a cluster starts with and calls.
//! - [`scratch`]: [`ScratchDir`], a folder for logs and small files, removed on
//!   drop unless the test failed.
//! - [`index_fixture`]: [`IndexFixture`], shard indexes built once with
//!   `fanout index` and cached on disk for every test binary to share.
//! - [`health`]: `grpc.health.v1` checks (fanout-cluster's): [`health::connect`],
//!   [`health_status`], [`wait_for_status`], [`wait_until_serving`].
//! - [`leaf_stats`]: a leaf's own call counts (`fanout-leaf-stats`), asked directly.
//! - [`metrics`]: `GET /metrics` over a raw socket and a parser of the
//!   Prometheus text format, to compare a service's counts with what a test
//!   saw.
//! - [`bench`]: what the benchmarks share: [`bench::bench_queries`], the query
//!   log they replay, and [`bench::env_count`].
//! - [`beir`]: BEIR relevance collections (SciFact): judged queries and qrels.
//! - [`ndcg`]: nDCG@k with graded gains and a log2 discount.
//! - [`compose`]: the fanout image (and the Python one of
//!   `deploy/build-python-images`) and compose projects of
//!   `deploy/compose/*.yml`, removed on drop, for the tests across
//!   containers (skipped, with the reason, without Docker).
//! - [`otlp`]: fanout-cluster's [`otlp::OtlpReceiver`], an OTLP/gRPC trace
//!   receiver on loopback that keeps the spans fanout's processes export.
//! - [`open_loop`]: [`open_loop::OpenLoop`], searches at a fixed rate with
//!   every outcome kept by send time, cut into phases by [`open_loop::PhaseStats`].
//! - [`processes`]: children and liveness of pids, from `/proc`.
//! - [`python`]: fanout's Python services (`python/fanout_py`) as processes,
//!   and the interpreter the tests use.
//! - [`time_limit`]: [`within`], so that no await in a test can hang.

pub mod beir;
pub mod bench;
pub mod binary;
pub mod compose;
pub mod index_fixture;
pub mod leaf_stats;
pub mod metrics;
pub mod ndcg;
pub mod open_loop;
pub mod processes;
pub mod python;
pub mod scratch;
pub mod test_cluster;
pub mod time_limit;

use std::path::PathBuf;

pub use beir::{BeirQuery, Qrels};
pub use binary::{CommandOutput, FanoutBinary};
pub use fanout_cluster::health::{self, health_status, wait_for_status};
pub use fanout_cluster::otlp;
pub use fanout_cluster::{
    ClusterProcess, LEAF_SERVICE_NAME, MERGER_SERVICE_NAME, Role, SEARCH_SERVICE_NAME,
    wait_until_serving,
};
pub use index_fixture::{CorpusSpec, IndexFixture};
pub use leaf_stats::leaf_stats;
pub use ndcg::ndcg_at_k;
pub use scratch::ScratchDir;
pub use test_cluster::{ClusterOptions, MergerPlacement, TestCluster, search, start_cluster};
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
