//! The root against small test leaves, all in this process but over real
//! sockets (port-0 listeners, real tonic clients and servers): failover,
//! unreachable shards, deadlines, rejected requests and the two-phase fetch.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use fanout_merger::{Merge, MergeState, Progress};
use fanout_proto::search::v1::search_client::SearchClient;
use fanout_proto::search::v1::{
    FetchRequest, FetchResponse, FetchedDoc, SearchRequest, SearchResponse, ShardHit,
    ShardSearchRequest, ShardSearchResponse,
};
use fanout_proto::v1::leaf_server::{Leaf, LeafServer};
use fanout_proto::v1::root_client::RootClient;
use fanout_proto::v1::{
    ExecuteRequest, ExecuteResponse, InfoRequest, InfoResponse, LeafTimings, QueryRequest,
};
use fanout_proto::v1::{MergeEnd, MergeStart, ShardPartial};
use fanout_root::{RootConfig, RootServer, Topology};
use fanout_runtime::serve::DrainOptions;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status};

/// What a test leaf does with every `Execute`.
#[derive(Clone)]
enum Behaviour {
    /// Answers from its documents.
    Answer,
    /// Answers after sleeping this long.
    AnswerAfter(Duration),
    /// Fails every call with this code.
    Fail(Code),
}

/// A leaf serving a fixed shard: documents are `(id, score)` and match every query.
#[derive(Clone)]
struct TestLeaf {
    shard_id: u32,
    shard_count: u32,
    documents: Vec<(String, f32)>,
    behaviour: Behaviour,
    search_calls: Arc<AtomicU32>,
    fetch_calls: Arc<AtomicU32>,
}

#[tonic::async_trait]
impl Leaf for TestLeaf {
    async fn execute(
        &self,
        request: Request<ExecuteRequest>,
    ) -> Result<Response<ExecuteResponse>, Status> {
        let request = request.into_inner();
        let payload = request.payload.unwrap_or_default();
        let is_fetch = fanout_proto::any::is::<FetchRequest>(&payload);
        if is_fetch {
            self.fetch_calls.fetch_add(1, Ordering::SeqCst);
        } else {
            self.search_calls.fetch_add(1, Ordering::SeqCst);
        }
        if request.shard_id != self.shard_id {
            return Err(Status::failed_precondition("wrong shard"));
        }
        match &self.behaviour {
            Behaviour::Answer => {}
            Behaviour::AnswerAfter(delay) => tokio::time::sleep(*delay).await,
            Behaviour::Fail(code) => {
                return Err(Status::new(
                    *code,
                    format!("test leaf of shard {} fails", self.shard_id),
                ));
            }
        }
        let answer = if is_fetch {
            let fetch: FetchRequest = fanout_proto::any::unpack(&payload).map_err(bad_payload)?;
            fanout_proto::any::pack(&self.fetch(&fetch))
        } else {
            let search: ShardSearchRequest =
                fanout_proto::any::unpack(&payload).map_err(bad_payload)?;
            fanout_proto::any::pack(&self.search(&search))
        };
        Ok(Response::new(ExecuteResponse {
            payload: Some(answer),
            timings: Some(LeafTimings {
                service_micros: 7,
                ..LeafTimings::default()
            }),
            docs_searched: self.documents.len() as u64,
            generation: "g1".to_owned(),
        }))
    }

    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Ok(Response::new(InfoResponse {
            shard_id: self.shard_id,
            shard_count: self.shard_count,
            generation: "g1".to_owned(),
            doc_count: self.documents.len() as u64,
            capabilities: Vec::new(),
        }))
    }
}

fn bad_payload(error: fanout_proto::any::UnpackError) -> Status {
    Status::invalid_argument(error.to_string())
}

impl TestLeaf {
    fn new(
        shard_id: u32,
        shard_count: u32,
        documents: &[(&str, f32)],
        behaviour: Behaviour,
    ) -> Self {
        Self {
            shard_id,
            shard_count,
            documents: documents
                .iter()
                .map(|(id, score)| ((*id).to_owned(), *score))
                .collect(),
            behaviour,
            search_calls: Arc::default(),
            fetch_calls: Arc::default(),
        }
    }

    fn search(&self, request: &ShardSearchRequest) -> ShardSearchResponse {
        let mut hits: Vec<ShardHit> = self
            .documents
            .iter()
            .enumerate()
            .map(|(doc_id, (id, score))| ShardHit {
                score: *score,
                id: id.clone(),
                shard_id: self.shard_id,
                segment_ord: 0,
                doc_id: doc_id as u32,
            })
            .collect();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
        hits.truncate(request.k as usize);
        ShardSearchResponse {
            hits,
            total_hits: self.documents.len() as u64,
            generation: "g1".to_owned(),
            docs_searched: self.documents.len() as u64,
        }
    }

    fn fetch(&self, request: &FetchRequest) -> FetchResponse {
        let docs = request
            .hits
            .iter()
            .map(|hit| {
                let found = self.documents.iter().any(|(id, _)| *id == hit.id);
                let mut fields = std::collections::HashMap::new();
                for field in &request.fields {
                    let value = match field.as_str() {
                        "id" => hit.id.clone(),
                        "title" => format!("title of {}", hit.id),
                        "text" => format!("text of {}", hit.id),
                        _ => continue,
                    };
                    fields.insert(field.clone(), value);
                }
                FetchedDoc {
                    id: hit.id.clone(),
                    fields,
                    snippet: if request.snippets {
                        format!("<b>{}</b>", request.query)
                    } else {
                        String::new()
                    },
                    found,
                }
            })
            .collect();
        FetchResponse { docs }
    }
}

/// A running server; stops when dropped.
struct Running {
    address: String,
    _stop: oneshot::Sender<()>,
}

async fn start_leaf(leaf: TestLeaf) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(LeafServer::new(leaf))
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    Running {
        address,
        _stop: stop,
    }
}

/// An address where nothing listens.
async fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    drop(listener);
    address
}

async fn start_root(shards: Vec<Vec<String>>) -> Running {
    start_root_configured(shards, |_| {}).await
}

async fn start_root_configured(
    shards: Vec<Vec<String>>,
    configure: impl FnOnce(&mut RootConfig),
) -> Running {
    let flags: Vec<String> = shards
        .iter()
        .enumerate()
        .map(|(shard_id, replicas)| format!("{shard_id}={}", replicas.join(",")))
        .collect();
    let mut config = RootConfig::new(Topology::from_shard_flags(&flags).unwrap());
    configure(&mut config);
    let root = RootServer::new(config).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        root.serve(listener, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Running {
        address,
        _stop: stop,
    }
}

async fn search_client(root: &Running) -> SearchClient<Channel> {
    SearchClient::connect(root.address.clone()).await.unwrap()
}

fn search(query: &str) -> SearchRequest {
    SearchRequest {
        query: query.to_owned(),
        k: 10,
        ..SearchRequest::default()
    }
}

const SHARD_0_DOCS: &[(&str, f32)] = &[("a", 9.0), ("c", 5.0), ("e", 1.0)];
const SHARD_1_DOCS: &[(&str, f32)] = &[("b", 7.0), ("d", 3.0)];

fn ids(response: &SearchResponse) -> Vec<&str> {
    response.hits.iter().map(|hit| hit.id.as_str()).collect()
}

#[tokio::test]
async fn a_failing_replica_is_failed_over_to_full_coverage() {
    let unavailable = TestLeaf::new(0, 2, SHARD_0_DOCS, Behaviour::Fail(Code::Unavailable));
    let unavailable_calls = Arc::clone(&unavailable.search_calls);
    // The good replica of shard 0 is slowish, so once it has answered, the
    // failing one looks cheaper and is chosen first: failover is exercised
    // whichever replica the first request picks.
    let slow_good = TestLeaf::new(
        0,
        2,
        SHARD_0_DOCS,
        Behaviour::AnswerAfter(Duration::from_millis(30)),
    );
    let leaves = [
        start_leaf(unavailable).await,
        start_leaf(slow_good).await,
        start_leaf(TestLeaf::new(1, 2, SHARD_1_DOCS, Behaviour::Answer)).await,
        start_leaf(TestLeaf::new(1, 2, SHARD_1_DOCS, Behaviour::Answer)).await,
    ];
    let root = start_root(vec![
        vec![leaves[0].address.clone(), leaves[1].address.clone()],
        vec![leaves[2].address.clone(), leaves[3].address.clone()],
    ])
    .await;
    let mut client = search_client(&root).await;

    let mut failed_over = 0;
    for _ in 0..2 {
        let response = client
            .search(search("anything"))
            .await
            .unwrap()
            .into_inner();
        let coverage = response.coverage.clone().unwrap();
        assert_eq!(coverage.shards_total, 2);
        assert_eq!(coverage.shards_answered, 2, "{coverage:?}");
        assert!(!coverage.partial);
        assert_eq!(coverage.docs_covered, 5);
        assert_eq!(ids(&response), ["a", "b", "c", "d", "e"]);
        let shard_0 = &response.shards[0];
        assert_eq!(shard_0.replica, leaves[1].address);
        if shard_0.attempts == 2 {
            assert_eq!((shard_0.winning_attempt, shard_0.retries), (1, 1));
            failed_over += 1;
        }
    }
    assert!(unavailable_calls.load(Ordering::SeqCst) >= 1);
    assert!(
        failed_over >= 1,
        "no request went to the failing replica first"
    );
}

#[tokio::test]
async fn an_unreachable_shard_fails_the_request_unless_partial_answers_are_allowed() {
    let leaf = start_leaf(TestLeaf::new(0, 2, SHARD_0_DOCS, Behaviour::Answer)).await;
    let root = start_root(vec![
        vec![leaf.address.clone()],
        vec![closed_port().await, closed_port().await],
    ])
    .await;
    let mut client = search_client(&root).await;

    let status = client.search(search("anything")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shard 1"), "{}", status.message());

    let response = client
        .search(SearchRequest {
            allow_partial: true,
            ..search("anything")
        })
        .await
        .unwrap()
        .into_inner();
    let coverage = response.coverage.clone().unwrap();
    assert_eq!(
        (
            coverage.shards_total,
            coverage.shards_answered,
            coverage.shards_failed
        ),
        (2, 1, 1)
    );
    assert!(coverage.partial);
    assert_eq!(coverage.docs_covered, 3);
    assert_eq!(coverage.failures.len(), 1);
    assert_eq!(coverage.failures[0].shard_id, 1);
    assert_eq!(coverage.failures[0].code, "UNAVAILABLE");
    assert_eq!(ids(&response), ["a", "c", "e"]);
    assert_eq!(
        response.shards[1].attempts, 2,
        "both replicas of shard 1 were tried"
    );
    assert_eq!(response.hits[0].fields["title"], "title of a");

    // A min_coverage above what answered fails the request.
    let status = client
        .search(SearchRequest {
            allow_partial: true,
            min_coverage: 0.75,
            ..search("anything")
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

#[tokio::test]
async fn a_leaf_past_the_deadline_gives_deadline_exceeded_in_time() {
    let fast = start_leaf(TestLeaf::new(0, 2, SHARD_0_DOCS, Behaviour::Answer)).await;
    let sleepy = start_leaf(TestLeaf::new(
        1,
        2,
        SHARD_1_DOCS,
        Behaviour::AnswerAfter(Duration::from_secs(5)),
    ))
    .await;
    // A margin wider than the default 5 ms, so a busy test machine cannot
    // make the root's answer miss the caller's deadline.
    let root = start_root_configured(
        vec![vec![fast.address.clone()], vec![sleepy.address.clone()]],
        |config| config.deadline_margin = Duration::from_millis(30),
    )
    .await;
    let mut client = search_client(&root).await;
    let caller_timeout = Duration::from_millis(300);

    let mut request = Request::new(search("anything"));
    request.set_timeout(caller_timeout);
    let started = Instant::now();
    let status = client.search(request).await.unwrap_err();
    let elapsed = started.elapsed();
    // CANCELLED here would mean the caller's own timeout fired first.
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        elapsed >= Duration::from_millis(265),
        "the root waited out its deadline: {elapsed:?}"
    );
    assert!(
        elapsed < caller_timeout + Duration::from_millis(100),
        "{elapsed:?}"
    );

    // timeout_millis is a deadline too; with allow_partial the answer is partial.
    let started = Instant::now();
    let response = client
        .search(SearchRequest {
            timeout_millis: 300,
            allow_partial: true,
            ..search("anything")
        })
        .await
        .unwrap()
        .into_inner();
    let elapsed = started.elapsed();
    assert!(
        elapsed < caller_timeout + Duration::from_millis(100),
        "{elapsed:?}"
    );
    let coverage = response.coverage.clone().unwrap();
    assert_eq!(
        (coverage.shards_answered, coverage.shards_timed_out),
        (1, 1)
    );
    assert_eq!(coverage.failures[0].code, "DEADLINE_EXCEEDED");
    assert_eq!(ids(&response), ["a", "c", "e"]);
    assert_eq!(
        response.hits[2].fields["title"], "title of e",
        "phase two had time left"
    );
}

#[tokio::test]
async fn invalid_argument_from_a_leaf_is_passed_through_and_not_retried() {
    let rejecting = [
        TestLeaf::new(0, 2, SHARD_0_DOCS, Behaviour::Fail(Code::InvalidArgument)),
        TestLeaf::new(0, 2, SHARD_0_DOCS, Behaviour::Fail(Code::InvalidArgument)),
    ];
    let calls: Vec<Arc<AtomicU32>> = rejecting
        .iter()
        .map(|leaf| Arc::clone(&leaf.search_calls))
        .collect();
    let [first, second] = rejecting;
    let leaves = [
        start_leaf(first).await,
        start_leaf(second).await,
        start_leaf(TestLeaf::new(1, 2, SHARD_1_DOCS, Behaviour::Answer)).await,
    ];
    let root = start_root(vec![
        vec![leaves[0].address.clone(), leaves[1].address.clone()],
        vec![leaves[2].address.clone()],
    ])
    .await;
    let mut client = search_client(&root).await;

    let status = client
        .search(SearchRequest {
            allow_partial: true,
            ..search("title:(")
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(status.message(), "test leaf of shard 0 fails");
    let total_calls: u32 = calls.iter().map(|calls| calls.load(Ordering::SeqCst)).sum();
    assert_eq!(total_calls, 1, "the other replica must not be asked");
}

#[tokio::test]
async fn the_second_phase_fetches_fields_in_merged_order() {
    let shard_0 = TestLeaf::new(0, 2, SHARD_0_DOCS, Behaviour::Answer);
    let shard_1 = TestLeaf::new(1, 2, SHARD_1_DOCS, Behaviour::Answer);
    let fetch_calls = [
        Arc::clone(&shard_0.fetch_calls),
        Arc::clone(&shard_1.fetch_calls),
    ];
    let leaves = [start_leaf(shard_0).await, start_leaf(shard_1).await];
    let root = start_root(vec![
        vec![leaves[0].address.clone()],
        vec![leaves[1].address.clone()],
    ])
    .await;
    let mut client = search_client(&root).await;

    let response = client
        .search(SearchRequest {
            k: 4,
            fields: vec!["title".into(), "id".into()],
            snippets: true,
            ..search("rust")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&response), ["a", "b", "c", "d"]);
    let shards: Vec<u32> = response.hits.iter().map(|hit| hit.shard_id).collect();
    assert_eq!(shards, [0, 1, 0, 1]);
    let scores: Vec<f32> = response.hits.iter().map(|hit| hit.score).collect();
    assert_eq!(scores, [9.0, 7.0, 5.0, 3.0]);
    for hit in &response.hits {
        assert_eq!(hit.fields["title"], format!("title of {}", hit.id));
        assert_eq!(hit.fields["id"], hit.id);
        assert!(!hit.fields.contains_key("text"));
        assert_eq!(hit.snippet, "<b>rust</b>");
    }
    assert_eq!(response.total_hits, 5);
    assert!(response.took_micros > 0);
    assert_eq!(response.shards.len(), 2);
    assert_eq!(response.shards[1].leaf_service_micros, 7);
    for calls in &fetch_calls {
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one fetch per shard");
    }
    // Every shard's size is known once it has answered (or its Info did).
    let response = client.search(search("rust")).await.unwrap().into_inner();
    let coverage = response.coverage.unwrap();
    assert_eq!((coverage.docs_covered, coverage.docs_total), (5, 5));
}

#[tokio::test]
async fn bad_requests_are_rejected_before_any_leaf_is_asked() {
    let leaf = TestLeaf::new(0, 1, SHARD_0_DOCS, Behaviour::Answer);
    let calls = Arc::clone(&leaf.search_calls);
    let leaf = start_leaf(leaf).await;
    let root = start_root(vec![vec![leaf.address.clone()]]).await;
    let mut client = search_client(&root).await;

    let status = client.search(search("  ")).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::InvalidArgument, "query is empty")
    );
    let status = client
        .search(SearchRequest {
            k: 10_001,
            ..search("rust")
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let mut request = Request::new(search("rust"));
    request
        .metadata_mut()
        .insert("grpc-timeout", "forever".parse().unwrap());
    let status = client.search(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_generic_query_merges_any_payload_the_merger_understands() {
    let leaves = [
        start_leaf(TestLeaf::new(0, 2, SHARD_0_DOCS, Behaviour::Answer)).await,
        start_leaf(TestLeaf::new(1, 2, SHARD_1_DOCS, Behaviour::Answer)).await,
    ];
    let root = start_root(vec![
        vec![leaves[0].address.clone()],
        vec![leaves[1].address.clone()],
    ])
    .await;
    let mut client = RootClient::connect(root.address.clone()).await.unwrap();

    let payload = fanout_proto::any::pack(&ShardSearchRequest {
        query: "rust".into(),
        k: 3,
        ..ShardSearchRequest::default()
    });
    let response = client
        .query(QueryRequest {
            payload: Some(payload),
            ..QueryRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let merged: ShardSearchResponse =
        fanout_proto::any::unpack(&response.payload.unwrap()).unwrap();
    let merged_ids: Vec<&str> = merged.hits.iter().map(|hit| hit.id.as_str()).collect();
    assert_eq!(merged_ids, ["a", "b", "c"]);
    assert_eq!(merged.total_hits, 5);
    let coverage = response.coverage.clone().unwrap();
    assert_eq!((coverage.shards_answered, coverage.docs_covered), (2, 5));
    assert_eq!(response.shards.len(), 2);

    // The embedded top-k merge does not understand this payload; its error
    // comes back as is.
    let status = client
        .query(QueryRequest {
            payload: Some(fanout_proto::any::pack(&InfoRequest {})),
            ..QueryRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = client.query(QueryRequest::default()).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::InvalidArgument, "payload is missing")
    );
}

/// A merge that keeps the first partial and says it has enough at once.
struct FirstAnswerWins;

struct FirstAnswerState {
    first: Option<fanout_proto::Any>,
}

impl Merge for FirstAnswerWins {
    fn start(&self, _: &MergeStart) -> Result<Box<dyn MergeState>, Status> {
        Ok(Box::new(FirstAnswerState { first: None }))
    }
}

impl MergeState for FirstAnswerState {
    fn add(&mut self, partial: ShardPartial) -> Result<Progress, Status> {
        if self.first.is_none() {
            self.first = partial.payload;
        }
        Ok(Progress::Enough("the first answer wins".to_owned()))
    }

    fn finish(self: Box<Self>, _: MergeEnd) -> Result<fanout_proto::Any, Status> {
        self.first
            .ok_or_else(|| Status::failed_precondition("no shard answered"))
    }
}

#[tokio::test]
async fn a_remote_merger_with_enough_cancels_the_stragglers() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let merger_address = format!("http://{}", listener.local_addr().unwrap());
    let (_stop_merger, merger_stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        fanout_merger::serve(
            listener,
            Arc::new(FirstAnswerWins),
            fanout_merger::MergerLimits::default(),
            DrainOptions::default(),
            async {
                let _ = merger_stopped.await;
            },
        )
        .await
        .unwrap();
    });
    let fast = start_leaf(TestLeaf::new(0, 2, SHARD_0_DOCS, Behaviour::Answer)).await;
    let sleepy = start_leaf(TestLeaf::new(
        1,
        2,
        SHARD_1_DOCS,
        Behaviour::AnswerAfter(Duration::from_secs(5)),
    ))
    .await;
    let root = start_root_configured(
        vec![vec![fast.address.clone()], vec![sleepy.address.clone()]],
        |config| config.mergers = vec![merger_address],
    )
    .await;
    let mut client = RootClient::connect(root.address.clone()).await.unwrap();

    let payload = fanout_proto::any::pack(&ShardSearchRequest {
        query: "rust".into(),
        k: 3,
        ..ShardSearchRequest::default()
    });
    let started = Instant::now();
    let response = client
        .query(QueryRequest {
            payload: Some(payload),
            ..QueryRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let merged: ShardSearchResponse =
        fanout_proto::any::unpack(&response.payload.unwrap()).unwrap();
    assert_eq!(merged.docs_searched, 3, "shard 0's answer");
    let coverage = response.coverage.unwrap();
    assert_eq!(
        (coverage.shards_answered, coverage.shards_timed_out),
        (1, 1)
    );
    assert_eq!(coverage.failures[0].shard_id, 1);
    assert_eq!(coverage.failures[0].code, "CANCELLED");
}
