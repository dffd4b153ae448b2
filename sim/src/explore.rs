//! Running scenarios, and exploring random schedules over them.

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use crate::engine::Sim;
use crate::report::Report;
use crate::scenario::{Scenario, Step};

/// Plays one scenario; wall time is measured here, outside the simulation.
pub fn play(sc: Scenario) -> Report {
    let started = std::time::Instant::now();
    let mut sim = Sim::new(sc);
    sim.run();
    Report::new(&sim, started.elapsed().as_secs_f64())
}

/// The scenario with a random schedule of partitions, one-way cuts, crashes and
/// latency laid over its own steps; everything is healed and restarted by 80%
/// of the run so that convergence can be checked.
pub fn randomize(base: &Scenario, seed: u64) -> Scenario {
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x5eed);
    let mut sc = base.clone();
    sc.seed = seed;
    // Counts belong to the scripted schedule (a crashed site creates nothing);
    // random schedules are held to the invariants only.
    sc.expect.min_created = None;
    sc.expect.min_refused = None;
    let n = sc.sites.count;
    let d = sc.duration;
    let mut at = |lo: f64, hi: f64| lo + (rng.next_u64() as f64 / u64::MAX as f64) * (hi - lo);
    let mut steps: Vec<Step> = Vec::new();
    let events = 1 + (seed % 4) as usize;
    for _ in 0..events {
        let t = at(0.05 * d, 0.6 * d);
        let island = (seed as usize + steps.len() * 7) % n;
        let rest: Vec<usize> = (0..n).filter(|x| *x != island).collect();
        match (seed as usize + steps.len()) % 3 {
            0 => steps.push(Step { at: t, partition: Some(vec![vec![island], rest]), ..Step::default() }),
            1 => steps.push(Step { at: t, one_way: Some((vec![island], rest)), ..Step::default() }),
            _ if n > 1 => {
                steps.push(Step { at: t, crash: Some(island), ..Step::default() });
                steps.push(Step { at: at(t, 0.75 * d), restart: Some(island), ..Step::default() });
            }
            _ => {}
        }
    }
    // Bursts of creations at random sites, more than their shares can hold;
    // the last one sent to another site, as intents.
    if let Some(project) = sc.projects.first().map(|p| p.name.clone()) {
        for b in 0..3 {
            let site = (rng.next_u64() % n as u64) as usize;
            let count = 1 + (rng.next_u64() % 6) as usize;
            let when = 0.1 * d + 0.2 * d * b as f64;
            let on = (b == 2 && n > 1).then(|| (site + 1 + (rng.next_u64() % (n as u64 - 1)) as usize) % n);
            let create = crate::scenario::Create {
                site,
                on,
                image: None,
                name: None,
                project: project.clone(),
                count,
                cpus: 1,
                memory_mib: 64,
            };
            steps.push(Step { at: when, create: Some(create), ..Step::default() });
        }
    }
    // A project admin giving rights away with figures that wrap, saturate or
    // repeat a recipient: the peer must refuse what would break the escrow.
    if let Some(project) = sc.projects.first().map(|p| p.name.clone()) {
        const EXTREMES: [i64; 5] = [1, i64::MAX, i64::MAX / 2 + 1, 1 << 62, atoll_crdt::Resources::LIMIT];
        let mut pick = || EXTREMES[(rng.next_u64() % EXTREMES.len() as u64) as usize];
        let site = (seed as usize) % n;
        let mut to: Vec<usize> = (0..n).filter(|x| *x != site).take(2).collect();
        if seed.is_multiple_of(2)
            && let Some(first) = to.first().copied()
        {
            to.push(first);
        }
        if !to.is_empty() {
            let give =
                crate::scenario::Give { site, to, project, instances: pick(), cpus: pick(), memory_mib: 1 };
            steps.push(Step { at: 0.15 * d, give: Some(give), ..Step::default() });
        }
    }
    steps.push(Step { at: 0.8 * d, heal: Some(true), ..Step::default() });
    for i in 0..n {
        steps.push(Step { at: 0.8 * d, restart: Some(i), ..Step::default() });
    }
    if sc.network.silent_cuts {
        // Cuts of every length against the detection time, healed each time,
        // with request timeouts shorter and longer than detection, and loss.
        let pick = |rng: &mut ChaCha20Rng, from: &[u64]| from[(rng.next_u64() % from.len() as u64) as usize];
        sc.network.detect_ms = pick(&mut rng, &[1_000, 3_000, 30_000]);
        sc.network.request_timeout_ms = pick(&mut rng, &[2_000, 10_000]);
        sc.network.loss = [0.0, 0.01, 0.05][(rng.next_u64() % 3) as usize];
        for k in 0..3 {
            let t = 0.1 * d + 0.2 * d * k as f64;
            let len = pick(&mut rng, &[500, 2_000, 5_000, 20_000]) as f64 / 1000.0;
            let island = (rng.next_u64() % n as u64) as usize;
            let groups = if n >= 4 && k == 1 {
                vec![(0..n / 2).collect(), (n / 2..n).collect()]
            } else {
                vec![vec![island], (0..n).filter(|x| *x != island).collect()]
            };
            steps.push(Step { at: t, partition: Some(groups), ..Step::default() });
            steps.push(Step { at: (t + len).min(0.75 * d), heal: Some(true), ..Step::default() });
        }
    }
    sc.network.jitter_ms = rng.next_u64() % 50;
    sc.timeline.extend(steps);
    sc.timeline.sort_by(|a, b| a.at.total_cmp(&b.at));
    sc
}

/// Plays `count` random schedules; prints every failure with its seed.
pub fn explore(base: &Scenario, from: u64, count: u64) -> bool {
    let mut failed = Vec::new();
    for seed in from..from + count {
        let report = play(randomize(base, seed));
        if !report.passed() {
            let more = report.violations.len().saturating_sub(2);
            let shown = report.violations.iter().take(2).cloned().collect::<Vec<_>>().join("; ");
            eprintln!(
                "seed {seed}: {shown}{}",
                if more > 0 { format!(" (+{more} more)") } else { String::new() }
            );
            failed.push(seed);
        }
    }
    println!(
        "explored {count} schedules of {} (seeds {from}..{}): {} failed{}",
        base.name,
        from + count,
        failed.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!("; replay one with `atoll-sim run SCENARIO --explored SEED`; seeds {failed:?}")
        }
    );
    failed.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(name: &str) -> Scenario {
        Scenario::load(&format!("{}/scenarios/{name}.toml", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn the_same_seed_gives_the_same_trace() {
        let a = play(scenario("split-brain"));
        let b = play(scenario("split-brain"));
        assert_eq!(a.trace_hash, b.trace_hash);
        let mut other = scenario("split-brain");
        other.seed = 99;
        assert_ne!(play(other).trace_hash, a.trace_hash, "the seed must matter");
    }

    #[test]
    fn bundled_small_scenarios_pass() {
        for name in ["split-brain", "flapping-link", "ship", "rolling-restart", "silent-cuts"] {
            let r = play(scenario(name));
            assert!(r.passed(), "{name} (seed {}): {:?}", r.seed, r.violations);
        }
    }

    #[test]
    fn random_schedules_keep_the_invariants() {
        // CI plays more with `atoll-sim explore`; this keeps a few in the unit tests.
        assert!(explore(&scenario("split-brain"), 0, 8));
    }

    #[test]
    fn the_checks_can_fail() {
        // A partition that is never healed: the sites cannot converge.
        let mut sc = scenario("split-brain");
        sc.timeline.retain(|s| s.heal.is_none());
        let r = play(sc);
        assert!(r.violations.iter().any(|v| v.contains("not converged")), "{:?}", r.violations);
    }
}
