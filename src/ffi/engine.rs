//! `p99_engine`, `p99_worker`, `p99_conn`: the I/O engine for C.
//!
//! Threading, for every function below:
//! - `p99_engine_*` functions are thread-safe, except that `p99_engine_stop` and
//!   `p99_engine_free` must not be called from one of the engine's own worker threads
//!   (both return `P99_STATUS_WRONG_THREAD` there and change nothing; use
//!   `p99_engine_request_stop`).
//! - `p99_worker_*` functions take the `p99_worker *` handed to a callback, a posted task or a
//!   timer, and may only be called on that worker's thread while the engine runs; from any
//!   other thread they return `P99_STATUS_WRONG_THREAD` without touching the worker.
//! - A `p99_conn` belongs to the worker that accepted it; using it on another worker gives
//!   `P99_STATUS_WRONG_THREAD`, using it after its `on_close` gives `P99_STATUS_STALE_HANDLE`.

// Every entry point that takes a pointer is an `unsafe extern "C" fn`: the caller promises
// the pointers are valid as each doc comment says (NULL is checked and refused). Those doc
// comments are the safety contract and become the header, so no separate `# Safety` section.
// Pointers become references through `c_arg!` (boundary.rs), which states each form's safety
// argument once; `p99_worker *` is checked by address instead (`worker_from`).
#![allow(clippy::missing_safety_doc)]

use std::ffi::{c_char, c_int, c_void, CString};
use std::net::IpAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;
use std::time::Duration;

use super::boundary::{c_arg, guard, guard_or, struct_size, CResult, Failure, Handle, Versioned};
use super::status::p99_status;
use super::tls::{p99_close_reason, p99_tls_config};
use crate::engine::{self, Backend, ConnId, Engine, Handler, TimerId, Worker};

/// A running engine: worker threads, each with its own listener and event loop. Create with
/// `p99_engine_start`, release with `p99_engine_free`.
pub struct p99_engine {
    inner: Engine,
}

impl Handle for p99_engine {}

/// One worker of an engine, as handed to callbacks, posted tasks and timers. Owned by the
/// engine; valid only on its own thread, during the call it was passed to.
#[repr(C)]
pub struct p99_worker {
    _private: [u8; 0],
}

/// A connection handle: worker index, slot and generation in one integer. 0 is never a valid
/// handle. After `on_close` the handle is stale forever, even if the fd number is reused.
pub type p99_conn = u64;

/// Which event loop the engine runs on.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum p99_backend {
    /// No backend can run (P99_BACKEND names one that is unavailable, or an unknown one).
    None = 0,
    /// io_uring: multishot accept and recv, provided buffer ring.
    Uring = 1,
    /// epoll: readiness and non-blocking system calls.
    Epoll = 2,
}

/// Engine configuration. Set `struct_size = sizeof(p99_engine_config)`, fill with
/// `p99_engine_config_defaults`, then change fields.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct p99_engine_config {
    /// `sizeof(p99_engine_config)`, set by the caller.
    pub struct_size: u32,
    /// IPv4 or IPv6 address to listen on, as text; NULL means "127.0.0.1". Borrowed until
    /// `p99_engine_start` returns.
    pub addr: *const c_char,
    /// TCP port; 0 picks a free port (see `p99_engine_port`). Default 0.
    pub port: u16,
    /// Worker threads; 0 = one per CPU in the process's affinity mask (default).
    pub workers: u32,
    /// Pin worker i to the i-th CPU of the affinity mask. Default true.
    pub pin_workers: bool,
    /// Set TCP_NODELAY on accepted connections. Default true.
    pub tcp_nodelay: bool,
    /// Open connections on one worker, an optional cap below `max_conns`; further ones are
    /// closed at accept. Default 16777215 (the most a handle can name), so only `max_conns`
    /// applies.
    pub max_conns_per_worker: u32,
    /// Bytes per receive buffer. Default 4096.
    pub rx_buf_size: u32,
    /// Receive buffers per worker, a power of two up to 32768. Default 1024.
    pub rx_buf_count: u32,
    /// io_uring submission queue entries per worker. Default 256.
    pub sq_entries: u32,
    /// Queued output bytes above which a connection's receiving pauses until half of it is
    /// sent. Default 1 MiB.
    pub out_high_water: u64,
    /// How long `p99_worker_close` may flush queued output before cutting. Default 2000 ms.
    pub close_linger_ms: u32,
    /// listen(2) backlog. Default 1024.
    pub backlog: i32,
    /// Open connections across all workers of the engine (a server's `-c`); further ones are
    /// closed at accept, whichever worker they reach. Default 65536. A caller built against a header
    /// without this field (its `struct_size` ends before it) gets the default.
    pub max_conns: u32,
    /// Serve TLS on every connection with these settings (see `p99_tls_config`); callbacks
    /// then see and send plaintext. NULL (default): plaintext. Borrowed until
    /// `p99_engine_start` returns. A caller whose `struct_size` ends before it gets NULL.
    pub tls: *const p99_tls_config,
}

/// Callbacks and the user pointer passed to each. Zero-fill with `struct_size` set (or set
/// `struct_size` and call `p99_engine_callbacks_defaults`), then set what you need; only
/// `on_data` is required. All run on the worker thread that owns the connection.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct p99_engine_callbacks {
    /// `sizeof(p99_engine_callbacks)`.
    pub struct_size: u32,
    /// Passed as the first argument of every callback. Shared by all workers.
    pub user: *mut c_void,
    /// The worker's loop starts. Optional.
    pub on_worker_start: Option<unsafe extern "C" fn(user: *mut c_void, worker: *mut p99_worker)>,
    /// A connection was accepted; return false to refuse it (closed at once, no `on_close`).
    /// Optional (NULL accepts all).
    pub on_accept: Option<
        unsafe extern "C" fn(user: *mut c_void, worker: *mut p99_worker, conn: p99_conn) -> bool,
    >,
    /// Bytes arrived; `data` is borrowed until the callback returns. Required.
    pub on_data: Option<
        unsafe extern "C" fn(
            user: *mut c_void,
            worker: *mut p99_worker,
            conn: p99_conn,
            data: *const u8,
            len: usize,
        ),
    >,
    /// A `p99_worker_send_iov` is finished with its memory: `sent` is true when every byte
    /// was written to the socket, false when the connection closed first. Optional.
    pub on_send_done: Option<
        unsafe extern "C" fn(
            user: *mut c_void,
            worker: *mut p99_worker,
            conn: p99_conn,
            cookie: u64,
            sent: bool,
        ),
    >,
    /// The connection is closed: exactly once per accepted connection, after all of its
    /// `on_send_done`. The handle is stale afterwards. Optional.
    pub on_close:
        Option<unsafe extern "C" fn(user: *mut c_void, worker: *mut p99_worker, conn: p99_conn)>,
    /// The worker's loop has ended. Optional.
    pub on_worker_stop: Option<unsafe extern "C" fn(user: *mut c_void, worker: *mut p99_worker)>,
}

/// Work run on a worker thread: posted (`p99_engine_post`) or timed (`p99_worker_add_timer`).
pub type p99_task_fn = Option<unsafe extern "C" fn(arg: *mut c_void, worker: *mut p99_worker)>;

/// Counters of one worker (`p99_engine_stats`). Set `struct_size` before the call.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct p99_worker_stats {
    /// `sizeof(p99_worker_stats)`, set by the caller.
    pub struct_size: u32,
    /// Connections accepted.
    pub accepted: u64,
    /// Connections open now.
    pub open: u64,
    /// Connections refused (limit reached or `on_accept` returned false).
    pub rejected: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// io_uring: SQEs submitted. epoll: I/O system calls (accept, recv, sendmsg).
    pub submissions: u64,
    /// io_uring: io_uring_enter calls. epoll: epoll_wait calls.
    pub enters: u64,
    /// io_uring: CQEs handled. epoll: events handled.
    pub completions: u64,
    /// Times the provided buffer ring ran empty (ENOBUFS) and a recv was re-armed.
    pub bufring_empty: u64,
}

// SAFETY (all three): repr(C), struct_size first, fields of integer, bool, pointer and
// Option<extern fn> types; later versions append fields.
unsafe impl Versioned for p99_engine_config {
    const NAME: &'static str = "p99_engine_config";
    /// The layout 0.1 published, which ended before `max_conns`.
    const FIRST_SIZE: usize = 64;
}
const _: () = assert!(std::mem::offset_of!(p99_engine_config, max_conns) == 64);
// SAFETY: see above.
unsafe impl Versioned for p99_engine_callbacks {
    const NAME: &'static str = "p99_engine_callbacks";
    const FIRST_SIZE: usize = 64;
}
// SAFETY: see above.
unsafe impl Versioned for p99_worker_stats {
    const NAME: &'static str = "p99_worker_stats";
    const FIRST_SIZE: usize = 80;
}

impl Default for p99_engine_config {
    fn default() -> Self {
        let d = engine::Config::default();
        p99_engine_config {
            struct_size: struct_size::<Self>(),
            addr: std::ptr::null(),
            port: d.port,
            workers: d.workers as u32,
            pin_workers: d.pin_workers,
            tcp_nodelay: d.tcp_nodelay,
            max_conns_per_worker: d.max_conns_per_worker as u32,
            rx_buf_size: d.rx_buf_size as u32,
            rx_buf_count: d.rx_buf_count as u32,
            sq_entries: d.sq_entries,
            out_high_water: d.out_high_water as u64,
            close_linger_ms: d.close_linger.as_millis() as u32,
            backlog: d.backlog,
            max_conns: d.max_conns as u32,
            tls: std::ptr::null(),
        }
    }
}

impl Default for p99_engine_callbacks {
    fn default() -> Self {
        p99_engine_callbacks {
            struct_size: struct_size::<Self>(),
            user: std::ptr::null_mut(),
            on_worker_start: None,
            on_accept: None,
            on_data: None,
            on_send_done: None,
            on_close: None,
            on_worker_stop: None,
        }
    }
}

/// Pointer that may cross to a worker thread: the C caller promised it can be used there.
#[derive(Clone, Copy)]
struct SendPtr(*mut c_void);
// SAFETY: C hands these pointers to the engine precisely so that worker threads use them;
// the documented contract makes thread safety of the pointee the caller's business.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

#[derive(Clone, Copy)]
struct Callbacks {
    cb: p99_engine_callbacks,
}
// SAFETY: function pointers and the user pointer, shared with workers by the C contract.
unsafe impl Send for Callbacks {}
// SAFETY: as above.
unsafe impl Sync for Callbacks {}

struct CHandler {
    cb: p99_engine_callbacks,
}

fn wptr(w: &mut Worker) -> *mut p99_worker {
    (w as *mut Worker).cast()
}

/// Runs a C callback; a panic (from libp99 code the callback called into) stops here.
fn trampoline<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fallback)
}

impl Handler for CHandler {
    fn on_worker_start(&mut self, w: &mut Worker) {
        if let Some(f) = self.cb.on_worker_start {
            // SAFETY: a C callback with the documented arguments.
            trampoline((), || unsafe { f(self.cb.user, wptr(w)) });
        }
    }
    fn on_accept(&mut self, w: &mut Worker, conn: ConnId) -> bool {
        match self.cb.on_accept {
            // SAFETY: as above.
            Some(f) => trampoline(false, || unsafe { f(self.cb.user, wptr(w), conn.to_raw()) }),
            None => true,
        }
    }
    fn on_data(&mut self, w: &mut Worker, conn: ConnId, data: &[u8]) {
        if let Some(f) = self.cb.on_data {
            // SAFETY: as above; `data` stays valid for the call.
            trampoline((), || unsafe {
                f(self.cb.user, wptr(w), conn.to_raw(), data.as_ptr(), data.len())
            });
        }
    }
    fn on_send_done(&mut self, w: &mut Worker, conn: ConnId, cookie: u64, sent: bool) {
        if let Some(f) = self.cb.on_send_done {
            // SAFETY: as above.
            trampoline((), || unsafe { f(self.cb.user, wptr(w), conn.to_raw(), cookie, sent) });
        }
    }
    fn on_close(&mut self, w: &mut Worker, conn: ConnId) {
        if let Some(f) = self.cb.on_close {
            // SAFETY: as above.
            trampoline((), || unsafe { f(self.cb.user, wptr(w), conn.to_raw()) });
        }
    }
    fn on_worker_stop(&mut self, w: &mut Worker) {
        if let Some(f) = self.cb.on_worker_stop {
            // SAFETY: as above.
            trampoline((), || unsafe { f(self.cb.user, wptr(w)) });
        }
    }
}

/// Borrows the worker behind `w` if, and only if, it is the calling thread's worker: `w` is
/// compared by address before it is dereferenced, so any pointer value is safe to pass.
fn worker_from<'a>(w: *mut p99_worker) -> Result<&'a mut Worker, Failure> {
    if w.is_null() {
        return Err(super::boundary::null_arg("worker"));
    }
    if !engine::is_current_worker(w as *const Worker) {
        return Err(p99_status::WrongThread.into());
    }
    // SAFETY: the address is this thread's current worker, which is live while the thread is
    // inside one of its callbacks, tasks or timers (the only place C holds it) and is not
    // otherwise used until that C code returns.
    Ok(unsafe { &mut *(w as *mut Worker) })
}

fn task(
    f: unsafe extern "C" fn(*mut c_void, *mut p99_worker),
    arg: SendPtr,
) -> Box<dyn FnOnce(&mut Worker) + Send> {
    Box::new(move |w: &mut Worker| {
        let arg = arg;
        // SAFETY: the C task with the argument it was posted with.
        trampoline((), || unsafe { f(arg.0, wptr(w)) });
    })
}

/// Fills `*config` with the defaults (see each field). The caller sets `config->struct_size
/// = sizeof(p99_engine_config)` first; at most that many bytes are written and it is left as
/// set. `P99_STATUS_NULL_PARAMETER` if `config` is NULL, `P99_STATUS_INVALID_ARGUMENT` if
/// `struct_size` is smaller than the first published struct. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn p99_engine_config_defaults(config: *mut p99_engine_config) -> p99_status {
    guard(|| -> CResult {
        c_arg!(versioned_out config)?.write(p99_engine_config::default());
        Ok(())
    })
}

/// Clears `*callbacks` (no user pointer, no callbacks). The caller sets
/// `callbacks->struct_size = sizeof(p99_engine_callbacks)` first; at most that many bytes are
/// written and it is left as set. `P99_STATUS_NULL_PARAMETER` if `callbacks` is NULL,
/// `P99_STATUS_INVALID_ARGUMENT` if `struct_size` is smaller than the first published struct.
/// Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn p99_engine_callbacks_defaults(
    callbacks: *mut p99_engine_callbacks,
) -> p99_status {
    guard(|| -> CResult {
        c_arg!(versioned_out callbacks)?.write(p99_engine_callbacks::default());
        Ok(())
    })
}

/// Binds the listeners, starts the workers and returns once all of them run; `*out` then
/// owns the engine (free with `p99_engine_free`). `config` and `callbacks` are borrowed until
/// return (the callbacks are copied). Errors: NULL pointer, `P99_STATUS_INVALID_ARGUMENT`
/// (bad `struct_size`, bad address, out-of-range value, `on_data` NULL),
/// `P99_STATUS_UNSUPPORTED` (P99_BACKEND forces an unavailable backend), or the status of the
/// failed system call (e.g. `P99_STATUS_IO_ERROR` with errno EADDRINUSE), and with `tls` set,
/// `P99_STATUS_TLS_CONFIG` (a certificate, key or CA file unreadable or unusable, or a key
/// that does not match the certificate; `p99_last_error_message()` says which). Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn p99_engine_start(
    config: *const p99_engine_config,
    callbacks: *const p99_engine_callbacks,
    out: *mut *mut p99_engine,
) -> p99_status {
    guard(|| -> CResult {
        let c = c_arg!(versioned_in config, p99_engine_config::default())?;
        let cb = c_arg!(versioned_in callbacks, p99_engine_callbacks::default())?;
        let out = c_arg!(out out)?;
        if cb.on_data.is_none() {
            return Err(Failure::invalid("callbacks->on_data is NULL; it is required"));
        }
        let addr = if c.addr.is_null() {
            engine::Config::default().addr
        } else {
            let addr = c.addr;
            let text = c_arg!(cstr addr)?
                .to_str()
                .map_err(|_| Failure::invalid("config->addr is not UTF-8"))?;
            text.parse::<IpAddr>().map_err(|_| {
                Failure::invalid(format!("config->addr \"{text}\" is not an IPv4 or IPv6 address"))
            })?
        };
        let cfg = engine::Config {
            addr,
            port: c.port,
            workers: c.workers as usize,
            pin_workers: c.pin_workers,
            max_conns: c.max_conns as usize,
            max_conns_per_worker: c.max_conns_per_worker as usize,
            rx_buf_size: c.rx_buf_size as usize,
            rx_buf_count: c.rx_buf_count as usize,
            sq_entries: c.sq_entries,
            out_high_water: usize::try_from(c.out_high_water).map_err(|_| {
                Failure::invalid("config->out_high_water does not fit this machine's size_t")
            })?,
            close_linger: Duration::from_millis(c.close_linger_ms as u64),
            backlog: c.backlog,
            tcp_nodelay: c.tcp_nodelay,
            backend: None,
            tls: super::tls::load(c.tls)?,
        };
        let shared = Callbacks { cb };
        let inner = Engine::start(cfg, move |_| {
            let shared = shared;
            CHandler { cb: shared.cb }
        })?;
        out.write(p99_engine { inner }.into_c());
        Ok(())
    })
}

/// Writes the TCP port the engine listens on to `*out`. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn p99_engine_port(engine: *const p99_engine, out: *mut u16) -> p99_status {
    guard(|| -> CResult {
        let e = c_arg!(handle engine)?;
        let out = c_arg!(out out)?;
        out.write(e.inner.port());
        Ok(())
    })
}

/// Writes the number of workers to `*out`. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn p99_engine_workers(
    engine: *const p99_engine,
    out: *mut u32,
) -> p99_status {
    guard(|| -> CResult {
        let e = c_arg!(handle engine)?;
        let out = c_arg!(out out)?;
        out.write(e.inner.workers() as u32);
        Ok(())
    })
}

/// The backend engines in this process run on, probing the kernel on the first call (once
/// per process): `P99_BACKEND_URING` when io_uring works here, else `P99_BACKEND_EPOLL`;
/// `P99_BACKEND=uring|epoll` in the environment forces one. `P99_BACKEND_NONE` means the
/// forced backend is unavailable (`p99_engine_start` then fails). Thread-safe.
#[no_mangle]
pub extern "C" fn p99_engine_backend() -> p99_backend {
    guard_or(p99_backend::None, || match engine::probe::backend() {
        Ok(Backend::Uring) => p99_backend::Uring,
        Ok(Backend::Epoll) => p99_backend::Epoll,
        Err(_) => p99_backend::None,
    })
}

/// Why `p99_engine_backend` chose its backend, e.g. "io_uring unavailable: io_uring_setup:
/// Operation not permitted (os error 1)". A static NUL-terminated string owned by libp99,
/// valid for the life of the process; never NULL. Thread-safe.
#[no_mangle]
pub extern "C" fn p99_engine_backend_reason() -> *const c_char {
    static REASON: OnceLock<CString> = OnceLock::new();
    guard_or(c"unknown".as_ptr(), || {
        REASON
            .get_or_init(|| {
                CString::new(engine::probe::reason().replace('\0', " ")).unwrap_or_default()
            })
            .as_ptr()
    })
}

/// Runs `fn(arg, worker)` on worker `worker_index`'s thread soon. `arg` is passed through
/// untouched; the task runs exactly once if this returns OK (also while the engine stops).
/// Errors: NULL `engine`/`fn`, `P99_STATUS_INVALID_ARGUMENT` (no such worker),
/// `P99_STATUS_CLOSED` (the engine is stopping; the task will not run). Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn p99_engine_post(
    engine: *const p99_engine,
    worker_index: u32,
    func: p99_task_fn,
    arg: *mut c_void,
) -> p99_status {
    guard(|| -> CResult {
        let e = c_arg!(handle engine)?;
        let f = func.ok_or_else(|| super::boundary::null_arg("fn"))?;
        Ok(e.inner.post(worker_index as usize, task(f, SendPtr(arg)))?)
    })
}

/// Asks the engine to stop (see `p99_engine_stop`) and returns at once. Callable from any
/// thread, including the engine's workers. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn p99_engine_request_stop(
    engine: *const p99_engine,
    drain_ms: u32,
) -> p99_status {
    guard(|| -> CResult {
        let e = c_arg!(handle engine)?;
        e.inner.request_stop(Duration::from_millis(drain_ms as u64));
        Ok(())
    })
}

/// Stops the engine and waits for it: listeners close, every connection stops receiving,
/// flushes queued output for up to `drain_ms`, is closed and gets `on_close`; workers run
/// `on_worker_stop` and exit; no fd, buffer or thread remains. A second call is a no-op;
/// concurrent calls from several threads all return only once the stop has finished.
/// Returns `P99_STATUS_WRONG_THREAD` when called on one of the engine's own workers (use
/// `p99_engine_request_stop` there). Thread-safe otherwise.
#[no_mangle]
pub unsafe extern "C" fn p99_engine_stop(engine: *const p99_engine, drain_ms: u32) -> p99_status {
    guard(|| -> CResult {
        let e = c_arg!(handle engine)?;
        Ok(e.inner.stop(Duration::from_millis(drain_ms as u64))?)
    })
}

/// Writes worker `worker_index`'s counters to `*out`; the caller sets `out->struct_size`
/// first. At most `struct_size` bytes are written (fields this library does not know are
/// zeroed), and `struct_size` is left as the caller set it. Errors: NULL pointers,
/// `P99_STATUS_INVALID_ARGUMENT` (no such worker, or struct_size smaller than the first
/// published version of the struct). Works before and after stop. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn p99_engine_stats(
    engine: *const p99_engine,
    worker_index: u32,
    out: *mut p99_worker_stats,
) -> p99_status {
    guard(|| -> CResult {
        let e = c_arg!(handle engine)?;
        let out = c_arg!(versioned_out out)?;
        let s = e.inner.stats(worker_index as usize).ok_or_else(|| {
            Failure::invalid(format!(
                "no worker {worker_index}: the engine has {}",
                e.inner.workers()
            ))
        })?;
        out.write(p99_worker_stats {
            struct_size: struct_size::<p99_worker_stats>(),
            accepted: s.accepted,
            open: s.open,
            rejected: s.rejected,
            bytes_in: s.bytes_in,
            bytes_out: s.bytes_out,
            submissions: s.submissions,
            enters: s.enters,
            completions: s.completions,
            bufring_empty: s.bufring_empty,
        });
        Ok(())
    })
}

/// Stops the engine if it still runs (1 s drain) and frees it; returns `P99_STATUS_OK`.
/// NULL is a no-op (`P99_STATUS_OK`). Called on one of the engine's own workers it returns
/// `P99_STATUS_WRONG_THREAD` and changes nothing (joining its own thread would deadlock): the
/// engine stays allocated and running; use `p99_engine_request_stop` there and free it from
/// another thread. Thread-safe otherwise; `engine` is invalid after `P99_STATUS_OK`.
#[no_mangle]
pub unsafe extern "C" fn p99_engine_free(engine: *mut p99_engine) -> p99_status {
    guard(|| -> CResult {
        if engine.is_null() {
            return Ok(());
        }
        if c_arg!(handle engine)?.inner.on_worker_thread() {
            return Err(p99_status::WrongThread.into());
        }
        drop(c_arg!(owned engine));
        Ok(())
    })
}

/// The index of the worker that owns `conn` (for `p99_engine_post`). Thread-safe.
#[no_mangle]
pub extern "C" fn p99_conn_worker(conn: p99_conn) -> u32 {
    ConnId::from_raw(conn).worker() as u32
}

/// Writes the worker's index to `*out`. Worker thread only.
#[no_mangle]
pub unsafe extern "C" fn p99_worker_index(worker: *mut p99_worker, out: *mut u32) -> p99_status {
    guard(|| -> CResult {
        let w = worker_from(worker)?;
        let out = c_arg!(out out)?;
        out.write(w.index() as u32);
        Ok(())
    })
}

/// Queues a copy of `len` bytes at `data` for sending, ordered after everything queued
/// before. `data` is borrowed until return. Errors: NULL (with len > 0), WRONG_THREAD,
/// STALE_HANDLE, CLOSED (the connection is closing). Worker thread only.
#[no_mangle]
pub unsafe extern "C" fn p99_worker_send(
    worker: *mut p99_worker,
    conn: p99_conn,
    data: *const u8,
    len: usize,
) -> p99_status {
    guard(|| -> CResult {
        let w = worker_from(worker)?;
        let bytes = c_arg!(slice data, len)?;
        Ok(w.send(ConnId::from_raw(conn), bytes)?)
    })
}

/// Queues `iovcnt` caller buffers for sending without copying them. The buffers stay the
/// caller's and must stay valid and unchanged until `on_send_done(cookie)` for this
/// connection, which always comes (sent = false if the connection closed first) unless this
/// call fails. `iov` itself is borrowed until return. Errors: NULL `iov` with iovcnt > 0,
/// INVALID_ARGUMENT (iovcnt < 0 or a NULL base with a non-zero length), WRONG_THREAD,
/// STALE_HANDLE, CLOSED. Worker thread only.
#[no_mangle]
pub unsafe extern "C" fn p99_worker_send_iov(
    worker: *mut p99_worker,
    conn: p99_conn,
    iov: *const libc::iovec,
    iovcnt: c_int,
    cookie: u64,
) -> p99_status {
    guard(|| -> CResult {
        let w = worker_from(worker)?;
        if iovcnt < 0 {
            return Err(Failure::invalid("iovcnt is negative"));
        }
        let iovs = c_arg!(slice iov, iovcnt as usize)?;
        if iovs.iter().any(|v| v.iov_base.is_null() && v.iov_len > 0) {
            return Err(Failure::invalid("an iovec has a NULL base and a non-zero length"));
        }
        // SAFETY: the caller keeps the buffers valid until on_send_done (documented above).
        Ok(unsafe { w.send_borrowed(ConnId::from_raw(conn), iovs, cookie) }?)
    })
}

/// Stops `on_data` for `conn` until `p99_worker_resume_recv`; bytes that arrive meanwhile are
/// kept (bounded by what was already in flight) and delivered on resume. Worker thread only.
#[no_mangle]
pub unsafe extern "C" fn p99_worker_pause_recv(
    worker: *mut p99_worker,
    conn: p99_conn,
) -> p99_status {
    guard(|| -> CResult {
        let w = worker_from(worker)?;
        Ok(w.pause_recv(ConnId::from_raw(conn))?)
    })
}

/// Undoes `p99_worker_pause_recv`. Worker thread only.
#[no_mangle]
pub unsafe extern "C" fn p99_worker_resume_recv(
    worker: *mut p99_worker,
    conn: p99_conn,
) -> p99_status {
    guard(|| -> CResult {
        let w = worker_from(worker)?;
        Ok(w.resume_recv(ConnId::from_raw(conn))?)
    })
}

/// Closes `conn`: no more `on_data`, queued output is flushed (at most `close_linger_ms`),
/// then the socket closes and `on_close` runs (later, not inside this call). Closing again is
/// OK. Worker thread only.
#[no_mangle]
pub unsafe extern "C" fn p99_worker_close(worker: *mut p99_worker, conn: p99_conn) -> p99_status {
    guard(|| -> CResult {
        let w = worker_from(worker)?;
        Ok(w.close(ConnId::from_raw(conn))?)
    })
}

/// Stores a pointer with the connection (not dereferenced by libp99). Worker thread only.
#[no_mangle]
pub unsafe extern "C" fn p99_worker_set_conn_user(
    worker: *mut p99_worker,
    conn: p99_conn,
    user: *mut c_void,
) -> p99_status {
    guard(|| -> CResult {
        let w = worker_from(worker)?;
        Ok(w.set_user(ConnId::from_raw(conn), user as usize)?)
    })
}

/// Writes the pointer stored by `p99_worker_set_conn_user` (NULL if none) to `*out`.
/// Worker thread only.
#[no_mangle]
pub unsafe extern "C" fn p99_worker_conn_user(
    worker: *mut p99_worker,
    conn: p99_conn,
    out: *mut *mut c_void,
) -> p99_status {
    guard(|| -> CResult {
        let w = worker_from(worker)?;
        let out = c_arg!(out out)?;
        let u = w.user(ConnId::from_raw(conn))?;
        out.write(u as *mut c_void);
        Ok(())
    })
}

/// Why `conn` is closing: call it in `on_close` (or once the connection is closing). Writes
/// the reason to `*out_reason`; with `detail` non-NULL, also up to `detail_cap - 1` bytes of
/// the explanation (the TLS or socket error; "" when there is none) followed by a NUL, and
/// the full length of the explanation (without the NUL) to `*out_detail_len` when that is
/// non-NULL. A connection still open reports `P99_CLOSE_REASON_LOCAL`. Errors: NULL
/// `out_reason`, NULL `detail` with `detail_cap` > 0, WRONG_THREAD, STALE_HANDLE (after
/// `on_close` returned). Worker thread only.
#[no_mangle]
pub unsafe extern "C" fn p99_worker_conn_close_reason(
    worker: *mut p99_worker,
    conn: p99_conn,
    out_reason: *mut p99_close_reason,
    detail: *mut c_char,
    detail_cap: usize,
    out_detail_len: *mut usize,
) -> p99_status {
    guard(|| -> CResult {
        let w = worker_from(worker)?;
        let out = c_arg!(out out_reason)?;
        let buf = c_arg!(slice_mut detail, detail_cap)?;
        let (reason, text) = w.close_reason(ConnId::from_raw(conn))?;
        if let Some(last) = buf.len().checked_sub(1) {
            let n = text.len().min(last);
            for (d, s) in buf[..n].iter_mut().zip(text.as_bytes()) {
                *d = *s as c_char;
            }
            buf[n] = 0;
        }
        if let Some(len) = c_arg!(opt_out out_detail_len) {
            len.write(text.len());
        }
        out.write(reason.into());
        Ok(())
    })
}

/// Writes the connection's socket fd to `*out`, for getpeername/setsockopt. The engine owns
/// it: do not read, write or close it. Worker thread only.
#[no_mangle]
pub unsafe extern "C" fn p99_worker_conn_fd(
    worker: *mut p99_worker,
    conn: p99_conn,
    out: *mut c_int,
) -> p99_status {
    guard(|| -> CResult {
        let w = worker_from(worker)?;
        let out = c_arg!(out out)?;
        out.write(w.fd(ConnId::from_raw(conn))?);
        Ok(())
    })
}

/// Runs `fn(arg, worker)` on this worker after `delay_ms`; writes the timer id to `*out_id`
/// (may be NULL if not needed). Worker thread only.
#[no_mangle]
pub unsafe extern "C" fn p99_worker_add_timer(
    worker: *mut p99_worker,
    delay_ms: u64,
    func: p99_task_fn,
    arg: *mut c_void,
    out_id: *mut u64,
) -> p99_status {
    guard(|| -> CResult {
        let w = worker_from(worker)?;
        let f = func.ok_or_else(|| super::boundary::null_arg("fn"))?;
        let t = task(f, SendPtr(arg));
        let id = w.add_timer(Duration::from_millis(delay_ms), t);
        if let Some(out) = c_arg!(opt_out out_id) {
            out.write(id.0);
        }
        Ok(())
    })
}

/// Cancels a timer; `P99_STATUS_NOT_FOUND` if it already ran or was cancelled. Worker thread
/// only.
#[no_mangle]
pub unsafe extern "C" fn p99_worker_cancel_timer(
    worker: *mut p99_worker,
    timer_id: u64,
) -> p99_status {
    guard(|| -> CResult {
        let w = worker_from(worker)?;
        if w.cancel_timer(TimerId(timer_id)) {
            Ok(())
        } else {
            Err(p99_status::NotFound.into())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_calls_off_thread_are_refused_without_dereferencing() {
        // A bogus non-NULL pointer: rejected by address, never read.
        let bogus = 0x10 as *mut p99_worker;
        // SAFETY: the functions check the worker pointer by address before any use.
        unsafe {
            assert_eq!(p99_worker_send(bogus, 1, b"x".as_ptr(), 1), p99_status::WrongThread);
            assert_eq!(p99_worker_close(std::ptr::null_mut(), 1), p99_status::NullParameter);
        }
    }

    #[test]
    fn defaults_need_struct_size_and_keep_it() {
        let mut c = p99_engine_config {
            struct_size: struct_size::<p99_engine_config>(),
            port: 7,
            ..Default::default()
        };
        c.backlog = -5;
        // SAFETY: a valid, writable struct with struct_size set.
        assert_eq!(unsafe { p99_engine_config_defaults(&mut c) }, p99_status::Ok);
        assert_eq!(c.struct_size, struct_size::<p99_engine_config>());
        assert_eq!(c.backlog, engine::Config::default().backlog);
        c.struct_size = 3;
        // SAFETY: as above; the size is refused before anything is written.
        assert_eq!(unsafe { p99_engine_config_defaults(&mut c) }, p99_status::InvalidArgument);
        assert_eq!(c.struct_size, 3);
    }
}
