//! What the benchmarks (`cli/benches/`) share: the query log they replay,
//! [`bench_queries`]: `FANOUT_BENCH_QUERIES` (a file, one query per line,
//! plain text or JSON objects with `text` or `query`), else the TREC Million
//! Query log beside the repository
//! (`../shared/data/queries/million-query-2007-09.txt`), else SciFact's
//! queries (bundled); and their counts set by environment, [`env_count`].

use std::path::PathBuf;

use anyhow::{Context, bail};

use crate::workspace_root;

/// The first `count` non-empty queries of the benchmark query log, in its
/// order; an error when it holds fewer than `minimum`.
pub fn bench_queries(count: usize, minimum: usize) -> anyhow::Result<Vec<String>> {
    let million_query = workspace_root().join("../shared/data/queries/million-query-2007-09.txt");
    let path = match std::env::var_os("FANOUT_BENCH_QUERIES") {
        Some(path) => PathBuf::from(path),
        None if million_query.is_file() => million_query,
        None => workspace_root().join("data/beir-scifact/queries.jsonl"),
    };
    println!("query log: {}", path.display());
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let queries: Vec<String> = text
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.starts_with('{') {
                let value: serde_json::Value = serde_json::from_str(line).ok()?;
                Some(
                    value["text"]
                        .as_str()
                        .or(value["query"].as_str())?
                        .to_owned(),
                )
            } else {
                Some(line.to_owned())
            }
        })
        .filter(|query| !query.is_empty())
        .take(count)
        .collect();
    if queries.len() < minimum {
        bail!(
            "{} holds {} queries, fewer than {minimum}",
            path.display(),
            queries.len()
        );
    }
    Ok(queries)
}

/// The number in environment variable `name`, else `default`; an error names
/// the variable when it is not a number.
pub fn env_count(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(value) => value.parse().with_context(|| format!("{name}={value:?}")),
        Err(_) => Ok(default),
    }
}
