//! The leaf's gRPC service, served in-process on a port-0 listener and called
//! through the generated client: Info, Execute with search and fetch
//! payloads, and every kind of refusal with its status code.

use std::net::SocketAddr;
use std::path::Path;

use fanout_leaf::{
    GLOBAL_STATS_FILE_NAME, IndexBuildOptions, LeafConfig, LeafError, LeafServer, ShardSearcher,
    build_index, shard_dir_name, shard_for_id,
};
use fanout_proto::any::{pack, type_url, unpack};
use fanout_proto::search::v1::{
    FetchRequest, FetchResponse, QueryMode, SearchAfter, ShardHit, ShardSearchRequest,
    ShardSearchResponse, TermFilter,
};
use fanout_proto::v1::leaf_client::LeafClient;
use fanout_proto::v1::{ExecuteRequest, InfoRequest};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::Code;
use tonic::transport::Channel;

const SHARDS: u32 = 2;

const DOCUMENTS: [(&str, &str, &str); 8] = [
    (
        "ripgrep",
        "Fast line-oriented search tool",
        "ripgrep recursively searches directories for a regex pattern.",
    ),
    (
        "tantivy",
        "Full-text search engine library",
        "Tantivy is a full-text search engine library written in Rust.",
    ),
    (
        "zlib",
        "Compression library",
        "zlib is a general purpose data compression library.",
    ),
    (
        "pasta",
        "Cooking pasta",
        "Boil water, add salt, then cook the pasta until al dente.",
    ),
    (
        "grep",
        "Search text with patterns",
        "grep searches input files for lines matching a pattern.",
    ),
    (
        "fd",
        "Simple fast find alternative",
        "fd is a program to find entries in your filesystem.",
    ),
    (
        "bat",
        "Cat clone with wings",
        "bat supports syntax highlighting for many languages.",
    ),
    (
        "xapian",
        "Search engine library",
        "Xapian is a probabilistic search engine library.",
    ),
];

fn build_small_index(out_dir: &Path) {
    let corpus = out_dir.with_extension("jsonl");
    let lines: String = DOCUMENTS
        .iter()
        .map(|(id, title, text)| {
            serde_json::json!({"id": id, "title": title, "text": text}).to_string() + "\n"
        })
        .collect();
    std::fs::write(&corpus, lines).unwrap();
    build_index(&IndexBuildOptions {
        input: corpus,
        out_dir: out_dir.to_path_buf(),
        shards: SHARDS,
        threads: 1,
        writer_memory_bytes: 64 << 20,
        ..IndexBuildOptions::default()
    })
    .unwrap();
}

/// A leaf serving shard 0 of the small index until the sender is dropped or fired.
struct RunningLeaf {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<Result<(), LeafError>>,
}

impl RunningLeaf {
    async fn start(shard_dir: &Path) -> RunningLeaf {
        let server = LeafServer::open(LeafConfig {
            search_threads: 2,
            ..LeafConfig::new(shard_dir)
        })
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(server.serve(listener, async move {
            let _ = stopped.await;
        }));
        RunningLeaf {
            addr,
            stop: Some(stop),
            served,
        }
    }

    async fn client(&self) -> LeafClient<Channel> {
        LeafClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.served.await.unwrap().unwrap();
    }
}

fn execute(shard_id: u32, payload: prost_types::Any) -> ExecuteRequest {
    ExecuteRequest {
        payload: Some(payload),
        shard_id,
        attempt: 0,
        request_id: "test-request".into(),
    }
}

fn search(query: &str) -> ShardSearchRequest {
    ShardSearchRequest {
        query: query.into(),
        mode: QueryMode::Natural as i32,
        k: 10,
        ..Default::default()
    }
}

async fn search_over_grpc(
    client: &mut LeafClient<Channel>,
    request: ShardSearchRequest,
) -> Result<ShardSearchResponse, tonic::Status> {
    let response = client
        .execute(execute(0, pack(&request)))
        .await?
        .into_inner();
    let timings = response.timings.expect("every answer carries its timings");
    assert!(timings.service_micros > 0, "{timings:?}");
    assert_eq!(timings.queue_depth, 0, "calls are made one at a time");
    Ok(unpack(&response.payload.expect("a payload")).unwrap())
}

fn ids_in_shard_zero() -> Vec<&'static str> {
    DOCUMENTS
        .iter()
        .map(|(id, _, _)| *id)
        .filter(|id| shard_for_id(id, SHARDS) == 0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_info_search_and_fetch() {
    let scratch = tempfile::tempdir().unwrap();
    let out_dir = scratch.path().join("index");
    build_small_index(&out_dir);
    let shard_dir = out_dir.join(shard_dir_name(0));
    let leaf = RunningLeaf::start(&shard_dir).await;
    let mut client = leaf.client().await;

    let info = client.info(InfoRequest {}).await.unwrap().into_inner();
    let manifest = fanout_leaf::read_shard_manifest(&shard_dir).unwrap();
    assert_eq!((info.shard_id, info.shard_count), (0, SHARDS));
    assert_eq!(info.generation, manifest.generation);
    assert_eq!(info.doc_count, ids_in_shard_zero().len() as u64);
    assert_eq!(
        info.capabilities,
        [type_url::<ShardSearchRequest>(), type_url::<FetchRequest>()]
    );

    // Search over gRPC equals searching the shard directly.
    let query = "search engine library";
    let answer = search_over_grpc(&mut client, search(query)).await.unwrap();
    let direct = ShardSearcher::open(&shard_dir)
        .unwrap()
        .search(&search(query), &|| false)
        .unwrap();
    assert_eq!(answer, direct);
    assert!(!answer.hits.is_empty());
    assert_eq!(answer.generation, manifest.generation);
    assert_eq!(answer.docs_searched, info.doc_count);
    for hit in &answer.hits {
        assert!(
            ids_in_shard_zero().contains(&hit.id.as_str()),
            "{} is not in shard 0",
            hit.id
        );
    }

    // A filter on the id keeps that hit with the same score.
    let first = answer.hits[0].clone();
    let filtered = search_over_grpc(
        &mut client,
        ShardSearchRequest {
            filters: vec![TermFilter {
                field: "id".into(),
                value: first.id.clone(),
            }],
            ..search(query)
        },
    )
    .await
    .unwrap();
    assert_eq!(filtered.hits, std::slice::from_ref(&first));
    assert_eq!(filtered.total_hits, 1);

    // search_after continues after the first hit.
    let rest = search_over_grpc(
        &mut client,
        ShardSearchRequest {
            search_after: Some(SearchAfter {
                score: first.score,
                id: first.id.clone(),
            }),
            ..search(query)
        },
    )
    .await
    .unwrap();
    assert_eq!(rest.hits, answer.hits[1..]);

    // Fetch by address, by id when the generation differs, and a gone id.
    let gone = ShardHit {
        id: "no-such-document".into(),
        ..Default::default()
    };
    for generation in [manifest.generation.clone(), "another-build".to_string()] {
        let fetch = FetchRequest {
            hits: vec![first.clone(), gone.clone()],
            generation,
            fields: vec!["id".into(), "title".into(), "text".into()],
            snippets: true,
            query: query.into(),
            mode: QueryMode::Natural as i32,
        };
        let response = client
            .execute(execute(0, pack(&fetch)))
            .await
            .unwrap()
            .into_inner();
        let fetched: FetchResponse = unpack(&response.payload.unwrap()).unwrap();
        assert_eq!(fetched.docs.len(), 2);
        let document = &fetched.docs[0];
        assert!(document.found);
        assert_eq!(document.id, first.id);
        assert_eq!(document.fields["id"], first.id);
        let (_, title, text) = DOCUMENTS.iter().find(|(id, _, _)| *id == first.id).unwrap();
        assert_eq!(document.fields["title"], *title);
        assert_eq!(document.fields["text"], *text);
        assert!(
            document.snippet.contains("<b>"),
            "snippet {:?}",
            document.snippet
        );
        assert!(!fetched.docs[1].found);
        assert_eq!(fetched.docs[1].id, "no-such-document");
    }

    // A fetch naming no fields gets id and title.
    let fetch = FetchRequest {
        hits: vec![first.clone()],
        generation: manifest.generation.clone(),
        ..Default::default()
    };
    let response = client
        .execute(execute(0, pack(&fetch)))
        .await
        .unwrap()
        .into_inner();
    let fetched: FetchResponse = unpack(&response.payload.unwrap()).unwrap();
    let mut names: Vec<&String> = fetched.docs[0].fields.keys().collect();
    names.sort();
    assert_eq!(names, ["id", "title"]);
    assert!(fetched.docs[0].snippet.is_empty());

    leaf.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_bad_calls_with_the_right_codes() {
    let scratch = tempfile::tempdir().unwrap();
    let out_dir = scratch.path().join("index");
    build_small_index(&out_dir);
    let leaf = RunningLeaf::start(&out_dir.join(shard_dir_name(0))).await;
    let mut client = leaf.client().await;

    let wrong_type = pack(&InfoRequest {});
    let status = client
        .execute(execute(0, wrong_type.clone()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains(&wrong_type.type_url),
        "{}",
        status.message()
    );

    let status = client
        .execute(execute(1, pack(&search("rust"))))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::FailedPrecondition,
        "{}",
        status.message()
    );

    let status = client
        .execute(ExecuteRequest {
            payload: None,
            ..execute(0, wrong_type)
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    let cases = [
        ("stop words only", search("the and of")),
        (
            "syntax error",
            ShardSearchRequest {
                mode: QueryMode::Syntax as i32,
                ..search("title:(unclosed")
            },
        ),
        (
            "unknown filter field",
            ShardSearchRequest {
                filters: vec![TermFilter {
                    field: "title".into(),
                    value: "x".into(),
                }],
                ..search("rust")
            },
        ),
        (
            "k too large",
            ShardSearchRequest {
                k: 10_001,
                ..search("rust")
            },
        ),
        (
            "unknown mode",
            ShardSearchRequest {
                mode: 7,
                ..search("rust")
            },
        ),
    ];
    for (case, request) in cases {
        let status = search_over_grpc(&mut client, request).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{case}: {}",
            status.message()
        );
    }
    let status = search_over_grpc(&mut client, search("the and of"))
        .await
        .unwrap_err();
    assert_eq!(status.message(), "query has no searchable terms");

    let fetch = FetchRequest {
        hits: vec![ShardHit::default()],
        fields: vec!["body".into()],
        ..Default::default()
    };
    let status = client.execute(execute(0, pack(&fetch))).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());

    // Syntax-mode queries work when they parse.
    let answer = search_over_grpc(
        &mut client,
        ShardSearchRequest {
            mode: QueryMode::Syntax as i32,
            ..search("title:search OR text:compression")
        },
    )
    .await
    .unwrap();
    assert!(answer.total_hits > 0 || ids_in_shard_zero().is_empty());

    leaf.stop().await;
}

#[test]
fn refuses_global_statistics_of_another_build() {
    let scratch = tempfile::tempdir().unwrap();
    let first = scratch.path().join("first");
    let second = scratch.path().join("second");
    build_small_index(&first);
    build_small_index(&second);
    let shard_dir = first.join(shard_dir_name(0));
    std::fs::copy(
        second.join(shard_dir_name(0)).join(GLOBAL_STATS_FILE_NAME),
        shard_dir.join(GLOBAL_STATS_FILE_NAME),
    )
    .unwrap();
    let error = LeafServer::open(LeafConfig {
        search_threads: 1,
        ..LeafConfig::new(shard_dir)
    })
    .err()
    .expect("statistics of another generation are refused");
    assert!(
        matches!(error, LeafError::GenerationMismatch { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("generation"), "{error}");
}
