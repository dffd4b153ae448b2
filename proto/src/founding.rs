//! A peer's first documents: founding a realm (genesis) and joining one
//! from the realm copy a member answered an invitation with
//! (docs/architecture.md, "Membership").

use atoll_crdt::{Member, Millis, Project, QuotaGrant, Realm, Role, RoleBinding, SiteDoc, User};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use crate::api::{ApiError, default_quota};
use crate::auth;
use crate::peer::{Effects, Peer, PeerConfig};

impl Peer {
    /// A new realm whose first site is this one, with user `admin` (password
    /// given by the shell) and project `default`.
    pub fn genesis(cfg: PeerConfig, now: Millis, admin_password: &str) -> Result<Peer, ApiError> {
        Peer::genesis_fleet(cfg, now, admin_password, &[])
    }

    /// A new realm founded with `fleet` enrolled (the simulator's sites, a
    /// test's): in the founder's bootstrap change, which the realm's rules
    /// take without consents (crate::provenance::Members); any later
    /// member joins with an invitation.
    pub fn genesis_fleet(
        cfg: PeerConfig,
        now: Millis,
        admin_password: &str,
        fleet: &[Member],
    ) -> Result<Peer, ApiError> {
        let site = cfg.descriptor.site.clone();
        // The realm's identity must be its own even if another realm is
        // founded by a site of the same name in the same millisecond.
        let mut nonce = [0u8; 16];
        ChaCha20Rng::from_seed(cfg.seed).fill_bytes(&mut nonce);
        // A realm founded by this release takes intents and realm records
        // with their user's consent only (crate::consent, crate::rules), and
        // its sites compact their documents (crate::epoch).
        let realm = Realm::found(&site, &cfg.descriptor.public_key, &nonce, crate::epoch::FLOOR, now)?;
        let own = SiteDoc::create(&site, now)?;
        let mut peer = Peer::assemble(cfg, realm, own);
        peer.unsaved = true;
        let hash = auth::hash_password(admin_password, &mut peer.rng)?;
        let key = auth::new_user_key(admin_password, &mut peer.rng)?.record;
        let d = &peer.descriptor;
        peer.realm.doc.put(&Member {
            site: site.clone(),
            public_key: d.public_key.clone(),
            region: d.region.clone(),
            operator: d.operator.clone(),
            joined_at: now,
            addrs: Vec::new(),
            invitation: None,
            api_cert: None,
        })?;
        peer.realm.doc.put(&User {
            name: "admin".into(),
            password_hash: hash,
            realm_admin: true,
            created_at: now,
            key,
            // The founder's first change writes the first admin, consented
            // to by no one (crate::provenance::Members).
            seal: atoll_crdt::Seal { rev: 1, ..Default::default() },
        })?;
        let project = Project {
            storage_mib: atoll_crdt::DEFAULT_STORAGE_MIB,
            name: "default".into(),
            description: "created with the realm".into(),
            created_at: now,
            spread: atoll_crdt::Spread::Even,
        };
        let seal = atoll_crdt::Seal { rev: 1, ..Default::default() };
        peer.realm.doc.put(&atoll_crdt::ProjectRecord { project, seal })?;
        peer.realm.doc.put(&RoleBinding {
            user: "admin".into(),
            project: "default".into(),
            role: Role::Admin,
            sites: None,
            seal: atoll_crdt::Seal { rev: 1, ..Default::default() },
        })?;
        let grant = peer.realm.moved_grant("default", &site, default_quota(), now)?;
        peer.realm
            .doc
            .put(&QuotaGrant { seal: atoll_crdt::Seal { rev: 1, ..Default::default() }, ..grant })?;
        for m in fleet {
            peer.realm.doc.put(m)?;
        }
        peer.realm.doc.commit(now);
        Ok(peer)
    }

    /// A new site in an existing realm, from a copy of the realm document: it
    /// creates its own document and enters its membership record. (How the copy
    /// and the right to join are obtained is the shell's business.)
    /// Joins with the realm copy a member answered `invitation` with: the
    /// copy must be of the realm the invitation names (when it names one).
    pub fn join_invited(
        cfg: PeerConfig,
        now: Millis,
        realm: &[u8],
        invitation: &crate::membership::Invitation,
    ) -> Result<Peer, ApiError> {
        let mut peer = Peer::join(cfg, now, realm)?;
        if let Some(want) = &invitation.realm {
            let got = peer.realm.doc.genesis().unwrap_or_default();
            if &got != want {
                return Err(ApiError::Forbidden(format!(
                    "the member answered with realm {got}, not realm {want} that the invitation names"
                )));
            }
        }
        Ok(peer)
    }

    pub fn join(cfg: PeerConfig, now: Millis, realm: &[u8]) -> Result<Peer, ApiError> {
        let site = cfg.descriptor.site.clone();
        let realm = crate::provenance::verified_realm(realm, &site)?;
        let own = SiteDoc::create(&site, now)?;
        let mut peer = Peer::assemble(cfg, realm, own);
        peer.unsaved = true;
        let d = &peer.descriptor;
        // The member that admitted us entered our record (with the invitation
        // it consumed): a site cannot enrol itself, since no other member
        // would take its changes (crate::provenance).
        match peer.realm.member(&site)? {
            Some(m) if m.public_key == d.public_key => {}
            Some(_) => {
                return Err(ApiError::Conflict(format!(
                    "site name {site} belongs to another key in this realm"
                )));
            }
            None => {
                return Err(ApiError::Forbidden(format!("the realm copy does not enrol site {site}")));
            }
        }
        peer.realm.doc.commit(now);
        Ok(peer)
    }

    /// Writes a member record (an enrolment checked by `accept_join`, or
    /// this site's own record) and sends it.
    pub(crate) fn enroll(
        &mut self,
        now: Millis,
        member: &atoll_crdt::Enrolment,
        fx: &mut impl Effects,
    ) -> Result<(), ApiError> {
        self.realm.doc.put(member)?;
        self.flush(now, fx);
        Ok(())
    }
}
