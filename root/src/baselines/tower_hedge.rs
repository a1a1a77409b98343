//! tower's `hedge` middleware as a hedging policy (`fanout root --hedge
//! tower`). It exists as a **benchmark baseline**: a run can compare fanout's
//! own hedging against the stock tower hedge over the same cluster, with the
//! same replica choice. It is not meant for production use.
//!
//! Each shard call goes through one [`tower::hedge::Hedge`] per shard (kept
//! in [`TowerHedges`] across requests, since its latency histogram is its
//! memory), wrapped around [`ReplicaAttempts`]: a tower `Service`
//! whose every call asks the root's usual selector for a replica and makes
//! one `Leaf/Execute` attempt. So, as tower does:
//! - at most one hedge per call, sent once the call has been outstanding for
//!   `latency_percentile` of the previous period's successful latencies
//!   (tower's rotating HdrHistogram, in milliseconds rounded up), and only
//!   when that period holds at least [`MIN_DATA_POINTS`] of them;
//! - the hedge goes to whichever replica the selector picks, possibly the
//!   one already running the call;
//! - no budget: every eligible call may hedge;
//! - the first *result* wins, error or not; the other attempt is dropped.
//!
//! tower's parameters: `latency_percentile` is the root's
//! `--hedge-percentile` (as a fraction: 95 becomes 0.95), `min_data_points`
//! is [`MIN_DATA_POINTS`] (10) and `period` is [`PERIOD`] (1 s), the values
//! tower's own documentation and tests use.
//!
//! Failures: a retryable failure (the winning result was UNAVAILABLE, a
//! refused connection, ...) falls back to the normal path of
//! `shard_call` with hedging off, which retries on another replica within
//! the root's budget; other failures end the call as they would there.
//!
//! Counters: tower does not say whether it sent a hedge, so
//! [`ReplicaAttempts`] counts the calls it receives per shard call; the
//! first is the primary, any later one a hedge (`hedges = attempts - 1`),
//! and a hedge won when the winning answer came from attempt 1.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use fanout_proto::Any;
use fanout_proto::v1::{ExecuteRequest, ExecuteResponse};
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::time::Instant;
use tonic::Status;
use tower::hedge::{Hedge, Policy};
use tower::{Service, ServiceExt};

use crate::hedge::HedgePolicy;
use crate::replica::{Replica, ReplicaSet};
use crate::selector::AttemptFailure;
use crate::shard_call::{
    self, AttemptError, AttemptKind, ShardAnswer, ShardCall, ShardCallCounters, ShardCallOutcome,
    ShardHedging, classify,
};

/// Successful latencies the previous period must hold before tower hedges.
pub const MIN_DATA_POINTS: u64 = 10;
/// How long each of tower's two rotating histograms covers.
pub const PERIOD: Duration = Duration::from_secs(1);

/// One attempt on one replica: `execute(replica_index, request)`.
pub type Execute<'a> = dyn Fn(usize, tonic::Request<ExecuteRequest>) -> BoxFuture<'a, Result<ExecuteResponse, Status>>
    + Send
    + Sync
    + 'a;

/// tower's hedges of every shard, by shard id: the baseline's own state,
/// kept across requests (a hedge's latency histogram is its memory).
#[derive(Debug)]
pub struct TowerHedges {
    slots: Vec<TowerHedgeSlot>,
}

impl TowerHedges {
    pub fn new(shard_count: usize) -> TowerHedges {
        TowerHedges {
            slots: (0..shard_count)
                .map(|_| TowerHedgeSlot::default())
                .collect(),
        }
    }

    /// Calls the shard through its tower hedge over real `Leaf/Execute` calls.
    pub async fn call_shard(&self, call: ShardCall<'_>) -> ShardCallOutcome {
        let replica_set = call.replica_set;
        let Some(slot) = self.slots.get(replica_set.shard_id as usize) else {
            return ShardCallOutcome::Failed(Status::internal(format!(
                "no tower hedge for shard {}",
                replica_set.shard_id
            )));
        };
        let members = call.members;
        let execute = |replica_index: usize, request: tonic::Request<ExecuteRequest>| {
            shard_call::execute_on(members, replica_index, request).boxed()
        };
        call_shard_over(call, slot, &execute).await
    }
}

/// The tower hedge of one shard, created on first use.
#[derive(Debug, Default)]
pub struct TowerHedgeSlot(OnceLock<Mutex<Hedge<ReplicaAttempts, CloneEveryRequest>>>);

impl TowerHedgeSlot {
    /// The shard's hedge; `latency_percentile` (a fraction) applies when it
    /// is created.
    fn get(&self, latency_percentile: f32) -> &Mutex<Hedge<ReplicaAttempts, CloneEveryRequest>> {
        self.0.get_or_init(|| {
            Mutex::new(Hedge::new::<AttemptRequest<'_>>(
                ReplicaAttempts,
                CloneEveryRequest,
                MIN_DATA_POINTS,
                latency_percentile,
                PERIOD,
            ))
        })
    }
}

/// What tower's hedge passes to [`ReplicaAttempts`]: everything one attempt
/// of the shard call needs (tower clones it for the hedge).
#[derive(Clone)]
pub struct AttemptRequest<'a> {
    replica_set: &'a ReplicaSet,
    members: &'a [Arc<Replica>],
    payload: &'a Any,
    request_id: &'a str,
    deadline: Instant,
    preferred_replica: Option<usize>,
    counters: &'a ShardCallCounters,
    execute: &'a Execute<'a>,
}

/// A replica's answer to one attempt.
#[derive(Debug)]
pub struct AttemptAnswer {
    response: ExecuteResponse,
    replica_index: usize,
    attempt: u32,
}

/// A failed attempt, with its replica when one was called.
#[derive(Debug)]
pub struct AttemptFailed {
    replica_index: Option<usize>,
    status: Status,
}

impl fmt::Display for AttemptFailed {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", self.status)
    }
}

impl std::error::Error for AttemptFailed {}

/// Hedges every request: tower's policy hook, with nothing to decide since
/// this baseline has no budget.
#[derive(Debug, Clone, Copy)]
pub struct CloneEveryRequest;

impl<'a> Policy<AttemptRequest<'a>> for CloneEveryRequest {
    fn clone_request(&self, request: &AttemptRequest<'a>) -> Option<AttemptRequest<'a>> {
        Some(request.clone())
    }

    fn can_retry(&self, _request: &AttemptRequest<'a>) -> bool {
        true
    }
}

/// The service tower hedges: each call picks a replica with the shard's
/// selector (the preferred replica for a primary that has one) and makes one
/// attempt on it, recorded by the selector like any other attempt.
#[derive(Debug, Clone, Copy)]
pub struct ReplicaAttempts;

impl<'a> Service<AttemptRequest<'a>> for ReplicaAttempts {
    type Response = AttemptAnswer;
    type Error = AttemptFailed;
    type Future = BoxFuture<'a, Result<AttemptAnswer, AttemptFailed>>;

    fn poll_ready(&mut self, _context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: AttemptRequest<'a>) -> Self::Future {
        let AttemptRequest {
            replica_set,
            members,
            payload,
            request_id,
            deadline,
            preferred_replica,
            counters,
            execute,
        } = request;
        // tower calls this once for the primary, then once for its hedge, in turn.
        let attempt = counters.attempts.load(Ordering::Relaxed);
        if attempt == 0 {
            counters.attempt_sent(AttemptKind::Primary);
        } else {
            counters.attempt_sent(AttemptKind::Hedge);
            counters.hedge_sent();
        }
        let selector = &replica_set.selector;
        let replica_count = members.len();
        let chosen = preferred_replica
            .filter(|index| attempt == 0 && *index < replica_count)
            .or_else(|| selector.choose(members, &[]));
        let Some(replica_index) = chosen else {
            let status = Status::unavailable(shard_call::no_replicas_message(replica_set));
            return futures::future::ready(Err(AttemptFailed {
                replica_index: None,
                status,
            }))
            .boxed();
        };
        let recorder = selector.begin_attempt(members, replica_index);
        let call = shard_call::attempt(
            replica_set.shard_id,
            payload,
            request_id,
            attempt,
            deadline,
            move |request| execute(replica_index, request),
        );
        async move {
            match call.await {
                Ok(response) => {
                    recorder.succeeded();
                    Ok(AttemptAnswer {
                        response,
                        replica_index,
                        attempt,
                    })
                }
                Err(status) => {
                    recorder.failed(match classify(&status, deadline) {
                        AttemptError::TimedOut => AttemptFailure::TimedOut,
                        AttemptError::Retryable | AttemptError::ConnectionLost => {
                            AttemptFailure::Retryable
                        }
                        AttemptError::RequestRejected | AttemptError::ShardFailed => {
                            AttemptFailure::Answered
                        }
                    });
                    Err(AttemptFailed {
                        replica_index: Some(replica_index),
                        status,
                    })
                }
            }
        }
        .boxed()
    }
}

/// [`TowerHedges::call_shard`] over any transport (unit tests stand in for
/// the leaves), with the shard's tower hedge.
pub async fn call_shard_over<'a>(
    call: ShardCall<'a>,
    slot: &TowerHedgeSlot,
    execute: &'a Execute<'a>,
) -> ShardCallOutcome {
    if call.deadline <= Instant::now() {
        return ShardCallOutcome::TimedOut;
    }
    let counters = call.counters;
    call.hedging.budget.record_primary_call();
    let first_attempt_at = Instant::now();
    let request = AttemptRequest {
        replica_set: call.replica_set,
        members: call.members,
        payload: call.payload,
        request_id: call.request_id,
        deadline: call.deadline,
        preferred_replica: call.preferred_replica,
        counters,
        execute,
    };
    let percentile = (call.hedging.settings.percentile / 100.0) as f32;
    let pending = {
        let mut hedge = slot
            .get(percentile)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Both of the hedge's inner services are always ready.
        match ServiceExt::<AttemptRequest<'a>>::ready(&mut *hedge).now_or_never() {
            Some(Ok(ready)) => ready.call(request),
            Some(Err(error)) => {
                return ShardCallOutcome::Failed(Status::internal(error.to_string()));
            }
            None => {
                return ShardCallOutcome::Failed(Status::internal("the tower hedge is not ready"));
            }
        }
    };
    let failed = match pending.await {
        Ok(answer) => {
            if answer.attempt > 0 {
                counters.hedge_won();
            }
            return ShardCallOutcome::Answered(ShardAnswer {
                response: answer.response,
                replica: Arc::clone(&call.members[answer.replica_index]),
                attempt: answer.attempt,
                latency: first_attempt_at.elapsed(),
            });
        }
        Err(error) => match error.downcast::<AttemptFailed>() {
            Ok(failed) => *failed,
            Err(other) => return ShardCallOutcome::Failed(Status::internal(other.to_string())),
        },
    };
    match classify(&failed.status, call.deadline) {
        AttemptError::TimedOut => ShardCallOutcome::TimedOut,
        AttemptError::RequestRejected => ShardCallOutcome::Rejected(failed.status),
        AttemptError::ShardFailed => ShardCallOutcome::Failed(failed.status),
        // The baseline has no crash policy: a broken call fails over.
        AttemptError::Retryable | AttemptError::ConnectionLost => {
            retry_without_hedging(call, execute, failed).await
        }
    }
}

/// The normal path's failover, hedging off, for a retryable failure of the
/// tower-hedged call: another replica, within the root's budget.
async fn retry_without_hedging<'a>(
    call: ShardCall<'a>,
    execute: &'a Execute<'a>,
    failed: AttemptFailed,
) -> ShardCallOutcome {
    let counters = call.counters;
    let tried: Vec<usize> = failed.replica_index.into_iter().collect();
    let Some(replica_index) = call.replica_set.selector.choose(call.members, &tried) else {
        return ShardCallOutcome::Failed(failed.status);
    };
    if !call.hedging.budget.try_spend() {
        counters.suppressed();
        return ShardCallOutcome::Failed(failed.status);
    }
    counters.retry_sent();
    let attempts_before = counters.attempts.load(Ordering::Relaxed);
    let retry = ShardCall {
        preferred_replica: Some(replica_index),
        hedging: ShardHedging {
            policy: HedgePolicy::Off,
            ..call.hedging
        },
        ..call
    };
    let outcome = crate::shard_call::call_shard_over(retry, execute).await;
    match outcome {
        ShardCallOutcome::Answered(mut answer) => {
            answer.attempt += attempts_before;
            ShardCallOutcome::Answered(answer)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hedge::{HedgeBudget, HedgeSettings, HedgeTimer};
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    /// A fake leaf: call number `n` (over the whole test) answers after
    /// `latency(n)`, or fails with UNAVAILABLE when that is `None`; it
    /// notes each call's attempt number and whether it was dropped unanswered.
    struct FakeLeaf {
        calls: AtomicUsize,
        latency: Box<dyn Fn(usize) -> Option<Duration> + Send + Sync>,
        attempts_seen: Mutex<Vec<u32>>,
        dropped: Arc<AtomicUsize>,
    }

    struct DropNote(Arc<AtomicUsize>, bool);
    impl Drop for DropNote {
        fn drop(&mut self) {
            if !self.1 {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    impl FakeLeaf {
        fn new(latency: impl Fn(usize) -> Option<Duration> + Send + Sync + 'static) -> Self {
            FakeLeaf {
                calls: AtomicUsize::new(0),
                latency: Box::new(latency),
                attempts_seen: Mutex::new(Vec::new()),
                dropped: Arc::new(AtomicUsize::new(0)),
            }
        }

        fn execute(
            &self,
            request: tonic::Request<ExecuteRequest>,
        ) -> BoxFuture<'static, Result<ExecuteResponse, Status>> {
            let number = self.calls.fetch_add(1, Ordering::Relaxed);
            self.attempts_seen
                .lock()
                .unwrap()
                .push(request.get_ref().attempt);
            let latency = (self.latency)(number);
            let dropped = Arc::clone(&self.dropped);
            async move {
                let mut note = DropNote(dropped, false);
                let result = match latency {
                    Some(latency) => {
                        tokio::time::sleep(latency).await;
                        Ok(ExecuteResponse::default())
                    }
                    None => Err(Status::unavailable("down")),
                };
                note.1 = true;
                result
            }
            .boxed()
        }
    }

    struct Call {
        outcome: ShardCallOutcome,
        counters: ShardCallCounters,
    }

    /// One shard call of `replicas` through `slot`, the shard's tower hedge.
    async fn call(
        replicas: &ReplicaSet,
        slot: &TowerHedgeSlot,
        leaf: &FakeLeaf,
        budget: &HedgeBudget,
    ) -> Call {
        let settings = HedgeSettings {
            timer: HedgeTimer::Tokio,
            ..HedgeSettings::default()
        };
        let counters = ShardCallCounters::default();
        let payload = Any::default();
        let members = replicas.members();
        let execute = |_replica: usize, request| leaf.execute(request);
        let outcome = call_shard_over(
            ShardCall {
                replica_set: replicas,
                members: &members,
                payload: &payload,
                request_id: "r",
                deadline: Instant::now() + Duration::from_secs(5),
                preferred_replica: None,
                hedging: ShardHedging {
                    policy: HedgePolicy::Adaptive,
                    settings: &settings,
                    budget,
                },
                counters: &counters,
                crash: None,
                hedge_gate: None,
            },
            slot,
            &execute,
        )
        .await;
        Call { outcome, counters }
    }

    fn count(counter: &std::sync::atomic::AtomicU32) -> u32 {
        counter.load(Ordering::Relaxed)
    }

    fn answered_latency(outcome: &ShardCallOutcome) -> Duration {
        match outcome {
            ShardCallOutcome::Answered(answer) => answer.latency,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_call_is_hedged_once_the_previous_period_holds_enough_data_points() {
        let replicas = ReplicaSet::for_tests(2);
        let slot = TowerHedgeSlot::default();
        let budget = HedgeBudget::new(0.0, 0.0);
        // Call 30 and call 31 are the slow primaries; every other call
        // answers in 2 ms.
        let leaf = FakeLeaf::new(|number| {
            Some(if number == 30 || number == 31 {
                ms(100)
            } else {
                ms(2)
            })
        });
        for _ in 0..30 {
            let fast = call(&replicas, &slot, &leaf, &budget).await;
            assert_eq!(answered_latency(&fast.outcome), ms(2));
            assert_eq!(count(&fast.counters.attempts), 1);
        }
        // Still in tower's first period: its read histogram is empty.
        let unhedged = call(&replicas, &slot, &leaf, &budget).await;
        assert_eq!(answered_latency(&unhedged.outcome), ms(100));
        assert_eq!(count(&unhedged.counters.hedges), 0);

        // The next period reads the 31 latencies just recorded (p95 = 2 ms).
        tokio::time::advance(PERIOD).await;
        let hedged = call(&replicas, &slot, &leaf, &budget).await;
        let ShardCallOutcome::Answered(answer) = &hedged.outcome else {
            panic!("{:?}", hedged.outcome);
        };
        assert_eq!(answer.attempt, 1, "the hedge's answer was used");
        assert!(answer.latency <= ms(5), "{:?}", answer.latency);
        assert_eq!(count(&hedged.counters.attempts), 2);
        assert_eq!(count(&hedged.counters.hedges), 1);
        assert_eq!(count(&hedged.counters.hedges_won), 1);
        assert_eq!(
            leaf.dropped.load(Ordering::Relaxed),
            1,
            "the slow primary was dropped"
        );
        let seen = leaf.attempts_seen.lock().unwrap().clone();
        assert_eq!(&seen[31..], &[0, 1]);
        assert_eq!(budget.spent(), 0, "tower's hedges spend no budget");
    }

    #[tokio::test(start_paused = true)]
    async fn a_retryable_failure_falls_back_to_a_retry_within_budget() {
        let replicas = ReplicaSet::for_tests(2);
        let slot = TowerHedgeSlot::default();
        let budget = HedgeBudget::new(5.0, 10.0);
        let leaf = FakeLeaf::new(|number| (number > 0).then_some(ms(3)));
        let run = call(&replicas, &slot, &leaf, &budget).await;
        let ShardCallOutcome::Answered(answer) = &run.outcome else {
            panic!("{:?}", run.outcome);
        };
        assert_eq!(answer.attempt, 1);
        assert_eq!(count(&run.counters.attempts), 2);
        assert_eq!(count(&run.counters.retries), 1);
        assert_eq!(count(&run.counters.hedges), 0);
        assert_eq!(budget.spent(), 1);

        let replicas = ReplicaSet::for_tests(2);
        let slot = TowerHedgeSlot::default();
        let empty = HedgeBudget::new(0.0, 0.0);
        assert!(empty.try_spend(), "the one starting token");
        let down = FakeLeaf::new(|_| None);
        let run = call(&replicas, &slot, &down, &empty).await;
        assert!(
            matches!(run.outcome, ShardCallOutcome::Failed(_)),
            "{:?}",
            run.outcome
        );
        assert_eq!(count(&run.counters.hedges_suppressed), 1);
    }
}
