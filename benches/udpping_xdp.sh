#!/bin/bash
# UDP ping over a veth pair between two network namespaces: udpping-xdp (libp99 AF_XDP) against
# udpping-kernel (recvmmsg/sendmmsg), driven by p99-xdp-load (an AF_XDP sender/receiver).
#
#   benches/udpping_xdp.sh [BIN_DIR] [LOAD_BIN]     (root; defaults build/bin, target/release)
#
# Rounds alternate the two responders (the machine may be shared: compare medians). For each
# responder: a saturation run (load sends as fast as it can, window-limited) giving
# replies/s, a fixed-rate run (RATE pps) giving round-trip p50/p99 at equal load, and a
# closed-loop run with one ping outstanding (pure round-trip time). The
# responder is pinned to CPU $SERVER_CPU and the load to CPU $LOAD_CPU; the responder's own CPU
# time (user+system, from /proc) divided by replies gives CPU per packet. Softirq work the
# kernel does on the load's CPU for the veth hop is not charged to either responder.
set -euo pipefail
BIN=${1:-build/bin}
LOAD=${2:-target/release/p99-xdp-load}
DUR=${DUR:-3}
RATE=${RATE:-20000}
ROUNDS=${ROUNDS:-3}
XDP_MODE=${XDP_MODE:-native}
WINDOW=${WINDOW:-2048}
SERVER_CPU=${SERVER_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
PORT=${PORT:-7000}
LOAD_MODE=${LOAD_MODE:-generic}
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

LOG=$(mktemp)
run() { # name, server command...
  local name=$1; shift
  ip netns exec "$NB" taskset -c "$SERVER_CPU" "$@" 2>/dev/null &
  SPID=$!
  sleep 0.5
  # Prime ARP (kernel responder) and check the responder answers.
  ip netns exec "$NA" taskset -c "$LOAD_CPU" "$LOAD" -i va --dst-ip 10.98.0.2 --dst-mac "$MAC_B" -p "$PORT" \
     --rate 1000 --duration 0.3 --mode "$LOAD_MODE" >/dev/null
  local t0 t1 t2 sat fixed one
  t0=$(ticks "$SPID")
  sat=$(ip netns exec "$NA" taskset -c "$LOAD_CPU" "$LOAD" -i va --dst-ip 10.98.0.2 --dst-mac "$MAC_B" \
     -p "$PORT" --duration "$DUR" --window "$WINDOW" --mode "$LOAD_MODE")
  t1=$(ticks "$SPID")
  fixed=$(ip netns exec "$NA" taskset -c "$LOAD_CPU" "$LOAD" -i va --dst-ip 10.98.0.2 --dst-mac "$MAC_B" \
     -p "$PORT" --duration "$DUR" --rate "$RATE" --mode "$LOAD_MODE")
  t2=$(ticks "$SPID")
  one=$(ip netns exec "$NA" taskset -c "$LOAD_CPU" "$LOAD" -i va --dst-ip 10.98.0.2 --dst-mac "$MAC_B" \
     -p "$PORT" --duration "$DUR" --window 1 --mode "$LOAD_MODE")
  kill -INT "$SPID"; wait "$SPID" || true; SPID=
  echo "$name sat $sat server_ticks=$((t1 - t0)) hz=$HZ" | tee -a "$LOG"
  echo "$name rate $fixed server_ticks=$((t2 - t1)) hz=$HZ" | tee -a "$LOG"
  echo "$name one $one" | tee -a "$LOG"
}

for round in $(seq 1 "$ROUNDS"); do
  echo "# round $round"
  run kernel "$BIN/udpping-kernel" -p "$PORT" -l 10.98.0.2
  run xdp "$BIN/udpping-xdp" -p "$PORT" -i vb -q 0 -m "$XDP_MODE"
done

/usr/bin/python3 - "$LOG" "$RATE" <<'PY'
import sys, statistics as st
rows = {}
for line in open(sys.argv[1]):
    w = line.split()
    kv = dict(x.split("=", 1) for x in w[2:] if "=" in x)
    rows.setdefault((w[0], w[1]), []).append(kv)
def med(name, kind, key, f=float):
    return st.median(f(r[key]) for r in rows[(name, kind)])
def cpu_ns(name, kind):
    return st.median(int(r["server_ticks"]) / int(r["hz"]) * 1e9 / max(1, int(r["received"])) for r in rows[(name, kind)])
print(f"\nmedians over {len(rows[('kernel','sat')])} rounds (alternating):")
print(f"{'responder':10} {'sat replies/s':>14} {'cpu ns/pkt(sat)':>16} {'rate':>7} {'lost':>6} {'p50 us':>8} {'p99 us':>9} {'cpu ns/pkt(rate)':>17} {'1-outstanding p50/p99 us':>25}")
for n in ("kernel", "xdp"):
    print(f"{n:10} {med(n,'sat','recv_pps'):14.0f} {cpu_ns(n,'sat'):16.0f} {sys.argv[2]:>7} "
          f"{med(n,'rate','sent',int)-med(n,'rate','received',int):6.0f} {med(n,'rate','rtt_us_p50'):8.1f} "
          f"{med(n,'rate','rtt_us_p99'):9.1f} {cpu_ns(n,'rate'):17.0f} "
          f"{med(n,'one','rtt_us_p50'):12.1f}/{med(n,'one','rtt_us_p99'):.1f}")
k, x = cpu_ns("kernel", "sat"), cpu_ns("xdp", "sat")
print(f"xdp/kernel: replies/s x{med('xdp','sat','recv_pps')/med('kernel','sat','recv_pps'):.2f}, "
      f"packets per CPU-second x{k/x:.2f} (saturation), x{cpu_ns('kernel','rate')/cpu_ns('xdp','rate'):.2f} (at {sys.argv[2]} pps)")
PY
rm -f "$LOG"
