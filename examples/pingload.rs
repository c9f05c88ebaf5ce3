//! pingload: a small, bounded closed-loop load tool for the ping servers (used for the engine
//! figures until the full load generator is available). One thread, one epoll loop, `-c`
//! connections, each keeping `-d` pipelined PINGs in flight; runs `-s` seconds after a short
//! warm-up and prints requests/s and per-request latency percentiles (time from sending a
//! batch to receiving its last reply).
//!
//! usage: pingload -p PORT [-h HOST] [-c CONNS] [-d DEPTH] [-s SECONDS]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

struct Conn {
    s: TcpStream,
    outstanding: usize,
    got: usize,
    sent_at: Instant,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut host = "127.0.0.1".to_string();
    let (mut port, mut conns, mut depth, mut secs) = (0u16, 1usize, 1usize, 5.0f64);
    let mut i = 0;
    while i + 1 < args.len() {
        let v = &args[i + 1];
        match args[i].as_str() {
            "-h" => host = v.clone(),
            "-p" => port = v.parse().expect("port"),
            "-c" => conns = v.parse().expect("conns"),
            "-d" => depth = v.parse().expect("depth"),
            "-s" => secs = v.parse().expect("seconds"),
            _ => panic!("unknown flag {}", args[i]),
        }
        i += 2;
    }
    assert!(port != 0, "usage: pingload -p PORT [-h HOST] [-c CONNS] [-d DEPTH] [-s SECONDS]");
    let batch: Vec<u8> = b"PING\r\n".repeat(depth);
    // SAFETY: plain epoll_create1.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    let mut cs: Vec<Conn> = Vec::with_capacity(conns);
    for idx in 0..conns {
        let s = TcpStream::connect((host.as_str(), port)).expect("connect");
        s.set_nodelay(true).unwrap();
        s.set_nonblocking(true).unwrap();
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: idx as u64 };
        // SAFETY: registers a live socket with a live event struct.
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) };
        cs.push(Conn { s, outstanding: 0, got: 0, sent_at: Instant::now() });
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    let warmup = Duration::from_millis(500);
    let start = Instant::now();
    let end = start + warmup + Duration::from_secs_f64(secs);
    let mut measuring_since: Option<Instant> = None;
    let mut done: u64 = 0;
    for c in cs.iter_mut() {
        c.s.write_all(&batch).expect("send");
        c.outstanding = depth;
        c.sent_at = Instant::now();
    }
    let mut buf = vec![0u8; 65536];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if measuring_since.is_none() && now >= start + warmup {
            measuring_since = Some(now);
            hist.reset();
            done = 0;
        }
        // SAFETY: the events buffer holds events.len() entries.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 100) };
        for ev in &events[..n.max(0) as usize] {
            let c = &mut cs[ev.u64 as usize];
            loop {
                match c.s.read(&mut buf) {
                    Ok(0) => panic!("server closed a connection"),
                    Ok(k) => c.got += k,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("recv: {e}"),
                }
            }
            let replies = c.got / 6;
            if replies >= c.outstanding {
                assert_eq!(c.got, c.outstanding * 6, "unexpected reply bytes");
                let t = Instant::now();
                let lat = t.duration_since(c.sent_at).as_nanos() as u64;
                hist.record_n(lat.max(1), depth as u64).unwrap();
                done += depth as u64;
                c.got = 0;
                c.s.write_all(&batch).expect("send");
                c.sent_at = t;
            }
        }
    }
    let elapsed = measuring_since.map(|s| s.elapsed().as_secs_f64()).unwrap_or(1.0);
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "conns={conns} depth={depth} rps={:.0} p50_us={:.1} p99_us={:.1} p999_us={:.1} requests={done}",
        done as f64 / elapsed,
        us(0.5),
        us(0.99),
        us(0.999)
    );
}
