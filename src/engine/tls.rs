//! TLS termination inside the worker (rustls, ring crypto provider). The handshake and the
//! record layer sit between the socket and the [`Handler`](super::Handler): ciphertext the
//! backend receives is decrypted before `on_data`, plaintext given to `send`/`send_borrowed`
//! is encrypted into the connection's ordinary output queue, and a close sends close_notify.
//! Everything the backends guarantee (ordering, back-pressure, generation handles,
//! exactly-once `on_close`) therefore holds unchanged: they only ever see ciphertext.
//!
//! ring is the provider because it builds with a C compiler alone (aws-lc-rs needs cmake and
//! a libclang-based build step on every machine that builds libp99) and keeps the library's
//! dependency tree small; both use assembly AES-GCM/ChaCha20 and P-256/X25519 on x86-64.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig, ServerConnection};

use super::conn::TimerId;
use super::Error;

/// Where PEM text comes from.
#[derive(Clone, Debug)]
pub enum Pem {
    /// A file, read once when the [`TlsConfig`] is built.
    File(PathBuf),
    /// PEM text held in memory.
    Bytes(Vec<u8>),
}

/// The lowest protocol version a TLS listener accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// What a TLS listener serves. [`TlsSettings::new`] gives the documented defaults.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    /// The server's certificate chain, leaf first.
    pub cert_chain: Pem,
    /// The private key of the leaf certificate (PKCS#8, PKCS#1 or SEC1).
    pub key: Pem,
    /// CA certificates client certificates are verified against; `None` (the default) asks
    /// no client certificate.
    pub client_ca: Option<Pem>,
    /// With `client_ca`: a client without a certificate is still accepted (one that presents
    /// a certificate must still present a valid one). Default false: a certificate is
    /// required.
    pub client_cert_optional: bool,
    /// ALPN protocols the server accepts, most preferred first; empty (the default) does
    /// not negotiate ALPN.
    pub alpn: Vec<Vec<u8>>,
    /// Lowest version accepted. Default TLS 1.2.
    pub min_version: TlsVersion,
    /// Resumption with stateless tickets (TLS 1.2 and 1.3). Default true. Without tickets
    /// resumption still works from a per-engine session cache.
    pub session_tickets: bool,
    /// A connection whose handshake has not finished by then is cut. Default 10 s.
    pub handshake_timeout: Duration,
}

impl TlsSettings {
    /// Settings serving `cert_chain` with `key`, with every other field at its default.
    pub fn new(cert_chain: Pem, key: Pem) -> TlsSettings {
        TlsSettings {
            cert_chain,
            key,
            client_ca: None,
            client_cert_optional: false,
            alpn: Vec::new(),
            min_version: TlsVersion::Tls12,
            session_tickets: true,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// A loaded TLS server configuration, shared by every worker of an engine (so a session
/// ticket issued by one worker resumes on another).
pub struct TlsConfig {
    pub(crate) server: Arc<ServerConfig>,
    pub(crate) handshake_timeout: Duration,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("alpn", &self.server.alpn_protocols)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// Session cache entries per engine (TLS 1.2 session ids, and TLS 1.3 when tickets are off).
const SESSION_CACHE_ENTRIES: usize = 4096;

fn pem_error(what: &str, src: &Pem, e: impl fmt::Display) -> Error {
    match src {
        Pem::File(p) => Error::Tls(format!("{what} {}: {e}", p.display())),
        Pem::Bytes(_) => Error::Tls(format!("{what} (PEM bytes): {e}")),
    }
}

fn load_certs(what: &str, src: &Pem) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs: Result<Vec<_>, _> = match src {
        Pem::File(p) => {
            CertificateDer::pem_file_iter(p).map_err(|e| pem_error(what, src, e))?.collect()
        }
        Pem::Bytes(b) => CertificateDer::pem_slice_iter(b).collect(),
    };
    let certs = certs.map_err(|e| pem_error(what, src, e))?;
    if certs.is_empty() {
        return Err(pem_error(what, src, "no CERTIFICATE block"));
    }
    Ok(certs)
}

fn load_key(src: &Pem) -> Result<PrivateKeyDer<'static>, Error> {
    match src {
        Pem::File(p) => PrivateKeyDer::from_pem_file(p),
        Pem::Bytes(b) => PrivateKeyDer::from_pem_slice(b),
    }
    .map_err(|e| pem_error("private key", src, e))
}

impl TlsConfig {
    /// Reads the certificates and key and builds the configuration; the error names the
    /// file or setting that is wrong.
    pub fn new(s: &TlsSettings) -> Result<TlsConfig, Error> {
        if s.handshake_timeout.is_zero() {
            return Err(Error::InvalidConfig("TLS handshake timeout must be positive"));
        }
        if s.alpn.iter().any(|p| p.is_empty() || p.len() > 255) {
            return Err(Error::InvalidConfig("ALPN protocol names must be 1..=255 bytes"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&'static rustls::SupportedProtocolVersion] = match s.min_version {
            TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let chain = load_certs("certificate chain", &s.cert_chain)?;
        let key = load_key(&s.key)?;
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(versions)
            .map_err(|e| Error::Tls(format!("protocol versions: {e}")))?;
        let builder = match &s.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in load_certs("client CA", ca)? {
                    roots.add(c).map_err(|e| pem_error("client CA", ca, e))?;
                }
                let mut v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                if s.client_cert_optional {
                    v = v.allow_unauthenticated();
                }
                let v = v.build().map_err(|e| pem_error("client CA", ca, e))?;
                builder.with_client_cert_verifier(v)
            }
        };
        let mut server = builder.with_single_cert(chain, key).map_err(|e| {
            Error::Tls(format!("certificate and key do not make a usable pair: {e}"))
        })?;
        server.alpn_protocols = s.alpn.clone();
        server.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
        if s.session_tickets {
            server.ticketer = rustls::crypto::ring::Ticketer::new()
                .map_err(|e| Error::Tls(format!("session ticket keys: {e}")))?;
        }
        Ok(TlsConfig { server: Arc::new(server), handshake_timeout: s.handshake_timeout })
    }
}

/// The TLS state of one connection.
pub(crate) struct TlsConn {
    pub session: ServerConnection,
    /// The handshake deadline; `None` once the handshake finished.
    pub deadline: Option<TimerId>,
    /// Cookies of borrowed sends made during the handshake: their plaintext waits inside
    /// rustls, so they are answered after the first ciphertext that carries it is queued.
    pub held_cookies: Vec<u64>,
    /// The peer sent close_notify.
    pub peer_closed: bool,
}

impl TlsConn {
    pub fn new(cfg: &TlsConfig) -> Result<TlsConn, rustls::Error> {
        let mut session = ServerConnection::new(Arc::clone(&cfg.server))?;
        // The engine bounds output itself (out_high_water); rustls's own 64 KiB limit would
        // make a plaintext write stop short.
        session.set_buffer_limit(None);
        Ok(TlsConn { session, deadline: None, held_cookies: Vec::new(), peer_closed: false })
    }
}
