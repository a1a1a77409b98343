//! The fanout workspace this binary was built from, when it is still there:
//! so that `cargo run -- up` or a scenario finds the bundled data from any
//! directory, and keeps its indexes in one place (`.fanout/`).

use std::path::{Path, PathBuf};

/// The workspace's folder, if this binary's sources are still beside it.
pub fn workspace_root() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    root.join("Cargo.toml")
        .is_file()
        .then(|| root.to_path_buf())
}

/// Where indexes are kept between runs: `.fanout` in the workspace, else in
/// the current directory.
pub fn default_data_dir() -> PathBuf {
    workspace_root().map_or_else(|| PathBuf::from(".fanout"), |root| root.join(".fanout"))
}

/// `path` if it names a file from here, else the same relative path in the
/// workspace, else `None`.
pub fn find_in_workspace(path: &Path) -> Option<PathBuf> {
    if path.is_file() {
        return Some(path.to_path_buf());
    }
    workspace_root()
        .filter(|_| path.is_relative())
        .map(|root| root.join(path))
        .filter(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_bundled_corpus_from_the_workspace() {
        // Tests run in cluster/, where data/ does not exist: the workspace lookup finds it.
        let corpus = find_in_workspace(Path::new("data/debian-descriptions.jsonl.gz")).unwrap();
        assert!(corpus.is_file(), "{}", corpus.display());
        assert!(find_in_workspace(Path::new("data/no-such-corpus.jsonl")).is_none());
    }

    #[test]
    fn the_default_data_dir_is_in_the_workspace() {
        let data_dir = default_data_dir();
        assert!(data_dir.ends_with(".fanout"));
        assert!(data_dir.parent().unwrap().join("Cargo.toml").is_file());
    }
}
