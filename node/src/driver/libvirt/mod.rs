//! Virtual machines through libvirt (its C library, loaded at start:
//! [`binding`]).
//!
//! The image blob (qcow2 or raw) is uploaded into a storage volume of the
//! configured pool, and a domain is defined from the instance's cpus, memory and
//! disk, with its serial console written to a file that `logs` reads. Where the
//! pool is missing, or the hypervisor cannot take uploads, the disk is a copy of
//! the blob in the data dir instead, and the start detail says so.
//!
//! Every libvirt call blocks, so each runs on tokio's blocking pool. The
//! connection lives as long as the process.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atoll_crdt::{ImageFormat, Kind};
use atoll_proto::InstanceSpec;

mod binding;

use binding::{Connection as Connect, Domain};

use super::{
    Driver, DriverError, DriverFuture, Exit, Exits, Fingerprint, Recovered, dir_name, legacy_dir_name,
};

/// How often a running domain is checked for having stopped by itself.
const POLL: Duration = Duration::from_secs(1);
/// Upload block size.
const BLOCK: usize = 256 << 10;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The first of `names` defined as a domain (blocking: call in [`blocking`]).
fn find(conn: &Connect, names: &[String]) -> Option<Domain> {
    names.iter().find_map(|n| conn.lookup_domain_by_name(n).ok())
}

fn virt_err(e: binding::Error) -> DriverError {
    DriverError::Runtime(format!("libvirt: {e}"))
}

/// Where the driver's VMs go.
pub struct Place {
    /// The libvirt connection (`qemu:///system`, `test:///default`).
    pub uri: String,
    /// The storage pool that receives disks.
    pub pool: String,
    /// `kvm` or `qemu` on a QEMU hypervisor; None: kvm where /dev/kvm exists.
    pub domain_type: Option<String>,
    pub site: String,
    /// Per-instance files (console logs, disk copies).
    pub root: PathBuf,
}

pub struct Libvirt {
    conn: Option<&'static Connect>,
    domain_type: &'static str,
    fingerprint: Fingerprint,
    site: String,
    pool: String,
    root: PathBuf,
    exits: Exits,
    runs: Arc<Mutex<HashMap<String, u64>>>,
    stopping: Arc<Mutex<HashSet<String>>>,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DriverError> + Send + 'static,
) -> Result<T, DriverError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| DriverError::Runtime(e.to_string()))?
}

impl Libvirt {
    pub fn connect(at: Place, exits: Exits) -> Libvirt {
        let Place { uri, pool, domain_type, site, root } = at;
        let opened = match no_daemon(&uri) {
            // Loading libvirt's library and its dependencies costs ~12 MB of
            // resident memory (docs/benchmarks.md): not for nothing.
            Some(why) => Err(why),
            None => Connect::open(&uri).map_err(|e| match binding::available() {
                Ok(()) => format!("libvirt at {uri} not reachable: {e}"),
                Err(why) => format!("{why}: no VMs on this site"),
            }),
        };
        let (conn, fingerprint) = match opened {
            Ok(c) => {
                let kind = c.driver_type().unwrap_or_default();
                let version = c.hyp_version().map(version_string).unwrap_or_default();
                let lib = c.lib_version().map(version_string).unwrap_or_default();
                let f = Fingerprint {
                    kind: Kind::Vm,
                    available: true,
                    version: format!("{kind} {version}"),
                    detail: format!("libvirt {lib} at {uri}, hypervisor {kind} {version}, pool {pool}"),
                };
                (Some(&*Box::leak(Box::new(c))), f)
            }
            Err(detail) => {
                (None, Fingerprint { kind: Kind::Vm, available: false, version: String::new(), detail })
            }
        };
        let domain_type = if fingerprint.version.to_lowercase().starts_with("test") {
            "test"
        } else {
            match domain_type.as_deref() {
                Some("qemu") => "qemu",
                Some(_) => "kvm",
                None if Path::new("/dev/kvm").exists() => "kvm",
                None => "qemu",
            }
        };
        let mut fingerprint = fingerprint;
        if fingerprint.available {
            fingerprint.detail.push_str(&format!(", domain type {domain_type}"));
        }
        Libvirt {
            conn,
            domain_type,
            fingerprint,
            site,
            pool,
            root,
            exits,
            runs: Arc::default(),
            stopping: Arc::default(),
        }
    }

    fn conn(&self) -> Result<&'static Connect, DriverError> {
        self.conn.ok_or_else(|| DriverError::Runtime(self.fingerprint.detail.clone()))
    }

    fn name(&self, key: &str) -> String {
        format!("atoll.{}.{}", self.site, dir_name(key))
    }

    /// The domain of `key`: under its name, or under the name it was defined
    /// with before names became injective (a running domain cannot be
    /// renamed; it keeps that name until it is deleted).
    fn names(&self, key: &str) -> Vec<String> {
        let legacy = legacy_dir_name(key).map(|o| format!("atoll.{}.{o}", self.site));
        std::iter::once(self.name(key)).chain(legacy).collect()
    }

    /// Watches a running domain until it stops without being asked.
    fn supervise(&self, key: String, run: u64, domain: Domain) {
        let (exits, runs, stopping) = (self.exits.clone(), self.runs.clone(), self.stopping.clone());
        tokio::spawn(async move {
            let domain = Arc::new(domain);
            loop {
                tokio::time::sleep(POLL).await;
                if lock(&runs).get(&key) != Some(&run) {
                    return; // a newer run, or destroyed
                }
                let d = domain.clone();
                let active = tokio::task::spawn_blocking(move || d.is_active().unwrap_or(false))
                    .await
                    .unwrap_or(false);
                if active {
                    continue;
                }
                if !lock(&stopping).remove(&key) {
                    let _ =
                        exits.send(Exit { key, run, code: None, detail: " (domain shut off)".into() }).await;
                }
                return;
            }
        });
    }
}

/// Sockets where a local libvirt daemon for `qemu:///system` listens
/// (monolithic libvirtd, or the modular virtqemud).
const SYSTEM_SOCKETS: &[&str] = &["/run/libvirt/libvirt-sock", "/run/libvirt/virtqemud-sock"];

/// Why `uri` certainly has no daemon to talk to, without loading libvirt.
fn no_daemon(uri: &str) -> Option<String> {
    let system = uri.trim_end_matches('/') == "qemu:///system";
    (system && !SYSTEM_SOCKETS.iter().any(|s| Path::new(s).exists())).then(|| {
        format!("no libvirt daemon runs here ({} is missing): no VMs on this site", SYSTEM_SOCKETS[0])
    })
}

fn version_string(v: u64) -> String {
    format!("{}.{}.{}", v / 1_000_000, (v / 1000) % 1000, v % 1000)
}

fn disk_format(format: ImageFormat) -> Result<&'static str, DriverError> {
    match format {
        ImageFormat::Qcow2 => Ok("qcow2"),
        ImageFormat::Raw => Ok("raw"),
        other => Err(DriverError::Image(format!("a vm needs a qcow2 or raw image, not {other:?}"))),
    }
}

/// A member's qcow2 may name a file of the host as its backing file or its
/// external data file, which qemu would then open and show the guest: such
/// images are refused (read from the header, no tool needed).
fn check_qcow2(image: &Path) -> Result<(), DriverError> {
    let mut header = [0u8; 80];
    let mut f = std::fs::File::open(image)?;
    let n = f.read(&mut header)?;
    let bad = |why: &str| DriverError::Image(format!("refused qcow2 image: {why}"));
    if n < 72 || header[..4] != *b"QFI\xfb" {
        return Err(bad("no qcow2 header"));
    }
    let word = |at: usize| u64::from_be_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    if word(8) != 0 {
        return Err(bad("it has a backing file (flatten it first: qemu-img convert -O qcow2 IN OUT)"));
    }
    let version = u32::from_be_bytes(header[4..8].try_into().expect("4 bytes"));
    // Version 3's incompatible features, bit 2: an external data file.
    if version >= 3 && (n < 80 || word(72) & 0b100 != 0) {
        return Err(bad("it keeps its data in an external file"));
    }
    Ok(())
}

/// Creates (or reuses) the volume and uploads the blob into it.
fn upload_volume(
    conn: &Connect,
    pool: &str,
    name: &str,
    fmt: &str,
    blob: &Path,
    capacity: u64,
) -> Result<String, String> {
    let pool = conn.lookup_storage_pool_by_name(pool).map_err(|e| e.to_string())?;
    if let Ok(old) = pool.lookup_storage_vol_by_name(name) {
        old.delete().map_err(|e| e.to_string())?;
    }
    let xml = format!(
        "<volume><name>{name}</name><capacity unit='bytes'>{capacity}</capacity>\
         <target><format type='{fmt}'/></target></volume>"
    );
    let vol = pool.create_volume_xml(&xml).map_err(|e| e.to_string())?;
    let len = std::fs::metadata(blob).map_err(|e| e.to_string())?.len();
    let result = (|| {
        let stream = conn.new_stream().map_err(|e| e.to_string())?;
        vol.upload(&stream, 0, len).map_err(|e| e.to_string())?;
        let mut file = std::fs::File::open(blob).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; BLOCK];
        loop {
            let n = file.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            let mut sent = 0;
            while sent < n {
                let k = stream.send(&buf[sent..n]).map_err(|e| e.to_string())?;
                if k == 0 {
                    return Err("the stream took no data".to_owned());
                }
                sent += k;
            }
        }
        stream.finish().map_err(|e| e.to_string())
    })();
    if let Err(e) = result {
        let _ = vol.delete();
        return Err(e);
    }
    vol.path().map_err(|e| e.to_string())
}

fn domain_xml(name: &str, dtype: &str, spec: &InstanceSpec, disk: &str, console: &Path) -> String {
    let (fmt, source) = disk.split_once('|').unwrap_or(("raw", disk));
    let console = console.display();
    format!(
        "<domain type='{dtype}'>\
           <name>{name}</name>\
           <memory unit='MiB'>{mem}</memory>\
           <vcpu>{cpus}</vcpu>\
           <os><type arch='x86_64'>hvm</type><boot dev='hd'/></os>\
           <on_poweroff>destroy</on_poweroff><on_crash>destroy</on_crash>\
           <devices>\
             <disk type='file' device='disk'><driver name='qemu' type='{fmt}'/>\
               <source file='{source}'/><backingStore/><target dev='vda' bus='virtio'/></disk>\
             <serial type='file'><source path='{console}'/><target port='0'/></serial>\
             <console type='file'><source path='{console}'/><target type='serial' port='0'/></console>\
           </devices>\
         </domain>",
        mem = spec.memory_mib,
        cpus = spec.cpus,
    )
}

impl Driver for Libvirt {
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
            let conn = self.conn()?;
            let fmt = disk_format(spec.format)?;
            if fmt == "qcow2" {
                let image = image.clone();
                blocking(move || check_qcow2(&image)).await?;
            }
            let name = self.name(&spec.key);
            let dir = super::instance_dir(&self.root, &spec.key);
            std::fs::create_dir_all(&dir)?;
            let console = dir.join("console.log");
            let capacity = std::fs::metadata(&image)?.len().max((spec.disk_mib as u64) << 20);
            let (pool, vol_name) = (self.pool.clone(), format!("{name}.{fmt}"));
            let (dir2, image2) = (dir.clone(), image.clone());
            let (disk, where_) = blocking(move || {
                // Replace what an earlier run of this instance left.
                if let Ok(old) = conn.lookup_domain_by_name(&vol_name[..vol_name.len() - fmt.len() - 1]) {
                    if old.is_active().unwrap_or(false) {
                        let _ = old.destroy();
                    }
                    let _ = old.undefine();
                }
                match upload_volume(conn, &pool, &vol_name, fmt, &image2, capacity) {
                    Ok(path) => Ok((format!("{fmt}|{path}"), format!("volume {vol_name} in pool {pool}"))),
                    Err(why) => {
                        let copy = dir2.join(format!("disk.{fmt}"));
                        std::fs::copy(&image2, &copy)?;
                        Ok((
                            format!("{fmt}|{}", copy.display()),
                            format!("disk file {} (no volume: {why})", copy.display()),
                        ))
                    }
                }
            })
            .await?;
            let xml = domain_xml(&name, self.domain_type, spec, &disk, &console);
            lock(&self.stopping).remove(&spec.key);
            lock(&self.runs).insert(spec.key.clone(), run);
            let domain = blocking(move || {
                let d = conn.define_domain_xml(&xml).map_err(virt_err)?;
                d.create().map_err(virt_err)?;
                Ok(d)
            })
            .await?;
            let uuid = domain.uuid_string().map_err(virt_err)?;
            self.supervise(spec.key.clone(), run, domain);
            let detail = format!("domain {name} ({} MiB, {} vcpus) on {where_}", spec.memory_mib, spec.cpus);
            Ok((uuid, detail))
        })
    }

    fn recover<'a>(&'a self, key: &'a str, run: u64, handle: &'a str) -> DriverFuture<'a, Recovered> {
        Box::pin(async move {
            let conn = self.conn()?;
            let (names, handle2) = (self.names(key), handle.to_owned());
            let found = blocking(move || {
                // No handle recorded (a start cut short): look the domain up by name.
                let found = if handle2.is_empty() {
                    find(conn, &names)
                } else {
                    conn.lookup_domain_by_uuid_string(&handle2).ok()
                };
                Ok(found.filter(|d| d.name().is_ok_and(|n| names.contains(&n))))
            })
            .await?;
            let Some(domain) = found else {
                return Ok(Recovered::Gone { detail: " (domain no longer defined)".into() });
            };
            if !domain.is_active().unwrap_or(false) {
                return Ok(Recovered::Gone { detail: " (domain shut off while the daemon was down)".into() });
            }
            lock(&self.runs).insert(key.to_owned(), run);
            self.supervise(key.to_owned(), run, domain);
            Ok(Recovered::Running {
                handle: handle.to_owned(),
                detail: "domain re-attached after daemon restart".into(),
            })
        })
    }

    fn stop<'a>(&'a self, key: &'a str, grace_ms: u64) -> DriverFuture<'a, ()> {
        Box::pin(async move {
            let conn = self.conn()?;
            lock(&self.stopping).insert(key.to_owned());
            let names = self.names(key);
            let Some(domain) = blocking(move || Ok(find(conn, &names))).await? else {
                return Ok(());
            };
            let domain = Arc::new(domain);
            let d = domain.clone();
            // Ask the guest first (ACPI), then pull the plug after the grace period.
            let _ = blocking(move || d.shutdown().map_err(virt_err)).await;
            let deadline = tokio::time::Instant::now() + Duration::from_millis(grace_ms);
            loop {
                let d = domain.clone();
                if !blocking(move || Ok(d.is_active().unwrap_or(false))).await? {
                    return Ok(());
                }
                if tokio::time::Instant::now() >= deadline {
                    let d = domain.clone();
                    return blocking(move || d.destroy().map_err(virt_err)).await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    }

    fn destroy<'a>(&'a self, key: &'a str) -> DriverFuture<'a, ()> {
        Box::pin(async move {
            let conn = self.conn()?;
            lock(&self.stopping).insert(key.to_owned());
            lock(&self.runs).remove(key);
            let (name, names, pool) = (self.name(key), self.names(key), self.pool.clone());
            blocking(move || {
                if let Some(d) = find(conn, &names) {
                    if d.is_active().unwrap_or(false) {
                        d.destroy().map_err(virt_err)?;
                    }
                    d.undefine().map_err(virt_err)?;
                }
                if let Ok(p) = conn.lookup_storage_pool_by_name(&pool) {
                    for fmt in ["qcow2", "raw"] {
                        if let Ok(v) = p.lookup_storage_vol_by_name(&format!("{name}.{fmt}")) {
                            v.delete().map_err(virt_err)?;
                        }
                    }
                }
                Ok(())
            })
            .await?;
            let dir = super::instance_dir(&self.root, key);
            if dir.exists() {
                tokio::fs::remove_dir_all(dir).await?;
            }
            Ok(())
        })
    }

    fn logs<'a>(&'a self, key: &'a str, max_bytes: u64) -> DriverFuture<'a, Vec<u8>> {
        Box::pin(async move {
            Ok(super::process::tail(&super::instance_dir(&self.root, key).join("console.log"), max_bytes)?)
        })
    }

    /// libvirt's domain info of each active domain this daemon drives: CPU
    /// time and the memory the guest has (its balloon's size, not what
    /// the guest uses inside).
    fn usage(&self) -> DriverFuture<'_, Vec<super::Usage>> {
        let keys: Vec<String> = lock(&self.runs).keys().cloned().collect();
        let named: Vec<(String, Vec<String>)> =
            keys.into_iter().map(|k| (k.clone(), self.names(&k))).collect();
        Box::pin(async move {
            let conn = self.conn()?;
            blocking(move || {
                let mut all = Vec::new();
                for (key, names) in named {
                    let Some(d) = find(conn, &names).filter(|d| d.is_active().unwrap_or(false)) else {
                        continue;
                    };
                    let Ok(info) = d.info() else { continue };
                    let (cpu_seconds, memory_bytes) =
                        (info.cpu_time_ns as f64 / 1e9, info.memory_kib.saturating_mul(1024));
                    all.push(super::Usage { key, cpu_seconds, memory_bytes });
                }
                Ok(all)
            })
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qcow2(dir: &Path, version: u32, backing: u64, incompatible: u64) -> PathBuf {
        let mut h = vec![0u8; 104];
        h[..4].copy_from_slice(b"QFI\xfb");
        h[4..8].copy_from_slice(&version.to_be_bytes());
        h[8..16].copy_from_slice(&backing.to_be_bytes());
        h[72..80].copy_from_slice(&incompatible.to_be_bytes());
        let path = dir.join(format!("v{version}-{backing}-{incompatible}.qcow2"));
        std::fs::write(&path, h).unwrap();
        path
    }

    #[test]
    fn qcow2_images_that_reach_for_host_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_qcow2(&qcow2(dir.path(), 3, 0, 0)).is_ok());
        assert!(check_qcow2(&qcow2(dir.path(), 2, 0, 0)).is_ok());
        let err = check_qcow2(&qcow2(dir.path(), 3, 512, 0)).unwrap_err().to_string();
        assert!(err.contains("backing file"), "{err}");
        let err = check_qcow2(&qcow2(dir.path(), 3, 0, 0b100)).unwrap_err().to_string();
        assert!(err.contains("external"), "{err}");
        let raw = dir.path().join("raw");
        std::fs::write(&raw, [0u8; 512]).unwrap();
        assert!(check_qcow2(&raw).is_err());
    }
}
