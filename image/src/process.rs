//! A process image: a tar archive holding `manifest.json`,
//! `{"entrypoint": ["bin/app", "--flag"], "env": {"K": "V"}}`, and the files
//! the entrypoint needs (docs/drivers.md, "Processes").

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::Deserialize;

use crate::ImageError;

/// Largest `manifest.json` read.
pub const MANIFEST_MAX: u64 = 64 << 10;

#[derive(Debug, Deserialize)]
pub struct Manifest {
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// Unpacks the archive read from `archive` into the directory `root`.
/// Entries that would land outside `root` (`..`, absolute paths, paths
/// through a link the archive made) are refused by `tar`, which
/// `fuzz/fuzz_targets/process_image.rs` holds to; modes are kept (the
/// entrypoint must stay executable), owners are not.
pub fn unpack(archive: impl Read, root: &Path) -> Result<(), ImageError> {
    let mut archive = tar::Archive::new(archive);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(false);
    archive.unpack(root).map_err(|e| ImageError::Unusable(format!("not a tar archive: {e}")))
}

/// Reads a manifest (at most [`MANIFEST_MAX`] bytes of it).
pub fn manifest(text: impl Read) -> Result<Manifest, ImageError> {
    let mut bytes = Vec::new();
    text.take(MANIFEST_MAX).read_to_end(&mut bytes)?;
    let m: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| ImageError::Unusable(format!("manifest.json: {e}")))?;
    if m.entrypoint.is_empty() || m.entrypoint[0].is_empty() {
        return Err(ImageError::Unusable("manifest.json has an empty entrypoint".into()));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, body) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o755);
            // set_path refuses "..": write the raw name, as an attacker would.
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, *body).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn an_image_unpacks_with_its_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let bytes =
            tar_of(&[("manifest.json", br#"{"entrypoint":["bin/app"]}"#), ("bin/app", b"#!/bin/sh\n")]);
        unpack(bytes.as_slice(), dir.path()).unwrap();
        let m = manifest(std::fs::File::open(dir.path().join("manifest.json")).unwrap()).unwrap();
        assert_eq!(m.entrypoint, ["bin/app"]);
        assert!(dir.path().join("bin/app").is_file());
    }

    #[test]
    fn entries_that_climb_out_stay_in() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let _ = unpack(tar_of(&[("../escaped", b"x")]).as_slice(), &root);
        assert!(!dir.path().join("escaped").exists());
    }

    #[test]
    fn manifests_without_an_entrypoint_are_refused() {
        assert!(manifest(&br#"{"entrypoint":[]}"#[..]).is_err());
        assert!(manifest(&br#"{"entrypoint":[""]}"#[..]).is_err());
        assert!(manifest(&b"not json"[..]).is_err());
    }
}
