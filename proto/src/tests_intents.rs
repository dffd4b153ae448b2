//! Cross-site operations and image fetches between peers of the in-test network.

use atoll_crdt::{IntentState, Observed};

use crate::api::NewInstance;
use crate::tests_sync::Net;
use crate::*;

fn new_instance(name: &str, image: &str) -> NewInstance {
    serde_json::from_value(serde_json::json!({"name": name, "project": "default", "image": image})).unwrap()
}

fn remote(net: &Net, site: usize, wait_ms: u64, then: Command) -> Command {
    Command::Remote { site: net.site(site), wait_ms, then: Box::new(then) }
}

fn instance_on(net: &Net, i: usize, name: &str) -> Option<atoll_crdt::Instance> {
    net.peers[i].own().instance("default", name).unwrap()
}

/// A realm of `n` sites where s1 holds image `img` and the admin is logged in on s0.
fn setup(n: usize) -> (Net, String) {
    setup_with(n, atoll_crdt::Resources::new(2, 2, 1024))
}

/// [`setup`], each site but s0 given `amount` of the project's rights.
fn setup_with(n: usize, amount: atoll_crdt::Resources) -> (Net, String) {
    let mut net = Net::new(n);
    net.settle();
    let admin = net.login(0, "admin", "admin-password");
    net.call(1, Some(&admin), Command::RegisterImage(crate::tests::image("default", "img"))).unwrap();
    // Quota rights for every site: the realm's first site holds them all.
    let to = (1..n).map(|i| net.site(i)).collect();
    net.call(0, Some(&admin), Command::GiveQuota { project: "default".into(), to, amount }).unwrap();
    net.settle();
    (net, admin)
}

#[test]
fn an_instance_created_through_another_site_runs_there_once() {
    let (mut net, admin) = setup(3);
    let req =
        net.ask(0, &admin, remote(&net, 1, 30_000, Command::CreateInstance(new_instance("web", "img"))));
    assert!(net.reply(req).is_none(), "the requester waits for the outcome");
    net.settle();
    match net.reply(req) {
        Some(Ok(Reply::Instance(i))) => {
            assert_eq!(i.site, net.site(1));
            assert_eq!(i.observed, Observed::Running);
        }
        other => panic!("{other:?}"),
    }
    assert!(instance_on(&net, 1, "web").is_some());
    assert!(instance_on(&net, 0, "web").is_none());
    // Its round trip is timed once, by the requester only.
    assert_eq!(net.peers[0].stats().unwrap().intent_round_trip.count, 1);
    assert_eq!(net.peers[1].stats().unwrap().intent_round_trip.count, 0);
    // Listed on both sides as done; applying again (as after a restart) changes nothing.
    for i in [0, 1] {
        let Ok(Reply::Intents(list)) = net.call(i, Some(&admin), Command::ListIntents) else { panic!() };
        assert_eq!(list.len(), 1, "site {i}: {list:?}");
        assert_eq!(list[0].state, IntentState::Done);
    }
    let mut out = Outbox::default();
    net.peers[1].resume_intents(net.now, &mut out);
    assert!(out.drivers.is_empty(), "an applied intent is never applied twice");
    // Stop and delete through s2 (which never held the instance).
    let token = net.login(2, "admin", "admin-password");
    let stop = Command::StopInstance { project: "default".into(), name: "web".into() };
    let req = net.ask(2, &token, remote(&net, 1, 30_000, stop));
    net.settle();
    assert!(matches!(net.reply(req), Some(Ok(Reply::Instance(i))) if i.observed == Observed::Stopped));
    let delete = Command::DeleteInstance { project: "default".into(), name: "web".into() };
    let req = net.ask(2, &token, remote(&net, 1, 30_000, delete));
    net.settle();
    assert!(matches!(net.reply(req), Some(Ok(Reply::Removed(_)))), "{:?}", net.reply(req));
    assert!(instance_on(&net, 1, "web").is_none());
    net.assert_converged();
}

#[test]
fn an_intent_to_a_cut_off_site_is_pending_then_applied_after_the_heal() {
    let (mut net, admin) = setup(3);
    net.partition(1);
    let req = net.ask(0, &admin, remote(&net, 1, 5_000, Command::CreateInstance(new_instance("db", "img"))));
    net.settle();
    assert!(net.reply(req).is_none());
    // The caller's wait ends (the shell fires the timer).
    let Some(id) = net.peers[0].intent_waiters.keys().next().cloned() else { panic!("no waiter") };
    net.input(0, Input::Timer(TimerId::IntentWait { id: id.clone(), req }));
    match net.reply(req) {
        Some(Ok(Reply::Intent(v))) => assert_eq!(v.state, IntentState::Pending),
        other => panic!("{other:?}"),
    }
    net.heal();
    net.settle();
    assert!(instance_on(&net, 1, "db").is_some(), "applied once the target is reached");
    match net.call(0, Some(&admin), Command::ShowIntent { id, wait_ms: 0 }) {
        Ok(Reply::Intent(v)) => assert_eq!(v.state, IntentState::Done, "{v:?}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_refused_intent_reports_the_targets_reason() {
    let (mut net, admin) = setup(2);
    // The image is unknown: the target refuses, and the caller gets its error.
    let req = net.ask(0, &admin, remote(&net, 1, 30_000, Command::CreateInstance(new_instance("x", "nope"))));
    net.settle();
    assert!(matches!(net.reply(req), Some(Err(ApiError::NotFound(_)))), "{:?}", net.reply(req));
    let Ok(Reply::Intents(list)) = net.call(0, Some(&admin), Command::ListIntents) else { panic!() };
    assert_eq!(list[0].state, IntentState::Failed);
    // Commands that cannot travel, and unknown sites, are refused at once.
    let bad = net.call(0, Some(&admin), remote(&net, 1, 0, Command::ListUsers));
    assert!(matches!(bad, Err(ApiError::Invalid(_))), "{bad:?}");
    let nowhere = Command::Remote {
        site: atoll_crdt::SiteId::new("nowhere").unwrap(),
        wait_ms: 0,
        then: Box::new(Command::CreateInstance(new_instance("y", "img"))),
    };
    assert!(matches!(net.call(0, Some(&admin), nowhere), Err(ApiError::NotFound(_))));
}

#[test]
fn an_image_held_elsewhere_is_fetched_before_its_instance_starts() {
    let (mut net, admin) = setup(3);
    let token = net.login(2, "admin", "admin-password");
    let req = net.ask(2, &token, Command::CreateInstance(new_instance("app", "img")));
    net.settle();
    assert!(net.reply(req).is_none());
    let (site, image, holders) = net.fetches.pop().expect("a fetch is asked for");
    assert_eq!((site, holders), (2, vec![net.site(1)]));
    let inst = instance_on(&net, 2, "app").unwrap();
    assert_eq!(inst.observed, Observed::Pending);
    assert!(inst.reason.contains("fetching image"), "{}", inst.reason);
    net.input(2, Input::Fetched { digest: image.digest.clone(), result: Ok(()) });
    net.settle();
    assert!(matches!(net.reply(req), Some(Ok(Reply::Instance(i))) if i.observed == Observed::Running));
    // The catalog now names both holders, on every site.
    match net.call(0, Some(&admin), Command::ShowImage { project: "default".into(), name: "img".into() }) {
        Ok(Reply::Image(v)) => assert_eq!(v.holders, vec![net.site(1), net.site(2)]),
        other => panic!("{other:?}"),
    }
    let _ = admin;
}

#[test]
fn a_failed_fetch_keeps_the_instance_pending_and_tries_again() {
    let (mut net, admin) = setup(2);
    let req = net.ask(0, &admin, Command::CreateInstance(new_instance("app", "img")));
    let copy = net.ask(0, &admin, Command::CopyImage { project: "default".into(), name: "img".into() });
    assert_eq!(net.fetches.len(), 1, "one fetch for both");
    let digest = net.fetches[0].1.digest.clone();
    let why = "chunk 0 failed verification at every holder";
    net.input(0, Input::Fetched { digest: digest.clone(), result: Err(why.into()) });
    // The copy was a call of its own: it gets the error. The instance waits.
    assert!(matches!(net.reply(copy), Some(Err(ApiError::Conflict(m))) if m.contains("verification")));
    match net.reply(req) {
        Some(Ok(Reply::Instance(i))) => {
            assert_eq!(i.observed, Observed::Pending);
            assert!(i.reason.contains("verification") && i.reason.contains("trying again"), "{}", i.reason);
        }
        other => panic!("{other:?}"),
    }
    net.fire(|t| matches!(t, TimerId::Refetch { .. }));
    assert_eq!(net.fetches.len(), 2, "fetched again");
    net.input(0, Input::Fetched { digest, result: Ok(()) });
    net.settle();
    assert_eq!(instance_on(&net, 0, "app").unwrap().observed, Observed::Running);
}

/// The holder out of reach: the instance says what it waits for, and runs
/// once the holder is back (the `ship` case).
#[test]
fn an_instance_waits_for_an_unreachable_holder_then_runs() {
    let (mut net, admin) = setup(2);
    net.partition(1);
    let req = net.ask(0, &admin, Command::CreateInstance(new_instance("app", "img")));
    let digest = net.fetches[0].1.digest.clone();
    net.input(0, Input::Fetched { digest: digest.clone(), result: Err("no holder is reachable".into()) });
    match net.reply(req) {
        Some(Ok(Reply::Instance(i))) => {
            assert_eq!(i.observed, Observed::Pending);
            assert!(i.reason.contains("waiting for a holder") && i.reason.contains("s1"), "{}", i.reason);
        }
        other => panic!("{other:?}"),
    }
    // A timer firing while no holder is reachable asks again; the shell's
    // fetch waits for a holder too. What matters: the holder's return.
    net.heal();
    assert!(net.fetches.len() >= 2, "fetched again when the holder connected");
    net.input(0, Input::Fetched { digest, result: Ok(()) });
    net.settle();
    assert_eq!(instance_on(&net, 0, "app").unwrap().observed, Observed::Running);
}

#[test]
fn settled_intents_and_then_their_outcomes_are_collected_after_an_hour() {
    let (mut net, admin) = setup(2);
    let req =
        net.ask(0, &admin, remote(&net, 1, 30_000, Command::CreateInstance(new_instance("web", "img"))));
    net.settle();
    assert!(matches!(net.reply(req), Some(Ok(Reply::Instance(_)))));
    let count = |net: &Net, i: usize| {
        (
            net.peers[i].own().doc.count::<atoll_crdt::Intent>(),
            net.peers[i].own().doc.count::<atoll_crdt::IntentOutcome>(),
        )
    };
    assert_eq!((count(&net, 0), count(&net, 1)), ((1, 0), (0, 1)));
    // Within the hour both stay, for listings.
    net.input(0, Input::Timer(TimerId::Repair));
    net.settle();
    assert_eq!(count(&net, 0), (1, 0));
    // After it, the requester drops the intent, then the target the outcome.
    net.now += crate::intents::INTENT_KEEP + 1;
    net.input(0, Input::Timer(TimerId::Repair));
    net.settle();
    assert_eq!(count(&net, 0), (0, 0));
    net.input(1, Input::Timer(TimerId::Repair));
    net.settle();
    assert_eq!(count(&net, 1), (0, 0));
    // And the instance, applied once, stays.
    assert!(instance_on(&net, 1, "web").is_some());
    let mut out = Outbox::default();
    net.peers[1].resume_intents(net.now, &mut out);
    assert!(out.drivers.is_empty());
    net.assert_converged();
}

/// A site with no rights of its own creates an instance: it asks a connected
/// site, which gives a quantum from its spare as a transfer, and the call is
/// admitted once the transfer arrives, with no `quota give`.
#[test]
fn rights_move_on_demand_from_a_connected_site() {
    let mut net = crate::tests_sync::Net::new(3);
    net.settle();
    let admin = net.login(0, "admin", "admin-password");
    net.call(2, Some(&admin), Command::RegisterImage(crate::tests::image("default", "img"))).unwrap();
    net.settle();
    assert_eq!(net.peers[2].account("default").unwrap().available(), atoll_crdt::Resources::ZERO);
    let req = net.ask(2, &admin, Command::CreateInstance(new_instance("web", "img")));
    net.settle();
    match net.reply(req) {
        Some(Ok(Reply::Instance(i))) => assert_eq!(i.observed, Observed::Running),
        other => panic!("{other:?}"),
    }
    // A quantum came (twice the shortfall), not one unit: the next creation
    // needs no round trip.
    let left = net.peers[2].account("default").unwrap().available();
    assert!(left.instances >= 1, "{left}");
    let before = net.timers.len();
    let again = net.ask(2, &admin, Command::CreateInstance(new_instance("web2", "img")));
    net.settle();
    assert!(matches!(net.reply(again), Some(Ok(Reply::Instance(_)))));
    assert_eq!(net.timers.len(), before, "admitted from the quantum held");
    net.assert_converged();
}

/// An ask lost on the way (a connection replaced, a full queue) is sent
/// again halfway through the wait: the call is admitted, not refused with
/// "did not answer" while the holder is connected all along.
#[test]
fn a_lost_ask_is_sent_again_halfway_through_the_wait() {
    let mut net = crate::tests_sync::Net::new(3);
    net.settle();
    let admin = net.login(0, "admin", "admin-password");
    net.call(2, Some(&admin), Command::RegisterImage(crate::tests::image("default", "img"))).unwrap();
    net.settle();
    net.cut.insert((2, 0));
    let req = net.ask(2, &admin, Command::CreateInstance(new_instance("web", "img")));
    net.settle();
    assert!(net.reply(req).is_none(), "waits for site 0, whose ask was lost");
    net.cut.clear();
    net.fire(|t| matches!(t, TimerId::RightsWait { last: false, .. }));
    net.settle();
    match net.reply(req) {
        Some(Ok(Reply::Instance(i))) => assert_eq!(i.observed, Observed::Running),
        other => panic!("{other:?}"),
    }
}

/// Nobody in reach, or nobody with spare rights: the refusal says so.
#[test]
fn a_refusal_says_whom_it_asked_and_what_is_out_of_reach() {
    let mut net = crate::tests_sync::Net::new(2);
    net.settle();
    let admin = net.login(0, "admin", "admin-password");
    net.call(1, Some(&admin), Command::RegisterImage(crate::tests::image("default", "img"))).unwrap();
    net.settle();
    net.partition(1);
    let req = net.ask(1, &admin, Command::CreateInstance(new_instance("web", "img")));
    match net.reply(req) {
        Some(Err(ApiError::QuotaExceeded(m))) => assert!(m.contains("no site in reach"), "{m}"),
        other => panic!("{other:?}"),
    }
    net.heal();
    // The founder's rights are all used: asked, it has none spare.
    let total = atoll_crdt::Resources::new(0, 0, 0);
    net.call(0, Some(&admin), Command::SetQuota { project: "default".into(), total }).unwrap();
    net.settle();
    let req = net.ask(1, &admin, Command::CreateInstance(new_instance("web", "img")));
    net.settle();
    assert!(net.reply(req).is_none(), "waits for the answers");
    net.fire(|t| matches!(t, TimerId::RightsWait { last: false, .. }));
    net.settle();
    assert!(net.reply(req).is_none(), "asked again, still waiting");
    net.fire(|t| matches!(t, TimerId::RightsWait { last: true, .. }));
    match net.reply(req) {
        Some(Err(ApiError::QuotaExceeded(m))) => {
            assert!(
                m.contains("asked s0") && m.contains("had none spare") && m.contains("project total"),
                "{m}"
            )
        }
        other => panic!("{other:?}"),
    }
}

fn project(name: &str, quota: atoll_crdt::Resources, spread: atoll_crdt::Spread) -> Command {
    Command::CreateProject(crate::api::NewProject {
        storage_mib: atoll_crdt::DEFAULT_STORAGE_MIB,
        name: name.into(),
        description: String::new(),
        quota,
        spread,
    })
}

/// `even` splits the total over the members at creation (the remainder stays
/// at the creating site); `founder` keeps it there and never moves it on
/// demand, until the spread is changed.
#[test]
fn spreads_place_rights_and_founder_moves_them_only_by_hand() {
    use atoll_crdt::{Resources, Spread};
    let mut net = crate::tests_sync::Net::new(3);
    net.settle();
    let admin = net.login(0, "admin", "admin-password");
    net.call(0, Some(&admin), project("lab", Resources::new(10, 20, 2048), Spread::Even)).unwrap();
    net.settle();
    let free = |net: &crate::tests_sync::Net, i: usize, p: &str| net.peers[i].account(p).unwrap().available();
    assert_eq!(free(&net, 0, "lab"), Resources::new(4, 8, 684));
    assert_eq!(free(&net, 1, "lab"), Resources::new(3, 6, 682));
    assert_eq!(free(&net, 2, "lab"), Resources::new(3, 6, 682));
    // The map of rights, as site 2 knows it.
    let Ok(Reply::Quota(q)) = net.call(2, Some(&admin), Command::ShowQuota { project: "lab".into() }) else {
        panic!()
    };
    assert_eq!(q.by_site.len(), 3);
    // Its own document and the giver's are held at site 2; s1's may not be.
    let row = |s: &str| q.by_site.iter().find(|r| r.site.as_str() == s).unwrap().clone();
    assert_eq!((row("s2").source.as_str(), row("s2").used), ("document", Some(Resources::ZERO)));
    assert_eq!(row("s0").free, Some(Resources::new(4, 8, 684)));

    net.call(0, Some(&admin), project("hand", Resources::new(4, 4, 1024), Spread::Founder)).unwrap();
    net.settle();
    net.call(1, Some(&admin), Command::RegisterImage(crate::tests::image("hand", "img"))).unwrap();
    net.settle();
    let create = |name: &str| {
        let new =
            serde_json::from_value(serde_json::json!({"name": name, "project": "hand", "image": "img"}));
        Command::CreateInstance(new.unwrap())
    };
    let req = net.ask(1, &admin, create("x"));
    match net.reply(req) {
        Some(Err(ApiError::QuotaExceeded(m))) => assert!(m.contains("spread founder"), "{m}"),
        other => panic!("refused at once, nobody asked: {other:?}"),
    }
    let pool = Command::SetSpread { project: "hand".into(), spread: Spread::Pool };
    net.call(2, Some(&admin), pool).unwrap();
    net.settle();
    let req = net.ask(1, &admin, create("x"));
    net.settle();
    assert!(matches!(net.reply(req), Some(Ok(Reply::Instance(_)))), "{:?}", net.reply(req));
    // Only realm admins change a spread.
    let bob =
        crate::api::NewUser { name: "bob".into(), password: "bob-password-1".into(), realm_admin: false };
    net.call(0, Some(&admin), Command::CreateUser(bob)).unwrap();
    let token = net.login(0, "bob", "bob-password-1");
    let r = net.call(0, Some(&token), Command::SetSpread { project: "hand".into(), spread: Spread::Founder });
    assert!(matches!(r, Err(ApiError::Forbidden(_))), "{r:?}");
}

/// Without summaries (large realms gossip none), rights that moved away from
/// where they started are found through the givers' hints: site after site
/// asks, the founder's spare halves with each gift until it has none, and
/// later askers are sent on to the sites it gave to.
#[test]
fn rights_that_moved_away_are_found_through_hints() {
    use atoll_crdt::{Resources, Spread};
    let n = 14;
    let mut net = crate::tests_sync::Net::new(n);
    net.settle();
    let admin = net.login(0, "admin", "admin-password");
    net.call(0, Some(&admin), project("burst", Resources::new(64, 64, 65536), Spread::Pool)).unwrap();
    net.call(0, Some(&admin), Command::RegisterImage(crate::tests::image("burst", "img"))).unwrap();
    net.settle();
    for i in 1..n {
        // Three at once: the first admitted gives the site a quantum, the
        // others wait meanwhile.
        let mut reqs = Vec::new();
        for name in ["x", "y", "z"] {
            let new =
                serde_json::from_value(serde_json::json!({"name": name, "project": "burst", "image": "img"}));
            reqs.push(net.ask(i, &admin, Command::CreateInstance(new.unwrap())));
        }
        let fetched = |net: &mut crate::tests_sync::Net| {
            net.settle();
            for (j, image, _) in std::mem::take(&mut net.fetches) {
                net.input(j, Input::Fetched { digest: image.digest, result: Ok(()) });
            }
            net.settle();
        };
        fetched(&mut net);
        for last in [false, true] {
            if reqs.iter().any(|r| net.reply(*r).is_none()) {
                net.fire(|t| matches!(t, TimerId::RightsWait { last: l, .. } if *l == last));
                fetched(&mut net);
            }
        }
        for req in reqs {
            assert!(matches!(net.reply(req), Some(Ok(Reply::Instance(_)))), "s{i}: {:?}", net.reply(req));
        }
    }
}

/// s0 asks s1 (cut off) for an instance, and is removed from the realm
/// before s1 hears of it: s1 refuses the intent once it knows of the removal.
#[test]
fn an_intent_from_a_removed_site_is_refused() {
    let (mut net, admin) = setup(3);
    // Each site alone: the intent stays with s0 until s1 knows of the
    // removal (heard from s2), then reaches s1.
    net.partition(0);
    net.partition(1);
    let _ = net.ask(0, &admin, remote(&net, 1, 5_000, Command::CreateInstance(new_instance("db", "img"))));
    net.settle();
    net.call(2, Some(&admin), Command::RemoveSite { site: net.site(0) }).unwrap();
    net.settle();
    for (a, b) in [(1, 2), (2, 1)] {
        net.cut.remove(&(a, b));
        let s = net.site(b);
        net.input(a, Input::Connected(s));
    }
    net.settle();
    net.heal();
    net.settle();
    assert!(net.peers[1].realm().member(&net.site(0)).unwrap().is_none(), "s1 never heard of the removal");
    assert!(instance_on(&net, 1, "db").is_none(), "the removed site's intent was applied");
}

/// Deployment `name` of project `default`: `replicas` of image `img`, at
/// most one per site.
fn one_per_site(name: &str, replicas: u32) -> crate::deployment::Deployment {
    serde_json::from_value(serde_json::json!({
        "name": name, "project": "default",
        "services": { "web": { "image": "img", "replicas": replicas, "memory_mib": 64,
                               "placement": { "avoid": ["web"] } } }
    }))
    .unwrap()
}

#[test]
fn a_deployment_is_placed_over_sites_by_its_reconciler() {
    let (mut net, admin) = setup(3);
    let d = one_per_site("shop", 3);
    net.call(0, Some(&admin), Command::ApplyDeployment(d)).unwrap();
    net.settle();
    net.gossip();
    for _ in 0..3 {
        net.fire(|t| matches!(t, TimerId::Reconcile));
        net.settle();
    }
    let on = |net: &Net, i: usize| {
        net.peers[i].own().instances().unwrap().into_iter().filter(|i| i.replica.is_some()).count()
    };
    assert_eq!([on(&net, 0), on(&net, 1), on(&net, 2)], [1, 1, 1], "one replica per site (avoid)");
    // Placed by one reconciler only: every site sees the same one.
    let reconcilers: Vec<_> = (0..3)
        .map(|i| {
            let show = Command::ShowDeployment { project: "default".into(), name: "shop".into() };
            match net.call(i, Some(&admin), show) {
                Ok(Reply::Deployment(v)) => v.reconciler,
                other => panic!("{other:?}"),
            }
        })
        .collect();
    assert!(reconcilers.iter().all(|r| r.is_some() && *r == reconcilers[0]), "{reconcilers:?}");
}

#[test]
fn a_replica_deleted_reaches_every_site_its_host_document_went_to() {
    // Ten sites: a host's document goes to its three custodians and to the
    // deployment's three candidates, which need not be the same sites.
    let (mut net, admin) = setup_with(10, atoll_crdt::Resources::new(1, 2, 1024));
    let d = one_per_site("shop", 9);
    net.call(0, Some(&admin), Command::ApplyDeployment(d)).unwrap();
    net.settle();
    let reconcile = |net: &mut Net| {
        for _ in 0..3 {
            net.gossip();
            net.fire(|t| matches!(t, TimerId::Reconcile));
            net.settle();
        }
    };
    reconcile(&mut net);
    let running = |net: &Net| -> usize {
        (0..10)
            .map(|i| net.peers[i].own().instances().unwrap().iter().filter(|i| i.replica.is_some()).count())
            .sum()
    };
    assert_eq!(running(&net), 9);
    let scale = Command::ScaleDeployment {
        project: "default".into(),
        name: "shop".into(),
        service: "web".into(),
        replicas: 0,
    };
    net.call(0, Some(&admin), scale).unwrap();
    net.settle();
    reconcile(&mut net);
    assert_eq!(running(&net), 0, "scaled to 0");
    // Every copy of every host's document saw its replica go: none is left
    // stale until a random repair.
    net.assert_converged();
}
