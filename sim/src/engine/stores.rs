//! What simulated sites persist: a real site's store holds its own bytes;
//! here sites that saved the same bytes share one copy (docs/benchmarks.md,
//! "Simulator: scale").

use std::collections::HashSet;
use std::rc::Rc;

/// The bytes a site persisted under one key, as appended segments each
/// allocated to its size: one growing buffer per key held up to twice its
/// bytes, which at 500 sites was 84 of 293 MiB of the simulator's heap.
#[derive(Default)]
pub(crate) struct Stored {
    parts: Vec<Rc<[u8]>>,
}

impl Stored {
    /// Segments kept before they are joined into one (a restart reads them all).
    const MAX_PARTS: usize = 32;

    pub(super) fn append(&mut self, bytes: Vec<u8>, segments: &mut Segments) {
        if self.parts.len() >= Self::MAX_PARTS {
            self.parts = vec![segments.intern(self.bytes())];
        }
        self.parts.push(segments.intern(bytes));
    }

    pub(super) fn replace(&mut self, bytes: Vec<u8>, segments: &mut Segments) {
        self.parts = vec![segments.intern(bytes)];
    }

    /// Everything stored, in order.
    pub fn bytes(&self) -> Vec<u8> {
        self.parts.concat()
    }

    pub fn len(&self) -> usize {
        self.parts.iter().map(|p| p.len()).sum()
    }
}

/// The simulated stores' segments, one copy of each distinct byte string:
/// sites save the same changes of the documents they hold alike (the
/// realm's, a giver's), and at 500 sites of `heal-1000.toml` the stores held
/// 45.3 MB in segments of which 0.76 MB were distinct. Each site still reads
/// back exactly what it wrote; only the simulator's memory is shared.
#[derive(Default)]
pub(crate) struct Segments {
    set: HashSet<Rc<[u8]>>,
    /// Entries when unused ones were last dropped.
    kept: usize,
}

impl Segments {
    pub(super) fn intern(&mut self, bytes: Vec<u8>) -> Rc<[u8]> {
        if let Some(same) = self.set.get(bytes.as_slice()) {
            return same.clone();
        }
        // Drop the segments no store holds any more, whenever the table has
        // doubled since the last time: amortised O(1) per write.
        if self.set.len() >= 2 * self.kept.max(1024) {
            self.set.retain(|s| Rc::strong_count(s) > 1);
            self.kept = self.set.len();
        }
        let new: Rc<[u8]> = bytes.into();
        self.set.insert(new.clone());
        new
    }

    /// Distinct segments held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.set.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_read_back_what_they_wrote_and_share_equal_segments() {
        let mut seg = Segments::default();
        let (mut a, mut b) = (Stored::default(), Stored::default());
        a.append(b"realm change".to_vec(), &mut seg);
        b.append(b"realm change".to_vec(), &mut seg);
        b.append(b"own change".to_vec(), &mut seg);
        assert_eq!(a.bytes(), b"realm change");
        assert_eq!(b.bytes(), b"realm changeown change");
        assert!(Rc::ptr_eq(&a.parts[0], &b.parts[0]), "one copy of the same segment");
        assert_eq!(seg.len(), 2);
        a.replace(b"snapshot".to_vec(), &mut seg);
        assert_eq!(a.bytes(), b"snapshot");
        assert_eq!(b.bytes(), b"realm changeown change", "another store is untouched");
    }

    #[test]
    fn segments_no_store_holds_are_dropped_and_joins_keep_the_order() {
        let mut seg = Segments::default();
        let mut s = Stored::default();
        for i in 0..5000u32 {
            s.replace(i.to_le_bytes().to_vec(), &mut seg);
        }
        assert!(seg.len() <= 2048, "unused segments pile up: {}", seg.len());
        let mut joined = Stored::default();
        let mut want = Vec::new();
        for i in 0..(Stored::MAX_PARTS as u32 * 2 + 3) {
            joined.append(i.to_be_bytes().to_vec(), &mut seg);
            want.extend(i.to_be_bytes());
        }
        assert!(joined.parts.len() <= Stored::MAX_PARTS + 1);
        assert_eq!(joined.bytes(), want);
    }
}
