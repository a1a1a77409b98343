//! fanout's root: the public API. It takes a request, fans it out to every
//! shard (one replica each, hedged and failed over between replicas),
//! streams each shard's answer into the merger the moment it arrives, and
//! answers with the merged result and its coverage.
//!
//! Modules, in layers (each uses only those above it):
//!
//! - `error`: [`RootError`] (what stops a root) and `RequestError` (what
//!   ends a request), with its one mapping to `tonic::Status`;
//!   `config` ([`RootConfig`]) and `topology` ([`Topology`]: which replicas
//!   serve which shard, from TOML or `--shard` flags, validated).
//! - `deadline` (a request's time frame), `request_id`, `policy` (shard
//!   outcomes, the `Coverage` they add up to, `allow_partial`), `admission`
//!   (the limit on requests in flight), `crash` (what a call lost with its
//!   replica means: requests of death and their quarantine).
//! - `hedge`: hedging policies ([`HedgePolicy`]), the per-shard latency
//!   histogram, the budget hedges and retries share, the sub-millisecond
//!   hedge timer; `selector`: which replica goes first (power of two choices
//!   over peak-EWMA, probation), and the one place attempts are recorded.
//! - `replica`: a shard's replicas (fixed addresses and `dns:` names), each
//!   a lazily connected channel, its selector state and its watched health;
//!   `shards`: every shard's replicas and document count; `discovery`: the
//!   `dns:` names re-resolved, the members following the answers.
//! - `shard_call`: one shard's call, hedged and failed over between its
//!   replicas; `baselines`: tower's hedge, for benchmarks only;
//!   `shard_caller`: which of the two a root uses, chosen at start-up, and
//!   what every shard call shares (settings, budget, crash memory, counters).
//! - `fanout`: scatter to every shard and stream the answers into the merge;
//!   `fetch`: phase two of a search, the stored fields of the winners.
//! - `metrics`: the root's Prometheus metrics, read from the parts;
//!   `front`: what every public request meets (admission, rules, metrics);
//!   `request_log`: the one log line per request (WARN when slow);
//!   `cache`: the result cache of complete search answers, keyed by the
//!   normalized request and every shard's index generation.
//! - `search` (`fanout.search.v1.Search`: validation and the two phases),
//!   `query` (the generic `fanout.v1.Root/Query`).
//! - `server`: [`RootServer`], which builds the parts and serves.

mod admission;
pub mod auth;
mod baselines;
mod cache;
mod config;
mod crash;
mod deadline;
mod discovery;
mod error;
mod fanout;
mod fetch;
mod front;
mod hedge;
mod metrics;
mod policy;
mod query;
mod replica;
mod request_id;
mod request_log;
mod search;
mod selector;
mod server;
mod shard_call;
mod shard_caller;
mod shards;
mod topology;

pub use admission::{AdmissionPolicy, AdmissionSettings};
pub use config::{
    DEFAULT_DEADLINE_MARGIN, DEFAULT_TIMEOUT, DiscoverySettings, ResultCacheSettings, RootConfig,
};
pub use crash::CrashSettings;
pub use error::RootError;
pub use hedge::{HedgePolicy, HedgeSettings, HedgeTimer, LatencyEstimate};
pub use server::RootServer;
pub use shard_caller::ShardCallerKind;
pub use topology::{ShardReplicas, Topology};
