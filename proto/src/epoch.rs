//! Histories that stay small (docs/architecture.md): this site compacts its
//! own document into a new epoch once its history is long, and adopts newer
//! epochs of the site documents it holds, whole, from any peer. Replicas of
//! different epochs never run automerge's sync with each other: the side
//! that is behind is sent the whole newer copy instead.

use std::collections::BTreeSet;

use atoll_crdt::{Doc, Millis, SiteDoc, SiteId};

use crate::peer::{DocId, Effects, Peer};
use crate::wire::PeerMsg;

/// The realm's floor from which sites compact: every member then speaks the
/// wire version that carries epochs, so none is left holding an epoch it
/// cannot leave.
pub const FLOOR: u64 = 4;

/// Changes in this site's document's current epoch that start a new one.
pub const COMPACT_AFTER: u64 = 4096;

/// What the peer keeps about epochs.
#[derive(Debug)]
pub struct Epochs {
    /// Changes after which this site's document is compacted.
    pub(crate) after: u64,
    /// (peer, document, epoch) a whole copy was sent for since the peer
    /// connected or last missed a message: sent once, not on every message.
    sent: BTreeSet<(SiteId, DocId, u64)>,
    /// Documents whose history this input replaced: stored whole, with
    /// their ledgers, at the next flush.
    pub(crate) replaced: BTreeSet<DocId>,
}

impl Default for Epochs {
    fn default() -> Self {
        Epochs { after: COMPACT_AFTER, sent: BTreeSet::new(), replaced: BTreeSet::new() }
    }
}

impl Epochs {
    pub(crate) fn forget(&mut self, peer: &SiteId) {
        self.sent.retain(|(p, _, _)| p != peer);
    }
}

/// How a peer's epoch of a document compares with ours.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Behind {
    Neither,
    /// The peer holds an older epoch: send it ours whole.
    Them,
    /// We hold an older epoch: show the peer ours, so that it sends its own.
    Us,
}

pub(crate) fn compare(theirs: u64, ours: u64) -> Behind {
    match theirs.cmp(&ours) {
        std::cmp::Ordering::Less => Behind::Them,
        std::cmp::Ordering::Equal => Behind::Neither,
        std::cmp::Ordering::Greater => Behind::Us,
    }
}

impl Peer {
    /// Starts a new epoch of this site's document when the current one's
    /// history is long and the whole realm speaks epochs.
    pub(crate) fn compact_if_due(&mut self, now: Millis) {
        if self.own.doc.size().changes < self.epochs.after || self.realm.floor() < FLOOR {
            return;
        }
        let doc = match self.own.doc.compacted(self.site.as_str().as_bytes(), now) {
            Ok(doc) => doc,
            Err(_) => return, // keep the long history rather than lose content
        };
        self.own = SiteDoc::of(self.site.clone(), doc);
        let id = DocId::Site(self.site.clone());
        self.sync.retain(|(_, d), _| d != &id);
        self.epochs.replaced.insert(id);
    }

    /// The epoch of our copy of `id` (0 when we hold none).
    pub(crate) fn epoch_of(&mut self, id: &DocId) -> u64 {
        self.doc_mut(id).map_or(0, |d| d.epoch())
    }

    /// Sends `peer` our whole copy of `id`, once per epoch while connected.
    pub(crate) fn send_epoch(&mut self, peer: &SiteId, id: &DocId, fx: &mut impl Effects) {
        let epoch = self.epoch_of(id);
        if epoch == 0
            || self.breaks(crate::peer::Sabotage::Epoch)
            || !self.epochs.sent.insert((peer.clone(), id.clone(), epoch))
        {
            return;
        }
        let Some(doc) = self.doc_mut(id) else { return };
        let saved = doc.save();
        let sigs = doc.all_signatures();
        // Beyond a peer message it would be refused unread (docs/architecture.md, "Known limits").
        if saved.len() + sigs.len() * 96 + (64 << 10) > crate::wire::MAX_MESSAGE {
            return;
        }
        fx.send(peer, PeerMsg::Epoch { doc: id.clone(), epoch, saved, sigs });
    }

    /// A peer's whole copy of a newer epoch of a site document we hold:
    /// adopted only if every change of it passes the document's gate and it
    /// is the epoch it claims. Our own document is ours to compact alone.
    pub(crate) fn on_epoch(
        &mut self,
        from: &SiteId,
        id: DocId,
        epoch: u64,
        saved: &[u8],
        sigs: &[atoll_crdt::Signed],
    ) {
        let DocId::Site(owner) = &id else { return };
        if owner == &self.site || !self.ensure_doc(from, &id) || epoch <= self.epoch_of(&id) {
            return;
        }
        let open = self.breaks(crate::peer::Sabotage::Provenance);
        let mut gate = crate::provenance::Owner {
            site: owner.clone(),
            key: crate::provenance::key_of(&self.realm, owner),
            open,
        };
        let Ok(Some(doc)) = Doc::adopt(saved, sigs, self.site.as_str().as_bytes(), epoch, &mut gate) else {
            return;
        };
        self.others.insert(owner.clone(), SiteDoc::of(owner.clone(), doc));
        self.sync.retain(|(_, d), _| d != &id);
        self.epochs.replaced.insert(id);
    }
}
