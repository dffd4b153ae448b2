//! A typed view of one automerge document.
//!
//! Each entity collection is a map at the root (`users`, `instances`, ...) whose
//! values are maps of scalar fields. Collections are created once, when the
//! document is created, so that replicas never race to create the same map (two
//! concurrent `put_object`s would make one replica's entries vanish). Nested
//! values (lists, maps) are stored as JSON in a bytes scalar: they are replaced
//! whole, which is what their owners mean by an update.

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, AutoCommit, ChangeHash, ObjId, ObjType, ReadDoc, ScalarValue, Value};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value as Json;

use crate::Millis;

/// Progress of the automerge sync protocol with one peer for one document.
pub use automerge::sync::State as SyncState;

/// Schema version written at the root of every document (`schema`).
pub const SCHEMA: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum DocError {
    #[error("automerge: {0}")]
    Automerge(#[from] automerge::AutomergeError),
    #[error("document has no collection {0:?}: not an Atoll document of this kind")]
    MissingCollection(&'static str),
    #[error("document schema {found} is newer than this build understands ({SCHEMA})")]
    Schema { found: u64 },
    #[error("entity {collection}/{key} does not decode: {reason}")]
    Decode { collection: &'static str, key: String, reason: String },
    #[error("quota figures in {0} overflow 64-bit arithmetic")]
    Overflow(String),
    #[error("malformed change: {0}")]
    BadChange(String),
    #[error("automerge panicked decoding {0} (malformed bytes; fuzz/README.md)")]
    Panicked(&'static str),
    #[error("invalid name {0:?}: use 1-63 lowercase letters, digits, '-', '_' or '.'")]
    InvalidName(String),
}

/// A record kept in a collection of a document.
pub trait Entity: Serialize + DeserializeOwned {
    const COLLECTION: &'static str;
    /// Kept as one JSON value instead of a map of fields: for records written
    /// whole by one site at a time (membership, grants, transfers), where
    /// field-wise merging buys nothing and a map costs an automerge op per
    /// field in every replica (the realm's member list is held by every site).
    const PACKED: bool = false;
    /// Concurrent values are resolved by [`Entity::rev`], the highest winning,
    /// not by automerge's order of writers (which a writer can choose to win):
    /// for packed records whose every write is a signed, numbered statement
    /// (users and role bindings, docs/architecture.md "Realm rules on content").
    const VERSIONED: bool = false;
    fn key(&self) -> String;
    /// The record's revision, for [`Entity::VERSIONED`] collections.
    fn rev(&self) -> u64 {
        0
    }
}

/// Of concurrent values of a versioned record, the one every replica keeps:
/// the highest revision, ties broken by the encoded bytes.
/// A value kept as a map of fields (by a release before versioned records)
/// counts as revision 0, whatever fields it holds.
fn latest<T: Entity>(values: Vec<(T, bool)>) -> Option<T> {
    values
        .into_iter()
        .map(|(v, packed)| (if packed { v.rev() } else { 0 }, serde_json::to_vec(&v).unwrap_or_default(), v))
        .max_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)))
        .map(|(_, _, v)| v)
}

/// Where an entity's value sits in its collection.
enum Stored {
    Fields(ObjId),
    Packed(Vec<u8>),
}

/// What a replica holds ([`Doc::size`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DocSize {
    pub changes: u64,
    pub ops: u64,
    pub signatures: u64,
}

/// An automerge document with Atoll's collection layout.
pub struct Doc {
    pub(crate) inner: crate::replica::Body,
    /// Who signed each change (crate::provenance).
    pub(crate) ledger: crate::provenance::Ledger,
    /// Counts the calls that may have changed the content, for caches of
    /// what is read from it ([`Doc::edits`]).
    pub(crate) edits: u64,
    /// The root's collections' object ids, as of an edit count: reading one
    /// is a root lookup in automerge, and every read of an entity needs one.
    collections: std::cell::RefCell<(u64, Vec<(&'static str, ObjId)>)>,
}

/// Runs automerge on bytes from a peer or a file, turning a panic into an
/// error: automerge has panicked on malformed input (found by
/// `fuzz/fuzz_targets/document.rs`), and one hostile document must not stop a
/// site. Changes applied before such a panic stay (automerge applies whole
/// changes, each verified by its hash); the rest of the message is refused.
pub(crate) fn guarded<T>(what: &'static str, f: impl FnOnce() -> T) -> Result<T, DocError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|_| DocError::Panicked(what))
}

/// Refuses a peer's bloom filter that automerge would store and later choke
/// on when answering: one with entries but no bits divides by zero (found by
/// `fuzz/fuzz_targets/sync.rs`), and a huge probe count allocates that many
/// probes per change. Automerge itself writes 10 bits per entry and 7 probes.
fn sound_bloom(bytes: &[u8]) -> Result<(), DocError> {
    const LIMIT: u64 = 64;
    let bad = |why: &str| Err(DocError::BadChange(format!("bloom filter: {why}")));
    if bytes.is_empty() {
        return Ok(()); // no entries
    }
    let mut rest = bytes;
    let mut field = || -> Option<u64> {
        let mut value = 0u64;
        for (i, b) in rest.iter().enumerate().take(10) {
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                rest = &rest[i + 1..];
                return Some(value);
            }
        }
        None
    };
    let (Some(entries), Some(bits_per_entry), Some(probes)) = (field(), field(), field()) else {
        return bad("truncated header");
    };
    if entries > 0 && !(1..=LIMIT).contains(&bits_per_entry) {
        return bad("bits per entry out of range");
    }
    if entries > 0 && !(1..=LIMIT).contains(&probes) {
        return bad("probe count out of range");
    }
    Ok(())
}

impl Doc {
    /// A new document with the given collections; `actor` names the writer.
    pub fn create(actor: &[u8], collections: &[&'static str], now: Millis) -> Result<Self, DocError> {
        Doc::create_unique(actor, collections, &[], now)
    }

    /// Same, with `nonce` written in the first change (root key `nonce`), so
    /// that its hash ([`Doc::genesis`]) names this document and no other.
    pub fn create_unique(
        actor: &[u8],
        collections: &[&'static str],
        nonce: &[u8],
        now: Millis,
    ) -> Result<Self, DocError> {
        Doc::create_rooted(actor, collections, &[("nonce", ScalarValue::Bytes(nonce.to_vec()))], now)
    }

    /// Same, with `root` scalars written in the first change (empty ones skipped).
    pub fn create_rooted(
        actor: &[u8],
        collections: &[&'static str],
        root: &[(&str, ScalarValue)],
        now: Millis,
    ) -> Result<Self, DocError> {
        let mut inner = AutoCommit::new().with_actor(ActorId::from(actor));
        inner.put(automerge::ROOT, "schema", SCHEMA)?;
        for (name, value) in root {
            let empty = matches!(value, ScalarValue::Bytes(b) if b.is_empty())
                || matches!(value, ScalarValue::Str(s) if s.is_empty());
            if !empty {
                inner.put(automerge::ROOT, *name, value.clone())?;
            }
        }
        for c in collections {
            inner.put_object(automerge::ROOT, *c, ObjType::Map)?;
        }
        let mut doc = Doc::from_inner(inner);
        doc.commit(now);
        Ok(doc)
    }

    /// Loads saved bytes (a full save, optionally followed by incremental saves).
    pub fn load(bytes: &[u8], actor: &[u8], collections: &[&'static str]) -> Result<Self, DocError> {
        crate::chunks::check(bytes)?;
        let doc =
            Doc::loaded(guarded("a document", || AutoCommit::load(bytes))??.with_actor(ActorId::from(actor)));
        doc.check(collections)?;
        Ok(doc)
    }

    /// Loads a replica whose layout may not have arrived yet (a document being
    /// filled by sync); empty bytes give an empty replica.
    pub fn load_any(bytes: &[u8], actor: &[u8]) -> Result<Self, DocError> {
        if bytes.is_empty() {
            return Ok(Doc::empty(actor));
        }
        crate::chunks::check(bytes)?;
        Ok(Doc::loaded(guarded("a document", || AutoCommit::load(bytes))??.with_actor(ActorId::from(actor))))
    }

    /// How many entities a collection holds, without decoding them.
    pub fn count<T: Entity>(&self) -> usize {
        self.collection(T::COLLECTION).map(|c| self.inner.doc().length(&c)).unwrap_or(0)
    }

    /// The keys of a collection's entities, in key order, without reading
    /// the entities.
    pub fn keys<T: Entity>(&self) -> Vec<String> {
        let Ok(coll) = self.collection(T::COLLECTION) else { return Vec::new() };
        self.inner.doc().keys(&coll).collect()
    }

    /// Whether the document has the collection (a replica filled by sync has it
    /// once the owner's first change arrived).
    pub fn has_collection(&self, name: &'static str) -> bool {
        self.collection(name).is_ok()
    }

    /// Verifies the layout: every collection exists and the schema is known.
    pub fn check(&self, collections: &[&'static str]) -> Result<(), DocError> {
        if let Some((v, _)) = self.inner.doc().get(automerge::ROOT, "schema")? {
            let found = scalar_to_json(&v).as_u64().unwrap_or(0);
            if found > SCHEMA {
                return Err(DocError::Schema { found });
            }
        }
        for c in collections {
            self.collection(c)?;
        }
        Ok(())
    }

    pub(crate) fn collection(&self, name: &'static str) -> Result<ObjId, DocError> {
        let mut cached = self.collections.borrow_mut();
        if cached.0 != self.edits {
            *cached = (self.edits, Vec::new());
        }
        if let Some((_, id)) = cached.1.iter().find(|(n, _)| *n == name) {
            return Ok(id.clone());
        }
        match self.inner.doc().get(automerge::ROOT, name)? {
            Some((Value::Object(ObjType::Map), id)) => {
                cached.1.push((name, id.clone()));
                Ok(id)
            }
            _ => Err(DocError::MissingCollection(name)),
        }
    }

    /// Reads one entity.
    pub fn get<T: Entity>(&self, key: &str) -> Result<Option<T>, DocError> {
        let coll = self.collection(T::COLLECTION)?;
        if T::VERSIONED {
            let all = owned(self.inner.doc().get_all(&coll, key)?);
            return Ok(latest(self.packed_values(key, all, None)?));
        }
        let found = self.inner.doc().get(&coll, key)?.map(|(v, id)| (v.into_owned(), id));
        match found {
            Some((Value::Object(ObjType::Map), obj)) => self.decode::<T>(&Stored::Fields(obj), key).map(Some),
            Some((Value::Scalar(s), _)) => match s.as_ref() {
                ScalarValue::Bytes(b) => self.decode::<T>(&Stored::Packed(b.clone()), key).map(Some),
                _ => Ok(None),
            },
            _ => Ok(None),
        }
    }

    /// Reads one entity as of `heads` (the state a change's author saw).
    pub fn get_at<T: Entity>(&self, key: &str, heads: &[ChangeHash]) -> Result<Option<T>, DocError> {
        let coll = self.collection(T::COLLECTION)?;
        if T::VERSIONED {
            let all = owned(self.inner.doc().get_all_at(&coll, key, heads)?);
            return Ok(latest(self.packed_values(key, all, Some(heads))?));
        }
        let found = self.inner.doc().get_at(&coll, key, heads)?.map(|(v, id)| (v.into_owned(), id));
        match found {
            Some((Value::Object(ObjType::Map), obj)) => {
                self.decode_fields_at::<T>(&obj, key, heads).map(Some)
            }
            Some((Value::Scalar(s), _)) => match s.as_ref() {
                ScalarValue::Bytes(b) => self.decode::<T>(&Stored::Packed(b.clone()), key).map(Some),
                _ => Ok(None),
            },
            _ => Ok(None),
        }
    }

    /// The packed values among concurrent ones (a versioned record is
    /// always written packed; a map left by an older release reads as itself).
    fn packed_values<T: Entity>(
        &self,
        key: &str,
        all: Vec<(Value<'_>, ObjId)>,
        heads: Option<&[ChangeHash]>,
    ) -> Result<Vec<(T, bool)>, DocError> {
        all.into_iter()
            .filter_map(|(v, id)| match v {
                Value::Object(ObjType::Map) => Some(
                    match heads {
                        Some(heads) => self.decode_fields_at::<T>(&id, key, heads),
                        None => self.decode::<T>(&Stored::Fields(id), key),
                    }
                    .map(|v| (v, false)),
                ),
                Value::Scalar(s) => match s.as_ref() {
                    ScalarValue::Bytes(b) => {
                        Some(self.decode::<T>(&Stored::Packed(b.clone()), key).map(|v| (v, true)))
                    }
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    /// The scalars at a root key, concurrent writes all kept (the realm's
    /// `floor` reads as their highest, whichever write the merge shows).
    pub fn root_values(&self, name: &str) -> Result<Vec<Json>, DocError> {
        Ok(scalars(self.inner.doc().get_all(automerge::ROOT, name)?))
    }

    /// [`Doc::root_values`] as of `heads`.
    pub fn root_values_at(&self, name: &str, heads: &[ChangeHash]) -> Result<Vec<Json>, DocError> {
        Ok(scalars(self.inner.doc().get_all_at(automerge::ROOT, name, heads)?))
    }

    /// Sets a scalar at the document's root (never an object: collections
    /// are made at creation only).
    pub fn put_root(&mut self, name: &str, value: ScalarValue) -> Result<(), DocError> {
        self.edits += 1;
        self.inner.local().put(automerge::ROOT, name, value)?;
        Ok(())
    }

    /// A scalar at the document's root as of `heads` (`schema`, `founder`).
    pub fn root_at(&self, name: &str, heads: &[ChangeHash]) -> Result<Option<Json>, DocError> {
        Ok(match self.inner.doc().get_at(automerge::ROOT, name, heads)? {
            Some((v @ Value::Scalar(_), _)) => Some(scalar_to_json(&v)),
            _ => None,
        })
    }

    /// Every entity of a collection, in key order.
    pub fn list<T: Entity>(&self) -> Result<Vec<T>, DocError> {
        self.list_prefix::<T>("")
    }

    /// The entities whose key starts with `prefix`, in key order; reads only those.
    pub fn list_prefix<T: Entity>(&self, prefix: &str) -> Result<Vec<T>, DocError> {
        let coll = self.collection(T::COLLECTION)?;
        // One ordered pass from the prefix on (a keyed lookup per entry would
        // seek from the start each time), stopping where the prefix ends.
        let objs: Vec<(String, Stored)> = self
            .inner
            .doc()
            .map_range(&coll, prefix.to_owned()..)
            .take_while(|item| item.key.starts_with(prefix))
            .filter_map(|item| {
                let stored = match &item.value {
                    automerge::ValueRef::Object(ObjType::Map) => Stored::Fields(item.id()),
                    automerge::ValueRef::Scalar(automerge::ScalarValueRef::Bytes(b)) => {
                        Stored::Packed(b.to_vec())
                    }
                    _ => return None,
                };
                Some((item.key.to_string(), stored))
            })
            .collect();
        if T::VERSIONED {
            return objs.iter().filter_map(|(key, _)| self.get::<T>(key).transpose()).collect();
        }
        objs.iter().map(|(key, stored)| self.decode::<T>(stored, key)).collect()
    }

    /// Every entity of a collection as of `heads`, in key order.
    pub fn list_at<T: Entity>(&self, heads: &[ChangeHash]) -> Result<Vec<T>, DocError> {
        let coll = self.collection(T::COLLECTION)?;
        let keys: Vec<String> =
            self.inner.doc().map_range_at(&coll, .., heads).map(|item| item.key.to_string()).collect();
        keys.iter().filter_map(|key| self.get_at::<T>(key, heads).transpose()).collect()
    }

    pub fn contains<T: Entity>(&self, key: &str) -> Result<bool, DocError> {
        let coll = self.collection(T::COLLECTION)?;
        Ok(self.inner.doc().get(&coll, key)?.is_some())
    }

    fn decode<T: Entity>(&self, stored: &Stored, key: &str) -> Result<T, DocError> {
        let decoded = match stored {
            Stored::Packed(bytes) => serde_json::from_slice(bytes),
            Stored::Fields(obj) => {
                let mut map = serde_json::Map::new();
                for item in self.inner.doc().map_range(obj, ..) {
                    let value = item.value.into_value();
                    if let v @ Value::Scalar(_) = value {
                        map.insert(item.key.to_string(), scalar_to_json(&v));
                    }
                }
                serde_json::from_value(Json::Object(map))
            }
        };
        self.decode_json(decoded, key)
    }

    fn decode_fields_at<T: Entity>(
        &self,
        obj: &ObjId,
        key: &str,
        heads: &[ChangeHash],
    ) -> Result<T, DocError> {
        let mut map = serde_json::Map::new();
        for item in self.inner.doc().map_range_at(obj, .., heads) {
            if let v @ Value::Scalar(_) = item.value.into_value() {
                map.insert(item.key.to_string(), scalar_to_json(&v));
            }
        }
        self.decode_json::<T>(serde_json::from_value(Json::Object(map)), key)
    }

    fn decode_json<T: Entity>(&self, decoded: serde_json::Result<T>, key: &str) -> Result<T, DocError> {
        decoded.map_err(|e| DocError::Decode {
            collection: T::COLLECTION,
            key: key.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Writes an entity, touching only the fields that changed (automerge keeps
    /// every write forever, so unchanged fields must not be rewritten).
    pub fn put<T: Entity>(&mut self, entity: &T) -> Result<(), DocError> {
        self.edits += 1;
        let coll = self.collection(T::COLLECTION)?;
        let key = entity.key();
        if T::PACKED {
            let bytes = serde_json::to_vec(entity).map_err(|e| DocError::Decode {
                collection: T::COLLECTION,
                key: key.clone(),
                reason: e.to_string(),
            })?;
            let same = matches!(self.inner.doc().get(&coll, &key)?,
                Some((Value::Scalar(s), _)) if matches!(s.as_ref(), ScalarValue::Bytes(b) if *b == bytes));
            if !same {
                self.inner.local().put(&coll, &key, ScalarValue::Bytes(bytes))?;
            }
            return Ok(());
        }
        let held = match self.inner.doc().get(&coll, &key)? {
            Some((Value::Object(ObjType::Map), obj)) => Some(obj),
            _ => None,
        };
        let obj = match held {
            Some(obj) => obj,
            None => self.inner.local().put_object(&coll, &key, ObjType::Map)?,
        };
        let Json::Object(fields) = serde_json::to_value(entity).map_err(|e| DocError::Decode {
            collection: T::COLLECTION,
            key: key.clone(),
            reason: e.to_string(),
        })?
        else {
            return Err(DocError::Decode {
                collection: T::COLLECTION,
                key,
                reason: "entity does not serialize to a map".into(),
            });
        };
        for (field, value) in &fields {
            let new = json_to_scalar(value);
            let old = match self.inner.doc().get(&obj, field.as_str())? {
                Some((Value::Scalar(v), _)) => Some(v.into_owned()),
                _ => None,
            };
            if old.as_ref() != Some(&new) {
                self.inner.local().put(&obj, field.as_str(), new)?;
            }
        }
        // Fields dropped from the entity (none today) would linger; remove them.
        let stale: Vec<String> = self.inner.doc().keys(&obj).filter(|k| !fields.contains_key(k)).collect();
        for k in stale {
            self.inner.local().delete(&obj, k.as_str())?;
        }
        Ok(())
    }

    /// Removes an entity; returns whether it existed.
    pub fn delete<T: Entity>(&mut self, key: &str) -> Result<bool, DocError> {
        self.edits += 1;
        let coll = self.collection(T::COLLECTION)?;
        if self.inner.doc().get(&coll, key)?.is_none() {
            return Ok(false);
        }
        self.inner.local().delete(&coll, key)?;
        Ok(true)
    }

    /// How much this replica holds: its history, not only its content
    /// (automerge keeps every change), and the signatures beside it.
    pub fn size(&self) -> DocSize {
        let stats = automerge::ReadDoc::stats(&*self.inner.doc());
        DocSize { changes: stats.num_changes, ops: stats.num_ops, signatures: self.ledger.len() as u64 }
    }

    /// How many calls that may have changed the content were made on this
    /// replica: a cache of something read from it is valid while this holds.
    pub fn edits(&self) -> u64 {
        self.edits
    }

    /// Seals pending writes into one change stamped with `now` (seconds, as automerge wants).
    pub fn commit(&mut self, now: Millis) -> Option<ChangeHash> {
        // automerge opens (and drops) a transaction even to commit nothing; the
        // peer commits every document after every input, so check first.
        if self.inner.doc().pending_ops() == 0 {
            return None;
        }
        let secs = i64::try_from(now / 1000).unwrap_or(i64::MAX);
        let hash = self.inner.local().commit_with(CommitOptions::default().with_time(secs));
        self.drop_patches();
        hash
    }

    /// Drops writes not yet committed (a command that failed half-way).
    pub fn rollback(&mut self) {
        self.edits += 1;
        self.inner.local().rollback();
    }

    /// Bytes of the changes made since the previous call (append-only storage).
    pub fn save_incremental(&mut self) -> Vec<u8> {
        self.inner.save_incremental()
    }

    /// The whole document, compacted.
    pub fn save(&mut self) -> Vec<u8> {
        self.inner.save()
    }

    pub fn heads(&mut self) -> Vec<ChangeHash> {
        self.inner.doc().get_heads()
    }

    /// The hash of the document's first change (the one that created it),
    /// which every replica shares for good: the document's identity.
    pub fn genesis(&mut self) -> Option<String> {
        let first = self.inner.changes(&[]).iter().find(|c| c.deps().is_empty())?.hash();
        Some(first.to_string())
    }

    /// The actor of the document's first change: for the realm, its founder.
    pub fn genesis_actor(&mut self) -> Option<Vec<u8>> {
        let changes = self.inner.changes(&[]);
        let first = changes.iter().find(|c| c.deps().is_empty())?;
        Some(first.actor_id().to_bytes().to_vec())
    }

    /// Encoded changes the holder of `have` lacks.
    pub fn changes_since(&mut self, have: &[ChangeHash]) -> Vec<Vec<u8>> {
        self.inner.changes(have).iter().map(|c| c.clone().bytes().into_owned()).collect()
    }

    /// Applies encoded changes; duplicates and out-of-order delivery are fine
    /// (automerge queues changes until their dependencies arrive).
    pub fn apply(&mut self, changes: &[Vec<u8>]) -> Result<(), DocError> {
        self.edits += 1;
        let mut decoded = Vec::with_capacity(changes.len());
        for c in changes {
            crate::chunks::check(c)?;
            decoded.push(
                guarded("a change", || automerge::Change::from_bytes(c.clone()))?
                    .map_err(|e| DocError::BadChange(e.to_string()))?,
            );
        }
        let inner = self.inner.doc_mut();
        let applied = guarded("changes", move || inner.apply_changes(decoded));
        self.drop_patches();
        applied??;
        self.inner.share(None);
        Ok(())
    }

    pub fn merge(&mut self, other: &mut Doc) -> Result<(), DocError> {
        self.edits += 1;
        let merged = self.inner.doc_mut().merge(&mut other.inner.doc());
        self.drop_patches();
        merged?;
        Ok(())
    }

    /// Forgets the patches automerge recorded. automerge 0.12 logs a patch,
    /// with its value, for every operation it applies, even while no diff
    /// cursor is set, and keeps them until the cursor is reset; Atoll never
    /// reads them, so without this a replica kept every value a peer ever
    /// wrote (`crdt/tests/memory.rs`). Call after anything that applies or
    /// commits operations.
    pub(crate) fn drop_patches(&mut self) {
        self.inner.doc().reset_diff_cursor();
    }

    /// A new document, nothing of it saved yet.
    pub(crate) fn from_inner(inner: AutoCommit) -> Doc {
        let inner = crate::replica::Body::new(inner, Vec::new());
        Doc { inner, ledger: Default::default(), edits: 0, collections: Default::default() }
    }

    /// A document read from saved bytes: saved up to its heads.
    fn loaded(mut inner: AutoCommit) -> Doc {
        let mut heads = inner.get_heads();
        heads.sort();
        let inner = crate::replica::Body::new(inner, heads);
        Doc { inner, ledger: Default::default(), edits: 0, collections: Default::default() }
    }

    /// An empty replica, to be filled by the sync protocol from a peer that holds
    /// the document (a site document this site has not seen yet).
    pub fn empty(actor: &[u8]) -> Doc {
        Doc::from_inner(AutoCommit::new().with_actor(ActorId::from(actor)))
    }

    /// The next automerge sync message for a peer whose progress is `state`,
    /// with the signatures of the changes it carries, or None when the peer
    /// is known to have everything.
    ///
    /// The state holds what the peer said it has; should automerge still
    /// panic on it, the state is reset (a fresh sync, as after a restart)
    /// rather than the site stopped.
    pub fn sync_out(&mut self, state: &mut SyncState) -> Option<(Vec<u8>, Vec<crate::Signed>)> {
        use automerge::sync::SyncDoc;
        // A peer whose heads we lack only because we refused them would be
        // answered for ever (each side's heads differ): then we speak only
        // when we have changes to send.
        let stuck = self.stuck_on_refused(state);
        let saved = stuck.then(|| state.clone());
        let wanted = self.ledger.wanted(&self.inner.doc());
        let mut inner = self.inner.doc();
        let st = &mut *state;
        // What the message carries is what it adds to the state's sent hashes.
        let before = st.sent_hashes.len();
        let sent_before = (before > 0).then(|| st.sent_hashes.clone());
        // Changes held back for a missing dependency are not in automerge's
        // queue, so it would not ask for that dependency: we do (a change a
        // bloom filter's false positive kept from us is asked for by hash).
        let generated = guarded("a sync state", move || {
            inner.sync().generate_sync_message(st).map(|mut m| {
                // The encoding requires the hashes sorted (it panics otherwise).
                m.need.extend(wanted);
                m.need.sort();
                m.need.dedup();
                let whole = m.changes.iter().any(crate::chunks::is_document);
                (m.encode(), whole)
            })
        });
        match generated {
            Ok(Some((msg, whole))) => {
                // A whole document carries every change, those sent before too.
                let new: Vec<ChangeHash> = if whole {
                    self.inner.changes(&[]).iter().map(automerge::Change::hash).collect()
                } else {
                    state
                        .sent_hashes
                        .iter()
                        .filter(|h| sent_before.as_ref().is_none_or(|b| !b.contains(*h)))
                        .copied()
                        .collect()
                };
                if let Some(saved) = saved.filter(|_| new.is_empty()) {
                    *state = saved;
                    return None;
                }
                Some((msg, self.signatures(new)))
            }
            Ok(None) => None,
            Err(_) => {
                *state = SyncState::new();
                None
            }
        }
    }

    /// Whether every head of the peer's that we lack is a change we refused.
    fn stuck_on_refused(&self, state: &SyncState) -> bool {
        let Some(theirs) = &state.their_heads else { return false };
        let lacking = ReadDoc::get_missing_deps(&*self.inner.doc(), theirs);
        !lacking.is_empty() && lacking.iter().all(|h| self.ledger.is_refused(&h.0))
    }

    /// Applies a peer's sync message, each change it carries passing `gate`
    /// first (crate::provenance); `sigs` came beside the message.
    pub fn sync_in(
        &mut self,
        state: &mut SyncState,
        msg: &[u8],
        sigs: &[crate::Signed],
        gate: &mut dyn crate::Gate,
    ) -> Result<crate::Received, DocError> {
        self.edits += 1;
        use automerge::sync::SyncDoc;
        let mut msg = guarded("a sync message", || automerge::sync::Message::decode(msg))?
            .map_err(|e| DocError::BadChange(e.to_string()))?;
        for have in &msg.have {
            sound_bloom(&have.bloom.to_bytes())?;
        }
        let chunks: Vec<Vec<u8>> = msg.changes.iter().map(<[u8]>::to_vec).collect();
        for chunk in &chunks {
            crate::chunks::check(chunk)?;
        }
        // The changes go through the gate; automerge sees the rest of the
        // message (heads, needs, bloom filters) with none, and first: seeing
        // the sender's heads already held, it would take the message for an
        // acknowledgement and not answer, and the sender would never learn
        // what we now hold.
        msg.changes = automerge::sync::ChunkList::empty();
        let changes = crate::provenance::changes_of(&chunks)?;
        let mut inner = self.inner.doc();
        let st = &mut *state;
        let answered = guarded("a sync message", move || inner.sync().receive_sync_message(st, msg));
        self.drop_patches();
        answered??;
        let received = self.admit(changes, sigs, gate)?;
        // Automerge, not seeing the changes, could not tell that the
        // sender's heads are now shared; left behind, every later summary
        // we send would cover all changes since (crate::exchange).
        if let Some(theirs) = &state.their_heads
            && !theirs.is_empty()
            && ReadDoc::get_missing_deps(&*self.inner.doc(), theirs).is_empty()
        {
            state.shared_heads.clone_from(theirs);
        }
        Ok(received)
    }

    /// `make(self)`, remembered under `what` for other replicas of the same
    /// heads in this process (the simulator's thousands of sites decode the
    /// realm's member list once per state, not once each). `make` must read
    /// nothing but the document's content.
    pub fn memo<T: std::any::Any + Send + Sync>(
        &self,
        what: &'static str,
        make: impl FnOnce(&Doc) -> T,
    ) -> std::sync::Arc<T> {
        crate::replica::memo(&self.inner, what, || make(self))
    }

    /// A 32-byte digest of the current heads: equal digests, equal documents.
    pub fn digest(&mut self) -> [u8; 32] {
        use sha2::Digest;
        let mut heads = self.inner.doc().get_heads();
        heads.sort();
        let mut h = sha2::Sha256::new();
        for head in heads {
            h.update(head.0);
        }
        h.finalize().into()
    }

    /// Writes from now on as `actor`. Atoll's sites never do (a change under
    /// another site's name is refused by every other site); tests and
    /// tampered builds do, to show that.
    pub fn set_actor(&mut self, actor: &[u8]) {
        self.inner.set_actor(ActorId::from(actor));
    }

    /// A copy acting as `actor` (a new replica of the same document).
    pub fn fork_as(&mut self, actor: &[u8]) -> Doc {
        Doc::from_inner(self.inner.doc().fork().with_actor(ActorId::from(actor)))
    }
}

fn json_to_scalar(v: &Json) -> ScalarValue {
    match v {
        Json::Null => ScalarValue::Null,
        Json::Bool(b) => ScalarValue::Boolean(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => ScalarValue::Int(i),
            (None, Some(u)) => ScalarValue::Uint(u),
            _ => ScalarValue::F64(n.as_f64().unwrap_or(0.0)),
        },
        Json::String(s) => ScalarValue::Str(s.as_str().into()),
        nested => ScalarValue::Bytes(serde_json::to_vec(nested).unwrap_or_default()),
    }
}

/// Values read under the document's lock, kept after it is released.
fn owned(values: Vec<(Value<'_>, ObjId)>) -> Vec<(Value<'static>, ObjId)> {
    values.into_iter().map(|(v, id)| (v.into_owned(), id)).collect()
}

fn scalars(values: Vec<(Value<'_>, automerge::ObjId)>) -> Vec<Json> {
    values.iter().filter(|(v, _)| matches!(v, Value::Scalar(_))).map(|(v, _)| scalar_to_json(v)).collect()
}

fn scalar_to_json(v: &Value<'_>) -> Json {
    let Value::Scalar(s) = v else { return Json::Null };
    match s.as_ref() {
        ScalarValue::Null => Json::Null,
        ScalarValue::Boolean(b) => Json::Bool(*b),
        ScalarValue::Int(i) | ScalarValue::Timestamp(i) => Json::from(*i),
        ScalarValue::Uint(u) => Json::from(*u),
        ScalarValue::F64(f) => Json::from(*f),
        ScalarValue::Str(s) => Json::String(s.to_string()),
        ScalarValue::Bytes(b) => serde_json::from_slice(b).unwrap_or(Json::Null),
        ScalarValue::Counter(c) => Json::from(i64::from(c)),
        ScalarValue::Unknown { .. } => Json::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_bytes_that_panic_automerge_are_an_error() {
        // Found by fuzz/fuzz_targets/document.rs: automerge 0.12's loader
        // unwraps a bad integer column of a bundle chunk. Bundles are now
        // refused before automerge reads them (crdt/src/chunks.rs); `guarded`
        // stays for the panics not found yet.
        let bytes = include_bytes!("../../fuzz/corpus/document/automerge-load-panic");
        let loaded = Doc::load_any(bytes, b"s");
        assert!(matches!(loaded, Err(DocError::BadChange(_) | DocError::Panicked(_))), "{:?}", loaded.err());
        assert!(matches!(guarded("a test", || panic!("caught")), Err(DocError::Panicked(_))));
    }

    #[test]
    fn a_bloom_filter_without_bits_is_refused_and_the_state_stays_usable() {
        // Found by fuzz/fuzz_targets/sync.rs: automerge 0.12 stores the
        // filter and divides by its zero bit count when it next answers.
        let bytes = include_bytes!("../../fuzz/corpus/sync/bloom-without-bits");
        let mut doc = Doc::create(b"s", &["things"], 0).unwrap();
        let mut state = SyncState::new();
        let refused = doc.sync_in(&mut state, bytes, &[], &mut Anyone);
        assert!(matches!(refused, Err(DocError::BadChange(ref m)) if m.contains("bloom")), "{refused:?}");
        assert!(doc.sync_out(&mut state).is_some());
    }

    use crate::testing::Anyone;

    #[test]
    fn bloom_headers_out_of_range_are_refused() {
        assert!(sound_bloom(&[]).is_ok());
        assert!(sound_bloom(&[3, 10, 7, 0, 0, 0, 0]).is_ok());
        assert!(sound_bloom(&[3, 0, 7]).is_err(), "no bits per entry");
        assert!(sound_bloom(&[3, 10, 0x80, 0x80, 0x80, 0x80, 0x0f]).is_err(), "billions of probes");
        assert!(sound_bloom(&[0x80]).is_err(), "truncated");
    }
    use crate::entity::{Member, SiteId};

    fn member(addr: &str) -> Member {
        Member {
            site: SiteId::new("edge-1").unwrap(),
            public_key: "ab".repeat(32),
            region: "eu".into(),
            operator: "op".into(),
            joined_at: 7,
            addrs: vec![addr.into()],
            invitation: Some("nonce".into()),
            api_cert: None,
        }
    }

    #[test]
    fn packed_entities_roundtrip_merge_whole_and_read_the_field_form_too() {
        let mut a = Doc::create(b"a", &[Member::COLLECTION], 0).unwrap();
        a.put(&member("/ip4/1")).unwrap();
        a.commit(1);
        assert_eq!(a.get::<Member>("edge-1").unwrap(), Some(member("/ip4/1")));
        // Rewriting the same value adds nothing to the history.
        a.put(&member("/ip4/1")).unwrap();
        assert!(a.commit(2).is_none());
        let mut b = a.fork_as(b"b");
        b.put(&member("/ip4/2")).unwrap();
        b.commit(3);
        a.merge(&mut b).unwrap();
        assert_eq!(a.list::<Member>().unwrap(), vec![member("/ip4/2")]);
        // A record written field by field (older documents) still reads.
        let coll = a.collection(Member::COLLECTION).unwrap();
        let obj = a.inner.local().put_object(&coll, "edge-2", ObjType::Map).unwrap();
        let fields =
            serde_json::to_value(Member { site: SiteId::new("edge-2").unwrap(), ..member("x") }).unwrap();
        for (k, v) in fields.as_object().unwrap() {
            a.inner.local().put(&obj, k.as_str(), json_to_scalar(v)).unwrap();
        }
        a.commit(4);
        let names: Vec<String> =
            a.list::<Member>().unwrap().into_iter().map(|m| m.site.to_string()).collect();
        assert_eq!(names, ["edge-1", "edge-2"]);
        assert_eq!(a.count::<Member>(), 2);
    }
}
