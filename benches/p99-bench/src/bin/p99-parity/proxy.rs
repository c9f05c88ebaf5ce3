//! The `proxy` scenario: how much of a server's advantage survives a twemproxy hop.
//!
//! Each server (every mcserver build, and memcached) runs alone behind its own nutcracker pool
//! (ketama, one backend); the proxy is pinned to the server's core, the generator to the other.
//! Each round measures every server directly and through its proxy, interleaved, and the CPU
//! each process spent per answered request (from /proc/PID/task/*/schedstat, read over the
//! run's measured window, after its warm-up).

use crate::config::{Config, Protocol};
use crate::json::J;
use crate::run::Report;
use crate::stats::proc_cpu_seconds;
use crate::{find_built, find_on_path, free_port, median, start_server, Opts, Probe, Server};
use std::path::PathBuf;

struct Variant {
    name: &'static str,
    program: Result<PathBuf, String>,
    args: &'static str,
    problem: Option<String>,
    direct: Vec<Measured>,
    proxied: Vec<Measured>,
    commands: Vec<String>,
    notes: Vec<String>,
}

/// One measured run: answered requests per second, CPU microseconds per answered request of
/// the server and (through the proxy) of nutcracker, and the run's errors.
struct Measured {
    rps: f64,
    server_us: f64,
    proxy_us: Option<f64>,
    errors: u64,
    command: String,
}

pub struct ProxyResult {
    problem: Option<String>,
    variants: Vec<Variant>,
    workload: String,
    rounds: usize,
    /// /proc/loadavg before and after: CPU per request rises when other work shares the cores.
    load: (Option<String>, Option<String>),
}

fn loadavg() -> Option<String> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// A nutcracker pool in front of one server; stopped on drop (through Server).
fn start_proxy(
    o: &Opts,
    backend: &str,
    log_dir: &std::path::Path,
    tag: &str,
) -> Result<Server, String> {
    let nc = find_on_path("nutcracker").or_else(|_| {
        // Debian installs it in /usr/sbin, which is not on every user's PATH.
        let p = PathBuf::from("/usr/sbin/nutcracker");
        p.is_file().then_some(p).ok_or_else(|| "not installed (nutcracker: make deps)".to_string())
    })?;
    let mut last = String::new();
    for _ in 0..3 {
        let (port, stats) = (free_port(), free_port());
        let conf = log_dir.join(format!("proxy-{tag}.yml"));
        let text = format!(
            "p99parity:\n  listen: 127.0.0.1:{port}\n  hash: murmur\n  distribution: ketama\n  \
             timeout: 2000\n  auto_eject_hosts: false\n  servers:\n    - {backend}:1 backend\n"
        );
        std::fs::write(&conf, text).map_err(|e| format!("{}: {e}", conf.display()))?;
        let args: Vec<String> = vec![
            "-c".into(),
            conf.display().to_string(),
            "-s".into(),
            stats.to_string(),
            "-a".into(),
            "127.0.0.1".into(),
            "-o".into(),
            log_dir.join(format!("proxy-{tag}-nutcracker.log")).display().to_string(),
            "-p".into(),
            log_dir.join(format!("proxy-{tag}.pid")).display().to_string(),
        ];
        let addr = format!("127.0.0.1:{port}");
        match start_server(
            &nc,
            &args,
            o.server_cpu,
            None,
            &addr,
            Probe::Tcp,
            &log_dir.join(format!("proxy-{tag}-nutcracker.out")),
        ) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(format!("nutcracker failed to start: {last}"))
}

fn start_backend(
    o: &Opts,
    program: &std::path::Path,
    args: &str,
    log_dir: &std::path::Path,
    tag: &str,
) -> Result<Server, String> {
    let mut last = String::new();
    for _ in 0..3 {
        let port = free_port();
        let argv: Vec<String> = args
            .replace("{port}", &port.to_string())
            .split_whitespace()
            .map(String::from)
            .collect();
        let addr = format!("127.0.0.1:{port}");
        match start_server(
            program,
            &argv,
            o.server_cpu,
            None,
            &addr,
            Probe::Tcp,
            &log_dir.join(format!("proxy-{tag}.log")),
        ) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(format!("failed to start: {last}"))
}

/// CPU seconds of every thread of a process, from /proc/PID/task/*/schedstat (its first field is
/// nanoseconds on a CPU): a short run needs finer figures than the 10 ms clock ticks of
/// /proc/PID/stat, which are the fallback.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let from_schedstat = || -> Option<f64> {
        let mut ns = 0u64;
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
            // A thread that exits between the listing and the read takes its time with it.
            let Ok(s) = std::fs::read_to_string(task.path().join("schedstat")) else { continue };
            ns += s.split_whitespace().next()?.parse::<u64>().ok()?;
        }
        Some(ns as f64 / 1e9)
    };
    from_schedstat().or_else(|| proc_cpu_seconds(pid))
}

/// One closed-loop run with both processes' CPU read over its measured window: when the warm-up
/// ends (p99-bench calls back then, within 20 ms), and again once the run has returned (only the
/// answers to requests in flight are still drained then).
fn measure(
    o: &Opts,
    wl: &Config,
    target: &Server,
    server: &Server,
    proxy: Option<&Server>,
) -> Result<Measured, String> {
    let mut c = wl.clone();
    c.server = target.addr.clone();
    c.server_pid = Some(server.child.id());
    c.prefill = false;
    c.rate = 0.0;
    c.warmup = o.warmup.max(0.1);
    let cpu = |s: &Server| {
        cpu_seconds(s.child.id()).ok_or_else(|| "cannot read the CPU time of a process".to_string())
    };
    let both = || -> Result<(f64, Option<f64>), String> {
        Ok((cpu(server)?, proxy.map(cpu).transpose()?))
    };
    let mut start = Err("the run ended before its warm-up did".to_string());
    let r = crate::run::run_once_with(&c, || start = both());
    let r: Report = r?;
    let ((s0, p0), (s1, p1)) = (start?, both()?);
    let n = r.counts.completed.max(1) as f64;
    Ok(Measured {
        rps: r.rps,
        server_us: (s1 - s0) * 1e6 / n,
        proxy_us: p0.zip(p1).map(|(a, b)| (b - a) * 1e6 / n),
        errors: r.errors_total(),
        command: r.command.clone(),
    })
}

pub fn run(o: &Opts) -> ProxyResult {
    let mc = "-p {port} -l 127.0.0.1 -t 1 -m 1024 -U 0";
    let mut variants: Vec<Variant> = [
        ("mcserver-slab-epoll", find_built(o, "mcserver-slab-epoll"), mc),
        ("mcserver-p99-epoll", find_built(o, "mcserver-p99-epoll"), mc),
        ("mcserver-slab-uring", find_built(o, "mcserver-slab-uring"), mc),
        ("mcserver-p99-uring", find_built(o, "mcserver-p99-uring"), mc),
        (
            "memcached -t 1",
            find_on_path("memcached"),
            "-p {port} -l 127.0.0.1 -t 1 -m 1024 -U 0 -u nobody",
        ),
    ]
    .into_iter()
    .map(|(name, program, args)| Variant {
        name,
        program,
        args,
        problem: None,
        direct: Vec::new(),
        proxied: Vec::new(),
        commands: Vec::new(),
        notes: Vec::new(),
    })
    .collect();
    let wl = match crate::workload(o, Protocol::Memcache, &o.cache_args) {
        Ok(w) => w,
        Err(e) => {
            return ProxyResult {
                problem: Some(e),
                variants,
                workload: String::new(),
                rounds: o.rounds,
                load: (None, None),
            }
        }
    };
    let workload = wl.command_line();
    let load_before = loadavg();
    let log_dir = o.out.join("logs");
    let _ = std::fs::create_dir_all(&log_dir);
    // Start every server and its proxy once; idle pairs sleep while the others are measured.
    let mut procs: Vec<Option<(Server, Server)>> = Vec::new();
    for (i, v) in variants.iter_mut().enumerate() {
        let program = match &v.program {
            Ok(p) => p.clone(),
            Err(why) => {
                v.problem = Some(why.clone());
                procs.push(None);
                continue;
            }
        };
        let tag = format!("{i}");
        let started = start_backend(o, &program, v.args, &log_dir, &tag).and_then(|s| {
            let mut c = wl.clone();
            c.server = s.addr.clone();
            crate::client::prefill(&c)?;
            let p = start_proxy(o, &s.addr, &log_dir, &tag)?;
            v.commands = vec![s.command.clone(), p.command.clone()];
            Ok((s, p))
        });
        match started {
            Ok(pair) => procs.push(Some(pair)),
            Err(e) => {
                v.problem = Some(e);
                procs.push(None);
            }
        }
    }
    let runnable: Vec<usize> = (0..variants.len()).filter(|&i| procs[i].is_some()).collect();
    // One unmeasured run per path first (connections, nutcracker's backend connection and the
    // server's first answers happen outside the figures); a failure here is noted and retried
    // once, a second one makes the variant's problem. (Runs that measured nothing on a loaded
    // machine were p99-bench's start racing its own connects, not the servers: fixed there.)
    for &i in &runnable {
        let Some((server, proxy)) = &procs[i] else { continue };
        let v = &mut variants[i];
        for (label, target, px) in
            [("direct", server, None), ("through nutcracker", proxy, Some(proxy))]
        {
            crate::progress(format_args!("[proxy] {} {label}: settling run", v.name));
            let Err(first) = measure(o, &wl, target, server, px) else { continue };
            v.notes.push(format!("settling run {label} failed ({first}), retried"));
            if let Err(e) = measure(o, &wl, target, server, px) {
                v.problem = Some(format!("settling run {label} failed twice: {e}"));
                break;
            }
        }
    }
    for round in 0..o.rounds {
        for k in 0..runnable.len() {
            let i = runnable[(k + round) % runnable.len()];
            let v = &mut variants[i];
            let Some((server, proxy)) = &procs[i] else { continue };
            if v.problem.is_some() {
                continue;
            }
            // Alternate which path goes first, so drift within a round hits both alike.
            for path in [round % 2, 1 - round % 2] {
                crate::progress(format_args!(
                    "[proxy] round {}/{}: {} {}",
                    round + 1,
                    o.rounds,
                    v.name,
                    if path == 0 { "direct" } else { "through nutcracker" }
                ));
                let r = if path == 0 {
                    measure(o, &wl, server, server, None)
                } else {
                    measure(o, &wl, proxy, server, Some(proxy))
                };
                match r {
                    Ok(m) if path == 0 => v.direct.push(m),
                    Ok(m) => v.proxied.push(m),
                    Err(e) => {
                        v.problem = Some(format!(
                            "run failed ({}): {e}",
                            if path == 0 { "direct" } else { "through nutcracker" }
                        ))
                    }
                }
            }
        }
    }
    crate::progress(format_args!(""));
    drop(procs);
    ProxyResult {
        problem: None,
        variants,
        workload,
        rounds: o.rounds,
        load: (load_before, loadavg()),
    }
}

impl Variant {
    fn med(v: &[Measured], f: impl Fn(&Measured) -> Option<f64>) -> Option<f64> {
        median(v.iter().filter_map(f).collect())
    }
    fn direct_rps(&self) -> Option<f64> {
        Self::med(&self.direct, |m| Some(m.rps))
    }
    fn proxied_rps(&self) -> Option<f64> {
        Self::med(&self.proxied, |m| Some(m.rps))
    }
    fn direct_server_us(&self) -> Option<f64> {
        Self::med(&self.direct, |m| Some(m.server_us))
    }
    fn proxied_server_us(&self) -> Option<f64> {
        Self::med(&self.proxied, |m| Some(m.server_us))
    }
    fn proxy_us(&self) -> Option<f64> {
        Self::med(&self.proxied, |m| m.proxy_us)
    }
    /// Server plus proxy CPU per request through the proxy, per round, median.
    fn proxied_total_us(&self) -> Option<f64> {
        Self::med(&self.proxied, |m| m.proxy_us.map(|p| p + m.server_us))
    }
    fn errors(&self) -> u64 {
        self.direct.iter().chain(self.proxied.iter()).map(|m| m.errors).sum()
    }
}

fn div(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

impl ProxyResult {
    pub fn print(&self) {
        println!();
        println!("== proxy: memcache through nutcracker (twemproxy), one server behind it ==");
        if let Some(p) = &self.problem {
            println!("   {p}");
            return;
        }
        println!("   load: {}", self.workload);
        println!(
            "   nutcracker (ketama, one backend) pinned to the server's core; median of {} interleaved rounds; load average {} before, {} after",
            self.rounds,
            self.load.0.as_deref().unwrap_or("?"),
            self.load.1.as_deref().unwrap_or("?")
        );
        let base = self.variants.first();
        let (base_direct, base_total) =
            (base.and_then(|b| b.direct_server_us()), base.and_then(|b| b.proxied_total_us()));
        println!(
            "{:<22} {:>10} {:>10} {:>6} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>6}",
            "variant",
            "direct/s",
            "proxied/s",
            "kept",
            "srv us",
            "srv us",
            "proxy us",
            "total us",
            "x base",
            "x base",
            "errors"
        );
        println!(
            "{:<22} {:>10} {:>10} {:>6} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>6}",
            "", "", "", "", "direct", "proxied", "proxied", "proxied", "direct", "proxied", ""
        );
        let f = |x: Option<f64>, d: usize| x.map_or("-".into(), |x| format!("{x:.d$}"));
        for v in &self.variants {
            if v.direct.is_empty() || v.proxied.is_empty() {
                println!("{:<22} {}", v.name, v.problem.as_deref().unwrap_or("no figures"));
                continue;
            }
            println!(
                "{:<22} {:>10} {:>10} {:>6} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>6}",
                v.name,
                f(v.direct_rps(), 0),
                f(v.proxied_rps(), 0),
                f(div(v.proxied_rps(), v.direct_rps()), 2),
                f(v.direct_server_us(), 2),
                f(v.proxied_server_us(), 2),
                f(v.proxy_us(), 2),
                f(v.proxied_total_us(), 2),
                f(div(base_direct, v.direct_server_us()), 2),
                f(div(base_total, v.proxied_total_us()), 2),
                v.errors()
            );
            if let Some(p) = &v.problem {
                println!("{:<22} note: {p}", "");
            }
            for n in &v.notes {
                println!("{:<22} note: {n}", "");
            }
        }
        println!(
            "   us: CPU microseconds per answered request (time on a CPU, /proc/PID/task/*/schedstat) of the server and of nutcracker.\n   \
             kept: proxied/direct req/s (server and proxy share one core). x base: the all-C build's CPU per\n   \
             request over this one's: direct = server alone; proxied = server + proxy, what a proxied\n   \
             deployment pays per request."
        );
    }

    pub fn to_json(&self) -> J {
        let mut o = J::obj();
        o.set("problem", self.problem.clone());
        o.set("workload_command", self.workload.clone());
        o.set("load_average_before", self.load.0.clone())
            .set("load_average_after", self.load.1.clone());
        let base = self.variants.first();
        let (base_direct, base_total) =
            (base.and_then(|b| b.direct_server_us()), base.and_then(|b| b.proxied_total_us()));
        let run_json = |m: &Measured| {
            let mut j = J::obj();
            j.set("requests_per_s", m.rps).set("server_cpu_us_per_request", m.server_us);
            j.set("proxy_cpu_us_per_request", m.proxy_us)
                .set("errors", m.errors)
                .set("command", m.command.clone());
            j
        };
        let vs = self
            .variants
            .iter()
            .map(|v| {
                let mut j = J::obj();
                j.set("name", v.name);
                j.set("program", v.program.as_ref().ok().map(|p| p.display().to_string()));
                j.set("problem", v.problem.clone());
                j.set("commands", J::Arr(v.commands.iter().map(|c| J::Str(c.clone())).collect()));
                j.set("notes", J::Arr(v.notes.iter().map(|n| J::Str(n.clone())).collect()));
                j.set("median_direct_requests_per_s", v.direct_rps());
                j.set("median_proxied_requests_per_s", v.proxied_rps());
                j.set("median_direct_server_cpu_us_per_request", v.direct_server_us());
                j.set("median_proxied_server_cpu_us_per_request", v.proxied_server_us());
                j.set("median_proxy_cpu_us_per_request", v.proxy_us());
                j.set("median_proxied_total_cpu_us_per_request", v.proxied_total_us());
                j.set("baseline_cpu_ratio_direct", div(base_direct, v.direct_server_us()));
                j.set("baseline_cpu_ratio_proxied", div(base_total, v.proxied_total_us()));
                j.set("direct_runs", J::Arr(v.direct.iter().map(run_json).collect()));
                j.set("proxied_runs", J::Arr(v.proxied.iter().map(run_json).collect()));
                j
            })
            .collect();
        o.set("variants", J::Arr(vs));
        o
    }
}
