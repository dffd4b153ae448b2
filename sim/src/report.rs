//! What a run reports: a readable timeline, figures, `--json`, and an SVG plot
//! of convergence over time.

use atoll_crdt::Millis;
use serde::Serialize;

use crate::checks::Convergence;
use crate::engine::Sim;

#[derive(Debug, Default, Clone, Serialize)]
pub struct Stats {
    pub messages: u64,
    pub bytes: u64,
    pub dropped: u64,
    pub created: usize,
    pub refused: usize,
    /// Instances deleted, and deletions of instances that were not there
    /// (refused or not yet made).
    pub deleted: usize,
    pub delete_missed: usize,
    /// `quota give` calls that were accepted.
    pub gives: usize,
    /// Creations refused while a site in reach held spare rights (goal 0).
    pub refused_in_reach: usize,
    /// Creations refused while the project's total had room for them.
    pub refused_with_room: usize,
    /// Sync messages sent, in all; and in the quiet window after convergence.
    pub sync_messages: u64,
    pub quiet_sync_messages: u64,
    /// Rights on demand: asks and answers sent, and their bytes.
    pub rights_messages: u64,
    pub rights_bytes: u64,
    /// Forged messages sent (`forge` steps) and changes the peers refused.
    pub forged: u64,
    pub refused_changes: u64,
    /// (time, share of live sites agreeing on the realm), once a second.
    pub samples: Vec<(Millis, f64)>,
    pub settled_at: Millis,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: String,
    #[serde(skip)]
    pub description: String,
    pub seed: u64,
    pub sites: usize,
    pub simulated_s: f64,
    pub wall_s: f64,
    pub simulated_per_wall: f64,
    pub messages: u64,
    pub bytes: u64,
    pub dropped: u64,
    pub created: usize,
    pub refused: usize,
    pub deleted: usize,
    pub delete_missed: usize,
    /// Payload bytes and messages sent per site per simulated second.
    pub bytes_per_site_s: f64,
    pub messages_per_site_s: f64,
    /// Over the heals that converged: time to convergence, p50 and p99 (ms).
    pub converged_p50_ms: Option<Millis>,
    pub converged_p99_ms: Option<Millis>,
    pub intents_done: usize,
    pub intents_failed: usize,
    pub convergence: Vec<Convergence>,
    pub converged: bool,
    /// Deployments: each loss of sites running replicas, and its repair.
    pub recoveries: Vec<crate::recovery::Recovery>,
    /// Instances failed because their image could not be fetched (goal 0).
    pub failed_fetching: usize,
    /// Creations refused while a site in reach held spare rights (goal 0).
    pub refused_in_reach: usize,
    /// Creations refused while the project's total had room for them
    /// (somewhere: maybe out of reach, or held by sites using it).
    pub refused_with_room: usize,
    /// Sync messages in the quiet window after convergence.
    pub quiet_sync_messages: u64,
    /// Rights asks and answers, and their bytes (the transfers they cause
    /// travel in sync messages).
    pub rights_messages: u64,
    pub rights_bytes: u64,
    pub forged: u64,
    pub refused_changes: u64,
    pub persisted_total_bytes: usize,
    pub persisted_max_site_bytes: usize,
    /// Epochs its sites started by compacting their documents, all sites together.
    pub epochs: u64,
    pub peak_rss_kib: u64,
    pub trace_hash: String,
    pub violations: Vec<String>,
    #[serde(skip)]
    pub samples: Vec<(Millis, f64)>,
    #[serde(skip)]
    pub steps: Vec<String>,
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

impl Report {
    pub fn new(sim: &Sim, wall_s: f64) -> Report {
        let (total, max) = sim.persisted();
        let simulated_s = sim.stats.settled_at as f64 / 1000.0;
        let steps = sim
            .sc
            .timeline
            .iter()
            .filter(|s| !s.generated)
            .map(|s| {
                let what = if let Some(c) = &s.churn {
                    format!(
                        "churn {}: {} creations/s until {} s at random sites, images of {} sites, each deleted after {} s",
                        c.project, c.per_s, c.until, c.images, c.lifetime_s
                    )
                } else if let Some(f) = &s.flap {
                    format!(
                        "flap: {} random sites cut off for {} s, then {} s up, until {} s",
                        f.sites, f.down_s, f.up_s, f.until
                    )
                } else if let Some(d) = &s.delete {
                    format!("delete {}/{} at s{}", d.project, d.name, d.site)
                } else if let Some(g) = &s.partition {
                    format!("partition {g:?}")
                } else if let Some((a, b)) = &s.one_way {
                    format!("one-way cut {a:?} -> {b:?}")
                } else if s.heal == Some(true) {
                    "heal".into()
                } else if let Some(i) = s.crash {
                    format!("crash s{i}")
                } else if let Some(i) = s.restart {
                    format!("restart s{i}")
                } else if let Some(c) = &s.create {
                    match c.on {
                        Some(on) => {
                            format!("create {} x{} on s{on}, asked at s{}", c.project, c.count, c.site)
                        }
                        None => format!("create {} x{} at s{}", c.project, c.count, c.site),
                    }
                } else if let Some(f) = &s.forge {
                    format!("s{} forges {:?} as s{}", f.site, f.what, f.victim)
                } else if let Some(d) = &s.deploy {
                    if d.delete {
                        format!("delete deployment {}/{} at s{}", d.project, d.name, d.site)
                    } else {
                        format!("deploy {}/{} x{} at s{}", d.project, d.name, d.replicas, d.site)
                    }
                } else {
                    "nothing".into()
                };
                format!("{:>8.1}s  {what}", s.at)
            })
            .collect();
        let mut took: Vec<Millis> =
            sim.checks.convergence.iter().filter_map(|c| c.converged_after_ms).collect();
        took.sort_unstable();
        let pick = |q: f64| (!took.is_empty()).then(|| took[((took.len() - 1) as f64 * q).round() as usize]);
        let site_s = (sim.sc.sites.count as f64 * simulated_s).max(1e-9);
        Report {
            scenario: sim.sc.name.clone(),
            description: sim.sc.description.trim().to_owned(),
            seed: sim.sc.seed,
            sites: sim.sc.sites.count,
            simulated_s,
            wall_s,
            simulated_per_wall: if wall_s > 0.0 { simulated_s / wall_s } else { 0.0 },
            messages: sim.stats.messages,
            bytes: sim.stats.bytes,
            dropped: sim.stats.dropped,
            created: sim.stats.created,
            refused: sim.stats.refused,
            deleted: sim.stats.deleted,
            delete_missed: sim.stats.delete_missed,
            bytes_per_site_s: sim.stats.bytes as f64 / site_s,
            messages_per_site_s: sim.stats.messages as f64 / site_s,
            converged_p50_ms: pick(0.5),
            converged_p99_ms: pick(0.99),
            intents_done: sim.checks.intents_done,
            intents_failed: sim.checks.intents_failed,
            convergence: sim.checks.convergence.clone(),
            converged: sim.checks.converged.unwrap_or(false),
            recoveries: sim.replicas.recovery.list.clone(),
            failed_fetching: sim.checks.failed_fetching,
            refused_in_reach: sim.stats.refused_in_reach,
            refused_with_room: sim.stats.refused_with_room,
            quiet_sync_messages: sim.stats.quiet_sync_messages,
            rights_messages: sim.stats.rights_messages,
            rights_bytes: sim.stats.rights_bytes,
            forged: sim.stats.forged,
            refused_changes: sim.stats.refused_changes,
            persisted_total_bytes: total,
            persisted_max_site_bytes: max,
            epochs: sim.epochs(),
            peak_rss_kib: peak_rss_kib(),
            trace_hash: sim.trace_hash(),
            violations: sim
                .checks
                .violations
                .iter()
                .map(|(t, v)| format!("{:.3}s: {v}", *t as f64 / 1000.0))
                .collect(),
            samples: sim.stats.samples.clone(),
            steps,
        }
    }

    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn text(&self) -> String {
        let mut out = format!(
            "scenario {} (seed {}, {} sites)\n{}\n\ntimeline\n{}\n",
            self.scenario,
            self.seed,
            self.sites,
            self.description,
            self.steps.join("\n")
        );
        out.push_str("\nrealm agreement over time (share of live sites on the common realm)\n");
        out.push_str(&sparkline(&self.samples));
        out.push_str(&format!(
            "\n\nsimulated {:.1} s in {:.2} s wall ({:.0} simulated s per wall s)\n\
             messages {} ({} bytes, {} dropped by the network); per site per second {:.1} messages, {:.0} bytes\n\
             instances created {}, refused for quota {} ({} while the project's total had room, {} while a site in reach held spare rights); intents applied {}, refused {}\n\
             instances deleted {} ({} asked for were not there)\n\
             rights asked and answered: {} messages, {} bytes\n\
             forged messages sent {}; changes refused by the peers {}\n\
             instances failed for an unreachable image holder {}; sync messages in the quiet window {}\n\
             persisted state: {} bytes over all sites, {} bytes at the largest; documents compacted {} times\n\
             peak memory {} MiB\n",
            self.simulated_s,
            self.wall_s,
            self.simulated_per_wall,
            self.messages,
            self.bytes,
            self.dropped,
            self.messages_per_site_s,
            self.bytes_per_site_s,
            self.created,
            self.refused,
            self.refused_with_room,
            self.refused_in_reach,
            self.intents_done,
            self.intents_failed,
            self.deleted,
            self.delete_missed,
            self.rights_messages,
            self.rights_bytes,
            self.forged,
            self.refused_changes,
            self.failed_fetching,
            self.quiet_sync_messages,
            self.persisted_total_bytes,
            self.persisted_max_site_bytes,
            self.epochs,
            self.peak_rss_kib / 1024,
        ));
        for c in &self.convergence {
            match c.converged_after_ms {
                Some(ms) => out.push_str(&format!(
                    "heal at {:.1} s: realm converged after {:.1} s\n",
                    c.heal_at_ms as f64 / 1e3,
                    ms as f64 / 1e3
                )),
                None => out.push_str(&format!(
                    "heal at {:.1} s: did not converge before the end\n",
                    c.heal_at_ms as f64 / 1e3
                )),
            }
        }
        if let (Some(p50), Some(p99)) = (self.converged_p50_ms, self.converged_p99_ms) {
            out.push_str(&format!(
                "convergence after {} heal(s), 100 ms probes: p50 {:.1} s, p99 {:.1} s\n",
                self.convergence.iter().filter(|c| c.converged_after_ms.is_some()).count(),
                p50 as f64 / 1e3,
                p99 as f64 / 1e3
            ));
        }
        let secs =
            |ms: Option<Millis>| ms.map_or("never".to_string(), |ms| format!("{:.1} s", ms as f64 / 1e3));
        for r in &self.recoveries {
            out.push_str(&format!(
                "deployments: {} site(s) running {} replicas lost at {:.1} s: all running in reach again after {}",
                r.sites_lost,
                r.copies_lost,
                r.lost_at_ms as f64 / 1e3,
                secs(r.replaced_after_ms),
            ));
            match r.returned_at_ms {
                Some(at) => out.push_str(&format!(
                    "; back at {:.1} s, each count exact after {}\n",
                    at as f64 / 1e3,
                    secs(r.converged_after_ms)
                )),
                None => out.push_str("; not back\n"),
            }
        }
        out.push_str(&format!("trace {}\n", self.trace_hash));
        if self.passed() {
            out.push_str("checks: all passed (converged, no overspend, no lost acknowledged write, nothing run twice, every intent settled once)\n");
        } else {
            out.push_str(&format!("checks: {} FAILED (seed {})\n", self.violations.len(), self.seed));
            for v in &self.violations {
                out.push_str(&format!("  {v}\n"));
            }
        }
        out
    }

    pub fn svg(&self) -> String {
        let (w, h, pad) = (640.0, 240.0, 40.0);
        let end = self.samples.last().map(|s| s.0).unwrap_or(1).max(1) as f64;
        let points: Vec<String> = self
            .samples
            .iter()
            .map(|(t, v)| {
                format!(
                    "{:.1},{:.1}",
                    pad + (*t as f64 / end) * (w - 2.0 * pad),
                    h - pad - v * (h - 2.0 * pad)
                )
            })
            .collect();
        let heals: String = self
            .convergence
            .iter()
            .map(|c| {
                let x = pad + (c.heal_at_ms as f64 / end) * (w - 2.0 * pad);
                format!("<line x1='{x:.1}' y1='{pad}' x2='{x:.1}' y2='{:.1}' stroke='#c33' stroke-dasharray='4'/>", h - pad)
            })
            .collect();
        format!(
            "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='11'>\
             <rect width='100%' height='100%' fill='white'/>\
             <text x='{pad}' y='20'>{}: share of live sites agreeing on the realm (dashed: heal)</text>\
             <line x1='{pad}' y1='{:.1}' x2='{:.1}' y2='{:.1}' stroke='black'/>\
             <line x1='{pad}' y1='{pad}' x2='{pad}' y2='{:.1}' stroke='black'/>\
             <text x='4' y='{:.1}'>1.0</text><text x='4' y='{:.1}'>0.0</text>\
             <text x='{:.1}' y='{:.1}'>{:.0} s</text>{heals}\
             <polyline fill='none' stroke='#26a' stroke-width='2' points='{}'/></svg>\n",
            self.scenario,
            h - pad,
            w - pad,
            h - pad,
            h - pad,
            pad + 4.0,
            h - pad,
            w - pad - 30.0,
            h - pad + 16.0,
            end / 1000.0,
            points.join(" "),
        )
    }
}

/// One character per sample: how many of the live sites agree.
fn sparkline(samples: &[(Millis, f64)]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let step = samples.len().div_ceil(100).max(1);
    let line: String = samples
        .chunks(step)
        .map(|c| {
            let v = c.iter().map(|s| s.1).fold(1.0f64, f64::min);
            BARS[((v * 7.0).round() as usize).min(7)]
        })
        .collect();
    format!(
        "{line}\n0 s{:>width$}",
        format!("{:.0} s", samples.last().map_or(0, |s| s.0) as f64 / 1e3),
        width = line.chars().count().saturating_sub(3)
    )
}
