//! Reading `--fault` specs into a [`FaultPlan`] (the specs are listed in the
//! module docs of [`crate::fault`]).

use std::time::Duration;

use fanout_runtime::duration::parse_duration;
use tokio::time::Instant;

use super::decide::{EpisodeSchedule, EpisodeTimeline};
use super::{FaultPlan, LatencyBody};

impl FaultPlan {
    /// Parses `--fault` specs (see the module docs); no specs, no faults.
    pub fn parse(specs: &[String]) -> Result<FaultPlan, String> {
        let mut plan = FaultPlan {
            straggler_multiplier: 1.0,
            ..FaultPlan::default()
        };
        let mut episodes = None;
        for spec in specs {
            let (name, value) = spec.split_once('=').unwrap_or((spec.as_str(), ""));
            let bad = |reason: &str| format!("bad --fault {spec:?}: {reason}");
            match name {
                "seed" => plan.seed = value.parse().map_err(|_| bad("expected an integer"))?,
                "latency" => {
                    plan.latency = Some(match value.split_once("..") {
                        Some((low, high)) => {
                            let (low, high) = match (parse_duration(low), parse_duration(high)) {
                                (Ok(low), Ok(high)) => (low, high),
                                (Err(reason), _) | (_, Err(reason)) => {
                                    return Err(bad(&format!("expected D or D1..D2: {reason}")));
                                }
                            };
                            if high < low {
                                return Err(bad("the range is reversed"));
                            }
                            LatencyBody::Uniform { low, high }
                        }
                        None => LatencyBody::Fixed(parse_duration(value).map_err(|e| bad(&e))?),
                    })
                }
                "straggler" => {
                    let (probability, multiplier) =
                        value.split_once('x').ok_or_else(|| bad("expected PxK"))?;
                    plan.straggler_probability =
                        parse_probability(probability).ok_or_else(|| bad("expected P in 0..=1"))?;
                    plan.straggler_multiplier = multiplier
                        .parse::<f64>()
                        .ok()
                        .filter(|k| *k >= 1.0 && k.is_finite())
                        .ok_or_else(|| bad("expected K >= 1"))?;
                }
                "straggler-step" => {
                    let (after, probability) = value
                        .split_once(':')
                        .ok_or_else(|| bad("expected AFTER:P"))?;
                    let after = parse_duration(after).map_err(|e| bad(&e))?;
                    let probability =
                        parse_probability(probability).ok_or_else(|| bad("expected P in 0..=1"))?;
                    plan.straggler_step = Some((after, probability));
                }
                "pareto" => {
                    let (scale, shape) = value
                        .split_once(':')
                        .ok_or_else(|| bad("expected SCALE:SHAPE"))?;
                    let scale = parse_duration(scale).map_err(|e| bad(&e))?;
                    let shape = shape
                        .parse::<f64>()
                        .ok()
                        .filter(|shape| *shape > 0.0 && shape.is_finite())
                        .ok_or_else(|| bad("expected SHAPE > 0"))?;
                    plan.pareto = Some((scale, shape));
                }
                "episodes" => {
                    episodes = Some(parse_episodes(value).map_err(|e| bad(&e))?);
                }
                "inherent" => {
                    let (probability, delay) =
                        value.split_once('x').ok_or_else(|| bad("expected PxD"))?;
                    let probability =
                        parse_probability(probability).ok_or_else(|| bad("expected P in 0..=1"))?;
                    let delay = parse_duration(delay).map_err(|e| bad(&e))?;
                    plan.inherent = Some((probability, delay));
                }
                "hang" => {
                    plan.hang_probability = if value.is_empty() {
                        1.0
                    } else {
                        parse_probability(value).ok_or_else(|| bad("expected P in 0..=1"))?
                    }
                }
                "unavailable" => {
                    plan.unavailable_probability =
                        parse_probability(value).ok_or_else(|| bad("expected P in 0..=1"))?
                }
                "abort-on" => {
                    if value.is_empty() {
                        return Err(bad("expected a marker"));
                    }
                    plan.abort_marker = Some(value.as_bytes().to_vec());
                }
                _ => return Err(bad("unknown fault")),
            }
        }
        plan.episodes = episodes.map(|(every, length, factor)| {
            EpisodeTimeline::new(EpisodeSchedule {
                seed: plan.seed,
                every,
                length,
                factor,
            })
        });
        if !specs.is_empty() {
            plan.started_at = Some(Instant::now());
        }
        Ok(plan)
    }
}

/// `EVERY:LENGTHxK`: the mean gap, the length and the slowdown.
fn parse_episodes(value: &str) -> Result<(Duration, Duration, f64), String> {
    const EXPECTED: &str = "expected EVERY:LENGTHxK with EVERY > 0 and K >= 1";
    let with_reason = |reason: String| format!("{EXPECTED}: {reason}");
    let (every, rest) = value.split_once(':').ok_or(EXPECTED)?;
    let (length, factor) = rest.rsplit_once('x').ok_or(EXPECTED)?;
    let every = parse_duration(every).map_err(with_reason)?;
    if every.is_zero() {
        return Err(EXPECTED.to_string());
    }
    let length = parse_duration(length).map_err(with_reason)?;
    let factor = factor
        .parse::<f64>()
        .ok()
        .filter(|factor| *factor >= 1.0 && factor.is_finite())
        .ok_or(EXPECTED)?;
    Ok((every, length, factor))
}

fn parse_probability(text: &str) -> Option<f64> {
    text.parse::<f64>()
        .ok()
        .filter(|probability| (0.0..=1.0).contains(probability))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{plan, schedule};
    use super::*;

    #[test]
    fn parses_every_spec_and_rejects_bad_ones() {
        let plan = plan(&[
            "seed=7",
            "latency=1ms..3ms",
            "straggler=0.1x10",
            "straggler-step=5s:0.5",
            "pareto=1ms:1.5",
            "inherent=0.01x50ms",
            "hang=0.001",
            "unavailable=0.02",
        ]);
        assert!(plan.is_active());
        assert_eq!(plan.seed, 7);
        assert_eq!(plan.straggler_multiplier, 10.0);
        assert_eq!(plan.straggler_step, Some((Duration::from_secs(5), 0.5)));
        for bad in [
            "latency=3ms..1ms",
            "straggler=2x3",
            "straggler=0.1x0.5",
            "hang=x",
            "warp=1",
            "latency=5parsecs",
            "latency=5",
            "latency=1..3ms",
            "pareto=1:1.5",
            "inherent=0.01x50",
            "straggler-step=5:0.5",
        ] {
            assert!(FaultPlan::parse(&[bad.to_string()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_need_their_unit_and_may_be_fractions() {
        for bare in ["latency=5", "latency=1ms..3", "episodes=2:300msx10"] {
            let error = FaultPlan::parse(&[bare.to_string()]).unwrap_err();
            assert!(
                error.contains("no unit") && error.contains("250ms, 2s, 1m or 1.5s"),
                "{bare}: {error}"
            );
        }
        let plan = plan(&["latency=0.5ms", "inherent=0.01x1.5s"]);
        assert_eq!(
            plan.latency,
            Some(LatencyBody::Fixed(Duration::from_micros(500)))
        );
        assert_eq!(plan.inherent, Some((0.01, Duration::from_millis(1500))));
    }

    #[test]
    fn parses_episodes_and_rejects_bad_ones() {
        let plan = plan(&["episodes=2s:300msx10", "seed=9"]);
        let episodes = plan.episodes.as_ref().unwrap();
        assert_eq!(
            episodes.schedule,
            schedule(9),
            "the seed applies in any order"
        );
        for bad in [
            "episodes=2s",
            "episodes=2s:300ms",
            "episodes=0s:300msx10",
            "episodes=2s:300msx0.5",
            "episodes=2s:longx10",
        ] {
            let error = FaultPlan::parse(&[bad.to_string()]).unwrap_err();
            assert!(error.contains("EVERY:LENGTHxK"), "{bad}: {error}");
        }
    }
}
