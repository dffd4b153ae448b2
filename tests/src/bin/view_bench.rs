//! Latency of the realm-wide instance list, for docs/benchmarks.md: N real
//! daemons on loopback hold M instances in all (M/N each, created through
//! each site's own API); `GET /v1/instances` is timed K times on the site that
//! holds the fewest other sites' documents (it reads those it holds and asks
//! the owners of the others). Then one site whose part it asked its owner for
//! is killed, and the list is timed again: that part comes from a custodian.
//!
//!     cargo build --release -p atoll -p atoll-e2e && ./target/release/view-bench [SITES] [INSTANCES] [CALLS]

use std::time::{Duration, Instant};

use atoll_e2e::{Daemon, eventually, http, loopback_realm, process_image};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = (p * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Times `calls` lists on `d`; returns the sorted latencies and the last reply.
fn time_lists(d: &Daemon, token: &str, calls: usize) -> (Vec<Duration>, serde_json::Value) {
    let mut took = Vec::with_capacity(calls);
    let mut last = serde_json::Value::Null;
    for _ in 0..calls {
        let start = Instant::now();
        let reply = http(&d.addr(), "GET", "/v1/instances", Some(token), b"");
        took.push(start.elapsed());
        assert_eq!(reply.status, 200, "{}", reply.body);
        last = reply.json();
    }
    took.sort();
    (took, last)
}

fn sources(list: &serde_json::Value) -> String {
    let mut counts = std::collections::BTreeMap::new();
    for s in list["sites"].as_array().into_iter().flatten() {
        let source = match &s["source"] {
            serde_json::Value::String(s) => s.clone(),
            other => other.as_object().and_then(|o| o.keys().next().cloned()).unwrap_or_default(),
        };
        *counts.entry(source).or_insert(0) += 1;
    }
    counts.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", ")
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let total: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let calls: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);
    let root = tempfile::tempdir().unwrap();
    let (mut sites, admin) = loopback_realm(root.path(), n);
    let file = process_image(root.path(), "sleeper", "sleep 3600\n");
    let file = file.to_str().unwrap();
    sites[0].cli().ok(&["image", "add", file, "--name", "sleeper", "--public"]);
    let to: Vec<String> = sites[1..].iter().map(|d| d.site.clone()).collect();
    sites[0].cli().ok(&["image", "copy", "sleeper", "--to", &to.join(",")]);
    let quota = format!(
        r#"{{"name":"view","spread":"even","quota":{{"instances":{},"cpus":{},"memory_mib":{}}}}}"#,
        total + n,
        total + n,
        (total + n) * 16
    );
    let reply = http(&sites[0].addr(), "POST", "/v1/projects", Some(&admin), quota.as_bytes());
    assert_eq!(reply.status, 200, "{}", reply.body);
    let known = || {
        sites.iter().all(|d| {
            http(&d.addr(), "GET", "/v1/quotas/view", Some(&admin), b"").json()["available_here"]["instances"]
                .as_i64()
                .is_some_and(|i| i as usize >= total / n)
        })
    };
    assert!(eventually(Duration::from_secs(30), known), "the project's shares did not reach every site");
    let started = Instant::now();
    std::thread::scope(|s| {
        for d in &sites {
            let admin = &admin;
            s.spawn(move || {
                for i in 0..total / n {
                    let body = format!(
                        r#"{{"name":"i{i}","project":"view","image":"default/sleeper","memory_mib":16,"args":["{}"]}}"#,
                        d.tag()
                    );
                    let reply = http(&d.addr(), "POST", "/v1/instances", Some(admin), body.as_bytes());
                    assert_eq!(reply.status, 200, "create on {}: {}", d.site, reply.body);
                }
            });
        }
    });
    eprintln!("created {} instances in {:.1} s", total / n * n, started.elapsed().as_secs_f64());
    let complete = || {
        http(&sites[0].addr(), "GET", "/v1/instances", Some(&admin), b"").json()["instances"]
            .as_array()
            .is_some_and(|l| l.len() == total / n * n)
    };
    assert!(eventually(Duration::from_secs(30), complete), "site-1 never listed every instance");
    // Time it on the site that holds the fewest other documents (most asks).
    let asks = |d: &Daemon| {
        let l = http(&d.addr(), "GET", "/v1/instances", Some(&admin), b"").json();
        l["sites"].as_array().map_or(0, |s| s.iter().filter(|s| s["source"].get("asked").is_some()).count())
    };
    let at = (0..n).max_by_key(|&i| (asks(&sites[i]), std::cmp::Reverse(i))).unwrap_or(0);
    let (all, list) = time_lists(&sites[at], &admin, calls);
    println!(
        "{n} sites, {} instances: realm-wide list on {} p50 {:.1} ms p99 {:.1} ms ({} calls; sites {}; reply {} KiB)",
        total / n * n,
        sites[at].site,
        ms(percentile(&all, 0.5)),
        ms(percentile(&all, 0.99)),
        calls,
        sources(&list),
        serde_json::to_vec(&list).unwrap().len() / 1024,
    );
    // Kill a site whose part site-1 asked its owner for.
    let asked = list["sites"].as_array().unwrap().iter().find_map(|s| {
        let by = s["source"]["asked"]["by"].as_str()?;
        (by == s["site"].as_str()?).then(|| by.to_owned())
    });
    let Some(victim) = asked else {
        println!("{} held every document: no asked site to kill", sites[at].site);
        return;
    };
    let k = sites.iter().position(|d| d.site == victim).unwrap();
    sites[k].kill9();
    let gone = || {
        http(&sites[at].addr(), "GET", "/v1/sites", Some(&admin), b"").json().as_array().is_some_and(|r| {
            r.iter().any(|s| s["member"]["site"] == victim.as_str() && s["reachable"] == false)
        })
    };
    assert!(eventually(Duration::from_secs(30), gone), "{victim} still reachable");
    let (all, list) = time_lists(&sites[at], &admin, calls);
    let count = list["instances"].as_array().map_or(0, Vec::len);
    println!(
        "  with {victim} down: p50 {:.1} ms p99 {:.1} ms ({count} instances listed; sites {})",
        ms(percentile(&all, 0.5)),
        ms(percentile(&all, 0.99)),
        sources(&list),
    );
}
