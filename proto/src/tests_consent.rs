//! A member that sends intents its users never asked for (crate::consent):
//! one "from admin" with no consent, one with another intent's consent; and
//! one that rewrites the realm's root. No honest site applies any of it.

use atoll_crdt::{Intent, IntentOutcome, IntentState, ScalarValue};

use crate::tests_sync::Net;
use crate::*;

fn create(name: &str) -> Command {
    let new = serde_json::json!({"name": name, "project": "default", "image": "img"});
    Command::CreateInstance(serde_json::from_value(new).unwrap())
}

/// A realm of three sites where s1 holds image `img`, every site holds
/// rights, and s0 has sent s1 one honest intent (instance `honest`).
fn setup() -> (Net, String) {
    let mut net = Net::new(3);
    net.settle();
    let admin = net.login(0, "admin", "admin-password");
    net.call(1, Some(&admin), Command::RegisterImage(crate::tests::image("default", "img"))).unwrap();
    let to = vec![net.site(1), net.site(2)];
    let amount = atoll_crdt::Resources::new(3, 3, 1024);
    net.call(0, Some(&admin), Command::GiveQuota { project: "default".into(), to, amount }).unwrap();
    net.settle();
    let honest = Command::Remote { site: net.site(1), wait_ms: 0, then: Box::new(create("honest")) };
    net.call(0, Some(&admin), honest).unwrap();
    net.settle();
    assert!(net.peers[1].own().instance("default", "honest").unwrap().is_some(), "the honest intent failed");
    (net, admin)
}

/// s2 writes `intent` into its own document (a signed change of its own:
/// provenance lets it through) and pushes it.
fn send_as_s2(net: &mut Net, intent: Intent) {
    net.peers[2].own.doc.put(&intent).unwrap();
    net.input(2, Input::Timer(TimerId::Repair));
    net.settle();
}

fn forged(net: &Net, id: &str, command: &Command) -> Intent {
    Intent {
        id: id.into(),
        requester: net.site(2),
        target: net.site(1),
        user: "admin".into(),
        command: serde_json::to_string(command).unwrap(),
        summary: "create instance default/evil".into(),
        created_at: 1,
        consent: None,
    }
}

fn refused(net: &Net, id: &str) -> String {
    let outcome: IntentOutcome = net.peers[1].own().doc.get(id).unwrap().expect("no outcome");
    assert_eq!(outcome.state, IntentState::Failed, "{outcome:?}");
    assert!(net.peers[1].own().instance("default", "evil").unwrap().is_none(), "a forged intent was applied");
    outcome.result
}

#[test]
fn an_intent_from_admin_without_their_consent_is_refused() {
    let (mut net, _) = setup();
    let intent = forged(&net, "s2.00000000000000f1", &create("evil"));
    send_as_s2(&mut net, intent);
    let why = refused(&net, "s2.00000000000000f1");
    assert!(why.contains("carries no consent"), "{why}");
}

#[test]
fn a_consent_copied_from_another_intent_is_refused() {
    let (mut net, _) = setup();
    // s2 holds s0's document, and in it the honest intent with its consent.
    let honest = net.peers[2].others[&net.site(0)].doc.list::<Intent>().unwrap().pop().unwrap();
    assert!(honest.consent.is_some(), "the honest intent carries no consent");
    let mut intent = forged(&net, "s2.00000000000000f2", &create("evil"));
    intent.consent = honest.consent.clone();
    send_as_s2(&mut net, intent);
    let why = refused(&net, "s2.00000000000000f2");
    assert!(why.contains("not over this intent"), "{why}");
    // The same consent under the honest intent's own words, sent again by
    // s2 as its own, is not that intent either (its requester differs).
    let replay = Intent { id: "s2.00000000000000f3".into(), requester: net.site(2), ..honest };
    send_as_s2(&mut net, replay);
    let why = refused(&net, "s2.00000000000000f3");
    assert!(why.contains("not over this intent"), "{why}");
}

#[test]
fn the_realm_root_is_never_rewritten_nor_its_floor_lowered() {
    for (key, value) in [("floor", ScalarValue::Uint(2)), ("users", ScalarValue::Str("gone".into()))] {
        let (mut net, _) = setup();
        assert_eq!(
            net.peers[0].realm().floor(),
            crate::epoch::FLOOR,
            "a new realm starts at the epoch floor"
        );
        net.peers[2].realm.doc.put_root(key, value).unwrap();
        net.input(2, Input::Timer(TimerId::Repair));
        net.settle();
        for i in 0..2 {
            let realm = net.peers[i].realm();
            assert_eq!(realm.floor(), crate::epoch::FLOOR, "site {i} took a lower floor");
            assert!(realm.user("admin").unwrap().is_some(), "site {i} lost its users");
        }
        let refusals = net.peers[0].take_refusals();
        assert!(refusals.iter().any(|(_, _, r)| r.why.contains(key)), "{key}: {refusals:?}");
    }
}
