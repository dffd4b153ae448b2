//! The `atoll` command line: a client of any site's `/v1` API.

pub mod client;
mod credentials;
mod deploy;
mod identity;
mod instance;
mod intent;
pub mod output;
mod pin;
mod site;

use std::path::PathBuf;

use anyhow::{Context, bail};
use atoll_crdt::{Image, ImageFormat, Project, Resources, Role, RoleBinding, SiteId};
use atoll_proto::api::{Grant, ImageView, NewProject, NewUser, QuotaView, UserView, Whoami};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use client::Api;
use intent::{IntentCmd, settled};
use output::{Format, ago, bytes, print};

#[derive(Debug, Args)]
pub struct Global {
    /// API endpoint of any site.
    #[arg(long, global = true, env = "ATOLL_ENDPOINT", default_value = "http://127.0.0.1:7480")]
    pub endpoint: String,
    /// The SHA-256 fingerprint (`sha256:HEX`) the endpoint's HTTPS certificate
    /// must have; default: the one pinned on first use (docs/operations.md, "HTTPS").
    #[arg(long, global = true, env = "ATOLL_FINGERPRINT")]
    pub fingerprint: Option<String>,
    /// Token (default: the one saved by `atoll login` for this endpoint's realm).
    #[arg(long, global = true, env = "ATOLL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Project that names refer to.
    #[arg(long, short, global = true, env = "ATOLL_PROJECT", default_value = "default")]
    pub project: String,
    /// Output of listings and shows.
    #[arg(long, short, global = true, value_enum, default_value = "table")]
    pub output: Format,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Log in and save a token for this endpoint.
    #[command(after_long_help = "Example:\n  ATOLL_PASSWORD=... atoll login -u admin")]
    Login {
        /// User name.
        #[arg(long, short, default_value = "admin")]
        user: String,
        /// Read the password from standard input (else ATOLL_PASSWORD, else a prompt).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Revoke this login's token on every site and forget it here.
    #[command(after_long_help = "Example:\n  atoll logout")]
    Logout,
    /// Tokens: revoke every token of a user.
    #[command(subcommand)]
    Token(identity::TokenCmd),
    /// Who the token belongs to, and their roles.
    #[command(after_long_help = "Example:\n  atoll whoami --output json")]
    Whoami,
    /// Sites of the realm: list, show, invite, remove.
    #[command(subcommand)]
    Site(SiteCmd),
    /// Images: upload, list, show, remove, copy to other sites.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Instances (processes, containers, VMs) on any site of the realm.
    #[command(subcommand)]
    Instance(instance::InstanceCmd),
    /// Users of the realm.
    #[command(subcommand)]
    User(UserCmd),
    /// Projects, which own instances, images and a quota.
    #[command(subcommand)]
    Project(ProjectCmd),
    /// Role bindings: who may do what in which project, on which sites.
    #[command(subcommand)]
    Role(RoleCmd),
    /// Project quotas and the rights each site holds of them.
    #[command(subcommand)]
    Quota(QuotaCmd),
    /// Operations sent to other sites, and their outcomes.
    #[command(subcommand)]
    Intent(IntentCmd),
    /// Deployments: services with replica counts and placement rules.
    #[command(subcommand)]
    Deploy(deploy::DeployCmd),
}

#[derive(Debug, Subcommand)]
pub enum SiteCmd {
    /// The serving site's descriptor, counts and live figures.
    #[command(after_long_help = "Example:\n  atoll site show --endpoint http://127.0.0.1:7481")]
    Show,
    /// Every site of the realm: reachability, last seen, capabilities, live figures.
    #[command(after_long_help = "Example:\n  atoll site list --output json")]
    List,
    /// Who sees whom: the sites each site reaches now (? where the serving site cannot ask).
    #[command(after_long_help = "Example:\n  atoll site reach --output json")]
    Reach,
    /// Print an invitation for a new site (realm admins).
    #[command(after_long_help = "Example:\n  atoll site invite --name edge-lyon-1 --ttl 600")]
    Invite {
        /// The only site name the invitation admits.
        #[arg(long)]
        name: Option<String>,
        /// Lifetime in seconds (default 3600).
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Remove a site from the realm: its peers refuse it from then on (realm admins).
    #[command(after_long_help = "Example:\n  atoll site remove edge-lyon-1")]
    Remove {
        /// The site to remove.
        site: String,
    },
    /// After a rolling upgrade: raise the realm's floor to this release, so
    /// that every cross-site operation needs its user's consent (realm
    /// admins; refused while a site is not heard running this release).
    #[command(name = "finish-upgrade", after_long_help = "Example:\n  atoll site finish-upgrade")]
    FinishUpgrade,
}

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Upload an image file (its sha256 is checked by the site).
    #[command(
        after_long_help = "Example:\n  atoll image add hello.tar --name hello\n  atoll image add alpine.tar --name alpine --format docker-archive --public"
    )]
    Add {
        /// The image file: a tar with manifest.json (process), a `docker save` archive, a disk.
        file: PathBuf,
        /// Name of the image in the project.
        #[arg(long)]
        name: String,
        /// process | docker-archive | qcow2 | raw
        #[arg(long, default_value = "process")]
        format: ImageFormat,
        /// Usable by every project.
        #[arg(long)]
        public: bool,
    },
    /// Images of the project, and the sites that hold each.
    #[command(after_long_help = "Example:\n  atoll image list --output json")]
    List,
    /// One image: digest, size, chunks, holders.
    #[command(after_long_help = "Example:\n  atoll image show hello")]
    Show {
        /// Image name (or PROJECT/NAME).
        name: String,
    },
    /// Remove an image from the catalog.
    #[command(after_long_help = "Example:\n  atoll image rm hello")]
    Rm {
        /// Image name (or PROJECT/NAME).
        name: String,
    },
    /// Fetch an image to other sites from the sites that hold it.
    #[command(after_long_help = "Example:\n  atoll image copy hello --to site-2,site-3")]
    Copy {
        /// Image name (or PROJECT/NAME).
        name: String,
        /// Target sites (comma-separated).
        #[arg(long, value_delimiter = ',', required = true)]
        to: Vec<String>,
        /// Seconds to wait for each copy before reporting it pending.
        #[arg(long, default_value_t = 300)]
        wait: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Create a user; the password comes from standard input or ATOLL_NEW_PASSWORD.
    #[command(after_long_help = "Example:\n  ATOLL_NEW_PASSWORD=bob-secret-1 atoll user create bob")]
    Create {
        /// User name.
        name: String,
        /// Administrator of the whole realm.
        #[arg(long)]
        realm_admin: bool,
    },
    /// Users of the realm (realm admins).
    #[command(after_long_help = "Example:\n  atoll user list --output json")]
    List,
    /// Delete a user with their role bindings; their tokens stop working (realm admins).
    #[command(after_long_help = "Example:\n  atoll user delete bob")]
    Delete {
        /// User name.
        name: String,
    },
    /// Change a password: your own (asks for the current one, ATOLL_PASSWORD),
    /// or, as a realm admin, anyone's. The new one comes from ATOLL_NEW_PASSWORD,
    /// standard input or a prompt. Earlier tokens of the user are revoked.
    #[command(
        after_long_help = "Examples:\n  atoll user passwd\n  ATOLL_NEW_PASSWORD=... atoll user passwd bob"
    )]
    Passwd {
        /// User name (default: yourself).
        name: Option<String>,
        /// Read the new password from standard input.
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProjectCmd {
    /// Create a project with its quota total (realm admins).
    #[command(after_long_help = "Example:\n  atoll project create lab --instances 2 --cpus 2 --memory 512")]
    Create {
        /// Project name.
        name: String,
        /// What the project is for.
        #[arg(long, default_value = "")]
        description: String,
        /// Instances in the quota total.
        #[arg(long, default_value_t = 10)]
        instances: i64,
        /// CPUs in the quota total.
        #[arg(long, default_value_t = 20)]
        cpus: i64,
        /// Memory in MiB in the quota total.
        #[arg(long, default_value_t = 20480)]
        memory: i64,
        /// How the total is placed: even (split over the current sites, then
        /// moved on demand), pool (all here, moved on demand), founder (all
        /// here, moved only by `quota give`).
        #[arg(long, value_parser = parse_spread, default_value = "even")]
        spread: atoll_crdt::Spread,
        /// MiB its images may add up to, realm-wide.
        #[arg(long, default_value_t = atoll_crdt::DEFAULT_STORAGE_MIB)]
        storage: i64,
    },
    /// Set how many MiB a project's images may add up to, realm-wide (realm admins).
    #[command(after_long_help = "Example:\n  atoll project storage lab 51200")]
    Storage {
        /// Project name.
        name: String,
        /// MiB.
        mib: i64,
    },
    /// Change how a project's rights move from now on (realm admins).
    #[command(after_long_help = "Example:\n  atoll project spread lab founder")]
    Spread {
        /// Project name.
        name: String,
        /// founder, even or pool.
        #[arg(value_parser = parse_spread)]
        spread: atoll_crdt::Spread,
    },
    /// Projects the caller has a role in.
    #[command(after_long_help = "Example:\n  atoll project list --output json")]
    List,
    /// Delete a project: refused while it has images, or instances on any
    /// site, or while a site is out of reach (realm admins).
    #[command(after_long_help = "Example:\n  atoll project delete lab")]
    Delete {
        /// Project name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RoleCmd {
    /// Grant USER the ROLE (admin, member, reader) in PROJECT.
    #[command(after_long_help = "Example:\n  atoll role grant bob lab member --sites site-2,site-3")]
    Grant {
        /// User name.
        user: String,
        /// Project name.
        project: String,
        /// admin | member | reader
        role: Role,
        /// Only on these sites (comma-separated).
        #[arg(long, value_delimiter = ',')]
        sites: Option<Vec<String>>,
    },
    /// Role bindings the caller may see.
    #[command(after_long_help = "Example:\n  atoll role list --output json")]
    List,
    /// Take USER's role in PROJECT away (project admins).
    #[command(after_long_help = "Example:\n  atoll role revoke bob lab")]
    Revoke {
        /// User name.
        user: String,
        /// Project name.
        project: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum QuotaCmd {
    /// Set a project's total; unset values stay as they are (realm admins).
    #[command(after_long_help = "Example:\n  atoll quota set lab --instances 20")]
    Set {
        /// Project name.
        project: String,
        /// Instances in the total.
        #[arg(long)]
        instances: Option<i64>,
        /// CPUs in the total.
        #[arg(long)]
        cpus: Option<i64>,
        /// Memory in MiB in the total.
        #[arg(long)]
        memory: Option<i64>,
    },
    /// A project's total, what is used realm-wide as known here, and the
    /// rights the serving site holds of it.
    #[command(
        after_long_help = "Examples:\n  atoll quota show lab\n  atoll quota show lab --by-site\n  atoll quota show lab --output json"
    )]
    Show {
        /// Project name.
        project: String,
        /// One row per site: where the rights are, what is used, reachable or not.
        #[arg(long)]
        by_site: bool,
    },
    /// Give rights this site holds to another site (sites also ask each other
    /// on demand while connected; this places rights ahead of a partition).
    #[command(
        after_long_help = "Example:\n  atoll quota give lab --to site-3 --instances 2 --cpus 2 --memory 512"
    )]
    Give {
        /// Project name.
        project: String,
        /// Receiving sites (comma-separated).
        #[arg(long)]
        to: String,
        /// Instances to give.
        #[arg(long, default_value_t = 0)]
        instances: i64,
        /// CPUs to give.
        #[arg(long, default_value_t = 0)]
        cpus: i64,
        /// Memory in MiB to give.
        #[arg(long, default_value_t = 0)]
        memory: i64,
    },
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

/// `name` or `project/name`.
fn parse_spread(s: &str) -> Result<atoll_crdt::Spread, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| format!("{s:?} is not a spread: use founder, even or pool"))
}

fn split_ref<'a>(g: &'a Global, name: &'a str) -> (&'a str, &'a str) {
    name.split_once('/').unwrap_or((&g.project, name))
}

pub(crate) fn read_secret(prompt: &str, env: &str, from_stdin: bool) -> anyhow::Result<String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        return Ok(line.trim_end_matches(['\n', '\r']).to_owned());
    }
    if let Ok(v) = std::env::var(env) {
        return Ok(v);
    }
    rpassword::prompt_password(prompt)
        .with_context(|| format!("no terminal to ask for a password: set {env}"))
}

pub async fn run(g: Global, cmd: Cmd) -> anyhow::Result<()> {
    let api = Api::connect(&g.endpoint, g.token.clone(), g.fingerprint.clone()).await?;
    match cmd {
        Cmd::Login { user, password_stdin } => {
            let password = read_secret("Password: ", "ATOLL_PASSWORD", password_stdin)?;
            identity::login(&api, &user, password).await?;
        }
        Cmd::Logout => identity::logout(&api).await?,
        Cmd::Token(c) => identity::token(&api, c).await?,
        Cmd::User(UserCmd::Delete { name }) => identity::delete_user(&api, &name).await?,
        Cmd::User(UserCmd::Passwd { name, password_stdin }) => {
            identity::passwd(&api, name, password_stdin).await?
        }
        Cmd::Role(RoleCmd::Revoke { user, project }) => identity::revoke_role(&api, &user, &project).await?,
        Cmd::Project(ProjectCmd::Delete { name }) => identity::delete_project(&api, &name).await?,
        Cmd::Whoami => {
            let w: Whoami = api.get("/v1/whoami").await?;
            print(g.output, &w, &["USER", "REALM ADMIN", "SITE", "ROLES"], || {
                let roles: Vec<String> =
                    w.roles.iter().map(|r| format!("{}:{:?}", r.project, r.role).to_lowercase()).collect();
                vec![vec![w.user.clone(), w.realm_admin.to_string(), w.site.to_string(), roles.join(",")]]
            });
        }
        Cmd::Site(SiteCmd::Show) => site::show(&g, &api).await?,
        Cmd::Site(SiteCmd::List) => site::list(&g, &api).await?,
        Cmd::Site(SiteCmd::Reach) => site::reach(&g, &api).await?,
        Cmd::Site(SiteCmd::Invite { name, ttl }) => site::invite(&g, &api, name, ttl).await?,
        Cmd::Site(SiteCmd::FinishUpgrade) => {
            let view: serde_json::Value =
                api.post("/v1/realm/finish-upgrade", &serde_json::json!({})).await?;
            if g.output == Format::Json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                println!(
                    "Realm {} is at floor {}: every cross-site operation needs its user's consent",
                    view["realm"].as_str().unwrap_or_default(),
                    view["floor"]
                );
            }
        }
        Cmd::Site(SiteCmd::Remove { site }) => {
            let _: serde_json::Value = api.delete(&format!("/v1/sites/{site}")).await?;
            println!("Removed site {site} from the realm; its peers refuse it from now on");
        }
        Cmd::Image(c) => image(&g, &api, c).await?,
        Cmd::Instance(c) => instance::run(&g, &api, c).await?,
        Cmd::Intent(c) => intent::run(&g, &api, c).await?,
        Cmd::Deploy(c) => deploy::run(&g, &api, c).await?,
        Cmd::User(UserCmd::Create { name, realm_admin }) => {
            let password = read_secret(
                "New password: ",
                "ATOLL_NEW_PASSWORD",
                std::env::var("ATOLL_NEW_PASSWORD").is_err(),
            )?;
            let u: UserView = api.post("/v1/users", &NewUser { name, password, realm_admin }).await?;
            println!("Created user {}", u.name);
        }
        Cmd::User(UserCmd::List) => {
            let users: Vec<UserView> = api.get("/v1/users").await?;
            print(g.output, &users, &["NAME", "REALM ADMIN", "CREATED"], || {
                users
                    .iter()
                    .map(|u| vec![u.name.clone(), u.realm_admin.to_string(), ago(u.created_at)])
                    .collect()
            });
        }
        Cmd::Project(ProjectCmd::Create { name, description, instances, cpus, memory, spread, storage }) => {
            let quota = Resources::new(instances, cpus, memory);
            let new = NewProject { name, description, quota, spread, storage_mib: storage };
            let p: Project = api.post("/v1/projects", &new).await?;
            println!("Created project {} (rights spread: {})", p.name, p.spread);
        }
        Cmd::Project(ProjectCmd::Spread { name, spread }) => {
            let body = serde_json::json!({ "spread": spread });
            let p: Project = api.put(&format!("/v1/projects/{name}/spread"), &body).await?;
            println!("Project {}: rights spread {} from now on", p.name, p.spread);
        }
        Cmd::Project(ProjectCmd::Storage { name, mib }) => {
            let p: Project = api
                .put(&format!("/v1/projects/{name}/storage"), &serde_json::json!({ "storage_mib": mib }))
                .await?;
            println!("Project {}: images may add up to {} MiB", p.name, p.storage_mib);
        }
        Cmd::Project(ProjectCmd::List) => {
            let ps: Vec<Project> = api.get("/v1/projects").await?;
            print(g.output, &ps, &["NAME", "SPREAD", "STORAGE", "DESCRIPTION", "CREATED"], || {
                ps.iter()
                    .map(|p| {
                        vec![
                            p.name.clone(),
                            p.spread.to_string(),
                            format!("{} MiB", p.storage_mib),
                            p.description.clone(),
                            ago(p.created_at),
                        ]
                    })
                    .collect()
            });
        }
        Cmd::Role(RoleCmd::Grant { user, project, role, sites }) => {
            let sites =
                sites.map(|v| v.iter().map(|s| SiteId::new(s)).collect::<Result<Vec<_>, _>>()).transpose()?;
            let b: RoleBinding = api.post("/v1/roles", &Grant { user, project, role, sites }).await?;
            println!("{} is now {:?} in {}", b.user, b.role, b.project);
        }
        Cmd::Role(RoleCmd::List) => {
            let bs: Vec<RoleBinding> = api.get("/v1/roles").await?;
            print(g.output, &bs, &["USER", "PROJECT", "ROLE", "SITES"], || {
                bs.iter()
                    .map(|b| {
                        let sites = b.sites.as_ref().map_or("all".into(), |s| {
                            s.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",")
                        });
                        vec![b.user.clone(), b.project.clone(), format!("{:?}", b.role).to_lowercase(), sites]
                    })
                    .collect()
            });
        }
        Cmd::Quota(QuotaCmd::Set { project, instances, cpus, memory }) => {
            let cur: QuotaView = api.get(&format!("/v1/quotas/{project}")).await?;
            let total = Resources::new(
                instances.unwrap_or(cur.total.instances),
                cpus.unwrap_or(cur.total.cpus),
                memory.unwrap_or(cur.total.memory_mib),
            );
            let q: QuotaView = api.put(&format!("/v1/quotas/{project}"), &total).await?;
            print_quota(g.output, &q);
        }
        Cmd::Quota(QuotaCmd::Give { project, to, instances, cpus, memory }) => {
            let to: Vec<&str> = to.split(',').collect();
            let body = serde_json::json!({"to": to, "amount": Resources::new(instances, cpus, memory)});
            let q: QuotaView = api.post(&format!("/v1/quotas/{project}/give"), &body).await?;
            print_quota(g.output, &q);
        }
        Cmd::Quota(QuotaCmd::Show { project, by_site: false }) => {
            let q: QuotaView = api.get(&format!("/v1/quotas/{project}")).await?;
            print_quota(g.output, &q);
        }
        Cmd::Quota(QuotaCmd::Show { project, by_site: true }) => {
            let q: QuotaView = api.get(&format!("/v1/quotas/{project}")).await?;
            let figure = |r: Option<Resources>| r.map(|r| r.to_string()).unwrap_or_else(|| "?".into());
            print(g.output, &q.by_site, &["SITE", "REACHABLE", "FREE RIGHTS", "USED", "FROM"], || {
                q.by_site
                    .iter()
                    .map(|r| {
                        vec![
                            r.site.to_string(),
                            if r.reachable { "yes".into() } else { "no".into() },
                            figure(r.free),
                            figure(r.used),
                            r.source.clone(),
                        ]
                    })
                    .collect()
            });
        }
    }
    Ok(())
}

fn print_quota(f: Format, q: &QuotaView) {
    let headers = ["PROJECT", "RESOURCE", "TOTAL", "USED (KNOWN)", "USED HERE", "FREE HERE"];
    print(f, q, &headers, || {
        let row = |name: &str, t: i64, k: i64, u: i64, a: i64| {
            vec![q.project.clone(), name.into(), t.to_string(), k.to_string(), u.to_string(), a.to_string()]
        };
        let (t, k, u, a) = (q.total, q.used_known, q.account.consumed, q.available_here);
        vec![
            row("instances", t.instances, k.instances, u.instances, a.instances),
            row("cpus", t.cpus, k.cpus, u.cpus, a.cpus),
            row("memory MiB", t.memory_mib, k.memory_mib, u.memory_mib, a.memory_mib),
        ]
    });
    if f == Format::Table {
        let known = q.by_site.iter().filter(|r| r.used.is_some()).count();
        if known < q.by_site.len() {
            println!(
                "(used: on the {known} of {} sites whose documents the serving site holds; --by-site shows each)",
                q.by_site.len()
            );
        }
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:9} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    pb
}

async fn image(g: &Global, api: &Api, c: ImageCmd) -> anyhow::Result<()> {
    match c {
        ImageCmd::Add { file, name, format, public } => {
            let len =
                std::fs::metadata(&file).with_context(|| format!("cannot read {}", file.display()))?.len();
            let digest = hash_file(&file, len).await?;
            let pb = bar(len, "uploading");
            let f = tokio::fs::File::open(&file).await?;
            let pb2 = pb.clone();
            let stream = futures_util::StreamExt::inspect(
                tokio_util::io::ReaderStream::with_capacity(f, 256 << 10),
                move |chunk| {
                    if let Ok(c) = chunk {
                        pb2.inc(c.len() as u64);
                    }
                },
            );
            let format_name = serde_json::to_value(format)?.as_str().unwrap_or("process").to_owned();
            let path = format!(
                "/v1/images?name={name}&project={}&format={format_name}&visibility={}&digest={digest}",
                g.project,
                if public { "public" } else { "private" }
            );
            let result: anyhow::Result<Image> =
                api.post_body(&path, reqwest::Body::wrap_stream(stream)).await;
            pb.finish_and_clear();
            let img = result?;
            println!("Added image {}/{} ({}, {})", img.project, img.name, bytes(img.size), img.digest);
        }
        ImageCmd::List => {
            let imgs: Vec<ImageView> = api.get("/v1/images").await?;
            let headers = ["PROJECT", "NAME", "FORMAT", "SIZE", "VISIBILITY", "DIGEST", "HELD ON"];
            print(g.output, &imgs, &headers, || {
                imgs.iter()
                    .map(|v| {
                        let i = &v.image;
                        let holders: Vec<&str> = v.holders.iter().map(|s| s.as_str()).collect();
                        vec![
                            i.project.clone(),
                            i.name.clone(),
                            json_str(&i.format),
                            bytes(i.size),
                            json_str(&i.visibility),
                            i.digest.chars().take(19).collect(),
                            holders.join(","),
                        ]
                    })
                    .collect()
            });
        }
        ImageCmd::Show { name } => {
            let (p, n) = split_ref(g, &name);
            let i: ImageView = api.get(&format!("/v1/images/{p}/{n}")).await?;
            show(g.output, &i)?;
        }
        ImageCmd::Copy { name, to, wait } => copy_image(g, api, &name, &to, wait).await?,
        ImageCmd::Rm { name } => {
            let (p, n) = split_ref(g, &name);
            let _: serde_json::Value = api.delete(&format!("/v1/images/{p}/{n}")).await?;
            println!("Removed image {p}/{n}");
        }
    }
    Ok(())
}

/// Copies an image to several sites at once, with a spinner per site.
async fn copy_image(g: &Global, api: &Api, name: &str, to: &[String], wait: u64) -> anyhow::Result<()> {
    let (p, n) = split_ref(g, name);
    let bars = indicatif::MultiProgress::new();
    let copies = to.iter().map(|site| {
        let pb = bars.add(ProgressBar::new_spinner());
        pb.set_message(format!("copying {p}/{n} to {site}"));
        pb.enable_steady_tick(std::time::Duration::from_millis(120));
        let rb =
            api.request(reqwest::Method::POST, &format!("/v1/images/{p}/{n}/copy?site={site}&wait={wait}"));
        async move {
            let r = api.send_remote::<ImageView>(rb).await;
            pb.finish_and_clear();
            (site, r)
        }
    });
    let mut failed = Vec::new();
    for (site, r) in futures_util::future::join_all(copies).await {
        match r {
            Ok(r) => {
                if let Some(v) = settled(r) {
                    println!("{site}: holds {p}/{n} ({})", bytes(v.image.size));
                }
            }
            Err(e) => failed.push(format!("{site}: {e:#}")),
        }
    }
    if !failed.is_empty() {
        bail!("{} of {} copies failed: {}", failed.len(), to.len(), failed.join("; "));
    }
    Ok(())
}

async fn hash_file(file: &std::path::Path, len: u64) -> anyhow::Result<String> {
    use tokio::io::AsyncReadExt;
    let pb = bar(len, "hashing");
    let mut f = tokio::fs::File::open(file).await?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        pb.inc(n as u64);
    }
    pb.finish_and_clear();
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

pub(crate) fn json_str<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

fn show<T: serde::Serialize>(f: Format, v: &T) -> anyhow::Result<()> {
    let value = serde_json::to_value(v)?;
    match f {
        Format::Json => println!("{}", serde_json::to_string_pretty(&value)?),
        Format::Table => {
            if let Some(map) = value.as_object() {
                let w = map.keys().map(|k| k.len()).max().unwrap_or(0);
                for (k, v) in map {
                    let text = match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    println!("{k:<w$}  {text}");
                }
            }
        }
    }
    Ok(())
}
