//! `fanout search "QUERY"`: one Search call to a root, printed as a table (or JSON).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use fanout_proto::search::v1::search_client::SearchClient;
use fanout_proto::search::v1::{QueryMode, SearchRequest, SearchResponse};
use fanout_proto::v1::ShardTiming;
use tonic::codec::CompressionEncoding;
use tonic::transport::{Channel, Endpoint};

use crate::cmd::{grpc_status, grpc_url, human};

/// Widest title printed in the table, in characters.
const TITLE_WIDTH: usize = 70;
/// Widest id printed in the table, in characters.
const ID_WIDTH: usize = 32;
/// Widest snippet or extra field printed under a hit, in characters.
const DETAIL_WIDTH: usize = 160;
/// How long to wait for the TCP connection to the root.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Args)]
pub struct SearchArgs {
    /// The query: free text, or tantivy syntax with --syntax.
    pub query: String,
    /// Root to ask.
    #[arg(long, default_value = "http://127.0.0.1:50051", env = "FANOUT_ADDR")]
    pub addr: String,
    /// Number of hits.
    #[arg(short, long, default_value_t = 10, env = "FANOUT_K",
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub k: u32,
    /// Read the query as tantivy syntax (`title:rust AND "exact phrase" -excluded`).
    #[arg(long, env = "FANOUT_SYNTAX")]
    pub syntax: bool,
    /// Show an excerpt of the text with the matched words highlighted.
    #[arg(long, env = "FANOUT_SNIPPETS")]
    pub snippets: bool,
    /// Stored fields to return, comma separated (id, title, text); default id and title.
    #[arg(long, value_delimiter = ',', env = "FANOUT_FIELDS")]
    pub fields: Vec<String>,
    /// Time limit of the call in milliseconds (sent as grpc-timeout).
    #[arg(long, env = "FANOUT_TIMEOUT_MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: Option<u64>,
    /// Accept an answer from only some of the shards.
    #[arg(long, env = "FANOUT_ALLOW_PARTIAL")]
    pub allow_partial: bool,
    /// Print the whole response as JSON.
    #[arg(long, env = "FANOUT_JSON")]
    pub json: bool,
    /// A bearer token for a root started with --auth-tokens (better given
    /// by the variable than on the command line, where `ps` shows it).
    #[arg(long, env = "FANOUT_TOKEN", hide_env_values = true)]
    pub token: Option<Secret>,
    /// Force this request to be traced wherever it goes (a sampled W3C
    /// traceparent of a new trace); its trace id is printed on stderr.
    #[arg(long, env = "FANOUT_TRACE")]
    pub trace: bool,
    /// Skip the root's result cache (when it has one), both ways.
    #[arg(long, env = "FANOUT_NO_CACHE")]
    pub no_cache: bool,
    #[command(flatten)]
    pub tls: super::ClientTlsArgs,
}

/// A secret flag value: never shown by `Debug`.
#[derive(Clone)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl std::str::FromStr for Secret {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.is_empty() || text.chars().any(|c| c.is_control()) {
            return Err("a token is printable text, not empty".to_owned());
        }
        Ok(Secret(text.to_owned()))
    }
}

impl SearchArgs {
    pub fn validate(mut self) -> anyhow::Result<SearchArgs> {
        self.addr = grpc_url("--addr", &self.addr)?;
        if self.query.trim().is_empty() {
            bail!("the query is empty");
        }
        Ok(self)
    }
}

/// A Search client on a connected channel, gzip both ways.
pub async fn connect_search_client(addr: &str) -> anyhow::Result<SearchClient<Channel>> {
    let endpoint =
        Endpoint::from_shared(addr.to_owned()).with_context(|| format!("{addr:?} is not a URL"))?;
    connect_search_client_over(addr, endpoint).await
}

/// [`connect_search_client`] over `endpoint` (TLS, say).
pub async fn connect_search_client_over(
    addr: &str,
    endpoint: Endpoint,
) -> anyhow::Result<SearchClient<Channel>> {
    let endpoint = endpoint.connect_timeout(CONNECT_TIMEOUT);
    let channel = fanout_runtime::client::connect(&endpoint)
        .await
        .with_context(|| format!("cannot connect to {addr} (is `fanout up` running?)"))?;
    Ok(SearchClient::new(channel)
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip))
}

pub async fn run(args: SearchArgs) -> anyhow::Result<ExitCode> {
    let connected = match args.tls.endpoint(&args.addr) {
        Ok(endpoint) => connect_search_client_over(&args.addr, endpoint).await,
        Err(error) => Err(error),
    };
    let mut client = match connected {
        Ok(client) => client,
        Err(error) => {
            eprintln!("error: UNAVAILABLE: {error:#}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut request = tonic::Request::new(SearchRequest {
        query: args.query.clone(),
        k: args.k,
        mode: if args.syntax {
            QueryMode::Syntax
        } else {
            QueryMode::Natural
        } as i32,
        fields: args.fields.clone(),
        allow_partial: args.allow_partial,
        snippets: args.snippets,
        no_cache: args.no_cache,
        ..SearchRequest::default()
    });
    if let Some(timeout_ms) = args.timeout_ms {
        request.set_timeout(Duration::from_millis(timeout_ms));
    }
    if let Some(Secret(token)) = &args.token {
        let value = format!("Bearer {token}")
            .parse()
            .context("the token cannot travel as gRPC metadata")?;
        request.metadata_mut().insert("authorization", value);
    }
    if args.trace {
        let traceparent = fanout_runtime::trace_context::new_sampled_traceparent();
        if let Some(trace_id) = fanout_runtime::trace_context::trace_id_of_traceparent(&traceparent)
        {
            eprintln!("trace id: {trace_id}");
        }
        let value = traceparent
            .parse()
            .context("a traceparent is ASCII metadata")?;
        request
            .metadata_mut()
            .insert(fanout_runtime::trace_context::TRACEPARENT, value);
    }
    let response = match client.search(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            eprintln!("error: {}", describe_search_error(&status, args.timeout_ms));
            return Ok(ExitCode::FAILURE);
        }
    };
    if args.json {
        let text = response_to_json(&response).context("cannot encode the response as JSON")?;
        println!("{text}");
    } else {
        print!(
            "{}",
            render_table(&response, std::io::stdout().is_terminal())
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A failed call as `CODE: message`. tonic reports its own client-side
/// timeout as CANCELLED; it is shown as the DEADLINE_EXCEEDED it is.
fn describe_search_error(status: &tonic::Status, timeout_ms: Option<u64>) -> String {
    match timeout_ms {
        Some(timeout_ms)
            if status.code() == tonic::Code::Cancelled
                && status.message().contains("Timeout expired") =>
        {
            format!("DEADLINE_EXCEEDED: no answer within --timeout-ms {timeout_ms}")
        }
        _ => grpc_status::describe(status),
    }
}

/// The response as JSON, field names as in the .proto file.
/// The response as pretty JSON, straight from its fields (the messages
/// derive `serde::Serialize`, see proto/build.rs); scores keep their own
/// shortest digits (`20.616505`, not the `20.616504669189453` of a widening
/// to `f64`).
pub fn response_to_json(response: &SearchResponse) -> serde_json::Result<String> {
    serde_json::to_string_pretty(response)
}

/// The readable form: one line per hit (rank, score, id, title), an optional
/// snippet line, then totals, coverage and per-shard timings.
pub fn render_table(response: &SearchResponse, highlight_with_ansi: bool) -> String {
    let mut out = String::new();
    if response.hits.is_empty() {
        out.push_str("no hits\n");
    }
    let rank_width = response.hits.len().to_string().len().max(1);
    let scores: Vec<String> = response
        .hits
        .iter()
        .map(|hit| format!("{:.4}", hit.score))
        .collect();
    let score_width = scores.iter().map(String::len).max().unwrap_or(0);
    let id_width = response
        .hits
        .iter()
        .map(|hit| hit.id.chars().count().min(ID_WIDTH))
        .max()
        .unwrap_or(0);
    let indent = " ".repeat(rank_width + score_width + 4);
    for (index, (hit, score)) in response.hits.iter().zip(&scores).enumerate() {
        let title = hit.fields.get("title").map(String::as_str).unwrap_or("");
        let line = format!(
            "{rank:>rank_width$}  {score:>score_width$}  {id:<id_width$}  {title}",
            rank = index + 1,
            id = human::truncate(&hit.id, ID_WIDTH),
            title = human::truncate(&single_line(title), TITLE_WIDTH),
        );
        out.push_str(line.trim_end());
        out.push('\n');
        let mut extra_fields: Vec<(&String, &String)> = hit
            .fields
            .iter()
            .filter(|(name, _)| name.as_str() != "id" && name.as_str() != "title")
            .collect();
        extra_fields.sort();
        for (name, value) in extra_fields {
            let value = human::truncate(&single_line(value), DETAIL_WIDTH);
            out.push_str(&format!("{indent}{name}: {value}\n"));
        }
        if !hit.snippet.is_empty() {
            let snippet = render_snippet(&hit.snippet, highlight_with_ansi);
            out.push_str(&format!("{indent}{snippet}\n"));
        }
    }
    out.push_str(&render_footer(response));
    out
}

fn render_footer(response: &SearchResponse) -> String {
    let mut out = String::new();
    let coverage = response.coverage.clone().unwrap_or_default();
    let docs = if coverage.partial && coverage.docs_total > 0 {
        format!(
            "{} of {} docs",
            human::thousands(coverage.docs_covered),
            human::thousands(coverage.docs_total)
        )
    } else {
        format!("{} docs", human::thousands(coverage.docs_covered))
    };
    let mut answered = format!(
        "shards {}/{} answered",
        coverage.shards_answered, coverage.shards_total
    );
    if coverage.partial {
        answered = format!(
            "PARTIAL: {answered} ({} failed, {} timed out)",
            coverage.shards_failed, coverage.shards_timed_out
        );
    }
    out.push_str(&format!(
        "\n{} hits · {answered}, {docs} · took {}{}\n",
        human::thousands(response.total_hits),
        human::micros(response.took_micros),
        if response.cached {
            " (from the root's result cache)"
        } else {
            ""
        },
    ));
    for failure in &coverage.failures {
        out.push_str(&format!(
            "shard {} failed: {}: {}\n",
            failure.shard_id, failure.code, failure.message
        ));
    }
    let mut timings: Vec<&ShardTiming> = response.shards.iter().collect();
    timings.sort_by_key(|timing| timing.shard_id);
    for timing in timings {
        out.push_str(&render_shard_timing(timing));
        out.push('\n');
    }
    out
}

fn render_shard_timing(timing: &ShardTiming) -> String {
    if timing.replica.is_empty() {
        return format!(
            "shard {}: no answer (attempts {})",
            timing.shard_id, timing.attempts
        );
    }
    let mut details = vec![format!("attempts {}", timing.attempts)];
    if timing.winning_attempt > 0 {
        details.push(format!("won by attempt {}", timing.winning_attempt));
    }
    if timing.hedges > 0 {
        details.push(format!("hedges {}", timing.hedges));
    }
    if timing.retries > 0 {
        details.push(format!("retries {}", timing.retries));
    }
    if timing.fetch_attempts > 0 {
        details.push(render_fetch_counts(timing));
    }
    if timing.replicas_on_probation > 0 {
        details.push(format!("{} on probation", timing.replicas_on_probation));
    }
    if timing.leaf_service_micros > 0 {
        details.push(format!(
            "leaf {}",
            human::micros(timing.leaf_service_micros)
        ));
    }
    format!(
        "shard {}: {} via {} ({})",
        timing.shard_id,
        human::micros(timing.latency_micros),
        timing.replica,
        details.join(", ")
    )
}

/// The phase-two call's counts: `fetch attempts 2 (hedges 1, 1 won)`.
fn render_fetch_counts(timing: &ShardTiming) -> String {
    let mut extra = Vec::new();
    if timing.fetch_hedges > 0 {
        extra.push(format!(
            "hedges {}, {} won",
            timing.fetch_hedges, timing.fetch_hedges_won
        ));
    }
    if timing.fetch_retries > 0 {
        extra.push(format!("retries {}", timing.fetch_retries));
    }
    if timing.fetch_hedges_suppressed > 0 {
        extra.push(format!("suppressed {}", timing.fetch_hedges_suppressed));
    }
    if extra.is_empty() {
        format!("fetch attempts {}", timing.fetch_attempts)
    } else {
        format!(
            "fetch attempts {} ({})",
            timing.fetch_attempts,
            extra.join(", ")
        )
    }
}

/// Whitespace runs (newlines included) as one space.
fn single_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The leaf's HTML snippet for a terminal: `<b>` as bold (or dropped), the
/// common entities decoded, on one line.
fn render_snippet(html: &str, highlight_with_ansi: bool) -> String {
    let (bold_on, bold_off) = if highlight_with_ansi {
        ("\u{1b}[1m", "\u{1b}[0m")
    } else {
        ("", "")
    };
    let text = single_line(html)
        .replace("<b>", bold_on)
        .replace("</b>", bold_off)
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&amp;", "&");
    format!("… {text} …")
}

#[cfg(test)]
mod tests {
    use super::*;
    use fanout_proto::search::v1::Hit;
    use fanout_proto::v1::{Coverage, ShardFailure};
    use serde_json::Value;

    fn sample_response(partial: bool) -> SearchResponse {
        let mut hit = Hit {
            id: "kdenlive".into(),
            score: 12.345_678,
            shard_id: 2,
            snippet: "non-linear <b>video</b> <b>editor</b> &amp; more".into(),
            ..Hit::default()
        };
        hit.fields
            .insert("title".into(), "non-linear video editor".into());
        SearchResponse {
            hits: vec![hit],
            total_hits: 1_234,
            coverage: Some(Coverage {
                shards_total: 4,
                shards_answered: if partial { 3 } else { 4 },
                shards_failed: u32::from(partial),
                docs_covered: 63_956,
                docs_total: 80_000,
                partial,
                failures: if partial {
                    vec![ShardFailure {
                        shard_id: 1,
                        code: "UNAVAILABLE".into(),
                        message: "connection refused".into(),
                    }]
                } else {
                    vec![]
                },
                ..Coverage::default()
            }),
            shards: vec![ShardTiming {
                shard_id: 0,
                replica: "127.0.0.1:4100".into(),
                attempts: 1,
                latency_micros: 1_200,
                ..ShardTiming::default()
            }],
            took_micros: 3_100,
            cached: false,
        }
    }

    #[test]
    fn the_table_shows_rank_score_id_title_snippet_and_coverage() {
        let table = render_table(&sample_response(false), false);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "1  12.3457  kdenlive  non-linear video editor");
        // The snippet starts under the id column.
        assert_eq!(lines[1], "            … non-linear video editor & more …");
        assert!(table.contains("1,234 hits · shards 4/4 answered, 63,956 docs · took 3.1 ms"));
        assert!(table.contains("shard 0: 1.2 ms via 127.0.0.1:4100 (attempts 1)"));
    }

    #[test]
    fn shard_timings_show_the_fetch_phase_counts() {
        let hedged_fetch = ShardTiming {
            shard_id: 3,
            replica: "127.0.0.1:4100".into(),
            attempts: 1,
            latency_micros: 900,
            fetch_attempts: 2,
            fetch_hedges: 1,
            fetch_hedges_won: 1,
            ..ShardTiming::default()
        };
        assert_eq!(
            render_shard_timing(&hedged_fetch),
            "shard 3: 900 µs via 127.0.0.1:4100 (attempts 1, fetch attempts 2 (hedges 1, 1 won))"
        );
        let plain_fetch = ShardTiming {
            fetch_hedges: 0,
            fetch_hedges_won: 0,
            fetch_attempts: 1,
            ..hedged_fetch.clone()
        };
        assert!(render_shard_timing(&plain_fetch).ends_with("(attempts 1, fetch attempts 1)"));
        assert_eq!(
            serde_json::to_value(&hedged_fetch).unwrap()["fetch_hedges_won"],
            1
        );
    }

    #[test]
    fn a_partial_answer_says_so_and_names_the_failures() {
        let table = render_table(&sample_response(true), false);
        assert!(table.contains(
            "PARTIAL: shards 3/4 answered (1 failed, 0 timed out), 63,956 of 80,000 docs"
        ));
        assert!(table.contains("shard 1 failed: UNAVAILABLE: connection refused"));
    }

    #[test]
    fn json_keeps_every_field() {
        let text = response_to_json(&sample_response(true)).unwrap();
        assert!(text.contains("\"score\": 12.345678,"), "{text}");
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["hits"][0]["id"], "kdenlive");
        assert_eq!(
            value["hits"][0]["fields"]["title"],
            "non-linear video editor"
        );
        assert_eq!(value["hits"][0]["shard_id"], 2);
        assert_eq!(value["total_hits"], 1_234);
        assert_eq!(value["coverage"]["failures"][0]["code"], "UNAVAILABLE");
        assert_eq!(value["shards"][0]["latency_micros"], 1_200);
        assert_eq!(value["took_micros"], 3_100);
    }

    #[test]
    fn a_client_side_timeout_reads_as_deadline_exceeded() {
        let timed_out = tonic::Status::cancelled("Timeout expired");
        assert_eq!(
            describe_search_error(&timed_out, Some(5)),
            "DEADLINE_EXCEEDED: no answer within --timeout-ms 5"
        );
        assert_eq!(
            describe_search_error(&timed_out, None),
            "CANCELLED: Timeout expired"
        );
    }

    #[test]
    fn snippets_turn_bold_tags_into_ansi_on_a_terminal() {
        assert_eq!(
            render_snippet("a <b>video</b>", true),
            "… a \u{1b}[1mvideo\u{1b}[0m …"
        );
    }
}
