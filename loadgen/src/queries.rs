//! Query sources: what text each request carries.
//!
//! Three formats, one query a line:
//! - `text`: plain text; blank lines are skipped.
//! - `benchmark-game`: the search-benchmark-game's JSON lines `{"query": "...", "tags": [...]}`,
//!   optionally filtered by one tag (`--tag union`).
//! - `beir`: BEIR's `queries.jsonl`, `{"_id": "...", "text": "...", ...}`.
//!
//! `auto` picks the format from the first non-blank line. A line that does not
//! parse fails the load with its line number; blank lines are skipped in every
//! format. The runner cycles through the queries when a run needs more.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::LoadgenError;
use crate::seeded_random::SeededRandom;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QueryFormat {
    /// Decided by the first non-blank line: JSON with `_id` is BEIR, JSON with
    /// `query` is benchmark-game, anything else plain text.
    Auto,
    Text,
    BenchmarkGame,
    Beir,
}

impl QueryFormat {
    pub fn name(self) -> &'static str {
        match self {
            QueryFormat::Auto => "auto",
            QueryFormat::Text => "text",
            QueryFormat::BenchmarkGame => "benchmark-game",
            QueryFormat::Beir => "beir",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QueryOrder {
    /// As in the source.
    InOrder,
    /// Shuffled once by the run's seed, then cycled in that order.
    Shuffled,
}

impl QueryOrder {
    pub fn name(self) -> &'static str {
        match self {
            QueryOrder::InOrder => "in-order",
            QueryOrder::Shuffled => "shuffled",
        }
    }
}

/// The queries of a run, in the order they are sent; cheap to clone.
#[derive(Debug, Clone, PartialEq)]
pub struct QuerySet {
    source_name: String,
    format: QueryFormat,
    order: QueryOrder,
    queries: Arc<[Arc<str>]>,
}

#[derive(Deserialize)]
struct BenchmarkGameLine {
    query: String,
    #[serde(default)]
    tags: Vec<String>,
}

#[derive(Deserialize)]
struct BeirLine {
    #[serde(rename = "_id")]
    id: serde_json::Value,
    text: String,
}

impl QuerySet {
    /// Reads queries from `path` (see the module docs for the formats).
    pub fn from_file(
        path: &Path,
        format: QueryFormat,
        tag: Option<&str>,
    ) -> Result<QuerySet, LoadgenError> {
        let bytes = std::fs::read(path).map_err(|source| LoadgenError::ReadQueries {
            path: path.to_path_buf(),
            source,
        })?;
        QuerySet::parse(&path.display().to_string(), &bytes, format, tag)
    }

    /// Parses queries from `bytes`; `source_name` names the source in errors and reports.
    pub fn parse(
        source_name: &str,
        bytes: &[u8],
        format: QueryFormat,
        tag: Option<&str>,
    ) -> Result<QuerySet, LoadgenError> {
        let bad_line = |line: u64, reason: String| LoadgenError::BadQueryLine {
            source_name: source_name.to_string(),
            line,
            reason,
        };
        let mut lines = Vec::new();
        for (index, raw_line) in bytes.split(|byte| *byte == b'\n').enumerate() {
            let line_number = index as u64 + 1;
            let text = std::str::from_utf8(raw_line)
                .map_err(|error| bad_line(line_number, format!("not utf-8: {error}")))?;
            let text = text.trim();
            if !text.is_empty() {
                lines.push((line_number, text));
            }
        }
        let format = match format {
            QueryFormat::Auto => match lines.first() {
                Some((line_number, first)) => {
                    detect_format(first).map_err(|reason| bad_line(*line_number, reason))?
                }
                None => QueryFormat::Text,
            },
            explicit => explicit,
        };
        if tag.is_some() && format != QueryFormat::BenchmarkGame {
            return Err(LoadgenError::InvalidOption(format!(
                "a tag filter needs the benchmark-game format, {source_name} is {}",
                format.name()
            )));
        }

        let mut queries: Vec<Arc<str>> = Vec::with_capacity(lines.len());
        for (line_number, text) in lines {
            let query = match format {
                QueryFormat::Auto | QueryFormat::Text => Some(text.to_string()),
                QueryFormat::BenchmarkGame => {
                    let parsed: BenchmarkGameLine = serde_json::from_str(text)
                        .map_err(|error| bad_line(line_number, error.to_string()))?;
                    match tag {
                        Some(tag) if !parsed.tags.iter().any(|candidate| candidate == tag) => None,
                        _ => Some(parsed.query),
                    }
                }
                QueryFormat::Beir => {
                    let parsed: BeirLine = serde_json::from_str(text)
                        .map_err(|error| bad_line(line_number, error.to_string()))?;
                    if !(parsed.id.is_string() || parsed.id.is_number()) {
                        return Err(bad_line(
                            line_number,
                            "\"_id\" must be a string or a number".to_string(),
                        ));
                    }
                    Some(parsed.text)
                }
            };
            let Some(query) = query else { continue };
            if query.trim().is_empty() {
                return Err(bad_line(line_number, "the query is empty".to_string()));
            }
            queries.push(Arc::from(query));
        }
        let source_name = match tag {
            Some(tag) => format!("{source_name} (tag {tag})"),
            None => source_name.to_string(),
        };
        QuerySet::from_parts(source_name, format, queries)
    }

    /// Queries given directly (e.g. `--query` flags).
    pub fn from_queries(source_name: &str, queries: Vec<String>) -> Result<QuerySet, LoadgenError> {
        let queries = queries.into_iter().map(Arc::from).collect();
        QuerySet::from_parts(source_name.to_string(), QueryFormat::Text, queries)
    }

    fn from_parts(
        source_name: String,
        format: QueryFormat,
        queries: Vec<Arc<str>>,
    ) -> Result<QuerySet, LoadgenError> {
        if queries.is_empty() {
            return Err(LoadgenError::NoQueries { source_name });
        }
        Ok(QuerySet {
            source_name,
            format,
            order: QueryOrder::InOrder,
            queries: queries.into(),
        })
    }

    /// The same queries in `order` (`Shuffled` shuffles once with `seed`).
    pub fn ordered(self, order: QueryOrder, seed: u64) -> QuerySet {
        let queries = match order {
            QueryOrder::InOrder => self.queries,
            QueryOrder::Shuffled => {
                let mut shuffled = self.queries.to_vec();
                // Another stream than the schedule's, which uses `seed` itself.
                SeededRandom::new(seed ^ 0x5155_4552_5953_4554).shuffle(&mut shuffled);
                shuffled.into()
            }
        };
        QuerySet {
            order,
            queries,
            ..self
        }
    }

    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// The format the source was read as (never `Auto`).
    pub fn format(&self) -> QueryFormat {
        self.format
    }

    pub fn order(&self) -> QueryOrder {
        self.order
    }

    pub fn len(&self) -> usize {
        self.queries.len()
    }

    /// Always false: a query set holds at least one query.
    pub fn is_empty(&self) -> bool {
        self.queries.is_empty()
    }

    /// The query of the `request_index`-th request, cycling when the queries run out.
    pub fn query_for(&self, request_index: u64) -> &Arc<str> {
        &self.queries[(request_index % self.queries.len() as u64) as usize]
    }
}

fn detect_format(first_line: &str) -> Result<QueryFormat, String> {
    if !first_line.starts_with('{') {
        return Ok(QueryFormat::Text);
    }
    let value: serde_json::Value = serde_json::from_str(first_line)
        .map_err(|error| format!("looks like JSON but does not parse: {error}"))?;
    if value.get("_id").is_some() {
        return Ok(QueryFormat::Beir);
    }
    if value.get("query").is_some() {
        return Ok(QueryFormat::BenchmarkGame);
    }
    Err("a JSON line with neither \"query\" (benchmark-game) nor \"_id\" (beir)".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_queries(set: &QuerySet) -> Vec<String> {
        (0..set.len() as u64)
            .map(|index| set.query_for(index).to_string())
            .collect()
    }

    #[test]
    fn plain_text_skips_blank_lines_and_trims() {
        let set = QuerySet::parse(
            "q.txt",
            b"rust search\n\n  tail latency \r\nhedged requests",
            QueryFormat::Auto,
            None,
        )
        .unwrap();
        assert_eq!(set.format(), QueryFormat::Text);
        assert_eq!(
            all_queries(&set),
            ["rust search", "tail latency", "hedged requests"]
        );
    }

    #[test]
    fn benchmark_game_lines_filtered_by_tag() {
        let source = br#"{"query": "the", "tags": ["term"]}
{"query": "+griffith +observatory", "tags": ["intersection", "global"]}
{"query": "griffith observatory", "tags": ["union", "global"]}
{"query": "bowel obstruction", "tags": ["union"]}
"#;
        let all = QuerySet::parse("game.jsonl", source, QueryFormat::Auto, None).unwrap();
        assert_eq!(all.format(), QueryFormat::BenchmarkGame);
        assert_eq!(all.len(), 4);
        let union = QuerySet::parse(
            "game.jsonl",
            source,
            QueryFormat::BenchmarkGame,
            Some("union"),
        )
        .unwrap();
        assert_eq!(
            all_queries(&union),
            ["griffith observatory", "bowel obstruction"]
        );
        assert_eq!(union.source_name(), "game.jsonl (tag union)");
    }

    #[test]
    fn beir_queries_read_the_text() {
        let source = br#"{"_id": "0", "text": "0-dimensional biomaterials lack inductive properties.", "metadata": {}}
{"_id": 2, "text": "1 in 5 million in UK have abnormal PrP positivity."}
"#;
        let set = QuerySet::parse("queries.jsonl", source, QueryFormat::Auto, None).unwrap();
        assert_eq!(set.format(), QueryFormat::Beir);
        assert_eq!(
            all_queries(&set),
            [
                "0-dimensional biomaterials lack inductive properties.",
                "1 in 5 million in UK have abnormal PrP positivity."
            ]
        );
    }

    #[test]
    fn a_bad_line_is_reported_with_its_line_number() {
        let game = b"{\"query\": \"a\", \"tags\": []}\n\n{\"query\": \"b\", \"tags\": [}\n";
        let error = QuerySet::parse("game.jsonl", game, QueryFormat::Auto, None).unwrap_err();
        assert!(
            matches!(&error, LoadgenError::BadQueryLine { line: 3, .. }),
            "{error}"
        );
        assert!(error.to_string().starts_with("game.jsonl:3: "), "{error}");

        let beir = b"{\"_id\": \"1\", \"text\": \"ok\"}\n{\"_id\": \"2\"}\n";
        let error = QuerySet::parse("queries.jsonl", beir, QueryFormat::Beir, None).unwrap_err();
        assert!(
            matches!(&error, LoadgenError::BadQueryLine { line: 2, reason, .. } if reason.contains("text")),
            "{error}"
        );

        let text = b"fine\n\xff\xfe broken\n";
        let error = QuerySet::parse("q.txt", text, QueryFormat::Text, None).unwrap_err();
        assert!(
            matches!(&error, LoadgenError::BadQueryLine { line: 2, .. }),
            "{error}"
        );

        let empty_query = b"{\"query\": \"\", \"tags\": []}\n";
        let error =
            QuerySet::parse("game.jsonl", empty_query, QueryFormat::Auto, None).unwrap_err();
        assert!(
            matches!(&error, LoadgenError::BadQueryLine { line: 1, .. }),
            "{error}"
        );
    }

    #[test]
    fn no_queries_and_misplaced_tags_are_errors() {
        let error = QuerySet::parse("empty.txt", b"\n\n", QueryFormat::Auto, None).unwrap_err();
        assert!(matches!(error, LoadgenError::NoQueries { .. }), "{error}");
        let error =
            QuerySet::parse("q.txt", b"a\nb\n", QueryFormat::Auto, Some("union")).unwrap_err();
        assert!(matches!(error, LoadgenError::InvalidOption(_)), "{error}");
        let error = QuerySet::parse(
            "game.jsonl",
            b"{\"query\": \"a\", \"tags\": [\"term\"]}\n",
            QueryFormat::Auto,
            Some("union"),
        )
        .unwrap_err();
        assert!(matches!(error, LoadgenError::NoQueries { .. }), "{error}");
    }

    #[test]
    fn queries_cycle_and_shuffle_reproducibly() {
        let queries: Vec<String> = (0..50).map(|index| format!("q{index}")).collect();
        let set = QuerySet::from_queries("flags", queries.clone()).unwrap();
        assert_eq!(set.query_for(0).as_ref(), "q0");
        assert_eq!(set.query_for(51).as_ref(), "q1");

        let shuffled = set.clone().ordered(QueryOrder::Shuffled, 5);
        let again = set.clone().ordered(QueryOrder::Shuffled, 5);
        let other = set.clone().ordered(QueryOrder::Shuffled, 6);
        assert_eq!(all_queries(&shuffled), all_queries(&again));
        assert_ne!(all_queries(&shuffled), all_queries(&other));
        assert_ne!(all_queries(&shuffled), queries);
        let mut sorted = all_queries(&shuffled);
        sorted.sort();
        let mut expected = queries;
        expected.sort();
        assert_eq!(sorted, expected);
        assert_eq!(shuffled.order(), QueryOrder::Shuffled);
    }

    #[test]
    fn the_shared_query_sets_parse() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
        let game = data.join("queries/search-benchmark-game.jsonl");
        if !game.exists() {
            return; // the shared data is not beside this checkout
        }
        let union = QuerySet::from_file(&game, QueryFormat::Auto, Some("union")).unwrap();
        assert_eq!(union.len(), 301);
        let beir = QuerySet::from_file(
            &data.join("beir-scifact/queries.jsonl"),
            QueryFormat::Auto,
            None,
        )
        .unwrap();
        assert_eq!(beir.format(), QueryFormat::Beir);
        assert_eq!(beir.len(), 1_109);
    }
}
