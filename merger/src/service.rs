//! Any [`Merge`] as a `fanout.v1.Merger` gRPC service.
//!
//! One `Merge` call per request. The response headers go out at once; the
//! input stream is then read message by message as the response stream is
//! polled, so nothing is spawned and a call whose client went away is cleaned
//! up by dropping it. The call ends with:
//! - OK after `result`, once `end` was merged;
//! - the merge's own status if `start`, `add` or `finish` failed;
//! - INVALID_ARGUMENT when the first message is not `start` (or `start` repeats);
//! - ABORTED when the input ends before `end`, CANCELLED when it breaks
//!   (both: the client went away, logged at debug);
//! - INVALID_ARGUMENT when a message follows `end` (after the result);
//! - DEADLINE_EXCEEDED once the call's `grpc-timeout` has passed, or, for a
//!   call that sets none, after [`MergerLimits::max_session_time`];
//! - RESOURCE_EXHAUSTED at once when [`MergerLimits::max_sessions`] merges
//!   are already open (retryable: the root tries its next merger).
//!
//! What a call holds is freed when it ends, whichever way: the state lives
//! in the response stream, which tonic drops when the client goes away.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fanout_proto::v1::merge_input::Kind as InputKind;
use fanout_proto::v1::merge_output::Kind as OutputKind;
use fanout_proto::v1::merger_server::{Merger, MergerServer};
use fanout_proto::v1::{Enough, MergeInput, MergeOutput, MergeResult};
use fanout_runtime::deadline::timeout_from_metadata;
use fanout_runtime::serve::{DrainOptions, GrpcService, ServerTransport};
use futures::Stream;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tonic::codec::CompressionEncoding;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::error::MergerError;
use crate::merge::{Merge, MergeState, Progress};

/// The stream of outputs of one `Merge` call.
pub type MergeOutputStream = Pin<Box<dyn Stream<Item = Result<MergeOutput, Status>> + Send>>;

/// How much a merger takes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergerLimits {
    /// Merges open at once.
    pub max_sessions: usize,
    /// The longest a merge whose caller set no deadline may stay open.
    pub max_session_time: Duration,
}

impl Default for MergerLimits {
    fn default() -> Self {
        Self {
            max_sessions: 1024,
            max_session_time: Duration::from_secs(60),
        }
    }
}

/// The largest input message a merger decodes (a partial of 10,000 hits is
/// well under 1 MiB).
pub const MAX_INPUT_BYTES: usize = 16 * 1024 * 1024;

/// The `fanout.v1.Merger` implementation around one [`Merge`].
#[derive(Clone)]
pub struct MergerService {
    merge: Arc<dyn Merge>,
    limits: MergerLimits,
    open_sessions: Arc<AtomicUsize>,
}

impl MergerService {
    pub fn new(merge: Arc<dyn Merge>) -> Self {
        Self::with_limits(merge, MergerLimits::default())
    }

    pub fn with_limits(merge: Arc<dyn Merge>, limits: MergerLimits) -> Self {
        Self {
            merge,
            limits,
            open_sessions: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Merges open now.
    pub fn open_sessions(&self) -> usize {
        self.open_sessions.load(Ordering::Relaxed)
    }
}

/// Counts a merge as open until dropped.
struct OpenSession(Arc<AtomicUsize>);

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for MergerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MergerService").finish_non_exhaustive()
    }
}

/// `merge` as a gRPC service, ready for a tonic router: accepts gzip and zstd
/// requests, compresses responses with gzip when the client accepts it.
pub fn merger_service(merge: Arc<dyn Merge>, limits: MergerLimits) -> MergerServer<MergerService> {
    MergerServer::new(MergerService::with_limits(merge, limits))
        .max_decoding_message_size(MAX_INPUT_BYTES)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .send_compressed(CompressionEncoding::Gzip)
}

/// Serves `merge` on `listener` (with health and reflection) in plaintext
/// until `shutdown` resolves, then drains as `drain` says.
pub async fn serve(
    listener: TcpListener,
    merge: Arc<dyn Merge>,
    limits: MergerLimits,
    drain: DrainOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MergerError> {
    serve_over(
        listener,
        ServerTransport::default(),
        merge,
        limits,
        drain,
        shutdown,
    )
    .await
}

/// [`serve`] over `transport` (TLS, a health listener of its own).
pub async fn serve_over(
    listener: TcpListener,
    transport: ServerTransport,
    merge: Arc<dyn Merge>,
    limits: MergerLimits,
    drain: DrainOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MergerError> {
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, tls = transport.tls.is_some(), "merger serving");
    }
    let routes = Routes::new(merger_service(merge, limits));
    let service_names = vec![<MergerServer<MergerService> as NamedService>::NAME];
    GrpcService::new(routes, service_names)
        .with_transport(transport)
        .serve(listener, drain, shutdown)
        .await?;
    Ok(())
}

#[tonic::async_trait]
impl Merger for MergerService {
    type MergeStream = MergeOutputStream;

    async fn merge(
        &self,
        request: Request<Streaming<MergeInput>>,
    ) -> Result<Response<Self::MergeStream>, Status> {
        let timeout = timeout_from_metadata(request.metadata()).map_err(MergerError::from)?;
        let open = self.open_sessions.fetch_add(1, Ordering::Relaxed);
        let session = OpenSession(Arc::clone(&self.open_sessions));
        if open >= self.limits.max_sessions {
            return Err(MergerError::TooManySessions {
                limit: self.limits.max_sessions,
            }
            .into());
        }
        let timeout = timeout.unwrap_or(self.limits.max_session_time);
        // The session's span, from the call to the end of its stream; each
        // input an event in it.
        let span = tracing::debug_span!(
            "merge_session",
            request_id = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            otel.kind = "server",
        );
        fanout_runtime::trace_context::adopt_caller(&span, request.metadata());
        let call = MergeCall {
            merge: Arc::clone(&self.merge),
            inputs: request.into_inner(),
            deadline: Some(Instant::now() + timeout),
            phase: Phase::AwaitingStart,
            span,
            _session: session,
        };
        let outputs = futures::stream::unfold(call, |mut call| async move {
            let span = call.span.clone();
            let output = call.next_output().instrument(span).await?;
            Some((output, call))
        });
        Ok(Response::new(Box::pin(outputs)))
    }
}

/// One `Merge` call in progress.
struct MergeCall {
    merge: Arc<dyn Merge>,
    inputs: Streaming<MergeInput>,
    deadline: Option<Instant>,
    phase: Phase,
    span: tracing::Span,
    _session: OpenSession,
}

enum Phase {
    AwaitingStart,
    Merging {
        state: Box<dyn MergeState>,
        enough_sent: bool,
    },
    /// The result was sent; the input must end without another message.
    Answered,
    Done,
}

impl MergeCall {
    /// Reads inputs until there is something to answer; `None` once the call
    /// is over.
    async fn next_output(&mut self) -> Option<Result<MergeOutput, Status>> {
        loop {
            match self.phase {
                Phase::Done => return None,
                Phase::Answered => {
                    let next = self.next_input().await;
                    self.phase = Phase::Done;
                    return match next {
                        Ok(_) => Some(Err(MergerError::InputAfterEnd.into())),
                        // The input ended (or broke): the call is over.
                        Err(_) => None,
                    };
                }
                Phase::AwaitingStart | Phase::Merging { .. } => {}
            }
            let step = match self.next_input().await {
                Ok(kind) => self.take(kind),
                Err(error) => Err(error.into()),
            };
            match step {
                Ok(None) => continue,
                Ok(Some(output)) => return Some(Ok(output)),
                Err(status) => {
                    self.phase = Phase::Done;
                    return Some(Err(status));
                }
            }
        }
    }

    async fn next_input(&mut self) -> Result<InputKind, MergerError> {
        let message = match self.deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, self.inputs.message())
                .await
                .map_err(|_| MergerError::DeadlineExceeded)?,
            None => self.inputs.message().await,
        };
        match message {
            Ok(Some(MergeInput { kind: Some(kind) })) => Ok(kind),
            Ok(Some(MergeInput { kind: None })) => Err(MergerError::InputWithoutKind),
            Ok(None) => {
                // After the result, the input's end is the call's normal end.
                if !matches!(self.phase, Phase::Answered) {
                    tracing::debug!("merge input ended before end; the client went away");
                }
                Err(MergerError::InputEndedBeforeEnd)
            }
            Err(status) => {
                tracing::debug!(%status, "merge input broke; the client went away");
                Err(MergerError::ClientWentAway(status.message().to_owned()))
            }
        }
    }

    /// Applies one input; returns what to send, if anything.
    fn take(&mut self, kind: InputKind) -> Result<Option<MergeOutput>, Status> {
        let phase = std::mem::replace(&mut self.phase, Phase::Done);
        match (phase, kind) {
            (Phase::AwaitingStart, InputKind::Start(start)) => {
                self.span.record(
                    "request_id",
                    fanout_proto::status::plain_or_quoted(&start.request_id).as_ref(),
                );
                tracing::debug!(
                    request_id = %start.request_id,
                    shard_count = start.shard_count,
                    "merge started"
                );
                let state = self.merge.start(&start)?;
                self.phase = Phase::Merging {
                    state,
                    enough_sent: false,
                };
                Ok(None)
            }
            (Phase::AwaitingStart, _) => Err(MergerError::FirstMessageNotStart.into()),
            (Phase::Merging { .. }, InputKind::Start(_)) => Err(MergerError::StartSentTwice.into()),
            (
                Phase::Merging {
                    mut state,
                    enough_sent,
                },
                InputKind::Partial(partial),
            ) => {
                tracing::debug!(shard_id = partial.shard_id, "partial");
                let progress = state.add(partial)?;
                let enough = match progress {
                    Progress::Enough(reason) if !enough_sent => Some(reason),
                    Progress::Enough(_) | Progress::Continue => None,
                };
                self.phase = Phase::Merging {
                    state,
                    enough_sent: enough_sent || enough.is_some(),
                };
                Ok(enough.map(|reason| MergeOutput {
                    kind: Some(OutputKind::Enough(Enough { reason })),
                }))
            }
            (Phase::Merging { state, .. }, InputKind::End(end)) => {
                tracing::debug!("end");
                let payload = state.finish(end)?;
                self.phase = Phase::Answered;
                Ok(Some(MergeOutput {
                    kind: Some(OutputKind::Result(MergeResult {
                        payload: Some(payload),
                    })),
                }))
            }
            // next_output never reads input once the result is sent.
            (Phase::Answered | Phase::Done, _) => Ok(None),
        }
    }
}
