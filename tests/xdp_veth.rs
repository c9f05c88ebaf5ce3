//! AF_XDP on a veth pair, copy mode, in native and generic XDP mode (the themes of the
//! kernel's xskxceiver self-test). Each test creates its own network namespace and veth pair
//! (see xdp_util), which vanish with the test thread.

mod xdp_util;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use p99::xdp::umem::FrameState;
use p99::xdp::{
    prog, AttachMode, Error, Program, ProgramKind, Socket, SocketConfig, Umem, XdpDesc,
};
use xdp_util::*;

const MODES: [AttachMode; 2] = [AttachMode::Native, AttachMode::Generic];

/// Every frame is free or in FILL: nothing held, nothing stuck in TX.
fn assert_no_leak(x: &Xsk) {
    x.umem.reap();
    let (free, fill, user, tx) = x.umem.frame_counts();
    assert_eq!(user, 0, "frames left held by the user");
    assert_eq!(tx, 0, "frames left in TX");
    assert_eq!(free + fill, x.umem.config().frame_count);
}

/// Sends `count` packets A->B interleaved with receiving, and checks they all arrive in order
/// with intact payloads.
fn transfer(tx: &mut Xsk, rx: &mut Xsk, count: u32, plen: usize) {
    let mut expect = 0u32;
    let mut sent = 0u32;
    let deadline = Instant::now() + Duration::from_secs(30);
    while expect < count {
        assert!(Instant::now() < deadline, "stalled: sent {sent}, received {expect}");
        if sent < count {
            let end = (sent + 64).min(count);
            send_seq(tx, sent..end, plen, 7777);
            sent = end;
        }
        recv_n(
            rx,
            (sent - expect) as usize,
            Duration::from_millis(if sent == count { 2000 } else { 0 }),
            |f| {
                let s = seq_of(f, plen);
                assert_eq!(s, expect, "out of order");
                expect += 1;
            },
        );
        if sent == count && expect < count {
            panic!(
                "lost packets: {} of {count} arrived; stats {:?}",
                expect,
                rx.sock.stats().unwrap()
            );
        }
    }
    let st = rx.sock.stats().unwrap();
    assert_eq!(st.rx_packets, count as u64);
    let ts = tx.sock.stats().unwrap();
    assert_eq!(ts.tx_queued, count as u64);
    assert_eq!(ts.tx_completed, count as u64);
    assert_no_leak(tx);
    assert_no_leak(rx);
}

#[test]
fn thousands_in_order_with_payload_checks() {
    with_net("thousands_in_order_with_payload_checks", |net| {
        for mode in MODES {
            let (mut rx, _prog) = receiver(net, 1, mode, small_umem(4096, 2048));
            let mut tx = xsk(net.a, tx_queue_for(mode, 1), small_umem(4096, 512));
            transfer(&mut tx, &mut rx, 5000, 64);
        }
    });
}

#[test]
fn single_packet() {
    with_net("single_packet", |net| {
        for mode in MODES {
            let (mut rx, _prog) = receiver(net, 0, mode, small_umem(4096, 64));
            let mut tx = xsk(net.a, tx_queue_for(mode, 0), small_umem(4096, 64));
            transfer(&mut tx, &mut rx, 1, 18);
        }
    });
}

#[test]
fn frame_sizes_2k_and_4k_with_large_packets() {
    with_net("frame_sizes_2k_and_4k_with_large_packets", |net| {
        ip("link set va mtu 3500");
        ip("link set vb mtu 3500");
        for mode in MODES {
            // Largest payloads each frame size carries: frame - 256 (kernel headroom) - 42.
            for (fs, plen) in [(2048u32, 2048 - 256 - 42), (4096, 3500 - 28)] {
                let (mut rx, _prog) = receiver(net, 1, mode, small_umem(fs, 2048));
                let mut tx = xsk(net.a, tx_queue_for(mode, 1), small_umem(fs, 256));
                transfer(&mut tx, &mut rx, 300, plen as usize);
            }
        }
    });
}

#[test]
fn headroom_offsets_received_data() {
    with_net("headroom_offsets_received_data", |net| {
        for mode in MODES {
            let mut cfg = small_umem(4096, 512);
            cfg.headroom = 128;
            let (mut rx, _prog) = receiver(net, 1, mode, cfg);
            let mut tx = xsk(net.a, tx_queue_for(mode, 1), small_umem(4096, 64));
            send_seq(&mut tx, 0..20, 100, 7777);
            let mut descs = vec![XdpDesc::default(); 32];
            let deadline = Instant::now() + Duration::from_secs(2);
            let mut got = 0;
            while got < 20 && Instant::now() < deadline {
                rx.sock.poll_rx(10).unwrap();
                let n = rx.sock.recv(&mut descs) as usize;
                for d in &descs[..n] {
                    assert_eq!(d.addr % 4096, 256 + 128, "data must start after 256 + 128 bytes");
                    assert_eq!(seq_of(rx.umem.data(d.addr, d.len).unwrap(), 100), got);
                    got += 1;
                }
                rx.umem.release(&descs[..n]).unwrap();
            }
            assert_eq!(got, 20);
            assert_no_leak(&rx);
        }
    });
}

#[test]
fn poll_with_and_without_traffic() {
    with_net("poll_with_and_without_traffic", |net| {
        for mode in MODES {
            let (mut rx, _prog) = receiver(net, 1, mode, small_umem(4096, 256));
            let t = Instant::now();
            assert!(!rx.sock.poll_rx(150).unwrap(), "no traffic: poll must time out");
            assert!(t.elapsed() >= Duration::from_millis(140));
            let mut tx = xsk(net.a, tx_queue_for(mode, 1), small_umem(4096, 64));
            send_seq(&mut tx, 0..1, 32, 7777);
            assert!(rx.sock.poll_rx(2000).unwrap(), "traffic: poll must report RX");
            assert_eq!(
                recv_n(&mut rx, 1, Duration::from_secs(1), |f| assert_eq!(seq_of(f, 32), 0)),
                1
            );
            // The raw fd works with the caller's own poll loop too.
            let mut p = libc::pollfd { fd: rx.sock.fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            assert_eq!(unsafe { libc::poll(&mut p, 1, 50) }, 0);
        }
    });
}

#[test]
fn invalid_tx_descriptors_rejected_counted_no_leak() {
    with_net("invalid_tx_descriptors_rejected_counted_no_leak", |net| {
        for mode in MODES {
            let (mut rx, _prog) = receiver(net, 1, mode, small_umem(2048, 256));
            let mut tx = xsk(net.a, tx_queue_for(mode, 1), small_umem(2048, 64));
            let mut held = vec![XdpDesc::default(); 2];
            assert_eq!(tx.umem.alloc(&mut held), 2);
            let good = XdpDesc { addr: held[0].addr, len: 60, options: 0 };
            let bad = [
                XdpDesc { addr: 64 * 2048, len: 60, options: 0 }, // outside the umem
                XdpDesc { addr: held[1].addr, len: 0, options: 0 }, // empty
                XdpDesc { addr: held[1].addr + 2000, len: 60, options: 0 }, // crosses the frame end
                XdpDesc { addr: held[1].addr, len: 60, options: 1 }, // unsupported options
                XdpDesc { addr: 10 * 2048, len: 60, options: 0 }, // frame not held (free)
            ];
            let mut refused = 0;
            for b in bad {
                assert!(
                    matches!(tx.sock.send(&[good, b]), Err(Error::BadFrame(_))),
                    "{b:?} accepted"
                );
                refused += 1;
            }
            // Duplicate within a batch.
            assert!(matches!(tx.sock.send(&[good, good]), Err(Error::BadFrame(_))));
            refused += 1;
            // Nothing moved: both frames still held, none queued.
            assert_eq!(tx.umem.frame_counts().2, 2);
            assert_eq!(tx.umem.frame_state(good.addr), Some(FrameState::User));
            let st = tx.sock.stats().unwrap();
            assert_eq!(st.rejected_descs, refused);
            assert_eq!(st.tx_queued, 0);
            // Sending a frame the kernel owns (in FILL) is refused too.
            assert!(matches!(
                rx.sock.send(&[XdpDesc { addr: 0, len: 60, options: 0 }]),
                Err(Error::BadFrame(_))
            ));
            // The kernel's own check: a raw descriptor longer than the frame is consumed and
            // counted as invalid, never completed.
            tx.sock
                .push_raw_tx_for_test(XdpDesc { addr: held[1].addr, len: 4000, options: 0 })
                .unwrap();
            assert_eq!(tx.sock.stats().unwrap().kernel.tx_invalid_descs, 1);
            tx.umem.release(&held).unwrap();
            assert_no_leak(&tx);
            // Releasing twice is refused and changes nothing.
            assert!(tx.umem.release(&held[..1]).is_err());
            assert_no_leak(&tx);
        }
    });
}

#[test]
fn statistics_counters_provoked() {
    with_net("statistics_counters_provoked", |net| {
        ip("link set va mtu 3000");
        ip("link set vb mtu 3000");
        for mode in MODES {
            // FILL ring empty: a receiver that never fills.
            {
                let mut prog =
                    Program::load(ProgramKind::RedirectAll, QUEUES, prog::XDP_PASS).unwrap();
                prog.attach(net.b, mode).unwrap();
                let mut rx = xsk(net.b, 1, small_umem(4096, 64));
                prog.register(1, rx.sock.fd()).unwrap();
                let mut tx = xsk(net.a, tx_queue_for(mode, 1), small_umem(4096, 64));
                send_seq(&mut tx, 0..10, 32, 7777);
                std::thread::sleep(Duration::from_millis(50));
                let st = rx.sock.stats().unwrap();
                assert!(st.kernel.rx_fill_ring_empty_descs >= 10, "{st:?}");
                assert_eq!(recv_n(&mut rx, 1, Duration::from_millis(50), |_| {}), 0);
            }
            // RX ring full: a receiver that fills but never reads (rx ring 1024 entries).
            {
                let mut cfg = small_umem(4096, 2048);
                cfg.fill_size = 2048; // more FILL entries than RX ring slots (1024)
                let (mut rx, _p) = receiver(net, 1, mode, cfg);
                let mut tx = xsk(net.a, tx_queue_for(mode, 1), small_umem(4096, 256));
                send_seq(&mut tx, 0..1200, 32, 7777);
                std::thread::sleep(Duration::from_millis(50));
                let st = rx.sock.stats().unwrap();
                assert!(st.kernel.rx_ring_full >= 100, "{st:?}");
                // What did arrive is intact and in order.
                let mut next = 0;
                let got = recv_n(&mut rx, 1024, Duration::from_millis(500), |f| {
                    assert_eq!(seq_of(f, 32), next);
                    next += 1;
                });
                assert_eq!(got as u64 + st.kernel.rx_ring_full, 1200);
                assert_no_leak(&rx);
            }
            // RX dropped: a packet longer than a 2048-byte frame can hold.
            {
                let (mut rx, _p) = receiver(net, 1, mode, small_umem(2048, 64));
                let mut tx = xsk(net.a, tx_queue_for(mode, 1), small_umem(4096, 64));
                send_seq(&mut tx, 0..3, 2500, 7777);
                std::thread::sleep(Duration::from_millis(50));
                let st = rx.sock.stats().unwrap();
                assert!(st.kernel.rx_dropped >= 3, "{st:?}");
                assert_eq!(recv_n(&mut rx, 1, Duration::from_millis(50), |_| {}), 0);
            }
        }
    });
}

#[test]
fn teardown_and_recreate_ten_times() {
    with_net("teardown_and_recreate_ten_times", |net| {
        for mode in MODES {
            for round in 0..10 {
                let (mut rx, prog) = receiver(net, 1, mode, small_umem(4096, 128));
                let mut tx = xsk(net.a, tx_queue_for(mode, 1), small_umem(4096, 64));
                send_seq(&mut tx, round..round + 5, 40, 7777);
                let mut n = round;
                assert_eq!(
                    recv_n(&mut rx, 5, Duration::from_secs(2), |f| {
                        assert_eq!(seq_of(f, 40), n);
                        n += 1
                    }),
                    5,
                    "round {round}"
                );
                drop((rx, tx, prog));
            }
            assert!(!ip_out("link show dev vb").contains("xdp"), "program left attached");
        }
    });
}

#[test]
fn bidirectional_on_one_socket() {
    with_net("bidirectional_on_one_socket", |net| {
        for mode in MODES {
            // Queue 0 on both sides: in generic mode veth maps TX queue 0 to RX queue 0.
            let (mut b, _pb) = receiver(net, 0, mode, small_umem(4096, 1024));
            let mut pa = Program::load(ProgramKind::RedirectAll, QUEUES, prog::XDP_PASS).unwrap();
            pa.attach(net.a, mode).unwrap();
            let mut a = xsk(net.a, 0, small_umem(4096, 1024));
            pa.register(0, a.sock.fd()).unwrap();
            a.umem.fill(512);
            let total = 2000u32;
            let (mut sent, mut echoed, mut back) = (0u32, 0u32, 0u32);
            let mut descs = vec![XdpDesc::default(); 64];
            let deadline = Instant::now() + Duration::from_secs(20);
            while back < total {
                assert!(
                    Instant::now() < deadline,
                    "stalled: sent {sent} echoed {echoed} back {back}"
                );
                if sent < total && sent - back < 256 {
                    let end = (sent + 32).min(total);
                    send_seq(&mut a, sent..end, 50, 7777);
                    sent = end;
                }
                // B echoes every packet on the same socket it received it on.
                let n = b.sock.recv(&mut descs) as usize;
                for d in &mut descs[..n] {
                    let f = b.umem.data(d.addr, d.len).unwrap();
                    assert_eq!(seq_of(f, 50), echoed);
                    d.len = p99::xdp::packet::udp_ping_reply(f, 7777).unwrap() as u32;
                    echoed += 1;
                }
                let mut off = 0;
                while off < n {
                    off += b.sock.send(&descs[off..n]).unwrap() as usize;
                }
                b.umem.reap();
                b.umem.fill(u32::MAX);
                let n = a.sock.recv(&mut descs) as usize;
                for d in &descs[..n] {
                    let f = a.umem.data(d.addr, d.len).unwrap();
                    let p = p99::xdp::packet::parse_udp4(f).unwrap();
                    assert_eq!(&f[p.payload_off..p.payload_off + 4], b"PONG");
                    assert_eq!(
                        u32::from_be_bytes(
                            f[p.payload_off + 4..p.payload_off + 8].try_into().unwrap()
                        ),
                        back
                    );
                    back += 1;
                }
                a.umem.release(&descs[..n]).unwrap();
                a.umem.fill(512u32.saturating_sub(a.umem.frame_counts().1));
            }
            let sb = b.sock.stats().unwrap();
            assert_eq!((sb.rx_packets, sb.tx_queued), (total as u64, total as u64));
            assert_no_leak(&a);
            assert_no_leak(&b);
        }
    });
}

#[test]
fn several_queues() {
    with_net("several_queues", |net| {
        for mode in MODES {
            // Generic mode reaches RX queue q from TX queue q + 1, so the top queue is not
            // reachable from the peer there.
            let queues: Vec<u32> = match mode {
                AttachMode::Generic => (0..QUEUES - 1).collect(),
                _ => (0..QUEUES).collect(),
            };
            let mut prog = Program::load(ProgramKind::RedirectAll, QUEUES, prog::XDP_PASS).unwrap();
            prog.attach(net.b, mode).unwrap();
            let mut rxs: Vec<Xsk> = queues
                .iter()
                .map(|&q| {
                    let x = xsk(net.b, q, small_umem(4096, 512));
                    prog.register(q, x.sock.fd()).unwrap();
                    x.umem.fill(u32::MAX);
                    x
                })
                .collect();
            let mut txs: Vec<Xsk> = queues
                .iter()
                .map(|&q| xsk(net.a, tx_queue_for(mode, q), small_umem(4096, 128)))
                .collect();
            for (i, tx) in txs.iter_mut().enumerate() {
                send_seq(tx, (i as u32) * 1000..(i as u32) * 1000 + 100, 40, 7777);
            }
            for (i, rx) in rxs.iter_mut().enumerate() {
                let mut next = i as u32 * 1000;
                let got = recv_n(rx, 100, Duration::from_secs(2), |f| {
                    assert_eq!(seq_of(f, 40), next, "queue {i} got another queue's packet");
                    next += 1;
                });
                assert_eq!(got, 100, "queue {i}");
                assert_no_leak(rx);
            }
        }
    });
}

#[test]
fn bind_errors_missing_queue_double_bind_zero_copy() {
    with_net("bind_errors_missing_queue_double_bind_zero_copy", |net| {
        let umem = Umem::new(small_umem(4096, 64)).unwrap();
        let r = Socket::bind(&umem, net.b, 17, sock_cfg());
        assert!(matches!(r, Err(Error::NoQueue { queue: 17, .. })), "{:?}", r.err());
        // The umem is still usable after a refused bind.
        let s = Socket::bind(&umem, net.b, 2, sock_cfg()).unwrap();
        assert!(!s.is_zero_copy());
        // A umem backs one socket.
        assert!(matches!(Socket::bind(&umem, net.b, 3, sock_cfg()), Err(Error::State(_))));
        // Another socket on the same queue: busy (after the bounded retry).
        let other = Umem::new(small_umem(4096, 64)).unwrap();
        let cfg = SocketConfig { bind_retry_ms: 50, ..sock_cfg() };
        let r = Socket::bind(&other, net.b, 2, cfg);
        assert!(matches!(r, Err(Error::Busy { .. })), "{:?}", r.err());
        // Zero-copy is not available on veth: a clean Unsupported.
        let zc = Umem::new(small_umem(4096, 64)).unwrap();
        let r = Socket::bind(
            &zc,
            net.b,
            1,
            SocketConfig { mode: p99::xdp::BindMode::ZeroCopy, ..sock_cfg() },
        );
        assert!(matches!(r, Err(Error::Unsupported { .. })), "{:?}", r.err());
        // Auto falls back to copy.
        let s2 = Socket::bind(
            &zc,
            net.b,
            1,
            SocketConfig { mode: p99::xdp::BindMode::Auto, ..sock_cfg() },
        )
        .unwrap();
        assert!(!s2.is_zero_copy());
        drop(s);
    });
}

#[test]
fn attach_conflicts_and_mtu_limit() {
    with_net("attach_conflicts_and_mtu_limit", |net| {
        for mode in MODES {
            let mut p1 = Program::load(ProgramKind::RedirectAll, QUEUES, prog::XDP_PASS).unwrap();
            p1.attach(net.b, mode).unwrap();
            assert!(ip_out("link show dev vb").contains("xdp"));
            let mut p2 = Program::load(ProgramKind::UdpPort(9), QUEUES, prog::XDP_PASS).unwrap();
            let r = p2.attach(net.b, mode);
            assert!(matches!(r, Err(Error::Busy { .. })), "{:?}", r.err());
            p1.detach();
            assert!(!ip_out("link show dev vb").contains("xdp"));
            p2.attach(net.b, mode).unwrap();
        }
        // A program attached the legacy way (netlink, as `ip link` and libxdp do) by someone
        // else: our attach is refused cleanly, and works once it is gone.
        for (mode, flag) in [(AttachMode::Native, 4u32), (AttachMode::Generic, 2u32)] {
            let foreign = Program::load(ProgramKind::RedirectAll, QUEUES, prog::XDP_PASS).unwrap();
            netlink_set_xdp(net.b, foreign.prog_fd(), flag).expect("netlink attach");
            let mut ours = Program::load(ProgramKind::RedirectAll, QUEUES, prog::XDP_PASS).unwrap();
            match ours.attach(net.b, mode) {
                Err(e @ Error::Busy { .. }) => assert!(e.to_string().contains("another program")),
                other => panic!("{mode:?}: expected Busy, got {:?}", other.err()),
            }
            netlink_set_xdp(net.b, -1, flag).expect("netlink detach");
            ours.attach(net.b, mode).unwrap();
        }
        // Native XDP on veth caps the peer MTU (one page minus overheads).
        ip("link set va mtu 9000");
        let mut p = Program::load(ProgramKind::RedirectAll, QUEUES, prog::XDP_PASS).unwrap();
        let r = p.attach(net.b, AttachMode::Native);
        match r {
            Err(e @ Error::MtuTooLarge(_)) => assert!(e.to_string().contains("MTU")),
            other => panic!("expected MtuTooLarge, got {:?}", other.err()),
        }
        p.attach(net.b, AttachMode::Generic).expect("generic mode has no MTU cap");
    });
}

/// Child side of `program_detached_after_sigkill`: attaches and waits to be killed. Runs only
/// when the parent test starts it (ignored otherwise).
#[test]
#[ignore]
fn sigkill_holder_child() {
    let Ok(ifindex) = std::env::var("P99_XDP_HOLDER_IFINDEX") else { return };
    let mode = if std::env::var("P99_XDP_HOLDER_MODE").as_deref() == Ok("native") {
        AttachMode::Native
    } else {
        AttachMode::Generic
    };
    let mut p = Program::load(ProgramKind::RedirectAll, QUEUES, prog::XDP_PASS).unwrap();
    p.attach(ifindex.parse().unwrap(), mode).unwrap();
    println!("P99_HOLDER_READY");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn program_detached_after_sigkill() {
    with_net("program_detached_after_sigkill", |net| {
        for (mode, name) in [(AttachMode::Native, "native"), (AttachMode::Generic, "generic")] {
            let _ = mode;
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args([
                    "--ignored",
                    "--exact",
                    "sigkill_holder_child",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("P99_XDP_HOLDER_IFINDEX", net.b.to_string())
                .env("P99_XDP_HOLDER_MODE", name)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            assert!(lines.any(|l| l.map(|l| l.contains("P99_HOLDER_READY")).unwrap_or(false)));
            assert!(ip_out("link show dev vb").contains("xdp"), "child's program attached");
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            let deadline = Instant::now() + Duration::from_secs(3);
            while ip_out("link show dev vb").contains("xdp") {
                assert!(Instant::now() < deadline, "{name}: program still attached after SIGKILL");
                std::thread::sleep(Duration::from_millis(10));
            }
            // The hook is free again.
            let mut p = Program::load(ProgramKind::RedirectAll, QUEUES, prog::XDP_PASS).unwrap();
            p.attach(net.b, mode).unwrap();
        }
    });
}

#[test]
fn udp_filter_program_passes_other_traffic() {
    with_net("udp_filter_program_passes_other_traffic", |net| {
        for mode in MODES {
            let mut prog =
                Program::load(ProgramKind::UdpPort(7777), QUEUES, prog::XDP_PASS).unwrap();
            prog.attach(net.b, mode).unwrap();
            let mut rx = xsk(net.b, 1, small_umem(4096, 256));
            prog.register(1, rx.sock.fd()).unwrap();
            rx.umem.fill(u32::MAX);
            let mut tx = xsk(net.a, tx_queue_for(mode, 1), small_umem(4096, 64));
            send_seq(&mut tx, 0..5, 32, 7778); // other port: to the kernel stack
            send_seq(&mut tx, 5..10, 32, 7777);
            let mut seen = vec![];
            recv_n(&mut rx, 10, Duration::from_millis(500), |f| seen.push(seq_of(f, 32)));
            assert_eq!(seen, (5..10).collect::<Vec<_>>());
            prog.unregister(1).unwrap();
            send_seq(&mut tx, 10..12, 32, 7777);
            assert_eq!(
                recv_n(&mut rx, 1, Duration::from_millis(100), |_| {}),
                0,
                "unregistered socket got traffic"
            );
        }
    });
}

#[test]
fn iface_mac_reads_the_veth_addresses_in_this_namespace() {
    with_net("iface_mac_reads_the_veth_addresses_in_this_namespace", |_net| {
        assert_eq!(p99::xdp::sys::iface_mac("va").unwrap(), MAC_A);
        assert_eq!(p99::xdp::sys::iface_mac("vb").unwrap(), MAC_B);
    });
}
