//! Figures of this site for `/metrics` that are not gossiped: its instances
//! by state, its cross-site requests still waiting for their target, the
//! instances it refused to admit, by reason, and its drivers' failures.

use std::collections::BTreeMap;

use atoll_crdt::{IntentState, Kind};

use crate::api::ApiError;
use crate::peer::Peer;

/// A snapshot, taken by the shell every few seconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Instances of this site by observed state (`running`, `failed`, ...).
    pub by_state: BTreeMap<String, u64>,
    /// This site's intents whose target has not answered yet.
    pub intents_waiting: u64,
    /// Instances refused admission since start, by error code.
    pub refused: BTreeMap<&'static str, u64>,
    /// Instances a driver could not start or recover since start, by kind.
    pub driver_failures: BTreeMap<Kind, u64>,
}

/// What the peer counts since start (the shell reads them through [`Stats`]).
#[derive(Debug, Clone, Default)]
pub struct Counters {
    refused: BTreeMap<&'static str, u64>,
    driver_failures: BTreeMap<Kind, u64>,
}

impl Peer {
    pub fn stats(&self) -> Result<Stats, ApiError> {
        let mut by_state = BTreeMap::new();
        for (observed, n) in self.own.tally()?.by_state {
            let state = serde_json::to_value(observed).ok().and_then(|v| v.as_str().map(str::to_owned));
            *by_state.entry(state.unwrap_or_else(|| "unknown".into())).or_insert(0) += n;
        }
        let intents_waiting = self
            .own
            .doc
            .list::<atoll_crdt::Intent>()?
            .into_iter()
            .filter(|i| i.requester == self.site)
            .filter(|i| !matches!(self.view(i.clone()).state, IntentState::Done | IntentState::Failed))
            .count() as u64;
        let c = &self.counters;
        Ok(Stats {
            by_state,
            intents_waiting,
            refused: c.refused.clone(),
            driver_failures: c.driver_failures.clone(),
        })
    }

    /// Counts an instance this site refused to admit.
    pub(crate) fn refused_admission(&mut self, e: &ApiError) {
        *self.counters.refused.entry(e.code()).or_insert(0) += 1;
    }

    /// Counts an instance of `kind` its driver could not start or recover.
    pub(crate) fn driver_failed(&mut self, kind: Kind) {
        *self.counters.driver_failures.entry(kind).or_insert(0) += 1;
    }
}
