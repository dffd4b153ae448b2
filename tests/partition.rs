//! Partitions on a real network: four daemons, each in a network namespace of
//! its own on one bridge (`atoll_e2e::netlab`), cut silently with iptables.
//! Each round cuts (one site off, a 2|2 split, or one pair), issues an intent
//! to a site across the cut, optionally restarts the cut-off site, heals, and
//! checks that
//! - the cut shows in `site list` within 5 s on both sides, and the heal soon after;
//! - the intent's outcome reaches its requester within 2 s of the heal being
//!   seen (of the path returning plus the detection time, for a cut shorter
//!   than detection);
//! - from 10 s after the heal, every site's peer messages over a window are
//!   within twice its idle rate before the first cut;
//!
//! and, with 5% random loss on every link, that no site ever shows another as
//! unreachable; that an instance whose image is held only across a cut waits
//! (`pending`, saying for what) and runs once the holder is back; and that
//! sites connect over QUIC, fall back to TCP where UDP is blocked (a TCP cut
//! noticed within 5 s too) and return to QUIC once it passes. `ATOLL_PARTITION_ROUNDS=20` plays the full set (cuts of 3 s to
//! 3 minutes, with and without restarts, 30 s windows); CI plays a short one.
//! Needs root (namespaces, iptables); elsewhere it says why and passes,
//! except under `CI=true`, where that is a failure.

use std::time::{Duration, Instant};

use atoll_e2e::netlab::Lab;
use atoll_e2e::*;

const SITES: usize = 4;
/// The goals of the partitions issue, checked on every round.
const DETECT_GOAL: Duration = Duration::from_secs(5);
const OUTCOME_GOAL: Duration = Duration::from_secs(2);
const HEAL_GOAL: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy)]
enum Cut {
    /// Site i loses every other site.
    Isolate(usize),
    /// Sites 0 and 1 against 2 and 3.
    Split,
    /// Only the link between two sites.
    Pair(usize, usize),
}

impl Cut {
    /// (requester, target) of the intent sent across the cut.
    fn across(self) -> (usize, usize) {
        match self {
            Cut::Isolate(i) => (if i == 0 { 1 } else { 0 }, i),
            Cut::Split => (0, 2),
            Cut::Pair(a, b) => (a, b),
        }
    }
}

struct Round {
    cut: Cut,
    secs: u64,
    restart: bool,
}

/// The short set for CI, or the full one.
fn rounds() -> (Vec<Round>, Duration) {
    let n: usize = std::env::var("ATOLL_PARTITION_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    if n == 0 {
        let set = vec![
            Round { cut: Cut::Isolate(3), secs: 8, restart: true },
            Round { cut: Cut::Split, secs: 7, restart: false },
            Round { cut: Cut::Pair(1, 2), secs: 2, restart: false },
        ];
        return (set, Duration::from_secs(15));
    }
    let lengths = [5, 30, 3, 60, 10, 180, 20, 2, 45, 90, 15, 120];
    let set = (0..n)
        .map(|k| {
            let cut = match k % 3 {
                0 => Cut::Isolate(1 + k % (SITES - 1)),
                1 => Cut::Split,
                _ => Cut::Pair(k % SITES, (k + 1) % SITES),
            };
            Round {
                cut,
                secs: lengths[k % lengths.len()],
                restart: k % 4 == 0 && matches!(cut, Cut::Isolate(_)),
            }
        })
        .collect();
    (set, Duration::from_secs(30))
}

/// The sites `d` shows as reachable.
fn reachable(d: &Daemon) -> Vec<String> {
    let rows = d.cli().json(&["site", "list"]);
    rows.as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["reachable"] == true && r["member"]["site"] != d.site.as_str())
        .filter_map(|r| r["member"]["site"].as_str().map(str::to_owned))
        .collect()
}

/// Polls until `f` holds; returns the time it took, or None after `within`.
fn time_until(within: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(POLL);
    }
    None
}

/// Payload messages a site has sent so far (`GET /v1/network`).
fn sent(lab: &Lab, i: usize, d: &Daemon) -> u64 {
    let token = saved_token(d);
    let addr = d.addr();
    let reply = lab.within(i, || http(&addr, "GET", "/v1/network", Some(&token), b""));
    reply.json()["sent_msgs"].as_u64().expect("sent_msgs")
}

/// How site `i` is connected to `to`: (QUIC connections, TCP connections).
fn transports(lab: &Lab, i: usize, d: &Daemon, to: &str) -> (u64, u64) {
    let token = saved_token(d);
    let addr = d.addr();
    let reply = lab.within(i, || http(&addr, "GET", "/v1/network", Some(&token), b""));
    let links = reply.json()["links"].clone();
    let link = links.as_array().into_iter().flatten().find(|l| l["site"] == to).cloned().unwrap_or_default();
    (link["quic"].as_u64().unwrap_or(0), link["tcp"].as_u64().unwrap_or(0))
}

/// QUIC where UDP passes, TCP where it does not, and QUIC again once it does;
/// a silent cut of a TCP-only link is noticed by pings. Returns that detection time.
fn quic_first_tcp_fallback(lab: &Lab, sites: &[Daemon]) -> Duration {
    // Generous: a QUIC connection over blocked UDP must first time out, and
    // CI machines are busy.
    let over = |want: (bool, bool)| {
        time_until(Duration::from_secs(60), || {
            let (q, t) = transports(lab, 0, &sites[0], &name(1));
            (q > 0, t > 0) == want
        })
    };
    assert!(over((true, false)).is_some(), "site-1 and site-2 are not connected over QUIC alone");
    lab.block_udp(0, 1).expect("block udp");
    let fallback = over((false, true)).expect("no TCP fallback within 60 s with UDP blocked");
    println!("UDP blocked: connected over TCP after {:.1} s", fallback.as_secs_f64());
    lab.cut(0, 1).expect("cut");
    let cut_at = Instant::now();
    time_until(Duration::from_secs(15), || !reachable(&sites[0]).contains(&name(1)))
        .expect("a silent cut of a TCP link not noticed within 15 s");
    let detected = cut_at.elapsed();
    println!("silent cut of a TCP link noticed after {:.2} s", detected.as_secs_f64());
    lab.heal().expect("heal");
    let upgraded = over((true, false)).expect("not back on QUIC alone within 30 s of UDP passing again");
    println!("UDP passes again: on QUIC alone after {:.1} s", upgraded.as_secs_f64());
    detected
}

/// Messages per site over `window`.
fn rates(lab: &Lab, sites: &[Daemon], window: Duration) -> Vec<f64> {
    let before: Vec<u64> = sites.iter().enumerate().map(|(i, d)| sent(lab, i, d)).collect();
    std::thread::sleep(window);
    let after: Vec<u64> = sites.iter().enumerate().map(|(i, d)| sent(lab, i, d)).collect();
    before.iter().zip(&after).map(|(b, a)| (a - b) as f64 / window.as_secs_f64()).collect()
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    // Nearest rank.
    let rank = (p * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

fn name(i: usize) -> String {
    format!("site-{}", i + 1)
}

#[test]
fn cuts_are_noticed_heals_converge_and_the_realm_goes_quiet() {
    let mut lab = match Lab::create(SITES) {
        Ok(lab) => lab,
        Err(why) => return unavailable(&format!("no network namespaces: {why}")),
    };
    let root = tempfile::tempdir().unwrap();
    let mut sites: Vec<Daemon> = Vec::new();
    let first = Daemon::start_in(root.path(), &name(0), (&lab.ns(0), &lab.ip(0)), &[], None);
    first.login_admin();
    let password = first.password.clone();
    sites.push(first);
    for i in 1..SITES {
        let inv = sites[0].cli().ok(&["site", "invite", "--name", &name(i)]).trim().to_owned();
        let d = Daemon::start_in(
            root.path(),
            &name(i),
            (&lab.ns(i), &lab.ip(i)),
            &["--join", &inv],
            Some(&password),
        );
        d.login_admin();
        sites.push(d);
    }
    for d in &sites {
        let all = time_until(Duration::from_secs(60), || reachable(d).len() == SITES - 1);
        assert!(all.is_some(), "{} does not reach every site: {:?}", d.site, reachable(d));
    }
    // Rights and an image for instances created across cuts.
    let total = ["--instances", "40", "--cpus", "40", "--memory", "16384"];
    sites[0].cli().ok(&[&["quota", "set", "default"][..], &total].concat());
    let share = ["--instances", "8", "--cpus", "8", "--memory", "2048"];
    for i in 1..SITES {
        sites[0].cli().ok(&[&["quota", "give", "default", "--to", &name(i)][..], &share].concat());
    }
    let file = process_image(root.path(), "sleeper", "sleep 600\n");
    sites[0].cli().ok(&["image", "add", file.to_str().unwrap(), "--name", "sleeper"]);

    let tcp_detect = quic_first_tcp_fallback(&lab, &sites);
    assert!(tcp_detect <= DETECT_GOAL, "a silent cut of a TCP link noticed after {tcp_detect:?}");

    let (rounds, window) = rounds();
    std::thread::sleep(Duration::from_secs(5));
    let idle = rates(&lab, &sites, window);
    println!("idle messages per second per site: {idle:.2?}");

    let (mut detections, mut heals, mut outcomes, mut after) = (vec![], vec![], vec![], vec![]);
    for (k, round) in rounds.iter().enumerate() {
        let (from, to) = round.cut.across();
        match round.cut {
            Cut::Isolate(i) => lab.isolate(i),
            Cut::Split => lab.split(&[&[0, 1], &[2, 3]]),
            Cut::Pair(a, b) => lab.cut(a, b),
        }
        .expect("cut");
        let cut_at = Instant::now();
        // Asked at once: the requester does not know of the cut yet.
        let instance = format!("r{k}");
        let tag = sites[to].tag();
        let out = sites[from].cli().ok(&[
            "instance",
            "create",
            &instance,
            "--image",
            "sleeper",
            "--site",
            &name(to),
            "--wait",
            "0",
            "--",
            &tag,
        ]);
        let intent = out.split_whitespace().nth(1).expect("an intent id").to_owned();
        let long = round.secs >= 6;
        if long {
            // Both sides of the cut notice it.
            time_until(DETECT_GOAL + Duration::from_secs(5), || {
                !reachable(&sites[from]).contains(&name(to)) && !reachable(&sites[to]).contains(&name(from))
            })
            .unwrap_or_else(|| panic!("round {k}: {:?} not noticed within 10 s", round.cut));
            let seen = cut_at.elapsed();
            assert!(seen <= DETECT_GOAL, "round {k}: {:?} noticed after {seen:?}", round.cut);
            detections.push(seen.as_secs_f64());
        }
        if round.restart {
            sites[to].kill9();
            sites[to].boot();
        }
        std::thread::sleep(Duration::from_secs(round.secs).saturating_sub(cut_at.elapsed()));
        lab.heal().expect("heal");
        let healed = Instant::now();
        let seen = time_until(Duration::from_secs(30), || reachable(&sites[from]).contains(&name(to)))
            .unwrap_or_else(|| panic!("round {k}: the heal was not seen within 30 s"));
        assert!(seen <= HEAL_GOAL, "round {k}: the heal was seen after {seen:?}");
        let settled = time_until(Duration::from_secs(60), || {
            let shown = sites[from].cli().json(&["intent", "show", &intent]);
            shown["state"] == "done" || shown["state"] == "failed"
        })
        .unwrap_or_else(|| panic!("round {k}: intent {intent} unsettled 60 s after the heal"));
        let since_heal = healed.elapsed();
        let late = if long {
            settled.saturating_sub(seen)
        } else {
            since_heal.saturating_sub(Duration::from_secs(4))
        };
        println!(
            "round {k}: {:?} for {} s{}: heal seen after {:.2} s, outcome {:.2} s after that",
            round.cut,
            round.secs,
            if round.restart { " (restarted)" } else { "" },
            seen.as_secs_f64(),
            settled.saturating_sub(seen).as_secs_f64()
        );
        assert!(late <= OUTCOME_GOAL, "round {k}: outcome of {intent} known {late:?} past the goal");
        heals.push(seen.as_secs_f64());
        outcomes.push(settled.saturating_sub(seen).as_secs_f64());
        std::thread::sleep(Duration::from_secs(10).saturating_sub(healed.elapsed()));
        let rate = rates(&lab, &sites, window);
        for (i, (r, idle)) in rate.iter().zip(&idle).enumerate() {
            // Counts are small: one more summary or repair round is noise, not a storm.
            let limit = 2.0 * idle + 4.0 / window.as_secs_f64();
            assert!(
                *r <= limit,
                "round {k}: site {i} sends {r:.2} messages/s after the heal, idle {idle:.2}"
            );
        }
        after.extend(rate);
    }

    // 5% random loss everywhere: nobody is ever shown unreachable.
    lab.set_loss(Some(0.05)).expect("loss");
    let until = Instant::now() + window;
    let mut polls = 0;
    while Instant::now() < until {
        for d in &sites {
            let seen = reachable(d);
            assert_eq!(seen.len(), SITES - 1, "{} lost sight of a site at 5% loss: {seen:?}", d.site);
            polls += 1;
        }
    }
    lab.set_loss(None).expect("no loss");

    // An image held only across a cut: the instance waits, saying so, and
    // runs once the holder is back.
    let file = process_image(root.path(), "island", "echo island; sleep 600\n");
    sites[0].cli().ok(&["image", "add", file.to_str().unwrap(), "--name", "island"]);
    let listed = |d: &Daemon| d.cli().json(&["image", "list"]).to_string().contains("island");
    assert!(eventually(Duration::from_secs(30), || listed(&sites[3])), "the catalog never reached site-4");
    lab.isolate(3).expect("cut");
    let tag = sites[3].tag();
    let out = sites[3].cli().ok(&["instance", "create", "waits", "--image", "island", "--", &tag]);
    assert!(out.contains("pending") && out.contains("waiting for a holder"), "{out}");
    lab.heal().expect("heal");
    let running = time_until(Duration::from_secs(30), || {
        let shown = sites[3].cli().json(&["instance", "show", "waits"]);
        shown["observed"] == "running"
    });
    let running = running.expect("the instance did not run within 30 s of its image holder's return");
    println!("instance waiting for its image holder ran {:.1} s after the heal", running.as_secs_f64());
    println!(
        "summary over {} rounds: detection p50 {:.2} s p99 {:.2} s; heal seen p50 {:.2} s p99 {:.2} s; \
         outcome after heal seen p50 {:.2} s p99 {:.2} s; messages/s per site after heals p50 {:.2} p99 {:.2} \
         (idle {:.2}-{:.2}); no flap in {polls} polls at 5% loss",
        rounds.len(),
        percentile(detections.clone(), 0.5),
        percentile(detections, 0.99),
        percentile(heals.clone(), 0.5),
        percentile(heals, 0.99),
        percentile(outcomes.clone(), 0.5),
        percentile(outcomes, 0.99),
        percentile(after.clone(), 0.5),
        percentile(after, 0.99),
        idle.iter().copied().fold(f64::INFINITY, f64::min),
        idle.iter().copied().fold(0.0, f64::max),
    );
    drop(sites);
    drop(lab);
}
