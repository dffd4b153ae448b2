//! The discrete-event engine: a heap of (time, seq, event), sites running the
//! real `Peer`, links with latency, jitter, loss and bandwidth, partitions,
//! crashes and restarts from persisted state, and a scripted driver.
//! Everything random comes from one seeded RNG; nothing reads the OS clock.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

use atoll_crdt::{Descriptor, Kind, Member, Millis, Resources, SiteId};
use atoll_proto::api::{NewImage, NewInstance, NewProject};
use atoll_proto::{
    ApiResult, Command, DriverCmd, DriverEvent, Input, Outbox, Peer, PeerConfig, PeerMsg, Reply, ReqId,
    StoreWrite, TimerId, auth,
};
use ed25519_dalek::SigningKey;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

use crate::checks::Checks;
use crate::scenario::{Scenario, Step};

mod forge;
mod steps;
mod stores;

pub(crate) use stores::{Segments, Stored};

const ADMIN_PASSWORD: &str = "sim-admin-password";
/// Full mesh up to this many sites; beyond, each site links to the sites a
/// daemon keeps connections to (atoll_proto::overlay::kept).
const MESH_UP_TO: usize = atoll_proto::overlay::FULL_MESH_UP_TO;
/// When setup runs (the sites have met by then).
const SETUP_MS: Millis = 500;
/// Setup is over; scenario steps start from here.
const SETUP_END: Millis = 2_000;
/// How often summaries go round, and up to how many sites.
const GOSSIP_EVERY: Millis = 5_000;
const GOSSIP_UP_TO: usize = 100;
/// Give up settling after this much simulated time past the end.
const SETTLE_MS: Millis = 300_000;
/// The quiet check: a window of this length, starting this long after the
/// realm converged, in which each site may send at most this many sync messages.
const QUIET_AFTER_MS: Millis = 10_000;
const QUIET_WINDOW_MS: Millis = 30_000;
const QUIET_LIMIT_PER_SITE: u64 = 4;

#[derive(Debug)]
enum Ev {
    Deliver {
        from: usize,
        to: usize,
        epoch: u64,
        /// The sender's epoch: a lost message is reported to that run only.
        from_epoch: u64,
        bytes: Vec<u8>,
    },
    Timer {
        site: usize,
        epoch: u64,
        timer: TimerId,
    },
    Driver {
        site: usize,
        epoch: u64,
        key: String,
        run: u64,
        event: DriverEvent,
    },
    /// An image fetch the site asked for has finished (or failed).
    Fetched {
        site: usize,
        epoch: u64,
        digest: String,
        result: Result<(), String>,
    },
    /// A message to `to` was lost while the connection seemed up: its sender
    /// learns it (a failed or timed-out request).
    Undelivered {
        site: usize,
        epoch: u64,
        to: usize,
    },
    /// Silent cuts: the sites at either end of a cut link notice it.
    Detect {
        a: usize,
        b: usize,
    },
    /// Silent cuts: a healed link whose cut was noticed is dialled again.
    Redial {
        a: usize,
        b: usize,
    },
    /// Every site's summary to its neighbours (the daemon gossips one every 5 s).
    Gossip,
    Step(usize),
    Probe,
    /// Deployments: a look at the replicas while a loss is being repaired.
    Recovery,
    /// Setup calls, once the sites have met: 0 login, projects, shares; 1 images.
    Setup(u8),
}

struct Queued {
    at: Millis,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

pub(crate) struct Site {
    pub peer: Option<Peer>,
    pub id: SiteId,
    pub region: usize,
    /// What the site persisted: document id -> saved bytes.
    pub store: BTreeMap<String, Stored>,
    pub epoch: u64,
    key_seed: u64,
    /// Scripted driver: instance keys currently running.
    pub running: BTreeSet<String>,
    pub neighbours: Vec<usize>,
}

/// Requests waiting for their reply: what they were.
enum Pending {
    Create {
        site: usize,
        key: String,
        want: Resources,
        project: String,
        /// When the call was made.
        at: Millis,
    },
    /// A creation sent to another site; the reply is the intent.
    Intent,
    /// A `quota give` with arbitrary figures: refusing it is fine, failing is not.
    Give,
    /// A deployment applied or deleted: it must be taken.
    Deploy,
    /// An instance deleted: it may be gone already, or never have been made.
    Delete {
        key: String,
    },
    Other,
}

pub struct Sim {
    pub sc: Scenario,
    pub now: Millis,
    seq: u64,
    heap: BinaryHeap<Reverse<Queued>>,
    pub(crate) sites: Vec<Site>,
    /// Directed links that drop messages.
    pub cut: BTreeSet<(usize, usize)>,
    /// Silent cuts: pairs (low, high) whose sites noticed the cut and hold no
    /// connection until a redial succeeds.
    down: BTreeSet<(usize, usize)>,
    /// The last time anything about the network changed (cuts, heals,
    /// crashes, restarts, noticed cuts, redials).
    net_changed_at: Millis,
    rng: ChaCha20Rng,
    trace: Sha256,
    token: String,
    next_req: ReqId,
    pending: HashMap<ReqId, Pending>,
    link_free: HashMap<(usize, usize), Millis>,
    pub stats: crate::report::Stats,
    pub checks: Checks,
    /// What must hold of deployments' replicas.
    pub replicas: crate::replicas::Replicas,
    /// Summaries go round until then (None: the scenario's end).
    gossip_until: Option<Millis>,
    /// Sites outside the largest group of the last partition.
    outside: BTreeSet<usize>,
    /// Whether an `Ev::Recovery` is queued.
    recovery_queued: bool,
    index: HashMap<SiteId, usize>,
    /// Forged changes sent (`forge` steps): no site may hold one.
    forged: Vec<(atoll_proto::DocId, [u8; 32])>,
    last_forgery: Option<PeerMsg>,
    /// Projects a thief gave rights it never held (`over-give`): there a
    /// giver's answer may be worth less than it says, so a refusal while
    /// another site held spare rights is counted, not a violation.
    lied_about: BTreeSet<String>,
    /// The stores' segments, shared between sites that saved the same bytes.
    segments: Segments,
}

/// A site's configuration: its key comes from `key_seed` (the same across
/// restarts), its RNG from `run_seed` (a real restart draws a fresh one).
/// Tells a peer to break a rule (the CLI refuses `--sabotage` in builds without it).
#[cfg(feature = "sabotage")]
fn sabotage(peer: &mut Peer, s: atoll_proto::Sabotage) {
    peer.sabotage(s);
}

#[cfg(not(feature = "sabotage"))]
fn sabotage(_: &mut Peer, _: atoll_proto::Sabotage) {}

/// What a scenario sets on every peer it starts or restarts.
fn configure(peer: &mut Peer, sc: &Scenario) {
    sabotage(peer, sc.sabotage);
    if let Some(n) = sc.sites.compact_after {
        peer.compact_after(n);
    }
}

/// An unordered pair of sites, lowest first.
fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

fn config(i: usize, key_seed: u64, run_seed: u64, region: &str) -> PeerConfig {
    let key = SigningKey::generate(&mut ChaCha20Rng::seed_from_u64(key_seed));
    let descriptor = Descriptor {
        site: SiteId::new(&format!("s{i}")).expect("valid site name"),
        operator: "sim".into(),
        region: region.into(),
        labels: Default::default(),
        public_key: auth::encode_key(&key.verifying_key()),
        kinds: vec![Kind::Process, Kind::Container, Kind::Vm],
        drivers: vec![],
        arch: "sim".into(),
        capacity: Resources::new(1000, 64, 256 * 1024),
        disk_mib: 1 << 20,
        version: "sim".into(),
    };
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&key_seed.to_le_bytes());
    seed[8..16].copy_from_slice(&run_seed.to_le_bytes());
    PeerConfig { key, seed, descriptor, token_ttl: 1 << 40, ports: Default::default() }
}

impl Sim {
    pub fn new(sc: Scenario) -> Sim {
        // Thousands of sites in one process hold the same documents: they
        // share them (docs/architecture.md, "Simulator").
        atoll_crdt::share_replicas();
        let mut rng = ChaCha20Rng::seed_from_u64(sc.seed);
        let n = sc.sites.count;
        let mut sites = Vec::with_capacity(n);
        let key_seeds: Vec<u64> = (0..n).map(|_| rng.next_u64()).collect();
        let configs: Vec<PeerConfig> = (0..n)
            .map(|i| config(i, key_seeds[i], 0, &sc.sites.regions[i % sc.sites.regions.len()]))
            .collect();
        let members: Vec<Member> = configs
            .iter()
            .map(|c| Member {
                site: c.descriptor.site.clone(),
                public_key: c.descriptor.public_key.clone(),
                region: c.descriptor.region.clone(),
                operator: c.descriptor.operator.clone(),
                joined_at: 0,
                addrs: Vec::new(),
                invitation: None,
                api_cert: None,
            })
            .collect();
        // The operator enrolls every site at genesis: one realm change, not n.
        let mut realm_bytes = Vec::new();
        for (i, cfg) in configs.into_iter().enumerate() {
            let region = i % sc.sites.regions.len();
            let key_seed = key_seeds[i];
            let mut peer = if i == 0 {
                let mut p = Peer::genesis_fleet(cfg, 0, ADMIN_PASSWORD, &members[1..]).expect("genesis");
                realm_bytes = p.realm_bytes();
                p
            } else {
                Peer::join(cfg, 0, &realm_bytes).expect("join")
            };
            configure(&mut peer, &sc);
            sites.push(Site {
                id: peer.site().clone(),
                peer: Some(peer),
                region,
                store: BTreeMap::new(),
                epoch: 0,
                key_seed,
                running: BTreeSet::new(),
                neighbours: Vec::new(),
            });
        }
        let index: HashMap<SiteId, usize> =
            sites.iter().enumerate().map(|(i, s)| (s.id.clone(), i)).collect();
        let seats: Vec<atoll_proto::sync::Seat> = members.iter().map(Into::into).collect();
        let mut sim = Sim {
            sc,
            now: 0,
            seq: 0,
            heap: BinaryHeap::new(),
            sites,
            cut: BTreeSet::new(),
            down: BTreeSet::new(),
            net_changed_at: 0,
            rng,
            trace: Sha256::new(),
            token: String::new(),
            next_req: 1,
            pending: HashMap::new(),
            link_free: HashMap::new(),
            stats: Default::default(),
            checks: Checks::default(),
            replicas: Default::default(),
            gossip_until: None,
            outside: BTreeSet::new(),
            recovery_queued: false,
            index,
            forged: Vec::new(),
            lied_about: BTreeSet::new(),
            segments: Segments::default(),
            last_forgery: None,
        };
        sim.build_overlay(&seats);
        sim
    }

    /// Who talks to whom: everyone up to MESH_UP_TO sites; above, the links a
    /// daemon keeps (atoll_proto::overlay::kept: ring neighbours, which are
    /// also custodians), plus those from site 0 (which hands out quota
    /// shares) to all.
    fn build_overlay(&mut self, seats: &[atoll_proto::sync::Seat]) {
        let n = self.sites.len();
        let mut links: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
        if n <= MESH_UP_TO {
            for (a, l) in links.iter_mut().enumerate() {
                l.extend((0..n).filter(|b| *b != a));
            }
        } else {
            let rings = atoll_proto::overlay::Rings::new(seats);
            for a in 0..n {
                for b in rings.kept(&self.sites[a].id).iter().map(|s| self.index[s]) {
                    links[a].insert(b);
                    links[b].insert(a);
                }
                if a != 0 {
                    links[0].insert(a);
                    links[a].insert(0);
                }
            }
        }
        for (s, l) in self.sites.iter_mut().zip(links) {
            s.neighbours = l.into_iter().collect();
        }
    }

    fn push(&mut self, at: Millis, ev: Ev) {
        self.seq += 1;
        self.heap.push(Reverse(Queued { at, seq: self.seq, ev }));
    }

    fn alive(&self, i: usize) -> bool {
        self.sites[i].peer.is_some()
    }

    fn linked(&self, a: usize, b: usize) -> bool {
        self.alive(a) && self.alive(b) && !self.cut.contains(&(a, b)) && !self.cut.contains(&(b, a))
    }

    /// Feeds one input to a site and carries out its effects.
    fn input(&mut self, i: usize, input: Input) {
        let Some(peer) = self.sites[i].peer.as_mut() else { return };
        let mut fx = Outbox::default();
        peer.handle(self.now, input, &mut fx);
        self.carry_out(i, fx);
    }

    fn carry_out(&mut self, i: usize, fx: Outbox) {
        let epoch = self.sites[i].epoch;
        for w in fx.writes {
            let store = &mut self.sites[i].store;
            let seg = &mut self.segments;
            match w {
                StoreWrite::Append { doc, bytes } => {
                    store.entry(doc.to_string()).or_default().append(bytes, seg)
                }
                StoreWrite::Snapshot { doc, bytes } => {
                    store.entry(doc.to_string()).or_default().replace(bytes, seg)
                }
                StoreWrite::Sigs { doc, bytes } => {
                    store.entry(format!("sigs/{doc}")).or_default().append(bytes, seg)
                }
                StoreWrite::Epoch { doc, bytes, sigs } => {
                    store.entry(doc.to_string()).or_default().replace(bytes, seg);
                    store.entry(format!("sigs/{doc}")).or_default().replace(sigs, seg);
                }
                StoreWrite::DeleteBlob { .. } => {}
            }
        }
        for (to, msg) in fx.sends {
            let Some(&j) = self.index.get(&to) else { continue };
            let bytes = msg.encode();
            self.stats.messages += 1;
            self.stats.bytes += bytes.len() as u64;
            if matches!(msg, PeerMsg::Sync { .. }) {
                self.stats.sync_messages += 1;
            }
            if matches!(msg, PeerMsg::RightsAsk { .. } | PeerMsg::RightsGiven { .. }) {
                self.stats.rights_messages += 1;
                self.stats.rights_bytes += bytes.len() as u64;
            }
            if self.sc.network.silent_cuts && self.down.contains(&pair(i, j)) {
                continue; // no connection: the shell sends nothing
            }
            // Beyond the full mesh, a site sending to one it has no link to
            // (the target of an intent, a replica's host) dials it, as a
            // daemon's shell would; the link then stays.
            if !self.sites[i].neighbours.contains(&j) {
                self.dial(i, j);
            }
            // No random loss during setup (the first 2 s): scenarios start from a realm that met.
            let lost = self.now >= SETUP_END && self.chance(self.sc.network.loss);
            if !self.linked(i, j) || lost {
                self.stats.dropped += 1;
                self.report_lost(i, epoch, j);
                continue;
            }
            let at = self.arrival(i, j, bytes.len());
            let to_epoch = self.sites[j].epoch;
            self.push(at, Ev::Deliver { from: i, to: j, epoch: to_epoch, from_epoch: epoch, bytes });
        }
        for (timer, after) in fx.timers {
            self.push(self.now + after, Ev::Timer { site: i, epoch, timer });
        }
        for cmd in fx.drivers {
            self.script(i, epoch, cmd);
        }
        for (image, holders) in fx.fetches {
            // The blob crosses the link from the first holder reachable now;
            // the simulator keeps no blobs, so only its time is modelled.
            let from = holders.iter().filter_map(|h| self.index.get(h).copied()).find(|&j| self.linked(i, j));
            let (at, result) = match from {
                Some(j) => (self.arrival(j, i, image.size as usize), Ok(())),
                None => (self.now + 1000, Err("no holder is reachable".to_owned())),
            };
            self.push(at, Ev::Fetched { site: i, epoch, digest: image.digest, result });
        }
        for (req, result) in fx.replies {
            self.on_reply(req, result);
        }
    }

    /// Silent cuts: the sender of a lost message learns it when its request
    /// times out, or when the cut is noticed, whichever comes first.
    fn report_lost(&mut self, site: usize, epoch: u64, to: usize) {
        let net = &self.sc.network;
        if net.silent_cuts {
            let after = net.request_timeout_ms.min(net.detect_ms).max(1);
            self.push(self.now + after, Ev::Undelivered { site, epoch, to });
        }
    }

    /// A creation was refused for quota: counts it if the project's total had
    /// room for it (the truth over every site), and if a site in reach of the
    /// refusing one held spare rights covering it (goal: none; they should
    /// have been asked for). "Spare": the site's own account of what it holds
    /// free covers the request at the refusal. "In reach": a site the refusing
    /// one is connected to (every site in a full mesh; its overlay neighbours
    /// in a large realm, the only sites it can ask), alive, linked both ways
    /// and no cut being noticed or link redialled, and no change to the
    /// network at all since the call was made. On a network that loses
    /// messages an ask or its answer may be lost within the wait, so there
    /// such refusals are counted only; on a lossless one each is a violation.
    fn refused_with_rights_in_reach(
        &mut self,
        site: usize,
        project: &str,
        want: Resources,
        at: Millis,
        why: &str,
    ) {
        if self.total_had_room(project, want) {
            self.stats.refused_with_room += 1;
        }
        if self.net_changed_at > at {
            return;
        }
        let holder = self.sites[site].neighbours.iter().copied().find(|&t| {
            t != site
                && self.linked(site, t)
                && !self.down.contains(&pair(site, t))
                && self.sites[t]
                    .peer
                    .as_ref()
                    .and_then(|p| p.account(project).ok())
                    .is_some_and(|a| a.available().covers(want))
        });
        if let Some(t) = holder {
            self.stats.refused_in_reach += 1;
            if self.sc.network.loss == 0.0 && !self.lied_about.contains(project) {
                let what = format!(
                    "s{site} refused {want} of {project} while s{t}, in reach, held it spare ({why})"
                );
                self.checks.violation(self.now, what);
            }
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.rng.next_u64() as f64 / u64::MAX as f64) < p
    }

    fn arrival(&mut self, a: usize, b: usize, len: usize) -> Millis {
        let net = &self.sc.network;
        let base = if self.sites[a].region == self.sites[b].region { net.intra_ms } else { net.inter_ms };
        let jitter = if net.jitter_ms > 0 { self.rng.next_u64() % (net.jitter_ms + 1) } else { 0 };
        let mut depart = self.now;
        if net.bytes_per_ms > 0 {
            // Messages on one link queue behind each other.
            let free = self.link_free.get(&(a, b)).copied().unwrap_or(0).max(self.now);
            depart = free + (len as u64).div_ceil(net.bytes_per_ms);
            self.link_free.insert((a, b), depart);
        }
        depart + base + jitter
    }

    /// The scripted driver: seeded delays, and a check that nothing runs twice.
    fn script(&mut self, site: usize, epoch: u64, cmd: DriverCmd) {
        let delay = 20 + self.rng.next_u64() % 200;
        let (key, run) = (cmd.key().to_owned(), cmd.run());
        let event = match cmd {
            DriverCmd::Start { .. } => {
                if !self.sites[site].running.insert(key.clone()) {
                    self.checks
                        .violation(self.now, format!("instance {key} started on s{site} while running"));
                }
                DriverEvent::Started { handle: format!("sim:{run}"), detail: "scripted".into() }
            }
            DriverCmd::Recover { .. } => {
                if self.sites[site].running.contains(&key) {
                    DriverEvent::Started { handle: format!("sim:{run}"), detail: "re-attached".into() }
                } else {
                    DriverEvent::Exited { code: None, detail: String::new() }
                }
            }
            DriverCmd::Stop { .. } => {
                self.sites[site].running.remove(&key);
                DriverEvent::Stopped
            }
            DriverCmd::Destroy { .. } => {
                self.sites[site].running.remove(&key);
                DriverEvent::Destroyed
            }
        };
        self.push(self.now + delay, Ev::Driver { site, epoch, key, run, event });
    }

    fn call(&mut self, site: usize, cmd: Command, what: Pending) {
        let req = self.next_req;
        self.next_req += 1;
        self.pending.insert(req, what);
        let token = (!self.token.is_empty()).then(|| self.token.clone());
        self.input(site, Input::Api { req, token, cmd });
    }

    fn on_reply(&mut self, req: ReqId, result: ApiResult) {
        match (self.pending.remove(&req), result) {
            (Some(Pending::Create { site, key, .. }), Ok(Reply::Instance(_))) => {
                self.stats.created += 1;
                self.checks.acked.push((site, key));
            }
            (Some(Pending::Create { site, want, project, at, .. }), Err(e))
                if e.code() == "quota_exceeded" =>
            {
                self.stats.refused += 1;
                self.refused_with_rights_in_reach(site, &project, want, at, &e.to_string());
            }
            (Some(Pending::Intent), Ok(Reply::Intent(v))) => {
                self.checks.intents.push((v.requester, v.target, v.intent))
            }
            (Some(Pending::Intent), other) => {
                self.checks.violation(self.now, format!("sending an intent failed: {other:?}"));
            }
            (Some(Pending::Give), Ok(_)) => self.stats.gives += 1,
            (Some(Pending::Give), Err(e)) if matches!(e.code(), "invalid" | "quota_exceeded") => {}
            (Some(Pending::Give), Err(e)) => {
                self.checks.violation(self.now, format!("quota give failed unexpectedly: {e}"));
            }
            (Some(Pending::Create { key, .. }), Err(e)) => {
                self.checks.violation(self.now, format!("create {key} failed unexpectedly: {e}"));
            }
            (Some(Pending::Delete { .. }), Ok(_)) => self.stats.deleted += 1,
            (Some(Pending::Delete { .. }), Err(e)) if e.code() == "not_found" => {
                self.stats.delete_missed += 1
            }
            (Some(Pending::Delete { key }), Err(e)) => {
                self.checks.violation(self.now, format!("delete {key} failed unexpectedly: {e}"));
            }
            (Some(Pending::Deploy), Err(e)) => {
                self.checks.violation(self.now, format!("a deployment call failed: {e}"));
            }
            (_, Ok(Reply::Token(t))) => self.token = t.token,
            (_, Err(e)) => self.checks.violation(self.now, format!("setup call failed: {e}")),
            _ => {}
        }
    }

    /// Boots every site, connects the overlay, and runs the setup calls.
    fn start(&mut self) {
        for i in 0..self.sites.len() {
            let mut fx = Outbox::default();
            if let Some(p) = self.sites[i].peer.as_mut() {
                p.boot(0, &mut fx).expect("boot");
            }
            self.carry_out(i, fx);
        }
        for i in 0..self.sites.len() {
            for j in self.sites[i].neighbours.clone() {
                let id = self.sites[j].id.clone();
                self.input(i, Input::Connected(id));
            }
        }
        self.push(SETUP_MS, Ev::Setup(0));
        self.push(2 * SETUP_MS + 500, Ev::Setup(1));
        let times: Vec<Millis> = self.sc.timeline.iter().map(|s| (s.at * 1000.0) as Millis).collect();
        for (k, at) in times.into_iter().enumerate() {
            self.push(at, Ev::Step(k));
        }
        self.push(1000, Ev::Probe);
        // Summaries go round in realms up to GOSSIP_UP_TO sites, or when the
        // scenario deploys (placement reads them); beyond, they dominate the
        // run (issue 17 bounds dissemination) and sites ask peers for rights
        // in random order.
        let deploys = self.sc.timeline.iter().any(|s| s.deploy.is_some());
        if self.sites.len() <= GOSSIP_UP_TO || deploys {
            self.push(SETUP_END, Ev::Gossip);
        }
    }

    /// Whether the project's total, less what every site's own document says
    /// it uses, covers `want` (the truth no single site knows).
    fn total_had_room(&self, project: &str, want: Resources) -> bool {
        let peers = self.sites.iter().filter_map(|s| s.peer.as_ref());
        let Some(total) = peers.clone().find_map(|p| p.realm().quota_total(project).ok()) else {
            return false;
        };
        let used = Resources::checked_sum(peers.filter_map(|p| p.own().consumed(project).ok()));
        used.and_then(|u| total.checked_minus(u)).is_some_and(|room| room.covers(want))
    }

    /// Hands every live site's summary to its connected neighbours; in an
    /// overlay of up to GOSSIP_UP_TO sites, to every site its neighbours' links
    /// reach as well (gossipsub floods summaries over the daemons' connections,
    /// and large realms judge who is in reach by them: atoll_proto::reach).
    fn gossip(&mut self) {
        let n = self.sites.len();
        let flood = n > MESH_UP_TO && n <= GOSSIP_UP_TO;
        for i in 0..n {
            let Some(view) = self.sites[i].peer.as_ref().and_then(|p| p.summary().ok()) else { continue };
            let from = self.sites[i].id.clone();
            let mut reached = vec![false; n];
            reached[i] = true;
            let mut queue = std::collections::VecDeque::from([i]);
            let mut to = Vec::new();
            while let Some(k) = queue.pop_front() {
                for &j in &self.sites[k].neighbours {
                    if !reached[j] && self.linked(k, j) && !self.down.contains(&pair(k, j)) {
                        reached[j] = true;
                        to.push(j);
                        if flood {
                            queue.push_back(j);
                        }
                    }
                }
            }
            for j in to {
                let view = Box::new(view.clone());
                self.input(j, Input::Summary { from: from.clone(), view });
            }
        }
    }

    fn record(&mut self, q: &Queued) {
        let (kind, site, len) = match &q.ev {
            Ev::Deliver { from, to, bytes, .. } => {
                (1u8, (*from as u64) << 32 | *to as u64, bytes.len() as u64)
            }
            Ev::Timer { site, .. } => (2, *site as u64, 0),
            Ev::Driver { site, run, .. } => (3, *site as u64, *run),
            Ev::Fetched { site, .. } => (7, *site as u64, 0),
            Ev::Undelivered { site, to, .. } => (8, (*site as u64) << 32 | *to as u64, 0),
            Ev::Detect { a, b } => (9, (*a as u64) << 32 | *b as u64, 0),
            Ev::Redial { a, b } => (10, (*a as u64) << 32 | *b as u64, 0),
            Ev::Gossip => (11, 0, 0),
            Ev::Step(k) => (4, *k as u64, 0),
            Ev::Probe => (5, 0, 0),
            Ev::Recovery => (12, 0, 0),
            Ev::Setup(phase) => (6, *phase as u64, 0),
        };
        self.trace.update(q.at.to_le_bytes());
        self.trace.update(q.seq.to_le_bytes());
        self.trace.update([kind]);
        self.trace.update(site.to_le_bytes());
        self.trace.update(len.to_le_bytes());
    }

    fn process(&mut self, q: Queued) {
        self.now = q.at;
        self.record(&q);
        match q.ev {
            Ev::Deliver { from, to, epoch, from_epoch, bytes } => {
                if self.sites[to].epoch != epoch || !self.linked(from, to) {
                    self.stats.dropped += 1;
                    self.report_lost(from, from_epoch, to);
                    return;
                }
                match PeerMsg::decode(&bytes) {
                    Ok(msg) => {
                        let id = self.sites[from].id.clone();
                        self.input(to, Input::Message { from: id, msg });
                    }
                    Err(e) => self.checks.violation(self.now, format!("undecodable message: {e}")),
                }
            }
            Ev::Timer { site, epoch, timer } => {
                if self.sites[site].epoch == epoch {
                    self.input(site, Input::Timer(timer));
                }
            }
            Ev::Driver { site, epoch, key, run, event } => {
                if self.sites[site].epoch == epoch {
                    self.input(site, Input::Driver { key, run, event });
                }
            }
            Ev::Fetched { site, epoch, digest, result } => {
                if self.sites[site].epoch == epoch {
                    self.input(site, Input::Fetched { digest, result });
                }
            }
            Ev::Undelivered { site, epoch, to } => {
                if self.sites[site].epoch == epoch {
                    let id = self.sites[to].id.clone();
                    self.input(site, Input::Undelivered(id));
                }
            }
            Ev::Detect { a, b } => {
                if !self.linked(a, b) && self.down.insert((a, b)) {
                    self.net_changed_at = self.now;
                    let (ida, idb) = (self.sites[a].id.clone(), self.sites[b].id.clone());
                    self.input(a, Input::Disconnected(idb));
                    self.input(b, Input::Disconnected(ida));
                }
            }
            Ev::Redial { a, b } => {
                if self.linked(a, b) && self.down.remove(&(a, b)) {
                    self.net_changed_at = self.now;
                    let (ida, idb) = (self.sites[a].id.clone(), self.sites[b].id.clone());
                    self.input(a, Input::Connected(idb));
                    self.input(b, Input::Connected(ida));
                }
            }
            Ev::Gossip => {
                self.gossip();
                let until = self.gossip_until.unwrap_or((self.sc.duration * 1000.0) as Millis);
                if self.now + GOSSIP_EVERY <= until {
                    self.push(self.now + GOSSIP_EVERY, Ev::Gossip);
                }
            }
            Ev::Step(k) => self.apply_step(k),
            Ev::Recovery => {
                self.recovery_queued = false;
                self.replicas.recovery.probe(self.now, &self.sites);
                self.queue_recovery();
            }
            Ev::Setup(phase) => self.setup(phase),
            Ev::Probe => {
                let sample = self.checks.probe(self.now, &mut self.sites);
                // The plot keeps one sample a second; convergence after a
                // heal is looked for every 100 ms until it is reached.
                if self.now.is_multiple_of(1000) {
                    self.stats.samples.push(sample);
                }
                let every = if self.checks.awaiting_convergence() { 100 } else { 1000 - self.now % 1000 };
                if self.now + every <= (self.sc.duration * 1000.0) as Millis {
                    self.push(self.now + every, Ev::Probe);
                }
            }
        }
    }

    /// Runs the scenario, then lets the network settle (only repair timers left),
    /// then checks convergence and acknowledged writes.
    pub fn run(&mut self) {
        self.start();
        let end = (self.sc.duration * 1000.0) as Millis;
        while let Some(Reverse(q)) = self.heap.pop() {
            if q.at > end {
                self.heap.push(Reverse(q));
                break;
            }
            self.process(q);
        }
        // Settle: keep delivering and repairing, a second at a time, until every
        // document is equal everywhere (or SETTLE_MS passes).
        let mut horizon = end;
        while horizon < end + SETTLE_MS && !self.checks.all_equal(&mut self.sites) {
            horizon += 1000;
            self.advance(horizon);
        }
        // Deployments: reconcilers act every 2 s once the documents agree;
        // give them a minute.
        if self.replicas.any {
            // Placement reads gossiped summaries: a site restarted near the
            // end has none until they go round again, as in the daemon.
            self.gossip_until = Some(self.now + 60_000);
            self.push(self.now + 1, Ev::Gossip);
            self.advance(self.now + 60_000);
            let whole = self.cut.is_empty() && (0..self.sites.len()).all(|i| self.alive(i));
            if whole {
                for v in self.replicas.finish(&self.sites) {
                    self.checks.violation(self.now, v);
                }
            }
        }
        self.stats.settled_at = self.now;
        self.check_forged();
        self.checks.finish(self.now, &mut self.sites, &self.sc);
        if self.checks.converged == Some(true) {
            self.quiet_window();
        }
        let expect = self.sc.expect.clone();
        if let Some(min) = expect.min_created
            && self.stats.created < min
        {
            self.checks.violation(
                self.now,
                format!("expected at least {min} creations, got {}", self.stats.created),
            );
        }
        if let Some(min) = expect.min_refused
            && self.stats.refused < min
        {
            self.checks.violation(
                self.now,
                format!("expected at least {min} quota refusals, got {}", self.stats.refused),
            );
        }
    }

    /// Looks at the replicas again soon while a loss is being repaired.
    pub(super) fn queue_recovery(&mut self) {
        if self.replicas.recovery.open() && !self.recovery_queued {
            self.recovery_queued = true;
            self.push(self.now + crate::recovery::PROBE_EVERY, Ev::Recovery);
        }
    }

    /// Processes every event due until `horizon`, then stands there.
    fn advance(&mut self, horizon: Millis) {
        while let Some(Reverse(q)) = self.heap.pop() {
            if q.at > horizon {
                self.heap.push(Reverse(q));
                break;
            }
            self.process(q);
        }
        self.now = self.now.max(horizon);
    }

    /// After convergence the realm must go quiet: from 10 s on, a 30 s window
    /// in which sync exchanges are rare (repair rounds find equal digests and
    /// send none; a pair stuck on a stale sync state trades messages forever).
    fn quiet_window(&mut self) {
        let start = self.now + QUIET_AFTER_MS;
        let end = start + QUIET_WINDOW_MS;
        let mut at_start = None;
        while let Some(Reverse(q)) = self.heap.pop() {
            if q.at > end {
                self.heap.push(Reverse(q));
                break;
            }
            if q.at >= start && at_start.is_none() {
                at_start = Some(self.stats.sync_messages);
            }
            self.process(q);
        }
        let sent = at_start.map_or(0, |n| self.stats.sync_messages - n);
        self.stats.quiet_sync_messages = sent;
        let limit = QUIET_LIMIT_PER_SITE * self.sites.len() as u64;
        if sent > limit {
            let secs = QUIET_WINDOW_MS / 1000;
            let what =
                format!("not quiet: {sent} sync messages in {secs} s after convergence (limit {limit})");
            self.checks.violation(self.now, what);
        }
    }

    pub fn trace_hash(&self) -> String {
        hex::encode(self.trace.clone().finalize())
    }

    /// Epochs started by compaction, over the sites that are up.
    pub fn epochs(&self) -> u64 {
        self.sites.iter().filter_map(|s| s.peer.as_ref()).map(|p| p.own().doc.epoch()).sum()
    }

    /// Bytes each site persisted: (sum over sites, largest site).
    pub fn persisted(&self) -> (usize, usize) {
        let sizes = self.sites.iter().map(|s| s.store.values().map(Stored::len).sum::<usize>());
        sizes.fold((0, 0), |(t, m), n| (t + n, m.max(n)))
    }
}
