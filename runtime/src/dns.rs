//! Name resolution in Rust: `/etc/hosts`, then the name servers of
//! `/etc/resolv.conf` (its `search` and `ndots` included), read by
//! hickory-resolver.
//!
//! fanout ships as one statically linked binary in an image with nothing
//! else in it, where glibc's `getaddrinfo` cannot load the NSS modules it
//! resolves names with; so every name fanout connects to or discovers
//! replicas by goes through here instead. Answers are cached for at most
//! [`MAX_CACHED_TTL`], whatever TTL the server gave them (Docker's DNS says
//! 600 s): a replica set re-resolved every few seconds must see a container
//! that came or went.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hyper_util::client::legacy::connect::dns::Name;

/// The longest an answer is reused.
pub const MAX_CACHED_TTL: Duration = Duration::from_secs(1);
/// How long one query may wait for a name server.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// A resolver configured from the system files; without a readable
/// `/etc/resolv.conf`, one that knows only `/etc/hosts` (and IP literals).
///
/// Its name server connections run on the tokio runtime it is first used
/// in: make one per runtime (cheap), not one per process.
pub fn system_resolver() -> TokioResolver {
    let (config, mut options) = match hickory_resolver::system_conf::read_system_conf() {
        Ok(system) => system,
        Err(error) => {
            tracing::debug!(%error, "no usable /etc/resolv.conf: resolving from /etc/hosts only");
            (
                ResolverConfig::from_parts(None, Vec::new(), Vec::new()),
                ResolverOpts::default(),
            )
        }
    };
    options.use_hosts_file = ResolveHosts::Always;
    // IPv4 first: containers and loopback listeners are IPv4 unless told.
    options.ip_strategy = LookupIpStrategy::Ipv4thenIpv6;
    options.positive_max_ttl = Some(MAX_CACHED_TTL);
    options.negative_max_ttl = Some(MAX_CACHED_TTL);
    options.timeout = QUERY_TIMEOUT;
    options.attempts = 1;
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(options)
        .build()
        .unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot build a resolver from the system configuration; using /etc/hosts only");
            let mut options = ResolverOpts::default();
            options.use_hosts_file = ResolveHosts::Always;
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), Vec::new()),
                TokioRuntimeProvider::default(),
            )
            .with_options(options)
            .build()
            .expect("a resolver without name servers always builds")
        })
}

/// Every address `host` resolves to, sorted and without repeats; an IP
/// literal is its own answer. The error says why there is none.
pub async fn lookup(resolver: &TokioResolver, host: &str) -> Result<Vec<IpAddr>, String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    match resolver.lookup_ip(host).await {
        Ok(answer) => {
            let mut addresses: Vec<IpAddr> = answer.iter().collect();
            addresses.sort_unstable();
            addresses.dedup();
            if addresses.is_empty() {
                Err(format!("{host} has no address"))
            } else {
                Ok(addresses)
            }
        }
        Err(error) if error.is_no_records_found() => Err(format!("{host} has no address")),
        Err(error) => Err(format!("cannot resolve {host}: {error}")),
    }
}

/// hyper's resolver for a connector: names go to [`system_resolver`] (one
/// per connector, made on first use), never to `getaddrinfo`.
#[derive(Clone, Default)]
pub struct Resolve {
    resolver: Arc<OnceLock<TokioResolver>>,
}

impl tower::Service<Name> for Resolve {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let resolver = Arc::clone(&self.resolver);
        Box::pin(async move {
            let resolver = resolver.get_or_init(system_resolver);
            let addresses = lookup(resolver, name.as_str())
                .await
                .map_err(std::io::Error::other)?;
            // hyper sets the port.
            Ok(addresses
                .into_iter()
                .map(|ip| SocketAddr::new(ip, 0))
                .collect::<Vec<_>>()
                .into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literals_and_the_hosts_file_need_no_name_server() {
        let resolver = system_resolver();
        assert_eq!(
            lookup(&resolver, "127.0.0.7").await.unwrap(),
            vec![IpAddr::from([127, 0, 0, 7])]
        );
        assert_eq!(
            lookup(&resolver, "[::1]").await.unwrap(),
            vec!["::1".parse::<IpAddr>().unwrap()]
        );
        // Every system this runs on names its loopback in /etc/hosts.
        let localhost = lookup(&resolver, "localhost").await.unwrap();
        assert!(
            localhost.iter().all(IpAddr::is_loopback) && !localhost.is_empty(),
            "{localhost:?}"
        );
    }

    #[tokio::test]
    async fn a_name_that_cannot_exist_is_an_error_not_a_hang() {
        let resolver = system_resolver();
        // `.invalid` is reserved never to resolve (RFC 2606).
        let error =
            tokio::time::timeout(QUERY_TIMEOUT * 5, lookup(&resolver, "no-such-leaf.invalid"))
                .await
                .expect("bounded by the query timeout")
                .unwrap_err();
        assert!(error.contains("no-such-leaf.invalid"), "{error}");
    }
}
