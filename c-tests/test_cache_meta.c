/*
 * C tests of p99_cache's meta-protocol calls: p99_cache_meta_get, p99_cache_meta_delete,
 * p99_cache_commit_with and p99_cache_delta (memcached's mg h l N R W X Z, md C I, ms b I E,
 * ma C), their struct_size and flag checks, and NULL arguments.
 */
#include <stdbool.h>
#include <string.h>

#include "check.h"

#define T0 1700000000u

static p99_cache *new_cache(bool cas)
{
	p99_cache_config cfg = { .struct_size = sizeof cfg };
	CHECK_OK(p99_cache_config_defaults(&cfg));
	cfg.heap_bytes = 4u << 20;
	cfg.segment_bytes = 64u << 10;
	cfg.item_max = 64u << 10;
	cfg.cas = cas;
	cfg.shards = 1;
	cfg.manual_clock = true;
	cfg.manual_clock_start = T0;
	p99_cache *c = NULL;
	CHECK_OK(p99_cache_new(&cfg, &c));
	CHECK(c != NULL);
	return c;
}

static const uint8_t *k(const char *s)
{
	return (const uint8_t *)s;
}

static uint64_t set_str(p99_cache *c, const char *key, const char *v, uint32_t expiry)
{
	uint64_t cas = 0;
	CHECK_OK(p99_cache_store(c, k(key), strlen(key), k(v), strlen(v), 0, expiry,
				 P99_CACHE_MODE_SET, 0, &cas));
	return cas;
}

/* One meta get: the status, and on OK the info (the item released). */
static uint32_t mg(p99_cache *c, const char *key, uint32_t flags, uint32_t touch, uint32_t vivify,
		   uint32_t recache, p99_cache_meta_info *info)
{
	p99_cache_meta_get_args a = { .struct_size = sizeof a,
				      .flags = flags,
				      .touch_expiry = touch,
				      .vivify_expiry = vivify,
				      .recache_expiry = recache };
	p99_cache_item it;
	*info = (p99_cache_meta_info){ .struct_size = sizeof *info };
	uint32_t st = p99_cache_meta_get(c, k(key), strlen(key), &a, &it, info);
	if (st == P99_STATUS_OK)
		CHECK_OK(p99_cache_item_release(c, &it));
	return st;
}

static void test_fetched_last_access_and_win_tokens(void)
{
	p99_cache *c = new_cache(true);
	p99_cache_meta_info info;
	set_str(c, "k", "v", T0 + 100);
	CHECK_OK(mg(c, "k", P99_CACHE_MG_NO_BUMP, 0, 0, 0, &info));
	CHECK_EQ(info.flags & P99_CACHE_META_FETCHED, 0);
	CHECK_OK(mg(c, "k", 0, 0, 0, 0, &info));
	CHECK_EQ(info.flags & P99_CACHE_META_FETCHED, 0); /* the state before this read */
	CHECK_OK(p99_cache_set_time(c, T0 + 4));
	CHECK_OK(mg(c, "k", 0, 0, 0, 0, &info));
	CHECK_EQ(info.flags & P99_CACHE_META_FETCHED, P99_CACHE_META_FETCHED);
	CHECK_EQ(info.last_access, 4);
	CHECK_EQ(info.expiry_before, T0 + 100);
	/* R: wins once when the item expires sooner */
	CHECK_OK(mg(c, "k", P99_CACHE_MG_RECACHE, 0, 0, T0 + 50, &info));
	CHECK_EQ(info.flags & P99_CACHE_META_WON, 0);
	CHECK_OK(mg(c, "k", P99_CACHE_MG_RECACHE, 0, 0, T0 + 500, &info));
	CHECK_EQ(info.flags & P99_CACHE_META_WON, P99_CACHE_META_WON);
	CHECK_OK(mg(c, "k", P99_CACHE_MG_RECACHE, 0, 0, T0 + 500, &info));
	CHECK_EQ(info.flags & (P99_CACHE_META_WON | P99_CACHE_META_WIN_TOKEN_SENT),
		 P99_CACHE_META_WIN_TOKEN_SENT);
	/* N: a miss creates an empty item and wins its token */
	CHECK_STATUS(mg(c, "n", 0, 0, 0, 0, &info), P99_STATUS_NOT_FOUND);
	p99_cache_meta_get_args a = { .struct_size = sizeof a,
				      .flags = P99_CACHE_MG_VIVIFY | P99_CACHE_MG_TOUCH,
				      .touch_expiry = T0 + 9,
				      .vivify_expiry = T0 + 30 };
	p99_cache_item it;
	info = (p99_cache_meta_info){ .struct_size = sizeof info };
	CHECK_OK(p99_cache_meta_get(c, k("n"), 1, &a, &it, &info));
	CHECK_EQ(it.value_len, 0);
	CHECK_EQ(it.expiry, T0 + 30);
	CHECK_EQ(info.flags, P99_CACHE_META_CREATED | P99_CACHE_META_WON);
	CHECK_OK(p99_cache_item_release(c, &it));
	/* a too small or too large info is refused; a NULL argument is named */
	p99_cache_meta_info small = { .struct_size = 4 };
	CHECK_STATUS(p99_cache_meta_get(c, k("n"), 1, &a, &it, &small),
		     P99_STATUS_INVALID_ARGUMENT);
	CHECK_STATUS(p99_cache_meta_get(c, k("n"), 1, NULL, &it, &info), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_cache_meta_get(c, k("n"), 1, &a, NULL, &info), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_cache_meta_get(NULL, k("n"), 1, &a, &it, &info),
		     P99_STATUS_NULL_PARAMETER);
	a.flags = 1u << 20;
	CHECK_STATUS(p99_cache_meta_get(c, k("n"), 1, &a, &it, &info), P99_STATUS_INVALID_ARGUMENT);
	CHECK_OK(p99_cache_free(c));
}

static void test_meta_delete(void)
{
	p99_cache *c = new_cache(true);
	p99_cache_meta_info info;
	uint64_t cas = set_str(c, "k", "v", 0);
	p99_cache_meta_delete_args d = { .struct_size = sizeof d,
					 .flags = P99_CACHE_MD_CHECK_CAS,
					 .cas = cas + 1 };
	CHECK_STATUS(p99_cache_meta_delete(c, k("k"), 1, &d), P99_STATUS_EXISTS);
	d.flags = P99_CACHE_MD_MARK_STALE | P99_CACHE_MD_SET_EXPIRY;
	d.expiry = T0 + 30;
	CHECK_OK(p99_cache_meta_delete(c, k("k"), 1, &d));
	p99_cache_item it;
	CHECK_OK(p99_cache_get(c, k("k"), 1, &it));
	CHECK(it.cas != cas); /* marking gives a new cas */
	CHECK_EQ(it.expiry, T0 + 30);
	CHECK_OK(p99_cache_item_release(c, &it));
	CHECK_OK(mg(c, "k", 0, 0, 0, 0, &info));
	CHECK_EQ(info.flags & (P99_CACHE_META_STALE | P99_CACHE_META_WON),
		 P99_CACHE_META_STALE | P99_CACHE_META_WON);
	d.flags = 0;
	CHECK_OK(p99_cache_meta_delete(c, k("k"), 1, &d));
	CHECK_STATUS(p99_cache_meta_delete(c, k("k"), 1, &d), P99_STATUS_NOT_FOUND);
	CHECK_STATUS(p99_cache_meta_delete(c, k("k"), 1, NULL), P99_STATUS_NULL_PARAMETER);
	d.flags = 8;
	CHECK_STATUS(p99_cache_meta_delete(c, k("k"), 1, &d), P99_STATUS_INVALID_ARGUMENT);
	CHECK_OK(p99_cache_free(c));
}

static void test_commit_with_and_delta(void)
{
	p99_cache *c = new_cache(true);
	p99_cache_meta_info info;
	uint64_t old = set_str(c, "k", "a", T0 + 100);
	uint64_t cur = set_str(c, "k", "b", T0 + 100);
	CHECK(cur > old);
	p99_cache_write_options o = { .struct_size = sizeof o,
				      .flags = P99_CACHE_WRITE_STALE_IF_OLDER };
	p99_cache_reservation r;
	CHECK_OK(p99_cache_reserve(c, k("k"), 1, 1, 0, 0, &r));
	CHECK_OK(p99_cache_reservation_write(&r, k("c"), 1));
	uint64_t cas_out = 0;
	CHECK_OK(p99_cache_commit_with(c, &r, P99_CACHE_MODE_CAS, old, &o, &cas_out));
	CHECK(cas_out != 0);
	CHECK(r.state == NULL); /* consumed */
	CHECK_OK(mg(c, "k", 0, 0, 0, 0, &info));
	CHECK_EQ(info.flags & P99_CACHE_META_STALE, P99_CACHE_META_STALE);
	CHECK_EQ(info.expiry_before, T0 + 100);
	/* explicit cas and the base64-key mark */
	o.flags = P99_CACHE_WRITE_KEY_BINARY;
	o.new_cas = 4242;
	CHECK_OK(p99_cache_reserve(c, k("e"), 1, 1, 0, 0, &r));
	CHECK_OK(p99_cache_reservation_write(&r, k("x"), 1));
	CHECK_OK(p99_cache_commit_with(c, &r, P99_CACHE_MODE_SET, 0, &o, &cas_out));
	CHECK_EQ(cas_out, 4242);
	CHECK_OK(mg(c, "e", 0, 0, 0, 0, &info));
	CHECK_EQ(info.flags & P99_CACHE_META_KEY_BINARY, P99_CACHE_META_KEY_BINARY);
	/* CAS-checked append */
	o = (p99_cache_write_options){ .struct_size = sizeof o,
				       .flags = P99_CACHE_WRITE_APPEND_CHECKS_CAS };
	CHECK_OK(p99_cache_reserve(c, k("e"), 1, 1, 0, 0, &r));
	CHECK_OK(p99_cache_reservation_write(&r, k("y"), 1));
	CHECK_STATUS(p99_cache_commit_with(c, &r, P99_CACHE_MODE_APPEND, 1, &o, NULL),
		     P99_STATUS_EXISTS);
	CHECK(r.state == NULL);
	/* bad options: NULL consumes nothing; unknown bits consume the reservation */
	CHECK_OK(p99_cache_reserve(c, k("e"), 1, 1, 0, 0, &r));
	CHECK_OK(p99_cache_reservation_write(&r, k("y"), 1));
	CHECK_STATUS(p99_cache_commit_with(c, &r, P99_CACHE_MODE_SET, 0, NULL, NULL),
		     P99_STATUS_NULL_PARAMETER);
	CHECK(r.state != NULL);
	o.flags = 1u << 31;
	CHECK_STATUS(p99_cache_commit_with(c, &r, P99_CACHE_MODE_SET, 0, &o, NULL),
		     P99_STATUS_INVALID_ARGUMENT);
	CHECK(r.state == NULL);
	/* delta with an expected cas */
	uint64_t ncas = set_str(c, "n", "5", 0), v = 0, cas2 = 0;
	CHECK_STATUS(p99_cache_delta(c, k("n"), 1, true, 1, ncas + 1, &v, NULL), P99_STATUS_EXISTS);
	CHECK_OK(p99_cache_delta(c, k("n"), 1, true, 1, ncas, &v, &cas2));
	CHECK_EQ(v, 6);
	CHECK_OK(p99_cache_delta(c, k("n"), 1, false, 4, 0, &v, NULL));
	CHECK_EQ(v, 2);
	CHECK_STATUS(p99_cache_delta(c, k("n"), 1, true, 1, 0, NULL, NULL),
		     P99_STATUS_NULL_PARAMETER);
	CHECK_OK(p99_cache_free(c));
}

int main(void)
{
	test_fetched_last_access_and_win_tokens();
	test_meta_delete();
	test_commit_with_and_delta();
	return check_done("cache_meta");
}
