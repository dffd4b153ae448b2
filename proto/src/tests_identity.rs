//! Identity administration between peers of the in-test network: revocations
//! reach every site, deletions check every site.

use atoll_crdt::{Resources, Role, SiteId, Spread};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use crate::api::{Grant, NewProject, NewUser};
use crate::tests_sync::Net;
use crate::*;

fn ok(r: ApiResult) -> Reply {
    r.unwrap_or_else(|e| panic!("{e}"))
}

fn refused(r: ApiResult) -> ApiError {
    match r {
        Err(e) => e,
        Ok(reply) => panic!("accepted: {reply:?}"),
    }
}

/// Three sites, a member `bob` of `default`, both logged in at s0.
fn setup() -> (Net, String, String) {
    let mut net = Net::new(3);
    net.settle();
    let admin = net.login(0, "admin", "admin-password");
    let bob = NewUser { name: "bob".into(), password: "bob-secret-1".into(), realm_admin: false };
    ok(net.call(0, Some(&admin), Command::CreateUser(bob)));
    let grant = Grant { user: "bob".into(), project: "default".into(), role: Role::Member, sites: None };
    ok(net.call(0, Some(&admin), Command::GrantRole(grant)));
    net.settle();
    let bob = net.login(0, "bob", "bob-secret-1");
    (net, admin, bob)
}

fn hash(password: &str) -> String {
    auth::hash_password(password, &mut ChaCha20Rng::seed_from_u64(3)).unwrap()
}

fn key(password: &str) -> Option<atoll_crdt::UserKey> {
    auth::new_user_key(password, &mut ChaCha20Rng::seed_from_u64(4)).unwrap().record
}

#[test]
fn a_logged_out_token_is_refused_on_every_site_and_others_live_on() {
    let (mut net, _, bob) = setup();
    let other = net.login(1, "bob", "bob-secret-1");
    assert!(matches!(net.call(0, Some(&bob), Command::Logout), Ok(Reply::Revoked(_))));
    net.settle();
    for i in 0..3 {
        let e = refused(net.call(i, Some(&bob), Command::Whoami));
        assert!(e.to_string().contains("revoked"), "{e}");
        ok(net.call(i, Some(&other), Command::Whoami));
    }
}

#[test]
fn a_password_change_needs_the_current_one_and_revokes_older_tokens() {
    let (mut net, admin, bob) = setup();
    let unproven = Command::SetPassword {
        user: "bob".into(),
        password_hash: hash("new-pass-1"),
        current_checked: false,
        key: key("new-pass-1"),
    };
    assert_eq!(refused(net.call(0, Some(&bob), unproven)).status(), 403);
    // A member sets no one else's password.
    let other = Command::SetPassword {
        user: "admin".into(),
        password_hash: hash("x-pass-12"),
        current_checked: true,
        key: key("x-pass-12"),
    };
    assert_eq!(refused(net.call(0, Some(&bob), other)).status(), 403);
    let change = Command::SetPassword {
        user: "bob".into(),
        password_hash: hash("new-pass-1"),
        current_checked: true,
        key: key("new-pass-1"),
    };
    ok(net.call(1, Some(&bob), change));
    net.settle();
    for i in 0..3 {
        assert_eq!(refused(net.call(i, Some(&bob), Command::Whoami)).status(), 401);
    }
    assert_eq!(
        refused(net.call(2, None, Command::Login { user: "bob".into(), password: "bob-secret-1".into() }))
            .status(),
        401
    );
    let fresh = net.login(2, "bob", "new-pass-1");
    ok(net.call(0, Some(&fresh), Command::Whoami));
    // A realm admin resets it without the current one; the genesis admin too.
    let reset = Command::SetPassword {
        user: "admin".into(),
        password_hash: hash("admin-new-1"),
        current_checked: false,
        key: key("admin-new-1"),
    };
    ok(net.call(0, Some(&admin), reset));
    net.settle();
    net.login(1, "admin", "admin-new-1");
}

#[test]
fn a_deleted_user_loses_roles_and_tokens_even_under_the_same_name_again() {
    let (mut net, admin, bob) = setup();
    assert_eq!(
        refused(net.call(0, Some(&admin), Command::DeleteUser { name: "admin".into() })).status(),
        409
    );
    assert_eq!(refused(net.call(0, Some(&bob), Command::DeleteUser { name: "admin".into() })).status(), 403);
    ok(net.call(0, Some(&admin), Command::DeleteUser { name: "bob".into() }));
    net.settle();
    assert_eq!(refused(net.call(2, Some(&bob), Command::Whoami)).status(), 401);
    let again = NewUser { name: "bob".into(), password: "bob-secret-1".into(), realm_admin: false };
    ok(net.call(1, Some(&admin), Command::CreateUser(again)));
    net.settle();
    // The old token names the same user name, but an earlier user.
    assert_eq!(refused(net.call(2, Some(&bob), Command::Whoami)).status(), 401);
    let fresh = net.login(2, "bob", "bob-secret-1");
    let Reply::Whoami(w) = ok(net.call(2, Some(&fresh), Command::Whoami)) else { panic!() };
    assert!(w.roles.is_empty(), "roles went with the old user: {:?}", w.roles);
}

#[test]
fn revoking_all_tokens_and_a_role() {
    let (mut net, admin, bob) = setup();
    assert_eq!(
        refused(net.call(0, Some(&bob), Command::RevokeTokens { user: "admin".into() })).status(),
        403
    );
    ok(net.call(0, Some(&admin), Command::RevokeTokens { user: "bob".into() }));
    net.settle();
    assert_eq!(refused(net.call(1, Some(&bob), Command::Whoami)).status(), 401);
    let bob = net.login(1, "bob", "bob-secret-1");
    ok(net.call(1, Some(&bob), Command::Whoami));
    let revoke = Command::RevokeRole { user: "bob".into(), project: "default".into() };
    assert_eq!(refused(net.call(1, Some(&bob), revoke.clone())).status(), 403);
    ok(net.call(1, Some(&admin), revoke.clone()));
    assert_eq!(refused(net.call(1, Some(&admin), revoke)).status(), 404);
    net.settle();
    assert_eq!(
        refused(net.call(2, Some(&bob), Command::ShowQuota { project: "default".into() })).status(),
        403
    );
}

fn delete_project(net: &mut Net, at: usize, token: &str, project: &str) -> ApiResult {
    let req = net.ask(at, token, Command::DeleteProject { project: project.into() });
    net.settle();
    net.reply(req).expect("answered")
}

#[test]
fn a_project_is_deleted_only_when_no_site_runs_it_and_every_site_is_known() {
    let (mut net, admin, _) = setup();
    let lab = NewProject {
        storage_mib: atoll_crdt::DEFAULT_STORAGE_MIB,
        name: "lab".into(),
        description: String::new(),
        quota: Resources::new(6, 6, 6000),
        spread: Spread::Even,
    };
    ok(net.call(0, Some(&admin), Command::CreateProject(lab)));
    ok(net.call(0, Some(&admin), Command::RegisterImage(crate::tests::image("lab", "img"))));
    net.settle();
    let e = refused(delete_project(&mut net, 0, &admin, "lab"));
    assert!(e.to_string().contains("still has images"), "{e}");
    // The image runs on s2: the project and the image are in use there.
    let new =
        serde_json::from_value(serde_json::json!({"name": "w", "project": "lab", "image": "img"})).unwrap();
    let req = net.ask(2, &admin, Command::CreateInstance(new));
    net.settle();
    for (i, image, _) in std::mem::take(&mut net.fetches) {
        net.input(i, Input::Fetched { digest: image.digest, result: Ok(()) });
    }
    net.settle();
    assert!(matches!(net.reply(req), Some(Ok(Reply::Instance(_)))), "{:?}", net.reply(req));
    let req = net.ask(0, &admin, Command::RemoveImage { project: "lab".into(), name: "img".into() });
    net.settle();
    let e = refused(net.reply(req).unwrap());
    assert!(e.to_string().contains("lab/w on s2"), "{e}");
    let req = net.ask(2, &admin, Command::DeleteInstance { project: "lab".into(), name: "w".into() });
    net.settle();
    assert!(net.reply(req).is_some_and(|r| r.is_ok()), "{:?}", net.reply(req));
    // Out of reach, s2 might have started another: not while it is.
    net.partition(2);
    let req = net.ask(0, &admin, Command::RemoveImage { project: "lab".into(), name: "img".into() });
    net.settle();
    net.fire(|t| matches!(t, TimerId::GatherWait { .. }));
    assert_eq!(refused(net.reply(req).unwrap()).status(), 504);
    net.heal();
    let req = net.ask(0, &admin, Command::RemoveImage { project: "lab".into(), name: "img".into() });
    net.settle();
    ok(net.reply(req).unwrap());
    ok(delete_project(&mut net, 0, &admin, "lab"));
    net.settle();
    assert_eq!(
        refused(net.call(1, Some(&admin), Command::ShowQuota { project: "lab".into() })).status(),
        404
    );
    // Created again, its total is what is asked, not added to what sites kept.
    let lab = NewProject {
        storage_mib: atoll_crdt::DEFAULT_STORAGE_MIB,
        name: "lab".into(),
        description: String::new(),
        quota: Resources::new(9, 9, 9000),
        spread: Spread::Even,
    };
    ok(net.call(0, Some(&admin), Command::CreateProject(lab)));
    let Reply::Quota(q) = ok(net.call(0, Some(&admin), Command::ShowQuota { project: "lab".into() })) else {
        panic!()
    };
    assert_eq!(q.total, Resources::new(9, 9, 9000));
}

#[test]
fn only_a_project_admin_removes_an_image() {
    let (mut net, _, bob) = setup();
    let req = net.ask(0, &bob, Command::RemoveImage { project: "default".into(), name: "nope".into() });
    net.settle();
    assert_eq!(refused(net.reply(req).unwrap()).status(), 403);
}

/// An admin of `default` on s0 only (carol) stays within s0: she cannot
/// make herself or anyone admin elsewhere, nor touch a wider binding.
#[test]
fn a_site_scoped_admin_grants_and_revokes_within_her_sites_only() {
    let (mut net, admin, _) = setup();
    let s0 = net.site(0);
    let s1 = net.site(1);
    for name in ["carol", "dave"] {
        let user = NewUser { name: name.into(), password: format!("{name}-secret-1"), realm_admin: false };
        ok(net.call(0, Some(&admin), Command::CreateUser(user)));
    }
    let grant = |user: &str, role, sites: Option<Vec<SiteId>>| {
        Command::GrantRole(Grant { user: user.into(), project: "default".into(), role, sites })
    };
    ok(net.call(0, Some(&admin), grant("carol", Role::Admin, Some(vec![s0.clone()]))));
    net.settle();
    let carol = net.login(0, "carol", "carol-secret-1");
    // Herself on every site, or dave on s1: beyond her reach.
    for g in [grant("carol", Role::Admin, None), grant("dave", Role::Reader, Some(vec![s1.clone()]))] {
        assert!(matches!(refused(net.call(0, Some(&carol), g)), ApiError::Forbidden(_)));
    }
    // Within s0: fine.
    ok(net.call(0, Some(&carol), grant("dave", Role::Member, Some(vec![s0.clone()]))));
    // bob is a member on every site: neither rewritten nor revoked by her.
    let narrower = grant("bob", Role::Reader, Some(vec![s0.clone()]));
    assert!(matches!(refused(net.call(0, Some(&carol), narrower)), ApiError::Forbidden(_)));
    let revoke = Command::RevokeRole { user: "bob".into(), project: "default".into() };
    assert!(matches!(refused(net.call(0, Some(&carol), revoke)), ApiError::Forbidden(_)));
    // Her own binding is unchanged, and a realm admin still reaches everywhere.
    assert_eq!(net.peers[0].realm().role("carol", "default").unwrap().unwrap().sites, Some(vec![s0]));
    ok(net.call(0, Some(&admin), grant("dave", Role::Admin, None)));
}

#[test]
fn realm_admins_keep_the_flavor_catalog_that_every_site_reads() {
    let (mut net, admin, bob) = setup();
    let tiny = crate::api::NewFlavor { name: "m1.tiny".into(), cpus: 1, memory_mib: 512, disk_mib: 1024 };
    let e = refused(net.call(0, Some(&bob), Command::CreateFlavor(tiny.clone())));
    assert_eq!(e.status(), 403, "{e}");
    ok(net.call(0, Some(&admin), Command::CreateFlavor(tiny.clone())));
    net.settle();
    let e = refused(net.call(1, Some(&admin), Command::CreateFlavor(tiny.clone())));
    assert!(e.to_string().contains("exists"), "{e}");
    let huge = crate::api::NewFlavor { cpus: 0, name: "zero".into(), ..tiny };
    assert_eq!(refused(net.call(0, Some(&admin), Command::CreateFlavor(huge))).status(), 400);
    net.settle();
    match ok(net.call(2, Some(&bob), Command::ListFlavors)) {
        Reply::Flavors(f) => assert_eq!(f.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), ["m1.tiny"]),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        refused(net.call(2, Some(&bob), Command::DeleteFlavor { name: "m1.tiny".into() })).status(),
        403
    );
    ok(net.call(2, Some(&admin), Command::DeleteFlavor { name: "m1.tiny".into() }));
    net.settle();
    assert!(matches!(ok(net.call(0, Some(&bob), Command::ListFlavors)), Reply::Flavors(f) if f.is_empty()));
}
