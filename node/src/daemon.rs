//! `atoll daemon`: open the site's state, boot the peer and serve the API.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use atoll_crdt::{Descriptor, DriverInfo, Member, Resources, SiteId};
use atoll_proto::{DocId, Peer, PeerConfig, auth};
use ed25519_dalek::SigningKey;
use rand::Rng;
use tokio::sync::{mpsc, watch};

use crate::api::{AppState, router};
use crate::config::Settings;
use crate::driver::{Docker, Driver, Drivers, Exits, Process};
use crate::net::Net;
use crate::runtime::{Runtime, now_millis};
use crate::store::{Disk, Store};

/// Exits reported by drivers, queued for the loop.
const EXIT_QUEUE: usize = 256;

pub async fn run(s: Settings) -> anyhow::Result<()> {
    let data = &s.data_dir;
    std::fs::create_dir_all(data).with_context(|| format!("cannot create data dir {}", data.display()))?;
    std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700))?;
    check_site_name(data, &s.site)?;
    let key = load_or_create_key(&data.join("site.key"))?;
    let store: Arc<dyn Store> = Arc::new(Disk::open(&data.join("db")).context("cannot open the store")?);

    let (exits_tx, exits_rx) = mpsc::channel(EXIT_QUEUE);
    let mut drivers = Drivers::default();
    drivers.add(Box::new(Process::new(data.join("instances"), exits_tx.clone(), s.unsandboxed)));
    drivers.add(Box::new(Docker::connect(&s.site, s.ports.clone(), exits_tx.clone()).await));
    drivers.add(vm_driver(&s, exits_tx).await?);
    for f in drivers.fingerprints() {
        if f.available {
            tracing::info!(kind = %f.kind, version = %f.version, "driver ready: {}", f.detail);
        } else {
            tracing::warn!(kind = %f.kind, "driver unavailable, {} instances will be refused: {}", f.kind, f.detail);
        }
    }
    let drivers = Arc::new(drivers);

    let site = SiteId::new(&s.site)?;
    let descriptor = Descriptor {
        site: site.clone(),
        operator: s.operator.clone(),
        region: s.region.clone(),
        labels: s.labels.clone(),
        public_key: auth::encode_key(&key.verifying_key()),
        kinds: drivers.kinds(),
        drivers: drivers
            .fingerprints()
            .into_iter()
            .map(|f| DriverInfo {
                kind: f.kind,
                available: f.available,
                version: f.version,
                detail: f.detail,
            })
            .collect(),
        arch: std::env::consts::ARCH.into(),
        capacity: host_capacity(s.max_instances, s.cpus),
        disk_mib: crate::metrics::disk_mib(data).0,
        version: env!("CARGO_PKG_VERSION").into(),
    };
    let mut net = Net::new(&key, s.net.clone())?;
    tracing::info!(peer = %net.local_peer_id(), "peer network up");
    let member = Member {
        site: site.clone(),
        public_key: descriptor.public_key.clone(),
        region: descriptor.region.clone(),
        operator: descriptor.operator.clone(),
        joined_at: 0,
        addrs: Vec::new(),
        invitation: None,
        api_cert: None,
    };
    let cfg = PeerConfig {
        key,
        seed: rand::thread_rng().r#gen(),
        descriptor,
        token_ttl: s.token_ttl_ms,
        ports: s.ports.clone(),
    };
    let realm = store.load_doc(&DocId::Realm)?;
    let own = store.load_doc(&DocId::Site(site.clone()))?;
    let peer = match (realm, own) {
        (Some(realm), Some(own)) => {
            let mut others = Vec::new();
            let mut sigs = std::collections::BTreeMap::new();
            for id in store.docs()? {
                sigs.insert(id.clone(), store.load_sigs(&id)?);
                if let DocId::Site(s) = &id
                    && s != &site
                {
                    others.push((s.clone(), store.load_doc(&id)?.unwrap_or_default()));
                }
            }
            Peer::restore(cfg, &realm, &own, &others, &sigs).context("the stored state does not load")?
        }
        (None, None) if s.join.is_some() => {
            let token = s.join.as_deref().unwrap_or_default();
            println!("Joining the realm through the invitation's issuer...");
            let realm = net.join(token, member).await.context("cannot join the realm")?;
            let invitation = atoll_proto::membership::Invitation::read(token)?;
            let peer = Peer::join_invited(cfg, now_millis(), &realm, &invitation)?;
            println!("Site {} joined the realm.", s.site);
            peer
        }
        (None, None) => {
            let password = new_password();
            let peer = Peer::genesis(cfg, now_millis(), &password)?;
            let path = data.join("admin-password");
            write_secret(&path, password.as_bytes())?;
            println!("New realm created. User: admin  Password: {password}");
            println!("(shown once; also stored in {} with mode 0600)", path.display());
            peer
        }
        _ => anyhow::bail!("the data dir {} holds half a site; move it away to start afresh", data.display()),
    };
    #[cfg(feature = "tamper")]
    let peer = tamper(peer, data);
    forget_changed_password(data, &peer);
    if s.join.is_some() && peer.realm().member(&site)?.is_some_and(|m| m.invitation.is_none()) {
        tracing::warn!("--join ignored: this site founded its own realm and stays in it");
    }

    let traffic = net.traffic.clone();
    let (runtime, client) =
        Runtime::new(peer, store.clone(), drivers.clone(), data.join("images"), Some(net));
    // Beyond loopback the API is HTTPS, unless the operator says otherwise.
    let tls = if s.api.ip().is_loopback() || s.insecure {
        if !s.api.ip().is_loopback() {
            tracing::warn!(api = %s.api, "serving the API over plain HTTP beyond loopback (--insecure)");
        }
        None
    } else {
        Some(crate::api::tls::identity(data, &[s.site.clone(), "localhost".into()])?)
    };
    let mut runtime = runtime;
    runtime.serve_tls(tls.as_ref().map(|t| t.fingerprint.clone()));
    runtime.forward_exits(exits_rx);
    runtime.sample_metrics(data.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let loop_task = tokio::spawn(runtime.run(stop_rx.clone()));

    let listener =
        tokio::net::TcpListener::bind(s.api).await.with_context(|| format!("cannot listen on {}", s.api))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(site = %s.site, api = %listener.local_addr()?, data = %data.display(), "serving");
    if let Some(t) = &tls {
        println!("API certificate {} (clients pin it on first use)", t.fingerprint);
    }
    println!("Site {} serving the API on {scheme}://{}", s.site, listener.local_addr()?);
    let state = AppState {
        client,
        site: site.clone(),
        store,
        drivers,
        max_upload: s.max_upload,
        traffic,
        uploads: Arc::new(tokio::sync::Mutex::new(())),
        logins: Default::default(),
        exporter: Default::default(),
        scheme,
        glance: Default::default(),
    };
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    let mut stop = stop_rx;
    // With the client's address: failed logins are limited per address too.
    let app = router(state).into_make_service_with_connect_info::<crate::api::Caller>();
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    match tls {
        Some(t) => {
            let listener = crate::api::tls::Listener::new(listener, t.config)?;
            axum::serve(listener, app).with_graceful_shutdown(stopped).await?
        }
        None => axum::serve(listener, app).with_graceful_shutdown(stopped).await?,
    }
    loop_task.await??;
    Ok(())
}

/// The VM driver; without libvirt's library or daemon, one that says why.
async fn vm_driver(s: &Settings, exits: Exits) -> anyhow::Result<Box<dyn Driver>> {
    let at = crate::driver::libvirt::Place {
        uri: s.libvirt_uri.clone(),
        pool: s.libvirt_pool.clone(),
        domain_type: s.libvirt_domain_type.clone(),
        site: s.site.clone(),
        root: s.data_dir.join("vms"),
    };
    let d = tokio::task::spawn_blocking(move || crate::driver::Libvirt::connect(at, exits)).await?;
    Ok(Box::new(d))
}

/// SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

/// A data dir belongs to one site for good; starting it under another name would
/// fork the realm's history under a second identity.
fn check_site_name(data: &Path, site: &str) -> anyhow::Result<()> {
    let path = data.join("site-name");
    match std::fs::read_to_string(&path) {
        Ok(existing) if existing.trim() != site => anyhow::bail!(
            "the data dir {} belongs to site {:?}, not {site:?}; pass --site {} or another --data-dir",
            data.display(),
            existing.trim(),
            existing.trim()
        ),
        Ok(_) => Ok(()),
        Err(_) => Ok(std::fs::write(&path, site)?),
    }
}

fn load_or_create_key(path: &Path) -> anyhow::Result<SigningKey> {
    if let Ok(bytes) = std::fs::read(path) {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("{} is not a 32-byte ed25519 key", path.display()))?;
        return Ok(SigningKey::from_bytes(&arr));
    }
    let key = SigningKey::from_bytes(&rand::thread_rng().r#gen());
    write_secret(path, &key.to_bytes())?;
    Ok(key)
}

pub(crate) fn write_secret(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

fn new_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::thread_rng();
    (0..20).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
}

fn host_capacity(max_instances: i64, cpus: Option<i64>) -> Resources {
    let host = || std::thread::available_parallelism().map(|n| n.get() as i64).unwrap_or(1);
    let cpus = cpus.unwrap_or_else(host);
    let mem_kib: i64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    Resources::new(max_instances, cpus, mem_kib / 1024)
}

/// Removes `admin-password` once it no longer opens the `admin` account
/// (changed with `atoll user passwd admin`): a stale secret on disk misleads.
fn forget_changed_password(data: &Path, peer: &Peer) {
    let path = data.join("admin-password");
    let Ok(password) = std::fs::read_to_string(&path) else { return };
    let hash = peer.realm().user("admin").ok().flatten().map(|u| u.password_hash);
    if hash.is_none_or(|h| !atoll_proto::auth::password_matches(password.trim(), &h)) {
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "the genesis admin password was changed: file removed")
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a stale admin-password")
            }
        }
    }
}

/// A tampered build (`--features tamper`) breaks the rule ATOLL_TAMPER names;
/// tests/provenance.rs shows that the other sites refuse what it writes.
/// With `forge` it also writes a realm-admin token that it sealed alone into
/// `forged-admin-token` in its data dir.
#[cfg(feature = "tamper")]
fn tamper(mut peer: Peer, data: &std::path::Path) -> Peer {
    if std::env::var("ATOLL_TAMPER").as_deref() == Ok("forge") {
        tracing::warn!("TAMPERED BUILD: writing into other sites' documents at each repair round");
        peer.sabotage(atoll_proto::Sabotage::Forge);
        let token = peer.forge_token("admin", now_millis());
        if let Err(e) = std::fs::write(data.join("forged-admin-token"), token) {
            tracing::warn!("forged token not written: {e}");
        }
    }
    peer
}
