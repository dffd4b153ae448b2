//! Histories that stay small (crate::epoch): a site compacts its document
//! while a peer is cut off; every holder ends on the newest epoch.

use atoll_crdt::Doc;

use crate::tests_sync::Net;
use crate::*;

fn instance(name: &str) -> Command {
    Command::CreateInstance(
        serde_json::from_value(serde_json::json!({"name": name, "project": "default", "image": "img"}))
            .unwrap(),
    )
}

fn epoch(net: &mut Net, holder: usize, owner: usize) -> u64 {
    let id = DocId::Site(net.site(owner));
    net.peers[holder].doc_mut(&id).map_or(0, |d| d.epoch())
}

#[test]
fn a_site_cut_off_across_compactions_adopts_the_newest_epoch() {
    let mut net = Net::new(4);
    net.settle();
    let admin = net.login(0, "admin", "admin-password");
    net.call(0, Some(&admin), Command::RegisterImage(crate::tests::image("default", "img"))).unwrap();
    net.peers[0].compact_after(40);
    let req = net.ask(0, &admin, instance("kept"));
    net.settle();
    assert!(net.reply(req).unwrap().is_ok());
    net.partition(3);
    for i in 0..30 {
        let req = net.ask(0, &admin, instance(&format!("w{i}")));
        net.settle();
        assert!(net.reply(req).unwrap().is_ok(), "create {i}");
        let req =
            net.ask(0, &admin, Command::DeleteInstance { project: "default".into(), name: format!("w{i}") });
        net.settle();
        assert!(net.reply(req).unwrap().is_ok(), "delete {i}");
    }
    let now = epoch(&mut net, 0, 0);
    assert!(now >= 2, "compacted {now} times");
    assert!(net.peers[0].own().doc.size().changes < 40 + 10);
    for i in 1..3 {
        assert_eq!(epoch(&mut net, i, 0), now, "site {i} follows while connected");
    }
    assert_eq!(epoch(&mut net, 3, 0), 0, "the cut-off site holds the first epoch");
    net.heal();
    assert_eq!(epoch(&mut net, 3, 0), now, "the healed site adopted the newest epoch");
    net.assert_converged();
    let id = DocId::Site(net.site(0));
    let held = atoll_crdt::SiteDoc::of(
        net.site(0),
        Doc::load_any(&net.peers[3].doc_mut(&id).unwrap().save(), b"x").unwrap(),
    );
    let names: Vec<String> = held.instances().unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["kept"]);
}

#[test]
fn an_epoch_forged_by_another_site_or_older_is_not_adopted() {
    let mut net = Net::new(3);
    net.settle();
    let (owner, forger) = (net.site(0), net.site(1));
    let id = DocId::Site(owner.clone());
    // Site 1 compacts site 0's document as if it were its owner.
    let mut forged = net.peers[1].doc_mut(&id).unwrap().compacted(forger.as_str().as_bytes(), 5).unwrap();
    let saved = forged.save();
    let msg = PeerMsg::Epoch { doc: id.clone(), epoch: 1, saved: saved.clone(), sigs: vec![] };
    net.input(2, Input::Message { from: forger.clone(), msg });
    assert_eq!(epoch(&mut net, 2, 0), 0, "a forged epoch was adopted");
    // Nor can anyone hand a site a new epoch of its own document.
    let msg = PeerMsg::Epoch { doc: DocId::Site(net.site(2)), epoch: 1, saved, sigs: vec![] };
    net.input(2, Input::Message { from: forger, msg });
    assert_eq!(epoch(&mut net, 2, 2), 0);
    net.settle();
    net.assert_converged();
}
