//! Whether a site's history stays small (docs/benchmarks.md, "Histories
//! that stay small"): a real daemon, the process driver, N instance
//! create/delete cycles through the API; then the data dir's size, the time
//! from starting the daemon again to its API serving, and the time a new
//! site takes to hold the first site's document.
//!
//!     cargo build --release -p atoll -p atoll-e2e && ./target/release/history-bench 20000

use std::path::Path;
use std::time::{Duration, Instant};

use atoll_e2e::{Daemon, eventually, http, saved_token};

/// Bytes of every file under `dir`.
fn size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The history a site's `GET /v1/site` reports for `what` (a row of `memory.held`): (ops, changes).
fn held(addr: &str, token: &str, what: &str) -> Option<(u64, String)> {
    let r = http(addr, "GET", "/v1/site", Some(token), b"");
    let site = r.json();
    let rows = site["memory"]["held"].as_array()?.clone();
    let row = rows.into_iter().find(|h| h["what"].as_str().is_some_and(|w| w.starts_with(what)))?;
    Some((row["count"].as_u64()?, row["what"].as_str()?.to_owned()))
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(3000);
    let root = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(root.path(), "bench");
    d.login_admin();
    let token = saved_token(&d);
    let addr = d.addr();
    let project = r#"{"name": "hist", "quota": {"instances": 4, "cpus": 4, "memory_mib": 256}}"#;
    let r = http(&addr, "POST", "/v1/projects", Some(&token), project.as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    let image = atoll_e2e::process_image(root.path(), "idle", "exec sleep 600\n");
    let bytes = std::fs::read(&image).unwrap();
    let r = http(&addr, "POST", "/v1/images?name=idle&format=process&project=hist", Some(&token), &bytes);
    assert_eq!(r.status, 200, "{}", r.body);

    let started = Instant::now();
    let mut window = Instant::now();
    for i in 0..n {
        let body = r#"{"name": "c", "project": "hist", "image": "idle", "memory_mib": 16}"#;
        let r = http(&addr, "POST", "/v1/instances", Some(&token), body.as_bytes());
        assert_eq!(r.status, 200, "create {i}: {}", r.body);
        let r = http(&addr, "DELETE", "/v1/instances/hist/c", Some(&token), b"");
        assert_eq!(r.status, 200, "delete {i}: {}", r.body);
        if (i + 1) % (n / 10).max(1) == 0 {
            let (ops, what) = held(&addr, &token, "this site's document").unwrap_or_default();
            eprintln!(
                "{:>7} cycles, {:.0} cycles/s, data dir {:.1} MB, document: {ops} ops, {what}",
                i + 1,
                (n / 10).max(1) as f64 / window.elapsed().as_secs_f64(),
                size(&d.data) as f64 / 1e6
            );
            window = Instant::now();
        }
    }
    let cycles = started.elapsed();
    let (ops, what) = held(&addr, &token, "this site's document").unwrap_or_default();
    d.terminate();
    let on_disk = size(&d.data);
    let t = Instant::now();
    d.boot();
    let ready = t.elapsed();

    // A new site joins; the first one's document is among what it holds
    // (with two sites, each is the other's custodian).
    let invitation = d.invite("late");
    let t = Instant::now();
    let late = Daemon::join(root.path(), "late", &invitation, &d.password);
    late.login_admin();
    let late_token = saved_token(&late);
    let received = eventually(Duration::from_secs(120), || {
        let owner = held(&addr, &token, "this site's document").map(|(o, _)| o);
        owner.is_some() && held(&late.addr(), &late_token, "replicas of 1 other").map(|(o, _)| o) == owner
    });
    let receive = t.elapsed();
    assert!(received, "the new site never held the first site's document");

    println!("history-bench: {n} instance create/delete cycles on one site, process driver");
    println!("cycles: {:.1} s ({:.0} per s)", cycles.as_secs_f64(), n as f64 / cycles.as_secs_f64());
    println!("document at the end: {ops} ops, {what}");
    println!("data dir after the cycles: {:.2} MB", on_disk as f64 / 1e6);
    println!("restart to API serving: {:.3} s", ready.as_secs_f64());
    println!("a new site holds the document {:.2} s after it is started", receive.as_secs_f64());
}
