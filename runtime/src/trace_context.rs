//! W3C trace context across fanout's gRPC hops: a server adopts its
//! caller's `traceparent` (and `tracestate`) as the parent of its request
//! span ([`adopt_caller`]); a client puts the current span's context into
//! the metadata of its outgoing call ([`inject_current`]). With no exporter
//! ([`crate::telemetry`]) both do nothing but read one flag, except that a
//! caller's trace id still goes into the request span's `trace_id` field,
//! so that logs join the caller's trace.
//!
//! A request forces sampling by sending a sampled `traceparent`
//! ([`new_sampled_traceparent`] makes one): the samplers are parent-based.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The metadata key of the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Set by [`crate::telemetry::init`] once spans are exported.
pub(crate) fn set_exporting(exporting: bool) {
    EXPORTING.store(exporting, Ordering::Relaxed);
}

/// Whether this process exports spans.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Makes `span` (a server's request span, not yet entered) a child of the
/// caller's context in `metadata`, when there is one, and records the trace
/// id in the span's `trace_id` field (which the span must declare, as
/// `trace_id = tracing::field::Empty`).
pub fn adopt_caller(span: &tracing::Span, metadata: &MetadataMap) {
    if !exporting() {
        if let Some(trace_id) = callers_trace_id(metadata) {
            span.record("trace_id", trace_id);
        }
        return;
    }
    let parent = TraceContextPropagator::new().extract(&MetadataExtractor(metadata));
    if parent.span().span_context().is_valid() {
        // Fails only for a span the exporter does not take (disabled).
        let _ = span.set_parent(parent);
    }
    record_trace_id(span);
}

/// The trace id of the caller's `traceparent`, when it sent a valid one.
fn callers_trace_id(metadata: &MetadataMap) -> Option<&str> {
    metadata
        .get(TRACEPARENT)
        .and_then(|value| value.to_str().ok())
        .and_then(trace_id_of_traceparent)
}

/// Records `span`'s own trace id (its caller's, or a new trace's) in its
/// `trace_id` field.
fn record_trace_id(span: &tracing::Span) {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        span.record("trace_id", span_context.trace_id().to_string());
    }
}

/// Puts the current span's context into an outgoing call's metadata.
pub fn inject_current(metadata: &mut MetadataMap) {
    if !exporting() {
        return;
    }
    let context = tracing::Span::current().context();
    if context.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&context, &mut MetadataInjector(metadata));
    }
}

/// The trace id (32 lowercase hex digits) of a `traceparent` value, if it
/// is one (version `00` layout; a later version's first four fields are
/// read the same way, as the W3C recommendation asks).
pub fn trace_id_of_traceparent(value: &str) -> Option<&str> {
    let mut fields = value.trim().split('-');
    let version = fields.next()?;
    let trace_id = fields.next()?;
    let parent_id = fields.next()?;
    let flags = fields.next()?;
    let hex = |field: &str, len: usize| {
        field.len() == len
            && field
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
    };
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace_id, 32)
        && trace_id.bytes().any(|byte| byte != b'0')
        && hex(parent_id, 16)
        && parent_id.bytes().any(|byte| byte != b'0')
        && hex(flags, 2);
    valid.then_some(trace_id)
}

/// A `traceparent` for a new trace, sampled: a client that sends it forces
/// every fanout process on the request's path to keep its spans. The ids
/// are [`crate::hashing::unique_random_u64`]s (unique, not secret).
pub fn new_sampled_traceparent() -> String {
    use crate::hashing::unique_random_u64;
    let trace_id = (u128::from(unique_random_u64()) << 64) | u128::from(unique_random_u64());
    let span_id = unique_random_u64();
    // All-zero ids are invalid; the chance is nil, but cheap to rule out.
    format!("00-{:032x}-{:016x}-01", trace_id.max(1), span_id.max(1))
}

struct MetadataExtractor<'a>(&'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                tonic::metadata::KeyRef::Ascii(key) => Some(key.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_trace_id_of_a_traceparent() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_id_of_traceparent(value),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
        ] {
            assert_eq!(trace_id_of_traceparent(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn new_traceparents_are_valid_sampled_and_distinct() {
        let first = new_sampled_traceparent();
        let second = new_sampled_traceparent();
        assert!(trace_id_of_traceparent(&first).is_some(), "{first}");
        assert!(first.ends_with("-01"), "{first}");
        assert_ne!(first, second);
    }

    #[test]
    fn reads_the_callers_trace_id_from_its_metadata() {
        let mut metadata = MetadataMap::new();
        assert_eq!(callers_trace_id(&metadata), None);
        metadata.insert(
            TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            callers_trace_id(&metadata),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        metadata.insert(TRACEPARENT, "not a traceparent".parse().unwrap());
        assert_eq!(callers_trace_id(&metadata), None);
    }
}
