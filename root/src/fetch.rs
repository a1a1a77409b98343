//! Phase two of a search: the stored fields (and snippets) of the global
//! top k. The merged hits are grouped by shard; each shard gets one
//! `FetchRequest`, sent to the replica that answered phase one (failing over
//! to another on retryable errors), all shards in parallel, within the same
//! deadline. Hits come back in merged order.
//!
//! Each shard's fetch hedges and fails over like phase one; its counts go to
//! the `fetch_*` fields of the shard's `ShardTiming`.
//!
//! A shard whose fetch fails: with `allow_partial` its hits stay, with empty
//! fields, and the coverage is marked partial; without it the request fails
//! (UNAVAILABLE, or DEADLINE_EXCEEDED when the deadline passed).

use std::collections::BTreeMap;

use fanout_proto::search::v1::{FetchRequest, FetchResponse, FetchedDoc, Hit, QueryMode, ShardHit};
use fanout_proto::status::code_name;
use fanout_proto::v1::{Coverage, ShardFailure, ShardTiming};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::time::Instant;
use tonic::Code;

use crate::crash::Fingerprint;
use crate::error::RequestError;
use crate::fanout::AnsweredShard;
use crate::hedge::HedgePolicy;
use crate::policy::CoveragePolicy;
use crate::shard_call::{ShardCallCounters, ShardCallOutcome, ShardPhase};
use crate::shard_caller::{ShardCalls, ShardRequest};
use crate::shards::Shards;

/// What to fetch for every hit.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    pub fields: Vec<String>,
    pub snippets: bool,
    pub query: String,
    pub mode: QueryMode,
}

/// Why one shard's fetch did not deliver.
struct FetchFailure {
    shard_id: u32,
    code: Code,
    message: String,
}

/// Where and how phase two runs.
pub struct FetchPhase<'a> {
    pub shards: &'a Shards,
    pub calls: &'a ShardCalls,
    /// Phase one's answers by shard id: the replica to go back to.
    pub answers: &'a [Option<AnsweredShard>],
    pub options: &'a FetchOptions,
    pub request_id: &'a str,
    pub deadline: Instant,
    pub policy: CoveragePolicy,
    /// The request's own hedging policy, if it set one.
    pub hedge_policy: Option<HedgePolicy>,
    /// The request's identity for the crash policy (phase one's).
    pub fingerprint: Fingerprint,
}

/// Turns the merged hits into `Hit`s with their stored fields, in order.
/// Fetch failures tolerated by the policy are added to `coverage`; each
/// shard's fetch counts go to its entry of `timings`.
pub async fn fetch_hits(
    phase: FetchPhase<'_>,
    merged_hits: Vec<ShardHit>,
    coverage: &mut Coverage,
    timings: &mut [ShardTiming],
) -> Result<Vec<Hit>, RequestError> {
    let FetchPhase {
        shards,
        calls,
        answers,
        options,
        request_id,
        deadline,
        policy,
        hedge_policy,
        fingerprint,
    } = phase;
    let mut hits: Vec<Hit> = merged_hits
        .iter()
        .map(|hit| Hit {
            id: hit.id.clone(),
            score: hit.score,
            shard_id: hit.shard_id,
            ..Hit::default()
        })
        .collect();
    // Positions in the merged order of each shard's hits.
    let mut positions_by_shard: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (position, hit) in merged_hits.iter().enumerate() {
        positions_by_shard
            .entry(hit.shard_id)
            .or_default()
            .push(position);
    }

    let mut failures: Vec<FetchFailure> = Vec::new();
    let shard_count = shards.count();
    let counters: Vec<ShardCallCounters> = (0..shard_count)
        .map(|shard| calls.counters(shard, ShardPhase::Fetch))
        .collect();
    let mut requests = Vec::new();
    for (&shard_id, positions) in &positions_by_shard {
        let Some(replica_set) = shards.sets.get(shard_id as usize) else {
            failures.push(FetchFailure {
                shard_id,
                code: Code::Internal,
                message: format!("the merger returned hits of unknown shard {shard_id}"),
            });
            continue;
        };
        let answered = answers.get(shard_id as usize).cloned().flatten();
        let request = FetchRequest {
            hits: positions
                .iter()
                .map(|&position| merged_hits[position].clone())
                .collect(),
            generation: answered
                .as_ref()
                .map(|answered| answered.generation.clone())
                .unwrap_or_default(),
            fields: options.fields.clone(),
            snippets: options.snippets,
            query: options.query.clone(),
            mode: options.mode as i32,
        };
        requests.push((
            replica_set,
            positions,
            answered.map(|answered| answered.replica),
            fanout_proto::any::pack(&request),
        ));
    }

    let mut pending: FuturesUnordered<_> = requests
        .iter()
        .map(|(replica_set, positions, preferred_replica, payload)| {
            let request = ShardRequest {
                replica_set,
                payload,
                request_id,
                deadline,
                preferred_replica: preferred_replica.as_ref(),
                requested_policy: hedge_policy,
                counters: &counters[replica_set.shard_id as usize],
                fingerprint,
                // Phase one answered: the request does not kill leaves.
                hedge_gate: None,
                phase: ShardPhase::Fetch,
            };
            async move { (replica_set.shard_id, *positions, calls.call(request).await) }
        })
        .collect();

    let mut latencies: BTreeMap<u32, u64> = BTreeMap::new();
    while let Some((shard_id, positions, outcome)) = pending.next().await {
        counters[shard_id as usize].call_ended(&outcome);
        let failure = match outcome {
            ShardCallOutcome::Answered(answer) => {
                latencies.insert(shard_id, answer.latency.as_micros() as u64);
                let payload = answer.response.payload.unwrap_or_default();
                match fanout_proto::any::unpack::<FetchResponse>(&payload) {
                    Ok(response) => {
                        fill_hits(&mut hits, positions, response.docs);
                        continue;
                    }
                    Err(error) => FetchFailure {
                        shard_id,
                        code: Code::Internal,
                        message: format!("fetch answer unreadable: {error}"),
                    },
                }
            }
            ShardCallOutcome::Rejected(status) => return Err(RequestError::LeafRejected(status)),
            ShardCallOutcome::RequestOfDeath(message) => {
                return Err(RequestError::RequestOfDeath(message));
            }
            ShardCallOutcome::Failed(status) => FetchFailure {
                shard_id,
                code: status.code(),
                message: status.message().to_owned(),
            },
            ShardCallOutcome::TimedOut => FetchFailure {
                shard_id,
                code: Code::DeadlineExceeded,
                message: "no fetch answer before the deadline".to_owned(),
            },
        };
        if !policy.allow_partial {
            // No point waiting for the other shards: the request fails.
            failures.push(failure);
            break;
        }
        failures.push(failure);
    }
    drop(pending);
    record_fetch_counts(timings, &counters);
    for timing in timings.iter_mut() {
        if let Some(latency) = latencies.get(&timing.shard_id) {
            timing.fetch_latency_micros = *latency;
        }
    }

    if failures.is_empty() {
        return Ok(hits);
    }
    if !policy.allow_partial {
        return Err(fetch_error(&failures));
    }
    coverage.partial = true;
    for failure in failures {
        let FetchFailure {
            shard_id,
            code,
            message,
        } = failure;
        tracing::debug!(shard_id, ?code, %message, "fetch failed; hits kept without fields");
        coverage.failures.push(ShardFailure {
            shard_id,
            code: code_name(code).to_owned(),
            message: format!("fetch failed: {message}"),
        });
    }
    Ok(hits)
}

/// Adds each shard's fetch counters to its timing (matched by shard id).
fn record_fetch_counts(timings: &mut [ShardTiming], counters: &[ShardCallCounters]) {
    for timing in timings {
        if let Some(counters) = counters.get(timing.shard_id as usize) {
            counters.report_into(timing, ShardPhase::Fetch);
        }
    }
}

/// Copies the fetched fields into the hits at `positions` (the order the
/// hits were sent in); a doc out of place is matched by id instead.
fn fill_hits(hits: &mut [Hit], positions: &[usize], mut docs: Vec<FetchedDoc>) {
    for (index, &position) in positions.iter().enumerate() {
        let hit = &mut hits[position];
        let in_place = docs.get(index).is_some_and(|doc| doc.id == hit.id);
        let doc_index = if in_place {
            Some(index)
        } else {
            docs.iter().position(|doc| doc.id == hit.id)
        };
        let Some(doc_index) = doc_index else {
            tracing::warn!(id = %hit.id, "the fetch answer lacks a hit");
            continue;
        };
        let doc = std::mem::take(&mut docs[doc_index]);
        if !doc.found {
            tracing::debug!(id = %hit.id, "hit no longer in its shard");
        }
        hit.fields = doc.fields.into_iter().collect();
        hit.snippet = doc.snippet;
    }
}

fn fetch_error(failures: &[FetchFailure]) -> RequestError {
    let described: Vec<String> = failures
        .iter()
        .map(|failure| {
            format!(
                "shard {} ({}: {})",
                failure.shard_id,
                code_name(failure.code),
                failure.message
            )
        })
        .collect();
    let message = format!("fetching stored fields failed: {}", described.join("; "));
    if failures
        .iter()
        .all(|failure| failure.code == Code::DeadlineExceeded)
    {
        RequestError::DeadlineExceeded(message)
    } else {
        RequestError::ShardsUnavailable(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn hit(id: &str) -> Hit {
        Hit {
            id: id.to_owned(),
            ..Hit::default()
        }
    }

    fn doc(id: &str, title: &str) -> FetchedDoc {
        FetchedDoc {
            id: id.to_owned(),
            fields: [("title".to_owned(), title.to_owned())].into(),
            snippet: String::new(),
            found: true,
        }
    }

    #[test]
    fn fills_hits_in_place_and_by_id_when_out_of_order() {
        let mut hits = vec![hit("a"), hit("b"), hit("c")];
        fill_hits(&mut hits, &[0, 2], vec![doc("a", "A"), doc("c", "C")]);
        assert_eq!(hits[0].fields["title"], "A");
        assert!(hits[1].fields.is_empty());
        assert_eq!(hits[2].fields["title"], "C");

        let mut hits = vec![hit("a"), hit("b")];
        fill_hits(&mut hits, &[0, 1], vec![doc("b", "B"), doc("a", "A")]);
        assert_eq!(hits[0].fields["title"], "A");
        assert_eq!(hits[1].fields["title"], "B");
    }

    #[test]
    fn fetch_counts_go_to_the_timing_of_their_shard() {
        let counters: Vec<ShardCallCounters> =
            (0..2).map(|_| ShardCallCounters::default()).collect();
        counters[1].attempts.store(2, Ordering::Relaxed);
        counters[1].hedges.store(1, Ordering::Relaxed);
        counters[1].hedges_won.store(1, Ordering::Relaxed);
        counters[0].attempts.store(1, Ordering::Relaxed);
        let mut timings = vec![
            ShardTiming {
                shard_id: 1,
                attempts: 1,
                ..ShardTiming::default()
            },
            ShardTiming {
                shard_id: 0,
                ..ShardTiming::default()
            },
        ];
        record_fetch_counts(&mut timings, &counters);
        assert_eq!(
            (
                timings[0].fetch_attempts,
                timings[0].fetch_hedges,
                timings[0].fetch_hedges_won
            ),
            (2, 1, 1)
        );
        assert_eq!(timings[0].attempts, 1, "phase one's counts stay");
        assert_eq!((timings[1].fetch_attempts, timings[1].fetch_hedges), (1, 0));
    }

    #[test]
    fn a_fetch_that_only_timed_out_is_deadline_exceeded() {
        let timed_out = FetchFailure {
            shard_id: 1,
            code: Code::DeadlineExceeded,
            message: "late".into(),
        };
        assert!(matches!(
            fetch_error(&[timed_out]),
            RequestError::DeadlineExceeded(_)
        ));
        let down = FetchFailure {
            shard_id: 0,
            code: Code::Unavailable,
            message: "down".into(),
        };
        let error = fetch_error(&[down]);
        assert!(matches!(error, RequestError::ShardsUnavailable(_)));
        assert!(
            error.to_string().contains("shard 0 (UNAVAILABLE: down)"),
            "{error}"
        );
    }
}
