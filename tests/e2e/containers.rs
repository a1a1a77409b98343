//! fanout as containers (deploy/compose/docker-compose.yml over the image
//! from deploy/build-image): 4 shards x 2 leaf containers on a private
//! network, found by DNS, the root, and the merger as the root's sidecar.
//!
//! One compose project, one index build, then one phase after another under
//! an open-loop load from this host (requests at a fixed rate, each with a
//! 2 s deadline), every phase's requests compared with the normal phase's:
//! - the same queries give the same hits as `fanout up`'s launcher over the
//!   same corpus (a local cluster of processes);
//! - `docker kill` a leaf: no failed query, full coverage;
//! - `docker pause` a leaf (a hung host): no query misses its deadline, p99
//!   within 2x of the normal phase's;
//! - `docker network disconnect` a leaf (a partition): no failed query; the
//!   root stops calling it, and calls it again after `network connect`;
//! - a rolling restart of every leaf container, one at a time: no failed query;
//! - scaling shard 0 from 2 to 3 replicas: the new one gets calls within
//!   10 s, with no root restart; back to 2: no failed query;
//! - `docker kill` the merger sidecar: the root merges in-process
//!   (`--merger-fallback embedded`), no failed query; the merger's restart
//!   brings merges back to it;
//! - restarting the root: only "retry" statuses (UNAVAILABLE, and
//!   RESOURCE_EXHAUSTED for part of the burst that meets the fresh root),
//!   only while it restarts; none after.
//!
//! Without Docker the test prints why and passes without running.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fanout_proto::search::v1::SearchRequest;
use fanout_proto::search::v1::search_client::SearchClient;
use fanout_tests::compose::{self, ComposeProject, docker};
use fanout_tests::metrics::{self, scrape};
use fanout_tests::open_loop::{OpenLoop, Outcome, PhaseStats};
use fanout_tests::{ClusterOptions, beir, fanout_binary, health, search, start_cluster};
use tokio::task::block_in_place;
use tonic::transport::Channel;

const SHARDS: u32 = 4;
/// Requests a second of the load: enough for p99 to mean something, little
/// enough for a 2-core host running 11 containers and this test.
const RATE: f64 = 40.0;
const DEADLINE: Duration = Duration::from_secs(2);

/// A phase of the run: its name and where its requests start and end.
struct Phase {
    name: &'static str,
    from: Duration,
    to: Duration,
}

struct Run {
    project: ComposeProject,
    load: Option<OpenLoop>,
    phases: Vec<Phase>,
    metrics: SocketAddr,
}

impl Run {
    fn now(&self) -> Duration {
        self.load.as_ref().expect("the load runs").now()
    }

    /// Runs `fault` (blocking docker commands) as phase `name`, which lasts
    /// until `settle` after the fault's commands are done.
    async fn phase<T>(
        &mut self,
        name: &'static str,
        settle: Duration,
        fault: impl FnOnce(&ComposeProject) -> T,
    ) -> T {
        let from = self.now();
        let value = block_in_place(|| fault(&self.project));
        tokio::time::sleep(settle).await;
        let to = self.now();
        println!("phase {name}: {:.1} s", (to - from).as_secs_f64());
        self.phases.push(Phase { name, from, to });
        value
    }

    /// Waits until `check` holds of shard `shard`'s per-replica calls.
    async fn until_calls(
        &self,
        shard: u32,
        limit: Duration,
        what: &str,
        check: impl Fn(&BTreeMap<String, f64>, &BTreeMap<String, f64>) -> bool,
    ) -> Duration {
        metrics::until_replica_calls(self.metrics, shard, limit, what, check).await
    }
}

/// `leaf-0` to `replicas` containers, the others left as they are.
fn scale_shard_0(project: &ComposeProject, replicas: u32) {
    let scale = format!("leaf-0={replicas}");
    project
        .compose_ok(&[
            "up",
            "-d",
            "--no-deps",
            "--no-recreate",
            "--scale",
            &scale,
            "leaf-0",
        ])
        .unwrap_or_else(|error| panic!("leaf-0 scales to {replicas}: {error:#}"));
}

fn replica_url(project: &ComposeProject, container: &str) -> String {
    format!(
        "http://{}:7000",
        project.ip_of(container).expect("the container's address")
    )
}

fn grew(before: &BTreeMap<String, f64>, now: &BTreeMap<String, f64>, replica: &str) -> bool {
    now.get(replica).copied().unwrap_or(0.0) > before.get(replica).copied().unwrap_or(0.0)
}

async fn client(addr: SocketAddr) -> SearchClient<Channel> {
    SearchClient::new(health::connect(addr).await.expect("the root is reachable"))
}

/// The ids and scores of the top 10 of each query.
async fn answers(client: &SearchClient<Channel>, queries: &[String]) -> Vec<Vec<(String, f32)>> {
    let mut all = Vec::new();
    for query in queries {
        let request = SearchRequest {
            query: query.clone(),
            k: 10,
            ..Default::default()
        };
        let response = search(client, request, Duration::from_secs(10))
            .await
            .unwrap_or_else(|status| panic!("{query:?} is answered: {status:?}"));
        all.push(
            response
                .hits
                .into_iter()
                .map(|hit| (hit.id, hit.score))
                .collect(),
        );
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compose_cluster_answers_like_local_processes_and_rides_out_faults() {
    if let Some(reason) = compose::docker_unavailable() {
        println!("skipped: no Docker here ({reason})");
        return;
    }
    let image = block_in_place(compose::image).expect("the image builds");
    let inspected = docker(&[
        "image",
        "inspect",
        "-f",
        "{{.Config.User}} {{.Size}}",
        &image,
    ])
    .expect("the image is there");
    let (user, size) = inspected.trim().split_once(' ').expect("user and size");
    assert_eq!(
        user, "65532:65532",
        "the image runs as a non-root numeric user"
    );
    println!(
        "image {image}: {:.1} MiB",
        size.parse::<f64>().unwrap_or(0.0) / 1048576.0
    );

    let scifact = fanout_tests::workspace_root().join("data/beir-scifact");
    let scifact = scifact.display().to_string();
    let mut project = ComposeProject::new(
        "faults",
        &image,
        &[
            ("FANOUT_DATA", &scifact),
            ("FANOUT_CORPUS", "corpus.jsonl.gz"),
            ("FANOUT_ID_FIELD", "_id"),
        ],
    );
    let started = block_in_place(|| project.up()).expect("the cluster starts");
    println!("cluster start, images built, to root and merger healthy: {started:.1?}");
    let root = block_in_place(|| project.root_addr()).expect("the root is published");
    let metrics = block_in_place(|| project.published("root", 9100)).expect("metrics published");
    let root_client = client(root).await;

    // The same hits as a cluster of local processes over the same corpus.
    let (queries, _) = beir::scifact_test().expect("SciFact test queries load");
    let queries: Vec<String> = queries.into_iter().map(|query| query.text).collect();
    let sample = &queries[..40];
    let in_containers = answers(&root_client, sample).await;
    {
        let local = start_cluster(&fanout_binary!(), ClusterOptions::scifact(SHARDS)).await;
        let local_client = local.search_client().await.expect("the local root answers");
        let local_answers = answers(&local_client, sample).await;
        for ((query, got), want) in sample.iter().zip(&in_containers).zip(&local_answers) {
            let ids =
                |hits: &[(String, f32)]| hits.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>();
            assert_eq!(ids(got), ids(want), "{query:?}: other hits in containers");
            for ((_, a), (_, b)) in got.iter().zip(want) {
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                    "{query:?}: scores {got:?} vs {want:?}"
                );
            }
        }
        assert!(
            in_containers.iter().any(|hits| hits.len() == 10),
            "the queries find documents"
        );
    }

    let mut run = Run {
        load: Some(OpenLoop::start(
            root_client,
            queries.clone(),
            RATE,
            DEADLINE,
            SHARDS,
        )),
        project,
        phases: Vec::new(),
        metrics,
    };
    run.phase("normal", Duration::from_secs(10), |_| ()).await;

    // docker kill: the killed replica's calls in flight fail over.
    let killed = run
        .phase("kill one leaf", Duration::from_secs(6), |project| {
            let leaf = project.containers("leaf-1").expect("leaf-1's containers")[0].clone();
            docker(&["kill", &leaf]).expect("docker kill");
            leaf
        })
        .await;
    block_in_place(|| {
        docker(&["start", &killed]).expect("the killed leaf starts again");
        run.project
            .wait_healthy("leaf-1", Duration::from_secs(60))
            .expect("leaf-1 is healthy");
    });

    // docker pause: a hung host, answered around by hedges.
    run.phase("pause one leaf", Duration::from_secs(12), |project| {
        let leaf = project.containers("leaf-2").expect("leaf-2's containers")[0].clone();
        docker(&["pause", &leaf]).expect("docker pause");
        leaf
    })
    .await;
    block_in_place(|| {
        for leaf in run
            .project
            .containers("leaf-2")
            .expect("leaf-2's containers")
        {
            let _ = docker(&["unpause", &leaf]);
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A partition: the root stops calling the replica, then calls it again.
    let network = run.project.network();
    let (partitioned, partitioned_url) = block_in_place(|| {
        let leaf = run
            .project
            .containers("leaf-3")
            .expect("leaf-3's containers")[0]
            .clone();
        let url = replica_url(&run.project, &leaf);
        (leaf, url)
    });
    let from = run.now();
    block_in_place(|| docker(&["network", "disconnect", &network, &partitioned]))
        .expect("docker network disconnect");
    let stopped_after = run
        .until_calls(
            3,
            Duration::from_secs(10),
            "the partitioned replica stops getting calls",
            |before, now| {
                // Gone from the shard (its name no longer resolves to it), or no
                // calls for the last interval.
                !now.contains_key(&partitioned_url)
                    || now.get(&partitioned_url) == before.get(&partitioned_url)
            },
        )
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Back on the network under its service's name (a bare `network
    // connect` would not restore the alias the network's DNS answers).
    block_in_place(|| {
        docker(&[
            "network",
            "connect",
            "--alias",
            "leaf-3",
            &network,
            &partitioned,
        ])
    })
    .expect("docker network connect");
    let reconnected_url = block_in_place(|| replica_url(&run.project, &partitioned));
    let back_after = run
        .until_calls(
            3,
            Duration::from_secs(15),
            "the reconnected replica gets calls again",
            |before, now| grew(before, now, &reconnected_url),
        )
        .await;
    let to = run.now();
    run.phases.push(Phase {
        name: "partition one leaf",
        from,
        to,
    });
    println!(
        "partition: calls to the replica stopped within {stopped_after:.1?}, resumed {back_after:.1?} after reconnecting"
    );

    // A rolling restart: SIGTERM drains each leaf (NOT_SERVING, then its
    // calls finish) before it exits; the next one goes once it is healthy.
    run.phase("rolling restart", Duration::from_secs(2), |project| {
        for shard in 0..SHARDS {
            let service = format!("leaf-{shard}");
            for leaf in project.containers(&service).expect("the leaf's containers") {
                docker(&["restart", "-t", "15", &leaf]).expect("docker restart");
                project
                    .wait_healthy(&service, Duration::from_secs(60))
                    .expect("healthy again");
            }
        }
    })
    .await;

    // Scale shard 0 to 3 replicas: found by DNS, no root restart.
    let from = run.now();
    let new_leaf = block_in_place(|| {
        let before = run
            .project
            .containers("leaf-0")
            .expect("leaf-0's containers");
        scale_shard_0(&run.project, 3);
        let after = run
            .project
            .containers("leaf-0")
            .expect("leaf-0's containers");
        assert_eq!(after.len(), 3, "{after:?}");
        after
            .into_iter()
            .find(|leaf| !before.contains(leaf))
            .expect("a new container")
    });
    let new_url = block_in_place(|| replica_url(&run.project, &new_leaf));
    let joined_after = run
        .until_calls(
            0,
            Duration::from_secs(10),
            "the new replica gets calls",
            |before, now| grew(before, now, &new_url),
        )
        .await;
    println!("scale 2 -> 3: the new replica got calls {joined_after:.1?} after it started");
    block_in_place(|| {
        scale_shard_0(&run.project, 2);
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let to = run.now();
    run.phases.push(Phase {
        name: "scale 2 -> 3 -> 2",
        from,
        to,
    });

    // The merger sidecar dies: the root merges in-process meanwhile.
    let merger = block_in_place(|| run.project.container("merger")).expect("the merger");
    run.phase("kill the merger", Duration::from_secs(5), |_| {
        docker(&["kill", &merger]).expect("docker kill the merger");
    })
    .await;
    block_in_place(|| {
        docker(&["start", &merger]).expect("the merger starts again");
        run.project
            .wait_healthy("merger", Duration::from_secs(60))
            .expect("the merger is healthy");
    });
    let merges_on_sidecar = || async {
        let scraped = scrape(run.metrics)
            .await
            .expect("the root's metrics scrape");
        scraped.sum(
            "fanout_root_merges_total",
            &[("merger", "http://127.0.0.1:7100")],
        )
    };
    let before = merges_on_sidecar().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        merges_on_sidecar().await > before,
        "merges go back to the restarted merger"
    );

    // The root restarts: UNAVAILABLE while it is down, nothing else. Its
    // sidecar lived in its network namespace, so it is restarted after it.
    let root_restart = run
        .phase("restart the root", Duration::from_secs(5), |project| {
            let started = Instant::now();
            let root = project.container("root").expect("the root");
            docker(&["restart", "-t", "10", &root]).expect("docker restart the root");
            let merger = project.container("merger").expect("the merger");
            docker(&["restart", "-t", "5", &merger]).expect("docker restart the merger");
            project
                .wait_healthy("root", Duration::from_secs(60))
                .expect("the root is healthy");
            started.elapsed()
        })
        .await;
    run.phase("after the root restart", Duration::from_secs(4), |_| ())
        .await;

    let outcomes = run.load.take().expect("the load runs").finish().await;
    report(&run.phases, &outcomes, root_restart);
}

/// Prints every phase against the normal one and checks each phase's claim.
fn report(phases: &[Phase], outcomes: &[Outcome], root_restart: Duration) {
    let stats: Vec<(&Phase, PhaseStats)> = phases
        .iter()
        .map(|phase| (phase, PhaseStats::of(outcomes, phase.from, phase.to)))
        .collect();
    println!("{RATE} requests/s, deadline {DEADLINE:?}; each phase's requests:");
    for (phase, stats) in &stats {
        println!("  {:<20} {}", phase.name, stats.line());
    }
    let normal = &stats[0].1;
    assert!(normal.sent > 200, "the load ran: {normal:?}");
    for (phase, stats) in &stats {
        match phase.name {
            "restart the root" => {
                // (sent at, problem) of the phase's failed requests.
                let failures: Vec<(Duration, &str)> = outcomes
                    .iter()
                    .filter(|outcome| outcome.sent_at >= phase.from && outcome.sent_at < phase.to)
                    .filter_map(|outcome| {
                        let problem = outcome.result.as_ref().err()?;
                        Some((outcome.sent_at, problem.as_str()))
                    })
                    .collect();
                // UNAVAILABLE while it is down; RESOURCE_EXHAUSTED from the
                // fresh root's admission limit, met by the burst the
                // client's channel held back meanwhile. Both say "retry";
                // anything else is a failure.
                let unexpected: Vec<&(Duration, &str)> = failures
                    .iter()
                    .filter(|(_, problem)| {
                        !problem.starts_with("Unavailable")
                            && !problem.starts_with("ResourceExhausted")
                    })
                    .collect();
                let exhausted = failures
                    .iter()
                    .filter(|(_, problem)| problem.starts_with("ResourceExhausted"))
                    .count();
                assert!(
                    unexpected.is_empty(),
                    "while the root restarted ({root_restart:?}), not UNAVAILABLE: {unexpected:?}"
                );
                let window = match (failures.first(), failures.last()) {
                    (Some((first, _)), Some((last, _))) => *last - *first,
                    _ => Duration::ZERO,
                };
                println!(
                    "  the root's restart took {root_restart:.1?} (docker restart, its sidecar's, healthy again); \
                     {} requests failed ({exhausted} of them RESOURCE_EXHAUSTED, the others UNAVAILABLE), \
                     sent over {window:.1?}",
                    stats.failed
                );
            }
            "pause one leaf" => {
                assert_eq!(stats.failed, 0, "{}: {:?}", phase.name, stats.problems);
                assert!(
                    stats.max < DEADLINE,
                    "{}: a query reached its deadline",
                    phase.name
                );
                assert!(
                    stats.p99 <= normal.p99 * 2,
                    "paused p99 {:?} is over 2x the normal {:?}",
                    stats.p99,
                    normal.p99
                );
            }
            _ => assert_eq!(stats.failed, 0, "{}: {:?}", phase.name, stats.problems),
        }
    }
}
