//! Reconciliation (docs/architecture.md, "Deployments and placement"): what
//! one deployment needs done, as a pure function of what the reconciling
//! site knows of its copies, its pending placements and the sites.
//!
//! Per service, copies count while their site is reachable, or unreachable
//! for less than the service's `lost_after`. Counted copies made from an
//! older spec are stopped (their places are filled again from the current
//! one); missing replicas are placed by [`crate::placement::plan`]; extras
//! (after a heal, or a scale down) are stopped in the order `on_heal` gives,
//! only where their site is reachable. Nothing is ever restarted: a kept copy
//! is left alone. Which site reconciles is [`reconcilers`].

use std::collections::{BTreeMap, BTreeSet};

use atoll_crdt::{Kind, Millis, SiteId};
use sha2::{Digest, Sha256};

use crate::api::SiteRow;
use crate::deployment::{Deployment, OnHeal};
use crate::placement::{self, Replicas};

/// Sites that may reconcile one deployment, in order: the first that the
/// others ranked above it cannot reach acts.
pub const RECONCILERS: usize = 3;
/// Most actions one round asks for (the rest wait for the next round).
pub const MAX_ACTIONS: usize = 64;
/// Highest replica number (names are `<deployment>.<service>.<n>`).
pub const MAX_ORDINAL: u32 = 9_999;

/// Where one copy of a service runs, as the reconciling site knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    pub site: SiteId,
    pub name: String,
    /// The service digest it was made from ([`crate::deployment::Service::digest`]).
    pub spec: String,
    pub created_at: Millis,
    /// Since when it runs without a restart (None: not running).
    pub running_since: Option<Millis>,
    /// None: its site is reachable (or is us); Some: unreachable since then.
    pub away_since: Option<Millis>,
    /// A placement asked for and not yet answered: not stopped, counted.
    pub pending: bool,
    /// Being deleted: neither counted nor stopped, but its name is taken.
    pub deleting: bool,
}

/// What the reconciling site knows of one deployment.
pub struct View<'a> {
    /// The desired state; None once the deployment is deleted (every copy goes).
    pub deployment: Option<&'a Deployment>,
    pub kinds: &'a BTreeMap<String, Kind>,
    pub sites: &'a [SiteRow],
    /// Copies by service (services of the deployment or not).
    pub copies: &'a BTreeMap<String, Vec<Copy>>,
    /// Sites that refused a placement of this deployment lately: given
    /// nothing this round.
    pub refused: &'a BTreeSet<SiteId>,
    /// The project's quota rights spare in reach (None: not bounded):
    /// replicas beyond them are short rather than asked for and refused.
    pub rights: Option<atoll_crdt::Resources>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Place { service: String, site: SiteId, name: String },
    Stop { service: String, site: SiteId, name: String, why: Why },
}

/// What one round asks for, and why replicas are still missing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    pub actions: Vec<Action>,
    /// Per service short of replicas: why (from the plan).
    pub short: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The deployment was deleted, or no longer has the service.
    Gone,
    /// Made from an older spec of the service.
    Outdated,
    /// More copies than the service wants.
    Extra,
}

/// The sites that may reconcile deployment `key`, best first: a ranking by
/// a hash of the key and each member's name (rendezvous hashing), so every
/// site computes the same list and a membership change moves few
/// deployments.
pub fn reconcilers(key: &str, members: &[SiteId]) -> Vec<SiteId> {
    let mut ranked: Vec<([u8; 32], &SiteId)> = members
        .iter()
        .map(|s| {
            let h = Sha256::digest([key.as_bytes(), b"\0", s.as_str().as_bytes()].concat());
            (h.into(), s)
        })
        .collect();
    ranked.sort();
    ranked.into_iter().take(RECONCILERS).map(|(_, s)| s.clone()).collect()
}

/// Whether `me` reconciles: it is a reconciler and every one ranked above it
/// is unreachable from here.
pub fn acts(ranked: &[SiteId], me: &SiteId, reachable: impl Fn(&SiteId) -> bool) -> bool {
    for s in ranked {
        if s == me {
            return true;
        }
        if reachable(s) {
            return false;
        }
    }
    false
}

/// Whether a copy still counts at `now`: its site is reachable, or has been
/// unreachable for less than `lost_after` (None: it always counts).
fn counts(c: &Copy, lost_after: Option<Millis>, now: Millis) -> bool {
    if c.deleting {
        return false;
    }
    match (c.away_since, lost_after) {
        (None, _) | (Some(_), None) => true,
        (Some(since), Some(after)) => now.saturating_sub(since) < after,
    }
}

/// Whether a copy can be told to stop now: its site is reachable and it
/// exists there.
fn stoppable(c: &Copy) -> bool {
    c.away_since.is_none() && !c.pending && !c.deleting
}

/// What deployment `name` needs done now.
pub fn reconcile(name: &str, view: &View<'_>, now: Millis) -> Round {
    let mut actions = Vec::new();
    let stop = |c: &Copy, service: &str, why| Action::Stop {
        service: service.to_owned(),
        site: c.site.clone(),
        name: c.name.clone(),
        why,
    };
    let Some(d) = view.deployment else {
        for (service, copies) in view.copies {
            actions.extend(copies.iter().filter(|c| stoppable(c)).map(|c| stop(c, service, Why::Gone)));
        }
        actions.truncate(MAX_ACTIONS);
        return Round { actions, short: Vec::new() };
    };
    // The copies each service keeps counting, by site: what placement adds to.
    let mut running = Replicas::new();
    let mut want = d.clone();
    for (service, copies) in view.copies {
        let Some(s) = d.services.get(service) else {
            actions.extend(copies.iter().filter(|c| stoppable(c)).map(|c| stop(c, service, Why::Gone)));
            continue;
        };
        let digest = s.digest();
        let lost_after = s.lost_after_ms().unwrap_or(None);
        let mut fresh: Vec<&Copy> = Vec::new();
        for c in copies.iter().filter(|c| counts(c, lost_after, now)) {
            if c.spec == digest || c.pending {
                fresh.push(c);
            } else if c.away_since.is_none() {
                actions.push(stop(c, service, Why::Outdated));
            }
        }
        let extra = fresh.len().saturating_sub(s.replicas as usize);
        if extra > 0 {
            let mut kept: Vec<&Copy> = fresh.iter().copied().filter(|c| stoppable(c)).collect();
            keep_order(&mut kept, s.on_heal);
            let cut = kept.len().saturating_sub(extra);
            for c in &kept[cut..] {
                actions.push(stop(c, service, Why::Extra));
            }
            let stopped: BTreeSet<&str> = kept[cut..].iter().map(|c| c.name.as_str()).collect();
            fresh.retain(|c| !(stopped.contains(c.name.as_str()) && stoppable(c)));
        }
        for c in &fresh {
            *running.entry(c.site.clone()).or_default().entry(service.clone()).or_default() += 1;
        }
        if let Some(w) = want.services.get_mut(service) {
            // Never below what runs: `plan` only adds.
            w.replicas = w.replicas.max(fresh.len() as u32);
        }
    }
    // Sites that refused lately, or cannot be reached, take nothing this round.
    let rows: Vec<SiteRow> =
        view.sites.iter().filter(|r| !view.refused.contains(&r.member.site)).cloned().collect();
    let plans = match placement::plan(&want, view.kinds, &rows, &running, view.rights) {
        Ok(p) => p,
        Err(e) => {
            actions.truncate(MAX_ACTIONS);
            return Round { actions, short: vec![format!("cannot plan: {e}")] };
        }
    };
    let mut short = Vec::new();
    for p in plans {
        if p.short > 0 {
            let why = p.why_short.as_deref().unwrap_or("no site");
            short.push(format!("service {}: {} replicas short: {why}", p.service, p.short));
        }
        let mut used: BTreeSet<u32> = view
            .copies
            .get(&p.service)
            .into_iter()
            .flatten()
            .filter_map(|c| c.name.rsplit_once('.').and_then(|(_, n)| n.parse().ok()))
            .collect();
        for site in p.chosen {
            let Some(n) = (0..=MAX_ORDINAL).find(|n| !used.contains(n)) else { break };
            used.insert(n);
            actions.push(Action::Place {
                name: format!("{name}.{}.{n}", p.service),
                service: p.service.clone(),
                site,
            });
        }
    }
    actions.truncate(MAX_ACTIONS);
    Round { actions, short }
}

/// Orders copies most worth keeping first, as `policy` says; ties by site
/// and name, so every reconciler stops the same ones.
fn keep_order(copies: &mut [&Copy], policy: OnHeal) {
    copies.sort_by(|a, b| {
        let by = match policy {
            OnHeal::KeepOriginal => a.created_at.cmp(&b.created_at),
            OnHeal::KeepReplacement => b.created_at.cmp(&a.created_at),
            OnHeal::LongestRunning => {
                let since = |c: &Copy| c.running_since.unwrap_or(Millis::MAX);
                since(a).cmp(&since(b))
            }
        };
        by.then_with(|| (&a.site, &a.name).cmp(&(&b.site, &b.name)))
    });
}
