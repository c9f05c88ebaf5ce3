//! `p99_xdp_umem`: the frame area with its FILL and COMPLETION rings and the frame state
//! table; also the descriptor type and the frame counts every xdp call shares.
//!
//! Contract of every function here: pointer arguments are NULL (refused, or allowed where
//! the documentation says so) or valid for what the documentation describes, until return.
#![allow(clippy::missing_safety_doc)]

use super::super::boundary::{c_arg, guard, struct_size, CResult, Handle, Versioned};
use super::super::status::p99_status;
use crate::xdp::{Umem, UmemConfig, XdpDesc};

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
const _: () = assert!(std::mem::align_of::<p99_xdp_desc>() == std::mem::align_of::<XdpDesc>());

/// The kernel's view of C descriptors.
pub(super) fn as_kernel(d: &[p99_xdp_desc]) -> &[XdpDesc] {
    // SAFETY: p99_xdp_desc and XdpDesc are both repr(C) {u64, u32, u32} (size and alignment
    // asserted above), so the same memory is a valid slice of either.
    unsafe { std::slice::from_raw_parts(d.as_ptr().cast::<XdpDesc>(), d.len()) }
}

/// Mutable kernel view of C descriptors.
pub(super) fn as_kernel_mut(d: &mut [p99_xdp_desc]) -> &mut [XdpDesc] {
    // SAFETY: as in `as_kernel`; the borrow is moved, not duplicated.
    unsafe { std::slice::from_raw_parts_mut(d.as_mut_ptr().cast::<XdpDesc>(), d.len()) }
}

/// UMEM parameters. Set `struct_size = sizeof(p99_xdp_umem_config)`, fill with
/// `p99_xdp_umem_config_defaults`, then change fields.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct p99_xdp_umem_config {
    /// `sizeof(p99_xdp_umem_config)`, set by the caller.
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

// SAFETY: repr(C), struct_size first, u32 fields only.
unsafe impl Versioned for p99_xdp_umem_config {
    const NAME: &'static str = "p99_xdp_umem_config";
    const FIRST_SIZE: usize = 24;
}

impl Default for p99_xdp_umem_config {
    fn default() -> Self {
        let d = UmemConfig::default();
        p99_xdp_umem_config {
            struct_size: struct_size::<Self>(),
            frame_size: d.frame_size,
            frame_count: d.frame_count,
            headroom: d.headroom,
            fill_size: d.fill_size,
            comp_size: d.comp_size,
        }
    }
}

/// Frames per state, from `p99_xdp_umem_frame_counts`. Set `struct_size` before the call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct p99_xdp_frame_counts {
    /// `sizeof(p99_xdp_frame_counts)`, set by the caller.
    pub struct_size: u32,
    /// In the umem's free pool.
    pub free: u32,
    /// Posted to the FILL ring (owned by the kernel).
    pub in_fill: u32,
    /// Held by the caller (received or allocated, not yet sent or released).
    pub held: u32,
    /// Posted to the TX ring, completion not yet reaped.
    pub in_tx: u32,
}

// SAFETY: repr(C), struct_size first, u32 fields only.
unsafe impl Versioned for p99_xdp_frame_counts {
    const NAME: &'static str = "p99_xdp_frame_counts";
    const FIRST_SIZE: usize = 20;
}

/// A registered AF_XDP UMEM: frame area, FILL and COMPLETION rings, and the frame state table.
///
/// Threading: every call is serialised internally and may come from any thread, but the rings
/// are single-producer/single-consumer, so drive a umem and its socket from one thread.
/// `p99_xdp_umem_free` must not run concurrently with another call on the umem.
pub struct p99_xdp_umem {
    pub(super) umem: Umem,
}

impl Handle for p99_xdp_umem {}

/// Fills `*config` with the defaults. The caller sets `config->struct_size =
/// sizeof(p99_xdp_umem_config)` first; at most that many bytes are written and it is left
/// as set (INVALID_ARGUMENT if smaller than the first published struct). Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_umem_config_defaults(
    config: *mut p99_xdp_umem_config,
) -> p99_status {
    guard(|| -> CResult {
        c_arg!(versioned_out config)?.write(p99_xdp_umem_config::default());
        Ok(())
    })
}

/// Creates a umem: maps `frame_size * frame_count` page-aligned bytes, creates the AF_XDP
/// socket, registers the area and sets up FILL/COMPLETION rings. `config` may be NULL for the
/// defaults; it is borrowed until return. On success `*out` receives the umem, which the
/// caller frees with `p99_xdp_umem_free`. Needs CAP_NET_RAW (PERMISSION_DENIED otherwise);
/// INVALID_ARGUMENT for a bad frame size, count, headroom or ring size, or a bad
/// `struct_size`. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_umem_create(
    config: *const p99_xdp_umem_config,
    out: *mut *mut p99_xdp_umem,
) -> p99_status {
    guard(|| -> CResult {
        let out = c_arg!(out out)?;
        let cfg = if config.is_null() {
            p99_xdp_umem_config::default()
        } else {
            c_arg!(versioned_in config, p99_xdp_umem_config::default())?
        };
        let umem = Umem::new(UmemConfig {
            frame_size: cfg.frame_size,
            frame_count: cfg.frame_count,
            headroom: cfg.headroom,
            fill_size: cfg.fill_size,
            comp_size: cfg.comp_size,
        })?;
        out.write(p99_xdp_umem { umem }.into_c());
        Ok(())
    })
}

/// Frees a umem handle; NULL is a no-op. Returns OK. The memory and the kernel socket stay
/// alive until the socket bound on this umem (if any) is freed too. Consumes `umem`.
/// Must not run concurrently with any other call on `umem`.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_umem_free(umem: *mut p99_xdp_umem) -> p99_status {
    guard(|| -> CResult {
        drop(c_arg!(owned umem));
        Ok(())
    })
}

/// Moves up to `max` free frames to the FILL ring so the kernel can receive into them;
/// `*filled` (may be NULL) receives the count.
/// Thread-safe: calls on one umem and its socket are serialised internally.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_umem_fill(
    umem: *const p99_xdp_umem,
    max: u32,
    filled: *mut u32,
) -> p99_status {
    guard(|| -> CResult {
        let u = c_arg!(handle umem)?;
        let n = u.umem.fill(max);
        if let Some(out) = c_arg!(opt_out filled) {
            out.write(n);
        }
        Ok(())
    })
}

/// Reaps TX completions: transmitted frames go back to the free pool. `*reaped` (may be NULL)
/// receives the count.
/// Thread-safe: calls on one umem and its socket are serialised internally.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_umem_reap(
    umem: *const p99_xdp_umem,
    reaped: *mut u32,
) -> p99_status {
    guard(|| -> CResult {
        let u = c_arg!(handle umem)?;
        let n = u.umem.reap();
        if let Some(out) = c_arg!(opt_out reaped) {
            out.write(n);
        }
        Ok(())
    })
}

/// Takes up to `max` free frames for the caller to build packets in: `descs[i].addr` is each
/// frame's start, `len` 0. `*count` receives how many (0 when none is free). The frames are
/// held by the caller until sent or released. `descs` (room for `max` descs) is borrowed
/// until return.
/// Thread-safe: calls on one umem and its socket are serialised internally.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_umem_alloc(
    umem: *const p99_xdp_umem,
    descs: *mut p99_xdp_desc,
    max: u32,
    count: *mut u32,
) -> p99_status {
    guard(|| -> CResult {
        let u = c_arg!(handle umem)?;
        let count = c_arg!(out count)?;
        let out = c_arg!(slice_mut descs, max as usize)?;
        count.write(u.umem.alloc(as_kernel_mut(out)));
        Ok(())
    })
}

/// Gives frames the caller holds back to the free pool (e.g. received packets not answered).
/// All-or-nothing: INVALID_ARGUMENT, and nothing changes, if any address is outside the umem,
/// not held by the caller, or listed twice. `descs` (`count` descs) is borrowed until return.
/// Thread-safe: calls on one umem and its socket are serialised internally.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_umem_release(
    umem: *const p99_xdp_umem,
    descs: *const p99_xdp_desc,
    count: u32,
) -> p99_status {
    guard(|| -> CResult {
        let u = c_arg!(handle umem)?;
        let ds = c_arg!(slice descs, count as usize)?;
        Ok(u.umem.release(as_kernel(ds))?)
    })
}

/// Sets `*data` to the bytes at `addr` of a frame the caller holds, checking that
/// `addr + len` stays inside that frame (INVALID_ARGUMENT otherwise, also when the frame is
/// not held). The pointer stays valid while the caller holds the frame and the umem lives.
/// Thread-safe: calls on one umem and its socket are serialised internally.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_umem_data(
    umem: *const p99_xdp_umem,
    addr: u64,
    len: u32,
    data: *mut *mut u8,
) -> p99_status {
    guard(|| -> CResult {
        let u = c_arg!(handle umem)?;
        let data = c_arg!(out data)?;
        data.write(u.umem.shared.data_ptr(addr, len)?);
        Ok(())
    })
}

/// Writes the number of frames in each state to `*counts` (free + in_fill + held + in_tx ==
/// frame_count). The caller sets `counts->struct_size` first; at most that many bytes are
/// written (fields this library does not know are zeroed) and it is left as set;
/// INVALID_ARGUMENT if smaller than the first published struct.
/// Thread-safe: calls on one umem and its socket are serialised internally.
#[no_mangle]
pub unsafe extern "C" fn p99_xdp_umem_frame_counts(
    umem: *const p99_xdp_umem,
    counts: *mut p99_xdp_frame_counts,
) -> p99_status {
    guard(|| -> CResult {
        let u = c_arg!(handle umem)?;
        let out = c_arg!(versioned_out counts)?;
        let (free, in_fill, held, in_tx) = u.umem.frame_counts();
        out.write(p99_xdp_frame_counts {
            struct_size: struct_size::<p99_xdp_frame_counts>(),
            free,
            in_fill,
            held,
            in_tx,
        });
        Ok(())
    })
}
