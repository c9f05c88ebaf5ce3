//! The epoll worker loop, for kernels or sandboxes without a usable io_uring. Same worker
//! model (own listener, own eventfd) and the same callback contract: level-triggered reads
//! into a per-worker scratch buffer, output written at once with `sendmsg` and the rest
//! queued until `EPOLLOUT`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conn::{self, ud, untag, Worker, WorkerLoop, MAX_IOV};
use super::uring::accept_fd;
use super::{Config, Error, Handler, Shared, StatCells};

/// What an epoll event is about, kept in the top byte of its data word with the
/// connection's slot and generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Source {
    /// The worker's listener.
    Accept = 1,
    /// A connection's socket.
    Conn = 2,
    /// The worker's eventfd.
    Wake = 5,
}

impl Source {
    fn tag(self, slot: usize, gen: u32) -> u64 {
        ud(self as u8, slot, gen)
    }

    fn of(data: u64) -> Option<(Source, usize, u32)> {
        let (kind, slot, gen) = untag(data);
        let src = match kind {
            1 => Source::Accept,
            2 => Source::Conn,
            5 => Source::Wake,
            _ => return None,
        };
        Some((src, slot, gen))
    }
}

struct Loop {
    ep: OwnedFd,
    listener: Option<OwnedFd>,
    wake_fd: RawFd,
    scratch: Vec<u8>,
    iov: Vec<libc::iovec>,
    syscalls: u64,
    /// The epoll interest set of each connection slot (the backend's only per-connection
    /// state), written when the connection is added.
    masks: Vec<u32>,
    /// Set while the listener is out of the epoll set after accept4 ran out of fds or memory
    /// (EMFILE/ENFILE/ENOMEM/ENOBUFS): it is re-added at this time. The listener is
    /// level-triggered, so leaving it in would report it again at once and spin.
    accept_retry_at: Option<Instant>,
}

/// How long accepting pauses after accept4 ran out of fds or memory.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

fn ctl(ep: RawFd, op: libc::c_int, fd: RawFd, events: u32, data: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: epoll_ctl with a live event struct.
    if unsafe { libc::epoll_ctl(ep, op, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(crate) fn run<H: Handler, M: FnOnce() -> H>(
    index: usize,
    listener: OwnedFd,
    shared: Arc<Shared>,
    cfg: Arc<Config>,
    make: M,
    ready: Sender<Result<(), Error>>,
) {
    // SAFETY: plain epoll_create1; checked below.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        let _ = ready.send(Err(Error::Io(io::Error::last_os_error())));
        return;
    }
    // SAFETY: fresh fd owned by nobody else.
    let ep = unsafe { OwnedFd::from_raw_fd(ep) };
    let wake_fd = shared.workers[index].wake.as_raw_fd();
    let setup = ctl(
        ep.as_raw_fd(),
        libc::EPOLL_CTL_ADD,
        listener.as_raw_fd(),
        libc::EPOLLIN as u32,
        Source::Accept.tag(0, 0),
    )
    .and_then(|_| {
        ctl(
            ep.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            wake_fd,
            libc::EPOLLIN as u32,
            Source::Wake.tag(0, 0),
        )
    });
    if let Err(e) = setup {
        let _ = ready.send(Err(Error::Io(e)));
        return;
    }
    let scratch = vec![0u8; cfg.rx_buf_size];
    let mut w = Worker::new(index, cfg, shared);
    let mut h = make();
    let mut l = Loop {
        ep,
        listener: Some(listener),
        wake_fd,
        scratch,
        iov: Vec::with_capacity(MAX_IOV),
        syscalls: 0,
        masks: Vec::new(),
        accept_retry_at: None,
    };
    let _ = ready.send(Ok(()));
    if let Some(p) = conn::drive(&mut l, &mut w, &mut h, "epoll_wait") {
        std::panic::resume_unwind(p);
    }
}

impl WorkerLoop for Loop {
    /// Runs until the worker has stopped; an error means epoll itself failed.
    fn run<H: Handler>(&mut self, w: &mut Worker, h: &mut H) -> io::Result<()> {
        let mut events: Vec<libc::epoll_event> = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        loop {
            if !w.stopping && w.shared.stop.load(Ordering::Acquire) {
                w.begin_stop();
                if let Some(l) = self.listener.take() {
                    if self.accept_retry_at.take().is_none() {
                        let _ = ctl(self.ep.as_raw_fd(), libc::EPOLL_CTL_DEL, l.as_raw_fd(), 0, 0);
                    }
                }
            }
            self.rearm_accept();
            w.settle(|w| self.flush(w, h));
            if w.stopping && w.open == 0 {
                return Ok(());
            }
            let mut timeout = w.next_timer();
            if w.stopping {
                let d = w.enforce_drain().unwrap_or(Duration::from_millis(50));
                timeout = Some(timeout.map_or(d, |t| t.min(d)));
            }
            if let Some(at) = self.accept_retry_at {
                let d = at.saturating_duration_since(Instant::now());
                timeout = Some(timeout.map_or(d, |t| t.min(d)));
            }
            let ms = match timeout {
                None => -1,
                Some(d) => d.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32,
            };
            // SAFETY: the events buffer holds events.len() entries.
            let n = unsafe {
                libc::epoll_wait(self.ep.as_raw_fd(), events.as_mut_ptr(), events.len() as i32, ms)
            };
            let st = w.stats();
            StatCells::add(&st.enters, 1);
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(e);
            }
            StatCells::add(&st.completions, n as u64);
            for ev in &events[..n as usize] {
                let mask = ev.events;
                match Source::of(ev.u64) {
                    Some((Source::Accept, _, _)) => self.accept(w, h),
                    Some((Source::Wake, _, _)) => super::sys::drain_eventfd(self.wake_fd),
                    Some((Source::Conn, slot, gen)) => self.conn_event(w, h, slot, gen, mask),
                    None => {}
                }
            }
            StatCells::add(&w.stats().submissions, std::mem::take(&mut self.syscalls));
        }
    }

    /// Nothing is in the kernel's hands: closing the listener is all there is to do.
    fn abandon(&mut self, _w: &mut Worker) {
        self.listener = None;
    }
}

impl Loop {
    fn accept<H: Handler>(&mut self, w: &mut Worker, h: &mut H) {
        let Some(listener) = self.listener.as_ref().map(|l| l.as_raw_fd()) else { return };
        for _ in 0..64 {
            self.syscalls += 1;
            // SAFETY: accept4 without an address buffer.
            let fd = unsafe {
                libc::accept4(
                    listener,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                let e = io::Error::last_os_error().raw_os_error().unwrap_or(0);
                if matches!(e, libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) {
                    // Out of fds or memory: take the listener out of the set and back off
                    // (pending connections wait in the backlog) instead of spinning on it.
                    if ctl(self.ep.as_raw_fd(), libc::EPOLL_CTL_DEL, listener, 0, 0).is_ok() {
                        self.accept_retry_at = Some(Instant::now() + ACCEPT_BACKOFF);
                    }
                }
                return;
            }
            if let Some(slot) = accept_fd(w, h, fd) {
                let gen = w.conns[slot].gen;
                let mask = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
                if self.masks.len() <= slot {
                    self.masks.resize(slot + 1, 0);
                }
                match ctl(
                    self.ep.as_raw_fd(),
                    libc::EPOLL_CTL_ADD,
                    fd,
                    mask,
                    Source::Conn.tag(slot, gen),
                ) {
                    Ok(()) => self.masks[slot] = mask,
                    Err(_) => w.begin_close(slot, true),
                }
            }
        }
    }

    /// Puts the listener back into the epoll set once the accept back-off has passed.
    fn rearm_accept(&mut self) {
        let Some(at) = self.accept_retry_at else { return };
        if at > Instant::now() {
            return;
        }
        let Some(l) = self.listener.as_ref() else {
            self.accept_retry_at = None;
            return;
        };
        match ctl(
            self.ep.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            l.as_raw_fd(),
            libc::EPOLLIN as u32,
            Source::Accept.tag(0, 0),
        ) {
            Ok(()) => self.accept_retry_at = None,
            // Could not re-add (out of memory): try again after another back-off.
            Err(_) => self.accept_retry_at = Some(Instant::now() + ACCEPT_BACKOFF),
        }
    }

    fn conn_event<H: Handler>(
        &mut self,
        w: &mut Worker,
        h: &mut H,
        slot: usize,
        gen: u32,
        mask: u32,
    ) {
        if !matches!(w.conns.get(slot), Some(c) if c.is_live() && c.gen == gen) {
            return;
        }
        if mask & libc::EPOLLOUT as u32 != 0 {
            w.mark_dirty(slot);
        }
        let readable =
            mask & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0;
        if !readable {
            return;
        }
        if !w.conns[slot].wants_read() {
            if mask & (libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                // Not reading, but the socket is dead: level-triggered HUP would spin.
                w.cut_on_error(slot, 0);
            }
            return;
        }
        let fd = w.conns[slot].fd;
        self.syscalls += 1;
        // SAFETY: reads into the worker's scratch buffer of the length passed.
        let n = unsafe {
            libc::recv(fd, self.scratch.as_mut_ptr().cast(), self.scratch.len(), libc::MSG_DONTWAIT)
        };
        if n > 0 {
            conn::deliver(w, h, slot, &self.scratch[..n as usize]);
        } else if n == 0 {
            w.conns[slot].eof = true;
            w.mark_dirty(slot);
        } else {
            let e = io::Error::last_os_error().raw_os_error().unwrap_or(0);
            if e != libc::EAGAIN && e != libc::EINTR {
                w.cut_on_error(slot, e);
            }
        }
    }

    fn flush<H: Handler>(&mut self, w: &mut Worker, h: &mut H) {
        while let Some(slot) = conn::next_dirty(w, h) {
            let mut first = false;
            if w.conns[slot].end_if_due(&mut first) {
                // No operation outlives its system call here: the connection ends at once.
                let _ = ctl(self.ep.as_raw_fd(), libc::EPOLL_CTL_DEL, w.conns[slot].fd, 0, 0);
                conn::finalize(w, h, slot);
                continue;
            }
            // Write what the socket takes now; the rest waits for EPOLLOUT.
            while w.conns[slot].wants_send() {
                let c = &w.conns[slot];
                c.fill_iov(&mut self.iov, MAX_IOV);
                if self.iov.is_empty() {
                    conn::sent(w, h, slot, 0);
                    continue;
                }
                let total: usize = self.iov.iter().map(|v| v.iov_len).sum();
                // SAFETY: msghdr is plain data; all-zero is valid.
                let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                msg.msg_iov = self.iov.as_mut_ptr();
                msg.msg_iovlen = self.iov.len();
                self.syscalls += 1;
                // SAFETY: the iovecs point at queued segments that stay alive during the call.
                let n =
                    unsafe { libc::sendmsg(c.fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
                if n < 0 {
                    let e = io::Error::last_os_error().raw_os_error().unwrap_or(0);
                    if e != libc::EAGAIN && e != libc::EINTR {
                        w.cut_on_error(slot, e);
                    }
                    break;
                }
                conn::sent(w, h, slot, n as usize);
                if (n as usize) < total {
                    break;
                }
            }
            let c = &w.conns[slot];
            if !c.is_live() {
                continue;
            }
            let mut want = 0u32;
            if c.wants_read() {
                want |= (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
            }
            if c.wants_send() {
                want |= libc::EPOLLOUT as u32;
            }
            if want != self.masks[slot] {
                let data = Source::Conn.tag(slot, c.gen);
                if ctl(self.ep.as_raw_fd(), libc::EPOLL_CTL_MOD, c.fd, want, data).is_ok() {
                    self.masks[slot] = want;
                } else {
                    w.begin_close(slot, true);
                }
            }
        }
    }
}
