//! The worker-side state both backends share: the connection table with generation-tagged
//! handles, per-connection ordered output queues, timers and the worker's mailbox.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::tls::TlsConn;
use super::{CloseReason, Config, Error, Handler, Shared, StatCells, Task};

/// A connection handle: worker index, slot and generation. The generation changes every time
/// a slot is reused, so a handle kept after `on_close` is recognised as stale and can never
/// reach a later connection that got the same slot or the same fd. The raw value 0 is never a
/// valid handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId(u64);

impl ConnId {
    pub(crate) fn new(worker: usize, slot: u32, gen: u32) -> ConnId {
        ConnId(((worker as u64) << 56) | ((slot as u64) << 32) | gen as u64)
    }
    /// The handle as a plain integer (what C sees as `p99_conn`).
    pub fn to_raw(self) -> u64 {
        self.0
    }
    /// Rebuilds a handle from [`ConnId::to_raw`]; validity is checked when it is used.
    pub fn from_raw(raw: u64) -> ConnId {
        ConnId(raw)
    }
    /// Index of the worker that owns the connection.
    pub fn worker(self) -> usize {
        (self.0 >> 56) as usize
    }
    /// Slot in the worker's connection table: dense, below the per-worker limit, handy for
    /// indexing per-connection application state.
    pub fn slot(self) -> u32 {
        ((self.0 >> 32) & 0xff_ffff) as u32
    }
    pub(crate) fn gen(self) -> u32 {
        self.0 as u32
    }
}

/// A timer handle returned by [`Worker::add_timer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerId(pub u64);

pub(crate) enum Segment {
    /// Bytes copied in by `send`; extended in place while not in flight.
    Copy(Vec<u8>),
    /// Caller memory, valid until the cookie (if any) is handed back.
    Borrowed { ptr: *const u8, len: usize, cookie: Option<u64> },
}

impl Segment {
    pub fn len(&self) -> usize {
        match self {
            Segment::Copy(v) => v.len(),
            Segment::Borrowed { len, .. } => *len,
        }
    }
    pub fn ptr(&self) -> *const u8 {
        match self {
            Segment::Copy(v) => v.as_ptr(),
            Segment::Borrowed { ptr, .. } => *ptr,
        }
    }
    fn cookie(&self) -> Option<u64> {
        match self {
            Segment::Copy(_) => None,
            Segment::Borrowed { cookie, .. } => *cookie,
        }
    }
}

/// Where a connection is in its life. It only moves forward, and only through the methods of
/// [`Conn`] and [`Worker`] below:
///
/// ```text
/// Free --insert--> Open --close--> Draining --output sent--> Ending --finalize--> Free
///                    \               |                       ^
///                     `--abort--> Aborting ------------------'
/// ```
///
/// A slot leaves `Ending` only through `finalize`, which the backend calls once no kernel
/// operation uses the fd or the connection's memory any more (io_uring: the final CQE of its
/// recv and of its send have arrived; close(2) before that could let a reused fd number
/// receive the old operations, io_uring_cancelation(7)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Life {
    /// The slot holds no connection.
    Free,
    /// Input is delivered, output accepted.
    Open,
    /// Close requested: no more input is delivered and no more output accepted; queued
    /// output is still flushed, for at most `Config::close_linger`.
    Draining,
    /// Cut (an error, the linger or drain deadline, a stop without drain): queued output is
    /// dropped and the connection ends as soon as the backend can end it.
    Aborting,
    /// Being ended by the backend (io_uring: socket shut down, its operations cancelled,
    /// waiting for their last completions); then `finalize`.
    Ending,
}

/// The send side as the kernel sees it. One send at a time per connection keeps the bytes
/// in order (io_uring gives no ordering between two sends on one socket). epoll's `sendmsg`
/// returns at once, so that backend never leaves `Idle`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SendOp {
    /// No send in the kernel: the whole queue may change.
    Idle,
    /// One send in the kernel covers the first `segs` queued segments; they stay unchanged
    /// and alive until its completion.
    InFlight { segs: usize },
    /// As `InFlight`, and an AsyncCancel for it is submitted (the connection is aborting);
    /// its completion is still to come.
    Cancelling { segs: usize },
}

impl SendOp {
    /// Segments the kernel may still be reading.
    pub fn frozen_segs(self) -> usize {
        match self {
            SendOp::Idle => 0,
            SendOp::InFlight { segs } | SendOp::Cancelling { segs } => segs,
        }
    }
}

pub(crate) struct Conn {
    pub gen: u32,
    pub life: Life,
    pub fd: RawFd,
    pub user: usize,
    pub out: VecDeque<Segment>,
    pub out_bytes: usize,
    /// Bytes of the front segment already sent.
    pub head_off: usize,
    pub send: SendOp,
    /// Input is held back: by `pause_recv`, and while queued output is above the high-water
    /// mark (until it drains to half). Independent facts, each cleared on its own.
    pub paused_user: bool,
    pub paused_hwm: bool,
    /// The peer half-closed: once the stash is handled the connection closes (draining).
    pub eof: bool,
    /// Input that arrived after receiving was paused, delivered on resume.
    pub stash: Vec<u8>,
    /// A sent copy segment's buffer, kept for the next `send` to save an allocation.
    pub spare: Option<Vec<u8>>,
    /// Listed in `Worker::dirty`.
    pub in_dirty: bool,
    /// The TLS session, on an engine that serves TLS.
    pub tls: Option<Box<TlsConn>>,
    /// The first recorded cause of the close, with detail text (the TLS error).
    pub close_reason: Option<(CloseReason, Option<Box<str>>)>,
}

impl Conn {
    fn empty(gen: u32) -> Conn {
        Conn {
            gen,
            life: Life::Free,
            fd: -1,
            user: 0,
            out: VecDeque::new(),
            out_bytes: 0,
            head_off: 0,
            send: SendOp::Idle,
            paused_user: false,
            paused_hwm: false,
            eof: false,
            stash: Vec::new(),
            spare: None,
            in_dirty: false,
            tls: None,
            close_reason: None,
        }
    }

    pub fn is_live(&self) -> bool {
        self.life != Life::Free
    }

    /// Open: input is delivered and output accepted.
    pub fn is_open(&self) -> bool {
        self.life == Life::Open
    }

    /// Whether the backend should be receiving for this connection.
    pub fn wants_read(&self) -> bool {
        self.is_open() && !self.eof && !self.paused_user && !self.paused_hwm
    }

    /// Whether the backend should write queued output: there is some, no send is in the
    /// kernel, and the connection is not being cut.
    pub fn wants_send(&self) -> bool {
        self.send == SendOp::Idle
            && !self.out.is_empty()
            && matches!(self.life, Life::Open | Life::Draining)
    }

    /// The step from closing to ending: a draining connection whose output is all sent, or
    /// an aborting one, becomes `Ending`. Returns true while the connection is `Ending` (the
    /// backend ends it), with `first` set on the call that made it so.
    pub fn end_if_due(&mut self, first: &mut bool) -> bool {
        *first = false;
        let due = match self.life {
            Life::Draining => self.out.is_empty() && self.send == SendOp::Idle,
            Life::Aborting => true,
            Life::Ending => return true,
            Life::Free | Life::Open => false,
        };
        if due {
            self.life = Life::Ending;
            *first = true;
        }
        due
    }

    /// Marks the send in flight (io_uring) as covering the first `segs` segments.
    pub fn start_send(&mut self, segs: usize) {
        debug_assert_eq!(self.send, SendOp::Idle, "one send in flight per connection");
        self.send = SendOp::InFlight { segs };
    }

    /// The send in flight must end (the connection is ending): true the first time, when the
    /// caller submits the cancel.
    pub fn cancel_send(&mut self) -> bool {
        match self.send {
            SendOp::InFlight { segs } => {
                self.send = SendOp::Cancelling { segs };
                true
            }
            SendOp::Idle | SendOp::Cancelling { .. } => false,
        }
    }

    /// Fills `iov` with up to `max` segments from the head of the queue and returns how many
    /// segments it covers.
    pub fn fill_iov(&self, iov: &mut Vec<libc::iovec>, max: usize) -> usize {
        iov.clear();
        let mut covered = 0;
        for (i, seg) in self.out.iter().enumerate() {
            if iov.len() == max {
                break;
            }
            let off = if i == 0 { self.head_off } else { 0 };
            let len = seg.len() - off;
            covered = i + 1;
            if len == 0 {
                continue;
            }
            // Only the address is formed here; the bytes are read by the kernel while the
            // segment stays queued.
            iov.push(libc::iovec { iov_base: seg.ptr().wrapping_add(off) as *mut _, iov_len: len });
        }
        covered
    }
}

type TimerFn = Box<dyn FnOnce(&mut Worker)>;

thread_local! {
    static CURRENT: std::cell::Cell<*const Worker> = const { std::cell::Cell::new(std::ptr::null()) };
}

/// Whether `w` is the worker running on the calling thread. Compares addresses only, so a
/// pointer from C can be checked before it is ever dereferenced.
pub fn is_current_worker(w: *const Worker) -> bool {
    !w.is_null() && CURRENT.with(|c| c.get()) == w
}

/// Marks `w` as the calling thread's worker for its lifetime on this stack frame.
pub(crate) struct CurrentGuard;

impl CurrentGuard {
    pub fn set(w: &Worker) -> CurrentGuard {
        CURRENT.with(|c| c.set(w as *const Worker));
        CurrentGuard
    }
}

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(std::ptr::null()));
    }
}

/// One worker's state, handed to every [`Handler`] callback. Belongs to the worker thread:
/// it is neither `Send` nor `Sync`.
pub struct Worker {
    pub(crate) index: usize,
    pub(crate) conns: Vec<Conn>,
    free: Vec<u32>,
    pub(crate) dirty: Vec<u32>,
    pub(crate) open: usize,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    timer_fns: HashMap<u64, TimerFn>,
    next_timer: u64,
    pub(crate) cfg: Arc<Config>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) stopping: bool,
    pub(crate) drain_deadline: Option<Instant>,
    /// Plaintext just decrypted, before it is handed to the handler (TLS only).
    plain: Vec<u8>,
}

pub(crate) const MAX_IOV: usize = 64;

impl Worker {
    pub(crate) fn new(index: usize, cfg: Arc<Config>, shared: Arc<Shared>) -> Worker {
        Worker {
            index,
            conns: Vec::new(),
            free: Vec::new(),
            dirty: Vec::new(),
            open: 0,
            timers: BinaryHeap::new(),
            timer_fns: HashMap::new(),
            next_timer: 1,
            cfg,
            shared,
            stopping: false,
            drain_deadline: None,
            plain: Vec::new(),
        }
    }

    pub(crate) fn stats(&self) -> &StatCells {
        &self.shared.workers[self.index].stats
    }

    /// This worker's index (0-based).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Connections open on this worker.
    pub fn open_connections(&self) -> usize {
        self.open
    }

    pub(crate) fn slot_of(&self, conn: ConnId) -> Result<usize, Error> {
        if conn.worker() != self.index {
            return Err(Error::WrongThread);
        }
        let slot = conn.slot() as usize;
        match self.conns.get(slot) {
            Some(c) if c.is_live() && c.gen == conn.gen() => Ok(slot),
            _ => Err(Error::StaleHandle),
        }
    }

    pub(crate) fn id_of(&self, slot: usize) -> ConnId {
        ConnId::new(self.index, slot as u32, self.conns[slot].gen)
    }

    pub(crate) fn mark_dirty(&mut self, slot: usize) {
        let c = &mut self.conns[slot];
        if !c.in_dirty {
            c.in_dirty = true;
            self.dirty.push(slot as u32);
        }
    }

    /// Takes a slot for a freshly accepted fd, or `None` at this worker's or the engine's
    /// connection limit. The engine-wide count is one atomic shared by the workers, taken
    /// before the slot and given back in `release`, so the limit holds however the kernel
    /// spreads connections over the workers' listeners.
    pub(crate) fn insert(&mut self, fd: RawFd) -> Option<usize> {
        if self.open >= self.cfg.max_conns_per_worker {
            return None;
        }
        if self.shared.open_conns.fetch_add(1, Ordering::Relaxed) >= self.cfg.max_conns {
            self.shared.open_conns.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let slot = match self.free.pop() {
            Some(s) => s as usize,
            None => {
                self.conns.push(Conn::empty(1));
                self.conns.len() - 1
            }
        };
        let c = &mut self.conns[slot];
        debug_assert_eq!(c.life, Life::Free);
        c.life = Life::Open;
        c.fd = fd;
        self.open += 1;
        let st = self.stats();
        StatCells::add(&st.accepted, 1);
        st.open.store(self.open as u64, Ordering::Relaxed);
        if let Some(tls) = self.cfg.tls.clone() {
            match TlsConn::new(&tls) {
                Ok(t) => self.conns[slot].tls = Some(Box::new(t)),
                Err(_) => {
                    // rustls could not make a session (it never fails with a built
                    // config); treat it as a refused accept.
                    self.refuse(slot);
                    return None;
                }
            }
            let id = self.id_of(slot);
            let timer = self.add_timer(
                tls.handshake_timeout,
                Box::new(move |w: &mut Worker| {
                    if let Ok(s) = w.slot_of(id) {
                        if w.conns[s].tls.as_ref().is_some_and(|t| t.session.is_handshaking()) {
                            w.fail(s, CloseReason::TlsHandshakeTimeout, None);
                            w.begin_close(s, true);
                        }
                    }
                }),
            );
            if let Some(t) = self.conns[slot].tls.as_mut() {
                t.deadline = Some(timer);
            }
        }
        Some(slot)
    }

    /// Cuts a connection whose socket failed with `errno`, recording the cause.
    pub(crate) fn cut_on_error(&mut self, slot: usize, errno: i32) {
        let text = (errno != 0).then(|| std::io::Error::from_raw_os_error(errno).to_string());
        self.fail(slot, CloseReason::Io, text);
        self.begin_close(slot, true);
    }

    /// Records why a connection is closing, unless a cause is already recorded.
    pub(crate) fn fail(&mut self, slot: usize, reason: CloseReason, detail: Option<String>) {
        let c = &mut self.conns[slot];
        if c.close_reason.is_none() {
            c.close_reason = Some((reason, detail.map(String::into_boxed_str)));
        }
    }

    /// Why the connection is closing: [`CloseReason::Local`] when nothing else was recorded.
    /// The text is the TLS error for the TLS reasons, and empty otherwise. Valid until
    /// `on_close` returns.
    pub fn close_reason(&self, conn: ConnId) -> Result<(CloseReason, &str), Error> {
        let c = &self.conns[self.slot_of(conn)?];
        Ok(match &c.close_reason {
            None => (CloseReason::Local, ""),
            Some((r, d)) => (*r, d.as_deref().unwrap_or("")),
        })
    }

    /// Moves what rustls has ready to send (handshake messages, records, alerts) into the
    /// connection's output queue, after everything queued before.
    fn queue_tls_output(&mut self, slot: usize) {
        let c = &mut self.conns[slot];
        let Some(t) = c.tls.as_mut() else { return };
        if !t.session.wants_write() {
            return;
        }
        let extendable = c.out.len() > c.send.frozen_segs();
        if !matches!(c.out.back(), Some(Segment::Copy(_))) || !extendable {
            let v = c.spare.take().unwrap_or_default();
            c.out.push_back(Segment::Copy(v));
        }
        let Some(Segment::Copy(v)) = c.out.back_mut() else {
            unreachable!("a copy segment was just ensured")
        };
        let before = v.len();
        while t.session.wants_write() {
            // Writing into a Vec cannot fail.
            if t.session.write_tls(v).is_err() {
                break;
            }
        }
        c.out_bytes += v.len() - before;
        self.after_queue(slot);
    }

    /// Takes bytes received on a TLS connection: runs them through rustls, queues what it
    /// answers, and hands the plaintext to the handler (or to the stash while paused).
    fn tls_input<H: Handler>(&mut self, h: &mut H, slot: usize, mut input: &[u8]) {
        while !input.is_empty() {
            let c = &mut self.conns[slot];
            if !c.is_open() {
                return;
            }
            let Some(t) = c.tls.as_mut() else { return };
            let handshaking = t.session.is_handshaking();
            let read = t.session.read_tls(&mut input);
            let processed = match read {
                // close_notify was received: nothing after it is read.
                Ok(0) => return,
                Ok(_) => t.session.process_new_packets().map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let state = match processed {
                Ok(st) => st,
                Err(e) => {
                    // rustls has queued the alert that tells the peer why: send it, then close.
                    self.queue_tls_output(slot);
                    let reason = if handshaking {
                        CloseReason::TlsHandshake
                    } else {
                        CloseReason::TlsProtocol
                    };
                    self.fail(slot, reason, Some(e));
                    self.begin_close_quiet(slot, false);
                    return;
                }
            };
            let mut done_now = false;
            if !t.session.is_handshaking() {
                if let Some(timer) = t.deadline.take() {
                    done_now = true;
                    self.cancel_timer(timer);
                }
            }
            let c = &mut self.conns[slot];
            let Some(t) = c.tls.as_mut() else { return };
            let mut plain = std::mem::take(&mut self.plain);
            plain.clear();
            if state.plaintext_bytes_to_read() > 0 {
                use std::io::Read;
                // Reading from rustls's own buffer: an error is impossible while bytes are
                // there, and the loop ends when they are all taken.
                let _ = t.session.reader().read_to_end(&mut plain);
            }
            if state.peer_has_closed() {
                t.peer_closed = true;
                c.eof = true;
                self.mark_dirty(slot);
            }
            self.queue_tls_output(slot);
            if done_now {
                self.answer_held_cookies(h, slot);
            }
            if !plain.is_empty() {
                deliver_plain(self, h, slot, &plain);
            }
            if plain.capacity() <= 64 * 1024 {
                self.plain = plain;
            }
        }
    }

    /// After the handshake: borrowed sends made during it are answered, their plaintext
    /// having been encrypted into the queue by now; each answer is queued in order behind it.
    fn answer_held_cookies<H: Handler>(&mut self, _h: &mut H, slot: usize) {
        let c = &mut self.conns[slot];
        let Some(t) = c.tls.as_mut() else { return };
        for ck in std::mem::take(&mut t.held_cookies) {
            c.out.push_back(Segment::Borrowed { ptr: std::ptr::null(), len: 0, cookie: Some(ck) });
        }
        self.mark_dirty(slot);
    }

    /// Undoes `insert` for a connection the handler refused: closes the fd at once.
    pub(crate) fn refuse(&mut self, slot: usize) {
        let fd = std::mem::replace(&mut self.conns[slot].fd, -1);
        // SAFETY: the fd was just accepted, no operation uses it yet, and it is closed once.
        unsafe { libc::close(fd) };
        let st = self.stats();
        StatCells::add(&st.rejected, 1);
        st.accepted.store(st.accepted.load(Ordering::Relaxed).wrapping_sub(1), Ordering::Relaxed);
        self.release(slot);
    }

    /// Returns a slot whose fd is already closed and whose kernel operations are all done.
    fn release(&mut self, slot: usize) {
        let c = &mut self.conns[slot];
        let gen = c.gen.wrapping_add(1).max(1);
        *c = Conn::empty(gen);
        self.free.push(slot as u32);
        self.open -= 1;
        self.shared.open_conns.fetch_sub(1, Ordering::Relaxed);
        self.stats().open.store(self.open as u64, Ordering::Relaxed);
    }

    /// Queues a copy of `data` for sending, after everything queued before it.
    pub fn send(&mut self, conn: ConnId, data: &[u8]) -> Result<(), Error> {
        let slot = self.slot_of(conn)?;
        let c = &mut self.conns[slot];
        if !c.is_open() {
            return Err(Error::Closed);
        }
        if data.is_empty() {
            return Ok(());
        }
        if let Some(t) = c.tls.as_mut() {
            use std::io::Write;
            // With no buffer limit rustls takes every byte (encrypted now, or held until the
            // handshake is done).
            t.session.writer().write_all(data).map_err(Error::Io)?;
            self.queue_tls_output(slot);
            return Ok(());
        }
        let extendable = c.out.len() > c.send.frozen_segs();
        match c.out.back_mut() {
            Some(Segment::Copy(v)) if extendable => v.extend_from_slice(data),
            _ => {
                let mut v =
                    c.spare.take().unwrap_or_else(|| Vec::with_capacity(data.len().max(256)));
                v.extend_from_slice(data);
                c.out.push_back(Segment::Copy(v));
            }
        }
        c.out_bytes += data.len();
        self.after_queue(slot);
        Ok(())
    }

    /// Queues caller memory for sending without copying it; `on_send_done(cookie)` reports
    /// when the engine no longer uses it (after the bytes are sent, or the connection closed).
    ///
    /// # Safety
    /// Every `iov[i]` must describe readable memory that stays valid and unchanged until
    /// `on_send_done` is called with `cookie` for this connection.
    pub unsafe fn send_borrowed(
        &mut self,
        conn: ConnId,
        iov: &[libc::iovec],
        cookie: u64,
    ) -> Result<(), Error> {
        let slot = self.slot_of(conn)?;
        let c = &mut self.conns[slot];
        if !c.is_open() {
            return Err(Error::Closed);
        }
        if let Some(t) = c.tls.as_mut() {
            use std::io::Write;
            for v in iov.iter().filter(|v| v.iov_len > 0) {
                // SAFETY: the caller guarantees each iovec describes readable memory for the
                // duration of the send; it is read once, here, and encrypted into the queue.
                let bytes =
                    unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) };
                t.session.writer().write_all(bytes).map_err(Error::Io)?;
            }
            if t.session.is_handshaking() {
                t.held_cookies.push(cookie);
                self.queue_tls_output(slot);
            } else {
                self.queue_tls_output(slot);
                // The caller's memory is no longer used; the answer comes once the ciphertext
                // before it is on the socket, so `sent` keeps its meaning.
                let c = &mut self.conns[slot];
                c.out.push_back(Segment::Borrowed {
                    ptr: std::ptr::null(),
                    len: 0,
                    cookie: Some(cookie),
                });
                self.mark_dirty(slot);
            }
            return Ok(());
        }
        let mut total = 0usize;
        for (i, v) in iov.iter().enumerate() {
            let last = i + 1 == iov.len();
            c.out.push_back(Segment::Borrowed {
                ptr: v.iov_base as *const u8,
                len: v.iov_len,
                cookie: if last { Some(cookie) } else { None },
            });
            total += v.iov_len;
        }
        if iov.is_empty() {
            // Still answered in order, after what is queued before it.
            c.out.push_back(Segment::Borrowed {
                ptr: std::ptr::null(),
                len: 0,
                cookie: Some(cookie),
            });
        }
        c.out_bytes += total;
        self.after_queue(slot);
        Ok(())
    }

    fn after_queue(&mut self, slot: usize) {
        let hwm = self.cfg.out_high_water;
        let c = &mut self.conns[slot];
        if c.out_bytes > hwm && !c.paused_hwm {
            c.paused_hwm = true;
        }
        self.mark_dirty(slot);
    }

    /// Stops delivering `on_data` for this connection until [`Worker::resume_recv`]. Bytes
    /// already received are kept and delivered on resume.
    pub fn pause_recv(&mut self, conn: ConnId) -> Result<(), Error> {
        let slot = self.slot_of(conn)?;
        self.conns[slot].paused_user = true;
        self.mark_dirty(slot);
        Ok(())
    }

    /// Undoes [`Worker::pause_recv`].
    pub fn resume_recv(&mut self, conn: ConnId) -> Result<(), Error> {
        let slot = self.slot_of(conn)?;
        self.conns[slot].paused_user = false;
        self.mark_dirty(slot);
        Ok(())
    }

    /// Closes the connection: no more input is delivered, output already queued is flushed
    /// (for at most `Config::close_linger`), then the socket is closed and `on_close` runs.
    /// Closing a connection that is already closing is a no-op.
    pub fn close(&mut self, conn: ConnId) -> Result<(), Error> {
        let slot = self.slot_of(conn)?;
        self.begin_close(slot, false);
        Ok(())
    }

    /// Starts closing a live connection: `abort` cuts it (Open or Draining -> Aborting),
    /// otherwise Open -> Draining, with a linger timer that cuts it if its queued output is
    /// not sent in time. A connection already further along is left as it is.
    pub(crate) fn begin_close(&mut self, slot: usize, abort: bool) {
        if !abort {
            self.send_close_notify(slot);
        }
        self.begin_close_quiet(slot, abort);
    }

    /// Queues TLS close_notify on an open TLS connection (no-op otherwise).
    fn send_close_notify(&mut self, slot: usize) {
        let c = &mut self.conns[slot];
        if c.life != Life::Open {
            return;
        }
        if let Some(t) = c.tls.as_mut() {
            t.session.send_close_notify();
            self.queue_tls_output(slot);
        }
    }

    /// `begin_close` without TLS close_notify (after a TLS error, whose alert is queued).
    fn begin_close_quiet(&mut self, slot: usize, abort: bool) {
        let c = &mut self.conns[slot];
        match (c.life, abort) {
            (Life::Open | Life::Draining, true) => c.life = Life::Aborting,
            (Life::Open, false) => {
                c.life = Life::Draining;
                if !c.out.is_empty() {
                    let id = self.id_of(slot);
                    let linger = self.cfg.close_linger;
                    self.add_timer(
                        linger,
                        Box::new(move |w: &mut Worker| {
                            if let Ok(s) = w.slot_of(id) {
                                w.begin_close(s, true);
                            }
                        }),
                    );
                }
            }
            (Life::Draining | Life::Aborting | Life::Ending | Life::Free, _) => {}
        }
        self.mark_dirty(slot);
    }

    /// Stores one word of application data with the connection.
    pub fn set_user(&mut self, conn: ConnId, user: usize) -> Result<(), Error> {
        let slot = self.slot_of(conn)?;
        self.conns[slot].user = user;
        Ok(())
    }

    /// The word stored by [`Worker::set_user`] (0 if none).
    pub fn user(&self, conn: ConnId) -> Result<usize, Error> {
        Ok(self.conns[self.slot_of(conn)?].user)
    }

    /// The socket's fd, for `getpeername`/`setsockopt`. Do not read, write or close it.
    pub fn fd(&self, conn: ConnId) -> Result<RawFd, Error> {
        Ok(self.conns[self.slot_of(conn)?].fd)
    }

    /// Bytes queued for sending on the connection and not yet sent.
    pub fn queued_bytes(&self, conn: ConnId) -> Result<usize, Error> {
        Ok(self.conns[self.slot_of(conn)?].out_bytes)
    }

    /// Runs `f` on this worker after `delay`.
    pub fn add_timer(&mut self, delay: Duration, f: Box<dyn FnOnce(&mut Worker)>) -> TimerId {
        let id = self.next_timer;
        self.next_timer += 1;
        self.timers.push(Reverse((Instant::now() + delay, id)));
        self.timer_fns.insert(id, f);
        TimerId(id)
    }

    /// Cancels a timer; false if it already ran or was cancelled.
    pub fn cancel_timer(&mut self, id: TimerId) -> bool {
        self.timer_fns.remove(&id.0).is_some()
    }

    /// Posts work to another worker of the same engine (see `Engine::post`).
    pub fn post(&self, index: usize, task: Task) -> Result<(), Error> {
        super::post_to(&self.shared, index, task)
    }

    /// Asks the whole engine to stop; returns at once.
    pub fn request_stop(&self, drain: Duration) {
        super::request_stop(&self.shared, drain);
    }

    /// One round of work between waits: posted work, due timers, the drain deadline while
    /// stopping, and `flush` (the backend turning dirty connections into I/O) until no
    /// connection is left dirty.
    pub(crate) fn settle(&mut self, mut flush: impl FnMut(&mut Worker)) {
        self.run_mail(false);
        loop {
            self.run_timers();
            if self.stopping {
                self.enforce_drain();
            }
            flush(self);
            if self.dirty.is_empty() {
                break;
            }
        }
    }

    /// Runs due timers; returns the time until the next one.
    pub(crate) fn run_timers(&mut self) -> Option<Duration> {
        loop {
            let now = Instant::now();
            let Reverse((at, id)) = self.timers.peek().copied()?;
            if at > now {
                return Some(at - now);
            }
            self.timers.pop();
            if let Some(f) = self.timer_fns.remove(&id) {
                f(self);
            }
        }
    }

    /// Time until the earliest pending timer.
    pub(crate) fn next_timer(&self) -> Option<Duration> {
        self.timers.peek().map(|Reverse((at, _))| at.saturating_duration_since(Instant::now()))
    }

    /// Runs posted tasks; when `close` is set, also refuses later posts.
    pub(crate) fn run_mail(&mut self, close: bool) {
        let ws = &self.shared.workers[self.index];
        if !close && !ws.has_mail.load(Ordering::Acquire) {
            return;
        }
        ws.has_mail.store(false, Ordering::Release);
        let tasks = {
            let mut mb = ws.mailbox.lock();
            if close {
                mb.closed = true;
            }
            std::mem::take(&mut mb.tasks)
        };
        for t in tasks {
            t(self);
        }
    }

    /// Called when the stop flag is first seen: every connection starts closing.
    pub(crate) fn begin_stop(&mut self) {
        self.stopping = true;
        let drain = Duration::from_millis(self.shared.drain_ms.load(Ordering::Acquire));
        self.drain_deadline = Some(Instant::now() + drain);
        for slot in 0..self.conns.len() {
            if self.conns[slot].is_live() {
                if !drain.is_zero() {
                    self.send_close_notify(slot);
                }
                // Draining has no linger timer here: the drain deadline bounds it.
                let c = &mut self.conns[slot];
                if drain.is_zero() {
                    if matches!(c.life, Life::Open | Life::Draining) {
                        c.life = Life::Aborting;
                    }
                } else if c.life == Life::Open {
                    c.life = Life::Draining;
                }
                self.mark_dirty(slot);
            }
        }
    }

    /// After the drain deadline every remaining connection is cut.
    pub(crate) fn enforce_drain(&mut self) -> Option<Duration> {
        let deadline = self.drain_deadline?;
        let now = Instant::now();
        if now < deadline {
            return Some(deadline - now);
        }
        for slot in 0..self.conns.len() {
            if matches!(self.conns[slot].life, Life::Open | Life::Draining) {
                self.conns[slot].life = Life::Aborting;
                self.mark_dirty(slot);
            }
        }
        None
    }
}

/// Delivers received bytes to the handler (through TLS on a TLS connection), or keeps them
/// for later when receiving is paused.
pub(crate) fn deliver<H: Handler>(w: &mut Worker, h: &mut H, slot: usize, data: &[u8]) {
    StatCells::add(&w.stats().bytes_in, data.len() as u64);
    if w.conns[slot].tls.is_some() {
        w.tls_input(h, slot, data);
        return;
    }
    deliver_plain(w, h, slot, data);
}

/// Delivers plaintext to the handler, or keeps it for later when receiving is paused.
fn deliver_plain<H: Handler>(w: &mut Worker, h: &mut H, slot: usize, data: &[u8]) {
    let c = &mut w.conns[slot];
    if !c.is_open() {
        return;
    }
    if c.paused_user || c.paused_hwm {
        c.stash.extend_from_slice(data);
        return;
    }
    let id = w.id_of(slot);
    h.on_data(w, id, data);
}

/// Hands stashed input to the handler once receiving is allowed again.
pub(crate) fn deliver_stash<H: Handler>(w: &mut Worker, h: &mut H, slot: usize) {
    let c = &mut w.conns[slot];
    if c.stash.is_empty() || !c.is_open() || c.paused_user || c.paused_hwm {
        return;
    }
    let data = std::mem::take(&mut c.stash);
    let id = w.id_of(slot);
    h.on_data(w, id, &data);
}

/// Packs an operation's kind, connection slot and generation into the 64-bit word the
/// kernel hands back with its event or completion (epoll data, io_uring user_data).
/// Each backend names its operation kinds with its own enum and converts them to and from
/// the byte stored here.
pub(crate) fn ud(kind: u8, slot: usize, gen: u32) -> u64 {
    ((kind as u64) << 56) | ((slot as u64) << 32) | gen as u64
}

/// Unpacks a word made by [`ud`] into (kind, slot, generation).
pub(crate) fn untag(data: u64) -> (u8, usize, u32) {
    ((data >> 56) as u8, ((data >> 32) & 0xff_ffff) as usize, data as u32)
}

/// Takes the next dirty connection and does the backend-independent part of flushing it:
/// hands over stashed input receiving is allowed again for, and starts the close of a
/// connection whose peer half-closed once its input is all handled. Returns the slot when
/// the connection is still live, for the backend to close it or turn its state into I/O.
pub(crate) fn next_dirty<H: Handler>(w: &mut Worker, h: &mut H) -> Option<usize> {
    while let Some(slot) = w.dirty.pop() {
        let slot = slot as usize;
        w.conns[slot].in_dirty = false;
        if !w.conns[slot].is_live() {
            continue;
        }
        if !w.conns[slot].stash.is_empty() {
            deliver_stash(w, h, slot);
            if !w.conns[slot].is_live() {
                continue;
            }
        }
        let c = &w.conns[slot];
        if c.eof && c.stash.is_empty() && c.is_open() {
            // Half-close from the peer: answer what was asked, then close.
            let reason = match &c.tls {
                None => CloseReason::PeerClosed,
                Some(t) if t.peer_closed => CloseReason::PeerClosed,
                Some(t) if t.session.is_handshaking() => CloseReason::TlsHandshake,
                Some(_) => CloseReason::TlsTruncated,
            };
            let detail = match reason {
                CloseReason::TlsHandshake => {
                    Some("peer closed the connection during the handshake".to_string())
                }
                CloseReason::TlsTruncated => {
                    Some("peer closed the connection without close_notify".to_string())
                }
                _ => None,
            };
            w.fail(slot, reason, detail);
            w.begin_close(slot, false);
        }
        return Some(slot);
    }
    None
}

/// Accounts `n` sent bytes: drops finished segments and reports finished borrowed sends.
pub(crate) fn sent<H: Handler>(w: &mut Worker, h: &mut H, slot: usize, mut n: usize) {
    StatCells::add(&w.stats().bytes_out, n as u64);
    let mut done: Vec<u64> = Vec::new();
    let c = &mut w.conns[slot];
    c.out_bytes -= n.min(c.out_bytes);
    while let Some(seg) = c.out.front() {
        let rem = seg.len() - c.head_off;
        if rem <= n {
            n -= rem;
            if let Some(ck) = seg.cookie() {
                done.push(ck);
            }
            if let Some(Segment::Copy(mut v)) = c.out.pop_front() {
                if v.capacity() <= 64 * 1024 {
                    v.clear();
                    c.spare = Some(v);
                }
            }
            c.head_off = 0;
        } else {
            c.head_off += n;
            break;
        }
    }
    c.send = SendOp::Idle;
    if c.paused_hwm && c.out_bytes <= w.cfg.out_high_water / 2 {
        c.paused_hwm = false;
    }
    w.mark_dirty(slot);
    if !done.is_empty() {
        let id = w.id_of(slot);
        for ck in done {
            h.on_send_done(w, id, ck, true);
        }
    }
}

/// Final step of a connection whose kernel operations are all finished: close the fd,
/// hand back unsent borrowed memory, `on_close`, free the slot.
///
/// Only after an abnormal end can a send still be in the kernel here (`SendOp` not `Idle`:
/// the cancellation could not be confirmed, see `WorkerLoop::abandon`). The segments it
/// covers are then never handed back nor freed: no `on_send_done` for their cookies, their
/// copies leaked. A leak, where handing them back could let C free or reuse memory the
/// kernel still reads.
pub(crate) fn finalize<H: Handler>(w: &mut Worker, h: &mut H, slot: usize) {
    let id = w.id_of(slot);
    let c = &mut w.conns[slot];
    c.life = Life::Ending;
    let fd = std::mem::replace(&mut c.fd, -1);
    let in_kernel = c.send.frozen_segs();
    c.send = SendOp::Idle;
    let mut cookies: Vec<u64> = Vec::new();
    let held = c.tls.as_mut().map(|t| std::mem::take(&mut t.held_cookies)).unwrap_or_default();
    for (i, seg) in c.out.drain(..).enumerate() {
        if i < in_kernel {
            std::mem::forget(seg);
        } else if let Some(ck) = seg.cookie() {
            cookies.push(ck);
        }
    }
    cookies.extend(held);
    c.out_bytes = 0;
    if fd >= 0 {
        // SAFETY: the fd was accepted by this worker and is closed exactly once, here, after
        // every io_uring operation on it has completed (or, after an abnormal end, holds its
        // own reference to the file, so no later fd with this number can be reached by it).
        unsafe { libc::close(fd) };
    }
    for ck in cookies {
        h.on_send_done(w, id, ck, false);
    }
    h.on_close(w, id);
    w.release(slot);
}

/// A backend's worker loop, as run by [`drive`].
pub(crate) trait WorkerLoop {
    /// Runs until the worker has stopped; an error means the kernel interface itself failed.
    fn run<H: Handler>(&mut self, w: &mut Worker, h: &mut H) -> std::io::Result<()>;
    /// After an abnormal end, before the connections are finalised: ends every kernel
    /// operation on the connections, and leaves the `SendOp` of any send whose end it could
    /// not confirm as it is (`finalize` then never hands its memory back).
    fn abandon(&mut self, w: &mut Worker);
}

/// Runs a worker on this thread: `on_worker_start`, the backend's loop, the last posted
/// work and `on_worker_stop`. When the loop fails (`failed` names what failed in the message)
/// or a handler panics, the backend abandons its kernel operations and every live
/// connection is finalised before the posted work and `on_worker_stop` run. Returns the
/// first panic, for the caller to resume once it has released the backend's resources.
pub(crate) fn drive<L: WorkerLoop, H: Handler>(
    l: &mut L,
    w: &mut Worker,
    h: &mut H,
    failed: &str,
) -> Option<Box<dyn std::any::Any + Send>> {
    let current = CurrentGuard::set(w);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        h.on_worker_start(w);
        l.run(w, h)
    }));
    let mut panicked = None;
    match outcome {
        Ok(Ok(())) => {
            w.run_mail(true);
            h.on_worker_stop(w);
            return None;
        }
        Ok(Err(e)) => eprintln!(
            "p99: engine worker {}: {failed} failed ({e}); closing its connections",
            w.index
        ),
        Err(p) => panicked = Some(p),
    }
    l.abandon(w);
    let late = abort_all(w, h);
    let stop = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        w.run_mail(true);
        h.on_worker_stop(w);
    }));
    drop(current);
    panicked.or(late).or(stop.err())
}

/// Ends every live connection after the worker loop ended abnormally (a handler panicked or
/// the kernel interface failed) and no kernel operation can touch the connections any more:
/// for each, closes the fd, hands back unsent borrowed memory with `on_send_done(sent=false)`
/// and calls `on_close`, exactly once. A callback that panics here is caught so the remaining
/// connections are still finalised; the first such panic is returned. A connection whose
/// finalisation was under way when the loop ended (its `on_close` or `on_send_done` panicked)
/// is only freed: its fd is already closed and its callbacks are not repeated.
pub(crate) fn abort_all<H: Handler>(
    w: &mut Worker,
    h: &mut H,
) -> Option<Box<dyn std::any::Any + Send>> {
    let mut first = None;
    for slot in 0..w.conns.len() {
        if !w.conns[slot].is_live() {
            continue;
        }
        if w.conns[slot].fd < 0 {
            w.release(slot);
            continue;
        }
        w.conns[slot].life = Life::Ending;
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| finalize(w, h, slot)));
        if let Err(p) = r {
            if w.conns[slot].is_live() {
                w.release(slot);
            }
            first.get_or_insert(p);
        }
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draining_connection_ends_only_after_its_send_and_queue_are_done() {
        let mut c = Conn::empty(1);
        c.life = Life::Draining;
        c.out.push_back(Segment::Copy(b"bye".to_vec()));
        c.start_send(1);
        let mut first = false;
        assert!(!c.end_if_due(&mut first), "ended with output queued");
        assert!(!c.wants_send(), "a second send while one is in flight");
        c.out.clear();
        assert!(!c.end_if_due(&mut first), "ended with a send in the kernel");
        c.send = SendOp::Idle;
        assert!(c.end_if_due(&mut first) && first);
        assert_eq!(c.life, Life::Ending);
        assert!(c.end_if_due(&mut first) && !first, "the first step of ending ran twice");
    }

    #[test]
    fn aborting_connection_ends_at_once_and_cancels_its_send_once() {
        let mut c = Conn::empty(1);
        c.life = Life::Aborting;
        c.out.push_back(Segment::Copy(b"dropped".to_vec()));
        c.start_send(1);
        assert!(!c.wants_send());
        let mut first = false;
        assert!(c.end_if_due(&mut first) && first);
        assert!(c.cancel_send());
        assert_eq!(c.send, SendOp::Cancelling { segs: 1 });
        assert!(!c.cancel_send(), "cancel submitted twice");
        assert_eq!(
            c.send.frozen_segs(),
            1,
            "a cancelled send still freezes its segments until its CQE"
        );
    }

    #[test]
    fn open_connection_reads_and_sends_but_never_ends() {
        let mut c = Conn::empty(1);
        c.life = Life::Open;
        c.out.push_back(Segment::Copy(b"x".to_vec()));
        assert!(c.wants_read() && c.wants_send());
        c.paused_hwm = true;
        assert!(!c.wants_read());
        let mut first = false;
        assert!(!c.end_if_due(&mut first));
    }
}
