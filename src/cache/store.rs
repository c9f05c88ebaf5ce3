//! The cache handle: shards, the clock, flush_all, and the two-phase write and pinned read.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use super::shard_lock::{ShardLock, WriteGuard};
use crossbeam_utils::CachePadded;

use super::clock::Clock;
use super::item::ItemHeader;
use super::item::KEY_MAX;
use super::memory::pinned_slice;
use super::shard::{item_size, PinTable, PinnedParts, ShardConfig, ShardInner, SharedGet, RETIRED};
use super::table::{hash_key, BucketHint};
use super::{
    Config, Error, MetaDelete, MetaGet, MetaInfo, Mode, Stats, WriteOptions, SEGMENT_BYTES_MAX,
    SEGMENT_BYTES_MIN,
};

/// Most shards a cache may have.
const SHARDS_MAX: usize = 256;

/// The lock comes first: the writers' flag and queue then share a cache line with the fields
/// every write changes (see `ShardInner`), the shard being cache-line aligned (`CachePadded`).
#[repr(C)]
struct Shard {
    inner: ShardLock<ShardInner>,
    pins: Arc<PinTable>,
    tickets: TicketTable,
    reserved: Arc<ReserveBudget>,
    /// Where the shard's table buckets are, read without the lock (see [`BucketHint`]).
    hint: Arc<BucketHint>,
}

/// The bytes a shard's open reservations may hold (their value buffers live outside the
/// segments). A reservation takes its share at reserve time and gives it back when it is
/// committed or dropped; shared with the reservations, which may outlive the cache.
///
/// Large writes may fill `limit`; a further `limit / 8` is kept for small ones (at most
/// `limit / 128` bytes each), so writers stalled in the middle of large values never make a
/// small `set` fail (memcached, whose small items come from their own slab class, stores it).
struct ReserveBudget {
    used: AtomicUsize,
    limit: usize,
}

impl ReserveBudget {
    fn new(limit: usize) -> ReserveBudget {
        ReserveBudget { used: AtomicUsize::new(0), limit }
    }

    /// The most bytes open reservations may hold, small ones included.
    fn ceiling(&self) -> usize {
        self.limit + self.limit / 8
    }

    /// Takes `n` bytes, or `false` (nothing taken) when they would pass the limit for a
    /// reservation of that size.
    fn take(&self, n: usize) -> bool {
        let cap = if n <= self.limit / 128 { self.ceiling() } else { self.limit };
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|&t| t <= cap)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// Slots per ticket chunk, and chunks per shard: at most 4,194,304 tickets of one shard are
/// held at once. Chunks are allocated on first need and never freed before the cache.
const TICKET_CHUNK: usize = 4096;
const TICKET_CHUNKS: usize = 1024;
const TICKET_WORDS: usize = TICKET_CHUNK / 64;
/// A slot word: generation in the high 32 bits, then the live bit, then the segment.
const TICKET_LIVE: u64 = 1 << 31;
const TICKET_SEGMENT: u64 = TICKET_LIVE - 1;

/// One chunk of ticket slots and its free bitmap (a set bit is a slot that may be issued).
struct TicketChunk {
    slots: Box<[AtomicU64]>,
    free: Box<[AtomicU64]>,
}

impl TicketChunk {
    fn new() -> TicketChunk {
        TicketChunk {
            slots: (0..TICKET_CHUNK).map(|_| AtomicU64::new(0)).collect(),
            free: (0..TICKET_WORDS).map(|_| AtomicU64::new(u64::MAX)).collect(),
        }
    }
}

/// The pin tickets of one shard. Tickets are issued under the shard lock (the issuer is the
/// only one that claims free slots) and consumed without it: a release is one compare-and-swap
/// on the slot word, which also advances the slot's generation, so of any number of copies of
/// a ticket exactly one release succeeds and every other one (earlier-generation copies
/// included) is refused without touching a pin. A consumed slot is handed back through its
/// bit in the free bitmap.
pub(crate) struct TicketTable {
    chunks: Box<[OnceLock<TicketChunk>]>,
    /// Chunks allocated (only the issuer, under the shard lock, raises it).
    ready: AtomicUsize,
    /// One past the highest slot ever issued: a slot at or above it was never issued.
    issued: AtomicU32,
}

/// Where a shard's issuer looks first for a free slot (kept under the shard lock; holding
/// `&mut` to it is what makes the caller the only issuer).
#[derive(Debug, Default)]
pub(crate) struct TicketCursor {
    word: usize,
}

impl TicketTable {
    fn new() -> TicketTable {
        TicketTable {
            chunks: (0..TICKET_CHUNKS).map(|_| OnceLock::new()).collect(),
            ready: AtomicUsize::new(0),
            issued: AtomicU32::new(0),
        }
    }

    fn chunk(&self, i: usize) -> Option<&TicketChunk> {
        self.chunks.get(i).and_then(OnceLock::get)
    }

    /// Claims a free slot (lowest set bit from the cursor on, else a new chunk).
    fn claim(&self, cursor: &mut TicketCursor) -> Option<u32> {
        let words = self.ready.load(Ordering::Acquire) * TICKET_WORDS;
        for k in 0..words {
            let w = (cursor.word + k) % words;
            let Some(c) = self.chunk(w / TICKET_WORDS) else { continue };
            let bits = &c.free[w % TICKET_WORDS];
            let v = bits.load(Ordering::Acquire);
            if v != 0 {
                let b = v.trailing_zeros();
                // Only the issuer clears bits, so the bit seen set is still set.
                bits.fetch_and(!(1u64 << b), Ordering::AcqRel);
                cursor.word = w;
                return Some((w * 64) as u32 + b);
            }
        }
        let n = self.ready.load(Ordering::Acquire);
        if n == TICKET_CHUNKS {
            return None;
        }
        let c = self.chunks[n].get_or_init(TicketChunk::new);
        c.free[0].fetch_and(!1, Ordering::AcqRel);
        self.ready.store(n + 1, Ordering::Release);
        cursor.word = n * TICKET_WORDS;
        Some((n * TICKET_CHUNK) as u32)
    }

    fn slot(&self, slot: u32) -> Option<&AtomicU64> {
        let s = slot as usize;
        self.chunk(s / TICKET_CHUNK).map(|c| &c.slots[s % TICKET_CHUNK])
    }

    /// Issues a ticket for a pin on `segment`: (slot, generation). `None` only when every
    /// slot of the shard is held.
    fn issue(&self, cursor: &mut TicketCursor, segment: u32) -> Option<(u32, u32)> {
        let slot = self.claim(cursor)?;
        let word = self.slot(slot).expect("a claimed slot is in an allocated chunk");
        let generation = (word.load(Ordering::Acquire) >> 32) as u32;
        word.store(
            (u64::from(generation) << 32) | TICKET_LIVE | (u64::from(segment) & TICKET_SEGMENT),
            Ordering::Release,
        );
        // Only the issuer raises the mark, so a plain load tells whether it must move.
        if slot >= self.issued.load(Ordering::Relaxed) {
            self.issued.store(slot + 1, Ordering::Release);
        }
        Some((slot, generation))
    }

    /// Consumes ticket (`slot`, `generation`) and returns its segment; needs no lock.
    /// `InvalidState` if that ticket was already consumed (the slot is free, or reissued under
    /// a later generation), `InvalidArgument` for a slot never issued.
    fn consume(&self, slot: u32, generation: u32) -> Result<u32, Error> {
        if slot >= self.issued.load(Ordering::Acquire) {
            return Err(Error::InvalidArgument);
        }
        let word = self.slot(slot).ok_or(Error::InvalidArgument)?;
        let cur = word.load(Ordering::Acquire);
        if cur & TICKET_LIVE == 0 || (cur >> 32) as u32 != generation {
            return Err(Error::InvalidState);
        }
        let next = u64::from(generation.wrapping_add(1)) << 32;
        word.compare_exchange(cur, next, Ordering::AcqRel, Ordering::Acquire)
            .map_err(|_| Error::InvalidState)?;
        let s = slot as usize;
        let c = self.chunk(s / TICKET_CHUNK).expect("an issued slot's chunk exists");
        c.free[(s % TICKET_CHUNK) / 64].fetch_or(1u64 << (s % 64), Ordering::Release);
        Ok((cur & TICKET_SEGMENT) as u32)
    }
}

/// A segment-structured cache. One handle may be shared by any number of threads (`Sync`);
/// every operation takes only the lock of the key's shard, for a short critical section.
pub struct Cache {
    /// Cache-line padded so that neighbouring shards' locks never share a line.
    shards: Box<[CachePadded<Shard>]>,
    shard_mask: u64,
    clock: Clock,
    cfg: Config,
    segments_per_shard: usize,
    /// Pending or last flush_all: epoch (high 32 bits) and deadline (low 32 bits).
    flush: AtomicU64,
    /// Set when a panic unwound out of a shard's critical section: that shard may be half
    /// updated, so every later operation fails with `Error::Poisoned`.
    poisoned: AtomicBool,
    /// Test hook: the next write panics inside its shard's critical section.
    panic_next_write: AtomicBool,
}

/// A locked shard. Unlocking it while a panic unwinds poisons the cache.
struct ShardGuard<'c> {
    g: WriteGuard<'c, ShardInner>,
    poisoned: &'c AtomicBool,
}

impl std::ops::Deref for ShardGuard<'_> {
    type Target = ShardInner;
    fn deref(&self) -> &ShardInner {
        &self.g
    }
}

impl std::ops::DerefMut for ShardGuard<'_> {
    fn deref_mut(&mut self) -> &mut ShardInner {
        &mut self.g
    }
}

impl Drop for ShardGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.poisoned.store(true, Ordering::Release);
        }
    }
}

/// A write in progress: the key and a value buffer being filled (two-phase write).
///
/// Created by [`Cache::reserve`], filled with [`Reservation::write`] or through
/// [`Reservation::unfilled`] + [`Reservation::advance`], then given to [`Cache::commit`];
/// dropping it cancels the write. It owns its buffer and does not borrow the cache, so it
/// may be filled on any thread, across as many network reads as the value needs.
pub struct Reservation {
    /// Key then value in its first `len` bytes (a buffer recycled per thread, see
    /// `recycle`; the bytes past `len` are not part of the write).
    buf: Vec<u8>,
    len: usize,
    klen: usize,
    filled: usize,
    flags: u32,
    expiry: u32,
    cache_id: usize,
    /// The key's hash, computed once at reserve time.
    hash: u64,
    /// The shard budget the buffer's bytes (`buf.len()`) were taken from; given back on drop.
    budget: Arc<ReserveBudget>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.give(self.buf.len());
        super::recycle::give(std::mem::take(&mut self.buf));
    }
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("key_len", &self.klen)
            .field("value_len", &self.value_len())
            .field("filled", &self.filled)
            .field("flags", &self.flags)
            .field("expiry", &self.expiry)
            .finish_non_exhaustive()
    }
}

impl Reservation {
    /// The full value length declared at reserve time.
    pub fn value_len(&self) -> usize {
        self.len - self.klen
    }

    fn key(&self) -> &[u8] {
        &self.buf[..self.klen]
    }

    fn value(&self) -> &[u8] {
        &self.buf[self.klen..self.len]
    }

    fn value_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.klen..self.len]
    }

    /// Bytes written so far.
    pub fn filled(&self) -> usize {
        self.filled
    }

    /// Appends the next piece of the value. A piece that would overrun the declared length
    /// is refused whole (`InvalidState`), with nothing written.
    pub fn write(&mut self, piece: &[u8]) -> Result<(), Error> {
        let end = self.filled.checked_add(piece.len()).ok_or(Error::InvalidState)?;
        if end > self.value_len() {
            return Err(Error::InvalidState);
        }
        let filled = self.filled;
        self.value_mut()[filled..end].copy_from_slice(piece);
        self.filled = end;
        Ok(())
    }

    /// The not-yet-written tail of the value, to receive bytes in place (e.g. `recv` into it);
    /// follow with [`Reservation::advance`].
    pub fn unfilled(&mut self) -> &mut [u8] {
        let filled = self.filled;
        &mut self.value_mut()[filled..]
    }

    /// Marks `n` more bytes of the tail as written; `InvalidState` if beyond the length.
    pub fn advance(&mut self, n: usize) -> Result<(), Error> {
        if n > self.value_len() - self.filled {
            return Err(Error::InvalidState);
        }
        self.filled += n;
        Ok(())
    }

    /// The whole value buffer (for writing in place at any offset; `advance` still decides
    /// what counts as written).
    pub fn value_buffer(&mut self) -> &mut [u8] {
        self.value_mut()
    }
}

/// A pinned item: its bytes stay intact until this is dropped, even if the item is replaced,
/// deleted, expired, flushed or its segment chosen for eviction meanwhile.
pub struct ItemRef<'c> {
    cache: &'c Cache,
    token: PinToken,
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
    flags: u32,
    cas: u64,
    expiry: u32,
}

// SAFETY: the pointed-to bytes are immutable while pinned (see memory.rs) and the pin may be
// dropped from any thread (an atomic decrement, plus the shard lock if it frees a segment).
unsafe impl Send for ItemRef<'_> {}
// SAFETY: shared access only reads the immutable bytes.
unsafe impl Sync for ItemRef<'_> {}

/// The pin held by an [`ItemRef`]: shard and segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PinToken {
    shard: u32,
    segment: u32,
}

/// The pin of an item taken apart from its [`ItemRef`] (for handing it through a C ABI),
/// released with [`Cache::release_ticket`]. A ticket may be copied freely: the first
/// release of any copy consumes it, and every later release of a copy gets
/// `Error::InvalidState` and touches no pin (a slot's generation is 32 bits, so a stale copy
/// is told apart unless its slot was reissued exactly 2^32 times meanwhile).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinTicket {
    /// Shard index.
    pub shard: u32,
    /// Ticket slot within the shard.
    pub slot: u32,
    /// Generation of the slot when the ticket was issued.
    pub generation: u32,
}

impl<'c> ItemRef<'c> {
    /// The key.
    pub fn key(&self) -> &[u8] {
        // SAFETY: `key` points into a segment this ItemRef pins, to `key_len` written bytes.
        unsafe { pinned_slice(self.key, self.key_len) }
    }
    /// The value.
    pub fn value(&self) -> &[u8] {
        // SAFETY: as for `key`.
        unsafe { pinned_slice(self.value, self.value_len) }
    }
    /// Address of the first value byte (valid while pinned).
    pub fn value_ptr(&self) -> *const u8 {
        self.value
    }
    /// Address of the first key byte (valid while pinned).
    pub fn key_ptr(&self) -> *const u8 {
        self.key
    }
    /// Client flags.
    pub fn flags(&self) -> u32 {
        self.flags
    }
    /// CAS unique (0 when CAS is disabled).
    pub fn cas(&self) -> u64 {
        self.cas
    }
    /// Absolute expiry on the cache clock (0 = never).
    pub fn expiry(&self) -> u32 {
        self.expiry
    }
    /// Gives up the RAII guard and returns the pin as a ticket, to be released with
    /// [`Cache::release_ticket`]. `OutOfMemory` (the pin released) only if 4,194,304 tickets of the
    /// shard are held at once.
    pub fn into_ticket(self) -> Result<PinTicket, Error> {
        let t = self.token;
        let shard = &self.cache.shards[t.shard as usize];
        let issued = shard.tickets.issue(&mut shard.inner.write().ticket_cursor, t.segment);
        let (slot, generation) = issued.ok_or(Error::OutOfMemory)?;
        std::mem::forget(self);
        Ok(PinTicket { shard: t.shard, slot, generation })
    }
}

/// A pinned item whose pin is held by a ticket from the start (what [`Cache::get_ticketed`]
/// returns): the same as an [`ItemRef`] followed by [`ItemRef::into_ticket`], in one shard
/// critical section. The bytes behind `key` and `value` stay intact until the ticket is
/// released with [`Cache::release_ticket`]; nothing releases it otherwise.
#[derive(Debug, Clone, Copy)]
pub struct TicketedItem {
    /// Address of the first key byte (valid until the ticket is released).
    pub key: *const u8,
    /// Key length.
    pub key_len: usize,
    /// Address of the first value byte (valid until the ticket is released).
    pub value: *const u8,
    /// Value length.
    pub value_len: usize,
    /// Client flags.
    pub flags: u32,
    /// CAS unique (0 when CAS is disabled).
    pub cas: u64,
    /// Absolute expiry on the cache clock (0 = never).
    pub expiry: u32,
    /// The pin.
    pub ticket: PinTicket,
}

/// What [`Cache::get_copy`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopiedItem {
    /// Value length (the bytes copied, or needed when `copied` is false).
    pub value_len: usize,
    /// Client flags.
    pub flags: u32,
    /// CAS unique (0 when CAS is disabled).
    pub cas: u64,
    /// Absolute expiry on the cache clock (0 = never).
    pub expiry: u32,
    /// Whether the value was copied (false: the buffer was shorter than `value_len`).
    pub copied: bool,
}

impl Drop for ItemRef<'_> {
    fn drop(&mut self) {
        // The pin was taken by this ItemRef, so it is held.
        let _ = self.cache.unpin(self.token);
    }
}

impl std::fmt::Debug for ItemRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ItemRef")
            .field("key", &String::from_utf8_lossy(self.key()))
            .field("value_len", &self.value_len)
            .field("flags", &self.flags)
            .field("cas", &self.cas)
            .finish()
    }
}

fn check_key(key: &[u8]) -> Result<(), Error> {
    if key.is_empty() || key.len() > KEY_MAX {
        Err(Error::InvalidArgument)
    } else {
        Ok(())
    }
}

impl Config {
    /// Checks the configuration as `Cache::new` does, saying what is wrong (`Cache::new`
    /// answers only `InvalidArgument`).
    pub fn check(&self) -> Result<(), String> {
        self.layout().map(|_| ())
    }

    /// Shard count and segments per shard, or what is wrong with the configuration.
    fn layout(&self) -> Result<(usize, usize), String> {
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return Err(format!(
                "segment_bytes must be in {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX}"
            ));
        }
        if self.heap_bytes < self.segment_bytes {
            return Err("heap_bytes must hold at least one segment (segment_bytes)".into());
        }
        if self.item_max > self.segment_bytes {
            return Err("item_max must not exceed segment_bytes".into());
        }
        if self.item_max < item_size(KEY_MAX, 0) {
            return Err(format!(
                "item_max must be at least {} (a {KEY_MAX}-byte key and its header)",
                item_size(KEY_MAX, 0)
            ));
        }
        if self.shards > SHARDS_MAX || (self.shards != 0 && !self.shards.is_power_of_two()) {
            return Err(format!(
                "shards must be 0 (automatic) or a power of two up to {SHARDS_MAX}"
            ));
        }
        let total_segments = self.heap_bytes / self.segment_bytes;
        let nshards = if self.shards != 0 {
            self.shards.min(total_segments.max(1))
        } else {
            // Twice the cores (so two threads rarely meet on a lock), at most 16 (each shard
            // keeps a partly filled segment per TTL in use, which costs memory), and at least
            // 8 segments per shard.
            let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
            let mut n = (2 * cores).next_power_of_two().min(16);
            while n > 1 && total_segments / n < 8 {
                n /= 2;
            }
            n
        };
        if !nshards.is_power_of_two() || total_segments < nshards {
            return Err("heap_bytes must hold at least one segment per shard".into());
        }
        let per_shard = total_segments / nshards;
        // Segment ids are 22 bits.
        if per_shard >= (1 << 22) {
            return Err("heap_bytes / segment_bytes must stay below 2^22 segments per shard".into());
        }
        Ok((nshards, per_shard))
    }
}

impl Cache {
    /// Longest key in bytes (memcached's limit).
    pub const KEY_MAX: usize = KEY_MAX;
    /// Largest item header; `item_max` counts key + value + this.
    pub const HEADER_MAX: usize = super::item::HEADER_MAX;
    /// Largest segment size (item offsets are 22 bits).
    pub const SEGMENT_BYTES_MAX: usize = SEGMENT_BYTES_MAX;
    /// Smallest segment size.
    pub const SEGMENT_BYTES_MIN: usize = SEGMENT_BYTES_MIN;
    /// memcached's largest relative exptime (30 days).
    pub const EXPTIME_RELATIVE_MAX: i64 = super::clock::EXPTIME_RELATIVE_MAX;

    /// Creates a cache. The segment budget is reserved as address space (no memory is used
    /// until segments are written) or, with `Config::prefault`, backed with memory now;
    /// `OutOfMemory` if that fails.
    pub fn new(cfg: Config) -> Result<Cache, Error> {
        let (nshards, per_shard) = cfg.layout().map_err(|_| Error::InvalidArgument)?;
        let expected =
            if cfg.expected_items != 0 { cfg.expected_items } else { cfg.heap_bytes / 128 };
        let shard_bits = nshards.trailing_zeros();
        // Each shard may hold an equal part of the allowance in open reservations, and at
        // least one largest item (else such an item could never be written).
        let allowance =
            if cfg.reservation_bytes != 0 { cfg.reservation_bytes } else { cfg.heap_bytes / 4 };
        let reserve_limit = (allowance / nshards).max(cfg.item_max);
        let mut shards = Vec::with_capacity(nshards);
        for i in 0..nshards {
            let pins = Arc::new(PinTable::new(per_shard));
            let sc = ShardConfig {
                segment_bytes: cfg.segment_bytes,
                max_segments: per_shard,
                item_max: cfg.item_max,
                cas: cfg.cas,
                eviction: cfg.eviction,
                shard_index: i as u32,
                shard_bits,
                prefault: cfg.prefault,
            };
            let hint = Arc::new(BucketHint::default());
            let inner = ShardInner::new(sc, expected.div_ceil(nshards), pins.clone(), hint.clone())
                .map_err(|_| Error::OutOfMemory)?;
            shards.push(CachePadded::new(Shard {
                inner: ShardLock::new(inner),
                pins,
                tickets: TicketTable::new(),
                hint,
                reserved: Arc::new(ReserveBudget::new(reserve_limit)),
            }));
        }
        let shards = shards.into_boxed_slice();
        Ok(Cache {
            shards,
            shard_mask: (nshards - 1) as u64,
            clock: Clock::new(cfg.clock),
            segments_per_shard: per_shard,
            flush: AtomicU64::new(0),
            poisoned: AtomicBool::new(false),
            panic_next_write: AtomicBool::new(false),
            cfg,
        })
    }

    /// The configuration the cache runs with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The cache clock now, in unix seconds.
    pub fn now(&self) -> u32 {
        self.clock.now()
    }

    /// Sets a manual clock (`ClockKind::Manual`); `InvalidState` on the system clock.
    pub fn set_time(&self, unix_seconds: u32) -> Result<(), Error> {
        if self.clock.set(unix_seconds) {
            Ok(())
        } else {
            Err(Error::InvalidState)
        }
    }

    /// Converts a memcached exptime on this cache's clock (see [`super::expiry_from_exptime`]).
    pub fn expiry_from_exptime(&self, exptime: i64) -> u32 {
        super::expiry_from_exptime(exptime, self.now())
    }

    fn id(&self) -> usize {
        self as *const Cache as usize
    }

    #[inline]
    fn shard_index(&self, h: u64) -> usize {
        ((h >> 32) & self.shard_mask) as usize
    }

    /// The hash of `key`, with its home bucket prefetched: issued before the caller reads the
    /// clock and takes the shard lock, the bucket's cache miss overlaps both.
    #[inline(always)]
    fn hashed(&self, key: &[u8]) -> u64 {
        let h = hash_key(key);
        self.shards[self.shard_index(h)].hint.prefetch(h);
        h
    }

    /// `Poisoned` once a panic has unwound out of a shard's critical section (see
    /// [`Error::Poisoned`]); `Ok` otherwise.
    #[inline]
    pub fn check(&self) -> Result<(), Error> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(Error::Poisoned);
        }
        Ok(())
    }

    /// Locks shard `i`; a panic before the guard is dropped poisons the cache.
    #[inline]
    fn lock_shard(&self, i: usize) -> ShardGuard<'_> {
        ShardGuard { g: self.shards[i].inner.write(), poisoned: &self.poisoned }
    }

    /// Locks the shard of hash `h`, applying a due flush_all and eager expiry first;
    /// `Poisoned` (nothing locked) if the cache is.
    #[inline(always)]
    fn shard_for(&self, h: u64, now: u32) -> Result<(usize, ShardGuard<'_>), Error> {
        self.check()?;
        let i = self.shard_index(h);
        let mut g = self.lock_shard(i);
        self.housekeep(&mut g, now);
        Ok((i, g))
    }

    /// Test hook: makes the next write (set, add, ..., commit) panic while it holds its
    /// shard's lock, as a bug in the store would. Not for production use.
    #[doc(hidden)]
    pub fn inject_panic_in_next_write(&self) {
        self.panic_next_write.store(true, Ordering::Release);
    }

    /// Applies a due flush_all and the per-second expiry sweep to a locked shard. Inlined
    /// into every operation: on all but the rare calls that have work to do, it is a load
    /// and two compares.
    #[inline(always)]
    fn housekeep(&self, g: &mut ShardInner, now: u32) {
        if let Some(epoch) = self.due_flush(g.flush_epoch, now) {
            Self::apply_flush(g, epoch);
        }
        g.expire(now);
    }

    /// The epoch of a flush_all that is due at `now` on a shard that last applied
    /// `applied`, if there is one.
    #[inline(always)]
    fn due_flush(&self, applied: u32, now: u32) -> Option<u32> {
        let f = self.flush.load(Ordering::Acquire);
        let (epoch, deadline) = ((f >> 32) as u32, f as u32);
        (epoch != applied && now >= deadline).then_some(epoch)
    }

    #[cold]
    #[inline(never)]
    fn apply_flush(g: &mut ShardInner, epoch: u32) {
        g.flush();
        g.flush_epoch = epoch;
    }

    /// Starts a write of `key` with a value of `value_len` bytes. `expiry` is absolute on the
    /// cache clock (0 = never). Fails with `InvalidArgument` for a key of 0 or more than 250
    /// bytes, `TooLarge` when key + value + 23 header bytes exceed `item_max`, and
    /// `OutOfMemory` when the key's shard already holds its share of the reservation
    /// allowance (`Config::reservation_bytes`) in open reservations: until some of them are
    /// committed or dropped, the value has nowhere to go.
    pub fn reserve(
        &self,
        key: &[u8],
        value_len: usize,
        flags: u32,
        expiry: u32,
    ) -> Result<Reservation, Error> {
        self.check()?;
        check_key(key)?;
        if item_size(key.len(), value_len) > self.cfg.item_max {
            return Err(Error::TooLarge);
        }
        let len = key.len() + value_len;
        let hash = hash_key(key);
        let budget = &self.shards[self.shard_index(hash)].reserved;
        // The buffer's whole length counts, a recycled class buffer's included.
        if !budget.take(super::recycle::buffer_len(len)) {
            return Err(Error::OutOfMemory);
        }
        let budget = budget.clone();
        let mut buf = super::recycle::take(len);
        buf[..key.len()].copy_from_slice(key);
        Ok(Reservation {
            buf,
            len,
            klen: key.len(),
            filled: 0,
            flags,
            expiry,
            cache_id: self.id(),
            hash,
            budget,
        })
    }

    /// Bytes held by open reservations now (key and value buffers), summed over shards.
    pub fn reserved_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.reserved.used.load(Ordering::Relaxed) as u64).sum()
    }

    /// Completes a write with `mode`'s semantics and returns the item's new CAS (0 when CAS
    /// is disabled). Consumes the reservation whatever the outcome. `cas_in` is used by
    /// `Mode::Cas` only. A reservation not completely filled gives `InvalidState`; one from
    /// another cache `InvalidArgument`.
    pub fn commit(&self, res: Reservation, mode: Mode, cas_in: u64) -> Result<u64, Error> {
        self.commit_with(res, mode, cas_in, &WriteOptions::default())
    }

    /// [`Cache::commit`] with the meta-protocol options of `opts` (base64-key mark, explicit
    /// CAS, stale-if-older CAS, CAS-checked append/prepend).
    pub fn commit_with(
        &self,
        res: Reservation,
        mode: Mode,
        cas_in: u64,
        opts: &WriteOptions,
    ) -> Result<u64, Error> {
        if res.cache_id != self.id() {
            return Err(Error::InvalidArgument);
        }
        if res.filled != res.value_len() {
            return Err(Error::InvalidState);
        }
        // Checked at reserve time: the key is valid and the item within item_max.
        let (key, value) = (res.key(), res.value());
        self.shards[self.shard_index(res.hash)].hint.prefetch(res.hash);
        self.store_hashed(key, res.hash, value, res.flags, res.expiry, mode, cas_in, opts)
    }

    /// One-call write (reserve, fill and commit in one): returns the new CAS. Takes nothing
    /// from the reservation allowance (the value is the caller's).
    #[inline(always)]
    pub fn store(
        &self,
        key: &[u8],
        value: &[u8],
        flags: u32,
        expiry: u32,
        mode: Mode,
        cas_in: u64,
    ) -> Result<u64, Error> {
        check_key(key)?;
        if item_size(key.len(), value.len()) > self.cfg.item_max {
            return Err(Error::TooLarge);
        }
        let opts = WriteOptions::default();
        self.store_hashed(key, self.hashed(key), value, flags, expiry, mode, cas_in, &opts)
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn store_hashed(
        &self,
        key: &[u8],
        h: u64,
        value: &[u8],
        flags: u32,
        expiry: u32,
        mode: Mode,
        cas_in: u64,
        opts: &WriteOptions,
    ) -> Result<u64, Error> {
        let now = self.now();
        let (_, mut g) = self.shard_for(h, now)?;
        if self.panic_next_write.load(Ordering::Relaxed)
            && self.panic_next_write.swap(false, Ordering::AcqRel)
        {
            panic!("injected panic in a write (test hook)");
        }
        if mode == Mode::Set {
            g.set(now, key, h, value, flags, expiry, opts)
        } else {
            g.store(now, key, h, value, flags, expiry, mode, cas_in, opts)
        }
    }

    /// Shorthand for `store(key, value, flags, expiry, Mode::Set, 0)`.
    pub fn set(&self, key: &[u8], value: &[u8], flags: u32, expiry: u32) -> Result<u64, Error> {
        self.store(key, value, flags, expiry, Mode::Set, 0)
    }

    /// The Rust handle of an item pinned in shard `shard`.
    fn item_ref(&self, shard: usize, p: PinnedParts) -> ItemRef<'_> {
        ItemRef {
            cache: self,
            token: PinToken { shard: shard as u32, segment: p.seg },
            key: p.key,
            key_len: p.hdr.klen,
            value: p.value,
            value_len: p.hdr.vlen,
            flags: p.hdr.flags,
            cas: p.cas,
            expiry: p.hdr.expiry,
        }
    }

    /// Looks up `key` and pins it. `Ok(None)` is a miss.
    pub fn get(&self, key: &[u8]) -> Result<Option<ItemRef<'_>>, Error> {
        check_key(key)?;
        let h = self.hashed(key);
        let now = self.now();
        let (i, mut g) = self.shard_for(h, now)?;
        Ok(g.get_pinned(key, h, now).map(|p| self.item_ref(i, p)))
    }

    /// Looks up `key`, pins it and issues the pin's ticket under the one shard lock (for
    /// handing the item through a C ABI). `Ok(None)` is a miss; `OutOfMemory` (nothing
    /// pinned) only if 4,194,304 tickets of the shard are held at once.
    pub fn get_ticketed(&self, key: &[u8]) -> Result<Option<TicketedItem>, Error> {
        check_key(key)?;
        let h = self.hashed(key);
        let now = self.now();
        let (i, mut g) = self.shard_for(h, now)?;
        match g.get_pinned(key, h, now) {
            Some(p) => self.ticketed(i, &mut g, p).map(Some),
            None => Ok(None),
        }
    }

    /// [`Cache::get_and_touch`] with the pin handed out as a ticket, as in
    /// [`Cache::get_ticketed`].
    pub fn get_and_touch_ticketed(
        &self,
        key: &[u8],
        expiry: u32,
    ) -> Result<Option<TicketedItem>, Error> {
        check_key(key)?;
        let h = self.hashed(key);
        let now = self.now();
        let (i, mut g) = self.shard_for(h, now)?;
        match g.get_and_touch(key, h, now, expiry)? {
            Some(p) => self.ticketed(i, &mut g, p).map(Some),
            None => Ok(None),
        }
    }

    /// Issues the ticket of pin `p` of shard `i`, whose lock `g` is held; drops the pin if no
    /// ticket can be issued.
    fn ticketed(
        &self,
        i: usize,
        g: &mut ShardInner,
        p: PinnedParts,
    ) -> Result<TicketedItem, Error> {
        let shard = &self.shards[i];
        let Some((slot, generation)) = shard.tickets.issue(&mut g.ticket_cursor, p.seg) else {
            Self::unpin_locked(shard, g, p.seg)?;
            return Err(Error::OutOfMemory);
        };
        Ok(TicketedItem {
            key: p.key,
            key_len: p.hdr.klen,
            value: p.value,
            value_len: p.hdr.vlen,
            flags: p.hdr.flags,
            cas: p.cas,
            expiry: p.hdr.expiry,
            ticket: PinTicket { shard: i as u32, slot, generation },
        })
    }

    /// Looks up `key` and copies its value into `buf`, under the shard lock, pinning nothing
    /// (for small values this is cheaper than a pin and its release). `Ok(None)` is a miss.
    /// The result says the value's length, flags, CAS and expiry, and whether it was copied:
    /// a value longer than `buf` is not copied (nor counted as a hit), so the caller can
    /// read it with a larger buffer or through [`Cache::get`].
    pub fn get_copy(&self, key: &[u8], buf: &mut [u8]) -> Result<Option<CopiedItem>, Error> {
        check_key(key)?;
        let h = self.hashed(key);
        let now = self.now();
        self.check()?;
        let item = |(hdr, cas, copied): (ItemHeader, u64, bool)| CopiedItem {
            value_len: hdr.vlen,
            flags: hdr.flags,
            cas,
            expiry: hdr.expiry,
            copied,
        };
        // First as one of the shard's readers (no line another core writes on every get); the
        // writer's side when a writer is in, or when the get must change the shard.
        if let Some(r) = self.shards[self.shard_index(h)].inner.try_read() {
            if self.due_flush(r.flush_epoch, now).is_none() {
                match r.get_copy_shared(key, h, now, buf, r.slot()) {
                    SharedGet::Found(hdr, cas, c) => return Ok(Some(item((hdr, cas, c)))),
                    SharedGet::Miss => return Ok(None),
                    SharedGet::NeedsWriter => {}
                }
            }
        }
        let (_, mut g) = self.shard_for(h, now)?;
        Ok(g.get_copy(key, h, now, buf).map(item))
    }

    /// Looks up several keys; one result per key, in order.
    pub fn get_many<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k [u8]>,
    ) -> Result<Vec<Option<ItemRef<'_>>>, Error> {
        keys.into_iter().map(|k| self.get(k)).collect()
    }

    /// Copies out the value of `key` (a convenience for callers that want owned bytes).
    pub fn get_value(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.get(key)?.map(|it| it.value().to_vec()))
    }

    /// Deletes `key`; `NotFound` if absent.
    pub fn delete(&self, key: &[u8]) -> Result<(), Error> {
        check_key(key)?;
        let h = self.hashed(key);
        let now = self.now();
        let (_, mut g) = self.shard_for(h, now)?;
        if g.delete(key, h, now) {
            Ok(())
        } else {
            Err(Error::NotFound)
        }
    }

    /// Sets a new expiry on `key`, keeping value, flags and CAS; `NotFound` if absent.
    pub fn touch(&self, key: &[u8], expiry: u32) -> Result<(), Error> {
        check_key(key)?;
        let h = self.hashed(key);
        let now = self.now();
        let (_, mut g) = self.shard_for(h, now)?;
        g.touch(key, h, now, expiry)
    }

    /// Touches `key` and returns it pinned (memcached's gat); `Ok(None)` if absent. As in
    /// memcached, an expiry already past still returns the item this once.
    pub fn get_and_touch(&self, key: &[u8], expiry: u32) -> Result<Option<ItemRef<'_>>, Error> {
        check_key(key)?;
        let h = self.hashed(key);
        let now = self.now();
        let (i, mut g) = self.shard_for(h, now)?;
        Ok(g.get_and_touch(key, h, now, expiry)?.map(|p| self.item_ref(i, p)))
    }

    /// memcached incr: adds `delta` modulo 2^64. Returns (new value, new CAS).
    pub fn incr(&self, key: &[u8], delta: u64) -> Result<(u64, u64), Error> {
        self.delta(key, true, delta, 0)
    }

    /// memcached decr: subtracts `delta`, stopping at 0. Returns (new value, new CAS).
    pub fn decr(&self, key: &[u8], delta: u64) -> Result<(u64, u64), Error> {
        self.delta(key, false, delta, 0)
    }

    /// incr (`incr` true) or decr of `key` by `delta`, only if the item's CAS is `expect_cas`
    /// when that is nonzero (else `Exists`; memcached's `ma C`). Returns (new value, new CAS).
    pub fn delta(
        &self,
        key: &[u8],
        incr: bool,
        delta: u64,
        expect_cas: u64,
    ) -> Result<(u64, u64), Error> {
        check_key(key)?;
        let h = self.hashed(key);
        let now = self.now();
        let (_, mut g) = self.shard_for(h, now)?;
        g.delta(key, h, now, incr, delta, expect_cas)
    }

    /// memcached's mg with its per-item state (see [`MetaGet`], [`MetaInfo`]): the item
    /// pinned, with the state it had before this read. `Ok(None)` is a miss (never when
    /// `a.vivify` is set). `TooLarge`/`OutOfMemory` only when vivifying or moving the item
    /// (new expiry, first win mark) finds no room.
    pub fn meta_get(
        &self,
        key: &[u8],
        a: &MetaGet,
    ) -> Result<Option<(ItemRef<'_>, MetaInfo)>, Error> {
        check_key(key)?;
        let h = self.hashed(key);
        let now = self.now();
        let (i, mut g) = self.shard_for(h, now)?;
        Ok(g.meta_get(key, h, now, a)?.map(|(p, info)| (self.item_ref(i, p), info)))
    }

    /// [`Cache::meta_get`] with the pin handed out as a ticket (see [`Cache::get_ticketed`]).
    pub fn meta_get_ticketed(
        &self,
        key: &[u8],
        a: &MetaGet,
    ) -> Result<Option<(TicketedItem, MetaInfo)>, Error> {
        check_key(key)?;
        let h = self.hashed(key);
        let now = self.now();
        let (i, mut g) = self.shard_for(h, now)?;
        match g.meta_get(key, h, now, a)? {
            Some((p, info)) => Ok(Some((self.ticketed(i, &mut g, p)?, info))),
            None => Ok(None),
        }
    }

    /// memcached's md with C and I (see [`MetaDelete`]): `NotFound` if absent, `Exists` on a
    /// CAS mismatch.
    pub fn meta_delete(&self, key: &[u8], d: &MetaDelete) -> Result<(), Error> {
        check_key(key)?;
        let h = self.hashed(key);
        let now = self.now();
        let (_, mut g) = self.shard_for(h, now)?;
        g.meta_delete(key, h, now, d)
    }

    /// memcached flush_all: every item stored before now + `delay` seconds disappears at
    /// that time (now, when `delay` is 0; a later call replaces a pending one). Fails only
    /// with `Poisoned`.
    pub fn flush_all(&self, delay: u32) -> Result<(), Error> {
        self.check()?;
        let now = self.now();
        // A pending flush that is already due takes effect before this one replaces it.
        for i in 0..self.shards.len() {
            let mut g = self.lock_shard(i);
            self.housekeep(&mut g, now);
        }
        let deadline = now.saturating_add(delay);
        let mut cur = self.flush.load(Ordering::Acquire);
        loop {
            let epoch = ((cur >> 32) as u32).wrapping_add(1).max(1);
            let next = (u64::from(epoch) << 32) | u64::from(deadline);
            match self.flush.compare_exchange(cur, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(v) => cur = v,
            }
        }
        if delay == 0 {
            for i in 0..self.shards.len() {
                let mut g = self.lock_shard(i);
                self.housekeep(&mut g, now);
            }
        }
        Ok(())
    }

    /// Drops one pin of segment `seg` of `shard`. Returns true when the segment was emptied
    /// while pinned and this was its last pin: the caller must then free it.
    fn drop_pin(shard: &Shard, seg: u32) -> Result<bool, Error> {
        let pin = shard.pins.get(seg as usize).ok_or(Error::InvalidArgument)?;
        super::pin_word::unpin(pin).map_err(|_| Error::InvalidState)
    }

    fn unpin(&self, t: PinToken) -> Result<(), Error> {
        let shard = self.shards.get(t.shard as usize).ok_or(Error::InvalidArgument)?;
        if Self::drop_pin(shard, t.segment)? {
            // Last reader of a segment emptied while pinned: free it now.
            shard.inner.write().free_retired(t.segment);
        }
        Ok(())
    }

    /// Drops one pin of segment `seg` of `shard`, whose lock `g` is held; frees the segment if
    /// it was emptied while pinned and this was its last pin.
    fn unpin_locked(shard: &Shard, g: &mut ShardInner, seg: u32) -> Result<(), Error> {
        if Self::drop_pin(shard, seg)? {
            g.free_retired(seg);
        }
        Ok(())
    }

    /// Releases a pin taken apart with [`ItemRef::into_ticket`] or [`Cache::get_ticketed`]. A
    /// ticket already released (through any copy of it) gives `InvalidState` and releases
    /// nothing; a shard or slot never issued gives `InvalidArgument`. Takes no lock (the
    /// ticket is consumed by one compare-and-swap and the pin dropped atomically), except to
    /// free a segment emptied while pinned when this was its last pin.
    pub fn release_ticket(&self, ticket: PinTicket) -> Result<(), Error> {
        let shard = self.shards.get(ticket.shard as usize).ok_or(Error::InvalidArgument)?;
        let segment = shard.tickets.consume(ticket.slot, ticket.generation)?;
        self.unpin(PinToken { shard: ticket.shard, segment })
    }

    /// Pins currently held by readers.
    pub fn pinned(&self) -> u64 {
        self.shards
            .iter()
            .flat_map(|s| s.pins.iter())
            .map(|p| u64::from(p.load(Ordering::Acquire) & !RETIRED))
            .sum()
    }

    /// Counters and gauges, summed over shards (each shard is locked in turn, briefly).
    pub fn stats(&self) -> Stats {
        let now = self.now();
        let mut st = Stats {
            shards: self.shards.len() as u64,
            segments_total: (self.shards.len() * self.segments_per_shard) as u64,
            heap_limit_bytes: (self.shards.len() * self.segments_per_shard * self.cfg.segment_bytes)
                as u64,
            ..Stats::default()
        };
        let mut meta = 0;
        for i in 0..self.shards.len() {
            let mut g = self.lock_shard(i);
            self.housekeep(&mut g, now);
            let c = g.counters;
            let ga = g.gauges();
            st.items += ga.items;
            st.item_bytes += ga.item_bytes;
            st.key_value_bytes += ga.key_value_bytes;
            st.segment_bytes_allocated += ga.segment_bytes_allocated;
            st.hash_bytes += ga.hash_bytes;
            meta += ga.meta_bytes;
            st.segments_used += ga.segments_used;
            st.segments_free += ga.segments_free;
            st.segments_retired += ga.segments_retired;
            st.hits += c.hits;
            st.misses += c.misses;
            for slot in self.shards[i].inner.slots() {
                st.hits += slot.hits.load(Ordering::Relaxed);
                st.misses += slot.misses.load(Ordering::Relaxed);
            }
            st.sets += c.sets;
            st.deletes += c.deletes;
            st.touches += c.touches;
            st.evictions += c.evictions;
            st.evicted_items += c.evicted_items;
            st.merged_items += c.merged_items;
            st.expirations += c.expirations;
            st.expired_segments += c.expired_segments;
            st.flushes += c.flushes;
            st.table_grows += c.table_grows;
        }
        st.flushes /= self.shards.len() as u64;
        st.total_bytes = st.segment_bytes_allocated
            + st.hash_bytes
            + meta
            + std::mem::size_of::<Cache>() as u64
            + (self.shards.len() * std::mem::size_of::<CachePadded<Shard>>()) as u64
            + (self.shards.len() * ShardLock::<ShardInner>::slots_bytes()) as u64;
        st.pinned = self.pinned();
        st.reserved_bytes = self.reserved_bytes();
        st
    }
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("config", &self.cfg)
            .field("shards", &self.shards.len())
            .finish()
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;

    /// A shard starts on a cache line with its lock (the writers' queue and flag, 16 bytes
    /// with the reader slots' address), and that line also holds the fields every write
    /// changes (`ShardInner`'s leading fields).
    #[test]
    fn hot_fields_share_the_lock_line() {
        let cache = Cache::new(Config { heap_bytes: 4 << 20, ..Config::default() }).unwrap();
        assert_eq!(std::mem::offset_of!(Shard, inner), 0);
        for shard in cache.shards.iter() {
            let base = &**shard as *const Shard as usize;
            assert_eq!(base % 64, 0, "shard not line-aligned");
            assert_eq!(shard.inner.data_addr() - base, 16, "the writer's lock is not in front");
            let data = 16;
            let last_hot = data
                + std::mem::offset_of!(ShardInner, counters)
                + std::mem::offset_of!(super::super::shard::Counters, sets);
            assert!(last_hot + 8 <= 64, "hot fields end at {}", last_hot + 8);
        }
    }
}
