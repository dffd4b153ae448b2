//! `atoll site list|invite`: the realm's sites as the serving site sees them.

use atoll_proto::api::SiteRow;
use atoll_proto::reach::Sees;

use super::Global;
use super::client::Api;
use super::output::{self, Format, ago, print};

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
