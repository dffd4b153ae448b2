//! Placement (docs/architecture.md, "Deployments and placement"): where the
//! replicas of a deployment's services go, as a pure function of the
//! replicated site descriptors and gossiped summaries this site holds.
//!
//! Two steps, as a scheduler that can explain itself needs them: [`filter`]
//! keeps or drops each site with a reason (a rule, a missing driver, no room),
//! then each replica goes to the kept site with the highest [`score`] (free
//! capacity left, spread, quota rights at hand, closeness), ties to the
//! smaller site name. Replicas are placed one at a time and each pick counts
//! against the next, so spreading and capacity hold within one plan.

use std::collections::BTreeMap;

use atoll_crdt::{Kind, Resources, Role, SiteId, User};
use serde::{Deserialize, Serialize};

use crate::api::{ApiError, ApiResult, Reply, SiteRow};
use crate::auth;
use crate::deployment::{Deployment, Rules, Service, Spread};
use crate::peer::Peer;

/// Replicas of each service of one deployment, by site: those already
/// running, and those a plan adds.
pub type Replicas = BTreeMap<SiteId, BTreeMap<String, u32>>;

/// Score points: free capacity left after the pick (0..=FREE), spread
/// penalty (0..SPREAD), quota rights held by the site itself, closeness.
const FREE: i64 = 400;
const SPREAD: i64 = 300;
const RIGHTS: i64 = 100;
const CLOSE: i64 = 200;

/// Why a site cannot take a replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "filter", rename_all = "snake_case")]
pub enum Filter {
    Unreachable,
    /// No summary heard from it yet: its drivers and capacity are unknown.
    NoSummary,
    NotListed,
    Region {
        region: String,
    },
    Operator {
        operator: String,
    },
    Label {
        key: String,
        want: String,
        has: Option<String>,
    },
    Arch {
        arch: String,
    },
    Kind {
        kind: Kind,
    },
    Cpus {
        free: i64,
        need: i64,
    },
    Memory {
        free_mib: i64,
        need_mib: i64,
    },
    MaxPerSite {
        max: u32,
    },
    Avoids {
        service: String,
    },
    Lacks {
        service: String,
    },
    /// `near` asks for coordinates and the site has no valid `lat`/`lon` labels.
    NoLocation,
    NotClosest {
        km: u32,
        closest: u32,
    },
}

impl std::fmt::Display for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Filter::Unreachable => write!(f, "unreachable"),
            Filter::NoSummary => write!(f, "no summary heard yet"),
            Filter::NotListed => write!(f, "not in the rule's sites"),
            Filter::Region { region } => write!(f, "region {region} not allowed"),
            Filter::Operator { operator } => write!(f, "operator {operator} not allowed"),
            Filter::Label { key, want, has: Some(has) } => write!(f, "label {key}={has}, wants {want}"),
            Filter::Label { key, want, has: None } => write!(f, "no label {key} (wants {want})"),
            Filter::Arch { arch } => write!(f, "architecture {arch}"),
            Filter::Kind { kind } => write!(f, "cannot run {kind} instances"),
            Filter::Cpus { free, need } => write!(f, "{free} cpus free, needs {need}"),
            Filter::Memory { free_mib, need_mib } => write!(f, "{free_mib} MiB free, needs {need_mib}"),
            Filter::MaxPerSite { max } => write!(f, "already {max} replicas (max_per_site)"),
            Filter::Avoids { service } => write!(f, "runs {service}, which this service avoids"),
            Filter::Lacks { service } => write!(f, "does not run {service}, which this service goes with"),
            Filter::NoLocation => write!(f, "no lat/lon labels"),
            Filter::NotClosest { km, closest } => write!(f, "{km} km away, not among the {closest} closest"),
        }
    }
}

/// One site in a service's plan: filtered out (and why) in the first round,
/// or kept with its score then; `picks` replicas went to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Row {
    pub site: SiteId,
    pub filter: Option<Filter>,
    pub score: Option<i64>,
    pub km: Option<u32>,
    pub picks: u32,
}

/// Where one service's missing replicas go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ServicePlan {
    pub service: String,
    pub replicas: u32,
    /// Replicas of the service already running (passed in).
    pub running: u32,
    /// A site for each replica to add, in pick order.
    pub chosen: Vec<SiteId>,
    /// Replicas that found no site, and why.
    pub short: u32,
    pub why_short: Option<String>,
    pub rows: Vec<Row>,
}

/// `POST /v1/deployments/plan`: a deployment's plan as this site sees the
/// realm now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeploymentPlan {
    pub deployment: String,
    pub project: String,
    /// The site that computed the plan (its view of reachability and load).
    pub by: SiteId,
    /// Quota rights of the project spare at reachable sites when planned.
    pub rights: Resources,
    pub services: Vec<ServicePlan>,
}

impl Peer {
    pub(crate) fn plan_deployment(&self, now: atoll_crdt::Millis, user: &User, d: &Deployment) -> ApiResult {
        d.check()?;
        if self.realm.project(&d.project)?.is_none() {
            return Err(ApiError::NotFound(format!("no project {}", d.project)));
        }
        auth::require(&self.realm, user, &d.project, Role::Member, &self.site)?;
        let kinds = self.kinds(d)?;
        let Reply::Sites(rows) = self.list_sites(now)? else { unreachable!("list_sites answers sites") };
        let rights = self.reachable_rights(&d.project, &rows)?;
        let running = self.running_replicas(d);
        let services = plan(d, &kinds, &rows, &running, Some(rights))?;
        Ok(Reply::Plan(DeploymentPlan {
            deployment: d.name.clone(),
            project: d.project.clone(),
            by: self.site.clone(),
            rights,
            services,
        }))
    }
}

impl Peer {
    /// A project's quota rights spare at the sites in reach: this site's
    /// own exactly, the others' from their summaries (which list a site's
    /// 64 most spare projects: an undercount only).
    pub(crate) fn reachable_rights(&self, project: &str, rows: &[SiteRow]) -> Result<Resources, ApiError> {
        let mut rights = self.account(project)?.available();
        for row in rows.iter().filter(|r| r.reachable && r.member.site != self.site) {
            let spare = row.summary.iter().flat_map(|v| &v.spare).find(|(p, _)| p == project);
            if let Some((_, r)) = spare {
                rights = rights.checked_plus(*r).unwrap_or(rights);
            }
        }
        Ok(rights)
    }
}

/// The plan of every service of `d`, in [`Deployment::order`]: a later
/// service sees the earlier ones' picks (for `avoid` and `with`).
/// `kinds` is each service's instance kind (from its image), `rights` the
/// project's quota rights spare at reachable sites (None: not checked).
pub fn plan(
    d: &Deployment,
    kinds: &BTreeMap<String, Kind>,
    sites: &[SiteRow],
    running: &Replicas,
    mut rights: Option<Resources>,
) -> Result<Vec<ServicePlan>, ApiError> {
    d.check()?;
    let mut replicas = running.clone();
    let mut plans = Vec::with_capacity(d.services.len());
    for name in d.order()? {
        let service = &d.services[name];
        let kind =
            *kinds.get(name).ok_or_else(|| ApiError::Invalid(format!("no kind for service {name}")))?;
        let p = place(&d.project, name, service, kind, sites, &mut replicas, &mut rights);
        plans.push(p);
    }
    Ok(plans)
}

/// One site's state while a service is placed.
struct Slot<'a> {
    row: &'a SiteRow,
    /// Taken by this plan's picks so far, on top of the summary's figure.
    taken: Resources,
    km: Option<u32>,
    first: Option<Filter>,
    score: Option<i64>,
    picks: u32,
    /// Replicas of the service being placed on the site (running and picked).
    mine: u32,
}

fn place(
    project: &str,
    name: &str,
    s: &Service,
    kind: Kind,
    sites: &[SiteRow],
    replicas: &mut Replicas,
    rights: &mut Option<Resources>,
) -> ServicePlan {
    let each = Resources::new(1, s.cpus, s.memory_mib);
    let running: u32 = replicas.values().filter_map(|m| m.get(name)).sum();
    let mut slots: Vec<Slot> = sites
        .iter()
        .map(|row| {
            let here = replicas.get(&row.member.site);
            let count = |service: &str| here.and_then(|m| m.get(service)).copied().unwrap_or(0);
            // Other services are not placed while this one is: their
            // affinities are decided once per site.
            let (km, filter) = match fixed_filter(row, &s.placement, kind).and_then(|km| {
                affinity(name, &s.placement, count)?;
                Ok(km)
            }) {
                Err(f) => (None, Some(f)),
                Ok(km) => (km, None),
            };
            Slot { row, taken: Resources::ZERO, km, first: filter, score: None, picks: 0, mine: count(name) }
        })
        .collect();
    if !slots.is_sorted_by(|a, b| a.row.member.site <= b.row.member.site) {
        slots.sort_by(|a, b| a.row.member.site.cmp(&b.row.member.site));
    }
    if let Some(closest) = s.placement.near.and_then(|n| n.closest) {
        keep_closest(&mut slots, closest);
    }
    let mut by_region: BTreeMap<&str, u32> = BTreeMap::new();
    for slot in slots.iter().filter(|x| x.mine > 0) {
        *by_region.entry(slot.row.member.region.as_str()).or_default() += slot.mine;
    }
    let cx = Context { project, s, each };
    let mut chosen = Vec::new();
    let mut why_short = None;
    let wanted = s.replicas.saturating_sub(running);
    for round in 0..wanted {
        if let Some(r) = rights
            && (r.instances < each.instances || r.cpus < each.cpus || r.memory_mib < each.memory_mib)
        {
            why_short = Some(format!(
                "quota rights: project {project} has {} instances, {} cpus and {} MiB spare at reachable sites",
                r.instances, r.cpus, r.memory_mib
            ));
            break;
        }
        let max_km = slots.iter().filter(|x| x.first.is_none()).filter_map(|x| x.km).max().unwrap_or(0);
        let mut best: Option<(i64, usize)> = None;
        for (i, slot) in slots.iter_mut().enumerate() {
            if slot.first.is_none() {
                let verdict = fits(slot, name, s, each).map(|()| score(slot, &cx, &by_region, max_km));
                if round == 0 {
                    match &verdict {
                        Err(f) => slot.first = Some(f.clone()),
                        Ok(points) => slot.score = Some(*points),
                    }
                }
                if let Ok(points) = verdict {
                    // Strictly greater: ties go to the earlier (smaller) name.
                    if best.is_none_or(|(b, _)| points > b) {
                        best = Some((points, i));
                    }
                }
            }
        }
        let Some((_, i)) = best else {
            why_short = Some("no site passes the rules with room left".into());
            break;
        };
        let slot = &mut slots[i];
        slot.picks += 1;
        slot.taken = Resources::new(
            slot.taken.instances + 1,
            slot.taken.cpus + s.cpus,
            slot.taken.memory_mib + s.memory_mib,
        );
        slot.mine += 1;
        *by_region.entry(slot.row.member.region.as_str()).or_default() += 1;
        if let Some(r) = rights {
            *r = Resources::new(r.instances - 1, r.cpus - s.cpus, r.memory_mib - s.memory_mib);
        }
        chosen.push(slot.row.member.site.clone());
    }
    let short = wanted - chosen.len() as u32;
    for slot in slots.iter().filter(|x| x.picks > 0) {
        *replicas.entry(slot.row.member.site.clone()).or_default().entry(name.to_owned()).or_default() +=
            slot.picks;
    }
    let rows = slots
        .into_iter()
        .map(|x| Row {
            site: x.row.member.site.clone(),
            filter: x.first,
            score: x.score,
            km: x.km,
            picks: x.picks,
        })
        .collect();
    ServicePlan { service: name.to_owned(), replicas: s.replicas, running, chosen, short, why_short, rows }
}

/// The rules that do not change while replicas are placed; the site's
/// distance to `near`'s point when the rules ask for one.
fn fixed_filter(row: &SiteRow, rules: &Rules, kind: Kind) -> Result<Option<u32>, Filter> {
    if !row.reachable {
        return Err(Filter::Unreachable);
    }
    let Some(view) = &row.summary else { return Err(Filter::NoSummary) };
    let d = &view.descriptor;
    if !rules.sites.is_empty() && !rules.sites.contains(&row.member.site) {
        return Err(Filter::NotListed);
    }
    if !rules.regions.is_empty() && !rules.regions.contains(&row.member.region) {
        return Err(Filter::Region { region: row.member.region.clone() });
    }
    if !rules.operators.is_empty() && !rules.operators.contains(&row.member.operator) {
        return Err(Filter::Operator { operator: row.member.operator.clone() });
    }
    for (key, want) in &rules.labels {
        let has = d.labels.get(key);
        if has != Some(want) {
            return Err(Filter::Label { key: key.clone(), want: want.clone(), has: has.cloned() });
        }
    }
    if rules.arch.as_ref().is_some_and(|a| a != &d.arch) {
        return Err(Filter::Arch { arch: d.arch.clone() });
    }
    if !d.kinds.contains(&kind) {
        return Err(Filter::Kind { kind });
    }
    let Some(near) = rules.near else { return Ok(None) };
    let at = location(&d.labels).ok_or(Filter::NoLocation)?;
    Ok(Some(km(at, (near.lat, near.lon))))
}

/// Drops every kept site but the `closest` nearest ones (ties by name).
fn keep_closest(slots: &mut [Slot], closest: u32) {
    let mut kept: Vec<(u32, usize)> = slots
        .iter()
        .enumerate()
        .filter(|(_, x)| x.first.is_none())
        .filter_map(|(i, x)| Some((x.km?, i)))
        .collect();
    kept.sort();
    for (km, i) in kept.into_iter().skip(closest as usize) {
        slots[i].first = Some(Filter::NotClosest { km, closest });
    }
}

/// `avoid` and `with` towards the other services of the deployment, from the
/// replicas each site runs or was given (`count`).
fn affinity(name: &str, rules: &Rules, count: impl Fn(&str) -> u32) -> Result<(), Filter> {
    if let Some(service) = rules.avoid.iter().find(|a| *a != name && count(a) > 0) {
        return Err(Filter::Avoids { service: service.clone() });
    }
    if let Some(service) = rules.with.iter().find(|w| count(w) == 0) {
        return Err(Filter::Lacks { service: service.clone() });
    }
    Ok(())
}

/// The rules that depend on what this service placed already: room,
/// per-site maximum, anti-affinity with itself.
fn fits(slot: &Slot, name: &str, s: &Service, each: Resources) -> Result<(), Filter> {
    let view = slot.row.summary.as_ref().expect("kept sites have a summary");
    let cap = view.descriptor.capacity;
    let free_cpus = cap.cpus.saturating_sub(view.allocated.cpus).saturating_sub(slot.taken.cpus);
    if free_cpus < each.cpus {
        return Err(Filter::Cpus { free: free_cpus.max(0), need: each.cpus });
    }
    let free_mib =
        cap.memory_mib.saturating_sub(view.allocated.memory_mib).saturating_sub(slot.taken.memory_mib);
    if free_mib < each.memory_mib {
        return Err(Filter::Memory { free_mib: free_mib.max(0), need_mib: each.memory_mib });
    }
    if let Some(max) = s.placement.max_per_site
        && slot.mine >= max
    {
        return Err(Filter::MaxPerSite { max });
    }
    if slot.mine > 0 && s.placement.avoid.iter().any(|a| a == name) {
        return Err(Filter::Avoids { service: name.to_owned() });
    }
    Ok(())
}

struct Context<'a> {
    project: &'a str,
    s: &'a Service,
    each: Resources,
}

fn score(slot: &Slot, cx: &Context, by_region: &BTreeMap<&str, u32>, max_km: u32) -> i64 {
    let &Context { project, s, each } = cx;
    let view = slot.row.summary.as_ref().expect("kept sites have a summary");
    let cap = view.descriptor.capacity;
    // Per mille of the site's capacity still free after this pick, the
    // scarcer of cpus and memory (`fits` checked both are positive).
    let left = |cap: i64, used: i64, more: i64, need: i64| -> i64 {
        let free = cap.saturating_sub(used).saturating_sub(more).saturating_sub(need);
        (i128::from(free) * 1000 / i128::from(cap.max(1))).clamp(0, 1000) as i64
    };
    let free = left(cap.cpus, view.allocated.cpus, slot.taken.cpus, each.cpus).min(left(
        cap.memory_mib,
        view.allocated.memory_mib,
        slot.taken.memory_mib,
        each.memory_mib,
    ));
    let mut points = FREE * free / 1000;
    let crowd = match s.placement.spread {
        Spread::None => 0,
        Spread::Site => slot.mine,
        Spread::Region => by_region.get(slot.row.member.region.as_str()).copied().unwrap_or(0),
    };
    points -= SPREAD * i64::from(crowd) / (i64::from(crowd) + 1);
    let spare = view.spare.iter().find(|(p, _)| p == project).map(|(_, r)| *r);
    if spare.is_some_and(|r: Resources| {
        r.instances >= 1 && r.cpus >= each.cpus && r.memory_mib >= each.memory_mib
    }) {
        points += RIGHTS;
    }
    if let (Some(km), true) = (slot.km, s.placement.near.is_some()) {
        points += if max_km == 0 { CLOSE } else { CLOSE - CLOSE * i64::from(km) / i64::from(max_km) };
    }
    points
}

/// A site's coordinates from its `lat` and `lon` labels, when both are
/// valid degrees.
pub fn location(labels: &BTreeMap<String, String>) -> Option<(f64, f64)> {
    let lat: f64 = labels.get("lat")?.trim().parse().ok()?;
    let lon: f64 = labels.get("lon")?.trim().parse().ok()?;
    ((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon)).then_some((lat, lon))
}

/// Great-circle distance in whole kilometres (haversine, mean Earth radius).
pub fn km(a: (f64, f64), b: (f64, f64)) -> u32 {
    let (la1, lo1, la2, lo2) = (a.0.to_radians(), a.1.to_radians(), b.0.to_radians(), b.1.to_radians());
    let h = ((la2 - la1) / 2.0).sin().powi(2) + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    (2.0 * 6371.0 * h.sqrt().min(1.0).asin()).round() as u32
}
