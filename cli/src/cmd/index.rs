//! `fanout index`: JSON Lines in, one tantivy index per shard out.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use fanout_leaf::{
    BadLinePolicy, INDEX_MANIFEST_FILE_NAME, IndexBuildOptions, IndexBuildReport, build_index,
    read_index_manifest,
};

use crate::cmd::{available_cores, human};

/// Bad lines listed one by one in the summary; the rest are counted.
const BAD_LINES_LISTED: usize = 20;

#[derive(Debug, Args)]
pub struct IndexArgs {
    /// JSON Lines corpus, one document a line (`.gz` read as gzip).
    #[arg(long, env = "FANOUT_INPUT")]
    pub input: PathBuf,
    /// Number of shards to partition the documents into (by a stable hash of the id).
    #[arg(long, env = "FANOUT_SHARDS", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub shards: u32,
    /// Output directory: index.json plus one shard-<i> directory per shard.
    #[arg(long, env = "FANOUT_OUT")]
    pub out: PathBuf,
    /// JSON field holding the document id.
    #[arg(long, default_value = "id", env = "FANOUT_ID_FIELD")]
    pub id_field: String,
    /// JSON field holding the title.
    #[arg(long, default_value = "title", env = "FANOUT_TITLE_FIELD")]
    pub title_field: String,
    /// JSON field holding the body text.
    #[arg(long, default_value = "text", env = "FANOUT_TEXT_FIELD")]
    pub text_field: String,
    /// Report bad lines and go on instead of failing on the first one.
    #[arg(long, env = "FANOUT_SKIP_BAD_LINES")]
    pub skip_bad_lines: bool,
    /// Memory for the index writers, in MiB, shared by all threads.
    #[arg(long, default_value_t = 256, env = "FANOUT_MEMORY_MB",
          value_parser = clap::value_parser!(u64).range(16..=65_536))]
    pub memory_mb: u64,
    /// Indexing threads (default: the number of cores).
    #[arg(long, env = "FANOUT_THREADS", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub threads: Option<u64>,
    /// Do not draw a progress bar.
    #[arg(long, env = "FANOUT_NO_PROGRESS")]
    pub no_progress: bool,
    /// When --out already holds a complete index of --shards shards, keep it
    /// and exit 0 instead of failing (for a one-shot job that runs again on
    /// every start); one of another shard count is still an error.
    #[arg(long, env = "FANOUT_IF_MISSING")]
    pub if_missing: bool,
}

/// Validated `fanout index`.
pub struct IndexPlan {
    options: IndexBuildOptions,
    if_missing: bool,
}

impl IndexArgs {
    pub fn validate(self) -> anyhow::Result<IndexPlan> {
        if !self.input.is_file() {
            bail!("--input {} is not a readable file", self.input.display());
        }
        for (flag, value) in [
            ("--id-field", &self.id_field),
            ("--title-field", &self.title_field),
            ("--text-field", &self.text_field),
        ] {
            if value.trim().is_empty() {
                bail!("{flag} must not be empty");
            }
        }
        let threads = self
            .threads
            .map_or_else(available_cores, |threads| threads as usize);
        Ok(IndexPlan {
            options: IndexBuildOptions {
                input: self.input,
                out_dir: self.out,
                shards: self.shards,
                id_field: self.id_field,
                title_field: self.title_field,
                text_field: self.text_field,
                bad_lines: if self.skip_bad_lines {
                    BadLinePolicy::Skip
                } else {
                    BadLinePolicy::Fail
                },
                writer_memory_bytes: (self.memory_mb as usize) << 20,
                threads,
                progress: !self.no_progress,
            },
            if_missing: self.if_missing,
        })
    }
}

pub async fn run(plan: IndexPlan) -> anyhow::Result<ExitCode> {
    let IndexPlan {
        options,
        if_missing,
    } = plan;
    let out_dir = options.out_dir.clone();
    if if_missing && out_dir.join(INDEX_MANIFEST_FILE_NAME).exists() {
        let manifest = read_index_manifest(&out_dir)
            .with_context(|| format!("--out {} holds an unreadable index", out_dir.display()))?;
        if manifest.shard_count != options.shards {
            bail!(
                "--out {} already holds an index of {} shards, not {}; remove it to rebuild",
                out_dir.display(),
                manifest.shard_count,
                options.shards
            );
        }
        println!(
            "index already in {} ({} docs in {} shards, generation {}); kept",
            out_dir.display(),
            human::thousands(manifest.doc_count),
            manifest.shard_count,
            manifest.generation
        );
        return Ok(ExitCode::SUCCESS);
    }
    let report = run_build(options).await?;
    print_report(&report);
    println!("index written to {}", out_dir.display());
    Ok(ExitCode::SUCCESS)
}

/// Runs [`build_index`] on a blocking thread (it reads, parses and writes for
/// a while), so the runtime stays free for signals.
pub async fn run_build(options: IndexBuildOptions) -> anyhow::Result<IndexBuildReport> {
    let input = options.input.clone();
    tokio::task::spawn_blocking(move || build_index(&options))
        .await
        .context("the index build panicked")?
        .with_context(|| format!("cannot index {}", input.display()))
}

/// The summary printed after a build: documents, shards, bad lines, speed.
pub fn print_report(report: &IndexBuildReport) {
    let seconds = report.elapsed.as_secs_f64();
    let docs_per_second = if seconds > 0.0 {
        report.docs_indexed as f64 / seconds
    } else {
        0.0
    };
    println!(
        "indexed {} docs into {} shards in {:.1} s ({} docs/s), generation {}",
        human::thousands(report.docs_indexed),
        report.shard_doc_counts.len(),
        seconds,
        human::thousands(docs_per_second.round() as u64),
        report.generation,
    );
    for (shard_id, docs) in report.shard_doc_counts.iter().enumerate() {
        println!("  shard {shard_id}: {} docs", human::thousands(*docs));
    }
    if report.bad_lines.is_empty() {
        return;
    }
    println!("skipped {} bad lines:", report.bad_lines.len());
    for bad_line in report.bad_lines.iter().take(BAD_LINES_LISTED) {
        println!("  line {}: {}", bad_line.line, bad_line.reason);
    }
    if report.bad_lines.len() > BAD_LINES_LISTED {
        println!(
            "  ... and {} more",
            report.bad_lines.len() - BAD_LINES_LISTED
        );
    }
}
