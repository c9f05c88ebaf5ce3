#!/bin/bash
# Cross-check of p99-bench against memcaslap (libmemcached-tools) on memcached -t 1: the same
# workload (16 connections, one request in flight each, 90% get / 10% set, 32-byte keys,
# 100-byte values), server on cpu 0, load on cpu 1, the two tools alternating for ROUNDS rounds.
# Prints each tool's throughput and latency (memcaslap: average, and p99 as the upper bound of
# its log2 histogram bucket; p99-bench: average and p99 from its HDR histogram).
#   tests/crosscheck-memcaslap.sh [BIN_DIR] [SECONDS] [ROUNDS]
set -euo pipefail
BIN=${1:-build/bin}
SECS=${2:-5}   # at least 2
ROUNDS=${3:-3}
TMP=$(mktemp -d)
PORT=$(/usr/bin/python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
taskset -c 0 memcached -t 1 -p "$PORT" -U 0 -l 127.0.0.1 -m 1024 -u nobody &
MC=$!
trap 'kill $MC 2>/dev/null; wait $MC 2>/dev/null; rm -rf "$TMP"' EXIT
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break; sleep 0.1; done
printf 'key\n32 32 1\nvalue\n100 100 1\ncmd\n0 0.1\n1 0.9\n' >"$TMP/cfg"
cpu_ticks() { awk '{print $14 + $15}' "/proc/$MC/stat"; }
for r in $(seq "$ROUNDS"); do
  # memcached's CPU is sampled inside memcaslap's run (it spends about a second starting and
  # stopping outside its timed run): from 0.5 s in to 0.5 s before the end.
  TIMEFORMAT='%U %S %R'
  { time taskset -c 1 memcaslap -s 127.0.0.1:"$PORT" -T 1 -c 16 -t "${SECS}s" -F "$TMP/cfg" -S "${SECS}s" >"$TMP/mcs.$r" 2>&1; } 2>"$TMP/mcs.$r.time" &
  TP=$!
  until grep -q "get proportion" "$TMP/mcs.$r" 2>/dev/null || ! kill -0 $TP 2>/dev/null; do sleep 0.05; done
  sleep 0.5; t0=$(cpu_ticks); s0=$(date +%s.%N)
  sleep "$(awk "BEGIN{print $SECS - 1}")"; t1=$(cpu_ticks); s1=$(date +%s.%N)
  wait $TP
  echo "$t0 $t1 $s0 $s1 $(getconf CLK_TCK) $(cat "$TMP/mcs.$r.time")" >"$TMP/mcs.$r.cpu"
  taskset -c 1 "$BIN/p99-bench" -P memcache -s 127.0.0.1:"$PORT" -c 16 -d 1 -w 1 -t "$SECS" --keys 100000 \
    --get-ratio 0.9 --key-size 32 --value-size 100 --server-pid $MC --no-progress --json "$TMP/pb.$r.json" >/dev/null 2>&1
done
/usr/bin/python3 - "$TMP" "$ROUNDS" <<'PY'
import json, re, statistics, sys
tmp, rounds = sys.argv[1], int(sys.argv[2])
rows = []
for r in range(1, rounds + 1):
    t = open(f"{tmp}/mcs.{r}").read()
    tps = float(re.search(r"Run time: \S+ Ops: \d+ TPS: (\d+)", t).group(1))
    total = t[t.index("Total Statistics ("):]
    avg = float(re.search(r"Avg:\s+(\d+)", total).group(1))
    # Log2 Dist rows: "  base:  c0 c1 c2 c3"; column i counts latencies in (2^(base+i-1), 2^(base+i)] us
    # (memaslap's bucket index is the rounded-up log2: its documented example has Min 26 in
    # bucket 5 and Max 3791 in bucket 12).
    buckets = []
    for m in re.finditer(r"^\s+(\d+):((?:\s+\d+)+)\s*$", total.split("Log2 Dist:")[1], re.M):
        base = int(m.group(1))
        for i, c in enumerate(m.group(2).split()):
            buckets.append((2 ** (base + i), int(c)))
    n = sum(c for _, c in buckets)
    acc, p99 = 0, None
    for upper, c in buckets:
        acc += c
        if acc >= 0.99 * n:
            p99 = upper
            break
    t0, t1, s0, s1, hz, gu, gs, wall = map(float, open(f"{tmp}/mcs.{r}.cpu").read().split())
    mcs_cpu = (t1 - t0) / hz / (s1 - s0) * 100
    # memcaslap's own CPU over its whole life (start-up and wind-down included)
    mcs_gen = (gu + gs) / wall * 100
    pb = json.load(open(f"{tmp}/pb.{r}.json"))["result"]
    rows.append((tps, avg, p99, pb["requests_per_s"], pb["latency_us"]["mean"], pb["latency_us"]["p99"], pb["server_cpu_pct"]))
    print(f"round {r}: memcaslap {tps:,.0f} ops/s avg {avg:.0f} us p99 <= {p99} us (memcached cpu {mcs_cpu:.0f}%, memcaslap cpu {mcs_gen:.0f}%) | "
          f"p99-bench {pb['requests_per_s']:,.0f} req/s avg {pb['latency_us']['mean']:.0f} us p99 {pb['latency_us']['p99']:.0f} us "
          f"(memcached cpu {pb['server_cpu_pct']:.0f}%, p99-bench cpu {pb['generator_cpu_pct']:.0f}%)")
med = [statistics.median(c) for c in zip(*rows)]
print(f"median:  memcaslap {med[0]:,.0f} ops/s avg {med[1]:.0f} us p99 <= {med[2]:.0f} us | "
      f"p99-bench {med[3]:,.0f} req/s avg {med[4]:.0f} us p99 {med[5]:.0f} us")
print(f"throughput p99-bench/memcaslap = {med[3] / med[0]:.3f}")
PY
