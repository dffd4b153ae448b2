//! Automerge storage chunks checked before automerge decodes them.
//!
//! Automerge believes what a chunk says about itself. A 48-byte "bundle"
//! chunk (type 3) made it allocate more than 8 GiB
//! (`fuzz/corpus/document/bundle-bomb`, found by the document fuzz target),
//! and DEFLATE'd data inflates up to a thousandfold: a 4 MiB sync message
//! could become 4 GiB. Atoll writes and sends only documents and changes
//! (types 0, 1 and 2), so anything else is refused, and what a chunk would
//! inflate to is counted (without keeping it) against a budget proportional
//! to the bytes received. The chunk layout is automerge's binary format
//! (<https://automerge.org/automerge-binary-format-spec/>); a chunk this walk
//! cannot follow is refused too, as automerge would refuse it.

use std::io::Read;

use crate::DocError;

const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
const DOCUMENT: u8 = 0;
const CHANGE: u8 = 1;
const COMPRESSED_CHANGE: u8 = 2;
/// A column whose spec has this bit is DEFLATE'd.
const DEFLATED: u64 = 0b1000;
/// Inflated bytes allowed per received byte, above [`INFLATE_FLOOR`].
/// Automerge compresses only columns and changes of 256 bytes or more, and
/// its columns are already run-length encoded: Atoll's documents inflate by
/// a few times (`deflated_documents_fit_the_budget` below), far from this.
pub const INFLATE_RATIO: usize = 32;
/// Inflated bytes allowed whatever the input's size.
pub const INFLATE_FLOOR: usize = 1 << 20;

/// Whether `bytes` is a whole-document chunk (what automerge's V2 sync sends
/// on a first exchange) rather than a change.
pub fn is_document(bytes: &[u8]) -> bool {
    bytes.len() > 8 && bytes[..4] == MAGIC && bytes[8] == DOCUMENT
}

/// The chunks of a sequence (one element of a sync message may hold several
/// changes back to back: automerge loads it as one incremental save).
pub fn split(bytes: &[u8]) -> Result<Vec<&[u8]>, DocError> {
    let mut out = Vec::new();
    let mut input = Reader { rest: bytes };
    while !input.rest.is_empty() {
        let start = input.rest;
        if input.take(4)? != MAGIC {
            return Err(bad("bad magic bytes"));
        }
        input.take(5)?; // checksum and type
        let len = input.uleb()?;
        input.take(len)?;
        out.push(&start[..start.len() - input.rest.len()]);
    }
    Ok(out)
}

fn bad(why: &str) -> DocError {
    DocError::BadChange(format!("automerge chunk: {why}"))
}

/// Reads automerge's chunk framing without trusting it.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn uleb(&mut self) -> Result<u64, DocError> {
        let mut value = 0u64;
        for (i, b) in self.rest.iter().enumerate().take(10) {
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                self.rest = &self.rest[i + 1..];
                return Ok(value);
            }
        }
        Err(bad("truncated or overlong number"))
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8], DocError> {
        let len = usize::try_from(len).map_err(|_| bad("length beyond memory"))?;
        if len > self.rest.len() {
            return Err(bad("length beyond the bytes received"));
        }
        let (head, tail) = self.rest.split_at(len);
        self.rest = tail;
        Ok(head)
    }

    /// Skips `count` items of `size` bytes each.
    fn skip_n(&mut self, count: u64, size: u64) -> Result<(), DocError> {
        self.take(count.checked_mul(size).ok_or_else(|| bad("count overflows"))?).map(|_| ())
    }

    /// Skips a count-prefixed list of length-prefixed byte strings.
    fn skip_strings(&mut self) -> Result<(), DocError> {
        let count = self.uleb()?;
        for _ in 0..count {
            let len = self.uleb()?;
            self.take(len)?;
        }
        Ok(())
    }

    /// A count-prefixed list of column (spec, length) pairs.
    fn columns(&mut self) -> Result<Vec<(u64, u64)>, DocError> {
        let count = self.uleb()?;
        // Each column takes at least two bytes: a hostile count cannot
        // make this allocate more than the input does.
        if count > self.rest.len() as u64 / 2 {
            return Err(bad("more columns than bytes"));
        }
        (0..count).map(|_| Ok((self.uleb()?, self.uleb()?))).collect()
    }
}

/// How many bytes `deflated` inflates to, stopping past `limit`.
fn inflated_len(deflated: &[u8], limit: usize) -> Result<usize, DocError> {
    let mut decoder = flate2::read::DeflateDecoder::new(deflated).take((limit as u64).saturating_add(1));
    let n = std::io::copy(&mut decoder, &mut std::io::sink())
        .map_err(|_| bad("DEFLATE data does not inflate"))?;
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    if n > limit {
        return Err(bad("inflates beyond the budget for its size"));
    }
    Ok(n)
}

/// Checks a sequence of chunks (a saved document, incremental saves, a
/// change, the changes of a sync message) before automerge decodes it.
pub fn check(bytes: &[u8]) -> Result<(), DocError> {
    let mut budget = INFLATE_RATIO.saturating_mul(bytes.len()).saturating_add(INFLATE_FLOOR);
    let mut input = Reader { rest: bytes };
    while !input.rest.is_empty() {
        if input.take(4)? != MAGIC {
            return Err(bad("bad magic bytes"));
        }
        input.take(4)?; // checksum: automerge verifies it
        let kind = input.take(1)?[0];
        let len = input.uleb()?;
        let body = input.take(len)?;
        match kind {
            DOCUMENT => budget -= document(body, budget)?,
            CHANGE => {} // columns of a change are never compressed
            COMPRESSED_CHANGE => budget -= inflated_len(body, budget)?,
            other => return Err(bad(&format!("chunk type {other} is not a document or a change"))),
        }
    }
    Ok(())
}

/// Walks a document chunk's body; returns how many bytes its compressed
/// columns inflate to, refusing more than `budget`.
fn document(body: &[u8], budget: usize) -> Result<usize, DocError> {
    let mut r = Reader { rest: body };
    r.skip_strings()?; // actors
    let heads = r.uleb()?;
    r.skip_n(heads, 32)?;
    let change_columns = r.columns()?;
    let op_columns = r.columns()?;
    let mut inflated = 0usize;
    for (spec, len) in change_columns.into_iter().chain(op_columns) {
        let data = r.take(len)?;
        if spec & DEFLATED != 0 {
            inflated += inflated_len(data, budget - inflated)?;
        }
    }
    Ok(inflated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Doc, Entity};

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Thing {
        name: String,
        size: u64,
        note: String,
    }

    impl Entity for Thing {
        const COLLECTION: &'static str = "things";
        fn key(&self) -> String {
            self.name.clone()
        }
    }

    fn chunk(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend([0; 4]);
        out.push(kind);
        let mut len = body.len() as u64;
        loop {
            let b = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
        out.extend(body);
        out
    }

    fn deflate(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::DeflateEncoder::new(bytes, flate2::Compression::best()).read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn documents_and_changes_pass() {
        let mut doc = Doc::create(b"site-1", &["users"], 1).unwrap();
        let saved = doc.save();
        check(&saved).unwrap();
        let mut changes = saved.clone();
        for c in doc.changes_since(&[]) {
            check(&c).unwrap();
            changes.extend(c);
        }
        check(&changes).unwrap();
        check(&[]).unwrap();
    }

    #[test]
    fn a_bundle_is_refused() {
        let bomb = include_bytes!("../../fuzz/corpus/document/bundle-bomb");
        let err = check(bomb).unwrap_err().to_string();
        assert!(err.contains("chunk type 3"), "{err}");
        assert!(Doc::load_any(bomb, b"site-1").is_err());
    }

    #[test]
    fn a_deflate_bomb_is_refused() {
        // 64 MiB of zeros deflate to about 64 KiB: a thousandfold.
        let bomb = chunk(COMPRESSED_CHANGE, &deflate(&vec![0; 64 << 20]));
        let err = check(&bomb).unwrap_err().to_string();
        assert!(err.contains("beyond the budget"), "{err}");
        // The same ratio within the floor is fine (automerge then refuses
        // the zeros as a change, which is not this check's business).
        check(&chunk(COMPRESSED_CHANGE, &deflate(&vec![0; 512 << 10]))).unwrap();
    }

    #[test]
    fn lengths_beyond_the_input_are_refused() {
        let mut truncated = chunk(CHANGE, &[1, 2, 3]);
        truncated.pop();
        assert!(check(&truncated).is_err());
        // A document claiming 2^60 heads.
        let mut body = vec![0];
        body.extend([0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10]);
        assert!(check(&chunk(DOCUMENT, &body)).is_err());
        assert!(check(b"not automerge").is_err());
    }

    #[test]
    fn deflated_documents_fit_the_budget() {
        // A document big enough for automerge to compress its columns.
        let mut doc = Doc::create(b"site-1", &[Thing::COLLECTION], 1).unwrap();
        for i in 0..2000u64 {
            doc.put(&Thing { name: format!("thing-{i}"), size: i, note: "x".repeat(i as usize % 50) })
                .unwrap();
            doc.commit(i);
        }
        let saved = doc.save();
        let mut r = Reader { rest: &saved };
        r.take(9).unwrap();
        let len = r.uleb().unwrap();
        let inflated = document(r.take(len).unwrap(), usize::MAX).unwrap();
        assert!(inflated > 0, "no compressed column: the test does not test");
        assert!(inflated < INFLATE_RATIO * saved.len() / 4, "{inflated} from {}", saved.len());
    }
}
