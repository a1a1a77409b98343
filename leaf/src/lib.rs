//! fanout's leaf: builds sharded tantivy indexes and serves one shard of one
//! over gRPC, scoring with corpus-wide BM25 statistics so that the merged
//! results of all shards equal those of one index over the whole corpus.
//!
//! Building (`fanout index`):
//! - [`schema`]: the fields (`id`, `title`, `text`) and the English analyzer.
//! - `corpus` (private): reading JSON Lines, plain or gzip; bad lines.
//! - [`partition`]: [`shard_for_id`], a document's shard: the stable FNV-1a
//!   hash of its id ([`fanout_runtime::hashing`]) modulo the shard count.
//! - [`index_build`]: [`build_index`]: one tantivy index per shard, written in
//!   parallel, then the global statistics and the manifests.
//! - [`manifest`]: `index.json` and `shard.json`.
//! - [`global_stats`]: exact global BM25 statistics, stored in each shard for
//!   its own terms only, their file format, and tantivy's
//!   `Bm25StatisticsProvider` over them.
//!
//! Searching (`fanout leaf`):
//! - [`query`]: [`build_query`] for natural-language and syntax queries; filters.
//! - [`collector`]: the top-k collector (score descending, id ascending,
//!   `search_after`, total hit count).
//! - [`shard`]: an opened shard: search (phase one) and fetch (phase two);
//!   [`open_reference_index`] for single-index comparisons.
//! - `read_only` (private): the shard directory as tantivy sees it, read-only
//!   (no lock files: a leaf serves a read-only mount).
//! - [`fault`]: [`FaultPlan`], seeded fault injection (latency, stragglers,
//!   heavy tail, inherent slowness, hangs, errors) for tests and benchmarks;
//!   off unless asked for.
//! - [`service`]: the `fanout.v1.Leaf` gRPC service (Execute, Info).
//! - [`metrics`]: the leaf's Prometheus metrics (calls by status, cancelled
//!   and wasted work, search latency, injected faults).
//! - [`server`]: [`LeafServer`]: open a shard and serve it.
//! - [`error`]: [`LeafError`], the crate's one error type, and its single
//!   mapping to `tonic::Status`.

mod corpus;

pub mod collector;
pub mod error;
pub mod fault;
pub mod global_stats;
pub mod index_build;
pub mod manifest;
pub mod metrics;
pub mod partition;
pub mod query;
mod read_only;
pub mod schema;
pub mod server;
pub mod service;
pub mod shard;

pub use collector::{RankedHit, SearchAfterKey, TopHits, TopHitsCollector, rank_order};
pub use error::LeafError;
pub use fault::FaultPlan;
pub use global_stats::{
    GLOBAL_STATS_FILE_NAME, STATISTICS_FORMAT_VERSION, ScoringStatistics, ShardStatistics,
};
pub use index_build::{BadLine, BadLinePolicy, IndexBuildOptions, IndexBuildReport, build_index};
pub use manifest::{
    INDEX_MANIFEST_FILE_NAME, IndexManifest, IndexManifestShard, ShardManifest,
    read_index_manifest, read_shard_manifest, shard_dir_name,
};
pub use partition::shard_for_id;
pub use query::{QueryMode, apply_filters, build_query};
pub use schema::{SearchFields, build_schema, register_tokenizers};
pub use server::{LeafConfig, LeafServer};
pub use service::LeafAdmission;
pub use shard::{ShardSearcher, open_reference_index};
