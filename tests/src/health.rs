//! `grpc.health.v1` from the outside: what a load balancer or an orchestrator
//! would see of a fanout server.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Time between two health checks while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// Limit for one connection attempt or one check.
const ATTEMPT_LIMIT: Duration = Duration::from_secs(2);

/// A channel to `addr`, connected now (bounded).
pub async fn connect(addr: SocketAddr) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .context("bad address")?
        .connect_timeout(ATTEMPT_LIMIT);
    tokio::time::timeout(ATTEMPT_LIMIT, endpoint.connect())
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
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Polls until the server at `addr` is reachable and reports SERVING overall,
/// for at most `limit`.
pub async fn wait_until_serving(addr: SocketAddr, limit: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let last = match connect(addr).await {
            Ok(channel) => {
                let remaining = limit.saturating_sub(started.elapsed());
                return wait_for_status(channel, "", ServingStatus::Serving, remaining)
                    .await
                    .with_context(|| format!("{addr} did not become healthy"));
            }
            Err(error) => format!("{error:#}"),
        };
        if started.elapsed() > limit {
            bail!("{addr} was not reachable within {limit:?}; last: {last}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
