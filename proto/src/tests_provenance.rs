//! A member that forges: every change it writes as another site, or into a
//! document it does not own, or after its removal, is refused by the honest
//! sites, which converge among themselves (crate::provenance).

use atoll_crdt::{Descriptor, Resources, User};

use crate::tests_sync::Net;
use crate::*;

/// Site 2 turns forger: `write` runs on its replicas, then it pushes them.
fn forge(net: &mut Net, write: impl FnOnce(&mut Peer)) {
    write(&mut net.peers[2]);
    net.input(2, Input::Timer(TimerId::Repair));
    net.settle();
}

fn user(name: &str) -> User {
    User {
        name: name.into(),
        password_hash: String::new(),
        realm_admin: true,
        created_at: 0,
        key: None,
        seal: Default::default(),
    }
}

fn honest_converged(net: &mut Net) {
    for id in [DocId::Realm, DocId::Site(net.site(0)), DocId::Site(net.site(1))] {
        let a = net.peers[0].digest_of(&id);
        let b = net.peers[1].digest_of(&id);
        assert_eq!(a, b, "{id} differs between the honest sites");
    }
}

#[test]
fn a_change_written_into_another_sites_document_is_refused_everywhere() {
    let mut net = Net::new(3);
    net.settle();
    let victim = net.site(0);
    let id = DocId::Site(victim.clone());
    forge(&mut net, |p| {
        // A fake capacity would draw placements and intents to the victim.
        let doc = &mut p.others.get_mut(&victim).unwrap().doc;
        let mut d: Descriptor = doc.get("self").unwrap().unwrap();
        d.capacity = Resources::new(1000, 1000, 1 << 30);
        doc.put(&d).unwrap();
    });
    for i in 0..2 {
        let d: Descriptor = net.peers[i].doc_mut(&id).unwrap().get("self").unwrap().unwrap();
        assert_eq!(d.capacity, Resources::new(10, 4, 4096), "site {i} took the forged descriptor");
        assert!(net.peers[i].refused_count() >= 1, "site {i} counted no refusal");
    }
    let refused = net.peers[0].take_refusals();
    assert!(refused.iter().any(|(from, _, r)| from == &net.site(2) && r.author == "s2"), "{refused:?}");
    honest_converged(&mut net);
}

#[test]
fn a_realm_change_signed_with_another_members_name_is_refused() {
    let mut net = Net::new(3);
    net.settle();
    forge(&mut net, |p| {
        // Written as s1 (its actor id), signed with s2's key by the flush.
        p.realm.doc.set_actor(b"s1");
        p.realm.doc.put(&user("mallory")).unwrap();
    });
    for i in 0..2 {
        assert_eq!(net.peers[i].realm().user("mallory").unwrap(), None, "site {i} took the forged user");
    }
    let refused = net.peers[1].take_refusals();
    assert!(refused.iter().any(|(_, _, r)| r.why.contains("signature")), "{refused:?}");
    honest_converged(&mut net);
    // The honest sites still agree on what they write next.
    let admin = net.login(1, "admin", "admin-password");
    let carol =
        crate::api::NewUser { name: "carol".into(), password: "carol-password".into(), realm_admin: false };
    net.call(1, Some(&admin), Command::CreateUser(carol)).unwrap();
    net.input(1, Input::Timer(TimerId::Repair));
    net.settle();
    assert!(net.peers[0].realm().user("carol").unwrap().is_some());
    honest_converged(&mut net);
}

#[test]
fn a_removed_site_writes_nothing_more_into_the_realm() {
    let mut net = Net::new(3);
    net.settle();
    let admin = net.login(0, "admin", "admin-password");
    net.call(0, Some(&admin), Command::RemoveSite { site: net.site(2) }).unwrap();
    net.settle();
    // Site 2 has the removal and writes on top of it.
    forge(&mut net, |p| p.realm.doc.put(&user("ghost")).unwrap());
    for i in 0..2 {
        assert_eq!(net.peers[i].realm().user("ghost").unwrap(), None, "site {i} took a removed site's write");
    }
    let refused = net.peers[0].take_refusals();
    assert!(refused.iter().any(|(_, _, r)| r.why.contains("no longer")), "{refused:?}");
    honest_converged(&mut net);
}

#[test]
fn a_joining_site_refuses_a_realm_copy_with_a_forged_change() {
    let mut net = Net::new(2);
    net.settle();
    let mut copy = net.peers[1].realm_bytes();
    assert!(Peer::join(crate::tests_sync::cfg(1), 0, &copy).is_ok(), "an honest copy is taken");
    net.peers[1].realm.doc.set_actor(b"s0");
    net.peers[1].realm.doc.put(&user("mallory")).unwrap();
    net.peers[1].realm.doc.commit(1);
    copy = net.peers[1].realm_bytes();
    let refused = Peer::join(crate::tests_sync::cfg(1), 0, &copy);
    assert!(
        matches!(refused, Err(ApiError::Forbidden(ref m)) if m.contains("did not sign")),
        "{:?}",
        refused.err()
    );
}
