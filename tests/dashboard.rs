//! The web dashboard in a real browser: headless Chromium, driven by
//! Selenium (`tests/dashboard/browse.py`), against three daemons on
//! loopback. It logs in, sees the three sites, uploads an image, creates an instance on
//! another site through the form, sees it run, stops it, and sees a killed
//! site marked unreachable. The last picture is saved as
//! `dashboard.png` in cargo's test tmp dir (docs/dashboard.png is one).
//!
//! Needs `chromium`, `chromium-driver` and a Python with `selenium`
//! (`ATOLL_PYTHON`; `.ci/run` sets them up); elsewhere it says what is
//! missing and passes, except under `CI=true`.

use std::path::Path;
use std::process::Command;

use atoll_e2e::*;

/// A Python that has selenium, and a chromedriver, or what is missing.
fn browser() -> Result<String, String> {
    if !Path::new("/usr/bin/chromedriver").exists() {
        return Err("no /usr/bin/chromedriver (apt-get install chromium chromium-driver)".into());
    }
    let python = std::env::var("ATOLL_PYTHON").unwrap_or_else(|_| "python3".into());
    let has = Command::new(&python).args(["-c", "import selenium"]).output();
    match has {
        Ok(out) if out.status.success() => Ok(python),
        _ => Err(format!("{python} has no selenium (pip install selenium, or set ATOLL_PYTHON)")),
    }
}

#[test]
fn the_dashboard_shows_the_atoll_and_drives_an_instance() {
    let python = match browser() {
        Ok(p) => p,
        Err(why) => return unavailable(&why),
    };
    let root = tempfile::tempdir().unwrap();
    let a = Daemon::start(root.path(), "site-a");
    a.login_admin();
    let b = Daemon::join(root.path(), "site-b", &a.invite("site-b"), &a.password);
    let mut c = Daemon::join(root.path(), "site-c", &a.invite("site-c"), &a.password);
    assert!(
        eventually(std::time::Duration::from_secs(30), || a.reaches(3)),
        "site-a does not reach every site"
    );
    let image = process_image(root.path(), "sleeper", "exec sleep 600\n");
    a.cli().ok(&["image", "add", image.to_str().unwrap(), "--name", "sleeper"]);

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/dashboard/browse.py");
    let victim = c.pid().expect("site-c runs").to_string();
    let upload = process_image(root.path(), "to-upload", "exec sleep 700\n");
    let out = Command::new(&python)
        .arg(&script)
        .args([&a.endpoint, &a.password, "default/sleeper", &b.site, &victim])
        .arg(&shot)
        .arg(&upload)
        .output()
        .expect("run the browser script");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the dashboard failed in the browser:\n{said}");
    println!("{said}screenshot: {}", shot.display());
    c.kill9();
    // The CLI draws the same matrix: site-c's row unknown, and a reaches b only.
    let matrix = a.cli().ok(&["site", "reach"]);
    assert!(matrix.lines().any(|l| l.starts_with("site-c") && l.matches('?').count() == 2), "{matrix}");
    let view = a.cli().json(&["site", "reach"]);
    let of_a = view.as_array().unwrap().iter().find(|v| v["site"] == "site-a").cloned().unwrap_or_default();
    assert_eq!(of_a["reaches"], serde_json::json!(["site-b"]), "{view}");
    // What the browser did happened: the instance is on site-b, stopped.
    let shown = a.cli().json(&["instance", "show", "from-browser", "--site", &b.site]);
    assert_eq!(shown["observed"], "stopped", "{shown}");
    // Sync traffic with each member, in /metrics.
    let scrape = http(&a.addr(), "GET", "/metrics", None, b"").body;
    let to_b = scrape
        .lines()
        .find(|l| l.starts_with("atoll_peer_sync_sent_bytes_total{peer=\"site-b\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert!(to_b.is_some_and(|b| b > 0.0), "no sync bytes to site-b in:\n{scrape}");
    let uploaded = a.cli().json(&["image", "show", "uploaded"]);
    assert_eq!(uploaded["holders"], serde_json::json!(["site-a"]), "{uploaded}");
}
