//! Overload scenarios: does goodput hold past the knee, and does latency
//! come back when the load drops?
//!
//! 1. **The knee.** The baseline variant runs the `load.rate` sweep; the
//!    knee is the highest rate whose p99 stays under `overload.knee_p99`
//!    with errors under `overload.knee_max_errors` (the sweep stops at the
//!    first rate that fails).
//! 2. **The overload.** Every variant, round after round, runs one run in
//!    three phases of `overload.phase` each: the knee rate, twice the knee,
//!    and half the knee. Every request's send time, latency and status are
//!    kept.
//! 3. **The figures**, per variant and round: each phase's offered rate,
//!    goodput (OK answers a second), status mix and the p50/p99 of the OK
//!    answers; the ratios the targets are about (goodput at 2x over goodput
//!    at the knee, p99 at 2x over p99 at the knee); and the recovery time:
//!    after the drop to half the knee, the start of the first 250 ms window
//!    from which on every window's p99 is at most twice the p99 of the last
//!    half of that phase (its settled latency).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tonic::Code;

use super::spec::{OverloadSpec, Scenario};
use super::{RunningCluster, connect};
use crate::queries::QuerySet;
use crate::runner::{RunOptions, StopCondition, TimelineSample, run_load_detailed};
use crate::schedule::{RatePhase, Schedule};

/// The windows the recovery is read in.
pub const RECOVERY_WINDOW: Duration = Duration::from_millis(250);
/// The warmup before the first phase, at the knee rate.
const WARMUP: Duration = Duration::from_secs(2);

/// What the knee sweep measured at one rate.
#[derive(Debug, Clone, Serialize)]
pub struct KneeStep {
    pub rate: f64,
    pub p99_ms: f64,
    pub error_ratio: f64,
    pub within: bool,
}

/// One phase of one overload run.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseFigures {
    pub name: String,
    pub offered_rate: f64,
    pub requests: u64,
    /// OK answers a second.
    pub goodput: f64,
    pub p50_ok_ms: f64,
    pub p99_ok_ms: f64,
    /// Status code name to share of the phase's requests.
    pub status_mix: BTreeMap<String, f64>,
}

/// One variant's overload run in one round.
#[derive(Debug, Clone, Serialize)]
pub struct OverloadRun {
    pub variant: String,
    pub round: u32,
    pub phases: Vec<PhaseFigures>,
    /// Goodput at twice the knee over goodput at the knee.
    pub goodput_ratio: f64,
    /// p99 of the OK answers at twice the knee over that at the knee.
    pub p99_ratio: f64,
    /// From the drop to half the knee until latency stayed settled; `None`
    /// if it never did within the phase.
    pub recovery_s: Option<f64>,
}

/// The targets of an overload scenario.
pub const GOODPUT_RATIO_TARGET: f64 = 0.9;
pub const P99_RATIO_TARGET: f64 = 2.0;
pub const RECOVERY_TARGET_S: f64 = 2.0;

/// Everything an overload scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct OverloadReport {
    pub name: String,
    pub description: String,
    pub knee_variant: String,
    pub knee_p99_target_ms: f64,
    pub knee_steps: Vec<KneeStep>,
    pub knee_rate: f64,
    pub phase_s: f64,
    pub runs: Vec<OverloadRun>,
}

/// Runs steps 1 and 2 of the module docs on running clusters.
pub(super) async fn run_overload(
    scenario: &Scenario,
    spec: &OverloadSpec,
    rounds: u32,
    runs_dir: &Path,
    clusters: &[RunningCluster],
    variant_cluster: &[usize],
    queries: &[QuerySet],
) -> anyhow::Result<OverloadReport> {
    let baseline = scenario
        .variants
        .iter()
        .position(|variant| variant.name == scenario.baseline)
        .unwrap_or(0);
    let mut targets = Vec::with_capacity(scenario.variants.len());
    for (index, variant) in scenario.variants.iter().enumerate() {
        let cluster = &clusters[variant_cluster[index]];
        let tls = cluster.tls.as_ref().map(super::ClusterTls::target);
        targets.push(connect(variant, cluster.target_addr(variant)?, tls).await?);
    }

    let knee_variant = &scenario.variants[baseline];
    let mut knee_steps = Vec::new();
    for &rate in &knee_variant.load.rates {
        let stem = format!("knee-{}-{rate}", knee_variant.name);
        let schedule = Schedule::new(rate, knee_variant.load.arrivals, knee_variant.load.seed)?;
        let mut options = RunOptions::new(StopCondition::Duration(knee_variant.load.duration));
        options.label = Some(stem.clone());
        options.warmup = knee_variant.load.warmup;
        options.timeout = knee_variant.load.timeout;
        let outcome = run_load_detailed(
            &targets[baseline],
            &schedule,
            &queries[baseline],
            &options,
            std::future::pending(),
        )
        .await?;
        outcome
            .report
            .write_json(&runs_dir.join(format!("{stem}.json")))?;
        let report = &outcome.report;
        let p99_ms = report.latency.p99_us as f64 / 1e3;
        let error_ratio = report.errors as f64 / report.count.max(1) as f64;
        let within =
            p99_ms <= spec.knee_p99.as_secs_f64() * 1e3 && error_ratio <= spec.knee_max_errors;
        eprintln!(
            "scenario: knee search {rate} req/s: p99 {p99_ms:.1} ms, errors {:.2}%{}",
            error_ratio * 100.0,
            if within { "" } else { " (past the knee)" }
        );
        knee_steps.push(KneeStep {
            rate,
            p99_ms,
            error_ratio,
            within,
        });
        if !within {
            break;
        }
    }
    let Some(knee_rate) = knee_steps
        .iter()
        .filter(|step| step.within)
        .map(|step| step.rate)
        .next_back()
    else {
        anyhow::bail!(
            "no rate of the sweep kept p99 under {:?}: the knee is below {}",
            spec.knee_p99,
            knee_variant.load.rates[0]
        );
    };
    eprintln!("scenario: the knee is {knee_rate} req/s");

    let phase_names = ["knee", "2x knee", "knee/2"];
    let rates = [knee_rate, 2.0 * knee_rate, knee_rate / 2.0];
    let mut runs = Vec::new();
    for round in 0..rounds {
        for (index, variant) in scenario.variants.iter().enumerate() {
            let stem = format!("{}-r{}", variant.name, round + 1);
            let phases: Vec<RatePhase> = rates
                .iter()
                .enumerate()
                .map(|(phase, rate)| RatePhase {
                    rate_per_second: *rate,
                    // The warmup runs at the knee rate, before the first phase.
                    duration: if phase == 0 {
                        WARMUP + spec.phase
                    } else {
                        spec.phase
                    },
                })
                .collect();
            let schedule = Schedule::phased(
                phases,
                variant.load.arrivals,
                variant.load.seed.wrapping_add(u64::from(round)),
            )?;
            let mut options = RunOptions::new(StopCondition::Duration(spec.phase * 3));
            options.label = Some(stem.clone());
            options.warmup = WARMUP;
            options.timeout = variant.load.timeout;
            options.keep_timeline = true;
            options.hdr_log = Some(runs_dir.join(format!("{stem}.hlog")));
            // Room for every request of the overload to be in flight.
            options.max_in_flight = options
                .max_in_flight
                .max((2.0 * knee_rate * variant.load.timeout.as_secs_f64()).ceil() as usize * 2);
            let outcome = run_load_detailed(
                &targets[index],
                &schedule,
                &queries[index],
                &options,
                std::future::pending(),
            )
            .await?;
            outcome
                .report
                .write_json(&runs_dir.join(format!("{stem}.json")))?;
            let run = analyse(
                &variant.name,
                round,
                &outcome.timeline,
                &phase_names,
                &rates,
                spec.phase,
            );
            eprintln!(
                "scenario: round {}/{rounds} {:<12} goodput {:.0} -> {:.0} OK/s ({:.2}x), p99 {:.1} -> {:.1} ms ({:.2}x), recovery {}",
                round + 1,
                variant.name,
                run.phases[0].goodput,
                run.phases[1].goodput,
                run.goodput_ratio,
                run.phases[0].p99_ok_ms,
                run.phases[1].p99_ok_ms,
                run.p99_ratio,
                run.recovery_s
                    .map_or("none".to_owned(), |seconds| format!("{seconds:.2} s")),
            );
            runs.push(run);
        }
    }
    Ok(OverloadReport {
        name: scenario.name.clone(),
        description: scenario.description.clone(),
        knee_variant: knee_variant.name.clone(),
        knee_p99_target_ms: spec.knee_p99.as_secs_f64() * 1e3,
        knee_steps,
        knee_rate,
        phase_s: spec.phase.as_secs_f64(),
        runs,
    })
}

fn ok_histogram<'a>(samples: impl Iterator<Item = &'a TimelineSample>) -> Histogram<u64> {
    // Constant bounds that satisfy the crate's requirements.
    let mut histogram = Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds");
    for sample in samples.filter(|sample| sample.code == Code::Ok) {
        histogram.saturating_record(sample.latency_us.max(1));
    }
    histogram
}

fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    if histogram.is_empty() {
        return 0.0;
    }
    histogram.value_at_quantile(quantile) as f64 / 1e3
}

/// Step 3 of the module docs, for one run's timeline.
pub fn analyse(
    variant: &str,
    round: u32,
    timeline: &[TimelineSample],
    names: &[&str; 3],
    rates: &[f64; 3],
    phase: Duration,
) -> OverloadRun {
    let in_range = |from: Duration, to: Duration| {
        timeline
            .iter()
            .filter(move |sample| sample.intended_at >= from && sample.intended_at < to)
    };
    let phases: Vec<PhaseFigures> = (0..3)
        .map(|index| {
            let from = phase * index as u32;
            let samples: Vec<&TimelineSample> = in_range(from, from + phase).collect();
            let ok = ok_histogram(samples.iter().copied());
            let mut status_mix: BTreeMap<String, f64> = BTreeMap::new();
            for sample in &samples {
                *status_mix
                    .entry(fanout_proto::status::code_name(sample.code).to_owned())
                    .or_default() += 1.0;
            }
            let requests = samples.len() as u64;
            for share in status_mix.values_mut() {
                *share /= requests.max(1) as f64;
            }
            PhaseFigures {
                name: names[index].to_owned(),
                offered_rate: rates[index],
                requests,
                goodput: ok.len() as f64 / phase.as_secs_f64(),
                p50_ok_ms: ms(&ok, 0.5),
                p99_ok_ms: ms(&ok, 0.99),
                status_mix,
            }
        })
        .collect();
    let ratio = |over: f64, under: f64| {
        if under > 0.0 {
            over / under
        } else {
            f64::INFINITY
        }
    };
    let goodput_ratio = ratio(phases[1].goodput, phases[0].goodput);
    let p99_ratio = ratio(phases[1].p99_ok_ms, phases[0].p99_ok_ms);

    // Recovery: windows of the last phase against its settled second half.
    let drop_at = phase * 2;
    let settled = ok_histogram(in_range(drop_at + phase / 2, drop_at + phase));
    let settled_p99 = ms(&settled, 0.99);
    let windows = (phase.as_millis() / RECOVERY_WINDOW.as_millis()) as u32;
    let window_p99: Vec<Option<f64>> = (0..windows)
        .map(|window| {
            let from = drop_at + RECOVERY_WINDOW * window;
            let histogram = ok_histogram(in_range(from, from + RECOVERY_WINDOW));
            (!histogram.is_empty()).then(|| ms(&histogram, 0.99))
        })
        .collect();
    let settled_from = (0..windows as usize).find(|&start| {
        window_p99[start..]
            .iter()
            .all(|p99| p99.is_some_and(|p99| p99 <= 2.0 * settled_p99))
    });
    let recovery_s = settled_from.map(|window| (RECOVERY_WINDOW * window as u32).as_secs_f64());
    OverloadRun {
        variant: variant.to_owned(),
        round,
        phases,
        goodput_ratio,
        p99_ratio,
        recovery_s,
    }
}

impl OverloadReport {
    pub fn to_json_pretty(&self) -> String {
        // Plain numbers, strings and maps: serialisation cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# {}\n", self.name);
        if !self.description.trim().is_empty() {
            let _ = writeln!(out, "{}\n", self.description.trim());
        }
        let _ = writeln!(
            out,
            "## The knee ({}, p99 under {:.0} ms)\n",
            self.knee_variant, self.knee_p99_target_ms
        );
        let _ = writeln!(out, "| rate (req/s) | p99 (ms) | errors | within |");
        let _ = writeln!(out, "|---:|---:|---:|:---|");
        for step in &self.knee_steps {
            let _ = writeln!(
                out,
                "| {} | {:.1} | {:.2}% | {} |",
                step.rate,
                step.p99_ms,
                step.error_ratio * 100.0,
                if step.within { "yes" } else { "no" }
            );
        }
        let _ = writeln!(
            out,
            "\nThe knee: **{} req/s**. Each run: {} s at the knee, {} s at twice it, {} s at half of it.\n",
            self.knee_rate, self.phase_s, self.phase_s, self.phase_s
        );
        let _ = writeln!(out, "## Phases\n");
        let _ = writeln!(
            out,
            "| variant | round | phase | offered (req/s) | goodput (OK/s) | p50 OK (ms) | p99 OK (ms) | status mix |"
        );
        let _ = writeln!(out, "|---|---:|---|---:|---:|---:|---:|---|");
        for run in &self.runs {
            for phase in &run.phases {
                let mix: Vec<String> = phase
                    .status_mix
                    .iter()
                    .map(|(code, share)| format!("{code} {:.1}%", share * 100.0))
                    .collect();
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {} |",
                    run.variant,
                    run.round + 1,
                    phase.name,
                    phase.offered_rate,
                    phase.goodput,
                    phase.p50_ok_ms,
                    phase.p99_ok_ms,
                    mix.join(", ")
                );
            }
        }
        let _ = writeln!(out, "\n## Targets\n");
        let _ = writeln!(
            out,
            "Goodput at 2x the knee >= {GOODPUT_RATIO_TARGET} of the knee's; p99 of admitted (OK) requests at 2x <= {P99_RATIO_TARGET}x the knee's; back to settled latency within {RECOVERY_TARGET_S} s of the drop.\n"
        );
        let _ = writeln!(
            out,
            "| variant | round | goodput 2x / knee | p99 2x / knee | recovery (s) | targets |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|:---|");
        for run in &self.runs {
            let met = run.goodput_ratio >= GOODPUT_RATIO_TARGET
                && run.p99_ratio <= P99_RATIO_TARGET
                && run
                    .recovery_s
                    .is_some_and(|seconds| seconds <= RECOVERY_TARGET_S);
            let _ = writeln!(
                out,
                "| {} | {} | {:.2} | {:.2} | {} | {} |",
                run.variant,
                run.round + 1,
                run.goodput_ratio,
                run.p99_ratio,
                run.recovery_s
                    .map_or("never".to_owned(), |seconds| format!("{seconds:.2}")),
                if met { "met" } else { "not met" }
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, latency_ms: u64, code: Code) -> TimelineSample {
        TimelineSample {
            intended_at: Duration::from_millis(at_ms),
            latency_us: latency_ms * 1000,
            code,
        }
    }

    #[test]
    fn figures_come_from_the_timeline_by_phase() {
        let phase = Duration::from_secs(2);
        let mut timeline = Vec::new();
        // Knee: 100 OK in 2 s at 10 ms.
        for n in 0..100 {
            timeline.push(sample(n * 20, 10, Code::Ok));
        }
        // Twice the knee: 100 OK at 15 ms, 100 refused.
        for n in 0..200 {
            let code = if n % 2 == 0 {
                Code::Ok
            } else {
                Code::ResourceExhausted
            };
            timeline.push(sample(2000 + n * 10, 15, code));
        }
        // Half: slow for the first 500 ms, then 10 ms.
        for n in 0..50 {
            let at = 4000 + n * 40;
            let latency = if at < 4500 { 200 } else { 10 };
            timeline.push(sample(at, latency, Code::Ok));
        }
        let run = analyse(
            "v",
            0,
            &timeline,
            &["knee", "2x knee", "knee/2"],
            &[50.0, 100.0, 25.0],
            phase,
        );
        assert_eq!(run.phases[0].goodput, 50.0);
        assert_eq!(run.phases[1].goodput, 50.0);
        assert_eq!(run.phases[1].requests, 200);
        assert_eq!(run.phases[1].status_mix["RESOURCE_EXHAUSTED"], 0.5);
        assert!((run.goodput_ratio - 1.0).abs() < 1e-9);
        assert!((run.p99_ratio - 1.5).abs() < 0.01, "{}", run.p99_ratio);
        assert_eq!(run.recovery_s, Some(0.5));
    }
}
