//! What a run drives, over several HTTP/2 connections used round-robin.
//!
//! - `search`: the root's typed `fanout.search.v1.Search/Search`.
//! - `leaf`: one leaf directly, `fanout.v1.Leaf/Execute` with the query packed
//!   as a `ShardSearchRequest` (what the root sends each shard).
//! - `query`: the root's generic `fanout.v1.Root/Query`, with either a fixed
//!   payload (an encoded `google.protobuf.Any` read from a file) or, without
//!   one, each query packed as a `ShardSearchRequest`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fanout_proto::Any;
use fanout_proto::search::v1::search_client::SearchClient;
use fanout_proto::search::v1::{QueryMode, SearchRequest, ShardSearchRequest};
use fanout_proto::v1::leaf_client::LeafClient;
use fanout_proto::v1::root_client::RootClient;
use fanout_proto::v1::{Coverage, ExecuteRequest, HedgePolicy, QueryRequest, ShardTiming};
use prost::Message;
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::error::LoadgenError;

/// How long connecting one connection may take before the run gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    /// The root's `fanout.search.v1.Search/Search`.
    Search,
    /// One leaf's `fanout.v1.Leaf/Execute` with a `ShardSearchRequest` payload.
    Leaf,
    /// The root's generic `fanout.v1.Root/Query`.
    Query,
}

impl TargetKind {
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Search => "search",
            TargetKind::Leaf => "leaf",
            TargetKind::Query => "query",
        }
    }

    /// The full gRPC method this target calls.
    pub fn method(self) -> &'static str {
        match self {
            TargetKind::Search => "/fanout.search.v1.Search/Search",
            TargetKind::Leaf => "/fanout.v1.Leaf/Execute",
            TargetKind::Query => "/fanout.v1.Root/Query",
        }
    }
}

/// What every request carries besides its query text.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestTemplate {
    /// Hits asked for (`SearchRequest.k`, `ShardSearchRequest.k`).
    pub k: u32,
    pub mode: QueryMode,
    /// `search` and `query`: answer with the shards that answered.
    pub allow_partial: bool,
    /// `search` and `query`: with `allow_partial`, the least fraction of shards.
    pub min_coverage: f64,
    /// `search`: ask for snippets (the second phase does more work).
    pub snippets: bool,
    /// `leaf`: the shard id sent in `ExecuteRequest.shard_id`.
    pub shard_id: u32,
    /// `query`: a fixed payload sent instead of the packed query text.
    pub payload: Option<Any>,
    /// `search` and `query`: the hedging asked for.
    pub hedge: HedgeRequest,
}

/// The hedging a request asks the root for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HedgeRequest {
    /// `Default` = the root's configured policy.
    pub policy: HedgePolicy,
    /// With [`HedgePolicy::Fixed`]: the delay before a hedge.
    pub delay_micros: u32,
}

impl Default for HedgeRequest {
    fn default() -> HedgeRequest {
        HedgeRequest {
            policy: HedgePolicy::Default,
            delay_micros: 0,
        }
    }
}

impl std::str::FromStr for HedgeRequest {
    type Err = String;

    /// `default`, `off`, `adaptive` or `fixed:<ms>` (fractions allowed).
    fn from_str(text: &str) -> Result<HedgeRequest, String> {
        let policy = |policy| HedgeRequest {
            policy,
            delay_micros: 0,
        };
        match text {
            "default" => Ok(policy(HedgePolicy::Default)),
            "off" => Ok(policy(HedgePolicy::Off)),
            "adaptive" => Ok(policy(HedgePolicy::Adaptive)),
            _ => {
                // The delay travels as whole microseconds in a u32.
                let micros = fanout_proto::hedge::parse_fixed_millis(text)
                    .ok()
                    .map(|delay| (delay.as_secs_f64() * 1e6).round())
                    .filter(|micros| *micros >= 1.0 && *micros <= f64::from(u32::MAX))
                    .ok_or_else(|| {
                        format!("expected default, off, adaptive or fixed:<ms>, got {text:?}")
                    })?;
                Ok(HedgeRequest {
                    policy: HedgePolicy::Fixed,
                    delay_micros: micros as u32,
                })
            }
        }
    }
}

impl Default for RequestTemplate {
    fn default() -> RequestTemplate {
        RequestTemplate {
            k: 10,
            mode: QueryMode::Natural,
            allow_partial: false,
            min_coverage: 0.0,
            snippets: false,
            shard_id: 0,
            payload: None,
            hedge: HedgeRequest::default(),
        }
    }
}

/// Where and how to connect.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetSpec {
    pub kind: TargetKind,
    /// `http://host:port` or `host:port`.
    pub addr: String,
    /// HTTP/2 connections opened and used round-robin (at least 1).
    pub connections: usize,
    pub request: RequestTemplate,
    /// Over TLS; `None`: plaintext.
    pub tls: Option<TargetTls>,
}

/// The TLS of a load: the CA to trust and, for a server that asks for a
/// client certificate (a leaf under mutual TLS), the certificate and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetTls {
    pub ca: std::path::PathBuf,
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// Connected target; cheap to clone (the connections are shared).
#[derive(Debug, Clone)]
pub struct LoadTarget {
    kind: TargetKind,
    addr: String,
    channels: Arc<[Channel]>,
    next_channel: Arc<AtomicUsize>,
    request: Arc<RequestTemplate>,
}

/// What the responses said about coverage and hedging (`search` and `query` only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponseCoverage {
    pub partial: bool,
    /// Primary leaf calls of both phases: one per shard for the search, one
    /// per shard holding final hits for the fetch.
    pub primary_calls: u64,
    /// Leaf calls of both phases: primaries, hedges and retries.
    pub attempts: u64,
    /// Hedges and retries of the search phase.
    pub hedges: u64,
    pub retries: u64,
    /// Hedges and retries of the fetch phase.
    pub fetch_hedges: u64,
    pub fetch_retries: u64,
}

/// What the root saw of one shard of one successful response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSample {
    pub shard_id: u32,
    /// From the first attempt to the answer used.
    pub latency_us: u64,
    /// Attempts sent (1 = no hedge, no retry: `latency_us` is one attempt's).
    pub attempts: u32,
    /// The fetch phase's call to this shard, the same way (0 attempts: none).
    pub fetch_latency_us: u64,
    pub fetch_attempts: u32,
}

/// The outcome of one call.
#[derive(Debug, Clone, PartialEq)]
pub struct CallOutcome {
    pub code: Code,
    /// The status message of a failed call.
    pub error_message: Option<String>,
    /// From a successful `search` or `query` response.
    pub coverage: Option<ResponseCoverage>,
    /// Per shard, from a successful `search` or `query` response.
    pub shards: Vec<ShardSample>,
}

impl CallOutcome {
    fn from_status(status: Status) -> CallOutcome {
        CallOutcome {
            code: status.code(),
            error_message: Some(status.message().to_string()),
            coverage: None,
            shards: Vec::new(),
        }
    }

    fn ok(coverage: Option<ResponseCoverage>) -> CallOutcome {
        CallOutcome {
            code: Code::Ok,
            error_message: None,
            coverage,
            shards: Vec::new(),
        }
    }

    /// A successful response with shard timings.
    fn answered(coverage: Option<&Coverage>, shards: &[ShardTiming]) -> CallOutcome {
        CallOutcome {
            shards: shards
                .iter()
                .map(|shard| ShardSample {
                    shard_id: shard.shard_id,
                    latency_us: shard.latency_micros,
                    attempts: shard.attempts,
                    fetch_latency_us: shard.fetch_latency_micros,
                    fetch_attempts: shard.fetch_attempts,
                })
                .collect(),
            ..CallOutcome::ok(Some(coverage_seen(coverage, shards)))
        }
    }
}

/// The payload of `--target query --payload-file`: a file holding one
/// encoded `google.protobuf.Any` with a type URL.
pub fn read_payload_file(path: &Path) -> Result<Any, LoadgenError> {
    let payload_error = |reason: String| LoadgenError::PayloadFile {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|error| payload_error(error.to_string()))?;
    let payload = Any::decode(bytes.as_slice())
        .map_err(|error| payload_error(format!("not an encoded google.protobuf.Any: {error}")))?;
    if payload.type_url.is_empty() {
        return Err(payload_error(
            "the google.protobuf.Any has no type url".to_string(),
        ));
    }
    Ok(payload)
}

/// `host:port` becomes `http://host:port`; URLs are checked.
pub fn normalize_address(addr: &str) -> Result<String, LoadgenError> {
    let trimmed = addr.trim();
    if trimmed.is_empty() {
        return Err(LoadgenError::InvalidAddress {
            addr: addr.to_string(),
            reason: "empty".to_string(),
        });
    }
    let url = if trimmed.contains("://") {
        trimmed.to_string()
    } else {
        format!("http://{trimmed}")
    };
    if let Err(error) = url.parse::<tonic::codegen::http::Uri>() {
        return Err(LoadgenError::InvalidAddress {
            addr: addr.to_string(),
            reason: error.to_string(),
        });
    }
    Ok(url)
}

impl LoadTarget {
    /// Opens `spec.connections` connections (each its own HTTP/2 connection) and
    /// fails if any cannot be opened within a few seconds. Host names are
    /// resolved as every fanout client resolves them
    /// ([`fanout_runtime::client::connect`]).
    pub async fn connect(spec: TargetSpec) -> Result<LoadTarget, LoadgenError> {
        if spec.connections == 0 {
            return Err(LoadgenError::InvalidOption(
                "connections must be at least 1".to_string(),
            ));
        }
        let addr = normalize_address(&spec.addr)?;
        let invalid = |reason: String| LoadgenError::InvalidAddress {
            addr: addr.clone(),
            reason,
        };
        let tls = match &spec.tls {
            None => None,
            Some(tls) => Some(
                fanout_runtime::tls::ClientTls::load(
                    &tls.ca,
                    tls.identity
                        .as_ref()
                        .map(|(cert, key)| (cert.as_path(), key.as_path())),
                )
                .map_err(|error| invalid(error.to_string()))?,
            ),
        };
        let endpoint = fanout_runtime::client::endpoint(&addr, tls.as_ref(), None)
            .map_err(invalid)?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        let mut channels = Vec::with_capacity(spec.connections);
        for _ in 0..spec.connections {
            let channel = fanout_runtime::client::connect(&endpoint)
                .await
                .map_err(|error| LoadgenError::Connect {
                    addr: addr.clone(),
                    reason: error_chain(&error),
                })?;
            channels.push(channel);
        }
        Ok(LoadTarget {
            kind: spec.kind,
            addr,
            channels: channels.into(),
            next_channel: Arc::new(AtomicUsize::new(0)),
            request: Arc::new(spec.request),
        })
    }

    pub fn kind(&self) -> TargetKind {
        self.kind
    }

    /// The URL connected to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn connections(&self) -> usize {
        self.channels.len()
    }

    pub fn request(&self) -> &RequestTemplate {
        &self.request
    }

    fn pick_channel(&self) -> Channel {
        let index = self.next_channel.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        self.channels[index].clone()
    }

    /// Sends one request carrying `query`; gives up after `timeout`
    /// (DEADLINE_EXCEEDED), which also travels to the server as `grpc-timeout`.
    pub async fn call(&self, query: &str, timeout: Duration, request_number: u64) -> CallOutcome {
        let channel = self.pick_channel();
        let template = &*self.request;
        let call = async {
            match self.kind {
                TargetKind::Search => {
                    let mut request = tonic::Request::new(SearchRequest {
                        query: query.to_string(),
                        k: template.k,
                        mode: template.mode as i32,
                        allow_partial: template.allow_partial,
                        min_coverage: template.min_coverage,
                        snippets: template.snippets,
                        hedge: template.hedge.policy as i32,
                        hedge_delay_micros: template.hedge.delay_micros,
                        ..Default::default()
                    });
                    request.set_timeout(timeout);
                    match SearchClient::new(channel).search(request).await {
                        Ok(response) => {
                            let response = response.into_inner();
                            CallOutcome::answered(response.coverage.as_ref(), &response.shards)
                        }
                        Err(status) => CallOutcome::from_status(status),
                    }
                }
                TargetKind::Leaf => {
                    let mut request = tonic::Request::new(ExecuteRequest {
                        payload: Some(shard_search_payload(query, template)),
                        shard_id: template.shard_id,
                        attempt: 0,
                        request_id: format!("loadgen-{request_number}"),
                    });
                    request.set_timeout(timeout);
                    match LeafClient::new(channel).execute(request).await {
                        Ok(_) => CallOutcome::ok(None),
                        Err(status) => CallOutcome::from_status(status),
                    }
                }
                TargetKind::Query => {
                    let payload = match &template.payload {
                        Some(payload) => payload.clone(),
                        None => shard_search_payload(query, template),
                    };
                    let mut request = tonic::Request::new(QueryRequest {
                        payload: Some(payload),
                        allow_partial: template.allow_partial,
                        min_coverage: template.min_coverage,
                        hedge: template.hedge.policy as i32,
                        hedge_delay_micros: template.hedge.delay_micros,
                    });
                    request.set_timeout(timeout);
                    match RootClient::new(channel).query(request).await {
                        Ok(response) => {
                            let response = response.into_inner();
                            CallOutcome::answered(response.coverage.as_ref(), &response.shards)
                        }
                        Err(status) => CallOutcome::from_status(status),
                    }
                }
            }
        };
        let started = tokio::time::Instant::now();
        let timed_out = || CallOutcome {
            code: Code::DeadlineExceeded,
            error_message: Some(format!(
                "no response within the {} ms timeout",
                timeout.as_millis()
            )),
            coverage: None,
            shards: Vec::new(),
        };
        match tokio::time::timeout(timeout, call).await {
            // A tonic server enforces the grpc-timeout it was sent and answers
            // CANCELLED when it expires; that is this request's deadline, too.
            Ok(outcome) if outcome.code == Code::Cancelled && started.elapsed() >= timeout => {
                timed_out()
            }
            Ok(outcome) => outcome,
            Err(_elapsed) => timed_out(),
        }
    }
}

fn shard_search_payload(query: &str, template: &RequestTemplate) -> Any {
    fanout_proto::any::pack(&ShardSearchRequest {
        query: query.to_string(),
        mode: template.mode as i32,
        k: template.k,
        ..Default::default()
    })
}

fn coverage_seen(coverage: Option<&Coverage>, shards: &[ShardTiming]) -> ResponseCoverage {
    ResponseCoverage {
        partial: coverage.is_some_and(|coverage| coverage.partial),
        primary_calls: shards
            .iter()
            .map(|shard| 1 + u64::from(shard.fetch_attempts > 0))
            .sum(),
        attempts: shards
            .iter()
            .map(|shard| u64::from(shard.attempts) + u64::from(shard.fetch_attempts))
            .sum(),
        hedges: shards.iter().map(|shard| u64::from(shard.hedges)).sum(),
        retries: shards.iter().map(|shard| u64::from(shard.retries)).sum(),
        fetch_hedges: shards
            .iter()
            .map(|shard| u64::from(shard.fetch_hedges))
            .sum(),
        fetch_retries: shards
            .iter()
            .map(|shard| u64::from(shard.fetch_retries))
            .sum(),
    }
}

/// An error and its sources on one line (tonic's transport errors say little at the top).
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hedge_requests_parse() {
        let parse = |text: &str| text.parse::<HedgeRequest>();
        assert_eq!(parse("default").unwrap(), HedgeRequest::default());
        assert_eq!(parse("off").unwrap().policy, HedgePolicy::Off);
        assert_eq!(
            parse("fixed:0.25").unwrap(),
            HedgeRequest {
                policy: HedgePolicy::Fixed,
                delay_micros: 250
            }
        );
        assert!(parse("fixed:0").is_err());
        assert!(parse("fixed:").is_err());
        assert!(parse("always").is_err());
    }

    #[test]
    fn a_payload_file_holds_an_encoded_any_with_a_type_url() {
        let path =
            std::env::temp_dir().join(format!("fanout-loadgen-any-{}.bin", std::process::id()));
        let payload = fanout_proto::any::pack(&ShardSearchRequest {
            query: "rust".to_string(),
            k: 5,
            ..Default::default()
        });
        std::fs::write(&path, payload.encode_to_vec()).unwrap();
        assert_eq!(read_payload_file(&path).unwrap(), payload);
        std::fs::write(&path, Any::default().encode_to_vec()).unwrap();
        let error = read_payload_file(&path).unwrap_err().to_string();
        assert!(error.contains("no type url"), "{error}");
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            read_payload_file(&path),
            Err(LoadgenError::PayloadFile { .. })
        ));
    }

    #[test]
    fn addresses_get_a_scheme() {
        assert_eq!(
            normalize_address("127.0.0.1:50051").unwrap(),
            "http://127.0.0.1:50051"
        );
        assert_eq!(
            normalize_address("https://search.example:443").unwrap(),
            "https://search.example:443"
        );
        assert!(normalize_address("").is_err());
        assert!(normalize_address("http://bad host:1").is_err());
    }

    #[test]
    fn coverage_sums_hedges_and_retries_over_shards() {
        let shards = [
            ShardTiming {
                attempts: 2,
                hedges: 1,
                retries: 0,
                fetch_attempts: 2,
                fetch_hedges: 1,
                ..Default::default()
            },
            ShardTiming {
                attempts: 4,
                hedges: 2,
                retries: 1,
                ..Default::default()
            },
        ];
        let coverage = Coverage {
            partial: true,
            ..Default::default()
        };
        assert_eq!(
            coverage_seen(Some(&coverage), &shards),
            ResponseCoverage {
                partial: true,
                primary_calls: 3,
                attempts: 8,
                hedges: 3,
                retries: 1,
                fetch_hedges: 1,
                fetch_retries: 0,
            }
        );
        assert_eq!(coverage_seen(None, &[]), ResponseCoverage::default());
    }

    #[tokio::test]
    async fn connecting_to_a_closed_port_fails_with_the_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let error = LoadTarget::connect(TargetSpec {
            tls: None,
            kind: TargetKind::Search,
            addr: addr.to_string(),
            connections: 1,
            request: RequestTemplate::default(),
        })
        .await
        .unwrap_err();
        assert!(
            matches!(&error, LoadgenError::Connect { addr: url, .. } if url.ends_with(&addr.port().to_string())),
            "{error}"
        );
    }
}
