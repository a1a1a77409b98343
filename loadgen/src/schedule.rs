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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
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

/// A rate, an arrival process and the seed that makes it reproducible.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    rate_per_second: f64,
    arrivals: ArrivalProcess,
    seed: u64,
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
        })
    }

    pub fn rate_per_second(&self) -> f64 {
        self.rate_per_second
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
        }
    }
}

/// The endless iterator of intended send offsets of a [`Schedule`].
#[derive(Debug, Clone)]
pub struct ArrivalOffsets {
    rate_per_second: f64,
    arrivals: ArrivalProcess,
    next_index: u64,
    poisson_elapsed_seconds: f64,
    random: SeededRandom,
}

impl Iterator for ArrivalOffsets {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let offset_seconds = match self.arrivals {
            // Computed from the index, not accumulated, so rounding never drifts.
            ArrivalProcess::Constant => self.next_index as f64 / self.rate_per_second,
            ArrivalProcess::Poisson => {
                // Inverse transform: 1 - u is in (0, 1], so the logarithm is finite.
                let uniform = self.random.next_unit_f64();
                let gap_seconds = -(1.0 - uniform).ln() / self.rate_per_second;
                let offset = self.poisson_elapsed_seconds;
                self.poisson_elapsed_seconds += gap_seconds;
                offset
            }
        };
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
