//! The realm-wide view (docs/architecture.md, "Realm-wide view"): instance
//! lists and look-ups over every site, answered from the documents this site
//! holds, and for the others by asking their owner (or, when the owner is out
//! of reach, a connected custodian of its document) over the peer network.
//! A call waits at most [`WAIT`] for answers; a site that cannot be reached is
//! shown with the last state known here and its age, marked unreachable.
//!
//! [`Gather`] is the state: calls waiting for answers, and the last answer
//! heard from each site whose document this site does not hold. The plan of
//! who to ask is the pure [`plan`].

use std::collections::{BTreeMap, BTreeSet};

use atoll_crdt::{Entity, Instance, Millis, Role, SiteId};
use serde::{Deserialize, Serialize};

use crate::api::{ApiError, Command, Reply};
use crate::auth;
use crate::consent::Caller;
use crate::peer::{Effects, Outcome, Peer, ReqId, TimerId};
use crate::wire::PeerMsg;

/// How long a call waits for the answers of other sites.
pub const WAIT: Millis = 2_000;
/// Calls waiting at once; beyond, a call is answered with what is known here.
pub const MAX_PARKED: usize = 64;
/// Instances in one answer (a site with more says its list is cut).
pub const MAX_TOLD: usize = 4096;
/// Encoded bytes of instances in one answer, well under the message limit.
pub const MAX_TOLD_BYTES: usize = 3 << 20;
/// Sites whose last answer is remembered (those we hold no document of),
/// and instances remembered over all of them.
pub const MAX_HEARD: usize = 1024;
pub const MAX_HEARD_INSTANCES: usize = 65_536;

/// Where a site's part of the view came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The serving site itself.
    Own,
    /// The replica of the site's document held here.
    Replica,
    /// Asked over the peer network: the owner, or a custodian of its document.
    Asked { by: SiteId },
    /// The last answer heard from it, remembered here.
    Remembered,
    /// Nothing is known: no replica, no answer, no one to ask.
    Unknown,
}

/// One site's part of a realm-wide view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SiteState {
    pub site: SiteId,
    /// Whether the site itself is connected to the serving site now.
    pub reachable: bool,
    /// When the state shown was last known to be the site's own (ms since
    /// the epoch): now for a connected site, else when it was last heard from.
    pub as_of: Option<Millis>,
    pub source: Source,
    /// The site has more instances than an answer carries.
    #[serde(default)]
    pub cut: bool,
}

/// The instances of the realm, or of one site, and where each site's part
/// came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct InstanceList {
    pub instances: Vec<Instance>,
    pub sites: Vec<SiteState>,
}

/// What a site tells about one site's instances.
#[derive(Debug, Clone, PartialEq)]
pub struct Told {
    pub instances: Vec<Instance>,
    pub as_of: Option<Millis>,
    pub cut: bool,
}

/// What a waiting call will do with the view.
#[derive(Debug, Clone)]
pub enum Purpose {
    List,
    /// Run `then` (show, start, stop or delete of `project/name`) where the
    /// instance is.
    Find {
        project: String,
        name: String,
        wait_ms: Millis,
        then: Box<Command>,
    },
    /// Remove what no instance of any site uses.
    Unused(Use),
}

/// What a removal must find unused on every site first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Use {
    /// A project: no instance of it anywhere.
    Project(String),
    /// An image (`project/name`): no instance of any project runs it.
    Image { project: String, name: String },
}

impl Use {
    fn by(&self, inst: &Instance) -> bool {
        match self {
            Use::Project(p) => &inst.project == p,
            Use::Image { project, name } => inst.image == format!("{project}/{name}"),
        }
    }
}

/// Refuses a removal while an instance uses it, or while a site whose
/// instances are not current here is out of reach (it may have started one
/// since). A part is current when it is the serving site's own, or read from
/// the site itself or a replica synced with it now.
pub fn check_unused(
    what: &Use,
    parts: &BTreeMap<SiteId, (SiteState, Vec<Instance>)>,
) -> Result<(), ApiError> {
    let users: Vec<String> = parts
        .values()
        .flat_map(|(_, insts)| insts.iter().filter(|i| what.by(i)))
        .map(|i| format!("{}/{} on {}", i.project, i.name, i.site))
        .collect();
    let name = match what {
        Use::Project(p) => format!("project {p}"),
        Use::Image { project, name } => format!("image {project}/{name}"),
    };
    if !users.is_empty() {
        let more = if users.len() > 10 { format!(" and {} more", users.len() - 10) } else { String::new() };
        let shown: Vec<&str> = users.iter().take(10).map(String::as_str).collect();
        return Err(ApiError::Conflict(format!(
            "{name} is used by instances {}{more}; delete them first",
            shown.join(", ")
        )));
    }
    let unknown: Vec<String> = parts
        .values()
        .filter(|(state, _)| {
            let current = match &state.source {
                Source::Own => true,
                Source::Replica => state.reachable,
                Source::Asked { by } => by == &state.site,
                Source::Remembered | Source::Unknown => false,
            };
            !current || state.cut
        })
        .map(|(state, _)| state.site.to_string())
        .collect();
    if !unknown.is_empty() {
        return Err(ApiError::Unreachable(format!(
            "cannot tell whether {name} is in use on {}: out of reach; try again when connected",
            unknown.join(", ")
        )));
    }
    Ok(())
}

/// A call waiting for answers.
#[derive(Debug, Clone)]
pub struct Parked {
    pub req: ReqId,
    pub caller: Caller,
    pub site: Option<SiteId>,
    pub purpose: Purpose,
    /// Sites whose part is being asked for, and who was asked.
    pub waiting: BTreeMap<SiteId, SiteId>,
    /// Parts gathered so far.
    pub parts: BTreeMap<SiteId, (SiteState, Vec<Instance>)>,
}

/// Whom to ask for a site's part, and what is known without asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Read it here (own document or a replica).
    Here,
    /// Ask this connected site (the owner, or a custodian).
    Ask(SiteId),
    /// No one to ask: use what was last heard, if anything.
    Remember,
}

/// For one site, where its part comes from: held documents first (they are
/// kept current by sync while the owner is connected, and are the freshest
/// copy in reach when it is not); else its owner when in reach; else a
/// custodian in reach; else memory.
pub fn plan(
    site: &SiteId,
    me: &SiteId,
    held: bool,
    in_reach: &BTreeSet<SiteId>,
    custodians: &[SiteId],
) -> Step {
    if site == me || held {
        Step::Here
    } else if in_reach.contains(site) {
        Step::Ask(site.clone())
    } else if let Some(c) = custodians.iter().find(|c| *c != me && in_reach.contains(*c)) {
        Step::Ask(c.clone())
    } else {
        Step::Remember
    }
}

/// Cuts a site's instance list to what one answer carries.
pub fn bound(mut instances: Vec<Instance>) -> (Vec<Instance>, bool) {
    let mut bytes = 0;
    let mut keep = 0;
    for inst in instances.iter().take(MAX_TOLD) {
        bytes += crate::wire::encode(inst).len();
        if bytes > MAX_TOLD_BYTES {
            break;
        }
        keep += 1;
    }
    let cut = keep < instances.len();
    instances.truncate(keep);
    (instances, cut)
}

/// Calls waiting for the realm-wide view, and what was last heard.
#[derive(Debug, Default)]
pub struct Gather {
    parked: BTreeMap<u64, Parked>,
    next: u64,
    heard: BTreeMap<SiteId, (Millis, Told)>,
}

impl Gather {
    /// Calls waiting, sites whose part is remembered, and their instances.
    pub fn held(&self) -> (usize, usize, usize) {
        let instances = self.heard.values().map(|(_, t)| t.instances.len()).sum();
        (self.parked.len(), self.heard.len(), instances)
    }

    pub fn is_full(&self) -> bool {
        self.parked.len() >= MAX_PARKED
    }

    /// Parks a call; the returned id names its wait and its asks.
    pub fn park(&mut self, call: Parked) -> u64 {
        self.next += 1;
        self.parked.insert(self.next, call);
        self.next
    }

    /// An answer for call `id` about `site`, from `from`; returns the call
    /// when it has every part it waited for. Answers nobody asked for, or
    /// from a site not asked, are dropped; instances not of `site` too.
    pub fn on_told(
        &mut self,
        now: Millis,
        id: u64,
        from: &SiteId,
        site: &SiteId,
        told: Told,
    ) -> Option<Parked> {
        let call = self.parked.get_mut(&id)?;
        if call.waiting.get(site) != Some(from) {
            return None;
        }
        call.waiting.remove(site);
        let mut instances = told.instances;
        instances.retain(|i| &i.site == site);
        instances.truncate(MAX_TOLD);
        let reachable = from == site;
        let as_of = if reachable { Some(now) } else { told.as_of };
        let state = SiteState {
            site: site.clone(),
            reachable,
            as_of,
            source: Source::Asked { by: from.clone() },
            cut: told.cut,
        };
        call.parts.insert(site.clone(), (state, instances.clone()));
        let complete = call.waiting.is_empty();
        self.remember(now, site, Told { instances, as_of, cut: told.cut });
        if complete { self.parked.remove(&id) } else { None }
    }

    /// The site asked for `site`'s part holds nothing of it: the part comes
    /// from memory. Returns the call when it has every part.
    pub fn unknown_to(&mut self, id: u64, from: &SiteId, site: &SiteId) -> Option<Parked> {
        let call = self.parked.get(&id)?;
        if call.waiting.get(site) != Some(from) {
            return None;
        }
        let part = self.remembered(site, false);
        let call = self.parked.get_mut(&id)?;
        call.waiting.remove(site);
        call.parts.insert(site.clone(), part);
        if call.waiting.is_empty() { self.parked.remove(&id) } else { None }
    }

    /// The call whose wait is over, with the parts still missing filled from memory.
    pub fn expire(&mut self, id: u64) -> Option<Parked> {
        let mut call = self.parked.remove(&id)?;
        for site in std::mem::take(&mut call.waiting).into_keys() {
            let part = self.remembered(&site, false);
            call.parts.insert(site, part);
        }
        Some(call)
    }

    /// The part of `site` as last heard here (or nothing known).
    pub fn remembered(&self, site: &SiteId, reachable: bool) -> (SiteState, Vec<Instance>) {
        match self.heard.get(site) {
            Some((_, told)) => (
                SiteState {
                    site: site.clone(),
                    reachable,
                    as_of: told.as_of,
                    source: Source::Remembered,
                    cut: told.cut,
                },
                told.instances.clone(),
            ),
            None => (
                SiteState { site: site.clone(), reachable, as_of: None, source: Source::Unknown, cut: false },
                Vec::new(),
            ),
        }
    }

    fn remember(&mut self, now: Millis, site: &SiteId, told: Told) {
        self.heard.insert(site.clone(), (now, told));
        // Forget the parts heard longest ago beyond either bound (a member
        // answering with full answers for many sites must not grow this).
        let count =
            |h: &BTreeMap<SiteId, (Millis, Told)>| h.values().map(|(_, t)| t.instances.len()).sum::<usize>();
        while self.heard.len() > MAX_HEARD
            || (self.heard.len() > 1 && count(&self.heard) > MAX_HEARD_INSTANCES)
        {
            let Some(oldest) = self.heard.iter().min_by_key(|(_, (at, _))| *at).map(|(s, _)| s.clone())
            else {
                break;
            };
            self.heard.remove(&oldest);
        }
    }
}

impl Peer {
    /// Answers `ListInstances` (`purpose` List) and `Anywhere` (Find) from the
    /// parts known here, asking other sites for the rest.
    pub(crate) fn gather(
        &mut self,
        now: Millis,
        req: ReqId,
        caller: &Caller,
        site: Option<SiteId>,
        purpose: Purpose,
        fx: &mut impl Effects,
    ) -> Outcome {
        let sites: Vec<SiteId> = match &site {
            Some(s) => match self.realm.member(s) {
                Ok(Some(_)) => vec![s.clone()],
                Ok(None) => return Outcome::Now(Err(ApiError::NotFound(format!("no member site {s}")))),
                Err(e) => return Outcome::Now(Err(e.into())),
            },
            None => match self.realm.members() {
                Ok(members) => members.into_iter().map(|m| m.site).collect(),
                Err(e) => return Outcome::Now(Err(e.into())),
            },
        };
        let mut call = Parked {
            req,
            caller: caller.clone(),
            site,
            purpose,
            waiting: BTreeMap::new(),
            parts: BTreeMap::new(),
        };
        let in_reach = self.in_reach_all();
        for s in sites {
            let held = self.others.get(&s).is_some_and(|d| d.doc.has_collection(Instance::COLLECTION));
            let reached = held || self.in_reach(&s);
            let custodians = if reached { Vec::new() } else { self.custodians_of(&s) };
            match plan(&s, &self.site, held, &in_reach, &custodians) {
                Step::Here => {
                    // A look-up reads its one instance, not every one.
                    let only = match &call.purpose {
                        Purpose::Find { project, name, .. } => Some((project.as_str(), name.as_str())),
                        Purpose::List | Purpose::Unused(_) => None,
                    };
                    let part = self.part_here(now, &s, only);
                    call.parts.insert(s, part);
                }
                Step::Ask(by) if !self.gather.is_full() => {
                    call.waiting.insert(s, by);
                }
                Step::Ask(_) | Step::Remember => {
                    let part = self.gather.remembered(&s, self.in_reach(&s));
                    call.parts.insert(s, part);
                }
            }
        }
        if call.waiting.is_empty() {
            return self.finish_gather(now, call, fx);
        }
        let asks: Vec<(SiteId, SiteId)> =
            call.waiting.iter().map(|(s, by)| (s.clone(), by.clone())).collect();
        let id = self.gather.park(call);
        for (site, by) in asks {
            fx.send(&by, PeerMsg::InstancesAsk { id, site });
        }
        fx.schedule(TimerId::GatherWait { id }, WAIT);
        Outcome::Later
    }

    /// A site's part read from the documents held here: its instances, or
    /// only the one named `only` (project, name).
    fn part_here(
        &self,
        now: Millis,
        site: &SiteId,
        only: Option<(&str, &str)>,
    ) -> (SiteState, Vec<Instance>) {
        let me = site == &self.site;
        let doc = if me { Some(&self.own) } else { self.others.get(site) };
        let instances = match only {
            Some((project, name)) => {
                doc.and_then(|d| d.instance(project, name).ok().flatten()).into_iter().collect()
            }
            None => doc.and_then(|d| d.instances().ok()).unwrap_or_default(),
        };
        let reachable = me || self.in_reach(site);
        let as_of = if reachable { Some(now) } else { self.seen.get(site).copied() };
        let source = if me { Source::Own } else { Source::Replica };
        (SiteState { site: site.clone(), reachable, as_of, source, cut: false }, instances)
    }

    /// A member asks for the instances of `site`: ours, or a replica we hold.
    pub(crate) fn on_instances_ask(
        &mut self,
        now: Millis,
        from: &SiteId,
        id: u64,
        site: SiteId,
        fx: &mut impl Effects,
    ) {
        let held = site == self.site || self.others.contains_key(&site);
        let msg = if held {
            let (state, instances) = self.part_here(now, &site, None);
            let (instances, cut) = bound(instances);
            PeerMsg::InstancesTold { id, site, instances: Some(instances), as_of: state.as_of, cut }
        } else {
            PeerMsg::InstancesTold { id, site, instances: None, as_of: None, cut: false }
        };
        fx.send(from, msg);
    }

    pub(crate) fn on_instances_told(
        &mut self,
        now: Millis,
        from: &SiteId,
        id: u64,
        site: &SiteId,
        told: Option<Told>,
        fx: &mut impl Effects,
    ) {
        let done = match told {
            Some(told) => self.gather.on_told(now, id, from, site, told),
            // The one asked holds nothing of it after all: what we remember stands.
            None => self.gather.unknown_to(id, from, site),
        };
        if let Some(call) = done {
            let req = call.req;
            if let Outcome::Now(result) = self.finish_gather(now, call, fx) {
                self.replies.push((req, result));
            }
        }
    }

    pub(crate) fn on_gather_wait(&mut self, now: Millis, id: u64, fx: &mut impl Effects) {
        if let Some(call) = self.gather.expire(id) {
            let req = call.req;
            if let Outcome::Now(result) = self.finish_gather(now, call, fx) {
                self.replies.push((req, result));
            }
        }
    }

    fn finish_gather(&mut self, now: Millis, call: Parked, fx: &mut impl Effects) -> Outcome {
        let Parked { req, caller, purpose, parts, .. } = call;
        let user = &caller.user;
        // A removal looks at every instance, readable by the caller or not.
        if let Purpose::Unused(what) = &purpose {
            let removed = check_unused(what, &parts).and_then(|()| match what {
                Use::Project(project) => self.remove_project(&caller, project),
                Use::Image { project, name } => self.remove_image(&caller, project, name),
            });
            return Outcome::Now(removed);
        }
        let mut instances = Vec::new();
        let mut sites = Vec::new();
        for (_, (state, insts)) in parts {
            for inst in insts {
                // A look-up names its instance: one the caller may not read is
                // refused as such (as on its own site), not reported missing.
                let named = match &purpose {
                    Purpose::Find { project, name, .. } => &inst.project == project && &inst.name == name,
                    Purpose::List | Purpose::Unused(_) => false,
                };
                if named
                    && let Err(e) = auth::require(&self.realm, user, &inst.project, Role::Reader, &inst.site)
                {
                    return Outcome::Now(Err(e));
                }
                match auth::role_of(&self.realm, user, &inst.project, &inst.site) {
                    Ok(Some(_)) => instances.push(inst),
                    Ok(None) => {}
                    Err(e) => return Outcome::Now(Err(e)),
                }
            }
            sites.push(state);
        }
        match purpose {
            Purpose::List | Purpose::Unused(_) => {
                Outcome::Now(Ok(Reply::Instances(InstanceList { instances, sites })))
            }
            Purpose::Find { project, name, wait_ms, then } => {
                let found: Vec<Instance> =
                    instances.into_iter().filter(|i| i.project == project && i.name == name).collect();
                match found.as_slice() {
                    [] => {
                        let unknown: Vec<String> = sites
                            .iter()
                            .filter(|s| matches!(s.source, Source::Unknown) || s.cut)
                            .map(|s| s.site.to_string())
                            .collect();
                        let note = if unknown.is_empty() {
                            String::new()
                        } else {
                            format!(" (nothing is known here of {})", unknown.join(", "))
                        };
                        Outcome::Now(Err(ApiError::NotFound(format!(
                            "no instance {project}/{name} on any site{note}"
                        ))))
                    }
                    [one] if one.site != self.site && matches!(*then, Command::ShowInstance { .. }) => {
                        Outcome::Now(Ok(Reply::Instance(one.clone())))
                    }
                    [one] => {
                        let site = one.site.clone();
                        self.remote(now, req, &caller, site, wait_ms, *then, fx)
                    }
                    several => {
                        let on: Vec<String> = several.iter().map(|i| i.site.to_string()).collect();
                        Outcome::Now(Err(ApiError::Conflict(format!(
                            "instance {project}/{name} exists on {}: name one with --site",
                            on.join(" and ")
                        ))))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atoll_crdt::User;

    fn s(n: &str) -> SiteId {
        SiteId::new(n).unwrap()
    }

    #[test]
    fn plan_prefers_held_then_owner_then_custodian() {
        let me = s("a");
        let connected: BTreeSet<SiteId> = [s("b"), s("c")].into();
        assert_eq!(plan(&me, &me, false, &connected, &[]), Step::Here);
        assert_eq!(plan(&s("d"), &me, true, &connected, &[]), Step::Here);
        assert_eq!(plan(&s("b"), &me, false, &connected, &[s("c")]), Step::Ask(s("b")));
        assert_eq!(plan(&s("d"), &me, false, &connected, &[s("a"), s("e"), s("c")]), Step::Ask(s("c")));
        assert_eq!(plan(&s("d"), &me, false, &connected, &[s("e")]), Step::Remember);
    }

    fn instance(site: &str, name: &str) -> Instance {
        serde_json::from_value(serde_json::json!({
            "name": name, "project": "p", "site": site, "image": "i", "image_digest": "sha256:00",
            "kind": "process", "cpus": 1, "memory_mib": 1, "disk_mib": 0, "restart": "never",
            "args": [], "env": {}, "desired": "running", "observed": "running", "reason": "",
            "observed_at": 0, "handle": null, "restarts": 0, "created_by": "u", "created_at": 0
        }))
        .unwrap()
    }

    fn call(waiting: &[(&str, &str)]) -> Parked {
        Parked {
            req: 1,
            caller: Caller::user(User {
                name: "u".into(),
                password_hash: String::new(),
                realm_admin: false,
                created_at: 0,
                key: None,
                seal: Default::default(),
            }),
            site: None,
            purpose: Purpose::List,
            waiting: waiting.iter().map(|(a, b)| (s(a), s(b))).collect(),
            parts: BTreeMap::new(),
        }
    }

    #[test]
    fn answers_complete_a_call_and_are_remembered() {
        let mut g = Gather::default();
        let id = g.park(call(&[("b", "b"), ("d", "c")]));
        let told = |sites: &[(&str, &str)]| Told {
            instances: sites.iter().map(|(site, n)| instance(site, n)).collect(),
            as_of: Some(5),
            cut: false,
        };
        // Unasked sender, unknown call: dropped.
        assert!(g.on_told(10, id, &s("c"), &s("b"), told(&[("b", "x")])).is_none());
        assert!(g.on_told(10, id + 1, &s("b"), &s("b"), told(&[("b", "x")])).is_none());
        assert!(g.on_told(10, id, &s("b"), &s("b"), told(&[("b", "x"), ("z", "forged")])).is_none());
        let done = g.on_told(11, id, &s("c"), &s("d"), told(&[("d", "y")])).unwrap();
        let (b, bi) = &done.parts[&s("b")];
        assert!(b.reachable && b.as_of == Some(10));
        assert_eq!(bi.len(), 1, "an instance of another site is not b's to tell");
        let (d, _) = &done.parts[&s("d")];
        assert!(!d.reachable && d.as_of == Some(5) && d.source == Source::Asked { by: s("c") });
        // Later, with no one to ask, d's part comes from memory.
        let (state, insts) = g.remembered(&s("d"), false);
        assert_eq!((state.source, insts.len()), (Source::Remembered, 1));
    }

    #[test]
    fn an_expired_call_fills_the_silent_from_memory() {
        let mut g = Gather::default();
        let id = g.park(call(&[("b", "b")]));
        let done = g.expire(id).unwrap();
        assert_eq!(done.parts[&s("b")].0.source, Source::Unknown);
        assert!(g.expire(id).is_none());
    }

    #[test]
    fn memory_of_answers_is_bounded() {
        let mut g = Gather::default();
        let full: Vec<Instance> = (0..MAX_TOLD).map(|i| instance("x", &format!("i{i}"))).collect();
        for k in 0..40u64 {
            let told = Told { instances: full.clone(), as_of: None, cut: false };
            g.remember(k, &s(&format!("site{k}")), told);
        }
        let kept: usize = g.heard.values().map(|(_, t)| t.instances.len()).sum();
        assert!(kept <= MAX_HEARD_INSTANCES, "{kept}");
        assert!(g.heard.contains_key(&s("site39")), "the newest answer is kept");
        assert!(!g.heard.contains_key(&s("site0")), "the oldest went first");
    }

    #[test]
    fn answers_are_bounded() {
        let many: Vec<Instance> = (0..MAX_TOLD + 5).map(|i| instance("a", &format!("i{i}"))).collect();
        let (kept, cut) = bound(many);
        assert!(cut && kept.len() == MAX_TOLD);
        let (kept, cut) = bound(vec![instance("a", "x")]);
        assert!(!cut && kept.len() == 1);
    }
}
