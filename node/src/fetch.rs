//! Image blobs fetched from the sites that hold them (docs/architecture.md, "Image fetch").
//!
//! The peer core asks for a blob with the list of its holders; this module
//! spreads the chunk requests over every holder it reaches (a window of
//! [`WINDOW`] requests in flight per holder, so two holders serve about twice
//! the rate), checks each chunk against the catalog's hash before storing it,
//! and asks another holder when one fails or answers wrong. Chunks are stored
//! as they arrive, so a fetch interrupted by a restart resumes with the chunks
//! still missing. Generic over the request id so that tests need no network.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

use atoll_crdt::{Image, SiteId};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::store::Store;

/// Chunk requests in flight per holder.
pub const WINDOW: usize = 4;
/// Blobs fetched at once; more wait their turn.
pub const MAX_ACTIVE: usize = 8;
/// Attempts per chunk, across holders, before the fetch fails.
const MAX_TRIES: u32 = 6;
/// A fetch that made no progress for this long fails.
pub const STALL: Duration = Duration::from_secs(60);
/// A fetch none of whose holders is reachable fails after this long, so that
/// the instances waiting on it say so (the core fetches again when a holder
/// connects: docs/architecture.md, "Image fetch").
pub const UNREACHABLE: Duration = Duration::from_secs(5);

/// Where chunk requests go: the peer network, or a test double.
pub trait Source<R> {
    fn reaches(&mut self, site: &SiteId) -> bool;
    fn request(&mut self, site: &SiteId, hash: &str) -> Option<R>;
}

/// A blob fetch that ended: its digest and the outcome.
pub type Finished = (String, Result<(), String>);

struct Fetch {
    image: Image,
    holders: Vec<SiteId>,
    todo: VecDeque<usize>,
    tries: Vec<u32>,
    inflight: HashMap<SiteId, usize>,
    done: usize,
    bytes: u64,
    started: Instant,
    progress_at: Instant,
    /// Since when no holder was reachable and nothing was in flight.
    unreachable_since: Option<Instant>,
}

/// An answered chunk request, to check and store.
#[derive(Debug)]
pub struct Arrived {
    digest: String,
    index: usize,
    holder: SiteId,
    hash: String,
    max: u64,
}

impl Arrived {
    /// Verifies the answer against the chunk's hash and stores it; returns its length.
    pub fn check(&self, store: &dyn Store, result: Result<Vec<u8>, String>) -> Result<u64, String> {
        let (i, holder) = (self.index, &self.holder);
        match result {
            Ok(bytes) if bytes.is_empty() => Err(format!("{holder} does not hold chunk {i}")),
            Ok(bytes) if bytes.len() as u64 > self.max => Err(format!("chunk {i} from {holder} is too long")),
            Ok(bytes) if hex::encode(Sha256::digest(&bytes)) != self.hash => {
                Err(format!("chunk {i} from {holder} does not match its hash"))
            }
            Ok(bytes) => {
                store.put_chunk(&self.hash, &bytes).map(|_| bytes.len() as u64).map_err(|e| e.to_string())
            }
            Err(e) => Err(format!("chunk {i} from {holder}: {e}")),
        }
    }
}

/// What `GET /v1/network` shows of a fetch under way.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Progress {
    pub image: String,
    pub digest: String,
    pub chunks_done: usize,
    pub chunks: usize,
    pub bytes: u64,
    pub holders: Vec<SiteId>,
    pub seconds: f64,
}

pub struct Fetches<R> {
    active: HashMap<String, Fetch>,
    queued: VecDeque<(Image, Vec<SiteId>)>,
    requests: HashMap<R, (String, usize, SiteId)>,
}

impl<R: Hash + Eq + Copy> Default for Fetches<R> {
    fn default() -> Self {
        Fetches { active: HashMap::new(), queued: VecDeque::new(), requests: HashMap::new() }
    }
}

impl<R: Hash + Eq + Copy> Fetches<R> {
    /// Begins fetching a blob; finishes at once when every chunk is stored already.
    pub fn start(&mut self, store: &dyn Store, image: Image, holders: Vec<SiteId>) -> Option<Finished> {
        if self.active.contains_key(&image.digest)
            || self.queued.iter().any(|(i, _)| i.digest == image.digest)
        {
            return None;
        }
        // The manifest came from a peer's document: a chunk size of 0, a
        // hash that is a path, or a size its chunks do not cover is refused.
        if let Err(why) = atoll_proto::blob::check(&image.digest, image.size, image.chunk_size, &image.chunks)
        {
            return Some((
                image.digest,
                Err(format!("the catalog's manifest of this image is unusable: {why}")),
            ));
        }
        if self.active.len() >= MAX_ACTIVE {
            self.queued.push_back((image, holders));
            return None;
        }
        let mut todo = VecDeque::new();
        for (i, hash) in image.chunks.iter().enumerate() {
            match store.has_chunk(hash) {
                Ok(true) => {}
                Ok(false) => todo.push_back(i),
                Err(e) => return Some((image.digest, Err(e.to_string()))),
            }
        }
        let resumed = image.chunks.len() - todo.len();
        tracing::info!(image = %image.name, digest = %image.digest, chunks = image.chunks.len(), resumed, ?holders, "fetching image");
        let now = Instant::now();
        let fetch = Fetch {
            tries: vec![0; image.chunks.len()],
            image,
            holders,
            todo,
            inflight: HashMap::new(),
            done: resumed,
            bytes: 0,
            started: now,
            progress_at: now,
            unreachable_since: None,
        };
        let digest = fetch.image.digest.clone();
        self.active.insert(digest.clone(), fetch);
        self.finish_if_complete(store, &digest)
    }

    /// Sends as many chunk requests as the windows allow, spread over the holders.
    pub fn pump(&mut self, source: &mut impl Source<R>) {
        for (digest, f) in self.active.iter_mut() {
            let reachable: Vec<SiteId> = f.holders.iter().filter(|h| source.reaches(h)).cloned().collect();
            if reachable.is_empty() && f.inflight.values().all(|n| *n == 0) {
                f.unreachable_since.get_or_insert_with(Instant::now);
            } else {
                f.unreachable_since = None;
            }
            'fill: loop {
                let mut sent = false;
                for h in &reachable {
                    if f.todo.is_empty() {
                        break 'fill;
                    }
                    let n = f.inflight.entry(h.clone()).or_default();
                    if *n >= WINDOW {
                        continue;
                    }
                    let Some(i) = f.todo.pop_front() else { break 'fill };
                    match source.request(h, &f.image.chunks[i]) {
                        Some(r) => {
                            *n += 1;
                            self.requests.insert(r, (digest.clone(), i, h.clone()));
                            sent = true;
                        }
                        None => f.todo.push_front(i),
                    }
                }
                if !sent {
                    break;
                }
            }
        }
    }

    /// A holder answered (or the request failed): verifies and stores the
    /// chunk in one go (the daemon splits the steps to hash off its loop).
    #[cfg(test)]
    pub fn on_chunk(
        &mut self,
        store: &dyn Store,
        request: R,
        result: Result<Vec<u8>, String>,
    ) -> Option<Finished> {
        let arrived = self.arrived(request)?;
        let verdict = arrived.check(store, result);
        self.settle(store, arrived, verdict)
    }

    /// The chunk a request was for, once its answer arrived.
    pub fn arrived(&mut self, request: R) -> Option<Arrived> {
        let (digest, i, holder) = self.requests.remove(&request)?;
        let f = self.active.get_mut(&digest)?;
        if let Some(n) = f.inflight.get_mut(&holder) {
            *n = n.saturating_sub(1);
        }
        Some(Arrived { hash: f.image.chunks[i].clone(), max: f.image.chunk_size, digest, index: i, holder })
    }

    /// Records a checked chunk (its length, or why it was refused).
    pub fn settle(
        &mut self,
        store: &dyn Store,
        a: Arrived,
        verdict: Result<u64, String>,
    ) -> Option<Finished> {
        let (digest, i, holder) = (a.digest, a.index, a.holder);
        let f = self.active.get_mut(&digest)?;
        match verdict {
            Ok(len) => {
                f.done += 1;
                f.bytes += len;
                f.progress_at = Instant::now();
                self.finish_if_complete(store, &digest)
            }
            Err(why) => {
                tracing::warn!(image = %f.image.name, "{why}; asking again");
                f.tries[i] += 1;
                if f.tries[i] >= MAX_TRIES {
                    return self.fail(&digest, format!("{why} (after {MAX_TRIES} attempts)"));
                }
                // Try the next holder first: put the chunk back at the front
                // and stop asking a holder that said it lacks the blob.
                if f.holders.len() > 1 && why.contains("does not hold") {
                    f.holders.retain(|h| h != &holder);
                }
                f.todo.push_front(i);
                None
            }
        }
    }

    /// Fails fetches that made no progress for [`STALL`], or that had no
    /// holder within reach for [`UNREACHABLE`].
    pub fn check_stalls(&mut self) -> Vec<Finished> {
        let stalled: Vec<(String, String)> = self
            .active
            .iter()
            .filter_map(|(d, f)| {
                let holders: Vec<&str> = f.holders.iter().map(|h| h.as_str()).collect();
                let holders = holders.join(", ");
                if f.unreachable_since.is_some_and(|t| t.elapsed() > UNREACHABLE) {
                    Some((d.clone(), format!("no holder is reachable (held on {holders})")))
                } else if f.progress_at.elapsed() > STALL {
                    Some((d.clone(), format!("no progress for {} s from {holders}", STALL.as_secs())))
                } else {
                    None
                }
            })
            .collect();
        stalled.into_iter().filter_map(|(d, why)| self.fail(&d, why)).collect()
    }

    pub fn progress(&self) -> Vec<Progress> {
        self.active
            .values()
            .map(|f| Progress {
                image: format!("{}/{}", f.image.project, f.image.name),
                digest: f.image.digest.clone(),
                chunks_done: f.done,
                chunks: f.image.chunks.len(),
                bytes: f.bytes,
                holders: f.holders.clone(),
                seconds: f.started.elapsed().as_secs_f64(),
            })
            .collect()
    }

    /// Blobs waiting for a free slot, to start after one ended.
    pub fn next_queued(&mut self) -> Option<(Image, Vec<SiteId>)> {
        (self.active.len() < MAX_ACTIVE).then(|| self.queued.pop_front()).flatten()
    }

    fn fail(&mut self, digest: &str, why: String) -> Option<Finished> {
        self.active.remove(digest)?;
        self.requests.retain(|_, (d, _, _)| d != digest);
        Some((digest.to_owned(), Err(why)))
    }

    fn finish_if_complete(&mut self, store: &dyn Store, digest: &str) -> Option<Finished> {
        let f = self.active.get(digest)?;
        if f.done < f.image.chunks.len() {
            return None;
        }
        let f = self.active.remove(digest)?;
        let secs = f.started.elapsed().as_secs_f64();
        let result =
            store.put_blob(digest, &f.image.chunks).and_then(|()| store.flush()).map_err(|e| e.to_string());
        tracing::info!(image = %f.image.name, bytes = f.bytes, secs, "image fetched");
        Some((digest.to_owned(), result))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::store::Disk;

    /// Holders answering from a map of chunks; some may lie.
    struct Holders {
        reach: HashSet<SiteId>,
        next: u64,
        sent: Vec<(u64, SiteId, String)>,
    }

    impl Source<u64> for Holders {
        fn reaches(&mut self, site: &SiteId) -> bool {
            self.reach.contains(site)
        }
        fn request(&mut self, site: &SiteId, hash: &str) -> Option<u64> {
            self.next += 1;
            self.sent.push((self.next, site.clone(), hash.to_owned()));
            Some(self.next)
        }
    }

    fn site(s: &str) -> SiteId {
        SiteId::new(s).unwrap()
    }

    fn blob(n: usize) -> (Image, Vec<Vec<u8>>) {
        let chunks: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; 100]).collect();
        let mut whole = Sha256::new();
        for c in &chunks {
            whole.update(c);
        }
        let image = Image {
            name: "img".into(),
            project: "p".into(),
            digest: format!("sha256:{}", hex::encode(whole.finalize())),
            size: (n * 100) as u64,
            format: atoll_crdt::ImageFormat::Raw,
            chunk_size: 100,
            chunks: chunks.iter().map(|c| hex::encode(Sha256::digest(c))).collect(),
            visibility: atoll_crdt::Visibility::Private,
            created_by: "u".into(),
            created_at: 0,
            seal: Default::default(),
        };
        (image, chunks)
    }

    /// A store in a directory that lives as long as the returned guard.
    fn store() -> (tempfile::TempDir, Disk) {
        let dir = tempfile::tempdir().unwrap();
        let store = Disk::open(dir.path()).unwrap();
        (dir, store)
    }

    fn holders(names: &[&str]) -> Holders {
        Holders { reach: names.iter().map(|n| site(n)).collect(), next: 0, sent: Vec::new() }
    }

    #[test]
    fn chunks_come_from_every_holder_and_are_verified() {
        let (_dir, store) = store();
        let (image, chunks) = blob(20);
        let mut fetches: Fetches<u64> = Fetches::default();
        let mut net = holders(&["a", "b"]);
        assert!(fetches.start(&store, image.clone(), vec![site("a"), site("b")]).is_none());
        let mut finished = None;
        let mut lied = false;
        while finished.is_none() {
            fetches.pump(&mut net);
            let batch = std::mem::take(&mut net.sent);
            assert!(!batch.is_empty(), "requests keep flowing");
            assert!(batch.iter().filter(|(_, h, _)| h == &site("a")).count() <= WINDOW);
            for (r, holder, hash) in batch {
                let i = image.chunks.iter().position(|c| *c == hash).unwrap();
                // b corrupts chunk 3 once: it must be asked again, never stored.
                let bytes = if holder == site("b") && i == 3 && !lied {
                    lied = true;
                    vec![0xff; 100]
                } else {
                    chunks[i].clone()
                };
                if let Some(f) = fetches.on_chunk(&store, r, Ok(bytes)) {
                    finished = Some(f);
                }
            }
        }
        assert_eq!(finished, Some((image.digest.clone(), Ok(()))));
        assert!(lied);
        assert_eq!(store.blob(&image.digest).unwrap().unwrap(), image.chunks);
        for (i, c) in image.chunks.iter().enumerate() {
            assert_eq!(store.get_chunk(c).unwrap().unwrap(), chunks[i]);
        }
    }

    #[test]
    fn an_interrupted_fetch_resumes_with_the_missing_chunks_only() {
        let (_dir, store) = store();
        let (image, chunks) = blob(10);
        for (hash, bytes) in image.chunks.iter().zip(&chunks).take(6) {
            store.put_chunk(hash, bytes).unwrap();
        }
        let mut fetches: Fetches<u64> = Fetches::default();
        let mut net = holders(&["a"]);
        fetches.start(&store, image.clone(), vec![site("a")]);
        fetches.pump(&mut net);
        let asked: HashSet<String> = net.sent.iter().map(|(_, _, h)| h.clone()).collect();
        assert_eq!(asked.len(), WINDOW);
        assert!(asked.iter().all(|h| image.chunks[6..].contains(h)), "stored chunks are not asked again");
        // Everything already stored: done at once.
        for (hash, bytes) in image.chunks.iter().zip(&chunks).skip(6) {
            store.put_chunk(hash, bytes).unwrap();
        }
        let mut again: Fetches<u64> = Fetches::default();
        assert_eq!(again.start(&store, image.clone(), vec![site("a")]), Some((image.digest.clone(), Ok(()))));
    }

    #[test]
    fn a_fetch_fails_after_repeated_bad_answers() {
        let (_dir, store) = store();
        let (image, _) = blob(1);
        let mut fetches: Fetches<u64> = Fetches::default();
        let mut net = holders(&["a"]);
        fetches.start(&store, image.clone(), vec![site("a")]);
        let mut end = None;
        for _ in 0..MAX_TRIES {
            fetches.pump(&mut net);
            let (r, _, _) = net.sent.pop().expect("asked again");
            end = fetches.on_chunk(&store, r, Ok(vec![1, 2, 3]));
        }
        let (digest, result) = end.expect("gave up");
        assert_eq!(digest, image.digest);
        assert!(result.unwrap_err().contains("does not match"));
        assert!(store.blob(&image.digest).unwrap().is_none());
    }

    #[test]
    fn a_fetch_with_no_holder_in_reach_fails_soon_and_says_so() {
        let (_dir, store) = store();
        let (image, _) = blob(2);
        let mut fetches: Fetches<u64> = Fetches::default();
        let mut net = holders(&[]);
        assert!(fetches.start(&store, image.clone(), vec![site("a")]).is_none());
        fetches.pump(&mut net);
        assert!(fetches.check_stalls().is_empty(), "a holder may come back within the grace");
        let f = fetches.active.get_mut(&image.digest).unwrap();
        f.unreachable_since = Some(Instant::now() - UNREACHABLE - Duration::from_secs(1));
        let failed = fetches.check_stalls();
        assert_eq!(failed.len(), 1);
        let why = failed[0].1.as_ref().unwrap_err();
        assert!(why.contains("no holder is reachable") && why.contains("a"), "{why}");
        // Back in reach before the grace ends: nothing fails.
        assert!(fetches.start(&store, image.clone(), vec![site("a")]).is_none());
        fetches.pump(&mut net);
        net.reach.insert(site("a"));
        fetches.pump(&mut net);
        assert!(fetches.active[&image.digest].unreachable_since.is_none());
    }
}
