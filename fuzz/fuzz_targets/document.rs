//! A stored or received document (a sled value, a joiner's snapshot): loaded
//! as a realm and as a site document, then read. No panic.
#![no_main]

use atoll_crdt::{Doc, Realm, SiteDoc, SiteId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: {
    // Doc catches automerge's panics on malformed bytes (crdt/src/doc.rs,
    // `guarded`); libfuzzer's hook would abort on them first. A panic Doc does
    // not catch still aborts (it cannot unwind out of the fuzzer's callback),
    // so every panic is printed: the last one printed is the culprit.
    std::panic::set_hook(Box::new(|info| eprintln!("panic: {info}")));
}, |data: &[u8]| {
    let site = SiteId::new("site-1").expect("a valid name");
    if let Ok(realm) = Realm::load(data, &site) {
        let _ = realm.user("admin");
        let _ = realm.holders("sha256:00");
        let _ = realm.grants("default");
        let _ = realm.quota_total("default");
    }
    if let Ok(doc) = SiteDoc::load(data, &site, &site) {
        let _ = doc.descriptor();
        let _ = doc.instances();
        let _ = doc.consumed("default");
    }
    let _ = Doc::load_any(data, b"site-1");
});
