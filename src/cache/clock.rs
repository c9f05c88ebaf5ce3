//! The store's one coarse clock, in unix seconds, and memcached's exptime conversion.
//!
//! Every expiry inside the store is an absolute time in seconds on this clock (0 = never).
//! The system clock reads the wall time once at creation and then advances with
//! `CLOCK_MONOTONIC_COARSE`, so it never jumps backwards when the wall clock is stepped and a
//! read costs a few nanoseconds. A manual clock, set by the caller, makes TTL testable.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Which clock a cache runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockKind {
    /// Wall time at creation, advanced by the coarse monotonic clock.
    System,
    /// Starts at the given unix second and moves only by [`crate::cache::Cache::set_time`].
    Manual(u32),
}

pub(crate) enum Clock {
    System { base_unix: u32, base_mono: u64 },
    Manual(AtomicU32),
}

fn mono_coarse_secs() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec to the valid pointer we pass; the coarse
    // monotonic clock is a kernel interface with no other preconditions.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64
}

impl Clock {
    pub(crate) fn new(kind: ClockKind) -> Clock {
        match kind {
            ClockKind::System => {
                let unix =
                    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                Clock::System {
                    base_unix: unix.min(u64::from(u32::MAX)) as u32,
                    base_mono: mono_coarse_secs(),
                }
            }
            ClockKind::Manual(t) => Clock::Manual(AtomicU32::new(t)),
        }
    }

    #[inline]
    pub(crate) fn now(&self) -> u32 {
        match self {
            Clock::System { base_unix, base_mono } => {
                let d = mono_coarse_secs().saturating_sub(*base_mono);
                (u64::from(*base_unix) + d).min(u64::from(u32::MAX)) as u32
            }
            Clock::Manual(t) => t.load(Ordering::Relaxed),
        }
    }

    /// Sets a manual clock; false for the system clock.
    pub(crate) fn set(&self, t: u32) -> bool {
        match self {
            Clock::System { .. } => false,
            Clock::Manual(a) => {
                a.store(t, Ordering::Relaxed);
                true
            }
        }
    }
}

/// memcached's largest relative exptime: 30 days.
pub(crate) const EXPTIME_RELATIVE_MAX: i64 = 60 * 60 * 24 * 30;

/// Converts a memcached exptime to an absolute expiry on a clock reading `now`, as memcached
/// 1.6 does: 0 = never (returns 0); 1..=30 days = relative seconds from now; larger = an
/// absolute unix time (already expired if not after `now`); negative = already expired.
/// An already-expired result is a nonzero time not after `now`, so a write with it replaces
/// the old item and the new one is never returned. Times past 2106 saturate.
pub fn expiry_from_exptime(exptime: i64, now: u32) -> u32 {
    if exptime == 0 {
        0
    } else if exptime < 0 {
        now.clamp(1, u32::MAX)
    } else if exptime <= EXPTIME_RELATIVE_MAX {
        (u64::from(now) + exptime as u64).min(u64::from(u32::MAX)) as u32
    } else if exptime as u64 <= u64::from(now) {
        now.max(1)
    } else {
        exptime.min(i64::from(u32::MAX)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exptime_follows_memcached() {
        let now = 1_700_000_000;
        assert_eq!(expiry_from_exptime(0, now), 0);
        assert_eq!(expiry_from_exptime(10, now), now + 10);
        assert_eq!(expiry_from_exptime(EXPTIME_RELATIVE_MAX, now), now + 2_592_000);
        // Just over 30 days is an absolute time in 1970: expired.
        assert!(expiry_from_exptime(EXPTIME_RELATIVE_MAX + 1, now) <= now);
        assert!(expiry_from_exptime(-1, now) <= now);
        assert!(expiry_from_exptime(-1, now) != 0);
        assert_eq!(expiry_from_exptime(i64::from(now) + 100, now), now + 100);
        assert_eq!(expiry_from_exptime(i64::MAX, now), u32::MAX);
    }

    #[test]
    fn manual_clock_moves_only_when_set() {
        let c = Clock::new(ClockKind::Manual(100));
        assert_eq!(c.now(), 100);
        assert!(c.set(105));
        assert_eq!(c.now(), 105);
        assert!(!Clock::new(ClockKind::System).set(1));
    }
}
