//! Fault injection for tests and benchmarks: slowness, stragglers, a heavy
//! tail, hangs and errors, added around a leaf's real work. Off unless the
//! leaf is started with `--fault` specs; every draw is seeded, so a run can
//! be repeated.
//!
//! Specs (each `--fault` flag takes one; durations as `250us`, `3ms`, `2s`):
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
//!
//! Every sleep is an async tokio sleep: the search pool never blocks on a
//! fault.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Mixed into the inherent-slowness draw in place of the leaf's seed, so that
/// every leaf draws the same for the same request.
const INHERENT_SALT: u64 = 0x1f83_d9ab_fb41_bd6b;

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
    draws: AtomicU64,
    started_at: Option<Instant>,
}

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
                            let (low, high) = (parse_duration(low), parse_duration(high));
                            let (Some(low), Some(high)) = (low, high) else {
                                return Err(bad("expected D or D1..D2"));
                            };
                            if high < low {
                                return Err(bad("the range is reversed"));
                            }
                            LatencyBody::Uniform { low, high }
                        }
                        None => LatencyBody::Fixed(
                            parse_duration(value).ok_or_else(|| bad("expected a duration"))?,
                        ),
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
                    let after = parse_duration(after).ok_or_else(|| bad("expected a duration"))?;
                    let probability =
                        parse_probability(probability).ok_or_else(|| bad("expected P in 0..=1"))?;
                    plan.straggler_step = Some((after, probability));
                }
                "pareto" => {
                    let (scale, shape) = value
                        .split_once(':')
                        .ok_or_else(|| bad("expected SCALE:SHAPE"))?;
                    let scale = parse_duration(scale).ok_or_else(|| bad("expected a duration"))?;
                    let shape = shape
                        .parse::<f64>()
                        .ok()
                        .filter(|shape| *shape > 0.0 && shape.is_finite())
                        .ok_or_else(|| bad("expected SHAPE > 0"))?;
                    plan.pareto = Some((scale, shape));
                }
                "episodes" => {
                    episodes =
                        Some(parse_episodes(value).ok_or_else(|| {
                            bad("expected EVERY:LENGTHxK with EVERY > 0 and K >= 1")
                        })?);
                }
                "inherent" => {
                    let (probability, delay) =
                        value.split_once('x').ok_or_else(|| bad("expected PxD"))?;
                    let probability =
                        parse_probability(probability).ok_or_else(|| bad("expected P in 0..=1"))?;
                    let delay = parse_duration(delay).ok_or_else(|| bad("expected a duration"))?;
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

    /// Whether any fault is configured.
    pub fn is_active(&self) -> bool {
        self.started_at.is_some()
    }

    /// Decides what happens to one call of request `request_id`.
    pub fn decide(&self, request_id: &str) -> FaultDecision {
        let Some(started_at) = self.started_at else {
            return FaultDecision::default();
        };
        if self.draw() < self.unavailable_probability {
            return FaultDecision {
                unavailable: true,
                ..FaultDecision::default()
            };
        }
        if self.draw() < self.hang_probability {
            return FaultDecision {
                hang: true,
                ..FaultDecision::default()
            };
        }
        let mut delay = match self.latency {
            None => Duration::ZERO,
            Some(LatencyBody::Fixed(delay)) => delay,
            Some(LatencyBody::Uniform { low, high }) => low + (high - low).mul_f64(self.draw()),
        };
        if let Some((scale, shape)) = self.pareto {
            // Inverse transform: scale / U^(1/shape) >= scale; add the excess.
            let uniform = (1.0 - self.draw()).max(1e-12);
            let factor = uniform.powf(-1.0 / shape).min(1e4);
            delay += scale.mul_f64(factor - 1.0);
        }
        if let Some((probability, inherent)) = self.inherent
            && unit_interval(splitmix64(INHERENT_SALT ^ fnv1a(request_id.as_bytes()))) < probability
        {
            delay += inherent;
        }
        let straggler_probability = match self.straggler_step {
            Some((after, probability)) if started_at.elapsed() >= after => probability,
            _ => self.straggler_probability,
        };
        let straggler_factor = (self.draw() < straggler_probability
            && self.straggler_multiplier > 1.0)
            .then_some(self.straggler_multiplier);
        let episode_factor = self
            .episodes
            .as_ref()
            .filter(|episodes| episodes.in_episode(started_at.elapsed()))
            .map(|episodes| episodes.schedule.factor)
            .filter(|factor| *factor > 1.0);
        let straggler_factor = match (straggler_factor, episode_factor) {
            (Some(straggler), Some(episode)) => Some(straggler * episode),
            (one, other) => one.or(other),
        };
        FaultDecision {
            delay_before: delay,
            straggler_factor,
            hang: false,
            unavailable: false,
        }
    }

    /// The next seeded draw in [0, 1).
    fn draw(&self) -> f64 {
        let counter = self.draws.fetch_add(1, Ordering::Relaxed);
        unit_interval(splitmix64(
            self.seed
                .wrapping_add(counter.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        ))
    }
}

/// When a replica's slow episodes happen: starts of a Poisson process with a
/// mean gap of `every` (exponential gaps, seeded), each lasting `length`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpisodeSchedule {
    pub seed: u64,
    pub every: Duration,
    pub length: Duration,
    /// Calls during an episode take this many times as long.
    pub factor: f64,
}

/// Keeps the episode draws apart from the per-call draws of the same seed.
const EPISODE_STREAM: u64 = 0x6570_6973_6f64_6573;

impl EpisodeSchedule {
    /// The gap before episode `index` starts (after the previous start, or
    /// after the leaf's start for the first).
    fn gap(&self, index: u64) -> Duration {
        let uniform = unit_interval(splitmix64(
            (self.seed ^ EPISODE_STREAM).wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        ));
        // Inverse transform of the exponential distribution; capped so that
        // one draw cannot overflow a Duration.
        let exponential = (-(1.0 - uniform).max(1e-12).ln()).min(1e3);
        self.every.mul_f64(exponential)
    }

    /// Episode start times from the leaf's start, in order, without end.
    pub fn starts(&self) -> impl Iterator<Item = Duration> + '_ {
        (0..).scan(Duration::ZERO, |at, index| {
            *at += self.gap(index);
            Some(*at)
        })
    }

    /// Whether an episode is running `elapsed` after the leaf's start (a
    /// pure function of the schedule and `elapsed`).
    pub fn in_episode(&self, elapsed: Duration) -> bool {
        self.starts()
            .take_while(|start| *start <= elapsed)
            .last()
            .is_some_and(|start| elapsed - start < self.length)
    }
}

/// [`EpisodeSchedule::in_episode`] for a leaf's calls, which arrive in
/// (nearly) increasing time: a cursor keeps the latest start reached, so a
/// call costs O(1) rather than a walk from the leaf's start.
#[derive(Debug)]
struct EpisodeTimeline {
    schedule: EpisodeSchedule,
    cursor: Mutex<EpisodeCursor>,
}

#[derive(Debug)]
struct EpisodeCursor {
    /// Index of the next start not yet reached.
    next_index: u64,
    next_start: Duration,
    /// The latest start reached.
    last_start: Option<Duration>,
}

impl EpisodeTimeline {
    fn new(schedule: EpisodeSchedule) -> Self {
        EpisodeTimeline {
            cursor: Mutex::new(EpisodeCursor {
                next_index: 1,
                next_start: schedule.gap(0),
                last_start: None,
            }),
            schedule,
        }
    }

    fn in_episode(&self, elapsed: Duration) -> bool {
        let mut cursor = self
            .cursor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cursor.last_start.is_some_and(|last| elapsed < last) {
            // A call that raced past a later one: walk from the start.
            drop(cursor);
            return self.schedule.in_episode(elapsed);
        }
        while cursor.next_start <= elapsed {
            cursor.last_start = Some(cursor.next_start);
            let gap = self.schedule.gap(cursor.next_index);
            cursor.next_start += gap;
            cursor.next_index += 1;
        }
        cursor
            .last_start
            .is_some_and(|start| elapsed - start < self.schedule.length)
    }
}

/// `EVERY:LENGTHxK`: the mean gap, the length and the slowdown.
fn parse_episodes(value: &str) -> Option<(Duration, Duration, f64)> {
    let (every, rest) = value.split_once(':')?;
    let (length, factor) = rest.rsplit_once('x')?;
    let every = parse_duration(every).filter(|every| !every.is_zero())?;
    let length = parse_duration(length)?;
    let factor = factor
        .parse::<f64>()
        .ok()
        .filter(|factor| *factor >= 1.0 && factor.is_finite())?;
    Some((every, length, factor))
}

fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

fn unit_interval(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1_u64 << 53) as f64
}

fn parse_probability(text: &str) -> Option<f64> {
    text.parse::<f64>()
        .ok()
        .filter(|probability| (0.0..=1.0).contains(probability))
}

/// `250us`, `3ms`, `2s` (a bare number is milliseconds).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(at) => text.split_at(at),
        None => (text, "ms"),
    };
    let number: f64 = number
        .parse()
        .ok()
        .filter(|n: &f64| *n >= 0.0 && n.is_finite())?;
    let seconds = match unit {
        "us" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(specs: &[&str]) -> FaultPlan {
        FaultPlan::parse(&specs.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn no_specs_inject_nothing() {
        let plan = plan(&[]);
        assert!(!plan.is_active());
        assert_eq!(plan.decide("r"), FaultDecision::default());
    }

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
        ] {
            assert!(FaultPlan::parse(&[bad.to_string()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn draws_are_seeded_and_follow_the_probabilities() {
        let specs = ["seed=3", "straggler=0.25x4", "latency=1ms..2ms"];
        let first: Vec<FaultDecision> = (0..1000)
            .map(|_| plan(&specs))
            .map(|p| p.decide("q"))
            .collect();
        assert!(
            first.windows(2).all(|pair| pair[0] == pair[1]),
            "a fresh plan repeats itself"
        );
        let plan = plan(&specs);
        let decisions: Vec<FaultDecision> = (0..4000).map(|_| plan.decide("q")).collect();
        let stragglers = decisions
            .iter()
            .filter(|d| d.straggler_factor == Some(4.0))
            .count();
        assert!((800..1200).contains(&stragglers), "{stragglers}");
        assert!(
            decisions
                .iter()
                .all(|d| d.delay_before >= Duration::from_millis(1)
                    && d.delay_before <= Duration::from_millis(2))
        );
    }

    #[test]
    fn inherent_slowness_depends_on_the_request_alone() {
        // Leaves with different seeds (as benchmarks start them) agree.
        let one = plan(&["seed=1", "inherent=0.5x40ms"]);
        let other = plan(&["seed=2", "inherent=0.5x40ms", "latency=0ms"]);
        let slow: Vec<bool> = (0..200)
            .map(|n| one.decide(&format!("req-{n}")).delay_before >= Duration::from_millis(40))
            .collect();
        let slow_elsewhere: Vec<bool> = (0..200)
            .map(|n| other.decide(&format!("req-{n}")).delay_before >= Duration::from_millis(40))
            .collect();
        assert_eq!(slow, slow_elsewhere);
        let count = slow.iter().filter(|slow| **slow).count();
        assert!((60..140).contains(&count), "{count}");
    }

    #[test]
    fn hang_and_unavailable() {
        assert!(plan(&["hang"]).decide("r").hang);
        assert!(plan(&["unavailable=1"]).decide("r").unavailable);
        let pareto = plan(&["pareto=1ms:1.2"]);
        let delays: Vec<Duration> = (0..2000).map(|_| pareto.decide("r").delay_before).collect();
        let heavy = delays
            .iter()
            .filter(|d| **d > Duration::from_millis(10))
            .count();
        assert!(heavy > 0 && heavy < 200, "{heavy}");
    }

    fn schedule(seed: u64) -> EpisodeSchedule {
        EpisodeSchedule {
            seed,
            every: Duration::from_secs(2),
            length: Duration::from_millis(300),
            factor: 10.0,
        }
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

    #[test]
    fn the_episode_timeline_is_a_seeded_poisson_process() {
        let horizon = Duration::from_secs(10_000);
        let starts: Vec<Duration> = schedule(1)
            .starts()
            .take_while(|start| *start < horizon)
            .collect();
        // Mean gap 2 s: about 5000 starts (a Poisson count, sd about 71).
        assert!((4700..5300).contains(&starts.len()), "{}", starts.len());
        assert!(starts.windows(2).all(|pair| pair[0] <= pair[1]));
        // Gaps are exponential: about 1 - e^-1 = 63% are shorter than the mean.
        let short = starts
            .windows(2)
            .filter(|pair| pair[1] - pair[0] < Duration::from_secs(2))
            .count();
        let share = short as f64 / starts.len() as f64;
        assert!((0.59..0.67).contains(&share), "{share}");

        // The same seed gives the same timeline; another seed another one.
        let again: Vec<Duration> = schedule(1).starts().take(50).collect();
        assert_eq!(&starts[..50], &again[..]);
        let other: Vec<Duration> = schedule(2).starts().take(50).collect();
        assert_ne!(&starts[..50], &other[..]);
    }

    #[test]
    fn episodes_cover_the_expected_share_of_time() {
        // Poisson starts, fixed length L: covered share = 1 - e^(-L/EVERY).
        let schedule = schedule(4);
        let timeline = EpisodeTimeline::new(schedule);
        let step = Duration::from_millis(10);
        let samples = 500_000_u32;
        let covered = (0..samples)
            .filter(|n| timeline.in_episode(step * *n))
            .count();
        let share = covered as f64 / f64::from(samples);
        let expected = 1.0 - (-0.15_f64).exp();
        assert!((share - expected).abs() < 0.02, "{share} vs {expected}");
        // Inside and outside the first episode, exactly.
        let first = schedule.starts().next().unwrap();
        assert!(schedule.in_episode(first));
        assert!(schedule.in_episode(first + Duration::from_millis(299)));
        assert!(first.is_zero() || !schedule.in_episode(first - Duration::from_nanos(1)));
    }

    #[test]
    fn the_cursor_agrees_with_the_pure_timeline_even_out_of_order() {
        let schedule = schedule(7);
        let timeline = EpisodeTimeline::new(schedule);
        let mut at = Duration::ZERO;
        for n in 0..20_000_u64 {
            // Mostly forwards, now and then a little back (racing calls).
            at = if n % 17 == 0 {
                at.saturating_sub(Duration::from_millis(40))
            } else {
                at + Duration::from_millis(n % 23)
            };
            assert_eq!(
                timeline.in_episode(at),
                schedule.in_episode(at),
                "at {at:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn calls_during_an_episode_are_k_times_slower() {
        let plan = plan(&["seed=5", "episodes=2s:300msx10"]);
        let schedule = plan.episodes.as_ref().unwrap().schedule;
        let first = schedule.starts().next().unwrap();
        if !first.is_zero() {
            assert_eq!(plan.decide("r").straggler_factor, None);
        }
        tokio::time::advance(first + Duration::from_millis(1)).await;
        assert_eq!(plan.decide("r").straggler_factor, Some(10.0));
        tokio::time::advance(Duration::from_millis(300)).await;
        let expected = schedule
            .in_episode(first + Duration::from_millis(301))
            .then_some(10.0);
        assert_eq!(plan.decide("r").straggler_factor, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn the_straggler_rate_steps_up() {
        let plan = plan(&["straggler=0x5", "straggler-step=2s:1"]);
        assert_eq!(plan.decide("r").straggler_factor, None);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(plan.decide("r").straggler_factor, Some(5.0));
    }
}
