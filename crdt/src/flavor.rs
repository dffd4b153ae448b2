//! Flavors: named instance sizes, a realm-wide catalog (what OpenStack's
//! `flavor` means). A flavor only presets the CPUs, memory and disk of an
//! instance created with it; quotas and the site's admission judge the
//! instance as they judge any other, so a flavor grants nothing.

use serde::{Deserialize, Serialize};

use crate::{Entity, Millis};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Flavor {
    pub name: String,
    pub cpus: i64,
    pub memory_mib: i64,
    pub disk_mib: i64,
    pub created_by: String,
    pub created_at: Millis,
}

impl Entity for Flavor {
    const COLLECTION: &'static str = "flavors";
    fn key(&self) -> String {
        self.name.clone()
    }
}

/// A flavor as the realm stores it: a realm admin's signed statement
/// (docs/architecture.md, "Realm rules on content"), retired rather than
/// deleted; the seal stays out of [`Flavor`], which travels in replies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlavorRecord {
    #[serde(flatten)]
    pub flavor: Flavor,
    #[serde(default)]
    pub seal: crate::Seal,
}

impl Entity for FlavorRecord {
    const COLLECTION: &'static str = Flavor::COLLECTION;
    const PACKED: bool = true;
    const VERSIONED: bool = true;
    fn key(&self) -> String {
        self.flavor.key()
    }
    fn rev(&self) -> u64 {
        self.seal.rev
    }
}
