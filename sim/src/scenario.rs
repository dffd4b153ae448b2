//! Scenario files (TOML): the sites, the projects, a timeline of operations and
//! network events, and what must hold at the end. See docs/scenarios.md.

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("scenario: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("scenario: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Simulated seconds to run.
    pub duration: f64,
    pub sites: Sites,
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub projects: Vec<ProjectSpec>,
    #[serde(default)]
    pub timeline: Vec<Step>,
    #[serde(default)]
    pub expect: Expect,
    /// The rule every peer breaks (`--sabotage`; `sabotage` builds only).
    #[serde(skip)]
    pub sabotage: atoll_proto::Sabotage,
}

fn default_seed() -> u64 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sites {
    pub count: usize,
    /// Regions assigned round-robin.
    #[serde(default = "one_region")]
    pub regions: Vec<String>,
    /// Changes after which a site compacts its document into a new epoch
    /// (the peer's default, `atoll_proto::epoch::COMPACT_AFTER`, if unset).
    #[serde(default)]
    pub compact_after: Option<u64>,
}

fn one_region() -> Vec<String> {
    vec!["default".into()]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Network {
    /// One-way latency within a region and between regions, milliseconds.
    pub intra_ms: u64,
    pub inter_ms: u64,
    pub jitter_ms: u64,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Link bandwidth in bytes per millisecond (0: unlimited).
    pub bytes_per_ms: u64,
    /// Real networks: a cut is silent. Connections stay up until the cut has
    /// lasted `detect_ms` (the daemon's keep-alive and ping timeouts), and a
    /// message lost on a link that is still up (cut, or `loss`) is reported to
    /// its sender as undelivered after `request_timeout_ms` (or when the cut
    /// is detected, if sooner). A healed link whose cut was detected is dialled
    /// again within `redial_ms`. Off: sites see cuts and heals at once, and
    /// lost messages vanish unreported.
    pub silent_cuts: bool,
    pub detect_ms: u64,
    pub request_timeout_ms: u64,
    pub redial_ms: u64,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            intra_ms: 2,
            inter_ms: 40,
            jitter_ms: 2,
            loss: 0.0,
            bytes_per_ms: 0,
            silent_cuts: false,
            detect_ms: 3_000,
            request_timeout_ms: 10_000,
            redial_ms: 1_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectSpec {
    pub name: String,
    pub instances: i64,
    pub cpus: i64,
    pub memory_mib: i64,
    /// Rights site 0 gives each other site at the start, as instances.
    #[serde(default)]
    pub share_instances: i64,
    /// How the total is placed and moved (`founder`, `even`, `pool`); `pool`
    /// unless named, so that `share_instances` says where rights start.
    #[serde(default)]
    pub spread: atoll_crdt::Spread,
}

/// One timeline entry: exactly one of the optional actions.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Simulated seconds from the start.
    pub at: f64,
    /// Groups of sites that can talk within, not across.
    pub partition: Option<Vec<Vec<usize>>>,
    /// Cut messages from the first list of sites to the second only.
    pub one_way: Option<(Vec<usize>, Vec<usize>)>,
    pub heal: Option<bool>,
    pub crash: Option<usize>,
    pub restart: Option<usize>,
    pub create: Option<Create>,
    /// A `quota give` from one site to others, as a project admin would ask it
    /// (any figures: the peer must refuse what would break the escrow).
    pub give: Option<Give>,
    /// A member sends what no honest peer would (a forger's message).
    pub forge: Option<Forge>,
    /// A deployment applied (or applied again) through a site's API.
    pub deploy: Option<Deploy>,
    /// An instance deleted through a site's API.
    pub delete: Option<Delete>,
    /// Instances created and deleted at a steady rate (`crate::load`).
    pub churn: Option<crate::load::Churn>,
    /// Sites cut off and let back over and over (`crate::load`).
    pub flap: Option<crate::load::Flap>,
    /// Made by a `churn` or `flap` step, not written in the file.
    #[serde(skip)]
    pub generated: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delete {
    /// The site whose API is called.
    pub site: usize,
    pub project: String,
    pub name: String,
}

/// A deployment of one service, `web`, of site 0's image (whichever site
/// it is applied through).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deploy {
    /// The site whose API is called.
    pub site: usize,
    pub project: String,
    pub name: String,
    pub replicas: u32,
    /// At most one replica per site (`avoid = ["web"]`).
    #[serde(default)]
    pub one_per_site: bool,
    #[serde(default = "lost_after")]
    pub lost_after: String,
    #[serde(default)]
    pub on_heal: atoll_proto::deployment::OnHeal,
    /// Deleted rather than applied.
    #[serde(default)]
    pub delete: bool,
}

fn lost_after() -> String {
    "10s".into()
}

impl Deploy {
    /// The deployment as a user would write it.
    pub fn deployment(&self) -> atoll_proto::deployment::Deployment {
        let avoid: Vec<&str> = if self.one_per_site { vec!["web"] } else { vec![] };
        serde_json::from_value(serde_json::json!({
            "name": self.name, "project": self.project,
            "services": { "web": {
                "image": "img-s0", "replicas": self.replicas, "memory_mib": 64,
                "restart": "always", "lost_after": self.lost_after, "on_heal": self.on_heal,
                "placement": { "avoid": avoid },
            } }
        }))
        .expect("a deployment of one service")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forge {
    /// The forging member.
    pub site: usize,
    /// The site it writes as (or whose document it writes into).
    pub victim: usize,
    pub what: Forgery,
    /// The project of a forged transfer.
    #[serde(default)]
    pub project: String,
}

/// What a forger sends.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Forgery {
    /// Quota rights from the victim to the forger, in the victim's document.
    Transfer,
    /// Quota rights the forger never held, from it to the victim, in its own
    /// document (a change it may write: only what it says is a lie).
    OverGive,
    /// A realm admin user, in the realm under the victim's name.
    Realm,
    /// A sync message of malformed bytes.
    Garbage,
    /// The previous forged message again.
    Replay,
    /// An intent "from admin", in the forger's own document, asking the
    /// victim to create an instance (of its image, in `project`) with no
    /// consent of the user's.
    Intent,
    /// A realm admin user and an admin role binding for it, in the realm
    /// under the forger's own name (a change provenance lets through) with
    /// no realm admin's consent.
    Admin,
    /// The victim's removal from the realm (its member record deleted, a
    /// removal of its key written), under the forger's own name with no
    /// realm admin's consent.
    Removal,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Give {
    pub site: usize,
    pub to: Vec<usize>,
    pub project: String,
    pub instances: i64,
    #[serde(default)]
    pub cpus: i64,
    #[serde(default)]
    pub memory_mib: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Create {
    /// The site whose API is called.
    pub site: usize,
    /// The site that hosts the instances, if not `site`: the call becomes an
    /// intent (`--site`), and the image is fetched from `site`.
    pub on: Option<usize>,
    /// The site whose image is used, if not `site`: it is copied to the
    /// host before the instance starts.
    #[serde(default)]
    pub image: Option<usize>,
    /// Generated steps name their one instance (explore reorders the
    /// timeline, so a name from the step's index would not stay put).
    #[serde(skip)]
    pub name: Option<String>,
    pub project: String,
    #[serde(default = "one")]
    pub count: usize,
    #[serde(default = "one_i")]
    pub cpus: i64,
    #[serde(default = "mem")]
    pub memory_mib: i64,
}

impl Create {
    /// The name of the `n`th instance of this step, at timeline index `k`.
    pub fn instance_name(&self, k: usize, n: usize) -> String {
        match &self.name {
            Some(name) => format!("{name}-{n}"),
            None => format!("i{}-{k}-{n}", self.site),
        }
    }

    /// The site whose image the instances boot.
    pub fn image_site(&self) -> usize {
        self.image.unwrap_or(self.site)
    }
}

fn one() -> usize {
    1
}
fn one_i() -> i64 {
    1
}
fn mem() -> i64 {
    64
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Every document equal on every site at the end (default true).
    pub converged: Option<bool>,
    /// At least this many instance creations acknowledged in all.
    pub min_created: Option<usize>,
    /// At least this many creations refused for lack of quota.
    pub min_refused: Option<usize>,
}

impl Scenario {
    pub fn load(path: &str) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError::Read(path.into(), e))?;
        let mut s: Scenario = toml::from_str(&text)?;
        s.validate()?;
        crate::load::expand(&mut s);
        Ok(s)
    }

    pub fn validate(&self) -> Result<(), ScenarioError> {
        let n = self.sites.count;
        let bad = |m: String| Err(ScenarioError::Invalid(m));
        if n == 0 || n > 20_000 {
            return bad(format!("sites.count must be 1 to 20000, not {n}"));
        }
        if self.sites.regions.is_empty() {
            return bad("sites.regions is empty".into());
        }
        if !(0.0..=1.0).contains(&self.network.loss) {
            return bad("network.loss must be within 0..=1".into());
        }
        for s in &self.timeline {
            let sites: Vec<usize> = [
                s.crash,
                s.restart,
                s.create.as_ref().map(|c| c.site),
                s.create.as_ref().and_then(|c| c.on),
                s.create.as_ref().and_then(|c| c.image),
                s.deploy.as_ref().map(|d| d.site),
                s.delete.as_ref().map(|d| d.site),
            ]
            .into_iter()
            .flatten()
            .chain(s.partition.iter().flatten().flatten().copied())
            .chain(s.one_way.iter().flat_map(|(a, b)| a.iter().chain(b.iter()).copied()))
            .chain(s.give.iter().flat_map(|g| std::iter::once(g.site).chain(g.to.iter().copied())))
            .collect();
            if let Some(x) = sites.iter().find(|x| **x >= n) {
                return bad(format!("step at {} s names site {x}, but there are {n}", s.at));
            }
            if let Some(d) = &s.deploy
                && let Err(e) = d.deployment().check()
            {
                return bad(format!("step at {} s: {e}", s.at));
            }
            if s.at < 2.0 || s.at > self.duration {
                return bad(format!(
                    "step at {} s is outside 2..{} s (setup runs in the first 2 s)",
                    s.at, self.duration
                ));
            }
        }
        crate::load::check(self)
    }
}
