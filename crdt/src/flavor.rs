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
