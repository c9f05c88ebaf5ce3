//! `p99_tls_config`: TLS settings an engine serves with (`p99_engine_config.tls`), and
//! `p99_close_reason`: why a connection closed, TLS failures included.
//!
//! The settings struct is filled by C and read once, by `p99_engine_start`; every pointer in
//! it is borrowed until that call returns (files are read, bytes copied, during the call).

#![allow(clippy::missing_safety_doc)]

use std::ffi::{c_char, CStr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::boundary::{c_arg, guard, guard_or, struct_size, CResult, Failure, Versioned};
use super::status::p99_status;
use crate::engine::{CloseReason, Pem, TlsConfig, TlsSettings, TlsVersion};

/// TLS protocol version 1.2, as `p99_tls_config.min_version` takes it.
pub const P99_TLS_VERSION_1_2: u16 = 0x0303;
/// TLS protocol version 1.3, as `p99_tls_config.min_version` takes it.
pub const P99_TLS_VERSION_1_3: u16 = 0x0304;

/// TLS settings for an engine: every connection it accepts is TLS, terminated in the
/// worker (rustls), so callbacks see and send plaintext. Set `struct_size`, fill with
/// `p99_tls_config_defaults`, set the certificate and key, and point
/// `p99_engine_config.tls` at it. Every pointer is borrowed until `p99_engine_start`
/// returns; nothing is kept.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct p99_tls_config {
    /// `sizeof(p99_tls_config)`, set by the caller before `p99_tls_config_defaults`.
    pub struct_size: u32,
    /// Path of a PEM file with the server's certificate chain, leaf first. NULL: use
    /// `cert_chain_pem` instead.
    pub cert_chain_file: *const c_char,
    /// The certificate chain as PEM text in memory (`cert_chain_pem_len` bytes, no NUL
    /// needed), used when `cert_chain_file` is NULL.
    pub cert_chain_pem: *const u8,
    /// Length of `cert_chain_pem`.
    pub cert_chain_pem_len: usize,
    /// Path of a PEM file with the leaf certificate's private key (PKCS#8, PKCS#1 or SEC1).
    /// NULL: use `key_pem` instead.
    pub key_file: *const c_char,
    /// The private key as PEM text in memory, used when `key_file` is NULL.
    pub key_pem: *const u8,
    /// Length of `key_pem`.
    pub key_pem_len: usize,
    /// Path of a PEM file of CA certificates that client certificates are verified against.
    /// NULL (default): no client certificate is asked for.
    pub client_ca_file: *const c_char,
    /// With `client_ca_file`: accept clients that present no certificate (a presented one
    /// must still verify). Default false: a client certificate is required.
    pub client_cert_optional: bool,
    /// ALPN protocols to accept, comma-separated, most preferred first (e.g.
    /// "memcached,http/1.1"). NULL or "" (default): no ALPN.
    pub alpn: *const c_char,
    /// Lowest protocol version accepted: `P99_TLS_VERSION_1_2` (default) or
    /// `P99_TLS_VERSION_1_3`.
    pub min_version: u16,
    /// Resumption with stateless session tickets. Default true; when false, resumption uses
    /// a per-engine session cache.
    pub session_tickets: bool,
    /// A connection whose handshake has not finished within this many milliseconds is cut
    /// (its `on_close` reason is `P99_CLOSE_REASON_TLS_HANDSHAKE_TIMEOUT`). Default 10000.
    pub handshake_timeout_ms: u32,
}

// SAFETY: repr(C), struct_size first, fields of integer, bool and pointer types; later
// versions append fields.
unsafe impl Versioned for p99_tls_config {
    const NAME: &'static str = "p99_tls_config";
    /// The layout first published (0.2).
    const FIRST_SIZE: usize = std::mem::size_of::<p99_tls_config>();
}

impl Default for p99_tls_config {
    fn default() -> Self {
        p99_tls_config {
            struct_size: struct_size::<Self>(),
            cert_chain_file: std::ptr::null(),
            cert_chain_pem: std::ptr::null(),
            cert_chain_pem_len: 0,
            key_file: std::ptr::null(),
            key_pem: std::ptr::null(),
            key_pem_len: 0,
            client_ca_file: std::ptr::null(),
            client_cert_optional: false,
            alpn: std::ptr::null(),
            min_version: P99_TLS_VERSION_1_2,
            session_tickets: true,
            handshake_timeout_ms: 10_000,
        }
    }
}

/// Fills `*config` with the defaults (see each field; no certificate or key); the caller
/// sets `config->struct_size` first, and at most that many bytes are written. Errors: NULL,
/// `P99_STATUS_INVALID_ARGUMENT` (a `struct_size` below the first published size).
/// Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn p99_tls_config_defaults(config: *mut p99_tls_config) -> p99_status {
    guard(|| -> CResult {
        c_arg!(versioned_out config)?.write(p99_tls_config::default());
        Ok(())
    })
}

/// A path field as a `PathBuf`; NULL is `None`. `name` names the field in errors.
fn path(p: *const c_char, name: &'static str) -> Result<Option<PathBuf>, Failure> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: the p99_tls_config contract: a non-NULL path field is a NUL-terminated string
    // borrowed until p99_engine_start returns.
    let s = unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| Failure::invalid(format!("tls->{name} is not UTF-8")))?;
    Ok(Some(PathBuf::from(s)))
}

/// The file, or else the in-memory PEM; neither is an invalid argument.
fn pem(
    file: *const c_char,
    bytes: *const u8,
    len: usize,
    name: &'static str,
) -> Result<Pem, Failure> {
    if let Some(p) = path(file, name)? {
        return Ok(Pem::File(p));
    }
    if len == 0 {
        return Err(Failure::invalid(format!("tls: neither {name}_file nor {name}_pem is set")));
    }
    // SAFETY: the p99_tls_config contract: `len` readable bytes at the PEM field.
    let b = unsafe { super::boundary::slice_from(bytes, len, name) }?;
    Ok(Pem::Bytes(b.to_vec()))
}

/// Reads a caller's `p99_tls_config` (any published size) and loads it, for
/// `p99_engine_start` (`config` is its `tls` field, under the same contract). Errors: bad
/// values (`P99_STATUS_INVALID_ARGUMENT`), unreadable or unusable certificates, key or CA
/// (`P99_STATUS_TLS_CONFIG`), each with a message naming the file or field.
pub(super) fn load(config: *const p99_tls_config) -> Result<Option<Arc<TlsConfig>>, Failure> {
    if config.is_null() {
        return Ok(None);
    }
    let c = c_arg!(versioned_in config, p99_tls_config::default())?;
    let chain = pem(c.cert_chain_file, c.cert_chain_pem, c.cert_chain_pem_len, "cert_chain")?;
    let key = pem(c.key_file, c.key_pem, c.key_pem_len, "key")?;
    let mut s = TlsSettings::new(chain, key);
    s.client_ca = path(c.client_ca_file, "client_ca_file")?.map(Pem::File);
    s.client_cert_optional = c.client_cert_optional;
    if let Some(alpn) = path(c.alpn, "alpn")? {
        let list = alpn.to_string_lossy().into_owned();
        s.alpn = list.split(',').filter(|p| !p.is_empty()).map(|p| p.as_bytes().to_vec()).collect();
    }
    s.min_version = match c.min_version {
        P99_TLS_VERSION_1_2 => TlsVersion::Tls12,
        P99_TLS_VERSION_1_3 => TlsVersion::Tls13,
        v => {
            return Err(Failure::invalid(format!(
                "tls->min_version {v:#06x} is neither P99_TLS_VERSION_1_2 nor _1_3"
            )))
        }
    };
    s.session_tickets = c.session_tickets;
    if c.handshake_timeout_ms == 0 {
        return Err(Failure::invalid("tls->handshake_timeout_ms is 0"));
    }
    s.handshake_timeout = Duration::from_millis(c.handshake_timeout_ms as u64);
    Ok(Some(Arc::new(TlsConfig::new(&s)?)))
}

/// Why a connection closed, as `p99_worker_conn_close_reason` reports it. Values are fixed
/// forever, like `p99_status`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum p99_close_reason {
    /// The application closed it (`p99_worker_close`), or the engine stopped.
    Local = 0,
    /// The peer ended the stream (TCP FIN; over TLS, after its close_notify).
    PeerClosed = 1,
    /// The socket failed (reset, a send or receive error); the detail gives the error.
    IoError = 2,
    /// The TLS handshake failed: not TLS, no common version or cipher, a missing or rejected
    /// client certificate, a fatal alert, or the peer left mid-handshake.
    TlsHandshake = 3,
    /// The TLS handshake did not finish within `handshake_timeout_ms`.
    TlsHandshakeTimeout = 4,
    /// After the handshake the TLS record layer failed: a malformed, oversized or
    /// undecryptable record, or a fatal alert from the peer.
    TlsProtocol = 5,
    /// The peer closed the TCP stream without TLS close_notify (possibly mid-record).
    TlsTruncated = 6,
}

impl From<CloseReason> for p99_close_reason {
    fn from(r: CloseReason) -> Self {
        match r {
            CloseReason::Local => p99_close_reason::Local,
            CloseReason::PeerClosed => p99_close_reason::PeerClosed,
            CloseReason::Io => p99_close_reason::IoError,
            CloseReason::TlsHandshake => p99_close_reason::TlsHandshake,
            CloseReason::TlsHandshakeTimeout => p99_close_reason::TlsHandshakeTimeout,
            CloseReason::TlsProtocol => p99_close_reason::TlsProtocol,
            CloseReason::TlsTruncated => p99_close_reason::TlsTruncated,
        }
    }
}

/// A static description of `reason` ("unknown close reason" for a value not listed). Never
/// NULL; owned by libp99, valid for the life of the process. Thread-safe.
#[no_mangle]
pub extern "C" fn p99_close_reason_str(reason: u32) -> *const c_char {
    guard_or(c"unknown close reason".as_ptr(), || {
        let s: &'static CStr = match reason {
            0 => c"closed locally",
            1 => c"peer closed the connection",
            2 => c"socket error",
            3 => c"TLS handshake failed",
            4 => c"TLS handshake timed out",
            5 => c"TLS protocol error",
            6 => c"peer closed without TLS close_notify",
            _ => c"unknown close reason",
        };
        s.as_ptr()
    })
}
