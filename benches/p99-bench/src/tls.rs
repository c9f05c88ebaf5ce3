//! TLS for the generator (rustls with the ring provider, as libp99 uses): the client
//! configuration the `--tls*` flags describe, the stream the load loops read and write through
//! (plain TCP, or TLS over the same non-blocking socket), and the handshake mode, which opens a
//! new connection per request (connect, handshake, one PING, PONG, close) to measure handshakes
//! per second and their latency.
//!
//! Steady-state load handshakes once per connection before the run starts (blocking, with a
//! deadline), so the measured window sees only the record layer: one TLS record per batch of
//! requests written together, and the answers decrypted in rustls's own buffers and copied once
//! into the connection's input buffer, which the plaintext parsers then read unchanged.

use crate::client::{now_ns, Epoll, Progress, Shared, ThreadPlan, TIMER_TOKEN};
use crate::config::{Config, Handshake};
use crate::stats::Counts;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, HandshakeKind, RootCertStore, SignatureScheme};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How long a connection may take to connect and handshake before it counts as failed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The rustls client configuration the flags describe (one per generator thread: in resumed
/// handshake mode its session store is that thread's).
pub fn client_config(c: &Config) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match c.tls_version.as_deref() {
        Some("1.2") => &[&rustls::version::TLS12],
        Some("1.3") => &[&rustls::version::TLS13],
        _ => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS configuration: {e}"))?;
    let mut cfg = match &c.tls_ca {
        Some(path) => builder.with_root_certificates(load_roots(path)?).with_no_client_auth(),
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCertificate {
                schemes: provider.signature_verification_algorithms.supported_schemes(),
            }))
            .with_no_client_auth(),
    };
    if c.handshake == Some(Handshake::Full) {
        cfg.resumption = Resumption::disabled();
    }
    Ok(Arc::new(cfg))
}

fn load_roots(path: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("--tls-ca {path}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--tls-ca {path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("--tls-ca {path}: no PEM certificate in the file"));
    }
    for cert in certs {
        roots.add(cert).map_err(|e| format!("--tls-ca {path}: {e}"))?;
    }
    Ok(roots)
}

/// The name the server's certificate is checked against (and sent as SNI unless it is an IP
/// address): `--tls-sni`, else the host part of `--server`.
pub fn server_name(c: &Config) -> Result<ServerName<'static>, String> {
    let host = match &c.tls_sni {
        Some(n) => n.clone(),
        None => host_of(&c.server).to_string(),
    };
    ServerName::try_from(host.clone())
        .map_err(|e| format!("'{host}' is not a valid TLS server name ({e}); use --tls-sni"))
}

/// "host" of "host:port" or "[v6]:port".
fn host_of(server: &str) -> &str {
    if let Some(rest) = server.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    server.rsplit_once(':').map_or(server, |(h, _)| h)
}

/// `--tls-insecure`: accepts any certificate for any name, and does not check the handshake's
/// signature either (with the certificate unchecked, that signature would prove nothing). For
/// benchmarking only: it keeps the generator's handshake cost to the key exchange.
#[derive(Debug)]
struct AcceptAnyServerCertificate {
    schemes: Vec<SignatureScheme>,
}

impl ServerCertVerifier for AcceptAnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

/// A load connection: plain TCP or TLS over it. Works blocking (prefill) and non-blocking (the
/// load loops): over TLS, `write` takes plaintext and returns `WouldBlock` while earlier
/// ciphertext is still waiting for the socket, and `flush` reports `WouldBlock` while any is.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

pub struct TlsStream {
    tcp: TcpStream,
    tls: ClientConnection,
}

/// Connects (blocking) and, with `--tls`, completes the handshake with `cfg` before returning,
/// within `HANDSHAKE_TIMEOUT`. The socket is left blocking, TCP_NODELAY on.
pub fn connect(
    c: &Config,
    cfg: Option<&Arc<ClientConfig>>,
    addr: SocketAddr,
) -> Result<Stream, String> {
    let tcp = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| format!("TCP_NODELAY: {e}"))?;
    let Some(cfg) = cfg else { return Ok(Stream::Plain(tcp)) };
    let name = server_name(c)?;
    let mut tls =
        ClientConnection::new(cfg.clone(), name).map_err(|e| format!("TLS with {addr}: {e}"))?;
    let mut tcp = tcp;
    let timeouts = |t: &TcpStream, d: Option<Duration>| {
        t.set_read_timeout(d).and_then(|_| t.set_write_timeout(d)).map_err(|e| e.to_string())
    };
    timeouts(&tcp, Some(HANDSHAKE_TIMEOUT))?;
    while tls.is_handshaking() {
        if let Err(e) = tls.complete_io(&mut tcp) {
            let why = match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    format!("no answer within {} s", HANDSHAKE_TIMEOUT.as_secs())
                }
                io::ErrorKind::UnexpectedEof => "the server closed the connection".into(),
                _ => e.to_string(),
            };
            return Err(format!("TLS handshake with {addr}: {why}"));
        }
    }
    timeouts(&tcp, None)?;
    Ok(Stream::Tls(Box::new(TlsStream { tcp, tls })))
}

impl Stream {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => &t.tcp,
        }
    }

    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        self.tcp().set_nonblocking(on)
    }

    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.tcp().shutdown(how)
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.tcp().as_raw_fd()
    }
}

impl TlsStream {
    /// Writes ciphertext rustls holds; `WouldBlock` when the socket did not take all of it.
    fn send_pending(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            if self.tls.write_tls(&mut self.tcp)? == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let t = match self {
            Stream::Plain(s) => return s.read(buf),
            Stream::Tls(t) => t,
        };
        loop {
            // Plaintext already decrypted first: rustls refuses more ciphertext while it holds
            // too much of it. Ok(0) here is the server's close_notify.
            match t.tls.reader().read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return r,
            }
            // Ok(0): the socket's end; the reader then says whether close_notify came first.
            t.tls.read_tls(&mut t.tcp)?;
            if let Err(e) = t.tls.process_new_packets() {
                // rustls has queued the alert that tells the server why.
                let _ = t.send_pending();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            // Anything rustls must answer (a key update) goes now if the socket takes it, else
            // with the next write or flush.
            if t.tls.wants_write() {
                match t.send_pending() {
                    Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                    _ => {}
                }
            }
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let t = match self {
            Stream::Plain(s) => return s.write(buf),
            Stream::Tls(t) => t,
        };
        // Earlier ciphertext first, so what rustls buffers stays bounded by one write.
        t.send_pending()?;
        let n = t.tls.writer().write(buf)?;
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        match t.send_pending() {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ => Ok(n),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(_) => Ok(()),
            Stream::Tls(t) => t.send_pending(),
        }
    }
}

impl Drop for TlsStream {
    /// An orderly TLS close where the socket takes it at once (the server then sees
    /// close_notify, not a truncated stream); never waits.
    fn drop(&mut self) {
        self.tls.send_close_notify();
        let _ = self.tcp.set_nonblocking(true);
        let _ = self.send_pending();
    }
}

// --- handshake mode ---------------------------------------------------------------------------

/// A TCP connect that does not wait: the socket is non-blocking, TCP_NODELAY on, and the
/// connection completes (or fails) later, reported by EPOLLOUT and SO_ERROR.
fn connect_nonblocking(addr: SocketAddr) -> io::Result<TcpStream> {
    let domain = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a socket just created and owned by nobody else; the TcpStream closes it.
    let sock = unsafe { TcpStream::from_raw_fd(fd) };
    // SAFETY: sockaddr_storage is plain data, valid when zeroed.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in.
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    // SAFETY: ss holds a valid address of `len` bytes for this socket's family.
    let r = unsafe {
        libc::connect(fd, &ss as *const _ as *const libc::sockaddr, len as libc::socklen_t)
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    sock.set_nodelay(true)?;
    Ok(sock)
}

#[derive(Clone, Copy, PartialEq)]
enum Phase {
    Connecting,
    Handshaking,
    AwaitingPong,
}

/// One connection of the handshake mode, from connect to PONG.
struct Attempt {
    sock: TcpStream,
    tls: ClientConnection,
    phase: Phase,
    /// When the connect was started (CLOCK_MONOTONIC ns): handshake latency counts from here.
    started: u64,
    /// Handshake latency and whether the session was resumed, once the handshake is done.
    handshake: Option<(u64, bool)>,
    pong: [u8; 8],
    got: usize,
    events: u32,
}

const PING: &[u8] = b"PING\r\n";
const PONG: &[u8] = b"PONG\r\n";

impl Attempt {
    fn start(
        addr: SocketAddr,
        cfg: &Arc<ClientConfig>,
        name: &ServerName<'static>,
    ) -> Result<Attempt, String> {
        let started = now_ns();
        let sock = connect_nonblocking(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        let tls = ClientConnection::new(cfg.clone(), name.clone())
            .map_err(|e| format!("TLS client: {e}"))?;
        Ok(Attempt {
            sock,
            tls,
            phase: Phase::Connecting,
            started,
            handshake: None,
            pong: [0; 8],
            got: 0,
            events: 0,
        })
    }

    /// Moves the attempt on after readiness `ev`: Ok(true) once PONG has come back.
    fn advance(&mut self, ev: u32) -> Result<bool, String> {
        if self.phase == Phase::Connecting {
            if ev & (libc::EPOLLOUT | libc::EPOLLERR | libc::EPOLLHUP) as u32 == 0 {
                return Ok(false);
            }
            match self.sock.take_error() {
                Ok(None) => self.phase = Phase::Handshaking,
                Ok(Some(e)) | Err(e) => return Err(format!("connect: {e}")),
            }
        }
        loop {
            while self.tls.wants_write() {
                match self.tls.write_tls(&mut self.sock) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(format!("{}: write: {e}", self.doing())),
                }
            }
            if self.phase == Phase::Handshaking && !self.tls.is_handshaking() {
                let resumed = self.tls.handshake_kind() == Some(HandshakeKind::Resumed);
                self.handshake = Some((now_ns().saturating_sub(self.started), resumed));
                self.phase = Phase::AwaitingPong;
                self.tls.writer().write_all(PING).map_err(|e| format!("TLS write: {e}"))?;
                continue;
            }
            if self.phase == Phase::AwaitingPong {
                match self.tls.reader().read(&mut self.pong[self.got..]) {
                    Ok(0) => return Err("the server closed the connection before PONG".into()),
                    Ok(n) => {
                        self.got += n;
                        if self.got > PONG.len() || !PONG.starts_with(&self.pong[..self.got]) {
                            return Err(format!(
                                "answer to PING was {:?}, not PONG",
                                String::from_utf8_lossy(&self.pong[..self.got])
                            ));
                        }
                        if self.got == PONG.len() {
                            return Ok(true);
                        }
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(format!("awaiting PONG: {e}")),
                }
            }
            match self.tls.read_tls(&mut self.sock) {
                Ok(0) => return Err(format!("{}: the server closed the connection", self.doing())),
                Ok(_) => {
                    if let Err(e) = self.tls.process_new_packets() {
                        // Send the alert rustls queued, best effort.
                        let _ = self.tls.write_tls(&mut self.sock);
                        return Err(format!("{}: {e}", self.doing()));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(format!("{}: read: {e}", self.doing())),
            }
        }
    }

    fn doing(&self) -> &'static str {
        match self.phase {
            Phase::Connecting => "connect",
            Phase::Handshaking => "TLS handshake",
            Phase::AwaitingPong => "awaiting PONG",
        }
    }

    /// The readiness to wait for next.
    fn wanted(&self) -> u32 {
        let out = self.phase == Phase::Connecting || self.tls.wants_write();
        libc::EPOLLIN as u32 | if out { libc::EPOLLOUT as u32 } else { 0 }
    }

    /// close_notify if the socket takes it, then close (the fd leaves the epoll set with it).
    fn close(mut self) {
        self.tls.send_close_notify();
        let _ = self.tls.write_tls(&mut self.sock);
    }
}

/// How long a slot waits after a failed attempt before the next, so a server that refuses
/// every connection is reported, not hammered by a spinning generator.
const RETRY_AFTER_ERROR_NS: u64 = 1_000_000;

/// The handshake mode for one generator thread: `plan.connections` attempts in flight, each a
/// new connection (connect, handshake, PING, PONG, close) replaced as soon as it ends. An
/// attempt started in the measured window counts: completed with its handshake latency (from
/// connect to handshake done), as full or resumed, or as an error. None completing while some
/// failed is an error of the run carrying the first failure's text.
pub fn run_handshakes(c: &Config, plan: &ThreadPlan, shared: &Shared) -> Result<Counts, String> {
    let addr = crate::client::resolve(&c.server)?;
    let cfg = client_config(c)?;
    let name = server_name(c)?;
    let mut ep = Epoll::new().map_err(|e| format!("epoll: {e}"))?;
    let mut slots: Vec<Option<Attempt>> = (0..plan.connections).map(|_| None).collect();
    let mut retry_at = vec![0u64; plan.connections];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut counts = Counts::new();
    let mut first_error: Option<String> = None;
    let mut progress = Progress::default();

    let Some(win) = shared.gate.arrive(&shared.abort) else { return Ok(counts) };
    while now_ns() < win.start {
        std::hint::spin_loop();
    }
    counts.went_at = now_ns();
    let mut last_scan = 0u64;
    // The first attempts go out whenever the thread gets going, as a closed loop's first
    // requests do, so a machine that ran it only after the window is told apart from a server
    // that never answers (run::no_answer_reason).
    let mut first = true;
    loop {
        let now = now_ns();
        let abort = shared.abort.load(Ordering::Relaxed);
        let issuing = now < win.end && !abort;
        let inflight = slots.iter().filter(|s| s.is_some()).count();
        if !issuing && !first && (inflight == 0 || now >= win.drain_end || abort) {
            break;
        }
        let mut failed = |t0: u64, why: String, counts: &mut Counts| {
            progress.errors += 1;
            if win.measured(t0) {
                counts.errors += 1;
            }
            first_error.get_or_insert(why);
        };
        // New attempts only here, between event batches, so an event still queued for a
        // closed socket never reaches its slot's successor.
        let first_now = std::mem::take(&mut first);
        if issuing || first_now {
            for (i, slot) in slots.iter_mut().enumerate() {
                if slot.is_some() || retry_at[i] > now {
                    continue;
                }
                counts.sent_all += 1;
                if win.measured(now) {
                    counts.issued += 1;
                }
                let a = Attempt::start(addr, &cfg, &name).and_then(|mut a| {
                    a.events = a.wanted();
                    ep.ctl(libc::EPOLL_CTL_ADD, a.sock.as_raw_fd(), a.events, i as u64)
                        .map_err(|e| format!("epoll_ctl: {e}"))?;
                    Ok(a)
                });
                match a {
                    Ok(a) => *slot = Some(a),
                    Err(why) => {
                        failed(now, why, &mut counts);
                        retry_at[i] = now + RETRY_AFTER_ERROR_NS;
                    }
                }
            }
        }
        if now >= last_scan + 10_000_000 {
            last_scan = now;
            for (i, slot) in slots.iter_mut().enumerate() {
                let late = |a: &Attempt| {
                    now.saturating_sub(a.started) > HANDSHAKE_TIMEOUT.as_nanos() as u64
                };
                if slot.as_ref().is_some_and(late) {
                    let a = slot.take().expect("checked");
                    failed(
                        a.started,
                        format!(
                            "{}: no progress within {} s",
                            a.doing(),
                            HANDSHAKE_TIMEOUT.as_secs()
                        ),
                        &mut counts,
                    );
                    retry_at[i] = now + RETRY_AFTER_ERROR_NS;
                }
            }
        }
        let next_retry = retry_at
            .iter()
            .zip(&slots)
            .filter(|(_, s)| s.is_none())
            .map(|(&t, _)| t)
            .min()
            .unwrap_or(u64::MAX);
        let deadline = if issuing { win.end.min(next_retry.max(now)) } else { win.drain_end };
        let deadline = deadline.min(now + 10_000_000);
        // a handshake run is a closed loop: it sleeps in epoll_wait unless the deadline is close
        let n = ep
            .wait(&mut events, now, deadline, crate::client::spin_ns(c, true))
            .map_err(|e| format!("epoll_wait: {e}"))?;
        for ev in &events[..n] {
            if ev.u64 == TIMER_TOKEN {
                ep.clear_timer();
                continue;
            }
            let i = ev.u64 as usize;
            let Some(a) = slots[i].as_mut() else { continue };
            match a.advance(ev.events) {
                Ok(false) => {
                    let want = a.wanted();
                    if want != a.events {
                        a.events = want;
                        ep.ctl(libc::EPOLL_CTL_MOD, a.sock.as_raw_fd(), want, i as u64)
                            .map_err(|e| format!("epoll_ctl: {e}"))?;
                    }
                }
                Ok(true) => {
                    let a = slots[i].take().expect("present");
                    let t = now_ns();
                    progress.answered += 1;
                    if counts.first_answer_at == 0 {
                        counts.first_answer_at = t;
                    }
                    if win.measured(a.started) {
                        let (ns, resumed) = a.handshake.expect("done before PONG");
                        counts.completed += 1;
                        counts.record(ns);
                        if resumed {
                            counts.tls_resumed += 1;
                        } else {
                            counts.tls_full += 1;
                        }
                    }
                    a.close();
                }
                Err(why) => {
                    let a = slots[i].take().expect("present");
                    failed(a.started, why, &mut counts);
                    retry_at[i] = now_ns() + RETRY_AFTER_ERROR_NS;
                }
            }
        }
        progress.publish(shared, false);
    }
    progress.publish(shared, true);
    counts.answered_all = progress.answered;
    let end = now_ns();
    for a in slots.into_iter().flatten() {
        counts.unanswered += 1;
        if win.measured(a.started) {
            counts.record(end.saturating_sub(a.started));
        }
    }
    if progress.answered == 0 {
        if let Some(why) = first_error {
            return Err(format!(
                "{}: no handshake succeeded ({} failed); the first: {why}",
                c.server, progress.errors
            ));
        }
    }
    if let Some(why) = first_error {
        counts.first_error.get_or_insert(why);
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_is_taken_from_the_server_address() {
        assert_eq!(host_of("127.0.0.1:11211"), "127.0.0.1");
        assert_eq!(host_of("[::1]:443"), "::1");
        assert_eq!(host_of("cache.example:11211"), "cache.example");
    }

    #[test]
    fn server_name_prefers_sni_and_refuses_garbage() {
        let mut c = Config { server: "127.0.0.1:1".into(), ..Config::default() };
        assert!(matches!(server_name(&c).unwrap(), ServerName::IpAddress(_)));
        c.tls_sni = Some("localhost".into());
        assert!(matches!(server_name(&c).unwrap(), ServerName::DnsName(_)));
        c.tls_sni = Some("not a name!".into());
        assert!(server_name(&c).unwrap_err().contains("--tls-sni"));
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("p99-bench-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("empty.pem");
        std::fs::write(&f, "not a certificate\n").unwrap();
        let c = Config { tls: true, tls_ca: Some(f.display().to_string()), ..Config::default() };
        let e = client_config(&c).unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
        let c = Config { tls_ca: Some(dir.join("missing.pem").display().to_string()), ..c };
        assert!(client_config(&c).unwrap_err().contains("missing.pem"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
