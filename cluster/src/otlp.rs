//! An OTLP/gRPC trace receiver on loopback (opentelemetry-proto's tonic
//! server): what a collector would get from fanout's processes, kept as
//! [`ReceivedSpan`]s for a test to read, with the resource's `service.name`
//! and `fanout.role` on each span; or only counted
//! ([`OtlpReceiver::start_counting`]), for a benchmark that traces every
//! request and must not hold every span in memory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;

/// One span as the receiver got it.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The resource's `service.name` (`fanout-root`, ...).
    pub service: String,
    /// The resource's `fanout.role` (`root`, `leaf`, `merger`).
    pub role: String,
    pub name: String,
    /// Lowercase hex, as in a `traceparent`.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a trace's first span.
    pub parent_span_id: String,
    /// The span's attributes, values as text.
    pub attributes: BTreeMap<String, String>,
    /// The names (`message`) of the span's events, in order, with their
    /// attributes.
    pub events: Vec<BTreeMap<String, String>>,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
}

impl ReceivedSpan {
    /// An attribute's value, or "".
    pub fn attribute(&self, key: &str) -> &str {
        self.attributes.get(key).map(String::as_str).unwrap_or("")
    }
}

/// The receiver; dropping it stops its server.
pub struct OtlpReceiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    counted: Arc<AtomicU64>,
    _stop: oneshot::Sender<()>,
}

impl OtlpReceiver {
    /// Listens on a free loopback port and keeps every span.
    pub async fn start() -> anyhow::Result<OtlpReceiver> {
        OtlpReceiver::listen(true).await
    }

    /// Listens on a free loopback port and only counts the spans.
    pub async fn start_counting() -> anyhow::Result<OtlpReceiver> {
        OtlpReceiver::listen(false).await
    }

    async fn listen(keep: bool) -> anyhow::Result<OtlpReceiver> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let spans = Arc::new(Mutex::new(Vec::new()));
        let counted = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = oneshot::channel::<()>();
        let collector = Collector {
            spans: Arc::clone(&spans),
            counted: Arc::clone(&counted),
            keep,
        };
        tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(error) = served {
                eprintln!("the OTLP receiver stopped: {error}");
            }
        });
        Ok(OtlpReceiver {
            addr,
            spans,
            counted,
            _stop: stop,
        })
    }

    /// `http://127.0.0.1:<port>`, for `--otlp-endpoint` or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.lock().clone()
    }

    /// How many spans have been received (kept or only counted).
    pub fn count(&self) -> u64 {
        self.counted.load(Ordering::Relaxed)
    }

    /// Waits at most `limit` until `done` holds for the spans received;
    /// returns them either way (the caller's assertions say what is missing).
    pub async fn wait_for(
        &self,
        limit: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let spans = self.spans();
            if done(&spans) || tokio::time::Instant::now() >= deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<ReceivedSpan>> {
        self.spans
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

struct Collector {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    counted: Arc<AtomicU64>,
    keep: bool,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        if !self.keep {
            let count: usize = request
                .resource_spans
                .iter()
                .flat_map(|resource| &resource.scope_spans)
                .map(|scope| scope.spans.len())
                .sum();
            self.counted.fetch_add(count as u64, Ordering::Relaxed);
            return Ok(tonic::Response::new(ExportTraceServiceResponse::default()));
        }
        let mut received = Vec::new();
        for resource_spans in request.resource_spans {
            let resource = resource_spans
                .resource
                .map(|resource| text_map(&resource.attributes))
                .unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            let role = resource.get("fanout.role").cloned().unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    let events = span
                        .events
                        .iter()
                        .map(|event| {
                            let mut attributes = text_map(&event.attributes);
                            attributes.insert("name".to_owned(), event.name.clone());
                            attributes
                        })
                        .collect();
                    received.push(ReceivedSpan {
                        service: service.clone(),
                        role: role.clone(),
                        name: span.name.clone(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        attributes: text_map(&span.attributes),
                        events,
                        start_unix_nanos: span.start_time_unix_nano,
                        end_unix_nanos: span.end_time_unix_nano,
                    });
                }
            }
        }
        self.counted
            .fetch_add(received.len() as u64, Ordering::Relaxed);
        self.spans
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn text_map(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .map(|attribute| (attribute.key.clone(), text(attribute.value.as_ref())))
        .collect()
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|value| value.value.as_ref()) {
        Some(Value::StringValue(text)) => text.clone(),
        Some(Value::BoolValue(value)) => value.to_string(),
        Some(Value::IntValue(value)) => value.to_string(),
        Some(Value::DoubleValue(value)) => value.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The spans of one trace as an indented tree, children by start time:
/// `role name (duration) key=value ...` with the attributes a reader of a
/// search's trace wants (shard, phase, kind, replica, outcome, ...).
pub fn render_tree(spans: &[ReceivedSpan]) -> String {
    const SHOWN: [&str; 9] = [
        "shard_id",
        "shard",
        "phase",
        "kind",
        "outcome",
        "code",
        "replica",
        "hedge_delay_ms",
        "depth",
    ];
    let ids: std::collections::HashSet<&str> =
        spans.iter().map(|span| span.span_id.as_str()).collect();
    let mut children: BTreeMap<&str, Vec<&ReceivedSpan>> = BTreeMap::new();
    for span in spans {
        let parent = if ids.contains(span.parent_span_id.as_str()) {
            span.parent_span_id.as_str()
        } else {
            ""
        };
        children.entry(parent).or_default().push(span);
    }
    for list in children.values_mut() {
        list.sort_by_key(|span| span.start_unix_nanos);
    }
    let mut out = String::new();
    let mut stack: Vec<(&ReceivedSpan, usize)> = children
        .get("")
        .map(|roots| roots.iter().rev().map(|span| (*span, 0)).collect())
        .unwrap_or_default();
    while let Some((span, depth)) = stack.pop() {
        let micros = span.end_unix_nanos.saturating_sub(span.start_unix_nanos) / 1_000;
        let mut line = format!(
            "{}{} {} ({}.{:03} ms)",
            "  ".repeat(depth),
            span.role,
            span.name,
            micros / 1000,
            micros % 1000
        );
        for key in SHOWN {
            if let Some(value) = span.attributes.get(key) {
                line.push_str(&format!(" {key}={value}"));
            }
        }
        let events: Vec<String> = span
            .events
            .iter()
            .map(|event| {
                let name = event.get("name").cloned().unwrap_or_default();
                match event.get("shard_id") {
                    Some(shard) => format!("{name}({shard})"),
                    None => name,
                }
            })
            .collect();
        if !events.is_empty() {
            line.push_str(&format!(" events=[{}]", events.join(" ")));
        }
        out.push_str(&line);
        out.push('\n');
        if let Some(list) = children.get(span.span_id.as_str()) {
            stack.extend(list.iter().rev().map(|child| (*child, depth + 1)));
        }
    }
    out
}
