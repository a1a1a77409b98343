//! The JSON manifests of a built index.
//!
//! ```text
//! <out_dir>/index.json          IndexManifest: generation, shard count, documents, one entry per shard
//! <out_dir>/shard-<i>/shard.json ShardManifest: shard id, shard count, generation, documents
//! ```
//!
//! `index.json` is written last by the build: an output directory without it
//! holds no finished index.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::LeafError;

/// File name of the manifest of a whole index, in the build's output directory.
pub const INDEX_MANIFEST_FILE_NAME: &str = "index.json";
/// File name of the manifest of one shard, in the shard's directory.
pub const SHARD_MANIFEST_FILE_NAME: &str = "shard.json";

/// Describes one build of a sharded index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexManifest {
    /// Identifies this build; every shard of it carries the same value.
    pub generation: String,
    pub shard_count: u32,
    pub doc_count: u64,
    /// One entry per shard, in shard id order.
    pub shards: Vec<IndexManifestShard>,
}

/// One shard of an [`IndexManifest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexManifestShard {
    pub shard_id: u32,
    /// The shard's directory, relative to the manifest's directory.
    pub dir: String,
    pub doc_count: u64,
}

/// Describes the shard stored in one shard directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardManifest {
    pub shard_id: u32,
    pub shard_count: u32,
    pub generation: String,
    pub doc_count: u64,
}

/// The directory name of shard `shard_id` inside a build's output directory.
pub fn shard_dir_name(shard_id: u32) -> String {
    format!("shard-{shard_id}")
}

/// Reads and checks `<out_dir>/index.json`.
pub fn read_index_manifest(out_dir: &Path) -> Result<IndexManifest, LeafError> {
    let path = out_dir.join(INDEX_MANIFEST_FILE_NAME);
    let manifest: IndexManifest = read_json(&path)?;
    let invalid = |reason: String| LeafError::Manifest {
        path: path.clone(),
        reason,
    };
    if manifest.shard_count == 0 {
        return Err(invalid("shard_count is 0".into()));
    }
    if manifest.shards.len() != manifest.shard_count as usize {
        return Err(invalid(format!(
            "shard_count is {} but {} shards are listed",
            manifest.shard_count,
            manifest.shards.len()
        )));
    }
    for (position, shard) in manifest.shards.iter().enumerate() {
        if shard.shard_id as usize != position {
            return Err(invalid(format!(
                "shard listed at position {position} has id {}",
                shard.shard_id
            )));
        }
    }
    let listed_docs: u64 = manifest.shards.iter().map(|shard| shard.doc_count).sum();
    if listed_docs != manifest.doc_count {
        return Err(invalid(format!(
            "doc_count is {} but the shards hold {listed_docs}",
            manifest.doc_count
        )));
    }
    Ok(manifest)
}

/// Reads and checks `<shard_dir>/shard.json`.
pub fn read_shard_manifest(shard_dir: &Path) -> Result<ShardManifest, LeafError> {
    let path = shard_dir.join(SHARD_MANIFEST_FILE_NAME);
    let manifest: ShardManifest = read_json(&path)?;
    if manifest.shard_id >= manifest.shard_count {
        return Err(LeafError::Manifest {
            path,
            reason: format!(
                "shard_id {} is not below shard_count {}",
                manifest.shard_id, manifest.shard_count
            ),
        });
    }
    Ok(manifest)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, LeafError> {
    let bytes = std::fs::read(path).map_err(|error| LeafError::io(path, error))?;
    serde_json::from_slice(&bytes).map_err(|error| LeafError::Manifest {
        path: path.to_path_buf(),
        reason: error.to_string(),
    })
}

/// Writes `value` as pretty JSON to `path` through a temporary file and a
/// rename, so readers never see half a manifest.
pub(crate) fn write_json_atomically<T: Serialize>(path: &Path, value: &T) -> Result<(), LeafError> {
    let mut text = serde_json::to_string_pretty(value).map_err(|error| LeafError::Manifest {
        path: path.to_path_buf(),
        reason: error.to_string(),
    })?;
    text.push('\n');
    let temporary = temporary_sibling(path);
    std::fs::write(&temporary, text).map_err(|error| LeafError::io(&temporary, error))?;
    std::fs::rename(&temporary, path).map_err(|error| LeafError::io(path, error))
}

fn temporary_sibling(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest_of_two_shards() -> IndexManifest {
        IndexManifest {
            generation: "g1".into(),
            shard_count: 2,
            doc_count: 5,
            shards: vec![
                IndexManifestShard {
                    shard_id: 0,
                    dir: shard_dir_name(0),
                    doc_count: 2,
                },
                IndexManifestShard {
                    shard_id: 1,
                    dir: shard_dir_name(1),
                    doc_count: 3,
                },
            ],
        }
    }

    #[test]
    fn index_manifest_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = manifest_of_two_shards();
        write_json_atomically(&dir.path().join(INDEX_MANIFEST_FILE_NAME), &manifest).unwrap();
        assert_eq!(read_index_manifest(dir.path()).unwrap(), manifest);
    }

    #[test]
    fn inconsistent_index_manifests_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut manifest = manifest_of_two_shards();
        manifest.doc_count = 6;
        write_json_atomically(&dir.path().join(INDEX_MANIFEST_FILE_NAME), &manifest).unwrap();
        let error = read_index_manifest(dir.path()).unwrap_err();
        assert!(error.to_string().contains("doc_count is 6"), "{error}");
    }

    #[test]
    fn a_missing_manifest_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let error = read_shard_manifest(dir.path()).unwrap_err();
        assert!(
            error.to_string().contains(SHARD_MANIFEST_FILE_NAME),
            "{error}"
        );
    }
}
