//! The root's settings.

use std::time::Duration;

use fanout_proto::search::limits::QueryLimits;
use fanout_runtime::serve::DrainOptions;

use crate::admission::AdmissionSettings;
use crate::crash::CrashSettings;
use crate::error::RootError;
use crate::hedge::HedgeSettings;
use crate::shard_caller::ShardCallerKind;
use crate::topology::Topology;

/// Overall timeout of a request that sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time kept back from every deadline to answer the caller in.
pub const DEFAULT_DEADLINE_MARGIN: Duration = Duration::from_millis(5);

/// How a root finds and watches replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscoverySettings {
    /// How often `dns:` names are resolved again.
    pub dns_refresh: Duration,
    /// Whether each replica's health service is watched.
    pub watch_health: bool,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        Self {
            dns_refresh: Duration::from_secs(5),
            watch_health: true,
        }
    }
}

impl DiscoverySettings {
    pub fn validate(&self) -> Result<(), String> {
        if self.dns_refresh < Duration::from_millis(100) {
            return Err(format!(
                "the DNS refresh interval ({:?}) must be at least 100ms",
                self.dns_refresh
            ));
        }
        Ok(())
    }
}

/// The root's result cache ([`crate::cache`]).
#[derive(Debug, Clone, Copy)]
pub struct ResultCacheSettings {
    /// Its bound in bytes; 0: no cache.
    pub max_bytes: usize,
    /// How often each shard's generation is asked for (`Info`) while the
    /// cache is on: the longest a re-indexed shard can go unnoticed when
    /// every request is answered from the cache (answers note it at once).
    pub generation_poll: Duration,
}

impl Default for ResultCacheSettings {
    fn default() -> Self {
        ResultCacheSettings {
            max_bytes: 0,
            generation_poll: Duration::from_secs(1),
        }
    }
}

/// Everything a [`RootServer`](crate::RootServer) needs.
#[derive(Debug, Clone)]
pub struct RootConfig {
    pub topology: Topology,
    /// URLs of merger processes, tried in this order; none merges
    /// in-process with `TopKMerge`.
    pub mergers: Vec<String>,
    /// When no merger process can be reached, merge in-process with
    /// `TopKMerge` (right only when the mergers are top-k mergers).
    pub merger_fallback: bool,
    /// Overall timeout of a request whose caller sets none (10 s).
    pub default_timeout: Duration,
    /// Kept back from every deadline to answer the caller in (5 ms).
    pub deadline_margin: Duration,
    /// A request that takes this long is logged at WARN with its shards'
    /// timings (1 s); `None`: never.
    pub slow_request: Option<Duration>,
    /// The result cache: its bound in bytes (0: no cache, the default) and
    /// how often the shards' generations are polled while it is on.
    pub result_cache: ResultCacheSettings,
    pub drain: DrainOptions,
    /// Hedging and the budget of hedges and retries.
    pub hedge: HedgeSettings,
    /// What a search query may cost (checked before any leaf is called).
    pub query_limits: QueryLimits,
    /// The policy for requests that crash leaves.
    pub crash: CrashSettings,
    /// How many requests are admitted at once.
    pub admission: AdmissionSettings,
    /// fanout's hedged shard calls, or tower's hedge as a benchmark baseline.
    pub shard_caller: ShardCallerKind,
    /// How replicas are found (`dns:` names) and watched (health).
    pub discovery: DiscoverySettings,
    /// Bearer tokens for `Search` and `Root/Query`; `None`: open to all.
    pub auth: Option<std::sync::Arc<crate::auth::Authenticator>>,
    /// TLS to the leaves and mergers (and the certificate presented to
    /// them); `None`: plaintext.
    pub client_tls: Option<fanout_runtime::tls::ClientTls>,
}

impl RootConfig {
    /// The defaults around `topology`: embedded merge, 10 s, 5 ms.
    pub fn new(topology: Topology) -> Self {
        Self {
            topology,
            mergers: Vec::new(),
            merger_fallback: false,
            default_timeout: DEFAULT_TIMEOUT,
            deadline_margin: DEFAULT_DEADLINE_MARGIN,
            slow_request: crate::request_log::RequestLog::default().slow_threshold,
            result_cache: ResultCacheSettings::default(),
            drain: DrainOptions::default(),
            hedge: HedgeSettings::default(),
            query_limits: QueryLimits::DEFAULT,
            crash: CrashSettings::default(),
            admission: AdmissionSettings::default(),
            shard_caller: ShardCallerKind::Hedged,
            discovery: DiscoverySettings::default(),
            auth: None,
            client_tls: None,
        }
    }

    /// Checks the settings that the topology's own checks do not cover.
    pub fn validate(&self) -> Result<(), RootError> {
        if self.default_timeout <= self.deadline_margin {
            return Err(RootError::Config {
                reason: format!(
                    "default_timeout ({:?}) must be longer than deadline_margin ({:?})",
                    self.default_timeout, self.deadline_margin
                ),
            });
        }
        self.hedge
            .validate()
            .map_err(|reason| RootError::Config { reason })?;
        self.query_limits
            .validate()
            .map_err(|reason| RootError::Config { reason })?;
        self.crash
            .validate()
            .map_err(|reason| RootError::Config { reason })?;
        self.admission
            .validate()
            .map_err(|reason| RootError::Config { reason })?;
        self.discovery
            .validate()
            .map_err(|reason| RootError::Config { reason })?;
        if self.mergers.iter().any(|url| url.trim().is_empty()) {
            return Err(RootError::Config {
                reason: "a merger url is empty".to_owned(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology() -> Topology {
        Topology::from_shard_flags(&["0=127.0.0.1:1".to_owned()]).unwrap()
    }

    #[test]
    fn defaults_are_valid_and_a_margin_longer_than_the_timeout_is_not() {
        let config = RootConfig::new(topology());
        assert!(config.validate().is_ok());
        let config = RootConfig {
            default_timeout: Duration::from_millis(5),
            ..RootConfig::new(topology())
        };
        let error = config.validate().unwrap_err();
        assert!(error.to_string().contains("deadline_margin"), "{error}");
    }
}
