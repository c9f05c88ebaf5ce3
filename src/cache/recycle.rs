//! Per-thread recycling of reservation buffers, so a warm writer allocates nothing per write.
//!
//! A two-phase write needs somewhere to hold the key and value until commit. Small buffers
//! (up to 4 KiB, in three size classes) are kept after use in a short list per
//! thread and handed to the next reservation of that class on the same thread; larger ones
//! go back to the allocator. A recycled buffer is kept at its full class length with all
//! its bytes initialized (zeroed once when it was first allocated, then whatever the last
//! writes left), so taking one neither zeroes nor copies anything; a reservation uses a
//! prefix of it and commit reads only the bytes the caller wrote. Memory held per thread is
//! bounded: at most [`KEEP`] buffers per class, 86 KiB in all.

use std::cell::RefCell;

/// Buffer lengths of the recycled classes.
const CLASSES: [usize; 3] = [256, 1024, 4096];
/// The largest buffer that is recycled.
#[cfg(test)]
const LARGEST: usize = CLASSES[CLASSES.len() - 1];
/// Buffers kept per class and thread.
const KEEP: usize = 16;

thread_local! {
    static POOL: RefCell<[Vec<Vec<u8>>; 3]> = const { RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

fn class_of(len: usize) -> Option<usize> {
    CLASSES.iter().position(|&c| len <= c)
}

/// The length of the buffer [`take`] returns for `len` bytes.
pub(crate) fn buffer_len(len: usize) -> usize {
    class_of(len).map_or(len, |c| CLASSES[c])
}

/// A buffer of at least `len` initialized bytes: a recycled one of `len`'s class when this
/// thread has one, otherwise a new one (zeroed).
pub(crate) fn take(len: usize) -> Vec<u8> {
    let Some(c) = class_of(len) else {
        return vec![0; len];
    };
    // try_with: during thread exit the list may already be gone; allocate then.
    POOL.try_with(|p| p.borrow_mut()[c].pop()).ok().flatten().unwrap_or_else(|| vec![0; CLASSES[c]])
}

/// Gives a buffer from [`take`] back for reuse by this thread (or frees it).
pub(crate) fn give(buf: Vec<u8>) {
    let Some(c) = class_of(buf.len()) else { return };
    if buf.len() != CLASSES[c] {
        return; // not one of ours (a large buffer): free it
    }
    let _ = POOL.try_with(|p| {
        let mut p = p.borrow_mut();
        if p[c].len() < KEEP {
            p[c].push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_buffers_are_reused_and_large_ones_are_not() {
        let a = take(100);
        assert_eq!(a.len(), 256);
        assert_eq!(buffer_len(100), 256);
        assert_eq!(buffer_len(LARGEST + 1), LARGEST + 1);
        let pa = a.as_ptr();
        give(a);
        let b = take(200);
        assert_eq!(b.as_ptr(), pa, "the recycled buffer of the class is handed out again");
        give(b);
        let big = take(LARGEST + 1);
        assert_eq!(big.len(), LARGEST + 1);
        give(big);
        let c = take(1000);
        assert_eq!(c.len(), 1024);
        let d = take(4096);
        assert_eq!(d.len(), 4096);
    }

    #[test]
    fn at_most_keep_buffers_are_kept_per_class() {
        let bufs: Vec<Vec<u8>> = (0..KEEP + 4).map(|_| take(10)).collect();
        for b in bufs {
            give(b);
        }
        POOL.with(|p| assert!(p.borrow()[0].len() <= KEEP));
    }
}
