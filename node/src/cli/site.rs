//! `atoll site show|list|reach|invite`: this site, and the realm's sites as
//! the serving site sees them.

use atoll_proto::api::{Footprint, SiteRow, SiteShow};
use atoll_proto::reach::Sees;

use super::Global;
use super::client::Api;
use super::output::{self, Format, ago, print};

/// This site: descriptor, counts, live figures, drivers, and its peer's memory.
pub async fn show(g: &Global, api: &Api) -> anyhow::Result<()> {
    let show: SiteShow = api.get("/v1/site").await?;
    let s = &show.site;
    let d = &s.descriptor;
    let live = s.live.clone().unwrap_or_default();
    let headers = [
        "SITE",
        "REGION",
        "OPERATOR",
        "ARCH",
        "CPUS",
        "MEMORY",
        "DISK",
        "INSTANCES",
        "RUNNING",
        "IMAGES",
        "LOAD",
        "FREE MEMORY",
        "FREE DISK",
    ];
    print(g.output, &show, &headers, || {
        vec![vec![
            d.site.to_string(),
            d.region.clone(),
            d.operator.clone(),
            d.arch.clone(),
            format!("{}/{}", s.allocated.cpus, d.capacity.cpus),
            format!("{}/{} MiB", s.allocated.memory_mib, d.capacity.memory_mib),
            format!("{} MiB", d.disk_mib),
            format!("{}/{}", s.instances, d.capacity.instances),
            s.running.to_string(),
            s.images.to_string(),
            format!("{:.2}", live.load),
            format!("{} MiB", live.free_memory_mib),
            format!("{} MiB", live.free_disk_mib),
        ]]
    });
    if g.output == Format::Table {
        let rows: Vec<Vec<String>> = d
            .drivers
            .iter()
            .map(|f| {
                let state = if f.available { "ready" } else { "unavailable" };
                vec![f.kind.to_string(), state.into(), f.version.clone(), f.detail.clone()]
            })
            .collect();
        println!("\n{}", output::table(&["DRIVER", "STATE", "VERSION", "DETAIL"], &rows));
        if !d.labels.is_empty() {
            let labels: Vec<String> = d.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!("\nlabels: {}", labels.join(", "));
        }
        memory(&show.memory);
    }
    Ok(())
}

/// The peer's memory: the process, then what its core holds, largest first.
fn memory(m: &Footprint) {
    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    match &m.process {
        Some(p) => println!(
            "\nmemory: {} resident ({} anonymous, {} mapped files); heap {} in use, {} freed and kept",
            mib(p.rss_kib),
            mib(p.anonymous_kib),
            mib(p.file_kib),
            mib(p.heap_in_use_kib),
            mib(p.heap_free_kib)
        ),
        None => println!("\nmemory: not reported by this site"),
    }
    let rows: Vec<Vec<String>> = m
        .held
        .iter()
        .map(|h| {
            vec![
                h.what.clone(),
                format!("{} {}", h.count, h.unit),
                h.bound.map_or("-".into(), |b| b.to_string()),
                h.bytes.map_or("-".into(), |b| format!("{:.1} KiB", b as f64 / 1024.0)),
            ]
        })
        .collect();
    if !rows.is_empty() {
        println!("{}", output::table(&["HELD", "COUNT", "AT MOST", "BYTES"], &rows));
    }
}

/// A matrix: a row per site, what it reaches (yes/no), `?` where unknown.
pub async fn reach(g: &Global, api: &Api) -> anyhow::Result<()> {
    let view: Vec<Sees> = api.get("/v1/sites/reachability").await?;
    let names: Vec<String> = view.iter().map(|v| v.site.to_string()).collect();
    let headers: Vec<&str> = std::iter::once("SEES").chain(names.iter().map(String::as_str)).collect();
    print(g.output, &view, &headers, || {
        view.iter()
            .map(|v| {
                let cells = view.iter().map(|other| match &v.reaches {
                    _ if other.site == v.site => "-".to_owned(),
                    None => "?".to_owned(),
                    Some(r) if r.contains(&other.site) => "yes".to_owned(),
                    Some(_) => "no".to_owned(),
                });
                std::iter::once(v.site.to_string()).chain(cells).collect()
            })
            .collect()
    });
    Ok(())
}

pub async fn list(g: &Global, api: &Api) -> anyhow::Result<()> {
    let rows: Vec<SiteRow> = api.get("/v1/sites").await?;
    let headers = [
        "SITE",
        "REGION",
        "OPERATOR",
        "REACHABLE",
        "LAST SEEN",
        "KINDS",
        "CPUS",
        "MEMORY",
        "INSTANCES",
        "LOAD",
        "FREE MEMORY",
        "LABELS",
        "VERSION",
    ];
    print(g.output, &rows, &headers, || {
        rows.iter()
            .map(|r| {
                let m = &r.member;
                let mut row = vec![
                    m.site.to_string(),
                    m.region.clone(),
                    m.operator.clone(),
                    if r.reachable { "yes" } else { "no" }.to_owned(),
                    r.last_seen.map(ago).unwrap_or_else(|| "never".into()),
                ];
                match &r.summary {
                    Some(s) => {
                        let d = &s.descriptor;
                        let live = s.live.clone().unwrap_or_default();
                        let kinds: Vec<String> = d.kinds.iter().map(|k| k.to_string()).collect();
                        let labels: Vec<String> = d.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        row.extend([
                            kinds.join(","),
                            format!("{}/{}", s.allocated.cpus, d.capacity.cpus),
                            format!("{}/{} MiB", s.allocated.memory_mib, d.capacity.memory_mib),
                            format!("{} ({} running)", s.instances, s.running),
                            format!("{:.2}", live.load),
                            format!("{} MiB", live.free_memory_mib),
                            labels.join(","),
                            d.version.clone(),
                        ]);
                    }
                    None => row.extend(std::iter::repeat_n("-".to_owned(), 8)),
                }
                row
            })
            .collect()
    });
    Ok(())
}

pub async fn invite(
    g: &Global,
    api: &Api,
    name: Option<String>,
    ttl_secs: Option<u64>,
) -> anyhow::Result<()> {
    let reply: serde_json::Value =
        api.post("/v1/sites/invitations", &serde_json::json!({"name": name, "ttl_secs": ttl_secs})).await?;
    let token = reply["token"].as_str().unwrap_or_default();
    if g.output == Format::Json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
    } else {
        let expires = reply["expires_at"].as_u64().unwrap_or(0);
        eprintln!("Invitation (single use; expires in {}):", output::until(expires));
        println!("{token}");
        eprintln!("On the new site: atoll daemon --site NAME --join <invitation>");
    }
    Ok(())
}
