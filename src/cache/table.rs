//! The per-shard hash table: 8-byte item records in 64-byte buckets, linear probing by bucket.
//!
//! A record packs `tag:12 | freq:8 | segment:22 | offset:22`. The tag (12 bits of the key's
//! hash, never 0) filters candidates so the key bytes in the segment are compared only for
//! likely matches; `freq` counts reads (saturating) for merge eviction. An all-zero slot is
//! empty. A record goes to its home bucket, or when that is full to the next bucket with a
//! free slot (linear probing by whole cache lines); a small per-bucket counter of records
//! probing past it tells a lookup where to stop, exactly, even after deletions. Sized for
//! the expected item count at 90% fill (about 9.2 bytes per item), it is doubled when fill
//! would pass 93%: the shard rebuilds it from its segments (a pause proportional to the
//! shard's items, which a correctly sized table never takes).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::memory::{advise_huge_pages, prefetch};

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
}

/// Eight record words. Atomic because readers that share the shard (see `shard_lock`) bump a
/// record's read frequency while others read it; a writer has the table to itself and uses
/// plain access (`get_mut`).
#[derive(Default)]
#[repr(C, align(64))]
struct Bucket([AtomicU64; 8]);

/// The home bucket of hash `h` in a table of `n` buckets.
#[inline(always)]
fn home_of(h: u64, n: usize) -> usize {
    (((h & 0xffff_ffff) * n as u64) >> 32) as usize
}

/// Where a shard's table keeps its buckets, readable without the shard lock: an operation
/// prefetches its key's home bucket before it takes the lock, so that memory access overlaps
/// any wait for the lock instead of lengthening the time the lock is held. Published under the
/// lock whenever the table is replaced. A reader may see the old table's address, or the new
/// address with the old count: it only ever prefetches, which is harmless at any address.
#[derive(Default)]
pub(crate) struct BucketHint {
    base: AtomicUsize,
    count: AtomicUsize,
}

impl BucketHint {
    pub fn publish(&self, t: &Table) {
        self.base.store(t.buckets.as_ptr() as usize, Ordering::Relaxed);
        self.count.store(t.buckets.len(), Ordering::Relaxed);
    }

    /// Prefetches the home bucket of hash `h`.
    #[inline(always)]
    pub fn prefetch(&self, h: u64) {
        let base = self.base.load(Ordering::Relaxed);
        let home = home_of(h, self.count.load(Ordering::Relaxed));
        prefetch(base.wrapping_add(home.wrapping_mul(std::mem::size_of::<Bucket>())));
    }
}

/// Where a record sits, for updating or removing it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot {
    bucket: u32,
    index: u8,
    /// The table generation the slot belongs to (a rebuild or clear invalidates slots).
    generation: u32,
}

/// Iterator of [`Table::probe`].
pub(crate) struct Probe<'t> {
    table: &'t Table,
    tag: u64,
    bucket: usize,
    /// The next slot of `bucket` to look at.
    index: usize,
}

impl Iterator for Probe<'_> {
    type Item = (Slot, Record);

    #[inline(always)]
    fn next(&mut self) -> Option<(Slot, Record)> {
        let t = self.table;
        loop {
            let bucket = &t.buckets[self.bucket].0;
            while let Some(v) = bucket.get(self.index).map(|w| w.load(Ordering::Relaxed)) {
                let i = self.index;
                self.index += 1;
                if v >> 52 == self.tag {
                    let slot = Slot {
                        bucket: self.bucket as u32,
                        index: i as u8,
                        generation: t.generation,
                    };
                    return Some((slot, Record(v)));
                }
            }
            // A lookup stops at the first bucket no record's probe passes.
            if t.passing[self.bucket] == 0 {
                return None;
            }
            self.bucket = t.next(self.bucket);
            self.index = 0;
        }
    }
}

/// Largest fill (records / slots) before the table must grow.
const MAX_LOAD: f64 = 0.93;
/// Fill the table is sized for at creation.
const SIZED_LOAD: f64 = 0.90;

pub(crate) struct Table {
    buckets: Vec<Bucket>,
    /// `passing[b]`: records whose home bucket is before `b` (cyclically) and that are stored
    /// after it, i.e. whose probe passes `b`. A lookup stops at the first bucket with none.
    passing: Vec<u16>,
    len: usize,
    limit: usize,
    generation: u32,
}

impl Table {
    /// A table sized for `expected` records at 90% fill.
    pub fn new(expected: usize) -> Table {
        Table::with_buckets(((expected as f64 / (8.0 * SIZED_LOAD)).ceil() as usize).max(2))
    }

    pub fn with_buckets(n: usize) -> Table {
        let mut buckets = Vec::with_capacity(n);
        advise_huge_pages(&mut buckets);
        buckets.resize_with(n, Bucket::default);
        Table {
            buckets,
            passing: vec![0; n],
            len: 0,
            limit: ((n * 8) as f64 * MAX_LOAD) as usize,
            generation: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    /// True when one more record would exceed the fill limit: grow first.
    pub fn full(&self) -> bool {
        self.len + 1 > self.limit
    }

    /// Bytes held by the table.
    pub fn bytes(&self) -> usize {
        self.buckets.capacity() * std::mem::size_of::<Bucket>() + self.passing.capacity() * 2
    }

    #[inline]
    fn home(&self, h: u64) -> usize {
        home_of(h, self.buckets.len())
    }

    #[inline]
    fn next(&self, b: usize) -> usize {
        if b + 1 == self.buckets.len() {
            0
        } else {
            b + 1
        }
    }

    /// Finds the record whose tag matches and for which `is_key(record)` is true.
    #[inline(always)]
    pub fn find(&self, h: u64, mut is_key: impl FnMut(Record) -> bool) -> Option<(Slot, Record)> {
        self.probe(h).find(|&(_, r)| is_key(r))
    }

    /// The records whose tag matches `h`'s, in probe order, with their slots: the candidates
    /// a lookup checks the key of. A caller that loops over them itself (rather than passing
    /// a check to [`Table::find`]) keeps the check in one place in the machine code, where it
    /// can be inlined.
    #[inline(always)]
    pub fn probe(&self, h: u64) -> Probe<'_> {
        Probe { table: self, tag: tag_of(h), bucket: self.home(h), index: 0 }
    }

    /// Finds the record at exactly (seg, off) for a key with hash `h`.
    pub fn find_location(&self, h: u64, seg: u32, off: u32) -> Option<(Slot, Record)> {
        self.find(h, |r| r.seg() == seg && r.off() == off)
    }

    /// The record at `slot`, if the slot is still of this table generation.
    pub fn get(&self, slot: Slot) -> Option<Record> {
        (slot.generation == self.generation).then(|| {
            Record(
                self.buckets[slot.bucket as usize].0[slot.index as usize].load(Ordering::Relaxed),
            )
        })
    }

    /// Raises the read frequency of the record at `slot` by one, if it is still `r` and below
    /// the maximum: for readers sharing the table (a concurrent change of the record wins and
    /// the bump is dropped, which only makes the count lower).
    pub fn bump_freq_shared(&self, slot: Slot, r: Record) {
        let f = r.freq();
        if f == u8::MAX || slot.generation != self.generation {
            return;
        }
        let w = &self.buckets[slot.bucket as usize].0[slot.index as usize];
        let _ = w.compare_exchange(r.0, r.with_freq(f + 1).0, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// A table whose slots are not confused with those of `old` (for a rebuild).
    pub fn succeed(&mut self, old: &Table) {
        self.generation = old.generation.wrapping_add(1);
    }

    pub fn set(&mut self, slot: Slot, r: Record) {
        *self.buckets[slot.bucket as usize].0[slot.index as usize].get_mut() = r.0;
    }

    /// Removes the record at `slot`, whose key hashes to `h`.
    pub fn remove(&mut self, slot: Slot, h: u64) {
        *self.buckets[slot.bucket as usize].0[slot.index as usize].get_mut() = 0;
        self.len -= 1;
        let mut b = self.home(h);
        while b != slot.bucket as usize {
            self.passing[b] -= 1;
            b = self.next(b);
        }
    }

    /// Inserts a record for a key known not to be in the table. The caller grows the table
    /// first when `full()`.
    pub fn insert_new(&mut self, h: u64, r: Record) {
        assert!(self.len < self.buckets.len() * 8, "hash table full");
        let mut b = self.home(h);
        loop {
            if let Some(w) = self.buckets[b].0.iter_mut().map(AtomicU64::get_mut).find(|v| **v == 0)
            {
                *w = r.0;
                self.len += 1;
                return;
            }
            self.passing[b] = self.passing[b].checked_add(1).expect("probe counter overflow");
            b = self.next(b);
        }
    }

    /// Empties the table.
    pub fn clear(&mut self) {
        self.buckets.iter_mut().for_each(|b| *b = Bucket::default());
        self.passing.iter_mut().for_each(|p| *p = 0);
        self.len = 0;
        self.generation = self.generation.wrapping_add(1);
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
    fn probing_holds_everything_and_stops_exactly() {
        let mut t = Table::with_buckets(4);
        // 29 records (93% of 32 slots) with the same home bucket and tag, told apart by
        // offset: they spill over all 4 buckets, wrapping around.
        let h = 0x1234_5678_0000_0000u64 | 0xc000_0000;
        for off in 0..29 {
            assert!(!t.full());
            t.insert_new(h, Record::new(tag_of(h), 1, off));
        }
        assert_eq!(t.len(), 29);
        assert!(t.full());
        for off in 0..29 {
            let (slot, r) = t.find_location(h, 1, off).expect("record lost");
            assert_eq!(r.off(), off);
            if off % 2 == 0 {
                t.remove(slot, h);
            }
        }
        for off in 0..29 {
            assert_eq!(t.find_location(h, 1, off).is_some(), off % 2 == 1);
        }
        // Removing everything returns every probe counter to zero.
        for off in (1..29).step_by(2) {
            let (slot, _) = t.find_location(h, 1, off).unwrap();
            t.remove(slot, h);
        }
        assert!(t.passing.iter().all(|&p| p == 0));
        t.insert_new(h, Record::new(tag_of(h), 2, 0));
        t.clear();
        assert_eq!(t.len(), 0);
        assert!(t.find_location(h, 2, 0).is_none());
    }
}

#[cfg(test)]
mod distribution {
    use super::*;

    #[test]
    #[ignore]
    fn print_bucket_histogram() {
        let n = 62_500usize;
        let mut t = Table::new(n);
        let mut hist = vec![0usize; 64];
        let mut counts = vec![0usize; t.bucket_count()];
        for i in 0..n * 16 {
            let k = format!("key:{:028}", i);
            let h = hash_key(k.as_bytes());
            if (h >> 32) & 15 != 0 {
                continue;
            }
            counts[t.home(h)] += 1;
            t.insert_new(h, Record::new(tag_of(h), 1, (i % 1000) as u32));
        }
        for c in &counts {
            hist[(*c).min(63)] += 1;
        }
        println!("buckets {} bytes {} len {}", t.bucket_count(), t.bytes(), t.len());
        println!("hist {:?}", &hist[..20]);
    }
}
