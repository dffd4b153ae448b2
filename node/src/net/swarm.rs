//! Building the swarm: QUIC with TCP+noise+yamux as the fallback, the
//! connection limits, and the behaviours that carry Atoll's protocols, each
//! with its frame limits (docs/architecture.md, "Peers together").

use std::time::Duration;

use atoll_proto::wire;
use libp2p::request_response::{self as rr, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, behaviour::toggle::Toggle};
use libp2p::{
    StreamProtocol, Swarm, allow_block_list, connection_limits, gossipsub, identify, identity, mdns,
};

use super::liveness::Ping;
use super::nudge::Nudge;
use super::{Frames, NetError};

/// Connection limits: handshakes under way, established inbound connections
/// (members keep one or two each), and connections per peer (QUIC, TCP and
/// overlapping redials).
const MAX_PENDING_INCOMING: u32 = 128;
const MAX_INCOMING: u32 = 2048;
const MAX_PER_PEER: u32 = 4;
pub(super) const SUMMARY_TOPIC: &str = "atoll/summary/1";
/// Requests in flight per connection and protocol.
const MAX_STREAMS: usize = 64;
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A sync message is small: one not acknowledged by then is reported lost.
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);
/// Liveness (docs/architecture.md, "Partitions"): QUIC sends a keep-alive
/// after a second of silence and closes a connection that heard nothing for
/// `QUIC_IDLE_MS`; pings run every 0.5 s on TCP connections (their only
/// check, `liveness`), and a TCP connection whose pings have not succeeded
/// for `links::SILENT_LIMIT` is closed. A silent cut is noticed within 3-4.5 s either way, while 5% packet
/// loss (retransmitted within milliseconds by QUIC, 200 ms by TCP) closes
/// nothing: that would take one packet lost three times in a row, twice.
const QUIC_KEEP_ALIVE: Duration = Duration::from_secs(1);
const QUIC_IDLE_MS: u32 = 3_000;
const QUIC_HANDSHAKE: Duration = Duration::from_secs(3);
/// The acknowledgement of a sync message that was received but not taken
/// (the sender is not a member as far as we know yet): its sender must treat
/// it as lost. A taken message is acknowledged with no bytes.
pub(super) const NOT_TAKEN: &[u8] = &[1];

/// Gossip scores that say one thing: whether the peer is a member (set by the
/// application). Gossipsub's own penalties stay off: sites share addresses
/// behind NATs and on test hosts, and a member is judged by what it writes
/// (`judge_summary`), not by how fast it relays.
fn membership_score() -> gossipsub::PeerScoreParams {
    gossipsub::PeerScoreParams {
        app_specific_weight: 1.0,
        ip_colocation_factor_weight: 0.0,
        behaviour_penalty_weight: 0.0,
        slow_peer_weight: 0.0,
        ..Default::default()
    }
}

#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    pub(super) blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub(super) limits: connection_limits::Behaviour,
    pub(super) identify: identify::Behaviour,
    pub(super) ping: Ping,
    pub(super) sync: rr::Behaviour<Frames>,
    pub(super) join: rr::Behaviour<Frames>,
    pub(super) chunk: rr::Behaviour<Frames>,
    pub(super) logs: rr::Behaviour<Frames>,
    pub(super) gossip: gossipsub::Behaviour,
    pub(super) nudge: Nudge,
    pub(super) mdns: Toggle<mdns::tokio::Behaviour>,
}

/// The swarm of a site with identity `keys`; mDNS discovery when `mdns`.
pub(super) fn build(keys: identity::Keypair, mdns: bool) -> Result<Swarm<Behaviour>, NetError> {
    let setup = |e: &dyn std::fmt::Display| NetError::Setup(e.to_string());
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keys)
        .with_tokio()
        .with_tcp(Default::default(), libp2p::noise::Config::new, libp2p::yamux::Config::default)
        .map_err(|e| setup(&e))?
        .with_quic_config(|mut c| {
            c.keep_alive_interval = QUIC_KEEP_ALIVE;
            c.max_idle_timeout = QUIC_IDLE_MS;
            c.handshake_timeout = QUIC_HANDSHAKE;
            c
        })
        .with_behaviour(|k| {
            let mdns = if mdns {
                Some(mdns::tokio::Behaviour::new(mdns::Config::default(), k.public().to_peer_id())?)
            } else {
                None
            };
            let gossip_cfg = gossipsub::ConfigBuilder::default()
                .validation_mode(gossipsub::ValidationMode::Strict)
                .max_transmit_size(wire::MAX_GOSSIP)
                .heartbeat_interval(Duration::from_secs(1))
                // Nothing is forwarded before the application judged it.
                .validate_messages()
                .build()
                .map_err(|e| e.to_string())?;
            let mut gossip =
                gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(k.clone()), gossip_cfg)?;
            gossip.with_peer_score(membership_score(), gossipsub::PeerScoreThresholds::default())?;
            let rr_cfg = rr::Config::default()
                .with_request_timeout(REQUEST_TIMEOUT)
                .with_max_concurrent_streams(MAX_STREAMS);
            let sync_cfg = rr_cfg.clone().with_request_timeout(SYNC_TIMEOUT);
            Ok(Behaviour {
                blocked: Default::default(),
                limits: connection_limits::Behaviour::new(
                    connection_limits::ConnectionLimits::default()
                        .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
                        .with_max_established_incoming(Some(MAX_INCOMING))
                        .with_max_established_per_peer(Some(MAX_PER_PEER)),
                ),
                // The agent names the release and the wire versions spoken, which
                // peers negotiate from (docs/architecture.md, "Versions side by side").
                identify: identify::Behaviour::new(
                    identify::Config::new("/atoll/1".into(), k.public()).with_agent_version(format!(
                        "atoll/{} {}",
                        env!("CARGO_PKG_VERSION"),
                        wire::Speaks::HERE.advert()
                    )),
                ),
                ping: Ping::new(),
                sync: rr::Behaviour::with_codec(
                    // The answer is an acknowledgement: empty, or NOT_TAKEN.
                    Frames { request: wire::MAX_MESSAGE, response: NOT_TAKEN.len() },
                    [(StreamProtocol::new("/atoll/sync/1"), ProtocolSupport::Full)],
                    sync_cfg,
                ),
                join: rr::Behaviour::with_codec(
                    // A stranger's invitation is small; the realm sent back is not.
                    Frames { request: wire::MAX_JOIN_REQUEST, response: wire::MAX_MESSAGE },
                    [(StreamProtocol::new("/atoll/join/1"), ProtocolSupport::Full)],
                    rr_cfg.clone(),
                ),
                chunk: rr::Behaviour::with_codec(
                    Frames { request: wire::MAX_CHUNK_REQUEST, response: wire::MAX_CHUNK },
                    [(StreamProtocol::new("/atoll/chunk/1"), ProtocolSupport::Full)],
                    rr_cfg.clone(),
                ),
                logs: rr::Behaviour::with_codec(
                    Frames {
                        request: wire::MAX_LOGS_REQUEST,
                        response: wire::MAX_REMOTE_LOG as usize + 4096,
                    },
                    [(StreamProtocol::new("/atoll/logs/1"), ProtocolSupport::Full)],
                    rr_cfg,
                ),
                gossip,
                nudge: Default::default(),
                mdns: Toggle::from(mdns),
            })
        })
        .map_err(|e| setup(&e))?
        // Members stay connected: sync state is per connection.
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    Ok(swarm)
}
