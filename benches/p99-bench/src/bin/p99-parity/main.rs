//! p99-parity: the side-by-side benchmark behind `make parity`.
//!
//! For each scenario (module, ping, cache, udp) it starts every *built* variant pinned to one
//! core, drives it with p99-bench's load (in process, pinned to the other core), interleaves the
//! variants over several rounds so machine drift hits them all alike, and prints two tables per
//! scenario. The first: median requests/s of closed-loop rounds and the server's CPU time per
//! request, each as a ratio to the all-C baseline with its spread over rounds, whose peak it
//! was, and a verdict (faster / slower / within noise, by a rule printed under the table). The
//! second: latency percentiles at a common fixed open-loop rate, the machine's own stalls
//! measured during those runs (percentiles the stalls alone explain are marked), and two
//! redlines from a fine rate ramp (p99 < 1 ms and p99.9 < 1 ms).
//! Variants that are not built are listed as such, never left out. Every figure, the machine,
//! the git revision and the p99-bench command of each run go to build/parity/results.json; SVG
//! plots go next to it.

#![allow(dead_code)]

#[path = "../../client.rs"]
mod client;
#[path = "../../config.rs"]
mod config;
#[path = "../../json.rs"]
mod json;
mod module;
mod netns;
mod proxy;
#[path = "../../run.rs"]
mod run;
#[path = "../../stall.rs"]
mod stall;
#[path = "../../stats.rs"]
mod stats;
mod svg;
#[path = "../../tls.rs"]
mod tls;
mod tls_scenarios;
#[path = "../../workload.rs"]
mod workload;
#[path = "../../xdp_sender.rs"]
mod xdp_sender;

use config::{Config, Protocol};
use json::J;
use run::Report;
use stats::Counts;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: p99-parity [flags]
  --quick                  short run (about 1 min): 3 rounds, 0.4 s runs, 0.25 s ramp steps
  --rounds N               interleaved closed-loop rounds per scenario (default 5: with fewer,
                           the verdict rule calls two equal servers different too often)
  --latency-rounds N       interleaved rounds at the common fixed rate (default 3; the TLS
                           scenarios run at most --tls-rounds of them)
  --warmup SECS            warm-up before each run and ramp step (default 0.1; servers are
                           started, connected and prefilled before it)
  --duration SECS          measured time of each run (default 1.0)
  --ramp-secs SECS         length of each redline ramp step (default 0.75)
  --ladder F,F,...         fixed ramp rates as fractions of the variant's median peak, run in
                           order until one fails p99 < 1 ms (default: a search, see the README:
                           from 0.05 of the peak, doubling while steps pass and halving while
                           they fail (down to 0.004), then splitting the gap until the redline
                           lies between two steps at most 25% apart; the p99.9 search tests
                           the floor first; a step the machine failed is run again, at most
                           twice: see the legend)
  --latency-fraction F     fixed open-loop rate for the latency columns, as a fraction of the
                           slowest variant's median peak (default 0.25: open loop sends one
                           request per write, which costs a server more than pipelined load)
  --scenarios LIST         any of module,ping,cache,udp,tls-ping,tls-cache,tls-handshake
                           (default all of these); opt-in: proxy
                           (memcache through nutcracker, CPU per request of proxy and server)
                           and check (the benchmark's own test: pingserver-c against a twin of
                           itself and a copy slowed on purpose; verdicts within noise / slower)
  --tls-rounds N           interleaved rounds of the TLS scenarios (default 4; --quick 3)
  --bin-dir DIR            where the servers are (default build/bin)
  --out DIR                results and plots (default build/parity)
  --server-cpu N           core for the servers (default 0)
  --load-cpu N             core for the generator (default 1)
  --ping-args '...'        p99-bench flags for the ping workload
  --cache-args '...'       p99-bench flags for the cache workload
  --udp-args '...'         p99-bench flags for the UDP workload
  --module-args '...'      flags for the module-level store benchmark (default --ops 500000)
  --inject-ramp-stall MS   test only: the first attempt of every ramp step has a stall of MS
                           ms on the server core (a real-time thread spinning; needs root)
";

/// CPU time the slowed server of the `check` scenario burns per request, in ns.
const CHECK_BURN_NS: u64 = 2000;

/// Every scenario `--scenarios` knows; `check` and `proxy` are not run by default.
const SCENARIOS: [&str; 9] =
    ["module", "ping", "cache", "udp", "tls-ping", "tls-cache", "tls-handshake", "check", "proxy"];
/// The scenarios a run without `--scenarios` has.
const DEFAULT_SCENARIOS: usize = 7;

#[derive(Clone)]
struct Opts {
    quick: bool,
    rounds: usize,
    /// Rounds of the fixed-rate latency runs.
    latency_rounds: usize,
    /// Rounds of the TLS scenarios (fewer, to keep `make parity` within its time).
    tls_rounds: usize,
    warmup: f64,
    duration: f64,
    ramp_secs: f64,
    /// Fixed ramp rates (fractions of the peak); None: the redline search.
    ladder: Option<Vec<f64>>,
    latency_fraction: f64,
    scenarios: Vec<String>,
    bin_dir: PathBuf,
    out: PathBuf,
    server_cpu: usize,
    load_cpu: usize,
    ping_args: Vec<String>,
    cache_args: Vec<String>,
    udp_args: Vec<String>,
    module_args: Vec<String>,
    /// Test only: a stall (ms) injected into the first attempt of every ramp step.
    inject_ramp_stall: f64,
}

fn parse_opts(args: &[String]) -> Result<Option<Opts>, String> {
    let mut o = Opts {
        quick: false,
        rounds: 5,
        latency_rounds: 3,
        tls_rounds: 4,
        warmup: 0.1,
        duration: 1.0,
        ramp_secs: 0.75,
        ladder: None,
        latency_fraction: 0.25,
        scenarios: SCENARIOS[..DEFAULT_SCENARIOS].iter().map(|s| s.to_string()).collect(),
        bin_dir: "build/bin".into(),
        out: "build/parity".into(),
        server_cpu: 0,
        load_cpu: 1,
        ping_args: Vec::new(),
        cache_args: Vec::new(),
        udp_args: Vec::new(),
        module_args: Vec::new(),
        inject_ramp_stall: 0.0,
    };
    let words = |s: String| s.split_whitespace().map(String::from).collect::<Vec<_>>();
    let mut explicit: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let flag = args[i].as_str();
        let mut val = || -> Result<String, String> {
            i += 1;
            args.get(i).cloned().ok_or_else(|| format!("{flag}: missing value"))
        };
        let num = |v: String| v.parse::<f64>().map_err(|_| format!("{flag}: bad number '{v}'"));
        match flag {
            "-h" | "--help" => return Ok(None),
            "--quick" => o.quick = true,
            "--rounds" => {
                o.rounds = num(val()?)? as usize;
                explicit.push("rounds");
            }
            "--latency-rounds" => {
                o.latency_rounds = num(val()?)? as usize;
                explicit.push("latency-rounds");
            }
            "--inject-ramp-stall" => o.inject_ramp_stall = num(val()?)?,
            "--warmup" => {
                o.warmup = num(val()?)?;
                explicit.push("warmup");
            }
            "--duration" => {
                o.duration = num(val()?)?;
                explicit.push("duration");
            }
            "--ramp-secs" => {
                o.ramp_secs = num(val()?)?;
                explicit.push("ramp");
            }
            "--ladder" => {
                o.ladder = Some(
                    val()?
                        .split(',')
                        .map(|f| f.parse::<f64>().map_err(|_| format!("--ladder: bad '{f}'")))
                        .collect::<Result<_, _>>()?,
                );
                explicit.push("ladder");
            }
            "--latency-fraction" => o.latency_fraction = num(val()?)?,
            "--tls-rounds" => {
                o.tls_rounds = num(val()?)? as usize;
                explicit.push("tls-rounds");
            }
            "--scenarios" => o.scenarios = val()?.split(',').map(String::from).collect(),
            "--bin-dir" => o.bin_dir = val()?.into(),
            "--out" => o.out = val()?.into(),
            "--server-cpu" => o.server_cpu = num(val()?)? as usize,
            "--load-cpu" => o.load_cpu = num(val()?)? as usize,
            "--ping-args" => o.ping_args = words(val()?),
            "--cache-args" => o.cache_args = words(val()?),
            "--udp-args" => o.udp_args = words(val()?),
            "--module-args" => o.module_args = words(val()?),
            f => return Err(format!("unknown flag '{f}' (see --help)")),
        }
        i += 1;
    }
    if o.quick {
        if !explicit.contains(&"rounds") {
            o.rounds = 3;
        }
        if !explicit.contains(&"latency-rounds") {
            o.latency_rounds = 2;
        }
        if !explicit.contains(&"duration") {
            o.duration = 0.4;
        }
        if !explicit.contains(&"ramp") {
            o.ramp_secs = 0.25;
        }
        if !explicit.contains(&"tls-rounds") {
            o.tls_rounds = 3;
        }
    }
    for s in &o.scenarios {
        if !SCENARIOS.contains(&s.as_str()) {
            return Err(format!("--scenarios: unknown '{s}'"));
        }
    }
    if o.rounds == 0
        || o.tls_rounds == 0
        || o.latency_rounds == 0
        || o.duration <= 0.0
        || o.ladder.as_ref().is_some_and(|l| l.is_empty())
    {
        return Err(
            "need --rounds, --latency-rounds, --tls-rounds >= 1, --duration > 0 and a non-empty --ladder"
                .into(),
        );
    }
    Ok(Some(o))
}

/// How a variant stands in its table.
#[derive(Clone, Copy, PartialEq)]
enum Role {
    Baseline,
    Candidate,
    Reference,
}

struct Spec {
    name: String,
    role: Role,
    /// The program, or why there is none.
    program: Result<PathBuf, String>,
    /// Arguments given the port (and, for UDP, the interface).
    args: Vec<String>,
}

fn find_built(o: &Opts, name: &str) -> Result<PathBuf, String> {
    let p = o.bin_dir.join(name);
    if p.is_file() {
        return Ok(p);
    }
    let t = Path::new("target/release").join(name);
    if t.is_file() {
        return Ok(t);
    }
    Err(format!("not built ({} missing)", p.display()))
}

fn find_on_path(name: &str) -> Result<PathBuf, String> {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file()))
        .ok_or_else(|| format!("not installed ({name} not on PATH)"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// A server process pinned to its core, stopped on drop.
struct Server {
    child: Child,
    command: String,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(2) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

enum Probe {
    Tcp,
    Udp,
}

fn start_server(
    program: &Path,
    args: &[String],
    cpu: usize,
    netns: Option<&str>,
    addr: &str,
    probe: Probe,
    log: &Path,
) -> Result<Server, String> {
    let mut argv: Vec<String> = Vec::new();
    if let Some(ns) = netns {
        argv.extend(["ip", "netns", "exec", ns].map(String::from));
    }
    argv.extend(["taskset".into(), "-c".into(), cpu.to_string(), program.display().to_string()]);
    argv.extend(args.iter().cloned());
    let logf = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(logf.try_clone().map_err(|e| e.to_string())?)
        .stderr(logf)
        .spawn()
        .map_err(|e| format!("{}: {e}", argv[0]))?;
    let mut s = Server { child, command: argv.join(" "), addr: addr.to_string() };
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        if let Ok(Some(st)) = s.child.try_wait() {
            let out = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!(
                "exited at start ({st}): {}",
                out.trim().lines().last().unwrap_or("")
            ));
        }
        let up = match probe {
            Probe::Tcp => TcpStream::connect(addr).is_ok(),
            Probe::Udp => udp_answers(addr),
        };
        if up {
            return Ok(s);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Err(format!("not answering on {addr} after 5 s"))
}

fn udp_answers(addr: &str) -> bool {
    let Ok(s) = UdpSocket::bind("0.0.0.0:0") else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
    if s.connect(addr).is_err() || s.send(b"PING0000").is_err() {
        return false;
    }
    let mut b = [0u8; 64];
    matches!(s.recv(&mut b), Ok(n) if n == 8 && &b[..4] == b"PONG")
}

struct VariantRun {
    spec: Spec,
    server: Option<Server>,
    /// Why it has no figures (not built, failed to start, failed during a run).
    problem: Option<String>,
    peaks: Vec<Report>,
    lats: Vec<Report>,
    ramp: Option<run::RampResult>,
    /// How the server was started (taskset, netns, program, flags).
    server_command: Option<String>,
}

impl VariantRun {
    fn median_peak(&self) -> Option<f64> {
        median(self.peaks.iter().map(|r| r.rps).collect())
    }

    fn median_cpu(&self) -> Option<f64> {
        median(self.peaks.iter().filter_map(|r| r.server_cpu_pct).collect())
    }

    fn median_gen_cpu(&self) -> Option<f64> {
        median(self.peaks.iter().filter_map(|r| r.generator_cpu_pct).collect())
    }

    fn median_core_busy(&self) -> Option<f64> {
        median(self.peaks.iter().filter_map(|r| r.server_core_busy_pct).collect())
    }

    /// Server CPU microseconds per request, one figure per closed-loop round.
    fn cpu_per_request(&self) -> Vec<f64> {
        self.peaks.iter().filter_map(|r| r.server_us_per_request()).collect()
    }

    fn median_cpu_per_request(&self) -> Option<f64> {
        median(self.cpu_per_request())
    }

    fn median_gen_per_request(&self) -> Option<f64> {
        median(self.peaks.iter().filter_map(|r| r.generator_us_per_request()).collect())
    }

    /// The stalls of every latency run, merged.
    fn merged_stalls(&self) -> Option<stall::Stalls> {
        let mut it = self.lats.iter().filter_map(|r| r.stalls.as_ref());
        let mut s = it.next()?.clone();
        for o in it {
            s.merge(o);
        }
        Some(s)
    }

    fn merged_latency(&self) -> Option<Counts> {
        let mut it = self.lats.iter();
        let mut c = it.next()?.counts.clone();
        for r in it {
            c.merge(&r.counts);
        }
        Some(c)
    }
}

/// Per-round ratios of `f(variant) / f(baseline)` over the rounds both have (rounds are
/// interleaved, so round i of each ran minutes apart at most): the median, lowest and highest.
fn round_ratios(
    v: &VariantRun,
    base: &VariantRun,
    f: impl Fn(&Report) -> Option<f64>,
) -> Option<(f64, f64, f64)> {
    let r: Vec<f64> = v
        .peaks
        .iter()
        .zip(base.peaks.iter())
        .filter_map(|(a, b)| match (f(a), f(b)) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        })
        .collect();
    let lo = r.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    median(r).map(|m| (m, lo, hi))
}

/// What the rounds say about a variant against the baseline.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Verdict {
    Faster,
    Slower,
    WithinNoise,
    /// Fewer than two rounds of either: no spread, so no verdict.
    TooFewRounds,
}

impl Verdict {
    fn text(self) -> &'static str {
        match self {
            Verdict::Faster => "faster",
            Verdict::Slower => "slower",
            Verdict::WithinNoise => "within noise",
            Verdict::TooFewRounds => "too few rounds",
        }
    }
}

/// The verdict rule (printed under the table): server CPU per request of every round of the
/// variant against every round of the baseline; `faster` when the variant's costliest round was
/// cheaper than the baseline's cheapest, `slower` when its cheapest was costlier than the
/// baseline's costliest, `within noise` when the two ranges overlap. For two equal servers and
/// n interleaved rounds each, the ranges fail to overlap by chance with probability
/// 2 (n!)^2 / (2n)!: 10% at 3 rounds, 0.8% at 5.
fn verdict(variant: &[f64], baseline: &[f64]) -> Verdict {
    if variant.len() < 2 || baseline.len() < 2 {
        return Verdict::TooFewRounds;
    }
    let lo = |v: &[f64]| v.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = |v: &[f64]| v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if hi(variant) < lo(baseline) {
        Verdict::Faster
    } else if lo(variant) > hi(baseline) {
        Verdict::Slower
    } else {
        Verdict::WithinNoise
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

struct Scenario {
    key: &'static str,
    title: String,
    workload: Config,
    variants: Vec<VariantRun>,
    latency_rate: Option<f64>,
    /// Length of the redline ramp's steps, in seconds.
    ramp_secs: f64,
    notes: Vec<String>,
}

fn workload(o: &Opts, protocol: Protocol, extra: &[String]) -> Result<Config, String> {
    let mut base: Vec<String> = match protocol {
        Protocol::Ping => "--protocol ping --connections 16 --pipeline 8",
        Protocol::Memcache => {
            "--protocol memcache --connections 16 --pipeline 8 --get-ratio 0.9 --key-size 32 \
             --value-size 100 --keys 100000 --popularity uniform --multiget 1"
        }
        Protocol::Udp => "--protocol udp --connections 8 --pipeline 8 --udp-payload 32",
    }
    .split_whitespace()
    .map(String::from)
    .collect();
    base.extend(extra.iter().cloned());
    let mut c = Config::parse(&base)?.ok_or("help is not a workload")?;
    if protocol == Protocol::Udp && !extra.iter().any(|a| a.starts_with("--udp-engine")) {
        // AF_XDP sender by default, so the generator is not the bottleneck; the interface is
        // filled in once the veth pair exists (and kernel sockets are used if it cannot run).
        c.udp_engine = config::UdpEngine::Xdp;
    }
    c.warmup = o.warmup;
    c.duration = o.duration;
    c.drain = 1.0;
    c.cpus = vec![o.load_cpu];
    c.server_core = Some(o.server_cpu);
    c.progress = Some(false);
    Ok(c)
}

fn run_scenario(o: &Opts, sc: &mut Scenario, netns: Option<&netns::VethPair>) {
    let log_dir = o.out.join("logs");
    let _ = std::fs::create_dir_all(&log_dir);
    let proto = sc.workload.protocol;
    sc.ramp_secs = o.ramp_secs;
    // Start every built variant once; idle servers sleep while the others are measured.
    for v in sc.variants.iter_mut() {
        let program = match &v.spec.program {
            Ok(p) => p.clone(),
            Err(why) => {
                v.problem = Some(why.clone());
                continue;
            }
        };
        let mut last_err = String::new();
        for _attempt in 0..3 {
            let port = free_port();
            let host = netns.map_or("127.0.0.1".to_string(), |n| n.server_ip.clone());
            let addr = format!("{host}:{port}");
            let args: Vec<String> = v
                .spec
                .args
                .iter()
                .map(|a| a.replace("{port}", &port.to_string()).replace("{host}", &host))
                .map(|a| netns.map_or(a.clone(), |n| a.replace("{iface}", &n.server_if)))
                .collect();
            let probe = if proto == Protocol::Udp { Probe::Udp } else { Probe::Tcp };
            let log = log_dir.join(format!("{}-{}.log", sc.key, v.spec.name));
            let started = if let Some(n) = netns {
                // The probe must come from the client namespace too.
                std::thread::scope(|s| {
                    s.spawn(|| {
                        n.enter_client()?;
                        start_server(
                            &program,
                            &args,
                            o.server_cpu,
                            Some(&n.server_ns),
                            &addr,
                            probe,
                            &log,
                        )
                    })
                    .join()
                    .unwrap_or_else(|_| Err("panicked".into()))
                })
            } else {
                start_server(&program, &args, o.server_cpu, None, &addr, probe, &log)
            };
            match started {
                Ok(s) => {
                    v.server_command = Some(s.command.clone());
                    v.server = Some(s);
                    break;
                }
                Err(e) => last_err = e,
            }
        }
        if v.server.is_none() {
            v.problem = Some(format!("failed to start: {last_err}"));
            continue;
        }
        if proto == Protocol::Memcache && sc.workload.prefill {
            let mut c = sc.workload.clone();
            c.server = v.server.as_ref().unwrap().addr.clone();
            if let Err(e) = client::prefill(&c) {
                v.problem = Some(e);
                v.server = None;
            }
        }
    }
    let runnable: Vec<usize> =
        (0..sc.variants.len()).filter(|&i| sc.variants[i].problem.is_none()).collect();
    if runnable.is_empty() {
        return;
    }
    if let (Protocol::Udp, Some(n)) = (proto, netns) {
        if sc.workload.udp_engine == config::UdpEngine::Xdp {
            sc.workload.xdp_iface = Some(n.client_if.clone());
            sc.workload.xdp_dst_mac = n.server_mac().ok();
            // A short probe; if the AF_XDP sender cannot run here, fall back to kernel sockets.
            let mut probe = sc.workload.clone();
            let s = sc.variants[runnable[0]].server.as_ref().unwrap();
            probe.server = s.addr.clone();
            probe.warmup = 0.0;
            probe.duration = 0.2;
            let r = std::thread::scope(|sp| {
                sp.spawn(|| {
                    n.enter_client()?;
                    run::run_once(&probe)
                })
                .join()
                .unwrap_or_else(|_| Err("panicked".into()))
            });
            match r {
                Ok(_) => {
                    sc.notes.push("generator: AF_XDP sender (p99::xdp) on the client veth".into())
                }
                Err(e) => {
                    sc.notes.push(format!(
                        "AF_XDP sender could not run ({e}); kernel UDP sockets used instead"
                    ));
                    sc.workload.udp_engine = config::UdpEngine::Kernel;
                }
            }
        } else {
            sc.notes.push("generator: kernel UDP sockets".into());
        }
    }
    let run_in_ns = |c: &Config| -> Result<Report, String> {
        match netns {
            None => run::run_once(c),
            Some(n) => std::thread::scope(|s| {
                s.spawn(|| {
                    n.enter_client()?;
                    run::run_once(c)
                })
                .join()
                .unwrap_or_else(|_| Err("generator panicked".into()))
            }),
        }
    };
    let cfg_for = |v: &VariantRun, rate: f64| {
        let mut c = sc.workload.clone();
        let s = v.server.as_ref().unwrap();
        c.server = s.addr.clone();
        c.server_pid = Some(s.child.id());
        c.rate = rate;
        // Open-loop runs count the machine's stalls beside the latency they measure.
        c.stall_probe = rate > 0.0;
        // The server was prefilled once at start; runs do not repeat it.
        c.prefill = false;
        c
    };
    // Phase 1: closed-loop peak, interleaved, the order rotating each round.
    for round in 0..o.rounds {
        for k in 0..runnable.len() {
            let i = runnable[(k + round) % runnable.len()];
            let v = &mut sc.variants[i];
            if v.problem.is_some() {
                continue;
            }
            let c = cfg_for(v, 0.0);
            progress(format_args!(
                "[{}] round {}/{}: {} closed loop",
                sc.key,
                round + 1,
                o.rounds,
                v.spec.name
            ));
            match run_in_ns(&c) {
                Ok(r) => v.peaks.push(r),
                Err(e) => v.problem = Some(format!("run failed: {e}")),
            }
        }
    }
    // A handshake scenario has no open-loop phases: its figures are the closed-loop rounds.
    if sc.workload.handshake.is_some() {
        for v in sc.variants.iter_mut() {
            v.server = None;
        }
        return;
    }
    // Phase 2: latency at one common fixed rate (open loop), interleaved.
    let slowest =
        runnable.iter().filter_map(|&i| sc.variants[i].median_peak()).fold(f64::INFINITY, f64::min);
    if slowest.is_finite() && slowest > 0.0 {
        let rate = (slowest * o.latency_fraction / 1000.0).round().max(1.0) * 1000.0;
        sc.latency_rate = Some(rate);
        for round in 0..o.latency_rounds {
            for k in 0..runnable.len() {
                let i = runnable[(k + round) % runnable.len()];
                let v = &mut sc.variants[i];
                if v.problem.is_some() {
                    continue;
                }
                let c = cfg_for(v, rate);
                progress(format_args!(
                    "[{}] round {}/{}: {} at {rate} req/s",
                    sc.key,
                    round + 1,
                    o.latency_rounds,
                    v.spec.name
                ));
                match run_in_ns(&c) {
                    Ok(r) => v.lats.push(r),
                    Err(e) => v.problem = Some(format!("run failed: {e}")),
                }
            }
        }
    }
    // Phase 3: redline ramp per variant, at fractions of its own median peak. What is usual
    // for the machine's >= 1 ms stalls comes from every variant's fixed-rate runs.
    let prior: Vec<f64> =
        sc.variants.iter().flat_map(|v| v.lats.iter().filter_map(run::long_stalls_per_s)).collect();
    for &i in &runnable {
        let v = &mut sc.variants[i];
        let Some(peak) = v.median_peak().filter(|_| v.problem.is_none()) else { continue };
        progress(format_args!("[{}] {}: redline ramp", sc.key, v.spec.name));
        // The variant's fixed-rate round with the highest p99 is the search's first step (an
        // open-loop run at a rate it needs anyway; the worst round, so that a step counted as
        // passed passed in every round).
        let seed = v
            .lats
            .iter()
            .filter(|r| r.stalls.is_some())
            .max_by(|a, b| a.pct(99.0).total_cmp(&b.pct(99.0)))
            .cloned();
        let mut c = cfg_for(v, 0.0);
        // Every step counts the machine's stalls: a step they failed is run again.
        c.stall_probe = true;
        c.inject_stall_ms = o.inject_ramp_stall;
        let ramp = || match &o.ladder {
            Some(l) => {
                let rates: Vec<f64> = l
                    .iter()
                    .map(|f| (peak * f / 100.0).round() * 100.0)
                    .filter(|r| *r > 0.0)
                    .collect();
                run::ramp(&c, &rates, o.ramp_secs, &prior)
            }
            None => run::ramp_search(&c, redline_search(peak), o.ramp_secs, &prior, seed.as_ref()),
        };
        let res = match netns {
            None => ramp(),
            Some(n) => std::thread::scope(|s| {
                s.spawn(|| {
                    n.enter_client()?;
                    ramp()
                })
                .join()
                .unwrap_or_else(|_| Err("generator panicked".into()))
            }),
        };
        match res {
            Ok(r) => v.ramp = Some(r),
            Err(e) => v.problem = Some(format!("ramp failed: {e}")),
        }
    }
    progress(format_args!(""));
    // Servers stop here (drop), before the next scenario starts.
    for v in sc.variants.iter_mut() {
        v.server = None;
    }
}

/// The default redline search for a variant whose median peak is `peak` req/s: from 0.05 of
/// it, never below 0.004 of it (nor 200 req/s) or above it, steps at most 25% apart at the end.
fn redline_search(peak: f64) -> run::Search {
    run::Search {
        start: peak * 0.05,
        floor: (peak * 0.004).max(200.0).min(peak),
        top: peak,
        max_ratio: 1.25,
    }
}

/// Whose limit a closed-loop peak shows: the server's only when its process kept its core at
/// least 95% busy. Otherwise the generator did not push hard enough, or, when other processes
/// took a visible share of the server's core, the machine was shared.
fn peak_label(server_cpu: Option<f64>, core_busy: Option<f64>) -> &'static str {
    match (server_cpu, core_busy) {
        (Some(c), _) if c >= run::SERVER_BOUND_PCT => "server's",
        (Some(c), Some(core)) if core - c > 10.0 => "core shared",
        (Some(_), _) => "generator-bound",
        (None, _) => "cpu unknown",
    }
}

/// Microseconds with their unit.
fn fmt_dur(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0} us")
    }
}

fn fmt_us(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1}ms", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// "1.02 (0.95-1.08)": a median ratio with its lowest and highest round.
fn fmt_spread(r: Option<(f64, f64, f64)>) -> String {
    r.map_or("-".into(), |(m, lo, hi)| format!("{m:.2} ({lo:.2}-{hi:.2})"))
}

/// A latency percentile, marked `*` when the machine's stalls alone explain it.
fn fmt_marked(us: f64, explained: Option<f64>) -> String {
    let mark = explained.is_some_and(|e| us <= e);
    format!("{}{}", fmt_us(us), if mark { "*" } else { "" })
}

fn print_table(sc: &Scenario) {
    let base = sc.variants.iter().find(|v| v.spec.role == Role::Baseline);
    let base_peak = base.and_then(|v| v.median_peak());
    let base_cost = base.map(|b| b.cpu_per_request()).unwrap_or_default();
    let reference = sc.variants.iter().find(|v| v.spec.role == Role::Reference);
    let ref_peak = reference.and_then(|v| v.median_peak());
    println!();
    println!("== {} ==", sc.title);
    let w = &sc.workload;
    println!(
        "   load: p99-bench {}, closed loop {} conns x {} deep for peak; latency open loop at {} req/s",
        match w.protocol {
            Protocol::Ping => "ping".to_string(),
            Protocol::Memcache => format!(
                "memcache get:set {:.0}:{:.0}, key {} B, value {} B, {} keys{}",
                w.get_ratio * 100.0,
                (1.0 - w.get_ratio) * 100.0,
                w.key_size,
                w.value_size,
                w.keys,
                if w.multiget > 1 { format!(", multiget {}", w.multiget) } else { String::new() }
            ),
            Protocol::Udp => format!("udp ping, {} B datagrams", w.udp_payload),
        },
        w.connections,
        w.pipeline,
        sc.latency_rate.map_or("-".into(), svg::group)
    );
    let ref_col = reference.is_some();
    // Table 1: throughput, CPU per request, verdict.
    print!("{:<24} {:>11} {:>18}", "variant", "req/s", "x base (range)");
    if ref_col {
        print!(" {:>7}", "x memcd");
    }
    println!(
        " {:>4} {:>4} {:>15} {:>8} {:>8} {:>18} {:>14}",
        "srv%", "gen%", "peak is", "srv us/r", "gen us/r", "x base cpu (range)", "verdict"
    );
    for v in &sc.variants {
        if let Some(p) = &v.problem {
            if v.peaks.is_empty() {
                println!("{:<24} {}", v.spec.name, p);
                continue;
            }
        }
        let peak = v.median_peak();
        let is_base = v.spec.role == Role::Baseline;
        let tput = base.filter(|_| !is_base).and_then(|b| round_ratios(v, b, |r| Some(r.rps)));
        // Baseline's CPU per request over the variant's: above 1 means the variant is cheaper.
        let cost = base
            .filter(|_| !is_base)
            .and_then(|b| round_ratios(b, v, |r| r.server_us_per_request()));
        let verdict_text = if is_base {
            "baseline".to_string()
        } else {
            verdict(&v.cpu_per_request(), &base_cost).text().to_string()
        };
        let f = |r: Option<f64>| r.map_or("-".into(), |x| format!("{x:.2}"));
        let pc = |x: Option<f64>| x.map_or("-".into(), |c| format!("{c:.0}"));
        let us = |x: Option<f64>| x.map_or("-".into(), |c| format!("{c:.3}"));
        print!(
            "{:<24} {:>11} {:>18}",
            v.spec.name,
            peak.map_or("-".into(), svg::group),
            if is_base { "1.00".into() } else { fmt_spread(tput) }
        );
        if ref_col {
            print!(" {:>7}", f(ratio(peak, ref_peak)));
        }
        println!(
            " {:>4} {:>4} {:>15} {:>8} {:>8} {:>18} {:>14}",
            pc(v.median_cpu()),
            pc(v.median_gen_cpu()),
            peak_label(v.median_cpu(), v.median_core_busy()),
            us(v.median_cpu_per_request()),
            us(v.median_gen_per_request()),
            if is_base { "1.00".into() } else { fmt_spread(cost) },
            verdict_text
        );
        if let Some(p) = &v.problem {
            println!("{:<24} note: {}", "", p);
        }
    }
    if base_peak.is_none() {
        if let Some(b) = base {
            println!("   (no ratios: baseline {} has no figures)", b.spec.name);
        }
    }
    if w.protocol == Protocol::Memcache {
        let hits: Vec<String> = sc
            .variants
            .iter()
            .filter_map(|v| {
                let (h, m) = v
                    .peaks
                    .iter()
                    .fold((0u64, 0u64), |a, r| (a.0 + r.counts.hits, a.1 + r.counts.misses));
                (h + m > 0)
                    .then(|| format!("{} {:.2}%", v.spec.name, h as f64 * 100.0 / (h + m) as f64))
            })
            .collect();
        if !hits.is_empty() {
            println!("   hit ratio (values checked): {}", hits.join(", "));
        }
    }
    if sc.variants.iter().any(|v| !v.peaks.is_empty()) {
        println!(
            "   req/s: median of closed-loop rounds; x base: median of per-round ratios to the baseline (lowest-highest\n   \
             round). srv%/gen%: server/generator CPU, share of one core. A peak is the server's only at srv% >= 95.\n   \
             srv us/r, gen us/r: CPU time per answered request of the server and of the generator (median round);\n   \
             x base cpu: baseline's server CPU per request over the variant's (above 1: the variant is cheaper).\n   \
             verdict (uses server CPU per request, which compares servers even when the generator set the pace):\n   \
             faster when every round of the variant cost less than every round of the baseline, slower when\n   \
             every round cost more, otherwise within noise (two equal servers over 5 rounds each get\n   \
             'faster' or 'slower' by chance 0.8% of the time)."
        );
    }
    // Table 2: latency at the common rate, the machine's stalls meanwhile, redlines.
    if sc.variants.iter().any(|v| !v.lats.is_empty() || v.ramp.is_some()) {
        let xdp = w.protocol == Protocol::Udp && w.udp_engine == config::UdpEngine::Xdp;
        println!();
        println!(
            "{:<24} {:>8} {:>8} {:>8} {:>8} {:>7} {:>6} {:>8} {:>12} {:>10} {:>10} {:>6}",
            "variant",
            "p50us",
            "p99us",
            "p999us",
            "p9999us",
            ">=100us",
            ">=1ms",
            "longest",
            "1ms by round",
            "redline99",
            "redline999",
            "errors"
        );
        for v in &sc.variants {
            if v.peaks.is_empty() && v.lats.is_empty() {
                continue;
            }
            let lat = v.merged_latency();
            let st = v.merged_stalls();
            let p = |q: f64| {
                lat.as_ref().map_or("-".into(), |c| {
                    fmt_marked(stats::pct_us(&c.hist, q), st.as_ref().map(|s| s.explained_us(q)))
                })
            };
            let by_round: Vec<String> = v
                .lats
                .iter()
                .map(|r| r.stalls.as_ref().map_or("-".into(), |s| s.over_1ms().to_string()))
                .collect();
            let redline = |r: Option<f64>| match &v.ramp {
                Some(ramp) => match r {
                    Some(x) => svg::group(x),
                    None => format!("<{}", svg::group(ramp.lowest_rate().unwrap_or(0.0))),
                },
                None => "-".into(),
            };
            let errors: u64 = v.peaks.iter().chain(v.lats.iter()).map(|r| r.errors_total()).sum();
            println!(
                "{:<24} {:>8} {:>8} {:>8} {:>8} {:>7} {:>6} {:>8} {:>12} {:>10} {:>10} {:>6}",
                v.spec.name,
                p(50.0),
                p(99.0),
                p(99.9),
                p(99.99),
                st.as_ref().map_or("-".into(), |s| s.over_100us().to_string()),
                st.as_ref().map_or("-".into(), |s| s.over_1ms().to_string()),
                st.as_ref().map_or("-".into(), |s| fmt_dur(s.max_us())),
                if by_round.is_empty() { "-".into() } else { by_round.join(",") },
                redline(v.ramp.as_ref().and_then(|r| r.redline_p99)),
                redline(v.ramp.as_ref().and_then(|r| r.redline_p999)),
                errors
            );
            if let Some(c) = &lat {
                let (lag99, lagmax) =
                    (stats::pct_us(&c.send_lag, 99.0), stats::pct_us(&c.send_lag, 100.0));
                if lag99 > 100.0 {
                    println!(
                        "{:<24} note: the generator fell behind its schedule (send lag p99 {}, max {}): \
                         its latency figures include that",
                        "",
                        fmt_dur(lag99),
                        fmt_dur(lagmax)
                    );
                }
            }
            let others = median(
                v.lats
                    .iter()
                    .filter_map(|r| Some(r.server_core_busy_pct? - r.server_cpu_pct?))
                    .collect(),
            );
            if let Some(x) = others.filter(|x| *x > 10.0) {
                println!(
                    "{:<24} note: other processes used {x:.0}% of the server's core during these runs; the stall probe \
                     (real-time) does not count that wait",
                    ""
                );
            }
            if st.as_ref().is_some_and(|s| !s.realtime()) {
                println!("{:<24} note: stall probe without real-time priority: other processes' use of a core counts as stalls", "");
            }
        }
        println!(
            "   Latency: open loop at the fixed rate above, {}, rounds merged.\n   \
             Stalls: the machine's own, measured during those runs by a thread on the server's and on the generator's\n   \
             core that wakes every 200 us (real-time priority) and records how late it woke; counts over both cores\n   \
             and all rounds, and the >= 1 ms count of each round.\n   \
             *: the machine's. A stall of D delays every request due during it, by up to D, so the stalls measured\n   \
             alone would put a share sum(D - x) / (measured time) of requests above latency x; a percentile is\n   \
             marked when that share reaches its tail (1% for p99) at a latency at or above the measured one.\n   \
             redline99 / redline999: highest open-loop rate where that step and every step run below it had p99\n   \
             (p99.9) < 1 ms and no errors ({} s steps); <N: even the lowest step, N, failed. Search: the fixed-rate\n   \
             round with the highest p99 is the first step, then doubling (or halving down to 0.004 of the peak)\n   \
             until the next step up that failed is at most 25% higher; for p99.9 the 0.004 step first, then the gap\n   \
             split alike. Run again (at most twice; results.json keeps the attempts set aside and why): a step\n   \
             failing p99 whose measured stalls alone explain p99 >= 1 ms, or that met more stalls >= 1 ms than the\n   \
             machine's usual (the median per second of the scenario's fixed-rate runs and kept steps, at least 0.5;\n   \
             more: a count a steady usual rate reaches in fewer than 1 window in 50), or whose generator sent late\n   \
             (send lag p99 >= 1 ms). A redline is always the rate of a kept step that passed.{}",
            if xdp { "from the moment each datagram was queued (AF_XDP sender)" } else { "from intended send times" },
            config::fmt_f(sc.ramp_secs),
            if w.protocol == Protocol::Udp { "\n   errors: datagrams without an answer (lost) plus wrong answers." } else { "" }
        );
    }
    for n in &sc.notes {
        println!("   note: {n}");
    }
}

fn report_json(r: &Report) -> J {
    r.to_json()
}

fn scenario_json(sc: &Scenario) -> J {
    let mut o = J::obj();
    o.set("title", sc.title.clone());
    o.set("workload_command", sc.workload.command_line());
    o.set("latency_rate", sc.latency_rate);
    let base_peak =
        sc.variants.iter().find(|v| v.spec.role == Role::Baseline).and_then(|v| v.median_peak());
    let ref_peak =
        sc.variants.iter().find(|v| v.spec.role == Role::Reference).and_then(|v| v.median_peak());
    let mut vs = Vec::new();
    for v in &sc.variants {
        let mut j = J::obj();
        j.set("name", v.spec.name.clone());
        j.set(
            "role",
            match v.spec.role {
                Role::Baseline => "baseline",
                Role::Candidate => "candidate",
                Role::Reference => "reference",
            },
        );
        j.set("program", v.spec.program.as_ref().ok().map(|p| p.display().to_string()));
        j.set("problem", v.problem.clone());
        j.set("server_command", v.server_command.clone());
        let peak = v.median_peak();
        j.set("median_requests_per_s", peak);
        j.set("ratio_to_baseline", ratio(peak, base_peak));
        j.set("ratio_to_reference", ratio(peak, ref_peak));
        j.set("median_server_cpu_pct", v.median_cpu());
        j.set("server_bound", v.median_cpu().map(|c| c >= run::SERVER_BOUND_PCT));
        j.set("median_generator_cpu_pct", v.median_gen_cpu());
        j.set("median_server_core_busy_pct", v.median_core_busy());
        j.set(
            "server_cpu_us_per_request_by_round",
            J::Arr(v.cpu_per_request().into_iter().map(J::Num).collect()),
        );
        j.set("median_server_cpu_us_per_request", v.median_cpu_per_request());
        j.set("median_generator_cpu_us_per_request", v.median_gen_per_request());
        let base = sc.variants.iter().find(|b| b.spec.role == Role::Baseline);
        let spread = |r: Option<(f64, f64, f64)>| {
            r.map_or(J::Null, |(m, lo, hi)| {
                let mut o = J::obj();
                o.set("median", m).set("min", lo).set("max", hi);
                o
            })
        };
        if v.spec.role != Role::Baseline {
            j.set(
                "throughput_ratio_by_round",
                spread(base.and_then(|b| round_ratios(v, b, |r| Some(r.rps)))),
            );
            j.set(
                "cpu_per_request_ratio_by_round",
                spread(base.and_then(|b| round_ratios(b, v, |r| r.server_us_per_request()))),
            );
            let bc = base.map(|b| b.cpu_per_request()).unwrap_or_default();
            j.set("verdict", verdict(&v.cpu_per_request(), &bc).text());
        } else {
            j.set("verdict", "baseline");
        }
        if let Some(st) = v.merged_stalls() {
            j.set("stalls_at_fixed_rate", run::stalls_json(&st));
        }
        if let Some(c) = v.merged_latency() {
            let mut l = J::obj();
            for (name, p) in stats::PERCENTILES {
                l.set(name, stats::pct_us(&c.hist, p));
            }
            j.set("latency_us_at_fixed_rate", l);
            let mut lag = J::obj();
            lag.set("p99", stats::pct_us(&c.send_lag, 99.0))
                .set("max", stats::pct_us(&c.send_lag, 100.0));
            j.set("send_lag_us_at_fixed_rate", lag);
            j.set(
                "percentile_curve_us",
                J::Arr(
                    stats::percentile_curve(&c.hist, 4)
                        .into_iter()
                        .map(|(p, us)| J::Arr(vec![J::Num(p), J::Num(us)]))
                        .collect(),
                ),
            );
        }
        j.set("peak_runs", J::Arr(v.peaks.iter().map(report_json).collect()));
        j.set("latency_runs", J::Arr(v.lats.iter().map(report_json).collect()));
        if let Some(r) = &v.ramp {
            j.set("redline_p99_rps", r.redline_p99);
            j.set("redline_p999_rps", r.redline_p999);
            j.set("lowest_failing_rate_p99", r.bracket(99.0).1);
            j.set("lowest_failing_rate_p999", r.bracket(99.9).1);
            j.set("ramp_steps", J::Arr(r.steps.iter().map(report_json).collect()));
            j.set(
                "ramp_steps_run_again",
                J::Arr(
                    r.discarded
                        .iter()
                        .map(|(rep, why)| {
                            let mut d = report_json(rep);
                            d.set("run_again_because", why.clone());
                            d
                        })
                        .collect(),
                ),
            );
        }
        vs.push(j);
    }
    o.set("variants", J::Arr(vs));
    o.set("notes", J::Arr(sc.notes.iter().map(|n| J::Str(n.clone())).collect()));
    o
}

fn write_plots(o: &Opts, sc: &Scenario) -> Vec<String> {
    let mut files = Vec::new();
    let curves: Vec<svg::Curve> = sc
        .variants
        .iter()
        .filter_map(|v| {
            let c = v.merged_latency()?;
            Some(svg::Curve {
                label: v.spec.name.clone(),
                points: stats::percentile_curve(&c.hist, 4),
            })
        })
        .collect();
    if !curves.is_empty() {
        let f = o.out.join(format!("{}-latency.svg", sc.key));
        let sub = format!(
            "open loop at {} req/s, {} rounds merged; server on cpu {}, load on cpu {}",
            sc.latency_rate.map_or("-".into(), svg::group),
            o.rounds,
            o.server_cpu,
            o.load_cpu
        );
        if std::fs::write(
            &f,
            svg::latency_plot(&format!("{}: latency by percentile", sc.title), &sub, &curves),
        )
        .is_ok()
        {
            files.push(f.display().to_string());
        }
    }
    let base_peak =
        sc.variants.iter().find(|v| v.spec.role == Role::Baseline).and_then(|v| v.median_peak());
    let bars: Vec<svg::Bar> = sc
        .variants
        .iter()
        .map(|v| {
            let rps: Vec<f64> = v.peaks.iter().map(|r| r.rps).collect();
            let peak = v.median_peak();
            let mut note =
                ratio(peak, base_peak).map_or(String::new(), |r| format!("({r:.2}x baseline)"));
            let label = peak_label(v.median_cpu(), v.median_core_busy());
            if label != "server's" {
                note += &format!(" {label}");
            }
            if peak.is_none() {
                note = v.problem.clone().unwrap_or_else(|| "no figures".into());
            }
            svg::Bar {
                label: v.spec.name.clone(),
                value: peak,
                min: rps.iter().cloned().fold(f64::INFINITY, f64::min),
                max: rps.iter().cloned().fold(0.0, f64::max),
                note,
            }
        })
        .collect();
    let f = o.out.join(format!("{}-throughput.svg", sc.key));
    let sub = format!(
        "closed loop, median of {} interleaved rounds (whiskers: slowest to fastest round)",
        o.rounds
    );
    if std::fs::write(&f, svg::throughput_bars(&format!("{}: requests/s", sc.title), &sub, &bars))
        .is_ok()
    {
        files.push(f.display().to_string());
    }
    files
}

fn cmd_out(prog: &str, args: &[&str]) -> Option<String> {
    let o = Command::new(prog).args(args).output().ok()?;
    o.status.success().then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn machine_json() -> J {
    let mut m = J::obj();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string());
    m.set("cpu_model", model);
    m.set("cpus_online", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    m.set("kernel", cmd_out("uname", &["-srvm"]));
    m.set("hostname", cmd_out("uname", &["-n"]));
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    m.set(
        "mem_total",
        mem.lines().next().map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" ")),
    );
    m.set(
        "os",
        std::fs::read_to_string("/etc/debian_version").ok().map(|s| format!("Debian {}", s.trim())),
    );
    m.set(
        "load_average_at_start",
        std::fs::read_to_string("/proc/loadavg").ok().map(|s| s.trim().to_string()),
    );
    m
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = match parse_opts(&args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            print!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("p99-parity: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = real_main(&o, &args) {
        eprintln!("p99-parity: {e}");
        std::process::exit(1);
    }
}

fn real_main(o: &Opts, args: &[String]) -> Result<(), String> {
    let started = Instant::now();
    std::fs::create_dir_all(&o.out).map_err(|e| format!("{}: {e}", o.out.display()))?;
    let ncpu = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if o.server_cpu >= ncpu || o.load_cpu >= ncpu {
        return Err(format!("--server-cpu/--load-cpu must be below {ncpu} (cores online)"));
    }
    let mut results = J::obj();
    results.set("tool", "p99-parity");
    results.set("command", format!("p99-parity {}", args.join(" ")));
    results.set(
        "git_revision",
        cmd_out("git", &["rev-parse", "HEAD"]).map(|r| {
            let dirty = cmd_out("git", &["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{r} (with uncommitted changes)")
            } else {
                r
            }
        }),
    );
    results.set(
        "started_unix",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    );
    results.set("machine", machine_json());
    let mut settings = J::obj();
    settings
        .set("quick", o.quick)
        .set("rounds", o.rounds)
        .set("latency_rounds", o.latency_rounds)
        .set("tls_rounds", o.tls_rounds)
        .set("warmup_s", o.warmup)
        .set("duration_s", o.duration);
    settings.set("ramp_step_s", o.ramp_secs).set(
        "ladder",
        o.ladder
            .as_ref()
            .map_or(J::Str("search".into()), |l| J::Arr(l.iter().map(|f| J::Num(*f)).collect())),
    );
    settings
        .set("latency_fraction", o.latency_fraction)
        .set("server_cpu", o.server_cpu)
        .set("load_cpu", o.load_cpu);
    settings
        .set("server_bound_threshold_pct", run::SERVER_BOUND_PCT)
        .set("redline_objective_us", 1000.0);
    settings.set(
        "ramp_step_run_again_rule",
        format!(
            "a step failing p99 is set aside and run again (at most {} times) when the stalls \
             measured during it alone explain p99 >= the objective, or it met more stalls >= 1 ms \
             than usual (usual: median per second of the scenario's fixed-rate runs and kept \
             steps, at least {}; more: a Poisson count at the usual rate reaches it with \
             probability < {}), or the generator's send lag p99 >= the objective",
            run::STEP_RETRIES,
            run::MIN_USUAL_STALLS_PER_S,
            run::UNUSUAL_STALLS_TAIL
        ),
    );
    settings.set("verdict_rule", "server CPU per request, every round of the variant against every round of the baseline: faster/slower when the ranges do not overlap, otherwise within noise");
    results.set("settings", settings);
    println!(
        "p99-parity: servers on cpu {}, load on cpu {}; per variant, interleaved: {} closed-loop rounds and {} at \
         the fixed rate, {}s each (+{}s warm-up); redline steps of {}s",
        o.server_cpu,
        o.load_cpu,
        o.rounds,
        o.latency_rounds,
        o.duration,
        o.warmup,
        o.ramp_secs
    );
    let mut scen_json = J::obj();
    let mut plots = Vec::new();
    let mut laps = Laps::new();
    // Certificates, machine facts and the like before the first scenario.
    laps.lap("setup");

    if o.scenarios.iter().any(|s| s == "module") {
        let m = module::run(o);
        m.print();
        scen_json.set("module", m.to_json());
        laps.lap("module");
    }
    let mk = |name: &str, role: Role, program: Result<PathBuf, String>, args: &str| Spec {
        name: name.to_string(),
        role,
        program,
        args: args.split_whitespace().map(String::from).collect(),
    };
    if o.scenarios.iter().any(|s| s == "ping") {
        let wl = workload(o, Protocol::Ping, &o.ping_args)?;
        let specs = vec![
            mk(
                "pingserver-c",
                Role::Baseline,
                find_built(o, "pingserver-c"),
                "-p {port} -l {host} -t 1",
            ),
            mk(
                "pingserver-c-p99",
                Role::Candidate,
                find_built(o, "pingserver-c-p99"),
                "-p {port} -l {host} -t 1",
            ),
            mk(
                "pingserver-rs",
                Role::Candidate,
                find_built(o, "pingserver-rs"),
                "-p {port} -l {host} -t 1",
            ),
        ];
        let mut sc = new_scenario("ping", "ping (TCP)", wl, specs);
        run_scenario(o, &mut sc, None);
        print_table(&sc);
        plots.extend(write_plots(o, &sc));
        scen_json.set("ping", scenario_json(&sc));
        laps.lap("ping");
    }
    if o.scenarios.iter().any(|s| s == "check") {
        // The benchmark's own test: the same server three times, once slowed by a fixed CPU
        // burn per request (pingserver-c -b, test only). The twin must come out within noise
        // and the slowed one slower, or the verdict rule (or the machine) cannot be trusted.
        let wl = workload(o, Protocol::Ping, &o.ping_args)?;
        let prog = find_built(o, "pingserver-c");
        let args = "-p {port} -l {host} -t 1";
        let specs = vec![
            mk("pingserver-c", Role::Baseline, prog.clone(), args),
            mk("pingserver-c-twin", Role::Candidate, prog.clone(), args),
            mk("pingserver-c-slowed", Role::Candidate, prog, &format!("{args} -b {CHECK_BURN_NS}")),
        ];
        let mut sc = new_scenario(
            "check",
            "check: pingserver-c vs its twin and a copy slowed by 2 us of CPU per request",
            wl,
            specs,
        );
        run_scenario(o, &mut sc, None);
        print_table(&sc);
        scen_json.set("check", scenario_json(&sc));
        laps.lap("check");
    }
    if o.scenarios.iter().any(|s| s == "cache") {
        let wl = workload(o, Protocol::Memcache, &o.cache_args)?;
        let mc = "-p {port} -l {host} -t 1 -m 1024 -U 0";
        let specs = vec![
            mk("mcserver-slab-epoll", Role::Baseline, find_built(o, "mcserver-slab-epoll"), mc),
            mk("mcserver-p99-epoll", Role::Candidate, find_built(o, "mcserver-p99-epoll"), mc),
            mk("mcserver-slab-uring", Role::Candidate, find_built(o, "mcserver-slab-uring"), mc),
            mk("mcserver-p99-uring", Role::Candidate, find_built(o, "mcserver-p99-uring"), mc),
            mk(
                "memcached -t 1",
                Role::Reference,
                find_on_path("memcached"),
                "-p {port} -l {host} -t 1 -m 1024 -U 0 -u nobody",
            ),
        ];
        let mut sc = new_scenario("cache", "cache (memcache text protocol)", wl, specs);
        run_scenario(o, &mut sc, None);
        print_table(&sc);
        plots.extend(write_plots(o, &sc));
        scen_json.set("cache", scenario_json(&sc));
        laps.lap("cache");
    }
    if o.scenarios.iter().any(|s| s == "udp") {
        let wl = workload(o, Protocol::Udp, &o.udp_args)?;
        let specs = vec![
            mk(
                "udpping-kernel",
                Role::Baseline,
                find_built(o, "udpping-kernel"),
                "-p {port} -l {host}",
            ),
            mk(
                "udpping-xdp",
                Role::Candidate,
                find_built(o, "udpping-xdp"),
                "-p {port} -i {iface} -q 0",
            ),
        ];
        let mut sc = new_scenario("udp", "UDP ping (veth pair between namespaces)", wl, specs);
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let any_built = sc.variants.iter().any(|v| v.spec.program.is_ok());
        if !root {
            for v in sc.variants.iter_mut() {
                v.problem =
                    Some("not run: the UDP scenario needs root (network namespaces)".into());
            }
        } else if any_built {
            match netns::VethPair::create() {
                Ok(pair) => {
                    sc.notes.push(format!(
                        "server in netns {} ({} {}), generator in {} ({} {})",
                        pair.server_ns,
                        pair.server_if,
                        pair.server_ip,
                        pair.client_ns,
                        pair.client_if,
                        pair.client_ip
                    ));
                    run_scenario(o, &mut sc, Some(&pair));
                }
                Err(e) => {
                    for v in sc.variants.iter_mut() {
                        v.problem.get_or_insert(format!("not run: veth/netns setup failed: {e}"));
                    }
                }
            }
        } else {
            for v in sc.variants.iter_mut() {
                if let Err(why) = &v.spec.program {
                    v.problem = Some(why.clone());
                }
            }
        }
        print_table(&sc);
        plots.extend(write_plots(o, &sc));
        scen_json.set("udp", scenario_json(&sc));
        laps.lap("udp");
    }
    tls_scenarios::run(o, &mut scen_json, &mut plots, &mut laps)?;
    if o.scenarios.iter().any(|s| s == "proxy") {
        let p = proxy::run(o);
        p.print();
        scen_json.set("proxy", p.to_json());
        laps.lap("proxy");
    }
    results.set("scenarios", scen_json);
    results.set("plots", J::Arr(plots.iter().map(|p| J::Str(p.clone())).collect()));
    let total = started.elapsed().as_secs_f64();
    results.set("elapsed_s", total);
    let mut per = J::obj();
    for (name, secs) in &laps.parts {
        per.set(name, *secs);
    }
    results.set("elapsed_s_by_scenario", per);
    results.set(
        "load_average_at_end",
        std::fs::read_to_string("/proc/loadavg").ok().map(|s| s.trim().to_string()),
    );
    let path = o.out.join("results.json");
    std::fs::write(&path, results.to_string_pretty())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    println!();
    println!(
        "p99-parity: {total:.0}s ({}); results in {}; plots: {}",
        laps.parts.iter().map(|(n, t)| format!("{n} {t:.0}s")).collect::<Vec<_>>().join(", "),
        path.display(),
        plots.join(" ")
    );
    Ok(())
}

/// Wall-clock time of each scenario, in the order run, for the summary and results.json.
pub struct Laps {
    last: Instant,
    pub parts: Vec<(String, f64)>,
}

impl Laps {
    fn new() -> Laps {
        Laps { last: Instant::now(), parts: Vec::new() }
    }

    /// Ends the current part: the time since the previous lap (or the start) is `name`'s.
    pub fn lap(&mut self, name: &str) {
        let now = Instant::now();
        self.parts.push((name.to_string(), (now - self.last).as_secs_f64()));
        self.last = now;
    }
}

/// A status line on a terminal, overwritten by the next; nothing when stderr is a file or pipe.
pub fn progress(msg: std::fmt::Arguments) {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[K{msg}");
    }
}

fn new_scenario(key: &'static str, title: &str, workload: Config, specs: Vec<Spec>) -> Scenario {
    Scenario {
        key,
        title: title.to_string(),
        workload,
        variants: specs
            .into_iter()
            .map(|spec| VariantRun {
                spec,
                server: None,
                problem: None,
                peaks: Vec::new(),
                lats: Vec::new(),
                ramp: None,
                server_command: None,
            })
            .collect(),
        latency_rate: None,
        ramp_secs: 0.0,
        notes: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_needs_ranges_apart() {
        let base = [1.00, 1.05, 0.97, 1.02, 0.99];
        assert_eq!(verdict(&[0.80, 0.85, 0.90, 0.82, 0.88], &base), Verdict::Faster);
        assert_eq!(verdict(&[2.9, 3.1, 3.0, 3.3, 2.95], &base), Verdict::Slower);
        // One round of the twin inside the baseline's range: no claim.
        assert_eq!(verdict(&[0.80, 0.85, 0.98, 0.82, 0.88], &base), Verdict::WithinNoise);
        assert_eq!(verdict(&[1.01, 0.96, 1.04, 1.00, 0.98], &base), Verdict::WithinNoise);
        assert_eq!(verdict(&[0.5], &base), Verdict::TooFewRounds);
    }

    /// Runs the default search against a server that passes below `limit` req/s.
    fn searched(peak: f64, limit: f64) -> (Option<f64>, Option<f64>, usize) {
        let mut tried = Vec::new();
        run::search(redline_search(peak), &mut |r| {
            tried.push(r);
            Ok(r < limit)
        })
        .unwrap();
        let pass = tried.iter().cloned().filter(|&r| r < limit).reduce(f64::max);
        let fail = tried.iter().cloned().filter(|&r| r >= limit).reduce(f64::min);
        (pass, fail, tried.len())
    }

    #[test]
    fn default_search_brackets_the_redline_within_25_percent() {
        let peak = 1_400_000.0;
        // Redlines far below the first step, near it, and above it (up to the peak itself).
        for limit in [7_000.0, 40_000.0, 69_000.0, 71_000.0, 300_000.0, 1_000_000.0] {
            let (pass, fail, steps) = searched(peak, limit);
            let (p, f) = (pass.unwrap(), fail.unwrap());
            assert!(p < limit && f >= limit && f / p <= 1.25 + 1e-9, "{limit}: {p} {f}");
            assert!(steps <= 10, "{limit}: {steps} steps");
        }
        // Everything passes: the peak itself is the last step.
        assert_eq!(searched(peak, f64::INFINITY).0, Some(peak));
        // Nothing passes: the search stops at the floor.
        let (pass, fail, _) = searched(peak, 0.0);
        assert_eq!((pass, fail), (None, Some(peak * 0.004)));
        // Peaks whose top and floor are not whole hundreds (a floor of 250 req/s rounds to 300,
        // a top of 1,234,549 to 1,234,500): the search ends all the same.
        for peak in [62_500.0, 1_234_549.0, 150.0] {
            for limit in [0.0, peak * 0.3, f64::INFINITY] {
                let (_, _, steps) = searched(peak, limit);
                assert!(steps <= 12, "peak {peak}, limit {limit}: {steps} steps");
            }
        }
    }
}
