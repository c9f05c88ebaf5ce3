//! Every knob of a load run, parsed from p99-bench flags and written back out as flags, so a run
//! driven by the parity runner can be repeated by hand with exactly the same command.

use std::fmt::Write as _;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Protocol {
    Ping,
    Memcache,
    Udp,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Popularity {
    Uniform,
    /// Zipf with the given exponent (0.99 is the YCSB default).
    Zipf(f64),
}

/// `--handshake`: a new TLS connection per request (connect, handshake, one ping, close).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Handshake {
    /// Every handshake full: the client keeps no sessions.
    Full,
    /// Resume the session of an earlier connection (TLS 1.3 tickets, TLS 1.2 tickets or ids).
    Resumed,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UdpEngine {
    Kernel,
    Xdp,
}

/// A rate ramp: open-loop steps from `start` to `end` (requests/s), each `step_secs` long.
#[derive(Clone, Debug, PartialEq)]
pub struct Ramp {
    pub start: f64,
    pub step: f64,
    pub end: f64,
    pub step_secs: f64,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub protocol: Protocol,
    pub server: String,
    pub threads: usize,
    pub connections: usize,
    pub pipeline: usize,
    /// Requests per second in open loop; 0 means closed loop.
    pub rate: f64,
    pub warmup: f64,
    pub duration: f64,
    /// How long to wait after the run for answers still in flight.
    pub drain: f64,
    pub ramp: Option<Ramp>,
    /// Latency objective of the ramp's two redlines (p99 and p99.9 under it), in microseconds.
    pub slo_us: f64,
    pub get_ratio: f64,
    pub key_size: usize,
    pub value_size: usize,
    pub keys: u64,
    pub popularity: Popularity,
    pub multiget: usize,
    pub prefill: bool,
    pub verify: bool,
    pub udp_payload: usize,
    pub udp_engine: UdpEngine,
    pub udp_timeout: f64,
    /// AF_XDP sender: the interface, its queue, the next hop's MAC (default: from the neighbour
    /// table) and the attach mode (auto, native, generic).
    pub xdp_iface: Option<String>,
    pub xdp_queue: u32,
    pub xdp_dst_mac: Option<String>,
    pub xdp_mode: String,
    pub server_pid: Option<u32>,
    /// The server's core: how busy it was (by anyone) is recorded beside the server's own share.
    pub server_core: Option<usize>,
    pub cpus: Vec<usize>,
    /// Open loop: measure the machine's own stalls on the server's and the generator's cores
    /// while the run goes (see stall.rs).
    pub stall_probe: bool,
    /// Test only: stall the server's core (or the first probed core) for this many ms in the
    /// middle of the measured window, with a real-time spinning thread.
    pub inject_stall_ms: f64,
    /// Deadlines closer than this many microseconds are polled instead of slept on (None: the
    /// mode's default, see client::spin_ns).
    pub poll_us: Option<u64>,
    pub json: Option<String>,
    pub progress: Option<bool>,
    pub seed: u64,
    /// TLS (rustls) on every TCP connection: with `tls_ca` (PEM roots to verify the server
    /// with) or `tls_insecure` (accept any certificate), SNI name, only one version.
    pub tls: bool,
    pub tls_ca: Option<String>,
    pub tls_insecure: bool,
    pub tls_sni: Option<String>,
    /// "1.2" or "1.3"; None offers both.
    pub tls_version: Option<String>,
    pub handshake: Option<Handshake>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            protocol: Protocol::Ping,
            server: "127.0.0.1:12321".into(),
            threads: 1,
            connections: 16,
            pipeline: 8,
            rate: 0.0,
            warmup: 1.0,
            duration: 5.0,
            drain: 1.0,
            ramp: None,
            slo_us: 1000.0,
            get_ratio: 0.9,
            key_size: 32,
            value_size: 100,
            keys: 100_000,
            popularity: Popularity::Uniform,
            multiget: 1,
            prefill: true,
            verify: true,
            udp_payload: 32,
            udp_engine: UdpEngine::Kernel,
            udp_timeout: 0.5,
            xdp_iface: None,
            xdp_queue: 0,
            xdp_dst_mac: None,
            xdp_mode: "auto".into(),
            server_pid: None,
            server_core: None,
            cpus: Vec::new(),
            stall_probe: false,
            inject_stall_ms: 0.0,
            poll_us: None,
            json: None,
            progress: None,
            seed: 0x9e37_79b9_7f4a_7c15,
            tls: false,
            tls_ca: None,
            tls_insecure: false,
            tls_sni: None,
            tls_version: None,
            handshake: None,
        }
    }
}

pub const USAGE: &str = "\
usage: p99-bench [flags]
  -P, --protocol ping|memcache|udp   what to speak (default ping)
  -s, --server HOST:PORT             target (default 127.0.0.1:12321)
  -T, --threads N                    generator threads, each with its own epoll loop (default 1)
  -c, --connections N                connections (UDP: sockets) in total (default 16)
  -d, --pipeline N                   requests in flight per connection, closed loop (default 8)
  -r, --rate R                       open loop at R requests/s; latency counts from the intended
                                     send time (default 0 = closed loop)
  -w, --warmup SECS                  warm-up, not measured (default 1)
  -t, --duration SECS                measured time (default 5)
      --drain SECS                   wait for answers still in flight after the run (default 1)
      --ramp START:STEP:END[:SECS]   open-loop rate ramp to find the redlines (step secs default 1)
      --slo-us US                    redline objective: p99 (and, for the second redline, p99.9)
                                     under US microseconds (default 1000)
memcache:
      --get-ratio F                  fraction of gets, the rest are sets (default 0.9)
      --key-size N                   key bytes (default 32)
      --value-size N                 value bytes (default 100)
      --keys N                       key count (default 100000)
      --popularity uniform|zipf[:S]  key popularity (zipf exponent default 0.99)
      --multiget N                   keys per get (default 1)
      --no-prefill                   do not store every key before the run
      --no-verify                    do not check values read back
udp:
      --udp-payload N                datagram bytes, at least 12 (default 32)
      --udp-engine kernel|xdp        how the generator sends (default kernel)
      --udp-timeout SECS             an answer later than this counts as lost (default 0.5)
      --xdp-iface IFACE              AF_XDP sender: the interface to send on (required for xdp)
      --xdp-queue N                  AF_XDP sender: its queue (default 0)
      --xdp-dst-mac MAC              AF_XDP sender: next hop MAC (default: neighbour table)
      --xdp-mode auto|native|generic AF_XDP attach mode (default auto)
tls (ping and memcache):
      --tls                          TLS (rustls, ring) on every connection, set up before the
                                     run; needs --tls-ca or --tls-insecure
      --tls-ca FILE                  verify the server's certificate against these PEM roots
      --tls-insecure                 accept any server certificate, unchecked, and do not check
                                     the handshake's signature either (benchmarking only)
      --tls-sni NAME                 server name to send and verify (default: the host of
                                     --server; an IP address is verified but sends no SNI)
      --tls-version 1.2|1.3          offer only this version (default both)
      --handshake full|resumed       measure handshakes (ping only, closed loop): each of the
                                     --connections in turn connects, handshakes, sends one
                                     PING, reads PONG and closes; resumed reuses the sessions
                                     of earlier connections and reports how many resumed
general:
      --server-pid PID               record this process's CPU use during the run
      --server-core N                record how busy that core was (by any process)
      --cpus LIST                    pin generator threads to these CPUs (e.g. 1 or 1,3)
      --stall-probe                  count the machine's stalls during the run: a thread pinned
                                     to the server core and to each generator CPU wakes every
                                     200 us and records how late it woke (like cyclictest)
      --inject-stall MS              test only: stall the server core for MS ms mid-run (a
                                     real-time spinning thread; needs root); with --ramp, the
                                     first attempt of each step only (a step the stall failed
                                     is run again without it)
      --poll-us N                    a next send or timeout closer than N us is polled, not
                                     slept on (default: 2000 open loop, which keeps a VM's late
                                     timer wake-ups out of the schedule but spins the
                                     generator's core; 30 closed loop); 0 always sleeps, for
                                     long low-rate runs beside other work (make soak)
      --json PATH                    write the result as JSON (- for stdout)
      --progress / --no-progress     live progress line (default: when stderr is a terminal)
      --seed N                       workload random seed
  -h, --help
";

fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse::<T>().map_err(|_| format!("{flag}: cannot parse '{v}'"))
}

fn parse_cpus(v: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in v.split(',').filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let (a, b): (usize, usize) = (num("--cpus", a)?, num("--cpus", b)?);
            if a > b {
                return Err(format!("--cpus: bad range '{part}'"));
            }
            out.extend(a..=b);
        } else {
            out.push(num("--cpus", part)?);
        }
    }
    if out.is_empty() {
        return Err("--cpus: empty list".into());
    }
    Ok(out)
}

impl Config {
    /// Parses flags (without the program name). `Ok(None)` means help was asked for.
    pub fn parse(args: &[String]) -> Result<Option<Config>, String> {
        let mut c = Config::default();
        let mut i = 0;
        while i < args.len() {
            let a = args[i].as_str();
            let (flag, inline) = match a.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
                _ => (a, None),
            };
            let mut take = || -> Result<String, String> {
                if let Some(v) = inline.clone() {
                    return Ok(v);
                }
                i += 1;
                args.get(i).cloned().ok_or_else(|| format!("{flag}: missing value"))
            };
            match flag {
                "-h" | "--help" => return Ok(None),
                "-P" | "--protocol" => {
                    c.protocol = match take()?.as_str() {
                        "ping" => Protocol::Ping,
                        "memcache" | "memcached" => Protocol::Memcache,
                        "udp" | "udp-ping" => Protocol::Udp,
                        o => {
                            return Err(format!("--protocol: unknown '{o}' (ping, memcache, udp)"))
                        }
                    }
                }
                "-s" | "--server" => c.server = take()?,
                "-T" | "--threads" => c.threads = num(flag, &take()?)?,
                "-c" | "--connections" => c.connections = num(flag, &take()?)?,
                "-d" | "--pipeline" => c.pipeline = num(flag, &take()?)?,
                "-r" | "--rate" => c.rate = num(flag, &take()?)?,
                "-w" | "--warmup" => c.warmup = num(flag, &take()?)?,
                "-t" | "--duration" => c.duration = num(flag, &take()?)?,
                "--drain" => c.drain = num(flag, &take()?)?,
                "--ramp" => {
                    let v = take()?;
                    let p: Vec<&str> = v.split(':').collect();
                    if p.len() != 3 && p.len() != 4 {
                        return Err("--ramp: want START:STEP:END[:SECS]".into());
                    }
                    let r = Ramp {
                        start: num(flag, p[0])?,
                        step: num(flag, p[1])?,
                        end: num(flag, p[2])?,
                        step_secs: if p.len() == 4 { num(flag, p[3])? } else { 1.0 },
                    };
                    if !(r.start > 0.0 && r.step > 0.0 && r.end >= r.start && r.step_secs > 0.0) {
                        return Err("--ramp: need 0 < START <= END, STEP > 0, SECS > 0".into());
                    }
                    c.ramp = Some(r);
                }
                "--slo-us" | "--slo-p999-us" => c.slo_us = num(flag, &take()?)?,
                "--get-ratio" => c.get_ratio = num(flag, &take()?)?,
                "--key-size" => c.key_size = num(flag, &take()?)?,
                "--value-size" => c.value_size = num(flag, &take()?)?,
                "--keys" => c.keys = num(flag, &take()?)?,
                "--popularity" => {
                    let v = take()?;
                    c.popularity = match v.as_str() {
                        "uniform" => Popularity::Uniform,
                        "zipf" => Popularity::Zipf(0.99),
                        z if z.starts_with("zipf:") => Popularity::Zipf(num(flag, &z[5..])?),
                        o => {
                            return Err(format!("--popularity: unknown '{o}' (uniform, zipf[:S])"))
                        }
                    }
                }
                "--multiget" => c.multiget = num(flag, &take()?)?,
                "--prefill" => c.prefill = true,
                "--no-prefill" => c.prefill = false,
                "--verify" => c.verify = true,
                "--no-verify" => c.verify = false,
                "--udp-payload" => c.udp_payload = num(flag, &take()?)?,
                "--udp-engine" => {
                    c.udp_engine = match take()?.as_str() {
                        "kernel" => UdpEngine::Kernel,
                        "xdp" => UdpEngine::Xdp,
                        o => return Err(format!("--udp-engine: unknown '{o}' (kernel, xdp)")),
                    }
                }
                "--udp-timeout" => c.udp_timeout = num(flag, &take()?)?,
                "--xdp-iface" => c.xdp_iface = Some(take()?),
                "--xdp-queue" => c.xdp_queue = num(flag, &take()?)?,
                "--xdp-dst-mac" => c.xdp_dst_mac = Some(take()?),
                "--xdp-mode" => {
                    c.xdp_mode = take()?;
                    if !["auto", "native", "generic"].contains(&c.xdp_mode.as_str()) {
                        return Err("--xdp-mode: auto, native or generic".into());
                    }
                }
                "--server-pid" => c.server_pid = Some(num(flag, &take()?)?),
                "--server-core" => c.server_core = Some(num(flag, &take()?)?),
                "--cpus" => c.cpus = parse_cpus(&take()?)?,
                "--stall-probe" => c.stall_probe = true,
                "--inject-stall" => c.inject_stall_ms = num(flag, &take()?)?,
                "--poll-us" => c.poll_us = Some(num(flag, &take()?)?),
                "--json" => c.json = Some(take()?),
                "--progress" => c.progress = Some(true),
                "--no-progress" => c.progress = Some(false),
                "--seed" => c.seed = num(flag, &take()?)?,
                "--tls" => c.tls = true,
                "--tls-ca" => c.tls_ca = Some(take()?),
                "--tls-insecure" => c.tls_insecure = true,
                "--tls-sni" => c.tls_sni = Some(take()?),
                "--tls-version" => c.tls_version = Some(take()?),
                "--handshake" => {
                    c.handshake = Some(match take()?.as_str() {
                        "full" => Handshake::Full,
                        "resumed" => Handshake::Resumed,
                        o => return Err(format!("--handshake: unknown '{o}' (full, resumed)")),
                    })
                }
                o => return Err(format!("unknown flag '{o}' (see --help)")),
            }
            i += 1;
        }
        c.validate()?;
        Ok(Some(c))
    }

    pub fn validate(&self) -> Result<(), String> {
        let bad = |m: &str| Err(m.to_string());
        if !(0.0..=50.0).contains(&self.inject_stall_ms) {
            return bad("--inject-stall: 0..=50 ms");
        }
        if self.poll_us.is_some_and(|us| us > 1_000_000) {
            return bad("--poll-us: 0..=1000000");
        }
        if self.threads == 0 || self.threads > 256 {
            return bad("--threads: 1..=256");
        }
        if self.connections < self.threads {
            return bad("--connections: at least one per thread");
        }
        if self.pipeline == 0 {
            return bad("--pipeline: at least 1");
        }
        if !(self.rate >= 0.0 && self.rate.is_finite()) {
            return bad("--rate: a non-negative number");
        }
        if !(self.warmup >= 0.0 && self.duration > 0.0 && self.drain >= 0.0) {
            return bad("--warmup/--drain >= 0 and --duration > 0");
        }
        if !(0.0..=1.0).contains(&self.get_ratio) {
            return bad("--get-ratio: between 0 and 1");
        }
        if self.keys == 0 {
            return bad("--keys: at least 1");
        }
        let digits = self.keys.to_string().len();
        if self.key_size < digits + 1 || self.key_size > 250 {
            return bad("--key-size: room for the key number plus one byte, and at most 250");
        }
        if self.value_size == 0 || self.value_size > 64 << 20 {
            return bad("--value-size: 1 byte to 64 MiB");
        }
        if self.multiget == 0 || self.multiget > 1024 {
            return bad("--multiget: 1..=1024");
        }
        if let Popularity::Zipf(s) = self.popularity {
            if !(s > 0.0 && s.is_finite() && (s - 1.0).abs() > 1e-9) {
                return bad("--popularity zipf:S: S > 0 and S != 1");
            }
        }
        if self.udp_payload < 12 || self.udp_payload > 65_000 {
            return bad("--udp-payload: 12..=65000 (PING + 8-byte sequence number)");
        }
        if self.udp_timeout <= 0.0 {
            return bad("--udp-timeout: > 0");
        }
        if self.protocol == Protocol::Udp && self.udp_engine == UdpEngine::Xdp {
            if self.xdp_iface.is_none() {
                return bad("--udp-engine xdp needs --xdp-iface");
            }
            if self.udp_payload < 20 || self.udp_payload > 1400 {
                return bad("--udp-engine xdp: --udp-payload 20..=1400");
            }
        }
        if self.slo_us <= 0.0 {
            return bad("--slo-us: > 0");
        }
        self.validate_tls()
    }

    fn validate_tls(&self) -> Result<(), String> {
        let bad = |m: &str| Err(m.to_string());
        let any_tls_flag = self.tls_ca.is_some()
            || self.tls_insecure
            || self.tls_sni.is_some()
            || self.tls_version.is_some()
            || self.handshake.is_some();
        if !self.tls {
            return if any_tls_flag { bad("--tls-* and --handshake need --tls") } else { Ok(()) };
        }
        if self.protocol == Protocol::Udp {
            return bad("--tls: ping and memcache only (TCP)");
        }
        if self.tls_ca.is_some() == self.tls_insecure {
            return bad("--tls: give exactly one of --tls-ca FILE and --tls-insecure");
        }
        if let Some(v) = &self.tls_version {
            if v != "1.2" && v != "1.3" {
                return bad("--tls-version: 1.2 or 1.3");
            }
        }
        if self.handshake.is_some() {
            if self.protocol != Protocol::Ping {
                return bad("--handshake: with --protocol ping");
            }
            if self.rate > 0.0 || self.ramp.is_some() {
                return bad("--handshake: closed loop only (no --rate or --ramp)");
            }
        }
        Ok(())
    }

    /// The flags that reproduce this configuration (what a results file records as the command).
    pub fn to_args(&self) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut p = |k: &str, v: String| {
            a.push(k.to_string());
            a.push(v);
        };
        p(
            "--protocol",
            match self.protocol {
                Protocol::Ping => "ping",
                Protocol::Memcache => "memcache",
                Protocol::Udp => "udp",
            }
            .into(),
        );
        p("--server", self.server.clone());
        p("--threads", self.threads.to_string());
        p("--connections", self.connections.to_string());
        p("--pipeline", self.pipeline.to_string());
        p("--rate", fmt_f(self.rate));
        p("--warmup", fmt_f(self.warmup));
        p("--duration", fmt_f(self.duration));
        p("--drain", fmt_f(self.drain));
        if let Some(r) = &self.ramp {
            p(
                "--ramp",
                format!(
                    "{}:{}:{}:{}",
                    fmt_f(r.start),
                    fmt_f(r.step),
                    fmt_f(r.end),
                    fmt_f(r.step_secs)
                ),
            );
        }
        p("--slo-us", fmt_f(self.slo_us));
        match self.protocol {
            Protocol::Memcache => {
                p("--get-ratio", fmt_f(self.get_ratio));
                p("--key-size", self.key_size.to_string());
                p("--value-size", self.value_size.to_string());
                p("--keys", self.keys.to_string());
                p(
                    "--popularity",
                    match self.popularity {
                        Popularity::Uniform => "uniform".into(),
                        Popularity::Zipf(s) => format!("zipf:{}", fmt_f(s)),
                    },
                );
                p("--multiget", self.multiget.to_string());
            }
            Protocol::Udp => {
                p("--udp-payload", self.udp_payload.to_string());
                p(
                    "--udp-engine",
                    match self.udp_engine {
                        UdpEngine::Kernel => "kernel",
                        UdpEngine::Xdp => "xdp",
                    }
                    .into(),
                );
                p("--udp-timeout", fmt_f(self.udp_timeout));
                if self.udp_engine == UdpEngine::Xdp {
                    if let Some(i) = &self.xdp_iface {
                        p("--xdp-iface", i.clone());
                    }
                    p("--xdp-queue", self.xdp_queue.to_string());
                    if let Some(m) = &self.xdp_dst_mac {
                        p("--xdp-dst-mac", m.clone());
                    }
                    p("--xdp-mode", self.xdp_mode.clone());
                }
            }
            Protocol::Ping => {}
        }
        if let Some(pid) = self.server_pid {
            p("--server-pid", pid.to_string());
        }
        if let Some(core) = self.server_core {
            p("--server-core", core.to_string());
        }
        if !self.cpus.is_empty() {
            let l: Vec<String> = self.cpus.iter().map(|c| c.to_string()).collect();
            p("--cpus", l.join(","));
        }
        if self.inject_stall_ms > 0.0 {
            p("--inject-stall", fmt_f(self.inject_stall_ms));
        }
        if let Some(us) = self.poll_us {
            p("--poll-us", us.to_string());
        }
        p("--seed", self.seed.to_string());
        if let Some(f) = &self.tls_ca {
            p("--tls-ca", f.clone());
        }
        if let Some(n) = &self.tls_sni {
            p("--tls-sni", n.clone());
        }
        if let Some(v) = &self.tls_version {
            p("--tls-version", v.clone());
        }
        if let Some(h) = self.handshake {
            p(
                "--handshake",
                match h {
                    Handshake::Full => "full",
                    Handshake::Resumed => "resumed",
                }
                .into(),
            );
        }
        if self.tls {
            a.push("--tls".into());
        }
        if self.tls_insecure {
            a.push("--tls-insecure".into());
        }
        if self.stall_probe {
            a.push("--stall-probe".into());
        }
        if self.protocol == Protocol::Memcache {
            a.push(if self.prefill { "--prefill" } else { "--no-prefill" }.into());
            a.push(if self.verify { "--verify" } else { "--no-verify" }.into());
        }
        a
    }

    /// `to_args` as one shell-ready line.
    pub fn command_line(&self) -> String {
        let mut s = String::from("p99-bench");
        for a in self.to_args() {
            let _ = write!(s, " {a}");
        }
        s
    }
}

pub fn fmt_f(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn flags_round_trip_through_the_command_line() {
        let c = Config::parse(&args(
            "-P memcache -s 10.0.0.1:11211 -c 32 -d 4 --rate=50000 --keys 5000 --popularity zipf:0.9 \
             --multiget 4 --ramp 1000:500:3000:0.5 --cpus 1,3 --no-prefill",
        ))
        .unwrap()
        .unwrap();
        let again = Config::parse(&c.to_args()).unwrap().unwrap();
        assert_eq!(again.to_args(), c.to_args());
        assert_eq!(again.popularity, Popularity::Zipf(0.9));
        assert_eq!(again.ramp.as_ref().unwrap().step_secs, 0.5);
        assert_eq!(again.cpus, vec![1, 3]);
        assert!(!again.prefill);
    }

    #[test]
    fn tls_flags_round_trip_through_the_command_line() {
        let c = Config::parse(&args(
            "--tls --tls-ca /tmp/ca.pem --tls-sni localhost --tls-version 1.3 --handshake resumed",
        ))
        .unwrap()
        .unwrap();
        let again = Config::parse(&c.to_args()).unwrap().unwrap();
        assert_eq!(again.to_args(), c.to_args());
        assert!(again.tls && !again.tls_insecure);
        assert_eq!(again.tls_ca.as_deref(), Some("/tmp/ca.pem"));
        assert_eq!(again.tls_sni.as_deref(), Some("localhost"));
        assert_eq!(again.handshake, Some(Handshake::Resumed));
        let i = Config::parse(&args("--tls --tls-insecure")).unwrap().unwrap();
        assert!(Config::parse(&i.to_args()).unwrap().unwrap().tls_insecure);
    }

    #[test]
    fn bad_flags_are_rejected_with_a_message() {
        for bad in [
            "--protocol smtp",
            "--connections",
            "--pipeline 0",
            "--key-size 3 --keys 100000",
            "--popularity zipf:1",
            "--ramp 10:0:5",
            "--udp-payload 4",
            "--bogus 1",
            "--tls-insecure",
            "--tls",
            "--tls --tls-insecure --tls-ca ca.pem",
            "--tls --tls-insecure --tls-version 1.1",
            "--tls --tls-insecure --handshake full -P memcache",
            "--tls --tls-insecure --handshake resumed -r 1000",
            "--tls --tls-insecure --handshake sometimes",
            "-P udp --tls --tls-insecure",
        ] {
            let e = Config::parse(&args(bad)).err();
            assert!(e.is_some(), "accepted: {bad}");
        }
    }
}
