//! The io_uring worker loop: multishot accept on the worker's own listener, one multishot
//! recv per connection from the worker's provided buffer ring, one `sendmsg` in flight per
//! connection, and a multishot poll on the worker's eventfd for posted work and stop.
//!
//! Every CQE is handled before any new SQE is pushed: callbacks only change connection state
//! and mark the connection dirty; `flush` turns dirty state into SQEs afterwards.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::bufring::ProvidedBufRing;
use super::conn::{self, ud, untag, Worker, WorkerLoop, MAX_IOV};
use super::{probe, Config, Error, Handler, Shared, StatCells};

const K_ACCEPT: u64 = 1;
const K_RECV: u64 = 2;
const K_SEND: u64 = 3;
const K_CANCEL: u64 = 4;
const K_WAKE: u64 = 5;
const BGID: u16 = 0;

struct Loop {
    ring: IoUring,
    bufs: ProvidedBufRing,
    listener: OwnedFd,
    wake_fd: RawFd,
    accept_armed: bool,
    accept_cancelled: bool,
    accept_retry_at: Option<Instant>,
    wake_armed: bool,
    wake_cancelled: bool,
    /// Operations whose final CQE has not arrived; the ring is dropped only at 0.
    inflight: usize,
    pushed: u64,
    enters: u64,
    cqes: Vec<(u64, i32, u32)>,
}

pub(crate) fn run<H: Handler, M: FnOnce() -> H>(
    index: usize,
    listener: OwnedFd,
    shared: Arc<Shared>,
    cfg: Arc<Config>,
    make: M,
    ready: Sender<Result<(), Error>>,
) {
    let ring = match probe::build_ring(cfg.sq_entries) {
        Ok((r, _)) => r,
        Err(e) => {
            let _ = ready.send(Err(Error::Io(e)));
            return;
        }
    };
    let bufs = match ProvidedBufRing::new(&ring, BGID, cfg.rx_buf_count, cfg.rx_buf_size) {
        Ok(b) => b,
        Err(e) => {
            let _ = ready.send(Err(Error::Io(e)));
            return;
        }
    };
    // io_uring waits for connections itself; a blocking listener makes it park the accept
    // on the socket's wait queue instead of failing it with EAGAIN.
    // SAFETY: fcntl on a listener we own.
    unsafe {
        let fl = libc::fcntl(listener.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(listener.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
    }
    let wake_fd = shared.workers[index].wake.as_raw_fd();
    let mut w = Worker::new(index, cfg, shared);
    let mut h = make();
    let mut l = Loop {
        ring,
        bufs,
        listener,
        wake_fd,
        accept_armed: false,
        accept_cancelled: false,
        accept_retry_at: None,
        wake_armed: false,
        wake_cancelled: false,
        inflight: 0,
        pushed: 0,
        enters: 0,
        cqes: Vec::with_capacity(256),
    };
    let _ = ready.send(Ok(()));
    let panicked = conn::drive(&mut l, &mut w, &mut h, "io_uring");
    let Loop { ring, mut bufs, listener, .. } = l;
    bufs.unregister(&ring);
    drop(ring);
    drop(bufs);
    drop(listener);
    if let Some(p) = panicked {
        std::panic::resume_unwind(p);
    }
}

impl WorkerLoop for Loop {
    /// Runs until the worker has stopped; an error means io_uring itself failed.
    fn run<H: Handler>(&mut self, w: &mut Worker, h: &mut H) -> std::io::Result<()> {
        loop {
            if !w.stopping && w.shared.stop.load(Ordering::Acquire) {
                w.begin_stop();
            }
            w.settle(|w| self.flush(w, h));
            self.arm_listeners(w);
            if w.stopping && w.open == 0 && !self.accept_armed && !self.wake_armed && self.inflight == 0 {
                return Ok(());
            }
            let mut timeout = w.next_timer();
            if w.stopping {
                timeout = min_opt(timeout, w.enforce_drain().or(Some(Duration::from_millis(50))));
            }
            if let Some(at) = self.accept_retry_at {
                timeout = min_opt(timeout, Some(at.saturating_duration_since(Instant::now())));
            }
            self.wait(timeout)?;
            self.reap(w, h);
            let st = w.stats();
            StatCells::add(&st.submissions, std::mem::take(&mut self.pushed));
            StatCells::add(&st.enters, std::mem::take(&mut self.enters));
        }
    }

    /// Abnormal end (the ring failed or a handler panicked): cancels every operation still
    /// in the kernel and waits for the cancellations, so no send still reads borrowed memory
    /// and no recv still writes a provided buffer.
    fn abandon(&mut self) {
        let wait = types::Timespec::new().sec(1);
        let _ = self.ring.submitter().register_sync_cancel(Some(wait), types::CancelBuilder::any());
    }
}

impl Loop {
    fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: every entry built here points only at memory that outlives the
            // operation: the buffer ring (unregistered after the last CQE), a connection's
            // boxed msghdr and iovecs with the queued segments (kept until the send's CQE),
            // and fds closed only after their operations completed.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                self.pushed += 1;
                self.inflight += 1;
                return;
            }
            // Queue full: hand what is there to the kernel and retry.
            self.enters += 1;
            let _ = self.ring.submit();
        }
    }

    fn wait(&mut self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.enters += 1;
        let r = match timeout {
            None => self.ring.submit_and_wait(1),
            Some(d) if d.is_zero() => self.ring.submit(),
            Some(d) => {
                let ts = types::Timespec::new().sec(d.as_secs()).nsec(d.subsec_nanos());
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        if let Err(e) = r {
            match e.raw_os_error() {
                Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN) => {}
                _ => return Err(e),
            }
        }
        Ok(())
    }

    fn arm_listeners(&mut self, w: &mut Worker) {
        if w.stopping {
            if self.accept_armed && !self.accept_cancelled {
                self.accept_cancelled = true;
                self.push(opcode::AsyncCancel::new(ud(K_ACCEPT, 0, 0)).build().user_data(ud(K_CANCEL, 0, 0)));
            }
            if w.open == 0 && self.wake_armed && !self.wake_cancelled {
                self.wake_cancelled = true;
                self.push(opcode::AsyncCancel::new(ud(K_WAKE, 0, 0)).build().user_data(ud(K_CANCEL, 0, 0)));
            }
            return;
        }
        if !self.accept_armed && self.accept_retry_at.map_or(true, |at| at <= Instant::now()) {
            self.accept_retry_at = None;
            self.accept_armed = true;
            let e = opcode::AcceptMulti::new(types::Fd(self.listener.as_raw_fd()))
                .flags(libc::SOCK_CLOEXEC)
                .build()
                .user_data(ud(K_ACCEPT, 0, 0));
            self.push(e);
        }
        if !self.wake_armed {
            self.wake_armed = true;
            let e = opcode::PollAdd::new(types::Fd(self.wake_fd), libc::POLLIN as u32)
                .multi(true)
                .build()
                .user_data(ud(K_WAKE, 0, 0));
            self.push(e);
        }
    }

    /// Turns the state changes of dirty connections into SQEs (and finishes closes).
    fn flush<H: Handler>(&mut self, w: &mut Worker, h: &mut H) {
        while let Some(slot) = conn::next_dirty(w, h) {
            let gen = w.conns[slot].gen;
            let c = &mut w.conns[slot];
            if c.closing && (c.abort || (c.out.is_empty() && !c.send_inflight)) {
                if !c.shut {
                    c.shut = true;
                    // SAFETY: shutdown on the connection's own, still open fd; it ends the
                    // recv and any send in flight so their CQEs arrive.
                    unsafe { libc::shutdown(c.fd, libc::SHUT_RDWR) };
                }
                if c.recv_armed && !c.recv_cancel_sent {
                    c.recv_cancel_sent = true;
                    self.push(opcode::AsyncCancel::new(ud(K_RECV, slot, gen)).build().user_data(ud(K_CANCEL, slot, gen)));
                }
                let c = &mut w.conns[slot];
                if c.send_inflight && c.abort && !c.send_cancel_sent {
                    // The shutdown above already fails a send parked on a full window; the
                    // cancel makes sure, since the close waits for that send's CQE.
                    c.send_cancel_sent = true;
                    self.push(opcode::AsyncCancel::new(ud(K_SEND, slot, gen)).build().user_data(ud(K_CANCEL, slot, gen)));
                }
                let c = &w.conns[slot];
                if !c.recv_armed && !c.send_inflight {
                    conn::finalize(w, h, slot);
                }
                continue;
            }
            let want = c.wants_read();
            let fd = c.fd;
            if want && !c.recv_armed {
                c.recv_armed = true;
                c.recv_cancel_sent = false;
                self.push(opcode::RecvMulti::new(types::Fd(fd), BGID).build().user_data(ud(K_RECV, slot, gen)));
            } else if !want && c.recv_armed && !c.recv_cancel_sent {
                c.recv_cancel_sent = true;
                self.push(opcode::AsyncCancel::new(ud(K_RECV, slot, gen)).build().user_data(ud(K_CANCEL, slot, gen)));
            }
            let c = &mut w.conns[slot];
            if !c.send_inflight && !c.out.is_empty() && !c.abort {
                let mut iov = std::mem::take(&mut c.iov);
                let covered = c.fill_iov(&mut iov, MAX_IOV);
                c.iov = iov;
                if c.iov.is_empty() {
                    // Only empty borrowed sends at the head: complete them in order now.
                    conn::sent(w, h, slot, 0);
                    continue;
                }
                if c.iov.len() == 1 {
                    // One contiguous piece (the common case): a plain send, no msghdr.
                    let (ptr, len) = (c.iov[0].iov_base as *const u8, c.iov[0].iov_len.min(u32::MAX as usize) as u32);
                    c.inflight_segs = covered;
                    c.send_inflight = true;
                    let e = opcode::Send::new(types::Fd(fd), ptr, len)
                        .flags(libc::MSG_NOSIGNAL)
                        .build()
                        .user_data(ud(K_SEND, slot, gen));
                    self.push(e);
                    continue;
                }
                let msg = c.msg.get_or_insert_with(|| {
                    // SAFETY: msghdr is plain data; all-zero is valid (no name, no control).
                    Box::new(unsafe { std::mem::zeroed() })
                });
                msg.msg_iov = c.iov.as_mut_ptr();
                msg.msg_iovlen = c.iov.len();
                let msg_ptr: *const libc::msghdr = &**msg;
                c.inflight_segs = covered;
                c.send_inflight = true;
                let e = opcode::SendMsg::new(types::Fd(fd), msg_ptr)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build()
                    .user_data(ud(K_SEND, slot, gen));
                self.push(e);
            }
        }
    }

    fn reap<H: Handler>(&mut self, w: &mut Worker, h: &mut H) {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
        StatCells::add(&w.stats().completions, cqes.len() as u64);
        for &(data, res, flags) in &cqes {
            let (kind, slot, gen) = untag(data);
            let more = cqueue::more(flags);
            match kind {
                K_ACCEPT => self.on_accept(w, h, res, more),
                K_RECV => self.on_recv(w, h, slot, gen, res, flags),
                K_SEND => {
                    self.inflight -= 1;
                    if !matches!(w.conns.get(slot), Some(c) if c.live && c.gen == gen) {
                        continue;
                    }
                    w.conns[slot].send_inflight = false;
                    if res >= 0 {
                        conn::sent(w, h, slot, res as usize);
                    } else {
                        w.conns[slot].inflight_segs = 0;
                        w.begin_close(slot, true);
                    }
                }
                K_CANCEL => self.inflight -= 1,
                K_WAKE => {
                    sysdrain(self.wake_fd);
                    if !more {
                        self.inflight -= 1;
                        self.wake_armed = false;
                    }
                }
                _ => {}
            }
        }
        self.bufs.publish();
        self.cqes = cqes;
    }

    fn on_accept<H: Handler>(&mut self, w: &mut Worker, h: &mut H, res: i32, more: bool) {
        if !more {
            self.inflight -= 1;
            self.accept_armed = false;
            self.accept_cancelled = false;
        }
        if res < 0 {
            if matches!(-res, libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) && !more {
                // Out of fds or memory: back off before re-arming instead of spinning.
                self.accept_retry_at = Some(Instant::now() + Duration::from_millis(10));
            }
            return;
        }
        let fd = res;
        if w.stopping {
            // SAFETY: a fresh fd from accept that nobody else owns.
            unsafe { libc::close(fd) };
            return;
        }
        accept_fd(w, h, fd);
    }

    fn on_recv<H: Handler>(&mut self, w: &mut Worker, h: &mut H, slot: usize, gen: u32, res: i32, flags: u32) {
        let more = cqueue::more(flags);
        let bid = cqueue::buffer_select(flags);
        if !more {
            self.inflight -= 1;
        }
        let ours = matches!(w.conns.get(slot), Some(c) if c.live && c.gen == gen);
        if ours && !more {
            let c = &mut w.conns[slot];
            c.recv_armed = false;
            c.recv_cancel_sent = false;
            w.mark_dirty(slot);
        }
        if res > 0 {
            if let Some(bid) = bid {
                if ours {
                    let data = self.bufs.data(bid, res as usize);
                    conn::deliver(w, h, slot, data);
                }
                self.bufs.push(bid);
            }
            return;
        }
        if let Some(bid) = bid {
            self.bufs.push(bid);
        }
        if !ours {
            return;
        }
        match -res {
            0 => {
                w.conns[slot].eof = true;
                w.mark_dirty(slot);
            }
            libc::ENOBUFS => {
                // Every buffer is out: back-pressure, not an error. The buffers come back as
                // this batch is handled, and flush re-arms the recv.
                StatCells::add(&w.stats().bufring_empty, 1);
            }
            libc::ECANCELED => {}
            _ => w.begin_close(slot, true),
        }
    }
}

/// Registers a freshly accepted fd with the worker (shared by both backends).
pub(crate) fn accept_fd<H: Handler>(w: &mut Worker, h: &mut H, fd: RawFd) -> Option<usize> {
    let Some(slot) = w.insert(fd) else {
        // SAFETY: a fresh fd from accept that nobody else owns.
        unsafe { libc::close(fd) };
        StatCells::add(&w.stats().rejected, 1);
        return None;
    };
    if w.cfg.tcp_nodelay {
        super::sys::set_nodelay(fd);
    }
    let id = w.id_of(slot);
    if !h.on_accept(w, id) {
        w.refuse(slot);
        return None;
    }
    w.mark_dirty(slot);
    Some(slot)
}

fn sysdrain(fd: RawFd) {
    super::sys::drain_eventfd(fd);
}

fn min_opt(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}
