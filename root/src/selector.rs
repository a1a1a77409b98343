//! Which replica of a shard gets the next attempt.
//!
//! Each replica has a peak-EWMA latency estimate (a slower answer replaces the
//! estimate at once; faster answers pull it down with a time-based decay, and
//! so does idleness, so a replica that was slow is probed again later) and a
//! count of attempts in flight. Its cost is `(outstanding + 1) * estimate`.
//! The primary is chosen by the power of two choices: two distinct random
//! replicas, the cheaper wins. A replica whose attempt just failed with a
//! retryable error (a refused connection, UNAVAILABLE) cools down for a while
//! (doubling on repeated failures) and is chosen only when every other
//! candidate is cooling down too.
//!
//! A replica that straggles repeatedly (an attempt overtaken by a hedge, or
//! cut off by the deadline, [`SelectorOptions::probation_after`] times in a
//! row) goes on probation: avoided like a cooling replica, for a time that
//! doubles while it keeps straggling. When the probation ends, the next
//! choice probes it; an answer ends the probation and, like any real
//! measurement after a mere lower bound (a cancelled attempt), replaces its
//! estimate outright, so a recovered replica comes back at once.
//!
//! A replica whose health service says NOT_SERVING (a leaf draining before
//! it stops, see [`Health`]) is avoided the same way, and one that says
//! SERVING again after failing is chosen again at once.
//!
//! Every attempt goes through [`AttemptRecorder`]: the one place where
//! latency, failures and cancellations are recorded, both per replica and in
//! the shard's latency histogram that sets the hedge delay (answers as
//! latencies; cancelled losers and time-outs as censored lower bounds; not
//! the instant failures of unreachable replicas, which say nothing about
//! latency).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::hedge::{LatencyEstimate, RotatingLatencyHistogram};

/// Tuning of a [`ReplicaSelector`].
#[derive(Debug, Clone, Copy)]
pub struct SelectorOptions {
    /// Estimate of a replica never heard from.
    pub initial_latency: Duration,
    /// Time constant of the EWMA decay.
    pub decay: Duration,
    /// Cool-down after the first failure; doubles with each further one.
    pub cool_down: Duration,
    /// The longest cool-down (and probation).
    pub max_cool_down: Duration,
    /// Consecutive straggles that put a replica on probation.
    pub probation_after: u32,
    /// The first probation; doubles with each further straggle.
    pub probation: Duration,
    /// Rotation period of the shard's latency histogram.
    pub latency_window: Duration,
    /// How attempts given up enter the shard's latency estimate.
    pub latency_estimate: LatencyEstimate,
}

impl Default for SelectorOptions {
    fn default() -> Self {
        Self {
            initial_latency: Duration::from_millis(5),
            decay: Duration::from_secs(10),
            cool_down: Duration::from_millis(500),
            max_cool_down: Duration::from_secs(10),
            probation_after: 3,
            probation: Duration::from_secs(1),
            latency_window: Duration::from_secs(10),
            latency_estimate: LatencyEstimate::default(),
        }
    }
}

/// How an attempt that failed should weigh on its replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptFailure {
    /// A retryable failure (connection refused or reset, UNAVAILABLE,
    /// RESOURCE_EXHAUSTED, ABORTED): the replica cools down.
    Retryable,
    /// The replica answered, with an error about the request or its shard:
    /// it is not to blame for being slow or down.
    Answered,
    /// The deadline passed first: the elapsed time is a lower bound of the
    /// replica's latency, and the replica straggled.
    TimedOut,
    /// Another attempt started later answered first (a hedge overtook this
    /// one): a lower bound, and a straggle.
    Overtaken,
    /// Dropped for any other reason (another attempt won that started
    /// earlier, the fan-out ended): a lower bound only.
    Cancelled,
}

/// Peak-EWMA and power-of-two-choices over the replicas of one shard.
///
/// The selector keeps what belongs to the shard (the latency histogram that
/// sets the hedge delay); what belongs to one replica lives in its
/// [`ReplicaState`], so it stays with the replica while the shard's members
/// change (a DNS name re-resolved). Every choice is made over a snapshot of
/// the members, `&[M]`; indexes are positions in that snapshot.
#[derive(Debug)]
pub struct ReplicaSelector {
    options: SelectorOptions,
    random_state: RandomState,
    draws: AtomicU64,
    shard_latency: Mutex<RotatingLatencyHistogram>,
}

/// A member of a shard as the selector sees it.
pub trait Member {
    fn state(&self) -> &ReplicaState;
}

impl Member for ReplicaState {
    fn state(&self) -> &ReplicaState {
        self
    }
}

/// What a replica's health service says (`grpc.health.v1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Not known (not watched, not reachable, or no health service): the
    /// replica is judged by its calls alone.
    Unknown,
    Serving,
    /// Draining or not ready: avoided while any other replica is not.
    NotServing,
}

/// One replica's load and health, as the selector reads and updates them.
#[derive(Debug)]
pub struct ReplicaState {
    load: Mutex<ReplicaLoad>,
    health: AtomicU8,
    /// Attempts ever sent to the replica.
    calls: AtomicU64,
}

impl ReplicaState {
    pub fn new(options: &SelectorOptions) -> ReplicaState {
        ReplicaState {
            load: Mutex::new(ReplicaLoad::new(options, Instant::now())),
            health: AtomicU8::new(Health::Unknown as u8),
            calls: AtomicU64::new(0),
        }
    }

    /// Attempts ever sent to the replica (primaries, hedges, retries, probes).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    pub fn health(&self) -> Health {
        match self.health.load(Ordering::Relaxed) {
            x if x == Health::Serving as u8 => Health::Serving,
            x if x == Health::NotServing as u8 => Health::NotServing,
            _ => Health::Unknown,
        }
    }

    /// Records what the health service said. A replica that says SERVING
    /// again after failing is no longer cooling down: it is back.
    pub fn set_health(&self, health: Health) {
        let before = self.health.swap(health as u8, Ordering::Relaxed);
        if health == Health::Serving && before != Health::Serving as u8 {
            self.with_load(|load| {
                load.cooling_until = None;
                load.consecutive_failures = 0;
            });
        }
    }

    /// Whether the replica is on probation for straggling.
    pub fn is_on_probation(&self) -> bool {
        self.load().is_on_probation(Instant::now())
    }

    /// On probation, or past it and not yet answered well: a replica whose
    /// last calls straggled (a hung host, say) and that has not answered
    /// since.
    pub fn is_suspect(&self) -> bool {
        self.load().probation_until.is_some()
    }

    /// Attempts in flight on the replica.
    pub fn outstanding(&self) -> u32 {
        self.with_load(|load| load.outstanding)
    }

    /// How often the replica went on probation, and how often an answer
    /// ended its probation.
    pub fn probation_counts(&self) -> (u64, u64) {
        self.with_load(|load| (load.probation_entries, load.probation_exits))
    }

    /// Whether the replica is cooling down after a failure.
    #[cfg(test)]
    pub fn is_cooling(&self) -> bool {
        self.load().is_cooling(Instant::now())
    }

    /// Current `(outstanding + 1) * latency estimate`, in nanoseconds.
    #[cfg(test)]
    pub fn cost(&self, options: &SelectorOptions) -> f64 {
        self.load().cost(Instant::now(), options.decay)
    }

    /// Cooling down, on probation or not serving: chosen only when every
    /// other candidate is avoided too.
    fn is_avoided(&self, load: &ReplicaLoad, now: Instant) -> bool {
        load.is_avoided(now) || self.health() == Health::NotServing
    }

    fn load(&self) -> ReplicaLoad {
        self.with_load(|load| load.clone())
    }

    fn with_load<T>(&self, update: impl FnOnce(&mut ReplicaLoad) -> T) -> T {
        // A poisoned lock only means another thread panicked mid-update of
        // plain numbers; they are still usable.
        let mut load = self
            .load
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        update(&mut load)
    }
}

#[derive(Debug, Clone)]
struct ReplicaLoad {
    latency_estimate_nanos: f64,
    estimate_updated_at: Instant,
    outstanding: u32,
    consecutive_failures: u32,
    cooling_until: Option<Instant>,
    /// The estimate comes from a lower bound (a cancelled attempt), not a
    /// measurement: the next answer replaces it.
    estimate_is_lower_bound: bool,
    consecutive_straggles: u32,
    /// On probation until then; stays set after it passes until the probe.
    probation_until: Option<Instant>,
    /// Times put on probation, and times a probe ended it (for metrics).
    probation_entries: u64,
    probation_exits: u64,
}

impl ReplicaLoad {
    fn new(options: &SelectorOptions, now: Instant) -> ReplicaLoad {
        ReplicaLoad {
            latency_estimate_nanos: options.initial_latency.as_nanos() as f64,
            estimate_updated_at: now,
            outstanding: 0,
            consecutive_failures: 0,
            cooling_until: None,
            estimate_is_lower_bound: false,
            consecutive_straggles: 0,
            probation_until: None,
            probation_entries: 0,
            probation_exits: 0,
        }
    }

    /// The estimate decayed towards zero by the time since its last update.
    fn decayed_estimate(&self, now: Instant, decay: Duration) -> f64 {
        let elapsed = now.saturating_duration_since(self.estimate_updated_at);
        let weight = (-elapsed.as_secs_f64() / decay.as_secs_f64().max(1e-9)).exp();
        self.latency_estimate_nanos * weight
    }

    fn cost(&self, now: Instant, decay: Duration) -> f64 {
        self.decayed_estimate(now, decay) * f64::from(self.outstanding + 1)
    }

    fn is_cooling(&self, now: Instant) -> bool {
        self.cooling_until.is_some_and(|until| now < until)
    }

    fn is_on_probation(&self, now: Instant) -> bool {
        self.probation_until.is_some_and(|until| now < until)
    }

    /// Probation over, not yet probed.
    fn awaits_probe(&self, now: Instant) -> bool {
        self.probation_until.is_some_and(|until| now >= until)
    }

    fn is_avoided(&self, now: Instant) -> bool {
        self.is_cooling(now) || self.is_on_probation(now)
    }

    fn observe_latency(&mut self, latency: Duration, now: Instant, decay: Duration) {
        let observed = latency.as_nanos() as f64;
        if observed >= self.latency_estimate_nanos || self.estimate_is_lower_bound {
            self.estimate_is_lower_bound = false;
            self.latency_estimate_nanos = observed;
        } else {
            let elapsed = now.saturating_duration_since(self.estimate_updated_at);
            let weight = (-elapsed.as_secs_f64() / decay.as_secs_f64().max(1e-9)).exp();
            self.latency_estimate_nanos =
                self.latency_estimate_nanos * weight + observed * (1.0 - weight);
        }
        self.estimate_updated_at = now;
    }

    /// A lower bound on the latency: raises the estimate, never lowers it.
    fn observe_latency_at_least(&mut self, latency: Duration, now: Instant) {
        let observed = latency.as_nanos() as f64;
        if observed > self.latency_estimate_nanos {
            self.latency_estimate_nanos = observed;
            self.estimate_updated_at = now;
            self.estimate_is_lower_bound = true;
        }
    }
}

impl ReplicaSelector {
    pub fn new(options: SelectorOptions) -> Self {
        Self {
            options,
            random_state: RandomState::new(),
            draws: AtomicU64::new(0),
            shard_latency: Mutex::new(RotatingLatencyHistogram::with_estimate(
                options.latency_window,
                options.latency_estimate,
            )),
        }
    }

    pub fn options(&self) -> &SelectorOptions {
        &self.options
    }

    /// The shard's recent attempt latency at `percentile`; `None` while it
    /// has too few samples.
    pub fn latency_percentile(&self, percentile: f64) -> Option<Duration> {
        self.shard_latency
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .percentile(percentile)
    }

    /// `(index, avoided, cost)` of every member not in `tried`.
    fn candidates<M: Member>(
        &self,
        members: &[M],
        tried: &[usize],
        now: Instant,
    ) -> Vec<(usize, bool, f64)> {
        members
            .iter()
            .enumerate()
            .filter(|(index, _)| !tried.contains(index))
            .map(|(index, member)| {
                let state = member.state();
                let load = state.load();
                (
                    index,
                    state.is_avoided(&load, now),
                    load.cost(now, self.options.decay),
                )
            })
            .collect()
    }

    /// The cheapest member not in `tried`, preferring those neither
    /// cooling down, on probation nor draining: the target of a hedge.
    pub fn best_untried<M: Member>(&self, members: &[M], tried: &[usize]) -> Option<usize> {
        self.candidates(members, tried, Instant::now())
            .into_iter()
            .min_by(|a, b| {
                (a.1, a.2)
                    .partial_cmp(&(b.1, b.2))
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
            .map(|(index, _, _)| index)
    }

    /// The member for the next attempt, skipping those in `tried`: by the
    /// power of two choices among the members not avoided (or among all
    /// untried ones when every one is avoided). `None` when every member
    /// has been tried.
    pub fn choose<M: Member>(&self, members: &[M], tried: &[usize]) -> Option<usize> {
        let now = Instant::now();
        // A replica whose probation just ended gets the next attempt: the
        // probe that ends its probation or renews it. One probe at a time:
        // the probation stays set (expired) until the probe's outcome.
        if let Some(index) = members
            .iter()
            .enumerate()
            .filter(|(index, member)| {
                !tried.contains(index) && member.state().health() != Health::NotServing
            })
            .find(|(_, member)| {
                member.state().with_load(|load| {
                    let probe = load.awaits_probe(now) && load.outstanding == 0;
                    if probe {
                        // Renewed at once so no other request probes too;
                        // the outcome ends it or lengthens it.
                        load.probation_until = Some(now + self.options.probation);
                    }
                    probe
                })
            })
            .map(|(index, _)| index)
        {
            return Some(index);
        }
        let candidates = self.candidates(members, tried, now);
        let ready: Vec<(usize, f64)> = candidates
            .iter()
            .filter(|(_, avoided, _)| !avoided)
            .map(|&(index, _, cost)| (index, cost))
            .collect();
        let pool = if ready.is_empty() {
            candidates
                .iter()
                .map(|&(index, _, cost)| (index, cost))
                .collect()
        } else {
            ready
        };
        match pool.len() {
            0 => None,
            1 => Some(pool[0].0),
            len => {
                let first = self.random_below(len);
                // A second draw among the others: distinct from the first.
                let second = (first + 1 + self.random_below(len - 1)) % len;
                let (a, b) = (pool[first], pool[second]);
                Some(if b.1 < a.1 { b.0 } else { a.0 })
            }
        }
    }

    /// Starts an attempt on member `index`; the recorder reports its end.
    pub fn begin_attempt<'a, M: Member>(
        &'a self,
        members: &'a [M],
        index: usize,
    ) -> AttemptRecorder<'a> {
        let replica = members[index].state();
        replica.calls.fetch_add(1, Ordering::Relaxed);
        replica.with_load(|load| load.outstanding += 1);
        AttemptRecorder {
            selector: self,
            replica,
            index,
            started_at: Instant::now(),
            finished: false,
        }
    }

    fn random_below(&self, bound: usize) -> usize {
        let draw = self.draws.fetch_add(1, Ordering::Relaxed);
        (self.random_state.hash_one(draw) % bound as u64) as usize
    }

    fn finish_attempt(
        &self,
        replica: &ReplicaState,
        started_at: Instant,
        outcome: Option<AttemptFailure>,
    ) {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(started_at);
        let options = self.options;
        {
            let mut shard_latency = self
                .shard_latency
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match outcome {
                None | Some(AttemptFailure::Answered) => shard_latency.record(elapsed),
                // Given up without an answer: its latency is at least this.
                Some(
                    AttemptFailure::Cancelled
                    | AttemptFailure::Overtaken
                    | AttemptFailure::TimedOut,
                ) => shard_latency.record_censored(elapsed),
                Some(AttemptFailure::Retryable) => {}
            }
        }
        replica.with_load(|load| {
            load.outstanding = load.outstanding.saturating_sub(1);
            match outcome {
                None => {
                    load.observe_latency(elapsed, now, options.decay);
                    load.consecutive_failures = 0;
                    load.cooling_until = None;
                    load.consecutive_straggles = 0;
                    if load.probation_until.take().is_some() {
                        load.probation_exits += 1;
                    }
                }
                Some(AttemptFailure::Answered) => {
                    load.observe_latency(elapsed, now, options.decay);
                }
                Some(AttemptFailure::Cancelled) => {
                    load.observe_latency_at_least(elapsed, now);
                }
                Some(AttemptFailure::TimedOut | AttemptFailure::Overtaken) => {
                    load.observe_latency_at_least(elapsed, now);
                    load.consecutive_straggles = load.consecutive_straggles.saturating_add(1);
                    if load.consecutive_straggles >= options.probation_after {
                        let doublings =
                            (load.consecutive_straggles - options.probation_after).min(16);
                        let probation = options
                            .probation
                            .saturating_mul(1 << doublings)
                            .min(options.max_cool_down);
                        if load.probation_until.is_none() {
                            load.probation_entries += 1;
                        }
                        load.probation_until = Some(now + probation);
                    }
                }
                Some(AttemptFailure::Retryable) => {
                    load.consecutive_failures = load.consecutive_failures.saturating_add(1);
                    let doublings = load.consecutive_failures.saturating_sub(1).min(16);
                    let cool_down = options
                        .cool_down
                        .saturating_mul(1 << doublings)
                        .min(options.max_cool_down);
                    load.cooling_until = Some(now + cool_down);
                }
            }
        });
    }
}

/// One attempt in flight on one replica. Report how it ended with
/// [`succeeded`](Self::succeeded) or [`failed`](Self::failed); dropping it
/// unreported (the attempt was cancelled) counts the elapsed time as a lower
/// bound of the replica's latency.
#[must_use = "report how the attempt ended"]
pub struct AttemptRecorder<'a> {
    selector: &'a ReplicaSelector,
    replica: &'a ReplicaState,
    index: usize,
    started_at: Instant,
    finished: bool,
}

impl AttemptRecorder<'_> {
    pub fn succeeded(mut self) {
        self.finish(None);
    }

    pub fn failed(mut self, failure: AttemptFailure) {
        self.finish(Some(failure));
    }

    /// The replica of this attempt: its index in the members it was chosen from.
    pub fn replica_index(&self) -> usize {
        self.index
    }

    /// When this attempt started.
    pub fn started_at(&self) -> Instant {
        self.started_at
    }

    fn finish(&mut self, outcome: Option<AttemptFailure>) {
        self.finished = true;
        self.selector
            .finish_attempt(self.replica, self.started_at, outcome);
    }
}

impl Drop for AttemptRecorder<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.finish(Some(AttemptFailure::Cancelled));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    /// A selector and its members, asked by index as a shard call does.
    struct Shard {
        selector: ReplicaSelector,
        members: Vec<ReplicaState>,
    }

    impl Shard {
        fn new(replicas: usize) -> Shard {
            let options = SelectorOptions::default();
            Shard {
                selector: ReplicaSelector::new(options),
                members: (0..replicas).map(|_| ReplicaState::new(&options)).collect(),
            }
        }

        fn choose(&self, tried: &[usize]) -> Option<usize> {
            self.selector.choose(&self.members, tried)
        }

        fn best_untried(&self, tried: &[usize]) -> Option<usize> {
            self.selector.best_untried(&self.members, tried)
        }

        fn begin_attempt(&self, index: usize) -> AttemptRecorder<'_> {
            self.selector.begin_attempt(&self.members, index)
        }

        fn cost(&self, index: usize) -> f64 {
            self.members[index].cost(&self.selector.options)
        }

        fn is_cooling(&self, index: usize) -> bool {
            self.members[index].is_cooling()
        }

        fn is_on_probation(&self, index: usize) -> bool {
            self.members[index].is_on_probation()
        }

        fn outstanding(&self, index: usize) -> u32 {
            self.members[index].outstanding()
        }

        fn probation_counts(&self, index: usize) -> (u64, u64) {
            self.members[index].probation_counts()
        }

        fn latency_percentile(&self, percentile: f64) -> Option<Duration> {
            self.selector.latency_percentile(percentile)
        }
    }

    async fn record_success(selector: &Shard, index: usize, latency: Duration) {
        let attempt = selector.begin_attempt(index);
        advance(latency).await;
        attempt.succeeded();
    }

    #[tokio::test(start_paused = true)]
    async fn prefers_the_lower_cost_replica() {
        let selector = Shard::new(2);
        record_success(&selector, 0, Duration::from_millis(80)).await;
        record_success(&selector, 1, Duration::from_millis(2)).await;
        for _ in 0..50 {
            assert_eq!(selector.choose(&[]), Some(1));
        }
        // Outstanding work counts too: 50 calls in flight on the fast replica
        // make it costlier than the idle slow one.
        let in_flight: Vec<_> = (0..50).map(|_| selector.begin_attempt(1)).collect();
        assert!(selector.cost(1) > selector.cost(0));
        assert_eq!(selector.choose(&[]), Some(0));
        for attempt in in_flight {
            attempt.succeeded();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_answer_raises_the_estimate_at_once_and_it_decays_later() {
        let selector = Shard::new(1);
        record_success(&selector, 0, Duration::from_millis(100)).await;
        let peak = selector.cost(0);
        assert!((peak - 100e6).abs() < 1e3, "{peak}");
        advance(Duration::from_secs(10)).await;
        let decayed = selector.cost(0);
        assert!(decayed < peak * 0.5 && decayed > 0.0, "{decayed}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_replica_is_avoided_during_its_cool_down() {
        let selector = Shard::new(2);
        record_success(&selector, 0, Duration::from_millis(1)).await;
        record_success(&selector, 1, Duration::from_millis(50)).await;
        assert_eq!(selector.choose(&[]), Some(0));

        selector.begin_attempt(0).failed(AttemptFailure::Retryable);
        assert!(selector.is_cooling(0));
        for _ in 0..20 {
            assert_eq!(selector.choose(&[]), Some(1));
        }
        // Still chosen when it is the only replica left.
        assert_eq!(selector.choose(&[1]), Some(0));

        advance(Duration::from_millis(501)).await;
        assert!(!selector.is_cooling(0));
        assert_eq!(selector.choose(&[]), Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_failures_lengthen_the_cool_down_and_success_ends_it() {
        let selector = Shard::new(2);
        selector.begin_attempt(0).failed(AttemptFailure::Retryable);
        advance(Duration::from_millis(501)).await;
        selector.begin_attempt(0).failed(AttemptFailure::Retryable);
        advance(Duration::from_millis(501)).await;
        assert!(
            selector.is_cooling(0),
            "the second failure cools down for 1 s"
        );
        advance(Duration::from_millis(500)).await;
        assert!(!selector.is_cooling(0));
        selector.begin_attempt(0).failed(AttemptFailure::Retryable);
        assert!(selector.is_cooling(0));
        selector.begin_attempt(0).succeeded();
        assert!(!selector.is_cooling(0));
    }

    #[tokio::test(start_paused = true)]
    async fn choose_skips_tried_replicas_and_runs_out() {
        let selector = Shard::new(3);
        let first = selector.choose(&[]).unwrap();
        let second = selector.choose(&[first]).unwrap();
        assert_ne!(first, second);
        let third = selector.choose(&[first, second]).unwrap();
        assert!(third != first && third != second);
        assert_eq!(selector.choose(&[0, 1, 2]), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_attempt_only_raises_the_estimate() {
        let selector = Shard::new(1);
        let before = selector.cost(0);
        let attempt = selector.begin_attempt(0);
        advance(Duration::from_millis(1)).await;
        drop(attempt);
        let after = selector.cost(0);
        assert!(
            after <= before && after > before * 0.999,
            "1 ms is below the 5 ms estimate: {after}"
        );
        let attempt = selector.begin_attempt(0);
        advance(Duration::from_millis(40)).await;
        drop(attempt);
        assert!((selector.cost(0) - 40e6).abs() < 1e3);
    }

    #[tokio::test(start_paused = true)]
    async fn both_choices_are_drawn_among_many_replicas() {
        let selector = Shard::new(4);
        let mut seen = [0_u32; 4];
        for _ in 0..400 {
            seen[selector.choose(&[]).unwrap()] += 1;
        }
        assert!(seen.iter().all(|&count| count > 0), "{seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_straggling_puts_a_replica_on_probation_until_a_probe_answers() {
        let selector = Shard::new(2);
        record_success(&selector, 0, Duration::from_millis(1)).await;
        record_success(&selector, 1, Duration::from_millis(2)).await;
        for straggle in 1..=3 {
            assert!(
                !selector.is_on_probation(0),
                "not yet after {straggle} straggles"
            );
            let attempt = selector.begin_attempt(0);
            advance(Duration::from_millis(1)).await;
            attempt.failed(AttemptFailure::Overtaken);
        }
        assert!(selector.is_on_probation(0));
        assert_eq!(selector.probation_counts(0), (1, 0));
        for _ in 0..20 {
            assert_eq!(selector.choose(&[]), Some(1), "avoided as primary");
            assert_eq!(selector.best_untried(&[]), Some(1), "and as a hedge target");
        }
        assert_eq!(
            selector.choose(&[1]),
            Some(0),
            "unless it is the only one left"
        );

        // The probation ends: the next choice probes it, once.
        advance(Duration::from_millis(1001)).await;
        assert_eq!(selector.choose(&[]), Some(0));
        let probe = selector.begin_attempt(0);
        assert_eq!(selector.outstanding(0), 1, "the probe is in flight");
        assert_eq!(selector.choose(&[]), Some(1), "one probe at a time");
        // The probe straggles too: a longer probation.
        advance(Duration::from_millis(5)).await;
        probe.failed(AttemptFailure::TimedOut);
        advance(Duration::from_millis(1500)).await;
        assert!(selector.is_on_probation(0), "2 s the second time");
        assert_eq!(
            selector.probation_counts(0),
            (1, 0),
            "a renewed probation is not a new entry"
        );
        assert_eq!(selector.outstanding(0), 0);
        advance(Duration::from_millis(501)).await;
        assert_eq!(selector.choose(&[]), Some(0));
        // This probe answers fast: probation over, the estimate replaced.
        record_success(&selector, 0, Duration::from_micros(500)).await;
        assert!(!selector.is_on_probation(0));
        assert_eq!(selector.probation_counts(0), (1, 1));
        assert_eq!(selector.probation_counts(1), (0, 0));
        assert!(
            (selector.cost(0) - 0.5e6).abs() < 1e3,
            "{}",
            selector.cost(0)
        );
        assert_eq!(selector.choose(&[]), Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn the_shard_histogram_counts_losers_but_not_unreachable_replicas() {
        let selector = Shard::new(2);
        for _ in 0..10 {
            record_success(&selector, 0, Duration::from_micros(300)).await;
            let loser = selector.begin_attempt(1);
            advance(Duration::from_millis(40)).await;
            drop(loser);
            selector.begin_attempt(1).failed(AttemptFailure::Retryable);
        }
        let p50 = selector.latency_percentile(50.0).unwrap();
        assert!(
            (Duration::from_micros(297)..=Duration::from_micros(303)).contains(&p50),
            "{p50:?}"
        );
        let p95 = selector.latency_percentile(95.0).unwrap();
        assert!(p95 >= Duration::from_millis(39), "{p95:?}: losers count");
    }
}

#[cfg(test)]
mod health_tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_draining_replica_is_avoided_and_a_serving_one_is_back_at_once() {
        let options = SelectorOptions::default();
        let selector = ReplicaSelector::new(options);
        let members: Vec<ReplicaState> = (0..2).map(|_| ReplicaState::new(&options)).collect();
        members[0].set_health(Health::NotServing);
        for _ in 0..20 {
            assert_eq!(selector.choose(&members, &[]), Some(1));
            assert_eq!(selector.best_untried(&members, &[]), Some(1));
        }
        assert_eq!(
            selector.choose(&members, &[1]),
            Some(0),
            "a draining replica still answers when it is the only one left"
        );

        // It fails while it restarts, then says SERVING again: no cool-down.
        selector
            .begin_attempt(&members, 0)
            .failed(AttemptFailure::Retryable);
        assert!(members[0].is_cooling());
        members[0].set_health(Health::Serving);
        assert!(!members[0].is_cooling());
        let chosen: Vec<_> = (0..50)
            .filter_map(|_| selector.choose(&members, &[]))
            .collect();
        assert!(chosen.contains(&0), "{chosen:?}");
    }
}
