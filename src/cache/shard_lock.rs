//! The shard lock: one writer, or any number of readers that each write only a cache line of
//! their own.
//!
//! A plain mutex makes every operation write the lock's cache line, so on two cores that line
//! changes hands on about every other operation, and on this project's VM that costs up to
//! 160 ns each time. Here a reader announces itself in one of `READER_SLOTS` counters, each on
//! a line of its own and picked per thread, then checks that no writer is active; a writer
//! raises `writing` (a compare-and-swap from false: the flag is also the writers' lock) and
//! waits until every slot is empty. The two sides meet as in Dekker's algorithm: each writes
//! its own flag, then reads the other's, all `SeqCst`, so at least one of them sees the other
//! and backs off — the reader (it returns `None` and its caller takes the writer's side) or
//! the writer (it waits).
//!
//! An uncontended writer thus pays one atomic read-modify-write to enter and a plain store to
//! leave (a mutex in front of the flag cost two more: 6.5 against 2.2 ns per lock and unlock
//! on this machine). A writer that finds the flag raised queues on a mutex, so that only the
//! first in the queue spins (then yields) on the flag while the others sleep.
//!
//! The slots also count the gets that readers serve (hits and misses), so a read writes
//! nothing another core reads on every operation.
//!
//! This is the one other place in the cache with `unsafe`: handing out `&T` and `&mut T` from
//! the `UnsafeCell` under the protocol above.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

/// Reader slots per lock. Threads beyond this share slots (a slot is a counter, so sharing is
/// correct; it only brings back some line sharing between those threads).
pub(crate) const READER_SLOTS: usize = 16;

/// One reader slot: readers inside (counted), and the gets readers served from it.
#[derive(Default)]
pub(crate) struct ReaderSlot {
    active: AtomicU32,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

/// Threads that have read from any shard lock so far (each took the next slot number).
static THREADS: AtomicUsize = AtomicUsize::new(0);

/// The slot of the calling thread (threads are numbered in the order they first read).
fn my_slot() -> usize {
    thread_local! {
        // SeqCst: a writer that reads THREADS after raising its flag either counts this
        // thread's slot or is seen by this thread's first read (see `ShardLock::write`).
        static SLOT: usize = THREADS.fetch_add(1, Ordering::SeqCst) % READER_SLOTS;
    }
    SLOT.with(|s| *s)
}

/// See the module documentation. `repr(C)`: the writer's mutex and flag come first, then the
/// data, whose leading fields share their cache line (see `ShardInner`).
#[repr(C)]
pub(crate) struct ShardLock<T> {
    /// Where writers wait while another writer holds `writing`.
    queue: Mutex<()>,
    /// Raised by the writer inside (or entering): the writers' lock and the readers' signal.
    writing: AtomicBool,
    slots: Box<[CachePadded<ReaderSlot>; READER_SLOTS]>,
    data: UnsafeCell<T>,
}

// SAFETY: the lock hands out `&T` to several threads at once (readers) and `&mut T` to one
// (a writer, with no reader inside), as `RwLock<T>` does, hence the same bounds.
unsafe impl<T: Send> Send for ShardLock<T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync> Sync for ShardLock<T> {}

impl<T> ShardLock<T> {
    pub(crate) fn new(data: T) -> ShardLock<T> {
        ShardLock {
            queue: Mutex::new(()),
            writing: AtomicBool::new(false),
            slots: Box::new(std::array::from_fn(|_| CachePadded::new(ReaderSlot::default()))),
            data: UnsafeCell::new(data),
        }
    }

    /// Shared access, unless a writer holds the lock or is taking it: then `None`, and the
    /// caller takes [`ShardLock::write`] instead. Never waits.
    #[inline]
    pub(crate) fn try_read(&self) -> Option<ReadGuard<'_, T>> {
        let slot = &*self.slots[my_slot()];
        slot.active.fetch_add(1, Ordering::SeqCst);
        if self.writing.load(Ordering::SeqCst) {
            slot.active.fetch_sub(1, Ordering::Release);
            return None;
        }
        Some(ReadGuard { lock: self, slot })
    }

    /// Exclusive access: waits for the writer before it, then for the readers inside.
    #[inline]
    pub(crate) fn write(&self) -> WriteGuard<'_, T> {
        if self.writing.compare_exchange(false, true, Ordering::SeqCst, Ordering::Relaxed).is_err()
        {
            self.write_contended();
        }
        // Only slots some thread has taken can hold a reader; a thread that takes its slot
        // after this count was read takes it after the flag was raised, so its first read sees
        // the flag and backs off (all three are SeqCst).
        let used = THREADS.load(Ordering::SeqCst).min(READER_SLOTS);
        for s in self.slots[..used].iter() {
            let mut spins = 0u32;
            while s.active.load(Ordering::SeqCst) != 0 {
                // A reader's section is a lookup and a copy; one that lasts is a descheduled
                // reader thread, which spinning cannot help.
                if spins < 64 {
                    std::hint::spin_loop();
                    spins += 1;
                } else {
                    std::thread::yield_now();
                }
            }
        }
        WriteGuard { lock: self }
    }

    /// Raises `writing` once the writer holding it lowers it: first in the queue spins (then
    /// yields: a writer that lasts is descheduled or rebuilding the table), the rest sleep on
    /// the queue's mutex.
    #[cold]
    #[inline(never)]
    fn write_contended(&self) {
        let _first = self.queue.lock();
        let mut spins = 0u32;
        while self
            .writing
            .compare_exchange_weak(false, true, Ordering::SeqCst, Ordering::Relaxed)
            .is_err()
        {
            if spins < 64 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Bytes of the reader slots (outside the lock itself).
    pub(crate) fn slots_bytes() -> usize {
        std::mem::size_of::<[CachePadded<ReaderSlot>; READER_SLOTS]>()
    }

    /// The reader slots (for summing their counters).
    pub(crate) fn slots(&self) -> impl Iterator<Item = &ReaderSlot> {
        self.slots.iter().map(|s| &**s)
    }

    /// The data's address, for layout checks.
    #[cfg(test)]
    pub(crate) fn data_addr(&self) -> usize {
        self.data.get() as usize
    }
}

/// Shared access to a shard; its reader slot is released on drop.
pub(crate) struct ReadGuard<'a, T> {
    lock: &'a ShardLock<T>,
    slot: &'a ReaderSlot,
}

impl<T> ReadGuard<'_, T> {
    /// This reader's slot (to count the get it serves).
    pub(crate) fn slot(&self) -> &ReaderSlot {
        self.slot
    }
}

impl<T> std::ops::Deref for ReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: this reader is counted in its slot and saw no writer after counting itself,
        // so (module documentation) no writer has `&mut T` until the slot is released in drop;
        // other readers only ever get `&T`.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> Drop for ReadGuard<'_, T> {
    fn drop(&mut self) {
        self.slot.active.fetch_sub(1, Ordering::Release);
    }
}

/// Exclusive access to a shard; released on drop.
pub(crate) struct WriteGuard<'a, T> {
    lock: &'a ShardLock<T>,
}

impl<T> std::ops::Deref for WriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: as for `deref_mut`.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> std::ops::DerefMut for WriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: this writer raised `writing` from false (no other writer is inside until it
        // is lowered), then saw every reader slot empty, so no reader holds `&T` and none enters before `writing`
        // is lowered in drop.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for WriteGuard<'_, T> {
    fn drop(&mut self) {
        // Release: the next writer or reader that sees the flag lowered sees every write made
        // under it.
        self.lock.writing.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_reader_backs_off_while_a_writer_holds_the_lock() {
        let l = ShardLock::new(5u64);
        {
            let r = l.try_read().expect("no writer");
            assert_eq!(*r, 5);
            let r2 = l.try_read().expect("readers share");
            assert_eq!(*r2, 5);
        }
        let mut w = l.write();
        *w = 6;
        assert!(l.try_read().is_none(), "a writer is inside");
        drop(w);
        assert_eq!(*l.try_read().unwrap(), 6);
    }

    /// A writer that finds another inside waits for it (the queued path), and several queued
    /// writers each get the lock in turn: every increment lands.
    #[test]
    fn writers_wait_for_the_writer_inside() {
        let l = Arc::new(ShardLock::new(0u64));
        let released = Arc::new(AtomicBool::new(false));
        let w = l.write();
        let mut handles = Vec::new();
        for _ in 0..3 {
            let (l, released) = (l.clone(), released.clone());
            handles.push(std::thread::spawn(move || {
                let mut g = l.write();
                assert!(released.load(Ordering::SeqCst), "entered while another writer was inside");
                *g += 1;
            }));
        }
        std::thread::sleep(std::time::Duration::from_millis(if cfg!(miri) { 1 } else { 20 }));
        released.store(true, Ordering::SeqCst);
        drop(w);
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(*l.try_read().unwrap(), 3);
    }

    /// Writers keep two words equal under the lock; readers must never see them differ, and
    /// the writers' increments must all land. Small enough for Miri.
    #[test]
    fn readers_never_see_a_write_half_done() {
        let l = Arc::new(ShardLock::new((0u64, 0u64)));
        let writes = if cfg!(miri) { 50 } else { 20_000 };
        let mut handles = Vec::new();
        for _ in 0..2 {
            let l = l.clone();
            handles.push(std::thread::spawn(move || {
                for _ in 0..writes {
                    let mut w = l.write();
                    w.0 += 1;
                    std::hint::spin_loop();
                    w.1 += 1;
                }
            }));
        }
        for _ in 0..2 {
            let l = l.clone();
            handles.push(std::thread::spawn(move || {
                for _ in 0..writes * 2 {
                    if let Some(r) = l.try_read() {
                        assert_eq!(r.0, r.1, "a reader saw a write half done");
                    }
                }
            }));
        }
        for h in handles {
            h.join().unwrap();
        }
        let r = l.try_read().unwrap();
        assert_eq!(*r, (2 * writes, 2 * writes));
    }
}
