//! UDP ping through AF_XDP (libp99's xdp module, via `p99_xdp_load`), so the generator skips the
//! kernel's UDP stack and is not the bottleneck. Closed loop = at most connections x pipeline
//! pings without a reply; open loop = fixed rate. Its round-trip times run from the moment each
//! datagram was queued (the sender's stamp), not from an intended schedule; the report says so.

use crate::config::Config;
use crate::run::Report;
use crate::stats::{CoreMeter, Counts, CpuMeter};
use p99::xdp::{sys, AttachMode};
use p99_xdp_load::{run_ping_load, PingLoadConfig};
use std::net::SocketAddr;
use std::time::Duration;

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> =
        s.split(':').map(|p| u8::from_str_radix(p, 16)).collect::<Result<_, _>>().ok()?;
    v.try_into().ok()
}

fn iface_ipv4(iface: &str) -> Result<[u8; 4], String> {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", iface])
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let cidr = text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .ok_or(format!("{iface} has no IPv4 address"))?;
    let ip: std::net::Ipv4Addr =
        cidr.split('/').next().unwrap_or("").parse().map_err(|_| format!("bad address {cidr}"))?;
    Ok(ip.octets())
}

/// The next hop's MAC from the neighbour table, after one kernel datagram made sure it is there.
fn neighbour_mac(iface: &str, dst: SocketAddr) -> Result<[u8; 6], String> {
    if let Ok(s) = std::net::UdpSocket::bind("0.0.0.0:0") {
        let _ = s.send_to(b"PING", dst);
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        let mut b = [0u8; 64];
        let _ = s.recv(&mut b);
    }
    let out = std::process::Command::new("ip")
        .args(["neigh", "show", &dst.ip().to_string(), "dev", iface])
        .output()
        .map_err(|e| format!("ip neigh: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().skip_while(|w| *w != "lladdr").nth(1).and_then(parse_mac).ok_or_else(
        || format!("no neighbour entry for {} on {iface}; give --xdp-dst-mac", dst.ip()),
    )
}

pub fn run(c: &Config) -> Result<Report, String> {
    let iface = c.xdp_iface.as_deref().ok_or("--xdp-iface missing")?;
    let dst = crate::client::resolve(&c.server)?;
    let SocketAddr::V4(dst4) = dst else { return Err("the AF_XDP sender speaks IPv4 only".into()) };
    let ifindex = sys::ifindex(iface).map_err(|e| format!("{iface}: {e}"))?;
    let dst_mac = match &c.xdp_dst_mac {
        Some(m) => parse_mac(m).ok_or_else(|| format!("--xdp-dst-mac: bad MAC '{m}'"))?,
        None => neighbour_mac(iface, dst)?,
    };
    let attach = match c.xdp_mode.as_str() {
        "native" => AttachMode::Native,
        "generic" => AttachMode::Generic,
        _ => AttachMode::Auto,
    };
    let mk = |secs: f64| PingLoadConfig {
        ifindex,
        queue: c.xdp_queue,
        attach,
        src_mac: [0; 6],
        dst_mac,
        src_ip: [0; 4],
        dst_ip: dst4.ip().octets(),
        src_port: 40_000 + (std::process::id() % 20_000) as u16,
        dst_port: dst4.port(),
        payload_len: c.udp_payload,
        rate: c.rate as u64,
        duration: Duration::from_secs_f64(secs),
        max_outstanding: if c.rate > 0.0 { 0 } else { (c.connections * c.pipeline) as u64 },
        // The sender waits this long after its send phase whatever is in flight: short, since
        // answers on a veth come back in microseconds; later ones count as lost.
        drain: Duration::from_secs_f64(c.drain.min(c.udp_timeout).min(0.2)),
    };
    let src_mac = sys::iface_mac(iface).map_err(|e| e.to_string())?;
    let src_ip = iface_ipv4(iface)?;
    let fill = |mut p: PingLoadConfig| {
        p.src_mac = src_mac;
        p.src_ip = src_ip;
        p
    };
    if c.warmup > 0.0 {
        run_ping_load(&fill(mk(c.warmup))).map_err(|e| format!("AF_XDP sender: {e}"))?;
    }
    let cfg = fill(mk(c.duration));
    let probe_stop = std::sync::atomic::AtomicBool::new(false);
    let (report, cpu, stalls) = std::thread::scope(|s| {
        // The measured window is the sender's run, which starts now.
        let now = crate::client::now_ns();
        let end = now + (c.duration * 1e9) as u64;
        let win = crate::client::Window { start: now, warm_end: now, end, drain_end: end };
        let probes = (c.stall_probe || c.inject_stall_ms > 0.0).then(|| {
            let cpus = crate::stall::watched_cpus(c.server_core, &c.cpus);
            let inject = (c.inject_stall_ms > 0.0).then(|| (cpus[0], c.inject_stall_ms));
            crate::stall::start(s, &cpus, inject, win, &probe_stop)
        });
        let h = s.spawn(|| {
            if let Some(cpu) = c.cpus.first() {
                // SAFETY: cpu_set_t is plain data; sched_setaffinity(0) pins this thread only.
                unsafe {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(*cpu, &mut set);
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                }
            }
            run_ping_load(&cfg)
        });
        let server = c.server_pid.map(CpuMeter::start);
        let gen = CpuMeter::start(std::process::id());
        let core = c.server_core.map(CoreMeter::start);
        std::thread::sleep(Duration::from_secs_f64(c.duration));
        let cpu = (server.and_then(|m| m.percent()), gen.percent(), core.and_then(|m| m.percent()));
        let report = h.join().map_err(|_| "AF_XDP sender panicked".to_string());
        probe_stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (report, cpu, probes.map(|p| p.finish()))
    });
    let stalls = stalls.transpose()?;
    let r = report?.map_err(|e| format!("AF_XDP sender: {e}"))?;
    let mut counts = Counts::new();
    for v in r.rtt_ns.iter_recorded() {
        let ns = v.value_iterated_to().clamp(1, crate::stats::MAX_NS);
        counts.hist.record_n(ns, v.count_at_value()).map_err(|e| format!("histogram: {e}"))?;
    }
    counts.issued = r.sent;
    counts.completed = r.received;
    counts.unanswered = r.sent.saturating_sub(r.received);
    counts.errors = r.foreign;
    let secs = r.send_elapsed.as_secs_f64().max(1e-9);
    Ok(Report {
        config: c.clone(),
        counts,
        rps: r.received as f64 / secs,
        server_cpu_pct: cpu.0,
        generator_cpu_pct: cpu.1,
        server_core_busy_pct: cpu.2,
        stalls,
        command: c.command_line(),
        starved_attempts: Vec::new(),
    })
}
