//! `Config::prefault`: the heap is memory from creation on. Alone in its test binary (its own
//! process), so the resident-set figures are this test's.

use p99::cache::{Cache, Config};

/// Resident set of this process in bytes (`/proc/self/statm`, second field, in pages).
fn rss_bytes() -> usize {
    let s = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: usize = s.split_whitespace().nth(1).expect("statm field").parse().expect("pages");
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize
}

#[test]
fn prefault_backs_the_heap_at_creation_and_lazy_does_not() {
    const HEAP: usize = 64 << 20;
    let cfg = |prefault| Config { heap_bytes: HEAP, prefault, ..Config::default() };

    let before = rss_bytes();
    let lazy = Cache::new(cfg(false)).expect("lazy cache");
    let lazy_grew = rss_bytes().saturating_sub(before);
    drop(lazy);

    let before = rss_bytes();
    let eager = Cache::new(cfg(true)).expect("prefaulted cache");
    let eager_grew = rss_bytes().saturating_sub(before);
    assert!(
        eager_grew >= HEAP * 15 / 16,
        "a prefaulted 64 MiB heap added only {eager_grew} bytes of RSS"
    );
    assert!(lazy_grew < HEAP / 4, "a lazy 64 MiB heap added {lazy_grew} bytes of RSS at creation");

    // And it is an ordinary cache: writes and reads work, values come back intact.
    for i in 0..10_000u32 {
        let k = format!("key-{i}");
        eager.set(k.as_bytes(), &i.to_le_bytes(), 0, 0).expect("set");
    }
    for i in 0..10_000u32 {
        let k = format!("key-{i}");
        let mut buf = [0u8; 8];
        let got = eager.get_copy(k.as_bytes(), &mut buf).expect("get").expect("hit");
        assert_eq!(&buf[..got.value_len], &i.to_le_bytes());
    }
}
