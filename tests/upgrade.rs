//! Versions side by side (docs/architecture.md, "Versions side by side"): an
//! atoll of the previous release (the commit named in `.ci/previous-release`,
//! built by `.ci/run` into `ATOLL_PREVIOUS_BIN`) and this build, each site in
//! a network namespace of its own (`atoll_e2e::netlab`).
//!
//! Site 1 (previous) founds the realm, site 2 (this build) joins through it,
//! site 3 (previous) joins through site 2. The mixed atoll then creates
//! instances on every site, boots images held by a site of the other release
//! through a third site, and comes through a partition of the new site and
//! its heal. Then the previous-release sites are upgraded one at a time while
//! the others keep serving: each comes back with its instances and its peers
//! see it run this release. A token the previous release sealed is refused
//! once the user has a key (their first login on this build made one): the
//! user logs in again. The upgrade finishes with the admin's consent, and
//! a site invited before it joins after it.
//!
//! Needs root (namespaces, iptables) and the previous binary: ignored by
//! `cargo test`; `.ci/run` runs it with `--ignored`.

use std::path::PathBuf;
use std::time::Duration;

use atoll_e2e::netlab::Lab;
use atoll_e2e::*;

const WAIT: Duration = Duration::from_secs(60);

fn name(i: usize) -> String {
    format!("site-{}", i + 1)
}

/// The names of the instances `d` lists realm-wide, with their sites.
fn listed(d: &Daemon) -> Vec<(String, String)> {
    let list = d.cli().json(&["instance", "list"]);
    let mut seen: Vec<(String, String)> = list["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["observed"] == "running")
        .map(|i| (i["name"].as_str().unwrap_or("").to_owned(), i["site"].as_str().unwrap_or("").to_owned()))
        .collect();
    seen.sort();
    seen
}

/// What site `i` knows of its link to `to` (`GET /v1/network`), this build
/// only, once it is connected and `settled` holds, or after [`WAIT`]. A link
/// may be between connections for a moment: a peer that restarted before its
/// old connection timed out is reconnected once (docs/architecture.md,
/// "The peer network"), and a reconnected link tells its peer's release only
/// once identify has run.
fn link(
    lab: &Lab,
    i: usize,
    d: &Daemon,
    to: &str,
    settled: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let token = saved_token(d);
    let addr = d.addr();
    let now = || {
        let reply = lab.within(i, || http(&addr, "GET", "/v1/network", Some(&token), b""));
        let links = reply.json()["links"].clone();
        links.as_array().into_iter().flatten().find(|l| l["site"] == to).cloned().unwrap_or_default()
    };
    let connected =
        |l: &serde_json::Value| l["quic"].as_u64().unwrap_or(0) + l["tcp"].as_u64().unwrap_or(0) > 0;
    let mut seen = now();
    eventually(WAIT, || {
        seen = now();
        connected(&seen) && settled(&seen)
    });
    seen
}

/// Who reaches whom, as site `i` can tell (`GET /v1/sites/reachability`):
/// per site, the sites it reaches, or None when unknown.
fn reach(lab: &Lab, i: usize, d: &Daemon) -> Vec<(String, Option<Vec<String>>)> {
    let token = saved_token(d);
    let addr = d.addr();
    let reply = lab.within(i, || http(&addr, "GET", "/v1/sites/reachability", Some(&token), b""));
    let view = reply.json();
    let names = |v: &serde_json::Value| -> Option<Vec<String>> {
        Some(v.as_array()?.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
    };
    let rows = view.as_array().cloned().unwrap_or_default();
    rows.iter().map(|r| (r["site"].as_str().unwrap_or("").to_owned(), names(&r["reaches"]))).collect()
}

/// The release `d` knows site `site` runs (from its gossiped descriptor).
fn release(d: &Daemon, site: &str) -> Option<String> {
    let rows = d.cli().json(&["site", "list"]);
    let row = rows.as_array()?.iter().find(|r| r["member"]["site"] == site)?.clone();
    row["summary"]["descriptor"]["version"].as_str().map(str::to_owned)
}

/// Creates instance `instance` of `image` on `site` through `via`; it must run.
fn create(via: &Daemon, instance: &str, image: &str, site: &str, tag: &str) {
    let out = via.cli().ok(&["instance", "create", instance, "--image", image, "--site", site, "--", tag]);
    assert!(out.contains("running"), "{instance} on {site} through {}: {out}", via.site);
}

#[test]
#[ignore = "needs the previous release's binary (ATOLL_PREVIOUS_BIN) and root; .ci/run runs it"]
fn a_mixed_atoll_serves_heals_and_upgrades_one_site_at_a_time() {
    let Some(previous) = std::env::var_os("ATOLL_PREVIOUS_BIN").map(PathBuf::from) else {
        return unavailable("ATOLL_PREVIOUS_BIN names no previous release binary (.ci/run builds one)");
    };
    assert!(previous.exists(), "{} does not exist", previous.display());
    let lab = match Lab::create(4) {
        Ok(lab) => lab,
        Err(why) => return unavailable(&format!("no network namespaces: {why}")),
    };
    let root = tempfile::tempdir().unwrap();
    let at = |i: usize| (lab.ns(i), lab.ip(i));
    let start = |i: usize, join: Option<(&str, &str)>, program: Option<&std::path::Path>| {
        let (ns, ip) = at(i);
        let args: Vec<&str> = join.map(|(inv, _)| vec!["--join", inv]).unwrap_or_default();
        let d = Daemon::start_in_as(root.path(), &name(i), (&ns, &ip), &args, join.map(|j| j.1), program);
        d.login_admin();
        d
    };
    // Previous, this build, previous; each joining through the other release.
    let first = start(0, None, Some(&previous));
    let password = first.password.clone();
    let inv = first.invite(&name(1));
    let second = start(1, Some((&inv, &password)), None);
    let inv = second.invite(&name(2));
    let third = start(2, Some((&inv, &password)), Some(&previous));
    let mut sites = vec![first, second, third];
    for d in &sites {
        assert!(eventually(WAIT, || d.reaches(3)), "{} does not reach every site", d.site);
    }
    // This build speaks the previous release's wire version to it, and
    // tells that it does not know which release it runs.
    let seen = link(&lab, 1, &sites[1], &name(0), |_| true);
    assert_eq!(seen["wire"], atoll_proto::wire::OLDEST, "{seen}");
    assert!(seen["release"].is_null(), "{seen}");
    // A question of wire version 3 goes to no site of the previous release:
    // their rows are unknown, and they stay connected.
    let view = reach(&lab, 1, &sites[1]);
    let others = Some(vec![name(0), name(2)]);
    assert_eq!(view, vec![(name(0), None), (name(1), others), (name(2), None)]);
    assert!(sites[0].reaches(3) && sites[2].reaches(3), "an old site lost a new one");
    assert!(eventually(WAIT, || release(&sites[1], &name(0)).is_some()), "no summary of site-1");
    let previous_version = release(&sites[1], &name(0)).unwrap_or_default();
    assert_ne!(previous_version, env!("CARGO_PKG_VERSION"), "the previous release has the same version");

    let total = ["--instances", "30", "--cpus", "30", "--memory", "8192"];
    sites[0].cli().ok(&[&["quota", "set", "default"][..], &total].concat());
    for i in 1..3 {
        let share = ["--instances", "8", "--cpus", "8", "--memory", "2048"];
        sites[0].cli().ok(&[&["quota", "give", "default", "--to", &name(i)][..], &share].concat());
    }
    // Each release's image boots on a site of the other, through a third.
    let new_image = process_image(root.path(), "from-new", "sleep 600\n");
    sites[1].cli().ok(&["image", "add", new_image.to_str().unwrap(), "--name", "from-new"]);
    let old_image = process_image(root.path(), "from-old", "sleep 600\n");
    sites[2].cli().ok(&["image", "add", old_image.to_str().unwrap(), "--name", "from-old"]);
    for d in &sites {
        let both = || {
            d.cli().run(&["image", "show", "from-new"]).status.success()
                && d.cli().run(&["image", "show", "from-old"]).status.success()
        };
        assert!(eventually(WAIT, both), "the catalog never reached {}", d.site);
    }
    create(&sites[0], "new-on-old", "from-new", &name(2), &sites[2].tag());
    create(&sites[2], "old-on-new", "from-old", &name(1), &sites[1].tag());
    for (i, d) in sites.iter().enumerate() {
        create(d, &format!("local-{}", i + 1), "from-new", &name(i), &d.tag());
    }

    // The new site cut off: both sides go on; an intent for it waits.
    lab.isolate(1).unwrap();
    assert!(eventually(WAIT, || !sites[0].reaches(3) && !sites[1].reaches(3)), "the cut was not noticed");
    create(&sites[1], "cut-local", "from-new", &name(1), &sites[1].tag());
    let out = sites[0].cli().ok(&[
        "instance",
        "create",
        "across",
        "--image",
        "from-new",
        "--site",
        &name(1),
        "--wait",
        "1",
        "--",
        &sites[1].tag(),
    ]);
    assert!(out.contains("pending"), "{out}");
    let intent = out.split_whitespace().nth(1).expect("an intent id").to_owned();
    lab.heal().unwrap();
    let shown = sites[0].cli().json(&["intent", "show", &intent, "--wait", "60"]);
    assert_eq!(shown["state"], "done", "{shown}");
    let mut want: Vec<(String, String)> = vec![
        ("across".into(), name(1)),
        ("cut-local".into(), name(1)),
        ("local-1".into(), name(0)),
        ("local-2".into(), name(1)),
        ("local-3".into(), name(2)),
        ("new-on-old".into(), name(2)),
        ("old-on-new".into(), name(1)),
    ];
    want.sort();
    for d in &sites {
        assert!(eventually(WAIT, || listed(d) == want), "{} lists {:?}", d.site, listed(d));
    }

    // A user the previous release created has no key until they log in on
    // this build (or an admin sets their password).
    sites[0].cli().env("ATOLL_NEW_PASSWORD", "dave-password-1").ok(&["user", "create", "dave"]);

    // The realm's floor cannot rise while sites of the previous release
    // would be shut out of cross-site operations.
    let e = sites[1].cli().fails(&["site", "finish-upgrade"]);
    assert!(e.contains("not every site is heard running this release") && e.contains(&name(0)), "{e}");

    // A rolling upgrade: one previous-release site at a time, while the
    // others serve.
    for i in [0, 2] {
        sites[i].terminate();
        let other = (i + 1) % 3;
        let label = format!("while-{}-down", i + 1);
        create(&sites[other], &label, "from-new", &name(other), &sites[other].tag());
        want.push((label, name(other)));
        want.sort();
        sites[i].restart_as(None);
        // The admin logged in on this build before (site 2), which gave them
        // a key: a token the previous release sealed alone is refused now.
        let e = sites[i].cli().fails(&["instance", "list"]);
        assert!(e.contains("not signed by the user"), "{e}");
        sites[i].login_admin();
        for d in &sites {
            assert!(
                eventually(WAIT, || d.reaches(3)),
                "{} does not reach every site after the upgrade",
                d.site
            );
        }
        let now = env!("CARGO_PKG_VERSION");
        for d in &sites {
            let upgraded = || release(d, &name(i)).as_deref() == Some(now);
            assert!(eventually(WAIT, upgraded), "{} sees {} run {:?}", d.site, name(i), release(d, &name(i)));
        }
        let seen = link(&lab, 1, &sites[1], &name(i), |l| l["release"] == now);
        assert_eq!(seen["release"], now, "{seen}");
        assert_eq!(seen["wire"], atoll_proto::wire::VERSION, "{seen}");
        for d in &sites {
            assert!(eventually(WAIT, || listed(d) == want), "{} lists {:?}", d.site, listed(d));
        }
    }
    // All on this build: every site answers who it reaches.
    let all = |i: usize| (0..3).filter(|j| *j != i).map(name).collect::<Vec<_>>();
    let full: Vec<_> = (0..3).map(|i| (name(i), Some(all(i)))).collect();
    assert!(eventually(WAIT, || reach(&lab, 1, &sites[1]) == full), "{:?}", reach(&lab, 1, &sites[1]));
    // Nor while a user has no key: once it rises, any member could claim one.
    let has_dave = || sites[1].cli().json(&["user", "list"]).to_string().contains("dave");
    assert!(eventually(WAIT, has_dave), "site 2 never heard of dave");
    let e = sites[1].cli().fails(&["site", "finish-upgrade"]);
    assert!(e.contains("users without a key") && e.contains("dave"), "{e}");
    sites[1].cli().env("ATOLL_NEW_PASSWORD", "dave-password-2").ok(&["user", "passwd", "dave"]);
    // An invitation issued before the floor rises carries the admin's
    // consent all the same: it still admits a site after.
    let early = sites[1].invite(&name(3));
    // The upgrade finished: from now on an intent needs its user's consent,
    // which this build's tokens carry.
    let view = sites[1].cli().json(&["site", "finish-upgrade"]);
    assert_eq!(view["floor"], u64::from(atoll_proto::wire::VERSION), "{view}");
    for (i, d) in sites.iter().enumerate() {
        let addr = d.addr();
        let floor =
            || lab.within(i, || http(&addr, "GET", "/v1/realm", None, b"")).json()["floor"] == view["floor"];
        assert!(eventually(WAIT, floor), "{} does not see the new floor", d.site);
    }
    create(&sites[2], "after", "from-old", &name(0), &sites[0].tag());
    // Users and roles are now signed statements (docs/architecture.md,
    // "Realm rules on content"): the admin's, written on one site, are taken
    // by the others, beside the records the old release wrote.
    sites[1].cli().env("ATOLL_NEW_PASSWORD", "carol-password").ok(&["user", "create", "carol"]);
    sites[1].cli().ok(&["role", "grant", "carol", "default", "member"]);
    for d in &sites {
        let has_carol = || d.cli().json(&["role", "list"]).to_string().contains("carol");
        assert!(eventually(WAIT, has_carol), "{} did not take carol's role", d.site);
    }
    let fourth = start(3, Some((&early, &password)), None);
    for d in sites.iter().chain([&fourth]) {
        assert!(eventually(WAIT, || d.reaches(4)), "{} does not reach the site that joined last", d.site);
    }
}
