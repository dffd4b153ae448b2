//! The unmodified OpenStack clients against a fresh `atoll dev` (three sites;
//! docs/openstack.md): tests/openstack/session.py drives the `openstack`
//! command of python-openstackclient, then openstacksdk, through site-1's
//! peer only, with the regions site-1, site-3 and site-2. `ATOLL_PYTHON`
//! names a Python that has both (`.ci/run` installs them); without it the
//! test says what is missing and passes, except under `CI=true`.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
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

/// A first port of three free in a row (TCP and UDP), for `atoll dev`'s APIs or peers.
fn three_free_ports(avoid: u16) -> u16 {
    let free =
        |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok() && UdpSocket::bind(("127.0.0.1", p)).is_ok();
    let seed = u32::from(std::process::id() as u16) ^ u32::from(avoid);
    (0..200u32)
        .map(|i| 20_000 + ((seed.wrapping_mul(7919) + i * 37) % 40_000) as u16)
        .find(|&p| (p..p + 3).all(|q| q.abs_diff(avoid) > 3 && free(q)))
        .expect("three free ports in a row")
}

/// `atoll dev`, stopped (Ctrl-C, as its user would) when dropped.
struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let _ = self.0.wait();
    }
}

#[test]
fn the_openstack_client_and_sdk_drive_every_site_of_atoll_dev_through_one_peer() {
    let python = match clients() {
        Ok(p) => p,
        Err(why) => return unavailable(&why),
    };
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("dev");
    let api = three_free_ports(0);
    let peers = three_free_ports(api);
    let mut child = Command::new(binary())
        .args(["dev", "--data-dir"])
        .arg(&data)
        .args(["--api-port", &api.to_string(), "--peer-port", &peers.to_string()])
        .env("ATOLL_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start atoll dev");
    let stdout = child.stdout.take().expect("piped");
    let dev = Dev(child);
    // It says so once all three sites serve.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut said = String::new();
    while !said.contains("Ctrl-C stops them all") {
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(line) => said += &(line + "\n"),
            Err(e) => panic!("atoll dev did not come up ({e}):\n{said}"),
        }
    }
    let password =
        std::fs::read_to_string(data.join("site-1/admin-password")).expect("site-1's admin password");
    let image = process_image(root.path(), "hello", "echo hello from atoll\nexec sleep 600\n");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/openstack/session.py");
    let auth_url = format!("http://127.0.0.1:{api}/v3");
    let out = Command::new(&python)
        .arg(&script)
        .args([&auth_url, password.trim(), image.to_str().unwrap(), "site-1", "site-3", "site-2"])
        .output()
        .expect("run the OpenStack session");
    let told = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the OpenStack session failed:\n{told}");
    println!("{told}");
    drop(dev);
}
