//! Durable storage behind a small trait: document logs and content-addressed
//! image chunks. Document logs and blob indexes live in sled; chunks are files
//! named by their hash (`<dir>/chunks/ab/abcd…`), because sled's writes of
//! 4 MiB values capped image fetches (docs/benchmarks.md). The trait keeps
//! both out of the rest of the daemon.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use atoll_proto::DocId;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the data dir {0} is in use by another atoll process")]
    Locked(String),
    #[error("chunk file: {0}")]
    Io(#[from] std::io::Error),
}

/// How long `open` waits for the database lock: a handle dropped a moment ago
/// releases it when sled's flusher thread ends.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What the daemon keeps on disk. Every write is durable once [`Store::flush`] returns.
pub trait Store: Send + Sync + 'static {
    /// A document's saved bytes: its last snapshot followed by every append since.
    fn load_doc(&self, doc: &DocId) -> Result<Option<Vec<u8>>, StoreError>;
    fn append_doc(&self, doc: &DocId, bytes: &[u8]) -> Result<(), StoreError>;
    /// Atomically replaces a document's log by one snapshot.
    fn replace_doc(&self, doc: &DocId, bytes: &[u8]) -> Result<(), StoreError>;
    /// Atomically replaces a document's ledger (a new epoch's signatures).
    fn replace_sigs(&self, doc: &DocId, bytes: &[u8]) -> Result<(), StoreError>;
    /// Every document with a log.
    fn docs(&self) -> Result<Vec<DocId>, StoreError>;
    /// Appends signature records to a document's ledger (docs/architecture.md, "Provenance").
    fn append_sigs(&self, doc: &DocId, bytes: &[u8]) -> Result<(), StoreError>;
    /// A document's ledger: every record appended, in order (empty if none).
    fn load_sigs(&self, doc: &DocId) -> Result<Vec<u8>, StoreError>;
    /// Stores a chunk under its sha256 (hex); returns false if it was already there.
    fn put_chunk(&self, hash: &str, bytes: &[u8]) -> Result<bool, StoreError>;
    fn get_chunk(&self, hash: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn has_chunk(&self, hash: &str) -> Result<bool, StoreError>;
    fn delete_chunks(&self, hashes: &[String]) -> Result<(), StoreError>;
    /// The chunk list of a whole blob, by its digest.
    fn put_blob(&self, digest: &str, chunks: &[String]) -> Result<(), StoreError>;
    fn blob(&self, digest: &str) -> Result<Option<Vec<String>>, StoreError>;
    fn delete_blob(&self, digest: &str) -> Result<(), StoreError>;
    fn flush(&self) -> Result<(), StoreError>;
}

/// The daemon's store: sled for documents and indexes, files for chunks.
pub struct Disk {
    db: sled::Db,
    docs: sled::Tree,
    /// Each document's signatures, appended like its log, never compacted.
    sigs: sled::Tree,
    /// Chunks stored in sled by earlier versions; read and deleted, never written.
    chunks: sled::Tree,
    blobs: sled::Tree,
    chunk_dir: PathBuf,
    /// Chunk files written since the last flush, to sync then.
    unsynced: Mutex<Vec<PathBuf>>,
}

/// sled's default page cache is 1 GiB; an edge site has better uses for memory.
const CACHE_BYTES: u64 = 64 << 20;

impl Disk {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let config = sled::Config::new().path(dir).cache_capacity(CACHE_BYTES);
        let since = std::time::Instant::now();
        let db = loop {
            match config.open() {
                Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                    if since.elapsed() > LOCK_WAIT {
                        return Err(StoreError::Locked(dir.display().to_string()));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other?,
            }
        };
        let chunk_dir = dir.join("chunks");
        std::fs::create_dir_all(&chunk_dir)?;
        Ok(Disk {
            docs: db.open_tree("docs")?,
            sigs: db.open_tree("sigs")?,
            chunks: db.open_tree("chunks")?,
            blobs: db.open_tree("blobs")?,
            db,
            chunk_dir,
            unsynced: Mutex::new(Vec::new()),
        })
    }

    /// The file of a chunk; None for a name that is not a sha256 hex (it could
    /// otherwise name a path outside the chunk directory).
    fn chunk_path(&self, hash: &str) -> Option<PathBuf> {
        let hex = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        hex.then(|| self.chunk_dir.join(&hash[..2]).join(hash))
    }

    fn bad_hash(hash: &str) -> StoreError {
        StoreError::Corrupt(format!("{hash:?} is not a chunk hash"))
    }

    fn prefix(doc: &DocId) -> Vec<u8> {
        let mut p = doc.to_string().into_bytes();
        p.push(0);
        p
    }

    fn next_key(tree: &sled::Tree, doc: &DocId) -> Result<Vec<u8>, StoreError> {
        let prefix = Self::prefix(doc);
        let seq = match tree.scan_prefix(&prefix).next_back() {
            Some(entry) => {
                let (k, _) = entry?;
                let tail: [u8; 8] = k[prefix.len()..]
                    .try_into()
                    .map_err(|_| StoreError::Corrupt(format!("bad log key for {doc}")))?;
                u64::from_be_bytes(tail) + 1
            }
            None => 0,
        };
        let mut key = prefix;
        key.extend_from_slice(&seq.to_be_bytes());
        Ok(key)
    }
    /// Replaces a document's entries in `tree` by one, atomically.
    fn replace(tree: &sled::Tree, doc: &DocId, bytes: &[u8]) -> Result<(), StoreError> {
        let prefix = Self::prefix(doc);
        let mut batch = sled::Batch::default();
        let mut last = None;
        for entry in tree.scan_prefix(&prefix) {
            let (k, _) = entry?;
            batch.remove(k.clone());
            last = Some(k);
        }
        // The snapshot takes the place of the newest entry so keys keep growing.
        let key = last.map(|k| k.to_vec()).unwrap_or_else(|| {
            let mut k = prefix.clone();
            k.extend_from_slice(&0u64.to_be_bytes());
            k
        });
        batch.insert(key, bytes);
        tree.apply_batch(batch)?;
        Ok(())
    }
}

impl Store for Disk {
    fn load_doc(&self, doc: &DocId) -> Result<Option<Vec<u8>>, StoreError> {
        let mut out = Vec::new();
        let mut any = false;
        for entry in self.docs.scan_prefix(Self::prefix(doc)) {
            let (_, v) = entry?;
            out.extend_from_slice(&v);
            any = true;
        }
        Ok(any.then_some(out))
    }

    fn append_doc(&self, doc: &DocId, bytes: &[u8]) -> Result<(), StoreError> {
        // Only the event loop writes documents, so read-then-insert does not race.
        let key = Self::next_key(&self.docs, doc)?;
        self.docs.insert(key, bytes)?;
        Ok(())
    }

    fn append_sigs(&self, doc: &DocId, bytes: &[u8]) -> Result<(), StoreError> {
        let key = Self::next_key(&self.sigs, doc)?;
        self.sigs.insert(key, bytes)?;
        Ok(())
    }

    fn load_sigs(&self, doc: &DocId) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::new();
        for entry in self.sigs.scan_prefix(Self::prefix(doc)) {
            out.extend_from_slice(&entry?.1);
        }
        Ok(out)
    }

    fn replace_doc(&self, doc: &DocId, bytes: &[u8]) -> Result<(), StoreError> {
        Self::replace(&self.docs, doc, bytes)
    }

    fn replace_sigs(&self, doc: &DocId, bytes: &[u8]) -> Result<(), StoreError> {
        Self::replace(&self.sigs, doc, bytes)
    }
    fn docs(&self) -> Result<Vec<DocId>, StoreError> {
        let mut out: Vec<DocId> = Vec::new();
        for entry in self.docs.iter() {
            let (k, _) = entry?;
            let name = k.split(|b| *b == 0).next().unwrap_or_default();
            let name = std::str::from_utf8(name).map_err(|_| StoreError::Corrupt("document name".into()))?;
            let id = match name.strip_prefix("site/") {
                None if name == "realm" => DocId::Realm,
                Some(site) => DocId::Site(
                    atoll_crdt::SiteId::new(site).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                ),
                None => return Err(StoreError::Corrupt(format!("unknown document {name:?}"))),
            };
            if out.last() != Some(&id) {
                out.push(id);
            }
        }
        Ok(out)
    }

    fn put_chunk(&self, hash: &str, bytes: &[u8]) -> Result<bool, StoreError> {
        let path = self.chunk_path(hash).ok_or_else(|| Self::bad_hash(hash))?;
        if path.exists() || self.chunks.contains_key(hash)? {
            return Ok(false);
        }
        std::fs::create_dir_all(path.parent().unwrap_or(&self.chunk_dir))?;
        // Written aside and renamed: a reader never sees half a chunk.
        let tmp = path.with_extension("partial");
        std::fs::File::create(&tmp)?.write_all(bytes)?;
        std::fs::rename(&tmp, &path)?;
        self.unsynced.lock().map_err(|_| StoreError::Corrupt("chunk list poisoned".into()))?.push(path);
        Ok(true)
    }

    fn get_chunk(&self, hash: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.chunk_path(hash).ok_or_else(|| Self::bad_hash(hash))?;
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match self.chunks.get(hash)? {
                Some(v) => v.to_vec(),
                None => return Ok(None),
            },
            Err(e) => return Err(e.into()),
        };
        // Verify on read: a flipped bit on disk must not reach a workload.
        if hex::encode(Sha256::digest(&bytes)) != hash {
            return Err(StoreError::Corrupt(format!("chunk {hash} does not match its hash")));
        }
        Ok(Some(bytes))
    }

    /// Whether a sound copy is stored: a chunk cut short by a crash before the
    /// flush that would have synced it counts as missing (and is removed).
    fn has_chunk(&self, hash: &str) -> Result<bool, StoreError> {
        match self.get_chunk(hash) {
            Ok(found) => Ok(found.is_some()),
            Err(StoreError::Corrupt(_)) => {
                self.delete_chunks(&[hash.to_owned()])?;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn delete_chunks(&self, hashes: &[String]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for h in hashes {
            batch.remove(h.as_bytes());
            if let Some(path) = self.chunk_path(h) {
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                    _ => {}
                }
            }
        }
        self.chunks.apply_batch(batch)?;
        Ok(())
    }

    fn put_blob(&self, digest: &str, chunks: &[String]) -> Result<(), StoreError> {
        self.blobs.insert(digest, chunks.join(",").into_bytes())?;
        Ok(())
    }

    fn blob(&self, digest: &str) -> Result<Option<Vec<String>>, StoreError> {
        Ok(self.blobs.get(digest)?.map(|v| {
            String::from_utf8_lossy(&v).split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect()
        }))
    }

    fn delete_blob(&self, digest: &str) -> Result<(), StoreError> {
        self.blobs.remove(digest)?;
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        let files = std::mem::take(
            &mut *self.unsynced.lock().map_err(|_| StoreError::Corrupt("chunk list poisoned".into()))?,
        );
        let mut dirs: Vec<PathBuf> = Vec::new();
        for f in &files {
            match std::fs::File::open(f) {
                Ok(file) => file.sync_all()?,
                // Deleted since it was written.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            }
            if let Some(d) = f.parent()
                && !dirs.iter().any(|x| x == d)
            {
                dirs.push(d.to_owned());
            }
        }
        // The renames are durable once their directories are.
        for d in dirs {
            std::fs::File::open(d)?.sync_all()?;
        }
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_log_appends_and_compacts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Disk::open(dir.path()).unwrap();
        let doc = DocId::Realm;
        assert!(store.load_doc(&doc).unwrap().is_none());
        store.append_doc(&doc, b"ab").unwrap();
        store.append_doc(&doc, b"cd").unwrap();
        // Another document with a prefix-sharing name stays apart.
        let other = DocId::Site(atoll_crdt::SiteId::new("realm").unwrap());
        store.append_doc(&other, b"zz").unwrap();
        assert_eq!(store.load_doc(&doc).unwrap().unwrap(), b"abcd");
        store.replace_doc(&doc, b"ABCD").unwrap();
        store.append_doc(&doc, b"e").unwrap();
        assert_eq!(store.load_doc(&doc).unwrap().unwrap(), b"ABCDe");
        store.flush().unwrap();
        drop(store);
        let store = Disk::open(dir.path()).unwrap();
        assert!(matches!(Disk::open(dir.path()), Err(StoreError::Locked(_))), "one process per data dir");
        assert_eq!(store.load_doc(&doc).unwrap().unwrap(), b"ABCDe");
        assert_eq!(store.load_doc(&other).unwrap().unwrap(), b"zz");
        assert_eq!(store.docs().unwrap(), vec![DocId::Realm, other.clone()]);
        store.append_sigs(&doc, b"s1").unwrap();
        store.append_sigs(&doc, b"s2").unwrap();
        assert_eq!(store.load_sigs(&doc).unwrap(), b"s1s2");
        assert!(store.load_sigs(&other).unwrap().is_empty());
    }

    #[test]
    fn chunks_are_content_addressed_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let store = Disk::open(dir.path()).unwrap();
        let hash = hex::encode(Sha256::digest(b"hello"));
        assert!(store.put_chunk(&hash, b"hello").unwrap());
        assert!(!store.put_chunk(&hash, b"hello").unwrap());
        assert_eq!(store.get_chunk(&hash).unwrap().unwrap(), b"hello");
        store.put_chunk(&"0".repeat(64), b"lies").unwrap();
        assert!(matches!(store.get_chunk(&"0".repeat(64)), Err(StoreError::Corrupt(_))));
        assert!(!store.has_chunk(&"0".repeat(64)).unwrap(), "a bad copy counts as missing");
        store.flush().unwrap();
        store.delete_chunks(std::slice::from_ref(&hash)).unwrap();
        assert!(store.get_chunk(&hash).unwrap().is_none());
        // Names that are not hashes never become paths.
        assert!(store.put_chunk("../../etc/passwd", b"x").is_err());
        assert!(store.get_chunk("../x").is_err());
    }

    #[test]
    fn chunks_stored_in_sled_by_earlier_versions_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Disk::open(dir.path()).unwrap();
        let hash = hex::encode(Sha256::digest(b"old"));
        store.chunks.insert(hash.as_bytes(), &b"old"[..]).unwrap();
        assert_eq!(store.get_chunk(&hash).unwrap().unwrap(), b"old");
        assert!(store.has_chunk(&hash).unwrap());
        assert!(!store.put_chunk(&hash, b"old").unwrap());
        store.delete_chunks(std::slice::from_ref(&hash)).unwrap();
        assert!(!store.has_chunk(&hash).unwrap());
    }
}
