//! Other routes while clients log in (docs/benchmarks.md, "Logins"): the p50
//! and p99 of `GET /v1/instances` from READERS clients, alone, then while
//! LOGINS successful logins per second arrive (each an argon2 hash), then
//! while as many wrong-password attempts arrive (refused with 429 after five).
//!
//!     cargo build --release -p atoll -p atoll-e2e && ./target/release/login-bench [READERS] [LOGINS] [SECONDS]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use atoll_e2e::{Daemon, http, saved_token};

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e3
}

/// READERS clients read for `secs` while `storm` runs; returns their latencies.
fn readers(
    addr: &str,
    token: &str,
    n: usize,
    secs: u64,
    storm: impl Fn(&AtomicBool) + Send + Sync,
) -> Vec<Duration> {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let readers: Vec<_> = (0..n)
            .map(|_| {
                let stop = &stop;
                s.spawn(move || {
                    let mut out = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let t = Instant::now();
                        let r = http(addr, "GET", "/v1/instances?site=bench", Some(token), b"");
                        out.push(t.elapsed());
                        assert_eq!(r.status, 200, "{}", r.body);
                    }
                    out
                })
            })
            .collect();
        let storm = s.spawn(|| storm(&stop));
        std::thread::sleep(Duration::from_secs(secs));
        stop.store(true, Ordering::SeqCst);
        storm.join().unwrap();
        let mut all: Vec<Duration> = readers.into_iter().flat_map(|r| r.join().unwrap()).collect();
        all.sort();
        all
    })
}

/// Sends `per_sec` logins a second, paced, until stopped; counts answers by status.
fn logins(addr: &str, password: &str, per_sec: u64, stop: &AtomicBool, counts: &[AtomicUsize; 3]) {
    let body = serde_json::json!({"user": "admin", "password": password}).to_string();
    let every = Duration::from_micros(1_000_000 / per_sec.max(1));
    std::thread::scope(|s| {
        let mut next = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            let body = body.clone();
            s.spawn(move || {
                let r = http(addr, "POST", "/v1/login", None, body.as_bytes());
                let slot = match r.status {
                    200 => 0,
                    429 => 1,
                    _ => 2,
                };
                counts[slot].fetch_add(1, Ordering::SeqCst);
            });
            next += every;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    });
}

fn main() {
    let arg = |i: usize, d: u64| std::env::args().nth(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let (n, per_sec, secs) = (arg(1, 10) as usize, arg(2, 50), arg(3, 10));
    let root = tempfile::tempdir().unwrap();
    let d = Daemon::start(root.path(), "bench");
    d.login_admin();
    let (token, addr) = (saved_token(&d), d.addr());
    let line = |what: &str, s: &[Duration], extra: String| {
        println!(
            "{what:<44} reads={:<6} p50={:>7.2} ms p99={:>7.2} ms {extra}",
            s.len(),
            percentile(s, 0.5),
            percentile(s, 0.99)
        );
    };
    let alone = readers(&addr, &token, n, secs, |_| {});
    line(&format!("{n} readers alone"), &alone, String::new());
    for (what, password) in [("right", d.password.clone()), ("wrong", "not-the-password".to_owned())] {
        let counts: Arc<[AtomicUsize; 3]> = Arc::new(Default::default());
        let c = counts.clone();
        let storm = readers(&addr, &token, n, secs, |stop| logins(&addr, &password, per_sec, stop, &c));
        let [ok, limited, other] = [0, 1, 2].map(|i| counts[i].load(Ordering::SeqCst));
        let rate = (ok + limited + other) as f64 / secs as f64;
        line(
            &format!("{n} readers, {per_sec} {what} logins/s"),
            &storm,
            format!("(logins answered {rate:.0}/s: {ok} ok, {limited} limited, {other} refused)"),
        );
    }
}
