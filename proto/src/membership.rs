//! Joining a realm, and what every site knows of the others.
//!
//! A realm admin asks any site for an invitation: a sealed, expiring,
//! single-use token naming the issuing site and where it listens. The joining
//! site presents it with its membership record to any member; that member
//! checks the seal against the issuer's key in the realm, enrols the newcomer
//! and answers with the realm document. Transport shells accept sync traffic
//! only from members; the invitation is the one way in.

use atoll_crdt::{Admission, Enrolment, Member, Millis, Removal, SiteId};
use rand_core::RngCore;
use serde::{Deserialize, Serialize};

use crate::api::{ApiError, ApiResult, Reply, SiteRow, SiteView};
use crate::auth;
use crate::consent::Caller;
use crate::peer::{Effects, Peer};

/// Text that starts every invitation token.
pub const INVITE_PREFIX: &str = "atoll-invite.";
/// Longest invitation accepted.
pub const MAX_INVITATION: usize = 4096;
/// Most listen addresses a member may publish.
pub const MAX_ADDRS: usize = 16;
/// Default and longest lifetime of an invitation.
pub const INVITE_TTL: Millis = 3_600_000;
pub const MAX_INVITE_TTL: Millis = 7 * 24 * 3_600_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invitation {
    /// The site that sealed it, on behalf of `admin`.
    pub issuer: SiteId,
    pub admin: String,
    /// The one site name it admits, if set.
    pub name: Option<SiteId>,
    pub expires_at: Millis,
    /// Recorded in the member it admitted, so that it admits one site only.
    pub nonce: String,
    /// Where the issuer listens (transport addresses, opaque to the core).
    pub addrs: Vec<String>,
    /// The realm's id ([`atoll_crdt::Doc::genesis`]): the joiner takes a
    /// realm copy of this realm only. None in invitations of releases before.
    #[serde(default)]
    pub realm: Option<String>,
    /// `admin`'s consent to admitting a site with it (crate::roster); none
    /// from releases before the realm's rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent: Option<atoll_crdt::Consent>,
}

impl Invitation {
    /// Reads a token's contents without checking its seal (a joining site has no
    /// realm to check it against; the member it presents it to does).
    pub fn read(token: &str) -> Result<Invitation, ApiError> {
        Invitation::open(token).map(|(inv, ..)| inv).map_err(|why| ApiError::Invalid(why.into()))
    }

    /// The invitation in a token, with the signed bytes and the signature.
    fn open(token: &str) -> Result<(Invitation, Vec<u8>, [u8; 64]), &'static str> {
        let sealed = token
            .trim()
            .strip_prefix(INVITE_PREFIX)
            .ok_or("not an invitation (it starts with atoll-invite.)")?;
        if sealed.len() > MAX_INVITATION {
            return Err("invitation too long");
        }
        auth::open(sealed)
    }
}

/// What a joining site sends to a member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub invitation: String,
    pub member: Member,
}

impl Peer {
    /// Seals an invitation (realm admins only; checked by the caller of this).
    pub(crate) fn invite(
        &mut self,
        now: Millis,
        admin: &Caller,
        name: Option<SiteId>,
        ttl: Millis,
    ) -> ApiResult {
        if ttl == 0 || ttl > MAX_INVITE_TTL {
            let most = MAX_INVITE_TTL / 1000;
            return Err(ApiError::Invalid(format!("an invitation lives between 1 s and {most} s")));
        }
        if let Some(n) = &name
            && self.realm.member(n)?.is_some()
        {
            return Err(ApiError::Conflict(format!("site {n} is already a member")));
        }
        let mut nonce = [0u8; 16];
        self.rng.fill_bytes(&mut nonce);
        let addrs = self.realm.member(&self.site)?.map(|m| m.addrs).unwrap_or_default();
        if addrs.is_empty() {
            return Err(ApiError::Conflict(
                "this site publishes no peer address yet, so no one could join through it".into(),
            ));
        }
        let (expires_at, nonce) = (now + ttl, hex::encode(nonce));
        let consent = self.consent_to_admit(admin, name.as_ref(), expires_at, &nonce)?;
        let inv = Invitation {
            issuer: self.site.clone(),
            admin: admin.user.name.clone(),
            name,
            expires_at,
            nonce,
            addrs,
            realm: self.realm.doc.genesis(),
            consent,
        };
        let token = format!("{INVITE_PREFIX}{}", auth::seal(&self.key, &inv));
        Ok(Reply::Invitation(crate::api::InvitationView { token, expires_at: inv.expires_at }))
    }

    /// Checks a join request and enrols the newcomer; returns the realm
    /// document's bytes for it to start from. A repeated request from the same
    /// site and key (a retry) succeeds again; any other reuse is refused.
    pub fn accept_join(
        &mut self,
        now: Millis,
        req: &JoinRequest,
        fx: &mut impl Effects,
    ) -> Result<Vec<u8>, ApiError> {
        let refused = |why: String| ApiError::Forbidden(format!("join refused: {why}"));
        let (inv, body, sig) = Invitation::open(&req.invitation).map_err(|why| refused(why.into()))?;
        let issuer = self.realm.member(&inv.issuer)?.ok_or_else(|| refused("unknown issuer".into()))?;
        auth::check_seal(&issuer.public_key, &body, &sig).map_err(|why| refused(why.into()))?;
        if inv.expires_at <= now {
            return Err(refused("the invitation has expired; ask for a new one".into()));
        }
        let m = &req.member;
        if inv.name.as_ref().is_some_and(|n| n != &m.site) {
            return Err(refused(format!("the invitation is for another site name, not {}", m.site)));
        }
        if auth::decode_key(&m.public_key).is_none() {
            return Err(refused("the member's public key is not an ed25519 key".into()));
        }
        if m.addrs.len() > MAX_ADDRS {
            return Err(refused(format!("more than {MAX_ADDRS} addresses")));
        }
        if m.api_cert.as_ref().is_some_and(|c| c.len() > 80) {
            return Err(refused("the API certificate fingerprint is too long".into()));
        }
        let removals: Vec<Removal> = self.realm.doc.list()?;
        if let Some(r) = removals.iter().find(|r| r.public_key == m.public_key) {
            return Err(refused(format!("this site's key was removed from the realm (as site {})", r.site)));
        }
        // A removed site's name stays taken: its document, replicated by its
        // custodians, would otherwise become a newcomer's history.
        if removals.iter().any(|r| r.site == m.site) {
            return Err(refused(format!("site name {} belonged to a removed site; choose another", m.site)));
        }
        if let Some(r) = removals.iter().find(|r| r.invitation.as_deref() == Some(inv.nonce.as_str())) {
            return Err(refused(format!("the invitation was already used by site {}", r.site)));
        }
        let members: Vec<Member> = self.realm.doc.list()?;
        if let Some(same) = members.iter().find(|x| x.site == m.site) {
            if same.public_key == m.public_key && same.invitation.as_deref() == Some(inv.nonce.as_str()) {
                return Ok(self.realm_bytes());
            }
            return Err(refused(format!("site name {} is taken", m.site)));
        }
        if let Some(user) = members.iter().find(|x| x.invitation.as_deref() == Some(inv.nonce.as_str())) {
            return Err(refused(format!("the invitation was already used by site {}", user.site)));
        }
        // One key, one site: a second name for a member's key would let that
        // member speak as two sites (tokens, documents, escrow shares).
        if let Some(holder) = members.iter().find(|x| x.public_key == m.public_key) {
            return Err(refused(format!("this key is already site {}'s", holder.site)));
        }
        let admission = inv.consent.map(|consent| Admission {
            issuer: inv.issuer,
            name: inv.name,
            expires_at: inv.expires_at,
            consent,
        });
        let member = Member { joined_at: now, invitation: Some(inv.nonce), ..m.clone() };
        let member = Enrolment { member, admission };
        self.precheck_member(&member).map_err(|e| refused(e.to_string()))?;
        self.enroll(now, &member, fx)?;
        Ok(self.realm_bytes())
    }

    /// Records where this site listens, so that invitations and other members
    /// can reach it. Written only when the addresses change.
    pub fn set_addrs(
        &mut self,
        now: Millis,
        mut addrs: Vec<String>,
        fx: &mut impl Effects,
    ) -> Result<(), ApiError> {
        addrs.truncate(MAX_ADDRS);
        let Some(mut me) = self.realm.doc.get::<Enrolment>(self.site.as_str())? else {
            return Ok(());
        };
        if me.member.addrs == addrs {
            return Ok(());
        }
        me.member.addrs = addrs;
        self.enroll(now, &me, fx)
    }

    /// Records the fingerprint of this site's API certificate (None: plain
    /// HTTP), so that clients logged in to the realm can check it.
    pub fn set_api_cert(
        &mut self,
        now: Millis,
        fingerprint: Option<String>,
        fx: &mut impl Effects,
    ) -> Result<(), ApiError> {
        let Some(mut me) = self.realm.doc.get::<Enrolment>(self.site.as_str())? else {
            return Ok(());
        };
        if me.member.api_cert == fingerprint {
            return Ok(());
        }
        me.member.api_cert = fingerprint;
        self.enroll(now, &me, fx)
    }

    /// `atoll site remove`: a realm admin takes a site out of the realm. Its
    /// connections are refused from then on; what it hosted is no longer
    /// managed by the realm.
    pub(crate) fn remove_site(&mut self, now: Millis, by: &Caller, site: &SiteId) -> ApiResult {
        let caller = &by.user;
        auth::require_realm_admin(caller)?;
        if site == &self.site {
            return Err(ApiError::Conflict(format!(
                "site {site} serves this call and cannot remove itself; ask another site"
            )));
        }
        let member = self
            .realm
            .member(site)?
            .ok_or_else(|| ApiError::NotFound(format!("no site {site} in this realm")))?;
        let removal = Removal {
            site: site.clone(),
            public_key: member.public_key,
            invitation: member.invitation,
            by: caller.name.clone(),
            at: now,
            consent: None,
        };
        let removal = self.seal_removal(by, removal)?;
        self.realm.doc.delete::<Member>(site.as_str())?;
        self.realm.doc.put(&removal)?;
        self.summaries.remove(site);
        Ok(Reply::removed(site.to_string()))
    }

    pub(crate) fn on_summary(&mut self, now: Millis, from: SiteId, view: SiteView) {
        // Only members' summaries are kept: the set stays as small as the realm.
        if view.descriptor.site != from || !self.is_member(&from) {
            return;
        }
        self.seen.insert(from.clone(), now);
        self.summaries.insert(from, view);
    }

    /// Raises the realm's floor to this release's wire version, once every
    /// other member is heard speaking it (`speaking`, from the shell): sites
    /// of older releases could no longer send intents.
    pub(crate) fn finish_upgrade(&mut self, caller: &Caller, speaking: &[SiteId]) -> ApiResult {
        auth::require_realm_admin(&caller.user)?;
        let to = u64::from(crate::wire::VERSION);
        let behind: Vec<String> = self
            .realm
            .members()?
            .into_iter()
            .filter(|m| m.site != self.site && !speaking.contains(&m.site))
            .map(|m| m.site.to_string())
            .collect();
        if !behind.is_empty() && self.realm.floor() < to {
            return Err(ApiError::Conflict(format!(
                "not every site is heard running this release: {} (upgrade them, or wait until they are in reach)",
                behind.join(", ")
            )));
        }
        // A keyless user's first key is taken on its own word until the
        // upgrade finishes (crate::rules): after, any member could claim it.
        let keyless: Vec<String> =
            self.realm.users()?.into_iter().filter(|u| u.key.is_none()).map(|u| u.name).collect();
        if !keyless.is_empty() && self.realm.floor() < to {
            return Err(ApiError::Conflict(format!(
                "users without a key (they have not logged in on a site of this release): {}; each logs in \
                 once on a site of this release, or a realm admin sets their password, before the upgrade \
                 can finish",
                keyless.join(", ")
            )));
        }
        if self.realm.floor() < to {
            self.raise_floor(caller, to)?;
        }
        self.realm_view(None)
    }

    pub(crate) fn is_member(&self, site: &SiteId) -> bool {
        self.realm.member(site).ok().flatten().is_some()
    }

    /// Every member, with what this site knows of it right now.
    pub(crate) fn list_sites(&self, now: Millis) -> ApiResult {
        let members = self.realm.members()?;
        let mut own = Some(self.summary()?);
        let rows = members
            .into_iter()
            .map(|m| {
                let me = m.site == self.site;
                let summary = if me { own.take() } else { self.summaries.get(&m.site).cloned() };
                SiteRow {
                    reachable: me || self.in_reach(&m.site),
                    last_seen: if me { Some(now) } else { self.seen.get(&m.site).copied() },
                    member: m,
                    summary,
                }
            })
            .collect();
        Ok(Reply::Sites(rows))
    }
}
