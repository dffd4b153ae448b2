//! A member's process image, unpacked as the process driver unpacks it
//! (`atoll_image::process::unpack`) into a fresh root: no panic, and nothing
//! lands outside the root, whatever the archive's paths and links say. Its
//! manifest is read too.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// A directory of this process holding only `root` (emptied per input).
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("atoll-fuzz-process-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        dir
    })
}

fn clear(root: &Path) {
    // Unpacked directories may have lost their write bits: restore them
    // (never following links) before removing.
    fn writable(dir: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                writable(&entry.path());
            }
        }
    }
    writable(root);
    let _ = std::fs::remove_dir_all(root);
}

fuzz_target!(|data: &[u8]| {
    let dir = scratch();
    let root = dir.join("root");
    clear(&root);
    std::fs::create_dir(&root).expect("a fresh root");
    let _ = atoll_image::process::unpack(data, &root);
    let outside: Vec<_> = std::fs::read_dir(dir)
        .expect("the scratch directory")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .filter(|n| n != "root")
        .collect();
    assert!(outside.is_empty(), "the archive wrote outside its root: {outside:?}");
    let _ = atoll_image::process::manifest(data);
});
