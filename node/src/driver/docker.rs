//! Containers through the local Docker Engine (bollard).
//!
//! Images never come from a registry: the blob of an image of format
//! `docker-archive` (a `docker save` tar) is loaded into the engine, and the
//! container runs the image by id. Containers carry the labels `atoll.site` and
//! `atoll.instance`, so a restarted daemon re-attaches to its own and leaves every
//! other container alone. The engine's restart policy stays `no`: Atoll applies
//! the instance's policy itself, from the `die` events it watches.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atoll_crdt::Kind;
use atoll_proto::InstanceSpec;
use atoll_proto::lifecycle::{PortPolicy, parse_port};
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, EventsOptionsBuilder, ImportImageOptionsBuilder, InspectContainerOptions,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StatsOptions, StopContainerOptionsBuilder,
};
use futures_util::StreamExt;

use super::{
    Driver, DriverError, DriverFuture, Exit, Exits, Fingerprint, Recovered, dir_name, legacy_dir_name,
};

/// Log lines asked of the engine before trimming to the byte budget.
const LOG_LINES: &str = "5000";

type Shared<T> = Arc<Mutex<T>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct Docker {
    client: Option<bollard::Docker>,
    /// Checked again here: a spec from a document is not trusted to have been.
    ports: PortPolicy,
    fingerprint: Fingerprint,
    site: String,
    /// Current run of each instance this daemon drives.
    runs: Shared<HashMap<String, u64>>,
    /// Instances being stopped on purpose: their `die` is not a crash.
    stopping: Shared<HashSet<String>>,
    /// Archives loaded in this daemon's life, and the image id each gave.
    loaded: Shared<HashMap<PathBuf, String>>,
}

fn engine_error(e: bollard::errors::Error) -> DriverError {
    DriverError::Runtime(format!("docker: {e}"))
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}

impl Docker {
    /// Connects to the engine named by `DOCKER_HOST` or the local socket. An
    /// unreachable engine gives a driver that says so and refuses work.
    pub async fn connect(site: &str, ports: PortPolicy, exits: Exits) -> Docker {
        let unavailable = |why: String| Docker {
            ports: ports.clone(),
            client: None,
            fingerprint: Fingerprint {
                kind: Kind::Container,
                available: false,
                version: String::new(),
                detail: why,
            },
            site: site.to_owned(),
            runs: Arc::default(),
            stopping: Arc::default(),
            loaded: Arc::default(),
        };
        let client = match bollard::Docker::connect_with_local_defaults() {
            Ok(c) => c,
            Err(e) => return unavailable(format!("no Docker engine: {e}")),
        };
        let client = match tokio::time::timeout(Duration::from_secs(5), client.negotiate_version()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return unavailable(format!("Docker engine not reachable: {e}")),
            Err(_) => return unavailable("Docker engine did not answer within 5 s".into()),
        };
        let version = match client.version().await {
            Ok(v) => v,
            Err(e) => return unavailable(format!("Docker engine not reachable: {e}")),
        };
        let d = Docker {
            fingerprint: Fingerprint {
                kind: Kind::Container,
                available: true,
                version: version.version.clone().unwrap_or_default(),
                detail: format!(
                    "Docker Engine {} (API {}); images loaded from Atoll blobs, never pulled",
                    version.version.unwrap_or_default(),
                    version.api_version.unwrap_or_default()
                ),
            },
            client: Some(client),
            ports,
            site: site.to_owned(),
            runs: Arc::default(),
            stopping: Arc::default(),
            loaded: Arc::default(),
        };
        d.watch_events(exits);
        d
    }

    fn client(&self) -> Result<&bollard::Docker, DriverError> {
        self.client.as_ref().ok_or_else(|| DriverError::Runtime(self.fingerprint.detail.clone()))
    }

    fn name(&self, key: &str) -> String {
        format!("atoll.{}.{}", self.site, dir_name(key))
    }

    /// Follows the engine's `die` events for this site's containers, resuming
    /// from the last event seen when the stream breaks.
    fn watch_events(&self, exits: Exits) {
        let Some(client) = self.client.clone() else { return };
        let (site, runs, stopping) = (self.site.clone(), self.runs.clone(), self.stopping.clone());
        tokio::spawn(async move {
            let mut since = None::<String>;
            let mut backoff = Duration::from_millis(500);
            loop {
                let filters = HashMap::from([
                    ("type", vec!["container".to_owned()]),
                    ("event", vec!["die".to_owned()]),
                    ("label", vec![format!("atoll.site={site}")]),
                ]);
                let mut opts = EventsOptionsBuilder::new().filters(&filters);
                if let Some(s) = &since {
                    opts = opts.since(s);
                }
                let mut stream = client.events(Some(opts.build()));
                while let Some(event) = stream.next().await {
                    let event = match event {
                        Ok(e) => e,
                        Err(e) => {
                            tracing::warn!("docker events stream broke: {e}");
                            break;
                        }
                    };
                    backoff = Duration::from_millis(500);
                    if let Some(t) = event.time {
                        since = Some(t.to_string());
                    }
                    let attrs = event.actor.and_then(|a| a.attributes).unwrap_or_default();
                    let Some(key) = attrs.get("atoll.instance").cloned() else { continue };
                    if lock(&stopping).remove(&key) {
                        continue;
                    }
                    let Some(run) = lock(&runs).get(&key).copied() else { continue };
                    let code = attrs.get("exitCode").and_then(|c| c.parse().ok());
                    if exits.send(Exit { key, run, code, detail: " (container died)".into() }).await.is_err()
                    {
                        return;
                    }
                }
                if exits.is_closed() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        });
    }

    /// Loads the archive unless the engine already has its image; returns the image id.
    /// Loads a tag-free copy of the member's archive (see [`super::archive`])
    /// and returns the image id, which the engine must report having loaded.
    /// Always loaded, never skipped because the engine has the id already:
    /// an archive naming the id of an image it does not carry would run that
    /// image. Once loaded in this daemon's life, an archive is not again.
    async fn load(&self, archive: &Path) -> Result<String, DriverError> {
        if let Some(id) = lock(&self.loaded).get(archive) {
            return Ok(id.clone());
        }
        self.client()?;
        // One copy per load: two instances of one image may start at once.
        static LOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = LOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut clean = archive.as_os_str().to_owned();
        clean.push(format!(".load-{n}.tar"));
        let clean = PathBuf::from(clean);
        let (from, to) = (archive.to_path_buf(), clean.clone());
        let id = tokio::task::spawn_blocking(move || -> Result<String, DriverError> {
            let out = std::io::BufWriter::new(std::fs::File::create(&to)?);
            Ok(atoll_image::docker::sanitize(std::io::BufReader::new(std::fs::File::open(&from)?), out)?)
        })
        .await
        .map_err(|e| DriverError::Runtime(e.to_string()))?;
        let id = match id {
            Ok(id) => id,
            Err(e) => {
                let _ = tokio::fs::remove_file(&clean).await;
                return Err(e);
            }
        };
        let loaded = self.import(&clean).await;
        let _ = tokio::fs::remove_file(&clean).await;
        let reported = loaded?;
        if reported.as_deref() != Some(id.as_str()) {
            return Err(DriverError::Image(format!(
                "the engine loaded {} from an archive whose config is {id}",
                reported.as_deref().unwrap_or("no image")
            )));
        }
        lock(&self.loaded).insert(archive.to_path_buf(), id.clone());
        Ok(id)
    }

    /// `docker load` of `archive`; the id the engine says it loaded.
    async fn import(&self, archive: &Path) -> Result<Option<String>, DriverError> {
        let file = tokio::fs::File::open(archive).await?;
        let body = bollard::body_try_stream(tokio_util::io::ReaderStream::new(file));
        let mut progress =
            self.client()?.import_image(ImportImageOptionsBuilder::new().quiet(true).build(), body, None);
        let mut id = None;
        while let Some(item) = progress.next().await {
            let info = item.map_err(engine_error)?;
            if let Some(err) = info.error_detail.and_then(|d| d.message).or(info.error) {
                return Err(DriverError::Image(format!("docker load: {err}")));
            }
            // "Loaded image ID: sha256:..." for an image without tags.
            if let Some(s) = info.stream.as_deref().and_then(|s| s.trim().strip_prefix("Loaded image ID: ")) {
                id = Some(s.to_owned());
            }
        }
        Ok(id)
    }

    async fn remove(&self, name: &str) -> Result<(), DriverError> {
        let opts = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
        match self.client()?.remove_container(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(engine_error(e)),
        }
    }

    /// Removes `key`'s container, and one made for it before names became
    /// injective, but only if its labels say it is this instance's: that old
    /// name may be another project's container today.
    async fn remove_instance(&self, key: &str) -> Result<(), DriverError> {
        self.remove(&self.name(key)).await?;
        let Some(old) = legacy_dir_name(key).map(|o| format!("atoll.{}.{o}", self.site)) else {
            return Ok(());
        };
        let info = match self.client()?.inspect_container(&old, None::<InspectContainerOptions>).await {
            Ok(i) => i,
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(engine_error(e)),
        };
        let labels = info.config.and_then(|c| c.labels).unwrap_or_default();
        if labels.get("atoll.site") == Some(&self.site)
            && labels.get("atoll.instance").map(String::as_str) == Some(key)
        {
            self.remove(&old).await?;
        }
        Ok(())
    }

    fn config(
        &self,
        spec: &InstanceSpec,
        run: u64,
        image: String,
    ) -> Result<ContainerCreateBody, DriverError> {
        let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
        let mut exposed = HashMap::new();
        for p in &spec.ports {
            let p = self.ports.admit(p).and_then(|p| parse_port(&p)).map_err(DriverError::Runtime)?;
            let key = format!("{}/{}", p.container, p.proto);
            exposed.insert(key.clone(), HashMap::new());
            bindings
                .entry(key)
                .or_insert_with(|| Some(Vec::new()))
                .get_or_insert_with(Vec::new)
                .push(PortBinding { host_ip: p.ip.clone(), host_port: Some(p.host.to_string()) });
        }
        let labels = HashMap::from([
            ("atoll.site".to_owned(), self.site.clone()),
            ("atoll.instance".to_owned(), spec.key.clone()),
            ("atoll.run".to_owned(), run.to_string()),
        ]);
        Ok(ContainerCreateBody {
            image: Some(image),
            cmd: (!spec.args.is_empty()).then(|| spec.args.clone()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            host_config: Some(HostConfig {
                memory: Some(spec.memory_mib.saturating_mul(1 << 20)),
                nano_cpus: Some(spec.cpus.saturating_mul(1_000_000_000)),
                port_bindings: (!bindings.is_empty()).then_some(bindings),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        })
    }
}

impl Driver for Docker {
    fn fingerprint(&self) -> Fingerprint {
        self.fingerprint.clone()
    }

    fn start<'a>(
        &'a self,
        spec: &'a InstanceSpec,
        run: u64,
        image: PathBuf,
    ) -> DriverFuture<'a, (String, String)> {
        Box::pin(async move {
            let client = self.client()?;
            let id = self.load(&image).await?;
            let name = self.name(&spec.key);
            // A container left by an earlier run of this instance is replaced.
            self.remove_instance(&spec.key).await?;
            lock(&self.stopping).remove(&spec.key);
            lock(&self.runs).insert(spec.key.clone(), run);
            let opts = CreateContainerOptionsBuilder::new().name(&name).build();
            let created = client
                .create_container(Some(opts), self.config(spec, run, id)?)
                .await
                .map_err(engine_error)?;
            client
                .start_container(&created.id, None::<bollard::query_parameters::StartContainerOptions>)
                .await
                .map_err(engine_error)?;
            let detail = format!(
                "container {}; memory {} MiB, {} cpus{}",
                &created.id[..12.min(created.id.len())],
                spec.memory_mib,
                spec.cpus,
                if spec.ports.is_empty() {
                    String::new()
                } else {
                    format!(", ports {}", spec.ports.join(" "))
                }
            );
            Ok((created.id, detail))
        })
    }

    fn recover<'a>(&'a self, key: &'a str, run: u64, handle: &'a str) -> DriverFuture<'a, Recovered> {
        Box::pin(async move {
            // No handle recorded (a start cut short): the container's name is the key's.
            let name = self.name(key);
            let handle = if handle.is_empty() { name.as_str() } else { handle };
            let info = match self.client()?.inspect_container(handle, None::<InspectContainerOptions>).await {
                Ok(i) => i,
                Err(e) if is_not_found(&e) => {
                    return Ok(Recovered::Gone { detail: " (container removed)".into() });
                }
                Err(e) => return Err(engine_error(e)),
            };
            let labels = info.config.and_then(|c| c.labels).unwrap_or_default();
            if labels.get("atoll.site") != Some(&self.site)
                || labels.get("atoll.instance").map(String::as_str) != Some(key)
            {
                return Ok(Recovered::Gone {
                    detail: " (the container under that id is not this instance's)".into(),
                });
            }
            // Made before names became injective (`dir_name`): given today's
            // name, which stop, delete and logs use.
            if info.name.as_deref().and_then(|n| n.strip_prefix('/')) != Some(name.as_str()) {
                let to = bollard::query_parameters::RenameContainerOptions { name: name.clone() };
                self.client()?.rename_container(handle, to).await.map_err(engine_error)?;
                tracing::info!(instance = key, "container renamed to {name}");
            }
            let state = info.state.unwrap_or_default();
            if state.running == Some(true) {
                lock(&self.runs).insert(key.to_owned(), run);
                Ok(Recovered::Running {
                    handle: handle.to_owned(),
                    detail: format!(
                        "container {}; re-attached after daemon restart",
                        &handle[..12.min(handle.len())]
                    ),
                })
            } else {
                Ok(Recovered::Gone {
                    detail: format!(" (container exited with {})", state.exit_code.unwrap_or(-1)),
                })
            }
        })
    }

    fn stop<'a>(&'a self, key: &'a str, grace_ms: u64) -> DriverFuture<'a, ()> {
        Box::pin(async move {
            lock(&self.stopping).insert(key.to_owned());
            let t = i32::try_from(grace_ms.div_ceil(1000)).unwrap_or(i32::MAX);
            match self
                .client()?
                .stop_container(&self.name(key), Some(StopContainerOptionsBuilder::new().t(t).build()))
                .await
            {
                Ok(()) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                // 304: already stopped.
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => Ok(()),
                Err(e) => Err(engine_error(e)),
            }
        })
    }

    fn destroy<'a>(&'a self, key: &'a str) -> DriverFuture<'a, ()> {
        Box::pin(async move {
            lock(&self.stopping).insert(key.to_owned());
            self.remove_instance(key).await?;
            lock(&self.runs).remove(key);
            Ok(())
        })
    }

    fn logs<'a>(&'a self, key: &'a str, max_bytes: u64) -> DriverFuture<'a, Vec<u8>> {
        Box::pin(async move {
            let opts = LogsOptionsBuilder::new().stdout(true).stderr(true).tail(LOG_LINES).build();
            let mut stream = self.client()?.logs(&self.name(key), Some(opts));
            let mut out = Vec::new();
            while let Some(item) = stream.next().await {
                match item {
                    Ok(chunk) => out.extend_from_slice(&chunk.into_bytes()),
                    Err(e) if is_not_found(&e) => break,
                    Err(e) => return Err(engine_error(e)),
                }
            }
            let skip = out.len().saturating_sub(max_bytes as usize);
            Ok(out.split_off(skip))
        })
    }

    /// The engine's one-shot stats of each container this daemon drives:
    /// CPU time, and memory as `docker stats` counts it (usage less the
    /// inactive file cache).
    fn usage(&self) -> DriverFuture<'_, Vec<super::Usage>> {
        let keys: Vec<String> = self.runs.lock().map(|r| r.keys().cloned().collect()).unwrap_or_default();
        Box::pin(async move {
            let client = self.client()?;
            let mut all = Vec::new();
            for key in keys {
                let opts = StatsOptions { stream: false, one_shot: true };
                let Some(Ok(stats)) = client.stats(&self.name(&key), Some(opts)).next().await else {
                    continue;
                };
                let cpu = stats.cpu_stats.and_then(|c| c.cpu_usage).and_then(|u| u.total_usage);
                let Some(cpu_ns) = cpu.filter(|n| *n > 0) else { continue };
                let memory = stats.memory_stats.map_or(0, |m| {
                    let cache = m.stats.as_ref().and_then(|s| {
                        s.get("inactive_file").or_else(|| s.get("total_inactive_file")).copied()
                    });
                    m.usage.unwrap_or(0).saturating_sub(cache.unwrap_or(0))
                });
                all.push(super::Usage { key, cpu_seconds: cpu_ns as f64 / 1e9, memory_bytes: memory });
            }
            Ok(all)
        })
    }
}
