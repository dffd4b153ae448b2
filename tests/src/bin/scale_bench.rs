//! Whether creating an instance costs the same at 100 instances as at
//! 10,000 on one site (docs/benchmarks.md, "Instances per site"): a real
//! daemon, the process driver, one client creating N instances one after
//! another (each a short-lived process, so that the site holds N instances
//! but few processes), then listing them, then 100 clients at once reading
//! them.
//!
//!     cargo build --release -p atoll -p atoll-e2e && ./target/release/scale-bench 10000

use std::time::{Duration, Instant};

use atoll_e2e::{Daemon, http, saved_token};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// p50 and p99 of `samples`, in ms.
fn spread(samples: &[Duration]) -> (f64, f64) {
    let mut s = samples.to_vec();
    s.sort();
    let at = |p: f64| ms(s[((s.len() as f64 - 1.0) * p).round() as usize]);
    (at(0.5), at(0.99))
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let root = tempfile::tempdir().unwrap();
    let d = Daemon::start(root.path(), "bench");
    d.login_admin();
    let token = saved_token(&d);
    let addr = d.addr();
    let quota = format!(
        r#"{{"name": "scale", "quota": {{"instances": {n}, "cpus": {n}, "memory_mib": {}}}}}"#,
        n * 16
    );
    let r = http(&addr, "POST", "/v1/projects", Some(&token), quota.as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    let image = atoll_e2e::process_image(root.path(), "blink", "exec sleep 1\n");
    let bytes = std::fs::read(&image).unwrap();
    let r = http(&addr, "POST", "/v1/images?name=blink&format=process&project=scale", Some(&token), &bytes);
    assert_eq!(r.status, 200, "{}", r.body);

    let started = Instant::now();
    let mut create = Vec::with_capacity(n);
    for i in 0..n {
        let body = format!(r#"{{"name": "i{i}", "project": "scale", "image": "blink", "memory_mib": 16}}"#);
        let t = Instant::now();
        let r = http(&addr, "POST", "/v1/instances", Some(&token), body.as_bytes());
        create.push(t.elapsed());
        assert_eq!(r.status, 200, "instance {i}: {}", r.body);
    }
    let total = started.elapsed();
    let mut list = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let r = http(&addr, "GET", "/v1/instances?site=bench", Some(&token), b"");
        list.push(t.elapsed());
        assert_eq!(r.status, 200, "{}", r.body);
    }

    // 100 clients at once, each showing instances one after another.
    let clients = 100;
    let per_client = 50;
    let (reads, errors) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let (addr, token) = (&addr, &token);
                scope.spawn(move || {
                    let mut samples = Vec::with_capacity(per_client);
                    let mut errors = 0;
                    for k in 0..per_client {
                        let path = format!("/v1/instances/scale/i{}", (c * per_client + k) % n);
                        let t = Instant::now();
                        let r = http(addr, "GET", &path, Some(token), b"");
                        samples.push(t.elapsed());
                        errors += usize::from(r.status != 200);
                    }
                    (samples, errors)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).fold((Vec::new(), 0), |(mut all, e), (s, k)| {
            all.extend(s);
            (all, e + k)
        })
    });

    println!("atoll: {n} instance creations on one site, one client, sequential (process driver)");
    println!("{:>16} {:>10} {:>10}", "instances held", "p50 ms", "p99 ms");
    let mut starts = vec![0, n / 10, n / 4, n / 2, n.saturating_sub(100)];
    starts.dedup();
    for at in starts {
        let window = &create[at..(at + 100).min(n)];
        let (p50, p99) = spread(window);
        println!("{:>7}-{:<8} {p50:>10.2} {p99:>10.2}", at, at + window.len());
    }
    let (p50, p99) = spread(&list);
    println!("creations per second: {:.0}", n as f64 / total.as_secs_f64());
    println!("list of {n} instances: p50 {p50:.2} ms, p99 {p99:.2} ms");
    let (p50, p99) = spread(&reads);
    println!(
        "{clients} clients at once, {} shows of an instance: p50 {p50:.2} ms, p99 {p99:.2} ms, {errors} errors",
        reads.len()
    );
}
