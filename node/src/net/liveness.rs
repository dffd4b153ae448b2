//! Pings where they are needed (docs/architecture.md, "Partitions").
//!
//! A TCP connection learns of a silent cut only from pings, so it is pinged
//! every [`TCP_EVERY`]. A QUIC connection notices one by itself (keep-alives
//! and its idle timeout), so pinging it too only adds packets, timers and
//! wakeups on every link of an idle site: it is pinged once at the start and
//! then every [`QUIC_EVERY`], and it still answers the pings of a peer that
//! sends more (an older release pings every link every 0.5 s, and closes a
//! connection whose ping fails).

use std::task::{Context, Poll};
use std::time::Duration;

use libp2p::core::{Endpoint, transport::PortUse};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent,
    ToSwarm,
};
use libp2p::{Multiaddr, PeerId, ping};

use super::links::Transport;

const TCP_EVERY: Duration = Duration::from_millis(500);
const QUIC_EVERY: Duration = Duration::from_secs(60);
const TIMEOUT: Duration = Duration::from_millis(1000);

/// The ping protocol, with an interval chosen by the connection's transport.
/// Both inner behaviours make the same handler; every handler's events are
/// queued in `tcp`'s queue, so polling `tcp` yields them all.
pub(super) struct Ping {
    tcp: ping::Behaviour,
    quic: ping::Behaviour,
}

impl Ping {
    pub(super) fn new() -> Ping {
        let config = |every| ping::Config::new().with_interval(every).with_timeout(TIMEOUT);
        Ping { tcp: ping::Behaviour::new(config(TCP_EVERY)), quic: ping::Behaviour::new(config(QUIC_EVERY)) }
    }

    fn over(&mut self, remote: &Multiaddr) -> &mut ping::Behaviour {
        match Transport::of(remote) {
            Transport::Quic => &mut self.quic,
            Transport::Tcp => &mut self.tcp,
        }
    }
}

impl NetworkBehaviour for Ping {
    type ConnectionHandler = THandler<ping::Behaviour>;
    type ToSwarm = ping::Event;

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.over(remote).handle_established_inbound_connection(id, peer, local, remote)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        remote: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.over(remote).handle_established_outbound_connection(id, peer, remote, role, port_use)
    }

    fn on_connection_handler_event(&mut self, peer: PeerId, id: ConnectionId, event: THandlerOutEvent<Self>) {
        self.tcp.on_connection_handler_event(peer, id, event);
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<ping::Event, THandlerInEvent<Self>>> {
        self.tcp.poll(cx)
    }
}
