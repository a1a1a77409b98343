//! `fanout conformance leaf ADDR`: the `fanout.v1.Leaf` contract, checked
//! against a running leaf from the outside, as fanout's root would use it.
//!
//! The checks run in this order (later ones load the leaf, so the ones that
//! judge answers come first; SIGTERM, when allowed, is last):
//!
//! | check | the contract |
//! |---|---|
//! | health | `grpc.health.v1` answers SERVING for the server ("") |
//! | info | `Info` answers: shard id below shard count, capabilities listed (and the shard `--shard-id` names) |
//! | execute | a request of the workload is answered with its documented payload, in the documented order; the answer's `generation` is Info's, `docs_searched` at most Info's `doc_count` |
//! | fetch | the search workload's second phase: one found document per hit, in order |
//! | wrong shard id | FAILED_PRECONDITION, not retryable |
//! | unknown type URL, no payload, undecodable payload | INVALID_ARGUMENT, not retryable |
//! | deadline | with `grpc-timeout` 1 ms and 50 ms: OK, DEADLINE_EXCEEDED (or RESOURCE_EXHAUSTED at once: it cannot finish in time), within the deadline and a grace; and calls whose deadline passed do not keep the leaf busy |
//! | cancellation | calls abandoned in flight do not delay the next call much beyond the leaf's unloaded latency |
//! | concurrency | 32 calls at once: each OK (or RESOURCE_EXHAUSTED), none lost |
//! | overload | many heavy calls at once: the excess refused with RESOURCE_EXHAUSTED (retryable), not queued; reported, not failed, when it cannot be provoked |
//! | drain on SIGTERM | with `--sigterm-pid`: health turns NOT_SERVING before the leaf stops answering |

use std::time::Duration;

use fanout_proto::Any;
use fanout_proto::retry::is_retryable;
use fanout_proto::status::code_name;
use fanout_proto::v1::leaf_client::LeafClient;
use fanout_proto::v1::{ExecuteRequest, ExecuteResponse, InfoRequest, InfoResponse};
use futures::future::join_all;
use tokio::time::Instant;
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::probe::{self, Target, Transport, describe, ms};
use crate::report::{Report, Verdict};
use crate::workload::{Weight, Workload};

/// What `fanout conformance leaf` is told.
#[derive(Debug, Clone)]
pub struct LeafOptions {
    /// `http://host:port`.
    pub url: String,
    /// The shard the leaf should say it serves.
    pub shard_id: Option<u32>,
    /// The leaf's process: the kit may send it SIGTERM (last check).
    pub sigterm_pid: Option<i32>,
    /// Heavy calls sent at once to provoke an overload.
    pub overload_calls: usize,
    /// How long after its deadline an answer may still come.
    pub deadline_grace: Duration,
    /// The dimension of a k-NN leaf's vectors (its Info does not say).
    pub knn_dim: Option<usize>,
}

impl LeafOptions {
    pub fn new(url: impl Into<String>) -> LeafOptions {
        LeafOptions {
            url: url.into(),
            shard_id: None,
            sigterm_pid: None,
            overload_calls: 256,
            deadline_grace: Duration::from_millis(500),
            knn_dim: None,
        }
    }
}

/// How long the kit waits for an answer the leaf owes it: the call's own
/// deadline plus this, or this for a call without one.
const OWED_ANSWER: Duration = Duration::from_secs(5);
/// Calls abandoned in flight by the cancellation check.
const ABANDONED_CALLS: usize = 16;
/// Calls sent at once by the concurrency check.
const CONCURRENT_CALLS: usize = 32;
/// An unknown payload type.
const UNKNOWN_TYPE_URL: &str = "type.googleapis.com/fanout.conformance.v1.NoSuchRequest";

/// One call's end.
#[derive(Debug)]
enum Outcome {
    Answer(ExecuteResponse),
    Status(Status),
    /// The kit stopped waiting (see [`OWED_ANSWER`]).
    NoAnswer(Duration),
}

impl Outcome {
    fn code(&self) -> Option<Code> {
        match self {
            Outcome::Answer(_) => Some(Code::Ok),
            Outcome::Status(status) => Some(status.code()),
            Outcome::NoAnswer(_) => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Outcome::Answer(_) => "OK".to_owned(),
            Outcome::Status(status) => describe(status),
            Outcome::NoAnswer(waited) => format!("no answer within {}", ms(*waited)),
        }
    }
}

struct Leaf {
    client: LeafClient<Transport>,
    shard_id: u32,
}

impl Leaf {
    /// One `Execute`, with `grpc-timeout` set to `timeout` when given.
    async fn execute(
        &self,
        payload: Option<Any>,
        shard_id: u32,
        timeout: Option<Duration>,
    ) -> (Outcome, Duration) {
        let mut request = tonic::Request::new(ExecuteRequest {
            payload,
            shard_id,
            attempt: 0,
            request_id: "conformance".to_owned(),
        });
        if let Some(timeout) = timeout {
            request.set_timeout(timeout);
        }
        let owed = timeout.unwrap_or_default() + OWED_ANSWER;
        let mut client = self.client.clone();
        let started = Instant::now();
        let outcome = match tokio::time::timeout(owed, client.execute(request)).await {
            Ok(Ok(response)) => Outcome::Answer(response.into_inner()),
            Ok(Err(status)) => Outcome::Status(status),
            Err(_) => Outcome::NoAnswer(owed),
        };
        (outcome, started.elapsed())
    }

    async fn run(
        &self,
        workload: Workload,
        weight: Weight,
        timeout: Option<Duration>,
    ) -> (Outcome, Duration) {
        self.execute(Some(workload.leaf_request(weight)), self.shard_id, timeout)
            .await
    }
}

/// Runs every check against the leaf at `options.url`.
pub async fn check_leaf(options: &LeafOptions) -> Report {
    let mut report = Report::new(format!("leaf {}", options.url));
    let target = match Target::new(&options.url) {
        Ok(target) => target,
        Err(error) => {
            report.record("connect", Verdict::Fail, error);
            return report;
        }
    };
    report.judge(
        "health",
        probe::serving(&target, "fanout.v1.Leaf", OWED_ANSWER).await,
    );

    let mut client = LeafClient::with_origin(target.transport.clone(), target.origin.clone())
        .max_decoding_message_size(64 << 20);
    let info = match probe::within(OWED_ANSWER, client.info(InfoRequest {})).await {
        Ok(Ok(info)) => info.into_inner(),
        Ok(Err(status)) => {
            report.record(
                "info",
                Verdict::Fail,
                format!("Info answered {}", describe(&status)),
            );
            return report;
        }
        Err(error) => {
            report.record("info", Verdict::Fail, format!("Info: {error}"));
            return report;
        }
    };
    report.judge("info", judge_info(&info, options.shard_id));
    let leaf = Leaf {
        client,
        shard_id: info.shard_id,
    };

    let workload = match Workload::of_leaf(&info.capabilities, options.knn_dim) {
        Ok(workload) => workload,
        Err(why) => {
            report.record("execute", Verdict::Skip, why);
            bad_payloads(&mut report, &leaf, None).await;
            sigterm(&mut report, &target, options.sigterm_pid).await;
            return report;
        }
    };
    let hits = execute(&mut report, &leaf, workload, &info).await;
    fetch(&mut report, &leaf, workload, &info, &hits).await;
    wrong_shard(&mut report, &leaf, workload, &info).await;
    bad_payloads(&mut report, &leaf, Some(workload)).await;
    let heavy = heavy_latency(&leaf, workload).await;
    report.judge(
        "deadline",
        deadline(&leaf, workload, options.deadline_grace, heavy).await,
    );
    report.judge("cancellation", cancellation(&leaf, workload, heavy).await);
    report.judge("concurrency", concurrency(&leaf, workload).await);
    overload(&mut report, &leaf, workload, options.overload_calls).await;
    sigterm(&mut report, &target, options.sigterm_pid).await;
    report
}

fn judge_info(info: &InfoResponse, wanted_shard: Option<u32>) -> Result<String, String> {
    if info.shard_count == 0 {
        return Err("shard_count is 0".to_owned());
    }
    if info.shard_id >= info.shard_count {
        return Err(format!(
            "shard_id {} is not below shard_count {}",
            info.shard_id, info.shard_count
        ));
    }
    if let Some(wanted) = wanted_shard.filter(|wanted| *wanted != info.shard_id) {
        return Err(format!("serves shard {}, expected {wanted}", info.shard_id));
    }
    if info.capabilities.is_empty() {
        return Err("lists no capabilities (the type URLs Execute understands)".to_owned());
    }
    Ok(format!(
        "shard {} of {}, {} documents, generation {:?}, capabilities {:?}",
        info.shard_id, info.shard_count, info.doc_count, info.generation, info.capabilities
    ))
}

/// The workload's request, answered and judged; returns the hits for fetch.
async fn execute(
    report: &mut Report,
    leaf: &Leaf,
    workload: Workload,
    info: &InfoResponse,
) -> Vec<fanout_proto::search::v1::ShardHit> {
    let (outcome, took) = leaf.run(workload, Weight::Light, Some(OWED_ANSWER)).await;
    let response = match outcome {
        Outcome::Answer(response) => response,
        other => {
            report.record(
                "execute",
                Verdict::Fail,
                format!("{} answered {}", workload.request_url(), other.describe()),
            );
            return Vec::new();
        }
    };
    let judged = workload
        .judge_leaf_answer(Weight::Light, response.payload.as_ref())
        .and_then(|answer| {
            if response.generation != info.generation {
                return Err(format!(
                    "the answer's generation {:?} is not Info's {:?}",
                    response.generation, info.generation
                ));
            }
            if response.docs_searched > info.doc_count {
                return Err(format!(
                    "docs_searched {} is above Info's doc_count {}",
                    response.docs_searched, info.doc_count
                ));
            }
            Ok(answer)
        });
    match judged {
        Ok(answer) => {
            report.record(
                "execute",
                Verdict::Pass,
                format!(
                    "{} in {}; docs_searched {} of {}",
                    answer.summary,
                    ms(took),
                    response.docs_searched,
                    info.doc_count
                ),
            );
            answer.hits
        }
        Err(why) => {
            report.record("execute", Verdict::Fail, why);
            Vec::new()
        }
    }
}

async fn fetch(
    report: &mut Report,
    leaf: &Leaf,
    workload: Workload,
    info: &InfoResponse,
    hits: &[fanout_proto::search::v1::ShardHit],
) {
    let Some(url) = workload.fetch_url() else {
        return;
    };
    if !info.capabilities.contains(&url) {
        report.record(
            "fetch",
            Verdict::Skip,
            format!("{url} is not among the capabilities"),
        );
        return;
    }
    let hits = &hits[..hits.len().min(5)];
    if hits.is_empty() {
        report.record("fetch", Verdict::Skip, "the search found no hits to fetch");
        return;
    }
    let payload = workload.fetch_request(hits, &info.generation);
    let (outcome, took) = leaf
        .execute(payload, leaf.shard_id, Some(OWED_ANSWER))
        .await;
    let judged = match outcome {
        Outcome::Answer(response) => workload
            .judge_fetch_answer(hits, response.payload.as_ref())
            .map(|summary| format!("{summary} in {}", ms(took))),
        other => Err(format!("{url} answered {}", other.describe())),
    };
    report.judge("fetch", judged);
}

/// A status the contract documents, and that it must not be retryable.
fn expect_final(outcome: &Outcome, code: Code) -> Result<String, String> {
    match outcome {
        Outcome::Status(status) if status.code() == code && !is_retryable(status) => {
            Ok(describe(status))
        }
        Outcome::Status(status) if status.code() == code => Err(format!(
            "{}, but marked retryable (fanout-retryable: true): the root would try every replica",
            describe(status)
        )),
        other => Err(format!(
            "expected {}, got {}",
            code_name(code),
            other.describe()
        )),
    }
}

async fn wrong_shard(report: &mut Report, leaf: &Leaf, workload: Workload, info: &InfoResponse) {
    let wrong = info.shard_id.wrapping_add(1);
    let (outcome, _) = leaf
        .execute(
            Some(workload.leaf_request(Weight::Light)),
            wrong,
            Some(OWED_ANSWER),
        )
        .await;
    report.judge(
        "wrong shard id",
        expect_final(&outcome, Code::FailedPrecondition)
            .map(|seen| format!("shard {wrong}: {seen}")),
    );
}

async fn bad_payloads(report: &mut Report, leaf: &Leaf, workload: Option<Workload>) {
    let unknown = Any {
        type_url: UNKNOWN_TYPE_URL.to_owned(),
        value: Vec::new(),
    };
    let (outcome, _) = leaf
        .execute(Some(unknown), leaf.shard_id, Some(OWED_ANSWER))
        .await;
    report.judge(
        "unknown type URL",
        expect_final(&outcome, Code::InvalidArgument),
    );
    let (outcome, _) = leaf.execute(None, leaf.shard_id, Some(OWED_ANSWER)).await;
    report.judge("no payload", expect_final(&outcome, Code::InvalidArgument));
    if let Some(workload) = workload {
        // Eight bytes of an unfinished varint: no message decodes from them.
        let garbage = Any {
            type_url: workload.request_url(),
            value: vec![0xff; 8],
        };
        let (outcome, _) = leaf
            .execute(Some(garbage), leaf.shard_id, Some(OWED_ANSWER))
            .await;
        report.judge(
            "undecodable payload",
            expect_final(&outcome, Code::InvalidArgument),
        );
    }
}

/// The median time of a few heavy calls on an idle leaf (zero if they fail:
/// the checks that use it then judge by the light calls alone).
async fn heavy_latency(leaf: &Leaf, workload: Workload) -> Duration {
    let mut took = Vec::new();
    for _ in 0..3 {
        if let (Outcome::Answer(_), elapsed) =
            leaf.run(workload, Weight::Heavy, Some(OWED_ANSWER)).await
        {
            took.push(elapsed);
        }
    }
    probe::median(took)
}

/// Calls whose deadline passes in the deadline check's second part.
const EXPIRING_CALLS: usize = 8;

/// Heavy calls with a 1 ms and a 50 ms deadline must end within the deadline
/// and a grace; then calls whose deadline passes must not keep the leaf
/// busy: a call right after them answers about as fast as on an idle leaf.
async fn deadline(
    leaf: &Leaf,
    workload: Workload,
    grace: Duration,
    heavy: Duration,
) -> Result<String, String> {
    let baseline = light_latency(leaf, workload, 3).await?;
    let mut seen = Vec::new();
    for timeout in [Duration::from_millis(1), Duration::from_millis(50)] {
        let (outcome, took) = leaf.run(workload, Weight::Heavy, Some(timeout)).await;
        let late = took > timeout + grace;
        match (outcome.code(), &outcome) {
            (Some(Code::Ok | Code::DeadlineExceeded | Code::ResourceExhausted), _) if !late => {
                seen.push(format!(
                    "{}: {} after {}",
                    ms(timeout),
                    outcome.describe(),
                    ms(took)
                ));
            }
            // tonic's own answer once a call's grpc-timeout has passed.
            (Some(Code::Cancelled), Outcome::Status(status))
                if !late && status.message() == "Timeout expired" =>
            {
                seen.push(format!(
                    "{}: CANCELLED \"Timeout expired\" (tonic's answer at the deadline) after {}",
                    ms(timeout),
                    ms(took)
                ));
            }
            (
                Some(Code::Ok | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Cancelled),
                _,
            ) => {
                return Err(format!(
                    "with a {} deadline: {} after {}, more than {} late: the leaf does not stop at the caller's deadline",
                    ms(timeout),
                    outcome.describe(),
                    ms(took),
                    ms(grace)
                ));
            }
            _ => {
                return Err(format!(
                    "with a {} deadline: {}",
                    ms(timeout),
                    outcome.describe()
                ));
            }
        }
    }
    let timeout = Duration::from_millis(50);
    join_all((0..EXPIRING_CALLS).map(|_| leaf.run(workload, Weight::Heavy, Some(timeout)))).await;
    let (outcome, next) = leaf
        .run(workload, Weight::Light, Some(Duration::from_secs(10)))
        .await;
    if !matches!(outcome, Outcome::Answer(_)) {
        return Err(format!(
            "the call after {EXPIRING_CALLS} expired ones: {}",
            outcome.describe()
        ));
    }
    let allowed = allowed_delay(baseline, heavy);
    let after = format!(
        "a call right after {EXPIRING_CALLS} heavy calls' {} deadline passed took {} (unloaded {})",
        ms(timeout),
        ms(next),
        ms(baseline)
    );
    if next > allowed {
        return Err(format!(
            "{after}, more than {}: the leaf does not stop at the caller's deadline, it went on with the expired calls",
            ms(allowed)
        ));
    }
    seen.push(after);
    Ok(seen.join("; "))
}

/// How long a call may take on a leaf that stops abandoned or expired work:
/// its unloaded latency, plus two heavy calls (one running when the others
/// were dropped, on each of a couple of threads) or 200 ms, the larger.
fn allowed_delay(baseline: Duration, heavy: Duration) -> Duration {
    baseline + (heavy * 2).max(Duration::from_millis(200))
}

/// Abandons calls in flight, then times the next call against the leaf's
/// unloaded latency: a leaf that finishes abandoned work first makes it wait
/// for all of it.
async fn cancellation(leaf: &Leaf, workload: Workload, heavy: Duration) -> Result<String, String> {
    let baseline = light_latency(leaf, workload, 5).await?;
    let abandoned: Vec<_> = (0..ABANDONED_CALLS)
        .map(|_| {
            let client = leaf.client.clone();
            let leaf = Leaf {
                client,
                shard_id: leaf.shard_id,
            };
            tokio::spawn(async move {
                leaf.run(workload, Weight::Heavy, Some(Duration::from_secs(10)))
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(30)).await;
    for call in &abandoned {
        call.abort();
    }
    let (outcome, next) = leaf
        .run(workload, Weight::Light, Some(Duration::from_secs(10)))
        .await;
    if !matches!(outcome, Outcome::Answer(_)) {
        return Err(format!(
            "the call after {ABANDONED_CALLS} cancelled ones: {}",
            outcome.describe()
        ));
    }
    // Finishing the abandoned calls instead of stopping them would cost
    // about ABANDONED_CALLS heavy calls' time.
    let allowed = allowed_delay(baseline, heavy);
    let seen = format!(
        "the next call took {} after {ABANDONED_CALLS} heavy calls were cancelled in flight (unloaded {}, a heavy call {})",
        ms(next),
        ms(baseline),
        ms(heavy)
    );
    if next > allowed {
        return Err(format!(
            "{seen}: more than {}, the leaf went on with abandoned work",
            ms(allowed)
        ));
    }
    Ok(seen)
}

async fn light_latency(leaf: &Leaf, workload: Workload, calls: usize) -> Result<Duration, String> {
    let mut took = Vec::new();
    for _ in 0..calls {
        match leaf.run(workload, Weight::Light, Some(OWED_ANSWER)).await {
            (Outcome::Answer(_), elapsed) => took.push(elapsed),
            (other, _) => return Err(format!("a light call: {}", other.describe())),
        }
    }
    Ok(probe::median(took))
}

async fn concurrency(leaf: &Leaf, workload: Workload) -> Result<String, String> {
    let calls = (0..CONCURRENT_CALLS)
        .map(|_| leaf.run(workload, Weight::Light, Some(Duration::from_secs(10))));
    let outcomes = join_all(calls).await;
    let ok = outcomes
        .iter()
        .filter(|(outcome, _)| matches!(outcome, Outcome::Answer(_)))
        .count();
    let refused = outcomes
        .iter()
        .filter(|(outcome, _)| outcome.code() == Some(Code::ResourceExhausted))
        .count();
    let slowest = outcomes
        .iter()
        .map(|(_, took)| *took)
        .max()
        .unwrap_or_default();
    if let Some((other, _)) = outcomes
        .iter()
        .find(|(outcome, _)| !matches!(outcome.code(), Some(Code::Ok | Code::ResourceExhausted)))
    {
        return Err(format!(
            "{CONCURRENT_CALLS} calls at once: one answered {}",
            other.describe()
        ));
    }
    if ok == 0 {
        return Err(format!(
            "{CONCURRENT_CALLS} calls at once: every one refused"
        ));
    }
    Ok(format!(
        "{CONCURRENT_CALLS} calls at once: {ok} OK, {refused} RESOURCE_EXHAUSTED, the slowest {}",
        ms(slowest)
    ))
}

async fn overload(report: &mut Report, leaf: &Leaf, workload: Workload, calls: usize) {
    let deadline = Duration::from_secs(5);
    let outcomes =
        join_all((0..calls).map(|_| leaf.run(workload, Weight::Heavy, Some(deadline)))).await;
    let count = |code: Code| {
        outcomes
            .iter()
            .filter(|(outcome, _)| outcome.code() == Some(code))
            .count()
    };
    let (ok, refused, late) = (
        count(Code::Ok),
        count(Code::ResourceExhausted),
        count(Code::DeadlineExceeded),
    );
    let slowest = outcomes
        .iter()
        .map(|(_, took)| *took)
        .max()
        .unwrap_or_default();
    let counts = format!(
        "{calls} heavy calls at once: {ok} OK, {refused} RESOURCE_EXHAUSTED, {late} DEADLINE_EXCEEDED, the slowest {}",
        ms(slowest)
    );
    if let Some((other, _)) = outcomes.iter().find(|(outcome, _)| {
        !matches!(
            outcome.code(),
            Some(Code::Ok | Code::ResourceExhausted | Code::DeadlineExceeded)
        )
    }) {
        report.record(
            "overload",
            Verdict::Fail,
            format!("{counts}; one answered {}", other.describe()),
        );
        return;
    }
    let not_retryable = outcomes.iter().find_map(|(outcome, _)| match outcome {
        Outcome::Status(status)
            if status.code() == Code::ResourceExhausted && !is_retryable(status) =>
        {
            Some(status)
        }
        _ => None,
    });
    if let Some(status) = not_retryable {
        report.record(
            "overload",
            Verdict::Fail,
            format!(
                "{counts}; RESOURCE_EXHAUSTED marked fanout-retryable: false ({})",
                describe(status)
            ),
        );
        return;
    }
    if refused > 0 {
        report.record(
            "overload",
            Verdict::Pass,
            format!("{counts}: the excess was refused, retryable"),
        );
    } else if late > 0 {
        report.record(
            "overload",
            Verdict::Note,
            format!(
                "{counts}: queued until the deadline instead of refusing with RESOURCE_EXHAUSTED"
            ),
        );
    } else {
        report.record("overload", Verdict::Note, format!("{counts}: not provoked"));
    }
}

/// Sends SIGTERM and watches health: NOT_SERVING must come before the leaf
/// stops answering, so that the root moves its calls away while the leaf
/// still finishes the ones in flight.
async fn sigterm(report: &mut Report, target: &Target, pid: Option<i32>) {
    const NAME: &str = "drain on SIGTERM";
    let Some(pid) = pid else {
        report.record(
            NAME,
            Verdict::Skip,
            "pass --sigterm-pid PID to let the kit send SIGTERM and watch health turn NOT_SERVING",
        );
        return;
    };
    let process = nix::unistd::Pid::from_raw(pid);
    if let Err(error) = nix::sys::signal::kill(process, nix::sys::signal::Signal::SIGTERM) {
        report.record(
            NAME,
            Verdict::Fail,
            format!("cannot send SIGTERM to {pid}: {error}"),
        );
        return;
    }
    let sent = Instant::now();
    let give_up = sent + Duration::from_secs(10);
    loop {
        match probe::health(target, "", Duration::from_secs(1)).await {
            Ok(ServingStatus::Serving) if Instant::now() < give_up => {}
            Ok(ServingStatus::Serving) => {
                report.record(NAME, Verdict::Fail, "still SERVING 10 s after SIGTERM");
                return;
            }
            Ok(status) => {
                report.record(
                    NAME,
                    Verdict::Pass,
                    format!(
                        "{} {} after SIGTERM",
                        status.as_str_name(),
                        ms(sent.elapsed())
                    ),
                );
                return;
            }
            Err(error) => {
                report.record(
                    NAME,
                    Verdict::Fail,
                    format!(
                        "stopped answering {} after SIGTERM without reporting NOT_SERVING first ({error})",
                        ms(sent.elapsed())
                    ),
                );
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
