//! Deployments on real daemons, for docs/benchmarks.md: N sites on loopback
//! (each advertising 16 CPUs to placement, so that R replicas fit on a small
//! machine), a project whose rights all start at site-1 (spread `pool`: the
//! other sites ask for them), and one deployment of R replicas spread over
//! the sites. Timed, by polling the reconciler every 100 ms:
//!
//! - apply -> R replicas running;
//! - a site running replicas killed -> R running again elsewhere
//!   (`lost_after = "5s"` is part of it);
//! - the site back -> the count back at R (the replacements' extras stopped).
//!
//!     cargo build --release -p atoll -p atoll-e2e && ./target/release/deploy-bench [SITES] [REPLICAS]

use std::time::{Duration, Instant};

use atoll_e2e::{Daemon, eventually, http, loopback_realm_with, process_image};

const WAIT: Duration = Duration::from_secs(600);

/// Replicas running of `web` as the reconciler (asked through `sites[via]`)
/// knows them, and on which sites.
fn running(sites: &[Daemon], via: usize, token: &str) -> (usize, Vec<String>) {
    let ask = |d: &Daemon| http(&d.addr(), "GET", "/v1/deployments/bench/web", Some(token), b"");
    let v = ask(&sites[via]).json();
    let by =
        v["reconciler"].as_str().and_then(|r| r.strip_prefix("site-")).and_then(|n| n.parse::<usize>().ok());
    let v = match by.map(|n| ask(&sites[n - 1])) {
        Some(reply) if reply.status == 200 => reply.json(),
        _ => v,
    };
    let copies = v["services"][0]["copies"].as_array().cloned().unwrap_or_default();
    let live: Vec<String> = copies
        .iter()
        .filter(|c| c["observed"] == "running" && c["outdated"] == false && c["reachable"] == true)
        .map(|c| c["site"].as_str().unwrap_or("").to_owned())
        .collect();
    (live.len(), live)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let replicas: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("site.toml");
    std::fs::write(&config, "cpus = 16\n").unwrap();
    let config = config.to_str().unwrap().to_owned();
    let (mut sites, admin) = loopback_realm_with(root.path(), n, &[("ATOLL_CONFIG", &config)]);
    let file = process_image(root.path(), "sleeper", "sleep 600\n");
    sites[0].cli().ok(&["image", "add", file.to_str().unwrap(), "--name", "sleeper", "--public"]);
    let body =
        r#"{"name":"bench","spread":"pool","quota":{"instances":1000,"cpus":1000,"memory_mib":1000000}}"#;
    let reply = http(&sites[0].addr(), "POST", "/v1/projects", Some(&admin), body.as_bytes());
    assert_eq!(reply.status, 200, "{}", reply.body);
    // Every site's summary heard by site-1 (placement needs them).
    let plan = format!(
        r#"{{"name":"web","project":"bench","services":{{"web":{{"image":"default/sleeper","replicas":{replicas},"memory_mib":16,"lost_after":"5s"}}}}}}"#
    );
    let heard = eventually(Duration::from_secs(60), || {
        let p = http(&sites[0].addr(), "POST", "/v1/deployments/plan", Some(&admin), plan.as_bytes()).json();
        p["services"][0]["short"] == 0
    });
    assert!(heard, "site-1 never saw room for {replicas} replicas");

    let start = Instant::now();
    let reply = http(&sites[0].addr(), "POST", "/v1/deployments", Some(&admin), plan.as_bytes());
    assert_eq!(reply.status, 200, "{}", reply.body);
    let mut where_ = Vec::new();
    let placed = eventually(WAIT, || {
        let (count, sites_of) = running(&sites, 0, &admin);
        where_ = sites_of;
        count == replicas
    });
    assert!(placed, "not all {replicas} replicas ran");
    let place = start.elapsed();
    let per_site = |site: &str| where_.iter().filter(|s| *s == site).count();
    // The last site: never site-1, through which the bench asks.
    let victim = n - 1;
    let lost = per_site(&sites[victim].site);
    println!("placed and started {replicas} replicas over {n} sites in {:.1} s", place.as_secs_f64());

    let start = Instant::now();
    sites[victim].kill9();
    let back = eventually(WAIT, || {
        let (count, sites_of) = running(&sites, 0, &admin);
        count == replicas && !sites_of.contains(&sites[victim].site)
    });
    assert!(back, "the {lost} replicas of {} were not replaced", sites[victim].site);
    let replace = start.elapsed();
    println!(
        "{} killed ({lost} replicas): {replicas} running elsewhere after {:.1} s (lost_after 5 s included)",
        sites[victim].site,
        replace.as_secs_f64()
    );

    let start = Instant::now();
    sites[victim].boot();
    // First the returned copies are seen (more than wanted), then the
    // extras are stopped.
    let mut seen_extra = false;
    let converged = eventually(WAIT, || {
        let (count, _) = running(&sites, 0, &admin);
        seen_extra |= count > replicas;
        seen_extra && count == replicas
    });
    assert!(converged, "the count did not converge after {} returned", sites[victim].site);
    println!(
        "{} back: count at {replicas} again after {:.1} s (its {lost} copies seen, then the extras stopped)",
        sites[victim].site,
        start.elapsed().as_secs_f64()
    );
}
