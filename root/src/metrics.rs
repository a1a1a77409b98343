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
//! [`RootMetrics::collect_from`] over the parts that keep them, so the
//! request path does not change.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use fanout_proto::status::code_name;
use fanout_runtime::metrics::{
    Counter, GRPC_CODES, Histogram, HistogramFamily, LATENCY_BUCKETS_SECONDS, Registry, Samples,
};
use tonic::Code;

use fanout_merger::{MergeTargetCounts, MergerSet};

use crate::admission::{Admission, AdmissionPolicy};
use crate::crash::CrashCounts;
use crate::hedge::HedgePolicy;
use crate::replica::Replica;
use crate::selector::Health;
use crate::shard_call::{ShardCallMetrics, ShardPhase};
use crate::shard_caller::ShardCalls;
use crate::shards::Shards;

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

/// Requests of one method: by code, and their latency by code.
#[derive(Debug)]
struct MethodMetrics {
    method: RootMethod,
    /// Index = code.
    by_code: Vec<Counter>,
    /// Index = code: made on the first request answered with the code (OK's
    /// up front), so that 17 codes x 19 series stay out of the exposition
    /// until they happen.
    duration_by_code: Vec<OnceLock<Histogram>>,
    durations: Arc<HistogramFamily>,
    /// Answered OK with only some shards (`allow_partial`).
    partial: Counter,
}

impl MethodMetrics {
    fn duration(&self, code: Code) -> Option<&Histogram> {
        let slot = self.duration_by_code.get(code as usize)?;
        Some(slot.get_or_init(|| self.durations.with(&[self.method.label(), code_name(code)])))
    }
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
            "Time from a request's arrival to its answer, by method and gRPC status code (a code's series appear with its first request).",
            &["method", "code"],
            LATENCY_BUCKETS_SECONDS,
        );
        let partial = registry.counter_family(
            "fanout_root_partial_answers_total",
            "Requests answered OK with only some of the shards (allow_partial), by method.",
            &["method"],
        );
        let method = |method: RootMethod| {
            let metrics = MethodMetrics {
                method,
                by_code: GRPC_CODES
                    .iter()
                    .map(|code| requests.with(&[method.label(), code_name(*code)]))
                    .collect(),
                duration_by_code: GRPC_CODES.iter().map(|_| OnceLock::new()).collect(),
                durations: Arc::clone(&durations),
                partial: partial.with(&[method.label()]),
            };
            metrics.duration(Code::Ok);
            metrics
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
        let shard_durations = registry.histogram_family(
            "fanout_root_shard_duration_seconds",
            "Time from a shard call's first attempt to the answer it used, hedges and retries included, by shard and phase (answered calls only).",
            &["shard", "phase"],
            LATENCY_BUCKETS_SECONDS,
        );
        let outcomes = registry.counter_family(
            "fanout_root_shard_outcomes_total",
            "How each shard's part of a request ended, by shard, phase and outcome (answered; failed and timed_out: coverage lost; not_needed: cut off by the merger's enough).",
            &["shard", "phase", "outcome"],
        );
        let shards = (0..shard_count)
            .map(|shard| {
                let shard = shard.to_string();
                [ShardPhase::FanOut, ShardPhase::Fetch].map(|phase| {
                    let labels = [shard.as_str(), phase.label()];
                    let kind = |kind: &str| attempts.with(&[&shard, phase.label(), kind]);
                    let outcome = |outcome: &str| outcomes.with(&[&shard, phase.label(), outcome]);
                    ShardCallMetrics {
                        latency: shard_durations.with(&labels),
                        answered: outcome("answered"),
                        failed: outcome("failed"),
                        timed_out: outcome("timed_out"),
                        not_needed: outcome("not_needed"),
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
    #[cfg(test)]
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

    /// The result cache's counters, registered here.
    pub fn cache_counters(&self) -> crate::cache::CacheCounters {
        let counter = |name: &str, help: &str| self.registry.counter(name, help);
        crate::cache::CacheCounters {
            hits: counter(
                "fanout_root_result_cache_hits_total",
                "Searches answered from the result cache.",
            ),
            misses: counter(
                "fanout_root_result_cache_misses_total",
                "Searches looked up in the result cache and not found there.",
            ),
            inserts: counter(
                "fanout_root_result_cache_inserts_total",
                "Complete answers stored in the result cache.",
            ),
            evictions: counter(
                "fanout_root_result_cache_evictions_total",
                "Answers evicted from the result cache to make room (least recently used first).",
            ),
            bypassed: counter(
                "fanout_root_result_cache_bypassed_total",
                "Searches that skipped the result cache: no_cache, or a shard whose index generation is unknown.",
            ),
        }
    }

    /// The cache's size at scrape time.
    pub fn collect_cache(&self, cache: &Arc<crate::cache::ResultCache>) {
        let entries = Arc::clone(cache);
        self.registry.gauge_fn(
            "fanout_root_result_cache_entries",
            "Answers in the result cache now.",
            &[],
            move |samples: &mut Samples<'_>| samples.sample(&[], entries.size().0 as f64),
        );
        let bytes = Arc::clone(cache);
        self.registry.gauge_fn(
            "fanout_root_result_cache_bytes",
            "Bytes the result cache holds now (keys, answers and bookkeeping), of at most fanout_root_result_cache_capacity_bytes.",
            &[],
            move |samples: &mut Samples<'_>| samples.sample(&[], bytes.size().1 as f64),
        );
        let capacity = cache.capacity_bytes() as f64;
        self.registry.gauge_fn(
            "fanout_root_result_cache_capacity_bytes",
            "The result cache's bound in bytes (--result-cache-mb).",
            &[],
            move |samples: &mut Samples<'_>| samples.sample(&[], capacity),
        );
    }

    /// Counts a request of `method` answered OK with only some shards.
    pub fn partial_answer(&self, method: RootMethod) {
        match method {
            RootMethod::Search => self.search.partial.inc(),
            RootMethod::Query => self.query.partial.inc(),
        }
    }

    /// Every shard's counts in both phases, for the shard caller.
    pub fn shard_call_table(&self) -> Vec<[ShardCallMetrics; 2]> {
        self.shards.clone()
    }

    /// Registers the collectors that read what the parts keep anyway, at
    /// scrape time: the hedge budget, the adaptive delays, each replica's
    /// outstanding calls and probation, the crash policy, the admission
    /// limit, the mergers. The collectors hold the parts (which hold no
    /// metrics but their counters), so the request path is not touched.
    pub fn collect_from(&self, sources: MetricSources) {
        let MetricSources {
            shards,
            calls,
            admission,
            merger,
        } = sources;
        self.register_budget_collectors(&calls);
        self.register_replica_collectors(&shards, &calls);
        self.register_crash_collectors(&calls);
        self.register_admission_collectors(&admission);
        self.register_merger_collectors(merger);
    }

    fn register_budget_collectors(&self, calls: &Arc<ShardCalls>) {
        let registry = &self.registry;
        let budget = |read: fn(&ShardCalls) -> f64| {
            let calls = Arc::clone(calls);
            move |samples: &mut Samples<'_>| samples.sample(&[], read(&calls))
        };
        registry.gauge_fn(
            "fanout_root_hedge_budget_tokens",
            "Tokens in the hedge budget now: hedges and retries that may be sent at once.",
            &[],
            budget(|calls| calls.budget.tokens()),
        );
        registry.counter_fn(
            "fanout_root_hedge_budget_spent_total",
            "Hedges and retries the budget allowed.",
            &[],
            budget(|calls| calls.budget.spent() as f64),
        );
        registry.counter_fn(
            "fanout_root_hedge_budget_refused_total",
            "Hedges and retries the budget refused.",
            &[],
            budget(|calls| calls.budget.suppressed() as f64),
        );
    }

    fn register_replica_collectors(&self, shards: &Arc<Shards>, calls: &Arc<ShardCalls>) {
        {
            let (shards, calls) = (Arc::clone(shards), Arc::clone(calls));
            self.registry.gauge_fn(
                "fanout_root_shard_adaptive_hedge_delay_seconds",
                "The delay an adaptive hedge of the shard waits now: the configured percentile of its recent attempt latency, between floor and ceiling.",
                &["shard"],
                move |samples| {
                    for replica_set in &shards.sets {
                        let delay = calls.hedge.hedge_delay(HedgePolicy::Adaptive, |percentile| {
                            replica_set.selector.latency_percentile(percentile)
                        });
                        if let Some(delay) = delay {
                            let shard = replica_set.shard_id.to_string();
                            samples.sample(&[&shard], delay.as_secs_f64());
                        }
                    }
                },
            );
        }
        let labels = &["shard", "replica"];
        self.registry.gauge_fn(
            "fanout_root_replica_outstanding_calls",
            "Leaf calls in flight to the replica now.",
            labels,
            for_each_replica(shards, |replica| f64::from(replica.state().outstanding())),
        );
        self.registry.counter_fn(
            "fanout_root_replica_calls_total",
            "Calls sent to the replica (primaries, hedges, retries and probes); a replica found by DNS counts from when it joined.",
            labels,
            for_each_replica(shards, |replica| replica.state().calls() as f64),
        );
        self.registry.gauge_fn(
            "fanout_root_replica_on_probation",
            "1 while the replica is on probation for straggling (only probes go to it), else 0.",
            labels,
            for_each_replica(shards, |replica| {
                if replica.state().is_on_probation() {
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
            for_each_replica(shards, |replica| {
                replica.state().probation_counts().0 as f64
            }),
        );
        self.registry.counter_fn(
            "fanout_root_replica_probation_exits_total",
            "Times a probe's answer ended the replica's probation.",
            labels,
            for_each_replica(shards, |replica| {
                replica.state().probation_counts().1 as f64
            }),
        );
        self.registry.gauge_fn(
            "fanout_root_replica_health",
            "What the replica's health service says: 1 SERVING, 0 NOT_SERVING (draining: avoided), -1 not known (not reachable, or no health service).",
            labels,
            for_each_replica(shards, |replica| match replica.state().health() {
                Health::Serving => 1.0,
                Health::NotServing => 0.0,
                Health::Unknown => -1.0,
            }),
        );
        {
            let shards = Arc::clone(shards);
            self.registry.gauge_fn(
                "fanout_root_shard_replicas",
                "The shard's replicas now (its fixed addresses and those its dns: names resolve to).",
                &["shard"],
                move |samples| {
                    for replica_set in &shards.sets {
                        let shard = replica_set.shard_id.to_string();
                        samples.sample(&[&shard], replica_set.members().len() as f64);
                    }
                },
            );
        }
        {
            let shards = Arc::clone(shards);
            self.registry.counter_fn(
                "fanout_root_dns_failures_total",
                "Resolutions of the shard's dns: names that failed or found no address (its replicas found before are kept).",
                &["shard"],
                move |samples| {
                    for (replica_set, counts) in shards.sets.iter().zip(&shards.dns_counts) {
                        if replica_set.has_dns_sources() {
                            let shard = replica_set.shard_id.to_string();
                            let failures = counts.failures.load(std::sync::atomic::Ordering::Relaxed);
                            samples.sample(&[&shard], failures as f64);
                        }
                    }
                },
            );
        }
    }

    fn register_crash_collectors(&self, calls: &Arc<ShardCalls>) {
        let crash_count = |count: fn(&CrashCounts) -> f64| {
            let calls = Arc::clone(calls);
            move |samples: &mut Samples<'_>| samples.sample(&[], count(&calls.crash.counts()))
        };
        self.registry.counter_fn(
            "fanout_root_lost_calls_total",
            "Leaf calls whose replica's connection broke during the call (the replica most likely died).",
            &[],
            crash_count(|counts| counts.lost_calls as f64),
        );
        self.registry.counter_fn(
            "fanout_root_requests_of_death_total",
            "Requests found to kill the leaf replicas they reached; answered INTERNAL and quarantined.",
            &[],
            crash_count(|counts| counts.requests_of_death as f64),
        );
        self.registry.counter_fn(
            "fanout_root_quarantine_refusals_total",
            "Requests refused before any leaf was called because they are quarantined requests of death.",
            &[],
            crash_count(|counts| counts.refusals as f64),
        );
        self.registry.gauge_fn(
            "fanout_root_quarantined_requests",
            "Requests of death quarantined now.",
            &[],
            crash_count(|counts| counts.quarantined as f64),
        );
    }

    fn register_admission_collectors(&self, admission: &Arc<Admission>) {
        let read = |read: fn(&Admission) -> Option<f64>| {
            let admission = Arc::clone(admission);
            move |samples: &mut Samples<'_>| {
                if let Some(value) = read(&admission) {
                    samples.sample(&[], value);
                }
            }
        };
        self.registry.gauge_fn(
            "fanout_root_admission_limit",
            "Requests the root admits at once now (absent when admission is off).",
            &[],
            read(|admission| {
                (admission.policy() != AdmissionPolicy::Off).then(|| f64::from(admission.limit()))
            }),
        );
        self.registry.gauge_fn(
            "fanout_root_admission_in_flight",
            "Requests admitted and not yet answered.",
            &[],
            read(|admission| Some(f64::from(admission.in_flight()))),
        );
        self.registry.counter_fn(
            "fanout_root_admission_refused_total",
            "Requests refused at once with RESOURCE_EXHAUSTED because the limit was reached.",
            &[],
            read(|admission| Some(admission.refused() as f64)),
        );
    }

    fn register_merger_collectors(&self, merger: MergerSet) {
        let per_merger = |read: fn(&MergeTargetCounts) -> u64| {
            let merger = merger.clone();
            move |samples: &mut Samples<'_>| {
                for target in merger.counts() {
                    samples.sample(&[&target.label], read(&target) as f64);
                }
            }
        };
        self.registry.counter_fn(
            "fanout_root_merges_total",
            "Merges started on each merger (its URL, or embedded), replays after a failover included.",
            &["merger"],
            per_merger(|target| target.sessions),
        );
        self.registry.counter_fn(
            "fanout_root_merger_failures_total",
            "Merges that found the merger unreachable (no connection, a broken stream, UNAVAILABLE).",
            &["merger"],
            per_merger(|target| target.failures),
        );
        self.registry.counter_fn(
            "fanout_root_merge_failovers_total",
            "Requests whose merge moved to the next merger, or to the embedded fallback.",
            &[],
            move |samples| samples.sample(&[], merger.failovers() as f64),
        );
    }
}

/// What the collectors of [`RootMetrics::collect_from`] read.
pub struct MetricSources {
    pub shards: Arc<Shards>,
    pub calls: Arc<ShardCalls>,
    pub admission: Arc<Admission>,
    pub merger: MergerSet,
}

/// A collector with one sample per replica, labelled by shard and address.
fn for_each_replica(
    shards: &Arc<Shards>,
    value: impl Fn(&Replica) -> f64 + Send + Sync + 'static,
) -> impl Fn(&mut Samples<'_>) + Send + Sync + 'static {
    let shards = Arc::clone(shards);
    move |samples| {
        for replica_set in &shards.sets {
            let shard = replica_set.shard_id.to_string();
            for replica in replica_set.members().iter() {
                let value = value(replica);
                samples.sample(&[&shard, &replica.address], value);
            }
        }
    }
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
        if let Some(duration) = self.metrics.duration(code) {
            duration.observe(self.started_at.elapsed().as_secs_f64());
        }
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
            value(r#"fanout_root_requests_total{code="OK",method="search"}"#),
            Some(2.0)
        );
        assert_eq!(
            value(r#"fanout_root_requests_total{code="CANCELLED",method="search"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(r#"fanout_root_requests_total{code="INVALID_ARGUMENT",method="query"}"#),
            Some(1.0)
        );
        // Latency by code: OK's series from the start, the others from their
        // first request.
        assert_eq!(
            value(r#"fanout_root_request_duration_seconds_count{code="OK",method="search"}"#),
            Some(2.0)
        );
        assert_eq!(
            value(
                r#"fanout_root_request_duration_seconds_count{code="CANCELLED",method="search"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                r#"fanout_root_request_duration_seconds_count{code="INVALID_ARGUMENT",method="query"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            value(r#"fanout_root_request_duration_seconds_count{code="OK",method="query"}"#),
            Some(0.0)
        );
        assert!(!text.contains(r#"fanout_root_request_duration_seconds_count{code="UNAVAILABLE""#));
        metrics.partial_answer(RootMethod::Search);
        let text = metrics.registry().render();
        assert_eq!(
            sample_value(
                &text,
                r#"fanout_root_partial_answers_total{method="search"}"#
            ),
            Some(1.0)
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
            value(r#"fanout_root_shard_attempts_total{kind="hedge",phase="fanout",shard="1"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(r#"fanout_root_shard_hedges_total{phase="fanout",shard="1"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(r#"fanout_root_shard_hedges_total{phase="fanout",shard="0"}"#),
            Some(0.0)
        );
        assert_eq!(
            value(r#"fanout_root_shard_retries_total{phase="fetch",shard="1"}"#),
            Some(1.0)
        );
    }
}
