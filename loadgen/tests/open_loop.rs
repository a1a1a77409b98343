//! The runner against a real tonic `Search` server on a port-0 listener, in
//! this process: the open-loop property, timeouts, the in-flight cap, and
//! the report outputs (JSON, interval log, plot), also as `fanout loadgen
//! run` and `plot` write them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fanout_loadgen::interval_log::read_interval_log;
use fanout_loadgen::plot::plot_percentiles;
use fanout_loadgen::{
    ArrivalProcess, LoadTarget, PlotPlan, QueryFormat, QueryOrder, QuerySet, RequestTemplate,
    RunOptions, RunPlan, RunReport, Schedule, StopCondition, TargetKind, TargetSpec, run_load,
};
use fanout_proto::search::v1::search_server::{Search, SearchServer};
use fanout_proto::search::v1::{SearchRequest, SearchResponse};
use fanout_proto::v1::{Coverage, ShardTiming};
use hdrhistogram::Histogram;
use tokio::sync::{Mutex, oneshot};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// How the test server behaves.
#[derive(Clone, Copy)]
struct ServerBehaviour {
    /// Time each request takes.
    service_time: Duration,
    /// The request (counted from 0 in arrival order) that takes `stall` instead.
    stalled_request: Option<u64>,
    stall: Duration,
    /// Serve one request at a time (a mutex around the work), so a stall queues
    /// every request behind it.
    one_at_a_time: bool,
}

struct TestSearch {
    behaviour: ServerBehaviour,
    received: AtomicU64,
    one_at_a_time: Mutex<()>,
}

#[tonic::async_trait]
impl Search for TestSearch {
    async fn search(
        &self,
        request: Request<SearchRequest>,
    ) -> Result<Response<SearchResponse>, Status> {
        let number = self.received.fetch_add(1, Ordering::SeqCst);
        let work = if self.behaviour.stalled_request == Some(number) {
            self.behaviour.stall
        } else {
            self.behaviour.service_time
        };
        if self.behaviour.one_at_a_time {
            let _only_one = self.one_at_a_time.lock().await;
            tokio::time::sleep(work).await;
        } else {
            tokio::time::sleep(work).await;
        }
        if request.get_ref().query.is_empty() {
            return Err(Status::invalid_argument("empty query"));
        }
        Ok(Response::new(SearchResponse {
            coverage: Some(Coverage {
                shards_total: 2,
                shards_answered: 2,
                // Every other response is partial.
                partial: number & 1 == 0,
                ..Default::default()
            }),
            shards: vec![
                ShardTiming {
                    shard_id: 0,
                    hedges: 1,
                    ..Default::default()
                },
                ShardTiming {
                    shard_id: 1,
                    hedges: 1,
                    retries: 1,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }))
    }
}

/// Serves `behaviour` until the returned sender is dropped.
async fn start_server(behaviour: ServerBehaviour) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (shutdown_sender, shutdown_receiver) = oneshot::channel::<()>();
    let service = TestSearch {
        behaviour,
        received: AtomicU64::new(0),
        one_at_a_time: Mutex::new(()),
    };
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(SearchServer::new(service))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = shutdown_receiver.await;
            })
            .await
            .unwrap();
    });
    (addr, shutdown_sender)
}

async fn connect(addr: SocketAddr) -> LoadTarget {
    LoadTarget::connect(TargetSpec {
        tls: None,
        kind: TargetKind::Search,
        addr: addr.to_string(),
        connections: 4,
        request: RequestTemplate::default(),
    })
    .await
    .unwrap()
}

fn queries() -> QuerySet {
    QuerySet::from_queries("test", vec!["rust".to_string(), "tail latency".to_string()]).unwrap()
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("fanout-loadgen-{}-{name}", std::process::id()))
}

fn merged_interval_log(path: &PathBuf) -> Histogram<u64> {
    let bytes = std::fs::read(path).unwrap();
    let mut merged = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
    for interval in read_interval_log(&bytes).unwrap() {
        merged.add(&interval.histogram).unwrap();
    }
    merged
}

/// One request stalls for 200 ms on a server that works one request at a time.
/// A closed-loop generator would have waited for it and measured one slow
/// request. Open loop keeps sending every 5 ms, so the ~40 requests scheduled
/// during the stall queue behind it: the one scheduled t ms into the stall
/// waits about 200 - t ms plus the service time of the backlog ahead of it: with
/// 1 ms of service about 25 of them exceed 100 ms (with the 2-3 ms a debug build
/// really takes, about 40), and nearly all exceed 20 ms. A closed-loop
/// generator on one connection would show exactly one request above 100 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_shows_the_queueing_a_stall_causes() {
    let (addr, _server) = start_server(ServerBehaviour {
        service_time: Duration::from_millis(1),
        // 40 warmup requests (200 ms at 200/s), then the stall ~0.55 s into the measurement.
        stalled_request: Some(150),
        stall: Duration::from_millis(200),
        one_at_a_time: true,
    })
    .await;
    let target = connect(addr).await;
    let schedule = Schedule::new(200.0, ArrivalProcess::Constant, 1).unwrap();
    let hdr_log = temp_path("stall.hlog");
    let options = RunOptions {
        warmup: Duration::from_millis(200),
        hdr_log: Some(hdr_log.clone()),
        ..RunOptions::new(StopCondition::Duration(Duration::from_secs(2)))
    };
    let report = run_load(&target, &schedule, &queries(), &options)
        .await
        .unwrap();
    let latencies = merged_interval_log(&hdr_log);
    std::fs::remove_file(&hdr_log).unwrap();
    println!("{}", report.render_text());
    println!(
        "{} above 100 ms, {} above 20 ms",
        latencies.count_between(100_000, u64::MAX),
        latencies.count_between(20_000, u64::MAX)
    );

    assert_eq!(report.count, 400, "{}", report.render_text());
    assert_eq!(report.warmup_requests, 40);
    assert_eq!(report.status_codes.get("OK"), Some(&400));
    assert!(
        report.latency.slowest_us >= 200_000,
        "{}",
        report.render_text()
    );
    assert!(report.latency.p99_us >= 100_000, "{}", report.render_text());
    let above_100_ms = latencies.count_between(100_000, u64::MAX);
    let above_20_ms = latencies.count_between(20_000, u64::MAX);
    assert!(
        above_100_ms >= 20,
        "{above_100_ms} requests above 100 ms\n{}",
        report.render_text()
    );
    assert!(
        above_20_ms >= 35,
        "{above_20_ms} requests above 20 ms\n{}",
        report.render_text()
    );
    // Outside the stall the server answers in a few milliseconds.
    assert!(report.latency.p50_us < 20_000, "{}", report.render_text());
    // The generator itself kept to the schedule: the slowness is the server's.
    assert_eq!(report.generator.in_flight_cap_waits, 0);
    assert_eq!(report.generator.launched, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_outputs_read_back() {
    let (addr, _server) = start_server(ServerBehaviour {
        service_time: Duration::from_millis(1),
        stalled_request: None,
        stall: Duration::ZERO,
        one_at_a_time: false,
    })
    .await;
    let target = connect(addr).await;
    let schedule = Schedule::new(150.0, ArrivalProcess::Poisson, 3).unwrap();
    let hdr_log = temp_path("formats.hlog");
    let options = RunOptions {
        label: Some("formats".to_string()),
        warmup: Duration::from_millis(100),
        hdr_log: Some(hdr_log.clone()),
        ..RunOptions::new(StopCondition::Duration(Duration::from_millis(1500)))
    };
    let report = run_load(&target, &schedule, &queries(), &options)
        .await
        .unwrap();
    assert!(report.count > 150, "{}", report.render_text());
    assert_eq!(report.ok, report.count);
    // Every response had two shards with one hedge each and one retry in all.
    assert_eq!(report.coverage.responses_with_coverage, report.count);
    assert_eq!(report.coverage.hedges, 2 * report.count);
    assert_eq!(report.coverage.retries, report.count);
    assert!(
        report.coverage.partial_responses > 0 && report.coverage.partial_responses < report.count
    );

    // The JSON report parses back into the same struct, with every field present.
    let json_path = temp_path("formats.json");
    report.write_json(&json_path).unwrap();
    let read_back = RunReport::read_json(&json_path).unwrap();
    assert_eq!(read_back, report);
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    std::fs::remove_file(&json_path).unwrap();
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "achieved_rps",
            "count",
            "coverage",
            "error_messages",
            "errors",
            "generator",
            "intervals",
            "label",
            "latency",
            "load",
            "measured_seconds",
            "ok",
            "percentiles",
            "queries",
            "schema_version",
            "started_at_unix_ms",
            "status_codes",
            "target",
            "warmup_requests",
            "warnings",
            "interrupted",
        ]
        .iter()
        .copied()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
    );
    assert_eq!(value["schema_version"], 1);

    // The interval log holds every measured request, and the per-second summaries agree.
    let logged = merged_interval_log(&hdr_log);
    std::fs::remove_file(&hdr_log).unwrap();
    assert_eq!(logged.len(), report.count);
    assert_eq!(logged.max(), report.latency.slowest_us);
    let interval_total: u64 = report.intervals.iter().map(|interval| interval.count).sum();
    assert_eq!(interval_total, report.count);

    // Two runs overlaid in one plot, drawn without system fonts.
    let plot_path = temp_path("formats.png");
    let mut second = report.clone();
    second.label = "formats again".to_string();
    plot_percentiles(&[report, second], &plot_path, Some("test")).unwrap();
    let png = std::fs::read(&plot_path).unwrap();
    std::fs::remove_file(&plot_path).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    assert!(
        png.len() > 10_000,
        "a {} byte png is suspiciously small",
        png.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_count_as_deadline_exceeded() {
    let (addr, _server) = start_server(ServerBehaviour {
        service_time: Duration::from_millis(1),
        stalled_request: Some(3),
        stall: Duration::from_secs(2),
        one_at_a_time: false,
    })
    .await;
    let target = connect(addr).await;
    let schedule = Schedule::new(50.0, ArrivalProcess::Constant, 1).unwrap();
    let options = RunOptions {
        warmup: Duration::ZERO,
        timeout: Duration::from_millis(100),
        ..RunOptions::new(StopCondition::Requests(10))
    };
    let report = run_load(&target, &schedule, &queries(), &options)
        .await
        .unwrap();
    assert_eq!(report.count, 10, "{}", report.render_text());
    assert_eq!(
        report.status_codes.get("DEADLINE_EXCEEDED"),
        Some(&1),
        "{}",
        report.render_text()
    );
    assert_eq!(report.status_codes.get("OK"), Some(&9));
    assert_eq!(report.errors, 1);
    assert!(report.latency.slowest_us >= 100_000);
    assert!(
        report.latency.slowest_us < 1_000_000,
        "{}",
        report.render_text()
    );
    assert_eq!(report.error_messages.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_flight_cap_is_reported_not_hidden() {
    let (addr, _server) = start_server(ServerBehaviour {
        service_time: Duration::from_millis(50),
        stalled_request: None,
        stall: Duration::ZERO,
        one_at_a_time: false,
    })
    .await;
    let target = connect(addr).await;
    // 200/s with 50 ms each needs ~10 in flight; 2 are allowed.
    let schedule = Schedule::new(200.0, ArrivalProcess::Constant, 1).unwrap();
    let options = RunOptions {
        warmup: Duration::ZERO,
        max_in_flight: 2,
        ..RunOptions::new(StopCondition::Requests(20))
    };
    let report = run_load(&target, &schedule, &queries(), &options)
        .await
        .unwrap();
    assert_eq!(report.count, 20);
    assert!(report.generator.in_flight_cap_waits > 0);
    assert!(report.generator.behind_schedule);
    assert!(report.generator.max_in_flight_observed <= 2);
    assert!(
        report.generator.launch_lag_max_us > 100_000,
        "{}",
        report.render_text()
    );
    assert!(!report.warnings.is_empty());
    // Latency counts from the intended send time, so the waiting shows.
    assert!(
        report.latency.slowest_us > 200_000,
        "{}",
        report.render_text()
    );
}

/// A target named by host name is resolved the way every fanout client
/// resolves names (`fanout_runtime::client::connect`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_named_by_host_name_is_reached() {
    let (addr, _server) = start_server(ServerBehaviour {
        service_time: Duration::from_millis(1),
        stalled_request: None,
        stall: Duration::ZERO,
        one_at_a_time: false,
    })
    .await;
    let target = LoadTarget::connect(TargetSpec {
        tls: None,
        kind: TargetKind::Search,
        addr: format!("localhost:{}", addr.port()),
        connections: 2,
        request: RequestTemplate::default(),
    })
    .await
    .unwrap();
    let schedule = Schedule::new(200.0, ArrivalProcess::Constant, 1).unwrap();
    let options = RunOptions {
        warmup: Duration::ZERO,
        ..RunOptions::new(StopCondition::Requests(10))
    };
    let report = run_load(&target, &schedule, &queries(), &options)
        .await
        .unwrap();
    assert_eq!(report.count, 10, "{}", report.render_text());
    assert_eq!(report.ok, 10, "{}", report.render_text());
}

/// The work of `fanout loadgen run` and `plot`, handed the plans the
/// command line builds from its flags (which `fanout`'s own tests check).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_and_plot_commands_write_every_output() {
    let (addr, _server) = start_server(ServerBehaviour {
        service_time: Duration::from_millis(1),
        stalled_request: Some(20),
        stall: Duration::from_millis(100),
        one_at_a_time: true,
    })
    .await;
    let queries_path = temp_path("cli-queries.jsonl");
    std::fs::write(
        &queries_path,
        "{\"query\": \"the\", \"tags\": [\"term\"]}\n{\"query\": \"griffith observatory\", \"tags\": [\"union\"]}\n",
    )
    .unwrap();
    let json = temp_path("cli.json");
    let hdr_log = temp_path("cli.hlog");
    let plot = temp_path("cli.png");
    let overlay = temp_path("cli-overlay.png");
    let run_plan = RunPlan {
        target: TargetSpec {
            tls: None,
            kind: TargetKind::Search,
            addr: addr.to_string(),
            connections: 4,
            request: RequestTemplate::default(),
        },
        schedule: Schedule::new(100.0, ArrivalProcess::Poisson, 1).unwrap(),
        queries: QuerySet::from_file(&queries_path, QueryFormat::Auto, Some("union"))
            .unwrap()
            .ordered(QueryOrder::InOrder, 1),
        options: RunOptions {
            label: Some("cli run".to_string()),
            warmup: Duration::from_millis(100),
            hdr_log: Some(hdr_log.clone()),
            ..RunOptions::new(StopCondition::Duration(Duration::from_secs(1)))
        },
        json: Some(json.clone()),
        plot: Some(plot.clone()),
    };
    fanout_loadgen::run_and_report(&run_plan).await.unwrap();

    let report = RunReport::read_json(&json).unwrap();
    assert_eq!(report.label, "cli run");
    assert_eq!(report.queries.distinct, 1);
    assert!(report.count > 50, "{}", report.render_text());
    assert_eq!(merged_interval_log(&hdr_log).len(), report.count);
    assert!(std::fs::read(&plot).unwrap().starts_with(b"\x89PNG"));

    let plot_plan = PlotPlan {
        reports: vec![json.clone(), json.clone()],
        out: overlay.clone(),
        title: None,
    };
    fanout_loadgen::plot_reports(&plot_plan).unwrap();
    assert!(std::fs::read(&overlay).unwrap().starts_with(b"\x89PNG"));
    for path in [queries_path, json, hdr_log, plot, overlay] {
        std::fs::remove_file(path).unwrap();
    }
}
