//! How long the atoll takes to bring its deployments back to their counts
//! (docs/benchmarks.md, "Deployments in the simulator"): from a loss of
//! sites that ran replicas until the sites still in reach run every wanted
//! replica again, and from the lost sites' return until each deployment
//! runs exactly its count. A figure, not a check: replicas.rs checks.

use std::collections::{BTreeMap, BTreeSet};

use atoll_crdt::{Desired, Millis, Observed};
use serde::Serialize;

use crate::engine::Site;

/// How often an open measurement looks at the sites.
pub const PROBE_EVERY: Millis = 250;

/// One loss of sites running replicas, and what followed.
#[derive(Debug, Clone, Serialize)]
pub struct Recovery {
    pub lost_at_ms: Millis,
    pub sites_lost: usize,
    /// Copies of the wanted spec running on the lost sites at the loss.
    pub copies_lost: usize,
    /// From the loss until the sites in reach run every wanted replica.
    pub replaced_after_ms: Option<Millis>,
    /// When every lost site was back (alive and in reach).
    pub returned_at_ms: Option<Millis>,
    /// From the return until each deployment runs exactly its count.
    pub converged_after_ms: Option<Millis>,
}

#[derive(Default)]
pub struct Recoveries {
    pub list: Vec<Recovery>,
    /// Sites out of reach now: crashed, or outside the largest group of a
    /// partition.
    out: BTreeSet<usize>,
}

/// Per deployment (`project/name`): its wanted count, and the copies of its
/// wanted spec that run, by site; and how many copies exist in all (not
/// deleted, any spec).
struct Census {
    want: usize,
    running: BTreeMap<usize, usize>,
    existing: usize,
}

fn census(sites: &[Site]) -> BTreeMap<String, Census> {
    let mut out = BTreeMap::new();
    for (key, want, digest) in crate::replicas::wanted(sites) {
        out.insert(key.clone(), (digest, Census { want, running: BTreeMap::new(), existing: 0 }));
    }
    for (i, s) in sites.iter().enumerate() {
        let Some(p) = &s.peer else { continue };
        for inst in p.own().instances().unwrap_or_default() {
            let Some(tag) = &inst.replica else { continue };
            let Some((digest, c)) = out.get_mut(&format!("{}/{}", inst.project, tag.deployment)) else {
                continue;
            };
            if inst.desired == Desired::Deleted {
                continue;
            }
            c.existing += 1;
            if tag.spec == *digest && inst.observed == Observed::Running {
                *c.running.entry(i).or_default() += 1;
            }
        }
    }
    out.into_iter().map(|(k, (_, c))| (k, c)).collect()
}

impl Recoveries {
    /// The sites out of reach are now `out` (called before a crash takes
    /// the site's state away, so that its copies still count as lost).
    pub fn reach_changed(&mut self, now: Millis, out: BTreeSet<usize>, sites: &[Site]) {
        let newly: BTreeSet<usize> = out.difference(&self.out).copied().collect();
        if out.is_empty()
            && let Some(r) = self.list.last_mut()
            && r.returned_at_ms.is_none()
        {
            r.returned_at_ms = Some(now);
        }
        let measuring = self.list.last().is_some_and(|r| r.returned_at_ms.is_none());
        if !newly.is_empty() && !measuring {
            let lost: usize = census(sites)
                .values()
                .flat_map(|c| c.running.iter())
                .filter(|(site, _)| newly.contains(site))
                .map(|(_, n)| n)
                .sum();
            if lost > 0 {
                self.list.push(Recovery {
                    lost_at_ms: now,
                    sites_lost: newly.len(),
                    copies_lost: lost,
                    replaced_after_ms: None,
                    returned_at_ms: None,
                    converged_after_ms: None,
                });
            }
        }
        self.out = out;
    }

    /// Whether a measurement waits for the sites to reach a count.
    pub fn open(&self) -> bool {
        self.list.last().is_some_and(|r| match r.returned_at_ms {
            None => r.replaced_after_ms.is_none(),
            Some(_) => r.converged_after_ms.is_none(),
        })
    }

    /// Looks at the sites: the counts reached since the loss or the return.
    pub fn probe(&mut self, now: Millis, sites: &[Site]) {
        let Some(r) = self.list.last_mut() else { return };
        let counts = census(sites);
        if r.replaced_after_ms.is_none() && r.returned_at_ms.is_none() {
            let in_reach = |c: &Census| {
                c.running.iter().filter(|(site, _)| !self.out.contains(site)).map(|(_, n)| n).sum::<usize>()
            };
            if counts.values().all(|c| in_reach(c) >= c.want) {
                r.replaced_after_ms = Some(now - r.lost_at_ms);
            }
        }
        if let Some(back) = r.returned_at_ms
            && r.converged_after_ms.is_none()
            && counts.values().all(|c| c.running.values().sum::<usize>() == c.want && c.existing == c.want)
        {
            r.converged_after_ms = Some(now - back);
        }
    }
}
