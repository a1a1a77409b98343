//! Serving a tonic router the way every fanout server does:
//!
//! - on a listener the caller bound (port 0 in tests), with TCP_NODELAY;
//! - with `grpc.health.v1` (overall and per service) and server reflection
//!   v1 and v1alpha (grpcurl speaks only v1alpha), listing exactly the
//!   services this server serves (the descriptor set holds every fanout
//!   contract; a leaf must not advertise Search), gzip and zstd accepted;
//! - over TLS when given a [`ServerTls`] (mutual TLS when it names a client
//!   CA): the handshakes run here, each over the configuration in force when
//!   the connection came, so a certificate reloaded on SIGHUP serves the next
//!   connections while the open ones go on;
//! - with health also on a plaintext listener of its own when given one
//!   (`--health-listen`): probes that carry no certificate (Kubernetes' gRPC
//!   probe speaks no TLS) reach health there, and nothing else;
//! - on shutdown: health flips to NOT_SERVING, new work keeps being served for
//!   `drain_delay` (so load balancers notice), then the server stops accepting
//!   and waits up to `grace` for calls in flight.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::CompressionEncoding;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

use crate::tls::ServerTls;

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

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

/// The services a server's reflection lists besides its own: health and
/// reflection itself.
pub const ALWAYS_SERVED: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Reflection over every fanout contract's descriptors (a served service's
/// messages may come from any of them), advertising only `service_names`
/// and [`ALWAYS_SERVED`].
fn reflection_builder(
    service_names: &[&'static str],
) -> tonic_reflection::server::Builder<'static> {
    let builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(fanout_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    service_names
        .iter()
        .chain(ALWAYS_SERVED.iter())
        .fold(builder, |builder, name| builder.with_service_name(*name))
}

/// How a server is reached besides its services: TLS, health alone on a
/// plaintext listener of its own, and whether reflection is served.
#[derive(Debug)]
pub struct ServerTransport {
    /// `None`: plaintext.
    pub tls: Option<Arc<ServerTls>>,
    /// Health alone, in plaintext (`--health-listen`).
    pub health_listener: Option<TcpListener>,
    /// Serve reflection (`--no-reflection` turns it off).
    pub reflection: bool,
}

impl Default for ServerTransport {
    fn default() -> Self {
        Self {
            tls: None,
            health_listener: None,
            reflection: true,
        }
    }
}

/// A router of fanout services plus the names they report health under.
pub struct GrpcService {
    routes: Routes,
    service_names: Vec<&'static str>,
    health: HealthReporter,
    health_service: HealthServer<HealthService>,
    tls: Option<Arc<ServerTls>>,
    health_listener: Option<TcpListener>,
    reflection: bool,
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
            tls: None,
            health_listener: None,
            reflection: true,
        }
    }

    /// Serves over `transport` (plaintext by default).
    pub fn with_transport(mut self, transport: ServerTransport) -> Self {
        self.tls = transport.tls;
        self.health_listener = transport.health_listener;
        self.reflection = transport.reflection;
        self
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
            tls,
            health_listener,
            reflection,
        } = self;
        for name in &service_names {
            health
                .set_service_status(*name, ServingStatus::Serving)
                .await;
        }
        health.set_service_status("", ServingStatus::Serving).await;

        let reflection_v1 = reflection_builder(&service_names)
            .build_v1()?
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd)
            .send_compressed(CompressionEncoding::Gzip);
        let reflection_v1alpha = reflection_builder(&service_names)
            .build_v1alpha()?
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd)
            .send_compressed(CompressionEncoding::Gzip);
        let health_service = health_service
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd)
            .send_compressed(CompressionEncoding::Gzip);

        // Health alone, in plaintext, for probes; it ends with the server.
        let _health_only = health_listener.map(|listener| {
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            let server = Server::builder()
                .add_service(health_service.clone())
                .serve_with_incoming(incoming);
            AbortOnDrop(tokio::spawn(async move {
                if let Err(error) = server.await {
                    tracing::error!(%error, "the health listener stopped");
                }
            }))
        });
        let routes = routes.add_service(health_service);
        let routes = if reflection {
            routes
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha)
        } else {
            routes
        };

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

        let server: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
            match tls {
                None => {
                    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                    Box::pin(
                        Server::builder()
                            .add_routes(routes)
                            .serve_with_incoming_shutdown(incoming, stop_accepting),
                    )
                }
                Some(tls) => {
                    let (stopped_tx, stopped_rx) = tokio::sync::watch::channel(false);
                    let stop_accepting = async move {
                        stop_accepting.await;
                        let _ = stopped_tx.send(true);
                    };
                    let incoming = tls_incoming(listener, tls, stopped_rx);
                    Box::pin(
                        Server::builder()
                            .add_routes(routes)
                            .serve_with_incoming_shutdown(incoming, stop_accepting),
                    )
                }
            };
        let mut server = server;

        let grace_expired = async move {
            if draining_rx.await.is_ok() {
                tokio::time::sleep(drain.grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            result = server.as_mut() => result?,
            () = grace_expired => {
                tracing::warn!(grace = ?drain.grace, "calls still in flight after the grace period; stopping anyway");
            }
        }
        Ok(())
    }
}

/// Accepts TCP connections and runs their TLS handshakes (each with the
/// configuration in force when it came, each bounded in time, a failed one
/// dropped with a debug line: a plaintext client, a certificate from another
/// CA), handing the finished ones to the server, until `stopped`.
fn tls_incoming(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stopped.changed() => return,
                () = sender.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, most likely: wait, go on.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tls.acceptor();
            let sender = sender.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = sender.send(Ok(stream)).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(receiver)
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
