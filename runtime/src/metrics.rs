//! Counters, gauges and histograms with labels, rendered in the Prometheus
//! text exposition format 0.0.4, for operators to scrape what the services
//! otherwise only report per response or in logs.
//!
//! Cheap on the hot path: a [`Counter`], [`Gauge`] or [`Histogram`] is a
//! handle to atomics. A family's label sets are created once (per shard, per
//! replica, per status code), when the service starts, and the handles kept;
//! counting is then one relaxed atomic add, with no lock and no lookup.
//! Values the service already keeps (a token bucket's level, a selector's
//! outstanding calls) are read at scrape time instead, through a collector
//! closure ([`Registry::gauge_fn`], [`Registry::counter_fn`]), so the hot
//! path is not touched at all.
//!
//! Hand-rolled rather than a crate: the format is small, the services need
//! only these three types, and a metrics crate would bring a global registry
//! and macros the rest of the code does not use.
//!
//! Names and label names are constants of the code: a bad one, a duplicate
//! family, or a label set of the wrong length is a programming error and
//! panics at registration.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

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

/// The metric type, as `# TYPE` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// A monotonically increasing count.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, amount: u64) {
        self.0.fetch_add(amount, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (an `f64` in an atomic's bits).
#[derive(Debug, Clone, Default)]
pub struct Gauge(Arc<AtomicU64>);

impl Gauge {
    pub fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }

    pub fn add(&self, amount: f64) {
        add_f64(&self.0, amount);
    }

    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Observations counted into fixed buckets, plus their sum.
#[derive(Debug, Clone)]
pub struct Histogram(Arc<HistogramCore>);

#[derive(Debug)]
struct HistogramCore {
    /// Upper bounds, ascending, without `+Inf`.
    bounds: Arc<[f64]>,
    /// Per bucket (not cumulative); the last one is `+Inf`.
    counts: Box<[AtomicU64]>,
    sum_bits: AtomicU64,
}

impl Histogram {
    fn new(bounds: Arc<[f64]>) -> Histogram {
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Histogram(Arc::new(HistogramCore {
            bounds,
            counts,
            sum_bits: AtomicU64::new(0f64.to_bits()),
        }))
    }

    /// Counts `value` in the first bucket whose bound is at least `value`.
    /// NaN is ignored: it belongs to no bucket.
    pub fn observe(&self, value: f64) {
        if value.is_nan() {
            return;
        }
        let core = &self.0;
        let bucket = core.bounds.partition_point(|bound| *bound < value);
        core.counts[bucket].fetch_add(1, Ordering::Relaxed);
        add_f64(&core.sum_bits, value);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0
            .counts
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .sum()
    }

    /// The sum of the observations so far.
    pub fn sum(&self) -> f64 {
        f64::from_bits(self.0.sum_bits.load(Ordering::Relaxed))
    }
}

fn add_f64(bits: &AtomicU64, amount: f64) {
    // The closure always returns Some, so this never fails.
    let _ = bits.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |current| {
        Some((f64::from_bits(current) + amount).to_bits())
    });
}

/// What every family has: name, help, type and label names.
#[derive(Debug)]
struct Descriptor {
    name: String,
    help: String,
    kind: MetricKind,
    label_names: Vec<String>,
}

impl Descriptor {
    fn new(name: &str, help: &str, kind: MetricKind, label_names: &[&str]) -> Descriptor {
        assert!(is_metric_name(name), "bad metric name {name:?}");
        for label in label_names {
            assert!(
                is_label_name(label) && !label.starts_with("__"),
                "bad label name {label:?} of {name}"
            );
            assert!(
                !(kind == MetricKind::Histogram && *label == "le"),
                "a histogram cannot have a label named le ({name})"
            );
        }
        Descriptor {
            name: name.to_owned(),
            help: help.to_owned(),
            kind,
            label_names: label_names
                .iter()
                .map(|label| (*label).to_owned())
                .collect(),
        }
    }

    fn check_values(&self, values: &[&str]) {
        assert_eq!(
            values.len(),
            self.label_names.len(),
            "{} has labels {:?}, got values {values:?}",
            self.name,
            self.label_names
        );
    }

    fn write_header(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, escape_help(&self.help));
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind.as_str());
    }
}

/// One family of a kind of handle: the label sets made so far, in order.
pub struct Family<M> {
    descriptor: Descriptor,
    children: Mutex<Vec<(Vec<String>, M)>>,
    make: Box<dyn Fn() -> M + Send + Sync>,
}

impl<M> std::fmt::Debug for Family<M> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Family")
            .field("name", &self.descriptor.name)
            .field("label_names", &self.descriptor.label_names)
            .finish()
    }
}

/// Counters sharing a name, one per label set.
pub type CounterFamily = Family<Counter>;
/// Gauges sharing a name, one per label set.
pub type GaugeFamily = Family<Gauge>;
/// Histograms sharing a name and buckets, one per label set.
pub type HistogramFamily = Family<Histogram>;

impl<M: Clone> Family<M> {
    /// The handle for these label values (in the order of the label names),
    /// created on first use. Call it when the service starts and keep the
    /// handle: it takes a lock.
    pub fn with(&self, values: &[&str]) -> M {
        self.descriptor.check_values(values);
        let mut children = lock(&self.children);
        if let Some((_, metric)) = children
            .iter()
            .find(|(labels, _)| labels.iter().map(String::as_str).eq(values.iter().copied()))
        {
            return metric.clone();
        }
        let metric = (self.make)();
        children.push((
            values.iter().map(|value| (*value).to_owned()).collect(),
            metric.clone(),
        ));
        metric
    }
}

/// Samples a collector closure reports at scrape time.
pub struct Samples<'a> {
    descriptor: &'a Descriptor,
    out: &'a mut String,
}

impl Samples<'_> {
    /// One sample: label values in the order of the label names, and its value.
    pub fn sample(&mut self, values: &[&str], value: f64) {
        self.descriptor.check_values(values);
        write_sample(
            self.out,
            &self.descriptor.name,
            "",
            &self.descriptor.label_names,
            values,
            None,
            &format_value(value),
        );
    }
}

type Collect = Box<dyn Fn(&mut Samples<'_>) + Send + Sync>;

/// A family whose samples a closure reads at scrape time.
struct CollectedFamily {
    descriptor: Descriptor,
    collect: Collect,
}

/// Anything the registry can render.
trait Render: Send + Sync {
    fn name(&self) -> &str;
    fn render(&self, out: &mut String);
}

impl Render for Family<Counter> {
    fn name(&self) -> &str {
        &self.descriptor.name
    }

    fn render(&self, out: &mut String) {
        self.descriptor.write_header(out);
        for (values, counter) in lock(&self.children).iter() {
            write_family_sample(out, &self.descriptor, values, &counter.get().to_string());
        }
    }
}

impl Render for Family<Gauge> {
    fn name(&self) -> &str {
        &self.descriptor.name
    }

    fn render(&self, out: &mut String) {
        self.descriptor.write_header(out);
        for (values, gauge) in lock(&self.children).iter() {
            write_family_sample(out, &self.descriptor, values, &format_value(gauge.get()));
        }
    }
}

impl Render for Family<Histogram> {
    fn name(&self) -> &str {
        &self.descriptor.name
    }

    fn render(&self, out: &mut String) {
        let descriptor = &self.descriptor;
        descriptor.write_header(out);
        for (values, histogram) in lock(&self.children).iter() {
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            let core = &histogram.0;
            let mut cumulative = 0_u64;
            for (index, count) in core.counts.iter().enumerate() {
                cumulative += count.load(Ordering::Relaxed);
                let le = core
                    .bounds
                    .get(index)
                    .map_or_else(|| "+Inf".to_owned(), |bound| format_value(*bound));
                write_sample(
                    out,
                    &descriptor.name,
                    "_bucket",
                    &descriptor.label_names,
                    &values,
                    Some(&le),
                    &cumulative.to_string(),
                );
            }
            let sum = format_value(histogram.sum());
            write_sample(
                out,
                &descriptor.name,
                "_sum",
                &descriptor.label_names,
                &values,
                None,
                &sum,
            );
            // The +Inf bucket, so that _count always equals it even while
            // observations land during the scrape.
            write_sample(
                out,
                &descriptor.name,
                "_count",
                &descriptor.label_names,
                &values,
                None,
                &cumulative.to_string(),
            );
        }
    }
}

impl Render for CollectedFamily {
    fn name(&self) -> &str {
        &self.descriptor.name
    }

    fn render(&self, out: &mut String) {
        self.descriptor.write_header(out);
        let mut samples = Samples {
            descriptor: &self.descriptor,
            out,
        };
        (self.collect)(&mut samples);
    }
}

/// The metrics of one process, rendered in registration order.
#[derive(Default)]
pub struct Registry {
    families: Mutex<Vec<Arc<dyn Render>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = lock(&self.families)
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

    /// A family of counters; by convention `name` ends in `_total`.
    pub fn counter_family(
        &self,
        name: &str,
        help: &str,
        label_names: &[&str],
    ) -> Arc<CounterFamily> {
        self.add_family(
            Descriptor::new(name, help, MetricKind::Counter, label_names),
            Counter::default,
        )
    }

    /// One counter without labels.
    pub fn counter(&self, name: &str, help: &str) -> Counter {
        self.counter_family(name, help, &[]).with(&[])
    }

    /// A family of gauges.
    pub fn gauge_family(&self, name: &str, help: &str, label_names: &[&str]) -> Arc<GaugeFamily> {
        self.add_family(
            Descriptor::new(name, help, MetricKind::Gauge, label_names),
            Gauge::default,
        )
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
        assert!(
            bounds.iter().all(|bound| bound.is_finite())
                && bounds.windows(2).all(|pair| pair[0] < pair[1]),
            "the buckets of {name} must be finite and ascending: {bounds:?}"
        );
        let bounds: Arc<[f64]> = bounds.into();
        self.add_family(
            Descriptor::new(name, help, MetricKind::Histogram, label_names),
            move || Histogram::new(Arc::clone(&bounds)),
        )
    }

    /// A gauge family whose samples `collect` reports at each scrape.
    pub fn gauge_fn(
        &self,
        name: &str,
        help: &str,
        label_names: &[&str],
        collect: impl Fn(&mut Samples<'_>) + Send + Sync + 'static,
    ) {
        self.register(Arc::new(CollectedFamily {
            descriptor: Descriptor::new(name, help, MetricKind::Gauge, label_names),
            collect: Box::new(collect),
        }));
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
        self.register(Arc::new(CollectedFamily {
            descriptor: Descriptor::new(name, help, MetricKind::Counter, label_names),
            collect: Box::new(collect),
        }));
    }

    /// Every family in the text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let families: Vec<Arc<dyn Render>> = lock(&self.families).clone();
        let mut out = String::new();
        for family in families {
            family.render(&mut out);
        }
        out
    }

    fn add_family<M>(
        &self,
        descriptor: Descriptor,
        make: impl Fn() -> M + Send + Sync + 'static,
    ) -> Arc<Family<M>>
    where
        Family<M>: Render + 'static,
    {
        let family = Arc::new(Family {
            descriptor,
            children: Mutex::new(Vec::new()),
            make: Box::new(make),
        });
        self.register(family.clone());
        family
    }

    fn register(&self, family: Arc<dyn Render>) {
        let mut families = lock(&self.families);
        assert!(
            families.iter().all(|known| known.name() != family.name()),
            "metric {} registered twice",
            family.name()
        );
        families.push(family);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves a list that is still whole.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write_family_sample(out: &mut String, descriptor: &Descriptor, values: &[String], value: &str) {
    let values: Vec<&str> = values.iter().map(String::as_str).collect();
    write_sample(
        out,
        &descriptor.name,
        "",
        &descriptor.label_names,
        &values,
        None,
        value,
    );
}

/// `name_suffix{a="x",le="0.5"} value`.
fn write_sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    label_names: &[String],
    values: &[&str],
    le: Option<&str>,
    value: &str,
) {
    out.push_str(name);
    out.push_str(suffix);
    let pairs = label_names
        .iter()
        .map(String::as_str)
        .zip(values.iter().copied())
        .chain(le.map(|le| ("le", le)));
    let mut first = true;
    for (label, value) in pairs {
        out.push(if first { '{' } else { ',' });
        first = false;
        out.push_str(label);
        out.push_str("=\"");
        out.push_str(&escape_label_value(value));
        out.push('"');
    }
    if !first {
        out.push('}');
    }
    out.push(' ');
    out.push_str(value);
    out.push('\n');
}

/// A sample value: `NaN`, `+Inf`, `-Inf`, or the shortest decimal that
/// reads back as the same number.
pub fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        value.to_string()
    }
}

/// A label value with `\`, `"` and newlines escaped.
pub fn escape_label_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for character in value.chars() {
        match character {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// A help text with `\` and newlines escaped.
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

fn is_metric_name(name: &str) -> bool {
    let mut characters = name.chars();
    characters
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_' || first == ':')
        && characters.all(|other| other.is_ascii_alphanumeric() || other == '_' || other == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut characters = name.chars();
    characters
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && characters.all(|other| other.is_ascii_alphanumeric() || other == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_small_registry_exactly() {
        let registry = Registry::new();
        let calls = registry.counter_family(
            "demo_calls_total",
            "Calls answered, by method and code.",
            &["method", "code"],
        );
        calls.with(&["execute", "OK"]).add(3);
        calls.with(&["execute", "UNAVAILABLE"]).inc();
        // The same label set is the same counter.
        calls.with(&["execute", "OK"]).inc();
        let in_flight = registry.gauge_family("demo_in_flight", "Calls in flight.", &[]);
        in_flight.with(&[]).set(2.0);
        in_flight.with(&[]).add(-0.5);
        let latency = registry.histogram_family(
            "demo_latency_seconds",
            "Latency.",
            &["shard"],
            &[0.001, 0.01, 0.1],
        );
        let shard_0 = latency.with(&["0"]);
        for value in [0.0005, 0.001, 0.002, 0.05, 3.0] {
            shard_0.observe(value);
        }
        registry.gauge_fn("demo_tokens", "Tokens now.", &[], |samples| {
            samples.sample(&[], 7.25);
        });

        let expected = "\
# HELP demo_calls_total Calls answered, by method and code.
# TYPE demo_calls_total counter
demo_calls_total{method=\"execute\",code=\"OK\"} 4
demo_calls_total{method=\"execute\",code=\"UNAVAILABLE\"} 1
# HELP demo_in_flight Calls in flight.
# TYPE demo_in_flight gauge
demo_in_flight 1.5
# HELP demo_latency_seconds Latency.
# TYPE demo_latency_seconds histogram
demo_latency_seconds_bucket{shard=\"0\",le=\"0.001\"} 2
demo_latency_seconds_bucket{shard=\"0\",le=\"0.01\"} 3
demo_latency_seconds_bucket{shard=\"0\",le=\"0.1\"} 4
demo_latency_seconds_bucket{shard=\"0\",le=\"+Inf\"} 5
demo_latency_seconds_sum{shard=\"0\"} 3.0535
demo_latency_seconds_count{shard=\"0\"} 5
# HELP demo_tokens Tokens now.
# TYPE demo_tokens gauge
demo_tokens 7.25
";
        assert_eq!(registry.render(), expected);
    }

    #[test]
    fn escapes_label_values_and_help() {
        let registry = Registry::new();
        let family = registry.counter_family("demo_total", "Line one\\two\nthree.", &["path"]);
        family.with(&["C:\\dir \"quoted\"\nnext"]).inc();
        let text = registry.render();
        assert!(
            text.contains("# HELP demo_total Line one\\\\two\\nthree.\n"),
            "{text}"
        );
        assert!(
            text.contains("demo_total{path=\"C:\\\\dir \\\"quoted\\\"\\nnext\"} 1\n"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 3, "no raw newline leaks: {text}");
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_the_count() {
        let registry = Registry::new();
        let family = registry.histogram_family("demo_seconds", "x", &[], LATENCY_BUCKETS_SECONDS);
        let histogram = family.with(&[]);
        for step in 0..1000 {
            // 10 µs to 20 s, spread over every bucket and beyond.
            histogram.observe(1e-5 * 1.0154_f64.powi(step));
        }
        histogram.observe(f64::NAN);
        let text = registry.render();
        let buckets: Vec<(String, u64)> = text
            .lines()
            .filter_map(|line| line.strip_prefix("demo_seconds_bucket{le=\""))
            .map(|rest| {
                let (le, count) = rest.split_once("\"} ").unwrap();
                (le.to_owned(), count.parse().unwrap())
            })
            .collect();
        assert_eq!(buckets.len(), LATENCY_BUCKETS_SECONDS.len() + 1);
        assert_eq!(buckets.last().unwrap().0, "+Inf");
        assert!(
            buckets.windows(2).all(|pair| pair[0].1 <= pair[1].1),
            "{buckets:?}"
        );
        assert!(buckets[0].1 > 0 && buckets[0].1 < 1000);
        assert_eq!(buckets.last().unwrap().1, 1000, "NaN is not counted");
        assert!(text.contains("demo_seconds_count 1000\n"), "{text}");
        assert_eq!(histogram.count(), 1000);
        // Every bound is itself in its bucket (le is "less or equal").
        let exact = registry.histogram_family("demo_exact_seconds", "x", &[], &[1.0, 2.0]);
        exact.with(&[]).observe(1.0);
        assert!(
            registry
                .render()
                .contains("demo_exact_seconds_bucket{le=\"1\"} 1\n")
        );
    }

    #[test]
    fn formats_special_values() {
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(0.00025), "0.00025");
    }

    #[test]
    #[should_panic(expected = "registered twice")]
    fn refuses_a_duplicate_name() {
        let registry = Registry::new();
        registry.counter("demo_total", "x");
        registry.counter("demo_total", "y");
    }

    #[test]
    #[should_panic(expected = "has labels")]
    fn refuses_a_label_set_of_the_wrong_length() {
        let registry = Registry::new();
        registry
            .counter_family("demo_total", "x", &["a", "b"])
            .with(&["only one"]);
    }

    #[test]
    fn the_code_list_is_indexed_by_code() {
        for (index, code) in GRPC_CODES.iter().enumerate() {
            assert_eq!(*code as usize, index);
        }
    }

    #[test]
    fn validates_names() {
        assert!(is_metric_name("fanout_root_searches_total"));
        assert!(is_metric_name("a:b"));
        assert!(!is_metric_name("1abc"));
        assert!(!is_metric_name("a-b"));
        assert!(!is_metric_name(""));
        assert!(is_label_name("shard"));
        assert!(!is_label_name("a:b"));
    }

    #[test]
    fn counts_from_many_threads_add_up() {
        let registry = Registry::new();
        let counter = registry.counter("demo_total", "x");
        let histogram = registry
            .histogram_family("demo_seconds", "x", &[], &[0.5])
            .with(&[]);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..10_000 {
                        counter.inc();
                        histogram.observe(0.25);
                    }
                });
            }
        });
        assert_eq!(counter.get(), 40_000);
        assert_eq!(histogram.count(), 40_000);
        assert!((histogram.sum() - 10_000.0).abs() < 1e-6);
    }
}
