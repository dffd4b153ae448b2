//! An automerge sync message from a peer, applied to a realm that already
//! holds data, then the realm read as a site would: no panic, and a refused
//! message leaves the realm readable.
#![no_main]

use atoll_crdt::{Doc, Gate, Incoming, Realm, SiteId, SyncState};
use libfuzzer_sys::fuzz_target;

/// Takes every change, so that the fuzzer reaches automerge's apply path
/// (the real gates refuse unsigned changes before it).
struct Anyone;

impl Gate for Anyone {
    fn admit(&mut self, _: &Doc, _: &Incoming<'_>) -> Result<(), String> {
        Ok(())
    }
}

fuzz_target!(init: {
    // Doc catches automerge's panics on malformed bytes (crdt/src/doc.rs,
    // `guarded`); libfuzzer's hook would abort on them first. A panic Doc does
    // not catch still aborts (it cannot unwind out of the fuzzer's callback),
    // so every panic is printed: the last one printed is the culprit.
    std::panic::set_hook(Box::new(|info| eprintln!("panic: {info}")));
}, |data: &[u8]| {
    let site = SiteId::new("site-1").expect("a valid name");
    let Ok(mut realm) = Realm::create(&site, 1) else { return };
    let mut state = SyncState::new();
    let _ = realm.doc.sync_in(&mut state, data, &[], &mut Anyone);
    let _ = realm.user("admin");
    let _ = realm.member(&site);
    let _ = realm.project("default");
    let _ = realm.doc.sync_out(&mut state);
    let _ = realm.doc.digest();
});
