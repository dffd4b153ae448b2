//! Atoll's API types and the sans-IO peer core.
//!
//! [`Peer::handle`] consumes one [`Input`] at a time and asks for side effects
//! through [`Effects`]: persist a write, start a workload, arm a timer, answer a
//! request. It never touches a clock, a socket, a thread or OS randomness, so the
//! daemon (`node/`) and a simulator can run the very same logic.

pub mod api;
pub mod auth;
pub mod blob;
pub mod consent;
pub mod deployment;
pub mod deployments;
pub mod driver;
pub mod epoch;
mod fetch;
mod flavors;
mod footprint;
mod founding;
pub mod gather;
mod identity;
pub mod intents;
pub mod lifecycle;
mod manage;
pub mod membership;
pub mod overlay;
pub mod peer;
pub mod placement;
pub mod provenance;
pub mod pulls;
pub mod reach;
mod rebalance;
pub mod reconcile;
mod refetch;
pub mod roster;
pub mod rules;
pub mod stats;
pub mod sync;
pub mod wire;

pub use api::{ApiError, ApiResult, Command, Reply};
pub use driver::{DriverCmd, DriverEvent, InstanceSpec};
pub use peer::{DocId, Effects, Input, Outbox, Peer, PeerConfig, ReqId, Sabotage, StoreWrite, TimerId};
pub use wire::{PeerMsg, WireError};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_consent;
#[cfg(test)]
mod tests_epoch;
#[cfg(test)]
mod tests_gather;
#[cfg(test)]
mod tests_identity;
#[cfg(test)]
mod tests_intents;
#[cfg(test)]
mod tests_membership;
#[cfg(test)]
mod tests_placement;
#[cfg(test)]
mod tests_provenance;
#[cfg(test)]
mod tests_reconcile;
#[cfg(test)]
mod tests_roster;
#[cfg(test)]
mod tests_rules;
#[cfg(test)]
mod tests_sync;
