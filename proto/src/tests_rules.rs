//! A member that writes users and role bindings nobody allowed it to
//! (crate::rules): under its own name and signed with its own key, so that
//! provenance lets each change through; the realm's rules must refuse it.

use atoll_crdt::{
    Entity, FlavorRecord, Holder, Image, ProjectRecord, QuotaGrant, Resources, Role, RoleBinding, Seal,
    SiteId, User,
};

use crate::api::{Grant, NewUser};
use crate::consent::Session;
use crate::tests_sync::Net;
use crate::*;

/// Site 2 turns forger: `write` runs on its realm replica, then it pushes it.
fn forge(net: &mut Net, write: impl FnOnce(&mut Peer)) {
    write(&mut net.peers[2]);
    net.input(2, Input::Timer(TimerId::Repair));
    net.settle();
}

/// Three sites; user bob (member of `default` everywhere) logged in on s2.
fn setup() -> (Net, String, Session) {
    let mut net = Net::new(3);
    net.settle();
    let admin = net.login(0, "admin", "admin-password");
    let bob = NewUser { name: "bob".into(), password: "bob-password".into(), realm_admin: false };
    net.call(0, Some(&admin), Command::CreateUser(bob)).unwrap();
    let grant = Grant { user: "bob".into(), project: "default".into(), role: Role::Member, sites: None };
    net.call(0, Some(&admin), Command::GrantRole(grant)).unwrap();
    net.settle();
    let token = net.login(2, "bob", "bob-password");
    let (claims, _, _) = auth::open::<auth::Claims>(&token).unwrap();
    (net, admin, Session::of(&claims).expect("bob's token names a session"))
}

fn refusal(net: &mut Net, what: &str) {
    for i in 0..2 {
        let refused = net.peers[i].take_refusals();
        assert!(
            refused.iter().any(|(_, _, r)| r.author == "s2" && r.why.contains(what)),
            "site {i}: {refused:?}"
        );
    }
    for id in [DocId::Realm, DocId::Site(net.site(0)), DocId::Site(net.site(1))] {
        assert_eq!(net.peers[0].digest_of(&id), net.peers[1].digest_of(&id), "{id} differs");
    }
}

/// `record` as `session` would sign it.
fn signed<T: rules::Sealed>(session: &Session, mut record: T) -> T {
    let (rev, retired) = (record.seal().rev, record.seal().retired);
    rules::sign(session, &mut record, rev, retired);
    record
}

#[test]
fn a_member_cannot_make_a_realm_admin() {
    let (mut net, _, _) = setup();
    let mallory = User {
        name: "mallory".into(),
        password_hash: String::new(),
        realm_admin: true,
        created_at: 5,
        key: None,
        seal: Seal { rev: 1, ..Default::default() },
    };
    forge(&mut net, |p| p.realm.doc.put(&mallory).unwrap());
    for i in 0..2 {
        assert!(net.peers[i].realm().user("mallory").unwrap().is_none(), "site {i} took a forged admin");
    }
    refusal(&mut net, "no user's consent");
}

#[test]
fn a_member_cannot_take_over_an_admin() {
    let (mut net, _, _) = setup();
    // The admin's record with another key, one revision up, unsigned.
    let mut admin = net.peers[2].realm().user("admin").unwrap().unwrap();
    let key = admin.key.clone();
    admin.key.as_mut().unwrap().public = "00".repeat(32);
    admin.seal = Seal { rev: admin.seal.rev + 1, ..Default::default() };
    forge(&mut net, |p| p.realm.doc.put(&admin).unwrap());
    assert_eq!(net.peers[0].realm().user("admin").unwrap().unwrap().key, key);
    refusal(&mut net, "no user's consent");
}

#[test]
fn a_user_cannot_raise_their_own_rights() {
    let (mut net, _, bob) = setup();
    let mut record = net.peers[2].realm().user("bob").unwrap().unwrap();
    record.realm_admin = true;
    record.seal.rev += 1;
    let record = signed(&bob, record);
    forge(&mut net, |p| p.realm.doc.put(&record).unwrap());
    assert!(!net.peers[0].realm().user("bob").unwrap().unwrap().realm_admin, "bob made himself admin");
    refusal(&mut net, "not a realm admin");
}

#[test]
fn a_project_member_cannot_grant_roles() {
    let (mut net, _, bob) = setup();
    let binding = RoleBinding {
        user: "bob".into(),
        project: "default".into(),
        role: Role::Admin,
        sites: None,
        seal: Seal { rev: 2, ..Default::default() },
    };
    let binding = signed(&bob, binding);
    forge(&mut net, |p| p.realm.doc.put(&binding).unwrap());
    assert_eq!(net.peers[0].realm().role("bob", "default").unwrap().unwrap().role, Role::Member);
    refusal(&mut net, "not an admin of project default");
}

#[test]
fn a_statement_taken_back_cannot_be_put_back() {
    let (mut net, admin, _) = setup();
    let grant = Grant { user: "bob".into(), project: "default".into(), role: Role::Admin, sites: None };
    net.call(0, Some(&admin), Command::GrantRole(grant)).unwrap();
    net.settle();
    let granted: RoleBinding = net.peers[2].realm.doc.get("bob/default").unwrap().unwrap();
    assert!(granted.seal.consent.is_some(), "a grant carries the admin's consent");
    net.call(0, Some(&admin), Command::RevokeRole { user: "bob".into(), project: "default".into() }).unwrap();
    net.settle();
    assert!(net.peers[2].realm().role("bob", "default").unwrap().is_none());
    // The admin's own signed grant, written again on top of its revocation.
    forge(&mut net, |p| p.realm.doc.put(&granted).unwrap());
    assert!(net.peers[0].realm().role("bob", "default").unwrap().is_none(), "a revoked grant came back");
    refusal(&mut net, "does not follow");
}

#[test]
fn a_user_record_is_never_deleted() {
    let (mut net, admin, _) = setup();
    forge(&mut net, |p| {
        p.realm.doc.delete::<User>("bob").unwrap();
    });
    assert!(net.peers[0].realm().user("bob").unwrap().is_some(), "a forged deletion was taken");
    refusal(&mut net, "never deleted");
    // Through the API a deletion retires the record, and the name can be
    // given again, to a new user whose old tokens stay void.
    let old = net.login(1, "bob", "bob-password");
    net.call(0, Some(&admin), Command::DeleteUser { name: "bob".into() }).unwrap();
    net.settle();
    assert!(net.peers[1].realm().user("bob").unwrap().is_none());
    assert!(net.peers[1].realm().role("bob", "default").unwrap().is_none());
    let bob = NewUser { name: "bob".into(), password: "bob-password-2".into(), realm_admin: false };
    net.call(1, Some(&admin), Command::CreateUser(bob)).unwrap();
    net.settle();
    assert_eq!(net.peers[0].realm().user("bob").unwrap().unwrap().seal.rev, 3);
    assert!(net.call(0, Some(&old), Command::Whoami).is_err(), "a deleted user's token still works");
    // Only the forger's changes were refused (its later ones depend on the
    // forged deletion).
    for i in 0..2 {
        assert!(net.peers[i].take_refusals().iter().all(|(_, _, r)| r.author == "s2"), "site {i}");
    }
}

#[test]
fn a_member_cannot_raise_its_own_quota_share() {
    let (mut net, _, _) = setup();
    let total = net.peers[0].realm().quota_total("default").unwrap();
    let raised = net.peers[2]
        .realm()
        .moved_grant("default", &net.site(2), Resources::new(1000, 1000, 1 << 20), 9)
        .unwrap();
    let rev = raised.seal.rev + 1;
    let unsigned = QuotaGrant { seal: Seal { rev, ..Default::default() }, ..raised.clone() };
    forge(&mut net, |p| p.realm.doc.put(&unsigned).unwrap());
    assert_eq!(net.peers[0].realm().quota_total("default").unwrap(), total, "a forged share counted");
    refusal(&mut net, "no user's consent");
}

#[test]
fn a_quota_share_needs_a_realm_admin_and_its_own_site() {
    let (mut net, _, bob) = setup();
    let total = net.peers[0].realm().quota_total("default").unwrap();
    let raised = net.peers[2]
        .realm()
        .moved_grant("default", &net.site(2), Resources::new(1000, 1000, 1 << 20), 9)
        .unwrap();
    let rev = raised.seal.rev + 1;
    let by_bob = signed(&bob, QuotaGrant { seal: Seal { rev, ..Default::default() }, ..raised });
    forge(&mut net, |p| p.realm.doc.put(&by_bob).unwrap());
    assert_eq!(net.peers[0].realm().quota_total("default").unwrap(), total, "bob set a quota");
    refusal(&mut net, "not a realm admin");

    // Site 0's share, written by site 2 with the admin's consent (the admin
    // logged in there).
    let (mut net, _, _) = setup();
    let token = net.login(2, "admin", "admin-password");
    let (claims, _, _) = auth::open::<auth::Claims>(&token).unwrap();
    let admin = Session::of(&claims).unwrap();
    let theirs = net.peers[2]
        .realm()
        .moved_grant("default", &net.site(0), Resources::new(1000, 1000, 1 << 20), 9)
        .unwrap();
    let rev = theirs.seal.rev + 1;
    let theirs = signed(&admin, QuotaGrant { seal: Seal { rev, ..Default::default() }, ..theirs });
    forge(&mut net, |p| p.realm.doc.put(&theirs).unwrap());
    assert_eq!(net.peers[0].realm().quota_total("default").unwrap(), total, "s2 moved s0's share");
    refusal(&mut net, "s0's share, written by s2");
}

/// Three sites with image `default/web` registered by the admin on s0, and
/// the same entry with another digest, one revision up, unsigned.
fn with_image() -> (Net, Session, Image, Image) {
    let (mut net, admin, bob) = setup();
    net.call(0, Some(&admin), Command::RegisterImage(crate::tests::image("default", "web"))).unwrap();
    net.settle();
    let honest = net.peers[2].realm().image("default", "web").unwrap().unwrap();
    assert!(honest.seal.consent.is_some(), "a registered image carries its uploader's consent");
    let mut swapped = honest.clone();
    swapped.digest = format!("sha256:{}", "e".repeat(64));
    swapped.seal = Seal { rev: honest.seal.rev + 1, ..Default::default() };
    (net, bob, honest, swapped)
}

#[test]
fn a_member_cannot_swap_an_image_under_its_name() {
    let (mut net, _, honest, swapped) = with_image();
    forge(&mut net, |p| p.realm.doc.put(&swapped).unwrap());
    assert_eq!(net.peers[0].realm().image("default", "web").unwrap().unwrap().digest, honest.digest);
    refusal(&mut net, "no user's consent");
}

#[test]
fn a_project_member_cannot_change_an_image() {
    let (mut net, bob, honest, swapped) = with_image();
    let by_bob = signed(&bob, swapped);
    forge(&mut net, |p| p.realm.doc.put(&by_bob).unwrap());
    assert_eq!(net.peers[0].realm().image("default", "web").unwrap().unwrap().digest, honest.digest);
    refusal(&mut net, "is not Admin of project default");
}

#[test]
fn a_project_is_a_realm_admins_to_create_change_or_delete() {
    let (mut net, _, bob) = setup();
    // A storage quota of a tebibyte, signed by bob (no realm admin).
    let mut record = net.peers[2].realm().project_record("default").unwrap().unwrap();
    record.project.storage_mib = 1 << 40;
    let rev = record.seal.rev + 1;
    let by_bob = signed(&bob, ProjectRecord { seal: Seal { rev, ..Default::default() }, ..record });
    forge(&mut net, |p| p.realm.doc.put(&by_bob).unwrap());
    let storage = net.peers[0].realm().project("default").unwrap().unwrap().storage_mib;
    assert_eq!(storage, atoll_crdt::DEFAULT_STORAGE_MIB, "bob set a project's storage");
    refusal(&mut net, "not a realm admin");

    // Deleted outright, as a release before the rules did.
    let (mut net, _, _) = setup();
    forge(&mut net, |p| {
        p.realm.doc.delete::<ProjectRecord>("default").unwrap();
    });
    assert!(net.peers[0].realm().project("default").unwrap().is_some(), "a member deleted a project");
    refusal(&mut net, "deletes or edits in place");

    // A realm admin changes one; every site reads the same.
    let (mut net, admin, _) = setup();
    net.call(0, Some(&admin), Command::SetStorage { project: "default".into(), storage_mib: 2048 }).unwrap();
    net.settle();
    assert_eq!(net.peers[2].realm().project("default").unwrap().unwrap().storage_mib, 2048);
    assert_eq!(net.peers[0].refused_count() + net.peers[2].refused_count(), 0);
}

#[test]
fn a_site_says_only_of_itself_that_it_holds_a_blob() {
    let (mut net, _, _) = setup();
    let digest = format!("sha256:{}", "ab".repeat(32));
    let holder = |site: SiteId| Holder { digest: digest.clone(), site, at: 5 };
    // Site 0 records its own holding, as an upload does.
    let own = holder(net.site(0));
    net.peers[0].realm.doc.put(&own).unwrap();
    net.input(0, Input::Timer(TimerId::Repair));
    net.settle();
    assert_eq!(net.peers[2].realm().holders(&digest).unwrap(), [net.site(0)]);
    // Site 2 says site 1 holds it too: fetches would be sent there.
    let claimed = holder(net.site(1));
    forge(&mut net, |p| p.realm.doc.put(&claimed).unwrap());
    assert_eq!(net.peers[0].realm().holders(&digest).unwrap(), [net.site(0)]);
    refusal(&mut net, "only that site does");
    // Nor may it take site 0's holding away while the image stays.
    let (mut net, _, _) = setup();
    let own = holder(net.site(0));
    net.peers[0].realm.doc.put(&own).unwrap();
    net.input(0, Input::Timer(TimerId::Repair));
    net.settle();
    let key = holder(net.site(0)).key();
    forge(&mut net, |p| {
        p.realm.doc.delete::<Holder>(&key).unwrap();
    });
    assert_eq!(net.peers[1].realm().holders(&digest).unwrap(), [net.site(0)]);
    refusal(&mut net, "no image of that digest retired");
}

#[test]
fn the_flavor_catalog_is_the_realm_admins() {
    let (mut net, _, bob) = setup();
    let flavor = atoll_crdt::Flavor {
        name: "huge".into(),
        cpus: 1,
        memory_mib: 64,
        disk_mib: 0,
        created_by: "bob".into(),
        created_at: 5,
    };
    let by_bob = signed(&bob, FlavorRecord { flavor, seal: Seal { rev: 1, ..Default::default() } });
    forge(&mut net, |p| p.realm.doc.put(&by_bob).unwrap());
    assert_eq!(net.peers[0].realm().flavor("huge").unwrap(), None, "bob made a flavor");
    refusal(&mut net, "not a realm admin");
}
