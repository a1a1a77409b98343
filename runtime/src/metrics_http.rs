//! The `GET /metrics` endpoint: a [`Registry`] served over HTTP/1.1 on its
//! own port (`--metrics-listen`), so that a Prometheus server can scrape a
//! service without speaking gRPC, and a scrape never queues behind searches.
//!
//! Built on hyper 1 (already in the build through tonic) rather than by
//! hand: HTTP parsing is not worth rewriting. Every other path answers 404,
//! another method on `/metrics` 405. The endpoint stops with its
//! [`MetricsTask`]: dropping it aborts the accept loop and every open
//! connection, so it goes away with the service it belongs to.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::metrics::{CONTENT_TYPE as EXPOSITION_CONTENT_TYPE, Registry};

/// The one path served.
pub const METRICS_PATH: &str = "/metrics";

/// Longest life of one scrape connection: a client that stalls cannot hold
/// a connection task forever.
const CONNECTION_LIMIT: Duration = Duration::from_secs(30);

/// A bound, not yet serving, metrics listener.
#[derive(Debug)]
pub struct MetricsEndpoint {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl MetricsEndpoint {
    /// Binds `addr` (port 0 picks a free port; see [`local_addr`](Self::local_addr)).
    pub async fn bind(addr: SocketAddr) -> io::Result<MetricsEndpoint> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        Ok(MetricsEndpoint {
            listener,
            local_addr,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves `registry` in a background task until the returned
    /// [`MetricsTask`] is dropped.
    pub fn spawn(self, registry: Arc<Registry>) -> MetricsTask {
        MetricsTask(tokio::spawn(accept_loop(self.listener, registry)))
    }
}

/// The serving endpoint; dropping it stops the endpoint and closes its
/// connections.
#[derive(Debug)]
pub struct MetricsTask(JoinHandle<()>);

impl Drop for MetricsTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Accepts connections until aborted; the connection tasks live in a
/// `JoinSet`, so aborting this task aborts them too.
async fn accept_loop(listener: TcpListener, registry: Arc<Registry>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    let registry = Arc::clone(&registry);
                    connections.spawn(serve_connection(stream, registry));
                }
                Err(error) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(%error, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, registry: Arc<Registry>) {
    let service = service_fn(move |request: Request<Incoming>| {
        let response = respond(&registry, request.method(), request.uri().path());
        async move { Ok::<_, Infallible>(response) }
    });
    let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(CONNECTION_LIMIT, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%error, "metrics endpoint: connection failed"),
        Err(_) => tracing::debug!("metrics endpoint: connection closed after its time limit"),
    }
}

/// The answer to `method path`: the exposition on `GET /metrics` (and
/// `HEAD`, whose body hyper leaves out), 405 for another method there, 404
/// anywhere else.
pub fn respond(registry: &Registry, method: &Method, path: &str) -> Response<Full<Bytes>> {
    if path != METRICS_PATH {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        );
    }
    if method != Method::GET && method != Method::HEAD {
        let mut response = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: use GET\n",
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let mut response = Response::new(Full::new(Bytes::from(registry.render())));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(EXPOSITION_CONTENT_TYPE),
    );
    response
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, request_line: &str) -> io::Result<String> {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("{request_line}\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        Ok(response)
    }

    #[tokio::test]
    async fn serves_the_registry_over_a_real_socket_and_stops_when_dropped() {
        let registry = Arc::new(Registry::new());
        registry
            .counter("demo_scrapes_total", "Scrapes of the demo.")
            .add(7);
        let endpoint = MetricsEndpoint::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = endpoint.local_addr();
        assert_ne!(addr.port(), 0);
        let task = endpoint.spawn(Arc::clone(&registry));

        let ok = get(addr, "GET /metrics HTTP/1.1").await.unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{ok}"
        );
        assert!(ok.ends_with("demo_scrapes_total 7\n"), "{ok}");

        let with_query = get(addr, "GET /metrics?name[]=x HTTP/1.1").await.unwrap();
        assert!(
            with_query.starts_with("HTTP/1.1 200 OK\r\n"),
            "{with_query}"
        );
        let missing = get(addr, "GET /other HTTP/1.1").await.unwrap();
        assert!(
            missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{missing}"
        );
        let posted = get(addr, "POST /metrics HTTP/1.1").await.unwrap();
        assert!(
            posted.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{posted}"
        );

        drop(task);
        // The listener closes once the aborted task is dropped by the runtime.
        let mut refused = false;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            refused,
            "the endpoint still accepts after its task was dropped"
        );
    }
}
