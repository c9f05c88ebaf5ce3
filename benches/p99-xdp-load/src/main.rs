//! p99-xdp-load: AF_XDP UDP-ping load source for benchmarking UDP ping responders.
//!
//!   p99-xdp-load -i IFACE --dst-ip A.B.C.D --dst-mac xx:..:xx -p PORT [--src-ip A.B.C.D]
//!                [-q QUEUE] [--sport PORT] [--rate PPS] [--duration SECS] [--size BYTES]
//!                [--window N] [--mode auto|native|generic]
//!
//! Prints one line of `key=value` results: sent, received, send/recv packets per second,
//! round-trip p50/p90/p99/p999/max in microseconds.

use std::time::Duration;

use p99::xdp::{sys, AttachMode};
use p99_xdp_load::{run_ping_load, PingLoadConfig};

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> =
        s.split(':').map(|p| u8::from_str_radix(p, 16)).collect::<Result<_, _>>().ok()?;
    v.try_into().ok()
}

fn parse_ip(s: &str) -> Option<[u8; 4]> {
    s.parse::<std::net::Ipv4Addr>().ok().map(|a| a.octets())
}

fn iface_ip(name: &str) -> Option<[u8; 4]> {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", name])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let cidr = text.split_whitespace().skip_while(|w| *w != "inet").nth(1)?;
    parse_ip(cidr.split('/').next()?)
}

fn die(msg: &str) -> ! {
    eprintln!("p99-xdp-load: {msg}");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |k: &str| -> Option<String> {
        let i = args.iter().position(|a| a == k)?;
        args.get(i + 1).cloned()
    };
    let iface = get("-i").unwrap_or_else(|| die("-i IFACE required"));
    let dst_ip =
        get("--dst-ip").and_then(|s| parse_ip(&s)).unwrap_or_else(|| die("--dst-ip required"));
    let dst_mac =
        get("--dst-mac").and_then(|s| parse_mac(&s)).unwrap_or_else(|| die("--dst-mac required"));
    let dst_port: u16 =
        get("-p").and_then(|s| s.parse().ok()).unwrap_or_else(|| die("-p PORT required"));
    let ifindex = sys::ifindex(&iface).unwrap_or_else(|e| die(&format!("{iface}: {e}")));
    let src_mac = std::fs::read_to_string(format!("/sys/class/net/{iface}/address"))
        .ok()
        .and_then(|s| parse_mac(s.trim()))
        .unwrap_or_else(|| die("cannot read the interface MAC address"));
    let src_ip = get("--src-ip")
        .and_then(|s| parse_ip(&s))
        .or_else(|| iface_ip(&iface))
        .unwrap_or_else(|| die("--src-ip required (interface has no IPv4 address)"));
    let mode = match get("--mode").as_deref().unwrap_or("auto") {
        "auto" => AttachMode::Auto,
        "native" => AttachMode::Native,
        "generic" => AttachMode::Generic,
        m => die(&format!("bad mode {m}")),
    };
    let cfg = PingLoadConfig {
        ifindex,
        queue: get("-q").and_then(|s| s.parse().ok()).unwrap_or(0),
        attach: mode,
        src_mac,
        dst_mac,
        src_ip,
        dst_ip,
        src_port: get("--sport").and_then(|s| s.parse().ok()).unwrap_or(40000),
        dst_port,
        payload_len: get("--size").and_then(|s| s.parse().ok()).unwrap_or(32),
        rate: get("--rate").and_then(|s| s.parse().ok()).unwrap_or(0),
        duration: Duration::from_secs_f64(
            get("--duration").and_then(|s| s.parse().ok()).unwrap_or(3.0),
        ),
        max_outstanding: get("--window").and_then(|s| s.parse().ok()).unwrap_or(0),
        drain: Duration::from_millis(300),
    };
    match run_ping_load(&cfg) {
        Ok(r) => {
            let us = |q: f64| r.rtt_ns.value_at_quantile(q) as f64 / 1000.0;
            println!(
                "sent={} received={} foreign={} send_pps={:.0} recv_pps={:.0} rtt_us_p50={:.1} rtt_us_p90={:.1} rtt_us_p99={:.1} rtt_us_p999={:.1} rtt_us_max={:.1} tx_kernel_dropped={} rx_dropped={}",
                r.sent,
                r.received,
                r.foreign,
                r.send_pps(),
                r.recv_pps(),
                us(0.5),
                us(0.9),
                us(0.99),
                us(0.999),
                r.rtt_ns.max() as f64 / 1000.0,
                r.tx_kernel_dropped,
                r.rx_dropped
            );
        }
        Err(e) => {
            eprintln!("p99-xdp-load: {e}");
            std::process::exit(1);
        }
    }
}
