//! The baseline figures of fanout's reference workload, measured in one run:
//!
//! 1. **Search latency through the root vs one in-process tantivy index.** A
//!    4 shards x 2 replicas cluster of real processes (separate merger) over the
//!    bundled Debian corpus answers a real query log, one request at a time;
//!    the same queries run in this process on one index over the same corpus
//!    (search plus stored fields of the top 10, as the root returns them).
//!    The two alternate query by query, so machine noise hits both alike.
//! 2. **Indexing rate of `fanout index` vs a single tantivy writer**: the whole
//!    `fanout index --shards 4` process (read, parse, hash-partition, four
//!    writers, global statistics) against one `IndexWriter` with the same
//!    schema, memory and threads fed the same documents, alternated.
//!
//! Run: `cargo bench -p fanout --bench baseline` (release build). Options by
//! environment: `FANOUT_BENCH_QUERIES` (a query file, one per line; default
//! the TREC Million Query log beside the repository, else SciFact's queries),
//! `FANOUT_BENCH_QUERY_COUNT` (default 2000), `FANOUT_BENCH_INDEX_ROUNDS`
//! (default 2).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fanout_leaf::{SearchFields, ShardSearcher, build_schema, register_tokenizers};
use fanout_proto::search::v1::{FetchRequest, SearchRequest, ShardSearchRequest};
use fanout_tests::bench::{bench_queries, env_count};
use fanout_tests::{
    ClusterOptions, CorpusSpec, FanoutBinary, IndexFixture, MergerPlacement, TestCluster,
    workspace_root,
};
use hdrhistogram::Histogram;

const K: u32 = 10;
const WARMUP_QUERIES: usize = 100;

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; there is nothing else to parse.
    let binary = FanoutBinary::new(env!("CARGO_BIN_EXE_fanout"), env!("CARGO_TARGET_TMPDIR"));
    let corpus = workspace_root().join("data/debian-descriptions.jsonl.gz");
    println!("fanout baseline benchmark");
    println!(
        "machine: {} cores",
        std::thread::available_parallelism()?.get()
    );
    println!("corpus: {}", corpus.display());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(search_latency(&binary, &corpus))?;
    indexing_rate(&binary, &corpus)?;
    Ok(())
}

fn debian_spec(shards: u32) -> CorpusSpec {
    CorpusSpec {
        label: "debian".into(),
        input: workspace_root().join("data/debian-descriptions.jsonl.gz"),
        shards,
        // The corpus repeats 15 ids (per-architecture descriptions): skip them.
        extra_args: vec!["--skip-bad-lines".into()],
    }
}

async fn search_latency(binary: &FanoutBinary, corpus: &Path) -> anyhow::Result<()> {
    let queries = load_queries()?;
    println!(
        "\n== search latency: root (4 shards x 2 replicas, merger process) vs one in-process index"
    );
    println!(
        "queries: {} (+{WARMUP_QUERIES} warm-up), k = {K}, one request at a time",
        queries.len()
    );
    let sharded = IndexFixture::cached(binary, &debian_spec(4))?;
    let single = IndexFixture::cached(binary, &debian_spec(1))?;
    println!(
        "indexes: {} (4 shards), {} (1 shard), {}",
        sharded.dir().display(),
        single.dir().display(),
        corpus.display()
    );

    let cluster = TestCluster::start(
        binary,
        ClusterOptions::new(sharded.dir())
            .replicas(2)
            .merger(MergerPlacement::Separate),
    )
    .await?;
    let mut client = cluster.search_client().await?;
    let searcher = ShardSearcher::open(&single.dir().join("shard-0"))?;

    let mut through_root = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut in_process = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let never_cancelled = || false;
    for (index, query) in queries.iter().enumerate() {
        let warm = index >= WARMUP_QUERIES;

        let started = Instant::now();
        let response = client
            .search(SearchRequest {
                query: query.clone(),
                k: K,
                ..Default::default()
            })
            .await;
        let root_micros = started.elapsed().as_micros() as u64;
        let root_ok = match response {
            Ok(response) => {
                let coverage = response.into_inner().coverage.unwrap_or_default();
                if coverage.partial {
                    bail!("query {query:?} answered with partial coverage {coverage:?}");
                }
                true
            }
            // Queries with no searchable word (all stop words) are rejected by both.
            Err(status) if status.code() == tonic::Code::InvalidArgument => false,
            Err(status) => bail!("query {query:?} failed: {status}"),
        };

        let started = Instant::now();
        let local = searcher
            .search(
                &ShardSearchRequest {
                    query: query.clone(),
                    k: K,
                    ..Default::default()
                },
                &never_cancelled,
            )
            .and_then(|top| {
                searcher.fetch(
                    &FetchRequest {
                        generation: top.generation.clone(),
                        hits: top.hits,
                        ..Default::default()
                    },
                    &never_cancelled,
                )
            });
        let local_micros = started.elapsed().as_micros() as u64;
        if root_ok != local.is_ok() {
            bail!("query {query:?}: the root and the single index disagree on whether it is valid");
        }
        if warm && root_ok {
            through_root.record(root_micros.max(1))?;
            in_process.record(local_micros.max(1))?;
        }
    }
    drop(cluster);

    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>10}",
        "", "p50", "p90", "p99", "mean"
    );
    for (name, histogram) in [
        ("one in-process index", &in_process),
        ("root, 4x2 cluster", &through_root),
    ] {
        println!(
            "{name:<28} {:>10} {:>10} {:>10} {:>10}",
            millis(histogram.value_at_quantile(0.50)),
            millis(histogram.value_at_quantile(0.90)),
            millis(histogram.value_at_quantile(0.99)),
            millis(histogram.mean() as u64),
        );
    }
    println!(
        "ratio root / in-process: p50 {:.2}x, p90 {:.2}x, p99 {:.2}x ({} queries measured)",
        ratio(&through_root, &in_process, 0.50),
        ratio(&through_root, &in_process, 0.90),
        ratio(&through_root, &in_process, 0.99),
        through_root.len(),
    );
    Ok(())
}

fn indexing_rate(binary: &FanoutBinary, corpus: &Path) -> anyhow::Result<()> {
    let rounds = env_count("FANOUT_BENCH_INDEX_ROUNDS", 2)?;
    let threads = std::thread::available_parallelism()?.get();
    const MEMORY_MB: usize = 256;
    println!("\n== indexing rate: `fanout index --shards 4` vs one tantivy IndexWriter");
    println!(
        "memory {MEMORY_MB} MB and {threads} threads for both; {rounds} alternating rounds; best round kept"
    );
    let documents = read_documents(corpus)?;
    let scratch = tempdir(binary, "bench-index")?;

    let mut best_fanout = Duration::MAX;
    let mut best_single = Duration::MAX;
    let mut fanout_docs = 0;
    for round in 0..rounds {
        let out = scratch.join(format!("fanout-{round}"));
        let started = Instant::now();
        let output = binary.run(
            [
                "index".as_ref(),
                "--input".as_ref(),
                corpus.as_os_str(),
                "--shards".as_ref(),
                "4".as_ref(),
                "--out".as_ref(),
                out.as_os_str(),
                "--skip-bad-lines".as_ref(),
                "--no-progress".as_ref(),
                "--memory-mb".as_ref(),
                MEMORY_MB.to_string().as_ref(),
                "--threads".as_ref(),
                threads.to_string().as_ref(),
            ],
            Duration::from_secs(600),
        )?;
        output.expect_success("fanout index")?;
        best_fanout = best_fanout.min(started.elapsed());
        fanout_docs = IndexFixture::open(&out)?.doc_count();
        std::fs::remove_dir_all(&out)?;

        let out = scratch.join(format!("single-{round}"));
        let started = Instant::now();
        single_writer(&documents, &out, MEMORY_MB << 20, threads)?;
        best_single = best_single.min(started.elapsed());
        std::fs::remove_dir_all(&out)?;
    }
    let fanout_rate = fanout_docs as f64 / best_fanout.as_secs_f64();
    let single_rate = documents.len() as f64 / best_single.as_secs_f64();
    println!(
        "fanout index --shards 4: {fanout_docs} docs in {:.2} s = {fanout_rate:.0} docs/s (whole process: gunzip, parse, partition, 4 writers, global statistics)",
        best_fanout.as_secs_f64()
    );
    println!(
        "one tantivy IndexWriter: {} docs in {:.2} s = {single_rate:.0} docs/s (documents parsed in advance, not timed)",
        documents.len(),
        best_single.as_secs_f64()
    );
    println!(
        "ratio fanout / single writer: {:.2}x the rate",
        fanout_rate / single_rate
    );
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

struct Document {
    id: String,
    title: String,
    text: String,
}

fn read_documents(corpus: &Path) -> anyhow::Result<Vec<Document>> {
    let file = std::fs::File::open(corpus).with_context(|| corpus.display().to_string())?;
    let reader = std::io::BufReader::new(flate2::read::GzDecoder::new(file));
    let mut seen = std::collections::HashSet::new();
    let mut documents = Vec::new();
    for line in reader.lines() {
        let value: serde_json::Value = serde_json::from_str(&line?)?;
        let field = |name: &str| value[name].as_str().unwrap_or_default().to_owned();
        let id = field("id");
        // The same duplicates `fanout index --skip-bad-lines` drops.
        if seen.insert(id.clone()) {
            documents.push(Document {
                id,
                title: field("title"),
                text: field("text"),
            });
        }
    }
    Ok(documents)
}

fn single_writer(
    documents: &[Document],
    out: &Path,
    memory: usize,
    threads: usize,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let schema = build_schema();
    let fields = SearchFields::from_schema(&schema)?;
    let index = tantivy::Index::create_in_dir(out, schema)?;
    register_tokenizers(&index);
    let mut writer: tantivy::IndexWriter = index.writer_with_num_threads(threads, memory)?;
    for document in documents {
        let mut doc = tantivy::TantivyDocument::default();
        doc.add_text(fields.id, &document.id);
        doc.add_text(fields.title, &document.title);
        doc.add_text(fields.text, &document.text);
        writer.add_document(doc)?;
    }
    writer.commit()?;
    writer.wait_merging_threads()?;
    Ok(())
}

fn load_queries() -> anyhow::Result<Vec<String>> {
    let count = env_count("FANOUT_BENCH_QUERY_COUNT", 2000)?;
    bench_queries(count + WARMUP_QUERIES, WARMUP_QUERIES + 1)
}

fn tempdir(binary: &FanoutBinary, name: &str) -> anyhow::Result<PathBuf> {
    let dir = binary
        .scratch_root()
        .join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn millis(micros: u64) -> String {
    format!("{:.3} ms", micros as f64 / 1000.0)
}

fn ratio(numerator: &Histogram<u64>, denominator: &Histogram<u64>, quantile: f64) -> f64 {
    numerator.value_at_quantile(quantile) as f64
        / denominator.value_at_quantile(quantile).max(1) as f64
}
