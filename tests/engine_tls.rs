//! TLS in the engine, on both backends: a rustls client and `openssl s_client` get plaintext
//! echoed through the worker; every kind of bad peer (plaintext, random bytes, a truncated or
//! stalled handshake, an oversized record, a peer that vanishes mid-record, a missing client
//! certificate) ends in one clean close with a readable reason, while another connection keeps
//! being served and the process's fds return to where they were. Certificates are made at
//! run time with the openssl command-line tool.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod engine_util;

use engine_util::{backends, certs, count_fds, serial, wait_until};
use p99::engine::{
    Backend, CloseReason, Config, ConnId, Engine, Handler, Pem, TlsConfig, TlsSettings, TlsVersion,
    Worker,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

fn settings() -> TlsSettings {
    let c = certs();
    let mut s = TlsSettings::new(Pem::File(c.path("server.crt")), Pem::File(c.path("server.key")));
    s.alpn = vec![b"p99test".to_vec()];
    s.handshake_timeout = Duration::from_millis(400);
    s
}

#[derive(Default)]
struct Seen {
    closes: Mutex<Vec<(CloseReason, String)>>,
    send_done: Mutex<Vec<(u64, bool)>>,
}

static BORROWED: &[u8] = b"borrowed bytes\n";

/// Echoes plaintext; "CLOSE" closes from the server side, "BORROW" answers with a borrowed
/// send.
struct Echo {
    seen: Arc<Seen>,
}

impl Handler for Echo {
    fn on_data(&mut self, w: &mut Worker, conn: ConnId, data: &[u8]) {
        if data.starts_with(b"CLOSE") {
            w.send(conn, b"bye\n").unwrap();
            w.close(conn).unwrap();
        } else if data.starts_with(b"BORROW") {
            let iov = [libc::iovec {
                iov_base: BORROWED.as_ptr() as *mut libc::c_void,
                iov_len: BORROWED.len(),
            }];
            // SAFETY: 'static memory that is never written.
            unsafe { w.send_borrowed(conn, &iov, 42) }.unwrap();
        } else {
            w.send(conn, data).unwrap();
        }
    }
    fn on_send_done(&mut self, _w: &mut Worker, _conn: ConnId, cookie: u64, sent: bool) {
        self.seen.send_done.lock().unwrap().push((cookie, sent));
    }
    fn on_close(&mut self, w: &mut Worker, conn: ConnId) {
        let (r, d) = w.close_reason(conn).unwrap();
        self.seen.closes.lock().unwrap().push((r, d.to_string()));
    }
}

fn start(backend: Backend, tls: TlsSettings) -> (Engine, Arc<Seen>) {
    let cfg = Config {
        backend: Some(backend),
        workers: 1,
        pin_workers: false,
        tls: Some(Arc::new(TlsConfig::new(&tls).expect("tls config"))),
        ..Config::default()
    };
    let seen = Arc::new(Seen::default());
    let s2 = Arc::clone(&seen);
    let e = Engine::start(cfg, move |_| Echo { seen: Arc::clone(&s2) }).expect("engine start");
    (e, seen)
}

fn client_config(
    versions: &[&'static rustls::SupportedProtocolVersion],
    with_cert: bool,
) -> Arc<rustls::ClientConfig> {
    let c = certs();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(c.path("ca.crt")).unwrap()).unwrap();
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots);
    let mut cfg = if with_cert {
        let chain = vec![CertificateDer::from_pem_file(c.path("client.crt")).unwrap()];
        let key = PrivateKeyDer::from_pem_file(c.path("client.key")).unwrap();
        b.with_client_auth_cert(chain, key).unwrap()
    } else {
        b.with_no_client_auth()
    };
    cfg.alpn_protocols = vec![b"p99test".to_vec()];
    Arc::new(cfg)
}

type Client = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tcp(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// A TLS client with its handshake done.
fn tls_client(port: u16, cfg: Arc<rustls::ClientConfig>) -> Client {
    let conn =
        rustls::ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp(port));
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).expect("handshake");
    }
    s
}

fn echo_ok(c: &mut Client, msg: &[u8]) {
    c.write_all(msg).unwrap();
    c.flush().unwrap();
    let mut got = vec![0u8; msg.len()];
    c.read_exact(&mut got).expect("echo");
    assert_eq!(got, msg);
}

/// Reads until the server's side of the TCP stream ends (any way).
fn until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut v = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return v,
            Ok(n) => v.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return v,
            // A blocking read with a timeout returns EINTR when the process is stopped and
            // continued (as a cgroup freeze does); that is not the server's doing.
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => panic!("waiting for the server to close: {e}"),
        }
    }
}

fn tls13() -> Vec<&'static rustls::SupportedProtocolVersion> {
    vec![&rustls::version::TLS13]
}

/// Runs `bad` against a fresh engine while a good connection stays open: `bad` must end in
/// exactly one close with `want` as its reason, and the good connection must still be served.
fn bad_peer_case(name: &str, tls: TlsSettings, want: CloseReason, bad: impl Fn(u16)) {
    for b in backends() {
        let fds = count_fds();
        let (e, seen) = start(b, tls.clone());
        let mut good = tls_client(e.port(), client_config(&tls13(), true));
        echo_ok(&mut good, b"before\n");
        bad(e.port());
        wait_until(&format!("{name} on {b:?}: the bad connection closed"), || {
            !seen.closes.lock().unwrap().is_empty()
        });
        echo_ok(&mut good, b"after\n");
        {
            let closes = seen.closes.lock().unwrap();
            assert_eq!(closes.len(), 1, "{name} on {b:?}: {closes:?}");
            assert_eq!(closes[0].0, want, "{name} on {b:?}: reason {closes:?}");
        }
        drop(good);
        wait_until("the good connection closed", || seen.closes.lock().unwrap().len() == 2);
        assert_eq!(e.stats(0).unwrap().open, 0);
        drop(e);
        assert_eq!(count_fds(), fds, "{name} on {b:?}: fds not back to baseline");
    }
}

#[test]
fn echo_over_tls12_and_tls13_with_alpn_and_close_notify_both_ways() {
    let _g = serial();
    for b in backends() {
        let (e, seen) = start(b, settings());
        for v in [&rustls::version::TLS12, &rustls::version::TLS13] {
            let mut c = tls_client(e.port(), client_config(&[v], false));
            assert_eq!(c.conn.protocol_version(), Some(v.version));
            assert_eq!(c.conn.alpn_protocol(), Some(&b"p99test"[..]));
            echo_ok(&mut c, b"hello over tls\n");
            // Larger than one record and than one receive buffer, in one write.
            let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
            echo_ok(&mut c, &big);
            // Client-side close_notify: the server sees a clean peer close.
            c.conn.send_close_notify();
            c.flush().unwrap();
            let _ = c.conn.complete_io(&mut c.sock);
        }
        wait_until("both clients closed", || seen.closes.lock().unwrap().len() == 2);
        assert!(
            seen.closes.lock().unwrap().iter().all(|(r, _)| *r == CloseReason::PeerClosed),
            "{:?}",
            seen.closes.lock().unwrap()
        );
        // Server-side close sends close_notify after the queued reply: a clean EOF for rustls.
        let mut c = tls_client(e.port(), client_config(&tls13(), false));
        c.write_all(b"CLOSE").unwrap();
        let mut all = Vec::new();
        c.read_to_end(&mut all).expect("clean close_notify from the server");
        assert_eq!(all, b"bye\n");
        wait_until("server-closed connection reported", || seen.closes.lock().unwrap().len() == 3);
        assert_eq!(seen.closes.lock().unwrap()[2].0, CloseReason::Local);
    }
}

#[test]
fn borrowed_send_is_encrypted_in_order_and_answered_once() {
    let _g = serial();
    for b in backends() {
        let (e, seen) = start(b, settings());
        let mut c = tls_client(e.port(), client_config(&tls13(), false));
        c.write_all(b"BORROW").unwrap();
        let mut got = vec![0u8; BORROWED.len()];
        c.read_exact(&mut got).unwrap();
        assert_eq!(got, BORROWED);
        echo_ok(&mut c, b"next\n");
        wait_until("send done", || !seen.send_done.lock().unwrap().is_empty());
        assert_eq!(*seen.send_done.lock().unwrap(), vec![(42, true)]);
        drop(c);
        drop(e);
    }
}

#[test]
fn plaintext_to_a_tls_port_is_closed_as_a_handshake_failure() {
    let _g = serial();
    bad_peer_case("plaintext", settings(), CloseReason::TlsHandshake, |port| {
        let mut s = tcp(port);
        s.write_all(b"PING\r\nGET / HTTP/1.1\r\n\r\n").unwrap();
        let reply = until_closed(&mut s);
        assert!(!reply.starts_with(b"PONG"), "plaintext was answered");
    });
}

#[test]
fn random_bytes_are_closed_as_a_handshake_failure() {
    let _g = serial();
    bad_peer_case("random bytes", settings(), CloseReason::TlsHandshake, |port| {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let junk: Vec<u8> = (0..8192)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut s = tcp(port);
        let _ = s.write_all(&junk);
        until_closed(&mut s);
    });
}

/// The first bytes of a real ClientHello, as a rustls client writes it.
fn client_hello_prefix(n: usize) -> Vec<u8> {
    let mut conn = rustls::ClientConnection::new(
        client_config(&tls13(), false),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    assert!(hello.len() > n);
    hello.truncate(n);
    hello
}

#[test]
fn truncated_handshake_is_closed_as_a_handshake_failure() {
    let _g = serial();
    bad_peer_case("truncated handshake", settings(), CloseReason::TlsHandshake, |port| {
        let mut s = tcp(port);
        s.write_all(&client_hello_prefix(40)).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        until_closed(&mut s);
    });
}

#[test]
fn client_that_stops_mid_handshake_is_cut_at_the_deadline() {
    let _g = serial();
    bad_peer_case("stalled handshake", settings(), CloseReason::TlsHandshakeTimeout, |port| {
        let mut s = tcp(port);
        s.write_all(&client_hello_prefix(40)).unwrap();
        // The rest never comes; the server must end it (deadline 400 ms here).
        let t = Instant::now();
        until_closed(&mut s);
        assert!(t.elapsed() >= Duration::from_millis(300), "cut before the deadline");
    });
}

#[test]
fn oversized_record_is_closed_as_a_protocol_failure() {
    let _g = serial();
    bad_peer_case("oversized record", settings(), CloseReason::TlsProtocol, |port| {
        let mut c = tls_client(port, client_config(&tls13(), false));
        echo_ok(&mut c, b"ok\n");
        // Application data record claiming 20000 bytes (> 2^14 + 256).
        let mut rec = vec![0x17, 0x03, 0x03, 0x4e, 0x20];
        rec.extend(std::iter::repeat(0u8).take(20000));
        let _ = c.sock.write_all(&rec);
        until_closed(&mut c.sock);
    });
}

#[test]
fn peer_vanishing_mid_record_is_closed_as_truncated() {
    let _g = serial();
    bad_peer_case("vanished mid-record", settings(), CloseReason::TlsTruncated, |port| {
        let mut c = tls_client(port, client_config(&tls13(), false));
        echo_ok(&mut c, b"ok\n");
        // Half of a 100-byte record, then the TCP stream ends without close_notify.
        let mut rec = vec![0x17, 0x03, 0x03, 0x00, 100];
        rec.extend([7u8; 50]);
        c.sock.write_all(&rec).unwrap();
        c.sock.shutdown(Shutdown::Write).unwrap();
        until_closed(&mut c.sock);
    });
}

#[test]
fn required_client_certificate_missing_is_a_handshake_failure() {
    let _g = serial();
    let mut tls = settings();
    tls.client_ca = Some(Pem::File(certs().path("ca.crt")));
    bad_peer_case("no client certificate", tls, CloseReason::TlsHandshake, |port| {
        let conn = rustls::ClientConnection::new(
            client_config(&tls13(), false),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        let mut s = rustls::StreamOwned::new(conn, tcp(port));
        // TLS 1.3: the client finishes first; the refusal arrives on the next read.
        let r = s.write_all(b"hello\n").and_then(|_| s.flush()).and_then(|_| {
            let mut b = [0u8; 16];
            s.read(&mut b)
        });
        assert!(r.is_err() || matches!(r, Ok(0)), "served without a client certificate: {r:?}");
    });
}

#[test]
fn tls13_only_listener_refuses_a_tls12_client() {
    let _g = serial();
    let mut tls = settings();
    tls.min_version = TlsVersion::Tls13;
    bad_peer_case(
        "TLS 1.2 client on a TLS 1.3-only listener",
        tls,
        CloseReason::TlsHandshake,
        |port| {
            let conn = rustls::ClientConnection::new(
                client_config(&[&rustls::version::TLS12], false),
                ServerName::try_from("localhost").unwrap(),
            )
            .unwrap();
            let mut s = rustls::StreamOwned::new(conn, tcp(port));
            let mut r = Ok(());
            while r.is_ok() && s.conn.is_handshaking() {
                r = s.conn.complete_io(&mut s.sock).map(|_| ());
            }
            assert!(r.is_err(), "a TLS 1.2 handshake succeeded");
        },
    );
}

#[test]
fn config_errors_name_the_file() {
    // serial: the files it opens would count in another test's fd baseline
    let _g = serial();
    let c = certs();
    let missing = TlsSettings::new(Pem::File(c.path("nope.crt")), Pem::File(c.path("server.key")));
    let e = TlsConfig::new(&missing).unwrap_err().to_string();
    assert!(e.contains("nope.crt"), "{e}");
    let mismatched =
        TlsSettings::new(Pem::File(c.path("server.crt")), Pem::File(c.path("client.key")));
    assert!(
        TlsConfig::new(&mismatched).is_err(),
        "a key that does not match the certificate was accepted"
    );
    let bytes = TlsSettings::new(
        Pem::Bytes(std::fs::read(c.path("server.crt")).unwrap()),
        Pem::Bytes(std::fs::read(c.path("server.key")).unwrap()),
    );
    assert!(TlsConfig::new(&bytes).is_ok());
    let no_pem = TlsSettings::new(Pem::Bytes(b"not pem".to_vec()), Pem::File(c.path("server.key")));
    assert!(TlsConfig::new(&no_pem).is_err());
}

/// Runs `openssl s_client` once: sends `line`, waits for the echo, then ends. Returns its
/// stdout and stderr.
fn s_client(port: u16, version: &str, sess: &str, sess_flag: &str) -> String {
    let c = certs();
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), version, "-CAfile"])
        .arg(c.path("ca.crt"))
        .args(["-verify_return_error", "-alpn", "p99test", sess_flag])
        .arg(c.path(sess))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn openssl s_client");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"interop line\n").unwrap();
    // Long enough for the echo and (TLS 1.3) the session tickets to arrive.
    std::thread::sleep(Duration::from_millis(500));
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn openssl_s_client_interop_tls12_tls13_and_resumption() {
    let _g = serial();
    for b in backends() {
        let (e, _seen) = start(b, settings());
        for (flag, name) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
            let sess = format!("sess-{name}-{b:?}.pem");
            let first = s_client(e.port(), flag, &sess, "-sess_out");
            assert!(first.contains("interop line"), "{b:?} {name}: no echo:\n{first}");
            assert!(
                first.contains(&format!("New, {name}")),
                "{b:?} {name}: not a full {name} handshake:\n{first}"
            );
            assert!(first.contains("ALPN protocol: p99test"), "{b:?} {name}: ALPN:\n{first}");
            let second = s_client(e.port(), flag, &sess, "-sess_in");
            assert!(
                second.contains("interop line"),
                "{b:?} {name}: no echo on resumption:\n{second}"
            );
            assert!(
                second.contains(&format!("Reused, {name}")),
                "{b:?} {name}: session not resumed:\n{second}"
            );
        }
        drop(e);
    }
}

/// Heap bytes in use in this process (every malloc arena).
fn heap_in_use() -> usize {
    // SAFETY: mallinfo2 only reads the allocator's counters.
    unsafe { libc::mallinfo2() }.uordblks
}

/// Holds `n` connections to `port` open from a child process (so its memory is not ours):
/// each one sends a line and reads its echo, then all stay idle until the child's stdin
/// closes. Returns the child once every connection has been answered.
fn idle_clients(port: u16, n: usize, tls: bool) -> std::process::Child {
    let script = r#"
import socket, ssl, sys
port, n, tls, ca = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
ctx = ssl.create_default_context(cafile=ca)
conns = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    if tls:
        s = ctx.wrap_socket(s, server_hostname="localhost")
    s.sendall(b"x\n")
    got = b""
    while got != b"x\n":
        got += s.recv(16)
    conns.append(s)
print("ready", flush=True)
sys.stdin.read()
"#;
    let mut child = Command::new("python3")
        .args(["-c", script, &port.to_string(), &n.to_string(), if tls { "1" } else { "0" }])
        .arg(certs().path("ca.crt"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "ready", "client child failed");
    child
}

/// Bytes of server heap per idle connection, TLS and plaintext, measured the same way; the
/// TLS figure must stay within a bound that only on-demand buffers meet. Printed for the
/// README (run with --nocapture).
#[test]
fn idle_tls_connection_memory() {
    let _g = serial();
    let n = 200;
    let mut per_conn = Vec::new();
    for tls in [false, true] {
        let cfg = Config {
            backend: Some(Backend::Epoll),
            workers: 1,
            pin_workers: false,
            tls: tls.then(|| Arc::new(TlsConfig::new(&settings()).unwrap())),
            ..Config::default()
        };
        let seen = Arc::new(Seen::default());
        let s2 = Arc::clone(&seen);
        let e = Engine::start(cfg, move |_| Echo { seen: Arc::clone(&s2) }).unwrap();
        // Warm the worker's tables and scratch with one connection first.
        idle_clients(e.port(), 1, tls).wait_with_output().unwrap();
        wait_until("warm-up closed", || seen.closes.lock().unwrap().len() == 1);
        let before = heap_in_use();
        let mut child = idle_clients(e.port(), n, tls);
        std::thread::sleep(Duration::from_millis(100));
        let after = heap_in_use();
        drop(child.stdin.take());
        child.wait().unwrap();
        wait_until("clients closed", || seen.closes.lock().unwrap().len() == n + 1);
        let b = after.saturating_sub(before) / n;
        println!(
            "idle {} connection: {b} bytes of server heap each ({n} connections)",
            if tls { "TLS 1.3" } else { "plaintext" }
        );
        per_conn.push(b);
        drop(e);
    }
    assert!(per_conn[1] < 48 * 1024, "idle TLS connection holds {} bytes", per_conn[1]);
}
