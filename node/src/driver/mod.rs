//! Workload drivers (docs/architecture.md, "The daemon"). The peer core decides; a driver does.
//!
//! A driver starts, re-attaches to, stops and destroys workloads of one kind,
//! and reports on its own, through the [`Exits`] channel, a workload that ends.

pub mod docker;
pub mod libvirt;
pub mod process;
mod procfs;
pub mod sandbox;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use atoll_crdt::Kind;
use atoll_proto::InstanceSpec;
use serde::Serialize;
use tokio::sync::mpsc;

pub use docker::Docker;
pub use libvirt::Libvirt;
pub use process::Process;

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("image: {0}")]
    Image(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Runtime(String),
}

impl From<atoll_image::ImageError> for DriverError {
    fn from(e: atoll_image::ImageError) -> Self {
        match e {
            atoll_image::ImageError::Unusable(why) => DriverError::Image(why),
            atoll_image::ImageError::Io(e) => DriverError::Io(e),
        }
    }
}

pub type DriverFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, DriverError>> + Send + 'a>>;

/// What a driver found about its runtime at start.
#[derive(Debug, Clone, Serialize)]
pub struct Fingerprint {
    pub kind: Kind,
    pub available: bool,
    pub version: String,
    pub detail: String,
}

/// A workload that ended without being asked to.
#[derive(Debug)]
pub struct Exit {
    pub key: String,
    pub run: u64,
    pub code: Option<i32>,
    pub detail: String,
}

pub type Exits = mpsc::Sender<Exit>;

/// Result of trying to re-attach after a daemon restart.
#[derive(Debug)]
pub enum Recovered {
    Running { handle: String, detail: String },
    Gone { detail: String },
}

pub trait Driver: Send + Sync + 'static {
    fn fingerprint(&self) -> Fingerprint;
    /// Starts a run from the image blob at `image`; returns a handle to persist.
    fn start<'a>(
        &'a self,
        spec: &'a InstanceSpec,
        run: u64,
        image: PathBuf,
    ) -> DriverFuture<'a, (String, String)>;
    fn recover<'a>(&'a self, key: &'a str, run: u64, handle: &'a str) -> DriverFuture<'a, Recovered>;
    /// Stops gracefully, forcing after `grace_ms`. Stopping what is not running is fine.
    fn stop<'a>(&'a self, key: &'a str, grace_ms: u64) -> DriverFuture<'a, ()>;
    /// Stops and removes everything kept for the instance.
    fn destroy<'a>(&'a self, key: &'a str) -> DriverFuture<'a, ()>;
    /// The last `max_bytes` of the instance's output.
    fn logs<'a>(&'a self, key: &'a str, max_bytes: u64) -> DriverFuture<'a, Vec<u8>>;
    /// What each instance this driver runs uses now (docs/drivers.md, how
    /// each driver measures).
    fn usage(&self) -> DriverFuture<'_, Vec<Usage>>;
}

/// What one instance uses, measured by its driver when asked.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    /// `project/name`.
    pub key: String,
    /// CPU time used since it started.
    pub cpu_seconds: f64,
    pub memory_bytes: u64,
}

/// The drivers of a site, by kind.
#[derive(Default)]
pub struct Drivers {
    drivers: Vec<Box<dyn Driver>>,
}

impl Drivers {
    pub fn add(&mut self, d: Box<dyn Driver>) {
        self.drivers.push(d);
    }

    pub fn get(&self, kind: Kind) -> Option<&dyn Driver> {
        self.drivers.iter().find(|d| d.fingerprint().kind == kind && d.fingerprint().available).map(|d| &**d)
    }

    pub fn fingerprints(&self) -> Vec<Fingerprint> {
        self.drivers.iter().map(|d| d.fingerprint()).collect()
    }

    pub fn kinds(&self) -> Vec<Kind> {
        self.fingerprints().into_iter().filter(|f| f.available).map(|f| f.kind).collect()
    }
}

/// A key (`project/name`) as a directory, container or domain name: the two
/// parts joined by `__`, each with every `_` written `_.`. Injective, so no
/// member can name an instance onto another project's (`a/b__c` and `a__b/c`
/// were both `a__b__c` before): an escaped part has no `__` and does not end
/// in `_`, so the first `__` is the joint, and `_.` decodes back to `_`.
/// Names without `_` are what they were before, so only instances with an
/// underscore in their project or name moved (see [`legacy_dir_name`]).
pub fn dir_name(key: &str) -> String {
    let escape = |part: &str| part.replace('_', "_.");
    match key.split_once('/') {
        Some((project, name)) => format!("{}__{}", escape(project), escape(name)),
        None => escape(key),
    }
}

/// An instance's directory under `root`; one kept under its legacy name
/// (see [`legacy_dir_name`]) is moved to today's on first use.
pub fn instance_dir(root: &std::path::Path, key: &str) -> std::path::PathBuf {
    let dir = root.join(dir_name(key));
    if let Some(old) = legacy_dir_name(key).map(|o| root.join(o))
        && !dir.exists()
        && old.is_dir()
    {
        match std::fs::rename(&old, &dir) {
            Ok(()) => tracing::info!(instance = key, "moved {} to {}", old.display(), dir.display()),
            Err(e) => tracing::warn!(instance = key, "cannot move {}: {e}", old.display()),
        }
    }
    dir
}

/// The name an instance had before [`dir_name`] became injective, where it
/// differs from today's: drivers rename what they find under it.
pub fn legacy_dir_name(key: &str) -> Option<String> {
    let old = key.replace('/', "__");
    (old != dir_name(key)).then_some(old)
}

#[cfg(test)]
mod naming {
    use super::*;

    #[test]
    fn instance_names_never_collide() {
        assert_eq!(dir_name("default/web"), "default__web", "unchanged without underscores");
        assert_ne!(dir_name("a/b__c"), dir_name("a__b/c"));
        assert_ne!(dir_name("a_/b"), dir_name("a/_b"));
        assert_eq!(legacy_dir_name("default/web"), None);
        assert_eq!(legacy_dir_name("a/b__c").as_deref(), Some("a__b__c"));
    }

    proptest::proptest! {
        #[test]
        fn distinct_keys_have_distinct_names(
            a in "[a-z0-9][a-z0-9._-]{0,8}", b in "[a-z0-9][a-z0-9._-]{0,8}",
            c in "[a-z0-9][a-z0-9._-]{0,8}", d in "[a-z0-9][a-z0-9._-]{0,8}",
        ) {
            let (x, y) = (format!("{a}/{b}"), format!("{c}/{d}"));
            proptest::prop_assert_eq!(x == y, dir_name(&x) == dir_name(&y));
        }
    }
}
