//! Model-based tests: random operation sequences run against the cache and against a plain
//! `HashMap` model with memcached's semantics (controllable clock, CAS, incr/decr, append/
//! prepend, touch, flush_all now and delayed). With a budget large enough, the cache must
//! agree with the model on every result; with a small one, it may only lose items, and only
//! once the whole budget is allocated.

use std::collections::{HashMap, HashSet};

use p99::cache::{Cache, ClockKind, Config, Error, Eviction, ItemRef, Mode};

/// An owned copy of what a read returned (the pin is released at once).
#[derive(Debug)]
struct Snap {
    value: Vec<u8>,
    flags: u32,
    cas: u64,
    expiry: u32,
}

fn snap(it: ItemRef<'_>) -> Snap {
    Snap { value: it.value().to_vec(), flags: it.flags(), cas: it.cas(), expiry: it.expiry() }
}

const T0: u32 = 1_700_000_000;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Clone, Debug)]
struct MItem {
    value: Vec<u8>,
    flags: u32,
    expiry: u32,
    cas: u64,
}

struct Model {
    items: HashMap<Vec<u8>, MItem>,
    now: u32,
    flush_at: Option<u32>,
    cas_on: bool,
}

impl Model {
    /// Applies a due delayed flush and hides expired items, as every cache call does first.
    fn settle(&mut self) {
        if let Some(t) = self.flush_at {
            if self.now >= t {
                self.items.clear();
                self.flush_at = None;
            }
        }
        let now = self.now;
        self.items.retain(|_, it| it.expiry == 0 || it.expiry > now);
    }
}

/// The model's own reading of memcached's rule for the values this test generates (which
/// never start with whitespace or a sign): leading digits, then the end or whitespace.
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

fn gen_value(r: &mut Rng, max: usize) -> Vec<u8> {
    match r.below(10) {
        0 => Vec::new(),
        1..=4 => {
            let n = match r.below(4) {
                0 => u64::MAX - r.below(3),
                1 => r.below(3),
                _ => r.next() >> r.below(64),
            };
            let mut v = n.to_string().into_bytes();
            v.resize(v.len() + r.below(3) as usize, b' ');
            v
        }
        _ => {
            let len = 1 + r.below(max as u64) as usize;
            let mut v: Vec<u8> = (0..len).map(|_| b'a' + r.below(26) as u8).collect();
            if r.chance(20) {
                v[len - 1] = b'0' + r.below(10) as u8;
            }
            v
        }
    }
}

struct Run {
    cache: Cache,
    model: Model,
    r: Rng,
    keys: Vec<Vec<u8>>,
    seen_cas: HashSet<u64>,
    /// Small budget: the cache may lose items to eviction.
    lossy: bool,
    max_value: usize,
    ops: u64,
}

impl Run {
    fn new(seed: u64, cas_on: bool, lossy: bool, eviction: Eviction) -> Run {
        let (heap, seg) = if lossy { (128 << 10, 16 << 10) } else { (8 << 20, 64 << 10) };
        let cache = Cache::new(Config {
            heap_bytes: heap,
            segment_bytes: seg,
            item_max: seg,
            cas: cas_on,
            eviction,
            shards: 1,
            expected_items: 64,
            clock: ClockKind::Manual(T0),
            reservation_bytes: 0,
            // Half the runs with the heap backed up front: behaviour must not differ.
            prefault: seed % 2 == 0,
        })
        .unwrap();
        let nkeys = if lossy { 1000 } else { 40 };
        let keys = (0..nkeys)
            .map(|i| {
                let mut k = format!("key:{i}:").into_bytes();
                k.resize(6 + (i * 37) % 240, b'k');
                k
            })
            .collect();
        Run {
            cache,
            model: Model { items: HashMap::new(), now: T0, flush_at: None, cas_on },
            r: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
            keys,
            seen_cas: HashSet::new(),
            lossy,
            max_value: if lossy { 1500 } else { 300 },
            ops: 0,
        }
    }

    fn evicted(&self) -> bool {
        self.cache.stats().evicted_items > 0
    }

    /// A result where the cache lost an item the model still has: allowed only with a small
    /// budget once eviction has happened; the model then forgets the item too.
    fn lost(&mut self, key: &[u8], what: &str) {
        assert!(
            self.lossy && self.evicted(),
            "op {}: {what} on {:?}: cache lost an item without eviction",
            self.ops,
            String::from_utf8_lossy(key)
        );
        self.model.items.remove(key);
    }

    fn new_cas(&mut self, cas: u64) {
        if self.model.cas_on {
            assert_ne!(cas, 0);
            assert!(self.seen_cas.insert(cas), "op {}: CAS {cas} handed out twice", self.ops);
        } else {
            assert_eq!(cas, 0);
        }
    }

    fn expiry(&mut self) -> u32 {
        match self.r.below(10) {
            0..=5 => 0,
            6..=8 => self.model.now + 1 + self.r.below(10) as u32,
            _ => self.model.now - self.r.below(3) as u32, // already expired
        }
    }

    fn write(
        &mut self,
        key: &[u8],
        value: &[u8],
        flags: u32,
        expiry: u32,
        mode: Mode,
        cas_in: u64,
    ) -> Result<u64, Error> {
        if self.r.chance(50) {
            return self.cache.store(key, value, flags, expiry, mode, cas_in);
        }
        // Two-phase, in random pieces, some received in place.
        let mut res = self.cache.reserve(key, value.len(), flags, expiry).unwrap();
        let mut at = 0;
        while at < value.len() {
            let n = 1 + self.r.below((value.len() - at) as u64) as usize;
            if self.r.chance(50) {
                res.write(&value[at..at + n]).unwrap();
            } else {
                res.unfilled()[..n].copy_from_slice(&value[at..at + n]);
                res.advance(n).unwrap();
            }
            at += n;
        }
        self.cache.commit(res, mode, cas_in)
    }

    fn step(&mut self) {
        self.ops += 1;
        let key = self.keys[self.r.below(self.keys.len() as u64) as usize].clone();
        let op = self.r.below(100);
        if op < 3 {
            self.model.now += self.r.below(4) as u32;
            self.cache.set_time(self.model.now).unwrap();
            return;
        }
        self.model.settle();
        let present = self.model.items.get(&key).cloned();
        if std::env::var("P99_TRACE")
            .is_ok_and(|k| k.as_bytes() == &key[..] || (90..=91).contains(&op))
        {
            eprintln!("op {} now {} op {op} present {:?}", self.ops, self.model.now, present);
        }
        match op {
            3..=29 => {
                // get
                match self.cache.get(&key).unwrap().map(snap) {
                    Some(it) => {
                        let m = present.unwrap_or_else(|| {
                            panic!(
                                "op {}: get returned an absent item {:?} key {:?}",
                                self.ops,
                                it,
                                String::from_utf8_lossy(&key)
                            )
                        });
                        assert_eq!(it.value, m.value, "op {}: value", self.ops);
                        assert_eq!(it.flags, m.flags);
                        assert_eq!(it.cas, m.cas);
                        assert_eq!(it.expiry, m.expiry);
                    }
                    None => {
                        if present.is_some() {
                            self.lost(&key, "get");
                        }
                    }
                }
            }
            30..=59 => {
                let mode = match self.r.below(10) {
                    0..=4 => Mode::Set,
                    5 => Mode::Add,
                    6 => Mode::Replace,
                    7 => Mode::Cas,
                    8 => Mode::Append,
                    _ => Mode::Prepend,
                };
                let value = gen_value(&mut self.r, self.max_value);
                let flags = if self.r.chance(30) { self.r.next() as u32 } else { 0 };
                let expiry = self.expiry();
                let cas_in = match (&present, self.r.chance(70)) {
                    (Some(m), true) => m.cas,
                    _ => self.r.next() | 1,
                };
                let got = self.write(&key, &value, flags, expiry, mode, cas_in);
                let want: Result<MItem, Error> = match (mode, &present) {
                    (Mode::Add, Some(_)) | (Mode::Replace | Mode::Append | Mode::Prepend, None) => {
                        Err(Error::NotStored)
                    }
                    (Mode::Cas, None) => Err(Error::NotFound),
                    (Mode::Cas, Some(m)) if !self.model.cas_on || m.cas != cas_in => {
                        Err(Error::Exists)
                    }
                    (Mode::Append, Some(m)) => {
                        Ok(MItem { value: [&m.value[..], &value].concat(), ..m.clone() })
                    }
                    (Mode::Prepend, Some(m)) => {
                        Ok(MItem { value: [&value[..], &m.value].concat(), ..m.clone() })
                    }
                    _ => Ok(MItem { value: value.clone(), flags, expiry, cas: 0 }),
                };
                match (got, want) {
                    (Ok(cas), Ok(mut m)) => {
                        self.new_cas(cas);
                        m.cas = cas;
                        self.model.items.insert(key.clone(), m);
                    }
                    // The cache lost the item the model has.
                    (Err(Error::NotStored | Error::NotFound), Ok(_))
                    | (Err(Error::NotFound), Err(Error::Exists))
                        if present.is_some() =>
                    {
                        self.lost(&key, "write");
                    }
                    (Err(g), Err(w)) => assert_eq!(g, w, "op {}: {mode:?}", self.ops),
                    (Ok(cas), Err(Error::NotStored)) if mode == Mode::Add && present.is_some() => {
                        self.lost(&key, "add");
                        self.new_cas(cas);
                        self.model.items.insert(key.clone(), MItem { value, flags, expiry, cas });
                    }
                    (g, w) => panic!("op {}: {mode:?}: cache {g:?}, model {w:?}", self.ops),
                }
            }
            60..=69 => {
                let incr = self.r.chance(50);
                let by = match self.r.below(3) {
                    0 => u64::MAX,
                    1 => self.r.below(3),
                    _ => self.r.next() >> self.r.below(64),
                };
                let got = if incr { self.cache.incr(&key, by) } else { self.cache.decr(&key, by) };
                let want = match &present {
                    None => Err(Error::NotFound),
                    Some(m) => match model_number(&m.value) {
                        None => Err(Error::NonNumeric),
                        Some(n) => Ok(if incr { n.wrapping_add(by) } else { n.saturating_sub(by) }),
                    },
                };
                match (got, want) {
                    (Ok((v, cas)), Ok(w)) => {
                        assert_eq!(v, w);
                        self.new_cas(cas);
                        let m = self.model.items.get_mut(&key).unwrap();
                        let mut text = v.to_string().into_bytes();
                        if text.len() < m.value.len() {
                            text.resize(m.value.len(), b' ');
                        }
                        m.value = text;
                        m.cas = cas;
                    }
                    (Err(Error::NotFound), _) if present.is_some() => self.lost(&key, "incr"),
                    (Err(g), Err(w)) => assert_eq!(g, w, "op {}: incr/decr", self.ops),
                    (g, w) => panic!("op {}: incr/decr: cache {g:?}, model {w:?}", self.ops),
                }
            }
            70..=77 => {
                let got = self.cache.delete(&key);
                match (got, present.is_some()) {
                    (Ok(()), true) => {
                        self.model.items.remove(&key);
                    }
                    (Err(Error::NotFound), false) => {}
                    (Err(Error::NotFound), true) => self.lost(&key, "delete"),
                    (g, p) => panic!("op {}: delete: cache {g:?}, model present {p}", self.ops),
                }
            }
            78..=89 => {
                let expiry = self.expiry();
                if self.r.chance(50) {
                    match (self.cache.touch(&key, expiry), present) {
                        (Ok(()), Some(_)) => {
                            self.model.items.get_mut(&key).unwrap().expiry = expiry
                        }
                        (Err(Error::NotFound), None) => {}
                        (Err(Error::NotFound), Some(_)) => self.lost(&key, "touch"),
                        (g, p) => panic!("op {}: touch: cache {g:?}, model {p:?}", self.ops),
                    }
                } else {
                    match (self.cache.get_and_touch(&key, expiry).unwrap().map(snap), present) {
                        (Some(it), Some(m)) => {
                            assert_eq!(it.value, m.value);
                            assert_eq!(it.cas, m.cas, "touch keeps the CAS");
                            assert_eq!(it.flags, m.flags);
                            assert_eq!(it.expiry, expiry);
                            self.model.items.get_mut(&key).unwrap().expiry = expiry;
                        }
                        (None, None) => {}
                        (None, Some(_)) => self.lost(&key, "gat"),
                        (g, p) => panic!("op {}: gat: cache {g:?}, model {p:?}", self.ops),
                    }
                }
            }
            90..=91 if !self.lossy || self.r.chance(2) => {
                let delay = if self.r.chance(50) { 0 } else { 1 + self.r.below(5) as u32 };
                self.cache.flush_all(delay).unwrap();
                self.model.flush_at = Some(self.model.now + delay);
                self.model.settle();
            }
            _ => {
                // Stats agree with the model on what is visible.
                let st = self.cache.stats();
                assert!(st.segment_bytes_allocated <= st.heap_limit_bytes);
                if st.evictions > 0 {
                    assert_eq!(
                        st.segment_bytes_allocated, st.heap_limit_bytes,
                        "evicted before the budget was full"
                    );
                }
                if !self.lossy {
                    assert_eq!(st.evictions, 0);
                    // Linked items include expired ones not yet reclaimed: at least the model's.
                    assert!(st.items as usize >= self.model.items.len());
                }
            }
        }
    }
}

fn run(seed: u64, ops: u64, cas_on: bool, lossy: bool, eviction: Eviction) {
    let mut r = Run::new(seed, cas_on, lossy, eviction);
    for _ in 0..ops {
        r.step();
    }
    // Final sweep: every key the model has (still live) reads back identically.
    r.model.settle();
    for key in r.keys.clone() {
        let want = r.model.items.get(&key).cloned();
        match (r.cache.get(&key).unwrap().map(snap), want) {
            (Some(it), Some(m)) => assert_eq!(it.value, m.value),
            (None, None) => {}
            (None, Some(_)) => r.lost(&key, "final get"),
            (Some(_), None) => panic!("final get: cache has an item the model does not"),
        }
    }
    assert_eq!(r.cache.pinned(), 0);
    if lossy {
        let st = r.cache.stats();
        assert!(
            st.evictions > 0,
            "the small budget never filled: the test is not testing eviction"
        );
        if eviction == Eviction::Merge {
            assert!(st.merged_items > 0, "merge eviction never carried an item forward");
        } else {
            assert_eq!(st.merged_items, 0);
        }
    }
}

/// Extra seeds per test from `P99_MODEL_SEEDS` (for longer runs by hand).
fn extra_seeds() -> u64 {
    std::env::var("P99_MODEL_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[test]
fn model_agrees_without_eviction_cas_on() {
    for seed in 1..=12 + extra_seeds() {
        run(seed, 20_000, true, false, Eviction::Merge);
    }
}

#[test]
fn model_agrees_without_eviction_cas_off() {
    for seed in 100..=105 + extra_seeds() {
        run(seed, 20_000, false, false, Eviction::Fifo);
    }
}

#[test]
fn model_agrees_under_fifo_eviction() {
    for seed in 200..=205 + extra_seeds() {
        run(seed, 30_000, true, true, Eviction::Fifo);
    }
}

#[test]
fn model_agrees_under_merge_eviction() {
    for seed in 300..=305 + extra_seeds() {
        run(seed, 30_000, true, true, Eviction::Merge);
    }
}
