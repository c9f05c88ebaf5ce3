//! Tests of the generator against small servers written here: a ping responder that can stall,
//! a memcache responder that can lie about values, a UDP ping responder that drops datagrams,
//! and Debian's memcached.

use crate::config::{Config, Protocol};
use crate::run::{self, Report};
use crate::workload::KeySpace;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

fn cfg(protocol: Protocol, addr: SocketAddr) -> Config {
    Config {
        protocol,
        server: addr.to_string(),
        warmup: 0.2,
        duration: 1.0,
        drain: 1.0,
        progress: Some(false),
        ..Config::default()
    }
}

/// A ping server accepting `conns` connections, one thread each. The first request arriving
/// `stall_at` or later after the first request overall makes it sleep once for `stall`.
fn ping_server(conns: usize, stall_at: Duration, stall: Duration) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let first = Arc::new(std::sync::OnceLock::<std::time::Instant>::new());
    let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    thread::spawn(move || {
        for _ in 0..conns {
            let (s, _) = l.accept().unwrap();
            let (first, stalled) = (first.clone(), stalled.clone());
            thread::spawn(move || {
                s.set_nodelay(true).unwrap();
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let t0 = *first.get_or_init(std::time::Instant::now);
                    if t0.elapsed() >= stall_at && !stalled.swap(true, Ordering::SeqCst) {
                        thread::sleep(stall);
                    }
                    let ans: &[u8] = if line == "PING\r\n" { b"PONG\r\n" } else { b"ERROR\r\n" };
                    if w.write_all(ans).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A ping server whose every `error_every`-th answer on a connection is `ERROR`, and which
/// writes its answers in 4-byte pieces, so answers arrive split across reads.
fn ping_server_with_errors(conns: usize, error_every: u64) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for _ in 0..conns {
            let (s, _) = l.accept().unwrap();
            thread::spawn(move || {
                s.set_nodelay(true).unwrap();
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                let mut line = String::new();
                for n in 1u64.. {
                    line.clear();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let ans: &[u8] = if n % error_every == 0 { b"ERROR\r\n" } else { b"PONG\r\n" };
                    for piece in ans.chunks(4) {
                        if w.write_all(piece).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn ping_answers_split_across_reads_and_error_answers_are_counted() {
    let addr = ping_server_with_errors(3, 5);
    let mut c = cfg(Protocol::Ping, addr);
    c.connections = 3;
    c.pipeline = 16;
    c.duration = 0.5;
    let r = run::run_once(&c).unwrap();
    assert!(r.counts.completed > 100, "only {} answers", r.counts.completed);
    assert_eq!(r.counts.completed, r.counts.issued);
    assert_eq!(r.counts.unanswered + r.counts.conn_errors, 0);
    assert_eq!(r.counts.hist.len(), r.counts.completed);
    // Every fifth answer of each connection is an ERROR; the window cuts each connection's
    // sequence at two places, so the share is a fifth give or take a few answers.
    let share = r.counts.errors as f64 / r.counts.completed as f64;
    assert!((share - 0.2).abs() < 0.01, "{} errors in {}", r.counts.errors, r.counts.completed);
}

#[test]
fn closed_loop_ping_answers_everything() {
    let addr = ping_server(4, Duration::MAX, Duration::ZERO);
    let mut c = cfg(Protocol::Ping, addr);
    c.connections = 4;
    c.pipeline = 4;
    c.duration = 0.5;
    let r = run::run_once(&c).unwrap();
    assert!(r.counts.completed > 1000, "only {} answers", r.counts.completed);
    assert_eq!(r.errors_total(), 0);
    assert_eq!(r.counts.completed, r.counts.issued);
    assert_eq!(r.counts.hist.len(), r.counts.completed);
}

#[test]
fn open_loop_keeps_its_schedule_and_a_stall_shows_in_the_tail() {
    // 2000/s for 1 s after 0.2 s warm-up; the server stalls 300 ms about 0.4 s into the window.
    let addr = ping_server(1, Duration::from_millis(600), Duration::from_millis(300));
    let mut c = cfg(Protocol::Ping, addr);
    c.connections = 1;
    c.rate = 2000.0;
    let open = run::run_once(&c).unwrap();
    // The schedule was kept: every request of the window was sent, none was skipped.
    assert!((open.counts.issued as i64 - 2000).abs() <= 1, "issued {}", open.counts.issued);
    assert_eq!(open.counts.completed + open.counts.unanswered, open.counts.issued);
    // ~600 requests fell due during the stall; counted from their intended send time, the
    // slowest waited nearly the whole 300 ms, and they fill well over 1% of the distribution.
    assert!(open.pct(99.0) > 200_000.0, "open-loop p99 {} us hides the stall", open.pct(99.0));
    assert!(open.pct(90.0) > 50_000.0, "open-loop p90 {} us", open.pct(90.0));

    // The same stall seen by a closed loop (one request at a time) is a single slow request:
    // that is the blind spot open loop exists to avoid.
    let addr = ping_server(1, Duration::from_millis(600), Duration::from_millis(300));
    let mut c = cfg(Protocol::Ping, addr);
    c.connections = 1;
    c.pipeline = 1;
    let closed = run::run_once(&c).unwrap();
    assert!(
        closed.counts.hist.max() >= 250_000_000,
        "closed-loop max {}",
        closed.counts.hist.max()
    );
    assert!(
        closed.pct(99.0) * 10.0 < open.pct(99.0),
        "closed p99 {} vs open {}",
        closed.pct(99.0),
        open.pct(99.0)
    );
}

/// A memcache responder for gets and sets that answers with the generator's values, except that
/// every `corrupt_every`-th value comes back with one byte changed (0 = never).
fn fake_memcache(corrupt_every: u64, ks: KeySpace) -> (SocketAddr, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let corrupted = Arc::new(AtomicU64::new(0));
    let cc = corrupted.clone();
    thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        let mut n = 0u64;
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let parts: Vec<&str> = line.trim_end().split(' ').collect();
            let mut out = Vec::new();
            match parts[0] {
                "set" => {
                    let len: usize = parts[4].parse().unwrap();
                    let mut v = vec![0; len + 2];
                    r.read_exact(&mut v).unwrap();
                    out.extend_from_slice(b"STORED\r\n");
                }
                "get" => {
                    for key in &parts[1..] {
                        let idx = ks.parse_key(key.as_bytes()).unwrap();
                        let mut v = Vec::new();
                        ks.write_value(idx, &mut v);
                        n += 1;
                        if corrupt_every > 0 && n % corrupt_every == 0 {
                            v[ks.value_size / 2] ^= 0x20;
                            cc.fetch_add(1, Ordering::SeqCst);
                        }
                        out.extend_from_slice(
                            format!("VALUE {key} {} {}\r\n", KeySpace::flags_for(idx), v.len())
                                .as_bytes(),
                        );
                        out.extend_from_slice(&v);
                        out.extend_from_slice(b"\r\n");
                    }
                    out.extend_from_slice(b"END\r\n");
                }
                _ => out.extend_from_slice(b"ERROR\r\n"),
            }
            if w.write_all(&out).is_err() {
                return;
            }
        }
    });
    (addr, corrupted)
}

fn memcache_cfg(addr: SocketAddr) -> Config {
    let mut c = cfg(Protocol::Memcache, addr);
    c.connections = 1;
    c.pipeline = 8;
    c.keys = 1000;
    c.duration = 0.5;
    c.warmup = 0.0;
    c.get_ratio = 1.0;
    c.prefill = false;
    c
}

#[test]
fn memcache_values_read_back_are_verified() {
    let c = memcache_cfg("127.0.0.1:1".parse().unwrap());
    let (addr, _) = fake_memcache(0, KeySpace::new(&c));
    let r = run::run_once(&Config { server: addr.to_string(), ..c.clone() }).unwrap();
    assert!(r.counts.completed > 100);
    assert_eq!(r.errors_total(), 0);
    assert_eq!(r.counts.hits, r.counts.completed);
    assert_eq!(r.hit_ratio(), Some(1.0));

    // Every 10th value is wrong by one byte: each is an error and none is a hit.
    let (addr, corrupted) = fake_memcache(10, KeySpace::new(&c));
    let r = run::run_once(&Config { server: addr.to_string(), ..c }).unwrap();
    let gets = r.counts.completed;
    assert!(gets > 100);
    let bad = r.counts.errors;
    // The server also corrupts answers outside the measured window (drain), so compare shares.
    assert!(corrupted.load(Ordering::SeqCst) >= bad);
    // Exactly every 10th value is bad, so a window of answers holds a tenth of them, +-1.
    assert!((bad as f64 - gets as f64 / 10.0).abs() <= 1.5, "{bad} errors in {gets} gets");
    assert_eq!(r.counts.hits + bad, gets, "a corrupted value was counted as a hit");
}

/// UDP ping responder that drops every `drop_every`-th datagram.
fn udp_responder(drop_every: u64) -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s.local_addr().unwrap();
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut n = 0u64;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        while let Ok((len, from)) = s.recv_from(&mut buf) {
            n += 1;
            if drop_every > 0 && n % drop_every == 0 {
                continue;
            }
            if buf[..len].starts_with(b"PING") {
                buf[..4].copy_from_slice(b"PONG");
            }
            let _ = s.send_to(&buf[..len], from);
        }
    });
    addr
}

#[test]
fn udp_ping_counts_answers_and_losses() {
    let addr = udp_responder(50);
    let mut c = cfg(Protocol::Udp, addr);
    c.connections = 2;
    c.pipeline = 4;
    c.duration = 0.5;
    c.udp_timeout = 0.2;
    let r: Report = run::run_once(&c).unwrap();
    assert!(r.counts.completed > 1000, "{} answers", r.counts.completed);
    assert_eq!(r.counts.errors, 0);
    let lost_share = r.counts.unanswered as f64 / r.counts.issued as f64;
    assert!((0.01..0.035).contains(&lost_share), "lost {lost_share}");
}

/// Debian's memcached on a free port, killed on drop.
struct Memcached(std::process::Child, SocketAddr);

impl Memcached {
    fn start() -> Memcached {
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let child = std::process::Command::new("memcached")
                .args(["-t", "1", "-U", "0", "-l", "127.0.0.1", "-m", "64", "-u", "nobody"])
                .args(["-p", &port.to_string()])
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("memcached is installed by make deps (DEB_PACKAGES)");
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let mut m = Memcached(child, addr);
            for _ in 0..100 {
                if TcpStream::connect(addr).is_ok() {
                    return m;
                }
                if m.0.try_wait().unwrap().is_some() {
                    break; // port taken meanwhile: try another
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = m.0.kill();
        }
        panic!("memcached did not start");
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn memcached_prefilled_gives_full_hits_and_verified_values() {
    let m = Memcached::start();
    let mut c = cfg(Protocol::Memcache, m.1);
    c.keys = 5000;
    c.duration = 0.5;
    c.multiget = 3;
    c.popularity = crate::config::Popularity::Zipf(0.99);
    c.server_pid = Some(m.0.id());
    crate::client::prefill(&c).unwrap();
    let r = run::run_once(&c).unwrap();
    assert!(r.counts.completed > 1000);
    assert_eq!(r.errors_total(), 0);
    assert_eq!(r.hit_ratio(), Some(1.0));
    assert!(r.server_cpu_pct.unwrap() > 1.0);
}

/// A listener with an accept queue of one that accepts nothing for `delay`, then answers pings:
/// the kernel drops the SYNs of further connections meanwhile, so connecting takes a SYN
/// retransmission (about 1 s), as a starved machine once made it take.
fn slow_accepting_ping_server(delay: Duration) -> SocketAddr {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor created and owned here; results are checked,
    // and the descriptor is handed to TcpListener (which closes it) only once it listens.
    let l = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes([127, 0, 0, 1]) },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(libc::bind(fd, (&sa as *const libc::sockaddr_in).cast(), len), 0);
        assert_eq!(libc::listen(fd, 0), 0);
        TcpListener::from_raw_fd(fd)
    };
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        thread::sleep(delay);
        for s in l.incoming() {
            let Ok(s) = s else { return };
            thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                let mut line = String::new();
                while r.read_line(&mut line).unwrap_or(0) > 0 {
                    if w.write_all(b"PONG\r\n").is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
    addr
}

#[test]
fn the_window_starts_once_every_connection_is_up() {
    // Connecting takes about a second, longer than warm-up and window together: a start fixed
    // before the threads connected was over by then and the run measured nothing.
    let addr = slow_accepting_ping_server(Duration::from_millis(300));
    let mut c = cfg(Protocol::Ping, addr);
    c.connections = 4;
    c.pipeline = 2;
    c.warmup = 0.1;
    c.duration = 0.3;
    let r = run::run_once(&c).unwrap();
    assert!(
        r.counts.completed > 0 && r.counts.issued > 0,
        "{:?}",
        (r.counts.completed, r.counts.issued)
    );
    assert!(r.starved_attempts.is_empty(), "{:?}", r.starved_attempts);
    assert_eq!(r.errors_total(), 0);
}

#[test]
fn a_server_that_never_answers_fails_at_once_and_is_not_called_starved() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            thread::spawn(move || {
                let mut b = [0u8; 4096];
                while matches!(s.read(&mut b), Ok(n) if n > 0) {}
            });
        }
    });
    let mut c = cfg(Protocol::Ping, addr);
    c.warmup = 0.1;
    c.duration = 0.2;
    c.drain = 0.2;
    let e = run::run_once(&c).err().expect("a silent server must fail the run");
    assert!(e.contains("no answer at all") && !e.contains(run::STARVED), "{e}");
    assert!(!e.contains("times before"), "retried: {e}");
}

#[test]
fn a_run_with_nothing_in_its_window_says_why() {
    use crate::client::Window;
    use crate::stats::Counts;
    let ms = 1_000_000u64;
    let win =
        Window { start: 1000 * ms, warm_end: 1100 * ms, end: 1600 * ms, drain_end: 2600 * ms };
    let mut t = Counts::new();
    assert!(run::no_answer_reason(&t, &win).starts_with("no request was sent"));
    // The generator got going only after the window (the case seen on the loaded VM).
    t.sent_all = 128;
    t.answered_all = 128;
    t.went_at = 1643 * ms;
    t.first_answer_at = 1650 * ms;
    let why = run::no_answer_reason(&t, &win);
    assert!(why.starts_with(run::STARVED) && why.contains("643 ms"), "{why}");
    // Requests went out in time, the first answer came after the window.
    t.went_at = 1001 * ms;
    t.first_answer_at = 1700 * ms;
    let why = run::no_answer_reason(&t, &win);
    assert!(why.starts_with(run::STARVED) && why.contains("700 ms"), "{why}");
    // No answer at all: the server's failure, not the machine's.
    t.first_answer_at = 0;
    t.answered_all = 0;
    let why = run::no_answer_reason(&t, &win);
    assert!(why.starts_with("no answer at all") && !why.contains(run::STARVED), "{why}");
}
