//! schemathesis against a running peer: every operation of
//! `/v1/openapi.json`, authenticated as a realm admin, under every check
//! schemathesis has (server errors, status codes, content types, response
//! schemas, schema-valid requests accepted and schema-violating ones
//! refused, stateful sequences). The document is generated from the request
//! and reply types (node/src/api/openapi.rs); this holds the server to it.
//! What the document cannot say is in tests/schemathesis/schemathesis.toml.
//!
//! `ATOLL_SCHEMATHESIS` names the `st` program (`.ci/run` installs it in a
//! virtual environment; otherwise `st` on the PATH). Without it the test is
//! skipped, except under `CI=true`. More cases per operation:
//! `ATOLL_SCHEMATHESIS_EXAMPLES=200` (default 20).

use std::path::PathBuf;
use std::process::Command;

use atoll_e2e::*;

fn schemathesis() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("ATOLL_SCHEMATHESIS") {
        return Some(PathBuf::from(path));
    }
    let found = Command::new("st").arg("--version").output().ok()?;
    found.status.success().then(|| PathBuf::from("st"))
}

fn token(d: &Daemon) -> String {
    let body = serde_json::json!({"user": "admin", "password": d.password}).to_string();
    let reply = http(&d.addr(), "POST", "/v1/login", None, body.as_bytes());
    assert_eq!(reply.status, 200, "login: {}", reply.body);
    reply.json()["token"].as_str().unwrap().to_owned()
}

/// Runs `st` on the daemon's document with `filter`; returns whether it
/// passed, printing its report.
fn run(st: &PathBuf, d: &Daemon, token: &str, filter: &[&str]) -> bool {
    // schemathesis keeps a cache in its working directory.
    let cwd = tempfile::tempdir().unwrap();
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/schemathesis/schemathesis.toml");
    let examples = std::env::var("ATOLL_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "20".into());
    let out = Command::new(st)
        .current_dir(cwd.path())
        .args(["--config-file", config, "run"])
        .arg(format!("{}/v1/openapi.json", d.endpoint))
        .args(["--url", &d.endpoint, "--checks", "all", "--max-examples", &examples, "--no-color"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(filter)
        .output()
        .expect("run schemathesis");
    let report = String::from_utf8_lossy(&out.stdout);
    // The summary and every failure, without the passing operations' lines.
    let failures = report.split("=== SUMMARY").next().unwrap_or_default();
    let summary = report.split("=== SUMMARY").nth(1).unwrap_or_default();
    if !out.status.success() {
        eprintln!("{failures}\n{}", String::from_utf8_lossy(&out.stderr));
    }
    eprintln!("=== SUMMARY{summary}");
    out.status.success()
}

#[test]
fn the_api_answers_as_its_openapi_document_says() {
    let Some(st) = schemathesis() else {
        unavailable("schemathesis is not installed (pip install schemathesis, or set ATOLL_SCHEMATHESIS)");
        return;
    };
    let root = tempfile::tempdir().unwrap();
    // Its random VM instances go to libvirt's in-process test hypervisor,
    // never to a libvirt daemon of the host, where they would outlive the test.
    let d = Daemon::start_with(root.path(), "site-1", &[("ATOLL_LIBVIRT_URI", "test:///default")]);
    // Two tokens before any run: the first run's wrong passwords lock
    // logins from this address out for a while, as they should.
    let (first, second) = (token(&d), token(&d));
    // Operations that revoke the caller's own token (a link from `whoami`
    // hands them its name) run last, on a token of their own.
    let own = ["/v1/logout", "/v1/users/{name}/tokens", "/v1/users/{name}/password"];
    let mut rest = vec![];
    let mut last = vec![];
    for path in own {
        rest.extend(["--exclude-path", path]);
        last.extend(["--include-path", path]);
    }
    let everything_else = run(&st, &d, &first, &rest);
    let revoking = run(&st, &d, &second, &last);
    assert!(everything_else && revoking, "schemathesis found failures (report above)");
    // The peer served every case and still does.
    assert_eq!(http(&d.addr(), "GET", "/v1/health", None, b"").status, 200);
}
