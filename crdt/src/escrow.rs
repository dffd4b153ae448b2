//! Quota escrow (docs/architecture.md, "Quota escrow"): a project's global total is split into rights
//! held by sites, and a site admits work only against rights it holds.
//!
//! A site's rights for a project are
//! `granted` (grants in the realm naming it) + `received` (transfers to it, read
//! from the givers' documents) - `given` (transfers it wrote) - `consumed` (its
//! instances). Only the site itself writes its grants, its transfers and its
//! instances, and it checks [`Account::admit`] before each; the other term only
//! grows as it learns more. Hence in any merged state the sum of consumption is at
//! most the sum of grants, whatever the order in which sites met.

use std::collections::BTreeMap;

use crate::doc::DocError;
use crate::entity::{Resources, SiteId};
use crate::realm::Realm;
use crate::site::SiteDoc;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EscrowError {
    #[error(
        "local quota share exhausted for project {project}: requested {requested}, \
         this site holds {available}"
    )]
    Exhausted { project: String, requested: Resources, available: Resources },
    #[error("quota values must not be negative (got {0})")]
    Negative(Resources),
    #[error("quota values must lie within ±{limit} (got {0})", limit = Resources::LIMIT)]
    OutOfRange(Resources),
    #[error("quota arithmetic for project {0} overflows: the documents hold impossible figures")]
    Overflow(String),
}

/// One site's rights for one project.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct Account {
    pub granted: Resources,
    pub received: Resources,
    pub given: Resources,
    pub consumed: Resources,
}

impl Account {
    /// Reads the account of `own.site` for `project` from a site's local view.
    /// `others` are the replicas it holds of other sites' documents.
    pub fn read<'a>(
        realm: &Realm,
        own: &'a SiteDoc,
        others: impl IntoIterator<Item = &'a SiteDoc>,
        project: &str,
    ) -> Result<Account, DocError> {
        let granted = realm.granted(project, &own.site)?;
        let docs = std::iter::once(own).chain(others.into_iter().filter(|d| d.site != own.site));
        let Flow { received, given } = flows(realm, docs, project, &own.site)?;
        // The own document's figures must add up (an error otherwise, as before).
        own.given(project)?;
        Ok(Account { granted, received, given, consumed: own.consumed(project)? })
    }

    /// The rights held free: None when the figures overflow (only a document
    /// with impossible figures does that; such an account admits nothing).
    pub fn checked_available(&self) -> Option<Resources> {
        self.granted.checked_plus(self.received)?.checked_minus(self.given)?.checked_minus(self.consumed)
    }

    /// The rights held free, for display ([`Account::admit`] decides).
    pub fn available(&self) -> Resources {
        self.checked_available().unwrap_or(Resources::ZERO)
    }

    /// Whether `request` fits the rights held here (admission, or giving rights away).
    pub fn admit(&self, project: &str, request: Resources) -> Result<(), EscrowError> {
        let available = self.checked_available().ok_or_else(|| EscrowError::Overflow(project.to_owned()))?;
        if !request.is_non_negative() {
            return Err(EscrowError::Negative(request));
        }
        if available.covers(request) {
            Ok(())
        } else {
            Err(EscrowError::Exhausted { project: project.to_owned(), requested: request, available })
        }
    }
}

/// What one site received and gave of a project's rights, as the documents
/// held here back them ([`flows`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flow {
    pub received: Resources,
    pub given: Resources,
}

/// The rights `site` received and gave for `project`, counted only as far
/// as each giver held them, from `docs` (the documents held here, each
/// owner's once).
///
/// A member may write into its own document transfers of rights it never
/// held; counted as written, they would let its recipients admit beyond the
/// project's total. So, for each resource: rights that went round a cycle of
/// transfers cancel out (each site's received minus given is unchanged), and
/// then, from the first givers down, a giver whose transfers and instances
/// exceed its grant plus what it received is short by the difference, and
/// each of its transfers counts that much less. Every giver then passes on
/// at most what it holds, so consumption stays within the grants whatever a
/// thief writes (docs/architecture.md, "Quota escrow"). A giver whose
/// figures overflow backs nothing; only `site`'s own overflowing figures are
/// an error, as before.
pub fn flows<'a>(
    realm: &Realm,
    docs: impl IntoIterator<Item = &'a SiteDoc>,
    project: &str,
    site: &SiteId,
) -> Result<Flow, DocError> {
    let mut sites: BTreeMap<SiteId, usize> = BTreeMap::from([(site.clone(), 0)]);
    // Per site: grant minus instances (what it holds before any transfer).
    let mut base: Vec<Resources> = vec![Resources::ZERO];
    let mut edges: Vec<(usize, usize, Resources)> = Vec::new();
    let mut index = |s: &SiteId, base: &mut Vec<Resources>| {
        let next = sites.len();
        *sites.entry(s.clone()).or_insert_with(|| {
            base.push(Resources::ZERO);
            next
        })
    };
    for doc in docs {
        // A negative figure would hide rights given elsewhere: counted as none.
        let out: Vec<(SiteId, Resources)> = doc
            .transfers(project)?
            .into_iter()
            .filter(|(r, _)| r != &doc.site)
            .map(|(r, total)| (r, total.floor_zero()))
            .filter(|(_, total)| *total != Resources::ZERO)
            .collect();
        let own = doc.consumed(project).ok().and_then(|c| {
            Resources::checked_sum(out.iter().map(|(_, r)| *r))?;
            realm.granted(project, &doc.site).ok()?.checked_minus(c.floor_zero())
        });
        let Some(own) = own else {
            if &doc.site == site {
                return Err(DocError::Overflow(format!("the rights of {site} for project {project}")));
            }
            // Impossible figures for an honest giver: it backs nothing.
            continue;
        };
        let from = index(&doc.site, &mut base);
        base[from] = own;
        for (r, total) in out {
            let to = index(&r, &mut base);
            edges.push((from, to, total));
        }
    }
    let mut flow = [[0i64; 2]; 3];
    for (k, f) in flow.iter_mut().enumerate() {
        let pick = |r: &Resources| [r.instances, r.cpus, r.memory_mib][k];
        let mut amounts: Vec<i64> = edges.iter().map(|(_, _, r)| pick(r)).collect();
        let base: Vec<i64> = base.iter().map(pick).collect();
        let received = settle(&base, &edges, &mut amounts);
        f[0] = received[0];
        f[1] = edges.iter().zip(&amounts).filter(|((from, _, _), _)| *from == 0).map(|(_, a)| *a).sum();
    }
    let pick = |i: usize| Resources::new(flow[0][i], flow[1][i], flow[2][i]);
    Ok(Flow { received: pick(0), given: pick(1) })
}

/// Cycles of transfers taken out at most per resource; past that, the rest
/// count from nothing up (which only under-counts).
const MAX_CANCELLED: usize = 64;

/// What each site received, once rights that went round a cycle of
/// transfers are taken out where that is safe.
///
/// A cycle is taken out (each of its transfers lowered by the smallest)
/// only if afterwards every site on it still holds all it passes on: an
/// honest round trip nets out, while a giver that passed rights on and also
/// sent them back (a thief) keeps its transfers charged. What stays cyclic
/// is counted from nothing up, which never credits rights no one held.
fn settle(base: &[i64], edges: &[(usize, usize, Resources)], amounts: &mut [i64]) -> Vec<i64> {
    let mut blocked = vec![false; edges.len()];
    for _ in 0..MAX_CANCELLED.min(edges.len()) {
        let Some(cycle) = find_cycle(base.len(), edges, amounts, &blocked) else { break };
        let Some(&least) = cycle.iter().min_by_key(|&&e| amounts[e]) else { break };
        let by = amounts[least];
        for &e in &cycle {
            amounts[e] -= by;
        }
        let received = backed(base, edges, amounts);
        let out = out_sums(base.len(), edges, amounts);
        let whole = cycle.iter().all(|&e| {
            let n = edges[e].0;
            base[n].saturating_add(received[n]) >= out[n]
        });
        if !whole {
            for &e in &cycle {
                amounts[e] += by;
            }
            blocked[least] = true;
        }
    }
    backed(base, edges, amounts)
}

/// The edges of one cycle of positive, unblocked amounts, if there is one.
fn find_cycle(
    nodes: usize,
    edges: &[(usize, usize, Resources)],
    amounts: &[i64],
    blocked: &[bool],
) -> Option<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); nodes];
    for (e, (from, _, _)) in edges.iter().enumerate() {
        if amounts[e] > 0 && !blocked[e] {
            out[*from].push(e);
        }
    }
    // 0: not seen, 1: on the current path, 2: done.
    let mut state = vec![0u8; nodes];
    for start in 0..nodes {
        if state[start] != 0 {
            continue;
        }
        // The path as (node, next edge to try) and the edge taken into each.
        let mut path: Vec<(usize, usize)> = vec![(start, 0)];
        let mut taken: Vec<usize> = Vec::new();
        state[start] = 1;
        while let Some((node, next)) = path.last_mut() {
            let node = *node;
            if let Some(&e) = out[node].get(*next) {
                *next += 1;
                let to = edges[e].1;
                match state[to] {
                    0 => {
                        state[to] = 1;
                        path.push((to, 0));
                        taken.push(e);
                    }
                    1 => {
                        let at = path.iter().position(|(n, _)| *n == to).unwrap_or(0);
                        let mut cycle = taken[at..].to_vec();
                        cycle.push(e);
                        return Some(cycle);
                    }
                    _ => {}
                }
            } else {
                state[node] = 2;
                path.pop();
                taken.pop();
            }
        }
    }
    None
}

fn out_sums(nodes: usize, edges: &[(usize, usize, Resources)], amounts: &[i64]) -> Vec<i64> {
    let mut out = vec![0i64; nodes];
    for ((from, _, _), a) in edges.iter().zip(amounts) {
        out[*from] = out[*from].saturating_add((*a).max(0));
    }
    out
}

/// What each site received: each giver passes on its transfers less what it
/// is short of, counted from nothing received up to the least fixpoint (one
/// round per hop of the longest chain; a cycle still there stops at the
/// bound, short, never over).
fn backed(base: &[i64], edges: &[(usize, usize, Resources)], amounts: &[i64]) -> Vec<i64> {
    let nodes = base.len();
    let out = out_sums(nodes, edges, amounts);
    let mut received = vec![0i64; nodes];
    for _ in 0..=nodes {
        let mut next = vec![0i64; nodes];
        for ((from, to, _), a) in edges.iter().zip(amounts) {
            // Saturating: a figure this large is short of everything anyway.
            let short = out[*from].saturating_sub(base[*from].saturating_add(received[*from])).max(0);
            next[*to] = next[*to].saturating_add(a.saturating_sub(short).max(0));
        }
        if next == received {
            break;
        }
        received = next;
    }
    received
}

/// The grant a site writes to move a project's total from `total` to `new_total`.
/// Raising is always allowed; lowering takes only rights this site holds free.
pub fn quota_change(
    project: &str,
    total: Resources,
    new_total: Resources,
    account: &Account,
) -> Result<Resources, EscrowError> {
    if !new_total.is_non_negative() {
        return Err(EscrowError::Negative(new_total));
    }
    if !new_total.within_limit() {
        return Err(EscrowError::OutOfRange(new_total));
    }
    let delta = new_total.checked_minus(total).ok_or_else(|| EscrowError::Overflow(project.to_owned()))?;
    let lowering =
        Resources::new((-delta.instances).max(0), (-delta.cpus).max(0), (-delta.memory_mib).max(0));
    account.admit(project, lowering)?;
    Ok(delta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(granted: Resources, consumed: Resources) -> Account {
        Account { granted, consumed, ..Account::default() }
    }

    #[test]
    fn admits_within_rights_only() {
        let a = account(Resources::new(2, 4, 1024), Resources::new(1, 1, 512));
        assert!(a.admit("p", Resources::new(1, 3, 512)).is_ok());
        let err = a.admit("p", Resources::new(1, 4, 1)).unwrap_err();
        assert!(err.to_string().contains("local quota share exhausted"));
    }

    #[test]
    fn lowering_takes_only_free_rights() {
        let a = account(Resources::new(4, 4, 4096), Resources::new(3, 3, 3000));
        let total = Resources::new(4, 4, 4096);
        assert_eq!(
            quota_change("p", total, Resources::new(3, 10, 4096), &a).unwrap(),
            Resources::new(-1, 6, 0)
        );
        assert!(quota_change("p", total, Resources::new(2, 4, 4096), &a).is_err());
        assert!(quota_change("p", total, Resources::new(-1, 4, 4096), &a).is_err());
        assert!(quota_change("p", total, Resources::new(i64::MAX, 4, 4096), &a).is_err());
    }

    fn site(n: &str) -> SiteId {
        SiteId::new(n).unwrap()
    }

    /// A realm where `granted` sites hold these instance rights of project p,
    /// and site documents with these transfers (giver, recipient, instances).
    fn world(granted: &[(&str, i64)], transfers: &[(&str, &str, i64)]) -> (Realm, Vec<SiteDoc>) {
        let mut realm = Realm::create(&site("a"), 0).unwrap();
        for (s, n) in granted {
            let g = realm.moved_grant("p", &site(s), Resources::new(*n, 0, 0), 0).unwrap();
            realm.doc.put(&g).unwrap();
        }
        let mut docs: Vec<SiteDoc> =
            ["a", "b", "c", "d"].iter().map(|s| SiteDoc::create(&site(s), 0).unwrap()).collect();
        for (from, to, n) in transfers {
            let doc = docs.iter_mut().find(|d| d.site.as_str() == *from).unwrap();
            doc.add_transfer("p", &site(to), Resources::new(*n, 0, 0), 0).unwrap();
        }
        (realm, docs)
    }

    fn backed(realm: &Realm, docs: &[SiteDoc], to: &str) -> i64 {
        flows(realm, docs, "p", &site(to)).unwrap().received.instances
    }

    #[test]
    fn rights_pass_along_a_chain_of_givers() {
        let (realm, docs) = world(&[("a", 5)], &[("a", "b", 4), ("b", "c", 3), ("c", "d", 2)]);
        assert_eq!(backed(&realm, &docs, "b"), 4);
        assert_eq!(backed(&realm, &docs, "c"), 3);
        assert_eq!(backed(&realm, &docs, "d"), 2);
        // Without a's document here, b is seen holding nothing to pass on.
        assert_eq!(backed(&realm, &docs[1..], "c"), 0);
    }

    #[test]
    fn a_giver_short_of_rights_backs_only_what_it_held() {
        // a holds 5 and writes 8 to b and 4 to c: short by 7, each counts 7 less.
        let (realm, docs) = world(&[("a", 5)], &[("a", "b", 8), ("a", "c", 4)]);
        assert_eq!(backed(&realm, &docs, "b"), 1);
        assert_eq!(backed(&realm, &docs, "c"), 0);
        // b passing a lie on: its own account is short as well.
        let (realm, docs) = world(&[("a", 2)], &[("a", "b", 10), ("b", "c", 10)]);
        assert_eq!(backed(&realm, &docs, "b"), 2);
        assert_eq!(backed(&realm, &docs, "c"), 2);
    }

    #[test]
    fn rights_going_round_a_cycle_count_once() {
        let (realm, docs) = world(&[("a", 3)], &[("a", "b", 3), ("b", "a", 3), ("a", "c", 3)]);
        assert_eq!(backed(&realm, &docs, "c"), 3);
        // What went to b and came back is netted out on both sides.
        let flow = |s: &str| flows(&realm, &docs, "p", &site(s)).unwrap();
        assert_eq!(flow("b"), Flow::default());
        assert_eq!(flow("a"), Flow { received: Resources::ZERO, given: Resources::new(3, 0, 0) });
        // A longer round trip, then on to d: d gets what a held.
        let (realm, docs) = world(&[("a", 3)], &[("a", "b", 3), ("b", "c", 3), ("c", "a", 3), ("a", "d", 3)]);
        assert_eq!(backed(&realm, &docs, "d"), 3);
        // A cycle with no grant behind it creates nothing.
        let (realm, docs) = world(&[], &[("b", "c", 9), ("c", "b", 9)]);
        assert_eq!(backed(&realm, &docs, "b"), 0);
        assert_eq!(backed(&realm, &docs, "c"), 0);
    }

    #[test]
    fn negative_or_overflowing_transfers_back_nothing() {
        let (realm, mut docs) = world(&[("a", 5)], &[("a", "b", -100), ("a", "c", 105)]);
        assert_eq!(backed(&realm, &docs, "c"), 5, "a negative transfer hides nothing");
        docs[0].add_transfer("p", &site("d"), Resources::new(i64::MAX, 0, 0), 0).unwrap_or(());
        let doc = &mut docs[2];
        doc.add_transfer("p", &site("d"), Resources::new(i64::MAX, 0, 0), 0).unwrap();
        doc.add_transfer("p", &site("b"), Resources::new(i64::MAX, 0, 0), 0).unwrap();
        assert_eq!(backed(&realm, &docs, "d"), 0);
    }

    #[test]
    fn impossible_figures_admit_nothing() {
        let a = Account {
            granted: Resources::new(i64::MAX, 1, 1),
            received: Resources::new(1, 0, 0),
            ..Account::default()
        };
        assert_eq!(a.checked_available(), None);
        assert!(matches!(a.admit("p", Resources::new(1, 0, 0)), Err(EscrowError::Overflow(_))));
        let b = account(Resources::new(2, 2, 2), Resources::ZERO);
        assert!(matches!(b.admit("p", Resources::new(-5, 0, 0)), Err(EscrowError::Negative(_))));
    }
}
