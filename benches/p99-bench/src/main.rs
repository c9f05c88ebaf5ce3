//! p99-bench: load generator for ping (TCP), the memcache text protocol and UDP ping.
//! Closed loop (connections x pipeline depth) or open loop (fixed rate, latency from the intended
//! send time), HDR histograms, JSON output, server CPU from /proc, and a rate ramp for the
//! redlines (the highest rates with p99, and p99.9, under 1 ms). `p99-bench --help` lists every flag.

mod client;
mod config;
mod json;
mod run;
mod stall;
mod stats;
mod tls;
mod workload;
mod xdp_sender;

#[cfg(test)]
mod tests;

use config::{Config, Protocol};
use json::J;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let c = match Config::parse(&args) {
        Ok(Some(c)) => c,
        Ok(None) => {
            print!("{}", config::USAGE);
            return;
        }
        Err(e) => {
            eprintln!("p99-bench: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = real_main(&c) {
        eprintln!("p99-bench: {e}");
        std::process::exit(1);
    }
}

fn real_main(c: &Config) -> Result<(), String> {
    if c.protocol == Protocol::Memcache && c.prefill {
        let t = std::time::Instant::now();
        let n = client::prefill(c)?;
        eprintln!("p99-bench: stored {n} keys in {:.2}s", t.elapsed().as_secs_f64());
    }
    let mut out = J::obj();
    out.set("tool", "p99-bench");
    out.set("version", env!("CARGO_PKG_VERSION"));
    out.set("command", c.command_line());
    if let Some(r) = &c.ramp {
        let rates = run::ramp_rates(r.start, r.step, r.end);
        let res = run::ramp(c, &rates, r.step_secs, &[])?;
        for (s, why) in &res.discarded {
            println!("{}  [set aside and run again: {why}]", s.summary());
        }
        for s in &res.steps {
            let verdict = |p| if run::step_passes(s, p) { "pass" } else { "FAIL" };
            println!("{}  [p99 {}, p99.9 {}]", s.summary(), verdict(99.0), verdict(99.9));
        }
        for (name, r) in [("p99", res.redline_p99), ("p99.9", res.redline_p999)] {
            match r {
                Some(r) => println!(
                    "redline at {name}: {r:.0} req/s ({name} < {} us, no errors)",
                    c.slo_us
                ),
                None => println!(
                    "redline at {name}: none of the rates passed ({name} < {} us, no errors)",
                    c.slo_us
                ),
            }
        }
        out.set("redline_p99_rps", res.redline_p99);
        out.set("redline_p999_rps", res.redline_p999);
        out.set("steps", J::Arr(res.steps.iter().map(|s| s.to_json()).collect()));
        out.set(
            "steps_run_again",
            J::Arr(
                res.discarded
                    .iter()
                    .map(|(s, why)| {
                        let mut d = s.to_json();
                        d.set("run_again_because", why.clone());
                        d
                    })
                    .collect(),
            ),
        );
    } else {
        let r = run::run_once(c)?;
        println!("{}", r.summary());
        out.set("result", r.to_json());
    }
    match c.json.as_deref() {
        None => {}
        Some("-") => print!("{}", out.to_string_pretty()),
        Some(path) => {
            std::fs::write(path, out.to_string_pretty()).map_err(|e| format!("{path}: {e}"))?
        }
    }
    Ok(())
}
