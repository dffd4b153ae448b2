//! A member that rewrites the realm's member list or revokes users' tokens
//! on its own (crate::roster): under its own name and signed with its own
//! key, so that provenance lets each change through; the realm's rules on
//! membership must refuse it, and the honest sites go on as before.

use atoll_crdt::{Member, Removal, Revocation, SiteId};

use crate::tests_sync::Net;
use crate::*;

/// Site 2 turns forger: `write` runs on its realm replica, then it pushes it.
fn forge(net: &mut Net, write: impl FnOnce(&mut Peer)) {
    write(&mut net.peers[2]);
    net.input(2, Input::Timer(TimerId::Repair));
    net.settle();
}

/// The honest sites refused a change of s2's for `what`, and agree.
fn refused(net: &mut Net, what: &str) {
    let mut refused = net.peers[0].take_refusals();
    refused.extend(net.peers[1].take_refusals());
    assert!(refused.iter().any(|(_, _, r)| r.author == "s2" && r.why.contains(what)), "{refused:?}");
    for id in [DocId::Realm, DocId::Site(net.site(0)), DocId::Site(net.site(1))] {
        assert_eq!(net.peers[0].digest_of(&id), net.peers[1].digest_of(&id), "{id} differs");
    }
}

/// `n` sites in sync (a forger's refused change dooms its later ones: each
/// forgery starts from a fresh atoll).
fn fresh(n: usize) -> Net {
    let mut net = Net::new(n);
    net.settle();
    net
}

fn removal(site: &SiteId, key: &str) -> Removal {
    Removal {
        site: site.clone(),
        public_key: key.to_owned(),
        invitation: None,
        by: "admin".into(),
        at: 5,
        consent: None,
    }
}

#[test]
fn a_member_cannot_remove_another_without_an_admin() {
    let mut net = fresh(3);
    let victim = net.peers[0].realm().member(&net.site(0)).unwrap().unwrap();
    forge(&mut net, |p| {
        p.realm.doc.delete::<Member>(victim.site.as_str()).unwrap();
        p.realm.doc.put(&removal(&victim.site, &victim.public_key)).unwrap();
    });
    refused(&mut net, "carries no realm admin's consent");
    for i in 0..2 {
        assert!(net.peers[i].realm().member(&victim.site).unwrap().is_some(), "site {i} lost s0");
    }
    // Deleting the record alone is refused too.
    let mut net = fresh(3);
    forge(&mut net, |p| {
        p.realm.doc.delete::<Member>(victim.site.as_str()).unwrap();
    });
    refused(&mut net, "without removing its key");
}

#[test]
fn a_member_cannot_rewrite_another_members_key() {
    let mut net = fresh(3);
    let s2_key = net.peers[2].realm().member(&net.site(2)).unwrap().unwrap().public_key;
    let victim = net.peers[0].realm().member(&net.site(1)).unwrap().unwrap();
    // With s1's name bound to its key, s2 could sign s1's document.
    forge(&mut net, |p| {
        p.realm.doc.put(&Member { public_key: s2_key.clone(), ..victim.clone() }).unwrap();
    });
    refused(&mut net, "rewrites site s1's record");
    for i in 0..2 {
        let m = net.peers[i].realm().member(&victim.site).unwrap().unwrap();
        assert_eq!(m.public_key, victim.public_key, "site {i}");
    }
    // Its own record, yes: but not what admitted it.
    let mut net = fresh(3);
    let own = net.peers[2].realm().member(&net.site(2)).unwrap().unwrap();
    forge(&mut net, |p| {
        p.realm.doc.put(&Member { invitation: Some("other".into()), ..own.clone() }).unwrap();
    });
    refused(&mut net, "what admitted the site");
}

#[test]
fn a_member_cannot_enrol_a_site_no_admin_invited() {
    let mut net = fresh(3);
    // An admin's invitation, whose consent the forger will copy.
    let addr = "/ip4/127.0.0.1/udp/7481/quic-v1/p2p/x".to_owned();
    net.peers[0].set_addrs(net.now, vec![addr], &mut Outbox::default()).unwrap();
    let admin = net.login(0, "admin", "admin-password");
    let Ok(Reply::Invitation(inv)) =
        net.call(0, Some(&admin), Command::InviteSite { name: None, ttl_secs: None })
    else {
        panic!("no invitation")
    };
    let read = crate::membership::Invitation::read(&inv.token).unwrap();
    assert!(read.consent.is_some(), "the invitation carries no admin's consent");
    let template = net.peers[0].realm().member(&net.site(0)).unwrap().unwrap();
    let sybil = |name: &str, key: u8| Member {
        site: SiteId::new(name).unwrap(),
        public_key: auth::encode_key(&ed25519_dalek::SigningKey::from_bytes(&[key; 32]).verifying_key()),
        invitation: Some(format!("nonce-{name}")),
        ..template.clone()
    };
    let enrolled = |member: Member, admission| atoll_crdt::Enrolment { member, admission };
    forge(&mut net, |p| p.realm.doc.put(&sybil("sybil", 7)).unwrap());
    refused(&mut net, "without a realm admin's consent");
    let mut net = fresh(3);
    // An admin's consent to another invitation signs another nonce.
    let admission = atoll_crdt::Admission {
        issuer: net.site(0),
        name: None,
        expires_at: read.expires_at,
        consent: read.consent.clone().unwrap(),
    };
    forge(&mut net, |p| {
        p.realm.doc.put(&enrolled(sybil("sybil-2", 8), Some(admission.clone()))).unwrap();
    });
    refused(&mut net, "not over this");
    for i in 0..2 {
        let names: Vec<String> =
            net.peers[i].realm().members().unwrap().into_iter().map(|m| m.site.to_string()).collect();
        assert_eq!(names, ["s0", "s1", "s2"], "site {i}");
    }
}

#[test]
fn a_removal_is_final_and_a_member_cannot_revoke_users_tokens() {
    let mut net = fresh(4);
    let admin = net.login(0, "admin", "admin-password");
    let gone = net.peers[0].realm().member(&net.site(3)).unwrap().unwrap();
    net.call(0, Some(&admin), Command::RemoveSite { site: net.site(3) }).unwrap();
    net.settle();
    // Taking the removal back would let s3's key in again.
    forge(&mut net, |p| {
        p.realm.doc.delete::<Removal>(&gone.public_key).unwrap();
    });
    refused(&mut net, "removals are final");
    let mut net = fresh(3);
    let admin = net.login(0, "admin", "admin-password");
    // All of the admin's tokens, revoked "by admin" with no consent of theirs.
    forge(&mut net, |p| {
        p.realm
            .doc
            .put(&Revocation {
                user: "admin".into(),
                token: None,
                expires_at: None,
                by: "admin".into(),
                at: u64::MAX / 2,
                consent: None,
            })
            .unwrap();
    });
    refused(&mut net, "carries no consent of the user or a realm admin");
    for i in 0..2 {
        net.call(i, Some(&admin), Command::Whoami).unwrap_or_else(|e| panic!("site {i}: {e}"));
    }
    // The admin does it themselves: every site refuses their older token.
    net.call(1, Some(&admin), Command::RevokeTokens { user: "admin".into() }).unwrap();
    net.settle();
    for i in 0..2 {
        assert_eq!(net.call(i, Some(&admin), Command::Whoami).unwrap_err().status(), 401, "site {i}");
    }
}

/// `user`'s caller on site `i`, with the session of a fresh login.
fn caller(net: &mut Net, i: usize, user: &str, password: &str) -> crate::consent::Caller {
    let token = net.login(i, user, password);
    let (claims, _, _) = auth::open::<auth::Claims>(&token).unwrap();
    let user = net.peers[i].realm().user(user).unwrap().unwrap();
    crate::consent::Caller { user, session: crate::consent::Session::of(&claims) }
}

#[test]
fn the_floor_rises_only_with_a_realm_admins_consent() {
    let to = crate::epoch::FLOOR + 1;
    // Raised by a member on its own, it would shut out every site not yet upgraded.
    let mut net = fresh(3);
    forge(&mut net, |p| {
        p.realm.raise_floor(to, None).unwrap();
    });
    refused(&mut net, "with no realm admin's consent");
    // A user who is not a realm admin consents to nothing of the kind.
    let mut net = fresh(3);
    let admin = net.login(0, "admin", "admin-password");
    let bob = crate::api::NewUser { name: "bob".into(), password: "bob-password".into(), realm_admin: false };
    net.call(0, Some(&admin), Command::CreateUser(bob)).unwrap();
    net.settle();
    let bob = caller(&mut net, 2, "bob", "bob-password");
    let e = net.peers[2].raise_floor(&bob, to).unwrap_err();
    assert!(e.to_string().contains("not a realm admin"), "{e}");
    let consent = bob.signing_session().unwrap().sign_message(&crate::roster::floor_message(to));
    forge(&mut net, |p| {
        p.realm.raise_floor(to, Some(&serde_json::to_string(&consent).unwrap())).unwrap();
    });
    refused(&mut net, "not a realm admin");
    for i in 0..2 {
        assert_eq!(net.peers[i].realm().floor(), crate::epoch::FLOOR, "site {i}");
    }
    // A realm admin's raise is taken everywhere.
    let mut net = fresh(3);
    let admin = caller(&mut net, 2, "admin", "admin-password");
    net.peers[2].raise_floor(&admin, to).unwrap();
    net.input(2, Input::Timer(TimerId::Repair));
    net.settle();
    for i in 0..3 {
        assert_eq!(net.peers[i].realm().floor(), to, "site {i}");
        assert!(net.peers[i].take_refusals().is_empty(), "site {i}");
    }
}
