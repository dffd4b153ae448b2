//! Several peers over an in-test network: every message goes through the real
//! wire encoding; links can be cut and healed.

use std::collections::{BTreeSet, VecDeque};

use atoll_crdt::{Descriptor, Kind, Resources, SiteId};
use ed25519_dalek::SigningKey;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use crate::api::{NewProject, NewUser};
use crate::*;

type Out = Outbox;

pub(crate) fn cfg(i: usize) -> PeerConfig {
    let key = SigningKey::generate(&mut ChaCha20Rng::seed_from_u64(i as u64));
    let descriptor = Descriptor {
        site: SiteId::new(&format!("s{i}")).unwrap(),
        operator: "op".into(),
        region: "r".into(),
        labels: Default::default(),
        public_key: auth::encode_key(&key.verifying_key()),
        kinds: vec![Kind::Process],
        drivers: vec![],
        arch: "x86_64".into(),
        capacity: Resources::new(10, 4, 4096),
        disk_mib: 1000,
        version: "test".into(),
    };
    PeerConfig { key, seed: [i as u8; 32], descriptor, token_ttl: 3_600_000, ports: Default::default() }
}

/// A site's membership record, as the admitting member enters it.
pub(crate) fn member_of(c: &PeerConfig) -> atoll_crdt::Member {
    let d = &c.descriptor;
    atoll_crdt::Member {
        site: d.site.clone(),
        public_key: d.public_key.clone(),
        region: d.region.clone(),
        operator: d.operator.clone(),
        joined_at: 0,
        addrs: Vec::new(),
        invitation: None,
        api_cert: None,
    }
}

pub(crate) struct Net {
    pub peers: Vec<Peer>,
    queue: VecDeque<(usize, usize, Vec<u8>)>,
    /// Driver commands, answered with success as the network settles.
    drivers: VecDeque<(usize, DriverCmd)>,
    /// Image fetches asked for, left to the test to complete.
    pub fetches: Vec<(usize, atoll_crdt::Image, Vec<SiteId>)>,
    /// Every reply given, in order.
    pub replies: Vec<(ReqId, ApiResult)>,
    pub(crate) cut: BTreeSet<(usize, usize)>,
    /// Links cut without either end noticing: messages are lost and their
    /// sender is told (`Undelivered`), as a failed request tells the shell.
    pub silent: BTreeSet<(usize, usize)>,
    /// Timers set, left to the test to fire.
    pub timers: Vec<(usize, TimerId)>,
    pub now: u64,
    bytes: usize,
}

impl Net {
    pub fn new(n: usize) -> Net {
        let members: Vec<atoll_crdt::Member> = (1..n).map(|i| member_of(&cfg(i))).collect();
        let mut first = Peer::genesis_fleet(cfg(0), 0, "admin-password", &members).unwrap();
        let realm = first.realm_bytes();
        let mut peers = vec![first];
        for i in 1..n {
            peers.push(Peer::join(cfg(i), 0, &realm).unwrap());
        }
        let mut net = Net {
            peers,
            queue: VecDeque::new(),
            drivers: VecDeque::new(),
            fetches: Vec::new(),
            replies: Vec::new(),
            cut: BTreeSet::new(),
            silent: BTreeSet::new(),
            timers: Vec::new(),
            now: 1,
            bytes: 0,
        };
        for i in 0..n {
            let mut out = Out::default();
            net.peers[i].boot(0, &mut out).unwrap();
            net.absorb(i, out);
        }
        for a in 0..n {
            for b in 0..n {
                if a != b {
                    net.input(a, Input::Connected(net.site(b)));
                }
            }
        }
        net
    }

    pub fn site(&self, i: usize) -> SiteId {
        self.peers[i].site().clone()
    }

    fn index(&self, s: &SiteId) -> usize {
        self.peers.iter().position(|p| p.site() == s).unwrap()
    }

    fn absorb(&mut self, from: usize, out: Out) -> Vec<(ReqId, ApiResult)> {
        for (to, msg) in out.sends {
            let bytes = msg.encode();
            self.bytes += bytes.len();
            let to = self.index(&to);
            self.queue.push_back((from, to, bytes));
        }
        self.drivers.extend(out.drivers.into_iter().map(|c| (from, c)));
        self.timers.extend(out.timers.into_iter().map(|(t, _)| (from, t)));
        self.fetches.extend(out.fetches.into_iter().map(|(image, holders)| (from, image, holders)));
        self.replies.extend(out.replies.iter().cloned());
        out.replies
    }

    /// The reply to `req`, given by any input so far.
    pub fn reply(&self, req: ReqId) -> Option<ApiResult> {
        self.replies.iter().rev().find(|(r, _)| *r == req).map(|(_, res)| res.clone())
    }

    pub fn input(&mut self, i: usize, input: Input) -> Vec<(ReqId, ApiResult)> {
        self.now += 1;
        let mut out = Out::default();
        self.peers[i].handle(self.now, input, &mut out);
        self.absorb(i, out)
    }

    /// Delivers until no message is in flight (messages over a cut link are
    /// lost) and every driver command has been answered with success.
    pub fn settle(&mut self) {
        for _ in 0..100_000 {
            if let Some((i, cmd)) = self.drivers.pop_front() {
                let (key, run) = (cmd.key().to_owned(), cmd.run());
                let event = match cmd {
                    DriverCmd::Start { .. } | DriverCmd::Recover { .. } => {
                        DriverEvent::Started { handle: format!("h-{key}"), detail: "running".into() }
                    }
                    DriverCmd::Stop { .. } => DriverEvent::Stopped,
                    DriverCmd::Destroy { .. } => DriverEvent::Destroyed,
                };
                self.input(i, Input::Driver { key, run, event });
                continue;
            }
            let Some((from, to, bytes)) = self.queue.pop_front() else { return };
            if self.cut.contains(&(from, to)) {
                continue;
            }
            if self.silent.contains(&(from, to)) {
                let site = self.site(to);
                self.input(from, Input::Undelivered(site));
                continue;
            }
            let msg = PeerMsg::decode(&bytes).unwrap();
            let site = self.site(from);
            self.input(to, Input::Message { from: site, msg });
        }
        panic!("the network never went quiet");
    }

    /// Every site's summary to every other, as the shell gossips them.
    pub fn gossip(&mut self) {
        let views: Vec<_> = self.peers.iter().map(|p| p.summary().unwrap()).collect();
        for (from, view) in views.into_iter().enumerate() {
            for to in 0..self.peers.len() {
                if to != from && !self.cut.contains(&(from, to)) {
                    let site = self.site(from);
                    self.input(to, Input::Summary { from: site, view: Box::new(view.clone()) });
                }
            }
        }
    }

    /// Fires the timers set so far that `pick` selects.
    pub fn fire(&mut self, pick: impl Fn(&TimerId) -> bool) {
        let (due, kept): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.timers).into_iter().partition(|(_, t)| pick(t));
        self.timers = kept;
        for (i, t) in due {
            self.input(i, Input::Timer(t));
        }
    }

    pub fn partition(&mut self, island: usize) {
        for j in 0..self.peers.len() {
            if j != island {
                self.cut.insert((island, j));
                self.cut.insert((j, island));
                let (a, b) = (self.site(island), self.site(j));
                self.input(island, Input::Disconnected(b));
                self.input(j, Input::Disconnected(a));
            }
        }
    }

    pub fn heal(&mut self) {
        let cut = std::mem::take(&mut self.cut);
        for (a, b) in cut {
            let s = self.site(b);
            self.input(a, Input::Connected(s));
        }
        self.settle();
    }

    /// Sends a command that may be answered later; returns its request id.
    pub fn ask(&mut self, i: usize, token: &str, cmd: Command) -> ReqId {
        let req = 1000 + self.now;
        self.input(i, Input::Api { req, token: Some(token.to_owned()), cmd });
        req
    }

    pub fn call(&mut self, i: usize, token: Option<&str>, cmd: Command) -> ApiResult {
        let replies = self.input(i, Input::Api { req: 7, token: token.map(str::to_owned), cmd });
        replies.into_iter().find(|(r, _)| *r == 7).map(|(_, res)| res).expect("reply")
    }

    pub fn login(&mut self, i: usize, user: &str, password: &str) -> String {
        match self.call(i, None, Command::Login { user: user.into(), password: password.into() }) {
            Ok(Reply::Token(t)) => t.token,
            other => panic!("login at {i}: {other:?}"),
        }
    }

    pub fn assert_converged(&mut self) {
        let ids: Vec<DocId> = std::iter::once(DocId::Realm)
            .chain((0..self.peers.len()).map(|i| DocId::Site(self.site(i))))
            .collect();
        for id in &ids {
            let digests: BTreeSet<[u8; 32]> =
                self.peers.iter_mut().filter_map(|p| p.doc_mut(id).map(|d| d.digest())).collect();
            assert_eq!(digests.len(), 1, "{id} differs between sites");
        }
    }
}

#[test]
fn sites_replicate_the_realm_and_each_others_documents() {
    let mut net = Net::new(3);
    net.settle();
    net.assert_converged();
    // Every site knows every member, so a token issued by one verifies on all.
    let admin = net.login(0, "admin", "admin-password");
    let user = NewUser { name: "ann".into(), password: "ann-password".into(), realm_admin: false };
    net.call(0, Some(&admin), Command::CreateUser(user)).unwrap();
    net.settle();
    let ann = net.login(2, "ann", "ann-password");
    assert!(net.call(1, Some(&ann), Command::Whoami).is_ok(), "a token of s2 verifies on s1");
    net.assert_converged();
    assert!(net.bytes > 0);
}

#[test]
fn a_partitioned_site_keeps_working_and_merges_when_healed() {
    let mut net = Net::new(3);
    net.settle();
    let admin = net.login(0, "admin", "admin-password");
    net.partition(2);
    // Both sides write while apart.
    let p = |name: &str| {
        Command::CreateProject(NewProject {
            storage_mib: atoll_crdt::DEFAULT_STORAGE_MIB,
            name: name.into(),
            description: String::new(),
            quota: Resources::new(1, 1, 64),
            spread: atoll_crdt::Spread::Pool,
        })
    };
    net.call(0, Some(&admin), p("left")).unwrap();
    net.call(2, Some(&admin), p("right")).unwrap();
    net.settle();
    let listed = |net: &mut Net, i: usize| match net.call(i, Some(&admin), Command::ListProjects) {
        Ok(Reply::Projects(ps)) => ps.into_iter().map(|p| p.name).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert!(!listed(&mut net, 0).contains(&"right".to_owned()));
    let before = net.peers[2].stats().unwrap().converge.count;
    net.heal();
    // The healed site timed its sync with each of the other two once.
    assert_eq!(net.peers[2].stats().unwrap().converge.count - before, 2);
    for i in 0..3 {
        let names = listed(&mut net, i);
        assert!(
            names.contains(&"left".to_owned()) && names.contains(&"right".to_owned()),
            "site {i}: {names:?}"
        );
    }
    net.assert_converged();
}

#[test]
fn garbage_from_a_peer_is_dropped() {
    let mut net = Net::new(2);
    net.settle();
    let from = net.site(1);
    net.input(
        0,
        Input::Message {
            from: from.clone(),
            msg: PeerMsg::Sync { doc: DocId::Realm, msg: vec![0xff; 64], sigs: Vec::new() },
        },
    );
    let stranger = SiteId::new("stranger").unwrap();
    net.input(0, Input::Message { from: stranger.clone(), msg: PeerMsg::Digest { docs: vec![] } });
    // A document of a site that is not a member is not taken.
    net.input(
        0,
        Input::Message {
            from,
            msg: PeerMsg::Sync { doc: DocId::Site(stranger.clone()), msg: vec![1, 2, 3], sigs: Vec::new() },
        },
    );
    assert!(!net.peers[0].others.contains_key(&stranger));
    net.settle();
    net.assert_converged();
}

/// The hole of issue "one atoll" item 0: `quota give` multiplied the amount by
/// the number of recipients with wrapping arithmetic, and accepted a recipient
/// named twice.
#[test]
fn quota_give_refuses_wrapping_amounts_and_repeated_recipients() {
    use atoll_crdt::Resources;
    let mut net = Net::new(3);
    net.settle();
    let admin = net.login(0, "admin", "admin-password");
    let give = |to: Vec<SiteId>, amount| Command::GiveQuota { project: "default".into(), to, amount };
    let two = vec![net.site(1), net.site(2)];
    for amount in [
        Resources::new(1 << 62, 1, 1),
        Resources::new(i64::MAX, 1, 1),
        Resources::new(Resources::LIMIT + 1, 0, 0),
        Resources::new(1, i64::MAX / 2 + 1, 1),
    ] {
        let err = net.call(0, Some(&admin), give(two.clone(), amount)).unwrap_err();
        assert!(matches!(err, ApiError::Invalid(_) | ApiError::QuotaExceeded(_)), "{amount}: {err}");
    }
    let twice = vec![net.site(1), net.site(1)];
    let err = net.call(0, Some(&admin), give(twice, Resources::new(4, 1, 1))).unwrap_err();
    assert!(err.to_string().contains("named twice"), "{err}");
    // Nothing moved: the founder still holds the whole total, the others nothing.
    net.settle();
    let total = net.peers[0].realm().quota_total("default").unwrap();
    let held = net.peers[0].account("default").unwrap();
    assert_eq!(held.checked_available(), Some(total));
    assert_eq!(net.peers[1].account("default").unwrap().checked_available(), Some(Resources::ZERO));
}

/// Rights passed along a chain of givers count at the end of it: the last
/// recipient is sent the first giver's document (which backs what the middle
/// one passed on) even when custody would not give it to it.
#[test]
fn rights_passed_along_a_chain_count_at_its_end() {
    use atoll_crdt::Resources;
    let mut net = Net::new(6);
    net.settle();
    let admin = net.login(0, "admin", "admin-password");
    let founder = net.site(0);
    let custodians = net.peers[0].custodians_of(&founder);
    let end = (1..6).find(|&i| !custodians.contains(&net.site(i))).expect("a site that is no custodian");
    let middle = (1..6).find(|&i| i != end).unwrap();
    let amount = Resources::new(2, 2, 128);
    let give =
        |to: usize, n: &Net| Command::GiveQuota { project: "default".into(), to: vec![n.site(to)], amount };
    net.call(0, Some(&admin), give(middle, &net)).unwrap();
    net.settle();
    let admin_m = net.login(middle, "admin", "admin-password");
    net.call(middle, Some(&admin_m), give(end, &net)).unwrap();
    net.settle();
    assert!(
        net.peers[end].others.contains_key(&founder),
        "the end of the chain holds the first giver's document"
    );
    let held = net.peers[end].account("default").unwrap();
    assert_eq!(held.checked_available(), Some(amount), "{held:?}");
    assert_eq!(net.peers[middle].account("default").unwrap().checked_available(), Some(Resources::ZERO));
}

/// A sync message lost while the connection stays up (a request that timed
/// out, say) must not leave the pair believing it was delivered: automerge
/// would never resend those changes. The pair's state is reset and the
/// exchange reopened, and once the link works the documents converge and the
/// network goes quiet.
#[test]
fn a_lost_sync_message_resets_the_pair_and_it_converges() {
    let mut net = Net::new(2);
    net.settle();
    let admin = net.login(0, "admin", "admin-password");
    net.silent.extend([(0, 1), (1, 0)]);
    let project = NewProject {
        storage_mib: atoll_crdt::DEFAULT_STORAGE_MIB,
        name: "lab".into(),
        description: String::new(),
        quota: Resources::new(1, 1, 64),
        spread: atoll_crdt::Spread::Pool,
    };
    net.call(0, Some(&admin), Command::CreateProject(project)).unwrap();
    net.settle();
    assert!(net.peers[1].realm().project("lab").unwrap().is_none(), "the change was lost");
    assert!(net.timers.iter().any(|(i, t)| *i == 0 && matches!(t, TimerId::Resync { .. })));
    // The link works again; nobody noticed it was down.
    net.silent.clear();
    net.fire(|t| matches!(t, TimerId::Resync { .. }));
    net.settle();
    assert!(net.peers[1].realm().project("lab").unwrap().is_some());
    net.assert_converged();
    // A later change flows at once: the pair's state is sound again.
    let project = NewProject {
        storage_mib: atoll_crdt::DEFAULT_STORAGE_MIB,
        name: "lab2".into(),
        description: String::new(),
        quota: Resources::ZERO,
        spread: atoll_crdt::Spread::Pool,
    };
    net.call(0, Some(&admin), Command::CreateProject(project)).unwrap();
    net.settle();
    assert!(net.peers[1].realm().project("lab2").unwrap().is_some());
}

/// Every member names the same realm, publicly; another realm has another name.
#[test]
fn members_name_one_realm() {
    let mut net = Net::new(3);
    net.settle();
    let realm_of = |net: &mut Net, i: usize| match net.call(i, None, Command::Realm { challenge: None }) {
        Ok(Reply::Realm(v)) => v.realm,
        other => panic!("{other:?}"),
    };
    let first = realm_of(&mut net, 0);
    assert_eq!(first.len(), 64);
    assert_eq!(realm_of(&mut net, 1), first);
    assert_eq!(realm_of(&mut net, 2), first);
    // The same founder, key and millisecond, another seed (a real founder
    // draws it from the OS): another realm.
    let mut other = Peer::genesis(PeerConfig { seed: [9; 32], ..cfg(0) }, 0, "admin-password").unwrap();
    let mut out = Out::default();
    other.handle(1, Input::Api { req: 1, token: None, cmd: Command::Realm { challenge: None } }, &mut out);
    match out.replies.pop() {
        Some((_, Ok(Reply::Realm(v)))) => assert_ne!(v.realm, first),
        other => panic!("{other:?}"),
    }
}

/// A challenged site proves it is the member it claims: the proof verifies
/// with its key from the realm, and with no other member's.
#[test]
fn a_challenged_site_proves_its_membership() {
    use crate::api::RealmProof;
    let mut net = Net::new(2);
    net.settle();
    let Ok(Reply::Realm(v)) = net.call(1, None, Command::Realm { challenge: Some("00ff".into()) }) else {
        panic!()
    };
    let (proof, body, sig): (RealmProof, _, _) = auth::open(v.proof.as_deref().unwrap()).unwrap();
    assert_eq!(
        (proof.realm.as_str(), proof.site.as_str(), proof.challenge.as_str()),
        (v.realm.as_str(), "s1", "00ff")
    );
    assert_eq!(proof.purpose, RealmProof::PURPOSE);
    let key_of = |i: usize| net.peers[0].realm().member(&net.site(i)).unwrap().unwrap().public_key;
    assert!(auth::check_seal(&key_of(1), &body, &sig).is_ok());
    assert!(auth::check_seal(&key_of(0), &body, &sig).is_err());
    // A proof is no token.
    assert!(auth::verify(net.peers[0].realm(), v.proof.as_deref().unwrap(), 1).is_err());
    for bad in ["", "xyz", &"a".repeat(65)] {
        let r = net.call(1, None, Command::Realm { challenge: Some(bad.into()) });
        assert!(matches!(r, Err(ApiError::Invalid(_))), "{bad:?}: {r:?}");
    }
}
