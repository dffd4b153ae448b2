//! Placement: filters with their reasons, scores, and the invariants every
//! plan keeps (capacity, per-site maximum, count), over random realms.

use std::collections::BTreeMap;

use atoll_crdt::{Descriptor, Kind, Member, Resources, SiteId};
use proptest::prelude::*;

use crate::api::{SiteRow, SiteView};
use crate::deployment::{Deployment, Near, Service, Spread};
use crate::placement::{Filter, Replicas, ServicePlan, km, plan};

pub(crate) fn site(name: &str, region: &str, cpus: i64, kinds: &[Kind]) -> SiteRow {
    let id: SiteId = SiteId::new(name).unwrap();
    let descriptor = Descriptor {
        site: id.clone(),
        operator: "op".into(),
        region: region.into(),
        labels: BTreeMap::new(),
        public_key: String::new(),
        kinds: kinds.to_vec(),
        drivers: vec![],
        arch: "x86_64".into(),
        capacity: Resources::new(1000, cpus, cpus * 1024),
        disk_mib: 10_000,
        version: "test".into(),
    };
    let member = Member {
        site: id,
        public_key: String::new(),
        region: region.into(),
        operator: "op".into(),
        joined_at: 0,
        addrs: vec![],
        invitation: None,
        api_cert: None,
    };
    let summary = SiteView {
        descriptor,
        instances: 0,
        running: 0,
        images: 0,
        allocated: Resources::ZERO,
        live: None,
        spare: vec![],
    };
    SiteRow { member, reachable: true, last_seen: Some(0), summary: Some(summary) }
}

fn service(replicas: u32) -> Service {
    serde_json::from_value(serde_json::json!({ "image": "hello", "replicas": replicas })).unwrap()
}

fn deployment(services: Vec<(&str, Service)>) -> Deployment {
    Deployment {
        name: "app".into(),
        project: "default".into(),
        services: services.into_iter().map(|(n, s)| (n.to_owned(), s)).collect(),
    }
}

fn plan_of(
    d: &Deployment,
    sites: &[SiteRow],
    running: &Replicas,
    rights: Option<Resources>,
) -> Vec<ServicePlan> {
    let kinds = d.services.keys().map(|n| (n.clone(), Kind::Process)).collect();
    plan(d, &kinds, sites, running, rights).unwrap()
}

fn filter_of<'a>(p: &'a ServicePlan, site: &str) -> Option<&'a Filter> {
    p.rows.iter().find(|r| r.site.as_str() == site).unwrap().filter.as_ref()
}

const PROCESS: &[Kind] = &[Kind::Process];

#[test]
fn a_service_that_avoids_itself_goes_once_to_each_site_and_says_why_not_more() {
    let sites = [site("a", "eu", 8, PROCESS), site("b", "eu", 8, PROCESS), site("c", "us", 8, PROCESS)];
    let mut web = service(4);
    web.placement.avoid = vec!["web".into()];
    let p = &plan_of(&deployment(vec![("web", web)]), &sites, &Replicas::new(), None)[0];
    let mut chosen: Vec<&str> = p.chosen.iter().map(SiteId::as_str).collect();
    chosen.sort();
    assert_eq!(chosen, ["a", "b", "c"]);
    assert_eq!(p.short, 1);
    assert!(p.why_short.as_deref().unwrap().contains("no site passes"), "{:?}", p.why_short);
}

#[test]
fn filtered_sites_are_listed_with_their_reason() {
    let mut sites = vec![
        site("a", "eu", 8, PROCESS),
        site("b", "us", 8, PROCESS),
        site("c", "eu", 8, &[Kind::Container]),
        site("d", "eu", 8, PROCESS),
        site("e", "eu", 8, PROCESS),
    ];
    sites[3].reachable = false;
    sites[4].summary = None;
    let mut web = service(2);
    web.placement.regions = vec!["eu".into()];
    let p = &plan_of(&deployment(vec![("web", web)]), &sites, &Replicas::new(), None)[0];
    assert_eq!(filter_of(p, "a"), None);
    assert_eq!(filter_of(p, "b"), Some(&Filter::Region { region: "us".into() }));
    assert_eq!(filter_of(p, "c"), Some(&Filter::Kind { kind: Kind::Process }));
    assert_eq!(filter_of(p, "d"), Some(&Filter::Unreachable));
    assert_eq!(filter_of(p, "e"), Some(&Filter::NoSummary));
    assert_eq!(p.chosen.iter().map(SiteId::as_str).collect::<Vec<_>>(), ["a", "a"]);
    assert_eq!(filter_of(p, "b").unwrap().to_string(), "region us not allowed");
}

#[test]
fn replicas_go_where_capacity_is_free_and_never_beyond_it() {
    let mut sites = [site("a", "eu", 4, PROCESS), site("b", "eu", 4, PROCESS)];
    sites[0].summary.as_mut().unwrap().allocated = Resources::new(3, 3, 0);
    let mut web = service(5);
    web.cpus = 1;
    web.placement.spread = Spread::None;
    let p = &plan_of(&deployment(vec![("web", web)]), &sites, &Replicas::new(), None)[0];
    let on = |s: &str| p.chosen.iter().filter(|c| c.as_str() == s).count();
    assert_eq!((on("a"), on("b")), (1, 4), "{:?}", p.chosen);
    assert_eq!(p.chosen[0].as_str(), "b", "the freer site first");
    assert_eq!(p.short, 0);
}

#[test]
fn a_service_goes_with_another_only_where_it_runs() {
    let sites = [site("a", "eu", 8, PROCESS), site("b", "eu", 8, PROCESS), site("c", "eu", 8, PROCESS)];
    let mut api = service(2);
    api.placement.with = vec!["db".into()];
    let mut db = service(1);
    db.placement.sites = vec![SiteId::new("b").unwrap()];
    let plans = plan_of(&deployment(vec![("api", api), ("db", db)]), &sites, &Replicas::new(), None);
    assert_eq!(plans[0].service, "db");
    assert_eq!(plans[1].chosen.iter().map(SiteId::as_str).collect::<Vec<_>>(), ["b", "b"]);
    assert_eq!(filter_of(&plans[1], "a"), Some(&Filter::Lacks { service: "db".into() }));
}

#[test]
fn near_keeps_the_closest_sites_and_scores_closer_higher() {
    let mut sites = [
        site("paris", "eu", 8, PROCESS),
        site("lyon", "eu", 8, PROCESS),
        site("tokyo", "ap", 8, PROCESS),
        site("nowhere", "eu", 8, PROCESS),
    ];
    for (row, at) in sites.iter_mut().zip([("48.86", "2.35"), ("45.76", "4.84"), ("35.68", "139.69")]) {
        let labels = &mut row.summary.as_mut().unwrap().descriptor.labels;
        labels.insert("lat".into(), at.0.into());
        labels.insert("lon".into(), at.1.into());
    }
    let mut web = service(1);
    web.placement.near = Some(Near { lat: 48.85, lon: 2.29, closest: Some(2) });
    let p = &plan_of(&deployment(vec![("web", web)]), &sites, &Replicas::new(), None)[0];
    assert_eq!(p.chosen[0].as_str(), "paris");
    assert!(matches!(filter_of(p, "tokyo"), Some(Filter::NotClosest { closest: 2, .. })));
    assert_eq!(filter_of(p, "nowhere"), Some(&Filter::NoLocation));
    let paris_lyon = km((48.86, 2.35), (45.76, 4.84));
    assert!((385..=395).contains(&paris_lyon), "Paris-Lyon is about 390 km, got {paris_lyon}");
}

#[test]
fn quota_rights_bound_the_plan_and_running_replicas_count() {
    let sites = [site("a", "eu", 8, PROCESS), site("b", "eu", 8, PROCESS)];
    let d = deployment(vec![("web", service(5))]);
    let running: Replicas = [(SiteId::new("a").unwrap(), [("web".to_owned(), 2)].into())].into();
    let p = &plan_of(&d, &sites, &running, Some(Resources::new(2, 100, 100_000)))[0];
    assert_eq!((p.running, p.chosen.len(), p.short), (2, 2, 1));
    assert_eq!(p.chosen[0].as_str(), "b", "spread: the site without a replica first");
    assert!(p.why_short.as_deref().unwrap().contains("quota rights"), "{:?}", p.why_short);
}

fn realm() -> impl Strategy<Value = Vec<SiteRow>> {
    prop::collection::vec((0i64..8, 0i64..8, any::<bool>(), any::<bool>(), 0u8..3), 1..12).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (cpus, used, reachable, container, region))| {
                let kinds: &[Kind] = if container { &[Kind::Container] } else { PROCESS };
                let mut row = site(&format!("s{i}"), ["eu", "us", "ap"][region as usize], cpus, kinds);
                row.reachable = reachable || i == 0;
                row.summary.as_mut().unwrap().allocated = Resources::new(used, used.min(cpus), 0);
                row
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn plans_keep_capacity_maxima_and_counts(
        sites in realm(),
        replicas in 0u32..30,
        cpus in 1i64..4,
        max in prop::option::of(1u32..4),
        spread in prop_oneof![Just(Spread::None), Just(Spread::Site), Just(Spread::Region)],
    ) {
        let mut web = service(replicas);
        web.cpus = cpus;
        web.memory_mib = 1;
        web.placement.max_per_site = max;
        web.placement.spread = spread;
        let d = deployment(vec![("web", web)]);
        let p = &plan_of(&d, &sites, &Replicas::new(), None)[0];
        prop_assert_eq!(p.chosen.len() as u32 + p.short, replicas);
        prop_assert_eq!(p.short > 0, p.why_short.is_some());
        for row in &sites {
            let picks = p.chosen.iter().filter(|c| **c == row.member.site).count() as i64;
            let v = row.summary.as_ref().unwrap();
            let free = v.descriptor.capacity.cpus - v.allocated.cpus;
            prop_assert!(picks * cpus <= free.max(0), "capacity of {}", row.member.site);
            prop_assert!(max.is_none_or(|m| picks <= i64::from(m)));
            if picks > 0 {
                prop_assert!(row.reachable && v.descriptor.kinds.contains(&Kind::Process));
            }
            // Maximal: a plan left short has no eligible site with room.
            if p.short > 0 && row.reachable && v.descriptor.kinds.contains(&Kind::Process) {
                let room = free - picks * cpus >= cpus;
                let under = max.is_none_or(|m| picks < i64::from(m));
                prop_assert!(!(room && under), "{} had room and was not used", row.member.site);
            }
        }
        // The same input gives the same plan.
        prop_assert_eq!(p, &plan_of(&d, &sites, &Replicas::new(), None)[0]);
    }
}
