#!/usr/bin/env bash
# Consumer test: `make install` into a temporary prefix, then build a C program outside the
# source tree against it, via find_package (shared and static) and via pkg-config, and check
# that each prints the expected version.
# usage: run.sh VERSION
set -euo pipefail
version=$1
src=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$src/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

make -C "$top" --no-print-directory install PREFIX="$tmp/prefix" >/dev/null
test -L "$tmp/prefix/lib/libp99.so" || { echo "consumer: libp99.so symlink missing"; exit 1; }
cp "$src/main.c" "$src/CMakeLists.txt" "$tmp/"
mkdir "$tmp/app" && mv "$tmp/main.c" "$tmp/CMakeLists.txt" "$tmp/app/"

expect="header $version library $version"
check() {
	local what=$1 out
	shift
	out=$("$@")
	if [ "$out" != "$expect" ]; then
		echo "consumer ($what): printed '$out', expected '$expect'" >&2
		exit 1
	fi
	echo "consumer ($what): $out"
}

cmake -S "$tmp/app" -B "$tmp/build" -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/build" >/dev/null
check "find_package, shared" "$tmp/build/consumer_shared"
check "find_package, static" "$tmp/build/consumer_static"
if ldd "$tmp/build/consumer_static" | grep -q libp99; then
	echo "consumer: static build still links libp99.so" >&2; exit 1
fi

# While the major version is 0 the minor is part of the ABI: a project asking for another
# minor must not configure against this package.
major=${version%%.*} minor=$(echo "$version" | cut -d. -f2)
if [ "$major" = 0 ] && [ "$minor" -gt 0 ]; then
	mkdir "$tmp/old"
	printf 'cmake_minimum_required(VERSION 3.16)\nproject(old C)\nfind_package(p99 0.%d CONFIG REQUIRED)\n' \
		$((minor - 1)) >"$tmp/old/CMakeLists.txt"
	if cmake -S "$tmp/old" -B "$tmp/old/build" -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null 2>&1; then
		echo "consumer: find_package(p99 0.$((minor - 1))) accepted the $version package" >&2
		exit 1
	fi
	echo "consumer (find_package of 0.$((minor - 1))): refused, as a different ABI"
fi

export PKG_CONFIG_PATH="$tmp/prefix/lib/pkgconfig"
test "$(pkg-config --modversion p99)" = "$version"
# shellcheck disable=SC2046
cc -Wall -Wextra -Werror -o "$tmp/consumer_pc" "$tmp/app/main.c" $(pkg-config --cflags --libs p99) \
	-Wl,-rpath,"$(pkg-config --variable=libdir p99)"
check "pkg-config" "$tmp/consumer_pc"
