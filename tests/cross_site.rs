//! Cross-site operations between three real daemons on loopback: an image
//! uploaded on A boots on C (its chunks fetched from A and verified), instance
//! operations on B are issued through A's API, and an intent for a site that
//! is down waits for it and is applied once it is back.

use std::time::Duration;

use atoll_e2e::*;

const WAIT: Duration = Duration::from_secs(30);

/// The sites holding `image`, as `d` knows; none while its catalog entry has
/// not reached `d`.
fn holders(d: &Daemon, image: &str) -> Vec<String> {
    let out = d.cli().run(&["image", "show", image, "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["holders"].as_array().into_iter().flatten().filter_map(|h| h.as_str().map(str::to_owned)).collect()
}

/// The instance `name` on `d`'s own site.
fn instance(d: &Daemon, name: &str) -> Option<serde_json::Value> {
    let list = d.cli().json(&["instance", "list", "--site", &d.site]);
    list["instances"].as_array()?.iter().find(|i| i["name"] == name).cloned()
}

#[test]
fn images_and_instance_operations_cross_sites() {
    let root = tempfile::tempdir().unwrap();
    let a = Daemon::start(root.path(), "site-a");
    a.login_admin();
    let mut b = Daemon::join(root.path(), "site-b", &a.invite("site-b"), &a.password);
    let c = Daemon::join(root.path(), "site-c", &a.invite("site-c"), &a.password);
    b.login_admin();
    c.login_admin();
    for d in [&a, &b, &c] {
        assert!(eventually(WAIT, || d.reaches(3)), "{} does not reach every site", d.site);
    }
    // Quota rights for B and C (the realm's first site holds them all).
    for site in ["site-b", "site-c"] {
        let share = ["--instances", "3", "--cpus", "3", "--memory", "1024"];
        a.cli().ok(&[&["quota", "give", "default", "--to", site][..], &share].concat());
    }
    // The escrow's holes stay shut on a real daemon: an amount that would
    // wrap when multiplied by the recipients, a recipient named twice, and
    // more than the giver holds are refused, and nothing moves.
    let held = || a.cli().json(&["quota", "show", "default"])["available_here"].clone();
    let before = held();
    let give = |to: &str, instances: &str| {
        a.cli().fails(&[
            "quota",
            "give",
            "default",
            "--to",
            to,
            "--instances",
            instances,
            "--cpus",
            "1",
            "--memory",
            "1",
        ])
    };
    let err = give("site-b,site-c", "4611686018427387904");
    assert!(err.contains("quota values must lie within"), "{err}");
    let err = give("site-b,site-b", "1");
    assert!(err.contains("site-b is named twice"), "{err}");
    let err = give("site-b", "1000");
    assert!(err.contains("local quota share exhausted"), "{err}");
    assert_eq!(held(), before);

    // An image of three chunks, uploaded on A only.
    let file = padded_process_image(root.path(), "sleeper", "sleep 600\n", 9 << 20);
    a.cli().ok(&["image", "add", file.to_str().unwrap(), "--name", "sleeper"]);
    assert!(eventually(WAIT, || holders(&c, "sleeper") == ["site-a"]), "the catalog never reached site-c");

    // Booting it on C fetches it from A first.
    let out = c.cli().ok(&["instance", "create", "app", "--image", "sleeper"]);
    assert!(out.contains("running"), "{out}");
    assert_eq!(holders(&c, "sleeper"), ["site-a", "site-c"]);
    assert_eq!(instance(&c, "app").unwrap()["observed"], "running");

    // Through A's API, on B: B fetches from both holders, then runs it.
    let out = a.cli().ok(&["instance", "create", "web", "--image", "sleeper", "--site", "site-b"]);
    assert!(out.contains("running"), "{out}");
    let on_b = instance(&b, "web").expect("the instance is on site-b");
    assert_eq!(on_b["site"], "site-b");
    assert!(instance(&a, "web").is_none(), "nothing runs on site-a");
    let out = a.cli().ok(&["instance", "stop", "web", "--site", "site-b"]);
    assert!(out.contains("stopped"), "{out}");
    assert_eq!(instance(&b, "web").unwrap()["observed"], "stopped");
    a.cli().ok(&["instance", "delete", "web", "--site", "site-b"]);
    assert!(instance(&b, "web").is_none());
    let intents = a.cli().json(&["intent", "list"]);
    let intents = intents.as_array().unwrap();
    assert_eq!(intents.len(), 3, "{intents:?}");
    assert!(intents.iter().all(|i| i["state"] == "done" && i["target"] == "site-b"), "{intents:?}");

    // B is down: the intent waits, and is applied once B is back.
    b.kill9();
    let out =
        a.cli().ok(&["instance", "create", "late", "--image", "sleeper", "--site", "site-b", "--wait", "2"]);
    assert!(out.contains("pending"), "{out}");
    let id = out.split_whitespace().nth(1).expect("an intent id").to_owned();
    b.boot();
    let shown = a.cli().json(&["intent", "show", &id, "--wait", "60"]);
    assert_eq!(shown["state"], "done", "{shown}");
    assert!(eventually(WAIT, || instance(&b, "late").is_some_and(|i| i["observed"] == "running")));

    // Copies: to C (held already) and B (held already) answer at once; an
    // unknown site is an error.
    let out = a.cli().ok(&["image", "copy", "sleeper", "--to", "site-b,site-c"]);
    assert!(out.contains("site-b: holds") && out.contains("site-c: holds"), "{out}");
    let err = a.cli().fails(&["image", "copy", "sleeper", "--to", "nowhere"]);
    assert!(err.contains("no site nowhere"), "{err}");
}

/// Quota rights move on demand between real daemons: no `quota give`, yet
/// instances start on every site; when nothing in reach has rights to spare
/// the refusal says whom it asked and what the project's total is.
#[test]
fn rights_move_on_demand_and_refusals_say_where_they_are() {
    let root = tempfile::tempdir().unwrap();
    let mut a = Daemon::start(root.path(), "site-a");
    a.login_admin();
    let b = Daemon::join(root.path(), "site-b", &a.invite("site-b"), &a.password);
    let c = Daemon::join(root.path(), "site-c", &a.invite("site-c"), &a.password);
    b.login_admin();
    c.login_admin();
    for d in [&a, &b, &c] {
        assert!(eventually(WAIT, || d.reaches(3)), "{} does not reach every site", d.site);
    }
    let file = process_image(root.path(), "sleeper", "sleep 600\n");
    a.cli().ok(&["image", "add", file.to_str().unwrap(), "--name", "sleeper"]);
    assert!(eventually(WAIT, || holders(&c, "sleeper") == ["site-a"]));

    // Site-a holds the project's whole total; nobody gives anything by hand.
    let out =
        a.cli().ok(&["instance", "create", "one", "--image", "sleeper", "--site", "site-c", "--", &c.tag()]);
    assert!(out.contains("running"), "{out}");
    let out = b.cli().ok(&["instance", "create", "two", "--image", "sleeper", "--", &b.tag()]);
    assert!(out.contains("running"), "{out}");

    // Site-a goes; what it still holds is out of reach.
    a.kill9();
    assert!(eventually(WAIT, || !c.reaches(3)));
    let mut refusal = None;
    for i in 0..12 {
        let name = format!("c{i}");
        let out = c.cli().run(&["instance", "create", &name, "--image", "sleeper", "--", &c.tag()]);
        if !out.status.success() {
            refusal = Some(String::from_utf8_lossy(&out.stderr).into_owned());
            break;
        }
    }
    let refusal = refusal.expect("site-c never ran out of rights");
    assert!(refusal.contains("local quota share exhausted"), "{refusal}");
    assert!(refusal.contains("asked site-b") && refusal.contains("project total"), "{refusal}");
    assert!(refusal.contains("used realm-wide as known here"), "{refusal}");
    // Where the rights are, as site-c knows it: site-a out of reach.
    let rows = c.cli().json(&["quota", "show", "default", "--by-site"]);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
    let a_row = rows.iter().find(|r| r["site"] == "site-a").unwrap();
    assert_eq!(a_row["reachable"], false, "{a_row}");
    let c_row = rows.iter().find(|r| r["site"] == "site-c").unwrap();
    assert_eq!(c_row["source"], "document", "{c_row}");
    assert!(c_row["used"]["instances"].as_i64().unwrap() >= 1, "{c_row}");
    let table = c.cli().ok(&["quota", "show", "default", "--by-site"]);
    assert!(table.starts_with("SITE") && table.contains("site-a"), "{table}");
    // Site-a's document, held at site-c (a custodian), shows the rights it
    // kept: the refusal names it as holding spare rights out of reach.
    assert!(refusal.contains("spare rights out of reach at site-a ("), "{refusal}");
    assert_eq!(a_row["source"], "document", "{a_row}");
    assert!(a_row["free"]["instances"].as_i64().unwrap() > 0, "{a_row}");
}

/// One atoll: instances of every site are listed, read and acted on through
/// any site, with no `--site`; a site that dies stays listed with its last
/// known state, marked unreachable.
#[test]
fn the_realm_wide_view_lists_reads_and_acts_across_sites() {
    let root = tempfile::tempdir().unwrap();
    let a = Daemon::start(root.path(), "site-a");
    a.login_admin();
    let b = Daemon::join(root.path(), "site-b", &a.invite("site-b"), &a.password);
    let mut c = Daemon::join(root.path(), "site-c", &a.invite("site-c"), &a.password);
    // One login, on A, serves every endpoint of the realm: B and C prove
    // they are members before the CLI sends them the token.
    let home = a.home.path().to_owned();
    fn via<'d>(d: &'d Daemon, home: &std::path::Path) -> Cli<'d> {
        d.cli().home(home)
    }
    let via = |d| via(d, &home);
    for d in [&a, &b, &c] {
        assert!(
            eventually(WAIT, || via(d)
                .json(&["site", "list"])
                .as_array()
                .is_some_and(|r| r.len() == 3 && r.iter().all(|r| r["reachable"] == true))),
            "{} does not reach every site",
            d.site
        );
    }
    // Another realm's endpoint gets no token.
    let stranger = Daemon::start(root.path(), "site-x");
    let err = stranger.cli().home(a.home.path()).fails(&["instance", "list"]);
    assert!(err.contains("no token"), "{err}");
    drop(stranger);
    // A project whose rights move only by hand says so.
    a.cli().ok(&["project", "create", "lab", "--spread", "founder"]);
    let projects = a.cli().json(&["project", "list"]);
    assert!(projects.as_array().unwrap().iter().any(|p| p["name"] == "lab" && p["spread"] == "founder"));
    let file = process_image(root.path(), "talker", "echo \"hello from $1\"\nsleep 600\n");
    a.cli().ok(&["image", "add", file.to_str().unwrap(), "--name", "talker"]);
    for d in [&a, &b, &c] {
        let site = d.site.clone();
        let out = a.cli().ok(&[
            "instance",
            "create",
            &format!("on-{site}"),
            "--image",
            "talker",
            "--site",
            &site,
            "--",
            &site,
            &d.tag(),
        ]);
        assert!(out.contains("running"), "{out}");
    }
    // Listed on B with their sites.
    let list = via(&b).json(&["instance", "list"]);
    let mut seen: Vec<(String, String)> = list["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["name"].as_str().unwrap().to_owned(), i["site"].as_str().unwrap().to_owned()))
        .collect();
    seen.sort();
    let want: Vec<(String, String)> =
        ["site-a", "site-b", "site-c"].iter().map(|s| (format!("on-{s}"), s.to_string())).collect();
    assert_eq!(seen, want, "{list}");
    let table = via(&b).ok(&["instance", "list"]);
    assert!(table.starts_with("SITE"), "{table}");
    // Logs of C's instance through A, found with no --site.
    assert!(eventually(WAIT, || a
        .cli()
        .ok(&["instance", "logs", "on-site-c"])
        .contains("hello from site-c")));
    // Stop and start it through A, no --site either.
    assert!(a.cli().ok(&["instance", "stop", "on-site-c"]).contains("stopped"));
    assert_eq!(via(&c).json(&["instance", "show", "on-site-c"])["observed"], "stopped");
    assert!(a.cli().ok(&["instance", "start", "on-site-c"]).contains("running"));
    // A name on two sites needs --site.
    let out = via(&b).ok(&["instance", "create", "on-site-c", "--image", "talker", "--", "b", &b.tag()]);
    assert!(out.contains("running"), "{out}");
    let err = a.cli().fails(&["instance", "show", "on-site-c"]);
    assert!(err.contains("site-b and site-c") && err.contains("--site"), "{err}");
    assert_eq!(a.cli().json(&["instance", "show", "on-site-c", "--site", "site-b"])["site"], "site-b");
    via(&b).ok(&["instance", "delete", "on-site-c", "--site", "site-b"]);

    // C dies: A still lists its instance, marked unreachable with its age.
    c.kill9();
    assert!(eventually(WAIT, || !a.reaches(3)));
    let list = a.cli().json(&["instance", "list"]);
    assert!(list["instances"].as_array().unwrap().iter().any(|i| i["name"] == "on-site-c"), "{list}");
    let state = list["sites"].as_array().unwrap().iter().find(|s| s["site"] == "site-c").cloned().unwrap();
    assert_eq!(state["reachable"], false, "{state}");
    assert!(state["as_of"].as_u64().is_some(), "{state}");
    let table = a.cli().ok(&["instance", "list"]);
    assert!(table.contains("unreachable, known") && table.contains("site site-c is unreachable"), "{table}");
    let err = a.cli().fails(&["instance", "logs", "on-site-c"]);
    assert!(err.contains("cannot be reached") && err.contains("waited 5 s for its link"), "{err}");

    // C comes back on a new peer port: the first logs request through A,
    // sent before A's link to C is up again, waits for it and is answered.
    c.boot();
    let out = a.cli().ok(&["instance", "logs", "on-site-c"]);
    assert!(out.contains("hello from site-c"), "{out}");
}
