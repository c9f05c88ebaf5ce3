//! The UMEM frame state table through the C ABI: addresses come from "C" (the fuzzer), and
//! the table must refuse every hand-back it cannot account for, all or nothing, and never
//! lose or duplicate a frame.
//!
//! One umem (64 frames of 2048 bytes; needs CAP_NET_RAW for the AF_XDP socket) serves every
//! input; each input allocates frames, hands back batches of addresses (held frames, at any
//! offset inside them, beyond the area, not held, released before, listed twice), asks for
//! data pointers with any address and length, and checks the frame counts against a model of
//! which frames the caller holds. Every frame is handed back at the end, so the next input
//! starts from an all-free table. FILL/TX are not driven here: without a bound socket the
//! kernel would never return those frames.
//!
//! Rules checked (the documented contract of `p99_xdp_umem_release` / `_data`): a release
//! succeeds iff every address lies in a frame the caller holds and no frame appears twice
//! (an address inside a held frame at any offset is that frame: received descriptors carry
//! the headroom offset); a refused release changes nothing; `_data` succeeds iff the frame
//! is held and `addr + len` stays inside it, and then points exactly at `area + addr`.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use p99::ffi::status::p99_status as S;
use p99::ffi::xdp::umem::*;
use p99_fuzz::Bytes;

const FRAME: u64 = 2048;
const COUNT: u64 = 64;

struct Umem(*mut p99_xdp_umem, usize);
// SAFETY: the handle is used from the fuzzing thread only; libFuzzer runs inputs one by one.
unsafe impl Send for Umem {}
// SAFETY: as above.
unsafe impl Sync for Umem {}

fn umem() -> &'static Umem {
    static U: OnceLock<Umem> = OnceLock::new();
    U.get_or_init(|| {
        // SAFETY: a C struct of integers: all-zero is a valid value.
        let mut cfg: p99_xdp_umem_config = unsafe { std::mem::zeroed() };
        cfg.struct_size = std::mem::size_of::<p99_xdp_umem_config>() as u32;
        // SAFETY: `cfg` is a writable config whose struct_size is set.
        assert_eq!(unsafe { p99_xdp_umem_config_defaults(&mut cfg) }, S::Ok);
        cfg.frame_size = FRAME as u32;
        cfg.frame_count = COUNT as u32;
        cfg.fill_size = 64;
        cfg.comp_size = 64;
        let mut u = std::ptr::null_mut();
        // SAFETY: `cfg` is a full config; `u` writable.
        let st = unsafe { p99_xdp_umem_create(&cfg, &mut u) };
        assert_eq!(st, S::Ok, "umem_frames needs CAP_NET_RAW (run as root)");
        // The area's start: frame 0's data pointer while it is held.
        let mut d = [p99_xdp_desc { addr: 0, len: 0, options: 0 }; COUNT as usize];
        let mut n = 0u32;
        // SAFETY: live umem; `d` has room for COUNT descs; `n` writable.
        assert_eq!(unsafe { p99_xdp_umem_alloc(u, d.as_mut_ptr(), COUNT as u32, &mut n) }, S::Ok);
        assert_eq!(n as u64, COUNT);
        let base = d.iter().map(|x| x.addr).min().unwrap();
        assert_eq!(base, 0);
        let mut p = std::ptr::null_mut();
        // SAFETY: live umem; `p` writable.
        assert_eq!(unsafe { p99_xdp_umem_data(u, 0, 1, &mut p) }, S::Ok);
        // SAFETY: live umem; `d` holds the n descs just allocated.
        assert_eq!(unsafe { p99_xdp_umem_release(u, d.as_ptr(), n) }, S::Ok);
        Umem(u, p as usize)
    })
}

fn counts(u: *mut p99_xdp_umem) -> p99_xdp_frame_counts {
    let mut c = p99_xdp_frame_counts {
        struct_size: std::mem::size_of::<p99_xdp_frame_counts>() as u32,
        free: 0,
        in_fill: 0,
        held: 0,
        in_tx: 0,
    };
    // SAFETY: live umem; `c` writable.
    assert_eq!(unsafe { p99_xdp_umem_frame_counts(u, &mut c) }, S::Ok);
    c
}

/// The frames the caller holds, one bit per frame (COUNT is 64): the model is checked after
/// every step, so it must cost less than the calls it checks (a set collected into a vector
/// on every address pick took a seventh of the run).
#[derive(Clone, Copy, Debug, Default)]
struct Held(u64);

impl Held {
    fn contains(self, i: u64) -> bool {
        i < COUNT && self.0 & (1 << i) != 0
    }
    /// Adds frame `i`; false if it was held already.
    fn insert(&mut self, i: u64) -> bool {
        assert!(i < COUNT, "frame {i} is beyond the area");
        let was = self.contains(i);
        self.0 |= 1 << i;
        !was
    }
    fn remove(&mut self, i: u64) {
        self.0 &= !(1 << i);
    }
    fn len(self) -> usize {
        self.0.count_ones() as usize
    }
    fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// The `n`th held frame in increasing order (`n` < `len()`).
    fn nth(self, n: usize) -> u64 {
        let mut bits = self.0;
        for _ in 0..n {
            bits &= bits - 1;
        }
        u64::from(bits.trailing_zeros())
    }
    fn iter(self) -> impl Iterator<Item = u64> {
        (0..COUNT).filter(move |&i| self.contains(i))
    }
}

fn check_counts(u: *mut p99_xdp_umem, held: Held) {
    let c = counts(u);
    assert_eq!(
        (c.held as usize, c.in_fill, c.in_tx),
        (held.len(), 0, 0),
        "frame counts vs held set"
    );
    assert_eq!(c.free as u64 + c.held as u64, COUNT);
}

fn any_addr(b: &mut Bytes, held: Held, released: &[u64]) -> u64 {
    match b.u8() % 8 {
        0 | 1 if !held.is_empty() => held.nth(b.below(held.len())) * FRAME,
        2 if !held.is_empty() => {
            held.nth(b.below(held.len())) * FRAME + 1 + b.below(FRAME as usize - 1) as u64
        }
        3 if !released.is_empty() => released[b.below(released.len())] * FRAME + b.below(4) as u64,
        4 => COUNT * FRAME + b.below(3 * FRAME as usize) as u64,
        5 => u64::MAX - b.below(FRAME as usize) as u64,
        6 => b.below(COUNT as usize) as u64 * FRAME,
        _ => b.u64(),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let um = umem();
    let u = um.0;
    let mut held = Held::default();
    let mut released: Vec<u64> = Vec::with_capacity(40);
    check_counts(u, held);
    let mut steps = 0;
    while !b.is_empty() && steps < 2000 {
        steps += 1;
        match b.u8() % 4 {
            0 => {
                let want = b.below(COUNT as usize / 2 + 1);
                let mut d = [p99_xdp_desc { addr: 7, len: 7, options: 7 }; COUNT as usize / 2];
                let mut n = u32::MAX;
                // SAFETY: live umem; `d` has room for `want` descs; `n` writable.
                assert_eq!(
                    unsafe { p99_xdp_umem_alloc(u, d.as_mut_ptr(), want as u32, &mut n) },
                    S::Ok
                );
                let free_before = COUNT as usize - held.len();
                assert_eq!(n as usize, want.min(free_before), "alloc count");
                for x in &d[..n as usize] {
                    assert_eq!(x.addr % FRAME, 0, "alloc handed out an unaligned address");
                    assert_eq!((x.len, x.options), (0, 0));
                    assert!(held.insert(x.addr / FRAME), "alloc handed out a held frame twice");
                }
                for x in &d[n as usize..] {
                    assert_eq!((x.addr, x.len, x.options), (7, 7, 7), "alloc wrote past its count");
                }
            }
            1 => {
                let k = b.below(6);
                let mut descs = [p99_xdp_desc { addr: 0, len: 0, options: 0 }; 5];
                for d in &mut descs[..k] {
                    d.addr = any_addr(&mut b, held, &released);
                    d.len = b.u32();
                    d.options = b.u32();
                }
                let descs = &descs[..k];
                let mut seen = Held::default();
                let ok = descs.iter().all(|d| {
                    let i = d.addr / FRAME;
                    held.contains(i) && seen.insert(i)
                });
                // SAFETY: live umem; `descs` holds `k` descs.
                let st = unsafe { p99_xdp_umem_release(u, descs.as_ptr(), k as u32) };
                if ok {
                    assert_eq!(st, S::Ok, "release of held frames refused: {descs:?}");
                    for d in descs {
                        held.remove(d.addr / FRAME);
                        released.push(d.addr / FRAME);
                    }
                    if released.len() > 32 {
                        released.drain(..16);
                    }
                } else {
                    assert_eq!(
                        st,
                        S::InvalidArgument,
                        "bad release accepted: {descs:?} held {held:?}"
                    );
                }
            }
            2 => {
                let addr = any_addr(&mut b, held, &released);
                let len = match b.u8() % 4 {
                    0 => 0,
                    1 => FRAME as u32 - (addr % FRAME) as u32,
                    2 => FRAME as u32 - (addr % FRAME) as u32 + 1,
                    _ => b.u32() % (2 * FRAME as u32),
                };
                let mut p = std::ptr::null_mut();
                // SAFETY: live umem; `p` writable.
                let st = unsafe { p99_xdp_umem_data(u, addr, len, &mut p) };
                let ok = held.contains(addr / FRAME) && (addr % FRAME) + len as u64 <= FRAME;
                if ok {
                    assert_eq!(st, S::Ok, "data refused for a held frame: {addr:#x}+{len}");
                    assert_eq!(p as usize, um.1 + addr as usize);
                    if len > 0 {
                        // SAFETY: the library vouched for `len` writable bytes at `p`.
                        unsafe { std::ptr::write_bytes(p, 0xa5, len as usize) };
                    }
                } else {
                    assert_eq!(st, S::InvalidArgument, "data accepted {addr:#x}+{len}");
                    assert!(p.is_null(), "output written on failure");
                }
            }
            _ => check_counts(u, held),
        }
    }
    check_counts(u, held);
    let all: Vec<p99_xdp_desc> =
        held.iter().map(|i| p99_xdp_desc { addr: i * FRAME, len: 0, options: 0 }).collect();
    // SAFETY: live umem; `all` holds every frame held.
    assert_eq!(unsafe { p99_xdp_umem_release(u, all.as_ptr(), all.len() as u32) }, S::Ok);
    // Released twice: refused, nothing changes.
    if !all.is_empty() {
        // SAFETY: as above.
        assert_eq!(
            unsafe { p99_xdp_umem_release(u, all.as_ptr(), all.len() as u32) },
            S::InvalidArgument
        );
    }
    check_counts(u, Held::default());
});
