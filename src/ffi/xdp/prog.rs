//! `p99_xdp_prog`: the built-in redirect program with its XSKMAP, loaded with `bpf(2)` and
//! attached through a BPF link.
//!
//! Contract of every function here: pointer arguments are NULL (refused, or allowed where
//! the documentation says so) or valid for what the documentation describes, until return.
#![allow(clippy::missing_safety_doc)]

use std::ffi::c_char;

use parking_lot::Mutex;

use super::super::boundary::{c_arg, guard, CResult, Failure, Handle};
use super::super::status::p99_status;
use super::socket::p99_xdp_socket;
use crate::xdp::{self, AttachMode, Program, ProgramKind};

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
/// `p99_xdp_prog_free` must not run concurrently with another call on the program.
pub struct p99_xdp_prog {
    prog: Mutex<Program>,
}

impl Handle for p99_xdp_prog {}

/// Loads a built-in program: `kind` is `P99_XDP_PROG_REDIRECT_ALL` or `P99_XDP_PROG_UDP_PORT`
/// (then `udp_port`, host byte order, non-zero, selects the datagrams to redirect);
/// `max_queues` (1..4096) sizes the socket map. Packets not redirected pass to the stack.
/// Needs CAP_BPF + CAP_NET_ADMIN (PERMISSION_DENIED). On a verifier rejection
/// (INVALID_ARGUMENT) `p99_last_error_message()` holds the log. On success `*out` receives
/// the program; free it with `p99_xdp_prog_free`.
/// Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_prog_load(
    kind: u32,
    udp_port: u16,
    max_queues: u32,
    out: *mut *mut p99_xdp_prog,
) -> p99_status {
    guard(|| -> CResult {
        let out = c_arg!(out out)?;
        let k = match kind {
            P99_XDP_PROG_REDIRECT_ALL => ProgramKind::RedirectAll,
            P99_XDP_PROG_UDP_PORT => ProgramKind::UdpPort(udp_port),
            _ => {
                return Err(Failure::invalid(
                    "kind must be P99_XDP_PROG_REDIRECT_ALL or P99_XDP_PROG_UDP_PORT",
                ))
            }
        };
        let p = Program::load(k, max_queues, xdp::prog::XDP_PASS)?;
        out.write(p99_xdp_prog { prog: Mutex::new(p) }.into_c());
        Ok(())
    })
}

/// Attaches the program to interface `ifname` (NUL-terminated, borrowed until return) in
/// `mode` (`P99_XDP_ATTACH_*`). BUSY when another program holds the interface's XDP hook;
/// TOO_LARGE when the MTU is too large for native mode; UNSUPPORTED when the mode is
/// unavailable; INVALID_STATE if already attached.
/// Thread-safe: calls on one program are serialised internally.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_prog_attach(
    prog: *const p99_xdp_prog,
    ifname: *const c_char,
    mode: u32,
) -> p99_status {
    guard(|| -> CResult {
        let p = c_arg!(handle prog)?;
        let ifindex = super::ifindex_of(c_arg!(cstr ifname)?)?;
        let m = match mode {
            P99_XDP_ATTACH_AUTO => AttachMode::Auto,
            P99_XDP_ATTACH_NATIVE => AttachMode::Native,
            P99_XDP_ATTACH_GENERIC => AttachMode::Generic,
            _ => return Err(Failure::invalid("mode must be one of P99_XDP_ATTACH_*")),
        };
        Ok(p.prog.lock().attach(ifindex, m)?)
    })
}

/// Detaches the program (no-op when not attached); it can be attached again.
/// Thread-safe: calls on one program are serialised internally.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_prog_detach(prog: *const p99_xdp_prog) -> p99_status {
    guard(|| -> CResult {
        c_arg!(handle prog)?.prog.lock().detach();
        Ok(())
    })
}

/// Writes the requested attach mode (`P99_XDP_ATTACH_*`) to `*mode`; INVALID_STATE when not
/// attached.
/// Thread-safe: calls on one program are serialised internally.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_prog_mode(
    prog: *const p99_xdp_prog,
    mode: *mut u32,
) -> p99_status {
    guard(|| -> CResult {
        let p = c_arg!(handle prog)?;
        let out = c_arg!(out mode)?;
        let m = match p.prog.lock().attach_mode() {
            Some(AttachMode::Auto) => P99_XDP_ATTACH_AUTO,
            Some(AttachMode::Native) => P99_XDP_ATTACH_NATIVE,
            Some(AttachMode::Generic) => P99_XDP_ATTACH_GENERIC,
            None => return Err(xdp::Error::State("program not attached").into()),
        };
        out.write(m);
        Ok(())
    })
}

/// Registers `sock` for its bound queue: packets the program selects on that queue go to it.
/// INVALID_ARGUMENT if the queue is beyond `max_queues`.
/// Thread-safe: calls on one program are serialised internally. Locks `sock` briefly.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_prog_register(
    prog: *const p99_xdp_prog,
    sock: *const p99_xdp_socket,
) -> p99_status {
    guard(|| -> CResult {
        let p = c_arg!(handle prog)?;
        let s = c_arg!(handle sock)?;
        let (q, fd) = {
            let g = s.sock.lock();
            (g.queue(), g.fd())
        };
        Ok(p.prog.lock().register(q, fd)?)
    })
}

/// Removes whatever socket is registered for `queue` (no-op if none).
/// Thread-safe: calls on one program are serialised internally.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_prog_unregister(
    prog: *const p99_xdp_prog,
    queue: u32,
) -> p99_status {
    guard(|| -> CResult { Ok(c_arg!(handle prog)?.prog.lock().unregister(queue)?) })
}

/// Runs the program once on `len` bytes at `packet` (BPF_PROG_TEST_RUN, no network needed) and
/// writes its XDP action to `*action` (`P99_XDP_PASS`, `P99_XDP_REDIRECT`, ...). `packet` is
/// borrowed until return.
/// Thread-safe: calls on one program are serialised internally.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_prog_test_run(
    prog: *const p99_xdp_prog,
    packet: *const u8,
    len: usize,
    action: *mut u32,
) -> p99_status {
    guard(|| -> CResult {
        let p = c_arg!(handle prog)?;
        let out = c_arg!(out action)?;
        let pkt = c_arg!(slice packet, len)?;
        if pkt.len() < 14 || pkt.len() > 65535 {
            return Err(Failure::invalid("test packet must be 14..=65535 bytes"));
        }
        out.write(p.prog.lock().test_run(pkt)?);
        Ok(())
    })
}

/// Frees the program; NULL is a no-op. Returns OK. Detaches it and closes its map. Consumes
/// `prog`. Must not run concurrently with any other call on `prog`.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_prog_free(prog: *mut p99_xdp_prog) -> p99_status {
    guard(|| -> CResult {
        drop(c_arg!(owned prog));
        Ok(())
    })
}
