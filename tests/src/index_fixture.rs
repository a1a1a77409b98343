//! Shard indexes built with `fanout index`, once.
//!
//! Building SciFact takes seconds and several test binaries need the same
//! index, so a build is cached on disk under the scratch root, keyed by a
//! fingerprint of the binary (path, size, modification time), the input file
//! and the arguments: a rebuilt `fanout` gets a fresh index. Inside one test
//! binary a lock makes concurrent tests wait for a single build. Builds go to a
//! temporary folder renamed into place, so a half-written index is never used.
//! Cached builds of other fingerprints older than an hour are removed.

use std::collections::HashMap;
use std::ffi::OsString;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow};

use crate::{FanoutBinary, workspace_root};

/// Longest a SciFact-sized build may take.
const BUILD_LIMIT: Duration = Duration::from_secs(300);
/// Cached builds of other fingerprints older than this are deleted.
const STALE_AFTER: Duration = Duration::from_secs(3600);

/// What to index.
#[derive(Debug, Clone)]
pub struct CorpusSpec {
    /// Names the cache entry (`scifact`, ...).
    pub label: String,
    pub input: PathBuf,
    pub shards: u32,
    /// More `fanout index` flags, e.g. `--id-field _id`.
    pub extra_args: Vec<String>,
}

impl CorpusSpec {
    /// BEIR SciFact (5,183 documents, `_id`, `title`, `text`) in `shards` shards.
    pub fn scifact(shards: u32) -> CorpusSpec {
        CorpusSpec {
            label: "scifact".into(),
            input: workspace_root().join("data/beir-scifact/corpus.jsonl.gz"),
            shards,
            extra_args: vec!["--id-field".into(), "_id".into()],
        }
    }
}

/// A built index: `<dir>/index.json` and `<dir>/shard-<i>/`.
#[derive(Debug, Clone)]
pub struct IndexFixture {
    dir: PathBuf,
    shard_count: u32,
    doc_count: u64,
}

impl IndexFixture {
    /// SciFact in `shards` shards, built once and shared.
    pub fn scifact(binary: &FanoutBinary, shards: u32) -> anyhow::Result<IndexFixture> {
        IndexFixture::cached(binary, &CorpusSpec::scifact(shards))
    }

    /// `spec` built once per fingerprint and shared by every test binary.
    /// Blocks while building.
    pub fn cached(binary: &FanoutBinary, spec: &CorpusSpec) -> anyhow::Result<IndexFixture> {
        static BUILT: Mutex<Option<HashMap<PathBuf, IndexFixture>>> = Mutex::new(None);
        let cache_root = binary.scratch_root().join("indexes");
        let key = fingerprint(binary, spec)?;
        let final_dir = cache_root.join(format!("{}-{}shards-{key:016x}", spec.label, spec.shards));

        // Held across the build on purpose: concurrent tests wait for one build.
        let mut built = BUILT
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let built = built.get_or_insert_with(HashMap::new);
        if let Some(fixture) = built.get(&final_dir) {
            return Ok(fixture.clone());
        }
        if !final_dir.join("index.json").is_file() {
            std::fs::create_dir_all(&cache_root)?;
            remove_stale_builds(&cache_root, &spec.label, &final_dir);
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            let building = cache_root.join(format!(
                ".building-{}-{}-{nanos}",
                spec.label,
                std::process::id()
            ));
            let result = IndexFixture::build(binary, spec, &building);
            if let Err(error) = result {
                let _ = std::fs::remove_dir_all(&building);
                return Err(error);
            }
            if std::fs::rename(&building, &final_dir).is_err() {
                // Another test binary finished the same build first.
                let _ = std::fs::remove_dir_all(&building);
            }
        }
        let fixture = IndexFixture::open(&final_dir)?;
        built.insert(final_dir, fixture.clone());
        Ok(fixture)
    }

    /// Runs `fanout index` for `spec` into `out_dir` (not cached).
    pub fn build(
        binary: &FanoutBinary,
        spec: &CorpusSpec,
        out_dir: &Path,
    ) -> anyhow::Result<IndexFixture> {
        let mut args: Vec<OsString> = vec![
            "index".into(),
            "--input".into(),
            spec.input.clone().into(),
            "--shards".into(),
            spec.shards.to_string().into(),
            "--out".into(),
            out_dir.into(),
            "--no-progress".into(),
        ];
        args.extend(spec.extra_args.iter().map(OsString::from));
        binary
            .run(&args, BUILD_LIMIT)?
            .expect_success(&format!("fanout index of {}", spec.input.display()))?;
        let fixture = IndexFixture::open(out_dir)?;
        anyhow::ensure!(
            fixture.shard_count == spec.shards,
            "index.json says {} shards, asked for {}",
            fixture.shard_count,
            spec.shards
        );
        Ok(fixture)
    }

    /// An index already built in `dir`, described by its `index.json`.
    pub fn open(dir: &Path) -> anyhow::Result<IndexFixture> {
        let manifest_path = dir.join("index.json");
        let text = std::fs::read_to_string(&manifest_path)
            .with_context(|| format!("cannot read {}", manifest_path.display()))?;
        let manifest: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", manifest_path.display()))?;
        let number = |field: &str| {
            manifest[field]
                .as_u64()
                .ok_or_else(|| anyhow!("{} has no number {field:?}", manifest_path.display()))
        };
        Ok(IndexFixture {
            dir: dir.to_owned(),
            shard_count: u32::try_from(number("shard_count")?)?,
            doc_count: number("doc_count")?,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn shard_count(&self) -> u32 {
        self.shard_count
    }

    pub fn doc_count(&self) -> u64 {
        self.doc_count
    }

    /// `<dir>/shard-<shard>`, what `fanout leaf --shard-dir` takes.
    pub fn shard_dir(&self, shard: u32) -> PathBuf {
        self.dir.join(format!("shard-{shard}"))
    }
}

/// Hash of everything that decides what a build produces.
fn fingerprint(binary: &FanoutBinary, spec: &CorpusSpec) -> anyhow::Result<u64> {
    let mut hasher = std::hash::DefaultHasher::new();
    for file in [binary.path(), spec.input.as_path()] {
        let metadata =
            std::fs::metadata(file).with_context(|| format!("cannot stat {}", file.display()))?;
        file.hash(&mut hasher);
        metadata.len().hash(&mut hasher);
        metadata.modified()?.hash(&mut hasher);
    }
    spec.shards.hash(&mut hasher);
    spec.extra_args.hash(&mut hasher);
    Ok(hasher.finish())
}

/// Removes old builds of `label` other than `keep` (and abandoned partial builds).
fn remove_stale_builds(cache_root: &Path, label: &str, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(cache_root) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with(&format!("{label}-"))
            || name.starts_with(&format!(".building-{label}-"));
        let age = entry
            .metadata()
            .and_then(|metadata| metadata.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .unwrap_or_default();
        if ours && path != keep && age > STALE_AFTER {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}
