//! fanout's root: the public API. It takes a request, fans it out to every
//! shard (one replica each, failing over to another on retryable errors),
//! streams each shard's answer into the merger the moment it arrives, and
//! answers with the merged result and its coverage.
//!
//! Modules, in the order a request meets them:
//!
//! - [`config`] and [`topology`]: [`RootConfig`]; which replicas serve which
//!   shard ([`Topology`], from TOML or `--shard` flags), validated.
//! - [`server`]: [`RootServer`], which builds the [`cluster`] and serves.
//! - [`search`]: `fanout.search.v1.Search`, validation and the two phases;
//!   [`query`]: the generic `fanout.v1.Root/Query`.
//! - [`request_id`]: the id that ties a request's logs and leaf calls together.
//! - [`deadline`]: the request's time frame (caller's `grpc-timeout`, request
//!   limit, default, margin).
//! - [`fanout`]: scatter to every shard and stream the answers into the merge;
//!   stop at the deadline or when the merger has enough.
//! - [`shard_call`]: one shard's call, hedged and failed over between its
//!   replicas.
//! - [`hedge`]: hedging policies, the per-shard latency histogram, the
//!   budget hedges and retries share, the sub-millisecond hedge timer.
//! - [`replica`]: lazily connected channels per replica; [`selector`]: which
//!   replica goes first (power of two choices over peak-EWMA, cool-down after
//!   failures), and the one place attempts are recorded.
//! - [`fetch`]: phase two of a search, the stored fields of the winners.
//! - [`policy`]: shard outcomes, the `Coverage` they add up to, and the
//!   caller's `allow_partial` / `min_coverage` decision.
//! - [`shard_info`]: the shards' document counts, for `docs_total`.
//! - [`metrics`]: the root's Prometheus metrics (requests, per-shard hedges
//!   and retries, the budget, replica state).
//! - [`error`]: [`RootError`] and its one mapping to `tonic::Status`.

pub mod cluster;
pub mod config;
pub mod deadline;
pub mod error;
pub mod fanout;
pub mod fetch;
pub mod hedge;
pub mod metrics;
pub mod policy;
pub mod query;
pub mod replica;
pub mod request_id;
pub mod search;
pub mod selector;
pub mod server;
pub mod shard_call;
pub mod shard_info;
pub mod topology;

pub use config::{DEFAULT_DEADLINE_MARGIN, DEFAULT_TIMEOUT, RootConfig};
pub use error::RootError;
pub use hedge::{HedgePolicy, HedgeSettings, HedgeTimer, LatencyEstimate};
pub use server::RootServer;
pub use topology::{ShardReplicas, Topology};
