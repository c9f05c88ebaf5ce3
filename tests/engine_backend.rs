//! Backend choice, each case in a child process (the choice is made once per process):
//! `P99_BACKEND=epoll` forces epoll, and io_uring refused by a seccomp filter (as Docker's
//! default profile does) makes the engine fall back to epoll and say so on stderr; and the
//! probe leaves the calling thread's blocking calls alone.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use p99::engine::{Config, ConnId, Engine, Handler, Worker};

struct Echo;

impl Handler for Echo {
    fn on_data(&mut self, w: &mut Worker, conn: ConnId, data: &[u8]) {
        w.send(conn, data).unwrap();
    }
}

/// Installs a seccomp filter on every thread of this process that fails io_uring_setup,
/// io_uring_enter and io_uring_register with EPERM, like Docker's default profile.
fn refuse_io_uring() {
    let nrs = [libc::SYS_io_uring_setup, libc::SYS_io_uring_enter, libc::SYS_io_uring_register];
    let mut prog: Vec<libc::sock_filter> = Vec::new();
    let stmt = |code: u16, k: u32| libc::sock_filter { code, jt: 0, jf: 0, k };
    // A = syscall number (offset 0 of seccomp_data).
    prog.push(stmt((libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16, 0));
    for (i, nr) in nrs.iter().enumerate() {
        // If A == nr jump to the EPERM return, which follows the remaining checks.
        let to_deny = (nrs.len() - i - 1) as u8 + 1;
        prog.push(libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: to_deny,
            jf: 0,
            k: *nr as u32,
        });
    }
    prog.push(stmt((libc::BPF_RET | libc::BPF_K) as u16, libc::SECCOMP_RET_ALLOW));
    prog.push(stmt(
        (libc::BPF_RET | libc::BPF_K) as u16,
        libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
    ));
    let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_mut_ptr() };
    // SAFETY: no_new_privs then a seccomp filter program that lives through the call.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        let r = libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_TSYNC,
            &fprog as *const libc::sock_fprog,
        );
        assert_eq!(r, 0, "seccomp: {}", std::io::Error::last_os_error());
    }
}

/// The child side: starts an engine with the process-wide backend choice, checks it serves,
/// and prints what it chose. Only meaningful when started by the tests below.
#[test]
#[ignore = "child process of the backend tests"]
fn child_report_backend() {
    if std::env::var("P99_TEST_SECCOMP").is_ok() {
        refuse_io_uring();
    }
    let e = Engine::start(Config { workers: 1, pin_workers: false, ..Config::default() }, |_| Echo)
        .expect("start");
    let mut s = TcpStream::connect(("127.0.0.1", e.port())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"hello").unwrap();
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    println!("CHILD backend={} reason={}", e.backend().name(), p99::engine::probe::reason());
}

fn run_child(envs: &[(&str, &str)]) -> (String, String) {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args(["child_report_backend", "--exact", "--ignored", "--nocapture", "--test-threads=1"]);
    cmd.env_remove("P99_BACKEND");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("spawn child");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    (stdout, stderr)
}

#[test]
fn p99_backend_epoll_forces_epoll() {
    let (out, _) = run_child(&[("P99_BACKEND", "epoll")]);
    assert!(out.contains("CHILD backend=epoll reason=forced by P99_BACKEND=epoll"), "{out}");
}

#[test]
fn io_uring_refused_by_seccomp_falls_back_to_epoll_and_says_so() {
    let (out, err) = run_child(&[("P99_TEST_SECCOMP", "1")]);
    assert!(out.contains("CHILD backend=epoll"), "{out}");
    assert!(out.contains("io_uring unavailable"), "{out}");
    assert!(
        err.contains("p99: io_uring unavailable")
            && err.contains("falling back to the epoll backend"),
        "{err}"
    );
    assert!(err.contains("Operation not permitted"), "{err}");
}

#[test]
fn p99_backend_uring_when_refused_fails_clearly() {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args(["child_report_backend", "--exact", "--ignored", "--nocapture"])
        .env("P99_BACKEND", "uring")
        .env("P99_TEST_SECCOMP", "1")
        .output()
        .unwrap();
    let all =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "forced io_uring under seccomp must not start: {all}");
    assert!(all.contains("P99_BACKEND=uring but io_uring is unusable"), "{all}");
}

#[test]
fn probed_backend_serves() {
    let (out, _) = run_child(&[]);
    assert!(out.contains("CHILD backend="), "{out}");
}

/// The child side of the test below: probes (as the first engine start or
/// `p99_engine_backend` does), then at once blocks in a read with a receive timeout on a
/// socket nobody writes to, and prints how the read ended. Only meaningful when started by it.
#[test]
#[ignore = "child process of the backend tests"]
fn child_probe_then_blocking_read() {
    let backend = p99::engine::probe::backend().expect("backend");
    let (a, _b) = UnixStream::pair().unwrap();
    a.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = [0u8; 1];
    // One read(2), no retry: Read::read does not restart after EINTR.
    let how = match (&a).read(&mut buf) {
        Ok(n) => format!("read {n} bytes"),
        Err(e) => format!("{:?}", e.kind()),
    };
    println!("CHILD backend={} read={how}", backend.name());
}

/// Probing io_uring submits on a ring and closes it; the kernel's later teardown of that ring
/// interrupts every thread that submitted on it. Probing on the caller's thread made the
/// caller's next blocking socket call with a timeout fail with EINTR (a C test's read of its
/// echo came back empty): the read here must end by its timeout, not be interrupted.
#[test]
fn probing_does_not_interrupt_the_callers_blocking_calls() {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args([
            "child_probe_then_blocking_read",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env_remove("P99_BACKEND")
        .output()
        .expect("spawn child");
    let all =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{all}");
    assert!(all.contains("CHILD backend="), "{all}");
    assert!(
        all.contains("read=WouldBlock") || all.contains("read=TimedOut"),
        "the read did not end by its timeout:\n{all}"
    );
}
