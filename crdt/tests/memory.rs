//! A replica that applies a peer's changes must not hold more memory than
//! the same document loaded from its saved bytes. automerge 0.12 records a
//! patch for every applied operation, hydrated value included, even while
//! nothing asked for patches, and keeps them until the diff cursor is reset
//! (`Doc` resets it after every apply, merge and commit). Left alone, a site
//! kept every value any peer ever wrote to it: at 500 simulated sites,
//! 245 of 544 MiB (docs/benchmarks.md, "Simulator: scale").
//!
//! Its own test binary: the counting allocator sees this test alone.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use atoll_crdt::{Doc, ScalarValue};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Bytes still allocated after `make` returns, while its result lives.
fn held<T>(make: impl FnOnce() -> T) -> (T, isize) {
    let before = LIVE.load(Ordering::Relaxed);
    let value = make();
    (value, LIVE.load(Ordering::Relaxed) - before)
}

#[test]
fn applied_changes_hold_no_more_than_the_loaded_document() {
    let mut writer = Doc::create(b"writer", &[], 0).unwrap();
    let mut changes = Vec::new();
    for i in 0..500u64 {
        // Distinct 1 KiB values overwriting one key: the live state is one
        // value, the history 500 (kept compressed by automerge either way).
        let value: Vec<u8> = (0..1024u64).map(|b| (b * 31 + i) as u8).collect();
        writer.put_root("blob", ScalarValue::Bytes(value)).unwrap();
        writer.commit(i * 1000);
        changes.extend(writer.changes_since(&[]).into_iter().skip(changes.len()));
    }
    let saved = writer.save();

    let (loaded, loaded_bytes) = held(|| Doc::load(&saved, b"loaded", &[]).unwrap());
    let (replica, applied_bytes) = held(|| {
        let mut replica = Doc::empty(b"replica");
        for change in &changes {
            replica.apply(std::slice::from_ref(change)).unwrap();
        }
        replica
    });
    eprintln!("held after applying the changes: {applied_bytes} bytes; after loading: {loaded_bytes}");
    // The same 500 values pass through both; what stays must be comparable.
    assert!(
        2 * applied_bytes < 3 * loaded_bytes,
        "a replica built from changes holds {applied_bytes} bytes, the loaded document {loaded_bytes}"
    );
    drop((loaded, replica));
}
