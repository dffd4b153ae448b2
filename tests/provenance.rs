//! A tampered member among honest ones (docs/architecture.md, "Provenance"):
//! a build with the `tamper` feature, started with `ATOLL_TAMPER=forge`,
//! gives itself quota rights in every other site's document it holds, at each
//! repair round (every 30 s). The honest sites refuse every such change,
//! count it in `/metrics` and keep their state, while the tampered site
//! believes its own forgery. It also seals itself a realm-admin token without
//! the admin's password (docs/architecture.md, "Delegated authority"): the
//! honest sites refuse it, as the admin's key did not sign it; and it asks
//! them for instances "from admin" in intents without the admin's consent,
//! which they refuse; and it writes a realm admin under its own name that no
//! realm admin consented to, which the realm's rules refuse
//! (docs/architecture.md, "Realm rules on content").
//!
//! Needs the tampered binary: `.ci/run` builds it with the simulator's
//! sabotage build and runs this test with ATOLL_TAMPERED_BIN set:
//!
//!     cargo build --release -p atoll --features tamper
//!     ATOLL_TAMPERED_BIN=$PWD/target/release/atoll cargo test -p atoll --test provenance -- --ignored

use std::time::Duration;

use atoll_e2e::{Daemon, eventually, http};

/// `atoll_changes_refused_total` on `d` (its /metrics is open to loopback).
fn refused(d: &Daemon) -> u64 {
    let body = http(&d.addr(), "GET", "/metrics", None, b"").body;
    body.lines()
        .find_map(|l| l.strip_prefix("atoll_changes_refused_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The rights of project `default` each honest site holds, as `d` knows them.
fn honest_rights(d: &Daemon) -> Vec<(String, i64)> {
    rights(d).into_iter().filter(|(s, _)| s != "site-m").collect()
}

/// The rights of project `default` each site holds, as `d` knows them.
fn rights(d: &Daemon) -> Vec<(String, i64)> {
    let v = d.cli().json(&["quota", "show", "default", "--by-site"]);
    let mut rows: Vec<(String, i64)> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| (r["site"].as_str().unwrap_or("").to_owned(), r["free"]["instances"].as_i64().unwrap_or(-1)))
        .collect();
    rows.sort();
    rows
}

#[test]
#[ignore = "needs a tampered build in ATOLL_TAMPERED_BIN (.ci/run's sabotage stage runs it)"]
fn a_tampered_member_cannot_give_itself_rights_in_other_sites_documents() {
    let Ok(tampered) = std::env::var("ATOLL_TAMPERED_BIN") else {
        panic!(
            "ATOLL_TAMPERED_BIN names no tampered build (cargo build --release -p atoll --features tamper)"
        );
    };
    let tampered = std::fs::canonicalize(&tampered).expect("the tampered binary exists");
    let root = tempfile::tempdir().unwrap();
    let a = Daemon::start(root.path(), "site-a");
    a.login_admin();
    let b = Daemon::join(root.path(), "site-b", &a.invite("site-b"), &a.password);
    b.login_admin();
    let env = [("ATOLL_TEST_BINARY", tampered.to_str().unwrap()), ("ATOLL_TAMPER", "forge")];
    let inv = a.invite("site-m");
    let m = Daemon::start_args(root.path(), "site-m", &env, &["--join", &inv], Some(&a.password));
    m.login_admin();
    for d in [&a, &b, &m] {
        assert!(eventually(Duration::from_secs(20), || d.reaches(3)), "{} does not reach every site", d.site);
    }
    let before_a = honest_rights(&a);
    let before_b = honest_rights(&b);
    // Its own admin token is no token elsewhere.
    let forged = std::fs::read_to_string(m.data.join("forged-admin-token")).expect("the forged token");
    for d in [&a, &b] {
        let reply = http(&d.addr(), "GET", "/v1/users", Some(forged.trim()), b"");
        assert_eq!(reply.status, 401, "{} took the forged admin token: {}", d.site, reply.body);
        assert!(reply.body.contains("not signed by the user"), "{}", reply.body);
    }
    // The first repair round comes 30 s after start.
    assert!(
        eventually(Duration::from_secs(70), || refused(&a) > 0 && refused(&b) > 0),
        "the honest sites refused nothing (a: {}, b: {})",
        refused(&a),
        refused(&b)
    );
    // The tampered site gave away rights it never held (its own view shows
    // it short); the others never took its forgeries into their documents,
    // and count none of the rights it gave them.
    assert!(
        eventually(Duration::from_secs(10), || rights(&m).iter().any(|(s, n)| s == "site-m" && *n < 0)),
        "the tampered build did not forge: {:?}",
        rights(&m)
    );
    assert_eq!(honest_rights(&a), before_a, "site-a's view of the rights changed");
    assert_eq!(honest_rights(&b), before_b, "site-b's view of the rights changed");
    // The realm admin it wrote under its own name, consented to by no realm
    // admin, is refused by the realm's rules.
    let users = |d: &Daemon| d.cli().json(&["user", "list"]).to_string();
    assert!(users(&m).contains("forged-admin"), "the tampered build did not forge a user: {}", users(&m));
    for d in [&a, &b] {
        assert!(!users(d).contains("forged-admin"), "{} took the forged realm admin: {}", d.site, users(d));
    }
    // Its intents "from admin" (in its own document: a change it may write)
    // are refused by their targets for want of the admin's consent.
    for d in [&a, &b] {
        let refused_intent = || {
            let listed = d.cli().json(&["intent", "list"]);
            listed.as_array().into_iter().flatten().any(|i| {
                i["requester"] == "site-m"
                    && i["target"] == d.site.as_str()
                    && i["state"] == "failed"
                    && i["detail"].as_str().unwrap_or("").contains("carries no consent")
            })
        };
        assert!(
            eventually(Duration::from_secs(10), refused_intent),
            "{} did not refuse site-m's intent: {}",
            d.site,
            d.cli().json(&["intent", "list"])
        );
    }
    // The honest sites still work together.
    a.cli().ok(&["project", "create", "after"]);
    assert!(
        eventually(Duration::from_secs(10), || b.cli().run(&["quota", "show", "after"]).status.success()),
        "a change of site-a's no longer reaches site-b"
    );
}
