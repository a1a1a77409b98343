//! Fault injection for tests and benchmarks: slowness, stragglers, a heavy
//! tail, hangs and errors, added around a leaf's real work. Off unless the
//! leaf is started with `--fault` specs; every draw is seeded, so a run can
//! be repeated.
//!
//! Specs (each `--fault` flag takes one; durations carry their unit, as
//! `250us`, `3ms`, `1.5s`, read by [`fanout_runtime::duration::parse_duration`];
//! a bare number is refused):
//!
//! - `seed=N`: the seed of every draw (default 0).
//! - `latency=D` or `latency=D1..D2`: a latency body added to every call,
//!   fixed or uniform between the two.
//! - `straggler=PxK`: with probability `P` a call takes `K` times as long
//!   (its latency body and real work, then `K - 1` times that again).
//! - `straggler-step=AFTER:P`: from `AFTER` after the leaf started, the
//!   straggler probability becomes `P` (a step change in the straggler rate).
//! - `pareto=SCALE:SHAPE`: a heavy tail: every call adds a Pareto draw minus
//!   its scale (so most calls add little and a few add a lot).
//! - `episodes=EVERY:LENGTHxK` (e.g. `episodes=2s:300msx10`): slow episodes
//!   of this replica. Episodes start as a Poisson process with a mean gap of
//!   `EVERY` from the leaf's start, each lasting `LENGTH` (they may overlap);
//!   during one, every call takes `K` times as long (the straggler mechanics,
//!   multiplied with a straggler draw if both apply). The timeline is a pure
//!   function of the seed and the time since the leaf started, so a run
//!   repeats; give each replica its own `seed` for independent episodes.
//! - `inherent=PxD`: with probability `P` a *request* (not a call) is slow by
//!   `D` on every replica: the draw comes from the request id alone (not
//!   from `seed`, which a benchmark sets apart per leaf), so every replica of
//!   every shard agrees and hedging cannot help it.
//! - `hang` or `hang=P`: the call (every one, or with probability `P`) never
//!   answers; it ends only when the caller goes away.
//! - `unavailable=P`: with probability `P` the call fails with UNAVAILABLE
//!   (retryable) without doing any work.
//! - `abort-on=MARKER`: a request whose payload bytes contain `MARKER` (a
//!   query holding it, say) aborts the leaf process at once, as a request of
//!   death would; every replica started with it dies on the same request.
//!
//! Every sleep is an async tokio sleep: the search pool never blocks on a
//! fault.
//!
//! The module's files: [`FaultPlan::parse`] reads the specs (`spec`);
//! [`FaultPlan::decide`] and [`FaultPlan::aborts_on`] make the per-call
//! decisions, with the seeded draws and the episode timeline (`decide`).

mod decide;
mod spec;

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::time::Instant;

pub use decide::EpisodeSchedule;
use decide::EpisodeTimeline;

/// What the faults do to one call, decided when it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FaultDecision {
    /// Sleep this long before the work.
    pub delay_before: Duration,
    /// After the work, sleep `(factor - 1)` times the time spent so far.
    pub straggler_factor: Option<f64>,
    /// Never answer.
    pub hang: bool,
    /// Fail with UNAVAILABLE at once.
    pub unavailable: bool,
}

/// A latency body.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LatencyBody {
    Fixed(Duration),
    Uniform { low: Duration, high: Duration },
}

/// The configured faults of one leaf. `FaultPlan::default()` injects nothing.
#[derive(Debug, Default)]
pub struct FaultPlan {
    seed: u64,
    latency: Option<LatencyBody>,
    straggler_probability: f64,
    straggler_multiplier: f64,
    straggler_step: Option<(Duration, f64)>,
    pareto: Option<(Duration, f64)>,
    inherent: Option<(f64, Duration)>,
    episodes: Option<EpisodeTimeline>,
    hang_probability: f64,
    unavailable_probability: f64,
    abort_marker: Option<Vec<u8>>,
    draws: AtomicU64,
    started_at: Option<Instant>,
}

impl FaultPlan {
    /// Whether any fault is configured.
    pub fn is_active(&self) -> bool {
        self.started_at.is_some()
    }
}

#[cfg(test)]
mod test_support {
    use std::time::Duration;

    use super::{EpisodeSchedule, FaultPlan};

    pub(super) fn plan(specs: &[&str]) -> FaultPlan {
        FaultPlan::parse(&specs.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    pub(super) fn schedule(seed: u64) -> EpisodeSchedule {
        EpisodeSchedule {
            seed,
            every: Duration::from_secs(2),
            length: Duration::from_millis(300),
            factor: 10.0,
        }
    }
}
