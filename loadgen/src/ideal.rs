//! The ideal hedged latency: what a perfect hedging policy could achieve on
//! the same cluster at the same extra load, computed from a hedging-off run.
//!
//! With hedging off every shard call is one attempt, so the root's shard
//! timings of that run are samples of the per-attempt latency distribution
//! of each shard. A policy that hedges after a delay `d` on independent
//! replicas turns an attempt's survival `S(t)` into `S(t) S(t-d) S(t-2d)...`
//! (each hedge a fresh draw, started `d` later than the previous one). This
//! module applies that by resampling: for every recorded request, each shard's
//! recorded latency `x` becomes `min(x, d + x1, 2d + x2, ...)` with `x1, x2`
//! drawn from the same shard's recorded attempts, and the request's latency
//! becomes its recorded overhead (latency minus its slowest shard) plus the
//! slowest of the hedged shards.
//!
//! The delay is chosen per shard so that the fraction of attempts hedged
//! equals a given rate (the rate a real hedged run measured): the
//! `1 - rate` quantile of the shard's attempt latency. Nothing in the
//! computation costs anything (no timer lateness, no extra load, no queueing
//! caused by the hedges), hence "ideal": a measured p99 divided by the ideal
//! p99 says how much of the achievable gain a policy leaves on the table.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

use crate::error::LoadgenError;
use crate::runner::QuerySample;
use crate::seeded_random::SeededRandom;

/// Histograms hold 1 µs to 1 hour at 3 significant digits, as the runner's.
const MAX_RECORDED_MICROS: u64 = 3_600_000_000;

/// How to compute the bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IdealOptions {
    /// Fraction (0..1) of primary shard calls that get a hedge.
    pub hedge_rate: f64,
    /// Hedges a shard call may get (replicas - 1).
    pub max_hedges: u32,
    /// Passes over the recorded requests, each with fresh draws.
    pub resamples: u32,
    pub seed: u64,
}

/// The ideal hedged latency of a recorded run.
#[derive(Debug, Clone)]
pub struct IdealBound {
    /// Per shard id: the hedge delay, in microseconds, that hedges `hedge_rate`.
    pub delays_us: BTreeMap<u32, u64>,
    /// Resampled request latencies, in microseconds.
    pub latency: Histogram<u64>,
    /// Recorded requests used (those whose every shard answered at the first attempt).
    pub requests_used: usize,
    /// Hedges the ideal sent per primary shard call (about `hedge_rate`).
    pub hedges_per_call: f64,
}

/// Computes the [`IdealBound`] of `samples` (a hedging-off run's, kept with
/// `RunOptions::keep_shard_samples`).
pub fn ideal_hedged_latency(
    samples: &[QuerySample],
    options: IdealOptions,
) -> Result<IdealBound, LoadgenError> {
    let invalid = |text: String| Err(LoadgenError::InvalidOption(text));
    if !(0.0..1.0).contains(&options.hedge_rate) {
        return invalid(format!(
            "the hedge rate must be in [0, 1), not {}",
            options.hedge_rate
        ));
    }
    if options.resamples == 0 {
        return invalid("the ideal bound needs at least one resample".to_string());
    }
    // Requests with a hedge, retry or missing timing are not single-attempt samples.
    let usable: Vec<&QuerySample> = samples
        .iter()
        .filter(|sample| {
            !sample.shards.is_empty() && sample.shards.iter().all(|shard| shard.attempts == 1)
        })
        .collect();
    if usable.is_empty() {
        return invalid(
            "no request of the hedging-off run has single-attempt shard timings".to_string(),
        );
    }
    let mut attempts: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for sample in &usable {
        for shard in &sample.shards {
            attempts
                .entry(shard.shard_id)
                .or_default()
                .push(shard.latency_us);
        }
    }
    for pool in attempts.values_mut() {
        pool.sort_unstable();
    }
    let delays_us: BTreeMap<u32, u64> = attempts
        .iter()
        .map(|(shard_id, pool)| {
            (
                *shard_id,
                quantile_of_sorted(pool, 1.0 - options.hedge_rate),
            )
        })
        .collect();

    let mut latency =
        Histogram::new_with_bounds(1, MAX_RECORDED_MICROS, 3).expect("constant histogram bounds");
    let mut random = SeededRandom::new(options.seed);
    let mut hedges = 0u64;
    let mut primaries = 0u64;
    for _ in 0..options.resamples {
        for sample in &usable {
            let slowest_recorded = sample
                .shards
                .iter()
                .map(|shard| shard.latency_us)
                .max()
                .unwrap_or(0);
            let overhead = sample.latency_us.saturating_sub(slowest_recorded);
            let mut slowest_hedged = 0u64;
            for shard in &sample.shards {
                let pool = &attempts[&shard.shard_id];
                let delay = delays_us[&shard.shard_id];
                let mut answered = shard.latency_us;
                for hedge in 1..=u64::from(options.max_hedges) {
                    let sent_at = delay.saturating_mul(hedge);
                    if answered <= sent_at {
                        break;
                    }
                    hedges += 1;
                    let draw = pool[random.below(pool.len() as u64) as usize];
                    answered = answered.min(sent_at.saturating_add(draw));
                }
                primaries += 1;
                slowest_hedged = slowest_hedged.max(answered);
            }
            latency.saturating_record(overhead.saturating_add(slowest_hedged).max(1));
        }
    }
    Ok(IdealBound {
        delays_us,
        latency,
        requests_used: usable.len(),
        hedges_per_call: hedges as f64 / primaries.max(1) as f64,
    })
}

/// The value at `quantile` (0..=1) of an ascending slice (nearest rank).
fn quantile_of_sorted(sorted: &[u64], quantile: f64) -> u64 {
    let rank = (quantile.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::ShardSample;

    /// One shard: 1 ms attempts, every 100th a 10 ms straggler.
    fn straggling_samples(count: u64) -> Vec<QuerySample> {
        (0..count)
            .map(|index| {
                let shard_latency = if index % 100 == 99 { 10_000 } else { 1_000 };
                QuerySample {
                    latency_us: shard_latency + 200,
                    shards: vec![ShardSample {
                        shard_id: 0,
                        latency_us: shard_latency,
                        attempts: 1,
                    }],
                }
            })
            .collect()
    }

    fn options(hedge_rate: f64) -> IdealOptions {
        IdealOptions {
            hedge_rate,
            max_hedges: 2,
            resamples: 20,
            seed: 7,
        }
    }

    #[test]
    fn hedging_at_the_straggler_rate_removes_the_stragglers() {
        let bound = ideal_hedged_latency(&straggling_samples(10_000), options(0.01)).unwrap();
        // The delay is the 99th percentile: 1 ms; a straggler is hedged at
        // 1 ms and the hedge (almost always 1 ms) answers at 2 ms.
        assert_eq!(bound.delays_us[&0], 1_000);
        assert!(bound.hedges_per_call > 0.009 && bound.hedges_per_call < 0.0115);
        let p999 = bound.latency.value_at_quantile(0.999);
        assert!((2_100..=2_300).contains(&p999), "p99.9 {p999} µs");
        // Only a straggler hedged into another straggler stays slow: 1 in 10,000.
        assert!(bound.latency.value_at_quantile(0.5) <= 1_201);
    }

    #[test]
    fn without_hedges_the_ideal_is_the_recorded_run() {
        let samples = straggling_samples(1_000);
        let bound = ideal_hedged_latency(&samples, options(0.0)).unwrap();
        assert_eq!(bound.hedges_per_call, 0.0);
        assert_eq!(bound.latency.len(), 20 * 1_000);
        let recorded_p995 = 10_200;
        let p995 = bound.latency.value_at_quantile(0.995);
        assert!(
            p995.abs_diff(recorded_p995) <= 10,
            "p99.5 {p995} µs, recorded {recorded_p995} µs"
        );
    }

    #[test]
    fn the_survival_of_a_hedged_shard_is_the_product_of_its_attempts() {
        // Attempts uniform over 1..=1000 µs; with the delay at the median and one
        // hedge, P(T > t) = S(t) S(t - d): at t = 750 µs, 0.25 * 0.75 = 0.1875.
        let samples: Vec<QuerySample> = (1..=1_000u64)
            .map(|latency_us| QuerySample {
                latency_us,
                shards: vec![ShardSample {
                    shard_id: 3,
                    latency_us,
                    attempts: 1,
                }],
            })
            .collect();
        let bound = ideal_hedged_latency(
            &samples,
            IdealOptions {
                hedge_rate: 0.5,
                max_hedges: 1,
                resamples: 200,
                seed: 1,
            },
        )
        .unwrap();
        assert_eq!(bound.delays_us[&3], 500);
        let survival_at_750 = 1.0 - bound.latency.quantile_below(750);
        assert!(
            (survival_at_750 - 0.1875).abs() < 0.01,
            "P(T > 750 µs) = {survival_at_750}"
        );
    }

    #[test]
    fn requests_with_hedged_or_retried_shards_are_left_out() {
        let mut samples = straggling_samples(100);
        samples[0].shards[0].attempts = 2;
        let bound = ideal_hedged_latency(&samples, options(0.01)).unwrap();
        assert_eq!(bound.requests_used, 99);
        let hedged_only = &samples[..1];
        assert!(ideal_hedged_latency(hedged_only, options(0.01)).is_err());
        assert!(ideal_hedged_latency(&samples, options(1.0)).is_err());
    }
}
