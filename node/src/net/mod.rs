//! The peer network: a libp2p swarm over QUIC, with TCP+noise+yamux as the
//! fallback, that carries the peer core's messages between members only.
//!
//! Protocols: `/atoll/sync/1` (request-response; one `PeerMsg` per request,
//! an empty acknowledgement back), `/atoll/join/1` (request-response; an
//! invitation in, the realm document out), `/atoll/chunk/1` (request-response;
//! a chunk hash in, its bytes out), `/atoll/logs/1` (request-response; an
//! instance's name in, the tail of its output out), gossipsub topic `atoll/summary/1`
//! (each site's summary, ephemeral), identify and ping. A connection from a
//! peer whose key is not a member's may only present an invitation, within
//! [`STRANGER_GRACE`], and is sent no summary meanwhile (its gossip score is
//! below the graylist); a peer that sends anything malformed is blocked.

mod codec;
mod links;
mod liveness;
mod nudge;
mod requests;
mod swarm;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use atoll_crdt::{Member, Realm, SiteId};
use atoll_proto::api::SiteView;
use atoll_proto::membership::JoinRequest;
use atoll_proto::{ApiError, Input, PeerMsg, wire};
use futures_util::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self as rr, OutboundRequestId, ResponseChannel};
use libp2p::swarm::{SwarmEvent, dial_opts::DialOpts};
use libp2p::{Multiaddr, PeerId, Swarm, gossipsub, identify, identity, mdns, ping};
use serde::Serialize;

pub use codec::Frames;
use libp2p::swarm::{ConnectionId, dial_opts::PeerCondition};
use links::{Link, Transport};
use swarm::{Behaviour, BehaviourEvent, NOT_TAKEN, SUMMARY_TOPIC};

/// How long a non-member may stay connected to present an invitation.
pub const STRANGER_GRACE: Duration = Duration::from_secs(10);
/// Non-members connected at once; beyond, a new one is closed at once.
const MAX_STRANGERS: usize = 64;
/// A stranger's gossip score: below gossipsub's graylist threshold (-80), so
/// it is sent no summary, kept out of the mesh and not listened to while its
/// grace runs; a member's is 0.
const STRANGER_SCORE: f64 = -100.0;

/// Peers, and addresses per peer, remembered from mDNS.
const MAX_LAN_PEERS: usize = 256;
const MAX_LAN_ADDRS: usize = 8;
/// How long a removed site stays connected, still synced with, before it is
/// blocked: long enough for the realm change telling it to reach it (a sync
/// may need a round trip, and a loaded host takes its time).
const REMOVAL_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("bad peer address {0:?}: {1}")]
    Address(String, String),
    #[error("cannot listen on {0}: {1}")]
    Listen(Multiaddr, String),
    #[error("peer network setup: {0}")]
    Setup(String),
    #[error("{0}")]
    Join(String),
}

/// Where the swarm listens and whom it calls first.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub listen: Vec<Multiaddr>,
    /// Addresses published to other members instead of the listen addresses.
    pub advertise: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    /// Find members on the local network by mDNS.
    pub mdns: bool,
}

/// Application bytes and messages through the network (payloads, without
/// QUIC/TLS/noise framing), for `GET /v1/network` and the benchmarks.
#[derive(Debug, Default, Serialize, schemars::JsonSchema)]
pub struct Traffic {
    pub sent_msgs: AtomicU64,
    pub sent_bytes: AtomicU64,
    pub recv_msgs: AtomicU64,
    pub recv_bytes: AtomicU64,
    /// Connections of non-members that ended without a join, and peers blocked
    /// for breaking the protocol.
    pub refused_peers: AtomicU64,
    /// Changes from peers refused by the provenance gates (docs/architecture.md, "Provenance").
    pub refused_changes: AtomicU64,
    /// Bytes of image chunks received from peers (answers to our fetches).
    pub fetched_bytes: AtomicU64,
    /// Image fetches under way (refreshed every second).
    #[schemars(with = "Vec<crate::fetch::Progress>")]
    pub fetches: std::sync::Mutex<Vec<crate::fetch::Progress>>,
    /// The connections to each member, by transport (refreshed every second).
    #[schemars(with = "Vec<LinkView>")]
    pub links: std::sync::Mutex<Vec<LinkView>>,
    /// The summary this site last gossiped (for `/metrics`).
    #[serde(skip)]
    #[schemars(skip)]
    pub published: std::sync::Mutex<Option<SiteView>>,
    /// Sync traffic with each member (payloads), for `/metrics`.
    #[serde(skip)]
    #[schemars(skip)]
    pub sync_by_site: std::sync::Mutex<BTreeMap<SiteId, PeerSync>>,
    /// This site's figures that are not gossiped (for `/metrics`).
    #[serde(skip)]
    #[schemars(skip)]
    pub stats: std::sync::Mutex<Option<atoll_proto::stats::Stats>>,
    /// When a member's message last brought changes this site did not hold,
    /// per document (`realm`, `site/NAME`; Unix time, milliseconds): how fresh
    /// replication is here, and when a write made elsewhere arrived.
    pub changes_received_at: std::sync::Mutex<BTreeMap<String, u64>>,
}

/// Sync messages and payload bytes exchanged with one member.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PeerSync {
    pub sent_msgs: u64,
    pub sent_bytes: u64,
    pub recv_msgs: u64,
    pub recv_bytes: u64,
}

impl Traffic {
    /// Counts a sync message to (`sent`) or from a member.
    fn sync_with(&self, site: &SiteId, bytes: usize, sent: bool) {
        if let Ok(mut by) = self.sync_by_site.lock() {
            let e = by.entry(site.clone()).or_default();
            if sent {
                e.sent_msgs += 1;
                e.sent_bytes += bytes as u64;
            } else {
                e.recv_msgs += 1;
                e.recv_bytes += bytes as u64;
            }
        }
    }

    /// Notes that changes to `doc` arrived from a member at `at`.
    pub fn changes_received(&self, doc: &atoll_proto::DocId, at: u64) {
        if let Ok(mut by) = self.changes_received_at.lock() {
            // Bounded: the realm and at most one site document per member
            // (an entry stays after its document is dropped).
            by.insert(doc.to_string(), at);
        }
    }

    fn sent(&self, bytes: usize) {
        self.sent_msgs.fetch_add(1, Ordering::Relaxed);
        self.sent_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }
    fn recv(&self, bytes: usize) {
        self.recv_msgs.fetch_add(1, Ordering::Relaxed);
        self.recv_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// Longest self-description kept for a peer not yet a member.
const MAX_AGENT: usize = 256;

/// A connected peer that is no member (yet): a joiner, or a stranger whose
/// grace runs out.
struct Stranger {
    since: Instant,
    conns: Vec<(ConnectionId, Transport)>,
    /// What it said of itself (identify's agent), applied if it becomes a member.
    agent: Option<String>,
}

/// A member and how we are connected to it, for `GET /v1/network`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct LinkView {
    pub site: SiteId,
    pub quic: usize,
    pub tcp: usize,
    /// The release it runs, as it said when it connected (None: not known
    /// yet, or 0.1.0, which did not say).
    pub release: Option<String>,
    /// The wire version spoken with it.
    pub wire: u16,
}

/// Why a request to a member was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsent {
    /// The site is not a member this network knows.
    NotMember,
    /// Its kept link is down now (it is redialled every second).
    LinkDown,
}

/// What the event loop has to act on after a network event.
pub enum Event {
    Input(Input),
    Join {
        request: JoinRequest,
        channel: ResponseChannel<Vec<u8>>,
    },
    /// Our listen addresses changed: publish them in our membership record.
    Addrs(Vec<String>),
    /// A member asks for an image chunk.
    ChunkWanted {
        hash: String,
        channel: ResponseChannel<Vec<u8>>,
    },
    /// The answer to one of our chunk requests (empty: not held there).
    Chunk {
        request: OutboundRequestId,
        result: Result<Vec<u8>, String>,
    },
    /// A member asks for the output of one of our instances.
    LogsWanted {
        request: wire::LogsRequest,
        channel: ResponseChannel<Vec<u8>>,
    },
    /// The answer to one of our logs requests.
    Logs {
        request: OutboundRequestId,
        result: Result<Vec<u8>, ApiError>,
    },
}

pub struct Net {
    swarm: Swarm<Behaviour>,
    /// Members by peer id; refreshed when the realm's membership changes.
    members: HashMap<PeerId, Link>,
    peer_of: HashMap<SiteId, PeerId>,
    /// Members with at least one open connection.
    connected: HashSet<PeerId>,
    /// Connected non-members: when they came, and their connections.
    strangers: HashMap<PeerId, Stranger>,
    /// Removed sites and when they get blocked: a moment later, so that the
    /// realm change telling them reaches them first. Until then a connected
    /// one stays connected and synced with (its changes pass the realm's
    /// gate only if they do not know of its removal).
    removed: HashMap<PeerId, (SiteId, Instant)>,
    /// Addresses found by mDNS, members or not yet (a site may learn of a
    /// member after its announcement was heard); bounded.
    lan: HashMap<PeerId, Vec<Multiaddr>>,
    listening: Vec<Multiaddr>,
    settings: Settings,
    topic: gossipsub::IdentTopic,
    pub traffic: Arc<Traffic>,
    /// Messages dropped from a queue (overflow, a member not reached in
    /// time): the core is told at the next tick, so that the pair's sync
    /// state starts afresh. At most one per member.
    undelivered: HashSet<SiteId>,
}

impl crate::fetch::Source<OutboundRequestId> for Net {
    fn reaches(&mut self, site: &SiteId) -> bool {
        self.reach_or_dial(site)
    }
    fn request(&mut self, site: &SiteId, hash: &str) -> Option<OutboundRequestId> {
        self.request_chunk(site, hash)
    }
}

/// The libp2p identity of a site: its own ed25519 key.
pub fn keypair(key: &ed25519_dalek::SigningKey) -> identity::Keypair {
    let mut secret = key.to_bytes();
    identity::Keypair::ed25519_from_bytes(&mut secret).expect("a 32-byte ed25519 secret is always valid")
}

/// The peer id of a member, from the hex public key in its record.
pub fn peer_id(public_key_hex: &str) -> Option<PeerId> {
    let bytes = hex::decode(public_key_hex).ok()?;
    let key = identity::ed25519::PublicKey::try_from_bytes(&bytes).ok()?;
    Some(identity::PublicKey::from(key).to_peer_id())
}

impl Net {
    pub fn new(key: &ed25519_dalek::SigningKey, settings: Settings) -> Result<Net, NetError> {
        let setup = |e: &dyn std::fmt::Display| NetError::Setup(e.to_string());
        let keys = keypair(key);
        let swarm = swarm::build(keys, settings.mdns)?;
        let topic = gossipsub::IdentTopic::new(SUMMARY_TOPIC);
        let mut net = Net {
            swarm,
            members: HashMap::new(),
            peer_of: HashMap::new(),
            connected: HashSet::new(),
            strangers: HashMap::new(),
            removed: HashMap::new(),
            lan: HashMap::new(),
            listening: Vec::new(),
            settings,
            topic,
            traffic: Arc::default(),
            undelivered: HashSet::new(),
        };
        net.swarm.behaviour_mut().gossip.subscribe(&net.topic).map_err(|e| setup(&e))?;
        for addr in net.settings.listen.clone() {
            net.swarm.listen_on(addr.clone()).map_err(|e| NetError::Listen(addr, e.to_string()))?;
        }
        for addr in net.settings.bootstrap.clone() {
            if let Err(e) = net.swarm.dial(addr.clone()) {
                tracing::warn!(%addr, "cannot dial bootstrap peer: {e}");
            }
        }
        Ok(net)
    }

    pub fn local_peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    /// Re-reads membership from the realm; returns `Connected` inputs for peers
    /// that just became members while connected (a site that joined through us).
    pub fn refresh(&mut self, realm: &Realm, me: &SiteId) -> Vec<Input> {
        let members: Vec<Member> = realm.members().unwrap_or_default();
        // Removed sites are refused at the transport from now on.
        let mut gone = Vec::new();
        for r in realm.doc.list::<atoll_crdt::Removal>().unwrap_or_default() {
            if &r.site == me {
                tracing::error!(by = %r.by, "this site was removed from the realm: its peers refuse it");
                continue;
            }
            let Some(peer) = peer_id(&r.public_key) else { continue };
            if self.swarm.behaviour().blocked.blocked_peers().contains(&peer)
                || self.removed.contains_key(&peer)
            {
                continue;
            }
            tracing::info!(site = %r.site, by = %r.by, "site removed from the realm; refusing it");
            self.removed.insert(peer, (r.site.clone(), Instant::now() + REMOVAL_GRACE));
            self.swarm.behaviour_mut().gossip.set_application_score(&peer, STRANGER_SCORE);
        }
        let seats: Vec<atoll_proto::sync::Seat> = members.iter().map(Into::into).collect();
        let kept = atoll_proto::overlay::kept(&seats, me);
        let mut next = HashMap::new();
        for m in members.into_iter().filter(|m| &m.site != me) {
            let Some(peer) = peer_id(&m.public_key) else { continue };
            let mut addrs: Vec<Multiaddr> = m.addrs.iter().filter_map(|a| a.parse().ok()).collect();
            for a in self.lan.get(&peer).into_iter().flatten() {
                if !addrs.contains(a) {
                    addrs.push(a.clone());
                }
            }
            for a in &addrs {
                self.swarm.add_peer_address(peer, a.clone());
            }
            let mut link = match self.members.remove(&peer) {
                Some(mut k) => {
                    k.addrs = addrs;
                    k
                }
                None => Link::new(m.site, addrs, Instant::now()),
            };
            link.kept = kept.contains(&link.site);
            next.insert(peer, link);
        }
        self.members = next;
        self.peer_of = self.members.iter().map(|(p, k)| (k.site.clone(), *p)).collect();
        let welcomed: Vec<PeerId> =
            self.strangers.keys().filter(|p| self.members.contains_key(p)).copied().collect();
        gone.extend(welcomed.into_iter().filter_map(|p| {
            let stranger = self.strangers.remove(&p)?;
            self.swarm.behaviour_mut().gossip.set_application_score(&p, 0.0);
            let link = self.members.get_mut(&p)?;
            for (c, t) in stranger.conns {
                link.opened(c, t, Instant::now());
            }
            // It described itself before it was a member (a site that just
            // joined through us): its versions must not be forgotten.
            if let Some(agent) = stranger.agent {
                link.identified(&agent);
            }
            self.connected.insert(p);
            let site = link.site.clone();
            tracing::info!(%site, "member connected");
            Some(Input::Connected(site))
        }));
        gone
    }

    /// Housekeeping, once a second: dials members we miss, offers QUIC to
    /// members reached over TCP only, closes connections of strangers whose
    /// grace ran out, and refreshes the link figures.
    /// Returns the removed sites whose grace ended while connected (now
    /// disconnected for the core).
    pub fn tick(&mut self) -> Vec<Input> {
        let now = Instant::now();
        let mut links: Vec<LinkView> = self
            .members
            .values()
            .map(|l| LinkView {
                site: l.site.clone(),
                quic: l.count(Transport::Quic),
                tcp: l.count(Transport::Tcp),
                release: l.release.clone(),
                wire: l.wire.unwrap_or(wire::OLDEST),
            })
            .collect();
        links.sort_by(|a, b| a.site.cmp(&b.site));
        if let Ok(mut l) = self.traffic.links.lock() {
            *l = links;
        }
        let expired: Vec<PeerId> = self
            .strangers
            .iter()
            .filter(|(_, s)| now.duration_since(s.since) > STRANGER_GRACE)
            .map(|(p, _)| *p)
            .collect();
        for p in expired {
            tracing::info!(peer = %p, "closing connection of a non-member");
            let _ = self.swarm.disconnect_peer_id(p);
        }
        let due: Vec<PeerId> = self.removed.iter().filter(|(_, (_, t))| now >= *t).map(|(p, _)| *p).collect();
        let mut gone = Vec::new();
        for p in due {
            if let Some((site, _)) = self.removed.remove(&p)
                && self.connected.remove(&p)
            {
                gone.push(Input::Disconnected(site));
            }
            self.swarm.behaviour_mut().blocked.block_peer(p);
        }
        let topic = self.topic.hash();
        let subscribed: HashSet<PeerId> = (self.swarm.behaviour().gossip.all_peers())
            .filter(|(_, topics)| topics.contains(&&topic))
            .map(|(p, _)| *p)
            .collect();
        let mut dials = Vec::new();
        let mut silent = Vec::new();
        let mut reset = Vec::new();
        let mut replaced = Vec::new();
        let mut idle = Vec::new();
        for (peer, link) in self.members.iter_mut() {
            if link.idle(now) {
                idle.push((*peer, link.site.clone()));
            }
            if link.give_up(now) {
                tracing::debug!(site = %link.site, "not reached in time: its queued messages are dropped");
                self.undelivered.insert(link.site.clone());
            }
            if link.gossip_lost(now, subscribed.contains(peer)) {
                reset.push((*peer, link.site.clone()));
            }
            silent.extend(link.silent(now).into_iter().map(|c| (link.site.clone(), c)));
            replaced.extend(link.due_tcp_close(now));
            // Dials overlap (`Disconnected`, not `NotDialing`): one started
            // into a cut must not hold back the one that finds the path back.
            if let Some(addrs) = link.due_dial(now) {
                dials.push((*peer, addrs, PeerCondition::Disconnected));
            } else if let Some(addrs) = link.due_upgrade(now) {
                dials.push((*peer, addrs, PeerCondition::Always));
            }
        }
        for (site, c) in silent {
            tracing::info!(%site, "connection silent for {:?}: closing it", links::SILENT_LIMIT);
            if !self.swarm.close_connection(c) {
                // The swarm no longer has it: no close event will come.
                let peer = self.peer_of.get(&site).copied();
                if let Some(link) = peer.and_then(|p| self.members.get_mut(&p)) {
                    link.closed(c, now);
                }
            }
        }
        for (peer, site) in idle {
            tracing::debug!(%site, "closing an idle connection that is not an overlay link");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        gone.extend(self.undelivered.drain().map(Input::Undelivered));
        for tcp in replaced {
            tracing::debug!("QUIC is up: closing a TCP connection it replaces");
            self.swarm.close_connection(tcp);
        }
        for (peer, site) in reset {
            tracing::info!(%site, "its summaries cannot reach it (gossip lost its subscription): reconnecting");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        for (peer, addrs, condition) in dials {
            let opts = DialOpts::peer_id(peer).addresses(addrs).condition(condition).build();
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(%peer, "dial: {e}");
            }
        }
        gone
    }

    pub fn send(&mut self, to: &SiteId, msg: &PeerMsg) {
        let Some(peer) = self.peer_for(to) else { return };
        if !self.connected.contains(&peer) {
            // A member we keep no connection to: dialled for this message,
            // which waits for the connection (atoll_proto::overlay::kept).
            // A kept one out of reach is dialled anyway; what the core sends
            // it meanwhile is caught up by the digests on reconnect.
            if let Some(link) = self.members.get_mut(&peer).filter(|l| !l.kept) {
                if link.enqueue(msg.clone(), Instant::now()) {
                    self.undelivered.insert(to.clone());
                }
                self.dial_now(peer);
            }
            return;
        }
        let link = self.members.get_mut(&peer);
        if link.as_ref().is_some_and(|l| l.incompatible) {
            return;
        }
        let link = link.map(|l| {
            l.used(Instant::now());
            &*l
        });
        let version = link.and_then(|l| l.wire).unwrap_or(wire::OLDEST);
        if msg.since() > version {
            // It would not decode it: the asking call goes without its answer.
            tracing::debug!(%to, version, "message of a newer wire version not sent");
            return;
        }
        let bytes = msg.encode_as(version);
        self.traffic.sent(bytes.len());
        self.traffic.sync_with(to, bytes.len(), true);
        self.swarm.behaviour_mut().sync.send_request(&peer, bytes);
    }

    /// Whether a member has an open connection now.
    pub fn reaches(&self, site: &SiteId) -> bool {
        self.peer_of.get(site).is_some_and(|p| self.connected.contains(p))
    }

    /// Whether a member has an open connection now; if not, one that is not
    /// a kept link is dialled (for a fetch that will ask it again).
    fn reach_or_dial(&mut self, site: &SiteId) -> bool {
        if self.reaches(site) {
            return true;
        }
        if let Some(peer) = self.peer_of.get(site).copied()
            && let Some(link) = self.members.get_mut(&peer).filter(|l| !l.kept)
        {
            link.want(Instant::now());
            self.dial_now(peer);
        }
        false
    }

    /// Dials a member now if its link says a dial is due (paced by REDIAL).
    fn dial_now(&mut self, peer: PeerId) {
        let Some(addrs) = self.members.get_mut(&peer).and_then(|l| l.due_dial(Instant::now())) else {
            return;
        };
        let opts = DialOpts::peer_id(peer).addresses(addrs).condition(PeerCondition::Disconnected).build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(%peer, "dial: {e}");
        }
    }

    /// A message went to or came from a member (keeps a link that is not kept open).
    fn touch(&mut self, peer: &PeerId) {
        if let Some(link) = self.members.get_mut(peer) {
            link.used(Instant::now());
        }
    }

    pub fn publish(&mut self, view: &SiteView) {
        if self.connected.is_empty() {
            return;
        }
        let bytes = wire::encode(view);
        self.traffic.sent(bytes.len());
        if let Err(e) = self.swarm.behaviour_mut().gossip.publish(self.topic.clone(), bytes) {
            tracing::debug!("summary not published: {e}");
        }
        // Queues are not empty now: a handler nothing woke opens its stream.
        self.swarm.behaviour_mut().nudge.all();
    }

    /// Closes every connection and waits, at most `within`, for the closes
    /// to go out. Peers then see a planned stop at once rather than after
    /// QUIC's idle timeout, and a site that restarts quickly finds no stale
    /// connection of its old process at its peers (a new connection beside a
    /// stale one gets no gossip subscriptions: see [`links::Link::gossip_lost`]).
    pub async fn close(&mut self, within: Duration) {
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in peers {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        let all_closed = async {
            while self.swarm.connected_peers().next().is_some() {
                let _ = self.swarm.select_next_some().await;
            }
        };
        if tokio::time::timeout(within, all_closed).await.is_err() {
            tracing::debug!("connections still closing at exit");
        }
    }

    /// Waits for the next network event the loop must act on.
    pub async fn next(&mut self) -> Event {
        loop {
            let ev = self.swarm.select_next_some().await;
            if let Some(out) = self.on_swarm(ev) {
                return out;
            }
        }
    }

    /// The site of a member's peer id, or of a removed site's in its grace.
    fn site_of(&self, peer: &PeerId) -> Option<SiteId> {
        self.members
            .get(peer)
            .map(|k| k.site.clone())
            .or_else(|| self.removed.get(peer).map(|(s, _)| s.clone()))
    }

    /// The peer id of a member, or of a removed site in its grace.
    fn peer_for(&self, site: &SiteId) -> Option<PeerId> {
        let parting = || self.removed.iter().find(|(_, (s, _))| s == site).map(|(p, _)| *p);
        self.peer_of.get(site).copied().or_else(parting)
    }

    /// Whether a summary goes on (gossipsub forwards only what is accepted),
    /// and what it tells. Its author is `message.source`, whose signature
    /// gossipsub checked: a member's malformed summary, or one about another
    /// site, blocks that member, never the honest relay that passed it on.
    fn judge_summary(
        &mut self,
        message: &gossipsub::Message,
    ) -> (gossipsub::MessageAcceptance, Option<Event>) {
        use gossipsub::MessageAcceptance::{Accept, Ignore, Reject};
        let Some(author) = message.source else { return (Reject, None) };
        let Some(from) = self.members.get(&author).map(|k| k.site.clone()) else {
            // A non-member's, or a member's we have not heard of yet: not ours to pass on.
            tracing::debug!(%author, "summary from a non-member ignored");
            return (Ignore, None);
        };
        match wire::decode::<SiteView>(&message.data, wire::MAX_GOSSIP) {
            Ok(view) if view.descriptor.site == from => {
                (Accept, Some(Event::Input(Input::Summary { from, view: Box::new(view) })))
            }
            Ok(view) => {
                let why = format!("summary of {} signed by {from}", view.descriptor.site);
                self.punish(author, &why);
                (Reject, None)
            }
            Err(e) => {
                self.punish(author, &format!("undecodable summary: {e}"));
                (Reject, None)
            }
        }
    }

    /// Blocks a peer that broke the protocol; it is refused from now on.
    fn punish(&mut self, peer: PeerId, why: &str) {
        tracing::warn!(%peer, site = ?self.site_of(&peer), "blocking peer: {why}");
        self.traffic.refused_peers.fetch_add(1, Ordering::Relaxed);
        self.swarm.behaviour_mut().blocked.block_peer(peer);
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) -> Option<Event> {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "peer network listening");
                self.listening.push(address);
                Some(Event::Addrs(self.published()))
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listening.retain(|a| a != &address);
                Some(Event::Addrs(self.published()))
            }
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
                let transport = Transport::of(endpoint.get_remote_address());
                let Some(link) = self.members.get_mut(&peer_id) else {
                    if self.strangers.len() >= MAX_STRANGERS && !self.strangers.contains_key(&peer_id) {
                        tracing::debug!(peer = %peer_id, "too many non-members connected: closing");
                        self.swarm.close_connection(connection_id);
                        return None;
                    }
                    self.swarm.behaviour_mut().gossip.set_application_score(&peer_id, STRANGER_SCORE);
                    let stranger = self.strangers.entry(peer_id).or_insert_with(|| Stranger {
                        since: Instant::now(),
                        conns: Vec::new(),
                        agent: None,
                    });
                    stranger.conns.push((connection_id, transport));
                    return None;
                };
                let site = link.site.clone();
                // Scores outlive connections: one made as a stranger is lifted.
                self.swarm.behaviour_mut().gossip.set_application_score(&peer_id, 0.0);
                link.opened(connection_id, transport, Instant::now());
                if self.connected.insert(peer_id) {
                    tracing::info!(%site, ?transport, "member connected");
                    return Some(Event::Input(Input::Connected(site)));
                }
                None
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, num_established, cause, .. } => {
                if let Some(link) = self.members.get_mut(&peer_id) {
                    link.closed(connection_id, Instant::now());
                }
                // Forget it among a stranger's connections too: one that
                // closed before the stranger became a member must not be
                // handed to its link (a stale QUIC entry kept the link
                // "connected" over QUIC with UDP blocked, so it never redialled).
                if let Some(s) = self.strangers.get_mut(&peer_id) {
                    s.conns.retain(|(c, _)| *c != connection_id);
                }
                if num_established > 0 {
                    return None;
                }
                // A non-member's connection ended without it joining (either
                // side may close first: each treats the other as a stranger).
                if self.strangers.remove(&peer_id).is_some() {
                    self.traffic.refused_peers.fetch_add(1, Ordering::Relaxed);
                }
                if self.connected.remove(&peer_id) {
                    let site = self.site_of(&peer_id)?;
                    let why = cause.map_or_else(|| "closed".to_owned(), |c| c.to_string());
                    tracing::info!(%site, "member disconnected: {why}");
                    return Some(Event::Input(Input::Disconnected(site)));
                }
                None
            }
            SwarmEvent::OutgoingConnectionError { peer_id: Some(peer), .. } => {
                if let Some(link) = self.members.get_mut(&peer) {
                    link.dial_failed();
                }
                None
            }
            SwarmEvent::Behaviour(b) => self.on_behaviour(b),
            _ => None,
        }
    }

    fn on_behaviour(&mut self, ev: BehaviourEvent) -> Option<Event> {
        match ev {
            BehaviourEvent::Sync(rr::Event::Message {
                peer,
                message: rr::Message::Request { request, channel, .. },
                ..
            }) => {
                self.traffic.recv(request.len());
                let Some(from) = self.site_of(&peer).filter(|_| self.connected.contains(&peer)) else {
                    // Not a member as far as our realm replica knows: it may have
                    // joined through another site a moment ago. Not taken, and
                    // told so, so that it does not count it delivered; once its
                    // record reaches us it is welcomed and synced, else its grace ends.
                    tracing::debug!(%peer, "sync message from a non-member not taken");
                    let _ = self.swarm.behaviour_mut().sync.send_response(channel, NOT_TAKEN.to_vec());
                    return None;
                };
                let _ = self.swarm.behaviour_mut().sync.send_response(channel, Vec::new());
                self.touch(&peer);
                self.traffic.sync_with(&from, request.len(), false);
                match PeerMsg::decode(&request) {
                    Ok(msg) => Some(Event::Input(Input::Message { from, msg })),
                    Err(e) => {
                        self.punish(peer, &format!("undecodable sync message: {e}"));
                        None
                    }
                }
            }
            BehaviourEvent::Join(e) => self.on_join(e),
            BehaviourEvent::Chunk(e) => self.on_chunk(e),
            BehaviourEvent::Logs(e) => self.on_logs(e),
            BehaviourEvent::Gossip(gossipsub::Event::Message { message, propagation_source, message_id }) => {
                self.traffic.recv(message.data.len());
                let (verdict, summary) = self.judge_summary(&message);
                self.swarm.behaviour_mut().gossip.report_message_validation_result(
                    &message_id,
                    &propagation_source,
                    verdict,
                );
                summary
            }
            // Only members are dialled: a stranger found on the LAN is none of ours.
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    if self.lan.len() < MAX_LAN_PEERS || self.lan.contains_key(&peer) {
                        let known = self.lan.entry(peer).or_default();
                        if known.len() < MAX_LAN_ADDRS && !known.contains(&addr) {
                            known.push(addr.clone());
                        }
                    }
                    if let Some(k) = self.members.get_mut(&peer) {
                        self.swarm.add_peer_address(peer, addr.clone());
                        if !k.addrs.contains(&addr) {
                            k.addrs.push(addr);
                            k.dial_soon(Instant::now());
                        }
                    }
                }
                None
            }
            BehaviourEvent::Mdns(mdns::Event::Expired(gone)) => {
                for (peer, addr) in gone {
                    if let Some(known) = self.lan.get_mut(&peer) {
                        known.retain(|a| a != &addr);
                        if known.is_empty() {
                            self.lan.remove(&peer);
                        }
                    }
                }
                None
            }
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                let Some(link) = self.members.get_mut(&peer_id) else {
                    if let Some(s) = self.strangers.get_mut(&peer_id) {
                        s.agent = Some(info.agent_version.chars().take(MAX_AGENT).collect());
                    }
                    return None;
                };
                link.identified(&info.agent_version);
                let (site, queued) = (link.site.clone(), link.take_queue());
                for a in info.listen_addrs {
                    self.swarm.add_peer_address(peer_id, a);
                }
                // Messages that waited for this connection and its version.
                for msg in &queued {
                    self.send(&site, msg);
                }
                None
            }
            // A sync message lost or not taken: the core resets that pair's sync state.
            BehaviourEvent::Sync(rr::Event::OutboundFailure { peer, error, .. }) => {
                tracing::debug!(%peer, "sync message not delivered: {error}");
                self.site_of(&peer).map(|s| Event::Input(Input::Undelivered(s)))
            }
            BehaviourEvent::Sync(rr::Event::Message {
                peer,
                message: rr::Message::Response { response, .. },
                ..
            }) if !response.is_empty() => {
                tracing::debug!(%peer, "sync message not taken");
                self.site_of(&peer).map(|s| Event::Input(Input::Undelivered(s)))
            }
            BehaviourEvent::Ping(ping::Event { peer, connection, result: Ok(_) }) => {
                if let Some(link) = self.members.get_mut(&peer) {
                    link.alive(connection, Instant::now());
                }
                None
            }
            BehaviourEvent::Ping(ping::Event { peer, connection, result: Err(e) }) => {
                tracing::info!(site = ?self.site_of(&peer), "connection silent: {e}; closing it");
                self.swarm.close_connection(connection);
                None
            }
            _ => None,
        }
    }

    /// Our addresses as other members should dial them.
    fn published(&self) -> Vec<String> {
        let me = self.local_peer_id();
        let base =
            if self.settings.advertise.is_empty() { &self.listening } else { &self.settings.advertise };
        base.iter()
            .filter(|a| !a.iter().any(|p| matches!(p, Protocol::Ip4(ip) if ip.is_unspecified())))
            .map(|a| a.clone().with_p2p(me).unwrap_or_else(|a| a).to_string())
            .take(atoll_proto::membership::MAX_ADDRS)
            .collect()
    }

    /// Our listen addresses for a membership record (after `join` has run).
    pub fn addresses(&self) -> Vec<String> {
        self.published()
    }
}
