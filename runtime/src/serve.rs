//! Serving a tonic router the way every fanout server does:
//!
//! - on a listener the caller bound (port 0 in tests), with TCP_NODELAY;
//! - with `grpc.health.v1` (overall and per service) and server reflection
//!   v1 and v1alpha (grpcurl speaks only v1alpha), gzip and zstd accepted;
//! - on shutdown: health flips to NOT_SERVING, new work keeps being served for
//!   `drain_delay` (so load balancers notice), then the server stops accepting
//!   and waits up to `grace` for calls in flight.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::codec::CompressionEncoding;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

/// How a server drains.
#[derive(Debug, Clone, Copy)]
pub struct DrainOptions {
    /// Time between NOT_SERVING and refusing new connections.
    pub drain_delay: Duration,
    /// Longest wait for calls in flight after that.
    pub grace: Duration,
}

impl Default for DrainOptions {
    fn default() -> Self {
        Self {
            drain_delay: Duration::from_millis(0),
            grace: Duration::from_secs(10),
        }
    }
}

/// A router of fanout services plus the names they report health under.
pub struct GrpcService {
    routes: Routes,
    service_names: Vec<&'static str>,
    health: HealthReporter,
    health_service: HealthServer<HealthService>,
}

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot serve gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

impl GrpcService {
    /// `routes` holds the services; `service_names` their `NamedService::NAME`s,
    /// each reported SERVING while the server runs and NOT_SERVING on drain.
    pub fn new(routes: Routes, service_names: Vec<&'static str>) -> Self {
        let health = HealthReporter::new();
        let health_service = HealthServer::new(HealthService::from_health_reporter(health.clone()));
        Self {
            routes,
            service_names,
            health,
            health_service,
        }
    }

    /// The health reporter, to flip a service's status at run time.
    pub fn health_reporter(&self) -> HealthReporter {
        self.health.clone()
    }

    /// Serves until `shutdown` resolves, then drains as [`DrainOptions`] says.
    pub async fn serve<F>(
        self,
        listener: TcpListener,
        drain: DrainOptions,
        shutdown: F,
    ) -> Result<(), ServeError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let GrpcService {
            routes,
            service_names,
            health,
            health_service,
        } = self;
        for name in &service_names {
            health
                .set_service_status(*name, ServingStatus::Serving)
                .await;
        }
        health.set_service_status("", ServingStatus::Serving).await;

        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(fanout_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd)
            .send_compressed(CompressionEncoding::Gzip);
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(fanout_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd)
            .send_compressed(CompressionEncoding::Gzip);
        let health_service = health_service
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd)
            .send_compressed(CompressionEncoding::Gzip);

        let routes = routes
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);

        let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
        let stop_accepting = async move {
            shutdown.await;
            tracing::info!(drain_delay = ?drain.drain_delay, "draining: health is NOT_SERVING");
            for name in &service_names {
                health
                    .set_service_status(*name, ServingStatus::NotServing)
                    .await;
            }
            health
                .set_service_status("", ServingStatus::NotServing)
                .await;
            tokio::time::sleep(drain.drain_delay).await;
            let _ = draining_tx.send(());
        };

        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let server = Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, stop_accepting);
        tokio::pin!(server);

        let grace_expired = async move {
            if draining_rx.await.is_ok() {
                tokio::time::sleep(drain.grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            result = &mut server => result?,
            () = grace_expired => {
                tracing::warn!(grace = ?drain.grace, "calls still in flight after the grace period; stopping anyway");
            }
        }
        Ok(())
    }
}
