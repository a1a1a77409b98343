//! The root's settings.

use std::time::Duration;

use fanout_runtime::serve::DrainOptions;

use crate::error::RootError;
use crate::hedge::HedgeSettings;
use crate::topology::Topology;

/// Overall timeout of a request that sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time kept back from every deadline to answer the caller in.
pub const DEFAULT_DEADLINE_MARGIN: Duration = Duration::from_millis(5);

/// Everything a [`RootServer`](crate::RootServer) needs.
#[derive(Debug, Clone)]
pub struct RootConfig {
    pub topology: Topology,
    /// URL of a merger process; `None` merges in-process with `TopKMerge`.
    pub merger: Option<String>,
    /// Overall timeout of a request whose caller sets none (10 s).
    pub default_timeout: Duration,
    /// Kept back from every deadline to answer the caller in (5 ms).
    pub deadline_margin: Duration,
    pub drain: DrainOptions,
    /// Hedging and the budget of hedges and retries.
    pub hedge: HedgeSettings,
}

impl RootConfig {
    /// The defaults around `topology`: embedded merge, 10 s, 5 ms.
    pub fn new(topology: Topology) -> Self {
        Self {
            topology,
            merger: None,
            default_timeout: DEFAULT_TIMEOUT,
            deadline_margin: DEFAULT_DEADLINE_MARGIN,
            drain: DrainOptions::default(),
            hedge: HedgeSettings::default(),
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
        if self
            .merger
            .as_deref()
            .is_some_and(|url| url.trim().is_empty())
        {
            return Err(RootError::Config {
                reason: "the merger url is empty".to_owned(),
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
