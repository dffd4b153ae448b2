//! The process driver's sandbox (docs/drivers.md, "Sandbox"): a workload is
//! a member's code, not the operator's, so it runs
//!
//! - as its own unprivileged uid, claimed host-wide (several sites may share
//!   a host) under [`CLAIMS`], so it cannot read the daemon's files
//!   (`site.key`, `admin-password`) nor another instance's;
//! - through bubblewrap in new mount, pid, ipc, uts and cgroup namespaces,
//!   whose file system holds only the host's `/usr` (and the usual links to
//!   it) and a few files of `/etc` read-only, a private `/proc`, `/dev` and
//!   `/tmp`, and the instance's own root at `/instance`: never the data dir,
//!   the Docker or libvirt sockets, or other instances;
//! - in a cgroup (v1 or v2) limiting memory (the instance's), CPU (a quota of
//!   its cpus) and pids ([`PIDS_MAX`]), joined before bubblewrap starts, so
//!   that nothing it forks escapes the limits.
//!
//! The network stays the host's (workloads serve and call out); that and
//! the rest of what the sandbox does not cover are listed in docs/drivers.md.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::DriverError;

/// Where uids are claimed: one file per uid, naming the instance directory.
pub const CLAIMS: &str = "/run/atoll/uids";
/// Where workloads' roots are, one per uid (`u<uid>`, its own, mode 0700),
/// outside every data dir: bubblewrap, already running as the workload's
/// uid, must reach the root it binds, and a data dir is the daemon's alone.
pub const HOMES: &str = "/var/lib/atoll/workloads";
/// The uids given to workloads: [`UID_BASE`], and [`UID_SPAN`] after it.
pub const UID_BASE: u32 = 200_000;
pub const UID_SPAN: u32 = 65_536;
/// Processes (and threads) one instance may have at once: a fork bomb stops here.
pub const PIDS_MAX: u32 = 512;
/// Tries at removing a cell's cgroup ([`Cell::remove`]): 1+2+...+64 ms, then 64 ms each.
const REMOVE_ATTEMPTS: u32 = 20;
/// Files of `/etc` a workload may read (names, hosts, TLS roots, time zone).
const ETC: [&str; 9] = [
    "passwd",
    "group",
    "hosts",
    "resolv.conf",
    "nsswitch.conf",
    "localtime",
    "ssl",
    "ca-certificates",
    "alternatives",
];

#[derive(Debug, Clone)]
enum Cgroups {
    /// One hierarchy per controller under this root (`memory`, `cpu`, `pids`).
    V1(PathBuf),
    /// The unified hierarchy.
    V2(PathBuf),
}

/// What this host offers to sandbox workloads; see the module doc.
#[derive(Debug, Clone)]
pub struct Sandbox {
    bwrap: PathBuf,
    cgroups: Cgroups,
    claims: PathBuf,
    homes: PathBuf,
}

/// One instance's place in the sandbox: its uid and its cgroup directories.
#[derive(Debug, Clone)]
pub struct Cell {
    pub uid: u32,
    dirs: Vec<PathBuf>,
    v2: bool,
}

impl Sandbox {
    /// What the host can do, or why it cannot sandbox workloads.
    pub fn detect() -> Result<Sandbox, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(
                "the daemon does not run as root, so it cannot give workloads their own uid and cgroup"
                    .into(),
            );
        }
        let bwrap = ["/usr/bin/bwrap", "/bin/bwrap"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or("bubblewrap is not installed (apt-get install bubblewrap)")?;
        let fs = Path::new("/sys/fs/cgroup");
        let cgroups = if fs.join("cgroup.controllers").exists() {
            let have = std::fs::read_to_string(fs.join("cgroup.controllers")).unwrap_or_default();
            let missing: Vec<&str> = ["memory", "cpu", "pids"]
                .into_iter()
                .filter(|c| !have.split_whitespace().any(|h| h == *c))
                .collect();
            if !missing.is_empty() {
                return Err(format!("cgroup v2 lacks the {} controller(s)", missing.join(", ")));
            }
            Cgroups::V2(fs.to_owned())
        } else if ["memory", "cpu", "pids"].iter().all(|c| fs.join(c).join("cgroup.procs").exists()) {
            Cgroups::V1(fs.to_owned())
        } else {
            return Err("no usable cgroups (v2, or v1 with memory, cpu and pids controllers)".into());
        };
        let sandbox = Sandbox { bwrap, cgroups, claims: PathBuf::from(CLAIMS), homes: PathBuf::from(HOMES) };
        sandbox.probe()?;
        Ok(sandbox)
    }

    pub fn describe(&self) -> String {
        let v = match self.cgroups {
            Cgroups::V1(_) => "v1",
            Cgroups::V2(_) => "v2",
        };
        format!("sandboxed: own uid, bubblewrap namespaces, cgroup {v} memory/cpu/pids limits")
    }

    /// Bubblewrap must be able to make its namespaces as an unprivileged uid
    /// (user namespaces enabled): tried once at start.
    fn probe(&self) -> Result<(), String> {
        let uid = UID_BASE + UID_SPAN - 1;
        let mut cmd = std::process::Command::new(&self.bwrap);
        cmd.args(["--unshare-all", "--share-net", "--ro-bind", "/", "/", "true"]);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || drop_to(uid));
        }
        let out = cmd.output().map_err(|e| format!("cannot run bubblewrap: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "bubblewrap cannot make namespaces as an unprivileged user (are user namespaces enabled?): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// The root of the workload running as `uid` (see [`HOMES`]).
    pub fn home(&self, uid: u32) -> PathBuf {
        self.homes.join(format!("u{uid}"))
    }

    /// Creates the cgroup of the instance at `dir`, running as `uid` (from
    /// [`Sandbox::claim`]), with its limits, and gives its root to the uid.
    pub fn cell(&self, dir: &Path, uid: u32, memory_mib: i64, cpus: i64) -> Result<Cell, DriverError> {
        std::fs::write(dir.join("uid"), uid.to_string())?;
        let cell = self.cell_of(uid);
        for d in &cell.dirs {
            std::fs::create_dir_all(d)?;
        }
        // What an earlier run left (its bubblewrap killed while the daemon
        // was down, say) goes first: no process of the uid may swap a
        // directory for a link while the root is walked and given below.
        cell.kill_all();
        give(&self.home(uid), uid)?;
        std::fs::set_permissions(self.home(uid), std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let memory = (memory_mib.max(1) as u64).saturating_mul(1 << 20);
        let quota = cpus.max(1) as u64 * 100_000;
        let set = |d: &Path, file: &str, value: String| {
            std::fs::write(d.join(file), &value)
                .map_err(|e| DriverError::Runtime(format!("cannot set {}: {e}", d.join(file).display())))
        };
        match &self.cgroups {
            Cgroups::V2(_) => {
                let d = &cell.dirs[0];
                set(d, "memory.max", memory.to_string())?;
                // Best effort: not every kernel has it, and the limit above holds anyway.
                let _ = std::fs::write(d.join("memory.swap.max"), "0");
                set(d, "pids.max", PIDS_MAX.to_string())?;
                set(d, "cpu.max", format!("{quota} 100000"))?;
            }
            Cgroups::V1(_) => {
                let (mem, cpu, pids) = (&cell.dirs[0], &cell.dirs[1], &cell.dirs[2]);
                set(mem, "memory.limit_in_bytes", memory.to_string())?;
                let _ = std::fs::write(mem.join("memory.memsw.limit_in_bytes"), memory.to_string());
                set(cpu, "cpu.cfs_period_us", "100000".into())?;
                set(cpu, "cpu.cfs_quota_us", quota.to_string())?;
                set(pids, "pids.max", PIDS_MAX.to_string())?;
            }
        }
        Ok(cell)
    }

    /// The cell of a uid claimed before (a re-attached run).
    pub fn cell_of(&self, uid: u32) -> Cell {
        let name = format!("atoll/u{uid}");
        match &self.cgroups {
            Cgroups::V2(fs) => Cell { uid, dirs: vec![fs.join(name)], v2: true },
            Cgroups::V1(fs) => Cell {
                uid,
                dirs: ["memory", "cpu", "pids"].iter().map(|c| fs.join(c).join(&name)).collect(),
                v2: false,
            },
        }
    }

    /// The uid recorded for the instance at `dir`, if any.
    pub fn recorded(dir: &Path) -> Option<u32> {
        std::fs::read_to_string(dir.join("uid")).ok()?.trim().parse().ok()
    }

    /// Claims a uid for the instance at `dir` (the one it had, when it can)
    /// and makes sure its root's parent exists.
    pub fn claim(&self, dir: &Path) -> Result<u32, DriverError> {
        std::fs::create_dir_all(&self.homes)?;
        std::fs::set_permissions(&self.homes, std::os::unix::fs::PermissionsExt::from_mode(0o711))?;
        if let Cgroups::V2(fs) = &self.cgroups {
            // Controllers must be enabled for the children of our subtree.
            std::fs::create_dir_all(fs.join("atoll"))?;
            let _ = std::fs::write(fs.join("cgroup.subtree_control"), "+memory +cpu +pids");
            std::fs::write(fs.join("atoll").join("cgroup.subtree_control"), "+memory +cpu +pids")?;
        }
        std::fs::create_dir_all(&self.claims)?;
        let me = dir.as_os_str().as_bytes();
        let start = Self::recorded(dir)
            .filter(|u| (UID_BASE..UID_BASE + UID_SPAN).contains(u))
            .unwrap_or_else(|| {
                // Spread first guesses over the span: fewer probes on a busy host.
                let h = me
                    .iter()
                    .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100_0000_01b3));
                UID_BASE + (h % UID_SPAN as u64) as u32
            });
        for i in 0..UID_SPAN {
            let uid = UID_BASE + (start - UID_BASE + i) % UID_SPAN;
            let file = self.claims.join(uid.to_string());
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&file) {
                Ok(mut f) => {
                    std::io::Write::write_all(&mut f, me)?;
                    return Ok(uid);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read(&file).unwrap_or_default();
                    if holder == me {
                        return Ok(uid);
                    }
                    // A claim whose instance is gone (deleted while its daemon was down) is free.
                    if !holder.is_empty() && !Path::new(std::ffi::OsStr::from_bytes(&holder)).exists() {
                        std::fs::write(&file, me)?;
                        return Ok(uid);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(DriverError::Runtime("no free workload uid on this host".into()))
    }

    /// Gives up the instance's uid and cgroup (it is being deleted).
    pub fn release(&self, dir: &Path) {
        let Some(uid) = Self::recorded(dir) else { return };
        self.cell_of(uid).remove();
        let _ = std::fs::remove_dir_all(self.home(uid));
        let file = self.claims.join(uid.to_string());
        if std::fs::read(&file).is_ok_and(|h| h == dir.as_os_str().as_bytes()) {
            let _ = std::fs::remove_file(file);
        }
    }

    /// The command that runs `program` (a path inside the instance, as the
    /// workload sees it) in the cell, with the instance's `root` at `/instance`.
    pub fn command(&self, cell: &Cell, root: &Path, program: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.bwrap);
        // No --die-with-parent: a workload outlives a daemon restart and is
        // re-attached by pid.
        cmd.args(["--unshare-all", "--share-net"]);
        cmd.args(["--hostname", "instance", "--ro-bind", "/usr", "/usr"]);
        for top in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
            let host = Path::new("/").join(top);
            match std::fs::symlink_metadata(&host) {
                Ok(m) if m.file_type().is_symlink() => {
                    if let Ok(target) = std::fs::read_link(&host) {
                        cmd.arg("--symlink").arg(target).arg(&host);
                    }
                }
                Ok(m) if m.is_dir() => {
                    cmd.arg("--ro-bind").arg(&host).arg(&host);
                }
                _ => {}
            }
        }
        for name in ETC {
            let host = Path::new("/etc").join(name);
            if host.exists() {
                cmd.arg("--ro-bind").arg(&host).arg(&host);
            }
        }
        cmd.args(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]);
        cmd.arg("--bind").arg(root).arg("/instance");
        cmd.args(["--chdir", "/instance", "--", program]);
        let procs: Vec<CString> = cell
            .dirs
            .iter()
            .filter_map(|d| CString::new(d.join("cgroup.procs").as_os_str().as_bytes()).ok())
            .collect();
        let uid = cell.uid;
        // SAFETY: only async-signal-safe calls (open, write, close, set*id)
        // between fork and exec; the paths were allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                // Its own session, with no terminal: the workload can neither
                // type into the daemon's terminal nor be reached by its
                // signals; the daemon signals the group (this pid) instead.
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                for p in &procs {
                    let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    if written != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                drop_to(uid)
            });
        }
        cmd
    }
}

/// Becomes `uid` (and the group of the same number), with no other groups.
/// Called between fork and exec: async-signal-safe calls only.
fn drop_to(uid: u32) -> std::io::Result<()> {
    // SAFETY: plain system calls on the calling process.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(uid) != 0 || libc::setuid(uid) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Gives `root` and everything under it to `uid`, following no link (a
/// workload's tree may hold links to anywhere).
fn give(root: &Path, uid: u32) -> std::io::Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        std::os::unix::fs::lchown(&p, Some(uid), Some(uid))?;
        let meta = std::fs::symlink_metadata(&p)?;
        if meta.is_dir() {
            for e in std::fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
    }
    Ok(())
}

impl Cell {
    /// Whether the kernel killed a process of the cell at its memory limit.
    pub fn oom_killed(&self) -> bool {
        let file = if self.v2 { "memory.events" } else { "memory.oom_control" };
        let text = std::fs::read_to_string(self.dirs[0].join(file)).unwrap_or_default();
        text.lines().any(|l| l.strip_prefix("oom_kill ").and_then(|n| n.trim().parse::<u64>().ok()) > Some(0))
    }

    /// Kills every process in the cell.
    fn kill_all(&self) {
        for d in &self.dirs {
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: kill(2) on a pid read from our own cgroup.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }

    /// Kills what is left in the cell and removes its cgroups (retried
    /// briefly: a killed process leaves its cgroup a moment later, usually
    /// within a millisecond, so the waits start at 1 ms and double up to
    /// 64 ms, about 1 s in all).
    pub fn remove(&self) {
        for d in &self.dirs {
            let mut wait = Duration::from_millis(1);
            for attempt in 0..REMOVE_ATTEMPTS {
                if !d.exists() {
                    break;
                }
                self.kill_all();
                if std::fs::remove_dir(d).is_ok() {
                    break;
                }
                if attempt + 1 < REMOVE_ATTEMPTS {
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_millis(64));
                }
            }
        }
    }
}
