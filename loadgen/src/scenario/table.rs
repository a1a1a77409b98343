//! A scenario's results: every variant's rounds merged into one
//! distribution, its ratios to the baseline, the highest sustainable rate of a
//! sweep and the ideal hedging bounds, as a Markdown table and as JSON.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::ideal::{IdealOptions, ideal_hedged_latency};
use crate::plot::PlotCurve;
use crate::report::{LatencyReport, percentile_points};
use crate::runner::{QuerySample, RunOutcome};
use crate::scenario::spec::Scenario;

/// Resamples of the hedging-off run behind an ideal bound.
const IDEAL_RESAMPLES: u32 = 20;
/// Status codes that blame the request, not the server.
const REQUEST_ERRORS: [&str; 7] = [
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "FAILED_PRECONDITION",
    "OUT_OF_RANGE",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
];
/// Server error rate above which a rate does not count as sustainable.
const SUSTAINABLE_ERROR_RATE: f64 = 0.001;
/// The generator keeps its schedule when its launch lag p99 stays under the
/// p99 target divided by this.
const SUSTAINABLE_LAG_DIVISOR: u64 = 10;
/// Achieved over offered rate below which a rate does not count as sustainable.
const SUSTAINABLE_ACHIEVED_FRACTION: f64 = 0.95;

/// One measured run of one variant.
pub struct RunResult {
    /// Index into the scenario's variants.
    pub variant: usize,
    pub rate: f64,
    pub round: u32,
    pub outcome: RunOutcome,
}

/// A variant at one rate, its rounds merged.
#[derive(Debug, Clone, Serialize)]
pub struct VariantRow {
    pub variant: String,
    pub rate: f64,
    pub rounds: u32,
    pub requests: u64,
    pub errors: u64,
    /// Errors the server is answerable for: every status but OK and those
    /// that blame the request (INVALID_ARGUMENT, NOT_FOUND, ...; a real query
    /// log holds queries with no searchable term).
    pub server_errors: u64,
    /// Status code name to count, over the rounds.
    pub status_codes: BTreeMap<String, u64>,
    /// Mean over the rounds of the achieved request rate.
    pub achieved_rps: f64,
    pub latency: LatencyReport,
    /// Each round's p99, to show the spread behind the merged figure.
    pub p99_per_round_us: Vec<u64>,
    /// Primary leaf calls (one per shard per successful request).
    pub shard_calls: u64,
    /// Every leaf call of the first phase: primaries, hedges and retries.
    pub attempts: u64,
    /// Leaf calls beyond one per shard (hedges and retries), per primary call.
    pub extra_calls: f64,
    pub hedges: u64,
    pub retries: u64,
    /// Some round's generator fell behind its schedule (by its own threshold).
    pub generator_behind: bool,
    /// The worst round's launch lag p99: how late the generator sent.
    pub launch_lag_p99_us: u64,
    /// Launches that waited for the in-flight cap, over the rounds.
    pub in_flight_cap_waits: u64,
    /// This row over the baseline row at the same rate (1.0 = equal).
    pub vs_baseline: Option<Ratios>,
    #[serde(skip)]
    histogram: Histogram<u64>,
    #[serde(skip)]
    samples: Vec<QuerySample>,
}

/// Latency ratios of two rows (this one over the other).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Ratios {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

impl Ratios {
    fn of(this: &LatencyReport, other: &LatencyReport) -> Ratios {
        let ratio = |a: u64, b: u64| {
            if b == 0 {
                f64::NAN
            } else {
                a as f64 / b as f64
            }
        };
        Ratios {
            p50: ratio(this.p50_us, other.p50_us),
            p90: ratio(this.p90_us, other.p90_us),
            p99: ratio(this.p99_us, other.p99_us),
            p99_9: ratio(this.p99_9_us, other.p99_9_us),
            max: ratio(this.slowest_us, other.slowest_us),
        }
    }
}

/// The highest rate a variant sustained within the p99 target.
#[derive(Debug, Clone, Serialize)]
pub struct Sustainable {
    pub variant: String,
    pub p99_target_us: u64,
    /// `None` when even the lowest rate missed the target.
    pub highest_rate: Option<f64>,
    /// The p99 at that rate.
    pub p99_us: Option<u64>,
}

/// A hedged variant against the ideal computed from a hedging-off variant.
#[derive(Debug, Clone, Serialize)]
pub struct IdealRow {
    pub variant: String,
    pub from: String,
    pub rate: f64,
    /// Extra calls per primary call the hedged variant made: the ideal's hedge rate.
    pub hedge_rate: f64,
    /// The ideal's hedge delay, median over shards.
    pub delay_us: u64,
    pub requests_resampled: usize,
    pub ideal: LatencyReport,
    pub measured: LatencyReport,
    /// Measured over ideal (1.0 = as good as ideal).
    pub measured_over_ideal: Ratios,
    #[serde(skip)]
    histogram: Histogram<u64>,
}

/// Everything a scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub scenario: String,
    pub description: String,
    pub baseline: String,
    pub rows: Vec<VariantRow>,
    pub sustainable: Vec<Sustainable>,
    pub ideals: Vec<IdealRow>,
}

impl Comparison {
    /// Merges the rounds of every (variant, rate) and computes the ratios.
    pub fn build(scenario: &Scenario, results: Vec<RunResult>) -> anyhow::Result<Comparison> {
        let mut rows: Vec<VariantRow> = Vec::new();
        for result in results {
            let name = &scenario.variants[result.variant].name;
            let report = &result.outcome.report;
            let row = match rows
                .iter_mut()
                .find(|row| row.variant == *name && row.rate == result.rate)
            {
                Some(row) => row,
                None => {
                    rows.push(VariantRow {
                        variant: name.clone(),
                        rate: result.rate,
                        rounds: 0,
                        requests: 0,
                        errors: 0,
                        server_errors: 0,
                        status_codes: BTreeMap::new(),
                        achieved_rps: 0.0,
                        latency: LatencyReport::from_histogram(&result.outcome.latency),
                        p99_per_round_us: Vec::new(),
                        shard_calls: 0,
                        attempts: 0,
                        extra_calls: 0.0,
                        hedges: 0,
                        retries: 0,
                        generator_behind: false,
                        launch_lag_p99_us: 0,
                        in_flight_cap_waits: 0,
                        vs_baseline: None,
                        histogram: Histogram::new_from(&result.outcome.latency),
                        samples: Vec::new(),
                    });
                    rows.last_mut().expect("just pushed")
                }
            };
            row.rounds += 1;
            row.requests += report.count;
            row.errors += report.errors;
            for (code, count) in &report.status_codes {
                *row.status_codes.entry(code.clone()).or_insert(0) += count;
                if code != "OK" && !REQUEST_ERRORS.contains(&code.as_str()) {
                    row.server_errors += count;
                }
            }
            row.achieved_rps += report.achieved_rps;
            row.p99_per_round_us.push(report.latency.p99_us);
            row.hedges += report.coverage.hedges;
            row.retries += report.coverage.retries;
            row.shard_calls += report.coverage.shard_calls;
            row.attempts += report.coverage.attempts;
            row.generator_behind |= report.generator.behind_schedule;
            row.launch_lag_p99_us = row
                .launch_lag_p99_us
                .max(report.generator.launch_lag_p99_us);
            row.in_flight_cap_waits += report.generator.in_flight_cap_waits;
            row.histogram.add(&result.outcome.latency)?;
            row.samples.extend(result.outcome.samples);
        }
        // The sums of the rounds become figures.
        for row in &mut rows {
            row.extra_calls = if row.shard_calls == 0 {
                0.0
            } else {
                row.attempts as f64 / row.shard_calls as f64 - 1.0
            };
            row.achieved_rps /= f64::from(row.rounds.max(1));
            row.latency = LatencyReport::from_histogram(&row.histogram);
        }
        let baseline_latency = |rate: f64, rows: &[VariantRow]| {
            rows.iter()
                .find(|row| row.variant == scenario.baseline && row.rate == rate)
                .map(|row| row.latency.clone())
        };
        let baselines: Vec<Option<LatencyReport>> = rows
            .iter()
            .map(|row| baseline_latency(row.rate, &rows))
            .collect();
        for (row, baseline) in rows.iter_mut().zip(baselines) {
            row.vs_baseline = baseline.map(|baseline| Ratios::of(&row.latency, &baseline));
        }

        let sustainable = match scenario.p99_target {
            Some(target) => sustainable_rates(scenario, &rows, target.as_micros() as u64),
            None => Vec::new(),
        };
        let mut ideals = Vec::new();
        for spec in &scenario.ideals {
            let replicas = scenario
                .variants
                .iter()
                .find(|variant| variant.name == spec.variant)
                .map_or(1, |variant| variant.cluster.leaves.replicas);
            for measured in rows.iter().filter(|row| row.variant == spec.variant) {
                let Some(from) = rows
                    .iter()
                    .find(|row| row.variant == spec.from && row.rate == measured.rate)
                else {
                    continue;
                };
                let bound = ideal_hedged_latency(
                    &from.samples,
                    IdealOptions {
                        hedge_rate: measured.extra_calls.clamp(0.0, 0.99),
                        max_hedges: replicas.saturating_sub(1),
                        resamples: IDEAL_RESAMPLES,
                        seed: 1,
                    },
                )?;
                let mut delays: Vec<u64> = bound.delays_us.values().copied().collect();
                delays.sort_unstable();
                let ideal = LatencyReport::from_histogram(&bound.latency);
                ideals.push(IdealRow {
                    variant: spec.variant.clone(),
                    from: spec.from.clone(),
                    rate: measured.rate,
                    hedge_rate: measured.extra_calls,
                    delay_us: delays.get(delays.len() / 2).copied().unwrap_or(0),
                    requests_resampled: bound.requests_used,
                    measured_over_ideal: Ratios::of(&measured.latency, &ideal),
                    measured: measured.latency.clone(),
                    ideal,
                    histogram: bound.latency,
                });
            }
        }
        Ok(Comparison {
            scenario: scenario.name.clone(),
            description: scenario.description.clone(),
            baseline: scenario.baseline.clone(),
            rows,
            sustainable,
            ideals,
        })
    }

    /// The plot's curves: every row, then every ideal.
    pub fn curves(&self) -> Vec<PlotCurve> {
        let several_rates = self.rows.iter().any(|row| row.rate != self.rows[0].rate);
        let curve = |label: String, histogram: &Histogram<u64>| PlotCurve {
            label,
            points: percentile_points(histogram),
            p99_us: quantile(histogram, 0.99),
            slowest_us: histogram.max(),
            count: histogram.len(),
        };
        let rows = self.rows.iter().map(|row| {
            let label = if several_rates {
                format!("{} @ {} req/s", row.variant, row.rate)
            } else {
                row.variant.clone()
            };
            curve(label, &row.histogram)
        });
        let ideals = self.ideals.iter().map(|ideal| {
            curve(
                format!("ideal for {} (from {})", ideal.variant, ideal.from),
                &ideal.histogram,
            )
        });
        rows.chain(ideals).collect()
    }

    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).expect("the comparison serializes")
    }

    /// The comparison as Markdown: what a benchmark document quotes.
    pub fn to_markdown(&self) -> String {
        let mut out = format!("## {}\n\n", self.scenario);
        if !self.description.trim().is_empty() {
            out.push_str(self.description.trim());
            out.push_str("\n\n");
        }
        out.push_str(&format!(
            "Latency from the intended send time, rounds merged; ratios are this variant over `{}` at the same rate (below 1 = faster).\n\n",
            self.baseline
        ));
        out.push_str("| variant | rate (req/s) | requests | errors | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | p99 per round ms | extra calls | p50 ratio | p99 ratio | p99.9 ratio | launch lag p99 ms |\n");
        out.push_str(
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|\n",
        );
        for row in &self.rows {
            let ratio = |pick: fn(&Ratios) -> f64| {
                row.vs_baseline
                    .as_ref()
                    .map_or("".to_string(), |ratios| format!("{:.2}x", pick(ratios)))
            };
            let per_round: Vec<String> = row
                .p99_per_round_us
                .iter()
                .map(|p99| format!("{:.2}", *p99 as f64 / 1e3))
                .collect();
            out.push_str(&format!(
                "| {}{} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.2}% | {} | {} | {} | {:.2} |\n",
                row.variant,
                if row.in_flight_cap_waits > 0 { " (in-flight cap hit)" } else { "" },
                row.rate,
                row.requests,
                row.errors,
                row.latency.p50_us as f64 / 1e3,
                row.latency.p90_us as f64 / 1e3,
                row.latency.p99_us as f64 / 1e3,
                row.latency.p99_9_us as f64 / 1e3,
                row.latency.slowest_us as f64 / 1e3,
                per_round.join(" / "),
                row.extra_calls * 100.0,
                ratio(|ratios| ratios.p50),
                ratio(|ratios| ratios.p99),
                ratio(|ratios| ratios.p99_9),
                row.launch_lag_p99_us as f64 / 1e3,
            ));
        }
        if !self.sustainable.is_empty() {
            out.push_str("\nHighest sustainable rate: p99 within the target, server errors under 0.1% (not counting errors that blame the request, such as INVALID_ARGUMENT for a query without a searchable term), at least 95% of the offered rate achieved, the generator on schedule (launch lag p99 under a tenth of the target, the in-flight cap never hit).\n\n");
            out.push_str("| variant | p99 target ms | highest rate (req/s) | p99 there ms |\n|---|---:|---:|---:|\n");
            for sustainable in &self.sustainable {
                out.push_str(&format!(
                    "| {} | {:.1} | {} | {} |\n",
                    sustainable.variant,
                    sustainable.p99_target_us as f64 / 1e3,
                    sustainable
                        .highest_rate
                        .map_or("none".to_string(), |rate| rate.to_string()),
                    sustainable
                        .p99_us
                        .map_or("".to_string(), |p99| format!("{:.2}", p99 as f64 / 1e3)),
                ));
            }
        }
        if !self.ideals.is_empty() {
            out.push_str("\nIdeal hedging bound: the hedging-off run's per-attempt shard latencies resampled with hedges at the measured hedge rate (`S(t) S(t-d) ...`, no cost for the hedges); measured over ideal, 1 = as good as possible.\n\n");
            out.push_str("| variant | from | rate (req/s) | hedge rate | ideal delay ms | ideal p50 ms | ideal p99 ms | ideal p99.9 ms | measured p99 ms | measured/ideal p50 | measured/ideal p99 | measured/ideal p99.9 |\n");
            out.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
            for ideal in &self.ideals {
                out.push_str(&format!(
                    "| {} | {} | {} | {:.2}% | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2}x | {:.2}x | {:.2}x |\n",
                    ideal.variant,
                    ideal.from,
                    ideal.rate,
                    ideal.hedge_rate * 100.0,
                    ideal.delay_us as f64 / 1e3,
                    ideal.ideal.p50_us as f64 / 1e3,
                    ideal.ideal.p99_us as f64 / 1e3,
                    ideal.ideal.p99_9_us as f64 / 1e3,
                    ideal.measured.p99_us as f64 / 1e3,
                    ideal.measured_over_ideal.p50,
                    ideal.measured_over_ideal.p99,
                    ideal.measured_over_ideal.p99_9,
                ));
            }
        }
        out
    }
}

fn quantile(histogram: &Histogram<u64>, quantile: f64) -> u64 {
    if histogram.is_empty() {
        0
    } else {
        histogram.value_at_quantile(quantile)
    }
}

/// Per variant with several rates: the highest rate that met the target
/// (and every lower rate did too).
fn sustainable_rates(scenario: &Scenario, rows: &[VariantRow], target_us: u64) -> Vec<Sustainable> {
    let mut found = Vec::new();
    for variant in &scenario.variants {
        let mut variant_rows: Vec<&VariantRow> = rows
            .iter()
            .filter(|row| row.variant == variant.name)
            .collect();
        if variant_rows.len() < 2 {
            continue;
        }
        variant_rows.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        let mut best: Option<&VariantRow> = None;
        for row in variant_rows {
            if !sustains(row, target_us) {
                break;
            }
            best = Some(row);
        }
        found.push(Sustainable {
            variant: variant.name.clone(),
            p99_target_us: target_us,
            highest_rate: best.map(|row| row.rate),
            p99_us: best.map(|row| row.latency.p99_us),
        });
    }
    found
}

fn sustains(row: &VariantRow, target_us: u64) -> bool {
    let error_rate = row.server_errors as f64 / row.requests.max(1) as f64;
    row.requests > 0
        && row.latency.p99_us <= target_us
        && error_rate < SUSTAINABLE_ERROR_RATE
        && row.achieved_rps >= SUSTAINABLE_ACHIEVED_FRACTION * row.rate
        && row.launch_lag_p99_us <= target_us / SUSTAINABLE_LAG_DIVISOR
        && row.in_flight_cap_waits == 0
}
