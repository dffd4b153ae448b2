//! What change provenance costs (docs/benchmarks.md, "Change provenance"):
//! signing a change, passing changes through the real gates (a site
//! document's and the realm's) against an open gate, and the bytes the
//! signatures add to sync messages; what a user's consent to an intent
//! costs to sign and to check (crate atoll_proto::consent); and what the
//! realm's rules on users cost on receipt (atoll_proto::rules).
//!
//!     cargo build --release -p atoll-sim && ./target/release/provenance-bench [CHANGES]

use std::time::{Duration, Instant};

use atoll_crdt::{Descriptor, Doc, Gate, Kind, Realm, Resources, SiteId, SyncState, User};
use atoll_proto::provenance::{Members, Owner, signer};
use ed25519_dalek::SigningKey;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const REPEAT: usize = 3;

fn descriptor(site: &SiteId, key: &SigningKey, disk: i64) -> Descriptor {
    Descriptor {
        site: site.clone(),
        operator: "op".into(),
        region: "eu".into(),
        labels: Default::default(),
        public_key: hex::encode(key.verifying_key().as_bytes()),
        kinds: vec![Kind::Process],
        drivers: vec![],
        arch: "x86_64".into(),
        capacity: Resources::new(10, 4, 4096),
        disk_mib: disk,
        version: "bench".into(),
    }
}

/// Sends every change of `from` to a new empty replica through `gate`, by
/// the sync protocol; returns the time, the message bytes and the bytes of
/// the signatures beside them.
fn sync_into(from: &mut Doc, gate: &mut dyn Gate) -> (Duration, usize, usize) {
    let mut to = Doc::empty(b"bench-replica");
    let (mut s1, mut s2) = (SyncState::new(), SyncState::new());
    let (mut msg_bytes, mut sig_bytes) = (0, 0);
    let started = Instant::now();
    for _ in 0..100 {
        let out = from.sync_out(&mut s1);
        if let Some((msg, sigs)) = &out {
            msg_bytes += msg.len();
            sig_bytes += postcard::to_stdvec(sigs).map(|b| b.len()).unwrap_or(0);
            let got = to.sync_in(&mut s2, msg, sigs, gate).expect("sync");
            assert!(got.refused.is_empty(), "refused: {:?}", got.refused.first());
        }
        let back = to.sync_out(&mut s2);
        if let Some((msg, sigs)) = &back {
            from.sync_in(&mut s1, msg, sigs, &mut Members { founder: None, open: true, rules: true })
                .expect("sync back");
        }
        if out.is_none() && back.is_none() {
            break;
        }
    }
    assert_eq!(to.digest(), from.digest(), "the replica did not converge");
    (started.elapsed(), msg_bytes, sig_bytes)
}

/// One sync: its time, its message bytes and its signature bytes.
type Run = (Duration, usize, usize);

fn best(mut runs: impl FnMut() -> Run) -> Run {
    (0..REPEAT).map(|_| runs()).min_by_key(|r| r.0).expect("runs")
}

fn per_change(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n as f64
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(2000);
    let key = SigningKey::generate(&mut ChaCha20Rng::seed_from_u64(1));
    let site = SiteId::new("s1")?;
    let key_hex = hex::encode(key.verifying_key().as_bytes());

    // A site document of n changes (the descriptor rewritten n times).
    let mut own = atoll_crdt::SiteDoc::create(&site, 0)?.doc;
    for i in 0..n {
        own.put(&descriptor(&site, &key, i as i64))?;
        own.commit(i as u64 * 1000);
    }
    let started = Instant::now();
    let signed = own.sign_own(&mut signer(&key));
    let sign = started.elapsed();
    let open = best(|| sync_into(&mut own, &mut Owner { site: site.clone(), key: None, open: true }));
    let gated = best(|| {
        sync_into(&mut own, &mut Owner { site: site.clone(), key: Some(key_hex.clone()), open: false })
    });

    // A realm of n changes by its founder (a user created in each).
    let mut realm = Realm::found(&site, &key_hex, b"bench-nonce", atoll_crdt::realm::FIRST_FLOOR, 0)?;
    for i in 0..n {
        realm.doc.put(&User {
            name: format!("u{i}"),
            password_hash: String::new(),
            realm_admin: false,
            created_at: i as u64,
            key: None,
            seal: Default::default(),
        })?;
        realm.doc.commit(i as u64 * 1000);
    }
    realm.doc.sign_own(&mut signer(&key));
    let founder = Some(site.as_str().as_bytes().to_vec());
    let realm_open =
        best(|| sync_into(&mut realm.doc, &mut Members { founder: None, open: true, rules: true }));
    let realm_gated = best(|| {
        sync_into(&mut realm.doc, &mut Members { founder: founder.clone(), open: false, rules: true })
    });

    // One change at a time, as a site pushes its writes: a replica in sync
    // gets each new change in its own message.
    let mut replica = Doc::empty(b"bench-replica");
    let (mut s1, mut s2) = (SyncState::new(), SyncState::new());
    let (mut inc_msg, mut inc_sig) = (0usize, 0usize);
    let mut gate = Owner { site: site.clone(), key: Some(key_hex.clone()), open: false };
    let rounds = 200;
    for i in 0..=rounds {
        if i > 0 {
            own.put(&descriptor(&site, &key, (n + i) as i64))?;
            own.commit((n + i) as u64 * 1000);
            own.sign_own(&mut signer(&key));
        }
        for _ in 0..10 {
            let out = own.sync_out(&mut s1);
            if let Some((msg, sigs)) = &out {
                if i > 0 {
                    inc_msg += msg.len();
                    inc_sig += postcard::to_stdvec(sigs).map(|b| b.len()).unwrap_or(0);
                }
                replica.sync_in(&mut s2, msg, sigs, &mut gate)?;
            }
            let back = replica.sync_out(&mut s2);
            if let Some((msg, sigs)) = &back {
                own.sync_in(&mut s1, msg, sigs, &mut Members { founder: None, open: true, rules: true })?;
            }
            if out.is_none() && back.is_none() {
                break;
            }
        }
    }

    let consent = consent_cost(&mut realm, &site, &key, n)?;
    let rules = rules_cost(&site, &key, n)?;

    println!("changes: {n} per document ({signed} signed), best of {REPEAT} runs");
    println!("sign (ed25519):              {:>8.1} us per change", per_change(sign, signed));
    for (what, open, gated) in [("site document", open, gated), ("realm", realm_open, realm_gated)] {
        println!(
            "{what:<14} sync, open gate: {:>8.1} us per change; through the gate: {:>8.1} us per change (+{:.1})",
            per_change(open.0, n),
            per_change(gated.0, n),
            per_change(gated.0.saturating_sub(open.0), n)
        );
        println!(
            "{what:<14} bytes: {} of sync messages, {} of signatures beside them ({:.1} per change, +{:.0}%)",
            gated.1,
            gated.2,
            gated.2 as f64 / n as f64,
            100.0 * gated.2 as f64 / gated.1.max(1) as f64
        );
    }
    println!(
        "one change at a time ({rounds} descriptor rewrites): {:.0} bytes of sync messages and {:.0} of signatures per change (+{:.0}%)",
        inc_msg as f64 / rounds as f64,
        inc_sig as f64 / rounds as f64,
        100.0 * inc_sig as f64 / inc_msg.max(1) as f64
    );
    let (sign, check, bytes) = consent;
    println!(
        "consent ({n} intents): sign {:.1} us, check {:.1} us per intent; {bytes} bytes beside each intent",
        per_change(sign, n),
        per_change(check, n)
    );
    let (without, with, bytes) = rules;
    println!(
        "realm rules ({n} users created by an admin): sync through the gate {:.1} us per change without the rules, {:.1} with (+{:.1}); the seal adds {bytes} bytes to a user",
        per_change(without.0, n),
        per_change(with.0, n),
        per_change(with.0.saturating_sub(without.0), n)
    );
    Ok(())
}

/// A realm founded at the consent floor where the admin creates `n` users,
/// each sealed with the admin's consent (as `atoll user create` writes
/// them), sent to an empty replica through the realm's gate with and
/// without its rules (atoll_proto::rules); and the seal's size.
fn rules_cost(site: &SiteId, key: &SigningKey, n: usize) -> anyhow::Result<(Run, Run, usize)> {
    use atoll_proto::{auth, consent, rules};
    let key_hex = hex::encode(key.verifying_key().as_bytes());
    let mut realm = Realm::found(site, &key_hex, b"bench-rules", consent::FLOOR, 0)?;
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let admin_key = auth::new_user_key("bench-password", &mut rng)?;
    realm.doc.put(&atoll_crdt::Member {
        site: site.clone(),
        public_key: key_hex.clone(),
        region: "eu".into(),
        operator: "op".into(),
        joined_at: 0,
        addrs: Vec::new(),
        invitation: None,
        api_cert: None,
    })?;
    // The founder's first change writes the first admin (no consent).
    realm.doc.put(&User {
        name: "admin".into(),
        password_hash: String::new(),
        realm_admin: true,
        created_at: 0,
        key: admin_key.record.clone(),
        seal: atoll_crdt::Seal { rev: 1, ..Default::default() },
    })?;
    realm.doc.commit(0);
    let claims = auth::Claims::new("admin", site, 1, 1 << 40);
    let token = auth::issue(key, &claims, Some((&admin_key.key, &SigningKey::generate(&mut rng))));
    let (claims, _) = auth::verify(&realm, &token, 2)?;
    let session = consent::Session::of(&claims).ok_or_else(|| anyhow::anyhow!("no session"))?;
    let mut bytes = 0;
    for i in 0..n {
        let mut user = User {
            name: format!("u{i}"),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNo"
                .into(),
            realm_admin: false,
            created_at: 10 + i as u64,
            key: admin_key.record.clone(),
            seal: Default::default(),
        };
        let plain = serde_json::to_vec(&user)?.len();
        rules::sign(&session, &mut user, 1, false);
        bytes = serde_json::to_vec(&user)?.len() - plain;
        realm.doc.put(&user)?;
        realm.doc.commit(1000 + i as u64 * 1000);
    }
    realm.doc.sign_own(&mut signer(key));
    let founder = Some(site.as_str().as_bytes().to_vec());
    let without = best(|| {
        sync_into(&mut realm.doc, &mut Members { founder: founder.clone(), open: false, rules: false })
    });
    let with = best(|| {
        sync_into(&mut realm.doc, &mut Members { founder: founder.clone(), open: false, rules: true })
    });
    Ok((without, with, bytes))
}

/// A user's consent to `n` intents: signing each with the session key of a
/// token (as the requesting site does) and checking each against the realm
/// (as the target does); and its size in the intent.
fn consent_cost(
    realm: &mut Realm,
    site: &SiteId,
    key: &SigningKey,
    n: usize,
) -> anyhow::Result<(Duration, Duration, usize)> {
    use atoll_proto::{auth, consent};
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let ann = auth::new_user_key("bench-password", &mut rng)?;
    realm.doc.put(&atoll_crdt::Member {
        site: site.clone(),
        public_key: hex::encode(key.verifying_key().as_bytes()),
        region: "eu".into(),
        operator: "op".into(),
        joined_at: 0,
        addrs: Vec::new(),
        invitation: None,
        api_cert: None,
    })?;
    realm.doc.put(&User {
        name: "ann".into(),
        password_hash: String::new(),
        realm_admin: false,
        created_at: 0,
        key: ann.record.clone(),
        seal: Default::default(),
    })?;
    realm.doc.commit(0);
    let claims = auth::Claims::new("ann", site, 1, 1 << 40);
    let token = auth::issue(key, &claims, Some((&ann.key, &SigningKey::generate(&mut rng))));
    let (claims, _) = auth::verify(realm, &token, 2)?;
    let session = consent::Session::of(&claims).ok_or_else(|| anyhow::anyhow!("no session"))?;
    let intents: Vec<atoll_crdt::Intent> = (0..n)
        .map(|i| atoll_crdt::Intent {
            id: format!("s1.{i:016x}"),
            requester: site.clone(),
            target: SiteId::new("s2").expect("site name"),
            user: "ann".into(),
            command: r#"{"command":"start_instance","project":"default","name":"web"}"#.into(),
            summary: "start instance default/web".into(),
            created_at: 3,
            consent: None,
        })
        .collect();
    let started = Instant::now();
    let signed: Vec<atoll_crdt::Intent> =
        intents.into_iter().map(|i| atoll_crdt::Intent { consent: Some(session.sign(&i)), ..i }).collect();
    let sign = started.elapsed();
    let started = Instant::now();
    for i in &signed {
        consent::check(realm, i, 4)?;
    }
    let check = started.elapsed();
    let bytes = signed.first().and_then(|i| serde_json::to_vec(&i.consent).ok()).map_or(0, |b| b.len());
    Ok((sign, check, bytes))
}
