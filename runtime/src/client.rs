//! How fanout's processes reach each other: one spelling of a service's
//! address ([`grpc_url`]), one way to configure the channel of an internal
//! hop ([`internal_endpoint`]: root to leaf, root to merger), and channels
//! that resolve host names in Rust ([`lazy_channel`], [`connect`]; see
//! [`crate::dns`]).

use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use tonic::transport::{Channel, Endpoint};

use crate::dns::Resolve;
use crate::tls::ClientTls;

/// How long establishing a connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Interval of HTTP/2 keepalive pings on an internal hop.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// Time a keepalive ping may go unanswered before the connection is dropped.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams this side reset (a hedge that lost, a merge given up) that
/// HTTP/2 remembers, so that frames the peer had already sent on them are
/// ignored. h2 remembers 10 by default and counts a frame on a forgotten
/// one as a protocol error of the peer; at 1,024 such errors it closes the
/// connection, failing every call on it. At a thousand cancellations a
/// second that took about a second.
pub const REMEMBERED_RESET_STREAMS: usize = 16 * 1024;

/// `address` as a gRPC URL: `host:port` gains `http://`; a URL with another
/// scheme, a path or no port is refused with the reason.
///
/// ```
/// use fanout_runtime::client::grpc_url;
/// assert_eq!(grpc_url("127.0.0.1:7000").unwrap(), "http://127.0.0.1:7000");
/// assert_eq!(grpc_url("http://leaf-0:7000/").unwrap(), "http://leaf-0:7000");
/// assert!(grpc_url("leaf-0").unwrap_err().contains("port"));
/// ```
pub fn grpc_url(address: &str) -> Result<String, String> {
    let address = address.trim();
    if address.is_empty() {
        return Err("the address is empty".to_owned());
    }
    let url = if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    };
    let endpoint = Endpoint::from_shared(url)
        .map_err(|_| "expected host:port or http://host:port".to_owned())?;
    let uri = endpoint.uri();
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err("https is not supported; use http://host:port".to_owned()),
        _ => return Err("expected host:port or http://host:port".to_owned()),
    }
    let Some(host) = uri.host().filter(|host| !host.is_empty()) else {
        return Err("the address has no host".to_owned());
    };
    let Some(port) = uri.port_u16() else {
        return Err("the address has no port".to_owned());
    };
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err("the address must not have a path".to_owned());
    }
    Ok(format!("http://{host}:{port}"))
}

/// The channel settings of an internal hop to `url` (see [`grpc_url`]):
/// TCP_NODELAY, a bounded connect time, keepalive pings while idle, and
/// enough remembered reset streams that cancelled calls never poison the
/// connection the other calls share. With `tls`, over TLS (`https`),
/// checking that the server's certificate names `server_name`, else the
/// host of `url`.
pub fn internal_endpoint(
    url: &str,
    tls: Option<&ClientTls>,
    server_name: Option<&str>,
) -> Result<Endpoint, String> {
    Ok(endpoint(url, tls, server_name)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .http2_max_concurrent_reset_streams(REMEMBERED_RESET_STREAMS))
}

/// An endpoint for `url` (`http://host:port`), over TLS (`https`) with
/// `tls`, checking that the server's certificate names `server_name`, else
/// the host of `url`. The settings of the connection are the caller's.
pub fn endpoint(
    url: &str,
    tls: Option<&ClientTls>,
    server_name: Option<&str>,
) -> Result<Endpoint, String> {
    let endpoint = match tls {
        None => Endpoint::from_shared(url.to_owned())
            .map_err(|error| format!("{url:?} is not a URL: {error}"))?,
        Some(tls) => {
            let https = match url.strip_prefix("http://") {
                Some(rest) => format!("https://{rest}"),
                None => url.to_owned(),
            };
            let endpoint = Endpoint::from_shared(https)
                .map_err(|error| format!("{url:?} is not a URL: {error}"))?;
            let host = endpoint.uri().host().unwrap_or_default().to_owned();
            endpoint
                .tls_config(tls.config(server_name.unwrap_or(&host)))
                .map_err(|error| format!("TLS for {url}: {error}"))?
        }
    };
    Ok(endpoint)
}

/// The TCP connector every fanout channel dials with: host names resolved
/// by [`crate::dns`], TCP_NODELAY, and `https` let through to the TLS layer
/// tonic puts on top. (tonic's own connector would resolve with
/// `getaddrinfo`.)
fn connector() -> HttpConnector<Resolve> {
    let mut http = HttpConnector::new_with_resolver(Resolve::default());
    http.enforce_http(false);
    http.set_nodelay(true);
    http
}

/// A channel over `endpoint` that connects on first use (and reconnects,
/// re-resolving its host, after a failure). Must be called inside a tokio
/// runtime.
pub fn lazy_channel(endpoint: &Endpoint) -> Channel {
    endpoint.connect_with_connector_lazy(connector())
}

/// A channel over `endpoint`, connected now.
pub async fn connect(endpoint: &Endpoint) -> Result<Channel, tonic::transport::Error> {
    endpoint.connect_with_connector(connector()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_plain_grpc_address() {
        for (address, reason) in [
            ("", "empty"),
            ("https://a:1", "https"),
            ("a:1/path", "path"),
            ("ftp://a:1", "expected"),
        ] {
            let error = grpc_url(address).unwrap_err();
            assert!(error.contains(reason), "{address:?}: {error}");
        }
        assert_eq!(grpc_url(" [::1]:9 ").unwrap(), "http://[::1]:9");
    }
}
