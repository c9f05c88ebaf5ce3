//! Shared scaffolding of the AF_XDP tests: a private network namespace per test thread with a
//! veth pair of several queues, and AF_XDP sender/receiver helpers.
//!
//! Each test body runs on its own thread that `unshare(CLONE_NEWNET)`s: network namespaces are
//! per thread, so tests stay parallel-safe, and the namespace (with its veth pair) disappears
//! by itself when the thread ends, even on panic. `ip` children inherit the thread's namespace.

#![allow(dead_code)]

use std::process::Command;
use std::time::{Duration, Instant};

use p99::xdp::packet;
use p99::xdp::{AttachMode, Program, ProgramKind, Socket, SocketConfig, Umem, UmemConfig, XdpDesc};

pub const MAC_A: [u8; 6] = [0x02, 0x99, 0, 0, 0, 0x0a];
pub const MAC_B: [u8; 6] = [0x02, 0x99, 0, 0, 0, 0x0b];
pub const IP_A: [u8; 4] = [10, 99, 0, 1];
pub const IP_B: [u8; 4] = [10, 99, 0, 2];
pub const QUEUES: u32 = 4;

pub struct Net {
    pub a: u32,
    pub b: u32,
}

/// Prints a skip notice straight to stderr (not through the test harness's capture, so it
/// shows in the output of a passing run).
pub fn skip_notice(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
}

/// Whether the effective capability set holds CAP_NET_ADMIN (12) and CAP_SYS_ADMIN (21), read
/// from /proc/self/status.
fn has_net_and_sys_admin() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .expect("CapEff line in /proc/self/status")
        .trim();
    let caps = u64::from_str_radix(hex, 16).expect("CapEff is hex");
    caps & (1 << 12) != 0 && caps & (1 << 21) != 0
}

/// Why namespace tests cannot run here, if they cannot: only a missing privilege is a reason
/// to skip. With the privileges, anything else that stops the tests (no `ip` tool, no network
/// namespace) fails them.
pub fn unavailable() -> Option<String> {
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (AF_XDP, bpf(2) and network namespaces need CAP_NET_ADMIN/CAP_SYS_ADMIN/CAP_BPF)".into());
    }
    if !has_net_and_sys_admin() {
        return Some("root without CAP_NET_ADMIN and CAP_SYS_ADMIN (network namespaces and AF_XDP need them)".into());
    }
    None
}

pub fn ip(args: &str) {
    let out = Command::new("ip").args(args.split_whitespace()).output().expect("run ip");
    assert!(out.status.success(), "ip {args}: {}", String::from_utf8_lossy(&out.stderr));
}

pub fn ip_out(args: &str) -> String {
    let out = Command::new("ip").args(args.split_whitespace()).output().expect("run ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `f` on a fresh thread inside a new network namespace holding veth pair `va`/`vb`
/// (QUEUES queues each, static MAC addresses, IPv6 off so no stray traffic). Returns None
/// (after printing why) when the process lacks the privileges; with them, a namespace or veth
/// that cannot be made panics (fails the test).
pub fn with_net<R: Send + 'static>(
    name: &str,
    f: impl FnOnce(&Net) -> R + Send + 'static,
) -> Option<R> {
    if let Some(why) = unavailable() {
        skip_notice(name, &why);
        return None;
    }
    let h = std::thread::spawn(move || {
        // SAFETY: unshare affects only this thread's network namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            panic!(
                "unshare(CLONE_NEWNET) failed although privileged: {}",
                std::io::Error::last_os_error()
            );
        }
        for p in [
            "/proc/sys/net/ipv6/conf/default/disable_ipv6",
            "/proc/sys/net/ipv6/conf/all/disable_ipv6",
        ] {
            let _ = std::fs::write(p, "1");
        }
        ip(&format!(
            "link add va numtxqueues {QUEUES} numrxqueues {QUEUES} address {} type veth peer name vb numtxqueues {QUEUES} numrxqueues {QUEUES} address {}",
            mac(MAC_A),
            mac(MAC_B)
        ));
        ip("link set lo up");
        ip("link set va up");
        ip("link set vb up");
        let net = Net {
            a: p99::xdp::sys::ifindex("va").unwrap(),
            b: p99::xdp::sys::ifindex("vb").unwrap(),
        };
        f(&net)
    });
    match h.join() {
        Ok(r) => Some(r),
        Err(p) => std::panic::resume_unwind(p),
    }
}

pub fn mac(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

pub fn small_umem(frame_size: u32, frames: u32) -> UmemConfig {
    UmemConfig { frame_size, frame_count: frames, headroom: 0, fill_size: 1024, comp_size: 1024 }
}

pub fn sock_cfg() -> SocketConfig {
    SocketConfig { rx_size: 1024, tx_size: 1024, ..SocketConfig::default() }
}

pub struct Xsk {
    pub umem: Umem,
    pub sock: Socket,
}

pub fn xsk(ifindex: u32, queue: u32, ucfg: UmemConfig) -> Xsk {
    let umem = Umem::new(ucfg).expect("umem");
    let sock = Socket::bind(&umem, ifindex, queue, sock_cfg()).expect("bind");
    Xsk { umem, sock }
}

/// A receiver on `vb` queue `queue` with a redirect program in `mode`.
pub fn receiver(net: &Net, queue: u32, mode: AttachMode, ucfg: UmemConfig) -> (Xsk, Program) {
    let mut prog =
        Program::load(ProgramKind::RedirectAll, QUEUES, p99::xdp::prog::XDP_PASS).expect("load");
    prog.attach(net.b, mode).expect("attach");
    let x = xsk(net.b, queue, ucfg);
    prog.register(queue, x.sock.fd()).expect("register");
    x.umem.fill(u32::MAX);
    (x, prog)
}

/// The sender TX queue whose packets reach receiver queue `rxq` of the peer. Native veth XDP
/// keeps the queue number; generic XDP sees the skb's recorded queue, one lower.
pub fn tx_queue_for(mode: AttachMode, rxq: u32) -> u32 {
    match mode {
        AttachMode::Generic => rxq + 1,
        _ => rxq,
    }
}

/// Builds packet `seq` (UDP A->B with a payload that encodes `seq`) of `payload_len` bytes.
pub fn payload(seq: u32, len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len.max(8)];
    p[..4].copy_from_slice(b"PING");
    p[4..8].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in p.iter_mut().enumerate().skip(8) {
        *b = (seq as usize).wrapping_mul(31).wrapping_add(i) as u8;
    }
    p
}

/// Sends packets `seqs` from `tx`, waiting for ring space; returns when all are queued.
pub fn send_seq(tx: &mut Xsk, seqs: std::ops::Range<u32>, payload_len: usize, dport: u16) {
    let mut next = seqs.start;
    let deadline = Instant::now() + Duration::from_secs(20);
    while next < seqs.end {
        assert!(Instant::now() < deadline, "send stalled at {next}");
        let want = ((seqs.end - next) as usize).min(64);
        let mut descs = vec![XdpDesc::default(); want];
        tx.umem.reap();
        let n = tx.umem.alloc(&mut descs) as usize;
        if n == 0 {
            tx.sock.kick().unwrap();
            std::thread::yield_now();
            continue;
        }
        descs.truncate(n);
        for d in descs.iter_mut() {
            let p = payload(next, payload_len);
            let buf = tx.umem.data(d.addr, tx.umem.config().frame_size).unwrap();
            d.len =
                packet::build_udp4(buf, MAC_A, MAC_B, IP_A, IP_B, 40000, dport, &p).unwrap() as u32;
            next += 1;
        }
        let mut off = 0;
        while off < descs.len() {
            let k = tx.sock.send(&descs[off..]).unwrap() as usize;
            off += k;
            if k == 0 {
                std::thread::yield_now();
            }
        }
    }
    while tx.sock.tx_pending() > 0 {
        assert!(Instant::now() < deadline, "tx ring did not drain");
        tx.sock.kick().unwrap();
    }
}

/// Receives until `n` packets arrived or `timeout` passed; checks each payload with `check`
/// and gives the frames back to FILL. Returns the count received.
pub fn recv_n(rx: &mut Xsk, n: usize, timeout: Duration, mut check: impl FnMut(&[u8])) -> usize {
    let deadline = Instant::now() + timeout;
    let mut got = 0;
    let mut descs = vec![XdpDesc::default(); 64];
    let mut first = true;
    while got < n && (first || Instant::now() < deadline) {
        first = false;
        let k = rx.sock.recv(&mut descs) as usize;
        if k == 0 {
            rx.sock.poll_rx(10).unwrap();
            continue;
        }
        for d in &descs[..k] {
            let buf = rx.umem.data(d.addr, d.len).unwrap();
            check(buf);
        }
        rx.umem.release(&descs[..k]).unwrap();
        rx.umem.fill(u32::MAX);
        got += k;
    }
    got
}

/// Sequence number of a test packet, checking its payload pattern.
pub fn seq_of(frame: &[u8], payload_len: usize) -> u32 {
    let p = packet::parse_udp4(frame).expect("udp frame");
    let pl = &frame[p.payload_off..p.payload_off + p.payload_len];
    assert_eq!(pl.len(), payload_len.max(8));
    let seq = u32::from_be_bytes(pl[4..8].try_into().unwrap());
    assert_eq!(pl, &payload(seq, payload_len)[..], "payload of packet {seq} corrupted");
    seq
}

/// Attaches (or with `prog_fd == -1` detaches) a program the legacy way, over rtnetlink
/// (RTM_SETLINK + IFLA_XDP), as `ip link set dev X xdp...` and libxdp do. Such a program stays
/// attached after its owner exits; tests use it to play "someone else's program".
pub fn netlink_set_xdp(ifindex: u32, prog_fd: i32, flags: u32) -> std::io::Result<()> {
    const RTM_SETLINK: u16 = 19;
    const IFLA_XDP: u16 = 43 | 0x8000; // NLA_F_NESTED
    const IFLA_XDP_FD: u16 = 1;
    const IFLA_XDP_FLAGS: u16 = 3;
    let mut msg: Vec<u8> = Vec::new();
    // nlmsghdr (length patched below)
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&RTM_SETLINK.to_ne_bytes());
    msg.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid
                                                // ifinfomsg
    msg.extend_from_slice(&[libc::AF_UNSPEC as u8, 0]);
    msg.extend_from_slice(&0u16.to_ne_bytes());
    msg.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    // IFLA_XDP { IFLA_XDP_FD, IFLA_XDP_FLAGS }
    msg.extend_from_slice(&(4u16 + 8 + 8).to_ne_bytes());
    msg.extend_from_slice(&IFLA_XDP.to_ne_bytes());
    msg.extend_from_slice(&8u16.to_ne_bytes());
    msg.extend_from_slice(&IFLA_XDP_FD.to_ne_bytes());
    msg.extend_from_slice(&prog_fd.to_ne_bytes());
    msg.extend_from_slice(&8u16.to_ne_bytes());
    msg.extend_from_slice(&IFLA_XDP_FLAGS.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    let len = msg.len() as u32;
    msg[0..4].copy_from_slice(&len.to_ne_bytes());
    // SAFETY: plain socket/send/recv/close on a netlink socket we own, with valid buffers.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let r = libc::send(fd, msg.as_ptr().cast(), msg.len(), 0);
        if r < 0 {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        let mut buf = [0u8; 4096];
        let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
        libc::close(fd);
        if n < 20 {
            return Err(std::io::Error::other("short netlink reply"));
        }
        let ty = u16::from_ne_bytes([buf[4], buf[5]]);
        if ty as i32 == libc::NLMSG_ERROR {
            let err = i32::from_ne_bytes(buf[16..20].try_into().unwrap());
            if err != 0 {
                return Err(std::io::Error::from_raw_os_error(-err));
            }
        }
    }
    Ok(())
}
