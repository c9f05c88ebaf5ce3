//! The pin/retire protocol of a segment, on its pin word: the number of readers holding the
//! segment pinned, plus `RETIRED` once the segment was emptied (expiry, flush, deletion of its
//! last item) while pinned. A segment is freed exactly once, by whoever sees the last pin go:
//! the emptier when no reader holds it, else the last reader. Readers pin under the shard lock
//! (only a live segment can be found) and unpin without it; every other step runs under the
//! lock. Each step is one atomic read-modify-write on the word, so an execution is an order of
//! these steps, and the test below runs every order of a few readers, an emptier and an
//! evictor.

use std::sync::atomic::{AtomicU32, Ordering};

/// Set in a segment's pin word when it was emptied while pinned; the last reader frees it.
pub(crate) const RETIRED: u32 = 1 << 31;

/// A reader pins a live segment it found under the shard lock.
#[inline]
pub(crate) fn pin(w: &AtomicU32) {
    w.fetch_add(1, Ordering::Relaxed);
}

/// A reader drops its pin, without the lock. `Err` if no pin is held (nothing changes);
/// `Ok(true)` if this was the last pin of a retired segment: the caller must free it (under
/// the lock, with [`reset`]).
#[inline]
pub(crate) fn unpin(w: &AtomicU32) -> Result<bool, ()> {
    let prev = w
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
            if v & !RETIRED == 0 {
                None
            } else {
                Some(v - 1)
            }
        })
        .map_err(|_| ())?;
    Ok(prev == RETIRED | 1)
}

/// The segment was emptied, under the lock: `true` if no reader holds it, so the caller frees
/// it now; otherwise it is retired and its last reader frees it.
#[inline]
pub(crate) fn retire(w: &AtomicU32) -> bool {
    w.fetch_or(RETIRED, Ordering::AcqRel) & !RETIRED == 0
}

/// Whether any reader holds the segment (eviction skips it), under the lock.
#[inline]
pub(crate) fn pinned(w: &AtomicU32) -> bool {
    w.load(Ordering::Acquire) != 0
}

/// The segment is free again, under the lock.
#[inline]
pub(crate) fn reset(w: &AtomicU32) {
    w.store(0, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Seg {
        Live,
        Retired,
        Freed,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Reader {
        /// About to look the segment up (and pin it if it is still live).
        Lookup,
        /// Holds a pin.
        Holding,
        /// Dropped the last pin of a retired segment; about to free it under the lock.
        MustFree,
        Done,
    }

    /// One state of the system; the word is the real atomic's value between steps.
    #[derive(Clone, Debug)]
    struct State {
        word: u32,
        seg: Seg,
        frees: u32,
        readers: Vec<Reader>,
        emptier_done: bool,
        evictor_done: bool,
    }

    /// The actors: readers 0..n, then the emptier, then the evictor.
    fn enabled(s: &State) -> Vec<usize> {
        let n = s.readers.len();
        let mut v: Vec<usize> = (0..n).filter(|&i| s.readers[i] != Reader::Done).collect();
        if !s.emptier_done {
            v.push(n);
        }
        if !s.evictor_done {
            v.push(n + 1);
        }
        v
    }

    fn free(s: &mut State, w: &AtomicU32) {
        assert_ne!(s.seg, Seg::Freed, "freed twice");
        assert!(!s.readers.contains(&Reader::Holding), "freed while a reader holds a pin: {s:?}");
        reset(w);
        s.seg = Seg::Freed;
        s.frees += 1;
    }

    /// Runs one step of `actor` on the real functions.
    fn step(s: &State, actor: usize) -> State {
        let mut s = s.clone();
        let w = AtomicU32::new(s.word);
        let n = s.readers.len();
        if actor < n {
            s.readers[actor] = match s.readers[actor] {
                // A lookup finds the item only while its segment is live.
                Reader::Lookup if s.seg == Seg::Live => {
                    pin(&w);
                    Reader::Holding
                }
                Reader::Lookup => Reader::Done,
                Reader::Holding => match unpin(&w) {
                    Ok(true) => Reader::MustFree,
                    Ok(false) => Reader::Done,
                    Err(()) => panic!("a held pin was refused: {s:?}"),
                },
                Reader::MustFree => {
                    assert_eq!(s.seg, Seg::Retired, "last pin of a segment that is not retired");
                    s.readers[actor] = Reader::Done;
                    free(&mut s, &w);
                    Reader::Done
                }
                Reader::Done => unreachable!(),
            };
        } else if actor == n {
            s.emptier_done = true;
            if s.seg == Seg::Live {
                if retire(&w) {
                    free(&mut s, &w);
                } else {
                    s.seg = Seg::Retired;
                }
            }
        } else {
            s.evictor_done = true;
            if s.seg == Seg::Live && !pinned(&w) {
                free(&mut s, &w);
            }
        }
        s.word = w.into_inner();
        s
    }

    /// Every order of the actors' steps from `s`; returns the number of complete executions.
    fn explore(s: &State) -> u64 {
        let next = enabled(s);
        if next.is_empty() {
            assert_eq!(s.seg, Seg::Freed, "never freed: {s:?}");
            assert_eq!(s.frees, 1);
            assert_eq!(s.word, 0, "a freed segment's word is clear");
            // A stale second release is refused and changes nothing.
            let w = AtomicU32::new(s.word);
            assert_eq!(unpin(&w), Err(()));
            assert_eq!(w.into_inner(), 0);
            return 1;
        }
        next.into_iter().map(|a| explore(&step(s, a))).sum()
    }

    #[test]
    fn every_interleaving_frees_the_segment_once_and_never_under_a_pin() {
        for readers in 1..=3 {
            let s = State {
                word: 0,
                seg: Seg::Live,
                frees: 0,
                readers: vec![Reader::Lookup; readers],
                emptier_done: false,
                evictor_done: false,
            };
            let runs = explore(&s);
            assert!(runs > 10, "{readers} readers: only {runs} executions explored");
        }
    }
}
