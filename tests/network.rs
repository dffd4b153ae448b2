//! Three real daemons on loopback forming one realm: joins by invitation,
//! replication of the realm, catching up after a crash, and refusal of
//! peers that are not members.

use std::process::{Command, Stdio};
use std::time::Duration;

use atoll_e2e::*;

const WAIT: Duration = Duration::from_secs(30);

fn rows(d: &Daemon) -> Vec<serde_json::Value> {
    d.cli().json(&["site", "list"]).as_array().cloned().unwrap_or_default()
}

fn all_reachable(d: &Daemon, n: usize) -> bool {
    let rows = rows(d);
    rows.len() == n && rows.iter().all(|r| r["reachable"] == true && !r["summary"].is_null())
}

/// Whether `d` heard a summary from every other site lately (they are
/// gossiped every 5 s). A summary that arrives once and then stops (a
/// gossipsub handler that nothing wakes: `node/src/net/nudge.rs`) fails it.
fn summaries_flow(d: &Daemon) -> bool {
    let rows = rows(d);
    let seen = |r: &serde_json::Value| r["last_seen"].as_u64().unwrap_or(0);
    let Some(now) = rows.iter().find(|r| r["member"]["site"] == d.site.as_str()).map(seen) else {
        return false;
    };
    rows.iter().all(|r| now.saturating_sub(seen(r)) <= 8_000)
}

/// Checks, after long enough for a stalled gossip path to show, that every
/// daemon still hears every other.
fn assert_summaries_flow(ds: &[&Daemon], when: &str) {
    std::thread::sleep(Duration::from_secs(12));
    for d in ds {
        assert!(summaries_flow(d), "{when}: {} stopped hearing summaries: {:?}", d.site, rows(d));
    }
}

#[test]
fn sites_join_replicate_catch_up_and_refuse_strangers() {
    let root = tempfile::tempdir().unwrap();
    let a = Daemon::start(root.path(), "site-a");
    a.login_admin();
    let b = Daemon::join(root.path(), "site-b", &a.invite("site-b"), &a.password);
    let for_c = a.invite("site-c");
    let mut c = Daemon::join(root.path(), "site-c", &for_c, &a.password);
    b.login_admin();
    c.login_admin();
    for d in [&a, &b, &c] {
        assert!(
            eventually(WAIT, || all_reachable(d, 3)),
            "{} does not see three reachable sites with summaries: {:?}",
            d.site,
            rows(d)
        );
    }
    assert_summaries_flow(&[&a, &b, &c], "after the joins");

    // A user created on A logs in on C (tokens verify offline on any site).
    a.cli().env("ATOLL_NEW_PASSWORD", "carol-password").ok(&["user", "create", "carol"]);
    let carol = tempfile::tempdir().unwrap();
    assert!(
        eventually(WAIT, || {
            c.cli()
                .home(carol.path())
                .env("ATOLL_PASSWORD", "carol-password")
                .run(&["login", "-u", "carol"])
                .status
                .success()
        }),
        "the user created on site-a never reached site-c"
    );

    // C misses writes while it is down, and catches up when it is back.
    c.kill9();
    a.cli().ok(&["project", "create", "while-away"]);
    b.cli().env("ATOLL_NEW_PASSWORD", "dave-password").ok(&["user", "create", "dave"]);
    c.boot();
    assert!(
        eventually(WAIT, || {
            let projects = c.cli().json(&["project", "list"]).to_string();
            let users = c.cli().json(&["user", "list"]).to_string();
            projects.contains("while-away") && users.contains("dave")
        }),
        "site-c did not catch up after its restart"
    );
    assert_summaries_flow(&[&a, &b, &c], "after site-c restarted");
    // C notes when the realm's changes reached it, by its own clock.
    let net = http(&c.addr(), "GET", "/v1/network", Some(&saved_token(&c)), b"").json();
    let at = net["changes_received_at"]["realm"].as_u64().unwrap_or(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!(at > 0 && at <= now && now - at < 120_000, "{net}");

    // An invitation admits one site: a second site presenting it is refused,
    // and the daemon says so and stops.
    let out = Command::new(binary())
        .args(["daemon", "--site", "site-x", "--api", "127.0.0.1:0", "--data-dir"])
        .arg(root.path().join("site-x"))
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--join", &for_c])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a reused invitation was accepted");
    assert!(stderr.contains("join refused"), "no clear refusal: {stderr}");

    // A peer of another realm that dials A is refused: A closes its
    // connection once the grace for presenting an invitation runs out, and
    // neither side lists the other.
    let a_addr = rows(&a)
        .iter()
        .find(|r| r["member"]["site"] == "site-a")
        .and_then(|r| r["member"]["addrs"][0].as_str().map(str::to_owned))
        .expect("site-a publishes an address");
    let refused_by_a = || {
        let net = http(&a.addr(), "GET", "/v1/network", Some(&saved_token(&a)), b"");
        net.json()["refused_peers"].as_u64().expect("counter")
    };
    let before = refused_by_a();
    let outsider = Daemon::start_args(root.path(), "outsider", &[], &["--bootstrap", &a_addr], None);
    outsider.login_admin();
    let refused = || refused_by_a() > before;
    assert!(eventually(WAIT, refused), "site-a never refused the outsider");
    assert_eq!(rows(&a).len(), 3);
    assert_eq!(rows(&outsider).len(), 1);
    assert!(rows(&outsider)[0]["member"]["site"] == "outsider");

    // A removed site is refused by every member, and learns it was removed:
    // its own tokens stop verifying.
    a.cli().ok(&["site", "remove", "site-c"]);
    for d in [&a, &b] {
        let gone = || rows(d).len() == 2 && rows(d).iter().all(|r| r["member"]["site"] != "site-c");
        assert!(eventually(WAIT, gone), "{} still lists site-c", d.site);
    }
    let not_member = || {
        let out = c.cli().run(&["project", "create", "from-removed"]);
        String::from_utf8_lossy(&out.stderr).contains("not a member")
    };
    assert!(eventually(WAIT, not_member), "site-c still acts as a member");
    let err = b.cli().fails(&["site", "remove", "site-b"]);
    assert!(err.contains("cannot remove itself"), "{err}");
}
