//! Counters, gauges and histograms with labels, rendered in the Prometheus
//! text exposition format 0.0.4, for operators to scrape what the services
//! otherwise only report per response or in logs.
//!
//! A thin layer over the `prometheus` crate (default features off: no
//! protobuf, no global registry), with what fanout's services need of it:
//!
//! - Cheap on the hot path: a [`Counter`], [`Gauge`] or [`Histogram`] is a
//!   handle to atomics. A family's label sets are created once (per shard,
//!   per replica, per status code), when the service starts, and the handles
//!   kept; counting is then one relaxed atomic add, with no lock and no lookup.
//! - Values the service already keeps (a token bucket's level, a selector's
//!   outstanding calls) are read at scrape time instead, through a collector
//!   closure ([`Registry::gauge_fn`], [`Registry::counter_fn`]), so the hot
//!   path is not touched at all.
//!
//! Names and label names are constants of the code: a bad one, a duplicate
//! family, or a label set of the wrong length is a programming error and
//! panics at registration.

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{
    Counter as CounterValue, Gauge as GaugeValue, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{Encoder, HistogramOpts, Opts, TextEncoder};
use tonic::Code;

/// The `Content-Type` of [`Registry::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Latency buckets in seconds, from 100 µs to 10 s: the range of a leaf's
/// search and a root's request.
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Every gRPC status code, in numeric order (index = code): for families
/// by code whose label sets are made up front.
pub const GRPC_CODES: [Code; 17] = [
    Code::Ok,
    Code::Cancelled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unauthenticated,
];

/// A monotonically increasing count.
#[derive(Debug, Clone)]
pub struct Counter(prometheus::IntCounter);

impl Counter {
    pub fn inc(&self) {
        self.0.inc();
    }

    pub fn add(&self, amount: u64) {
        self.0.inc_by(amount);
    }

    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

/// A value that goes up and down.
#[derive(Debug, Clone)]
pub struct Gauge(prometheus::Gauge);

impl Gauge {
    pub fn set(&self, value: f64) {
        self.0.set(value);
    }

    pub fn add(&self, amount: f64) {
        self.0.add(amount);
    }

    pub fn get(&self) -> f64 {
        self.0.get()
    }
}

/// Observations counted into fixed buckets, plus their sum.
#[derive(Debug, Clone)]
pub struct Histogram(prometheus::Histogram);

impl Histogram {
    /// Counts `value` in the first bucket whose bound is at least `value`.
    /// NaN is ignored: it belongs to no bucket.
    pub fn observe(&self, value: f64) {
        if !value.is_nan() {
            self.0.observe(value);
        }
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0.get_sample_count()
    }

    /// The sum of the observations so far.
    pub fn sum(&self) -> f64 {
        self.0.get_sample_sum()
    }
}

/// Metrics sharing a name, one per label set.
#[derive(Debug)]
pub struct Family<V> {
    name: String,
    label_count: usize,
    vec: V,
}

/// Counters sharing a name, one per label set.
pub type CounterFamily = Family<prometheus::IntCounterVec>;
/// Gauges sharing a name, one per label set.
pub type GaugeFamily = Family<prometheus::GaugeVec>;
/// Histograms sharing a name and buckets, one per label set.
pub type HistogramFamily = Family<prometheus::HistogramVec>;

impl<V> Family<V> {
    fn check_values(&self, values: &[&str]) {
        assert_eq!(
            values.len(),
            self.label_count,
            "{} has {} labels, got values {values:?}",
            self.name,
            self.label_count
        );
    }
}

/// Handles of a family made for one label set.
pub trait FamilyHandle {
    type Handle;
    fn handle(&self, values: &[&str]) -> Self::Handle;
}

impl FamilyHandle for prometheus::IntCounterVec {
    type Handle = Counter;
    fn handle(&self, values: &[&str]) -> Counter {
        Counter(self.with_label_values(values))
    }
}

impl FamilyHandle for prometheus::GaugeVec {
    type Handle = Gauge;
    fn handle(&self, values: &[&str]) -> Gauge {
        Gauge(self.with_label_values(values))
    }
}

impl FamilyHandle for prometheus::HistogramVec {
    type Handle = Histogram;
    fn handle(&self, values: &[&str]) -> Histogram {
        Histogram(self.with_label_values(values))
    }
}

impl<V: FamilyHandle> Family<V> {
    /// The handle for these label values (in the order of the label names),
    /// created on first use. Call it when the service starts and keep the
    /// handle: it takes a lock.
    pub fn with(&self, values: &[&str]) -> V::Handle {
        self.check_values(values);
        self.vec.handle(values)
    }
}

/// Samples a collector closure reports at scrape time.
pub struct Samples<'a> {
    label_names: &'a [String],
    metrics: Vec<Metric>,
    kind: MetricType,
}

impl Samples<'_> {
    /// One sample: label values in the order of the label names, and its value.
    pub fn sample(&mut self, values: &[&str], value: f64) {
        assert_eq!(
            values.len(),
            self.label_names.len(),
            "a sample of labels {:?} got values {values:?}",
            self.label_names
        );
        let labels = self
            .label_names
            .iter()
            .zip(values)
            .map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name(name.clone());
                pair.set_value((*value).to_owned());
                pair
            })
            .collect();
        let mut metric = Metric::from_label(labels);
        match self.kind {
            MetricType::COUNTER => {
                let mut counter = CounterValue::default();
                counter.set_value(value);
                metric.set_counter(counter);
            }
            _ => {
                let mut gauge = GaugeValue::default();
                gauge.set_value(value);
                metric.set_gauge(gauge);
            }
        }
        self.metrics.push(metric);
    }
}

type Collect = Box<dyn Fn(&mut Samples<'_>) + Send + Sync>;

/// A family whose samples a closure reads at scrape time.
struct CollectedFamily {
    desc: Desc,
    kind: MetricType,
    label_names: Vec<String>,
    collect: Collect,
}

impl Collector for CollectedFamily {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut samples = Samples {
            label_names: &self.label_names,
            metrics: Vec::new(),
            kind: self.kind,
        };
        (self.collect)(&mut samples);
        let mut family = MetricFamily::default();
        family.set_name(self.desc.fq_name.clone());
        family.set_help(self.desc.help.clone());
        family.set_field_type(self.kind);
        family.set_metric(samples.metrics);
        vec![family]
    }
}

/// The families of one service.
#[derive(Default)]
pub struct Registry {
    inner: prometheus::Registry,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self
            .inner
            .gather()
            .iter()
            .map(|family| family.name().to_owned())
            .collect();
        formatter
            .debug_struct("Registry")
            .field("families", &names)
            .finish()
    }
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    fn register(&self, collector: Box<dyn Collector>, name: &str) {
        if let Err(error) = self.inner.register(collector) {
            panic!("cannot register metric {name}: {error}");
        }
    }

    /// A family of counters; by convention `name` ends in `_total`.
    pub fn counter_family(
        &self,
        name: &str,
        help: &str,
        label_names: &[&str],
    ) -> Arc<CounterFamily> {
        let vec = prometheus::IntCounterVec::new(Opts::new(name, help), label_names)
            .unwrap_or_else(|error| panic!("bad counter {name}: {error}"));
        self.register(Box::new(vec.clone()), name);
        Arc::new(Family {
            name: name.to_owned(),
            label_count: label_names.len(),
            vec,
        })
    }

    /// One counter without labels.
    pub fn counter(&self, name: &str, help: &str) -> Counter {
        self.counter_family(name, help, &[]).with(&[])
    }

    /// A family of gauges.
    pub fn gauge_family(&self, name: &str, help: &str, label_names: &[&str]) -> Arc<GaugeFamily> {
        let vec = prometheus::GaugeVec::new(Opts::new(name, help), label_names)
            .unwrap_or_else(|error| panic!("bad gauge {name}: {error}"));
        self.register(Box::new(vec.clone()), name);
        Arc::new(Family {
            name: name.to_owned(),
            label_count: label_names.len(),
            vec,
        })
    }

    /// A family of histograms over `bounds` (ascending upper bounds, without
    /// `+Inf`, which is always there).
    pub fn histogram_family(
        &self,
        name: &str,
        help: &str,
        label_names: &[&str],
        bounds: &[f64],
    ) -> Arc<HistogramFamily> {
        let opts = HistogramOpts::new(name, help).buckets(bounds.to_vec());
        let vec = prometheus::HistogramVec::new(opts, label_names)
            .unwrap_or_else(|error| panic!("bad histogram {name}: {error}"));
        self.register(Box::new(vec.clone()), name);
        Arc::new(Family {
            name: name.to_owned(),
            label_count: label_names.len(),
            vec,
        })
    }

    /// A gauge family whose samples `collect` reports at each scrape.
    pub fn gauge_fn(
        &self,
        name: &str,
        help: &str,
        label_names: &[&str],
        collect: impl Fn(&mut Samples<'_>) + Send + Sync + 'static,
    ) {
        self.collected(
            name,
            help,
            label_names,
            MetricType::GAUGE,
            Box::new(collect),
        );
    }

    /// A counter family whose samples `collect` reports at each scrape, from
    /// counts the service keeps anyway.
    pub fn counter_fn(
        &self,
        name: &str,
        help: &str,
        label_names: &[&str],
        collect: impl Fn(&mut Samples<'_>) + Send + Sync + 'static,
    ) {
        self.collected(
            name,
            help,
            label_names,
            MetricType::COUNTER,
            Box::new(collect),
        );
    }

    fn collected(
        &self,
        name: &str,
        help: &str,
        label_names: &[&str],
        kind: MetricType,
        collect: Collect,
    ) {
        let label_names: Vec<String> = label_names
            .iter()
            .map(|label| (*label).to_owned())
            .collect();
        let desc = Desc::new(
            name.to_owned(),
            help.to_owned(),
            label_names.clone(),
            Default::default(),
        )
        .unwrap_or_else(|error| panic!("bad metric {name}: {error}"));
        self.register(
            Box::new(CollectedFamily {
                desc,
                kind,
                label_names,
                collect,
            }),
            name,
        );
    }

    /// Every family in the text exposition format 0.0.4, sorted by name.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Writing into a Vec cannot fail, and every family is well formed.
        if let Err(error) = TextEncoder::new().encode(&self.inner.gather(), &mut out) {
            tracing::error!(%error, "cannot render the metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_collected_families() {
        let registry = Registry::new();
        let calls = registry.counter_family("calls_total", "Calls by code.", &["code"]);
        calls.with(&["OK"]).add(3);
        calls.with(&["UNAVAILABLE"]).inc();
        registry
            .gauge_family("tokens", "Tokens now.", &[])
            .with(&[])
            .set(2.5);
        registry.gauge_fn("outstanding", "Calls in flight.", &["replica"], |samples| {
            samples.sample(&["a:1"], 4.0);
            samples.sample(&["b:2"], 0.0);
        });
        registry.counter_fn("spent_total", "Spent.", &[], |samples| {
            samples.sample(&[], 7.0)
        });
        let text = registry.render();
        for line in [
            "# HELP calls_total Calls by code.",
            "# TYPE calls_total counter",
            "calls_total{code=\"OK\"} 3",
            "calls_total{code=\"UNAVAILABLE\"} 1",
            "# TYPE tokens gauge",
            "tokens 2.5",
            "# TYPE outstanding gauge",
            "outstanding{replica=\"a:1\"} 4",
            "outstanding{replica=\"b:2\"} 0",
            "# TYPE spent_total counter",
            "spent_total 7",
        ] {
            assert!(
                text.lines().any(|seen| seen == line),
                "{line:?} missing from:\n{text}"
            );
        }
    }

    #[test]
    fn escapes_label_values() {
        let registry = Registry::new();
        registry
            .counter_family("escaped_total", "Escapes.", &["path"])
            .with(&["a\"b\\c\nd"])
            .inc();
        let text = registry.render();
        assert!(
            text.contains("escaped_total{path=\"a\\\"b\\\\c\\nd\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_the_count() {
        let registry = Registry::new();
        let histogram = registry
            .histogram_family("latency_seconds", "Latency.", &[], &[0.1, 1.0])
            .with(&[]);
        for value in [0.05, 0.5, 0.5, 5.0, f64::NAN] {
            histogram.observe(value);
        }
        assert_eq!(histogram.count(), 4);
        assert!((histogram.sum() - 6.05).abs() < 1e-9);
        let text = registry.render();
        for line in [
            "latency_seconds_bucket{le=\"0.1\"} 1",
            "latency_seconds_bucket{le=\"1\"} 3",
            "latency_seconds_bucket{le=\"+Inf\"} 4",
            "latency_seconds_count 4",
        ] {
            assert!(
                text.lines().any(|seen| seen == line),
                "{line:?} missing from:\n{text}"
            );
        }
    }

    #[test]
    #[should_panic(expected = "cannot register metric twice_total")]
    fn refuses_a_duplicate_name() {
        let registry = Registry::new();
        registry.counter_family("twice_total", "First.", &[]);
        registry.counter_family("twice_total", "Second.", &[]);
    }

    #[test]
    #[should_panic(expected = "has 1 labels")]
    fn refuses_a_label_set_of_the_wrong_length() {
        let registry = Registry::new();
        registry
            .counter_family("labelled_total", "Labelled.", &["code"])
            .with(&["OK", "extra"]);
    }

    #[test]
    #[should_panic(expected = "bad counter")]
    fn refuses_a_bad_name() {
        Registry::new().counter_family("bad name", "Bad.", &[]);
    }

    #[test]
    fn the_code_list_is_indexed_by_code() {
        for (index, code) in GRPC_CODES.iter().enumerate() {
            assert_eq!(*code as usize, index);
        }
    }

    #[test]
    fn counts_from_many_threads_add_up() {
        let registry = Registry::new();
        let counter = registry.counter("threads_total", "Counted from threads.");
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..10_000 {
                        counter.inc();
                    }
                });
            }
        });
        assert_eq!(counter.get(), 80_000);
    }
}
