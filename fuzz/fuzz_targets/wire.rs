//! Every message a peer may send: request/response frames, gossiped
//! summaries, join requests, chunk and log requests. None may panic, and a
//! message that decodes encodes back to one that decodes the same.
#![no_main]

use atoll_proto::wire::{self, ChunkRequest, LogsRequest, PeerMsg};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = PeerMsg::decode(data) {
        assert_eq!(PeerMsg::decode(&msg.encode()).ok(), Some(msg));
    }
    let _ = wire::decode::<atoll_proto::api::SiteView>(data, wire::MAX_GOSSIP);
    let _ = wire::decode::<atoll_proto::membership::JoinRequest>(data, wire::MAX_JOIN_REQUEST);
    let _ = wire::decode::<ChunkRequest>(data, wire::MAX_CHUNK_REQUEST);
    let _ = wire::decode::<LogsRequest>(data, wire::MAX_LOGS_REQUEST);
});
