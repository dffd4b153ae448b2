//! Containers through the real Docker Engine, driven by the real CLI. Skipped,
//! with the reason printed, where no engine is reachable (a failure under
//! `CI=true`).

use std::process::Command;
use std::time::Duration;

use atoll_e2e::*;

fn container(d: &Daemon, name: &str) -> String {
    format!("atoll.{}.default__{name}", d.site)
}

#[test]
fn container_lifecycle_kill_detection_and_reattach() {
    if let Some(why) = docker_missing() {
        return unavailable(&why);
    }
    let root = tempfile::tempdir().unwrap();
    let Some(archive) = busybox_archive(root.path()) else { return };
    let site = format!("dk{}", std::process::id());
    let mut d = Daemon::start(root.path(), &site);
    d.login_admin();
    let out = d.cli().ok(&[
        "image",
        "add",
        archive.to_str().unwrap(),
        "--name",
        "bb",
        "--format",
        "docker-archive",
    ]);
    assert!(out.contains("Added image default/bb"), "{out}");
    let kinds = d.cli().json(&["site", "show"])["descriptor"]["kinds"].clone();
    assert!(kinds.as_array().unwrap().iter().any(|k| k == "container"), "{kinds}");

    let out = d.cli().ok(&[
        "instance",
        "create",
        "web",
        "--image",
        "bb",
        "--memory",
        "64",
        "--cpus",
        "1",
        "--restart",
        "always",
        "--env",
        "GREETING=hi",
        "--",
        "sh",
        "-c",
        "echo $GREETING from the container; exec sleep 3600",
    ]);
    assert!(out.contains("running"), "{out}");
    let name = container(&d, "web");
    assert_eq!(docker_inspect(&name, "{{.State.Running}}").as_deref(), Some("true"));
    assert_eq!(docker_inspect(&name, "{{.HostConfig.Memory}}").as_deref(), Some("67108864"));
    assert_eq!(docker_inspect(&name, "{{.HostConfig.NanoCpus}}").as_deref(), Some("1000000000"));
    assert_eq!(
        docker_inspect(&name, "{{index .Config.Labels \"atoll.instance\"}}").as_deref(),
        Some("default/web")
    );
    assert!(eventually(Duration::from_secs(10), || d
        .cli()
        .ok(&["instance", "logs", "web"])
        .contains("hi from the container")));

    // Stop, start, restart.
    assert!(d.cli().ok(&["instance", "stop", "web"]).contains("stopped"));
    assert_eq!(docker_inspect(&name, "{{.State.Running}}").as_deref(), Some("false"));
    assert!(d.cli().ok(&["instance", "start", "web"]).contains("running"));
    assert_eq!(docker_inspect(&name, "{{.State.Running}}").as_deref(), Some("true"));
    let first = docker_inspect(&name, "{{.State.StartedAt}}").unwrap();
    assert!(d.cli().ok(&["instance", "restart", "web"]).contains("running"));
    assert_ne!(docker_inspect(&name, "{{.State.StartedAt}}").unwrap(), first);

    // Killed from outside: seen, and the restart policy applied by Atoll.
    let before = docker_inspect(&name, "{{.Id}}").unwrap();
    Command::new("docker").args(["kill", &name]).output().unwrap();
    assert!(
        eventually(Duration::from_secs(20), || {
            let i = d.cli().json(&["instance", "show", "web"]);
            i["observed"] == "running" && i["restarts"].as_u64().unwrap_or(0) >= 1
        }),
        "kill not detected or not restarted: {}",
        d.cli().ok(&["instance", "show", "web"])
    );
    assert_ne!(docker_inspect(&name, "{{.Id}}").unwrap(), before);

    // A daemon restart re-attaches without restarting the container.
    let started = docker_inspect(&name, "{{.State.StartedAt}}").unwrap();
    d.kill9();
    d.boot();
    assert!(eventually(Duration::from_secs(10), || {
        d.cli().json(&["instance", "show", "web"])["reason"].as_str().unwrap_or("").contains("re-attached")
    }));
    assert_eq!(docker_inspect(&name, "{{.State.StartedAt}}").unwrap(), started);
    // ...and still sees a later death.
    Command::new("docker").args(["kill", &name]).output().unwrap();
    assert!(eventually(Duration::from_secs(20), || {
        docker_inspect(&name, "{{.State.StartedAt}}").is_some_and(|s| s != started)
            && d.cli().json(&["instance", "show", "web"])["observed"] == "running"
    }));

    assert!(d.cli().ok(&["instance", "delete", "web"]).contains("Deleted"));
    assert!(docker_inspect(&name, "{{.Id}}").is_none(), "container left behind");
}

#[test]
fn published_port_serves_on_loopback() {
    if let Some(why) = docker_missing() {
        return unavailable(&why);
    }
    let root = tempfile::tempdir().unwrap();
    let Some(archive) = busybox_archive(root.path()) else { return };
    // The operator lets containers publish on loopback only, in a range.
    let config = root.path().join("site.toml");
    std::fs::write(&config, "publish_ports = \"30000-32767\"\npublish_address = \"127.0.0.1\"\n").unwrap();
    let site = format!("dp{}", std::process::id());
    let d = Daemon::start_args(root.path(), &site, &[], &["--config", config.to_str().unwrap()], None);
    d.login_admin();
    d.cli().ok(&["image", "add", archive.to_str().unwrap(), "--name", "bb", "--format", "docker-archive"]);
    let port = 30000 + (std::process::id() % 2768) as u16;
    let publish = format!("{port}:8080");
    d.cli().ok(&[
        "instance", "create", "www", "--image", "bb", "-P", &publish, "--", "httpd", "-f", "-p", "8080",
        "-h", "/www",
    ]);
    let addr = format!("127.0.0.1:{port}");
    assert!(
        eventually(Duration::from_secs(10), || http(&addr, "GET", "/index.html", None, b"")
            .body
            .contains("hello from atoll")),
        "the published port does not serve"
    );
    let shown = d.cli().json(&["instance", "show", "www"]);
    assert_eq!(
        shown["ports"][0],
        format!("127.0.0.1:{port}:8080/tcp"),
        "published on the operator's address"
    );
    let err = d.cli().fails(&["instance", "create", "bad", "--image", "bb", "-P", "99999:80"]);
    assert!(err.contains("bad port"), "{err}");
    let err = d.cli().fails(&["instance", "create", "bad", "--image", "bb", "-P", "22:80"]);
    assert!(err.contains("outside this site's published range 30000-32767"), "{err}");
    let err = d.cli().fails(&["instance", "create", "bad", "--image", "bb", "-P", "0.0.0.0:30001:80"]);
    assert!(err.contains("published on 127.0.0.1 only"), "{err}");
    d.cli().ok(&["instance", "delete", "www"]);
}

#[test]
fn a_site_without_docker_refuses_containers_clearly() {
    let root = tempfile::tempdir().unwrap();
    let d =
        Daemon::start_with(root.path(), "no-docker", &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")]);
    d.login_admin();
    let kinds = d.cli().json(&["site", "show"])["descriptor"]["kinds"].clone();
    // Processes, and VMs where a libvirt daemon runs: no containers.
    let kinds: Vec<&str> = kinds.as_array().unwrap().iter().filter_map(|k| k.as_str()).collect();
    assert!(kinds.contains(&"process") && !kinds.contains(&"container"), "{kinds:?}");
    // Any docker-archive will do: the refusal comes before the blob is read.
    let fake = root.path().join("fake.tar");
    std::fs::write(&fake, b"not really an archive").unwrap();
    d.cli().ok(&["image", "add", fake.to_str().unwrap(), "--name", "c", "--format", "docker-archive"]);
    let err = d.cli().fails(&["instance", "create", "x", "--image", "c"]);
    assert!(err.contains("site no-docker cannot run container instances"), "{err}");
    assert!(err.contains("its container driver is unavailable") && err.contains("nonexistent"), "{err}");
    let drivers = d.cli().json(&["site", "show"])["descriptor"]["drivers"].clone();
    let docker = drivers.as_array().unwrap().iter().find(|f| f["kind"] == "container").cloned().unwrap();
    assert_eq!(docker["available"], false, "{docker}");
}

/// A busy container's CPU time in `/metrics` (the engine's stats) agrees with
/// `/proc` within 10%; its memory is reported.
#[test]
fn a_busy_container_uses_what_proc_says() {
    if let Some(why) = docker_missing() {
        return unavailable(&why);
    }
    let root = tempfile::tempdir().unwrap();
    let Some(archive) = busybox_archive(root.path()) else { return };
    let site = format!("du{}", std::process::id());
    let d = Daemon::start(root.path(), &site);
    d.login_admin();
    let image = ["image", "add", archive.to_str().unwrap(), "--name", "bb", "--format", "docker-archive"];
    d.cli().ok(&image);
    let spin = [
        "instance",
        "create",
        "spin",
        "--image",
        "bb",
        "--cpus",
        "1",
        "--",
        "sh",
        "-c",
        "while :; do :; done",
    ];
    assert!(d.cli().ok(&spin).contains("running"));
    let pid: u32 = docker_inspect(&container(&d, "spin"), "{{.State.Pid}}")
        .and_then(|p| p.parse().ok())
        .expect("the container's pid");
    let measure = || {
        let before = proc_tree(pid).0;
        let scrape = http(&d.addr(), "GET", "/metrics", None, b"").body;
        let after = proc_tree(pid).0;
        let cpu = instance_metric(&scrape, "atoll_instance_cpu_seconds_total", "default/spin");
        let memory = instance_metric(&scrape, "atoll_instance_memory_bytes", "default/spin");
        (cpu.expect("a CPU series for the container"), (before + after) / 2.0, memory.unwrap_or(0.0))
    };
    std::thread::sleep(Duration::from_secs(1));
    let (cpu0, proc0, _) = measure();
    std::thread::sleep(Duration::from_secs(4));
    let (cpu1, proc1, memory) = measure();
    let (ours, theirs) = (cpu1 - cpu0, proc1 - proc0);
    println!("busy container: CPU {ours:.2} s (/proc {theirs:.2} s) over 4 s; memory {memory} B");
    assert!(theirs > 1.0, "the container did not spin: {theirs} s");
    assert!((ours - theirs).abs() <= 0.1 * theirs, "CPU {ours} s against /proc's {theirs} s");
    assert!(memory > 0.0, "no memory figure");
    d.cli().ok(&["instance", "delete", "spin"]);
}
