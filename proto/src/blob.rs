//! An image's chunk manifest as the catalog holds it: the blob's digest, its
//! size, the chunk size and each chunk's hash. Checked where it is made
//! (registering an upload) and where it is read from a peer (a site about to
//! fetch the chunks it names): a manifest is as hostile as any peer's bytes.

use crate::wire::MAX_CHUNK;

/// Largest image the catalog accepts: 64 GiB.
pub const MAX_IMAGE_SIZE: u64 = 64 << 30;

/// 64 lowercase hex digits, as Atoll writes sha256 hashes.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether the manifest is one an honest site could have written: a
/// `sha256:` digest, a size within [`MAX_IMAGE_SIZE`], chunks of 1 byte to
/// [`MAX_CHUNK`], exactly as many chunk hashes as the size needs, each a
/// sha256. The reason when it is not.
pub fn check(digest: &str, size: u64, chunk_size: u64, chunks: &[String]) -> Result<(), String> {
    if !digest.strip_prefix("sha256:").is_some_and(is_sha256_hex) {
        return Err(format!("digest {digest:?} is not sha256:<64 hex digits>"));
    }
    if size > MAX_IMAGE_SIZE {
        return Err(format!("image of {size} bytes is over the {MAX_IMAGE_SIZE}-byte limit"));
    }
    if chunk_size == 0 || chunk_size > MAX_CHUNK as u64 {
        return Err(format!("chunk size {chunk_size} is not 1 to {MAX_CHUNK} bytes"));
    }
    if chunks.len() as u64 != size.div_ceil(chunk_size) {
        return Err(format!("{} chunk hashes for {size} bytes in chunks of {chunk_size}", chunks.len()));
    }
    if let Some(bad) = chunks.iter().find(|c| !is_sha256_hex(c)) {
        return Err(format!("chunk hash {bad:?} is not 64 hex digits"));
    }
    Ok(())
}

/// The length of chunk `index` of a manifest that passed [`check`].
pub fn chunk_len(size: u64, chunk_size: u64, index: usize) -> u64 {
    let start = (index as u64).saturating_mul(chunk_size);
    size.saturating_sub(start).min(chunk_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(n: usize) -> Vec<String> {
        vec!["ab".repeat(32); n]
    }

    #[test]
    fn manifests_are_checked() {
        let digest = format!("sha256:{}", "cd".repeat(32));
        assert!(check(&digest, 10, 4, &hashes(3)).is_ok());
        assert!(check(&digest, 0, 4, &[]).is_ok());
        assert!(check(&digest, 10, 4, &hashes(2)).unwrap_err().contains("2 chunk hashes"));
        assert!(check(&digest, 10, 0, &[]).unwrap_err().contains("chunk size 0"));
        assert!(check(&digest, 10, MAX_CHUNK as u64 + 1, &hashes(1)).is_err());
        assert!(check(&digest, u64::MAX, 4, &[]).unwrap_err().contains("over"));
        assert!(check("sha256:xyz", 10, 4, &hashes(3)).is_err());
        assert!(check(&digest, 4, 4, &["../../etc/passwd".into()]).unwrap_err().contains("not 64 hex"));
        assert_eq!((0..3).map(|i| chunk_len(10, 4, i)).collect::<Vec<_>>(), [4, 4, 2]);
    }
}
