//! The cache's per-item meta-protocol state (memcached's mg h l N R W X Z, md C I, ms b I E,
//! ma C), through the Rust API, one rule per test.

use p99::cache::{Cache, ClockKind, Config, Error, MetaDelete, MetaGet, Mode, Stats, WriteOptions};

const T0: u32 = 1_700_000_000;

fn cache(cas: bool) -> Cache {
    Cache::new(Config {
        heap_bytes: 1 << 20,
        segment_bytes: 64 << 10,
        item_max: 64 << 10,
        cas,
        shards: 1,
        clock: ClockKind::Manual(T0),
        ..Config::default()
    })
    .unwrap()
}

fn mg(c: &Cache, key: &[u8], a: MetaGet) -> Option<p99::cache::MetaInfo> {
    c.meta_get(key, &a).unwrap().map(|(_, info)| info)
}

fn plain() -> MetaGet {
    MetaGet::default()
}

fn item_bytes(s: &Stats) -> u64 {
    s.item_bytes
}

#[test]
fn fetched_is_set_by_the_first_counted_read_only() {
    let c = cache(true);
    c.set(b"k", b"v", 0, 0).unwrap();
    let no_bump = MetaGet { bump: false, ..plain() };
    assert!(!mg(&c, b"k", no_bump).unwrap().fetched);
    assert!(!mg(&c, b"k", plain()).unwrap().fetched); // the state before this read
    assert!(mg(&c, b"k", plain()).unwrap().fetched);
    let mut buf = [0u8; 8];
    c.set(b"g", b"v", 0, 0).unwrap();
    c.get_copy(b"g", &mut buf).unwrap().unwrap();
    assert!(mg(&c, b"g", no_bump).unwrap().fetched);
    c.set(b"g", b"w", 0, 0).unwrap(); // a write starts unfetched
    assert!(!mg(&c, b"g", no_bump).unwrap().fetched);
    c.touch(b"g", T0 + 100).unwrap(); // memcached's touch reads the item
    assert!(mg(&c, b"g", no_bump).unwrap().fetched);
    // marks cost no header byte: a fetched item is as large as before
    let before = item_bytes(&c.stats());
    c.set(b"h", b"0123456789", 0, 0).unwrap();
    let one = item_bytes(&c.stats()) - before;
    drop(c.get(b"h").unwrap());
    assert_eq!(item_bytes(&c.stats()) - before, one);
    assert_eq!(one, 3 + 1 + 10);
}

#[test]
fn last_write_time_comes_from_the_segment_and_moves_refresh_it() {
    let c = cache(true);
    c.set(b"a", b"v", 0, 0).unwrap();
    c.set_time(T0 + 5).unwrap();
    c.set(b"b", b"v", 0, 0).unwrap();
    c.set_time(T0 + 9).unwrap();
    assert_eq!(mg(&c, b"a", plain()).unwrap().written_at, T0);
    assert_eq!(mg(&c, b"b", plain()).unwrap().written_at, T0 + 5);
    c.touch(b"a", T0 + 1000).unwrap(); // a move
    assert_eq!(mg(&c, b"a", plain()).unwrap().written_at, T0 + 9);
    // many distinct seconds in one segment: times get coarser, never later than the truth
    for i in 0..40u32 {
        c.set_time(T0 + 10 + i).unwrap();
        c.set(format!("s{i}").as_bytes(), b"v", 0, 0).unwrap();
    }
    for i in 0..40u32 {
        let w = mg(&c, format!("s{i}").as_bytes(), plain()).unwrap().written_at;
        assert!(w <= T0 + 10 + i && w >= T0, "{i}: {w}");
    }
    assert_eq!(mg(&c, b"s39", plain()).unwrap().written_at, T0 + 49);
}

#[test]
fn vivify_creates_an_empty_item_and_hands_out_one_win_token() {
    let c = cache(true);
    let viv = MetaGet { vivify: Some(T0 + 30), ..plain() };
    let (it, info) = c.meta_get(b"n", &viv).unwrap().unwrap();
    assert_eq!((it.value(), it.flags(), it.expiry()), (&b""[..], 0, T0 + 30));
    assert!(info.created && info.won && !info.win_token_sent);
    drop(it);
    let again = mg(&c, b"n", viv).unwrap();
    assert!(!again.created && !again.won && again.win_token_sent);
    // a write clears the marks
    c.set(b"n", b"x", 0, 0).unwrap();
    let fresh = mg(&c, b"n", plain()).unwrap();
    assert!(!fresh.win_token_sent && !fresh.stale);
    assert!(mg(&c, b"none", plain()).is_none()); // no vivify: a miss
                                                 // claim_win false: created, but no token is marked sent
    let quiet = MetaGet { vivify: Some(0), claim_win: false, ..plain() };
    assert!(!mg(&c, b"m", quiet).unwrap().won);
    assert!(!mg(&c, b"m", plain()).unwrap().win_token_sent);
}

#[test]
fn recache_wins_once_when_the_item_expires_sooner() {
    let c = cache(true);
    c.set(b"r", b"v", 0, T0 + 100).unwrap();
    assert!(!mg(&c, b"r", MetaGet { recache: Some(T0 + 50), ..plain() }).unwrap().won);
    let win = MetaGet { recache: Some(T0 + 200), ..plain() };
    assert!(mg(&c, b"r", win).unwrap().won);
    let second = mg(&c, b"r", win).unwrap();
    assert!(!second.won && second.win_token_sent);
    c.set(b"never", b"v", 0, 0).unwrap();
    assert!(!mg(&c, b"never", win).unwrap().won); // no expiry: nothing to recache
                                                  // T before R: R compares the new expiry
    c.set(b"t", b"v", 0, T0 + 100).unwrap();
    let t_then_r = MetaGet {
        touch: Some(T0 + 10),
        recache: Some(T0 + 50),
        touch_before_recache: true,
        ..plain()
    };
    let (it, info) = c.meta_get(b"t", &t_then_r).unwrap().unwrap();
    assert!(info.won);
    assert_eq!((it.expiry(), info.expiry_before), (T0 + 10, T0 + 100));
}

#[test]
fn mark_stale_keeps_the_item_with_a_new_cas_and_gives_the_token_back() {
    let c = cache(true);
    let cas = c.set(b"k", b"v", 7, T0 + 100).unwrap();
    assert!(mg(&c, b"k", MetaGet { recache: Some(T0 + 200), ..plain() }).unwrap().won);
    let stale = MetaDelete { mark_stale: true, stale_expiry: Some(T0 + 30), ..Default::default() };
    c.meta_delete(b"k", &stale).unwrap();
    let (it, info) = c.meta_get(b"k", &plain()).unwrap().unwrap();
    assert_ne!(it.cas(), cas);
    assert_eq!((it.value(), it.flags(), it.expiry()), (&b"v"[..], 7, T0 + 30));
    assert!(info.stale && info.won && !info.win_token_sent); // stale: the next reader wins
    drop(it);
    let next = mg(&c, b"k", plain()).unwrap();
    assert!(next.stale && next.win_token_sent && !next.won);
}

#[test]
fn cas_checked_delete() {
    let c = cache(true);
    let cas = c.set(b"k", b"v", 0, 0).unwrap();
    let wrong = MetaDelete { cas: Some(cas + 1), ..Default::default() };
    assert_eq!(c.meta_delete(b"k", &wrong), Err(Error::Exists));
    assert_eq!(c.meta_delete(b"k", &MetaDelete { cas: Some(cas), ..Default::default() }), Ok(()));
    assert_eq!(c.meta_delete(b"k", &MetaDelete::default()), Err(Error::NotFound));
    // -C: every CAS reads as 0, so only C0 matches
    let nc = cache(false);
    nc.set(b"k", b"v", 0, 0).unwrap();
    assert_eq!(nc.meta_delete(b"k", &wrong), Err(Error::Exists));
    assert_eq!(nc.meta_delete(b"k", &MetaDelete { cas: Some(0), ..Default::default() }), Ok(()));
}

#[test]
fn stale_if_older_stores_a_late_write_marked_stale() {
    let c = cache(true);
    let old = c.set(b"k", b"a", 0, T0 + 100).unwrap();
    let newer = c.store(b"k", b"b", 0, T0 + 100, Mode::Set, 0).unwrap();
    assert!(newer > old);
    let opts = WriteOptions { stale_if_older: true, ..Default::default() };
    let r = c.reserve(b"k", 1, 0, 0).map(|mut r| {
        r.write(b"c").unwrap();
        r
    });
    c.commit_with(r.unwrap(), Mode::Cas, old, &opts).unwrap();
    let (it, info) = c.meta_get(b"k", &plain()).unwrap().unwrap();
    assert_eq!((it.value(), it.expiry()), (&b"c"[..], T0 + 100)); // the old expiry kept
    assert!(info.stale);
    let cur = it.cas();
    drop(it);
    // a newer cas than the item's, or 0, is refused as before
    for cas in [cur + 1, 0] {
        let mut r = c.reserve(b"k", 1, 0, 0).unwrap();
        r.write(b"d").unwrap();
        assert_eq!(c.commit_with(r, Mode::Cas, cas, &opts), Err(Error::Exists));
    }
    // without the option an older cas is refused
    let mut r = c.reserve(b"k", 1, 0, 0).unwrap();
    r.write(b"e").unwrap();
    assert_eq!(c.commit(r, Mode::Cas, old), Err(Error::Exists));
}

#[test]
fn cas_checked_append_explicit_cas_and_key_binary() {
    let c = cache(true);
    let cas = c.set(b"k", b"a", 0, 0).unwrap();
    let checked = WriteOptions { append_checks_cas: true, ..Default::default() };
    let mut r = c.reserve(b"k", 1, 0, 0).unwrap();
    r.write(b"b").unwrap();
    assert_eq!(c.commit_with(r, Mode::Append, cas + 1, &checked), Err(Error::Exists));
    let mut r = c.reserve(b"k", 1, 0, 0).unwrap();
    r.write(b"b").unwrap();
    c.commit_with(r, Mode::Append, cas, &checked).unwrap();
    assert_eq!(c.get_value(b"k").unwrap().unwrap(), b"ab");
    // explicit cas (memcached's E)
    let explicit = WriteOptions { new_cas: 12345, key_binary: true, ..Default::default() };
    let mut r = c.reserve(b"e", 1, 0, 0).unwrap();
    r.write(b"x").unwrap();
    assert_eq!(c.commit_with(r, Mode::Set, 0, &explicit), Ok(12345));
    let (it, info) = c.meta_get(b"e", &plain()).unwrap().unwrap();
    assert_eq!(it.cas(), 12345);
    assert!(info.key_binary);
    drop(it);
    c.touch(b"e", T0 + 50).unwrap(); // moves keep the marks and the cas
    let (it, info) = c.meta_get(b"e", &plain()).unwrap().unwrap();
    assert_eq!(it.cas(), 12345);
    assert!(info.key_binary && info.fetched);
}

#[test]
fn delta_with_an_expected_cas() {
    let c = cache(true);
    let cas = c.set(b"n", b"5", 0, 0).unwrap();
    assert_eq!(c.delta(b"n", true, 1, cas + 1), Err(Error::Exists));
    let (v, cas2) = c.delta(b"n", true, 1, cas).unwrap();
    assert_eq!(v, 6);
    assert_eq!(c.delta(b"n", false, 2, 0).unwrap().0, 4); // 0: no check
    assert_eq!(c.delta(b"n", true, 1, cas2), Err(Error::Exists));
    assert_eq!(c.delta(b"none", true, 1, 0), Err(Error::NotFound));
}

#[test]
fn marks_survive_merge_eviction() {
    let c = Cache::new(Config {
        heap_bytes: 8 * 4096,
        segment_bytes: 4096,
        item_max: 4096,
        shards: 1,
        clock: ClockKind::Manual(T0),
        ..Config::default()
    })
    .unwrap();
    c.set(b"hot", b"v", 0, 0).unwrap();
    c.meta_delete(b"hot", &MetaDelete { mark_stale: true, ..Default::default() }).unwrap();
    drop(c.get(b"hot").unwrap()); // fetched: merge carries it forward
    for i in 0..2000u32 {
        c.set(format!("fill{i}").as_bytes(), &[b'x'; 100], 0, 0).unwrap();
        drop(c.get(b"hot").unwrap());
    }
    assert!(c.stats().merged_items > 0);
    let info = mg(&c, b"hot", MetaGet { bump: false, ..plain() }).unwrap();
    assert!(info.stale && info.fetched);
}
