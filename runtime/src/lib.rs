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
//! - [`cpu_pool`]: the tokio-to-rayon bridge; CPU work skipped when its caller is gone.
//! - [`metrics`]: counters, gauges and histograms in the Prometheus text format;
//!   [`metrics_http`]: the `GET /metrics` endpoint that serves them.
//! - [`telemetry`]: tracing set-up (text or JSON logs on stderr).

pub mod announce;
pub mod cpu_pool;
pub mod deadline;
pub mod metrics;
pub mod metrics_http;
pub mod serve;
pub mod shutdown;
pub mod telemetry;
