//! Helpers for end-to-end tests: real `atoll` daemons on loopback, the real CLI,
//! and a tiny HTTP client for requests the CLI would never send.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub mod netlab;

/// The `atoll` binary of the same build profile: next to a test's `deps/`
/// directory, or next to a bench binary.
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    let here = exe.parent().expect("target dir");
    let candidates = [here.join("atoll"), here.parent().unwrap_or(here).join("atoll")];
    candidates.into_iter().find(|p| p.exists()).unwrap_or_else(|| {
        panic!(
            "no atoll binary near {}: the end-to-end tests are test targets of the atoll package, which builds it",
            exe.display()
        )
    })
}

pub struct Daemon {
    pub data: PathBuf,
    pub site: String,
    pub endpoint: String,
    pub password: String,
    child: Option<Child>,
    /// Holds the CLI's config dir (saved tokens).
    pub home: tempfile::TempDir,
    env: Vec<(String, String)>,
    args: Vec<String>,
    /// The network namespace the daemon (and its CLI) runs in, and the
    /// address its peer network listens on there; None: loopback here.
    pub netns: Option<(String, String)>,
    /// Whether the API listens on every address (so serves HTTPS only);
    /// the CLI still reaches it over loopback.
    public: bool,
    /// The API certificate's fingerprint the daemon printed, if it serves HTTPS.
    pub certificate: Option<String>,
}

impl Daemon {
    /// Starts a daemon on a free loopback port with a fresh data dir under `root`.
    pub fn start(root: &Path, site: &str) -> Daemon {
        Daemon::start_with(root, site, &[])
    }

    /// Same, with extra environment for the daemon (e.g. `DOCKER_HOST`).
    pub fn start_with(root: &Path, site: &str, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_args(root, site, env, &[], None)
    }

    /// A site that joins a realm with `invitation`; `admin_password` is the realm admin's.
    pub fn join(root: &Path, site: &str, invitation: &str, admin_password: &str) -> Daemon {
        Daemon::start_args(root, site, &[], &["--join", invitation], Some(admin_password))
    }

    /// A daemon with extra flags; the admin password is read from its data dir
    /// unless given (a site that joined has none of its own).
    pub fn start_args(
        root: &Path,
        site: &str,
        env: &[(&str, &str)],
        args: &[&str],
        admin_password: Option<&str>,
    ) -> Daemon {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let args = args.iter().map(|a| a.to_string()).collect();
        Daemon::launch(root, site, env, args, None, false, admin_password)
    }

    /// A daemon whose API listens on 0.0.0.0 (HTTPS), founding a realm or
    /// joining one with `(invitation, admin password)`.
    pub fn public(root: &Path, site: &str, join: Option<(&str, &str)>) -> Daemon {
        let args = join.map(|(inv, _)| vec!["--join".to_owned(), inv.to_owned()]).unwrap_or_default();
        Daemon::launch(root, site, Vec::new(), args, None, true, join.map(|(_, p)| p))
    }

    /// A daemon in network namespace `netns` whose peer network listens on
    /// `ip` there (its API is on the namespace's loopback; its CLI runs there too).
    pub fn start_in(
        root: &Path,
        site: &str,
        (netns, ip): (&str, &str),
        args: &[&str],
        admin_password: Option<&str>,
    ) -> Daemon {
        Daemon::start_in_as(root, site, (netns, ip), args, admin_password, None)
    }

    /// Same, running `program` (another build of atoll: the previous
    /// release, a tampered one) for the daemon and its CLI; None: this build.
    pub fn start_in_as(
        root: &Path,
        site: &str,
        (netns, ip): (&str, &str),
        args: &[&str],
        admin_password: Option<&str>,
        program: Option<&Path>,
    ) -> Daemon {
        let args = args.iter().map(|a| a.to_string()).collect();
        let netns = Some((netns.to_owned(), ip.to_owned()));
        let env = program.map(|p| vec![("ATOLL_TEST_BINARY".to_owned(), p.display().to_string())]);
        Daemon::launch(root, site, env.unwrap_or_default(), args, netns, false, admin_password)
    }

    /// Starts `program` (None: this build) on the stopped daemon's data dir
    /// and addresses: an upgrade in place.
    pub fn restart_as(&mut self, program: Option<&Path>) {
        self.env.retain(|(k, _)| k != "ATOLL_TEST_BINARY");
        if let Some(p) = program {
            self.env.push(("ATOLL_TEST_BINARY".to_owned(), p.display().to_string()));
        }
        self.boot();
    }

    fn launch(
        root: &Path,
        site: &str,
        env: Vec<(String, String)>,
        args: Vec<String>,
        netns: Option<(String, String)>,
        public: bool,
        admin_password: Option<&str>,
    ) -> Daemon {
        let mut d = Daemon {
            data: root.join(site),
            site: site.into(),
            endpoint: String::new(),
            password: String::new(),
            child: None,
            home: tempfile::tempdir().unwrap(),
            env,
            args,
            netns,
            public,
            certificate: None,
        };
        d.boot();
        d.password = match admin_password {
            Some(p) => p.to_owned(),
            None => std::fs::read_to_string(d.data.join("admin-password")).expect("admin password file"),
        };
        d
    }

    /// A command for the `atoll` binary, in the daemon's namespace if it has one.
    fn atoll(&self) -> Command {
        match &self.netns {
            // nsenter, not `ip netns exec`: that also mounts a fresh /sys,
            // hiding the cgroups the process sandbox needs.
            Some((ns, _)) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg("--").arg(self.program());
                c
            }
            None => Command::new(self.program()),
        }
    }

    /// The daemon's binary: the one built with the tests, unless its
    /// environment names another (`ATOLL_TEST_BINARY`: a tampered build).
    fn program(&self) -> PathBuf {
        let other = self.env.iter().find(|(k, _)| k == "ATOLL_TEST_BINARY");
        other.map(|(_, v)| PathBuf::from(v)).unwrap_or_else(binary)
    }

    /// (Re)starts the process on the same data dir and waits until it serves.
    pub fn boot(&mut self) {
        // A restart keeps the address, as an operator's would.
        let api = match (self.endpoint.is_empty(), self.public) {
            (true, false) => "127.0.0.1:0".to_owned(),
            (true, true) => "0.0.0.0:0".to_owned(),
            (false, false) => self.addr(),
            (false, true) => self.addr().replace("127.0.0.1:", "0.0.0.0:"),
        };
        // Peers on loopback, on ports the system picks: tests run side by side.
        // In a namespace of its own a site has the default port to itself.
        let (quic, tcp) = match &self.netns {
            Some((_, ip)) => (format!("/ip4/{ip}/udp/7481/quic-v1"), format!("/ip4/{ip}/tcp/7481")),
            None => ("/ip4/127.0.0.1/udp/0/quic-v1".to_owned(), "/ip4/127.0.0.1/tcp/0".to_owned()),
        };
        let mut child = self
            .atoll()
            .args(["daemon", "--site", &self.site, "--api", &api, "--data-dir"])
            .arg(&self.data)
            .args(["--listen", &quic, "--listen", &tcp])
            .args(&self.args)
            // ATOLL_TEST_LOG (e.g. `atoll::net=debug`) to see a daemon's decisions.
            .env("ATOLL_LOG", std::env::var("ATOLL_TEST_LOG").unwrap_or_else(|_| "warn".to_owned()))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn daemon");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut certificate = None;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("API certificate ") {
                    certificate = rest.split(' ').next().map(str::to_owned);
                }
                if let Some(url) = line.split("serving the API on ").nth(1) {
                    let _ = tx.send((url.trim().replace("://0.0.0.0:", "://127.0.0.1:"), certificate.take()));
                }
            }
        });
        let (endpoint, certificate) =
            rx.recv_timeout(Duration::from_secs(60)).expect("daemon did not start serving within 60 s");
        self.endpoint = endpoint;
        self.certificate = certificate;
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        Command::new("kill").args(["-TERM", &c.id().to_string()]).status().unwrap();
        c.wait().unwrap()
    }

    pub fn cli(&self) -> Cli<'_> {
        Cli { daemon: self, env: vec![], stdin: None }
    }

    /// Logs the CLI in as admin (token saved under this daemon's `home`).
    /// An invitation for site `name`, sealed by this site (as the realm admin).
    pub fn invite(&self, name: &str) -> String {
        self.cli().ok(&["site", "invite", "--name", name]).trim().to_owned()
    }

    /// Whether this site lists `n` members, every one reachable.
    pub fn reaches(&self, n: usize) -> bool {
        let rows = self.cli().json(&["site", "list"]);
        let rows = rows.as_array().cloned().unwrap_or_default();
        rows.len() == n && rows.iter().all(|r| r["reachable"] == true)
    }

    pub fn login_admin(&self) {
        self.cli().env("ATOLL_PASSWORD", &self.password.clone()).ok(&["login"]);
    }

    /// Pass this as an instance argument so that `Drop` can find and end the workload.
    pub fn tag(&self) -> String {
        format!("tag={}", self.data.display())
    }

    pub fn addr(&self) -> String {
        self.endpoint.trim_start_matches("http://").trim_start_matches("https://").to_owned()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Workloads outlive the daemon by design: the ones it started (its
        // children, each the leader of its own process group) go with it
        // here, and those it re-attached after a restart by their tag.
        let workloads = self.pid().map(children).unwrap_or_default();
        self.kill9();
        for pid in workloads {
            // SAFETY: kill(2) of a process group this daemon created.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        let _ = Command::new("pkill").args(["-f", &self.tag()]).status();
    }
}

/// The processes whose parent is `parent` (from /proc).
fn children(parent: u32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            // Field 4 of /proc/PID/stat, after the parenthesised name.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let fields = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
            fields.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent)
        })
        .collect()
}

pub struct Cli<'a> {
    daemon: &'a Daemon,
    env: Vec<(String, String)>,
    stdin: Option<String>,
}

impl Cli<'_> {
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Uses another config dir (another user's saved token).
    pub fn home(self, dir: &Path) -> Self {
        let d = dir.display().to_string();
        self.env("XDG_CONFIG_HOME", &d)
    }

    pub fn stdin(mut self, s: &str) -> Self {
        self.stdin = Some(s.into());
        self
    }

    pub fn run(self, args: &[&str]) -> Output {
        let mut cmd = self.daemon.atoll();
        cmd.args(args)
            .env("ATOLL_ENDPOINT", &self.daemon.endpoint)
            .env("XDG_CONFIG_HOME", self.daemon.home.path())
            .env_remove("ATOLL_TOKEN")
            .env_remove("ATOLL_PROJECT")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn cli");
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = &self.stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
        drop(input);
        child.wait_with_output().unwrap()
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "atoll {args:?} failed:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs and asserts failure with a message; returns stderr.
    pub fn fails(self, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "atoll {args:?} should have failed, printed {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(stderr.starts_with("error: "), "no clear message: {stderr}");
        stderr
    }

    pub fn json(self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        serde_json::from_str(&self.ok(&all)).expect("json output")
    }
}

/// A process image: a tar with `manifest.json` and a shell script.
pub fn process_image(dir: &Path, name: &str, script: &str) -> PathBuf {
    padded_process_image(dir, name, script, 0)
}

/// A process image carrying `pad` bytes of incompressible filler, so that its
/// blob spans several chunks.
pub fn padded_process_image(dir: &Path, name: &str, script: &str, pad: usize) -> PathBuf {
    use sha2::Digest;
    let path = dir.join(format!("{name}.tar"));
    let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
    let manifest = br#"{"entrypoint": ["/bin/sh", "run.sh"]}"#;
    let mut filler = Vec::with_capacity(pad + 32);
    let mut block = sha2::Sha256::digest(name.as_bytes());
    while filler.len() < pad {
        filler.extend_from_slice(&block);
        block = sha2::Sha256::digest(block);
    }
    filler.truncate(pad);
    for (file, body, mode) in [
        ("manifest.json", &manifest[..], 0o644),
        ("run.sh", script.as_bytes(), 0o755),
        ("filler", &filler[..], 0o644),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(mode);
        h.set_cksum();
        b.append_data(&mut h, file, body).unwrap();
    }
    b.finish().unwrap();
    path
}

pub struct HttpReply {
    pub status: u16,
    pub body: String,
}

impl HttpReply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body))
    }
}

/// One HTTP/1.1 request on a fresh connection; status 0 when the server is gone.
pub fn http(addr: &str, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> HttpReply {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return HttpReply { status: 0, body: String::new() };
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if s.write_all(head.as_bytes()).is_err() {
        return HttpReply { status: 0, body: String::new() };
    }
    // The server may answer (and close) before reading a refused body.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    // Chunked replies: keep only the JSON between the size lines.
    let body = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) if text.to_lowercase().contains("transfer-encoding: chunked") => {
            body[a..=b].to_owned()
        }
        _ => body,
    };
    HttpReply { status, body }
}

/// A realm of `n` daemons on loopback: `site-1` founds it, the others join
/// with invitations it issues; returns them, all connected to each other,
/// and the admin's token (valid on every site).
pub fn loopback_realm(root: &Path, n: usize) -> (Vec<Daemon>, String) {
    loopback_realm_with(root, n, &[])
}

/// Same, every daemon with extra environment (e.g. `ATOLL_CONFIG`).
pub fn loopback_realm_with(root: &Path, n: usize, env: &[(&str, &str)]) -> (Vec<Daemon>, String) {
    let first = Daemon::start_with(root, "site-1", env);
    first.login_admin();
    let mut sites = vec![first];
    for k in 2..=n {
        let name = format!("site-{k}");
        let inv = sites[0].cli().ok(&["site", "invite", "--name", &name]).trim().to_owned();
        let password = sites[0].password.clone();
        sites.push(Daemon::start_args(root, &name, env, &["--join", &inv], Some(&password)));
    }
    let admin = saved_token(&sites[0]);
    let everyone = || {
        sites.iter().all(|d| {
            let rows = http(&d.addr(), "GET", "/v1/sites", Some(&admin), b"").json();
            rows.as_array().is_some_and(|r| r.len() == n && r.iter().all(|s| s["reachable"] == true))
        })
    };
    // Dozens of daemons starting on a small machine wait for its cores.
    let within = Duration::from_secs(60.max(3 * n as u64));
    assert!(eventually(within, everyone), "the {n} sites did not all connect within {within:?}");
    (sites, admin)
}

/// Polls `f` until it returns true or `within` passes.
pub fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// The admin token the CLI saved for this daemon.
pub fn saved_token(d: &Daemon) -> String {
    saved_token_at(d.home.path(), &d.endpoint)
}

/// The token the CLI saved in config dir `home` for a login at `endpoint`.
pub fn saved_token_at(home: &Path, endpoint: &str) -> String {
    let text = std::fs::read_to_string(home.join("atoll/credentials.json")).expect("credentials");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let realm = v["endpoints"][endpoint].as_str().expect("a login at this endpoint");
    v["realms"][realm]["token"].as_str().unwrap().to_owned()
}

/// Why Docker tests cannot run here, if they cannot.
pub fn docker_missing() -> Option<String> {
    match Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]).output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!("docker engine not reachable: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => Some(format!("no docker client: {e}")),
    }
}

/// The busybox test image, built once per test process by `tests/images/busybox.sh`
/// (tests run in parallel and must not race on the engine's tag). None, with the
/// reason printed, only where busybox-static is missing; any other failure fails.
pub fn busybox_archive(_dir: &Path) -> Option<PathBuf> {
    static ARCHIVE: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    ARCHIVE
        .get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("atoll-test-image-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let out = dir.join("busybox.tar");
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/busybox.sh");
            let tag = format!("atoll-test/busybox:{}", std::process::id());
            let o = Command::new("bash").arg(&script).arg(&out).arg(&tag).output().expect("run busybox.sh");
            match o.status.code() {
                Some(0) => Some(out),
                Some(2) => {
                    unavailable(&String::from_utf8_lossy(&o.stderr));
                    None
                }
                _ => panic!("building the test image failed: {}", String::from_utf8_lossy(&o.stderr)),
            }
        })
        .clone()
}

/// A test that cannot run on this machine (no Docker engine, no root
/// networking, no busybox): it says why and passes, except under `CI=true`,
/// where a missing capability fails it, so that a green CI means the test ran.
pub fn unavailable(why: &str) {
    let why = why.trim();
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("this test cannot run, and CI=true requires it to: {why}");
    }
    eprintln!("SKIPPED: {why}");
}

/// `docker inspect -f FORMAT NAME`, trimmed; None when there is no such object.
pub fn docker_inspect(name: &str, format: &str) -> Option<String> {
    let o = Command::new("docker").args(["inspect", "-f", format, name]).output().ok()?;
    o.status.success().then(|| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

/// CPU seconds and resident bytes of `root` and its descendants, as `/proc`
/// says (read here independently of the daemon).
pub fn proc_tree(root: u32) -> (f64, u64) {
    let mut parent = std::collections::HashMap::new();
    let mut ticks = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let fields: Vec<u64> = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .map(|f| f.parse::<i64>().unwrap_or(0).max(0) as u64)
            .collect();
        parent.insert(pid, fields[1] as u32);
        ticks.insert(pid, fields[11] + fields[12] + fields[13] + fields[14]);
    }
    let in_tree = |mut p: u32| loop {
        if p == root {
            return true;
        }
        match parent.get(&p) {
            Some(&q) if q != 0 && q != p => p = q,
            _ => return false,
        }
    };
    let (mut cpu, mut rss) = (0u64, 0u64);
    for (&pid, &t) in &ticks {
        if in_tree(pid) {
            cpu += t;
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            rss += status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024;
        }
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (cpu as f64 / hz, rss)
}

/// The value of `name` for instance `instance` in a `/metrics` scrape.
pub fn instance_metric(scrape: &str, name: &str, instance: &str) -> Option<f64> {
    let label = format!("atoll_instance=\"{instance}\"");
    scrape
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(&label))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}
