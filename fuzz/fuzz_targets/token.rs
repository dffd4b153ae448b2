//! A bearer token or invitation from a client: opened and verified against a
//! realm. No panic; nothing but a token the realm's member signed verifies.
#![no_main]

use atoll_crdt::{Realm, SiteId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let site = SiteId::new("site-1").expect("a valid name");
    let Ok(realm) = Realm::create(&site, 1) else { return };
    // The realm has no member key: a verified token would be a forgery.
    assert!(atoll_proto::auth::verify(&realm, text, 2).is_err());
    let _ = atoll_proto::auth::open::<atoll_proto::api::RealmProof>(text);
    let _ = atoll_proto::membership::Invitation::read(text);
});
