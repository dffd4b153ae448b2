//! Deployment plans against three real daemons: the example file of
//! `examples/` is placed one web replica per site with the cache beside one
//! of them, and a site that goes down is filtered out with its reason.

use std::path::Path;
use std::time::Duration;

use atoll_e2e::*;

const WAIT: Duration = Duration::from_secs(30);

fn example() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop.toml").to_str().unwrap().to_owned()
}

fn service<'a>(plan: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    plan["services"].as_array().unwrap().iter().find(|s| s["service"] == name).unwrap()
}

fn chosen(s: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> =
        s["chosen"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()).collect();
    v.sort();
    v
}

/// Every site's summary heard, so that the plan sees them all.
fn summaries_heard(plan: &serde_json::Value) -> bool {
    plan["services"][0]["rows"].as_array().is_some_and(|rows| {
        rows.iter().all(|r| r["filter"].get("filter").and_then(|f| f.as_str()) != Some("no_summary"))
    })
}

#[test]
fn the_example_deployment_is_planned_over_the_sites_and_a_lost_site_is_filtered_out() {
    let root = tempfile::tempdir().unwrap();
    let (mut sites, _) = loopback_realm(root.path(), 3);
    let image = process_image(root.path(), "hello", "echo hello\nsleep 600\n");
    sites[0].cli().ok(&["image", "add", image.to_str().unwrap(), "--name", "hello"]);

    let file = example();
    let mut plan = serde_json::Value::Null;
    let heard = eventually(WAIT, || {
        plan = sites[0].cli().json(&["deploy", "plan", &file]);
        summaries_heard(&plan)
    });
    assert!(heard, "summaries never reached site-1: {plan}");
    let web = service(&plan, "web");
    assert_eq!(chosen(web), ["site-1", "site-2", "site-3"], "one web replica per site: {web}");
    let cache = service(&plan, "cache");
    assert_eq!(chosen(cache).len(), 1, "{cache}");
    assert_eq!(plan["by"], "site-1");

    // The table names each site's verdict.
    let table = sites[0].cli().ok(&["deploy", "plan", &file]);
    assert!(table.contains("Service web: 3 replicas, 0 running, 3 placed, 0 short"), "{table}");

    // site-3 goes down: its row says so, and the third web replica has nowhere to go.
    sites[2].kill9();
    assert!(eventually(WAIT, || !sites[0].reaches(3)), "site-1 still reaches site-3");
    let plan = sites[0].cli().json(&["deploy", "plan", &file]);
    let web = service(&plan, "web");
    assert_eq!(chosen(web), ["site-1", "site-2"], "{web}");
    assert_eq!(web["short"], 1);
    let row3 = web["rows"].as_array().unwrap().iter().find(|r| r["site"] == "site-3").unwrap();
    assert_eq!(row3["filter"]["filter"], "unreachable", "{row3}");
    let table = sites[0].cli().ok(&["deploy", "plan", &file]);
    assert!(table.contains("filtered: unreachable") && table.contains("short: no site passes"), "{table}");

    // A file that is not a deployment is refused before anything is sent.
    let bad = root.path().join("bad.toml");
    std::fs::write(&bad, "name = \"x\"\nproject = \"default\"\n[services.a]\nimage = \"hello\"\nreplicas = 1\nplacement = { region = [\"eu\"] }\n").unwrap();
    let err = sites[0].cli().fails(&["deploy", "plan", bad.to_str().unwrap()]);
    assert!(err.contains("is not a deployment") && err.contains("region"), "{err}");
    let missing = root.path().join("nope.toml");
    let err = sites[0].cli().fails(&["deploy", "plan", missing.to_str().unwrap()]);
    assert!(err.contains("cannot read"), "{err}");
}

/// The replicas of `service` in a `deploy show --output json`: (name, site).
fn copies(view: &serde_json::Value, service: &str) -> Vec<(String, String)> {
    let Some(s) = view["services"].as_array().and_then(|a| a.iter().find(|s| s["service"] == service)) else {
        return Vec::new();
    };
    let mut v: Vec<(String, String)> = s["copies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["observed"] == "running" && c["outdated"] == false)
        .map(|c| (c["name"].as_str().unwrap().to_owned(), c["site"].as_str().unwrap().to_owned()))
        .collect();
    v.sort();
    v
}

fn all_copies(view: &serde_json::Value, service: &str) -> usize {
    view["services"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["service"] == service))
        .map_or(0, |s| s["copies"].as_array().unwrap().len())
}

fn shop(web: u32, cache_args: &str) -> String {
    format!(
        r#"name = "shop"
project = "default"

[services.web]
image = "hello"
replicas = {web}
memory_mib = 32
args = ["web"]
lost_after = "4s"
on_heal = "keep_original"
placement = {{ avoid = ["web"] }}

[services.cache]
image = "hello"
replicas = 1
memory_mib = 32
args = ["{cache_args}"]
placement = {{ with = ["web"], regions = ["default"] }}
"#
    )
}

#[test]
fn a_deployment_is_placed_scaled_updated_and_replaced_after_a_lost_site() {
    let root = tempfile::tempdir().unwrap();
    let (mut sites, _) = loopback_realm(root.path(), 3);
    let image = process_image(root.path(), "hello", "echo hello $1\nsleep 600\n");
    sites[0].cli().ok(&["image", "add", image.to_str().unwrap(), "--name", "hello"]);
    for s in &sites[1..] {
        s.login_admin();
    }
    let file = root.path().join("shop.toml");
    let f = file.to_str().unwrap().to_owned();
    // Asked through `d`, answered by the deployment's reconciler as `d`
    // sees it (the one site sent every replica's document).
    let show = |sites: &[Daemon], d: usize| {
        let v = sites[d].cli().json(&["deploy", "show", "shop"]);
        let Some(r) = v["reconciler"].as_str() else { return v };
        let i: usize = r.trim_start_matches("site-").parse::<usize>().unwrap() - 1;
        // A reconciler just killed is still named until it is missed.
        let out = sites[i].cli().run(&["deploy", "show", "shop", "--output", "json"]);
        serde_json::from_slice(&out.stdout).unwrap_or(v)
    };

    // Every summary heard first, so that the plan sees three sites.
    assert!(eventually(WAIT, || {
        std::fs::write(&file, shop(2, "cache")).unwrap();
        summaries_heard(&sites[0].cli().json(&["deploy", "plan", &f]))
    }));
    let out = sites[0].cli().ok(&["deploy", "apply", &f]);
    assert!(out.contains("deployment default/shop revision 1 applied"), "{out}");
    let mut view = serde_json::Value::Null;
    assert!(
        eventually(WAIT, || {
            view = show(&sites, 0);
            copies(&view, "web").len() == 2 && copies(&view, "cache").len() == 1
        }),
        "not placed: {view}\nplan on site-3: {}\ninstances: {}",
        sites[2].cli().ok(&["deploy", "plan", &f]),
        sites[0].cli().ok(&["instance", "list"])
    );
    let web = copies(&view, "web");
    assert_ne!(web[0].1, web[1].1, "anti-affinity: one web per site: {web:?}");
    let cache = copies(&view, "cache");
    assert!(web.iter().any(|(_, s)| *s == cache[0].1), "the cache goes with a web: {view}");

    // Scaled up to every site, then back down: the newest copy goes.
    sites[1].cli().ok(&["deploy", "scale", "shop", "web", "3"]);
    assert!(
        eventually(WAIT, || {
            view = show(&sites, 0);
            copies(&view, "web").len() == 3
        }),
        "{view}"
    );
    let three = copies(&view, "web");
    sites[0].cli().ok(&["deploy", "scale", "shop", "web", "2"]);
    assert!(
        eventually(WAIT, || {
            view = show(&sites, 0);
            copies(&view, "web") == web && all_copies(&view, "web") == 2
        }),
        "scaling down did not stop the newest: {three:?} then {view}"
    );

    // An update of the cache replaces the cache only.
    std::fs::write(&file, shop(2, "cache-v2")).unwrap();
    sites[2].cli().ok(&["deploy", "apply", &f]);
    assert!(
        eventually(WAIT, || {
            view = show(&sites, 0);
            let c = copies(&view, "cache");
            c.len() == 1 && c != cache && all_copies(&view, "cache") == 1
        }),
        "the cache was not replaced: {view}"
    );
    assert_eq!(copies(&view, "web"), web, "web replicas were touched by a cache update");

    // A web host is killed: after lost_after its replica runs on the free site.
    let free = ["site-1", "site-2", "site-3"].into_iter().find(|s| !web.iter().any(|(_, w)| w == s)).unwrap();
    let lost = web.iter().map(|(_, s)| s.clone()).find(|s| s != "site-1").unwrap();
    let lost_i: usize = lost.trim_start_matches("site-").parse::<usize>().unwrap() - 1;
    sites[lost_i].kill9();
    let alive = if lost_i == 0 { 1 } else { 0 };
    assert!(
        eventually(Duration::from_secs(60), || {
            view = show(&sites, alive);
            let w = copies(&view, "web");
            w.len() == 3 && w.iter().any(|(_, s)| s == free)
        }),
        "the lost replica was not replaced on {free}: {view}"
    );

    // It returns: three copies for two wanted, and the original is kept.
    sites[lost_i].boot();
    assert!(
        eventually(Duration::from_secs(60), || {
            view = show(&sites, alive);
            let w = copies(&view, "web");
            w.len() == 2 && w.iter().any(|(_, s)| *s == lost) && all_copies(&view, "web") == 2
        }),
        "the extra copy was not stopped after the heal: {view}"
    );

    // A plan that cannot be met says why, and the deployment goes away whole.
    std::fs::write(&file, shop(5, "cache-v2")).unwrap();
    let dry = sites[0].cli().ok(&["deploy", "apply", &f, "--dry-run"]);
    assert!(dry.contains("Service web: 5 replicas, 2 running") && dry.contains("short: "), "{dry}");
    assert!(dry.contains("filtered: "), "each site left out says why: {dry}");
    sites[0].cli().ok(&["deploy", "delete", "shop"]);
    assert!(
        eventually(WAIT, || {
            let list = sites[1].cli().json(&["instance", "list"]);
            list["instances"]
                .as_array()
                .is_some_and(|a| a.iter().all(|i| !i["name"].as_str().unwrap_or("").starts_with("shop.")))
        }),
        "replicas left after the deployment was deleted"
    );
    let err = sites[0].cli().fails(&["deploy", "show", "shop"]);
    assert!(err.contains("no deployment default/shop"), "{err}");
}
