//! Building a sharded index from a JSON Lines corpus (`fanout index`).
//!
//! 1. The corpus is read line by line (plain or gzip, see `corpus.rs`); each
//!    document goes to shard [`shard_for_id`] of its id.
//! 2. Each shard has its own tantivy `IndexWriter` (with its own indexing
//!    threads and a share of the memory budget), so shards are written in
//!    parallel while the corpus is read once.
//! 3. Once every shard is committed, the corpus-wide BM25 statistics are
//!    computed over all shards and each shard gets those of its own terms
//!    (`global_stats.rs`), with its `shard.json`.
//! 4. The shards move from a hidden staging directory into place and
//!    `index.json` is written last: an output directory holding `index.json`
//!    holds a complete index.
//!
//! The output directory must be new or empty; the build never overwrites an
//! index. On failure the staging directory is removed; the output directory
//! is left as it was (empty, or created empty by the build).
//!
//! Bad lines (invalid JSON, a missing, empty or non-string id, a non-string
//! title or text, or an id already seen on an earlier line) fail the build
//! naming the line under [`BadLinePolicy::Fail`], or are skipped and listed
//! in [`IndexBuildReport::bad_lines`] under [`BadLinePolicy::Skip`]. For a
//! duplicate id the first occurrence is indexed and the later one is the bad
//! line.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fanout_runtime::hashing::Fnv1a64;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tantivy::{Index, IndexWriter, ReloadPolicy, TantivyDocument};

use crate::LeafError;
use crate::corpus::{CorpusDocument, CorpusFieldNames, CorpusLine, open_corpus, parse_corpus_line};
use crate::global_stats::{GLOBAL_STATS_FILE_NAME, ShardStatistics};
use crate::manifest::{
    INDEX_MANIFEST_FILE_NAME, IndexManifest, IndexManifestShard, SHARD_MANIFEST_FILE_NAME,
    ShardManifest, shard_dir_name, write_json_atomically,
};
use crate::partition::shard_for_id;
use crate::schema::{SearchFields, build_schema, register_tokenizers};

/// The longest corpus line a build reads (longer ones are bad lines).
const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;
/// The UTF-8 byte order mark, skipped at the start of a corpus.
const UTF8_BOM: &[u8] = b"\xef\xbb\xbf";

/// tantivy refuses less than this much indexing memory per writer thread.
const MIN_MEMORY_PER_WRITER_THREAD: usize = 15_000_000;
/// tantivy's ceiling on the memory of one writer thread (just under 4 GiB).
const MAX_MEMORY_PER_WRITER_THREAD: usize = 4_000_000_000;
/// tantivy uses at most this many indexing threads per writer.
const MAX_THREADS_PER_WRITER: usize = 8;

/// What to do with a line that is not a valid document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BadLinePolicy {
    /// Fail the build, naming the line and the reason.
    #[default]
    Fail,
    /// Skip the line and list it in [`IndexBuildReport::bad_lines`].
    Skip,
}

/// Everything `build_index` needs to know.
#[derive(Debug, Clone)]
pub struct IndexBuildOptions {
    /// JSON Lines corpus, plain or gzip (recognised by its magic bytes).
    pub input: PathBuf,
    /// New or empty directory the index is written into.
    pub out_dir: PathBuf,
    /// Number of shards, at least 1.
    pub shards: u32,
    /// Field of each JSON object holding the document id (`_id` for BEIR).
    pub id_field: String,
    pub title_field: String,
    pub text_field: String,
    pub bad_lines: BadLinePolicy,
    /// Indexing memory budget for all shards together; each shard writer gets
    /// an equal share, raised to tantivy's minimum of 15 MB per thread.
    pub writer_memory_bytes: usize,
    /// Indexing threads for all shards together (0 = one per core); each
    /// shard writer gets an equal share, at least 1 and at most 8.
    pub threads: usize,
    /// Show a progress bar (bytes of the input read) on stderr.
    pub progress: bool,
}

impl Default for IndexBuildOptions {
    fn default() -> Self {
        IndexBuildOptions {
            input: PathBuf::new(),
            out_dir: PathBuf::new(),
            shards: 1,
            id_field: "id".into(),
            title_field: "title".into(),
            text_field: "text".into(),
            bad_lines: BadLinePolicy::Fail,
            writer_memory_bytes: 256 * 1024 * 1024,
            threads: 0,
            progress: false,
        }
    }
}

/// A line of the corpus that was not indexed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// 1-based line number in the (decompressed) input.
    pub line: u64,
    pub reason: String,
}

/// What a build did.
#[derive(Debug, Clone)]
pub struct IndexBuildReport {
    pub docs_indexed: u64,
    /// Lines skipped under [`BadLinePolicy::Skip`] (empty under `Fail`).
    pub bad_lines: Vec<BadLine>,
    /// Documents per shard, by shard id.
    pub shard_doc_counts: Vec<u64>,
    pub generation: String,
    pub elapsed: Duration,
}

/// Builds a sharded index from `options.input` into `options.out_dir` (which
/// must be new or empty) as described in the module documentation.
///
/// A bad line (invalid JSON, not an object, a missing, empty or non-string
/// id, a non-string title or text) fails the build with
/// [`LeafError::BadLine`] naming its line number and reason under
/// [`BadLinePolicy::Fail`], or is skipped and reported in
/// [`IndexBuildReport::bad_lines`] under [`BadLinePolicy::Skip`]. **A
/// duplicate id is a bad line too**: the first line with that id is indexed,
/// every later one is reported (or fails the build). Blank lines are not
/// documents and are passed over.
pub fn build_index(options: &IndexBuildOptions) -> Result<IndexBuildReport, LeafError> {
    let started = Instant::now();
    validate_options(options)?;
    prepare_output_dir(&options.out_dir)?;
    let staging = StagingDir::create(&options.out_dir)?;

    let shard_count = options.shards;
    let threads = if options.threads == 0 {
        std::thread::available_parallelism().map_or(1, usize::from)
    } else {
        options.threads
    };
    let threads_per_shard = (threads / shard_count as usize).clamp(1, MAX_THREADS_PER_WRITER);
    let memory_per_thread =
        (options.writer_memory_bytes / shard_count as usize / threads_per_shard)
            .clamp(MIN_MEMORY_PER_WRITER_THREAD, MAX_MEMORY_PER_WRITER_THREAD);

    let mut shards = Vec::with_capacity(shard_count as usize);
    let mut writers: Vec<IndexWriter> = Vec::with_capacity(shard_count as usize);
    for shard_id in 0..shard_count {
        let dir = staging.path.join(shard_dir_name(shard_id));
        std::fs::create_dir(&dir).map_err(|error| LeafError::io(&dir, error))?;
        let index = Index::create_in_dir(&dir, build_schema())?;
        register_tokenizers(&index);
        writers.push(
            index.writer_with_num_threads(
                threads_per_shard,
                memory_per_thread * threads_per_shard,
            )?,
        );
        shards.push(ShardInProgress {
            dir,
            index,
            doc_count: 0,
        });
    }
    let fields = SearchFields::from_schema(&shards[0].index.schema())?;

    let read = read_corpus_into_shards(options, &fields, &mut shards, &writers)?;
    if read.docs_indexed == 0 {
        return Err(LeafError::NoDocuments(options.input.clone()));
    }

    commit_shards(writers)?;
    let generation = new_generation(read.content_hash, options);

    let searchers = shards
        .iter()
        .map(|shard| {
            let reader = shard
                .index
                .reader_builder()
                .reload_policy(ReloadPolicy::Manual)
                .try_into()?;
            Ok(reader.searcher())
        })
        .collect::<Result<Vec<_>, LeafError>>()?;
    let statistics = ShardStatistics::compute(&searchers, &generation)?;
    drop(searchers);
    let statistics_entries: u64 = statistics.iter().map(ShardStatistics::entry_count).sum();
    for ((shard_id, shard), statistics) in (0..shard_count).zip(&shards).zip(&statistics) {
        statistics.write_to(&shard.dir.join(GLOBAL_STATS_FILE_NAME))?;
        let manifest = ShardManifest {
            shard_id,
            shard_count,
            generation: generation.clone(),
            doc_count: shard.doc_count,
        };
        write_json_atomically(&shard.dir.join(SHARD_MANIFEST_FILE_NAME), &manifest)?;
    }

    let shard_doc_counts: Vec<u64> = shards.iter().map(|shard| shard.doc_count).collect();
    let staged_dirs: Vec<PathBuf> = shards.into_iter().map(|shard| shard.dir).collect();
    let mut manifest_shards = Vec::with_capacity(staged_dirs.len());
    for ((shard_id, staged_dir), doc_count) in
        (0..shard_count).zip(staged_dirs).zip(&shard_doc_counts)
    {
        let dir_name = shard_dir_name(shard_id);
        let final_dir = options.out_dir.join(&dir_name);
        if let Err(error) = std::fs::rename(&staged_dir, &final_dir) {
            remove_moved_shards(&options.out_dir, &manifest_shards);
            return Err(LeafError::io(&final_dir, error));
        }
        manifest_shards.push(IndexManifestShard {
            shard_id,
            dir: dir_name,
            doc_count: *doc_count,
        });
    }
    // Every shard has moved out: this removes the empty staging directory.
    if let Err(error) = staging.dir.close() {
        tracing::warn!(%error, "cannot remove the staging directory");
    }
    let index_manifest = IndexManifest {
        generation: generation.clone(),
        shard_count,
        doc_count: read.docs_indexed,
        shards: manifest_shards,
    };
    write_json_atomically(
        &options.out_dir.join(INDEX_MANIFEST_FILE_NAME),
        &index_manifest,
    )?;

    let report = IndexBuildReport {
        docs_indexed: read.docs_indexed,
        bad_lines: read.bad_lines,
        shard_doc_counts,
        generation,
        elapsed: started.elapsed(),
    };
    tracing::info!(
        docs = report.docs_indexed,
        bad_lines = report.bad_lines.len(),
        shards = shard_count,
        statistics_entries,
        generation = %report.generation,
        elapsed = ?report.elapsed,
        out_dir = %options.out_dir.display(),
        "index built"
    );
    Ok(report)
}

struct ShardInProgress {
    dir: PathBuf,
    index: Index,
    doc_count: u64,
}

struct CorpusRead {
    docs_indexed: u64,
    bad_lines: Vec<BadLine>,
    content_hash: u64,
}

fn validate_options(options: &IndexBuildOptions) -> Result<(), LeafError> {
    if options.shards == 0 {
        return Err(LeafError::InvalidBuildOptions(
            "shards must be at least 1".into(),
        ));
    }
    // Every shard has its own writer, and tantivy's writer needs a floor of
    // memory: the budget must cover the floors, or the build would take far
    // more than it was given.
    let needed = MIN_MEMORY_PER_WRITER_THREAD.saturating_mul(options.shards as usize);
    if options.writer_memory_bytes < needed {
        let mib = |bytes: usize| bytes.div_ceil(1 << 20);
        return Err(LeafError::InvalidBuildOptions(format!(
            "{} MiB of writer memory is too little for {} shards: each shard's writer needs at least {} MB; give at least {} MiB, or build fewer shards",
            mib(options.writer_memory_bytes),
            options.shards,
            MIN_MEMORY_PER_WRITER_THREAD / 1_000_000,
            mib(needed)
        )));
    }
    let names = [
        ("id", &options.id_field),
        ("title", &options.title_field),
        ("text", &options.text_field),
    ];
    for (role, name) in names {
        if name.is_empty() {
            return Err(LeafError::InvalidBuildOptions(format!(
                "the {role} field name is empty"
            )));
        }
    }
    if options.id_field == options.title_field || options.id_field == options.text_field {
        return Err(LeafError::InvalidBuildOptions(format!(
            "the id field {:?} is also the title or text field",
            options.id_field
        )));
    }
    if !options.input.is_file() {
        return Err(LeafError::io(
            &options.input,
            std::io::Error::new(std::io::ErrorKind::NotFound, "input file not found"),
        ));
    }
    Ok(())
}

/// Creates `out_dir` or checks that it is an empty directory. The staging
/// directory of an earlier build that was killed (its process is gone) is
/// removed first: it is debris, not an index.
fn prepare_output_dir(out_dir: &Path) -> Result<(), LeafError> {
    match std::fs::read_dir(out_dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(|error| LeafError::io(out_dir, error))?;
                let name = entry.file_name();
                if let Some(pid) = name.to_str().and_then(StagingDir::owner_pid)
                    && !process_is_running(pid)
                {
                    tracing::warn!(
                        dir = %entry.path().display(),
                        pid,
                        "removing the staging directory of an interrupted build"
                    );
                    std::fs::remove_dir_all(entry.path())
                        .map_err(|error| LeafError::io(entry.path(), error))?;
                    continue;
                }
                return Err(LeafError::OutputNotEmpty(out_dir.to_path_buf()));
            }
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(out_dir).map_err(|error| LeafError::io(out_dir, error))
        }
        Err(error) => Err(LeafError::io(out_dir, error)),
    }
}

/// A hidden directory inside the output directory that shards are written
/// into (`.building-<pid>-<random>`); removed when dropped (a `tempfile`
/// directory), which the build does once every shard has moved out of it.
struct StagingDir {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl StagingDir {
    const PREFIX: &str = ".building-";

    fn create(out_dir: &Path) -> Result<StagingDir, LeafError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}{}-", Self::PREFIX, std::process::id()))
            .tempdir_in(out_dir)
            .map_err(|error| LeafError::io(out_dir, error))?;
        let path = dir.path().to_path_buf();
        Ok(StagingDir { dir, path })
    }

    /// The pid of the build that owns a staging directory named `name`.
    fn owner_pid(name: &str) -> Option<u32> {
        let rest = name.strip_prefix(Self::PREFIX)?;
        rest.split('-').next()?.parse().ok()
    }
}

/// Whether process `pid` runs (Linux: it has a `/proc` entry); this process
/// counts as running.
fn process_is_running(pid: u32) -> bool {
    pid == std::process::id() || Path::new("/proc").join(pid.to_string()).exists()
}

/// Undoes the moves of a build that failed half-way through moving its shards.
fn remove_moved_shards(out_dir: &Path, moved: &[IndexManifestShard]) {
    for shard in moved {
        let dir = out_dir.join(&shard.dir);
        if let Err(error) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(path = %dir.display(), %error, "cannot remove a shard of a failed build");
        }
    }
}

fn read_corpus_into_shards(
    options: &IndexBuildOptions,
    fields: &SearchFields,
    shards: &mut [ShardInProgress],
    writers: &[IndexWriter],
) -> Result<CorpusRead, LeafError> {
    let input_bytes = std::fs::metadata(&options.input)
        .map_err(|error| LeafError::io(&options.input, error))?
        .len();
    let progress = progress_bar(options.progress, input_bytes);
    let mut corpus = open_corpus(&options.input, |file| progress.wrap_read(file))?;
    let names = CorpusFieldNames {
        id: options.id_field.clone(),
        title: options.title_field.clone(),
        text: options.text_field.clone(),
    };
    let shard_count = options.shards;
    let mut first_line_of_id: HashMap<String, u64> = HashMap::new();
    let mut bad_lines = Vec::new();
    let mut content_hash = Fnv1a64::default();
    let mut line = Vec::with_capacity(64 * 1024);
    let mut line_number = 0u64;
    let mut docs_indexed = 0u64;
    loop {
        line.clear();
        let read = read_line_bounded(&mut corpus, &mut line, MAX_LINE_BYTES)
            .map_err(|error| LeafError::io(&options.input, error))?;
        let length = match read {
            LineRead::End => break,
            LineRead::Line => None,
            LineRead::TooLong { length } => Some(length),
        };
        line_number += 1;
        content_hash.update(&line);
        let mut text = trim_line_end(&line);
        if line_number == 1 {
            // A byte order mark some editors write: not part of the JSON.
            text = text.strip_prefix(UTF8_BOM).unwrap_or(text);
        }
        let parsed = match length {
            Some(length) => CorpusLine::Bad {
                reason: format!(
                    "the line is {length} bytes long, more than the limit of {MAX_LINE_BYTES}"
                ),
            },
            None => parse_corpus_line(text, &names),
        };
        let outcome = match parsed {
            CorpusLine::Blank => continue,
            CorpusLine::Bad { reason } => Err(reason),
            CorpusLine::Document(document) => match first_line_of_id.get(&document.id) {
                Some(first_line) => Err(format!(
                    "duplicate id {:?} (first seen on line {first_line})",
                    document.id
                )),
                None => Ok(document),
            },
        };
        let document = match outcome {
            Ok(document) => document,
            Err(reason) => {
                if options.bad_lines == BadLinePolicy::Fail {
                    progress.abandon();
                    return Err(LeafError::BadLine {
                        path: options.input.clone(),
                        line: line_number,
                        reason,
                    });
                }
                tracing::debug!(line = line_number, %reason, "skipping a bad line");
                bad_lines.push(BadLine {
                    line: line_number,
                    reason,
                });
                continue;
            }
        };
        first_line_of_id.insert(document.id.clone(), line_number);
        let shard_id = shard_for_id(&document.id, shard_count) as usize;
        writers[shard_id].add_document(tantivy_document(fields, document))?;
        shards[shard_id].doc_count += 1;
        docs_indexed += 1;
        if docs_indexed.is_multiple_of(4096) {
            progress.set_message(format!("{docs_indexed} documents"));
        }
    }
    progress.finish_and_clear();
    if !bad_lines.is_empty() {
        tracing::warn!(
            skipped = bad_lines.len(),
            first_line = bad_lines[0].line,
            first_reason = %bad_lines[0].reason,
            "skipped bad input lines"
        );
    }
    Ok(CorpusRead {
        docs_indexed,
        bad_lines,
        content_hash: content_hash.finish(),
    })
}

/// How [`read_line_bounded`] ended.
#[derive(Debug, PartialEq, Eq)]
enum LineRead {
    /// A line (with its terminator, if any) is in the buffer.
    Line,
    /// The line was longer than the limit: the buffer holds its start, the
    /// rest was read past.
    TooLong { length: u64 },
    /// Nothing left.
    End,
}

/// Reads one line into `line` (cleared by the caller), keeping at most
/// `limit` bytes of it, so that one line without a newline cannot take all
/// memory; reads past the rest of a longer line.
fn read_line_bounded(
    reader: &mut dyn BufRead,
    line: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<LineRead> {
    let mut length: u64 = 0;
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok(match length {
                0 => LineRead::End,
                _ if length > limit as u64 => LineRead::TooLong { length },
                _ => LineRead::Line,
            });
        }
        let (chunk, ends_line) = match available.iter().position(|byte| *byte == b'\n') {
            Some(newline) => (&available[..=newline], true),
            None => (available, false),
        };
        let room = limit.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        length += chunk.len() as u64;
        let consumed = chunk.len();
        reader.consume(consumed);
        if ends_line {
            return Ok(if length > limit as u64 {
                LineRead::TooLong { length }
            } else {
                LineRead::Line
            });
        }
    }
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    &line[..end]
}

fn tantivy_document(fields: &SearchFields, document: CorpusDocument) -> TantivyDocument {
    let mut tantivy_document = TantivyDocument::default();
    tantivy_document.add_text(fields.id, &document.id);
    if !document.title.is_empty() {
        tantivy_document.add_text(fields.title, &document.title);
    }
    if !document.text.is_empty() {
        tantivy_document.add_text(fields.text, &document.text);
    }
    tantivy_document
}

fn progress_bar(enabled: bool, input_bytes: u64) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let progress = ProgressBar::with_draw_target(Some(input_bytes), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "indexing {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left) {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    progress.set_style(style);
    progress
}

/// Commits every shard in parallel and waits for their merges to finish.
fn commit_shards(writers: Vec<IndexWriter>) -> Result<(), LeafError> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = writers
            .into_iter()
            .map(|mut writer| {
                scope.spawn(move || -> Result<(), LeafError> {
                    writer.commit()?;
                    writer.wait_merging_threads()?;
                    Ok(())
                })
            })
            .collect();
        for handle in handles {
            match handle.join() {
                Ok(result) => result?,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        Ok(())
    })
}

/// A string unique to this build: the time in milliseconds and a hash of the
/// corpus content, the options, the time in nanoseconds and the process id.
fn new_generation(content_hash: u64, options: &IndexBuildOptions) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut hash = Fnv1a64::default();
    hash.update(&content_hash.to_le_bytes());
    hash.update(&options.shards.to_le_bytes());
    for name in [&options.id_field, &options.title_field, &options.text_field] {
        hash.update(name.as_bytes());
        hash.update(&[0]);
    }
    hash.update(&now.as_nanos().to_le_bytes());
    hash.update(&std::process::id().to_le_bytes());
    format!("{}-{:016x}", now.as_millis(), hash.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::read_index_manifest;
    use crate::shard::ShardSearcher;
    use std::io::Write;

    const GOOD_CORPUS: &str = concat!(
        r#"{"id": "rust", "title": "Rust", "text": "A systems language."}"#,
        "\n",
        r#"{"id": "tantivy", "title": "Tantivy", "text": "Search in Rust."}"#,
        "\n",
        "\n",
        r#"{"id": "zlib", "title": "zlib", "text": "Compression."}"#,
        "\n",
        r#"{"id": "pasta", "text": "No title here."}"#,
        "\n",
    );

    fn options(input: &Path, out_dir: &Path, shards: u32) -> IndexBuildOptions {
        IndexBuildOptions {
            input: input.to_path_buf(),
            out_dir: out_dir.to_path_buf(),
            shards,
            threads: 1,
            writer_memory_bytes: MIN_MEMORY_PER_WRITER_THREAD * shards.max(1) as usize,
            ..IndexBuildOptions::default()
        }
    }

    fn write_gzip(path: &Path, text: &str) {
        let file = std::fs::File::create(path).unwrap();
        let mut encoder = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        encoder.write_all(text.as_bytes()).unwrap();
        encoder.finish().unwrap();
    }

    #[test]
    fn builds_shards_from_plain_and_gzip_input() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("corpus.jsonl");
        std::fs::write(&plain, GOOD_CORPUS).unwrap();
        let gzip = dir.path().join("corpus.jsonl.gz");
        write_gzip(&gzip, GOOD_CORPUS);

        for (name, input) in [("plain", &plain), ("gzip", &gzip)] {
            let out_dir = dir.path().join(format!("index-{name}"));
            let report = build_index(&options(input, &out_dir, 3)).unwrap();
            assert_eq!(report.docs_indexed, 4, "{name}");
            assert!(report.bad_lines.is_empty());
            assert_eq!(report.shard_doc_counts.iter().sum::<u64>(), 4);
            let expected_counts: Vec<u64> = (0..3)
                .map(|shard| {
                    ["rust", "tantivy", "zlib", "pasta"]
                        .iter()
                        .filter(|id| shard_for_id(id, 3) == shard)
                        .count() as u64
                })
                .collect();
            assert_eq!(report.shard_doc_counts, expected_counts);

            let manifest = read_index_manifest(&out_dir).unwrap();
            assert_eq!(manifest.generation, report.generation);
            assert_eq!(manifest.doc_count, 4);
            for entry in &manifest.shards {
                let shard = ShardSearcher::open(&out_dir.join(&entry.dir)).unwrap();
                assert_eq!(shard.manifest().generation, report.generation);
                assert_eq!(shard.manifest().shard_count, 3);
                assert_eq!(shard.doc_count(), entry.doc_count);
            }
            let leftovers: Vec<_> = std::fs::read_dir(&out_dir)
                .unwrap()
                .map(|entry| entry.unwrap().file_name().into_string().unwrap())
                .filter(|name| name.starts_with('.'))
                .collect();
            assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
        }
    }

    #[test]
    fn generations_differ_between_builds() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("corpus.jsonl");
        std::fs::write(&input, GOOD_CORPUS).unwrap();
        let first = build_index(&options(&input, &dir.path().join("a"), 1)).unwrap();
        let second = build_index(&options(&input, &dir.path().join("b"), 1)).unwrap();
        assert_ne!(first.generation, second.generation);
    }

    const BAD_CORPUS: &str = concat!(
        r#"{"id": "one", "text": "fine"}"#,
        "\n",
        r#"{"id": "two", "text": "#,
        "\n",
        r#"{"id": "", "text": "empty id"}"#,
        "\n",
        r#"{"id": "three", "title": 3}"#,
        "\n",
        r#"{"id": "one", "text": "duplicate"}"#,
        "\n",
        r#"{"id": "four", "text": "fine too"}"#,
        "\n",
    );

    #[test]
    fn fail_policy_names_the_first_bad_line_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("corpus.jsonl.gz");
        write_gzip(&input, BAD_CORPUS);
        let out_dir = dir.path().join("index");
        let error = build_index(&options(&input, &out_dir, 2)).unwrap_err();
        let LeafError::BadLine { line, reason, .. } = &error else {
            panic!("expected a bad line error, got {error}");
        };
        assert_eq!(*line, 2);
        assert!(reason.starts_with("invalid json"), "{reason}");
        assert!(error.to_string().contains("bad input line 2"), "{error}");
        assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), 0);
    }

    #[test]
    fn skip_policy_reports_every_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("corpus.jsonl");
        std::fs::write(&input, BAD_CORPUS).unwrap();
        let out_dir = dir.path().join("index");
        let build_options = IndexBuildOptions {
            bad_lines: BadLinePolicy::Skip,
            ..options(&input, &out_dir, 2)
        };
        let report = build_index(&build_options).unwrap();
        assert_eq!(report.docs_indexed, 2);
        let lines: Vec<u64> = report.bad_lines.iter().map(|bad| bad.line).collect();
        assert_eq!(lines, [2, 3, 4, 5]);
        assert!(report.bad_lines[1].reason.contains("empty id"));
        assert!(
            report.bad_lines[2]
                .reason
                .contains("\"title\" is not a string")
        );
        assert!(
            report.bad_lines[3]
                .reason
                .contains("duplicate id \"one\" (first seen on line 1)"),
            "{}",
            report.bad_lines[3].reason
        );
    }

    #[test]
    fn refuses_a_non_empty_output_directory() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("corpus.jsonl");
        std::fs::write(&input, GOOD_CORPUS).unwrap();
        let out_dir = dir.path().join("index");
        build_index(&options(&input, &out_dir, 1)).unwrap();
        let error = build_index(&options(&input, &out_dir, 1)).unwrap_err();
        assert!(matches!(error, LeafError::OutputNotEmpty(_)), "{error}");
    }

    #[test]
    fn refuses_input_without_documents_and_zero_shards() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("corpus.jsonl");
        std::fs::write(&input, "\n\n").unwrap();
        let error = build_index(&options(&input, &dir.path().join("index"), 1)).unwrap_err();
        assert!(matches!(error, LeafError::NoDocuments(_)), "{error}");
        let error = build_index(&options(&input, &dir.path().join("other"), 0)).unwrap_err();
        assert!(
            matches!(error, LeafError::InvalidBuildOptions(_)),
            "{error}"
        );
    }

    #[test]
    fn the_staging_directory_of_a_killed_build_is_cleared_away() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("corpus.jsonl");
        std::fs::write(&input, GOOD_CORPUS).unwrap();
        let out_dir = dir.path().join("index");
        // A pid no process has (above the kernel's pid_max).
        let stale = out_dir.join(".building-4194305-x1y2z3");
        std::fs::create_dir_all(stale.join("shard-0")).unwrap();
        build_index(&options(&input, &out_dir, 2)).unwrap();
        assert!(!stale.exists(), "the debris is gone");
        assert!(out_dir.join("index.json").exists());
        // A staging directory of a live build is somebody's work: refused.
        let other = dir.path().join("busy");
        std::fs::create_dir_all(other.join(".building-1")).unwrap();
        let error = build_index(&options(&input, &other, 1)).unwrap_err();
        assert!(matches!(error, LeafError::OutputNotEmpty(_)), "{error}");
    }

    #[test]
    fn a_byte_order_mark_is_not_json() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("corpus.jsonl");
        std::fs::write(&input, format!("\u{feff}{GOOD_CORPUS}")).unwrap();
        let report = build_index(&options(&input, &dir.path().join("index"), 1)).unwrap();
        assert_eq!(report.docs_indexed, 4);
    }

    #[test]
    fn too_little_memory_for_the_shards_is_refused_up_front() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("corpus.jsonl");
        std::fs::write(&input, GOOD_CORPUS).unwrap();
        let error = build_index(&IndexBuildOptions {
            writer_memory_bytes: 256 << 20,
            ..options(&input, &dir.path().join("index"), 1024)
        })
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid index build options: 256 MiB of writer memory is too little for 1024 shards: each shard's writer needs at least 15 MB; give at least 14649 MiB, or build fewer shards"
        );
        assert!(!dir.path().join("index").exists(), "nothing was made");
    }

    #[test]
    fn lines_longer_than_the_limit_are_bad_lines_read_past() {
        let text = format!("{}\nshort\nlast", "x".repeat(100));
        let mut reader = std::io::BufReader::with_capacity(16, text.as_bytes());
        let mut line = Vec::new();
        assert_eq!(
            read_line_bounded(&mut reader, &mut line, 10).unwrap(),
            LineRead::TooLong { length: 101 }
        );
        assert_eq!(line.len(), 10);
        line.clear();
        assert_eq!(
            read_line_bounded(&mut reader, &mut line, 10).unwrap(),
            LineRead::Line
        );
        assert_eq!(line, b"short\n");
        line.clear();
        assert_eq!(
            read_line_bounded(&mut reader, &mut line, 10).unwrap(),
            LineRead::Line
        );
        assert_eq!(line, b"last");
        line.clear();
        assert_eq!(
            read_line_bounded(&mut reader, &mut line, 10).unwrap(),
            LineRead::End
        );
    }
}
