//! An open-loop search load: requests go out at a fixed rate whether or not
//! earlier ones have answered (a closed loop would slow down with the system
//! under test and hide its stalls), each with its own deadline, and every
//! outcome is kept with its send time, so that a test can cut the run into
//! phases (normal, during a fault, after) and compare them.

use std::error::Error as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use fanout_proto::search::v1::SearchRequest;
use fanout_proto::search::v1::search_client::SearchClient;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tonic::transport::Channel;

use crate::test_cluster::search;

/// Requests allowed in flight at once; past it a send counts as failed
/// (the system is not keeping up), so the load itself stays bounded.
const MAX_IN_FLIGHT: usize = 2048;

/// One request's fate.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// When it was sent, from the start of the load.
    pub sent_at: Duration,
    pub latency: Duration,
    /// `Ok(())` for an answer with every shard; the problem otherwise.
    pub result: Result<(), String>,
}

/// A running load; [`OpenLoop::finish`] stops it and returns every outcome.
pub struct OpenLoop {
    started: Instant,
    stop: Arc<AtomicBool>,
    sender: JoinHandle<Vec<JoinHandle<Outcome>>>,
}

impl OpenLoop {
    /// Sends `rate` requests a second, cycling through `queries`, each of `k`
    /// hits with `deadline` as its timeout; an answer must cover `shards`.
    pub fn start(
        client: SearchClient<Channel>,
        queries: Vec<String>,
        rate: f64,
        deadline: Duration,
        shards: u32,
    ) -> OpenLoop {
        assert!(!queries.is_empty() && rate > 0.0);
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let sender = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            // Late ticks are sent at once, keeping the schedule's count.
            ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
            let mut requests: Vec<JoinHandle<Outcome>> = Vec::new();
            let in_flight = Arc::new(AtomicUsize::new(0));
            let mut next = 0usize;
            while !stopping.load(Ordering::SeqCst) {
                ticks.tick().await;
                let sent = Instant::now();
                let sent_at = sent - started;
                if in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
                    requests.push(tokio::spawn(async move {
                        Outcome {
                            sent_at,
                            latency: Duration::ZERO,
                            result: Err("not sent: too many requests in flight".into()),
                        }
                    }));
                    continue;
                }
                let request = SearchRequest {
                    query: queries[next % queries.len()].clone(),
                    k: 10,
                    ..Default::default()
                };
                next += 1;
                let client = client.clone();
                in_flight.fetch_add(1, Ordering::Relaxed);
                let in_flight = Arc::clone(&in_flight);
                requests.push(tokio::spawn(async move {
                    let result = match search(&client, request, deadline).await {
                        Ok(response) => {
                            let coverage = response.coverage.unwrap_or_default();
                            if coverage.partial || coverage.shards_answered != shards {
                                Err(format!("partial: {coverage:?}"))
                            } else {
                                Ok(())
                            }
                        }
                        // A status with a source error was made by the
                        // client's channel, not sent by the root: tonic says
                        // UNKNOWN "transport error" or CANCELLED for a
                        // connection that broke before any status came. A
                        // client-side UNAVAILABLE, named as such.
                        Err(status)
                            if status.code() != tonic::Code::Unavailable
                                && status.source().is_some() =>
                        {
                            Err(format!(
                                "Unavailable (the connection broke: {})",
                                status.message()
                            ))
                        }
                        Err(status) => Err(format!("{:?}: {}", status.code(), status.message())),
                    };
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                    Outcome {
                        sent_at,
                        latency: sent.elapsed(),
                        result,
                    }
                }));
            }
            requests
        });
        OpenLoop {
            started,
            stop,
            sender,
        }
    }

    /// Time since the load started (to mark where a phase begins).
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops sending, waits for every request's outcome.
    pub async fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::SeqCst);
        let requests = self.sender.await.expect("the sender does not panic");
        let mut outcomes = Vec::with_capacity(requests.len());
        for request in requests {
            outcomes.push(request.await.expect("a request task does not panic"));
        }
        outcomes
    }
}

/// What the requests sent during one phase met.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseStats {
    pub sent: usize,
    pub failed: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// The first few problems, for the assertion message.
    pub problems: Vec<String>,
}

impl PhaseStats {
    /// The requests of `outcomes` sent in `[from, to)`.
    pub fn of(outcomes: &[Outcome], from: Duration, to: Duration) -> PhaseStats {
        let phase: Vec<&Outcome> = outcomes
            .iter()
            .filter(|outcome| outcome.sent_at >= from && outcome.sent_at < to)
            .collect();
        let mut latencies: Vec<Duration> = phase.iter().map(|outcome| outcome.latency).collect();
        latencies.sort_unstable();
        let quantile = |q: f64| {
            if latencies.is_empty() {
                return Duration::ZERO;
            }
            let rank = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
            latencies[rank - 1]
        };
        let problems: Vec<String> = phase
            .iter()
            .filter_map(|outcome| {
                outcome
                    .result
                    .as_ref()
                    .err()
                    .map(|problem| format!("at {:?}: {problem}", outcome.sent_at))
            })
            .collect();
        PhaseStats {
            sent: phase.len(),
            failed: problems.len(),
            p50: quantile(0.50),
            p99: quantile(0.99),
            max: latencies.last().copied().unwrap_or_default(),
            problems: problems.into_iter().take(5).collect(),
        }
    }

    /// One line: `sent N failed F p50 .. p99 .. max ..`.
    pub fn line(&self) -> String {
        format!(
            "sent {:>5}  failed {:>3}  p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms",
            self.sent,
            self.failed,
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            self.max.as_secs_f64() * 1e3
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(sent_ms: u64, latency_ms: u64, ok: bool) -> Outcome {
        Outcome {
            sent_at: Duration::from_millis(sent_ms),
            latency: Duration::from_millis(latency_ms),
            result: if ok { Ok(()) } else { Err("boom".into()) },
        }
    }

    #[test]
    fn a_phase_counts_only_the_requests_sent_in_it() {
        let mut outcomes: Vec<Outcome> = (0..100).map(|n| outcome(n, n + 1, true)).collect();
        outcomes.push(outcome(150, 900, false));
        let first = PhaseStats::of(&outcomes, Duration::ZERO, Duration::from_millis(100));
        assert_eq!((first.sent, first.failed), (100, 0));
        assert_eq!(first.p50, Duration::from_millis(50));
        assert_eq!(first.p99, Duration::from_millis(99));
        assert_eq!(first.max, Duration::from_millis(100));
        let second = PhaseStats::of(&outcomes, Duration::from_millis(100), Duration::MAX);
        assert_eq!((second.sent, second.failed), (1, 1));
        assert!(second.problems[0].contains("boom"));
        let empty = PhaseStats::of(&outcomes, Duration::from_secs(9), Duration::MAX);
        assert_eq!((empty.sent, empty.p99), (0, Duration::ZERO));
    }
}
