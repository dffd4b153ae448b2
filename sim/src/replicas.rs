//! What must hold of deployments (docs/architecture.md, "Deployments kept
//! and reconciled"): after the last heal each service runs exactly its
//! wanted count, no copy that survived a heal was restarted by it, and while
//! the atoll is calm one site only places a deployment's replicas.

use std::collections::{BTreeMap, BTreeSet};

use atoll_crdt::{Desired, Intent, Millis};
use atoll_proto::Command;

use crate::engine::Site;

/// How long after a change of the network (a cut, a heal, a crash) every
/// site has noticed it and reconcilers agree again.
pub const CALM_AFTER: Millis = 10_000;

#[derive(Default)]
pub struct Replicas {
    /// Whether any deployment was applied.
    pub any: bool,
    /// Each change of the network: when, and whether every site was then
    /// alive and linked to every other.
    changes: Vec<(Millis, bool)>,
    /// Copies seen at each heal: (site, key) -> (created_at, restarts).
    at_heal: BTreeMap<(usize, String), (Millis, u64)>,
    /// How long losses of replicas took to repair (a figure, not a check).
    pub recovery: crate::recovery::Recoveries,
}

/// The replicas of every deployment on the live sites: (site, key, digest,
/// created_at, restarts), by `project/deployment`.
type Copies = BTreeMap<String, Vec<(usize, String, String, Millis, u64)>>;

fn copies(sites: &[Site]) -> Copies {
    let mut out: Copies = BTreeMap::new();
    for (i, s) in sites.iter().enumerate() {
        let Some(p) = &s.peer else { continue };
        for inst in p.own().instances().unwrap_or_default() {
            if inst.desired == Desired::Deleted {
                continue;
            }
            if let Some(tag) = &inst.replica {
                let key = format!("{}/{}", inst.project, tag.deployment);
                let me = format!("{}/{}", inst.project, inst.name);
                out.entry(key).or_default().push((i, me, tag.spec.clone(), inst.created_at, inst.restarts));
            }
        }
    }
    out
}

/// Every deployment as the realm's record says it (whichever concurrent
/// revision won), from the first live site: `project/name`, the replicas its
/// service `web` wants (0 once deleted) and that service's spec digest.
pub fn wanted(sites: &[Site]) -> Vec<(String, usize, String)> {
    let records =
        sites.iter().find_map(|s| s.peer.as_ref()).map(|p| p.realm().deployments().unwrap_or_default());
    let mut out = Vec::new();
    for r in records.unwrap_or_default() {
        let d = if r.seal.retired { None } else { atoll_proto::deployments::read_spec(&r).ok() };
        let (want, digest) = match d.as_ref().and_then(|d| d.services.get("web")) {
            Some(s) => (s.replicas as usize, s.digest()),
            None => (0, String::new()),
        };
        out.push((format!("{}/{}", r.project, r.name), want, digest));
    }
    out
}

impl Replicas {
    pub fn network_changed(&mut self, now: Millis, whole: bool) {
        self.changes.push((now, whole));
    }

    /// A site crashed: its copies restart with it, which is no heal's doing.
    pub fn crashed(&mut self, site: usize) {
        self.at_heal.retain(|(s, _), _| *s != site);
    }

    /// At a heal: the copies that run now, which the heal must not restart.
    pub fn heal(&mut self, sites: &[Site]) {
        for list in copies(sites).into_values() {
            for (site, key, _, created, restarts) in list {
                self.at_heal.insert((site, key), (created, restarts));
            }
        }
    }

    /// Whether `t` falls in a calm period: the atoll whole (every site alive
    /// and linked) since a change at least [`CALM_AFTER`] before it. Its
    /// period is named by that change.
    fn calm_period(&self, t: Millis) -> Option<Millis> {
        let (at, whole) = self.changes.iter().copied().filter(|(c, _)| *c <= t).max().unwrap_or((0, true));
        (whole && (at == 0 || t.saturating_sub(at) >= CALM_AFTER)).then_some(at)
    }

    /// The checks at the end of a run (every site alive and linked, the
    /// realm converged): each deployment as the realm's record says it,
    /// whichever concurrent revision won.
    pub fn finish(&self, sites: &[Site]) -> Vec<String> {
        let mut out = Vec::new();
        let now = copies(sites);
        for (key, want, digest) in wanted(sites) {
            let project = key.split('/').next().unwrap_or_default();
            let fresh = now.get(&key).map_or(0, |l| l.iter().filter(|c| c.2 == digest).count());
            // Short is right when no site holds a spare right of the
            // project for one more (the escrow may keep some out of use).
            let spare: i64 = sites
                .iter()
                .filter_map(|s| s.peer.as_ref()?.summary().ok())
                .flat_map(|v| v.spare)
                .filter(|(p, _)| p == project)
                .map(|(_, res)| res.instances)
                .sum();
            let exhausted = spare < 1;
            if fresh > want || (fresh < want && !exhausted) {
                out.push(format!(
                    "deployment {key}: {fresh} replicas run after the last heal, {want} wanted"
                ));
            }
            let extra = now.get(&key).map_or(0, |l| l.len()) - fresh;
            if extra > 0 {
                out.push(format!("deployment {key}: {extra} replicas of an older spec still run"));
            }
            let mut per_site = BTreeSet::new();
            for (site, inst, ..) in now.get(&key).into_iter().flatten() {
                if !per_site.insert((*site, inst.clone())) {
                    out.push(format!("deployment {key}: {inst} runs twice on s{site}"));
                }
            }
        }
        for list in now.values() {
            for (site, key, _, created, restarts) in list {
                // The same copy (a copy of that name made later is another).
                if let Some((c, r)) = self.at_heal.get(&(*site, key.clone()))
                    && c == created
                    && r != restarts
                {
                    out.push(format!(
                        "{key} on s{site} survived a heal but was restarted ({r} then {restarts} restarts)"
                    ));
                }
            }
        }
        // While calm, one requester per deployment.
        let mut requesters: BTreeMap<(String, Millis), BTreeSet<usize>> = BTreeMap::new();
        for (i, s) in sites.iter().enumerate() {
            let Some(p) = &s.peer else { continue };
            if p.own().doc.count::<Intent>() == 0 {
                continue;
            }
            for intent in p.own().doc.list::<Intent>().unwrap_or_default() {
                let Ok(Command::PlaceReplica { project, deployment, .. }) =
                    serde_json::from_str(&intent.command)
                else {
                    continue;
                };
                if let Some(period) = self.calm_period(intent.created_at) {
                    requesters.entry((format!("{project}/{deployment}"), period)).or_default().insert(i);
                }
            }
        }
        for ((key, period), who) in requesters {
            if who.len() > 1 {
                out.push(format!(
                    "deployment {key}: placed by {} sites at once while the atoll was calm (since {period} ms): {who:?}",
                    who.len()
                ));
            }
        }
        out
    }
}
