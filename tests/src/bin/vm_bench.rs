//! Time from `atoll instance create` of a VM to the guest's first console
//! line, against `virsh create` of the same domain (the XML Atoll defined,
//! renamed, on its own copy of the disk): medians of repeated runs.
//!
//! Needs libvirtd with QEMU (`qemu:///system`) and what
//! `tests/images/vm-guest.sh` needs; the domain type is `qemu` (emulation)
//! unless `ATOLL_TEST_KVM=1`.
//!
//!     cargo build --release -p atoll -p atoll-e2e && ./target/release/vm-bench [RUNS]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use atoll_e2e::Daemon;

const MARKER: &str = "atoll-guest-up";

fn virsh(args: &[&str]) -> String {
    let o = Command::new("virsh").args(["-c", "qemu:///system"]).args(args).output().expect("virsh");
    assert!(o.status.success(), "virsh {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// Waits for the boot line in `console`; the time since `t`.
fn first_line(console: &Path, t: Instant) -> Duration {
    loop {
        if std::fs::read(console).is_ok_and(|b| String::from_utf8_lossy(&b).contains(MARKER)) {
            return t.elapsed();
        }
        assert!(t.elapsed() < Duration::from_secs(300), "no boot line in {}", console.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let runs: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let root = tempfile::tempdir().unwrap();
    let disk = root.path().join("guest.raw");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/vm-guest.sh");
    let made = Command::new("bash").arg(script).arg(&disk).arg(MARKER).output().unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let pool = format!("atoll-bench-{}", std::process::id());
    virsh(&["pool-define-as", &pool, "dir", "--target", &format!("/var/lib/libvirt/images/{pool}")]);
    virsh(&["pool-build", &pool]);
    virsh(&["pool-start", &pool]);
    let dtype = if std::env::var("ATOLL_TEST_KVM").as_deref() == Ok("1") { "kvm" } else { "qemu" };
    let env = [
        ("ATOLL_LIBVIRT_URI", "qemu:///system"),
        ("ATOLL_LIBVIRT_POOL", &pool),
        ("ATOLL_LIBVIRT_DOMAIN_TYPE", dtype),
    ];
    let d = Daemon::start_with(root.path(), "vm-bench", &env);
    d.login_admin();
    d.cli().ok(&["image", "add", disk.to_str().unwrap(), "--name", "guest", "--format", "raw"]);
    // The plain side's disk: a volume of its own, uploaded before timing.
    let size = std::fs::metadata(&disk).unwrap().len().to_string();
    virsh(&["vol-create-as", &pool, "plain.raw", &size, "--format", "raw"]);
    virsh(&["vol-upload", "plain.raw", disk.to_str().unwrap(), "--pool", &pool]);
    let plain_disk = virsh(&["vol-path", "plain.raw", "--pool", &pool]);

    let (mut atoll, mut plain) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let name = format!("g{i}");
        let console: PathBuf = d.data.join(format!("vms/default__{name}/console.log"));
        let t = Instant::now();
        d.cli().ok(&["instance", "create", &name, "--image", "guest", "--memory", "160", "--cpus", "1"]);
        atoll.push(first_line(&console, t));
        // The same domain, as Atoll defined it, for virsh.
        let domain = format!("atoll.vm-bench.default__{name}");
        let xml = virsh(&["dumpxml", &domain]);
        let volume = virsh(&["vol-path", &format!("{domain}.raw"), "--pool", &pool]);
        let plain_console = root.path().join(format!("plain-{i}.log"));
        let plain_name = format!("plain-bench-{}-{i}", std::process::id());
        let xml: String = xml
            .lines()
            .filter(|l| !l.trim_start().starts_with("<uuid>"))
            .map(|l| {
                l.replace(&format!("<name>{domain}</name>"), &format!("<name>{plain_name}</name>"))
                    .replace(&volume, &plain_disk)
                    .replace(console.to_str().unwrap(), plain_console.to_str().unwrap())
            })
            .collect::<Vec<_>>()
            .join("\n");
        d.cli().ok(&["instance", "delete", &name]);
        let file = root.path().join(format!("plain-{i}.xml"));
        std::fs::write(&file, xml).unwrap();
        let t = Instant::now();
        virsh(&["create", file.to_str().unwrap()]);
        plain.push(first_line(&plain_console, t));
        virsh(&["destroy", &plain_name]);
    }
    virsh(&["vol-delete", "plain.raw", "--pool", &pool]);
    let _ = Command::new("virsh").args(["-c", "qemu:///system", "pool-destroy", &pool]).output();
    let _ = Command::new("virsh").args(["-c", "qemu:///system", "pool-delete", &pool]).output();
    let _ = Command::new("virsh").args(["-c", "qemu:///system", "pool-undefine", &pool]).output();
    let (a, p) = (median(atoll), median(plain));
    println!("VM create to the guest's first console line, {runs} runs each, domain type {dtype}");
    println!("atoll instance create (uploads the disk, defines, starts)  median {:>7.2} s", a.as_secs_f64());
    println!("virsh create of the same domain (disk already uploaded)   median {:>7.2} s", p.as_secs_f64());
    println!(
        "ratio atoll / virsh                                       {:>7.3}",
        a.as_secs_f64() / p.as_secs_f64()
    );
}
