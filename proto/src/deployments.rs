//! Deployments kept and run (docs/architecture.md, "Deployments and
//! placement"): the API's apply, scale, delete, list and show, and the
//! peer's side of reconciliation: building [`crate::reconcile::View`] from
//! the documents it holds, and carrying out what it asks for.
//!
//! A deployment is a realm record signed by its user (crate::rules), so
//! every site holds it and can check it. A replica is made by the site that
//! runs it, on the word of the reconciling site (an intent with a
//! [`Command::PlaceReplica`]) checked against that record: the user's
//! signature over the desired state stands in for their consent to each
//! replica, and the replica is made from the record, never from what the
//! requester says.

use std::collections::{BTreeMap, BTreeSet};

use atoll_crdt::{
    DeploymentRecord, Desired, Entity, Instance, Intent, IntentState, Kind, Millis, Observed, ReplicaOf,
    Role, SiteId, User, Visibility,
};
use serde::{Deserialize, Serialize};

use crate::api::{ApiError, ApiResult, Command, NewInstance, Reply, SiteRow};
use crate::auth;
use crate::consent::Caller;
use crate::deployment::Deployment;
use crate::lifecycle::Verb;
use crate::peer::{Effects, Outcome, Peer, ReqId, TimerId};
use crate::reconcile::{self, Action, Copy};

/// How often each site runs the reconcilers it is the acting one for.
pub const RECONCILE_EVERY: Millis = 2_000;
/// How long a site that refused a placement is given nothing more of that
/// deployment.
pub const REFUSED_FOR: Millis = 30_000;
/// Most local placements and stops under way at once.
pub const MAX_QUIET: usize = 256;

/// A deployment as the serving site knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeploymentView {
    pub deployment: Deployment,
    pub revision: u64,
    pub deleted: bool,
    pub created_by: String,
    pub home: SiteId,
    pub updated_at: Millis,
    /// The site reconciling it, as the serving site sees the realm.
    pub reconciler: Option<SiteId>,
    /// The latest problem the serving site met reconciling it (when it is
    /// the reconciler), and when.
    pub problem: Option<String>,
    pub problem_at: Option<Millis>,
    pub services: Vec<ServiceStatus>,
}

/// One service's replicas, from the site documents the serving site holds
/// (complete on the deployment's reconcilers, who are sent them all).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ServiceStatus {
    pub service: String,
    pub replicas: u32,
    pub running: u32,
    pub copies: Vec<CopyView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CopyView {
    pub site: SiteId,
    pub name: String,
    pub observed: Observed,
    /// Made from an older spec of the service: to be replaced.
    pub outdated: bool,
    /// Whether the serving site reaches its site now (the state is then the
    /// last known one).
    pub reachable: bool,
}

/// A deployment's replicas by service: where each runs, and the instance.
type ByService = BTreeMap<String, Vec<(SiteId, Instance)>>;

/// What a reconcile round reads of the peer, once for all its deployments:
/// the sites as known here, placements in flight, the replicas held.
struct Inputs {
    rows: Vec<SiteRow>,
    pending: BTreeMap<String, Vec<(SiteId, String)>>,
    held: BTreeMap<String, ByService>,
}

/// The peer's own bookkeeping for reconciliation (volatile).
#[derive(Default)]
pub(crate) struct Reconciler {
    /// Requests of local placements and stops: their replies go nowhere.
    pub quiet: BTreeMap<ReqId, (String, SiteId)>,
    /// Sites that refused a placement, by deployment key: until when.
    pub refused: BTreeMap<(String, SiteId), Millis>,
    /// When this peer first reconciled: a site never heard from counts as
    /// unreachable since then.
    pub since: Option<Millis>,
    /// The latest problem of each deployment reconciled here, and when.
    pub problems: BTreeMap<String, (Millis, String)>,
}

impl Reconciler {
    fn note(&mut self, key: &str, now: Millis, what: String) {
        // One entry per deployment: bounded by the realm's deployments.
        self.problems.insert(key.to_owned(), (now, what));
    }
}

/// A record's desired state, read and checked (the realm's gate refuses a
/// record whose state does not pass).
pub fn read_spec(r: &DeploymentRecord) -> Result<Deployment, ApiError> {
    if r.spec.len() > atoll_crdt::deployment::MAX_SPEC {
        return Err(ApiError::Invalid(format!(
            "a deployment's desired state has at most {} bytes of JSON",
            atoll_crdt::deployment::MAX_SPEC
        )));
    }
    let d: Deployment = serde_json::from_str(&r.spec)
        .map_err(|e| ApiError::Invalid(format!("unreadable desired state: {e}")))?;
    d.check()?;
    if d.project != r.project || d.name != r.name {
        return Err(ApiError::Invalid(format!(
            "its desired state is of {}/{}, not {}/{}",
            d.project, d.name, r.project, r.name
        )));
    }
    Ok(d)
}

impl Peer {
    fn need_deployments(&self) -> Result<(), ApiError> {
        if self.realm.has_deployments() {
            return Ok(());
        }
        Err(ApiError::Conflict("this realm was founded before deployments (0.3) and cannot keep them".into()))
    }

    /// The instance kind of each service (from its image), checking that
    /// the project may use every image.
    pub(crate) fn kinds(&self, d: &Deployment) -> Result<BTreeMap<String, Kind>, ApiError> {
        let mut kinds = BTreeMap::new();
        for (name, s) in &d.services {
            let (img_project, img_name) = s.image.split_once('/').unwrap_or((&d.project, &s.image));
            let image = self
                .realm
                .image(img_project, img_name)?
                .filter(|i| i.project == d.project || i.visibility == Visibility::Public)
                .ok_or_else(|| {
                    ApiError::NotFound(format!(
                        "service {name}: no image {img_project}/{img_name} usable by project {}",
                        d.project
                    ))
                })?;
            kinds.insert(name.clone(), image.format.kind());
        }
        Ok(kinds)
    }

    /// `PUT /v1/deployments`: a new revision of the deployment, written
    /// through this site.
    pub(crate) fn apply_deployment(&mut self, now: Millis, caller: &Caller, d: Deployment) -> ApiResult {
        self.need_deployments()?;
        d.check()?;
        if self.realm.project(&d.project)?.is_none() {
            return Err(ApiError::NotFound(format!("no project {}", d.project)));
        }
        auth::require(&self.realm, &caller.user, &d.project, Role::Member, &self.site)?;
        self.kinds(&d)?;
        self.write_deployment(now, caller, d, false)
    }

    fn write_deployment(&mut self, now: Millis, caller: &Caller, d: Deployment, retire: bool) -> ApiResult {
        let spec = serde_json::to_string(&d).map_err(|e| ApiError::Internal(e.to_string()))?;
        let record = DeploymentRecord {
            project: d.project.clone(),
            name: d.name.clone(),
            spec,
            created_by: caller.user.name.clone(),
            home: self.site.clone(),
            updated_at: now,
            seal: Default::default(),
        };
        read_spec(&record)?;
        let record = self.write_sealed(caller, record, retire)?;
        self.deployment_view(&record)
    }

    /// A deployment's latest record, unless deleted, for a member of its project.
    fn live_deployment(&self, user: &User, project: &str, name: &str) -> Result<DeploymentRecord, ApiError> {
        self.need_deployments()?;
        auth::require(&self.realm, user, project, Role::Reader, &self.site)?;
        self.realm
            .deployment(project, name)?
            .filter(|r| !r.seal.retired)
            .ok_or_else(|| ApiError::NotFound(format!("no deployment {project}/{name}")))
    }

    pub(crate) fn scale_deployment(
        &mut self,
        now: Millis,
        caller: &Caller,
        (project, name): (&str, &str),
        service: &str,
        replicas: u32,
    ) -> ApiResult {
        let record = self.live_deployment(&caller.user, project, name)?;
        auth::require(&self.realm, &caller.user, project, Role::Member, &self.site)?;
        let mut d = read_spec(&record)?;
        let s = d.services.get_mut(service).ok_or_else(|| {
            ApiError::NotFound(format!("no service {service} in deployment {project}/{name}"))
        })?;
        s.replicas = replicas;
        d.check()?;
        self.write_deployment(now, caller, d, false)
    }

    pub(crate) fn delete_deployment(
        &mut self,
        now: Millis,
        caller: &Caller,
        project: &str,
        name: &str,
    ) -> ApiResult {
        let record = self.live_deployment(&caller.user, project, name)?;
        auth::require(&self.realm, &caller.user, project, Role::Member, &self.site)?;
        let d = read_spec(&record)?;
        self.write_deployment(now, caller, d, true)?;
        Ok(Reply::removed(format!("deployment {project}/{name}")))
    }

    pub(crate) fn show_deployment(&mut self, user: &User, project: &str, name: &str) -> ApiResult {
        let record = self.live_deployment(user, project, name)?;
        self.deployment_view(&record)
    }

    pub(crate) fn list_deployments(&mut self, user: &User) -> ApiResult {
        let mut out = Vec::new();
        for r in self.realm.deployments()? {
            let visible = auth::require(&self.realm, user, &r.project, Role::Reader, &self.site).is_ok();
            if visible && !r.seal.retired {
                let Reply::Deployment(v) = self.deployment_view(&r)? else { continue };
                out.push(*v);
            }
        }
        Ok(Reply::Deployments(out))
    }

    fn deployment_view(&mut self, r: &DeploymentRecord) -> ApiResult {
        let d = read_spec(r)?;
        let key = r.key();
        let ranked = reconcile::reconcilers(&key, &self.member_sites());
        let reconciler = ranked.iter().find(|s| self.in_reach(s)).cloned();
        let copies = self.copies_of(&r.project, &r.name);
        let services = d
            .services
            .iter()
            .map(|(name, s)| {
                let digest = s.digest();
                let mine: Vec<&(SiteId, Instance)> = copies
                    .get(name)
                    .into_iter()
                    .flatten()
                    .filter(|(_, i)| i.desired != Desired::Deleted)
                    .collect();
                ServiceStatus {
                    service: name.clone(),
                    replicas: s.replicas,
                    running: mine.iter().filter(|(_, i)| i.observed == Observed::Running).count() as u32,
                    copies: mine
                        .iter()
                        .map(|(site, i)| CopyView {
                            site: site.clone(),
                            name: i.name.clone(),
                            observed: i.observed,
                            outdated: i.replica.as_ref().is_some_and(|t| t.spec != digest),
                            reachable: self.in_reach(site),
                        })
                        .collect(),
                }
            })
            .collect();
        Ok(Reply::Deployment(Box::new(DeploymentView {
            deployment: d,
            revision: r.seal.rev,
            deleted: r.seal.retired,
            created_by: r.created_by.clone(),
            home: r.home.clone(),
            updated_at: r.updated_at,
            reconciler,
            problem: self.deploy.problems.get(&key).map(|(_, p)| p.clone()),
            problem_at: self.deploy.problems.get(&key).map(|(at, _)| *at),
            services,
        })))
    }

    /// The replicas of `d` made from its current spec and not being
    /// deleted, by site, as held here: what a plan adds to.
    pub(crate) fn running_replicas(&self, d: &Deployment) -> crate::placement::Replicas {
        let mut out = crate::placement::Replicas::new();
        for (service, copies) in self.copies_of(&d.project, &d.name) {
            let Some(s) = d.services.get(&service) else { continue };
            let digest = s.digest();
            for (site, i) in copies {
                if i.desired != Desired::Deleted && i.replica.is_some_and(|t| t.spec == digest) {
                    *out.entry(site).or_default().entry(service.clone()).or_default() += 1;
                }
            }
        }
        out
    }

    /// The realm's members (removed ones left out): whom reconcilers are
    /// ranked among, the same list on every site.
    pub(crate) fn member_sites(&self) -> Vec<SiteId> {
        self.realm.member_sites().unwrap_or_default()
    }

    /// The replicas of deployment `project/name` in the site documents held
    /// here, by service (deleted ones included).
    fn copies_of(&self, project: &str, name: &str) -> ByService {
        self.replicas_held().remove(&format!("{project}/{name}")).unwrap_or_default()
    }

    /// Every deployment's replicas in the site documents held here, by
    /// `project/deployment` then service: one pass over the instances, for
    /// a whole round of reconcilers.
    fn replicas_held(&self) -> BTreeMap<String, ByService> {
        let mut out: BTreeMap<String, ByService> = BTreeMap::new();
        for (site, doc) in std::iter::once((&self.site, &self.own)).chain(self.others.iter()) {
            for i in doc.instances().unwrap_or_default() {
                if let Some(tag) = i.replica.clone() {
                    let key = format!("{}/{}", i.project, tag.deployment);
                    out.entry(key).or_default().entry(tag.service).or_default().push((site.clone(), i));
                }
            }
        }
        out
    }

    /// Each round: runs the reconciler of every deployment this site is the
    /// acting one for, and carries out what it asks.
    pub(crate) fn on_reconcile_timer(&mut self, now: Millis, fx: &mut impl Effects) {
        fx.schedule(TimerId::Reconcile, RECONCILE_EVERY);
        let since = *self.deploy.since.get_or_insert(now);
        self.deploy.refused.retain(|_, until| *until > now);
        let Ok(records) = self.realm.deployments() else { return };
        if records.is_empty() {
            return;
        }
        let members = self.member_sites();
        // What only a reconciler needs, read once it is one: every site of a
        // realm asks every round, and few of them act.
        let mut inputs: Option<Inputs> = None;
        for r in records {
            let key = r.key();
            let ranked = reconcile::reconcilers(&key, &members);
            let me = self.site.clone();
            let sabotaged = self.breaks(crate::peer::Sabotage::Reconcilers) && ranked.contains(&me);
            if !sabotaged && !reconcile::acts(&ranked, &me, |s| self.in_reach(s)) {
                continue;
            }
            if inputs.is_none() {
                let Ok(Reply::Sites(rows)) = self.list_sites(now) else { return };
                inputs =
                    Some(Inputs { rows, pending: self.pending_placements(now), held: self.replicas_held() });
            }
            let Some(Inputs { rows, pending, held }) = inputs.as_mut() else { return };
            let mine = held.remove(&key).unwrap_or_default();
            let round = match self.round_of(&r, mine, rows, pending, (now, since)) {
                Ok(round) => round,
                Err(e) => {
                    self.deploy.note(&key, now, e.to_string());
                    continue;
                }
            };
            if !round.short.is_empty() {
                self.deploy.note(&key, now, round.short.join("; "));
            } else if round.actions.is_empty() {
                self.deploy.problems.remove(&key);
            }
            for a in round.actions {
                self.carry_out(now, &r, a, fx);
            }
        }
    }

    /// What one deployment needs done now, as this site knows it.
    fn round_of(
        &self,
        r: &DeploymentRecord,
        held: ByService,
        rows: &[SiteRow],
        pending: &BTreeMap<String, Vec<(SiteId, String)>>,
        (now, since): (Millis, Millis),
    ) -> Result<reconcile::Round, ApiError> {
        let d = if r.seal.retired { None } else { Some(read_spec(r)?) };
        let kinds = match &d {
            Some(d) => self.kinds(d)?,
            None => BTreeMap::new(),
        };
        let key = r.key();
        let mut copies: BTreeMap<String, Vec<Copy>> = BTreeMap::new();
        let mut seen = BTreeSet::new();
        for (service, list) in held {
            for (site, i) in list {
                let tag = i.replica.as_ref();
                seen.insert((site.clone(), i.name.clone()));
                copies.entry(service.clone()).or_default().push(Copy {
                    away_since: self.away_since(&site, since),
                    site,
                    name: i.name.clone(),
                    spec: tag.map(|t| t.spec.clone()).unwrap_or_default(),
                    created_at: i.created_at,
                    running_since: (i.observed == Observed::Running).then_some(i.observed_at),
                    pending: false,
                    deleting: i.desired == Desired::Deleted,
                });
            }
        }
        for (site, name) in pending.get(&key).into_iter().flatten() {
            if seen.contains(&(site.clone(), name.clone())) {
                continue;
            }
            let service = name.strip_prefix(&format!("{}.", r.name)).and_then(|s| s.rsplit_once('.'));
            let Some((service, _)) = service else { continue };
            copies.entry(service.to_owned()).or_default().push(Copy {
                away_since: self.away_since(site, since),
                site: site.clone(),
                name: name.clone(),
                spec: d
                    .as_ref()
                    .and_then(|d| d.services.get(service))
                    .map(|s| s.digest())
                    .unwrap_or_default(),
                created_at: now,
                running_since: None,
                pending: true,
                deleting: false,
            });
        }
        let refused: BTreeSet<SiteId> =
            self.deploy.refused.keys().filter(|(k, _)| *k == key).map(|(_, s)| s.clone()).collect();
        let rights = Some(self.reachable_rights(&r.project, rows)?);
        let view = reconcile::View {
            deployment: d.as_ref(),
            kinds: &kinds,
            sites: rows,
            copies: &copies,
            refused: &refused,
            rights,
        };
        Ok(reconcile::reconcile(&r.name, &view, now))
    }

    fn away_since(&self, site: &SiteId, since: Millis) -> Option<Millis> {
        if self.in_reach(site) {
            return None;
        }
        Some(self.seen.get(site).copied().unwrap_or(since).max(since))
    }

    /// Placements this site asked for and not yet answered, by deployment
    /// key; refusals mark their site.
    fn pending_placements(&mut self, now: Millis) -> BTreeMap<String, Vec<(SiteId, String)>> {
        let mut out: BTreeMap<String, Vec<(SiteId, String)>> = BTreeMap::new();
        if self.own.doc.count::<Intent>() == 0 {
            return out;
        }
        for intent in self.own.doc.list::<Intent>().unwrap_or_default() {
            let Ok(Command::PlaceReplica { project, deployment, name, .. }) =
                serde_json::from_str::<Command>(&intent.command)
            else {
                continue;
            };
            let key = format!("{project}/{deployment}");
            let outcome = self.outcome_of(&intent.target, &intent.id);
            match outcome.as_ref().map(|o| (o.state, o.at)) {
                Some((IntentState::Failed, at)) => {
                    if now.saturating_sub(at) < REFUSED_FOR {
                        let why = outcome.as_ref().map(|o| o.result.clone()).unwrap_or_default();
                        self.deploy.note(&key, at, format!("{} refused {name}: {why}", intent.target));
                        self.deploy.refused.insert((key, intent.target.clone()), at + REFUSED_FOR);
                    }
                }
                // The outcome is in the target's document, written with or
                // after the replica: a held outcome means a held replica
                // (or one deleted since).
                Some((IntentState::Done, _)) => {}
                _ => out.entry(key).or_default().push((intent.target.clone(), name)),
            }
        }
        out
    }

    fn carry_out(&mut self, now: Millis, r: &DeploymentRecord, action: Action, fx: &mut impl Effects) {
        let (site, cmd) = match action {
            Action::Place { service, site, name } => {
                let cmd = Command::PlaceReplica {
                    project: r.project.clone(),
                    deployment: r.name.clone(),
                    revision: r.seal.rev,
                    service,
                    name,
                };
                (site, cmd)
            }
            Action::Stop { service, site, name, why } => {
                let _ = (service, why);
                (site, Command::StopReplica { project: r.project.clone(), deployment: r.name.clone(), name })
            }
        };
        if site != self.site {
            if let Err(e) = self.write_intent(now, &site, &r.created_by, &cmd, None) {
                self.deploy.note(&r.key(), now, format!("cannot ask {site} for a replica: {e}"));
            }
            return;
        }
        if self.deploy.quiet.len() >= MAX_QUIET {
            return;
        }
        let Ok(Some(user)) = self.realm.user(&r.created_by) else { return };
        let req = self.next_intent_req;
        self.next_intent_req += 1;
        self.deploy.quiet.insert(req, (r.key(), site));
        match self.dispatch(now, req, &Caller::user(user), cmd, fx) {
            Outcome::Now(result) => {
                if result.is_err() {
                    self.realm.doc.rollback();
                    self.own.doc.rollback();
                }
                self.replies.push((req, result));
            }
            Outcome::Later => {}
        }
    }

    /// Drops the replies meant for local placements and stops (noting a
    /// refused placement), keeping the others.
    pub(crate) fn settle_quiet(&mut self, now: Millis) {
        if self.deploy.quiet.is_empty() {
            return;
        }
        let replies = std::mem::take(&mut self.replies);
        for (req, result) in replies {
            match self.deploy.quiet.remove(&req) {
                Some((key, site)) => {
                    if let Err(e) = result {
                        self.deploy.note(&key, now, format!("{site} refused a replica: {e}"));
                        self.deploy.refused.insert((key, site), now + REFUSED_FOR);
                    }
                }
                None => self.replies.push((req, result)),
            }
        }
    }

    /// Whether the intent for a replica command stands: the deployment's
    /// record, as this site holds it, is that user's (their signature over
    /// it stands in for a consent to each replica).
    pub(crate) fn replica_standing(&self, intent: &Intent, cmd: &Command) -> Result<(), ApiError> {
        let (project, deployment) = match cmd {
            Command::PlaceReplica { project, deployment, .. }
            | Command::StopReplica { project, deployment, .. } => (project, deployment),
            _ => return Err(ApiError::Internal("not a replica command".into())),
        };
        let record = self
            .realm
            .deployment(project, deployment)?
            .ok_or_else(|| ApiError::Busy(format!("no deployment {project}/{deployment} here yet")))?;
        if record.created_by != intent.user {
            return Err(ApiError::Forbidden(format!(
                "deployment {project}/{deployment} is user {}'s, not {}'s",
                record.created_by, intent.user
            )));
        }
        Ok(())
    }

    /// `PlaceReplica`: makes replica `name` of a service as the deployment's
    /// record (as held here) describes it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn place_replica(
        &mut self,
        now: Millis,
        req: ReqId,
        caller: &User,
        (project, deployment, revision): (&str, &str, u64),
        service: &str,
        name: String,
        fx: &mut impl Effects,
    ) -> Outcome {
        let made = (|| {
            let record = self
                .realm
                .deployment(project, deployment)?
                .ok_or_else(|| ApiError::Busy(format!("no deployment {project}/{deployment} here yet")))?;
            if record.seal.retired {
                return Err(ApiError::Conflict(format!("deployment {project}/{deployment} was deleted")));
            }
            if record.created_by != caller.name {
                return Err(ApiError::Forbidden(format!(
                    "deployment {project}/{deployment} is not {}'s",
                    caller.name
                )));
            }
            if record.seal.rev < revision {
                return Err(ApiError::Busy(format!(
                    "deployment {project}/{deployment}: revision {revision} not here yet (have {})",
                    record.seal.rev
                )));
            }
            let d = read_spec(&record)?;
            let s = d.services.get(service).ok_or_else(|| {
                ApiError::NotFound(format!("no service {service} in deployment {project}/{deployment}"))
            })?;
            let ordinal = name
                .strip_prefix(&format!("{deployment}.{service}."))
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|n| *n <= reconcile::MAX_ORDINAL && name.ends_with(&n.to_string()));
            if ordinal.is_none() {
                return Err(ApiError::Invalid(format!(
                    "{name} is not a replica name of {deployment}.{service}"
                )));
            }
            Ok(NewInstance {
                name,
                project: project.to_owned(),
                image: s.image.clone(),
                cpus: s.cpus,
                memory_mib: s.memory_mib,
                disk_mib: s.disk_mib,
                restart: s.restart,
                args: s.args.clone(),
                env: s.env.clone(),
                ports: s.ports.clone(),
                replica: Some(ReplicaOf {
                    deployment: deployment.to_owned(),
                    service: service.to_owned(),
                    spec: s.digest(),
                }),
            })
        })();
        match made {
            Ok(n) => self.create_instance(now, req, caller, n, fx),
            Err(e) => Outcome::Now(Err(e)),
        }
    }

    /// `StopReplica`: deletes one of a deployment's replicas here (an
    /// instance made by hand is never touched).
    pub(crate) fn stop_replica(
        &mut self,
        now: Millis,
        req: ReqId,
        caller: &User,
        (project, deployment, name): (&str, &str, &str),
        fx: &mut impl Effects,
    ) -> Outcome {
        let ours = self
            .own
            .instance(project, name)
            .ok()
            .flatten()
            .is_some_and(|i| i.replica.is_some_and(|t| t.deployment == deployment));
        if !ours {
            return Outcome::Now(Err(ApiError::NotFound(format!(
                "no replica {project}/{name} of deployment {deployment} on site {}",
                self.site
            ))));
        }
        self.act(now, req, caller, (project, name), Verb::Delete, fx)
    }
}
