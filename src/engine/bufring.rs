//! A provided buffer ring (`IORING_REGISTER_PBUF_RING`, io_uring_provided_buffers(7)): the
//! kernel picks a buffer for each multishot recv completion, the worker hands it back after
//! the data callback. The tail is published once per batch of returns.

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: anonymous private mapping; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr: ptr.cast(), len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region mapped in `new`, once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

pub struct ProvidedBufRing {
    ring: Mapping,
    bufs: Mapping,
    entries: usize,
    buf_size: usize,
    bgid: u16,
    tail: u16,
    registered: bool,
}

impl ProvidedBufRing {
    /// Maps `count` buffers of `size` bytes plus the ring, registers it as group `bgid` and
    /// provides every buffer. `count` is a power of two, at most 32768.
    pub fn new(
        uring: &IoUring,
        bgid: u16,
        count: usize,
        size: usize,
    ) -> io::Result<ProvidedBufRing> {
        let ring = Mapping::new(count * std::mem::size_of::<BufRingEntry>())?;
        let bufs = Mapping::new(count * size)?;
        let mut br = ProvidedBufRing {
            ring,
            bufs,
            entries: count,
            buf_size: size,
            bgid,
            tail: 0,
            registered: false,
        };
        // SAFETY: the ring mapping lives as long as `br`, which unregisters it in `drop`
        // before unmapping.
        unsafe {
            uring.submitter().register_buf_ring_with_flags(
                br.ring.ptr as u64,
                count as u16,
                bgid,
                0,
            )?
        };
        br.registered = true;
        for bid in 0..count {
            br.push(bid as u16);
        }
        br.publish();
        Ok(br)
    }

    fn mask(&self) -> u16 {
        (self.count() - 1) as u16
    }

    fn count(&self) -> usize {
        self.entries
    }

    /// The bytes the kernel put into buffer `bid`.
    pub fn data(&self, bid: u16, len: usize) -> &[u8] {
        let bid = bid as usize;
        assert!(bid < self.count() && len <= self.buf_size, "kernel returned an impossible buffer");
        // SAFETY: in bounds (checked above) of the buffer mapping; the kernel wrote `len`
        // bytes there and does not touch the buffer again until it is provided back.
        unsafe { std::slice::from_raw_parts(self.bufs.ptr.add(bid * self.buf_size), len) }
    }

    /// Gives buffer `bid` back (visible to the kernel after [`Self::publish`]).
    pub fn push(&mut self, bid: u16) {
        let idx = (self.tail & self.mask()) as usize;
        // SAFETY: idx < count, so the entry lies inside the ring mapping; the kernel only
        // reads entries between its head and the published tail, and this one is past it.
        let entry = unsafe { &mut *(self.ring.ptr as *mut BufRingEntry).add(idx) };
        // SAFETY: bid < count (checked by the caller's origin: ids come from `new` or from
        // the kernel, which only returns ids we provided).
        let addr = unsafe { self.bufs.ptr.add(bid as usize * self.buf_size) };
        entry.set_addr(addr as u64);
        entry.set_len(self.buf_size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes the buffers pushed so far.
    pub fn publish(&mut self) {
        // SAFETY: the tail field overlays the first entry's reserved field inside the ring
        // mapping; the kernel reads it with acquire semantics, so a release store orders the
        // entry writes before it.
        unsafe {
            let tail = BufRingEntry::tail(self.ring.ptr as *const BufRingEntry) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    pub fn unregister(&mut self, uring: &IoUring) {
        if self.registered {
            let _ = uring.submitter().unregister_buf_ring(self.bgid);
            self.registered = false;
        }
    }
}
