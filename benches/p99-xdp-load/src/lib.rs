//! An AF_XDP UDP-ping load source: sends `PING` datagrams carrying a sequence number and a
//! send timestamp at a fixed rate (or as fast as it can), receives the `PONG`s on the same
//! socket, and records round-trip times. Used by the benchmark and available to load
//! generators as a library call.
//!
//! The socket's interface gets a UDP-port filter program for the source port, so only the
//! replies are taken from the kernel; ARP and everything else keep working.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use p99::xdp::packet;
use p99::xdp::{
    AttachMode, Program, ProgramKind, Result, Socket, SocketConfig, Umem, UmemConfig, XdpDesc,
};

/// What to send and how fast.
#[derive(Clone, Debug)]
pub struct PingLoadConfig {
    pub ifindex: u32,
    pub queue: u32,
    pub attach: AttachMode,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src_ip: [u8; 4],
    pub dst_ip: [u8; 4],
    pub src_port: u16,
    pub dst_port: u16,
    /// UDP payload bytes (at least 20: "PING", sequence, timestamp).
    pub payload_len: usize,
    /// Packets per second; 0 = as fast as the socket can send.
    pub rate: u64,
    pub duration: Duration,
    /// At most this many pings without a reply (0 = unlimited).
    pub max_outstanding: u64,
    /// Time to wait for late replies after the send phase.
    pub drain: Duration,
}

/// What happened.
#[derive(Debug)]
pub struct PingLoadReport {
    pub sent: u64,
    pub received: u64,
    /// Replies that did not parse as one of our pongs.
    pub foreign: u64,
    pub send_elapsed: Duration,
    /// Round-trip times in nanoseconds.
    pub rtt_ns: Histogram<u64>,
    pub tx_kernel_dropped: u64,
    pub rx_dropped: u64,
}

impl PingLoadReport {
    pub fn send_pps(&self) -> f64 {
        self.sent as f64 / self.send_elapsed.as_secs_f64()
    }
    pub fn recv_pps(&self) -> f64 {
        self.received as f64 / self.send_elapsed.as_secs_f64()
    }
}

const BATCH: usize = 64;

/// Runs the load; blocks for `duration + drain`.
pub fn run_ping_load(cfg: &PingLoadConfig) -> Result<PingLoadReport> {
    if cfg.payload_len < 20 || cfg.payload_len > 1400 {
        return Err(p99::xdp::Error::Invalid(format!(
            "payload length {} (must be 20..=1400)",
            cfg.payload_len
        )));
    }
    let mut prog =
        Program::load(ProgramKind::UdpPort(cfg.src_port), cfg.queue + 1, p99::xdp::prog::XDP_PASS)?;
    prog.attach(cfg.ifindex, cfg.attach)?;
    let mut umem = Umem::new(UmemConfig {
        frame_size: 2048,
        frame_count: 16384,
        headroom: 0,
        fill_size: 4096,
        comp_size: 4096,
    })?;
    let mut sock = Socket::bind(
        &umem,
        cfg.ifindex,
        cfg.queue,
        SocketConfig { rx_size: 4096, tx_size: 4096, ..SocketConfig::default() },
    )?;
    prog.register(cfg.queue, sock.fd())?;
    umem.fill(4096);

    let base = Instant::now();
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).expect("histogram bounds");
    let mut payload = vec![0u8; cfg.payload_len];
    payload[..4].copy_from_slice(b"PING");
    let (mut sent, mut received, mut foreign) = (0u64, 0u64, 0u64);
    let mut descs = [XdpDesc::default(); BATCH];
    let mut rx = [XdpDesc::default(); BATCH];
    let end = base + cfg.duration;
    let mut send_end = end;
    let mut draining = false;
    loop {
        let now = Instant::now();
        if !draining && now >= end {
            draining = true;
            send_end = now;
        }
        if draining && now >= send_end + cfg.drain {
            break;
        }
        if !draining {
            let due = if cfg.rate == 0 {
                u64::MAX
            } else {
                (now - base).as_nanos() as u64 * cfg.rate / 1_000_000_000 + 1
            };
            let mut want = due.saturating_sub(sent).min(BATCH as u64);
            if cfg.max_outstanding > 0 {
                want = want.min(cfg.max_outstanding.saturating_sub(sent - received));
            }
            if want > 0 {
                umem.reap();
                let n = umem.alloc(&mut descs[..want as usize]) as usize;
                let t = base.elapsed().as_nanos() as u64;
                for (i, d) in descs[..n].iter_mut().enumerate() {
                    payload[4..12].copy_from_slice(&(sent + i as u64).to_le_bytes());
                    payload[12..20].copy_from_slice(&t.to_le_bytes());
                    let buf = umem.data(d.addr, 2048)?;
                    d.len = packet::build_udp4(
                        buf,
                        cfg.src_mac,
                        cfg.dst_mac,
                        cfg.src_ip,
                        cfg.dst_ip,
                        cfg.src_port,
                        cfg.dst_port,
                        &payload,
                    )
                    .expect("frame fits") as u32;
                }
                let q = sock.send(&descs[..n])? as usize;
                if q < n {
                    umem.release(&descs[q..n])?;
                }
                sent += q as u64;
            } else {
                sock.kick()?;
            }
        }
        let n = sock.recv(&mut rx) as usize;
        if n > 0 {
            let t = base.elapsed().as_nanos() as u64;
            for d in &rx[..n] {
                let f = umem.data(d.addr, d.len)?;
                match packet::parse_udp4(f) {
                    Some(p)
                        if p.payload_len >= 20
                            && &f[p.payload_off..p.payload_off + 4] == b"PONG" =>
                    {
                        let ts = u64::from_le_bytes(
                            f[p.payload_off + 12..p.payload_off + 20].try_into().unwrap(),
                        );
                        let _ = hist.record(t.saturating_sub(ts).max(1));
                        received += 1;
                    }
                    _ => foreign += 1,
                }
            }
            umem.release(&rx[..n])?;
            umem.fill(u32::MAX);
        } else if draining {
            sock.poll_rx(1)?;
        }
    }
    let st = sock.stats()?;
    Ok(PingLoadReport {
        sent,
        received,
        foreign,
        send_elapsed: send_end - base,
        rtt_ns: hist,
        tx_kernel_dropped: st.tx_kernel_dropped,
        rx_dropped: st.kernel.rx_dropped
            + st.kernel.rx_ring_full
            + st.kernel.rx_fill_ring_empty_descs,
    })
}
