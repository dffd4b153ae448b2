//! mDNS discovery (`--mdns`): members on one LAN find each other's addresses
//! without them being in their membership records. Runs in a network
//! namespace of its own (a veth pair, so that multicast works), entered by the
//! test thread only; skipped, with the reason printed, without root or `ip`
//! (a failure under `CI=true`).

use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use atoll_e2e::*;

/// An address no site listens on: members that publish only this one cannot
/// be dialled from their records.
const NOWHERE: &str = "/ip4/192.0.2.1/tcp/9";

struct Netns(String);

impl Netns {
    fn create() -> Result<Netns, String> {
        let name = format!("atoll-mdns-{}", std::process::id());
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
            }
        };
        ip(&["netns", "add", &name])?;
        let ns = Netns(name.clone());
        let exec = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &name, "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        exec(&["link", "set", "lo", "up"])?;
        exec(&["link", "add", "lan0", "type", "veth", "peer", "name", "lan1"])?;
        exec(&["addr", "add", "10.77.0.1/24", "dev", "lan0"])?;
        exec(&["link", "set", "lan0", "up"])?;
        exec(&["link", "set", "lan1", "up"])?;
        exec(&["route", "add", "224.0.0.0/4", "dev", "lan0"])?;
        Ok(ns)
    }

    /// Moves the calling thread (and the processes it starts) into the namespace.
    fn enter(&self) -> Result<(), String> {
        let f = std::fs::File::open(format!("/var/run/netns/{}", self.0)).map_err(|e| e.to_string())?;
        // SAFETY: setns on an open namespace file; affects this thread only.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(format!("setns: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn reaches(d: &Daemon, site: &str) -> bool {
    let rows = d.cli().json(&["site", "list"]);
    rows.as_array().into_iter().flatten().any(|r| r["member"]["site"] == site && r["reachable"] == true)
}

#[test]
fn members_find_each_other_by_mdns_on_a_lan() {
    let ns = match Netns::create().and_then(|ns| ns.enter().map(|()| ns)) {
        Ok(ns) => ns,
        Err(why) => return unavailable(&format!("no network namespace for the LAN: {why}")),
    };
    let root = tempfile::tempdir().unwrap();
    let lan = ["--listen", "/ip4/10.77.0.1/tcp/0"];
    let a = Daemon::start_args(root.path(), "site-a", &[], &lan, None);
    a.login_admin();
    let invite = |name: &str| a.cli().ok(&["site", "invite", "--name", name]).trim().to_owned();
    // B and C publish an address where nobody listens, and look for members by
    // mDNS; D publishes the same but does not answer mDNS.
    let config = root.path().join("nowhere.toml");
    std::fs::write(&config, format!("advertise = [\"{NOWHERE}\"]\n")).unwrap();
    let config = config.to_str().unwrap().to_owned();
    let joiner = |name: &str, mdns: bool| {
        let inv = invite(name);
        let mut args = vec!["--listen", "/ip4/10.77.0.1/tcp/0", "--config", &config, "--join", &inv];
        if mdns {
            args.push("--mdns");
        }
        let d = Daemon::start_args(root.path(), name, &[], &args, Some(&a.password));
        d.login_admin();
        d
    };
    let b = joiner("site-b", true);
    let c = joiner("site-c", true);
    let d = joiner("site-d", false);
    for x in [&b, &c, &d] {
        assert!(
            eventually(Duration::from_secs(30), || reaches(x, "site-a")),
            "{} never reached site-a",
            x.site
        );
    }
    assert!(
        eventually(Duration::from_secs(30), || reaches(&b, "site-c") && reaches(&c, "site-b")),
        "site-b and site-c did not find each other by mDNS"
    );
    // Their records alone lead nowhere: D, silent on mDNS, stays unreached.
    assert!(!reaches(&b, "site-d") && !reaches(&c, "site-d"), "site-d was reached without mDNS");
    drop((a, b, c, d));
    drop(ns);
}
