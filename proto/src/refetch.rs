//! Images whose fetch failed. At the edge a holder out of reach is normal (a
//! ship at sea, a cut uplink), so an instance waiting on such an image stays
//! `pending`, saying which holders it waits for, and the fetch is tried again:
//! at once when a holder connects, and after a growing delay otherwise (a
//! holder may be connected and still fail, e.g. serving a corrupt chunk).
//!
//! This is a small state machine the peer owns: it decides when to try again;
//! the peer asks the shell to fetch and records the instances' state.

use std::collections::BTreeMap;

use atoll_crdt::{Desired, Image, Millis, Observed, SiteId};

use crate::lifecycle::inst_key;
use crate::peer::{Effects, Peer, TimerId};

/// First delay before fetching again, doubled after each failure up to [`RETRY_MAX`].
pub const RETRY_FIRST: Millis = 2_000;
pub const RETRY_MAX: Millis = 60_000;

/// One blob waiting to be fetched again.
#[derive(Debug, Clone)]
struct Waiting {
    image: Image,
    failures: u32,
    /// A `Refetch` timer is set for it.
    timer: bool,
}

/// Blobs whose last fetch failed, by digest. Bounded by the image catalog:
/// an entry exists only while an instance of this site waits on the blob.
#[derive(Debug, Default)]
pub struct Refetch {
    waiting: BTreeMap<String, Waiting>,
}

impl Refetch {
    /// Records a failed fetch; returns the delay before the next try, or None
    /// when a timer is already set.
    pub fn failed(&mut self, image: Image) -> Option<Millis> {
        let w =
            self.waiting.entry(image.digest.clone()).or_insert(Waiting { image, failures: 0, timer: false });
        w.failures = w.failures.saturating_add(1);
        let delay = RETRY_FIRST.saturating_mul(1 << (w.failures - 1).min(5)).min(RETRY_MAX);
        if w.timer {
            return None;
        }
        w.timer = true;
        Some(delay)
    }

    /// The timer for `digest` fired: the image to fetch again, if still waiting.
    pub fn due(&mut self, digest: &str) -> Option<Image> {
        let w = self.waiting.get_mut(digest)?;
        w.timer = false;
        Some(w.image.clone())
    }

    /// Images waiting on a holder among `holders_of(digest)` that is `site`.
    pub fn held_by(&self, site: &SiteId, holders_of: impl Fn(&str) -> Vec<SiteId>) -> Vec<Image> {
        self.waiting
            .values()
            .filter(|w| holders_of(&w.image.digest).contains(site))
            .map(|w| w.image.clone())
            .collect()
    }

    /// The blob arrived, or nothing waits on it any more.
    pub fn done(&mut self, digest: &str) {
        self.waiting.remove(digest);
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

impl Peer {
    /// Instances of this site that want to run and wait on the blob `digest`.
    pub(crate) fn waiting_on(&self, digest: &str) -> Vec<atoll_crdt::Instance> {
        self.own
            .instances()
            .unwrap_or_default()
            .into_iter()
            .filter(|i| {
                i.image_digest == digest && i.desired == Desired::Running && i.observed == Observed::Pending
            })
            .collect()
    }

    /// A fetch failed: the instances waiting on it stay pending and say why;
    /// the fetch is tried again later, or as soon as a holder connects.
    pub(crate) fn fetch_failed(&mut self, now: Millis, image: Image, why: &str, fx: &mut impl Effects) {
        let waiting = self.waiting_on(&image.digest);
        if waiting.is_empty() {
            self.refetch.done(&image.digest);
            return;
        }
        let holders: Vec<SiteId> = self
            .realm
            .holders(&image.digest)
            .unwrap_or_default()
            .into_iter()
            .filter(|s| s != &self.site)
            .collect();
        let names: Vec<&str> = holders.iter().map(SiteId::as_str).collect();
        let reachable = holders.iter().any(|h| self.in_reach(h));
        let reason = if reachable {
            format!("{why}; trying again")
        } else {
            format!(
                "waiting for a holder of image {}/{} to be reachable (held on {})",
                image.project,
                image.name,
                names.join(", ")
            )
        };
        let digest = image.digest.clone();
        if let Some(after) = self.refetch.failed(image) {
            fx.schedule(TimerId::Refetch { digest }, after);
        }
        for mut inst in waiting {
            let key = inst_key(&inst);
            if inst.reason != reason {
                self.observe(now, &mut inst, Observed::Pending, reason.clone());
            }
            self.answer_waiters(&key, &Ok(crate::api::Reply::Instance(inst)));
        }
    }

    pub(crate) fn on_refetch_timer(&mut self, now: Millis, digest: &str, fx: &mut impl Effects) {
        let Some(image) = self.refetch.due(digest) else { return };
        self.refetch_image(now, image, fx);
    }

    /// A member connected: fetch again what it holds and we wait for.
    pub(crate) fn refetch_from(&mut self, now: Millis, site: &SiteId, fx: &mut impl Effects) {
        if self.refetch.is_empty() {
            return;
        }
        let realm = &self.realm;
        let images = self.refetch.held_by(site, |d| realm.holders(d).unwrap_or_default());
        for image in images {
            self.refetch_image(now, image, fx);
        }
    }

    fn refetch_image(&mut self, now: Millis, image: Image, fx: &mut impl Effects) {
        if self.waiting_on(&image.digest).is_empty() {
            self.refetch.done(&image.digest);
            return;
        }
        if let Err(e) = self.fetch_image(&image, fx) {
            // No holder is left in the catalog: nothing can bring the blob back.
            self.refetch.done(&image.digest);
            for mut inst in self.waiting_on(&image.digest) {
                let key = inst_key(&inst);
                self.observe(now, &mut inst, Observed::Failed, e.to_string());
                self.answer_waiters(&key, &Ok(crate::api::Reply::Instance(inst)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(digest: &str) -> Image {
        serde_json::from_value(serde_json::json!({
            "name": "img", "project": "p", "digest": digest, "size": 1, "format": "process",
            "visibility": "private", "chunk_size": 1, "chunks": [], "created_by": "u", "created_at": 0
        }))
        .unwrap()
    }

    #[test]
    fn retries_back_off_and_set_one_timer_at_a_time() {
        let mut r = Refetch::default();
        assert_eq!(r.failed(image("d")), Some(RETRY_FIRST));
        assert_eq!(r.failed(image("d")), None, "a timer is already set");
        assert!(r.due("d").is_some());
        assert_eq!(r.failed(image("d")), Some(4 * RETRY_FIRST));
        for _ in 0..20 {
            r.due("d");
            assert!(r.failed(image("d")).unwrap() <= RETRY_MAX);
        }
        r.done("d");
        assert!(r.due("d").is_none());
        assert!(r.is_empty());
    }

    #[test]
    fn a_connecting_holder_brings_back_what_it_holds() {
        let mut r = Refetch::default();
        r.failed(image("a"));
        r.failed(image("b"));
        let s1 = SiteId::new("s1").unwrap();
        let held = r.held_by(&s1, |d| if d == "a" { vec![s1.clone()] } else { vec![] });
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].digest, "a");
        assert!(r.due("b").is_some(), "b still waits");
    }
}
