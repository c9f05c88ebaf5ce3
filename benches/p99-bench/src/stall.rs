//! The machine's own stalls, measured during a run. On a shared VM the hypervisor sometimes
//! runs nothing of ours on a core for milliseconds; every request due then waits, whatever the
//! server. One thread pinned to each watched core sleeps to absolute deadlines 200 us apart (like
//! cyclictest) and records how late it woke: a wake-up late by D means that core ran nothing of
//! ours for about D. From those stalls, `explained_us` says how high a latency percentile the
//! stalls alone could push, so a table can tell the machine's tail from the server's.

use crate::client::{now_ns, pin_to, Window};
use crate::stats::{new_histogram, MAX_NS};
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicBool, Ordering};

/// Time between a probe's wake-ups.
pub const INTERVAL_NS: u64 = 200_000;
/// Wake-ups at least this late are counted as stalls.
pub const STALL_NS: u64 = 100_000;
/// And these as long stalls.
pub const LONG_STALL_NS: u64 = 1_000_000;

/// Real-time priority of the probe threads (when permitted): above every ordinary process, so
/// what delays them is the machine (hypervisor, interrupts), not the server or a compiler.
const PROBE_PRIO: i32 = 1;
/// The injected stall preempts the probe too: it stands for the machine.
const INJECT_PRIO: i32 = 2;

/// How late one core's probe woke during the measured window.
#[derive(Clone)]
pub struct CoreStalls {
    pub cpu: usize,
    /// Lateness of every wake-up whose deadline fell in the measured window, in ns.
    pub late: Histogram<u64>,
    /// Whether the probe ran at real-time priority (otherwise other processes' use of the core
    /// counts as stalls too).
    pub realtime: bool,
}

/// The stalls of one run (or of several merged), per core.
#[derive(Clone, Default)]
pub struct Stalls {
    pub cores: Vec<CoreStalls>,
    /// Measured time covered, in seconds (summed when runs are merged).
    pub window_s: f64,
}

impl Stalls {
    fn count_at_least(&self, ns: u64) -> u64 {
        self.cores.iter().map(|c| c.late.count_between(ns, MAX_NS)).sum()
    }

    /// Stalls of at least 100 us, over all watched cores.
    pub fn over_100us(&self) -> u64 {
        self.count_at_least(STALL_NS)
    }

    /// Stalls of at least 1 ms, over all watched cores.
    pub fn over_1ms(&self) -> u64 {
        self.count_at_least(LONG_STALL_NS)
    }

    /// The longest stall, in us.
    pub fn max_us(&self) -> f64 {
        self.cores.iter().map(|c| c.late.max()).max().unwrap_or(0) as f64 / 1000.0
    }

    pub fn wakeups(&self) -> u64 {
        self.cores.iter().map(|c| c.late.len()).sum()
    }

    pub fn realtime(&self) -> bool {
        !self.cores.is_empty() && self.cores.iter().all(|c| c.realtime)
    }

    #[allow(dead_code)] // p99-parity merges the rounds of a variant
    pub fn merge(&mut self, o: &Stalls) {
        for oc in &o.cores {
            match self.cores.iter_mut().find(|c| c.cpu == oc.cpu) {
                Some(c) => {
                    c.late.add(&oc.late).expect("same bounds");
                    c.realtime &= oc.realtime;
                }
                None => self.cores.push(oc.clone()),
            }
        }
        self.window_s += o.window_s;
    }

    /// Requests delayed by the stalls, as a share of all requests, with latency above `x_ns`:
    /// a stall of D delays every request due during it, the one due at its start by D, the
    /// last by nothing, so at any steady rate a share (D - x) / window of the requests waits
    /// more than x. Stalls on different cores are added (an upper bound if they overlapped).
    /// Wake-ups late by less than STALL_NS are not stalls and are left out.
    fn share_above(&self, x_ns: f64) -> f64 {
        if self.window_s <= 0.0 {
            return 0.0;
        }
        let mut sum = 0.0;
        for c in &self.cores {
            for v in c.late.iter_recorded() {
                let d = c.late.highest_equivalent(v.value_iterated_to()) as f64;
                // Only stalls count: a few tens of us is every timer wake-up's own latency.
                if d >= STALL_NS as f64 && d > x_ns {
                    sum += (d - x_ns) * v.count_at_value() as f64;
                }
            }
        }
        sum / (self.window_s * 1e9)
    }

    /// The latency (us) that the stalls alone would put at percentile `p` of a steady open-loop
    /// load: a measured percentile at or below this is the machine's, not the server's.
    pub fn explained_us(&self, p: f64) -> f64 {
        let tail = 1.0 - p / 100.0;
        if tail <= 0.0 {
            // The maximum: the longest stall delays the request due at its start by all of it.
            return self.max_us();
        }
        let (mut lo, mut hi) =
            (0.0f64, self.cores.iter().map(|c| c.late.max()).max().unwrap_or(0) as f64);
        if self.share_above(lo) < tail {
            return 0.0;
        }
        // share_above falls as x grows: find the x where it crosses the tail share.
        for _ in 0..40 {
            let mid = (lo + hi) / 2.0;
            if self.share_above(mid) >= tail {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo / 1000.0
    }
}

/// Sets this thread's scheduling to SCHED_FIFO at `prio`; false when not permitted.
fn set_fifo(prio: i32) -> bool {
    let param = libc::sched_param { sched_priority: prio };
    // SAFETY: sched_setscheduler(0) changes this thread only; param is a valid sched_param.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 }
}

fn sleep_until(deadline: u64) {
    let ts = libc::timespec {
        tv_sec: (deadline / 1_000_000_000) as libc::time_t,
        tv_nsec: (deadline % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: ts is a valid timespec; the remaining-time pointer may be null with TIMER_ABSTIME.
    // An EINTR return only means an early wake-up, which the loop treats as on time.
    unsafe {
        libc::clock_nanosleep(libc::CLOCK_MONOTONIC, libc::TIMER_ABSTIME, &ts, std::ptr::null_mut())
    };
}

/// One probe: pinned to `cpu`, wakes every INTERVAL_NS until the window ends (or `stop`).
fn probe(cpu: usize, win: Window, stop: &AtomicBool) -> Result<CoreStalls, String> {
    pin_to(cpu)?;
    let realtime = set_fifo(PROBE_PRIO);
    // SAFETY: PR_SET_TIMERSLACK takes an integer; it affects only this thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    let mut late = new_histogram();
    let mut deadline = now_ns() + INTERVAL_NS;
    while deadline < win.end && !stop.load(Ordering::Relaxed) {
        sleep_until(deadline);
        let now = now_ns();
        if win.measured(deadline) {
            late.record(now.saturating_sub(deadline).clamp(1, MAX_NS))
                .expect("value within bounds");
        }
        // After a stall, start afresh from now rather than firing the missed wake-ups at once.
        deadline = deadline.max(now) + INTERVAL_NS;
    }
    Ok(CoreStalls { cpu, late, realtime })
}

/// The injected test stall: a real-time thread on `cpu` that spins for `ms` in mid-window.
fn inject(cpu: usize, ms: f64, win: Window, stop: &AtomicBool) -> Result<(), String> {
    pin_to(cpu)?;
    // Real-time from the start: while it sleeps it takes nothing, and on a busy machine an
    // ordinary thread could wake after the time its stall was due (and inject nothing).
    if !set_fifo(INJECT_PRIO) {
        return Err("--inject-stall needs real-time scheduling (root)".into());
    }
    let at = win.warm_end + (win.end - win.warm_end) / 2;
    while now_ns() + 2_000_000 < at {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    while now_ns() < at {
        std::hint::spin_loop();
    }
    let until = at + (ms * 1e6) as u64;
    while now_ns() < until {
        std::hint::spin_loop();
    }
    Ok(())
}

/// Probes running for one run; `finish` joins them.
pub struct Running<'scope> {
    probes: Vec<std::thread::ScopedJoinHandle<'scope, Result<CoreStalls, String>>>,
    injector: Option<std::thread::ScopedJoinHandle<'scope, Result<(), String>>>,
    window_s: f64,
}

/// Starts a probe on each of `cpus` (and the injected stall on `inject_cpu`, if asked) inside
/// `scope`; they stop by themselves at the end of the window, or when `stop` is set.
pub fn start<'scope, 'env>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    cpus: &[usize],
    inject_stall: Option<(usize, f64)>,
    win: Window,
    stop: &'env AtomicBool,
) -> Running<'scope> {
    let probes = cpus.iter().map(|&cpu| scope.spawn(move || probe(cpu, win, stop))).collect();
    let injector = inject_stall.map(|(cpu, ms)| scope.spawn(move || inject(cpu, ms, win, stop)));
    Running { probes, injector, window_s: (win.end - win.warm_end) as f64 / 1e9 }
}

impl Running<'_> {
    pub fn finish(self) -> Result<Stalls, String> {
        let mut cores = Vec::new();
        for h in self.probes {
            cores.push(h.join().map_err(|_| "stall probe panicked".to_string())??);
        }
        if let Some(h) = self.injector {
            h.join().map_err(|_| "stall injector panicked".to_string())??;
        }
        Ok(Stalls { cores, window_s: self.window_s })
    }
}

/// The cores a run's probes watch: the server's and the generator's, each once.
pub fn watched_cpus(server_core: Option<usize>, generator_cpus: &[usize]) -> Vec<usize> {
    let mut v: Vec<usize> = server_core.into_iter().chain(generator_cpus.iter().copied()).collect();
    if v.is_empty() {
        let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        v = (0..n).collect();
    }
    let mut seen = Vec::new();
    v.retain(|c| {
        let fresh = !seen.contains(c);
        seen.push(*c);
        fresh
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stalls_of(lates_ns: &[(u64, u64)], window_s: f64) -> Stalls {
        let mut late = new_histogram();
        for &(v, n) in lates_ns {
            late.record_n(v, n).unwrap();
        }
        Stalls { cores: vec![CoreStalls { cpu: 0, late, realtime: true }], window_s }
    }

    #[test]
    fn counts_and_longest_stall() {
        let s = stalls_of(&[(5_000, 1000), (150_000, 3), (2_000_000, 2), (9_000_000, 1)], 1.0);
        assert_eq!(s.over_100us(), 6);
        assert_eq!(s.over_1ms(), 3);
        assert!((s.max_us() - 9000.0).abs() < 10.0, "{}", s.max_us());
    }

    #[test]
    fn explained_percentile_follows_the_stall_arithmetic() {
        // One 10 ms stall in a 1 s window: 1% of requests wait more than 0, 0.1% more than 9 ms.
        let s = stalls_of(&[(10_000_000, 1)], 1.0);
        let p999 = s.explained_us(99.9);
        assert!((p999 - 9000.0).abs() < 20.0, "p99.9 {p999}");
        // p99: the 1% share is reached only at x = 0.
        assert!(s.explained_us(99.0) < 20.0);
        assert_eq!(s.explained_us(90.0), 0.0);
        // Merged with a quiet second of its own, the share halves.
        let mut m = s.clone();
        m.merge(&stalls_of(&[(3_000, 5000)], 1.0));
        assert_eq!(m.over_1ms(), 1);
        assert_eq!(m.wakeups(), 5001);
        let p999m = m.explained_us(99.9);
        assert!((p999m - 8000.0).abs() < 20.0, "merged p99.9 {p999m}");
    }

    #[test]
    fn quiet_machine_explains_nothing() {
        let s = stalls_of(&[(3_000, 5000), (60_000, 40)], 1.0);
        assert_eq!(s.over_100us(), 0);
        assert_eq!(s.explained_us(99.9), 0.0);
        assert_eq!(s.explained_us(99.0), 0.0);
    }
}
