//! Reconciliation as a pure function: what it places and stops for copies
//! lost, returned, outdated and pending, and the laws every round keeps.

use std::collections::{BTreeMap, BTreeSet};

use atoll_crdt::{Kind, SiteId};
use proptest::prelude::*;

use crate::api::SiteRow;
use crate::deployment::{Deployment, OnHeal};
use crate::reconcile::{Action, Copy, View, Why, acts, reconcile, reconcilers};
use crate::tests_placement::site;

fn sid(s: &str) -> SiteId {
    SiteId::new(s).unwrap()
}

fn deployment(replicas: u32, lost_after: &str, on_heal: OnHeal) -> Deployment {
    serde_json::from_value(serde_json::json!({
        "name": "shop", "project": "default",
        "services": { "web": { "image": "hello", "replicas": replicas, "lost_after": lost_after,
                               "on_heal": on_heal } }
    }))
    .unwrap()
}

fn copy(d: &Deployment, site: &str, n: u32, created_at: u64) -> Copy {
    Copy {
        site: sid(site),
        name: format!("shop.web.{n}"),
        spec: d.services["web"].digest(),
        created_at,
        running_since: Some(created_at),
        away_since: None,
        pending: false,
        deleting: false,
    }
}

fn sites(n: usize) -> Vec<SiteRow> {
    (1..=n).map(|i| site(&format!("s{i}"), "eu", 8, &[Kind::Process])).collect()
}

fn round(d: Option<&Deployment>, rows: &[SiteRow], copies: Vec<Copy>, now: u64) -> Vec<Action> {
    let kinds = BTreeMap::from([("web".to_owned(), Kind::Process)]);
    let copies = BTreeMap::from([("web".to_owned(), copies)]);
    let refused = BTreeSet::new();
    let view =
        View { deployment: d, kinds: &kinds, sites: rows, copies: &copies, refused: &refused, rights: None };
    reconcile("shop", &view, now).actions
}

fn placed(actions: &[Action]) -> Vec<(String, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Place { site, name, .. } => Some((site.to_string(), name.clone())),
            _ => None,
        })
        .collect()
}

fn stopped(actions: &[Action]) -> Vec<(String, Why)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Stop { name, why, .. } => Some((name.clone(), *why)),
            _ => None,
        })
        .collect()
}

#[test]
fn reconcilers_are_the_same_everywhere_and_the_first_reachable_acts() {
    let members: Vec<SiteId> = (0..10).map(|i| sid(&format!("s{i}"))).collect();
    let ranked = reconcilers("default/shop", &members);
    assert_eq!(ranked.len(), 3);
    let mut shuffled = members.clone();
    shuffled.reverse();
    assert_eq!(reconcilers("default/shop", &shuffled), ranked, "the order of members does not matter");
    // A member outside the three leaving changes nothing.
    let outside = members.iter().find(|m| !ranked.contains(m)).unwrap();
    let fewer: Vec<SiteId> = members.iter().filter(|m| *m != outside).cloned().collect();
    assert_eq!(reconcilers("default/shop", &fewer), ranked);
    // The first acts while it is reachable; the second only when it is not.
    assert!(acts(&ranked, &ranked[0], |_| true));
    assert!(!acts(&ranked, &ranked[1], |_| true));
    assert!(acts(&ranked, &ranked[1], |s| s != &ranked[0]));
    assert!(!acts(&ranked, outside, |_| false), "a site outside the three never acts");
}

#[test]
fn missing_replicas_are_placed_under_fresh_names() {
    let d = deployment(3, "5m", OnHeal::KeepOriginal);
    let rows = sites(3);
    let a = round(Some(&d), &rows, vec![copy(&d, "s1", 1, 0)], 10);
    let p = placed(&a);
    assert_eq!(p.len(), 2, "{a:?}");
    let names: BTreeSet<&str> = p.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, BTreeSet::from(["shop.web.0", "shop.web.2"]), "names taken are skipped");
    assert!(stopped(&a).is_empty());
}

#[test]
fn a_lost_site_counts_until_lost_after_then_is_replaced() {
    let d = deployment(2, "30s", OnHeal::KeepOriginal);
    let rows = sites(3);
    let mut away = copy(&d, "s2", 1, 0);
    away.away_since = Some(1_000);
    let copies = vec![copy(&d, "s1", 0, 0), away.clone()];
    assert!(round(Some(&d), &rows, copies.clone(), 30_999).is_empty(), "still counted before lost_after");
    let a = round(Some(&d), &rows, copies.clone(), 31_000);
    assert_eq!(placed(&a).len(), 1, "{a:?}");
    assert!(stopped(&a).is_empty(), "nothing on an unreachable site is stopped");
    let never = deployment(2, "never", OnHeal::KeepOriginal);
    let mut kept = away;
    kept.spec = never.services["web"].digest();
    let copies = vec![copy(&never, "s1", 0, 0), kept];
    assert!(round(Some(&never), &rows, copies, u64::MAX / 2).is_empty(), "never: counted for ever");
}

#[test]
fn after_a_heal_the_policy_chooses_which_copies_stay() {
    let rows = sites(3);
    for (policy, gone) in [
        (OnHeal::KeepOriginal, "shop.web.2"),
        (OnHeal::KeepReplacement, "shop.web.0"),
        (OnHeal::LongestRunning, "shop.web.1"),
    ] {
        let d = deployment(2, "30s", policy);
        let original = copy(&d, "s1", 0, 100);
        let mut restarted = copy(&d, "s2", 1, 200);
        restarted.running_since = Some(900);
        let replacement = copy(&d, "s3", 2, 500);
        let a = round(Some(&d), &rows, vec![original, restarted, replacement], 1_000);
        assert_eq!(stopped(&a), [(gone.to_owned(), Why::Extra)], "{policy:?}");
        assert!(placed(&a).is_empty());
    }
}

#[test]
fn outdated_copies_are_replaced_and_a_deleted_deployment_stops_everything() {
    let d = deployment(1, "5m", OnHeal::KeepOriginal);
    let rows = sites(2);
    let mut old = copy(&d, "s1", 0, 0);
    old.spec = "older".into();
    let a = round(Some(&d), &rows, vec![old.clone()], 10);
    assert_eq!(stopped(&a), [("shop.web.0".to_owned(), Why::Outdated)]);
    assert_eq!(placed(&a).len(), 1);
    assert_eq!(placed(&a)[0].1, "shop.web.1", "a replacement never reuses a live name");

    let mut far = copy(&d, "s2", 1, 0);
    far.away_since = Some(0);
    let mut pending = copy(&d, "s1", 2, 0);
    pending.pending = true;
    let a = round(None, &rows, vec![copy(&d, "s1", 0, 0), far, pending], 10);
    assert_eq!(stopped(&a), [("shop.web.0".to_owned(), Why::Gone)], "reachable, existing copies only");
    assert!(placed(&a).is_empty());
}

/// Applies a round's actions to the copies, as sites that obey would.
fn apply(d: &Deployment, copies: &mut Vec<Copy>, actions: &[Action], now: u64) {
    for a in actions {
        match a {
            Action::Place { site, name, .. } => copies.push(Copy {
                site: site.clone(),
                name: name.clone(),
                spec: d.services["web"].digest(),
                created_at: now,
                running_since: Some(now),
                away_since: None,
                pending: false,
                deleting: false,
            }),
            Action::Stop { name, site, .. } => copies.retain(|c| !(c.name == *name && c.site == *site)),
        }
    }
}

proptest! {
    /// From any mix of copies (reachable or not, outdated or not, pending),
    /// a round never stops a copy it cannot reach or a pending one, never
    /// reuses a name, and rounds then reach exactly the wanted count.
    #[test]
    fn rounds_converge_without_touching_what_they_cannot_reach(
        want in 0u32..6,
        state in proptest::collection::vec((0usize..4, any::<bool>(), any::<bool>(), any::<bool>()), 0..10),
        policy in prop_oneof![Just(OnHeal::KeepOriginal), Just(OnHeal::KeepReplacement), Just(OnHeal::LongestRunning)],
    ) {
        let d = deployment(want, "never", policy);
        let rows = sites(4);
        let mut copies: Vec<Copy> = state
            .iter()
            .enumerate()
            .map(|(n, (s, away, outdated, pending))| {
                let mut c = copy(&d, &format!("s{}", s + 1), n as u32, n as u64);
                if *away { c.away_since = Some(0); }
                if *outdated { c.spec = "older".into(); }
                c.pending = *pending && !*away;
                c
            })
            .collect();
        let untouchable: Vec<(SiteId, String)> = copies
            .iter()
            .filter(|c| c.away_since.is_some() || c.pending)
            .map(|c| (c.site.clone(), c.name.clone()))
            .collect();
        for r in 0..4 {
            let a = round(Some(&d), &rows, copies.clone(), 100 + r);
            let names: BTreeSet<&String> = copies.iter().map(|c| &c.name).collect();
            for act in &a {
                match act {
                    Action::Stop { site, name, .. } => {
                        prop_assert!(!untouchable.contains(&(site.clone(), name.clone())), "stopped {name} on {site}");
                    }
                    Action::Place { name, .. } => prop_assert!(!names.contains(name), "name {name} reused"),
                }
            }
            apply(&d, &mut copies, &a, 100 + r);
        }
        let fresh = |c: &Copy| c.spec == d.services["web"].digest() || c.pending;
        let counted = copies.iter().filter(|c| fresh(c)).count();
        let stuck = copies.iter().filter(|c| fresh(c) && (c.away_since.is_some() || c.pending)).count();
        // Exactly the wanted count, unless more than wanted are out of reach.
        prop_assert_eq!(counted, stuck.max(want as usize), "{} wanted, {} out of reach", want, stuck);
    }
}
