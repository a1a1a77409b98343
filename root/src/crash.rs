//! Requests of death: a request that crashes the leaf serving it must cost
//! that replica, not every replica it would be retried on.
//!
//! The signal is a leaf connection that breaks while a call is on it (the
//! call was sent, no status came back): the replica has most likely died.
//! Every call in flight on it breaks at the same moment, the innocent ones
//! with the guilty one, so a broken call alone says nothing about its
//! request. What tells them apart is how replicas die together:
//!
//! 1. A shard call whose attempt broke waits [`CrashSettings::settle`] before
//!    it fails over, so that the other replicas lost in the same moment are
//!    reported too: together they are one *crash event*.
//! 2. An event that took replicas of two or more shards was caused by a
//!    request (an outside cause, a kill or an out-of-memory, takes one
//!    replica). The requests in flight on *every* replica of the event are
//!    the suspects; the one sent last is the request of death (it arrived
//!    just before the crashes; the others had run there without harm). It
//!    gets no more attempts, is answered INTERNAL, and its fingerprint (a
//!    hash of its payload) is *quarantined*: refused before any leaf is
//!    called for [`CrashSettings::quarantine`]. Every other request that
//!    lost an attempt fails over to a sibling as usual.
//! 3. An event that took one replica is failed over, unless the request
//!    already lost a replica in an earlier event (within
//!    [`HISTORY`]): then it is not retried again, so that a request that
//!    crashes the replicas of one shard only costs two of them.
//!
//! What this cannot do: a request that crashes the replicas of one shard
//! costs a second replica before it is recognised (rule 3), and it is not
//! quarantined; an innocent request sent just after the request of death to
//! exactly the same replicas would be taken for it.

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use fanout_proto::Any;
use tokio::time::Instant;

/// How long losses are remembered (rule 3), and how many at most.
pub const HISTORY: Duration = Duration::from_secs(60);
const MAX_LOSSES_REMEMBERED: usize = 4096;

/// A request's identity for the quarantine: a hash of its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(u64);

impl Fingerprint {
    /// The fingerprint of a request that fans out `payload`.
    pub fn of(payload: &Any) -> Fingerprint {
        let mut hasher = DefaultHasher::new();
        payload.type_url.hash(&mut hasher);
        payload.value.hash(&mut hasher);
        Fingerprint(hasher.finish())
    }
}

/// The losses of `lost`'s crash event: those linked to it by a chain of
/// losses each at most `settle` after the one before. Replicas that one
/// request kills do not die at one instant (each leaf must first get to the
/// request, on a busy machine tens of milliseconds apart); chaining keeps
/// such a spread one event, where a fixed window around each loss would cut
/// it differently for each shard and let some of them fail over.
fn crash_event<'s>(
    losses: &'s VecDeque<LostCall>,
    lost: &LostCall,
    settle: Duration,
) -> Vec<&'s LostCall> {
    let mut by_time: Vec<&LostCall> = losses.iter().collect();
    by_time.sort_by_key(|other| other.lost_at);
    let mut start = 0;
    for end in 1..=by_time.len() {
        let chain_ends =
            end == by_time.len() || by_time[end].lost_at - by_time[end - 1].lost_at > settle;
        if chain_ends {
            let chain = &by_time[start..end];
            if chain[0].lost_at <= lost.lost_at && lost.lost_at <= chain[chain.len() - 1].lost_at {
                return chain.to_vec();
            }
            start = end;
        }
    }
    Vec::new()
}

/// The crash policy's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CrashSettings {
    /// Off: a broken call fails over at once, like any retryable failure.
    pub enabled: bool,
    /// How long a shard call whose replica broke waits before failing over.
    pub settle: Duration,
    /// How long a request of death is refused.
    pub quarantine: Duration,
    /// The most fingerprints quarantined at once (the oldest goes first).
    pub capacity: usize,
}

impl Default for CrashSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            settle: Duration::from_millis(50),
            quarantine: Duration::from_secs(600),
            capacity: 1024,
        }
    }
}

impl CrashSettings {
    pub fn validate(&self) -> Result<(), String> {
        if self.enabled && self.capacity == 0 {
            return Err("the request-of-death quarantine needs room for at least 1".to_owned());
        }
        Ok(())
    }
}

/// One call lost with its replica.
#[derive(Debug, Clone)]
pub struct LostCall {
    pub shard_id: u32,
    /// The replica's address.
    pub replica: String,
    pub fingerprint: Fingerprint,
    /// When the call was sent.
    pub sent_at: Instant,
    /// When its connection broke.
    pub lost_at: Instant,
}

/// What a shard call does after losing an attempt with its replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrashVerdict {
    /// Try another replica.
    FailOver,
    /// Do not retry this request's shard call; the reason says why.
    DoNotRetry(String),
    /// The request is a request of death (now quarantined).
    RequestOfDeath(String),
}

/// A fingerprint that is refused.
#[derive(Debug, Clone)]
struct Quarantined {
    until: Instant,
    since: Instant,
    /// The replicas it crashed, for the message.
    replicas: Vec<String>,
}

#[derive(Debug, Default)]
struct CrashState {
    /// Oldest first.
    losses: VecDeque<LostCall>,
    quarantined: HashMap<Fingerprint, Quarantined>,
    requests_of_death: u64,
    refusals: u64,
    losses_total: u64,
}

/// The root's memory of lost calls and quarantined requests.
#[derive(Debug)]
pub struct CrashWatch {
    settings: CrashSettings,
    state: Mutex<CrashState>,
}

impl CrashWatch {
    pub fn new(settings: CrashSettings) -> CrashWatch {
        CrashWatch {
            settings,
            state: Mutex::default(),
        }
    }

    pub fn settings(&self) -> &CrashSettings {
        &self.settings
    }

    fn state(&self) -> std::sync::MutexGuard<'_, CrashState> {
        // The state stays consistent between statements: a panic elsewhere
        // while holding the lock leaves nothing half-done.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Why a request with `fingerprint` is refused now, if it is.
    pub fn refusal(&self, fingerprint: Fingerprint) -> Option<String> {
        let now = Instant::now();
        let mut state = self.state();
        let entry = state.quarantined.get(&fingerprint)?;
        if entry.until <= now {
            state.quarantined.remove(&fingerprint);
            return None;
        }
        let message = format!(
            "request refused: it crashed leaf replicas {} {} s ago and is quarantined for {} s more",
            entry.replicas.join(", "),
            now.duration_since(entry.since).as_secs(),
            entry.until.duration_since(now).as_secs()
        );
        state.refusals += 1;
        Some(message)
    }

    /// Notes a call lost with its replica.
    pub fn record_loss(&self, lost: LostCall) {
        let mut state = self.state();
        state.losses_total += 1;
        let horizon = lost.lost_at.checked_sub(HISTORY);
        while let Some(oldest) = state.losses.front() {
            let too_old = horizon.is_some_and(|horizon| oldest.lost_at < horizon);
            if !too_old && state.losses.len() < MAX_LOSSES_REMEMBERED {
                break;
            }
            state.losses.pop_front();
        }
        state.losses.push_back(lost);
    }

    /// When the last loss of `lost`'s crash event happened so far: the
    /// event is over once that is [`CrashSettings::settle`] old.
    pub fn event_end(&self, lost: &LostCall) -> Instant {
        let state = self.state();
        crash_event(&state.losses, lost, self.settings.settle)
            .iter()
            .map(|member| member.lost_at)
            .max()
            .unwrap_or(lost.lost_at)
            .max(lost.lost_at)
    }

    /// The verdict on `lost` (already recorded) once the settle time has
    /// passed; called after waiting for it.
    pub fn verdict(&self, lost: &LostCall) -> CrashVerdict {
        let mut state = self.state();
        if let Some(entry) = state.quarantined.get(&lost.fingerprint) {
            return CrashVerdict::RequestOfDeath(format!(
                "request of death: the leaf replicas serving it died together ({}); it was not retried and is refused for {} s",
                entry.replicas.join(", "),
                self.settings.quarantine.as_secs()
            ));
        }
        let event = crash_event(&state.losses, lost, self.settings.settle);
        let mut replicas: Vec<(u32, &str)> = event
            .iter()
            .map(|other| (other.shard_id, other.replica.as_str()))
            .collect();
        replicas.sort_unstable();
        replicas.dedup();
        let shards = {
            let mut shards: Vec<u32> = replicas.iter().map(|(shard, _)| *shard).collect();
            shards.dedup();
            shards.len()
        };

        if shards >= 2 {
            // Rule 2: the request in flight on every replica of the event,
            // sent last, is the request of death.
            let mut on_every_replica: HashMap<Fingerprint, (usize, Instant)> = HashMap::new();
            let mut seen: Vec<(Fingerprint, u32, &str)> = Vec::new();
            for other in &event {
                let key = (other.fingerprint, other.shard_id, other.replica.as_str());
                if seen.contains(&key) {
                    continue;
                }
                seen.push(key);
                let entry = on_every_replica
                    .entry(other.fingerprint)
                    .or_insert((0, other.sent_at));
                entry.0 += 1;
                entry.1 = entry.1.max(other.sent_at);
            }
            let newest_suspect = on_every_replica
                .iter()
                .filter(|(_, (count, _))| *count == replicas.len())
                .max_by_key(|(_, (_, sent_at))| *sent_at)
                .map(|(fingerprint, _)| *fingerprint);
            if newest_suspect == Some(lost.fingerprint) {
                let names: Vec<String> = replicas
                    .iter()
                    .map(|(shard, replica)| format!("{replica} (shard {shard})"))
                    .collect();
                self.quarantine(&mut state, lost.fingerprint, names.clone());
                return CrashVerdict::RequestOfDeath(format!(
                    "request of death: the {} leaf replicas serving it died together ({}); it was not retried and is refused for {} s",
                    names.len(),
                    names.join(", "),
                    self.settings.quarantine.as_secs()
                ));
            }
            return CrashVerdict::FailOver;
        }

        // Rule 3: one replica lost; fail over once per request.
        let lost_before = state.losses.iter().any(|other| {
            other.fingerprint == lost.fingerprint
                && other.lost_at < lost.lost_at
                && !event.iter().any(|member| std::ptr::eq(*member, other))
        });
        if lost_before {
            return CrashVerdict::DoNotRetry(format!(
                "not retried: the replica {} broke during the call, and a replica had already broken during an earlier call of this request",
                lost.replica
            ));
        }
        CrashVerdict::FailOver
    }

    fn quarantine(&self, state: &mut CrashState, fingerprint: Fingerprint, replicas: Vec<String>) {
        let now = Instant::now();
        state.requests_of_death += 1;
        state.quarantined.retain(|_, entry| entry.until > now);
        if state.quarantined.len() >= self.settings.capacity
            && let Some(oldest) = state
                .quarantined
                .iter()
                .min_by_key(|(_, entry)| entry.since)
                .map(|(fingerprint, _)| *fingerprint)
        {
            state.quarantined.remove(&oldest);
        }
        state.quarantined.insert(
            fingerprint,
            Quarantined {
                until: now + self.settings.quarantine,
                since: now,
                replicas,
            },
        );
    }

    /// Counts for the metrics: calls lost with their replica, requests of
    /// death found, requests refused, fingerprints quarantined now.
    pub fn counts(&self) -> CrashCounts {
        let state = self.state();
        let now = Instant::now();
        CrashCounts {
            lost_calls: state.losses_total,
            requests_of_death: state.requests_of_death,
            refusals: state.refusals,
            quarantined: state
                .quarantined
                .values()
                .filter(|entry| entry.until > now)
                .count(),
        }
    }
}

/// See [`CrashWatch::counts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashCounts {
    pub lost_calls: u64,
    pub requests_of_death: u64,
    pub refusals: u64,
    pub quarantined: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch() -> CrashWatch {
        CrashWatch::new(CrashSettings::default())
    }

    fn fingerprint(n: u64) -> Fingerprint {
        Fingerprint(n)
    }

    fn lost(shard_id: u32, replica: &str, fingerprint: Fingerprint, sent_at: Instant) -> LostCall {
        LostCall {
            shard_id,
            replica: replica.to_owned(),
            fingerprint,
            sent_at,
            lost_at: Instant::now(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_replica_lost_alone_fails_over_once_per_request() {
        let watch = watch();
        let start = Instant::now();
        let first = lost(0, "a", fingerprint(1), start);
        watch.record_loss(first.clone());
        let innocent = lost(0, "a", fingerprint(2), start);
        watch.record_loss(innocent.clone());
        assert_eq!(watch.verdict(&first), CrashVerdict::FailOver);
        assert_eq!(watch.verdict(&innocent), CrashVerdict::FailOver);

        // The same request loses the sibling later: no third replica.
        tokio::time::advance(Duration::from_millis(100)).await;
        let second = lost(0, "b", fingerprint(1), Instant::now());
        watch.record_loss(second.clone());
        assert!(matches!(
            watch.verdict(&second),
            CrashVerdict::DoNotRetry(_)
        ));
        assert!(watch.refusal(fingerprint(1)).is_none(), "not quarantined");
    }

    #[tokio::test(start_paused = true)]
    async fn replicas_of_several_shards_dying_together_name_the_request_sent_last() {
        let watch = watch();
        let start = Instant::now();
        tokio::time::advance(Duration::from_millis(3)).await;
        let killer_sent = Instant::now();
        let killer = fingerprint(9);
        // An older innocent request on exactly the same replicas, another on
        // only one of them.
        let mut all = Vec::new();
        for (shard, replica) in [(0, "a0"), (1, "a1"), (2, "a2")] {
            all.push(lost(shard, replica, killer, killer_sent));
            all.push(lost(shard, replica, fingerprint(1), start));
        }
        all.push(lost(1, "a1", fingerprint(2), killer_sent));
        for call in &all {
            watch.record_loss(call.clone());
        }
        for call in &all {
            let verdict = watch.verdict(call);
            if call.fingerprint == killer {
                assert!(
                    matches!(&verdict, CrashVerdict::RequestOfDeath(message) if message.contains("a0 (shard 0), a1 (shard 1), a2 (shard 2)")),
                    "{verdict:?}"
                );
            } else {
                assert_eq!(verdict, CrashVerdict::FailOver, "{call:?}");
            }
        }
        let refusal = watch.refusal(killer).expect("quarantined");
        assert!(refusal.contains("quarantined for 600 s more"), "{refusal}");
        assert!(watch.refusal(fingerprint(1)).is_none());
        let counts = watch.counts();
        assert_eq!(
            (
                counts.requests_of_death,
                counts.quarantined,
                counts.refusals
            ),
            (1, 1, 1)
        );

        tokio::time::advance(Duration::from_secs(601)).await;
        assert!(watch.refusal(killer).is_none(), "the quarantine ends");
    }

    #[tokio::test(start_paused = true)]
    async fn replicas_dying_one_after_another_are_one_event_for_every_shard() {
        // Four shards' replicas die 40 ms apart (each well within `settle`
        // of the one before, 120 ms from first to last): every shard's call
        // must reach the same verdict, whichever loss it saw.
        let watch = watch();
        // An innocent request sent just after the killer was on the first
        // two of them: a window around the first loss alone would take it
        // for the request of death, and fail the killer over.
        let killer = fingerprint(7);
        let innocent = fingerprint(5);
        let sent = Instant::now();
        tokio::time::advance(Duration::from_millis(1)).await;
        let innocent_sent = Instant::now();
        let mut calls = Vec::new();
        let mut innocent_calls = Vec::new();
        for shard in 0..4 {
            let call = lost(shard, &format!("r{shard}"), killer, sent);
            watch.record_loss(call.clone());
            calls.push(call);
            if shard < 2 {
                let call = lost(shard, &format!("r{shard}"), innocent, innocent_sent);
                watch.record_loss(call.clone());
                innocent_calls.push(call);
            }
            tokio::time::advance(Duration::from_millis(40)).await;
        }
        let settled = calls.iter().map(|call| watch.event_end(call)).max();
        assert_eq!(
            settled,
            Some(calls[3].lost_at),
            "the event ends with its last loss"
        );
        for call in &calls {
            assert!(
                matches!(watch.verdict(call), CrashVerdict::RequestOfDeath(_)),
                "{call:?}"
            );
        }
        for call in &innocent_calls {
            assert_eq!(watch.verdict(call), CrashVerdict::FailOver, "{call:?}");
        }

        // A loss more than `settle` after that is an event of its own.
        tokio::time::advance(Duration::from_millis(200)).await;
        let later = lost(0, "s0", fingerprint(8), Instant::now());
        watch.record_loss(later.clone());
        assert_eq!(watch.event_end(&later), later.lost_at);
        assert_eq!(watch.verdict(&later), CrashVerdict::FailOver);
    }

    #[tokio::test(start_paused = true)]
    async fn losses_apart_in_time_are_separate_events() {
        let watch = watch();
        let first = lost(0, "a0", fingerprint(1), Instant::now());
        watch.record_loss(first);
        tokio::time::advance(Duration::from_millis(200)).await;
        let other = lost(1, "a1", fingerprint(2), Instant::now());
        watch.record_loss(other.clone());
        assert_eq!(watch.verdict(&other), CrashVerdict::FailOver);
    }

    #[tokio::test(start_paused = true)]
    async fn the_quarantine_is_bounded() {
        let watch = CrashWatch::new(CrashSettings {
            capacity: 2,
            ..CrashSettings::default()
        });
        for n in 0..3 {
            tokio::time::advance(Duration::from_secs(1)).await;
            let sent = Instant::now();
            let calls = [
                lost(0, "a0", fingerprint(n), sent),
                lost(1, "a1", fingerprint(n), sent),
            ];
            for call in &calls {
                watch.record_loss(call.clone());
            }
            assert!(matches!(
                watch.verdict(&calls[0]),
                CrashVerdict::RequestOfDeath(_)
            ));
        }
        assert!(
            watch.refusal(fingerprint(0)).is_none(),
            "the oldest went first"
        );
        assert!(watch.refusal(fingerprint(1)).is_some());
        assert!(watch.refusal(fingerprint(2)).is_some());
    }

    #[test]
    fn fingerprints_follow_the_payload() {
        let payload = |value: &[u8]| Any {
            type_url: "type.googleapis.com/x.Y".to_owned(),
            value: value.to_vec(),
        };
        assert_eq!(
            Fingerprint::of(&payload(b"a")),
            Fingerprint::of(&payload(b"a"))
        );
        assert_ne!(
            Fingerprint::of(&payload(b"a")),
            Fingerprint::of(&payload(b"b"))
        );
    }
}
