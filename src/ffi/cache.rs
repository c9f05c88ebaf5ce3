//! `p99_cache`: the segment-structured cache store (src/cache) for C servers.
//!
//! Threading: one `p99_cache*` may be used by any number of threads at once, for every call
//! except `p99_cache_free`. A reservation (`p99_cache_reservation`) and a pinned item
//! (`p99_cache_item`) are plain caller-owned structs: each may be used by one thread at a time
//! and may move between threads.
//!
//! Safety: the functions are `unsafe extern "C"`; the contract of each is the C contract in
//! its documentation (pointers NULL or valid for what they describe, lengths that match).
//! Pointers become references through `c_arg!` (boundary.rs), which states each form's
//! safety argument once.
#![allow(clippy::missing_safety_doc)]

use std::ffi::c_void;

use super::boundary::{c_arg, guard, guard_or, struct_size, CResult, Failure, Handle, Versioned};
use super::status::p99_status;
use crate::cache::{
    Cache, ClockKind, Config, CopiedItem, Eviction, MetaDelete, MetaGet, MetaInfo, Mode, PinTicket,
    Reservation, Stats, TicketedItem, WriteOptions,
};

/// Eviction policy `P99_CACHE_EVICTION_FIFO`: drop the oldest unpinned segment.
pub const P99_CACHE_EVICTION_FIFO: u32 = 0;
/// Eviction policy `P99_CACHE_EVICTION_MERGE` (default): evict the segment with the fewest
/// live bytes if under half full, else the oldest, carrying its live items forward, up to half
/// a segment per eviction (all of them when they fit, else the items read since they were
/// written, most frequently read first).
pub const P99_CACHE_EVICTION_MERGE: u32 = 1;

/// Commit mode: store unconditionally (memcached `set`).
pub const P99_CACHE_MODE_SET: u32 = 0;
/// Commit mode: store only if absent (`add`); else `P99_STATUS_NOT_STORED`.
pub const P99_CACHE_MODE_ADD: u32 = 1;
/// Commit mode: store only if present (`replace`); else `P99_STATUS_NOT_STORED`.
pub const P99_CACHE_MODE_REPLACE: u32 = 2;
/// Commit mode: store only if present (else `P99_STATUS_NOT_FOUND`) with CAS equal to
/// `cas_in` (else `P99_STATUS_EXISTS`; always `EXISTS` when CAS is disabled).
pub const P99_CACHE_MODE_CAS: u32 = 3;
/// Commit mode: append the value to the present item (else `P99_STATUS_NOT_STORED`),
/// keeping its flags and expiry (the reservation's are ignored).
pub const P99_CACHE_MODE_APPEND: u32 = 4;
/// Commit mode: prepend, otherwise as `P99_CACHE_MODE_APPEND`.
pub const P99_CACHE_MODE_PREPEND: u32 = 5;

/// `p99_cache_config.flags`: back the whole heap with memory in `p99_cache_new` (memcached's
/// `-L`) instead of page by page as segments are first written. Creation takes longer and the
/// process holds `heap_bytes` from the start; no write waits for a page fault. `p99_cache_new`
/// fails with OUT_OF_MEMORY if the memory is not there.
pub const P99_CACHE_CONFIG_PREFAULT: u64 = 1;

/// `p99_cache_write_options.flags`: the key was sent base64-encoded (memcached's `ms b`); the
/// item is marked so that `p99_cache_meta_get` reports `P99_CACHE_META_KEY_BINARY`. Costs the
/// item one byte.
pub const P99_CACHE_WRITE_KEY_BINARY: u32 = 1;
/// `p99_cache_write_options.flags`, `P99_CACHE_MODE_CAS` only: when `cas_in` is nonzero and
/// older (smaller) than the item's CAS, store anyway, marked stale, keeping the item's expiry
/// and its win-token mark (memcached's `ms I`).
pub const P99_CACHE_WRITE_STALE_IF_OLDER: u32 = 2;
/// `p99_cache_write_options.flags`, `P99_CACHE_MODE_APPEND`/`PREPEND` only: a nonzero `cas_in`
/// must equal the item's CAS, else `P99_STATUS_EXISTS` (memcached's `ms MA C<cas>`).
pub const P99_CACHE_WRITE_APPEND_CHECKS_CAS: u32 = 4;

/// `p99_cache_meta_get_args.flags`: do not count the read (no fetched mark, no frequency
/// bump; memcached's `u`).
pub const P99_CACHE_MG_NO_BUMP: u32 = 1;
/// `p99_cache_meta_get_args.flags`: set the expiry to `touch_expiry` (memcached's `T`).
pub const P99_CACHE_MG_TOUCH: u32 = 2;
/// `p99_cache_meta_get_args.flags`: on a miss, create an empty item (flags 0) expiring at
/// `vivify_expiry` and hand this caller its win token (memcached's `N`).
pub const P99_CACHE_MG_VIVIFY: u32 = 4;
/// `p99_cache_meta_get_args.flags`: win the token when the item expires before
/// `recache_expiry` (memcached's `R`).
pub const P99_CACHE_MG_RECACHE: u32 = 8;
/// `p99_cache_meta_get_args.flags`: compare `recache_expiry` with the expiry `touch_expiry`
/// sets rather than the item's old one (T came before R in the request).
pub const P99_CACHE_MG_TOUCH_BEFORE_RECACHE: u32 = 16;
/// `p99_cache_meta_get_args.flags`: hand out no win token (report the state only).
pub const P99_CACHE_MG_NO_WIN: u32 = 32;

/// `p99_cache_meta_info.flags`: the item had been read since it was written.
pub const P99_CACHE_META_FETCHED: u32 = 1;
/// `p99_cache_meta_info.flags`: the item is marked stale (memcached's `X`).
pub const P99_CACHE_META_STALE: u32 = 2;
/// `p99_cache_meta_info.flags`: a win token had already been handed out (memcached's `Z`).
pub const P99_CACHE_META_WIN_TOKEN_SENT: u32 = 4;
/// `p99_cache_meta_info.flags`: this call won the token (memcached's `W`).
pub const P99_CACHE_META_WON: u32 = 8;
/// `p99_cache_meta_info.flags`: this call created the item (`P99_CACHE_MG_VIVIFY`).
pub const P99_CACHE_META_CREATED: u32 = 16;
/// `p99_cache_meta_info.flags`: the item was written with `P99_CACHE_WRITE_KEY_BINARY`.
pub const P99_CACHE_META_KEY_BINARY: u32 = 32;

/// `p99_cache_meta_delete_args.flags`: only if the item's CAS equals `cas` (else
/// `P99_STATUS_EXISTS`; memcached's `md C`).
pub const P99_CACHE_MD_CHECK_CAS: u32 = 1;
/// `p99_cache_meta_delete_args.flags`: keep the item, marked stale, with a new CAS and its win
/// token taken back, instead of deleting it (memcached's `md I`).
pub const P99_CACHE_MD_MARK_STALE: u32 = 2;
/// `p99_cache_meta_delete_args.flags`, with `P99_CACHE_MD_MARK_STALE`: set the expiry to
/// `expiry` (memcached's `md I T`).
pub const P99_CACHE_MD_SET_EXPIRY: u32 = 4;

/// Longest key in bytes (memcached's limit).
pub const P99_CACHE_KEY_MAX: u32 = 250;
/// Bytes of worst-case item header counted against `item_max` (key + value + this).
pub const P99_CACHE_ITEM_HEADER_MAX: u32 = 23;
/// Largest `segment_bytes` (4 MiB), hence the largest `item_max`: an item lives in one segment.
pub const P99_CACHE_SEGMENT_BYTES_MAX: u32 = 4194304;
const _: () = assert!(P99_CACHE_SEGMENT_BYTES_MAX as usize == Cache::SEGMENT_BYTES_MAX);

/// Opaque cache handle. Create with `p99_cache_new`, free with `p99_cache_free`.
///
/// A panic inside a cache operation (a bug in libp99) poisons the cache: that operation and
/// every later one return `P99_STATUS_PANIC` at once, without touching the shard the panic
/// may have left half updated. Only `p99_cache_item_release` (pins can still be handed back)
/// and `p99_cache_free` (frees as usual) keep working.
pub struct p99_cache {
    cache: Cache,
}

/// Test hook (not exported to C): the next write on `cache` panics while it holds its shard's
/// lock, as a bug in the store would.
///
/// # Safety
/// `cache` is a live handle from `p99_cache_new`.
#[doc(hidden)]
pub unsafe fn test_inject_panic_in_next_write(cache: *const p99_cache) {
    // SAFETY: a live handle (the caller's contract), borrowed for this call only.
    if let Some(c) = unsafe { cache.as_ref() } {
        c.cache.inject_panic_in_next_write();
    }
}

impl Handle for p99_cache {}

/// Cache configuration. Set `struct_size = sizeof(p99_cache_config)`, fill with
/// `p99_cache_config_defaults`, then change fields.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct p99_cache_config {
    /// `sizeof(p99_cache_config)`, set by the caller.
    pub struct_size: u32,
    /// Segment size in bytes, 4096..4194304 (default 1 MiB).
    pub segment_bytes: u32,
    /// Byte budget for item storage (default 64 MiB); never exceeded. The hash table and
    /// segment metadata come on top (see `p99_cache_stats.total_bytes`).
    pub heap_bytes: u64,
    /// Expected item count, sizes the hash table (8 records per 64-byte bucket at 90% fill;
    /// the table doubles, with a pause, past 93%). 0 (default) = heap_bytes / 128.
    pub expected_items: u64,
    /// Largest item: key + value + `P99_CACHE_ITEM_HEADER_MAX` must not exceed it
    /// (memcached's -I; default 1 MiB; at most segment_bytes).
    pub item_max: u32,
    /// 64-bit CAS per item (default true); false behaves as memcached -C.
    pub cas: bool,
    /// Manual clock for tests (default false = system clock). When true the clock starts at
    /// `manual_clock_start` and moves only with `p99_cache_set_time`.
    pub manual_clock: bool,
    /// `P99_CACHE_EVICTION_*` (default MERGE).
    pub eviction: u32,
    /// Shard count, a power of two up to 256; 0 (default) = automatic (twice the CPU count
    /// rounded up to a power of two, at most 16, at least 8 segments each).
    pub shards: u32,
    /// Start of the manual clock in unix seconds.
    pub manual_clock_start: u32,
    /// `P99_CACHE_CONFIG_*` bits (default 0). Appended after the first published layout (the
    /// struct grew from 48 to 56 bytes): a caller built against the 48-byte struct gets 0.
    pub flags: u64,
}

/// A write in progress (two-phase write), owned by the caller, filled by `p99_cache_reserve`.
///
/// Write the value either in pieces with `p99_cache_reservation_write`, or directly into
/// `value` followed by `p99_cache_reservation_advance`; then `p99_cache_commit` or
/// `p99_cache_cancel`. Commit/cancel clear the struct, which is how a second commit/cancel of
/// the same struct is detected (`P99_STATUS_INVALID_STATE`). The struct must not be copied
/// (no assignment, no passing or returning by value): a copy still looks live after the
/// original is committed or cancelled, and committing, cancelling or writing through a copy
/// after that is undefined behaviour (double free / use after free) that the library cannot
/// detect. Pass it around by pointer.
#[repr(C)]
#[derive(Debug)]
pub struct p99_cache_reservation {
    /// `value_len` writable bytes for the value, valid until commit or cancel.
    pub value: *mut u8,
    /// Declared value length.
    pub value_len: usize,
    /// Private. NULL when the struct holds no reservation.
    pub state: *mut c_void,
}

/// A pinned item returned by `p99_cache_get`/`p99_cache_get_and_touch`, owned by the caller.
///
/// `key`/`value` point into the store and stay valid and unchanged until
/// `p99_cache_item_release`, whatever happens to the item meanwhile (replace, delete, expiry,
/// flush, eviction). Release clears the struct. Each pin carries a ticket that its first
/// release consumes: a second release of the same struct, or of a copy of it (C copies it by
/// plain assignment), gets `P99_STATUS_INVALID_STATE` and releases nothing, so it cannot drop
/// a pin another reader holds. (The ticket's generation is 32 bits: a stale copy is told
/// apart unless its ticket slot was reused exactly 2^32 times meanwhile.) The `key`/`value`
/// of a copy are valid only until the first release of any copy.
#[repr(C)]
#[derive(Debug)]
pub struct p99_cache_item {
    /// The value bytes (binary, not NUL-terminated).
    pub value: *const u8,
    /// Value length.
    pub value_len: usize,
    /// The key bytes.
    pub key: *const u8,
    /// Key length.
    pub key_len: usize,
    /// CAS unique (0 when CAS is disabled).
    pub cas: u64,
    /// Client flags.
    pub flags: u32,
    /// Absolute expiry on the cache clock (0 = never).
    pub expiry: u32,
    /// Private.
    pub pin_shard: u32,
    /// Private.
    pub pin_slot: u32,
    /// Private. Nonzero while the item is pinned; identifies the cache and the ticket.
    pub pin_magic: u64,
}

/// The empty item: nothing pinned (what `p99_cache_item_release` leaves behind).
impl Default for p99_cache_item {
    fn default() -> p99_cache_item {
        p99_cache_item {
            value: std::ptr::null(),
            value_len: 0,
            key: std::ptr::null(),
            key_len: 0,
            cas: 0,
            flags: 0,
            expiry: 0,
            pin_shard: 0,
            pin_slot: 0,
            pin_magic: 0,
        }
    }
}

/// What `p99_cache_get_copy` found: filled by the library. Set `struct_size =
/// sizeof(p99_cache_value_info)` before the call; the library writes at most that many bytes
/// (fields it does not know are zeroed) and leaves `struct_size` as the caller set it; later
/// versions only append fields.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct p99_cache_value_info {
    /// Set by the caller: `sizeof(p99_cache_value_info)`.
    pub struct_size: u32,
    /// Client flags.
    pub flags: u32,
    /// Value length: the bytes copied on OK, the buffer size needed on BUFFER_TOO_SMALL.
    pub value_len: usize,
    /// CAS unique (0 when CAS is disabled).
    pub cas: u64,
    /// Absolute expiry on the cache clock (0 = never).
    pub expiry: u32,
}

/// Options of `p99_cache_commit_with`, filled by the caller: set `struct_size =
/// sizeof(p99_cache_write_options)`; zeroed fields mean "no option" (later versions only
/// append fields, whose zero keeps today's behaviour).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct p99_cache_write_options {
    /// Set by the caller: `sizeof(p99_cache_write_options)`.
    pub struct_size: u32,
    /// `P99_CACHE_WRITE_*` bits.
    pub flags: u32,
    /// The CAS the item gets instead of a new unique one (memcached's explicit CAS, `E`);
    /// 0 = assign one. Costs the item 8 bytes; ignored when CAS is disabled.
    pub new_cas: u64,
}

/// Arguments of `p99_cache_meta_get`, filled by the caller: set `struct_size =
/// sizeof(p99_cache_meta_get_args)`. Expiries are absolute on the cache clock (0 = never), as
/// `p99_cache_expiry_from_exptime` makes them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct p99_cache_meta_get_args {
    /// Set by the caller: `sizeof(p99_cache_meta_get_args)`.
    pub struct_size: u32,
    /// `P99_CACHE_MG_*` bits.
    pub flags: u32,
    /// With `P99_CACHE_MG_TOUCH`: the new expiry.
    pub touch_expiry: u32,
    /// With `P99_CACHE_MG_VIVIFY`: the created item's expiry.
    pub vivify_expiry: u32,
    /// With `P99_CACHE_MG_RECACHE`: win when the item expires before this.
    pub recache_expiry: u32,
}

/// The per-item state `p99_cache_meta_get` found, filled by the library (set `struct_size`
/// first; at most `struct_size` bytes are written). It describes the item before this read
/// changed it, plus what the read did (`P99_CACHE_META_WON`, `P99_CACHE_META_CREATED`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct p99_cache_meta_info {
    /// Set by the caller: `sizeof(p99_cache_meta_info)`.
    pub struct_size: u32,
    /// `P99_CACHE_META_*` bits.
    pub flags: u32,
    /// Seconds since the item was last written or moved (touch, merge eviction); reads do
    /// not change it. Coarser (reads as older) for an item in a segment written to over more
    /// than 8 distinct seconds.
    pub last_access: u32,
    /// Bytes the item takes in its segment (header, key, value).
    pub item_bytes: u32,
    /// The expiry before this call (`p99_cache_item.expiry` has the one after it).
    pub expiry_before: u32,
}

/// Arguments of `p99_cache_meta_delete`, filled by the caller: set `struct_size =
/// sizeof(p99_cache_meta_delete_args)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct p99_cache_meta_delete_args {
    /// Set by the caller: `sizeof(p99_cache_meta_delete_args)`.
    pub struct_size: u32,
    /// `P99_CACHE_MD_*` bits.
    pub flags: u32,
    /// With `P99_CACHE_MD_CHECK_CAS`: the CAS the item must have.
    pub cas: u64,
    /// With `P99_CACHE_MD_SET_EXPIRY`: the new expiry (absolute, 0 = never).
    pub expiry: u32,
}

/// Counters and gauges of a cache. Set `struct_size = sizeof(p99_cache_stats)` before
/// `p99_cache_get_stats`; later library versions only append fields.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct p99_cache_stats {
    /// Set by the caller: `sizeof(p99_cache_stats)`.
    pub struct_size: u32,
    /// Number of shards.
    pub shards: u32,
    /// Items linked (some may be expired and not yet reclaimed).
    pub items: u64,
    /// Bytes of those items in segments (headers, keys, values).
    pub item_bytes: u64,
    /// Key and value bytes of those items.
    pub key_value_bytes: u64,
    /// Everything the store allocated: segments, hash table, metadata.
    pub total_bytes: u64,
    /// Segment memory allocated so far.
    pub segment_bytes_allocated: u64,
    /// Hash table bytes.
    pub hash_bytes: u64,
    /// Segment budget in bytes.
    pub heap_limit_bytes: u64,
    /// Reads that found a live item.
    pub hits: u64,
    /// Reads that found nothing.
    pub misses: u64,
    /// Items written (set/add/replace/cas/append/prepend/incr/decr).
    pub sets: u64,
    /// Items deleted by request.
    pub deletes: u64,
    /// Items touched.
    pub touches: u64,
    /// Segments evicted.
    pub evictions: u64,
    /// Live items dropped by eviction.
    pub evicted_items: u64,
    /// Items carried forward by merge eviction.
    pub merged_items: u64,
    /// Expired items removed.
    pub expirations: u64,
    /// Segments freed because all their items expired.
    pub expired_segments: u64,
    /// flush_all operations applied.
    pub flushes: u64,
    /// Segments in the budget.
    pub segments_total: u64,
    /// Segments holding items.
    pub segments_used: u64,
    /// Segments free for writing.
    pub segments_free: u64,
    /// Segments emptied while pinned, waiting for their last reader.
    pub segments_retired: u64,
    /// Pins held right now.
    pub pinned: u64,
    /// Times a shard's hash table was doubled (more items than `expected_items`).
    pub table_grows: u64,
}

// SAFETY (all three): repr(C), struct_size first, integer and bool fields; later versions
// append fields.
unsafe impl Versioned for p99_cache_config {
    const NAME: &'static str = "p99_cache_config";
    const FIRST_SIZE: usize = 48;
}
// SAFETY: see above.
unsafe impl Versioned for p99_cache_stats {
    const NAME: &'static str = "p99_cache_stats";
    const FIRST_SIZE: usize = 200;
}

// SAFETY: as above (usize is size_t).
unsafe impl Versioned for p99_cache_value_info {
    const NAME: &'static str = "p99_cache_value_info";
    const FIRST_SIZE: usize = 32;
}

// SAFETY: repr(C), struct_size first, integer fields only; later versions append fields.
unsafe impl Versioned for p99_cache_write_options {
    const NAME: &'static str = "p99_cache_write_options";
    const FIRST_SIZE: usize = 16;
}
// SAFETY: as above.
unsafe impl Versioned for p99_cache_meta_get_args {
    const NAME: &'static str = "p99_cache_meta_get_args";
    const FIRST_SIZE: usize = 20;
}
// SAFETY: as above.
unsafe impl Versioned for p99_cache_meta_info {
    const NAME: &'static str = "p99_cache_meta_info";
    const FIRST_SIZE: usize = 20;
}
// SAFETY: as above (its 4 bytes of trailing padding are never read as a field).
unsafe impl Versioned for p99_cache_meta_delete_args {
    const NAME: &'static str = "p99_cache_meta_delete_args";
    const FIRST_SIZE: usize = 24;
}

/// Refuses bits outside `known` (a flag of a newer version this library cannot honour).
fn check_flags<T: Into<u64>>(flags: T, known: T, name: &str) -> Result<(), Failure> {
    let (flags, known) = (flags.into(), known.into());
    if flags & !known != 0 {
        return Err(Failure::invalid(format!("`{name}`: unknown flag bits {:#x}", flags & !known)));
    }
    Ok(())
}

impl Default for p99_cache_config {
    fn default() -> Self {
        let d = Config::default();
        p99_cache_config {
            struct_size: struct_size::<Self>(),
            segment_bytes: d.segment_bytes as u32,
            heap_bytes: d.heap_bytes as u64,
            expected_items: d.expected_items as u64,
            item_max: d.item_max as u32,
            cas: d.cas,
            manual_clock: false,
            eviction: P99_CACHE_EVICTION_MERGE,
            shards: d.shards as u32,
            manual_clock_start: 0,
            flags: 0,
        }
    }
}

const PIN_MAGIC: u64 = 0x7039_395f_6361_6368; // "p99_cach"

/// The pin marker of items of cache `c` (high 32 bits of `pin_magic`, never 0): a release
/// on another cache is told apart. The low 32 bits hold the ticket's generation.
fn pin_tag(c: &p99_cache) -> u32 {
    let m = PIN_MAGIC ^ (c as *const p99_cache as u64).rotate_left(17);
    ((m >> 32) as u32 ^ m as u32) | 1
}

#[inline]
fn mode_from(mode: u32) -> Result<Mode, Failure> {
    #[cold]
    fn unknown(mode: u32) -> Failure {
        Failure::invalid(format!("mode {mode} is not one of P99_CACHE_MODE_*"))
    }
    Ok(match mode {
        P99_CACHE_MODE_SET => Mode::Set,
        P99_CACHE_MODE_ADD => Mode::Add,
        P99_CACHE_MODE_REPLACE => Mode::Replace,
        P99_CACHE_MODE_CAS => Mode::Cas,
        P99_CACHE_MODE_APPEND => Mode::Append,
        P99_CACHE_MODE_PREPEND => Mode::Prepend,
        _ => return Err(unknown(mode)),
    })
}

fn fill_item(out: &mut p99_cache_item, it: TicketedItem, tag: u32) {
    let t = it.ticket;
    *out = p99_cache_item {
        value: it.value,
        value_len: it.value_len,
        key: it.key,
        key_len: it.key_len,
        cas: it.cas,
        flags: it.flags,
        expiry: it.expiry,
        pin_shard: t.shard,
        pin_slot: t.slot,
        pin_magic: (u64::from(tag) << 32) | u64::from(t.generation),
    };
}

/// Fills `*config` with the defaults. The caller sets `config->struct_size =
/// sizeof(p99_cache_config)` first; at most that many bytes are written and it is left as
/// set. NULL_PARAMETER if `config` is NULL, INVALID_ARGUMENT if `struct_size` is smaller than
/// the first published struct. Thread-safe; `config` is borrowed until return.
#[no_mangle]
pub unsafe extern "C" fn p99_cache_config_defaults(config: *mut p99_cache_config) -> p99_status {
    guard(|| -> CResult {
        c_arg!(versioned_out config)?.write(p99_cache_config::default());
        Ok(())
    })
}

/// Creates a cache from `*config` (borrowed until return) and stores it in `*out`; free it
/// with `p99_cache_free`. INVALID_ARGUMENT for a bad `struct_size` or an inconsistent
/// configuration (segment size out of range, heap smaller than a segment, item_max above
/// segment_bytes or below a maximal key, bad eviction or shard count, unknown `flags` bits);
/// then `p99_last_error_message()` names the field and the rule. OUT_OF_MEMORY when the heap
/// cannot be reserved (or, with `P99_CACHE_CONFIG_PREFAULT`, backed). Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn p99_cache_new(
    config: *const p99_cache_config,
    out: *mut *mut p99_cache,
) -> p99_status {
    guard(|| -> CResult {
        let c = c_arg!(versioned_in config, p99_cache_config::default())?;
        let out = c_arg!(out out)?;
        let eviction = match c.eviction {
            P99_CACHE_EVICTION_FIFO => Eviction::Fifo,
            P99_CACHE_EVICTION_MERGE => Eviction::Merge,
            e => {
                return Err(Failure::invalid(format!(
                    "eviction {e} is not one of P99_CACHE_EVICTION_*"
                )))
            }
        };
        let too_big =
            |what: &str| Failure::invalid(format!("{what} does not fit this machine's size_t"));
        check_flags(c.flags, P99_CACHE_CONFIG_PREFAULT, "config")?;
        let cfg = Config {
            heap_bytes: usize::try_from(c.heap_bytes).map_err(|_| too_big("heap_bytes"))?,
            segment_bytes: c.segment_bytes as usize,
            expected_items: usize::try_from(c.expected_items)
                .map_err(|_| too_big("expected_items"))?,
            item_max: c.item_max as usize,
            cas: c.cas,
            reservation_bytes: 0, // the default allowance: a quarter of heap_bytes
            eviction,
            shards: c.shards as usize,
            clock: if c.manual_clock {
                ClockKind::Manual(c.manual_clock_start)
            } else {
                ClockKind::System
            },
            prefault: c.flags & P99_CACHE_CONFIG_PREFAULT != 0,
        };
        cfg.check().map_err(Failure::invalid)?;
        let cache = Cache::new(cfg)?;
        out.write(p99_cache { cache }.into_c());
        Ok(())
    })
}

/// Frees a cache. NULL is a no-op (OK). Returns BUSY, freeing nothing, while pinned items
/// are not released. Reservations are independent of the cache's memory but must not be
/// committed after the free. Not thread-safe: no other call on `cache` may run or follow.
#[no_mangle]
pub unsafe extern "C" fn p99_cache_free(cache: *mut p99_cache) -> p99_status {
    guard(|| -> CResult {
        if cache.is_null() {
            return Ok(());
        }
        let pinned = c_arg!(handle cache)?.cache.pinned();
        if pinned != 0 {
            return Err(Failure::new(
                p99_status::Busy,
                format!("{pinned} items are still pinned; release them first"),
            ));
        }
        drop(c_arg!(owned cache));
        Ok(())
    })
}

/// Starts a write: `key` (`key_len` bytes, 1..250, borrowed until return and copied), a value
/// of `value_len` bytes to come, client `flags` and absolute `expiry` (cache clock; 0 =
/// never). Fills `*out` (caller-owned; previous contents ignored). Errors: NULL_PARAMETER,
/// INVALID_ARGUMENT (key length 0 or > 250), TOO_LARGE (key + value + 23 > item_max),
/// OUT_OF_MEMORY (open reservations already hold the key's shard's part of the reservation
/// allowance: a quarter of `heap_bytes`, at least one `item_max` item per shard); `*out`
/// untouched on error. The reservation must end with `p99_cache_commit` or
/// `p99_cache_cancel` (else its buffer leaks). Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn p99_cache_reserve(
    cache: *const p99_cache,
    key: *const u8,
    key_len: usize,
    value_len: usize,
    flags: u32,
    expiry: u32,
    out: *mut p99_cache_reservation,
) -> p99_status {
    guard(|| -> CResult {
        let c = c_arg!(handle cache)?;
        let key = c_arg!(slice key, key_len)?;
        let out = c_arg!(out out)?;
        let mut slot = reservation_slot(c.cache.reserve(key, value_len, flags, expiry)?);
        let value = match &mut *slot {
            Some(r) => r.value_buffer().as_mut_ptr(),
            None => std::ptr::null_mut(), // cannot happen: the slot was just filled
        };
        out.write(p99_cache_reservation { value, value_len, state: Box::into_raw(slot).cast() });
        Ok(())
    })
}

/// What a reservation's `state` points to: a box holding the Rust reservation (`None` once
/// taken). Emptied boxes are kept per thread for the next reserve, so a warm writer
/// allocates nothing here (the value buffer is recycled the same way, inside the cache).
type ReservationSlot = Box<Option<Reservation>>;

/// Emptied slots kept per thread.
const SLOTS_KEPT: usize = 16;

thread_local! {
    static FREE_SLOTS: std::cell::RefCell<Vec<ReservationSlot>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

fn reservation_slot(r: Reservation) -> ReservationSlot {
    // try_with: during thread exit the list may already be gone; allocate then.
    match FREE_SLOTS.try_with(|f| f.borrow_mut().pop()).ok().flatten() {
        Some(mut slot) => {
            *slot = Some(r);
            slot
        }
        None => Box::new(Some(r)),
    }
}

fn recycle_slot(slot: ReservationSlot) {
    debug_assert!(slot.is_none());
    let _ = FREE_SLOTS.try_with(|f| {
        let mut f = f.borrow_mut();
        if f.len() < SLOTS_KEPT {
            f.push(slot);
        }
    });
}

fn reservation_of(res: &mut p99_cache_reservation) -> Result<&mut Reservation, p99_status> {
    if res.state.is_null() {
        return Err(p99_status::InvalidState);
    }
    // SAFETY: a non-NULL state was set by p99_cache_reserve from Box::into_raw and is cleared
    // when the box is taken back; the C contract forbids copying the struct, so no other copy
    // of this pointer can have taken it.
    let slot = unsafe { &mut *res.state.cast::<Option<Reservation>>() };
    slot.as_mut().ok_or(p99_status::InvalidState)
}

/// Takes the reservation out of `*res` (clearing it) and returns it with its emptied slot,
/// which the caller gives to `recycle_slot`.
fn take_reservation(
    res: &mut p99_cache_reservation,
) -> Result<(Reservation, ReservationSlot), p99_status> {
    if res.state.is_null() {
        return Err(p99_status::InvalidState);
    }
    // SAFETY: as in reservation_of; the pointer is cleared right away so it is taken once.
    let mut slot = unsafe { Box::from_raw(res.state.cast::<Option<Reservation>>()) };
    res.state = std::ptr::null_mut();
    res.value = std::ptr::null_mut();
    res.value_len = 0;
    match slot.take() {
        Some(r) => Ok((r, slot)),
        None => Err(p99_status::InvalidState), // cannot happen: slots are filled when issued
    }
}

/// Appends the next `len` bytes of the value from `data` (borrowed until return).
/// INVALID_STATE if `res` holds no reservation or the piece would run past `value_len`
/// (nothing is written then). One thread at a time per reservation.
#[no_mangle]
pub unsafe extern "C" fn p99_cache_reservation_write(
    res: *mut p99_cache_reservation,
    data: *const u8,
    len: usize,
) -> p99_status {
    guard(|| -> CResult {
        let r = c_arg!(mut res)?;
        let data = c_arg!(slice data, len)?;
        reservation_of(r)?.write(data)?;
        Ok(())
    })
}

/// Marks `n` more bytes as written after the caller wrote them directly at
/// `res->value + (bytes written so far)`. INVALID_STATE if `res` holds no reservation or `n`
/// exceeds what is left. One thread at a time per reservation.
#[no_mangle]
pub unsafe extern "C" fn p99_cache_reservation_advance(
    res: *mut p99_cache_reservation,
    n: usize,
) -> p99_status {
    guard(|| -> CResult {
        let r = c_arg!(mut res)?;
        reservation_of(r)?.advance(n)?;
        Ok(())
    })
}

/// Completes the write in `*res` with `mode` (`P99_CACHE_MODE_*`); `cas_in` is read by
/// `P99_CACHE_MODE_CAS` only. The reservation is consumed and `*res` cleared whatever the
/// outcome (except NULL_PARAMETER for `cache`/`res` NULL, and INVALID_STATE when `*res` holds
/// none). On OK the new item's CAS is stored in `*cas_out` if `cas_out` is not NULL.
/// Errors: INVALID_STATE (value not completely written, or no reservation), INVALID_ARGUMENT
/// (bad mode, reservation from another cache), NOT_STORED / NOT_FOUND / EXISTS (by mode),
/// TOO_LARGE (append/prepend result too large), OUT_OF_MEMORY (every segment of the shard
/// pinned). Thread-safe on `cache`.
#[no_mangle]
pub unsafe extern "C" fn p99_cache_commit(
    cache: *const p99_cache,
    res: *mut p99_cache_reservation,
    mode: u32,
    cas_in: u64,
    cas_out: *mut u64,
) -> p99_status {
    guard(|| -> CResult {
        let c = c_arg!(handle cache)?;
        let r = c_arg!(mut res)?;
        let (reservation, slot) = take_reservation(r)?;
        recycle_slot(slot);
        let mode = mode_from(mode)?;
        let cas = c.cache.commit(reservation, mode, cas_in)?;
        if let Some(out) = c_arg!(opt_out cas_out) {
            out.write(cas);
        }
        Ok(())
    })
}

/// `p99_cache_commit` with the meta-protocol options of `*options` (borrowed until return;
/// see `p99_cache_write_options` and the `P99_CACHE_WRITE_*` bits): a base64-key mark, an
/// explicit CAS, a stale-if-older CAS write, a CAS-checked append/prepend. NULL_PARAMETER
/// for `options` NULL (nothing consumed); INVALID_ARGUMENT (reservation consumed) for a bad
/// `struct_size` or unknown flag bits. Otherwise as `p99_cache_commit`. Thread-safe on
/// `cache`.
#[no_mangle]
pub unsafe extern "C" fn p99_cache_commit_with(
    cache: *const p99_cache,
    res: *mut p99_cache_reservation,
    mode: u32,
    cas_in: u64,
    options: *const p99_cache_write_options,
    cas_out: *mut u64,
) -> p99_status {
    guard(|| -> CResult {
        let c = c_arg!(handle cache)?;
        let r = c_arg!(mut res)?;
        if options.is_null() {
            return Err(super::boundary::null_arg("options"));
        }
        let (reservation, slot) = take_reservation(r)?;
        recycle_slot(slot);
        let o = c_arg!(versioned_in options, p99_cache_write_options::default())?;
        check_flags(
            o.flags,
            P99_CACHE_WRITE_KEY_BINARY
                | P99_CACHE_WRITE_STALE_IF_OLDER
                | P99_CACHE_WRITE_APPEND_CHECKS_CAS,
            "options",
        )?;
        let opts = WriteOptions {
            key_binary: o.flags & P99_CACHE_WRITE_KEY_BINARY != 0,
            new_cas: o.new_cas,
            stale_if_older: o.flags & P99_CACHE_WRITE_STALE_IF_OLDER != 0,
            append_checks_cas: o.flags & P99_CACHE_WRITE_APPEND_CHECKS_CAS != 0,
        };
        let mode = mode_from(mode)?;
        let cas = c.cache.commit_with(reservation, mode, cas_in, &opts)?;
        if let Some(out) = c_arg!(opt_out cas_out) {
            out.write(cas);
        }
        Ok(())
    })
}

/// Abandons the write in `*res` and clears it. NULL_PARAMETER for NULL, INVALID_STATE when
/// `*res` holds no reservation (e.g. a second cancel). Thread-safe per reservation.
#[no_mangle]
pub unsafe extern "C" fn p99_cache_cancel(res: *mut p99_cache_reservation) -> p99_status {
    guard(|| -> CResult {
        let r = c_arg!(mut res)?;
        let (reservation, slot) = take_reservation(r)?;
        drop(reservation);
        recycle_slot(slot);
        Ok(())
    })
}

/// One-call write: like reserve + write + commit with `mode`. `key` and `value` are borrowed
/// until return. Errors as `p99_cache_reserve` and `p99_cache_commit`; `*cas_out` (optional,
/// may be NULL) gets the new CAS on OK. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn p99_cache_store(
    cache: *const p99_cache,
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
    flags: u32,
    expiry: u32,
    mode: u32,
    cas_in: u64,
    cas_out: *mut u64,
) -> p99_status {
    guard(|| -> CResult {
        let c = c_arg!(handle cache)?;
        let key = c_arg!(slice key, key_len)?;
        let value = c_arg!(slice value, value_len)?;
        let mode = mode_from(mode)?;
        let cas = c.cache.store(key, value, flags, expiry, mode, cas_in)?;
        if let Some(out) = c_arg!(opt_out cas_out) {
            out.write(cas);
        }
        Ok(())
    })
}

/// Looks up `key` (borrowed until return) and, on OK, fills `*item` (caller-owned) with the
/// pinned item; release it with `p99_cache_item_release`, from any thread. NOT_FOUND on a
/// miss (`*item` untouched). INVALID_ARGUMENT for a key of length 0 or > 250; OUT_OF_MEMORY
/// (nothing pinned) when 4,194,304 pins of the key's shard are held at once. A get takes the
/// shard lock once and its release takes none. For a value that is copied anyway,
/// `p99_cache_get_copy` is cheaper (see there: when to pin, when to copy). Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn p99_cache_get(
    cache: *const p99_cache,
    key: *const u8,
    key_len: usize,
    item: *mut p99_cache_item,
) -> p99_status {
    guard(|| -> CResult {
        let c = c_arg!(handle cache)?;
        let key = c_arg!(slice key, key_len)?;
        let out = c_arg!(mut item)?;
        let it = c.cache.get_ticketed(key)?.ok_or(p99_status::NotFound)?;
        fill_item(out, it, pin_tag(c));
        Ok(())
    })
}

/// Looks up `key` (borrowed until return) and copies its value into `buf` (`buf_cap`
/// writable bytes, borrowed until return; NULL allowed with `buf_cap` 0), under the shard
/// lock: nothing stays pinned and nothing needs releasing. Fills `*info` (caller sets
/// `info->struct_size` first) with the value's length, flags, CAS and expiry.
///
/// Returns OK (value copied, `*info` filled), NOT_FOUND (nothing written), or
/// BUFFER_TOO_SMALL when the value is longer than `buf_cap`: nothing is copied and `*info`
/// is filled anyway, with `value_len` the size needed. INVALID_ARGUMENT for a key of length 0
/// or > 250, or an `info->struct_size` smaller than the first published struct.
///
/// Copy or pin: a copy costs one shard-lock acquisition and a `memcpy` of the value; a pin
/// (`p99_cache_get` + `p99_cache_item_release`) costs the same lock plus a pin ticket, and
/// hands out the bytes in place. Copy values that are copied anyway (into a reply buffer, a
/// few KiB at most); pin large values sent by reference (e.g. with `writev` or the engine's
/// borrowed sends) and released once the kernel is done with them. A server that does not
/// know the size ahead can copy into its reply buffer and pin only on BUFFER_TOO_SMALL.
/// Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn p99_cache_get_copy(
    cache: *const p99_cache,
    key: *const u8,
    key_len: usize,
    buf: *mut u8,
    buf_cap: usize,
    info: *mut p99_cache_value_info,
) -> p99_status {
    guard(|| -> CResult {
        let c = c_arg!(handle cache)?;
        let key = c_arg!(slice key, key_len)?;
        let out = c_arg!(versioned_out info)?;
        let buf = c_arg!(slice_mut buf, buf_cap)?;
        let found: CopiedItem = c.cache.get_copy(key, buf)?.ok_or(p99_status::NotFound)?;
        out.write(p99_cache_value_info {
            struct_size: struct_size::<p99_cache_value_info>(),
            flags: found.flags,
            value_len: found.value_len,
            cas: found.cas,
            expiry: found.expiry,
        });
        if found.copied {
            Ok(())
        } else {
            Err(p99_status::BufferTooSmall.into())
        }
    })
}

/// Sets `key`'s expiry to `expiry` (absolute; 0 = never) and, on OK, fills `*item`
/// (caller-owned) with the pinned item; release it with `p99_cache_item_release` (memcached
/// gat; an expiry already past returns the item this once and it is gone after). CAS is
/// unchanged. `key` is borrowed until return. NOT_FOUND on a miss (`*item` untouched).
/// Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn p99_cache_get_and_touch(
    cache: *const p99_cache,
    key: *const u8,
    key_len: usize,
    expiry: u32,
    item: *mut p99_cache_item,
) -> p99_status {
    guard(|| -> CResult {
        let c = c_arg!(handle cache)?;
        let key = c_arg!(slice key, key_len)?;
        let out = c_arg!(mut item)?;
        let it = c.cache.get_and_touch_ticketed(key, expiry)?.ok_or(p99_status::NotFound)?;
        fill_item(out, it, pin_tag(c));
        Ok(())
    })
}

/// Releases a pinned item and clears `*item`. INVALID_STATE if `*item` holds no pin (a second
/// release of the same struct or of a copy of it, or a zeroed struct), INVALID_ARGUMENT if it
/// was pinned by another cache (or is garbage); nothing is released then, and no other
/// reader's pin is touched. Lock-free (one compare-and-swap on the pin's ticket and an atomic
/// decrement), except when it is the last pin of a segment emptied meanwhile, which it then
/// frees under the shard lock. Callable from any thread; the struct must not be used by another
/// thread at the same time.
#[no_mangle]
pub unsafe extern "C" fn p99_cache_item_release(
    cache: *const p99_cache,
    item: *mut p99_cache_item,
) -> p99_status {
    guard(|| -> CResult {
        let c = c_arg!(handle cache)?;
        let it = c_arg!(mut item)?;
        if it.pin_magic == 0 {
            return Err(p99_status::InvalidState.into());
        }
        if (it.pin_magic >> 32) as u32 != pin_tag(c) {
            return Err(Failure::invalid("`item` was pinned by another cache"));
        }
        let ticket =
            PinTicket { shard: it.pin_shard, slot: it.pin_slot, generation: it.pin_magic as u32 };
        // A ticket already consumed (through this struct or a copy) is INVALID_STATE and
        // releases nothing.
        c.cache.release_ticket(ticket)?;
        *it = p99_cache_item::default();
        Ok(())
    })
}

/// memcached's mg with its per-item state, in one critical section of the key's shard: looks
/// up `key` (borrowed until return), creating an empty item on a miss with
/// `P99_CACHE_MG_VIVIFY`; decides whether this caller wins the token to refresh the item
/// (it was just created, or is stale, or expires before `recache_expiry` with
/// `P99_CACHE_MG_RECACHE`, and no token was handed out since it was written or marked
/// stale); then applies `touch_expiry`, the win mark and the read (unless
/// `P99_CACHE_MG_NO_BUMP`). On OK `*item` (caller-owned) holds the item pinned as read, with
/// its new expiry (release it with `p99_cache_item_release`), and `*info` (caller sets
/// `info->struct_size` first) its state before this call and what the call did.
/// NOT_FOUND on a miss (outputs untouched). NULL_PARAMETER / INVALID_ARGUMENT (bad
/// `struct_size`, unknown flag bits, key length 0 or > 250) as usual; TOO_LARGE /
/// OUT_OF_MEMORY when creating the item, or moving it to a new expiry or its first win mark,
/// finds no room (nothing pinned). Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn p99_cache_meta_get(
    cache: *const p99_cache,
    key: *const u8,
    key_len: usize,
    args: *const p99_cache_meta_get_args,
    item: *mut p99_cache_item,
    info: *mut p99_cache_meta_info,
) -> p99_status {
    guard(|| -> CResult {
        let c = c_arg!(handle cache)?;
        let key = c_arg!(slice key, key_len)?;
        let a = c_arg!(versioned_in args, p99_cache_meta_get_args::default())?;
        let out = c_arg!(mut item)?;
        let info_out = c_arg!(versioned_out info)?;
        check_flags(a.flags, 63, "args")?;
        let has = |bit: u32| a.flags & bit != 0;
        let mg = MetaGet {
            bump: !has(P99_CACHE_MG_NO_BUMP),
            touch: has(P99_CACHE_MG_TOUCH).then_some(a.touch_expiry),
            vivify: has(P99_CACHE_MG_VIVIFY).then_some(a.vivify_expiry),
            recache: has(P99_CACHE_MG_RECACHE).then_some(a.recache_expiry),
            touch_before_recache: has(P99_CACHE_MG_TOUCH_BEFORE_RECACHE),
            claim_win: !has(P99_CACHE_MG_NO_WIN),
        };
        let (it, m) = c.cache.meta_get_ticketed(key, &mg)?.ok_or(p99_status::NotFound)?;
        info_out.write(meta_info_to_c(&m, c.cache.now()));
        fill_item(out, it, pin_tag(c));
        Ok(())
    })
}

fn meta_info_to_c(m: &MetaInfo, now: u32) -> p99_cache_meta_info {
    let bit = |on: bool, b: u32| if on { b } else { 0 };
    p99_cache_meta_info {
        struct_size: struct_size::<p99_cache_meta_info>(),
        flags: bit(m.fetched, P99_CACHE_META_FETCHED)
            | bit(m.stale, P99_CACHE_META_STALE)
            | bit(m.win_token_sent, P99_CACHE_META_WIN_TOKEN_SENT)
            | bit(m.won, P99_CACHE_META_WON)
            | bit(m.created, P99_CACHE_META_CREATED)
            | bit(m.key_binary, P99_CACHE_META_KEY_BINARY),
        last_access: now.saturating_sub(m.written_at),
        item_bytes: m.item_bytes,
        expiry_before: m.expiry_before,
    }
}

/// memcached's md with C and I (`*args` borrowed until return; see the `P99_CACHE_MD_*`
/// bits): deletes `key`, or with `P99_CACHE_MD_MARK_STALE` keeps it marked stale with a new
/// CAS and its win token taken back (the next `p99_cache_meta_get` wins it). NOT_FOUND if
/// absent, EXISTS when `P99_CACHE_MD_CHECK_CAS` is set and the CAS differs; OUT_OF_MEMORY
/// when marking finds no room (nothing changed). Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn p99_cache_meta_delete(
    cache: *const p99_cache,
    key: *const u8,
    key_len: usize,
    args: *const p99_cache_meta_delete_args,
) -> p99_status {
    guard(|| -> CResult {
        let c = c_arg!(handle cache)?;
        let key = c_arg!(slice key, key_len)?;
        let a = c_arg!(versioned_in args, p99_cache_meta_delete_args::default())?;
        check_flags(
            a.flags,
            P99_CACHE_MD_CHECK_CAS | P99_CACHE_MD_MARK_STALE | P99_CACHE_MD_SET_EXPIRY,
            "args",
        )?;
        let d = MetaDelete {
            cas: (a.flags & P99_CACHE_MD_CHECK_CAS != 0).then_some(a.cas),
            mark_stale: a.flags & P99_CACHE_MD_MARK_STALE != 0,
            stale_expiry: (a.flags & P99_CACHE_MD_SET_EXPIRY != 0).then_some(a.expiry),
        };
        c.cache.meta_delete(key, &d)?;
        Ok(())
    })
}

/// Deletes `key` (borrowed until return). NOT_FOUND if absent. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn p99_cache_delete(
    cache: *const p99_cache,
    key: *const u8,
    key_len: usize,
) -> p99_status {
    guard(|| -> CResult {
        let c = c_arg!(handle cache)?;
        let key = c_arg!(slice key, key_len)?;
        c.cache.delete(key)?;
        Ok(())
    })
}

/// Sets `key`'s expiry (absolute; 0 = never), keeping value, flags and CAS. `key` is
/// borrowed until return. NOT_FOUND if absent. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn p99_cache_touch(
    cache: *const p99_cache,
    key: *const u8,
    key_len: usize,
    expiry: u32,
) -> p99_status {
    guard(|| -> CResult {
        let c = c_arg!(handle cache)?;
        let key = c_arg!(slice key, key_len)?;
        c.cache.touch(key, expiry)?;
        Ok(())
    })
}

#[allow(clippy::too_many_arguments)] // the C signature's arguments, passed through
unsafe fn delta(
    cache: *const p99_cache,
    key: *const u8,
    key_len: usize,
    incr: bool,
    by: u64,
    expect_cas: u64,
    value_out: *mut u64,
    cas_out: *mut u64,
) -> p99_status {
    guard(|| -> CResult {
        let c = c_arg!(handle cache)?;
        let key = c_arg!(slice key, key_len)?;
        let out = c_arg!(out value_out)?;
        let (v, cas) = c.cache.delta(key, incr, by, expect_cas)?;
        out.write(v);
        if let Some(out) = c_arg!(opt_out cas_out) {
            out.write(cas);
        }
        Ok(())
    })
}

/// memcached incr: adds `delta` to the decimal value of `key` (borrowed until return),
/// wrapping at 2^64; the new value goes to `*value_out`, the new CAS to `*cas_out` (optional,
/// may be NULL); outputs are written only on OK. A shorter
/// result is padded with spaces to the old length, a longer one grows the item; flags and
/// expiry are kept. NOT_FOUND if absent, NON_NUMERIC if the value is not a decimal u64.
/// Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn p99_cache_incr(
    cache: *const p99_cache,
    key: *const u8,
    key_len: usize,
    delta: u64,
    value_out: *mut u64,
    cas_out: *mut u64,
) -> p99_status {
    // SAFETY: the arguments are this function's own, passed on unchanged, so delta's contract is
    // exactly this function's C contract.
    unsafe { self::delta(cache, key, key_len, true, delta, 0, value_out, cas_out) }
}

/// memcached decr: subtracts `delta`, stopping at 0; otherwise as `p99_cache_incr`.
/// Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn p99_cache_decr(
    cache: *const p99_cache,
    key: *const u8,
    key_len: usize,
    delta: u64,
    value_out: *mut u64,
    cas_out: *mut u64,
) -> p99_status {
    // SAFETY: the arguments are this function's own, passed on unchanged, so delta's contract is
    // exactly this function's C contract.
    unsafe { self::delta(cache, key, key_len, false, delta, 0, value_out, cas_out) }
}

/// incr (`incr` true) or decr of `key` as `p99_cache_incr`/`p99_cache_decr`, only if the
/// item's CAS equals `expect_cas` when that is nonzero (else EXISTS, nothing changed;
/// memcached's `ma C`). Thread-safe.
#[no_mangle]
#[allow(clippy::too_many_arguments)] // one call, as memcached's ma takes it
pub unsafe extern "C" fn p99_cache_delta(
    cache: *const p99_cache,
    key: *const u8,
    key_len: usize,
    incr: bool,
    delta: u64,
    expect_cas: u64,
    value_out: *mut u64,
    cas_out: *mut u64,
) -> p99_status {
    // SAFETY: the arguments are this function's own, passed on unchanged, so delta's contract is
    // exactly this function's C contract.
    unsafe { self::delta(cache, key, key_len, incr, delta, expect_cas, value_out, cas_out) }
}

/// memcached flush_all: every item stored before now + `delay_seconds` is gone from that
/// moment on (at once when 0). A later call replaces a pending one. Pinned items stay
/// readable until released. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn p99_cache_flush_all(
    cache: *const p99_cache,
    delay_seconds: u32,
) -> p99_status {
    guard(|| -> CResult {
        let c = c_arg!(handle cache)?;
        c.cache.flush_all(delay_seconds)?;
        Ok(())
    })
}

/// The cache clock now, in unix seconds (the time base of every expiry); 0 if `cache` is
/// NULL. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn p99_cache_now(cache: *const p99_cache) -> u32 {
    guard_or(0, || match c_arg!(handle cache) {
        Ok(c) => c.cache.now(),
        Err(_) => 0,
    })
}

/// Sets the manual clock (config `manual_clock`) to `unix_seconds`. INVALID_STATE on a cache
/// using the system clock. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn p99_cache_set_time(
    cache: *const p99_cache,
    unix_seconds: u32,
) -> p99_status {
    guard(|| -> CResult {
        let c = c_arg!(handle cache)?;
        c.cache.check()?;
        c.cache.set_time(unix_seconds)?;
        Ok(())
    })
}

/// Converts a memcached exptime into an absolute expiry on this cache's clock, as memcached
/// 1.6 does: 0 = never (0); 1..2592000 (30 days) = seconds from now; larger = absolute unix
/// time; negative, or an absolute time not in the future = already expired (a nonzero time
/// not after now: a write with it replaces the old item, and the new one is never returned).
/// Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn p99_cache_expiry_from_exptime(
    cache: *const p99_cache,
    exptime: i64,
    expiry_out: *mut u32,
) -> p99_status {
    guard(|| -> CResult {
        let c = c_arg!(handle cache)?;
        let out = c_arg!(out expiry_out)?;
        c.cache.check()?;
        out.write(c.cache.expiry_from_exptime(exptime));
        Ok(())
    })
}

fn stats_to_c(s: &Stats) -> p99_cache_stats {
    p99_cache_stats {
        struct_size: struct_size::<p99_cache_stats>(),
        shards: s.shards as u32,
        items: s.items,
        item_bytes: s.item_bytes,
        key_value_bytes: s.key_value_bytes,
        total_bytes: s.total_bytes,
        segment_bytes_allocated: s.segment_bytes_allocated,
        hash_bytes: s.hash_bytes,
        heap_limit_bytes: s.heap_limit_bytes,
        hits: s.hits,
        misses: s.misses,
        sets: s.sets,
        deletes: s.deletes,
        touches: s.touches,
        evictions: s.evictions,
        evicted_items: s.evicted_items,
        merged_items: s.merged_items,
        expirations: s.expirations,
        expired_segments: s.expired_segments,
        flushes: s.flushes,
        segments_total: s.segments_total,
        segments_used: s.segments_used,
        segments_free: s.segments_free,
        segments_retired: s.segments_retired,
        pinned: s.pinned,
        table_grows: s.table_grows,
    }
}

/// Fills `*stats` (caller sets `stats->struct_size` first; INVALID_ARGUMENT if smaller than
/// the first published version of the struct). At most `struct_size` bytes are written
/// (fields this library does not know are zeroed), and `struct_size` is left as the caller
/// set it. Thread-safe (locks each shard briefly).
#[no_mangle]
pub unsafe extern "C" fn p99_cache_get_stats(
    cache: *const p99_cache,
    stats: *mut p99_cache_stats,
) -> p99_status {
    guard(|| -> CResult {
        let c = c_arg!(handle cache)?;
        let out = c_arg!(versioned_out stats)?;
        c.cache.check()?;
        out.write(stats_to_c(&c.cache.stats()));
        Ok(())
    })
}
