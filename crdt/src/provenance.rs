//! Who wrote each change, and the one door incoming changes pass through
//! (docs/architecture.md, "Provenance").
//!
//! Every change is signed by the site that made it: an ed25519 signature over
//! [`DOMAIN`] followed by the change's hash. Signatures are kept beside the
//! document in its [`Ledger`] and travel beside each sync message, so that a
//! change relayed by a custodian or a third site is as verifiable as one from
//! its author. This crate holds no key and does no cryptography: the caller's
//! [`Gate`] checks each incoming change's signature and whether its author may
//! write it, reading the document as of the change's dependencies (the state
//! its author saw), so that every honest site judges a change alike and they
//! converge on the same set.

use std::collections::{BTreeMap, BTreeSet};

use automerge::{Change, ChangeHash};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::doc::{Doc, DocError, guarded};

/// Prefix of every signed change hash: a signature made for a change can
/// never be read as a token, an invitation or a proof (those are JSON).
pub const DOMAIN: &[u8] = b"atoll-change-v1\0";
/// One stored record: the change hash then its signature.
pub const RECORD: usize = 32 + 64;
/// Changes held back for a missing dependency, at most (a hostile peer may
/// send changes whose dependencies never come).
pub const MAX_WAITING: usize = 4096;

/// A change's hash and its author's signature over [`DOMAIN`] and the hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    pub change: [u8; 32],
    pub sig: [u8; 64],
}

impl Signed {
    /// The bytes its author signs for change `hash`.
    pub fn message(hash: &[u8; 32]) -> Vec<u8> {
        [DOMAIN, hash].concat()
    }

    fn to_record(&self) -> [u8; RECORD] {
        let mut r = [0u8; RECORD];
        r[..32].copy_from_slice(&self.change);
        r[32..].copy_from_slice(&self.sig);
        r
    }

    fn from_record(r: &[u8]) -> Option<Signed> {
        (r.len() == RECORD).then(|| Signed {
            change: r[..32].try_into().unwrap_or_default(),
            sig: r[32..].try_into().unwrap_or([0; 64]),
        })
    }
}

// On the wire as one byte string of RECORD bytes (serde derives no arrays over 32).
impl Serialize for Signed {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_record().to_vec().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Signed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = Vec::<u8>::deserialize(d)?;
        Signed::from_record(&bytes)
            .ok_or_else(|| serde::de::Error::invalid_length(bytes.len(), &"a 96-byte signed change"))
    }
}

/// What a [`Gate`] is shown of an incoming change.
pub struct Incoming<'a> {
    pub hash: [u8; 32],
    /// The automerge actor: a site's name, as Atoll writes it.
    pub actor: &'a [u8],
    pub deps: &'a [ChangeHash],
    /// The signature that came with it, if any.
    pub sig: Option<&'a [u8; 64]>,
    /// A first change (no dependencies) arriving at an empty replica: the
    /// document's genesis, which defines it rather than being judged by it.
    pub genesis: bool,
    /// The change itself, for gates that judge what it writes.
    pub change: &'a Change,
}

/// What a change does to one key at a document's root.
#[derive(Clone, Debug, PartialEq)]
pub enum RootWrite {
    /// Sets a scalar.
    Put(automerge::ScalarValue),
    /// Deletes, makes an object, increments or marks.
    Other,
}

impl Incoming<'_> {
    /// The author's name as text (for logs; names are ASCII).
    pub fn author(&self) -> String {
        String::from_utf8_lossy(self.actor).into_owned()
    }

    /// Every write of the change at the document's root, by key. Collections
    /// live at the root: a change that makes an object there replaces a
    /// whole collection for everyone (a later put over a map hides it).
    pub fn root_writes(&self) -> Vec<(String, RootWrite)> {
        use automerge::legacy::{Key, ObjectId, OpType};
        self.change
            .decode()
            .operations
            .into_iter()
            .filter(|op| op.obj == ObjectId::Root)
            .map(|op| {
                let key = match &op.key {
                    Key::Map(k) => k.to_string(),
                    Key::Seq(_) => String::new(),
                };
                let write = match op.action {
                    OpType::Put(v) => RootWrite::Put(v),
                    _ => RootWrite::Other,
                };
                (key, write)
            })
            .collect()
    }
}

/// One write of a change into a record of a guarded collection
/// ([`Incoming::record_writes`]).
#[derive(Clone, Debug, PartialEq)]
pub struct RecordWrite {
    pub collection: &'static str,
    pub key: String,
    /// The packed record put, or None for anything else: a delete, a map
    /// made, a field written inside a record kept as a map.
    pub put: Option<Vec<u8>>,
}

impl Incoming<'_> {
    /// Every write of the change into records of `collections` (maps at
    /// the root made at the document's creation), found by the objects its
    /// operations write, as of its dependencies.
    pub fn record_writes(
        &self,
        doc: &Doc,
        collections: &[&'static str],
    ) -> Result<Vec<RecordWrite>, DocError> {
        use automerge::ObjType;
        use automerge::legacy::{Key, ObjectId, OpType};
        let ops = self.change.decode().operations;
        let mut colls = Vec::new();
        for name in collections {
            colls.push((*name, doc.collection(name)?));
        }
        let same = |ex: &automerge::ObjId, id: &automerge::legacy::OpId| matches!(ex, automerge::ObjId::Id(c, a, _) if *c == id.0 && *a == id.1);
        // Records kept as maps of fields (older releases), read only if an
        // operation writes inside some object.
        let mut nested: Option<Vec<(&'static str, String, automerge::ObjId)>> = None;
        let mut writes = Vec::new();
        for op in ops {
            let ObjectId::Id(obj) = &op.obj else { continue };
            if let Some((name, _)) = colls.iter().find(|(_, ex)| same(ex, obj)) {
                let key = match &op.key {
                    Key::Map(k) => k.to_string(),
                    Key::Seq(_) => String::new(),
                };
                let put = match op.action {
                    OpType::Put(automerge::ScalarValue::Bytes(b)) => Some(b),
                    _ => None,
                };
                writes.push(RecordWrite { collection: name, key, put });
                continue;
            }
            let nested = nested.get_or_insert_with(|| {
                let mut maps = Vec::new();
                let body = doc.inner.doc();
                for (name, coll) in &colls {
                    for item in automerge::ReadDoc::map_range_at(&*body, coll, .., self.deps) {
                        if matches!(item.value, automerge::ValueRef::Object(ObjType::Map)) {
                            maps.push((*name, item.key.to_string(), item.id()));
                        }
                    }
                }
                maps
            });
            if let Some((name, key, _)) = nested.iter().find(|(_, _, ex)| same(ex, obj)) {
                writes.push(RecordWrite { collection: name, key: key.clone(), put: None });
            }
        }
        Ok(writes)
    }
}

/// Decides whether an incoming change may enter a document.
pub trait Gate {
    /// `doc` holds every dependency of `change` (read it as of
    /// `change.deps` for the state its author saw). Err names the reason.
    fn admit(&mut self, doc: &Doc, change: &Incoming<'_>) -> Result<(), String>;

    /// Some(parameters) when the verdict depends on nothing but the
    /// document's content, the change, its signature and these parameters:
    /// replicas in one process that share documents (the simulator) then
    /// judge a change once per state of the document instead of once each.
    fn pure(&self) -> Option<Vec<u8>> {
        None
    }
}

/// A change a gate refused: never applied, never stored, never relayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub author: String,
    pub change: String,
    pub why: String,
}

/// What one incoming sync message did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Received {
    pub applied: usize,
    pub refused: Vec<Refused>,
    /// Held back until their dependencies arrive.
    pub waiting: usize,
}

/// The signatures of a document's changes.
#[derive(Default)]
pub struct Ledger {
    sigs: BTreeMap<[u8; 32], [u8; 64]>,
    /// Added since the last [`Ledger::take_unsaved`], to persist.
    unsaved: Vec<Signed>,
    /// The heads up to which our own changes were signed.
    scanned: Vec<ChangeHash>,
    /// Changes whose dependencies have not arrived, with their signatures.
    waiting: Vec<(Change, Option<[u8; 64]>)>,
    /// Changes refused once, refused again without a second look; `true`
    /// when for good, `false` when a signature arriving later may change the
    /// verdict (it came unsigned, or depends on one that did).
    refused: BTreeMap<[u8; 32], bool>,
}

/// Most refused hashes remembered (beyond, a refused change is judged again).
pub const MAX_REFUSED: usize = 4096;

impl Ledger {
    pub fn get(&self, hash: &[u8; 32]) -> Option<&[u8; 64]> {
        self.sigs.get(hash)
    }

    pub fn len(&self) -> usize {
        self.sigs.len()
    }

    /// Changes held back until their dependencies arrive (at most [`MAX_WAITING`]).
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Refused changes remembered (at most [`MAX_REFUSED`]).
    pub fn refused(&self) -> usize {
        self.refused.len()
    }

    /// Whether change `hash` was refused (and is remembered: at most [`MAX_REFUSED`]).
    pub fn is_refused(&self, hash: &[u8; 32]) -> bool {
        self.refused.contains_key(hash)
    }

    pub fn is_empty(&self) -> bool {
        self.sigs.is_empty()
    }

    /// Adds stored records (as written by [`Ledger::encode`]); a torn
    /// trailing record (a crash mid-write) is ignored.
    pub fn load(&mut self, bytes: &[u8]) {
        for r in bytes.chunks_exact(RECORD) {
            if let Some(s) = Signed::from_record(r) {
                self.sigs.insert(s.change, s.sig);
            }
        }
    }

    /// The records of stored bytes (see [`Ledger::load`]).
    pub fn parse(bytes: &[u8]) -> Vec<Signed> {
        bytes.chunks_exact(RECORD).filter_map(Signed::from_record).collect()
    }

    pub fn encode(sigs: &[Signed]) -> Vec<u8> {
        sigs.iter().flat_map(|s| s.to_record()).collect()
    }

    /// Every signature, in the stored form (a whole-ledger snapshot).
    pub fn save(&self) -> Vec<u8> {
        self.sigs.iter().flat_map(|(change, sig)| Signed { change: *change, sig: *sig }.to_record()).collect()
    }

    /// The missing dependencies of the changes held back (at most 64 named).
    pub(crate) fn wanted(&self, doc: &automerge::AutoCommit) -> Vec<ChangeHash> {
        if self.waiting.is_empty() {
            return Vec::new();
        }
        let held_back: BTreeSet<ChangeHash> = self.waiting.iter().map(|(c, _)| c.hash()).collect();
        let deps: BTreeSet<ChangeHash> = self
            .waiting
            .iter()
            .flat_map(|(c, _)| c.deps().iter().copied())
            .filter(|d| !held_back.contains(d))
            .collect();
        let deps: Vec<ChangeHash> = deps.into_iter().collect();
        let mut missing = automerge::ReadDoc::get_missing_deps(doc, &deps);
        missing.truncate(64);
        missing
    }

    /// Signatures added since the last call, to persist.
    pub fn take_unsaved(&mut self) -> Vec<Signed> {
        std::mem::take(&mut self.unsaved)
    }

    fn insert(&mut self, change: [u8; 32], sig: [u8; 64]) {
        if self.sigs.insert(change, sig).is_none() {
            self.unsaved.push(Signed { change, sig });
        }
    }
}

impl Doc {
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn ledger_mut(&mut self) -> &mut Ledger {
        &mut self.ledger
    }

    /// Adds stored signatures (see [`Ledger::load`]).
    pub fn load_ledger(&mut self, bytes: &[u8]) {
        self.ledger.load(bytes);
    }

    /// Signs every change of this replica's own actor that has no signature
    /// yet (a commit anywhere: a command, a join, the realm's genesis).
    /// Returns how many were signed.
    pub fn sign_own(&mut self, sign: &mut dyn FnMut(&[u8]) -> [u8; 64]) -> usize {
        let heads = self.inner.doc().get_heads();
        if heads == self.ledger.scanned {
            return 0;
        }
        let actor = self.inner.actor().clone();
        let since = std::mem::take(&mut self.ledger.scanned);
        let mut signed = 0;
        for change in self.inner.changes(&since).iter() {
            let hash = change.hash().0;
            if change.actor_id() == &actor && self.ledger.get(&hash).is_none() {
                self.ledger.insert(hash, sign(&Signed::message(&hash)));
                signed += 1;
            }
        }
        self.ledger.scanned = heads;
        signed
    }

    /// The signatures of the given changes that this replica holds.
    pub fn signatures(&self, hashes: impl IntoIterator<Item = ChangeHash>) -> Vec<Signed> {
        hashes
            .into_iter()
            .filter_map(|h| self.ledger.get(&h.0).map(|sig| Signed { change: h.0, sig: *sig }))
            .collect()
    }

    /// Whether this replica holds change `hash`.
    pub fn holds(&self, hash: &[u8; 32]) -> bool {
        automerge::ReadDoc::get_missing_deps(&*self.inner.doc(), &[ChangeHash(*hash)]).is_empty()
    }

    /// A sync message pushing every change after `have` unasked, with the
    /// signatures held (what a peer could send outside a sync session: the
    /// simulator's forger uses it).
    pub fn push_message(&mut self, have: &[ChangeHash]) -> (Vec<u8>, Vec<Signed>) {
        let mut changes = self.inner.doc().get_changes(have);
        let sigs = self.signatures(changes.iter().map(Change::hash).collect::<Vec<_>>());
        let bytes: Vec<Vec<u8>> = changes.iter_mut().map(|c| c.bytes().into_owned()).collect();
        let msg = automerge::sync::Message {
            heads: self.inner.doc().get_heads(),
            need: Vec::new(),
            have: Vec::new(),
            changes: bytes.into(),
            flags: None,
            version: automerge::sync::MessageVersion::V1,
        };
        (msg.encode(), sigs)
    }

    /// Every change of the document with its signature, if held (a whole
    /// replica handed to a joining site, say).
    pub fn all_signatures(&mut self) -> Vec<Signed> {
        let hashes: Vec<ChangeHash> = self.inner.changes(&[]).iter().map(Change::hash).collect();
        self.signatures(hashes)
    }

    /// Passes `changes` (with the signatures that came with them) through
    /// `gate` in causal order: each admitted change is applied before the
    /// next is judged, so that a gate reading the document as of a change's
    /// dependencies sees them; a refused change is recorded with its
    /// signature never, and what depends on it is refused too. Changes
    /// whose dependencies are missing wait (bounded) for a later call.
    pub fn admit(
        &mut self,
        changes: Vec<Change>,
        sigs: &[Signed],
        gate: &mut dyn Gate,
    ) -> Result<Received, DocError> {
        self.edits += 1;
        let sigs: BTreeMap<[u8; 32], [u8; 64]> = sigs.iter().map(|s| (s.change, s.sig)).collect();
        let mut pending: BTreeMap<ChangeHash, (Change, Option<[u8; 64]>)> = BTreeMap::new();
        for (change, sig) in std::mem::take(&mut self.ledger.waiting) {
            pending.insert(change.hash(), (change, sig));
        }
        for change in changes {
            let sig = sigs.get(&change.hash().0).copied();
            let entry = pending.entry(change.hash()).or_insert((change, None));
            entry.1 = entry.1.or(sig);
        }
        // Those already held need nothing (automerge reports held hashes as not missing).
        let empty = self.inner.doc().get_heads().is_empty();
        let hashes: Vec<ChangeHash> = pending.keys().copied().collect();
        let missing: BTreeSet<ChangeHash> = self.inner.doc().get_missing_deps(&hashes).into_iter().collect();
        pending.retain(|h, _| missing.contains(h));

        // Kahn's order: a change is ready when none of its dependencies is pending.
        let mut blocked: BTreeMap<ChangeHash, usize> = BTreeMap::new();
        let mut dependents: BTreeMap<ChangeHash, Vec<ChangeHash>> = BTreeMap::new();
        for (hash, (change, _)) in &pending {
            let waits_on: Vec<ChangeHash> =
                change.deps().iter().filter(|d| pending.contains_key(d)).copied().collect();
            blocked.insert(*hash, waits_on.len());
            for d in waits_on {
                dependents.entry(d).or_default().push(*hash);
            }
        }
        let mut ready: Vec<ChangeHash> = blocked.iter().filter(|(_, n)| **n == 0).map(|(h, _)| *h).collect();
        let mut report = Received::default();
        // Changes of this batch depending on a refused one, and whether for good.
        let mut doomed: BTreeMap<ChangeHash, bool> = BTreeMap::new();
        let refused_dep = |ledger: &Ledger, c: &Change| -> Option<bool> {
            c.deps().iter().filter_map(|d| ledger.refused.get(&d.0).copied()).reduce(|a, b| a || b)
        };
        while let Some(hash) = ready.pop() {
            let Some((change, sig)) = pending.remove(&hash) else { continue };
            let earlier = self.ledger.refused.get(&hash.0).copied();
            let verdict = if let Some(&for_good) = doomed.get(&hash) {
                Err(("depends on a refused change".to_owned(), for_good))
            } else if let Some(for_good) = earlier.filter(|f| *f || sig.is_none()) {
                Err(("refused before".to_owned(), for_good))
            } else if refused_dep(&self.ledger, &change) == Some(true) {
                // Its dependency will never be applied: waiting would only
                // fill the queue (a forger's way to make every message cost).
                Err(("depends on a refused change".to_owned(), true))
            } else if refused_dep(&self.ledger, &change).is_some()
                || !self.inner.doc().get_missing_deps(change.deps()).is_empty()
            {
                // A dependency neither held nor in this batch: wait for it.
                if self.ledger.waiting.len() < MAX_WAITING {
                    self.ledger.waiting.push((change, sig));
                    report.waiting += 1;
                }
                continue; // its dependents stay blocked, and wait too
            } else {
                let incoming = Incoming {
                    hash: hash.0,
                    actor: change.actor_id().to_bytes(),
                    deps: change.deps(),
                    sig: sig.as_ref(),
                    genesis: empty && change.deps().is_empty() && report.applied == 0,
                    change: &change,
                };
                let key = gate.pure().map(|params| (params, hash.0, sig, incoming.genesis));
                crate::replica::judged(&self.inner, key, || gate.admit(self, &incoming))
                    .map_err(|why| (why, sig.is_some()))
            };
            match verdict {
                Ok(()) => {
                    self.ledger.refused.remove(&hash.0);
                    let inner = &mut self.inner;
                    let applied = guarded("a change", move || inner.apply(change));
                    self.drop_patches();
                    applied??;
                    if let Some(sig) = sig {
                        self.ledger.insert(hash.0, sig);
                    }
                    report.applied += 1;
                }
                Err((why, for_good)) => {
                    if self.ledger.refused.len() < MAX_REFUSED || earlier.is_some() {
                        self.ledger.refused.insert(hash.0, for_good);
                    }
                    report.refused.push(Refused {
                        author: String::from_utf8_lossy(change.actor_id().to_bytes()).into_owned(),
                        change: hash.to_string(),
                        why,
                    });
                    for d in dependents.get(&hash).into_iter().flatten() {
                        let was = doomed.get(d).copied().unwrap_or(false);
                        doomed.insert(*d, was || for_good);
                    }
                }
            }
            for d in dependents.remove(&hash).unwrap_or_default() {
                if let Some(n) = blocked.get_mut(&d) {
                    *n -= 1;
                    if *n == 0 {
                        ready.push(d);
                    }
                }
            }
        }
        // What is left waits on a dependency that never came in this batch.
        for (_, entry) in pending {
            if self.ledger.waiting.len() < MAX_WAITING {
                self.ledger.waiting.push(entry);
                report.waiting += 1;
            }
        }
        Ok(report)
    }
}

/// Every change of saved bytes (a document, optionally followed by
/// incremental saves), to pass through a gate into an empty replica.
pub fn changes_in(saved: &[u8]) -> Result<Vec<Change>, DocError> {
    crate::chunks::check(saved)?;
    crate::replica::changes_of_document(saved, || {
        let doc = guarded("a document", || automerge::Automerge::load(saved))??;
        Ok(doc.get_changes(&[]))
    })
}

/// Reads the changes carried by a sync message's chunks: change chunks one
/// each, a whole-document chunk (automerge's V2 first sync) as all of its
/// changes.
pub(crate) fn changes_of(chunks: &[Vec<u8>]) -> Result<Vec<Change>, DocError> {
    let mut out = Vec::new();
    for chunk in chunks.iter().map(|c| crate::chunks::split(c)).collect::<Result<Vec<_>, _>>()?.concat() {
        if crate::chunks::is_document(chunk) {
            out.extend(crate::replica::changes_of_document(chunk, || {
                let doc = guarded("a document", || automerge::Automerge::load(chunk))??;
                Ok::<_, DocError>(doc.get_changes(&[]))
            })?);
        } else {
            let change = guarded("a change", || Change::from_bytes(chunk.to_vec()))?
                .map_err(|e| DocError::BadChange(e.to_string()))?;
            out.push(change);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SyncState;
    use automerge::ReadDoc;
    use automerge::transaction::Transactable;

    /// Admits actor `a` with the test's stand-in signature (the byte of the
    /// hash's first byte, repeated); counts what it judged.
    #[derive(Default)]
    struct OnlyA {
        judged: usize,
    }

    fn fake_sig(message: &[u8]) -> [u8; 64] {
        [message[DOMAIN.len()]; 64]
    }

    impl Gate for OnlyA {
        fn admit(&mut self, _doc: &Doc, change: &Incoming<'_>) -> Result<(), String> {
            self.judged += 1;
            if change.actor != b"a" {
                return Err("not a".into());
            }
            match change.sig {
                Some(sig) if *sig == [change.hash[0]; 64] => Ok(()),
                Some(_) => Err("bad signature".into()),
                None => Err("unsigned".into()),
            }
        }
    }

    fn write(doc: &mut Doc, key: &str, value: i64, at: u64) {
        let coll = doc.collection("things").unwrap();
        doc.inner.local().put(&coll, key, value).unwrap();
        doc.commit(at);
    }

    fn read(doc: &Doc, key: &str) -> Option<i64> {
        let coll = doc.collection("things").ok()?;
        match doc.inner.doc().get(&coll, key).ok()?? {
            (automerge::Value::Scalar(s), _) => s.as_i64(),
            _ => None,
        }
    }

    /// Runs the sync protocol from `from` to `to` (both ways) until quiet.
    fn sync(from: &mut Doc, to: &mut Doc, gate: &mut dyn Gate) -> Received {
        let (mut s1, mut s2) = (SyncState::new(), SyncState::new());
        let mut total = Received::default();
        for _ in 0..20 {
            let a = from.sync_out(&mut s1);
            if let Some((msg, sigs)) = &a {
                let r = to.sync_in(&mut s2, msg, sigs, gate).unwrap();
                total.applied += r.applied;
                total.refused.extend(r.refused);
                total.waiting += r.waiting;
            }
            let b = to.sync_out(&mut s2);
            if let Some((msg, sigs)) = &b {
                from.sync_in(&mut s1, msg, sigs, &mut Anyone).unwrap();
            }
            if a.is_none() && b.is_none() {
                break;
            }
        }
        total
    }

    use crate::testing::Anyone;

    #[test]
    fn signed_changes_pass_with_their_signatures_whole_document_or_change_by_change() {
        let mut a = Doc::create(b"a", &["things"], 0).unwrap();
        for i in 0..5 {
            write(&mut a, &format!("k{i}"), i, i as u64 * 1000);
        }
        assert_eq!(a.sign_own(&mut fake_sig), 6, "the creation and five writes");
        assert_eq!(a.sign_own(&mut fake_sig), 0, "signed once");
        // A first sync sends the whole document (automerge's V2 message).
        let mut b = Doc::empty(b"b");
        let mut gate = OnlyA::default();
        let got = sync(&mut a, &mut b, &mut gate);
        assert_eq!((got.applied, got.refused.len(), got.waiting), (6, 0, 0));
        assert_eq!(b.digest(), a.digest());
        assert_eq!(b.ledger().len(), 6, "the replica keeps the signatures to relay them");
        // Later changes go one by one; a relay (b) passes them on, signed.
        write(&mut a, "k9", 9, 9000);
        a.sign_own(&mut fake_sig);
        sync(&mut a, &mut b, &mut gate);
        let mut c = Doc::empty(b"c");
        let got = sync(&mut b, &mut c, &mut OnlyA::default());
        assert_eq!((got.applied, got.refused.len()), (7, 0));
        assert_eq!(read(&c, "k9"), Some(9));
    }

    #[test]
    fn a_forged_change_and_what_depends_on_it_are_refused_and_the_rest_applies() {
        let mut a = Doc::create(b"a", &["things"], 0).unwrap();
        a.sign_own(&mut fake_sig);
        let mut b = Doc::empty(b"b");
        sync(&mut a, &mut b, &mut OnlyA::default());
        // The forger writes as itself, then as "a" on top of its own change
        // (a real signature it cannot make; here: the wrong stand-in).
        let mut forger = a.fork_as(b"x");
        let mut sign_wrong = |_: &[u8]| [0xee; 64];
        write(&mut forger, "stolen", 1, 1000);
        forger.sign_own(&mut sign_wrong);
        forger.set_actor(b"a");
        write(&mut forger, "also", 2, 2000);
        forger.sign_own(&mut sign_wrong);
        forger.set_actor(b"x");
        // Meanwhile a writes honestly.
        write(&mut a, "honest", 3, 3000);
        a.sign_own(&mut fake_sig);
        let mut gate = OnlyA::default();
        let got = sync(&mut forger, &mut b, &mut gate);
        let whys: Vec<&str> = got.refused.iter().map(|r| r.why.as_str()).collect();
        assert_eq!(whys, ["not a", "depends on a refused change"], "{got:?}");
        assert_eq!(got.refused[0].author, "x");
        assert_eq!(read(&b, "stolen"), None);
        let got = sync(&mut a, &mut b, &mut gate);
        assert_eq!((got.applied, got.refused.len()), (1, 0));
        assert_eq!(read(&b, "honest"), Some(3));
        // Offered again, a refused change is not judged again, and one
        // offered alone whose dependency was refused does not wait for it.
        let judged = gate.judged;
        let changes = forger.inner.doc().get_changes(&[]);
        let again = b.admit(changes, &[], &mut gate).unwrap();
        assert_eq!(again.refused.len(), 2);
        write(&mut forger, "more", 4, 4000);
        let more = forger.inner.doc().get_changes(&[]).pop().unwrap();
        let alone = b.admit(vec![more], &[], &mut gate).unwrap();
        assert_eq!((alone.refused.len(), alone.waiting), (1, 0), "{alone:?}");
        assert_eq!(gate.judged, judged, "remembered, not re-judged");
    }

    #[test]
    fn a_change_waits_for_its_dependency_then_both_pass() {
        let mut a = Doc::create(b"a", &["things"], 0).unwrap();
        write(&mut a, "one", 1, 1000);
        write(&mut a, "two", 2, 2000);
        a.sign_own(&mut fake_sig);
        let mut changes = a.inner.doc().get_changes(&[]);
        let sigs = a.all_signatures();
        let mut b = Doc::empty(b"b");
        let last = changes.pop().unwrap();
        let got = b.admit(vec![last], &sigs, &mut OnlyA::default()).unwrap();
        assert_eq!((got.applied, got.waiting), (0, 1));
        let got = b.admit(changes, &sigs, &mut OnlyA::default()).unwrap();
        assert_eq!((got.applied, got.waiting), (3, 0));
        assert_eq!(read(&b, "two"), Some(2));
        assert_eq!(b.ledger().len(), 3);
    }

    /// A replica holding back a change for a missing dependency asks for it
    /// beside what automerge asks for (the peer's heads it lacks): the
    /// message still encodes, whatever the order of the hashes.
    #[test]
    fn a_waiting_change_is_asked_for_in_a_message_that_encodes() {
        for round in 0..8 {
            let mut a = Doc::create(b"a", &["things"], 0).unwrap();
            write(&mut a, "one", round, 1000);
            write(&mut a, "two", round, 2000);
            a.sign_own(&mut fake_sig);
            let mut changes = a.inner.doc().get_changes(&[]);
            let sigs = a.all_signatures();
            let last = changes.pop().unwrap();
            let mut b = Doc::empty(b"b");
            b.admit(vec![changes.remove(0)], &sigs, &mut OnlyA::default()).unwrap();
            b.admit(vec![last], &sigs, &mut OnlyA::default()).unwrap();
            // a tells b its heads; b lacks them (one is held back).
            let (mut sa, mut sb) = (SyncState::new(), SyncState::new());
            let (msg, sigs) = a.sync_out(&mut sa).expect("a speaks first");
            b.sync_in(&mut sb, &msg, &sigs, &mut OnlyA::default()).unwrap();
            let (reply, _) = b.sync_out(&mut sb).expect("b answers, asking for what it lacks");
            let decoded = automerge::sync::Message::decode(&reply).unwrap();
            assert!(!decoded.need.is_empty(), "round {round}");
            assert!(decoded.need.windows(2).all(|w| w[0] < w[1]), "round {round}");
        }
    }

    #[test]
    fn changes_back_to_back_in_one_chunk_are_read_one_by_one() {
        let mut a = Doc::create(b"a", &["things"], 0).unwrap();
        write(&mut a, "one", 1, 1000);
        let joined: Vec<u8> =
            a.inner.doc().get_changes(&[]).iter_mut().flat_map(|c| c.bytes().into_owned()).collect();
        let changes = changes_of(&[joined]).unwrap();
        assert_eq!(changes.len(), 2);
        assert!(changes_of(&[vec![1, 2, 3]]).is_err());
    }

    #[test]
    fn ledger_records_roundtrip_and_a_torn_tail_is_ignored() {
        let sigs = vec![Signed { change: [1; 32], sig: [2; 64] }, Signed { change: [3; 32], sig: [4; 64] }];
        let mut bytes = Ledger::encode(&sigs);
        bytes.extend_from_slice(&[9; 10]);
        assert_eq!(Ledger::parse(&bytes), sigs);
        let mut l = Ledger::default();
        l.load(&bytes);
        assert_eq!(l.get(&[3; 32]), Some(&[4; 64]));
        let wire = postcard::to_stdvec(&sigs).unwrap();
        assert_eq!(postcard::from_bytes::<Vec<Signed>>(&wire).unwrap(), sigs);
        let short = postcard::to_stdvec(&vec![vec![0u8; 95]]).unwrap();
        assert!(postcard::from_bytes::<Vec<Signed>>(&short).is_err());
    }
}
