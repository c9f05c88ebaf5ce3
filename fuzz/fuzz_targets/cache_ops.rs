//! `p99_cache` operation sequences through the C ABI, checked against a plain model.
//!
//! Each input picks a tiny configuration (one shard of 4..12 segments of 4 or 8 KiB, FIFO or
//! merge eviction, CAS on or off, the manual clock) and then runs a sequence of C calls:
//! one-call and two-phase writes in every mode (reservations left open across other calls
//! and committed later), get and gat with the pin held across later calls and released in
//! any order, second releases of a struct and releases through copies, incr/decr, delete,
//! touch, flush_all now and delayed, clock moves. The model is memcached's semantics.
//!
//! What is asserted where the store is deterministic (and where, since the per-step checks
//! are what each call returns and the aggregate ones run at check points):
//! - a read never returns a value, flags, CAS or expiry the model does not have, and a key
//!   the model says is gone is never found (no resurrection): `op_read`, `check_write`,
//!   `op_delta`, `op_delete`, `op_touch`, every step, and the final sweep in `finish`;
//! - a pinned item's bytes stay exactly as read until its release, whatever happens
//!   meanwhile: `release_pin`, at every release and at the end of the input;
//! - a second release (same struct, or another copy of one already released) or a forged
//!   ticket returns a refusal status and releases nothing (`op_bad_release`: the `pinned`
//!   gauge still equals the pins held right after it); the `pinned` gauge equals the pins
//!   held (`check_stats`: step kind 19, after every refused release, and at the end of every
//!   input, before and after the held pins are released); `p99_cache_free` refuses (BUSY)
//!   while one is held (`finish`);
//! - every status equals the model's, except where the store may lose an item: a miss (or
//!   the NOT_STORED/NOT_FOUND a miss implies) is accepted for a key the model has only if
//!   the store evicted live items after that key was last written; OUT_OF_MEMORY only while
//!   pins are held (every segment may be pinned), and from reserve exactly when the open
//!   reservations would pass the reservation allowance (one shard: a quarter of the heap, at
//!   least item_max; small ones may use an eighth more).
//!
//! Cost: an input is up to 4,000 store calls, so the harness keeps its own work per call
//! small: keys are fixed byte strings indexed by number (the model is an array, no hashing or
//! key copies), values are slices of one pattern buffer or short inline strings (nothing is
//! allocated unless a write succeeds), pins share the model's value bytes, the model's
//! expiry sweep runs only when the clock has reached its earliest expiry, the eviction count
//! is read from the stats only when a call that can evict ran since the last reading, and
//! the per-input vectors keep their capacity from one input to the next.
#![no_main]

use std::cell::RefCell;
use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use p99::ffi::cache::*;
use p99::ffi::status::p99_status as S;
use p99_fuzz::Bytes;

const T0: u32 = 1_700_000_000;
const NKEYS: usize = 10;
const MAX_PINS: usize = 12;
const MAX_RESERVATIONS: usize = 4;
/// Released structs kept for second releases.
const MAX_STALE: usize = 32;

#[derive(Clone, Debug)]
struct MItem {
    /// Shared with the pins read from this version (they must see exactly these bytes).
    value: Rc<[u8]>,
    flags: u32,
    expiry: u32,
    cas: u64,
    /// The store's `evicted_items` just before this version was written: the item may be
    /// missing later only if that counter has grown since.
    evicted_before: u64,
}

/// A key the harness uses: one of the NKEYS model keys (`slot`), or one the store must refuse
/// (`slot` None: empty, or 251 bytes).
#[derive(Clone, Copy)]
struct Key {
    bytes: &'static [u8],
    slot: Option<usize>,
}

/// The keys, made once: `k0:` .. `k9:` padded with `k` to lengths from 3 to 250 bytes; then
/// the two invalid ones.
fn key_table() -> &'static [Vec<u8>; NKEYS + 2] {
    static KEYS: OnceLock<[Vec<u8>; NKEYS + 2]> = OnceLock::new();
    KEYS.get_or_init(|| {
        std::array::from_fn(|i| match i {
            NKEYS => Vec::new(),
            i if i > NKEYS => vec![b'x'; 251],
            i => {
                let mut k = format!("k{i}:").into_bytes();
                k.resize(3 + (i * 53) % 250, b'k');
                k
            }
        })
    })
}

/// A value to write: a slice of the pattern buffer, or a short string built in place.
#[derive(Clone, Copy)]
enum Value {
    Pattern(&'static [u8]),
    Inline([u8; 64], u8),
}

impl Value {
    fn bytes(&self) -> &[u8] {
        match self {
            Value::Pattern(s) => s,
            Value::Inline(buf, n) => &buf[..*n as usize],
        }
    }
}

/// A pin held by the "C caller": the struct the library filled, and what it said then.
struct Pin {
    item: p99_cache_item,
    value: Rc<[u8]>,
    key: &'static [u8],
}

struct Pending {
    res: Box<p99_cache_reservation>,
    key: Key,
    value: Value,
    flags: u32,
    expiry: u32,
    written: usize,
}

/// Hashes a CAS value (already spread over 64 bits) with one multiplication.
#[derive(Default)]
struct CasHasher(u64);

impl Hasher for CasHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (n ^ (n >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type CasSet = HashSet<u64, BuildHasherDefault<CasHasher>>;

/// The per-input collections, kept (empty) between inputs so their capacity is reused.
#[derive(Default)]
struct Buffers {
    pins: Vec<Pin>,
    stale: VecDeque<p99_cache_item>,
    pending: Vec<Pending>,
    seen_cas: CasSet,
    scratch: Vec<u8>,
}

thread_local! {
    static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers::default());
}

struct Run<'a> {
    b: Bytes<'a>,
    cache: *mut p99_cache,
    item_max: usize,
    /// The shard's reservation allowance (the cache's default for one shard).
    reserve_limit: usize,
    cas_on: bool,
    now: u32,
    flush_at: Option<u32>,
    model: [Option<MItem>; NKEYS],
    /// At most the earliest non-zero expiry in the model: `settle` sweeps only from then.
    next_expiry: u32,
    /// The store's `evicted_items` as last read, while no call that can evict has run since.
    /// Only writes can (store, commit, incr/decr, touch and gat reach the segment allocator,
    /// each at most once per call), and one evicts only when no segment is free.
    evicted_known: Option<u64>,
    /// How many more such calls cannot evict: the free segments at the last reading (only
    /// the allocator takes free segments, one per call at most; nothing else does).
    no_evict_calls: u64,
    pins: Vec<Pin>,
    /// Structs whose pin was already released (by themselves or through a copy).
    stale: VecDeque<p99_cache_item>,
    pending: Vec<Pending>,
    seen_cas: CasSet,
    /// Room for a reservation write that runs past the declared length.
    scratch: Vec<u8>,
    step: usize,
    /// `P99_FUZZ_TRACE=1`: print every operation and result (for reading a crash).
    trace: bool,
}

fn copy_item(i: &p99_cache_item) -> p99_cache_item {
    p99_cache_item { ..*i }
}

/// memcached's reading of a counter, for the values this target writes (no sign, no leading
/// blank): decimal digits, then the end or a blank.
fn model_number(v: &[u8]) -> Option<u64> {
    let digits = v.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    if digits < v.len() && !matches!(v[digits], b' ' | b'\t' | b'\r' | b'\n' | 0x0b | 0x0c) {
        return None;
    }
    std::str::from_utf8(&v[..digits]).ok()?.parse::<u64>().ok()
}

/// Bytes `len` long (at most a segment), a pattern that changes with `seed` so values differ
/// between writes. Sliced from one buffer made once: byte-by-byte generation under the
/// fuzzer's comparison tracing cost more than the store calls.
fn pattern(len: usize, seed: u8) -> &'static [u8] {
    static BUF: OnceLock<Vec<u8>> = OnceLock::new();
    let buf =
        BUF.get_or_init(|| (0..8192 + 256).map(|i| b'a' + ((i * 7 + i / 26) % 26) as u8).collect());
    let start = seed as usize;
    &buf[start..start + len.min(8192)]
}

fn trace_on() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("P99_FUZZ_TRACE").is_some())
}

/// What a write the model accepts leaves under its key.
enum NewValue {
    Whole,
    Append(MItem),
    Prepend(MItem),
}

impl<'a> Run<'a> {
    fn stats(&self) -> p99_cache_stats {
        let mut s = p99_cache_stats {
            struct_size: std::mem::size_of::<p99_cache_stats>() as u32,
            ..Default::default()
        };
        // SAFETY: live cache from p99_cache_new; `s` is a full-size stats struct.
        let st = unsafe { p99_cache_get_stats(self.cache, &mut s) };
        assert_eq!(st, S::Ok);
        s
    }

    /// The store's `evicted_items` now. Read from the stats only when a call that may have
    /// evicted ran since the last reading: the counter grows only in the segment allocator,
    /// which only writes reach (each of their calls is followed by `may_have_evicted`).
    fn evicted(&mut self) -> u64 {
        match self.evicted_known {
            Some(n) => n,
            None => self.read_stats().evicted_items,
        }
    }

    /// The stats, noting the eviction count and free segments for `evicted`.
    fn read_stats(&mut self) -> p99_cache_stats {
        let s = self.stats();
        self.evicted_known = Some(s.evicted_items);
        self.no_evict_calls = s.segments_free;
        s
    }

    /// Called after every store call that can allocate segment space: it evicted nothing if
    /// a segment was free for it.
    fn may_have_evicted(&mut self) {
        if self.no_evict_calls > 0 {
            self.no_evict_calls -= 1;
        } else {
            self.evicted_known = None;
        }
    }

    /// Puts `m` under `slot`, keeping `next_expiry` at most its expiry.
    fn model_put(&mut self, slot: usize, m: MItem) {
        if m.expiry != 0 {
            self.next_expiry = self.next_expiry.min(m.expiry);
        }
        self.model[slot] = Some(m);
    }

    fn model_set_expiry(&mut self, slot: usize, expiry: u32) {
        if expiry != 0 {
            self.next_expiry = self.next_expiry.min(expiry);
        }
        self.model[slot].as_mut().expect("the model has the key").expiry = expiry;
    }

    /// The model after every due delayed flush and expiry, as the store sees it on each call.
    /// The sweep runs only once the clock reaches `next_expiry`, and sets it anew.
    fn settle(&mut self) {
        if let Some(t) = self.flush_at {
            if self.now >= t {
                self.model = Default::default();
                self.flush_at = None;
            }
        }
        let now = self.now;
        if now < self.next_expiry {
            return;
        }
        let mut next = u32::MAX;
        for slot in self.model.iter_mut() {
            if let Some(it) = slot {
                if it.expiry != 0 && it.expiry <= now {
                    *slot = None;
                } else if it.expiry != 0 {
                    next = next.min(it.expiry);
                }
            }
        }
        self.next_expiry = next;
    }

    /// The store lost `key`, which the model has: only eviction after its last write may do that.
    fn lost(&mut self, key: Key, what: &str) {
        let slot = key.slot.expect("lost() is called for a model key");
        let before = self.model[slot].as_ref().expect("lost() is called for a key the model has");
        let before = before.evicted_before;
        let now_evicted = self.evicted();
        assert!(
            now_evicted > before,
            "step {}: {what}: the store lost {:?} without evicting anything since it was written \
             (evicted_items {} then, {} now)",
            self.step,
            String::from_utf8_lossy(key.bytes),
            before,
            now_evicted
        );
        self.model[slot] = None;
    }

    fn oom_allowed(&self, what: &str) {
        assert!(
            !self.pins.is_empty(),
            "step {}: {what}: OUT_OF_MEMORY with no pin held",
            self.step
        );
    }

    fn new_cas(&mut self, cas: u64) {
        if self.cas_on {
            assert_ne!(cas, 0, "step {}: CAS 0 with CAS on", self.step);
            assert!(self.seen_cas.insert(cas), "step {}: CAS {cas} handed out twice", self.step);
        } else {
            assert_eq!(cas, 0, "step {}: CAS with CAS off", self.step);
        }
    }

    fn key(&mut self) -> Key {
        let keys = key_table();
        match self.b.u8() {
            // Now and then a key the store must refuse.
            0 => Key { bytes: &keys[NKEYS], slot: None },
            1 => Key { bytes: &keys[NKEYS + 1], slot: None },
            k => {
                let i = k as usize % NKEYS;
                Key { bytes: &keys[i], slot: Some(i) }
            }
        }
    }

    /// The model's item under `key` (a cheap copy: the value is shared).
    fn present(&self, key: Key) -> Option<MItem> {
        key.slot.and_then(|i| self.model[i].clone())
    }

    fn expiry(&mut self) -> u32 {
        match self.b.u8() % 10 {
            0..=5 => 0,
            6..=8 => self.now + 1 + self.b.below(10) as u32,
            _ => self.now - self.b.below(3) as u32, // already expired
        }
    }

    fn value(&mut self, key_len: usize) -> Value {
        let room = self.item_max.saturating_sub(key_len + P99_CACHE_ITEM_HEADER_MAX as usize);
        match self.b.u8() % 10 {
            0 => Value::Pattern(&[]),
            1..=3 => {
                let n = match self.b.u8() % 4 {
                    0 => u64::MAX - self.b.below(3) as u64,
                    1 => self.b.below(3) as u64,
                    _ => self.b.u64() >> self.b.below(64),
                };
                let mut buf = [b' '; 64];
                let mut rest = &mut buf[..];
                std::io::Write::write_fmt(&mut rest, format_args!("{n}")).expect("20 digits fit");
                let digits = 64 - rest.len();
                // Blanks after the number (already in the buffer).
                Value::Inline(buf, (digits + self.b.below(3)) as u8)
            }
            // Large: fills segments quickly so eviction runs; sometimes just past the limit.
            4 | 5 => {
                let len = if self.b.chance(10) {
                    room + 1 + self.b.below(16)
                } else {
                    self.b.below(room + 1)
                };
                Value::Pattern(pattern(len, self.b.u8()))
            }
            _ => {
                let n = 1 + self.b.below(48);
                let raw = self.b.take(n);
                let mut buf = [0u8; 64];
                for (d, c) in buf.iter_mut().zip(raw) {
                    *d = b"abcdefghijklmnopqrstuvwxyz0123456789"[*c as usize % 36];
                }
                if !raw.is_empty() && buf[0].is_ascii_digit() && self.b.chance(50) {
                    buf[0] = b'q';
                }
                Value::Inline(buf, raw.len() as u8)
            }
        }
    }

    fn mode(&mut self) -> u32 {
        match self.b.u8() % 10 {
            0..=3 => P99_CACHE_MODE_SET,
            4 => P99_CACHE_MODE_ADD,
            5 => P99_CACHE_MODE_REPLACE,
            6 | 7 => P99_CACHE_MODE_CAS,
            8 => P99_CACHE_MODE_APPEND,
            _ => P99_CACHE_MODE_PREPEND,
        }
    }

    fn too_large(&self, key_len: usize, value_len: usize) -> bool {
        key_len + value_len + P99_CACHE_ITEM_HEADER_MAX as usize > self.item_max
    }

    /// Checks the result of a write of `value` under `key` with `mode` against the model, and
    /// updates the model. `evicted_before` was read before the call.
    #[allow(clippy::too_many_arguments)]
    fn check_write(
        &mut self,
        key: Key,
        value: &[u8],
        flags: u32,
        expiry: u32,
        mode: u32,
        cas_in: u64,
        got: Result<u64, S>,
        evicted_before: u64,
    ) {
        self.settle();
        let present = self.present(key);
        if self.trace {
            eprintln!("step {} now {}: write mode {mode} key {:.6?} len {} expiry {expiry} -> {got:?}; model had {:?}",
                self.step, self.now, String::from_utf8_lossy(key.bytes), value.len(), present.as_ref().map(|m| (m.value.len(), m.expiry)));
        }
        let key_len = key.bytes.len();
        // The model's answer; a new value is only built once the store said OK too.
        let want: Result<NewValue, S> = if key.slot.is_none() {
            Err(S::InvalidArgument)
        } else if self.too_large(key_len, value.len()) {
            Err(S::TooLarge)
        } else {
            match (mode, &present) {
                (P99_CACHE_MODE_ADD, Some(_)) => Err(S::NotStored),
                (P99_CACHE_MODE_REPLACE | P99_CACHE_MODE_APPEND | P99_CACHE_MODE_PREPEND, None) => {
                    Err(S::NotStored)
                }
                (P99_CACHE_MODE_CAS, None) => Err(S::NotFound),
                (P99_CACHE_MODE_CAS, Some(m)) if !self.cas_on || m.cas != cas_in => Err(S::Exists),
                (P99_CACHE_MODE_APPEND | P99_CACHE_MODE_PREPEND, Some(m)) => {
                    if self.too_large(key_len, m.value.len() + value.len()) {
                        Err(S::TooLarge)
                    } else if mode == P99_CACHE_MODE_APPEND {
                        Ok(NewValue::Append(m.clone()))
                    } else {
                        Ok(NewValue::Prepend(m.clone()))
                    }
                }
                _ => Ok(NewValue::Whole),
            }
        };
        match (got, want) {
            (Ok(cas), Ok(new)) => {
                self.new_cas(cas);
                let m = match new {
                    NewValue::Whole => {
                        MItem { value: value.into(), flags, expiry, cas, evicted_before }
                    }
                    NewValue::Append(m) => MItem {
                        value: [&m.value[..], value].concat().into(),
                        evicted_before,
                        cas,
                        ..m
                    },
                    NewValue::Prepend(m) => MItem {
                        value: [value, &m.value[..]].concat().into(),
                        evicted_before,
                        cas,
                        ..m
                    },
                };
                self.model_put(key.slot.expect("valid key"), m);
            }
            // Nothing written; eviction may have run before the store gave up, and whether it
            // took this key is not known here: the model keeps the old item, and a later miss
            // is accepted by the eviction rule (lost()), a later hit must show the old item.
            (Err(S::OutOfMemory), Ok(_)) => self.oom_allowed("write"),
            // A miss where the model has the item: the store must have evicted it.
            // (An append/prepend the model finds too large: the store, without the item, answers
            // NOT_STORED before it could compare sizes.)
            (Err(S::NotStored | S::NotFound), Ok(_))
            | (Err(S::NotFound), Err(S::Exists))
            | (Err(S::NotStored), Err(S::TooLarge))
                if present.is_some() =>
            {
                self.lost(key, "write");
            }
            // An add the model refuses gets as far as allocating only if the store lost the item.
            (Err(S::OutOfMemory), Err(S::NotStored))
                if mode == P99_CACHE_MODE_ADD && present.is_some() =>
            {
                self.oom_allowed("add");
                self.lost(key, "add");
            }
            (Ok(cas), Err(S::NotStored)) if mode == P99_CACHE_MODE_ADD && present.is_some() => {
                self.lost(key, "add");
                self.new_cas(cas);
                self.model_put(
                    key.slot.expect("valid key"),
                    MItem { value: value.into(), flags, expiry, cas, evicted_before },
                );
            }
            (Err(g), Err(w)) if g == w => {}
            (g, w) => panic!(
                "step {}: write mode {mode}: store {g:?}, model {:?}",
                self.step,
                w.map(|_| "OK")
            ),
        }
    }

    fn cas_guess(&mut self, key: Key) -> u64 {
        let known = key.slot.and_then(|i| self.model[i].as_ref()).map(|m| m.cas);
        match (known, self.b.chance(70)) {
            (Some(cas), true) => cas,
            _ => self.b.u64() | 1,
        }
    }

    fn op_store(&mut self) {
        let key = self.key();
        let value = self.value(key.bytes.len());
        let flags = if self.b.chance(30) { self.b.u32() } else { 0 };
        let expiry = self.expiry();
        let mode = self.mode();
        let cas_in = self.cas_guess(key);
        let before = self.evicted();
        let mut cas = 0u64;
        let v = value.bytes();
        // SAFETY: live cache; key/value slices valid for their lengths; `cas` writable.
        let st = unsafe {
            p99_cache_store(
                self.cache,
                key.bytes.as_ptr(),
                key.bytes.len(),
                v.as_ptr(),
                v.len(),
                flags,
                expiry,
                mode,
                cas_in,
                &mut cas,
            )
        };
        self.may_have_evicted();
        let got = if st == S::Ok { Ok(cas) } else { Err(st) };
        self.check_write(key, v, flags, expiry, mode, cas_in, got, before);
    }

    /// Whether a reservation of `n` bytes (key and value) stays within the allowance. The store
    /// charges each reservation its buffer's length: writes of up to 4 KiB get a recycled buffer
    /// of 256 B, 1 KiB or 4 KiB, larger ones exactly their size.
    fn reservation_fits(&self, n: usize) -> bool {
        fn charge(n: usize) -> usize {
            [256, 1024, 4096].into_iter().find(|&c| n <= c).unwrap_or(n)
        }
        let held: usize =
            self.pending.iter().map(|p| charge(p.key.bytes.len() + p.value.bytes().len())).sum();
        let n = charge(n);
        let cap = if n <= self.reserve_limit / 128 {
            self.reserve_limit + self.reserve_limit / 8
        } else {
            self.reserve_limit
        };
        held + n <= cap
    }

    fn op_reserve(&mut self) {
        if self.pending.len() >= MAX_RESERVATIONS {
            return;
        }
        let key = self.key();
        let value = self.value(key.bytes.len());
        let value_len = value.bytes().len();
        let flags = self.b.u32();
        let expiry = self.expiry();
        let mut res = Box::new(p99_cache_reservation {
            value: std::ptr::null_mut(),
            value_len: 0,
            state: std::ptr::null_mut(),
        });
        // SAFETY: live cache; key valid for its length; `res` writable.
        let st = unsafe {
            p99_cache_reserve(
                self.cache,
                key.bytes.as_ptr(),
                key.bytes.len(),
                value_len,
                flags,
                expiry,
                &mut *res,
            )
        };
        let want = if key.slot.is_none() {
            S::InvalidArgument
        } else if self.too_large(key.bytes.len(), value_len) {
            S::TooLarge
        } else if !self.reservation_fits(key.bytes.len() + value_len) {
            S::OutOfMemory
        } else {
            S::Ok
        };
        assert_eq!(st, want, "step {}: reserve", self.step);
        if st == S::Ok {
            assert_eq!(res.value_len, value_len);
            assert!(!res.state.is_null());
            self.pending.push(Pending { res, key, value, flags, expiry, written: 0 });
        } else {
            assert!(res.state.is_null(), "step {}: a refused reserve filled the struct", self.step);
        }
    }

    fn op_fill(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let i = self.b.below(self.pending.len());
        let direct = self.b.chance(50);
        let over = self.b.chance(5);
        let p = &mut self.pending[i];
        let value = p.value.bytes();
        let left = value.len() - p.written;
        let n = if over { left + 1 } else { self.b.below(left + 1) };
        let st = if direct {
            if !over {
                // SAFETY: `value` has value_len writable bytes until commit/cancel; n <= left.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        value[p.written..].as_ptr(),
                        p.res.value.add(p.written),
                        n,
                    )
                };
            }
            // SAFETY: live reservation struct owned here.
            unsafe { p99_cache_reservation_advance(&mut *p.res, n) }
        } else {
            let src: &[u8] = if over {
                self.scratch.clear();
                self.scratch.extend_from_slice(&value[p.written..]);
                self.scratch.push(b'!');
                &self.scratch
            } else {
                &value[p.written..p.written + n]
            };
            // SAFETY: live reservation struct; `src` valid for its length.
            unsafe { p99_cache_reservation_write(&mut *p.res, src.as_ptr(), src.len()) }
        };
        if over {
            assert_eq!(st, S::InvalidState, "step {}: writing past the declared length", self.step);
        } else {
            assert_eq!(st, S::Ok, "step {}: reservation write/advance", self.step);
            p.written += n;
        }
    }

    fn op_commit(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let i = self.b.below(self.pending.len());
        let mode = if self.b.chance(3) { 6 + self.b.u8() as u32 } else { self.mode() };
        let key = self.pending[i].key;
        let cas_in = self.cas_guess(key);
        self.settle();
        let before = self.evicted();
        let mut p = self.pending.swap_remove(i);
        let mut cas = 0u64;
        // SAFETY: live cache; live reservation struct owned here; `cas` writable.
        let st = unsafe { p99_cache_commit(self.cache, &mut *p.res, mode, cas_in, &mut cas) };
        self.may_have_evicted();
        assert!(p.res.state.is_null(), "step {}: commit left the reservation live", self.step);
        let value = p.value.bytes();
        let unfinished = p.written != value.len();
        if mode > P99_CACHE_MODE_PREPEND {
            // Both refusals apply to an unfinished value with a bad mode; either is right.
            let ok = st == S::InvalidArgument || (unfinished && st == S::InvalidState);
            assert!(ok, "step {}: commit with mode {mode}: {st:?}", self.step);
        } else if unfinished {
            assert_eq!(st, S::InvalidState, "step {}: commit of an unfinished value", self.step);
        } else {
            let got = if st == S::Ok { Ok(cas) } else { Err(st) };
            self.check_write(p.key, value, p.flags, p.expiry, mode, cas_in, got, before);
        }
        // The struct is cleared: a second commit or cancel is refused.
        // SAFETY: as above.
        assert_eq!(
            unsafe { p99_cache_commit(self.cache, &mut *p.res, mode, cas_in, &mut cas) },
            S::InvalidState
        );
        // SAFETY: as above.
        assert_eq!(unsafe { p99_cache_cancel(&mut *p.res) }, S::InvalidState);
    }

    fn op_cancel(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let i = self.b.below(self.pending.len());
        let mut p = self.pending.swap_remove(i);
        // SAFETY: live reservation struct owned here.
        assert_eq!(unsafe { p99_cache_cancel(&mut *p.res) }, S::Ok);
        // SAFETY: as above; the struct is cleared now.
        assert_eq!(unsafe { p99_cache_cancel(&mut *p.res) }, S::InvalidState);
        let d = b"z";
        // SAFETY: as above.
        assert_eq!(
            unsafe { p99_cache_reservation_write(&mut *p.res, d.as_ptr(), 1) },
            S::InvalidState
        );
    }

    /// get or gat; the pin is kept (released later) or released at once.
    fn op_read(&mut self, touch: bool) {
        let key = self.key();
        let expiry = if touch { self.expiry() } else { 0 };
        let keep = self.pins.len() < MAX_PINS && self.b.chance(60);
        self.settle();
        let mut it = p99_cache_item::default();
        // SAFETY: live cache; key valid for its length; `it` writable.
        let st = unsafe {
            if touch {
                p99_cache_get_and_touch(
                    self.cache,
                    key.bytes.as_ptr(),
                    key.bytes.len(),
                    expiry,
                    &mut it,
                )
            } else {
                p99_cache_get(self.cache, key.bytes.as_ptr(), key.bytes.len(), &mut it)
            }
        };
        if touch {
            // gat rewrites the item when its expiry moves to another TTL bucket.
            self.may_have_evicted();
        }
        let Some(slot) = key.slot else {
            assert_eq!(st, S::InvalidArgument, "step {}: read of a bad key", self.step);
            return;
        };
        let present = self.model[slot].clone();
        if self.trace {
            eprintln!(
                "step {} now {}: {} key {:.6?} expiry {expiry} -> {st:?}; model had {:?}",
                self.step,
                self.now,
                if touch { "gat" } else { "get" },
                String::from_utf8_lossy(key.bytes),
                present.as_ref().map(|m| (m.value.len(), m.expiry))
            );
        }
        match (st, present) {
            (S::Ok, Some(m)) => {
                // SAFETY: a pinned item's key/value are valid for their lengths until release.
                let (v, k) = unsafe {
                    (
                        std::slice::from_raw_parts(it.value, it.value_len),
                        std::slice::from_raw_parts(it.key, it.key_len),
                    )
                };
                assert_eq!(k, key.bytes, "step {}: pinned item has another key", self.step);
                assert_eq!(
                    v,
                    &m.value[..],
                    "step {}: wrong value for {:?}",
                    self.step,
                    String::from_utf8_lossy(key.bytes)
                );
                assert_eq!(it.flags, m.flags, "step {}: flags", self.step);
                assert_eq!(it.cas, m.cas, "step {}: CAS (touch keeps it)", self.step);
                assert_eq!(
                    it.expiry,
                    if touch { expiry } else { m.expiry },
                    "step {}: expiry",
                    self.step
                );
                assert_ne!(it.pin_magic, 0);
                if touch {
                    self.model_set_expiry(slot, expiry);
                }
                // The pin keeps the bytes it was checked against (the model's, equal to the
                // store's as asserted above) to compare with at its release.
                let pin = Pin { item: it, value: m.value, key: key.bytes };
                if keep {
                    self.pins.push(pin);
                } else {
                    self.release_pin(pin);
                }
            }
            (S::Ok, None) => panic!(
                "step {}: read found {:?}, which the model does not have",
                self.step,
                String::from_utf8_lossy(key.bytes)
            ),
            (S::NotFound, Some(_)) => {
                assert_eq!(it.pin_magic, 0, "step {}: a miss filled the item", self.step);
                self.lost(key, if touch { "gat" } else { "get" });
            }
            (S::NotFound, None) => assert_eq!(it.pin_magic, 0),
            // As for writes: the old item stays in the model (its expiry unchanged).
            (S::OutOfMemory, Some(_)) if touch => self.oom_allowed("gat"),
            (st, p) => panic!("step {}: read: status {st:?}, model {p:?}", self.step),
        }
    }

    /// Releases a held pin after checking that its bytes did not change while it was held.
    fn release_pin(&mut self, mut pin: Pin) {
        // SAFETY: the pin is still held, so key/value are valid for their lengths.
        let (v, k) = unsafe {
            (
                std::slice::from_raw_parts(pin.item.value, pin.item.value_len),
                std::slice::from_raw_parts(pin.item.key, pin.item.key_len),
            )
        };
        assert_eq!(v, &pin.value[..], "step {}: a pinned value changed while pinned", self.step);
        assert_eq!(k, pin.key, "step {}: a pinned key changed while pinned", self.step);
        let through_copy = self.b.chance(25);
        let mut copy = copy_item(&pin.item);
        // SAFETY: live cache; the struct (or its copy) holds a live pin.
        let st = unsafe {
            p99_cache_item_release(self.cache, if through_copy { &mut copy } else { &mut pin.item })
        };
        assert_eq!(st, S::Ok, "step {}: release of a held pin", self.step);
        let released = if through_copy { &copy } else { &pin.item };
        assert_eq!(released.pin_magic, 0, "step {}: release did not clear the struct", self.step);
        // The other struct still carries the consumed ticket: it is stale now.
        if self.stale.len() == MAX_STALE {
            self.stale.pop_front();
        }
        self.stale.push_back(if through_copy { copy_item(&pin.item) } else { copy });
    }

    fn op_release(&mut self) {
        if self.pins.is_empty() {
            return;
        }
        let i = self.b.below(self.pins.len());
        let pin = self.pins.remove(i);
        self.release_pin(pin);
    }

    /// A release that must be refused: a stale struct, a zeroed one, or a forged ticket.
    fn op_bad_release(&mut self) {
        let (mut it, want): (p99_cache_item, &[S]) = match self.b.u8() % 3 {
            0 if !self.stale.is_empty() => {
                let i = self.b.below(self.stale.len());
                (copy_item(&self.stale[i]), &[S::InvalidState])
            }
            1 if !self.pins.is_empty() => {
                // A live pin's cache tag with a ticket that was never issued.
                let i = self.b.below(self.pins.len());
                let mut f = copy_item(&self.pins[i].item);
                // (Another slot is not forged: a live pin of another slot with the same
                // generation would be indistinguishable, as documented.)
                if self.b.chance(50) {
                    f.pin_magic ^= u64::from(self.b.u32() | 1);
                } else {
                    f.pin_shard = f.pin_shard.wrapping_add(1 + self.b.u8() as u32);
                }
                (f, &[S::InvalidState, S::InvalidArgument])
            }
            2 => {
                let mut f = p99_cache_item::default();
                f.pin_magic = self.b.u64();
                let want: &[S] =
                    if f.pin_magic == 0 { &[S::InvalidState] } else { &[S::InvalidArgument] };
                (f, want)
            }
            _ => (p99_cache_item::default(), &[S::InvalidState]),
        };
        // SAFETY: live cache; `it` is a caller-owned struct (its pointers are never read by
        // a refused release).
        let st = unsafe { p99_cache_item_release(self.cache, &mut it) };
        assert!(
            want.contains(&st),
            "step {}: a bad release returned {st:?}, want one of {want:?}",
            self.step
        );
        // Nothing was released: the gauge still equals the pins held.
        self.check_stats();
    }

    fn op_delta(&mut self) {
        let key = self.key();
        let incr = self.b.chance(50);
        let by = match self.b.u8() % 3 {
            0 => u64::MAX,
            1 => self.b.below(3) as u64,
            _ => self.b.u64() >> self.b.below(64),
        };
        self.settle();
        let before = self.evicted();
        let (mut v, mut cas) = (0u64, 0u64);
        let (kp, kl) = (key.bytes.as_ptr(), key.bytes.len());
        // SAFETY: live cache; key valid; outputs writable.
        let st = unsafe {
            if incr {
                p99_cache_incr(self.cache, kp, kl, by, &mut v, &mut cas)
            } else {
                p99_cache_decr(self.cache, kp, kl, by, &mut v, &mut cas)
            }
        };
        self.may_have_evicted();
        let Some(slot) = key.slot else {
            assert_eq!(st, S::InvalidArgument);
            return;
        };
        if self.trace {
            eprintln!(
                "step {} now {}: incr={incr} {:.6?} by {by} -> {st:?} {v}",
                self.step,
                self.now,
                String::from_utf8_lossy(key.bytes)
            );
        }
        let present = self.model[slot].as_ref();
        let want = match present {
            None => Err(S::NotFound),
            Some(m) => match model_number(&m.value) {
                None => Err(S::NonNumeric),
                Some(n) => Ok(if incr { n.wrapping_add(by) } else { n.saturating_sub(by) }),
            },
        };
        let present = present.is_some();
        match (st, want) {
            (S::Ok, Ok(w)) => {
                assert_eq!(v, w, "step {}: incr/decr result", self.step);
                self.new_cas(cas);
                let m = self.model[slot].as_mut().expect("the model has the key");
                let mut text = v.to_string().into_bytes();
                if text.len() < m.value.len() {
                    text.resize(m.value.len(), b' ');
                }
                m.value = text.into();
                m.cas = cas;
                m.evicted_before = before;
            }
            (S::NotFound, _) if present => self.lost(key, "incr/decr"),
            (S::OutOfMemory, Ok(_)) => self.oom_allowed("incr/decr"),
            (g, Err(w)) if g == w => {}
            (g, w) => panic!("step {}: incr/decr: store {g:?}, model {w:?}", self.step),
        }
    }

    fn op_delete(&mut self) {
        let key = self.key();
        self.settle();
        // SAFETY: live cache; key valid.
        let st = unsafe { p99_cache_delete(self.cache, key.bytes.as_ptr(), key.bytes.len()) };
        let Some(slot) = key.slot else {
            assert_eq!(st, S::InvalidArgument);
            return;
        };
        if self.trace {
            eprintln!(
                "step {} now {}: delete {:.6?} -> {st:?}",
                self.step,
                self.now,
                String::from_utf8_lossy(key.bytes)
            );
        }
        match (st, self.model[slot].is_some()) {
            (S::Ok, true) => self.model[slot] = None,
            (S::NotFound, false) => {}
            (S::NotFound, true) => self.lost(key, "delete"),
            (g, p) => panic!("step {}: delete: store {g:?}, model has it: {p}", self.step),
        }
    }

    fn op_touch(&mut self) {
        let key = self.key();
        let expiry = self.expiry();
        self.settle();
        // SAFETY: live cache; key valid.
        let st =
            unsafe { p99_cache_touch(self.cache, key.bytes.as_ptr(), key.bytes.len(), expiry) };
        // touch rewrites the item when its expiry moves to another TTL bucket.
        self.may_have_evicted();
        let Some(slot) = key.slot else {
            assert_eq!(st, S::InvalidArgument);
            return;
        };
        if self.trace {
            eprintln!(
                "step {} now {}: touch {:.6?} expiry {expiry} -> {st:?}",
                self.step,
                self.now,
                String::from_utf8_lossy(key.bytes)
            );
        }
        let present = self.model[slot].is_some();
        match (st, present) {
            (S::Ok, true) => self.model_set_expiry(slot, expiry),
            (S::NotFound, false) => {}
            (S::NotFound, true) => self.lost(key, "touch"),
            (S::OutOfMemory, true) => self.oom_allowed("touch"),
            (g, _) => {
                panic!("step {}: touch: store {g:?}, model {:?}", self.step, self.model[slot])
            }
        }
    }

    fn op_flush(&mut self) {
        let delay = if self.b.chance(50) { 0 } else { 1 + self.b.below(5) as u32 };
        // A pending flush already due has happened: apply it before this one replaces it.
        self.settle();
        // SAFETY: live cache.
        assert_eq!(unsafe { p99_cache_flush_all(self.cache, delay) }, S::Ok);
        self.flush_at = Some(self.now + delay);
        if self.trace {
            eprintln!("step {} now {}: flush_all delay {delay}", self.step, self.now);
        }
        self.settle();
    }

    fn op_clock(&mut self) {
        self.now += match self.b.u8() % 8 {
            0 => 30 + self.b.below(100) as u32,
            n => n as u32 % 4,
        };
        // SAFETY: live cache.
        assert_eq!(unsafe { p99_cache_set_time(self.cache, self.now) }, S::Ok);
        // SAFETY: live cache.
        assert_eq!(unsafe { p99_cache_now(self.cache) }, self.now);
    }

    /// The aggregate checks (a check point): step kind 19 and the end of every input.
    fn check_stats(&mut self) {
        let s = self.read_stats();
        assert_eq!(s.pinned as usize, self.pins.len(), "step {}: pinned gauge", self.step);
        assert!(
            s.segment_bytes_allocated <= s.heap_limit_bytes,
            "step {}: over the heap budget",
            self.step
        );
        if s.evictions > 0 {
            assert_eq!(
                s.segment_bytes_allocated, s.heap_limit_bytes,
                "step {}: evicted before the budget was used",
                self.step
            );
        }
    }

    fn finish(mut self) -> Buffers {
        self.step += 1;
        if !self.pins.is_empty() {
            // The gauge before the releases below, while pins are held.
            self.check_stats();
            // SAFETY: live cache; pins are held, so free must refuse and keep the cache.
            assert_eq!(unsafe { p99_cache_free(self.cache) }, S::Busy, "free with pins held");
        }
        while let Some(pin) = self.pins.pop() {
            self.release_pin(pin);
        }
        for mut p in self.pending.drain(..) {
            // SAFETY: live reservation struct owned here.
            assert_eq!(unsafe { p99_cache_cancel(&mut *p.res) }, S::Ok);
        }
        self.check_stats();
        if self.trace {
            let s = self.stats();
            eprintln!(
                "end: {} steps, evicted segments {} items {} merged {} expired items {} segments {} flushes {}",
                self.step, s.evictions, s.evicted_items, s.merged_items, s.expirations, s.expired_segments, s.flushes
            );
        }
        // Final sweep: every key reads back as the model says.
        self.settle();
        for (slot, key) in key_table()[..NKEYS].iter().enumerate() {
            let key = Key { bytes: key, slot: Some(slot) };
            let mut it = p99_cache_item::default();
            // SAFETY: live cache; key valid; `it` writable.
            let st =
                unsafe { p99_cache_get(self.cache, key.bytes.as_ptr(), key.bytes.len(), &mut it) };
            match (st, self.model[slot].as_ref()) {
                (S::Ok, Some(m)) => {
                    // SAFETY: pinned until the release below.
                    let v = unsafe { std::slice::from_raw_parts(it.value, it.value_len) };
                    assert_eq!(v, &m.value[..], "final read: wrong value");
                    // SAFETY: live cache; `it` holds a pin.
                    assert_eq!(unsafe { p99_cache_item_release(self.cache, &mut it) }, S::Ok);
                }
                (S::NotFound, None) => {}
                (S::NotFound, Some(_)) => self.lost(key, "final get"),
                (st, m) => panic!(
                    "final read of {:?}: store {st:?}, model {m:?}",
                    String::from_utf8_lossy(key.bytes)
                ),
            }
        }
        // SAFETY: live cache, no pin held, not used after.
        assert_eq!(unsafe { p99_cache_free(self.cache) }, S::Ok);
        self.seen_cas.clear();
        self.stale.clear();
        Buffers {
            pins: self.pins,
            stale: self.stale,
            pending: self.pending,
            seen_cas: self.seen_cas,
            scratch: self.scratch,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    // SAFETY: a C struct of integers, pointers and bools: all-zero is a valid value.
    let mut cfg: p99_cache_config = unsafe { std::mem::zeroed() };
    cfg.struct_size = std::mem::size_of::<p99_cache_config>() as u32;
    // SAFETY: `cfg` is a writable config whose struct_size is set.
    assert_eq!(unsafe { p99_cache_config_defaults(&mut cfg) }, S::Ok);
    let shape = b.u8();
    cfg.segment_bytes = if shape & 1 == 0 { 4096 } else { 8192 };
    cfg.heap_bytes = u64::from(cfg.segment_bytes) * (4 + u64::from(shape >> 1) % 9);
    cfg.item_max = cfg.segment_bytes;
    cfg.shards = 1;
    cfg.expected_items = 16;
    cfg.cas = shape & 0x40 == 0;
    cfg.eviction =
        if shape & 0x80 == 0 { P99_CACHE_EVICTION_MERGE } else { P99_CACHE_EVICTION_FIFO };
    cfg.manual_clock = true;
    cfg.manual_clock_start = T0;
    let mut cache = std::ptr::null_mut();
    // SAFETY: `cfg` is a full config; `cache` writable.
    assert_eq!(unsafe { p99_cache_new(&cfg, &mut cache) }, S::Ok);
    // A panic (a finding) loses the buffers; the next input starts with new ones.
    let bufs = BUFFERS.with(|c| std::mem::take(&mut *c.borrow_mut()));
    let mut run = Run {
        b,
        cache,
        item_max: cfg.item_max as usize,
        reserve_limit: (cfg.heap_bytes as usize / 4).max(cfg.item_max as usize),
        cas_on: cfg.cas,
        now: T0,
        flush_at: None,
        model: Default::default(),
        next_expiry: u32::MAX,
        evicted_known: None,
        no_evict_calls: 0,
        pins: bufs.pins,
        stale: bufs.stale,
        pending: bufs.pending,
        seen_cas: bufs.seen_cas,
        scratch: bufs.scratch,
        step: 0,
        trace: trace_on(),
    };
    while !run.b.is_empty() && run.step < 4000 {
        run.step += 1;
        match run.b.u8() % 20 {
            0 => run.op_clock(),
            1..=3 => run.op_read(false),
            4 => run.op_read(true),
            5..=7 => run.op_store(),
            8 => run.op_reserve(),
            9 => run.op_fill(),
            10 => run.op_commit(),
            11 => run.op_cancel(),
            12 | 13 => run.op_release(),
            14 => run.op_bad_release(),
            15 => run.op_delta(),
            16 => run.op_delete(),
            17 => run.op_touch(),
            18 => {
                if run.b.chance(20) {
                    run.op_flush()
                } else {
                    run.op_clock()
                }
            }
            _ => run.check_stats(),
        }
    }
    let bufs = run.finish();
    BUFFERS.with(|c| *c.borrow_mut() = bufs);
});
