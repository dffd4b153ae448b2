//! Pulls of relayed changes (docs/architecture.md, "Peers together"), pure.
//!
//! A change flooding along the overlay reaches a site as heads announced by
//! several neighbours within a few milliseconds. Asking each of them would
//! bring the same change once per neighbour; so a site asks the first and
//! notes the others, asking the next one only when the first has brought
//! what it announced and the document still differs from what the next one
//! announced, or when the first has not brought it within [`PULL_WAIT`] (it
//! may have gone, or have sent more than it announced). Nothing here decides what is sent: the peer asks, this
//! only says whom and when.

use std::collections::BTreeMap;

use atoll_crdt::{Millis, SiteId};

use crate::peer::DocId;

/// How long the neighbour asked has to answer before the next one is asked.
pub const PULL_WAIT: Millis = 250;
/// Announcers noted per document while a pull is open (the overlay gives a
/// site at most 8 relay neighbours; more is a misbehaving realm).
pub const MAX_NOTED: usize = 8;

#[derive(Debug, Default)]
pub struct Pulls {
    open: BTreeMap<DocId, Pull>,
}

#[derive(Debug)]
struct Pull {
    asked: SiteId,
    /// The digest `asked` announced.
    wanted: [u8; 32],
    since: Millis,
    /// Other announcers and the digest each announced, oldest first.
    noted: Vec<(SiteId, [u8; 32])>,
}

/// What the peer does after an announcement.
#[derive(Debug, PartialEq, Eq)]
pub enum Announced {
    /// Ask the announcer now; a new pull, so schedule its wait.
    AskAndWait,
    /// Ask the announcer now (the pull already waits on it).
    Ask,
    /// Another neighbour is being asked: noted for later.
    Noted,
}

impl Pulls {
    /// `from` announced `digest` for `doc`, which differs from ours.
    pub fn announced(&mut self, now: Millis, doc: &DocId, from: &SiteId, digest: [u8; 32]) -> Announced {
        match self.open.get_mut(doc) {
            Some(pull) if &pull.asked == from => {
                pull.wanted = digest;
                Announced::Ask
            }
            Some(pull) if now < pull.since.saturating_add(PULL_WAIT) => {
                pull.noted.retain(|(s, _)| s != from);
                if pull.noted.len() >= MAX_NOTED {
                    pull.noted.remove(0);
                }
                pull.noted.push((from.clone(), digest));
                Announced::Noted
            }
            _ => {
                let pull = Pull { asked: from.clone(), wanted: digest, since: now, noted: Vec::new() };
                self.open.insert(doc.clone(), pull);
                Announced::AskAndWait
            }
        }
    }

    /// A sync message from `from` about `doc` was applied and our digest is
    /// now `ours`. When that brought what the neighbour asked announced: the
    /// next announcer whose digest still differs, to be asked now, or None
    /// (the pull is closed when no one is left).
    pub fn applied(&mut self, now: Millis, doc: &DocId, from: &SiteId, ours: [u8; 32]) -> Option<SiteId> {
        let pull = self.open.get(doc)?;
        if &pull.asked != from || pull.wanted != ours {
            return None;
        }
        self.next(now, doc, ours, |_| true)
    }

    /// The wait for `doc`'s pull is over: the next announcer to ask (one
    /// that `reachable` says we can still ask), if the pull is still open.
    pub fn waited(
        &mut self,
        now: Millis,
        doc: &DocId,
        ours: [u8; 32],
        reachable: impl Fn(&SiteId) -> bool,
    ) -> Option<SiteId> {
        let pull = self.open.get(doc)?;
        if now < pull.since.saturating_add(PULL_WAIT) {
            return None; // asked anew since this wait was set
        }
        self.next(now, doc, ours, reachable)
    }

    fn next(
        &mut self,
        now: Millis,
        doc: &DocId,
        ours: [u8; 32],
        reachable: impl Fn(&SiteId) -> bool,
    ) -> Option<SiteId> {
        let pull = self.open.get_mut(doc)?;
        pull.noted.retain(|(s, d)| *d != ours && reachable(s));
        if pull.noted.is_empty() {
            self.open.remove(doc);
            return None;
        }
        let (next, wanted) = pull.noted.remove(0);
        pull.asked = next.clone();
        pull.wanted = wanted;
        pull.since = now;
        Some(next)
    }

    /// `peer` is gone: the pulls it was asked for move on at their wait.
    pub fn forget(&mut self, peer: &SiteId) {
        for pull in self.open.values_mut() {
            pull.noted.retain(|(s, _)| s != peer);
        }
    }

    /// Open pulls (for tests and the peer's bounds).
    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(n: &str) -> SiteId {
        SiteId::new(n).unwrap()
    }

    #[test]
    fn one_neighbour_is_asked_and_the_others_only_if_still_needed() {
        let mut pulls = Pulls::default();
        let (a, b, c) = (site("a"), site("b"), site("c"));
        let new = [1; 32];
        assert_eq!(pulls.announced(0, &DocId::Realm, &a, new), Announced::AskAndWait);
        assert_eq!(pulls.announced(2, &DocId::Realm, &b, new), Announced::Noted);
        assert_eq!(pulls.announced(3, &DocId::Realm, &c, [2; 32]), Announced::Noted);
        // A message from `a` that did not bring it all yet moves nothing.
        assert_eq!(pulls.applied(4, &DocId::Realm, &a, [9; 32]), None);
        // `a` brought what `b` announced, not what `c` did: `c` is next.
        assert_eq!(pulls.applied(5, &DocId::Realm, &a, new), Some(c.clone()));
        // `c` brought it: nothing left, the pull closes.
        assert_eq!(pulls.applied(7, &DocId::Realm, &c, [2; 32]), None);
        assert!(pulls.is_empty());
        assert_eq!(pulls.announced(8, &DocId::Realm, &b, [3; 32]), Announced::AskAndWait);
    }

    #[test]
    fn a_silent_neighbour_is_passed_over_after_the_wait() {
        let mut pulls = Pulls::default();
        let (a, b, c) = (site("a"), site("b"), site("c"));
        pulls.announced(0, &DocId::Realm, &a, [1; 32]);
        pulls.announced(1, &DocId::Realm, &b, [1; 32]);
        pulls.announced(1, &DocId::Realm, &c, [1; 32]);
        assert_eq!(pulls.waited(PULL_WAIT - 1, &DocId::Realm, [0; 32], |_| true), None);
        // `b` went away meanwhile; `c` is asked.
        pulls.forget(&b);
        assert_eq!(pulls.waited(PULL_WAIT, &DocId::Realm, [0; 32], |_| true), Some(c));
        // After its wait, with no one left, the pull closes.
        assert_eq!(pulls.waited(2 * PULL_WAIT, &DocId::Realm, [0; 32], |_| true), None);
        assert!(pulls.is_empty());
        // An announcement after a lapsed wait opens a new pull.
        assert_eq!(pulls.announced(3 * PULL_WAIT, &DocId::Realm, &a, [1; 32]), Announced::AskAndWait);
    }

    #[test]
    fn noted_announcers_are_bounded() {
        let mut pulls = Pulls::default();
        pulls.announced(0, &DocId::Realm, &site("a"), [1; 32]);
        for i in 0..100 {
            pulls.announced(1, &DocId::Realm, &site(&format!("s{i}")), [1; 32]);
        }
        assert_eq!(pulls.open[&DocId::Realm].noted.len(), MAX_NOTED);
    }
}
