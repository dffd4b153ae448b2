//! Identity administration: deleting users, changing passwords, revoking
//! roles and tokens, deleting projects (docs/architecture.md, "Identity").
//!
//! Tokens are verified offline by every site, so taking one back is a realm
//! record ([`Revocation`]) that every site checks once it has heard of it:
//! a revocation reaches a site when the realm change does, like any write.

use atoll_crdt::{Entity, Millis, Revocation, Role};

use crate::api::{ApiError, ApiResult, Reply};
use crate::auth::{self, Claims};
use crate::consent::Caller;
use crate::gather::{Purpose, Use};
use crate::manage::user_view;
use crate::peer::{Effects, Outcome, Peer, ReqId};

/// Expired one-token revocations forgotten per new revocation, so that the
/// collection stays as small as the tokens still alive.
const PRUNE_PER_WRITE: usize = 32;

impl Peer {
    pub(crate) fn delete_user(&mut self, by: &Caller, name: &str) -> ApiResult {
        let caller = &by.user;
        auth::require_realm_admin(caller)?;
        let user = self.realm.user(name)?.ok_or_else(|| ApiError::NotFound(format!("no user {name}")))?;
        if user.name == caller.name {
            return Err(ApiError::Conflict("you cannot delete yourself; ask another realm admin".into()));
        }
        if user.realm_admin && self.realm.users()?.iter().filter(|u| u.realm_admin).count() <= 1 {
            return Err(ApiError::Conflict(format!("{name} is the last realm admin")));
        }
        for b in self.realm.bindings(&user.name)? {
            self.write_sealed(by, b, true)?;
        }
        // Tokens are refused from now on: verification needs the user record.
        self.write_sealed(by, user, true)?;
        Ok(Reply::removed(name.to_owned()))
    }

    pub(crate) fn set_password(
        &mut self,
        now: Millis,
        by: &Caller,
        name: &str,
        (password_hash, key): (String, Option<atoll_crdt::UserKey>),
        current_checked: bool,
    ) -> ApiResult {
        let caller = &by.user;
        let own = caller.name == name;
        if !caller.realm_admin && !own {
            return Err(ApiError::Forbidden(format!(
                "only realm admins set another user's password ({name})"
            )));
        }
        if !caller.realm_admin && !current_checked {
            return Err(ApiError::Forbidden("give your current password to change it".into()));
        }
        let mut user = self.realm.user(name)?.ok_or_else(|| ApiError::NotFound(format!("no user {name}")))?;
        user.password_hash = password_hash;
        // Tokens signed with the old key stop verifying too.
        user.key = key;
        // Whoever held the old password may hold a token too. Sealed first:
        // both statements are judged as of the realm before either.
        let revocation = self.revocation(now, Ok(by), &user.name, None)?;
        let user = self.write_sealed(by, user, false)?;
        self.put_revocation(now, &revocation)?;
        Ok(Reply::User(user_view(&user)))
    }

    pub(crate) fn revoke_tokens(&mut self, now: Millis, by: &Caller, name: &str) -> ApiResult {
        let caller = &by.user;
        if !caller.realm_admin && caller.name != name {
            return Err(ApiError::Forbidden(format!(
                "only realm admins revoke another user's tokens ({name})"
            )));
        }
        if self.realm.user(name)?.is_none() {
            return Err(ApiError::NotFound(format!("no user {name}")));
        }
        self.revoke(now, Ok(by), name, None)?;
        Ok(Reply::Revoked(crate::api::Revoked { user: name.to_owned(), before: Some(now) }))
    }

    /// Revokes the token the caller presented.
    pub(crate) fn logout(&mut self, now: Millis, claims: &Claims, token: &str) -> ApiResult {
        let digest = auth::token_digest(token);
        self.revoke(now, Err(&claims.user), &claims.user, Some((digest, claims.expires_at)))?;
        Ok(Reply::Revoked(crate::api::Revoked { user: claims.user.clone(), before: None }))
    }

    /// Writes a revocation: of one token (its digest and expiry), or of all
    /// of `user`'s tokens issued until `now`, which needs `by`'s consent (a
    /// one-token revocation is by its holder, named: `Err(name)`).
    fn revoke(
        &mut self,
        now: Millis,
        by: Result<&Caller, &str>,
        user: &str,
        token: Option<(String, Millis)>,
    ) -> Result<(), ApiError> {
        let revocation = self.revocation(now, by, user, token)?;
        self.put_revocation(now, &revocation)
    }

    /// A revocation, sealed and checked as every site will on receipt.
    fn revocation(
        &mut self,
        now: Millis,
        by: Result<&Caller, &str>,
        user: &str,
        token: Option<(String, Millis)>,
    ) -> Result<Revocation, ApiError> {
        if !self.realm.doc.has_collection(Revocation::COLLECTION) {
            return Err(ApiError::Conflict(
                "this realm was founded before tokens could be revoked; tokens end when they expire".into(),
            ));
        }
        let (token, expires_at) = token.map_or((None, None), |(d, e)| (Some(d), Some(e)));
        let name = by.map_or_else(str::to_owned, |c| c.user.name.clone());
        let revocation =
            Revocation { user: user.to_owned(), token, expires_at, by: name, at: now, consent: None };
        match by {
            Ok(caller) => self.seal_revocation(caller, revocation),
            Err(_) if revocation.token.is_some() => Ok(revocation),
            Err(name) => {
                Err(ApiError::Forbidden(format!("{name} revokes all tokens of {user} without consent")))
            }
        }
    }

    fn put_revocation(&mut self, now: Millis, revocation: &Revocation) -> Result<(), ApiError> {
        self.realm.doc.put(revocation)?;
        // One-token revocations of expired tokens guard nothing any more.
        let expired: Vec<String> = self
            .realm
            .doc
            .list_prefix::<Revocation>("t/")?
            .into_iter()
            .filter(|r| r.expires_at.is_some_and(|e| e <= now))
            .take(PRUNE_PER_WRITE)
            .map(|r| r.key())
            .collect();
        for key in expired {
            self.realm.doc.delete::<Revocation>(&key)?;
        }
        Ok(())
    }

    pub(crate) fn revoke_role(&mut self, by: &Caller, user: &str, project: &str) -> ApiResult {
        let caller = &by.user;
        auth::require(&self.realm, caller, project, Role::Admin, &self.site)?;
        let key = format!("{user}/{project}");
        let Some(old) = self.realm.role(user, project)? else {
            return Err(ApiError::NotFound(format!("{user} has no role in project {project}")));
        };
        auth::require_scope(&self.realm, caller, project, old.sites.as_deref())?;
        self.write_sealed(by, old, true)?;
        Ok(Reply::removed(key))
    }

    /// Checks what can be checked here, then gathers every site's instances
    /// before deleting (see [`Peer::finish_use_check`]).
    pub(crate) fn delete_project(
        &mut self,
        now: Millis,
        req: ReqId,
        by: &Caller,
        project: String,
        fx: &mut impl Effects,
    ) -> Outcome {
        let checked = auth::require_realm_admin(&by.user).and_then(|()| {
            if self.realm.project(&project)?.is_none() {
                return Err(ApiError::NotFound(format!("no project {project}")));
            }
            let images: Vec<String> =
                self.realm.images(&format!("{project}/"))?.into_iter().map(|i| i.name).collect();
            if !images.is_empty() {
                return Err(ApiError::Conflict(format!(
                    "project {project} still has images: {}; remove them first",
                    images.join(", ")
                )));
            }
            Ok(())
        });
        if let Err(e) = checked {
            return Outcome::Now(Err(e));
        }
        self.gather(now, req, by, None, Purpose::Unused(Use::Project(project)), fx)
    }

    /// Removes a project found unused on every site.
    pub(crate) fn remove_project(&mut self, by: &Caller, project: &str) -> ApiResult {
        if self.realm.project(project)?.is_none() {
            return Err(ApiError::NotFound(format!("no project {project}")));
        }
        for b in self.realm.bindings("")?.into_iter().filter(|b| b.project == project) {
            self.write_sealed(by, b, true)?;
        }
        // The quota's grants and transfers stay: they are the sites' own
        // records, and a project created again under this name starts from
        // the rights they hold (its total is set, not added).
        let record = self
            .realm
            .project_record(project)?
            .ok_or_else(|| ApiError::NotFound(format!("no project {project}")))?;
        self.write_sealed(by, record, true)?;
        Ok(Reply::removed(project.to_owned()))
    }
}
