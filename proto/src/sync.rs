//! Anti-entropy between peers (docs/architecture.md, "Peers together"), sans IO.
//!
//! On connect, and every [`REPAIR_EVERY`] with a few random peers, a peer sends
//! the digest of the heads of every document it holds; only documents whose
//! digests differ run the automerge sync protocol. Local changes are announced
//! to every connected peer as sync messages once they are persisted. Sync
//! progress is kept per (peer, document) and dropped on disconnect.

use std::collections::{BTreeMap, BTreeSet};

use atoll_crdt::{Doc, Intent, IntentOutcome, Millis, SiteDoc, SiteId};
use rand_core::RngCore;

use crate::overlay::Rings;
use crate::peer::{DocId, Effects, Peer, TimerId};
use crate::wire::PeerMsg;

/// Period of the repair round.
pub const REPAIR_EVERY: Millis = 30_000;
/// Peers contacted per repair round.
pub const REPAIR_FANOUT: usize = 3;
/// How long after a lost message the exchange with that peer is reopened:
/// long enough that a burst of failures (a connection closing under several
/// requests) reopens it once, short enough to converge within the heal goal.
pub const RESYNC_AFTER: Millis = 300;

/// The sites a document's owner gave rights to. A transfer's key is
/// `<project>/<recipient>`: the keys name them without decoding every
/// transfer (this runs after each change to the document, which may hold
/// thousands).
fn recipients(doc: &Doc) -> BTreeSet<SiteId> {
    doc.keys::<atoll_crdt::Transfer>()
        .iter()
        .filter_map(|k| k.rsplit_once('/').and_then(|(_, to)| SiteId::new(to).ok()))
        .collect()
}

impl Peer {
    pub(crate) fn doc_mut(&mut self, id: &DocId) -> Option<&mut Doc> {
        match id {
            DocId::Realm => Some(&mut self.realm.doc),
            DocId::Site(s) if s == &self.site => Some(&mut self.own.doc),
            DocId::Site(s) => self.others.get_mut(s).map(|d| &mut d.doc),
        }
    }

    fn doc_ids(&self) -> Vec<DocId> {
        let mut ids = vec![DocId::Realm, DocId::Site(self.site.clone())];
        ids.extend(self.others.keys().cloned().map(DocId::Site));
        ids
    }

    pub(crate) fn digest_msg(&mut self) -> PeerMsg {
        self.digest_for(None)
    }

    /// The digest of the documents we share with `peer` (all we hold, for None).
    fn digest_for(&mut self, peer: Option<&SiteId>) -> PeerMsg {
        let ids: Vec<DocId> =
            self.doc_ids().into_iter().filter(|id| peer.is_none_or(|p| self.shares(p, id))).collect();
        let docs = ids.into_iter().filter_map(|id| Some((id.clone(), self.doc_mut(&id)?.digest()))).collect();
        PeerMsg::Digest { docs }
    }

    /// Refreshes the member list and custody sets after membership changed.
    /// Members are added, and removed for good (leaving a removal record), so
    /// the two counts tell (counting walks the map's keys, far cheaper than
    /// decoding every member after each realm change).
    fn refresh_custody(&mut self) {
        if !self.custody.stale {
            return;
        }
        self.custody.stale = false;
        let counts =
            (self.realm.doc.count::<atoll_crdt::Member>(), self.realm.doc.count::<atoll_crdt::Removal>());
        if counts != self.custody.counts {
            self.custody.counts = counts;
            // Sites holding the same realm share the rings (the simulator).
            self.custody.list = self.realm.doc.memo("custody rings", |doc| {
                let members: Vec<atoll_crdt::Member> = doc.list().unwrap_or_default();
                Rings::new(&members.iter().map(Seat::from).collect::<Vec<_>>())
            });
            self.custody.overlay = self.custody.list.overlay(&self.site);
            self.custody.of.clear();
        }
    }

    pub(crate) fn custodians_of(&mut self, owner: &SiteId) -> Vec<SiteId> {
        self.refresh_custody();
        if let Some(c) = self.custody.of.get(owner) {
            return c.clone();
        }
        let c = custodians(&self.custody.list, owner);
        self.custody.of.insert(owner.clone(), c.clone());
        c
    }

    /// Whether we gave `peer` quota rights: it needs our document to count them.
    fn is_recipient(&mut self, peer: &SiteId) -> bool {
        if self.custody.recipients.is_none() {
            self.custody.recipients = Some(recipients(&self.own.doc));
        }
        self.custody.recipients.as_ref().is_some_and(|r| r.contains(peer))
    }

    /// Whether `peer` should hold (and so be offered) document `id`: the realm
    /// goes to everyone; a site document to its owner, its custodians, the
    /// sites its owner gave rights to, and theirs down the chain (a recipient
    /// counts rights only as far as the givers' documents it holds back them;
    /// crate `atoll_crdt::escrow`).
    pub(crate) fn shares(&mut self, peer: &SiteId, id: &DocId) -> bool {
        match id {
            DocId::Realm => true,
            DocId::Site(s) if s == &self.site => {
                self.custodians_of(s).contains(peer) || self.is_recipient(peer) || self.linked(s, peer)
            }
            DocId::Site(s) => {
                s == peer
                    || self.custodians_of(s).contains(peer)
                    || self.linked(s, peer)
                    || (self.is_recipient(peer) && self.is_upstream(s))
            }
        }
    }

    /// Whether rights from `site` can reach us through transfers written in
    /// the documents held here.
    fn is_upstream(&mut self, site: &SiteId) -> bool {
        if self.custody.upstream.is_none() {
            let mut reach = BTreeSet::from([self.site.clone()]);
            let owners: Vec<SiteId> = self.others.keys().cloned().collect();
            let mut grew = true;
            while grew {
                grew = false;
                for owner in &owners {
                    if !reach.contains(owner) && self.gave(owner).iter().any(|r| reach.contains(r)) {
                        reach.insert(owner.clone());
                        grew = true;
                    }
                }
            }
            reach.remove(&self.site);
            self.custody.upstream = Some(reach);
        }
        self.custody.upstream.as_ref().is_some_and(|u| u.contains(site))
    }

    /// The sites `owner`'s document (held here) gave rights to.
    fn gave(&mut self, owner: &SiteId) -> BTreeSet<SiteId> {
        if let Some(g) = self.custody.gave.get(owner) {
            return g.clone();
        }
        let to = self.others.get(owner).map(|d| recipients(&d.doc)).unwrap_or_default();
        self.custody.gave.insert(owner.clone(), to.clone());
        to
    }

    /// Whether `owner`'s document holds an intent for `peer` or an outcome for
    /// it: then `peer` must receive it, from the owner or anyone holding it.
    fn linked(&mut self, owner: &SiteId, peer: &SiteId) -> bool {
        if !self.custody.links.contains_key(owner) {
            let doc = if owner == &self.site {
                Some(&self.own.doc)
            } else {
                self.others.get(owner).map(|d| &d.doc)
            };
            let mut links = std::collections::BTreeSet::new();
            // A deployment's replicas: its reconcilers must see them.
            let mut deployments = std::collections::BTreeSet::new();
            if let Some(doc) = doc {
                if doc.count::<atoll_crdt::Instance>() > 0 {
                    for i in doc.list::<atoll_crdt::Instance>().unwrap_or_default() {
                        if let Some(tag) = i.replica {
                            deployments.insert(format!("{}/{}", i.project, tag.deployment));
                        }
                    }
                }
                if doc.count::<Intent>() > 0 {
                    links.extend(doc.list::<Intent>().unwrap_or_default().into_iter().map(|i| i.target));
                }
                if doc.count::<IntentOutcome>() > 0 {
                    links.extend(
                        doc.list::<IntentOutcome>().unwrap_or_default().into_iter().map(|o| o.requester),
                    );
                }
            }
            if !deployments.is_empty() {
                let members = self.member_sites();
                for key in deployments {
                    links.extend(crate::reconcile::reconcilers(&key, &members));
                }
            }
            let before = self.custody.linked_before.entry(owner.clone()).or_default();
            before.extend(links);
            self.custody.links.insert(owner.clone(), before.clone());
        }
        self.custody.links.get(owner).is_some_and(|l| l.contains(peer))
    }

    pub(crate) fn on_connected(&mut self, peer: SiteId, fx: &mut impl Effects) {
        if peer == self.site {
            return;
        }
        self.connected.insert(peer.clone());
        let digest = self.digest_for(Some(&peer));
        fx.send(&peer, digest);
    }

    pub(crate) fn on_disconnected(&mut self, peer: &SiteId) {
        self.counters.disconnected(peer);
        self.connected.remove(peer);
        self.lost.insert(peer.clone(), self.now);
        self.sync.retain(|(p, _), _| p != peer);
        self.epochs.forget(peer);
        self.pulls.forget(peer);
    }

    /// A message to `peer` was lost. Automerge's sync state counts what it
    /// sent as delivered (`sent_hashes`, `in_flight`): kept, the pair would
    /// never resend the lost changes and could trade empty messages for ever.
    /// So the pair's states start afresh, and the exchange is reopened shortly
    /// with a digest (only documents that differ resume syncing).
    pub(crate) fn on_undelivered(&mut self, peer: &SiteId, fx: &mut impl Effects) {
        if self.breaks(crate::peer::Sabotage::SyncReset) {
            return;
        }
        self.sync.retain(|(p, _), _| p != peer);
        self.epochs.forget(peer);
        if self.connected.contains(peer) && self.resync.insert(peer.clone()) {
            fx.schedule(TimerId::Resync { site: peer.clone() }, RESYNC_AFTER);
        }
    }

    pub(crate) fn on_resync(&mut self, peer: &SiteId, fx: &mut impl Effects) {
        self.resync.remove(peer);
        if self.connected.contains(peer) {
            let digest = self.digest_for(Some(peer));
            fx.send(peer, digest);
        }
    }

    pub(crate) fn on_repair(&mut self, fx: &mut impl Effects) {
        if self.breaks(crate::peer::Sabotage::Relay) {
            fx.schedule(TimerId::Repair, REPAIR_EVERY);
            return;
        }
        let mut peers: Vec<SiteId> = self.connected.iter().cloned().collect();
        // A partial Fisher-Yates shuffle with the peer's seeded RNG.
        for i in 0..peers.len().min(REPAIR_FANOUT) {
            let j = i + (self.rng.next_u64() as usize) % (peers.len() - i);
            peers.swap(i, j);
        }
        peers.truncate(REPAIR_FANOUT);
        for p in peers {
            let digest = self.digest_for(Some(&p));
            fx.send(&p, digest);
        }
        fx.schedule(TimerId::Repair, REPAIR_EVERY);
    }

    /// A replica for a document a member offers: the realm, our own document,
    /// and any member's document (peers offer what `shares` says we should
    /// hold: as owner, custodian, party to an intent, or quota recipient).
    pub(crate) fn ensure_doc(&mut self, from: &SiteId, id: &DocId) -> bool {
        match id {
            DocId::Realm => true,
            DocId::Site(s) if s == &self.site => true,
            DocId::Site(s) => {
                if self.others.contains_key(s) {
                    return true;
                }
                if !matches!(self.realm.member(s), Ok(Some(_))) || !self.is_member(from) {
                    return false;
                }
                self.others.insert(s.clone(), SiteDoc::empty(s, &self.site));
                true
            }
        }
    }

    /// Sends `peer` what it lacks of `id`; false when there was nothing to send.
    fn sync_to(&mut self, peer: &SiteId, id: &DocId, fx: &mut impl Effects) -> bool {
        self.send_sync(peer, id, None, fx)
    }

    /// Sends `peer` what it lacks of `id`, or, given the heads `since` which
    /// this site last announced it at, the changes made here since
    /// (`atoll_crdt::Doc::push_out`).
    fn send_sync(
        &mut self,
        peer: &SiteId,
        id: &DocId,
        since: Option<&[atoll_crdt::ChangeHash]>,
        fx: &mut impl Effects,
    ) -> bool {
        let key = (peer.clone(), id.clone());
        let mut state = self.sync.remove(&key).unwrap_or_default();
        let out = self.doc_mut(id).and_then(|d| match since {
            Some(since) => d.push_out(&mut state, since),
            None => d.sync_out(&mut state),
        });
        let sent = out.is_some();
        if let Some((msg, sigs)) = out {
            let epoch = self.epoch_of(id);
            let doc = id.clone();
            fx.send(
                peer,
                if epoch == 0 {
                    PeerMsg::Sync { doc, msg, sigs }
                } else {
                    PeerMsg::SyncAt { doc, epoch, msg, sigs }
                },
            );
        }
        self.sync.insert(key, state);
        sent
    }

    pub(crate) fn on_message(&mut self, now: Millis, from: SiteId, msg: PeerMsg, fx: &mut impl Effects) {
        if !self.connected.contains(&from) {
            return; // the shell connects members only; anything else is noise
        }
        match msg {
            PeerMsg::Digest { docs } => {
                let mut differing = Vec::new();
                for (id, theirs) in &docs {
                    if self.ensure_doc(&from, id) && self.doc_mut(id).map(|d| d.digest()) != Some(*theirs) {
                        differing.push(id.clone());
                    }
                }
                // Documents they should hold but did not name.
                for id in self.doc_ids() {
                    if !docs.iter().any(|(d, _)| d == &id) && self.shares(&from, &id) {
                        differing.push(id);
                    }
                }
                self.counters.differing(&from, &differing, now);
                // A differing digest means our state for the pair may be stale
                // (it may think the peer holds what it never received): a
                // fresh state opens with our heads and sends what is missing.
                for id in differing {
                    if !self.breaks(crate::peer::Sabotage::SyncReset) {
                        self.sync.remove(&(from.clone(), id.clone()));
                    }
                    self.sync_to(&from, &id, fx);
                }
            }
            PeerMsg::Heads { docs } => {
                for (id, theirs) in docs {
                    if self.ensure_doc(&from, &id) && self.doc_mut(&id).map(|d| d.digest()) != Some(theirs) {
                        use crate::pulls::Announced;
                        match self.pulls.announced(now, &id, &from, theirs) {
                            Announced::Noted => continue,
                            Announced::Ask => {}
                            Announced::AskAndWait => {
                                fx.schedule(TimerId::Pull { doc: id.clone() }, crate::pulls::PULL_WAIT)
                            }
                        }
                        self.pull(&from, &id, fx);
                    }
                }
            }
            PeerMsg::RightsAsk { project, want } => self.on_rights_ask(now, &from, &project, want, fx),
            PeerMsg::InstancesAsk { id, site } => self.on_instances_ask(now, &from, id, site, fx),
            PeerMsg::InstancesTold { id, site, instances, as_of, cut } => {
                let told = instances.map(|instances| crate::gather::Told { instances, as_of, cut });
                self.on_instances_told(now, &from, id, &site, told, fx)
            }
            PeerMsg::ReachAsk { id } => self.on_reach_ask(&from, id, fx),
            PeerMsg::ReachTold { id, reaches } => self.on_reach_told(&from, id, reaches, fx),
            PeerMsg::RightsGiven { project, amount, hints } => {
                self.on_rights_given(now, &from, &project, amount, &hints, fx)
            }
            PeerMsg::Sync { doc, msg, sigs } => self.on_sync(now, from, doc, 0, &msg, &sigs, fx),
            PeerMsg::SyncAt { doc, epoch, msg, sigs } => self.on_sync(now, from, doc, epoch, &msg, &sigs, fx),
            PeerMsg::Epoch { doc, epoch, saved, sigs } => self.on_epoch(&from, doc, epoch, &saved, &sigs),
        }
    }

    /// Asks `peer` for what it announced of `id`. The pair's state is kept
    /// (a lost message or a differing digest resets it): reopened, it asks
    /// for what changed since the heads both last shared, where a fresh one
    /// would send a bloom filter of the whole history and be answered from
    /// all of it.
    fn pull(&mut self, peer: &SiteId, id: &DocId, fx: &mut impl Effects) {
        if let Some(state) = self.sync.get_mut(&(peer.clone(), id.clone())) {
            atoll_crdt::Doc::reopen(state);
        }
        self.sync_to(peer, id, fx);
    }

    /// The neighbour asked for `doc`'s changes had its time: the next one
    /// that announced them is asked, if the document still differs.
    pub(crate) fn on_pull_wait(&mut self, now: Millis, doc: &DocId, fx: &mut impl Effects) {
        let Some(ours) = self.doc_mut(doc).map(|d| d.digest()) else { return };
        let connected = &self.connected;
        if let Some(next) = self.pulls.waited(now, doc, ours, |s| connected.contains(s)) {
            fx.schedule(TimerId::Pull { doc: doc.clone() }, crate::pulls::PULL_WAIT);
            self.pull(&next, doc, fx);
        }
    }

    /// A sync message for `doc` from a peer at `epoch` of it (crate::epoch):
    /// applied when we are at the same epoch; otherwise the side behind is
    /// brought the newer copy whole.
    #[allow(clippy::too_many_arguments)]
    fn on_sync(
        &mut self,
        now: Millis,
        from: SiteId,
        doc: DocId,
        epoch: u64,
        msg: &[u8],
        sigs: &[atoll_crdt::Signed],
        fx: &mut impl Effects,
    ) {
        if !self.ensure_doc(&from, &doc) {
            return;
        }
        match crate::epoch::compare(epoch, self.epoch_of(&doc)) {
            crate::epoch::Behind::Neither => {}
            crate::epoch::Behind::Them => {
                self.sync.remove(&(from.clone(), doc.clone()));
                self.send_epoch(&from, &doc, fx);
                return;
            }
            crate::epoch::Behind::Us => {
                // A fresh message shows the peer our epoch; it answers with its copy.
                self.sync.remove(&(from.clone(), doc.clone()));
                self.sync_to(&from, &doc, fx);
                return;
            }
        }
        let key = (from.clone(), doc.clone());
        let mut state = self.sync.remove(&key).unwrap_or_default();
        let applied = self.sync_in(&doc, &mut state, msg, sigs);
        self.sync.insert(key, state);
        match applied {
            Some(Ok(received)) => {
                self.refusals.note(&from, &doc, received.refused);
                if !self.sync_to(&from, &doc, fx) {
                    self.counters.quiet(&from, &doc, now);
                }
                let ours = self.doc_mut(&doc).map(|d| d.digest());
                if let Some(next) = ours.and_then(|ours| self.pulls.applied(now, &doc, &from, ours)) {
                    fx.schedule(TimerId::Pull { doc: doc.clone() }, crate::pulls::PULL_WAIT);
                    self.pull(&next, &doc, fx);
                }
            }
            // A malformed message: drop its sync progress and start over next round.
            Some(Err(_)) | None => {
                self.sync.remove(&(from, doc));
            }
        }
    }

    /// Applies a sync message to document `id`, every change passing the
    /// document's gate (crate::provenance).
    fn sync_in(
        &mut self,
        id: &DocId,
        state: &mut atoll_crdt::SyncState,
        msg: &[u8],
        sigs: &[atoll_crdt::Signed],
    ) -> Option<Result<atoll_crdt::Received, atoll_crdt::DocError>> {
        use crate::provenance::{Members, Owner, key_of};
        let open = self.breaks(crate::peer::Sabotage::Provenance);
        match id {
            DocId::Realm => {
                let founder = self.founder();
                let rules = !self.breaks(crate::peer::Sabotage::Rules);
                let mut gate = Members { founder, open, rules };
                Some(self.realm.doc.sync_in(state, msg, sigs, &mut gate))
            }
            DocId::Site(owner) => {
                let mut gate = Owner { site: owner.clone(), key: key_of(&self.realm, owner), open };
                self.doc_mut(id).map(|d| d.sync_in(state, msg, sigs, &mut gate))
            }
        }
    }

    /// Tells connected peers about changed documents: local changes are pushed
    /// as sync messages (one round trip to every peer); changes received from
    /// `relayed_from` are announced to the others as heads only, which they
    /// pull if they lack them (on a full mesh they usually came directly).
    pub(crate) fn announce(
        &mut self,
        changed: &[DocId],
        relayed_from: Option<&SiteId>,
        fx: &mut impl Effects,
    ) {
        let peers: Vec<SiteId> = self.connected.iter().cloned().collect();
        // A new recipient of our rights counts them only once it holds the
        // documents that back them: offer those now, not at the next repair.
        for p in std::mem::take(&mut self.custody.introduce) {
            if !self.connected.contains(&p) {
                continue;
            }
            let upstream: Vec<SiteId> = self.others.keys().filter(|s| **s != p).cloned().collect();
            for s in upstream {
                let id = DocId::Site(s);
                if self.shares(&p, &id) {
                    self.sync_to(&p, &id, fx);
                }
            }
        }
        // What changed since the last announcement of each document: for a
        // local change, exactly what is pushed.
        let mut since = BTreeMap::new();
        for id in changed {
            if let Some(heads) = self.doc_mut(id).map(|d| d.heads())
                && let Some(before) = self.pushed.insert(id.clone(), heads)
            {
                since.insert(id.clone(), before);
            }
        }
        // Only we write our own document: its changes are always local (an
        // intent applied on a peer's message, say), so they are pushed.
        let own = DocId::Site(self.site.clone());
        let (local, changed): (Vec<DocId>, Vec<DocId>) = match relayed_from {
            Some(_) => changed.iter().cloned().partition(|id| id == &own),
            None => (changed.to_vec(), Vec::new()),
        };
        for id in &local {
            for p in &peers {
                if self.shares(p, id) {
                    self.send_sync(p, id, since.get(id).map(Vec::as_slice), fx);
                }
            }
        }
        let Some(from) = relayed_from else {
            return;
        };
        if self.breaks(crate::peer::Sabotage::Relay) {
            return;
        }
        // Received changes go on along the overlay only (crate::overlay): a
        // bounded number of announcements per site, not one per pair.
        self.refresh_custody();
        let relay = self.custody.overlay.relay(|s| self.connected.contains(s));
        for p in relay.iter().filter(|p| *p != from) {
            let ids: Vec<DocId> = changed.iter().filter(|id| self.shares(p, id)).cloned().collect();
            let docs: Vec<(DocId, [u8; 32])> =
                ids.into_iter().filter_map(|id| Some((id.clone(), self.doc_mut(&id)?.digest()))).collect();
            if !docs.is_empty() {
                fx.send(p, PeerMsg::Heads { docs });
            }
        }
    }
}

/// How many custodians keep each site document besides its owner.
pub const CUSTODIANS: usize = 3;

/// What custody needs of a member: every site keeps this for every member,
/// so it is kept small (a full record is ten times the size).
#[derive(Debug, Clone)]
pub struct Seat {
    pub site: SiteId,
    pub region: String,
}

impl From<&atoll_crdt::Member> for Seat {
    fn from(m: &atoll_crdt::Member) -> Seat {
        Seat { site: m.site.clone(), region: m.region.clone() }
    }
}

/// The custodians of `owner`'s document, chosen among its overlay neighbours
/// (`crate::overlay`: every other member in a realm of at most
/// `RELAY_ALL_UP_TO`): members of its region first, then the others, each
/// group ordered by a hash of (owner, member), so that every site computes
/// the same set and the load spreads evenly. Being neighbours, an owner and
/// its custodians are linked anyway: custody adds no connection
/// (`crate::overlay::kept`), and a custodian is sent the owner's changes
/// directly and relays them along the rings.
pub fn custodians(rings: &Rings, owner: &SiteId) -> Vec<SiteId> {
    use sha2::Digest;
    let region = rings.region(owner).unwrap_or("");
    let near = rings.overlay(owner).neighbours();
    let mut ranked: Vec<(bool, [u8; 32], &SiteId)> = near
        .iter()
        .map(|site| {
            let mut h = sha2::Sha256::new();
            h.update(owner.as_str());
            h.update([0]);
            h.update(site.as_str());
            (rings.region(site) != Some(region), h.finalize().into(), site)
        })
        .collect();
    ranked.sort();
    ranked.into_iter().take(CUSTODIANS).map(|(_, _, s)| s.clone()).collect()
}

#[cfg(test)]
mod custody_tests {
    use super::*;
    use atoll_crdt::Member;

    fn member(name: &str, region: &str) -> Member {
        Member {
            site: SiteId::new(name).unwrap(),
            public_key: String::new(),
            region: region.into(),
            operator: String::new(),
            joined_at: 0,
            addrs: Vec::new(),
            invitation: None,
            api_cert: None,
        }
    }

    #[test]
    fn custodians_are_deterministic_regional_and_exclude_the_owner() {
        let members: Vec<Seat> = (0..20)
            .map(|i| Seat::from(&member(&format!("s{i}"), if i % 2 == 0 { "eu" } else { "us" })))
            .collect();
        let eu = |s: &SiteId| s.as_str()[1..].parse::<u32>().unwrap() % 2 == 0;
        let rings = Rings::new(&members);
        for owner in members.iter().map(|m| m.site.clone()) {
            let c = custodians(&rings, &owner);
            assert_eq!(c.len(), CUSTODIANS);
            assert!(!c.contains(&owner));
            let near = crate::overlay::Overlay::build(&members, &owner).neighbours();
            assert!(c.iter().all(|s| near.contains(s)), "custodians are neighbours: {c:?}");
            // Same region first: one from elsewhere only once every
            // neighbour of the owner's region is a custodian.
            if c.iter().any(|s| eu(s) != eu(&owner)) {
                assert!(near.iter().filter(|s| eu(s) == eu(&owner)).all(|s| c.contains(s)), "{c:?}");
            }
        }
        let owner = SiteId::new("s4").unwrap();
        let c = custodians(&rings, &owner);
        let mut shuffled = members.clone();
        shuffled.reverse();
        assert_eq!(custodians(&Rings::new(&shuffled), &owner), c);
        assert_eq!(custodians(&Rings::new(&members[..2]), &SiteId::new("s0").unwrap()).len(), 1);
    }
}
