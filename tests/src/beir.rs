//! BEIR relevance collections: `queries.jsonl` (`{"_id", "text"}`) and
//! `qrels/test.tsv` (a header, then `query-id  corpus-id  score` per line).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};

use crate::workspace_root;

/// A judged query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeirQuery {
    pub id: String,
    pub text: String,
}

/// Relevance judgments: query id -> document id -> graded gain (> 0 only).
#[derive(Debug, Clone, Default)]
pub struct Qrels {
    judgments: HashMap<String, HashMap<String, u32>>,
    /// Query ids in the order they first appear in the file.
    query_order: Vec<String>,
}

impl Qrels {
    /// Parses a BEIR qrels TSV.
    pub fn parse(text: &str) -> anyhow::Result<Qrels> {
        let mut qrels = Qrels::default();
        for (index, line) in text.lines().enumerate() {
            let line_number = index + 1;
            let fields: Vec<&str> = line.split('\t').map(str::trim).collect();
            if line.trim().is_empty() || (line_number == 1 && fields[0] == "query-id") {
                continue;
            }
            let [query_id, doc_id, score] = fields[..] else {
                bail!("qrels line {line_number}: expected 3 tab-separated fields, got {line:?}");
            };
            let score: i64 = score.parse().map_err(|_| {
                anyhow!("qrels line {line_number}: score {score:?} is not an integer")
            })?;
            if !qrels.judgments.contains_key(query_id) {
                qrels.query_order.push(query_id.to_owned());
            }
            let judged = qrels.judgments.entry(query_id.to_owned()).or_default();
            if let Ok(gain @ 1..) = u32::try_from(score) {
                judged.insert(doc_id.to_owned(), gain);
            }
        }
        Ok(qrels)
    }

    pub fn load(path: &Path) -> anyhow::Result<Qrels> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Qrels::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// The judged documents of `query_id` (empty if it has none).
    pub fn judged(&self, query_id: &str) -> &HashMap<String, u32> {
        static NONE: std::sync::OnceLock<HashMap<String, u32>> = std::sync::OnceLock::new();
        self.judgments
            .get(query_id)
            .unwrap_or_else(|| NONE.get_or_init(HashMap::new))
    }

    /// Judged query ids, in file order.
    pub fn query_ids(&self) -> &[String] {
        &self.query_order
    }
}

/// The queries of `queries.jsonl` that `qrels` judges, in qrels order.
/// Fails if a judged query has no text.
pub fn load_judged_queries(queries_path: &Path, qrels: &Qrels) -> anyhow::Result<Vec<BeirQuery>> {
    let text = std::fs::read_to_string(queries_path)
        .with_context(|| format!("cannot read {}", queries_path.display()))?;
    let mut texts: HashMap<String, String> = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{} line {}", queries_path.display(), index + 1))?;
        let id = match &value["_id"] {
            serde_json::Value::String(id) => id.clone(),
            serde_json::Value::Number(id) => id.to_string(),
            other => bail!(
                "{} line {}: bad _id {other}",
                queries_path.display(),
                index + 1
            ),
        };
        let query_text = value["text"].as_str().unwrap_or_default().to_owned();
        texts.insert(id, query_text);
    }
    qrels
        .query_ids()
        .iter()
        .map(|id| {
            let text = texts
                .get(id)
                .ok_or_else(|| anyhow!("judged query {id} is not in {}", queries_path.display()))?;
            Ok(BeirQuery {
                id: id.clone(),
                text: text.clone(),
            })
        })
        .collect()
}

/// `data/beir-scifact` in the workspace.
pub fn scifact_dir() -> PathBuf {
    workspace_root().join("data/beir-scifact")
}

/// SciFact's test split: the 300 judged queries and their qrels.
pub fn scifact_test() -> anyhow::Result<(Vec<BeirQuery>, Qrels)> {
    let dir = scifact_dir();
    let qrels = Qrels::load(&dir.join("qrels/test.tsv"))?;
    let queries = load_judged_queries(&dir.join("queries.jsonl"), &qrels)?;
    Ok((queries, qrels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qrels_with_header_and_grades() {
        let qrels =
            Qrels::parse("query-id\tcorpus-id\tscore\n7\td1\t1\n7\td2\t2\n3\td9\t0\n").unwrap();
        assert_eq!(qrels.query_ids(), ["7", "3"]);
        assert_eq!(qrels.judged("7").get("d2"), Some(&2));
        assert!(qrels.judged("3").is_empty(), "a zero score is not relevant");
        assert!(qrels.judged("missing").is_empty());
        assert!(Qrels::parse("1\td1\n").is_err());
    }

    #[test]
    fn scifact_test_split_has_300_judged_queries() {
        let (queries, qrels) = scifact_test().unwrap();
        assert_eq!(queries.len(), 300);
        assert!(queries.iter().all(|query| !query.text.is_empty()));
        assert_eq!(queries[0].id, "1");
        assert_eq!(qrels.judged("1").get("31715818"), Some(&1));
    }
}
