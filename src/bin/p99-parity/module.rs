//! Module-level parity: the store benchmark (C harness, C slab store vs libp99's store) run in
//! process, reported as the first table.

use crate::json::J;
use crate::Opts;

pub struct ModuleResult {
    pub problem: Option<String>,
}

pub fn run(_o: &Opts) -> ModuleResult {
    ModuleResult { problem: Some("not built (the store benchmark needs c-examples/mcserver/storage_slab.c)".into()) }
}

impl ModuleResult {
    pub fn print(&self) {
        println!();
        println!("== module: cache store in process (same C harness) ==");
        if let Some(p) = &self.problem {
            println!("   {p}");
        }
    }

    pub fn to_json(&self) -> J {
        let mut o = J::obj();
        o.set("problem", self.problem.clone());
        o
    }
}
