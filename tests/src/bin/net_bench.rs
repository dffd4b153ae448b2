//! Peer network figures for docs/benchmarks.md, with N real daemons on loopback
//! joined by invitation: time for a write on one site to be visible on every
//! other (p50/p99), payload bytes sent per replicated change, and idle traffic
//! per site.
//!
//!     cargo build --release -p atoll -p atoll-e2e && ./target/release/net-bench [SITES] [WRITES]

use std::time::{Duration, Instant};

use atoll_e2e::{Daemon, http, loopback_realm};

/// How long idle traffic is measured.
const IDLE: Duration = Duration::from_secs(30);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn sent_bytes(sites: &[Daemon], tokens: &[String]) -> u64 {
    sites
        .iter()
        .zip(tokens)
        .map(|(d, t)| {
            http(&d.addr(), "GET", "/v1/network", Some(t), b"").json()["sent_bytes"].as_u64().unwrap_or(0)
        })
        .sum()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let writes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let root = tempfile::tempdir().unwrap();
    let (sites, admin) = loopback_realm(root.path(), n);
    // The admin's token verifies on every site (offline, by the issuer's key).
    let tokens: Vec<String> = sites.iter().map(|_| admin.clone()).collect();

    let before = sent_bytes(&sites, &tokens);
    let mut lat = Vec::with_capacity(writes);
    for i in 0..writes {
        let body = format!(r#"{{"name":"p{i}"}}"#);
        let reply = http(&sites[0].addr(), "POST", "/v1/projects", Some(&admin), body.as_bytes());
        assert_eq!(reply.status, 200, "{}", reply.body);
        let written = Instant::now();
        let path = format!("/v1/quotas/p{i}");
        for d in &sites[1..] {
            while http(&d.addr(), "GET", &path, Some(&admin), b"").status != 200 {
                assert!(written.elapsed() < Duration::from_secs(30), "p{i} never reached {}", d.site);
                std::thread::sleep(Duration::from_micros(500));
            }
        }
        lat.push(written.elapsed());
    }
    let per_change = (sent_bytes(&sites, &tokens) - before) as f64 / writes as f64;
    lat.sort();

    std::thread::sleep(Duration::from_secs(2));
    let quiet = sent_bytes(&sites, &tokens);
    std::thread::sleep(IDLE);
    let idle = (sent_bytes(&sites, &tokens) - quiet) as f64 / IDLE.as_secs_f64() / n as f64;
    println!(
        "sites={n} writes={writes} visible-everywhere p50={:.2} ms p99={:.2} ms max={:.2} ms; \
         {per_change:.0} payload bytes sent per change (all sites); idle {idle:.0} B/s per site",
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().unwrap().as_secs_f64() * 1e3,
    );
}
