//! The root's side of a merge, the same whether the merge runs in the root's
//! process ([`MergerEndpoint::Embedded`]) or in a merger process reached over
//! gRPC ([`MergerEndpoint::Remote`]).
//!
//! A request opens one [`MergeSession`], streams each shard's partial into it
//! as the shard answers, watches [`MergeSession::enough`] to cancel the
//! stragglers early, and calls [`MergeSession::finish`] for the merged payload:
//!
//! ```no_run
//! # use fanout_merger::MergerEndpoint;
//! # use fanout_proto::v1::{MergeEnd, MergeStart, ShardPartial};
//! # async fn fan_out(
//! #     merger: MergerEndpoint,
//! #     start: MergeStart,
//! #     mut answers: tokio::sync::mpsc::Receiver<ShardPartial>,
//! # ) -> Result<prost_types::Any, tonic::Status> {
//! let mut session = merger.open(start, None).await?;
//! loop {
//!     tokio::select! {
//!         answer = answers.recv() => match answer {
//!             Some(partial) => session.add_partial(partial).await?,
//!             None => break, // every shard answered
//!         },
//!         reason = session.enough() => {
//!             tracing::debug!(%reason, "the merger has enough; cancelling the stragglers");
//!             break;
//!         }
//!     }
//! }
//! session.finish(MergeEnd::default()).await
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use fanout_proto::v1::merge_input::Kind as InputKind;
use fanout_proto::v1::merge_output::Kind as OutputKind;
use fanout_proto::v1::merger_client::MergerClient;
use fanout_proto::v1::{MergeEnd, MergeInput, MergeOutput, MergeStart, ShardPartial};
use fanout_runtime::client::{grpc_url, internal_endpoint, lazy_channel};
use fanout_runtime::tls::ClientTls;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::CompressionEncoding;
use tonic::transport::Channel;
use tonic::{Request, Status, Streaming};

use crate::error::MergerError;
use crate::merge::{Merge, MergeState, Progress};

/// Inputs queued towards a remote merger before `add_partial` waits.
const REMOTE_INPUT_BUFFER: usize = 64;

/// Where a request's merge runs.
#[derive(Clone)]
pub enum MergerEndpoint {
    /// In the root's process: the merge is called directly.
    Embedded(Arc<dyn Merge>),
    /// In a merger process: one bidirectional `fanout.v1.Merger/Merge` stream
    /// per request.
    Remote(MergerClient<Channel>),
}

impl std::fmt::Debug for MergerEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MergerEndpoint::Embedded(_) => f.write_str("MergerEndpoint::Embedded"),
            MergerEndpoint::Remote(_) => f.write_str("MergerEndpoint::Remote"),
        }
    }
}

impl MergerEndpoint {
    /// A remote endpoint for the merger at `url` ("http://127.0.0.1:7000" or
    /// just "127.0.0.1:7000"). The channel connects lazily, on the first
    /// request, with the settings of every internal hop
    /// ([`internal_endpoint`]); requests are sent gzip-compressed and gzip or
    /// zstd responses accepted.
    pub async fn connect(url: &str) -> Result<MergerEndpoint, MergerError> {
        Self::connect_with(url, None).await
    }

    /// [`connect`](Self::connect), over TLS when `tls` is given.
    pub async fn connect_with(
        url: &str,
        tls: Option<&ClientTls>,
    ) -> Result<MergerEndpoint, MergerError> {
        let invalid = |reason: String| MergerError::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let full_url = grpc_url(url).map_err(invalid)?;
        let channel = lazy_channel(&internal_endpoint(&full_url, tls, None).map_err(invalid)?);
        let client = MergerClient::new(channel)
            .send_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd);
        Ok(MergerEndpoint::Remote(client))
    }

    /// Starts the merge of one request. `timeout` is the time left for it: a
    /// remote merger receives it as the call's `grpc-timeout`, and the
    /// session's own waits on the merger end with DEADLINE_EXCEEDED once it
    /// has passed. An embedded merge runs inline and needs no timeout.
    ///
    /// An embedded merge rejects a bad `start` here; a remote one answers
    /// only once it reads it, so its rejection comes from the session's next
    /// `add_partial` or `finish`.
    pub async fn open(
        &self,
        start: MergeStart,
        timeout: Option<Duration>,
    ) -> Result<MergeSession, Status> {
        let session = match self {
            MergerEndpoint::Embedded(merge) => SessionKind::Embedded(EmbeddedSession {
                state: merge.start(&start)?,
                enough: EnoughSignal::default(),
                failure: None,
            }),
            MergerEndpoint::Remote(client) => SessionKind::Remote(Box::new(
                RemoteSession::open(client.clone(), start, timeout).await?,
            )),
        };
        Ok(MergeSession { session })
    }
}

/// The merge of one request, from the root's side.
///
/// Once the merge has failed, every later `add_partial` and `finish` answers
/// the same status.
pub struct MergeSession {
    session: SessionKind,
}

impl std::fmt::Debug for MergeSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.session {
            SessionKind::Embedded(_) => "embedded",
            SessionKind::Remote(_) => "remote",
        };
        f.debug_struct("MergeSession")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

enum SessionKind {
    Embedded(EmbeddedSession),
    // Boxed: a streaming call is far larger than an embedded state.
    Remote(Box<RemoteSession>),
}

impl MergeSession {
    /// Hands one shard's partial to the merge now. A remote merger that has
    /// failed or closed the call early answers its status here.
    pub async fn add_partial(&mut self, partial: ShardPartial) -> Result<(), Status> {
        match &mut self.session {
            SessionKind::Embedded(session) => session.add_partial(partial),
            SessionKind::Remote(session) => session.add_partial(partial).await,
        }
    }

    /// Resolves when the merger says further partials cannot change the
    /// result, with its reason; resolves at most once per session and stays
    /// pending forever otherwise (also when the merge fails: the failure is
    /// answered by `add_partial` or `finish`). Cancel-safe: it may be polled in
    /// a `tokio::select!` loop and dropped at any time without losing the
    /// signal.
    pub async fn enough(&mut self) -> String {
        match &mut self.session {
            SessionKind::Embedded(session) => session.enough.next().await,
            SessionKind::Remote(session) => session.enough().await,
        }
    }

    /// Ends the merge with the final coverage and returns the merged payload.
    pub async fn finish(self, end: MergeEnd) -> Result<prost_types::Any, Status> {
        match self.session {
            SessionKind::Embedded(session) => session.finish(end),
            SessionKind::Remote(session) => session.finish(end).await,
        }
    }
}

/// The merger's "enough", kept until [`MergeSession::enough`] hands it out.
#[derive(Debug, Default)]
struct EnoughSignal {
    /// Said and not yet handed out.
    unreported: Option<String>,
    /// Said at all: a merger says it once; a repeat is ignored.
    said: bool,
}

impl EnoughSignal {
    fn record(&mut self, reason: String) {
        if self.said {
            return;
        }
        self.said = true;
        self.unreported = Some(reason);
    }

    fn take(&mut self) -> Option<String> {
        self.unreported.take()
    }

    /// The reason if it was said and not handed out yet; pending otherwise.
    async fn next(&mut self) -> String {
        match self.take() {
            Some(reason) => reason,
            None => std::future::pending().await,
        }
    }
}

/// A merge running inline in the caller's task.
struct EmbeddedSession {
    state: Box<dyn MergeState>,
    enough: EnoughSignal,
    failure: Option<Status>,
}

impl EmbeddedSession {
    fn add_partial(&mut self, partial: ShardPartial) -> Result<(), Status> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        match self.state.add(partial) {
            Ok(Progress::Continue) => Ok(()),
            Ok(Progress::Enough(reason)) => {
                self.enough.record(reason);
                Ok(())
            }
            Err(status) => {
                self.failure = Some(status.clone());
                Err(status)
            }
        }
    }

    fn finish(self, end: MergeEnd) -> Result<prost_types::Any, Status> {
        if let Some(failure) = self.failure {
            return Err(failure);
        }
        self.state.finish(end)
    }
}

/// A merge in a merger process: inputs go out through `inputs` (the request
/// stream of the call), outputs come back on `outputs`.
struct RemoteSession {
    inputs: mpsc::Sender<MergeInput>,
    outputs: Streaming<MergeOutput>,
    deadline: Option<Instant>,
    enough: EnoughSignal,
    /// Set once the call has failed or ended; every later call answers it.
    failure: Option<Status>,
}

impl RemoteSession {
    async fn open(
        mut client: MergerClient<Channel>,
        start: MergeStart,
        timeout: Option<Duration>,
    ) -> Result<RemoteSession, Status> {
        let deadline = timeout.map(|timeout| Instant::now() + timeout);
        let (inputs, receiver) = mpsc::channel(REMOTE_INPUT_BUFFER);
        let start = MergeInput {
            kind: Some(InputKind::Start(start)),
        };
        if inputs.try_send(start).is_err() {
            // The channel is new, empty and its receiver alive: cannot happen.
            return Err(Status::internal("cannot queue the merge start"));
        }
        let mut request = Request::new(ReceiverStream::new(receiver));
        if let Some(timeout) = timeout {
            request.set_timeout(timeout);
        }
        fanout_runtime::trace_context::inject_current(request.metadata_mut());
        let response = within_deadline(deadline, client.merge(request)).await??;
        Ok(RemoteSession {
            inputs,
            outputs: response.into_inner(),
            deadline,
            enough: EnoughSignal::default(),
            failure: None,
        })
    }

    async fn add_partial(&mut self, partial: ShardPartial) -> Result<(), Status> {
        let input = MergeInput {
            kind: Some(InputKind::Partial(partial)),
        };
        self.send(input).await
    }

    /// Queues `input` on the call, reading whatever the merger says meanwhile
    /// so that a merger that has failed is answered instead of waited on.
    async fn send(&mut self, input: MergeInput) -> Result<(), Status> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        let deadline = self.deadline;
        // A clone, so that a permit borrows it rather than the whole session.
        let inputs = self.inputs.clone();
        let sent = within_deadline(deadline, async {
            loop {
                let step = tokio::select! {
                    biased;
                    output = self.outputs.message() => SendStep::Heard(output),
                    permit = inputs.reserve() => match permit {
                        Ok(permit) => SendStep::Ready(permit),
                        Err(_) => SendStep::CallOver,
                    },
                };
                match step {
                    SendStep::Ready(permit) => {
                        permit.send(input);
                        return Ok(());
                    }
                    SendStep::Heard(output) => {
                        self.note_output(output);
                        if let Some(failure) = &self.failure {
                            return Err(failure.clone());
                        }
                    }
                    // The call dropped its request stream: it is over and its
                    // status is on the way.
                    SendStep::CallOver => return Err(self.wait_for_failure().await),
                }
            }
        })
        .await;
        self.settle(sent)
    }

    async fn enough(&mut self) -> String {
        loop {
            if let Some(reason) = self.enough.take() {
                return reason;
            }
            if self.failure.is_some() {
                return std::future::pending().await;
            }
            // Streaming::message is cancel-safe: the stream keeps its state.
            let output = self.outputs.message().await;
            self.note_output(output);
        }
    }

    async fn finish(mut self, end: MergeEnd) -> Result<prost_types::Any, Status> {
        let end = MergeInput {
            kind: Some(InputKind::End(end)),
        };
        self.send(end).await?;
        let RemoteSession {
            inputs,
            mut outputs,
            deadline,
            ..
        } = self;
        // Nothing follows end: close the request stream.
        drop(inputs);
        let result = within_deadline(deadline, async {
            loop {
                let output = match outputs.message().await {
                    Ok(Some(MergeOutput { kind: Some(kind) })) => kind,
                    Ok(Some(MergeOutput { kind: None })) => {
                        return Err(MergerError::OutputWithoutKind.into());
                    }
                    Ok(None) => return Err(MergerError::ClosedWithoutResult.into()),
                    Err(status) => return Err(status),
                };
                match output {
                    OutputKind::Enough(_) => continue,
                    OutputKind::Result(result) => {
                        return result
                            .payload
                            .ok_or_else(|| MergerError::ResultWithoutPayload.into());
                    }
                }
            }
        })
        .await;
        result?
    }

    /// Records what the merger said while the session was not finishing.
    fn note_output(&mut self, output: Result<Option<MergeOutput>, Status>) {
        let failure: Status = match output {
            Ok(Some(MergeOutput {
                kind: Some(OutputKind::Enough(enough)),
            })) => {
                self.enough.record(enough.reason);
                return;
            }
            Ok(Some(MergeOutput {
                kind: Some(OutputKind::Result(_)),
            })) => MergerError::ResultBeforeEnd.into(),
            Ok(Some(MergeOutput { kind: None })) => MergerError::OutputWithoutKind.into(),
            Ok(None) => MergerError::ClosedWithoutResult.into(),
            Err(status) => status,
        };
        if self.failure.is_none() {
            self.failure = Some(failure);
        }
    }

    async fn wait_for_failure(&mut self) -> Status {
        loop {
            if let Some(failure) = &self.failure {
                return failure.clone();
            }
            let output = self.outputs.message().await;
            self.note_output(output);
        }
    }

    /// Remembers a deadline that passed as the session's failure.
    fn settle<T>(&mut self, outcome: Result<Result<T, Status>, Status>) -> Result<T, Status> {
        match outcome {
            Ok(result) => result,
            Err(deadline_exceeded) => {
                self.failure = Some(deadline_exceeded.clone());
                Err(deadline_exceeded)
            }
        }
    }
}

/// What happened while waiting to queue an input.
enum SendStep<'a> {
    Ready(mpsc::Permit<'a, MergeInput>),
    Heard(Result<Option<MergeOutput>, Status>),
    CallOver,
}

/// Runs `work`, giving up with DEADLINE_EXCEEDED at `deadline` if there is one.
async fn within_deadline<T>(
    deadline: Option<Instant>,
    work: impl Future<Output = T>,
) -> Result<T, Status> {
    let Some(deadline) = deadline else {
        return Ok(work.await);
    };
    tokio::time::timeout_at(deadline, work)
        .await
        .map_err(|_| MergerError::DeadlineExceeded.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    /// Says enough once `quorum` partials arrived; fails on shard id 99.
    struct QuorumMerge {
        quorum: usize,
    }

    struct QuorumState {
        quorum: usize,
        shards: Vec<u32>,
    }

    impl Merge for QuorumMerge {
        fn start(&self, start: &MergeStart) -> Result<Box<dyn MergeState>, Status> {
            if start.shard_count == 0 {
                return Err(Status::invalid_argument("no shards"));
            }
            Ok(Box::new(QuorumState {
                quorum: self.quorum,
                shards: Vec::new(),
            }))
        }
    }

    impl MergeState for QuorumState {
        fn add(&mut self, partial: ShardPartial) -> Result<Progress, Status> {
            if partial.shard_id == 99 {
                return Err(Status::invalid_argument("shard 99 is cursed"));
            }
            self.shards.push(partial.shard_id);
            if self.shards.len() >= self.quorum {
                return Ok(Progress::Enough(format!("{} shards", self.shards.len())));
            }
            Ok(Progress::Continue)
        }

        fn finish(self: Box<Self>, _end: MergeEnd) -> Result<prost_types::Any, Status> {
            Ok(fanout_proto::any::pack(&(self.shards.len() as u64)))
        }
    }

    fn embedded(quorum: usize) -> MergerEndpoint {
        MergerEndpoint::Embedded(Arc::new(QuorumMerge { quorum }))
    }

    fn start(shard_count: u32) -> MergeStart {
        MergeStart {
            shard_count,
            ..Default::default()
        }
    }

    fn partial(shard_id: u32) -> ShardPartial {
        ShardPartial {
            shard_id,
            ..Default::default()
        }
    }

    /// Polls `session.enough()` once and drops it, as a losing select branch does.
    async fn enough_now(session: &mut MergeSession) -> Option<String> {
        tokio::select! {
            biased;
            reason = session.enough() => Some(reason),
            () = std::future::ready(()) => None,
        }
    }

    #[tokio::test]
    async fn embedded_enough_survives_cancellation_and_resolves_once() {
        let mut session = embedded(2).open(start(3), None).await.unwrap();
        assert_eq!(enough_now(&mut session).await, None);
        session.add_partial(partial(0)).await.unwrap();
        assert_eq!(enough_now(&mut session).await, None);
        session.add_partial(partial(1)).await.unwrap();
        // A third partial says enough again: it is not repeated.
        session.add_partial(partial(2)).await.unwrap();
        assert_eq!(enough_now(&mut session).await.as_deref(), Some("2 shards"));
        assert_eq!(enough_now(&mut session).await, None);
        let result = session.finish(MergeEnd::default()).await.unwrap();
        assert_eq!(fanout_proto::any::unpack::<u64>(&result).unwrap(), 3);
    }

    #[tokio::test]
    async fn embedded_failures_stick() {
        let status = embedded(2).open(start(0), None).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);

        let mut session = embedded(5).open(start(3), None).await.unwrap();
        let status = session.add_partial(partial(99)).await.unwrap_err();
        assert_eq!(status.message(), "shard 99 is cursed");
        let status = session.add_partial(partial(0)).await.unwrap_err();
        assert_eq!(status.message(), "shard 99 is cursed");
        let status = session.finish(MergeEnd::default()).await.unwrap_err();
        assert_eq!(status.message(), "shard 99 is cursed");
    }

    #[tokio::test]
    async fn connect_accepts_addresses_with_or_without_a_scheme() {
        for url in ["127.0.0.1:7000", "http://127.0.0.1:7000", "localhost:7000"] {
            let endpoint = MergerEndpoint::connect(url).await.unwrap();
            assert!(matches!(endpoint, MergerEndpoint::Remote(_)), "{url}");
        }
        let error = MergerEndpoint::connect("not a url").await.unwrap_err();
        assert!(
            matches!(error, MergerError::InvalidUrl { ref url, .. } if url == "not a url"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_remote_merger_that_is_down_fails_the_open() {
        // Bind then drop a listener: nothing listens on that port any more.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let endpoint = MergerEndpoint::connect(&address.to_string()).await.unwrap();
        let status = endpoint
            .open(start(1), Some(Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status}");
    }
}
