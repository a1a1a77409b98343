//! The `fanout.v1.Leaf` gRPC service of one shard.
//!
//! `Execute` looks at the payload's type URL: a `ShardSearchRequest` is
//! answered with a `ShardSearchResponse`, a `FetchRequest` with a
//! `FetchResponse`; anything else is INVALID_ARGUMENT naming the type. The
//! tantivy work runs on the leaf's rayon pool ([`CpuPool`]): when the caller
//! goes away (a cancelled call, a hedge that lost) the future is dropped and
//! the work is skipped if it has not started, or stops at the next segment if
//! it has. Each answer reports its queue and service time and how many calls
//! were in flight when it arrived; past [`MAX_CALLS_IN_FLIGHT_PER_THREAD`]
//! calls per search thread the leaf answers RESOURCE_EXHAUSTED (retryable
//! on another replica) instead of queueing without bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use fanout_proto::any::{is, pack, type_url, unpack};
use fanout_proto::search::v1::{FetchRequest, ShardSearchRequest};
use fanout_proto::v1::leaf_server::Leaf;
use fanout_proto::v1::{ExecuteRequest, ExecuteResponse, InfoRequest, InfoResponse, LeafTimings};
use fanout_runtime::cpu_pool::CpuPool;
use prost_types::Any;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::LeafError;
use crate::shard::ShardSearcher;

/// Calls queued or running per search thread beyond which the leaf refuses
/// new ones as overloaded.
pub const MAX_CALLS_IN_FLIGHT_PER_THREAD: u32 = 64;

/// The payload types `Execute` understands, as type URLs.
pub fn capabilities() -> Vec<String> {
    vec![type_url::<ShardSearchRequest>(), type_url::<FetchRequest>()]
}

/// Implements `fanout.v1.Leaf` for one shard.
pub struct LeafService {
    shard: Arc<ShardSearcher>,
    pool: CpuPool,
    in_flight: Arc<AtomicU32>,
    max_in_flight: u32,
}

impl LeafService {
    pub fn new(shard: Arc<ShardSearcher>, pool: CpuPool, search_threads: usize) -> LeafService {
        let threads = u32::try_from(search_threads.max(1)).unwrap_or(u32::MAX);
        LeafService {
            shard,
            pool,
            in_flight: Arc::new(AtomicU32::new(0)),
            max_in_flight: threads.saturating_mul(MAX_CALLS_IN_FLIGHT_PER_THREAD),
        }
    }

    /// Runs one Execute call; the caller turns the error into a status.
    async fn execute_payload(
        &self,
        request: ExecuteRequest,
        arrived: Instant,
        queue_depth: u32,
    ) -> Result<ExecuteResponse, LeafError> {
        let served = self.shard.manifest().shard_id;
        if request.shard_id != served {
            return Err(LeafError::WrongShard {
                served,
                requested: request.shard_id,
            });
        }
        if queue_depth >= self.max_in_flight {
            return Err(LeafError::Overloaded {
                in_flight: queue_depth,
                limit: self.max_in_flight,
            });
        }
        let Some(payload) = request.payload else {
            return Err(LeafError::MalformedPayload(
                "the request has no payload".into(),
            ));
        };
        let (payload, timings) = if is::<ShardSearchRequest>(&payload) {
            let search: ShardSearchRequest = unpack(&payload).map_err(malformed)?;
            self.run_on_pool(arrived, move |shard, is_cancelled| {
                shard
                    .search(&search, is_cancelled)
                    .map(|response| pack(&response))
            })
            .await?
        } else if is::<FetchRequest>(&payload) {
            let fetch: FetchRequest = unpack(&payload).map_err(malformed)?;
            self.run_on_pool(arrived, move |shard, is_cancelled| {
                shard
                    .fetch(&fetch, is_cancelled)
                    .map(|response| pack(&response))
            })
            .await?
        } else {
            return Err(LeafError::UnsupportedPayload {
                type_url: payload.type_url,
                supported: capabilities().join(", "),
            });
        };
        Ok(ExecuteResponse {
            payload: Some(payload),
            timings: Some(LeafTimings {
                queue_micros: micros(timings.queued),
                service_micros: micros(timings.serviced),
                queue_depth,
            }),
        })
    }

    /// Runs `work` on the search pool and measures it.
    async fn run_on_pool<F>(
        &self,
        arrived: Instant,
        work: F,
    ) -> Result<(Any, WorkTimings), LeafError>
    where
        F: FnOnce(&ShardSearcher, &dyn Fn() -> bool) -> Result<Any, LeafError> + Send + 'static,
    {
        let shard = Arc::clone(&self.shard);
        let outcome = self
            .pool
            .run(move |cancellation| {
                let started = Instant::now();
                let result = work(&shard, &|| cancellation.is_cancelled());
                let timings = WorkTimings {
                    queued: started.duration_since(arrived),
                    serviced: started.elapsed(),
                };
                (result, timings)
            })
            .await;
        // The receiver is only gone if the worker panicked: we still await it.
        let (result, timings) = outcome.map_err(|_| LeafError::WorkerLost)?;
        Ok((result?, timings))
    }
}

struct WorkTimings {
    queued: Duration,
    serviced: Duration,
}

fn malformed(error: fanout_proto::any::UnpackError) -> LeafError {
    LeafError::MalformedPayload(error.to_string())
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// Counts a call as in flight until dropped.
struct InFlightCall<'a> {
    counter: &'a AtomicU32,
    /// Calls already in flight when this one arrived.
    depth_at_arrival: u32,
}

impl<'a> InFlightCall<'a> {
    fn enter(counter: &'a AtomicU32) -> InFlightCall<'a> {
        let depth_at_arrival = counter.fetch_add(1, Ordering::Relaxed);
        InFlightCall {
            counter,
            depth_at_arrival,
        }
    }
}

impl Drop for InFlightCall<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::Relaxed);
    }
}

#[tonic::async_trait]
impl Leaf for LeafService {
    async fn execute(
        &self,
        request: Request<ExecuteRequest>,
    ) -> Result<Response<ExecuteResponse>, Status> {
        let arrived = Instant::now();
        let call = InFlightCall::enter(&self.in_flight);
        let request = request.into_inner();
        let payload_type = request
            .payload
            .as_ref()
            .map(|payload| {
                payload
                    .type_url
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .unwrap_or_default();
        let span = tracing::debug_span!(
            "execute",
            request_id = %request.request_id,
            attempt = request.attempt,
            shard = request.shard_id,
            payload = %payload_type,
        );
        let result = self
            .execute_payload(request, arrived, call.depth_at_arrival)
            .instrument(span.clone())
            .await;
        let _entered = span.enter();
        match result {
            Ok(response) => {
                tracing::debug!(elapsed = ?arrived.elapsed(), "answered");
                Ok(Response::new(response))
            }
            Err(error) => {
                log_failure(&error);
                Err(Status::from(error))
            }
        }
    }

    async fn info(&self, _request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let manifest = self.shard.manifest();
        Ok(Response::new(InfoResponse {
            shard_id: manifest.shard_id,
            shard_count: manifest.shard_count,
            generation: manifest.generation.clone(),
            doc_count: self.shard.doc_count(),
            capabilities: capabilities(),
        }))
    }
}

fn log_failure(error: &LeafError) {
    match error {
        LeafError::Tantivy(_)
        | LeafError::Io { .. }
        | LeafError::WorkerLost
        | LeafError::GlobalStatistics { .. } => tracing::error!(%error, "execute failed"),
        LeafError::Overloaded { .. } | LeafError::WrongShard { .. } => {
            tracing::warn!(%error, "execute refused")
        }
        _ => tracing::debug!(%error, "execute failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::tests::small_shard;

    fn service(scratch: &std::path::Path) -> LeafService {
        let shard = Arc::new(small_shard(scratch));
        LeafService::new(shard, CpuPool::new("test", 1).unwrap(), 1)
    }

    fn search_request() -> ExecuteRequest {
        ExecuteRequest {
            payload: Some(pack(&ShardSearchRequest {
                query: "rust".into(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn refuses_work_past_the_in_flight_limit() {
        let scratch = tempfile::tempdir().unwrap();
        let service = service(scratch.path());
        assert_eq!(service.max_in_flight, MAX_CALLS_IN_FLIGHT_PER_THREAD);
        service
            .in_flight
            .store(service.max_in_flight, Ordering::Relaxed);
        let status = service
            .execute(Request::new(search_request()))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::ResourceExhausted,
            "{}",
            status.message()
        );
        assert!(fanout_proto::retry::is_retryable(&status));

        service.in_flight.store(3, Ordering::Relaxed);
        let response = service
            .execute(Request::new(search_request()))
            .await
            .unwrap();
        let timings = response.into_inner().timings.unwrap();
        assert_eq!(timings.queue_depth, 3);
        assert_eq!(
            service.in_flight.load(Ordering::Relaxed),
            3,
            "the call left"
        );
    }

    #[tokio::test]
    async fn info_lists_both_payload_types() {
        let scratch = tempfile::tempdir().unwrap();
        let service = service(scratch.path());
        let info = service
            .info(Request::new(InfoRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.capabilities, capabilities());
        assert_eq!(info.doc_count, 3);
        assert!(info.capabilities[0].ends_with("fanout.search.v1.ShardSearchRequest"));
        assert!(info.capabilities[1].ends_with("fanout.search.v1.FetchRequest"));
    }
}
