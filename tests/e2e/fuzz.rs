//! A grammar fuzz of the syntax mode and a string fuzz of the natural mode,
//! through a real cluster (4 shards x 2 replicas, a merger process):
//! 2,000 queries each, seeded so that a failure can be replayed. Each is
//! sent with a 1 s deadline; afterwards no process has died, no answer was
//! INTERNAL or UNKNOWN, and every answer (an error included) came back
//! within the deadline plus a small slack.

use std::time::{Duration, Instant};

use fanout_proto::search::v1::search_client::SearchClient;
use fanout_proto::search::v1::{QueryMode, SearchRequest};
use fanout_runtime::hashing::SplitMix64;
use fanout_tests::{ClusterOptions, MergerPlacement, fanout_binary, search, start_cluster, within};
use futures::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

const QUERIES_PER_MODE: usize = 2_000;
const DEADLINE: Duration = Duration::from_secs(1);
/// The time a reply may take beyond the deadline to come back (a loaded
/// 2-core machine, a debug build).
const SLACK: Duration = Duration::from_millis(500);
const CONCURRENCY: usize = 4;

/// SplitMix64 (`fanout_runtime::hashing`): small, seeded, enough for picking words.
struct Random(SplitMix64);

impl Random {
    fn below(&mut self, bound: usize) -> usize {
        (self.0.next_u64() % bound as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const WORDS: &[&str] = &[
    "cell", "protein", "vitamin", "cancer", "gene", "dna", "the", "of", "a", "risk", "café",
    "東京", "naïve", "x", "", "AND", "OR", "NOT", "IN", "TO",
];
const FIELDS: &[&str] = &["title", "text", "id", "nosuch", "TITLE", "_id"];
const NOISE: &[&str] = &[
    "(", ")", "\"", ":", "*", "~", "^", "[", "]", "{", "}", "+", "-", "\\", "/", "!", "?", "'",
    "&&", "||", "\u{0}", "\u{feff}", "\n", "\t", "%", "$", "@",
];

/// A query of tantivy's grammar, nested up to `depth`.
fn syntax_query(random: &mut Random, depth: usize) -> String {
    let word = |random: &mut Random| {
        let word = random.pick(WORDS);
        match random.below(6) {
            0 => format!("{word}*"),
            1 => format!("{word}^{}", random.below(5)),
            _ => word.to_owned(),
        }
    };
    if depth == 0 || random.below(3) == 0 {
        return match random.below(10) {
            0 => format!("{}:{}", random.pick(FIELDS), word(random)),
            1 => format!("\"{} {}\"~{}", word(random), word(random), random.below(4)),
            2 => format!("[{} TO {}]", word(random), word(random)),
            3 => format!(
                "{}: IN [{} {}]",
                random.pick(FIELDS),
                word(random),
                word(random)
            ),
            4 => format!("{}:*", random.pick(FIELDS)),
            5 => random.pick(NOISE).to_owned(),
            _ => word(random),
        };
    }
    let inner = |random: &mut Random| syntax_query(random, depth - 1);
    match random.below(8) {
        0 => format!("({})", inner(random)),
        1 => format!("NOT {}", inner(random)),
        2 => format!("-{}", inner(random)),
        3 => format!("+{}", inner(random)),
        4 => format!("{}:({})", random.pick(FIELDS), inner(random)),
        5 => format!("{} AND {}", inner(random), inner(random)),
        6 => format!("{} OR {}", inner(random), inner(random)),
        _ => format!("{} {}", inner(random), inner(random)),
    }
}

/// A string as people (and scripts) type them: words, noise, repeats.
fn natural_query(random: &mut Random) -> String {
    let most = if random.below(20) == 0 { 3000 } else { 12 };
    let parts = 1 + random.below(most);
    let mut query = String::new();
    for _ in 0..parts {
        let part = match random.below(5) {
            0 => random.pick(NOISE).to_owned(),
            1 => format!("w{}", random.below(100_000)),
            _ => random.pick(WORDS).to_owned(),
        };
        query.push_str(&part);
        if random.below(4) != 0 {
            query.push(' ');
        }
    }
    query
}

async fn send(
    client: SearchClient<Channel>,
    query: String,
    mode: QueryMode,
) -> (String, Result<(), tonic::Status>, Duration) {
    let request = SearchRequest {
        query: query.clone(),
        mode: mode as i32,
        k: 10,
        ..Default::default()
    };
    let started = Instant::now();
    let result = search(&client, request, DEADLINE).await.map(|_| ());
    (query, result, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_fuzzed_queries_of_each_mode_kill_nothing_and_answer_in_time() {
    let options = ClusterOptions::scifact(4)
        .replicas(2)
        .merger(MergerPlacement::Separate);
    let cluster = start_cluster(&fanout_binary!(), options).await;
    let client = cluster.search_client().await.expect("client connects");

    let mut random = Random(SplitMix64::new(0x5eed_f022));
    let mut queries = Vec::with_capacity(2 * QUERIES_PER_MODE);
    for _ in 0..QUERIES_PER_MODE {
        let depth = 1 + random.below(40);
        queries.push((syntax_query(&mut random, depth), QueryMode::Syntax));
    }
    for _ in 0..QUERIES_PER_MODE {
        queries.push((natural_query(&mut random), QueryMode::Natural));
    }
    let results: Vec<_> = within(Duration::from_secs(600), "the fuzzed queries", async {
        futures::stream::iter(queries)
            .map(|(query, mode)| send(client.clone(), query, mode))
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await
    })
    .await
    .expect("every fuzzed query is answered");

    let mut by_code: std::collections::BTreeMap<String, usize> = Default::default();
    let mut problems = Vec::new();
    for (query, result, took) in &results {
        let code = match result {
            Ok(()) => Code::Ok,
            Err(status) => status.code(),
        };
        *by_code
            .entry(fanout_proto::status::code_name(code).to_owned())
            .or_default() += 1;
        if matches!(code, Code::Internal | Code::Unknown) {
            problems.push(format!(
                "{code:?} for {}: {:?}",
                fanout_proto::status::quote(query),
                result.as_ref().err().map(|status| status.message())
            ));
        }
        if *took > DEADLINE + SLACK {
            problems.push(format!(
                "{took:?} for {}",
                fanout_proto::status::quote(query)
            ));
        }
    }
    let slowest = results
        .iter()
        .map(|(_, _, took)| *took)
        .max()
        .unwrap_or_default();
    println!(
        "{} fuzzed queries: {by_code:?}; slowest answer {slowest:?}",
        results.len()
    );
    for process in cluster.processes() {
        if let Some(status) = process.try_wait().expect("a readable status") {
            problems.push(format!(
                "{} died ({status}):\n{}",
                process.role.label(),
                process.log_tail(20)
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems, the first ones:\n{}",
        problems.len(),
        problems[..problems.len().min(15)].join("\n")
    );
}
