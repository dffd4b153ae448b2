//! `atoll deploy plan FILE`: where a deployment's replicas would go.

use std::path::PathBuf;

use anyhow::{Context, bail};
use atoll_proto::deployment::Deployment;
use atoll_proto::placement::DeploymentPlan;
use clap::Subcommand;

use super::Global;
use super::client::Api;
use super::output::{Format, print, table};

/// Largest deployment file read (the API takes 64 KiB of JSON).
const MAX_FILE: u64 = 64 << 10;

#[derive(Debug, Subcommand)]
pub enum DeployCmd {
    /// Where the replicas of a deployment file would go, as the serving site
    /// sees the realm: each site kept (with its score) or filtered out (and
    /// why). Places nothing.
    #[command(
        after_long_help = "Example:\n  atoll deploy plan examples/shop.toml\n  atoll deploy plan examples/shop.toml --output json"
    )]
    Plan {
        /// A deployment in TOML (see examples/).
        file: PathBuf,
    },
}

pub async fn run(g: &Global, api: &Api, c: DeployCmd) -> anyhow::Result<()> {
    match c {
        DeployCmd::Plan { file } => {
            let d = read(&file)?;
            let plan: DeploymentPlan = api.post("/v1/deployments/plan", &d).await?;
            show(g.output, &plan);
        }
    }
    Ok(())
}

/// A deployment file, parsed and checked before it is sent.
fn read(file: &PathBuf) -> anyhow::Result<Deployment> {
    let len = std::fs::metadata(file).with_context(|| format!("cannot read {}", file.display()))?.len();
    if len > MAX_FILE {
        bail!("{} is {len} bytes; a deployment file has at most {MAX_FILE}", file.display());
    }
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let d: Deployment =
        toml::from_str(&text).with_context(|| format!("{} is not a deployment", file.display()))?;
    d.check().map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    Ok(d)
}

fn show(format: Format, plan: &DeploymentPlan) {
    if format == Format::Json {
        print(format, plan, &[], Vec::new);
        return;
    }
    let r = plan.rights;
    println!(
        "Deployment {} (project {}), planned by {}; the project's rights spare at reachable sites: {} instances, {} cpus, {} MiB",
        plan.deployment, plan.project, plan.by, r.instances, r.cpus, r.memory_mib
    );
    for s in &plan.services {
        let placed = s.chosen.len();
        println!(
            "\nService {}: {} replicas, {} running, {placed} placed, {} short",
            s.service, s.replicas, s.running, s.short
        );
        if let Some(why) = &s.why_short {
            println!("  short: {why}");
        }
        let rows: Vec<Vec<String>> = s
            .rows
            .iter()
            .map(|row| {
                let verdict =
                    row.filter.as_ref().map_or_else(|| "kept".to_owned(), |f| format!("filtered: {f}"));
                let opt = |v: Option<String>| v.unwrap_or_default();
                vec![
                    row.site.to_string(),
                    verdict,
                    opt(row.score.map(|s| s.to_string())),
                    opt(row.km.map(|k| k.to_string())),
                    row.picks.to_string(),
                ]
            })
            .collect();
        println!("{}", table(&["SITE", "VERDICT", "SCORE", "KM", "REPLICAS"], &rows));
    }
}
