//! The bytes of one segment, shared between the writer (under the shard lock) and pinned
//! readers (without it).
//!
//! This is the one place in the cache that needs `unsafe`: a pinned item hands out its value
//! bytes to a reader on another thread while the shard keeps appending other items to the
//! same segment. Safe Rust cannot express "these byte ranges are disjoint and written once",
//! so the segment memory is a raw allocation and the invariants below are upheld by the shard:
//!
//! 1. Bytes are only written under the owning shard's lock, and only at or beyond the
//!    segment's write offset (never yet handed out), or after the segment was reset — which
//!    the shard does only when no reader holds a pin on it.
//! 2. A reader gets a pointer only while holding the shard lock, to an item already written
//!    (the lock release/acquire orders the write before the read), and takes a pin first.
//! 3. The allocation lives as long as the cache: segments are reused, never deallocated
//!    before the cache is dropped, and the cache cannot be dropped while a pin exists.

use std::ptr::NonNull;

/// A fixed-size, lazily zero-filled byte allocation for one segment.
pub(crate) struct SegmentMemory {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the memory is a plain heap allocation owned by this value; cross-thread access
// follows the write-once/pin protocol described in the module documentation.
unsafe impl Send for SegmentMemory {}
// SAFETY: as above; shared references only read bytes that are no longer written.
unsafe impl Sync for SegmentMemory {}

impl SegmentMemory {
    /// Allocates `len` zeroed bytes (calloc: pages are committed only when touched).
    pub(crate) fn new(len: usize) -> SegmentMemory {
        let boxed: Box<[u8]> = vec![0u8; len].into_boxed_slice();
        let raw = Box::into_raw(boxed) as *mut u8;
        SegmentMemory {
            // Box::into_raw never returns NULL.
            ptr: NonNull::new(raw).expect("Box::into_raw returned NULL"),
            len,
        }
    }

    /// Copies `data` to `off`. Panics when out of bounds.
    ///
    /// Callers hold the shard lock and write only bytes no pinned reader can see (rule 1).
    pub(crate) fn write(&mut self, off: usize, data: &[u8]) {
        assert!(off <= self.len && data.len() <= self.len - off, "segment write out of bounds");
        // SAFETY: in bounds (checked above); no reference to these bytes exists (rule 1),
        // and `data` cannot overlap them since it is a distinct, live borrow.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(off), data.len())
        }
    }

    /// Borrows `len` bytes at `off` while the caller holds the shard lock. Panics when out of
    /// bounds.
    pub(crate) fn read(&self, off: usize, len: usize) -> &[u8] {
        assert!(off <= self.len && len <= self.len - off, "segment read out of bounds");
        // SAFETY: in bounds; these bytes were written before and are not written while this
        // borrow (tied to `&self`, hence to the held lock) lives (rule 1).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(off), len) }
    }

    /// The address of byte `off`, for a pinned reader (rule 2). Panics when out of bounds.
    pub(crate) fn addr(&self, off: usize) -> *const u8 {
        assert!(off <= self.len, "segment address out of bounds");
        // SAFETY: `off` is within the allocation (or one past its end).
        unsafe { self.ptr.as_ptr().add(off) }
    }
}

impl Drop for SegmentMemory {
    fn drop(&mut self) {
        let slice = std::ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), self.len);
        // SAFETY: `ptr`/`len` came from `Box::into_raw` of a `Box<[u8]>` of this length, and
        // are dropped exactly once here.
        drop(unsafe { Box::from_raw(slice) });
    }
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
