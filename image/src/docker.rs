//! A member's `docker-archive` as the engine may load it (docs/drivers.md,
//! "Docker"). `docker load` trusts the archive: it applies the `RepoTags` of
//! its manifest (retagging the host's images) and names the image by the
//! `Config` the manifest points at. So the driver loads a copy in which
//! manifest.json has no tags and there is no legacy `repositories` file,
//! after checking that the config really hashes to the id it claims: the
//! image then run is the one whose content the member uploaded.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::ImageError;

/// manifest.json and the image config are small; anything larger is refused.
const SMALL_MAX: u64 = 1 << 20;

/// Writes the tag-free copy of the archive read from `archive` to `out` and
/// returns the image id (`sha256:<hex of the config>`), checked against the
/// config's content.
/// The manifest fields a loaded copy keeps (`RepoTags` and anything else dropped).
pub const MANIFEST_KEYS: [&str; 3] = ["Config", "Layers", "LayerSources"];

pub fn sanitize(archive: impl Read, out: impl Write) -> Result<String, ImageError> {
    let bad = |why: String| ImageError::Unusable(format!("not a usable docker-archive: {why}"));
    let mut input = tar::Archive::new(archive);
    let mut output = tar::Builder::new(out);
    output.mode(tar::HeaderMode::Complete);
    // Hashes of the small regular files: the config is one of them, and the
    // manifest may come before or after it.
    let mut hashes: HashMap<PathBuf, String> = HashMap::new();
    let mut config: Option<(PathBuf, String)> = None;
    for entry in input.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        // As the copy will name it: `./repositories` is `repositories` there.
        let path = normal(&entry.path().map_err(|e| bad(e.to_string()))?);
        let mut header = entry.header().clone();
        if path == Path::new("repositories") {
            continue;
        }
        let kind = header.entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name()
                .map_err(|e| bad(e.to_string()))?
                .ok_or_else(|| bad("a link without target".into()))?;
            output.append_link(&mut header, &path, &target)?;
            continue;
        }
        if path == Path::new("manifest.json") {
            let mut text = String::new();
            (&mut entry).take(SMALL_MAX).read_to_string(&mut text)?;
            let mut manifest: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| bad(format!("manifest.json: {e}")))?;
            let images = manifest
                .as_array_mut()
                .filter(|a| a.len() == 1)
                .ok_or_else(|| bad("manifest.json must describe exactly one image".into()))?;
            let image =
                images[0].as_object_mut().ok_or_else(|| bad("manifest.json: not an object".into()))?;
            // Only the fields the engine needs, spelt exactly: Docker's JSON
            // decoder matches keys case-insensitively, so `repotags` would
            // retag the host's images as `RepoTags` does, and a `config`
            // after `Config` would name another config than the one checked.
            image.retain(|k, _| MANIFEST_KEYS.contains(&k.as_str()));
            let name = image
                .get("Config")
                .and_then(|c| c.as_str())
                .ok_or_else(|| bad("manifest.json names no Config".into()))?;
            // "<hex>.json" (classic layout) or "blobs/sha256/<hex>" (OCI layout).
            let hex = name.rsplit('/').next().unwrap_or(name).trim_end_matches(".json").to_owned();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(format!("unexpected Config name {name:?}")));
            }
            config = Some((normal(Path::new(name)), hex.to_ascii_lowercase()));
            let body = serde_json::to_vec(&manifest).map_err(|e| bad(e.to_string()))?;
            header.set_size(body.len() as u64);
            output.append_data(&mut header, &path, body.as_slice())?;
            continue;
        }
        if kind.is_file() && header.size().unwrap_or(u64::MAX) <= SMALL_MAX {
            let mut body = Vec::new();
            (&mut entry).take(SMALL_MAX).read_to_end(&mut body)?;
            hashes.insert(path.clone(), hex::encode(Sha256::digest(&body)));
            output.append_data(&mut header, &path, body.as_slice())?;
            continue;
        }
        output.append_data(&mut header, &path, &mut entry)?;
    }
    output.finish()?;
    let (name, hex) = config.ok_or_else(|| bad("no manifest.json".into()))?;
    match hashes.get(&name) {
        Some(h) if *h == hex => Ok(format!("sha256:{hex}")),
        Some(_) => Err(bad(format!("its config {} does not hash to the image id it claims", name.display()))),
        None => Err(bad(format!("the config {} named by manifest.json is missing", name.display()))),
    }
}

/// `path` without its `.` components, as a tar writer and the engine name it.
fn normal(path: &Path) -> PathBuf {
    path.components().filter(|c| !matches!(c, Component::CurDir)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(dir: &Path, config: &[u8], claimed: &str) -> PathBuf {
        archive_named(dir, config, claimed, "", "")
    }

    /// Every entry's name starts with `prefix`, written as is (the tar
    /// writer would drop a `./`).
    /// `extra` goes into the manifest's image object (`,"key":value` pairs).
    fn archive_named(dir: &Path, config: &[u8], claimed: &str, prefix: &str, extra: &str) -> PathBuf {
        let path = dir.join("in.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
        let mut add = |name: &str, body: &[u8]| {
            let name = format!("{prefix}{name}");
            let mut h = tar::Header::new_gnu();
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append(&h, body).unwrap();
        };
        let manifest = format!(
            r#"[{{"Config":"{claimed}.json","RepoTags":["postgres:latest"],"Layers":["l/layer.tar"]{extra}}}]"#
        );
        add("manifest.json", manifest.as_bytes());
        add("repositories", br#"{"postgres":{"latest":"x"}}"#);
        add(&format!("{claimed}.json"), config);
        add("l/layer.tar", b"layer bytes");
        b.finish().unwrap();
        path
    }

    fn names(tar: &Path) -> Vec<String> {
        let mut a = tar::Archive::new(std::fs::File::open(tar).unwrap());
        a.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect()
    }

    #[test]
    fn tags_go_and_the_id_is_the_configs_hash() {
        let dir = tempfile::tempdir().unwrap();
        let config = br#"{"architecture":"amd64"}"#;
        let hex = hex::encode(Sha256::digest(config));
        let out = dir.path().join("out.tar");
        let input = std::fs::File::open(archive(dir.path(), config, &hex)).unwrap();
        let id = sanitize(input, std::fs::File::create(&out).unwrap()).unwrap();
        assert_eq!(id, format!("sha256:{hex}"));
        let names = names(&out);
        assert!(!names.contains(&"repositories".to_owned()), "{names:?}");
        assert!(names.contains(&"l/layer.tar".to_owned()));
        let mut a = tar::Archive::new(std::fs::File::open(&out).unwrap());
        let mut manifest = String::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            if e.path().unwrap() == Path::new("manifest.json") {
                e.read_to_string(&mut manifest).unwrap();
            }
        }
        assert!(!manifest.contains("RepoTags") && manifest.contains(&hex), "{manifest}");
    }

    /// The manifest of the sanitized copy, as a JSON value.
    fn manifest_of(tar: &Path) -> serde_json::Value {
        let mut a = tar::Archive::new(std::fs::File::open(tar).unwrap());
        for e in a.entries().unwrap() {
            let e = e.unwrap();
            if e.path().unwrap() == Path::new("manifest.json") {
                return serde_json::from_reader(e).unwrap();
            }
        }
        panic!("no manifest.json")
    }

    #[test]
    fn only_the_needed_fields_stay_however_other_keys_are_spelt() {
        // Found by the fuzzer: " RepoTags" survived; Docker's decoder matches
        // keys case-insensitively, so "repotags" would retag the host's images.
        let dir = tempfile::tempdir().unwrap();
        let config = br#"{"architecture":"amd64"}"#;
        let hex = hex::encode(Sha256::digest(config));
        let other = "ab".repeat(32);
        let extra = format!(
            r#","repotags":["busybox:latest"]," RepoTags":["x"],"config":"{other}.json","Parent":"p""#
        );
        let input = archive_named(dir.path(), config, &hex, "", &extra);
        let out = dir.path().join("out.tar");
        let id = sanitize(std::fs::File::open(input).unwrap(), std::fs::File::create(&out).unwrap()).unwrap();
        assert_eq!(id, format!("sha256:{hex}"));
        let manifest = manifest_of(&out);
        let keys: Vec<&String> = manifest[0].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["Config", "Layers"], "{manifest}");
    }

    #[test]
    fn tags_go_whatever_the_entries_are_spelled() {
        let dir = tempfile::tempdir().unwrap();
        let config = br#"{"architecture":"amd64"}"#;
        let hex = hex::encode(Sha256::digest(config));
        let out = dir.path().join("out.tar");
        let input = std::fs::File::open(archive_named(dir.path(), config, &hex, "./", "")).unwrap();
        let id = sanitize(input, std::fs::File::create(&out).unwrap()).unwrap();
        assert_eq!(id, format!("sha256:{hex}"));
        let names = names(&out);
        assert!(!names.contains(&"repositories".to_owned()), "{names:?}");
        assert!(names.contains(&"manifest.json".to_owned()), "{names:?}");
    }

    #[test]
    fn an_archive_claiming_another_images_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        // The id of an image the engine may hold, with a config that is not its.
        let other = "a".repeat(64);
        let input = std::fs::File::open(archive(dir.path(), b"{}", &other)).unwrap();
        let err = sanitize(input, std::io::sink()).unwrap_err();
        assert!(err.to_string().contains("does not hash"), "{err}");
    }
}
