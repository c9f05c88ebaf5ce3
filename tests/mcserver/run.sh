#!/usr/bin/env bash
# Runs every mcserver suite against every mcserver-* binary found in the given directory
# (new variants are picked up by name). Each suite starts its own servers on free loopback
# ports and stops them.
# usage: run.sh BIN_DIR [PYTHON]
set -uo pipefail
bindir=$(cd "$1" && pwd)
python=${2:-/usr/bin/python3}
# meta-memcache's virtualenv (make meta-client-deps); without it test_meta_client skips
meta_python=${META_PYTHON:-$bindir/../meta-venv/bin/python}
[ -x "$meta_python" ] || meta_python=$python
cd "$(dirname "$0")"
shopt -s nullglob
bins=("$bindir"/mcserver-*)
if [ ${#bins[@]} -eq 0 ]; then
	echo "test-mcserver: no mcserver-* binary in $bindir" >&2
	exit 1
fi
failed=()
# The stores alone: the one-call write agrees with the two-phase one.
for check in "$bindir"/storage-check-*; do
	"$check" || failed+=("$(basename "$check")")
done
for bin in "${bins[@]}"; do
	name=$(basename "$bin")
	echo "== $name"
	export MCSERVER_BIN=$bin
	"$python" -m unittest -q test_protocol test_badinput test_meta || failed+=("$name: protocol/bad-input suite")
	DIFF_SEED=1 DIFF_COMMANDS=20000 "$python" test_diff.py || failed+=("$name: differential test")
	"$python" test_memccapable.py || failed+=("$name: memccapable -a")
	"$python" test_tls.py || failed+=("$name: TLS (-Z)")
	"$meta_python" -m unittest -q test_meta_client || failed+=("$name: meta-memcache client")
done
if [ ${#failed[@]} -ne 0 ]; then
	printf 'test-mcserver: FAILED %s\n' "${failed[@]}" >&2
	exit 1
fi
echo "test-mcserver: all suites passed on ${#bins[@]} variant(s)"
