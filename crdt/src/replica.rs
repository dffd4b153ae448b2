//! The automerge document behind a [`crate::Doc`], which replicas in one
//! process may share.
//!
//! A daemon holds one replica of each document, so sharing never happens
//! there: every body is its own. The simulator runs thousands of sites in
//! one process, and each holds the realm (which lists every member): at
//! 10,000 sites, 10,000 copies of a document of 10,000 members. After
//! [`share_replicas`], replicas that applied the same change to the same
//! heads, or reached the same heads by other paths, point to one automerge
//! document, and a replica copies it out before it changes it (docs/architecture.md,
//! "Simulator"). Equal heads are equal documents, so no replica sees
//! anything but what it holds.
//!
//! What a replica owns stays its own: its actor (whose name its changes
//! carry), what it has saved, its signatures and sync states ([`crate::Doc`]).

use std::any::Any;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use automerge::{ActorId, AutoCommit, ChangeHash};

type Shared = Arc<Mutex<AutoCommit>>;

/// An automerge document, and whose replica it is.
pub(crate) struct Body {
    cell: Shared,
    actor: ActorId,
    /// This replica wrote locally: it is never shared (its next write would
    /// copy the document out again).
    writer: bool,
    /// Heads up to which [`Body::save_incremental`] saved.
    saved: Vec<ChangeHash>,
}

impl Body {
    /// A document of its own, acting as `actor`; `saved`: heads already saved.
    pub(crate) fn new(doc: AutoCommit, saved: Vec<ChangeHash>) -> Body {
        let actor = doc.get_actor().clone();
        Body { cell: Arc::new(Mutex::new(doc)), actor, writer: false, saved }
    }

    /// The document, to read, or to call what automerge asks `&mut` for
    /// without changing the content (heads, changes, sync messages). The
    /// lock is uncontended: one replica is used by one site at a time.
    pub(crate) fn doc(&self) -> MutexGuard<'_, AutoCommit> {
        self.cell.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The document, to change its content (changes from peers): copied out
    /// first when another replica shares it or may take it from the table.
    pub(crate) fn doc_mut(&mut self) -> &mut AutoCommit {
        if Arc::strong_count(&self.cell) > 1 || Arc::weak_count(&self.cell) > 0 {
            let copy = self.doc().clone();
            self.cell = Arc::new(Mutex::new(copy));
        }
        let doc = Arc::get_mut(&mut self.cell).expect("unique after the copy").get_mut();
        let doc = doc.unwrap_or_else(PoisonError::into_inner);
        if doc.get_actor() != &self.actor {
            doc.set_actor(self.actor.clone());
        }
        doc
    }

    /// The document, for a local write: this replica is never shared again.
    pub(crate) fn local(&mut self) -> &mut AutoCommit {
        self.writer = true;
        self.doc_mut()
    }

    pub(crate) fn actor(&self) -> &ActorId {
        &self.actor
    }

    pub(crate) fn set_actor(&mut self, actor: ActorId) {
        self.actor = actor;
    }

    /// Bytes of the changes since the last call (or since the heads given
    /// at [`Body::new`]).
    pub(crate) fn save_incremental(&mut self) -> Vec<u8> {
        let (heads, complete) = self.sorted_heads();
        if heads == self.saved {
            return Vec::new();
        }
        let key = (heads.clone(), self.saved.clone());
        let bytes = match complete.then(|| table().and_then(|t| t.increments.find(&key))).flatten() {
            Some(bytes) => bytes.to_vec(),
            None => {
                let bytes = self.doc().save_after(&self.saved);
                if complete && let Some(mut t) = table() {
                    t.increments.keep(key, Arc::from(bytes.as_slice()));
                }
                bytes
            }
        };
        self.saved = heads;
        bytes
    }

    /// The changes after `since` (all of them for `&[]`). Replicas of the
    /// same heads take the list another one made: automerge encodes each
    /// change anew on every call, and every simulated site asks for the
    /// realm's (signing, a whole-document sync, its founder).
    pub(crate) fn changes(&self, since: &[ChangeHash]) -> Arc<[automerge::Change]> {
        let Some(heads) = self.shared_heads() else { return Arc::from(self.doc().get_changes(since)) };
        let mut since = since.to_vec();
        since.sort();
        let key = (heads, since);
        if let Some(found) = table().and_then(|t| t.changes.find(&key)) {
            return found;
        }
        let changes: Arc<[automerge::Change]> = Arc::from(self.doc().get_changes(&key.1));
        if let Some(mut t) = table() {
            t.changes.keep(key, changes.clone());
        }
        changes
    }

    /// The heads, sorted, and whether they say everything the document
    /// holds (see [`complete`]).
    fn sorted_heads(&self) -> (Vec<ChangeHash>, bool) {
        let mut doc = self.doc();
        let mut heads = doc.get_heads();
        heads.sort();
        (heads, complete(&doc))
    }

    /// What other replicas' results for this state are kept under: the
    /// sorted heads, while sharing is on and they say everything.
    fn shared_heads(&self) -> Option<Vec<ChangeHash>> {
        if !SHARING.load(Ordering::Relaxed) {
            return None;
        }
        let (heads, complete) = self.sorted_heads();
        complete.then_some(heads)
    }

    /// The whole document, compacted; later incremental saves follow it.
    /// Shared replicas take a save of the same heads another one made
    /// (compressing a document is the dearest step of a simulated boot).
    pub(crate) fn save(&mut self) -> Vec<u8> {
        let (heads, complete) = self.sorted_heads();
        let shareable = !self.writer && complete;
        let cached = if shareable { table().and_then(|t| t.saved(&heads)) } else { None };
        let bytes = match cached {
            Some(bytes) => bytes.to_vec(),
            None => {
                let bytes = self.doc().save();
                if shareable && let Some(mut t) = table() {
                    t.remember_save(heads.clone(), Arc::from(bytes.as_slice()));
                }
                bytes
            }
        };
        self.saved = heads;
        bytes
    }

    /// Applies `change` (already checked by the caller): taken from the
    /// table when another replica applied it to the same heads.
    pub(crate) fn apply(&mut self, change: automerge::Change) -> Result<(), automerge::AutomergeError> {
        let Some(table) = table() else {
            return self.doc_mut().apply_changes([change]);
        };
        if self.writer {
            drop(table);
            return self.doc_mut().apply_changes([change]);
        }
        let mut before = {
            let mut doc = self.doc();
            if !complete(&doc) {
                drop(doc);
                drop(table);
                return self.doc_mut().apply_changes([change]);
            }
            doc.get_heads()
        };
        before.sort();
        let step = (before, change.hash());
        if let Some(after) = table.steps.get(&step).and_then(Weak::upgrade) {
            self.cell = after;
            return Ok(());
        }
        drop(table);
        self.doc_mut().apply_changes([change])?;
        self.share(Some(step));
        Ok(())
    }

    /// Takes the table's replica of the same heads, if any, else offers
    /// this one (reached from `step`, when given).
    pub(crate) fn share(&mut self, step: Option<(Vec<ChangeHash>, ChangeHash)>) {
        if self.writer {
            return;
        }
        let Some(mut table) = table() else { return };
        let mut heads = {
            let mut doc = self.doc();
            if !complete(&doc) {
                return;
            }
            doc.get_heads()
        };
        if heads.is_empty() {
            return;
        }
        heads.sort();
        let same = table.heads.get(&heads).and_then(Weak::upgrade);
        let cell = match same {
            Some(cell) => {
                self.cell = cell.clone();
                cell
            }
            None => {
                table.heads.insert(heads, Arc::downgrade(&self.cell));
                self.cell.clone()
            }
        };
        if let Some(step) = step {
            table.steps.insert(step, Arc::downgrade(&cell));
        }
        table.prune();
    }
}

/// Whether the heads say everything the document holds: changes automerge
/// queued for a missing dependency are not in them, and two replicas with
/// the same heads and different queues must not be taken for one.
fn complete(doc: &AutoCommit) -> bool {
    automerge::ReadDoc::get_missing_deps(doc, &[]).is_empty()
}

/// Replicas to share, by heads, and the steps that led to them.
struct Table {
    heads: BTreeMap<Vec<ChangeHash>, Weak<Mutex<AutoCommit>>>,
    steps: BTreeMap<(Vec<ChangeHash>, ChangeHash), Weak<Mutex<AutoCommit>>>,
    /// Entries when dead ones were last dropped.
    kept: usize,
    /// The last whole saves, by heads (at most [`SAVES`]).
    saves: VecDeque<(Vec<ChangeHash>, Arc<[u8]>)>,
    /// The changes of the last whole documents loaded, by the digest of
    /// their bytes (at most [`SAVES`]).
    loads: VecDeque<([u8; 32], Arc<[automerge::Change]>)>,
    /// The last incremental saves, by (heads, heads saved before).
    increments: Recent<Arc<[u8]>>,
    /// The last lists of changes, by (heads, the `since` asked for).
    changes: Recent<Arc<[automerge::Change]>>,
    /// The last verdicts of pure gates ([`judged`]), by heads.
    verdicts: VecDeque<(Vec<ChangeHash>, Judged, Result<(), String>)>,
    /// What callers derived from a document ([`memo`]), by heads and name.
    memos: VecDeque<(Vec<ChangeHash>, &'static str, Arc<dyn Any + Send + Sync>)>,
}

/// The last [`SAVES`] results of a pure function of a document, keyed by
/// its heads and the function's argument (both sorted).
struct Recent<T>(VecDeque<(HeadsAnd, T)>);

/// A document's heads and a function's argument, both sorted.
type HeadsAnd = (Vec<ChangeHash>, Vec<ChangeHash>);

impl<T: Clone> Recent<T> {
    fn find(&self, key: &HeadsAnd) -> Option<T> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }

    fn keep(&mut self, key: HeadsAnd, value: T) {
        keep_last(&mut self.0, (key, value));
    }
}

/// Whole saves kept for other replicas of the same heads.
const SAVES: usize = 8;

impl Table {
    fn saved(&self, heads: &[ChangeHash]) -> Option<Arc<[u8]>> {
        self.saves.iter().find(|(h, _)| h == heads).map(|(_, b)| b.clone())
    }

    fn remember_save(&mut self, heads: Vec<ChangeHash>, bytes: Arc<[u8]>) {
        keep_last(&mut self.saves, (heads, bytes));
    }

    /// Drops entries whose replicas are gone, whenever the table doubled
    /// since the last time: amortised O(1) per entry.
    fn prune(&mut self) {
        let len = self.heads.len() + self.steps.len();
        if len < 2 * self.kept.max(4096) {
            return;
        }
        self.heads.retain(|_, w| w.strong_count() > 0);
        self.steps.retain(|_, w| w.strong_count() > 0);
        self.kept = self.heads.len() + self.steps.len();
    }
}

/// Appends `item`, dropping the oldest beyond [`SAVES`].
fn keep_last<T>(kept: &mut VecDeque<T>, item: T) {
    if kept.len() >= SAVES {
        kept.pop_front();
    }
    kept.push_back(item);
}

static SHARING: AtomicBool = AtomicBool::new(false);
static TABLE: Mutex<Table> = Mutex::new(Table {
    heads: BTreeMap::new(),
    steps: BTreeMap::new(),
    kept: 0,
    saves: VecDeque::new(),
    loads: VecDeque::new(),
    increments: Recent(VecDeque::new()),
    changes: Recent(VecDeque::new()),
    verdicts: VecDeque::new(),
    memos: VecDeque::new(),
});

/// The changes of a whole saved document: `load` reads them, unless a
/// replica in this process read the same bytes lately (a simulated realm
/// sends one document to thousands of sites; loading it is most of their
/// cost). Without [`share_replicas`], always `load`.
pub(crate) fn changes_of_document<E>(
    bytes: &[u8],
    load: impl FnOnce() -> Result<Vec<automerge::Change>, E>,
) -> Result<Vec<automerge::Change>, E> {
    if !SHARING.load(Ordering::Relaxed) {
        return load();
    }
    use sha2::Digest;
    let key: [u8; 32] = sha2::Sha256::digest(bytes).into();
    if let Some(t) = table()
        && let Some((_, changes)) = t.loads.iter().find(|(k, _)| *k == key)
    {
        return Ok(changes.to_vec());
    }
    let changes = load()?;
    if let Some(mut t) = table() {
        keep_last(&mut t.loads, (key, Arc::from(changes.as_slice())));
    }
    Ok(changes)
}

/// `make(doc)`, named `what`: a value that depends on the document's content
/// only (a decoded member list, say). Replicas of the same heads take the
/// value another one made; without [`share_replicas`], always `make`.
pub(crate) fn memo<T: Any + Send + Sync>(
    body: &Body,
    what: &'static str,
    make: impl FnOnce() -> T,
) -> Arc<T> {
    let Some(heads) = body.shared_heads() else { return Arc::new(make()) };
    let found = table().and_then(|t| {
        t.memos.iter().rev().find(|(h, w, _)| *w == what && *h == heads).map(|(_, _, v)| v.clone())
    });
    if let Some(value) = found.and_then(|v| v.downcast::<T>().ok()) {
        return value;
    }
    let value = Arc::new(make());
    if let Some(mut t) = table() {
        keep_last(&mut t.memos, (heads, what, value.clone() as Arc<dyn Any + Send + Sync>));
    }
    value
}

/// What a pure gate's verdict depends on besides the document: its
/// parameters, the change's hash, its signature, and whether it came as the
/// document's first.
pub(crate) type Judged = (Vec<u8>, [u8; 32], Option<[u8; 64]>, bool);

/// `judge()`, a pure gate's verdict on a change (`key`: None for a gate
/// that is not pure), taken from another replica of the same heads that
/// asked the same (thousands of simulated sites joining admit the same
/// enrollment of every member).
pub(crate) fn judged(
    body: &Body,
    key: Option<Judged>,
    judge: impl FnOnce() -> Result<(), String>,
) -> Result<(), String> {
    let Some((key, heads)) = key.and_then(|k| Some((k, body.shared_heads()?))) else { return judge() };
    let found = table().and_then(|t| {
        t.verdicts.iter().rev().find(|(h, k, _)| *k == key && *h == heads).map(|(_, _, v)| v.clone())
    });
    if let Some(verdict) = found {
        return verdict;
    }
    let verdict = judge();
    if let Some(mut t) = table() {
        keep_last(&mut t.verdicts, (heads, key, verdict.clone()));
    }
    verdict
}

fn table() -> Option<MutexGuard<'static, Table>> {
    SHARING.load(Ordering::Relaxed).then(|| TABLE.lock().unwrap_or_else(PoisonError::into_inner))
}

/// From now on, replicas in this process that hold the same changes share
/// one document (the simulator; a daemon never calls this).
pub fn share_replicas() {
    SHARING.store(true, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use crate::Doc;
    use crate::doc::Entity;
    use crate::entity::Member;
    use std::sync::Arc;

    use crate::testing::Anyone;

    fn member(site: &str) -> Member {
        crate::testing::member(site, "/ip4/1")
    }

    /// The writer's changes since `have`, as a peer receives them.
    fn changes(writer: &mut Doc, have: &[crate::ChangeHash]) -> Vec<crate::Change> {
        writer.inner.doc().get_changes(have)
    }

    /// A document whose writer enrolled one member.
    fn writer() -> Doc {
        let mut writer = Doc::create(b"writer", &[Member::COLLECTION], 0).unwrap();
        writer.put(&member("edge-1")).unwrap();
        writer.commit(1_000);
        writer
    }

    fn names(d: &Doc) -> Vec<String> {
        d.list::<Member>().unwrap().into_iter().map(|m| m.site.to_string()).collect()
    }

    // Sharing is switched on for the whole test binary here: every other
    // test of the crate then runs with it too, which they must not notice.
    #[test]
    fn replicas_with_the_same_changes_share_one_document_and_copy_it_out_to_write() {
        super::share_replicas();
        let mut writer = writer();
        let mut replicas: Vec<Doc> = (0..3).map(|i| Doc::empty(format!("r{i}").as_bytes())).collect();
        for r in &mut replicas {
            r.admit(changes(&mut writer, &[]), &[], &mut Anyone).unwrap();
        }
        assert!(Arc::ptr_eq(&replicas[0].inner.cell, &replicas[1].inner.cell), "one document for all three");
        assert!(Arc::ptr_eq(&replicas[0].inner.cell, &replicas[2].inner.cell));
        assert!(!Arc::ptr_eq(&replicas[0].inner.cell, &writer.inner.cell), "a writer keeps its own");

        // A second change: the first replica applies it, the others take its result.
        let before = replicas[0].heads();
        writer.put(&member("edge-2")).unwrap();
        writer.commit(2_000);
        for r in &mut replicas {
            r.admit(changes(&mut writer, &before), &[], &mut Anyone).unwrap();
        }
        assert!(Arc::ptr_eq(&replicas[0].inner.cell, &replicas[2].inner.cell));
        assert_eq!(names(&replicas[1]), ["edge-1", "edge-2"]);

        // One replica writes: it copies the document out, under its own name;
        // the others do not see its write.
        replicas[1].put(&member("edge-3")).unwrap();
        let hash = replicas[1].commit(3_000).unwrap();
        assert!(!Arc::ptr_eq(&replicas[1].inner.cell, &replicas[0].inner.cell));
        assert_eq!(names(&replicas[1]), ["edge-1", "edge-2", "edge-3"]);
        assert_eq!(names(&replicas[0]), ["edge-1", "edge-2"]);
        let change = replicas[1].inner.doc().get_change_by_hash(&hash).unwrap();
        assert_eq!(change.actor_id().to_bytes(), b"r1");
        assert!(Arc::ptr_eq(&replicas[0].inner.cell, &replicas[2].inner.cell), "the others still share");
    }

    #[test]
    fn replicas_that_reach_the_same_heads_by_other_orders_share_and_save_their_own_bytes() {
        super::share_replicas();
        let mut a = Doc::create(b"a", &[Member::COLLECTION], 0).unwrap();
        let mut b = a.fork_as(b"b");
        a.put(&member("edge-a")).unwrap();
        a.commit(1_000);
        b.put(&member("edge-b")).unwrap();
        b.commit(1_000);
        let base = changes(&mut a, &[]).into_iter().find(|c| c.deps().is_empty()).unwrap();
        let from_a: Vec<_> = changes(&mut a, &[base.hash()]);
        let from_b: Vec<_> = changes(&mut b, &[base.hash()]);
        let mut x = Doc::empty(b"x");
        let mut y = Doc::empty(b"y");
        x.admit(vec![base.clone()], &[], &mut Anyone).unwrap();
        y.admit(vec![base], &[], &mut Anyone).unwrap();
        let saved_x = x.save_incremental();
        x.admit(from_a.clone(), &[], &mut Anyone).unwrap();
        x.admit(from_b.clone(), &[], &mut Anyone).unwrap();
        y.admit(from_b, &[], &mut Anyone).unwrap();
        y.admit(from_a, &[], &mut Anyone).unwrap();
        assert!(Arc::ptr_eq(&x.inner.cell, &y.inner.cell), "same heads, one document");
        assert_eq!(names(&x), ["edge-a", "edge-b"]);
        // What each saved, put together, loads as the whole document.
        let mut bytes = saved_x;
        bytes.extend(x.save_incremental());
        assert!(x.save_incremental().is_empty(), "nothing new to save");
        let loaded = Doc::load(&bytes, b"x", &[Member::COLLECTION]).unwrap();
        assert_eq!(names(&loaded), ["edge-a", "edge-b"]);
        let whole = y.save_incremental();
        assert_eq!(names(&Doc::load(&whole, b"y", &[Member::COLLECTION]).unwrap()), ["edge-a", "edge-b"]);
    }

    #[test]
    fn a_document_loaded_twice_gives_the_same_changes_the_second_time_from_the_table() {
        super::share_replicas();
        let mut writer = writer();
        let bytes = writer.save();
        let first = crate::provenance::changes_in(&bytes).unwrap();
        let loads = std::cell::Cell::new(0);
        let again = super::changes_of_document(&bytes, || {
            loads.set(1);
            crate::provenance::changes_in(&bytes)
        })
        .unwrap();
        assert_eq!(loads.get(), 0, "read from the table, not loaded again");
        let hashes = |c: &[crate::Change]| c.iter().map(crate::Change::hash).collect::<Vec<_>>();
        assert_eq!(hashes(&first), hashes(&again));
        assert_eq!(hashes(&first), hashes(&changes(&mut writer, &[])));
    }

    /// A gate that counts its calls; pure or not, with a parameter.
    struct Counting {
        calls: usize,
        pure: Option<Vec<u8>>,
    }

    impl crate::Gate for Counting {
        fn admit(&mut self, _doc: &Doc, _change: &crate::Incoming<'_>) -> Result<(), String> {
            self.calls += 1;
            Ok(())
        }

        fn pure(&self) -> Option<Vec<u8>> {
            self.pure.clone()
        }
    }

    #[test]
    fn a_pure_gate_judges_a_change_once_per_state_and_parameters_and_other_gates_every_time() {
        super::share_replicas();
        let mut writer = writer();
        let all = changes(&mut writer, &[]);
        let admit = |gate: &mut Counting, name: &str| {
            let mut r = Doc::empty(name.as_bytes());
            r.admit(all.clone(), &[], gate).unwrap();
            names(&r)
        };
        let mut pure = Counting { calls: 0, pure: Some(b"p".to_vec()) };
        assert_eq!(admit(&mut pure, "j1"), ["edge-1"]);
        let first = pure.calls;
        assert!(first > 0);
        assert_eq!(admit(&mut pure, "j2"), ["edge-1"]);
        assert_eq!(pure.calls, first, "the second replica took the verdicts");
        let mut other = Counting { calls: 0, pure: Some(b"q".to_vec()) };
        admit(&mut other, "j3");
        assert_eq!(other.calls, first, "other parameters, judged again");
        let mut impure = Counting { calls: 0, pure: None };
        admit(&mut impure, "j4");
        admit(&mut impure, "j5");
        assert_eq!(impure.calls, 2 * first, "a gate that is not pure judges every time");
    }
}
