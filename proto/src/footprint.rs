//! What the peer core holds in memory, for `atoll site show` (`GET /v1/site`).
//!
//! Counted, not estimated: automerge does not tell its memory, so documents
//! are reported by their history (operations and changes), which is what
//! their memory grows with; sizes in bytes are given only where the core
//! holds a known payload (signatures, summaries as encoded, token digests).

use atoll_crdt::DocSize;

use crate::api::{Footprint, Held};
use crate::peer::Peer;

/// Bytes a signature record takes (change hash and ed25519 signature).
const SIGNATURE_BYTES: u64 = 32 + 64;

/// Bytes a remembered token takes (its digest, in a set and a queue).
const TOKEN_BYTES: u64 = 2 * 32;

/// The core's part of the footprint (the daemon adds the process figures).
pub fn footprint(peer: &Peer) -> Footprint {
    let mut held = Vec::new();
    let doc = |what: String, size: DocSize| Held {
        what: format!("{what} ({} changes)", size.changes),
        count: size.ops,
        unit: "ops".into(),
        bound: None,
        bytes: None,
    };
    held.push(doc("realm document".into(), peer.realm.doc.size()));
    held.push(doc("this site's document".into(), peer.own.doc.size()));
    let others = peer.others.values().map(|d| d.doc.size()).fold(DocSize::default(), add);
    held.push(doc(format!("replicas of {} other sites' documents", peer.others.len()), others));

    let docs = || {
        std::iter::once(&peer.realm.doc)
            .chain(std::iter::once(&peer.own.doc))
            .chain(peer.others.values().map(|d| &d.doc))
    };
    let signatures: u64 = docs().map(|d| d.size().signatures).sum();
    held.push(Held {
        what: "change signatures".into(),
        count: signatures,
        unit: "signatures".into(),
        bound: None,
        bytes: Some(signatures * SIGNATURE_BYTES),
    });
    held.push(counted(
        "changes waiting for their dependencies",
        docs().map(|d| d.ledger().waiting()).sum::<usize>(),
        "changes",
        Some(atoll_crdt::provenance::MAX_WAITING * (2 + peer.others.len())),
    ));
    held.push(counted(
        "refused changes remembered",
        docs().map(|d| d.ledger().refused()).sum::<usize>(),
        "changes",
        Some(atoll_crdt::provenance::MAX_REFUSED * (2 + peer.others.len())),
    ));

    let summaries: u64 = peer.summaries.values().map(|v| crate::wire::encode(v).len() as u64).sum();
    held.push(Held {
        what: "summaries of other sites".into(),
        count: peer.summaries.len() as u64,
        unit: "summaries".into(),
        bound: Some(peer.realm.members().map_or(0, |m| m.len() as u64)),
        bytes: Some(summaries),
    });
    held.push(counted("sync sessions (peer, document)", peer.sync.len(), "sessions", None));
    held.push(Held {
        what: "tokens whose signatures verified".into(),
        count: peer.verified.len() as u64,
        unit: "tokens".into(),
        bound: Some(crate::auth::Verified::MAX as u64),
        bytes: Some(peer.verified.len() as u64 * TOKEN_BYTES),
    });
    let (gathering, sites, instances) = peer.gather.held();
    held.push(counted(
        &format!("other sites' instances remembered ({sites} sites)"),
        instances,
        "instances",
        Some(crate::gather::MAX_HEARD_INSTANCES),
    ));
    let waiting = gathering
        + peer.rebalance.waiting()
        + peer.reach.waiting()
        + peer.waiters.values().map(Vec::len).sum::<usize>()
        + peer.intent_waiters.values().map(Vec::len).sum::<usize>()
        + peer.fetch_waiters.values().map(Vec::len).sum::<usize>();
    held.push(counted("calls waiting", waiting, "calls", None));
    held.sort_by(|a, b| b.bytes.unwrap_or(0).cmp(&a.bytes.unwrap_or(0)).then(b.count.cmp(&a.count)));
    Footprint { process: None, held }
}

fn counted(what: &str, count: usize, unit: &str, bound: Option<usize>) -> Held {
    Held {
        what: what.into(),
        count: count as u64,
        unit: unit.into(),
        bound: bound.map(|b| b as u64),
        bytes: None,
    }
}

fn add(a: DocSize, b: DocSize) -> DocSize {
    DocSize { changes: a.changes + b.changes, ops: a.ops + b.ops, signatures: a.signatures + b.signatures }
}
