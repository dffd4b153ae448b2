//! The peer state machine: inputs in, effects out.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use atoll_crdt::{Descriptor, DocError, Image, Millis, Realm, SiteDoc, SiteId, SyncState};
use ed25519_dalek::SigningKey;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::api::{ApiError, ApiResult, Command, HostMetrics, Reply};
use crate::auth;
use crate::consent::{Caller, Session};
use crate::driver::{DriverCmd, DriverEvent};
use crate::gather::Purpose;
use crate::lifecycle::Verb;
use crate::wire::PeerMsg;

/// Identifies an API request so that its reply can be routed back.
pub type ReqId = u64;

/// After this many incremental appends a document is saved whole instead,
/// which bounds both the store and the time to load it.
pub const COMPACT_EVERY: u32 = 256;

/// Most callers that may wait on one instance's operation at once.
pub const MAX_WAITERS: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DocId {
    Realm,
    Site(SiteId),
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DocId::Realm => f.write_str("realm"),
            DocId::Site(s) => write!(f, "site/{s}"),
        }
    }
}

/// A write the shell must make durable before it delivers the replies that follow it.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreWrite {
    /// Changes to append to a document's log.
    Append { doc: DocId, bytes: Vec<u8> },
    /// A whole document replacing its log.
    Snapshot { doc: DocId, bytes: Vec<u8> },
    /// A new epoch of a document (crate::epoch): its whole copy replacing
    /// the log, and its signatures (`Ledger::encode` records) replacing the
    /// ledger. Store the signatures first, replace the log, then drop the
    /// older signatures: a crash in between leaves extra signatures, never
    /// missing ones.
    Epoch { doc: DocId, bytes: Vec<u8>, sigs: Vec<u8> },
    /// Signatures of a document's changes to append to its ledger
    /// (`atoll_crdt::Ledger::encode` records).
    Sigs { doc: DocId, bytes: Vec<u8> },
    /// An image's blob is gone: drop its index (when no other image has the same
    /// digest) and the chunks no other image references.
    DeleteBlob { digest: Option<String>, chunks: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TimerId {
    /// Restart an instance (restart policy, after a backoff).
    Restart { key: String, run: u64 },
    /// Anti-entropy round with a few random peers.
    Repair,
    /// A caller's wait for an intent's outcome is over.
    IntentWait { id: String, req: ReqId },
    /// Reopen the sync exchange with a peer after a message to it was lost.
    Resync { site: SiteId },
    /// Ask again for an image blob whose fetch failed.
    Refetch { digest: String },
    /// A call waiting for quota rights from peers: halfway, it asks again for
    /// what it still lacks; at the end (`last`), it is refused if still waiting.
    RightsWait { id: u64, last: bool },
    /// A call waiting for other sites' parts of the realm-wide view is answered
    /// with what it has.
    GatherWait { id: u64 },
    /// A call waiting for other sites' views of who they reach is answered.
    ReachWait { id: u64 },
    /// Run the deployments' reconcilers this site acts for.
    Reconcile,
    /// The neighbour asked for a document's announced changes had its time
    /// (crate::pulls): ask the next one that announced them.
    Pull { doc: DocId },
}

#[derive(Debug, Clone)]
pub enum Input {
    Api {
        req: ReqId,
        token: Option<String>,
        cmd: Command,
    },
    Driver {
        key: String,
        run: u64,
        event: DriverEvent,
    },
    Timer(TimerId),
    /// Fresh host figures (volatile).
    Metrics(HostMetrics),
    /// The shell has a connection to a member site.
    Connected(SiteId),
    Disconnected(SiteId),
    /// A message sent to this member was not delivered (the request failed or
    /// timed out, or the peer dropped it): what it carried may be lost.
    Undelivered(SiteId),
    /// A member's gossiped summary (ephemeral).
    Summary {
        from: SiteId,
        view: Box<crate::api::SiteView>,
    },
    /// A decoded message from a connected member.
    Message {
        from: SiteId,
        msg: PeerMsg,
    },
    /// The shell fetched (and verified) an image blob, or gave up.
    Fetched {
        digest: String,
        result: Result<(), String>,
    },
}

/// Side effects, carried out by the shell in the order they are asked for.
pub trait Effects {
    fn persist(&mut self, write: StoreWrite);
    fn driver(&mut self, cmd: DriverCmd);
    fn schedule(&mut self, timer: TimerId, after: Millis);
    fn reply(&mut self, req: ReqId, result: ApiResult);
    fn send(&mut self, to: &SiteId, msg: PeerMsg);
    /// Fetch an image's blob from `holders` (any of them; several in parallel).
    fn fetch(&mut self, image: Image, holders: Vec<SiteId>);
}

/// Effects collected in order, for shells that carry them out after `handle`
/// returns (the daemon's event loop, the simulator).
#[derive(Debug, Default)]
pub struct Outbox {
    pub writes: Vec<StoreWrite>,
    pub drivers: Vec<DriverCmd>,
    pub timers: Vec<(TimerId, Millis)>,
    pub replies: Vec<(ReqId, ApiResult)>,
    pub sends: Vec<(SiteId, PeerMsg)>,
    pub fetches: Vec<(Image, Vec<SiteId>)>,
}

impl Effects for Outbox {
    fn persist(&mut self, write: StoreWrite) {
        self.writes.push(write);
    }
    fn driver(&mut self, cmd: DriverCmd) {
        self.drivers.push(cmd);
    }
    fn schedule(&mut self, timer: TimerId, after: Millis) {
        self.timers.push((timer, after));
    }
    fn reply(&mut self, req: ReqId, result: ApiResult) {
        self.replies.push((req, result));
    }
    fn send(&mut self, to: &SiteId, msg: PeerMsg) {
        self.sends.push((to.clone(), msg));
    }
    fn fetch(&mut self, image: Image, holders: Vec<SiteId>) {
        self.fetches.push((image, holders));
    }
}

/// A rule a peer built with the `sabotage` feature can be told to break, so
/// that the simulator's checks are shown to catch it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Sabotage {
    #[default]
    None,
    /// Admit instances without the escrow check (overspends).
    Escrow,
    /// Keep a pair's sync state after a message was lost, and on a differing
    /// digest (pairs stuck for ever, or trading messages for ever).
    SyncReset,
    /// Never ask peers for quota rights (refusals while rights are in reach).
    Rebalance,
    /// Apply every change from a peer without checking who wrote it.
    Provenance,
    /// Apply intents without checking their user's consent.
    Consent,
    /// Take realm changes without checking the realm's rules on users and
    /// role bindings (crate::rules).
    Rules,
    /// Count every transfer of rights to us as written, whether or not its
    /// giver held them (crate `atoll_crdt::escrow::flows`).
    Backing,
    /// Never send a whole newer epoch to a peer holding an older one
    /// (crate::epoch): a site cut off across a compaction stays behind.
    Epoch,
    /// A tampered member: at each repair round, give itself quota rights in
    /// every other site's document it holds (crate::provenance::forge_rights).
    Forge,
    /// Every candidate reconciles each deployment, whoever it can reach
    /// (two reconcilers at once: crate::reconcile).
    Reconcilers,
    /// Gossip without repair: relay received changes to nobody and send no
    /// repair rounds (crate::sync::Peer::announce, `on_repair`), so a change
    /// reaches only the writer's own links.
    Relay,
}

pub struct PeerConfig {
    pub key: SigningKey,
    /// Seeds the peer's RNG (password salts); the shell draws it from the OS.
    pub seed: [u8; 32],
    /// This site's stable facts; `site` is its id.
    pub descriptor: Descriptor,
    pub token_ttl: Millis,
    /// Host ports containers may publish here.
    pub ports: crate::lifecycle::PortPolicy,
}

/// Who keeps which site document, cached until membership or transfers change.
#[derive(Default)]
pub(crate) struct Custody {
    /// The realm changed since `list` was read.
    pub stale: bool,
    /// The members placed on the overlay's rings (shared between sites
    /// holding the same realm in the simulator).
    pub list: std::sync::Arc<crate::overlay::Rings>,
    /// Whom this site relays changes to, rebuilt with `list`.
    pub overlay: crate::overlay::Overlay,
    /// Members and removals counted when `list` was read.
    pub counts: (usize, usize),
    pub of: BTreeMap<SiteId, Vec<SiteId>>,
    /// Sites we gave rights to; read from our document once, then kept up to date.
    pub recipients: Option<BTreeSet<SiteId>>,
    /// Per site document: the sites its intents or outcomes concern, who must
    /// receive it too. Dropped when the document changes.
    pub links: BTreeMap<SiteId, BTreeSet<SiteId>>,
    /// Per site document: every site it was linked to since this peer
    /// started. Kept when the document changes: the change that removes
    /// what linked a site (a deployment's last replica on a host, deleted)
    /// must reach it too, or its copy stays stale until a random repair.
    pub linked_before: BTreeMap<SiteId, BTreeSet<SiteId>>,
    /// Per site document: the sites it gave quota rights to. Dropped when the
    /// document changes.
    pub gave: BTreeMap<SiteId, BTreeSet<SiteId>>,
    /// The sites whose rights can reach us through a chain of transfers
    /// (their documents back what we received); None after any site
    /// document changed.
    pub upstream: Option<BTreeSet<SiteId>>,
    /// New recipients of our rights, to be sent the documents upstream of us
    /// at the next announcement.
    pub introduce: BTreeSet<SiteId>,
}

impl Custody {
    /// Drops what was read from document `id`, which changed (`here` is this site).
    pub(crate) fn forget(&mut self, id: &DocId, here: &SiteId) {
        match id {
            DocId::Realm => self.stale = true,
            DocId::Site(s) => {
                self.links.remove(s);
                self.gave.remove(s);
                self.upstream = None;
                // Our own document may change by sync too (a change of
                // ours relayed back after a restart): read it again.
                if s == here {
                    self.recipients = None;
                }
            }
        }
    }
}

#[allow(clippy::large_enum_variant)] // short-lived return value
pub(crate) enum Outcome {
    Now(ApiResult),
    /// The reply comes later (when the driver reports).
    Later,
}

pub struct Peer {
    pub(crate) site: SiteId,
    pub(crate) key: SigningKey,
    pub(crate) rng: ChaCha20Rng,
    pub(crate) descriptor: Descriptor,
    pub(crate) token_ttl: Millis,
    pub(crate) ports: crate::lifecycle::PortPolicy,
    pub(crate) realm: Realm,
    pub(crate) own: SiteDoc,
    /// Replicas of other sites' documents.
    pub(crate) others: BTreeMap<SiteId, SiteDoc>,
    /// Sync progress per (peer, document).
    pub(crate) sync: BTreeMap<(SiteId, DocId), SyncState>,
    pub(crate) connected: BTreeSet<SiteId>,
    /// The realm's identity, once asked for.
    realm_id: String,
    /// The rule this peer breaks on purpose (`sabotage` builds only).
    sabotage: Sabotage,
    /// Peers whose sync exchange is reopened by a `Resync` timer already set.
    pub(crate) resync: BTreeSet<SiteId>,
    pub(crate) custody: Custody,
    appends: BTreeMap<DocId, u32>,
    /// Documents that exist only in memory so far (a new realm).
    pub(crate) unsaved: bool,
    /// Current run number of each instance; driver events of older runs are stale.
    pub(crate) runs: BTreeMap<String, u64>,
    /// Requests waiting for an instance operation to finish.
    pub(crate) waiters: BTreeMap<String, Vec<ReqId>>,
    /// Instances being looked up by key after a start whose handle was lost.
    pub(crate) adopting: BTreeSet<String>,
    /// Writes to make after this input's document changes are durable
    /// (deleting a blob before its catalog entry is gone would break a reader).
    pub(crate) deferred: Vec<StoreWrite>,
    /// Documents persisted by this input, to announce to peers.
    changed: Vec<DocId>,
    /// The latest host figures; volatile, never persisted.
    pub(crate) metrics: Option<HostMetrics>,
    /// When each member was last heard from, and its latest summary (volatile).
    pub(crate) seen: BTreeMap<SiteId, Millis>,
    /// The time of the input being handled (for `in_reach`).
    pub(crate) now: Millis,
    /// When each member's connection last closed (volatile; one per member):
    /// it is out of reach until heard from again.
    pub(crate) lost: BTreeMap<SiteId, Millis>,
    pub(crate) summaries: BTreeMap<SiteId, crate::api::SiteView>,
    /// Tokens whose signatures verified here (crate::auth::Verified).
    pub(crate) verified: auth::Verified,
    /// This site's spare rights per project, as of the documents' edits.
    pub(crate) spare: crate::manage::SpareCache,
    /// Replies held until this input's writes are persisted.
    pub(crate) replies: Vec<(ReqId, ApiResult)>,
    /// Image blobs the shell is fetching, and callers waiting on them (with their user).
    pub(crate) fetching: BTreeSet<String>,
    /// Blobs whose fetch failed, waiting for a holder or a retry.
    pub(crate) refetch: crate::refetch::Refetch,
    /// Calls waiting for quota rights from peers.
    pub(crate) rebalance: crate::rebalance::Rebalance,
    /// Calls waiting for other sites' parts of the realm-wide view.
    pub(crate) gather: crate::gather::Gather,
    pub(crate) reach: crate::reach::Reach,
    /// Admissions refused and driver failures since start (crate::stats).
    pub(crate) counters: crate::stats::Counters,
    pub(crate) fetch_waiters: BTreeMap<String, Vec<(ReqId, String)>>,
    /// Callers waiting on intents issued here.
    pub(crate) intent_waiters: BTreeMap<String, Vec<(ReqId, crate::intents::Want)>>,
    /// Intents received here whose application waits on a driver: our own
    /// request id -> (intent, requester).
    pub(crate) applying: BTreeMap<ReqId, (String, SiteId)>,
    pub(crate) next_intent_req: ReqId,
    /// Changes from peers the gates refused (crate::provenance).
    pub(crate) refusals: crate::provenance::Refusals,
    /// Compaction of our document and adoption of others' newer epochs.
    pub(crate) epochs: crate::epoch::Epochs,
    /// Relayed changes being pulled, one announcer at a time.
    pub(crate) pulls: crate::pulls::Pulls,
    /// Per document held, its heads when last announced: the changes since
    /// are what the next local announcement pushes.
    pub(crate) pushed: BTreeMap<DocId, Vec<atoll_crdt::ChangeHash>>,
    /// The realm's first author, once read.
    founder: Option<Option<Vec<u8>>>,
    /// Deployments' reconciliation (crate::deployments).
    pub(crate) deploy: crate::deployments::Reconciler,
}

impl Peer {
    /// A peer from its saved documents: the realm, its own, and its replicas
    /// of others', each with its ledger of signatures (`sigs`, by document).
    pub fn restore(
        cfg: PeerConfig,
        realm: &[u8],
        own: &[u8],
        others: &[(SiteId, Vec<u8>)],
        sigs: &BTreeMap<DocId, Vec<u8>>,
    ) -> Result<Peer, DocError> {
        let site = cfg.descriptor.site.clone();
        let mut realm = Realm::load(realm, &site)?;
        let mut own = SiteDoc::load(own, &site, &site)?;
        let ledger = |id: &DocId| sigs.get(id).map(Vec::as_slice).unwrap_or_default();
        realm.doc.load_ledger(ledger(&DocId::Realm));
        own.doc.load_ledger(ledger(&DocId::Site(site.clone())));
        let mut peer = Peer::assemble(cfg, realm, own);
        for (owner, bytes) in others {
            // A replica saved before its first sync completed may be empty.
            let mut doc = atoll_crdt::Doc::load_any(bytes, site.as_str().as_bytes())?;
            doc.load_ledger(ledger(&DocId::Site(owner.clone())));
            peer.others.insert(owner.clone(), SiteDoc::of(owner.clone(), doc));
        }
        Ok(peer)
    }

    pub(crate) fn assemble(cfg: PeerConfig, realm: Realm, own: SiteDoc) -> Peer {
        Peer {
            site: cfg.descriptor.site.clone(),
            key: cfg.key,
            rng: ChaCha20Rng::from_seed(cfg.seed),
            descriptor: cfg.descriptor,
            token_ttl: cfg.token_ttl,
            ports: cfg.ports,
            realm,
            own,
            others: BTreeMap::new(),
            sync: BTreeMap::new(),
            connected: BTreeSet::new(),
            resync: BTreeSet::new(),
            sabotage: Sabotage::None,
            realm_id: String::new(),
            refetch: crate::refetch::Refetch::default(),
            rebalance: crate::rebalance::Rebalance::default(),
            gather: crate::gather::Gather::default(),
            reach: crate::reach::Reach::default(),
            counters: Default::default(),
            custody: Custody { stale: true, ..Custody::default() },
            appends: BTreeMap::new(),
            unsaved: false,
            runs: BTreeMap::new(),
            waiters: BTreeMap::new(),
            adopting: BTreeSet::new(),
            deferred: Vec::new(),
            replies: Vec::new(),
            metrics: None,
            seen: BTreeMap::new(),
            now: 0,
            lost: BTreeMap::new(),
            summaries: BTreeMap::new(),
            spare: Default::default(),
            verified: Default::default(),
            changed: Vec::new(),
            fetching: BTreeSet::new(),
            fetch_waiters: BTreeMap::new(),
            intent_waiters: BTreeMap::new(),
            applying: BTreeMap::new(),
            next_intent_req: crate::intents::INTENT_REQ,
            refusals: crate::provenance::Refusals::default(),
            epochs: crate::epoch::Epochs::default(),
            pulls: crate::pulls::Pulls::default(),
            pushed: BTreeMap::new(),
            founder: None,
            deploy: Default::default(),
        }
    }

    pub fn site(&self) -> &SiteId {
        &self.site
    }

    /// The realm's first author (read once: the first change never changes).
    pub(crate) fn founder(&mut self) -> Option<Vec<u8>> {
        if self.founder.is_none() {
            self.founder = Some(self.realm.doc.genesis_actor());
        }
        self.founder.clone().flatten()
    }

    /// Changes from peers refused since the last call, for the shell to log:
    /// (the peer that sent it, the document, what and why).
    pub fn take_refusals(&mut self) -> Vec<(SiteId, DocId, atoll_crdt::Refused)> {
        self.refusals.take()
    }

    /// How many changes from peers were refused since this peer started.
    pub fn refused_count(&self) -> u64 {
        self.refusals.count
    }

    /// The realm this site belongs to (computed once: its first change never
    /// changes), with a signed proof of membership when challenged.
    pub(crate) fn realm_view(&mut self, challenge: Option<String>) -> ApiResult {
        use crate::api::{RealmProof, RealmView};
        if self.realm_id.is_empty() {
            self.realm_id = self.realm.doc.genesis().unwrap_or_default();
        }
        let proof = match challenge {
            Some(c)
                if c.is_empty()
                    || c.len() > RealmProof::MAX_CHALLENGE
                    || !c.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                return Err(ApiError::Invalid(format!(
                    "a challenge is 1 to {} hex digits",
                    RealmProof::MAX_CHALLENGE
                )));
            }
            Some(challenge) => Some(auth::seal(
                &self.key,
                &RealmProof {
                    purpose: RealmProof::PURPOSE.into(),
                    realm: self.realm_id.clone(),
                    site: self.site.clone(),
                    challenge,
                },
            )),
            None => None,
        };
        Ok(Reply::Realm(RealmView {
            realm: self.realm_id.clone(),
            site: self.site.clone(),
            public_key: self.descriptor.public_key.clone(),
            proof,
            floor: self.realm.floor(),
        }))
    }

    /// Compacts this site's document after `changes` in an epoch instead of
    /// [`crate::epoch::COMPACT_AFTER`] (the simulator compacts often).
    pub fn compact_after(&mut self, changes: u64) {
        self.epochs.after = changes.max(1);
    }

    /// Makes this peer break one rule (for showing that checks catch it).
    #[cfg(feature = "sabotage")]
    pub fn sabotage(&mut self, s: Sabotage) {
        self.sabotage = s;
    }

    /// A token for `user` sealed by this site alone, as a stolen site would
    /// make one without the user's password (tests/provenance.rs shows that
    /// other sites refuse it for a user with a key).
    #[cfg(feature = "sabotage")]
    pub fn forge_token(&self, user: &str, now: Millis) -> String {
        let claims = crate::auth::Claims::new(user, &self.site, now, now + self.token_ttl);
        crate::auth::issue(&self.key, &claims, None)
    }

    /// Whether this peer was told to break `rule` (never, without the feature).
    pub(crate) fn breaks(&self, rule: Sabotage) -> bool {
        cfg!(feature = "sabotage") && self.sabotage == rule
    }

    /// This site's replica of the realm (read-only; for shells and the simulator's checks).
    pub fn realm(&self) -> &Realm {
        &self.realm
    }

    /// The realm document with its signatures, as a joining site gets it
    /// (see [`Peer::join`]).
    pub fn realm_bytes(&mut self) -> Vec<u8> {
        crate::provenance::realm_copy(&mut self.realm, &self.key)
    }

    /// This site's own document.
    pub fn own(&self) -> &SiteDoc {
        &self.own
    }

    /// The heads digest of every document this site holds, in document order.
    pub fn digests(&mut self) -> Vec<(DocId, [u8; 32])> {
        let mut docs = match self.digest_msg() {
            PeerMsg::Digest { docs } => docs,
            _ => Vec::new(),
        };
        docs.sort();
        docs
    }

    /// Whether this site holds change `hash` of document `id` (the
    /// simulator's check that no forged change was taken).
    pub fn holds_change(&mut self, id: &DocId, hash: &[u8; 32]) -> bool {
        self.doc_mut(id).is_some_and(|d| d.holds(hash))
    }

    /// The heads digest of one document, if held.
    pub fn digest_of(&mut self, id: &DocId) -> Option<[u8; 32]> {
        self.doc_mut(id).map(|d| d.digest())
    }

    /// Called once after construction: saves a new realm, publishes the site
    /// descriptor, and resumes every instance as its desired state says.
    pub fn boot(&mut self, now: Millis, fx: &mut impl Effects) -> Result<(), ApiError> {
        if self.unsaved {
            self.unsaved = false;
            fx.persist(StoreWrite::Snapshot { doc: DocId::Realm, bytes: self.realm.doc.save() });
            fx.persist(StoreWrite::Snapshot {
                doc: DocId::Site(self.site.clone()),
                bytes: self.own.doc.save(),
            });
        }
        if self.own.descriptor()?.as_ref() != Some(&self.descriptor) {
            self.own.doc.put(&self.descriptor)?;
        }
        self.flush(now, fx);
        fx.schedule(TimerId::Repair, crate::sync::REPAIR_EVERY);
        fx.schedule(TimerId::Reconcile, crate::deployments::RECONCILE_EVERY);
        self.resume_all(now, fx)?;
        self.resume_intents(now, fx);
        self.flush(now, fx);
        self.settle_applied(now);
        self.settle_quiet(now);
        self.flush(now, fx);
        for (req, result) in self.replies.drain(..) {
            fx.reply(req, result);
        }
        Ok(())
    }

    pub fn handle(&mut self, now: Millis, input: Input, fx: &mut impl Effects) {
        self.now = now;
        // Summaries are volatile: nothing to persist, relay or announce (they
        // arrive N times per gossip round, so skipping the flush matters).
        let input = match input {
            Input::Summary { from, view } => return self.on_summary(now, from, *view),
            other => other,
        };
        // Changes that came from a peer are relayed as heads, local ones pushed.
        let mut relayed_from = None;
        match input {
            Input::Api { req, token, cmd } => {
                if let Outcome::Now(result) = self.api(now, req, token, cmd, fx) {
                    if result.is_err() {
                        self.realm.doc.rollback();
                        self.own.doc.rollback();
                    }
                    self.replies.push((req, result));
                }
            }
            Input::Driver { key, run, event } => self.on_driver(now, &key, run, event, fx),
            Input::Timer(TimerId::Restart { key, run }) => self.on_restart_timer(now, &key, run, fx),
            Input::Metrics(m) => self.metrics = Some(m),
            Input::Timer(TimerId::Repair) => {
                self.collect_intents(now);
                if self.breaks(Sabotage::Forge) {
                    crate::provenance::forge_rights(self);
                }
                self.on_repair(fx)
            }
            Input::Connected(site) => {
                self.seen.insert(site.clone(), now);
                self.counters.connected(&site, now);
                self.refetch_from(now, &site, fx);
                self.on_connected(site, fx)
            }
            Input::Disconnected(site) => self.on_disconnected(&site),
            Input::Undelivered(site) => self.on_undelivered(&site, fx),
            Input::Timer(TimerId::Resync { site }) => self.on_resync(&site, fx),
            Input::Timer(TimerId::Refetch { digest }) => self.on_refetch_timer(now, &digest, fx),
            Input::Timer(TimerId::RightsWait { id, last: false }) => self.on_rights_nudge(now, id, fx),
            Input::Timer(TimerId::RightsWait { id, last: true }) => self.on_rights_wait(now, id, fx),
            Input::Timer(TimerId::GatherWait { id }) => self.on_gather_wait(now, id, fx),
            Input::Timer(TimerId::ReachWait { id }) => self.on_reach_wait(id, fx),
            Input::Timer(TimerId::Reconcile) => self.on_reconcile_timer(now, fx),
            Input::Timer(TimerId::Pull { doc }) => self.on_pull_wait(now, &doc, fx),
            Input::Message { from, msg } => {
                self.seen.insert(from.clone(), now);
                relayed_from = Some(from.clone());
                self.on_message(now, from, msg, fx)
            }
            Input::Summary { .. } => {}
            Input::Timer(TimerId::IntentWait { id, req }) => self.on_intent_wait(&id, req),
            Input::Fetched { digest, result } => self.on_fetched(now, &digest, result, fx),
        }
        self.flush(now, fx);
        // Other sites' documents that changed may carry intents for us, or
        // outcomes of ours.
        let others: Vec<SiteId> = self
            .changed
            .iter()
            .filter_map(|id| match id {
                DocId::Site(s) if s != &self.site => Some(s.clone()),
                _ => None,
            })
            .collect();
        // Transfers to us may have arrived, or rights been freed here (an
        // instance gone): calls waiting for rights go first.
        if !self.changed.is_empty() {
            self.retry_parked(now, fx);
        }
        if !others.is_empty() {
            self.apply_intents(now, &others, fx);
            self.answer_intent_waiters(&others);
            self.time_settled(now, &others);
        }
        self.settle_applied(now);
        self.settle_quiet(now);
        // Persist before replying: an acknowledged write is durable.
        self.flush(now, fx);
        for write in self.deferred.drain(..) {
            fx.persist(write);
        }
        for (req, result) in self.replies.drain(..) {
            fx.reply(req, result);
        }
        let mut changed = std::mem::take(&mut self.changed);
        changed.sort();
        changed.dedup();
        self.announce(&changed, relayed_from.as_ref(), fx);
    }

    fn api(
        &mut self,
        now: Millis,
        req: ReqId,
        token: Option<String>,
        cmd: Command,
        fx: &mut impl Effects,
    ) -> Outcome {
        let user = if cmd.is_public() {
            None
        } else {
            let Some(token) = token else {
                return Outcome::Now(Err(ApiError::Unauthenticated(
                    "no token: log in first (atoll login)".into(),
                )));
            };
            match auth::verify_with(&self.realm, &token, now, &mut self.verified) {
                Ok((claims, _)) if matches!(cmd, Command::Logout) => {
                    return Outcome::Now(self.logout(now, &claims, &token));
                }
                Ok((claims, user)) => Some(Caller { user, session: Session::of(&claims) }),
                Err(e) => return Outcome::Now(Err(e)),
            }
        };
        match (cmd, user) {
            (Command::Login { user, password }, _) => Outcome::Now(self.login(now, &user, &password)),
            (Command::Credentials { user }, _) => Outcome::Now(self.credentials(&user)),
            (Command::IssueToken { user, key }, _) => Outcome::Now(self.issue_token(now, &user, key)),
            (Command::Realm { challenge }, _) => Outcome::Now(self.realm_view(challenge)),
            (cmd, Some(caller)) => self.dispatch(now, req, &caller, cmd, fx),
            (_, None) => Outcome::Now(Err(ApiError::Unauthenticated("no token".into()))),
        }
    }

    pub(crate) fn dispatch(
        &mut self,
        now: Millis,
        req: ReqId,
        caller: &Caller,
        cmd: Command,
        fx: &mut impl Effects,
    ) -> Outcome {
        use Command::*;
        let user = &caller.user;
        let result = match cmd {
            Login { .. } | Realm { .. } | Credentials { .. } | IssueToken { .. } | Logout => {
                unreachable_login()
            }
            Whoami => self.whoami(user),
            Authenticate => Ok(Reply::Authorized { user: user.name.clone() }),
            CreateUser(n) => self.create_user(now, caller, n),
            ListUsers => self.list_users(user),
            DeleteUser { name } => self.delete_user(caller, &name),
            SetPassword { user: name, password_hash, current_checked, key } => {
                self.set_password(now, caller, &name, (password_hash, key), current_checked)
            }
            RevokeTokens { user: name } => self.revoke_tokens(now, caller, &name),
            RevokeRole { user: name, project } => self.revoke_role(caller, &name, &project),
            DeleteProject { project } => return self.delete_project(now, req, caller, project, fx),
            CreateProject(n) => self.create_project(now, caller, n),
            SetSpread { project, spread } => self.set_spread(caller, &project, spread),
            ListProjects => self.list_projects(user),
            GrantRole(g) => self.grant_role(caller, g),
            ListRoles => self.list_roles(user),
            SetQuota { project, total } => self.set_quota(now, caller, &project, total),
            ShowQuota { project } => self.show_quota(user, &project),
            GiveQuota { project, to, amount } => self.give_quota(now, user, &project, &to, amount),
            UploadRoom { project } => self.upload_room(user, &project),
            SetStorage { project, storage_mib } => self.set_storage(caller, &project, storage_mib),
            RegisterImage(n) => self.register_image(now, caller, n),
            ListImages => self.list_images(user),
            ShowImage { project, name } => self.show_image(user, &project, &name),
            RemoveImage { project, name } => return self.delete_image(now, req, caller, project, name, fx),
            CreateInstance(n) => return self.create_instance(now, req, user, n, fx),
            ListInstances { site } => return self.gather(now, req, caller, site, Purpose::List, fx),
            ShowInstance { project, name } => self.show_instance(user, &project, &name),
            Anywhere { site, wait_ms, then } => {
                let (project, name) = match &*then {
                    ShowInstance { project, name }
                    | StartInstance { project, name }
                    | StopInstance { project, name }
                    | DeleteInstance { project, name } => (project.clone(), name.clone()),
                    _ => {
                        return Outcome::Now(Err(ApiError::Invalid(
                            "only show, start, stop and delete of an instance run wherever it is".into(),
                        )));
                    }
                };
                let purpose = Purpose::Find { project, name, wait_ms, then };
                return self.gather(now, req, caller, site, purpose, fx);
            }
            StartInstance { project, name } => {
                return self.act(now, req, user, (&project, &name), Verb::Start, fx);
            }
            StopInstance { project, name } => {
                return self.act(now, req, user, (&project, &name), Verb::Stop, fx);
            }
            DeleteInstance { project, name } => {
                return self.act(now, req, user, (&project, &name), Verb::Delete, fx);
            }
            CopyImage { project, name } => return self.copy_image(req, user, (&project, &name), fx),
            Remote { site, wait_ms, then } => return self.remote(now, req, caller, site, wait_ms, *then, fx),
            ListIntents => self.list_intents(user),
            ShowIntent { id, wait_ms } => return self.show_intent(req, user, id, wait_ms, fx),
            ShowSite => self.show_site(),
            ListSites => self.list_sites(now),
            Reachability => return self.reachability(req, fx),
            RemoveSite { site } => self.remove_site(now, caller, &site),
            FinishUpgrade { speaking } => self.finish_upgrade(caller, &speaking),
            CreateFlavor(n) => self.create_flavor(now, caller, n),
            ListFlavors => self.list_flavors(),
            DeleteFlavor { name } => self.delete_flavor(caller, &name),
            PlanDeployment(d) => self.plan_deployment(now, user, &d),
            ApplyDeployment(d) => self.apply_deployment(now, caller, d),
            ListDeployments => self.list_deployments(user),
            ShowDeployment { project, name } => self.show_deployment(user, &project, &name),
            ScaleDeployment { project, name, service, replicas } => {
                self.scale_deployment(now, caller, (&project, &name), &service, replicas)
            }
            DeleteDeployment { project, name } => self.delete_deployment(now, caller, &project, &name),
            PlaceReplica { project, deployment, revision, service, name } => {
                return self.place_replica(
                    now,
                    req,
                    user,
                    (&project, &deployment, revision),
                    &service,
                    name,
                    fx,
                );
            }
            StopReplica { project, deployment, name } => {
                return self.stop_replica(now, req, user, (&project, &deployment, &name), fx);
            }
            InviteSite { name, ttl_secs } => auth::require_realm_admin(user).and_then(|()| {
                let ttl = ttl_secs.map_or(crate::membership::INVITE_TTL, |s| s.saturating_mul(1000));
                self.invite(now, caller, name, ttl)
            }),
        };
        Outcome::Now(result)
    }

    /// Commits pending writes and hands the bytes of every new change (local, or
    /// received from a peer) to the shell.
    pub(crate) fn flush(&mut self, now: Millis, fx: &mut impl Effects) {
        self.own.doc.commit(now);
        self.compact_if_due(now);
        let site = DocId::Site(self.site.clone());
        let mut sign = crate::provenance::signer(&self.key);
        for doc in [&mut self.realm.doc, &mut self.own.doc] {
            doc.commit(now);
            doc.sign_own(&mut sign);
        }
        let docs = [(DocId::Realm, &mut self.realm.doc), (site, &mut self.own.doc)]
            .into_iter()
            .chain(self.others.iter_mut().map(|(s, d)| (DocId::Site(s.clone()), &mut d.doc)));
        for (id, doc) in docs {
            doc.commit(now);
            if self.epochs.replaced.remove(&id) {
                doc.ledger_mut().take_unsaved();
                let sigs = atoll_crdt::Ledger::encode(&doc.all_signatures());
                self.custody.forget(&id, &self.site);
                self.changed.push(id.clone());
                self.appends.insert(id.clone(), 0);
                fx.persist(StoreWrite::Epoch { doc: id, bytes: doc.save(), sigs });
                continue;
            }
            // Signatures first: a change stored without its signature could
            // not be relayed after a crash.
            let sigs = doc.ledger_mut().take_unsaved();
            if !sigs.is_empty() {
                fx.persist(StoreWrite::Sigs { doc: id.clone(), bytes: atoll_crdt::Ledger::encode(&sigs) });
            }
            let bytes = doc.save_incremental();
            if bytes.is_empty() {
                continue;
            }
            self.custody.forget(&id, &self.site);
            self.changed.push(id.clone());
            let n = self.appends.entry(id.clone()).or_insert(0);
            *n += 1;
            if *n >= COMPACT_EVERY {
                *n = 0;
                fx.persist(StoreWrite::Snapshot { doc: id, bytes: doc.save() });
            } else {
                fx.persist(StoreWrite::Append { doc: id, bytes });
            }
        }
    }
}

/// Public commands are dispatched before authentication; reaching `dispatch`
/// with one is a bug we answer with an error rather than a panic.
fn unreachable_login() -> ApiResult {
    Err(ApiError::Internal("login reached the authenticated dispatcher".into()))
}
