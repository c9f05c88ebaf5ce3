/* The store benchmark harness; see harness.h. Compiled once per store with its own prefix. */
#include "harness.h"
#include "storage.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
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

static int store(const char *key, uint32_t klen, const char *val, uint32_t vlen)
{
	struct storage_reservation *r;
	if (storage_reserve(key, klen, 0, 0, vlen, &r) != STORAGE_OK)
		return -1;
	if (storage_fill(r, val, vlen) != STORAGE_OK) {
		storage_cancel(r);
		return -1;
	}
	return storage_commit(r, STORAGE_SET, 0, NULL) == STORAGE_STORED ? 0 : -1;
}

/* Reads key i and checks its value. 1 hit, 0 miss, -1 wrong value. */
static int fetch(const char *key, uint32_t klen, const char *want, uint32_t vlen)
{
	struct storage_view v;
	if (storage_get(key, klen, &v) != STORAGE_OK)
		return 0;
	int ok = v.len == vlen && memcmp(v.value, want, vlen) == 0;
	storage_release(v.pin);
	return ok ? 1 : -1;
}

int harness_run(const struct harness_params *p, struct harness_result *r, char *err, size_t errlen)
{
	memset(r, 0, sizeof(*r));
	if (p->keys == 0 || p->key_size < 12 || p->key_size > STORAGE_KEY_MAX || p->value_size < 8 ||
	    p->sample_every == 0) {
		snprintf(err, errlen, "harness: bad parameters");
		return -1;
	}
	char *keys = malloc(p->keys * p->key_size);
	char *vals = malloc(p->keys * p->value_size);
	if (!keys || !vals) {
		free(keys);
		free(vals);
		snprintf(err, errlen, "harness: out of memory for %llu keys", (unsigned long long)p->keys);
		return -1;
	}
	for (uint64_t i = 0; i < p->keys; i++) {
		make_key(keys + i * p->key_size, p->key_size, i);
		make_value(vals + i * p->value_size, p->value_size, i);
	}
	struct storage_options o = {
		.mem_limit = p->mem_limit, .item_max = 1 << 20, .cas_enabled = true, .growth = 0,
	};
	if (storage_setup(&o, err, errlen) != 0) {
		free(keys);
		free(vals);
		return -1;
	}
	snprintf(r->store_name, sizeof(r->store_name), "%s", storage_name());
	const uint32_t ks = p->key_size, vs = p->value_size;

	uint64_t t = now_ns();
	for (uint64_t i = 0; i < p->keys; i++)
		if (store(keys + i * ks, ks, vals + i * vs, vs) != 0)
			r->failed_writes++;
	r->fill_ns = now_ns() - t;
	r->fill_ops = p->keys;

	uint64_t s = p->seed | 1;
	t = now_ns();
	for (uint64_t n = 0; n < p->ops; n++) {
		uint64_t i = next_rand(&s) % p->keys;
		int f = fetch(keys + i * ks, ks, vals + i * vs, vs);
		r->hits += f == 1;
		r->misses += f == 0;
		r->bad_values += f < 0;
	}
	r->get_ns = now_ns() - t;
	r->get_ops = p->ops;

	t = now_ns();
	for (uint64_t n = 0; n < p->ops; n++) {
		uint64_t rnd = next_rand(&s);
		uint64_t i = (rnd >> 8) % p->keys;
		int is_get = (rnd & 0xff) * 100 < (uint64_t)p->get_percent * 256;
		int timed = n % p->sample_every == 0 && r->samples_len < p->samples_cap;
		uint64_t t0 = timed ? now_ns() : 0;
		if (is_get) {
			int f = fetch(keys + i * ks, ks, vals + i * vs, vs);
			r->hits += f == 1;
			r->misses += f == 0;
			r->bad_values += f < 0;
		} else if (store(keys + i * ks, ks, vals + i * vs, vs) != 0) {
			r->failed_writes++;
		}
		if (timed)
			p->samples[r->samples_len++] = now_ns() - t0;
	}
	r->mix_ns = now_ns() - t;
	r->mix_ops = p->ops;

	storage_teardown();
	free(keys);
	free(vals);
	return 0;
}
