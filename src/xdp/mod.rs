//! AF_XDP sockets: UMEM with a per-frame state table, the four SPSC rings, sockets bound to one
//! (interface, queue), a built-in eBPF redirect program loaded with raw bpf(2) and attached with
//! a BPF link, and the packet helpers the UDP ping responders need.
//!
//! Ownership model: a [`Umem`] owns the frame area, the kernel socket, and the FILL and
//! COMPLETION rings. One [`Socket`] is bound per umem (it uses the umem's kernel socket), and
//! owns the RX and TX rings. Frames move between states that the umem tracks:
//! free -> (fill) -> in FILL -> (recv) -> held by the user -> (send) -> in TX -> (reap) -> free,
//! or held -> (release) -> free, or free -> (alloc) -> held. Every address handed back by the
//! caller is checked against that table, so a frame is never in two rings and never leaks.
//!
//! Threading: rings are single-producer/single-consumer. A umem and its socket are `Send` and
//! may move between threads, but every data-path call takes `&mut self`; the frame table sits
//! behind a lock that is taken once per batch (uncontended in the intended one-thread use).

pub mod packet;
pub mod prog;
mod ring;
pub mod socket;
pub mod sys;
pub mod umem;

use std::fmt;
use std::io;

pub use prog::{AttachMode, Program, ProgramKind};
pub use socket::{BindMode, Socket, SocketConfig, Stats};
pub use sys::XdpDesc;
pub use umem::{Umem, UmemConfig};

/// What went wrong in the XDP module.
#[derive(Debug)]
pub enum Error {
    /// A system call failed.
    Os { op: &'static str, err: io::Error },
    /// A caller-supplied value was out of range or inconsistent.
    Invalid(String),
    /// A descriptor referred to a frame that is not in the state the call needs.
    BadFrame(String),
    /// The kernel or driver lacks the feature (e.g. zero-copy on veth).
    Unsupported { op: &'static str, err: io::Error },
    /// The interface or queue is held by someone else (another program or socket).
    Busy { what: String, err: io::Error },
    /// The interface MTU is too large for the requested XDP mode.
    MtuTooLarge(io::Error),
    /// No interface of that name exists in the calling thread's network namespace.
    NoDevice { name: String, err: io::Error },
    /// The interface has no such queue.
    NoQueue { ifindex: u32, queue: u32, err: io::Error },
    /// The verifier rejected the program; the log is included.
    Verifier { err: io::Error, log: String },
    /// The object is in a state that does not allow the call.
    State(&'static str),
}

impl Error {
    pub(crate) fn os(op: &'static str, err: io::Error) -> Error {
        Error::Os { op, err }
    }

    /// The errno behind the error, if one exists.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Os { err, .. }
            | Error::Unsupported { err, .. }
            | Error::Busy { err, .. }
            | Error::MtuTooLarge(err)
            | Error::NoDevice { err, .. }
            | Error::NoQueue { err, .. }
            | Error::Verifier { err, .. } => err.raw_os_error(),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Os { op, err } => write!(f, "{op}: {err}"),
            Error::Invalid(m) => write!(f, "invalid argument: {m}"),
            Error::BadFrame(m) => write!(f, "bad frame: {m}"),
            Error::Unsupported { op, err } => write!(f, "{op}: not supported here ({err})"),
            Error::Busy { what, err } => write!(f, "{what} is busy ({err})"),
            Error::MtuTooLarge(err) => {
                write!(f, "interface MTU too large for native XDP (use generic mode or a smaller MTU): {err}")
            }
            Error::NoDevice { name, err } => write!(f, "no interface named {name}: {err}"),
            Error::NoQueue { ifindex, queue, err } => {
                write!(f, "ifindex {ifindex} has no queue {queue} (bind: {err})")
            }
            Error::Verifier { err, log } => {
                write!(f, "program rejected by the verifier ({err}):\n{log}")
            }
            Error::State(m) => write!(f, "invalid state: {m}"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;
