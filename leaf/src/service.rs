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
//! on another replica) instead of queueing without bound. Faults injected
//! for tests ([`FaultPlan`], off by default) wrap the work: errors and hangs
//! before it, a latency body before it, a straggler's extra time after it,
//! all as async sleeps that never hold a search thread.
//!
//! The leaf counts what cancellation saves and what it cannot: calls whose
//! caller went away before they answered, work skipped because its caller
//! was gone before it started, and work that ran for nobody. Every Execute
//! and Info response carries the counts in the [`LEAF_STATS_METADATA`]
//! header ([`LeafStats`]); the same counts, calls by status code, search
//! latency and injected faults are also in the leaf's [`LeafMetrics`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fanout_proto::any::{is, pack, type_url, unpack};
use fanout_proto::search::v1::{FetchRequest, ShardSearchRequest};
use fanout_proto::v1::leaf_server::Leaf;
use fanout_proto::v1::{ExecuteRequest, ExecuteResponse, InfoRequest, InfoResponse, LeafTimings};
use fanout_runtime::cpu_pool::CpuPool;
use prost_types::Any;
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use crate::LeafError;
use crate::fault::FaultPlan;
use crate::metrics::{LeafCounts, LeafMethod, LeafMetrics};
use crate::shard::ShardSearcher;

/// Calls queued or running per search thread beyond which the leaf refuses
/// new ones as overloaded.
pub const MAX_CALLS_IN_FLIGHT_PER_THREAD: u32 = 64;

/// Response metadata key of the leaf's [`LeafStats`].
pub const LEAF_STATS_METADATA: &str = "fanout-leaf-stats";

/// Counts of a leaf's calls since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeafStats {
    /// Execute calls received.
    pub calls: u64,
    /// Execute calls whose caller went away before the answer.
    pub cancelled: u64,
    /// Pool work skipped because its caller was gone before it started.
    pub work_skipped: u64,
    /// Pool work that ran, but for a caller already gone (wasted).
    pub work_abandoned: u64,
    /// Pool work that ran and was delivered.
    pub work_completed: u64,
}

impl LeafStats {
    /// `calls=3,cancelled=1,work_skipped=1,work_abandoned=0,work_completed=2`.
    pub fn to_header(&self) -> String {
        format!(
            "calls={},cancelled={},work_skipped={},work_abandoned={},work_completed={}",
            self.calls, self.cancelled, self.work_skipped, self.work_abandoned, self.work_completed
        )
    }

    /// Reads [`to_header`](Self::to_header)'s format; unknown keys are ignored.
    pub fn from_header(text: &str) -> Option<LeafStats> {
        let mut stats = LeafStats::default();
        for pair in text.split(',') {
            let (key, value) = pair.split_once('=')?;
            let value: u64 = value.trim().parse().ok()?;
            match key.trim() {
                "calls" => stats.calls = value,
                "cancelled" => stats.cancelled = value,
                "work_skipped" => stats.work_skipped = value,
                "work_abandoned" => stats.work_abandoned = value,
                "work_completed" => stats.work_completed = value,
                _ => {}
            }
        }
        Some(stats)
    }
}

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
    faults: Arc<FaultPlan>,
    calls: AtomicU64,
    cancelled: Arc<AtomicU64>,
    metrics: LeafMetrics,
}

impl LeafService {
    pub fn new(shard: Arc<ShardSearcher>, pool: CpuPool, search_threads: usize) -> LeafService {
        let threads = u32::try_from(search_threads.max(1)).unwrap_or(u32::MAX);
        let in_flight = Arc::new(AtomicU32::new(0));
        let cancelled = Arc::new(AtomicU64::new(0));
        let metrics = LeafMetrics::new(LeafCounts {
            cancelled: Arc::clone(&cancelled),
            in_flight: Arc::clone(&in_flight),
            pool: pool.clone(),
        });
        LeafService {
            shard,
            pool,
            in_flight,
            max_in_flight: threads.saturating_mul(MAX_CALLS_IN_FLIGHT_PER_THREAD),
            faults: Arc::new(FaultPlan::default()),
            calls: AtomicU64::new(0),
            cancelled,
            metrics,
        }
    }

    /// The same service with `faults` injected around its work.
    pub fn with_faults(mut self, faults: FaultPlan) -> LeafService {
        if faults.is_active() {
            self.metrics.count_faults();
        }
        self.faults = Arc::new(faults);
        self
    }

    /// The leaf's metrics registry, for a `/metrics` endpoint.
    pub fn metrics_registry(&self) -> Arc<fanout_runtime::metrics::Registry> {
        self.metrics.registry()
    }

    /// The counts so far.
    pub fn stats(&self) -> LeafStats {
        let pool = self.pool.stats();
        LeafStats {
            calls: self.calls.load(Ordering::Relaxed),
            cancelled: self.cancelled.load(Ordering::Relaxed),
            work_skipped: pool.skipped.load(Ordering::Relaxed),
            work_abandoned: pool.abandoned.load(Ordering::Relaxed),
            work_completed: pool.completed.load(Ordering::Relaxed),
        }
    }

    fn with_stats<T>(&self, mut response: Response<T>) -> Response<T> {
        if let Ok(value) = self.stats().to_header().parse() {
            response.metadata_mut().insert(LEAF_STATS_METADATA, value);
        }
        response
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
        let fault = self.faults.decide(&request.request_id);
        self.metrics.fault_decided(&fault);
        if fault.unavailable {
            return Err(LeafError::InjectedUnavailable);
        }
        if fault.hang {
            // Never answers; ends when the caller goes away and drops us.
            std::future::pending::<()>().await;
        }
        if !fault.delay_before.is_zero() {
            tokio::time::sleep(fault.delay_before).await;
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
        if let Some(factor) = fault.straggler_factor {
            tokio::time::sleep(arrived.elapsed().mul_f64(factor - 1.0)).await;
        }
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

/// Counts a call as cancelled when dropped before it answered.
struct CancellationWatch<'a> {
    cancelled: Arc<AtomicU64>,
    metrics: &'a LeafMetrics,
    answered: bool,
}

impl Drop for CancellationWatch<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.metrics
                .call_finished(LeafMethod::Execute, Code::Cancelled);
            let total = self.cancelled.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::debug!(
                cancelled_calls = total,
                "the caller went away; call cancelled"
            );
        }
    }
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
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut watch = CancellationWatch {
            cancelled: Arc::clone(&self.cancelled),
            metrics: &self.metrics,
            answered: false,
        };
        let call = InFlightCall::enter(&self.in_flight);
        let request = request.into_inner();
        let is_search = request
            .payload
            .as_ref()
            .is_some_and(is::<ShardSearchRequest>);
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
        watch.answered = true;
        let _entered = span.enter();
        match result {
            Ok(response) => {
                let elapsed = arrived.elapsed();
                tracing::debug!(?elapsed, "answered");
                self.metrics.call_finished(LeafMethod::Execute, Code::Ok);
                if is_search {
                    self.metrics.search_answered(elapsed);
                }
                Ok(self.with_stats(Response::new(response)))
            }
            Err(error) => {
                log_failure(&error);
                let status = Status::from(error);
                self.metrics
                    .call_finished(LeafMethod::Execute, status.code());
                Err(status)
            }
        }
    }

    async fn info(&self, _request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let manifest = self.shard.manifest();
        self.metrics.call_finished(LeafMethod::Info, Code::Ok);
        Ok(self.with_stats(Response::new(InfoResponse {
            shard_id: manifest.shard_id,
            shard_count: manifest.shard_count,
            generation: manifest.generation.clone(),
            doc_count: self.shard.doc_count(),
            capabilities: capabilities(),
        })))
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

        // A call dropped before it answers is counted as cancelled.
        let mut cancelled = Box::pin(service.execute(Request::new(search_request())));
        assert!(futures::poll!(cancelled.as_mut()).is_pending());
        drop(cancelled);
        let text = service.metrics_registry().render();
        for line in [
            "fanout_leaf_calls_total{method=\"execute\",code=\"RESOURCE_EXHAUSTED\"} 1\n",
            "fanout_leaf_calls_total{method=\"execute\",code=\"OK\"} 1\n",
            "fanout_leaf_calls_total{method=\"execute\",code=\"CANCELLED\"} 1\n",
            "fanout_leaf_cancelled_calls_total 1\n",
            "fanout_leaf_search_duration_seconds_count 1\n",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert_eq!(service.stats().cancelled, 1);
    }

    #[tokio::test]
    async fn injected_faults_fail_delay_and_hang_calls() {
        let faults = |specs: &[&str]| {
            FaultPlan::parse(&specs.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
        };
        let unavailable =
            service(tempfile::tempdir().unwrap().path()).with_faults(faults(&["unavailable=1"]));
        let status = unavailable
            .execute(Request::new(search_request()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);

        let slow =
            service(tempfile::tempdir().unwrap().path()).with_faults(faults(&["latency=30ms"]));
        let started = Instant::now();
        slow.execute(Request::new(search_request())).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(30));

        let hung = service(tempfile::tempdir().unwrap().path()).with_faults(faults(&["hang"]));
        let call = hung.execute(Request::new(search_request()));
        let waited = tokio::time::timeout(Duration::from_millis(50), call).await;
        assert!(waited.is_err(), "a hung call never answers");
    }

    /// A call whose caller goes away while it waits for a busy pool is
    /// counted as cancelled, and its work is skipped, never run.
    #[tokio::test]
    async fn a_cancelled_call_skips_its_work_and_is_counted() {
        let scratch = tempfile::tempdir().unwrap();
        let service = service(scratch.path());
        // Occupy the only search thread until released.
        let (release, released) = std::sync::mpsc::channel::<()>();
        let blocker = service.pool.run(move |_| released.recv().ok());
        let call = service.execute(Request::new(search_request()));
        let waited = tokio::time::timeout(Duration::from_millis(50), call).await;
        assert!(waited.is_err(), "the pool is busy");
        release.send(()).unwrap();
        blocker.await.unwrap();
        // The skipped task leaves the pool right after the blocker.
        let deadline = Instant::now() + Duration::from_secs(5);
        while service.pool.stats().in_flight.load(Ordering::Relaxed) > 0 {
            assert!(Instant::now() < deadline, "the pool drains");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let stats = service.stats();
        assert_eq!(stats.calls, 1);
        assert_eq!(stats.cancelled, 1);
        assert_eq!(stats.work_skipped, 1, "{stats:?}");
        assert_eq!(stats.work_completed, 1, "only the blocker ran");

        // An answered call is not cancelled, and says so in its metadata.
        let response = service
            .execute(Request::new(search_request()))
            .await
            .unwrap();
        let header = response.metadata().get(LEAF_STATS_METADATA).unwrap();
        let reported = LeafStats::from_header(header.to_str().unwrap()).unwrap();
        assert_eq!(
            (reported.calls, reported.cancelled, reported.work_skipped),
            (2, 1, 1)
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
