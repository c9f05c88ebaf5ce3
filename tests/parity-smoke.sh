#!/bin/bash
# Smoke test of the parity runner: a tiny run of every scenario with whatever is built (memcached
# is always there), then checks that results.json is complete and honest (figures for what ran,
# "not built" for what is missing, no errors) and that the plots are well-formed SVG.
set -euo pipefail
BIN=$1
OUT=$2
rm -rf "$OUT"
"$BIN/p99-parity" --scenarios module,ping,cache,udp --rounds 1 --warmup 0.1 --duration 0.3 \
  --ramp-secs 0.2 --ladder 0.3 --cache-args "--keys 2000" \
  --module-args "--keys 2000 --ops 20000 --rounds 1" --bin-dir "$BIN" --out "$OUT" >"$OUT.log" 2>&1 || {
  cat "$OUT.log"; echo "parity-smoke: p99-parity failed"; exit 1; }
/usr/bin/python3 - "$OUT" "$BIN" <<'PY'
import json, os, sys, xml.dom.minidom
out, bin_dir = sys.argv[1], sys.argv[2]
r = json.load(open(os.path.join(out, "results.json")))
fail = []
for key in ("git_revision", "machine", "settings", "command"):
    if not r.get(key):
        fail.append(f"results.json lacks {key}")
sc = r["scenarios"]
for name in ("module", "ping", "cache", "udp"):
    if name not in sc:
        fail.append(f"scenario {name} missing")
mod = sc["module"]
if os.path.exists(os.path.join(bin_dir, "p99-storebench")):
    if mod["problem"] or not mod["result"]:
        fail.append(f"store benchmark: {mod['problem']}")
    else:
        for st in mod["result"]["stores"]:
            if st["problem"] is None and (st["rounds"] < 1 or st["bad_values_or_failed_writes"] or st["misses"]):
                fail.append(f"store benchmark {st['store']}: wrong values, failed writes or misses")
        counts = {(st["store"], st.get("threads")) for st in mod["result"]["stores"]}
        for store in {st["store"] for st in mod["result"]["stores"]}:
            for t in (1, 2):
                if (store, t) not in counts:
                    fail.append(f"store benchmark {store}: no {t}-thread figures")
elif not (mod["problem"] or "").startswith("not built"):
    fail.append("store benchmark missing without a 'not built' note")
mc = [v for v in sc["cache"]["variants"] if v["role"] == "reference"][0]
if not (mc["median_requests_per_s"] or 0) > 0:
    fail.append(f"memcached has no throughput: {mc.get('problem')}")
for scen in ("ping", "cache", "udp"):
    for v in sc[scen]["variants"]:
        prog = v["program"]
        if prog is None:
            if not (v["problem"] or "").startswith(("not built", "not installed", "not run")):
                fail.append(f"{v['name']}: missing program without a 'not built' note")
            continue
        if v["problem"]:
            # The runner's job is to say so; whether a server works is its own tests' job.
            # memcached (Debian's) is the control and must work.
            print(f"parity-smoke: note: {v['name']}: {v['problem']}")
            if v["role"] == "reference":
                fail.append(f"{v['name']}: {v['problem']}")
            continue
        runs = v["peak_runs"] + v["latency_runs"]
        if not runs:
            continue  # e.g. UDP not run
        for run in runs:
            # A UDP datagram may be lost under load; TCP answers may not.
            lost_ok = scen == "udp"
            if run["errors"] or (run["unanswered"] and not lost_ok) or not run["completed"]:
                msg = f"{v['name']}: errors or unanswered requests in {run['command']}"
                if v["role"] == "reference":
                    fail.append(msg)
                else:
                    print("parity-smoke: note: " + msg)
            if not run["command"].startswith("p99-bench "):
                fail.append(f"{v['name']}: run without its command")
for p in r["plots"]:
    xml.dom.minidom.parse(p)
if not any(p.endswith("cache-latency.svg") for p in r["plots"]):
    fail.append("no cache latency plot")
if fail:
    print("\n".join("parity-smoke: " + f for f in fail))
    sys.exit(1)
print(f"parity-smoke: results.json and {len(r['plots'])} plots check out")
PY
