//! `grpc.health.v1` from the outside, as a load balancer or an orchestrator
//! sees a fanout server: one check, a wait for a status, and the wait for
//! SERVING after a start.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use fanout_runtime::tls::ClientTls;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Time between two health checks while a process starts.
const HEALTH_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Limit of one connection attempt or one health check while a process starts.
const HEALTH_ATTEMPT_LIMIT: Duration = Duration::from_secs(1);
/// Time between two checks while waiting for a change of status (a drain,
/// say), which a caller may be timing.
const STATUS_POLL_INTERVAL: Duration = Duration::from_millis(25);
/// Limit of one connection attempt or one check of [`connect`] and
/// [`health_status`].
const ATTEMPT_LIMIT: Duration = Duration::from_secs(2);

/// A channel to `addr`, connected now (within a bounded time).
pub async fn connect(addr: SocketAddr) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .context("bad address")?
        .connect_timeout(ATTEMPT_LIMIT);
    tokio::time::timeout(ATTEMPT_LIMIT, fanout_runtime::client::connect(&endpoint))
        .await
        .map_err(|_| anyhow!("connecting to {addr} took more than {ATTEMPT_LIMIT:?}"))?
        .with_context(|| format!("cannot connect to {addr}"))
}

/// One `Health/Check` of `service` ("" = the whole server) on `channel`.
pub async fn health_status(channel: Channel, service: &str) -> anyhow::Result<ServingStatus> {
    let mut client = HealthClient::new(channel);
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: service.to_owned(),
    });
    request.set_timeout(ATTEMPT_LIMIT);
    let response = tokio::time::timeout(ATTEMPT_LIMIT, client.check(request))
        .await
        .map_err(|_| anyhow!("health check took more than {ATTEMPT_LIMIT:?}"))??;
    let status = response.into_inner().status;
    ServingStatus::try_from(status).map_err(|_| anyhow!("unknown serving status {status}"))
}

/// Polls `Health/Check` of `service` on `channel` until it reports `wanted`,
/// for at most `limit`.
pub async fn wait_for_status(
    channel: Channel,
    service: &str,
    wanted: ServingStatus,
    limit: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let last = match health_status(channel.clone(), service).await {
            Ok(status) if status == wanted => return Ok(()),
            Ok(status) => format!("{status:?}"),
            Err(error) => format!("{error:#}"),
        };
        if started.elapsed() > limit {
            bail!("health of {service:?} was not {wanted:?} within {limit:?}; last: {last}");
        }
        tokio::time::sleep(STATUS_POLL_INTERVAL).await;
    }
}

/// Polls `addr`'s `grpc.health.v1` until `service` is SERVING, or fails at
/// `deadline` saying what it saw last.
pub async fn wait_until_serving(
    addr: SocketAddr,
    service: &str,
    deadline: Instant,
) -> anyhow::Result<()> {
    wait_until_serving_over(addr, None, service, deadline).await
}

/// [`wait_until_serving`] over TLS when `tls` is given.
pub async fn wait_until_serving_over(
    addr: SocketAddr,
    tls: Option<&ClientTls>,
    service: &str,
    deadline: Instant,
) -> anyhow::Result<()> {
    let endpoint = fanout_runtime::client::endpoint(&format!("http://{addr}"), tls, None)
        .map_err(|error| anyhow!("{error}"))?
        .connect_timeout(HEALTH_ATTEMPT_LIMIT)
        .timeout(HEALTH_ATTEMPT_LIMIT);
    let started = Instant::now();
    loop {
        let problem = match check_health(&endpoint, service).await {
            Ok(ServingStatus::Serving) => return Ok(()),
            Ok(status) => format!("health is {}", status.as_str_name()),
            Err(problem) => problem,
        };
        if Instant::now() + HEALTH_POLL_INTERVAL >= deadline {
            bail!(
                "{service} at {addr} is not SERVING after {:.1?}: {problem}",
                started.elapsed()
            );
        }
        tokio::time::sleep(HEALTH_POLL_INTERVAL).await;
    }
}

async fn check_health(endpoint: &Endpoint, service: &str) -> Result<ServingStatus, String> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|error| error.to_string())?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?;
    Ok(ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown))
}
