//! The bytes of one segment, shared between the writer (under the shard lock) and pinned
//! readers (without it).
//!
//! This is one of the two places in the cache with `unsafe` (the other is `shard_lock`, the
//! shard's reader-writer lock): a pinned item hands out its value
//! bytes to a reader on another thread while the shard keeps appending other items to the
//! same segment. Safe Rust cannot express "these byte ranges are disjoint and written once",
//! so the segment memory is a raw allocation and the invariants below are upheld by the shard:
//!
//! 1. Bytes are only written under the owning shard's lock, and only at or beyond the
//!    segment's write offset (never yet handed out), or after the segment was reset — which
//!    the shard does only when no reader holds a pin on it — or in an item's header (its dead
//!    bit), which readers never borrow: a pin hands out the key and value bytes only, and
//!    headers are read under the lock.
//! 2. A reader gets a pointer only while holding the shard lock, to an item already written
//!    (the lock release/acquire orders the write before the read), and takes a pin first.
//! 3. The memory lives as long as the cache: segments are reused, never unmapped before the
//!    cache is dropped, and the cache cannot be dropped while a pin exists.

use std::ptr::NonNull;

/// The memory of all segments of one shard: one anonymous mapping of the shard's whole
/// budget, reserved up front (`MAP_NORESERVE`: pages cost nothing until a segment is first
/// written, unless the cache is configured to prefault them) and advised for transparent huge
/// pages, so random reads over a large heap do not also miss the TLB. Unmapped when the shard
/// is dropped.
pub(crate) struct Arena {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned by this value; access to its bytes goes through
// `SegmentMemory`, which follows the write-once/pin protocol above.
unsafe impl Send for Arena {}
// SAFETY: as above.
unsafe impl Sync for Arena {}

/// Asks the kernel to back the 2 MiB-aligned whole huge pages inside `v`'s (not yet touched)
/// capacity with transparent huge pages, before the caller fills it: a table read at random
/// over many megabytes then misses the TLB far less. An optimisation only: without THP the
/// advice is refused and nothing changes.
pub(crate) fn advise_huge_pages<T>(v: &mut Vec<T>) {
    const HUGE: usize = 2 << 20;
    let start = v.as_mut_ptr() as usize;
    let end = start + v.capacity() * std::mem::size_of::<T>();
    let first = start.next_multiple_of(HUGE);
    if end < first + HUGE {
        return;
    }
    let len = (end - first) / HUGE * HUGE;
    // SAFETY: [first, first + len) lies inside the vector's own allocation; MADV_HUGEPAGE only
    // changes how the kernel backs those pages, never their contents or validity.
    unsafe { libc::madvise(first as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
}

impl Arena {
    /// Maps `len` bytes (at least one page). With `prefault`, every page is also backed now
    /// (`MADV_POPULATE_WRITE`, Linux 5.14+; on older kernels by writing one byte per page),
    /// so no later write faults. Fails with the OS error when the mapping fails, or when
    /// prefaulting finds too little memory (`ENOMEM`: the mapping is released).
    pub(crate) fn new(len: usize, prefault: bool) -> std::io::Result<Arena> {
        let len = len.max(1);
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing has no
        // preconditions; the result is checked against MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: [p, p + len) is the mapping just created. Huge pages are an optimisation:
        // a kernel without THP refuses the advice and the mapping works as it is.
        unsafe { libc::madvise(p, len, libc::MADV_HUGEPAGE) };
        let arena = Arena { ptr: NonNull::new(p.cast()).expect("mmap returned NULL"), len };
        if prefault {
            arena.populate()?;
        }
        Ok(arena)
    }

    /// Backs every page of the mapping now (huge pages where the advice above was taken).
    fn populate(&self) -> std::io::Result<()> {
        /// `MADV_POPULATE_WRITE` (Linux 5.14; not in the libc crate yet): fault the range in as
        /// if written, reporting ENOMEM instead of invoking the OOM killer mid-way.
        const MADV_POPULATE_WRITE: libc::c_int = 23;
        // SAFETY: the whole range is this arena's own mapping; populating does not change
        // its contents (zero pages stay zero).
        let r = unsafe { libc::madvise(self.ptr.as_ptr().cast(), self.len, MADV_POPULATE_WRITE) };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(e);
        }
        // A kernel without MADV_POPULATE_WRITE: write a zero into every page (the mapping is
        // fresh and zero-filled, so the contents do not change).
        for off in (0..self.len).step_by(4096) {
            // SAFETY: `off < len`, inside the mapping; nothing else references it yet.
            unsafe { std::ptr::write_volatile(self.ptr.as_ptr().add(off), 0) };
        }
        Ok(())
    }

    /// The bytes of segment `index` of `size` bytes. Panics if outside the mapping.
    pub(crate) fn segment(&self, index: usize, size: usize) -> SegmentMemory {
        let off = index.checked_mul(size).expect("segment offset overflow");
        assert!(off <= self.len && size <= self.len - off, "segment outside the arena");
        SegmentMemory {
            // SAFETY: in bounds of the mapping (checked above).
            ptr: unsafe { NonNull::new_unchecked(self.ptr.as_ptr().add(off)) },
            len: size,
        }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`, once. No pin can exist: the
        // cache cannot be dropped while an ItemRef borrows it, and the C API refuses to free
        // a cache with pins held.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The bytes of one segment: a window of its shard's [`Arena`], which outlives it.
pub(crate) struct SegmentMemory {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a window into the arena; cross-thread access follows the write-once/pin protocol
// described in the module documentation.
unsafe impl Send for SegmentMemory {}
// SAFETY: as above; shared references only read bytes that are no longer written.
unsafe impl Sync for SegmentMemory {}

impl SegmentMemory {
    /// Copies `data` to `off`. Panics when out of bounds.
    ///
    /// Callers hold the shard lock and write only bytes no pinned reader can see (rule 1).
    #[inline]
    pub(crate) fn write(&mut self, off: usize, data: &[u8]) {
        assert!(off <= self.len && data.len() <= self.len - off, "segment write out of bounds");
        // SAFETY: in bounds (checked above); no reference to these bytes exists (rule 1),
        // and `data` cannot overlap them since it is a distinct, live borrow.
        unsafe { copy_bytes(data.as_ptr(), self.ptr.as_ptr().add(off), data.len()) }
    }

    /// Writes an item at `off`: the first `head_len` bytes of `head` (its encoded header), then
    /// `key`, then each of `parts`; returns the offset just past it. One bounds check for the
    /// whole item. When the segment has room past the item for it, all of `head` is copied
    /// (a fixed-size move, no call): the bytes past the header are overwritten by the key and
    /// value, or lie in the segment's unwritten space. Panics when the item does not fit.
    ///
    /// Callers hold the shard lock and write only bytes no pinned reader can see (rule 1).
    #[inline(always)]
    pub(crate) fn write_item<const H: usize>(
        &mut self,
        off: usize,
        head: &[u8; H],
        head_len: usize,
        key: &[u8],
        parts: &[&[u8]],
    ) -> usize {
        let body = key.len() + parts.iter().map(|p| p.len()).sum::<usize>();
        assert!(
            head_len <= H && off <= self.len && head_len + body <= self.len - off,
            "segment write out of bounds"
        );
        let base = self.ptr.as_ptr();
        // SAFETY: every copy below lands in [off, off + head_len + body), in bounds (checked
        // above), or, for the whole `head`, in [off, off + H) when that is in bounds too; no
        // reference to these bytes exists (rule 1), and the sources are distinct live borrows.
        unsafe {
            if off + H <= self.len {
                std::ptr::copy_nonoverlapping(head.as_ptr(), base.add(off), H);
            } else {
                copy_bytes(head.as_ptr(), base.add(off), head_len);
            }
            let mut at = off + head_len;
            copy_bytes(key.as_ptr(), base.add(at), key.len());
            at += key.len();
            for p in parts {
                copy_bytes(p.as_ptr(), base.add(at), p.len());
                at += p.len();
            }
            at
        }
    }

    /// Borrows `len` bytes at `off` while the caller holds the shard lock. Panics when out of
    /// bounds.
    #[inline]
    pub(crate) fn read(&self, off: usize, len: usize) -> &[u8] {
        assert!(off <= self.len && len <= self.len - off, "segment read out of bounds");
        // SAFETY: in bounds; the mapping is initialised (zero-filled, or bytes written
        // before: a window may reach past the write offset), and none of these bytes is
        // written while this borrow (tied to `&self`, hence to the held lock) lives (rule 1).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(off), len) }
    }

    /// The address of byte `off`, for a pinned reader (rule 2). Panics when out of bounds.
    #[inline]
    pub(crate) fn addr(&self, off: usize) -> *const u8 {
        assert!(off <= self.len, "segment address out of bounds");
        // SAFETY: `off` is within the window (or one past its end).
        unsafe { self.ptr.as_ptr().add(off) }
    }
}

/// Copies `src` into the start of `dst` (which must be at least as long). The store's copies
/// are a key and a value per write and a value per copied read, mostly well under 128 bytes:
/// inlined moves do those without a call into the C library's `memcpy`.
#[inline(always)]
pub(crate) fn copy_into(dst: &mut [u8], src: &[u8]) {
    assert!(src.len() <= dst.len(), "copy_into: destination too short");
    // SAFETY: both ranges are in bounds of their slices (checked above), and a shared and a
    // mutable borrow never overlap.
    unsafe { copy_bytes(src.as_ptr(), dst.as_mut_ptr(), src.len()) }
}

/// Copies `n` bytes from `src` to `dst`: 1-3 bytes one by one, 4-128 bytes as two moves of
/// `N` bytes with `N <= n <= 2N` (from the start and to the end, overlapping in the middle),
/// longer runs through `copy_nonoverlapping` (`memcpy`).
///
/// # Safety
/// `src` valid for `n` byte reads, `dst` for `n` byte writes, the ranges not overlapping.
#[inline(always)]
unsafe fn copy_bytes(src: *const u8, dst: *mut u8, n: usize) {
    /// Moves `N` bytes from `s` and `N` bytes ending at `s + n` (`N <= n <= 2N`).
    ///
    /// # Safety
    /// As `copy_bytes`, with `N <= n`.
    #[inline(always)]
    unsafe fn two<const N: usize>(s: *const u8, d: *mut u8, n: usize) {
        // SAFETY: `N <= n`, so [0, N) and [n - N, n) lie in both ranges; unaligned reads
        // and writes of byte arrays have no alignment requirement. Both reads come before
        // either write, which does not matter here (no overlap) but costs nothing.
        unsafe {
            let a = std::ptr::read_unaligned(s.cast::<[u8; N]>());
            let b = std::ptr::read_unaligned(s.add(n - N).cast::<[u8; N]>());
            std::ptr::write_unaligned(d.cast::<[u8; N]>(), a);
            std::ptr::write_unaligned(d.add(n - N).cast::<[u8; N]>(), b);
        }
    }
    // SAFETY (every arm): the caller's contract, and each arm's `N` is at most `n`.
    unsafe {
        match n {
            0 => {}
            1..=3 => {
                *dst = *src;
                *dst.add(n / 2) = *src.add(n / 2);
                *dst.add(n - 1) = *src.add(n - 1);
            }
            4..=7 => two::<4>(src, dst, n),
            8..=15 => two::<8>(src, dst, n),
            16..=31 => two::<16>(src, dst, n),
            32..=63 => two::<32>(src, dst, n),
            64..=128 => two::<64>(src, dst, n),
            _ => std::ptr::copy_nonoverlapping(src, dst, n),
        }
    }
}

/// Asks the CPU to bring the cache line at `addr` in (a hint: no effect on what the program
/// computes, and never a fault, whatever the address).
#[inline(always)]
pub(crate) fn prefetch(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing the program sees and cannot fault, even for an address
    // that is not mapped; SSE is part of the x86_64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(addr as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

/// Borrows `len` bytes at `ptr` for a holder of a pin.
///
/// # Safety
/// `ptr` must come from [`SegmentMemory::addr`] of a segment on which the caller holds a pin,
/// for an item of at least `len` bytes written before the pin was taken (rule 2), and the
/// returned slice must not outlive the pin.
pub(crate) unsafe fn pinned_slice<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if len == 0 {
        return &[];
    }
    // SAFETY: guaranteed by the caller as documented above.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}

#[cfg(test)]
mod tests {
    use super::{copy_into, Arena};

    /// An item lands whole: its header's first bytes, key and parts in order, at the start of a
    /// segment (the whole header buffer copied) and ending exactly at its end (only the
    /// header's bytes copied); one that does not fit is refused before anything is written.
    #[test]
    #[cfg_attr(miri, ignore)] // Miri cannot map the arena (MAP_NORESERVE)
    fn write_item_places_every_part_and_checks_the_whole_item() {
        let arena = Arena::new(4096, false).unwrap();
        let mut seg = arena.segment(0, 4096);
        let head = *b"HHHxxxxx";
        let (key, a, b) = (&b"key"[..], &b"value-"[..], &b"and-more"[..]);
        let end = seg.write_item(0, &head, 3, key, &[a, b]);
        assert_eq!(end, 3 + 3 + 6 + 8);
        assert_eq!(seg.read(0, end), b"HHHkeyvalue-and-more");
        let at = 4096 - end;
        assert_eq!(seg.write_item(at, &head, 3, key, &[a, b]), 4096);
        assert_eq!(seg.read(at, end), b"HHHkeyvalue-and-more");
        assert!(seg.read(at - 8, 8).iter().all(|&x| x == 0), "wrote before the item");
        let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            seg.write_item(at + 1, &head, 3, key, &[a, b]);
        }));
        assert!(refused.is_err(), "an item past the segment's end was written");
        assert_eq!(seg.read(at, end), b"HHHkeyvalue-and-more", "a refused write changed bytes");
    }

    /// Every length up to and past the inlined sizes, at aligned and unaligned offsets: each byte
    /// lands where it belongs and nothing around the destination changes.
    #[test]
    fn copy_into_every_length() {
        let src: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for n in 0..=260 {
            for at in [0, 1, 7] {
                let mut dst = vec![0xAAu8; 300];
                copy_into(&mut dst[at..at + n], &src[at..at + n]);
                assert_eq!(&dst[at..at + n], &src[at..at + n], "n {n} at {at}");
                assert!(dst[..at].iter().all(|&b| b == 0xAA), "before, n {n} at {at}");
                assert!(dst[at + n..].iter().all(|&b| b == 0xAA), "after, n {n} at {at}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "destination too short")]
    fn copy_into_refuses_a_short_destination() {
        copy_into(&mut [0u8; 3], &[1, 2, 3, 4]);
    }
}
