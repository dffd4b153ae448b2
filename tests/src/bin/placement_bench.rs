//! Placement decisions per second on one peer (docs/benchmarks.md,
//! "Placement"): the pure placement of `atoll-proto` over the summaries of
//! N sites (random capacity, load, regions and drivers, seeded), as the daemon
//! runs it for `POST /v1/deployments/plan`. A decision is one replica placed:
//! every site filtered and scored once.
//!
//!     cargo build --release -p atoll-e2e && ./target/release/placement-bench 1000 10000

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use atoll_crdt::{Descriptor, Kind, Member, Resources, SiteId};
use atoll_proto::api::{SiteRow, SiteView};
use atoll_proto::deployment::Deployment;
use atoll_proto::placement::{Replicas, plan};

/// A small xorshift: the same realm on every run, no dependency.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn realm(n: usize) -> Vec<SiteRow> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    (0..n)
        .map(|i| {
            let site = SiteId::new(&format!("site-{i}")).unwrap();
            let region = format!("r{}", rng.below(20));
            let cpus = 8 + rng.below(56) as i64;
            let used = rng.below(cpus as u64) as i64;
            let kinds =
                if rng.below(4) == 0 { vec![Kind::Process, Kind::Container] } else { vec![Kind::Process] };
            let labels: BTreeMap<String, String> = [
                ("lat".to_owned(), format!("{}", rng.below(120) as f64 - 60.0)),
                ("lon".to_owned(), format!("{}", rng.below(360) as f64 - 180.0)),
                ("tier".to_owned(), ["edge", "core"][rng.below(2) as usize].to_owned()),
            ]
            .into();
            let descriptor = Descriptor {
                site: site.clone(),
                operator: "op".into(),
                region: region.clone(),
                labels,
                public_key: String::new(),
                kinds,
                drivers: vec![],
                arch: "x86_64".into(),
                capacity: Resources::new(1000, cpus, cpus * 2048),
                disk_mib: 100_000,
                version: "bench".into(),
            };
            let spare = if rng.below(3) == 0 {
                vec![("shop".to_owned(), Resources::new(5, 5, 5000))]
            } else {
                vec![]
            };
            let summary = SiteView {
                descriptor,
                instances: used as usize,
                running: used as usize,
                images: 1,
                allocated: Resources::new(used, used, used * 1024),
                live: None,
                spare,
            };
            let member = Member {
                site,
                public_key: String::new(),
                region,
                operator: "op".into(),
                joined_at: 0,
                addrs: vec![],
                invitation: None,
                api_cert: None,
            };
            SiteRow { member, reachable: rng.below(20) != 0, last_seen: Some(0), summary: Some(summary) }
        })
        .collect()
}

fn deployment(replicas: u32, placement: serde_json::Value) -> Deployment {
    let web = serde_json::json!({ "image": "hello", "memory_mib": 512, "replicas": replicas, "placement": placement });
    serde_json::from_value(
        serde_json::json!({ "name": "shop", "project": "shop", "services": { "web": web } }),
    )
    .unwrap()
}

fn main() {
    let sizes: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("a number of sites")).collect();
    let sizes = if sizes.is_empty() { vec![1000, 10_000] } else { sizes };
    let cases = [
        ("1 replica, no rule", 1, serde_json::json!({})),
        ("100 replicas, avoid itself", 100, serde_json::json!({ "avoid": ["web"] })),
        ("100 replicas, spread by region", 100, serde_json::json!({ "spread": "region" })),
        (
            "10 replicas, 20 closest to a point",
            10,
            serde_json::json!({ "near": { "lat": 48.8, "lon": 2.3, "closest": 20 } }),
        ),
    ];
    println!("| sites | plan | decisions per second | time per plan |");
    println!("|---|---|---|---|");
    for n in sizes {
        let sites = realm(n);
        let kinds: BTreeMap<String, Kind> = [("web".to_owned(), Kind::Process)].into();
        for (what, replicas, rules) in &cases {
            let (replicas, d) = (*replicas, deployment(*replicas, rules.clone()));
            let (mut plans, start) = (0u32, Instant::now());
            while start.elapsed() < Duration::from_secs(2) || plans < 3 {
                let p = plan(&d, &kinds, &sites, &Replicas::new(), None).unwrap();
                assert_eq!(p[0].chosen.len() as u32 + p[0].short, replicas);
                plans += 1;
            }
            let per_plan = start.elapsed() / plans;
            let per_second = f64::from(plans * replicas) / start.elapsed().as_secs_f64();
            println!("| {n} | {what} | {per_second:.0} | {:.2} ms |", per_plan.as_secs_f64() * 1000.0);
        }
    }
}
