//! `atoll instance`: create, list and act on instances anywhere in the realm.

use std::collections::BTreeMap;

use anyhow::bail;
use atoll_crdt::{Instance, RestartPolicy};
use atoll_proto::api::NewInstance;
use atoll_proto::gather::{InstanceList, SiteState, Source};
use clap::Subcommand;

use super::client::Api;
use super::intent::{At, settled};
use super::output::{Format, ago, print};
use super::{Global, json_str, parse_kv, show, split_ref};

#[derive(Debug, Subcommand)]
pub enum InstanceCmd {
    /// Create and start an instance, here or on another site (--site).
    #[command(
        after_long_help = "Examples:\n  atoll instance create web --image hello --memory 64 --restart always -- world\n  atoll instance create far --image hello --site site-3"
    )]
    Create {
        /// Instance name, unique in the project on its site.
        name: String,
        /// Image name (or PROJECT/NAME of a public image).
        #[arg(long)]
        image: String,
        /// CPUs (a limit for processes and containers, vCPUs for VMs).
        #[arg(long, default_value_t = 1)]
        cpus: i64,
        /// Memory in MiB.
        #[arg(long, default_value_t = 256)]
        memory: i64,
        /// Disk in MiB (VMs).
        #[arg(long, default_value_t = 0)]
        disk: i64,
        /// never | on-failure | always
        #[arg(long, default_value = "never")]
        restart: RestartPolicy,
        /// Publish a container port, [IP:]HOST:CONTAINER[/tcp|/udp] (repeatable).
        #[arg(long = "publish", short = 'P')]
        ports: Vec<String>,
        /// Environment variable KEY=VALUE (repeatable).
        #[arg(long = "env", value_parser = parse_kv)]
        env: Vec<(String, String)>,
        #[command(flatten)]
        at: At,
        /// Arguments appended to the image's entrypoint.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Instances of every site (a SITE column), or of one (--site); sites out
    /// of reach are shown with their last known state and its age.
    #[command(
        after_long_help = "Examples:\n  atoll instance list\n  atoll instance list --site site-2 --output json"
    )]
    List {
        /// Only this site's instances.
        #[arg(long)]
        site: Option<String>,
    },
    /// One instance, wherever it runs: desired and observed state, reason, resources.
    #[command(
        after_long_help = "Examples:\n  atoll instance show web\n  atoll instance show web --site site-3"
    )]
    Show {
        /// Instance name.
        name: String,
        /// The site to look on (needed when the name exists on several).
        #[arg(long)]
        site: Option<String>,
    },
    /// Start a stopped instance.
    #[command(after_long_help = "Example:\n  atoll instance start web --site site-2")]
    Start {
        /// Instance name.
        name: String,
        #[command(flatten)]
        at: At,
    },
    /// Stop a running instance (it stays, stopped).
    #[command(after_long_help = "Example:\n  atoll instance stop web")]
    Stop {
        /// Instance name.
        name: String,
        #[command(flatten)]
        at: At,
    },
    /// Stop, then start again.
    #[command(after_long_help = "Example:\n  atoll instance restart web")]
    Restart {
        /// Instance name.
        name: String,
        #[command(flatten)]
        at: At,
    },
    /// Stop and remove an instance, freeing its quota.
    #[command(after_long_help = "Example:\n  atoll instance delete web --site site-3")]
    Delete {
        /// Instance name.
        name: String,
        #[command(flatten)]
        at: At,
    },
    /// The tail of an instance's output, wherever it runs (read over the peer
    /// network from another site, at most 1 MiB).
    #[command(after_long_help = "Example:\n  atoll instance logs web --tail 4096")]
    Logs {
        /// Instance name.
        name: String,
        /// Bytes from the end.
        #[arg(long, default_value_t = 65536)]
        tail: u64,
        /// The site to look on (needed when the name exists on several).
        #[arg(long)]
        site: Option<String>,
    },
}

pub async fn run(g: &Global, api: &Api, c: InstanceCmd) -> anyhow::Result<()> {
    let path = |name: &str| {
        let (p, n) = split_ref(g, name);
        format!("/v1/instances/{p}/{n}")
    };
    let report = |i: &Instance| {
        println!("{}/{}: {} (desired {}){}", i.project, i.name, i.observed, json_str(&i.desired), reason(i));
    };
    match c {
        InstanceCmd::Create { name, image, cpus, memory, disk, restart, ports, env, at, args } => {
            let body = NewInstance {
                name,
                project: g.project.clone(),
                image,
                cpus,
                memory_mib: memory,
                disk_mib: disk,
                restart,
                args,
                env: env.into_iter().collect::<BTreeMap<_, _>>(),
                ports,
                replica: None,
            };
            let rb = api.request(reqwest::Method::POST, &format!("/v1/instances{}", at.query())).json(&body);
            if let Some(i) = settled::<Instance>(api.send_remote(rb).await?) {
                report(&i);
                fail_unless_up(&i)?;
            }
        }
        InstanceCmd::List { site } => {
            let query = site.map(|s| format!("?site={s}")).unwrap_or_default();
            let list: InstanceList = api.get(&format!("/v1/instances{query}")).await?;
            print(g.output, &list, HEADERS, || rows(&list));
            if g.output == Format::Table {
                for line in notes(&list) {
                    println!("{line}");
                }
            }
        }
        InstanceCmd::Show { name, site } => {
            let query = site.map(|s| format!("?site={s}")).unwrap_or_default();
            show(g.output, &api.get::<Instance>(&format!("{}{query}", path(&name))).await?)?
        }
        InstanceCmd::Start { name, at } => {
            if let Some(i) = act::<Instance>(api, &format!("{}/start", path(&name)), &at).await? {
                report(&i);
                fail_unless_up(&i)?;
            }
        }
        InstanceCmd::Stop { name, at } => {
            if let Some(i) = act::<Instance>(api, &format!("{}/stop", path(&name)), &at).await? {
                report(&i);
            }
        }
        InstanceCmd::Restart { name, at } => {
            if act::<Instance>(api, &format!("{}/stop", path(&name)), &at).await?.is_some()
                && let Some(i) = act::<Instance>(api, &format!("{}/start", path(&name)), &at).await?
            {
                report(&i);
                fail_unless_up(&i)?;
            }
        }
        InstanceCmd::Delete { name, at } => {
            let rb = api.request(reqwest::Method::DELETE, &format!("{}{}", path(&name), at.query()));
            if settled::<serde_json::Value>(api.send_remote(rb).await?).is_some() {
                println!("Deleted {}", split_ref(g, &name).1);
            }
        }
        InstanceCmd::Logs { name, tail, site } => {
            let site = site.map(|s| format!("&site={s}")).unwrap_or_default();
            let out = api.get_text(&format!("{}/logs?tail={tail}{site}", path(&name))).await?;
            use std::io::Write;
            std::io::stdout().write_all(&out)?;
        }
    }
    Ok(())
}

/// POSTs an instance action, on the site `at` names.
async fn act<T: serde::de::DeserializeOwned>(api: &Api, path: &str, at: &At) -> anyhow::Result<Option<T>> {
    let rb = api.request(reqwest::Method::POST, &format!("{path}{}", at.query())).json(&());
    Ok(settled(api.send_remote(rb).await?))
}

fn reason(i: &Instance) -> String {
    if i.reason.is_empty() { String::new() } else { format!(": {}", i.reason) }
}

fn fail_unless_up(i: &Instance) -> anyhow::Result<()> {
    use atoll_crdt::Observed::*;
    match i.observed {
        Running | Starting | Pending => Ok(()),
        other => bail!("instance {}/{} is {other}{}", i.project, i.name, reason(i)),
    }
}

const HEADERS: &[&str] =
    &["SITE", "PROJECT", "NAME", "KIND", "STATE", "DESIRED", "CPUS", "MEMORY", "RESTARTS", "SINCE", "IMAGE"];

/// The table rows; an instance of a site out of reach says so in its state.
fn rows(list: &InstanceList) -> Vec<Vec<String>> {
    let by_site: BTreeMap<_, &SiteState> = list.sites.iter().map(|s| (&s.site, s)).collect();
    let mut instances: Vec<&Instance> = list.instances.iter().collect();
    instances.sort_by(|a, b| (&a.site, &a.project, &a.name).cmp(&(&b.site, &b.project, &b.name)));
    instances
        .into_iter()
        .map(|i| {
            let mut state = i.observed.to_string();
            if let Some(s) = by_site.get(&i.site).filter(|s| !s.reachable) {
                state = format!("{state} (unreachable, {})", known(s));
            }
            vec![
                i.site.to_string(),
                i.project.clone(),
                i.name.clone(),
                i.kind.to_string(),
                state,
                json_str(&i.desired),
                i.cpus.to_string(),
                format!("{} MiB", i.memory_mib),
                i.restarts.to_string(),
                ago(i.observed_at),
                i.image.clone(),
            ]
        })
        .collect()
}

fn known(s: &SiteState) -> String {
    match s.as_of {
        Some(at) => format!("known {}", ago(at)),
        None => "age unknown".into(),
    }
}

/// Lines under the table for sites out of reach or only partly shown.
fn notes(list: &InstanceList) -> Vec<String> {
    let mut out = Vec::new();
    for s in &list.sites {
        let how = match &s.source {
            Source::Unknown => "nothing is known of its instances".to_owned(),
            Source::Remembered => format!("its last answer is shown ({})", known(s)),
            Source::Asked { by } if by != &s.site => format!("shown as {by} holds it ({})", known(s)),
            _ if !s.reachable => format!("shown as last synced ({})", known(s)),
            _ => String::new(),
        };
        if !s.reachable && !how.is_empty() {
            out.push(format!("site {} is unreachable: {how}", s.site));
        }
        if s.cut {
            out.push(format!(
                "site {} has more instances than one answer carries; list it with --site",
                s.site
            ));
        }
    }
    out
}
