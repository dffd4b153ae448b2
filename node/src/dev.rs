//! `atoll dev`: a local atoll of N sites on loopback, each its own daemon
//! process on embedded defaults. The first site founds the realm; the others
//! join it by invitation, exactly as remote sites would.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use atoll_proto::api::TokenView;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::cli::client::Api;

#[derive(Debug, Clone, clap::Args)]
pub struct Flags {
    /// Number of sites.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=32))]
    pub sites: u16,
    /// Where the sites keep their state (default: atoll-dev under the user's data dir).
    /// Sites found there are started again as they were.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// API port of site-1; site-k listens on the k-1th port after it.
    #[arg(long, default_value_t = 7480)]
    pub api_port: u16,
    /// Peer port (QUIC and TCP) of site-1, the same way.
    #[arg(long, default_value_t = 7580)]
    pub peer_port: u16,
    /// Run process workloads unconfined if this host cannot sandbox them
    /// (see `atoll daemon --help`).
    #[arg(long, env = "ATOLL_UNSANDBOXED")]
    pub unsandboxed: bool,
}

struct Site {
    name: String,
    endpoint: String,
    child: Child,
}

pub async fn run(f: Flags) -> anyhow::Result<()> {
    let root =
        f.data_dir.clone().unwrap_or_else(|| crate::config::default_data_dir().with_file_name("atoll-dev"));
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let mut sites: Vec<Site> = Vec::new();
    let result = start_all(&f, &root, &mut sites).await;
    if let Err(e) = result {
        stop_all(&mut sites).await;
        return Err(e);
    }
    let password = std::fs::read_to_string(root.join("site-1/admin-password")).unwrap_or_default();
    println!();
    println!("A {}-site atoll runs on loopback (state in {}):", sites.len(), root.display());
    for s in &sites {
        println!("  {:<8} {}", s.name, s.endpoint);
    }
    println!();
    println!(
        "Log in on any site:  ATOLL_PASSWORD={} atoll --endpoint {} login",
        password.trim(),
        sites[0].endpoint
    );
    println!("List the sites:      atoll --endpoint {} site list", sites[0].endpoint);
    println!("Ctrl-C stops them all.");
    // A site that dies is an outage to watch the others ride out (the
    // realm-wide view marks it unreachable), not a reason to stop them.
    let mut gone = vec![false; sites.len()];
    let all_gone = loop {
        tokio::select! {
            _ = crate::daemon::shutdown_signal() => break false,
            (i, status) = next_exit(&mut sites, &gone) => {
                gone[i] = true;
                eprintln!("warning: {} exited ({status}); the others keep running (see {})",
                    sites[i].name, root.join(format!("{}.log", sites[i].name)).display());
                if gone.iter().all(|g| *g) {
                    break true;
                }
            }
        }
    };
    stop_all(&mut sites).await;
    if all_gone {
        bail!("every site exited");
    }
    Ok(())
}

async fn start_all(f: &Flags, root: &Path, sites: &mut Vec<Site>) -> anyhow::Result<()> {
    for k in 0..f.sites {
        let name = format!("site-{}", k + 1);
        let data = root.join(&name);
        let api = format!("127.0.0.1:{}", f.api_port + k);
        let port = f.peer_port + k;
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["daemon", "--site", &name, "--api", &api])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", &format!("/ip4/127.0.0.1/udp/{port}/quic-v1")])
            .args(["--listen", &format!("/ip4/127.0.0.1/tcp/{port}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(root.join(format!("{name}.log")))?))
            .kill_on_drop(true);
        if f.unsandboxed {
            cmd.arg("--unsandboxed");
        }
        let founded = data.join("db").exists();
        if k > 0 && !founded {
            let token = invite(&sites[0], root, &name).await?;
            cmd.args(["--join", &token]);
        }
        let endpoint = format!("http://{api}");
        let child = cmd.spawn().context("cannot start a site daemon")?;
        sites.push(Site { name: name.clone(), endpoint: endpoint.clone(), child });
        wait_serving(sites.last_mut().expect("just pushed"), root).await?;
        println!("{name}: serving on {endpoint}");
    }
    Ok(())
}

/// An invitation for `name`, asked of the first site as its admin.
async fn invite(first: &Site, root: &Path, name: &str) -> anyhow::Result<String> {
    let password = std::fs::read_to_string(root.join("site-1/admin-password"))
        .context("site-1 has no admin-password file; remove the dev data dir to start afresh")?;
    let anon = Api::new(&first.endpoint, None, None)?;
    let login: TokenView =
        anon.post("/v1/login", &serde_json::json!({"user": "admin", "password": password.trim()})).await?;
    let admin = Api::new(&first.endpoint, Some(login.token), None)?;
    let reply: serde_json::Value =
        admin.post("/v1/sites/invitations", &serde_json::json!({"name": name})).await?;
    reply["token"].as_str().map(str::to_owned).context("the invitation reply has no token")
}

/// Waits for the daemon's own "serving" line: a health check could be answered
/// by another process already on that port.
async fn wait_serving(site: &mut Site, root: &Path) -> anyhow::Result<()> {
    let log = root.join(format!("{}.log", site.name));
    let stdout = site.child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let serving = async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("serving the API on") {
                return true;
            }
        }
        false
    };
    match tokio::time::timeout(Duration::from_secs(60), serving).await {
        Ok(true) => {
            // Keep reading so that the daemon never blocks on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            Ok(())
        }
        Ok(false) => bail!("{} exited before serving; see {}", site.name, log.display()),
        Err(_) => bail!("{} did not start serving within 60 s; see {}", site.name, log.display()),
    }
}

/// The next site to exit among those still running.
async fn next_exit(sites: &mut [Site], gone: &[bool]) -> (usize, std::process::ExitStatus) {
    loop {
        for (i, s) in sites.iter_mut().enumerate() {
            if gone[i] {
                continue;
            }
            if let Ok(Some(status)) = s.child.try_wait() {
                return (i, status);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn stop_all(sites: &mut [Site]) {
    for s in sites.iter() {
        if let Some(pid) = s.child.id() {
            // SIGTERM: each daemon shuts down gracefully.
            // SAFETY: kill(2) on a pid of a child we spawned and have not reaped.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
    }
    for s in sites.iter_mut() {
        if tokio::time::timeout(Duration::from_secs(20), s.child.wait()).await.is_err() {
            let _ = s.child.kill().await;
        }
    }
}
