//! The io_uring worker loop: multishot accept on the worker's own listener, one multishot
//! recv per connection from the worker's provided buffer ring, one `sendmsg` in flight per
//! connection, and a multishot poll on the worker's eventfd for posted work and stop.
//!
//! Every CQE is handled before any new SQE is pushed: callbacks only change connection state
//! and mark the connection dirty; `flush` turns dirty state into SQEs afterwards.
//!
//! The kernel rules the loop keeps (io_uring_multishot(7), io_uring_cancelation(7),
//! io_uring_provided_buffers(7)), each at the state transition that follows it:
//! - a multishot operation is live until a CQE without `IORING_CQE_F_MORE`; only then is it
//!   `Idle` and may be armed again (a recv that ran out of buffers ends with ENOBUFS and is
//!   re-armed once buffers are back);
//! - a cancel only asks: the target's own final CQE says it ended, so states leave
//!   `Cancelling` on that CQE, never on the cancel's;
//! - one send in flight per connection (two sends on one socket have no order);
//! - a connection's fd is closed, and its queued memory handed back, only once its recv and
//!   its send have both delivered their final CQE (an fd closed earlier can be reused by an
//!   accept while old operations still name it).
//!
//! One thing the loop does not take on trust: that an armed multishot recv reports its
//! socket's end. On kernel 6.18 a recv armed on a TCP socket that the peer then reset (or
//! closed) was seen to stay in the ring's poll list without ever posting a CQE, the socket
//! already gone from the TCP table, so the connection was never closed (about one connection
//! in 10^5 under the soak's faults). Every `SWEEP_EVERY` the loop looks, with a non-blocking
//! `MSG_PEEK`, at each open connection nothing was heard from since the last look (`sweep`):
//! an error or end of stream there is handled as the recv would have, and bytes left waiting
//! behind an armed recv get it cancelled and armed anew. A connection whose peer is gone is so
//! closed within two sweeps.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::bufring::ProvidedBufRing;
use super::conn::{self, ud, untag, SendOp, Worker, WorkerLoop, MAX_IOV};
use super::{probe, Config, Error, Handler, Shared, StatCells};

const BGID: u16 = 0;

/// How often `sweep` looks at connections nothing was heard from (see the module comment).
#[cfg(not(test))]
const SWEEP_EVERY: Duration = Duration::from_secs(2);
#[cfg(test)]
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// The kind of operation a CQE belongs to, kept in the top byte of its user_data with the
/// connection's slot and generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Op {
    /// The worker's multishot accept.
    Accept = 1,
    /// A connection's multishot recv.
    Recv = 2,
    /// A connection's send (`Send` or `SendMsg`).
    Send = 3,
    /// An AsyncCancel. Its own result is only advice (0 found, -ENOENT already done,
    /// -EALREADY running): the target's final CQE is what ends the target.
    Cancel = 4,
    /// The multishot poll on the worker's eventfd.
    Wake = 5,
}

impl Op {
    fn tag(self, slot: usize, gen: u32) -> u64 {
        ud(self as u8, slot, gen)
    }

    fn of(data: u64) -> Option<(Op, usize, u32)> {
        let (kind, slot, gen) = untag(data);
        let op = match kind {
            1 => Op::Accept,
            2 => Op::Recv,
            3 => Op::Send,
            4 => Op::Cancel,
            5 => Op::Wake,
            _ => return None,
        };
        Some((op, slot, gen))
    }
}

/// A multishot operation (accept, recv, eventfd poll) as the kernel sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Multishot {
    /// Not in the kernel: may be armed.
    Idle,
    /// In the kernel; its CQEs carry F_MORE until the last one.
    Armed,
    /// In the kernel with an AsyncCancel submitted; `Idle` again at its final CQE.
    Cancelling,
}

/// The io_uring side of one connection, kept beside the worker's table at the same slot.
/// A slot is freed only when its recv is `Idle`, so a new connection finds it so.
struct SlotIo {
    recv: Multishot,
    /// A CQE of this connection's recv or send arrived since the last `sweep`.
    heard: bool,
    /// iovecs and header of the send in flight (heap-stable while it runs).
    iov: Vec<libc::iovec>,
    msg: Option<Box<libc::msghdr>>,
}

impl SlotIo {
    fn new() -> SlotIo {
        SlotIo { recv: Multishot::Idle, heard: false, iov: Vec::new(), msg: None }
    }
}

struct Loop {
    ring: IoUring,
    bufs: ProvidedBufRing,
    listener: OwnedFd,
    wake_fd: RawFd,
    accept: Multishot,
    accept_retry_at: Option<Instant>,
    /// When `sweep` runs next.
    sweep_at: Instant,
    wake: Multishot,
    io: Vec<SlotIo>,
    /// Operations whose final CQE has not arrived; the ring is dropped only at 0.
    inflight: usize,
    /// Set by `abandon` when some operation's end could not be confirmed: the provided
    /// buffers are then never unmapped (a recv could still write into them).
    unconfirmed: bool,
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
        accept: Multishot::Idle,
        accept_retry_at: None,
        sweep_at: Instant::now() + SWEEP_EVERY,
        wake: Multishot::Idle,
        io: Vec::new(),
        inflight: 0,
        unconfirmed: false,
        pushed: 0,
        enters: 0,
        cqes: Vec::with_capacity(256),
    };
    let _ = ready.send(Ok(()));
    let panicked = conn::drive(&mut l, &mut w, &mut h, "io_uring");
    let Loop { ring, mut bufs, listener, unconfirmed, .. } = l;
    bufs.unregister(&ring);
    drop(ring);
    if unconfirmed {
        // Closing the ring cancels what is left, but not synchronously: the buffers stay
        // mapped for the rest of the process rather than be written after an unmap.
        std::mem::forget(bufs);
    } else {
        drop(bufs);
    }
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
            if Instant::now() >= self.sweep_at {
                self.sweep(w);
                self.sweep_at = Instant::now() + SWEEP_EVERY;
            }
            w.settle(|w| self.flush(w, h));
            self.arm_listeners(w);
            if w.stopping
                && w.open == 0
                && self.accept == Multishot::Idle
                && self.wake == Multishot::Idle
                && self.inflight == 0
            {
                return Ok(());
            }
            let mut timeout = w.next_timer();
            if w.stopping {
                timeout = min_opt(timeout, w.enforce_drain().or(Some(Duration::from_millis(50))));
            }
            if let Some(at) = self.accept_retry_at {
                timeout = min_opt(timeout, Some(at.saturating_duration_since(Instant::now())));
            }
            if w.open > 0 {
                timeout =
                    min_opt(timeout, Some(self.sweep_at.saturating_duration_since(Instant::now())));
            }
            self.wait(timeout)?;
            self.reap(w, h);
            let st = w.stats();
            StatCells::add(&st.submissions, std::mem::take(&mut self.pushed));
            StatCells::add(&st.enters, std::mem::take(&mut self.enters));
        }
    }

    /// Abnormal end (the ring failed or a handler panicked): cancels every operation still
    /// in the kernel and waits for their final CQEs, so no send still reads memory that is
    /// handed back and no recv still writes a provided buffer. The cancel's result is
    /// checked, and what it claims is confirmed by the CQEs themselves: a send whose final
    /// CQE never arrives keeps its `SendOp`, and `finalize` never hands its memory back.
    fn abandon(&mut self, w: &mut Worker) {
        let wait = types::Timespec::new().sec(1);
        let cancelled = if skip_sync_cancel() {
            Err(std::io::Error::from_raw_os_error(libc::ETIME))
        } else {
            self.ring.submitter().register_sync_cancel(Some(wait), types::CancelBuilder::any())
        };
        if let Err(e) = &cancelled {
            if e.raw_os_error() != Some(libc::ENOENT) {
                eprintln!("p99: engine worker {}: cancelling its io_uring operations failed ({e}); waiting for them", w.index);
                // Older kernels lack synchronous cancel: ask each operation, then wait.
                if !skip_sync_cancel() {
                    self.cancel_each(w);
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            self.reap_ends(w);
            if self.inflight == 0 || Instant::now() >= deadline {
                break;
            }
            let ts = types::Timespec::new().nsec(50_000_000);
            let args = types::SubmitArgs::new().timespec(&ts);
            if let Err(e) = self.ring.submitter().submit_with_args(1, &args) {
                if !matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
                ) {
                    self.reap_ends(w);
                    break;
                }
            }
        }
        self.unconfirmed = self.inflight > 0;
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
            if self.accept == Multishot::Armed {
                self.accept = Multishot::Cancelling;
                self.push_cancel(Op::Accept, 0, 0);
            }
            if w.open == 0 && self.wake == Multishot::Armed {
                self.wake = Multishot::Cancelling;
                self.push_cancel(Op::Wake, 0, 0);
            }
            return;
        }
        if self.accept == Multishot::Idle
            && self.accept_retry_at.map_or(true, |at| at <= Instant::now())
        {
            self.accept_retry_at = None;
            self.accept = Multishot::Armed;
            let e = opcode::AcceptMulti::new(types::Fd(self.listener.as_raw_fd()))
                .flags(libc::SOCK_CLOEXEC)
                .build()
                .user_data(Op::Accept.tag(0, 0));
            self.push(e);
        }
        if self.wake == Multishot::Idle {
            self.wake = Multishot::Armed;
            let e = opcode::PollAdd::new(types::Fd(self.wake_fd), libc::POLLIN as u32)
                .multi(true)
                .build()
                .user_data(Op::Wake.tag(0, 0));
            self.push(e);
        }
    }

    /// Asks the kernel to cancel the operation tagged (`op`, `slot`, `gen`).
    fn push_cancel(&mut self, op: Op, slot: usize, gen: u32) {
        self.push(
            opcode::AsyncCancel::new(op.tag(slot, gen))
                .build()
                .user_data(Op::Cancel.tag(slot, gen)),
        );
    }

    /// Turns the state changes of dirty connections into SQEs (and finishes closes).
    fn flush<H: Handler>(&mut self, w: &mut Worker, h: &mut H) {
        while let Some(slot) = conn::next_dirty(w, h) {
            if self.io.len() <= slot {
                self.io.resize_with(slot + 1, SlotIo::new);
            }
            let gen = w.conns[slot].gen;
            let mut first = false;
            if w.conns[slot].end_if_due(&mut first) {
                self.end(w, h, slot, gen, first);
                continue;
            }
            let c = &w.conns[slot];
            let (want, fd) = (c.wants_read(), c.fd);
            match (want, self.io[slot].recv) {
                (true, Multishot::Idle) => {
                    self.io[slot].recv = Multishot::Armed;
                    self.io[slot].heard = true;
                    self.push(
                        opcode::RecvMulti::new(types::Fd(recv_target(fd)), BGID)
                            .build()
                            .user_data(Op::Recv.tag(slot, gen)),
                    );
                }
                (false, Multishot::Armed) => {
                    self.io[slot].recv = Multishot::Cancelling;
                    self.push_cancel(Op::Recv, slot, gen);
                }
                // Armed and wanted, idle and not wanted, or a cancel under way (re-armed, if
                // still wanted, at the recv's final CQE).
                _ => {}
            }
            if w.conns[slot].wants_send() {
                self.start_send(w, h, slot, gen);
            }
        }
    }

    /// A connection that is `Ending`: on the first call shuts the socket down (which ends a
    /// recv and fails a send parked on a full window, so their CQEs come), then cancels what
    /// is still in the kernel, and finalises it once its recv and send are both done.
    fn end<H: Handler>(&mut self, w: &mut Worker, h: &mut H, slot: usize, gen: u32, first: bool) {
        if first {
            // SAFETY: shutdown on the connection's own fd, still open (closed only by
            // finalize, below, once).
            unsafe { libc::shutdown(w.conns[slot].fd, libc::SHUT_RDWR) };
        }
        if self.io[slot].recv == Multishot::Armed {
            self.io[slot].recv = Multishot::Cancelling;
            self.push_cancel(Op::Recv, slot, gen);
        }
        if w.conns[slot].cancel_send() {
            // The shutdown already fails a parked send; the cancel makes sure, since
            // finalize waits for that send's CQE.
            self.push_cancel(Op::Send, slot, gen);
        }
        if self.io[slot].recv == Multishot::Idle && w.conns[slot].send == SendOp::Idle {
            conn::finalize(w, h, slot);
        }
    }

    /// Starts the connection's one send: the head of its queue, up to `MAX_IOV` segments.
    fn start_send<H: Handler>(&mut self, w: &mut Worker, h: &mut H, slot: usize, gen: u32) {
        let c = &mut w.conns[slot];
        let io = &mut self.io[slot];
        let covered = c.fill_iov(&mut io.iov, MAX_IOV);
        if io.iov.is_empty() {
            // Only empty borrowed sends at the head: complete them in order now.
            conn::sent(w, h, slot, 0);
            return;
        }
        let fd = types::Fd(c.fd);
        c.start_send(covered);
        let e = if io.iov.len() == 1 {
            // One contiguous piece (the common case): a plain send, no msghdr.
            let (ptr, len) =
                (io.iov[0].iov_base as *const u8, io.iov[0].iov_len.min(u32::MAX as usize) as u32);
            opcode::Send::new(fd, ptr, len).flags(libc::MSG_NOSIGNAL).build()
        } else {
            let msg = io.msg.get_or_insert_with(|| {
                // SAFETY: msghdr is plain data; all-zero is valid (no name, no control).
                Box::new(unsafe { std::mem::zeroed() })
            });
            msg.msg_iov = io.iov.as_mut_ptr();
            msg.msg_iovlen = io.iov.len();
            let msg_ptr: *const libc::msghdr = &**msg;
            opcode::SendMsg::new(fd, msg_ptr).flags(libc::MSG_NOSIGNAL as u32).build()
        };
        self.push(e.user_data(Op::Send.tag(slot, gen)));
    }

    fn reap<H: Handler>(&mut self, w: &mut Worker, h: &mut H) {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
        StatCells::add(&w.stats().completions, cqes.len() as u64);
        for &(data, res, flags) in &cqes {
            let Some((op, slot, gen)) = Op::of(data) else { continue };
            let more = cqueue::more(flags);
            match op {
                Op::Accept => self.on_accept(w, h, res, more),
                Op::Recv => self.on_recv(w, h, slot, gen, res, flags),
                Op::Send => {
                    // A send has one CQE: the kernel is done with its memory.
                    self.inflight -= 1;
                    if !is_ours(w, slot, gen) {
                        continue;
                    }
                    self.io[slot].heard = true;
                    if res >= 0 {
                        conn::sent(w, h, slot, res as usize);
                    } else {
                        w.conns[slot].send = SendOp::Idle;
                        w.cut_on_error(slot, -res);
                    }
                }
                Op::Cancel => self.inflight -= 1,
                Op::Wake => {
                    sysdrain(self.wake_fd);
                    if !more {
                        self.inflight -= 1;
                        self.wake = Multishot::Idle;
                    }
                }
            }
        }
        self.bufs.publish();
        self.cqes = cqes;
    }

    /// After an abnormal end: takes the CQEs there are and notes which operations ended,
    /// without calling the handler. A send's CQE makes its `SendOp` `Idle` (its memory is
    /// free to hand back); an accepted fd that arrives now is closed.
    fn reap_ends(&mut self, w: &mut Worker) {
        let cqes: Vec<(u64, i32, u32)> =
            self.ring.completion().map(|c| (c.user_data(), c.result(), c.flags())).collect();
        for (data, res, flags) in cqes {
            let Some((op, slot, gen)) = Op::of(data) else { continue };
            let more = cqueue::more(flags);
            match op {
                Op::Accept => {
                    if res >= 0 {
                        // SAFETY: a fresh fd from accept that nobody else owns.
                        unsafe { libc::close(res) };
                    }
                    if !more {
                        self.inflight -= 1;
                        self.accept = Multishot::Idle;
                    }
                }
                Op::Recv => {
                    if let Some(bid) = cqueue::buffer_select(flags) {
                        self.bufs.push(bid);
                    }
                    if !more {
                        self.inflight -= 1;
                        if is_ours(w, slot, gen) {
                            self.io[slot].recv = Multishot::Idle;
                        }
                    }
                }
                Op::Send => {
                    self.inflight -= 1;
                    if is_ours(w, slot, gen) {
                        w.conns[slot].send = SendOp::Idle;
                    }
                }
                Op::Cancel => self.inflight -= 1,
                Op::Wake => {
                    if !more {
                        self.inflight -= 1;
                        self.wake = Multishot::Idle;
                    }
                }
            }
        }
    }

    /// Cancels every operation still in the kernel one by one (for kernels without
    /// synchronous cancellation, 6.0); their CQEs are awaited by the caller.
    fn cancel_each(&mut self, w: &mut Worker) {
        if self.accept == Multishot::Armed {
            self.accept = Multishot::Cancelling;
            self.push_cancel(Op::Accept, 0, 0);
        }
        if self.wake == Multishot::Armed {
            self.wake = Multishot::Cancelling;
            self.push_cancel(Op::Wake, 0, 0);
        }
        for slot in 0..w.conns.len().min(self.io.len()) {
            if !w.conns[slot].is_live() {
                continue;
            }
            let gen = w.conns[slot].gen;
            if self.io[slot].recv == Multishot::Armed {
                self.io[slot].recv = Multishot::Cancelling;
                self.push_cancel(Op::Recv, slot, gen);
            }
            if w.conns[slot].cancel_send() {
                self.push_cancel(Op::Send, slot, gen);
            }
        }
    }

    /// Looks at every live connection that no recv or send CQE was heard from since the last
    /// sweep (the module comment says why). For one whose recv is armed and wanted, a
    /// non-blocking `MSG_PEEK` of one byte says what that recv should have reported: an error
    /// cuts it, end of stream starts its close, and bytes waiting get the recv cancelled
    /// (`flush` arms a new one at its final CQE, which reads them at once). A
    /// connection still waiting for a cancelled recv's final CQE gets the cancel asked again
    /// (the kernel's answer to a cancel is only advice).
    fn sweep(&mut self, w: &mut Worker) {
        for slot in 0..w.conns.len().min(self.io.len()) {
            let c = &w.conns[slot];
            if !c.is_live() || std::mem::take(&mut self.io[slot].heard) {
                continue;
            }
            let gen = c.gen;
            if self.io[slot].recv == Multishot::Cancelling {
                self.push_cancel(Op::Recv, slot, gen);
                continue;
            }
            if self.io[slot].recv != Multishot::Armed || !c.wants_read() || c.fd < 0 {
                continue;
            }
            let mut byte = 0u8;
            // SAFETY: a one-byte peek into a local on the connection's own open fd (closed only
            // by finalize); MSG_DONTWAIT never blocks, MSG_PEEK consumes nothing.
            let r = unsafe {
                libc::recv(
                    c.fd,
                    (&mut byte as *mut u8).cast(),
                    1,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            if r > 0 {
                self.io[slot].recv = Multishot::Cancelling;
                self.push_cancel(Op::Recv, slot, gen);
            } else if r == 0 {
                w.conns[slot].eof = true;
                w.mark_dirty(slot);
            } else {
                let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                if !matches!(e, libc::EAGAIN | libc::EINTR) {
                    w.cut_on_error(slot, e);
                }
            }
        }
    }

    fn on_accept<H: Handler>(&mut self, w: &mut Worker, h: &mut H, res: i32, more: bool) {
        if !more {
            self.inflight -= 1;
            self.accept = Multishot::Idle;
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

    fn on_recv<H: Handler>(
        &mut self,
        w: &mut Worker,
        h: &mut H,
        slot: usize,
        gen: u32,
        res: i32,
        flags: u32,
    ) {
        let more = cqueue::more(flags);
        let bid = cqueue::buffer_select(flags);
        if !more {
            self.inflight -= 1;
        }
        let ours = is_ours(w, slot, gen);
        if ours {
            self.io[slot].heard = true;
        }
        if ours && !more {
            self.io[slot].recv = Multishot::Idle;
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
            e => w.cut_on_error(slot, e),
        }
    }
}

/// Whether a CQE tagged with (`slot`, `gen`) belongs to the connection now in that slot.
fn is_ours(w: &Worker, slot: usize, gen: u32) -> bool {
    matches!(w.conns.get(slot), Some(c) if c.is_live() && c.gen == gen)
}

#[cfg(test)]
thread_local! {
    /// Test hook, per worker thread: makes `abandon` behave as if synchronous cancellation
    /// failed and nothing could be cancelled, as on a ring that no longer works.
    static SKIP_SYNC_CANCEL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[cfg(test)]
thread_local! {
    /// Test hook, per worker thread: when set, the next recv is armed on this fd instead of
    /// the connection's, a recv that never reports anything about the connection, as the
    /// kernel's recv that missed its socket's reset (see the module comment).
    static RECV_DECOY: std::cell::Cell<RawFd> = const { std::cell::Cell::new(-1) };
}

/// The fd a connection's recv is armed on: its own, except under the test hook above.
fn recv_target(fd: RawFd) -> RawFd {
    #[cfg(test)]
    {
        let decoy = RECV_DECOY.with(|d| d.replace(-1));
        if decoy >= 0 {
            return decoy;
        }
    }
    fd
}

fn skip_sync_cancel() -> bool {
    #[cfg(test)]
    return SKIP_SYNC_CANCEL.with(|s| s.get());
    #[cfg(not(test))]
    false
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

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::{RECV_DECOY, SKIP_SYNC_CANCEL};
    use crate::engine::{Backend, Config, ConnId, Engine, Handler, Worker};

    #[derive(Default)]
    struct Seen {
        send_done: AtomicUsize,
        closed: AtomicUsize,
    }

    /// Answers any input with one large borrowed send; panics on "BOOM".
    struct BigSender {
        big: &'static [u8],
        seen: Arc<Seen>,
    }

    impl Handler for BigSender {
        fn on_data(&mut self, w: &mut Worker, conn: ConnId, data: &[u8]) {
            assert!(!data.starts_with(b"BOOM"), "handler panic on purpose (test)");
            let iov = [libc::iovec {
                iov_base: self.big.as_ptr() as *mut libc::c_void,
                iov_len: self.big.len(),
            }];
            // SAFETY: the buffer is 'static and never written.
            unsafe { w.send_borrowed(conn, &iov, 7) }.unwrap();
        }
        fn on_send_done(&mut self, _w: &mut Worker, _conn: ConnId, _cookie: u64, _sent: bool) {
            self.seen.send_done.fetch_add(1, Ordering::SeqCst);
        }
        fn on_close(&mut self, _w: &mut Worker, _conn: ConnId) {
            self.seen.closed.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// An engine of one unpinned io_uring worker.
    fn one_uring_worker<H: Handler + 'static>(
        make: impl Fn(usize) -> H + Send + Sync + 'static,
    ) -> Engine {
        let cfg = Config {
            backend: Some(Backend::Uring),
            workers: 1,
            pin_workers: false,
            ..Config::default()
        };
        Engine::start(cfg, make).unwrap()
    }

    /// Runs `f` on worker 0's thread (to set its test hooks) and waits until it has run.
    fn on_the_worker(e: &Engine, f: impl FnOnce() + Send + 'static) {
        let (tx, rx) = std::sync::mpsc::channel();
        e.post(
            0,
            Box::new(move |_w: &mut Worker| {
                f();
                tx.send(()).unwrap();
            }),
        )
        .unwrap();
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
    }

    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A worker that ends abnormally while a borrowed send is still in the kernel (its peer
    /// never reads 32 MiB), and whose cancellation cannot be confirmed: the connection still
    /// gets `on_close`, but the send's memory is not handed back with `on_send_done`, since
    /// the kernel may still read it.
    #[test]
    fn unconfirmed_cancel_never_hands_back_memory_the_kernel_may_read() {
        if crate::engine::probe::uring_usable().is_err() {
            eprintln!("io_uring unusable here; nothing to test");
            return;
        }
        let big: &'static [u8] = Box::leak(vec![b'b'; 32 << 20].into_boxed_slice());
        let seen = Arc::new(Seen::default());
        let s2 = Arc::clone(&seen);
        let e = one_uring_worker(move |_| BigSender { big, seen: Arc::clone(&s2) });
        on_the_worker(&e, || SKIP_SYNC_CANCEL.with(|s| s.set(true)));
        let mut stuck = TcpStream::connect(("127.0.0.1", e.port())).unwrap();
        stuck.write_all(b"go").unwrap();
        wait_until("the send to start", || e.stats(0).unwrap().bytes_in >= 2);
        std::thread::sleep(Duration::from_millis(50));
        let mut boom = TcpStream::connect(("127.0.0.1", e.port())).unwrap();
        boom.write_all(b"BOOM").unwrap();
        wait_until("both connections closed", || seen.closed.load(Ordering::SeqCst) == 2);
        assert_eq!(
            seen.send_done.load(Ordering::SeqCst),
            0,
            "memory under an unconfirmed send was handed back"
        );
        let mut buf = [0u8; 16];
        boom.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert!(matches!(boom.read(&mut buf), Ok(0) | Err(_)));
        drop(stuck);
        drop(e);
    }

    /// The same end with a working cancellation hands the memory back once the send's own
    /// completion confirmed it ended.
    #[test]
    fn confirmed_cancel_hands_back_memory_after_the_send_ended() {
        if crate::engine::probe::uring_usable().is_err() {
            return;
        }
        let big: &'static [u8] = Box::leak(vec![b'b'; 32 << 20].into_boxed_slice());
        let seen = Arc::new(Seen::default());
        let s2 = Arc::clone(&seen);
        let e = one_uring_worker(move |_| BigSender { big, seen: Arc::clone(&s2) });
        let mut stuck = TcpStream::connect(("127.0.0.1", e.port())).unwrap();
        stuck.write_all(b"go").unwrap();
        wait_until("the send to start", || e.stats(0).unwrap().bytes_in >= 2);
        std::thread::sleep(Duration::from_millis(50));
        let mut boom = TcpStream::connect(("127.0.0.1", e.port())).unwrap();
        boom.write_all(b"BOOM").unwrap();
        wait_until("both connections closed", || seen.closed.load(Ordering::SeqCst) == 2);
        assert_eq!(seen.send_done.load(Ordering::SeqCst), 1);
        drop(stuck);
        drop(e);
    }

    /// Counts `on_close`; ignores input.
    struct CountCloses(Arc<Seen>);

    impl Handler for CountCloses {
        fn on_data(&mut self, _w: &mut Worker, _conn: ConnId, _data: &[u8]) {}
        fn on_close(&mut self, _w: &mut Worker, _conn: ConnId) {
            self.0.closed.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A connection whose armed recv never reports its socket's end (the recv watches another
    /// fd, as the kernel's recv that missed a reset watched nothing) is still closed once its
    /// peer resets it: the sweep finds the reset with its peek and cuts the connection, whose
    /// recv is then cancelled. Without the sweep the connection stayed open for good.
    #[test]
    fn connection_whose_recv_missed_the_peer_reset_is_still_closed() {
        if crate::engine::probe::uring_usable().is_err() {
            eprintln!("io_uring unusable here; nothing to test");
            return;
        }
        use std::os::fd::AsRawFd;
        let seen = Arc::new(Seen::default());
        let s2 = Arc::clone(&seen);
        let e = one_uring_worker(move |_| CountCloses(Arc::clone(&s2)));
        // The decoy: one end of a pair whose other end never writes nor closes.
        let (decoy, _quiet) = std::os::unix::net::UnixStream::pair().unwrap();
        let decoy_fd = decoy.as_raw_fd();
        on_the_worker(&e, move || RECV_DECOY.with(|d| d.set(decoy_fd)));
        let mut client = TcpStream::connect(("127.0.0.1", e.port())).unwrap();
        client.write_all(b"set k 0 0 100000\r\nabandoned").unwrap();
        wait_until("the connection to be accepted", || e.stats(0).unwrap().open == 1);
        // Whether or not the worker has armed the connection's recv yet, it arms it on the
        // decoy: no recv of this connection sees the reset below.
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        // SAFETY: setsockopt on the client's own open socket with a correctly sized linger.
        let r = unsafe {
            libc::setsockopt(
                client.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
        drop(client); // RST
        wait_until("the reset connection to be closed", || seen.closed.load(Ordering::SeqCst) == 1);
        assert_eq!(e.stats(0).unwrap().open, 0);
        drop(decoy);
        drop(e);
    }
}
