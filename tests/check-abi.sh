#!/usr/bin/env bash
# Checks the export surface of libp99.so: the soname is libp99.so.<soname-version>, and every
# exported (defined, dynamic) symbol starts with p99_.
# usage: check-abi.sh path/to/libp99.so SONAME_VERSION
set -euo pipefail
lib=$1
want="libp99.so.$2"

soname=$(readelf -d "$lib" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
if [ "$soname" != "$want" ]; then
	echo "check-abi: soname is '${soname:-<none>}', expected '$want'" >&2
	exit 1
fi
echo "check-abi: soname $soname"

all=$(nm -D --defined-only "$lib" | awk '{print $3}')
count=$(printf '%s\n' "$all" | grep -c '^p99_' || true)
bad=$(printf '%s\n' "$all" | grep -v '^p99_' | grep -v '^$' || true)
if [ -n "$bad" ]; then
	echo "check-abi: symbols exported without the p99_ prefix:" >&2
	printf '  %s\n' $bad >&2
	exit 1
fi
if [ "$count" -eq 0 ]; then
	echo "check-abi: no p99_ symbols exported at all" >&2
	exit 1
fi
echo "check-abi: $count exported symbols, all p99_*"
