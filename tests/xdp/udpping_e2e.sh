#!/bin/bash
# End-to-end check of the UDP ping responders on a veth pair between two private network
# namespaces: udpping-kernel and udpping-xdp (native and generic XDP) must answer every PING
# sent by the AF_XDP load source, and with udpping-xdp running, other traffic (ARP, ICMP) must
# still reach the kernel. Skips with a message only when not root or without CAP_NET_ADMIN and
# CAP_SYS_ADMIN; with them, failing to set up the namespaces fails the test. Every variant runs
# even when an earlier one failed; the exit status is the number of failures.
#
#   tests/xdp/udpping_e2e.sh BIN_DIR LOAD_BIN
set -euo pipefail
BIN=$1
LOAD=$2
if [ "$(id -u)" != 0 ]; then
  echo "SKIP udpping e2e: not root (needs network namespaces, AF_XDP and bpf)"
  exit 0
fi
capeff=$(sed -n 's/^CapEff:[[:space:]]*//p' /proc/self/status)
if (( (16#$capeff >> 12 & 1) == 0 || (16#$capeff >> 21 & 1) == 0 )); then
  echo "SKIP udpping e2e: root without CAP_NET_ADMIN and CAP_SYS_ADMIN"
  exit 0
fi
NA=p99eA$$; NB=p99eB$$
SPID=
cleanup() {
  if [ -n "$SPID" ]; then kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; fi
  ip netns del "$NA" 2>/dev/null || true
  ip netns del "$NB" 2>/dev/null || true
}
trap cleanup EXIT
setup_failed() { echo "FAIL udpping e2e: namespace/veth setup failed at: $BASH_COMMAND"; }
trap setup_failed ERR
ip netns add "$NA"; ip netns add "$NB"
ip -n "$NA" link add va numtxqueues 1 numrxqueues 1 type veth peer name vb netns "$NB" numtxqueues 1 numrxqueues 1
ip -n "$NA" addr add 10.97.0.1/24 dev va; ip -n "$NB" addr add 10.97.0.2/24 dev vb
ip -n "$NA" link set va up; ip -n "$NB" link set vb up
MAC_B=$(ip -n "$NB" -o link show vb | sed -n 's/.*link\/ether \([0-9a-f:]*\).*/\1/p')
trap - ERR
if [ -z "$MAC_B" ]; then echo "FAIL udpping e2e: no MAC address on vb"; exit 1; fi
PORT=$((20000 + $$ % 20000))
fails=0

check() { # name, server command...
  local name=$1; shift
  ip netns exec "$NB" "$@" 2>/dev/null &
  SPID=$!
  # Wait until it is ready: the first probes may be lost while it attaches/binds.
  local out=""
  for _ in $(seq 1 50); do
    out=$(ip netns exec "$NA" "$LOAD" -i va --dst-ip 10.97.0.2 --dst-mac "$MAC_B" -p "$PORT" --rate 200 --duration 0.05 || true)
    grep -q 'received=[1-9]' <<<"$out" && break
    sleep 0.1
  done
  local st=0
  out=$(ip netns exec "$NA" "$LOAD" -i va --dst-ip 10.97.0.2 --dst-mac "$MAC_B" -p "$PORT" --rate 5000 --duration 1 --size 64) || st=$?
  local sent recv
  sent=$(sed -n 's/.*sent=\([0-9]*\).*/\1/p' <<<"$out")
  recv=$(sed -n 's/.*received=\([0-9]*\).*/\1/p' <<<"$out")
  if [ "$st" != 0 ]; then
    echo "FAIL $name: load tool exited with status $st: $out"; fails=$((fails + 1))
  elif [ -z "$sent" ] || [ "$sent" -lt 4000 ] || [ "$recv" != "$sent" ]; then
    echo "FAIL $name: $out"; fails=$((fails + 1))
  else
    echo "ok   $name: $sent pings, $recv pongs"
  fi
  if ! ip netns exec "$NA" ping -c 1 -W 2 10.97.0.2 >/dev/null; then
    echo "FAIL $name: ICMP to the responder's host no longer answered"; fails=$((fails + 1))
  fi
  kill -INT "$SPID" 2>/dev/null || true # an early exit shows in the status below
  wait "$SPID" || { echo "FAIL $name: exit status $?"; fails=$((fails + 1)); }
  SPID=
  if ip -n "$NB" link show dev vb | grep -q xdp; then
    echo "FAIL $name: XDP program left attached"; fails=$((fails + 1))
  fi
}

check udpping-kernel "$BIN/udpping-kernel" -p "$PORT" -l 10.97.0.2
check "udpping-xdp native" "$BIN/udpping-xdp" -p "$PORT" -i vb -q 0 -m native
check "udpping-xdp generic" "$BIN/udpping-xdp" -p "$PORT" -i vb -q 0 -m generic
# Bad arguments are refused with a message.
if ip netns exec "$NB" "$BIN/udpping-xdp" -p "$PORT" -i nosuchdev0 2>/dev/null; then
  echo "FAIL udpping-xdp accepted a missing interface"; fails=$((fails + 1))
fi
if [ "$fails" = 0 ]; then
  echo "udpping e2e: all passed"
  exit 0
fi
echo "udpping e2e: $fails check(s) FAILED"
exit 1
