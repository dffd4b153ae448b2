//! The gossip edge: what a summary's author may say, judged before anything
//! is forwarded.

use atoll_crdt::{Descriptor, Member, Realm, Resources, SiteId};
use atoll_proto::api::SiteView;
use ed25519_dalek::SigningKey;
use libp2p::gossipsub::{self, MessageAcceptance};

use super::*;

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

fn hex_key(k: &SigningKey) -> String {
    hex::encode(k.verifying_key().as_bytes())
}

fn view(site: &str) -> SiteView {
    SiteView {
        descriptor: Descriptor {
            site: SiteId::new(site).unwrap(),
            operator: "op".into(),
            region: "r".into(),
            labels: Default::default(),
            public_key: String::new(),
            kinds: vec![],
            drivers: vec![],
            arch: "x86_64".into(),
            capacity: Resources::ZERO,
            disk_mib: 0,
            version: "test".into(),
        },
        instances: 0,
        running: 0,
        images: 0,
        allocated: Resources::ZERO,
        live: None,
        spare: vec![],
    }
}

fn message(author: &SigningKey, data: Vec<u8>) -> gossipsub::Message {
    gossipsub::Message {
        source: peer_id(&hex_key(author)),
        data,
        sequence_number: Some(1),
        topic: gossipsub::IdentTopic::new(SUMMARY_TOPIC).hash(),
    }
}

#[tokio::test]
async fn a_summary_is_passed_on_only_from_its_own_member_and_a_liar_is_blocked() {
    let (a, b, c, d) = (key(1), key(2), key(3), key(4));
    let mut net = Net::new(&a, Settings::default()).unwrap();
    let me = SiteId::new("a").unwrap();
    let realm = realm_of("a", &[("a", &a, ""), ("b", &b, ""), ("d", &d, "")]);
    net.refresh(&realm, &me);
    let blocked = |net: &Net, k: &SigningKey| {
        net.swarm.behaviour().blocked.blocked_peers().contains(&peer_id(&hex_key(k)).unwrap())
    };

    let (verdict, event) = net.judge_summary(&message(&b, wire::encode(&view("b"))));
    assert_eq!(verdict, MessageAcceptance::Accept);
    assert!(matches!(event, Some(Event::Input(Input::Summary { from, .. })) if from.as_str() == "b"));

    // A stranger's summary goes no further, and costs no one anything.
    let (verdict, event) = net.judge_summary(&message(&c, wire::encode(&view("c"))));
    assert_eq!(verdict, MessageAcceptance::Ignore);
    assert!(event.is_none() && !blocked(&net, &c));

    // A member speaking for another site, or sending garbage, is rejected
    // and blocked: the author, whoever relayed it.
    let (verdict, _) = net.judge_summary(&message(&b, wire::encode(&view("d"))));
    assert_eq!(verdict, MessageAcceptance::Reject);
    assert!(blocked(&net, &b));
    let (verdict, _) = net.judge_summary(&message(&d, vec![0xff; 40]));
    assert_eq!(verdict, MessageAcceptance::Reject);
    assert!(blocked(&net, &d));
}

/// A net on loopback QUIC, and the address it listens on.
async fn listening(key: &SigningKey) -> (Net, String) {
    let settings =
        Settings { listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()], ..Default::default() };
    let mut net = Net::new(key, settings).unwrap();
    loop {
        if let Event::Addrs(addrs) = net.next().await
            && let Some(a) = addrs.first()
        {
            return (net, a.clone());
        }
    }
}

/// The realm as `me` sees it: these members, at these addresses (separated
/// by spaces; "" for none).
fn realm_of(me: &str, members: &[(&str, &SigningKey, &str)]) -> Realm {
    let mut realm = Realm::create(&SiteId::new(me).unwrap(), 0).unwrap();
    for (name, k, addr) in members {
        let member = Member {
            site: SiteId::new(name).unwrap(),
            public_key: hex_key(k),
            region: "r".into(),
            operator: "op".into(),
            joined_at: 0,
            addrs: addr.split_whitespace().map(str::to_owned).collect(),
            invitation: None,
            api_cert: None,
        };
        realm.doc.put(&member).unwrap();
    }
    realm
}

fn summary_from(ev: &Event, site: &str) -> bool {
    matches!(ev, Event::Input(Input::Summary { from, .. }) if from.as_str() == site)
}

#[tokio::test]
async fn a_stranger_in_its_grace_is_sent_no_summary() {
    let (a, b, s) = (key(11), key(12), key(13));
    let ((mut na, addr_a), (mut nb, addr_b), (mut ns, _)) =
        (listening(&a).await, listening(&b).await, listening(&s).await);
    let members = [("a", &a, addr_a.as_str()), ("b", &b, addr_b.as_str())];
    na.refresh(&realm_of("a", &members), &SiteId::new("a").unwrap());
    nb.refresh(&realm_of("b", &members), &SiteId::new("b").unwrap());
    // The stranger believes `a` is a fellow member, so it dials `a`, subscribes
    // and would take a's summaries; `a` does not know it.
    ns.refresh(&realm_of("s", &[("a", &a, addr_a.as_str())]), &SiteId::new("s").unwrap());

    let (mut to_b, mut to_s) = (0, 0);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let deadline = tokio::time::Instant::now() + STRANGER_GRACE / 2;
    while tokio::time::Instant::now() < deadline {
        tokio::select! {
            _ = tick.tick() => {
                for n in [&mut na, &mut nb, &mut ns] {
                    n.tick();
                }
                na.publish(&view("a"));
            }
            _ = na.next() => {}
            ev = nb.next() => to_b += usize::from(summary_from(&ev, "a")),
            ev = ns.next() => to_s += usize::from(summary_from(&ev, "a")),
        }
    }
    assert!(ns.reaches(&SiteId::new("a").unwrap()), "the stranger never connected: the test proves nothing");
    assert!(na.strangers.contains_key(&ns.local_peer_id()), "a does not hold the stranger's connection");
    assert!(to_b >= 3, "the member b heard {to_b} summaries of a");
    assert_eq!(to_s, 0, "the stranger heard {to_s} summaries of a");
}

/// A joiner proves its key by the connection's handshake: a join request
/// that enrols another key (a member's, say) is refused by the network
/// layer, and the core never sees it.
#[tokio::test]
async fn a_join_request_for_another_key_than_the_connections_is_refused() {
    use atoll_proto::membership::{INVITE_PREFIX, Invitation};
    let (a, joiner, victim) = (key(21), key(22), key(23));
    let ((mut na, addr_a), (mut nj, _)) = (listening(&a).await, listening(&joiner).await);
    let inv = Invitation {
        issuer: SiteId::new("a").unwrap(),
        admin: "admin".into(),
        name: None,
        expires_at: u64::MAX,
        nonce: "n".into(),
        addrs: vec![addr_a],
        realm: None,
        consent: None,
    };
    let token = format!("{INVITE_PREFIX}{}", atoll_proto::auth::seal(&a, &inv));
    let member = Member {
        site: SiteId::new("edge").unwrap(),
        public_key: hex_key(&victim),
        region: "r".into(),
        operator: "op".into(),
        joined_at: 0,
        addrs: vec![],
        invitation: None,
        api_cert: None,
    };
    let core_saw = tokio::spawn(async move {
        loop {
            if let Event::Join { .. } = na.next().await {
                return;
            }
        }
    });
    let refused = nj.join(&token, member).await.unwrap_err().to_string();
    assert!(refused.contains("not the key of this connection"), "{refused}");
    assert!(!core_saw.is_finished(), "the request reached the core");
    core_saw.abort();
}

/// Gossipsub wakes the handler of a peer's first connection only (see
/// `nudge.rs`): once QUIC has replaced TCP between two sites, and no third
/// site relays, a's summaries must still reach b.
#[tokio::test]
async fn summaries_still_flow_once_quic_has_replaced_tcp() {
    let (a, b) = (key(31), key(32));
    let listen = ["/ip4/127.0.0.1/udp/0/quic-v1", "/ip4/127.0.0.1/tcp/0"];
    let settings =
        Settings { listen: listen.iter().map(|a| a.parse().unwrap()).collect(), ..Default::default() };
    let mut na = Net::new(&a, settings).unwrap();
    let addrs_a = loop {
        if let Event::Addrs(addrs) = na.next().await
            && addrs.len() == 2
        {
            break addrs;
        }
    };
    let (mut nb, addr_b) = listening(&b).await;
    let (quic_a, tcp_a) = addrs_a.iter().partition::<Vec<_>, _>(|a| a.contains("quic"));
    // Only b dials, and first over TCP (a knows no address of b's).
    na.refresh(&realm_of("a", &[("a", &a, ""), ("b", &b, "")]), &SiteId::new("a").unwrap());
    nb.refresh(&realm_of("b", &[("a", &a, tcp_a[0]), ("b", &b, &addr_b)]), &SiteId::new("b").unwrap());
    let peer_a = na.local_peer_id();
    let over = |nb: &Net| {
        nb.members.get(&peer_a).map_or((0, 0), |l| (l.count(Transport::Quic), l.count(Transport::Tcp)))
    };

    let (mut was_tcp, mut replaced_at, mut heard_after) = (false, None, 0);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        tokio::select! {
            _ = tick.tick() => {
                na.tick();
                nb.tick();
                // Quiet until then: a handler made while nothing is queued
                // is the one gossipsub does not wake.
                if replaced_at.is_some() {
                    na.publish(&view("a"));
                }
                match over(&nb) {
                    (0, 1) if !was_tcp => {
                        was_tcp = true;
                        let both = format!("{tcp} {quic}", tcp = tcp_a[0], quic = quic_a[0]);
                        nb.refresh(&realm_of("b", &[("a", &a, &both), ("b", &b, &addr_b)]), &SiteId::new("b").unwrap());
                    }
                    (1, 0) if was_tcp && replaced_at.is_none() => replaced_at = Some(tokio::time::Instant::now()),
                    _ => {}
                }
                if replaced_at.is_some_and(|t| t.elapsed() > Duration::from_secs(4)) {
                    break;
                }
            }
            _ = na.next() => {}
            ev = nb.next() => {
                // Counted from a moment after the TCP close, once in-flight ones are in.
                let settled = replaced_at.is_some_and(|t| t.elapsed() > Duration::from_millis(500));
                heard_after += usize::from(settled && summary_from(&ev, "a"));
            }
        }
    }
    assert!(was_tcp, "b never connected over TCP alone: the test proves nothing");
    assert!(replaced_at.is_some(), "QUIC never replaced TCP: {:?}", over(&nb));
    assert!(heard_after >= 5, "b heard {heard_after} summaries of a in the 3.5 s after QUIC replaced TCP");
}
