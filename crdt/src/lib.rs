//! Atoll's replicated state model.
//!
//! Two kinds of automerge documents hold everything a site must remember:
//! the [`Realm`] (admin-scoped, replicated to every site) and one [`SiteDoc`] per
//! site (written only by its owner). Entities are plain serde structs mapped onto
//! automerge maps field by field, so concurrent edits of different fields merge.
//! The quota escrow of [`escrow`] is pure arithmetic over both documents.
//!
//! This crate is pure: no clock, no I/O, no OS randomness. Time comes in as
//! [`Millis`] from the caller.

pub mod chunks;
pub mod deployment;
pub mod doc;
pub mod entity;
pub mod epoch;
pub mod escrow;
pub mod exchange;
pub mod flavor;
pub mod intent;
pub mod provenance;
pub mod realm;
mod replica;
pub mod site;
#[cfg(test)]
mod testing;

pub use automerge::{Change, ChangeHash, ScalarValue};
pub use deployment::{DeploymentRecord, ReplicaOf};
pub use doc::{Doc, DocError, DocSize, Entity, SyncState};
pub use entity::*;
pub use escrow::{Account, EscrowError};
pub use flavor::{Flavor, FlavorRecord};
pub use intent::{Consent, Holder, Intent, IntentOutcome, IntentState};
pub use provenance::{Gate, Incoming, Ledger, Received, RecordWrite, Refused, RootWrite, Signed};
pub use realm::Realm;
pub use replica::share_replicas;
pub use site::{SiteDoc, Tally};

/// Milliseconds since the Unix epoch, as given by the caller's clock.
pub type Millis = u64;
