//! UMEM: the page-aligned frame area registered with the kernel, the FILL and COMPLETION rings,
//! and the per-frame state table that makes every hand-over between the caller and the kernel
//! checked.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::ring::Ring;
use super::sys::{self, Fd, XdpDesc, XdpMmapOffsets, XdpUmemReg, XDP_PACKET_HEADROOM};
use super::{Error, Result};

/// Where a frame is. Exactly one state at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameState {
    /// Owned by the umem, available for `fill` or `alloc`.
    Free = 0,
    /// Posted to the FILL ring; the kernel may write a received packet into it.
    InFill = 1,
    /// Handed to the caller (received, or allocated for TX); must come back by `send` or
    /// `release`.
    User = 2,
    /// Posted to the TX ring; returns to `Free` when its completion is reaped.
    InTx = 3,
}

/// UMEM parameters. `frame_size` must be 2048 or 4096; the ring sizes powers of two.
#[derive(Clone, Copy, Debug)]
pub struct UmemConfig {
    pub frame_size: u32,
    pub frame_count: u32,
    /// Extra bytes the kernel leaves in front of received data (after its own 256).
    pub headroom: u32,
    pub fill_size: u32,
    pub comp_size: u32,
}

impl Default for UmemConfig {
    fn default() -> Self {
        UmemConfig {
            frame_size: 4096,
            frame_count: 4096,
            headroom: 0,
            fill_size: 2048,
            comp_size: 2048,
        }
    }
}

/// Counters kept by the umem itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct UmemCounters {
    pub fill_posted: u64,
    pub completions: u64,
    /// Addresses the kernel returned that were not in the expected state (never expected).
    pub kernel_bad_addr: u64,
    /// Descriptors from the caller refused because of a bad address, length or state.
    pub rejected: u64,
    pub fill_wakeups: u64,
}

pub(crate) struct Frames {
    pub state: Vec<FrameState>,
    pub free: Vec<u32>,
    pub fill: Ring<u64>,
    pub comp: Ring<u64>,
    pub counters: UmemCounters,
    pub counts: [u32; 4],
}

pub(crate) struct Shared {
    pub fd: Fd,
    area: *mut u8,
    area_len: usize,
    pub cfg: UmemConfig,
    pub frames: Mutex<Frames>,
    pub offsets: XdpMmapOffsets,
    /// Set once a socket has bound the umem's kernel socket (it can be bound only once).
    pub bound: AtomicBool,
    /// RX and TX ring sizes once set on the kernel socket (they can be set only once):
    /// `rx << 32 | tx`, 0 while unset.
    pub ring_sizes: AtomicU64,
}

// SAFETY: `area` is a private mapping owned by Shared and accessed only under the frame-state
// rules (a frame's bytes are reachable only while the caller holds it); the rings sit behind
// the mutex.
unsafe impl Send for Shared {}
// SAFETY: see above; all mutable state is behind `frames`.
unsafe impl Sync for Shared {}

impl Drop for Shared {
    fn drop(&mut self) {
        // Rings are unmapped and the socket closed by the field drops that follow; the area is
        // unmapped last so the kernel never sees a registered area vanish while the socket lives.
        let area = self.area;
        let len = self.area_len;
        // Drop order of fields is declaration order: fd first, then frames (rings). Close the
        // socket explicitly here before unmapping.
        let fd = std::mem::replace(&mut self.fd, Fd(-1));
        drop(fd);
        // SAFETY: the mapping made in `Umem::new`, unmapped exactly once.
        unsafe { libc::munmap(area.cast(), len) };
    }
}

/// A registered UMEM. Cheap to share with its socket (reference counted); the memory and the
/// kernel socket live until the umem and its socket are both dropped.
pub struct Umem {
    pub(crate) shared: Arc<Shared>,
}

impl Umem {
    /// Creates the AF_XDP socket, maps and registers the frame area, and sets up FILL and
    /// COMPLETION rings. All frames start free.
    pub fn new(cfg: UmemConfig) -> Result<Umem> {
        if cfg.frame_size != 2048 && cfg.frame_size != 4096 {
            return Err(Error::Invalid(format!(
                "frame size {} (must be 2048 or 4096)",
                cfg.frame_size
            )));
        }
        if cfg.frame_count == 0 || cfg.frame_count > (1 << 24) {
            return Err(Error::Invalid(format!(
                "frame count {} (must be 1..=16777216)",
                cfg.frame_count
            )));
        }
        if cfg.headroom >= cfg.frame_size - XDP_PACKET_HEADROOM - 64 {
            return Err(Error::Invalid(format!(
                "headroom {} leaves no room for data in a {}-byte frame",
                cfg.headroom, cfg.frame_size
            )));
        }
        for (name, s) in
            [("fill ring size", cfg.fill_size), ("completion ring size", cfg.comp_size)]
        {
            if s == 0 || !s.is_power_of_two() || s > (1 << 20) {
                return Err(Error::Invalid(format!(
                    "{name} {s} (must be a power of two up to 1048576)"
                )));
            }
        }
        let area_len = cfg.frame_size as usize * cfg.frame_count as usize;
        // SAFETY: anonymous private mapping; result checked.
        let area = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                area_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if area == libc::MAP_FAILED {
            return Err(Error::os("mmap umem area", io::Error::last_os_error()));
        }
        struct AreaGuard(*mut libc::c_void, usize);
        impl Drop for AreaGuard {
            fn drop(&mut self) {
                if !self.0.is_null() {
                    // SAFETY: unmapping our own mapping on an error path.
                    unsafe { libc::munmap(self.0, self.1) };
                }
            }
        }
        let mut guard = AreaGuard(area, area_len);

        // SAFETY: plain socket(2) call.
        let fd = unsafe { libc::socket(sys::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            let err = io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::EAFNOSUPPORT) => Error::Unsupported { op: "socket(AF_XDP)", err },
                _ => Error::os("socket(AF_XDP)", err),
            });
        }
        let fd = Fd(fd);
        // Zeroed registration struct: no stray padding reaches the kernel.
        let reg = XdpUmemReg {
            addr: area as u64,
            len: area_len as u64,
            chunk_size: cfg.frame_size,
            headroom: cfg.headroom,
            flags: 0,
            tx_metadata_len: 0,
        };
        sys::set_xdp_opt(fd.0, sys::XDP_UMEM_REG, &reg)
            .map_err(|e| Error::os("XDP_UMEM_REG", e))?;
        sys::set_xdp_opt(fd.0, sys::XDP_UMEM_FILL_RING, &cfg.fill_size)
            .map_err(|e| Error::os("XDP_UMEM_FILL_RING", e))?;
        sys::set_xdp_opt(fd.0, sys::XDP_UMEM_COMPLETION_RING, &cfg.comp_size)
            .map_err(|e| Error::os("XDP_UMEM_COMPLETION_RING", e))?;
        let mut off = XdpMmapOffsets::default();
        let got = sys::get_xdp_opt(fd.0, sys::XDP_MMAP_OFFSETS, &mut off)
            .map_err(|e| Error::os("XDP_MMAP_OFFSETS", e))?;
        if got != std::mem::size_of::<XdpMmapOffsets>() {
            return Err(Error::Unsupported {
                op: "XDP_MMAP_OFFSETS (kernel older than 5.4)",
                err: io::Error::from_raw_os_error(libc::EOPNOTSUPP),
            });
        }
        let fill =
            Ring::<u64>::map(fd.0, &off.fr, cfg.fill_size, sys::XDP_UMEM_PGOFF_FILL_RING, true)
                .map_err(|e| Error::os("mmap fill ring", e))?;
        let comp = Ring::<u64>::map(
            fd.0,
            &off.cr,
            cfg.comp_size,
            sys::XDP_UMEM_PGOFF_COMPLETION_RING,
            false,
        )
        .map_err(|e| Error::os("mmap completion ring", e))?;
        let n = cfg.frame_count;
        let frames = Frames {
            state: vec![FrameState::Free; n as usize],
            free: (0..n).rev().collect(),
            fill,
            comp,
            counters: UmemCounters::default(),
            counts: [n, 0, 0, 0],
        };
        guard.0 = std::ptr::null_mut();
        Ok(Umem {
            shared: Arc::new(Shared {
                fd,
                area: area.cast(),
                area_len,
                cfg,
                frames: Mutex::new(frames),
                offsets: off,
                bound: AtomicBool::new(false),
                ring_sizes: AtomicU64::new(0),
            }),
        })
    }

    pub fn config(&self) -> UmemConfig {
        self.shared.cfg
    }

    /// The kernel socket (also the socket's fd once bound), for poll.
    pub fn fd(&self) -> i32 {
        self.shared.fd.0
    }

    /// Start and length of the frame area. Frame `i` starts at byte `i * frame_size`.
    pub fn area(&self) -> (*mut u8, usize) {
        (self.shared.area, self.shared.area_len)
    }

    /// Moves up to `max` free frames into the FILL ring; returns how many.
    pub fn fill(&self, max: u32) -> u32 {
        let sh = &*self.shared;
        let mut f = sh.frames.lock();
        let n = f.fill.free(max).min(max).min(f.free.len() as u32);
        if n > 0 {
            let start = f.free.len() - n as usize;
            let fs = sh.cfg.frame_size as u64;
            let idxs: Vec<u32> = f.free.drain(start..).collect();
            for &i in &idxs {
                f.state[i as usize] = FrameState::InFill;
            }
            f.counts[0] -= n;
            f.counts[1] += n;
            f.fill.produce(idxs.iter().map(|&i| i as u64 * fs));
            f.counters.fill_posted += n as u64;
        }
        if sh.bound.load(Ordering::Relaxed) && f.fill.needs_wakeup() {
            f.counters.fill_wakeups += 1;
            // SAFETY: recvfrom with no buffer on our socket only wakes the driver.
            unsafe {
                libc::recvfrom(
                    sh.fd.0,
                    std::ptr::null_mut(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
        }
        n
    }

    /// Reaps TX completions: the frames go back to free. Returns how many.
    pub fn reap(&self) -> u32 {
        self.shared.reap_locked(&mut self.shared.frames.lock())
    }

    /// Takes up to `out.len()` free frames for the caller to build packets in. Each desc gets
    /// the frame's start address and length 0.
    pub fn alloc(&self, out: &mut [XdpDesc]) -> u32 {
        let sh = &*self.shared;
        let mut f = sh.frames.lock();
        let n = out.len().min(f.free.len());
        let fs = sh.cfg.frame_size as u64;
        for d in out.iter_mut().take(n) {
            let i = f.free.pop().expect("counted above");
            f.state[i as usize] = FrameState::User;
            *d = XdpDesc { addr: i as u64 * fs, len: 0, options: 0 };
        }
        f.counts[0] -= n as u32;
        f.counts[2] += n as u32;
        n as u32
    }

    /// Gives frames held by the caller back to the free pool. All-or-nothing: if any address
    /// is not a held frame (or appears twice) nothing changes.
    pub fn release(&self, descs: &[XdpDesc]) -> Result<()> {
        let sh = &*self.shared;
        let mut f = sh.frames.lock();
        sh.transition(&mut f, descs, false, FrameState::Free)?;
        for d in descs {
            let i = (d.addr / sh.cfg.frame_size as u64) as u32;
            f.free.push(i);
        }
        Ok(())
    }

    /// The bytes of a frame the caller holds, from `addr` for `len` bytes (within the frame).
    ///
    /// The borrow ends before the umem is used again, but it is not tied to the socket: do not
    /// keep the slice across a `Socket::send` or `release` of the same frame (the kernel reads
    /// a sent frame's bytes while it is in TX).
    pub fn data(&mut self, addr: u64, len: u32) -> Result<&mut [u8]> {
        let p = self.shared.data_ptr(addr, len)?;
        // SAFETY: `data_ptr` checked that the range lies in one frame of our area that the
        // caller holds; `&mut self` keeps the borrow unique on the Rust side.
        Ok(unsafe { std::slice::from_raw_parts_mut(p, len as usize) })
    }

    /// Frames per state: (free, in fill, held by the caller, in TX).
    pub fn frame_counts(&self) -> (u32, u32, u32, u32) {
        let c = self.shared.frames.lock().counts;
        (c[0], c[1], c[2], c[3])
    }

    pub fn counters(&self) -> UmemCounters {
        self.shared.frames.lock().counters
    }

    /// Returns the state of the frame containing `addr`, or None if out of range.
    pub fn frame_state(&self, addr: u64) -> Option<FrameState> {
        let i = addr / self.shared.cfg.frame_size as u64;
        self.shared.frames.lock().state.get(i as usize).copied()
    }
}

impl Shared {
    /// Checked pointer to `len` bytes at `addr` of a frame the caller holds.
    pub fn data_ptr(&self, addr: u64, len: u32) -> Result<*mut u8> {
        let fs = self.cfg.frame_size as u64;
        let i = addr / fs;
        if i >= self.cfg.frame_count as u64 {
            return Err(Error::BadFrame(format!("address {addr:#x} is outside the umem")));
        }
        if (addr % fs) + len as u64 > fs {
            return Err(Error::BadFrame(format!("{len} bytes at {addr:#x} cross the frame end")));
        }
        if self.frames.lock().state[i as usize] != FrameState::User {
            return Err(Error::BadFrame(format!("frame at {addr:#x} is not held by the caller")));
        }
        // SAFETY: addr + len lies inside the area (checked above).
        Ok(unsafe { self.area.add(addr as usize) })
    }

    /// Moves every desc's frame from User to `to`, checking address, length (when
    /// `check_len`), options and duplicates first. All-or-nothing; refusals are counted.
    pub(crate) fn transition(
        &self,
        f: &mut Frames,
        descs: &[XdpDesc],
        check_len: bool,
        to: FrameState,
    ) -> Result<()> {
        let fs = self.cfg.frame_size as u64;
        let mut err = None;
        let mut done = 0;
        for d in descs {
            let i = d.addr / fs;
            let off = d.addr % fs;
            let e = if i >= self.cfg.frame_count as u64 {
                Some(format!("address {:#x} is outside the umem", d.addr))
            } else if f.state[i as usize] != FrameState::User {
                Some(format!(
                    "frame at {:#x} is not held by the caller ({:?})",
                    d.addr, f.state[i as usize]
                ))
            } else if check_len && (d.len == 0 || off + d.len as u64 > fs) {
                Some(format!("length {} at offset {off} does not fit a {fs}-byte frame", d.len))
            } else if check_len && d.options != 0 {
                Some(format!("options {:#x} not supported", d.options))
            } else {
                None
            };
            if let Some(e) = e {
                err = Some(e);
                break;
            }
            // Mark as in transit so a duplicate in the same batch is caught.
            f.state[i as usize] = to;
            done += 1;
        }
        if let Some(e) = err {
            for d in &descs[..done] {
                f.state[(d.addr / fs) as usize] = FrameState::User;
            }
            f.counters.rejected += 1;
            return Err(Error::BadFrame(e));
        }
        f.counts[2] -= done as u32;
        f.counts[to as usize] += done as u32;
        Ok(())
    }

    pub(crate) fn reap_locked(&self, f: &mut Frames) -> u32 {
        let fs = self.cfg.frame_size as u64;
        let count = self.cfg.frame_count as u64;
        let mut addrs = [0u64; 256];
        let mut total = 0;
        loop {
            let mut k = 0;
            let n = f.comp.consume(addrs.len() as u32, |a| {
                addrs[k] = a;
                k += 1;
            });
            for &a in &addrs[..n as usize] {
                let i = a / fs;
                if i < count && f.state[i as usize] == FrameState::InTx {
                    f.state[i as usize] = FrameState::Free;
                    f.free.push(i as u32);
                    f.counts[3] -= 1;
                    f.counts[0] += 1;
                } else {
                    f.counters.kernel_bad_addr += 1;
                }
            }
            f.counters.completions += n as u64;
            total += n;
            if n < addrs.len() as u32 {
                return total;
            }
        }
    }
}
