//! The root's metrics (`fanout_root_*`), for operators to scrape what each
//! response otherwise reports only about itself: requests by status and
//! latency, and per shard the tail-tolerance counts of `ShardTiming`
//! (attempts by kind, hedges sent, won and suppressed, retries) summed over
//! every request since the root started.
//!
//! Counting on the request path is one atomic add per event: the handles of
//! every label set (method x code, shard x phase) are made here, once.
//! What the root keeps anyway (the hedge budget's tokens, each shard's
//! adaptive hedge delay, each replica's outstanding calls and probation) is
//! read at scrape time by collectors registered with
//! [`RootMetrics::collect_from`], so the request path does not change.

use std::sync::{Arc, Weak};
use std::time::Instant;

use fanout_proto::status::code_name;
use fanout_runtime::metrics::{
    Counter, GRPC_CODES, Histogram, LATENCY_BUCKETS_SECONDS, Registry, Samples,
};
use tonic::Code;

use crate::cluster::Cluster;
use crate::hedge::HedgePolicy;

/// The public method a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootMethod {
    /// `fanout.search.v1.Search/Search`.
    Search,
    /// `fanout.v1.Root/Query`.
    Query,
}

impl RootMethod {
    fn label(self) -> &'static str {
        match self {
            RootMethod::Search => "search",
            RootMethod::Query => "query",
        }
    }
}

/// Which of a request's shard calls: the fan-out (phase one, the calls
/// `ShardTiming` reports) or the fetch of stored fields (phase two).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardPhase {
    FanOut,
    Fetch,
}

impl ShardPhase {
    fn label(self) -> &'static str {
        match self {
            ShardPhase::FanOut => "fanout",
            ShardPhase::Fetch => "fetch",
        }
    }
}

/// The lifetime counts of one shard in one phase; a shard call adds to them
/// as it adds to its own `ShardCallCounters`.
#[derive(Debug, Clone)]
pub struct ShardCallMetrics {
    pub primary_attempts: Counter,
    pub hedge_attempts: Counter,
    pub retry_attempts: Counter,
    pub hedges: Counter,
    pub hedges_won: Counter,
    pub hedges_suppressed: Counter,
    pub retries: Counter,
}

/// Requests of one method: by code, and their latency.
#[derive(Debug)]
struct MethodMetrics {
    /// Index = code.
    by_code: Vec<Counter>,
    duration: Histogram,
}

/// The root's registry and the handles the request path counts with.
#[derive(Debug)]
pub struct RootMetrics {
    registry: Arc<Registry>,
    search: MethodMetrics,
    query: MethodMetrics,
    /// `[shard][phase]`.
    shards: Vec<[ShardCallMetrics; 2]>,
}

impl RootMetrics {
    /// Registers every family, with the label sets of `shard_count` shards.
    pub fn new(shard_count: usize) -> RootMetrics {
        let registry = Arc::new(Registry::new());
        let requests = registry.counter_family(
            "fanout_root_requests_total",
            "Requests answered, by method (search, query) and gRPC status code; CANCELLED when the caller went away first.",
            &["method", "code"],
        );
        let durations = registry.histogram_family(
            "fanout_root_request_duration_seconds",
            "Time from a request's arrival to its answer, whatever the status, by method.",
            &["method"],
            LATENCY_BUCKETS_SECONDS,
        );
        let method = |method: RootMethod| MethodMetrics {
            by_code: GRPC_CODES
                .iter()
                .map(|code| requests.with(&[method.label(), code_name(*code)]))
                .collect(),
            duration: durations.with(&[method.label()]),
        };
        let search = method(RootMethod::Search);
        let query = method(RootMethod::Query);

        let attempts = registry.counter_family(
            "fanout_root_shard_attempts_total",
            "Leaf calls sent, by shard, phase (fanout, fetch) and kind (primary, hedge, retry).",
            &["shard", "phase", "kind"],
        );
        let hedges = registry.counter_family(
            "fanout_root_shard_hedges_total",
            "Hedges sent, by shard and phase (the same as attempts of kind hedge).",
            &["shard", "phase"],
        );
        let hedges_won = registry.counter_family(
            "fanout_root_shard_hedges_won_total",
            "Hedges whose answer was the one used, by shard and phase.",
            &["shard", "phase"],
        );
        let hedges_suppressed = registry.counter_family(
            "fanout_root_shard_hedges_suppressed_total",
            "Hedges and retries not sent because the hedge budget was empty, by shard and phase.",
            &["shard", "phase"],
        );
        let retries = registry.counter_family(
            "fanout_root_shard_retries_total",
            "Retries sent after a retryable failure, by shard and phase.",
            &["shard", "phase"],
        );
        let shards = (0..shard_count)
            .map(|shard| {
                let shard = shard.to_string();
                [ShardPhase::FanOut, ShardPhase::Fetch].map(|phase| {
                    let labels = [shard.as_str(), phase.label()];
                    let kind = |kind: &str| attempts.with(&[&shard, phase.label(), kind]);
                    ShardCallMetrics {
                        primary_attempts: kind("primary"),
                        hedge_attempts: kind("hedge"),
                        retry_attempts: kind("retry"),
                        hedges: hedges.with(&labels),
                        hedges_won: hedges_won.with(&labels),
                        hedges_suppressed: hedges_suppressed.with(&labels),
                        retries: retries.with(&labels),
                    }
                })
            })
            .collect();
        RootMetrics {
            registry,
            search,
            query,
            shards,
        }
    }

    /// The registry, for the metrics endpoint.
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.registry)
    }

    /// The counts of `shard` in `phase` (`None` for a shard id out of range).
    pub fn shard_call(&self, shard: usize, phase: ShardPhase) -> Option<ShardCallMetrics> {
        let index = match phase {
            ShardPhase::FanOut => 0,
            ShardPhase::Fetch => 1,
        };
        self.shards.get(shard).map(|phases| phases[index].clone())
    }

    /// Starts timing a request; finish it with its status code, or drop it
    /// (the caller went away) to count it as CANCELLED.
    pub fn start_request(&self, method: RootMethod) -> RequestTimer<'_> {
        RequestTimer {
            metrics: match method {
                RootMethod::Search => &self.search,
                RootMethod::Query => &self.query,
            },
            started_at: Instant::now(),
            finished: false,
        }
    }

    /// Registers the collectors that read the cluster's own state at scrape
    /// time. They hold the cluster weakly (it owns this registry) and report
    /// nothing once it is gone.
    pub fn collect_from(&self, cluster: &Arc<Cluster>) {
        let registry = &self.registry;
        let weak = Arc::downgrade(cluster);
        registry.gauge_fn(
            "fanout_root_hedge_budget_tokens",
            "Tokens in the hedge budget now: hedges and retries that may be sent at once.",
            &[],
            with_cluster(&weak, |cluster, samples| {
                samples.sample(&[], cluster.hedge_budget.tokens());
            }),
        );
        registry.counter_fn(
            "fanout_root_hedge_budget_spent_total",
            "Hedges and retries the budget allowed.",
            &[],
            with_cluster(&weak, |cluster, samples| {
                samples.sample(&[], cluster.hedge_budget.spent() as f64);
            }),
        );
        registry.counter_fn(
            "fanout_root_hedge_budget_refused_total",
            "Hedges and retries the budget refused.",
            &[],
            with_cluster(&weak, |cluster, samples| {
                samples.sample(&[], cluster.hedge_budget.suppressed() as f64);
            }),
        );
        registry.gauge_fn(
            "fanout_root_shard_adaptive_hedge_delay_seconds",
            "The delay an adaptive hedge of the shard waits now: the configured percentile of its recent attempt latency, between floor and ceiling.",
            &["shard"],
            with_cluster(&weak, |cluster, samples| {
                for replica_set in &cluster.shards {
                    let delay = cluster
                        .hedge
                        .hedge_delay(HedgePolicy::Adaptive, |percentile| {
                            replica_set.selector.latency_percentile(percentile)
                        });
                    if let Some(delay) = delay {
                        let shard = replica_set.shard_id.to_string();
                        samples.sample(&[&shard], delay.as_secs_f64());
                    }
                }
            }),
        );
        self.register_replica_collectors(&weak);
    }

    fn register_replica_collectors(&self, weak: &Weak<Cluster>) {
        let labels = &["shard", "replica"];
        self.registry.gauge_fn(
            "fanout_root_replica_outstanding_calls",
            "Leaf calls in flight to the replica now.",
            labels,
            for_each_replica(weak, |selector, index| {
                f64::from(selector.outstanding(index))
            }),
        );
        self.registry.gauge_fn(
            "fanout_root_replica_on_probation",
            "1 while the replica is on probation for straggling (only probes go to it), else 0.",
            labels,
            for_each_replica(weak, |selector, index| {
                if selector.is_on_probation(index) {
                    1.0
                } else {
                    0.0
                }
            }),
        );
        self.registry.counter_fn(
            "fanout_root_replica_probation_entries_total",
            "Times the replica was put on probation for straggling.",
            labels,
            for_each_replica(weak, |selector, index| {
                selector.probation_counts(index).0 as f64
            }),
        );
        self.registry.counter_fn(
            "fanout_root_replica_probation_exits_total",
            "Times a probe's answer ended the replica's probation.",
            labels,
            for_each_replica(weak, |selector, index| {
                selector.probation_counts(index).1 as f64
            }),
        );
    }
}

/// A collector over the cluster, silent once the cluster is gone.
fn with_cluster(
    weak: &Weak<Cluster>,
    collect: impl Fn(&Cluster, &mut Samples<'_>) + Send + Sync + 'static,
) -> impl Fn(&mut Samples<'_>) + Send + Sync + 'static {
    let weak = weak.clone();
    move |samples| {
        if let Some(cluster) = weak.upgrade() {
            collect(&cluster, samples);
        }
    }
}

/// A collector with one sample per replica, labelled by shard and address.
fn for_each_replica(
    weak: &Weak<Cluster>,
    value: impl Fn(&crate::selector::ReplicaSelector, usize) -> f64 + Send + Sync + 'static,
) -> impl Fn(&mut Samples<'_>) + Send + Sync + 'static {
    with_cluster(weak, move |cluster, samples| {
        for replica_set in &cluster.shards {
            let shard = replica_set.shard_id.to_string();
            for (index, replica) in replica_set.replicas.iter().enumerate() {
                let value = value(&replica_set.selector, index);
                samples.sample(&[&shard, &replica.address], value);
            }
        }
    })
}

/// One request being timed; see [`RootMetrics::start_request`].
#[must_use = "finish the request with its status code"]
pub struct RequestTimer<'a> {
    metrics: &'a MethodMetrics,
    started_at: Instant,
    finished: bool,
}

impl RequestTimer<'_> {
    /// Counts the request under `code` and records its latency.
    pub fn finish(mut self, code: Code) {
        self.record(code);
    }

    fn record(&mut self, code: Code) {
        self.finished = true;
        if let Some(counter) = self.metrics.by_code.get(code as usize) {
            counter.inc();
        }
        self.metrics
            .duration
            .observe(self.started_at.elapsed().as_secs_f64());
    }
}

impl Drop for RequestTimer<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.record(Code::Cancelled);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|value| value.parse().ok())
    }

    #[test]
    fn counts_requests_by_code_and_a_dropped_one_as_cancelled() {
        let metrics = RootMetrics::new(2);
        metrics.start_request(RootMethod::Search).finish(Code::Ok);
        metrics.start_request(RootMethod::Search).finish(Code::Ok);
        metrics
            .start_request(RootMethod::Query)
            .finish(Code::InvalidArgument);
        drop(metrics.start_request(RootMethod::Search));
        let text = metrics.registry().render();
        let value = |series: &str| sample_value(&text, series);
        assert_eq!(
            value(r#"fanout_root_requests_total{method="search",code="OK"}"#),
            Some(2.0)
        );
        assert_eq!(
            value(r#"fanout_root_requests_total{method="search",code="CANCELLED"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(r#"fanout_root_requests_total{method="query",code="INVALID_ARGUMENT"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(r#"fanout_root_request_duration_seconds_count{method="search"}"#),
            Some(3.0)
        );
    }

    #[test]
    fn each_shard_and_phase_has_its_own_counters() {
        let metrics = RootMetrics::new(2);
        let fan_out = metrics.shard_call(1, ShardPhase::FanOut).unwrap();
        fan_out.hedge_attempts.inc();
        fan_out.hedges.inc();
        metrics
            .shard_call(1, ShardPhase::Fetch)
            .unwrap()
            .retries
            .inc();
        assert!(metrics.shard_call(2, ShardPhase::FanOut).is_none());
        let text = metrics.registry().render();
        let value = |series: &str| sample_value(&text, series);
        assert_eq!(
            value(r#"fanout_root_shard_attempts_total{shard="1",phase="fanout",kind="hedge"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(r#"fanout_root_shard_hedges_total{shard="1",phase="fanout"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(r#"fanout_root_shard_hedges_total{shard="0",phase="fanout"}"#),
            Some(0.0)
        );
        assert_eq!(
            value(r#"fanout_root_shard_retries_total{shard="1",phase="fetch"}"#),
            Some(1.0)
        );
    }
}
