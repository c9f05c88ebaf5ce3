//! Latency histograms (HdrHistogram, nanoseconds, 3 significant digits), the figures a run
//! reports, and CPU use of a process read from /proc/<pid>/stat.

use hdrhistogram::Histogram;

/// Highest latency the histogram holds: 100 s. Anything longer is clamped there (and the run's
/// `clamped` counter says so).
pub const MAX_NS: u64 = 100_000_000_000;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, 3).expect("valid histogram bounds")
}

/// The percentiles every table reports.
pub const PERCENTILES: [(&str, f64); 6] =
    [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9), ("p9999", 99.99), ("max", 100.0)];

/// Counts one thread keeps during a run; merged at the end.
#[derive(Clone)]
pub struct Counts {
    pub hist: Histogram<u64>,
    /// Answers to requests issued inside the measured window.
    pub completed: u64,
    pub errors: u64,
    /// Of the errors, sets answered `SERVER_ERROR out of memory` (a store with no room left).
    pub refused: u64,
    /// Requests with no answer by the end of the drain, warm-up included (those of the measured
    /// window are also recorded in the histogram at their age, so a stall shows in the tail).
    pub unanswered: u64,
    pub hits: u64,
    pub misses: u64,
    pub clamped: u64,
    /// Requests issued inside the window.
    pub issued: u64,
    /// Broken connections (the stream could not be parsed, or the server closed it).
    pub conn_errors: u64,
    /// Open loop: how late the generator sent each request against its schedule. Large values
    /// mean the generator, not the server, fell behind (its latency is still charged).
    pub send_lag: Histogram<u64>,
    /// The run's own timeline (CLOCK_MONOTONIC ns, 0 = never), so a run with no answer in its
    /// window can tell a silent server from a starved machine: when the last generator thread
    /// had connected and sent its first requests, when the first answer came, and every request
    /// and answer of the run, warm-up and drain included.
    pub went_at: u64,
    pub first_answer_at: u64,
    pub sent_all: u64,
    pub answered_all: u64,
    /// Handshake mode: completed handshakes of the window that were full, and resumed.
    pub tls_full: u64,
    pub tls_resumed: u64,
    /// The first error, if any: handshake mode, the failed attempt; otherwise the request's
    /// kind and up to 120 bytes of the wrong answer, so a run that counted errors says what
    /// they were.
    pub first_error: Option<String>,
}

impl Counts {
    pub fn new() -> Counts {
        Counts {
            hist: new_histogram(),
            completed: 0,
            errors: 0,
            refused: 0,
            unanswered: 0,
            hits: 0,
            misses: 0,
            clamped: 0,
            issued: 0,
            conn_errors: 0,
            send_lag: new_histogram(),
            went_at: 0,
            first_answer_at: 0,
            sent_all: 0,
            answered_all: 0,
            tls_full: 0,
            tls_resumed: 0,
            first_error: None,
        }
    }

    pub fn record_lag(&mut self, ns: u64) {
        self.send_lag.record(ns.clamp(1, MAX_NS)).expect("value within bounds");
    }

    pub fn record(&mut self, ns: u64) {
        let v = ns.clamp(1, MAX_NS);
        if ns > MAX_NS {
            self.clamped += 1;
        }
        self.hist.record(v).expect("value within bounds");
    }

    /// `n` requests, each `ns` old (unanswered ones, charged at their age).
    pub fn record_n(&mut self, ns: u64, n: u64) {
        let v = ns.clamp(1, MAX_NS);
        if ns > MAX_NS {
            self.clamped += n;
        }
        self.hist.record_n(v, n).expect("value within bounds");
    }

    /// `n` answers, all without error, each `ns` after its request went out.
    pub fn record_answers(&mut self, ns: u64, n: u64) {
        self.record_n(ns, n);
        self.completed += n;
    }

    pub fn merge(&mut self, o: &Counts) {
        self.hist.add(&o.hist).expect("same bounds");
        self.completed += o.completed;
        self.errors += o.errors;
        self.refused += o.refused;
        self.unanswered += o.unanswered;
        self.hits += o.hits;
        self.misses += o.misses;
        self.clamped += o.clamped;
        self.issued += o.issued;
        self.conn_errors += o.conn_errors;
        self.send_lag.add(&o.send_lag).expect("same bounds");
        self.went_at = self.went_at.max(o.went_at);
        self.first_answer_at = match (self.first_answer_at, o.first_answer_at) {
            (0, b) => b,
            (a, 0) => a,
            (a, b) => a.min(b),
        };
        self.sent_all += o.sent_all;
        self.answered_all += o.answered_all;
        self.tls_full += o.tls_full;
        self.tls_resumed += o.tls_resumed;
        if self.first_error.is_none() {
            self.first_error.clone_from(&o.first_error);
        }
    }
}

/// Value at percentile `p` (0..=100) in microseconds.
pub fn pct_us(h: &Histogram<u64>, p: f64) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    let v = if p >= 100.0 { h.max() } else { h.value_at_quantile(p / 100.0) };
    v as f64 / 1000.0
}

/// Points of the classic percentile-distribution plot: (percentile, microseconds), denser
/// towards the tail (each halving of the distance to 100% gets `ticks` points).
pub fn percentile_curve(h: &Histogram<u64>, ticks: u32) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    if h.is_empty() {
        return out;
    }
    for v in h.iter_quantiles(ticks) {
        let q = v.quantile_iterated_to();
        let us = h.highest_equivalent(v.value_iterated_to()) as f64 / 1000.0;
        if out.last().map_or(true, |&(lq, _): &(f64, f64)| q * 100.0 > lq) {
            out.push((q * 100.0, us));
        }
        if q >= 0.999_999 {
            break;
        }
    }
    out
}

/// Cumulative CPU seconds (user + system, all threads) of a process, from /proc/<pid>/stat.
pub fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields start after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15 (proc(5)).
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory effects; _SC_CLK_TCK is always valid.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU use of a process over an interval, as a percentage of one core.
pub struct CpuMeter {
    pid: u32,
    start_cpu: Option<f64>,
    start: std::time::Instant,
}

impl CpuMeter {
    pub fn start(pid: u32) -> CpuMeter {
        CpuMeter { pid, start_cpu: proc_cpu_seconds(pid), start: std::time::Instant::now() }
    }

    /// Percent of one core used since `start`, or None if the process could not be read.
    pub fn percent(&self) -> Option<f64> {
        let now = proc_cpu_seconds(self.pid)?;
        let wall = self.start.elapsed().as_secs_f64();
        Some((now - self.start_cpu?) / wall * 100.0)
    }
}

/// Busy and total jiffies of one CPU from /proc/stat (busy = everything but idle and iowait).
pub fn core_jiffies(cpu: usize) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let name = format!("cpu{cpu}");
    let line = s.lines().find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user)
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// How busy one core was over an interval, whoever ran on it.
pub struct CoreMeter {
    cpu: usize,
    start: Option<(u64, u64)>,
}

impl CoreMeter {
    pub fn start(cpu: usize) -> CoreMeter {
        CoreMeter { cpu, start: core_jiffies(cpu) }
    }

    pub fn percent(&self) -> Option<f64> {
        let (b0, t0) = self.start?;
        let (b1, t1) = core_jiffies(self.cpu)?;
        (t1 > t0).then(|| (b1 - b0) as f64 / (t1 - t0) as f64 * 100.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Rng;

    #[test]
    fn uniform_percentiles_are_where_they_belong() {
        // 1..=100_000 ns once each: the p-th percentile is p% of 100 µs, within HDR precision.
        let mut c = Counts::new();
        for v in 1..=100_000u64 {
            c.record(v);
        }
        for (p, want_us) in [(50.0, 50.0), (90.0, 90.0), (99.0, 99.0), (99.9, 99.9), (100.0, 100.0)]
        {
            let got = pct_us(&c.hist, p);
            assert!((got - want_us).abs() <= want_us * 0.001 + 0.001, "p{p}: {got} vs {want_us}");
        }
    }

    #[test]
    fn exponential_percentiles_match_the_closed_form() {
        // Exponential with mean 100 µs: the p-quantile is -mean * ln(1 - p).
        let mut rng = Rng::new(42);
        let mut c = Counts::new();
        let mean_ns = 100_000.0;
        for _ in 0..2_000_000 {
            let u = rng.next_f64();
            c.record((-mean_ns * (1.0 - u).ln()) as u64 + 1);
        }
        for p in [50.0, 90.0, 99.0, 99.9] {
            let want = -100.0 * (1.0 - p / 100.0f64).ln();
            let got = pct_us(&c.hist, p);
            // Sampling error grows into the tail: 2% in the body, 6% at p99.9.
            let tol = if p < 99.5 { 0.02 } else { 0.06 };
            assert!((got - want).abs() <= want * tol, "p{p}: {got} vs {want}");
        }
    }

    #[test]
    fn bimodal_tail_is_visible_and_merge_adds_up() {
        // 99% at 10 µs, 1% at 5 ms: p99 sits on the fast mode, p99.9 on the slow one.
        let mut a = Counts::new();
        let mut b = Counts::new();
        for i in 0..10_000u64 {
            let c = if i % 2 == 0 { &mut a } else { &mut b };
            c.record(if i % 100 == 0 { 5_000_000 } else { 10_000 });
        }
        a.merge(&b);
        assert_eq!(a.hist.len(), 10_000);
        assert!((pct_us(&a.hist, 98.9) - 10.0).abs() < 0.1);
        assert!((pct_us(&a.hist, 99.9) - 5000.0).abs() < 5.0);
        let curve = percentile_curve(&a.hist, 5);
        assert!(curve.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        assert!(curve.last().unwrap().1 >= 4995.0);
    }

    #[test]
    fn core_busy_share_is_read() {
        let m = CoreMeter::start(0);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let p = m.percent().unwrap();
        assert!((0.0..=100.0).contains(&p), "{p}");
    }

    #[test]
    fn own_cpu_use_is_measured() {
        // Compared with the kernel's own CPU clock for this process, so a busy machine (where a
        // busy loop gets only part of a core) does not matter.
        let cpu_clock = || {
            let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: ts is a valid timespec; CLOCK_PROCESS_CPUTIME_ID exists on Linux.
            unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
            ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
        };
        let pid = std::process::id();
        let (p0, c0) = (proc_cpu_seconds(pid).unwrap(), cpu_clock());
        let mut x = 0u64;
        while cpu_clock() - c0 < 0.3 {
            for _ in 0..10_000 {
                x = x.wrapping_add(std::hint::black_box(1));
            }
        }
        std::hint::black_box(x);
        let (p1, c1) = (proc_cpu_seconds(pid).unwrap(), cpu_clock());
        let (proc_s, clock_s) = (p1 - p0, c1 - c0);
        // /proc counts in clock ticks (10 ms at 100 Hz): allow a few ticks and 10%.
        assert!(
            (proc_s - clock_s).abs() < 0.05 + clock_s * 0.1,
            "/proc says {proc_s} s, the CPU clock {clock_s} s"
        );
    }
}
