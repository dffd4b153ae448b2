//! The connections to one member and when to dial it: a small state machine
//! the swarm wrapper owns (time is passed in, so it is tested without a clock).
//!
//! Policy (docs/architecture.md, "Partitions"):
//! - QUIC first. A dial names the member's QUIC addresses only; TCP addresses
//!   are added after [`QUIC_TRIES`] QUIC dials failed in a row (UDP blocked on
//!   the path), and a member reached over TCP only is offered a QUIC dial every
//!   [`UPGRADE_EVERY`]; once QUIC connects, its TCP connections are closed
//!   [`TCP_OVERLAP`] later.
//!   QUIC notices a silent cut by itself (keep-alives, idle timeout); TCP
//!   relies on the ping protocol, slower and coarser.
//! - A member out of reach is dialled every [`REDIAL`], so that a healed path
//!   is seen within about a second (dials to a black hole cost one UDP packet
//!   or SYN each, retransmitted by the kernel or quinn meanwhile).
//! - Only kept links are dialled for their own sake (every member in a small
//!   realm, the overlay links in a large one: `atoll_proto::overlay::kept`).
//!   Any other member is dialled when something is to be sent to it: its
//!   messages wait in a bounded queue until the connection is up and the
//!   peer has said which wire version it speaks, and a connection that is not
//!   kept is closed once idle for [`IDLE_CLOSE`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use atoll_crdt::SiteId;
use atoll_proto::{PeerMsg, wire};
use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;

/// Time between two dials of a member we have no connection to.
pub const REDIAL: Duration = Duration::from_secs(1);
/// QUIC-only dials that may fail in a row before TCP addresses are tried too.
pub const QUIC_TRIES: u32 = 2;
/// How often a member reached over TCP only is offered a QUIC connection;
/// the first offer comes [`UPGRADE_FIRST`] after the TCP connection opened
/// (after a long cut, dials name TCP too, and TCP may win the race on the heal).
pub const UPGRADE_EVERY: Duration = Duration::from_secs(10);
pub const UPGRADE_FIRST: Duration = Duration::from_secs(1);
/// How long a TCP connection stays open beside the QUIC one that replaces
/// it. Gossipsub tells a peer our subscriptions only on the first connection
/// to it, and forgets the peer's when its last connection closes: an end
/// that saw the TCP close before the QUIC open would never hear the other
/// subscribe (see [`Link::gossip_lost`]). Both ends must see QUIC open first.
pub const TCP_OVERLAP: Duration = Duration::from_secs(2);
/// A TCP connection whose pings have not succeeded for this long is closed
/// (QUIC connections close themselves: `QUIC_IDLE_MS`). Pings go every 0.5 s
/// on TCP with a 1 s timeout: one lost ping leaves a gap of about 2 s,
/// two in a row one of 3.5 s. (libp2p's own report of failed pings comes only
/// after a new stream is negotiated over the dead link, 10 s later.)
pub const SILENT_LIMIT: Duration = Duration::from_secs(3);
/// How long a connected member may stay unknown as a subscriber of the
/// summary topic before its connections are reset (see [`Link::gossip_lost`]),
/// and how often at most.
pub const GOSSIP_GRACE: Duration = Duration::from_secs(5);
pub const GOSSIP_RESET_EVERY: Duration = Duration::from_secs(60);
/// A connection that is not kept is closed after this long without a
/// message either way; a member wanted for a message is dialled this long.
pub const IDLE_CLOSE: Duration = Duration::from_secs(30);
/// Messages, and their encoded bytes, waiting for a connection to one
/// member; beyond either, the oldest go (and the core is told, so that the
/// pair's sync state starts afresh).
pub const MAX_QUEUED: usize = 64;
pub const MAX_QUEUED_BYTES: usize = 8 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Quic,
    Tcp,
}

impl Transport {
    pub fn of(addr: &Multiaddr) -> Transport {
        if addr.iter().any(|p| matches!(p, Protocol::QuicV1)) { Transport::Quic } else { Transport::Tcp }
    }
}

/// One open connection: its transport and when it last proved alive.
#[derive(Debug, Clone, Copy)]
pub struct Conn {
    pub id: ConnectionId,
    pub transport: Transport,
    alive_at: Instant,
}

/// What we know of a member: its addresses, its open connections, and when to dial.
#[derive(Debug)]
pub struct Link {
    pub site: SiteId,
    pub addrs: Vec<Multiaddr>,
    pub conns: Vec<Conn>,
    next_dial: Instant,
    quic_failures: u32,
    /// The dial under way named QUIC addresses only.
    quic_only_dial: bool,
    next_upgrade: Instant,
    /// When its TCP connections go, QUIC being up (see [`TCP_OVERLAP`]).
    tcp_close_at: Option<Instant>,
    /// The wire version negotiated at connect (None: not yet known, so the
    /// oldest spoken here; docs/architecture.md, "Versions side by side").
    pub wire: Option<u16>,
    /// Its ranges do not meet ours: nothing is sent to it.
    pub incompatible: bool,
    /// The release it runs, as it describes itself (None: 0.1.0, which did not say).
    pub release: Option<String>,
    /// Since when it has been connected without being known here to
    /// subscribe to the summary topic; when its connections were last reset
    /// for that.
    unsubscribed: Option<Instant>,
    gossip_reset: Option<Instant>,
    /// Kept connected whether or not anything is sent (an overlay link).
    pub kept: bool,
    /// Dialled until then for a message, a chunk or logs.
    want_until: Option<Instant>,
    /// Messages waiting for the connection and the peer's wire version,
    /// with their encoded sizes, and the sum of those.
    queue: VecDeque<(PeerMsg, usize)>,
    queued_bytes: usize,
    /// When a message last went either way.
    used_at: Instant,
}

impl Link {
    pub fn new(site: SiteId, addrs: Vec<Multiaddr>, now: Instant) -> Link {
        Link {
            site,
            addrs,
            conns: Vec::new(),
            next_dial: now,
            quic_failures: 0,
            quic_only_dial: false,
            next_upgrade: now + UPGRADE_EVERY,
            tcp_close_at: None,
            wire: None,
            incompatible: false,
            release: None,
            unsubscribed: None,
            gossip_reset: None,
            kept: true,
            want_until: None,
            queue: VecDeque::new(),
            queued_bytes: 0,
            used_at: now,
        }
    }

    /// Whether it is to be dialled when not connected.
    fn wanted(&self, now: Instant) -> bool {
        self.kept || self.want_until.is_some_and(|t| t > now)
    }

    /// Something is to be sent: dial it now if it is not dialled already.
    pub fn want(&mut self, now: Instant) {
        if !self.wanted(now) {
            self.next_dial = now;
        }
        self.want_until = Some(now + IDLE_CLOSE);
    }

    /// A message waits for the connection; returns true when the queue was
    /// full and older messages were dropped.
    pub fn enqueue(&mut self, msg: PeerMsg, now: Instant) -> bool {
        self.want(now);
        let bytes = msg.encode().len();
        self.queue.push_back((msg, bytes));
        self.queued_bytes += bytes;
        let mut dropped = false;
        while self.queue.len() > MAX_QUEUED || (self.queued_bytes > MAX_QUEUED_BYTES && self.queue.len() > 1)
        {
            let Some((_, b)) = self.queue.pop_front() else { break };
            self.queued_bytes -= b;
            dropped = true;
        }
        dropped
    }

    /// The waiting messages, once the peer's wire version is known.
    pub fn take_queue(&mut self) -> Vec<PeerMsg> {
        self.queued_bytes = 0;
        self.queue.drain(..).map(|(m, _)| m).collect()
    }

    /// Drops the queue of a member no longer dialled (it was not reached in
    /// time); true when something was dropped.
    pub fn give_up(&mut self, now: Instant) -> bool {
        let stale = !self.connected() && !self.wanted(now) && !self.queue.is_empty();
        if stale {
            self.queue.clear();
            self.queued_bytes = 0;
        }
        stale
    }

    /// A message went either way.
    pub fn used(&mut self, now: Instant) {
        self.used_at = now;
    }

    /// A connection that is not kept and has carried nothing for [`IDLE_CLOSE`].
    pub fn idle(&self, now: Instant) -> bool {
        self.connected()
            && !self.wanted(now)
            && self.queue.is_empty()
            && now.duration_since(self.used_at) >= IDLE_CLOSE
    }

    /// Whether its connections should be reset because gossipsub lost its
    /// subscription. Gossipsub sends a peer's subscriptions only on its first
    /// connection; when QUIC replaces a TCP connection, the two ends may see
    /// the close and the open in opposite orders, and the end that saw a
    /// fresh "first" connection never hears the other's subscriptions again
    /// (it then sends it no summary: tests/network.rs caught it). A full
    /// reset makes both ends start over. At most every [`GOSSIP_RESET_EVERY`],
    /// so a peer that never subscribes is not cut off in a loop.
    pub fn gossip_lost(&mut self, now: Instant, subscribed: bool) -> bool {
        if subscribed || !self.connected() || self.incompatible {
            self.unsubscribed = None;
            return false;
        }
        let since = *self.unsubscribed.get_or_insert(now);
        let recent = self.gossip_reset.is_some_and(|t| now.duration_since(t) < GOSSIP_RESET_EVERY);
        if now.duration_since(since) < GOSSIP_GRACE || recent {
            return false;
        }
        self.unsubscribed = None;
        self.gossip_reset = Some(now);
        true
    }

    /// What the peer said of itself when connecting (identify's agent):
    /// the wire version both speak, and its release.
    pub fn identified(&mut self, agent: &str) {
        self.wire = wire::Speaks::from_advert(agent).and_then(|s| s.with(wire::Speaks::HERE));
        self.incompatible = self.wire.is_none();
        self.release = release(agent);
        if self.incompatible {
            let agent: String = agent.chars().take(80).collect();
            tracing::warn!(site = %self.site, %agent,
                "this site speaks no wire version this build speaks ({}): nothing is sent to it until one of you is upgraded",
                wire::Speaks::HERE.advert());
        }
    }

    pub fn connected(&self) -> bool {
        !self.conns.is_empty()
    }

    /// Dial again at the next tick (a fresh address was learnt).
    pub fn dial_soon(&mut self, now: Instant) {
        self.next_dial = now;
    }

    fn quic_addrs(&self) -> Vec<Multiaddr> {
        self.addrs.iter().filter(|a| Transport::of(a) == Transport::Quic).cloned().collect()
    }

    /// The addresses to dial now, if a dial is due: QUIC ones first.
    pub fn due_dial(&mut self, now: Instant) -> Option<Vec<Multiaddr>> {
        if self.connected() || self.next_dial > now || self.addrs.is_empty() || !self.wanted(now) {
            return None;
        }
        self.next_dial = now + REDIAL;
        let quic = self.quic_addrs();
        if !quic.is_empty() && self.quic_failures < QUIC_TRIES {
            self.quic_only_dial = true;
            return Some(quic);
        }
        // TCP too, QUIC still first; and QUIC alone again after this try.
        self.quic_only_dial = false;
        self.quic_failures = 0;
        let mut all = quic;
        all.extend(self.addrs.iter().filter(|a| Transport::of(a) == Transport::Tcp).cloned());
        Some(all)
    }

    /// QUIC addresses to try while connected over TCP only, if it is time.
    pub fn due_upgrade(&mut self, now: Instant) -> Option<Vec<Multiaddr>> {
        let tcp_only = self.connected() && self.conns.iter().all(|c| c.transport == Transport::Tcp);
        if !tcp_only || self.next_upgrade > now {
            return None;
        }
        self.next_upgrade = now + UPGRADE_EVERY;
        let quic = self.quic_addrs();
        (!quic.is_empty()).then_some(quic)
    }

    pub fn dial_failed(&mut self) {
        if self.quic_only_dial {
            self.quic_failures += 1;
        }
    }

    /// A connection opened. A QUIC one replaces the TCP ones
    /// [`TCP_OVERLAP`] later (see [`Link::due_tcp_close`]).
    pub fn opened(&mut self, id: ConnectionId, transport: Transport, now: Instant) {
        self.conns.push(Conn { id, transport, alive_at: now });
        self.used_at = now;
        if transport != Transport::Quic {
            self.next_upgrade = now + UPGRADE_FIRST;
            return;
        }
        self.next_upgrade = now + UPGRADE_EVERY;
        self.quic_failures = 0;
        self.tcp_close_at.get_or_insert(now + TCP_OVERLAP);
    }

    /// The TCP connections to close now: QUIC has been up beside them for
    /// [`TCP_OVERLAP`] and still is.
    pub fn due_tcp_close(&mut self, now: Instant) -> Vec<ConnectionId> {
        if self.tcp_close_at.is_none_or(|t| t > now) {
            return Vec::new();
        }
        self.tcp_close_at = None;
        if self.count(Transport::Quic) == 0 {
            return Vec::new();
        }
        self.conns.iter().filter(|c| c.transport == Transport::Tcp).map(|c| c.id).collect()
    }

    /// A ping on connection `id` succeeded.
    pub fn alive(&mut self, id: ConnectionId, now: Instant) {
        if let Some(c) = self.conns.iter_mut().find(|c| c.id == id) {
            c.alive_at = now;
        }
    }

    /// TCP connections silent for longer than [`SILENT_LIMIT`]: to be closed.
    /// QUIC ones are pinged rarely and judged by QUIC itself.
    pub fn silent(&self, now: Instant) -> Vec<ConnectionId> {
        let silent =
            |c: &&Conn| c.transport == Transport::Tcp && now.duration_since(c.alive_at) > SILENT_LIMIT;
        self.conns.iter().filter(silent).map(|c| c.id).collect()
    }

    pub fn count(&self, transport: Transport) -> usize {
        self.conns.iter().filter(|c| c.transport == transport).count()
    }

    /// A connection closed; true when it was the last one.
    pub fn closed(&mut self, id: ConnectionId, now: Instant) -> bool {
        let had = self.connected();
        self.conns.retain(|c| c.id != id);
        if had && !self.connected() {
            // Try again at once: the peer may have restarted, or one
            // connection of several was closed for a better one.
            self.next_dial = now;
            // It may come back as another release: learn its versions again.
            self.wire = None;
            self.incompatible = false;
            return true;
        }
        false
    }
}

/// The release a peer names in its identify agent (`atoll/0.2.0 wire/2-2`),
/// cut to what a release can look like (a member chooses the text).
pub fn release(agent: &str) -> Option<String> {
    let release = agent.strip_prefix("atoll/")?.split(' ').next()?;
    let plausible = !release.is_empty()
        && release.len() <= 32
        && release.chars().all(|c| c.is_ascii_alphanumeric() || ".-+".contains(c));
    plausible.then(|| release.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_are_read_from_agents() {
        assert_eq!(release("atoll/0.2.0 wire/2-2").as_deref(), Some("0.2.0"));
        assert_eq!(release("atoll/1.0.0-rc.1+x").as_deref(), Some("1.0.0-rc.1+x"));
        for odd in ["rust-libp2p/0.47.0", "atoll/", "atoll/\u{1b}[31m", &format!("atoll/{}", "9".repeat(40))]
        {
            assert_eq!(release(odd), None, "{odd}");
        }
    }

    fn link(now: Instant) -> Link {
        let addrs = ["/ip4/10.0.0.1/udp/7481/quic-v1", "/ip4/10.0.0.1/tcp/7481"];
        Link::new(SiteId::new("s1").unwrap(), addrs.iter().map(|a| a.parse().unwrap()).collect(), now)
    }

    #[test]
    fn quic_first_then_tcp_after_failures_then_quic_again() {
        let t0 = Instant::now();
        let mut l = link(t0);
        let first = l.due_dial(t0).unwrap();
        assert!(first.iter().all(|a| Transport::of(a) == Transport::Quic));
        assert!(l.due_dial(t0).is_none(), "not twice in a second");
        l.dial_failed();
        let second = l.due_dial(t0 + REDIAL).unwrap();
        assert_eq!(second.len(), 1);
        l.dial_failed();
        let third = l.due_dial(t0 + 2 * REDIAL).unwrap();
        assert_eq!(third.len(), 2, "TCP joins after {QUIC_TRIES} failed QUIC dials");
        assert_eq!(Transport::of(&third[0]), Transport::Quic, "QUIC stays first");
        l.dial_failed();
        assert_eq!(l.due_dial(t0 + 3 * REDIAL).unwrap().len(), 1, "then QUIC alone again");
    }

    #[test]
    fn a_tcp_link_is_upgraded_and_its_tcp_connection_closed() {
        let t0 = Instant::now();
        let mut l = link(t0);
        let tcp = ConnectionId::new_unchecked(1);
        l.opened(tcp, Transport::Tcp, t0);
        assert!(l.due_dial(t0).is_none(), "connected: no dial");
        assert!(l.due_upgrade(t0).is_none(), "not yet");
        let up = l.due_upgrade(t0 + UPGRADE_FIRST).unwrap();
        assert!(l.due_upgrade(t0 + UPGRADE_FIRST).is_none(), "then every {UPGRADE_EVERY:?}");
        assert!(up.iter().all(|a| Transport::of(a) == Transport::Quic));
        let quic = ConnectionId::new_unchecked(2);
        l.opened(quic, Transport::Quic, t0 + UPGRADE_EVERY);
        assert!(l.due_tcp_close(t0 + UPGRADE_EVERY).is_empty(), "both ends must see QUIC open first");
        assert_eq!(l.due_tcp_close(t0 + UPGRADE_EVERY + TCP_OVERLAP), vec![tcp]);
        assert!(l.due_tcp_close(t0 + UPGRADE_EVERY + TCP_OVERLAP).is_empty(), "once");
        // A QUIC connection that closed within the overlap leaves TCP up.
        let quic2 = ConnectionId::new_unchecked(3);
        let tcp2 = ConnectionId::new_unchecked(4);
        let mut other = link(t0);
        other.opened(tcp2, Transport::Tcp, t0);
        other.opened(quic2, Transport::Quic, t0);
        assert!(!other.closed(quic2, t0 + REDIAL));
        assert!(other.due_tcp_close(t0 + TCP_OVERLAP).is_empty(), "TCP is all it has");
        assert!(!l.closed(tcp, t0 + UPGRADE_EVERY), "QUIC still up");
        assert!(l.due_upgrade(t0 + 3 * UPGRADE_EVERY).is_none(), "QUIC needs no upgrade");
        assert!(l.closed(quic, t0 + 3 * UPGRADE_EVERY), "the last one");
        assert!(l.due_dial(t0 + 3 * UPGRADE_EVERY).is_some(), "dialled again at once");
    }

    #[test]
    fn a_member_whose_subscription_is_lost_is_reset_once_in_a_while() {
        let t0 = Instant::now();
        let mut l = link(t0);
        assert!(!l.gossip_lost(t0 + GOSSIP_GRACE * 2, false), "not connected: nothing to reset");
        l.opened(ConnectionId::new_unchecked(1), Transport::Quic, t0);
        assert!(!l.gossip_lost(t0, false));
        assert!(!l.gossip_lost(t0 + GOSSIP_GRACE / 2, true), "heard subscribing");
        assert!(!l.gossip_lost(t0 + GOSSIP_GRACE, false), "the grace starts again");
        assert!(l.gossip_lost(t0 + GOSSIP_GRACE * 2, false));
        let later = t0 + GOSSIP_GRACE * 4;
        assert!(!l.gossip_lost(later, false) && !l.gossip_lost(later + GOSSIP_GRACE, false), "not in a loop");
        assert!(l.gossip_lost(t0 + GOSSIP_RESET_EVERY + GOSSIP_GRACE * 3, false));
    }

    #[test]
    fn a_link_not_kept_is_dialled_for_a_message_and_closed_when_idle() {
        let t0 = Instant::now();
        let mut l = link(t0);
        l.kept = false;
        assert!(l.due_dial(t0).is_none(), "nothing to send: not dialled");
        let msg = || PeerMsg::ReachAsk { id: 1 };
        assert!(!l.enqueue(msg(), t0));
        assert!(l.due_dial(t0).is_some(), "dialled at once for a message");
        assert!(l.due_dial(t0 + REDIAL / 2).is_none(), "then paced");
        for _ in 0..MAX_QUEUED - 1 {
            assert!(!l.enqueue(msg(), t0));
        }
        assert!(l.enqueue(msg(), t0), "the queue is bounded");
        let c = ConnectionId::new_unchecked(3);
        l.opened(c, Transport::Quic, t0 + REDIAL);
        assert_eq!(l.take_queue().len(), MAX_QUEUED);
        assert!(!l.idle(t0 + IDLE_CLOSE), "wanted, and just used");
        l.used(t0 + IDLE_CLOSE);
        assert!(!l.idle(t0 + IDLE_CLOSE * 2 - REDIAL));
        assert!(l.idle(t0 + IDLE_CLOSE * 2), "idle: closed");
        l.kept = true;
        assert!(!l.idle(t0 + IDLE_CLOSE * 3), "a kept link stays");
    }

    #[test]
    fn a_queue_for_a_member_out_of_reach_is_given_up() {
        let t0 = Instant::now();
        let mut l = link(t0);
        l.kept = false;
        l.enqueue(PeerMsg::ReachAsk { id: 1 }, t0);
        assert!(!l.give_up(t0 + IDLE_CLOSE / 2), "still dialled");
        assert!(l.give_up(t0 + IDLE_CLOSE), "not reached in time");
        assert!(l.due_dial(t0 + IDLE_CLOSE).is_none() && !l.give_up(t0 + IDLE_CLOSE));
    }

    #[test]
    fn a_connection_whose_pings_stop_is_found_silent() {
        let t0 = Instant::now();
        let mut l = link(t0);
        let c = ConnectionId::new_unchecked(7);
        l.opened(c, Transport::Tcp, t0);
        assert!(l.silent(t0 + SILENT_LIMIT).is_empty(), "young connections get their chance");
        l.alive(c, t0 + Duration::from_secs(2));
        assert!(l.silent(t0 + Duration::from_secs(4)).is_empty(), "one lost ping is no cut");
        assert_eq!(l.silent(t0 + Duration::from_secs(6)), vec![c]);
        let q = ConnectionId::new_unchecked(8);
        l.opened(q, Transport::Quic, t0);
        assert_eq!(l.silent(t0 + Duration::from_secs(60)), vec![c], "QUIC judges its own connections");
    }
}
