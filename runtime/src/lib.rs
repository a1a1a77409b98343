//! Small pieces every fanout service shares. Leaf, merger and root depend on
//! this crate; it depends on none of them.
//!
//! - [`serve`]: serve a tonic router on a pre-bound listener with health
//!   (`grpc.health.v1`), reflection (v1 and v1alpha) and compression, and
//!   drain on shutdown (NOT_SERVING first, then a grace period).
//! - [`shutdown`]: SIGINT / SIGTERM as a future.
//! - [`announce`]: the one stdout line a service prints once it listens, which
//!   `fanout up` and the test harness read to learn port-0 addresses.
//! - [`deadline`]: the caller's `grpc-timeout`, parsed and encoded.
//! - [`client`]: addresses as gRPC URLs, the channel settings of an
//!   internal hop (root to leaf, root to merger), channels that resolve
//!   names with [`dns`] (hickory-resolver, not `getaddrinfo`).
//! - [`duration`]: [`duration::parse_duration`], the one reading of `250ms`,
//!   `2s`, `1.5s` (a unit is required) for flags, fault specs and scenarios.
//! - [`hashing`]: FNV-1a 64 and SplitMix64, written out once: their values
//!   are part of the on-disk partitioning contract and of seeded runs.
//! - [`cpu_pool`]: the tokio-to-rayon bridge; CPU work skipped when its caller is gone.
//! - [`metrics`]: counters, gauges and histograms in the Prometheus text format;
//!   [`metrics_http`]: the `GET /metrics` endpoint that serves them.
//! - [`telemetry`]: tracing set-up (text or JSON logs on stderr).

pub mod announce;
pub mod client;
pub mod cpu_pool;
pub mod deadline;
pub mod dns;
pub mod duration;
pub mod hashing;
pub mod metrics;
pub mod metrics_http;
pub mod serve;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod trace_context;
