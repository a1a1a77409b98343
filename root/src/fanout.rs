//! Scatter and streaming merge: one call per shard (each failing over between
//! its replicas), all in flight at once; each answer goes into the merge the
//! moment it arrives. The fan-out ends when every shard has ended, when the
//! merger says it has enough, or at the deadline; shards still running are
//! cancelled by dropping their calls (which resets their HTTP/2 streams).
//! Then the coverage policy decides, and the merge is finished.

use std::sync::atomic::Ordering;

use fanout_proto::Any;
use fanout_proto::search::v1::ShardSearchResponse;
use fanout_proto::v1::{Coverage, MergeEnd, MergeStart, ShardPartial, ShardTiming};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::time::Instant;
use tonic::Code;

use crate::cluster::Cluster;
use crate::deadline::RequestDeadline;
use crate::error::RootError;
use crate::hedge::HedgePolicy;
use crate::metrics::ShardPhase;
use crate::policy::{CoveragePolicy, ShardOutcome, coverage_of, enforce};
use crate::shard_call::{
    ShardAnswer, ShardCall, ShardCallCounters, ShardCallOutcome, ShardHedging, call_shard,
};

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
    pub hedge_policy: HedgePolicy,
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
}

/// A shard that answered.
#[derive(Debug, Clone)]
pub struct AnsweredShard {
    pub replica_index: usize,
    /// The index generation its answer came from (search answers only).
    pub generation: String,
}

/// The fields of a `ShardSearchResponse` the root reads, decoded without its
/// hits (prost skips the fields a message does not declare).
#[derive(Clone, PartialEq, prost::Message)]
struct ShardSearchSummary {
    #[prost(string, tag = "3")]
    generation: String,
    #[prost(uint64, tag = "4")]
    docs_searched: u64,
}

/// Fans `request.payload` out to every shard and merges the answers.
pub async fn fan_out_and_merge(
    cluster: &Cluster,
    request: FanOutRequest<'_>,
) -> Result<FanOutResult, RootError> {
    let FanOutRequest {
        payload,
        request_id,
        shard_deadline,
        deadline,
        policy,
        hedge_policy,
    } = request;
    if deadline.has_passed() {
        // No leaf can answer in no time: spare them the work.
        return Err(RootError::DeadlineExceeded(
            "the request's time limit is within the root's deadline margin: no shard was asked"
                .to_owned(),
        ));
    }
    let shard_count = cluster.shards.len();
    let remaining = deadline.remaining();
    let start = MergeStart {
        request: Some(payload.clone()),
        shard_count: shard_count as u32,
        timeout_micros: remaining.as_micros().max(1) as u64,
        request_id: request_id.to_owned(),
    };
    let open = cluster.merger.open(start, Some(remaining));
    let mut session = match tokio::time::timeout_at(deadline.deadline, open).await {
        Ok(Ok(session)) => session,
        Ok(Err(status)) => return Err(RootError::Merger(status)),
        Err(_) => {
            return Err(RootError::DeadlineExceeded(
                "deadline exceeded before the merge could start".to_owned(),
            ));
        }
    };

    let fan_out_started = Instant::now();
    let counters: Vec<ShardCallCounters> = (0..shard_count)
        .map(|shard| {
            ShardCallCounters::reporting_to(cluster.metrics.shard_call(shard, ShardPhase::FanOut))
        })
        .collect();
    let hedging = ShardHedging {
        policy: hedge_policy,
        settings: &cluster.hedge,
        budget: &cluster.hedge_budget,
    };
    let mut pending: FuturesUnordered<_> = cluster
        .shards
        .iter()
        .zip(&counters)
        .map(|(replica_set, counters)| {
            let call = ShardCall {
                replica_set,
                payload: &payload,
                request_id,
                deadline: shard_deadline,
                preferred_replica: None,
                hedging,
                counters,
            };
            async move { (replica_set.shard_id, call_shard(call).await) }
        })
        .collect();

    let mut progress = FanOutProgress::new(shard_count, fan_out_started);
    progress.note_probation(cluster);
    let mut enough_reason: Option<String> = None;
    let shard_deadline_passed = tokio::time::sleep_until(shard_deadline);
    tokio::pin!(shard_deadline_passed);

    while !pending.is_empty() {
        tokio::select! {
            biased;
            Some((shard_id, outcome)) = pending.next() => {
                let answer = match outcome {
                    ShardCallOutcome::Answered(answer) => answer,
                    // The request itself is bad: answer now; dropping
                    // `pending` on return cancels the other shards.
                    ShardCallOutcome::Rejected(status) => {
                        return Err(RootError::LeafRejected(status));
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
                let Some(partial) = progress.record_answer(cluster, shard_id, answer) else {
                    continue;
                };
                let added = session.add_partial(partial);
                match tokio::time::timeout_at(deadline.deadline, added).await {
                    Ok(Ok(())) => {}
                    Ok(Err(status)) => return Err(RootError::Merger(status)),
                    Err(_) => {
                        return Err(RootError::DeadlineExceeded(
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
    log_extra_calls(request_id, &timings);
    enforce(&policy, &outcomes)?;
    let coverage = coverage_of(&outcomes, cluster.doc_counts.total());
    let end = MergeEnd {
        coverage: Some(coverage.clone()),
    };
    let merged = match tokio::time::timeout_at(deadline.deadline, session.finish(end)).await {
        Ok(Ok(merged)) => merged,
        Ok(Err(status)) => return Err(RootError::Merger(status)),
        Err(_) => {
            return Err(RootError::DeadlineExceeded(
                "deadline exceeded before the merger answered".to_owned(),
            ));
        }
    };
    Ok(FanOutResult {
        merged,
        coverage,
        timings,
        answers,
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
    fn note_probation(&mut self, cluster: &Cluster) {
        for (timing, shard) in self.timings.iter_mut().zip(&cluster.shards) {
            let selector = &shard.selector;
            timing.replicas_on_probation = (0..shard.replicas.len())
                .filter(|index| selector.is_on_probation(*index))
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
        cluster: &Cluster,
        shard_id: u32,
        answer: ShardAnswer,
    ) -> Option<ShardPartial> {
        let replica = &cluster.shards[shard_id as usize].replicas[answer.replica_index];
        let Some(payload) = answer.response.payload else {
            let message = format!("replica {} answered without a payload", replica.address);
            self.record_failure(shard_id, Code::Internal, message);
            return None;
        };
        let summary = search_summary(&payload);
        if let Some(summary) = &summary {
            cluster.doc_counts.record(shard_id, summary.docs_searched);
        }
        let docs_covered = summary
            .as_ref()
            .map(|summary| summary.docs_searched)
            .or_else(|| cluster.doc_counts.get(shard_id))
            .unwrap_or(0);
        let latency_micros = answer.latency.as_micros() as u64;
        let timing = &mut self.timings[shard_id as usize];
        timing.replica = replica.address.clone();
        timing.winning_attempt = answer.attempt;
        timing.latency_micros = latency_micros;
        timing.leaf_service_micros = answer
            .response
            .timings
            .map(|timings| timings.service_micros)
            .unwrap_or(0);
        self.answers[shard_id as usize] = Some(AnsweredShard {
            replica_index: answer.replica_index,
            generation: summary
                .map(|summary| summary.generation)
                .unwrap_or_default(),
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
            timing.attempts = counters.attempts.load(Ordering::Relaxed);
            timing.hedges = counters.hedges.load(Ordering::Relaxed);
            timing.hedges_won = counters.hedges_won.load(Ordering::Relaxed);
            timing.hedges_suppressed = counters.hedges_suppressed.load(Ordering::Relaxed);
            timing.retries = counters.retries.load(Ordering::Relaxed);
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

/// Generation and size of a search answer; `None` for other payloads.
fn search_summary(payload: &Any) -> Option<ShardSearchSummary> {
    if !fanout_proto::any::is::<ShardSearchResponse>(payload) {
        return None;
    }
    <ShardSearchSummary as prost::Message>::decode(payload.value.as_slice()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fanout_proto::search::v1::ShardHit;

    #[test]
    fn reads_the_summary_of_a_search_answer_only() {
        let answer = ShardSearchResponse {
            hits: vec![ShardHit {
                id: "a".into(),
                score: 1.0,
                ..ShardHit::default()
            }],
            total_hits: 9,
            generation: "g1".into(),
            docs_searched: 42,
        };
        let summary = search_summary(&fanout_proto::any::pack(&answer)).unwrap();
        assert_eq!(summary.generation, "g1");
        assert_eq!(summary.docs_searched, 42);
        let other = fanout_proto::any::pack(&fanout_proto::v1::InfoRequest {});
        assert!(search_summary(&other).is_none());
    }
}
