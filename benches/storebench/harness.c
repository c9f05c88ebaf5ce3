/* The store benchmark harness; see harness.h. Compiled once per store with its own prefix. */
#define _GNU_SOURCE
#include "harness.h"
#include "storage.h"

#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define COPY_MAX 1024 /* mcserver copies values up to this size into its reply */
#define SET_BIT (1u << 31) /* in a mix sequence entry: a set, not a get */
#define PREFETCH_AHEAD 8 /* operations ahead whose key and value the harness prefetches */

static uint64_t clock_ns(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t now_ns(void)
{
	return clock_ns(CLOCK_MONOTONIC);
}

/* CPU time of the calling thread: on a shared machine, the cost of the operations without the
 * time the thread spent waiting for a CPU. */
static uint64_t cpu_ns(void)
{
	return clock_ns(CLOCK_THREAD_CPUTIME_ID);
}

static uint64_t next_rand(uint64_t *s)
{
	/* xorshift64* */
	uint64_t x = *s;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545F4914F6CDD1DULL;
}

/* Key i: "sb:" and the number zero-padded to the key size. */
static void make_key(char *out, uint32_t size, uint64_t i)
{
	memset(out, '0', size);
	memcpy(out, "sb:", 3);
	for (uint32_t pos = size; i > 0 && pos > 3; i /= 10)
		out[--pos] = (char)('0' + i % 10);
}

/* Value of key i: its number in 8 bytes, then letters that depend on the key. */
static void make_value(char *out, uint32_t size, uint64_t i)
{
	memcpy(out, &i, 8);
	for (uint32_t j = 8; j < size; j++)
		out[j] = (char)('a' + (i * 31 + j * 7) % 26);
}

static int store(uint32_t mode, const char *key, uint32_t klen, const char *val, uint32_t vlen)
{
	if (mode == HARNESS_WRITE_STORE)
		return storage_store(key, klen, 0, 0, val, vlen, STORAGE_SET, 0, NULL) ==
				       STORAGE_STORED
			       ? 0
			       : -1;
	struct storage_reservation *r;
	if (storage_reserve(key, klen, 0, 0, vlen, &r) != STORAGE_OK)
		return -1;
	if (storage_fill(r, val, vlen) != STORAGE_OK) {
		storage_cancel(r);
		return -1;
	}
	return storage_commit(r, STORAGE_SET, 0, NULL) == STORAGE_STORED ? 0 : -1;
}

/* Reads a key and checks its value. 1 hit, 0 miss, -1 wrong value. */
static int fetch(uint32_t mode, const char *key, uint32_t klen, const char *want, uint32_t vlen)
{
	char buf[COPY_MAX];
	struct storage_view v;
	int rc = mode == HARNESS_READ_PIN ? storage_get(key, klen, &v)
					  : storage_get_copy(key, klen, buf, sizeof(buf), &v);
	if (rc != STORAGE_OK)
		return 0;
	int ok = v.len == vlen && memcmp(v.value, want, vlen) == 0;
	storage_release(v.pin);
	return ok ? 1 : -1;
}

/* Draws n key indexes: uniform, or Zipf(s) by inverting the cumulative weights. */
static void draw_keys(uint32_t *out, uint64_t n, uint64_t keys, uint64_t *rng, const double *cdf)
{
	for (uint64_t k = 0; k < n; k++) {
		uint64_t x = next_rand(rng);
		if (!cdf) {
			out[k] = (uint32_t)(x % keys);
			continue;
		}
		double u = (double)(x >> 11) / 9007199254740992.0 * cdf[keys - 1];
		uint64_t lo = 0, hi = keys - 1;
		while (lo < hi) {
			uint64_t mid = lo + (hi - lo) / 2;
			if (cdf[mid] < u)
				lo = mid + 1;
			else
				hi = mid;
		}
		out[k] = (uint32_t)lo;
	}
}

enum phase {
	PHASE_FILL,
	PHASE_GET,
	PHASE_MIX
};

/* Each worker on cache lines of its own (128 B: a line and its adjacent-line prefetch pair), so
 * one thread's counters never share a line with what the other thread reads on every
 * operation. */
struct worker {
	_Alignas(128) const struct harness_params *p;
	const char *keys, *vals;
	enum phase phase;
	const uint32_t *seq; /* get/mix: key indexes (mix: SET_BIT marks a set) */
	uint64_t from, to; /* fill: key range; get/mix: range of seq */
	int cpu; /* -1: not pinned */
	pthread_barrier_t *start;
	uint64_t t0, t1, cpu_used;
	uint64_t hits, misses, bad, failed;
	uint64_t *samples;
	size_t samples_cap, samples_len;
};

static void *work(void *arg)
{
	struct worker *w = arg;
	const struct harness_params *p = w->p;
	const uint32_t ks = p->key_size, vs = p->value_size;
	if (w->cpu >= 0) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(w->cpu, &set);
		if (pthread_setaffinity_np(pthread_self(), sizeof(set), &set) != 0)
			w->cpu = -1;
	}
	pthread_barrier_wait(w->start);
	uint64_t c0 = cpu_ns();
	w->t0 = now_ns();
	if (w->phase == PHASE_FILL) {
		for (uint64_t i = w->from; i < w->to; i++)
			if (store(p->write_mode, w->keys + i * ks, ks, w->vals + i * vs, vs) != 0)
				w->failed++;
	} else {
		for (uint64_t n = w->from; n < w->to; n++) {
			uint32_t e = w->seq[n];
			uint64_t i = e & ~SET_BIT;
			/* A server finds the key (and a set's value) in the buffer it just received
			 * into, in cache; here they come from arrays far larger than the caches. So
			 * the operation PREFETCH_AHEAD places on fetches its key and value (the value
			 * read back is checked against it) now, and neither store is charged for the
			 * harness's own misses. */
			if (n + PREFETCH_AHEAD < w->to) {
				uint64_t j = w->seq[n + PREFETCH_AHEAD] & ~SET_BIT;
				__builtin_prefetch(w->keys + j * ks);
				__builtin_prefetch(w->vals + j * vs);
				__builtin_prefetch(w->vals + j * vs + vs - 1);
			}
			bool timed = w->phase == PHASE_MIX && n % p->sample_every == 0 &&
				     w->samples_len < w->samples_cap;
			uint64_t t0 = timed ? now_ns() : 0;
			if (e & SET_BIT) {
				if (store(p->write_mode, w->keys + i * ks, ks, w->vals + i * vs,
					  vs) != 0)
					w->failed++;
			} else {
				int f = fetch(p->read_mode, w->keys + i * ks, ks, w->vals + i * vs,
					      vs);
				w->hits += f == 1;
				w->misses += f == 0;
				w->bad += f < 0;
			}
			if (timed)
				w->samples[w->samples_len++] = now_ns() - t0;
		}
	}
	w->t1 = now_ns();
	w->cpu_used = cpu_ns() - c0;
	return NULL;
}

/* Runs one phase on every worker; returns its wall time and (in *cpu) the threads' CPU time. */
static uint64_t run_phase(struct worker *w, uint32_t threads, enum phase ph, uint64_t total,
			  uint64_t *cpu)
{
	pthread_t tid[threads];
	pthread_barrier_t start;
	if (pthread_barrier_init(&start, NULL, threads) != 0)
		return 0;
	uint32_t started = 0;
	for (uint32_t t = 0; t < threads; t++) {
		w[t].phase = ph;
		w[t].start = &start;
		w[t].from = total * t / threads;
		w[t].to = total * (t + 1) / threads;
		if (pthread_create(&tid[t], NULL, work, &w[t]) != 0)
			break;
		started++;
	}
	if (started < threads) {
		/* The barrier would never open: no safe way to continue. */
		fprintf(stderr, "storebench: pthread_create failed\n");
		exit(1);
	}
	for (uint32_t t = 0; t < threads; t++)
		pthread_join(tid[t], NULL);
	pthread_barrier_destroy(&start);
	uint64_t first = UINT64_MAX, last = 0;
	*cpu = 0;
	for (uint32_t t = 0; t < threads; t++) {
		first = w[t].t0 < first ? w[t].t0 : first;
		last = w[t].t1 > last ? w[t].t1 : last;
		*cpu += w[t].cpu_used;
	}
	return last - first;
}

/* The CPUs this process may run on, in order; returns how many (0 if unknown). */
static int allowed_cpus(int *out, int cap)
{
	cpu_set_t set;
	if (sched_getaffinity(0, sizeof(set), &set) != 0)
		return 0;
	int n = 0;
	for (int c = 0; c < CPU_SETSIZE && n < cap; c++)
		if (CPU_ISSET(c, &set))
			out[n++] = c;
	return n;
}

struct relay {
	_Alignas(128) uint64_t turn; /* whose turn: even = the first thread's, odd = the second's */
	_Alignas(128) uint64_t trips;
	int cpu[2];
	pthread_barrier_t start;
	uint64_t ns; /* measured by the first thread */
	int failed;
};

struct relay_arg {
	struct relay *r;
	int side;
};

static void *relay_run(void *arg)
{
	struct relay_arg *a = arg;
	struct relay *r = a->r;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(r->cpu[a->side], &set);
	if (pthread_setaffinity_np(pthread_self(), sizeof(set), &set) != 0)
		__atomic_store_n(&r->failed, 1, __ATOMIC_RELAXED);
	pthread_barrier_wait(&r->start);
	if (__atomic_load_n(&r->failed, __ATOMIC_RELAXED))
		return NULL;
	uint64_t t0 = now_ns();
	for (uint64_t k = 0; k < r->trips; k++) {
		uint64_t mine = 2 * k + (uint64_t)a->side;
		while (__atomic_load_n(&r->turn, __ATOMIC_ACQUIRE) != mine)
			__builtin_ia32_pause();
		__atomic_store_n(&r->turn, mine + 1, __ATOMIC_RELEASE);
	}
	if (a->side == 0)
		r->ns = now_ns() - t0;
	return NULL;
}

double harness_line_transfer_ns(uint64_t round_trips)
{
	int cpus[256];
	if (round_trips == 0 || allowed_cpus(cpus, 256) < 2)
		return -1;
	struct relay *r = aligned_alloc(128, sizeof(*r));
	if (!r)
		return -1;
	memset(r, 0, sizeof(*r));
	r->trips = round_trips;
	r->cpu[0] = cpus[0];
	r->cpu[1] = cpus[1];
	if (pthread_barrier_init(&r->start, NULL, 2) != 0) {
		free(r);
		return -1;
	}
	struct relay_arg args[2] = { { r, 0 }, { r, 1 } };
	pthread_t tid[2];
	if (pthread_create(&tid[0], NULL, relay_run, &args[0]) != 0) {
		pthread_barrier_destroy(&r->start);
		free(r);
		return -1;
	}
	if (pthread_create(&tid[1], NULL, relay_run, &args[1]) != 0) {
		/* The first thread waits at the barrier for a partner that never comes: be it. */
		__atomic_store_n(&r->failed, 1, __ATOMIC_RELAXED);
		pthread_barrier_wait(&r->start);
		pthread_join(tid[0], NULL);
		pthread_barrier_destroy(&r->start);
		free(r);
		return -1;
	}
	pthread_join(tid[0], NULL);
	pthread_join(tid[1], NULL);
	pthread_barrier_destroy(&r->start);
	double ns = r->failed ? -1 : (double)r->ns / (2.0 * (double)round_trips);
	free(r);
	return ns;
}

int harness_run(const struct harness_params *p, struct harness_result *r, char *err, size_t errlen)
{
	memset(r, 0, sizeof(*r));
	if (p->keys == 0 || p->keys >= SET_BIT || p->key_size < 12 ||
	    p->key_size > STORAGE_KEY_MAX || p->value_size < 8 || p->sample_every == 0 ||
	    p->threads == 0 || p->threads > 256 || p->zipf_s < 0) {
		snprintf(err, errlen, "harness: bad parameters");
		return -1;
	}
	const uint32_t threads = p->threads;
	char *keys = malloc(p->keys * p->key_size);
	char *vals = malloc(p->keys * p->value_size);
	uint32_t *get_seq = malloc(p->ops * sizeof(uint32_t) + 1);
	uint32_t *mix_seq = malloc(p->ops * sizeof(uint32_t) + 1);
	double *cdf = p->zipf_s > 0 ? malloc(p->keys * sizeof(double)) : NULL;
	struct worker *w = aligned_alloc(128, threads * sizeof(*w));
	if (!keys || !vals || !get_seq || !mix_seq || (p->zipf_s > 0 && !cdf) || !w) {
		free(keys);
		free(vals);
		free(get_seq);
		free(mix_seq);
		free(cdf);
		free(w);
		snprintf(err, errlen, "harness: out of memory for %llu keys",
			 (unsigned long long)p->keys);
		return -1;
	}
	for (uint64_t i = 0; i < p->keys; i++) {
		make_key(keys + i * p->key_size, p->key_size, i);
		make_value(vals + i * p->value_size, p->value_size, i);
	}
	if (cdf) {
		double sum = 0;
		for (uint64_t i = 0; i < p->keys; i++) {
			sum += 1.0 / pow((double)(i + 1), p->zipf_s);
			cdf[i] = sum;
		}
	}
	uint64_t rng = p->seed | 1;
	draw_keys(get_seq, p->ops, p->keys, &rng, cdf);
	draw_keys(mix_seq, p->ops, p->keys, &rng, cdf);
	for (uint64_t n = 0; n < p->ops; n++)
		if ((next_rand(&rng) & 0xff) * 100 >= (uint64_t)p->get_percent * 256)
			mix_seq[n] |= SET_BIT;
	free(cdf);

	memset(w, 0, threads * sizeof(*w));
	int cpus[256];
	int ncpu = allowed_cpus(cpus, 256);
	for (uint32_t t = 0; t < threads; t++) {
		w[t].p = p;
		w[t].keys = keys;
		w[t].vals = vals;
		w[t].cpu = (int)t < ncpu ? cpus[t] : -1;
		w[t].samples = p->samples + p->samples_cap * t / threads;
		w[t].samples_cap =
			p->samples_cap * (t + 1) / threads - p->samples_cap * t / threads;
	}

	struct storage_options o = {
		.mem_limit = p->mem_limit,
		.item_max = 1 << 20,
		.cas_enabled = true,
		.growth = 0,
		.hashpower = p->hashpower,
		.prealloc = p->prealloc != 0,
	};
	if (storage_setup(&o, err, errlen) != 0) {
		free(keys);
		free(vals);
		free(get_seq);
		free(mix_seq);
		free(w);
		return -1;
	}
	snprintf(r->store_name, sizeof(r->store_name), "%s", storage_name());

	r->fill_ns = run_phase(w, threads, PHASE_FILL, p->keys, &r->fill_cpu_ns);
	r->fill_ops = p->keys;
	for (uint32_t t = 0; t < threads; t++)
		w[t].seq = get_seq;
	r->get_ns = run_phase(w, threads, PHASE_GET, p->ops, &r->get_cpu_ns);
	r->get_ops = p->ops;
	for (uint32_t t = 0; t < threads; t++)
		w[t].seq = mix_seq;
	r->mix_ns = run_phase(w, threads, PHASE_MIX, p->ops, &r->mix_cpu_ns);
	r->mix_ops = p->ops;

	size_t kept = 0;
	for (uint32_t t = 0; t < threads; t++) {
		r->hits += w[t].hits;
		r->misses += w[t].misses;
		r->bad_values += w[t].bad;
		r->failed_writes += w[t].failed;
		r->pinned_threads += w[t].cpu >= 0;
		memmove(p->samples + kept, w[t].samples, w[t].samples_len * sizeof(uint64_t));
		kept += w[t].samples_len;
	}
	r->samples_len = kept;

	storage_teardown();
	free(keys);
	free(vals);
	free(get_seq);
	free(mix_seq);
	free(w);
	return 0;
}
