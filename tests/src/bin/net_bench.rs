//! Peer network figures for docs/benchmarks.md, with N real daemons on loopback
//! joined by invitation: time for a write on one site to be visible on every
//! other (p50/p99), payload bytes sent per replicated change (the idle
//! traffic of the same time taken out), idle traffic per site, open
//! connections per site, and each daemon's resident memory (VmRSS). The
//! time to visible is taken twice: by asking every other site over HTTP until
//! it answers with the write (in turn, or together), and by the daemons'
//! own record of when the change arrived (`changes_received_at` of
//! `GET /v1/network`), which no polling delays.
//!
//!     cargo build --release -p atoll -p atoll-e2e && ./target/release/net-bench [SITES] [WRITES] [together]
//!
//! It also prints the CPU time the daemons and this poller used per write
//! and the daemons' CPU per second while idle (docs/benchmarks.md).

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

/// Members each site has a connection to now: (mean, max).
fn connections(sites: &[Daemon], tokens: &[String]) -> (f64, u64) {
    let per_site: Vec<u64> = sites
        .iter()
        .zip(tokens)
        .map(|(d, t)| {
            let links = http(&d.addr(), "GET", "/v1/network", Some(t), b"").json()["links"].clone();
            let open =
                |l: &serde_json::Value| l["quic"].as_u64().unwrap_or(0) + l["tcp"].as_u64().unwrap_or(0) > 0;
            links.as_array().map_or(0, |a| a.iter().filter(|l| open(l)).count() as u64)
        })
        .collect();
    (per_site.iter().sum::<u64>() as f64 / per_site.len() as f64, per_site.iter().copied().max().unwrap_or(0))
}

/// Resident memory of the daemons, MiB: (mean, max).
fn resident(sites: &[Daemon]) -> (f64, f64) {
    let rss: Vec<f64> = sites
        .iter()
        .filter_map(|d| {
            let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid()?)).ok()?;
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib / 1024.0)
        })
        .collect();
    let max = rss.iter().copied().fold(0.0, f64::max);
    (rss.iter().sum::<f64>() / rss.len().max(1) as f64, max)
}

/// CPU time (user + system) a process has used, from /proc/PID/stat.
fn cpu_time(pid: &str) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, r)| r).split_whitespace().collect();
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    // Linux reports in clock ticks of 100 per second (USER_HZ on every architecture Atoll runs on).
    Duration::from_millis(ticks * 10)
}

/// CPU time of every daemon, and of this process (the poller).
fn cpu(sites: &[Daemon]) -> (Duration, Duration) {
    let daemons = sites.iter().filter_map(|d| d.pid()).map(|p| cpu_time(&p.to_string())).sum();
    (daemons, cpu_time("self"))
}

/// What asking one site until it answers with the write took.
struct Found {
    requests: u64,
    /// The round trip of the answer that found it.
    confirming: Duration,
}

/// Asks `d` for `path` until it answers 200 (every 0.5 ms).
fn poll_until_found(d: &Daemon, path: &str, token: &str, written: Instant) -> Found {
    let mut requests = 0;
    loop {
        requests += 1;
        let asked = Instant::now();
        if http(&d.addr(), "GET", path, Some(token), b"").status == 200 {
            return Found { requests, confirming: asked.elapsed() };
        }
        assert!(written.elapsed() < Duration::from_secs(30), "{path} never reached {}", d.site);
        std::thread::sleep(Duration::from_micros(500));
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// When a member's message last brought a change to `d`'s realm replica
/// (Unix ms, the daemon's clock: the same machine's).
fn realm_change_received(d: &Daemon, token: &str) -> u64 {
    let network = http(&d.addr(), "GET", "/v1/network", Some(token), b"").json();
    network["changes_received_at"]["realm"].as_u64().unwrap_or(0)
}

const USAGE: &str =
    "usage: net-bench [SITES (2 or more, default 3)] [WRITES (1 or more, default 200)] [together]";

/// Reads a count, or leaves the bench with the usage.
fn count(arg: Option<String>, default: usize, least: usize) -> usize {
    let Some(a) = arg else { return default };
    match a.parse::<usize>() {
        Ok(v) if v >= least => v,
        _ => {
            eprintln!("net-bench: {a:?} is not a count of {least} or more\n{USAGE}");
            std::process::exit(2);
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n = count(args.next(), 3, 2);
    let writes = count(args.next(), 200, 1);
    // `together`: every other site is asked at once, each by a thread of its
    // own, instead of one after the other (the figure then includes one round
    // trip, not N-1, but the daemons serve N-1 pollers meanwhile).
    let together = match args.next().as_deref() {
        None => false,
        Some("together") => true,
        Some(other) => {
            eprintln!("net-bench: unknown argument {other:?}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let root = tempfile::tempdir().unwrap();
    let (sites, admin) = loopback_realm(root.path(), n);
    // The admin's token verifies on every site (offline, by the issuer's key).
    let tokens: Vec<String> = sites.iter().map(|_| admin.clone()).collect();

    // Idle first, so that the idle traffic can be taken out of the writes' figure.
    std::thread::sleep(Duration::from_secs(2));
    let quiet = sent_bytes(&sites, &tokens);
    let (idle_cpu_before, _) = cpu(&sites);
    std::thread::sleep(IDLE);
    let idle_cpu = (cpu(&sites).0 - idle_cpu_before).as_secs_f64() / IDLE.as_secs_f64() / n as f64;
    let idle_all = (sent_bytes(&sites, &tokens) - quiet) as f64 / IDLE.as_secs_f64();
    let idle = idle_all / n as f64;
    let (rss, rss_max) = resident(&sites);
    println!(
        "sites={n} idle: {idle:.0} B/s per site; CPU {:.1} ms per second per site; resident memory per daemon \
         {rss:.1} MiB (max {rss_max:.1})",
        idle_cpu * 1e3
    );

    let before = sent_bytes(&sites, &tokens);
    let (daemons_before, poller_before) = cpu(&sites);
    let started = Instant::now();
    let mut lat = Vec::with_capacity(writes);
    let mut polls = 0u64;
    let mut arrived = Vec::with_capacity(writes);
    // Time spent in the answers that found the write: when each site is
    // asked in turn, the latency includes at least these N-1 round trips.
    let mut confirming = Duration::ZERO;
    for i in 0..writes {
        // `pool`: the project's rights stay at site-1, so the change is one
        // realm record whatever N (an `even` spread writes a transfer to every
        // member, a change that itself grows with N).
        let body = format!(r#"{{"name":"p{i}","spread":"pool"}}"#);
        let reply = http(&sites[0].addr(), "POST", "/v1/projects", Some(&admin), body.as_bytes());
        assert_eq!(reply.status, 200, "{}", reply.body);
        let written = Instant::now();
        let written_at = unix_ms();
        let path = format!("/v1/quotas/p{i}");
        let others = &sites[1..];
        let found = if together {
            std::thread::scope(|scope| {
                let polls: Vec<_> = others
                    .iter()
                    .map(|d| scope.spawn(|| poll_until_found(d, &path, &admin, written)))
                    .collect();
                polls.into_iter().map(|p| p.join().expect("poller thread")).collect::<Vec<_>>()
            })
        } else {
            others.iter().map(|d| poll_until_found(d, &path, &admin, written)).collect()
        };
        for f in found {
            polls += f.requests;
            confirming += f.confirming;
        }
        // The daemons' own record of when the write reached them, after every
        // one has it (the realm is quiet otherwise: no other realm change).
        let reached =
            others.iter().map(|d| realm_change_received(d, &admin).saturating_sub(written_at)).max();
        arrived.push(Duration::from_millis(reached.unwrap_or(0)));
        lat.push(written.elapsed());
    }
    let (daemons_after, poller_after) = cpu(&sites);
    let wall = started.elapsed();
    let sent = (sent_bytes(&sites, &tokens) - before) as f64;
    let per_change = (sent - idle_all * started.elapsed().as_secs_f64()).max(0.0) / writes as f64;
    lat.sort();
    arrived.sort();
    let (conns, conns_max) = connections(&sites, &tokens);
    let (rss, rss_max) = resident(&sites);
    let per_write = |d: Duration| d.as_secs_f64() * 1e3 / writes as f64;
    println!(
        "sites={n} writes={writes} sites asked {}; CPU per write: daemons {:.1} ms, poller {:.1} ms ({:.1} requests, {:.1} ms in \
         the answers that found it); wall {:.1} ms per write",
        if together { "together" } else { "in turn" },
        per_write(daemons_after - daemons_before),
        per_write(poller_after - poller_before),
        polls as f64 / writes as f64,
        per_write(confirming),
        per_write(wall),
    );
    println!(
        "sites={n} writes={writes} arrived everywhere by the daemons' clocks p50={:.0} ms p99={:.0} ms max={:.0} ms",
        percentile(&arrived, 0.5).as_secs_f64() * 1e3,
        percentile(&arrived, 0.99).as_secs_f64() * 1e3,
        arrived.last().unwrap().as_secs_f64() * 1e3,
    );
    println!(
        "sites={n} writes={writes} visible-everywhere p50={:.2} ms p99={:.2} ms max={:.2} ms; \
         {per_change:.0} payload bytes sent per change (all sites); idle {idle:.0} B/s per site; \
         connections per site {conns:.1} (max {conns_max}); resident memory per daemon \
         {rss:.1} MiB (max {rss_max:.1})",
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().unwrap().as_secs_f64() * 1e3,
    );
}
