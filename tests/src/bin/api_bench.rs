//! Local API figures for docs/benchmarks.md: write and read latency against a
//! real daemon on loopback, and the daemon's resident memory when idle.
//!
//!     cargo build --release -p atoll && cargo run --release -p atoll-e2e --bin api-bench [WRITES]

use std::time::{Duration, Instant};

use atoll_e2e::{Daemon, http, saved_token};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{what:<34} n={:<5} p50={:>8.2} ms  p99={:>8.2} ms  max={:>8.2} ms",
        samples.len(),
        percentile(&samples, 0.50).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().unwrap().as_secs_f64() * 1e3,
    );
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let writes: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let root = tempfile::tempdir().unwrap();
    let d = Daemon::start(root.path(), "bench");
    d.login_admin();
    let token = saved_token(&d);
    let addr = d.addr();
    let pid = d.pid().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let idle_fresh = rss_kib(pid);

    let mut w = Vec::with_capacity(writes);
    for i in 0..writes {
        let body = format!(r#"{{"name": "p{i}", "quota": {{"instances": 1, "cpus": 1, "memory_mib": 64}}}}"#);
        let t = Instant::now();
        let r = http(&addr, "POST", "/v1/projects", Some(&token), body.as_bytes());
        w.push(t.elapsed());
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let mut q = Vec::with_capacity(writes);
    for i in 0..writes {
        let t = Instant::now();
        let r = http(
            &addr,
            "PUT",
            &format!("/v1/quotas/p{i}"),
            Some(&token),
            br#"{"instances": 2, "cpus": 2, "memory_mib": 128}"#,
        );
        q.push(t.elapsed());
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let mut reads = Vec::with_capacity(200);
    for _ in 0..200 {
        let t = Instant::now();
        let r = http(&addr, "GET", "/v1/site", Some(&token), b"");
        reads.push(t.elapsed());
        assert_eq!(r.status, 200);
    }
    // Instance lifecycle through the process driver: create answers once the child runs.
    let image = atoll_e2e::process_image(root.path(), "sleeper", "exec sleep 600\n");
    let bytes = std::fs::read(&image).unwrap();
    let r = http(&addr, "POST", "/v1/images?name=sleeper&format=process", Some(&token), &bytes);
    assert_eq!(r.status, 200, "{}", r.body);
    let (mut create, mut delete) = (Vec::new(), Vec::new());
    for i in 0..100 {
        let body =
            format!(r#"{{"name": "i{i}", "project": "default", "image": "sleeper", "memory_mib": 64}}"#);
        let t = Instant::now();
        let r = http(&addr, "POST", "/v1/instances", Some(&token), body.as_bytes());
        create.push(t.elapsed());
        assert!(r.status == 200 && r.body.contains("\"running\""), "{}", r.body);
        let t = Instant::now();
        let r = http(&addr, "DELETE", &format!("/v1/instances/default/i{i}"), Some(&token), b"");
        delete.push(t.elapsed());
        assert_eq!(r.status, 200, "{}", r.body);
    }
    std::thread::sleep(Duration::from_secs(3));
    let idle_loaded = rss_kib(pid);

    println!(
        "atoll local API on loopback, one client, sequential requests (each write fsynced before the reply)"
    );
    report("write: create project", w);
    report("write: set quota", q);
    report("read: GET /v1/site", reads);
    report("instance create -> running (process)", create);
    report("instance delete (SIGTERM, cleanup)", delete);
    println!("idle RSS, fresh realm                   {:>6} KiB", idle_fresh);
    println!("idle RSS, after the runs above              {:>6} KiB", idle_loaded);
}
