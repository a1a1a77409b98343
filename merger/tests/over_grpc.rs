//! The merger over a real socket: `serve` on a port-0 listener in this
//! process, the root's side through `MergerEndpoint::connect`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fanout_merger::{
    Merge, MergeState, MergerEndpoint, MergerLimits, MergerSet, Progress, TopKMerge, serve,
};
use fanout_proto::any;
use fanout_proto::search::v1::{ShardHit, ShardSearchRequest, ShardSearchResponse};
use fanout_proto::v1::merge_input::Kind as InputKind;
use fanout_proto::v1::merge_output::Kind as OutputKind;
use fanout_proto::v1::merger_client::MergerClient;
use fanout_proto::v1::{Coverage, MergeEnd, MergeInput, MergeStart, ShardPartial};
use fanout_runtime::serve::DrainOptions;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

/// A merger process in miniature; stopped (and checked) by [`RunningMerger::stop`].
struct RunningMerger {
    address: SocketAddr,
    stop: oneshot::Sender<()>,
    server: JoinHandle<Result<(), fanout_merger::MergerError>>,
}

impl RunningMerger {
    async fn start(merge: Arc<dyn Merge>) -> RunningMerger {
        Self::start_with(merge, MergerLimits::default()).await
    }

    async fn start_with(merge: Arc<dyn Merge>, limits: MergerLimits) -> RunningMerger {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let drain = DrainOptions {
            drain_delay: Duration::ZERO,
            grace: Duration::from_secs(2),
        };
        let server = tokio::spawn(serve(listener, merge, limits, drain, async move {
            let _ = stopped.await;
        }));
        RunningMerger {
            address,
            stop,
            server,
        }
    }

    async fn endpoint(&self) -> MergerEndpoint {
        MergerEndpoint::connect(&self.address.to_string())
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.server.await.unwrap().unwrap();
    }
}

fn search_start(k: u32, shard_count: u32) -> MergeStart {
    MergeStart {
        request: Some(any::pack(&ShardSearchRequest {
            query: "package manager".into(),
            k,
            ..Default::default()
        })),
        shard_count,
        timeout_micros: 5_000_000,
        request_id: "test-request".into(),
    }
}

fn search_partial(shard_id: u32, hits: &[(&str, f32)]) -> ShardPartial {
    let hits = hits
        .iter()
        .enumerate()
        .map(|(index, (id, score))| ShardHit {
            score: *score,
            id: (*id).to_owned(),
            shard_id,
            segment_ord: 0,
            doc_id: index as u32,
        })
        .collect::<Vec<_>>();
    let response = ShardSearchResponse {
        total_hits: hits.len() as u64 * 10,
        hits,
        generation: "gen-1".into(),
        docs_searched: 1000,
    };
    ShardPartial {
        shard_id,
        replica: format!("127.0.0.1:71{shard_id:02}"),
        attempt: 0,
        latency_micros: 1200,
        payload: Some(any::pack(&response)),
    }
}

fn three_partials() -> Vec<ShardPartial> {
    vec![
        search_partial(2, &[("apt", 7.5), ("dpkg", 3.0), ("aptitude", 1.0)]),
        search_partial(0, &[("synaptic", 7.5), ("nala", 2.0)]),
        search_partial(1, &[("flatpak", 4.0), ("snapd", 3.0), ("guix", 0.5)]),
    ]
}

fn end() -> MergeEnd {
    MergeEnd {
        coverage: Some(Coverage {
            shards_total: 3,
            shards_answered: 3,
            ..Default::default()
        }),
    }
}

async fn merge_through(
    endpoint: &MergerEndpoint,
    start: MergeStart,
    partials: Vec<ShardPartial>,
) -> Result<ShardSearchResponse, Status> {
    let mut session = endpoint.open(start, Some(Duration::from_secs(5))).await?;
    for partial in partials {
        session.add_partial(partial).await?;
    }
    let payload = session.finish(end()).await?;
    Ok(any::unpack(&payload).expect("the top-k merge answers a ShardSearchResponse"))
}

#[tokio::test]
async fn a_remote_session_answers_what_the_embedded_merge_answers() {
    let merger = RunningMerger::start(Arc::new(TopKMerge)).await;
    let remote = merger.endpoint().await;
    let embedded = MergerEndpoint::Embedded(Arc::new(TopKMerge));

    let over_the_wire = merge_through(&remote, search_start(4, 3), three_partials())
        .await
        .unwrap();
    let in_process = merge_through(&embedded, search_start(4, 3), three_partials())
        .await
        .unwrap();
    assert_eq!(over_the_wire, in_process);
    let ids: Vec<_> = over_the_wire
        .hits
        .iter()
        .map(|hit| hit.id.as_str())
        .collect();
    assert_eq!(ids, ["apt", "synaptic", "flatpak", "dpkg"]);
    assert_eq!(over_the_wire.total_hits, 80);
    assert_eq!(over_the_wire.docs_searched, 3000);

    // The endpoint is reusable: a second request on the same channel.
    let again = merge_through(&remote, search_start(4, 3), three_partials())
        .await
        .unwrap();
    assert_eq!(again, in_process);
    merger.stop().await;
}

/// Says enough after two partials and answers the shard ids it saw.
struct FirstTwoMerge;

struct FirstTwoState {
    shard_ids: Vec<u32>,
}

impl Merge for FirstTwoMerge {
    fn start(&self, _start: &MergeStart) -> Result<Box<dyn MergeState>, Status> {
        Ok(Box::new(FirstTwoState {
            shard_ids: Vec::new(),
        }))
    }
}

impl MergeState for FirstTwoState {
    fn add(&mut self, partial: ShardPartial) -> Result<Progress, Status> {
        self.shard_ids.push(partial.shard_id);
        if self.shard_ids.len() == 2 {
            return Ok(Progress::Enough("two shards are plenty".into()));
        }
        Ok(Progress::Continue)
    }

    fn finish(self: Box<Self>, _end: MergeEnd) -> Result<prost_types::Any, Status> {
        let shard_ids: Vec<String> = self.shard_ids.iter().map(u32::to_string).collect();
        Ok(any::pack(&shard_ids.join(",")))
    }
}

#[tokio::test]
async fn enough_travels_over_the_wire() {
    let merger = RunningMerger::start(Arc::new(FirstTwoMerge)).await;
    let endpoint = merger.endpoint().await;
    let mut session = endpoint
        .open(search_start(10, 3), Some(Duration::from_secs(5)))
        .await
        .unwrap();

    session.add_partial(search_partial(1, &[])).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(200), session.enough()).await;
    assert!(early.is_err(), "enough after one partial: {early:?}");

    session.add_partial(search_partial(0, &[])).await.unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(5), session.enough())
        .await
        .expect("the merger said enough after two partials");
    assert_eq!(reason, "two shards are plenty");

    // Partials already on their way are still taken; enough is not repeated.
    session.add_partial(search_partial(2, &[])).await.unwrap();
    let repeated = tokio::time::timeout(Duration::from_millis(200), session.enough()).await;
    assert!(repeated.is_err(), "enough said twice: {repeated:?}");

    let payload = session.finish(end()).await.unwrap();
    assert_eq!(any::unpack::<String>(&payload).unwrap(), "1,0,2");
    merger.stop().await;
}

#[tokio::test]
async fn enough_in_a_select_loop_is_not_lost() {
    let merger = RunningMerger::start(Arc::new(FirstTwoMerge)).await;
    let endpoint = merger.endpoint().await;
    let mut session = endpoint.open(search_start(10, 3), None).await.unwrap();
    let (answers_tx, mut answers) = mpsc::channel(3);
    for shard_id in 0..3 {
        answers_tx
            .send(search_partial(shard_id, &[]))
            .await
            .unwrap();
    }
    drop(answers_tx);
    // The shape of the root's loop: enough races the shards' answers, and
    // loses every round while answers are ready.
    let mut added = 0;
    let mut reason = None;
    loop {
        tokio::select! {
            biased;
            answer = answers.recv() => match answer {
                Some(partial) => {
                    session.add_partial(partial).await.unwrap();
                    added += 1;
                }
                None => break,
            },
            said = session.enough() => {
                reason = Some(said);
                break;
            }
        }
    }
    assert_eq!(added, 3);
    let reason = match reason {
        Some(reason) => reason,
        None => tokio::time::timeout(Duration::from_secs(5), session.enough())
            .await
            .expect("enough said while the loop was busy is still there"),
    };
    assert_eq!(reason, "two shards are plenty");
    session.finish(end()).await.unwrap();
    merger.stop().await;
}

#[tokio::test]
async fn a_first_message_other_than_start_is_invalid_argument() {
    let merger = RunningMerger::start(Arc::new(TopKMerge)).await;
    let mut client = MergerClient::connect(format!("http://{}", merger.address))
        .await
        .unwrap();
    let first = MergeInput {
        kind: Some(InputKind::Partial(search_partial(0, &[("apt", 1.0)]))),
    };
    let inputs = tokio_stream::iter(vec![first]);
    let status = match client.merge(inputs).await {
        Ok(response) => response.into_inner().message().await.unwrap_err(),
        Err(status) => status,
    };
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "first message must be start");
    merger.stop().await;
}

#[tokio::test]
async fn merge_errors_reach_the_root_side() {
    let merger = RunningMerger::start(Arc::new(TopKMerge)).await;
    let endpoint = merger.endpoint().await;

    // A start of the wrong type: a remote merger answers it on the next call.
    let wrong_start = MergeStart {
        request: Some(any::pack(&ShardSearchResponse::default())),
        shard_count: 3,
        ..Default::default()
    };
    let status = merge_through(&endpoint, wrong_start, three_partials())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("type.googleapis.com/fanout.search.v1.ShardSearchResponse"),
        "{status}"
    );

    // A NaN score in the second partial fails the merge.
    let mut partials = three_partials();
    partials.insert(1, search_partial(1, &[("broken", f32::NAN)]));
    let status = merge_through(&endpoint, search_start(4, 3), partials)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("NaN"), "{status}");

    // The failure sticks to the session: add_partial says it, then finish.
    let mut session = endpoint.open(search_start(4, 3), None).await.unwrap();
    session
        .add_partial(search_partial(7, &[("out-of-range", 1.0)]))
        .await
        .unwrap();
    let status = loop {
        // The merger's answer races the next partials; it arrives soon.
        match session.add_partial(search_partial(0, &[])).await {
            Ok(()) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("shard 7"), "{status}");
    let status = session.finish(end()).await.unwrap_err();
    assert!(status.message().contains("shard 7"), "{status}");
    merger.stop().await;
}

#[tokio::test]
async fn the_merger_honours_the_call_deadline() {
    let merger = RunningMerger::start(Arc::new(TopKMerge)).await;
    let mut client = MergerClient::connect(format!("http://{}", merger.address))
        .await
        .unwrap();
    let (inputs, receiver) = mpsc::channel(4);
    inputs
        .send(MergeInput {
            kind: Some(InputKind::Start(search_start(10, 3))),
        })
        .await
        .unwrap();
    let mut request = tonic::Request::new(ReceiverStream::new(receiver));
    request.set_timeout(Duration::from_millis(150));
    let started = tokio::time::Instant::now();
    let mut outputs = client.merge(request).await.unwrap().into_inner();
    // The input stays open and nothing more comes: the deadline ends the call.
    let status = tokio::time::timeout(Duration::from_secs(5), outputs.message())
        .await
        .expect("the merger ends the call at its deadline")
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status}");
    assert!(started.elapsed() >= Duration::from_millis(150));
    drop(inputs);
    merger.stop().await;
}

#[tokio::test]
async fn a_session_times_out_on_its_own_side_too() {
    let merger = RunningMerger::start(Arc::new(TopKMerge)).await;
    let endpoint = merger.endpoint().await;
    let mut session = endpoint
        .open(search_start(10, 3), Some(Duration::from_millis(100)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let status = session.add_partial(search_partial(0, &[])).await;
    let status = match status {
        // The partial may still be queued before the merger's answer lands.
        Ok(()) => session.finish(end()).await.unwrap_err(),
        Err(status) => status,
    };
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status}");
    merger.stop().await;
}

#[tokio::test]
async fn a_client_that_goes_away_leaves_the_merger_serving() {
    let merger = RunningMerger::start(Arc::new(TopKMerge)).await;
    let endpoint = merger.endpoint().await;
    for _ in 0..3 {
        let mut session = endpoint.open(search_start(4, 3), None).await.unwrap();
        session
            .add_partial(search_partial(0, &[("apt", 1.0)]))
            .await
            .unwrap();
        drop(session);
    }
    let response = merge_through(&endpoint, search_start(4, 3), three_partials())
        .await
        .unwrap();
    assert_eq!(response.hits.len(), 4);
    merger.stop().await;
}

#[tokio::test]
async fn an_input_closed_before_end_is_aborted() {
    let merger = RunningMerger::start(Arc::new(TopKMerge)).await;
    let mut client = MergerClient::connect(format!("http://{}", merger.address))
        .await
        .unwrap();
    let inputs = tokio_stream::iter(vec![
        MergeInput {
            kind: Some(InputKind::Start(search_start(4, 3))),
        },
        MergeInput {
            kind: Some(InputKind::Partial(search_partial(0, &[("apt", 1.0)]))),
        },
    ]);
    let mut outputs = client.merge(inputs).await.unwrap().into_inner();
    let status = outputs.message().await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "{status}");

    // A well-formed call on the raw client gets its result and a clean end.
    let inputs = tokio_stream::iter(vec![
        MergeInput {
            kind: Some(InputKind::Start(search_start(4, 3))),
        },
        MergeInput {
            kind: Some(InputKind::Partial(search_partial(0, &[("apt", 1.0)]))),
        },
        MergeInput {
            kind: Some(InputKind::End(end())),
        },
    ]);
    let mut outputs = client.merge(inputs).await.unwrap().into_inner();
    let Some(OutputKind::Result(result)) = outputs.message().await.unwrap().unwrap().kind else {
        panic!("expected a result");
    };
    let response: ShardSearchResponse = any::unpack(&result.payload.unwrap()).unwrap();
    assert_eq!(response.hits[0].id, "apt");
    assert!(outputs.message().await.unwrap().is_none());
    merger.stop().await;
}

fn raw_inputs(messages: Vec<InputKind>) -> impl tokio_stream::Stream<Item = MergeInput> {
    tokio_stream::iter(
        messages
            .into_iter()
            .map(|kind| MergeInput { kind: Some(kind) })
            .collect::<Vec<_>>(),
    )
}

#[tokio::test]
async fn a_message_after_end_is_invalid_argument_after_the_result() {
    let merger = RunningMerger::start(Arc::new(TopKMerge)).await;
    let mut client = MergerClient::connect(format!("http://{}", merger.address))
        .await
        .unwrap();
    let inputs = raw_inputs(vec![
        InputKind::Start(search_start(4, 3)),
        InputKind::End(end()),
        InputKind::Partial(search_partial(0, &[("apt", 1.0)])),
    ]);
    let mut outputs = client.merge(inputs).await.unwrap().into_inner();
    let first = outputs.message().await.unwrap().unwrap();
    assert!(matches!(first.kind, Some(OutputKind::Result(_))));
    let status = outputs.message().await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status}");
    assert_eq!(status.message(), "input after end");
    merger.stop().await;
}

#[tokio::test]
async fn merges_beyond_the_limit_are_refused_and_a_cut_one_frees_its_place() {
    let limits = MergerLimits {
        max_sessions: 1,
        max_session_time: Duration::from_secs(60),
    };
    let merger = RunningMerger::start_with(Arc::new(TopKMerge), limits).await;
    let endpoint = merger.endpoint().await;
    let mut held = endpoint.open(search_start(4, 3), None).await.unwrap();
    held.add_partial(search_partial(0, &[("apt", 1.0)]))
        .await
        .unwrap();
    let refused = merge_through(&endpoint, search_start(4, 3), three_partials())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused}");
    // The held merge is cut midway: the merger frees it.
    drop(held);
    let answered = within_a_while(async {
        loop {
            match merge_through(&endpoint, search_start(4, 3), three_partials()).await {
                Ok(response) => return response,
                Err(status) if status.code() == Code::ResourceExhausted => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(status) => panic!("{status}"),
            }
        }
    })
    .await;
    assert_eq!(answered.hits.len(), 4);
    merger.stop().await;
}

#[tokio::test]
async fn a_merge_without_a_deadline_ends_after_the_session_limit() {
    let limits = MergerLimits {
        max_sessions: 8,
        max_session_time: Duration::from_millis(200),
    };
    let merger = RunningMerger::start_with(Arc::new(TopKMerge), limits).await;
    let endpoint = merger.endpoint().await;
    let mut session = endpoint.open(search_start(4, 3), None).await.unwrap();
    session
        .add_partial(search_partial(0, &[("apt", 1.0)]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let status = session.finish(end()).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status}");
    merger.stop().await;
}

/// The top-k merge, except that it gives up (UNAVAILABLE) at the second
/// partial, as a merger going away midway would look to the root.
struct GivesUpMidway;

struct GivesUpState {
    inner: Box<dyn MergeState>,
    partials: usize,
}

impl Merge for GivesUpMidway {
    fn start(&self, start: &MergeStart) -> Result<Box<dyn MergeState>, Status> {
        Ok(Box::new(GivesUpState {
            inner: TopKMerge.start(start)?,
            partials: 0,
        }))
    }
}

impl MergeState for GivesUpState {
    fn add(&mut self, partial: ShardPartial) -> Result<Progress, Status> {
        self.partials += 1;
        if self.partials == 2 {
            return Err(Status::unavailable("shutting down"));
        }
        self.inner.add(partial)
    }

    fn finish(self: Box<Self>, end: MergeEnd) -> Result<prost_types::Any, Status> {
        self.inner.finish(end)
    }
}

#[tokio::test]
async fn a_merge_fails_over_to_the_next_merger_when_its_merger_gives_up_midway() {
    let first = RunningMerger::start(Arc::new(GivesUpMidway)).await;
    let second = RunningMerger::start(Arc::new(TopKMerge)).await;
    let set = MergerSet::remote(&[first.address.to_string(), second.address.to_string()])
        .await
        .unwrap();
    let expected = merge_through(
        &second.endpoint().await,
        search_start(4, 3),
        three_partials(),
    )
    .await
    .unwrap();

    let mut session = set
        .open(search_start(4, 3), Some(Duration::from_secs(5)))
        .await
        .unwrap();
    for partial in three_partials() {
        session.add_partial(partial).await.unwrap();
    }
    let merged: ShardSearchResponse = any::unpack(&session.finish(end()).await.unwrap()).unwrap();
    assert_eq!(merged, expected, "the replay gives the same answer");
    assert_eq!(set.failovers(), 1);
    let counts = set.counts();
    assert_eq!((counts[0].sessions, counts[0].failures), (1, 1));
    assert_eq!(counts[1].sessions, 1);
    first.stop().await;
    second.stop().await;
}

async fn within_a_while<T>(work: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .expect("done within 10 s")
}
