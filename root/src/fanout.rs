//! Scatter and streaming merge: one call per shard (each failing over between
//! its replicas), all in flight at once; each answer goes into the merge the
//! moment it arrives. The fan-out ends when every shard has ended, when the
//! merger says it has enough, or at the deadline; shards still running are
//! cancelled by dropping their calls (which resets their HTTP/2 streams).
//! Then the coverage policy decides, and the merge is finished.

use fanout_proto::Any;
use fanout_proto::v1::{
    Coverage, ExecuteResponse, MergeEnd, MergeStart, ShardPartial, ShardTiming,
};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::time::Instant;
use tonic::Code;
use tracing::Instrument;

use std::sync::Arc;

use fanout_merger::MergerSet;

use crate::crash::Fingerprint;
use crate::deadline::RequestDeadline;
use crate::error::RequestError;
use crate::hedge::HedgePolicy;
use crate::policy::{CoveragePolicy, ShardOutcome, coverage_of, enforce};
use crate::replica::Replica;
use crate::shard_call::{HedgeGate, ShardAnswer, ShardCallCounters, ShardCallOutcome, ShardPhase};
use crate::shard_caller::{ShardCalls, ShardRequest};
use crate::shards::Shards;

/// What a fan-out reaches: the shards, how to call them, and where the
/// merge runs.
#[derive(Debug)]
pub struct FanOut {
    pub shards: Arc<Shards>,
    pub calls: Arc<ShardCalls>,
    pub merger: MergerSet,
}

/// One request to fan out.
pub struct FanOutRequest<'a> {
    /// Sent unchanged to every shard and in the merger's start message.
    pub payload: Any,
    pub request_id: &'a str,
    /// When shards still running are given up.
    pub shard_deadline: Instant,
    /// When the whole request must be over (the merger's too).
    pub deadline: RequestDeadline,
    pub policy: CoveragePolicy,
    /// The request's own hedging policy, if it set one.
    pub hedge_policy: Option<HedgePolicy>,
}

/// What a fan-out produced.
#[derive(Debug)]
pub struct FanOutResult {
    /// The merger's result.
    pub merged: Any,
    pub coverage: Coverage,
    /// One per shard, by shard id.
    pub timings: Vec<ShardTiming>,
    /// Per shard id: who answered, for phase two.
    pub answers: Vec<Option<AnsweredShard>>,
    /// The request's identity for the crash policy, for phase two's calls.
    pub fingerprint: Fingerprint,
}

/// A shard that answered.
#[derive(Debug, Clone)]
pub struct AnsweredShard {
    pub replica: Arc<Replica>,
    /// The index generation its answer came from (`ExecuteResponse.generation`).
    pub generation: String,
}

/// Fans `request.payload` out to every shard and merges the answers.
pub async fn fan_out_and_merge(
    fan_out: &FanOut,
    request: FanOutRequest<'_>,
) -> Result<FanOutResult, RequestError> {
    let FanOut {
        shards,
        calls,
        merger,
    } = fan_out;
    let FanOutRequest {
        payload,
        request_id,
        shard_deadline,
        deadline,
        policy,
        hedge_policy,
    } = request;
    let fingerprint = Fingerprint::of(&payload);
    if let Some(refusal) = calls.crash.refusal(fingerprint) {
        return Err(RequestError::RequestOfDeath(refusal));
    }
    if deadline.has_passed() {
        // No leaf can answer in no time: spare them the work.
        return Err(RequestError::DeadlineExceeded(
            "the request's time limit is within the root's deadline margin: no shard was asked"
                .to_owned(),
        ));
    }
    let shard_count = shards.count();
    let remaining = deadline.remaining();
    let start = MergeStart {
        request: Some(payload.clone()),
        shard_count: shard_count as u32,
        timeout_micros: remaining.as_micros().max(1) as u64,
        request_id: request_id.to_owned(),
    };
    // The merge from its start to its result, each partial an event in it.
    let merge_span = tracing::debug_span!("merge", shard_count, otel.kind = "client");
    let open = merger
        .open(start, Some(remaining))
        .instrument(merge_span.clone());
    let mut session = match tokio::time::timeout_at(deadline.deadline, open).await {
        Ok(Ok(session)) => session,
        Ok(Err(status)) => return Err(RequestError::Merger(status)),
        Err(_) => {
            return Err(RequestError::DeadlineExceeded(
                "deadline exceeded before the merge could start".to_owned(),
            ));
        }
    };

    let fan_out_started = Instant::now();
    let counters: Vec<ShardCallCounters> = (0..shard_count)
        .map(|shard| calls.counters(shard, ShardPhase::FanOut))
        .collect();
    let hedge_gate = HedgeGate::closed();
    let mut pending: FuturesUnordered<_> = shards
        .sets
        .iter()
        .zip(&counters)
        .map(|(replica_set, counters)| {
            let request = ShardRequest {
                replica_set,
                payload: &payload,
                request_id,
                deadline: shard_deadline,
                preferred_replica: None,
                requested_policy: hedge_policy,
                counters,
                fingerprint,
                hedge_gate: (shard_count > 1).then_some(&hedge_gate),
                phase: ShardPhase::FanOut,
            };
            async move { (replica_set.shard_id, calls.call(request).await) }
        })
        .collect();

    let mut progress = FanOutProgress::new(shard_count, fan_out_started);
    progress.note_probation(shards);
    let mut enough_reason: Option<String> = None;
    let shard_deadline_passed = tokio::time::sleep_until(shard_deadline);
    tokio::pin!(shard_deadline_passed);

    while !pending.is_empty() {
        tokio::select! {
            biased;
            Some((shard_id, outcome)) = pending.next() => {
                let answer = match outcome {
                    ShardCallOutcome::Answered(answer) => {
                        hedge_gate.open();
                        answer
                    }
                    // The request itself is bad: answer now; dropping
                    // `pending` on return cancels the other shards.
                    ShardCallOutcome::Rejected(status) => {
                        return Err(RequestError::LeafRejected(status));
                    }
                    // Dropping `pending` cancels the other shards' calls too.
                    ShardCallOutcome::RequestOfDeath(message) => {
                        return Err(RequestError::RequestOfDeath(message));
                    }
                    ShardCallOutcome::Failed(status) => {
                        let message = status.message().to_owned();
                        progress.record_failure(shard_id, status.code(), message);
                        continue;
                    }
                    ShardCallOutcome::TimedOut => {
                        progress.record_outcome(shard_id, ShardOutcome::TimedOut);
                        continue;
                    }
                };
                let Some(partial) = progress.record_answer(shards, shard_id, answer) else {
                    continue;
                };
                tracing::debug!(parent: &merge_span, shard_id, "partial");
                let added = session.add_partial(partial).instrument(merge_span.clone());
                match tokio::time::timeout_at(deadline.deadline, added).await {
                    Ok(Ok(())) => {}
                    Ok(Err(status)) => return Err(RequestError::Merger(status)),
                    Err(_) => {
                        return Err(RequestError::DeadlineExceeded(
                            "deadline exceeded while the merger took a partial".to_owned(),
                        ));
                    }
                }
            }
            reason = session.enough() => {
                tracing::debug!(%reason, "the merger has enough; cancelling the other shards");
                enough_reason = Some(reason);
                break;
            }
            () = &mut shard_deadline_passed => {
                let running = pending.len();
                tracing::debug!(running, "deadline reached; giving up the shards still running");
                break;
            }
        }
    }
    drop(pending);

    let (outcomes, timings, answers) = progress.finish(&counters, enough_reason.as_deref());
    for (outcome, counters) in outcomes.iter().zip(&counters) {
        counters.ended(outcome);
    }
    log_extra_calls(request_id, &timings);
    enforce(&policy, &outcomes)?;
    let coverage = coverage_of(&outcomes, shards.doc_counts.total());
    let end = MergeEnd {
        coverage: Some(coverage.clone()),
    };
    let finish = session.finish(end).instrument(merge_span.clone());
    let merged = match tokio::time::timeout_at(deadline.deadline, finish).await {
        Ok(Ok(merged)) => merged,
        Ok(Err(status)) => return Err(RequestError::Merger(status)),
        Err(_) => {
            return Err(RequestError::DeadlineExceeded(
                "deadline exceeded before the merger answered".to_owned(),
            ));
        }
    };
    Ok(FanOutResult {
        merged,
        coverage,
        timings,
        answers,
        fingerprint,
    })
}

/// What the fan-out has seen of each shard so far.
struct FanOutProgress {
    started_at: Instant,
    outcomes: Vec<Option<ShardOutcome>>,
    timings: Vec<ShardTiming>,
    answers: Vec<Option<AnsweredShard>>,
}

impl FanOutProgress {
    fn new(shard_count: usize, started_at: Instant) -> Self {
        Self {
            started_at,
            outcomes: vec![None; shard_count],
            timings: (0..shard_count as u32)
                .map(|shard_id| ShardTiming {
                    shard_id,
                    ..ShardTiming::default()
                })
                .collect(),
            answers: vec![None; shard_count],
        }
    }

    /// How many replicas of each shard are on probation as the request starts.
    fn note_probation(&mut self, shards: &Shards) {
        for (timing, shard) in self.timings.iter_mut().zip(&shards.sets) {
            timing.replicas_on_probation = shard
                .members()
                .iter()
                .filter(|replica| replica.state().is_on_probation())
                .count() as u32;
        }
    }

    fn record_outcome(&mut self, shard_id: u32, outcome: ShardOutcome) {
        self.outcomes[shard_id as usize] = Some(outcome);
    }

    fn record_failure(&mut self, shard_id: u32, code: Code, message: String) {
        tracing::debug!(shard_id, ?code, %message, "shard failed");
        self.timings[shard_id as usize].latency_micros =
            self.started_at.elapsed().as_micros() as u64;
        self.record_outcome(shard_id, ShardOutcome::Failed { code, message });
    }

    /// Records a shard's answer and returns the partial for the merger;
    /// an answer without a payload counts as a failure of the shard.
    fn record_answer(
        &mut self,
        shards: &Shards,
        shard_id: u32,
        answer: ShardAnswer,
    ) -> Option<ShardPartial> {
        let replica = Arc::clone(&answer.replica);
        let ExecuteResponse {
            payload,
            timings,
            docs_searched,
            generation,
        } = answer.response;
        let Some(payload) = payload else {
            let message = format!("replica {} answered without a payload", replica.address);
            self.record_failure(shard_id, Code::Internal, message);
            return None;
        };
        // The leaf's own count; a leaf that reports none is covered by the
        // count its Info reported.
        if docs_searched > 0 {
            shards.doc_counts.record(shard_id, docs_searched);
        }
        shards.generations.record(shard_id, &generation);
        let docs_covered = Some(docs_searched)
            .filter(|docs| *docs > 0)
            .or_else(|| shards.doc_counts.get(shard_id))
            .unwrap_or(0);
        let latency_micros = answer.latency.as_micros() as u64;
        let timing = &mut self.timings[shard_id as usize];
        timing.replica = replica.address.clone();
        timing.winning_attempt = answer.attempt;
        timing.latency_micros = latency_micros;
        timing.leaf_service_micros = timings.map(|timings| timings.service_micros).unwrap_or(0);
        self.answers[shard_id as usize] = Some(AnsweredShard {
            replica: Arc::clone(&replica),
            generation,
        });
        self.record_outcome(shard_id, ShardOutcome::Answered { docs_covered });
        Some(ShardPartial {
            shard_id,
            replica: replica.address.clone(),
            attempt: answer.attempt,
            latency_micros,
            payload: Some(payload),
        })
    }

    /// Shards without an outcome were cut off: by the merger's "enough" when
    /// it said so, else by the deadline.
    fn finish(
        self,
        counters: &[ShardCallCounters],
        enough_reason: Option<&str>,
    ) -> (
        Vec<ShardOutcome>,
        Vec<ShardTiming>,
        Vec<Option<AnsweredShard>>,
    ) {
        let elapsed_micros = self.started_at.elapsed().as_micros() as u64;
        let outcomes: Vec<ShardOutcome> = self
            .outcomes
            .into_iter()
            .map(|outcome| {
                outcome.unwrap_or_else(|| match enough_reason {
                    Some(reason) => ShardOutcome::NotNeeded {
                        reason: reason.to_owned(),
                    },
                    None => ShardOutcome::TimedOut,
                })
            })
            .collect();
        let mut timings = self.timings;
        for ((timing, counters), outcome) in timings.iter_mut().zip(counters).zip(&outcomes) {
            counters.report_into(timing, ShardPhase::FanOut);
            if matches!(
                outcome,
                ShardOutcome::TimedOut | ShardOutcome::NotNeeded { .. }
            ) {
                timing.latency_micros = elapsed_micros;
            }
        }
        (outcomes, timings, self.answers)
    }
}

/// Logs the hedges and retries of a request, when there were any.
pub fn log_extra_calls(request_id: &str, timings: &[ShardTiming]) {
    let sum = |count: fn(&ShardTiming) -> u32| timings.iter().map(count).sum::<u32>();
    let (hedges, won, suppressed, retries) = (
        sum(|timing| timing.hedges),
        sum(|timing| timing.hedges_won),
        sum(|timing| timing.hedges_suppressed),
        sum(|timing| timing.retries),
    );
    if hedges + suppressed + retries > 0 {
        tracing::debug!(
            request_id,
            hedges,
            hedges_won = won,
            hedges_suppressed = suppressed,
            retries,
            "extra shard calls"
        );
    }
}
