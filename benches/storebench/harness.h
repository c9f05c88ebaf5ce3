/*
 * The store benchmark harness: one C driver for any storage.h implementation. It sets the
 * store up, stores every key (fill), reads keys (get), then runs a get/set mix, checking
 * every value it reads against the one it wrote. Each phase runs on `threads` threads, each
 * pinned to its own CPU of the process's affinity set, over one shared key space; the keys
 * each thread touches are drawn before the clock starts (uniform or Zipf), so both stores see
 * the same sequence and the timed loops hold only store calls and value checks. A sample of
 * single operations of the mix is timed for the latency distribution.
 */
#ifndef STOREBENCH_HARNESS_H
#define STOREBENCH_HARNESS_H

#include <stddef.h>
#include <stdint.h>

/* How reads are made. */
enum harness_read {
	HARNESS_READ_COPY =
		0, /* storage_get_copy into a 1 KiB reply buffer (mcserver's get path) */
	HARNESS_READ_PIN = 1, /* storage_get + storage_release */
};

/* How writes are made. */
enum harness_write {
	HARNESS_WRITE_STORE = 0, /* storage_store: the value is whole in the caller's buffer, the
				  * common case of mcserver's set */
	HARNESS_WRITE_RESERVE = 1, /* storage_reserve + storage_fill + storage_commit */
};

struct harness_params {
	uint64_t keys; /* distinct keys */
	uint32_t key_size; /* bytes per key, >= 12 */
	uint32_t value_size; /* bytes per value, >= 8 */
	uint32_t get_percent; /* share of gets in the mix phase */
	uint64_t ops; /* operations in each of the get and mix phases, over all threads */
	uint64_t seed;
	uint64_t mem_limit; /* storage_options.mem_limit */
	uint32_t sample_every; /* time one operation in this many (>= 1) */
	uint64_t *samples; /* latency samples in ns of the mix phase, caller-owned */
	size_t samples_cap;
	uint32_t threads; /* >= 1 */
	double zipf_s; /* key popularity: 0 uniform, else Zipf with this exponent */
	uint32_t read_mode; /* enum harness_read */
	uint32_t hashpower; /* storage_options.hashpower (memcached -o hashpower), 0 = default */
	uint32_t write_mode; /* enum harness_write */
	uint32_t prealloc; /* storage_options.prealloc (memcached -L): 1 = back the whole
			    * mem_limit at setup, before the clock starts */
};

struct harness_result {
	uint64_t fill_ns, get_ns, mix_ns; /* wall time of each phase (first start to last end) */
	uint64_t fill_cpu_ns, get_cpu_ns,
		mix_cpu_ns; /* CPU time of each phase, summed over threads */
	uint64_t fill_ops, get_ops, mix_ops;
	uint64_t hits, misses; /* over the get and mix phases */
	uint64_t bad_values; /* a value read back differs from the one written */
	uint64_t failed_writes; /* reserve/commit not STORED */
	size_t samples_len;
	uint32_t pinned_threads; /* threads that could be pinned to a CPU of their own */
	char store_name[32];
};

/* Returns 0, or -1 with a message in err (setup failed, out of memory, threads). */
int harness_run(const struct harness_params *p, struct harness_result *r, char *err, size_t errlen);

/* The one-way time, in ns, of handing one cache line back and forth between the first two CPUs
 * of the process's affinity set (two threads pinned there take turns writing it,
 * `round_trips` times each): what a lock or counter written by both threads costs each time
 * it changes hands. On a VM it depends on where the host runs the virtual CPUs at the time
 * (sharing a cache or not), which is why the 2-thread figures are reported with it. -1 with
 * fewer than two CPUs, or when the threads cannot be pinned. */
double harness_line_transfer_ns(uint64_t round_trips);

#endif
