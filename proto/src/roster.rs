//! The realm's rules on membership (docs/architecture.md, "Realm rules on
//! membership"): who may enrol, rewrite or remove a member, and who may
//! revoke a user's tokens. Checked by every site on receipt of a realm
//! change (the realm's gate, crate::provenance) and by the writing site
//! before it writes, alongside the rules on content (crate::rules).
//!
//! - A member record is rewritten only by its own site, which cannot change
//!   what admitted it (its key, its invitation, its admission).
//! - A new member carries the consent of the realm admin who asked for the
//!   invitation it joined with; its name, key and invitation were never a
//!   member's or a removed site's.
//! - A member record goes only with a removal of its key in the same change.
//! - A removal carries a realm admin's consent and is final: never
//!   rewritten, never deleted.
//! - A revocation of all of a user's tokens carries the consent of that
//!   user or of a realm admin, and never moves back in time.
//! - The realm's floor rises only with a realm admin's consent (a thief
//!   raising it early would shut out the sites not yet upgraded).

use atoll_crdt::realm::FLOOR_CONSENT;
use atoll_crdt::{
    Admission, Consent, Doc, Enrolment, Entity, Incoming, Member, RecordWrite, Removal, Revocation,
    RootWrite, ScalarValue, SiteId,
};
use sha2::{Digest, Sha256};

use crate::api::ApiError;
use crate::consent::{Caller, FLOOR};
use crate::peer::Peer;
use crate::rules::{At, consented, realm_admin_key};

/// The collections these rules guard.
const GUARDED: &[&str] = &[Member::COLLECTION, Removal::COLLECTION, Revocation::COLLECTION];

/// Prefix of what a session key signs for a membership statement: never a
/// record, an intent, a token or a change.
const DOMAIN: &[u8] = b"atoll-roster-v1\0";

fn statement(kind: &str, fields: impl serde::Serialize) -> Vec<u8> {
    let fields = serde_json::to_vec(&fields).unwrap_or_default();
    let digest = Sha256::digest([kind.as_bytes(), b"\0", &fields].concat());
    [DOMAIN, digest.as_slice()].concat()
}

/// What an admin consents to when asking for an invitation.
pub(crate) fn admission_message(
    issuer: &SiteId,
    name: Option<&SiteId>,
    expires_at: u64,
    nonce: &str,
) -> Vec<u8> {
    statement("admission", (issuer, name, expires_at, nonce))
}

fn removal_message(r: &Removal) -> Vec<u8> {
    statement("removal", (&r.site, &r.public_key, &r.invitation, &r.by, r.at))
}

fn revocation_message(r: &Revocation) -> Vec<u8> {
    statement("revocation", (&r.user, &r.token, r.expires_at, &r.by, r.at))
}

pub(crate) fn floor_message(to: u64) -> Vec<u8> {
    statement("floor", to)
}

/// A change that raises the realm's floor to `to` carries, in the same
/// change, the consent of a realm admin as of its dependencies.
pub fn check_floor(doc: &Doc, change: &Incoming<'_>, to: u64) -> Result<(), String> {
    let consent = change
        .root_writes()
        .into_iter()
        .find_map(|(key, write)| match (key.as_str(), write) {
            (FLOOR_CONSENT, RootWrite::Put(ScalarValue::Str(json))) => Some(json),
            _ => None,
        })
        .ok_or_else(|| format!("it raises the realm's floor to {to} with no realm admin's consent"))?;
    let consent: Consent =
        serde_json::from_str(&consent).map_err(|_| "its consent to the floor is unreadable".to_owned())?;
    let at = At { doc, heads: Some(change.deps) };
    consented(&at, &consent, &floor_message(to), |u| realm_admin_key(u, "raise the realm's floor"))
        .map(drop)
        .map_err(|why| format!("it raises the realm's floor to {to}: {why}"))
}

/// The rules for one incoming realm change by `author`.
pub fn check_change(doc: &Doc, change: &Incoming<'_>, author: &SiteId) -> Result<(), String> {
    let guarded: Vec<&'static str> = GUARDED.iter().copied().filter(|c| doc.has_collection(c)).collect();
    let writes = change.record_writes(doc, &guarded).map_err(|e| e.to_string())?;
    if writes.is_empty() {
        return Ok(());
    }
    let at = At { doc, heads: Some(change.deps) };
    // The keys this change removes: a member record may go with them.
    let removed: Vec<String> = writes
        .iter()
        .filter(|w| w.collection == Removal::COLLECTION)
        .filter_map(|w| w.put.as_deref().and_then(|b| serde_json::from_slice::<Removal>(b).ok()))
        .map(|r| r.public_key)
        .collect();
    for RecordWrite { collection, key, put } in writes {
        let judged = match (collection, put) {
            (Member::COLLECTION, Some(bytes)) => {
                parse::<Enrolment>(&key, &bytes).and_then(|m| check_member(&at, author, &m))
            }
            (Member::COLLECTION, None) => match at.get::<Member>(&key)? {
                Some(m) if !removed.contains(&m.public_key) => {
                    Err(format!("it deletes or edits site {}'s record without removing its key", m.site))
                }
                _ => Ok(()),
            },
            (Removal::COLLECTION, Some(bytes)) => {
                parse::<Removal>(&key, &bytes).and_then(|r| check_removal(&at, &r))
            }
            (Removal::COLLECTION, None) => Err("it deletes or edits a removal (removals are final)".into()),
            (_, Some(bytes)) => parse::<Revocation>(&key, &bytes).and_then(|r| check_revocation(&at, &r)),
            (_, None) if key.starts_with("t/") => Ok(()),
            (_, None) => Err("it deletes or edits a revocation of all of a user's tokens".into()),
        };
        judged.map_err(|why| format!("{collection} record {key:?}: {why}"))?;
    }
    Ok(())
}

fn parse<T: Entity>(key: &str, bytes: &[u8]) -> Result<T, String> {
    let record: T = serde_json::from_slice(bytes).map_err(|e| format!("unreadable ({e})"))?;
    if record.key() != key {
        return Err(format!("it is stored under another record's key ({})", record.key()));
    }
    Ok(record)
}

/// A member record written by `author`: its own, or an enrolment.
pub(crate) fn check_member(at: &At<'_>, author: &SiteId, record: &Enrolment) -> Result<(), String> {
    let m = &record.member;
    let Some(before) = at.get::<Member>(m.site.as_str())? else {
        return check_enrolment(at, record);
    };
    if author != &before.site {
        return Err(format!("it rewrites site {}'s record (only that site does)", before.site));
    }
    // Its admission matters only when it enrols (a release that keeps no
    // admission drops it on a rewrite).
    let admitted = |x: &Member| (x.public_key.clone(), x.invitation.clone(), x.joined_at);
    if admitted(&before) != admitted(m) {
        return Err("it changes what admitted the site (its key, invitation or joining time)".into());
    }
    Ok(())
}

/// A new member: admitted by a realm admin's invitation, under a name, key
/// and invitation never used before.
fn check_enrolment(at: &At<'_>, record: &Enrolment) -> Result<(), String> {
    let m = &record.member;
    let Admission { issuer, name, expires_at, consent } =
        record.admission.as_ref().ok_or("it enrols a site without a realm admin's consent")?;
    let nonce = m.invitation.as_deref().ok_or("it enrols a site without an invitation")?;
    if name.as_ref().is_some_and(|n| n != &m.site) {
        return Err(format!("its invitation admits another site name, not {}", m.site));
    }
    if crate::auth::decode_key(&m.public_key).is_none() {
        return Err("its public key is not an ed25519 key".into());
    }
    let removals: Vec<Removal> = at.list()?;
    if let Some(r) = removals
        .iter()
        .find(|r| r.site == m.site || r.public_key == m.public_key || r.invitation.as_deref() == Some(nonce))
    {
        return Err(format!("its name, key or invitation was removed site {}'s", r.site));
    }
    let members: Vec<Member> = at.list()?;
    if let Some(x) =
        members.iter().find(|x| x.public_key == m.public_key || x.invitation.as_deref() == Some(nonce))
    {
        return Err(format!("its key or invitation is site {}'s", x.site));
    }
    if !at.member(issuer)? {
        return Err(format!("its invitation was sealed by {issuer}, not a member"));
    }
    let message = admission_message(issuer, name.as_ref(), *expires_at, nonce);
    consented(at, consent, &message, |s| realm_admin_key(s, "invite sites")).map(drop)
}

fn check_removal(at: &At<'_>, r: &Removal) -> Result<(), String> {
    if at.get::<Removal>(&r.key())?.is_some() {
        return Err("it rewrites a removal (removals are final)".into());
    }
    let consent = r.consent.as_ref().ok_or("it carries no realm admin's consent")?;
    let signer = consented(at, consent, &removal_message(r), |s| realm_admin_key(s, "remove sites"))?;
    if signer.name != r.by {
        return Err(format!("it names {} as the remover; its consent is {}'s", r.by, signer.name));
    }
    Ok(())
}

fn check_revocation(at: &At<'_>, r: &Revocation) -> Result<(), String> {
    if r.token.is_some() {
        // One token's: only a holder of the token knows its digest.
        return Ok(());
    }
    let consent = r.consent.as_ref().ok_or("it carries no consent of the user or a realm admin")?;
    let signer = consented(at, consent, &revocation_message(r), |s| {
        if s.name == r.user {
            s.key.clone().ok_or_else(|| format!("user {} has no key", s.name))
        } else {
            realm_admin_key(s, "revoke another user's tokens")
        }
    })?;
    if signer.name != r.by {
        return Err(format!("it names {} as the revoker; its consent is {}'s", r.by, signer.name));
    }
    if at.get::<Revocation>(&r.key())?.is_some_and(|before| r.at < before.at) {
        return Err(format!("it moves user {}'s revocation back in time", r.user));
    }
    Ok(())
}

impl Peer {
    /// `caller`'s consent to `message`. Below the floor it is written
    /// whenever the caller's token carries a session (tokens of the release
    /// before carry none), so that what it admits still holds once the
    /// floor rises.
    fn consent_of(&self, caller: &Caller, message: &[u8]) -> Result<Option<Consent>, ApiError> {
        match caller.signing_session() {
            Ok(session) => Ok(Some(session.sign_message(message))),
            Err(_) if self.realm.floor() < FLOOR => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Raises the realm's floor to `to` with `caller`'s consent, checked
    /// as every other site will check it.
    pub(crate) fn raise_floor(&mut self, caller: &Caller, to: u64) -> Result<(), ApiError> {
        let consent = caller.signing_session()?.sign_message(&floor_message(to));
        let at = At { doc: &self.realm.doc, heads: None };
        consented(&at, &consent, &floor_message(to), |u| realm_admin_key(u, "raise the realm's floor"))
            .map_err(|why| ApiError::Forbidden(format!("the realm's rules refuse this: {why}")))?;
        let json = serde_json::to_string(&consent).map_err(|e| ApiError::Internal(e.to_string()))?;
        self.realm.raise_floor(to, Some(&json))?;
        Ok(())
    }

    /// The check every other site makes on receipt, made before writing
    /// (a change they refuse would doom every later change of ours).
    fn precheck(&self, check: impl FnOnce(&At<'_>) -> Result<(), String>) -> Result<(), ApiError> {
        if self.realm.floor() < FLOOR {
            return Ok(());
        }
        check(&At { doc: &self.realm.doc, heads: None })
            .map_err(|why| ApiError::Forbidden(format!("the realm's rules refuse this: {why}")))
    }

    /// An admin's consent to the invitation with these fields.
    pub(crate) fn consent_to_admit(
        &self,
        caller: &Caller,
        name: Option<&SiteId>,
        expires_at: u64,
        nonce: &str,
    ) -> Result<Option<Consent>, ApiError> {
        self.consent_of(caller, &admission_message(&self.site, name, expires_at, nonce))
    }

    /// Checks an enrolment this site is about to write.
    pub(crate) fn precheck_member(&self, m: &Enrolment) -> Result<(), ApiError> {
        self.precheck(|at| check_member(at, &self.site, m))
    }

    /// Signs and checks a removal this site is about to write.
    pub(crate) fn seal_removal(&self, caller: &Caller, mut r: Removal) -> Result<Removal, ApiError> {
        r.consent = None;
        r.consent = self.consent_of(caller, &removal_message(&r))?;
        self.precheck(|at| check_removal(at, &r))?;
        Ok(r)
    }

    /// Signs and checks a revocation this site is about to write.
    pub(crate) fn seal_revocation(&self, caller: &Caller, mut r: Revocation) -> Result<Revocation, ApiError> {
        r.consent = None;
        if r.token.is_none() {
            r.consent = self.consent_of(caller, &revocation_message(&r))?;
        }
        self.precheck(|at| check_revocation(at, &r))?;
        Ok(r)
    }
}
