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

#[test]
fn hash_table_grows_past_expected_items_and_keeps_everything() {
    let c = Cache::new(Config {
        heap_bytes: 4 << 20,
        segment_bytes: 64 << 10,
        item_max: 64 << 10,
        expected_items: 8,
        shards: 1,
        clock: ClockKind::Manual(T0),
        ..Config::default()
    })
    .unwrap();
    for i in 0..20_000u32 {
        c.set(format!("grow{i}").as_bytes(), &i.to_le_bytes(), 0, 0).unwrap();
        if i % 3 == 0 {
            c.delete(format!("grow{}", i / 2).as_bytes()).ok();
        }
    }
    let st = c.stats();
    assert!(st.table_grows >= 10, "{st:?}");
    assert_eq!(st.evictions, 0);
    let mut present = 0;
    for i in 0..20_000u32 {
        if let Some(v) = c.get_value(format!("grow{i}").as_bytes()).unwrap() {
            assert_eq!(v, i.to_le_bytes());
            present += 1;
        }
    }
    assert_eq!(present as u64, st.items);
}

#[test]
fn eviction_happens_only_when_the_budget_is_full_and_keeps_recent_items() {
    for eviction in [Eviction::Fifo, Eviction::Merge] {
        let c = Cache::new(Config {
            heap_bytes: 256 << 10,
            segment_bytes: 16 << 10,
            item_max: 16 << 10,
            eviction,
            shards: 1,
            clock: ClockKind::Manual(T0),
            ..Config::default()
        })
        .unwrap();
        let value = [7u8; 200];
        let mut i = 0u32;
        while c.stats().evictions == 0 {
            let st = c.stats();
            assert!(st.segment_bytes_allocated <= st.heap_limit_bytes);
            c.set(format!("e{i}").as_bytes(), &value, 0, 0).unwrap();
            i += 1;
        }
        let st = c.stats();
        assert_eq!(st.segment_bytes_allocated, st.heap_limit_bytes);
        assert_eq!(st.segments_free, 0);
        for j in 0..5000u32 {
            c.set(format!("e{}", i + j).as_bytes(), &value, 0, 0).unwrap();
        }
        // The newest items are all there; the oldest are gone.
        for j in 4900..5000u32 {
            assert!(c.get(format!("e{}", i + j).as_bytes()).unwrap().is_some());
        }
        assert!(c.get(b"e0").unwrap().is_none());
    }
}

#[test]
fn set_never_fails_while_unpinned_segments_exist_and_fails_clearly_when_all_are_pinned() {
    let c = Cache::new(Config {
        heap_bytes: 64 << 10,
        segment_bytes: 16 << 10,
        item_max: 16 << 10,
        eviction: Eviction::Fifo,
        shards: 1,
        clock: ClockKind::Manual(T0),
        ..Config::default()
    })
    .unwrap();
    let big = vec![1u8; 15 << 10];
    // Four segments, each holding one big item, each pinned.
    let mut pins = Vec::new();
    for i in 0..4 {
        c.set(format!("big{i}").as_bytes(), &big, 0, 0).unwrap();
        pins.push(c.get(format!("big{i}").as_bytes()).unwrap().unwrap());
    }
    assert_eq!(c.set(b"one-more", &big, 0, 0), Err(Error::OutOfMemory));
    drop(pins.pop());
    c.set(b"one-more", &big, 0, 0).unwrap();
    for p in &pins {
        assert_eq!(p.value(), &big[..]);
    }
}

#[test]
fn expired_segment_is_freed_whole_without_a_lookup() {
    let c = small();
    for i in 0..2000u32 {
        c.set(format!("ttl{i}").as_bytes(), &[1u8; 100], 0, T0 + 10).unwrap();
    }
    c.set(b"forever", b"x", 0, 0).unwrap();
    let before = c.stats();
    assert!(before.segments_used >= 4, "{before:?}");
    // Pin one TTL item across its expiry: its segment is emptied but kept until released.
    let pinned = c.get(b"ttl7").unwrap().unwrap();
    c.set_time(T0 + 10).unwrap();
    // Any call on the shard runs the per-second expiry; no TTL key is looked up.
    assert_eq!(c.get_value(b"forever").unwrap().unwrap(), b"x");
    let st = c.stats();
    assert_eq!(st.items, 1);
    assert!(st.expired_segments >= before.segments_used - 1);
    assert_eq!(st.expirations, 2000);
    assert_eq!(st.segments_used, 1);
    assert_eq!(st.segments_retired, 1);
    assert_eq!(pinned.value(), &[1u8; 100][..]);
    drop(pinned);
    let st = c.stats();
    assert_eq!(st.segments_retired, 0);
    assert_eq!(st.segments_free + st.segments_used, st.segments_total);
    assert!(c.get(b"ttl7").unwrap().is_none());
}

#[test]
fn expiry_frees_segments_of_every_ttl_tier_and_of_reused_buckets() {
    // TTLs in buckets far apart (the first tier, the middle ones, the last bucket), so the
    // sweep must find chains all over the bucket range; each expires on its own tick.
    let c = small();
    let ttls = [5u32, 5_000, 100_000, 1_000_000, 10_000_000];
    for &ttl in &ttls {
        c.set(format!("t{ttl}").as_bytes(), b"v", 0, T0 + ttl).unwrap();
    }
    c.set(b"forever", b"x", 0, 0).unwrap();
    for (i, &ttl) in ttls.iter().enumerate() {
        c.set_time(T0 + ttl - 1).unwrap();
        assert_eq!(c.stats().expired_segments, i as u64, "before the TTL of {ttl}s");
        c.set_time(T0 + ttl).unwrap();
        let st = c.stats();
        assert_eq!(st.expired_segments, i as u64 + 1, "at the TTL of {ttl}s");
        assert_eq!(st.items, (ttls.len() - i) as u64);
    }
    // A bucket emptied by the sweep is swept again once it holds a segment again.
    let now = T0 + ttls[4];
    c.set(b"again", b"v", 0, now + 5).unwrap();
    c.set_time(now + 5).unwrap();
    let st = c.stats();
    assert_eq!(st.expired_segments, ttls.len() as u64 + 1);
    assert_eq!(st.items, 1);
    assert_eq!(st.segments_used, 1);
}

#[test]
fn get_and_touch_with_a_past_expiry_returns_the_item_once() {
    let c = small();
    let cas = c.set(b"k", b"v", 3, 0).unwrap();
    let it = c.get_and_touch(b"k", T0 - 1).unwrap().unwrap();
    assert_eq!((it.value(), it.flags(), it.cas()), (&b"v"[..], 3, cas));
    drop(it);
    assert!(c.get(b"k").unwrap().is_none());
}

#[test]
fn keys_and_sizes_are_checked() {
    let c = small();
    assert_eq!(c.set(b"", b"v", 0, 0), Err(Error::InvalidArgument));
    assert_eq!(c.set(&[b'k'; 251], b"v", 0, 0), Err(Error::InvalidArgument));
    c.set(&[b'k'; 250], b"v", 0, 0).unwrap();
    let max = c.config().item_max - Cache::HEADER_MAX - 1;
    assert_eq!(c.reserve(b"k", max + 1, 0, 0).unwrap_err(), Error::TooLarge);
    c.set(b"k", &vec![0u8; max], 0, 0).unwrap();
    assert_eq!(c.get(b"k").unwrap().unwrap().value().len(), max);
}

#[test]
fn a_pin_ticket_is_released_once_whatever_copy_releases_it() {
    let c = small();
    c.set(b"k", b"v", 0, 0).unwrap();
    let t = c.get(b"k").unwrap().unwrap().into_ticket().unwrap();
    let copy = t;
    c.release_ticket(t).unwrap();
    assert_eq!(c.release_ticket(copy), Err(Error::InvalidState));
    // The slot is reused by the next pin, under a new generation: the stale copy is refused
    // and the new pin stays held.
    let t2 = c.get(b"k").unwrap().unwrap().into_ticket().unwrap();
    assert_eq!(t2.slot, t.slot);
    assert_ne!(t2.generation, t.generation);
    assert_eq!(c.release_ticket(copy), Err(Error::InvalidState));
    assert_eq!(c.pinned(), 1);
    c.release_ticket(t2).unwrap();
    assert_eq!(c.release_ticket(t2), Err(Error::InvalidState));
    assert_eq!(c.pinned(), 0);
    let bogus = p99::cache::PinTicket { shard: 0, slot: 1000, generation: 0 };
    assert_eq!(c.release_ticket(bogus), Err(Error::InvalidArgument));
    let bogus = p99::cache::PinTicket { shard: 99, slot: 0, generation: 0 };
    assert_eq!(c.release_ticket(bogus), Err(Error::InvalidArgument));
}

#[test]
fn get_ticketed_pins_under_a_ticket_released_once() {
    let c = small();
    assert!(c.get_ticketed(b"absent").unwrap().is_none());
    assert_eq!(c.get_ticketed(b"").unwrap_err(), Error::InvalidArgument);
    c.set(b"k", b"value", 7, 0).unwrap();
    let it = c.get_ticketed(b"k").unwrap().unwrap();
    assert_eq!((it.key_len, it.value_len, it.flags), (1, 5, 7));
    assert_eq!(c.pinned(), 1);
    // The pinned bytes survive a delete and a flood of overwrites while the ticket is held.
    c.delete(b"k").unwrap();
    for i in 0..20_000u32 {
        c.set(format!("f{i}").as_bytes(), &[0xAB; 200], 0, 0).unwrap();
    }
    // SAFETY: the ticket is not yet released, so the item's bytes are pinned.
    let (key, value) = unsafe {
        (
            std::slice::from_raw_parts(it.key, it.key_len),
            std::slice::from_raw_parts(it.value, it.value_len),
        )
    };
    assert_eq!((key, value), (&b"k"[..], &b"value"[..]));
    let copy = it.ticket;
    c.release_ticket(it.ticket).unwrap();
    assert_eq!(c.release_ticket(copy), Err(Error::InvalidState));
    assert_eq!(c.pinned(), 0);
    // get_and_touch_ticketed: same ticket rules, and the slot comes back with a new generation.
    c.set(b"k", b"x", 0, 0).unwrap();
    let t = c.get_and_touch_ticketed(b"k", 0).unwrap().unwrap().ticket;
    assert_eq!(t.slot, copy.slot);
    assert_ne!(t.generation, copy.generation);
    assert_eq!(c.release_ticket(copy), Err(Error::InvalidState));
    assert_eq!(c.pinned(), 1);
    c.release_ticket(t).unwrap();
    assert_eq!(c.release_ticket(t), Err(Error::InvalidState));
    assert!(c.get_and_touch_ticketed(b"absent", 0).unwrap().is_none());
    assert_eq!(c.pinned(), 0);
}

#[test]
fn get_copy_copies_the_value_and_pins_nothing() {
    let c = small();
    let cas = c.set(b"k", b"hello", 42, T0 + 100).unwrap();
    let mut buf = [0u8; 16];
    let got = c.get_copy(b"k", &mut buf).unwrap().unwrap();
    assert!(got.copied);
    assert_eq!((got.value_len, got.flags, got.cas, got.expiry), (5, 42, cas, T0 + 100));
    assert_eq!(&buf[..5], b"hello");
    assert_eq!(c.pinned(), 0);
    // A buffer of exactly the value's length is enough; an empty value needs none.
    let mut exact = [0u8; 5];
    assert!(c.get_copy(b"k", &mut exact).unwrap().unwrap().copied);
    assert_eq!(&exact, b"hello");
    c.set(b"e", b"", 0, 0).unwrap();
    assert!(c.get_copy(b"e", &mut []).unwrap().unwrap().copied);
    assert_eq!(c.stats().hits, 3);
    // Too small: the needed length is reported, nothing is written and no hit is counted.
    let mut short = [0xEEu8; 4];
    let got = c.get_copy(b"k", &mut short).unwrap().unwrap();
    assert!(!got.copied);
    assert_eq!((got.value_len, got.flags, got.cas), (5, 42, cas));
    assert_eq!(short, [0xEE; 4]);
    assert_eq!(c.stats().hits, 3);
    // A miss is a miss, an expired item is one too, and a bad key is refused.
    assert!(c.get_copy(b"absent", &mut buf).unwrap().is_none());
    c.set_time(T0 + 100).unwrap();
    assert!(c.get_copy(b"k", &mut buf).unwrap().is_none());
    assert_eq!(c.stats().misses, 2);
    assert_eq!(c.get_copy(b"", &mut buf).unwrap_err(), Error::InvalidArgument);
    assert_eq!(c.get_copy(&[b'k'; 251], &mut buf).unwrap_err(), Error::InvalidArgument);
}

#[test]
fn tickets_held_past_a_chunk_are_released_in_any_order_and_reissued() {
    let c = small();
    c.set(b"k", b"v", 0, 0).unwrap();
    // More pins than one bitmap word and one ticket chunk (4096 slots) hold at once.
    let held: Vec<_> = (0..5000).map(|_| c.get_ticketed(b"k").unwrap().unwrap().ticket).collect();
    let mut slots: Vec<u32> = held.iter().map(|t| t.slot).collect();
    slots.sort_unstable();
    slots.dedup();
    assert_eq!(slots.len(), held.len(), "a slot was issued twice while held");
    assert_eq!(c.pinned(), 5000);
    // Release every other one, then the rest in reverse; a second release of each is refused.
    for t in held.iter().step_by(2) {
        c.release_ticket(*t).unwrap();
    }
    for t in held.iter().skip(1).step_by(2).rev() {
        c.release_ticket(*t).unwrap();
    }
    for t in &held {
        assert_eq!(c.release_ticket(*t), Err(Error::InvalidState));
    }
    assert_eq!(c.pinned(), 0);
    // A slot above every slot ever issued was never issued.
    let bogus = p99::cache::PinTicket { shard: 0, slot: 5000, generation: 0 };
    assert_eq!(c.release_ticket(bogus), Err(Error::InvalidArgument));
    // Freed slots are issued again, within the two chunks of 4096 slots already allocated,
    // under new generations.
    let again: Vec<_> = (0..5000).map(|_| c.get_ticketed(b"k").unwrap().unwrap().ticket).collect();
    assert!(again.iter().all(|t| t.slot < 2 * 4096));
    for t in &held {
        assert_eq!(c.release_ticket(*t), Err(Error::InvalidState));
    }
    assert_eq!(c.pinned(), 5000);
    for t in again {
        c.release_ticket(t).unwrap();
    }
    assert_eq!(c.pinned(), 0);
}

#[test]
fn open_reservations_are_bounded_by_the_allowance_and_give_it_back() {
    let c = Cache::new(Config {
        heap_bytes: 1 << 20,
        segment_bytes: 64 << 10,
        item_max: 64 << 10,
        reservation_bytes: 200_000,
        shards: 1,
        clock: ClockKind::Manual(T0),
        ..Config::default()
    })
    .unwrap();
    let v = 60_000;
    let mut open: Vec<_> =
        (0..3).map(|i| c.reserve(format!("big{i}").as_bytes(), v, 0, 0).unwrap()).collect();
    assert_eq!(c.reserved_bytes(), 3 * (4 + v as u64));
    // A fourth large value passes the allowance: refused cleanly, nothing taken.
    assert_eq!(c.reserve(b"big3", v, 0, 0).unwrap_err(), Error::OutOfMemory);
    assert_eq!(c.stats().reserved_bytes, 3 * (4 + v as u64));
    // Small writes still get room (an eighth more is kept for them), and writes that need no
    // reservation go on.
    // (each holds a 256-byte recycled buffer, which is what counts: 150 x 256 B)
    let small: Vec<_> =
        (0..150).map(|i| c.reserve(format!("s{i}").as_bytes(), 100, 0, 0).unwrap()).collect();
    assert_eq!(c.reserved_bytes(), 3 * (4 + v as u64) + 150 * 256);
    assert_eq!(
        c.reserve(b"s-last", 1600, 0, 0).unwrap_err(),
        Error::OutOfMemory,
        "small is at most 1/128"
    );
    c.set(b"direct", &[b'd'; 30_000], 0, 0).unwrap();
    drop(small);
    // A dropped reservation gives its bytes back.
    drop(open.pop());
    let mut r = c.reserve(b"big3", v, 0, 0).unwrap();
    r.write(&vec![b'x'; v]).unwrap();
    // So does a committed one, whatever the outcome.
    c.commit(r, Mode::Set, 0).unwrap();
    let r = c.reserve(b"big4", 10, 0, 0).unwrap();
    assert_eq!(c.commit(r, Mode::Set, 0).unwrap_err(), Error::InvalidState);
    assert_eq!(c.reserved_bytes(), 2 * (4 + v as u64));
    drop(open);
    assert_eq!(c.reserved_bytes(), 0);
    assert_eq!(c.get_value(b"big3").unwrap().unwrap().len(), v);
}

#[test]
fn the_default_allowance_is_a_quarter_of_the_heap_with_one_largest_item_per_shard() {
    // 4 shards, 16 MiB: a quarter is 4 MiB, 1 MiB per shard, so one 1 MiB item per shard
    // fits and the whole allowance holds between 4 and 8 of the 600 KB values offered.
    let c = Cache::new(Config {
        heap_bytes: 16 << 20,
        shards: 4,
        clock: ClockKind::Manual(T0),
        ..Config::default()
    })
    .unwrap();
    let mut held = Vec::new();
    let mut refused = 0;
    for i in 0..64 {
        match c.reserve(format!("k{i}").as_bytes(), 600_000, 0, 0) {
            Ok(r) => held.push(r),
            Err(e) => {
                assert_eq!(e, Error::OutOfMemory);
                refused += 1;
            }
        }
    }
    assert!((4..=8).contains(&held.len()), "{} held", held.len());
    assert_eq!(refused, 64 - held.len());
    assert!(c.reserved_bytes() <= 4 << 20);
    // Each shard accepts its one largest item even with an allowance below it.
    drop(held);
    let c = Cache::new(Config {
        heap_bytes: 4 << 20,
        shards: 1,
        reservation_bytes: 1,
        ..Config::default()
    })
    .unwrap();
    let item_max_value = (1 << 20) - 23 - 1;
    let r = c.reserve(b"k", item_max_value, 0, 0).unwrap();
    assert_eq!(c.reserve(b"j", 10_000, 0, 0).unwrap_err(), Error::OutOfMemory);
    let small = c.reserve(b"j", 100, 0, 0).unwrap();
    drop((r, small));
    assert_eq!(c.reserved_bytes(), 0);
}

/// Copying reads of items read before (served by the shard's shared readers) still honour
/// expiry, a delayed flush_all and deletes, and are counted once each.
#[test]
fn repeated_copy_reads_honour_expiry_flush_and_delete() {
    let c = small();
    let mut buf = [0u8; 64];
    c.set(b"ttl", b"v1", 0, T0 + 5).unwrap();
    c.set(b"keep", b"v2", 0, 0).unwrap();
    c.set(b"gone", b"v3", 0, 0).unwrap();
    for _ in 0..3 {
        assert_eq!(c.get_copy(b"ttl", &mut buf).unwrap().unwrap().value_len, 2);
        assert!(c.get_copy(b"keep", &mut buf).unwrap().is_some());
        assert!(c.get_copy(b"gone", &mut buf).unwrap().is_some());
    }
    assert!(c.get_copy(b"absent", &mut buf).unwrap().is_none());
    c.delete(b"gone").unwrap();
    assert!(c.get_copy(b"gone", &mut buf).unwrap().is_none());
    c.set_time(T0 + 5).unwrap();
    assert!(c.get_copy(b"ttl", &mut buf).unwrap().is_none(), "expired at T0 + 5");
    assert!(c.get_copy(b"keep", &mut buf).unwrap().is_some());
    c.flush_all(2).unwrap();
    assert!(c.get_copy(b"keep", &mut buf).unwrap().is_some(), "the flush is not due yet");
    c.set_time(T0 + 7).unwrap();
    assert!(c.get_copy(b"keep", &mut buf).unwrap().is_none(), "flushed at T0 + 7");
    let st = c.stats();
    assert_eq!(st.hits, 3 * 3 + 2, "hits");
    assert_eq!(st.misses, 4, "misses");
}
