#!/usr/bin/env bash
# Runs the fuzz targets for SECS seconds each; exits non-zero if any target crashes.
#
#   fuzz/run.sh SECS [--seeds-only] [TARGET...]
#
# Rust targets (fuzz/fuzz_targets, cargo-fuzz on the nightly toolchain, AddressSanitizer) run
# on fuzz/corpus/TARGET (kept between runs, not committed) plus the committed seeds in
# fuzz/seeds/TARGET, with fuzz/dict/TARGET.dict when present. --seeds-only starts each from
# the seeds alone in a scratch directory (what `make test` does). A crash leaves its input in
# fuzz/artifacts/TARGET/; replay it with `cargo +nightly fuzz run TARGET FILE`.
#
# C targets (libFuzzer through clang, ASan+UBSan): every fuzz/c/*.c harness, today mcparse
# (mcserver's memcache parser, c-examples/mcserver/parse.c), built and run by run_c_target.
set -euo pipefail
cd "$(dirname "$0")"

secs=${1:?usage: fuzz/run.sh SECS [--seeds-only] [TARGET...]}
shift
seeds_only=0
if [ "${1:-}" = --seeds-only ]; then seeds_only=1; shift; fi
rust_targets=(cache_ops umem_frames xdp_packet ping_lines)
c_targets=()
for f in c/*.c; do [ -e "$f" ] && c_targets+=("$(basename "$f" .c)"); done
if [ $# -gt 0 ]; then wanted=("$@"); else wanted=("${rust_targets[@]}" "${c_targets[@]}"); fi

dict_flag() { if [ -f "dict/$1.dict" ]; then echo "-dict=dict/$1.dict"; fi; }

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
summary=()
failed=0

# libFuzzer's final stats: "stat::number_of_executed_units: N" and the average exec/s.
record() {
    local t=$1 log=$2 rc=$3
    local n r
    n=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
    r=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)
    if [ "$rc" -ne 0 ]; then
        failed=1
        summary+=("$t: FAILED (exit $rc) after ${n:-?} executions; log $log")
        grep -E "panicked|assertion|ERROR|SUMMARY|left:|right:|Test unit written" "$log" | head -n 12 >&2 || true
    else
        summary+=("$t: ok, ${n:-?} executions in ${secs}s (${r:-?} exec/s)")
    fi
}

run_rust_target() {
    local t=$1 corpus
    if [ "$t" = umem_frames ] && [ "$(id -u)" != 0 ]; then
        summary+=("$t: SKIPPED (needs CAP_NET_RAW for the AF_XDP socket: run as root)")
        return
    fi
    if [ $seeds_only = 1 ]; then corpus="$scratch/$t"; else corpus="corpus/$t"; fi
    mkdir -p "$corpus"
    local log="$scratch/$t.log"
    set +e
    # -rss_limit_mb: the store and the model are small; a leak shows up as an OOM report.
    cargo +nightly fuzz run "$t" "$corpus" "seeds/$t" -- -max_total_time="$secs" \
        -print_final_stats=1 -rss_limit_mb=2048 -timeout=20 $(dict_flag "$t") >"$log" 2>&1
    local rc=$?
    set -e
    if [ $seeds_only = 0 ]; then cp "$log" "corpus/$t.last.log"; fi
    record "$t" "$log" $rc
}

# A C harness fuzz/c/NAME.c defines LLVMFuzzerTestOneInput and lists the C files it needs
# on a line "// sources: c-examples/mcserver/parse.c ..." (paths from the top level).
run_c_target() {
    local t=$1 bin="$scratch/$t" corpus srcs
    srcs=$(sed -n 's|^// sources: *||p' "c/$t.c" | head -n1)
    (cd .. && clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
        -Ic-examples/mcserver -o "$bin" "fuzz/c/$t.c" $srcs)
    if [ $seeds_only = 1 ]; then corpus="$scratch/$t.corpus"; else corpus="corpus/$t"; fi
    mkdir -p "$corpus" "seeds/$t" "artifacts/$t"
    local log="$scratch/$t.log"
    set +e
    "$bin" "$corpus" "seeds/$t" -max_total_time="$secs" -print_final_stats=1 -max_len=4096 \
        -artifact_prefix="artifacts/$t/" $(dict_flag "$t") >"$log" 2>&1
    local rc=$?
    set -e
    if [ $seeds_only = 0 ]; then cp "$log" "corpus/$t.last.log"; fi
    record "$t" "$log" $rc
}

cargo +nightly fuzz build >/dev/null 2>"$scratch/build.log" || { cat "$scratch/build.log"; exit 1; }
for t in "${wanted[@]}"; do
    if [ -f "c/$t.c" ]; then run_c_target "$t"; else run_rust_target "$t"; fi
done
printf 'fuzz: %s\n' "${summary[@]}"
exit $failed
