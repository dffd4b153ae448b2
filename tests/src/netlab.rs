//! A small network of sites for partition tests: one network namespace per
//! site, each with one interface on a bridge that lives in a namespace of its
//! own (so nothing in the host's namespace changes, and Docker's FORWARD
//! policy does not apply). Cuts are silent, as on a real network: iptables in
//! the sites' namespaces drops packets, and nobody is told. Random loss uses
//! iptables' `statistic` match (this kernel has no `tc netem`).

use std::os::fd::AsRawFd;
use std::process::Command;

/// The lab's subnet; addresses exist only inside the lab's namespaces.
const SUBNET: &str = "10.88.0";

pub struct Lab {
    tag: String,
    sites: usize,
    /// Packet loss applied to every site's interface, kept across heals.
    loss: Option<f64>,
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program).args(args).output().map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Lab {
    /// Namespaces and links for `sites` sites, or why they cannot be made here.
    pub fn create(sites: usize) -> Result<Lab, String> {
        let tag = format!("{:05}", std::process::id() % 100_000);
        let lab = Lab { tag, sites, loss: None };
        let hub = lab.hub();
        run("ip", &["netns", "add", &hub])?;
        run("ip", &["-n", &hub, "link", "set", "lo", "up"])?;
        run("ip", &["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        run("ip", &["-n", &hub, "link", "set", "br0", "up"])?;
        for i in 0..sites {
            let ns = lab.ns(i);
            let (inner, outer) = (format!("a{}s{i}", lab.tag), format!("b{}s{i}", lab.tag));
            run("ip", &["netns", "add", &ns])?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
            run(
                "ip",
                &["link", "add", &inner, "netns", &ns, "type", "veth", "peer", "name", &outer, "netns", &hub],
            )?;
            run("ip", &["-n", &ns, "link", "set", &inner, "name", "eth0"])?;
            run("ip", &["-n", &ns, "addr", "add", &format!("{}/24", lab.ip(i)), "dev", "eth0"])?;
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", &hub, "link", "set", &outer, "master", "br0"])?;
            run("ip", &["-n", &hub, "link", "set", &outer, "up"])?;
        }
        Ok(lab)
    }

    fn hub(&self) -> String {
        format!("atoll-{}-hub", self.tag)
    }

    /// The namespace of site `i`.
    pub fn ns(&self, i: usize) -> String {
        format!("atoll-{}-s{i}", self.tag)
    }

    /// The address of site `i` on the lab's network.
    pub fn ip(&self, i: usize) -> String {
        format!("{SUBNET}.{}", i + 1)
    }

    fn iptables(&self, i: usize, args: &[&str]) -> Result<(), String> {
        let ns = self.ns(i);
        let mut all = vec!["netns", "exec", &ns, "iptables", "-w"];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Drops everything between site `a` and site `b`, both ways, silently:
    /// on arrival, so that the sender's kernel accepts every packet (an
    /// OUTPUT rule would fail its `sendmsg` and tell it).
    pub fn cut(&self, a: usize, b: usize) -> Result<(), String> {
        for (x, y) in [(a, b), (b, a)] {
            self.iptables(x, &["-I", "INPUT", "-s", &self.ip(y), "-j", "DROP"])?;
        }
        Ok(())
    }

    /// Drops UDP (so QUIC) between site `a` and site `b`, both ways; TCP passes.
    pub fn block_udp(&self, a: usize, b: usize) -> Result<(), String> {
        for (x, y) in [(a, b), (b, a)] {
            self.iptables(x, &["-I", "INPUT", "-p", "udp", "-s", &self.ip(y), "-j", "DROP"])?;
        }
        Ok(())
    }

    /// Cuts every link between different groups.
    pub fn split(&self, groups: &[&[usize]]) -> Result<(), String> {
        for (g, group) in groups.iter().enumerate() {
            for other in &groups[g + 1..] {
                for &a in *group {
                    for &b in *other {
                        self.cut(a, b)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Site `i` loses every other site.
    pub fn isolate(&self, i: usize) -> Result<(), String> {
        let rest: Vec<usize> = (0..self.sites).filter(|x| *x != i).collect();
        self.split(&[&[i], &rest])
    }

    /// Every cut is repaired (random loss stays).
    pub fn heal(&self) -> Result<(), String> {
        for i in 0..self.sites {
            self.iptables(i, &["-F", "INPUT"])?;
        }
        if let Some(p) = self.loss {
            self.apply_loss(p)?;
        }
        Ok(())
    }

    /// Drops this share of the packets every site receives on the lab network
    /// (None: no random loss).
    pub fn set_loss(&mut self, p: Option<f64>) -> Result<(), String> {
        self.loss = p;
        self.heal()
    }

    fn apply_loss(&self, p: f64) -> Result<(), String> {
        let p = format!("{p}");
        for i in 0..self.sites {
            let rule =
                ["-A", "INPUT", "-i", "eth0", "-m", "statistic", "--mode", "random", "--probability", &p];
            let mut all = rule.to_vec();
            all.extend(["-j", "DROP"]);
            self.iptables(i, &all)?;
        }
        Ok(())
    }

    /// Runs `f` on a thread that entered site `i`'s namespace (for requests
    /// to its API, which listens on that namespace's loopback).
    pub fn within<T: Send>(&self, i: usize, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.ns(i));
        std::thread::scope(|s| {
            s.spawn(move || {
                let file = std::fs::File::open(&path).expect("namespace file");
                // SAFETY: setns on an open namespace file; it moves this thread only.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("thread in the namespace")
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for i in 0..self.sites {
            let _ = run("ip", &["netns", "del", &self.ns(i)]);
        }
        let _ = run("ip", &["netns", "del", &self.hub()]);
    }
}
