//! Two ways into automerge's sync exchange for a pair whose state is kept
//! (docs/architecture.md, "Peers together"), where automerge alone would
//! work from what the peer said it had at its last message, which in a realm
//! is stale: most of a site's changes reach it along other links.
//!
//! - [`Doc::reopen`]: a site that hears of heads it lacks asks for what
//!   changed since the heads both last shared (a fresh state would send a
//!   bloom filter of the whole history and be answered from all of it).
//! - [`Doc::push_out`]: a site that made changes sends exactly those (from
//!   the peer's stale bloom filter automerge would resend everything written
//!   since, which the peer mostly has).
//!
//! Both leave the exchange to automerge from there: the peer answers with
//! its heads and what it needs, so a peer that lacked more than the push
//! gets the rest, and nothing is lost when the guess is wrong.

use automerge::ChangeHash;
use automerge::sync::{ChunkList, Message, MessageFlags, MessageVersion};

use crate::doc::{Doc, SyncState};

/// The most changes a push carries; more go through the ordinary exchange.
pub const MAX_PUSHED: usize = 32;

impl Doc {
    /// Makes the next [`Doc::sync_out`] for `state` speak even though the
    /// state believes the pair in step: a peer announced heads we lack. The
    /// message asks and carries no changes: what the peer said it had is
    /// forgotten, as it is stale (automerge would resend, from it, all the
    /// peer received since along other links); its answer tells anew.
    pub fn reopen(state: &mut SyncState) {
        state.last_sent_heads.clear();
        state.in_flight = false;
        state.their_have = None;
        state.their_need = None;
    }

    /// A sync message carrying the changes made since heads `since` (this
    /// site's heads when it last announced the document), for a peer that
    /// `state` says has answered before; otherwise, or when there are more
    /// than [`MAX_PUSHED`], the ordinary [`Doc::sync_out`].
    pub fn push_out(
        &mut self,
        state: &mut SyncState,
        since: &[ChangeHash],
    ) -> Option<(Vec<u8>, Vec<crate::Signed>)> {
        if state.their_heads.is_none() || state.their_have.is_none() || since.is_empty() {
            return self.sync_out(state);
        }
        let mut inner = self.inner.doc();
        // Heads from before a compaction (crate::epoch) are not in the
        // document any more: then the ordinary exchange, never nothing.
        let Ok(changes) = crate::doc::guarded("a push", move || inner.get_changes(since)) else {
            return self.sync_out(state);
        };
        let mut fresh: Vec<_> =
            changes.into_iter().filter(|c| !state.sent_hashes.contains(&c.hash())).collect();
        if fresh.is_empty() || fresh.len() > MAX_PUSHED {
            return self.sync_out(state);
        }
        let hashes: Vec<ChangeHash> = fresh.iter().map(automerge::Change::hash).collect();
        let heads = self.inner.doc().get_heads();
        let mut flags = MessageFlags::new();
        flags.set(MessageFlags::SUPPORTS_SYNC_RESET);
        let mut need = self.ledger.wanted(&self.inner.doc());
        need.sort();
        need.dedup();
        let msg = Message {
            heads: heads.clone(),
            need,
            // No summary of what we have: the peer answers with its own,
            // and automerge sends it what it still lacks from there.
            have: Vec::new(),
            changes: ChunkList::from(fresh.iter_mut().map(|c| c.bytes().into_owned()).collect::<Vec<_>>()),
            flags: Some(flags),
            version: MessageVersion::V1,
        };
        state.sent_hashes.extend(hashes.iter().copied());
        state.last_sent_heads = heads;
        state.in_flight = true;
        state.have_responded = true;
        Some((msg.encode(), self.signatures(hashes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::Entity;
    use crate::entity::Member;

    use crate::testing::{Anyone, member};

    /// Delivers `first` (sent by `b`) to `a`, then runs the exchange until
    /// both are quiet; returns the bytes sent in all.
    fn exchange(
        first: Option<(Vec<u8>, Vec<crate::Signed>)>,
        a: &mut Doc,
        sa: &mut SyncState,
        b: &mut Doc,
        sb: &mut SyncState,
    ) -> usize {
        let mut total = 0;
        let mut from_b = first;
        for _ in 0..10 {
            if let Some((m, sigs)) = &from_b {
                total += m.len();
                a.sync_in(sa, m, sigs, &mut Anyone).unwrap();
            }
            let from_a = a.sync_out(sa);
            if let Some((m, sigs)) = &from_a {
                total += m.len();
                b.sync_in(sb, m, sigs, &mut Anyone).unwrap();
            }
            if from_a.is_none() && from_b.is_none() {
                break;
            }
            from_b = b.sync_out(sb);
        }
        total
    }

    /// Two replicas with a 300-change history, in step, with kept states.
    fn in_step() -> (Doc, SyncState, Doc, SyncState) {
        let mut a = Doc::create(b"a", &[Member::COLLECTION], 0).unwrap();
        for i in 0..300 {
            a.put(&member(&format!("s{i}"), "/ip4/1")).unwrap();
            a.commit(i);
        }
        let mut b = a.fork_as(b"b");
        let (mut sa, mut sb) = (SyncState::new(), SyncState::new());
        let first = b.sync_out(&mut sb);
        exchange(first, &mut a, &mut sa, &mut b, &mut sb);
        assert!(b.sync_out(&mut sb).is_none(), "in step, a kept state is quiet");
        (a, sa, b, sb)
    }

    /// `n` changes written by a third site, given to `a` and `b` outside
    /// their pair's exchange.
    fn from_elsewhere(a: &mut Doc, b: &mut Doc, n: u64) {
        let mut c = a.fork_as(b"c");
        let before = c.heads();
        for i in 0..n {
            c.put(&member(&format!("c{i}"), "/ip4/3")).unwrap();
            c.commit(1000 + i);
        }
        b.apply(&c.changes_since(&before)).unwrap();
        a.apply(&c.changes_since(&before)).unwrap();
    }

    #[test]
    fn a_reopened_state_pulls_the_new_change_without_the_history() {
        let (mut a, mut sa, mut b, mut sb) = in_step();
        // `a` changes; `b` hears of it as announced heads and pulls.
        a.put(&member("new", "/ip4/1")).unwrap();
        a.commit(400);
        Doc::reopen(&mut sb);
        let first = b.sync_out(&mut sb);
        let asked = first.as_ref().unwrap().0.len();
        let reopened = exchange(first, &mut a, &mut sa, &mut b, &mut sb);
        assert_eq!(b.heads(), a.heads());
        // The pair's shared heads moved on: the next ask summarises only
        // what comes after this change.
        assert_eq!(sb.shared_heads, a.heads());
        // The same pull from a fresh state sends a bloom filter of the
        // whole history first.
        let mut c = b.fork_as(b"c");
        a.put(&member("newer", "/ip4/1")).unwrap();
        a.commit(500);
        let (mut sa2, mut sc) = (SyncState::new(), SyncState::new());
        let first = c.sync_out(&mut sc);
        let fresh_asked = first.as_ref().unwrap().0.len();
        let fresh = exchange(first, &mut a, &mut sa2, &mut c, &mut sc);
        assert_eq!(c.heads(), a.heads());
        assert!(asked * 4 < fresh_asked, "reopened ask {asked} B, fresh {fresh_asked} B");
        assert!(reopened < fresh, "reopened pull {reopened} B, fresh {fresh} B");
    }

    #[test]
    fn a_reopened_ask_carries_no_changes_from_a_stale_summary() {
        let (mut a, _, mut b, mut sb) = in_step();
        // Both receive 20 changes from a third site, outside this pair.
        from_elsewhere(&mut a, &mut b, 20);
        a.put(&member("new", "/ip4/1")).unwrap();
        a.commit(2000);
        Doc::reopen(&mut sb);
        let (ask, _) = b.sync_out(&mut sb).unwrap();
        let ask = Message::decode(&ask).unwrap();
        assert!(ask.changes.is_empty(), "{} changes resent from a stale summary", ask.changes.len());
    }

    #[test]
    fn a_push_carries_the_new_change_only_and_the_peer_gets_the_rest() {
        let (mut a, mut sa, mut b, mut sb) = in_step();
        // `b` receives 50 changes from elsewhere (a third site): `a` never
        // hears it through this pair's exchange.
        from_elsewhere(&mut a, &mut b, 50);
        // Now `a` writes one change and pushes it to `b`.
        let since = a.heads();
        a.put(&member("mine", "/ip4/2")).unwrap();
        a.commit(2000);
        let push = a.push_out(&mut sa, &since).unwrap();
        assert_eq!(push.1.len(), 0, "unsigned test changes carry no signatures");
        let pushed = push.0.len();
        let mut sa_plain = sa.clone();
        let total = exchange(Some(push), &mut b, &mut sb, &mut a, &mut sa);
        assert_eq!(b.heads(), a.heads());
        // Automerge alone, from `b`'s summary of 50 changes ago, resends
        // the 50 `b` already has.
        sa_plain.last_sent_heads.clear();
        sa_plain.in_flight = false;
        let plain = a.sync_out(&mut sa_plain).unwrap().0.len();
        assert!(pushed * 5 < plain, "push {pushed} B, automerge's own {plain} B");
        assert!(total < plain, "the whole exchange ({total} B) is less than automerge's first message");

        // A peer that lacks more than the push still ends with everything.
        let mut d = b.fork_as(b"d");
        let mut sd = SyncState::new();
        let mut sa_d = SyncState::new();
        let first = d.sync_out(&mut sd);
        exchange(first, &mut a, &mut sa_d, &mut d, &mut sd);
        let since = a.heads();
        for i in 0..3 {
            a.put(&member(&format!("hidden{i}"), "/ip4/2")).unwrap();
            a.commit(3000 + i);
        }
        let mid = a.heads();
        a.put(&member("pushed", "/ip4/2")).unwrap();
        a.commit(4000);
        // Pushed as if only the last change were new: `d` lacks its deps.
        let push = a.push_out(&mut sa_d, &mid).unwrap();
        exchange(Some(push), &mut d, &mut sd, &mut a, &mut sa_d);
        assert_eq!(d.heads(), a.heads());
        assert_ne!(since, mid);
    }
}
