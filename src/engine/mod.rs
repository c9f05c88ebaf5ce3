//! Thread-per-core network engine: one pinned worker thread per CPU, each with its own
//! `SO_REUSEPORT` listener and its own event loop, no locks on the data path.
//!
//! The loop is io_uring (multishot accept, multishot recv from a per-worker provided buffer
//! ring, one ordered `sendmsg` in flight per connection) when the kernel allows it, and epoll
//! otherwise; both give the caller the same callbacks with the same guarantees. The backend is
//! chosen once per process by [`probe::backend`] and can be forced with `P99_BACKEND`.

mod bufring;
mod conn;
mod epoll;
pub mod probe;
mod sys;
mod tls;
mod uring;

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

use parking_lot::Mutex;

pub use conn::{is_current_worker, ConnId, TimerId, Worker};
pub use probe::Backend;
pub use tls::{Pem, TlsConfig, TlsSettings, TlsVersion};

/// Number of CPUs in the calling thread's affinity mask: the default worker count.
pub fn probe_cpus() -> usize {
    sys::affinity_cpus().len().max(1)
}

/// The most connections one worker can hold: a [`ConnId`] names the slot in 24 bits.
const MAX_CONNS_PER_WORKER: usize = (1 << 24) - 1;

/// Everything the engine needs to start. `Config::default()` gives the documented defaults.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address the listeners bind to.
    pub addr: IpAddr,
    /// TCP port; 0 picks a free port (read it back with [`Engine::port`]).
    pub port: u16,
    /// Worker threads; 0 means one per CPU in the process's affinity mask.
    pub workers: usize,
    /// Pin worker `i` to the `i`-th CPU of the affinity mask (modulo its size).
    pub pin_workers: bool,
    /// Open connections allowed across all workers of the engine: the process-wide limit a
    /// server's `-c` sets. Further accepts, on whichever worker they land, are closed at once
    /// and counted in [`WorkerStats::rejected`]. 1..=2^32-1.
    pub max_conns: usize,
    /// Open connections allowed on one worker, an optional cap below `max_conns`; further
    /// accepts are closed at once and counted in [`WorkerStats::rejected`]. The default is
    /// the most a connection handle can name, 16777215, so only `max_conns` applies.
    pub max_conns_per_worker: usize,
    /// Size of one receive buffer (bytes) in the per-worker provided buffer ring.
    pub rx_buf_size: usize,
    /// Number of receive buffers per worker; a power of two, 1..=32768.
    pub rx_buf_count: usize,
    /// Submission queue entries of each ring (the completion queue is 16 times larger).
    pub sq_entries: u32,
    /// Queued output bytes above which a connection's receiving is paused until the queue
    /// drains below half of it, so a peer that never reads cannot grow memory without bound.
    pub out_high_water: usize,
    /// How long a closed connection may keep flushing queued output before it is cut.
    pub close_linger: Duration,
    /// Listen backlog.
    pub backlog: i32,
    /// Set `TCP_NODELAY` on accepted connections.
    pub tcp_nodelay: bool,
    /// Backend for this engine; `None` (the default) uses the process-wide choice of
    /// [`probe::backend`] (probe, or `P99_BACKEND`).
    pub backend: Option<Backend>,
    /// Serve TLS on every connection of this engine (`None`, the default: plaintext). The
    /// handshake and record layer run in the worker: handlers see and send plaintext.
    pub tls: Option<Arc<TlsConfig>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            workers: 0,
            pin_workers: true,
            max_conns: 65536,
            max_conns_per_worker: MAX_CONNS_PER_WORKER,
            rx_buf_size: 4096,
            rx_buf_count: 1024,
            sq_entries: 256,
            out_high_water: 1 << 20,
            close_linger: Duration::from_secs(2),
            backlog: 1024,
            tcp_nodelay: true,
            backend: None,
            tls: None,
        }
    }
}

/// Why an engine call failed.
#[derive(Debug)]
pub enum Error {
    /// A configuration value is out of range; the text names it.
    InvalidConfig(&'static str),
    /// The handle names a connection that has been closed (and perhaps reused).
    StaleHandle,
    /// The connection is closing; no more output is accepted.
    Closed,
    /// The call was made on a thread that does not own the object.
    WrongThread,
    /// `P99_BACKEND=uring` was set but io_uring cannot be used here.
    Unsupported(String),
    /// A system call failed.
    Io(io::Error),
    /// The TLS configuration could not be built (certificate, key or CA unreadable or
    /// unusable); the text says which and why.
    Tls(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidConfig(what) => write!(f, "invalid configuration: {what}"),
            Error::StaleHandle => f.write_str("stale connection handle"),
            Error::Closed => f.write_str("closed"),
            Error::WrongThread => f.write_str("called from a thread that does not own the object"),
            Error::Unsupported(why) => write!(f, "unsupported: {why}"),
            Error::Io(e) => write!(f, "{e}"),
            Error::Tls(why) => write!(f, "TLS configuration: {why}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

/// What the application does with connections. One handler per worker, created on that
/// worker's thread by the factory given to [`Engine::start`], so it needs neither `Send` nor
/// locks. Every method runs on the worker thread and may call back into the [`Worker`].
///
/// If a method panics, or the worker's io_uring/epoll instance fails, that worker ends, and
/// ends cleanly for its connections: operations still in the kernel are cancelled (io_uring:
/// synchronously, and each send's end confirmed by its completion), then every live
/// connection gets `on_send_done(sent=false)` for each unsent borrowed send and `on_close`
/// exactly once, and its fd is closed. Should the kernel not confirm within a second that a
/// send ended (the ring itself failed), the memory that send covers is never handed back:
/// no `on_send_done` for it, a leak rather than memory freed under the kernel. Posted tasks
/// are dropped and `on_worker_stop` runs. A callback that panics during this is caught so
/// the others still run. Afterwards the first panic resumes
/// unwinding the worker thread (a kernel failure is reported on stderr instead). The
/// worker's listener is closed, so new connections go to the other workers; the engine's
/// stop and drop work as usual. A connection whose `on_close` or `on_send_done` itself
/// panicked is freed without repeating its callbacks.
pub trait Handler {
    /// The worker's loop is about to start.
    fn on_worker_start(&mut self, _w: &mut Worker) {}
    /// A connection was accepted. Return `false` to refuse it: it is closed at once and gets
    /// no further callback, not even `on_close`.
    fn on_accept(&mut self, _w: &mut Worker, _conn: ConnId) -> bool {
        true
    }
    /// Bytes arrived. `data` is borrowed for the call only.
    fn on_data(&mut self, w: &mut Worker, conn: ConnId, data: &[u8]);
    /// A borrowed send (`Worker::send_borrowed`) with this cookie is finished: `sent` says
    /// whether all its bytes reached the socket (false when the connection closed first).
    /// Either way the memory is no longer used by the engine.
    fn on_send_done(&mut self, _w: &mut Worker, _conn: ConnId, _cookie: u64, _sent: bool) {}
    /// The connection is closed. Called exactly once per accepted connection, after every
    /// `on_send_done` of that connection; the handle is stale afterwards.
    fn on_close(&mut self, _w: &mut Worker, _conn: ConnId) {}
    /// The worker's loop has ended (every connection is closed).
    fn on_worker_stop(&mut self, _w: &mut Worker) {}
}

/// Why a connection closed, as [`Worker::close_reason`] tells it (during `on_close`, or
/// before it once the connection is closing). The first cause recorded is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The application closed it, or the engine stopped.
    Local,
    /// The peer ended the stream (TCP FIN; over TLS, after its close_notify).
    PeerClosed,
    /// The socket failed (connection reset, a send or receive error).
    Io,
    /// The TLS handshake failed: the peer sent something that is not TLS, no common version
    /// or cipher suite, a missing or rejected client certificate, a fatal alert, or the peer
    /// left during the handshake.
    TlsHandshake,
    /// The TLS handshake did not finish within the configured deadline.
    TlsHandshakeTimeout,
    /// After the handshake, the TLS record layer failed: a malformed, oversized or
    /// undecryptable record, or a fatal alert from the peer.
    TlsProtocol,
    /// The peer closed the TCP stream without TLS close_notify (possibly mid-record).
    TlsTruncated,
}

/// Counters of one worker, as read by [`Engine::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Connections accepted (and not refused by `on_accept` or the limit).
    pub accepted: u64,
    /// Connections currently open.
    pub open: u64,
    /// Connections closed at once because the engine (`max_conns`) or the worker
    /// (`max_conns_per_worker`) was at its limit.
    pub rejected: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// io_uring: SQEs submitted; epoll: I/O system calls (accept, recv, sendmsg).
    pub submissions: u64,
    /// io_uring: `io_uring_enter` calls; epoll: `epoll_wait` calls.
    pub enters: u64,
    /// io_uring: CQEs handled; epoll: events handled.
    pub completions: u64,
    /// Times a multishot recv ended because the provided buffer ring was empty (`ENOBUFS`)
    /// and had to be re-armed.
    pub bufring_empty: u64,
}

#[derive(Default)]
pub(crate) struct StatCells {
    pub accepted: AtomicU64,
    pub open: AtomicU64,
    pub rejected: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub submissions: AtomicU64,
    pub enters: AtomicU64,
    pub completions: AtomicU64,
    pub bufring_empty: AtomicU64,
}

impl StatCells {
    #[inline]
    pub fn add(cell: &AtomicU64, n: u64) {
        // Only the owning worker writes, so a load/store pair is enough and cheaper than an
        // atomic read-modify-write.
        cell.store(cell.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    fn snapshot(&self) -> WorkerStats {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WorkerStats {
            accepted: l(&self.accepted),
            open: l(&self.open),
            rejected: l(&self.rejected),
            bytes_in: l(&self.bytes_in),
            bytes_out: l(&self.bytes_out),
            submissions: l(&self.submissions),
            enters: l(&self.enters),
            completions: l(&self.completions),
            bufring_empty: l(&self.bufring_empty),
        }
    }
}

/// Work posted to a worker from any thread.
pub type Task = Box<dyn FnOnce(&mut Worker) + Send>;

pub(crate) struct Mailbox {
    pub tasks: Vec<Task>,
    /// Set when the worker has exited: later posts fail instead of being lost.
    pub closed: bool,
}

/// The part of a worker other threads may touch.
pub(crate) struct WorkerShared {
    pub mailbox: Mutex<Mailbox>,
    pub has_mail: AtomicBool,
    pub wake: OwnedFd,
    pub stats: StatCells,
    pub thread: Mutex<Option<ThreadId>>,
}

impl WorkerShared {
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a live u64 to an eventfd we own; an error (the counter
        // saturated) still leaves the eventfd readable, which is all a wakeup needs.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

pub(crate) struct Shared {
    pub stop: AtomicBool,
    /// Connections open on all workers together, held against `Config::max_conns`.
    pub open_conns: AtomicUsize,
    pub drain_ms: AtomicU64,
    pub workers: Vec<WorkerShared>,
}

/// A running engine. Dropping it stops it (with a one-second drain).
pub struct Engine {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    port: u16,
    backend: Backend,
}

impl Engine {
    /// Binds one listener per worker, starts the workers and returns once every worker's
    /// loop is running (or the first failure). `factory(i)` runs on worker `i`'s thread and
    /// makes its handler.
    pub fn start<H, F>(config: Config, factory: F) -> Result<Engine, Error>
    where
        H: Handler + 'static,
        F: Fn(usize) -> H + Send + Sync + 'static,
    {
        let cfg = Arc::new(config);
        validate(&cfg)?;
        let backend = match cfg.backend {
            Some(Backend::Uring) => {
                probe::uring_usable().map_err(Error::Unsupported)?;
                Backend::Uring
            }
            Some(Backend::Epoll) => Backend::Epoll,
            None => probe::backend().map_err(Error::Unsupported)?,
        };
        let cpus = sys::affinity_cpus();
        let nworkers = if cfg.workers == 0 { cpus.len().max(1) } else { cfg.workers };
        if nworkers > 255 {
            return Err(Error::InvalidConfig("workers must be at most 255"));
        }
        // All listeners are bound here, so a bad address fails the call itself; with port 0
        // the first bind picks the port and the others join it.
        let mut listeners = Vec::with_capacity(nworkers);
        let mut port = cfg.port;
        for _ in 0..nworkers {
            let (fd, bound) = sys::listener(SocketAddr::new(cfg.addr, port), cfg.backlog)?;
            port = bound;
            listeners.push(fd);
        }
        let mut workers = Vec::with_capacity(nworkers);
        for _ in 0..nworkers {
            workers.push(WorkerShared {
                mailbox: Mutex::new(Mailbox { tasks: Vec::new(), closed: false }),
                has_mail: AtomicBool::new(false),
                wake: sys::eventfd()?,
                stats: StatCells::default(),
                thread: Mutex::new(None),
            });
        }
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            open_conns: AtomicUsize::new(0),
            drain_ms: AtomicU64::new(1000),
            workers,
        });
        let factory = Arc::new(factory);
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), Error>>();
        let mut threads = Vec::with_capacity(nworkers);
        for (i, listener) in listeners.into_iter().enumerate() {
            let cpu =
                if cfg.pin_workers && !cpus.is_empty() { Some(cpus[i % cpus.len()]) } else { None };
            let wshared = Arc::clone(&shared);
            let cfg = Arc::clone(&cfg);
            let factory = Arc::clone(&factory);
            let ready = ready_tx.clone();
            let spawned =
                std::thread::Builder::new().name(format!("p99-worker-{i}")).spawn(move || {
                    if let Some(cpu) = cpu {
                        sys::pin_to_cpu(cpu);
                    }
                    *wshared.workers[i].thread.lock() = Some(std::thread::current().id());
                    let make = move || factory(i);
                    match backend {
                        Backend::Uring => uring::run(i, listener, wshared, cfg, make, ready),
                        Backend::Epoll => epoll::run(i, listener, wshared, cfg, make, ready),
                    }
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    let engine = Engine { shared, threads: Mutex::new(threads), port, backend };
                    engine.shutdown(Duration::ZERO);
                    return Err(Error::Io(e));
                }
            }
        }
        drop(ready_tx);
        let engine = Engine { shared, threads: Mutex::new(threads), port, backend };
        for _ in 0..nworkers {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    engine.shutdown(Duration::ZERO);
                    return Err(e);
                }
                Err(_) => {
                    engine.shutdown(Duration::ZERO);
                    return Err(Error::Io(io::Error::other("a worker thread exited during start")));
                }
            }
        }
        Ok(engine)
    }

    /// The port the listeners are bound to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The backend this engine runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.shared.workers.len()
    }

    /// Counters of worker `index`.
    pub fn stats(&self, index: usize) -> Option<WorkerStats> {
        self.shared.workers.get(index).map(|w| w.stats.snapshot())
    }

    /// Runs `task` on worker `index`'s thread, soon. Thread-safe. Fails with
    /// [`Error::Closed`] once the engine is stopping (the task is then dropped, not run).
    pub fn post(&self, index: usize, task: Task) -> Result<(), Error> {
        post_to(&self.shared, index, task)
    }

    /// A handle other threads can use to post work and request a stop.
    pub fn remote(&self) -> Remote {
        Remote { shared: Arc::clone(&self.shared) }
    }

    /// Stops the engine: no new connections; each open connection stops receiving, may flush
    /// its queued output for up to `drain`, and is closed (with its `on_close`); then the
    /// workers exit and every fd, buffer and thread is released. Blocks until done. Must not
    /// be called from one of this engine's workers ([`Error::WrongThread`]); use
    /// [`Remote::request_stop`] there. Calling it again is a no-op; calls from several
    /// threads at once all return only once the stop has finished.
    pub fn stop(&self, drain: Duration) -> Result<(), Error> {
        if self.on_worker_thread() {
            return Err(Error::WrongThread);
        }
        self.shutdown(drain);
        Ok(())
    }

    /// Asks the workers to stop and returns at once (see [`Remote::request_stop`]).
    pub fn request_stop(&self, drain: Duration) {
        request_stop(&self.shared, drain);
    }

    /// Whether the calling thread is one of this engine's workers.
    pub fn on_worker_thread(&self) -> bool {
        let me = std::thread::current().id();
        self.shared.workers.iter().any(|w| *w.thread.lock() == Some(me))
    }

    fn shutdown(&self, drain: Duration) {
        // The lock is held while joining, so a concurrent second caller waits here until the
        // first one's stop has finished (no worker ever takes this lock: stop, free and drop
        // on a worker never reach it).
        let mut threads = self.threads.lock();
        if threads.is_empty() {
            return;
        }
        request_stop(&self.shared, drain);
        for t in threads.drain(..) {
            // A worker that panicked has nothing more to release; its error is not ours.
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if self.on_worker_thread() {
            // Dropped on its own worker: joining would deadlock; ask and detach instead.
            request_stop(&self.shared, Duration::from_secs(1));
            return;
        }
        self.shutdown(Duration::from_secs(1));
    }
}

/// A cloneable, thread-safe handle for posting work and requesting a stop.
#[derive(Clone)]
pub struct Remote {
    shared: Arc<Shared>,
}

impl Remote {
    /// Like [`Engine::post`].
    pub fn post(&self, index: usize, task: Task) -> Result<(), Error> {
        post_to(&self.shared, index, task)
    }

    /// Asks every worker to stop (draining for up to `drain`) and returns at once; callable
    /// from any thread, including a worker.
    pub fn request_stop(&self, drain: Duration) {
        request_stop(&self.shared, drain);
    }
}

fn request_stop(shared: &Shared, drain: Duration) {
    if !shared.stop.swap(true, Ordering::AcqRel) {
        shared.drain_ms.store(drain.as_millis().min(u64::MAX as u128) as u64, Ordering::Release);
    }
    for w in &shared.workers {
        w.wake();
    }
}

fn post_to(shared: &Shared, index: usize, task: Task) -> Result<(), Error> {
    let w = shared.workers.get(index).ok_or(Error::InvalidConfig("no worker with that index"))?;
    if shared.stop.load(Ordering::Acquire) {
        return Err(Error::Closed);
    }
    {
        let mut mb = w.mailbox.lock();
        if mb.closed {
            return Err(Error::Closed);
        }
        mb.tasks.push(task);
    }
    if !w.has_mail.swap(true, Ordering::AcqRel) {
        w.wake();
    }
    Ok(())
}

fn validate(cfg: &Config) -> Result<(), Error> {
    if cfg.rx_buf_count == 0 || cfg.rx_buf_count > 32768 || !cfg.rx_buf_count.is_power_of_two() {
        return Err(Error::InvalidConfig("rx_buf_count must be a power of two in 1..=32768"));
    }
    if cfg.rx_buf_size == 0 || cfg.rx_buf_size > (1 << 20) {
        return Err(Error::InvalidConfig("rx_buf_size must be in 1..=1048576"));
    }
    if cfg.sq_entries == 0 || cfg.sq_entries > 32768 {
        return Err(Error::InvalidConfig("sq_entries must be in 1..=32768"));
    }
    if cfg.max_conns == 0 || cfg.max_conns > u32::MAX as usize {
        return Err(Error::InvalidConfig("max_conns must be in 1..=4294967295"));
    }
    if cfg.max_conns_per_worker == 0 || cfg.max_conns_per_worker > MAX_CONNS_PER_WORKER {
        return Err(Error::InvalidConfig("max_conns_per_worker must be in 1..16777215"));
    }
    if cfg.out_high_water == 0 {
        return Err(Error::InvalidConfig("out_high_water must be positive"));
    }
    if cfg.backlog <= 0 {
        return Err(Error::InvalidConfig("backlog must be positive"));
    }
    Ok(())
}
