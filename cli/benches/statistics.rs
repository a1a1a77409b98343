//! What exact global BM25 costs each shard, measured in one run:
//!
//! 1. **On disk.** The bundled corpus and every corpus in
//!    `../shared/data/corpora` (one with the bundled one's bytes counts once),
//!    each built with `fanout index --skip-bad-lines` into 1, 4, 8 and 16
//!    shards: the bytes of every shard's `global-stats.bin` against the bytes
//!    of every file of the index.
//! 2. **To open**, at 8 shards: loading and checking a shard's statistics
//!    (`ShardStatistics::load_for_shard`) against opening its tantivy index
//!    (index, reader, searcher), median of 5 rounds over all shards.
//! 3. **To query**, at 8 shards: the query log's natural-language queries
//!    (k = 10) on every shard, scored with the shard's corpus-wide statistics
//!    against tantivy's own statistics of the shard alone (the floor: no global
//!    statistics at all), alternating query by query so noise hits both alike.
//!
//! Run: `cargo bench -p fanout --bench statistics` (release build). Options
//! by environment: `FANOUT_BENCH_QUERY_COUNT` (default 1000) and
//! `FANOUT_BENCH_QUERIES` (see `fanout_tests::bench`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use fanout_leaf::{
    GLOBAL_STATS_FILE_NAME, QueryMode, ShardStatistics, build_query, read_shard_manifest,
    register_tokenizers, shard_dir_name,
};
use fanout_tests::bench::{bench_queries, env_count};
use fanout_tests::{CorpusSpec, FanoutBinary, IndexFixture, workspace_root};
use tantivy::collector::TopDocs;
use tantivy::{Index, ReloadPolicy, Searcher};

const SHARD_COUNTS: [u32; 4] = [1, 4, 8, 16];
const COST_SHARDS: u32 = 8;
const OPEN_ROUNDS: usize = 5;
const K: usize = 10;

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; there is nothing else to parse.
    let binary = FanoutBinary::new(env!("CARGO_BIN_EXE_fanout"), env!("CARGO_TARGET_TMPDIR"));
    println!("fanout statistics benchmark");
    println!(
        "machine: {} cores",
        std::thread::available_parallelism()?.get()
    );
    let corpora = corpora()?;
    let queries = bench_queries(env_count("FANOUT_BENCH_QUERY_COUNT", 1000)?, 1)?;

    println!("\n== statistics bytes / index bytes (every file of the index)\n");
    println!("| corpus | 1 shard | 4 shards | 8 shards | 16 shards |");
    println!("|---|---:|---:|---:|---:|");
    for (label, input) in &corpora {
        let mut cells = Vec::new();
        for shards in SHARD_COUNTS {
            let fixture = IndexFixture::cached(&binary, &spec(label, input, shards))?;
            let (statistics, total) = footprint(fixture.dir(), shards)?;
            cells.push(format!(
                "{:.2} / {:.1} MB ({:.1}%)",
                megabytes(statistics),
                megabytes(total),
                100.0 * statistics as f64 / total as f64
            ));
        }
        println!("| {label} | {} |", cells.join(" | "));
    }

    println!(
        "\n== opening and querying the {COST_SHARDS} shards ({} queries, k = {K})\n",
        queries.len()
    );
    println!(
        "| corpus | open: statistics / tantivy index | query: corpus-wide statistics / the \
         shard's own | ratio |"
    );
    println!("|---|---:|---:|---:|");
    for (label, input) in &corpora {
        let fixture = IndexFixture::cached(&binary, &spec(label, input, COST_SHARDS))?;
        let open = open_cost(fixture.dir())?;
        let query = query_cost(fixture.dir(), &queries)?;
        println!(
            "| {label} | {:.2} / {:.2} ms | {:.1} / {:.1} µs per query and shard ({} searches) | {:.3}x |",
            millis(open.statistics),
            millis(open.index),
            query.global_micros(),
            query.own_micros(),
            query.searches,
            query.global_micros() / query.own_micros()
        );
    }
    Ok(())
}

/// (label, path): the bundled corpus, then those of `../shared/data/corpora`.
fn corpora() -> anyhow::Result<Vec<(String, PathBuf)>> {
    let bundled = workspace_root().join("data/debian-descriptions.jsonl.gz");
    let bundled_bytes = std::fs::read(&bundled).with_context(|| bundled.display().to_string())?;
    let mut corpora = vec![("bundled debian-descriptions".to_string(), bundled)];
    let shared = workspace_root().join("../shared/data/corpora");
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(&shared) {
        Ok(entries) => entries
            .map(|entry| entry.map(|entry| entry.path()))
            .collect::<Result<_, _>>()?,
        Err(error) => {
            println!("{}: {error}; the bundled corpus only", shared.display());
            Vec::new()
        }
    };
    paths.sort();
    for path in paths {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let Some(stem) = name.strip_suffix(".jsonl.gz") else {
            continue;
        };
        if std::fs::read(&path)? == bundled_bytes {
            println!("{}: the bundled corpus", path.display());
            continue;
        }
        corpora.push((stem.to_string(), path));
    }
    Ok(corpora)
}

fn spec(label: &str, input: &Path, shards: u32) -> CorpusSpec {
    CorpusSpec {
        label: label.replace(' ', "-"),
        input: input.to_path_buf(),
        shards,
        // Some corpora repeat ids (Debian's per-architecture descriptions).
        extra_args: vec!["--skip-bad-lines".into()],
    }
}

/// (statistics bytes, bytes of every file) of the index in `dir`.
fn footprint(dir: &Path, shards: u32) -> anyhow::Result<(u64, u64)> {
    let mut statistics = 0;
    for shard in 0..shards {
        let path = dir.join(shard_dir_name(shard)).join(GLOBAL_STATS_FILE_NAME);
        statistics += std::fs::metadata(&path)
            .with_context(|| path.display().to_string())?
            .len();
    }
    Ok((statistics, bytes_under(dir)?))
}

fn bytes_under(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            total += bytes_under(&entry.path())?;
        } else if kind.is_file() {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

fn open_shard(shard_dir: &Path) -> anyhow::Result<(Index, Searcher)> {
    let index = Index::open_in_dir(shard_dir)?;
    register_tokenizers(&index);
    let reader = index
        .reader_builder()
        .reload_policy(ReloadPolicy::Manual)
        .try_into()?;
    let searcher = reader.searcher();
    Ok((index, searcher))
}

struct OpenCost {
    /// Median over the rounds of the time over all shards.
    statistics: Duration,
    index: Duration,
}

fn open_cost(dir: &Path) -> anyhow::Result<OpenCost> {
    let mut statistics = Vec::with_capacity(OPEN_ROUNDS);
    let mut index = Vec::with_capacity(OPEN_ROUNDS);
    for _ in 0..OPEN_ROUNDS {
        let (mut statistics_round, mut index_round) = (Duration::ZERO, Duration::ZERO);
        for shard in 0..COST_SHARDS {
            let shard_dir = dir.join(shard_dir_name(shard));
            let manifest = read_shard_manifest(&shard_dir)?;
            let started = Instant::now();
            let (_index, searcher) = open_shard(&shard_dir)?;
            index_round += started.elapsed();
            let started = Instant::now();
            ShardStatistics::load_for_shard(&shard_dir, &manifest, &searcher)?
                .context("a shard without statistics")?;
            statistics_round += started.elapsed();
        }
        statistics.push(statistics_round);
        index.push(index_round);
    }
    Ok(OpenCost {
        statistics: median(statistics),
        index: median(index),
    })
}

struct QueryCost {
    searches: u64,
    global: Duration,
    own: Duration,
}

impl QueryCost {
    fn global_micros(&self) -> f64 {
        self.global.as_secs_f64() * 1e6 / self.searches as f64
    }

    fn own_micros(&self) -> f64 {
        self.own.as_secs_f64() * 1e6 / self.searches as f64
    }
}

fn query_cost(dir: &Path, queries: &[String]) -> anyhow::Result<QueryCost> {
    let mut shards = Vec::new();
    for shard in 0..COST_SHARDS {
        let shard_dir = dir.join(shard_dir_name(shard));
        let manifest = read_shard_manifest(&shard_dir)?;
        let (index, searcher) = open_shard(&shard_dir)?;
        let statistics = ShardStatistics::load_for_shard(&shard_dir, &manifest, &searcher)?
            .context("a shard without statistics")?;
        shards.push((index, searcher, statistics));
    }
    let collector = TopDocs::with_limit(K).order_by_score();
    let mut cost = QueryCost {
        searches: 0,
        global: Duration::ZERO,
        own: Duration::ZERO,
    };
    for (number, query) in queries.iter().enumerate() {
        for (index, searcher, statistics) in &shards {
            // A query with no searchable word (all stop words) is refused.
            let Ok(query) = build_query(index, query, QueryMode::Natural) else {
                continue;
            };
            let global = || -> anyhow::Result<Duration> {
                let started = Instant::now();
                std::hint::black_box(
                    searcher.search_with_statistics_provider(&*query, &collector, statistics)?,
                );
                Ok(started.elapsed())
            };
            let own = || -> anyhow::Result<Duration> {
                let started = Instant::now();
                std::hint::black_box(searcher.search(&*query, &collector)?);
                Ok(started.elapsed())
            };
            if number % 2 == 0 {
                cost.global += global()?;
                cost.own += own()?;
            } else {
                cost.own += own()?;
                cost.global += global()?;
            }
            cost.searches += 1;
        }
    }
    anyhow::ensure!(cost.searches > 0, "no query of the log is searchable");
    Ok(cost)
}

fn median(mut durations: Vec<Duration>) -> Duration {
    durations.sort();
    durations[durations.len() / 2]
}

fn megabytes(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}
