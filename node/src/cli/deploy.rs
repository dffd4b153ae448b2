//! `atoll deploy ...`: deployments applied, listed, shown, scaled and
//! deleted, and `plan`: where a deployment's replicas would go.

use std::path::PathBuf;

use anyhow::{Context, bail};
use atoll_proto::api::Removed;
use atoll_proto::deployment::Deployment;
use atoll_proto::deployments::DeploymentView;
use atoll_proto::placement::DeploymentPlan;
use clap::Subcommand;

use super::client::Api;
use super::output::{Format, print, table};
use super::{Global, json_str};

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
    /// Apply a deployment file: its new desired state. The deployment's
    /// reconciler then places, replaces and stops replicas until the realm
    /// runs what the file says; replicas whose service did not change keep
    /// running.
    #[command(
        after_long_help = "Example:\n  atoll deploy apply examples/shop.toml\n  atoll deploy apply examples/shop.toml --dry-run"
    )]
    Apply {
        /// A deployment in TOML (see examples/).
        file: PathBuf,
        /// Show where the replicas would go (as `plan` does) and apply nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// The deployments of your projects: per service, the replicas wanted
    /// and running, and the site reconciling it.
    #[command(after_long_help = "Example:\n  atoll deploy list\n  atoll deploy list --output json")]
    List,
    /// One deployment: its revision, its reconciler, why replicas are
    /// missing if they are, and each replica with its site and state.
    #[command(after_long_help = "Example:\n  atoll deploy show shop\n  atoll --project lab deploy show shop")]
    Show {
        /// The deployment's name (in the project of --project).
        name: String,
    },
    /// Set how many replicas one service runs (a new revision).
    #[command(after_long_help = "Example:\n  atoll deploy scale shop web 5")]
    Scale {
        /// The deployment's name (in the project of --project).
        name: String,
        /// The service to scale.
        service: String,
        /// How many replicas it runs from now on (0 to 1,000).
        replicas: u32,
    },
    /// Delete a deployment: its reconciler stops every replica.
    #[command(after_long_help = "Example:\n  atoll deploy delete shop")]
    Delete {
        /// The deployment's name (in the project of --project).
        name: String,
    },
}

pub async fn run(g: &Global, api: &Api, c: DeployCmd) -> anyhow::Result<()> {
    match c {
        DeployCmd::Plan { file } | DeployCmd::Apply { file, dry_run: true } => {
            let d = read(&file)?;
            let plan: DeploymentPlan = api.post("/v1/deployments/plan", &d).await?;
            show(g.output, &plan);
        }
        DeployCmd::Apply { file, dry_run: false } => {
            let d = read(&file)?;
            let v: DeploymentView = api.post("/v1/deployments", &d).await?;
            if g.output == Format::Json {
                print(g.output, &v, &[], Vec::new);
            } else {
                println!(
                    "deployment {}/{} revision {} applied; reconciled by {}",
                    v.deployment.project,
                    v.deployment.name,
                    v.revision,
                    v.reconciler.as_ref().map_or("no reachable site".to_owned(), |s| s.to_string())
                );
            }
        }
        DeployCmd::List => {
            let list: Vec<DeploymentView> = api.get("/v1/deployments").await?;
            let rows = || {
                list.iter()
                    .flat_map(|v| {
                        v.services.iter().map(move |s| {
                            vec![
                                format!("{}/{}", v.deployment.project, v.deployment.name),
                                v.revision.to_string(),
                                s.service.clone(),
                                s.replicas.to_string(),
                                s.running.to_string(),
                                v.reconciler.as_ref().map(|r| r.to_string()).unwrap_or_default(),
                            ]
                        })
                    })
                    .collect()
            };
            print(
                g.output,
                &list,
                &["DEPLOYMENT", "REVISION", "SERVICE", "WANTED", "RUNNING", "RECONCILER"],
                rows,
            );
        }
        DeployCmd::Show { name } => {
            let v: DeploymentView = api.get(&format!("/v1/deployments/{}/{name}", g.project)).await?;
            show_one(g.output, &v);
        }
        DeployCmd::Scale { name, service, replicas } => {
            let body = serde_json::json!({ "service": service, "replicas": replicas });
            let v: DeploymentView =
                api.post(&format!("/v1/deployments/{}/{name}/scale", g.project), &body).await?;
            show_one(g.output, &v);
        }
        DeployCmd::Delete { name } => {
            let r: Removed = api.delete(&format!("/v1/deployments/{}/{name}", g.project)).await?;
            if g.output == Format::Json {
                print(g.output, &r, &[], Vec::new);
            } else {
                println!("{} deleted; its replicas are being stopped", r.removed);
            }
        }
    }
    Ok(())
}

fn show_one(format: Format, v: &DeploymentView) {
    if format == Format::Json {
        print(format, v, &[], Vec::new);
        return;
    }
    println!(
        "Deployment {}/{} revision {} by {} (applied through {}); reconciled by {}",
        v.deployment.project,
        v.deployment.name,
        v.revision,
        v.created_by,
        v.home,
        v.reconciler.as_ref().map_or("no reachable site".to_owned(), |s| s.to_string())
    );
    if let Some(p) = &v.problem {
        println!("latest problem: {p}");
    }
    let rows: Vec<Vec<String>> = v
        .services
        .iter()
        .flat_map(|s| {
            let head = vec![
                s.service.clone(),
                format!("{}/{}", s.running, s.replicas),
                String::new(),
                String::new(),
            ];
            std::iter::once(head).chain(s.copies.iter().map(|c| {
                let mut state = json_str(&c.observed);
                if c.outdated {
                    state.push_str(" (outdated)");
                }
                if !c.reachable {
                    state.push_str(" (last known: site out of reach)");
                }
                vec![String::new(), c.name.clone(), c.site.to_string(), state]
            }))
        })
        .collect();
    println!("{}", table(&["SERVICE", "RUNNING/WANTED | REPLICA", "SITE", "STATE"], &rows));
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
