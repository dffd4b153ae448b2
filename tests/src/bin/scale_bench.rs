//! Whether creating an instance costs the same at 100 instances as at
//! 10,000 on one site (docs/benchmarks.md, "Instances per site"): a real
//! daemon, one client creating N instances one after another, then listing
//! them, then 100 clients at once reading them.
//!
//! With the process driver (the default) each instance is a short-lived
//! process, so that the site holds N instances but few processes. With
//! `--driver docker` each is a busybox container that keeps running, so N is
//! bounded by what the machine holds: the bench stops creating at the first
//! refusal, says why, reports the host memory the containers took, and
//! deletes every instance at the end (timed too).
//!
//!     cargo build --release -p atoll -p atoll-e2e && ./target/release/scale-bench 10000
//!     ./target/release/scale-bench 1000 --driver docker

use std::time::{Duration, Instant};

use atoll_e2e::{Daemon, busybox_archive, docker_missing, http, saved_token};

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

/// The host's `MemAvailable`, in MiB.
fn available_mib() -> f64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = info
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// Median of `runs` plain `docker run -d` of `image` on the same engine,
/// each removed before the next: the anchor for a creation through Atoll
/// with as many containers running.
fn docker_run_median(runs: usize) -> f64 {
    let image =
        atoll_e2e::docker_inspect("atoll.bench.scale__i0", "{{.Image}}").expect("the first container");
    let image = image.as_str();
    let mut took = Vec::with_capacity(runs);
    for k in 0..runs {
        let name = format!("plain-scale-{}-{k}", std::process::id());
        let t = Instant::now();
        let out = std::process::Command::new("docker")
            .args(["run", "-d", "--name", &name, "--memory", "16m", "--cpus", "1", image, "sleep", "86400"])
            .output()
            .unwrap();
        took.push(t.elapsed());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        std::process::Command::new("docker").args(["rm", "-f", &name]).output().unwrap();
    }
    spread(&took).0
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let driver =
        args.iter().position(|a| a == "--driver").map(|i| args.get(i + 1).map_or("", String::as_str));
    let docker = match driver.unwrap_or("process") {
        "process" => false,
        "docker" => true,
        other => {
            eprintln!("--driver takes process or docker, not {other:?}");
            std::process::exit(2);
        }
    };
    if docker && let Some(why) = docker_missing() {
        eprintln!("--driver docker needs a Docker engine: {why}");
        std::process::exit(2);
    }
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
    let (image, format, extra) = if docker {
        let archive = busybox_archive(root.path()).expect("busybox-static is needed for the test image");
        (archive, "docker-archive", r#", "args": ["sleep", "86400"]"#)
    } else {
        (atoll_e2e::process_image(root.path(), "blink", "exec sleep 1\n"), "process", "")
    };
    let bytes = std::fs::read(&image).unwrap();
    let path = format!("/v1/images?name=blink&format={format}&project=scale");
    let r = http(&addr, "POST", &path, Some(&token), &bytes);
    assert_eq!(r.status, 200, "{}", r.body);

    let memory_before = available_mib();
    let mut anchors = Vec::new();
    let mut probing = Duration::ZERO;
    let started = Instant::now();
    let mut create = Vec::with_capacity(n);
    for i in 0..n {
        let body =
            format!(r#"{{"name": "i{i}", "project": "scale", "image": "blink", "memory_mib": 16{extra}}}"#);
        let t = Instant::now();
        let r = http(&addr, "POST", "/v1/instances", Some(&token), body.as_bytes());
        if r.status != 200 && docker {
            println!("creation {i} refused, so the machine held {i} containers: {} {}", r.status, r.body);
            break;
        }
        create.push(t.elapsed());
        assert_eq!(r.status, 200, "instance {i}: {}", r.body);
        if docker && i == 0 {
            let t = Instant::now();
            anchors.push((1, docker_run_median(20)));
            probing += t.elapsed();
        }
    }
    let total = started.elapsed() - probing;
    if docker && !create.is_empty() {
        // Also after a refusal: the anchor with as many containers running.
        anchors.push((create.len(), docker_run_median(20)));
    }
    let memory_used = memory_before - available_mib();
    let n = create.len();
    if n == 0 {
        eprintln!("no instance could be created");
        std::process::exit(1);
    }
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

    let driver = if docker { "docker" } else { "process" };
    println!("atoll: {n} instance creations on one site, one client, sequential ({driver} driver)");
    println!("{:>16} {:>10} {:>10}", "instances held", "p50 ms", "p99 ms");
    let mut starts = vec![0, n / 10, n / 4, n / 2, n.saturating_sub(100)];
    starts.dedup();
    for at in starts {
        let window = &create[at..(at + 100).min(n)];
        let (p50, p99) = spread(window);
        println!("{:>7}-{:<8} {p50:>10.2} {p99:>10.2}", at, at + window.len());
    }
    let (p50, p99) = spread(&list);
    println!("creations per second: {:.1}", n as f64 / total.as_secs_f64());
    if docker {
        println!(
            "host memory taken by {n} running containers: {memory_used:.0} MiB ({:.2} MiB each)",
            memory_used / n.max(1) as f64
        );
        for (held, median) in anchors {
            println!(
                "anchor: docker run -d (CLI) with {held} containers running, median of 20: {median:.2} ms"
            );
        }
    }
    println!("list of {n} instances: p50 {p50:.2} ms, p99 {p99:.2} ms");
    let (p50, p99) = spread(&reads);
    println!(
        "{clients} clients at once, {} shows of an instance: p50 {p50:.2} ms, p99 {p99:.2} ms, {errors} errors",
        reads.len()
    );
    if docker {
        // Containers outlive the daemon: remove them through Atoll, timed.
        let t = Instant::now();
        let mut failed = 0;
        for i in 0..n {
            let r = http(&addr, "DELETE", &format!("/v1/instances/scale/i{i}"), Some(&token), b"");
            failed += usize::from(r.status != 200);
        }
        println!("deletions per second: {:.1} ({failed} failed)", n as f64 / t.elapsed().as_secs_f64());
    }
}
