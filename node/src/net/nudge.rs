//! Nudges: empty events that wake a connection's task (docs/architecture.md,
//! "The peer network").
//!
//! Gossipsub (0.50) queues what it sends a peer in one queue that all of that
//! peer's connections share. A connection's gossipsub handler opens its
//! outbound stream only when it is polled and finds the queue non-empty, and
//! it asks to be woken by new messages only once that stream is open. The
//! handler of a second connection to a peer (QUIC replacing TCP, a peer that
//! restarted before its old connection timed out, two dials that crossed)
//! usually starts with an empty queue, so nothing wakes it; once the first
//! connection closes, the peer's summaries wait until something else happens
//! on the second one. With QUIC connections pinged once a minute that was up
//! to a minute, and after a join the new site heard nothing from its issuer.
//!
//! A nudge is delivered to one connection; its task then polls every handler
//! of that connection, and gossipsub's finds the queued messages and opens
//! its stream, after which it is woken like the first one. The network nudges
//! every connection right after it publishes a summary (the queues are not
//! empty then), and a peer's other connections when one of its connections
//! closes.

use std::collections::HashMap;
use std::convert::Infallible;
use std::task::{Context, Poll};

use libp2p::core::upgrade::DeniedUpgrade;
use libp2p::core::{Endpoint, transport::PortUse};
use libp2p::swarm::handler::{ConnectionEvent, FullyNegotiatedInbound, FullyNegotiatedOutbound};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandlerEvent, ConnectionId, FromSwarm, NetworkBehaviour, NotifyHandler,
    SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

/// The open connections per peer (as many as the connection limits allow),
/// and the nudges not yet handed to the swarm (each connection at most once).
#[derive(Default)]
pub(super) struct Nudge {
    conns: HashMap<PeerId, Vec<ConnectionId>>,
    pending: Vec<(PeerId, ConnectionId)>,
}

impl Nudge {
    /// Nudges every open connection.
    pub(super) fn all(&mut self) {
        self.pending = self.conns.iter().flat_map(|(p, cs)| cs.iter().map(|c| (*p, *c))).collect();
    }

    /// Nudges every open connection to `peer`.
    fn peer(&mut self, peer: PeerId) {
        for c in self.conns.get(&peer).into_iter().flatten() {
            if !self.pending.contains(&(peer, *c)) {
                self.pending.push((peer, *c));
            }
        }
    }
}

impl NetworkBehaviour for Nudge {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                self.conns.entry(e.peer_id).or_default().push(e.connection_id)
            }
            FromSwarm::ConnectionClosed(e) => {
                if let Some(cs) = self.conns.get_mut(&e.peer_id) {
                    cs.retain(|c| *c != e.connection_id);
                    if cs.is_empty() {
                        self.conns.remove(&e.peer_id);
                    }
                }
                self.pending.retain(|(_, c)| *c != e.connection_id);
                // The closed one may have been the only handler gossipsub woke.
                self.peer(e.peer_id);
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(&mut self, _: PeerId, _: ConnectionId, event: THandlerOutEvent<Self>) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        match self.pending.pop() {
            Some((peer_id, c)) => {
                Poll::Ready(ToSwarm::NotifyHandler { peer_id, handler: NotifyHandler::One(c), event: () })
            }
            None => Poll::Pending,
        }
    }
}

/// Speaks no protocol and keeps nothing alive: receiving a nudge is all it does.
pub(super) struct Handler;

impl libp2p::swarm::ConnectionHandler for Handler {
    type FromBehaviour = ();
    type ToBehaviour = Infallible;
    type InboundProtocol = DeniedUpgrade;
    type OutboundProtocol = DeniedUpgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<DeniedUpgrade> {
        SubstreamProtocol::new(DeniedUpgrade, ())
    }

    fn on_behaviour_event(&mut self, (): ()) {}

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ConnectionHandlerEvent<DeniedUpgrade, (), Infallible>> {
        Poll::Pending
    }

    fn on_connection_event(&mut self, event: ConnectionEvent<DeniedUpgrade, DeniedUpgrade>) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound { protocol, .. }) => {
                match protocol {}
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound { protocol, .. }) => {
                match protocol {}
            }
            _ => {}
        }
    }
}
