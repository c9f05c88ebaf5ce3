"""Throughput and tail latency of mcserver variants against memcached -t 1, same load.

Each server runs with one worker thread pinned to one core (taskset), the load generator
(build/bin/p99-bench, memcache text protocol: 32-byte keys, 100-byte values, 90% gets,
every value read back verified) pinned to another. Servers are measured in interleaved
rounds so that noise from other work on the machine hits all of them alike; the table shows
the median of the rounds and the ratio to memcached.

usage: /usr/bin/python3 tests/mcserver/bench.py [--rounds 3] [--duration 5] [--conns 16]
           [--pipeline 1] [--server-cpu 0] [--load-cpu 1] BIN...
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

import mcutil
from mcutil import start_mcserver, start_memcached

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.join(HERE, "..", "..", "build", "bin", "p99-bench")


def run_one(name, start, a):
    srv = start()
    try:
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            cmd = [BENCH, "-P", "memcache", "-s", "127.0.0.1:%d" % srv.port,
                   "-c", str(a.conns), "-d", str(a.pipeline), "-w", "1", "-t", str(a.duration),
                   "--keys", str(a.keys), "--cpus", str(a.load_cpu),
                   "--server-pid", str(srv.proc.pid), "--json", out.name, "--no-progress"]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=a.duration + 120)
            r = json.load(open(out.name))["result"]
    finally:
        srv.stop()
    if r["errors"] or r["unanswered"]:
        raise RuntimeError("%s: %d errors, %d unanswered" % (name, r["errors"], r["unanswered"]))
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--pipeline", type=int, default=1)
    ap.add_argument("--keys", type=int, default=100000)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("bins", nargs="+")
    a = ap.parse_args()
    pin = ["taskset", "-c", str(a.server_cpu)]
    servers = []
    if shutil.which("memcached"):
        servers.append(("memcached -t 1", lambda: start_memcached("-t", "1", "-m", "1024")))
    for b in a.bins:
        servers.append(("%s -t 1" % os.path.basename(b),
                        lambda b=b: start_mcserver(b, "-t", "1", "-m", "1024")))
    mcutil.COMMAND_PREFIX = pin  # every server starts under taskset

    results = {name: [] for name, _ in servers}
    for rnd in range(a.rounds):
        for name, start in servers:
            r = run_one(name, start, a)
            results[name].append(r)
            print("round %d %-28s %9.0f req/s  p50 %7.1f  p99 %8.1f  p999 %8.1f us  srv cpu %5.1f%%"
                  % (rnd + 1, name, r["requests_per_s"], r["latency_us"]["p50"],
                     r["latency_us"]["p99"], r["latency_us"]["p999"], r["server_cpu_pct"] or 0),
                  flush=True)

    def med(name, f):
        return statistics.median(f(r) for r in results[name])

    base = servers[0][0]
    print("\nmedian of %d rounds, %d conns x %d deep, %ds each, server on cpu %d, load on cpu %d"
          % (a.rounds, a.conns, a.pipeline, a.duration, a.server_cpu, a.load_cpu))
    print("%-28s %10s %7s %9s %9s %9s" % ("server", "req/s", "ratio", "p50 us", "p99 us", "p999 us"))
    for name, _ in servers:
        rps = med(name, lambda r: r["requests_per_s"])
        print("%-28s %10.0f %7.2f %9.1f %9.1f %9.1f"
              % (name, rps, rps / med(base, lambda r: r["requests_per_s"]),
                 med(name, lambda r: r["latency_us"]["p50"]),
                 med(name, lambda r: r["latency_us"]["p99"]),
                 med(name, lambda r: r["latency_us"]["p999"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
