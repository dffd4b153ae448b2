//! An image's chunk manifest as a fetching site reads it from a peer's
//! catalog record (JSON, as the document stores it): checked by
//! `atoll_proto::blob::check`; one that passes must describe its chunks
//! exactly. No panic.
#![no_main]

use atoll_crdt::Image;
use atoll_proto::blob;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(image) = serde_json::from_slice::<Image>(data) else { return };
    if blob::check(&image.digest, image.size, image.chunk_size, &image.chunks).is_ok() {
        let covered: u64 =
            (0..image.chunks.len()).map(|i| blob::chunk_len(image.size, image.chunk_size, i)).sum();
        assert_eq!(covered, image.size, "the chunks do not cover the blob");
        let last = image.chunks.len().checked_sub(1);
        assert!(last.is_none_or(|i| blob::chunk_len(image.size, image.chunk_size, i) > 0), "an empty chunk");
    }
});
