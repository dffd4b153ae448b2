//! Figures of this site for `/metrics` that are not gossiped: its instances
//! by state, its cross-site requests still waiting for their target, the
//! instances it refused to admit, by reason, and its drivers' failures.

use std::collections::{BTreeMap, BTreeSet};

use atoll_crdt::{IntentState, Kind, Millis, Resources, SiteId};

use crate::api::ApiError;
use crate::peer::{DocId, Peer};

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
    /// From issuing an intent to learning its outcome, for the intents
    /// issued since start.
    pub intent_round_trip: Histogram,
    /// From a member's (re)connection to the end of the sync it started:
    /// its digest matched ours, or every document that differed synced
    /// until neither side had more to send.
    pub converge: Histogram,
    /// Each project's quota rights this site holds (granted, received,
    /// less given) and what its instances use of them; projects with
    /// neither are left out.
    pub quota: BTreeMap<String, Share>,
}

/// A site's share of a project's quota.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Share {
    pub held: Resources,
    pub used: Resources,
}

/// Upper bounds (ms) of the histograms' buckets; the last is +Inf.
pub const ROUND_TRIP_BOUNDS: [u64; 12] =
    [10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 60_000, 600_000];

/// Observations in buckets of [`ROUND_TRIP_BOUNDS`] (not cumulative; one
/// more for the rest), their count and sum.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub buckets: [u64; ROUND_TRIP_BOUNDS.len() + 1],
    pub count: u64,
    pub sum_ms: u64,
}

impl Histogram {
    pub fn observe(&mut self, ms: Millis) {
        let at = ROUND_TRIP_BOUNDS.iter().position(|b| ms <= *b).unwrap_or(ROUND_TRIP_BOUNDS.len());
        self.buckets[at] += 1;
        self.count += 1;
        self.sum_ms = self.sum_ms.saturating_add(ms);
    }
}

/// Intents issued here whose outcome is awaited for the histogram, at most.
const MAX_TIMED: usize = 4096;

/// What the peer counts since start (the shell reads them through [`Stats`]).
#[derive(Debug, Clone, Default)]
pub struct Counters {
    refused: BTreeMap<&'static str, u64>,
    driver_failures: BTreeMap<Kind, u64>,
    round_trip: Histogram,
    /// Intents issued here, not settled yet, and when they were issued.
    awaited: BTreeMap<String, Millis>,
    converge: Histogram,
    /// Members connected since `.0` whose sync has not settled; `.1`: the
    /// documents still syncing (None: their digest has not come yet).
    converging: BTreeMap<SiteId, (Millis, Option<BTreeSet<DocId>>)>,
}

impl Counters {
    /// A member just connected: its sync starts now.
    pub(crate) fn connected(&mut self, site: &SiteId, now: Millis) {
        self.converging.insert(site.clone(), (now, None));
    }

    pub(crate) fn disconnected(&mut self, site: &SiteId) {
        self.converging.remove(site);
    }

    /// Its digest came: these documents differ (none: converged).
    pub(crate) fn differing(&mut self, site: &SiteId, docs: &[DocId], now: Millis) {
        let Some((_, pending)) = self.converging.get_mut(site) else { return };
        if pending.is_none() {
            *pending = Some(docs.iter().cloned().collect());
        }
        self.settle(site, now);
    }

    /// A sync exchange of `doc` with it left us nothing to send.
    pub(crate) fn quiet(&mut self, site: &SiteId, doc: &DocId, now: Millis) {
        if let Some((_, Some(pending))) = self.converging.get_mut(site) {
            pending.remove(doc);
            self.settle(site, now);
        }
    }

    fn settle(&mut self, site: &SiteId, now: Millis) {
        if let Some((since, Some(pending))) = self.converging.get(site)
            && pending.is_empty()
        {
            self.converge.observe(now.saturating_sub(*since));
            self.converging.remove(site);
        }
    }
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
        let mut quota = BTreeMap::new();
        for p in self.realm.projects()? {
            let a = self.account(&p.name)?;
            let held = a.granted.checked_plus(a.received).and_then(|r| r.checked_minus(a.given));
            let share = Share { held: held.unwrap_or_default(), used: a.consumed };
            if share != Share::default() {
                quota.insert(p.name, share);
            }
        }
        let c = &self.counters;
        Ok(Stats {
            quota,
            by_state,
            intents_waiting,
            refused: c.refused.clone(),
            driver_failures: c.driver_failures.clone(),
            intent_round_trip: c.round_trip.clone(),
            converge: c.converge.clone(),
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

    /// Awaits the outcome of an intent just issued, for the round-trip histogram.
    pub(crate) fn intent_issued(&mut self, id: &str, now: Millis) {
        if self.counters.awaited.len() < MAX_TIMED {
            self.counters.awaited.insert(id.to_owned(), now);
        }
    }

    /// Times the awaited intents to the sites in `changed` whose outcome is
    /// final now (an intent no longer in the document is forgotten).
    pub(crate) fn time_settled(&mut self, now: Millis, changed: &[SiteId]) {
        if self.counters.awaited.is_empty() {
            return;
        }
        let ids: Vec<(String, Millis)> = self.counters.awaited.iter().map(|(i, t)| (i.clone(), *t)).collect();
        for (id, issued) in ids {
            let Ok(Some(intent)) = self.own.doc.get::<atoll_crdt::Intent>(&id) else {
                self.counters.awaited.remove(&id);
                continue;
            };
            if !changed.contains(&intent.target) {
                continue;
            }
            if self.view(intent).state.is_final() {
                self.counters.awaited.remove(&id);
                self.counters.round_trip.observe(now.saturating_sub(issued));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_fall_in_the_first_bucket_that_holds_them() {
        let mut h = Histogram::default();
        for ms in [0, 10, 11, 600_000, 600_001] {
            h.observe(ms);
        }
        assert_eq!(h.buckets[0], 2, "0 and 10 ms: le 10");
        assert_eq!(h.buckets[1], 1, "11 ms: le 25");
        assert_eq!(h.buckets[ROUND_TRIP_BOUNDS.len() - 1], 1);
        assert_eq!(h.buckets[ROUND_TRIP_BOUNDS.len()], 1, "beyond the last bound");
        assert_eq!((h.count, h.sum_ms), (5, 1_200_022));
    }
}
