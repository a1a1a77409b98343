//! The `fanout.v1.Leaf` gRPC service of one shard.
//!
//! `Execute` looks at the payload's type URL: a `ShardSearchRequest` is
//! answered with a `ShardSearchResponse`, a `FetchRequest` with a
//! `FetchResponse`; anything else is INVALID_ARGUMENT naming the type. The
//! tantivy work runs on the leaf's rayon pool ([`CpuPool`]): when the caller
//! goes away (a cancelled call, a hedge that lost) the future is dropped and
//! the work is skipped if it has not started, or stops at the next segment if
//! it has. Each answer reports its queue and service time and how many calls
//! were in flight when it arrived.
//!
//! Admission ([`LeafAdmission`]): the leaf answers RESOURCE_EXHAUSTED
//! (retryable on another replica) instead of queueing past
//! [`MAX_CALLS_IN_FLIGHT_PER_THREAD`] calls per search thread, or when the
//! queue's expected wait (calls queued or running per thread times the
//! recent service time) is longer than [`LeafAdmission::max_queue_wait`] or
//! than the caller's deadline leaves. Work whose deadline has passed by the
//! time it leaves the queue is not started (DEADLINE_EXCEEDED), and running
//! work stops at the deadline as it does when the caller goes away. Every
//! search query is checked against the [`QueryLimits`] before any work.
//! Faults injected
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
use fanout_proto::search::limits::{QueryLimits, check_query};
use fanout_proto::search::v1::{FetchRequest, ShardSearchRequest};
use fanout_proto::v1::leaf_server::Leaf;
use fanout_proto::v1::{ExecuteRequest, ExecuteResponse, InfoRequest, InfoResponse, LeafTimings};
use fanout_runtime::cpu_pool::CpuPool;
use fanout_runtime::deadline::timeout_from_metadata;
use prost_types::Any;
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use crate::LeafError;
use crate::fault::FaultPlan;
use crate::metrics::{LeafCounts, LeafMethod, LeafMetrics};
use crate::shard::{ShardSearcher, query_mode};

/// Calls queued or running per search thread beyond which the leaf refuses
/// new ones as overloaded.
pub const MAX_CALLS_IN_FLIGHT_PER_THREAD: u32 = 64;
/// The longest expected wait in the search queue a call is admitted with.
pub const MAX_QUEUE_WAIT: Duration = Duration::from_millis(250);
/// The longest type URL a payload may have (longer ones are refused unread).
pub const MAX_TYPE_URL_BYTES: usize = 512;

/// How much work a leaf takes on before it refuses more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeafAdmission {
    /// Calls queued or running per search thread.
    pub max_calls_in_flight_per_thread: u32,
    /// The longest expected wait in the search queue.
    pub max_queue_wait: Duration,
}

impl Default for LeafAdmission {
    fn default() -> Self {
        Self {
            max_calls_in_flight_per_thread: MAX_CALLS_IN_FLIGHT_PER_THREAD,
            max_queue_wait: MAX_QUEUE_WAIT,
        }
    }
}

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
    search_threads: u32,
    in_flight: Arc<AtomicU32>,
    max_in_flight: u32,
    max_queue_wait: Duration,
    /// Recent service time of the pool's work, in microseconds (an EWMA).
    service_micros: Arc<AtomicU64>,
    faults: Arc<FaultPlan>,
    calls: AtomicU64,
    cancelled: Arc<AtomicU64>,
    metrics: LeafMetrics,
}

impl LeafService {
    pub fn new(
        shard: Arc<ShardSearcher>,
        pool: CpuPool,
        search_threads: usize,
        admission: LeafAdmission,
    ) -> LeafService {
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
            search_threads: threads,
            in_flight,
            max_in_flight: threads.saturating_mul(admission.max_calls_in_flight_per_thread),
            max_queue_wait: admission.max_queue_wait,
            service_micros: Arc::new(AtomicU64::new(0)),
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
        call: CallContext,
    ) -> Result<ExecuteResponse, LeafError> {
        let served = self.shard.manifest().shard_id;
        if request.shard_id != served {
            return Err(LeafError::WrongShard {
                served,
                requested: request.shard_id,
            });
        }
        if call.queue_depth >= self.max_in_flight {
            return Err(LeafError::Overloaded {
                in_flight: call.queue_depth,
                limit: self.max_in_flight,
            });
        }
        let Some(payload) = request.payload else {
            return Err(LeafError::MalformedPayload(
                "the request has no payload".into(),
            ));
        };
        if self.faults.aborts_on(&payload.value) {
            tracing::error!(
                request_id = %fanout_proto::status::quote(&request.request_id),
                "injected fault: aborting on a marked request"
            );
            std::process::abort();
        }
        let work = self.decode_work(payload)?;
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
        self.admit(&call)?;
        let (payload, timings) = match work {
            Work::Search(search) => {
                let span = |parent: &tracing::Span| tracing::debug_span!(parent: parent, "search");
                self.run_on_pool(&call, span, move |shard, is_cancelled| {
                    shard
                        .search(&search, is_cancelled)
                        .map(|response| pack(&response))
                })
                .await?
            }
            Work::Fetch(fetch) => {
                let hits = fetch.hits.len();
                let span = move |parent: &tracing::Span| tracing::debug_span!(parent: parent, "fetch", hits);
                self.run_on_pool(&call, span, move |shard, is_cancelled| {
                    shard
                        .fetch(&fetch, is_cancelled)
                        .map(|response| pack(&response))
                })
                .await?
            }
        };
        if let Some(factor) = fault.straggler_factor {
            tokio::time::sleep(call.arrived.elapsed().mul_f64(factor - 1.0)).await;
        }
        let manifest = self.shard.manifest();
        Ok(ExecuteResponse {
            payload: Some(payload),
            timings: Some(LeafTimings {
                queue_micros: micros(timings.queued),
                service_micros: micros(timings.serviced),
                queue_depth: call.queue_depth,
            }),
            docs_searched: self.shard.doc_count(),
            generation: manifest.generation.clone(),
        })
    }

    /// The work a payload asks for, checked against the query limits before
    /// anything runs.
    fn decode_work(&self, payload: Any) -> Result<Work, LeafError> {
        let limits: &QueryLimits = self.shard.query_limits();
        if payload.type_url.len() > MAX_TYPE_URL_BYTES {
            return Err(LeafError::UnsupportedPayload {
                type_url: payload.type_url,
                supported: capabilities().join(", "),
            });
        }
        if is::<ShardSearchRequest>(&payload) {
            let search: ShardSearchRequest = unpack(&payload).map_err(malformed)?;
            check_query(&search.query, query_mode(search.mode)?, limits)?;
            Ok(Work::Search(search))
        } else if is::<FetchRequest>(&payload) {
            let fetch: FetchRequest = unpack(&payload).map_err(malformed)?;
            if fetch.snippets {
                check_query(&fetch.query, query_mode(fetch.mode)?, limits)?;
            }
            Ok(Work::Fetch(fetch))
        } else {
            Err(LeafError::UnsupportedPayload {
                type_url: payload.type_url,
                supported: capabilities().join(", "),
            })
        }
    }

    /// Refuses a call that would wait in the queue longer than the leaf
    /// allows or than its deadline leaves.
    fn admit(&self, call: &CallContext) -> Result<(), LeafError> {
        let queued =
            u64::try_from(self.pool.stats().in_flight.load(Ordering::Relaxed)).unwrap_or(u64::MAX);
        let service = Duration::from_micros(self.service_micros.load(Ordering::Relaxed));
        // Work ahead of this call, spread over the threads, plus its own.
        let expected_wait = service.saturating_mul(
            u32::try_from(queued / u64::from(self.search_threads)).unwrap_or(u32::MAX),
        );
        if expected_wait > self.max_queue_wait {
            return Err(LeafError::QueueTooLong {
                expected_wait,
                allowed: self.max_queue_wait,
                bound: "the queue time limit",
            });
        }
        if let Some(deadline) = call.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if expected_wait + service > left {
                return Err(LeafError::QueueTooLong {
                    expected_wait: expected_wait + service,
                    allowed: left,
                    bound: "the time the deadline leaves",
                });
            }
        }
        Ok(())
    }

    /// Runs `work` on the search pool and measures it: its wait in the
    /// pool's queue is a `queue_wait` span, the work itself the span `span`
    /// makes (`search` or `fetch`) when it starts. Work still queued at the
    /// call's deadline is not started; running work sees the deadline as a
    /// cancellation.
    async fn run_on_pool<F, S>(
        &self,
        call: &CallContext,
        span: S,
        work: F,
    ) -> Result<(Any, WorkTimings), LeafError>
    where
        F: FnOnce(&ShardSearcher, &dyn Fn() -> bool) -> Result<Any, LeafError> + Send + 'static,
        S: FnOnce(&tracing::Span) -> tracing::Span + Send + 'static,
    {
        let shard = Arc::clone(&self.shard);
        let service_micros = Arc::clone(&self.service_micros);
        let arrived = call.arrived;
        let deadline = call.deadline;
        let parent = tracing::Span::current();
        let queue_wait = tracing::debug_span!("queue_wait", depth = call.queue_depth);
        let outcome = self
            .pool
            .run(move |cancellation| {
                drop(queue_wait);
                let _span = span(&parent).entered();
                let started = Instant::now();
                let queued = started.duration_since(arrived);
                if deadline.is_some_and(|deadline| started >= deadline) {
                    let timings = WorkTimings {
                        queued,
                        serviced: Duration::ZERO,
                    };
                    return (Err(LeafError::DeadlineExpiredInQueue { queued }), timings);
                }
                let is_cancelled = || {
                    cancellation.is_cancelled()
                        || deadline.is_some_and(|deadline| Instant::now() >= deadline)
                };
                let result = work(&shard, &is_cancelled);
                let serviced = started.elapsed();
                record_service_time(&service_micros, serviced);
                (result, WorkTimings { queued, serviced })
            })
            .await;
        // The receiver is only gone if the worker panicked: we still await it.
        let (result, timings) = outcome.map_err(|_| LeafError::WorkerLost)?;
        Ok((result?, timings))
    }
}

/// What the leaf knows of one call when it arrives.
struct CallContext {
    arrived: Instant,
    /// From the caller's `grpc-timeout`.
    deadline: Option<Instant>,
    /// Calls already in flight when this one arrived.
    queue_depth: u32,
}

/// A decoded Execute payload.
enum Work {
    Search(ShardSearchRequest),
    Fetch(FetchRequest),
}

/// Folds one service time into the recent-service-time EWMA (weight 1/8).
fn record_service_time(ewma_micros: &AtomicU64, serviced: Duration) {
    let sample = micros(serviced);
    let previous = ewma_micros.load(Ordering::Relaxed);
    let next = if previous == 0 {
        sample
    } else {
        previous - previous / 8 + sample / 8
    };
    // A lost update between two threads only skips one sample.
    ewma_micros.store(next, Ordering::Relaxed);
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
        let in_flight = InFlightCall::enter(&self.in_flight);
        let timeout = match timeout_from_metadata(request.metadata()) {
            Ok(timeout) => timeout,
            Err(error) => {
                watch.answered = true;
                self.metrics
                    .call_finished(LeafMethod::Execute, Code::InvalidArgument);
                return Err(Status::invalid_argument(error.to_string()));
            }
        };
        let call = CallContext {
            arrived,
            deadline: timeout.and_then(|timeout| arrived.checked_add(timeout)),
            queue_depth: in_flight.depth_at_arrival,
        };
        let (metadata, _, request) = request.into_parts();
        let is_search = request
            .payload
            .as_ref()
            .is_some_and(is::<ShardSearchRequest>);
        let payload_type = request
            .payload
            .as_ref()
            .map(|payload| {
                let name = payload.type_url.rsplit('/').next().unwrap_or_default();
                fanout_proto::status::quote(name)
            })
            .unwrap_or_default();
        let span = tracing::debug_span!(
            "execute",
            request_id = %fanout_proto::status::plain_or_quoted(&request.request_id),
            attempt = request.attempt,
            shard = request.shard_id,
            payload = %payload_type,
            trace_id = tracing::field::Empty,
            otel.kind = "server",
        );
        fanout_runtime::trace_context::adopt_caller(&span, &metadata);
        let result = self
            .execute_payload(request, call)
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
        LeafError::Overloaded { .. }
        | LeafError::QueueTooLong { .. }
        | LeafError::WrongShard { .. } => {
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
        LeafService::new(
            shard,
            CpuPool::new("test", 1).unwrap(),
            1,
            LeafAdmission::default(),
        )
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
            "fanout_leaf_calls_total{code=\"RESOURCE_EXHAUSTED\",method=\"execute\"} 1\n",
            "fanout_leaf_calls_total{code=\"OK\",method=\"execute\"} 1\n",
            "fanout_leaf_calls_total{code=\"CANCELLED\",method=\"execute\"} 1\n",
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
