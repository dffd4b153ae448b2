//! Histories that stay small: a document written by one site only (a site
//! document) is compacted by its owner into a new *epoch*, a fresh automerge
//! history holding only the current content, numbered one above the last
//! (root key `epoch`, written in the epoch's first change). Replicas never
//! merge across epochs: a holder of an older epoch adopts a newer one whole,
//! every change of it passing the document's gate (docs/architecture.md,
//! "Histories that stay small").

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ObjId, ObjType, ReadDoc, Value};

use crate::doc::{Doc, DocError, SCHEMA};
use crate::provenance::{Gate, Signed, changes_in};

/// Root key holding a document's epoch (absent: epoch 0).
pub const EPOCH: &str = "epoch";

impl Doc {
    /// This replica's epoch: 0 until its owner first compacts it.
    pub fn epoch(&self) -> u64 {
        self.root_values(EPOCH).unwrap_or_default().iter().filter_map(|v| v.as_u64()).max().unwrap_or(0)
    }

    /// The same content as a new epoch's first change, written by `actor`
    /// (the owner): every root scalar but the epoch, and every collection
    /// with its entries, copied as they read now (conflicts resolved as
    /// automerge shows them). The history, and the signatures of it, stay
    /// behind.
    pub fn compacted(&self, actor: &[u8], now: crate::Millis) -> Result<Doc, DocError> {
        let mut inner = AutoCommit::new().with_actor(ActorId::from(actor));
        inner.put(automerge::ROOT, "schema", SCHEMA)?;
        inner.put(automerge::ROOT, EPOCH, self.epoch() + 1)?;
        copy_map(&self.inner.doc(), &automerge::ROOT, &mut inner, &automerge::ROOT, true)?;
        let mut doc = Doc::from_inner(inner);
        doc.commit(now);
        Ok(doc)
    }

    /// A replica of a newer epoch from a peer's saved copy: an empty replica
    /// (actor `actor`) into which every change of `saved` passes `gate` with
    /// the signatures `sigs`. None unless every change was admitted and the
    /// result is epoch `epoch` (a relay cannot make a holder drop its copy
    /// for a forged or partial one).
    pub fn adopt(
        saved: &[u8],
        sigs: &[Signed],
        actor: &[u8],
        epoch: u64,
        gate: &mut dyn Gate,
    ) -> Result<Option<Doc>, DocError> {
        let changes = changes_in(saved)?;
        let total = changes.len();
        let mut doc = Doc::empty(actor);
        let received = doc.admit(changes, sigs, gate)?;
        let whole = received.refused.is_empty() && received.waiting == 0 && received.applied == total;
        Ok((whole && doc.epoch() == epoch).then_some(doc))
    }
}

/// Copies the entries of map `from` (in `src`) into map `to` (in `dst`); at
/// the root, the epoch and schema are left out (the new epoch writes its own).
fn copy_map(
    src: &AutoCommit,
    from: &ObjId,
    dst: &mut AutoCommit,
    to: &ObjId,
    root: bool,
) -> Result<(), DocError> {
    for key in src.keys(from).collect::<Vec<_>>() {
        if root && (key == EPOCH || key == "schema") {
            continue;
        }
        match src.get(from, key.as_str())? {
            Some((Value::Scalar(s), _)) => {
                dst.put(to, key.as_str(), s.into_owned())?;
            }
            Some((Value::Object(kind), id)) => {
                let child = dst.put_object(to, key.as_str(), kind)?;
                copy_object(src, &id, kind, dst, &child)?;
            }
            None => {}
        }
    }
    Ok(())
}

fn copy_object(
    src: &AutoCommit,
    from: &ObjId,
    kind: ObjType,
    dst: &mut AutoCommit,
    to: &ObjId,
) -> Result<(), DocError> {
    match kind {
        ObjType::Map | ObjType::Table => copy_map(src, from, dst, to, false),
        ObjType::List | ObjType::Text => {
            for i in 0..src.length(from) {
                match src.get(from, i)? {
                    Some((Value::Scalar(s), _)) => dst.insert(to, i, s.into_owned())?,
                    Some((Value::Object(k), id)) => {
                        let child = dst.insert_object(to, i, k)?;
                        copy_object(src, &id, k, dst, &child)?;
                    }
                    None => {}
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::provenance::{Gate, Incoming};
    use crate::{Doc, Instance, SiteDoc, SiteId};

    struct Only(Vec<u8>);

    impl Gate for Only {
        fn admit(&mut self, _doc: &Doc, change: &Incoming<'_>) -> Result<(), String> {
            (change.actor == self.0).then_some(()).ok_or_else(|| "another author".into())
        }
    }

    fn instance(name: &str) -> Instance {
        serde_json::from_value(serde_json::json!({
            "name": name, "project": "p", "site": "site-1", "image": "p/img", "image_digest": "d",
            "kind": "process", "cpus": 1, "memory_mib": 64, "disk_mib": 0, "restart": "never",
            "args": ["a", "b"], "env": {"K": "V"}, "desired": "running", "observed": "running", "reason": "",
            "observed_at": 0, "handle": null, "restarts": 0, "created_by": "u", "created_at": 0
        }))
        .unwrap()
    }

    fn churned(n: usize) -> SiteDoc {
        let site = SiteId::new("site-1").unwrap();
        let mut d = SiteDoc::create(&site, 1_000).unwrap();
        for i in 0..n {
            let inst = instance(&format!("i{i}"));
            d.put_instance(&inst).unwrap();
            d.doc.commit(1_000 + i as u64);
            if i % 3 != 0 {
                d.delete_instance(&format!("p/{}", inst.name)).unwrap();
                d.doc.commit(1_000 + i as u64);
            }
        }
        d
    }

    #[test]
    fn a_compacted_document_reads_the_same_with_one_change() {
        let d = churned(60);
        let before = d.instances().unwrap();
        assert_eq!(before.len(), 20);
        let c = d.doc.compacted(b"site-1", 9_000).unwrap();
        assert_eq!(c.size().changes, 1);
        assert_eq!(c.epoch(), 1);
        let c = SiteDoc::of(d.site.clone(), c);
        assert_eq!(c.instances().unwrap(), before);
        assert_eq!(c.doc.compacted(b"site-1", 9_001).unwrap().epoch(), 2);
    }

    #[test]
    fn an_epoch_is_adopted_whole_or_not_at_all() {
        let d = churned(9);
        let mut c = d.doc.compacted(b"site-1", 9_000).unwrap();
        let saved = c.save();
        let adopted = Doc::adopt(&saved, &[], b"site-2", 1, &mut Only(b"site-1".to_vec())).unwrap().unwrap();
        assert_eq!(adopted.count::<Instance>(), 3);
        // Claimed as another epoch, or written by someone else: refused.
        assert!(Doc::adopt(&saved, &[], b"site-2", 2, &mut Only(b"site-1".to_vec())).unwrap().is_none());
        assert!(Doc::adopt(&saved, &[], b"site-2", 1, &mut Only(b"site-3".to_vec())).unwrap().is_none());
        assert!(Doc::adopt(b"junk", &[], b"site-2", 1, &mut Only(b"site-1".to_vec())).is_err());
    }
}
