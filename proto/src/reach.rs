//! Who sees whom (docs/architecture.md, "Realm-wide view"): the serving site
//! asks every member it reaches which members that one reaches, and answers
//! within [`WAIT`] with what it heard, so that a partition shows at a glance.
//! A site out of the serving site's reach, or silent (a peer of the previous
//! release does not know the question: wire version 3), is shown as unknown.
//! Nothing is remembered: the view is of now.
//!
//! [`Reach`] holds the calls waiting for answers; the peer owns one.

use std::collections::{BTreeMap, BTreeSet};

use atoll_crdt::{Millis, SiteId};
use serde::{Deserialize, Serialize};

use crate::api::{ApiError, Reply};
use crate::peer::{Effects, Outcome, Peer, ReqId, TimerId};
use crate::wire::PeerMsg;

/// How long a call waits for answers.
pub const WAIT: Millis = 1_000;
/// Calls waiting at once; beyond, a call is answered with this site's own view.
pub const MAX_PARKED: usize = 16;
/// Most sites named in one answer.
pub const MAX_REACHES: usize = crate::wire::MAX_DIGEST;

/// One site's view of the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Sees {
    pub site: SiteId,
    /// The members it has a connection to now; None: not known (out of the
    /// serving site's reach, or it did not answer in time).
    pub reaches: Option<Vec<SiteId>>,
}

struct Parked {
    req: ReqId,
    /// Every member, in the order shown, with what is known of it.
    heard: BTreeMap<SiteId, Option<Vec<SiteId>>>,
    waiting: BTreeSet<SiteId>,
}

impl Parked {
    fn view(self) -> (ReqId, Vec<Sees>) {
        let view = self.heard.into_iter().map(|(site, reaches)| Sees { site, reaches }).collect();
        (self.req, view)
    }
}

/// Calls waiting for other sites' views.
#[derive(Default)]
pub struct Reach {
    next: u64,
    parked: BTreeMap<u64, Parked>,
}

impl Reach {
    /// Calls waiting for the reachability matrix.
    pub fn waiting(&self) -> usize {
        self.parked.len()
    }

    /// An answer from `from`; the whole view once nobody else is awaited.
    /// Answers to no call, from a site not asked, or repeated, are dropped.
    pub fn on_told(
        &mut self,
        id: u64,
        from: &SiteId,
        mut reaches: Vec<SiteId>,
    ) -> Option<(ReqId, Vec<Sees>)> {
        let call = self.parked.get_mut(&id)?;
        if !call.waiting.remove(from) {
            return None;
        }
        reaches.truncate(MAX_REACHES);
        reaches.sort();
        reaches.dedup();
        call.heard.insert(from.clone(), Some(reaches));
        if call.waiting.is_empty() { self.parked.remove(&id).map(Parked::view) } else { None }
    }

    /// The call's time is up: what was heard, the silent unknown.
    pub fn expire(&mut self, id: u64) -> Option<(ReqId, Vec<Sees>)> {
        self.parked.remove(&id).map(Parked::view)
    }
}

/// How long a member heard from (its summary, a message) counts as in reach
/// without a connection, in a realm where most pairs keep none: two summary
/// rounds (every 5 s) missed, and a little.
pub const HEARD_WITHIN: Millis = 12_000;

impl Peer {
    /// Whether `site` is in reach now: this site, a connected one, or, in a
    /// realm above `overlay::FULL_MESH_UP_TO` members (where a site keeps
    /// connections to its overlay links only and opens others on demand), one
    /// heard from within [`HEARD_WITHIN`]: summaries flood the overlay, and a
    /// message to it opens a connection (docs/architecture.md, "Overlay").
    pub(crate) fn in_reach(&self, site: &SiteId) -> bool {
        site == &self.site || self.connected.contains(site) || self.heard_lately(site)
    }

    /// Heard from lately (members only: the shell passes nothing else), and
    /// not only before its connection closed (a closed connection says more
    /// than a summary of a few seconds ago).
    fn heard_lately(&self, site: &SiteId) -> bool {
        let heard = self.seen.get(site).copied();
        self.custody.list.len() > crate::overlay::FULL_MESH_UP_TO
            && heard.is_some_and(|t| self.now.saturating_sub(t) <= HEARD_WITHIN)
            && self.lost.get(site).is_none_or(|l| heard.is_some_and(|t| t > *l))
    }

    /// The other members in reach now (see [`Peer::in_reach`]).
    pub(crate) fn in_reach_all(&self) -> BTreeSet<SiteId> {
        let mut out = self.connected.clone();
        out.extend(self.seen.keys().filter(|s| self.heard_lately(s)).cloned());
        out.remove(&self.site);
        out
    }

    /// The members this site has a connection to now.
    fn reached(&self) -> Vec<SiteId> {
        self.connected.iter().filter(|s| self.is_member(s)).take(MAX_REACHES).cloned().collect()
    }

    /// `GET /v1/sites/reachability`: every member's view of the others.
    pub(crate) fn reachability(&mut self, req: ReqId, fx: &mut impl Effects) -> Outcome {
        let members = match self.realm.members() {
            Ok(m) => m,
            Err(e) => return Outcome::Now(Err(ApiError::from(e))),
        };
        let mut heard: BTreeMap<SiteId, Option<Vec<SiteId>>> =
            members.into_iter().map(|m| (m.site, None)).collect();
        let own = self.reached();
        let waiting: BTreeSet<SiteId> = own.iter().filter(|s| heard.contains_key(*s)).cloned().collect();
        heard.insert(self.site.clone(), Some(own));
        let call = Parked { req, heard, waiting };
        if call.waiting.is_empty() || self.reach.parked.len() >= MAX_PARKED {
            return Outcome::Now(Ok(Reply::Reachability(call.view().1)));
        }
        let id = self.reach.next;
        self.reach.next += 1;
        for site in &call.waiting {
            fx.send(site, PeerMsg::ReachAsk { id });
        }
        self.reach.parked.insert(id, call);
        fx.schedule(TimerId::ReachWait { id }, WAIT);
        Outcome::Later
    }

    pub(crate) fn on_reach_ask(&mut self, from: &SiteId, id: u64, fx: &mut impl Effects) {
        fx.send(from, PeerMsg::ReachTold { id, reaches: self.reached() });
    }

    pub(crate) fn on_reach_told(
        &mut self,
        from: &SiteId,
        id: u64,
        reaches: Vec<SiteId>,
        fx: &mut impl Effects,
    ) {
        if let Some((req, view)) = self.reach.on_told(id, from, reaches) {
            fx.reply(req, Ok(Reply::Reachability(view)));
        }
    }

    pub(crate) fn on_reach_wait(&mut self, id: u64, fx: &mut impl Effects) {
        if let Some((req, view)) = self.reach.expire(id) {
            fx.reply(req, Ok(Reply::Reachability(view)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: &str) -> SiteId {
        SiteId::new(n).unwrap()
    }

    fn call(reach: &mut Reach, waiting: &[&str]) -> u64 {
        let heard = [("a", Some(vec![s("b"), s("c")])), ("b", None), ("c", None), ("d", None)]
            .into_iter()
            .map(|(n, r)| (s(n), r))
            .collect();
        let id = reach.next;
        reach.next += 1;
        let waiting = waiting.iter().map(|n| s(n)).collect();
        reach.parked.insert(id, Parked { req: 7, heard, waiting });
        id
    }

    #[test]
    fn answers_complete_a_call_and_strangers_are_ignored() {
        let mut reach = Reach::default();
        let id = call(&mut reach, &["b", "c"]);
        // Not asked, no such call: nothing.
        assert!(reach.on_told(id, &s("d"), vec![s("a")]).is_none());
        assert!(reach.on_told(id + 1, &s("b"), vec![s("a")]).is_none());
        assert!(reach.on_told(id, &s("b"), vec![s("a"), s("a")]).is_none());
        // A second answer from b does not count as c's.
        assert!(reach.on_told(id, &s("b"), vec![]).is_none());
        let (req, view) = reach.on_told(id, &s("c"), vec![s("a")]).expect("complete");
        assert_eq!(req, 7);
        let by: BTreeMap<_, _> = view.into_iter().map(|v| (v.site, v.reaches)).collect();
        assert_eq!(by[&s("b")], Some(vec![s("a")]), "deduplicated");
        assert_eq!(by[&s("c")], Some(vec![s("a")]));
        assert_eq!(by[&s("d")], None, "out of reach: unknown");
        assert!(reach.parked.is_empty());
    }

    #[test]
    fn an_expired_call_shows_the_silent_as_unknown() {
        let mut reach = Reach::default();
        let id = call(&mut reach, &["b", "c"]);
        assert!(reach.on_told(id, &s("b"), vec![s("a")]).is_none());
        let (_, view) = reach.expire(id).expect("the call");
        assert_eq!(view.iter().find(|v| v.site == s("c")).unwrap().reaches, None);
        assert!(reach.expire(id).is_none());
    }
}
