//! Generated load: a `churn` step (instances created at random sites, most of
//! them from an image another site holds, each deleted after a while) and a
//! `flap` step (a few sites at a time cut off and let back) expand into
//! plain timeline steps when the scenario is loaded. They are drawn from the
//! scenario's seed, so a run stays reproducible and `explore` plays its own
//! faults on top of the same load.

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use serde::Deserialize;

use crate::scenario::{Create, Delete, Scenario, ScenarioError, Step};

/// Generated steps, all churns and flaps of a scenario together, at most.
const MAX_GENERATED: f64 = 200_000.0;

/// Instances created and deleted at a steady rate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Churn {
    pub project: String,
    /// Creations per simulated second over all sites (Poisson arrivals).
    pub per_s: f64,
    /// No creation after this second.
    pub until: f64,
    /// Each instance is deleted through its site's API this many seconds
    /// after it was asked for (if that is within the run).
    pub lifetime_s: f64,
    /// One image is registered by each of the first `images` sites; a
    /// creation at any other site copies its image there before it starts.
    pub images: usize,
}

/// Sites whose links go down and come back, over and over.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flap {
    /// Sites cut off at each flap, each from every other, drawn anew each time.
    pub sites: usize,
    pub down_s: f64,
    pub up_s: f64,
    /// No flap starts after this second.
    pub until: f64,
}

impl Churn {
    fn check(&self, at: f64, sites: usize) -> Result<(), String> {
        if !(self.per_s > 0.0 && self.per_s <= 100.0) {
            return Err(format!("churn.per_s must be above 0 and at most 100, not {}", self.per_s));
        }
        if !(self.lifetime_s.is_finite() && self.lifetime_s > 0.0) {
            return Err(format!("churn.lifetime_s must be above 0, not {}", self.lifetime_s));
        }
        if self.images == 0 || self.images > sites {
            return Err(format!("churn.images must be 1 to {sites} (the sites), not {}", self.images));
        }
        if !(self.until.is_finite() && self.until >= at) {
            return Err(format!("churn.until ({}) is before the step ({at})", self.until));
        }
        Ok(())
    }

    fn steps(&self, at: f64) -> f64 {
        2.0 * (self.until - at) * self.per_s
    }
}

impl Flap {
    fn check(&self, at: f64, sites: usize) -> Result<(), String> {
        if self.sites == 0 || self.sites >= sites {
            return Err(format!(
                "flap.sites must be 1 to {} (fewer than the sites), not {}",
                sites - 1,
                self.sites
            ));
        }
        if !(self.down_s > 0.0 && self.up_s > 0.0) {
            return Err(format!(
                "flap.down_s and flap.up_s must be above 0, not {} and {}",
                self.down_s, self.up_s
            ));
        }
        if !(self.until.is_finite() && self.until >= at) {
            return Err(format!("flap.until ({}) is before the step ({at})", self.until));
        }
        Ok(())
    }

    fn steps(&self, at: f64) -> f64 {
        2.0 * ((self.until - at) / (self.down_s + self.up_s) + 1.0)
    }
}

/// Checks the generators' figures (a bad file is refused, not run for hours).
pub fn check(sc: &Scenario) -> Result<(), ScenarioError> {
    let mut total = 0.0;
    for s in &sc.timeline {
        let n = sc.sites.count;
        let checked = match (&s.churn, &s.flap) {
            (Some(c), _) => c.check(s.at, n).map(|()| c.steps(s.at)),
            (_, Some(f)) => f.check(s.at, n).map(|()| f.steps(s.at)),
            _ => Ok(0.0),
        };
        total += checked.map_err(|e| ScenarioError::Invalid(format!("step at {} s: {e}", s.at)))?;
    }
    if total > MAX_GENERATED {
        return Err(ScenarioError::Invalid(format!(
            "churn and flap steps would make {total:.0} steps; at most {MAX_GENERATED:.0}"
        )));
    }
    Ok(())
}

/// Appends the steps every `churn` and `flap` stands for (marked generated).
pub fn expand(sc: &mut Scenario) {
    let mut rng = ChaCha20Rng::seed_from_u64(sc.seed ^ 0x6c6f_6164);
    let n = sc.sites.count as u64;
    let end = sc.duration;
    let mut extra: Vec<Step> = Vec::new();
    for step in &sc.timeline {
        if let Some(c) = &step.churn {
            let mut t = step.at + arrival_gap(&mut rng, c.per_s);
            while t <= c.until.min(end) {
                let site = (rng.next_u64() % n) as usize;
                let image = (rng.next_u64() % c.images as u64) as usize;
                let create = Create {
                    site,
                    on: None,
                    image: Some(image),
                    name: Some(format!("churn{}", extra.len())),
                    project: c.project.clone(),
                    count: 1,
                    cpus: 1,
                    memory_mib: 64,
                };
                let name = create.instance_name(0, 0);
                extra.push(Step { at: t, create: Some(create), generated: true, ..Step::default() });
                let gone = t + c.lifetime_s;
                if gone <= end {
                    let delete = Delete { site, project: c.project.clone(), name };
                    extra.push(Step { at: gone, delete: Some(delete), generated: true, ..Step::default() });
                }
                t += arrival_gap(&mut rng, c.per_s);
            }
        }
        if let Some(f) = &step.flap {
            let mut t = step.at;
            while t <= f.until.min(end) {
                let mut cut: Vec<Vec<usize>> = Vec::new();
                while cut.len() < f.sites {
                    let s = (rng.next_u64() % n) as usize;
                    if !cut.iter().any(|g| g[0] == s) {
                        cut.push(vec![s]);
                    }
                }
                cut.sort();
                extra.push(Step { at: t, partition: Some(cut), generated: true, ..Step::default() });
                let back = t + f.down_s;
                if back <= end {
                    extra.push(Step { at: back, heal: Some(true), generated: true, ..Step::default() });
                }
                t = back + f.up_s;
            }
        }
    }
    sc.timeline.extend(extra);
}

/// Seconds to the next arrival of a Poisson process of `per_s` a second.
fn arrival_gap(rng: &mut ChaCha20Rng, per_s: f64) -> f64 {
    // A uniform draw in (0, 1]: never 0, whose logarithm is infinite.
    let u = ((rng.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
    -u.ln() / per_s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy(extra: &str) -> Scenario {
        let text = format!(
            "name = \"t\"\nduration = 100.0\n[sites]\ncount = 50\n\
             [[projects]]\nname = \"p\"\ninstances = 100\ncpus = 100\nmemory_mib = 6400\n{extra}"
        );
        let mut sc: Scenario = toml::from_str(&text).unwrap();
        sc.validate().unwrap();
        expand(&mut sc);
        sc
    }

    #[test]
    fn churn_creates_at_its_rate_and_deletes_what_it_created() {
        let sc = busy(
            "[[timeline]]\nat = 10.0\nchurn = { project = \"p\", per_s = 2.0, until = 60.0, lifetime_s = 20.0, images = 3 }",
        );
        let creates: Vec<(usize, &Step)> =
            sc.timeline.iter().enumerate().filter(|(_, s)| s.create.is_some()).collect();
        // 100 expected over 50 s at 2/s; a Poisson count stays well within this.
        assert!((60..=140).contains(&creates.len()), "{} creations", creates.len());
        for (k, s) in &creates {
            let c = s.create.as_ref().unwrap();
            assert!(c.image.unwrap() < 3 && s.at > 10.0 && s.at <= 60.0);
            let name = c.instance_name(*k, 0);
            let deleted = sc
                .timeline
                .iter()
                .filter_map(|s| s.delete.as_ref().map(|d| (s.at, d)))
                .find(|(_, d)| d.name == name);
            let (at, d) = deleted.expect("every creation is deleted within the run");
            assert_eq!(d.site, c.site);
            assert!((at - s.at - 20.0).abs() < 1e-9);
        }
        // Drawn from the seed: the same file gives the same steps.
        let again = busy(
            "[[timeline]]\nat = 10.0\nchurn = { project = \"p\", per_s = 2.0, until = 60.0, lifetime_s = 20.0, images = 3 }",
        );
        assert_eq!(format!("{:?}", sc.timeline), format!("{:?}", again.timeline));
    }

    #[test]
    fn flaps_cut_distinct_sites_and_heal_them() {
        let sc = busy("[[timeline]]\nat = 5.0\nflap = { sites = 4, down_s = 3.0, up_s = 7.0, until = 95.0 }");
        let cuts: Vec<&Step> = sc.timeline.iter().filter(|s| s.partition.is_some()).collect();
        let heals = sc.timeline.iter().filter(|s| s.heal == Some(true)).count();
        assert_eq!(cuts.len(), 10);
        assert_eq!(heals, 10);
        for c in cuts {
            let groups = c.partition.as_ref().unwrap();
            let mut sites: Vec<usize> = groups.iter().flatten().copied().collect();
            sites.dedup();
            assert_eq!(sites.len(), 4);
        }
    }

    #[test]
    fn bad_figures_are_refused() {
        for (bad, why) in [
            (
                "churn = { project = \"p\", per_s = 0.0, until = 60.0, lifetime_s = 20.0, images = 3 }",
                "per_s",
            ),
            (
                "churn = { project = \"p\", per_s = 1.0, until = 60.0, lifetime_s = 20.0, images = 51 }",
                "images",
            ),
            ("churn = { project = \"p\", per_s = 1.0, until = 5.0, lifetime_s = 20.0, images = 1 }", "until"),
            (
                "churn = { project = \"p\", per_s = 100.0, until = 5000.0, lifetime_s = 1.0, images = 1 }",
                "at most",
            ),
            ("flap = { sites = 50, down_s = 1.0, up_s = 1.0, until = 60.0 }", "flap.sites"),
            ("flap = { sites = 1, down_s = 0.0, up_s = 1.0, until = 60.0 }", "down_s"),
        ] {
            let text = format!(
                "name = \"t\"\nduration = 100.0\n[sites]\ncount = 50\n[[timeline]]\nat = 10.0\n{bad}"
            );
            let sc: Scenario = toml::from_str(&text).unwrap();
            let e = sc.validate().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
