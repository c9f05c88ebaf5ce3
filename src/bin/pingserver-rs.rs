//! pingserver-rs: the ping server (DESIGN.md "Protocols") in Rust on the p99 engine's Rust
//! API, no C involved. Flags as memcached: -p PORT (0 = any; the chosen port is printed)
//! -l ADDR -t THREADS (0 = one per CPU of the affinity mask) -c MAXCONN, and
//! `--tls-cert FILE --tls-key FILE` to serve TLS (terminated by the engine).

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::exit;
use std::sync::Arc;
use std::time::Duration;

use p99::engine::{self, ConnId, Engine, Handler, Pem, TlsConfig, TlsSettings, Worker};
use p99::proto::ping::{PingParser, Verdict};

#[derive(Default)]
struct Ping {
    parsers: Vec<PingParser>,
    out: Vec<u8>,
}

impl Handler for Ping {
    fn on_accept(&mut self, _w: &mut Worker, conn: ConnId) -> bool {
        let slot = conn.slot() as usize;
        if self.parsers.len() <= slot {
            self.parsers.resize_with(slot + 1, PingParser::new);
        }
        self.parsers[slot] = PingParser::new();
        true
    }

    fn on_data(&mut self, w: &mut Worker, conn: ConnId, data: &[u8]) {
        self.out.clear();
        let verdict = self.parsers[conn.slot() as usize].feed(data, &mut self.out);
        if !self.out.is_empty() {
            // Fails only for a closing connection, which wants no more output anyway.
            let _ = w.send(conn, &self.out);
        }
        if verdict == Verdict::Close {
            let _ = w.close(conn);
        }
    }
}

fn usage() -> ! {
    eprintln!("usage: pingserver-rs [-p PORT] [-l ADDR] [-t THREADS] [-c MAXCONN] [--tls-cert FILE --tls-key FILE]");
    exit(2);
}

fn main() {
    let mut cfg = engine::Config { port: 12321, ..Default::default() };
    let mut maxconn: usize = 65536;
    let (mut tls_cert, mut tls_key): (Option<PathBuf>, Option<PathBuf>) = (None, None);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let val = args.get(i + 1).cloned().unwrap_or_else(|| usage());
        match args[i].as_str() {
            "-p" => cfg.port = val.parse().unwrap_or_else(|_| usage()),
            "-l" => cfg.addr = val.parse::<IpAddr>().unwrap_or_else(|_| usage()),
            "-t" => cfg.workers = val.parse().unwrap_or_else(|_| usage()),
            "-c" => maxconn = val.parse().unwrap_or_else(|_| usage()),
            "--tls-cert" => tls_cert = Some(PathBuf::from(val)),
            "--tls-key" => tls_key = Some(PathBuf::from(val)),
            _ => usage(),
        }
        i += 2;
    }
    match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => {
            match TlsConfig::new(&TlsSettings::new(Pem::File(cert), Pem::File(key))) {
                Ok(t) => cfg.tls = Some(Arc::new(t)),
                Err(e) => {
                    eprintln!("pingserver-rs: cannot start: {e}");
                    exit(1);
                }
            }
        }
        (None, None) => {}
        _ => {
            eprintln!("pingserver-rs: --tls-cert and --tls-key go together");
            exit(2);
        }
    }
    // Block the stop signals before any worker exists, so only sigwait below sees them.
    // SAFETY: plain signal-mask calls on a local set.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    // -c is one limit for the process, however the kernel spreads connections over workers.
    cfg.max_conns = maxconn;
    let addr = cfg.addr;
    let tls = if cfg.tls.is_some() { ", TLS" } else { "" };
    let eng = match Engine::start(cfg, |_| Ping::default()) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("pingserver-rs: cannot start: {e}");
            exit(1);
        }
    };
    println!(
        "pingserver-rs: listening on {}:{} (backend {}, {} workers{tls})",
        addr,
        eng.port(),
        eng.backend().name(),
        eng.workers()
    );
    let mut sig: libc::c_int = 0;
    // SAFETY: waits on the blocked set built above.
    unsafe { libc::sigwait(&set, &mut sig) };
    let _ = eng.stop(Duration::from_millis(500));
    let (mut enters, mut subs, mut comps, mut bytes_in) = (0, 0, 0, 0);
    for i in 0..eng.workers() {
        if let Some(s) = eng.stats(i) {
            enters += s.enters;
            subs += s.submissions;
            comps += s.completions;
            bytes_in += s.bytes_in;
        }
    }
    eprintln!("pingserver-rs: stopped (enters {enters}, submissions {subs}, completions {comps}, bytes_in {bytes_in})");
}
