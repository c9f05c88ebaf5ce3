#!/usr/bin/python3
"""Ping server benchmark for the I/O engine: pingserver-c (pure C epoll), pingserver-c-p99
(C on the engine) and pingserver-rs (Rust on the engine), each pinned to one core with one
worker, driven by p99-bench pinned to the other core.

For 1, 16 and 256 connections, not pipelined (1 request in flight per connection) and
pipelined (16 in flight), it runs every server RUNS times, interleaved, and prints the median
requests/s, p50/p99/p999 latency and the server's CPU use (so one can see whether the server
or the generator was the bottleneck), with ratios against pingserver-c. Then it measures
io_uring enters per request at 128 connections from the engine's own counters.

usage: benches/ping_engine.py [--runs N] [--duration S] [--bin DIR]
"""
import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

SERVERS = ["pingserver-c", "pingserver-c-p99", "pingserver-rs"]


def start_server(bindir, name, server_cpu):
    p = subprocess.Popen(["taskset", "-c", str(server_cpu), os.path.join(bindir, name), "-p", "0", "-t", "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    m = re.search(r":(\d+) \(backend (\S+),", line)
    if not m:
        p.kill()
        sys.exit("%s: no port in %r" % (name, line))
    return p, int(m.group(1)), m.group(2)


def stop_server(p):
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=30)
    return err


def bench(bindir, port, pid, conns, depth, duration, gen_cpu, server_cpu):
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        subprocess.run(["taskset", "-c", str(gen_cpu), os.path.join(bindir, "p99-bench"),
                        "-s", "127.0.0.1:%d" % port, "-c", str(conns), "-d", str(depth),
                        "-w", "1", "-t", str(duration), "--cpus", str(gen_cpu),
                        "--server-pid", str(pid), "--server-core", str(server_cpu),
                        "--no-progress", "--json", f.name],
                       check=True, stdout=subprocess.DEVNULL)
        r = json.load(open(f.name))["result"]
    if r["errors"] or r["unanswered"] or r["broken_connections"]:
        sys.exit("errors in run: %r" % r)
    lat = r["latency_us"]
    rps = r["requests_per_s"]
    return {"rps": rps, "p50": lat["p50"], "p99": lat["p99"], "p999": lat["p999"],
            "srv_cpu": r["server_cpu_pct"], "core_busy": r["server_core_busy_pct"],
            # Server CPU time per request: the efficiency figure that holds up when the machine
            # is shared and neither side gets a whole core.
            "us_req": r["server_cpu_pct"] / 100.0 / rps * 1e6 if rps else 0.0}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=int, default=3)
    ap.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "..", "build", "bin"))
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--gen-cpu", type=int, default=1)
    a = ap.parse_args()

    results = {}
    backends = {}
    for conns in (1, 16, 256):
        for depth in (1, 16):
            for run in range(a.runs):
                for name in SERVERS:
                    p, port, backend = start_server(a.bin, name, a.server_cpu)
                    backends[name] = backend
                    try:
                        r = bench(a.bin, port, p.pid, conns, depth, a.duration, a.gen_cpu, a.server_cpu)
                    finally:
                        stop_server(p)
                    results.setdefault((name, conns, depth), []).append(r)
                    print("run %d %-17s conns=%-3d depth=%-2d rps=%9.0f p50=%8.1f p99=%8.1f p999=%9.1f srv_cpu=%5.1f%% core_busy=%5.1f%%"
                          % (run, name, conns, depth, r["rps"], r["p50"], r["p99"], r["p999"], r["srv_cpu"], r["core_busy"]),
                          file=sys.stderr, flush=True)

    print("\nmedians of %d runs, %ds each; server pinned to CPU %d (1 worker), p99-bench on CPU %d"
          % (a.runs, a.duration, a.server_cpu, a.gen_cpu))
    print("backends: " + ", ".join("%s=%s" % kv for kv in backends.items()))
    print("%-17s %5s %5s %10s %7s %9s %9s %10s %8s %10s %9s" % ("server", "conns", "depth", "req/s", "x C", "p50 us", "p99 us", "p999 us", "srv cpu", "cpu us/req", "core busy"))
    for conns in (1, 16, 256):
        for depth in (1, 16):
            base = statistics.median(r["rps"] for r in results[("pingserver-c", conns, depth)])
            for name in SERVERS:
                rs = results[(name, conns, depth)]
                med = lambda k: statistics.median(r[k] for r in rs)
                print("%-17s %5d %5d %10.0f %7.3f %9.1f %9.1f %10.1f %7.1f%% %10.3f %8.1f%%"
                      % (name, conns, depth, med("rps"), med("rps") / base, med("p50"), med("p99"), med("p999"),
                         med("srv_cpu"), med("us_req"), med("core_busy")))
            rs_rs = statistics.median(r["rps"] for r in results[("pingserver-rs", conns, depth)])
            rs_c = statistics.median(r["rps"] for r in results[("pingserver-c-p99", conns, depth)])
            print("%-17s %5d %5d  pingserver-rs / pingserver-c-p99 = %.3f" % ("", conns, depth, rs_rs / rs_c))

    print("\nio_uring enters per request at 128 connections (engine counters, whole run incl. warm-up)")
    for name in ("pingserver-c-p99", "pingserver-rs"):
        vals = []
        for run in range(a.runs):
            p, port, backend = start_server(a.bin, name, a.server_cpu)
            bench(a.bin, port, p.pid, 128, 1, a.duration, a.gen_cpu, a.server_cpu)
            err = stop_server(p)
            m = re.search(r"enters (\d+), submissions (\d+), completions (\d+), bytes_in (\d+)", err)
            enters, subs, comps, bytes_in = (int(x) for x in m.groups())
            reqs = bytes_in / 6
            vals.append((enters / reqs, subs / reqs, comps / reqs))
        vals.sort()
        e, s, c = vals[len(vals) // 2]
        print("%-17s backend=%s enters/req=%.3f submissions/req=%.3f completions/req=%.3f (median of %d)"
              % (name, backend, e, s, c, a.runs))


if __name__ == "__main__":
    main()
