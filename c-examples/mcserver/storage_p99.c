/*
 * storage_p99.c - storage.h on libp99's p99_cache (segment-structured store, Segcache
 * design). A thin adapter: the cache already has the two-phase write, pinned reads, copy-out
 * reads, memcached's exptime rules and incr/decr/flush_all semantics; this file maps names
 * and statuses.
 *
 * p99_cache's reservation and item are caller-owned structs that must not move while in use,
 * while storage.h hands out opaque pointers, so each reservation and pin lives in a small block
 * owned by the caller until commit/cancel/release. Blocks are recycled through a short
 * per-thread free list (a block freed on another thread joins that thread's list), so a warm
 * server allocates nothing per operation; a thread's list is freed when the thread exits.
 */
#include "storage.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include <p99.h>

struct storage_reservation {
	p99_cache_reservation r;
	bool key_binary; /* ms b: committed with P99_CACHE_WRITE_KEY_BINARY */
};

struct storage_pin {
	p99_cache_item item;
};

/* One recyclable block: a reservation or a pin while in use, a list link while free. */
union block {
	struct storage_reservation res;
	struct storage_pin pin;
	union block *next;
};

/* Blocks a thread keeps for reuse; more are returned to malloc. */
#define BLOCKS_KEPT 64

struct block_list {
	union block *head;
	unsigned n;
	bool registered; /* the thread-exit destructor knows this list */
};

static _Thread_local struct block_list blocks;
static pthread_key_t blocks_key;
static pthread_once_t blocks_once = PTHREAD_ONCE_INIT;
static bool blocks_key_ok;

static p99_cache *cache;
static size_t mem_limit;
static uint32_t segment_bytes;

static void free_list(struct block_list *l)
{
	while (l->head) {
		union block *b = l->head;
		l->head = b->next;
		free(b);
	}
	l->n = 0;
}

static void blocks_thread_exit(void *list)
{
	free_list(list);
}

static void blocks_key_create(void)
{
	blocks_key_ok = pthread_key_create(&blocks_key, blocks_thread_exit) == 0;
}

static union block *block_get(void)
{
	union block *b = blocks.head;
	if (b) {
		blocks.head = b->next;
		blocks.n--;
		return b;
	}
	return malloc(sizeof(*b));
}

static void block_put(union block *b)
{
	if (blocks.n >= BLOCKS_KEPT) {
		free(b);
		return;
	}
	if (!blocks.registered) {
		/* Only a thread that keeps blocks needs them freed at its exit. */
		pthread_once(&blocks_once, blocks_key_create);
		if (!blocks_key_ok || pthread_setspecific(blocks_key, &blocks) != 0) {
			free(b);
			return;
		}
		blocks.registered = true;
	}
	b->next = blocks.head;
	blocks.head = b;
	blocks.n++;
}

const char *storage_name(void)
{
	return "p99";
}

/* An item lives in one segment, and a segment is at most P99_CACHE_SEGMENT_BYTES_MAX. */
size_t storage_item_max_limit(void)
{
	return P99_CACHE_SEGMENT_BYTES_MAX;
}

int storage_setup(const struct storage_options *opts, char *err, size_t errlen)
{
	p99_cache_config cfg = { .struct_size = sizeof cfg };
	p99_cache_config_defaults(&cfg);
	cfg.heap_bytes = opts->mem_limit;
	cfg.item_max = (uint32_t)opts->item_max;
	if (opts->item_max > cfg.segment_bytes)
		cfg.segment_bytes = (uint32_t)opts->item_max; /* an item must fit a segment */
	cfg.cas = opts->cas_enabled;
	if (opts->prealloc)
		cfg.flags |= P99_CACHE_CONFIG_PREFAULT;
	if (opts->hashpower) /* as many items as memcached's table holds before it grows */
		cfg.expected_items = ((uint64_t)3 << opts->hashpower) / 2;
	mem_limit = opts->mem_limit;
	segment_bytes = cfg.segment_bytes;
	p99_status st = p99_cache_new(&cfg, &cache);
	if (st != P99_STATUS_OK) {
		snprintf(err, errlen, "p99_cache_new: %s (-m %zu MiB, -I %zu%s)",
			 p99_last_error_message(), opts->mem_limit >> 20, opts->item_max,
			 opts->prealloc ? ", -L" : "");
		return -1;
	}
	return 0;
}

void storage_teardown(void)
{
	p99_cache_free(cache);
	cache = NULL;
	free_list(&blocks); /* other threads' lists go when those threads exit */
}

/* memcached's exptime as the cache's absolute expiry: one conversion, on the cache's clock. */
static uint32_t expiry_of(int64_t exptime)
{
	uint32_t e = 0;
	if (exptime != 0 && p99_cache_expiry_from_exptime(cache, exptime, &e) != P99_STATUS_OK)
		return 1; /* cannot happen with a live cache; never store an immortal item by mistake */
	return e;
}

static int map_status(p99_status st)
{
	switch (st) {
	case P99_STATUS_OK: return STORAGE_OK;
	case P99_STATUS_NOT_FOUND: return STORAGE_NOT_FOUND;
	case P99_STATUS_EXISTS: return STORAGE_EXISTS;
	case P99_STATUS_NOT_STORED: return STORAGE_NOT_STORED;
	case P99_STATUS_TOO_LARGE: return STORAGE_TOO_LARGE;
	case P99_STATUS_OUT_OF_MEMORY: return STORAGE_NO_MEMORY;
	case P99_STATUS_NON_NUMERIC: return STORAGE_NON_NUMERIC;
	default: return STORAGE_INVALID;
	}
}

int storage_reserve(const void *key, size_t nkey, uint32_t flags, int64_t exptime, size_t vlen,
		    struct storage_reservation **out)
{
	if (!out)
		return STORAGE_INVALID;
	union block *b = block_get();
	if (!b)
		return STORAGE_NO_MEMORY;
	p99_status st =
		p99_cache_reserve(cache, key, nkey, vlen, flags, expiry_of(exptime), &b->res.r);
	if (st != P99_STATUS_OK) {
		block_put(b);
		return map_status(st);
	}
	b->res.key_binary = false;
	*out = &b->res;
	return STORAGE_OK;
}

void storage_set_key_binary(struct storage_reservation *res)
{
	if (res)
		res->key_binary = true;
}

int storage_fill(struct storage_reservation *res, const void *data, size_t len)
{
	if (!res)
		return STORAGE_INVALID;
	return p99_cache_reservation_write(&res->r, data, len) == P99_STATUS_OK ? STORAGE_OK
										: STORAGE_INVALID;
}

void storage_cancel(struct storage_reservation *res)
{
	if (!res)
		return;
	p99_cache_cancel(&res->r);
	block_put((union block *)res);
}

/* storage.h's write ops as the p99 cache's modes (STORAGE_CAS_STALE is a CAS with a write
 * option, see storage_commit). */
static const uint32_t modes[] = {
	[STORAGE_SET] = P99_CACHE_MODE_SET,         [STORAGE_ADD] = P99_CACHE_MODE_ADD,
	[STORAGE_REPLACE] = P99_CACHE_MODE_REPLACE, [STORAGE_APPEND] = P99_CACHE_MODE_APPEND,
	[STORAGE_PREPEND] = P99_CACHE_MODE_PREPEND, [STORAGE_CAS] = P99_CACHE_MODE_CAS,
	[STORAGE_CAS_STALE] = P99_CACHE_MODE_CAS,
};

int storage_commit(struct storage_reservation *res, enum storage_op op, uint64_t cas,
		   uint64_t *cas_out)
{
	if (!res)
		return STORAGE_INVALID;
	if ((unsigned)op >= sizeof(modes) / sizeof(modes[0])) {
		storage_cancel(res);
		return STORAGE_INVALID;
	}
	uint64_t new_cas = 0;
	p99_status st;
	if (!res->key_binary && op != STORAGE_CAS_STALE && cas == 0) {
		st = p99_cache_commit(cache, &res->r, modes[op], cas, &new_cas);
	} else {
		p99_cache_write_options o = { .struct_size = sizeof(o) };
		o.flags = (res->key_binary ? P99_CACHE_WRITE_KEY_BINARY : 0) |
			  (op == STORAGE_CAS_STALE ? P99_CACHE_WRITE_STALE_IF_OLDER : 0) |
			  P99_CACHE_WRITE_APPEND_CHECKS_CAS;
		st = p99_cache_commit_with(cache, &res->r, modes[op], cas, &o, &new_cas);
	}
	if (res->r.state) /* not consumed (should not happen): never leak the buffer */
		p99_cache_cancel(&res->r);
	block_put((union block *)res);
	if (st == P99_STATUS_OK) {
		if (cas_out)
			*cas_out = new_cas;
		return STORAGE_STORED;
	}
	return map_status(st);
}

int storage_store(const void *key, size_t nkey, uint32_t flags, int64_t exptime, const void *value,
		  size_t vlen, enum storage_op op, uint64_t cas, uint64_t *cas_out)
{
	if ((unsigned)op >= sizeof(modes) / sizeof(modes[0]) || op == STORAGE_CAS_STALE ||
	    (cas != 0 && (op == STORAGE_APPEND || op == STORAGE_PREPEND))) {
		/* STORAGE_CAS_STALE and a CAS-checked append/prepend need the commit's write
		 * options, which the one-call store does not take: write in two phases. */
		struct storage_reservation *res = NULL;
		int rc = storage_reserve(key, nkey, flags, exptime, vlen, &res);
		if (rc != STORAGE_OK)
			return rc;
		if (storage_fill(res, value, vlen) != STORAGE_OK) {
			storage_cancel(res);
			return STORAGE_INVALID;
		}
		return storage_commit(res, op, cas, cas_out);
	}
	uint64_t new_cas = 0;
	p99_status st = p99_cache_store(cache, key, nkey, value, vlen, flags, expiry_of(exptime),
					modes[op], cas, &new_cas);
	if (st != P99_STATUS_OK)
		return map_status(st);
	if (cas_out)
		*cas_out = new_cas;
	return STORAGE_STORED;
}

int64_t storage_ttl_left(uint32_t expires)
{
	return expires ? (int64_t)expires - (int64_t)p99_cache_now(cache) : -1;
}

static int pin_view(p99_status st, struct storage_pin *pin, struct storage_view *out)
{
	if (st != P99_STATUS_OK) {
		block_put((union block *)pin);
		return st == P99_STATUS_NOT_FOUND ? STORAGE_NOT_FOUND : map_status(st);
	}
	out->value = pin->item.value;
	out->len = pin->item.value_len;
	out->flags = pin->item.flags;
	out->cas = pin->item.cas;
	out->expires = pin->item.expiry;
	out->pin = pin;
	return STORAGE_OK;
}

int storage_get(const void *key, size_t nkey, struct storage_view *out)
{
	if (!out)
		return STORAGE_INVALID;
	union block *b = block_get();
	if (!b)
		return STORAGE_NO_MEMORY;
	return pin_view(p99_cache_get(cache, key, nkey, &b->pin.item), &b->pin, out);
}

int storage_get_copy(const void *key, size_t nkey, void *buf, size_t cap, struct storage_view *out)
{
	if (!out)
		return STORAGE_INVALID;
	p99_cache_value_info info = { .struct_size = sizeof(info) };
	p99_status st = p99_cache_get_copy(cache, key, nkey, buf, cap, &info);
	if (st == P99_STATUS_BUFFER_TOO_SMALL)
		return storage_get(key, nkey, out); /* a large value: pin it instead */
	if (st != P99_STATUS_OK)
		return st == P99_STATUS_NOT_FOUND ? STORAGE_NOT_FOUND : map_status(st);
	out->value = buf;
	out->len = info.value_len;
	out->flags = info.flags;
	out->cas = info.cas;
	out->expires = info.expiry;
	out->pin = NULL;
	return STORAGE_OK;
}

int storage_gat(const void *key, size_t nkey, int64_t exptime, struct storage_view *out)
{
	if (!out)
		return STORAGE_INVALID;
	union block *b = block_get();
	if (!b)
		return STORAGE_NO_MEMORY;
	return pin_view(p99_cache_get_and_touch(cache, key, nkey, expiry_of(exptime), &b->pin.item),
			&b->pin, out);
}

void storage_release(struct storage_pin *pin)
{
	if (!pin)
		return;
	p99_cache_item_release(cache, &pin->item);
	block_put((union block *)pin);
}

int storage_mget(const void *key, size_t nkey, const struct storage_mget_args *a,
		 struct storage_view *out, struct storage_meta *meta)
{
	if (!a || !out || !meta)
		return STORAGE_INVALID;
	p99_cache_meta_get_args args = { .struct_size = sizeof(args) };
	args.flags = (a->no_bump ? P99_CACHE_MG_NO_BUMP : 0) | (a->touch ? P99_CACHE_MG_TOUCH : 0) |
		     (a->vivify ? P99_CACHE_MG_VIVIFY : 0) |
		     (a->recache ? P99_CACHE_MG_RECACHE : 0) |
		     (a->touch_before_recache ? P99_CACHE_MG_TOUCH_BEFORE_RECACHE : 0) |
		     (a->no_win ? P99_CACHE_MG_NO_WIN : 0);
	args.touch_expiry = a->touch ? expiry_of(a->exptime) : 0;
	args.vivify_expiry = a->vivify ? expiry_of(a->vivify_exptime) : 0;
	/* R0 never wins (memcached compares with time 0) */
	args.recache_expiry = a->recache ? expiry_of(a->recache_exptime) : 0;
	union block *b = block_get();
	if (!b)
		return STORAGE_NO_MEMORY;
	p99_cache_meta_info info = { .struct_size = sizeof(info) };
	p99_status st = p99_cache_meta_get(cache, key, nkey, &args, &b->pin.item, &info);
	int rc = pin_view(st, &b->pin, out);
	if (rc != STORAGE_OK)
		return rc;
	*meta = (struct storage_meta){
		.fetched = info.flags & P99_CACHE_META_FETCHED,
		.stale = info.flags & P99_CACHE_META_STALE,
		.win_token_sent = info.flags & P99_CACHE_META_WIN_TOKEN_SENT,
		.won = info.flags & P99_CACHE_META_WON,
		.created = info.flags & P99_CACHE_META_CREATED,
		.key_binary = info.flags & P99_CACHE_META_KEY_BINARY,
		.last_access = info.last_access,
		.expires_before = info.expiry_before,
		.cls = 0,
		.size = info.item_bytes,
	};
	return STORAGE_OK;
}

int storage_mdelete(const void *key, size_t nkey, bool check_cas, uint64_t cas, bool mark_stale,
		    bool set_exptime, int64_t exptime)
{
	p99_cache_meta_delete_args args = { .struct_size = sizeof(args) };
	args.flags = (check_cas ? P99_CACHE_MD_CHECK_CAS : 0) |
		     (mark_stale ? P99_CACHE_MD_MARK_STALE : 0) |
		     (set_exptime ? P99_CACHE_MD_SET_EXPIRY : 0);
	args.cas = cas;
	args.expiry = set_exptime ? expiry_of(exptime) : 0;
	p99_status st = p99_cache_meta_delete(cache, key, nkey, &args);
	if (st == P99_STATUS_OK)
		return STORAGE_DELETED;
	return st == P99_STATUS_EXISTS ? STORAGE_EXISTS : map_status(st);
}

int storage_delete(const void *key, size_t nkey)
{
	p99_status st = p99_cache_delete(cache, key, nkey);
	return st == P99_STATUS_OK ? STORAGE_DELETED : STORAGE_NOT_FOUND;
}

int storage_touch(const void *key, size_t nkey, int64_t exptime)
{
	p99_status st = p99_cache_touch(cache, key, nkey, expiry_of(exptime));
	return st == P99_STATUS_OK ? STORAGE_OK : STORAGE_NOT_FOUND;
}

int storage_incr(const void *key, size_t nkey, bool incr, uint64_t delta, uint64_t expect_cas,
		 uint64_t *result, uint64_t *cas_out)
{
	uint64_t v;
	p99_status st = p99_cache_delta(cache, key, nkey, incr, delta, expect_cas, &v, cas_out);
	if (st != P99_STATUS_OK)
		return map_status(st);
	*result = v;
	return STORAGE_OK;
}

int storage_flush(uint32_t delay)
{
	return map_status(p99_cache_flush_all(cache, delay));
}

static void stat_u64(storage_stat_fn fn, void *ctx, const char *name, uint64_t v)
{
	char buf[32];
	snprintf(buf, sizeof(buf), "%" PRIu64, v);
	fn(ctx, name, buf);
}

/*
 * The p99 store has no slab classes: its items are reported as one class, 1, whose "pages"
 * are the store's segments (see README).
 */
void storage_stats_items(storage_stat_fn fn, void *ctx)
{
	p99_cache_stats s = { .struct_size = sizeof(s) };
	if (p99_cache_get_stats(cache, &s) != P99_STATUS_OK || s.items == 0)
		return;
	stat_u64(fn, ctx, "items:1:number", s.items);
	stat_u64(fn, ctx, "items:1:number_hot", 0);
	stat_u64(fn, ctx, "items:1:number_warm", 0);
	stat_u64(fn, ctx, "items:1:number_cold", s.items);
	stat_u64(fn, ctx, "items:1:mem_requested", s.item_bytes);
	stat_u64(fn, ctx, "items:1:evicted", s.evicted_items);
	stat_u64(fn, ctx, "items:1:reclaimed", s.expirations);
}

void storage_stats_slabs(storage_stat_fn fn, void *ctx)
{
	p99_cache_stats s = { .struct_size = sizeof(s) };
	if (p99_cache_get_stats(cache, &s) != P99_STATUS_OK)
		return;
	uint64_t allocated = segment_bytes ? s.segment_bytes_allocated / segment_bytes : 0;
	if (allocated > 0) {
		stat_u64(fn, ctx, "1:chunk_size", segment_bytes);
		stat_u64(fn, ctx, "1:chunks_per_page", 1);
		stat_u64(fn, ctx, "1:total_pages", allocated);
		stat_u64(fn, ctx, "1:total_chunks", allocated);
		stat_u64(fn, ctx, "1:used_chunks", s.segments_used);
		stat_u64(fn, ctx, "1:free_chunks", allocated - s.segments_used);
		stat_u64(fn, ctx, "1:free_chunks_end", s.segments_total - allocated);
	}
	stat_u64(fn, ctx, "active_slabs", allocated > 0 ? 1 : 0);
	stat_u64(fn, ctx, "total_malloced", s.segment_bytes_allocated);
}

void storage_stats(storage_stat_fn fn, void *ctx)
{
	p99_cache_stats s = { .struct_size = sizeof(s) };
	if (p99_cache_get_stats(cache, &s) != P99_STATUS_OK)
		return;
	stat_u64(fn, ctx, "curr_items", s.items);
	stat_u64(fn, ctx, "total_items", s.sets);
	stat_u64(fn, ctx, "bytes", s.item_bytes);
	stat_u64(fn, ctx, "evictions", s.evicted_items);
	stat_u64(fn, ctx, "reclaimed", s.expirations);
	stat_u64(fn, ctx, "limit_maxbytes", mem_limit);
	stat_u64(fn, ctx, "p99_shards", s.shards);
	stat_u64(fn, ctx, "p99_key_value_bytes", s.key_value_bytes);
	stat_u64(fn, ctx, "p99_total_bytes", s.total_bytes);
	stat_u64(fn, ctx, "p99_segment_bytes_allocated", s.segment_bytes_allocated);
	stat_u64(fn, ctx, "p99_hash_bytes", s.hash_bytes);
	stat_u64(fn, ctx, "p99_segments_total", s.segments_total);
	stat_u64(fn, ctx, "p99_segments_used", s.segments_used);
	stat_u64(fn, ctx, "p99_segments_free", s.segments_free);
	stat_u64(fn, ctx, "p99_segments_retired", s.segments_retired);
	stat_u64(fn, ctx, "p99_segment_evictions", s.evictions);
	stat_u64(fn, ctx, "p99_merged_items", s.merged_items);
	stat_u64(fn, ctx, "p99_expired_segments", s.expired_segments);
	stat_u64(fn, ctx, "p99_flushes", s.flushes);
	stat_u64(fn, ctx, "p99_pinned", s.pinned);
}
