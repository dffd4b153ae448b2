//! Merge laws and the escrow invariant, checked over random schedules.

use std::collections::BTreeMap;

use atoll_crdt::escrow::quota_change;
use atoll_crdt::*;
use proptest::prelude::*;

fn site(i: usize) -> SiteId {
    SiteId::new(&format!("s{i}")).unwrap()
}

/// Moves `site`'s share of project `p`, as the site does (its revision one
/// up; the consent a peer adds is not this crate's).
fn add_grant(realm: &mut Realm, site: &SiteId, delta: Resources, now: u64) {
    let g = realm.moved_grant("p", site, delta, now).unwrap();
    let rev = g.seal.rev + 1;
    realm
        .doc
        .put(&atoll_crdt::QuotaGrant { seal: atoll_crdt::Seal { rev, ..Default::default() }, ..g })
        .unwrap();
}

fn user(name: &str, admin: bool) -> User {
    User {
        name: name.into(),
        password_hash: format!("h-{name}"),
        realm_admin: admin,
        created_at: 0,
        key: None,
        seal: Default::default(),
    }
}

/// A write any replica of the realm may make.
#[derive(Debug, Clone)]
enum RealmOp {
    PutUser { replica: usize, name: u8, admin: bool },
    DeleteUser { replica: usize, name: u8 },
    PutProject { replica: usize, name: u8, desc: u8 },
}

fn realm_op() -> impl Strategy<Value = RealmOp> {
    prop_oneof![
        (0..3usize, 0..4u8, any::<bool>()).prop_map(|(replica, name, admin)| RealmOp::PutUser {
            replica,
            name,
            admin
        }),
        (0..3usize, 0..4u8).prop_map(|(replica, name)| RealmOp::DeleteUser { replica, name }),
        (0..3usize, 0..3u8, 0..3u8).prop_map(|(replica, name, desc)| RealmOp::PutProject {
            replica,
            name,
            desc
        }),
    ]
}

fn snapshot(realm: &Realm) -> (Vec<User>, Vec<Project>) {
    (realm.doc.list().unwrap(), realm.doc.list().unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever order and however often changes are delivered, replicas that saw
    /// the same set of changes hold the same heads and the same entities.
    #[test]
    fn replicas_converge(ops in prop::collection::vec(realm_op(), 1..40),
                         order in prop::collection::vec(any::<prop::sample::Index>(), 0..80)) {
        let genesis = Realm::create(&site(0), 0).unwrap();
        let mut origin = genesis.doc;
        let mut replicas: Vec<Realm> = (0..3).map(|i| Realm { doc: origin.fork_as(site(i).as_str().as_bytes()) }).collect();
        for (t, op) in ops.iter().enumerate() {
            let (r, now) = match op {
                RealmOp::PutUser { replica, name, admin } => {
                    replicas[*replica].doc.put(&user(&format!("u{name}"), *admin)).unwrap();
                    (*replica, t as u64)
                }
                RealmOp::DeleteUser { replica, name } => {
                    replicas[*replica].doc.delete::<User>(&format!("u{name}")).unwrap();
                    (*replica, t as u64)
                }
                RealmOp::PutProject { replica, name, desc } => {
                    let p = Project { name: format!("p{name}"), description: format!("d{desc}"), created_at: 0, spread: Default::default(), storage_mib: 1 };
                    replicas[*replica].doc.put(&p).unwrap();
                    (*replica, t as u64)
                }
            };
            replicas[r].doc.commit(now * 1000);
        }
        // Every change from every replica, delivered in a random order with duplicates.
        let mut all: Vec<Vec<u8>> = replicas.iter_mut().flat_map(|r| r.doc.changes_since(&[])).collect();
        let n = all.len();
        for idx in &order {
            let i = idx.index(n);
            all.push(all[i].clone());
        }
        let mut a = Realm { doc: origin.fork_as(b"x") };
        let mut b = Realm { doc: origin.fork_as(b"y") };
        a.doc.apply(&all).unwrap();
        all.reverse();
        for chunk in all.chunks(3) {
            b.doc.apply(chunk).unwrap();
        }
        prop_assert_eq!(a.doc.heads(), b.doc.heads());
        prop_assert_eq!(snapshot(&a), snapshot(&b));
        // Merging replicas pairwise reaches the same state too (merge is commutative).
        let mut m = Realm { doc: replicas[2].doc.fork_as(b"m") };
        m.doc.merge(&mut replicas[0].doc).unwrap();
        m.doc.merge(&mut replicas[1].doc).unwrap();
        prop_assert_eq!(m.doc.heads(), a.doc.heads());
        prop_assert_eq!(snapshot(&m), snapshot(&a));
    }
}

/// One site's local view: its realm replica and a replica of every site document.
struct View {
    realm: Realm,
    docs: BTreeMap<SiteId, SiteDoc>,
}

#[derive(Debug, Clone)]
enum Op {
    Create {
        at: usize,
        cpus: i64,
        mem: i64,
    },
    Delete {
        at: usize,
        which: prop::sample::Index,
    },
    Give {
        from: usize,
        to: usize,
        cpus: i64,
    },
    /// The stolen site writes a transfer to `to` with no check at all.
    Forge {
        to: usize,
        cpus: i64,
    },
    SetQuota {
        at: usize,
        instances: i64,
        cpus: i64,
    },
    Sync {
        a: usize,
        b: usize,
    },
}

const SITES: usize = 4;
/// The site that `Forge` steps make a thief: it writes transfers of rights it
/// may not hold (its own document is its to write; only what it says is a lie).
const THIEF: usize = SITES - 1;

/// Mostly small figures, sometimes the extremes where arithmetic wraps or saturates.
fn figure(small: std::ops::Range<i64>) -> impl Strategy<Value = i64> {
    prop_oneof![
        8 => small,
        1 => Just(i64::MAX),
        1 => Just(i64::MAX / 2 + 1),
        1 => Just(Resources::LIMIT),
        1 => Just(i64::MIN),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..SITES, 1..4i64, 1..600i64).prop_map(|(at, cpus, mem)| Op::Create { at, cpus, mem }),
        1 => (0..SITES, any::<prop::sample::Index>()).prop_map(|(at, which)| Op::Delete { at, which }),
        2 => (0..SITES, 0..SITES, figure(1..4)).prop_map(|(from, to, cpus)| Op::Give { from, to, cpus }),
        1 => (0..SITES, figure(0..12), figure(0..20)).prop_map(|(at, instances, cpus)| Op::SetQuota { at, instances, cpus }),
        3 => (0..SITES, 0..SITES).prop_map(|(a, b)| Op::Sync { a, b }),
        1 => (0..THIEF, figure(1..6)).prop_map(|(to, cpus)| Op::Forge { to, cpus }),
    ]
}

/// A site's account; None only for the thief, whose lies may overflow.
fn checked_account(v: &View, s: &SiteId) -> Option<Account> {
    let own = &v.docs[s];
    match Account::read(&v.realm, own, v.docs.values().filter(|d| &d.site != s), "p") {
        Ok(a) => Some(a),
        Err(e) if s == &site(THIEF) => {
            let _ = e;
            None
        }
        Err(e) => panic!("account of {s}: {e}"),
    }
}

fn account(v: &View, s: &SiteId) -> Account {
    checked_account(v, s).unwrap_or_default()
}

fn apply(views: &mut [View], op: &Op, now: u64) {
    match *op {
        Op::Create { at, cpus, mem } => {
            let s = site(at);
            let req = Resources::new(1, cpus, mem);
            if checked_account(&views[at], &s).is_some_and(|a| a.admit("p", req).is_ok()) {
                let doc = views[at].docs.get_mut(&s).unwrap();
                let inst = instance(&s, now, cpus, mem);
                doc.doc.put(&inst).unwrap();
                doc.doc.commit(now);
            }
        }
        Op::Delete { at, which } => {
            let s = site(at);
            let doc = views[at].docs.get_mut(&s).unwrap();
            let all = doc.instances().unwrap();
            if !all.is_empty() {
                let victim = &all[which.index(all.len())];
                doc.doc.delete::<Instance>(&victim.key()).unwrap();
                doc.doc.commit(now);
            }
        }
        Op::Give { from, to, cpus } => {
            if from == to {
                return;
            }
            let s = site(from);
            let amount = Resources::new(1, cpus, 256);
            if checked_account(&views[from], &s).is_some_and(|a| a.admit("p", amount).is_ok()) {
                let doc = views[from].docs.get_mut(&s).unwrap();
                doc.add_transfer("p", &site(to), amount, now).unwrap();
                doc.doc.commit(now);
            }
        }
        Op::Forge { to, cpus } => {
            let s = site(THIEF);
            let doc = views[THIEF].docs.get_mut(&s).unwrap();
            let amount = Resources::new(cpus.clamp(0, Resources::LIMIT), cpus, 1 << 20);
            if doc.add_transfer("p", &site(to), amount, now).is_ok() {
                doc.doc.commit(now);
            }
        }
        Op::SetQuota { at, instances, cpus } => {
            let s = site(at);
            let v = &mut views[at];
            let total = v.realm.quota_total("p").unwrap();
            let new_total = Resources::new(instances, cpus, 4096);
            let Some(account) = checked_account(v, &s) else { return };
            if let Ok(delta) = quota_change("p", total, new_total, &account) {
                add_grant(&mut v.realm, &s, delta, now);
                v.realm.doc.commit(now);
            }
        }
        Op::Sync { a, b } => {
            if a == b {
                return;
            }
            let (x, y) = if a < b {
                let (l, r) = views.split_at_mut(b);
                (&mut l[a], &mut r[0])
            } else {
                let (l, r) = views.split_at_mut(a);
                (&mut r[0], &mut l[b])
            };
            x.realm.doc.merge(&mut y.realm.doc).unwrap();
            for (id, d) in x.docs.iter_mut() {
                d.doc.merge(&mut y.docs.get_mut(id).unwrap().doc).unwrap();
            }
        }
    }
}

fn instance(s: &SiteId, now: u64, cpus: i64, mem: i64) -> Instance {
    Instance {
        name: format!("i{now}"),
        project: "p".into(),
        site: s.clone(),
        image: "p/img".into(),
        image_digest: "sha256:00".into(),
        kind: Kind::Process,
        cpus,
        memory_mib: mem,
        disk_mib: 0,
        restart: RestartPolicy::Never,
        args: vec![],
        env: Default::default(),
        ports: vec![],
        desired: Desired::Running,
        observed: Observed::Pending,
        reason: String::new(),
        observed_at: now,
        handle: None,
        restarts: 0,
        created_by: "u".into(),
        created_at: now,
        replica: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// No schedule of admissions, deletions, transfers, quota changes and partial
    /// syncs lets the project's consumption exceed its total, not even with a
    /// thief writing transfers of rights it does not hold, and while nobody
    /// lies every site's rights stay non-negative in the merged truth.
    #[test]
    fn escrow_never_overspends(ops in prop::collection::vec(op(), 1..60)) {
        // Genesis at site 0 with a total of 6 instances / 8 cpus / 4096 MiB.
        let mut realm = Realm::create(&site(0), 0).unwrap();
        add_grant(&mut realm, &site(0), Resources::new(6, 8, 4096), 0);
        realm.doc.commit(0);
        let mut owners: Vec<SiteDoc> = (0..SITES).map(|i| SiteDoc::create(&site(i), 0).unwrap()).collect();
        let mut views: Vec<View> = (0..SITES).map(|i| View {
            realm: Realm { doc: realm.doc.fork_as(site(i).as_str().as_bytes()) },
            docs: owners.iter_mut().map(|d| {
                (d.site.clone(), SiteDoc::of(d.site.clone(), d.doc.fork_as(site(i).as_str().as_bytes())))
            }).collect(),
        }).collect();
        for (t, op) in ops.iter().enumerate() {
            apply(&mut views, op, 1000 * (t as u64 + 1));
            // The merged truth: everything every site wrote so far.
            let mut truth = View {
                realm: Realm { doc: views[0].realm.doc.fork_as(b"truth") },
                docs: views[0].docs.iter_mut().map(|(k, d)| (k.clone(), SiteDoc::of(k.clone(), d.doc.fork_as(b"truth")))).collect(),
            };
            for v in views.iter_mut().skip(1) {
                truth.realm.doc.merge(&mut v.realm.doc).unwrap();
                for (k, d) in truth.docs.iter_mut() {
                    d.doc.merge(&mut v.docs.get_mut(k).unwrap().doc).unwrap();
                }
            }
            let total = truth.realm.quota_total("p").unwrap();
            let consumed = Resources::checked_sum(truth.docs.values().map(|d| d.consumed("p").unwrap())).unwrap();
            prop_assert!(total.covers(consumed), "overspent after {:?}: total {} consumed {}", op, total, consumed);
            // A thief's recipients may lose rights they counted once its later
            // lies come to light (the escrow charges every transfer of a giver
            // found short): only honest schedules keep every account whole.
            let forged = ops[..=t].iter().any(|o| matches!(o, Op::Forge { .. }));
            for i in (0..SITES).filter(|_| !forged) {
                let a = account(&truth, &site(i));
                prop_assert!(a.available().is_non_negative(), "site {} holds negative rights {:?}", i, a);
            }
        }
    }
}
