//! A panic inside a cache operation poisons the cache: later calls fail at once (through the
//! C ABI with `P99_STATUS_PANIC`), a held pin can still be released and the cache freed.
//! The panic is injected with a test-only hook, inside a write's critical section.

use std::ffi::CStr;
use std::panic::{catch_unwind, AssertUnwindSafe};

use p99::cache::{Cache, ClockKind, Config, Error};
use p99::ffi::boundary::p99_last_error_message;
use p99::ffi::cache::*;
use p99::ffi::status::p99_status as S;

#[test]
fn a_panic_in_a_write_poisons_the_rust_cache() {
    let c = Cache::new(Config {
        heap_bytes: 1 << 20,
        segment_bytes: 64 << 10,
        item_max: 64 << 10,
        shards: 1,
        clock: ClockKind::Manual(1_700_000_000),
        ..Config::default()
    })
    .unwrap();
    c.set(b"a", b"1", 0, 0).unwrap();
    let pin = c.get(b"a").unwrap().unwrap();
    c.inject_panic_in_next_write();
    assert!(catch_unwind(AssertUnwindSafe(|| c.set(b"b", b"2", 0, 0))).is_err());
    assert_eq!(c.check(), Err(Error::Poisoned));
    assert_eq!(c.get(b"a").err(), Some(Error::Poisoned));
    assert_eq!(c.set(b"a", b"3", 0, 0), Err(Error::Poisoned));
    assert_eq!(c.reserve(b"a", 1, 0, 0).unwrap_err(), Error::Poisoned);
    assert_eq!(c.delete(b"a"), Err(Error::Poisoned));
    assert_eq!(c.flush_all(0), Err(Error::Poisoned));
    // The pin taken before still holds its bytes and is released normally.
    assert_eq!(pin.value(), b"1");
    drop(pin);
    assert_eq!(c.pinned(), 0);
}

#[test]
fn a_panic_in_a_cache_call_poisons_that_cache_for_every_later_c_call() {
    // SAFETY: an all-zero config is a valid value of this plain C struct.
    let mut cfg: p99_cache_config = unsafe { std::mem::zeroed() };
    cfg.struct_size = std::mem::size_of::<p99_cache_config>() as u32;
    // SAFETY: `cfg` is writable for one config, struct_size set.
    assert_eq!(unsafe { p99_cache_config_defaults(&mut cfg) }, S::Ok);
    cfg.heap_bytes = 4 << 20;
    let mut cache = std::ptr::null_mut();
    let mut other = std::ptr::null_mut();
    // SAFETY: `cfg` is a full config; the out-pointers are writable.
    unsafe {
        assert_eq!(p99_cache_new(&cfg, &mut cache), S::Ok);
        assert_eq!(p99_cache_new(&cfg, &mut other), S::Ok);
    }
    let mut cas = 0;
    let mut pin = p99_cache_item::default();
    // SAFETY: live caches; keys and values valid for their lengths; out-parameters writable.
    unsafe {
        assert_eq!(
            p99_cache_store(
                cache,
                b"k".as_ptr(),
                1,
                b"v".as_ptr(),
                1,
                0,
                0,
                P99_CACHE_MODE_SET,
                0,
                &mut cas
            ),
            S::Ok
        );
        assert_eq!(p99_cache_get(cache, b"k".as_ptr(), 1, &mut pin), S::Ok);
        test_inject_panic_in_next_write(cache);
        assert_eq!(
            p99_cache_store(
                cache,
                b"j".as_ptr(),
                1,
                b"w".as_ptr(),
                1,
                0,
                0,
                P99_CACHE_MODE_SET,
                0,
                &mut cas
            ),
            S::Panic
        );
        let msg = CStr::from_ptr(p99_last_error_message()).to_string_lossy().into_owned();
        assert!(msg.contains("injected panic"), "{msg}");

        // Every later call is refused, whatever it is.
        let mut it = p99_cache_item::default();
        assert_eq!(p99_cache_get(cache, b"k".as_ptr(), 1, &mut it), S::Panic);
        assert_eq!(
            p99_cache_store(
                cache,
                b"k".as_ptr(),
                1,
                b"x".as_ptr(),
                1,
                0,
                0,
                P99_CACHE_MODE_SET,
                0,
                &mut cas
            ),
            S::Panic
        );
        assert_eq!(p99_cache_delete(cache, b"k".as_ptr(), 1), S::Panic);
        assert_eq!(p99_cache_touch(cache, b"k".as_ptr(), 1, 0), S::Panic);
        let mut v = 0;
        assert_eq!(
            p99_cache_incr(cache, b"k".as_ptr(), 1, 1, &mut v, std::ptr::null_mut()),
            S::Panic
        );
        assert_eq!(p99_cache_flush_all(cache, 0), S::Panic);
        let mut res = p99_cache_reservation {
            value: std::ptr::null_mut(),
            value_len: 0,
            state: std::ptr::null_mut(),
        };
        assert_eq!(p99_cache_reserve(cache, b"k".as_ptr(), 1, 1, 0, 0, &mut res), S::Panic);
        assert!(res.state.is_null());
        let mut st = p99_cache_stats {
            struct_size: std::mem::size_of::<p99_cache_stats>() as u32,
            ..Default::default()
        };
        assert_eq!(p99_cache_get_stats(cache, &mut st), S::Panic);
        let mut e = 0;
        assert_eq!(p99_cache_expiry_from_exptime(cache, 10, &mut e), S::Panic);

        // Another cache is not affected.
        assert_eq!(
            p99_cache_store(
                other,
                b"k".as_ptr(),
                1,
                b"v".as_ptr(),
                1,
                0,
                0,
                P99_CACHE_MODE_SET,
                0,
                &mut cas
            ),
            S::Ok
        );

        // The pin read before the panic is intact and can be handed back; then the cache frees.
        assert_eq!(std::slice::from_raw_parts(pin.value, pin.value_len), b"v");
        assert_eq!(p99_cache_item_release(cache, &mut pin), S::Ok);
        assert_eq!(p99_cache_free(cache), S::Ok);
        assert_eq!(p99_cache_free(other), S::Ok);
    }
}
