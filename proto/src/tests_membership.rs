//! Invitations and joins: who gets in, and who does not.

use atoll_crdt::{Member, SiteId};
use ed25519_dalek::SigningKey;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use crate::api::{NewUser, Reply, SiteRow};
use crate::membership::JoinRequest;
use crate::tests::config;
use crate::{ApiError, ApiResult, Command, Input, Outbox, Peer, auth};

const T0: u64 = 1_000_000;

fn call(p: &mut Peer, now: u64, token: Option<&str>, cmd: Command) -> ApiResult {
    let mut fx = Outbox::default();
    p.handle(now, Input::Api { req: 1, token: token.map(str::to_owned), cmd }, &mut fx);
    fx.replies.pop().expect("a reply").1
}

fn founder() -> (Peer, String) {
    let mut p = Peer::genesis(config(), T0, "admin-password").unwrap();
    p.boot(T0, &mut Outbox::default()).unwrap();
    p.set_addrs(T0, vec!["/ip4/127.0.0.1/udp/7481/quic-v1/p2p/x".into()], &mut Outbox::default()).unwrap();
    let login = Command::Login { user: "admin".into(), password: "admin-password".into() };
    let Ok(Reply::Token(t)) = call(&mut p, T0, None, login) else { panic!("admin login") };
    (p, t.token)
}

fn invite(p: &mut Peer, token: &str, name: Option<&str>) -> String {
    let name = name.map(|n| SiteId::new(n).unwrap());
    match call(p, T0, Some(token), Command::InviteSite { name, ttl_secs: Some(60) }) {
        Ok(Reply::Invitation(v)) => v.token,
        other => panic!("no invitation: {other:?}"),
    }
}

fn newcomer(name: &str, seed: u64) -> Member {
    let key = SigningKey::generate(&mut ChaCha20Rng::seed_from_u64(seed));
    Member {
        site: SiteId::new(name).unwrap(),
        public_key: auth::encode_key(&key.verifying_key()),
        region: "eu".into(),
        operator: "op".into(),
        joined_at: 0,
        addrs: vec![],
        invitation: None,
        api_cert: None,
    }
}

fn invitation_of(token: &str) -> crate::membership::Invitation {
    let inv = crate::membership::Invitation::read(token).unwrap();
    assert!(inv.realm.is_some(), "an invitation names its realm");
    inv
}

fn join(p: &mut Peer, now: u64, invitation: &str, member: &Member) -> Result<Vec<u8>, ApiError> {
    let req = JoinRequest { invitation: invitation.to_owned(), member: member.clone() };
    p.accept_join(now, &req, &mut Outbox::default())
}

#[test]
fn an_invitation_admits_one_site_once() {
    let (mut a, admin) = founder();
    let inv = invite(&mut a, &admin, Some("edge-2"));
    let b = newcomer("edge-2", 2);
    let realm = join(&mut a, T0 + 1, &inv, &b).unwrap();
    // A retry by the same site (its answer was lost) is answered again.
    assert!(join(&mut a, T0 + 2, &inv, &b).is_ok());
    // The newcomer starts from the realm it got, its record intact.
    let cfg = || {
        let mut cfg = config();
        cfg.key = SigningKey::generate(&mut ChaCha20Rng::seed_from_u64(2));
        cfg.descriptor.site = b.site.clone();
        cfg.descriptor.public_key = b.public_key.clone();
        cfg
    };
    // Only with the realm the invitation names.
    let mut elsewhere = invitation_of(&inv);
    elsewhere.realm = Some("another realm".into());
    let e = Peer::join_invited(cfg(), T0 + 3, &realm, &elsewhere).err().expect("refused");
    assert!(e.to_string().contains("not realm another realm"), "{e}");
    let joined = Peer::join_invited(cfg(), T0 + 3, &realm, &invitation_of(&inv)).unwrap();
    let record = joined.realm().member(&b.site).unwrap().unwrap();
    assert!(record.invitation.is_some(), "the consumed invitation stays recorded");
    // Another site with the same invitation, or under a taken name, is refused.
    let unnamed = invite(&mut a, &admin, None);
    assert!(join(&mut a, T0 + 4, &unnamed, &newcomer("edge-3", 3)).is_ok());
    let again = join(&mut a, T0 + 5, &unnamed, &newcomer("edge-4", 4)).unwrap_err();
    assert!(again.to_string().contains("already used"), "{again}");
    let fresh = invite(&mut a, &admin, None);
    let taken = join(&mut a, T0 + 6, &fresh, &newcomer("edge-2", 5)).unwrap_err();
    assert!(taken.to_string().contains("taken"), "{taken}");
    // A member's key under a new name is refused: one key, one site.
    let second_name = Member { site: SiteId::new("edge-5").unwrap(), ..b.clone() };
    let twice = join(&mut a, T0 + 6, &fresh, &second_name).unwrap_err();
    assert!(twice.to_string().contains("already site edge-2's"), "{twice}");
    let Ok(Reply::Sites(rows)) = call(&mut a, T0 + 7, Some(&admin), Command::ListSites) else { panic!() };
    let rows: Vec<SiteRow> = rows;
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().filter(|r| r.reachable).count() == 1, "only the serving site is reachable here");
}

#[test]
fn forged_expired_misnamed_and_unauthorised_invitations_are_refused() {
    let (mut a, admin) = founder();
    let inv = invite(&mut a, &admin, Some("edge-2"));
    let b = newcomer("edge-2", 2);
    let refused = |r: Result<Vec<u8>, ApiError>| matches!(r, Err(ApiError::Forbidden(m)) if m.starts_with("join refused"));
    assert!(refused(join(&mut a, T0 + 61_000, &inv, &b)), "expired");
    assert!(refused(join(&mut a, T0 + 1, &inv, &newcomer("edge-9", 9))), "another name");
    // Sealed by a key that is not the issuer's.
    let (_, sealed) = inv.split_once('.').unwrap();
    let (body, _) = sealed.split_once('.').unwrap();
    let other = SigningKey::generate(&mut ChaCha20Rng::seed_from_u64(99));
    let forged = format!("atoll-invite.{body}.{}", auth::seal(&other, &"x").split_once('.').unwrap().1);
    assert!(refused(join(&mut a, T0 + 1, &forged, &b)), "forged");
    for junk in ["", "atoll-invite.", "atoll-invite.a.b", "nonsense"] {
        assert!(refused(join(&mut a, T0 + 1, junk, &b)), "{junk:?}");
    }
    // Only realm admins invite.
    let bob = NewUser { name: "bob".into(), password: "bob-password".into(), realm_admin: false };
    call(&mut a, T0, Some(&admin), Command::CreateUser(bob)).unwrap();
    let login = Command::Login { user: "bob".into(), password: "bob-password".into() };
    let Ok(Reply::Token(t)) = call(&mut a, T0, None, login) else { panic!() };
    let no = call(&mut a, T0, Some(&t.token), Command::InviteSite { name: None, ttl_secs: None });
    assert!(matches!(no, Err(ApiError::Forbidden(_))));
}

#[test]
fn a_removed_site_cannot_come_back_with_its_key_or_invitation() {
    let (mut a, admin) = founder();
    let inv = invite(&mut a, &admin, None);
    let b = newcomer("edge-2", 2);
    join(&mut a, T0, &inv, &b).unwrap();
    let edge2 = SiteId::new("edge-2").unwrap();
    // Only a realm admin removes, and never the site serving the call.
    let bob = NewUser { name: "bob".into(), password: "bob-password".into(), realm_admin: false };
    call(&mut a, T0, Some(&admin), Command::CreateUser(bob)).unwrap();
    let login = Command::Login { user: "bob".into(), password: "bob-password".into() };
    let Ok(Reply::Token(bob)) = call(&mut a, T0, None, login) else { panic!() };
    let by_bob = call(&mut a, T0, Some(&bob.token), Command::RemoveSite { site: edge2.clone() });
    assert!(matches!(by_bob, Err(ApiError::Forbidden(_))), "{by_bob:?}");
    let me = a.site().clone();
    let itself = call(&mut a, T0, Some(&admin), Command::RemoveSite { site: me });
    assert!(matches!(itself, Err(ApiError::Conflict(_))), "{itself:?}");

    call(&mut a, T0, Some(&admin), Command::RemoveSite { site: edge2.clone() }).unwrap();
    assert!(a.realm().member(&edge2).unwrap().is_none());
    let Ok(Reply::Sites(rows)) = call(&mut a, T0, Some(&admin), Command::ListSites) else { panic!() };
    assert_eq!(rows.len(), 1);
    // Its retry with the same invitation, and a new invitation for its key, are refused.
    let again = join(&mut a, T0, &inv, &b);
    assert!(matches!(&again, Err(ApiError::Forbidden(m)) if m.contains("removed")), "{again:?}");
    let fresh = invite(&mut a, &admin, None);
    let back = join(&mut a, T0, &fresh, &b);
    assert!(matches!(&back, Err(ApiError::Forbidden(m)) if m.contains("removed")), "{back:?}");
    // Its name stays taken, even by another key (the removed site's document
    // lives on at its custodians); another name is fine.
    let reused = join(&mut a, T0, &fresh, &newcomer("edge-2", 3));
    assert!(matches!(&reused, Err(ApiError::Forbidden(m)) if m.contains("removed site")), "{reused:?}");
    join(&mut a, T0, &fresh, &newcomer("edge-3", 3)).unwrap();
    // Removing that one too keeps the first removal: removals are keyed by key.
    call(&mut a, T0, Some(&admin), Command::RemoveSite { site: SiteId::new("edge-3").unwrap() }).unwrap();
    let newest = invite(&mut a, &admin, None);
    let back = join(&mut a, T0, &newest, &b);
    assert!(matches!(&back, Err(ApiError::Forbidden(m)) if m.contains("removed")), "{back:?}");
    let gone = call(&mut a, T0, Some(&admin), Command::RemoveSite { site: SiteId::new("nowhere").unwrap() });
    assert!(matches!(gone, Err(ApiError::NotFound(_))));
}
