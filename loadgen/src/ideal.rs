//! The ideal hedged latency: what a perfect hedging policy could achieve on
//! the same cluster at the same extra load, computed from a hedging-off run.
//!
//! With hedging off every shard call is one attempt, so the root's shard
//! timings of that run are samples of the per-attempt latency distribution
//! of each shard, in each phase (the search, then the fetch of the winners'
//! fields). A policy that hedges after a delay `d` on independent replicas
//! turns an attempt's survival `S(t)` into `S(t) S(t-d) S(t-2d)...` (each
//! hedge a fresh draw, started `d` later than the previous one). This module
//! applies that by resampling: for every recorded request, each shard call's
//! recorded latency `x` becomes `min(x, d + x1, 2d + x2, ...)` with `x1, x2`
//! drawn from the same shard's recorded attempts of the same phase, and the
//! request's latency becomes its recorded overhead (its latency minus its
//! slowest search call and its slowest fetch call) plus the slowest hedged
//! search call plus the slowest hedged fetch call.
//!
//! The delay is chosen per shard and phase so that the fraction of attempts
//! hedged equals a given rate (the rate a real hedged run measured): the
//! `1 - rate` quantile of that shard's attempt latency in that phase. Nothing in the
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
    /// Per shard id: the search phase's hedge delay, in microseconds, that
    /// hedges `hedge_rate` of the shard's search calls.
    pub delays_us: BTreeMap<u32, u64>,
    /// The same for the fetch phase.
    pub fetch_delays_us: BTreeMap<u32, u64>,
    /// Resampled request latencies, in microseconds.
    pub latency: Histogram<u64>,
    /// Recorded requests used (those whose every shard call answered at the
    /// first attempt).
    pub requests_used: usize,
    /// Hedges the ideal sent per primary shard call (about `hedge_rate`).
    pub hedges_per_call: f64,
}

/// Hedges the ideal sent, and the primary calls they were sent for.
#[derive(Debug, Default)]
struct HedgeTally {
    hedges: u64,
    primaries: u64,
}

/// Each shard's recorded single attempts of one phase, ascending, and the
/// hedge delay that hedges a given fraction of them.
struct AttemptPools {
    attempts: BTreeMap<u32, Vec<u64>>,
    delays_us: BTreeMap<u32, u64>,
}

impl AttemptPools {
    fn new(samples: impl Iterator<Item = (u32, u64)>, hedge_rate: f64) -> AttemptPools {
        let mut attempts: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        for (shard_id, latency_us) in samples {
            attempts.entry(shard_id).or_default().push(latency_us);
        }
        for pool in attempts.values_mut() {
            pool.sort_unstable();
        }
        let delays_us = attempts
            .iter()
            .map(|(shard_id, pool)| (*shard_id, quantile_of_sorted(pool, 1.0 - hedge_rate)))
            .collect();
        AttemptPools {
            attempts,
            delays_us,
        }
    }

    /// `recorded` hedged as the ideal policy would: up to `max_hedges`
    /// hedges, each `delay` after the previous, each a fresh draw. Returns
    /// the answer time and the hedges sent.
    fn hedged(
        &self,
        shard_id: u32,
        recorded: u64,
        max_hedges: u32,
        random: &mut SeededRandom,
    ) -> (u64, u64) {
        let pool = &self.attempts[&shard_id];
        let delay = self.delays_us[&shard_id];
        let mut answered = recorded;
        let mut hedges = 0;
        for hedge in 1..=u64::from(max_hedges) {
            let sent_at = delay.saturating_mul(hedge);
            if answered <= sent_at {
                break;
            }
            hedges += 1;
            let draw = pool[random.below(pool.len() as u64) as usize];
            answered = answered.min(sent_at.saturating_add(draw));
        }
        (answered, hedges)
    }

    /// The slowest of one request's `calls` (shard id, recorded latency) of
    /// this phase once each is hedged; counts into `tally`.
    fn slowest_hedged(
        &self,
        calls: impl Iterator<Item = (u32, u64)>,
        max_hedges: u32,
        random: &mut SeededRandom,
        tally: &mut HedgeTally,
    ) -> u64 {
        let mut slowest = 0;
        for (shard_id, recorded) in calls {
            let (answered, sent) = self.hedged(shard_id, recorded, max_hedges, random);
            slowest = u64::max(slowest, answered);
            tally.hedges += sent;
            tally.primaries += 1;
        }
        slowest
    }
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
            !sample.shards.is_empty()
                && sample
                    .shards
                    .iter()
                    .all(|shard| shard.attempts == 1 && shard.fetch_attempts <= 1)
        })
        .collect();
    if usable.is_empty() {
        return invalid(
            "no request of the hedging-off run has single-attempt shard timings".to_string(),
        );
    }
    let shards = || usable.iter().flat_map(|sample| &sample.shards);
    let search = AttemptPools::new(
        shards().map(|shard| (shard.shard_id, shard.latency_us)),
        options.hedge_rate,
    );
    let fetch = AttemptPools::new(
        shards()
            .filter(|shard| shard.fetch_attempts == 1)
            .map(|shard| (shard.shard_id, shard.fetch_latency_us)),
        options.hedge_rate,
    );

    let mut latency =
        Histogram::new_with_bounds(1, MAX_RECORDED_MICROS, 3).expect("constant histogram bounds");
    let mut random = SeededRandom::new(options.seed);
    let mut hedges = 0u64;
    let mut primaries = 0u64;
    for _ in 0..options.resamples {
        for sample in &usable {
            let fetched = || {
                sample
                    .shards
                    .iter()
                    .filter(|shard| shard.fetch_attempts == 1)
            };
            let slowest_search = sample.shards.iter().map(|shard| shard.latency_us).max();
            let slowest_fetch = fetched().map(|shard| shard.fetch_latency_us).max();
            let overhead = sample
                .latency_us
                .saturating_sub(slowest_search.unwrap_or(0))
                .saturating_sub(slowest_fetch.unwrap_or(0));
            let mut tally = HedgeTally::default();
            let searches = sample
                .shards
                .iter()
                .map(|shard| (shard.shard_id, shard.latency_us));
            let hedged_search =
                search.slowest_hedged(searches, options.max_hedges, &mut random, &mut tally);
            let fetches = fetched().map(|shard| (shard.shard_id, shard.fetch_latency_us));
            let hedged_fetch =
                fetch.slowest_hedged(fetches, options.max_hedges, &mut random, &mut tally);
            hedges += tally.hedges;
            primaries += tally.primaries;
            let total = overhead
                .saturating_add(hedged_search)
                .saturating_add(hedged_fetch);
            latency.saturating_record(total.max(1));
        }
    }
    Ok(IdealBound {
        delays_us: search.delays_us,
        fetch_delays_us: fetch.delays_us,
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
                        fetch_latency_us: 0,
                        fetch_attempts: 0,
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
                    fetch_latency_us: 0,
                    fetch_attempts: 0,
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
    fn the_fetch_phase_is_hedged_too() {
        // Two shards; searches take 1 ms; every 50th fetch of shard 1 takes
        // 20 ms, fetches otherwise 500 µs; the root adds 100 µs.
        let samples: Vec<QuerySample> = (0..5_000u64)
            .map(|index| {
                let fetch = if index % 50 == 49 { 20_000 } else { 500 };
                let shard = |shard_id, fetch_latency_us| ShardSample {
                    shard_id,
                    latency_us: 1_000,
                    attempts: 1,
                    fetch_latency_us,
                    fetch_attempts: 1,
                };
                QuerySample {
                    latency_us: 1_000 + fetch + 100,
                    shards: vec![shard(0, 500), shard(1, fetch)],
                }
            })
            .collect();
        let bound = ideal_hedged_latency(&samples, options(0.02)).unwrap();
        assert_eq!(bound.fetch_delays_us[&1], 500);
        // A slow fetch is hedged at 500 µs and answered at 1 ms: 1 + 1 + 0.1 ms.
        let p999 = bound.latency.value_at_quantile(0.999);
        assert!((2_050..=2_150).contains(&p999), "p99.9 {p999} µs");
        assert!(bound.hedges_per_call > 0.004 && bound.hedges_per_call < 0.006);
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
