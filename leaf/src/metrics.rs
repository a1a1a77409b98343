//! The leaf's metrics (`fanout_leaf_*`), for operators to scrape what the
//! leaf otherwise reports only in each response's `fanout-leaf-stats`
//! metadata: calls by method and status, what cancellation saved or wasted,
//! search latency, and the faults injected when `--fault` is on.
//!
//! Calls and latency are counted by the service through handles made here
//! once (method x code); the counts the service keeps anyway for
//! [`LeafStats`](crate::service::LeafStats) (cancelled calls, the pool's
//! skipped, abandoned and completed work, calls in flight) are read at
//! scrape time, so the two can never disagree.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use fanout_proto::status::code_name;
use fanout_runtime::cpu_pool::CpuPool;
use fanout_runtime::metrics::{Counter, GRPC_CODES, Histogram, LATENCY_BUCKETS_SECONDS, Registry};
use tonic::Code;

use crate::fault::FaultDecision;

/// A `fanout.v1.Leaf` method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafMethod {
    Execute,
    Info,
}

impl LeafMethod {
    fn label(self) -> &'static str {
        match self {
            LeafMethod::Execute => "execute",
            LeafMethod::Info => "info",
        }
    }
}

/// What the service shares with the scrape-time collectors.
pub struct LeafCounts {
    pub cancelled: Arc<AtomicU64>,
    pub in_flight: Arc<AtomicU32>,
    pub pool: CpuPool,
}

/// Faults injected, by kind.
#[derive(Debug, Clone)]
struct FaultCounters {
    unavailable: Counter,
    hang: Counter,
    delay: Counter,
    straggler: Counter,
}

/// The leaf's registry and the handles its service counts with.
#[derive(Debug)]
pub struct LeafMetrics {
    registry: Arc<Registry>,
    /// Index = code.
    execute_by_code: Vec<Counter>,
    info_by_code: Vec<Counter>,
    search_duration: Histogram,
    faults: Option<FaultCounters>,
}

impl LeafMetrics {
    /// Registers the families; `counts` are read at each scrape.
    pub fn new(counts: LeafCounts) -> LeafMetrics {
        let registry = Arc::new(Registry::new());
        let calls = registry.counter_family(
            "fanout_leaf_calls_total",
            "Calls finished, by method (execute, info) and gRPC status code; CANCELLED when the caller went away first.",
            &["method", "code"],
        );
        let by_code = |method: LeafMethod| -> Vec<Counter> {
            GRPC_CODES
                .iter()
                .map(|code| calls.with(&[method.label(), code_name(*code)]))
                .collect()
        };
        let execute_by_code = by_code(LeafMethod::Execute);
        let info_by_code = by_code(LeafMethod::Info);
        let search_duration = registry
            .histogram_family(
                "fanout_leaf_search_duration_seconds",
                "Time from a search call's arrival to its answer (injected faults included), for searches answered OK.",
                &[],
                LATENCY_BUCKETS_SECONDS,
            )
            .with(&[]);
        register_collectors(&registry, counts);
        LeafMetrics {
            registry,
            execute_by_code,
            info_by_code,
            search_duration,
            faults: None,
        }
    }

    /// Adds the faults family (once; only leaves with `--fault` have it).
    pub fn count_faults(&mut self) {
        if self.faults.is_some() {
            return;
        }
        let family = self.registry.counter_family(
            "fanout_leaf_faults_injected_total",
            "Faults injected by --fault, by kind: unavailable, hang, delay (latency, pareto, inherent), straggler.",
            &["kind"],
        );
        self.faults = Some(FaultCounters {
            unavailable: family.with(&["unavailable"]),
            hang: family.with(&["hang"]),
            delay: family.with(&["delay"]),
            straggler: family.with(&["straggler"]),
        });
    }

    /// The registry, for the metrics endpoint.
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.registry)
    }

    /// A call of `method` ended with `code`.
    pub fn call_finished(&self, method: LeafMethod, code: Code) {
        let by_code = match method {
            LeafMethod::Execute => &self.execute_by_code,
            LeafMethod::Info => &self.info_by_code,
        };
        if let Some(counter) = by_code.get(code as usize) {
            counter.inc();
        }
    }

    /// A search answered OK after `elapsed`.
    pub fn search_answered(&self, elapsed: Duration) {
        self.search_duration.observe(elapsed.as_secs_f64());
    }

    /// The faults decided for one call, when fault counting is on.
    pub fn fault_decided(&self, decision: &FaultDecision) {
        let Some(faults) = &self.faults else {
            return;
        };
        if decision.unavailable {
            faults.unavailable.inc();
        }
        if decision.hang {
            faults.hang.inc();
        }
        if !decision.delay_before.is_zero() {
            faults.delay.inc();
        }
        if decision.straggler_factor.is_some() {
            faults.straggler.inc();
        }
    }
}

/// The families read at scrape time from what the service counts anyway.
fn register_collectors(registry: &Registry, counts: LeafCounts) {
    let LeafCounts {
        cancelled,
        in_flight,
        pool,
    } = counts;
    registry.gauge_fn(
        "fanout_leaf_calls_in_flight",
        "Execute calls received and not yet answered or cancelled.",
        &[],
        move |samples| samples.sample(&[], f64::from(in_flight.load(Ordering::Relaxed))),
    );
    registry.counter_fn(
        "fanout_leaf_cancelled_calls_total",
        "Execute calls whose caller went away before the answer (LeafStats cancelled).",
        &[],
        move |samples| samples.sample(&[], cancelled.load(Ordering::Relaxed) as f64),
    );
    registry.counter_fn(
        "fanout_leaf_work_total",
        "Search-pool work by outcome: skipped (caller gone before it started), abandoned (ran for a caller already gone), completed (LeafStats work_*), panicked (a bug; the caller got INTERNAL).",
        &["outcome"],
        move |samples| {
            for (outcome, count) in [
                ("skipped", &pool.stats().skipped),
                ("abandoned", &pool.stats().abandoned),
                ("completed", &pool.stats().completed),
                ("panicked", &pool.stats().panicked),
            ] {
                samples.sample(&[outcome], count.load(Ordering::Relaxed) as f64);
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts() -> LeafCounts {
        LeafCounts {
            cancelled: Arc::new(AtomicU64::new(2)),
            in_flight: Arc::new(AtomicU32::new(1)),
            pool: CpuPool::new("test", 1).unwrap(),
        }
    }

    #[test]
    fn counts_calls_faults_and_reads_the_shared_counts() {
        let counts = counts();
        let pool = counts.pool.clone();
        let mut metrics = LeafMetrics::new(counts);
        metrics.call_finished(LeafMethod::Execute, Code::Ok);
        metrics.call_finished(LeafMethod::Execute, Code::Unavailable);
        metrics.call_finished(LeafMethod::Info, Code::Ok);
        pool.stats().abandoned.fetch_add(3, Ordering::Relaxed);
        let text = metrics.registry().render();
        assert!(
            !text.contains("fanout_leaf_faults_injected_total"),
            "no faults family without --fault"
        );
        for line in [
            "fanout_leaf_calls_total{code=\"OK\",method=\"execute\"} 1\n",
            "fanout_leaf_calls_total{code=\"UNAVAILABLE\",method=\"execute\"} 1\n",
            "fanout_leaf_calls_total{code=\"OK\",method=\"info\"} 1\n",
            "fanout_leaf_calls_in_flight 1\n",
            "fanout_leaf_cancelled_calls_total 2\n",
            "fanout_leaf_work_total{outcome=\"abandoned\"} 3\n",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }

        metrics.count_faults();
        metrics.count_faults();
        metrics.fault_decided(&FaultDecision {
            delay_before: Duration::from_millis(1),
            straggler_factor: Some(20.0),
            ..FaultDecision::default()
        });
        metrics.fault_decided(&FaultDecision::default());
        let text = metrics.registry().render();
        assert!(text.contains("fanout_leaf_faults_injected_total{kind=\"straggler\"} 1\n"));
        assert!(text.contains("fanout_leaf_faults_injected_total{kind=\"delay\"} 1\n"));
        assert!(text.contains("fanout_leaf_faults_injected_total{kind=\"hang\"} 0\n"));
    }
}
