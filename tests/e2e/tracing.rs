//! One search is one trace across every process, seen by a real OTLP
//! receiver ([`fanout_tests::otlp::OtlpReceiver`], opentelemetry-proto's
//! tonic server on loopback).
//!
//! The cluster: SciFact in 4 shards x 2 leaves, a merger process, every
//! process exporting to the receiver (`OTEL_EXPORTER_OTLP_ENDPOINT`, batches
//! every 100 ms) and keeping no new trace of its own
//! (`FANOUT_TRACE_SAMPLE_RATIO=0`), with JSON logs. Two searches:
//!
//! 1. one with no trace context: sampled out, so no span of it arrives;
//! 2. one with the caller's own sampled `traceparent`, which forces sampling,
//!    hedged at a fixed 50 µs so that hedges happen.
//!
//! Then, of what arrived: every span is of the caller's trace; the root's
//! request span is the child of the caller's span; every span's parent is in
//! the trace (the links hold across the three kinds of process); each
//! shard's `shard_call` span, in each phase, has exactly as many
//! `shard_attempt` children as the response's `ShardTiming` counts
//! (attempts, hedges), each with an outcome, one `won` where the shard
//! answered; each leaf's `execute` span is the child of the attempt that
//! called it, with its `queue_wait` and `search` or `fetch` inside; the
//! root's `merge` span has a `partial` event per shard answered and is the
//! parent of the merger's `merge_session`. The root's JSON log has the
//! request's INFO line with its trace id and request id.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use fanout_proto::search::v1::SearchRequest;
use fanout_proto::v1::HedgePolicy;
use fanout_tests::otlp::{OtlpReceiver, ReceivedSpan};
use fanout_tests::{ClusterOptions, MergerPlacement, fanout_binary, search, start_cluster};

const SHARDS: u32 = 4;
const REPLICAS: u32 = 2;
/// The caller's trace, and its own span (the root's request span's parent).
const TRACE_ID: &str = "5b8efff798038103d269b633813fc60c";
const CALLER_SPAN_ID: &str = "eee19b7ec3c1b174";
const TIMEOUT: Duration = Duration::from_secs(10);
/// How long the spans may take to arrive (batches leave every 100 ms).
const ARRIVAL_LIMIT: Duration = Duration::from_secs(20);

fn by_name<'a>(spans: &'a [ReceivedSpan], name: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|span| span.name == name).collect()
}

/// The spans named `name` that `role` made (a leaf's work span is named
/// `search` too).
fn of_role<'a>(spans: &'a [ReceivedSpan], role: &str, name: &str) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|span| span.role == role && span.name == name)
        .collect()
}

/// Whether every winning attempt's leaf span has arrived, with its two
/// children (the processes export on their own schedules).
fn winners_complete(spans: &[ReceivedSpan]) -> bool {
    let children = |parent: &str| {
        spans
            .iter()
            .filter(|span| span.parent_span_id == parent)
            .collect::<Vec<_>>()
    };
    by_name(spans, "shard_attempt")
        .into_iter()
        .filter(|attempt| attempt.attribute("outcome") == "won")
        .all(|attempt| {
            children(&attempt.span_id)
                .iter()
                .any(|execute| children(&execute.span_id).len() >= 2)
        })
}

fn request(query: &str) -> SearchRequest {
    SearchRequest {
        query: query.to_owned(),
        k: 10,
        ..SearchRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_search_is_one_trace_across_root_leaves_and_merger() {
    let binary = fanout_binary!();
    let receiver = OtlpReceiver::start()
        .await
        .expect("the OTLP receiver starts");
    let options = ClusterOptions::scifact(SHARDS)
        .replicas(REPLICAS)
        .merger(MergerPlacement::Separate)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint())
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("FANOUT_TRACE_SAMPLE_RATIO", "0")
        .json_logs();
    let cluster = start_cluster(&binary, options).await;
    let client = cluster.search_client().await.expect("the root answers");

    // 1: no trace context, and the ratio keeps no new trace.
    search(&client, request("cholesterol statin therapy"), TIMEOUT)
        .await
        .expect("the unsampled search answers");

    // 2: the caller's sampled trace, hedged early.
    let mut forced = tonic::Request::new(SearchRequest {
        hedge: HedgePolicy::Fixed as i32,
        hedge_delay_micros: 50,
        ..request("vitamin d deficiency and bone density")
    });
    forced.set_timeout(TIMEOUT);
    forced.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{CALLER_SPAN_ID}-01")
            .parse()
            .unwrap(),
    );
    let response = client
        .clone()
        .search(forced)
        .await
        .expect("the traced search answers")
        .into_inner();
    assert_eq!(response.shards.len(), SHARDS as usize);
    let expected_attempts: u32 = response
        .shards
        .iter()
        .map(|shard| shard.attempts + shard.fetch_attempts)
        .sum();
    let answered = response.coverage.as_ref().unwrap().shards_answered;
    assert_eq!(answered, SHARDS, "{:?}", response.coverage);

    let spans = receiver
        .wait_for(ARRIVAL_LIMIT, |spans| {
            of_role(spans, "root", "search").len() == 1
                && by_name(spans, "shard_attempt").len() >= expected_attempts as usize
                && !by_name(spans, "merge_session").is_empty()
                && winners_complete(spans)
        })
        .await;
    eprintln!(
        "the traced search, as received:\n{}",
        fanout_tests::otlp::render_tree(&spans)
    );
    let summary: Vec<String> = spans
        .iter()
        .map(|span| format!("{}:{}:{}", span.role, span.name, &span.trace_id))
        .collect();

    // Every span is of the caller's trace: the unsampled search left none.
    assert!(
        spans.iter().all(|span| span.trace_id == TRACE_ID),
        "spans of another trace arrived: {summary:?}"
    );
    let roles: std::collections::BTreeSet<&str> =
        spans.iter().map(|span| span.role.as_str()).collect();
    assert_eq!(
        roles.into_iter().collect::<Vec<_>>(),
        ["leaf", "merger", "root"],
        "{summary:?}"
    );

    // The links: the request span under the caller's, every other span's
    // parent in the trace.
    let by_id: HashMap<&str, &ReceivedSpan> = spans
        .iter()
        .map(|span| (span.span_id.as_str(), span))
        .collect();
    let root_span = of_role(&spans, "root", "search")[0];
    assert_eq!(root_span.service, "fanout-root");
    assert_eq!(root_span.parent_span_id, CALLER_SPAN_ID);
    assert!(!root_span.attribute("request_id").is_empty());
    assert_eq!(root_span.attribute("trace_id"), TRACE_ID);
    for span in &spans {
        if span.span_id != root_span.span_id {
            assert!(
                by_id.contains_key(span.parent_span_id.as_str()),
                "the parent of {}:{} is not in the trace",
                span.role,
                span.name
            );
        }
    }
    let parent_of = |span: &ReceivedSpan| by_id[span.parent_span_id.as_str()];

    // Shard calls and their attempts, per phase, against the ShardTimings.
    let fetch = of_role(&spans, "root", "fetch")
        .into_iter()
        .next()
        .expect("the root's fetch span");
    assert_eq!(fetch.parent_span_id, root_span.span_id);
    let mut attempts: BTreeMap<(String, String), Vec<&ReceivedSpan>> = BTreeMap::new();
    for attempt in by_name(&spans, "shard_attempt") {
        let call = parent_of(attempt);
        assert_eq!(call.name, "shard_call", "an attempt's parent");
        assert_eq!(call.attribute("shard_id"), attempt.attribute("shard_id"));
        assert!(
            ["won", "lost", "cancelled", "failed", "timed_out"]
                .contains(&attempt.attribute("outcome")),
            "outcome {:?}",
            attempt.attribute("outcome")
        );
        assert!(!attempt.attribute("replica").is_empty());
        assert!(
            !attempt.attribute("hedge_delay_ms").is_empty(),
            "{attempt:?}"
        );
        attempts
            .entry((
                call.attribute("shard_id").to_owned(),
                call.attribute("phase").to_owned(),
            ))
            .or_default()
            .push(attempt);
    }
    let mut hedge_spans = 0;
    for timing in &response.shards {
        let shard = timing.shard_id.to_string();
        for (phase, count, hedges) in [
            ("fanout", timing.attempts, timing.hedges),
            ("fetch", timing.fetch_attempts, timing.fetch_hedges),
        ] {
            let of_call = attempts.get(&(shard.clone(), phase.to_owned()));
            let of_call = of_call.map(Vec::as_slice).unwrap_or_default();
            assert_eq!(
                of_call.len(),
                count as usize,
                "shard {shard} {phase}: {timing:?}"
            );
            let hedged = of_call
                .iter()
                .filter(|a| a.attribute("kind") == "hedge")
                .count();
            assert_eq!(hedged, hedges as usize, "shard {shard} {phase} hedges");
            hedge_spans += hedged;
            if count > 0 {
                let won = of_call
                    .iter()
                    .filter(|a| a.attribute("outcome") == "won")
                    .count();
                assert_eq!(won, 1, "shard {shard} {phase}: one attempt won");
                let call = parent_of(of_call[0]);
                assert_eq!(call.attribute("outcome"), "answered");
                let expected_parent = if phase == "fetch" { fetch } else { root_span };
                assert_eq!(
                    call.parent_span_id, expected_parent.span_id,
                    "{phase} shard_call parent"
                );
            }
        }
    }
    assert!(
        hedge_spans > 0,
        "a 50 µs hedge delay sent no hedge: {:?}",
        response.shards
    );

    // The leaves' spans, each under the attempt that called it.
    let executes = by_name(&spans, "execute");
    for execute in &executes {
        assert_eq!(execute.role, "leaf");
        assert_eq!(parent_of(execute).name, "shard_attempt");
        assert_eq!(
            parent_of(execute).attribute("shard_id"),
            execute.attribute("shard")
        );
    }
    for attempt in by_name(&spans, "shard_attempt") {
        if attempt.attribute("outcome") != "won" {
            continue;
        }
        let execute = executes
            .iter()
            .find(|execute| execute.parent_span_id == attempt.span_id)
            .unwrap_or_else(|| panic!("no leaf span under the winning attempt {attempt:?}"));
        let children: Vec<&str> = spans
            .iter()
            .filter(|span| span.parent_span_id == execute.span_id)
            .map(|span| span.name.as_str())
            .collect();
        assert!(children.contains(&"queue_wait"), "{children:?}");
        assert!(
            children.contains(&"search") || children.contains(&"fetch"),
            "{children:?}"
        );
    }

    // The merge: a partial per shard at the root, and the merger's session
    // under the root's merge span.
    let merge = of_role(&spans, "root", "merge")
        .into_iter()
        .next()
        .expect("the root's merge span");
    assert_eq!(merge.parent_span_id, root_span.span_id);
    let partials = |span: &ReceivedSpan| {
        span.events
            .iter()
            .filter(|event| event.get("name").map(String::as_str) == Some("partial"))
            .count()
    };
    assert_eq!(partials(merge), SHARDS as usize, "{:?}", merge.events);
    let session = by_name(&spans, "merge_session")[0];
    assert_eq!(session.role, "merger");
    assert_eq!(session.parent_span_id, merge.span_id);
    assert_eq!(partials(session), SHARDS as usize, "{:?}", session.events);
    assert_eq!(
        session.attribute("request_id"),
        root_span.attribute("request_id")
    );

    // The root's log: the request's line, with its trace id and request id.
    let log_path = cluster.root().log_path().expect("the root logs to a file");
    let log = std::fs::read_to_string(log_path).expect("the root's log reads");
    let line = log
        .lines()
        .find(|line| line.contains("request answered") && line.contains(TRACE_ID))
        .unwrap_or_else(|| panic!("no request line with the trace id in:\n{log}"));
    let line: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["span"]["trace_id"], TRACE_ID);
    assert_eq!(
        line["span"]["request_id"],
        root_span.attribute("request_id")
    );
    assert_eq!(line["fields"]["code"], "OK");
    assert_eq!(line["fields"]["shards_answered"], SHARDS);
    // The unsampled search has its line too, with a trace id of its own.
    let lines = log
        .lines()
        .filter(|line| line.contains("request answered"))
        .count();
    assert_eq!(lines, 2, "{log}");
}
