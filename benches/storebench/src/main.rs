//! p99-storebench: the C slab store against libp99's store, in process, through one C harness
//! (harness.c, compiled once per store). Rounds alternate the stores so drift cancels; the table
//! gives medians and ratios to the C store. `--json PATH` writes every figure.

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
}

#[derive(Clone, Default)]
struct Outcome {
    fill_ns_per_op: f64,
    get_ns_per_op: f64,
    mix_ns_per_op: f64,
    hits: u64,
    misses: u64,
    bad_values: u64,
    failed_writes: u64,
    store_name: String,
}

/// Calls one store's harness. The two stores' bindings have the same shapes, so one macro body
/// serves both.
macro_rules! run_with {
    ($m:ident, $run:ident, $p:expr, $samples:expr) => {{
        let p: &Params = $p;
        let samples: &mut Vec<u64> = $samples;
        let hp = $m::harness_params {
            keys: p.keys,
            key_size: p.key_size,
            value_size: p.value_size,
            get_percent: p.get_percent,
            ops: p.ops,
            seed: 0x9e37_79b9_7f4a_7c15,
            mem_limit: p.mem_mb << 20,
            sample_every: p.sample_every,
            samples: samples.as_mut_ptr(),
            samples_cap: samples.capacity(),
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
            let name = unsafe { CStr::from_ptr(r.store_name.as_ptr()) }.to_string_lossy().into_owned();
            Ok(Outcome {
                fill_ns_per_op: per(r.fill_ns, r.fill_ops),
                get_ns_per_op: per(r.get_ns, r.get_ops),
                mix_ns_per_op: per(r.mix_ns, r.mix_ops),
                hits: r.hits,
                misses: r.misses,
                bad_values: r.bad_values,
                failed_writes: r.failed_writes,
                store_name: name,
            })
        }
    }};
}

fn run_store(which: &str, p: &Params, samples: &mut Vec<u64>) -> Result<Outcome, String> {
    samples.clear();
    match which {
        "slab" => run_with!(slab, slab_harness_run, p, samples),
        #[cfg(has_p99_store)]
        "p99" => run_with!(p99, p99_harness_run, p, samples),
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
            "--sample-every" => p.sample_every = n(v()?)?.max(1) as u32,
            "--json" => p.json = Some(v()?),
            "-h" | "--help" => {
                return Err("usage: p99-storebench [--quick] [--keys N] [--key-size N] [--value-size N] \
                            [--get-percent N] [--ops N] [--mem-mb N] [--rounds N] [--sample-every N] [--json PATH]"
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
    let mut outcomes: Vec<Vec<Outcome>> = vec![Vec::new(); stores.len()];
    let mut hists: Vec<Histogram<u64>> =
        (0..stores.len()).map(|_| Histogram::new_with_bounds(1, 10_000_000_000, 3).unwrap()).collect();
    let mut problems: Vec<Option<String>> = stores.iter().map(|s| s.1.map(String::from)).collect();
    let mut samples: Vec<u64> = Vec::with_capacity((p.ops / p.sample_every as u64 + 1) as usize);
    for round in 0..p.rounds {
        for k in 0..runnable.len() {
            let name = runnable[(k + round) % runnable.len()];
            let idx = stores.iter().position(|s| s.0 == name).unwrap();
            if problems[idx].is_some() {
                continue;
            }
            match run_store(name, &p, &mut samples) {
                Ok(o) => {
                    for &s in &samples {
                        hists[idx].record(s.clamp(1, 10_000_000_000)).unwrap();
                    }
                    outcomes[idx].push(o);
                }
                Err(e) => problems[idx] = Some(format!("failed: {e}")),
            }
        }
    }
    println!(
        "   {} keys, key {} B, value {} B; {} gets, then {} ops of {}% get / {}% set; {} rounds, medians",
        p.keys, p.key_size, p.value_size, p.ops, p.ops, p.get_percent, 100 - p.get_percent, p.rounds
    );
    println!(
        "{:<8} {:>10} {:>10} {:>10} {:>11} {:>8} {:>8} {:>8} {:>9} {:>9}",
        "store", "set ns/op", "get ns/op", "mix ns/op", "mix Mops/s", "x slab", "p50 ns", "p99 ns", "p999 ns", "bad/miss"
    );
    let base_mix = median(outcomes[0].iter().map(|o| o.mix_ns_per_op).collect());
    let mut json = String::from("{\n  \"stores\": [\n");
    for (i, (name, _)) in stores.iter().enumerate() {
        let os = &outcomes[i];
        let h = &hists[i];
        let fill = median(os.iter().map(|o| o.fill_ns_per_op).collect());
        let get = median(os.iter().map(|o| o.get_ns_per_op).collect());
        let mix = median(os.iter().map(|o| o.mix_ns_per_op).collect());
        let bad: u64 = os.iter().map(|o| o.bad_values + o.failed_writes).sum();
        let miss: u64 = os.iter().map(|o| o.misses).sum();
        let hits: u64 = os.iter().map(|o| o.hits).sum();
        if os.is_empty() {
            println!("{:<8} {}", name, problems[i].as_deref().unwrap_or("no figures"));
        } else {
            println!(
                "{:<8} {:>10.1} {:>10.1} {:>10.1} {:>11.2} {:>8.2} {:>8} {:>8} {:>9} {:>9}",
                name,
                fill,
                get,
                mix,
                1e3 / mix,
                base_mix / mix,
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                format!("{bad}/{miss}")
            );
            if let Some(pr) = &problems[i] {
                println!("{:<8} note: {pr}", "");
            }
        }
        let num = |v: f64| if v.is_finite() { format!("{v:.2}") } else { "null".into() };
        json += &format!(
            "    {{\"store\": \"{name}\", \"implementation\": {}, \"problem\": {}, \"rounds\": {}, \
             \"set_ns_per_op\": {}, \"get_ns_per_op\": {}, \"mix_ns_per_op\": {}, \"mix_ops_per_s\": {}, \
             \"ratio_mix_to_slab\": {}, \"mix_latency_ns\": {{\"p50\": {}, \"p99\": {}, \"p999\": {}, \"max\": {}}}, \
             \"bad_values_or_failed_writes\": {bad}, \"hits\": {hits}, \"misses\": {miss}}}{}\n",
            os.first().map_or("null".into(), |o| format!("\"{}\"", esc(&o.store_name))),
            problems[i].as_ref().map_or("null".into(), |s| format!("\"{}\"", esc(s))),
            os.len(),
            num(fill),
            num(get),
            num(mix),
            num(1e9 / mix),
            num(base_mix / mix),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max(),
            if i + 1 < stores.len() { "," } else { "" }
        );
    }
    json += &format!(
        "  ],\n  \"params\": {{\"keys\": {}, \"key_size\": {}, \"value_size\": {}, \"get_percent\": {}, \"ops\": {}, \
         \"mem_mb\": {}, \"rounds\": {}, \"sample_every\": {}}}\n}}\n",
        p.keys, p.key_size, p.value_size, p.get_percent, p.ops, p.mem_mb, p.rounds, p.sample_every
    );
    if let Some(path) = &p.json {
        if let Err(e) = std::fs::write(path, &json) {
            eprintln!("p99-storebench: {path}: {e}");
            std::process::exit(1);
        }
    }
    if outcomes.iter().any(|o| o.iter().any(|x| x.bad_values > 0)) {
        eprintln!("p99-storebench: a store returned wrong values");
        std::process::exit(1);
    }
}
