//! `p99_status`: the single status type every fallible C entry point returns, its texts, and
//! the conversions from the safe cores' errors (with the detail each one carries for
//! `p99_last_error_message()`).

use std::ffi::c_char;

use super::boundary::Failure;
use crate::{cache, engine, xdp};

/// Generates `p99_status::ALL`, `p99_status::from_u32` and `p99_status::message` from one
/// table of `Variant => "text"`.
macro_rules! status_texts {
    ($($name:ident => $text:literal,)+) => {
        impl p99_status {
            /// Every status, in declaration order.
            pub const ALL: &'static [p99_status] = &[$(p99_status::$name),+];

            /// The status with numeric value `v`, if there is one.
            pub fn from_u32(v: u32) -> Option<p99_status> {
                Self::ALL.iter().copied().find(|s| *s as u32 == v)
            }

            /// A short English description, NUL-terminated so C can use it directly.
            pub fn message(self) -> &'static str {
                match self {
                    $(p99_status::$name => concat!($text, "\0"),)+
                }
            }
        }
    };
}

/// Result of a libp99 call. `P99_STATUS_OK` (0) is success; every other value names one
/// failure. Values are fixed forever: new ones are added, none is ever reused or renumbered,
/// so C code may store and compare them as plain integers (the type is 32 bits wide whatever
/// the C compiler does with enums). 0-31 are general; 32-47 belong to the cache module,
/// 48-63 to the engine, 64-79 to XDP sockets.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum p99_status {
    /// Success.
    Ok = 0,
    /// A required pointer argument was NULL.
    NullParameter = 1,
    /// An argument was out of range or inconsistent (e.g. a zero-length key, a bad flag).
    InvalidArgument = 2,
    /// Memory (or another fixed resource such as the cache heap) could not be allocated.
    OutOfMemory = 3,
    /// An input is larger than the configured limit (key, value, item, frame).
    TooLarge = 4,
    /// The item, connection or object asked for does not exist.
    NotFound = 5,
    /// The item already exists (add on a present key, CAS mismatch).
    Exists = 6,
    /// The write was not applied by its semantics (replace/append on a missing key).
    NotStored = 7,
    /// The resource is busy (e.g. a queue is still held by another socket).
    Busy = 8,
    /// The operation would block; retry when the fd is ready.
    WouldBlock = 9,
    /// The kernel or device lacks the feature (no io_uring, no zero-copy, ...).
    Unsupported = 10,
    /// A system call failed; `p99_last_errno()` gives the errno on this thread.
    IoError = 11,
    /// A panic was caught inside libp99; the call had no effect that C can rely on.
    Panic = 12,
    /// The call was made from a thread that does not own the object.
    WrongThread = 13,
    /// The handle refers to an object that has since been closed or reused.
    StaleHandle = 14,
    /// An output buffer is too small; the out-length (if any) holds the size needed.
    BufferTooSmall = 15,
    /// incr/decr on a value that is not a decimal 64-bit unsigned number.
    NonNumeric = 16,
    /// The object is not in a state where this call is allowed (e.g. commit before the value
    /// is complete, release twice).
    InvalidState = 17,
    /// The object (engine, connection, socket) has been closed or stopped.
    Closed = 18,
    /// The operation did not finish within its time limit.
    TimedOut = 19,
    /// The caller lacks the privilege the operation needs (e.g. CAP_NET_ADMIN, CAP_BPF).
    PermissionDenied = 20,
    /// The named device or queue does not exist.
    NoDevice = 21,
    /// The engine's TLS configuration could not be used: a certificate, key or CA file is
    /// unreadable or not PEM, the key does not match the certificate, or a TLS setting is
    /// out of range.
    TlsConfig = 48,
}

// The text of each status, and with it the list `from_u32` searches. The match in
// `message` is exhaustive and names each variant, so a status added to the enum without a
// text here (or a text for a name the enum lacks) does not compile.
status_texts! {
    Ok => "ok",
    NullParameter => "a required pointer argument was NULL",
    InvalidArgument => "invalid argument",
    OutOfMemory => "out of memory",
    TooLarge => "too large",
    NotFound => "not found",
    Exists => "exists",
    NotStored => "not stored",
    Busy => "busy",
    WouldBlock => "would block",
    Unsupported => "not supported by this kernel or device",
    IoError => "I/O error (see p99_last_errno)",
    Panic => "internal panic caught at the C boundary",
    WrongThread => "called from a thread that does not own the object",
    StaleHandle => "stale handle",
    BufferTooSmall => "buffer too small",
    NonNumeric => "value is not a decimal unsigned 64-bit number",
    InvalidState => "object is not in a state that allows this call",
    Closed => "closed",
    TimedOut => "timed out",
    PermissionDenied => "permission denied",
    NoDevice => "no such device or queue",
    TlsConfig => "TLS configuration unusable (certificate, key or CA)",
}

impl p99_status {
    /// The status for an OS error, recording its errno for `p99_last_errno()`.
    pub fn from_io_error(err: &std::io::Error) -> p99_status {
        let errno = err.raw_os_error().unwrap_or(0);
        crate::ffi::boundary::set_last_errno(errno);
        match errno {
            libc::ENOMEM => Self::OutOfMemory,
            libc::EAGAIN => Self::WouldBlock,
            libc::EBUSY => Self::Busy,
            libc::EPERM | libc::EACCES => Self::PermissionDenied,
            libc::ENODEV | libc::ENXIO => Self::NoDevice,
            libc::EOPNOTSUPP | libc::ENOSYS => Self::Unsupported,
            libc::ETIMEDOUT => Self::TimedOut,
            _ => Self::IoError,
        }
    }
}

/// Cache errors: the status says everything (which key, which mode is the caller's own call).
impl From<cache::Error> for Failure {
    fn from(e: cache::Error) -> Failure {
        Failure::from(match e {
            cache::Error::InvalidArgument => p99_status::InvalidArgument,
            cache::Error::TooLarge => p99_status::TooLarge,
            cache::Error::NotFound => p99_status::NotFound,
            cache::Error::Exists => p99_status::Exists,
            cache::Error::NotStored => p99_status::NotStored,
            cache::Error::NonNumeric => p99_status::NonNumeric,
            cache::Error::InvalidState => p99_status::InvalidState,
            cache::Error::OutOfMemory => p99_status::OutOfMemory,
            cache::Error::Poisoned => p99_status::Panic,
        })
    }
}

/// Engine errors: configuration, backend and system-call failures keep their text.
impl From<engine::Error> for Failure {
    fn from(e: engine::Error) -> Failure {
        match &e {
            engine::Error::InvalidConfig(_) => {
                Failure::new(p99_status::InvalidArgument, e.to_string())
            }
            engine::Error::StaleHandle => p99_status::StaleHandle.into(),
            engine::Error::Closed => p99_status::Closed.into(),
            engine::Error::WrongThread => p99_status::WrongThread.into(),
            engine::Error::Unsupported(_) => Failure::new(p99_status::Unsupported, e.to_string()),
            engine::Error::Io(err) => Failure::new(p99_status::from_io_error(err), e.to_string()),
            engine::Error::Tls(_) => Failure::new(p99_status::TlsConfig, e.to_string()),
        }
    }
}

/// XDP errors: every one keeps its text (the verifier log included); those caused by a system
/// call also record its errno.
impl From<xdp::Error> for Failure {
    fn from(e: xdp::Error) -> Failure {
        let with_errno = |err: &std::io::Error, s: p99_status| {
            crate::ffi::boundary::set_last_errno(err.raw_os_error().unwrap_or(0));
            s
        };
        let status = match &e {
            xdp::Error::Os { err, .. } => p99_status::from_io_error(err),
            xdp::Error::Invalid(_) | xdp::Error::BadFrame(_) => p99_status::InvalidArgument,
            xdp::Error::Unsupported { err, .. } => with_errno(err, p99_status::Unsupported),
            xdp::Error::Busy { err, .. } => with_errno(err, p99_status::Busy),
            xdp::Error::MtuTooLarge(err) => with_errno(err, p99_status::TooLarge),
            xdp::Error::NoDevice { err, .. } | xdp::Error::NoQueue { err, .. } => {
                with_errno(err, p99_status::NoDevice)
            }
            xdp::Error::Verifier { err, .. } => with_errno(err, p99_status::InvalidArgument),
            xdp::Error::State(_) => p99_status::InvalidState,
        };
        Failure::new(status, e.to_string())
    }
}

/// Returns a static, NUL-terminated English description of `status`.
///
/// Never returns NULL: an unknown value gives "unknown status". The string is owned by
/// libp99 and valid for the life of the process. Thread-safe.
#[no_mangle]
pub extern "C" fn p99_status_str(status: u32) -> *const c_char {
    let text = p99_status::from_u32(status).map(p99_status::message).unwrap_or("unknown status\0");
    text.as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_maps_to_itself_with_its_own_text() {
        let mut texts = std::collections::HashSet::new();
        for i in 0..256 {
            if let Some(s) = p99_status::from_u32(i) {
                assert_eq!(s as u32, i, "from_u32 must map each value to itself");
                assert!(s.message().ends_with('\0'));
                assert!(texts.insert(s.message()), "{s:?} shares its text");
            }
        }
        // The general block is dense.
        for i in 0..=p99_status::NoDevice as u32 {
            assert!(p99_status::from_u32(i).is_some(), "general status {i} missing");
        }
    }

    #[test]
    fn unknown_status_has_text() {
        let p = p99_status_str(9999);
        // SAFETY: p99_status_str always returns a static NUL-terminated string.
        let s = unsafe { std::ffi::CStr::from_ptr(p) };
        assert_eq!(s.to_str().unwrap(), "unknown status");
    }
}
