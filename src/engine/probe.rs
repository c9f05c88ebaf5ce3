//! Chooses the backend once per process: io_uring when the kernel really delivers what the
//! engine uses (ring setup, the opcodes, a provided buffer ring and a live multishot recv on a
//! socketpair), epoll otherwise. `P99_BACKEND=uring|epoll` forces one.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

use io_uring::{cqueue, opcode, types, IoUring};

use super::bufring::ProvidedBufRing;

/// The event loop the engine runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// io_uring: multishot accept and recv, provided buffer ring.
    Uring,
    /// epoll readiness with non-blocking system calls.
    Epoll,
}

impl Backend {
    /// "io_uring" or "epoll".
    pub fn name(self) -> &'static str {
        match self {
            Backend::Uring => "io_uring",
            Backend::Epoll => "epoll",
        }
    }
}

struct Choice {
    backend: Result<Backend, String>,
    reason: String,
}

static CHOICE: OnceLock<Choice> = OnceLock::new();
static URING: OnceLock<Result<&'static str, String>> = OnceLock::new();

/// Whether io_uring passes the probe here (cached per process): Ok names the ring setup it
/// got, Err says why not.
pub fn uring_usable() -> Result<&'static str, String> {
    URING.get_or_init(probe_on_own_thread).clone()
}

/// Runs [`probe_uring`] on a short-lived thread of its own and waits for it. The probe
/// submits on a ring and closes it; the kernel tears a closed ring down later, from a
/// workqueue, and then interrupts every thread that submitted on it (task work queued with
/// TWA_SIGNAL). On the caller's thread that interruption makes a blocking socket call with a
/// timeout (SO_RCVTIMEO/SO_SNDTIMEO) fail with EINTR, e.g. the next read of a C caller that
/// just started an engine. A thread that has exited is not interrupted.
fn probe_on_own_thread() -> Result<&'static str, String> {
    std::thread::Builder::new()
        .name("p99-uring-probe".into())
        .spawn(probe_uring)
        .map_err(|e| format!("probe thread: {e}"))?
        .join()
        .unwrap_or_else(|_| Err("probe thread panicked".into()))
}

fn choose() -> Choice {
    match std::env::var("P99_BACKEND").ok().as_deref() {
        Some("epoll") => {
            Choice { backend: Ok(Backend::Epoll), reason: "forced by P99_BACKEND=epoll".into() }
        }
        Some("uring") | Some("io_uring") => match uring_usable() {
            Ok(how) => Choice {
                backend: Ok(Backend::Uring),
                reason: format!("forced by P99_BACKEND=uring ({how})"),
            },
            Err(why) => Choice {
                backend: Err(format!("P99_BACKEND=uring but io_uring is unusable: {why}")),
                reason: why,
            },
        },
        Some(other) if !other.is_empty() => Choice {
            backend: Err(format!("P99_BACKEND={other}: expected uring or epoll")),
            reason: "bad P99_BACKEND".into(),
        },
        _ => match uring_usable() {
            Ok(how) => Choice { backend: Ok(Backend::Uring), reason: format!("probed ({how})") },
            Err(why) => {
                eprintln!("p99: io_uring unavailable ({why}); falling back to the epoll backend");
                Choice {
                    backend: Ok(Backend::Epoll),
                    reason: format!("io_uring unavailable: {why}"),
                }
            }
        },
    }
}

/// The backend engines in this process use (probing on first call), or why none can run
/// (only when `P99_BACKEND` asks for something unavailable or unknown).
pub fn backend() -> Result<Backend, String> {
    CHOICE.get_or_init(choose).backend.clone()
}

/// Why [`backend`] chose what it chose, e.g. "io_uring unavailable: io_uring_setup: Operation
/// not permitted (os error 1)".
pub fn reason() -> String {
    CHOICE.get_or_init(choose).reason.clone()
}

/// Builds a ring for the calling thread: `SINGLE_ISSUER | DEFER_TASKRUN` when the kernel
/// takes it, else `COOP_TASKRUN | TASKRUN_FLAG`. Returns which one it got.
pub(crate) fn build_ring(sq_entries: u32) -> io::Result<(IoUring, &'static str)> {
    let cq = sq_entries.saturating_mul(16).max(1024);
    let first = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_submit_all()
        .setup_cqsize(cq)
        .setup_clamp()
        .dontfork()
        .build(sq_entries);
    match first {
        Ok(r) => Ok((r, "single_issuer+defer_taskrun")),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoUring::builder()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_submit_all()
            .setup_cqsize(cq)
            .setup_clamp()
            .dontfork()
            .build(sq_entries)
            .map(|r| (r, "coop_taskrun")),
        Err(e) => Err(e),
    }
}

fn probe_uring() -> Result<&'static str, String> {
    let (ring, how) = build_ring(8).map_err(|e| {
        let sysctl =
            std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").unwrap_or_default();
        match sysctl.trim() {
            "1" | "2" => format!("io_uring_setup: {e}; kernel.io_uring_disabled={}", sysctl.trim()),
            _ => format!("io_uring_setup: {e}"),
        }
    })?;
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(|e| format!("register_probe: {e}"))?;
    for (code, name) in [
        (opcode::AcceptMulti::CODE, "accept"),
        (opcode::RecvMulti::CODE, "recv"),
        (opcode::SendMsg::CODE, "sendmsg"),
        (opcode::AsyncCancel::CODE, "async_cancel"),
        (opcode::Read::CODE, "read"),
    ] {
        if !probe.is_supported(code) {
            return Err(format!("opcode {name} not supported"));
        }
    }
    live_multishot_recv(ring).map_err(|e| format!("multishot recv check: {e}"))?;
    Ok(how)
}

/// Arms a multishot recv on a socketpair with a 2-buffer ring, writes one byte and expects a
/// completion carrying a selected buffer and `F_MORE`.
fn live_multishot_recv(mut ring: IoUring) -> Result<(), String> {
    let mut bufs =
        ProvidedBufRing::new(&ring, 0, 2, 64).map_err(|e| format!("buffer ring: {e}"))?;
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two fds into the array.
    if unsafe {
        libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr())
    } != 0
    {
        return Err(format!("socketpair: {}", io::Error::last_os_error()));
    }
    // SAFETY: fresh fds owned by nobody else.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let recv = opcode::RecvMulti::new(types::Fd(a.as_raw_fd()), 0).build().user_data(1);
    // SAFETY: the recv uses the registered buffer ring, which outlives it (it is ended below).
    unsafe { ring.submission().push(&recv).map_err(|_| "submission queue full".to_string())? };
    ring.submit().map_err(|e| format!("submit: {e}"))?;
    // SAFETY: writes one byte from a static.
    unsafe { libc::write(b.as_raw_fd(), b"x".as_ptr().cast(), 1) };
    let ts = types::Timespec::new().sec(1);
    let args = types::SubmitArgs::new().timespec(&ts);
    let mut outcome = Err("no completion within 1 s".to_string());
    let mut finished = false;
    for _ in 0..2 {
        match ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
            Err(e) => return Err(format!("wait: {e}")),
        }
        for cqe in ring.completion() {
            if outcome.is_err() {
                outcome = if cqe.result() == 1
                    && cqueue::buffer_select(cqe.flags()).is_some()
                    && cqueue::more(cqe.flags())
                {
                    Ok(())
                } else {
                    Err(format!(
                        "unexpected completion res={} flags={:#x}",
                        cqe.result(),
                        cqe.flags()
                    ))
                };
            }
            if !cqueue::more(cqe.flags()) {
                finished = true;
            }
        }
        if outcome.is_ok() {
            break;
        }
    }
    // End the recv before the buffer ring goes away: a shutdown makes it complete with 0.
    // SAFETY: shutdown on an fd we own.
    unsafe { libc::shutdown(a.as_raw_fd(), libc::SHUT_RDWR) };
    for _ in 0..10 {
        if finished {
            break;
        }
        match ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e)
                if e.raw_os_error() == Some(libc::ETIME)
                    || e.raw_os_error() == Some(libc::EINTR) => {}
            Err(_) => break,
        }
        for cqe in ring.completion() {
            if !cqueue::more(cqe.flags()) {
                finished = true;
            }
        }
    }
    bufs.unregister(&ring);
    drop(ring);
    drop(bufs);
    outcome
}
