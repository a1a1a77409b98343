//! tracing set-up shared by every binary: log lines on stderr (text or JSON,
//! filtered by `RUST_LOG`, default `info`), and, when an OTLP endpoint is
//! given, the spans of fanout's own crates exported over OTLP/gRPC.
//!
//! Two layers over one registry, each with its own filter:
//!
//! - the log layer, filtered by `RUST_LOG`: with the default `info` it never
//!   sees the `debug` spans the data path opens for tracing (a shard call,
//!   an attempt, the merge, a leaf's queue wait), so with no exporter those
//!   spans are disabled at their call sites and cost a relaxed load each;
//! - the export layer (only with an endpoint), which takes `fanout*` spans
//!   and events at `debug` and above whatever `RUST_LOG` says, so that the
//!   log level and the trace detail are chosen apart.
//!
//! Spans are batched ([`opentelemetry_sdk::trace::BatchSpanProcessor`]: its
//! own thread, a bounded queue that drops rather than blocks, and the
//! standard `OTEL_BSP_*` variables) and sent with opentelemetry-otlp's tonic
//! client, which needs the tokio runtime: [`init`] is called inside it.
//! Sampling is parent-based: a caller's sampled flag is obeyed (so a request
//! forces sampling by sending a sampled `traceparent`), and new traces are
//! kept at [`TraceSettings::sample_ratio`] (else as `OTEL_TRACES_SAMPLER` /
//! `OTEL_TRACES_SAMPLER_ARG` say, else all). W3C trace context crosses the
//! processes in gRPC metadata: [`crate::trace_context`].

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format {other:?}: expected text or json"
            )),
        }
    }
}

/// Whether and how spans are exported.
#[derive(Debug, Clone, Default)]
pub struct TraceSettings {
    /// The OTLP/gRPC collector (`http://host:4317`); `None`: no export.
    pub otlp_endpoint: Option<String>,
    /// The share of new traces kept (a caller's sampled flag is obeyed
    /// whatever it is); `None`: as `OTEL_TRACES_SAMPLER` says, else all.
    pub sample_ratio: Option<f64>,
    /// `service.name` when `OTEL_SERVICE_NAME` does not name one
    /// (`fanout-root`, `fanout-leaf`, ...).
    pub service_name: String,
    /// `fanout.role`, a resource attribute (`root`, `leaf`, `merger`, ...).
    pub role: String,
}

impl TraceSettings {
    /// Checks the settings, before any runtime exists.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(ratio) = self.sample_ratio
            && !(0.0..=1.0).contains(&ratio)
        {
            return Err(format!(
                "the trace sample ratio must be between 0 and 1, not {ratio}"
            ));
        }
        if let Some(endpoint) = &self.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(format!(
                "the OTLP endpoint must be an http:// or https:// URL, not {}",
                fanout_proto::status::quote(endpoint)
            ));
        }
        Ok(())
    }
}

/// What [`init`] started; [`Telemetry::shutdown`] sends the spans still
/// queued before the process exits.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is queued (waiting at most `OTEL_BSP_EXPORT_TIMEOUT`,
    /// 30 s by default, for an unreachable collector) and stops the export.
    /// Call it while the tokio runtime still runs.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown_with_timeout(Duration::from_secs(5))
        {
            eprintln!("warning: could not export the last spans: {error}");
        }
    }
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the OTLP span exporter: {0}")]
pub struct TelemetryError(String);

/// Installs the global subscriber (calling it twice keeps the first one)
/// and, with an endpoint, the span exporter. Must run inside the tokio
/// runtime when `traces` names an endpoint.
pub fn init(format: LogFormat, traces: &TraceSettings) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: a container's or a launcher's log file
    // gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
        // The current span's fields (request_id, trace_id) on every line,
        // and those of the spans above it.
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    let provider = match &traces.otlp_endpoint {
        Some(endpoint) => Some(provider(endpoint, traces)?),
        None => None,
    };
    let export = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("fanout"))
            .with_threads(false)
            .with_filter(Targets::new().with_target("fanout", Level::DEBUG))
    });
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(export)
        .try_init();
    if provider.is_some() {
        crate::trace_context::set_exporting(true);
    }
    Ok(Telemetry { provider })
}

fn provider(endpoint: &str, traces: &TraceSettings) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|error| TelemetryError(error.to_string()))?;
    let mut resource = opentelemetry_sdk::Resource::builder()
        .with_attribute(KeyValue::new("fanout.role", traces.role.clone()));
    if std::env::var_os("OTEL_SERVICE_NAME").is_none_or(|name| name.is_empty()) {
        resource = resource.with_service_name(traces.service_name.clone());
    }
    let mut builder = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build());
    if let Some(ratio) = traces.sample_ratio {
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))));
    }
    Ok(builder.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_the_ratio_and_the_endpoint() {
        let settings = |endpoint: Option<&str>, ratio: Option<f64>| TraceSettings {
            otlp_endpoint: endpoint.map(str::to_owned),
            sample_ratio: ratio,
            ..TraceSettings::default()
        };
        assert!(settings(None, None).validate().is_ok());
        assert!(
            settings(Some("http://127.0.0.1:4317"), Some(0.25))
                .validate()
                .is_ok()
        );
        let error = settings(None, Some(1.5)).validate().unwrap_err();
        assert!(error.contains("between 0 and 1"), "{error}");
        let error = settings(Some("127.0.0.1:4317"), None)
            .validate()
            .unwrap_err();
        assert!(error.contains("http://"), "{error}");
    }
}
