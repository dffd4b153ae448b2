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
