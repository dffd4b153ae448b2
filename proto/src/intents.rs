//! Cross-site operations (docs/architecture.md, "Intents"). A command addressed to another
//! site is written as an [`Intent`] in the requester's own document, which is
//! then shared with the target (and relayed by anyone who holds it). The target
//! applies it once, through the same dispatcher as a local call, with the
//! rights of the user the requester authenticated, and records an
//! [`IntentOutcome`] in its own document, which travels back the same way.
//! The requester answers its caller when the outcome arrives, or after the
//! caller's wait with the intent still pending.

use std::collections::BTreeMap;

use atoll_crdt::{Entity, Instance, Intent, IntentOutcome, IntentState, Millis, SiteId, User};
use rand_core::RngCore;
use serde::{Deserialize, Serialize};

use crate::api::{ApiError, ApiResult, Command, ImageView, IntentView, Reply};
use crate::auth;
use crate::consent::{self, Caller};
use crate::peer::{Effects, Outcome, Peer, ReqId, TimerId};

/// Longest a caller may wait for an intent's outcome.
pub const MAX_WAIT: Millis = 300_000;
/// Most callers waiting on intents at once.
pub const MAX_INTENT_WAITERS: usize = 1024;
/// How long a settled intent, and then its outcome, are kept for listings.
pub const INTENT_KEEP: Millis = 3_600_000;
/// Request ids at and above this one are the peer's own, for applying intents.
pub(crate) const INTENT_REQ: ReqId = 1 << 62;

/// What a waiting caller gets once an intent settles: the operation's own
/// reply (the caller of the operation) or the intent (`atoll intent show`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    Result,
    View,
}

/// A settled outcome as stored: the replies a remote command can give, tagged
/// (the API's `Reply` is untagged JSON and would not read back unambiguously).
#[derive(Debug, Serialize, Deserialize)]
enum Settled {
    Instance(Box<Instance>),
    Removed(String),
    Image(Box<ImageView>),
    Failed(ApiError),
}

impl Settled {
    fn from_result(result: ApiResult) -> Settled {
        match result {
            Ok(Reply::Instance(i)) => Settled::Instance(Box::new(i)),
            Ok(Reply::Removed(r)) => Settled::Removed(r.removed),
            Ok(Reply::Image(v)) => Settled::Image(Box::new(v)),
            Ok(other) => Settled::Failed(ApiError::Internal(format!("unexpected reply {other:?}"))),
            Err(e) => Settled::Failed(e),
        }
    }

    fn into_result(self) -> ApiResult {
        match self {
            Settled::Instance(i) => Ok(Reply::Instance(*i)),
            Settled::Removed(removed) => Ok(Reply::removed(removed)),
            Settled::Image(v) => Ok(Reply::Image(*v)),
            Settled::Failed(e) => Err(e),
        }
    }

    fn describe(&self) -> String {
        match self {
            Settled::Instance(i) => {
                format!("instance {}/{} is {}: {}", i.project, i.name, i.observed, i.reason)
            }
            Settled::Removed(key) => format!("{key} removed"),
            Settled::Image(v) => format!("image {}/{} held", v.image.project, v.image.name),
            Settled::Failed(e) => e.to_string(),
        }
    }
}

/// What a remote command is about, for listings; None when it cannot be remote.
fn summarize(cmd: &Command) -> Option<(String, &str)> {
    Some(match cmd {
        Command::CreateInstance(n) => {
            (format!("create instance {}/{}", n.project, n.name), n.project.as_str())
        }
        Command::StartInstance { project, name } => (format!("start instance {project}/{name}"), project),
        Command::StopInstance { project, name } => (format!("stop instance {project}/{name}"), project),
        Command::DeleteInstance { project, name } => (format!("delete instance {project}/{name}"), project),
        Command::CopyImage { project, name } => (format!("copy image {project}/{name}"), project),
        Command::PlaceReplica { project, deployment, name, .. } => {
            (format!("place replica {project}/{name} of deployment {deployment}"), project)
        }
        Command::StopReplica { project, deployment, name } => {
            (format!("stop replica {project}/{name} of deployment {deployment}"), project)
        }
        _ => return None,
    })
}

/// A reconciler's command, which no caller may send.
fn is_replica(cmd: &Command) -> bool {
    matches!(cmd, Command::PlaceReplica { .. } | Command::StopReplica { .. })
}

impl Peer {
    /// `Command::Remote` from a caller of this site.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn remote(
        &mut self,
        now: Millis,
        req: ReqId,
        caller: &Caller,
        site: SiteId,
        wait_ms: Millis,
        cmd: Command,
        fx: &mut impl Effects,
    ) -> Outcome {
        if site == self.site {
            return self.dispatch(now, req, caller, cmd, fx);
        }
        match self.issue(now, caller, &site, &cmd) {
            Ok(id) => self.wait_intent(req, id, wait_ms, fx),
            Err(e) => Outcome::Now(Err(e)),
        }
    }

    fn issue(
        &mut self,
        now: Millis,
        caller: &Caller,
        site: &SiteId,
        cmd: &Command,
    ) -> Result<String, ApiError> {
        let user = &caller.user;
        let project = match summarize(cmd) {
            Some(_) if is_replica(cmd) => None,
            Some((_, project)) => Some(project),
            None => None,
        };
        let Some(project) = project else {
            return Err(ApiError::Invalid(
                "only instance create/start/stop/delete and image copy can be sent to another site".into(),
            ));
        };
        if !self.is_member(site) {
            return Err(ApiError::NotFound(format!("no site {site} in this realm")));
        }
        // Checked here for a prompt answer; the target checks again with its own view.
        match cmd {
            Command::CopyImage { project, name } => {
                let image = self
                    .realm
                    .image(project, name)?
                    .ok_or_else(|| ApiError::NotFound(format!("no image {project}/{name}")))?;
                auth::may_copy(&self.realm, user, &image, site)?;
            }
            _ => auth::require(&self.realm, user, project, atoll_crdt::Role::Member, site)?,
        }
        self.write_intent(now, site, &user.name, cmd, caller.session.as_ref())
    }

    /// Writes an intent for `site` to apply `cmd` as `user`, signed by the
    /// user's `session` if given (a reconciler's replica commands carry
    /// none: the deployment's record stands for them, crate::deployments).
    pub(crate) fn write_intent(
        &mut self,
        now: Millis,
        site: &SiteId,
        user: &str,
        cmd: &Command,
        session: Option<&crate::consent::Session>,
    ) -> Result<String, ApiError> {
        let Some((summary, _)) = summarize(cmd) else {
            return Err(ApiError::Invalid("this command cannot be sent to another site".into()));
        };
        let command = serde_json::to_string(cmd).map_err(|e| ApiError::Internal(e.to_string()))?;
        // A fresh id: an intent overwritten by a new one would lose the new
        // operation and answer the caller with the old one's outcome.
        let mut id = format!("{}.{:016x}", self.site, self.rng.next_u64());
        let mut draws = 1;
        while self.own.doc.get::<Intent>(&id)?.is_some() {
            if draws >= 8 {
                return Err(ApiError::Internal("cannot draw an unused intent id".into()));
            }
            draws += 1;
            id = format!("{}.{:016x}", self.site, self.rng.next_u64());
        }
        let mut intent = Intent {
            id: id.clone(),
            requester: self.site.clone(),
            target: site.clone(),
            user: user.to_owned(),
            command,
            summary,
            created_at: now,
            consent: None,
        };
        // Without a session (a token of the release before consents, or
        // of a user without a key) the target takes it only while the
        // realm's floor lets such intents in; it says so.
        intent.consent = session.map(|s| s.sign(&intent));
        self.own.doc.put(&intent)?;
        self.intent_issued(&id, now);
        Ok(id)
    }

    fn wait_intent(&mut self, req: ReqId, id: String, wait_ms: Millis, fx: &mut impl Effects) -> Outcome {
        let view = match self.intent_view(&id) {
            Ok(v) => v,
            Err(e) => return Outcome::Now(Err(e)),
        };
        if view.state.is_final() {
            return Outcome::Now(self.settled_result(&id).unwrap_or(Ok(Reply::Intent(view))));
        }
        self.park(req, view, (wait_ms, Want::Result), fx)
    }

    /// Waits up to `wait_ms` for a pending intent to settle, unless the caller
    /// asked not to wait or too many callers wait already: then answers with it
    /// as it stands.
    fn park(
        &mut self,
        req: ReqId,
        view: IntentView,
        (wait_ms, want): (Millis, Want),
        fx: &mut impl Effects,
    ) -> Outcome {
        let waiting: usize = self.intent_waiters.values().map(Vec::len).sum();
        if wait_ms == 0 || waiting >= MAX_INTENT_WAITERS {
            return Outcome::Now(Ok(Reply::Intent(view)));
        }
        let id = view.intent;
        self.intent_waiters.entry(id.clone()).or_default().push((req, want));
        fx.schedule(TimerId::IntentWait { id, req }, wait_ms.min(MAX_WAIT));
        Outcome::Later
    }

    /// The caller's wait is over: answer with the intent as it stands.
    pub(crate) fn on_intent_wait(&mut self, id: &str, req: ReqId) {
        let Some(reqs) = self.intent_waiters.get_mut(id) else { return };
        let before = reqs.len();
        reqs.retain(|(r, _)| *r != req);
        if reqs.len() == before {
            return;
        }
        if reqs.is_empty() {
            self.intent_waiters.remove(id);
        }
        let reply = self.intent_view(id).map(Reply::Intent);
        self.replies.push((req, reply));
    }

    /// After documents changed: answers callers whose intents settled.
    pub(crate) fn answer_intent_waiters(&mut self, changed: &[SiteId]) {
        let ids: Vec<String> = self
            .intent_waiters
            .keys()
            .filter(|id| {
                self.own.doc.get::<Intent>(id).ok().flatten().is_some_and(|i| changed.contains(&i.target))
            })
            .cloned()
            .collect();
        for id in ids {
            if let Some(result) = self.settled_result(&id) {
                for (req, want) in self.intent_waiters.remove(&id).unwrap_or_default() {
                    let reply = match want {
                        Want::Result => result.clone(),
                        Want::View => self.intent_view(&id).map(Reply::Intent),
                    };
                    self.replies.push((req, reply));
                }
            }
        }
    }

    /// The outcome of an intent issued here, if the target settled it.
    fn settled_result(&self, id: &str) -> Option<ApiResult> {
        let intent = self.own.doc.get::<Intent>(id).ok()??;
        let outcome = self.outcome_of(&intent.target, id)?;
        if !outcome.state.is_final() {
            return None;
        }
        let settled: Settled = serde_json::from_str(&outcome.result)
            .unwrap_or_else(|e| Settled::Failed(ApiError::Internal(format!("unreadable outcome: {e}"))));
        Some(settled.into_result())
    }

    pub(crate) fn outcome_of(&self, target: &SiteId, id: &str) -> Option<IntentOutcome> {
        let doc = if target == &self.site { &self.own.doc } else { &self.others.get(target)?.doc };
        doc.get::<IntentOutcome>(id).ok().flatten()
    }

    pub(crate) fn view(&self, intent: Intent) -> IntentView {
        let outcome = self.outcome_of(&intent.target, &intent.id);
        let (state, detail, settled_at) = match outcome {
            Some(o) => {
                let detail =
                    serde_json::from_str::<Settled>(&o.result).map(|s| s.describe()).unwrap_or_default();
                (o.state, detail, o.state.is_final().then_some(o.at))
            }
            None => (IntentState::Pending, format!("not yet seen by {}", intent.target), None),
        };
        IntentView {
            intent: intent.id,
            requester: intent.requester,
            target: intent.target,
            user: intent.user,
            summary: intent.summary,
            created_at: intent.created_at,
            state,
            detail,
            settled_at,
        }
    }

    /// An intent issued here or received here.
    pub(crate) fn intent_view(&self, id: &str) -> Result<IntentView, ApiError> {
        let requester = id.rsplit_once('.').and_then(|(s, _)| SiteId::new(s).ok());
        let doc = match &requester {
            Some(s) if s == &self.site => Some(&self.own.doc),
            Some(s) => self.others.get(s).map(|d| &d.doc),
            None => None,
        };
        doc.and_then(|d| d.get::<Intent>(id).ok().flatten())
            .map(|i| self.view(i))
            .ok_or_else(|| ApiError::NotFound(format!("no intent {id} known to site {}", self.site)))
    }

    pub(crate) fn show_intent(
        &mut self,
        req: ReqId,
        user: &User,
        id: String,
        wait_ms: Millis,
        fx: &mut impl Effects,
    ) -> Outcome {
        match self.intent_view(&id) {
            Ok(v) if v.user == user.name || user.realm_admin => {
                if v.state.is_final() || v.requester != self.site {
                    Outcome::Now(Ok(Reply::Intent(v)))
                } else {
                    self.park(req, v, (wait_ms, Want::View), fx)
                }
            }
            Ok(_) => Outcome::Now(Err(ApiError::NotFound(format!("no intent {id} of user {}", user.name)))),
            Err(e) => Outcome::Now(Err(e)),
        }
    }

    /// Intents this site issued and intents it received, visible to the caller.
    /// Intents in every document held here (issued by this site, by the sites
    /// it keeps documents of, and those received here), realm-wide as far as
    /// this site knows; a user sees their own, a realm admin all.
    pub(crate) fn list_intents(&self, user: &User) -> ApiResult {
        let mut out: BTreeMap<String, IntentView> = BTreeMap::new();
        for doc in std::iter::once(&self.own).chain(self.others.values()) {
            for intent in doc.doc.list::<Intent>().unwrap_or_default() {
                // Only a requester writes its intents; anything else is not one.
                if intent.requester == doc.site {
                    out.insert(intent.id.clone(), self.view(intent));
                }
            }
        }
        for outcome in self.own.doc.list::<IntentOutcome>().unwrap_or_default() {
            if !out.contains_key(&outcome.id)
                && let Ok(v) = self.intent_view(&outcome.id)
            {
                out.insert(outcome.id.clone(), v);
            }
        }
        let mut out: Vec<IntentView> =
            out.into_values().filter(|v| v.user == user.name || user.realm_admin).collect();
        out.sort_by(|a, b| (a.created_at, &a.intent).cmp(&(b.created_at, &b.intent)));
        Ok(Reply::Intents(out))
    }

    /// Applies intents addressed to this site found in the given documents
    /// (those that changed in this input, or every one at boot).
    pub(crate) fn apply_intents(&mut self, now: Millis, docs: &[SiteId], fx: &mut impl Effects) {
        let mut todo = Vec::new();
        for s in docs {
            let Some(d) = self.others.get(s) else { continue };
            if d.doc.count::<Intent>() == 0 {
                continue;
            }
            for intent in d.doc.list::<Intent>().unwrap_or_default() {
                if intent.target == self.site
                    && intent.requester == *s
                    && !self.applying.values().any(|(id, _)| id == &intent.id)
                    && !self.own.doc.contains::<IntentOutcome>(&intent.id).unwrap_or(true)
                {
                    todo.push(intent);
                }
            }
        }
        for intent in todo {
            self.apply_intent(now, intent, fx);
        }
    }

    fn apply_intent(&mut self, now: Millis, intent: Intent, fx: &mut impl Effects) {
        // Each intent's effects stand or fall alone.
        self.flush(now, fx);
        let parsed = (|| {
            // A removed site's requests die with it (docs/operations.md,
            // "A stolen site"), however they reach this one.
            if !self.is_member(&intent.requester) {
                return Err(ApiError::Forbidden(format!(
                    "site {} is not a member of the realm (removed)",
                    intent.requester
                )));
            }
            let user = self
                .realm
                .user(&intent.user)?
                .ok_or_else(|| ApiError::Forbidden(format!("no user {} in the realm", intent.user)))?;
            let cmd: Command = serde_json::from_str(&intent.command)
                .map_err(|e| ApiError::Invalid(format!("unreadable intent command: {e}")))?;
            if summarize(&cmd).is_none() {
                return Err(ApiError::Invalid("this command cannot be sent to another site".into()));
            }
            // The requester's word is not enough: the user's own
            // (crate::consent), or for a replica, their signed deployment.
            if is_replica(&cmd) {
                self.replica_standing(&intent, &cmd)?;
            } else if !self.breaks(crate::peer::Sabotage::Consent) {
                consent::check(&self.realm, &intent, now)?;
            }
            Ok((user, cmd))
        })();
        let req = self.next_intent_req;
        self.next_intent_req += 1;
        let outcome = match parsed {
            Ok((user, cmd)) => self.dispatch(now, req, &Caller::user(user), cmd, fx),
            Err(e) => Outcome::Now(Err(e)),
        };
        match outcome {
            Outcome::Now(result) => {
                if result.is_err() {
                    self.realm.doc.rollback();
                    self.own.doc.rollback();
                }
                self.record_outcome(now, &intent.id, &intent.requester, Settled::from_result(result));
            }
            Outcome::Later => {
                let applying = IntentOutcome {
                    id: intent.id.clone(),
                    requester: intent.requester.clone(),
                    state: IntentState::Applying,
                    result: String::new(),
                    at: now,
                };
                let _ = self.own.doc.put(&applying);
                self.applying.insert(req, (intent.id, intent.requester));
            }
        }
    }

    fn record_outcome(&mut self, now: Millis, id: &str, requester: &SiteId, settled: Settled) {
        let state =
            if matches!(settled, Settled::Failed(_)) { IntentState::Failed } else { IntentState::Done };
        let result = serde_json::to_string(&settled).unwrap_or_default();
        let outcome =
            IntentOutcome { id: id.to_owned(), requester: requester.clone(), state, result, at: now };
        let _ = self.own.doc.put(&outcome);
    }

    /// Takes the replies meant for intents being applied and records them as outcomes.
    pub(crate) fn settle_applied(&mut self, now: Millis) {
        if self.applying.is_empty() {
            return;
        }
        let replies = std::mem::take(&mut self.replies);
        for (req, result) in replies {
            match self.applying.remove(&req) {
                Some((id, requester)) => {
                    self.record_outcome(now, &id, &requester, Settled::from_result(result))
                }
                None => self.replies.push((req, result)),
            }
        }
    }

    /// Garbage collection, with each repair round: the requester drops an
    /// intent [`INTENT_KEEP`] after it settled; the target drops the outcome
    /// once the intent is gone from the requester's document as it holds it
    /// (only the requester writes that document, so a dropped intent never
    /// comes back to be applied again).
    pub(crate) fn collect_intents(&mut self, now: Millis) {
        if self.own.doc.count::<Intent>() > 0 {
            for intent in self.own.doc.list::<Intent>().unwrap_or_default() {
                let settled = self
                    .outcome_of(&intent.target, &intent.id)
                    .is_some_and(|o| o.state.is_final() && now.saturating_sub(o.at) > INTENT_KEEP);
                if settled && !self.intent_waiters.contains_key(&intent.id) {
                    let _ = self.own.doc.delete::<Intent>(&intent.id);
                }
            }
        }
        if self.own.doc.count::<IntentOutcome>() > 0 {
            for o in self.own.doc.list::<IntentOutcome>().unwrap_or_default() {
                let Some(requester) = self.others.get(&o.requester) else { continue };
                let withdrawn = requester.doc.has_collection(Intent::COLLECTION)
                    && !requester.doc.contains::<Intent>(&o.id).unwrap_or(true);
                if o.state.is_final() && withdrawn && now.saturating_sub(o.at) > INTENT_KEEP {
                    let _ = self.own.doc.delete::<IntentOutcome>(&o.id);
                }
            }
        }
    }

    /// After a restart: intents whose application was under way when the
    /// daemon stopped are settled from the state they left (they were applied
    /// once: never again), and intents received but not applied are applied.
    pub(crate) fn resume_intents(&mut self, now: Millis, fx: &mut impl Effects) {
        for o in self.own.doc.list::<IntentOutcome>().unwrap_or_default() {
            if o.state != IntentState::Applying {
                continue;
            }
            let settled = self.state_after(&o);
            self.record_outcome(now, &o.id, &o.requester, settled);
        }
        let docs: Vec<SiteId> = self.others.keys().cloned().collect();
        self.apply_intents(now, &docs, fx);
    }

    fn state_after(&self, o: &IntentOutcome) -> Settled {
        let cmd = self
            .others
            .get(&o.requester)
            .and_then(|d| d.doc.get::<Intent>(&o.id).ok().flatten())
            .and_then(|i| serde_json::from_str::<Command>(&i.command).ok());
        let key = match &cmd {
            Some(Command::CreateInstance(n)) => Some((n.project.clone(), n.name.clone())),
            Some(
                Command::StartInstance { project, name }
                | Command::StopInstance { project, name }
                | Command::DeleteInstance { project, name },
            ) => Some((project.clone(), name.clone())),
            _ => None,
        };
        match key {
            Some((p, n)) => match self.own.instance(&p, &n) {
                Ok(Some(inst)) => Settled::Instance(Box::new(inst)),
                _ => Settled::Removed(format!("{p}/{n}")),
            },
            None => {
                Settled::Failed(ApiError::Internal("the site restarted while applying this intent".into()))
            }
        }
    }
}
