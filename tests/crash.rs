//! `kill -9` of the daemon loses no acknowledged write, and workloads come back
//! as their restart policy says.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atoll_e2e::*;

#[test]
fn kill_9_loses_no_acknowledged_write() {
    let root = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(root.path(), "edge-1");
    d.login_admin();
    let tag = d.tag();
    let image = process_image(root.path(), "loop", "while true; do echo alive; sleep 1; done\n");
    d.cli().ok(&["image", "add", image.to_str().unwrap(), "--name", "loop"]);
    d.cli().ok(&["instance", "create", "keeper", "--image", "loop", "--restart", "always", "--", &tag]);
    d.cli().ok(&["instance", "create", "once", "--image", "loop", "--restart", "never", "--", &tag]);
    let pid_of = |d: &Daemon, name: &str| -> i64 {
        let handle = d.cli().json(&["instance", "show", name])["handle"].as_str().unwrap_or("").to_owned();
        handle.split(':').nth(1).and_then(|p| p.parse().ok()).unwrap_or(0)
    };
    let keeper_pid = pid_of(&d, "keeper");
    assert!(keeper_pid > 0);

    // Writes acknowledged while the daemon is killed mid-stream.
    let token = saved_token(&d);
    let addr = d.addr();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop) = (acked.clone(), stop.clone());
        std::thread::spawn(move || {
            for i in 0..10_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let name = format!("p{i}");
                let body = format!(r#"{{"name": "{name}"}}"#);
                let r = http(&addr, "POST", "/v1/projects", Some(&token), body.as_bytes());
                if r.status == 200 {
                    acked.lock().unwrap().push(name);
                } else if r.status != 0 {
                    panic!("unexpected answer {}: {}", r.status, r.body);
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    d.kill9();
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 5, "too few writes before the kill to mean anything: {}", acked.len());

    // The workloads outlive the daemon; end one while the daemon is down.
    std::process::Command::new("kill").args(["-9", &keeper_pid.to_string()]).status().unwrap();
    d.boot();
    let listed: Vec<String> = d
        .cli()
        .json(&["project", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    for name in &acked {
        assert!(
            listed.contains(name),
            "acknowledged project {name} lost after kill -9 ({} acked)",
            acked.len()
        );
    }
    // `always` runs again (restarted, since its process died); `never` was re-attached.
    assert!(
        eventually(Duration::from_secs(20), || d.cli().json(&["instance", "show", "keeper"])["observed"]
            == "running"),
        "keeper did not run again: {}",
        d.cli().ok(&["instance", "show", "keeper"])
    );
    assert_ne!(pid_of(&d, "keeper"), keeper_pid);
    let once = d.cli().json(&["instance", "show", "once"]);
    assert_eq!(once["observed"], "running");
    assert!(once["reason"].as_str().unwrap().contains("re-attached"), "{once}");
    assert_eq!(d.cli().json(&["image", "list"]).as_array().unwrap().len(), 1);

    // A clean stop is a clean exit, and state survives it too.
    assert!(d.terminate().success());
    d.boot();
    assert_eq!(d.cli().json(&["instance", "show", "once"])["observed"], "running");
}
