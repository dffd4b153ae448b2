//! The realm document: membership, users, projects, roles, the image catalog and
//! quota grants. Every site holds a replica and any site may write it.

use crate::doc::{Doc, DocError};
use crate::entity::{
    Image, Member, Project, QuotaGrant, Removal, Resources, Revocation, RoleBinding, SiteId, User,
};
use crate::flavor::Flavor;
use crate::intent::Holder;
use crate::{Entity, Millis};

/// Every collection a new realm is created with. Those added after the first
/// release come last, after [`REQUIRED`]'s.
const COLLECTIONS: &[&str] = &[
    Member::COLLECTION,
    User::COLLECTION,
    Project::COLLECTION,
    RoleBinding::COLLECTION,
    Image::COLLECTION,
    QuotaGrant::COLLECTION,
    Holder::COLLECTION,
    Removal::COLLECTION,
    // Added later: not required of a saved realm.
    Revocation::COLLECTION,
    Flavor::COLLECTION,
    crate::DeploymentRecord::COLLECTION,
];

/// The collections a saved realm must have: realms founded before token
/// revocation have no `revocations` map, and no site may add one later (two
/// sites adding it concurrently would create two maps, one hiding the other),
/// so such a realm reads as having no revocations and refuses to record one.
/// The same holds for flavors and deployments.
const REQUIRED: &[&str] = COLLECTIONS.split_at(COLLECTIONS.len() - 3).0;

/// Root key of the founder's public key, written in the realm's first change.
pub const FOUNDER: &str = "founder";

/// Root key of the realm's floor: the oldest wire version its sites may
/// speak (docs/architecture.md, "Versions side by side"). It only rises: the
/// realm's gate refuses a change that lowers or removes it.
pub const FLOOR: &str = "floor";
/// Root key of the consent of the realm admin who raised the floor last
/// (JSON of a [`crate::Consent`]), written in the same change as the floor.
pub const FLOOR_CONSENT: &str = "floor_consent";
/// The floor of a realm that names none: the first wire version.
pub const FIRST_FLOOR: u64 = 2;
/// Highest floor a realm may be raised to (a forger's huge floor would shut
/// out every release to come).
pub const MAX_FLOOR: u64 = 1 << 16;

/// The realm replica held by one site.
pub struct Realm {
    pub doc: Doc,
}

/// A realm's floor as of `heads`: the highest of concurrent writes (absent
/// or unreadable: the first).
pub fn floor_at(doc: &Doc, heads: &[automerge::ChangeHash]) -> u64 {
    let values = doc.root_values_at(FLOOR, heads).unwrap_or_default();
    values.iter().filter_map(|v| v.as_u64()).max().unwrap_or(FIRST_FLOOR)
}

impl Realm {
    /// A brand-new realm, created by its first site (genesis).
    pub fn create(site: &SiteId, now: Millis) -> Result<Self, DocError> {
        Ok(Realm { doc: Doc::create(site.as_str().as_bytes(), COLLECTIONS, now)? })
    }

    /// A new realm whose first change carries `nonce` (random, from the
    /// founder): its identity, [`Doc::genesis`], is then its own.
    /// `key` (the founder's public key, hex) is written there too: the
    /// founder's changes that enrol it are signed before any member record
    /// names its key (crate::provenance).
    /// `floor` is written there too: a realm born at a floor has no state
    /// before it, so that no change can be dated back to looser rules.
    pub fn found(site: &SiteId, key: &str, nonce: &[u8], floor: u64, now: Millis) -> Result<Self, DocError> {
        use automerge::ScalarValue;
        let root = [
            ("nonce", ScalarValue::Bytes(nonce.to_vec())),
            (FOUNDER, ScalarValue::Str(key.into())),
            (FLOOR, ScalarValue::Uint(floor.clamp(FIRST_FLOOR, MAX_FLOOR))),
        ];
        Ok(Realm { doc: Doc::create_rooted(site.as_str().as_bytes(), COLLECTIONS, &root, now)? })
    }

    /// A realm from a document filled change by change (a joining site's
    /// verified copy): the layout must be complete.
    pub fn from_doc(doc: Doc) -> Result<Self, DocError> {
        doc.check(REQUIRED)?;
        Ok(Realm { doc })
    }

    pub fn load(bytes: &[u8], site: &SiteId) -> Result<Self, DocError> {
        Ok(Realm { doc: Doc::load(bytes, site.as_str().as_bytes(), REQUIRED)? })
    }

    /// The oldest wire version this realm's sites may speak.
    pub fn floor(&self) -> u64 {
        let values = self.doc.root_values(FLOOR).unwrap_or_default();
        values.iter().filter_map(|v| v.as_u64()).max().unwrap_or(FIRST_FLOOR)
    }

    /// Raises the floor to `to`, with the consent (JSON) of the realm admin
    /// who asked for it; false when it was there already.
    pub fn raise_floor(&mut self, to: u64, consent: Option<&str>) -> Result<bool, DocError> {
        if to <= self.floor() || to > MAX_FLOOR {
            return Ok(false);
        }
        if let Some(consent) = consent {
            self.doc.put_root(FLOOR_CONSENT, automerge::ScalarValue::Str(consent.into()))?;
        }
        self.doc.put_root(FLOOR, automerge::ScalarValue::Uint(to))?;
        Ok(true)
    }

    /// A user, unless retired (deleted).
    pub fn user(&self, name: &str) -> Result<Option<User>, DocError> {
        Ok(self.doc.get::<User>(name)?.filter(|u| !u.seal.retired))
    }

    /// Every user not retired.
    pub fn users(&self) -> Result<Vec<User>, DocError> {
        let mut users: Vec<User> = self.doc.list()?;
        users.retain(|u| !u.seal.retired);
        Ok(users)
    }

    /// Every role binding not retired (revoked), of one user or of all (`""`).
    pub fn bindings(&self, user: &str) -> Result<Vec<RoleBinding>, DocError> {
        let prefix = if user.is_empty() { String::new() } else { format!("{user}/") };
        let mut bindings: Vec<RoleBinding> = self.doc.list_prefix(&prefix)?;
        bindings.retain(|b| !b.seal.retired);
        Ok(bindings)
    }

    /// A project, unless retired (deleted).
    pub fn project(&self, name: &str) -> Result<Option<Project>, DocError> {
        Ok(self.project_record(name)?.map(|r| r.project))
    }

    /// A project's record with its seal, unless retired.
    pub fn project_record(&self, name: &str) -> Result<Option<crate::ProjectRecord>, DocError> {
        Ok(self.doc.get::<crate::ProjectRecord>(name)?.filter(|r| !r.seal.retired))
    }

    /// Every project not retired, by name.
    pub fn projects(&self) -> Result<Vec<Project>, DocError> {
        let records: Vec<crate::ProjectRecord> = self.doc.list()?;
        Ok(records.into_iter().filter(|r| !r.seal.retired).map(|r| r.project).collect())
    }

    /// A member, unless it was removed. A removal deletes the member record,
    /// but a rewrite of that record (new addresses) concurrent with the
    /// removal survives the merge (automerge keeps a put over a concurrent
    /// delete): the removal record, written with the key it removed, stays
    /// the word on that key.
    pub fn member(&self, site: &SiteId) -> Result<Option<Member>, DocError> {
        let Some(member) = self.doc.get::<Member>(site.as_str())? else { return Ok(None) };
        let removals: Vec<Removal> = self.doc.list()?;
        Ok((!removals.iter().any(|r| r.site == member.site && r.public_key == member.public_key))
            .then_some(member))
    }

    /// Every member, removed ones left out (see [`Realm::member`]).
    pub fn members(&self) -> Result<Vec<Member>, DocError> {
        let removals: Vec<Removal> = self.doc.list()?;
        let mut members: Vec<Member> = self.doc.list()?;
        members.retain(|m| !removals.iter().any(|r| r.site == m.site && r.public_key == m.public_key));
        Ok(members)
    }

    /// The sites of every member, removed ones left out: from the keys
    /// alone while no member was ever removed (the common case, and cheap
    /// enough to ask every few seconds in a realm of thousands).
    pub fn member_sites(&self) -> Result<Vec<SiteId>, DocError> {
        if self.doc.count::<Removal>() == 0 {
            return Ok(self.doc.keys::<Member>().into_iter().filter_map(|k| SiteId::new(&k).ok()).collect());
        }
        Ok(self.members()?.into_iter().map(|m| m.site).collect())
    }

    /// `user`'s binding in `project`, unless revoked.
    pub fn role(&self, user: &str, project: &str) -> Result<Option<RoleBinding>, DocError> {
        Ok(self.doc.get::<RoleBinding>(&format!("{user}/{project}"))?.filter(|b| !b.seal.retired))
    }

    /// A catalog entry, unless retired (removed).
    pub fn image(&self, project: &str, name: &str) -> Result<Option<Image>, DocError> {
        Ok(self.doc.get::<Image>(&format!("{project}/{name}"))?.filter(|i| !i.seal.retired))
    }

    /// The catalog entries not retired whose key (`project/name`) starts
    /// with `prefix`.
    pub fn images(&self, prefix: &str) -> Result<Vec<Image>, DocError> {
        let mut images: Vec<Image> = self.doc.list_prefix(prefix)?;
        images.retain(|i| !i.seal.retired);
        Ok(images)
    }

    /// The flavor catalog, by name (empty in a realm founded before flavors).
    pub fn flavors(&self) -> Result<Vec<Flavor>, DocError> {
        if !self.doc.has_collection(Flavor::COLLECTION) {
            return Ok(Vec::new());
        }
        let records: Vec<crate::FlavorRecord> = self.doc.list()?;
        Ok(records.into_iter().filter(|r| !r.seal.retired).map(|r| r.flavor).collect())
    }

    pub fn flavor(&self, name: &str) -> Result<Option<Flavor>, DocError> {
        Ok(self.flavor_record(name)?.map(|r| r.flavor))
    }

    /// A flavor's record with its seal, unless retired.
    pub fn flavor_record(&self, name: &str) -> Result<Option<crate::FlavorRecord>, DocError> {
        if !self.doc.has_collection(Flavor::COLLECTION) {
            return Ok(None);
        }
        Ok(self.doc.get::<crate::FlavorRecord>(name)?.filter(|r| !r.seal.retired))
    }

    /// Whether this realm keeps deployments (realms founded before them do
    /// not, and no site may add the collection later).
    pub fn has_deployments(&self) -> bool {
        self.doc.has_collection(crate::DeploymentRecord::COLLECTION)
    }

    /// Every deployment's latest record, retired ones included (a retired
    /// deployment's replicas are still to be stopped).
    pub fn deployments(&self) -> Result<Vec<crate::DeploymentRecord>, DocError> {
        if !self.has_deployments() {
            return Ok(Vec::new());
        }
        self.doc.list()
    }

    /// A deployment's latest record, retired or not.
    pub fn deployment(&self, project: &str, name: &str) -> Result<Option<crate::DeploymentRecord>, DocError> {
        if !self.has_deployments() {
            return Ok(None);
        }
        self.doc.get(&format!("{project}/{name}"))
    }

    /// Whether a token of `user` issued at `issued_at`, whose SHA-256 is
    /// `digest`, was revoked.
    pub fn revoked(&self, user: &str, digest: &str, issued_at: Millis) -> Result<bool, DocError> {
        if !self.doc.has_collection(Revocation::COLLECTION) {
            return Ok(false);
        }
        if self.doc.contains::<Revocation>(&Revocation::token_key(digest))? {
            return Ok(true);
        }
        let all: Option<Revocation> = self.doc.get(&Revocation::user_key(user))?;
        Ok(all.is_some_and(|r| issued_at <= r.at))
    }

    /// When `user`'s tokens were last revoked as a whole, if ever.
    pub fn revoked_before(&self, user: &str) -> Result<Option<Millis>, DocError> {
        if !self.doc.has_collection(Revocation::COLLECTION) {
            return Ok(None);
        }
        Ok(self.doc.get::<Revocation>(&Revocation::user_key(user))?.map(|r| r.at))
    }

    /// The sites that hold the blob of `digest` in full.
    pub fn holders(&self, digest: &str) -> Result<Vec<SiteId>, DocError> {
        Ok(self.doc.list_prefix::<Holder>(&format!("{digest}/"))?.into_iter().map(|h| h.site).collect())
    }

    /// Every site's share of a project's total (one record per site).
    pub fn grants(&self, project: &str) -> Result<Vec<QuotaGrant>, DocError> {
        self.doc.list_prefix(&format!("{project}/"))
    }

    /// `site`'s share of a project's total.
    pub fn granted(&self, project: &str, site: &SiteId) -> Result<Resources, DocError> {
        let grant: Option<QuotaGrant> = self.doc.get(&format!("{project}/{site}"))?;
        Ok(grant.map(|g| g.total).unwrap_or(Resources::ZERO))
    }

    /// A project's quota total: the sum of the sites' shares.
    pub fn quota_total(&self, project: &str) -> Result<Resources, DocError> {
        Resources::checked_sum(self.grants(project)?.iter().map(|g| g.total))
            .ok_or_else(|| DocError::Overflow(format!("grants of project {project}")))
    }

    /// `site`'s share of `project` moved by `delta`: the record to write
    /// (only `site` writes it, after checking the step against its rights,
    /// sealed with a realm admin's consent).
    pub fn moved_grant(
        &self,
        project: &str,
        site: &SiteId,
        delta: Resources,
        now: Millis,
    ) -> Result<QuotaGrant, DocError> {
        let current: Option<QuotaGrant> = self.doc.get(&format!("{project}/{site}"))?;
        let (steps, total, seal) =
            current.map(|g| (g.steps, g.total, g.seal)).unwrap_or((0, Resources::ZERO, Default::default()));
        let total = total
            .checked_plus(delta)
            .ok_or_else(|| DocError::Overflow(format!("the share of {site} in project {project}")))?;
        Ok(QuotaGrant { project: project.into(), site: site.clone(), steps: steps + 1, total, at: now, seal })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_save_load_roundtrip() {
        let site = SiteId::new("a").unwrap();
        let mut realm = Realm::create(&site, 1_000).unwrap();
        realm
            .doc
            .put(&User {
                name: "admin".into(),
                password_hash: "h".into(),
                realm_admin: true,
                created_at: 1,
                key: None,
                seal: Default::default(),
            })
            .unwrap();
        realm.doc.commit(2_000);
        let bytes = realm.doc.save();
        let loaded = Realm::load(&bytes, &site).unwrap();
        assert_eq!(loaded.user("admin").unwrap().unwrap().name, "admin");
        assert!(loaded.user("nobody").unwrap().is_none());
    }

    fn binding(role: crate::Role, sites: Option<Vec<SiteId>>) -> RoleBinding {
        RoleBinding { user: "bob".into(), project: "p".into(), role, sites, seal: Default::default() }
    }

    /// Bob is a member on site s1. Two sites change that concurrently: admin
    /// on s1 here, reader on every site there. Merged field by field, the
    /// role of one and the sites of the other make admin on every site, which
    /// nobody granted; a binding is one value, so one grant wins whole.
    #[test]
    fn concurrent_grants_merge_into_one_of_them() {
        let s1 = SiteId::new("s1").unwrap();
        let written =
            [binding(crate::Role::Admin, Some(vec![s1.clone()])), binding(crate::Role::Reader, None)];
        // Both actor orders, so that each side wins the conflict once.
        for (here, there) in [(b"s1", b"s2"), (b"s2", b"s1")] {
            let mut a = Realm { doc: Realm::create(&s1, 1).unwrap().doc.fork_as(here) };
            a.doc.put(&binding(crate::Role::Member, Some(vec![s1.clone()]))).unwrap();
            a.doc.commit(2);
            let mut b = Realm { doc: a.doc.fork_as(there) };
            a.doc.put(&written[0]).unwrap();
            a.doc.commit(3);
            b.doc.put(&written[1]).unwrap();
            b.doc.commit(3);
            a.doc.merge(&mut b.doc).unwrap();
            let merged = a.role("bob", "p").unwrap().unwrap();
            assert!(written.contains(&merged), "{merged:?} was never granted");
        }
    }

    /// A binding written again with an older revision, concurrently with a
    /// newer one (its author chose old dependencies), loses whichever
    /// writer automerge would let win: replicas keep the highest revision.
    #[test]
    fn concurrent_versions_read_as_the_highest_revision() {
        let s1 = SiteId::new("s1").unwrap();
        let at = |rev, role| RoleBinding {
            seal: crate::Seal { rev, ..Default::default() },
            ..binding(role, None)
        };
        for (here, there) in [(b"s1", b"s2"), (b"s2", b"s1")] {
            let mut a = Realm { doc: Realm::create(&s1, 1).unwrap().doc.fork_as(here) };
            a.doc.put(&at(1, crate::Role::Admin)).unwrap();
            a.doc.commit(2);
            let mut b = Realm { doc: a.doc.fork_as(there) };
            a.doc.put(&at(2, crate::Role::Reader)).unwrap();
            a.doc.commit(3);
            b.doc.put(&at(1, crate::Role::Admin)).unwrap();
            b.doc.put(&at(1, crate::Role::Member)).unwrap();
            b.doc.commit(3);
            a.doc.merge(&mut b.doc).unwrap();
            assert_eq!(a.role("bob", "p").unwrap().unwrap().role, crate::Role::Reader);
            let heads = a.doc.heads();
            let then: RoleBinding = a.doc.get_at("bob/p", &heads).unwrap().unwrap();
            assert_eq!(then.role, crate::Role::Reader);
            assert_eq!(a.bindings("").unwrap().len(), 1);
        }
    }

    /// A member rewrites its record (new addresses) while an admin removes
    /// it: the merged realm keeps the rewrite, and the member stays removed.
    #[test]
    fn a_member_rewritten_while_removed_stays_removed() {
        let s1 = SiteId::new("s1").unwrap();
        let s2 = SiteId::new("s2").unwrap();
        let member = |addr: &str| Member {
            site: s2.clone(),
            public_key: "ab".repeat(32),
            region: "eu".into(),
            operator: "op".into(),
            joined_at: 1,
            addrs: vec![addr.into()],
            invitation: None,
            api_cert: None,
        };
        let mut a = Realm::create(&s1, 1).unwrap();
        a.doc.put(&member("/ip4/1")).unwrap();
        a.doc.commit(2);
        let mut b = Realm { doc: a.doc.fork_as(b"s2") };
        a.doc.delete::<Member>("s2").unwrap();
        a.doc
            .put(&Removal {
                site: s2.clone(),
                public_key: "ab".repeat(32),
                invitation: None,
                by: "admin".into(),
                at: 3,
                consent: None,
            })
            .unwrap();
        a.doc.commit(3);
        b.doc.put(&member("/ip4/2")).unwrap();
        b.doc.commit(3);
        a.doc.merge(&mut b.doc).unwrap();
        assert!(a.doc.get::<Member>("s2").unwrap().is_some(), "the test needs the record to come back");
        assert!(a.member(&s2).unwrap().is_none());
        assert!(a.members().unwrap().iter().all(|m| m.site != s2));
    }

    #[test]
    fn garbage_does_not_load() {
        let site = SiteId::new("a").unwrap();
        assert!(Realm::load(b"not automerge", &site).is_err());
    }
}
