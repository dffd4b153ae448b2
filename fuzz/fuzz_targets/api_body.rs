//! Request bodies from API clients (JSON), including the chunk manifest of an
//! image upload: parsed as the routes parse them. No panic.
#![no_main]

use atoll_proto::api::{Grant, NewImage, NewInstance, NewProject, NewUser};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<NewInstance>(data);
    let _ = serde_json::from_slice::<NewImage>(data);
    let _ = serde_json::from_slice::<NewProject>(data);
    let _ = serde_json::from_slice::<NewUser>(data);
    let _ = serde_json::from_slice::<Grant>(data);
});
