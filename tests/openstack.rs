//! The unmodified OpenStack clients against three sites (docs/openstack.md):
//! tests/openstack/session.py drives the `openstack` command of
//! python-openstackclient, then openstacksdk, through site-a's peer only,
//! with the regions site-a, site-c and site-b. `ATOLL_PYTHON` names a
//! Python that has both (`.ci/run` installs them); without it the test says
//! what is missing and passes, except under `CI=true`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use atoll_e2e::*;

/// A Python with openstacksdk and the `openstack` command beside it.
fn clients() -> Result<String, String> {
    let python = std::env::var("ATOLL_PYTHON").unwrap_or_else(|_| "python3".into());
    let has = Command::new(&python).args(["-c", "import openstack, openstackclient"]).output();
    let cli = Path::new(&python).with_file_name("openstack");
    match has {
        Ok(out) if out.status.success() && cli.exists() => Ok(python),
        _ => Err(format!(
            "{python} has no openstacksdk or openstack command (pip install python-openstackclient, or set ATOLL_PYTHON)"
        )),
    }
}

#[test]
fn the_openstack_client_and_sdk_drive_every_site_through_one_peer() {
    let python = match clients() {
        Ok(p) => p,
        Err(why) => return unavailable(&why),
    };
    let root = tempfile::tempdir().unwrap();
    let a = Daemon::start(root.path(), "site-a");
    a.login_admin();
    let b = Daemon::join(root.path(), "site-b", &a.invite("site-b"), &a.password);
    let c = Daemon::join(root.path(), "site-c", &a.invite("site-c"), &a.password);
    assert!(eventually(Duration::from_secs(30), || a.reaches(3)), "site-a does not reach every site");
    let image = process_image(root.path(), "hello", "echo hello from atoll\nexec sleep 600\n");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/openstack/session.py");
    let auth_url = format!("{}/v3", a.endpoint);
    let out = Command::new(&python)
        .arg(&script)
        .args([&auth_url, &a.password, image.to_str().unwrap(), &a.site, &c.site, &b.site])
        .output()
        .expect("run the OpenStack session");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the OpenStack session failed:\n{said}");
    println!("{said}");
    // What the clients did happened, as Atoll's own CLI sees it: the image
    // uploaded through Glance, then fetched by the sites that booted it, and
    // the servers deleted gone from every site.
    let shown = a.cli().json(&["image", "show", "hello"]);
    assert_eq!(shown["holders"], serde_json::json!(["site-a", "site-b", "site-c"]), "{shown}");
    let listed = a.cli().json(&["instance", "list"]);
    assert_eq!(listed["instances"].as_array().map(Vec::len), Some(0), "{listed}");
}
