//! The flavor catalog (crdt::flavor): realm admins add and remove named
//! instance sizes; any user lists them.

use atoll_crdt::{Entity, Flavor, FlavorRecord, Millis};

use crate::api::{ApiResult, MAX_CPUS, MAX_DISK_MIB, MAX_MEMORY_MIB, NewFlavor, Reply};
use crate::consent::Caller;
use crate::manage::check_name;
use crate::peer::Peer;
use crate::{ApiError, auth};

/// Flavors a realm holds at most (each is a record every site keeps).
pub const MAX_FLAVORS: usize = 256;

impl Peer {
    pub(crate) fn create_flavor(&mut self, now: Millis, by: &Caller, n: NewFlavor) -> ApiResult {
        let caller = &by.user;
        auth::require_realm_admin(caller)?;
        check_name("flavor", &n.name)?;
        let sizes = [("cpus", n.cpus, 1, MAX_CPUS), ("memory_mib", n.memory_mib, 1, MAX_MEMORY_MIB)];
        for (what, v, lo, hi) in sizes.into_iter().chain([("disk_mib", n.disk_mib, 0, MAX_DISK_MIB)]) {
            if !(lo..=hi).contains(&v) {
                return Err(ApiError::Invalid(format!("{what} must be within {lo}..={hi}, not {v}")));
            }
        }
        if !self.realm.doc.has_collection(Flavor::COLLECTION) {
            return Err(ApiError::Conflict(
                "this realm was founded before flavors and cannot hold any".into(),
            ));
        }
        let all = self.realm.flavors()?;
        if all.iter().any(|f| f.name == n.name) {
            return Err(ApiError::Conflict(format!("flavor {} exists", n.name)));
        }
        if all.len() >= MAX_FLAVORS {
            return Err(ApiError::Conflict(format!(
                "the realm holds {MAX_FLAVORS} flavors, the most it may"
            )));
        }
        let flavor = Flavor {
            name: n.name,
            cpus: n.cpus,
            memory_mib: n.memory_mib,
            disk_mib: n.disk_mib,
            created_by: caller.name.clone(),
            created_at: now,
        };
        // Over a retired flavor of the same name, one revision above it.
        let record = FlavorRecord { flavor, seal: Default::default() };
        let record = self.write_sealed(by, record, false)?;
        Ok(Reply::Flavor(record.flavor))
    }

    pub(crate) fn list_flavors(&self) -> ApiResult {
        Ok(Reply::Flavors(self.realm.flavors()?))
    }

    pub(crate) fn delete_flavor(&mut self, by: &Caller, name: &str) -> ApiResult {
        auth::require_realm_admin(&by.user)?;
        let Some(record) = self.realm.flavor_record(name)? else {
            return Err(ApiError::NotFound(format!("no flavor {name}")));
        };
        self.write_sealed(by, record, true)?;
        Ok(Reply::removed(name))
    }
}
