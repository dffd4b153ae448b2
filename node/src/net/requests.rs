//! The request-response protocols besides sync: `/atoll/join/1` (an
//! invitation in, the realm document out), `/atoll/chunk/1` (a chunk hash in,
//! its bytes out) and `/atoll/logs/1` (an instance's name in, the tail of its
//! output out). Only members are answered; a peer that sends something
//! undecodable is blocked.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use atoll_crdt::{Member, SiteId};
use atoll_proto::membership::JoinRequest;
use atoll_proto::{ApiError, wire};
use futures_util::StreamExt;
use libp2p::request_response::{self as rr, OutboundRequestId, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, multiaddr::Protocol};

use super::swarm::{BehaviourEvent, REQUEST_TIMEOUT};
use super::{Event, Net, NetError, Unsent, peer_id};

impl Net {
    /// Asks a connected member for a chunk; None when it is not connected.
    pub fn request_chunk(&mut self, from: &SiteId, hash: &str) -> Option<OutboundRequestId> {
        let peer = self.peer_of.get(from).copied().filter(|p| self.connected.contains(p))?;
        self.touch(&peer);
        let bytes = wire::encode(&wire::ChunkRequest { hash: hash.to_owned() });
        self.traffic.sent(bytes.len());
        Some(self.swarm.behaviour_mut().chunk.send_request(&peer, bytes))
    }

    /// Answers a chunk request (empty bytes: not held here).
    pub fn answer_chunk(&mut self, channel: ResponseChannel<Vec<u8>>, bytes: Vec<u8>) {
        self.traffic.sent(bytes.len());
        let _ = self.swarm.behaviour_mut().chunk.send_response(channel, bytes);
    }

    /// Asks a member for an instance's output. A member we keep no
    /// connection to is dialled (the request waits for the connection, up to
    /// its timeout); a kept link that is down is not sent to: it is dialled
    /// every second anyway, and the caller decides how long to wait for it.
    pub fn request_logs(
        &mut self,
        from: &SiteId,
        request: &wire::LogsRequest,
    ) -> Result<OutboundRequestId, Unsent> {
        let peer = self.peer_of.get(from).copied().ok_or(Unsent::NotMember)?;
        if !self.connected.contains(&peer) {
            let link = self.members.get_mut(&peer).ok_or(Unsent::NotMember)?;
            if link.kept {
                return Err(Unsent::LinkDown);
            }
            link.want(Instant::now());
        }
        let bytes = wire::encode(request);
        self.traffic.sent(bytes.len());
        Ok(self.swarm.behaviour_mut().logs.send_request(&peer, bytes))
    }

    /// Answers a logs request.
    pub fn answer_logs(&mut self, channel: ResponseChannel<Vec<u8>>, reply: Result<Vec<u8>, ApiError>) {
        let bytes = wire::encode(&reply);
        self.traffic.sent(bytes.len());
        let _ = self.swarm.behaviour_mut().logs.send_response(channel, bytes);
    }

    /// Answers a stranger's invitation with the realm document, or why not.
    pub fn answer_join(&mut self, channel: ResponseChannel<Vec<u8>>, reply: Result<Vec<u8>, ApiError>) {
        let bytes = wire::encode(&reply);
        self.traffic.sent(bytes.len());
        let _ = self.swarm.behaviour_mut().join.send_response(channel, bytes);
    }

    /// A stranger presents an invitation (answered by the core).
    pub(super) fn on_join(&mut self, ev: rr::Event<Vec<u8>, Vec<u8>>) -> Option<Event> {
        match ev {
            rr::Event::Message { peer, message: rr::Message::Request { request, channel, .. }, .. } => {
                self.traffic.recv(request.len());
                match wire::decode::<JoinRequest>(&request, wire::MAX_JOIN_REQUEST) {
                    // The connection's handshake proved the key of `peer`: a
                    // joiner may only enrol that key, never another's.
                    Ok(request) if peer_id(&request.member.public_key) != Some(peer) => {
                        let why = "join refused: the key in the request is not the key of this connection";
                        self.answer_join(channel, Err(ApiError::Forbidden(why.into())));
                        None
                    }
                    Ok(request) => Some(Event::Join { request, channel }),
                    Err(e) => {
                        self.punish(peer, &format!("undecodable join request: {e}"));
                        None
                    }
                }
            }
            _ => None,
        }
    }

    /// A chunk asked of us, or the answer to one we asked for.
    pub(super) fn on_chunk(&mut self, ev: rr::Event<Vec<u8>, Vec<u8>>) -> Option<Event> {
        match ev {
            rr::Event::Message { peer, message: rr::Message::Request { request, channel, .. }, .. } => {
                self.traffic.recv(request.len());
                if !self.members.contains_key(&peer) || !self.connected.contains(&peer) {
                    let _ = self.swarm.behaviour_mut().chunk.send_response(channel, Vec::new());
                    return None;
                }
                self.touch(&peer);
                match wire::decode::<wire::ChunkRequest>(&request, wire::MAX_CHUNK_REQUEST) {
                    Ok(r) => Some(Event::ChunkWanted { hash: r.hash, channel }),
                    Err(e) => {
                        self.punish(peer, &format!("undecodable chunk request: {e}"));
                        None
                    }
                }
            }
            rr::Event::Message { message: rr::Message::Response { request_id, response }, .. } => {
                self.traffic.recv(response.len());
                self.traffic.fetched_bytes.fetch_add(response.len() as u64, Ordering::Relaxed);
                Some(Event::Chunk { request: request_id, result: Ok(response) })
            }
            rr::Event::OutboundFailure { request_id, error, .. } => {
                Some(Event::Chunk { request: request_id, result: Err(error.to_string()) })
            }
            _ => None,
        }
    }

    /// An instance's output asked of us, or the answer to our request.
    pub(super) fn on_logs(&mut self, ev: rr::Event<Vec<u8>, Vec<u8>>) -> Option<Event> {
        match ev {
            rr::Event::Message { peer, message: rr::Message::Request { request, channel, .. }, .. } => {
                self.traffic.recv(request.len());
                if !self.members.contains_key(&peer) || !self.connected.contains(&peer) {
                    let refused = Err(ApiError::Forbidden("logs are for member sites".into()));
                    self.answer_logs(channel, refused);
                    return None;
                }
                self.touch(&peer);
                match wire::decode::<wire::LogsRequest>(&request, wire::MAX_LOGS_REQUEST) {
                    Ok(request) => Some(Event::LogsWanted { request, channel }),
                    Err(e) => {
                        self.punish(peer, &format!("undecodable logs request: {e}"));
                        None
                    }
                }
            }
            rr::Event::Message { message: rr::Message::Response { request_id, response }, .. } => {
                self.traffic.recv(response.len());
                let result = wire::decode::<Result<Vec<u8>, ApiError>>(&response, response.len())
                    .unwrap_or_else(|e| Err(ApiError::Internal(format!("undecodable logs answer: {e}"))));
                Some(Event::Logs { request: request_id, result })
            }
            rr::Event::OutboundFailure { request_id, error, .. } => {
                let failed = ApiError::Unreachable(format!("the instance's site did not answer: {error}"));
                Some(Event::Logs { request: request_id, result: Err(failed) })
            }
            _ => None,
        }
    }

    /// The joining side: presents an invitation to the member(s) it names and
    /// returns the realm document they answer with.
    pub async fn join(&mut self, invitation: &str, mut member: Member) -> Result<Vec<u8>, NetError> {
        let inv = atoll_proto::membership::Invitation::read(invitation)
            .map_err(|e| NetError::Join(e.to_string()))?;
        // Our record carries our addresses, so learn them first.
        let listening = tokio::time::sleep(Duration::from_secs(3));
        tokio::pin!(listening);
        while self.listening.len() < self.settings.listen.len() {
            tokio::select! {
                ev = self.swarm.select_next_some() => {
                    let _ = self.on_swarm(ev);
                }
                _ = &mut listening => break,
            }
        }
        member.addrs = self.published();
        let mut target = None;
        for a in &inv.addrs {
            let addr: Multiaddr = a.parse().map_err(|e| NetError::Address(a.clone(), format!("{e}")))?;
            if let Some(Protocol::P2p(p)) = addr.iter().last() {
                self.swarm.add_peer_address(p, addr.clone());
                target = Some(p);
            }
        }
        let target = target.ok_or_else(|| NetError::Join("the invitation names no reachable peer".into()))?;
        let req = JoinRequest { invitation: invitation.trim().to_owned(), member };
        let id = self.swarm.behaviour_mut().join.send_request(&target, wire::encode(&req));
        let deadline = tokio::time::sleep(REQUEST_TIMEOUT + Duration::from_secs(5));
        tokio::pin!(deadline);
        loop {
            let ev = tokio::select! {
                ev = self.swarm.select_next_some() => ev,
                _ = &mut deadline => return Err(NetError::Join(format!("no answer from {} within {:?}", inv.issuer, REQUEST_TIMEOUT))),
            };
            match ev {
                SwarmEvent::Behaviour(BehaviourEvent::Join(rr::Event::Message {
                    message: rr::Message::Response { request_id, response },
                    ..
                })) if request_id == id => {
                    let reply: Result<Vec<u8>, ApiError> = wire::decode(&response, wire::MAX_MESSAGE)
                        .map_err(|e| NetError::Join(format!("unreadable answer: {e}")))?;
                    return reply.map_err(|e| NetError::Join(e.to_string()));
                }
                SwarmEvent::Behaviour(BehaviourEvent::Join(rr::Event::OutboundFailure {
                    request_id,
                    error,
                    ..
                })) if request_id == id => {
                    return Err(NetError::Join(format!("cannot reach {}: {error}", inv.issuer)));
                }
                // Connections and addresses still count: the issuer becomes a
                // connected member once our realm replica names it.
                other => {
                    let _ = self.on_swarm(other);
                }
            }
        }
    }
}
