//! An AF_XDP socket bound to one (interface, queue), with its RX and TX rings.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ring::Ring;
use super::sys::{self, SockaddrXdp, XdpDesc, XdpStatistics};
use super::umem::{FrameState, Shared, Umem};
use super::{Error, Result};

/// How the socket moves packets between the driver and the umem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindMode {
    /// Kernel copies packets (works on every driver, including veth).
    Copy,
    /// Driver DMAs straight into the umem; fails with `Unsupported` where the driver lacks it.
    ZeroCopy,
    /// Zero-copy if the driver supports it, else copy.
    Auto,
}

#[derive(Clone, Copy, Debug)]
pub struct SocketConfig {
    pub rx_size: u32,
    pub tx_size: u32,
    pub mode: BindMode,
    /// Bind with XDP_USE_NEED_WAKEUP so the kernel is only kicked when it asks.
    pub need_wakeup: bool,
    /// How long a bind keeps retrying on EBUSY (a previous socket on the queue is still being
    /// torn down by the kernel). 0 disables retries.
    pub bind_retry_ms: u32,
}

impl Default for SocketConfig {
    fn default() -> Self {
        SocketConfig {
            rx_size: 2048,
            tx_size: 2048,
            mode: BindMode::Copy,
            need_wakeup: true,
            bind_retry_ms: 500,
        }
    }
}

/// Kernel statistics (XDP_STATISTICS) plus the wrapper's own counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// The kernel's counters, as XDP_STATISTICS reports them.
    pub kernel: XdpStatistics,
    /// Packets handed to the caller by `recv`.
    pub rx_packets: u64,
    /// Descriptors placed on the TX ring.
    pub tx_queued: u64,
    /// TX completions reaped.
    pub tx_completed: u64,
    /// TX frames the kernel completed without transmitting (sendto reported EBUSY).
    pub tx_kernel_dropped: u64,
    /// Descriptors refused by the wrapper's checks (bad address, length, state, options).
    pub rejected_descs: u64,
    /// sendto kicks issued for TX.
    pub tx_kicks: u64,
    /// Wake-ups issued for the FILL ring.
    pub fill_wakeups: u64,
    /// Bind attempts that met EBUSY and were retried.
    pub bind_retries: u64,
}

pub struct Socket {
    umem: Arc<Shared>,
    rx: Ring<XdpDesc>,
    tx: Ring<XdpDesc>,
    ifindex: u32,
    queue: u32,
    zero_copy: bool,
    need_wakeup: bool,
    rx_packets: u64,
    tx_queued: u64,
    tx_kernel_dropped: u64,
    tx_kicks: u64,
    bind_retries: u64,
}

fn bind_once(fd: i32, ifindex: u32, queue: u32, flags: u16) -> io::Result<()> {
    let sa = SockaddrXdp {
        family: sys::AF_XDP as u16,
        flags,
        ifindex,
        queue_id: queue,
        shared_umem_fd: 0,
    };
    // SAFETY: `sa` is a valid sockaddr_xdp of the size passed.
    sys::cvt(unsafe {
        libc::bind(
            fd,
            (&sa as *const SockaddrXdp).cast(),
            std::mem::size_of::<SockaddrXdp>() as u32,
        )
    })
    .map(|_| ())
}

impl Socket {
    /// Binds `umem`'s kernel socket to (`ifindex`, `queue`) with RX and TX rings. A umem can
    /// back one socket.
    pub fn bind(umem: &Umem, ifindex: u32, queue: u32, cfg: SocketConfig) -> Result<Socket> {
        let sh = umem.shared.clone();
        for (name, s) in [("rx ring size", cfg.rx_size), ("tx ring size", cfg.tx_size)] {
            if s == 0 || !s.is_power_of_two() || s > (1 << 20) {
                return Err(Error::Invalid(format!(
                    "{name} {s} (must be a power of two up to 1048576)"
                )));
            }
        }
        if ifindex == 0 {
            return Err(Error::Invalid("interface index 0".into()));
        }
        if sh.bound.swap(true, Ordering::AcqRel) {
            return Err(Error::State("this umem already backs a socket"));
        }
        let r = Self::bind_inner(sh.clone(), ifindex, queue, cfg);
        if r.is_err() {
            sh.bound.store(false, Ordering::Release);
        }
        r
    }

    fn bind_inner(sh: Arc<Shared>, ifindex: u32, queue: u32, cfg: SocketConfig) -> Result<Socket> {
        let fd = sh.fd.0;
        // Ring sizes can be set only once per kernel socket; a refused earlier bind leaves them
        // in place, and a retry must ask for the same sizes.
        let want = (cfg.rx_size as u64) << 32 | cfg.tx_size as u64;
        match sh.ring_sizes.load(Ordering::Acquire) {
            0 => {
                sys::set_xdp_opt(fd, sys::XDP_RX_RING, &cfg.rx_size).map_err(|e| Error::os("XDP_RX_RING", e))?;
                sys::set_xdp_opt(fd, sys::XDP_TX_RING, &cfg.tx_size).map_err(|e| Error::os("XDP_TX_RING", e))?;
                sh.ring_sizes.store(want, Ordering::Release);
            }
            have if have == want => {}
            _ => {
                return Err(Error::Invalid(
                    "ring sizes differ from an earlier bind attempt on this umem (they are fixed once set)".into(),
                ))
            }
        }
        let off = sh.offsets;
        let rx = Ring::<XdpDesc>::map(fd, &off.rx, cfg.rx_size, sys::XDP_PGOFF_RX_RING, false)
            .map_err(|e| Error::os("mmap rx ring", e))?;
        let tx = Ring::<XdpDesc>::map(fd, &off.tx, cfg.tx_size, sys::XDP_PGOFF_TX_RING, true)
            .map_err(|e| Error::os("mmap tx ring", e))?;
        let wake = if cfg.need_wakeup { sys::XDP_USE_NEED_WAKEUP } else { 0 };
        let attempts: &[u16] = match cfg.mode {
            BindMode::Copy => &[sys::XDP_COPY],
            BindMode::ZeroCopy => &[sys::XDP_ZEROCOPY],
            BindMode::Auto => &[sys::XDP_ZEROCOPY, sys::XDP_COPY],
        };
        let deadline = Instant::now() + Duration::from_millis(cfg.bind_retry_ms as u64);
        let mut retries = 0u64;
        let mut last_err = None;
        'modes: for &m in attempts {
            loop {
                match bind_once(fd, ifindex, queue, m | wake) {
                    Ok(()) => {
                        last_err = None;
                        break 'modes;
                    }
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                    {
                        retries += 1;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(e) => {
                        last_err = Some((m, e));
                        break;
                    }
                }
            }
        }
        if let Some((m, e)) = last_err {
            return Err(match e.raw_os_error() {
                Some(libc::EOPNOTSUPP) if m == sys::XDP_ZEROCOPY => Error::Unsupported {
                    op: "zero-copy bind (the driver has no AF_XDP zero-copy support)",
                    err: e,
                },
                Some(libc::EBUSY) => {
                    Error::Busy { what: format!("queue {queue} of ifindex {ifindex}"), err: e }
                }
                Some(libc::ENODEV) => Error::Os { op: "bind: no such interface", err: e },
                Some(libc::EINVAL) => Error::NoQueue { ifindex, queue, err: e },
                _ => Error::os("bind", e),
            });
        }
        let mut opts = sys::XdpOptions::default();
        let zero_copy = match sys::get_xdp_opt(fd, sys::XDP_OPTIONS, &mut opts) {
            Ok(_) => opts.flags & sys::XDP_OPTIONS_ZEROCOPY != 0,
            Err(_) => false,
        };
        Ok(Socket {
            umem: sh,
            rx,
            tx,
            ifindex,
            queue,
            zero_copy,
            need_wakeup: cfg.need_wakeup,
            rx_packets: 0,
            tx_queued: 0,
            tx_kernel_dropped: 0,
            tx_kicks: 0,
            bind_retries: retries,
        })
    }

    pub fn fd(&self) -> i32 {
        self.umem.fd.0
    }
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }
    pub fn queue(&self) -> u32 {
        self.queue
    }
    /// True when bound in zero-copy mode (false: copy mode).
    pub fn is_zero_copy(&self) -> bool {
        self.zero_copy
    }
    pub fn uses_need_wakeup(&self) -> bool {
        self.need_wakeup
    }

    /// Moves up to `out.len()` received packets to the caller. Each desc's `addr` is where the
    /// data starts inside the umem, `len` its length; the frame is held by the caller until it
    /// is sent or released.
    pub fn recv(&mut self, out: &mut [XdpDesc]) -> u32 {
        let sh = &*self.umem;
        let fs = sh.cfg.frame_size as u64;
        let count = sh.cfg.frame_count as u64;
        let mut f = sh.frames.lock();
        let mut k = 0usize;
        let mut bad = 0u64;
        self.rx.consume(out.len() as u32, |d| {
            let i = d.addr / fs;
            if i < count
                && f.state[i as usize] == FrameState::InFill
                && (d.addr % fs) + d.len as u64 <= fs
            {
                f.state[i as usize] = FrameState::User;
                out[k] = d;
                k += 1;
            } else {
                bad += 1;
            }
        });
        f.counts[1] -= k as u32;
        f.counts[2] += k as u32;
        f.counters.kernel_bad_addr += bad;
        if k == 0 && sh.fill_needs_wakeup(&f) {
            f.counters.fill_wakeups += 1;
            drop(f);
            // SAFETY: an empty non-blocking recvfrom only wakes the driver's RX processing.
            unsafe {
                libc::recvfrom(
                    self.fd(),
                    std::ptr::null_mut(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
        }
        self.rx_packets += k as u64;
        k as u32
    }

    /// Queues held frames for transmission and kicks the kernel. The batch is checked first
    /// and refused whole (`Error::BadFrame`, frames stay held) if any desc is bad. Returns how
    /// many were queued: fewer than `descs.len()` when the TX ring is full, in which case the
    /// rest stay held by the caller.
    pub fn send(&mut self, descs: &[XdpDesc]) -> Result<u32> {
        let sh = self.umem.clone();
        let mut f = sh.frames.lock();
        sh.reap_locked(&mut f);
        let n = self.tx.free(descs.len() as u32).min(descs.len() as u32) as usize;
        sh.transition(&mut f, &descs[..n], true, FrameState::InTx)?;
        // Check the unsent tail too, so a bad desc is reported regardless of ring space.
        if n < descs.len() {
            sh.transition(&mut f, &descs[n..], true, FrameState::User).inspect_err(|_| {
                // Undo the first part.
                let fs = sh.cfg.frame_size as u64;
                for d in &descs[..n] {
                    f.state[(d.addr / fs) as usize] = FrameState::User;
                }
                f.counts[3] -= n as u32;
                f.counts[2] += n as u32;
            })?;
        }
        self.tx.produce(descs[..n].iter().copied());
        self.tx_queued += n as u64;
        drop(f);
        self.kick()?;
        Ok(n as u32)
    }

    /// Descriptors on the TX ring not yet taken by the kernel.
    pub fn tx_pending(&self) -> u32 {
        self.tx.outstanding()
    }

    /// Drives copy-mode transmission: each sendto moves a bounded batch (32 in current
    /// kernels), so this loops, reaping completions in between, until the ring is drained or
    /// a bounded number of kicks made no progress. Only kicks when the kernel asks for it (or
    /// always, without need-wakeup).
    pub fn kick(&mut self) -> Result<()> {
        let mut stalls = 0;
        while self.tx.outstanding() > 0 {
            if self.need_wakeup && !self.tx.needs_wakeup() {
                return Ok(());
            }
            let before = self.tx.outstanding();
            self.tx_kicks += 1;
            // SAFETY: a zero-length non-blocking sendto on our socket only triggers TX.
            let r = unsafe {
                libc::sendto(
                    self.fd(),
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) | Some(libc::ENOBUFS) => {}
                    // The frame was completed but not delivered (the device queue refused it).
                    Some(libc::EBUSY) => self.tx_kernel_dropped += 1,
                    Some(libc::ENETDOWN) => return Err(Error::os("transmit: interface down", e)),
                    _ => return Err(Error::os("sendto (tx kick)", e)),
                }
            }
            self.umem.reap_locked(&mut self.umem.frames.lock());
            if self.tx.outstanding() >= before {
                stalls += 1;
                if stalls >= 8 {
                    return Ok(());
                }
            } else {
                stalls = 0;
            }
        }
        Ok(())
    }

    /// Waits up to `timeout_ms` (negative: forever, 0: just check) for received packets; true
    /// if RX has data. A signal ends the wait early with false. The poll(2) also lets the
    /// kernel drive pending TX when it asked for a wakeup.
    pub fn poll_rx(&mut self, timeout_ms: i32) -> Result<bool> {
        if self.rx.available(1) > 0 {
            return Ok(true);
        }
        sys::poll_in(self.fd(), timeout_ms).map_err(|e| Error::os("poll", e))
    }

    /// [`poll_rx`](Self::poll_rx) for a socket shared behind a lock: the RX ring is checked
    /// with the lock held, the poll(2) itself runs without it, so other threads' calls on the
    /// socket (send, kick, stats) are not held up for the length of the wait.
    pub fn wait(sock: &parking_lot::Mutex<Socket>, timeout_ms: i32) -> Result<bool> {
        let fd = {
            let mut g = sock.lock();
            let ready = g.poll_rx(0)?;
            if ready || timeout_ms == 0 {
                return Ok(ready);
            }
            g.fd()
        };
        sys::poll_in(fd, timeout_ms).map_err(|e| Error::os("poll", e))
    }

    pub fn stats(&self) -> Result<Stats> {
        let mut k = XdpStatistics::default();
        sys::get_xdp_opt(self.fd(), sys::XDP_STATISTICS, &mut k)
            .map_err(|e| Error::os("XDP_STATISTICS", e))?;
        let c = self.umem.frames.lock().counters;
        Ok(Stats {
            kernel: k,
            rx_packets: self.rx_packets,
            tx_queued: self.tx_queued,
            tx_completed: c.completions,
            tx_kernel_dropped: self.tx_kernel_dropped,
            rejected_descs: c.rejected,
            tx_kicks: self.tx_kicks,
            fill_wakeups: c.fill_wakeups,
            bind_retries: self.bind_retries,
        })
    }

    /// Test hook: puts a raw descriptor on the TX ring without the wrapper's checks, so the
    /// kernel's own invalid-descriptor handling can be observed. The frame, if any, must be
    /// held by the caller; it stays held (the kernel never completes an invalid descriptor).
    #[doc(hidden)]
    pub fn push_raw_tx_for_test(&mut self, d: XdpDesc) -> Result<()> {
        if self.tx.free(1) == 0 {
            return Err(Error::State("tx ring full"));
        }
        self.tx.produce(std::iter::once(d));
        self.kick()
    }
}

impl Shared {
    fn fill_needs_wakeup(&self, f: &super::umem::Frames) -> bool {
        f.fill.needs_wakeup()
    }
}
