//! The index a local cluster serves: built once per corpus and shard count,
//! then reused (by `fanout up`, by every scenario of `fanout loadgen scenario`). It lives in `<data-dir>/index-<fingerprint>`, where the fingerprint
//! hashes what would change the index (corpus path, size and modification
//! time, shard count, field names, the statistics' format version). A build writes to `index-<fingerprint>.partial`
//! and renames it when complete, so an interrupted build is never reused.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::{Context, bail};
use fanout_leaf::{
    BadLinePolicy, IndexBuildOptions, IndexBuildReport, IndexManifest, build_index,
    read_index_manifest,
};
use fanout_runtime::hashing::Fnv1a64;

/// Memory of the index writers during a first-run build.
const WRITER_MEMORY_BYTES: usize = 256 << 20;

/// What the index is built from.
#[derive(Debug, Clone)]
pub struct IndexSource {
    pub corpus: PathBuf,
    pub shards: u32,
    pub id_field: String,
    pub title_field: String,
    pub text_field: String,
}

/// An index ready to serve.
pub struct ReadyIndex {
    pub dir: PathBuf,
    pub manifest: IndexManifest,
    /// What the build did, when it happened now; `None` when a previous
    /// run's index was reused.
    pub built_now: Option<IndexBuildReport>,
}

impl ReadyIndex {
    /// An index already built in `dir` (by `fanout index`, say), described
    /// by its `index.json`.
    pub fn open(dir: &Path) -> anyhow::Result<ReadyIndex> {
        let manifest = read_index_manifest(dir)
            .with_context(|| format!("cannot read the index in {}", dir.display()))?;
        Ok(ReadyIndex {
            dir: dir.to_owned(),
            manifest,
            built_now: None,
        })
    }

    /// The folder of one shard.
    pub fn shard_dir(&self, shard_id: u32) -> Option<PathBuf> {
        self.manifest
            .shards
            .iter()
            .find(|shard| shard.shard_id == shard_id)
            .map(|shard| self.dir.join(&shard.dir))
    }
}

/// Stable across runs and toolchains (FNV-1a, 64 bits, from
/// [`fanout_runtime::hashing`]), unlike `DefaultHasher`.
fn fnv1a_64(chunks: &[&[u8]]) -> u64 {
    let mut hasher = Fnv1a64::default();
    for chunk in chunks {
        hasher.update(chunk);
        // A separator so that ("ab", "c") and ("a", "bc") differ.
        hasher.update(&[0xff]);
    }
    hasher.finish()
}

/// The fingerprint of `source` as the corpus file is now.
pub fn fingerprint(source: &IndexSource) -> anyhow::Result<String> {
    let corpus = source
        .corpus
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", source.corpus.display()))?;
    let metadata =
        std::fs::metadata(&corpus).with_context(|| format!("cannot read {}", corpus.display()))?;
    let modified = metadata
        .modified()
        .ok()
        .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |since_epoch| since_epoch.as_nanos());
    Ok(fingerprint_of(&corpus, metadata.len(), modified, source))
}

fn fingerprint_of(corpus: &Path, size: u64, modified_nanos: u128, source: &IndexSource) -> String {
    let hash = fnv1a_64(&[
        corpus.as_os_str().as_encoded_bytes(),
        &size.to_le_bytes(),
        &modified_nanos.to_le_bytes(),
        &source.shards.to_le_bytes(),
        source.id_field.as_bytes(),
        source.title_field.as_bytes(),
        source.text_field.as_bytes(),
        // An index of an older format is built again, not refused by its leaves.
        &fanout_leaf::STATISTICS_FORMAT_VERSION.to_le_bytes(),
    ]);
    format!("{hash:016x}")
}

/// The index of `source` under `data_dir`, built now when absent (or when
/// `rebuild`), reused otherwise. A build uses `threads` threads and says what
/// it does on stderr.
pub async fn ensure_index(
    source: &IndexSource,
    data_dir: &Path,
    rebuild: bool,
    threads: usize,
) -> anyhow::Result<ReadyIndex> {
    let fingerprint = fingerprint(source)?;
    let dir = data_dir.join(format!("index-{fingerprint}"));
    if !rebuild && dir.join("index.json").is_file() {
        match read_index_manifest(&dir) {
            Ok(manifest) if manifest.shard_count == source.shards => {
                return Ok(ReadyIndex {
                    dir,
                    manifest,
                    built_now: None,
                });
            }
            Ok(manifest) => eprintln!(
                "the index in {} has {} shards, not {}: building it again",
                dir.display(),
                manifest.shard_count,
                source.shards
            ),
            Err(error) => eprintln!(
                "cannot read the index in {} ({error}): building it again",
                dir.display()
            ),
        }
    }

    let partial = data_dir.join(format!("index-{fingerprint}.partial"));
    remove_dir_if_present(&partial)?;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    eprintln!(
        "building the index of {} ({} shards) into {}; later runs reuse it",
        source.corpus.display(),
        source.shards,
        dir.display()
    );
    let options = IndexBuildOptions {
        input: source.corpus.clone(),
        out_dir: partial.clone(),
        shards: source.shards,
        id_field: source.id_field.clone(),
        title_field: source.title_field.clone(),
        text_field: source.text_field.clone(),
        bad_lines: BadLinePolicy::Skip,
        writer_memory_bytes: WRITER_MEMORY_BYTES,
        threads,
        progress: true,
    };
    // The build reads, parses and writes for a while: off the runtime, so
    // that signals are still heard.
    let report = tokio::task::spawn_blocking(move || build_index(&options))
        .await
        .context("the index build panicked")?
        .with_context(|| format!("cannot index {}", source.corpus.display()))?;
    remove_dir_if_present(&dir)?;
    std::fs::rename(&partial, &dir)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), dir.display()))?;
    let manifest = read_index_manifest(&dir)
        .with_context(|| format!("cannot read the index just built in {}", dir.display()))?;
    if manifest.shard_count != source.shards {
        bail!(
            "the index just built in {} has {} shards, not {}",
            dir.display(),
            manifest.shard_count,
            source.shards
        );
    }
    Ok(ReadyIndex {
        dir,
        manifest,
        built_now: Some(report),
    })
}

fn remove_dir_if_present(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| format!("cannot remove {}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(shards: u32) -> IndexSource {
        IndexSource {
            corpus: PathBuf::from("/data/corpus.jsonl.gz"),
            shards,
            id_field: "id".into(),
            title_field: "title".into(),
            text_field: "text".into(),
        }
    }

    #[test]
    fn the_fingerprint_changes_with_everything_that_changes_the_index() {
        let corpus = Path::new("/data/corpus.jsonl.gz");
        let base = fingerprint_of(corpus, 1_000, 42, &source(4));
        assert_eq!(base.len(), 16);
        assert_eq!(base, fingerprint_of(corpus, 1_000, 42, &source(4)));
        assert_ne!(base, fingerprint_of(corpus, 1_001, 42, &source(4)));
        assert_ne!(base, fingerprint_of(corpus, 1_000, 43, &source(4)));
        assert_ne!(base, fingerprint_of(corpus, 1_000, 42, &source(2)));
        assert_ne!(
            base,
            fingerprint_of(Path::new("/data/other.jsonl.gz"), 1_000, 42, &source(4))
        );
        let mut renamed_field = source(4);
        renamed_field.id_field = "_id".into();
        assert_ne!(base, fingerprint_of(corpus, 1_000, 42, &renamed_field));
    }

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c; ours appends a 0xff separator.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        hash ^= u64::from(b'a');
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        assert_eq!(hash, 0xaf63_dc4c_8601_ec8c);
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        assert_eq!(fnv1a_64(&[b"a"]), hash);
        assert_ne!(fnv1a_64(&[b"ab", b"c"]), fnv1a_64(&[b"a", b"bc"]));
    }
}
