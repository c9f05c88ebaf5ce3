//! One measured run (threads started on a common schedule, server CPU sampled around the
//! measured window) and the rate ramp that finds the redline.

use crate::client::{self, now_ns, Shared, ThreadPlan, Window};
use crate::config::{Config, Protocol};
use crate::json::J;
use crate::stall::{self, Stalls};
use crate::stats::{self, pct_us, Counts, CpuMeter, PERCENTILES};
use std::io::IsTerminal;
use std::sync::atomic::Ordering;

/// Below this share of one core the server was not the bottleneck.
pub const SERVER_BOUND_PCT: f64 = 95.0;

#[derive(Clone)]
pub struct Report {
    pub config: Config,
    pub counts: Counts,
    /// Requests answered per second of the measured window.
    pub rps: f64,
    pub server_cpu_pct: Option<f64>,
    pub generator_cpu_pct: Option<f64>,
    /// How busy the server's core was, by any process (only with --server-core).
    pub server_core_busy_pct: Option<f64>,
    /// The machine's stalls during the measured window (with --stall-probe).
    pub stalls: Option<Stalls>,
    pub command: String,
    /// Earlier attempts of this run that measured nothing because the machine was starved (why,
    /// for each), discarded and run again.
    pub starved_attempts: Vec<String>,
}

impl Report {
    pub fn errors_total(&self) -> u64 {
        self.counts.errors + self.counts.unanswered
    }

    pub fn hit_ratio(&self) -> Option<f64> {
        let n = self.counts.hits + self.counts.misses;
        (self.config.protocol == Protocol::Memcache && n > 0)
            .then(|| self.counts.hits as f64 / n as f64)
    }

    pub fn pct(&self, p: f64) -> f64 {
        pct_us(&self.counts.hist, p)
    }

    /// Server CPU time per answered request, in microseconds: it compares servers even when the
    /// generator set the pace.
    pub fn server_us_per_request(&self) -> Option<f64> {
        let pct = self.server_cpu_pct?;
        (self.rps > 0.0).then(|| pct / 100.0 / self.rps * 1e6)
    }

    /// Generator CPU time per answered request, in microseconds.
    pub fn generator_us_per_request(&self) -> Option<f64> {
        let pct = self.generator_cpu_pct?;
        (self.rps > 0.0).then(|| pct / 100.0 / self.rps * 1e6)
    }

    /// Whether the server, not the generator, limited a closed-loop run.
    pub fn server_bound(&self) -> Option<bool> {
        self.server_cpu_pct.map(|p| p >= SERVER_BOUND_PCT)
    }

    pub fn to_json(&self) -> J {
        let mut o = J::obj();
        o.set("command", self.command.clone());
        o.set("mode", if self.config.rate > 0.0 { "open" } else { "closed" });
        let xdp = self.config.protocol == Protocol::Udp
            && self.config.udp_engine == crate::config::UdpEngine::Xdp;
        o.set(
            "latency_from",
            if xdp {
                "actual send time (AF_XDP sender stamps each datagram when it is queued)"
            } else if self.config.rate > 0.0 {
                "intended send time"
            } else {
                "send time"
            },
        );
        o.set("target_rate", self.config.rate);
        o.set("duration_s", self.config.duration);
        o.set("requests_per_s", self.rps);
        o.set("issued", self.counts.issued);
        o.set("completed", self.counts.completed);
        o.set("errors", self.counts.errors);
        o.set("refused_for_memory", self.counts.refused);
        if let Some(e) = &self.counts.first_error {
            o.set("first_error", e.as_str());
        }
        o.set("unanswered", self.counts.unanswered);
        o.set("broken_connections", self.counts.conn_errors);
        o.set("hit_ratio", self.hit_ratio());
        o.set("hits", self.counts.hits);
        o.set("misses", self.counts.misses);
        let mut lat = J::obj();
        for (name, p) in PERCENTILES {
            lat.set(name, self.pct(p));
        }
        lat.set("mean", self.counts.hist.mean() / 1000.0);
        o.set("latency_us", lat);
        if self.config.rate > 0.0 {
            let mut lag = J::obj();
            lag.set("p50", pct_us(&self.counts.send_lag, 50.0));
            lag.set("p99", pct_us(&self.counts.send_lag, 99.0));
            lag.set("max", pct_us(&self.counts.send_lag, 100.0));
            o.set("send_lag_us", lag);
        }
        o.set("server_cpu_pct", self.server_cpu_pct);
        o.set("server_bound", self.server_bound());
        o.set("generator_cpu_pct", self.generator_cpu_pct);
        o.set("server_core_busy_pct", self.server_core_busy_pct);
        o.set("server_cpu_us_per_request", self.server_us_per_request());
        o.set("generator_cpu_us_per_request", self.generator_us_per_request());
        if let Some(s) = &self.stalls {
            o.set("stalls", stalls_json(s));
        }
        if let Some(h) = self.config.handshake {
            o.set("handshakes", self.handshakes_json(h));
        }
        if self.config.tls {
            o.set("tls", self.tls_json());
        }
        let curve: Vec<J> = stats::percentile_curve(&self.counts.hist, 4)
            .into_iter()
            .map(|(p, us)| J::Arr(vec![J::Num(p), J::Num(us)]))
            .collect();
        o.set("percentile_curve_us", J::Arr(curve));
        o.set(
            "discarded_starved_attempts",
            J::Arr(self.starved_attempts.iter().map(|s| J::from(s.clone())).collect()),
        );
        o
    }

    /// Handshake mode: of the handshakes completed in the window, the share the server resumed.
    pub fn resumed_fraction(&self) -> Option<f64> {
        let n = self.counts.tls_full + self.counts.tls_resumed;
        (self.config.handshake.is_some() && n > 0)
            .then(|| self.counts.tls_resumed as f64 / n as f64)
    }

    fn handshakes_json(&self, h: crate::config::Handshake) -> J {
        let mut o = J::obj();
        o.set(
            "mode",
            match h {
                crate::config::Handshake::Full => "full",
                crate::config::Handshake::Resumed => "resumed",
            },
        );
        o.set("per_s", self.rps);
        o.set("full", self.counts.tls_full).set("resumed", self.counts.tls_resumed);
        o.set("resumed_fraction", self.resumed_fraction());
        o.set("failed", self.counts.errors);
        o.set("first_error", self.counts.first_error.clone());
        o.set(
            "latency_is",
            "from the start of the TCP connect to the end of the TLS handshake; each \
             connection then sends one PING, reads PONG and closes",
        );
        o
    }

    fn tls_json(&self) -> J {
        let c = &self.config;
        let mut o = J::obj();
        o.set("library", "rustls 0.23, ring provider");
        o.set(
            "verify",
            match &c.tls_ca {
                Some(f) => format!("certificate checked against {f}"),
                None => "none (--tls-insecure: any certificate, signature unchecked)".into(),
            },
        );
        o.set("sni", c.tls_sni.clone());
        o.set("version", c.tls_version.clone().unwrap_or_else(|| "1.2 or 1.3".into()));
        o
    }

    pub fn summary(&self) -> String {
        let c = &self.config;
        let mode = if c.handshake.is_some() {
            format!("a new connection per request, {} at a time", c.connections)
        } else if c.rate > 0.0 {
            format!("open loop at {:.0}/s", c.rate)
        } else {
            format!("closed loop, {} conns x {} deep", c.connections, c.pipeline)
        };
        let mut s = format!(
            "{} {}: {} for {}s: {:.0} req/s, errors {}, unanswered {}",
            match c.protocol {
                Protocol::Ping => "ping",
                Protocol::Memcache => "memcache",
                Protocol::Udp => "udp",
            },
            c.server,
            mode,
            crate::config::fmt_f(c.duration),
            self.rps,
            self.counts.errors,
            self.counts.unanswered
        );
        if let Some(h) = self.hit_ratio() {
            s += &format!(", hit ratio {:.2}%", h * 100.0);
        }
        if c.tls {
            s += ", TLS";
        }
        if c.handshake.is_some() {
            s += &format!(
                "\n  handshakes: {:.0}/s, {} full, {} resumed ({:.1}% resumed), {} failed",
                self.rps,
                self.counts.tls_full,
                self.counts.tls_resumed,
                self.resumed_fraction().unwrap_or(0.0) * 100.0,
                self.counts.errors
            );
            if let Some(e) = &self.counts.first_error {
                s += &format!("\n  first failure: {e}");
            }
            s += "\n  handshake latency (connect to handshake done)";
        } else if let Some(e) = &self.counts.first_error {
            if self.counts.refused > 0 {
                s += &format!(
                    "\n  {} of the errors: sets refused for want of memory",
                    self.counts.refused
                );
            }
            s += &format!("\n  first error: {e}");
        }
        s += "\n  latency us:";
        for (name, p) in PERCENTILES {
            s += &format!(" {name} {:.1}", self.pct(p));
        }
        if c.rate > 0.0 {
            s += &format!(
                "\n  generator send lag us: p50 {:.1} p99 {:.1} max {:.1}",
                pct_us(&self.counts.send_lag, 50.0),
                pct_us(&self.counts.send_lag, 99.0),
                pct_us(&self.counts.send_lag, 100.0)
            );
        }
        if let Some(p) = self.server_cpu_pct {
            s += &format!("\n  server cpu {p:.1}% of a core");
            if c.rate == 0.0 {
                s += if p >= SERVER_BOUND_PCT { " (server-bound)" } else { " (generator-bound)" };
            }
        }
        if let Some(p) = self.generator_cpu_pct {
            s += &format!(", generator cpu {p:.1}%");
        }
        if let Some(p) = self.server_core_busy_pct {
            s += &format!(", server core busy {p:.1}% (all processes)");
        }
        if let (Some(srv), Some(gen)) =
            (self.server_us_per_request(), self.generator_us_per_request())
        {
            s += &format!("\n  cpu per request: server {srv:.3} us, generator {gen:.3} us");
        }
        for why in &self.starved_attempts {
            s += &format!("\n  an earlier attempt was discarded: {why}");
        }
        if let Some(st) = &self.stalls {
            s += &format!(
                "\n  machine stalls on cpus {}: {} >= 100 us, {} >= 1 ms, longest {} ({} wake-ups{})",
                st.cores.iter().map(|c| c.cpu.to_string()).collect::<Vec<_>>().join(","),
                st.over_100us(),
                st.over_1ms(),
                fmt_us_unit(st.max_us()),
                st.wakeups(),
                if st.realtime() { "" } else { "; probe not real-time, other processes count as stalls" }
            );
        }
        s
    }
}

fn fmt_us_unit(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0} us")
    }
}

/// A run's (or merged runs') stalls as JSON: counts, the longest, and per core.
pub fn stalls_json(s: &Stalls) -> J {
    let mut o = J::obj();
    o.set("window_s", s.window_s);
    o.set("probe_interval_us", stall::INTERVAL_NS as f64 / 1000.0);
    o.set("realtime_probe", s.realtime());
    o.set("wakeups", s.wakeups());
    o.set("over_100us", s.over_100us());
    o.set("over_1ms", s.over_1ms());
    o.set("max_us", s.max_us());
    let mut ex = J::obj();
    for (name, p) in PERCENTILES {
        ex.set(name, s.explained_us(p));
    }
    o.set("latency_explained_by_stalls_us", ex);
    o.set(
        "cores",
        J::Arr(
            s.cores
                .iter()
                .map(|c| {
                    let one = Stalls { cores: vec![c.clone()], window_s: s.window_s };
                    let mut j = J::obj();
                    j.set("cpu", c.cpu)
                        .set("over_100us", one.over_100us())
                        .set("over_1ms", one.over_1ms());
                    j.set("max_us", one.max_us());
                    j
                })
                .collect(),
        ),
    );
    o
}

fn progress_enabled(c: &Config) -> bool {
    c.progress.unwrap_or_else(|| std::io::stderr().is_terminal())
}

/// How many times a run that measured nothing because the machine was starved is run again.
pub const STARVED_RETRIES: usize = 2;

/// Runs the configured load once (open loop when `c.rate > 0`).
pub fn run_once(c: &Config) -> Result<Report, String> {
    run_once_with(c, || {})
}

/// Runs the configured load once; `at_warm_end` is called when the warm-up ends (within the
/// 20 ms the monitor sleeps), for callers that meter something over the measured window. A run
/// that measured nothing because the generator, or the first answer, came only after the
/// window had ended (a starved machine, see `no_answer_reason`) is run again, at most
/// `STARVED_RETRIES` times; the report lists the discarded attempts. A server that never
/// answers fails at once.
pub fn run_once_with(c: &Config, mut at_warm_end: impl FnMut()) -> Result<Report, String> {
    let mut discarded = Vec::new();
    loop {
        match attempt(c, &mut at_warm_end) {
            Ok(mut r) => {
                r.starved_attempts = discarded;
                return Ok(r);
            }
            Err(Attempt::Starved(why)) if discarded.len() < STARVED_RETRIES => discarded.push(why),
            Err(Attempt::Starved(why)) => {
                return Err(format!(
                    "{why} (and {} times before: {})",
                    discarded.len(),
                    discarded.join("; ")
                ))
            }
            Err(Attempt::Failed(e)) => return Err(e),
        }
    }
}

enum Attempt {
    Starved(String),
    Failed(String),
}

impl From<String> for Attempt {
    fn from(e: String) -> Attempt {
        Attempt::Failed(e)
    }
}

/// Threads wait this long after the last one connected, so all start on one schedule.
const START_LEAD_NS: u64 = 10_000_000;

fn attempt(c: &Config, at_warm_end: &mut impl FnMut()) -> Result<Report, Attempt> {
    if c.protocol == Protocol::Udp && c.udp_engine == crate::config::UdpEngine::Xdp {
        return Ok(crate::xdp_sender::run(c)?);
    }
    let per_thread =
        |i: usize| c.connections / c.threads + usize::from(i < c.connections % c.threads);
    let shared = Shared::default();
    let show = progress_enabled(c);
    let mut server_meter = None;
    let mut gen_meter = None;
    let probe_stop = std::sync::atomic::AtomicBool::new(false);
    let mut stalls: Option<Result<Stalls, String>> = None;
    let mut window = None;
    let results: Vec<Result<Counts, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..c.threads)
            .map(|i| {
                let plan = ThreadPlan {
                    index: i,
                    connections: per_thread(i),
                    rate: c.rate / c.threads as f64,
                    cpu: (!c.cpus.is_empty()).then(|| c.cpus[i % c.cpus.len()]),
                    seed: c.seed.wrapping_add(i as u64 * 0x1234_5678_9abc),
                };
                let shared = &shared;
                scope.spawn(move || {
                    let r = client::run_thread(c, &plan, shared);
                    if r.is_err() {
                        shared.abort.store(true, Ordering::Relaxed);
                    }
                    r
                })
            })
            .collect();
        // The window starts once every thread is connected (or one failed: then the others
        // are let go at once and see the abort).
        shared.gate.wait_all(c.threads, || {
            shared.abort.load(Ordering::Relaxed) || handles.iter().any(|h| h.is_finished())
        });
        let win = Window::new(c, now_ns() + START_LEAD_NS);
        window = Some(win);
        let probes = (c.stall_probe || c.inject_stall_ms > 0.0).then(|| {
            let cpus = stall::watched_cpus(c.server_core, &c.cpus);
            let inject = (c.inject_stall_ms > 0.0).then(|| (cpus[0], c.inject_stall_ms));
            stall::start(scope, &cpus, inject, win, &probe_stop)
        });
        shared.gate.open(win);
        // Sample CPU use over exactly the measured window.
        let mut last = (now_ns(), 0u64);
        let mut sampled_end = false;
        while handles.iter().any(|h| !h.is_finished()) {
            std::thread::sleep(std::time::Duration::from_millis(20));
            let now = now_ns();
            if server_meter.is_none() && now >= win.warm_end {
                at_warm_end();
                server_meter = Some((
                    c.server_pid.map(CpuMeter::start),
                    CpuMeter::start(std::process::id()),
                    c.server_core.map(stats::CoreMeter::start),
                ));
            }
            if !sampled_end && now >= win.end {
                sampled_end = true;
                if let Some((s, g, core)) = &server_meter {
                    gen_meter = Some((
                        s.as_ref().and_then(|m| m.percent()),
                        g.percent(),
                        core.as_ref().and_then(|m| m.percent()),
                    ));
                }
            }
            if show && now >= last.0 + 1_000_000_000 {
                let a = shared.answered.load(Ordering::Relaxed);
                let e = shared.errors.load(Ordering::Relaxed);
                let phase = if now < win.warm_end {
                    "warm-up"
                } else if now < win.end {
                    "measuring"
                } else {
                    "draining"
                };
                let secs = (now.saturating_sub(win.start)) as f64 / 1e9;
                eprint!(
                    "\r\x1b[K[{secs:5.1}s {phase}] {:.0} req/s, {a} answered, {e} errors",
                    (a - last.1) as f64 / ((now - last.0) as f64 / 1e9)
                );
                last = (now, a);
            }
        }
        if show {
            eprint!("\r\x1b[K");
        }
        let r = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("generator thread panicked".into())))
            .collect();
        // Probes end with the window by themselves; this only shortens an aborted run.
        probe_stop.store(true, Ordering::Relaxed);
        stalls = probes.map(|p| p.finish());
        r
    });
    let stalls = stalls.transpose()?;
    let mut total = Counts::new();
    for r in results {
        total.merge(&r?);
    }
    if total.conn_errors > 0 && total.completed == 0 {
        return Err(format!(
            "{}: every connection failed ({} broken)",
            c.server, total.conn_errors
        )
        .into());
    }
    if total.completed == 0 {
        let win = window.expect("set before the threads ran");
        let why = format!("{}: {}", c.server, no_answer_reason(&total, &win));
        return Err(if why.contains(STARVED) {
            Attempt::Starved(why)
        } else {
            Attempt::Failed(why)
        });
    }
    let (server_cpu_pct, generator_cpu_pct, server_core_busy_pct) =
        gen_meter.unwrap_or((None, None, None));
    Ok(Report {
        config: c.clone(),
        rps: total.completed as f64 / c.duration,
        counts: total,
        server_cpu_pct,
        generator_cpu_pct,
        server_core_busy_pct,
        stalls,
        command: c.command_line(),
        starved_attempts: Vec::new(),
    })
}

/// Why a run has no answer in its measured window, from its own timeline: a server that never
/// answered, or a machine so starved that the generator only got going, or the first answer only
/// came, after the window had ended (then the run measured nothing, whatever the server).
pub fn no_answer_reason(t: &Counts, win: &Window) -> String {
    let ms = |a: u64, b: u64| a.saturating_sub(b) as f64 / 1e6;
    let window = format!(
        "the measured window was {:.0}-{:.0} ms after the start",
        ms(win.warm_end, win.start),
        ms(win.end, win.start)
    );
    if t.sent_all == 0 {
        return format!("no request was sent ({window})");
    }
    if t.went_at >= win.end {
        return format!(
            "{STARVED}: the generator only started sending {:.0} ms after the start, when the \
             measured window had ended ({window}); {} of its {} requests were answered later",
            ms(t.went_at, win.start),
            t.answered_all,
            t.sent_all
        );
    }
    if t.first_answer_at == 0 {
        return format!(
            "no answer at all: {} requests sent from {:.0} ms after the start, none answered by the \
             end of the drain {:.0} ms after it ({window})",
            t.sent_all,
            ms(t.went_at, win.start),
            ms(win.drain_end, win.start)
        );
    }
    format!(
        "{STARVED}: requests went out {:.0} ms after the start but the first answer was only read \
         {:.0} ms after it, when the measured window had ended ({window}); {} of {} requests were \
         answered by then or in the drain, {} never",
        ms(t.went_at, win.start),
        ms(t.first_answer_at, win.start),
        t.answered_all,
        t.sent_all,
        t.unanswered
    )
}

/// How a run that measured nothing because the machine did not run the generator or the server
/// in time is described (the words callers and tests can tell it by).
pub const STARVED: &str = "machine starved, nothing measured";

/// A step of a ramp passes at percentile `p` when every request was answered without error, the
/// answers kept up with the offered rate (95%), and that percentile stayed under the objective.
pub fn step_passes(r: &Report, p: f64) -> bool {
    r.errors_total() == 0 && r.rps >= 0.95 * r.config.rate && r.pct(p) < r.config.slo_us
}

pub struct RampResult {
    /// Every step kept, in the order run.
    pub steps: Vec<Report>,
    /// The highest rate whose step, and every step run below it, passed at p99.
    pub redline_p99: Option<f64>,
    /// The same at p99.9 (the machine's stalls decide it more often than the server).
    pub redline_p999: Option<f64>,
    /// Attempts run again because the machine, not the server, failed them (see `run_step`),
    /// each with the reason.
    pub discarded: Vec<(Report, String)>,
}

impl RampResult {
    /// The lowest rate any step ran at (what `<N` names when none passed).
    #[allow(dead_code)] // p99-parity's default ramp; p99-bench --ramp runs fixed steps
    pub fn lowest_rate(&self) -> Option<f64> {
        self.steps.iter().map(|r| r.config.rate).reduce(f64::min)
    }

    /// The redline at percentile `p` and the lowest rate that failed above it: the highest rate
    /// whose step and every step below it passed, and the first step above that did not.
    pub fn bracket(&self, p: f64) -> (Option<f64>, Option<f64>) {
        bracket_of(self.steps.iter().map(|r| (r.config.rate, step_passes(r, p))).collect())
    }

    fn settle(&mut self) {
        self.redline_p99 = self.bracket(99.0).0;
        self.redline_p999 = self.bracket(99.9).0;
    }
}

/// How many times a ramp step that the machine failed is run again.
pub const STEP_RETRIES: usize = 2;

/// A count of >= 1 ms stalls is more than the machine's usual when a steady rate of that usual
/// would reach it in fewer than one window in 50 (Poisson tail).
pub const UNUSUAL_STALLS_TAIL: f64 = 0.02;

/// The usual rate is never taken below this (per second): with a machine that was quiet so
/// far, a single stall must not count as unusual.
pub const MIN_USUAL_STALLS_PER_S: f64 = 0.5;

/// >= 1 ms stalls per second of measured time of one run, if its stalls were measured.
pub fn long_stalls_per_s(r: &Report) -> Option<f64> {
    let st = r.stalls.as_ref()?;
    (st.window_s > 0.0).then(|| st.over_1ms() as f64 / st.window_s)
}

/// P(X >= k) for a Poisson count X of mean `mean`.
pub fn poisson_tail(k: u64, mean: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    // 1 - P(X < k), summed term by term (k is a handful of stalls).
    let mut term = (-mean).exp();
    let mut below = 0.0;
    for i in 0..k {
        below += term;
        term *= mean / (i + 1) as f64;
    }
    (1.0 - below).max(0.0)
}

/// Why a step failing p99 failed because of the machine rather than the server, if it did:
/// the stalls the probe measured during it would alone have put p99 at or above the objective;
/// or it met more stalls >= 1 ms than the machine usually has in a window that long
/// (`usual_per_s`: the median per second over the scenario's earlier windows, at least
/// `MIN_USUAL_STALLS_PER_S`; "more" when a steady rate of that usual reaches the count in
/// fewer than one window in 50); or the generator itself sent late by that much (its own p99
/// send lag).
pub fn machine_failed(r: &Report, usual_per_s: Option<f64>) -> Option<String> {
    if step_passes(r, 99.0) || r.errors_total() > 0 {
        return None;
    }
    let slo = r.config.slo_us;
    if let Some(st) = &r.stalls {
        let explained = st.explained_us(99.0);
        if explained >= slo {
            return Some(format!(
                "the machine's stalls alone explain p99 {explained:.0} us ({} >= 1 ms, longest {})",
                st.over_1ms(),
                fmt_us_unit(st.max_us())
            ));
        }
        if let Some(usual) = usual_per_s {
            let usual = usual.max(MIN_USUAL_STALLS_PER_S);
            let expected = usual * st.window_s;
            let k = st.over_1ms();
            if k > 0 && poisson_tail(k, expected) < UNUSUAL_STALLS_TAIL {
                return Some(format!(
                    "{k} stalls >= 1 ms (longest {}) where the machine usually has {usual:.1} a \
                     second ({expected:.1} expected in {:.2} s; {k} or more in fewer than one \
                     window in {:.0})",
                    fmt_us_unit(st.max_us()),
                    st.window_s,
                    1.0 / UNUSUAL_STALLS_TAIL
                ));
            }
        }
    }
    let lag = pct_us(&r.counts.send_lag, 99.0);
    (lag >= slo).then(|| format!("the generator sent late (send lag p99 {lag:.0} us)"))
}

/// The machine's usual rate of stalls >= 1 ms per second: the median over `prior` (per-second
/// rates of the scenario's earlier windows) and the steps kept so far.
fn usual_long_stalls(prior: &[f64], res: &RampResult) -> Option<f64> {
    let mut v: Vec<f64> = prior.to_vec();
    v.extend(res.steps.iter().filter_map(long_stalls_per_s));
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

/// Runs one open-loop step at `rate`; a step the machine failed (`machine_failed`) is run
/// again, at most `STEP_RETRIES` times, and the discarded attempts are kept with the reason.
/// An injected test stall (`--inject-stall`) stands for a one-off stall of the machine: only
/// the first attempt of a step has it.
fn run_step(
    c: &Config,
    rate: f64,
    step_secs: f64,
    prior: &[f64],
    res: &mut RampResult,
) -> Result<usize, String> {
    if let Some(i) = res.steps.iter().position(|r| r.config.rate == rate) {
        return Ok(i);
    }
    let mut s = c.clone();
    s.rate = rate;
    s.duration = step_secs;
    s.warmup = c.warmup.min(step_secs / 4.0).min(0.5);
    s.drain = s.drain.min(0.5);
    s.ramp = None;
    let r = run_once(&s)?;
    s.inject_stall_ms = 0.0;
    keep_step(r, &s, prior, res)
}

/// Keeps `first` as the step at its rate, or, when the machine failed it, sets it aside and
/// runs the step (`s`) again, at most `STEP_RETRIES` times.
fn keep_step(
    first: Report,
    s: &Config,
    prior: &[f64],
    res: &mut RampResult,
) -> Result<usize, String> {
    let mut r = first;
    for _ in 0..STEP_RETRIES {
        let Some(why) = machine_failed(&r, usual_long_stalls(prior, res)) else { break };
        res.discarded.push((r, why));
        r = run_once(s)?;
    }
    res.steps.push(r);
    Ok(res.steps.len() - 1)
}

/// Runs the open-loop steps in order until one fails at p99 (a step failing only at p99.9 ends
/// the p99.9 redline but not the ramp). `prior`: the >= 1 ms stalls per second of earlier
/// windows on this machine, which tell `run_step` what is usual (may be empty).
pub fn ramp(
    c: &Config,
    rates: &[f64],
    step_secs: f64,
    prior: &[f64],
) -> Result<RampResult, String> {
    let mut res = RampResult::empty();
    for &rate in rates {
        let i = run_step(c, rate, step_secs, prior, &mut res)?;
        if !step_passes(&res.steps[i], 99.0) {
            break;
        }
    }
    res.settle();
    Ok(res)
}

impl RampResult {
    fn empty() -> RampResult {
        RampResult {
            steps: Vec::new(),
            redline_p99: None,
            redline_p999: None,
            discarded: Vec::new(),
        }
    }
}

/// Where a redline search runs: it starts at `start`, never goes below `floor` or above `top`,
/// and stops once the redline is bracketed by steps at most `max_ratio` apart.
#[allow(dead_code)] // p99-parity's default ramp; p99-bench --ramp runs fixed steps
#[derive(Clone, Copy, Debug)]
pub struct Search {
    pub start: f64,
    pub floor: f64,
    pub top: f64,
    pub max_ratio: f64,
}

/// Brackets the highest passing rate: from `start` it doubles while steps pass (halves while
/// they fail, down to `floor`), then splits the gap between the highest pass and the lowest
/// failure (geometric middle, rates in whole hundreds) until they are at most `max_ratio`
/// apart. `passes` runs (or recalls) the step at a rate.
#[allow(dead_code)] // p99-parity's default ramp; p99-bench --ramp runs fixed steps
pub fn search(
    sp: Search,
    passes: &mut impl FnMut(f64) -> Result<bool, String>,
) -> Result<(), String> {
    let round = round_rate;
    let (mut lo, mut hi): (Option<f64>, Option<f64>) = (None, None);
    let mut r = round(sp.start.clamp(sp.floor.min(sp.top), sp.top));
    // Rates are rounded, so the top or the floor may be reached as a rate a little off them:
    // the search also stops when the next rate is no further on.
    loop {
        if passes(r)? {
            lo = Some(r);
            let next = round((r * 2.0).min(sp.top));
            if hi.is_some() || next <= r {
                break;
            }
            r = next;
        } else {
            hi = Some(r);
            let next = round((r / 2.0).max(sp.floor));
            if lo.is_some() || next >= r {
                break;
            }
            r = next;
        }
    }
    if let (Some(l), Some(h)) = (lo, hi) {
        bisect(l, h, sp.max_ratio, passes)?;
    }
    Ok(())
}

/// Rates of a search are whole hundreds of requests per second (and at least 100).
fn round_rate(r: f64) -> f64 {
    ((r / 100.0).round() * 100.0).max(100.0)
}

/// Splits the gap between a rate that passed (`lo`) and a higher one that failed (`hi`) at
/// their geometric middle (whole hundreds) until they are at most `max_ratio` apart.
#[allow(dead_code)] // p99-parity's default ramp; p99-bench --ramp runs fixed steps
pub fn bisect(
    mut lo: f64,
    mut hi: f64,
    max_ratio: f64,
    passes: &mut impl FnMut(f64) -> Result<bool, String>,
) -> Result<(), String> {
    while hi / lo > max_ratio {
        let m = round_rate((lo * hi).sqrt());
        if m <= lo || m >= hi {
            break;
        }
        if passes(m)? {
            lo = m;
        } else {
            hi = m;
        }
    }
    Ok(())
}

/// The highest rate that passed with every step below it, and the lowest rate above that which
/// failed; `steps` are (rate, passed), in any order.
pub fn bracket_of(mut steps: Vec<(f64, bool)>) -> (Option<f64>, Option<f64>) {
    steps.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut pass = None;
    for (rate, passed) in steps {
        if !passed {
            return (pass, Some(rate));
        }
        pass = Some(rate);
    }
    (pass, None)
}

/// The steps a redline search has run: each rate once, with whether it passed p99 and p99.9.
struct Outcomes<'a, F> {
    run: &'a mut F,
    seen: Vec<(f64, bool, bool)>,
}

impl<F: FnMut(f64) -> Result<(bool, bool), String>> Outcomes<'_, F> {
    /// Whether the step at `rate` passed at percentile `p` (99 or 99.9), running it if new.
    fn at(&mut self, rate: f64, p: f64) -> Result<bool, String> {
        let o = match self.seen.iter().find(|s| s.0 == rate) {
            Some(&(_, p99, p999)) => (p99, p999),
            None => {
                let o = (self.run)(rate)?;
                self.seen.push((rate, o.0, o.1));
                o
            }
        };
        Ok(if p == 99.0 { o.0 } else { o.1 })
    }

    fn bracket(&self, p: f64) -> (Option<f64>, Option<f64>) {
        bracket_of(self.seen.iter().map(|s| (s.0, if p == 99.0 { s.1 } else { s.2 })).collect())
    }
}

/// The two redline searches of `ramp_search` over steps that `run` makes at a rate (each rate
/// once), returning whether the step passed p99 and p99.9 (see `ramp_search` for the order).
#[allow(dead_code)] // p99-parity's default ramp; p99-bench --ramp runs fixed steps
pub fn search_redlines(
    sp: Search,
    run: &mut impl FnMut(f64) -> Result<(bool, bool), String>,
) -> Result<(), String> {
    let mut o = Outcomes { run, seen: Vec::new() };
    search(sp, &mut |rate| o.at(rate, 99.0))?;
    if let Some(top) = o.bracket(99.0).0 {
        let floor = round_rate(sp.floor.min(top));
        if o.at(floor, 99.9)? {
            if let (Some(lo), Some(hi)) = o.bracket(99.9) {
                bisect(lo, hi, sp.max_ratio, &mut |rate| o.at(rate, 99.9))?;
            }
        }
    }
    for _ in 0..3 {
        let mut split = false;
        for p in [99.0, 99.9] {
            if let (Some(lo), Some(hi)) = o.bracket(p) {
                if hi / lo > sp.max_ratio {
                    bisect(lo, hi, sp.max_ratio, &mut |rate| o.at(rate, p))?;
                    split = true;
                }
            }
        }
        if !split {
            break;
        }
    }
    Ok(())
}

/// The redline search. First the p99 redline (`search` from `sp.start`). Then the p99.9 one,
/// which cannot pass where p99 failed and on a shared machine seldom passes far above the
/// floor: the floor step first (if it fails, the p99.9 redline is below the floor), then the
/// gap between the highest pass and the lowest failure the steps so far show is split. Last,
/// both redlines are read from all the steps (the highest rate that passed with every step
/// below it), and a bracket wider than `sp.max_ratio` (a step of the p99.9 search that failed
/// p99 below the first bracket) is split again. Every step reuses one already run at its rate;
/// `prior` is the scenario's earlier >= 1 ms stall rates (see `run_step`). `seed`, an open-loop
/// run of this server already made (p99-parity's fixed-rate runs), is the first step: the p99
/// search starts at its rate, and it is run again like any step if the machine failed it.
#[allow(dead_code)] // p99-parity's default ramp; p99-bench --ramp runs fixed steps
pub fn ramp_search(
    c: &Config,
    sp: Search,
    step_secs: f64,
    prior: &[f64],
    seed: Option<&Report>,
) -> Result<RampResult, String> {
    let mut res = RampResult::empty();
    let mut sp1 = sp;
    if let Some(r) = seed.filter(|r| {
        let rate = r.config.rate;
        rate > 0.0 && rate == round_rate(rate) && rate >= sp.floor.min(sp.top) && rate <= sp.top
    }) {
        let mut again = r.config.clone();
        again.duration = step_secs;
        again.warmup = c.warmup.min(step_secs / 4.0).min(0.5);
        again.drain = again.drain.min(0.5);
        again.inject_stall_ms = 0.0;
        keep_step(r.clone(), &again, prior, &mut res)?;
        sp1.start = r.config.rate;
    }
    search_redlines(sp1, &mut |rate| {
        let i = run_step(c, rate, step_secs, prior, &mut res)?;
        Ok((step_passes(&res.steps[i], 99.0), step_passes(&res.steps[i], 99.9)))
    })?;
    res.settle();
    Ok(res)
}

pub fn ramp_rates(start: f64, step: f64, end: f64) -> Vec<f64> {
    let mut v = Vec::new();
    let mut r = start;
    while r <= end * (1.0 + 1e-9) {
        v.push(r);
        r += step;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stall::CoreStalls;
    use crate::stats::new_histogram;

    #[test]
    fn poisson_tail_matches_known_values() {
        assert_eq!(poisson_tail(0, 1.0), 1.0);
        // P(X >= 1) = 1 - e^-1; P(X >= 4 | mean 1) = 0.01899.
        assert!((poisson_tail(1, 1.0) - (1.0 - (-1.0f64).exp())).abs() < 1e-12);
        assert!((poisson_tail(4, 1.0) - 0.018_988).abs() < 1e-5);
        assert!((poisson_tail(3, 0.5) - 0.014_388).abs() < 1e-5);
    }

    /// A 1 s open-loop step at 10k req/s whose p99 is `p99_us` and whose probe met `stalls` stalls
    /// of 1.2 ms (too short for the stall arithmetic to explain a 1 ms p99 by themselves).
    fn step(p99_us: u64, stalls: u64) -> Report {
        let args: Vec<String> = ["-r", "10000", "-t", "1"].iter().map(|s| s.to_string()).collect();
        let c = Config::parse(&args).unwrap().unwrap();
        let mut counts = Counts::new();
        counts.hist.record_n(100_000, 9_800).unwrap();
        counts.hist.record_n(p99_us * 1000, 200).unwrap();
        counts.completed = 10_000;
        counts.send_lag.record_n(20_000, 10_000).unwrap();
        let mut late = new_histogram();
        late.record_n(5_000, 4_900).unwrap();
        if stalls > 0 {
            late.record_n(1_200_000, stalls).unwrap();
        }
        Report {
            config: c,
            counts,
            rps: 10_000.0,
            server_cpu_pct: None,
            generator_cpu_pct: None,
            server_core_busy_pct: None,
            stalls: Some(Stalls {
                cores: vec![CoreStalls { cpu: 0, late, realtime: true }],
                window_s: 1.0,
            }),
            command: String::new(),
            starved_attempts: Vec::new(),
        }
    }

    #[test]
    fn a_failed_step_with_unusually_many_long_stalls_is_the_machines() {
        let r = step(1_500, 5);
        assert!(!step_passes(&r, 99.0));
        // The arithmetic alone does not explain it (5 x 0.2 ms over 1 ms in 1 s)...
        assert!(r.stalls.as_ref().unwrap().explained_us(99.0) < 1000.0);
        // ...but 5 where the machine usually has 1 a second is unusual (P = 0.4%).
        let why = machine_failed(&r, Some(1.0)).expect("unusual stalls");
        assert!(why.contains("usually has 1.0"), "{why}");
        // A machine that usually has 3 a second meets 5 in one of six seconds: the server's.
        assert_eq!(machine_failed(&r, Some(3.0)), None);
        // Unknown usual: only the arithmetic and the send lag count.
        assert_eq!(machine_failed(&r, None), None);
        // A quiet machine so far (usual 0) still needs 3 in a second (0.5 taken as usual).
        assert_eq!(machine_failed(&step(1_500, 2), Some(0.0)), None);
        assert!(machine_failed(&step(1_500, 3), Some(0.0)).is_some());
    }

    #[test]
    fn a_passing_step_is_never_run_again() {
        let r = step(500, 9);
        assert!(step_passes(&r, 99.0));
        assert_eq!(machine_failed(&r, Some(0.5)), None);
    }

    #[test]
    fn the_usual_is_the_median_of_earlier_windows_and_kept_steps() {
        let mut res = RampResult::empty();
        assert_eq!(usual_long_stalls(&[], &res), None);
        res.steps.push(step(500, 9));
        assert_eq!(usual_long_stalls(&[1.0, 2.0], &res), Some(2.0));
        assert_eq!(usual_long_stalls(&[1.0, 1.0, 2.0], &res), Some(1.5));
    }

    /// Runs the two searches against a server whose p99 passes below `r99` and p99.9 below
    /// `r999` (req/s): the steps run, in order.
    fn searched_both(start: f64, r99: f64, r999: f64) -> Vec<f64> {
        let sp = Search { start, floor: 4_000.0, top: 1_000_000.0, max_ratio: 1.25 };
        let mut tried = Vec::new();
        search_redlines(sp, &mut |rate| {
            tried.push(rate);
            Ok((rate < r99, rate < r999))
        })
        .unwrap();
        tried
    }

    fn brackets(tried: &[f64], limit: f64) -> (Option<f64>, Option<f64>) {
        bracket_of(tried.iter().map(|&r| (r, r < limit)).collect())
    }

    #[test]
    fn the_p999_search_tests_the_floor_first() {
        // p99.9 fails everywhere: one step more than the p99 search, at the floor.
        let p99_only = {
            let mut n = 0;
            let sp = Search { start: 50_000.0, floor: 4_000.0, top: 1_000_000.0, max_ratio: 1.25 };
            search(sp, &mut |r| {
                n += 1;
                Ok(r < 300_000.0)
            })
            .unwrap();
            n
        };
        let tried = searched_both(50_000.0, 300_000.0, 0.0);
        assert_eq!(tried.len(), p99_only + 1, "{tried:?}");
        assert_eq!(*tried.last().unwrap(), 4_000.0);
        assert_eq!(brackets(&tried, 0.0), (None, Some(4_000.0)));
        // p99.9 passes up to 3x the floor: both redlines bracketed within 25%, every rate once.
        for (r99, r999) in [(300_000.0, 12_000.0), (30_000.0, 25_000.0), (8_000.0, 4_500.0)] {
            let tried = searched_both(50_000.0, r99, r999);
            for (limit, what) in [(r99, "p99"), (r999, "p99.9")] {
                let (lo, hi) = brackets(&tried, limit);
                let (lo, hi) = (lo.unwrap(), hi.unwrap());
                assert!(
                    lo < limit && hi >= limit && hi / lo <= 1.25,
                    "{what}: {lo} {hi} {tried:?}"
                );
            }
            let mut uniq = tried.clone();
            uniq.sort_by(f64::total_cmp);
            uniq.dedup();
            assert_eq!(uniq.len(), tried.len(), "a rate run twice: {tried:?}");
            assert!(tried.len() <= 14, "{r99} {r999}: {} steps {tried:?}", tried.len());
        }
    }

    #[test]
    fn a_failure_below_the_first_bracket_is_bracketed_again() {
        // A server failing p99 at one rate only, which the p99.9 search's first split (between
        // the floor, 4k, and 50k) meets after the p99 search had passed it by: the p99 redline
        // is then read below that failure, and the gap under it is split to 25% as well.
        let sp = Search { start: 50_000.0, floor: 4_000.0, top: 1_000_000.0, max_ratio: 1.25 };
        let mut tried = Vec::new();
        search_redlines(sp, &mut |rate| {
            tried.push(rate);
            let bad = rate == 14_100.0;
            Ok((rate < 300_000.0 && !bad, rate < 10_000.0 && !bad))
        })
        .unwrap();
        assert!(tried.contains(&14_100.0), "{tried:?}");
        let (lo, hi) =
            bracket_of(tried.iter().map(|&r| (r, r < 300_000.0 && r != 14_100.0)).collect());
        assert_eq!(hi, Some(14_100.0), "{tried:?}");
        assert!(14_100.0 / lo.unwrap() <= 1.25, "{lo:?} {tried:?}");
    }

    #[test]
    fn bisect_stops_within_the_ratio() {
        let mut tried = Vec::new();
        bisect(1_000.0, 64_000.0, 1.25, &mut |r| {
            tried.push(r);
            Ok(r < 9_000.0)
        })
        .unwrap();
        let lo = tried.iter().cloned().filter(|r| *r < 9_000.0).fold(1_000.0, f64::max);
        let hi = tried.iter().cloned().filter(|r| *r >= 9_000.0).fold(64_000.0, f64::min);
        assert!(hi / lo <= 1.25 && lo < 9_000.0 && hi >= 9_000.0, "{lo} {hi} {tried:?}");
        // ln(64)/ln(1.25) = 18.6 gaps: five halvings of the log range.
        assert!(tried.len() <= 5, "{tried:?}");
    }
}
