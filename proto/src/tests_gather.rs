//! The realm-wide view between peers of the in-test network.

use atoll_crdt::{Instance, Observed};

use crate::gather::{InstanceList, Source};
use crate::tests_sync::Net;
use crate::*;

/// Creates `name` on `site` by a call to that site (no intent from s0, so
/// s0 is not linked to its document).
fn create_on(net: &mut Net, token: &str, site: usize, name: &str) {
    let new = serde_json::from_value(serde_json::json!({"name": name, "project": "default", "image": "img"}))
        .unwrap();
    let req = net.ask(site, token, Command::CreateInstance(new));
    net.settle();
    // The image is held on s0 only: fetches elsewhere succeed.
    for (i, image, _) in std::mem::take(&mut net.fetches) {
        net.input(i, Input::Fetched { digest: image.digest, result: Ok(()) });
    }
    net.settle();
    assert!(matches!(net.reply(req), Some(Ok(Reply::Instance(_)))), "{:?}", net.reply(req));
}

fn list(net: &mut Net, at: usize, token: &str) -> InstanceList {
    let req = net.ask(at, token, Command::ListInstances { site: None });
    net.settle();
    match net.reply(req) {
        Some(Ok(Reply::Instances(l))) => l,
        other => panic!("{other:?}"),
    }
}

/// Six sites (each site's document kept by three custodians, so no site
/// holds all), the image held everywhere, one instance per site.
fn setup() -> (Net, String) {
    let mut net = Net::new(6);
    net.settle();
    let admin = net.login(0, "admin", "admin-password");
    net.call(0, Some(&admin), Command::RegisterImage(crate::tests::image("default", "img"))).unwrap();
    net.settle();
    for i in 0..6 {
        create_on(&mut net, &admin, i, &format!("w{i}"));
    }
    (net, admin)
}

#[test]
fn the_list_shows_every_site_asking_for_documents_not_held() {
    let (mut net, admin) = setup();
    let l = list(&mut net, 0, &admin);
    let mut names: Vec<&str> = l.instances.iter().map(|i| i.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["w0", "w1", "w2", "w3", "w4", "w5"]);
    assert_eq!(l.sites.len(), 6);
    assert!(l.sites.iter().all(|s| s.reachable && s.as_of.is_some()));
    let asked: Vec<_> = l.sites.iter().filter(|s| matches!(s.source, Source::Asked { .. })).collect();
    assert!(!asked.is_empty(), "some documents are not held at s0: {:?}", l.sites);
    // Cut off a site whose document s0 does not hold: a custodian answers
    // for it, marked unreachable.
    let far = net.peers.iter().position(|p| p.site() == &asked[0].site).unwrap();
    net.partition(far);
    let l = list(&mut net, 0, &admin);
    let state = l.sites.iter().find(|s| s.site == net.site(far)).unwrap();
    assert!(!state.reachable, "{state:?}");
    assert!(matches!(&state.source, Source::Asked { by } if by != &net.site(far)), "{state:?}");
    assert!(l.instances.iter().any(|i| i.name == format!("w{far}")));
}

#[test]
fn a_site_no_one_in_reach_holds_is_shown_as_last_heard() {
    let (mut net, admin) = setup();
    list(&mut net, 0, &admin);
    // Cut s0 off from everyone: what it did not hold comes from memory.
    net.partition(0);
    let req = net.ask(0, &admin, Command::ListInstances { site: None });
    net.settle();
    let Some(Ok(Reply::Instances(l))) = net.reply(req) else { panic!("{:?}", net.reply(req)) };
    assert_eq!(l.instances.len(), 6, "{l:?}");
    assert!(l.sites.iter().filter(|s| s.site != net.site(0)).all(|s| !s.reachable));
    assert!(l.sites.iter().any(|s| s.source == Source::Remembered), "{:?}", l.sites);
}

#[test]
fn an_unanswered_ask_is_answered_from_memory_when_the_wait_ends() {
    let (mut net, admin) = setup();
    // A silent cut between s0 and the others: asks are lost until the wait ends.
    for j in 1..6 {
        net.silent.insert((0, j));
    }
    let req = net.ask(0, &admin, Command::ListInstances { site: None });
    net.settle();
    assert!(net.reply(req).is_none(), "the call waits for the answers: {:?}", net.reply(req));
    net.fire(|t| matches!(t, TimerId::GatherWait { .. }));
    let Some(Ok(Reply::Instances(l))) = net.reply(req) else { panic!("{:?}", net.reply(req)) };
    assert!(l.sites.iter().any(|s| s.source == Source::Unknown), "{:?}", l.sites);
}

fn anywhere(then: Command) -> Command {
    Command::Anywhere { site: None, wait_ms: 30_000, then: Box::new(then) }
}

#[test]
fn operations_run_where_the_instance_is_and_a_shared_name_needs_a_site() {
    let (mut net, admin) = setup();
    let far = 5;
    let stop = Command::StopInstance { project: "default".into(), name: format!("w{far}") };
    let req = net.ask(1, &admin, anywhere(stop));
    net.settle();
    assert!(matches!(net.reply(req), Some(Ok(Reply::Instance(i))) if i.observed == Observed::Stopped));
    assert_eq!(net.peers[far].own().instance("default", "w5").unwrap().unwrap().observed, Observed::Stopped);
    // The same name on two sites: refused with both named, unless narrowed.
    create_on(&mut net, &admin, 2, "w5");
    let show = || Command::ShowInstance { project: "default".into(), name: "w5".into() };
    let req = net.ask(1, &admin, anywhere(show()));
    net.settle();
    match net.reply(req) {
        Some(Err(ApiError::Conflict(m))) => assert!(m.contains("s2") && m.contains("s5"), "{m}"),
        other => panic!("{other:?}"),
    }
    let narrowed = Command::Anywhere { site: Some(net.site(2)), wait_ms: 30_000, then: Box::new(show()) };
    let req = net.ask(1, &admin, narrowed);
    net.settle();
    assert!(
        matches!(net.reply(req), Some(Ok(Reply::Instance(Instance { site, .. }))) if site == net.site(2))
    );
    let missing = Command::ShowInstance { project: "default".into(), name: "nope".into() };
    let req = net.ask(1, &admin, anywhere(missing));
    net.settle();
    assert!(matches!(net.reply(req), Some(Err(ApiError::NotFound(_)))));
    // Only instance operations run anywhere.
    let req = net.ask(1, &admin, anywhere(Command::ListUsers));
    net.settle();
    assert!(matches!(net.reply(req), Some(Err(ApiError::Invalid(_)))));
}

#[test]
fn a_reader_sees_only_the_projects_it_has_a_role_in() {
    let (mut net, admin) = setup();
    let bob =
        crate::api::NewUser { name: "bob".into(), password: "bob-password-1".into(), realm_admin: false };
    net.call(0, Some(&admin), Command::CreateUser(bob)).unwrap();
    net.settle();
    let token = net.login(0, "bob", "bob-password-1");
    assert!(list(&mut net, 0, &token).instances.is_empty());
}
