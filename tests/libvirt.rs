//! VMs through libvirt, against its in-process `test:///default` hypervisor
//! (libvirt's library only: no libvirtd). Every build has the VM driver; a
//! host without libvirt's library has no `vm` kind, and says why.
//!
//! And a real guest under QEMU through libvirtd (`qemu:///system`), made
//! from Debian packages by `tests/images/vm-guest.sh`; see docs/drivers.md.

use std::time::Duration;

use atoll_e2e::*;

fn vm_fingerprint(d: &Daemon) -> bool {
    let kinds = d.cli().json(&["site", "show"])["descriptor"]["kinds"].clone();
    kinds.as_array().unwrap().iter().any(|k| k == "vm")
}

#[test]
fn vm_lifecycle_against_the_test_hypervisor() {
    let root = tempfile::tempdir().unwrap();
    let env = [("ATOLL_LIBVIRT_URI", "test:///default"), ("ATOLL_LIBVIRT_POOL", "default-pool")];
    let mut d = Daemon::start_with(root.path(), "vm-site", &env);
    d.login_admin();
    let disk = root.path().join("disk.img");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/images/vm-disk.sh");
    let made = std::process::Command::new("bash").arg(script).arg(&disk).output().unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let format = String::from_utf8_lossy(&made.stdout).trim().to_owned();
    d.cli().ok(&["image", "add", disk.to_str().unwrap(), "--name", "disk", "--format", &format]);
    if !vm_fingerprint(&d) {
        let err = d.cli().fails(&["instance", "create", "vm1", "--image", "disk"]);
        assert!(err.contains("site vm-site cannot run vm instances"), "{err}");
        let why = d.cli().json(&["site", "show"]).to_string();
        assert!(why.contains("libvirt"), "the site does not say why it has no VMs: {why}");
        return unavailable("libvirt's library (libvirt.so.0, Debian: libvirt0) is not installed");
    }
    let out = d.cli().ok(&[
        "instance",
        "create",
        "vm1",
        "--image",
        "disk",
        "--cpus",
        "2",
        "--memory",
        "128",
        "--disk",
        "64",
        "--restart",
        "always",
    ]);
    assert!(out.contains("running") && out.contains("2 vcpus"), "{out}");
    assert!(out.contains("no volume"), "the test hypervisor takes no uploads, which must be said: {out}");
    let i = d.cli().json(&["instance", "show", "vm1"]);
    assert_eq!((i["kind"].as_str(), i["observed"].as_str()), (Some("vm"), Some("running")));
    // Its usage, from libvirt's domain info: the guest's 128 MiB.
    let scrape = http(&d.addr(), "GET", "/metrics", None, b"").body;
    let memory = instance_metric(&scrape, "atoll_instance_memory_bytes", "default/vm1");
    assert_eq!(memory, Some(128.0 * 1024.0 * 1024.0), "{scrape}");
    assert!(
        instance_metric(&scrape, "atoll_instance_cpu_seconds_total", "default/vm1").is_some(),
        "{scrape}"
    );
    assert_eq!(i["handle"].as_str().map(str::len), Some(36), "the handle is the domain uuid: {i}");

    assert!(d.cli().ok(&["instance", "stop", "vm1"]).contains("stopped"));
    assert!(d.cli().ok(&["instance", "start", "vm1"]).contains("running"));
    d.cli().ok(&["instance", "logs", "vm1"]);

    // The test hypervisor lives inside the daemon, so a restart finds the domain
    // gone, and the `always` policy brings the VM back as a new domain.
    let before = i["handle"].as_str().unwrap().to_owned();
    d.kill9();
    d.boot();
    assert!(
        eventually(Duration::from_secs(20), || {
            let i = d.cli().json(&["instance", "show", "vm1"]);
            i["observed"] == "running" && i["handle"].as_str() != Some(&before)
        }),
        "{}",
        d.cli().ok(&["instance", "show", "vm1"])
    );
    assert!(d.cli().ok(&["instance", "delete", "vm1"]).contains("Deleted"));
    assert!(!d.data.join("vms/default__vm1").exists(), "the VM's files were left behind");
    let err = d.cli().fails(&["instance", "create", "p", "--image", "disk", "-P", "30080:80"]);
    assert!(err.contains("containers only"), "{err}");
}

/// `virsh -c qemu:///system ARGS`: its output, or why it failed.
fn virsh(args: &[&str]) -> Result<String, String> {
    let o = std::process::Command::new("virsh")
        .args(["-c", "qemu:///system"])
        .args(args)
        .output()
        .map_err(|e| format!("virsh: {e}"))?;
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    if o.status.success() { Ok(out) } else { Err(String::from_utf8_lossy(&o.stderr).into_owned()) }
}

/// A directory pool of the test's own, gone with it: QEMU reads disks from
/// there (it could not enter the test's private temporary directory).
struct Pool(String);

impl Pool {
    fn create(name: &str) -> Result<Pool, String> {
        let dir = format!("/var/lib/libvirt/images/{name}");
        let _ = virsh(&["pool-destroy", name]);
        let _ = virsh(&["pool-undefine", name]);
        virsh(&["pool-define-as", name, "dir", "--target", &dir])?;
        let pool = Pool(name.to_owned());
        virsh(&["pool-build", name])?;
        virsh(&["pool-start", name])?;
        Ok(pool)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = virsh(&["pool-destroy", &self.0]);
        let _ = virsh(&["pool-delete", &self.0]);
        let _ = virsh(&["pool-undefine", &self.0]);
    }
}

/// A real guest under QEMU through libvirtd (`.ci/run` installs and starts
/// them): a kernel and a busybox initramfs made by
/// `tests/images/vm-guest.sh` from Debian packages. Emulated (TCG) unless
/// `ATOLL_TEST_KVM=1`: a host's /dev/kvm may not run guests (docs/drivers.md).
#[test]
fn a_real_guest_boots_stops_starts_and_goes() {
    const MARKER: &str = "atoll-guest-up";
    if let Err(why) = virsh(&["version"]) {
        return unavailable(&format!("no libvirtd with QEMU at qemu:///system: {why}"));
    }
    let root = tempfile::tempdir().unwrap();
    let disk = root.path().join("guest.raw");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/images/vm-guest.sh");
    let made = std::process::Command::new("bash").arg(script).arg(&disk).arg(MARKER).output().unwrap();
    if !made.status.success() {
        return unavailable(&format!(
            "no guest image (syslinux, mtools, dosfstools, cpio, busybox-static?): {}",
            String::from_utf8_lossy(&made.stderr)
        ));
    }
    let pool = Pool::create(&format!("atoll-test-{}", std::process::id())).unwrap();
    let kvm = std::env::var("ATOLL_TEST_KVM").as_deref() == Ok("1");
    let env = [
        ("ATOLL_LIBVIRT_URI", "qemu:///system"),
        ("ATOLL_LIBVIRT_POOL", pool.0.as_str()),
        ("ATOLL_LIBVIRT_DOMAIN_TYPE", if kvm { "kvm" } else { "qemu" }),
    ];
    // The image is uploaded on another site than the one that runs the VM:
    // the create goes through the first, and the second fetches the image.
    let a = Daemon::start_with(root.path(), "image-site", &[("ATOLL_LIBVIRT_URI", "test:///default")]);
    a.login_admin();
    a.cli().ok(&["image", "add", disk.to_str().unwrap(), "--name", "guest", "--format", "raw"]);
    let d = Daemon::start_args(
        root.path(),
        "qemu-site",
        &env,
        &["--join", &a.invite("qemu-site")],
        Some(&a.password),
    );
    d.login_admin();
    assert!(vm_fingerprint(&d), "qemu:///system is not usable: {}", d.cli().ok(&["site", "show"]));
    let create = [
        "instance",
        "create",
        "g",
        "--image",
        "guest",
        "--site",
        "qemu-site",
        "--memory",
        "160",
        "--cpus",
        "1",
    ];
    let out = a.cli().ok(&create);
    assert!(out.contains("running"), "{out}");
    let shown = d.cli().json(&["instance", "show", "g"]);
    let detail = shown.to_string();
    assert!(detail.contains(&format!("in pool {}", pool.0)), "the disk did not go to the pool: {shown}");
    let logs = || d.cli().ok(&["instance", "logs", "g"]);
    // The last boot line: "atoll-guest-up: boot ID, N cpus, M kB" (console lines end in \r\n).
    let booted = |logs: &str| logs.lines().rev().find(|l| l.starts_with(MARKER)).map(|l| l.trim().to_owned());
    let started = std::time::Instant::now();
    assert!(eventually(Duration::from_secs(240), || booted(&logs()).is_some()), "no boot line: {}", logs());
    eprintln!("first boot line {:.1} s after the create returned", started.elapsed().as_secs_f64());
    // The limits, as the guest sees them and as libvirt defined them.
    let line = booted(&logs()).unwrap();
    let kib: u64 = line.split_whitespace().rev().nth(1).and_then(|n| n.parse().ok()).unwrap();
    assert!(line.contains(", 1 cpus,") && kib <= 160 * 1024 && kib > 100 * 1024, "{line}");
    let xml = virsh(&["dumpxml", "atoll.qemu-site.default__g"]).unwrap();
    assert!(xml.contains("<memory unit='KiB'>163840</memory>") && xml.contains(">1</vcpu>"), "{xml}");
    // Stop asks the guest (ACPI: its acpid powers it off), start boots it
    // again: a boot line with another boot id.
    assert!(d.cli().ok(&["instance", "stop", "g"]).contains("stopped"));
    assert_eq!(virsh(&["domstate", "atoll.qemu-site.default__g"]).unwrap().trim(), "shut off");
    assert!(d.cli().ok(&["instance", "start", "g"]).contains("running"));
    let boot_id = |line: &str| line.split(',').next().map(str::to_owned);
    assert!(
        eventually(Duration::from_secs(240), || booted(&logs())
            .is_some_and(|l| boot_id(&l) != boot_id(&line))),
        "no boot after start: {}",
        logs()
    );
    assert!(d.cli().ok(&["instance", "delete", "g"]).contains("Deleted"));
    assert!(virsh(&["dominfo", "atoll.qemu-site.default__g"]).is_err(), "the domain was left defined");
    let volumes = virsh(&["vol-list", &pool.0]).unwrap();
    assert!(!volumes.contains("atoll.qemu-site"), "the volume was left: {volumes}");
}
