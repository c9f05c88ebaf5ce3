//! One mmapped AF_XDP ring: producer/consumer words shared with the kernel, a power-of-two
//! array of entries, and locally cached copies of both indexes.
//!
//! Ordering follows the kernel's xsk_queue.h contract: the producer writes entries, then
//! release-stores the producer index; the consumer acquire-loads the producer index, reads the
//! entries, then release-stores the consumer index.

use std::io;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, Ordering};

use super::sys::{self, XdpRingOffset};

pub(crate) struct Ring<T: Copy> {
    map: *mut u8,
    map_len: usize,
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    entries: *mut T,
    mask: u32,
    size: u32,
    /// Producer side: the next index to write. Consumer side: the last producer index seen.
    cached_prod: u32,
    /// Producer side: consumer index + size (first index not writable). Consumer side: next
    /// index to read.
    cached_cons: u32,
    _t: PhantomData<T>,
}

// SAFETY: the ring memory is a shared mapping owned by this value; it is only touched through
// `&mut self`, so moving it to another thread is sound.
unsafe impl<T: Copy> Send for Ring<T> {}

impl<T: Copy> Ring<T> {
    /// Maps ring `pgoff` of socket `fd` with `size` entries using the offsets the kernel reported.
    pub fn map(
        fd: i32,
        off: &XdpRingOffset,
        size: u32,
        pgoff: i64,
        producer_side: bool,
    ) -> io::Result<Self> {
        let map_len = off.desc as usize + size as usize * std::mem::size_of::<T>();
        // SAFETY: a fresh shared mapping of the ring the kernel created for `fd`; checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                pgoff,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let map = p.cast::<u8>();
        // SAFETY: the offsets come from XDP_MMAP_OFFSETS and lie inside the mapping; the words
        // are 4-byte aligned u32s the kernel updates atomically.
        let (producer, consumer, flags, entries) = unsafe {
            (
                map.add(off.producer as usize) as *const AtomicU32,
                map.add(off.consumer as usize) as *const AtomicU32,
                map.add(off.flags as usize) as *const AtomicU32,
                map.add(off.desc as usize) as *mut T,
            )
        };
        let mut r = Ring {
            map,
            map_len,
            producer,
            consumer,
            flags,
            entries,
            mask: size - 1,
            size,
            cached_prod: 0,
            cached_cons: 0,
            _t: PhantomData,
        };
        if producer_side {
            r.cached_prod = r.prod().load(Ordering::Relaxed);
            r.cached_cons = r.cons().load(Ordering::Relaxed).wrapping_add(size);
        } else {
            r.cached_prod = r.prod().load(Ordering::Acquire);
            r.cached_cons = r.cons().load(Ordering::Relaxed);
        }
        Ok(r)
    }

    fn prod(&self) -> &AtomicU32 {
        // SAFETY: points into our live mapping (see `map`).
        unsafe { &*self.producer }
    }
    fn cons(&self) -> &AtomicU32 {
        // SAFETY: points into our live mapping (see `map`).
        unsafe { &*self.consumer }
    }

    /// True when the kernel asked to be woken up for this ring.
    pub fn needs_wakeup(&self) -> bool {
        // SAFETY: points into our live mapping.
        unsafe { &*self.flags }.load(Ordering::Relaxed) & sys::XDP_RING_NEED_WAKEUP != 0
    }

    // ---- producer side (FILL, TX) ----

    /// Free slots, refreshing the cached consumer index only when the cache says fewer than
    /// `want` are free.
    pub fn free(&mut self, want: u32) -> u32 {
        let free = self.cached_cons.wrapping_sub(self.cached_prod);
        if free >= want {
            return free;
        }
        self.cached_cons = self.cons().load(Ordering::Acquire).wrapping_add(self.size);
        self.cached_cons.wrapping_sub(self.cached_prod)
    }

    /// Writes `items` (at most `free()`), then publishes them with a release store.
    pub fn produce(&mut self, items: impl ExactSizeIterator<Item = T>) -> u32 {
        let n = items.len() as u32;
        debug_assert!(n <= self.cached_cons.wrapping_sub(self.cached_prod));
        for (i, item) in items.enumerate() {
            let idx = self.cached_prod.wrapping_add(i as u32) & self.mask;
            // SAFETY: idx < size; this slot is owned by the producer until published.
            unsafe { self.entries.add(idx as usize).write_volatile(item) };
        }
        self.cached_prod = self.cached_prod.wrapping_add(n);
        self.prod().store(self.cached_prod, Ordering::Release);
        n
    }

    /// Entries published by us that the kernel has not consumed yet.
    pub fn outstanding(&self) -> u32 {
        self.cached_prod.wrapping_sub(self.cons().load(Ordering::Acquire))
    }

    // ---- consumer side (RX, COMPLETION) ----

    /// Entries available, refreshing the cached producer index when needed.
    pub fn available(&mut self, want: u32) -> u32 {
        let avail = self.cached_prod.wrapping_sub(self.cached_cons);
        if avail >= want {
            return avail;
        }
        self.cached_prod = self.prod().load(Ordering::Acquire);
        self.cached_prod.wrapping_sub(self.cached_cons)
    }

    /// Reads up to `max` entries into `f`, then releases them to the kernel.
    pub fn consume(&mut self, max: u32, mut f: impl FnMut(T)) -> u32 {
        let n = self.available(max).min(max);
        for i in 0..n {
            let idx = self.cached_cons.wrapping_add(i) & self.mask;
            // SAFETY: idx < size; the entry was published by the kernel (acquire above) and
            // stays ours until the consumer store below.
            f(unsafe { self.entries.add(idx as usize).read_volatile() });
        }
        if n > 0 {
            self.cached_cons = self.cached_cons.wrapping_add(n);
            self.cons().store(self.cached_cons, Ordering::Release);
        }
        n
    }
}

impl<T: Copy> Drop for Ring<T> {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping created in `map`, exactly once.
        unsafe { libc::munmap(self.map.cast(), self.map_len) };
    }
}
