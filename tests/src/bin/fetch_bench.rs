//! Image fetch throughput for docs/benchmarks.md.
//!
//! Loopback (the default): three real daemons; an image uploaded on site-1 is
//! copied to site-2 (one holder), then to site-3 (two holders: site-1 and
//! site-2), and compared with a plain TCP copy of the same file over loopback
//! into a file that is then synced.
//!
//! `--lab` (root): the same three sites, each in a network namespace of its
//! own on a bridge (tests/src/netlab.rs), measured side by side with a plain
//! TCP copy and `scp` between two of the namespaces; then every site's uplink
//! limited to `--rate` Mbit/s with `tc tbf` (one holder against two), a holder
//! killed in the middle of a two-holder fetch, and the fetching site killed
//! and restarted in the middle of a fetch (what it fetches again).
//!
//!     cargo build --release -p atoll -p atoll-e2e && ./target/release/fetch-bench [MIB]
//!     cargo build --release -p atoll -p atoll-e2e && sudo ./target/release/fetch-bench [MIB] --lab [--rate MBIT]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use atoll_e2e::netlab::Lab;
use atoll_e2e::{Daemon, HttpReply, eventually, http, loopback_realm, padded_process_image, saved_token};

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn mib_per_s(bytes: u64, t: Duration) -> f64 {
    mib(bytes) / t.as_secs_f64()
}

/// Runs the sending end of a copy (in a namespace, for the lab).
type Sender<'a> = dyn Fn(&(dyn Fn() + Sync)) + Sync + 'a;

/// A plain copy: the file streamed over one TCP connection into a new file,
/// synced to disk, as a baseline for the same bytes. The receiving end runs
/// on this thread's network namespace, the sending end through `send`.
fn plain_copy(file: &Path, dest: &Path, to: &str, send: &Sender) -> Duration {
    let listener = TcpListener::bind(format!("{to}:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let dest = dest.to_owned();
    let started = Instant::now();
    let receiver = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut out = std::fs::File::create(dest).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = conn.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).unwrap();
        }
        out.sync_all().unwrap();
    });
    send(&|| {
        let mut conn = TcpStream::connect(addr).unwrap();
        let mut src = std::fs::File::open(file).unwrap();
        std::io::copy(&mut src, &mut conn).unwrap();
    });
    receiver.join().unwrap();
    started.elapsed()
}

fn upload(site: &Daemon, file: &Path, name: &str) {
    site.cli().ok(&["image", "add", file.to_str().unwrap(), "--name", name]);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let size_mib: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(256);
    let rate = args
        .iter()
        .position(|a| a == "--rate")
        .and_then(|i| args.get(i + 1))
        .and_then(|r| r.parse::<u32>().ok())
        .unwrap_or(100);
    if args.iter().any(|a| a == "--lab") { lab(size_mib, rate) } else { loopback(size_mib) }
}

fn loopback(size_mib: usize) {
    let root = tempfile::tempdir().unwrap();
    let (sites, token) = loopback_realm(root.path(), 3);
    let file = padded_process_image(root.path(), "blob", "sleep 1\n", size_mib << 20);
    let size = std::fs::metadata(&file).unwrap().len();
    upload(&sites[0], &file, "blob");
    let catalogued = || {
        sites
            .iter()
            .all(|d| http(&d.addr(), "GET", "/v1/images/default/blob", Some(&token), b"").status == 200)
    };
    assert!(eventually(Duration::from_secs(30), catalogued), "the catalog did not spread");
    let copy = |d: &Daemon| {
        let started = Instant::now();
        let reply = http(&d.addr(), "POST", "/v1/images/default/blob/copy?wait=600", Some(&token), b"");
        assert_eq!(reply.status, 200, "{}", reply.body);
        started.elapsed()
    };
    let one = copy(&sites[1]);
    let two = copy(&sites[2]);
    let plain = plain_copy(&file, &root.path().join("plain-copy"), "127.0.0.1", &|f| f());
    println!("image: {:.1} MiB in {} chunks of 4 MiB", mib(size), size.div_ceil(4 << 20));
    println!("fetch from 1 holder:  {:>7.2} s  {:>7.1} MiB/s", one.as_secs_f64(), mib_per_s(size, one));
    println!("fetch from 2 holders: {:>7.2} s  {:>7.1} MiB/s", two.as_secs_f64(), mib_per_s(size, two));
    println!("plain TCP copy:       {:>7.2} s  {:>7.1} MiB/s", plain.as_secs_f64(), mib_per_s(size, plain));
}

/// Three sites in namespaces of their own, the API reached inside each.
struct Sites {
    lab: Lab,
    daemons: Vec<Daemon>,
    token: String,
}

impl Sites {
    fn call(&self, i: usize, method: &str, path: &str) -> HttpReply {
        let addr = self.daemons[i].addr();
        self.lab.within(i, || http(&addr, method, path, Some(&self.token), b""))
    }

    /// Waits until image `name` is in the catalogs of `sites`.
    fn catalogued(&self, name: &str, sites: &[usize]) {
        let path = format!("/v1/images/default/{name}");
        let everywhere = || sites.iter().all(|i| self.call(*i, "GET", &path).status == 200);
        assert!(eventually(Duration::from_secs(30), everywhere), "{name} did not reach every catalog");
    }

    /// Copies image `name` to site `i`; the time to the reply.
    fn copy(&self, i: usize, name: &str) -> Duration {
        let started = Instant::now();
        let reply = self.call(i, "POST", &format!("/v1/images/default/{name}/copy?wait=600"));
        assert_eq!(reply.status, 200, "{}", reply.body);
        started.elapsed()
    }

    /// Bytes site `i` received on its lab interface so far.
    fn received(&self, i: usize) -> u64 {
        let out = Command::new("ip")
            .args(["-n", &self.lab.ns(i), "-s", "-j", "link", "show", "eth0"])
            .output()
            .expect("ip");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j");
        v[0]["stats64"]["rx"]["bytes"].as_u64().expect("rx bytes")
    }

    /// Chunks of a fetch under way at site `i` (0 when none is).
    fn chunks_done(&self, i: usize) -> usize {
        let view = self.call(i, "GET", "/v1/network");
        if view.status != 200 {
            return 0;
        }
        let fetches = view.json()["fetches"].as_array().cloned().unwrap_or_default();
        fetches.iter().filter_map(|f| f["chunks_done"].as_u64()).max().unwrap_or(0) as usize
    }

    /// SIGKILL to site `i`'s daemon while others use the sites.
    fn kill(&self, i: usize) {
        let pid = self.daemons[i].pid().expect("running") as i32;
        // SAFETY: kill(2) of a child process this bench started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }

    /// Every site's uplink limited to `mbit` (tbf on the egress of its interface).
    fn limit(&self, mbit: u32) {
        for i in 0..self.daemons.len() {
            let rate = format!("{mbit}mbit");
            let ns = self.lab.ns(i);
            let tc = ["-n", &ns, "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", &rate];
            let ok = Command::new("tc")
                .args(tc)
                .args(["burst", "64kb", "latency", "100ms"])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "tc tbf in {ns}");
        }
    }
}

fn lab(size_mib: usize, rate: u32) {
    let lab = match Lab::create(3) {
        Ok(lab) => lab,
        Err(why) => {
            eprintln!("fetch-bench --lab needs root and iproute2: {why}");
            std::process::exit(2);
        }
    };
    let root = tempfile::tempdir().unwrap();
    let first = Daemon::start_in(root.path(), "site-1", (&lab.ns(0), &lab.ip(0)), &[], None);
    first.login_admin();
    let mut daemons = vec![first];
    for i in 1..3 {
        let name = format!("site-{}", i + 1);
        let inv = daemons[0].invite(&name);
        let password = daemons[0].password.clone();
        let d = Daemon::start_in(
            root.path(),
            &name,
            (&lab.ns(i), &lab.ip(i)),
            &["--join", &inv],
            Some(&password),
        );
        d.login_admin();
        daemons.push(d);
    }
    assert!(
        eventually(Duration::from_secs(60), || daemons.iter().all(|d| d.reaches(3))),
        "sites did not connect"
    );
    let token = saved_token(&daemons[0]);
    let mut s = Sites { lab, daemons, token };

    // Line rate: the fetch against a plain copy and scp between the same two namespaces.
    let file = padded_process_image(root.path(), "blob", "sleep 1\n", size_mib << 20);
    let size = std::fs::metadata(&file).unwrap().len();
    upload(&s.daemons[0], &file, "blob");
    s.catalogued("blob", &[0, 1, 2]);
    let before = s.received(1);
    let one = s.copy(1, "blob");
    let wire = s.received(1) - before;
    let two = s.copy(2, "blob");
    let dest = root.path().join("plain-copy");
    let on0 = |f: &(dyn Fn() + Sync)| s.lab.within(0, f);
    let plain = s.lab.within(1, || plain_copy(&file, &dest, &s.lab.ip(1), &on0));
    let scp = scp(&s.lab, root.path(), &file);
    println!("image: {:.1} MiB in {} chunks of 4 MiB, between namespaces", mib(size), size.div_ceil(4 << 20));
    println!(
        "fetch from 1 holder:  {:>7.2} s  {:>7.1} MiB/s  ({:.1} MiB on the wire)",
        one.as_secs_f64(),
        mib_per_s(size, one),
        mib(wire)
    );
    println!("fetch from 2 holders: {:>7.2} s  {:>7.1} MiB/s", two.as_secs_f64(), mib_per_s(size, two));
    println!("plain TCP copy:       {:>7.2} s  {:>7.1} MiB/s", plain.as_secs_f64(), mib_per_s(size, plain));
    match scp {
        Ok(t) => {
            println!("scp:                  {:>7.2} s  {:>7.1} MiB/s", t.as_secs_f64(), mib_per_s(size, t))
        }
        Err(why) => println!("scp:                  not measured: {why}"),
    }
    println!("fetch / plain copy: {:.0}%", 100.0 * plain.as_secs_f64() / one.as_secs_f64());

    // Rate-limited uplinks: a smaller image, so that a run takes seconds.
    let small_mib = (size_mib / 4).max(16);
    s.limit(rate);
    let limited = padded_process_image(root.path(), "limited", "sleep 1\n", small_mib << 20);
    let small = std::fs::metadata(&limited).unwrap().len();
    upload(&s.daemons[0], &limited, "limited");
    s.catalogued("limited", &[0, 1, 2]);
    let one = s.copy(1, "limited");
    let two = s.copy(2, "limited");
    let dest = root.path().join("plain-limited");
    let plain = s.lab.within(1, || plain_copy(&limited, &dest, &s.lab.ip(1), &on0));
    println!("uplinks limited to {rate} Mbit/s, image {:.1} MiB:", mib(small));
    println!("fetch from 1 holder:  {:>7.2} s  {:>7.1} MiB/s", one.as_secs_f64(), mib_per_s(small, one));
    println!("fetch from 2 holders: {:>7.2} s  {:>7.1} MiB/s", two.as_secs_f64(), mib_per_s(small, two));
    println!("plain TCP copy:       {:>7.2} s  {:>7.1} MiB/s", plain.as_secs_f64(), mib_per_s(small, plain));
    println!("2 holders / 1 holder: {:.2}x faster", one.as_secs_f64() / two.as_secs_f64());

    // A holder dies half-way through a two-holder fetch.
    let dying = padded_process_image(root.path(), "dying", "sleep 1\n", small_mib << 20);
    upload(&s.daemons[0], &dying, "dying");
    s.catalogued("dying", &[0, 1, 2]);
    s.copy(1, "dying");
    let chunks = small.div_ceil(4 << 20) as usize;
    let before = s.received(2);
    let (t, wire) = std::thread::scope(|scope| {
        let fetch = scope.spawn(|| s.copy(2, "dying"));
        assert!(eventually(Duration::from_secs(60), || s.chunks_done(2) >= chunks / 2), "no progress");
        s.kill(1);
        let t = fetch.join().expect("fetch");
        (t, s.received(2) - before)
    });
    println!(
        "holder site-2 killed at half: {:.2} s, {:.1} MiB on the wire for {:.1} MiB ({:.1} MiB more)",
        t.as_secs_f64(),
        mib(wire),
        mib(small),
        mib(wire.saturating_sub(small))
    );

    // The fetching site is killed half-way and restarted: what does it fetch again?
    let resumed = padded_process_image(root.path(), "resumed", "sleep 1\n", small_mib << 20);
    upload(&s.daemons[0], &resumed, "resumed");
    s.catalogued("resumed", &[0, 2]);
    let before = s.received(2);
    std::thread::scope(|scope| {
        let fetch = scope.spawn(|| s.call(2, "POST", "/v1/images/default/resumed/copy?wait=600"));
        assert!(eventually(Duration::from_secs(60), || s.chunks_done(2) >= chunks / 2), "no progress");
        s.kill(2);
        let _ = fetch.join();
    });
    let at_kill = s.received(2) - before;
    s.daemons[2].kill9();
    s.daemons[2].restart_as(None);
    let holder = || {
        s.call(2, "GET", "/v1/sites").json().as_array().is_some_and(|rows| {
            rows.iter().any(|r| r["member"]["site"] == "site-1" && r["reachable"] == true)
        })
    };
    assert!(eventually(Duration::from_secs(60), holder), "the restarted site does not reach the holder");
    let t = s.copy(2, "resumed");
    let wire = s.received(2) - before;
    println!(
        "fetching site killed at half and restarted: {:.1} MiB on the wire before the kill, {:.1} MiB in all for {:.1} MiB ({:.1} MiB more); {:.2} s after the restart",
        mib(at_kill),
        mib(wire),
        mib(small),
        mib(wire.saturating_sub(small)),
        t.as_secs_f64()
    );
}

/// `scp` of the file between the same two namespaces (sshd in site 2's,
/// the client in site 1's), or why it could not run.
fn scp(lab: &Lab, dir: &Path, file: &Path) -> Result<Duration, String> {
    let sshd = Path::new("/usr/sbin/sshd");
    if !sshd.exists() || Command::new("scp").arg("-V").output().is_err() {
        return Err("no sshd or scp here (apt-get install openssh-server openssh-client)".into());
    }
    let key = dir.join("ssh-key");
    let host = dir.join("ssh-host");
    for k in [&key, &host] {
        let ok = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(k).status();
        if !ok.is_ok_and(|s| s.success()) {
            return Err("ssh-keygen failed".into());
        }
    }
    let authorized = dir.join("authorized");
    std::fs::copy(key.with_extension("pub"), &authorized).map_err(|e| e.to_string())?;
    std::fs::create_dir_all("/run/sshd").map_err(|e| e.to_string())?;
    let listen = format!("ListenAddress={}:2222", lab.ip(1));
    let mut server = Command::new("ip")
        .args(["netns", "exec", &lab.ns(1), "/usr/sbin/sshd", "-D", "-f", "/dev/null", "-o", &listen])
        .arg("-o")
        .arg(format!("HostKey={}", host.display()))
        .arg("-o")
        .arg(format!("AuthorizedKeysFile={}", authorized.display()))
        .args(["-o", "StrictModes=no", "-o", "PermitRootLogin=prohibit-password", "-o", "PidFile=none"])
        .args(["-o", "Subsystem sftp internal-sftp"])
        .spawn()
        .map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(500));
    let dest = dir.join("scp-copy");
    let target = format!("root@{}:{}", lab.ip(1), dest.display());
    let started = Instant::now();
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns(0), "scp", "-q", "-P", "2222", "-i"])
        .arg(&key)
        .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"])
        .arg(file)
        .arg(&target)
        .output();
    // Synced, as the other copies are.
    let synced = std::fs::File::open(&dest).and_then(|f| f.sync_all());
    let took = started.elapsed();
    let _ = server.kill();
    let _ = server.wait();
    match out {
        Ok(o) if o.status.success() => synced.map(|()| took).map_err(|e| e.to_string()),
        Ok(o) => Err(format!("scp failed: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => Err(e.to_string()),
    }
}
