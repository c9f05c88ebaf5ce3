/*
 * The store benchmark harness: one C driver for any storage.h implementation. It sets the
 * store up, stores every key (fill), reads random keys (get), then runs a get/set mix, checking
 * every value it reads against the one it wrote. A sample of single operations is timed for
 * the latency distribution.
 */
#ifndef STOREBENCH_HARNESS_H
#define STOREBENCH_HARNESS_H

#include <stddef.h>
#include <stdint.h>

struct harness_params {
	uint64_t keys;        /* distinct keys */
	uint32_t key_size;    /* bytes per key, >= 12 */
	uint32_t value_size;  /* bytes per value, >= 8 */
	uint32_t get_percent; /* share of gets in the mix phase */
	uint64_t ops;         /* operations in each of the get and mix phases */
	uint64_t seed;
	uint64_t mem_limit;   /* storage_options.mem_limit */
	uint32_t sample_every; /* time one operation in this many (>= 1) */
	uint64_t *samples;    /* latency samples in ns of the mix phase, caller-owned */
	size_t samples_cap;
};

struct harness_result {
	uint64_t fill_ns, get_ns, mix_ns;  /* wall time of each phase */
	uint64_t fill_ops, get_ops, mix_ops;
	uint64_t hits, misses;             /* over the get and mix phases */
	uint64_t bad_values;               /* a value read back differs from the one written */
	uint64_t failed_writes;            /* reserve/commit not STORED */
	size_t samples_len;
	char store_name[32];
};

/* Returns 0, or -1 with a message in err (setup failed, out of memory). */
int harness_run(const struct harness_params *p, struct harness_result *r, char *err, size_t errlen);

#endif
