//! Admission latency when quota rights must come from a peer, for
//! docs/benchmarks.md: N real daemons on loopback; for each of P fresh
//! projects (spread pool: the whole total sits at site-1, which created it),
//! every other site creates one instance (it holds no rights: it asks, site-1
//! gives a quantum, the call is admitted when the transfer arrives) and then a
//! second one (admitted from the quantum it now holds). Both calls return once
//! the instance runs, so the difference between the two is the cost of asking.
//!
//!     cargo build --release -p atoll -p atoll-e2e && ./target/release/rights-bench [SITES] [PROJECTS]

use std::time::{Duration, Instant};

use atoll_e2e::{Daemon, eventually, http, loopback_realm, process_image};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = (p * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn create(d: &Daemon, token: &str, project: &str, name: &str) -> Duration {
    let body = format!(
        r#"{{"name":"{name}","project":"{project}","image":"default/sleeper","memory_mib":16,"args":["{}"]}}"#,
        d.tag()
    );
    let start = Instant::now();
    let reply = http(&d.addr(), "POST", "/v1/instances", Some(token), body.as_bytes());
    let took = start.elapsed();
    assert_eq!(reply.status, 200, "create {project}/{name} on {}: {}", d.site, reply.body);
    took
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let projects: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let root = tempfile::tempdir().unwrap();
    let (sites, admin) = loopback_realm(root.path(), n);
    // A public image held by every site, so that no fetch is timed.
    let file = process_image(root.path(), "sleeper", "sleep 600\n");
    let file = file.to_str().unwrap();
    sites[0].cli().ok(&["image", "add", file, "--name", "sleeper", "--public"]);
    let to: Vec<String> = sites[1..].iter().map(|d| d.site.clone()).collect();
    sites[0].cli().ok(&["image", "copy", "sleeper", "--to", &to.join(",")]);

    let (mut asked, mut held) = (Vec::new(), Vec::new());
    for p in 0..projects {
        let project = format!("bench{p}");
        let body = format!(
            r#"{{"name":"{project}","spread":"pool","quota":{{"instances":1000,"cpus":1000,"memory_mib":1000000}}}}"#
        );
        let reply = http(&sites[0].addr(), "POST", "/v1/projects", Some(&admin), body.as_bytes());
        assert_eq!(reply.status, 200, "{}", reply.body);
        let known = || {
            sites.iter().all(|d| {
                http(&d.addr(), "GET", &format!("/v1/quotas/{project}"), Some(&admin), b"").status == 200
            })
        };
        assert!(eventually(Duration::from_secs(10), known), "project {project} did not reach every site");
        for d in &sites[1..] {
            asked.push(create(d, &admin, &project, "first"));
            held.push(create(d, &admin, &project, "second"));
        }
    }
    asked.sort();
    held.sort();
    println!(
        "{n} sites, {} creations each way: rights from a peer p50 {:.1} ms p99 {:.1} ms; \
         rights held p50 {:.1} ms p99 {:.1} ms",
        asked.len(),
        ms(percentile(&asked, 0.5)),
        ms(percentile(&asked, 0.99)),
        ms(percentile(&held, 0.5)),
        ms(percentile(&held, 0.99)),
    );
}
