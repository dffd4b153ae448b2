//! Deployments (docs/architecture.md, "Deployments and placement"): a named
//! desired state of one or more services, as a user writes it (TOML through
//! the CLI, JSON over the API), and the checks it must pass before anything
//! is placed. Where the replicas go is [`crate::placement`].

use std::collections::{BTreeMap, BTreeSet};

use atoll_crdt::{RestartPolicy, SiteId};
use serde::{Deserialize, Serialize};

use crate::api::{
    ApiError, IMAGE_REF_PATTERN, MAX_ARGS, MAX_CPUS, MAX_DISK_MIB, MAX_ENV, MAX_MEMORY_MIB, MAX_PORTS,
    PORT_PATTERN,
};
use crate::lifecycle::check_shape;
use crate::manage::check_name;

/// Services in one deployment.
pub const MAX_SERVICES: usize = 16;
/// Replicas of one service, and of all services of a deployment together
/// (a plan scores every site once per replica: this bounds its work).
pub const MAX_REPLICAS: u32 = 1_000;
/// Entries in one list or map of a placement rule (sites, regions, labels...).
pub const MAX_RULE_ITEMS: usize = 32;
/// Length of a label key or value, or of a region or operator name.
pub const MAX_RULE_TEXT: usize = 128;

/// A deployment as written: `atoll deploy plan app.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    #[schemars(length(min = 1, max = 63), pattern(atoll_crdt::NAME_PATTERN))]
    pub name: String,
    #[schemars(length(min = 1, max = 63), pattern(atoll_crdt::NAME_PATTERN))]
    pub project: String,
    /// By service name.
    #[schemars(extend("maxProperties" = MAX_SERVICES))]
    pub services: BTreeMap<String, Service>,
}

/// One service: what each replica runs, how many, and where they may go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// `name` of an image of the project, or `project/name` of a public image.
    #[schemars(pattern(IMAGE_REF_PATTERN))]
    pub image: String,
    #[schemars(range(min = 0, max = MAX_REPLICAS))]
    pub replicas: u32,
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = MAX_CPUS))]
    pub cpus: i64,
    #[serde(default = "default_memory")]
    #[schemars(range(min = 1, max = MAX_MEMORY_MIB))]
    pub memory_mib: i64,
    #[serde(default)]
    #[schemars(range(min = 0, max = MAX_DISK_MIB))]
    pub disk_mib: i64,
    #[serde(default = "default_restart")]
    pub restart: RestartPolicy,
    #[serde(default)]
    #[schemars(length(max = MAX_ARGS))]
    pub args: Vec<String>,
    #[serde(default)]
    #[schemars(extend("maxProperties" = MAX_ENV))]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    #[schemars(length(max = MAX_PORTS), inner(pattern(PORT_PATTERN)))]
    pub ports: Vec<String>,
    #[serde(default)]
    pub placement: Rules,
    /// How long replicas on a site this site cannot reach still count before
    /// they are replaced elsewhere: `30s`, `5m`, `2h`, or `never`.
    #[serde(default = "default_lost_after")]
    #[schemars(pattern(LOST_AFTER_PATTERN))]
    pub lost_after: String,
    /// Which copies stay when a lost site returns and the service runs more
    /// replicas than it wants.
    #[serde(default)]
    pub on_heal: OnHeal,
}

/// `lost_after`: a count of seconds, minutes or hours, or `never`.
pub const LOST_AFTER_PATTERN: &str = "^([0-9]{1,6}[smh]|never)$";

/// Which copies of a service are kept when it runs more than it wants (after
/// a heal, or a scale down); the others are stopped, never the kept ones
/// restarted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnHeal {
    /// The oldest copies (those that ran before the partition).
    #[default]
    KeepOriginal,
    /// The newest copies (those started while the site was lost).
    KeepReplacement,
    /// The copies running for the longest time without a restart.
    LongestRunning,
}

fn default_lost_after() -> String {
    "5m".into()
}

impl Service {
    /// `lost_after` in milliseconds (None: never replaced).
    pub fn lost_after_ms(&self) -> Result<Option<u64>, String> {
        let bad = || format!("lost_after {:?}: write e.g. 30s, 5m, 2h or never", self.lost_after);
        if self.lost_after == "never" {
            return Ok(None);
        }
        let (n, unit) = self.lost_after.split_at(self.lost_after.len().saturating_sub(1));
        let scale = match unit {
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        if n.is_empty() || n.len() > 6 || !n.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        Ok(Some(n.parse::<u64>().map_err(|_| bad())? * scale))
    }

    /// A digest of everything a replica is made from (not the count): a
    /// replica made from another digest is replaced, the others kept.
    pub fn digest(&self) -> String {
        use sha2::Digest;
        let made_of = (
            &self.image,
            (self.cpus, self.memory_mib, self.disk_mib),
            self.restart,
            &self.args,
            &self.env,
            &self.ports,
            serde_json::to_string(&self.placement).unwrap_or_default(),
        );
        let bytes = serde_json::to_vec(&made_of).unwrap_or_default();
        hex::encode(&sha2::Sha256::digest(bytes)[..8])
    }
}

fn one() -> i64 {
    1
}
fn default_memory() -> i64 {
    256
}
fn default_restart() -> RestartPolicy {
    RestartPolicy::OnFailure
}

/// Where a service's replicas may go (filters) and which sites are better
/// (the score). Every rule is optional; an empty list allows anything.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// Only these sites.
    #[serde(default)]
    #[schemars(length(max = MAX_RULE_ITEMS))]
    pub sites: Vec<SiteId>,
    /// Only sites of these regions.
    #[serde(default)]
    #[schemars(length(max = MAX_RULE_ITEMS))]
    pub regions: Vec<String>,
    /// Only sites run by these operators.
    #[serde(default)]
    #[schemars(length(max = MAX_RULE_ITEMS))]
    pub operators: Vec<String>,
    /// Only sites carrying every one of these labels with this value.
    #[serde(default)]
    #[schemars(extend("maxProperties" = MAX_RULE_ITEMS))]
    pub labels: BTreeMap<String, String>,
    /// Only sites of this architecture (`x86_64`, `aarch64`).
    #[serde(default)]
    pub arch: Option<String>,
    /// At most this many replicas of the service on one site.
    #[serde(default)]
    #[schemars(range(min = 1, max = MAX_REPLICAS))]
    pub max_per_site: Option<u32>,
    /// Prefer sites (or regions) with fewer replicas of this service.
    #[serde(default)]
    pub spread: Spread,
    /// Never on a site that runs (or is given) a replica of these services
    /// of the deployment; naming the service itself means one per site.
    #[serde(default)]
    #[schemars(length(max = MAX_SERVICES))]
    pub avoid: Vec<String>,
    /// Only on sites that run (or are given) a replica of these services.
    #[serde(default)]
    #[schemars(length(max = MAX_SERVICES))]
    pub with: Vec<String>,
    /// Close to a point: sites carry their coordinates as the labels `lat`
    /// and `lon` (degrees) in their configuration.
    #[serde(default)]
    pub near: Option<Near>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Spread {
    /// Fill the sites with the most free capacity first.
    None,
    /// Fewer replicas of the service on a site score better.
    #[default]
    Site,
    /// Fewer replicas of the service in a region score better.
    Region,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Near {
    #[schemars(range(min = -90.0, max = 90.0))]
    pub lat: f64,
    #[schemars(range(min = -180.0, max = 180.0))]
    pub lon: f64,
    /// Only the N sites closest to the point (among those the other rules
    /// keep); without it, closeness only adds to the score.
    #[serde(default)]
    #[schemars(range(min = 1, max = MAX_RULE_ITEMS))]
    pub closest: Option<u32>,
}

impl Deployment {
    /// Everything a placement relies on: names, bounds, and references
    /// between services that exist and do not contradict each other.
    pub fn check(&self) -> Result<(), ApiError> {
        check_name("deployment", &self.name)?;
        check_name("project", &self.project)?;
        if self.services.is_empty() || self.services.len() > MAX_SERVICES {
            return Err(invalid(format!("a deployment has 1 to {MAX_SERVICES} services")));
        }
        for (name, s) in &self.services {
            check_name("service", name)?;
            s.check(name).map_err(|e| invalid(format!("service {name}: {e}")))?;
            // Replicas are named `<deployment>.<service>.<n>` (n < 10,000).
            if self.name.len() + name.len() + 6 > 63 {
                return Err(invalid(format!(
                    "deployment {} and service {name}: together at most 57 characters (replica names)",
                    self.name
                )));
            }
            for other in s.placement.avoid.iter().chain(&s.placement.with) {
                if !self.services.contains_key(other) {
                    return Err(invalid(format!("service {name}: no service {other} in this deployment")));
                }
            }
            if let Some(both) = s.placement.avoid.iter().find(|o| s.placement.with.contains(o)) {
                return Err(invalid(format!("service {name} both avoids and goes with {both}")));
            }
            if s.placement.with.contains(name) {
                return Err(invalid(format!("service {name} cannot go with itself")));
            }
        }
        // Each service has at most MAX_REPLICAS: the sum cannot overflow.
        let total: u32 = self.services.values().map(|s| s.replicas).sum();
        if total > MAX_REPLICAS {
            return Err(invalid(format!(
                "a deployment has at most {MAX_REPLICAS} replicas over all its services"
            )));
        }
        self.order().map(|_| ())
    }

    /// The services in the order they are placed: a service after those it
    /// goes `with` (so it can join them), else by name. A cycle of `with` is
    /// refused: nothing could be placed first.
    pub fn order(&self) -> Result<Vec<&str>, ApiError> {
        let mut placed: Vec<&str> = Vec::with_capacity(self.services.len());
        let mut left: BTreeSet<&str> = self.services.keys().map(String::as_str).collect();
        while !left.is_empty() {
            let next = left.iter().copied().find(|name| {
                self.services[*name].placement.with.iter().all(|w| placed.contains(&w.as_str()))
            });
            let Some(next) = next else {
                let cycle: Vec<&str> = left.into_iter().collect();
                return Err(invalid(format!("services {} go with each other in a cycle", cycle.join(", "))));
            };
            left.remove(next);
            placed.push(next);
        }
        Ok(placed)
    }
}

impl Service {
    fn check(&self, name: &str) -> Result<(), String> {
        if self.replicas > MAX_REPLICAS {
            return Err(format!("at most {MAX_REPLICAS} replicas"));
        }
        check_shape(
            self.cpus,
            self.memory_mib,
            self.disk_mib,
            (self.args.len(), self.env.len()),
            &self.ports,
        )?;
        let (img_project, img_name) = self.image.split_once('/').unwrap_or(("default", &self.image));
        check_name("image", img_name).and(check_name("project", img_project)).map_err(|e| e.to_string())?;
        if name.len() > 40 {
            return Err("service names have at most 40 characters".into());
        }
        self.lost_after_ms()?;
        self.placement.check()
    }
}

impl Rules {
    fn check(&self) -> Result<(), String> {
        let lists = [self.sites.len(), self.regions.len(), self.operators.len(), self.labels.len()];
        if lists.iter().any(|n| *n > MAX_RULE_ITEMS) {
            return Err(format!("at most {MAX_RULE_ITEMS} entries in each placement rule"));
        }
        let texts =
            self.regions.iter().chain(&self.operators).chain(self.labels.iter().flat_map(|(k, v)| [k, v]));
        if texts.chain(&self.arch).any(|t| t.is_empty() || t.len() > MAX_RULE_TEXT) {
            return Err(format!("placement names and labels have 1 to {MAX_RULE_TEXT} characters"));
        }
        if self.max_per_site == Some(0) || self.max_per_site.is_some_and(|m| m > MAX_REPLICAS) {
            return Err(format!("max_per_site must be 1 to {MAX_REPLICAS}"));
        }
        if let Some(n) = &self.near {
            let in_range = (-90.0..=90.0).contains(&n.lat) && (-180.0..=180.0).contains(&n.lon);
            if !in_range {
                return Err("near: lat must be -90 to 90 and lon -180 to 180 degrees".into());
            }
            if n.closest.is_some_and(|c| c == 0 || c as usize > MAX_RULE_ITEMS) {
                return Err(format!("near.closest must be 1 to {MAX_RULE_ITEMS}"));
            }
        }
        Ok(())
    }
}

fn invalid(msg: String) -> ApiError {
    ApiError::Invalid(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(image: &str, replicas: u32) -> Service {
        serde_json::from_value(serde_json::json!({ "image": image, "replicas": replicas })).unwrap()
    }

    fn deployment(services: Vec<(&str, Service)>) -> Deployment {
        Deployment {
            name: "web".into(),
            project: "default".into(),
            services: services.into_iter().map(|(n, s)| (n.to_owned(), s)).collect(),
        }
    }

    #[test]
    fn a_plain_deployment_passes_and_keeps_its_defaults() {
        let d = deployment(vec![("front", service("hello", 3))]);
        d.check().unwrap();
        let s = &d.services["front"];
        assert_eq!((s.cpus, s.memory_mib, s.restart), (1, 256, RestartPolicy::OnFailure));
        assert_eq!(s.placement.spread, Spread::Site);
    }

    #[test]
    fn references_must_exist_and_agree() {
        let mut api = service("hello", 2);
        api.placement.with = vec!["db".into()];
        assert!(
            deployment(vec![("api", api.clone())]).check().unwrap_err().to_string().contains("no service db")
        );

        let mut both = api.clone();
        both.placement.avoid = vec!["db".into()];
        let d = deployment(vec![("api", both), ("db", service("pg", 1))]);
        assert!(d.check().unwrap_err().to_string().contains("both avoids and goes with db"));

        let mut db = service("pg", 1);
        db.placement.with = vec!["api".into()];
        let d = deployment(vec![("api", api.clone()), ("db", db)]);
        assert!(d.check().unwrap_err().to_string().contains("cycle"), "{:?}", d.check());

        let d = deployment(vec![("api", api), ("db", service("pg", 1))]);
        assert_eq!(d.order().unwrap(), vec!["db", "api"], "a service is placed after those it goes with");
    }

    #[test]
    fn bounds_are_refused_with_the_service_named() {
        let mut s = service("hello", MAX_REPLICAS + 1);
        let e = deployment(vec![("front", s.clone())]).check().unwrap_err().to_string();
        assert!(e.contains("service front") && e.contains("replicas"), "{e}");
        s.replicas = 1;
        s.placement.near = Some(Near { lat: 91.0, lon: 0.0, closest: None });
        assert!(deployment(vec![("front", s.clone())]).check().is_err());
        s.placement.near = None;
        s.placement.max_per_site = Some(0);
        assert!(deployment(vec![("front", s.clone())]).check().is_err());
        s.placement.max_per_site = None;
        s.image = "Bad Image".into();
        assert!(deployment(vec![("front", s)]).check().is_err());
        assert!(deployment(vec![]).check().is_err());
        let e =
            deployment(vec![("a", service("hello", 600)), ("b", service("hello", 600))]).check().unwrap_err();
        assert!(e.to_string().contains("over all its services"), "{e}");
    }

    #[test]
    fn unknown_fields_are_refused_not_ignored() {
        let e = serde_json::from_value::<Service>(serde_json::json!({
            "image": "hello", "replicas": 1, "placement": { "region": ["eu"] }
        }));
        assert!(e.is_err(), "a misspelt rule must not silently allow every site");
    }
}
