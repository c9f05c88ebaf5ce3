//! One shard: its hash table, its share of the segments, its TTL buckets and counters, all
//! behind the shard's lock (the caller holds it for every method here), plus the pin counts
//! that readers drop without the lock.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use super::item::{
    decode_header, encode_header, header_len, HeaderParts, ItemHeader, DEAD_BIT, FETCHED_BIT,
    HEADER_MAX, META_KEY_BINARY, META_STALE, META_WIN_SENT,
};
use super::memory::{copy_into, Arena, SegmentMemory};
use super::shard_lock::ReaderSlot;
use super::store::TicketCursor;
use super::table::{hash_key, tag_of, BucketHint, Record, Slot, Table, OFF_BITS};
use super::{Error, Eviction, MetaDelete, MetaGet, MetaInfo, Mode, WriteOptions};

const NONE: u32 = u32::MAX;

/// The size an item counts against `item_max`: key, value and the largest possible header,
/// so that an accepted item can always be moved (touch, merge) whatever its header becomes.
pub(crate) fn item_size(klen: usize, vlen: usize) -> usize {
    klen.saturating_add(vlen).saturating_add(HEADER_MAX)
}
use super::pin_word;
pub(crate) use super::pin_word::RETIRED;

/// Per-segment pin counts of one shard, read and written by readers without the shard lock.
/// The array is padded by 128 bytes on both sides so that no other shard's data shares its
/// cache lines (readers of different shards never contend).
pub(crate) struct PinTable {
    words: Box<[AtomicU32]>,
}

const PIN_PAD: usize = 32;

impl PinTable {
    pub fn new(n: usize) -> PinTable {
        PinTable { words: (0..n + 2 * PIN_PAD).map(|_| AtomicU32::new(0)).collect() }
    }

    pub fn get(&self, i: usize) -> Option<&AtomicU32> {
        if i < self.words.len() - 2 * PIN_PAD {
            Some(&self.words[PIN_PAD + i])
        } else {
            None
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &AtomicU32> {
        self.words[PIN_PAD..self.words.len() - PIN_PAD].iter()
    }
}

impl std::ops::Index<usize> for PinTable {
    type Output = AtomicU32;
    fn index(&self, i: usize) -> &AtomicU32 {
        self.get(i).expect("segment index out of range")
    }
}

/// Number of TTL buckets: bucket 0 holds items that never expire; the rest follow Segcache's
/// four tiers of 256 buckets (widths 8 s, 128 s, 2048 s, 32768 s), plus one for longer TTLs.
const TTL_BUCKETS: usize = 978;

/// Words of the bitmap of TTL buckets whose chain is not empty.
const TTL_WORDS: usize = TTL_BUCKETS.div_ceil(64);

fn ttl_bucket(expiry: u32, now: u32) -> usize {
    if expiry == 0 {
        return 0;
    }
    let rel = expiry.saturating_sub(now).max(1) as usize;
    if rel < 2048 {
        1 + rel / 8
    } else if rel < 32768 {
        257 + (rel - 2048) / 128
    } else if rel < 524_288 {
        497 + (rel - 32768) / 2048
    } else if rel < 8_388_608 {
        737 + (rel - 524_288) / 32768
    } else {
        TTL_BUCKETS - 1
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SegState {
    Free,
    Live,
    Retired,
}

/// Metadata of one segment (kept outside the segment's bytes).
///
/// A lookup reads the segment's generation and expiry base, set when the segment is opened;
/// every append and every overwrite or delete of one of its items writes the offset and live
/// counts. The two groups are kept on different cache lines (`repr(C)`, line-aligned), so a
/// read on one core does not have to fetch a line that writes on the other core keep taking
/// away.
#[repr(C, align(64))]
struct SegMeta {
    // Set when the segment is opened (and rarely after: prev/next on chain changes, exp_max
    // when an item expiring later than all before it is appended).
    /// Write generation: unique per opening of a segment in this cache (CAS derivation).
    gen: u64,
    /// Creation order, for FIFO eviction.
    seq: u64,
    /// Expiry of the first item; items store only their difference to it.
    exp_base: u32,
    /// Latest expiry of any item (0 = some item never expires).
    exp_max: u32,
    prev: u32,
    next: u32,
    bucket: u16,
    state: SegState,
    /// Fills the first cache line (`tests::seg_meta_lines` checks the offsets).
    _line: [u8; 29],
    // Written by appends and item removals, from the second cache line on.
    write_off: u32,
    live_items: u32,
    live_bytes: u32,
    n_write_times: u8,
    /// When the items from each offset on were written: (offset, store time), ascending, one
    /// entry per second in which the segment was written to. An item's write time is that of
    /// the last entry at or before its offset; when the array is full every other entry is
    /// dropped, so a segment written over a long time tells write times more coarsely (an
    /// item then reads as written earlier than it was, never later).
    write_times: [(u32, u32); WRITE_TIMES],
}

const WRITE_TIMES: usize = 8;

impl SegMeta {
    fn empty() -> SegMeta {
        SegMeta {
            state: SegState::Free,
            gen: 0,
            write_off: 0,
            live_items: 0,
            live_bytes: 0,
            exp_base: 0,
            exp_max: 0,
            bucket: 0,
            prev: NONE,
            next: NONE,
            seq: 0,
            write_times: [(0, 0); WRITE_TIMES],
            _line: [0; 29],
            n_write_times: 0,
        }
    }

    /// Notes that the item at `off` was written at `now`.
    fn note_write(&mut self, off: u32, now: u32) {
        let n = self.n_write_times as usize;
        if n > 0 && self.write_times[n - 1].1 == now {
            return;
        }
        let mut n = n;
        if n == WRITE_TIMES {
            for i in 0..WRITE_TIMES / 2 {
                self.write_times[i] = self.write_times[2 * i];
            }
            n = WRITE_TIMES / 2;
        }
        self.write_times[n] = (off, now);
        self.n_write_times = (n + 1) as u8;
    }

    /// When the item at `off` was written (see `write_times`).
    fn written_at(&self, off: u32) -> u32 {
        let times = &self.write_times[..self.n_write_times as usize];
        times.iter().rev().find(|&&(o, _)| o <= off).or(times.first()).map_or(0, |&(_, t)| t)
    }
}

/// The meta-protocol state an item carries over when it is moved without a client write
/// (touch, merge eviction, a win token handed out, an in-place incr).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub(crate) struct Marks {
    pub fetched: bool,
    pub meta: u8,
}

impl Marks {
    /// The marks a client write starts with: unread, and the key's encoding if it is binary.
    #[inline(always)]
    fn of_write(opts: &WriteOptions) -> Marks {
        Marks { fetched: false, meta: if opts.key_binary { META_KEY_BINARY } else { 0 } }
    }

    fn of(hdr: &ItemHeader) -> Marks {
        Marks { fetched: hdr.fetched, meta: hdr.meta }
    }
}

#[derive(Clone, Copy)]
struct TtlBucket {
    head: u32,
    tail: u32,
    open: u32,
}

/// Per-shard counters (summed into `Stats`). The ones every get or set writes come first:
/// with `ShardInner`'s layout they share the shard lock's cache line (see there).
#[derive(Default, Clone, Copy)]
#[repr(C)]
pub(crate) struct Counters {
    pub hits: u64,
    pub misses: u64,
    pub sets: u64,
    pub deletes: u64,
    pub touches: u64,
    pub evictions: u64,
    pub evicted_items: u64,
    pub merged_items: u64,
    pub expirations: u64,
    pub expired_segments: u64,
    pub flushes: u64,
    pub table_grows: u64,
}

pub(crate) struct ShardConfig {
    pub segment_bytes: usize,
    pub max_segments: usize,
    pub item_max: usize,
    pub cas: bool,
    pub eviction: Eviction,
    pub shard_index: u32,
    pub shard_bits: u32,
    pub prefault: bool,
}

/// A found item: where it is and what its header says.
#[derive(Clone, Copy)]
pub(crate) struct Found {
    pub slot: Slot,
    pub rec: Record,
    pub hdr: ItemHeader,
    pub cas: u64,
}

/// What a shared reader's get found (see [`ShardInner::get_copy_shared`]).
pub(crate) enum SharedGet {
    /// The item's header and CAS, and whether the value was copied (it was not if the
    /// buffer is too short).
    Found(ItemHeader, u64, bool),
    Miss,
    /// Only a writer may serve this get.
    NeedsWriter,
}

/// What a lookup found for a key about to be written again (see `ShardInner::link`).
#[derive(Clone, Copy)]
enum Prior {
    /// Not in the table.
    Absent,
    /// This record, at this slot, with this header.
    At(Slot, Record, ItemHeader),
}

impl Prior {
    fn of(f: &Found) -> Prior {
        Prior::At(f.slot, f.rec, f.hdr)
    }
}

/// A located item handed to a pinned reader.
pub(crate) struct PinnedParts {
    pub seg: u32,
    pub key: *const u8,
    pub value: *const u8,
    pub hdr: ItemHeader,
    pub cas: u64,
}

/// One shard's state, behind the shard's lock.
///
/// The layout is fixed (`repr(C)`) for two cores taking turns on the shard: what every
/// operation reads or writes (the per-second tick, the flush epoch, the write sequence, the
/// live byte count and the hit/miss/set counters) comes first, so with the lock byte before it
/// (`Shard` keeps the lock at its start) it is one cache line, and the line that moves to a
/// core when it takes the lock is the only one an operation has to wait for. The rarer
/// counters fill the next line; the fields a get only reads (table, segments, configuration)
/// come after them and stay shared between the cores; the pin ticket cursor, written by
/// every pinned get, is last, away from them. `store::layout_tests` checks it.
#[repr(C)]
pub(crate) struct ShardInner {
    last_tick: u32,
    /// Last flush epoch applied here.
    pub flush_epoch: u32,
    seq: u64,
    /// Key and value bytes of linked items.
    live_kv: u64,
    pub counters: Counters,
    cfg: ShardConfig,
    table: Table,
    segs: Vec<SegMeta>,
    mem: Vec<SegmentMemory>,
    arena: Arena,
    free: Vec<u32>,
    ttl: Box<[TtlBucket]>,
    /// Bit b set while TTL bucket b's chain is not empty: the per-tick sweep visits only
    /// those chains instead of all 978 buckets.
    ttl_chained: [u64; TTL_WORDS],
    pins: Arc<PinTable>,
    /// Where `table`'s buckets are, for lock-free prefetching (updated when it is replaced).
    hint: Arc<BucketHint>,
    gen_counter: u64,
    /// Where the shard's pin tickets are issued next (issuing happens under the shard lock,
    /// in the same critical section as the lookup; releasing needs no lock).
    pub ticket_cursor: TicketCursor,
}

/// Snapshot of gauges for `Stats`.
pub(crate) struct Gauges {
    pub items: u64,
    pub item_bytes: u64,
    pub key_value_bytes: u64,
    pub segment_bytes_allocated: u64,
    pub hash_bytes: u64,
    pub meta_bytes: u64,
    pub segments_used: u64,
    pub segments_free: u64,
    pub segments_retired: u64,
}

impl ShardInner {
    pub fn new(
        cfg: ShardConfig,
        expected_items: usize,
        pins: Arc<PinTable>,
        hint: Arc<BucketHint>,
    ) -> std::io::Result<ShardInner> {
        let empty = TtlBucket { head: NONE, tail: NONE, open: NONE };
        let arena = Arena::new(cfg.max_segments * cfg.segment_bytes, cfg.prefault)?;
        let table = Table::new(expected_items);
        hint.publish(&table);
        Ok(ShardInner {
            arena,
            table,
            hint,
            segs: Vec::new(),
            mem: Vec::new(),
            free: Vec::new(),
            ttl: vec![empty; TTL_BUCKETS].into_boxed_slice(),
            ttl_chained: [0; TTL_WORDS],
            pins,
            seq: 0,
            gen_counter: 0,
            flush_epoch: 0,
            last_tick: 0,
            live_kv: 0,
            counters: Counters::default(),
            ticket_cursor: TicketCursor::default(),
            cfg,
        })
    }

    // --- reading items -----------------------------------------------------------------------

    #[inline(always)]
    fn header_at(&self, seg: u32, off: u32) -> ItemHeader {
        let m = &self.mem[seg as usize];
        let avail = self.cfg.segment_bytes - off as usize;
        let buf = m.read(off as usize, avail.min(HEADER_MAX));
        decode_header(buf, self.segs[seg as usize].exp_base).expect("corrupt item header")
    }

    fn key_at(&self, seg: u32, off: u32, hdr: &ItemHeader) -> &[u8] {
        self.mem[seg as usize].read(off as usize + hdr.header_len, hdr.klen)
    }

    fn value_at(&self, seg: u32, off: u32, hdr: &ItemHeader) -> &[u8] {
        self.mem[seg as usize].read(off as usize + hdr.header_len + hdr.klen, hdr.vlen)
    }

    fn cas_of(&self, seg: u32, off: u32, hdr: &ItemHeader) -> u64 {
        if !self.cfg.cas {
            return 0;
        }
        hdr.cas.unwrap_or((self.segs[seg as usize].gen << OFF_BITS) | u64::from(off))
    }

    /// The header of the item at (`seg`, `off`) if that item's key is `key`. The header and
    /// the key are read as one window of the segment, and a key of another length is told
    /// apart by the header's first byte, before the rest is decoded. The window ends at the
    /// segment's end, not at its write offset (the item is whole before it; what follows it
    /// is not read unless the header says so): so a lookup reads nothing of the segment's
    /// metadata that appends keep changing.
    #[inline(always)]
    fn header_if_key(&self, seg: u32, off: u32, key: &[u8]) -> Option<ItemHeader> {
        let m = &self.mem[seg as usize];
        let meta = &self.segs[seg as usize];
        let avail = self.cfg.segment_bytes - off as usize;
        let buf = m.read(off as usize, avail.min(HEADER_MAX + key.len()));
        if usize::from(*buf.first()?) != key.len() {
            return None;
        }
        let hdr = decode_header(buf, meta.exp_base).expect("corrupt item header");
        let stored = buf.get(hdr.header_len..hdr.header_len + hdr.klen);
        (stored.expect("item key past its segment's end") == key).then_some(hdr)
    }

    /// Finds the live record for `key`; an expired one is unlinked and reported absent.
    #[inline(always)]
    pub fn lookup(&mut self, key: &[u8], h: u64, now: u32) -> Option<Found> {
        let mut probe = self.table.probe(h);
        let (slot, rec, hdr) = loop {
            let (slot, r) = probe.next()?;
            if let Some(hdr) = self.header_if_key(r.seg(), r.off(), key) {
                break (slot, r, hdr);
            }
        };
        if hdr.expiry != 0 && hdr.expiry <= now {
            self.unlink(slot, h, rec, &hdr);
            self.counters.expirations += 1;
            return None;
        }
        let cas = self.cas_of(rec.seg(), rec.off(), &hdr);
        Some(Found { slot, rec, hdr, cas })
    }

    fn unlink(&mut self, slot: Slot, h: u64, rec: Record, hdr: &ItemHeader) {
        self.table.remove(slot, h);
        self.account_remove(rec.seg(), rec.off(), hdr);
    }

    /// Accounts for an item that is no longer linked and marks it dead in its header.
    fn account_remove(&mut self, seg: u32, off: u32, hdr: &ItemHeader) {
        let first = self.mem[seg as usize].read(off as usize + 1, 1)[0];
        self.mem[seg as usize].write(off as usize + 1, &[first | DEAD_BIT]);
        let m = &mut self.segs[seg as usize];
        m.live_items -= 1;
        m.live_bytes -= hdr.total_len() as u32;
        self.live_kv -= (hdr.klen + hdr.vlen) as u64;
    }

    /// Sets the item's fetched bit (in place: the header keeps its length) on its first read.
    #[inline]
    fn mark_fetched(&mut self, f: &Found) {
        if !f.hdr.fetched {
            let at = f.rec.off() as usize + 1;
            let m = &mut self.mem[f.rec.seg() as usize];
            let first = m.read(at, 1)[0];
            m.write(at, &[first | FETCHED_BIT]);
        }
    }

    /// Looks up and pins an item for a reader; counts a hit or miss.
    pub fn get_pinned(&mut self, key: &[u8], h: u64, now: u32) -> Option<PinnedParts> {
        let Some(f) = self.lookup(key, h, now) else {
            self.counters.misses += 1;
            return None;
        };
        self.counters.hits += 1;
        let freq = f.rec.freq();
        if freq < u8::MAX {
            self.table.set(f.slot, f.rec.with_freq(freq + 1));
        }
        self.mark_fetched(&f);
        let seg = f.rec.seg();
        pin_word::pin(&self.pins[seg as usize]);
        let m = &self.mem[seg as usize];
        let koff = f.rec.off() as usize + f.hdr.header_len;
        Some(PinnedParts {
            seg,
            key: m.addr(koff),
            value: m.addr(koff + f.hdr.klen),
            hdr: f.hdr,
            cas: f.cas,
        })
    }

    /// Looks up an item and copies its value into `buf` when it fits, in this critical
    /// section (nothing pinned). A copy counts as a hit; a value too long for `buf` is
    /// reported (with its header) but neither copied nor counted, since the caller reads it
    /// another way. `None` is a miss.
    pub fn get_copy(
        &mut self,
        key: &[u8],
        h: u64,
        now: u32,
        buf: &mut [u8],
    ) -> Option<(ItemHeader, u64, bool)> {
        let Some(f) = self.lookup(key, h, now) else {
            self.counters.misses += 1;
            return None;
        };
        if f.hdr.vlen > buf.len() {
            return Some((f.hdr, f.cas, false));
        }
        self.counters.hits += 1;
        let freq = f.rec.freq();
        if freq < u8::MAX {
            self.table.set(f.slot, f.rec.with_freq(freq + 1));
        }
        self.mark_fetched(&f);
        copy_into(&mut buf[..f.hdr.vlen], self.value_at(f.rec.seg(), f.rec.off(), &f.hdr));
        Some((f.hdr, f.cas, true))
    }

    /// [`ShardInner::get_copy`] for a reader that shares the shard (`shard_lock`): it changes
    /// nothing but the record's read frequency (atomically) and counts the hit or miss in its
    /// reader slot. What a shared reader may not do is left to the writer's side:
    /// `NeedsWriter` when the per-second housekeeping is due, when the item has expired (it
    /// is unlinked there) or was never read (its fetched bit is set there).
    pub fn get_copy_shared(
        &self,
        key: &[u8],
        h: u64,
        now: u32,
        buf: &mut [u8],
        slot: &ReaderSlot,
    ) -> SharedGet {
        if now != self.last_tick {
            return SharedGet::NeedsWriter;
        }
        let mut probe = self.table.probe(h);
        let (at, rec, hdr) = loop {
            let Some((at, r)) = probe.next() else {
                slot.misses.fetch_add(1, Ordering::Relaxed);
                return SharedGet::Miss;
            };
            if let Some(hdr) = self.header_if_key(r.seg(), r.off(), key) {
                break (at, r, hdr);
            }
        };
        if (hdr.expiry != 0 && hdr.expiry <= now) || !hdr.fetched {
            return SharedGet::NeedsWriter;
        }
        let cas = self.cas_of(rec.seg(), rec.off(), &hdr);
        if hdr.vlen > buf.len() {
            return SharedGet::Found(hdr, cas, false);
        }
        slot.hits.fetch_add(1, Ordering::Relaxed);
        self.table.bump_freq_shared(at, rec);
        copy_into(&mut buf[..hdr.vlen], self.value_at(rec.seg(), rec.off(), &hdr));
        SharedGet::Found(hdr, cas, true)
    }

    /// Copies an item's value out (for callers that need the bytes, e.g. append).
    fn value_copy(&self, f: &Found) -> Vec<u8> {
        self.value_at(f.rec.seg(), f.rec.off(), &f.hdr).to_vec()
    }

    // --- writing items -----------------------------------------------------------------------

    /// Appends an item to the open segment of its TTL bucket (opening a new segment, and
    /// evicting if the budget is full). Returns its location and CAS. Does not link it.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn append_item(
        &mut self,
        now: u32,
        key: &[u8],
        parts: &[&[u8]],
        flags: u32,
        expiry: u32,
        explicit_cas: Option<u64>,
        allow_merge: bool,
        marks: Marks,
    ) -> Result<(u32, u32, u64), Error> {
        let vlen: usize = parts.iter().map(|p| p.len()).sum();
        let b = ttl_bucket(expiry, now);
        let explicit_cas = if self.cfg.cas { explicit_cas } else { None };
        let hp = HeaderParts {
            klen: key.len(),
            vlen,
            flags,
            expiry,
            cas: explicit_cas,
            fetched: marks.fetched,
            meta: marks.meta,
        };
        let body = key.len() + vlen;
        // The header is encoded against the segment's expiry base, so once for the open
        // segment, and again only if the item goes to another one.
        let mut hbuf = [0u8; HEADER_MAX];
        #[inline(always)]
        fn fit(
            this: &ShardInner,
            s: u32,
            hp: &HeaderParts,
            body: usize,
            hbuf: &mut [u8; HEADER_MAX],
        ) -> Option<usize> {
            let m = &this.segs[s as usize];
            let hl = encode_header(hbuf, hp, m.exp_base);
            (m.write_off as usize + hl + body <= this.cfg.segment_bytes).then_some(hl)
        }
        let mut seg = self.ttl[b].open;
        let open_fit = if seg == NONE { None } else { fit(self, seg, &hp, body, &mut hbuf) };
        let hl = match open_fit {
            Some(hl) => hl,
            None => {
                self.ttl[b].open = NONE;
                if header_len(&hp, expiry) + body > self.cfg.segment_bytes {
                    return Err(Error::TooLarge);
                }
                let fresh = self.take_segment(now, allow_merge)?;
                // Merge eviction may have opened a segment for this bucket meanwhile (carrying
                // items forward into it): fill that one first rather than leave it half empty.
                let cur = self.ttl[b].open;
                match if cur == NONE { None } else { fit(self, cur, &hp, body, &mut hbuf) } {
                    Some(hl) => {
                        self.free.push(fresh);
                        seg = cur;
                        hl
                    }
                    None => {
                        seg = fresh;
                        self.open_segment(seg, b, expiry);
                        encode_header(&mut hbuf, &hp, expiry)
                    }
                }
            }
        };
        let s = seg as usize;
        let off = self.segs[s].write_off;
        let at = self.mem[s].write_item(off as usize, &hbuf, hl, key, parts);
        self.live_kv += (key.len() + vlen) as u64;
        let meta = &mut self.segs[s];
        meta.note_write(off, now);
        meta.write_off = at as u32;
        meta.live_items += 1;
        meta.live_bytes += (at - off as usize) as u32;
        if meta.exp_max != 0 && expiry > meta.exp_max {
            meta.exp_max = expiry;
        }
        let cas = if self.cfg.cas {
            explicit_cas.unwrap_or((meta.gen << OFF_BITS) | u64::from(off))
        } else {
            0
        };
        Ok((seg, off, cas))
    }

    fn open_segment(&mut self, seg: u32, bucket: usize, expiry: u32) {
        self.seq += 1;
        self.gen_counter += 1;
        let gen = (self.gen_counter << self.cfg.shard_bits) | u64::from(self.cfg.shard_index);
        let tail = self.ttl[bucket].tail;
        let m = &mut self.segs[seg as usize];
        *m = SegMeta {
            state: SegState::Live,
            gen,
            write_off: 0,
            live_items: 0,
            live_bytes: 0,
            exp_base: expiry,
            exp_max: expiry,
            bucket: bucket as u16,
            prev: tail,
            next: NONE,
            seq: self.seq,
            ..SegMeta::empty()
        };
        if tail == NONE {
            self.ttl[bucket].head = seg;
            self.ttl_chained[bucket / 64] |= 1 << (bucket % 64);
        } else {
            self.segs[tail as usize].next = seg;
        }
        self.ttl[bucket].tail = seg;
        self.ttl[bucket].open = seg;
    }

    /// Links a freshly appended item for `key`, replacing (and killing) any current one.
    /// `prior` is what a lookup found, just before the append or (for a plain set) just after
    /// it, the new item not being linked yet: with `Prior::Absent` the key is known not to be
    /// in the table (an append may evict or move other items, never add this key), so its
    /// record is inserted without a probe; with `Prior::At` the found record is replaced in
    /// place if it is still where it was, and is looked up again only if eviction moved it or
    /// rebuilt the table.
    #[inline(always)]
    fn link(&mut self, key: &[u8], h: u64, seg: u32, off: u32, prior: Prior) {
        let rec = Record::new(tag_of(h), seg, off);
        self.counters.sets += 1;
        match prior {
            Prior::Absent => {
                debug_assert!(self.find_other(key, h, seg, off).is_none());
                return self.insert_record(h, rec);
            }
            Prior::At(slot, old, hdr) if self.table.get(slot) == Some(old) => {
                // The same record, so the same item: its header is the one the lookup read.
                self.account_remove(old.seg(), old.off(), &hdr);
                return self.table.set(slot, rec);
            }
            Prior::At(..) => {}
        }
        match self.find_other(key, h, seg, off) {
            Some((slot, old)) => {
                let hdr = self.header_at(old.seg(), old.off());
                self.account_remove(old.seg(), old.off(), &hdr);
                self.table.set(slot, rec);
            }
            None => self.insert_record(h, rec),
        }
    }

    /// The record of `key` other than the one at (seg, off).
    fn find_other(&self, key: &[u8], h: u64, seg: u32, off: u32) -> Option<(Slot, Record)> {
        self.table.find(h, |r| {
            if r.seg() == seg && r.off() == off {
                return false;
            }
            let hdr = self.header_at(r.seg(), r.off());
            hdr.klen == key.len() && self.key_at(r.seg(), r.off(), &hdr) == key
        })
    }

    /// Inserts a record for a key not in the table, doubling the table first if it is full.
    #[inline(always)]
    fn insert_record(&mut self, h: u64, rec: Record) {
        if self.table.full() {
            self.grow_table();
        }
        self.table.insert_new(h, rec);
    }

    /// Rebuilds the table at twice the size from the records of the live segments.
    fn grow_table(&mut self) {
        let mut t = Table::with_buckets(self.table.bucket_count() * 2);
        t.succeed(&self.table);
        for s in 0..self.segs.len() as u32 {
            if self.segs[s as usize].state != SegState::Live
                || self.segs[s as usize].live_items == 0
            {
                continue;
            }
            for (off, hdr) in self.items_of(s) {
                let h = hash_key(self.key_at(s, off, &hdr));
                if let Some((_, rec)) = self.table.find_location(h, s, off) {
                    t.insert_new(h, rec);
                }
            }
        }
        debug_assert_eq!(t.len(), self.table.len());
        self.table = t;
        self.hint.publish(&self.table);
        self.counters.table_grows += 1;
    }

    /// `store` in `Mode::Set`.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub fn set(
        &mut self,
        now: u32,
        key: &[u8],
        h: u64,
        value: &[u8],
        flags: u32,
        expiry: u32,
        opts: &WriteOptions,
    ) -> Result<u64, Error> {
        let (explicit, marks) = (opts.explicit_cas(), Marks::of_write(opts));
        // A plain set stores whatever the key holds now, so the item is appended first and
        // the key looked up after: the append's work (all in the open segment, in cache)
        // then overlaps the load of the key's table bucket, prefetched before the lock was
        // taken, instead of waiting behind it. The new item is not linked yet, so the
        // lookup finds only the current one, wherever eviction during the append left it.
        // One difference from looking up first: an expired current item is still linked
        // during the append, so if its segment is the one evicted it is reclaimed there
        // (counted as an expiration all the same, see `evict`), and under merge eviction
        // it still counts in its segment's live bytes when the victim is chosen.
        if item_size(key.len(), value.len()) > self.cfg.item_max {
            return Err(Error::TooLarge);
        }
        let (seg, off, cas) =
            self.append_item(now, key, &[value], flags, expiry, explicit, true, marks)?;
        let prior = self.lookup(key, h, now).as_ref().map_or(Prior::Absent, Prior::of);
        self.link(key, h, seg, off, prior);
        Ok(cas)
    }

    /// A storage command (the commit of a reservation). Every mode but `Mode::Set` looks the
    /// key up first, since whether and what is written depends on what it holds; a plain set
    /// is `set` (which the C entry point calls directly, inlined).
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    pub fn store(
        &mut self,
        now: u32,
        key: &[u8],
        h: u64,
        value: &[u8],
        flags: u32,
        expiry: u32,
        mode: Mode,
        cas_in: u64,
        opts: &WriteOptions,
    ) -> Result<u64, Error> {
        if mode == Mode::Set {
            return self.set(now, key, h, value, flags, expiry, opts);
        }
        let (explicit, mut marks) = (opts.explicit_cas(), Marks::of_write(opts));
        let existing = self.lookup(key, h, now);
        let prior = existing.as_ref().map_or(Prior::Absent, Prior::of);
        let (seg, off, cas) = match mode {
            Mode::Set | Mode::Add | Mode::Replace | Mode::Cas => {
                let mut expiry = expiry;
                match (mode, &existing) {
                    (Mode::Add, Some(_)) | (Mode::Replace, None) => return Err(Error::NotStored),
                    (Mode::Cas, None) => return Err(Error::NotFound),
                    (Mode::Cas, Some(f)) if !self.cfg.cas || f.cas != cas_in => {
                        // memcached's ms I: a CAS older than the item's still stores, marked
                        // stale, keeping the item's expiry and its win token.
                        if !(self.cfg.cas && opts.stale_if_older && cas_in != 0 && cas_in < f.cas) {
                            return Err(Error::Exists);
                        }
                        expiry = f.hdr.expiry;
                        marks.meta |= META_STALE | (f.hdr.meta & META_WIN_SENT);
                    }
                    _ => {}
                }
                if item_size(key.len(), value.len()) > self.cfg.item_max {
                    return Err(Error::TooLarge);
                }
                self.append_item(now, key, &[value], flags, expiry, explicit, true, marks)?
            }
            Mode::Append | Mode::Prepend => {
                let Some(f) = existing else { return Err(Error::NotStored) };
                if opts.append_checks_cas && cas_in != 0 && f.cas != cas_in {
                    return Err(Error::Exists);
                }
                // memcached builds a new item from the old one's key: no marks carried.
                marks = Marks::default();
                let old = self.value_copy(&f);
                let (flags, expiry) = (f.hdr.flags, f.hdr.expiry);
                if item_size(key.len(), old.len() + value.len()) > self.cfg.item_max {
                    return Err(Error::TooLarge);
                }
                let parts: [&[u8]; 2] =
                    if mode == Mode::Append { [&old, value] } else { [value, &old] };
                self.append_item(now, key, &parts, flags, expiry, explicit, true, marks)?
            }
        };
        self.link(key, h, seg, off, prior);
        Ok(cas)
    }

    pub fn delete(&mut self, key: &[u8], h: u64, now: u32) -> bool {
        match self.lookup(key, h, now) {
            Some(f) => {
                self.unlink(f.slot, h, f.rec, &f.hdr);
                self.counters.deletes += 1;
                true
            }
            None => false,
        }
    }

    /// Changes an item's expiry, keeping its value, flags and CAS.
    pub fn touch(&mut self, key: &[u8], h: u64, now: u32, expiry: u32) -> Result<(), Error> {
        let f = self.lookup(key, h, now).ok_or(Error::NotFound)?;
        self.counters.touches += 1;
        // memcached's touch reads the item as a get does: it is fetched from then on.
        if f.hdr.expiry == expiry {
            self.mark_fetched(&f);
            return Ok(());
        }
        self.move_item(now, key, h, &f, expiry, Marks { fetched: true, ..Marks::of(&f.hdr) })?;
        Ok(())
    }

    /// Rewrites a found item with a new expiry and marks, keeping value, flags and CAS (a
    /// move, not a client write). Returns where it went.
    fn move_item(
        &mut self,
        now: u32,
        key: &[u8],
        h: u64,
        f: &Found,
        expiry: u32,
        marks: Marks,
    ) -> Result<(u32, u32), Error> {
        let value = self.value_copy(f);
        let (seg, off, _) =
            self.append_item(now, key, &[&value], f.hdr.flags, expiry, Some(f.cas), true, marks)?;
        self.link(key, h, seg, off, Prior::of(f));
        self.counters.sets -= 1;
        Ok((seg, off))
    }

    /// gat: touch, then read and pin the item in the same critical section.
    pub fn get_and_touch(
        &mut self,
        key: &[u8],
        h: u64,
        now: u32,
        expiry: u32,
    ) -> Result<Option<PinnedParts>, Error> {
        match self.touch(key, h, now, expiry) {
            Ok(()) => {}
            Err(Error::NotFound) => {
                self.counters.misses += 1;
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
        // An expiry already past still returns the item once (memcached's gat -1).
        let read_at = if expiry != 0 && expiry <= now { expiry - 1 } else { now };
        Ok(self.get_pinned(key, h, read_at))
    }

    /// incr/decr with memcached's rules; returns the new value and CAS.
    pub fn delta(
        &mut self,
        key: &[u8],
        h: u64,
        now: u32,
        incr: bool,
        by: u64,
        expect_cas: u64,
    ) -> Result<(u64, u64), Error> {
        let f = self.lookup(key, h, now).ok_or(Error::NotFound)?;
        // memcached refuses an empty value first, then compares the CAS, then reads the value
        if f.hdr.vlen == 0 {
            return Err(Error::NonNumeric);
        }
        if expect_cas != 0 && f.cas != expect_cas {
            return Err(Error::Exists);
        }
        let old = self.value_copy(&f);
        let cur = parse_memcached_u64(&old).ok_or(Error::NonNumeric)?;
        let new = if incr { cur.wrapping_add(by) } else { cur.saturating_sub(by) };
        let mut text = new.to_string().into_bytes();
        // memcached rewrites a shorter number in place, padded with spaces to the old length.
        if text.len() < old.len() {
            text.resize(old.len(), b' ');
        }
        // memcached changes a number that keeps its length in place, so the item keeps its
        // marks; a longer one is a new item.
        let marks = if text.len() == old.len() { Marks::of(&f.hdr) } else { Marks::default() };
        let (seg, off, cas) =
            self.append_item(now, key, &[&text], f.hdr.flags, f.hdr.expiry, None, true, marks)?;
        self.link(key, h, seg, off, Prior::of(&f));
        Ok((new, cas))
    }

    /// Index of an item's meta byte (right after the first varint); the item must have one.
    fn meta_byte_at(&self, seg: u32, off: u32) -> usize {
        let m = &self.mem[seg as usize];
        let mut at = off as usize + 1;
        while m.read(at, 1)[0] & 0x80 != 0 {
            at += 1;
        }
        at + 1
    }

    /// memcached's mg with its per-item state, in one critical section: reads (and pins) the
    /// item, creating an empty one on a miss when `a.vivify` asks, decides whether this
    /// caller wins the token to refresh it (vivified, stale, or expiring before `a.recache`,
    /// and no token handed out yet), then applies the new expiry, the win mark and the read
    /// (fetched mark, frequency). The pinned parts describe the item as read, with the new
    /// expiry; `MetaInfo` the state from before this read. `Ok(None)` is a miss.
    pub fn meta_get(
        &mut self,
        key: &[u8],
        h: u64,
        now: u32,
        a: &MetaGet,
    ) -> Result<Option<(PinnedParts, MetaInfo)>, Error> {
        let Some(f) = self.lookup(key, h, now) else {
            self.counters.misses += 1;
            let Some(expiry) = a.vivify else { return Ok(None) };
            if item_size(key.len(), 0) > self.cfg.item_max {
                return Err(Error::TooLarge);
            }
            let meta = if a.claim_win { META_WIN_SENT } else { 0 };
            // memcached counts the creating read as a fetch
            let marks = Marks { fetched: a.bump, meta };
            let (seg, off, cas) = self.append_item(now, key, &[], 0, expiry, None, true, marks)?;
            self.link(key, h, seg, off, Prior::Absent);
            let hdr = self.header_at(seg, off);
            let info = MetaInfo {
                won: a.claim_win,
                created: true,
                written_at: now,
                item_bytes: hdr.total_len() as u32,
                ..MetaInfo::default()
            };
            return Ok(Some((self.pin_parts(seg, off, hdr, cas), info)));
        };
        self.counters.hits += 1;
        let old = f.hdr;
        let win_sent = old.meta & META_WIN_SENT != 0;
        let stale = old.meta & META_STALE != 0;
        let expiry = a.touch.unwrap_or(old.expiry);
        let r_expiry = if a.touch_before_recache { expiry } else { old.expiry };
        let recache = a.recache.is_some_and(|r| r_expiry != 0 && r_expiry < r);
        let won = a.claim_win && !win_sent && (recache || stale);
        let info = MetaInfo {
            fetched: old.fetched,
            stale,
            win_token_sent: win_sent,
            won,
            created: false,
            key_binary: old.meta & META_KEY_BINARY != 0,
            written_at: self.segs[f.rec.seg() as usize].written_at(f.rec.off()),
            item_bytes: old.total_len() as u32,
            expiry_before: old.expiry,
        };
        // Pinned where it is now: a move below leaves these bytes intact (and an expiry set
        // in the past still lets this read see the item, as memcached's does).
        let mut parts = self.pin_parts(f.rec.seg(), f.rec.off(), old, f.cas);
        parts.hdr.expiry = expiry;
        if a.touch.is_some() {
            self.counters.touches += 1;
        }
        let mut marks = Marks::of(&old);
        if won {
            marks.meta |= META_WIN_SENT;
        }
        if expiry != old.expiry || (won && old.meta == 0) {
            marks.fetched |= a.bump;
            if let Err(e) = self.move_item(now, key, h, &f, expiry, marks) {
                self.unpin_parts(&parts);
                return Err(e);
            }
            return Ok(Some((parts, info)));
        }
        if won {
            let at = self.meta_byte_at(f.rec.seg(), f.rec.off());
            self.mem[f.rec.seg() as usize].write(at, &[marks.meta]);
        }
        if a.bump {
            let freq = f.rec.freq();
            if freq < u8::MAX {
                self.table.set(f.slot, f.rec.with_freq(freq + 1));
            }
            self.mark_fetched(&f);
        }
        Ok(Some((parts, info)))
    }

    /// Pins the item at (seg, off) for a reader.
    fn pin_parts(&self, seg: u32, off: u32, hdr: ItemHeader, cas: u64) -> PinnedParts {
        pin_word::pin(&self.pins[seg as usize]);
        let m = &self.mem[seg as usize];
        let koff = off as usize + hdr.header_len;
        PinnedParts { seg, key: m.addr(koff), value: m.addr(koff + hdr.klen), hdr, cas }
    }

    /// Drops a pin taken by `pin_parts` in this critical section (the segment cannot have
    /// been retired meanwhile: it was pinned).
    fn unpin_parts(&mut self, p: &PinnedParts) {
        if let Ok(true) = pin_word::unpin(&self.pins[p.seg as usize]) {
            self.free_retired(p.seg);
        }
    }

    /// memcached's md with C and I: deletes the item, or with `d.mark_stale` keeps it marked
    /// stale (its win token taken back so the next reader wins one) with a new CAS and, when
    /// given, a new expiry. `NotFound` if absent, `Exists` if `d.cas` is given and differs.
    pub fn meta_delete(
        &mut self,
        key: &[u8],
        h: u64,
        now: u32,
        d: &MetaDelete,
    ) -> Result<(), Error> {
        let f = self.lookup(key, h, now).ok_or(Error::NotFound)?;
        if d.cas.is_some_and(|c| c != f.cas) {
            return Err(Error::Exists);
        }
        if !d.mark_stale {
            self.unlink(f.slot, h, f.rec, &f.hdr);
            self.counters.deletes += 1;
            return Ok(());
        }
        let marks =
            Marks { fetched: f.hdr.fetched, meta: (f.hdr.meta | META_STALE) & !META_WIN_SENT };
        let expiry = d.stale_expiry.unwrap_or(f.hdr.expiry);
        let value = self.value_copy(&f);
        let (seg, off, _) =
            self.append_item(now, key, &[&value], f.hdr.flags, expiry, None, true, marks)?;
        self.link(key, h, seg, off, Prior::of(&f));
        Ok(())
    }

    // --- segments ------------------------------------------------------------------------------

    /// A free segment: from the free list, newly allocated within the budget, or by eviction.
    fn take_segment(&mut self, now: u32, allow_merge: bool) -> Result<u32, Error> {
        for attempt in 0..16 {
            if let Some(s) = self.free.pop() {
                return Ok(s);
            }
            if self.segs.len() < self.cfg.max_segments {
                self.segs.push(SegMeta::empty());
                let m = self.arena.segment(self.segs.len() - 1, self.cfg.segment_bytes);
                self.mem.push(m);
                return Ok((self.segs.len() - 1) as u32);
            }
            let victim = self.pick_victim().ok_or(Error::OutOfMemory)?;
            let merge = allow_merge && attempt < 8 && self.cfg.eviction == Eviction::Merge;
            self.evict(now, victim, merge);
        }
        self.free.pop().ok_or(Error::OutOfMemory)
    }

    /// The segment to evict. FIFO: the oldest unpinned one. Merge: the sealed segment with
    /// the fewest live bytes if that is under half a segment (space held by overwritten and
    /// deleted items is reclaimed, and all its live items carried forward, before any live
    /// item has to go); otherwise the oldest, whose coldest items are then dropped.
    fn pick_victim(&self) -> Option<u32> {
        let mut oldest: Option<(u64, u32)> = None;
        let mut emptiest: Option<((u32, u64), u32)> = None;
        let half = (self.cfg.segment_bytes / 2) as u32;
        for (i, m) in self.segs.iter().enumerate() {
            if m.state != SegState::Live || pin_word::pinned(&self.pins[i]) {
                continue;
            }
            if oldest.map_or(true, |(seq, _)| m.seq < seq) {
                oldest = Some((m.seq, i as u32));
            }
            let open = self.ttl[m.bucket as usize].open == i as u32;
            if !open
                && m.live_bytes < half
                && emptiest.map_or(true, |(k, _)| (m.live_bytes, m.seq) < k)
            {
                emptiest = Some(((m.live_bytes, m.seq), i as u32));
            }
        }
        if self.cfg.eviction == Eviction::Merge {
            if let Some((_, i)) = emptiest {
                return Some(i);
            }
        }
        oldest.map(|(_, i)| i)
    }

    /// Walks the items of a segment that are still linked: (offset, header). Dead items
    /// (replaced, deleted, expired) are skipped by their header bit, without a table probe.
    fn items_of(&self, seg: u32) -> Vec<(u32, ItemHeader)> {
        let mut out = Vec::new();
        let end = self.segs[seg as usize].write_off;
        let mut off = 0;
        while off < end {
            let hdr = self.header_at(seg, off);
            if !hdr.dead {
                out.push((off, hdr));
            }
            off += hdr.total_len() as u32;
        }
        out
    }

    /// Unlinks every live item of a segment; returns how many there were.
    fn unlink_all(&mut self, seg: u32) -> u64 {
        let mut n = 0;
        if self.segs[seg as usize].live_items == 0 {
            return 0;
        }
        for (off, hdr) in self.items_of(seg) {
            let h = hash_key(self.key_at(seg, off, &hdr));
            if let Some((slot, rec)) = self.table.find_location(h, seg, off) {
                self.unlink(slot, h, rec, &hdr);
                n += 1;
            }
        }
        n
    }

    /// Takes an emptied segment out of its TTL chain and frees it, or, if pinned, retires it
    /// for the last reader to free.
    fn release_segment(&mut self, seg: u32) {
        let (b, prev, next) = {
            let m = &self.segs[seg as usize];
            (m.bucket as usize, m.prev, m.next)
        };
        if prev == NONE {
            self.ttl[b].head = next;
            if next == NONE {
                self.ttl_chained[b / 64] &= !(1 << (b % 64));
            }
        } else {
            self.segs[prev as usize].next = next;
        }
        if next == NONE {
            self.ttl[b].tail = prev;
        } else {
            self.segs[next as usize].prev = prev;
        }
        if self.ttl[b].open == seg {
            self.ttl[b].open = NONE;
        }
        if pin_word::retire(&self.pins[seg as usize]) {
            self.free_retired(seg);
        } else {
            let m = &mut self.segs[seg as usize];
            m.state = SegState::Retired;
            m.prev = NONE;
            m.next = NONE;
        }
    }

    /// Frees a retired segment whose pins are all gone.
    pub fn free_retired(&mut self, seg: u32) {
        pin_word::reset(&self.pins[seg as usize]);
        self.segs[seg as usize] = SegMeta::empty();
        self.free.push(seg);
    }

    fn evict(&mut self, now: u32, seg: u32, merge: bool) {
        // One pass over the segment finds every linked item (one table probe each); all are
        // unlinked, and with merge the survivors are copied out first.
        let mut live: Vec<(u8, u32, ItemHeader, u64, Slot)> = Vec::new();
        for (off, hdr) in self.items_of(seg) {
            let h = hash_key(self.key_at(seg, off, &hdr));
            if let Some((slot, rec)) = self.table.find_location(h, seg, off) {
                live.push((rec.freq(), off, hdr, h, slot));
            }
        }
        type Survivor = (Vec<u8>, Vec<u8>, u32, u32, u64, Marks);
        let mut survivors: Vec<Survivor> = Vec::new();
        if merge {
            // Carry live items forward, up to half a segment: all of them when they fit (the
            // segment is mostly overwritten or deleted space), else only items read since they
            // were written, the most frequently read first.
            let budget = self.cfg.segment_bytes / 2;
            let mut order: Vec<usize> = (0..live.len())
                .filter(|&i| live[i].2.expiry == 0 || live[i].2.expiry > now)
                .collect();
            let total: usize = order.iter().map(|&i| live[i].2.total_len()).sum();
            if total > budget {
                // Too many to keep: only items read since written, hottest first.
                order.retain(|&i| live[i].0 > 0);
                order.sort_by(|&a, &b| live[b].0.cmp(&live[a].0));
            }
            let mut kept = 0;
            for i in order {
                let (_, off, hdr, _, _) = live[i];
                if kept + hdr.total_len() > budget {
                    continue;
                }
                kept += hdr.total_len();
                let cas = self.cas_of(seg, off, &hdr);
                survivors.push((
                    self.key_at(seg, off, &hdr).to_vec(),
                    self.value_at(seg, off, &hdr).to_vec(),
                    hdr.flags,
                    hdr.expiry,
                    cas,
                    Marks::of(&hdr),
                ));
            }
        }
        let n = live.len() as u64;
        let expired = live.iter().filter(|l| l.2.expiry != 0 && l.2.expiry <= now).count() as u64;
        for (_, off, hdr, h, slot) in live {
            self.unlink(slot, h, Record::new(0, seg, off), &hdr);
        }
        self.release_segment(seg);
        self.counters.evictions += 1;
        let mut merged = 0;
        for (key, value, flags, expiry, cas, marks) in survivors {
            let h = hash_key(&key);
            if let Ok((s, off, _)) =
                self.append_item(now, &key, &[&value], flags, expiry, Some(cas), false, marks)
            {
                self.insert_record(h, Record::new(tag_of(h), s, off));
                merged += 1;
            }
        }
        // Items already past their expiry were not lost to eviction: they count as
        // expirations, as if the per-second sweep or a lookup had reclaimed them first.
        self.counters.evicted_items += n - merged - expired;
        self.counters.expirations += expired;
        self.counters.merged_items += merged;
    }

    /// Per-second housekeeping: frees segments whose items have all expired. Only the head
    /// of each TTL chain is looked at (segments are chained in creation order). Every
    /// operation calls this; all but the first of each second return at the check, inlined.
    #[inline(always)]
    pub fn expire(&mut self, now: u32) {
        if now != self.last_tick {
            self.expire_tick(now);
        }
    }

    /// The sweep of [`ShardInner::expire`], once per second.
    #[inline(never)]
    fn expire_tick(&mut self, now: u32) {
        self.last_tick = now;
        for w in 0..TTL_WORDS {
            let mut bits = self.ttl_chained[w];
            if w == 0 {
                bits &= !1; // bucket 0 never expires
            }
            while bits != 0 {
                let b = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                self.expire_chain(b, now);
            }
        }
    }

    /// Frees the expired segments at the head of TTL bucket `b`'s chain.
    fn expire_chain(&mut self, b: usize, now: u32) {
        loop {
            let head = self.ttl[b].head;
            if head == NONE {
                break;
            }
            let m = &self.segs[head as usize];
            if m.exp_max == 0 || m.exp_max > now {
                break;
            }
            let n = self.unlink_all(head);
            self.counters.expirations += n;
            self.counters.expired_segments += 1;
            self.release_segment(head);
        }
    }

    /// Drops every item (flush_all).
    pub fn flush(&mut self) {
        self.table.clear();
        self.live_kv = 0;
        for s in 0..self.segs.len() {
            if self.segs[s].state == SegState::Live {
                let m = &mut self.segs[s];
                m.live_items = 0;
                m.live_bytes = 0;
                self.release_segment(s as u32);
            }
        }
        self.counters.flushes += 1;
    }

    pub fn gauges(&self) -> Gauges {
        let mut g = Gauges {
            items: self.table.len() as u64,
            item_bytes: 0,
            key_value_bytes: self.live_kv,
            segment_bytes_allocated: (self.mem.len() * self.cfg.segment_bytes) as u64,
            hash_bytes: self.table.bytes() as u64,
            meta_bytes: (self.segs.capacity() * std::mem::size_of::<SegMeta>()
                + self.ttl.len() * std::mem::size_of::<TtlBucket>()
                + self.free.capacity() * 4
                + self.cfg.max_segments * 4) as u64,
            segments_used: 0,
            segments_free: (self.cfg.max_segments - self.segs.len() + self.free.len()) as u64,
            segments_retired: 0,
        };
        for m in &self.segs {
            match m.state {
                SegState::Live => {
                    g.segments_used += 1;
                    g.item_bytes += u64::from(m.live_bytes);
                }
                SegState::Retired => g.segments_retired += 1,
                SegState::Free => {}
            }
        }
        g
    }
}

/// Parses a stored value the way memcached's `safe_strtoull` does on item data (which is
/// followed by "\r\n"): optional leading whitespace, an optional sign, decimal digits; the
/// number must be followed by whitespace, a NUL or the end of the value. With no digits at
/// all the value is not a number (strtoull converts nothing; memcached 1.6.18 answers
/// "non-numeric" for " ", " x" and "\nx", checked against the live server). Out-of-range numbers,
/// and negative ones (a '-' anywhere when the result has the top bit set), are rejected.
pub(crate) fn parse_memcached_u64(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    let is_space = |c: u8| matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    let at = |i: usize| v.get(i).copied().unwrap_or(b'\r');
    let mut i = 0;
    while i < v.len() && is_space(v[i]) {
        i += 1;
    }
    let mut neg = false;
    if i < v.len() && (v[i] == b'+' || v[i] == b'-') {
        neg = v[i] == b'-';
        i += 1;
    }
    let start = i;
    let mut n: u64 = 0;
    while i < v.len() && v[i].is_ascii_digit() {
        n = n.checked_mul(10)?.checked_add(u64::from(v[i] - b'0'))?;
        i += 1;
    }
    if i == start {
        // No conversion: strtoull leaves the end pointer at the start of the value, and
        // memcached's safe_strtoull rejects that.
        return None;
    }
    let c = at(i);
    if !(is_space(c) || c == 0) {
        return None;
    }
    let n = if neg { n.wrapping_neg() } else { n };
    if (n as i64) < 0 {
        let upto = v.iter().position(|&c| c == 0).unwrap_or(v.len());
        if v[..upto].contains(&b'-') {
            return None;
        }
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What lookups read of a segment's metadata is on its first cache line; what appends and
    /// removals write starts on the second.
    #[test]
    fn seg_meta_lines() {
        use std::mem::{align_of, offset_of, size_of};
        assert_eq!(align_of::<SegMeta>(), 64);
        assert!(offset_of!(SegMeta, gen) + 8 <= 64 && offset_of!(SegMeta, exp_base) + 4 <= 64);
        assert!(offset_of!(SegMeta, state) < 64);
        assert_eq!(offset_of!(SegMeta, write_off), 64);
        assert!(offset_of!(SegMeta, live_items) >= 64 && offset_of!(SegMeta, live_bytes) >= 64);
        assert_eq!(size_of::<SegMeta>(), 192);
    }

    /// The fields every operation touches lead `ShardInner`, within 48 bytes (the lock takes
    /// the first 16 of the shard's line; see `store::layout_tests`).
    #[test]
    fn hot_fields_lead() {
        use std::mem::offset_of;
        let hot = [
            offset_of!(ShardInner, last_tick),
            offset_of!(ShardInner, flush_epoch),
            offset_of!(ShardInner, seq),
            offset_of!(ShardInner, live_kv),
            offset_of!(ShardInner, counters) + offset_of!(Counters, hits),
            offset_of!(ShardInner, counters) + offset_of!(Counters, misses),
            offset_of!(ShardInner, counters) + offset_of!(Counters, sets),
        ];
        assert!(hot.iter().all(|&o| o + 8 <= 48), "hot fields at {hot:?}");
        assert!(offset_of!(ShardInner, table) >= 64);
        assert!(offset_of!(ShardInner, ticket_cursor) > offset_of!(ShardInner, gen_counter));
    }

    /// A shard of two 4 KiB segments with FIFO eviction.
    fn two_segment_shard() -> ShardInner {
        let cfg = ShardConfig {
            segment_bytes: 4096,
            max_segments: 2,
            item_max: 2048,
            cas: true,
            eviction: Eviction::Fifo,
            shard_index: 0,
            shard_bits: 0,
            prefault: false,
        };
        let pins = Arc::new(PinTable::new(2));
        ShardInner::new(cfg, 64, pins, Arc::new(BucketHint::default())).unwrap()
    }

    /// A set whose append evicts the segment holding the key's expired item: the item is
    /// reclaimed by the eviction (a plain set appends before it looks the key up) and counts
    /// as an expiration, not an eviction, as when the lookup came first; the new value is
    /// what a read finds, and the unexpired neighbour is counted as evicted.
    #[test]
    #[cfg_attr(miri, ignore = "the arena's mmap (MAP_NORESERVE) is not supported by Miri")]
    fn set_over_an_expired_item_in_the_evicted_segment() {
        let mut s = two_segment_shard();
        let o = WriteOptions::default();
        let v = vec![7u8; 1500];
        let now = 1000;
        let set = |s: &mut ShardInner, k: &[u8], v: &[u8], e: u32, now: u32| {
            s.store(now, k, hash_key(k), v, 0, e, Mode::Set, 0, &o)
        };
        // Segment 0: K (expires at now + 2) and J (now + 5); segment 1: A and B, no expiry.
        set(&mut s, b"K", &v, now + 2, now).unwrap();
        set(&mut s, b"J", &v, now + 5, now).unwrap();
        set(&mut s, b"A", &v, 0, now).unwrap();
        set(&mut s, b"B", &v, 0, now).unwrap();
        let later = now + 3;
        s.expire(later);
        assert_eq!(s.counters.evictions, 0);
        // No room in segment 1 and no free segment: segment 0 is evicted for this write.
        set(&mut s, b"K", &[9u8; 1500], 0, later).unwrap();
        assert_eq!(s.counters.evictions, 1);
        assert_eq!(s.counters.expirations, 1, "K had expired");
        assert_eq!(s.counters.evicted_items, 1, "J had not");
        let mut buf = [0u8; 2048];
        let (hdr, _, copied) = s.get_copy(b"K", hash_key(b"K"), later, &mut buf).unwrap();
        assert!(copied && hdr.vlen == 1500 && buf[..1500].iter().all(|&b| b == 9));
        assert!(s.get_copy(b"J", hash_key(b"J"), later, &mut buf).is_none());
        assert_eq!(s.live_kv, 3 * (1 + 1500));
    }

    #[test]
    fn parse_follows_memcached_strtoull() {
        assert_eq!(parse_memcached_u64(b"12"), Some(12));
        assert_eq!(parse_memcached_u64(b" 12"), Some(12));
        assert_eq!(parse_memcached_u64(b"12 "), Some(12));
        assert_eq!(parse_memcached_u64(b"12 abc"), Some(12));
        assert_eq!(parse_memcached_u64(b"+5"), Some(5));
        assert_eq!(parse_memcached_u64(b"-0"), Some(0));
        assert_eq!(parse_memcached_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_memcached_u64(b" "), None);
        assert_eq!(parse_memcached_u64(b" x"), None);
        assert_eq!(parse_memcached_u64(b"\nx"), None);
        assert_eq!(parse_memcached_u64(b""), None);
        assert_eq!(parse_memcached_u64(b"12a"), None);
        assert_eq!(parse_memcached_u64(b"abc"), None);
        assert_eq!(parse_memcached_u64(b"-1"), None);
        assert_eq!(parse_memcached_u64(b"18446744073709551616"), None);
        assert_eq!(parse_memcached_u64(b"123456789012345678901"), None);
    }

    #[test]
    fn ttl_buckets_are_in_range_and_ordered() {
        let now = 1000;
        assert_eq!(ttl_bucket(0, now), 0);
        let mut last = 0;
        for rel in [
            1u32,
            7,
            8,
            2047,
            2048,
            32767,
            32768,
            524_287,
            524_288,
            8_388_607,
            8_388_608,
            u32::MAX - now,
        ] {
            let b = ttl_bucket(now + rel, now);
            assert!(b >= last && b < TTL_BUCKETS, "rel {rel} -> {b}");
            last = b;
        }
    }
}
