//! The realm's rules on content (docs/architecture.md, "Realm rules on content"): who
//! may write which user, role binding, quota share and catalog entry, checked by every site on receipt
//! of a change (the realm's gate, crate::provenance) and by the writing site
//! before it writes (a change its peers refuse would doom every later change
//! of its own).
//!
//! A user or role binding is a signed, numbered statement: each version
//! carries a [`Seal`] with its revision (one above the one it replaces), a
//! retired flag (records are never deleted, so that an old statement cannot
//! be put back over a deletion) and the consent of the user who wrote it,
//! their session key's signature over the record's fields. A change that
//! writes such a record is taken only if, as of its dependencies, the record
//! follows the one it replaces and its consent verifies for a user allowed
//! to write it: a realm admin for any user or binding; a user for their own
//! password and key; a project admin for bindings of their project within
//! the sites their own binding covers, on a site it covers; a site's share
//! of a project's quota: the site itself, for a realm admin; an image: a
//! project member registers one, a project admin changes or removes it.
//! Concurrent versions read as the highest revision (`Entity::VERSIONED`), so a
//! statement put back with old dependencies loses to the newer one.

use atoll_crdt::realm::floor_at;
use atoll_crdt::{
    ChangeHash, DeploymentRecord, Doc, Entity, FlavorRecord, Holder, Image, Incoming, Member, Millis,
    ProjectRecord, QuotaGrant, RecordWrite, Removal, Revocation, Role, RoleBinding, Seal, SiteId, User,
    UserKey,
};
use sha2::{Digest, Sha256};

use crate::api::ApiError;
use crate::consent::{self, Caller, FLOOR};
use crate::peer::Peer;

/// The collections whose records are signed statements.
pub const GUARDED: &[&str] = &[
    User::COLLECTION,
    RoleBinding::COLLECTION,
    QuotaGrant::COLLECTION,
    Image::COLLECTION,
    ProjectRecord::COLLECTION,
    FlavorRecord::COLLECTION,
    DeploymentRecord::COLLECTION,
];

/// Prefix of what a session key signs for a record: never an intent, a
/// token or a change.
const DOMAIN: &[u8] = b"atoll-record-v1\0";

/// A record kept as a signed statement.
pub trait Sealed: Entity + Clone {
    fn seal(&self) -> &Seal;
    fn seal_mut(&mut self) -> &mut Seal;
    /// What the consent signs: the record's fields in a fixed order (a field
    /// added later is not signed, so that every release reads the same bytes).
    fn fields(&self) -> Vec<u8>;
    /// Whether `signer` (a user, as of the change's dependencies) may write
    /// `after` over `before` from site `author`; Ok carries the key the
    /// consent's claims must verify with.
    fn authority(
        at: &At<'_>,
        signer: &User,
        author: &SiteId,
        before: Option<&Self>,
        after: &Self,
    ) -> Result<UserKey, String>;
}

pub(crate) fn message<T: Sealed>(record: &T) -> Vec<u8> {
    let digest = Sha256::digest([T::COLLECTION.as_bytes(), b"\0", &record.fields()].concat());
    [DOMAIN, digest.as_slice()].concat()
}

impl Sealed for User {
    fn seal(&self) -> &Seal {
        &self.seal
    }
    fn seal_mut(&mut self) -> &mut Seal {
        &mut self.seal
    }
    fn fields(&self) -> Vec<u8> {
        let key = self.key.as_ref().map(|k| (&k.salt, &k.public));
        let fields = (
            &self.name,
            &self.password_hash,
            self.realm_admin,
            self.created_at,
            key,
            self.seal.rev,
            self.seal.retired,
        );
        serde_json::to_vec(&fields).unwrap_or_default()
    }
    fn authority(
        at: &At<'_>,
        signer: &User,
        _: &SiteId,
        before: Option<&User>,
        after: &User,
    ) -> Result<UserKey, String> {
        // A user's own password and key, nothing else of their record.
        let own = signer.name == after.name
            && before.is_some_and(|b| {
                !b.seal.retired
                    && !after.seal.retired
                    && b.realm_admin == after.realm_admin
                    && b.created_at == after.created_at
            });
        match (own, before.and_then(|b| b.key.clone())) {
            // A user without a key (from a realm before user keys) records
            // their first at a login, signed with the new key itself, while
            // the upgrade is under way as far as the writer knew: once it
            // finished (which needs every user's key) anyone could claim it.
            (true, None) if at.floor() < FLOOR => {
                after.key.clone().ok_or_else(|| format!("user {} has no key", after.name))
            }
            (true, None) => Err(format!(
                "user {} has no key since the realm's upgrade finished: a realm admin sets their password",
                after.name
            )),
            // A key change is signed with the key it replaces.
            (true, Some(old)) => Ok(old),
            (false, _) if signer.realm_admin => {
                signer.key.clone().ok_or_else(|| format!("user {} has no key", signer.name))
            }
            (false, _) => Err(format!(
                "user {} is not a realm admin: only realm admins create users, grant realm admin or \
                 change another user",
                signer.name
            )),
        }
    }
}

impl Sealed for RoleBinding {
    fn seal(&self) -> &Seal {
        &self.seal
    }
    fn seal_mut(&mut self) -> &mut Seal {
        &mut self.seal
    }
    fn fields(&self) -> Vec<u8> {
        let fields = (&self.user, &self.project, self.role, &self.sites, self.seal.rev, self.seal.retired);
        serde_json::to_vec(&fields).unwrap_or_default()
    }
    fn authority(
        at: &At<'_>,
        signer: &User,
        author: &SiteId,
        before: Option<&RoleBinding>,
        after: &RoleBinding,
    ) -> Result<UserKey, String> {
        let key = signer.key.clone().ok_or_else(|| format!("user {} has no key", signer.name))?;
        if signer.realm_admin {
            return Ok(key);
        }
        let own = at.binding(&signer.name, &after.project)?;
        let project = &after.project;
        let Some(own) = own.filter(|b| b.role == Role::Admin) else {
            return Err(format!("user {} is not an admin of project {project}", signer.name));
        };
        if own.sites.as_ref().is_some_and(|s| !s.contains(author)) {
            return Err(format!(
                "user {} is not an admin of project {project} on site {author}",
                signer.name
            ));
        }
        let within = |scope: Option<&Vec<SiteId>>| match (&own.sites, scope) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(own), Some(scope)) => scope.iter().all(|s| own.contains(s)),
        };
        let before = before.filter(|b| !b.seal.retired);
        if !within(after.sites.as_ref()) || before.is_some_and(|b| !within(b.sites.as_ref())) {
            return Err(format!(
                "user {} is admin of project {project} on some sites only: this binding reaches beyond them",
                signer.name
            ));
        }
        Ok(key)
    }
}

impl Sealed for QuotaGrant {
    fn seal(&self) -> &Seal {
        &self.seal
    }
    fn seal_mut(&mut self) -> &mut Seal {
        &mut self.seal
    }
    fn fields(&self) -> Vec<u8> {
        let t = &self.total;
        let fields = (
            &self.project,
            &self.site,
            self.steps,
            (t.instances, t.cpus, t.memory_mib),
            self.at,
            self.seal.rev,
            self.seal.retired,
        );
        serde_json::to_vec(&fields).unwrap_or_default()
    }
    /// A site's share of a project's total (and so the total) moves only
    /// by the site itself, for a realm admin.
    fn authority(
        _: &At<'_>,
        signer: &User,
        author: &SiteId,
        _: Option<&QuotaGrant>,
        after: &QuotaGrant,
    ) -> Result<UserKey, String> {
        if &after.site != author {
            return Err(format!("it is {}'s share, written by {author}", after.site));
        }
        realm_admin_key(signer, "set quota totals")
    }
}

impl Sealed for Image {
    fn seal(&self) -> &Seal {
        &self.seal
    }
    fn seal_mut(&mut self) -> &mut Seal {
        &mut self.seal
    }
    fn fields(&self) -> Vec<u8> {
        let content = (&self.digest, self.size, self.format, self.chunk_size, &self.chunks);
        let fields = (
            &self.project,
            &self.name,
            content,
            self.visibility,
            &self.created_by,
            self.created_at,
            self.seal.rev,
            self.seal.retired,
        );
        serde_json::to_vec(&fields).unwrap_or_default()
    }
    /// A project member (on the writing site) registers an image under their
    /// own name; anything else of a catalog entry, its removal included, is
    /// a project admin's.
    fn authority(
        at: &At<'_>,
        signer: &User,
        author: &SiteId,
        before: Option<&Image>,
        after: &Image,
    ) -> Result<UserKey, String> {
        let key = signer.key.clone().ok_or_else(|| format!("user {} has no key", signer.name))?;
        if signer.realm_admin {
            return Ok(key);
        }
        let project = &after.project;
        let creation = before.is_none_or(|b| b.seal.retired) && !after.seal.retired;
        let need = if creation { Role::Member } else { Role::Admin };
        if at.role_on(&signer.name, project, author)?.is_none_or(|r| r < need) {
            return Err(format!(
                "user {} is not {need:?} of project {project} on site {author}",
                signer.name
            ));
        }
        if creation && after.created_by != signer.name {
            return Err(format!("it names {} as its creator, not {}", after.created_by, signer.name));
        }
        Ok(key)
    }
}

impl Sealed for ProjectRecord {
    fn seal(&self) -> &Seal {
        &self.seal
    }
    fn seal_mut(&mut self) -> &mut Seal {
        &mut self.seal
    }
    fn fields(&self) -> Vec<u8> {
        let p = &self.project;
        let fields = (
            &p.name,
            &p.description,
            p.created_at,
            p.spread,
            p.storage_mib,
            self.seal.rev,
            self.seal.retired,
        );
        serde_json::to_vec(&fields).unwrap_or_default()
    }
    /// A project (its storage quota, how its rights spread, its deletion)
    /// is a realm admin's.
    fn authority(
        _: &At<'_>,
        signer: &User,
        _: &SiteId,
        _: Option<&ProjectRecord>,
        _: &ProjectRecord,
    ) -> Result<UserKey, String> {
        realm_admin_key(signer, "create, change or delete projects")
    }
}

impl Sealed for FlavorRecord {
    fn seal(&self) -> &Seal {
        &self.seal
    }
    fn seal_mut(&mut self) -> &mut Seal {
        &mut self.seal
    }
    fn fields(&self) -> Vec<u8> {
        let f = &self.flavor;
        let fields = (
            &f.name,
            (f.cpus, f.memory_mib, f.disk_mib),
            &f.created_by,
            f.created_at,
            self.seal.rev,
            self.seal.retired,
        );
        serde_json::to_vec(&fields).unwrap_or_default()
    }
    /// The flavor catalog is the realm admins'; a new flavor names its
    /// creator.
    fn authority(
        _: &At<'_>,
        signer: &User,
        _: &SiteId,
        before: Option<&FlavorRecord>,
        after: &FlavorRecord,
    ) -> Result<UserKey, String> {
        let key = realm_admin_key(signer, "keep the flavor catalog")?;
        let creation = before.is_none_or(|b| b.seal.retired) && !after.seal.retired;
        if creation && after.flavor.created_by != signer.name {
            return Err(format!("it names {} as its creator, not {}", after.flavor.created_by, signer.name));
        }
        Ok(key)
    }
}

impl Sealed for DeploymentRecord {
    fn seal(&self) -> &Seal {
        &self.seal
    }
    fn seal_mut(&mut self) -> &mut Seal {
        &mut self.seal
    }
    fn fields(&self) -> Vec<u8> {
        let fields = (
            &self.project,
            &self.name,
            &self.spec,
            &self.created_by,
            &self.home,
            self.updated_at,
            self.seal.rev,
            self.seal.retired,
        );
        serde_json::to_vec(&fields).unwrap_or_default()
    }
    /// A project member (on the writing site) writes the project's
    /// deployments under their own name: its replicas run with their rights.
    /// Its desired state must read as a deployment of that name and project
    /// (every site's reconciler trusts it).
    fn authority(
        at: &At<'_>,
        signer: &User,
        author: &SiteId,
        _: Option<&DeploymentRecord>,
        after: &DeploymentRecord,
    ) -> Result<UserKey, String> {
        let key = signer.key.clone().ok_or_else(|| format!("user {} has no key", signer.name))?;
        if after.created_by != signer.name {
            return Err(format!("it names {} as its user, not {}", after.created_by, signer.name));
        }
        if &after.home != author {
            return Err(format!("it names {} as its home, written by {author}", after.home));
        }
        crate::deployments::read_spec(after).map_err(|e| e.to_string())?;
        if signer.realm_admin {
            return Ok(key);
        }
        let project = &after.project;
        if at.role_on(&signer.name, project, author)?.is_none_or(|r| r < Role::Member) {
            return Err(format!("user {} is not Member of project {project} on site {author}", signer.name));
        }
        Ok(key)
    }
}

/// The realm as of some heads (None: as it is now): what a rule reads.
pub struct At<'a> {
    pub doc: &'a Doc,
    pub heads: Option<&'a [ChangeHash]>,
}

impl At<'_> {
    /// The realm's floor.
    pub(crate) fn floor(&self) -> u64 {
        match self.heads {
            Some(heads) => floor_at(self.doc, heads),
            None => floor_now(self.doc),
        }
    }

    /// Every record of a collection.
    pub(crate) fn list<T: Entity>(&self) -> Result<Vec<T>, String> {
        match self.heads {
            Some(heads) => self.doc.list_at(heads),
            None => self.doc.list(),
        }
        .map_err(|e| e.to_string())
    }
}

impl At<'_> {
    pub(crate) fn get<T: Entity>(&self, key: &str) -> Result<Option<T>, String> {
        match self.heads {
            Some(heads) => self.doc.get_at(key, heads),
            None => self.doc.get(key),
        }
        .map_err(|e| e.to_string())
    }

    /// A user, unless retired.
    pub fn user(&self, name: &str) -> Result<Option<User>, String> {
        Ok(self.get::<User>(name)?.filter(|u| !u.seal.retired))
    }

    pub fn binding(&self, user: &str, project: &str) -> Result<Option<RoleBinding>, String> {
        Ok(self.get::<RoleBinding>(&format!("{user}/{project}"))?.filter(|b| !b.seal.retired))
    }

    /// `user`'s role in `project` on site `site` (None: no binding, or one
    /// scoped to other sites).
    pub fn role_on(&self, user: &str, project: &str, site: &SiteId) -> Result<Option<Role>, String> {
        let binding = self.binding(user, project)?;
        Ok(binding.filter(|b| b.sites.as_ref().is_none_or(|s| s.contains(site))).map(|b| b.role))
    }

    /// Whether `site` is a member (its record, and no removal of its key).
    pub fn member(&self, site: &SiteId) -> Result<bool, String> {
        let Some(m) = self.get::<Member>(site.as_str())? else { return Ok(false) };
        Ok(!self.removed(site, &m.public_key)?)
    }

    /// Whether the key of `site` was removed (keyed by the key; realms
    /// before that keyed removals by site name).
    pub fn removed(&self, site: &SiteId, key: &str) -> Result<bool, String> {
        Ok(self.get::<Removal>(key)?.is_some()
            || self.get::<Removal>(site.as_str())?.is_some_and(|r| r.public_key == key))
    }

    pub(crate) fn revoked_before(&self, user: &str) -> Result<Option<Millis>, String> {
        if !self.doc.has_collection(Revocation::COLLECTION) {
            return Ok(None);
        }
        Ok(self.get::<Revocation>(&Revocation::user_key(user))?.map(|r| r.at))
    }
}

/// Whether `after` may replace `before` when written by site `author`, as
/// of `at`: it follows it, and its consent verifies for a user allowed to
/// write it.
pub fn judge<T: Sealed>(at: &At<'_>, author: &SiteId, before: Option<&T>, after: &T) -> Result<(), String> {
    let (from, to) = (before.map_or(0, |b| b.seal().rev), after.seal().rev);
    if to <= from {
        return Err(format!("its revision {to} does not follow {from}"));
    }
    let consent = after.seal().consent.as_ref().ok_or("it carries no user's consent")?;
    consented(at, consent, &message(after), |signer| T::authority(at, signer, author, before, after))
        .map(drop)
}

/// Whether `consent` verifies, as of `at`, as the word of a user that
/// `authority` allows (it returns the key their claims must verify with)
/// on `message`: their key signed the claims, a member issued the token,
/// after the user was created and after their last revocation of all
/// tokens, and the session key signed `message`. Ok: the signer.
pub(crate) fn consented(
    at: &At<'_>,
    consent: &atoll_crdt::Consent,
    message: &[u8],
    authority: impl FnOnce(&User) -> Result<UserKey, String>,
) -> Result<User, String> {
    let claims = consent::claims_of(consent)?;
    let signer =
        at.user(&claims.user)?.ok_or_else(|| format!("its consent is of {}, no user", claims.user))?;
    let key = authority(&signer)?;
    crate::auth::check_user_sig(&claims, &key).map_err(|why| format!("its consent: {why}"))?;
    if claims.issued_at < signer.created_at {
        return Err("its consent's token was issued before its user was created".into());
    }
    if !at.member(&claims.site)? {
        return Err(format!("its consent's token was issued by {}, not a member", claims.site));
    }
    if at.revoked_before(&signer.name)?.is_some_and(|t| claims.issued_at <= t) {
        return Err("its consent's token was revoked".into());
    }
    consent::check_session_sig(&claims, consent, message).map_err(|why| format!("its consent: {why}"))?;
    Ok(signer)
}

/// The key of `signer` if they are a realm admin.
pub(crate) fn realm_admin_key(signer: &User, what: &str) -> Result<UserKey, String> {
    if !signer.realm_admin {
        return Err(format!("user {} is not a realm admin: only realm admins {what}", signer.name));
    }
    signer.key.clone().ok_or_else(|| format!("user {} has no key", signer.name))
}

/// Whether the realm's rules apply to a change: from the consent floor on,
/// as of its dependencies or as this site holds the realm now (a change
/// dated back to before an upgrade is judged by the rules all the same).
pub fn apply_to(doc: &Doc, change: &Incoming<'_>) -> bool {
    floor_now(doc) >= FLOOR || floor_at(doc, change.deps) >= FLOOR
}

/// The realm's floor as this site holds it now (concurrent raises read as
/// their highest).
fn floor_now(doc: &Doc) -> u64 {
    let values = doc.root_values(atoll_crdt::realm::FLOOR).unwrap_or_default();
    values.iter().filter_map(|v| v.as_u64()).max().unwrap_or(atoll_crdt::realm::FIRST_FLOOR)
}

/// The rules for one incoming realm change by `author`.
pub fn check_change(doc: &Doc, change: &Incoming<'_>, author: &SiteId) -> Result<(), String> {
    let at = At { doc, heads: Some(change.deps) };
    // Collections a realm was founded without (flavors, in realms before them) hold nothing to judge.
    let guarded: Vec<&'static str> = GUARDED.iter().copied().filter(|c| doc.has_collection(c)).collect();
    let writes = change.record_writes(doc, &guarded).map_err(|e| e.to_string())?;
    check_holders(doc, change, author, &writes)?;
    for w in writes {
        let RecordWrite { collection, key, put } = w;
        let Some(bytes) = put else {
            return Err(format!(
                "it deletes or edits in place {collection} record {key:?} (such records are retired, never \
                 deleted, and written whole)"
            ));
        };
        let judged = match collection {
            User::COLLECTION => one::<User>(&at, author, &key, &bytes),
            RoleBinding::COLLECTION => one::<RoleBinding>(&at, author, &key, &bytes),
            QuotaGrant::COLLECTION => one::<QuotaGrant>(&at, author, &key, &bytes),
            ProjectRecord::COLLECTION => one::<ProjectRecord>(&at, author, &key, &bytes),
            FlavorRecord::COLLECTION => one::<FlavorRecord>(&at, author, &key, &bytes),
            DeploymentRecord::COLLECTION => one::<DeploymentRecord>(&at, author, &key, &bytes),
            _ => one::<Image>(&at, author, &key, &bytes),
        };
        judged.map_err(|why| format!("{collection} record {key:?}: {why}"))?;
    }
    Ok(())
}

/// A site says only of itself that it holds a blob; another site's holder
/// record goes only with the retirement, in the same change, of an image
/// of that digest (removing a catalog entry clears who holds it).
fn check_holders(
    doc: &Doc,
    change: &Incoming<'_>,
    author: &SiteId,
    writes: &[RecordWrite],
) -> Result<(), String> {
    if !doc.has_collection(Holder::COLLECTION) {
        return Ok(());
    }
    let retired: Vec<String> = writes
        .iter()
        .filter(|w| w.collection == Image::COLLECTION)
        .filter_map(|w| w.put.as_deref().and_then(|b| serde_json::from_slice::<Image>(b).ok()))
        .filter(|i| i.seal.retired)
        .map(|i| i.digest)
        .collect();
    for w in change.record_writes(doc, &[Holder::COLLECTION]).map_err(|e| e.to_string())? {
        let Some((digest, site)) = w.key.rsplit_once('/') else {
            return Err(format!("holder record {:?}: not digest/site", w.key));
        };
        let own = site == author.as_str();
        let judged = match &w.put {
            Some(bytes) => match serde_json::from_slice::<Holder>(bytes) {
                Ok(h) if h.key() != w.key => {
                    Err(format!("it is stored under another record's key ({})", h.key()))
                }
                Ok(_) if own => Ok(()),
                Ok(_) => Err(format!("it says site {site} holds the blob (only that site does)")),
                Err(e) => Err(format!("unreadable ({e})")),
            },
            None if own || retired.iter().any(|d| d == digest) => Ok(()),
            None => Err(format!("it deletes site {site}'s holding with no image of that digest retired")),
        };
        judged.map_err(|why| format!("holders record {:?}: {why}", w.key))?;
    }
    Ok(())
}

fn one<T: Sealed>(at: &At<'_>, author: &SiteId, key: &str, bytes: &[u8]) -> Result<(), String> {
    let after: T = serde_json::from_slice(bytes).map_err(|e| format!("unreadable ({e})"))?;
    if after.key() != key {
        return Err(format!("it is stored under another record's key ({})", after.key()));
    }
    let before = at.get::<T>(key)?;
    judge(at, author, before.as_ref(), &after)
}

/// Seals `record` as `session`'s user's statement at revision `rev`.
pub fn sign<T: Sealed>(session: &crate::consent::Session, record: &mut T, rev: u64, retired: bool) {
    *record.seal_mut() = Seal { rev, retired, consent: None };
    let consent = session.sign_message(&message(record));
    record.seal_mut().consent = Some(consent);
}

impl Peer {
    /// Writes a user or role binding as `caller`'s signed statement: one
    /// revision above the one it replaces, with their consent, after the
    /// check every other site makes on receipt. `retire`: the record is
    /// taken back (a deletion) rather than written.
    pub(crate) fn write_sealed<T: Sealed>(
        &mut self,
        caller: &Caller,
        mut record: T,
        retire: bool,
    ) -> Result<T, ApiError> {
        let before = self.realm.doc.get::<T>(&record.key())?;
        let rev = before.as_ref().map_or(0, |b| b.seal().rev) + 1;
        if self.realm.floor() < FLOOR {
            // Sites of the release before rules read no seals: a deletion
            // is a deletion, and no consent is asked.
            if retire {
                self.realm.doc.delete::<T>(&record.key())?;
            } else {
                *record.seal_mut() = Seal { rev, retired: false, consent: None };
                self.realm.doc.put(&record)?;
            }
            return Ok(record);
        }
        let session = caller.signing_session()?;
        sign(session, &mut record, rev, retire);
        judge(&At { doc: &self.realm.doc, heads: None }, &self.site, before.as_ref(), &record)
            .map_err(|why| ApiError::Forbidden(format!("the realm's rules refuse this: {why}")))?;
        self.realm.doc.put(&record)?;
        Ok(record)
    }
}
