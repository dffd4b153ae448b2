//! Workloads and members that try to reach what is not theirs (docs/drivers.md).

use std::time::Duration;

use atoll_e2e::*;

/// `a/b__c` and `a__b/c` were one directory (`a__b__c`) before instance names
/// became injective: a member of `a` could read, wipe or delete `a__b`'s
/// instance through its own. Now each keeps its own files, logs and life.
#[test]
fn instances_whose_names_once_collided_stay_apart() {
    let root = tempfile::tempdir().unwrap();
    let d = Daemon::start(root.path(), "iso-names");
    d.login_admin();
    for p in ["a", "a__b"] {
        d.cli().ok(&["project", "create", p]);
    }
    let speaker = |who: &str| format!("echo I am {who}; exec sleep 600\n");
    let img_a = process_image(root.path(), "talk-a", &speaker("a-of-a"));
    let img_ab = process_image(root.path(), "talk-ab", &speaker("c-of-a__b"));
    d.cli().ok(&["image", "add", img_a.to_str().unwrap(), "--name", "talk", "-p", "a"]);
    d.cli().ok(&["image", "add", img_ab.to_str().unwrap(), "--name", "talk", "-p", "a__b"]);
    let out = d.cli().ok(&["instance", "create", "b__c", "--image", "talk", "-p", "a"]);
    assert!(out.contains("running"), "{out}");
    let out = d.cli().ok(&["instance", "create", "c", "--image", "talk", "-p", "a__b"]);
    assert!(out.contains("running"), "{out}");

    let logs = |p: &str, n: &str| d.cli().ok(&["instance", "logs", n, "-p", p]);
    assert!(eventually(Duration::from_secs(10), || logs("a", "b__c").contains("I am a-of-a")));
    assert!(eventually(Duration::from_secs(10), || logs("a__b", "c").contains("I am c-of-a__b")));
    assert!(!logs("a", "b__c").contains("c-of-a__b"), "a's instance reads a__b's log");

    // Deleting a's instance leaves a__b's running, with its files.
    d.cli().ok(&["instance", "delete", "b__c", "-p", "a"]);
    let shown = d.cli().json(&["instance", "show", "c", "-p", "a__b"]);
    assert_eq!(shown["observed"], "running", "{shown}");
    assert!(logs("a__b", "c").contains("I am c-of-a__b"));
}

/// The uid the site gave an instance of the default project.
fn uid_of(d: &Daemon, name: &str) -> String {
    let file = d.data.join(format!("instances/default__{name}/uid"));
    std::fs::read_to_string(file).expect("the instance's uid").trim().to_owned()
}

/// Whether this host sandboxes process workloads; where it cannot (not root,
/// no bubblewrap, no cgroups) the escape tests cannot run: a failure under
/// `CI=true`, which provides all three.
fn sandboxed(d: &Daemon) -> bool {
    let site = d.cli().json(&["site", "show"]);
    let drivers = site["descriptor"]["drivers"].as_array().cloned().unwrap_or_default();
    let process = drivers.iter().find(|x| x["kind"] == "process").cloned().unwrap_or_default();
    let detail = process["detail"].as_str().unwrap_or_default();
    if detail.contains(", sandboxed:") {
        return true;
    }
    unavailable(&format!("process workloads are not sandboxed here: {detail}"));
    false
}

/// A member's workload tries to reach the site, the engine and its
/// neighbours; every attempt fails and the site keeps serving.
#[test]
fn a_workload_cannot_reach_the_site_or_its_neighbours() {
    let root = tempfile::tempdir().unwrap();
    let d = Daemon::start(root.path(), "iso-escape");
    d.login_admin();
    if !sandboxed(&d) {
        return;
    }
    let data = d.data.display().to_string();
    let daemon_pid = d.pid().expect("daemon pid");
    // A neighbour with a secret in its root.
    let img = process_image(root.path(), "keeper", "echo s3cr3t-of-keeper > secret; exec sleep 600\n");
    d.cli().ok(&["image", "add", img.to_str().unwrap(), "--name", "keeper"]);
    d.cli().ok(&["instance", "create", "keeper", "--image", "keeper"]);
    let uid = uid_of(&d, "keeper");

    let script = format!(
        r#"try() {{ what=$1; shift; if out=$("$@" 2>&1); then echo "ESCAPED $what: $out"; else echo "held $what"; fi; }}
echo "running as $(id -u)"
try site.key cat {data}/site.key
try admin-password cat {data}/admin-password
try data-dir ls {data}
try keeper-root cat /var/lib/atoll/workloads/u{uid}/secret
try docker-socket test -e /var/run/docker.sock -o -e /run/docker.sock
try libvirt-socket test -e /run/libvirt/libvirt-sock
try daemon-proc cat /proc/{daemon_pid}/environ
try host-root ls /root
try write-usr touch /usr/escaped
echo probes done
exec sleep 600
"#
    );
    let img = process_image(root.path(), "prober", &script);
    d.cli().ok(&["image", "add", img.to_str().unwrap(), "--name", "prober"]);
    d.cli().ok(&["instance", "create", "prober", "--image", "prober"]);
    let logs = || d.cli().ok(&["instance", "logs", "prober"]);
    assert!(eventually(Duration::from_secs(10), || logs().contains("probes done")), "{}", logs());
    let out = logs();
    assert!(!out.contains("ESCAPED"), "{out}");
    assert_eq!(out.matches("held ").count(), 9, "{out}");
    assert!(!out.contains("running as 0"), "{out}");
    assert!(!std::path::Path::new("/usr/escaped").exists());
    // The site still serves.
    assert_eq!(d.cli().json(&["instance", "show", "keeper"])["observed"], "running");
    for name in ["prober", "keeper"] {
        d.cli().ok(&["instance", "delete", name]);
    }
}

/// A workload past its memory is killed at its limit and reported so; a
/// fork bomb stops at the pids limit; the site serves throughout.
#[test]
fn memory_and_fork_bombs_stay_inside_the_instance() {
    let root = tempfile::tempdir().unwrap();
    let d = Daemon::start(root.path(), "iso-limits");
    d.login_admin();
    if !sandboxed(&d) {
        return;
    }
    // About 200 MiB in a shell variable, against a limit of 64.
    let hog = process_image(
        root.path(),
        "hog",
        "echo eating; x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived ${#x}\n",
    );
    d.cli().ok(&["image", "add", hog.to_str().unwrap(), "--name", "hog"]);
    d.cli().ok(&["instance", "create", "hog", "--image", "hog", "--memory", "64"]);
    let show = || d.cli().json(&["instance", "show", "hog"]);
    assert!(eventually(Duration::from_secs(30), || show()["observed"] == "exited"), "{}", show());
    let reason = show()["reason"].as_str().unwrap_or_default().to_owned();
    assert!(reason.contains("killed at its memory limit"), "{reason}");
    assert!(!d.cli().ok(&["instance", "logs", "hog"]).contains("survived"));

    let bomb = process_image(root.path(), "bomb", "echo boom; b() { b | b & }; b; sleep 600\n");
    d.cli().ok(&["image", "add", bomb.to_str().unwrap(), "--name", "bomb"]);
    d.cli().ok(&["instance", "create", "bomb", "--image", "bomb"]);
    std::thread::sleep(Duration::from_secs(3));
    let uid = uid_of(&d, "bomb");
    let procs = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let status = std::fs::read_to_string(e.ok()?.path().join("status")).ok()?;
            status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some(uid.as_str()))
        })
        .filter(|owned| *owned)
        .count();
    assert!(procs <= 512, "the bomb has {procs} processes");
    // The site serves meanwhile, and deleting the instance ends every process of it.
    assert!(d.cli().ok(&["site", "show"]).contains("iso-limits"));
    d.cli().ok(&["instance", "delete", "bomb"]);
    d.cli().ok(&["instance", "delete", "hog"]);
}
