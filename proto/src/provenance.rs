//! Who may write which document (docs/architecture.md, "Provenance"): the
//! gates every change from a peer passes before it is applied or stored, and
//! the record of what they refused.
//!
//! - A site document takes changes from its owner only, signed with the key
//!   the realm binds to the owner's name.
//! - The realm takes changes from sites that were members when they wrote
//!   them: the author's member record, and no removal of its key, as of the
//!   change's dependencies. The founder's first changes (which enrol it) are
//!   checked against the key written in the realm's first change. After its
//!   genesis, a realm change touches the root only to raise the floor, with
//!   a realm admin's consent (crate::roster).

use std::collections::VecDeque;

use atoll_crdt::realm::{FLOOR, FLOOR_CONSENT, MAX_FLOOR, floor_at};
use atoll_crdt::{
    ChangeHash, Doc, Gate, Incoming, Member, Realm, Refused, Removal, RootWrite, ScalarValue, Signed, SiteId,
};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier};

use crate::auth::decode_key;
use crate::peer::DocId;

/// Refusals kept for the shell to log (the count goes on beyond).
pub const MAX_RECENT: usize = 64;

/// Signs one of our own changes.
pub fn signer(key: &SigningKey) -> impl FnMut(&[u8]) -> [u8; 64] + '_ {
    move |message| key.sign(message).to_bytes()
}

fn check_sig(key_hex: &str, change: &Incoming<'_>) -> Result<(), String> {
    let sig = change.sig.ok_or("unsigned")?;
    let key = decode_key(key_hex).ok_or("its author's key is unreadable")?;
    key.verify(&Signed::message(&change.hash), &Signature::from_bytes(sig))
        .map_err(|_| "its signature does not verify with its author's key".to_owned())
}

/// The key the realm binds to `site`'s name, removed or not (a name belongs
/// to one key for good: docs/architecture.md, "Membership").
pub fn key_of(realm: &Realm, site: &SiteId) -> Option<String> {
    if let Ok(Some(m)) = realm.doc.get::<Member>(site.as_str()) {
        return Some(m.public_key);
    }
    let removals: Vec<Removal> = realm.doc.list().ok()?;
    removals.into_iter().find(|r| &r.site == site).map(|r| r.public_key)
}

/// A site document's gate: its owner's changes only.
pub struct Owner {
    pub site: SiteId,
    pub key: Option<String>,
    /// Admit anything (the `Provenance` sabotage).
    pub open: bool,
}

impl Gate for Owner {
    fn admit(&mut self, _doc: &Doc, change: &Incoming<'_>) -> Result<(), String> {
        if self.open {
            return Ok(());
        }
        if change.actor != self.site.as_str().as_bytes() {
            return Err(format!("written into {}'s document by another site", self.site));
        }
        let key = self.key.as_deref().ok_or("its owner's key is not in the realm")?;
        check_sig(key, change)
    }
}

/// The realm's gate: members as of what the change's author saw.
pub struct Members {
    /// The realm's first author, whose key the first change names.
    pub founder: Option<Vec<u8>>,
    pub open: bool,
    /// Check the realm's rules on content (crate::rules); off: the `Rules`
    /// sabotage.
    pub rules: bool,
}

impl Members {
    fn key_at(&self, doc: &Doc, site: &SiteId, heads: &[ChangeHash]) -> Result<String, String> {
        let read = |e: atoll_crdt::DocError| e.to_string();
        let key = match doc.get_at::<Member>(site.as_str(), heads).map_err(read)? {
            Some(m) => m.public_key,
            None if self.founder.as_deref() == Some(site.as_str().as_bytes()) => doc
                .root_at(atoll_crdt::realm::FOUNDER, heads)
                .map_err(read)?
                .and_then(|v| v.as_str().map(str::to_owned))
                .ok_or("the realm names no founder key")?,
            None => return Err("its author was not a member (never, or no longer)".into()),
        };
        if (crate::rules::At { doc, heads: Some(heads) }).removed(site, &key)? {
            return Err("its author had been removed".into());
        }
        Ok(key)
    }
}

impl Gate for Members {
    fn admit(&mut self, doc: &Doc, change: &Incoming<'_>) -> Result<(), String> {
        if self.open || change.genesis {
            return Ok(());
        }
        if change.deps.is_empty() {
            return Err("a second first change".into());
        }
        let site = SiteId::new(&change.author()).map_err(|_| "its author is not a site name".to_owned())?;
        let key = self.key_at(doc, &site, change.deps)?;
        check_sig(&key, change)?;
        let raised = root_rule(doc, change)?;
        // The founder's first change after the genesis writes the first
        // admin, whom no one could have consented to: it is to the realm's
        // authority what the genesis is to its layout (automerge takes one
        // change per author and sequence number, so it cannot be redone).
        let bootstrap = self.founder.as_deref() == Some(change.actor) && change.change.seq() == 2;
        if self.rules && !bootstrap && crate::rules::apply_to(doc, change) {
            crate::rules::check_change(doc, change, &site)?;
            crate::roster::check_change(doc, change, &site)?;
        }
        // Checked below the consent floor too: the first raise is the one
        // that matters most (it shuts out the release before).
        if let Some(to) = raised.filter(|_| self.rules) {
            crate::roster::check_floor(doc, change, to)?;
        }
        Ok(())
    }

    /// The checks above read the document, the change and these fields only.
    fn pure(&self) -> Option<Vec<u8>> {
        let mut params = vec![u8::from(self.open), u8::from(self.rules), u8::from(self.founder.is_some())];
        params.extend(self.founder.as_deref().unwrap_or_default());
        Some(params)
    }
}

/// After its genesis, a realm change may touch the root only to raise the
/// floor (with the consent of who asked for it): a put of an object there
/// would replace a whole collection (the users, the members) for every site,
/// and a lower floor would let requests without their user's consent in
/// again. Returns the floor the change raises the realm to, if any.
fn root_rule(doc: &Doc, change: &Incoming<'_>) -> Result<Option<u64>, String> {
    let mut raised = None;
    for (key, write) in change.root_writes() {
        let to = match (key.as_str(), &write) {
            (FLOOR, RootWrite::Put(ScalarValue::Uint(n))) => *n,
            (FLOOR, RootWrite::Put(ScalarValue::Int(n))) if *n >= 0 => n.unsigned_abs(),
            (FLOOR_CONSENT, RootWrite::Put(ScalarValue::Str(_))) => continue,
            _ => return Err(format!("it rewrites the realm's root key {key:?}")),
        };
        let from = floor_at(doc, change.deps);
        if to < from || to > MAX_FLOOR {
            return Err(format!("it moves the realm's floor from {from} to {to}"));
        }
        raised = Some(to);
    }
    Ok(raised)
}

/// What the gates refused, for the shell to log and count.
#[derive(Default)]
pub struct Refusals {
    pub count: u64,
    recent: VecDeque<(SiteId, DocId, Refused)>,
}

impl Refusals {
    pub(crate) fn note(&mut self, from: &SiteId, doc: &DocId, refused: Vec<Refused>) {
        for r in refused {
            self.count += 1;
            if self.recent.len() == MAX_RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back((from.clone(), doc.clone(), r));
        }
    }

    /// Refusals since the last call: (the peer that sent it, the document, what).
    pub fn take(&mut self) -> Vec<(SiteId, DocId, Refused)> {
        self.recent.drain(..).collect()
    }
}

/// What a tampered member does (`Sabotage::Forge`): in every other site's
/// document it holds, gives itself quota rights of project `default` from
/// that site and rewrites its descriptor with a huge capacity; in its own,
/// gives every other site rights it never held and asks every other site,
/// "from admin", for an instance `forged` with no consent of the admin's; and
/// into the realm, under its own name, writes a realm admin `forged-admin`
/// that no realm admin consented to. Every other site must refuse or
/// discount all five.
pub(crate) fn forge_rights(peer: &mut crate::Peer) {
    let me = peer.site.clone();
    let _ = peer.realm.doc.put(&atoll_crdt::User {
        name: "forged-admin".into(),
        password_hash: String::new(),
        realm_admin: true,
        created_at: 0,
        key: None,
        seal: atoll_crdt::Seal { rev: 1, ..Default::default() },
    });
    let targets: Vec<SiteId> = peer.realm.members().unwrap_or_default().into_iter().map(|m| m.site).collect();
    for target in targets.iter().filter(|t| *t != &me) {
        // Rights it never held, in its own document (a change it may write).
        let _ = peer.own.doc.put(&atoll_crdt::Transfer {
            project: "default".into(),
            from: me.clone(),
            to: target.clone(),
            count: 1,
            total: atoll_crdt::Resources::new(1000, 1000, 1 << 20),
            at: 0,
        });
    }
    for (n, target) in targets.into_iter().filter(|t| t != &me).enumerate() {
        let command = serde_json::json!({
            "command": "create_instance", "name": "forged", "project": "default", "image": "forged"
        });
        let _ = peer.own.doc.put(&atoll_crdt::Intent {
            id: format!("{me}.{:016x}", 0xf0f0_0000 + n),
            requester: me.clone(),
            target,
            user: "admin".into(),
            command: command.to_string(),
            summary: "create instance default/forged".into(),
            created_at: 0,
            consent: None,
        });
    }
    for (owner, doc) in peer.others.iter_mut() {
        let _ = doc.doc.put(&atoll_crdt::Transfer {
            project: "default".into(),
            from: owner.clone(),
            to: me.clone(),
            count: 1,
            total: atoll_crdt::Resources::new(1000, 1000, 1 << 20),
            at: 0,
        });
        if let Ok(Some(mut d)) = doc.descriptor() {
            d.capacity = atoll_crdt::Resources::new(1 << 20, 1 << 20, 1 << 40);
            let _ = doc.doc.put(&d);
        }
    }
}

/// The realm as a joining site receives it: the saved document and the
/// signatures of its changes.
#[derive(serde::Serialize, serde::Deserialize)]
struct RealmCopy {
    doc: Vec<u8>,
    sigs: Vec<u8>,
}

pub(crate) fn realm_copy(realm: &mut Realm, key: &SigningKey) -> Vec<u8> {
    // Changes of ours not flushed yet (a realm just founded) are signed now.
    realm.doc.sign_own(&mut signer(key));
    let sigs = realm.doc.ledger().save();
    crate::wire::encode(&RealmCopy { doc: realm.doc.save(), sigs })
}

/// A realm copy passed change by change through the realm's gate: a joining
/// site takes nothing its authors did not sign, whoever handed it over.
pub(crate) fn verified_realm(bytes: &[u8], site: &SiteId) -> Result<Realm, crate::api::ApiError> {
    use crate::api::ApiError;
    let copy: RealmCopy = crate::wire::decode(bytes, crate::wire::MAX_MESSAGE)
        .map_err(|e| ApiError::Invalid(format!("realm copy: {e}")))?;
    let changes = atoll_crdt::provenance::changes_in(&copy.doc)?;
    let founder = changes.iter().find(|c| c.deps().is_empty()).map(|c| c.actor_id().to_bytes().to_vec());
    let mut doc = Doc::empty(site.as_str().as_bytes());
    let sigs = atoll_crdt::Ledger::parse(&copy.sigs);
    let received = doc.admit(changes, &sigs, &mut Members { founder, open: false, rules: true })?;
    if let Some(r) = received.refused.first() {
        return Err(ApiError::Forbidden(format!(
            "the realm copy holds a change its author did not sign ({} by {}: {})",
            r.change, r.author, r.why
        )));
    }
    if received.waiting > 0 {
        return Err(ApiError::Invalid("the realm copy lacks changes others depend on".into()));
    }
    Ok(Realm::from_doc(doc)?)
}
