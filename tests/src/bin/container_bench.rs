//! Time from `atoll instance create` to a running container, against `docker run -d`
//! of the same image on the same engine: medians of repeated runs, and their ratio.
//!
//!     cargo build --release -p atoll -p atoll-e2e && ./target/release/container-bench [RUNS]

use std::process::Command;
use std::time::{Duration, Instant};

use atoll_e2e::{Daemon, busybox_archive, docker_inspect, docker_missing};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let runs: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    if let Some(why) = docker_missing() {
        eprintln!("no docker engine: {why}");
        std::process::exit(2);
    }
    let root = tempfile::tempdir().unwrap();
    let archive = busybox_archive(root.path()).expect("busybox-static is needed for the test image");
    let d = Daemon::start(root.path(), "bench");
    d.login_admin();
    d.cli().ok(&["image", "add", archive.to_str().unwrap(), "--name", "bb", "--format", "docker-archive"]);
    // Warm-up: the first start loads the image into the engine.
    d.cli().ok(&["instance", "create", "warm", "--image", "bb", "--memory", "64", "--", "sleep", "3600"]);
    let image = docker_inspect("atoll.bench.default__warm", "{{.Image}}").expect("warm-up container");
    d.cli().ok(&["instance", "delete", "warm"]);

    let (mut atoll, mut docker) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let name = format!("c{i}");
        let t = Instant::now();
        d.cli().ok(&["instance", "create", &name, "--image", "bb", "--memory", "64", "--", "sleep", "3600"]);
        atoll.push(t.elapsed());
        d.cli().ok(&["instance", "delete", &name]);

        let cname = format!("plain-bench-{}-{i}", std::process::id());
        let t = Instant::now();
        let out = Command::new("docker")
            .args(["run", "-d", "--name", &cname, "--memory", "64m", "--cpus", "1", &image, "sleep", "3600"])
            .output()
            .unwrap();
        docker.push(t.elapsed());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Command::new("docker").args(["rm", "-f", &cname]).output().unwrap();
    }
    let (a, k) = (median(atoll), median(docker));
    println!("container start, {runs} runs each, busybox image already in the engine");
    println!("atoll instance create (CLI, replies once running)  median {:>7.1} ms", ms(a));
    println!("docker run -d (CLI)                                median {:>7.1} ms", ms(k));
    println!("ratio atoll / docker                               {:>7.3}", a.as_secs_f64() / k.as_secs_f64());
}
