#!/bin/bash
# UDP ping over a veth pair between two network namespaces: udpping-xdp (libp99 AF_XDP) against
# udpping-kernel (recvmmsg/sendmmsg), driven by p99-xdp-load (an AF_XDP sender/receiver).
#
#   benches/udpping_xdp.sh [BIN_DIR] [LOAD_BIN]     (root; defaults build/bin, target/release)
#
# For each responder: a saturation run (load sends as fast as it can, window-limited) giving
# replies/s, and a fixed-rate run (RATE pps) giving round-trip p50/p99 at equal load. The
# responder is pinned to CPU $SERVER_CPU and the load to CPU $LOAD_CPU; the responder's own CPU
# time (user+system, from /proc) divided by replies gives CPU per packet. Softirq work the
# kernel does on the load's CPU for the veth hop is not charged to either responder.
set -euo pipefail
BIN=${1:-build/bin}
LOAD=${2:-target/release/p99-xdp-load}
DUR=${DUR:-3}
RATE=${RATE:-50000}
WINDOW=${WINDOW:-2048}
SERVER_CPU=${SERVER_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
PORT=${PORT:-7000}
NA=p99bA$$; NB=p99bB$$
cleanup() {
  [ -n "${SPID:-}" ] && kill "$SPID" 2>/dev/null || true
  ip netns del "$NA" 2>/dev/null || true
  ip netns del "$NB" 2>/dev/null || true
}
trap cleanup EXIT
ip netns add "$NA"; ip netns add "$NB"
ip -n "$NA" link add va numtxqueues 1 numrxqueues 1 type veth peer name vb netns "$NB" numtxqueues 1 numrxqueues 1
ip -n "$NA" addr add 10.98.0.1/24 dev va; ip -n "$NB" addr add 10.98.0.2/24 dev vb
for n in "$NA" "$NB"; do ip -n "$n" link set lo up; done
ip -n "$NA" link set va up; ip -n "$NB" link set vb up
MAC_B=$(ip -n "$NB" -o link show vb | sed -n 's/.*link\/ether \([0-9a-f:]*\).*/\1/p')
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

run() { # name, server command...
  local name=$1; shift
  ip netns exec "$NB" taskset -c "$SERVER_CPU" "$@" 2>"/tmp/p99bench.$$.$name.log" &
  SPID=$!
  sleep 0.5
  # Prime ARP (kernel responder) and check the responder answers.
  ip netns exec "$NA" taskset -c "$LOAD_CPU" "$LOAD" -i va --dst-ip 10.98.0.2 --dst-mac "$MAC_B" -p "$PORT" \
     --rate 1000 --duration 0.3 >/dev/null
  local t0; t0=$(ticks "$SPID")
  local sat; sat=$(ip netns exec "$NA" taskset -c "$LOAD_CPU" "$LOAD" -i va --dst-ip 10.98.0.2 --dst-mac "$MAC_B" \
     -p "$PORT" --duration "$DUR" --window "$WINDOW")
  local t1; t1=$(ticks "$SPID")
  local fixed; fixed=$(ip netns exec "$NA" taskset -c "$LOAD_CPU" "$LOAD" -i va --dst-ip 10.98.0.2 --dst-mac "$MAC_B" \
     -p "$PORT" --duration "$DUR" --rate "$RATE")
  kill -INT "$SPID"; wait "$SPID" || true; SPID=
  local recv; recv=$(sed -n 's/.*received=\([0-9]*\).*/\1/p' <<<"$sat")
  local cpu_ns; cpu_ns=$(awk -v t=$((t1 - t0)) -v hz="$HZ" -v n="$recv" 'BEGIN{ if (n>0) printf "%.0f", t/hz*1e9/n; else print "nan" }')
  echo "$name saturation: $sat server_cpu_ns_per_pkt=$cpu_ns"
  echo "$name rate=$RATE: $fixed"
  tail -n 1 "/tmp/p99bench.$$.$name.log" | sed "s/^/$name server: /"; rm -f "/tmp/p99bench.$$.$name.log"
}

run kernel "$BIN/udpping-kernel" -p "$PORT" -l 10.98.0.2
run xdp "$BIN/udpping-xdp" -p "$PORT" -i vb -q 0 -m ${XDP_MODE:-native}
