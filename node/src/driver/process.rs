//! The embedded default driver: an instance is a supervised child process.
//!
//! An image of format `process` is a tar archive holding `manifest.json`:
//! `{"entrypoint": ["bin/app", "--flag"], "env": {"K": "V"}}`. A relative
//! entrypoint is resolved inside the unpacked image. The child runs in its own
//! process group (signals to the daemon do not reach it) with its output in
//! `output.log`, so it survives a daemon restart and is re-attached by pid.
//!
//! Where the host can, the child runs in the sandbox of [`super::sandbox`]
//! (own uid, namespaces, cgroup limits). Where it cannot, the driver refuses
//! to run anything unless the operator said `unsandboxed`; then memory is
//! limited as `RLIMIT_AS` (address space) and cpus by CPU affinity only.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atoll_crdt::Kind;
use atoll_image::process::Manifest;
use atoll_proto::InstanceSpec;
use tokio::sync::watch;

use super::sandbox::{Cell, Sandbox};
use super::{Driver, DriverError, DriverFuture, Exit, Exits, Fingerprint, Recovered};

/// Output kept per instance: the log is rotated to `output.log.1` past this size.
const LOG_ROTATE_BYTES: u64 = 8 << 20;
/// How often a re-attached process (not our child) is checked, and logs rotated.
const POLL: Duration = Duration::from_secs(1);
/// The run's handle, written at start.
const HANDLE_FILE: &str = "handle";

struct Running {
    pid: i32,
    run: u64,
    /// Set when we ask it to stop, so that its exit is not reported as a crash.
    stopping: Arc<std::sync::atomic::AtomicBool>,
    /// Becomes true once the process is gone.
    gone: watch::Receiver<bool>,
}

pub struct Process {
    root: PathBuf,
    exits: Exits,
    running: Arc<Mutex<HashMap<String, Running>>>,
    /// The host's sandbox, or why there is none.
    sandbox: Result<Sandbox, String>,
    /// Run unconfined when there is no sandbox (the operator's explicit choice).
    unsandboxed: bool,
}

impl Process {
    pub fn new(root: PathBuf, exits: Exits, unsandboxed: bool) -> Self {
        let sandbox = Sandbox::detect();
        Process { root, exits, running: Arc::default(), sandbox, unsandboxed }
    }

    fn dir(&self, key: &str) -> PathBuf {
        super::instance_dir(&self.root, key)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Unpacks the image into `root` unless this digest is already unpacked
    /// there. The marker and the manifest the daemon reads are kept in `dir`,
    /// not in the root: the workload owns its root and could turn them into
    /// links or pipes.
    fn unpack(image: &Path, digest: &str, dir: &Path, root: &Path) -> Result<Manifest, DriverError> {
        let marker = dir.join(".atoll-digest");
        let unpacked = format!("{digest} {}", root.display());
        if std::fs::read_to_string(&marker).ok() != Some(unpacked.clone()) {
            if root.exists() {
                std::fs::remove_dir_all(root)?;
            }
            std::fs::create_dir_all(root)?;
            atoll_image::process::unpack(std::io::BufReader::new(std::fs::File::open(image)?), root)?;
            let manifest = root.join("manifest.json");
            if !std::fs::symlink_metadata(&manifest).is_ok_and(|m| m.is_file()) {
                return Err(DriverError::Image("the archive has no manifest.json file".into()));
            }
            std::fs::copy(&manifest, dir.join("manifest.json"))?;
            std::fs::write(&marker, unpacked)?;
        }
        let text = std::fs::File::open(dir.join("manifest.json"))
            .map_err(|_| DriverError::Image("the archive has no manifest.json".into()))?;
        Ok(atoll_image::process::manifest(text)?)
    }

    /// Starts the run: in the sandbox, or unconfined where the operator allows it.
    fn spawn(
        &self,
        spec: &InstanceSpec,
        dir: &Path,
        manifest: &Manifest,
        root: &Path,
        uid: Option<u32>,
    ) -> Result<(tokio::process::Child, String, Option<Cell>), DriverError> {
        let root = root.to_path_buf();
        let entry = &manifest.entrypoint[0];
        let (mut cmd, cell, home) = match (&self.sandbox, uid) {
            (Ok(sandbox), Some(uid)) => {
                let cell = sandbox.cell(dir, uid, spec.memory_mib, spec.cpus)?;
                let program =
                    if Path::new(entry).is_absolute() { entry.clone() } else { format!("/instance/{entry}") };
                (sandbox.command(&cell, &root, &program), Some(cell), PathBuf::from("/instance"))
            }
            (Err(_), _) if self.unsandboxed => (Self::unconfined(spec, &root, entry), None, root.clone()),
            (Err(why), _) => return Err(DriverError::Runtime(refusal(why))),
            (Ok(_), None) => return Err(DriverError::Runtime("no uid claimed for a sandboxed run".into())),
        };
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("output.log"))?;
        cmd.args(&manifest.entrypoint[1..])
            .args(&spec.args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", &home)
            .env("ATOLL_INSTANCE", &spec.key)
            .envs(&manifest.env)
            .envs(&spec.env)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd.spawn().map_err(|e| DriverError::Runtime(format!("cannot run {entry}: {e}")))?;
        let pid = child.id().unwrap_or(0);
        let detail = match &cell {
            Some(c) => format!(
                "pid {pid}; sandboxed as uid {}, memory {} MiB, {} cpus, {} pids (cgroup)",
                c.uid,
                spec.memory_mib,
                spec.cpus,
                super::sandbox::PIDS_MAX
            ),
            None => {
                let cores = available_cores();
                format!(
                    "pid {pid}; UNSANDBOXED; memory limit {} MiB (address space), {} of {cores} cores",
                    spec.memory_mib,
                    (spec.cpus as usize).min(cores)
                )
            }
        };
        Ok((child, detail, cell))
    }

    /// The unconfined child: the daemon's user, `RLIMIT_AS` and CPU affinity.
    fn unconfined(spec: &InstanceSpec, root: &Path, entry: &str) -> tokio::process::Command {
        let program = if Path::new(entry).is_absolute() { PathBuf::from(entry) } else { root.join(entry) };
        let mut cmd = tokio::process::Command::new(program);
        cmd.current_dir(root).process_group(0);
        let memory = (spec.memory_mib as u64).saturating_mul(1 << 20);
        let cpus = (spec.cpus as usize).min(available_cores());
        // SAFETY: only async-signal-safe calls (setrlimit, sched_setaffinity) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit { rlim_cur: memory, rlim_max: memory };
                if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                for c in 0..cpus {
                    libc::CPU_SET(c, &mut set);
                }
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                Ok(())
            });
        }
        cmd
    }

    /// Watches a run until it ends, rotating its log meanwhile.
    fn supervise(
        &self,
        key: String,
        run: u64,
        pid: i32,
        child: Option<tokio::process::Child>,
        cell: Option<Cell>,
    ) {
        let (tx, rx) = watch::channel(false);
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.table().insert(key.clone(), Running { pid, run, stopping: stopping.clone(), gone: rx });
        let exits = self.exits.clone();
        let running = self.running.clone();
        let log = self.dir(&key).join("output.log");
        let start_time = proc_start_time(pid);
        tokio::spawn(async move {
            let (code, detail) = match child {
                Some(mut child) => loop {
                    rotate(&log);
                    tokio::select! {
                        status = child.wait() => match status {
                            Ok(status) => {
                                use std::os::unix::process::ExitStatusExt;
                                let detail =
                                    status.signal().map(|s| format!(" (killed by signal {s})")).unwrap_or_default();
                                break (status.code(), detail);
                            }
                            Err(e) => break (None, format!(" (lost: {e})")),
                        },
                        _ = tokio::time::sleep(POLL) => {}
                    }
                },
                None => loop {
                    rotate(&log);
                    if proc_start_time(pid) != start_time || start_time.is_none() {
                        break (None, String::new());
                    }
                    tokio::time::sleep(POLL).await;
                },
            };
            let (code, detail) = match cell {
                Some(cell) => {
                    let oom = cell.oom_killed();
                    // The run's cgroup goes with it (what it left behind is killed).
                    let _ = tokio::task::spawn_blocking(move || cell.remove()).await;
                    if oom { (code, " (killed at its memory limit)".to_owned()) } else { (code, detail) }
                }
                None => (code, detail),
            };
            let _ = tx.send(true);
            {
                let mut table = running.lock().unwrap_or_else(|p| p.into_inner());
                if table.get(&key).is_some_and(|r| r.run == run) {
                    table.remove(&key);
                }
            }
            if !stopping.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = exits.send(Exit { key, run, code, detail }).await;
            }
        });
    }
}

/// Why a process instance is refused on a host that cannot sandbox it.
fn refusal(why: &str) -> String {
    format!(
        "this site cannot sandbox process workloads ({why}); the operator may start it with \
         --unsandboxed to run them unconfined (docs/operations.md)"
    )
}

fn available_cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Field 22 of /proc/PID/stat: distinguishes a process from a later one with the same pid.
fn proc_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let state = rest.split(' ').next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    rest.split(' ').nth(19)?.parse().ok()
}

fn rotate(log: &Path) {
    let Ok(meta) = std::fs::metadata(log) else { return };
    if meta.len() <= LOG_ROTATE_BYTES {
        return;
    }
    // The child writes with O_APPEND, so truncating in place is safe: it carries on at the new end.
    if std::fs::copy(log, log.with_extension("log.1")).is_ok() {
        let _ = std::fs::OpenOptions::new().write(true).open(log).and_then(|f| f.set_len(0));
    }
}

fn signal_group(pid: i32, sig: i32) {
    // SAFETY: kill(2) with a negative pid signals the process group we created.
    unsafe {
        libc::kill(-pid, sig);
    }
}

pub(super) fn tail(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(max)))?;
    let mut out = Vec::new();
    f.take(max).read_to_end(&mut out)?;
    Ok(out)
}

impl Driver for Process {
    fn fingerprint(&self) -> Fingerprint {
        Fingerprint {
            kind: Kind::Process,
            available: self.sandbox.is_ok() || self.unsandboxed,
            version: env!("CARGO_PKG_VERSION").into(),
            detail: match &self.sandbox {
                Ok(s) => format!("supervised child processes, {}", s.describe()),
                Err(why) if self.unsandboxed => format!(
                    "supervised child processes, UNSANDBOXED (the operator's choice; {why}): workloads run \
                     as the daemon's user and can read its files; memory via RLIMIT_AS, cpus via affinity"
                ),
                Err(why) => refusal(why),
            },
        }
    }

    fn start<'a>(
        &'a self,
        spec: &'a InstanceSpec,
        run: u64,
        image: PathBuf,
    ) -> DriverFuture<'a, (String, String)> {
        Box::pin(async move {
            let dir = self.dir(&spec.key);
            std::fs::create_dir_all(&dir)?;
            if let Err(why) = &self.sandbox
                && !self.unsandboxed
            {
                return Err(DriverError::Runtime(refusal(why)));
            }
            // Sandboxed, the root lives with the uid (see `sandbox::HOMES`).
            let uid = match &self.sandbox {
                Ok(sandbox) => Some(sandbox.claim(&dir)?),
                Err(_) => None,
            };
            let root = match (&self.sandbox, uid) {
                (Ok(sandbox), Some(uid)) => sandbox.home(uid),
                _ => dir.join("root"),
            };
            let (digest, at, into) = (spec.image_digest.clone(), dir.clone(), root.clone());
            let manifest = tokio::task::spawn_blocking(move || Self::unpack(&image, &digest, &at, &into))
                .await
                .map_err(|e| DriverError::Runtime(e.to_string()))??;
            let (child, detail, cell) = self.spawn(spec, &dir, &manifest, &root, uid)?;
            let pid = child
                .id()
                .map(|p| p as i32)
                .ok_or_else(|| DriverError::Runtime("the child exited at once".into()))?;
            let handle = format!("pid:{pid}:{}", proc_start_time(pid).unwrap_or(0));
            // Kept beside the run so that a daemon stopped before it recorded
            // the handle can still find the process.
            std::fs::write(dir.join(HANDLE_FILE), &handle)?;
            self.supervise(spec.key.clone(), run, pid, Some(child), cell);
            Ok((handle, detail))
        })
    }

    fn recover<'a>(&'a self, key: &'a str, run: u64, handle: &'a str) -> DriverFuture<'a, Recovered> {
        Box::pin(async move {
            let saved;
            let handle = if handle.is_empty() {
                saved = std::fs::read_to_string(self.dir(key).join(HANDLE_FILE)).unwrap_or_default();
                saved.as_str()
            } else {
                handle
            };
            let parsed = handle.strip_prefix("pid:").and_then(|r| r.split_once(':'));
            let Some((pid, start)) =
                parsed.and_then(|(p, s)| Some((p.parse::<i32>().ok()?, s.parse::<u64>().ok()?)))
            else {
                return Ok(Recovered::Gone { detail: format!("unreadable handle {handle:?}") });
            };
            if proc_start_time(pid) == Some(start) {
                let cell = self
                    .sandbox
                    .as_ref()
                    .ok()
                    .and_then(|s| Some(s.cell_of(Sandbox::recorded(&self.dir(key))?)));
                self.supervise(key.to_owned(), run, pid, None, cell);
                Ok(Recovered::Running {
                    handle: handle.to_owned(),
                    detail: format!("pid {pid}; re-attached after daemon restart"),
                })
            } else {
                Ok(Recovered::Gone { detail: " while the daemon was down".into() })
            }
        })
    }

    fn stop<'a>(&'a self, key: &'a str, grace_ms: u64) -> DriverFuture<'a, ()> {
        Box::pin(async move {
            let entry = {
                let table = self.table();
                table.get(key).map(|r| {
                    r.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
                    (r.pid, r.gone.clone())
                })
            };
            let Some((pid, mut gone)) = entry else {
                return Ok(());
            };
            signal_group(pid, libc::SIGTERM);
            let graceful =
                tokio::time::timeout(Duration::from_millis(grace_ms), gone.wait_for(|g| *g)).await.is_ok();
            if !graceful {
                signal_group(pid, libc::SIGKILL);
                let _ = tokio::time::timeout(Duration::from_secs(10), gone.wait_for(|g| *g)).await.is_ok();
            }
            Ok(())
        })
    }

    fn destroy<'a>(&'a self, key: &'a str) -> DriverFuture<'a, ()> {
        Box::pin(async move {
            self.stop(key, 5_000).await?;
            let dir = self.dir(key);
            if let Ok(sandbox) = self.sandbox.clone() {
                let at = dir.clone();
                let _ = tokio::task::spawn_blocking(move || sandbox.release(&at)).await;
            }
            if dir.exists() {
                tokio::fs::remove_dir_all(&dir).await?;
            }
            Ok(())
        })
    }

    fn logs<'a>(&'a self, key: &'a str, max_bytes: u64) -> DriverFuture<'a, Vec<u8>> {
        Box::pin(async move {
            let dir = self.dir(key);
            let mut out = tail(&dir.join("output.log.1"), max_bytes)?;
            let current = tail(&dir.join("output.log"), max_bytes)?;
            out.extend_from_slice(&current);
            let skip = out.len().saturating_sub(max_bytes as usize);
            Ok(out.split_off(skip))
        })
    }

    /// Each run's process tree, from `/proc` (sandboxed or not).
    fn usage(&self) -> DriverFuture<'_, Vec<super::Usage>> {
        let roots: Vec<(String, i32)> = self.table().iter().map(|(k, r)| (k.clone(), r.pid)).collect();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || super::procfs::usage(&roots))
                .await
                .map_err(|e| DriverError::Runtime(format!("measuring usage: {e}")))
        })
    }
}
