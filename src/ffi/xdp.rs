//! C API of the AF_XDP module: `p99_xdp_umem`, `p99_xdp_socket`, `p99_xdp_prog`.
//!
//! Data path in C (one thread per socket): `p99_xdp_umem_fill` to give the kernel frames,
//! `p99_xdp_socket_recv` to take received frames, `p99_xdp_umem_data` to reach their bytes,
//! then either `p99_xdp_socket_send` (e.g. the same frame rewritten as a reply) or
//! `p99_xdp_umem_release`; `p99_xdp_umem_reap` returns transmitted frames to the free pool
//! (`p99_xdp_socket_send` also reaps). Every address passed back is checked against the
//! umem's frame table: a frame the caller does not hold is refused, never double-posted.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};

use parking_lot::Mutex;

use super::boundary::{guard, guard_or, out_ptr, ref_from, set_last_errno, slice_from, struct_size_of};
use super::status::p99_status;
use crate::xdp::{self, AttachMode, BindMode, Program, ProgramKind, Socket, SocketConfig, Umem, UmemConfig, XdpDesc};

thread_local! {
    static LAST_MSG: RefCell<CString> = RefCell::new(CString::default());
}

fn fail(e: xdp::Error) -> p99_status {
    let msg = CString::new(e.to_string().replace('\0', " ")).unwrap_or_default();
    LAST_MSG.with(|m| *m.borrow_mut() = msg);
    let with_errno = |err: &std::io::Error, s: p99_status| {
        set_last_errno(err.raw_os_error().unwrap_or(0));
        s
    };
    match &e {
        xdp::Error::Os { err, .. } => p99_status::from_io_error(err),
        xdp::Error::Invalid(_) | xdp::Error::BadFrame(_) => p99_status::InvalidArgument,
        xdp::Error::Unsupported { err, .. } => with_errno(err, p99_status::Unsupported),
        xdp::Error::Busy { err, .. } => with_errno(err, p99_status::Busy),
        xdp::Error::MtuTooLarge(err) => with_errno(err, p99_status::TooLarge),
        xdp::Error::NoDevice { err, .. } | xdp::Error::NoQueue { err, .. } => with_errno(err, p99_status::NoDevice),
        xdp::Error::Verifier { err, .. } => with_errno(err, p99_status::InvalidArgument),
        xdp::Error::State(_) => p99_status::InvalidState,
    }
}

fn invalid(msg: &str) -> p99_status {
    fail(xdp::Error::Invalid(msg.to_string()))
}

/// Returns a NUL-terminated English description of the most recent failure of a `p99_xdp_*`
/// call on the calling thread (including the verifier log when a program was rejected), or
/// "" if none failed yet. Thread-local; the string is owned by libp99 and valid until the next
/// failing `p99_xdp_*` call on this thread. Never NULL.
#[no_mangle]
pub extern "C" fn p99_xdp_last_error_message() -> *const c_char {
    guard_or(c"".as_ptr(), || LAST_MSG.with(|m| m.borrow().as_ptr()))
}

/// One packet descriptor, as in the kernel's rings: `addr` is the byte offset of the packet
/// data inside the umem, `len` its length, `options` must be 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct p99_xdp_desc {
    pub addr: u64,
    pub len: u32,
    pub options: u32,
}

const _: () = assert!(std::mem::size_of::<p99_xdp_desc>() == std::mem::size_of::<XdpDesc>());

// ------------------------------------------------------------------------------------------
// umem

/// UMEM parameters, filled in by the caller starting from `p99_xdp_umem_config_defaults()`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct p99_xdp_umem_config {
    /// `sizeof(p99_xdp_umem_config)`, set by `p99_xdp_umem_config_defaults()`.
    pub struct_size: u32,
    /// Bytes per frame: 2048 or 4096 (default 4096).
    pub frame_size: u32,
    /// Number of frames (default 4096).
    pub frame_count: u32,
    /// Extra headroom in front of received data, after the kernel's 256 bytes (default 0).
    pub headroom: u32,
    /// FILL ring entries, a power of two (default 2048).
    pub fill_size: u32,
    /// COMPLETION ring entries, a power of two (default 2048).
    pub comp_size: u32,
}

/// Frames per state, from `p99_xdp_umem_frame_counts`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct p99_xdp_frame_counts {
    /// In the umem's free pool.
    pub free: u32,
    /// Posted to the FILL ring (owned by the kernel).
    pub in_fill: u32,
    /// Held by the caller (received or allocated, not yet sent or released).
    pub held: u32,
    /// Posted to the TX ring, completion not yet reaped.
    pub in_tx: u32,
}

/// A registered AF_XDP UMEM: frame area, FILL and COMPLETION rings, and the frame state table.
///
/// Threading: every call is serialised internally and may come from any thread, but the rings
/// are single-producer/single-consumer, so drive a umem and its socket from one thread.
pub struct p99_xdp_umem {
    umem: Umem,
}

/// Returns a config with the documented defaults and `struct_size` set. Thread-safe.
#[no_mangle]
pub extern "C" fn p99_xdp_umem_config_defaults() -> p99_xdp_umem_config {
    let d = UmemConfig::default();
    p99_xdp_umem_config {
        struct_size: std::mem::size_of::<p99_xdp_umem_config>() as u32,
        frame_size: d.frame_size,
        frame_count: d.frame_count,
        headroom: d.headroom,
        fill_size: d.fill_size,
        comp_size: d.comp_size,
    }
}

/// Creates a umem: maps `frame_size * frame_count` page-aligned bytes, creates the AF_XDP
/// socket, registers the area and sets up FILL/COMPLETION rings. `config` may be NULL for the
/// defaults; it is borrowed until return. On success `*out` receives the umem, which the
/// caller frees with `p99_xdp_umem_free`. Needs CAP_NET_RAW (PERMISSION_DENIED otherwise);
/// INVALID_ARGUMENT for a bad frame size, count, headroom or ring size.
/// Thread-safe.
///
/// # Safety
/// `config`, if non-NULL, points to a `p99_xdp_umem_config` whose `struct_size` is set;
/// `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_umem_create(
    config: *const p99_xdp_umem_config,
    out: *mut *mut p99_xdp_umem,
) -> p99_status {
    guard(|| {
        // SAFETY: caller contract.
        let out = unsafe { out_ptr(out) }?;
        let cfg = if config.is_null() {
            p99_xdp_umem_config_defaults()
        } else {
            // SAFETY: non-NULL config starts with struct_size (caller contract).
            unsafe { struct_size_of(config.cast(), std::mem::size_of::<p99_xdp_umem_config>()) }?;
            // SAFETY: struct_size says the whole struct is present.
            unsafe { *config }
        };
        let umem = Umem::new(UmemConfig {
            frame_size: cfg.frame_size,
            frame_count: cfg.frame_count,
            headroom: cfg.headroom,
            fill_size: cfg.fill_size,
            comp_size: cfg.comp_size,
        })
        .map_err(fail)?;
        out.write(Box::into_raw(Box::new(p99_xdp_umem { umem })));
        Ok(())
    })
}

/// Frees a umem handle (NULL is a no-op). The memory and the kernel socket stay alive until
/// the socket bound on this umem (if any) is freed too. Consumes `umem`.
/// Must not run concurrently with any other call on `umem`.
///
/// # Safety
/// `umem` is NULL or a live handle from `p99_xdp_umem_create`, not used again.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_umem_free(umem: *mut p99_xdp_umem) {
    guard_or((), || {
        if !umem.is_null() {
            // SAFETY: a live handle from Box::into_raw, freed once (caller contract).
            drop(unsafe { Box::from_raw(umem) });
        }
    })
}

/// Moves up to `max` free frames to the FILL ring so the kernel can receive into them;
/// `*filled` (may be NULL) receives the count.
/// Thread-safe: calls on one umem and its socket are serialised internally.
///
/// # Safety
/// `umem` is a live handle; `filled` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_umem_fill(umem: *const p99_xdp_umem, max: u32, filled: *mut u32) -> p99_status {
    guard(|| {
        // SAFETY: caller contract.
        let u = unsafe { ref_from(umem) }?;
        let n = u.umem.fill(max);
        if !filled.is_null() {
            // SAFETY: non-NULL out pointer (caller contract).
            unsafe { filled.write(n) };
        }
        Ok(())
    })
}

/// Reaps TX completions: transmitted frames go back to the free pool. `*reaped` (may be NULL)
/// receives the count.
/// Thread-safe: calls on one umem and its socket are serialised internally.
///
/// # Safety
/// `umem` is a live handle; `reaped` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_umem_reap(umem: *const p99_xdp_umem, reaped: *mut u32) -> p99_status {
    guard(|| {
        // SAFETY: caller contract.
        let u = unsafe { ref_from(umem) }?;
        let n = u.umem.reap();
        if !reaped.is_null() {
            // SAFETY: non-NULL out pointer (caller contract).
            unsafe { reaped.write(n) };
        }
        Ok(())
    })
}

/// Takes up to `max` free frames for the caller to build packets in: `descs[i].addr` is each
/// frame's start, `len` 0. `*count` receives how many (0 when none is free). The frames are
/// held by the caller until sent or released. `descs` is borrowed until return.
/// Thread-safe: calls on one umem and its socket are serialised internally.
///
/// # Safety
/// `umem` is a live handle; `descs` has room for `max` descs; `count` is writable.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_umem_alloc(
    umem: *const p99_xdp_umem,
    descs: *mut p99_xdp_desc,
    max: u32,
    count: *mut u32,
) -> p99_status {
    guard(|| {
        // SAFETY: caller contract.
        let u = unsafe { ref_from(umem) }?;
        // SAFETY: caller contract.
        let count = unsafe { out_ptr(count) }?;
        // SAFETY: caller contract (room for `max` descs).
        let out = unsafe { desc_slice_mut(descs, max) }?;
        let n = u.umem.alloc(out);
        count.write(n);
        Ok(())
    })
}

/// Gives frames the caller holds back to the free pool (e.g. received packets not answered).
/// All-or-nothing: INVALID_ARGUMENT, and nothing changes, if any address is outside the umem,
/// not held by the caller, or listed twice. `descs` is borrowed until return.
/// Thread-safe: calls on one umem and its socket are serialised internally.
///
/// # Safety
/// `umem` is a live handle; `descs` points to `count` descs.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_umem_release(
    umem: *const p99_xdp_umem,
    descs: *const p99_xdp_desc,
    count: u32,
) -> p99_status {
    guard(|| {
        // SAFETY: caller contract.
        let u = unsafe { ref_from(umem) }?;
        // SAFETY: caller contract.
        let ds = unsafe { desc_slice(descs, count) }?;
        u.umem.release(ds).map_err(fail)
    })
}

/// Sets `*data` to the bytes at `addr` of a frame the caller holds, checking that
/// `addr + len` stays inside that frame (INVALID_ARGUMENT otherwise, also when the frame is
/// not held). The pointer stays valid while the caller holds the frame and the umem lives.
/// Thread-safe: calls on one umem and its socket are serialised internally.
///
/// # Safety
/// `umem` is a live handle; `data` is writable.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_umem_data(
    umem: *const p99_xdp_umem,
    addr: u64,
    len: u32,
    data: *mut *mut u8,
) -> p99_status {
    guard(|| {
        // SAFETY: caller contract.
        let u = unsafe { ref_from(umem) }?;
        // SAFETY: caller contract.
        let data = unsafe { out_ptr(data) }?;
        let p = u.umem.shared.data_ptr(addr, len).map_err(fail)?;
        data.write(p);
        Ok(())
    })
}

/// Writes the number of frames in each state to `*counts` (free + in_fill + held + in_tx ==
/// frame_count).
/// Thread-safe: calls on one umem and its socket are serialised internally.
///
/// # Safety
/// `umem` is a live handle; `counts` writable.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_umem_frame_counts(
    umem: *const p99_xdp_umem,
    counts: *mut p99_xdp_frame_counts,
) -> p99_status {
    guard(|| {
        // SAFETY: caller contract.
        let u = unsafe { ref_from(umem) }?;
        // SAFETY: caller contract.
        let out = unsafe { out_ptr(counts) }?;
        let (free, in_fill, held, in_tx) = u.umem.frame_counts();
        out.write(p99_xdp_frame_counts { free, in_fill, held, in_tx });
        Ok(())
    })
}

/// Views `count` C descriptors as the kernel layout (identical fields, size and alignment).
///
/// # Safety
/// `descs` points to `count` descs (may be NULL when `count` is 0), not mutated during the call.
unsafe fn desc_slice<'a>(descs: *const p99_xdp_desc, count: u32) -> Result<&'a [XdpDesc], p99_status> {
    if count == 0 {
        return Ok(&[]);
    }
    if descs.is_null() {
        return Err(p99_status::NullParameter);
    }
    // SAFETY: non-NULL, `count` descs readable (caller contract); p99_xdp_desc and XdpDesc are
    // both repr(C) {u64, u32, u32} (size checked at compile time above).
    Ok(unsafe { std::slice::from_raw_parts(descs.cast::<XdpDesc>(), count as usize) })
}

/// Mutable view of `count` C descriptors.
///
/// # Safety
/// `descs` points to `count` writable descs (may be NULL when `count` is 0), not aliased.
unsafe fn desc_slice_mut<'a>(descs: *mut p99_xdp_desc, count: u32) -> Result<&'a mut [XdpDesc], p99_status> {
    if count == 0 {
        return Ok(&mut []);
    }
    if descs.is_null() {
        return Err(p99_status::NullParameter);
    }
    // SAFETY: as in `desc_slice`, and writable/unaliased by the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts_mut(descs.cast::<XdpDesc>(), count as usize) })
}

// ------------------------------------------------------------------------------------------
// socket

/// Bind mode: copy (works everywhere).
pub const P99_XDP_BIND_COPY: u32 = 0;
/// Bind mode: zero-copy (UNSUPPORTED where the driver lacks it, e.g. veth).
pub const P99_XDP_BIND_ZEROCOPY: u32 = 1;
/// Bind mode: zero-copy when available, else copy.
pub const P99_XDP_BIND_AUTO: u32 = 2;

/// Socket parameters, filled in by the caller starting from `p99_xdp_socket_config_defaults()`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct p99_xdp_socket_config {
    /// `sizeof(p99_xdp_socket_config)`, set by `p99_xdp_socket_config_defaults()`.
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

/// Kernel statistics (XDP_STATISTICS) and libp99's own counters of one socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct p99_xdp_stats {
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

/// An AF_XDP socket bound to one (interface, queue), with RX and TX rings, on a umem.
///
/// Threading: every call is serialised internally and may come from any thread, but the rings
/// are single-producer/single-consumer: drive a socket (and its umem) from one thread.
pub struct p99_xdp_socket {
    sock: Mutex<Socket>,
}

/// Returns a config with the documented defaults and `struct_size` set. Thread-safe.
#[no_mangle]
pub extern "C" fn p99_xdp_socket_config_defaults() -> p99_xdp_socket_config {
    let d = SocketConfig::default();
    p99_xdp_socket_config {
        struct_size: std::mem::size_of::<p99_xdp_socket_config>() as u32,
        rx_size: d.rx_size,
        tx_size: d.tx_size,
        bind_mode: P99_XDP_BIND_COPY,
        need_wakeup: d.need_wakeup as u32,
        bind_retry_ms: d.bind_retry_ms,
    }
}

/// Binds a socket on `umem` to queue `queue` of interface `ifname` (in the calling thread's
/// network namespace). A umem backs one socket (INVALID_STATE for a second). Errors:
/// NO_DEVICE (no such interface or queue), BUSY (queue held by another socket), UNSUPPORTED
/// (zero-copy asked where the driver lacks it), INVALID_ARGUMENT (bad ring sizes).
/// `config` may be NULL for the defaults; `ifname` and `config` are borrowed until return. On
/// success `*out` receives the socket, freed with `p99_xdp_socket_free`. Register it with a
/// program (`p99_xdp_prog_register`) to receive traffic.
/// Thread-safe (serialised with other calls on `umem`).
///
/// # Safety
/// `umem` is a live handle; `ifname` a NUL-terminated string; `config` NULL or a config with
/// `struct_size` set; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_socket_create(
    umem: *const p99_xdp_umem,
    ifname: *const c_char,
    queue: u32,
    config: *const p99_xdp_socket_config,
    out: *mut *mut p99_xdp_socket,
) -> p99_status {
    guard(|| {
        // SAFETY: caller contract.
        let u = unsafe { ref_from(umem) }?;
        // SAFETY: caller contract.
        let out = unsafe { out_ptr(out) }?;
        let ifindex = ifindex_of(ifname)?;
        let c = if config.is_null() {
            p99_xdp_socket_config_defaults()
        } else {
            // SAFETY: non-NULL config starts with struct_size (caller contract).
            unsafe { struct_size_of(config.cast(), std::mem::size_of::<p99_xdp_socket_config>()) }?;
            // SAFETY: struct_size says the whole struct is present.
            unsafe { *config }
        };
        let mode = match c.bind_mode {
            P99_XDP_BIND_COPY => BindMode::Copy,
            P99_XDP_BIND_ZEROCOPY => BindMode::ZeroCopy,
            P99_XDP_BIND_AUTO => BindMode::Auto,
            _ => return Err(invalid("bind_mode must be P99_XDP_BIND_COPY, _ZEROCOPY or _AUTO")),
        };
        let cfg = SocketConfig {
            rx_size: c.rx_size,
            tx_size: c.tx_size,
            mode,
            need_wakeup: c.need_wakeup != 0,
            bind_retry_ms: c.bind_retry_ms,
        };
        let sock = Socket::bind(&u.umem, ifindex, queue, cfg).map_err(fail)?;
        out.write(Box::into_raw(Box::new(p99_xdp_socket { sock: Mutex::new(sock) })));
        Ok(())
    })
}

fn ifindex_of(ifname: *const c_char) -> Result<u32, p99_status> {
    if ifname.is_null() {
        return Err(p99_status::NullParameter);
    }
    // SAFETY: non-NULL, NUL-terminated by the caller's contract.
    let name = unsafe { CStr::from_ptr(ifname) };
    let name = name.to_str().map_err(|_| invalid("interface name is not UTF-8"))?;
    xdp::sys::ifindex(name).map_err(fail)
}

/// Frees a socket (NULL is a no-op): unmaps its rings; the kernel socket closes, and the queue
/// becomes free, once its umem is freed too. Consumes `sock`.
/// Must not run concurrently with any other call on `sock`.
///
/// # Safety
/// `sock` is NULL or a live handle, not used again.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_socket_free(sock: *mut p99_xdp_socket) {
    guard_or((), || {
        if !sock.is_null() {
            // SAFETY: a live handle from Box::into_raw, freed once (caller contract).
            drop(unsafe { Box::from_raw(sock) });
        }
    })
}

/// Takes up to `max` received packets: `descs[i].addr` is where packet i's data starts in the
/// umem (see `p99_xdp_umem_data`), `len` its length. `*count` receives how many (0 when none
/// is waiting; never blocks). The frames are held by the caller until sent or released.
/// Thread-safe: calls on one socket are serialised internally.
///
/// # Safety
/// `sock` is a live handle; `descs` has room for `max` descs; `count` writable.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_socket_recv(
    sock: *const p99_xdp_socket,
    descs: *mut p99_xdp_desc,
    max: u32,
    count: *mut u32,
) -> p99_status {
    guard(|| {
        // SAFETY: caller contract.
        let s = unsafe { ref_from(sock) }?;
        // SAFETY: caller contract.
        let count = unsafe { out_ptr(count) }?;
        // SAFETY: caller contract (room for `max` descs).
        let out = unsafe { desc_slice_mut(descs, max) }?;
        let n = s.sock.lock().recv(out);
        count.write(n);
        Ok(())
    })
}

/// Queues `count` held frames for transmission (`len` bytes from `addr`, inside one frame) and
/// kicks the kernel. The batch is checked first: if any desc is bad (outside the umem, not
/// held, empty, crossing its frame, options set, listed twice) nothing is queued and
/// INVALID_ARGUMENT is returned (the frames stay held; see `p99_xdp_last_error_message`).
/// `*queued` (may be NULL) receives how many were queued: the first `*queued` descs, fewer
/// than `count` when the TX ring is full — the rest stay held for a later call.
/// Thread-safe: calls on one socket are serialised internally.
///
/// # Safety
/// `sock` is a live handle; `descs` points to `count` descs; `queued` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_socket_send(
    sock: *const p99_xdp_socket,
    descs: *const p99_xdp_desc,
    count: u32,
    queued: *mut u32,
) -> p99_status {
    guard(|| {
        // SAFETY: caller contract.
        let s = unsafe { ref_from(sock) }?;
        // SAFETY: caller contract.
        let ds = unsafe { desc_slice(descs, count) }?;
        let n = s.sock.lock().send(ds).map_err(fail)?;
        if !queued.is_null() {
            // SAFETY: non-NULL out pointer (caller contract).
            unsafe { queued.write(n) };
        }
        Ok(())
    })
}

/// Kicks transmission of descriptors still on the TX ring (copy mode moves a bounded batch
/// per kick; `p99_xdp_socket_send` already kicks). `*pending` (may be NULL) receives how many
/// remain on the ring.
/// Thread-safe: calls on one socket are serialised internally.
///
/// # Safety
/// `sock` is a live handle; `pending` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_socket_kick(sock: *const p99_xdp_socket, pending: *mut u32) -> p99_status {
    guard(|| {
        // SAFETY: caller contract.
        let s = unsafe { ref_from(sock) }?;
        let mut g = s.sock.lock();
        g.kick().map_err(fail)?;
        if !pending.is_null() {
            // SAFETY: non-NULL out pointer (caller contract).
            unsafe { pending.write(g.tx_pending()) };
        }
        Ok(())
    })
}

/// Waits up to `timeout_ms` (-1: forever, 0: just check) for received packets; `*ready`
/// receives 1 if RX has packets, else 0.
/// Thread-safe: serialised with other calls on `sock`, except the wait, which holds no lock.
///
/// # Safety
/// `sock` is a live handle; `ready` writable.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_socket_wait(sock: *const p99_xdp_socket, timeout_ms: c_int, ready: *mut u32) -> p99_status {
    guard(|| {
        // SAFETY: caller contract.
        let s = unsafe { ref_from(sock) }?;
        // SAFETY: caller contract.
        let ready = unsafe { out_ptr(ready) }?;
        let r = Socket::wait(&s.sock, timeout_ms).map_err(fail)?;
        ready.write(r as u32);
        Ok(())
    })
}

/// Returns the socket's file descriptor for the caller's poll/epoll loop (POLLIN: packets to
/// receive), or -1 if `sock` is NULL. Owned by libp99: do not close it.
/// Thread-safe: calls on one socket are serialised internally.
///
/// # Safety
/// `sock` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_socket_fd(sock: *const p99_xdp_socket) -> c_int {
    guard_or(-1, || {
        // SAFETY: caller contract.
        match unsafe { ref_from(sock) } {
            Ok(s) => s.sock.lock().fd(),
            Err(_) => -1,
        }
    })
}

/// Writes the bind mode in effect (`P99_XDP_BIND_COPY` or `P99_XDP_BIND_ZEROCOPY`) and the
/// bound queue to the non-NULL out-parameters.
/// Thread-safe: calls on one socket are serialised internally.
///
/// # Safety
/// `sock` is a live handle; `mode` and `queue` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_socket_mode(sock: *const p99_xdp_socket, mode: *mut u32, queue: *mut u32) -> p99_status {
    guard(|| {
        // SAFETY: caller contract.
        let s = unsafe { ref_from(sock) }?;
        let g = s.sock.lock();
        if !mode.is_null() {
            let m = if g.is_zero_copy() { P99_XDP_BIND_ZEROCOPY } else { P99_XDP_BIND_COPY };
            // SAFETY: non-NULL out pointer (caller contract).
            unsafe { mode.write(m) };
        }
        if !queue.is_null() {
            // SAFETY: non-NULL out pointer (caller contract).
            unsafe { queue.write(g.queue()) };
        }
        Ok(())
    })
}

/// Writes the socket's statistics to `*stats`.
/// Thread-safe: calls on one socket are serialised internally.
///
/// # Safety
/// `sock` is a live handle; `stats` writable.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_socket_stats(sock: *const p99_xdp_socket, stats: *mut p99_xdp_stats) -> p99_status {
    guard(|| {
        // SAFETY: caller contract.
        let s = unsafe { ref_from(sock) }?;
        // SAFETY: caller contract.
        let out = unsafe { out_ptr(stats) }?;
        let st = s.sock.lock().stats().map_err(fail)?;
        let k = st.kernel;
        out.write(p99_xdp_stats {
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

// ------------------------------------------------------------------------------------------
// program

/// Program kind: redirect every packet of a queue to the socket registered for it.
pub const P99_XDP_PROG_REDIRECT_ALL: u32 = 0;
/// Program kind: redirect only IPv4/UDP to one destination port; the rest goes to the stack.
pub const P99_XDP_PROG_UDP_PORT: u32 = 1;

/// Attach mode: native if the driver supports it, else generic.
pub const P99_XDP_ATTACH_AUTO: u32 = 0;
/// Attach mode: native (driver) XDP.
pub const P99_XDP_ATTACH_NATIVE: u32 = 1;
/// Attach mode: generic (skb) XDP.
pub const P99_XDP_ATTACH_GENERIC: u32 = 2;

/// XDP action: pass to the kernel stack (what `p99_xdp_prog_test_run` reports, among others).
pub const P99_XDP_PASS: u32 = 2;
/// XDP action: redirected (to an AF_XDP socket).
pub const P99_XDP_REDIRECT: u32 = 4;

/// A loaded XDP program (built in, no compiler needed) with its XSKMAP; attached with a BPF
/// link, so the kernel detaches it when the program is freed or the process dies.
///
/// Threading: every call is serialised internally; any thread may call.
pub struct p99_xdp_prog {
    prog: Mutex<Program>,
}

/// Loads a built-in program: `kind` is `P99_XDP_PROG_REDIRECT_ALL` or `P99_XDP_PROG_UDP_PORT`
/// (then `udp_port`, host byte order, non-zero, selects the datagrams to redirect);
/// `max_queues` (1..4096) sizes the socket map. Packets not redirected pass to the stack.
/// Needs CAP_BPF + CAP_NET_ADMIN (PERMISSION_DENIED). On a verifier rejection
/// (INVALID_ARGUMENT) `p99_xdp_last_error_message()` holds the log. Free with
/// `p99_xdp_prog_free`.
/// Thread-safe.
///
/// # Safety
/// `out` writable.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_prog_load(
    kind: u32,
    udp_port: u16,
    max_queues: u32,
    out: *mut *mut p99_xdp_prog,
) -> p99_status {
    guard(|| {
        // SAFETY: caller contract.
        let out = unsafe { out_ptr(out) }?;
        let k = match kind {
            P99_XDP_PROG_REDIRECT_ALL => ProgramKind::RedirectAll,
            P99_XDP_PROG_UDP_PORT => ProgramKind::UdpPort(udp_port),
            _ => return Err(invalid("kind must be P99_XDP_PROG_REDIRECT_ALL or P99_XDP_PROG_UDP_PORT")),
        };
        let p = Program::load(k, max_queues, xdp::prog::XDP_PASS).map_err(fail)?;
        out.write(Box::into_raw(Box::new(p99_xdp_prog { prog: Mutex::new(p) })));
        Ok(())
    })
}

/// Attaches the program to interface `ifname` in `mode` (`P99_XDP_ATTACH_*`). BUSY when
/// another program holds the interface's XDP hook; TOO_LARGE when the MTU is too large for
/// native mode; UNSUPPORTED when the mode is unavailable; INVALID_STATE if already attached.
/// Thread-safe: calls on one program are serialised internally.
///
/// # Safety
/// `prog` is a live handle; `ifname` NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_prog_attach(prog: *const p99_xdp_prog, ifname: *const c_char, mode: u32) -> p99_status {
    guard(|| {
        // SAFETY: caller contract.
        let p = unsafe { ref_from(prog) }?;
        let ifindex = ifindex_of(ifname)?;
        let m = match mode {
            P99_XDP_ATTACH_AUTO => AttachMode::Auto,
            P99_XDP_ATTACH_NATIVE => AttachMode::Native,
            P99_XDP_ATTACH_GENERIC => AttachMode::Generic,
            _ => return Err(invalid("mode must be one of P99_XDP_ATTACH_*")),
        };
        p.prog.lock().attach(ifindex, m).map_err(fail)
    })
}

/// Detaches the program (no-op when not attached); it can be attached again.
/// Thread-safe: calls on one program are serialised internally.
///
/// # Safety
/// `prog` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_prog_detach(prog: *const p99_xdp_prog) -> p99_status {
    guard(|| {
        // SAFETY: caller contract.
        let p = unsafe { ref_from(prog) }?;
        p.prog.lock().detach();
        Ok(())
    })
}

/// Writes the requested attach mode (`P99_XDP_ATTACH_*`) to `*mode`; INVALID_STATE when not
/// attached.
/// Thread-safe: calls on one program are serialised internally.
///
/// # Safety
/// `prog` is a live handle; `mode` writable.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_prog_mode(prog: *const p99_xdp_prog, mode: *mut u32) -> p99_status {
    guard(|| {
        // SAFETY: caller contract.
        let p = unsafe { ref_from(prog) }?;
        // SAFETY: caller contract.
        let out = unsafe { out_ptr(mode) }?;
        let m = match p.prog.lock().attach_mode() {
            Some(AttachMode::Auto) => P99_XDP_ATTACH_AUTO,
            Some(AttachMode::Native) => P99_XDP_ATTACH_NATIVE,
            Some(AttachMode::Generic) => P99_XDP_ATTACH_GENERIC,
            None => return Err(fail(xdp::Error::State("program not attached"))),
        };
        out.write(m);
        Ok(())
    })
}

/// Registers `sock` for its bound queue: packets the program selects on that queue go to it.
/// INVALID_ARGUMENT if the queue is beyond `max_queues`.
/// Thread-safe: calls on one program are serialised internally. Locks `sock` briefly.
///
/// # Safety
/// `prog` and `sock` are live handles.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_prog_register(prog: *const p99_xdp_prog, sock: *const p99_xdp_socket) -> p99_status {
    guard(|| {
        // SAFETY: caller contract.
        let p = unsafe { ref_from(prog) }?;
        // SAFETY: caller contract.
        let s = unsafe { ref_from(sock) }?;
        let (q, fd) = {
            let g = s.sock.lock();
            (g.queue(), g.fd())
        };
        p.prog.lock().register(q, fd).map_err(fail)
    })
}

/// Removes whatever socket is registered for `queue` (no-op if none).
/// Thread-safe: calls on one program are serialised internally.
///
/// # Safety
/// `prog` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_prog_unregister(prog: *const p99_xdp_prog, queue: u32) -> p99_status {
    guard(|| {
        // SAFETY: caller contract.
        let p = unsafe { ref_from(prog) }?;
        p.prog.lock().unregister(queue).map_err(fail)
    })
}

/// Runs the program once on `len` bytes at `packet` (BPF_PROG_TEST_RUN, no network needed) and
/// writes its XDP action to `*action` (`P99_XDP_PASS`, `P99_XDP_REDIRECT`, ...). `packet` is
/// borrowed until return.
/// Thread-safe: calls on one program are serialised internally.
///
/// # Safety
/// `prog` is a live handle; `packet` has `len` readable bytes; `action` writable.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_prog_test_run(
    prog: *const p99_xdp_prog,
    packet: *const u8,
    len: usize,
    action: *mut u32,
) -> p99_status {
    guard(|| {
        // SAFETY: caller contract.
        let p = unsafe { ref_from(prog) }?;
        // SAFETY: caller contract.
        let out = unsafe { out_ptr(action) }?;
        // SAFETY: caller contract.
        let pkt = unsafe { slice_from(packet, len) }?;
        if pkt.len() < 14 || pkt.len() > 65535 {
            return Err(invalid("test packet must be 14..=65535 bytes"));
        }
        let a = p.prog.lock().test_run(pkt).map_err(fail)?;
        out.write(a);
        Ok(())
    })
}

/// Frees the program (NULL is a no-op): detaches it and closes its map. Consumes `prog`.
/// Must not run concurrently with any other call on `prog`.
///
/// # Safety
/// `prog` is NULL or a live handle, not used again.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_prog_free(prog: *mut p99_xdp_prog) {
    guard_or((), || {
        if !prog.is_null() {
            // SAFETY: a live handle from Box::into_raw, freed once (caller contract).
            drop(unsafe { Box::from_raw(prog) });
        }
    })
}

// ------------------------------------------------------------------------------------------
// packet helper

/// UDP ping responder step: if the `len`-byte Ethernet frame at `frame` is an IPv4/UDP datagram
/// to `port` (0: any) whose payload starts with "PING", rewrites it in place into the reply
/// ("PONG", MAC/IP/port swapped, IPv4 checksum updated, UDP checksum cleared) and writes the
/// reply length to `*reply_len`. Otherwise returns NOT_FOUND and leaves the frame unchanged.
/// Every length inside the packet is checked against `len`. Thread-safe.
///
/// # Safety
/// `frame` has `len` writable bytes; `reply_len` writable.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_udp_ping_reply(frame: *mut u8, len: u32, port: u16, reply_len: *mut u32) -> p99_status {
    guard(|| {
        // SAFETY: caller contract.
        let out = unsafe { out_ptr(reply_len) }?;
        // SAFETY: caller contract.
        let f = unsafe { super::boundary::slice_mut_from(frame, len as usize) }?;
        match xdp::packet::udp_ping_reply(f, port) {
            Some(n) => {
                out.write(n as u32);
                Ok(())
            }
            None => Err(p99_status::NotFound),
        }
    })
}
