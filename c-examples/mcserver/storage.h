/*
 * storage.h - the item store boundary of mcserver.
 *
 * The protocol code (proto.c) talks to the item store only through this header. Two
 * implementations exist and one is chosen at build time:
 *
 *   storage_slab.c  a Twemcache-style C store: slab classes, per-class LRU, refcounted items
 *   storage_p99.c   a thin adapter onto libp99's p99_cache (segment-structured store)
 *
 * The call pattern follows Twemcache/Pelikan so that no value is copied twice and nothing
 * dangles:
 *
 *   write:  storage_reserve()  -> storage_fill() once or more, as the value arrives
 *                              -> storage_commit(op) or storage_cancel();
 *           or storage_store(op) when the whole value is already in the caller's buffer
 *           (one call, one copy, the store's lock taken once)
 *   read:   storage_get() / storage_gat()  -> the value stays pinned (valid, unchanged) until
 *           storage_release(), so it can be handed to the socket by reference;
 *           or storage_get_copy() -> a value that fits the caller's buffer is copied there
 *           and nothing stays pinned (cheaper for a value copied into a reply anyway).
 *
 * Time: expiry is passed as memcached's exptime, unconverted; the store converts it once,
 * on its own clock (whole seconds), with memcached's rules:
 *   exptime == 0              never expires
 *   0 < exptime <= 30 days    expires exptime seconds from now
 *   exptime > 30 days         an absolute unix time (already past: already expired)
 *   exptime < 0               already expired: the operation succeeds, the item is never
 *                             seen again.
 *
 * Memory: no call allocates per operation once warm (reservations and pins are recycled).
 *
 * Threading: every function is thread-safe and may be called from any I/O worker at once.
 * A reservation or a pin belongs to the caller until it is committed/cancelled/released; it
 * may be finished on another thread than the one that created it.
 */
#ifndef MCSERVER_STORAGE_H
#define MCSERVER_STORAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest key the protocol accepts (memcached's KEY_MAX_LENGTH). */
#define STORAGE_KEY_MAX 250

/* Outcome of a store call. Each function lists which of these it returns. */
enum storage_result {
	STORAGE_OK = 0, /* done (reserve, fill, touch, incr/decr, flush) */
	STORAGE_STORED, /* commit: the item is now visible */
	STORAGE_NOT_STORED, /* commit: add on existing key; replace/append/prepend on missing */
	STORAGE_EXISTS, /* commit CAS: the item changed since it was read (or cas 0) */
	STORAGE_NOT_FOUND, /* no such (live) item */
	STORAGE_DELETED, /* delete: the item was removed */
	STORAGE_TOO_LARGE, /* reserve/commit: the item can never fit (over item_max) */
	STORAGE_NO_MEMORY, /* reserve/commit/incr: no room even after eviction */
	STORAGE_NON_NUMERIC, /* incr/decr: the value is not an unsigned 64-bit decimal */
	STORAGE_INVALID, /* a bad argument (NULL, key too long, fill past the length) */
};

/* What storage_commit does with the reserved item. */
enum storage_op {
	STORAGE_SET, /* store unconditionally */
	STORAGE_ADD, /* store only if the key is missing */
	STORAGE_REPLACE, /* store only if the key exists */
	STORAGE_APPEND, /* add the reserved bytes after the existing value (flags/ttl kept) */
	STORAGE_PREPEND, /* add the reserved bytes before the existing value (flags/ttl kept) */
	STORAGE_CAS, /* store only if the existing item's cas equals the given one */
	STORAGE_CAS_STALE, /* STORAGE_CAS, and when the given cas is older (smaller, nonzero) than
			    * the item's, store anyway marked stale, keeping the item's exptime
			    * and win-token mark (memcached's ms I, "invalidate") */
};

/* Settings given once to storage_setup(). */
struct storage_options {
	size_t mem_limit; /* bytes the store may use for items (memcached -m), > 0 */
	size_t item_max; /* largest item in bytes, header included (memcached -I), > 0 */
	bool cas_enabled; /* false with -C: every cas reads as 0 and CAS commits give EXISTS */
	double growth; /* slab growth factor (slab store only; 0 = default 1.25) */
	/* memcached -o hashpower=N (12..32): size the hash table up front for the items 2^N
	 * buckets hold before memcached grows them (1.5 x 2^N); 0 = the store's default (slab:
	 * 2^16 buckets, grown incrementally; p99: sized for a heap full of 128-byte items). */
	unsigned hashpower;
	/* memcached -L: back the whole mem_limit with memory (huge pages where the kernel gives
	 * them) at setup, so no write later waits for a page fault; setup takes longer, the
	 * process holds mem_limit from the start, and it fails if the memory is not there. */
	bool prealloc;
};

/* A write in progress (opaque). */
struct storage_reservation;

/* A pinned item being read (opaque). */
struct storage_pin;

/* A read result. value/len stay valid and unchanged until storage_release(pin). */
struct storage_view {
	const void *value;
	size_t len;
	uint32_t flags;
	uint64_t cas; /* 0 when CAS is disabled */
	uint32_t expires; /* when it expires on the store's clock, 0 = never: see
				    * storage_ttl_left (kept raw so a read costs no clock call) */
	struct storage_pin *pin;
};

/*
 * Per-item state of memcached's meta commands (mg h l X W Z, me), as storage_mget found it:
 * the state before that read, and what the read did.
 */
struct storage_meta {
	bool fetched; /* read since it was written */
	bool stale; /* marked stale (md I, ms I) */
	bool win_token_sent; /* a win token (W) had been handed out */
	bool won; /* this read won the token: the caller should refresh the item */
	bool created; /* this read created the item (vivify) */
	bool key_binary; /* written with a base64 key (ms b) */
	uint32_t last_access; /* seconds since last access (each store's notion: see README) */
	uint32_t expires_before; /* the item's expiry before this read (as storage_view.expires) */
	unsigned cls; /* slab class holding the item (0: the store has no classes) */
	size_t size; /* bytes the item takes in the store */
};

/* What storage_mget does besides reading. exptimes are memcached's, as for storage_gat. */
struct storage_mget_args {
	bool no_bump; /* u: the read is not counted (no fetched mark, no LRU bump) */
	bool touch; /* T: set exptime */
	bool vivify; /* N: on a miss create an empty item (flags 0) expiring at vivify_exptime */
	bool recache; /* R: win the token if the item expires sooner than recache_exptime */
	bool touch_before_recache; /* R compares the expiry T sets (T came first) */
	bool no_win; /* hand out no win token (the caller will not report it) */
	int64_t exptime;
	int64_t vivify_exptime;
	int64_t recache_exptime;
};

/* Called by storage_stats once per figure; name and value are borrowed for the call. */
typedef void (*storage_stat_fn)(void *ctx, const char *name, const char *value);

/* Creates the (single, process-wide) store. Returns 0, or -1 with a message in err. */
int storage_setup(const struct storage_options *opts, char *err, size_t errlen);

/* Frees the store. Every reservation and pin must have been finished before. */
void storage_teardown(void);

/* Short name of the implementation, e.g. "slab" or "p99". */
const char *storage_name(void);

/* Largest item_max (memcached -I) this implementation accepts. */
size_t storage_item_max_limit(void);

/*
 * Phase 1 of a write: reserves room for an item of value length vlen. The key is copied.
 * Returns STORAGE_OK with *out set, STORAGE_TOO_LARGE (would exceed item_max),
 * STORAGE_NO_MEMORY or STORAGE_INVALID. Nothing becomes visible until commit.
 */
int storage_reserve(const void *key, size_t nkey, uint32_t flags, int64_t exptime, size_t vlen,
		    struct storage_reservation **out);

/*
 * Copies the next len bytes of the value into the reservation (pieces are appended in order).
 * Returns STORAGE_OK, or STORAGE_INVALID when more than vlen bytes in total would be written.
 */
int storage_fill(struct storage_reservation *r, const void *data, size_t len);

/*
 * Phase 2: makes the reserved item visible according to op; the reservation is consumed
 * whatever the result. The value must have been filled completely. cas is compared for
 * STORAGE_CAS and STORAGE_CAS_STALE, and for STORAGE_APPEND/PREPEND when it is not 0 (memcached's
 * ms MA C: a mismatch gives STORAGE_EXISTS). On STORAGE_STORED, *cas_out (if not NULL) gets the
 * item's new cas.
 * Returns STORAGE_STORED, STORAGE_NOT_STORED, STORAGE_EXISTS, STORAGE_NOT_FOUND (CAS on a
 * missing key), STORAGE_TOO_LARGE / STORAGE_NO_MEMORY (append/prepend result does not fit).
 */
int storage_commit(struct storage_reservation *r, enum storage_op op, uint64_t cas,
		   uint64_t *cas_out);

/*
 * A whole write in one call, for a value already complete in the caller's buffer (value and
 * key borrowed until return): storage_reserve + storage_fill(value) + storage_commit(op, cas)
 * with one copy of the value. Returns what those would: STORAGE_TOO_LARGE, STORAGE_NO_MEMORY
 * or STORAGE_INVALID (where storage_reserve would fail, or a commit could not fit), else
 * STORAGE_STORED (with *cas_out as storage_commit), STORAGE_NOT_STORED, STORAGE_EXISTS or
 * STORAGE_NOT_FOUND.
 */
int storage_store(const void *key, size_t nkey, uint32_t flags, int64_t exptime, const void *value,
		  size_t vlen, enum storage_op op, uint64_t cas, uint64_t *cas_out);

/* Marks the reserved item as written with a base64 key (ms b): storage_meta.key_binary. */
void storage_set_key_binary(struct storage_reservation *r);

/* Abandons a reservation (consumed). Nothing changes in the store. */
void storage_cancel(struct storage_reservation *r);

/* Looks up a live item and pins it. Returns STORAGE_OK (view filled) or STORAGE_NOT_FOUND. */
int storage_get(const void *key, size_t nkey, struct storage_view *out);

/*
 * Looks up a live item and copies its value into buf (cap bytes), pinning nothing: then
 * out->value == buf and out->pin == NULL (storage_release(NULL) is a no-op). A value longer
 * than cap is pinned instead, exactly as by storage_get (out->pin set; release it). Returns
 * STORAGE_OK or STORAGE_NOT_FOUND.
 */
int storage_get_copy(const void *key, size_t nkey, void *buf, size_t cap, struct storage_view *out);

/* Like storage_get, and sets the item's exptime (cas unchanged). Returns OK or NOT_FOUND. */
int storage_gat(const void *key, size_t nkey, int64_t exptime, struct storage_view *out);

/*
 * memcached's mg with its per-item state, atomically: looks up the item (creating an empty one
 * on a miss with a->vivify), decides whether this caller wins the token to refresh it
 * (created, stale, or with a->recache expiring sooner, and no token handed out yet), applies
 * a->exptime, the win mark and the read, and pins the item as storage_get does (the view has
 * the new expiry). *meta gets the item's state from before the read. Returns STORAGE_OK,
 * STORAGE_NOT_FOUND, or STORAGE_NO_MEMORY/STORAGE_TOO_LARGE (vivify or a move found no room).
 */
int storage_mget(const void *key, size_t nkey, const struct storage_mget_args *a,
		 struct storage_view *out, struct storage_meta *meta);

/*
 * memcached's md: deletes the item, only if its cas equals cas when check_cas; with mark_stale
 * it is kept instead, marked stale with a new cas and its win token taken back, and with
 * set_exptime given exptime. Returns STORAGE_DELETED (deleted or marked), STORAGE_NOT_FOUND,
 * STORAGE_EXISTS (cas mismatch) or STORAGE_NO_MEMORY.
 */
int storage_mdelete(const void *key, size_t nkey, bool check_cas, uint64_t cas, bool mark_stale,
		    bool set_exptime, int64_t exptime);

/* Seconds until a view's item expires (> 0; 0 or less once past), or -1 for never. */
int64_t storage_ttl_left(uint32_t expires);

/* Unpins a read item; the view's pointers must not be used after. NULL is a no-op. */
void storage_release(struct storage_pin *pin);

/* Removes an item. Returns STORAGE_DELETED or STORAGE_NOT_FOUND. */
int storage_delete(const void *key, size_t nkey);

/* Sets an item's exptime (cas unchanged). Returns STORAGE_OK or STORAGE_NOT_FOUND. */
int storage_touch(const void *key, size_t nkey, int64_t exptime);

/*
 * incr (incr=true, wraps mod 2^64) or decr (saturates at 0) with memcached's rules: the value
 * must be an unsigned decimal (leading spaces allowed, ends at the end or at a space); a shorter
 * result is padded with spaces to the old length; flags and ttl kept; a new cas is assigned.
 * When expect_cas is not 0 the item's cas must equal it (memcached's ma C). Returns STORAGE_OK
 * with *result (and the item's new cas in *cas_out when not NULL; 0 when CAS is disabled),
 * STORAGE_NOT_FOUND, STORAGE_EXISTS (cas mismatch), STORAGE_NON_NUMERIC, STORAGE_NO_MEMORY.
 */
int storage_incr(const void *key, size_t nkey, bool incr, uint64_t delta, uint64_t expect_cas,
		 uint64_t *result, uint64_t *cas_out);

/*
 * flush_all: delay 0 invalidates every item now; delay > 0 invalidates, once delay-1 seconds
 * have passed, every item last written before that moment (memcached's oldest_live rule).
 */
int storage_flush(uint32_t delay);

/* Reports the store's figures (curr_items, bytes, evictions, ... and module-specific ones). */
void storage_stats(storage_stat_fn fn, void *ctx);

/*
 * memcached's "stats items" and "stats slabs" figures, in memcached's names and format
 * ("items:<class>:<name>", "<class>:<name>", then the totals), from what the store has:
 * the slab store reports its classes; the p99 store, which has segments instead, reports
 * its items as one class (see README).
 */
void storage_stats_items(storage_stat_fn fn, void *ctx);
void storage_stats_slabs(storage_stat_fn fn, void *ctx);

#endif
