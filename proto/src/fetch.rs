//! Images held elsewhere (docs/architecture.md, "Image fetch"). A site that must run an image it
//! does not hold asks the shell to fetch the blob's chunks from the sites the
//! realm names as holders; the shell verifies every chunk against the catalog
//! and reports with [`Input::Fetched`](crate::Input::Fetched). The instances
//! waiting on it then start (or fail with the reason).

use atoll_crdt::{Image, Millis, Observed, Role, SiteId, User};

use crate::api::{ApiError, ApiResult, Reply};
use crate::auth;
use crate::lifecycle::inst_key;
use crate::peer::{Effects, Outcome, Peer, ReqId};

/// Most callers waiting on one image's fetch.
const MAX_FETCH_WAITERS: usize = 64;

impl Peer {
    /// Asks the shell for an image's blob unless it is held or on its way.
    /// Errs when no other site holds it.
    pub(crate) fn fetch_image(
        &mut self,
        image: &Image,
        fx: &mut impl Effects,
    ) -> Result<Vec<SiteId>, ApiError> {
        let holders: Vec<SiteId> =
            self.realm.holders(&image.digest)?.into_iter().filter(|s| s != &self.site).collect();
        if holders.is_empty() {
            return Err(ApiError::Conflict(format!(
                "image {}/{} is held by no site: upload it again",
                image.project, image.name
            )));
        }
        if self.fetching.insert(image.digest.clone()) {
            fx.fetch(image.clone(), holders.clone());
        }
        Ok(holders)
    }

    /// `atoll image copy`: fetch an image to this site.
    pub(crate) fn copy_image(
        &mut self,
        req: ReqId,
        caller: &User,
        (project, name): (&str, &str),
        fx: &mut impl Effects,
    ) -> Outcome {
        let image = match self.realm.image(project, name) {
            Ok(Some(i)) => i,
            Ok(None) => return Outcome::Now(Err(ApiError::NotFound(format!("no image {project}/{name}")))),
            Err(e) => return Outcome::Now(Err(e.into())),
        };
        let readable = image.visibility == atoll_crdt::Visibility::Public
            || auth::require(&self.realm, caller, project, Role::Reader, &self.site).is_ok();
        if !readable {
            return Outcome::Now(Err(ApiError::NotFound(format!(
                "no image {project}/{name} visible to {}",
                caller.name
            ))));
        }
        if let Err(e) = auth::may_copy(&self.realm, caller, &image, &self.site) {
            return Outcome::Now(Err(e));
        }
        if matches!(self.own.replica(&image.digest), Ok(Some(_))) {
            return Outcome::Now(self.show_image(caller, project, name));
        }
        if let Err(e) = self.fetch_image(&image, fx) {
            return Outcome::Now(Err(e));
        }
        let waiters = self.fetch_waiters.entry(image.digest.clone()).or_default();
        if waiters.len() >= MAX_FETCH_WAITERS {
            return Outcome::Now(Err(ApiError::Busy(format!(
                "too many requests waiting on {project}/{name}"
            ))));
        }
        waiters.push((req, caller.name.clone()));
        Outcome::Later
    }

    /// The shell finished (or gave up) fetching a blob.
    pub(crate) fn on_fetched(
        &mut self,
        now: Millis,
        digest: &str,
        result: Result<(), String>,
        fx: &mut impl Effects,
    ) {
        self.fetching.remove(digest);
        let images: Vec<Image> = self.realm.images("").unwrap_or_default();
        let image = images.iter().find(|i| i.digest == digest).cloned();
        let result = match (result, image) {
            (Ok(()), Some(image)) => self.hold(now, &image).map(|()| image),
            (Ok(()), None) => Err(ApiError::NotFound(format!("image {digest} left the catalog"))),
            (Err(why), _) => Err(ApiError::Conflict(format!("fetching image {digest} failed: {why}"))),
        };
        for (req, user) in self.fetch_waiters.remove(digest).unwrap_or_default() {
            let reply: ApiResult = match &result {
                Ok(image) => match self.realm.user(&user) {
                    Ok(Some(u)) => self.show_image(&u, &image.project, &image.name),
                    _ => Err(ApiError::Forbidden(format!("user {user} is gone from the realm"))),
                },
                Err(e) => Err(e.clone()),
            };
            self.replies.push((req, reply));
        }
        // Instances that waited for the blob: they start, or wait for a holder.
        match result {
            Ok(_) => {
                self.refetch.done(digest);
                for inst in self.waiting_on(digest) {
                    self.start_or_answer(now, inst, fx);
                }
            }
            Err(e) => {
                let catalog = images.into_iter().find(|i| i.digest == digest);
                match catalog {
                    Some(image) => self.fetch_failed(now, image, &e.to_string(), fx),
                    None => {
                        self.refetch.done(digest);
                        for mut inst in self.waiting_on(digest) {
                            let key = inst_key(&inst);
                            self.observe(now, &mut inst, Observed::Failed, e.to_string());
                            self.answer_waiters(&key, &Ok(Reply::Instance(inst)));
                        }
                    }
                }
            }
        }
    }
}
