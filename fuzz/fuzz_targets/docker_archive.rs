//! A member's docker-archive upload, as the Docker driver reads it before the
//! engine loads it (`atoll_image::docker::sanitize`). No panic; an archive it
//! accepts yields a copy without a `repositories` file whose manifest keeps
//! only the fields the engine needs (no tags, however spelt), and whose id is
//! the hash of a config it holds.
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut copy = Vec::new();
    let Ok(id) = atoll_image::docker::sanitize(data, &mut copy) else { return };
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
    let mut out = tar::Archive::new(copy.as_slice());
    for entry in out.entries().expect("the copy is a tar") {
        let mut entry = entry.expect("the copy's entries read");
        let path = entry.path().expect("a path").into_owned();
        assert_ne!(path.as_os_str(), "repositories", "the legacy tag file was kept");
        if path.as_os_str() == "manifest.json" {
            let mut text = String::new();
            entry.read_to_string(&mut text).expect("the manifest reads");
            let manifest: serde_json::Value = serde_json::from_str(&text).expect("the manifest is JSON");
            let image = manifest[0].as_object().expect("one image object");
            assert!(
                image.keys().all(|k| atoll_image::docker::MANIFEST_KEYS.contains(&k.as_str())),
                "fields beyond the needed ones were kept: {text}"
            );
        }
    }
});
