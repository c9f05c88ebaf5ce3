/* p99_cache through the C ABI: every function, its documented outcomes, and misuse (NULL
 * handles, bad keys, oversized values, incomplete or repeated commit/cancel/release). Runs
 * under ASan/UBSan and Valgrind: nothing may crash or leak. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

#define T0 1700000000u

static p99_cache *new_cache(int cas, uint32_t eviction)
{
	p99_cache_config cfg = { .struct_size = sizeof cfg };
	CHECK_OK(p99_cache_config_defaults(&cfg));
	cfg.heap_bytes = 4u << 20;
	cfg.segment_bytes = 64u << 10;
	cfg.item_max = 64u << 10;
	cfg.cas = cas;
	cfg.eviction = eviction;
	cfg.shards = 1;
	cfg.manual_clock = true;
	cfg.manual_clock_start = T0;
	p99_cache *c = NULL;
	CHECK_OK(p99_cache_new(&cfg, &c));
	CHECK(c != NULL);
	return c;
}

static int set_str(p99_cache *c, const char *k, const char *v, uint32_t flags, uint32_t expiry)
{
	return p99_cache_store(c, (const uint8_t *)k, strlen(k), (const uint8_t *)v, strlen(v),
			       flags, expiry, P99_CACHE_MODE_SET, 0, NULL);
}

/* Checks that `k` holds exactly `want` (NULL = absent). */
static void expect_value(p99_cache *c, const char *k, const char *want)
{
	p99_cache_item it;
	uint32_t st = p99_cache_get(c, (const uint8_t *)k, strlen(k), &it);
	if (want == NULL) {
		CHECK_STATUS(st, P99_STATUS_NOT_FOUND);
		return;
	}
	CHECK_STATUS(st, P99_STATUS_OK);
	if (st != P99_STATUS_OK)
		return;
	CHECK_EQ(it.value_len, strlen(want));
	CHECK(memcmp(it.value, want, it.value_len) == 0);
	CHECK_EQ(it.key_len, strlen(k));
	CHECK(memcmp(it.key, k, it.key_len) == 0);
	CHECK_OK(p99_cache_item_release(c, &it));
}

static void test_config_and_lifecycle(void)
{
	p99_cache_config cfg = { .struct_size = sizeof cfg };
	CHECK_STATUS(p99_cache_config_defaults(NULL), P99_STATUS_NULL_PARAMETER);
	CHECK_OK(p99_cache_config_defaults(&cfg));
	CHECK_EQ(cfg.struct_size, sizeof(cfg));
	CHECK_EQ(cfg.segment_bytes, 1u << 20);
	CHECK_EQ(cfg.item_max, 1u << 20);
	CHECK_EQ(cfg.heap_bytes, 64u << 20);
	CHECK(cfg.cas);
	CHECK_EQ(cfg.eviction, P99_CACHE_EVICTION_MERGE);
	CHECK_EQ(cfg.flags, 0);

	p99_cache *c = NULL;
	CHECK_STATUS(p99_cache_new(NULL, &c), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_cache_new(&cfg, NULL), P99_STATUS_NULL_PARAMETER);
	p99_cache_config bad = cfg;
	bad.struct_size = 4;
	CHECK_STATUS(p99_cache_new(&bad, &c), P99_STATUS_INVALID_ARGUMENT);
	bad = cfg;
	bad.item_max = cfg.segment_bytes + 1;
	CHECK_STATUS(p99_cache_new(&bad, &c), P99_STATUS_INVALID_ARGUMENT);
	/* Configuration errors name the field and the rule. */
	CHECK(strstr(p99_last_error_message(), "item_max must not exceed segment_bytes") != NULL);
	bad = cfg;
	bad.segment_bytes = 100;
	CHECK_STATUS(p99_cache_new(&bad, &c), P99_STATUS_INVALID_ARGUMENT);
	CHECK(strstr(p99_last_error_message(), "segment_bytes must be in") != NULL);
	bad = cfg;
	bad.eviction = 77;
	CHECK_STATUS(p99_cache_new(&bad, &c), P99_STATUS_INVALID_ARGUMENT);
	bad = cfg;
	bad.shards = 3;
	CHECK_STATUS(p99_cache_new(&bad, &c), P99_STATUS_INVALID_ARGUMENT);
	bad = cfg;
	bad.heap_bytes = 1000;
	CHECK_STATUS(p99_cache_new(&bad, &c), P99_STATUS_INVALID_ARGUMENT);
	CHECK(c == NULL);
	bad = cfg;
	bad.flags = P99_CACHE_CONFIG_PREFAULT | 2; /* a bit this version does not know */
	CHECK_STATUS(p99_cache_new(&bad, &c), P99_STATUS_INVALID_ARGUMENT);
	CHECK(strstr(p99_last_error_message(), "unknown flag bits 0x2") != NULL);
	CHECK(c == NULL);

	/* A prefaulted heap works as any other. */
	p99_cache_config pre = cfg;
	pre.heap_bytes = 4u << 20;
	pre.flags = P99_CACHE_CONFIG_PREFAULT;
	CHECK_OK(p99_cache_new(&pre, &c));
	CHECK_OK(p99_cache_store(c, (const uint8_t *)"pk", 2, (const uint8_t *)"pv", 2, 0, 0,
				 P99_CACHE_MODE_SET, 0, NULL));
	uint8_t got[8];
	p99_cache_value_info info = { .struct_size = sizeof info };
	CHECK_OK(p99_cache_get_copy(c, (const uint8_t *)"pk", 2, got, sizeof got, &info));
	CHECK_EQ(info.value_len, 2);
	CHECK(memcmp(got, "pv", 2) == 0);
	CHECK_OK(p99_cache_free(c));
	c = NULL;

	CHECK_OK(p99_cache_new(&cfg, &c));
	CHECK(c != NULL);
	CHECK_OK(p99_cache_free(c));
	CHECK_OK(p99_cache_free(NULL));
}

static void test_null_handles(void)
{
	p99_cache *c = new_cache(1, P99_CACHE_EVICTION_MERGE);
	p99_cache_item it;
	p99_cache_reservation r;
	uint64_t v;
	uint32_t e;
	const uint8_t *k = (const uint8_t *)"k";
	CHECK_STATUS(p99_cache_get(NULL, k, 1, &it), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_cache_get(c, NULL, 1, &it), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_cache_get(c, k, 1, NULL), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_cache_get_and_touch(NULL, k, 1, 0, &it), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_cache_get_and_touch(c, k, 1, 0, NULL), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_cache_reserve(NULL, k, 1, 1, 0, 0, &r), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_cache_reserve(c, k, 1, 1, 0, 0, NULL), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_cache_reservation_write(NULL, k, 1), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_cache_reservation_advance(NULL, 1), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_cache_commit(c, NULL, P99_CACHE_MODE_SET, 0, NULL),
		     P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_cache_cancel(NULL), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_cache_store(NULL, k, 1, k, 1, 0, 0, P99_CACHE_MODE_SET, 0, NULL),
		     P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_cache_store(c, k, 1, NULL, 1, 0, 0, P99_CACHE_MODE_SET, 0, NULL),
		     P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_cache_item_release(NULL, &it), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_cache_item_release(c, NULL), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_cache_delete(NULL, k, 1), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_cache_touch(NULL, k, 1, 0), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_cache_incr(NULL, k, 1, 1, &v, NULL), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_cache_incr(c, k, 1, 1, NULL, NULL), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_cache_decr(NULL, k, 1, 1, &v, NULL), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_cache_decr(c, k, 1, 1, NULL, NULL), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_cache_flush_all(NULL, 0), P99_STATUS_NULL_PARAMETER);
	CHECK_EQ(p99_cache_now(NULL), 0);
	CHECK_STATUS(p99_cache_set_time(NULL, 5), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_cache_expiry_from_exptime(NULL, 5, &e), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_cache_expiry_from_exptime(c, 5, NULL), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_cache_get_stats(NULL, NULL), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_cache_get_stats(c, NULL), P99_STATUS_NULL_PARAMETER);
	CHECK_OK(p99_cache_free(c));
}

static void test_bad_keys_and_sizes(void)
{
	p99_cache *c = new_cache(1, P99_CACHE_EVICTION_MERGE);
	uint8_t key[251];
	memset(key, 'k', sizeof(key));
	p99_cache_reservation r;
	p99_cache_item it;
	/* Zero-length and 251-byte keys are refused everywhere; 250 bytes is fine. */
	CHECK_STATUS(p99_cache_reserve(c, key, 0, 1, 0, 0, &r), P99_STATUS_INVALID_ARGUMENT);
	CHECK_STATUS(p99_cache_reserve(c, key, 251, 1, 0, 0, &r), P99_STATUS_INVALID_ARGUMENT);
	CHECK_STATUS(p99_cache_get(c, key, 0, &it), P99_STATUS_INVALID_ARGUMENT);
	CHECK_STATUS(p99_cache_get(c, key, 251, &it), P99_STATUS_INVALID_ARGUMENT);
	CHECK_STATUS(p99_cache_delete(c, key, 251), P99_STATUS_INVALID_ARGUMENT);
	CHECK_STATUS(p99_cache_touch(c, key, 0, 0), P99_STATUS_INVALID_ARGUMENT);
	CHECK_STATUS(p99_cache_store(c, key, 251, key, 1, 0, 0, P99_CACHE_MODE_SET, 0, NULL),
		     P99_STATUS_INVALID_ARGUMENT);
	CHECK_OK(p99_cache_store(c, key, 250, key, 3, 0, 0, P99_CACHE_MODE_SET, 0, NULL));
	CHECK_OK(p99_cache_get(c, key, 250, &it));
	CHECK_EQ(it.key_len, 250);
	CHECK_OK(p99_cache_item_release(c, &it));

	/* item_max (64 KiB here) counts key + value + P99_CACHE_ITEM_HEADER_MAX. */
	size_t fit = (64u << 10) - P99_CACHE_ITEM_HEADER_MAX - 1;
	CHECK_STATUS(p99_cache_reserve(c, key, 1, fit + 1, 0, 0, &r), P99_STATUS_TOO_LARGE);
	CHECK_STATUS(p99_cache_reserve(c, key, 1, (size_t)-1, 0, 0, &r), P99_STATUS_TOO_LARGE);
	uint8_t *big = calloc(1, fit + 1);
	CHECK_STATUS(p99_cache_store(c, key, 1, big, fit + 1, 0, 0, P99_CACHE_MODE_SET, 0, NULL),
		     P99_STATUS_TOO_LARGE);
	CHECK_OK(p99_cache_store(c, key, 1, big, fit, 0, 0, P99_CACHE_MODE_SET, 0, NULL));
	/* Appending past the limit is refused and leaves the item as it was. */
	CHECK_STATUS(p99_cache_store(c, key, 1, big, 1, 0, 0, P99_CACHE_MODE_APPEND, 0, NULL),
		     P99_STATUS_TOO_LARGE);
	CHECK_OK(p99_cache_get(c, key, 1, &it));
	CHECK_EQ(it.value_len, fit);
	CHECK_OK(p99_cache_item_release(c, &it));
	free(big);
	CHECK_STATUS(p99_cache_store(c, key, 1, key, 1, 0, 0, 99, 0, NULL),
		     P99_STATUS_INVALID_ARGUMENT);
	CHECK_OK(p99_cache_free(c));
}

static void test_two_phase_write(void)
{
	p99_cache *c = new_cache(1, P99_CACHE_EVICTION_MERGE);
	p99_cache_reservation r;
	uint64_t cas = 0;
	/* The value arrives in three pieces: two copied, one received in place. */
	CHECK_OK(p99_cache_reserve(c, (const uint8_t *)"k1", 2, 11, 7, 0, &r));
	CHECK(r.value != NULL);
	CHECK_EQ(r.value_len, 11);
	CHECK_OK(p99_cache_reservation_write(&r, (const uint8_t *)"hello", 5));
	memcpy(r.value + 5, " wo", 3);
	CHECK_OK(p99_cache_reservation_advance(&r, 3));
	CHECK_STATUS(p99_cache_reservation_write(&r, (const uint8_t *)"rldX", 4),
		     P99_STATUS_INVALID_STATE);
	CHECK_STATUS(p99_cache_reservation_advance(&r, 4), P99_STATUS_INVALID_STATE);
	CHECK_OK(p99_cache_reservation_write(&r, (const uint8_t *)"rld", 3));
	CHECK_OK(p99_cache_commit(c, &r, P99_CACHE_MODE_SET, 0, &cas));
	CHECK(cas != 0);
	CHECK(r.state == NULL);
	expect_value(c, "k1", "hello world");

	/* A second commit or a cancel of the consumed struct is a clear error. */
	CHECK_STATUS(p99_cache_commit(c, &r, P99_CACHE_MODE_SET, 0, NULL),
		     P99_STATUS_INVALID_STATE);
	CHECK_STATUS(p99_cache_cancel(&r), P99_STATUS_INVALID_STATE);
	CHECK_STATUS(p99_cache_reservation_write(&r, (const uint8_t *)"x", 1),
		     P99_STATUS_INVALID_STATE);

	/* Commit before the value is complete: refused, reservation consumed, nothing stored. */
	CHECK_OK(p99_cache_reserve(c, (const uint8_t *)"k2", 2, 4, 0, 0, &r));
	CHECK_OK(p99_cache_reservation_write(&r, (const uint8_t *)"ab", 2));
	CHECK_STATUS(p99_cache_commit(c, &r, P99_CACHE_MODE_SET, 0, NULL),
		     P99_STATUS_INVALID_STATE);
	CHECK(r.state == NULL);
	expect_value(c, "k2", NULL);

	/* A bad mode also consumes the reservation. */
	CHECK_OK(p99_cache_reserve(c, (const uint8_t *)"k2", 2, 0, 0, 0, &r));
	CHECK_STATUS(p99_cache_commit(c, &r, 1234, 0, NULL), P99_STATUS_INVALID_ARGUMENT);
	CHECK(r.state == NULL);

	/* Cancel, then cancel again. */
	CHECK_OK(p99_cache_reserve(c, (const uint8_t *)"k3", 2, 3, 0, 0, &r));
	CHECK_OK(p99_cache_cancel(&r));
	CHECK_STATUS(p99_cache_cancel(&r), P99_STATUS_INVALID_STATE);
	expect_value(c, "k3", NULL);

	/* A zero-length value is a value. */
	CHECK_OK(p99_cache_reserve(c, (const uint8_t *)"empty", 5, 0, 0, 0, &r));
	CHECK_OK(p99_cache_commit(c, &r, P99_CACHE_MODE_SET, 0, NULL));
	expect_value(c, "empty", "");

	/* A reservation of another cache is refused (and consumed). */
	p99_cache *other = new_cache(1, P99_CACHE_EVICTION_FIFO);
	CHECK_OK(p99_cache_reserve(other, (const uint8_t *)"x", 1, 0, 0, 0, &r));
	CHECK_STATUS(p99_cache_commit(c, &r, P99_CACHE_MODE_SET, 0, NULL),
		     P99_STATUS_INVALID_ARGUMENT);
	CHECK(r.state == NULL);
	CHECK_OK(p99_cache_free(other));
	CHECK_OK(p99_cache_free(c));
}

static void test_modes(void)
{
	p99_cache *c = new_cache(1, P99_CACHE_EVICTION_MERGE);
	const uint8_t *k = (const uint8_t *)"m";
	uint64_t cas1 = 0, cas2 = 0;
	CHECK_STATUS(p99_cache_store(c, k, 1, k, 1, 0, 0, P99_CACHE_MODE_REPLACE, 0, NULL),
		     P99_STATUS_NOT_STORED);
	CHECK_STATUS(p99_cache_store(c, k, 1, k, 1, 0, 0, P99_CACHE_MODE_APPEND, 0, NULL),
		     P99_STATUS_NOT_STORED);
	CHECK_STATUS(p99_cache_store(c, k, 1, k, 1, 0, 0, P99_CACHE_MODE_PREPEND, 0, NULL),
		     P99_STATUS_NOT_STORED);
	CHECK_STATUS(p99_cache_store(c, k, 1, k, 1, 0, 0, P99_CACHE_MODE_CAS, 1, NULL),
		     P99_STATUS_NOT_FOUND);
	CHECK_OK(p99_cache_store(c, k, 1, (const uint8_t *)"mid", 3, 5, 0, P99_CACHE_MODE_ADD, 0,
				 &cas1));
	CHECK_STATUS(p99_cache_store(c, k, 1, k, 1, 0, 0, P99_CACHE_MODE_ADD, 0, NULL),
		     P99_STATUS_NOT_STORED);
	CHECK_OK(p99_cache_store(c, k, 1, (const uint8_t *)">", 1, 99, 0, P99_CACHE_MODE_APPEND, 0,
				 &cas2));
	CHECK(cas2 != cas1);
	CHECK_OK(p99_cache_store(c, k, 1, (const uint8_t *)"<", 1, 99, 0, P99_CACHE_MODE_PREPEND, 0,
				 NULL));
	p99_cache_item it;
	CHECK_OK(p99_cache_get(c, k, 1, &it));
	CHECK_EQ(it.value_len, 5);
	CHECK(memcmp(it.value, "<mid>", 5) == 0);
	CHECK_EQ(it.flags, 5); /* append/prepend keep the item's flags */
	uint64_t cur = it.cas;
	CHECK_OK(p99_cache_item_release(c, &it));
	CHECK_STATUS(p99_cache_store(c, k, 1, k, 1, 0, 0, P99_CACHE_MODE_CAS, cur + 1, NULL),
		     P99_STATUS_EXISTS);
	CHECK_OK(p99_cache_store(c, k, 1, (const uint8_t *)"new", 3, 0, 0, P99_CACHE_MODE_CAS, cur,
				 &cas1));
	CHECK(cas1 != cur);
	CHECK_STATUS(p99_cache_store(c, k, 1, k, 1, 0, 0, P99_CACHE_MODE_CAS, cur, NULL),
		     P99_STATUS_EXISTS);
	CHECK_OK(p99_cache_store(c, k, 1, k, 1, 0, 0, P99_CACHE_MODE_REPLACE, 0, NULL));
	CHECK_OK(p99_cache_delete(c, k, 1));
	CHECK_STATUS(p99_cache_delete(c, k, 1), P99_STATUS_NOT_FOUND);
	CHECK_OK(p99_cache_free(c));

	/* CAS disabled (memcached -C): CAS reads 0 and a cas write on a present key is EXISTS. */
	c = new_cache(0, P99_CACHE_EVICTION_FIFO);
	CHECK_OK(p99_cache_store(c, k, 1, k, 1, 0, 0, P99_CACHE_MODE_SET, 0, &cas1));
	CHECK_EQ(cas1, 0);
	CHECK_OK(p99_cache_get(c, k, 1, &it));
	CHECK_EQ(it.cas, 0);
	CHECK_OK(p99_cache_item_release(c, &it));
	CHECK_STATUS(p99_cache_store(c, k, 1, k, 1, 0, 0, P99_CACHE_MODE_CAS, 0, NULL),
		     P99_STATUS_EXISTS);
	CHECK_OK(p99_cache_free(c));
}

static void test_incr_decr(void)
{
	p99_cache *c = new_cache(1, P99_CACHE_EVICTION_MERGE);
	uint64_t v = 0, cas = 0;
	const uint8_t *k = (const uint8_t *)"n";
	CHECK_STATUS(p99_cache_incr(c, k, 1, 1, &v, NULL), P99_STATUS_NOT_FOUND);
	CHECK_OK(set_str(c, "n", "18446744073709551615", 3, 0));
	CHECK_OK(p99_cache_incr(c, k, 1, 2, &v, &cas));
	CHECK_EQ(v, 1); /* wraps at 2^64 */
	CHECK(cas != 0);
	expect_value(c, "n", "1                   "); /* shorter result padded to the old length */
	CHECK_OK(set_str(c, "n", "10", 0, 0));
	CHECK_OK(p99_cache_decr(c, k, 1, 1, &v, NULL));
	CHECK_EQ(v, 9);
	expect_value(c, "n", "9 ");
	CHECK_OK(p99_cache_decr(c, k, 1, 100, &v, NULL));
	CHECK_EQ(v, 0); /* floors at 0 */
	CHECK_OK(set_str(c, "n", "9", 0, 0));
	CHECK_OK(p99_cache_incr(c, k, 1, 1, &v, NULL));
	expect_value(c, "n", "10"); /* longer result grows the item */
	p99_cache_item it;
	CHECK_OK(p99_cache_get(c, k, 1, &it));
	CHECK_EQ(it.flags, 0);
	CHECK_OK(p99_cache_item_release(c, &it));
	CHECK_OK(set_str(c, "n", "12a", 0, 0));
	v = 777;
	CHECK_STATUS(p99_cache_incr(c, k, 1, 1, &v, NULL), P99_STATUS_NON_NUMERIC);
	CHECK_EQ(v, 777); /* output untouched on error */
	CHECK_OK(set_str(c, "n", "-1", 0, 0));
	CHECK_STATUS(p99_cache_decr(c, k, 1, 1, &v, NULL), P99_STATUS_NON_NUMERIC);
	CHECK_OK(set_str(c, "n", "", 0, 0));
	CHECK_STATUS(p99_cache_incr(c, k, 1, 1, &v, NULL), P99_STATUS_NON_NUMERIC);
	CHECK_OK(p99_cache_free(c));
}

static void test_expiry_touch_and_clock(void)
{
	p99_cache *c = new_cache(1, P99_CACHE_EVICTION_MERGE);
	uint32_t e = 0;
	CHECK_EQ(p99_cache_now(c), T0);
	CHECK_OK(p99_cache_expiry_from_exptime(c, 0, &e));
	CHECK_EQ(e, 0);
	CHECK_OK(p99_cache_expiry_from_exptime(c, 10, &e));
	CHECK_EQ(e, T0 + 10);
	CHECK_OK(p99_cache_expiry_from_exptime(c, (int64_t)T0 + 100, &e));
	CHECK_EQ(e, T0 + 100);
	CHECK_OK(p99_cache_expiry_from_exptime(c, -1, &e));
	CHECK(e != 0 && e <= T0);

	CHECK_OK(set_str(c, "t", "v", 0, T0 + 10));
	CHECK_OK(set_str(c, "gone", "v", 0, e)); /* stored already expired: never returned */
	expect_value(c, "gone", NULL);
	CHECK_OK(p99_cache_set_time(c, T0 + 9));
	expect_value(c, "t", "v");
	CHECK_OK(p99_cache_set_time(c, T0 + 10));
	expect_value(c, "t", NULL);

	/* touch changes the expiry, not the CAS. */
	uint64_t cas = 0;
	CHECK_OK(p99_cache_store(c, (const uint8_t *)"t", 1, (const uint8_t *)"v2", 2, 0, T0 + 15,
				 P99_CACHE_MODE_SET, 0, &cas));
	CHECK_OK(p99_cache_touch(c, (const uint8_t *)"t", 1, T0 + 100));
	CHECK_STATUS(p99_cache_touch(c, (const uint8_t *)"zz", 2, 0), P99_STATUS_NOT_FOUND);
	CHECK_OK(p99_cache_set_time(c, T0 + 50));
	p99_cache_item it;
	CHECK_OK(p99_cache_get_and_touch(c, (const uint8_t *)"t", 1, T0 + 60, &it));
	CHECK_EQ(it.cas, cas);
	CHECK_EQ(it.expiry, T0 + 60);
	CHECK_EQ(it.value_len, 2);
	CHECK_OK(p99_cache_item_release(c, &it));
	CHECK_STATUS(p99_cache_get_and_touch(c, (const uint8_t *)"zz", 2, 0, &it),
		     P99_STATUS_NOT_FOUND);
	CHECK_OK(p99_cache_set_time(c, T0 + 60));
	expect_value(c, "t", NULL);

	/* A system-clock cache refuses set_time. */
	p99_cache_config cfg = { .struct_size = sizeof cfg };
	p99_cache *sys = NULL;
	CHECK_OK(p99_cache_config_defaults(&cfg));
	CHECK_OK(p99_cache_new(&cfg, &sys));
	CHECK(p99_cache_now(sys) > T0);
	CHECK_STATUS(p99_cache_set_time(sys, 5), P99_STATUS_INVALID_STATE);
	CHECK_OK(p99_cache_free(sys));
	CHECK_OK(p99_cache_free(c));
}

static void test_flush_all(void)
{
	p99_cache *c = new_cache(1, P99_CACHE_EVICTION_MERGE);
	CHECK_OK(set_str(c, "a", "1", 0, 0));
	CHECK_OK(p99_cache_flush_all(c, 0));
	expect_value(c, "a", NULL);
	CHECK_OK(set_str(c, "b", "2", 0, 0));
	expect_value(c, "b", "2"); /* items set after a flush are visible */
	CHECK_OK(p99_cache_flush_all(c, 5));
	CHECK_OK(p99_cache_set_time(c, T0 + 4));
	expect_value(c, "b", "2");
	CHECK_OK(p99_cache_set_time(c, T0 + 5));
	expect_value(c, "b", NULL);
	CHECK_OK(set_str(c, "c", "3", 0, 0));
	expect_value(c, "c", "3");
	CHECK_OK(p99_cache_free(c));
}

static void test_pins_and_release(void)
{
	p99_cache *c = new_cache(1, P99_CACHE_EVICTION_FIFO);
	CHECK_OK(set_str(c, "p", "pinned value", 0, 0));
	p99_cache_item it, it2;
	CHECK_OK(p99_cache_get(c, (const uint8_t *)"p", 1, &it));
	CHECK_OK(p99_cache_get(c, (const uint8_t *)"p", 1, &it2));
	/* Replace, delete and flush: the pinned bytes stay as they were. */
	CHECK_OK(set_str(c, "p", "other value!", 0, 0));
	CHECK_OK(p99_cache_delete(c, (const uint8_t *)"p", 1));
	CHECK_OK(p99_cache_flush_all(c, 0));
	/* Fill far past the budget so every unpinned segment is evicted and reused. */
	char key[32], val[200];
	memset(val, 'x', sizeof(val) - 1);
	val[sizeof(val) - 1] = 0;
	for (int i = 0; i < 40000; i++) {
		snprintf(key, sizeof(key), "fill-%d", i);
		CHECK_OK(set_str(c, key, val, 0, 0));
	}
	CHECK(memcmp(it.value, "pinned value", 12) == 0);
	CHECK(memcmp(it2.value, "pinned value", 12) == 0);
	p99_cache_stats st = { .struct_size = sizeof(st) };
	CHECK_OK(p99_cache_get_stats(c, &st));
	CHECK(st.evictions > 0);
	CHECK_EQ(st.pinned, 2);
	CHECK_EQ(st.segments_retired, 1);
	/* The cache cannot be freed while items are pinned. */
	CHECK_STATUS(p99_cache_free(c), P99_STATUS_BUSY);
	CHECK_OK(p99_cache_item_release(c, &it));
	CHECK_STATUS(p99_cache_item_release(c, &it), P99_STATUS_INVALID_STATE);
	CHECK_OK(p99_cache_item_release(c, &it2));
	CHECK_STATUS(p99_cache_item_release(c, &it2), P99_STATUS_INVALID_STATE);
	/* An item pinned by one cache cannot be released on another. */
	p99_cache *other = new_cache(1, P99_CACHE_EVICTION_FIFO);
	CHECK_OK(set_str(c, "q", "v", 0, 0));
	CHECK_OK(p99_cache_get(c, (const uint8_t *)"q", 1, &it));
	CHECK_STATUS(p99_cache_item_release(other, &it), P99_STATUS_INVALID_ARGUMENT);
	CHECK_OK(p99_cache_item_release(c, &it));
	CHECK_OK(p99_cache_free(other));
	/* A zeroed struct was never pinned. */
	memset(&it, 0, sizeof(it));
	CHECK_STATUS(p99_cache_item_release(c, &it), P99_STATUS_INVALID_STATE);
	CHECK_OK(p99_cache_get_stats(c, &st));
	CHECK_EQ(st.pinned, 0);
	CHECK_EQ(st.segments_retired, 0);
	CHECK_OK(p99_cache_free(c));
}

/* A p99_cache_item copied by value and released twice: the second release (of either copy)
 * is refused with INVALID_STATE and leaves the pin another reader holds on the same item
 * (same segment) alone, so that reader's bytes survive eviction of everything else. */
static void test_copied_item_release(void)
{
	p99_cache *c = new_cache(1, P99_CACHE_EVICTION_FIFO);
	p99_cache_stats st = { .struct_size = sizeof(st) };
	CHECK_OK(set_str(c, "p", "pinned value", 0, 0));
	p99_cache_item it, copy, other;
	CHECK_OK(p99_cache_get(c, (const uint8_t *)"p", 1, &it));
	copy = it;
	CHECK_OK(p99_cache_item_release(c, &it));
	/* The ticket is consumed: the copy is refused while its slot is free ... */
	CHECK_STATUS(p99_cache_item_release(c, &copy), P99_STATUS_INVALID_STATE);
	/* ... and after another reader pinned the same item (reusing the slot). */
	CHECK_OK(p99_cache_get(c, (const uint8_t *)"p", 1, &other));
	CHECK_STATUS(p99_cache_item_release(c, &copy), P99_STATUS_INVALID_STATE);
	CHECK_OK(p99_cache_get_stats(c, &st));
	CHECK_EQ(st.pinned, 1);
	/* The other reader's pin still holds: its segment survives delete, flush and a fill far
	 * past the budget that evicts and reuses every unpinned segment. */
	CHECK_OK(p99_cache_delete(c, (const uint8_t *)"p", 1));
	CHECK_OK(p99_cache_flush_all(c, 0));
	char key[32], val[200];
	memset(val, 'y', sizeof(val) - 1);
	val[sizeof(val) - 1] = 0;
	for (int i = 0; i < 40000; i++) {
		snprintf(key, sizeof(key), "fill-%d", i);
		CHECK_OK(set_str(c, key, val, 0, 0));
	}
	CHECK_STATUS(p99_cache_item_release(c, &copy), P99_STATUS_INVALID_STATE);
	CHECK_EQ(other.value_len, 12);
	CHECK(memcmp(other.value, "pinned value", 12) == 0);
	CHECK(memcmp(other.key, "p", 1) == 0);
	CHECK_OK(p99_cache_get_stats(c, &st));
	CHECK(st.evictions > 0);
	CHECK_EQ(st.pinned, 1);
	CHECK_EQ(st.segments_retired, 1);
	CHECK_OK(p99_cache_item_release(c, &other));
	CHECK_STATUS(p99_cache_item_release(c, &other), P99_STATUS_INVALID_STATE);
	/* Either copy may go first: releasing the copy consumes the original's ticket too. */
	CHECK_OK(set_str(c, "q", "q value", 0, 0));
	CHECK_OK(p99_cache_get(c, (const uint8_t *)"q", 1, &it));
	copy = it;
	CHECK_OK(p99_cache_get(c, (const uint8_t *)"q", 1, &other));
	CHECK_OK(p99_cache_item_release(c, &copy));
	CHECK_STATUS(p99_cache_item_release(c, &it), P99_STATUS_INVALID_STATE);
	CHECK_OK(p99_cache_get_stats(c, &st));
	CHECK_EQ(st.pinned, 1);
	CHECK(memcmp(other.value, "q value", 7) == 0);
	CHECK_OK(p99_cache_item_release(c, &other));
	CHECK_OK(p99_cache_get_stats(c, &st));
	CHECK_EQ(st.pinned, 0);
	CHECK_EQ(st.segments_retired, 0);
	CHECK_OK(p99_cache_free(c));
}

static void test_stats(void)
{
	p99_cache *c = new_cache(1, P99_CACHE_EVICTION_MERGE);
	p99_cache_stats st;
	memset(&st, 0, sizeof(st));
	st.struct_size = 4;
	CHECK_STATUS(p99_cache_get_stats(c, &st), P99_STATUS_INVALID_ARGUMENT);
	CHECK_OK(set_str(c, "a", "12345", 0, 0));
	expect_value(c, "a", "12345");
	expect_value(c, "b", NULL);
	st.struct_size = sizeof(st);
	CHECK_OK(p99_cache_get_stats(c, &st));
	CHECK_EQ(st.struct_size, sizeof(st));
	CHECK_EQ(st.items, 1);
	CHECK_EQ(st.key_value_bytes, 6);
	CHECK_EQ(st.hits, 1);
	CHECK_EQ(st.misses, 1);
	CHECK_EQ(st.sets, 1);
	CHECK_EQ(st.shards, 1);
	CHECK_EQ(st.segments_total, 64);
	CHECK_EQ(st.segments_used, 1);
	CHECK_EQ(st.segments_free, 63);
	CHECK_EQ(st.heap_limit_bytes, 4u << 20);
	CHECK(st.total_bytes >= st.segment_bytes_allocated + st.hash_bytes);
	/* A larger struct from a newer header: the field this library does not know is zeroed,
	 * nothing past struct_size is written. */
	struct big_stats {
		p99_cache_stats s;
		uint64_t extra;
		uint64_t beyond;
	} big;
	memset(&big, 0xab, sizeof(big));
	big.s.struct_size = offsetof(struct big_stats, beyond);
	CHECK_OK(p99_cache_get_stats(c, &big.s));
	CHECK_EQ(big.s.items, 1);
	CHECK(big.extra == 0);
	CHECK(big.beyond == 0xababababababababull);
	CHECK_OK(p99_cache_free(c));
}

static void test_get_copy(void)
{
	p99_cache *c = new_cache(1, P99_CACHE_EVICTION_MERGE);
	uint64_t cas = 0;
	CHECK_OK(p99_cache_store(c, (const uint8_t *)"k", 1, (const uint8_t *)"hello", 5, 42,
				 T0 + 60, P99_CACHE_MODE_SET, 0, &cas));
	char buf[16];
	memset(buf, 0, sizeof(buf));
	p99_cache_value_info info = { .struct_size = sizeof(info) };
	CHECK_OK(
		p99_cache_get_copy(c, (const uint8_t *)"k", 1, (uint8_t *)buf, sizeof(buf), &info));
	CHECK_EQ(info.struct_size, sizeof(info));
	CHECK_EQ(info.value_len, 5);
	CHECK(memcmp(buf, "hello", 5) == 0);
	CHECK_EQ(info.flags, 42);
	CHECK(info.cas == cas);
	CHECK_EQ(info.expiry, T0 + 60);
	/* Nothing stays pinned: the cache can be freed at once (BUSY while pinned). */
	p99_cache_stats st = { .struct_size = sizeof(st) };
	CHECK_OK(p99_cache_get_stats(c, &st));
	CHECK_EQ(st.pinned, 0);
	CHECK_EQ(st.hits, 1);
	/* Too small (a NULL buffer of 0 bytes included): the size needed is reported, nothing is
	 * copied, then a pin reads it. */
	memset(buf, '#', sizeof(buf));
	memset(&info, 0, sizeof(info));
	info.struct_size = sizeof(info);
	CHECK_STATUS(p99_cache_get_copy(c, (const uint8_t *)"k", 1, (uint8_t *)buf, 4, &info),
		     P99_STATUS_BUFFER_TOO_SMALL);
	CHECK_EQ(info.value_len, 5);
	CHECK_EQ(info.flags, 42);
	CHECK(buf[0] == '#');
	info.value_len = 0;
	CHECK_STATUS(p99_cache_get_copy(c, (const uint8_t *)"k", 1, NULL, 0, &info),
		     P99_STATUS_BUFFER_TOO_SMALL);
	CHECK_EQ(info.value_len, 5);
	/* Misses, bad arguments. */
	CHECK_STATUS(p99_cache_get_copy(c, (const uint8_t *)"absent", 6, (uint8_t *)buf,
					sizeof(buf), &info),
		     P99_STATUS_NOT_FOUND);
	CHECK_STATUS(
		p99_cache_get_copy(c, (const uint8_t *)"k", 0, (uint8_t *)buf, sizeof(buf), &info),
		P99_STATUS_INVALID_ARGUMENT);
	CHECK_STATUS(p99_cache_get_copy(NULL, (const uint8_t *)"k", 1, (uint8_t *)buf, sizeof(buf),
					&info),
		     P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_cache_get_copy(c, (const uint8_t *)"k", 1, NULL, 8, &info),
		     P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(
		p99_cache_get_copy(c, (const uint8_t *)"k", 1, (uint8_t *)buf, sizeof(buf), NULL),
		P99_STATUS_NULL_PARAMETER);
	info.struct_size = 4;
	CHECK_STATUS(
		p99_cache_get_copy(c, (const uint8_t *)"k", 1, (uint8_t *)buf, sizeof(buf), &info),
		P99_STATUS_INVALID_ARGUMENT);
	/* A larger struct from a newer header: the field this library does not know is zeroed,
	 * nothing past struct_size is written. */
	struct big_info {
		p99_cache_value_info i;
		uint64_t extra;
		uint64_t beyond;
	} big;
	memset(&big, 0xab, sizeof(big));
	big.i.struct_size = offsetof(struct big_info, beyond);
	CHECK_OK(p99_cache_get_copy(c, (const uint8_t *)"k", 1, (uint8_t *)buf, sizeof(buf),
				    &big.i));
	CHECK_EQ(big.i.value_len, 5);
	CHECK(big.extra == 0);
	CHECK(big.beyond == 0xababababababababull);
	/* Expired: a miss. */
	info.struct_size = sizeof(info);
	CHECK_OK(p99_cache_set_time(c, T0 + 60));
	CHECK_STATUS(
		p99_cache_get_copy(c, (const uint8_t *)"k", 1, (uint8_t *)buf, sizeof(buf), &info),
		P99_STATUS_NOT_FOUND);
	CHECK_OK(p99_cache_free(c));
}

struct worker {
	p99_cache *c;
	int id;
};

static void *hammer(void *arg)
{
	struct worker *w = arg;
	char key[32], val[64];
	for (int i = 0; i < 20000; i++) {
		snprintf(key, sizeof(key), "key-%d", i % 500);
		int n = snprintf(val, sizeof(val), "%s:%d:%d", key, w->id, i);
		if (p99_cache_store(w->c, (const uint8_t *)key, strlen(key), (const uint8_t *)val,
				    (size_t)n, 0, 0, P99_CACHE_MODE_SET, 0, NULL) != P99_STATUS_OK)
			return (void *)1;
		p99_cache_item it;
		if (p99_cache_get(w->c, (const uint8_t *)key, strlen(key), &it) == P99_STATUS_OK) {
			/* Every value starts with its own key: no torn or misplaced value. */
			if (it.value_len < strlen(key) || memcmp(it.value, key, strlen(key)) != 0)
				return (void *)2;
			if (p99_cache_item_release(w->c, &it) != P99_STATUS_OK)
				return (void *)3;
		}
	}
	return NULL;
}

static void test_threads_share_one_handle(void)
{
	p99_cache_config cfg = { .struct_size = sizeof cfg };
	CHECK_OK(p99_cache_config_defaults(&cfg));
	cfg.heap_bytes = 8u << 20;
	cfg.segment_bytes = 64u << 10;
	cfg.item_max = 64u << 10;
	p99_cache *c = NULL;
	CHECK_OK(p99_cache_new(&cfg, &c));
	pthread_t t[4];
	struct worker w[4];
	for (int i = 0; i < 4; i++) {
		w[i] = (struct worker){ c, i };
		CHECK(pthread_create(&t[i], NULL, hammer, &w[i]) == 0);
	}
	for (int i = 0; i < 4; i++) {
		void *r;
		pthread_join(t[i], &r);
		CHECK(r == NULL);
	}
	CHECK_OK(p99_cache_free(c));
}

int main(void)
{
	test_config_and_lifecycle();
	test_null_handles();
	test_bad_keys_and_sizes();
	test_two_phase_write();
	test_modes();
	test_incr_decr();
	test_expiry_touch_and_clock();
	test_flush_all();
	test_pins_and_release();
	test_copied_item_release();
	test_stats();
	test_get_copy();
	test_threads_share_one_handle();
	return check_done("cache");
}
