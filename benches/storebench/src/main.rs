//! p99-storebench: the C slab store against libp99's store, in process, through one C harness
//! (harness.c, compiled once per store). Rounds alternate the stores so drift cancels; the table
//! gives medians and ratios to the C store, per thread count (`--threads 1,2`: each count is a
//! run of its own, threads pinned to distinct CPUs, one shared key space), and each store's
//! scaling against its own 1-thread figure. `--json PATH` writes every figure.

use hdrhistogram::Histogram;
use std::ffi::CStr;
use std::os::raw::c_char;

#[allow(non_camel_case_types, non_upper_case_globals, non_snake_case, dead_code)]
mod slab {
    include!(concat!(env!("OUT_DIR"), "/bindings_slab.rs"));
}

#[cfg(has_p99_store)]
#[allow(non_camel_case_types, non_upper_case_globals, non_snake_case, dead_code)]
mod p99 {
    include!(concat!(env!("OUT_DIR"), "/bindings_p99.rs"));
}

struct Params {
    keys: u64,
    key_size: u32,
    value_size: u32,
    get_percent: u32,
    ops: u64,
    mem_mb: u64,
    rounds: usize,
    sample_every: u32,
    json: Option<String>,
    threads: Vec<u32>,
    zipf: f64,
    read_pin: bool,
    write_reserve: bool,
    /// memcached -o hashpower for both stores; None = auto (from the key count).
    hashpower: Option<u32>,
    /// memcached -L for both stores: heap backed with memory before the clock starts.
    prealloc: bool,
    /// Fills timed per round and store, each into a store set up afresh (the stores take
    /// turns: all but the last are fill-only runs, the last is the full run's).
    fills: u32,
}

impl Params {
    /// The hashpower given to both stores: the smallest N (12..32) whose 1.5 x 2^N items
    /// cover the keys, unless one was chosen (0: each store's default).
    fn hashpower(&self) -> u32 {
        self.hashpower
            .unwrap_or_else(|| (12..32).find(|&n| (3u64 << n) / 2 >= self.keys).unwrap_or(32))
    }
}

#[derive(Clone, Default)]
struct Outcome {
    /// Every fill of the round (the set figures are medians over these).
    fill_ns_per_op: Vec<f64>,
    get_ns_per_op: f64,
    mix_ns_per_op: f64,
    fill_cpu_ns_per_op: Vec<f64>,
    get_cpu_ns_per_op: f64,
    mix_cpu_ns_per_op: f64,
    hits: u64,
    misses: u64,
    bad_values: u64,
    failed_writes: u64,
    pinned_threads: u32,
    store_name: String,
}

/// Calls one store's harness. The two stores' bindings have the same shapes, so one macro body
/// serves both.
macro_rules! run_with {
    ($m:ident, $run:ident, $p:expr, $threads:expr, $fill_only:expr, $samples:expr) => {{
        let p: &Params = $p;
        let samples: &mut Vec<u64> = $samples;
        let hp = $m::harness_params {
            keys: p.keys,
            key_size: p.key_size,
            value_size: p.value_size,
            get_percent: p.get_percent,
            // No gets and no mix: the harness then times the fill only.
            ops: if $fill_only { 0 } else { p.ops },
            seed: 0x9e37_79b9_7f4a_7c15,
            mem_limit: p.mem_mb << 20,
            sample_every: p.sample_every,
            samples: samples.as_mut_ptr(),
            samples_cap: samples.capacity(),
            threads: $threads,
            zipf_s: p.zipf,
            read_mode: if p.read_pin { $m::HARNESS_READ_PIN } else { $m::HARNESS_READ_COPY },
            write_mode: if p.write_reserve {
                $m::HARNESS_WRITE_RESERVE
            } else {
                $m::HARNESS_WRITE_STORE
            },
            hashpower: p.hashpower(),
            prealloc: u32::from(p.prealloc),
        };
        // SAFETY: harness_result is plain data; the harness overwrites it.
        let mut r: $m::harness_result = unsafe { std::mem::zeroed() };
        let mut err = [0 as c_char; 256];
        // SAFETY: hp and r are valid for the call; samples points at samples_cap writable u64s
        // (the Vec's capacity), err at 256 bytes; the harness writes within those bounds.
        let rc = unsafe { $m::$run(&hp, &mut r, err.as_mut_ptr(), err.len()) };
        if rc != 0 {
            // SAFETY: the harness wrote a NUL-terminated message into err.
            Err(unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned())
        } else {
            // SAFETY: the harness wrote samples_len (<= capacity) initialised values.
            unsafe { samples.set_len(r.samples_len) };
            let per = |ns: u64, ops: u64| if ops == 0 { 0.0 } else { ns as f64 / ops as f64 };
            // SAFETY: store_name is NUL-terminated by the harness (snprintf).
            let name =
                unsafe { CStr::from_ptr(r.store_name.as_ptr()) }.to_string_lossy().into_owned();
            Ok(Outcome {
                fill_ns_per_op: vec![per(r.fill_ns, r.fill_ops)],
                get_ns_per_op: per(r.get_ns, r.get_ops),
                mix_ns_per_op: per(r.mix_ns, r.mix_ops),
                fill_cpu_ns_per_op: vec![per(r.fill_cpu_ns, r.fill_ops)],
                get_cpu_ns_per_op: per(r.get_cpu_ns, r.get_ops),
                mix_cpu_ns_per_op: per(r.mix_cpu_ns, r.mix_ops),
                hits: r.hits,
                misses: r.misses,
                bad_values: r.bad_values,
                failed_writes: r.failed_writes,
                pinned_threads: r.pinned_threads,
                store_name: name,
            })
        }
    }};
}

/// One harness run of store `which`: set up, fill, then (unless `fill_only`) the get and mix
/// phases, torn down.
fn run_store(
    which: &str,
    p: &Params,
    threads: u32,
    fill_only: bool,
    samples: &mut Vec<u64>,
) -> Result<Outcome, String> {
    samples.clear();
    match which {
        "slab" => run_with!(slab, slab_harness_run, p, threads, fill_only, samples),
        #[cfg(has_p99_store)]
        "p99" => run_with!(p99, p99_harness_run, p, threads, fill_only, samples),
        _ => Err("not built".into()),
    }
}

fn built() -> Vec<(&'static str, Option<&'static str>)> {
    vec![
        ("slab", None),
        (
            "p99",
            if cfg!(has_p99_store) {
                None
            } else {
                Some("not built (needs c-examples/mcserver/storage_p99.c and a staged libp99)")
            },
        ),
    ]
}

/// Round trips of the cache line handoff measurement (about 10-70 ms).
const HANDOFF_TRIPS: u64 = 100_000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn parse(args: &[String]) -> Result<Params, String> {
    let mut p = Params {
        keys: 200_000,
        key_size: 32,
        value_size: 100,
        get_percent: 90,
        ops: 2_000_000,
        mem_mb: 1024,
        rounds: 5,
        sample_every: 16,
        json: None,
        threads: vec![1],
        zipf: 0.0,
        read_pin: false,
        write_reserve: false,
        hashpower: None,
        prealloc: true,
        fills: 6,
    };
    let mut i = 0;
    while i < args.len() {
        let f = args[i].as_str();
        let mut v = || {
            i += 1;
            args.get(i).cloned().ok_or_else(|| format!("{f}: missing value"))
        };
        let n = |s: String| s.parse::<u64>().map_err(|_| format!("{f}: bad number '{s}'"));
        match f {
            "--quick" => {
                p.keys = 50_000;
                p.ops = 500_000;
                p.rounds = 3;
            }
            "--keys" => p.keys = n(v()?)?,
            "--key-size" => p.key_size = n(v()?)? as u32,
            "--value-size" => p.value_size = n(v()?)? as u32,
            "--get-percent" => p.get_percent = n(v()?)?.min(100) as u32,
            "--ops" => p.ops = n(v()?)?,
            "--mem-mb" => p.mem_mb = n(v()?)?,
            "--rounds" => p.rounds = n(v()?)?.max(1) as usize,
            "--fills" => {
                p.fills = match n(v()?)? {
                    f @ 1..=16 => f as u32,
                    f => return Err(format!("--fills: {f} is not 1..16")),
                }
            }
            "--sample-every" => p.sample_every = n(v()?)?.max(1) as u32,
            "--json" => p.json = Some(v()?),
            "--hashpower" => {
                p.hashpower = match v()?.as_str() {
                    "auto" => None,
                    s => match s.parse::<u32>() {
                        Ok(0) => Some(0),
                        Ok(n) if (12..=32).contains(&n) => Some(n),
                        _ => return Err(format!("--hashpower: '{s}' is not auto, 0 or 12..32")),
                    },
                }
            }
            "--prealloc" => {
                p.prealloc = match v()?.as_str() {
                    "on" => true,
                    "off" => false,
                    other => return Err(format!("--prealloc: '{other}' is not on or off")),
                }
            }
            "--threads" => {
                p.threads = v()?
                    .split(',')
                    .map(|t| match t.trim().parse::<u32>() {
                        Ok(n) if (1..=256).contains(&n) => Ok(n),
                        _ => Err(format!("--threads: bad count '{t}' (1..256, comma-separated)")),
                    })
                    .collect::<Result<_, _>>()?
            }
            "--popularity" => {
                let s = v()?;
                p.zipf = if s == "uniform" {
                    0.0
                } else {
                    match s.strip_prefix("zipf:").map(str::parse::<f64>) {
                        Some(Ok(e)) if e > 0.0 && e.is_finite() => e,
                        _ => return Err(format!("--popularity: '{s}' is not uniform or zipf:S (S > 0)")),
                    }
                }
            }
            "--read" => {
                p.read_pin = match v()?.as_str() {
                    "copy" => false,
                    "pin" => true,
                    other => return Err(format!("--read: '{other}' is not copy or pin")),
                }
            }
            "--write" => {
                p.write_reserve = match v()?.as_str() {
                    "store" => false,
                    "reserve" => true,
                    other => return Err(format!("--write: '{other}' is not store or reserve")),
                }
            }
            "-h" | "--help" => {
                return Err("usage: p99-storebench [--quick] [--keys N] [--key-size N] [--value-size N] \
                            [--get-percent N] [--ops N] [--mem-mb N] [--rounds N] [--fills N] [--sample-every N] \
                            [--threads N[,N...]] [--popularity uniform|zipf:S] [--read copy|pin] [--write store|reserve] [--hashpower auto|0|N] [--prealloc on|off] [--json PATH]\n\
                            --threads: one run per count, threads pinned to distinct CPUs of the affinity set\n\
                            --fills N (default 6, 1..16): fills timed per round and store, each into a store set up \
                            afresh, the stores taking turns; the set figure is the median of all of them (one fill \
                            of 200k keys lasts some 30 ms, short enough for this VM's noise to move it by half)\n\
                            --read copy (default): storage_get_copy into a 1 KiB buffer, as mcserver's get does; \
                            pin: storage_get + storage_release\n\
                            --write store (default): storage_store with the whole value, as mcserver's set does when \
                            the value arrived with its command line; reserve: storage_reserve + storage_fill + storage_commit\n\
                            --hashpower (memcached -o hashpower, given to both stores): auto (default) sizes both \
                            hash tables for the key count (the smallest N with 1.5 x 2^N >= keys), as an operator \
                            who knows the item count would; 0 leaves each store's default sizing\n\
                            --prealloc on (default): both stores back their whole --mem-mb with memory at setup \
                            (memcached -L), before the clock starts, so the set phase times the stores' writes and \
                            not the first touch of fresh pages (which on this VM swings 2x between runs); off: \
                            pages are faulted in by the set phase, as a server started without -L does"
                    .into())
            }
            _ => return Err(format!("unknown flag '{f}'")),
        }
        i += 1;
    }
    Ok(p)
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Medians of one (store, thread count) cell.
struct Cell {
    set: f64,
    get: f64,
    mix: f64,
    set_cpu: f64,
    get_cpu: f64,
    mix_cpu: f64,
    bad: u64,
    hits: u64,
    miss: u64,
    pinned_threads: u32,
    rounds: usize,
}

/// One figure of every round, in round order (the stores alternate which runs first), so
/// two stores' rounds can be paired.
fn per_round(os: &[Outcome], f: impl Fn(&Outcome) -> f64) -> String {
    os.iter().map(|o| format!("{:.2}", f(o))).collect::<Vec<_>>().join(", ")
}

fn cell(os: &[Outcome]) -> Cell {
    Cell {
        set: median(os.iter().flat_map(|o| o.fill_ns_per_op.iter().copied()).collect()),
        get: median(os.iter().map(|o| o.get_ns_per_op).collect()),
        mix: median(os.iter().map(|o| o.mix_ns_per_op).collect()),
        set_cpu: median(os.iter().flat_map(|o| o.fill_cpu_ns_per_op.iter().copied()).collect()),
        get_cpu: median(os.iter().map(|o| o.get_cpu_ns_per_op).collect()),
        mix_cpu: median(os.iter().map(|o| o.mix_cpu_ns_per_op).collect()),
        bad: os.iter().map(|o| o.bad_values + o.failed_writes).sum(),
        hits: os.iter().map(|o| o.hits).sum(),
        miss: os.iter().map(|o| o.misses).sum(),
        pinned_threads: os.iter().map(|o| o.pinned_threads).min().unwrap_or(0),
        rounds: os.len(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let p = match parse(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("p99-storebench: {e}");
            std::process::exit(2);
        }
    };
    let stores = built();
    let runnable: Vec<&str> = stores.iter().filter(|s| s.1.is_none()).map(|s| s.0).collect();
    let nt = p.threads.len();
    // Index [store][thread-count position].
    let mut outcomes: Vec<Vec<Vec<Outcome>>> = vec![vec![Vec::new(); nt]; stores.len()];
    let mut hists: Vec<Vec<Histogram<u64>>> = (0..stores.len())
        .map(|_| {
            (0..nt).map(|_| Histogram::new_with_bounds(1, 10_000_000_000, 3).unwrap()).collect()
        })
        .collect();
    let mut problems: Vec<Option<String>> = stores.iter().map(|s| s.1.map(String::from)).collect();
    let mut samples: Vec<u64> = Vec::with_capacity((p.ops / p.sample_every as u64 + 1) as usize);
    // Per round, the cost of handing a cache line between the two CPUs the threads run on:
    // on a VM it changes with where the host puts the virtual CPUs, and the 2-thread figures
    // change with it.
    let mut handoff: Vec<f64> = Vec::new();
    let measure_handoff = p.threads.iter().any(|&t| t > 1);
    for round in 0..p.rounds {
        if measure_handoff {
            // SAFETY: a plain C function without pointer arguments.
            let ns = unsafe { slab::slab_harness_line_transfer_ns(HANDOFF_TRIPS) };
            if ns > 0.0 {
                handoff.push(ns);
            }
        }
        for (ti, &threads) in p.threads.iter().enumerate() {
            // The fills beyond the full run's own: one per store in turn, so that each store's
            // fills sit next to the other's in time and a slow spell of the host lands on both.
            let mut extra: Vec<Vec<(f64, f64)>> = vec![Vec::new(); stores.len()];
            for f in 1..p.fills as usize {
                for k in 0..runnable.len() {
                    let name = runnable[(k + round + f) % runnable.len()];
                    let idx = stores.iter().position(|s| s.0 == name).unwrap();
                    if problems[idx].is_some() {
                        continue;
                    }
                    match run_store(name, &p, threads, true, &mut samples) {
                        Ok(o) if o.failed_writes > 0 => {
                            problems[idx] =
                                Some(format!("{} writes failed in a fill", o.failed_writes))
                        }
                        Ok(o) => extra[idx].push((o.fill_ns_per_op[0], o.fill_cpu_ns_per_op[0])),
                        Err(e) => problems[idx] = Some(format!("failed: {e}")),
                    }
                }
            }
            for k in 0..runnable.len() {
                let name = runnable[(k + round) % runnable.len()];
                let idx = stores.iter().position(|s| s.0 == name).unwrap();
                if problems[idx].is_some() {
                    continue;
                }
                match run_store(name, &p, threads, false, &mut samples) {
                    Ok(mut o) => {
                        for &s in &samples {
                            hists[idx][ti].record(s.clamp(1, 10_000_000_000)).unwrap();
                        }
                        for &(wall, cpu) in &extra[idx] {
                            o.fill_ns_per_op.push(wall);
                            o.fill_cpu_ns_per_op.push(cpu);
                        }
                        outcomes[idx][ti].push(o);
                    }
                    Err(e) => problems[idx] = Some(format!("failed: {e}")),
                }
            }
        }
    }
    let popularity = if p.zipf > 0.0 { format!("zipf {}", p.zipf) } else { "uniform".to_string() };
    println!(
        "   {} keys ({popularity}), key {} B, value {} B; {} gets, then {} ops of {}% get / {}% set; reads by {}, writes by {}; hashpower {}; heap {}; {} rounds ({} fills each), medians",
        p.keys,
        p.key_size,
        p.value_size,
        p.ops,
        p.ops,
        p.get_percent,
        100 - p.get_percent,
        if p.read_pin { "pin" } else { "copy" },
        if p.write_reserve { "reserve" } else { "store" },
        match p.hashpower() {
            0 => "0 (store defaults)".to_string(),
            n => format!("{n} (both stores)"),
        },
        if p.prealloc { "preallocated (-L, both stores)" } else { "faulted in by the writes" },
        p.rounds,
        p.fills
    );
    if !handoff.is_empty() {
        let lo = handoff.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = handoff.iter().cloned().fold(0.0, f64::max);
        println!(
            "   cache line handoff between the first two CPUs: {:.1} ns (median of {} rounds, {lo:.1}-{hi:.1}); every line both threads write costs this when it changes hands",
            median(handoff.clone()),
            handoff.len()
        );
    }
    println!(
        "{:<8} {:>3} {:>10} {:>10} {:>10} {:>11} {:>7} {:>7} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7} {:>9}",
        "store", "thr", "set ns/op", "get ns/op", "mix ns/op", "mix Mops/s", "x slab", "x 1 thr",
        "set cpu", "get cpu", "mix cpu", "p50 ns", "p99 ns", "p999 ns", "bad/miss"
    );
    let cells: Vec<Vec<Cell>> =
        outcomes.iter().map(|per| per.iter().map(|os| cell(os)).collect()).collect();
    let mut rows = Vec::new();
    for (ti, &threads) in p.threads.iter().enumerate() {
        let base = &cells[0][ti];
        for (i, (name, _)) in stores.iter().enumerate() {
            let c = &cells[i][ti];
            let h = &hists[i][ti];
            // Scaling: this count's mix throughput over the same store's 1-thread figure.
            let one = p.threads.iter().position(|&t| t == 1).map(|j| cells[i][j].mix);
            let scale = one.map_or(f64::NAN, |m1| m1 / c.mix);
            let ratio = |ours: f64, slab: f64| slab / ours;
            if c.rounds == 0 {
                println!(
                    "{:<8} {:>3} {}",
                    name,
                    threads,
                    problems[i].as_deref().unwrap_or("no figures")
                );
            } else {
                println!(
                    "{:<8} {:>3} {:>10.1} {:>10.1} {:>10.1} {:>11.2} {:>7.2} {:>7.2} {:>8.1} {:>8.1} {:>8.1} {:>7} {:>7} {:>7} {:>9}",
                    name,
                    threads,
                    c.set,
                    c.get,
                    c.mix,
                    1e3 / c.mix,
                    ratio(c.mix, base.mix),
                    scale,
                    c.set_cpu,
                    c.get_cpu,
                    c.mix_cpu,
                    h.value_at_quantile(0.5),
                    h.value_at_quantile(0.99),
                    h.value_at_quantile(0.999),
                    format!("{}/{}", c.bad, c.miss)
                );
                if c.pinned_threads < threads {
                    println!(
                        "{:<8} note: only {} of {threads} threads had a CPU of their own",
                        "", c.pinned_threads
                    );
                }
                if let Some(pr) = &problems[i] {
                    println!("{:<8} note: {pr}", "");
                }
            }
            let num = |v: f64| if v.is_finite() { format!("{v:.2}") } else { "null".into() };
            let os = &outcomes[i][ti];
            rows.push(format!(
                "    {{\"store\": \"{name}\", \"threads\": {threads}, \"implementation\": {}, \"problem\": {}, \"rounds\": {}, \
                 \"pinned_threads\": {}, \"set_ns_per_op\": {}, \"get_ns_per_op\": {}, \"mix_ns_per_op\": {}, \
                 \"set_mops\": {}, \"get_mops\": {}, \"mix_mops\": {}, \"mix_ops_per_s\": {}, \
                 \"ratio_to_slab\": {{\"set\": {}, \"get\": {}, \"mix\": {}}}, \"ratio_mix_to_slab\": {}, \
                 \"cpu_ns_per_op\": {{\"set\": {}, \"get\": {}, \"mix\": {}}}, \
                 \"cpu_ratio_to_slab\": {{\"set\": {}, \"get\": {}, \"mix\": {}}}, \
                 \"mix_scaling_to_1_thread\": {}, \
                 \"mix_latency_ns\": {{\"p50\": {}, \"p99\": {}, \"p999\": {}, \"max\": {}}}, \
                 \"bad_values_or_failed_writes\": {}, \"hits\": {}, \"misses\": {}, \
                 \"per_round_ns_per_op\": {{\"set\": [{}], \"get\": [{}], \"mix\": [{}]}}}}",
                os.first().map_or("null".into(), |o| format!("\"{}\"", esc(&o.store_name))),
                problems[i].as_ref().map_or("null".into(), |s| format!("\"{}\"", esc(s))),
                c.rounds,
                c.pinned_threads,
                num(c.set),
                num(c.get),
                num(c.mix),
                num(1e3 / c.set),
                num(1e3 / c.get),
                num(1e3 / c.mix),
                num(1e9 / c.mix),
                num(ratio(c.set, base.set)),
                num(ratio(c.get, base.get)),
                num(ratio(c.mix, base.mix)),
                num(ratio(c.mix, base.mix)),
                num(c.set_cpu),
                num(c.get_cpu),
                num(c.mix_cpu),
                num(ratio(c.set_cpu, base.set_cpu)),
                num(ratio(c.get_cpu, base.get_cpu)),
                num(ratio(c.mix_cpu, base.mix_cpu)),
                num(scale),
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max(),
                c.bad,
                c.hits,
                c.miss,
                os.iter()
                    .map(|o| {
                        o.fill_ns_per_op.iter().map(|v| format!("{v:.2}")).collect::<Vec<_>>().join(", ")
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                per_round(os, |o| o.get_ns_per_op),
                per_round(os, |o| o.mix_ns_per_op),
            ));
        }
    }
    let threads_json: Vec<String> = p.threads.iter().map(|t| t.to_string()).collect();
    let json = format!(
        "{{\n  \"stores\": [\n{}\n  ],\n  \"params\": {{\"keys\": {}, \"key_size\": {}, \"value_size\": {}, \"get_percent\": {}, \"ops\": {}, \
         \"mem_mb\": {}, \"rounds\": {}, \"sample_every\": {}, \"threads\": [{}], \"popularity\": \"{}\", \"zipf_s\": {}, \"read\": \"{}\", \"write\": \"{}\", \"hashpower\": {}, \"prealloc\": {}, \"fills\": {}}},\n  \
         \"line_handoff_ns\": {{\"median\": {}, \"rounds\": [{}]}},\n  \"note\": \"ns_per_op: wall time per operation (over all threads); cpu_ns_per_op: CPU time of the benchmark threads per operation \
         (leaves out time spent waiting for a CPU on a shared machine); ratio_to_slab / cpu_ratio_to_slab: the slab store's figure over \
         this store's at the same thread count (above 1: faster than slab); mix_scaling_to_1_thread: this store's mix throughput over \
         its own 1-thread figure; per_round_ns_per_op: each round's figure (the medians are of these; set: every fill of every round, in order); line_handoff_ns: one-way time of handing a cache line between the first two CPUs, measured before each round \
         (null/empty with one thread)\"\n}}\n",
        rows.join(",\n"),
        p.keys,
        p.key_size,
        p.value_size,
        p.get_percent,
        p.ops,
        p.mem_mb,
        p.rounds,
        p.sample_every,
        threads_json.join(", "),
        if p.zipf > 0.0 { "zipf" } else { "uniform" },
        p.zipf,
        if p.read_pin { "pin" } else { "copy" },
        if p.write_reserve { "reserve" } else { "store" },
        p.hashpower(),
        p.prealloc,
        p.fills,
        if handoff.is_empty() { "null".to_string() } else { format!("{:.1}", median(handoff.clone())) },
        handoff.iter().map(|v| format!("{v:.1}")).collect::<Vec<_>>().join(", "),
    );
    if let Some(path) = &p.json {
        if let Err(e) = std::fs::write(path, &json) {
            eprintln!("p99-storebench: {path}: {e}");
            std::process::exit(1);
        }
    }
    if outcomes.iter().flatten().flatten().any(|x| x.bad_values > 0) {
        eprintln!("p99-storebench: a store returned wrong values");
        std::process::exit(1);
    }
}
