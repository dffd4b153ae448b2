//! Daemon configuration: a TOML file, overridden by command-line flags, over
//! embedded defaults that run a site with nothing to set up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const DEFAULT_API: &str = "127.0.0.1:7480";
pub const DEFAULT_LISTEN: [&str; 2] = ["/ip4/0.0.0.0/udp/7481/quic-v1", "/ip4/0.0.0.0/tcp/7481"];

fn multiaddrs(list: &[String]) -> anyhow::Result<Vec<libp2p::Multiaddr>> {
    list.iter()
        .map(|a| {
            a.parse().map_err(|e| {
                anyhow::anyhow!("bad peer address {a:?}: {e} (e.g. /ip4/10.0.0.5/udp/7481/quic-v1)")
            })
        })
        .collect()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub site: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub api: Option<SocketAddr>,
    pub region: Option<String>,
    pub operator: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub max_upload_mib: Option<u64>,
    pub token_ttl_hours: Option<u64>,
    pub max_instances: Option<i64>,
    /// CPUs the site advertises to placement (default: the host's; more
    /// overcommits them).
    pub cpus: Option<i64>,
    /// Host ports containers may publish, `FIRST-LAST` (default 30000-32767).
    pub publish_ports: Option<String>,
    /// The host address they are published on (default 0.0.0.0).
    pub publish_address: Option<String>,
    pub libvirt_uri: Option<String>,
    pub libvirt_pool: Option<String>,
    /// `kvm` or `qemu` (TCG); default kvm where /dev/kvm exists.
    pub libvirt_domain_type: Option<String>,
    /// Peer network listen addresses (multiaddrs).
    pub listen: Option<Vec<String>>,
    /// Addresses other members should dial, when not the listen addresses (NAT).
    #[serde(default)]
    pub advertise: Vec<String>,
    /// Peers to call at start (multiaddrs, optionally ending in /p2p/PEER-ID).
    #[serde(default)]
    pub bootstrap: Vec<String>,
    /// Find other members on the local network by mDNS (off by default).
    #[serde(default)]
    pub mdns: bool,
    /// Run process workloads unconfined where the host cannot sandbox them
    /// (docs/operations.md): they can then read the site's key.
    #[serde(default)]
    pub unsandboxed: bool,
    /// Serve the API over plain HTTP even beyond loopback (docs/operations.md, "HTTPS").
    #[serde(default)]
    pub insecure: bool,
}

/// Flags that override the file.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Flags {
    /// TOML configuration file.
    #[arg(long, env = "ATOLL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the site keeps its state (default: $XDG_DATA_HOME/atoll or ~/.local/share/atoll).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// API listen address.
    #[arg(long)]
    pub api: Option<SocketAddr>,
    /// This site's name in the realm.
    #[arg(long)]
    pub site: Option<String>,
    /// libvirt connection for VM instances (e.g. qemu:///system, test:///default).
    #[arg(long, env = "ATOLL_LIBVIRT_URI")]
    pub libvirt_uri: Option<String>,
    /// libvirt storage pool that receives VM disks.
    #[arg(long, env = "ATOLL_LIBVIRT_POOL")]
    pub libvirt_pool: Option<String>,
    /// Domain type of VMs on a QEMU hypervisor: kvm, or qemu (emulation, for
    /// hosts whose /dev/kvm cannot run guests). Default: kvm where /dev/kvm exists.
    #[arg(long, env = "ATOLL_LIBVIRT_DOMAIN_TYPE", value_parser = ["kvm", "qemu"])]
    pub libvirt_domain_type: Option<String>,
    /// Peer network listen address (multiaddr; repeatable). Default: QUIC and TCP on port 7481.
    #[arg(long)]
    pub listen: Vec<String>,
    /// Peer to call at start (multiaddr; repeatable).
    #[arg(long)]
    pub bootstrap: Vec<String>,
    /// Join an existing realm with an invitation from `atoll site invite`
    /// (ignored once this site is a member).
    #[arg(long, env = "ATOLL_JOIN", hide_env_values = true)]
    pub join: Option<String>,
    /// Find other members on the local network by mDNS.
    #[arg(long)]
    pub mdns: bool,
    /// Run process workloads unconfined where the host cannot sandbox them
    /// (not root, no bubblewrap, no cgroups): they can then read this site's
    /// key and every file of the daemon's user. Without it such a host runs no
    /// process instances.
    #[arg(long, env = "ATOLL_UNSANDBOXED")]
    pub unsandboxed: bool,
    /// Serve the API over plain HTTP on a non-loopback address (default:
    /// HTTPS with a self-signed certificate that clients pin).
    #[arg(long, env = "ATOLL_INSECURE")]
    pub insecure: bool,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub site: String,
    pub data_dir: PathBuf,
    pub api: SocketAddr,
    pub region: String,
    pub operator: String,
    pub labels: BTreeMap<String, String>,
    pub max_upload: u64,
    pub token_ttl_ms: u64,
    pub max_instances: i64,
    /// None: the host's.
    pub cpus: Option<i64>,
    pub ports: atoll_proto::lifecycle::PortPolicy,
    pub libvirt_uri: String,
    pub libvirt_pool: String,
    /// None: kvm where /dev/kvm exists, else qemu.
    pub libvirt_domain_type: Option<String>,
    pub net: crate::net::Settings,
    pub join: Option<String>,
    pub unsandboxed: bool,
    pub insecure: bool,
}

impl Settings {
    pub fn resolve(flags: &Flags) -> anyhow::Result<Settings> {
        let file: File = match &flags.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?
            }
            None => File::default(),
        };
        let site = flags.site.clone().or(file.site).unwrap_or_else(default_site);
        if !atoll_crdt::is_name(&site) {
            anyhow::bail!(
                "site name {site:?} is invalid: use 1-63 lowercase letters, digits, '-', '_' or '.'"
            );
        }
        let listen = if flags.listen.is_empty() {
            file.listen.unwrap_or_else(|| DEFAULT_LISTEN.iter().map(|s| s.to_string()).collect())
        } else {
            flags.listen.clone()
        };
        let bootstrap = if flags.bootstrap.is_empty() { file.bootstrap } else { flags.bootstrap.clone() };
        let net = crate::net::Settings {
            listen: multiaddrs(&listen)?,
            advertise: multiaddrs(&file.advertise)?,
            bootstrap: multiaddrs(&bootstrap)?,
            mdns: flags.mdns || file.mdns,
        };
        let libvirt_domain_type = flags.libvirt_domain_type.clone().or(file.libvirt_domain_type);
        if let Some(t) = libvirt_domain_type.as_deref().filter(|t| !["kvm", "qemu"].contains(t)) {
            anyhow::bail!("config: libvirt_domain_type {t:?} is neither \"kvm\" nor \"qemu\"");
        }
        let default_ports = atoll_proto::lifecycle::PortPolicy::default();
        let ports = atoll_proto::lifecycle::PortPolicy::parse(
            file.publish_ports
                .as_deref()
                .unwrap_or(&format!("{}-{}", default_ports.first, default_ports.last)),
            file.publish_address.as_deref().unwrap_or(&default_ports.address.to_string()),
        )
        .map_err(|e| anyhow::anyhow!("config: {e}"))?;
        Ok(Settings {
            ports,
            net,
            join: flags.join.clone(),
            unsandboxed: flags.unsandboxed || file.unsandboxed,
            insecure: flags.insecure || file.insecure,
            site,
            data_dir: flags.data_dir.clone().or(file.data_dir).unwrap_or_else(default_data_dir),
            api: flags.api.or(file.api).unwrap_or_else(|| DEFAULT_API.parse().expect("valid default")),
            region: file.region.unwrap_or_else(|| "default".into()),
            operator: file.operator.unwrap_or_else(|| "default".into()),
            labels: file.labels,
            max_upload: file.max_upload_mib.unwrap_or(8 * 1024).saturating_mul(1 << 20),
            token_ttl_ms: file.token_ttl_hours.unwrap_or(12).saturating_mul(3_600_000),
            max_instances: file.max_instances.unwrap_or(256),
            cpus: file.cpus.filter(|c| *c > 0),
            libvirt_uri: flags
                .libvirt_uri
                .clone()
                .or(file.libvirt_uri)
                .unwrap_or_else(|| "qemu:///system".into()),
            libvirt_pool: flags
                .libvirt_pool
                .clone()
                .or(file.libvirt_pool)
                .unwrap_or_else(|| "default".into()),
            libvirt_domain_type,
        })
    }
}

fn default_site() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_lowercase();
    let clean: String =
        host.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).take(63).collect();
    let clean = clean.trim_start_matches('-').to_owned();
    if atoll_crdt::is_name(&clean) { clean } else { "site-1".into() }
}

pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return Path::new(&d).join("atoll");
    }
    match std::env::var_os("HOME") {
        Some(h) => Path::new(&h).join(".local/share/atoll"),
        None => PathBuf::from("atoll-data"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("atoll.toml");
        std::fs::write(
            &path,
            "site = \"from-file\"\napi = \"127.0.0.1:9000\"\nregion = \"eu\"\n[labels]\nrack = \"r1\"\n",
        )
        .unwrap();
        let flags = Flags { config: Some(path.clone()), site: Some("from-flag".into()), ..Flags::default() };
        let s = Settings::resolve(&flags).unwrap();
        assert_eq!(s.site, "from-flag");
        assert_eq!(s.api.port(), 9000);
        assert_eq!(s.region, "eu");
        assert_eq!(s.labels["rack"], "r1");
        std::fs::write(&path, "bogus = 1\n").unwrap();
        assert!(Settings::resolve(&Flags { config: Some(path), ..Flags::default() }).is_err());
        assert!(Settings::resolve(&Flags { site: Some("Not Valid".into()), ..Flags::default() }).is_err());
    }
}
