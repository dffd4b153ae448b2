//! Messages between peers, and their encoding (postcard). Every decode is
//! bounded: a message over [`MAX_MESSAGE`] bytes is refused before parsing.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::peer::DocId;

/// The newest wire version this build writes. 3: `ReachAsk`/`ReachTold`;
/// 4: `SyncAt`/`Epoch` (documents compacted into epochs, crate::epoch).
pub const VERSION: u16 = 4;
/// The oldest wire version this build still reads and writes: the previous
/// release's (docs/architecture.md, "Versions side by side"). A peer writes
/// each other peer the newest version both speak, learnt when they connect,
/// and this one until it knows; so a peer of the previous release never gets
/// a message it would misread.
pub const OLDEST: u16 = 2;
/// Largest message a peer sends or accepts.
pub const MAX_MESSAGE: usize = 4 << 20;
/// Most documents named in one digest.
pub const MAX_DIGEST: usize = 4096;
/// Largest gossiped summary.
pub const MAX_GOSSIP: usize = 64 << 10;
/// Largest join request (an invitation and a membership record).
pub const MAX_JOIN_REQUEST: usize = 16 << 10;
/// Largest image chunk served or fetched (uploads cut 4 MiB chunks).
pub const MAX_CHUNK: usize = 4 << 20;
/// Largest chunk request.
pub const MAX_CHUNK_REQUEST: usize = 256;

/// Asks a holder for one chunk of an image blob. The answer is the chunk's
/// bytes, or nothing when the holder does not have it; the asker verifies
/// them against the hash.
/// Asks the site running an instance for the tail of its output (the
/// realm-wide `instance logs`); the answer is a wire-encoded
/// `Result<Vec<u8>, ApiError>` of at most [`MAX_REMOTE_LOG`] bytes of output.
/// The asking site checked the caller's role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogsRequest {
    pub project: String,
    pub name: String,
    pub tail: u64,
}

/// Largest encoded logs request.
pub const MAX_LOGS_REQUEST: usize = 1024;
/// Largest tail of output sent over the peer network.
pub const MAX_REMOTE_LOG: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkRequest {
    /// sha256 hex of the chunk.
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PeerMsg {
    /// The heads digest of every document the sender holds.
    Digest { docs: Vec<(DocId, [u8; 32])> },
    /// One automerge sync protocol message for one document, with the
    /// signatures of the changes it carries (crate::provenance).
    Sync { doc: DocId, msg: Vec<u8>, sigs: Vec<atoll_crdt::Signed> },
    /// New heads of some documents, relayed after a change received from a
    /// third peer: the receiver pulls those that differ (instead of every peer
    /// pushing every change to every other).
    Heads { docs: Vec<(DocId, [u8; 32])> },
    /// Asks for quota rights of a project: the sender's shortfall.
    RightsAsk { project: String, want: atoll_crdt::Resources },
    /// The answer: what the sender gave (written as a transfer in its
    /// document, which follows by sync); zero when it had none spare.
    /// `hints`: sites the sender gave most rights of the project to (at most
    /// [`crate::rebalance::MAX_HINTS`]), where the asker may look next.
    RightsGiven { project: String, amount: atoll_crdt::Resources, hints: Vec<atoll_crdt::SiteId> },
    /// Asks for the instances of `site`'s document (the receiver's own, or a
    /// replica it holds), for the realm-wide view; `id` names the call.
    InstancesAsk { id: u64, site: atoll_crdt::SiteId },
    /// The answer: None when the sender holds no copy of that document;
    /// `as_of`, when the state was last known to be the owner's; `cut`, when
    /// the list was cut to the answer's bound.
    InstancesTold {
        id: u64,
        site: atoll_crdt::SiteId,
        #[serde(with = "told")]
        instances: Option<Vec<atoll_crdt::Instance>>,
        as_of: Option<atoll_crdt::Millis>,
        cut: bool,
    },
    /// [`PeerMsg::Sync`] for a document in an epoch after the first (wire 4;
    /// `Sync` is epoch 0).
    SyncAt { doc: DocId, epoch: u64, msg: Vec<u8>, sigs: Vec<atoll_crdt::Signed> },
    /// A whole copy of a site document's epoch (automerge's saved form) with
    /// the signatures of every change, for a peer holding an older one (wire 4).
    Epoch { doc: DocId, epoch: u64, saved: Vec<u8>, sigs: Vec<atoll_crdt::Signed> },
    /// Asks which members the receiver has a connection to now (wire 3).
    ReachAsk { id: u64 },
    /// The answer: at most [`crate::reach::MAX_REACHES`] sites (wire 3).
    ReachTold { id: u64, reaches: Vec<atoll_crdt::SiteId> },
}

/// Instances as every wire version encodes them: postcard's layout is
/// fixed, so a field added to [`atoll_crdt::Instance`] since (the replica
/// tag, which a realm-wide listing does not need) does not travel.
mod told {
    use std::collections::BTreeMap;

    use atoll_crdt::{Desired, Instance, Kind, Millis, Observed, RestartPolicy, SiteId};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Told {
        name: String,
        project: String,
        site: SiteId,
        image: String,
        image_digest: String,
        kind: Kind,
        cpus: i64,
        memory_mib: i64,
        disk_mib: i64,
        restart: RestartPolicy,
        args: Vec<String>,
        env: BTreeMap<String, String>,
        ports: Vec<String>,
        desired: Desired,
        observed: Observed,
        reason: String,
        observed_at: Millis,
        handle: Option<String>,
        restarts: u64,
        created_by: String,
        created_at: Millis,
    }

    pub fn serialize<S: Serializer>(v: &Option<Vec<Instance>>, s: S) -> Result<S::Ok, S::Error> {
        let told: Option<Vec<Told>> = v.as_ref().map(|list| {
            list.iter()
                .cloned()
                .map(|i| Told {
                    name: i.name,
                    project: i.project,
                    site: i.site,
                    image: i.image,
                    image_digest: i.image_digest,
                    kind: i.kind,
                    cpus: i.cpus,
                    memory_mib: i.memory_mib,
                    disk_mib: i.disk_mib,
                    restart: i.restart,
                    args: i.args,
                    env: i.env,
                    ports: i.ports,
                    desired: i.desired,
                    observed: i.observed,
                    reason: i.reason,
                    observed_at: i.observed_at,
                    handle: i.handle,
                    restarts: i.restarts,
                    created_by: i.created_by,
                    created_at: i.created_at,
                })
                .collect()
        });
        told.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Instance>>, D::Error> {
        let told: Option<Vec<Told>> = Option::deserialize(d)?;
        Ok(told.map(|list| {
            list.into_iter()
                .map(|t| Instance {
                    name: t.name,
                    project: t.project,
                    site: t.site,
                    image: t.image,
                    image_digest: t.image_digest,
                    kind: t.kind,
                    cpus: t.cpus,
                    memory_mib: t.memory_mib,
                    disk_mib: t.disk_mib,
                    restart: t.restart,
                    args: t.args,
                    env: t.env,
                    ports: t.ports,
                    desired: t.desired,
                    observed: t.observed,
                    reason: t.reason,
                    observed_at: t.observed_at,
                    handle: t.handle,
                    restarts: t.restarts,
                    created_by: t.created_by,
                    created_at: t.created_at,
                    replica: None,
                })
                .collect()
        }))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Envelope<T> {
    version: u16,
    msg: T,
}

/// The wire versions a peer reads and writes, as it advertises them when
/// connecting (`wire/OLDEST-NEWEST`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Speaks {
    pub oldest: u16,
    pub newest: u16,
}

impl Speaks {
    /// This build.
    pub const HERE: Speaks = Speaks { oldest: OLDEST, newest: VERSION };
    /// A peer that advertises no range: release 0.1.0, which spoke version 2 only.
    pub const UNADVERTISED: Speaks = Speaks { oldest: 2, newest: 2 };

    /// The version two peers use: the newest both speak, if any.
    pub fn with(self, other: Speaks) -> Option<u16> {
        let v = self.newest.min(other.newest);
        (v >= self.oldest.max(other.oldest)).then_some(v)
    }

    /// The token a peer puts in its self-description.
    pub fn advert(self) -> String {
        format!("wire/{}-{}", self.oldest, self.newest)
    }

    /// The range in a peer's self-description: [`Speaks::UNADVERTISED`] when
    /// it names none; None when the token is malformed.
    pub fn from_advert(description: &str) -> Option<Speaks> {
        let Some(token) = description.split_whitespace().find_map(|t| t.strip_prefix("wire/")) else {
            return Some(Speaks::UNADVERTISED);
        };
        let (oldest, newest) = token.split_once('-')?;
        let (oldest, newest) = (oldest.parse().ok()?, newest.parse().ok()?);
        (oldest <= newest).then_some(Speaks { oldest, newest })
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WireError {
    #[error("message of {0} bytes is over the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("wire version {0} is not spoken here (this peer speaks {OLDEST} to {VERSION})")]
    Version(u16),
    #[error("digest names {0} documents, over the limit of {MAX_DIGEST}")]
    TooMany(usize),
}

/// Encodes a message for any peer of this or the previous release (gossip to
/// all, a join request, answers): in the oldest version spoken here.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    encode_as(OLDEST, msg)
}

/// Encodes a message in the versioned envelope, for a peer that speaks `version`.
pub fn encode_as<T: Serialize>(version: u16, msg: &T) -> Vec<u8> {
    postcard::to_stdvec(&Envelope { version, msg }).unwrap_or_default()
}

/// Decodes a message of at most `max` bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, WireError> {
    if bytes.len() > max {
        return Err(WireError::TooLarge(bytes.len()));
    }
    let env: Envelope<T> = postcard::from_bytes(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
    if !(OLDEST..=VERSION).contains(&env.version) {
        return Err(WireError::Version(env.version));
    }
    Ok(env.msg)
}

impl PeerMsg {
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// The wire version that introduced this message: a peer that speaks an
    /// older one is never sent it (it would not decode it).
    pub fn since(&self) -> u16 {
        match self {
            PeerMsg::ReachAsk { .. } | PeerMsg::ReachTold { .. } => 3,
            PeerMsg::SyncAt { .. } | PeerMsg::Epoch { .. } => 4,
            _ => 2,
        }
    }

    /// Encodes for a peer with which `version` was negotiated ([`Speaks::with`]).
    pub fn encode_as(&self, version: u16) -> Vec<u8> {
        encode_as(version, self)
    }

    pub fn decode(bytes: &[u8]) -> Result<PeerMsg, WireError> {
        let msg = decode(bytes, MAX_MESSAGE)?;
        if let PeerMsg::Digest { docs } | PeerMsg::Heads { docs } = &msg
            && docs.len() > MAX_DIGEST
        {
            return Err(WireError::TooMany(docs.len()));
        }
        if let PeerMsg::ReachTold { reaches, .. } = &msg
            && reaches.len() > crate::reach::MAX_REACHES
        {
            return Err(WireError::TooMany(reaches.len()));
        }
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn roundtrip() {
        let sigs = vec![atoll_crdt::Signed { change: [7; 32], sig: [9; 64] }];
        let m = PeerMsg::Sync { doc: DocId::Realm, msg: vec![1, 2, 3], sigs };
        assert_eq!(PeerMsg::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn refuses_oversized_and_foreign_versions() {
        assert!(matches!(PeerMsg::decode(&vec![0; MAX_MESSAGE + 1]), Err(WireError::TooLarge(_))));
        let env = Envelope { version: 99, msg: PeerMsg::Digest { docs: vec![] } };
        assert!(matches!(decode::<u8>(&encode(&7u8), 0), Err(WireError::TooLarge(_))));
        assert_eq!(PeerMsg::decode(&postcard::to_stdvec(&env).unwrap()), Err(WireError::Version(99)));
    }

    #[test]
    fn versions_are_negotiated_from_adverts() {
        let here = Speaks::HERE;
        assert_eq!(Speaks::from_advert(&format!("atoll/9.9.9 {}", here.advert())), Some(here));
        // The previous release advertised nothing: it speaks version 2.
        assert_eq!(Speaks::from_advert("rust-libp2p/0.47.0"), Some(Speaks::UNADVERTISED));
        assert_eq!(here.with(Speaks::UNADVERTISED), Some(2));
        // What a version-2 peer would misread is never for it.
        assert_eq!(PeerMsg::ReachAsk { id: 1 }.since(), 3);
        assert_eq!(PeerMsg::Heads { docs: vec![] }.since(), 2);
        let epoch = PeerMsg::Epoch { doc: DocId::Realm, epoch: 1, saved: vec![], sigs: vec![] };
        assert_eq!(epoch.since(), 4);
        assert_eq!(PeerMsg::decode(&epoch.encode_as(4)).unwrap(), epoch);
        for junk in ["wire/", "wire/3", "wire/a-b", "wire/5-4", "wire/70000-1"] {
            assert_eq!(Speaks::from_advert(junk), None, "{junk}");
        }
        // The newest version both speak; none when the ranges do not meet.
        let (old, new) = (Speaks { oldest: 2, newest: 3 }, Speaks { oldest: 3, newest: 5 });
        assert_eq!(old.with(new), Some(3));
        assert_eq!(new.with(old), Some(3));
        assert_eq!(Speaks { oldest: 2, newest: 2 }.with(new), None);
        // What is written for a negotiated version reads back here.
        let m = PeerMsg::Heads { docs: vec![] };
        assert_eq!(PeerMsg::decode(&m.encode_as(here.with(here).unwrap())).unwrap(), m);
        assert_eq!(PeerMsg::decode(&m.encode_as(VERSION + 1)), Err(WireError::Version(VERSION + 1)));
    }

    proptest! {
        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn decoding_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = PeerMsg::decode(&bytes);
            let _ = decode::<crate::membership::JoinRequest>(&bytes, MAX_JOIN_REQUEST);
            let _ = decode::<crate::api::SiteView>(&bytes, MAX_GOSSIP);
            let _ = decode::<Result<Vec<u8>, crate::ApiError>>(&bytes, MAX_MESSAGE);
            let _ = decode::<ChunkRequest>(&bytes, MAX_CHUNK_REQUEST);
        }

        /// Every message decodes to itself.
        #[test]
        fn any_message_roundtrips(msg in prop::collection::vec(any::<u8>(), 0..256), n in 0..8usize) {
            let sync = PeerMsg::Sync { doc: DocId::Realm, msg: msg.clone(), sigs: Vec::new() };
            prop_assert_eq!(PeerMsg::decode(&sync.encode()).unwrap(), sync);
            let digest = PeerMsg::Digest { docs: (0..n).map(|i| (DocId::Realm, [i as u8; 32])).collect() };
            prop_assert_eq!(PeerMsg::decode(&digest.encode()).unwrap(), digest);
            let heads = PeerMsg::Heads { docs: (0..n).map(|i| (DocId::Realm, [i as u8; 32])).collect() };
            prop_assert_eq!(PeerMsg::decode(&heads.encode()).unwrap(), heads);
            let want = atoll_crdt::Resources::new(n as i64, -(n as i64), i64::MAX);
            let ask = PeerMsg::RightsAsk { project: format!("p{n}"), want };
            prop_assert_eq!(PeerMsg::decode(&ask.encode()).unwrap(), ask);
            let given = PeerMsg::RightsGiven { project: String::new(), amount: want, hints: Vec::new() };
            prop_assert_eq!(PeerMsg::decode(&given.encode()).unwrap(), given);
        }
    }
}
