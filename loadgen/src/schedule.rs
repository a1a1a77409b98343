//! Arrival schedules: when each request is *meant* to leave, as an offset from
//! the start of the run. The runner sends at these instants whatever the
//! server does (open loop) and measures latency from them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::LoadgenError;
use crate::seeded_random::SeededRandom;

/// The highest rate a schedule accepts; beyond it one launcher thread cannot keep up anyway.
pub const MAX_RATE_PER_SECOND: f64 = 1_000_000.0;

/// How requests arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArrivalProcess {
    /// Evenly spaced, exactly `rate` a second (wrk2's constant throughput).
    Constant,
    /// A Poisson process: independent exponential gaps with mean `1 / rate`.
    Poisson,
}

impl ArrivalProcess {
    pub fn name(self) -> &'static str {
        match self {
            ArrivalProcess::Constant => "constant",
            ArrivalProcess::Poisson => "poisson",
        }
    }
}

/// A rate, an arrival process and the seed that makes it reproducible;
/// optionally in phases, each at its own rate for its own time (an overload
/// and the recovery after it, say).
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    rate_per_second: f64,
    arrivals: ArrivalProcess,
    seed: u64,
    /// Empty: `rate_per_second` for ever.
    phases: Vec<RatePhase>,
}

/// A stretch of a schedule at one rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RatePhase {
    pub rate_per_second: f64,
    pub duration: Duration,
}

impl Schedule {
    pub fn new(
        rate_per_second: f64,
        arrivals: ArrivalProcess,
        seed: u64,
    ) -> Result<Schedule, LoadgenError> {
        if !rate_per_second.is_finite()
            || rate_per_second <= 0.0
            || rate_per_second > MAX_RATE_PER_SECOND
        {
            return Err(LoadgenError::InvalidOption(format!(
                "rate must be above 0 and at most {MAX_RATE_PER_SECOND} requests a second, got {rate_per_second}"
            )));
        }
        Ok(Schedule {
            rate_per_second,
            arrivals,
            seed,
            phases: Vec::new(),
        })
    }

    /// Each phase in turn; the last one goes on for ever once its time is up.
    pub fn phased(
        phases: Vec<RatePhase>,
        arrivals: ArrivalProcess,
        seed: u64,
    ) -> Result<Schedule, LoadgenError> {
        let Some(first) = phases.first() else {
            return Err(LoadgenError::InvalidOption(
                "a phased schedule needs at least one phase".to_string(),
            ));
        };
        for phase in &phases {
            Schedule::new(phase.rate_per_second, arrivals, seed)?;
            if phase.duration.is_zero() {
                return Err(LoadgenError::InvalidOption(
                    "a phase must last more than zero".to_string(),
                ));
            }
        }
        Ok(Schedule {
            rate_per_second: first.rate_per_second,
            arrivals,
            seed,
            phases,
        })
    }

    /// The rate (of the first phase, for a phased schedule).
    pub fn rate_per_second(&self) -> f64 {
        self.rate_per_second
    }

    pub fn phases(&self) -> &[RatePhase] {
        &self.phases
    }

    pub fn arrivals(&self) -> ArrivalProcess {
        self.arrivals
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The intended send offsets, from the start of the run, in order; never ends.
    pub fn offsets(&self) -> ArrivalOffsets {
        ArrivalOffsets {
            rate_per_second: self.rate_per_second,
            arrivals: self.arrivals,
            next_index: 0,
            poisson_elapsed_seconds: 0.0,
            random: SeededRandom::new(self.seed),
            phases: self.phases.clone(),
            phase: 0,
            phase_start_seconds: 0.0,
        }
    }
}

/// The endless iterator of intended send offsets of a [`Schedule`].
#[derive(Debug, Clone)]
pub struct ArrivalOffsets {
    rate_per_second: f64,
    arrivals: ArrivalProcess,
    /// Within the current phase.
    next_index: u64,
    poisson_elapsed_seconds: f64,
    random: SeededRandom,
    phases: Vec<RatePhase>,
    phase: usize,
    phase_start_seconds: f64,
}

impl ArrivalOffsets {
    /// The offset the next arrival would have in the current phase.
    fn candidate(&mut self) -> f64 {
        match self.arrivals {
            // Computed from the index, not accumulated, so rounding never drifts.
            ArrivalProcess::Constant => {
                self.phase_start_seconds + self.next_index as f64 / self.rate_per_second
            }
            ArrivalProcess::Poisson => self.poisson_elapsed_seconds,
        }
    }

    /// Moves to the next phase if the candidate is past the current one's end.
    fn enter_next_phase_if_due(&mut self, candidate: f64) -> bool {
        let Some(phase) = self.phases.get(self.phase) else {
            return false;
        };
        let end = self.phase_start_seconds + phase.duration.as_secs_f64();
        let Some(next) = self.phases.get(self.phase + 1) else {
            return false;
        };
        if candidate < end {
            return false;
        }
        self.phase += 1;
        self.phase_start_seconds = end;
        self.rate_per_second = next.rate_per_second;
        self.next_index = 0;
        // Memoryless: the new phase's first gap starts at its beginning.
        let uniform = self.random.next_unit_f64();
        self.poisson_elapsed_seconds = end + -(1.0 - uniform).ln() / self.rate_per_second;
        true
    }
}

impl Iterator for ArrivalOffsets {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let mut offset_seconds = self.candidate();
        while self.enter_next_phase_if_due(offset_seconds) {
            offset_seconds = self.candidate();
        }
        if self.arrivals == ArrivalProcess::Poisson {
            // Inverse transform: 1 - u is in (0, 1], so the logarithm is finite.
            let uniform = self.random.next_unit_f64();
            self.poisson_elapsed_seconds += -(1.0 - uniform).ln() / self.rate_per_second;
        }
        self.next_index += 1;
        Some(Duration::from_secs_f64(offset_seconds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_rate(schedule: &Schedule, arrivals: usize) -> f64 {
        let last = schedule
            .offsets()
            .nth(arrivals)
            .expect("the offsets never end");
        arrivals as f64 / last.as_secs_f64()
    }

    #[test]
    fn constant_rate_is_exact_and_evenly_spaced() {
        let schedule = Schedule::new(200.0, ArrivalProcess::Constant, 1).unwrap();
        let offsets: Vec<Duration> = schedule.offsets().take(5).collect();
        assert_eq!(
            offsets,
            [0, 5, 10, 15, 20].map(Duration::from_millis).to_vec()
        );
        let rate = mean_rate(&schedule, 100_000);
        assert!((rate - 200.0).abs() < 1e-6, "rate {rate}");
    }

    #[test]
    fn poisson_rate_has_the_right_mean_and_spread() {
        let schedule = Schedule::new(1_000.0, ArrivalProcess::Poisson, 42).unwrap();
        let rate = mean_rate(&schedule, 100_000);
        // The mean of 100k exponential gaps is within 1% of 1/rate with overwhelming probability.
        assert!((rate - 1_000.0).abs() < 10.0, "rate {rate}");
        // Exponential gaps have a coefficient of variation of 1 (constant ones have 0).
        let offsets: Vec<f64> = schedule
            .offsets()
            .take(100_001)
            .map(|offset| offset.as_secs_f64())
            .collect();
        let gaps: Vec<f64> = offsets.windows(2).map(|pair| pair[1] - pair[0]).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let variance = gaps.iter().map(|gap| (gap - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
        let coefficient_of_variation = variance.sqrt() / mean;
        assert!(
            (coefficient_of_variation - 1.0).abs() < 0.03,
            "coefficient of variation {coefficient_of_variation}"
        );
    }

    #[test]
    fn schedules_are_reproducible_by_seed() {
        let first: Vec<Duration> = Schedule::new(500.0, ArrivalProcess::Poisson, 9)
            .unwrap()
            .offsets()
            .take(1_000)
            .collect();
        let again: Vec<Duration> = Schedule::new(500.0, ArrivalProcess::Poisson, 9)
            .unwrap()
            .offsets()
            .take(1_000)
            .collect();
        let other_seed: Vec<Duration> = Schedule::new(500.0, ArrivalProcess::Poisson, 10)
            .unwrap()
            .offsets()
            .take(1_000)
            .collect();
        assert_eq!(first, again);
        assert_ne!(first, other_seed);
        assert!(first.windows(2).all(|pair| pair[0] <= pair[1]));
    }

    #[test]
    fn phases_follow_each_other_at_their_own_rates() {
        for arrivals in [ArrivalProcess::Constant, ArrivalProcess::Poisson] {
            let phases = vec![
                RatePhase {
                    rate_per_second: 100.0,
                    duration: Duration::from_secs(10),
                },
                RatePhase {
                    rate_per_second: 1000.0,
                    duration: Duration::from_secs(10),
                },
                RatePhase {
                    rate_per_second: 50.0,
                    duration: Duration::from_secs(10),
                },
            ];
            let schedule = Schedule::phased(phases, arrivals, 3).unwrap();
            let offsets: Vec<f64> = schedule
                .offsets()
                .take_while(|offset| offset.as_secs_f64() < 30.0)
                .map(|offset| offset.as_secs_f64())
                .collect();
            let count = |from: f64, to: f64| {
                offsets
                    .iter()
                    .filter(|offset| (from..to).contains(*offset))
                    .count() as f64
            };
            for (from, expected) in [(0.0, 1000.0), (10.0, 10_000.0), (20.0, 500.0)] {
                let seen = count(from, from + 10.0);
                assert!(
                    (seen - expected).abs() <= expected * 0.1,
                    "{arrivals:?} from {from} s: {seen} arrivals, expected about {expected}"
                );
            }
            assert!(offsets.windows(2).all(|pair| pair[0] <= pair[1]));
        }
        assert!(Schedule::phased(Vec::new(), ArrivalProcess::Constant, 1).is_err());
    }

    #[test]
    fn rejects_rates_that_are_not_positive_and_finite() {
        for rate in [
            0.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            2.0 * MAX_RATE_PER_SECOND,
        ] {
            assert!(
                Schedule::new(rate, ArrivalProcess::Constant, 1).is_err(),
                "{rate}"
            );
        }
    }
}
