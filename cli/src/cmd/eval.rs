//! `fanout eval`: relevance of a running cluster on a BEIR test set.
//!
//! Queries are JSON Lines (`{"_id", "text"}`), judgments a TSV file with a
//! header then `query-id corpus-id score`. Only judged queries are sent, each
//! through `Search` (natural mode, `k` hits) with a bounded number in flight;
//! [`metrics`] scores each ranking and the means are printed.

pub mod metrics;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use fanout_proto::search::v1::{QueryMode, SearchRequest};
use futures::StreamExt;
use serde_json::json;

use crate::cmd::{grpc_status, grpc_url, search};
use metrics::Judgments;

/// Failed queries listed one by one on stderr; the rest are counted.
const ERRORS_LISTED: usize = 5;

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// BEIR queries, JSON Lines `{"_id", "text"}` (`.gz` read as gzip).
    #[arg(long, env = "FANOUT_QUERIES")]
    pub queries: PathBuf,
    /// BEIR judgments: a header line, then `query-id corpus-id score` per line.
    #[arg(long, env = "FANOUT_QRELS")]
    pub qrels: PathBuf,
    /// Root to ask.
    #[arg(long, default_value = "http://127.0.0.1:50051", env = "FANOUT_ADDR")]
    pub addr: String,
    /// Hits asked per query (Recall and MAP are cut at 100, nDCG at 10).
    #[arg(short, long, default_value_t = 100, env = "FANOUT_K",
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub k: u32,
    /// Time limit of each Search call in milliseconds.
    #[arg(long, env = "FANOUT_TIMEOUT_MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: Option<u64>,
    /// Searches in flight at once.
    #[arg(long, default_value_t = 8, env = "FANOUT_CONCURRENCY",
          value_parser = clap::value_parser!(u64).range(1..=256))]
    pub concurrency: u64,
    /// Exit with 1 when nDCG@10 is below this.
    #[arg(long, env = "FANOUT_MIN_NDCG")]
    pub min_ndcg: Option<f64>,
    /// Print the metrics as JSON.
    #[arg(long, env = "FANOUT_JSON")]
    pub json: bool,
}

/// Validated `fanout eval`: the judged queries, read and paired with their judgments.
pub struct EvalPlan {
    queries: Vec<JudgedQuery>,
    missing_queries: usize,
    addr: String,
    k: u32,
    timeout: Option<Duration>,
    concurrency: usize,
    min_ndcg: Option<f64>,
    json: bool,
}

struct JudgedQuery {
    id: String,
    text: String,
    judgments: Judgments,
}

impl EvalArgs {
    pub fn validate(self) -> anyhow::Result<EvalPlan> {
        let addr = grpc_url("--addr", &self.addr)?;
        if let Some(min_ndcg) = self.min_ndcg.filter(|value| !(0.0..=1.0).contains(value)) {
            bail!("--min-ndcg {min_ndcg} must lie between 0 and 1");
        }
        let mut judgments = read_qrels(&self.qrels)
            .with_context(|| format!("cannot read --qrels {}", self.qrels.display()))?;
        let texts = read_queries(&self.queries)
            .with_context(|| format!("cannot read --queries {}", self.queries.display()))?;
        let judged_count = judgments.len();
        let mut queries: Vec<JudgedQuery> = texts
            .into_iter()
            .filter_map(|(id, text)| {
                let judgments = judgments.remove(&id)?;
                Some(JudgedQuery {
                    id,
                    text,
                    judgments,
                })
            })
            .collect();
        if queries.is_empty() {
            bail!("no query in --queries has a judgment in --qrels");
        }
        queries.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(EvalPlan {
            missing_queries: judged_count - queries.len(),
            queries,
            addr,
            k: self.k,
            timeout: self.timeout_ms.map(Duration::from_millis),
            concurrency: self.concurrency as usize,
            min_ndcg: self.min_ndcg,
            json: self.json,
        })
    }
}

/// Judgments by query id, from a BEIR qrels TSV (a header, then
/// `query-id corpus-id score`); TREC's four columns (`qid 0 docid rel`) work too.
fn read_qrels(path: &Path) -> anyhow::Result<HashMap<String, Judgments>> {
    let mut judgments: HashMap<String, Judgments> = HashMap::new();
    for (index, line) in open_text(path)?.lines().enumerate() {
        let line_number = index + 1;
        let line = line.with_context(|| format!("line {line_number}"))?;
        let columns: Vec<&str> = line.split_whitespace().collect();
        let (query_id, doc_id, grade) = match columns.as_slice() {
            [] => continue,
            [query_id, doc_id, grade] | [query_id, _, doc_id, grade] => (query_id, doc_id, grade),
            _ => bail!("line {line_number}: expected `query-id corpus-id score`, found {line:?}"),
        };
        let Ok(grade) = grade.parse::<i32>() else {
            if line_number == 1 {
                continue; // the header
            }
            bail!("line {line_number}: the score {grade:?} is not an integer");
        };
        judgments
            .entry((*query_id).to_owned())
            .or_default()
            .insert((*doc_id).to_owned(), grade);
    }
    Ok(judgments)
}

/// `(id, text)` of each query in a BEIR queries file.
fn read_queries(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let mut queries = Vec::new();
    for (index, line) in open_text(path)?.lines().enumerate() {
        let line_number = index + 1;
        let line = line.with_context(|| format!("line {line_number}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("line {line_number} is not JSON"))?;
        let id = match &value["_id"] {
            serde_json::Value::String(id) => id.clone(),
            serde_json::Value::Number(id) => id.to_string(),
            _ => bail!("line {line_number} has no string \"_id\""),
        };
        let Some(text) = value["text"].as_str() else {
            bail!("line {line_number} has no string \"text\"");
        };
        queries.push((id, text.to_owned()));
    }
    Ok(queries)
}

/// A buffered reader over a file, gunzipped when its name ends in `.gz`.
fn open_text(path: &Path) -> anyhow::Result<Box<dyn BufRead>> {
    let file = std::fs::File::open(path)?;
    let reader: Box<dyn Read> = if path.extension().is_some_and(|ext| ext == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    Ok(Box::new(BufReader::new(reader)))
}

/// Mean metrics over the queries that got an answer.
#[derive(Debug, Default, PartialEq)]
struct Summary {
    queries: usize,
    errors: usize,
    ndcg_at_10: f64,
    recall_at_100: f64,
    map_at_100: f64,
}

pub async fn run(plan: EvalPlan) -> anyhow::Result<ExitCode> {
    let client = match search::connect_search_client(&plan.addr).await {
        Ok(client) => client,
        Err(error) => {
            eprintln!("error: UNAVAILABLE: {error:#}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if plan.missing_queries > 0 {
        eprintln!(
            "warning: {} judged queries are not in the queries file",
            plan.missing_queries
        );
    }
    let started = Instant::now();
    let k = plan.k;
    let timeout = plan.timeout;
    let outcomes: Vec<(&JudgedQuery, Result<Vec<String>, tonic::Status>)> =
        futures::stream::iter(&plan.queries)
            .map(|query| {
                let mut client = client.clone();
                async move {
                    let mut request = tonic::Request::new(SearchRequest {
                        query: query.text.clone(),
                        k,
                        mode: QueryMode::Natural as i32,
                        fields: vec!["id".to_owned()],
                        ..SearchRequest::default()
                    });
                    if let Some(timeout) = timeout {
                        request.set_timeout(timeout);
                    }
                    let ranked = client.search(request).await.map(|response| {
                        let hits = response.into_inner().hits;
                        hits.into_iter().map(|hit| hit.id).collect()
                    });
                    (query, ranked)
                }
            })
            .buffer_unordered(plan.concurrency)
            .collect()
            .await;

    let mut rankings = BTreeMap::new();
    let mut errors = Vec::new();
    for (query, outcome) in outcomes {
        match outcome {
            Ok(ranked) => {
                rankings.insert(query.id.as_str(), (ranked, &query.judgments));
            }
            Err(status) => errors.push((query.id.as_str(), status)),
        }
    }
    errors.sort_by(|a, b| a.0.cmp(b.0));
    for (query_id, status) in errors.iter().take(ERRORS_LISTED) {
        eprintln!("query {query_id} failed: {}", grpc_status::describe(status));
    }
    if errors.len() > ERRORS_LISTED {
        eprintln!(
            "... and {} more failed queries",
            errors.len() - ERRORS_LISTED
        );
    }
    let summary = summarize(
        rankings
            .values()
            .map(|(ranked, judged)| (ranked.as_slice(), *judged)),
        errors.len(),
    );
    print_summary(&summary, plan.json, k, started.elapsed());

    if summary.queries == 0 {
        eprintln!("error: every query failed");
        return Ok(ExitCode::FAILURE);
    }
    if let Some(min_ndcg) = plan
        .min_ndcg
        .filter(|min_ndcg| summary.ndcg_at_10 < *min_ndcg)
    {
        eprintln!(
            "error: nDCG@10 {:.4} is below --min-ndcg {min_ndcg}",
            summary.ndcg_at_10
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The means of the three metrics over answered queries.
fn summarize<'a>(
    rankings: impl Iterator<Item = (&'a [String], &'a Judgments)>,
    errors: usize,
) -> Summary {
    let mut summary = Summary {
        errors,
        ..Summary::default()
    };
    for (ranked, judged) in rankings {
        summary.queries += 1;
        summary.ndcg_at_10 += metrics::ndcg_at(ranked, judged, 10);
        summary.recall_at_100 += metrics::recall_at(ranked, judged, 100);
        summary.map_at_100 += metrics::average_precision_at(ranked, judged, 100);
    }
    if summary.queries > 0 {
        let count = summary.queries as f64;
        summary.ndcg_at_10 /= count;
        summary.recall_at_100 /= count;
        summary.map_at_100 /= count;
    }
    summary
}

fn print_summary(summary: &Summary, as_json: bool, k: u32, elapsed: Duration) {
    if as_json {
        let value = json!({
            "queries": summary.queries,
            "errors": summary.errors,
            "k": k,
            "ndcg_at_10": summary.ndcg_at_10,
            "recall_at_100": summary.recall_at_100,
            "map_at_100": summary.map_at_100,
            "elapsed_seconds": elapsed.as_secs_f64(),
        });
        println!("{value}");
        return;
    }
    println!(
        "queries     {} ({} errors, k {k}, {:.1} s)",
        summary.queries,
        summary.errors,
        elapsed.as_secs_f64()
    );
    println!("nDCG@10     {:.4}", summary.ndcg_at_10);
    println!("Recall@100  {:.4}", summary.recall_at_100);
    println!("MAP@100     {:.4}", summary.map_at_100);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file in a folder of its own, removed when dropped.
    struct TempFile {
        dir: PathBuf,
        path: PathBuf,
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn write_temp(name: &str, contents: &str) -> TempFile {
        let dir =
            std::env::temp_dir().join(format!("fanout-eval-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        TempFile { dir, path }
    }

    #[test]
    fn reads_beir_qrels_skipping_the_header() {
        let file = write_temp(
            "qrels.tsv",
            "query-id\tcorpus-id\tscore\n1\t31715818\t1\n1\t14717500\t2\n3\t23389795\t0\n",
        );
        let qrels = read_qrels(&file.path).unwrap();
        assert_eq!(qrels.len(), 2);
        assert_eq!(qrels["1"]["14717500"], 2);
        assert_eq!(qrels["3"]["23389795"], 0);
    }

    #[test]
    fn rejects_a_bad_score_after_the_header() {
        let file = write_temp("bad-qrels.tsv", "query-id\tcorpus-id\tscore\n1\t2\tyes\n");
        let error = read_qrels(&file.path).unwrap_err().to_string();
        assert!(error.contains("line 2"), "{error}");
    }

    #[test]
    fn reads_beir_queries_with_string_or_number_ids() {
        let file = write_temp(
            "queries.jsonl",
            "{\"_id\": \"1\", \"text\": \"0-dimensional biomaterials\"}\n{\"_id\": 7, \"text\": \"x\"}\n",
        );
        let queries = read_queries(&file.path).unwrap();
        assert_eq!(
            queries,
            [
                ("1".to_owned(), "0-dimensional biomaterials".to_owned()),
                ("7".to_owned(), "x".to_owned())
            ]
        );
    }

    #[test]
    fn summarize_averages_over_answered_queries() {
        let judged: Judgments = [("a".to_owned(), 1)].into_iter().collect();
        let hit = vec!["a".to_owned()];
        let miss = vec!["b".to_owned()];
        let summary = summarize(
            [(hit.as_slice(), &judged), (miss.as_slice(), &judged)].into_iter(),
            1,
        );
        assert_eq!(summary.queries, 2);
        assert_eq!(summary.errors, 1);
        assert!((summary.ndcg_at_10 - 0.5).abs() < 1e-12);
        assert!((summary.recall_at_100 - 0.5).abs() < 1e-12);
        assert!((summary.map_at_100 - 0.5).abs() < 1e-12);
    }
}
