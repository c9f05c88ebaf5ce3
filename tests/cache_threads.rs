//! Many threads on one cache handle: no lost update, no torn value, and pinned items that
//! stay intact while they are replaced, deleted, flushed and their segments evicted.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Barrier;
use std::thread;

use p99::cache::{Cache, Config, Error, Eviction, Mode};

fn cache(heap: usize, seg: usize, shards: usize, eviction: Eviction) -> Cache {
    Cache::new(Config {
        heap_bytes: heap,
        segment_bytes: seg,
        item_max: seg,
        shards,
        eviction,
        ..Config::default()
    })
    .unwrap()
}

/// A value that proves its own integrity: `tag(8) seq(8) len(4)` then bytes derived from them.
fn make_value(tag: u64, seq: u64, len: usize) -> Vec<u8> {
    let len = len.max(20);
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&tag.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(&(len as u32).to_le_bytes());
    for i in 20..len {
        v.push((tag.wrapping_mul(31).wrapping_add(seq).wrapping_add(i as u64) % 251) as u8);
    }
    v
}

fn check_value(tag: u64, v: &[u8]) -> Result<u64, String> {
    if v.len() < 20 {
        return Err(format!("short value {}", v.len()));
    }
    let t = u64::from_le_bytes(v[0..8].try_into().unwrap());
    let seq = u64::from_le_bytes(v[8..16].try_into().unwrap());
    let len = u32::from_le_bytes(v[16..20].try_into().unwrap()) as usize;
    if t != tag || len != v.len() || v != make_value(tag, seq, len) {
        return Err(format!(
            "torn or foreign value for tag {tag}: tag {t} seq {seq} len {len}/{}",
            v.len()
        ));
    }
    Ok(seq)
}

#[test]
fn concurrent_incr_loses_no_update() {
    let c = cache(8 << 20, 64 << 10, 0, Eviction::Merge);
    for k in 0..4 {
        c.set(format!("ctr{k}").as_bytes(), b"0", 0, 0).unwrap();
    }
    let threads = 4;
    let per = 20_000u64;
    thread::scope(|s| {
        for t in 0..threads {
            let c = &c;
            s.spawn(move || {
                for i in 0..per {
                    let k = format!("ctr{}", (i + t) % 4);
                    c.incr(k.as_bytes(), 1).unwrap();
                }
            });
        }
    });
    let total: u64 = (0..4)
        .map(|k| {
            let v = c.get_value(format!("ctr{k}").as_bytes()).unwrap().unwrap();
            std::str::from_utf8(&v).unwrap().trim().parse::<u64>().unwrap()
        })
        .sum();
    assert_eq!(total, threads * per);
}

#[test]
fn concurrent_cas_loops_lose_no_update() {
    let c = cache(8 << 20, 64 << 10, 0, Eviction::Merge);
    c.set(b"casctr", b"0", 0, 0).unwrap();
    let threads = 4;
    let per = 5_000u64;
    let conflicts = AtomicU64::new(0);
    thread::scope(|s| {
        for _ in 0..threads {
            let (c, conflicts) = (&c, &conflicts);
            s.spawn(move || {
                for _ in 0..per {
                    loop {
                        let (n, cas) = {
                            let it = c.get(b"casctr").unwrap().unwrap();
                            (
                                std::str::from_utf8(it.value()).unwrap().parse::<u64>().unwrap(),
                                it.cas(),
                            )
                        };
                        match c.store(
                            b"casctr",
                            (n + 1).to_string().as_bytes(),
                            0,
                            0,
                            Mode::Cas,
                            cas,
                        ) {
                            Ok(_) => break,
                            Err(Error::Exists) => {
                                conflicts.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => panic!("cas: {e:?}"),
                        }
                    }
                }
            });
        }
    });
    let v = c.get_value(b"casctr").unwrap().unwrap();
    assert_eq!(std::str::from_utf8(&v).unwrap().parse::<u64>().unwrap(), threads * per);
    println!("cas conflicts retried: {}", conflicts.load(Ordering::Relaxed));
}

#[test]
fn readers_never_see_torn_values() {
    let c = cache(16 << 20, 256 << 10, 0, Eviction::Merge);
    let stop = AtomicBool::new(false);
    let reads = AtomicU64::new(0);
    let nkeys = 64u64;
    thread::scope(|s| {
        for w in 0..2u64 {
            let (c, stop) = (&c, &stop);
            s.spawn(move || {
                let mut seq = w;
                while !stop.load(Ordering::Relaxed) {
                    let tag = seq % nkeys;
                    let v = make_value(tag, seq, 20 + (seq as usize * 7919) % 4000);
                    c.set(format!("torn{tag}").as_bytes(), &v, 0, 0).unwrap();
                    seq += 2;
                }
            });
        }
        for r in 0..2u64 {
            let (c, stop, reads) = (&c, &stop, &reads);
            s.spawn(move || {
                let mut i = r;
                let mut n = 0;
                while n < 100_000 {
                    let tag = i % nkeys;
                    if let Some(it) = c.get(format!("torn{tag}").as_bytes()).unwrap() {
                        check_value(tag, it.value()).unwrap();
                    }
                    i = i.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) >> 1;
                    n += 1;
                }
                reads.fetch_add(n, Ordering::Relaxed);
                stop.store(true, Ordering::Relaxed);
            });
        }
    });
    assert!(reads.load(Ordering::Relaxed) >= 200_000, "both readers ran to the end");
}

/// Copying reads (which share the shard with other readers and take the writer's side only
/// when they must) against writers that replace, delete and evict, in a heap of 32 segments
/// and a table sized for 16 items (so it also grows while readers read): every value a read
/// copies is whole and the key's own; the hit and miss counts add up.
#[test]
fn copying_readers_never_see_torn_values_through_eviction_and_growth() {
    for eviction in [Eviction::Fifo, Eviction::Merge] {
        let c = Cache::new(Config {
            heap_bytes: 2 << 20,
            segment_bytes: 64 << 10,
            item_max: 64 << 10,
            expected_items: 16,
            eviction,
            ..Config::default()
        })
        .unwrap();
        let stop = AtomicBool::new(false);
        let (hits, misses) = (AtomicU64::new(0), AtomicU64::new(0));
        let nkeys = 400u64;
        thread::scope(|s| {
            for w in 0..2u64 {
                let (c, stop) = (&c, &stop);
                s.spawn(move || {
                    let mut seq = w;
                    while !stop.load(Ordering::Relaxed) {
                        let tag = (seq * 7919) % nkeys;
                        let key = format!("copy{tag}");
                        if seq % 13 == 0 {
                            let _ = c.delete(key.as_bytes());
                        } else {
                            let v = make_value(tag, seq, 20 + (seq as usize * 104_729) % 3000);
                            c.set(key.as_bytes(), &v, 0, 0).unwrap();
                        }
                        seq += 2;
                    }
                });
            }
            for r in 0..2u64 {
                let (c, stop, hits, misses) = (&c, &stop, &hits, &misses);
                s.spawn(move || {
                    let mut buf = vec![0u8; 4096];
                    let mut i = r + 1;
                    for _ in 0..100_000 {
                        let tag = i % nkeys;
                        match c.get_copy(format!("copy{tag}").as_bytes(), &mut buf).unwrap() {
                            Some(got) => {
                                assert!(got.copied, "every value fits the buffer");
                                check_value(tag, &buf[..got.value_len]).unwrap();
                                hits.fetch_add(1, Ordering::Relaxed);
                            }
                            None => {
                                misses.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        i = i.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407)
                            >> 1;
                    }
                    stop.store(true, Ordering::Relaxed);
                });
            }
        });
        let (h, m) = (hits.load(Ordering::Relaxed), misses.load(Ordering::Relaxed));
        assert_eq!(h + m, 200_000);
        assert!(h > 0, "some reads hit");
        let st = c.stats();
        assert_eq!((st.hits, st.misses), (h, m), "the store counted every read once");
        assert!(st.table_grows > 0 && st.evictions > 0, "the table grew and segments were evicted");
    }
}

#[test]
fn pinned_items_stay_intact_through_replace_delete_flush_and_eviction() {
    for eviction in [Eviction::Fifo, Eviction::Merge] {
        // 32 segments of 16 KiB in 2 shards: the writers wrap the budget many times.
        let c = cache(512 << 10, 16 << 10, 2, eviction);
        let nkeys = 200u64;
        let barrier = Barrier::new(4);
        let stop = AtomicBool::new(false);
        let verified = AtomicU64::new(0);
        // Writes done so far: the readers go on until the writers have wrapped the budget many
        // times (20,000 writes of ~770 bytes into 512 KiB), however the threads are scheduled.
        let writes = AtomicU64::new(0);
        thread::scope(|s| {
            for w in 0..2u64 {
                let (c, stop, barrier, writes) = (&c, &stop, &barrier, &writes);
                s.spawn(move || {
                    barrier.wait();
                    let mut seq = w;
                    while !stop.load(Ordering::Relaxed) {
                        writes.fetch_add(1, Ordering::Relaxed);
                        let tag = (seq * 7) % nkeys;
                        let key = format!("pin{tag}");
                        match seq % 50 {
                            0 => {
                                let _ = c.delete(key.as_bytes());
                            }
                            1 if w == 0 && seq % 5000 == 1 => c.flush_all(0).unwrap(),
                            _ => {
                                let v = make_value(tag, seq, 20 + (seq as usize * 131) % 1500);
                                c.set(key.as_bytes(), &v, 0, 0).unwrap();
                            }
                        }
                        seq += 2;
                    }
                });
            }
            for r in 0..2u64 {
                let (c, stop, barrier, verified, writes) =
                    (&c, &stop, &barrier, &verified, &writes);
                s.spawn(move || {
                    barrier.wait();
                    let mut held = Vec::new();
                    let mut round = 0u64;
                    while round < 3_000 || writes.load(Ordering::Relaxed) < 20_000 {
                        let tag = ((r + round) * 13) % nkeys;
                        round += 1;
                        if let Some(it) = c.get(format!("pin{tag}").as_bytes()).unwrap() {
                            let seq = check_value(tag, it.value()).unwrap();
                            held.push((tag, seq, it));
                        }
                        // Hold pins across many writes, then verify they did not change.
                        if held.len() >= 16 || round % 97 == 0 {
                            thread::yield_now();
                            for (tag, seq, it) in held.drain(..) {
                                assert_eq!(
                                    check_value(tag, it.value()).unwrap(),
                                    seq,
                                    "pinned bytes changed"
                                );
                                verified.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    drop(held);
                    stop.store(true, Ordering::Relaxed);
                });
            }
        });
        let st = c.stats();
        assert!(st.evictions > 0, "{eviction:?}: no eviction happened: {st:?}");
        assert!(verified.load(Ordering::Relaxed) > 1000);
        assert_eq!(st.pinned, 0);
        assert_eq!(st.segments_retired, 0, "a retired segment was not freed by its last reader");
        assert_eq!(st.segments_used + st.segments_free, st.segments_total);
    }
}

#[test]
fn racing_releases_of_one_ticket_succeed_exactly_once() {
    let c = cache(4 << 20, 64 << 10, 2, Eviction::Merge);
    c.set(b"k", &make_value(1, 0, 64), 0, 0).unwrap();
    let threads = 4;
    let rounds = 2000;
    let barrier = Barrier::new(threads);
    let wins = AtomicU64::new(0);
    let (tx, rx) = std::sync::mpsc::channel();
    // Thread 0 pins and publishes each ticket; every thread (copies of the ticket in hand)
    // releases it at once; exactly one release per ticket may succeed.
    let tickets: Vec<_> =
        (0..rounds).map(|_| c.get_ticketed(b"k").unwrap().unwrap().ticket).collect();
    tx.send(tickets).unwrap();
    let tickets = rx.recv().unwrap();
    thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for t in &tickets {
                    barrier.wait();
                    if c.release_ticket(*t).is_ok() {
                        wins.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(wins.load(Ordering::Relaxed), rounds as u64);
    assert_eq!(c.pinned(), 0);
}

#[test]
fn pins_taken_and_released_on_many_threads_balance_out() {
    let c = cache(8 << 20, 64 << 10, 4, Eviction::Merge);
    let keys = 200u64;
    for k in 0..keys {
        c.set(format!("k{k}").as_bytes(), &make_value(k, 0, 100), 0, 0).unwrap();
    }
    let stop = AtomicBool::new(false);
    let bad = AtomicU64::new(0);
    thread::scope(|s| {
        for w in 0..3u64 {
            let (c, stop, bad) = (&c, &stop, &bad);
            s.spawn(move || {
                let mut n = w;
                // Each reader holds a few pins at a time, released out of order, and checks
                // every value while it is pinned; a copy-out read in between.
                let mut held = Vec::new();
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::Relaxed) {
                    n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let k = (n >> 33) % keys;
                    let key = format!("k{k}");
                    if let Some(it) = c.get_ticketed(key.as_bytes()).unwrap() {
                        // SAFETY: the ticket is held, so the value's bytes are pinned.
                        let v = unsafe { std::slice::from_raw_parts(it.value, it.value_len) };
                        if check_value(k, v).is_err() {
                            bad.fetch_add(1, Ordering::Relaxed);
                        }
                        held.push(it.ticket);
                    }
                    if let Some(got) = c.get_copy(key.as_bytes(), &mut buf).unwrap() {
                        if !got.copied || check_value(k, &buf[..got.value_len]).is_err() {
                            bad.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if held.len() > 4 {
                        let t = held.swap_remove((n >> 40) as usize % held.len());
                        c.release_ticket(t).unwrap();
                    }
                }
                for t in held {
                    c.release_ticket(t).unwrap();
                }
            });
        }
        // A writer rewrites the keys (moving them between segments, evicting) meanwhile.
        for seq in 1..=20 {
            for k in 0..keys {
                c.set(
                    format!("k{k}").as_bytes(),
                    &make_value(k, seq, 100 + (seq as usize % 300)),
                    0,
                    0,
                )
                .unwrap();
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(bad.load(Ordering::Relaxed), 0);
    assert_eq!(c.pinned(), 0);
}
