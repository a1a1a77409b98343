//! What the faults do to each call: [`FaultPlan::decide`] and
//! [`FaultPlan::aborts_on`], the seeded draws behind them, and the timeline
//! of slow episodes ([`EpisodeSchedule`]).

use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fanout_runtime::hashing::{SPLITMIX64_GAMMA, fnv1a_64, splitmix64};

use super::{FaultDecision, FaultPlan, LatencyBody};

/// Mixed into the inherent-slowness draw in place of the leaf's seed, so that
/// every leaf draws the same for the same request.
const INHERENT_SALT: u64 = 0x1f83_d9ab_fb41_bd6b;

impl FaultPlan {
    /// Whether a request with these payload bytes must abort the process
    /// (`abort-on=MARKER`).
    pub fn aborts_on(&self, payload: &[u8]) -> bool {
        self.abort_marker
            .as_deref()
            .is_some_and(|marker| payload.windows(marker.len()).any(|window| window == marker))
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
            && unit_interval(splitmix64(INHERENT_SALT ^ fnv1a_64(request_id.as_bytes())))
                < probability
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
                .wrapping_add(counter.wrapping_mul(SPLITMIX64_GAMMA)),
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
            (self.seed ^ EPISODE_STREAM).wrapping_add(index.wrapping_mul(SPLITMIX64_GAMMA)),
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
pub(super) struct EpisodeTimeline {
    pub(super) schedule: EpisodeSchedule,
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
    pub(super) fn new(schedule: EpisodeSchedule) -> Self {
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

fn unit_interval(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1_u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{plan, schedule};
    use super::*;

    #[test]
    fn no_specs_inject_nothing() {
        let plan = plan(&[]);
        assert!(!plan.is_active());
        assert_eq!(plan.decide("r"), FaultDecision::default());
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
        let aborting = plan(&["abort-on=DEATH"]);
        assert!(aborting.aborts_on(b"\x0a\x09say DEATH"));
        assert!(!aborting.aborts_on(b"say death"));
        assert!(!plan(&["hang"]).aborts_on(b"DEATH"));
        assert!(plan(&["unavailable=1"]).decide("r").unavailable);
        let pareto = plan(&["pareto=1ms:1.2"]);
        let delays: Vec<Duration> = (0..2000).map(|_| pareto.decide("r").delay_before).collect();
        let heavy = delays
            .iter()
            .filter(|d| **d > Duration::from_millis(10))
            .count();
        assert!(heavy > 0 && heavy < 200, "{heavy}");
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
