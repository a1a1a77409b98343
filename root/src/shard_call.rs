//! One shard's part of a request: `Leaf/Execute` on the best replica,
//! hedged and failed over between its replicas, until one answers, the
//! replicas run out or the deadline passes. Both phases of a search use it.
//!
//! Hedging: when the latest attempt has not answered after the hedge delay
//! (see [`crate::hedge`]), another attempt goes to the best replica not yet
//! tried; up to R-1 hedges. The first answer wins; the attempts still running
//! are dropped, which resets their HTTP/2 streams so the leaves skip or stop
//! their work. An attempt overtaken by a later one counts as a straggle of
//! its replica (see [`crate::selector`]).
//!
//! Failures:
//! - Retryable (UNAVAILABLE, RESOURCE_EXHAUSTED, ABORTED, a leaf's
//!   `fanout-retryable: true`, or a failure of the connection itself): try
//!   another replica, unless another attempt is still running.
//! - About the request (INVALID_ARGUMENT, OUT_OF_RANGE, PERMISSION_DENIED,
//!   UNAUTHENTICATED): every replica would say the same; the caller gets the
//!   status as is, at once.
//! - Any other error (INTERNAL, FAILED_PRECONDITION, ...): the shard failed
//!   (once no other attempt is running); not retried, the coverage policy
//!   decides.
//! - The deadline passed (tonic's expired timeout, which it reports as
//!   CANCELLED, or DEADLINE_EXCEEDED from the leaf): the shard timed out.
//! - The replica's connection broke during the call (it most likely died):
//!   the request may be what killed it, so before failing over the call asks
//!   the [`CrashWatch`] (see [`crate::crash`]), which may call it a request
//!   of death ([`ShardCallOutcome::RequestOfDeath`]) or forbid a retry.
//!
//! Hedges and retries both spend from the root's [`HedgeBudget`]; without a
//! token the hedge or retry is not sent and counted as suppressed.

use std::error::Error as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fanout_proto::Any;
use fanout_proto::retry::is_retryable;
use fanout_proto::status::is_expired_timeout;
use fanout_proto::v1::{ExecuteRequest, ExecuteResponse};
use fanout_runtime::metrics::Counter;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::time::Instant;
use tonic::{Code, Status};
use tracing::Instrument;

use crate::crash::{CrashVerdict, CrashWatch, Fingerprint, LostCall};
use crate::hedge::{HedgeBudget, HedgePolicy, HedgeSettings};
use crate::replica::{Replica, ReplicaSet};
use crate::selector::{AttemptFailure, AttemptRecorder};

/// Which of a request's shard calls: the fan-out (phase one, the calls
/// `ShardTiming` reports) or the fetch of stored fields (phase two).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardPhase {
    FanOut,
    Fetch,
}

impl ShardPhase {
    pub(crate) fn label(self) -> &'static str {
        match self {
            ShardPhase::FanOut => "fanout",
            ShardPhase::Fetch => "fetch",
        }
    }
}

/// The lifetime counts of one shard in one phase; a shard call adds to them
/// as it adds to its own `ShardCallCounters`.
#[derive(Debug, Clone)]
pub struct ShardCallMetrics {
    /// First attempt to the answer used, of answered calls.
    pub latency: fanout_runtime::metrics::Histogram,
    /// How the shard's part of requests ended (see [`ShardCallCounters::ended`]).
    pub answered: Counter,
    pub failed: Counter,
    pub timed_out: Counter,
    pub not_needed: Counter,
    pub primary_attempts: Counter,
    pub hedge_attempts: Counter,
    pub retry_attempts: Counter,
    pub hedges: Counter,
    pub hedges_won: Counter,
    pub hedges_suppressed: Counter,
    pub retries: Counter,
}

/// How one shard call hedges: the request's policy and the root's settings
/// and budget.
#[derive(Clone, Copy)]
pub struct ShardHedging<'a> {
    pub policy: HedgePolicy,
    pub settings: &'a HedgeSettings,
    pub budget: &'a HedgeBudget,
}

/// What happened during a shard call, readable even when it was cancelled.
/// With [`reporting_to`](Self::reporting_to), every count also goes to the
/// root's lifetime metrics of the shard, as it happens.
#[derive(Debug, Default)]
pub struct ShardCallCounters {
    /// Attempts sent: primary + hedges + retries.
    pub attempts: AtomicU32,
    pub hedges: AtomicU32,
    /// Hedges whose answer was the one used.
    pub hedges_won: AtomicU32,
    /// Hedges and retries not sent for want of budget.
    pub hedges_suppressed: AtomicU32,
    pub retries: AtomicU32,
    metrics: Option<ShardCallMetrics>,
}

impl ShardCallCounters {
    /// Counters whose counts also go to `metrics`.
    pub fn reporting_to(metrics: Option<ShardCallMetrics>) -> ShardCallCounters {
        ShardCallCounters {
            metrics,
            ..ShardCallCounters::default()
        }
    }

    fn add(counter: &AtomicU32) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn attempt_sent(&self, kind: AttemptKind) {
        Self::add(&self.attempts);
        if let Some(metrics) = &self.metrics {
            match kind {
                AttemptKind::Primary => metrics.primary_attempts.inc(),
                AttemptKind::Hedge => metrics.hedge_attempts.inc(),
                AttemptKind::Retry => metrics.retry_attempts.inc(),
            }
        }
    }

    /// Records an answered call's latency (first attempt to the answer used).
    pub(crate) fn answered_in(&self, latency: Duration) {
        if let Some(metrics) = &self.metrics {
            metrics.latency.observe(latency.as_secs_f64());
        }
    }

    /// Counts how the shard's part of a request ended.
    pub fn ended(&self, outcome: &crate::policy::ShardOutcome) {
        use crate::policy::ShardOutcome;
        if let Some(metrics) = &self.metrics {
            match outcome {
                ShardOutcome::Answered { .. } => metrics.answered.inc(),
                ShardOutcome::Failed { .. } => metrics.failed.inc(),
                ShardOutcome::TimedOut => metrics.timed_out.inc(),
                ShardOutcome::NotNeeded { .. } => metrics.not_needed.inc(),
            }
        }
    }

    /// Counts how a shard call of the fetch phase ended (no merger cuts
    /// a fetch off: answered, timed out, or failed).
    pub fn call_ended(&self, outcome: &ShardCallOutcome) {
        if let Some(metrics) = &self.metrics {
            match outcome {
                ShardCallOutcome::Answered(_) => metrics.answered.inc(),
                ShardCallOutcome::TimedOut => metrics.timed_out.inc(),
                ShardCallOutcome::Failed(_)
                | ShardCallOutcome::Rejected(_)
                | ShardCallOutcome::RequestOfDeath(_) => metrics.failed.inc(),
            }
        }
    }

    pub(crate) fn hedge_sent(&self) {
        Self::add(&self.hedges);
        if let Some(metrics) = &self.metrics {
            metrics.hedges.inc();
        }
    }

    pub(crate) fn hedge_won(&self) {
        Self::add(&self.hedges_won);
        if let Some(metrics) = &self.metrics {
            metrics.hedges_won.inc();
        }
    }

    pub(crate) fn suppressed(&self) {
        Self::add(&self.hedges_suppressed);
        if let Some(metrics) = &self.metrics {
            metrics.hedges_suppressed.inc();
        }
    }

    /// Writes the counts into the shard's `ShardTiming`, in the fields of
    /// `phase` (`attempts`, ... or `fetch_attempts`, ...).
    pub fn report_into(&self, timing: &mut fanout_proto::v1::ShardTiming, phase: ShardPhase) {
        let count = |counter: &AtomicU32| counter.load(Ordering::Relaxed);
        let fields = match phase {
            ShardPhase::FanOut => [
                &mut timing.attempts,
                &mut timing.hedges,
                &mut timing.hedges_won,
                &mut timing.hedges_suppressed,
                &mut timing.retries,
            ],
            ShardPhase::Fetch => [
                &mut timing.fetch_attempts,
                &mut timing.fetch_hedges,
                &mut timing.fetch_hedges_won,
                &mut timing.fetch_hedges_suppressed,
                &mut timing.fetch_retries,
            ],
        };
        let counts = [
            &self.attempts,
            &self.hedges,
            &self.hedges_won,
            &self.hedges_suppressed,
            &self.retries,
        ];
        for (field, counter) in fields.into_iter().zip(counts) {
            *field = count(counter);
        }
    }

    pub(crate) fn retry_sent(&self) {
        Self::add(&self.retries);
        if let Some(metrics) = &self.metrics {
            metrics.retries.inc();
        }
    }
}

/// The request a shard call belongs to, as the crash policy knows it.
#[derive(Clone, Copy)]
pub struct CrashContext<'a> {
    pub watch: &'a CrashWatch,
    pub fingerprint: Fingerprint,
}

/// One shard call to make.
pub struct ShardCall<'a> {
    pub replica_set: &'a ReplicaSet,
    /// The shard's members as the call starts (see [`ReplicaSet::members`]);
    /// replica indexes are positions in it.
    pub members: &'a [Arc<Replica>],
    pub payload: &'a Any,
    pub request_id: &'a str,
    pub deadline: Instant,
    /// Replica to try first (phase two goes back to the one that answered
    /// phase one); `None` lets the selector choose.
    pub preferred_replica: Option<usize>,
    pub hedging: ShardHedging<'a>,
    pub counters: &'a ShardCallCounters,
    /// `None`: a broken connection fails over at once.
    pub crash: Option<CrashContext<'a>>,
    /// Hedges wait until it opens (`None`: they go out at the hedge delay).
    pub hedge_gate: Option<&'a HedgeGate>,
}

/// Holds a request's hedges back until one of its shards has answered.
///
/// A hedge sends the request to a second replica of a shard while the first
/// is still working on it. If the request is one that kills the leaves it
/// reaches, the first replica may not have died yet when the hedge delay
/// is up, and the hedge would kill its sibling too: every shard would lose
/// two replicas. A request that has been answered by one shard has shown it
/// does not kill leaves (the canary requests of "The Tail at Scale"), so
/// the fan-out opens the gate on its first answer. Hedging is for the
/// straggling shard of a request whose other shards have answered, so the
/// gate seldom holds a hedge that could have helped; when no shard has
/// answered, every shard is slow, which hedging does not cure.
#[derive(Debug)]
pub struct HedgeGate {
    open: tokio::sync::watch::Sender<bool>,
}

impl HedgeGate {
    /// A gate that opens when [`open`](Self::open) is called.
    pub fn closed() -> HedgeGate {
        HedgeGate {
            open: tokio::sync::watch::Sender::new(false),
        }
    }

    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// Resolves once the gate is open.
    pub async fn opened(&self) {
        let mut open = self.open.subscribe();
        // The sender lives as long as `self`, so waiting cannot fail.
        let _ = open.wait_for(|open| *open).await;
    }
}

/// A replica's answer.
#[derive(Debug)]
pub struct ShardAnswer {
    pub response: ExecuteResponse,
    /// Who answered.
    pub replica: Arc<Replica>,
    /// 0 for the first attempt.
    pub attempt: u32,
    /// From the shard's first attempt to this answer.
    pub latency: Duration,
}

/// How a shard call ended.
#[derive(Debug)]
pub enum ShardCallOutcome {
    Answered(ShardAnswer),
    /// Every replica tried failed, or one failed in a way not worth retrying;
    /// the last status.
    Failed(Status),
    /// A leaf rejected the request itself: the caller's error, not the shard's.
    Rejected(Status),
    /// The deadline passed first.
    TimedOut,
    /// The request killed the replicas it reached (see [`crate::crash`]).
    RequestOfDeath(String),
}

impl ShardCallOutcome {
    /// As a `shard_call` span's `outcome`.
    pub fn name(&self) -> &'static str {
        match self {
            ShardCallOutcome::Answered(_) => "answered",
            ShardCallOutcome::Failed(_) => "failed",
            ShardCallOutcome::TimedOut => "timed_out",
            ShardCallOutcome::Rejected(_) => "rejected",
            ShardCallOutcome::RequestOfDeath(_) => "request_of_death",
        }
    }
}

pub(crate) enum AttemptError {
    TimedOut,
    /// The connection broke during the call: maybe the replica died.
    ConnectionLost,
    Retryable,
    RequestRejected,
    ShardFailed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttemptKind {
    Primary,
    Hedge,
    Retry,
}

impl AttemptKind {
    /// As an attempt span's `kind`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            AttemptKind::Primary => "primary",
            AttemptKind::Hedge => "hedge",
            AttemptKind::Retry => "retry",
        }
    }
}

/// The least wait before a hedge the budget refused asks it again.
const HEDGE_ASK_AGAIN_FLOOR: Duration = Duration::from_millis(1);

/// The attempts of one shard call, in the order they were sent.
struct Attempts<'a> {
    recorders: Vec<Option<AttemptRecorder<'a>>>,
    kinds: Vec<AttemptKind>,
    tried: Vec<usize>,
    /// Each attempt's span (disabled unless spans are exported), and
    /// whether its `outcome` is recorded; those still open when the shard
    /// call ends were cancelled.
    spans: Vec<(tracing::Span, bool)>,
}

impl Attempts<'_> {
    /// Records how attempt `index` ended: `won`, `lost` (overtaken by a
    /// later attempt's answer), `failed`, `rejected`, `timed_out`.
    fn close_span(&mut self, index: usize, outcome: &'static str, code: Option<Code>) {
        if let Some((span, closed)) = self.spans.get_mut(index)
            && !*closed
        {
            *closed = true;
            span.record("outcome", outcome);
            if let Some(code) = code {
                span.record("code", fanout_proto::status::code_name(code));
            }
        }
    }
}

impl Drop for Attempts<'_> {
    fn drop(&mut self) {
        for (span, closed) in &self.spans {
            if !*closed {
                span.record("outcome", "cancelled");
            }
        }
    }
}

/// Calls the shard, hedging and failing over between its replicas.
pub async fn call_shard(call: ShardCall<'_>) -> ShardCallOutcome {
    let members = call.members;
    call_shard_over(call, |replica_index, request| {
        execute_on(members, replica_index, request)
    })
    .await
}

/// One `Leaf/Execute` attempt on a real replica.
pub(crate) fn execute_on(
    members: &[Arc<Replica>],
    replica_index: usize,
    request: tonic::Request<ExecuteRequest>,
) -> impl Future<Output = Result<ExecuteResponse, Status>> + Send + 'static {
    let mut client = members[replica_index].leaf_client();
    async move {
        client
            .execute(request)
            .await
            .map(tonic::Response::into_inner)
    }
}

/// One attempt of a shard call, as both the hedged call and the tower
/// baseline send it: the request with the time left as its `grpc-timeout`,
/// and the call given up (DEADLINE_EXCEEDED) when the shard's deadline passes.
pub(crate) fn attempt<Fut>(
    shard_id: u32,
    payload: &Any,
    request_id: &str,
    attempt: u32,
    deadline: Instant,
    execute: impl FnOnce(tonic::Request<ExecuteRequest>) -> Fut,
) -> impl Future<Output = Result<ExecuteResponse, Status>>
where
    Fut: Future<Output = Result<ExecuteResponse, Status>>,
{
    let mut request = tonic::Request::new(ExecuteRequest {
        payload: Some(payload.clone()),
        shard_id,
        attempt,
        request_id: request_id.to_owned(),
    });
    request.set_timeout(deadline.saturating_duration_since(Instant::now()));
    fanout_runtime::trace_context::inject_current(request.metadata_mut());
    let call = execute(request);
    async move {
        match tokio::time::timeout_at(deadline, call).await {
            Ok(result) => result,
            Err(_elapsed) => Err(Status::deadline_exceeded("the shard deadline passed")),
        }
    }
}

/// [`call_shard`] over any transport: `execute(replica_index, request)`
/// makes one attempt (unit tests stand in for the leaves with it).
pub async fn call_shard_over<'a, F, Fut>(call: ShardCall<'a>, execute: F) -> ShardCallOutcome
where
    F: Fn(usize, tonic::Request<ExecuteRequest>) -> Fut,
    Fut: Future<Output = Result<ExecuteResponse, Status>>,
{
    let ShardCall {
        replica_set,
        members,
        payload,
        request_id,
        deadline,
        preferred_replica,
        hedging,
        counters,
        crash,
        hedge_gate,
    } = call;
    let shard_id = replica_set.shard_id;
    let selector = &replica_set.selector;
    let replica_count = members.len();
    let first_attempt_at = Instant::now();
    let hedge_delay = hedging.settings.hedge_delay(hedging.policy, |percentile| {
        selector.latency_percentile(percentile)
    });
    let mut attempts = Attempts {
        recorders: Vec::with_capacity(replica_count),
        kinds: Vec::with_capacity(replica_count),
        tried: Vec::with_capacity(replica_count),
        spans: Vec::with_capacity(replica_count),
    };
    let hedge_delay_ms = hedge_delay.map(|delay| delay.as_secs_f64() * 1e3);
    let mut in_flight = FuturesUnordered::new();
    let mut last_failure: Option<Status> = None;
    // A non-retryable failure stops new attempts (those running may still win).
    let mut may_retry = true;
    // Calls lost with their replica, awaiting the crash policy's verdict.
    let mut lost_calls: Vec<LostCall> = Vec::new();

    let preferred = preferred_replica.filter(|index| *index < replica_count);
    let Some(primary) = preferred.or_else(|| selector.choose(members, &[])) else {
        return ShardCallOutcome::Failed(Status::unavailable(no_replicas_message(replica_set)));
    };
    if deadline <= Instant::now() {
        return ShardCallOutcome::TimedOut;
    }
    hedging.budget.record_primary_call();
    let execute = &execute;
    let send = |attempts: &mut Attempts<'a>, replica_index: usize, kind: AttemptKind| {
        let attempt = attempts.recorders.len() as u32;
        attempts.tried.push(replica_index);
        attempts.kinds.push(kind);
        attempts
            .recorders
            .push(Some(selector.begin_attempt(members, replica_index)));
        counters.attempt_sent(kind);
        let replica = &members[replica_index];
        let span = tracing::debug_span!(
            "shard_attempt",
            shard_id,
            attempt,
            kind = kind.name(),
            replica = %replica.address,
            hedge_delay_ms,
            outcome = tracing::field::Empty,
            code = tracing::field::Empty,
            otel.kind = "client",
        );
        attempts.spans.push((span.clone(), false));
        // Built in the span, so that its context goes into the metadata.
        let call = span.in_scope(|| {
            self::attempt(
                shard_id,
                payload,
                request_id,
                attempt,
                deadline,
                move |request| execute(replica_index, request),
            )
        });
        async move { (attempt, call.await) }.instrument(span)
    };
    in_flight.push(send(&mut attempts, primary, AttemptKind::Primary));
    let mut next_hedge_at = hedge_delay.map(|delay| Instant::now() + delay);
    // A primary sent to a suspect replica (on probation, or past it and not
    // yet answered well: its probe, or a choice made while its probe is
    // out) gets the hedge delay to answer, as any primary, but its hedge is
    // never refused by the budget, so that a replica still hung cannot cost
    // the request its deadline. Bounded: a suspect replica that straggles
    // again goes back on probation for twice as long.
    let mut covering_a_suspect = members[primary].state().is_suspect();
    // Whether the budget refused this call's hedge once (it is asked again
    // each hedge delay; only the first refusal is counted).
    let mut hedge_refused = false;

    loop {
        if in_flight.is_empty() {
            // Every attempt so far failed retryably: fail over, if allowed.
            let failure = last_failure.take().unwrap_or_else(|| {
                Status::unavailable(format!("shard {shard_id} has no replica left"))
            });
            if !may_retry {
                return ShardCallOutcome::Failed(failure);
            }
            // A call lost with its replica fails over whatever the budget
            // holds: the budget caps what hedging and retrying add to a
            // working cluster, and these are bounded by the calls that were
            // in flight on replicas that died.
            let mut failing_over_a_lost_call = false;
            if let Some(crash) = crash.filter(|_| !lost_calls.is_empty()) {
                match settle_crash_verdict(crash.watch, &lost_calls, deadline).await {
                    None => return ShardCallOutcome::TimedOut,
                    Some(CrashVerdict::FailOver) => {
                        lost_calls.clear();
                        failing_over_a_lost_call = true;
                    }
                    Some(CrashVerdict::DoNotRetry(reason)) => {
                        return ShardCallOutcome::Failed(Status::unavailable(reason));
                    }
                    Some(CrashVerdict::RequestOfDeath(message)) => {
                        return ShardCallOutcome::RequestOfDeath(message);
                    }
                }
            }
            let Some(replica_index) = selector.choose(members, &attempts.tried) else {
                return ShardCallOutcome::Failed(failure);
            };
            if deadline <= Instant::now() {
                return ShardCallOutcome::TimedOut;
            }
            if !failing_over_a_lost_call && !hedging.budget.try_spend() {
                counters.suppressed();
                tracing::debug!(shard_id, "retry suppressed: the hedge budget is empty");
                return ShardCallOutcome::Failed(failure);
            }
            counters.retry_sent();
            in_flight.push(send(&mut attempts, replica_index, AttemptKind::Retry));
            next_hedge_at = hedge_delay.map(|delay| Instant::now() + delay);
            continue;
        }
        let hedges_sent = attempts
            .kinds
            .iter()
            .filter(|kind| **kind == AttemptKind::Hedge)
            .count();
        let hedge_due = next_hedge_at.filter(|_| {
            may_retry && hedges_sent + 1 < replica_count && attempts.tried.len() < replica_count
        });
        let hedge_timer = async {
            match hedge_due {
                Some(at) => {
                    hedging.settings.timer.sleep_until(at).await;
                    if let Some(gate) = hedge_gate {
                        gate.opened().await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            Some((attempt, result)) = in_flight.next() => {
                let index = attempt as usize;
                // Each attempt's recorder is taken exactly once, here.
                let Some(recorder) = attempts.recorders[index].take() else {
                    continue;
                };
                let replica_index = recorder.replica_index();
                let status = match result {
                    Ok(response) => {
                        let started_at = recorder.started_at();
                        recorder.succeeded();
                        attempts.close_span(index, "won", None);
                        // Attempts started before this one were overtaken.
                        for other_index in 0..attempts.recorders.len() {
                            let other = &mut attempts.recorders[other_index];
                            if other.as_ref().is_some_and(|other| other.started_at() < started_at)
                                && let Some(other) = other.take()
                            {
                                other.failed(AttemptFailure::Overtaken);
                                attempts.close_span(other_index, "lost", None);
                            }
                        }
                        if attempts.kinds[index] == AttemptKind::Hedge {
                            counters.hedge_won();
                        }
                        return ShardCallOutcome::Answered(ShardAnswer {
                            response,
                            replica: Arc::clone(&members[replica_index]),
                            attempt,
                            latency: first_attempt_at.elapsed(),
                        });
                    }
                    Err(status) => status,
                };
                let code = status.code();
                let message = status.message();
                match classify(&status, deadline) {
                    AttemptError::TimedOut => {
                        recorder.failed(AttemptFailure::TimedOut);
                        attempts.close_span(index, "timed_out", Some(code));
                        return ShardCallOutcome::TimedOut;
                    }
                    AttemptError::ConnectionLost => {
                        let replica = &members[replica_index].address;
                        let failure = transport_failure_status(replica, &status);
                        tracing::debug!(shard_id, attempt, message = failure.message(), "attempt lost with its replica");
                        if let Some(crash) = crash.filter(|crash| crash.watch.settings().enabled) {
                            let lost = LostCall {
                                shard_id,
                                replica: replica.clone(),
                                fingerprint: crash.fingerprint,
                                sent_at: recorder.started_at(),
                                lost_at: Instant::now(),
                            };
                            crash.watch.record_loss(lost.clone());
                            lost_calls.push(lost);
                        }
                        recorder.failed(AttemptFailure::Retryable);
                        attempts.close_span(index, "failed", Some(code));
                        last_failure = Some(failure);
                    }
                    AttemptError::Retryable => {
                        recorder.failed(AttemptFailure::Retryable);
                        attempts.close_span(index, "failed", Some(code));
                        tracing::debug!(shard_id, attempt, ?code, message, "attempt failed; retryable");
                        last_failure = Some(if is_transport_failure(&status) {
                            transport_failure_status(&members[replica_index].address, &status)
                        } else {
                            status
                        });
                    }
                    AttemptError::RequestRejected => {
                        recorder.failed(AttemptFailure::Answered);
                        attempts.close_span(index, "rejected", Some(code));
                        tracing::debug!(shard_id, attempt, ?code, message, "the leaf rejected the request");
                        return ShardCallOutcome::Rejected(status);
                    }
                    AttemptError::ShardFailed => {
                        recorder.failed(AttemptFailure::Answered);
                        attempts.close_span(index, "failed", Some(code));
                        tracing::debug!(shard_id, attempt, ?code, message, "attempt failed; not retryable");
                        if in_flight.is_empty() {
                            return ShardCallOutcome::Failed(status);
                        }
                        may_retry = false;
                        last_failure = Some(status);
                    }
                }
            }
            () = hedge_timer => {
                let due = next_hedge_at.unwrap_or_else(Instant::now);
                let lateness = Instant::now().saturating_duration_since(due);
                next_hedge_at = None;
                let Some(replica_index) = selector.best_untried(members, &attempts.tried) else {
                    continue;
                };
                let covers_a_suspect = std::mem::take(&mut covering_a_suspect);
                let spent = covers_a_suspect
                    || if hedge_refused {
                        hedging.budget.try_spend_on_hedge_again()
                    } else {
                        hedging.budget.try_spend_on_hedge()
                    };
                if !spent {
                    if !hedge_refused {
                        hedge_refused = true;
                        counters.suppressed();
                        tracing::debug!(shard_id, "hedge suppressed: the hedge budget is empty");
                    }
                    // Asked again a hedge delay later, when the budget may
                    // have tokens again: a replica that hangs while the
                    // budget is spent must not cost the call its deadline.
                    next_hedge_at = hedge_delay
                        .map(|delay| Instant::now() + delay.max(HEDGE_ASK_AGAIN_FLOOR));
                    continue;
                }
                tracing::debug!(shard_id, replica_index, lateness_micros = lateness.as_micros() as u64, "hedging");
                counters.hedge_sent();
                in_flight.push(send(&mut attempts, replica_index, AttemptKind::Hedge));
                next_hedge_at = hedge_delay.map(|delay| Instant::now() + delay);
            }
            () = tokio::time::sleep_until(deadline) => {
                for index in 0..attempts.recorders.len() {
                    if let Some(recorder) = attempts.recorders[index].take() {
                        recorder.failed(AttemptFailure::TimedOut);
                        attempts.close_span(index, "timed_out", None);
                    }
                }
                return ShardCallOutcome::TimedOut;
            }
        }
    }
}

/// Why a shard has no replica to call: none listed, or none found yet by
/// its `dns:` names.
pub(crate) fn no_replicas_message(replica_set: &ReplicaSet) -> String {
    let shard_id = replica_set.shard_id;
    if replica_set.has_dns_sources() {
        let names: Vec<String> = replica_set
            .sources
            .iter()
            .map(ToString::to_string)
            .collect();
        format!(
            "shard {shard_id} has no replicas: {} resolved to no address yet",
            names.join(", ")
        )
    } else {
        format!("shard {shard_id} has no replicas")
    }
}

/// Waits until the crash events of the calls lost with their replicas are
/// over (no replica lost for `settle`, so every replica the event took is
/// known), then asks for the verdict on them; `None` if the deadline comes
/// first. The worst verdict of the lost calls wins.
async fn settle_crash_verdict(
    watch: &CrashWatch,
    lost_calls: &[LostCall],
    deadline: Instant,
) -> Option<CrashVerdict> {
    loop {
        let event_end = lost_calls.iter().map(|lost| watch.event_end(lost)).max()?;
        let settled = event_end + watch.settings().settle;
        if settled > deadline {
            tokio::time::sleep_until(deadline).await;
            return None;
        }
        if settled <= Instant::now() {
            break;
        }
        tokio::time::sleep_until(settled).await;
    }
    let mut verdict = CrashVerdict::FailOver;
    for lost in lost_calls {
        match watch.verdict(lost) {
            CrashVerdict::FailOver => {}
            death @ CrashVerdict::RequestOfDeath(_) => return Some(death),
            no_retry @ CrashVerdict::DoNotRetry(_) => verdict = no_retry,
        }
    }
    Some(verdict)
}

pub(crate) fn classify(status: &Status, deadline: Instant) -> AttemptError {
    let code = status.code();
    if is_expired_timeout(status)
        || code == Code::DeadlineExceeded
        || (code == Code::Cancelled && Instant::now() >= deadline)
    {
        return AttemptError::TimedOut;
    }
    if is_connection_lost(status) {
        return AttemptError::ConnectionLost;
    }
    if is_retryable(status) || is_transport_failure(status) {
        return AttemptError::Retryable;
    }
    match code {
        Code::InvalidArgument
        | Code::OutOfRange
        | Code::PermissionDenied
        | Code::Unauthenticated => AttemptError::RequestRejected,
        _ => AttemptError::ShardFailed,
    }
}

/// Whether the status was made on this side of the wire from a transport
/// error (connection refused, reset, closed mid-call) rather than received
/// from the leaf: a status from the wire carries no source error.
fn is_transport_failure(status: &Status) -> bool {
    status.source().is_some() && !is_expired_timeout(status)
}

/// Whether a transport failure broke a call already under way, rather than
/// failing to connect (a `tonic::ConnectError` in the chain: the replica was
/// down before this call, which says nothing about the call).
fn is_connection_lost(status: &Status) -> bool {
    is_transport_failure(status)
        && !source_chain(status).any(|error| error.is::<tonic::ConnectError>())
}

fn source_chain(status: &Status) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
    std::iter::successors(status.source(), |error| (*error).source())
}

/// A transport failure as the coverage reports it: UNAVAILABLE (tonic says
/// UNKNOWN "transport error" for some), naming the replica and the
/// innermost cause.
fn transport_failure_status(replica: &str, status: &Status) -> Status {
    let cause = source_chain(status)
        .last()
        .map(|error| error.to_string())
        .filter(|cause| !status.message().contains(cause.as_str()));
    let what = if is_connection_lost(status) {
        "connection lost during the call"
    } else {
        "cannot connect"
    };
    let message = match cause {
        Some(cause) => format!("replica {replica}: {what}: {}: {cause}", status.message()),
        None => format!("replica {replica}: {what}: {}", status.message()),
    };
    Status::unavailable(fanout_proto::status::bounded(message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn far_deadline() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn classifies_statuses_from_the_wire() {
        let deadline = far_deadline();
        assert!(matches!(
            classify(&Status::unavailable("down"), deadline),
            AttemptError::Retryable
        ));
        assert!(matches!(
            classify(&Status::aborted("x"), deadline),
            AttemptError::Retryable
        ));
        assert!(matches!(
            classify(&Status::invalid_argument("bad query"), deadline),
            AttemptError::RequestRejected
        ));
        assert!(matches!(
            classify(&Status::internal("bug"), deadline),
            AttemptError::ShardFailed
        ));
        assert!(matches!(
            classify(&Status::deadline_exceeded("late"), deadline),
            AttemptError::TimedOut
        ));
        assert!(matches!(
            classify(&Status::cancelled("x"), deadline),
            AttemptError::ShardFailed
        ));
        let retryable_internal = fanout_proto::retry::with_retryable(Status::internal("x"), true);
        assert!(matches!(
            classify(&retryable_internal, deadline),
            AttemptError::Retryable
        ));
    }

    #[test]
    fn an_expired_tonic_timeout_is_a_time_out_and_a_transport_error_is_retryable() {
        let deadline = far_deadline();
        let expired = Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(expired.code(), Code::Cancelled);
        assert!(is_expired_timeout(&expired));
        assert!(matches!(
            classify(&expired, deadline),
            AttemptError::TimedOut
        ));

        let mut reset = Status::unknown("connection closed before message completed");
        reset.set_source(Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert!(is_transport_failure(&reset));
        assert!(matches!(
            classify(&reset, deadline),
            AttemptError::ConnectionLost
        ));
        let described = transport_failure_status("http://127.0.0.1:9", &reset);
        assert_eq!(described.code(), Code::Unavailable);
        assert!(
            described
                .message()
                .starts_with("replica http://127.0.0.1:9: connection lost during the call"),
            "{}",
            described.message()
        );

        let refused = Status::from_error(Box::new(tonic::ConnectError(Box::new(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        ))));
        assert!(matches!(
            classify(&refused, deadline),
            AttemptError::Retryable
        ));
        let described = transport_failure_status("http://127.0.0.1:9", &refused);
        assert!(
            described.message().contains("cannot connect"),
            "{}",
            described.message()
        );
    }

    /// Paused-clock tests of hedging over fake leaves: each replica answers
    /// after its own latency (or fails), and notes when it was called and
    /// whether its call was dropped before answering.
    mod hedging {
        use super::super::*;
        use crate::hedge::HedgeTimer;
        use crate::metrics::RootMetrics;
        use std::sync::Mutex;

        #[derive(Clone, Copy)]
        enum Fake {
            AnswersAfter(Duration),
            Unavailable,
        }

        #[derive(Default)]
        struct Log {
            calls: Mutex<Vec<(usize, Duration)>>,
            dropped: Mutex<Vec<usize>>,
        }

        struct DropNote<'a>(&'a Log, usize, bool);
        impl Drop for DropNote<'_> {
            fn drop(&mut self) {
                if !self.2 {
                    self.0.dropped.lock().unwrap().push(self.1);
                }
            }
        }

        fn settings(policy: HedgePolicy) -> (HedgeSettings, HedgePolicy) {
            let settings = HedgeSettings {
                timer: HedgeTimer::Tokio,
                ..HedgeSettings::default()
            };
            (settings, policy)
        }

        struct Run {
            outcome: ShardCallOutcome,
            counters: ShardCallCounters,
            calls: Vec<(usize, Duration)>,
            dropped: Vec<usize>,
        }

        async fn run(
            replicas: &ReplicaSet,
            fakes: &[Fake],
            policy: HedgePolicy,
            budget: &HedgeBudget,
        ) -> Run {
            let (settings, policy) = settings(policy);
            let log = Log::default();
            let metrics = RootMetrics::new(1);
            let counters =
                ShardCallCounters::reporting_to(metrics.shard_call(0, ShardPhase::FanOut));
            let payload = Any::default();
            let started = Instant::now();
            let members = replicas.members();
            let call = ShardCall {
                replica_set: replicas,
                members: &members,
                payload: &payload,
                request_id: "r",
                deadline: started + Duration::from_secs(1),
                preferred_replica: Some(0),
                hedging: ShardHedging {
                    policy,
                    settings: &settings,
                    budget,
                },
                counters: &counters,
                crash: None,
                hedge_gate: None,
            };
            let log_ref = &log;
            let outcome = call_shard_over(call, |replica, _request| {
                log_ref
                    .calls
                    .lock()
                    .unwrap()
                    .push((replica, started.elapsed()));
                let fake = fakes[replica];
                async move {
                    let mut note = DropNote(log_ref, replica, false);
                    let result = match fake {
                        Fake::AnswersAfter(latency) => {
                            tokio::time::sleep(latency).await;
                            Ok(ExecuteResponse::default())
                        }
                        Fake::Unavailable => Err(Status::unavailable("down")),
                    };
                    note.2 = true;
                    result
                }
            })
            .await;
            let calls = log.calls.lock().unwrap().clone();
            let dropped = log.dropped.lock().unwrap().clone();
            assert_metrics_mirror(&metrics, &counters);
            Run {
                outcome,
                counters,
                calls,
                dropped,
            }
        }

        /// The root's lifetime metrics got exactly the call's counts.
        fn assert_metrics_mirror(metrics: &RootMetrics, counters: &ShardCallCounters) {
            let shard = metrics.shard_call(0, ShardPhase::FanOut).unwrap();
            let attempts = shard.primary_attempts.get()
                + shard.hedge_attempts.get()
                + shard.retry_attempts.get();
            assert_eq!(attempts, u64::from(count(&counters.attempts)));
            assert_eq!(shard.primary_attempts.get(), 1);
            assert_eq!(shard.hedges.get(), u64::from(count(&counters.hedges)));
            assert_eq!(shard.hedge_attempts.get(), shard.hedges.get());
            assert_eq!(
                shard.hedges_won.get(),
                u64::from(count(&counters.hedges_won))
            );
            assert_eq!(
                shard.hedges_suppressed.get(),
                u64::from(count(&counters.hedges_suppressed))
            );
            assert_eq!(shard.retries.get(), u64::from(count(&counters.retries)));
            assert_eq!(shard.retry_attempts.get(), shard.retries.get());
        }

        fn count(counter: &AtomicU32) -> u32 {
            counter.load(Ordering::Relaxed)
        }

        fn ms(millis: u64) -> Duration {
            Duration::from_millis(millis)
        }

        #[tokio::test(start_paused = true)]
        async fn a_hedge_goes_out_exactly_at_the_delay_and_the_winner_cancels_the_loser() {
            let replicas = ReplicaSet::for_tests(2);
            let budget = HedgeBudget::new(5.0, 10.0);
            let fakes = [Fake::AnswersAfter(ms(100)), Fake::AnswersAfter(ms(3))];
            let run = run(&replicas, &fakes, HedgePolicy::Fixed(ms(10)), &budget).await;
            assert_eq!(run.calls, vec![(0, ms(0)), (1, ms(10))]);
            let ShardCallOutcome::Answered(answer) = run.outcome else {
                panic!("{:?}", run.outcome);
            };
            assert_eq!(
                (answer.replica.address.as_str(), answer.attempt),
                ("http://127.0.0.1:2", 1)
            );
            assert_eq!(answer.latency, ms(13));
            assert_eq!(run.dropped, vec![0], "the loser's call was dropped");
            assert_eq!(count(&run.counters.hedges), 1);
            assert_eq!(count(&run.counters.hedges_won), 1);
            assert_eq!(count(&run.counters.attempts), 2);
            // The loser was overtaken: its lower bound (13 ms) is recorded.
            assert!(
                replicas.members()[0]
                    .state()
                    .cost(replicas.selector.options())
                    >= 13e6,
                "{}",
                replicas.members()[0]
                    .state()
                    .cost(replicas.selector.options())
            );
        }

        #[tokio::test(start_paused = true)]
        async fn no_hedge_before_the_delay() {
            let replicas = ReplicaSet::for_tests(2);
            let budget = HedgeBudget::new(5.0, 10.0);
            let fakes = [Fake::AnswersAfter(ms(9)), Fake::AnswersAfter(ms(1))];
            let run = run(&replicas, &fakes, HedgePolicy::Fixed(ms(10)), &budget).await;
            assert_eq!(run.calls, vec![(0, ms(0))]);
            assert!(
                matches!(run.outcome, ShardCallOutcome::Answered(ref a) if a.replica.address == "http://127.0.0.1:1")
            );
            assert_eq!(count(&run.counters.hedges), 0);
            assert_eq!(budget.spent(), 0);

            let off = run_off(&replicas, &budget).await;
            assert_eq!(off, vec![(0, ms(0))], "no hedge when hedging is off");
        }

        async fn run_off(replicas: &ReplicaSet, budget: &HedgeBudget) -> Vec<(usize, Duration)> {
            let fakes = [Fake::AnswersAfter(ms(200)), Fake::AnswersAfter(ms(1))];
            run(replicas, &fakes, HedgePolicy::Off, budget).await.calls
        }

        #[tokio::test(start_paused = true)]
        async fn up_to_r_minus_1_hedges_each_to_a_replica_not_yet_tried() {
            let replicas = ReplicaSet::for_tests(3);
            let budget = HedgeBudget::new(5.0, 10.0);
            let fakes = [Fake::AnswersAfter(ms(100)); 3];
            let run = run(&replicas, &fakes, HedgePolicy::Fixed(ms(10)), &budget).await;
            let mut called: Vec<usize> = run.calls.iter().map(|(replica, _)| *replica).collect();
            assert_eq!(run.calls[1].1, ms(10));
            assert_eq!(run.calls[2].1, ms(20));
            called.sort();
            assert_eq!(called, vec![0, 1, 2]);
            assert_eq!(count(&run.counters.hedges), 2);
            assert_eq!(
                count(&run.counters.hedges_won),
                0,
                "the primary answered first"
            );
            let ShardCallOutcome::Answered(answer) = run.outcome else {
                panic!("{:?}", run.outcome);
            };
            assert_eq!((answer.attempt, answer.latency), (0, ms(100)));
            let mut dropped = run.dropped.clone();
            dropped.sort();
            assert_eq!(dropped, vec![1, 2]);
        }

        #[tokio::test(start_paused = true)]
        async fn an_empty_budget_suppresses_hedges_and_retries() {
            let replicas = ReplicaSet::for_tests(2);
            let budget = HedgeBudget::new(0.0, 0.0);
            assert!(budget.try_spend(), "the one starting token");
            let fakes = [Fake::AnswersAfter(ms(50)), Fake::AnswersAfter(ms(1))];
            let first = run(&replicas, &fakes, HedgePolicy::Fixed(ms(10)), &budget).await;
            assert_eq!(first.calls, vec![(0, ms(0))]);
            assert_eq!(count(&first.counters.hedges_suppressed), 1);
            assert!(
                matches!(first.outcome, ShardCallOutcome::Answered(ref a) if a.latency == ms(50))
            );

            let fakes = [Fake::Unavailable, Fake::AnswersAfter(ms(1))];
            let run = run(&replicas, &fakes, HedgePolicy::Off, &budget).await;
            assert!(
                matches!(run.outcome, ShardCallOutcome::Failed(_)),
                "{:?}",
                run.outcome
            );
            assert_eq!(count(&run.counters.hedges_suppressed), 1);
            assert_eq!(count(&run.counters.retries), 0);
        }

        #[tokio::test(start_paused = true)]
        async fn a_refused_hedge_asks_again_and_goes_out_once_the_budget_refills() {
            let replicas = ReplicaSet::for_tests(2);
            // 10 tokens a second, none left: a hedge needs 1 above the
            // retries' reserve of 2, which the floor refills in 300 ms.
            let budget = HedgeBudget::new(0.0, 10.0);
            while budget.try_spend() {}
            let refusals_before = budget.suppressed();
            let fakes = [Fake::AnswersAfter(ms(5000)), Fake::AnswersAfter(ms(1))];
            let run = run(&replicas, &fakes, HedgePolicy::Fixed(ms(10)), &budget).await;
            assert_eq!(run.calls.len(), 2, "{:?}", run.calls);
            let hedged_at = run.calls[1].1;
            assert!(
                (ms(300)..=ms(310)).contains(&hedged_at),
                "the hedge went out at {hedged_at:?}, not when the budget refilled"
            );
            assert!(
                matches!(run.outcome, ShardCallOutcome::Answered(ref a) if a.latency == hedged_at + ms(1)),
                "{:?}",
                run.outcome
            );
            // Refused once, asked again every delay: one suppression.
            assert_eq!(count(&run.counters.hedges_suppressed), 1);
            assert_eq!(budget.suppressed() - refusals_before, 1);
            assert_eq!(count(&run.counters.hedges), 1);
        }

        #[tokio::test(start_paused = true)]
        async fn a_probe_is_hedged_even_when_the_budget_is_empty() {
            let replicas = ReplicaSet::for_tests(2);
            let members = replicas.members();
            // Replica 0 straggles three times: on probation.
            for _ in 0..3 {
                let attempt = replicas.selector.begin_attempt(&members, 0);
                tokio::time::advance(ms(1)).await;
                attempt.failed(AttemptFailure::Overtaken);
            }
            assert!(members[0].state().is_on_probation());
            // Its probation ends: the next choice probes it.
            tokio::time::advance(ms(1001)).await;
            assert_eq!(replicas.selector.choose(&members, &[]), Some(0));
            let budget = HedgeBudget::new(0.0, 0.0);
            assert!(budget.try_spend(), "the one starting token");

            // Still hung: the probe's request is hedged at the delay anyway.
            let fakes = [Fake::AnswersAfter(ms(5000)), Fake::AnswersAfter(ms(1))];
            let probed = run(&replicas, &fakes, HedgePolicy::Fixed(ms(10)), &budget).await;
            assert_eq!(probed.calls, vec![(0, ms(0)), (1, ms(10))]);
            assert!(
                matches!(probed.outcome, ShardCallOutcome::Answered(ref a) if a.latency == ms(11)),
                "{:?}",
                probed.outcome
            );
            assert_eq!(count(&probed.counters.hedges_suppressed), 0);

            // An ordinary primary still gets no hedge from an empty budget.
            let fakes = [Fake::AnswersAfter(ms(1)), Fake::AnswersAfter(ms(50))];
            let ordinary = ReplicaSet::for_tests(2);
            let run = run(
                &ordinary,
                &[fakes[1], fakes[0]],
                HedgePolicy::Fixed(ms(10)),
                &budget,
            )
            .await;
            assert_eq!(run.calls, vec![(0, ms(0))]);
            assert_eq!(count(&run.counters.hedges_suppressed), 1);
        }

        #[tokio::test(start_paused = true)]
        async fn a_retryable_failure_is_retried_on_another_replica_within_budget() {
            let replicas = ReplicaSet::for_tests(2);
            let budget = HedgeBudget::new(5.0, 10.0);
            let fakes = [Fake::Unavailable, Fake::AnswersAfter(ms(2))];
            let run = run(&replicas, &fakes, HedgePolicy::Adaptive, &budget).await;
            assert_eq!(run.calls, vec![(0, ms(0)), (1, ms(0))]);
            assert_eq!(count(&run.counters.retries), 1);
            assert_eq!(budget.spent(), 1);
            assert!(
                matches!(run.outcome, ShardCallOutcome::Answered(ref a) if a.replica.address == "http://127.0.0.1:2")
            );
        }

        #[tokio::test(start_paused = true)]
        async fn the_adaptive_delay_follows_the_shard_percentile() {
            let replicas = ReplicaSet::for_tests(2);
            let budget = HedgeBudget::new(100.0, 1000.0);
            // Before enough samples the delay is the ceiling (500 ms).
            let fakes = [Fake::AnswersAfter(ms(3)); 2];
            for _ in 0..40 {
                run(&replicas, &fakes, HedgePolicy::Adaptive, &budget).await;
            }
            let p95 = replicas.selector.latency_percentile(95.0).unwrap();
            assert!(
                (ms(3)..=Duration::from_micros(3_050)).contains(&p95),
                "{p95:?}"
            );
            let fakes = [Fake::AnswersAfter(ms(5)), Fake::AnswersAfter(ms(3))];
            let run = run(&replicas, &fakes, HedgePolicy::Adaptive, &budget).await;
            // The paused tokio timer fires on the next millisecond tick.
            let hedged_at = run.calls[1].1;
            assert!(
                hedged_at >= p95 && hedged_at <= p95 + ms(1),
                "{hedged_at:?}"
            );
        }
    }
}
