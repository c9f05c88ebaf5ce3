/* cachebench: throughput and memory of the p99_cache store through the C ABI.
 *
 * Loads N keys (default 1,000,000 keys of 32 bytes with 100-byte values), then reports:
 *   - memory overhead per item = total bytes the store uses (segments allocated + hash table
 *     + metadata, from p99_cache_get_stats) / items held - (key + value bytes),
 *     with CAS on and with CAS off;
 *   - ops/s for get (pinned get + release), set (two-phase reserve/write/commit), set through
 *     the one-call p99_cache_store, and a 90% get / 10% set mix, with uniform and Zipf
 *     (s = 0.99) key popularity, on 1 and 2 threads: wall-clock ops/s, and ops per CPU-second
 *     of the benchmark threads (what a core of its own would give, when other processes share
 *     the machine); "x1" columns compare with 1 thread (wall, and CPU-based: threads x ops per
 *     CPU-second).
 * Key sequences are generated before the clock starts, so the figures are the store's own.
 * Each figure is the median of -r runs.
 *
 * usage: cachebench [-n keys] [-k key_bytes] [-v value_bytes] [-o ops_per_thread]
 *                   [-s segment_bytes] [-S shards] [-r runs] [-t max_threads]
 *                   [-w workload-name-prefix] [-m MiB]
 *
 * -m MiB instead measures capacity: how many distinct items a store of that size holds after
 * twice its size in writes, every one read back and checked.
 */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <p99.h>

static size_t nkeys = 1000000, key_len = 32, val_len = 100, ops_per_thread = 4000000;
static uint32_t segment_bytes = 1u << 20, shards;
static int runs = 3, max_threads = 2;
static const char *only; /* run only workloads whose name starts with this */
static uint8_t *value;

static double clock_s(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double now_s(void)
{
	return clock_s(CLOCK_MONOTONIC);
}

static uint64_t rng_next(uint64_t *s)
{
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 0x2545F4914F6CDD1Dull;
}

/* Key i: "key:" then i in decimal, zero-padded to key_len. Built into a per-thread buffer
 * rather than read from a table of keys: a server gets its key from a network buffer that is
 * already in cache, and a 32 MB key table would add a cache miss per operation that is the
 * benchmark's, not the store's. */
static __thread uint8_t key_buf[P99_CACHE_KEY_MAX];

static const uint8_t *key_at(uint32_t i)
{
	uint8_t *k = key_buf;
	size_t n = key_len;
	k[0] = 'k', k[1] = 'e', k[2] = 'y', k[3] = ':';
	for (size_t p = n; p > 4; p--) {
		k[p - 1] = (uint8_t)('0' + i % 10);
		i /= 10;
	}
	return k;
}

static void die(const char *what, uint32_t st)
{
	fprintf(stderr, "cachebench: %s: %s\n", what, p99_status_str(st));
	exit(1);
}

static p99_cache *make_cache(int cas)
{
	p99_cache_config cfg = { .struct_size = sizeof cfg };
	p99_cache_config_defaults(&cfg);
	/* Room for every key with no eviction: item = key + value + ~3 header bytes. */
	size_t per_item = key_len + val_len + 8;
	cfg.segment_bytes = segment_bytes;
	cfg.heap_bytes = (uint64_t)(nkeys * per_item * 3 / 2) + 64ull * segment_bytes;
	cfg.expected_items = nkeys;
	cfg.item_max = segment_bytes;
	cfg.cas = cas;
	cfg.shards = shards;
	p99_cache *c = NULL;
	uint32_t st = p99_cache_new(&cfg, &c);
	if (st)
		die("p99_cache_new", st);
	return c;
}

static void set_key(p99_cache *c, uint32_t i)
{
	uint32_t st = p99_cache_store(c, key_at(i), key_len, value, val_len, 0, 0,
				      P99_CACHE_MODE_SET, 0, NULL);
	if (st)
		die("p99_cache_store", st);
}

static void load(p99_cache *c)
{
	for (uint32_t i = 0; i < nkeys; i++)
		set_key(c, i);
}

/* --- key sequences ---------------------------------------------------------------------- */

static uint32_t *seq_uniform, *seq_zipf; /* ops_per_thread * max_threads indexes */
static uint8_t *seq_is_set; /* 1 = set in the 90/10 mix */

static void make_sequences(void)
{
	size_t n = ops_per_thread * (size_t)max_threads;
	seq_uniform = malloc(n * sizeof(uint32_t));
	seq_zipf = malloc(n * sizeof(uint32_t));
	seq_is_set = malloc(n);
	uint64_t s = 0x9E3779B97F4A7C15ull;
	for (size_t i = 0; i < n; i++) {
		seq_uniform[i] = (uint32_t)(rng_next(&s) % nkeys);
		seq_is_set[i] = rng_next(&s) % 10 == 0;
	}
	/* Zipf(0.99) over ranks 1..nkeys by inverse CDF; rank r maps to a random key (a fixed
	 * permutation) so popular keys are spread over the whole store. */
	double *cdf = malloc(nkeys * sizeof(double));
	double sum = 0;
	for (size_t r = 0; r < nkeys; r++) {
		sum += 1.0 / pow((double)(r + 1), 0.99);
		cdf[r] = sum;
	}
	uint32_t *perm = malloc(nkeys * sizeof(uint32_t));
	for (size_t i = 0; i < nkeys; i++)
		perm[i] = (uint32_t)i;
	for (size_t i = nkeys - 1; i > 0; i--) {
		size_t j = rng_next(&s) % (i + 1);
		uint32_t t = perm[i];
		perm[i] = perm[j];
		perm[j] = t;
	}
	for (size_t i = 0; i < n; i++) {
		double u = (double)(rng_next(&s) >> 11) / 9007199254740992.0 * sum;
		size_t lo = 0, hi = nkeys - 1;
		while (lo < hi) {
			size_t mid = (lo + hi) / 2;
			if (cdf[mid] < u)
				lo = mid + 1;
			else
				hi = mid;
		}
		seq_zipf[i] = perm[lo];
	}
	free(cdf);
	free(perm);
}

/* --- workloads -------------------------------------------------------------------------- */

enum work {
	W_GET,
	W_SET,
	W_STORE,
	W_MIX
};

struct job {
	p99_cache *c;
	enum work w;
	const uint32_t *seq;
	const uint8_t *is_set;
	size_t n;
	uint64_t sink;
	uint64_t misses;
	pthread_barrier_t *start;
	double t0, t1, cpu;
};

static inline void do_get(struct job *j, uint32_t k)
{
	p99_cache_item it;
	uint32_t st = p99_cache_get(j->c, key_at(k), key_len, &it);
	if (st == P99_STATUS_OK) {
		j->sink += it.value[it.value_len - 1];
		p99_cache_item_release(j->c, &it);
	} else {
		j->misses++;
	}
}

static inline void do_set(struct job *j, uint32_t k)
{
	p99_cache_reservation r;
	uint32_t st = p99_cache_reserve(j->c, key_at(k), key_len, val_len, 0, 0, &r);
	if (st)
		die("p99_cache_reserve", st);
	st = p99_cache_reservation_write(&r, value, val_len);
	if (st)
		die("p99_cache_reservation_write", st);
	st = p99_cache_commit(j->c, &r, P99_CACHE_MODE_SET, 0, NULL);
	if (st)
		die("p99_cache_commit", st);
}

static void *run_job(void *arg)
{
	struct job *j = arg;
	pthread_barrier_wait(j->start);
	double c0 = clock_s(CLOCK_THREAD_CPUTIME_ID);
	j->t0 = now_s();
	switch (j->w) {
	case W_GET:
		for (size_t i = 0; i < j->n; i++)
			do_get(j, j->seq[i]);
		break;
	case W_SET:
		for (size_t i = 0; i < j->n; i++)
			do_set(j, j->seq[i]);
		break;
	case W_STORE:
		for (size_t i = 0; i < j->n; i++)
			set_key(j->c, j->seq[i]);
		break;
	case W_MIX:
		for (size_t i = 0; i < j->n; i++) {
			if (j->is_set[i])
				do_set(j, j->seq[i]);
			else
				do_get(j, j->seq[i]);
		}
		break;
	}
	j->t1 = now_s();
	j->cpu = clock_s(CLOCK_THREAD_CPUTIME_ID) - c0;
	return NULL;
}

/* Runs `w` on `threads` threads; returns total ops/s (ops over the wall time from the first
 * start to the last finish) and, in *per_cpu, ops per CPU-second of the benchmark threads
 * (what each thread achieves while it runs: insensitive to other processes on the machine). */
static double measure(p99_cache *c, enum work w, const uint32_t *seq, int threads, uint64_t *misses,
		      double *per_cpu)
{
	pthread_t tid[16];
	struct job jobs[16];
	pthread_barrier_t start;
	pthread_barrier_init(&start, NULL, (unsigned)threads);
	for (int t = 0; t < threads; t++) {
		jobs[t] = (struct job){ .c = c,
					.w = w,
					.seq = seq + (size_t)t * ops_per_thread,
					.is_set = seq_is_set + (size_t)t * ops_per_thread,
					.n = ops_per_thread,
					.start = &start };
		pthread_create(&tid[t], NULL, run_job, &jobs[t]);
	}
	double t0 = 1e300, t1 = 0, cpu = 0;
	*misses = 0;
	for (int t = 0; t < threads; t++) {
		pthread_join(tid[t], NULL);
		cpu += jobs[t].cpu;
		if (jobs[t].t0 < t0)
			t0 = jobs[t].t0;
		if (jobs[t].t1 > t1)
			t1 = jobs[t].t1;
		*misses += jobs[t].misses;
	}
	pthread_barrier_destroy(&start);
	*per_cpu = (double)ops_per_thread * threads / cpu;
	return (double)ops_per_thread * threads / (t1 - t0);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

struct figure {
	double wall; /* ops/s, wall clock, all threads */
	double cpu; /* ops per CPU-second, per thread */
};

static struct figure median_of(p99_cache *c, enum work w, const uint32_t *seq, int threads)
{
	double v[16], pc[16];
	uint64_t misses = 0;
	for (int r = 0; r < runs; r++) {
		v[r] = measure(c, w, seq, threads, &misses, &pc[r]);
		if (misses)
			fprintf(stderr, "cachebench: %llu misses (expected none)\n",
				(unsigned long long)misses);
	}
	qsort(v, (size_t)runs, sizeof(double), cmp_double);
	qsort(pc, (size_t)runs, sizeof(double), cmp_double);
	return (struct figure){ v[runs / 2], pc[runs / 2] };
}

static void report_memory(int cas)
{
	p99_cache *c = make_cache(cas);
	load(c);
	p99_cache_stats st = { .struct_size = sizeof(st) };
	uint32_t s = p99_cache_get_stats(c, &st);
	if (s)
		die("p99_cache_get_stats", s);
	double per = (double)st.total_bytes / (double)st.items;
	double kv = (double)st.key_value_bytes / (double)st.items;
	printf("memory, CAS %-3s: items %llu (of %zu), total %.1f MiB (segments %.1f MiB, hash "
	       "%.1f MiB, "
	       "shards %u): %.2f B/item - %.0f key+value = overhead %.2f B/item "
	       "(item headers %.2f B, hash %.2f B)\n",
	       cas ? "on" : "off", (unsigned long long)st.items, nkeys, st.total_bytes / 1048576.0,
	       st.segment_bytes_allocated / 1048576.0, st.hash_bytes / 1048576.0, st.shards, per,
	       kv, per - kv, (double)(st.item_bytes - st.key_value_bytes) / (double)st.items,
	       (double)st.hash_bytes / (double)st.items);
	if (st.items != nkeys || st.evictions != 0) {
		fprintf(stderr, "cachebench: the store did not hold every key\n");
		exit(1);
	}
	p99_cache_free(c);
}

/* How many items a store of `mb` MiB holds: load distinct keys until a full extra pass of
 * writes has gone through the budget, then count the items held and read every one back. */
static void report_capacity(uint32_t mb)
{
	p99_cache_config cfg = { .struct_size = sizeof cfg };
	p99_cache_config_defaults(&cfg);
	cfg.heap_bytes = (uint64_t)mb << 20;
	cfg.segment_bytes = segment_bytes;
	cfg.item_max = segment_bytes;
	cfg.shards = shards;
	p99_cache *c = NULL;
	uint32_t st = p99_cache_new(&cfg, &c);
	if (st)
		die("p99_cache_new", st);
	size_t total = ((size_t)mb << 20) / (key_len + val_len) * 2;
	if (total > 9999999999ull)
		total = 9999999999ull;
	uint8_t *v = malloc(val_len);
	for (size_t i = 0; i < total; i++) {
		for (size_t b = 0; b < val_len; b++)
			v[b] = (uint8_t)(i * 31 + b);
		st = p99_cache_store(c, key_at((uint32_t)i), key_len, v, val_len, 0, 0,
				     P99_CACHE_MODE_SET, 0, NULL);
		if (st)
			die("p99_cache_store", st);
	}
	size_t held = 0, bad = 0;
	for (size_t i = 0; i < total; i++) {
		p99_cache_item it;
		if (p99_cache_get(c, key_at((uint32_t)i), key_len, &it) != P99_STATUS_OK)
			continue;
		held++;
		for (size_t b = 0; b < val_len; b++)
			v[b] = (uint8_t)(i * 31 + b);
		if (it.value_len != val_len || memcmp(it.value, v, val_len) != 0)
			bad++;
		p99_cache_item_release(c, &it);
	}
	p99_cache_stats sts = { .struct_size = sizeof(sts) };
	p99_cache_get_stats(c, &sts);
	printf("capacity: a %u MiB store (%llu shards) holds %zu items of %zu+%zu B after %zu "
	       "distinct "
	       "sets (%zu read back corrupt); hash table %.1f MiB on top; segments used %llu of "
	       "%llu, "
	       "item bytes %.1f MiB, evictions %llu, items evicted %llu, merged %llu\n",
	       mb, (unsigned long long)sts.shards, held, key_len, val_len, total, bad,
	       sts.hash_bytes / 1048576.0, (unsigned long long)sts.segments_used,
	       (unsigned long long)sts.segments_total, sts.item_bytes / 1048576.0,
	       (unsigned long long)sts.evictions, (unsigned long long)sts.evicted_items,
	       (unsigned long long)sts.merged_items);
	if (bad) {
		fprintf(stderr, "cachebench: corrupt items read back\n");
		exit(1);
	}
	free(v);
	p99_cache_free(c);
}

int main(int argc, char **argv)
{
	int opt;
	setvbuf(stdout, NULL, _IOLBF, 0); /* progress shows line by line even when redirected */
	uint32_t capacity_mb = 0;
	while ((opt = getopt(argc, argv, "n:k:v:o:s:S:r:t:w:m:")) != -1) {
		switch (opt) {
		case 'n': nkeys = strtoull(optarg, NULL, 10); break;
		case 'k': key_len = strtoull(optarg, NULL, 10); break;
		case 'v': val_len = strtoull(optarg, NULL, 10); break;
		case 'o': ops_per_thread = strtoull(optarg, NULL, 10); break;
		case 's': segment_bytes = (uint32_t)strtoul(optarg, NULL, 10); break;
		case 'S': shards = (uint32_t)strtoul(optarg, NULL, 10); break;
		case 'r': runs = atoi(optarg); break;
		case 't': max_threads = atoi(optarg); break;
		case 'w': only = optarg; break;
		case 'm': capacity_mb = (uint32_t)strtoul(optarg, NULL, 10); break;
		default:
			fprintf(stderr,
				"usage: %s [-n keys] [-k key_bytes] [-v value_bytes] "
				"[-o ops_per_thread] [-s segment_bytes] [-S shards] [-r runs] "
				"[-t max_threads] [-w workload-prefix] [-m capacity_test_MiB]\n",
				argv[0]);
			return 2;
		}
	}
	if (nkeys == 0 || key_len < 12 || key_len > P99_CACHE_KEY_MAX || val_len == 0 || runs < 1 ||
	    runs > 15 || max_threads < 1 || max_threads > 16) {
		fprintf(stderr, "cachebench: bad arguments\n");
		return 2;
	}
	value = malloc(val_len);
	for (size_t i = 0; i < val_len; i++)
		value[i] = (uint8_t)('a' + i % 26);
	printf("cachebench: libp99 %s, %zu keys of %zu B, values of %zu B, segments of %u B, "
	       "%zu ops per thread per run, median of %d runs\n",
	       p99_version(), nkeys, key_len, val_len, segment_bytes, ops_per_thread, runs);

	if (capacity_mb) {
		report_capacity(capacity_mb);
		return 0;
	}
	if (!only) {
		report_memory(1);
		report_memory(0);
	}

	make_sequences();
	p99_cache *c = make_cache(1);
	load(c);
	static const struct {
		const char *name;
		enum work w;
		int zipf;
	} tests[] = {
		{ "get uniform", W_GET, 0 },
		{ "get zipf", W_GET, 1 },
		{ "set uniform (reserve/write/commit)", W_SET, 0 },
		{ "set uniform (p99_cache_store)", W_STORE, 0 },
		{ "90/10 uniform", W_MIX, 0 },
		{ "90/10 zipf", W_MIX, 1 },
	};
	enum {
		NTESTS = sizeof(tests) / sizeof(tests[0])
	};
	struct figure base[NTESTS];
	printf("%-36s %8s %14s %14s %10s %10s\n", "workload", "threads", "Mops/s wall",
	       "Mops/CPU-s", "x1 wall", "x1 CPU");
	for (int threads = 1; threads <= max_threads; threads++) {
		for (int i = 0; i < NTESTS; i++) {
			if (only && strncmp(tests[i].name, only, strlen(only)) != 0)
				continue;
			struct figure f = median_of(
				c, tests[i].w, tests[i].zipf ? seq_zipf : seq_uniform, threads);
			if (threads == 1)
				base[i] = f;
			printf("%-36s %8d %14.2f %14.2f %9.2fx %9.2fx\n", tests[i].name, threads,
			       f.wall / 1e6, f.cpu / 1e6, f.wall / base[i].wall,
			       f.cpu * threads / base[i].cpu);
		}
	}
	p99_cache_stats st = { .struct_size = sizeof(st) };
	p99_cache_get_stats(c, &st);
	printf("after the runs: items %llu, evictions %llu, hits %llu, misses %llu\n",
	       (unsigned long long)st.items, (unsigned long long)st.evictions,
	       (unsigned long long)st.hits, (unsigned long long)st.misses);
	p99_cache_free(c);
	free(value);
	free(seq_uniform);
	free(seq_zipf);
	free(seq_is_set);
	return 0;
}
