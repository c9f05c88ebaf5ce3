//! C API of the AF_XDP module, one file per C type: `p99_xdp_umem` (umem.rs, with the
//! descriptors and frame counts), `p99_xdp_socket` (socket.rs) and `p99_xdp_prog` (prog.rs),
//! plus the packet helper below.
//!
//! Data path in C (one thread per socket): `p99_xdp_umem_fill` to give the kernel frames,
//! `p99_xdp_socket_recv` to take received frames, `p99_xdp_umem_data` to reach their bytes,
//! then either `p99_xdp_socket_send` (e.g. the same frame rewritten as a reply) or
//! `p99_xdp_umem_release`; `p99_xdp_umem_reap` returns transmitted frames to the free pool
//! (`p99_xdp_socket_send` also reaps). Every address passed back is checked against the
//! umem's frame table: a frame the caller does not hold is refused, never double-posted.
//! Failures leave their reason (and a rejected program's verifier log) for
//! `p99_last_error_message()`.
//!
//! Contract of every function in these files: pointer arguments are NULL (refused, or allowed
//! where the documentation says so) or valid for what the documentation describes, until
//! return; the documentation is the safety section and becomes the header.
#![allow(clippy::missing_safety_doc)]

pub mod prog;
pub mod socket;
pub mod umem;

use super::boundary::{c_arg, guard, CResult};
use super::status::p99_status;
use crate::xdp;

/// Looks up an interface index by name in the calling thread's network namespace.
fn ifindex_of(name: &std::ffi::CStr) -> Result<u32, super::boundary::Failure> {
    let name = name
        .to_str()
        .map_err(|_| super::boundary::Failure::invalid("interface name is not UTF-8"))?;
    Ok(xdp::sys::ifindex(name)?)
}

/// UDP ping responder step: if the `len`-byte Ethernet frame at `frame` is an IPv4/UDP datagram
/// to `port` (0: any) whose payload starts with "PING", rewrites it in place into the reply
/// ("PONG", MAC/IP/port swapped, IPv4 checksum updated, UDP checksum cleared) and writes the
/// reply length to `*reply_len`. Otherwise returns NOT_FOUND and leaves the frame unchanged.
/// Every length inside the packet is checked against `len`. `frame` (`len` writable bytes)
/// is borrowed until return. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_udp_ping_reply(
    frame: *mut u8,
    len: u32,
    port: u16,
    reply_len: *mut u32,
) -> p99_status {
    guard(|| -> CResult {
        let out = c_arg!(out reply_len)?;
        let f = c_arg!(slice_mut frame, len as usize)?;
        let n = xdp::packet::udp_ping_reply(f, port).ok_or(p99_status::NotFound)?;
        out.write(n as u32);
        Ok(())
    })
}
