//! `GET /metrics` read by the Prometheus project's own parser (the Python
//! client's OpenMetrics parser): it must parse, and its figures must be the
//! site's. `ATOLL_PYTHON` names a Python with `prometheus_client` (`.ci/run`
//! installs one); without it the test is skipped, except under `CI=true`.

use std::process::Command;
use std::time::Duration;

use atoll_e2e::*;

const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.setdefault(s.name, []).append([s.labels, s.value])
print(json.dumps(out))
"#;

fn python() -> Option<String> {
    let python = std::env::var("ATOLL_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python).args(["-c", "import prometheus_client"]).output().ok()?.status.success();
    ok.then_some(python)
}

/// The samples of a scrape, by name: `[[labels, value], ...]`.
fn parse(python: &str, text: &str) -> serde_json::Value {
    use std::io::Write;
    let mut child = Command::new(python)
        .args(["-c", PARSE])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the parser refused the scrape: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn value(samples: &serde_json::Value, name: &str) -> Option<f64> {
    samples[name][0][1].as_f64()
}

/// A Python with the parser, and a logged-in site holding process image
/// `name` running `script`; None (said why) without the parser.
fn site_with_image(name: &str, script: &str) -> Option<(String, tempfile::TempDir, Daemon)> {
    let Some(python) = python() else {
        unavailable("no Python with prometheus_client (pip install prometheus-client, or set ATOLL_PYTHON)");
        return None;
    };
    let root = tempfile::tempdir().unwrap();
    let d = Daemon::start(root.path(), "site-1");
    d.login_admin();
    let image = process_image(root.path(), name, script);
    d.cli().ok(&["image", "add", image.to_str().unwrap(), "--name", name]);
    Some((python, root, d))
}

#[test]
fn metrics_parse_and_say_what_the_site_holds() {
    let Some((python, _root, d)) = site_with_image("sleeper", "sleep 600") else { return };
    d.cli().ok(&["instance", "create", "s1", "--image", "sleeper", "--memory", "32", "--", &d.tag()]);
    d.cli().ok(&["instance", "list"]);
    // Beyond the project's quota (20480 MiB): refused, and counted by reason.
    let err = d.cli().fails(&["instance", "create", "big", "--image", "sleeper", "--memory", "30000"]);
    assert!(err.contains("quota"), "{err}");
    let labelled = |samples: &serde_json::Value, name: &str, label: &str, want: &str| {
        samples[name]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s[0][label] == want)
            .and_then(|s| s[1].as_f64())
    };
    // The summary is published every few seconds: wait for one that counts the instance.
    let mut samples = serde_json::Value::Null;
    let counted = eventually(Duration::from_secs(30), || {
        let r = http(&d.addr(), "GET", "/metrics", None, b"");
        assert_eq!(r.status, 200, "{}", r.body);
        samples = parse(&python, &r.body);
        value(&samples, "atoll_instances") == Some(1.0)
            && labelled(&samples, "atoll_admissions_refused_total", "reason", "quota_exceeded") == Some(1.0)
    });
    assert!(counted, "no scrape counted the instance and the refusal: {samples}");
    assert_eq!(labelled(&samples, "atoll_instances_by_state", "state", "running"), Some(1.0), "{samples}");
    assert_eq!(value(&samples, "atoll_intents_waiting"), Some(0.0));
    assert_eq!(value(&samples, "atoll_images"), Some(1.0));
    assert_eq!(value(&samples, "atoll_allocated_memory_mib"), Some(32.0));
    // A site alone fetched nothing from peers.
    assert_eq!(value(&samples, "atoll_image_fetched_bytes_total"), Some(0.0), "{samples}");
    // The project's rights, held here and used by the instance.
    let share = |name: &str, resource: &str| {
        samples[name]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s[0]["project"] == "default" && s[0]["resource"] == resource)
            .and_then(|s| s[1].as_f64())
    };
    assert_eq!(share("atoll_quota_used", "memory_mib"), Some(32.0), "{samples}");
    assert_eq!(share("atoll_quota_used", "instances"), Some(1.0), "{samples}");
    assert_eq!(share("atoll_quota_held", "instances"), Some(10.0), "{samples}");
    // Nor sent any cross-site request: the round-trip histogram is empty.
    assert_eq!(value(&samples, "atoll_intent_round_trip_seconds_count"), Some(0.0), "{samples}");
    assert_eq!(value(&samples, "atoll_converge_after_connect_seconds_count"), Some(0.0), "{samples}");
    // The API's latency, by route template (never by instance name).
    let api = samples["atoll_api_request_duration_seconds_count"].as_array().expect("API latency series");
    let routes: Vec<&str> = api.iter().filter_map(|s| s[0]["route"].as_str()).collect();
    assert!(routes.contains(&"/v1/instances"), "{routes:?}");
    assert!(!routes.iter().any(|r| r.contains("s1")), "a series per instance: {routes:?}");
    // Every series the Grafana dashboard in docs/ graphs is served.
    let dashboard = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dashboard).unwrap()).unwrap();
    let mut graphed = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("an expression");
            for (at, _) in expr.match_indices("atoll_") {
                let name: String =
                    expr[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                graphed.push(name);
            }
        }
    }
    let served = samples.as_object().expect("samples");
    for name in &graphed {
        assert!(served.contains_key(name), "the dashboard graphs {name}, which /metrics does not serve");
    }
    assert!(graphed.len() >= 15, "{graphed:?}");
    d.cli().ok(&["instance", "delete", "s1"]);
}

/// A busy process instance: what `/metrics` says it uses agrees with
/// `/proc` within 10% (CPU over a few seconds, resident memory).
#[test]
fn a_busy_instance_uses_what_proc_says() {
    let Some((python, _root, d)) = site_with_image("spinner", "while :; do :; done\n") else { return };
    d.cli().ok(&["instance", "create", "busy", "--image", "spinner", "--memory", "64", "--", &d.tag()]);
    let shown = d.cli().json(&["instance", "show", "busy"]);
    let reason = shown["reason"].as_str().unwrap_or_default();
    let pid: u32 = reason
        .strip_prefix("pid ")
        .and_then(|r| r.split(';').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {reason:?}"));
    let measure = || {
        let before = proc_tree(pid);
        let r = http(&d.addr(), "GET", "/metrics", None, b"");
        let after = proc_tree(pid);
        let samples = parse(&python, &r.body);
        let of = |name: &str| {
            samples[name]
                .as_array()
                .into_iter()
                .flatten()
                .find(|s| s[0]["atoll_instance"] == "default/busy" && s[0]["kind"] == "process")
                .and_then(|s| s[1].as_f64())
                .unwrap_or_else(|| panic!("no {name} of default/busy in {samples}"))
        };
        let proc_cpu = (before.0 + after.0) / 2.0;
        let proc_rss = (before.1 + after.1) as f64 / 2.0;
        (of("atoll_instance_cpu_seconds_total"), proc_cpu, of("atoll_instance_memory_bytes"), proc_rss)
    };
    std::thread::sleep(Duration::from_secs(1));
    let (cpu0, proc0, _, _) = measure();
    std::thread::sleep(Duration::from_secs(4));
    let (cpu1, proc1, memory, proc_rss) = measure();
    let (ours, theirs) = (cpu1 - cpu0, proc1 - proc0);
    println!(
        "busy instance: CPU {ours:.2} s (/proc {theirs:.2} s) over 4 s; memory {memory} B (/proc {proc_rss} B)"
    );
    assert!(theirs > 1.0, "the instance did not spin: {theirs} s");
    assert!((ours - theirs).abs() <= 0.1 * theirs, "CPU {ours} s against /proc's {theirs} s");
    assert!((memory - proc_rss).abs() <= 0.1 * proc_rss, "memory {memory} B against /proc's {proc_rss} B");
    d.cli().ok(&["instance", "delete", "busy"]);
}
