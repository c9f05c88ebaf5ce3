//! The TLS scenarios: `tls-ping` (the ping servers with `--tls-cert/--tls-key`: pingserver-c
//! through OpenSSL is the baseline), `tls-cache` (the mcserver builds that serve TLS, on the p99
//! engine, with memcached -Z as reference) and `tls-handshake` (a new connection per request,
//! full and then resumed handshakes, each ping server on one core). They run like the plaintext
//! scenarios (interleaved rounds, CPU per request, verdicts), with fewer rounds by default
//! (`--tls-rounds`). The certificates are made for the run with the openssl command-line tool in
//! a temporary directory, removed afterwards: a P-256 ECDSA CA and a server certificate it
//! signed, for 127.0.0.1 and localhost.

use super::*;

/// A CA and a server certificate for this run, in a directory removed on drop.
pub struct Certs {
    dir: PathBuf,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The key type the scenarios use, as the tables say it.
pub const KEY_TYPE: &str = "ECDSA P-256";

fn openssl(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("openssl: {e} (Debian package openssl)"))?;
    if !out.status.success() {
        return Err(format!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

impl Certs {
    pub fn make() -> Result<Certs, String> {
        let dir = std::env::temp_dir().join(format!("p99-parity-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let certs = Certs {
            ca: dir.join("ca.crt"),
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            dir,
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=p99-parity CA",
        ]);
        openssl(&certs.dir, &ca)?;
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]);
        openssl(&certs.dir, &req)?;
        std::fs::write(
            certs.dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
        )
        .map_err(|e| format!("{}: {e}", certs.dir.display()))?;
        openssl(
            &certs.dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
                "-out",
                "server.crt",
            ],
        )?;
        Ok(certs)
    }

    fn path(p: &Path) -> String {
        p.display().to_string()
    }
}

/// The options of a TLS scenario: the run's, with `--tls-rounds` rounds.
fn tls_opts(o: &Opts) -> Opts {
    Opts { rounds: o.tls_rounds, latency_rounds: o.latency_rounds.min(o.tls_rounds), ..o.clone() }
}

/// Runs the TLS scenarios `o.scenarios` asks for; their JSON goes into `scen_json`.
pub fn run(
    o: &Opts,
    scen_json: &mut J,
    plots: &mut Vec<String>,
    laps: &mut Laps,
) -> Result<(), String> {
    let wanted = |k: &str| o.scenarios.iter().any(|s| s == k);
    if !["tls-ping", "tls-cache", "tls-handshake"].iter().any(|k| wanted(k)) {
        return Ok(());
    }
    let certs = match Certs::make() {
        Ok(c) => c,
        Err(e) => {
            // Said in the output and the JSON, never skipped silently.
            println!("\n== TLS scenarios not run: cannot make certificates: {e} ==");
            let mut j = J::obj();
            j.set("problem", format!("cannot make certificates: {e}"));
            scen_json.set("tls", j);
            return Ok(());
        }
    };
    let to = tls_opts(o);
    let srv_tls =
        format!("--tls-cert {} --tls-key {}", Certs::path(&certs.cert), Certs::path(&certs.key));
    let ping_specs = |args: &str| {
        ["pingserver-c", "pingserver-c-p99", "pingserver-rs"]
            .iter()
            .enumerate()
            .map(|(i, name)| Spec {
                name: name.to_string(),
                role: if i == 0 { Role::Baseline } else { Role::Candidate },
                program: find_built(o, name),
                args: args.split_whitespace().map(String::from).collect(),
            })
            .collect::<Vec<_>>()
    };
    let client_verify = vec!["--tls".to_string(), "--tls-ca".into(), Certs::path(&certs.ca)];
    if wanted("tls-ping") {
        let mut extra = client_verify.clone();
        extra.extend(o.ping_args.iter().cloned());
        let wl = workload(&to, Protocol::Ping, &extra)?;
        let specs = ping_specs(&format!("-p {{port}} -l {{host}} -t 1 {srv_tls}"));
        let mut sc = new_scenario("tls-ping", "TLS ping (TCP + TLS 1.3)", wl, specs);
        sc.notes.push(note_keys());
        run_scenario(&to, &mut sc, None);
        print_table(&sc);
        plots.extend(write_plots(&to, &sc));
        scen_json.set("tls-ping", scenario_json(&sc));
        laps.lap("tls-ping");
    }
    if wanted("tls-cache") {
        let mut extra = client_verify.clone();
        extra.extend(o.cache_args.iter().cloned());
        let wl = workload(&to, Protocol::Memcache, &extra)?;
        let z = format!(
            "-Z -o ssl_chain_cert={},ssl_key={}",
            Certs::path(&certs.cert),
            Certs::path(&certs.key)
        );
        let mc = format!("-p {{port}} -l {{host}} -t 1 -m 1024 -U 0 {z}");
        let mk = |name: &str, role: Role, program: Result<PathBuf, String>, args: &str| Spec {
            name: name.to_string(),
            role,
            program,
            args: args.split_whitespace().map(String::from).collect(),
        };
        let specs = vec![
            mk("mcserver-slab-uring", Role::Baseline, find_built(o, "mcserver-slab-uring"), &mc),
            mk("mcserver-p99-uring", Role::Candidate, find_built(o, "mcserver-p99-uring"), &mc),
            mk(
                "memcached -Z -t 1",
                Role::Reference,
                find_on_path("memcached"),
                &format!("-p {{port}} -l {{host}} -t 1 -m 1024 -U 0 -u nobody {z}"),
            ),
        ];
        let mut sc =
            new_scenario("tls-cache", "TLS cache (memcache text protocol over TLS 1.3)", wl, specs);
        sc.notes.push(note_keys());
        sc.notes.push(
            "the *-epoll mcserver builds have no TLS (it comes with the p99 I/O module)".into(),
        );
        run_scenario(&to, &mut sc, None);
        print_table(&sc);
        plots.extend(write_plots(&to, &sc));
        scen_json.set("tls-cache", scenario_json(&sc));
        laps.lap("tls-cache");
    }
    if wanted("tls-handshake") {
        let mut j = J::obj();
        for (mode, title) in [
            ("full", "TLS handshakes, full (TLS 1.3, a new connection per request)"),
            ("resumed", "TLS handshakes, resumed (TLS 1.3 tickets, a new connection per request)"),
        ] {
            // Eight attempts in flight keep one server core busy; --tls-insecure keeps the
            // generator's share of a handshake to the key exchange (it checks no certificate).
            let extra: Vec<String> = format!(
                "--tls --tls-insecure --tls-version 1.3 --handshake {mode} --connections 8"
            )
            .split_whitespace()
            .map(String::from)
            .collect();
            let wl = workload(&to, Protocol::Ping, &extra)?;
            let specs = ping_specs(&format!("-p {{port}} -l {{host}} -t 1 {srv_tls}"));
            let mut sc = new_scenario("tls-handshake", title, wl, specs);
            run_scenario(&to, &mut sc, None);
            print_handshake_table(&sc);
            j.set(mode, scenario_json(&sc));
        }
        scen_json.set("tls-handshake", j);
        laps.lap("tls-handshake");
    }
    Ok(())
}

fn note_keys() -> String {
    format!(
        "certificates made for this run ({KEY_TYPE}, openssl CLI); the generator verifies the \
         server's certificate and speaks rustls 0.23 (ring), TLS 1.3 negotiated"
    )
}

/// The handshake table: handshakes per second, CPU per handshake of server and generator, what
/// one server core could do at that cost, the resumed share and failures, and the verdict on
/// server CPU per handshake (the same rule as the other tables).
fn print_handshake_table(sc: &Scenario) {
    let base = sc.variants.iter().find(|v| v.spec.role == Role::Baseline);
    let base_cost = base.map(|b| b.cpu_per_request()).unwrap_or_default();
    println!();
    println!("== {} ==", sc.title);
    println!(
        "   load: p99-bench --handshake {}, {} connections in flight, each: connect, handshake, PING, PONG, close; {KEY_TYPE} key",
        match sc.workload.handshake {
            Some(config::Handshake::Resumed) => "resumed",
            _ => "full",
        },
        sc.workload.connections
    );
    println!(
        "{:<20} {:>8} {:>18} {:>4} {:>4} {:>15} {:>9} {:>9} {:>8} {:>18} {:>8} {:>6} {:>14}",
        "variant",
        "hs/s",
        "x base (range)",
        "srv%",
        "gen%",
        "peak is",
        "srv us/hs",
        "gen us/hs",
        "hs/s/core",
        "x base cpu (range)",
        "resumed",
        "failed",
        "verdict"
    );
    for v in &sc.variants {
        if let Some(p) = &v.problem {
            if v.peaks.is_empty() {
                println!("{:<20} {}", v.spec.name, p);
                continue;
            }
        }
        let is_base = v.spec.role == Role::Baseline;
        let tput = base.filter(|_| !is_base).and_then(|b| round_ratios(v, b, |r| Some(r.rps)));
        let cost = base
            .filter(|_| !is_base)
            .and_then(|b| round_ratios(b, v, |r| r.server_us_per_request()));
        let (full, resumed, failed) = v.peaks.iter().fold((0, 0, 0), |a, r| {
            (a.0 + r.counts.tls_full, a.1 + r.counts.tls_resumed, a.2 + r.errors_total())
        });
        let pc = |x: Option<f64>| x.map_or("-".into(), |c| format!("{c:.0}"));
        let us = |x: Option<f64>| x.map_or("-".into(), |c| format!("{c:.1}"));
        println!(
            "{:<20} {:>8} {:>18} {:>4} {:>4} {:>15} {:>9} {:>9} {:>8} {:>18} {:>8} {:>6} {:>14}",
            v.spec.name,
            v.median_peak().map_or("-".into(), svg::group),
            if is_base { "1.00".into() } else { fmt_spread(tput) },
            pc(v.median_cpu()),
            pc(v.median_gen_cpu()),
            peak_label(v.median_cpu(), v.median_core_busy()),
            us(v.median_cpu_per_request()),
            us(v.median_gen_per_request()),
            v.median_cpu_per_request().map_or("-".into(), |c| svg::group(1e6 / c)),
            if is_base { "1.00".into() } else { fmt_spread(cost) },
            if full + resumed > 0 {
                format!("{:.1}%", resumed as f64 * 100.0 / (full + resumed) as f64)
            } else {
                "-".into()
            },
            failed,
            if is_base {
                "baseline".to_string()
            } else {
                verdict(&v.cpu_per_request(), &base_cost).text().to_string()
            }
        );
        if let Some(p) = &v.problem {
            println!("{:<20} note: {}", "", p);
        }
        if let Some(e) = v.peaks.iter().find_map(|r| r.counts.first_error.clone()) {
            println!("{:<20} note: first failed handshake: {e}", "");
        }
    }
    println!(
        "   hs/s: handshakes completed per second (median round; each also answered one PING). srv us/hs and\n   \
         gen us/hs: CPU time per handshake of the server (accept, handshake, one PING, close) and of the\n   \
         generator; hs/s/core: 1e6 / srv us/hs, the rate one server core would sustain at that cost, which\n   \
         compares servers when the generator (a client does a key exchange per handshake too) sets the pace.\n   \
         resumed: share of the completed handshakes the server resumed (rustls reports the handshake kind).\n   \
         verdict: server CPU per handshake, every round of the variant against every round of the baseline."
    );
}
