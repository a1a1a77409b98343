//! A shard directory opened read-only: a leaf never writes its index, and
//! must serve one on a read-only mount (a container's volume mounted `:ro`,
//! a Kubernetes read-only volume). tantivy's `MmapDirectory` would create a
//! lock file (`.tantivy-meta.lock`) each time a reader loads the segments,
//! to keep a concurrent writer from deleting them meanwhile; a finished
//! fanout build has no writer, so [`ReadOnlyDirectory`] grants that lock
//! without touching the disk and refuses every write.

use std::io;
use std::path::Path;
use std::sync::Arc;

use tantivy::directory::error::{DeleteError, LockError, OpenReadError, OpenWriteError};
use tantivy::directory::{
    Directory, DirectoryLock, FileHandle, INDEX_WRITER_LOCK, Lock, MmapDirectory, WatchCallback,
    WatchHandle, WritePtr,
};

/// `MmapDirectory` for reading; no writes, no lock files.
#[derive(Debug, Clone)]
pub struct ReadOnlyDirectory {
    inner: MmapDirectory,
}

impl ReadOnlyDirectory {
    pub fn open(dir: &Path) -> tantivy::Result<ReadOnlyDirectory> {
        Ok(ReadOnlyDirectory {
            inner: MmapDirectory::open(dir)?,
        })
    }
}

fn read_only(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("{}: a leaf opens its shard read-only", path.display()),
    )
}

impl Directory for ReadOnlyDirectory {
    fn get_file_handle(&self, path: &Path) -> Result<Arc<dyn FileHandle>, OpenReadError> {
        self.inner.get_file_handle(path)
    }

    fn delete(&self, path: &Path) -> Result<(), DeleteError> {
        Err(DeleteError::IoError {
            io_error: Arc::new(read_only(path)),
            filepath: path.to_owned(),
        })
    }

    fn exists(&self, path: &Path) -> Result<bool, OpenReadError> {
        self.inner.exists(path)
    }

    fn open_write(&self, path: &Path) -> Result<WritePtr, OpenWriteError> {
        Err(OpenWriteError::IoError {
            io_error: Arc::new(read_only(path)),
            filepath: path.to_owned(),
        })
    }

    fn atomic_read(&self, path: &Path) -> Result<Vec<u8>, OpenReadError> {
        self.inner.atomic_read(path)
    }

    fn atomic_write(&self, path: &Path, _data: &[u8]) -> io::Result<()> {
        Err(read_only(path))
    }

    fn sync_directory(&self) -> io::Result<()> {
        Ok(())
    }

    fn acquire_lock(&self, lock: &Lock) -> Result<DirectoryLock, LockError> {
        if lock.filepath == INDEX_WRITER_LOCK.filepath {
            return Err(LockError::IoError(Arc::new(read_only(&lock.filepath))));
        }
        // Readers' locks: nothing writes a finished build, so there is no
        // one to exclude.
        Ok(DirectoryLock::from(Box::new(())))
    }

    fn watch(&self, _watch_callback: WatchCallback) -> tantivy::Result<WatchHandle> {
        // The index never changes while a leaf serves it.
        Ok(WatchHandle::empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tantivy::directory::META_LOCK;
    use tantivy::schema::{STORED, Schema, TEXT, Value};
    use tantivy::{Index, TantivyDocument, doc};

    #[test]
    fn opens_and_searches_an_index_without_writing_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut schema = Schema::builder();
        let title = schema.add_text_field("title", TEXT | STORED);
        let index = Index::create_in_dir(dir.path(), schema.build()).unwrap();
        let mut writer = index.writer_with_num_threads(1, 15_000_000).unwrap();
        writer.add_document(doc!(title => "read only")).unwrap();
        writer.commit().unwrap();
        drop(writer);
        drop(index);
        let listing = || {
            let mut names: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|entry| entry.unwrap().file_name())
                .collect();
            names.sort();
            names
        };
        let before = listing();

        let directory = ReadOnlyDirectory::open(dir.path()).unwrap();
        // The lock a reader takes while loading segments: granted, with no
        // lock file (MmapDirectory would hold `.tantivy-meta.lock` now).
        let lock = directory.acquire_lock(&META_LOCK).unwrap();
        assert_eq!(listing(), before, "taking the lock wrote nothing");
        drop(lock);

        let opened = Index::open(directory).unwrap();
        let reader = opened.reader().unwrap();
        let searcher = reader.searcher();
        assert_eq!(searcher.num_docs(), 1);
        let stored: TantivyDocument = searcher.doc(tantivy::DocAddress::new(0, 0)).unwrap();
        let stored_title = stored.get_first(title).and_then(|value| value.as_str());
        assert_eq!(stored_title, Some("read only"));
        assert!(
            opened.writer::<TantivyDocument>(15_000_000).is_err(),
            "no writer on a read-only directory"
        );
        assert_eq!(listing(), before, "no file was made");
    }
}
