//! Behaviour of the I/O engine through its Rust API, on both backends: the ping protocol's
//! framing cases, half-close, resets, many connections, buffer-ring exhaustion, ordered
//! output under short sends, back-pressure, limits, stale handles, posts, timers and a stop
//! that leaves nothing behind.

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod engine_util;

use engine_util::{backends, count_fds, serial, wait_until};
use p99::engine::{Backend, Config, ConnId, Engine, Handler, Worker};
use p99::proto::ping::{PingParser, Verdict};

#[derive(Default)]
struct Counters {
    accepted: AtomicUsize,
    closed: AtomicUsize,
    send_done_ok: AtomicUsize,
    send_done_dropped: AtomicUsize,
    max_queued: AtomicUsize,
}

/// The ping server, counting accepts and closes, and remembering every handle it closed.
struct Ping {
    parsers: Vec<PingParser>,
    out: Vec<u8>,
    counters: Arc<Counters>,
    closed_ids: Arc<Mutex<Vec<ConnId>>>,
}

impl Ping {
    fn factory(
        counters: Arc<Counters>,
        closed: Arc<Mutex<Vec<ConnId>>>,
    ) -> impl Fn(usize) -> Ping + Send + Sync + 'static {
        move |_| Ping {
            parsers: Vec::new(),
            out: Vec::new(),
            counters: Arc::clone(&counters),
            closed_ids: Arc::clone(&closed),
        }
    }
}

impl Handler for Ping {
    fn on_accept(&mut self, _w: &mut Worker, conn: ConnId) -> bool {
        self.counters.accepted.fetch_add(1, Ordering::SeqCst);
        let slot = conn.slot() as usize;
        if self.parsers.len() <= slot {
            self.parsers.resize_with(slot + 1, PingParser::new);
        }
        self.parsers[slot] = PingParser::new();
        true
    }
    fn on_data(&mut self, w: &mut Worker, conn: ConnId, data: &[u8]) {
        self.out.clear();
        let v = self.parsers[conn.slot() as usize].feed(data, &mut self.out);
        if !self.out.is_empty() {
            w.send(conn, &self.out).unwrap();
        }
        if v == Verdict::Close {
            w.close(conn).unwrap();
        }
    }
    fn on_close(&mut self, w: &mut Worker, conn: ConnId) {
        self.counters.closed.fetch_add(1, Ordering::SeqCst);
        self.closed_ids.lock().unwrap().push(conn);
        // The handle is stale from now on, even inside this callback's aftermath.
        assert!(w.send(conn, b"x").is_err());
    }
}

fn config(backend: Backend) -> Config {
    Config { backend: Some(backend), workers: 2, pin_workers: false, ..Config::default() }
}

fn start_ping(cfg: Config) -> (Engine, Arc<Counters>, Arc<Mutex<Vec<ConnId>>>) {
    let counters = Arc::new(Counters::default());
    let closed = Arc::new(Mutex::new(Vec::new()));
    let e = Engine::start(cfg, Ping::factory(Arc::clone(&counters), Arc::clone(&closed)))
        .expect("engine start");
    (e, counters, closed)
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

fn read_exact_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).expect("reply");
    buf
}

/// Reads until the server closes; returns everything read.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut v = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return v,
            Ok(n) => v.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return v,
            Err(e) => panic!("read: {e}"),
        }
    }
}

#[test]
fn pipelined_and_split_requests_get_ordered_replies() {
    let _g = serial();
    for b in backends() {
        let (e, c, _) = start_ping(config(b));
        let mut s = connect(e.port());
        // Pipelined: 100 requests in one write.
        s.write_all(&b"PING\r\n".repeat(100)).unwrap();
        assert_eq!(read_exact_n(&mut s, 600), b"PONG\r\n".repeat(100), "{b:?}");
        // Split at every byte, with mixed lines.
        let stream = b"ping\r\nhello\r\nPiNg\r\n\r\nPING\n";
        for &byte in stream.iter() {
            s.write_all(&[byte]).unwrap();
            std::thread::sleep(Duration::from_micros(200));
        }
        let want = b"PONG\r\nERROR\r\nPONG\r\nERROR\r\nERROR\r\n";
        assert_eq!(read_exact_n(&mut s, want.len()), want, "{b:?}");
        drop(s);
        wait_until("close", || c.closed.load(Ordering::SeqCst) == 1);
        drop(e);
        assert_eq!(c.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(c.closed.load(Ordering::SeqCst), 1);
    }
}

#[test]
fn line_over_one_kib_closes_after_earlier_replies() {
    let _g = serial();
    for b in backends() {
        let (e, c, _) = start_ping(config(b));
        let mut s = connect(e.port());
        s.write_all(b"PING\r\n").unwrap();
        s.write_all(&vec![b'a'; 1025]).unwrap();
        assert_eq!(read_to_close(&mut s), b"PONG\r\n", "{b:?}");
        // Exactly 1024 bytes before the newline is still a line (answered ERROR).
        let mut s = connect(e.port());
        let mut line = vec![b'a'; 1024];
        line.push(b'\n');
        s.write_all(&line[..700]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        s.write_all(&line[700..]).unwrap();
        s.write_all(b"PING\r\n").unwrap();
        assert_eq!(read_exact_n(&mut s, 13), b"ERROR\r\nPONG\r\n", "{b:?}");
        drop(s);
        wait_until("closes", || c.closed.load(Ordering::SeqCst) == 2);
    }
}

#[test]
fn half_close_gets_all_replies_then_close() {
    let _g = serial();
    for b in backends() {
        let (e, c, _) = start_ping(config(b));
        let mut s = connect(e.port());
        s.write_all(&b"PING\r\n".repeat(50)).unwrap();
        s.write_all(b"PIN").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        // The unfinished "PIN" gets no reply; everything before it does, then EOF.
        assert_eq!(read_to_close(&mut s), b"PONG\r\n".repeat(50), "{b:?}");
        wait_until("close", || c.closed.load(Ordering::SeqCst) == 1);
    }
}

/// Sends lots of requests without reading, then resets the connection (SO_LINGER 0) while
/// the server is still sending; another client keeps being served.
#[test]
fn peer_reset_mid_send_closes_once_and_others_continue() {
    let _g = serial();
    for b in backends() {
        let (e, c, _) = start_ping(config(b));
        let mut bystander = connect(e.port());
        for _ in 0..5 {
            let s = connect(e.port());
            let mut w = s.try_clone().unwrap();
            w.set_write_timeout(Some(Duration::from_millis(300))).unwrap();
            let chunk = b"PING\r\n".repeat(10_000);
            for _ in 0..20 {
                if w.write_all(&chunk).is_err() {
                    break;
                }
            }
            let lg = libc::linger { l_onoff: 1, l_linger: 0 };
            // SAFETY: setsockopt on a live socket with a live linger struct.
            unsafe {
                use std::os::fd::AsRawFd;
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&lg as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as u32,
                );
            }
            drop(w);
            drop(s);
        }
        bystander.write_all(b"PING\r\n").unwrap();
        assert_eq!(read_exact_n(&mut bystander, 6), b"PONG\r\n");
        wait_until("closes", || c.closed.load(Ordering::SeqCst) == 5);
        drop(bystander);
        wait_until("closes", || c.closed.load(Ordering::SeqCst) == 6);
        drop(e);
        assert_eq!(c.accepted.load(Ordering::SeqCst), 6, "{b:?}");
        assert_eq!(c.closed.load(Ordering::SeqCst), 6, "{b:?}");
    }
}

fn raise_nofile(want: u64) {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: get/setrlimit with a live struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        if r.rlim_cur < want {
            r.rlim_cur = want.min(r.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

#[test]
fn more_than_a_thousand_concurrent_connections() {
    let _g = serial();
    raise_nofile(8192);
    const N: usize = 1200;
    for b in backends() {
        let (e, c, _) = start_ping(config(b));
        let mut conns: Vec<TcpStream> = (0..N).map(|_| connect(e.port())).collect();
        for s in conns.iter_mut() {
            s.write_all(b"PING\r\n").unwrap();
        }
        for s in conns.iter_mut() {
            assert_eq!(read_exact_n(s, 6), b"PONG\r\n");
        }
        let open: u64 = (0..e.workers()).map(|i| e.stats(i).unwrap().open).sum();
        assert_eq!(open as usize, N, "{b:?}");
        drop(conns);
        wait_until("all closed", || c.closed.load(Ordering::SeqCst) == N);
        assert_eq!(c.accepted.load(Ordering::SeqCst), N);
    }
}

#[test]
fn tiny_buffer_ring_recovers_from_enobufs() {
    let _g = serial();
    if p99::engine::probe::uring_usable().is_err() {
        eprintln!("io_uring unusable: nothing to test");
        return;
    }
    let cfg = Config { rx_buf_count: 2, rx_buf_size: 64, workers: 1, ..config(Backend::Uring) };
    let (e, _c, _) = start_ping(cfg);
    let mut conns: Vec<TcpStream> = (0..64).map(|_| connect(e.port())).collect();
    for round in 0..5 {
        // Everyone writes at once, more than two 64-byte buffers can take.
        for s in conns.iter_mut() {
            s.write_all(&b"PING\r\n".repeat(40)).unwrap();
        }
        for s in conns.iter_mut() {
            assert_eq!(read_exact_n(s, 240), b"PONG\r\n".repeat(40), "round {round}");
        }
    }
    let st = e.stats(0).unwrap();
    assert!(st.bufring_empty > 0, "the ring never ran empty: {st:?}");
    assert_eq!(st.open, 64);
}

/// A handler that answers "GO n\n" with n numbered records, half copied and half as borrowed
/// iovecs, in many small sends; the client reads slowly through a tiny receive buffer, so the
/// kernel takes the output in short pieces.
struct Streamer {
    counters: Arc<Counters>,
    records: Vec<Box<[u8]>>,
}

impl Handler for Streamer {
    fn on_data(&mut self, w: &mut Worker, conn: ConnId, data: &[u8]) {
        let text = std::str::from_utf8(data).unwrap();
        let n: usize = text.trim().strip_prefix("GO ").unwrap().parse().unwrap();
        for i in 0..n {
            let rec = format!("{i:08}:{}\n", "x".repeat(i % 200));
            if i % 2 == 0 {
                w.send(conn, rec.as_bytes()).unwrap();
            } else {
                let boxed: Box<[u8]> = rec.into_bytes().into_boxed_slice();
                let iov = [
                    libc::iovec { iov_base: boxed.as_ptr() as *mut _, iov_len: 5 },
                    libc::iovec {
                        iov_base: boxed[5..].as_ptr() as *mut _,
                        iov_len: boxed.len() - 5,
                    },
                ];
                // SAFETY: the box is kept in `records` until the test ends.
                unsafe { w.send_borrowed(conn, &iov, i as u64).unwrap() };
                self.records.push(boxed);
            }
            let q = w.queued_bytes(conn).unwrap();
            self.counters.max_queued.fetch_max(q, Ordering::SeqCst);
        }
    }
    fn on_send_done(&mut self, _w: &mut Worker, _conn: ConnId, _cookie: u64, sent: bool) {
        if sent {
            self.counters.send_done_ok.fetch_add(1, Ordering::SeqCst);
        } else {
            self.counters.send_done_dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
    fn on_close(&mut self, _w: &mut Worker, _conn: ConnId) {
        self.counters.closed.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn output_stays_ordered_under_short_sends() {
    let _g = serial();
    const N: usize = 20_000;
    for b in backends() {
        let counters = Arc::new(Counters::default());
        let c2 = Arc::clone(&counters);
        let cfg = Config { workers: 1, out_high_water: 64 << 20, ..config(b) };
        let e = Engine::start(cfg, move |_| Streamer {
            counters: Arc::clone(&c2),
            records: Vec::new(),
        })
        .unwrap();
        let s = socket_with_small_rcvbuf(e.port());
        let mut s = s;
        s.write_all(format!("GO {N}\n").as_bytes()).unwrap();
        let mut expect = Vec::new();
        for i in 0..N {
            expect.extend_from_slice(format!("{i:08}:{}\n", "x".repeat(i % 200)).as_bytes());
        }
        let mut got = vec![0u8; expect.len()];
        let mut off = 0;
        while off < got.len() {
            let n = s.read(&mut got[off..(off + 1500).min(expect.len())]).unwrap();
            assert!(n > 0);
            off += n;
            if off % 7 == 0 {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        assert!(got == expect, "{b:?}: output reordered or corrupted");
        wait_until("send-done", || counters.send_done_ok.load(Ordering::SeqCst) == N / 2);
        drop(s);
        wait_until("close", || counters.closed.load(Ordering::SeqCst) == 1);
        assert_eq!(counters.send_done_dropped.load(Ordering::SeqCst), 0);
    }
}

fn socket_with_small_rcvbuf(port: u16) -> TcpStream {
    use std::os::fd::FromRawFd;
    // SAFETY: a fresh socket; its receive buffer is shrunk before connect so the window stays
    // small, then it is handed to TcpStream which owns it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        let small: libc::c_int = 4096;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&small as *const libc::c_int).cast(),
            4,
        );
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes([127, 0, 0, 1]) },
            sin_zero: [0; 8],
        };
        assert_eq!(
            libc::connect(
                fd,
                (&sin as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32
            ),
            0
        );
        let s = TcpStream::from_raw_fd(fd);
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }
}

/// A client that never reads: its output queue stops growing at the high-water mark because
/// the engine stops receiving from it.
struct Flood {
    counters: Arc<Counters>,
}

impl Handler for Flood {
    fn on_data(&mut self, w: &mut Worker, conn: ConnId, _data: &[u8]) {
        w.send(conn, &[b'z'; 16384]).unwrap();
        let q = w.queued_bytes(conn).unwrap();
        self.counters.max_queued.fetch_max(q, Ordering::SeqCst);
    }
    fn on_close(&mut self, _w: &mut Worker, _conn: ConnId) {
        self.counters.closed.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn reader_that_never_reads_is_paused_at_the_high_water_mark() {
    let _g = serial();
    const HWM: usize = 256 * 1024;
    for b in backends() {
        let counters = Arc::new(Counters::default());
        let c2 = Arc::clone(&counters);
        let cfg = Config { workers: 1, out_high_water: HWM, rx_buf_size: 512, ..config(b) };
        let e = Engine::start(cfg, move |_| Flood { counters: Arc::clone(&c2) }).unwrap();
        let mut s = connect(e.port());
        s.set_nonblocking(true).unwrap();
        let chunk = [b'r'; 512];
        let mut written = 0usize;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut blocked_since: Option<Instant> = None;
        // Write until the server has stopped reading for a while (our writes block).
        while Instant::now() < deadline {
            match s.write(&chunk) {
                Ok(n) => {
                    written += n;
                    blocked_since = None;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    let since = *blocked_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_millis(300) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("write: {e}"),
            }
        }
        assert!(blocked_since.is_some(), "{b:?}: the server kept reading {written} bytes");
        let max = counters.max_queued.load(Ordering::SeqCst);
        // One stash of already-received input may be answered after the pause (at most the
        // bytes in flight then), so allow a margin but nowhere near the unbounded case.
        assert!(max <= HWM + 64 * 16384, "{b:?}: queued {max} bytes");
        let st = e.stats(0).unwrap();
        assert!((st.bytes_in as usize) < written, "{b:?}: server read everything ({written})");
        drop(s);
        wait_until("close", || counters.closed.load(Ordering::SeqCst) == 1);
    }
}

#[test]
fn connection_limit_per_worker_refuses_extra_connections() {
    let _g = serial();
    for b in backends() {
        let cfg = Config { workers: 1, max_conns_per_worker: 2, ..config(b) };
        let (e, c, _) = start_ping(cfg);
        let mut a = connect(e.port());
        let mut bb = connect(e.port());
        for s in [&mut a, &mut bb] {
            s.write_all(b"PING\r\n").unwrap();
            assert_eq!(read_exact_n(s, 6), b"PONG\r\n");
        }
        let mut third = connect(e.port());
        let _ = third.write_all(b"PING\r\n");
        assert_eq!(read_to_close(&mut third), b"", "{b:?}");
        wait_until("reject counted", || e.stats(0).unwrap().rejected == 1);
        assert_eq!(c.accepted.load(Ordering::SeqCst), 2);
    }
}

/// `max_conns` is one limit for the whole engine: with four workers and a limit of L, every
/// one of L connections is served however SO_REUSEPORT spreads them (a limit split per
/// worker refuses some of them when the spread is uneven), the next ones are closed without
/// a reply, and a freed place is taken by the next client.
#[test]
fn connection_limit_is_engine_wide_across_workers() {
    let _g = serial();
    const L: usize = 24;
    for b in backends() {
        let cfg = Config { workers: 4, max_conns: L, ..config(b) };
        let (e, c, _) = start_ping(cfg);
        let mut served: Vec<TcpStream> = (0..L).map(|_| connect(e.port())).collect();
        for s in served.iter_mut() {
            s.write_all(b"PING\r\n").unwrap();
            assert_eq!(
                read_exact_n(s, 6),
                b"PONG\r\n",
                "{b:?}: a connection below the limit was not served"
            );
        }
        let per_worker: Vec<u64> = (0..4).map(|i| e.stats(i).unwrap().open).collect();
        assert_eq!(per_worker.iter().sum::<u64>(), L as u64, "{b:?}: {per_worker:?}");
        let rejected = |e: &Engine| (0..4).map(|i| e.stats(i).unwrap().rejected).sum::<u64>();
        for k in 1..=3u64 {
            let mut extra = connect(e.port());
            let _ = extra.write_all(b"PING\r\n");
            assert_eq!(
                read_to_close(&mut extra),
                b"",
                "{b:?}: connection {} beyond the limit was served",
                L as u64 + k
            );
            wait_until("reject counted", || rejected(&e) == k);
        }
        assert_eq!(c.accepted.load(Ordering::SeqCst), L, "{b:?}");
        // One place frees up: the next client is served.
        drop(served.pop());
        wait_until("close", || c.closed.load(Ordering::SeqCst) == 1);
        let mut next = connect(e.port());
        next.write_all(b"PING\r\n").unwrap();
        assert_eq!(read_exact_n(&mut next, 6), b"PONG\r\n", "{b:?}: a freed place was not reused");
        for s in served.iter_mut() {
            s.write_all(b"PING\r\n").unwrap();
            assert_eq!(read_exact_n(s, 6), b"PONG\r\n", "{b:?}");
        }
        assert_eq!(rejected(&e), 3, "{b:?}");
    }
}

/// A stale handle never reaches the connection that reused its slot.
#[test]
fn stale_handle_is_refused_after_slot_reuse() {
    let _g = serial();
    for b in backends() {
        let (e, c, closed) = start_ping(Config { workers: 1, ..config(b) });
        let mut s = connect(e.port());
        s.write_all(b"PING\r\n").unwrap();
        read_exact_n(&mut s, 6);
        drop(s);
        wait_until("close", || c.closed.load(Ordering::SeqCst) == 1);
        let old = closed.lock().unwrap()[0];
        let mut s2 = connect(e.port());
        s2.write_all(b"PING\r\n").unwrap();
        read_exact_n(&mut s2, 6);
        let (tx, rx) = std::sync::mpsc::channel();
        e.post(
            0,
            Box::new(move |w: &mut Worker| {
                let r = w.send(old, b"LEAK\r\n").map_err(|e| e.to_string());
                tx.send(r).unwrap();
            }),
        )
        .unwrap();
        let r = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(r, Err("stale connection handle".to_string()), "{b:?}");
        s2.write_all(b"PING\r\n").unwrap();
        assert_eq!(read_exact_n(&mut s2, 6), b"PONG\r\n", "{b:?}: no stray bytes");
    }
}

#[test]
fn posted_work_and_timers_run_on_the_worker() {
    let _g = serial();
    for b in backends() {
        let (e, _c, _) = start_ping(config(b));
        let fired = Arc::new(AtomicU64::new(0));
        for i in 0..e.workers() {
            let f = Arc::clone(&fired);
            e.post(
                i,
                Box::new(move |w: &mut Worker| {
                    assert_eq!(w.index(), i);
                    let f2 = Arc::clone(&f);
                    w.add_timer(
                        Duration::from_millis(20),
                        Box::new(move |_w: &mut Worker| {
                            f2.fetch_add(1, Ordering::SeqCst);
                        }),
                    );
                    let cancelled = w.add_timer(
                        Duration::from_millis(10),
                        Box::new(|_w: &mut Worker| panic!("cancelled timer ran")),
                    );
                    assert!(w.cancel_timer(cancelled));
                }),
            )
            .unwrap();
        }
        wait_until("timers", || fired.load(Ordering::SeqCst) == e.workers() as u64);
        std::thread::sleep(Duration::from_millis(30));
        e.stop(Duration::ZERO).unwrap();
        assert!(e.post(0, Box::new(|_w: &mut Worker| {})).is_err(), "post after stop must fail");
    }
}

#[test]
fn stop_with_open_connections_leaves_no_fd_and_closes_each_once() {
    let _g = serial();
    for b in backends() {
        let before = count_fds();
        let (e, c, closed) = start_ping(config(b));
        let mut conns: Vec<TcpStream> = (0..50).map(|_| connect(e.port())).collect();
        for s in conns.iter_mut() {
            s.write_all(b"PING\r\n").unwrap();
            read_exact_n(s, 6);
        }
        // Some connections also have a partial request pending.
        for s in conns.iter_mut().take(10) {
            s.write_all(b"PI").unwrap();
        }
        let t = Instant::now();
        e.stop(Duration::from_millis(200)).unwrap();
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(c.closed.load(Ordering::SeqCst), 50, "{b:?}");
        let ids: HashSet<ConnId> = closed.lock().unwrap().iter().copied().collect();
        assert_eq!(ids.len(), 50, "{b:?}: a connection was closed twice");
        for s in conns.iter_mut() {
            assert_eq!(read_to_close(s), b"");
        }
        drop(conns);
        drop(e);
        assert_eq!(count_fds(), before, "{b:?}: fd leak");
    }
}

#[test]
fn bad_config_is_refused_with_its_reason() {
    let _g = serial();
    let cfg = Config { rx_buf_count: 3, ..config(Backend::Epoll) };
    let err =
        Engine::start(cfg, |_| Flood { counters: Arc::new(Counters::default()) }).err().unwrap();
    assert!(err.to_string().contains("rx_buf_count"), "{err}");
    // A port in use by a listener without SO_REUSEPORT cannot be joined.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let cfg = Config { port, ..config(Backend::Epoll) };
    assert!(Engine::start(cfg, |_| Flood { counters: Arc::new(Counters::default()) }).is_err());
}

/// A peer that never reads, with a send parked on its full window: stop still finishes after
/// the drain time, closing it once.
#[test]
fn stop_cuts_a_peer_that_never_reads() {
    let _g = serial();
    for b in backends() {
        let before = count_fds();
        let counters = Arc::new(Counters::default());
        let c2 = Arc::clone(&counters);
        let cfg = Config { workers: 1, rx_buf_size: 512, ..config(b) };
        let e = Engine::start(cfg, move |_| Flood { counters: Arc::clone(&c2) }).unwrap();
        let mut s = connect(e.port());
        s.set_nonblocking(true).unwrap();
        // Enough requests that the answers overflow both socket buffers.
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && counters.max_queued.load(Ordering::SeqCst) < 512 * 1024 {
            let _ = s.write(&[b'r'; 512]);
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            counters.max_queued.load(Ordering::SeqCst) >= 512 * 1024,
            "{b:?}: output never backed up"
        );
        let t = Instant::now();
        e.stop(Duration::from_millis(100)).unwrap();
        assert!(t.elapsed() < Duration::from_secs(5), "{b:?}: stop took {:?}", t.elapsed());
        assert_eq!(counters.closed.load(Ordering::SeqCst), 1);
        drop(s);
        drop(e);
        assert_eq!(count_fds(), before, "{b:?}: fd leak");
    }
}

/// Sends a large borrowed buffer for every request, and panics on "BOOM".
struct Panicky {
    counters: Arc<Counters>,
    closed: Arc<Mutex<Vec<ConnId>>>,
    big: &'static [u8],
}

impl Handler for Panicky {
    fn on_accept(&mut self, _w: &mut Worker, _conn: ConnId) -> bool {
        self.counters.accepted.fetch_add(1, Ordering::SeqCst);
        true
    }
    fn on_data(&mut self, w: &mut Worker, conn: ConnId, data: &[u8]) {
        if data.starts_with(b"BOOM") {
            panic!("handler panic on purpose (test)");
        }
        let iov = [libc::iovec {
            iov_base: self.big.as_ptr() as *mut libc::c_void,
            iov_len: self.big.len(),
        }];
        // SAFETY: the buffer is 'static and never written.
        unsafe { w.send_borrowed(conn, &iov, conn.to_raw()) }.unwrap();
    }
    fn on_send_done(&mut self, _w: &mut Worker, _conn: ConnId, _cookie: u64, sent: bool) {
        let c = if sent { &self.counters.send_done_ok } else { &self.counters.send_done_dropped };
        c.fetch_add(1, Ordering::SeqCst);
    }
    fn on_close(&mut self, _w: &mut Worker, conn: ConnId) {
        self.counters.closed.fetch_add(1, Ordering::SeqCst);
        self.closed.lock().unwrap().push(conn);
    }
}

/// A handler that panics ends its worker, but every connection of that worker is still
/// finalised: each borrowed send gets `on_send_done(sent=false)`, each connection `on_close`
/// exactly once, and every fd is closed.
#[test]
fn handler_panic_still_finalises_every_connection() {
    let _g = serial();
    let big: &'static [u8] = Box::leak(vec![b'b'; 4 << 20].into_boxed_slice());
    for b in backends() {
        let before = count_fds();
        let counters = Arc::new(Counters::default());
        let closed = Arc::new(Mutex::new(Vec::new()));
        let (c2, cl2) = (Arc::clone(&counters), Arc::clone(&closed));
        let cfg = Config { workers: 1, ..config(b) };
        let e = Engine::start(cfg, move |_| Panicky {
            counters: Arc::clone(&c2),
            closed: Arc::clone(&cl2),
            big,
        })
        .unwrap();
        // Clients that never read: each has a 4 MiB borrowed send stuck in its queue.
        let mut conns: Vec<TcpStream> =
            (0..8).map(|_| socket_with_small_rcvbuf(e.port())).collect();
        for s in conns.iter_mut() {
            s.write_all(b"go").unwrap();
        }
        wait_until("queued sends", || e.stats(0).unwrap().bytes_in >= 16);
        std::thread::sleep(Duration::from_millis(50));
        let mut boom = connect(e.port());
        boom.write_all(b"BOOM").unwrap();
        wait_until("every connection closed", || counters.closed.load(Ordering::SeqCst) == 9);
        assert_eq!(counters.accepted.load(Ordering::SeqCst), 9, "{b:?}");
        let ids: HashSet<ConnId> = closed.lock().unwrap().iter().copied().collect();
        assert_eq!(ids.len(), 9, "{b:?}: a connection was closed twice");
        assert_eq!(
            counters.send_done_dropped.load(Ordering::SeqCst),
            8,
            "{b:?}: borrowed sends not handed back"
        );
        assert_eq!(counters.send_done_ok.load(Ordering::SeqCst), 0, "{b:?}");
        assert_eq!(read_to_close(&mut boom), b"", "{b:?}");
        drop(conns);
        drop(boom);
        drop(e);
        assert_eq!(count_fds(), before, "{b:?}: fd leak");
        assert_eq!(
            counters.closed.load(Ordering::SeqCst),
            9,
            "{b:?}: on_close after the panic was handled"
        );
    }
}

/// Every worker's stop takes a while, so a stop that returns early is visible.
struct SlowStop {
    stopped: Arc<AtomicUsize>,
}

impl Handler for SlowStop {
    fn on_data(&mut self, _w: &mut Worker, _conn: ConnId, _data: &[u8]) {}
    fn on_worker_stop(&mut self, _w: &mut Worker) {
        std::thread::sleep(Duration::from_millis(300));
        self.stopped.fetch_add(1, Ordering::SeqCst);
    }
}

/// Several threads stopping the engine at once: each returns only after the stop finished.
#[test]
fn concurrent_stops_all_wait_for_completion() {
    let _g = serial();
    for b in backends() {
        let stopped = Arc::new(AtomicUsize::new(0));
        let s2 = Arc::clone(&stopped);
        let e = Engine::start(config(b), move |_| SlowStop { stopped: Arc::clone(&s2) }).unwrap();
        let workers = e.workers();
        let seen: Vec<usize> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..3)
                .map(|_| {
                    sc.spawn(|| {
                        e.stop(Duration::from_millis(10)).unwrap();
                        stopped.load(Ordering::SeqCst)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for n in seen {
            assert_eq!(n, workers, "{b:?}: a stop returned before the workers had stopped");
        }
    }
}
