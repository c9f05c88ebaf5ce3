//! The three ping servers (pingserver-c, pingserver-c-p99, pingserver-rs) give identical
//! bytes for the same scripted sessions, equal to what the protocol model says, on each
//! engine backend. Needs the built programs: run through `make test-engine` (it passes
//! P99_BIN_DIR), or `cargo test --test ping_parity -- --ignored` after `make`.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use p99::proto::ping::{PingParser, Verdict};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

mod engine_util;

struct Server {
    child: Child,
    port: u16,
    name: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signals our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn bin_dir() -> PathBuf {
    std::env::var_os("P99_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("build/bin"))
}

fn start(name: &str, backend: Option<&str>) -> Server {
    start_with(name, backend, &["-t", "2"])
}

/// Starts `name` on a free port with `args` (flags other than `-p`).
fn start_with(name: &str, backend: Option<&str>, args: &[&str]) -> Server {
    let path = bin_dir().join(name);
    assert!(path.exists(), "{} not built (run make)", path.display());
    let mut cmd = Command::new(&path);
    cmd.args(["-p", "0"]).args(args).stdout(Stdio::piped()).stderr(Stdio::null());
    match backend {
        Some(b) => cmd.env("P99_BACKEND", b),
        None => cmd.env_remove("P99_BACKEND"),
    };
    let mut child = cmd.spawn().expect("spawn server");
    let mut line = Vec::new();
    let out = child.stdout.as_mut().unwrap();
    let mut byte = [0u8; 1];
    while out.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let line = String::from_utf8(line).unwrap();
    let port =
        line.split(':').nth(2).and_then(|p| p.split(' ').next()).and_then(|p| p.parse().ok());
    let port = port.unwrap_or_else(|| panic!("{name}: no port in {line:?}"));
    Server { child, port, name: format!("{name}[{}]", backend.unwrap_or("default")) }
}

/// Plays `chunks` (pausing between them so they arrive as separate segments), half-closes,
/// and returns every byte the server sent until it closed.
fn session(port: u16, chunks: &[Vec<u8>]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for c in chunks {
        if s.write_all(c).is_err() {
            break; // the server closed on a too-long line; what it sent is still readable
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = s.shutdown(Shutdown::Write);
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

fn model(chunks: &[Vec<u8>]) -> Vec<u8> {
    let mut p = PingParser::new();
    let mut out = Vec::new();
    for c in chunks {
        if p.feed(c, &mut out) == Verdict::Close {
            break;
        }
    }
    out
}

fn scripts() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let mut v: Vec<(&'static str, Vec<Vec<u8>>)> = Vec::new();
    v.push(("single", vec![b"PING\r\n".to_vec()]));
    v.push(("pipelined", vec![b"PING\r\n".repeat(1000)]));
    let mixed = b"ping\r\nPING\nhello\r\n\r\n\nPiNg\r\nPING \r\nPING\r\r\n\0PING\r\n".to_vec();
    v.push(("split-every-byte", mixed.iter().map(|&b| vec![b]).collect()));
    v.push(("mixed-whole", vec![mixed.clone()]));
    let mut long = b"PING\r\n".repeat(3);
    long.extend_from_slice(&[b'a'; 1025]);
    long.extend_from_slice(b"\nPING\r\n");
    v.push(("too-long-line", vec![long.clone()]));
    v.push(("too-long-line-split", long.chunks(100).map(|c| c.to_vec()).collect()));
    let mut exact = vec![b'b'; 1024];
    exact.extend_from_slice(b"\nPING\r\n");
    v.push(("exactly-1024", exact.chunks(333).map(|c| c.to_vec()).collect()));
    v.push(("unterminated-tail", vec![b"PING\r\nPIN".to_vec()]));
    // Pseudo-random mix, cut at pseudo-random points (fixed seed: same script every run).
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let words: [&[u8]; 6] = [b"PING\r\n", b"ping\r\n", b"PONG\r\n", b"PING\n", b"x\r\n", b"\r\n"];
    let mut stream = Vec::new();
    for _ in 0..2000 {
        stream.extend_from_slice(words[(next() % words.len() as u64) as usize]);
    }
    let mut chunks = Vec::new();
    let mut i = 0;
    while i < stream.len() {
        let n = 1 + (next() % 700) as usize;
        chunks.push(stream[i..(i + n).min(stream.len())].to_vec());
        i += n;
    }
    v.push(("random", chunks));
    v
}

#[test]
#[ignore = "needs the built servers; run by make test-engine"]
fn three_ping_servers_answer_identically() {
    let mut servers = vec![start("pingserver-c", None)];
    for b in ["uring", "epoll"] {
        servers.push(start("pingserver-c-p99", Some(b)));
        servers.push(start("pingserver-rs", Some(b)));
    }
    for (name, chunks) in scripts() {
        let want = model(&chunks);
        assert!(!want.is_empty());
        for s in &servers {
            let got = session(s.port, &chunks);
            assert!(
                got == want,
                "{} differs on script {name}: got {} bytes, want {}",
                s.name,
                got.len(),
                want.len()
            );
        }
    }
}

/// `session` over TLS: a rustls client that trusts the test CA plays `chunks` (one TLS write
/// each), sends close_notify where the plaintext session half-closes, and returns the
/// plaintext the server sent until it closed.
fn tls_session(port: u16, ca: &std::path::Path, chunks: &[Vec<u8>]) -> Vec<u8> {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut t = tls_stream(s, ca);
    for c in chunks {
        if t.write_all(c).and_then(|_| t.flush()).is_err() {
            break; // the server closed on a too-long line; what it sent is still readable
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    t.conn.send_close_notify();
    let _ = t.flush();
    let mut v = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match t.read(&mut buf) {
            Ok(0) => return v,
            Ok(n) => v.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof | ErrorKind::BrokenPipe
                ) =>
            {
                return v
            }
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// A rustls client over `s` that trusts the CA in `ca` (handshake on first use).
fn tls_stream(
    s: TcpStream,
    ca: &std::path::Path,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(ca).unwrap()).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let conn = rustls::ClientConnection::new(
        std::sync::Arc::new(cfg),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    rustls::StreamOwned::new(conn, s)
}

/// The same scripts over TLS (`--tls-cert`/`--tls-key`): pingserver-c through OpenSSL,
/// pingserver-c-p99 and pingserver-rs through the engine's TLS, on each backend, answer with
/// the same plaintext as the model.
#[test]
#[ignore = "needs the built servers; run by make test-engine"]
fn three_ping_servers_answer_identically_over_tls() {
    let certs = engine_util::certs();
    let (crt, key) = (certs.path("server.crt"), certs.path("server.key"));
    let tls = ["-t", "2", "--tls-cert", crt.to_str().unwrap(), "--tls-key", key.to_str().unwrap()];
    let mut servers = vec![start_with("pingserver-c", None, &tls)];
    for b in ["uring", "epoll"] {
        servers.push(start_with("pingserver-c-p99", Some(b), &tls));
        servers.push(start_with("pingserver-rs", Some(b), &tls));
    }
    for (name, chunks) in scripts() {
        let want = model(&chunks);
        for s in &servers {
            let got = tls_session(s.port, &certs.path("ca.crt"), &chunks);
            assert!(
                got == want,
                "{} over TLS differs on script {name}: got {} bytes, want {}",
                s.name,
                got.len(),
                want.len()
            );
        }
    }
    // Clients that pipeline and vanish without reading: the server's writes then fail
    // (EPIPE/ECONNRESET), which must close the connection, not kill the server.
    let pings = b"PING\r\n".repeat(20_000);
    for s in &mut servers {
        for _ in 0..20 {
            let stream = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
            let mut t = tls_stream(stream, &certs.path("ca.crt"));
            let _ = t.write_all(&pings).and_then(|_| t.flush());
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            s.child.try_wait().unwrap().is_none(),
            "{} died after clients vanished mid-reply",
            s.name
        );
        let got = tls_session(s.port, &certs.path("ca.crt"), &[b"PING\r\n".to_vec()]);
        assert_eq!(got, b"PONG\r\n", "{} stopped serving after clients vanished", s.name);
    }
}

/// A TLS server given a key that does not match its certificate refuses to start, naming the
/// problem, instead of failing every handshake later.
#[test]
#[ignore = "needs the built servers; run by make test-engine"]
fn ping_servers_refuse_a_mismatched_tls_key() {
    let certs = engine_util::certs();
    for name in ["pingserver-c", "pingserver-c-p99", "pingserver-rs"] {
        let out = Command::new(bin_dir().join(name))
            .args(["-p", "0", "--tls-cert"])
            .arg(certs.path("server.crt"))
            .arg("--tls-key")
            .arg(certs.path("client.key"))
            .output()
            .expect("run server");
        assert!(!out.status.success(), "{name} started with a mismatched key");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("TLS"), "{name}: unclear error: {err}");
    }
}

/// Resident set size of `pid` in KiB, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS value")
}

/// A client that pipelines PINGs and never reads a reply must not make a server queue replies
/// without bound: once the server stops reading it, the client's writes block. Sends up to
/// 64 MiB of PINGs (so up to 64 MiB of replies would be queued by an unbounded server) and
/// checks the server's RSS grew by less than 16 MiB (socket buffers plus the server's queue).
#[test]
#[ignore = "needs the built servers; run by make test-engine"]
fn never_reading_client_does_not_grow_server_memory() {
    const LIMIT: usize = 64 << 20;
    const MAX_GROWTH_KIB: u64 = 16 << 10;
    let mut servers = vec![start("pingserver-c", None)];
    for b in ["uring", "epoll"] {
        servers.push(start("pingserver-c-p99", Some(b)));
        servers.push(start("pingserver-rs", Some(b)));
    }
    let chunk = b"PING\r\n".repeat(10_000);
    for s in &servers {
        let pid = s.child.id();
        let before = rss_kib(pid);
        let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        c.set_write_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut sent = 0usize;
        while sent < LIMIT {
            match c.write(&chunk) {
                Ok(n) => sent += n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                Err(e) => panic!("{}: write: {e}", s.name),
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        let after = rss_kib(pid);
        assert!(
            sent < LIMIT,
            "{}: took all {LIMIT} bytes of PINGs from a client that never reads (no backpressure)",
            s.name
        );
        assert!(
            after.saturating_sub(before) < MAX_GROWTH_KIB,
            "{}: RSS grew from {before} KiB to {after} KiB for a client that never reads ({sent} bytes sent)",
            s.name
        );
        drop(c);
    }
}

/// User plus system CPU time of `pid` in clock ticks, from /proc.
fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // Fields after the ")" that ends the command name: state is field 3, utime 14, stime 15.
    let rest = &s[s.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn set_nofile(pid: u32, n: u64) {
    let mut old = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: prlimit on our own child, reading into a valid rlimit.
    let r = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
    // The soft limit only; the hard limit stays (raising it needs a capability).
    let lim = libc::rlimit { rlim_cur: n.min(old.rlim_max), rlim_max: old.rlim_max };
    // SAFETY: prlimit on our own child with a valid rlimit and no old-value pointer.
    let r = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// When accept runs out of fds (EMFILE) the engine backs off instead of spinning on the
/// level-triggered listener: while connections wait in the backlog that cannot be accepted,
/// the server uses far less than a core; once fds are free again it accepts and answers.
/// pingserver-c (its own epoll loop, no engine) closes the waiting clients with its spare
/// descriptor instead, and must not spin either.
#[test]
#[ignore = "needs the built servers; run by make test-engine"]
fn out_of_fds_does_not_spin_and_recovers() {
    let tick = 100u64; // USER_HZ
    for b in ["epoll", "uring"] {
        for name in ["pingserver-rs", "pingserver-c-p99", "pingserver-c"] {
            if name == "pingserver-c" && b == "uring" {
                continue; // no engine: the backend does not apply
            }
            let s = start(name, Some(b));
            let pid = s.child.id();
            let open = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count() as u64;
            set_nofile(pid, open + 2);
            let clients: Vec<TcpStream> =
                (0..16).map(|_| TcpStream::connect(("127.0.0.1", s.port)).unwrap()).collect();
            std::thread::sleep(Duration::from_millis(300));
            let (t0, c0) = (std::time::Instant::now(), cpu_ticks(pid));
            std::thread::sleep(Duration::from_millis(1500));
            let (dt, dc) = (t0.elapsed(), cpu_ticks(pid) - c0);
            let budget = (dt.as_secs_f64() * tick as f64 * 0.15) as u64;
            assert!(
                dc <= budget,
                "{}: {dc} CPU ticks in {dt:?} while out of fds (budget {budget}): spinning",
                s.name
            );
            drop(clients);
            set_nofile(pid, 1024);
            let got = session(s.port, &[b"PING\r\n".to_vec()]);
            assert_eq!(
                got,
                model(&[b"PING\r\n".to_vec()]),
                "{}: no answer after fds were freed",
                s.name
            );
        }
    }
}

/// `-c` is the process-wide limit with several workers: `-t 4 -c 40` serves 40 connections
/// however the kernel spreads them over the four listeners (a limit split per worker refused
/// some of them), and closes the ones beyond it without an answer.
#[test]
#[ignore = "needs the built servers; run by make test-engine"]
fn connection_limit_is_process_wide_with_several_workers() {
    const L: usize = 40;
    let mut servers = vec![start_with("pingserver-c", None, &["-t", "4", "-c", "40"])];
    for b in ["uring", "epoll"] {
        servers.push(start_with("pingserver-c-p99", Some(b), &["-t", "4", "-c", "40"]));
        servers.push(start_with("pingserver-rs", Some(b), &["-t", "4", "-c", "40"]));
    }
    for s in &servers {
        let mut held = Vec::new();
        for i in 0..L {
            let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            c.write_all(b"PING\r\n").unwrap();
            let mut reply = [0u8; 6];
            c.read_exact(&mut reply).unwrap_or_else(|e| {
                panic!("{}: connection {} of {L} not served: {e}", s.name, i + 1)
            });
            assert_eq!(&reply, b"PONG\r\n", "{}", s.name);
            held.push(c);
        }
        for k in 1..=3 {
            let got = session(s.port, &[b"PING\r\n".to_vec()]);
            assert!(got.is_empty(), "{}: connection {} beyond -c {L} was served", s.name, L + k);
        }
        drop(held);
    }
}

/// Runs `name` under `ulimit -n 64` with `args` for half a second; returns whether it was
/// still running (started) and what it wrote to stderr.
fn run_under_fd_limit_64(name: &str, args: &str) -> (bool, String) {
    let path = bin_dir().join(name);
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n 64 && exec \"$0\" -p 0 -t 2 {args}"))
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sh");
    std::thread::sleep(Duration::from_millis(500));
    let running = child.try_wait().expect("wait").is_none();
    if running {
        // SAFETY: signals our own child by pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    }
    let status = child.wait().expect("wait");
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(running || !status.success(), "{name} {args}: exited 0 without serving");
    (running, err)
}

/// The C ping servers raise the descriptor limit to what -c needs, and refuse to start with
/// a message when it cannot be (an explicit -c), instead of running out of fds later; the
/// default -c is lowered to what the limit allows.
#[test]
#[ignore = "needs the built servers; run by make test-engine"]
fn c_servers_check_the_fd_limit_at_start() {
    for name in ["pingserver-c", "pingserver-c-p99"] {
        let (started, err) = run_under_fd_limit_64(name, "-c 1024");
        assert!(!started, "{name} -c 1024 started under ulimit -n 64");
        assert!(err.contains("RLIMIT_NOFILE") && err.contains("-c 1024"), "{name}: {err:?}");
        let (started, err) = run_under_fd_limit_64(name, "-c 20");
        assert!(started, "{name} -c 20 did not start under ulimit -n 64: {err:?}");
        let (started, err) = run_under_fd_limit_64(name, "");
        assert!(started, "{name} with the default -c did not start under ulimit -n 64: {err:?}");
    }
}
