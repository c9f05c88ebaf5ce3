//! Segment-structured cache storage (the Segcache design) with memcached 1.6 semantics.
//!
//! Items are appended, with a header of a few bytes, into fixed-size segments; a compact hash
//! table of 8-byte records (tag, read frequency, segment, offset) in 64-byte buckets finds
//! them. Segments are chained per TTL bucket, so a segment whose items have all expired is
//! dropped whole, eagerly, without scanning the table; every read also checks the item's own
//! expiry, so an expired item is never returned. When the memory budget is full, whole
//! segments are evicted (FIFO, or a merge that carries frequently read items forward).
//!
//! Concurrency: the store is split into shards by key hash, each with its own lock, hash table,
//! TTL buckets and an equal share of the segment budget. Operations on different shards never
//! touch the same lock or cache lines (statistics are per shard too), so reads scale across
//! cores. Reads can pin an item: the value bytes are handed out without copying and stay
//! intact until released, because a segment with pinned items is never reset (eviction skips
//! it; expiry, flush and deletion unlink its items and free it when the last pin goes). A pin
//! handed through the C ABI carries a ticket issued under the shard lock in the lookup's
//! critical section and consumed without the lock (one compare-and-swap that also refuses a
//! second or stale release), so a pinned read takes the lock once. Reads can also copy a value
//! out under the lock (`Cache::get_copy`), pinning nothing: cheaper for small values that the
//! caller copies anyway.
//!
//! CAS: every write of an item gets a 64-bit CAS unique in this cache, derived without
//! storing 8 bytes per item: `generation << 22 | offset`, where the generation is taken from a
//! counter each time a segment is opened for writing (never reused) and the offset is where the
//! item starts in it. Two writes never share a (generation, offset) pair, so the CAS is unique
//! per write and changes on every write. Moving an item without a client write (touch,
//! get-and-touch, merge eviction) would change the location, so a moved item stores its CAS
//! explicitly (8 bytes, for moved items only); touch thus keeps the CAS, as in memcached.
//! The generation has 42 bits less the shard bits: it would repeat only after 2^38 segment
//! openings in one shard (centuries at a gigabyte of writes per second).
//!
//! Memory: the budget is split evenly between shards, and a shard evicts only when its own
//! share is full (with uniform hashing the shares fill together). Each shard keeps one partly
//! written segment per TTL bucket in use, so a lightly filled store carries up to a segment
//! per shard of unused space; the automatic shard count (twice the CPU count, at most 16)
//! weighs that against lock contention. Per item the store spends its header (3 bytes for a
//! short key and value with flags 0 and no TTL), about 9.2 bytes of hash table, and nothing
//! for CAS; `Stats::total_bytes` counts every segment allocated, the table and metadata.

mod clock;
mod item;
mod memory;
mod pin_word;
mod recycle;
mod shard;
mod shard_lock;
mod store;
mod table;

pub use clock::{expiry_from_exptime, ClockKind};
pub use store::{Cache, CopiedItem, ItemRef, PinTicket, Reservation, TicketedItem};

// The limits are associated constants of `Cache` (`Cache::KEY_MAX`, ...); these crate-private
// names keep them out of the generated C header.
pub(crate) const SEGMENT_BYTES_MAX: usize = 1 << 22;
pub(crate) const SEGMENT_BYTES_MIN: usize = 4096;

/// Which segment is evicted when the memory budget is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eviction {
    /// The oldest segment of the shard (by creation) that no reader has pinned.
    Fifo,
    /// The victim is the sealed segment with the fewest live bytes when that is under half a
    /// segment (space of overwritten and deleted items is reclaimed first), else the oldest;
    /// its live items are carried forward into the newest segment of their TTL bucket, up to
    /// half a segment per eviction: all of them when they fit, otherwise only items read since
    /// they were written, the most frequently read first, with their frequency reset so that
    /// only items read again survive the next round. This is Segcache's merge eviction with one source segment at a time.
    Merge,
}

/// How a committed write treats an existing item (memcached's storage commands).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Store unconditionally.
    Set,
    /// Store only if the key is absent (else `NotStored`).
    Add,
    /// Store only if the key is present (else `NotStored`).
    Replace,
    /// Store only if present (else `NotFound`) and its CAS equals the given one (else `Exists`).
    Cas,
    /// Append to the present item's value (else `NotStored`), keeping its flags and expiry.
    Append,
    /// Prepend to the present item's value (else `NotStored`), keeping its flags and expiry.
    Prepend,
}

/// Options of a write beyond its mode (memcached's meta commands).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// The key was sent base64-encoded (memcached's `ms b`): the item is marked so that
    /// replies naming it re-encode it (`MetaInfo::key_binary`). Costs the item one byte.
    pub key_binary: bool,
    /// The CAS the item gets (nonzero), instead of a new unique one: an explicit CAS chosen
    /// by the client (memcached's `E`). Costs the item 8 bytes. Ignored when CAS is off.
    pub new_cas: u64,
    /// `Mode::Cas` only: when the given CAS is older (smaller, nonzero) than the item's, store
    /// anyway, marked stale, keeping the item's expiry and win-token mark (memcached's `ms I`,
    /// "invalidate": a late writer's value is kept but reads see it as stale).
    pub stale_if_older: bool,
    /// `Mode::Append`/`Mode::Prepend` only: a nonzero `cas_in` must equal the item's CAS,
    /// else `Exists` (memcached's `ms MA C<cas>`).
    pub append_checks_cas: bool,
}

impl WriteOptions {
    /// `new_cas` as the CAS to write, if one was chosen.
    #[inline(always)]
    pub(crate) fn explicit_cas(&self) -> Option<u64> {
        (self.new_cas != 0).then_some(self.new_cas)
    }
}

/// What a meta read ([`Cache::meta_get`]) does besides reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetaGet {
    /// Count the read: read frequency and the fetched mark (false: memcached's `u`).
    pub bump: bool,
    /// Set this expiry (memcached's `T`).
    pub touch: Option<u32>,
    /// On a miss, create an empty item (flags 0) with this expiry and hand this caller its
    /// win token (memcached's `N`).
    pub vivify: Option<u32>,
    /// Win the token when the item expires before this expiry (memcached's `R`).
    pub recache: Option<u32>,
    /// `recache` compares the expiry set by `touch` (T came before R in the request).
    pub touch_before_recache: bool,
    /// Hand out win tokens (false: the caller will not report them, so none is marked sent).
    pub claim_win: bool,
}

impl Default for MetaGet {
    fn default() -> MetaGet {
        MetaGet {
            bump: true,
            touch: None,
            vivify: None,
            recache: None,
            touch_before_recache: false,
            claim_win: true,
        }
    }
}

/// An item's meta-protocol state as a meta read found it (before the read changed it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetaInfo {
    /// Read since it was written (memcached's `h`, `fetch=`).
    pub fetched: bool,
    /// Marked stale (memcached's `X`).
    pub stale: bool,
    /// A win token was already handed out for it (memcached's `Z`).
    pub win_token_sent: bool,
    /// This read won the token (memcached's `W`): the caller should refresh the item.
    pub won: bool,
    /// This read created the item (`MetaGet::vivify`).
    pub created: bool,
    /// Written with a base64 key (`WriteOptions::key_binary`).
    pub key_binary: bool,
    /// When it was last written or moved (touch, merge), on the cache clock. Reads do not
    /// change it (a time per read would cost 4 bytes per item); a segment written to over
    /// more than 8 distinct seconds keeps coarser times (an item may read as older).
    pub written_at: u32,
    /// Bytes the item takes in its segment (header, key, value).
    pub item_bytes: u32,
    /// The expiry before this read (0 for an item it created).
    pub expiry_before: u32,
}

/// What a meta delete ([`Cache::meta_delete`]) does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetaDelete {
    /// Only if the item's CAS is this one (else `Exists`; memcached's `md C`).
    pub cas: Option<u64>,
    /// Keep the item, marked stale, with a new CAS and its win token taken back (memcached's
    /// `md I`) instead of deleting it.
    pub mark_stale: bool,
    /// With `mark_stale`: the new expiry (memcached's `md I T`); None keeps it.
    pub stale_expiry: Option<u32>,
}

/// Configuration of a cache.
#[derive(Clone, Debug)]
pub struct Config {
    /// Byte budget for segments (item storage). The store never allocates more segment
    /// memory than this; the hash table and per-segment metadata come on top and are counted
    /// in `Stats::total_bytes`.
    pub heap_bytes: usize,
    /// Segment size, `Cache::SEGMENT_BYTES_MIN..=Cache::SEGMENT_BYTES_MAX`.
    pub segment_bytes: usize,
    /// Expected number of items, used to size the hash table (8 records per 64-byte bucket at
    /// 90% fill; past 93% a shard doubles its table, pausing that shard for a rebuild).
    /// 0 = `heap_bytes / 128`.
    pub expected_items: usize,
    /// Largest item (key + value + header), at most `segment_bytes`. memcached's `-I`.
    pub item_max: usize,
    /// Keep 64-bit CAS values (memcached's default); false is memcached's `-C`: CAS reads as 0
    /// and every CAS write on an existing item fails with `Exists`.
    pub cas: bool,
    /// Bytes that open reservations (writes received but not yet committed) may hold,
    /// outside the segment budget; 0 = `heap_bytes / 4`. Split evenly between shards, each
    /// allowed at least one `item_max` item. Small reservations (at most 1/128 of a shard's
    /// part) may use a further eighth kept for them, so writers stalled in large values never
    /// starve small writes. In all, open reservations hold at most
    /// `max(reservation_bytes, shards * item_max) * 9 / 8`. A reserve past its shard's part
    /// fails with `OutOfMemory` (memcached's "out of memory storing object"), so slow or
    /// stalled senders cannot grow the process past `heap_bytes` plus this allowance.
    pub reservation_bytes: usize,
    /// Eviction policy.
    pub eviction: Eviction,
    /// Number of shards (a power of two, at most 256); 0 = automatic: twice the CPU count
    /// rounded up to a power of two, at most 16, keeping at least 8 segments per shard.
    pub shards: usize,
    /// The clock.
    pub clock: ClockKind,
    /// Back the whole segment budget with memory when the cache is created (memcached's
    /// `-L`, Segcache's prefault), instead of page by page as segments are first written.
    /// Creation then takes longer (on this project's VM 1 GiB took 0.41-0.44 s, and 3.46 s in
    /// the first of three runs; 64 MiB 8 ms) and the process holds
    /// `heap_bytes` from the start, but no write ever waits for the kernel to find, zero and
    /// map a fresh page (on a VM, possibly also for the host to back it). `Cache::new` fails
    /// with `OutOfMemory` if the memory is not there. Default false.
    pub prefault: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            heap_bytes: 64 << 20,
            segment_bytes: 1 << 20,
            expected_items: 0,
            item_max: 1 << 20,
            cas: true,
            reservation_bytes: 0,
            eviction: Eviction::Merge,
            shards: 0,
            clock: ClockKind::System,
            prefault: false,
        }
    }
}

/// Why an operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// A key of length 0 or over `Cache::KEY_MAX`, or a bad configuration value.
    InvalidArgument,
    /// The item (key + value + header) would be larger than `item_max`.
    TooLarge,
    /// The key is absent (cas, incr/decr, touch, delete).
    NotFound,
    /// CAS mismatch, or CAS disabled.
    Exists,
    /// add on a present key; replace/append/prepend on an absent one.
    NotStored,
    /// incr/decr on a value that is not a decimal unsigned 64-bit number.
    NonNumeric,
    /// A reservation written beyond its length or committed before it is full, or a pin
    /// released that is not held.
    InvalidState,
    /// A panic unwound out of an earlier operation while it held a shard's lock, so that
    /// shard may be half updated: the cache refuses every operation after it (releasing a pin
    /// still works, so that the cache can be dropped).
    Poisoned,
    /// No room: the shard's segment budget is full and every segment is pinned, or (reserve)
    /// the shard's part of the reservation allowance is held by open reservations.
    OutOfMemory,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for Error {}

/// A snapshot of the cache's counters and gauges (summed over shards).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Items linked in the hash table (some may be expired and not yet reclaimed).
    pub items: u64,
    /// Bytes of those items in segments (headers, keys, values).
    pub item_bytes: u64,
    /// Key and value bytes of those items.
    pub key_value_bytes: u64,
    /// Everything the store has allocated: segments, hash table, segment metadata.
    pub total_bytes: u64,
    /// Segment memory allocated so far (never above the budget).
    pub segment_bytes_allocated: u64,
    /// Hash table bytes (buckets and their probe counters).
    pub hash_bytes: u64,
    /// The segment budget (`heap_bytes` rounded down to whole segments).
    pub heap_limit_bytes: u64,
    /// Reads that found a live item.
    pub hits: u64,
    /// Reads that found nothing (or an expired item).
    pub misses: u64,
    /// Items written (set, add, replace, cas, append, prepend, incr, decr).
    pub sets: u64,
    /// Items deleted by request.
    pub deletes: u64,
    /// Items whose expiry was changed by touch or get-and-touch.
    pub touches: u64,
    /// Segments evicted to make room.
    pub evictions: u64,
    /// Live items dropped by eviction.
    pub evicted_items: u64,
    /// Items carried forward by merge eviction.
    pub merged_items: u64,
    /// Expired items removed (on access, or with their segment).
    pub expirations: u64,
    /// Segments freed whole because all their items expired.
    pub expired_segments: u64,
    /// flush_all operations applied (per shard, divided by the shard count).
    pub flushes: u64,
    /// Segments in the budget.
    pub segments_total: u64,
    /// Segments holding items.
    pub segments_used: u64,
    /// Segments free for writing (allocated or not yet allocated).
    pub segments_free: u64,
    /// Segments emptied while pinned, waiting for their last reader.
    pub segments_retired: u64,
    /// Number of shards.
    pub shards: u64,
    /// Pins held by readers right now.
    pub pinned: u64,
    /// Times a shard's hash table was doubled (items beyond `expected_items`).
    pub table_grows: u64,
    /// Bytes held by open reservations (outside the segments, within the reservation
    /// allowance): their buffers' lengths, which for writes of up to 4 KiB (key and value)
    /// are 256 B, 1 KiB or 4 KiB (buffers recycled per thread).
    pub reserved_bytes: u64,
}
