#!/usr/bin/env bash
# TLS handshake rate of the three ping servers, one core each: pingserver-c (OpenSSL),
# pingserver-c-p99 and pingserver-rs (the engine's rustls). Each server runs one worker pinned
# to CPU 0; `openssl s_time` (no payload: handshake, then close) runs pinned to CPU 1. Rounds
# are interleaved; each prints handshakes per second and the server's CPU time per handshake
# (from /proc/PID/stat), for full handshakes (-new) and for -reuse (s_time resumes the first
# session: with TLS 1.2 that is a resumed handshake; with TLS 1.3 s_time does not resume).
# The key is P-256 ECDSA, made here with the openssl tool (never committed).
#
# usage: benches/tls_handshake.sh [BIN_DIR] [SECONDS] [ROUNDS] [TLS_FLAG]
#   TLS_FLAG: -tls1_3 (default) or -tls1_2
set -euo pipefail
bin=${1:-build/bin}
secs=${2:-4}
rounds=${3:-3}
ver=${4:--tls1_3}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$dir/key.pem" \
	-out "$dir/cert.pem" -days 2 -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1 2>/dev/null
tck=$(getconf CLK_TCK)

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

run_one() { # server mode
	local name=$1 mode=$2
	"$bin/$name" -p 0 -t 1 --tls-cert "$dir/cert.pem" --tls-key "$dir/key.pem" >"$dir/out" 2>"$dir/err" &
	local pid=$!
	local port=""
	for _ in $(seq 100); do
		port=$(sed -n 's/.*listening on [^:]*:\([0-9]*\).*/\1/p' "$dir/out")
		[ -n "$port" ] && break
		sleep 0.05
	done
	taskset -pc 0 "$pid" >/dev/null
	for t in /proc/"$pid"/task/*; do taskset -pc 0 "${t##*/}" >/dev/null; done
	if [ -z "$port" ]; then echo "$name did not start: $(cat "$dir/err")" >&2; return 1; fi
	local before after res n t0 t1 real
	before=$(cpu_ticks "$pid")
	t0=$(date +%s.%N)
	res=$(taskset -c 1 openssl s_time -connect "127.0.0.1:$port" "$mode" "$ver" -time "$secs" 2>&1 || true)
	t1=$(date +%s.%N)
	after=$(cpu_ticks "$pid" 2>/dev/null || echo dead)
	kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
	# s_time's own rates are per client CPU second; the wall clock around it is what counts.
	n=$(echo "$res" | sed -n 's/^\([0-9]*\) connections in [0-9]* real seconds.*/\1/p' | tail -1)
	real=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
	if [ -z "$n" ] || [ "$n" = 0 ] || [ "$after" = dead ]; then
		echo "$name $mode: no handshakes or server gone ($res; server stderr: $(cat "$dir/err"))" >&2
		return
	fi
	awk -v name="$name" -v mode="$mode" -v n="$n" -v real="$real" -v t="$((after - before))" -v tck="$tck" \
		'BEGIN { printf "%-17s %-6s %8.0f handshakes/s  server CPU %6.1f us/handshake\n", name, mode, n / real, t / tck * 1e6 / n }'
}

echo "openssl s_time $ver, ${secs}s per run, server on CPU 0, client on CPU 1"
for r in $(seq "$rounds"); do
	echo "-- round $r"
	for mode in -new -reuse; do
		for s in pingserver-c pingserver-c-p99 pingserver-rs; do
			run_one "$s" "$mode"
		done
	done
done
