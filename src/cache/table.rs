//! The per-shard hash table: 8-byte item records in 64-byte buckets with overflow chaining.
//!
//! A record packs `tag:12 | freq:8 | segment:22 | offset:22`. The tag (12 bits of the key's
//! hash, never 0) filters candidates so the key bytes in the segment are compared only for
//! likely matches; `freq` counts reads (saturating) for merge eviction. An all-zero slot is
//! empty. When all 8 slots of a bucket are taken, the last one becomes a link
//! (tag 0, value = overflow bucket index + 1) to an overflow bucket, whose first slot receives
//! the displaced record. Overflow buckets are allocated on demand and reused after a flush;
//! the main bucket array is fixed at creation (sized from the expected item count), so the
//! table never rehashes and never pauses.

/// Hash of a key (a folded-multiply hash written for this store; keys are short).
pub(crate) fn hash_key(key: &[u8]) -> u64 {
    const K1: u64 = 0x9e37_79b9_7f4a_7c15;
    const K2: u64 = 0xd6e8_feb8_6659_fd93;
    #[inline(always)]
    fn fold(a: u64, b: u64) -> u64 {
        let r = u128::from(a) * u128::from(b);
        (r as u64) ^ ((r >> 64) as u64)
    }
    let mut h = fold(0x243f_6a88_85a3_08d3 ^ key.len() as u64, K1);
    let mut chunks = key.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = fold(h ^ w, K1);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut t = [0u8; 8];
        t[..rest.len()].copy_from_slice(rest);
        h = fold(h ^ u64::from_le_bytes(t), K2);
    }
    fold(h, K2)
}

/// Segment ids and offsets are 22 bits each.
pub(crate) const SEG_BITS: u32 = 22;
pub(crate) const OFF_BITS: u32 = 22;
const SEG_MASK: u64 = (1 << SEG_BITS) - 1;
const OFF_MASK: u64 = (1 << OFF_BITS) - 1;

/// Tag of a hash: 12 bits, never 0 (0 marks links and empty slots).
#[inline]
pub(crate) fn tag_of(h: u64) -> u64 {
    let t = h >> 52;
    if t == 0 {
        1
    } else {
        t
    }
}

/// One item record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Record(pub u64);

impl Record {
    pub fn new(tag: u64, seg: u32, off: u32) -> Record {
        Record((tag << 52) | (u64::from(seg) << OFF_BITS) | u64::from(off))
    }
    #[cfg(test)]
    pub fn tag(self) -> u64 {
        self.0 >> 52
    }
    pub fn freq(self) -> u8 {
        (self.0 >> 44) as u8
    }
    pub fn seg(self) -> u32 {
        ((self.0 >> OFF_BITS) & SEG_MASK) as u32
    }
    pub fn off(self) -> u32 {
        (self.0 & OFF_MASK) as u32
    }
    pub fn with_freq(self, f: u8) -> Record {
        Record((self.0 & !(0xff << 44)) | (u64::from(f) << 44))
    }
    fn is_record(v: u64) -> bool {
        v >> 52 != 0
    }
}

#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Bucket([u64; 8]);

/// Where a record sits, for updating or removing it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot {
    bucket: u32,
    index: u8,
}

pub(crate) struct Table {
    buckets: Vec<Bucket>,
    main: usize,
    /// Overflow buckets live in `buckets[main..]`; `overflow_used` of them are linked.
    overflow_used: usize,
    len: usize,
}

impl Table {
    /// A table with enough main buckets for `expected` records at about 7 per bucket.
    pub fn new(expected: usize) -> Table {
        let main = (expected / 7).max(1);
        Table { buckets: vec![Bucket::default(); main], main, overflow_used: 0, len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Bytes held by the table (main and overflow buckets allocated).
    pub fn bytes(&self) -> usize {
        self.buckets.capacity() * std::mem::size_of::<Bucket>()
    }

    #[inline]
    fn home(&self, h: u64) -> usize {
        (((h & 0xffff_ffff) * self.main as u64) >> 32) as usize
    }

    /// Finds the record whose tag matches and for which `is_key(record)` is true.
    #[inline]
    pub fn find(&self, h: u64, mut is_key: impl FnMut(Record) -> bool) -> Option<(Slot, Record)> {
        let tag = tag_of(h);
        let mut b = self.home(h);
        loop {
            let bucket = &self.buckets[b].0;
            for (i, &v) in bucket.iter().enumerate() {
                if v >> 52 == tag && is_key(Record(v)) {
                    return Some((Slot { bucket: b as u32, index: i as u8 }, Record(v)));
                }
            }
            let last = bucket[7];
            if last != 0 && !Record::is_record(last) {
                b = (last - 1) as usize;
            } else {
                return None;
            }
        }
    }

    /// Finds the record at exactly (seg, off) for a key with hash `h`.
    pub fn find_location(&self, h: u64, seg: u32, off: u32) -> Option<(Slot, Record)> {
        self.find(h, |r| r.seg() == seg && r.off() == off)
    }

    pub fn set(&mut self, slot: Slot, r: Record) {
        self.buckets[slot.bucket as usize].0[slot.index as usize] = r.0;
    }

    pub fn remove(&mut self, slot: Slot) {
        self.buckets[slot.bucket as usize].0[slot.index as usize] = 0;
        self.len -= 1;
    }

    /// Inserts a record for a key known not to be in the table.
    pub fn insert_new(&mut self, h: u64, r: Record) {
        let mut b = self.home(h);
        loop {
            let bucket = &mut self.buckets[b].0;
            if let Some(i) = bucket.iter().position(|&v| v == 0) {
                bucket[i] = r.0;
                self.len += 1;
                return;
            }
            let last = bucket[7];
            if Record::is_record(last) {
                // Full and unlinked: move the last record to a new overflow bucket.
                let nb = self.new_overflow();
                self.buckets[nb].0[0] = last;
                self.buckets[nb].0[1] = r.0;
                self.buckets[b].0[7] = nb as u64 + 1;
                self.len += 1;
                return;
            }
            b = (last - 1) as usize;
        }
    }

    fn new_overflow(&mut self) -> usize {
        let idx = self.main + self.overflow_used;
        if idx == self.buckets.len() {
            self.buckets.push(Bucket::default());
        }
        self.overflow_used += 1;
        idx
    }

    /// Empties the table; overflow buckets stay allocated for reuse.
    pub fn clear(&mut self) {
        for b in &mut self.buckets {
            *b = Bucket::default();
        }
        self.overflow_used = 0;
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_pack_and_unpack() {
        let r = Record::new(0xabc, (1 << 22) - 1, 12345).with_freq(200);
        assert_eq!((r.tag(), r.seg(), r.off(), r.freq()), (0xabc, (1 << 22) - 1, 12345, 200));
    }

    #[test]
    fn overflow_chains_hold_everything() {
        let mut t = Table::new(7);
        // 100 records with the same home bucket and tag, told apart by offset.
        let h = 0x1234_5678_0000_0000u64 | 5;
        for off in 0..100 {
            t.insert_new(h, Record::new(tag_of(h), 1, off));
        }
        assert_eq!(t.len(), 100);
        for off in 0..100 {
            let (slot, r) = t.find_location(h, 1, off).expect("record lost");
            assert_eq!(r.off(), off);
            if off % 2 == 0 {
                t.remove(slot);
            }
        }
        for off in 0..100 {
            assert_eq!(t.find_location(h, 1, off).is_some(), off % 2 == 1);
        }
        t.clear();
        assert_eq!(t.len(), 0);
        assert!(t.find_location(h, 1, 1).is_none());
    }
}
