//! Module-level parity: p99-storebench (one C harness driving the C slab store and libp99's
//! store in process; benches/storebench) at 1 and 2 threads, reported as the first table. The
//! benchmark may run on the server core and the load core (its 1-thread runs use the lower
//! of the two, its 2-thread runs one thread on each); nothing else of make parity runs
//! meanwhile. Its JSON (per store and thread count: set/get/mix ns/op, Mops/s, ratios to the
//! slab store, scaling to 1 thread) is embedded in results.json as is.

use crate::json::J;
use crate::Opts;
use std::process::Command;

pub struct ModuleResult {
    pub problem: Option<String>,
    pub table: String,
    pub command: Option<String>,
    pub json: Option<String>,
}

pub fn run(o: &Opts) -> ModuleResult {
    let prog = o.bin_dir.join("p99-storebench");
    if !prog.is_file() {
        return ModuleResult {
            problem: Some(format!(
                "not built ({} missing: `make storebench` builds it once c-examples/mcserver/storage_slab.c exists)",
                prog.display()
            )),
            table: String::new(),
            command: None,
            json: None,
        };
    }
    let json_path = o.out.join("module.json");
    let cpus = if o.server_cpu == o.load_cpu {
        o.server_cpu.to_string()
    } else {
        format!("{},{}", o.server_cpu, o.load_cpu)
    };
    let mut args: Vec<String> = vec!["-c".into(), cpus, prog.display().to_string()];
    // 500,000 operations a phase (storebench's own default is 2,000,000): at 0.25-0.6 us an
    // operation each phase of a round still takes 0.1-0.3 s, and the five rounds' median is
    // what the table shows; --module-args '--ops N' replaces it.
    args.extend(["--ops".into(), "500000".into()]);
    if o.quick {
        args.push("--quick".into());
    }
    // Before the user's flags, so that --module-args '--threads N' replaces it.
    args.extend(["--threads".into(), "1,2".into()]);
    args.extend(o.module_args.iter().cloned());
    args.extend(["--json".into(), json_path.display().to_string()]);
    let command = format!("taskset {}", args.join(" "));
    crate::progress(format_args!("[module] store benchmark ..."));
    let out = Command::new("taskset").args(&args).output();
    crate::progress(format_args!(""));
    match out {
        Ok(out) => {
            let table = String::from_utf8_lossy(&out.stdout).into_owned();
            let problem = (!out.status.success()).then(|| {
                format!("failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim())
            });
            let json = std::fs::read_to_string(&json_path).ok();
            ModuleResult { problem, table, command: Some(command), json }
        }
        Err(e) => ModuleResult {
            problem: Some(format!("taskset: {e}")),
            table: String::new(),
            command: Some(command),
            json: None,
        },
    }
}

impl ModuleResult {
    pub fn print(&self) {
        println!();
        println!("== module: cache store in process (one C harness, C slab store vs libp99 store; 1 and 2 threads) ==");
        print!("{}", self.table);
        if let Some(p) = &self.problem {
            println!("   {p}");
        }
    }

    pub fn to_json(&self) -> J {
        let mut o = J::obj();
        o.set("command", self.command.clone());
        o.set("problem", self.problem.clone());
        o.set("result", self.json.clone().map(J::Raw));
        o
    }
}
