//! Tail tolerance: when a shard's first attempt is slow, ask another replica
//! too, and take whichever answers first.
//!
//! - [`HedgePolicy`]: off, a fixed delay, or adaptive (a percentile of the
//!   shard's recent attempt latency, between a floor and a ceiling); the
//!   root's default comes from its flags, a request may override it.
//! - [`latency`]: the per-shard rotating HdrHistogram, in microseconds, fed
//!   by every attempt: answers as latencies, attempts given up (cancelled
//!   losers, time-outs) as censored lower bounds, percentiles read off the
//!   Kaplan-Meier estimate (see `selector`).
//! - [`budget`]: [`HedgeBudget`], the token bucket hedges and retries share.
//! - [`timer`]: [`HedgeTimer`], which fires sub-millisecond delays on time.
//!
//! tower's own `hedge` middleware (`--hedge tower`), a baseline for
//! benchmarks, lives apart, in the `baselines` module.
//!
//! The hedged call itself is `shard_call::call_shard`: up to R-1 hedges,
//! each to the best replica not yet tried, first success wins, the others
//! are dropped (which resets their HTTP/2 streams and lets the leaf skip or
//! stop their work).

pub mod budget;
pub mod latency;
pub mod timer;

use std::time::Duration;

pub use budget::HedgeBudget;
pub use latency::{LatencyEstimate, RotatingLatencyHistogram};
pub use timer::HedgeTimer;

/// When to send a hedge.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HedgePolicy {
    /// Never hedge (retries of failures still happen).
    Off,
    /// After this long without an answer.
    Fixed(Duration),
    /// After the shard's recent latency percentile, clamped.
    Adaptive,
}

impl std::str::FromStr for HedgePolicy {
    type Err = String;

    /// `off`, `adaptive` or `fixed:<ms>` (fractions allowed: `fixed:0.25`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "off" => Ok(HedgePolicy::Off),
            "adaptive" => Ok(HedgePolicy::Adaptive),
            _ => fanout_proto::hedge::parse_fixed_millis(text)
                .map(HedgePolicy::Fixed)
                .map_err(|_| format!("expected off, adaptive or fixed:<ms>, got {text:?}")),
        }
    }
}

/// The root's hedging settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HedgeSettings {
    /// The default policy of requests that set none.
    pub policy: HedgePolicy,
    /// Of the shard's attempt latency, for [`HedgePolicy::Adaptive`].
    pub percentile: f64,
    /// The adaptive delay is never shorter than this.
    pub floor: Duration,
    /// Nor longer than this; also the delay before enough samples exist.
    pub ceiling: Duration,
    /// Extra calls (hedges and retries) allowed, in percent of primary calls.
    pub budget_percent: f64,
    /// Extra calls allowed per second regardless.
    pub budget_floor_per_second: f64,
    pub timer: HedgeTimer,
    /// How attempts given up enter the adaptive delay's latency estimate.
    pub estimate: LatencyEstimate,
}

impl Default for HedgeSettings {
    fn default() -> Self {
        Self {
            policy: HedgePolicy::Adaptive,
            percentile: 95.0,
            floor: Duration::from_micros(200),
            ceiling: Duration::from_millis(500),
            budget_percent: 5.0,
            budget_floor_per_second: 10.0,
            timer: HedgeTimer::Precise,
            estimate: LatencyEstimate::Censored,
        }
    }
}

impl HedgeSettings {
    /// The checks clap cannot make.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.percentile > 0.0 && self.percentile < 100.0) {
            return Err(format!(
                "the hedge percentile must be in (0, 100), got {}",
                self.percentile
            ));
        }
        if self.floor > self.ceiling {
            return Err(format!(
                "the hedge floor ({:?}) is above its ceiling ({:?})",
                self.floor, self.ceiling
            ));
        }
        if !(self.budget_percent >= 0.0 && self.budget_percent <= 100.0) {
            return Err(format!(
                "the hedge budget must be 0..=100 percent, got {}",
                self.budget_percent
            ));
        }
        if !(self.budget_floor_per_second >= 0.0 && self.budget_floor_per_second.is_finite()) {
            return Err("the hedge budget floor must be a non-negative number".to_owned());
        }
        Ok(())
    }

    /// The delay before a hedge under `policy`, given the shard's latency
    /// percentile (`None` while it has too few samples); `None` = no hedge.
    pub fn hedge_delay(
        &self,
        policy: HedgePolicy,
        shard_percentile: impl FnOnce(f64) -> Option<Duration>,
    ) -> Option<Duration> {
        match policy {
            HedgePolicy::Off => None,
            HedgePolicy::Fixed(delay) => Some(delay),
            HedgePolicy::Adaptive => Some(
                shard_percentile(self.percentile)
                    .unwrap_or(self.ceiling)
                    .clamp(self.floor, self.ceiling),
            ),
        }
    }
}

/// A request's `hedge` and `hedge_delay_micros` fields as a policy;
/// `Ok(None)` keeps the root's.
pub fn requested_policy(hedge: i32, delay_micros: u32) -> Result<Option<HedgePolicy>, String> {
    use fanout_proto::v1::HedgePolicy as Wire;
    match Wire::try_from(hedge) {
        Ok(Wire::Default) => Ok(None),
        Ok(Wire::Off) => Ok(Some(HedgePolicy::Off)),
        Ok(Wire::Adaptive) => Ok(Some(HedgePolicy::Adaptive)),
        Ok(Wire::Fixed) if delay_micros > 0 => Ok(Some(HedgePolicy::Fixed(Duration::from_micros(
            u64::from(delay_micros),
        )))),
        Ok(Wire::Fixed) => Err("a fixed hedge policy needs hedge_delay_micros > 0".to_owned()),
        Err(_) => Err(format!("unknown hedge policy {hedge}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_policy_of_a_request() {
        use fanout_proto::v1::HedgePolicy as Wire;
        assert_eq!(requested_policy(Wire::Default as i32, 0), Ok(None));
        assert_eq!(
            requested_policy(Wire::Off as i32, 0),
            Ok(Some(HedgePolicy::Off))
        );
        assert_eq!(
            requested_policy(Wire::Fixed as i32, 750),
            Ok(Some(HedgePolicy::Fixed(Duration::from_micros(750))))
        );
        assert!(requested_policy(Wire::Fixed as i32, 0).is_err());
        assert!(requested_policy(42, 0).is_err());
    }

    #[test]
    fn parses_policies() {
        assert_eq!("off".parse::<HedgePolicy>(), Ok(HedgePolicy::Off));
        assert_eq!("adaptive".parse::<HedgePolicy>(), Ok(HedgePolicy::Adaptive));
        assert!(
            "tower".parse::<HedgePolicy>().is_err(),
            "a root flag, not a policy"
        );
        assert_eq!(
            "fixed:0.25".parse::<HedgePolicy>(),
            Ok(HedgePolicy::Fixed(Duration::from_micros(250)))
        );
        assert!("fixed:-1".parse::<HedgePolicy>().is_err());
        assert!("sometimes".parse::<HedgePolicy>().is_err());
    }

    #[test]
    fn the_adaptive_delay_is_clamped_and_falls_back_to_the_ceiling() {
        let settings = HedgeSettings::default();
        let adaptive = HedgePolicy::Adaptive;
        assert_eq!(settings.hedge_delay(HedgePolicy::Off, |_| None), None);
        assert_eq!(
            settings.hedge_delay(adaptive, |p| {
                assert_eq!(p, 95.0);
                Some(Duration::from_micros(700))
            }),
            Some(Duration::from_micros(700))
        );
        assert_eq!(
            settings.hedge_delay(adaptive, |_| Some(Duration::from_micros(3))),
            Some(settings.floor)
        );
        assert_eq!(
            settings.hedge_delay(adaptive, |_| Some(Duration::from_secs(9))),
            Some(settings.ceiling)
        );
        assert_eq!(
            settings.hedge_delay(adaptive, |_| None),
            Some(settings.ceiling)
        );
        let bad = HedgeSettings {
            floor: Duration::from_secs(1),
            ..HedgeSettings::default()
        };
        assert!(bad.validate().is_err());
        assert!(HedgeSettings::default().validate().is_ok());
    }
}
