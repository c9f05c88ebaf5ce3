//! The load loops: one epoll loop per generator thread, many connections each, requests
//! pipelined. Closed loop keeps `pipeline` requests in flight per connection. Open loop sends on
//! a fixed schedule (one request every 1/rate seconds, spread over the connections) and counts
//! latency from the *intended* send time, so a server that stalls is charged for every request
//! that should have gone out during the stall; the generator itself never blocks on a socket.

use crate::config::{Config, Protocol, UdpEngine};
use crate::stats::Counts;
use crate::workload::{self, Generator, Kind, Outcome};
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// CLOCK_MONOTONIC in nanoseconds (the clock timerfd uses too).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The phases of one run, as CLOCK_MONOTONIC nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub start: u64,
    pub warm_end: u64,
    pub end: u64,
    pub drain_end: u64,
}

impl Window {
    pub fn new(c: &Config, start: u64) -> Window {
        let ns = |s: f64| (s * 1e9) as u64;
        let warm_end = start + ns(c.warmup);
        let end = warm_end + ns(c.duration);
        Window { start, warm_end, end, drain_end: end + ns(c.drain) }
    }

    pub fn measured(&self, t0: u64) -> bool {
        t0 >= self.warm_end && t0 < self.end
    }
}

/// Live counters the progress line reads while threads run, and the gate that holds every
/// thread until all are connected.
#[derive(Default)]
pub struct Shared {
    pub answered: AtomicU64,
    pub errors: AtomicU64,
    pub abort: AtomicBool,
    pub gate: Gate,
}

/// A thread's answers and errors so far, published to `Shared` for the progress line at most
/// every 64 answers (or at once on an error), and in full when the thread ends.
#[derive(Default)]
pub struct Progress {
    pub answered: u64,
    pub errors: u64,
    published: (u64, u64),
}

impl Progress {
    pub fn publish(&mut self, shared: &Shared, all: bool) {
        let (a, e) = self.published;
        if all || self.answered - a >= 64 || self.errors != e {
            shared.answered.fetch_add(self.answered - a, Ordering::Relaxed);
            shared.errors.fetch_add(self.errors - e, Ordering::Relaxed);
            self.published = (self.answered, self.errors);
        }
    }
}

/// The common start: each generator thread connects first, then waits here; once every thread
/// is ready the run's window is set from that moment, so slow connects or a thread scheduled
/// late on a loaded machine cannot eat the warm-up and measured window (they once did: a start
/// fixed 50 ms ahead before the threads existed was sometimes reached only after the window
/// had ended, and such a run measured nothing).
#[derive(Default)]
pub struct Gate {
    state: Mutex<(usize, Option<Window>)>,
    cv: Condvar,
}

impl Gate {
    /// A thread is connected: waits for the window (None once the run is aborted).
    pub fn arrive(&self, abort: &AtomicBool) -> Option<Window> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.0 += 1;
        self.cv.notify_all();
        loop {
            if let Some(w) = st.1 {
                return Some(w);
            }
            if abort.load(Ordering::Relaxed) {
                return None;
            }
            st = self
                .cv
                .wait_timeout(st, Duration::from_millis(20))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits until `n` threads have arrived or `gone()` says one of them will not (it failed).
    /// Returns whether all arrived.
    pub fn wait_all(&self, n: usize, gone: impl Fn() -> bool) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while st.0 < n {
            if gone() {
                return false;
            }
            st = self
                .cv
                .wait_timeout(st, Duration::from_millis(20))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Sets the window and lets every waiting thread go.
    pub fn open(&self, w: Window) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = Some(w);
        self.cv.notify_all();
    }
}

pub fn resolve(server: &str) -> Result<SocketAddr, String> {
    server
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {server}: {e}"))?
        .next()
        .ok_or_else(|| format!("{server}: no address"))
}

pub struct Epoll {
    fd: i32,
    timer: i32,
    armed_at: u64,
}

pub const TIMER_TOKEN: u64 = u64::MAX;

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscalls creating new descriptors; results are checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        let timer = unsafe {
            libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC)
        };
        if timer < 0 {
            let e = io::Error::last_os_error();
            // SAFETY: fd was created above and is closed once.
            unsafe { libc::close(fd) };
            return Err(e);
        }
        let ep = Epoll { fd, timer, armed_at: 0 };
        ep.ctl(libc::EPOLL_CTL_ADD, timer, libc::EPOLLIN as u32, TIMER_TOKEN)?;
        // Timer wake-ups as precise as the kernel allows (default slack is 50 µs).
        // SAFETY: PR_SET_TIMERSLACK takes an integer; it affects only this thread.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
        Ok(ep)
    }

    pub fn ctl(&self, op: i32, fd: i32, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: ev is a valid epoll_event; fd is open for the call.
        if unsafe { libc::epoll_ctl(self.fd, op, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits for events, at most until `deadline` (CLOCK_MONOTONIC ns). Deadlines under
    /// `spin_ns` away are polled rather than slept on, so the schedule is kept and answers are
    /// read when they arrive, not when a sleeping thread has been woken.
    pub fn wait(
        &mut self,
        events: &mut [libc::epoll_event],
        now: u64,
        deadline: u64,
        spin_ns: u64,
    ) -> io::Result<usize> {
        let timeout = if deadline <= now + spin_ns {
            0
        } else {
            if self.armed_at != deadline {
                let spec = libc::itimerspec {
                    it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
                    it_value: libc::timespec {
                        tv_sec: (deadline / 1_000_000_000) as libc::time_t,
                        tv_nsec: (deadline % 1_000_000_000) as libc::c_long,
                    },
                };
                // SAFETY: timer is our timerfd; spec is a valid itimerspec.
                let r = unsafe {
                    libc::timerfd_settime(
                        self.timer,
                        libc::TFD_TIMER_ABSTIME,
                        &spec,
                        std::ptr::null_mut(),
                    )
                };
                if r < 0 {
                    return Err(io::Error::last_os_error());
                }
                self.armed_at = deadline;
            }
            // Never sleep longer than 100 ms so an abort is seen promptly.
            100
        };
        // SAFETY: events is a valid, writable slice of epoll_event of the given length.
        let n =
            unsafe { libc::epoll_wait(self.fd, events.as_mut_ptr(), events.len() as i32, timeout) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(e);
        }
        Ok(n as usize)
    }

    pub fn clear_timer(&mut self) {
        let mut b = [0u8; 8];
        // SAFETY: reading 8 bytes into an 8-byte buffer from our non-blocking timerfd.
        unsafe { libc::read(self.timer, b.as_mut_ptr().cast(), 8) };
        self.armed_at = 0;
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: both descriptors were created by Epoll::new and are closed exactly once here.
        unsafe {
            libc::close(self.timer);
            libc::close(self.fd);
        }
    }
}

pub fn pin_to(cpu: usize) -> Result<(), String> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it; sched_setaffinity(0) is this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(format!("cannot pin to cpu {cpu}: {}", io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// How far ahead an open-loop thread polls instead of sleeping until its next send. Sleeping
/// costs a timer wake-up that a VM delivers late (the generator's send lag reached 600 us at
/// 10k req/s, every gap slept on), and a sleeping thread reads an answer only after the wake-up
/// its arrival causes, which the latency would charge to the server. Open-loop rates here leave
/// gaps well under this, so the open-loop generator polls its own core; a closed loop, which
/// always has answers coming, sleeps as before so its CPU per request stays a cost figure.
const OPEN_LOOP_SPIN_NS: u64 = 2_000_000;

/// Deadlines closer than this are polled (see `OPEN_LOOP_SPIN_NS`); `--poll-us` overrides it.
pub fn spin_ns(c: &Config, closed: bool) -> u64 {
    match c.poll_us {
        Some(us) => us * 1000,
        None if closed => 30_000,
        None => OPEN_LOOP_SPIN_NS,
    }
}

struct Conn {
    /// Plain TCP, or TLS over it (`--tls`).
    sock: crate::tls::Stream,
    out: Vec<u8>,
    out_pos: usize,
    inb: Vec<u8>,
    in_pos: usize,
    in_len: usize,
    inflight: VecDeque<(u64, Kind)>,
    keys: VecDeque<u64>,
    /// Ping requests in flight (the ping protocol uses this, not `inflight`).
    pings: PingQueue,
    want_out: bool,
    dead: bool,
}

impl Conn {
    /// Writes what is pending; returns whether bytes remain (socket full).
    fn flush(&mut self) -> io::Result<bool> {
        while self.out_pos < self.out.len() {
            match self.sock.write(&self.out[self.out_pos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        self.out_pos = 0;
        // Over TLS, ciphertext the socket did not take yet is pending output too.
        match self.sock.flush() {
            Ok(()) => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
            Err(e) => Err(e),
        }
    }
}

/// Connections for one thread, blocking connect (and TLS handshake) then non-blocking.
fn connect_all(c: &Config, addr: SocketAddr, n: usize) -> Result<Vec<Conn>, String> {
    let mut v = Vec::with_capacity(n);
    let tls = if c.tls { Some(crate::tls::client_config(c)?) } else { None };
    for _ in 0..n {
        let s = crate::tls::connect(c, tls.as_ref(), addr)?;
        s.set_nonblocking(true).map_err(|e| format!("O_NONBLOCK: {e}"))?;
        v.push(Conn {
            sock: s,
            out: Vec::with_capacity(16 << 10),
            out_pos: 0,
            inb: vec![0; 64 << 10],
            in_pos: 0,
            in_len: 0,
            inflight: VecDeque::new(),
            keys: VecDeque::new(),
            pings: PingQueue::default(),
            want_out: false,
            dead: false,
        });
    }
    Ok(v)
}

/// One thread's share of the load.
pub struct ThreadPlan {
    pub index: usize,
    pub connections: usize,
    /// Requests per second for this thread; 0 = closed loop.
    pub rate: f64,
    pub cpu: Option<usize>,
    pub seed: u64,
}

/// One generator thread: pins itself, connects, waits at the gate for the common window, runs.
pub fn run_thread(c: &Config, plan: &ThreadPlan, shared: &Shared) -> Result<Counts, String> {
    if let Some(cpu) = plan.cpu {
        pin_to(cpu)?;
    }
    if c.handshake.is_some() {
        return crate::tls::run_handshakes(c, plan, shared);
    }
    match c.protocol {
        Protocol::Ping | Protocol::Memcache => run_tcp(c, plan, shared),
        Protocol::Udp => match c.udp_engine {
            UdpEngine::Kernel => run_udp(c, plan, shared),
            UdpEngine::Xdp => Err("the AF_XDP sender runs through run::run_once".into()),
        },
    }
}

fn run_tcp(c: &Config, plan: &ThreadPlan, shared: &Shared) -> Result<Counts, String> {
    let addr = resolve(&c.server)?;
    let mut conns = connect_all(c, addr, plan.connections)?;
    let mut ep = Epoll::new().map_err(|e| format!("epoll: {e}"))?;
    for (i, cn) in conns.iter().enumerate() {
        ep.ctl(libc::EPOLL_CTL_ADD, cn.sock.as_raw_fd(), libc::EPOLLIN as u32, i as u64)
            .map_err(|e| format!("epoll_ctl: {e}"))?;
    }
    let mut gen = Generator::new(c, plan.seed);
    let ks = gen.ks.clone();
    let mut counts = Counts::new();
    let mut scratch = workload::Scratch::default();
    let closed = plan.rate <= 0.0;
    let ping = c.protocol == Protocol::Ping;
    let interval = if closed { 0.0 } else { 1e9 / plan.rate };
    let mut sent_sched: u64 = 0; // open loop: requests scheduled so far
    let mut rr = 0usize;
    let mut inflight_total = 0usize;
    let mut dirty: Vec<usize> = Vec::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let (mut last_answered, mut last_errors) = (0u64, 0u64);
    let mut answered_all = 0u64;
    let mut errors_all = 0u64;

    let Some(win) = shared.gate.arrive(&shared.abort) else { return Ok(counts) };
    // Waits until the start so every thread shares one schedule.
    while now_ns() < win.start {
        std::hint::spin_loop();
    }
    counts.went_at = now_ns();
    if closed {
        let t = now_ns();
        for (i, cn) in conns.iter_mut().enumerate() {
            if ping {
                cn.pings.send(&mut cn.out, t, c.pipeline);
                inflight_total += c.pipeline;
                note_sent(&mut counts, &win, t, c.pipeline as u64);
                dirty.push(i);
                continue;
            }
            for _ in 0..c.pipeline {
                let k = gen.next(&mut cn.out, &mut cn.keys);
                cn.inflight.push_back((t, k));
                inflight_total += 1;
                note_sent(&mut counts, &win, t, 1);
            }
            dirty.push(i);
        }
    }
    let live = |conns: &Vec<Conn>| conns.iter().filter(|c| !c.dead).count();
    loop {
        let now = now_ns();
        let abort = shared.abort.load(Ordering::Relaxed);
        // Open loop: the schedule is done once every request due before the end went out, even
        // if the thread woke up late (they are sent late and charged from their due time).
        let sched_left =
            !closed && !abort && win.start + ((sent_sched as f64 * interval) as u64) < win.end;
        let issuing = (now < win.end || sched_left) && !abort;
        if !issuing && (inflight_total == 0 || now >= win.drain_end || abort) {
            break;
        }
        if live(&conns) == 0 {
            break;
        }
        if issuing && !closed {
            loop {
                let due = win.start + (sent_sched as f64 * interval) as u64;
                if due > now || due >= win.end {
                    break;
                }
                sent_sched += 1;
                // Round robin over live connections.
                let n = conns.len();
                let mut tries = 0;
                while conns[rr % n].dead && tries < n {
                    rr += 1;
                    tries += 1;
                }
                let i = rr % n;
                rr += 1;
                let cn = &mut conns[i];
                if ping {
                    cn.pings.send(&mut cn.out, due, 1);
                } else {
                    let k = gen.next(&mut cn.out, &mut cn.keys);
                    cn.inflight.push_back((due, k));
                }
                inflight_total += 1;
                counts.sent_all += 1;
                if win.measured(due) {
                    counts.issued += 1;
                    counts.record_lag(now - due);
                }
                dirty.push(i);
            }
        }
        for i in dirty.drain(..) {
            let cn = &mut conns[i];
            // (want_out with nothing in `out`: TLS ciphertext still waiting for the socket.)
            if cn.dead || (cn.out.is_empty() && !cn.want_out) {
                continue;
            }
            match cn.flush() {
                Ok(pending) => {
                    if pending != cn.want_out {
                        let ev =
                            libc::EPOLLIN as u32 | if pending { libc::EPOLLOUT as u32 } else { 0 };
                        ep.ctl(libc::EPOLL_CTL_MOD, cn.sock.as_raw_fd(), ev, i as u64)
                            .map_err(|e| format!("epoll_ctl: {e}"))?;
                        cn.want_out = pending;
                    }
                }
                Err(_) => {
                    inflight_total -= kill(cn, &win, &mut counts, now);
                }
            }
        }
        let deadline = if issuing {
            if closed {
                win.end
            } else {
                (win.start + (sent_sched as f64 * interval) as u64).min(win.end)
            }
        } else {
            win.drain_end
        };
        let n = ep
            .wait(&mut events, now, deadline, spin_ns(c, closed))
            .map_err(|e| format!("epoll_wait: {e}"))?;
        for ev in &events[..n] {
            let token = ev.u64;
            if token == TIMER_TOKEN {
                ep.clear_timer();
                continue;
            }
            let i = token as usize;
            let cn = &mut conns[i];
            if cn.dead {
                continue;
            }
            if ev.events & libc::EPOLLOUT as u32 != 0 {
                dirty.push(i);
            }
            if ev.events & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 == 0 {
                continue;
            }
            // Read all that is there.
            let mut closed_by_peer = false;
            loop {
                if cn.in_pos > 0 && cn.in_pos == cn.in_len {
                    cn.in_pos = 0;
                    cn.in_len = 0;
                }
                if cn.in_len == cn.inb.len() {
                    if cn.in_pos > 0 {
                        cn.inb.copy_within(cn.in_pos..cn.in_len, 0);
                        cn.in_len -= cn.in_pos;
                        cn.in_pos = 0;
                    } else {
                        let l = cn.inb.len() * 2;
                        cn.inb.resize(l, 0);
                    }
                }
                match cn.sock.read(&mut cn.inb[cn.in_len..]) {
                    Ok(0) => {
                        closed_by_peer = true;
                        break;
                    }
                    Ok(r) => {
                        cn.in_len += r;
                        if cn.in_len < cn.inb.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        closed_by_peer = true;
                        break;
                    }
                }
            }
            let t = now_ns();
            let mut broken = false;
            if ping {
                let refill = closed && t < win.end && !shared.abort.load(Ordering::Relaxed);
                match cn.ping_answers(&win, &mut counts, t, refill) {
                    Ok(done) => {
                        inflight_total -= done.answered;
                        answered_all += done.answered as u64;
                        errors_all += done.errors;
                        if done.answered > 0 && counts.first_answer_at == 0 {
                            counts.first_answer_at = t;
                        }
                        if refill {
                            inflight_total += done.answered;
                            note_sent(&mut counts, &win, t, done.answered as u64);
                        }
                    }
                    Err(()) => broken = true,
                }
            } else {
                // Answers to requests sent together (closed loop) share their send time: those
                // without hits or misses to count are recorded as one histogram entry.
                let mut same = (0u64, 0u64);
                while let Some(&(t0, kind)) = cn.inflight.front() {
                    let avail = &cn.inb[cn.in_pos..cn.in_len];
                    let parsed = workload::parse_answer(
                        kind,
                        avail,
                        &mut cn.keys,
                        &ks,
                        c.verify,
                        &mut scratch,
                    );
                    match parsed {
                        Ok(Some((used, out))) => {
                            if out.error && counts.first_error.is_none() {
                                counts.first_error =
                                    Some(workload::describe_error(kind, &avail[..used]));
                            }
                            cn.in_pos += used;
                            cn.inflight.pop_front();
                            inflight_total -= 1;
                            answered_all += 1;
                            if counts.first_answer_at == 0 {
                                counts.first_answer_at = t;
                            }
                            if out.error {
                                errors_all += 1;
                            }
                            if !out.error && out.hits == 0 && out.misses == 0 && win.measured(t0) {
                                if same.1 > 0 && same.0 != t0 {
                                    counts.record_answers(t.saturating_sub(same.0), same.1);
                                    same.1 = 0;
                                }
                                same = (t0, same.1 + 1);
                            } else {
                                account(&mut counts, &win, t0, t, out);
                            }
                            if closed && t < win.end && !shared.abort.load(Ordering::Relaxed) {
                                let k = gen.next(&mut cn.out, &mut cn.keys);
                                cn.inflight.push_back((t, k));
                                inflight_total += 1;
                                note_sent(&mut counts, &win, t, 1);
                            }
                        }
                        Ok(None) => break,
                        Err(_) => {
                            broken = true;
                            break;
                        }
                    }
                }
                if same.1 > 0 {
                    counts.record_answers(t.saturating_sub(same.0), same.1);
                }
            }
            if cn.inflight.is_empty() && cn.pings.len == 0 && cn.in_pos < cn.in_len {
                // Bytes nobody asked for: the stream is out of step.
                broken = true;
            }
            if broken || closed_by_peer {
                inflight_total -= kill(cn, &win, &mut counts, t);
                continue;
            }
            if !cn.out.is_empty() {
                dirty.push(i);
            }
        }
        if answered_all - last_answered >= 64 || errors_all != last_errors {
            shared.answered.fetch_add(answered_all - last_answered, Ordering::Relaxed);
            shared.errors.fetch_add(errors_all - last_errors, Ordering::Relaxed);
            last_answered = answered_all;
            last_errors = errors_all;
        }
    }
    shared.answered.fetch_add(answered_all - last_answered, Ordering::Relaxed);
    shared.errors.fetch_add(errors_all - last_errors, Ordering::Relaxed);
    counts.answered_all = answered_all;
    // Whatever is still in flight never got an answer: an error of the run even when it was sent
    // during the warm-up; requests of the measured window are also charged at their age.
    let end = now_ns();
    for cn in conns.iter_mut() {
        for &(t0, _) in &cn.inflight {
            counts.unanswered += 1;
            if win.measured(t0) {
                counts.record(end.saturating_sub(t0));
            }
        }
        for &(t0, n) in &cn.pings.batches {
            counts.unanswered += n as u64;
            if win.measured(t0) {
                counts.record_n(end.saturating_sub(t0), n as u64);
            }
        }
    }
    Ok(counts)
}

/// Ping requests in flight on one connection, as runs that share a send time: a closed loop
/// sends a whole window at once and gets its answers back in a few reads, so the generator's
/// cost per ping is a share of a memcpy, a memcmp and one histogram entry per run, not a queue
/// entry, a parse and a histogram entry per request.
#[derive(Default)]
struct PingQueue {
    /// (send time, requests) oldest first.
    batches: VecDeque<(u64, u32)>,
    /// Requests in all batches.
    len: usize,
}

/// `PING\r\n` and `PONG\r\n` this many times over: whole windows are copied out of, and answers
/// compared against, these in one call per chunk.
const PING_RUN: usize = 1024;

fn repeated(line: &[u8]) -> &'static [u8] {
    let v: Vec<u8> = line.iter().copied().cycle().take(line.len() * PING_RUN).collect();
    Box::leak(v.into_boxed_slice())
}

fn pings_run() -> &'static [u8] {
    static RUN: std::sync::OnceLock<&'static [u8]> = std::sync::OnceLock::new();
    RUN.get_or_init(|| repeated(workload::PING))
}

fn pongs_run() -> &'static [u8] {
    static RUN: std::sync::OnceLock<&'static [u8]> = std::sync::OnceLock::new();
    RUN.get_or_init(|| repeated(workload::PONG))
}

impl PingQueue {
    /// Appends `n` pings sent at `t` to `out`.
    fn send(&mut self, out: &mut Vec<u8>, t: u64, n: usize) {
        let run = pings_run();
        let mut left = n;
        while left > 0 {
            let k = left.min(PING_RUN);
            out.extend_from_slice(&run[..k * workload::PING.len()]);
            left -= k;
        }
        match self.batches.back_mut() {
            Some(b) if b.0 == t && (b.1 as usize) + n <= u32::MAX as usize => b.1 += n as u32,
            _ => {
                let mut left = n;
                while left > 0 {
                    let k = left.min(u32::MAX as usize);
                    self.batches.push_back((t, k as u32));
                    left -= k;
                }
            }
        }
        self.len += n;
    }

    /// Takes the `n` oldest requests off the queue, calling `each(send time, count)` per run.
    fn take(&mut self, mut n: usize, mut each: impl FnMut(u64, u64)) {
        self.len -= n;
        while n > 0 {
            let b = self.batches.front_mut().expect("answers never outnumber requests");
            let k = n.min(b.1 as usize);
            each(b.0, k as u64);
            b.1 -= k as u32;
            if b.1 == 0 {
                self.batches.pop_front();
            }
            n -= k;
        }
    }
}

/// What one pass over a connection's ping answers found.
struct PingAnswers {
    answered: usize,
    errors: u64,
}

impl Conn {
    /// Consumes every complete ping answer in the input buffer: leading `PONG\r\n`s are counted
    /// by length and checked against a run of them with one comparison per chunk; anything else
    /// (an `ERROR` line) goes through the line parser and counts as an error answer. With
    /// `refill` (closed loop) every answer sends a new ping at `t`. Err: the stream is garbage.
    fn ping_answers(
        &mut self,
        win: &Window,
        counts: &mut Counts,
        t: u64,
        refill: bool,
    ) -> Result<PingAnswers, ()> {
        let pong = workload::PONG.len();
        let run = pongs_run();
        let mut done = PingAnswers { answered: 0, errors: 0 };
        loop {
            let avail = &self.inb[self.in_pos..self.in_len];
            let whole = (avail.len() / pong).min(self.pings.len);
            let mut good = 0;
            while good < whole {
                let k = (whole - good).min(PING_RUN);
                let got = &avail[good * pong..(good + k) * pong];
                if got == &run[..k * pong] {
                    good += k;
                } else {
                    good += got.chunks_exact(pong).position(|a| a != workload::PONG).unwrap_or(k);
                    break;
                }
            }
            if good > 0 {
                self.in_pos += good * pong;
                self.pings.take(good, |t0, n| {
                    if win.measured(t0) {
                        counts.record_answers(t.saturating_sub(t0), n);
                    }
                });
                done.answered += good;
                if refill {
                    self.pings.send(&mut self.out, t, good);
                }
            }
            if good == whole {
                // Every request answered, or what is left is less than one answer.
                return Ok(done);
            }
            // Not a PONG: the line parser says what it is.
            match workload::parse_ping_answer(&self.inb[self.in_pos..self.in_len]) {
                Ok(Some((used, out))) => {
                    self.in_pos += used;
                    self.pings.take(1, |t0, _| account(counts, win, t0, t, out));
                    done.answered += 1;
                    done.errors += u64::from(out.error);
                    if refill {
                        self.pings.send(&mut self.out, t, 1);
                    }
                }
                Ok(None) => return Ok(done),
                Err(_) => return Err(()),
            }
        }
    }
}

/// `n` requests went out, due at `t`.
fn note_sent(counts: &mut Counts, win: &Window, t: u64, n: u64) {
    counts.sent_all += n;
    if win.measured(t) {
        counts.issued += n;
    }
}

fn account(counts: &mut Counts, win: &Window, t0: u64, t: u64, out: Outcome) {
    if !win.measured(t0) {
        return;
    }
    counts.completed += 1;
    counts.record(t.saturating_sub(t0));
    if out.error {
        counts.errors += 1;
    }
    counts.refused += u64::from(out.refused);
    counts.hits += out.hits as u64;
    counts.misses += out.misses as u64;
}

/// Marks a connection broken; its requests in flight become unanswered (recorded at their age).
fn kill(cn: &mut Conn, win: &Window, counts: &mut Counts, now: u64) -> usize {
    cn.dead = true;
    counts.conn_errors += 1;
    let n = cn.inflight.len() + cn.pings.len;
    for &(t0, _) in &cn.inflight {
        if win.measured(t0) {
            counts.unanswered += 1;
            counts.record(now.saturating_sub(t0));
        }
    }
    for &(t0, k) in &cn.pings.batches {
        if win.measured(t0) {
            counts.unanswered += k as u64;
            counts.record_n(now.saturating_sub(t0), k as u64);
        }
    }
    cn.inflight.clear();
    cn.pings = PingQueue::default();
    cn.keys.clear();
    let _ = cn.sock.shutdown(std::net::Shutdown::Both);
    n
}

/// UDP ping over kernel sockets: each datagram carries "PING" and a sequence number; the answer
/// must carry "PONG" and the same number. An answer later than --udp-timeout counts as lost.
fn run_udp(c: &Config, plan: &ThreadPlan, shared: &Shared) -> Result<Counts, String> {
    let addr = resolve(&c.server)?;
    let bind: SocketAddr =
        if addr.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
    let mut ep = Epoll::new().map_err(|e| format!("epoll: {e}"))?;
    let mut socks = Vec::new();
    for i in 0..plan.connections {
        let s = UdpSocket::bind(bind).map_err(|e| format!("udp bind: {e}"))?;
        s.connect(addr).map_err(|e| format!("udp connect {addr}: {e}"))?;
        s.set_nonblocking(true).map_err(|e| format!("O_NONBLOCK: {e}"))?;
        ep.ctl(libc::EPOLL_CTL_ADD, s.as_raw_fd(), libc::EPOLLIN as u32, i as u64)
            .map_err(|e| format!("epoll_ctl: {e}"))?;
        socks.push(s);
    }
    let mut pending: Vec<HashMap<u64, u64>> = vec![HashMap::new(); socks.len()];
    let mut counts = Counts::new();
    let closed = plan.rate <= 0.0;
    let interval = if closed { 0.0 } else { 1e9 / plan.rate };
    let timeout = (c.udp_timeout * 1e9) as u64;
    let mut seq: u64 = (plan.index as u64) << 48;
    let mut pkt = vec![b'x'; c.udp_payload];
    pkt[..4].copy_from_slice(b"PING");
    let plen = pkt.len();
    let mut rbuf = vec![0u8; 65_536];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut sent_sched: u64 = 0;
    let mut rr = 0usize;
    let mut last_scan = 0u64;
    let (mut answered_all, mut errors_all, mut last_a, mut last_e) = (0u64, 0u64, 0u64, 0u64);

    let Some(win) = shared.gate.arrive(&shared.abort) else { return Ok(counts) };
    let mut send = |s: &UdpSocket,
                    map: &mut HashMap<u64, u64>,
                    t0: u64,
                    counts: &mut Counts,
                    seq: &mut u64| {
        *seq += 1;
        pkt[4..12].copy_from_slice(&seq.to_le_bytes());
        note_sent(counts, &win, t0, 1);
        match s.send(&pkt) {
            Ok(_) => {
                map.insert(*seq, t0);
            }
            Err(_) => {
                // Not even sent (socket buffer full or no route): lost.
                if win.measured(t0) {
                    counts.unanswered += 1;
                }
            }
        }
    };

    while now_ns() < win.start {
        std::hint::spin_loop();
    }
    counts.went_at = now_ns();
    if closed {
        let t = now_ns();
        for (i, s) in socks.iter().enumerate() {
            for _ in 0..c.pipeline {
                send(s, &mut pending[i], t, &mut counts, &mut seq);
            }
        }
    }
    loop {
        let now = now_ns();
        let abort = shared.abort.load(Ordering::Relaxed);
        let sched_left =
            !closed && !abort && win.start + ((sent_sched as f64 * interval) as u64) < win.end;
        let issuing = (now < win.end || sched_left) && !abort;
        let inflight: usize = pending.iter().map(|m| m.len()).sum();
        if !issuing && (inflight == 0 || now >= win.drain_end || abort) {
            break;
        }
        if issuing && !closed {
            loop {
                let due = win.start + (sent_sched as f64 * interval) as u64;
                if due > now || due >= win.end {
                    break;
                }
                sent_sched += 1;
                let i = rr % socks.len();
                rr += 1;
                if win.measured(due) {
                    counts.record_lag(now - due);
                }
                send(&socks[i], &mut pending[i], due, &mut counts, &mut seq);
            }
        }
        if now >= last_scan + 10_000_000 {
            last_scan = now;
            for (i, map) in pending.iter_mut().enumerate() {
                let before = map.len();
                let mut lost = 0;
                map.retain(|_, &mut t0| {
                    let keep = now.saturating_sub(t0) < timeout;
                    if !keep && win.measured(t0) {
                        lost += 1;
                    }
                    keep
                });
                counts.unanswered += lost;
                errors_all += lost;
                if closed && issuing {
                    for _ in map.len()..before {
                        send(&socks[i], map, now, &mut counts, &mut seq);
                    }
                }
            }
        }
        let deadline = if issuing {
            let next =
                if closed { win.end } else { win.start + (sent_sched as f64 * interval) as u64 };
            next.min(win.end).min(now + 10_000_000)
        } else {
            win.drain_end.min(now + 10_000_000)
        };
        let n = ep
            .wait(&mut events, now, deadline, spin_ns(c, closed))
            .map_err(|e| format!("epoll_wait: {e}"))?;
        for ev in &events[..n] {
            if ev.u64 == TIMER_TOKEN {
                ep.clear_timer();
                continue;
            }
            let i = ev.u64 as usize;
            loop {
                match socks[i].recv(&mut rbuf) {
                    Ok(len) => {
                        let t = now_ns();
                        let ok = len == plen
                            && &rbuf[..4] == b"PONG"
                            && rbuf[12..len].iter().all(|&b| b == b'x');
                        let got = if len >= 12 {
                            u64::from_le_bytes(rbuf[4..12].try_into().unwrap())
                        } else {
                            0
                        };
                        let Some(t0) = pending[i].remove(&got) else {
                            // Late (already counted lost), duplicated or foreign.
                            continue;
                        };
                        answered_all += 1;
                        if counts.first_answer_at == 0 {
                            counts.first_answer_at = t;
                        }
                        if !ok {
                            errors_all += 1;
                        }
                        account(
                            &mut counts,
                            &win,
                            t0,
                            t,
                            Outcome { error: !ok, ..Default::default() },
                        );
                        if closed && t < win.end && !shared.abort.load(Ordering::Relaxed) {
                            send(&socks[i], &mut pending[i], t, &mut counts, &mut seq);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        // ICMP port unreachable and the like: nothing listens.
                        errors_all += 1;
                        counts.conn_errors += 1;
                        break;
                    }
                }
            }
        }
        if answered_all - last_a >= 64 || errors_all != last_e {
            shared.answered.fetch_add(answered_all - last_a, Ordering::Relaxed);
            shared.errors.fetch_add(errors_all - last_e, Ordering::Relaxed);
            last_a = answered_all;
            last_e = errors_all;
        }
    }
    shared.answered.fetch_add(answered_all - last_a, Ordering::Relaxed);
    shared.errors.fetch_add(errors_all - last_e, Ordering::Relaxed);
    counts.answered_all = answered_all;
    for map in &pending {
        counts.unanswered += map.len() as u64;
    }
    Ok(counts)
}

/// Sets per prefill batch: 512, and over TLS no more than one 16 KiB record holds, because
/// memcached 1.6.18 -Z can leave a batch spanning records unanswered until more input comes.
fn prefill_batch(c: &Config) -> u64 {
    if !c.tls {
        return 512;
    }
    let one_set = 40 + c.key_size + c.value_size;
    (12_000 / one_set).clamp(1, 512) as u64
}

/// Stores every key once (closed loop, one connection, batches of `prefill_batch`), so gets hit.
pub fn prefill(c: &Config) -> Result<u64, String> {
    let addr = resolve(&c.server)?;
    let tls = if c.tls { Some(crate::tls::client_config(c)?) } else { None };
    let mut s = crate::tls::connect(c, tls.as_ref(), addr).map_err(|e| format!("prefill: {e}"))?;
    s.tcp().set_read_timeout(Some(std::time::Duration::from_secs(10))).ok();
    let ks = workload::KeySpace::new(c);
    let mut out = Vec::new();
    let mut inb = Vec::new();
    let mut k = 0u64;
    while k < c.keys {
        let batch = (c.keys - k).min(prefill_batch(c));
        out.clear();
        for j in 0..batch {
            workload::encode_set(&ks, k + j, &mut out);
        }
        s.write_all(&out).map_err(|e| format!("prefill: write: {e}"))?;
        let mut stored = 0;
        let mut buf = [0u8; 8192];
        while stored < batch {
            let n = s.read(&mut buf).map_err(|e| format!("prefill: read: {e}"))?;
            if n == 0 {
                return Err("prefill: server closed the connection".into());
            }
            inb.extend_from_slice(&buf[..n]);
            while let Some(p) = inb.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = inb.drain(..p + 2).collect();
                if &line[..p] != b"STORED" {
                    return Err(format!(
                        "prefill: set answered '{}'",
                        String::from_utf8_lossy(&line[..p])
                    ));
                }
                stored += 1;
            }
        }
        k += batch;
    }
    Ok(c.keys)
}
