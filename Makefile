# p99: a thin orchestrator over cargo, cmake and ctest.
#
#   make            build everything into build/ (Rust release build, staged install,
#                   C examples into build/bin, C tests)
#   make test       install what is missing, build, run every test
#   make parity     install what is missing, build, run the parity benchmark
#   make install PREFIX=/some/dir
#   make deps       install missing Debian packages and the pinned cbindgen (root)

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := all

PREFIX ?= /usr/local
DESTDIR ?=
CARGO ?= cargo
JOBS ?= 2
BUILD := $(CURDIR)/build
STAGE := $(BUILD)/stage
BIN := $(BUILD)/bin
PYTHON := /usr/bin/python3

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
V_MAJOR := $(word 1,$(subst ., ,$(VERSION)))
V_MINOR := $(word 2,$(subst ., ,$(VERSION)))
V_PATCH := $(word 3,$(subst ., ,$(VERSION)))
SONAME_VERSION := $(if $(filter 0,$(V_MAJOR)),0.$(V_MINOR),$(V_MAJOR))
CBINDGEN_VERSION := 0.29.0
CARGO_FUZZ_VERSION := 0.13.1

DEB_PACKAGES := build-essential cmake pkg-config clang clang-format libclang-dev memcached \
	libmemcached-tools python3 python3-pymemcache valgrind bpftool iproute2 ethtool binutils \
	iputils-ping nutcracker libssl-dev openssl python3-venv

export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: all rust stage install c-examples c-tests deps test test-rust test-c test-valgrind test-tsan test-cache \
	check-header check-abi test-consumer header clean test-mcserver meta-client-deps

all: rust stage c-examples c-tests

# --- dependencies -----------------------------------------------------------------------------

deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "make deps: missing Debian packages:$$missing"; \
	    echo "make deps: run as root (or: sudo apt-get install$$missing)"; exit 1; \
	  fi; \
	  echo "make deps: installing$$missing"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@if [ "$$(cbindgen --version 2>/dev/null)" != "cbindgen $(CBINDGEN_VERSION)" ]; then \
	  echo "make deps: installing cbindgen $(CBINDGEN_VERSION)"; \
	  $(CARGO) install cbindgen --version $(CBINDGEN_VERSION) --locked --quiet; \
	fi
	@for c in rustfmt clippy; do \
	  rustup component list --installed 2>/dev/null | grep -q "^$$c" || { \
	    echo "make deps: adding the $$c component"; rustup component add $$c; }; \
	done
	@$(MAKE) --no-print-directory fuzz-deps
	@$(MAKE) --no-print-directory meta-client-deps

# meta-memcache (PyPI; Python >= 3.10) in a virtualenv, for tests/mcserver/test_meta_client.py.
# Needs the package index: when the install fails the reason is kept in $(META_VENV).log, the
# step still succeeds and the test skips quoting it (CI without network must not fail here).
META_VENV := $(BUILD)/meta-venv
META_MEMCACHE_VERSION := 4.3.0
meta-client-deps:
	@if [ -x $(META_VENV)/bin/python ] && $(META_VENV)/bin/python -c \
	    'import meta_memcache, sys; sys.exit(meta_memcache.__version__ != "$(META_MEMCACHE_VERSION)")' \
	    2>/dev/null; then exit 0; fi; \
	rm -rf $(META_VENV); mkdir -p $(BUILD); \
	if $(PYTHON) -m venv $(META_VENV) >$(META_VENV).log 2>&1 && \
	   $(META_VENV)/bin/pip install -q --disable-pip-version-check \
	     meta-memcache==$(META_MEMCACHE_VERSION) >>$(META_VENV).log 2>&1; then \
	  echo "meta-client-deps: meta-memcache $(META_MEMCACHE_VERSION) in $(META_VENV)"; \
	else \
	  echo "meta-client-deps: install failed (see $(META_VENV).log); test_meta_client will skip"; \
	  rm -rf $(META_VENV); \
	fi

# The fuzz targets build with cargo-fuzz (pinned) on the nightly toolchain.
.PHONY: fuzz-deps
fuzz-deps:
	@if ! rustup run nightly rustc --version >/dev/null 2>&1; then \
	  echo "make deps: installing the nightly toolchain (for cargo-fuzz)"; \
	  rustup toolchain install nightly --profile minimal; \
	fi
	@if [ "$$(cargo-fuzz --version 2>/dev/null)" != "cargo-fuzz $(CARGO_FUZZ_VERSION)" ]; then \
	  echo "make deps: installing cargo-fuzz $(CARGO_FUZZ_VERSION)"; \
	  $(CARGO) install cargo-fuzz --version $(CARGO_FUZZ_VERSION) --locked --quiet; \
	fi
	@rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^miri' || { \
	  echo "make deps: adding the nightly miri component (make miri)"; \
	  rustup component add miri rust-src --toolchain nightly; }

# --- build ------------------------------------------------------------------------------------

# Rust programs copied into build/bin next to the C ones. `rust` builds the root package alone
# (libp99 and pingserver-rs); the measuring tools are workspace members under benches/, built
# by bench-bins.
RUST_BINS := pingserver-rs

rust:
	$(CARGO) build --release -p p99 --lib --bins
	@install -d $(BIN)
	@for b in $(RUST_BINS); do install -m 0755 target/release/$$b $(BIN)/$$b; done

# The staged install is what c-examples and c-tests build against, exactly as an outside
# project would (find_package with CMAKE_PREFIX_PATH).
stage: rust
	@$(MAKE) --no-print-directory install PREFIX=$(STAGE) >/dev/null

install:
	@test -f target/release/libp99.so || { echo "make install: run 'make' first"; exit 1; }
	install -d $(DESTDIR)$(PREFIX)/lib/cmake/p99 $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include
	install -m 0755 target/release/libp99.so $(DESTDIR)$(PREFIX)/lib/libp99.so.$(VERSION)
	ln -sf libp99.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/libp99.so.$(SONAME_VERSION)
	ln -sf libp99.so.$(SONAME_VERSION) $(DESTDIR)$(PREFIX)/lib/libp99.so
	install -m 0644 target/release/libp99.a $(DESTDIR)$(PREFIX)/lib/libp99.a
	install -m 0644 include/p99.h $(DESTDIR)$(PREFIX)/include/p99.h
	sed -e 's|@P99_VERSION@|$(VERSION)|g' -e 's|@P99_SONAME_VERSION@|$(SONAME_VERSION)|g' \
	    cmake/p99Config.cmake.in > $(DESTDIR)$(PREFIX)/lib/cmake/p99/p99Config.cmake
	sed -e 's|@P99_VERSION@|$(VERSION)|g' -e 's|@P99_VERSION_MAJOR@|$(V_MAJOR)|g' \
	    -e 's|@P99_VERSION_MINOR@|$(V_MINOR)|g' \
	    cmake/p99ConfigVersion.cmake.in > $(DESTDIR)$(PREFIX)/lib/cmake/p99/p99ConfigVersion.cmake
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@P99_VERSION@|$(VERSION)|g' \
	    cmake/p99.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/p99.pc

c-examples: stage
	cmake -S c-examples -B $(BUILD)/c-examples -DCMAKE_BUILD_TYPE=Release \
	    -DCMAKE_PREFIX_PATH=$(STAGE) -DCMAKE_RUNTIME_OUTPUT_DIRECTORY=$(BIN) >/dev/null
	cmake --build $(BUILD)/c-examples -j $(JOBS)

c-tests: stage
	cmake -S c-tests -B $(BUILD)/c-tests-asan -DCMAKE_BUILD_TYPE=Debug -DP99_SANITIZE=ON \
	    -DCMAKE_PREFIX_PATH=$(STAGE) >/dev/null
	cmake --build $(BUILD)/c-tests-asan -j $(JOBS)
	cmake -S c-tests -B $(BUILD)/c-tests-valgrind -DCMAKE_BUILD_TYPE=Debug -DP99_VALGRIND=ON \
	    -DCMAKE_PREFIX_PATH=$(STAGE) >/dev/null
	cmake --build $(BUILD)/c-tests-valgrind -j $(JOBS)
	cmake -S c-tests -B $(BUILD)/c-tests-tsan -DCMAKE_BUILD_TYPE=Debug -DP99_TSAN=ON \
	    -DCMAKE_PREFIX_PATH=$(STAGE) >/dev/null
	cmake --build $(BUILD)/c-tests-tsan -j $(JOBS)

header:
	cbindgen --config cbindgen.toml --output include/p99.h

# --- tests ------------------------------------------------------------------------------------

# Module test targets append themselves to TESTS below.
TESTS := check-format clippy test-rust check-header check-abi test-c test-valgrind test-tsan \
	test-consumer
TESTS += test-cache
TESTS += test-mcserver
TESTS += test-engine test-mcserver-uring
TESTS += test-xdp
TESTS += test-bench
TESTS += test-fuzz test-soak

test: deps
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory -k $(TESTS)
	@echo "make test: all tests passed"

# Every workspace crate: libp99's unit and integration tests, p99-bench's and p99-parity's
# unit tests, p99-xdp-load's.
test-rust:
	$(CARGO) test --release --no-fail-fast --workspace

# Gates: rustfmt (rustfmt.toml) on every Rust crate, clang-format (.clang-format) on the C
# sources, clippy with warnings as errors on every workspace target. `make format` applies
# both formatters.
C_SOURCES = $(shell git ls-files 'c-examples/*.[ch]' 'c-tests/*.[ch]' 'fuzz/c/*.[ch]' 'benches/*.[ch]')
RUST_MANIFESTS := Cargo.toml benches/storebench/Cargo.toml fuzz/Cargo.toml
.PHONY: check-format format clippy
check-format:
	@for m in $(RUST_MANIFESTS); do $(CARGO) fmt --manifest-path $$m --all -- --check >/dev/null || \
	  { echo "check-format: $$m: cargo fmt would change files (run 'make format')"; \
	    $(CARGO) fmt --manifest-path $$m --all -- --check | head -40; exit 1; }; done
	@bad=$$(for f in $(C_SOURCES); do clang-format --dry-run -Werror $$f >/dev/null 2>&1 || echo $$f; done); \
	if [ -n "$$bad" ]; then echo "check-format: clang-format would change:" $$bad "(run 'make format')"; exit 1; fi
	@echo "check-format: Rust and C sources formatted"
format:
	@for m in $(RUST_MANIFESTS); do $(CARGO) fmt --manifest-path $$m --all; done
	clang-format -i $(C_SOURCES)
clippy:
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

check-header:
	@tmp=$$(mktemp); log=$$(mktemp); \
	if ! cbindgen --config cbindgen.toml --output $$tmp 2>$$log; then \
	  cat $$log; rm -f $$tmp $$log; echo "check-header: cbindgen failed"; exit 1; \
	fi; rm -f $$log; \
	if ! cmp -s $$tmp include/p99.h; then \
	  echo "check-header: include/p99.h differs from what src/ffi generates:"; \
	  diff -u include/p99.h $$tmp | head -40; rm -f $$tmp; \
	  echo "check-header: run 'make header' and commit the result"; exit 1; \
	fi; rm -f $$tmp; echo "check-header: include/p99.h matches src/ffi"

check-abi:
	tests/check-abi.sh target/release/libp99.so $(SONAME_VERSION)

test-c:
	cd $(BUILD)/c-tests-asan && ctest --output-on-failure -j $(JOBS)

test-valgrind:
	cd $(BUILD)/c-tests-valgrind && ctest --output-on-failure -j $(JOBS)

# A multi-threaded C caller of p99_cache (pins and reservations finished on other threads)
# under ThreadSanitizer.
test-tsan:
	cd $(BUILD)/c-tests-tsan && ctest --output-on-failure -j $(JOBS)

test-consumer:
	tests/consumer/run.sh $(VERSION)

# The cache store: its Rust tests run in test-rust and its C tests in test-c/test-valgrind;
# this runs the C benchmark driver end to end on a small store (it fails if the store does
# not hold every key it loaded).
test-cache:
	$(BIN)/cachebench -n 200000 -o 200000 -r 1
# mcserver: protocol, bad-input, differential (against memcached) and memccapable suites on
# every build/bin/mcserver-* variant, then again on ASan+UBSan builds of them (a leak, an
# invalid access or undefined behaviour makes the server exit non-zero, which fails the suite).
test-mcserver: meta-client-deps
	tests/mcserver/run.sh $(BIN) $(PYTHON)
	cmake -S c-examples -B $(BUILD)/c-examples-asan -DCMAKE_BUILD_TYPE=Debug -DP99_SANITIZE=ON \
	    -DCMAKE_PREFIX_PATH=$(STAGE) -DCMAKE_RUNTIME_OUTPUT_DIRECTORY=$(BUILD)/bin-asan >/dev/null
	cmake --build $(BUILD)/c-examples-asan -j $(JOBS) >/dev/null
	tests/mcserver/run.sh $(BUILD)/bin-asan $(PYTHON)
# The engine's tests that need the built programs: the ping servers answer identically.
# --workspace resolves features as test-rust does, so its build is reused, not redone.
.PHONY: test-engine
test-engine:
	P99_BIN_DIR=$(BIN) $(CARGO) test --release --workspace --test ping_parity -- --ignored

# mcserver on the engine: test-mcserver runs every suite on the *-uring variants on io_uring;
# this runs the same suites on them with the engine forced onto its epoll fallback.
.PHONY: test-mcserver-uring
test-mcserver-uring:
	@for b in $(BIN)/mcserver-*-uring; do \
	  echo "== $$(basename $$b) with P99_BACKEND=epoll"; \
	  (cd tests/mcserver && export P99_BACKEND=epoll MCSERVER_BIN=$$b && \
	   $(PYTHON) -m unittest -q test_protocol test_badinput test_meta && \
	   DIFF_SEED=1 DIFF_COMMANDS=4000 $(PYTHON) test_diff.py && \
	   $(PYTHON) test_memccapable.py) || exit 1; \
	done
# AF_XDP: the Rust veth suite runs in test-rust; this adds the C responders end to end.
.PHONY: test-xdp bench-xdp
test-xdp:
	tests/xdp/udpping_e2e.sh $(BIN) target/release/p99-xdp-load

# udpping-xdp vs udpping-kernel on a veth pair (root); prints replies/s, RTT and CPU/packet.
bench-xdp: all
	benches/udpping_xdp.sh $(BIN) target/release/p99-xdp-load
# Scale-out: three mcserver builds behind nutcracker (twemproxy; ketama, auto-eject), behind
# pymemcache's HashClient and behind libmemcached's memcp/memcat/memflush; every classic command
# checked on the server that holds it, each server killed (SIGKILL) under traffic and restarted.
.PHONY: test-scale-out
TESTS += test-scale-out
test-scale-out:
	timeout 240 $(PYTHON) tests/scale-out/test_scaleout.py $(BIN)

# --- parity benchmark -------------------------------------------------------------------------
#   make parity            full run (< 6 min on 2 cores)
#   make parity QUICK=1    short run (about 1 min)
#   make parity PARITY_FLAGS='--scenarios cache --rounds 5'   any p99-parity flag
QUICK ?=
PARITY_FLAGS ?=

.PHONY: parity bench-bins storebench test-bench
all: bench-bins

# The workspace's tools (benches/p99-bench, benches/p99-xdp-load). p99-xdp-load stays in
# target/release, where test-xdp and bench-xdp take it from.
bench-bins: rust
	$(CARGO) build --release -p p99-bench -p p99-xdp-load --bins
	install -d $(BIN)
	install -m 0755 target/release/p99-bench target/release/p99-parity $(BIN)/

# The in-process store benchmark (C slab store vs libp99's store, one C harness); a crate
# outside the workspace (its build script needs the staged libp99, P99_STAGE) so cc/bindgen
# never enter libp99's own build. Built only once the C store exists.
storebench: stage
	@if [ -f c-examples/mcserver/storage_slab.c ]; then \
	  P99_STAGE=$(STAGE) $(CARGO) build --release --manifest-path benches/storebench/Cargo.toml && \
	  install -m 0755 benches/storebench/target/release/p99-storebench $(BIN)/; \
	else echo "storebench: c-examples/mcserver/storage_slab.c not present, not built"; rm -f $(BIN)/p99-storebench; fi

# Builds what the benchmark runs (library, servers, generator, store benchmark); the C tests
# are left to make test.
parity: deps
	@$(MAKE) --no-print-directory rust stage c-examples bench-bins storebench
	$(BIN)/p99-parity $(if $(QUICK),--quick) --bin-dir $(BIN) --out $(BUILD)/parity $(PARITY_FLAGS)

test-bench: storebench
	tests/parity-smoke.sh $(BIN) $(BUILD)/parity-smoke
	$(PYTHON) tests/bench_tls.py $(BIN)

# --- fuzzing ----------------------------------------------------------------------------------
#   make fuzz                    every target for FUZZ_SECS seconds each (fails on any crash)
#   make fuzz FUZZ_SECS=3600 FUZZ_TARGETS=cache_ops
# Targets: cache_ops (p99_cache C ABI against a model), umem_frames (UMEM frame state table,
# root), xdp_packet (Ethernet/IPv4/UDP parser and ping reply), ping_lines (ping line splitting);
# mcparse (mcserver's protocol parser, fuzz/c/mcparse.c: C, clang libFuzzer, ASan+UBSan).
FUZZ_SECS ?= 60
FUZZ_TARGETS ?=
.PHONY: fuzz test-fuzz
fuzz: fuzz-deps
	fuzz/run.sh $(FUZZ_SECS) $(FUZZ_TARGETS)

# A few seconds per target from the committed seeds only.
test-fuzz:
	fuzz/run.sh 5 --seeds-only

# --- Miri ---------------------------------------------------------------------------------------
# libp99's unit tests that do pointer work without system calls, interpreted by Miri (nightly):
# the C boundary's helpers (guard, every c_arg! form, struct growth in and out, the last-error
# message, status mapping, every *_defaults call on an exact-size struct), the store's item
# headers, hash table and pin words (every interleaving), the ping line parser, the XDP packet
# parser and the engine's connection state machine. Out-of-bounds or misaligned accesses,
# uses after free, leaks and data races fail the run. Not part of make test: about 1.5 min warm
# on a loaded machine, plus about 2 min to build the Miri sysroot and crates from cold.
MIRI_TESTS := ffi::boundary ffi::status ffi::version ffi::engine::tests::defaults \
	cache::item cache::table::tests cache::shard::tests cache::memory::tests cache::shard_lock \
	cache::pin_word \
	engine::conn \
	proto::ping xdp::packet
.PHONY: miri
miri: fuzz-deps
	$(CARGO) +nightly miri test --lib -- $(MIRI_TESTS)

# --- soak under faults -------------------------------------------------------------------------
#   make soak                    every server at once, SOAK_SECS (default 300), under load and faults
#   make soak SOAK_SECS=1800 SOAK_SERVERS=mcserver-p99-uring
# Writes RSS/fd samples per server to $(BUILD)/soak/SERVER.csv and a summary to
# $(BUILD)/soak/summary.json.
SOAK_SECS ?= 300
SOAK_SERVERS ?= mcserver-p99-uring mcserver-slab-epoll pingserver-c-p99 pingserver-rs
.PHONY: soak test-soak
soak: all
	$(PYTHON) tests/soak/soak.py --bin-dir $(BIN) --out $(BUILD)/soak --secs $(SOAK_SECS) $(SOAK_SERVERS)
	$(PYTHON) tests/soak/plot.py --out $(BUILD)/soak/soak.svg \
	    $(patsubst %,$(BUILD)/soak/%.csv,$(SOAK_SERVERS))

# 40 s per server, with make soak's half-sent wave (64 x 900 KB of 1 MB sets: as much as -m).
# The client's p99 is reported, not asserted, here (make soak asserts 100 ms): make test shares
# the machine with builds, and at a load average of 8-10 on 2 cores healthy servers showed p99s
# from 4 ms to 700 ms. That every request was answered (p99-bench: none unanswered) is still
# checked.
test-soak:
	$(PYTHON) tests/soak/soak.py --bin-dir $(BIN) --out $(BUILD)/soak-test --secs 40 --jobs 1 \
	    --p99-bound-ms 0 $(SOAK_SERVERS)

clean:
	rm -rf $(BUILD)
	$(CARGO) clean
