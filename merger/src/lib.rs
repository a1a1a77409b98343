//! fanout's merge service and library.
//!
//! The root streams each shard's partial result into a merge the moment the
//! shard answers; the merge runs in the root's process or in a merger process
//! (a sidecar, any language) speaking `fanout.v1.Merger`. This crate is both
//! sides of that contract:
//!
//! - [`merge`]: the extension point, the [`Merge`] / [`MergeState`] traits
//!   and [`Progress`] (with an example of a custom merge).
//! - [`top_k`]: [`TopKMerge`], the reference merge of the search workload
//!   (global top k of `ShardSearchResponse`s).
//! - [`service`]: any `Merge` as a gRPC service ([`merger_service`]) and the
//!   merger process's server ([`serve`]), with health, reflection and drain.
//! - [`endpoint`]: the root's side, [`MergerEndpoint`] (embedded or remote)
//!   and the per-request [`MergeSession`].
//! - [`failover`]: no single point of failure: [`MergerSet`], the mergers a
//!   root may use in order (and an in-process fallback), and the
//!   [`FailoverSession`] that replays a request's merge into the next one.
//! - [`error`]: [`MergerError`] and its one mapping to `tonic::Status`.

pub mod endpoint;
pub mod error;
pub mod failover;
pub mod merge;
pub mod service;
pub mod top_k;

pub use endpoint::{MergeSession, MergerEndpoint};
pub use error::MergerError;
pub use failover::{FailoverSession, MergeTargetCounts, MergerSet};
pub use merge::{Merge, MergeState, Progress};
pub use service::{MergerLimits, MergerService, merger_service, serve, serve_over};
pub use top_k::TopKMerge;
