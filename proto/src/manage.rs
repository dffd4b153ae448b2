//! Commands on users, projects, roles, quotas, images and the site.

use atoll_crdt::escrow::quota_change;
use atoll_crdt::{
    Account, Holder, Image, Millis, Observed, Project, ProjectRecord, Replica, Resources, Role, RoleBinding,
    SiteId, Spread, User, Visibility, is_name,
};

use crate::api::{
    ApiError, ApiResult, Grant, ImageView, MAX_GIVE_TO, MAX_STORAGE_MIB, NewImage, NewProject, NewUser,
    QuotaView, Reply, SiteView, TokenView, UserView, Whoami,
};
use crate::auth::{self, Claims, Unlocked};
use crate::consent::Caller;
use crate::gather::{Purpose, Use};
use crate::peer::{Effects, Outcome, Peer, ReqId, StoreWrite};
use ed25519_dalek::SigningKey;

/// Each of `sites` sites' share of `total` split evenly, and the remainder
/// (kept by the creating site), component by component.
pub fn even_split(total: Resources, sites: usize) -> (Resources, Resources) {
    let n = sites.max(1) as i64;
    let share = Resources::new(total.instances / n, total.cpus / n, total.memory_mib / n);
    let rest = Resources::new(total.instances % n, total.cpus % n, total.memory_mib % n);
    (share, rest)
}

pub(crate) fn check_name(what: &str, name: &str) -> Result<(), ApiError> {
    if is_name(name) {
        Ok(())
    } else {
        Err(ApiError::Invalid(format!(
            "invalid {what} name {name:?}: use 1-63 lowercase letters, digits, '-', '_' or '.'"
        )))
    }
}

fn check_storage(mib: i64) -> Result<(), ApiError> {
    if (0..=MAX_STORAGE_MIB).contains(&mib) {
        Ok(())
    } else {
        Err(ApiError::Invalid(format!("storage must be 0 to {MAX_STORAGE_MIB} MiB")))
    }
}

pub(crate) fn user_view(u: &User) -> UserView {
    UserView { name: u.name.clone(), realm_admin: u.realm_admin, created_at: u.created_at }
}

impl Peer {
    pub(crate) fn login(&mut self, now: Millis, name: &str, password: &str) -> ApiResult {
        let wrong = || ApiError::Unauthenticated("wrong user name or password".into());
        let user = self.realm.user(name)?.ok_or_else(wrong)?;
        let unlocked = auth::unlock(password, &user, &mut self.rng)?.ok_or_else(wrong)?;
        self.issue_token(now, &user.name, Some(Box::new(unlocked)))
    }

    /// The record a login checks the password against (None: no such user).
    pub(crate) fn credentials(&self, name: &str) -> ApiResult {
        Ok(Reply::Credentials(self.realm.user(name)?.map(Box::new)))
    }

    /// A token for `name`, whose password the caller has verified and whose
    /// key it unlocked (None: a token sealed by this site only, which sites
    /// accept for users without a key). A user without a key gets the one
    /// unlocked recorded: their first login since user keys.
    pub(crate) fn issue_token(&mut self, now: Millis, name: &str, key: Option<Box<Unlocked>>) -> ApiResult {
        let wrong = || ApiError::Unauthenticated("wrong user name or password".into());
        let user = self.realm.user(name)?.ok_or_else(wrong)?;
        let first_key = match (&user.key, key.as_deref()) {
            (Some(k), Some(u)) if k.public != auth::encode_key(&u.key.verifying_key()) => {
                // The password changed between the check and now.
                return Err(wrong());
            }
            (Some(_), None) => return Err(wrong()),
            (None, Some(Unlocked { record: Some(record), .. })) => Some(record.clone()),
            _ => None,
        };
        // A token issued in the millisecond of a revocation would be revoked too.
        let issued_at = match self.realm.revoked_before(&user.name)? {
            Some(at) => now.max(at + 1),
            None => now,
        };
        let claims = Claims::new(&user.name, &self.site, issued_at, issued_at + self.token_ttl);
        // A fresh session key per token: its secret signs this user's
        // consents while the token lives (crate::consent).
        let session = SigningKey::generate(&mut self.rng);
        let token = auth::issue(&self.key, &claims, key.as_ref().map(|k| (&k.key, &session)));
        if let Some(record) = first_key {
            // The user's first key, recorded with the consent of the session
            // it signed (crate::rules: a keyless user's own key).
            let session =
                auth::open::<Claims>(&token).ok().and_then(|(c, _, _)| crate::consent::Session::of(&c));
            let caller = Caller { user: user.clone(), session };
            self.write_sealed(&caller, User { key: Some(record), ..user.clone() }, false)?;
        }
        Ok(Reply::Token(TokenView { token, user: user.name, expires_at: claims.expires_at }))
    }

    pub(crate) fn whoami(&self, user: &User) -> ApiResult {
        let roles = self
            .realm
            .bindings(&user.name)?
            .into_iter()
            .map(|b| RoleBinding { seal: Default::default(), ..b })
            .collect();
        Ok(Reply::Whoami(Whoami {
            user: user.name.clone(),
            realm_admin: user.realm_admin,
            site: self.site.clone(),
            roles,
        }))
    }

    pub(crate) fn create_user(&mut self, now: Millis, caller: &Caller, n: NewUser) -> ApiResult {
        auth::require_realm_admin(&caller.user)?;
        check_name("user", &n.name)?;
        crate::api::check_password(&n.password)?;
        if self.realm.user(&n.name)?.is_some() {
            return Err(ApiError::Conflict(format!("user {} already exists", n.name)));
        }
        let password_hash = auth::hash_password(&n.password, &mut self.rng)?;
        let key = auth::new_user_key(&n.password, &mut self.rng)?.record;
        let user = User {
            name: n.name,
            password_hash,
            realm_admin: n.realm_admin,
            created_at: now,
            key,
            seal: Default::default(),
        };
        let user = self.write_sealed(caller, user, false)?;
        Ok(Reply::User(user_view(&user)))
    }

    pub(crate) fn list_users(&self, caller: &User) -> ApiResult {
        let users = self.realm.users()?;
        Ok(Reply::Users(
            users.iter().filter(|u| caller.realm_admin || u.name == caller.name).map(user_view).collect(),
        ))
    }

    pub(crate) fn create_project(&mut self, now: Millis, caller: &Caller, n: NewProject) -> ApiResult {
        auth::require_realm_admin(&caller.user)?;
        check_name("project", &n.name)?;
        if !n.quota.is_non_negative() {
            return Err(atoll_crdt::EscrowError::Negative(n.quota).into());
        }
        if !n.quota.within_limit() {
            return Err(atoll_crdt::EscrowError::OutOfRange(n.quota).into());
        }
        check_storage(n.storage_mib)?;
        if n.description.chars().count() > crate::api::MAX_DESCRIPTION {
            return Err(ApiError::Invalid(format!(
                "a description has at most {} characters",
                crate::api::MAX_DESCRIPTION
            )));
        }
        if self.realm.project(&n.name)?.is_some() {
            return Err(ApiError::Conflict(format!("project {} already exists", n.name)));
        }
        let project = Project {
            name: n.name.clone(),
            description: n.description,
            created_at: now,
            spread: n.spread,
            storage_mib: n.storage_mib,
        };
        // A project deleted under this name may have left rights on sites
        // (docs/architecture.md, "Identity"): the new total is set over them.
        let left = self.realm.quota_total(&n.name)?;
        let delta = quota_change(&n.name, left, n.quota, &self.account(&n.name)?).map_err(|e| {
            ApiError::Conflict(format!(
                "a project {} deleted earlier left rights totalling {left} on its sites, and this site \
                 cannot lower them to {}: {e}; create it with a larger total, or on a site holding them",
                n.name, n.quota
            ))
        })?;
        let record = ProjectRecord { project: project.clone(), seal: Default::default() };
        self.write_sealed(caller, record, false)?;
        if delta != Resources::ZERO {
            let grant = self.realm.moved_grant(&n.name, &self.site, delta, now)?;
            self.write_sealed(caller, grant, false)?;
        }
        if n.spread == Spread::Even && left == Resources::ZERO {
            let others: Vec<SiteId> =
                self.realm.members()?.into_iter().map(|m| m.site).filter(|s| s != &self.site).collect();
            let (share, _) = even_split(n.quota, others.len() + 1);
            if share != Resources::ZERO {
                self.transfer(now, &n.name, &others, share)?;
            }
        }
        Ok(Reply::Project(project))
    }

    pub(crate) fn set_spread(&mut self, caller: &Caller, project: &str, spread: Spread) -> ApiResult {
        self.change_project(caller, project, |p| p.spread = spread)
    }

    pub(crate) fn set_storage(&mut self, caller: &Caller, project: &str, storage_mib: i64) -> ApiResult {
        check_storage(storage_mib)?;
        self.change_project(caller, project, |p| p.storage_mib = storage_mib)
    }

    /// Rewrites a project's record (realm admins), as their statement.
    fn change_project(
        &mut self,
        caller: &Caller,
        project: &str,
        change: impl FnOnce(&mut Project),
    ) -> ApiResult {
        auth::require_realm_admin(&caller.user)?;
        let Some(mut record) = self.realm.project_record(project)? else {
            return Err(ApiError::NotFound(format!("no project {project}")));
        };
        change(&mut record.project);
        let record = self.write_sealed(caller, record, false)?;
        Ok(Reply::Project(record.project))
    }

    /// Bytes `project`'s images may still add, from the catalog as known
    /// here (a soft limit across a partition: two sites may each fill it).
    fn storage_room(&self, project: &str) -> Result<u64, ApiError> {
        let p = self
            .realm
            .project(project)?
            .ok_or_else(|| ApiError::NotFound(format!("no project {project}")))?;
        let used: u64 = self
            .realm
            .images(&format!("{project}/"))?
            .iter()
            .filter(|i| i.project == project)
            .fold(0u64, |sum, i| sum.saturating_add(i.size));
        Ok((p.storage_mib.max(0) as u64).saturating_mul(1 << 20).saturating_sub(used))
    }

    /// What an upload may bring to `project`: the caller must be a member.
    pub(crate) fn upload_room(&self, caller: &User, project: &str) -> ApiResult {
        self.project_exists(project)?;
        auth::require(&self.realm, caller, project, Role::Member, &self.site)?;
        Ok(Reply::Room { bytes: self.storage_room(project)?.min(crate::blob::MAX_IMAGE_SIZE) })
    }

    pub(crate) fn list_projects(&self, caller: &User) -> ApiResult {
        let mut out = Vec::new();
        for p in self.realm.projects()? {
            if auth::role_of(&self.realm, caller, &p.name, &self.site)?.is_some() {
                out.push(p);
            }
        }
        Ok(Reply::Projects(out))
    }

    pub(crate) fn grant_role(&mut self, by: &Caller, g: Grant) -> ApiResult {
        let caller = &by.user;
        self.project_exists(&g.project)?;
        auth::require(&self.realm, caller, &g.project, Role::Admin, &self.site)?;
        if self.realm.user(&g.user)?.is_none() {
            return Err(ApiError::NotFound(format!("no user {}", g.user)));
        }
        if let Some(sites) = &g.sites {
            if sites.is_empty() {
                return Err(ApiError::Invalid("--sites needs at least one site".into()));
            }
            for s in sites {
                if self.realm.member(s)?.is_none() {
                    return Err(ApiError::NotFound(format!("no site {s} in this realm")));
                }
            }
        }
        // Neither the new binding nor the one it replaces may reach beyond the caller.
        auth::require_scope(&self.realm, caller, &g.project, g.sites.as_deref())?;
        if let Some(old) = self.realm.role(&g.user, &g.project)? {
            auth::require_scope(&self.realm, caller, &g.project, old.sites.as_deref())?;
        }
        let binding = RoleBinding {
            user: g.user,
            project: g.project,
            role: g.role,
            sites: g.sites,
            seal: Default::default(),
        };
        let mut binding = self.write_sealed(by, binding, false)?;
        binding.seal = Default::default();
        Ok(Reply::Role(binding))
    }

    pub(crate) fn list_roles(&self, caller: &User) -> ApiResult {
        let mut out = Vec::new();
        for mut b in self.realm.bindings("")? {
            b.seal = Default::default();
            let admin = auth::role_of(&self.realm, caller, &b.project, &self.site)? == Some(Role::Admin);
            if admin || b.user == caller.name {
                out.push(b);
            }
        }
        Ok(Reply::Roles(out))
    }

    fn project_exists(&self, project: &str) -> Result<(), ApiError> {
        match self.realm.project(project)? {
            Some(_) => Ok(()),
            None => Err(ApiError::NotFound(format!("no project {project}"))),
        }
    }

    /// This site's rights for `project`, as its replicas say.
    pub fn account(&self, project: &str) -> Result<Account, ApiError> {
        // Replicas not filled by sync yet say nothing; counting them as zero only under-admits.
        let ready = self
            .others
            .values()
            .filter(|d| d.doc.has_collection(<atoll_crdt::Transfer as atoll_crdt::Entity>::COLLECTION));
        let mut account = Account::read(&self.realm, &self.own, ready.clone(), project)?;
        if self.breaks(crate::peer::Sabotage::Backing) {
            // Every transfer counted as written, backed or not.
            let raw = ready.map(|d| d.given_to(project, &self.site)).collect::<Result<Vec<_>, _>>()?;
            account.received = Resources::checked_sum(raw).unwrap_or(Resources::ZERO);
            account.given = self.own.given(project)?;
        }
        Ok(account)
    }

    pub(crate) fn set_quota(
        &mut self,
        now: Millis,
        caller: &Caller,
        project: &str,
        total: Resources,
    ) -> ApiResult {
        auth::require_realm_admin(&caller.user)?;
        self.project_exists(project)?;
        let current = self.realm.quota_total(project)?;
        let delta = quota_change(project, current, total, &self.account(project)?)?;
        if delta != Resources::ZERO {
            let grant = self.realm.moved_grant(project, &self.site, delta, now)?;
            self.write_sealed(caller, grant, false)?;
        }
        self.quota_view(project)
    }

    pub(crate) fn give_quota(
        &mut self,
        now: Millis,
        caller: &User,
        project: &str,
        to: &[SiteId],
        amount: Resources,
    ) -> ApiResult {
        auth::require(&self.realm, caller, project, Role::Admin, &self.site)?;
        self.project_exists(project)?;
        if to.is_empty() || to.len() > MAX_GIVE_TO {
            return Err(ApiError::Invalid(format!("give to 1 to {MAX_GIVE_TO} sites at once")));
        }
        let mut seen = std::collections::BTreeSet::new();
        for s in to {
            if s == &self.site {
                return Err(ApiError::Conflict(format!("{s} is this site: give to other members")));
            }
            if self.realm.member(s)?.is_none() {
                return Err(ApiError::NotFound(format!("no member site {s}")));
            }
            if !seen.insert(s) {
                return Err(ApiError::Invalid(format!("{s} is named twice")));
            }
        }
        if !amount.is_non_negative() {
            return Err(ApiError::Invalid(format!("a negative amount cannot be given: {amount}")));
        }
        if amount == Resources::ZERO {
            return self.quota_view(project); // nothing moves
        }
        if !amount.within_limit() {
            return Err(atoll_crdt::EscrowError::OutOfRange(amount).into());
        }
        // Both bounds keep the product far inside i64; checked all the same.
        let all = amount.checked_times(to.len() as i64).ok_or(atoll_crdt::EscrowError::OutOfRange(amount))?;
        self.account(project)?.admit(project, all)?;
        self.transfer(now, project, to, amount)?;
        self.quota_view(project)
    }

    /// Writes transfers of `amount` to each of `to` in our document (the
    /// caller checked our rights cover them all).
    pub(crate) fn transfer(
        &mut self,
        now: Millis,
        project: &str,
        to: &[SiteId],
        amount: Resources,
    ) -> Result<(), ApiError> {
        for s in to {
            self.own.add_transfer(project, s, amount, now)?;
            if let Some(r) = self.custody.recipients.as_mut() {
                r.insert(s.clone());
            }
            self.custody.introduce.insert(s.clone());
        }
        Ok(())
    }

    pub(crate) fn show_quota(&self, caller: &User, project: &str) -> ApiResult {
        self.project_exists(project)?;
        auth::require(&self.realm, caller, project, Role::Reader, &self.site)?;
        self.quota_view(project)
    }

    fn quota_view(&self, project: &str) -> ApiResult {
        let account = self.account(project)?;
        let by_site = self.rights_by_site(project)?;
        let used_known = Resources::checked_sum(by_site.iter().filter_map(|r| r.used))
            .ok_or_else(|| atoll_crdt::EscrowError::Overflow(project.to_owned()))?;
        Ok(Reply::Quota(QuotaView {
            project: project.into(),
            total: self.realm.quota_total(project)?,
            site: self.site.clone(),
            available_here: account.available(),
            account,
            by_site,
            used_known,
        }))
    }

    pub(crate) fn register_image(&mut self, now: Millis, by: &Caller, n: NewImage) -> ApiResult {
        let caller = &by.user;
        check_name("image", &n.name)?;
        self.project_exists(&n.project)?;
        auth::require(&self.realm, caller, &n.project, Role::Member, &self.site)?;
        crate::blob::check(&n.digest, n.size, n.chunk_size, &n.chunks).map_err(ApiError::Invalid)?;
        if self.realm.image(&n.project, &n.name)?.is_some() {
            return Err(ApiError::Conflict(format!("image {}/{} already exists", n.project, n.name)));
        }
        let room = self.storage_room(&n.project)?;
        if n.size > room {
            return Err(ApiError::QuotaExceeded(format!(
                "image of {} bytes does not fit project {}'s storage quota: {room} bytes left",
                n.size, n.project
            )));
        }
        let image = Image {
            name: n.name,
            project: n.project,
            digest: n.digest,
            size: n.size,
            format: n.format,
            chunk_size: n.chunk_size,
            chunks: n.chunks,
            visibility: n.visibility,
            created_by: caller.name.clone(),
            created_at: now,
            seal: Default::default(),
        };
        let image = self.write_sealed(by, image, false)?;
        self.hold(now, &image)?;
        self.image_view(image)
    }

    /// Records that this site holds an image's blob: in its own document, and
    /// in the realm so that every site knows where to fetch it from.
    pub(crate) fn hold(&mut self, now: Millis, image: &Image) -> Result<(), ApiError> {
        self.own.doc.put(&Replica { digest: image.digest.clone(), size: image.size, at: now })?;
        self.realm.doc.put(&Holder { digest: image.digest.clone(), site: self.site.clone(), at: now })?;
        Ok(())
    }

    fn image_view(&self, image: Image) -> ApiResult {
        let holders = self.realm.holders(&image.digest)?;
        Ok(Reply::Image(ImageView { image: Image { seal: Default::default(), ..image }, holders }))
    }

    fn can_read_image(&self, caller: &User, image: &Image) -> Result<bool, ApiError> {
        Ok(image.visibility == Visibility::Public
            || auth::role_of(&self.realm, caller, &image.project, &self.site)?.is_some())
    }

    pub(crate) fn list_images(&self, caller: &User) -> ApiResult {
        let mut out = Vec::new();
        for image in self.realm.images("")? {
            if self.can_read_image(caller, &image)? {
                let holders = self.realm.holders(&image.digest)?;
                out.push(ImageView { image: Image { seal: Default::default(), ..image }, holders });
            }
        }
        Ok(Reply::Images(out))
    }

    pub(crate) fn show_image(&self, caller: &User, project: &str, name: &str) -> ApiResult {
        match self.realm.image(project, name)? {
            Some(image) if self.can_read_image(caller, &image)? => self.image_view(image),
            _ => Err(ApiError::NotFound(format!("no image {project}/{name} visible to {}", caller.name))),
        }
    }

    /// Checks the caller (a project admin: a catalog entry may be in use by
    /// other projects on other sites) and that the image exists, then
    /// gathers every site's instances before removing it.
    pub(crate) fn delete_image(
        &mut self,
        now: Millis,
        req: ReqId,
        by: &Caller,
        project: String,
        name: String,
        fx: &mut impl Effects,
    ) -> Outcome {
        let checked =
            auth::require(&self.realm, &by.user, &project, Role::Admin, &self.site).and_then(|()| match self
                .realm
                .image(&project, &name)?
            {
                Some(_) => Ok(()),
                None => Err(ApiError::NotFound(format!("no image {project}/{name}"))),
            });
        if let Err(e) = checked {
            return Outcome::Now(Err(e));
        }
        self.gather(now, req, by, None, Purpose::Unused(Use::Image { project, name }), fx)
    }

    /// Removes an image no instance uses (checked by the caller).
    pub(crate) fn remove_image(&mut self, by: &Caller, project: &str, name: &str) -> ApiResult {
        let image = self
            .realm
            .image(project, name)?
            .ok_or_else(|| ApiError::NotFound(format!("no image {project}/{name}")))?;
        let key = format!("{project}/{name}");
        self.write_sealed(by, image.clone(), true)?;
        let others: Vec<Image> = self.realm.images("")?;
        let digest_unused = !others.iter().any(|i| i.digest == image.digest);
        if digest_unused {
            self.own.doc.delete::<Replica>(&image.digest)?;
            // The catalog entry is gone for every site, and so is the record of
            // who holds it; other sites' copies are not reclaimed yet (a known limit).
            for site in self.realm.holders(&image.digest)? {
                self.realm.doc.delete::<Holder>(&format!("{}/{site}", image.digest))?;
            }
        }
        // Chunks are shared between images with common content: keep those still used.
        let unused: Vec<String> =
            image.chunks.iter().filter(|c| !others.iter().any(|o| o.chunks.contains(c))).cloned().collect();
        self.deferred
            .push(StoreWrite::DeleteBlob { digest: digest_unused.then_some(image.digest), chunks: unused });
        Ok(Reply::removed(key))
    }

    pub(crate) fn show_site(&self) -> ApiResult {
        let site = self.summary()?;
        Ok(Reply::Site(Box::new(crate::api::SiteShow { site, memory: crate::footprint::footprint(self) })))
    }

    /// This site's summary, gossiped to every peer as ephemeral data.
    pub fn summary(&self) -> Result<SiteView, ApiError> {
        // The tally, not a scan: this runs every few seconds on the event loop.
        let tally = self.own.tally()?;
        let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        Ok(SiteView {
            descriptor: self.descriptor.clone(),
            instances: count(tally.instances()),
            running: count(tally.by_state.get(&Observed::Running).copied().unwrap_or(0)),
            images: self.own.doc.count::<Replica>(),
            allocated: Resources::checked_sum(tally.by_project.values().copied()).unwrap_or(Resources::ZERO),
            live: self.metrics.clone(),
            spare: self.spare_rights()?,
        })
    }

    /// Rights held free here, per project, most spare instances first.
    /// Reading them costs an account per project (about 25 us each), so they
    /// are kept until a document held here is edited.
    fn spare_rights(&self) -> Result<Vec<(String, Resources)>, ApiError> {
        let edits: Vec<u64> = [self.realm.doc.edits(), self.own.doc.edits()]
            .into_iter()
            .chain(self.others.values().map(|d| d.doc.edits()))
            .collect();
        if let Some((at, spare)) = self.spare.0.borrow().as_ref()
            && *at == edits
        {
            return Ok(spare.clone());
        }
        let spare = self.read_spare_rights()?;
        *self.spare.0.borrow_mut() = Some((edits, spare.clone()));
        Ok(spare)
    }

    fn read_spare_rights(&self) -> Result<Vec<(String, Resources)>, ApiError> {
        let mut spare = Vec::new();
        for p in self.realm.projects()? {
            let free = self.account(&p.name)?.available();
            if free.instances > 0 {
                spare.push((p.name, free));
            }
        }
        spare.sort_by(|a, b| b.1.instances.cmp(&a.1.instances).then(a.0.cmp(&b.0)));
        spare.truncate(crate::api::MAX_SPARE_SHOWN);
        Ok(spare)
    }
}

/// [`Peer::spare_rights`] as of the edit counts of the realm, the own
/// document and the others held, in that order.
#[derive(Default)]
pub(crate) struct SpareCache(std::cell::RefCell<Option<(Vec<u64>, Spare)>>);

/// Free rights per project.
type Spare = Vec<(String, Resources)>;
