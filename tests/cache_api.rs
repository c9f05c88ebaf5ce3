//! Behaviour of the cache's Rust API, one rule per test.

use p99::cache::{Cache, ClockKind, Config, Error, Eviction, Mode};

const T0: u32 = 1_700_000_000;

fn cache_with(heap: usize, seg: usize, cas: bool) -> Cache {
    Cache::new(Config {
        heap_bytes: heap,
        segment_bytes: seg,
        item_max: seg,
        cas,
        shards: 1,
        clock: ClockKind::Manual(T0),
        ..Config::default()
    })
    .unwrap()
}

fn small() -> Cache {
    cache_with(1 << 20, 64 << 10, true)
}

#[test]
fn set_then_get_returns_value_flags_and_cas() {
    let c = small();
    let cas = c.set(b"k", b"hello", 42, 0).unwrap();
    let it = c.get(b"k").unwrap().unwrap();
    assert_eq!(it.value(), b"hello");
    assert_eq!(it.key(), b"k");
    assert_eq!(it.flags(), 42);
    assert_eq!(it.cas(), cas);
    assert_ne!(cas, 0);
    drop(it);
    assert!(c.get(b"missing").unwrap().is_none());
    let st = c.stats();
    assert_eq!((st.hits, st.misses, st.sets, st.items), (1, 1, 1, 1));
}

#[test]
fn two_phase_write_in_pieces() {
    let c = small();
    let mut r = c.reserve(b"key", 10, 0, 0).unwrap();
    r.write(b"0123").unwrap();
    r.unfilled()[..3].copy_from_slice(b"456");
    r.advance(3).unwrap();
    assert_eq!(r.write(b"7890"), Err(Error::InvalidState));
    r.write(b"789").unwrap();
    c.commit(r, Mode::Set, 0).unwrap();
    assert_eq!(c.get_value(b"key").unwrap().unwrap(), b"0123456789");
    let r = c.reserve(b"key", 10, 0, 0).unwrap();
    assert_eq!(c.commit(r, Mode::Set, 0), Err(Error::InvalidState));
}
