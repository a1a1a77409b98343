//! `fanout conformance merger ADDR`: the `fanout.v1.Merger` streaming
//! contract, played against a running merger as fanout's root plays it.
//!
//! | check | the contract |
//! |---|---|
//! | health | `grpc.health.v1` answers SERVING for the server ("") |
//! | merge | `start`, the partials in three different orders, `end` with full coverage: one result, the workload's merge of them, never before `end`, then the call ends OK |
//! | partial coverage | `end` after two of three shards: the merge of those two |
//! | no partials | `end` with no shard answered: a result (empty) all the same |
//! | early enough | optional; when sent, the result after an `end` right then is the merge of the partials sent so far |
//! | unknown shard | a partial for shard >= shard_count: INVALID_ARGUMENT, no result |
//! | input after end | a partial after `end`: INVALID_ARGUMENT |
//! | first message not start | INVALID_ARGUMENT |
//! | stream cut midway | merges abandoned after one partial are freed: after more of them than fanout's merger keeps open at once (1,024), a merge still answers |
//! | deadline | a merge whose caller never sends `end` ends at its `grpc-timeout` |

use std::time::Duration;

use fanout_proto::Any;
use fanout_proto::status::code_name;
use fanout_proto::v1::merge_input::Kind as InputKind;
use fanout_proto::v1::merge_output::Kind as OutputKind;
use fanout_proto::v1::merger_client::MergerClient;
use fanout_proto::v1::{Coverage, MergeEnd, MergeInput, MergeOutput, MergeStart, ShardPartial};
use futures::future::join_all;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

use crate::probe::{self, Target, Transport, describe, ms};
use crate::report::{Report, Verdict};
use crate::workload::{MergeCase, Workload};

/// What `fanout conformance merger` is told.
#[derive(Debug, Clone)]
pub struct MergerOptions {
    /// `http://host:port`.
    pub url: String,
    /// The payloads to merge.
    pub workload: Workload,
    /// Merges cut midway by the stream-cut check.
    pub cut_merges: usize,
}

impl MergerOptions {
    pub fn new(url: impl Into<String>, workload: Workload) -> MergerOptions {
        MergerOptions {
            url: url.into(),
            workload,
            cut_merges: 1_100,
        }
    }
}

/// How long the kit waits for what a merger owes it.
const OWED: Duration = Duration::from_secs(5);
/// How long the kit watches for an early output after each partial.
const EARLY_OUTPUT_WATCH: Duration = Duration::from_millis(20);
/// Cut merges open at once.
const CUT_WAVE: usize = 50;

/// An output, the call's end, or nothing yet.
#[derive(Debug)]
enum Next {
    Output(MergeOutput),
    Ended(Result<(), Status>),
    Nothing,
}

/// One open `Merge` call.
struct Session {
    input: Option<mpsc::Sender<MergeInput>>,
    output: Streaming<MergeOutput>,
}

impl Session {
    /// Opens a merge, `first` already queued (a merger may wait for it
    /// before it sends its response headers).
    async fn open(
        client: &MergerClient<Transport>,
        timeout: Option<Duration>,
        first: Vec<MergeInput>,
    ) -> Result<Session, Status> {
        let (input, receiver) = mpsc::channel(64);
        for message in first {
            input
                .try_send(message)
                .expect("room for the first messages");
        }
        let mut request = tonic::Request::new(ReceiverStream::new(receiver));
        if let Some(timeout) = timeout {
            request.set_timeout(timeout);
        }
        let mut client = client.clone();
        let response = tokio::time::timeout(OWED, client.merge(request))
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!("no response headers within {}", ms(OWED)))
            })??;
        Ok(Session {
            input: Some(input),
            output: response.into_inner(),
        })
    }

    async fn send(&self, message: MergeInput) -> Result<(), String> {
        let input = self.input.as_ref().expect("the input is open");
        input
            .send(message)
            .await
            .map_err(|_| "the call ended while the kit was still sending".to_owned())
    }

    /// Ends the input (the client's half-close).
    fn close(&mut self) {
        self.input = None;
    }

    async fn next(&mut self, wait: Duration) -> Next {
        match tokio::time::timeout(wait, self.output.message()).await {
            Ok(Ok(Some(output))) => Next::Output(output),
            Ok(Ok(None)) => Next::Ended(Ok(())),
            Ok(Err(status)) => Next::Ended(Err(status)),
            Err(_) => Next::Nothing,
        }
    }
}

fn start(case: &MergeCase) -> MergeInput {
    MergeInput {
        kind: Some(InputKind::Start(MergeStart {
            request: Some(case.request.clone()),
            shard_count: case.shard_count(),
            timeout_micros: 10_000_000,
            request_id: "conformance".to_owned(),
        })),
    }
}

fn partial(case: &MergeCase, shard_id: u32) -> MergeInput {
    partial_of(
        shard_id,
        case.partials
            .get(shard_id as usize)
            .cloned()
            .unwrap_or_else(|| case.partials[0].clone()),
    )
}

fn partial_of(shard_id: u32, payload: Any) -> MergeInput {
    MergeInput {
        kind: Some(InputKind::Partial(ShardPartial {
            shard_id,
            replica: format!("conformance-{shard_id}"),
            attempt: 0,
            latency_micros: 1_000,
            payload: Some(payload),
        })),
    }
}

fn end(case: &MergeCase, answered: usize) -> MergeInput {
    let total = case.shard_count();
    let answered = answered as u32;
    MergeInput {
        kind: Some(InputKind::End(MergeEnd {
            coverage: Some(Coverage {
                shards_total: total,
                shards_answered: answered,
                shards_failed: total - answered,
                shards_timed_out: 0,
                docs_covered: 100 * u64::from(answered),
                docs_total: 100 * u64::from(total),
                partial: answered < total,
                failures: Vec::new(),
            }),
        })),
    }
}

/// What one played merge saw.
struct Played {
    result: Option<Any>,
    /// After how many partials an `enough` came, and its reason.
    enough: Option<(usize, String)>,
}

/// Plays `start`, the partials of `order` (watching for early outputs after
/// each), `end`, and reads the answer to the end of the call.
async fn play(
    client: &MergerClient<Transport>,
    case: &MergeCase,
    order: &[u32],
    stop_at_enough: bool,
) -> Result<Played, String> {
    let mut session = Session::open(client, Some(Duration::from_secs(10)), vec![start(case)])
        .await
        .map_err(|status| format!("Merge answered {}", describe(&status)))?;
    let mut enough = None;
    let mut sent = 0;
    for shard in order {
        session.send(partial(case, *shard)).await?;
        sent += 1;
        match session.next(EARLY_OUTPUT_WATCH).await {
            Next::Nothing => {}
            Next::Output(MergeOutput {
                kind: Some(OutputKind::Enough(signal)),
            }) => {
                enough.get_or_insert((sent, signal.reason));
            }
            Next::Output(MergeOutput {
                kind: Some(OutputKind::Result(_)),
            }) => {
                return Err(format!(
                    "a result after {sent} of {} partials, before end",
                    order.len()
                ));
            }
            Next::Output(MergeOutput { kind: None }) => {
                return Err(format!("an output without a kind after {sent} partials"));
            }
            Next::Ended(outcome) => {
                return Err(format!(
                    "the call ended ({}) after {sent} partials, before end",
                    ended(&outcome)
                ));
            }
        }
        if stop_at_enough && enough.is_some() {
            break;
        }
    }
    session.send(end(case, sent)).await?;
    session.close();
    let mut result = None;
    let deadline = Instant::now() + OWED;
    loop {
        match session
            .next(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            Next::Output(MergeOutput {
                kind: Some(OutputKind::Result(merged)),
            }) => {
                if result.is_some() {
                    return Err("a second result".to_owned());
                }
                result = Some(merged.payload.unwrap_or_default());
            }
            Next::Output(MergeOutput {
                kind: Some(OutputKind::Enough(signal)),
            }) => {
                enough.get_or_insert((sent, signal.reason));
            }
            Next::Output(MergeOutput { kind: None }) => {
                return Err("an output without a kind".to_owned());
            }
            Next::Ended(Ok(())) if result.is_some() => return Ok(Played { result, enough }),
            Next::Ended(outcome) => {
                return Err(format!(
                    "the call ended {} without a result after end",
                    ended(&outcome)
                ));
            }
            Next::Nothing if result.is_some() => {
                return Err(format!(
                    "the call was still open {} after its result and the input's end",
                    ms(OWED)
                ));
            }
            Next::Nothing => return Err(format!("no result within {} of end", ms(OWED))),
        }
    }
}

fn ended(outcome: &Result<(), Status>) -> String {
    match outcome {
        Ok(()) => "OK".to_owned(),
        Err(status) => describe(status),
    }
}

/// Runs every check against the merger at `options.url`.
pub async fn check_merger(options: &MergerOptions) -> Report {
    let mut report = Report::new(format!(
        "merger {} ({} workload)",
        options.url,
        options.workload.name()
    ));
    let target = match Target::new(&options.url) {
        Ok(target) => target,
        Err(error) => {
            report.record("connect", Verdict::Fail, error);
            return report;
        }
    };
    report.judge(
        "health",
        probe::serving(&target, "fanout.v1.Merger", OWED).await,
    );
    let client = MergerClient::with_origin(target.transport.clone(), target.origin.clone())
        .max_decoding_message_size(64 << 20);
    let workload = options.workload;
    let case = workload.merge_case();
    let all: Vec<u32> = (0..case.shard_count()).collect();

    let mut enough_seen = None;
    let mut orders_seen = Vec::new();
    let mut merge = Ok(String::new());
    for order in [vec![0, 1, 2], vec![2, 0, 1], vec![1, 2, 0]] {
        let expected = workload.expected(&case, &all);
        let outcome = play(&client, &case, &order, false)
            .await
            .and_then(|played| {
                if played.enough.is_some() {
                    enough_seen = played.enough.clone();
                }
                workload.judge_merged(&expected, played.result.as_ref())
            });
        let shown: Vec<String> = order.iter().map(u32::to_string).collect();
        match outcome {
            Ok(seen) => orders_seen.push(format!("[{}] {seen}", shown.join(" "))),
            Err(why) => {
                merge = Err(format!(
                    "partials in the order [{}]: {why}",
                    shown.join(" ")
                ));
                break;
            }
        }
    }
    report.judge(
        "merge",
        merge.map(|_| format!("{}; then OK", orders_seen.join("; "))),
    );

    report.judge(
        "partial coverage",
        subset(&client, workload, &case, &[0, 2]).await,
    );
    report.judge("no partials", subset(&client, workload, &case, &[]).await);
    early_enough(&mut report, &client, workload, &case, enough_seen).await;
    report.judge(
        "unknown shard",
        refused(
            &client,
            vec![
                start(&case),
                partial_of(case.shard_count(), case.partials[0].clone()),
                end(&case, 1),
            ],
            false,
        )
        .await,
    );
    report.judge(
        "input after end",
        refused(
            &client,
            vec![
                start(&case),
                partial(&case, 0),
                end(&case, 1),
                partial(&case, 1),
            ],
            true,
        )
        .await,
    );
    report.judge(
        "first message not start",
        refused(
            &client,
            vec![partial(&case, 0), start(&case), end(&case, 1)],
            false,
        )
        .await,
    );
    report.judge(
        "stream cut midway",
        cut_midway(&client, workload, &case, options.cut_merges).await,
    );
    report.judge("deadline", deadline(&client, &case).await);
    report
}

async fn subset(
    client: &MergerClient<Transport>,
    workload: Workload,
    case: &MergeCase,
    shards: &[u32],
) -> Result<String, String> {
    let played = play(client, case, shards, false).await?;
    let seen = workload.judge_merged(&workload.expected(case, shards), played.result.as_ref())?;
    Ok(format!(
        "{} of {} shards: {seen}",
        shards.len(),
        case.shard_count()
    ))
}

async fn early_enough(
    report: &mut Report,
    client: &MergerClient<Transport>,
    workload: Workload,
    case: &MergeCase,
    seen: Option<(usize, String)>,
) {
    const NAME: &str = "early enough";
    if seen.is_none() {
        report.record(NAME, Verdict::Pass, "not sent (optional)");
        return;
    }
    // Stop at the signal, as the root does, and check the answer is the
    // merge of what was sent by then.
    let order: Vec<u32> = (0..case.shard_count()).collect();
    let outcome = play(client, case, &order, true).await.and_then(|played| {
        let (after, reason) = played
            .enough
            .clone()
            .unwrap_or((order.len(), String::new()));
        let expected = workload.expected(case, &order[..after]);
        workload
            .judge_merged(&expected, played.result.as_ref())
            .map(|merged| {
                format!(
                    "sent after {after} of {} partials ({reason:?}); the result then: {merged}",
                    order.len()
                )
            })
    });
    report.judge(NAME, outcome);
}

/// Sends `messages` (and closes the input) and expects the call to end
/// INVALID_ARGUMENT; a result before that is allowed only when
/// `result_allowed` (the answer to an `end` that came first).
async fn refused(
    client: &MergerClient<Transport>,
    messages: Vec<MergeInput>,
    result_allowed: bool,
) -> Result<String, String> {
    let mut session = match Session::open(client, Some(Duration::from_secs(10)), messages).await {
        Ok(session) => session,
        Err(status) if status.code() == Code::InvalidArgument => return Ok(describe(&status)),
        Err(status) => {
            return Err(format!(
                "expected INVALID_ARGUMENT, got {}",
                describe(&status)
            ));
        }
    };
    session.close();
    let deadline = Instant::now() + OWED;
    loop {
        match session
            .next(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            Next::Output(MergeOutput {
                kind: Some(OutputKind::Result(_)),
            }) if !result_allowed => {
                return Err("answered with a result".to_owned());
            }
            Next::Output(_) => {}
            Next::Ended(Err(status)) if status.code() == Code::InvalidArgument => {
                return Ok(describe(&status));
            }
            Next::Ended(outcome) => {
                return Err(format!(
                    "expected INVALID_ARGUMENT, the call ended {}",
                    ended(&outcome)
                ));
            }
            Next::Nothing => return Err(format!("the call was still open after {}", ms(OWED))),
        }
    }
}

/// Cuts `count` merges after one partial (the client goes away: RST_STREAM),
/// `CUT_WAVE` at a time, then expects a whole merge to be answered. A merger
/// that keeps what a cut merge held runs out of room (or of threads).
async fn cut_midway(
    client: &MergerClient<Transport>,
    workload: Workload,
    case: &MergeCase,
    count: usize,
) -> Result<String, String> {
    let started = Instant::now();
    let mut cut = 0;
    while cut < count {
        let wave = CUT_WAVE.min(count - cut);
        let opened = join_all((0..wave).map(|_| async {
            let session = Session::open(
                client,
                Some(Duration::from_secs(30)),
                vec![start(case), partial(case, 0)],
            )
            .await?;
            // Give the merger time to read what was sent, then go away.
            tokio::time::sleep(Duration::from_millis(5)).await;
            drop(session);
            Ok::<(), Status>(())
        }))
        .await;
        if let Some(Err(status)) = opened.into_iter().find(Result::is_err) {
            return Err(format!(
                "after {cut} merges cut midway, a new merge was refused: {} (the cut ones were not freed)",
                describe(&status)
            ));
        }
        cut += wave;
    }
    let cutting = started.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (played, took) = probe::timed(play(client, case, &[0, 1, 2], false)).await;
    let played = played.map_err(|why| format!("after {count} merges cut midway: {why}"))?;
    workload.judge_merged(&workload.expected(case, &[0, 1, 2]), played.result.as_ref())?;
    Ok(format!(
        "{count} merges cut after one partial (in {}), then a whole merge answered in {}",
        ms(cutting),
        ms(took)
    ))
}

/// A merge whose caller sends `start` and a partial and then nothing (the
/// input stays open) must end at its deadline, not hold its state forever.
async fn deadline(client: &MergerClient<Transport>, case: &MergeCase) -> Result<String, String> {
    let timeout = Duration::from_millis(300);
    let grace = Duration::from_secs(1);
    let started = Instant::now();
    let mut session =
        match Session::open(client, Some(timeout), vec![start(case), partial(case, 0)]).await {
            Ok(session) => session,
            Err(status) => return deadline_ended(Err(status), started.elapsed(), timeout, grace),
        };
    loop {
        match session.next(timeout + grace * 3).await {
            Next::Output(MergeOutput {
                kind: Some(OutputKind::Result(_)),
            }) => {
                return Err("answered with a result although end never came".to_owned());
            }
            Next::Output(_) => {}
            Next::Ended(outcome) => {
                return deadline_ended(outcome, started.elapsed(), timeout, grace);
            }
            Next::Nothing => {
                return Err(format!(
                    "still open {} after its {} deadline with no end sent",
                    ms(started.elapsed().saturating_sub(timeout)),
                    ms(timeout)
                ));
            }
        }
    }
}

fn deadline_ended(
    outcome: Result<(), Status>,
    took: Duration,
    timeout: Duration,
    grace: Duration,
) -> Result<String, String> {
    match outcome {
        Err(status)
            if matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled)
                && took <= timeout + grace =>
        {
            Ok(format!(
                "a {} merge without end ended {} after {}",
                ms(timeout),
                code_name(status.code()),
                ms(took)
            ))
        }
        Err(status) if matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled) => {
            Err(format!(
                "a {} merge without end ended only after {} ({})",
                ms(timeout),
                ms(took),
                describe(&status)
            ))
        }
        other => Err(format!("a merge without end ended {}", ended(&other))),
    }
}
