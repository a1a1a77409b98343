//! Local fanout clusters of real processes, shared by `fanout up` (the
//! embedded default) and `fanout loadgen scenario` (benchmarks).
//!
//! - [`index`]: the index a cluster serves, built once per corpus and shard
//!   count and reused from then on.
//! - [`process`]: starting children from the fanout binary, reading their
//!   announced addresses, forwarding or filing their output, stopping them.
//! - [`local`]: the usual shape: S x R leaves and a merger first, then roots
//!   pointed at them, each waited for until `grpc.health.v1` says SERVING.
//! - [`health`]: `grpc.health.v1` from the outside: one check, a wait for a
//!   status, the wait for SERVING after a start.
//! - [`otlp`]: an OTLP/gRPC trace receiver on loopback, for the tests of
//!   traces and for benchmark scenarios that trace (it keeps or counts the
//!   spans it gets, as a collector would receive them).
//! - [`signals`]: the stop signals the parent must hear to stop its children.
//! - [`supervise`]: the delays before a child that died is started again.
//! - [`workspace`]: the workspace's bundled data and index cache.

pub mod certs;
pub mod health;
pub mod index;
pub mod local;
pub mod otlp;
pub mod process;
pub mod signals;
pub mod supervise;
pub mod workspace;

pub use health::{wait_until_serving, wait_until_serving_over};
pub use index::{IndexSource, ReadyIndex, ensure_index};
pub use local::{
    LEAF_SERVICE_NAME, MERGER_SERVICE_NAME, SEARCH_SERVICE_NAME, root_args, start_leaves,
    start_merger, start_merger_with,
};
pub use process::{ChildOutput, Cluster, ClusterProcess, Launcher, Role, current_executable};
pub use supervise::RestartBackoff;
