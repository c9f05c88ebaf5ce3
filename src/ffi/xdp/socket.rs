//! `p99_xdp_socket`: an AF_XDP socket bound to one (interface, queue), with its RX and TX
//! rings, on a umem; and its statistics.
//!
//! Contract of every function here: pointer arguments are NULL (refused, or allowed where
//! the documentation says so) or valid for what the documentation describes, until return.
#![allow(clippy::missing_safety_doc)]

use std::ffi::{c_char, c_int};

use parking_lot::Mutex;

use super::super::boundary::{
    c_arg, guard, guard_or, struct_size, CResult, Failure, Handle, Versioned,
};
use super::super::status::p99_status;
use super::umem::{as_kernel, as_kernel_mut, p99_xdp_desc, p99_xdp_umem};
use crate::xdp::{BindMode, Socket, SocketConfig};

/// Bind mode: copy (works everywhere).
pub const P99_XDP_BIND_COPY: u32 = 0;
/// Bind mode: zero-copy (UNSUPPORTED where the driver lacks it, e.g. veth).
pub const P99_XDP_BIND_ZEROCOPY: u32 = 1;
/// Bind mode: zero-copy when available, else copy.
pub const P99_XDP_BIND_AUTO: u32 = 2;

/// Socket parameters. Set `struct_size = sizeof(p99_xdp_socket_config)`, fill with
/// `p99_xdp_socket_config_defaults`, then change fields.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct p99_xdp_socket_config {
    /// `sizeof(p99_xdp_socket_config)`, set by the caller.
    pub struct_size: u32,
    /// RX ring entries, a power of two (default 2048).
    pub rx_size: u32,
    /// TX ring entries, a power of two (default 2048).
    pub tx_size: u32,
    /// `P99_XDP_BIND_COPY` (default), `P99_XDP_BIND_ZEROCOPY` or `P99_XDP_BIND_AUTO`.
    pub bind_mode: u32,
    /// Non-zero (default): bind with XDP_USE_NEED_WAKEUP and kick the kernel only on request.
    pub need_wakeup: u32,
    /// How long bind retries while the queue is still held by a just-closed socket (default
    /// 500 ms); after that BUSY.
    pub bind_retry_ms: u32,
}

// SAFETY: repr(C), struct_size first, u32 fields only.
unsafe impl Versioned for p99_xdp_socket_config {
    const NAME: &'static str = "p99_xdp_socket_config";
    const FIRST_SIZE: usize = 24;
}

impl Default for p99_xdp_socket_config {
    fn default() -> Self {
        let d = SocketConfig::default();
        p99_xdp_socket_config {
            struct_size: struct_size::<Self>(),
            rx_size: d.rx_size,
            tx_size: d.tx_size,
            bind_mode: P99_XDP_BIND_COPY,
            need_wakeup: d.need_wakeup as u32,
            bind_retry_ms: d.bind_retry_ms,
        }
    }
}

/// Kernel statistics (XDP_STATISTICS) and libp99's own counters of one socket, from
/// `p99_xdp_socket_stats`. Set `struct_size` before the call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct p99_xdp_stats {
    /// `sizeof(p99_xdp_stats)`, set by the caller.
    pub struct_size: u32,
    /// Kernel: packets dropped for a reason other than invalid descriptors (e.g. too long).
    pub rx_dropped: u64,
    /// Kernel: invalid RX descriptors.
    pub rx_invalid_descs: u64,
    /// Kernel: invalid TX descriptors.
    pub tx_invalid_descs: u64,
    /// Kernel: packets dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Kernel: packets dropped because the FILL ring was empty.
    pub rx_fill_ring_empty_descs: u64,
    /// Kernel: times the TX ring was found empty.
    pub tx_ring_empty_descs: u64,
    /// Packets returned by `p99_xdp_socket_recv`.
    pub rx_packets: u64,
    /// Descriptors placed on the TX ring.
    pub tx_queued: u64,
    /// TX completions reaped.
    pub tx_completed: u64,
    /// TX frames completed by the kernel without being transmitted.
    pub tx_kernel_dropped: u64,
    /// Calls refused because a descriptor was bad (address, length, state, options).
    pub rejected_descs: u64,
    /// TX kicks (sendto) issued.
    pub tx_kicks: u64,
    /// FILL-ring wake-ups issued.
    pub fill_wakeups: u64,
    /// Bind attempts retried on EBUSY.
    pub bind_retries: u64,
}

// SAFETY: repr(C), struct_size first, integer fields only.
unsafe impl Versioned for p99_xdp_stats {
    const NAME: &'static str = "p99_xdp_stats";
    const FIRST_SIZE: usize = 120;
}

/// An AF_XDP socket bound to one (interface, queue), with RX and TX rings, on a umem.
///
/// Threading: every call is serialised internally and may come from any thread, but the rings
/// are single-producer/single-consumer: drive a socket (and its umem) from one thread.
/// `p99_xdp_socket_free` must not run concurrently with another call on the socket.
pub struct p99_xdp_socket {
    pub(super) sock: Mutex<Socket>,
}

impl Handle for p99_xdp_socket {}

/// Fills `*config` with the defaults. The caller sets `config->struct_size =
/// sizeof(p99_xdp_socket_config)` first; at most that many bytes are written and it is left
/// as set (INVALID_ARGUMENT if smaller than the first published struct). Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_socket_config_defaults(
    config: *mut p99_xdp_socket_config,
) -> p99_status {
    guard(|| -> CResult {
        c_arg!(versioned_out config)?.write(p99_xdp_socket_config::default());
        Ok(())
    })
}

/// Binds a socket on `umem` to queue `queue` of interface `ifname` (in the calling thread's
/// network namespace). A umem backs one socket (INVALID_STATE for a second). Errors:
/// NO_DEVICE (no such interface or queue), BUSY (queue held by another socket), UNSUPPORTED
/// (zero-copy asked where the driver lacks it), INVALID_ARGUMENT (bad ring sizes, bind mode or
/// `struct_size`). `config` may be NULL for the defaults; `ifname` (NUL-terminated) and
/// `config` are borrowed until return. On success `*out` receives the socket, freed with
/// `p99_xdp_socket_free`. Register it with a program (`p99_xdp_prog_register`) to receive
/// traffic. Thread-safe (serialised with other calls on `umem`).
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_socket_create(
    umem: *const p99_xdp_umem,
    ifname: *const c_char,
    queue: u32,
    config: *const p99_xdp_socket_config,
    out: *mut *mut p99_xdp_socket,
) -> p99_status {
    guard(|| -> CResult {
        let u = c_arg!(handle umem)?;
        let out = c_arg!(out out)?;
        let ifindex = super::ifindex_of(c_arg!(cstr ifname)?)?;
        let c = if config.is_null() {
            p99_xdp_socket_config::default()
        } else {
            c_arg!(versioned_in config, p99_xdp_socket_config::default())?
        };
        let mode = match c.bind_mode {
            P99_XDP_BIND_COPY => BindMode::Copy,
            P99_XDP_BIND_ZEROCOPY => BindMode::ZeroCopy,
            P99_XDP_BIND_AUTO => BindMode::Auto,
            _ => {
                return Err(Failure::invalid(
                    "bind_mode must be P99_XDP_BIND_COPY, _ZEROCOPY or _AUTO",
                ))
            }
        };
        let cfg = SocketConfig {
            rx_size: c.rx_size,
            tx_size: c.tx_size,
            mode,
            need_wakeup: c.need_wakeup != 0,
            bind_retry_ms: c.bind_retry_ms,
        };
        let sock = Socket::bind(&u.umem, ifindex, queue, cfg)?;
        out.write(p99_xdp_socket { sock: Mutex::new(sock) }.into_c());
        Ok(())
    })
}

/// Frees a socket; NULL is a no-op. Returns OK. Unmaps its rings; the kernel socket closes,
/// and the queue becomes free, once its umem is freed too. Consumes `sock`.
/// Must not run concurrently with any other call on `sock`.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_socket_free(sock: *mut p99_xdp_socket) -> p99_status {
    guard(|| -> CResult {
        drop(c_arg!(owned sock));
        Ok(())
    })
}

/// Takes up to `max` received packets: `descs[i].addr` is where packet i's data starts in the
/// umem (see `p99_xdp_umem_data`), `len` its length. `*count` receives how many (0 when none
/// is waiting; never blocks). The frames are held by the caller until sent or released.
/// `descs` (room for `max` descs) is borrowed until return.
/// Thread-safe: calls on one socket are serialised internally.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_socket_recv(
    sock: *const p99_xdp_socket,
    descs: *mut p99_xdp_desc,
    max: u32,
    count: *mut u32,
) -> p99_status {
    guard(|| -> CResult {
        let s = c_arg!(handle sock)?;
        let count = c_arg!(out count)?;
        let out = c_arg!(slice_mut descs, max as usize)?;
        count.write(s.sock.lock().recv(as_kernel_mut(out)));
        Ok(())
    })
}

/// Queues `count` held frames for transmission (`len` bytes from `addr`, inside one frame) and
/// kicks the kernel. The batch is checked first: if any desc is bad (outside the umem, not
/// held, empty, crossing its frame, options set, listed twice) nothing is queued and
/// INVALID_ARGUMENT is returned (the frames stay held; see `p99_last_error_message`).
/// `*queued` (may be NULL) receives how many were queued: the first `*queued` descs, fewer
/// than `count` when the TX ring is full — the rest stay held for a later call. `descs`
/// (`count` descs) is borrowed until return.
/// Thread-safe: calls on one socket are serialised internally.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_socket_send(
    sock: *const p99_xdp_socket,
    descs: *const p99_xdp_desc,
    count: u32,
    queued: *mut u32,
) -> p99_status {
    guard(|| -> CResult {
        let s = c_arg!(handle sock)?;
        let ds = c_arg!(slice descs, count as usize)?;
        let n = s.sock.lock().send(as_kernel(ds))?;
        if let Some(out) = c_arg!(opt_out queued) {
            out.write(n);
        }
        Ok(())
    })
}

/// Kicks transmission of descriptors still on the TX ring (copy mode moves a bounded batch
/// per kick; `p99_xdp_socket_send` already kicks). `*pending` (may be NULL) receives how many
/// remain on the ring.
/// Thread-safe: calls on one socket are serialised internally.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_socket_kick(
    sock: *const p99_xdp_socket,
    pending: *mut u32,
) -> p99_status {
    guard(|| -> CResult {
        let s = c_arg!(handle sock)?;
        let mut g = s.sock.lock();
        g.kick()?;
        if let Some(out) = c_arg!(opt_out pending) {
            out.write(g.tx_pending());
        }
        Ok(())
    })
}

/// Waits up to `timeout_ms` (-1: forever, 0: just check) for received packets; `*ready`
/// receives 1 if RX has packets, else 0.
/// Thread-safe: serialised with other calls on `sock`, except the wait, which holds no lock.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_socket_wait(
    sock: *const p99_xdp_socket,
    timeout_ms: c_int,
    ready: *mut u32,
) -> p99_status {
    guard(|| -> CResult {
        let s = c_arg!(handle sock)?;
        let ready = c_arg!(out ready)?;
        ready.write(Socket::wait(&s.sock, timeout_ms)? as u32);
        Ok(())
    })
}

/// Returns the socket's file descriptor for the caller's poll/epoll loop (POLLIN: packets to
/// receive), or -1 if `sock` is NULL. Owned by libp99: do not close it.
/// Thread-safe: calls on one socket are serialised internally.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_socket_fd(sock: *const p99_xdp_socket) -> c_int {
    guard_or(-1, || match c_arg!(handle sock) {
        Ok(s) => s.sock.lock().fd(),
        Err(_) => -1,
    })
}

/// Writes the bind mode in effect (`P99_XDP_BIND_COPY` or `P99_XDP_BIND_ZEROCOPY`) and the
/// bound queue to the non-NULL out-parameters.
/// Thread-safe: calls on one socket are serialised internally.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_socket_mode(
    sock: *const p99_xdp_socket,
    mode: *mut u32,
    queue: *mut u32,
) -> p99_status {
    guard(|| -> CResult {
        let s = c_arg!(handle sock)?;
        let g = s.sock.lock();
        if let Some(out) = c_arg!(opt_out mode) {
            out.write(if g.is_zero_copy() { P99_XDP_BIND_ZEROCOPY } else { P99_XDP_BIND_COPY });
        }
        if let Some(out) = c_arg!(opt_out queue) {
            out.write(g.queue());
        }
        Ok(())
    })
}

/// Writes the socket's statistics to `*stats`. The caller sets `stats->struct_size` first; at
/// most that many bytes are written (fields this library does not know are zeroed) and it is
/// left as set; INVALID_ARGUMENT if smaller than the first published struct.
/// Thread-safe: calls on one socket are serialised internally.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_socket_stats(
    sock: *const p99_xdp_socket,
    stats: *mut p99_xdp_stats,
) -> p99_status {
    guard(|| -> CResult {
        let s = c_arg!(handle sock)?;
        let out = c_arg!(versioned_out stats)?;
        let st = s.sock.lock().stats()?;
        let k = st.kernel;
        out.write(p99_xdp_stats {
            struct_size: struct_size::<p99_xdp_stats>(),
            rx_dropped: k.rx_dropped,
            rx_invalid_descs: k.rx_invalid_descs,
            tx_invalid_descs: k.tx_invalid_descs,
            rx_ring_full: k.rx_ring_full,
            rx_fill_ring_empty_descs: k.rx_fill_ring_empty_descs,
            tx_ring_empty_descs: k.tx_ring_empty_descs,
            rx_packets: st.rx_packets,
            tx_queued: st.tx_queued,
            tx_completed: st.tx_completed,
            tx_kernel_dropped: st.tx_kernel_dropped,
            rejected_descs: st.rejected_descs,
            tx_kicks: st.tx_kicks,
            fill_wakeups: st.fill_wakeups,
            bind_retries: st.bind_retries,
        });
        Ok(())
    })
}
