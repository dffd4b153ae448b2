//! What must hold after (and during) every run.

use std::collections::{BTreeMap, BTreeSet};

use atoll_crdt::{IntentOutcome, IntentState, Millis, Resources, SiteId};
use atoll_proto::DocId;
use serde::Serialize;

use crate::engine::Site;
use crate::scenario::{ProjectSpec, Scenario};

#[derive(Debug, Clone, Serialize)]
pub struct Convergence {
    pub heal_at_ms: Millis,
    /// Simulated time from the heal until every live site held the same realm.
    pub converged_after_ms: Option<Millis>,
}

#[derive(Default)]
pub struct Checks {
    pub violations: Vec<(Millis, String)>,
    /// Instance creations acknowledged to the caller: (site, key).
    pub acked: Vec<(usize, String)>,
    pub convergence: Vec<Convergence>,
    /// Intents sent: (requester, target, id).
    pub intents: Vec<(SiteId, SiteId, String)>,
    /// Intents the targets applied, and those they refused.
    pub intents_done: usize,
    pub intents_failed: usize,
    pub converged: Option<bool>,
    /// Instances that ended `failed` because their image could not be
    /// fetched (goal 0: they wait for a holder instead).
    pub failed_fetching: usize,
    /// Last known consumption of every site (crashed sites keep consuming).
    consumed: BTreeMap<(usize, String), Resources>,
    /// Every grant seen so far (write-once; a crashed site's stay in force).
    /// Each site's latest known share of each project: (steps, total).
    grants: BTreeMap<(String, SiteId), (u64, Resources)>,
}

impl Checks {
    pub fn violation(&mut self, now: Millis, what: String) {
        if self.violations.len() < 100 {
            self.violations.push((now, what));
        }
    }

    /// Whether a heal has not been followed by convergence yet.
    pub fn awaiting_convergence(&self) -> bool {
        self.convergence.iter().any(|c| c.converged_after_ms.is_none())
    }

    pub fn heal_at(&mut self, now: Millis) {
        self.convergence.push(Convergence { heal_at_ms: now, converged_after_ms: None });
    }

    /// The share of live sites whose every replica is up to date: the realm as
    /// most sites hold it, each site document as its owner holds it.
    pub fn probe(&mut self, now: Millis, sites: &mut [Site]) -> (Millis, f64) {
        let mut realms: BTreeMap<[u8; 32], usize> = BTreeMap::new();
        let mut owners: BTreeMap<DocId, [u8; 32]> = BTreeMap::new();
        let mut held = Vec::new();
        for s in sites.iter_mut() {
            let id = DocId::Site(s.id.clone());
            if let Some(p) = s.peer.as_mut() {
                let docs = p.digests();
                for (doc, d) in &docs {
                    if doc == &DocId::Realm {
                        *realms.entry(*d).or_default() += 1;
                    } else if doc == &id {
                        owners.insert(doc.clone(), *d);
                    }
                }
                held.push(docs);
            }
        }
        let realm = realms.iter().max_by_key(|(_, n)| **n).map(|(d, _)| *d);
        let alive = held.len();
        let agree = held
            .iter()
            .filter(|docs| {
                docs.iter().all(|(doc, d)| match doc {
                    DocId::Realm => Some(*d) == realm,
                    other => owners.get(other).is_none_or(|o| o == d),
                })
            })
            .count();
        let share = if alive == 0 { 0.0 } else { agree as f64 / alive as f64 };
        if agree == alive {
            for c in self.convergence.iter_mut().filter(|c| c.converged_after_ms.is_none()) {
                c.converged_after_ms = Some(now.saturating_sub(c.heal_at_ms));
            }
        }
        (now, share)
    }

    /// Whether every live site holds every document in the same state.
    pub fn all_equal(&self, sites: &mut [Site]) -> bool {
        let mut by_doc: BTreeMap<DocId, BTreeSet<[u8; 32]>> = BTreeMap::new();
        let mut alive = 0;
        for s in sites.iter_mut() {
            if let Some(p) = s.peer.as_mut() {
                alive += 1;
                for (id, d) in p.digests() {
                    by_doc.entry(id).or_default().insert(d);
                }
            }
        }
        alive == 0 || by_doc.values().all(|ds| ds.len() == 1)
    }

    /// No project's consumption, summed over all sites, exceeds its total.
    pub fn quota(&mut self, now: Millis, sites: &[Site], projects: &[ProjectSpec]) {
        for p in projects {
            for (i, s) in sites.iter().enumerate() {
                let Some(peer) = &s.peer else { continue };
                for g in peer.realm().grants(&p.name).unwrap_or_default() {
                    // The latest share of each site (the one summing most steps) is the truth.
                    let known =
                        self.grants.entry((p.name.clone(), g.site.clone())).or_insert((0, Resources::ZERO));
                    if g.steps > known.0 {
                        *known = (g.steps, g.total);
                    }
                }
                let c = peer.own().consumed(&p.name).unwrap_or_default();
                self.consumed.insert((i, p.name.clone()), c);
            }
            let total = Resources::checked_sum(
                self.grants.iter().filter(|((proj, _), _)| proj == &p.name).map(|(_, (_, total))| *total),
            );
            let used = Resources::checked_sum(
                self.consumed.iter().filter(|((_, proj), _)| proj == &p.name).map(|(_, c)| *c),
            );
            let (Some(total), Some(used)) = (total, used) else {
                self.violation(now, format!("project {}: quota figures overflow", p.name));
                continue;
            };
            if !total.covers(used) {
                self.violation(now, format!("project {} overspent: {used} used of {total}", p.name));
            }
        }
    }

    /// Every intent applied once (its outcome recorded by the target, done or
    /// failed, and never left half-applied) once the network is whole.
    fn intents_settled(&mut self, now: Millis, sites: &[Site]) {
        let intents = std::mem::take(&mut self.intents);
        for (requester, target, id) in &intents {
            let Some(t) = sites.iter().find(|s| &s.id == target).and_then(|s| s.peer.as_ref()) else {
                continue;
            };
            let outcome = t.own().doc.get::<IntentOutcome>(id).ok().flatten();
            match outcome.map(|o| o.state) {
                Some(IntentState::Done) => self.intents_done += 1,
                Some(IntentState::Failed) => self.intents_failed += 1,
                Some(state) => {
                    self.violation(now, format!("intent {id} from {requester} left {state:?} on {target}"))
                }
                None => self.violation(now, format!("intent {id} from {requester} never reached {target}")),
            }
        }
        self.intents = intents;
    }

    /// End of run: documents equal everywhere, acknowledged creations present.
    pub fn finish(&mut self, now: Millis, sites: &mut [Site], sc: &Scenario) {
        self.quota(now, sites, &sc.projects);
        let mut by_doc: BTreeMap<DocId, BTreeSet<[u8; 32]>> = BTreeMap::new();
        for s in sites.iter_mut() {
            if let Some(p) = s.peer.as_mut() {
                for (id, d) in p.digests() {
                    by_doc.entry(id).or_default().insert(d);
                }
            }
        }
        let differing: Vec<String> = by_doc
            .iter()
            .filter(|(_, ds)| ds.len() > 1)
            .map(|(id, ds)| format!("{id} ({} versions)", ds.len()))
            .collect();
        self.converged = Some(differing.is_empty());
        if sc.expect.converged.unwrap_or(true) && !differing.is_empty() {
            let shown: Vec<&str> = differing.iter().take(5).map(String::as_str).collect();
            self.violation(
                now,
                format!("not converged: {} document(s) differ: {}", differing.len(), shown.join(", ")),
            );
        }
        self.intents_settled(now, sites);
        self.failed_fetching = 0;
        for s in sites.iter() {
            let Some(peer) = &s.peer else { continue };
            for i in peer.own().instances().unwrap_or_default() {
                if i.observed == atoll_crdt::Observed::Failed && i.reason.contains("fetching image") {
                    self.failed_fetching += 1;
                    let what = format!("instance {}/{} on {} failed: {}", i.project, i.name, s.id, i.reason);
                    self.violation(now, what);
                }
            }
        }
        let acked = std::mem::take(&mut self.acked);
        for (site, key) in &acked {
            let Some(peer) = &sites[*site].peer else { continue };
            let (project, name) = key.split_once('/').unwrap_or(("", key));
            if !matches!(peer.own().instance(project, name), Ok(Some(_))) {
                self.violation(now, format!("acknowledged instance {key} is gone from s{site}"));
            }
        }
        self.acked = acked;
    }
}
