//! Helpers the engine's integration tests share: one-at-a-time running (they count the
//! process's fds), the backends to run on, and polling for an outcome.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use p99::engine::Backend;

/// The tests count fds of the whole process, so they run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// epoll always, io_uring when this kernel lets the process use it.
pub fn backends() -> Vec<Backend> {
    let mut v = vec![Backend::Epoll];
    match p99::engine::probe::uring_usable() {
        Ok(_) => v.push(Backend::Uring),
        Err(why) => eprintln!("io_uring unusable here ({why}); testing epoll only"),
    }
    v
}

/// Polls `f` until it holds; fails the test after 10 s.
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Open fds of this process.
pub fn count_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}
