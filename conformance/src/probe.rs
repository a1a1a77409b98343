//! What every check needs: a channel to the service under test, its health,
//! one call bounded in time, and figures written the same way everywhere.

use std::future::Future;
use std::time::Duration;

use fanout_proto::status::code_name;
use fanout_runtime::dns::Resolve;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tonic::Status;
use tonic::codegen::http::Uri;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The kit's HTTP/2 client. Not tonic's `Channel`: that one enforces a
/// call's `grpc-timeout` itself (ending it CANCELLED "Timeout expired"),
/// and the kit must see what the service answers after its deadline. No
/// keepalive pings either: servers in some languages (Python's grpcio)
/// close connections that ping more often than every five minutes.
pub type Transport = Client<HttpConnector<Resolve>, tonic::body::Body>;

/// The service under test: the client and its address.
#[derive(Clone)]
pub struct Target {
    pub transport: Transport,
    pub origin: Uri,
}

impl Target {
    /// `url` (`http://host:port`); connects on the first call, resolving
    /// host names in Rust (the kit also runs in images without NSS).
    pub fn new(url: &str) -> Result<Target, String> {
        let origin: Uri = url
            .parse()
            .map_err(|error| format!("{url:?} is not a URL: {error}"))?;
        let mut http = HttpConnector::new_with_resolver(Resolve::default());
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let transport = Client::builder(TokioExecutor::new())
            .http2_only(true)
            // Cancelled calls (hedges, cut merges) are the kit's business:
            // remembering enough of them keeps late frames on them from
            // counting as the peer's protocol errors.
            .http2_max_concurrent_reset_streams(fanout_runtime::client::REMEMBERED_RESET_STREAMS)
            .build(http);
        Ok(Target { transport, origin })
    }
}

/// The `grpc.health.v1` status of `service` ("" = the server as a whole).
pub async fn health(
    target: &Target,
    service: &str,
    timeout: Duration,
) -> Result<ServingStatus, String> {
    let mut client = HealthClient::with_origin(target.transport.clone(), target.origin.clone());
    let call = client.check(HealthCheckRequest {
        service: service.to_owned(),
    });
    let response = within(timeout, call)
        .await?
        .map_err(|status| describe(&status))?;
    Ok(ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown))
}

/// The health check of a service under test: the server as a whole must
/// say SERVING; what it says of `service` (its own contract's name) is
/// reported.
pub async fn serving(target: &Target, service: &str, timeout: Duration) -> Result<String, String> {
    let server = health(target, "", timeout).await?;
    if server != ServingStatus::Serving {
        return Err(format!("the server says {}", server.as_str_name()));
    }
    let named = match health(target, service, timeout).await {
        Ok(status) => status.as_str_name().to_owned(),
        Err(error) => format!("not registered ({error})"),
    };
    Ok(format!("SERVING; {service}: {named}"))
}

/// `call`, or an error once `limit` has passed: the kit itself never hangs,
/// whatever the service does.
pub async fn within<T>(limit: Duration, call: impl Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(limit, call)
        .await
        .map_err(|_| format!("no answer within {}", ms(limit)))
}

/// A call's outcome and how long it took.
pub async fn timed<T>(call: impl Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let outcome = call.await;
    (outcome, started.elapsed())
}

/// `INVALID_ARGUMENT: "the message"`.
pub fn describe(status: &Status) -> String {
    let mut message = status.message().to_owned();
    if message.chars().count() > 160 {
        message = message.chars().take(160).collect::<String>() + "...";
    }
    format!("{}: {message:?}", code_name(status.code()))
}

/// `12.3 ms`, `1.20 s`.
pub fn ms(duration: Duration) -> String {
    let millis = duration.as_secs_f64() * 1e3;
    if millis >= 1_000.0 {
        format!("{:.2} s", millis / 1e3)
    } else {
        format!("{millis:.1} ms")
    }
}

/// The median of some durations (zero for none).
pub fn median(mut durations: Vec<Duration>) -> Duration {
    if durations.is_empty() {
        return Duration::ZERO;
    }
    durations.sort();
    durations[durations.len() / 2]
}
