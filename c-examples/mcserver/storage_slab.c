/*
 * storage_slab.c - a Twemcache-style item store behind storage.h.
 *
 * Memory is cut into pages (1 MiB, or the item maximum if larger) that are handed to slab
 * classes on demand; a class cuts its pages into equal chunks whose sizes grow by a factor
 * (1.25 by default). Each class keeps its own LRU list. When a class needs a chunk and no page
 * is left, it evicts from the tail of its LRU; if the class has nothing evictable, a whole page
 * of another class is emptied and moved (Twemcache's slab eviction), so no class starves. A
 * class that has pages never takes another class's last page: when reservations in flight hold
 * every chunk of one class, other classes keep storing and evicting in their own pages, as in
 * memcached (which moves pages only in the background).
 * Items carry a refcount of readers (pins) and reservations, so an item being sent or filled is
 * never reused. Keys live in a chained hash table that doubles, migrating buckets a few at a
 * time. One mutex guards the store: the work under it is short and never blocks.
 */
#include "storage.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define PAGE_SIZE_MIN (1024 * 1024)
#define CLASS_MAX 64
#define CHUNK_ALIGN 8
#define SMALLEST_CHUNK 96 /* memcached's: a 48-byte header + 48 bytes */
#define LRU_SEARCH 50 /* items looked at from an LRU tail before giving up */
#define HASH_POWER_INIT 16
#define HASH_MIGRATE_STEP 64 /* old buckets moved per write while the table grows */
#define REALTIME_MAXDELTA (60 * 60 * 24 * 30) /* memcached: a larger exptime is absolute */

enum {
	ITEM_LINKED = 1, /* in the hash table and the LRU */
	ITEM_SLABBED = 2, /* on its class's free list */
	/* memcached's meta-protocol marks */
	ITEM_FETCHED = 4, /* read since written */
	ITEM_STALE = 8, /* marked stale (md I, ms I) */
	ITEM_TOKEN_SENT = 16, /* a win token was handed out */
	ITEM_KEY_BINARY = 32, /* written with a base64 key (ms b) */
};

/*
 * 48-byte header + 8-byte cas, like memcached's item; then the key, the value and "\r\n".
 * While an item is reserved (not yet linked) `time` counts the value bytes filled so far.
 */
struct item {
	struct item *next, *prev; /* LRU, or free list when slabbed */
	struct item *h_next; /* hash chain */
	uint32_t time; /* last write or counted read, store clock (memcached's last access) */
	uint32_t exptime; /* 0 = never, else store clock when it expires */
	uint32_t nbytes; /* value length */
	uint32_t refcount; /* pins + reservation */
	uint8_t it_flags;
	uint8_t clsid;
	uint8_t nkey;
	uint8_t unused;
	uint32_t flags; /* client flags */
	uint64_t cas; /* always assigned; shown as 0 when CAS is disabled */
	char data[];
};

struct page {
	char *mem;
	uint8_t clsid; /* 0 = not assigned */
};

struct slab_class {
	size_t size; /* chunk size */
	unsigned perpage;
	struct item *free_head; /* chunks not in use */
	size_t free_count;
	struct item *lru_head, *lru_tail;
	uint64_t pages;
	uint64_t used;
	uint64_t evictions;
};

static struct {
	pthread_mutex_t lock;
	struct storage_options opts;
	size_t page_size;
	struct slab_class classes[CLASS_MAX];
	unsigned nclasses; /* classes are 1..nclasses */
	struct page *pages;
	size_t npages_max, npages;
	char *arena; /* with prealloc (-L): every page, carved in order; else pages are malloc'd */
	size_t arena_len;
	size_t victim; /* next page to consider for slab eviction */

	struct item **table, **old_table;
	unsigned hashpower;
	bool expanding;
	size_t migrate_next;

	uint64_t next_cas;
	uint32_t oldest_live; /* delayed flush moment (store clock), 0 = none */
	uint64_t oldest_cas; /* items with cas below this are flushed */
	struct timespec start;
	time_t start_unix; /* wall time at store time 2 (memcached's absolute exptimes) */

	uint64_t curr_items, total_items, bytes, evictions, page_evictions, reclaimed;
	uint64_t expired_unfetched, flushed;
	uint64_t requested[CLASS_MAX]; /* memcached's mem_requested: item bytes per class */
	uint64_t linked[CLASS_MAX]; /* linked items per class */
} S;

static uint32_t store_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	/* +2 so that "now - 1" is still a valid, non-zero time. */
	return (uint32_t)(ts.tv_sec - S.start.tv_sec) + 2;
}

static size_t item_total(size_t nkey, size_t nbytes)
{
	return sizeof(struct item) + nkey + nbytes + 2;
}

/* The size memcached would charge for this item, so that "too large" answers agree. */
static size_t memcached_total(size_t nkey, uint32_t flags, size_t nbytes)
{
	return 48 + (S.opts.cas_enabled ? 8 : 0) + nkey + 1 + (flags ? 4 : 0) + nbytes + 2;
}

static char *item_key(struct item *it)
{
	return it->data;
}
static char *item_value(struct item *it)
{
	return it->data + it->nkey;
}

/* --- hashing ---------------------------------------------------------------------------- */

static uint64_t hash_key(const void *key, size_t n)
{
	/* FNV-1a with a final avalanche: keys are short, this is fast and spreads well. */
	const unsigned char *p = key;
	uint64_t h = 1469598103934665603ULL;
	for (size_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= 1099511628211ULL;
	}
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	return h;
}

static size_t hash_mask(unsigned power)
{
	return ((size_t)1 << power) - 1;
}

static struct item **bucket_for(uint64_t hv)
{
	if (S.expanding) {
		size_t ob = hv & hash_mask(S.hashpower - 1);
		if (ob >= S.migrate_next)
			return &S.old_table[ob];
	}
	return &S.table[hv & hash_mask(S.hashpower)];
}

static void hash_migrate(size_t nbuckets)
{
	size_t old_n = (size_t)1 << (S.hashpower - 1);
	while (S.expanding && nbuckets-- > 0) {
		struct item *it = S.old_table[S.migrate_next];
		while (it) {
			struct item *next = it->h_next;
			size_t b = hash_key(item_key(it), it->nkey) & hash_mask(S.hashpower);
			it->h_next = S.table[b];
			S.table[b] = it;
			it = next;
		}
		S.old_table[S.migrate_next] = NULL;
		if (++S.migrate_next == old_n) {
			free(S.old_table);
			S.old_table = NULL;
			S.expanding = false;
		}
	}
}

static void hash_maybe_grow(void)
{
	if (S.expanding || S.curr_items <= ((size_t)3 << S.hashpower) / 2 || S.hashpower >= 32)
		return;
	struct item **bigger = calloc((size_t)1 << (S.hashpower + 1), sizeof(*bigger));
	if (!bigger)
		return; /* keep the current table: chains just get longer */
	S.old_table = S.table;
	S.table = bigger;
	S.hashpower++;
	S.expanding = true;
	S.migrate_next = 0;
}

static struct item *hash_find(const void *key, size_t nkey, uint64_t hv)
{
	for (struct item *it = *bucket_for(hv); it; it = it->h_next)
		if (it->nkey == nkey && memcmp(item_key(it), key, nkey) == 0)
			return it;
	return NULL;
}

static void hash_insert(struct item *it, uint64_t hv)
{
	struct item **b = bucket_for(hv);
	it->h_next = *b;
	*b = it;
}

static void hash_remove(struct item *it)
{
	struct item **pp = bucket_for(hash_key(item_key(it), it->nkey));
	while (*pp && *pp != it)
		pp = &(*pp)->h_next;
	if (*pp)
		*pp = it->h_next;
	it->h_next = NULL;
}

/* --- LRU and free lists ------------------------------------------------------------------ */

static void lru_unlink(struct item *it)
{
	struct slab_class *c = &S.classes[it->clsid];
	if (it->prev)
		it->prev->next = it->next;
	else
		c->lru_head = it->next;
	if (it->next)
		it->next->prev = it->prev;
	else
		c->lru_tail = it->prev;
	it->next = it->prev = NULL;
}

static void lru_push(struct item *it)
{
	struct slab_class *c = &S.classes[it->clsid];
	it->prev = NULL;
	it->next = c->lru_head;
	if (c->lru_head)
		c->lru_head->prev = it;
	else
		c->lru_tail = it;
	c->lru_head = it;
}

static void free_push(struct item *it)
{
	struct slab_class *c = &S.classes[it->clsid];
	it->it_flags = ITEM_SLABBED;
	it->refcount = 0;
	it->prev = NULL;
	it->next = c->free_head;
	if (c->free_head)
		c->free_head->prev = it;
	c->free_head = it;
	c->free_count++;
}

static void free_unlink(struct item *it)
{
	struct slab_class *c = &S.classes[it->clsid];
	if (it->prev)
		it->prev->next = it->next;
	else
		c->free_head = it->next;
	if (it->next)
		it->next->prev = it->prev;
	it->next = it->prev = NULL;
	it->it_flags = 0;
	c->free_count--;
}

/* Returns a chunk to its class once it is neither linked nor referenced. */
static void item_free_if_unused(struct item *it)
{
	if (it->refcount == 0 && !(it->it_flags & ITEM_LINKED)) {
		S.classes[it->clsid].used--;
		free_push(it);
	}
}

static void item_unlink(struct item *it)
{
	if (!(it->it_flags & ITEM_LINKED))
		return;
	hash_remove(it);
	lru_unlink(it);
	it->it_flags &= ~ITEM_LINKED;
	S.curr_items--;
	S.bytes -= item_total(it->nkey, it->nbytes);
	S.requested[it->clsid] -= item_total(it->nkey, it->nbytes);
	S.linked[it->clsid]--;
	item_free_if_unused(it);
}

static void item_link(struct item *it, uint64_t hv)
{
	it->time = store_now();
	it->cas = S.next_cas++;
	it->it_flags |= ITEM_LINKED;
	hash_insert(it, hv);
	lru_push(it);
	S.curr_items++;
	S.total_items++;
	S.bytes += item_total(it->nkey, it->nbytes);
	S.requested[it->clsid] += item_total(it->nkey, it->nbytes);
	S.linked[it->clsid]++;
	hash_maybe_grow();
	hash_migrate(HASH_MIGRATE_STEP);
}

static bool item_is_dead(const struct item *it, uint32_t now)
{
	if (it->exptime != 0 && it->exptime <= now)
		return true;
	if (S.oldest_live != 0 && S.oldest_live <= now && it->time <= S.oldest_live)
		return true;
	return it->cas < S.oldest_cas;
}

/* A live item for key, or NULL; a dead one found on the way is unlinked. */
static struct item *find_live(const void *key, size_t nkey, uint64_t hv)
{
	struct item *it = hash_find(key, nkey, hv);
	if (it && item_is_dead(it, store_now())) {
		if (it->exptime != 0 && it->exptime <= store_now())
			S.reclaimed++;
		else
			S.flushed++;
		item_unlink(it);
		return NULL;
	}
	return it;
}

/* --- slab allocation ---------------------------------------------------------------------- */

static unsigned class_for(size_t total)
{
	for (unsigned i = 1; i <= S.nclasses; i++)
		if (S.classes[i].size >= total)
			return i;
	return 0;
}

static void page_carve(struct page *pg, unsigned id)
{
	struct slab_class *c = &S.classes[id];
	pg->clsid = (uint8_t)id;
	c->pages++;
	for (unsigned i = 0; i < c->perpage; i++) {
		struct item *it = (struct item *)(pg->mem + (size_t)i * c->size);
		it->clsid = (uint8_t)id;
		free_push(it);
	}
}

static bool page_new(unsigned id)
{
	if (S.npages >= S.npages_max)
		return false;
	char *mem = S.arena ? S.arena + S.npages * S.page_size : malloc(S.page_size);
	if (!mem)
		return false;
	S.pages[S.npages].mem = mem;
	page_carve(&S.pages[S.npages++], id);
	return true;
}

/* Evicts from the LRU tail of a class: expired items first, then the least recent unpinned. */
static bool lru_evict(unsigned id)
{
	struct slab_class *c = &S.classes[id];
	uint32_t now = store_now();
	int tries = LRU_SEARCH;
	for (struct item *it = c->lru_tail; it && tries-- > 0; it = it->prev) {
		if (it->refcount != 0)
			continue;
		if (item_is_dead(it, now)) {
			S.reclaimed++;
		} else {
			c->evictions++;
			S.evictions++;
		}
		item_unlink(it);
		return true;
	}
	return false;
}

/*
 * Empties one page of another class and gives it to class id (Twemcache's slab eviction). The
 * last page of a class goes only to a class that has none: a class with pages whose chunks
 * are all held (reserved or pinned) must not empty a class that can still serve its own sizes.
 */
static bool page_evict(unsigned id)
{
	bool taker_has_pages = S.classes[id].pages > 0;
	for (size_t n = 0; n < S.npages; n++) {
		struct page *pg = &S.pages[S.victim];
		S.victim = (S.victim + 1) % S.npages;
		if (pg->clsid == id)
			continue;
		struct slab_class *c = &S.classes[pg->clsid];
		if (taker_has_pages && c->pages <= 1)
			continue;
		bool busy = false;
		for (unsigned i = 0; i < c->perpage && !busy; i++) {
			struct item *it = (struct item *)(pg->mem + (size_t)i * c->size);
			busy = it->refcount != 0;
		}
		if (busy)
			continue;
		for (unsigned i = 0; i < c->perpage; i++) {
			struct item *it = (struct item *)(pg->mem + (size_t)i * c->size);
			if (it->it_flags & ITEM_LINKED) {
				S.evictions++;
				c->evictions++;
				item_unlink(it);
			}
			free_unlink(it);
		}
		c->pages--;
		S.page_evictions++;
		page_carve(pg, id);
		return true;
	}
	return false;
}

static struct item *chunk_alloc(size_t total)
{
	unsigned id = class_for(total);
	if (id == 0)
		return NULL;
	struct slab_class *c = &S.classes[id];
	if (!c->free_head && !page_new(id) && !lru_evict(id) && !page_evict(id))
		return NULL;
	struct item *it = c->free_head;
	free_unlink(it);
	c->used++;
	return it;
}

/* An unlinked item with refcount 1, key copied, value unfilled. Lock held. */
static struct item *item_alloc(const void *key, size_t nkey, uint32_t flags, uint32_t exptime,
			       size_t nbytes)
{
	struct item *it = chunk_alloc(item_total(nkey, nbytes));
	if (!it)
		return NULL;
	it->next = it->prev = it->h_next = NULL;
	it->time = 0;
	it->exptime = exptime;
	it->nbytes = (uint32_t)nbytes;
	it->refcount = 1;
	it->it_flags = 0;
	it->nkey = (uint8_t)nkey;
	it->flags = flags;
	it->cas = 0;
	memcpy(item_key(it), key, nkey);
	memcpy(item_value(it) + nbytes, "\r\n", 2);
	return it;
}

static void item_release(struct item *it)
{
	it->refcount--;
	item_free_if_unused(it);
}

/* memcached's exptime as a time on the store clock (0 = never, 1 = before any store time). */
static uint32_t store_expiry(int64_t exptime)
{
	if (exptime == 0)
		return 0;
	if (exptime < 0)
		return 1; /* already expired */
	int64_t now = store_now();
	int64_t e =
		exptime <= REALTIME_MAXDELTA ? now + exptime : exptime - (int64_t)S.start_unix + 2;
	if (e <= now)
		return 1;
	return e > UINT32_MAX ? UINT32_MAX : (uint32_t)e;
}

/* --- storage.h ----------------------------------------------------------------------------- */

const char *storage_name(void)
{
	return "slab";
}

/* A page is at least the largest item; memcached's own -I ceiling. */
size_t storage_item_max_limit(void)
{
	return (size_t)1024 << 20;
}

/*
 * memcached -L: maps every page of the budget at once, asks for transparent huge pages and
 * backs it with memory now (MADV_POPULATE_WRITE, Linux 5.14+, which reports ENOMEM instead of
 * calling the OOM killer; older kernels: one write per page). Pages are carved from it in
 * order. 0, or -1 with err set.
 */
static int prealloc_pages(char *err, size_t errlen)
{
	const int populate_write = 23; /* MADV_POPULATE_WRITE, not in every libc's headers */
	size_t len = S.npages_max * S.page_size;
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		snprintf(err, errlen, "slab storage: -L: mmap of %zu bytes: %s", len,
			 strerror(errno));
		return -1;
	}
	(void)madvise(p, len, MADV_HUGEPAGE); /* an optimisation: refused without THP */
	if (madvise(p, len, populate_write) != 0) {
		if (errno != EINVAL) {
			snprintf(err, errlen, "slab storage: -L: backing %zu bytes: %s", len,
				 strerror(errno));
			munmap(p, len);
			return -1;
		}
		for (size_t off = 0; off < len; off += 4096)
			((volatile char *)p)[off] = 0;
	}
	S.arena = p;
	S.arena_len = len;
	return 0;
}

int storage_setup(const struct storage_options *opts, char *err, size_t errlen)
{
	memset(&S, 0, sizeof(S));
	S.opts = *opts;
	if (S.opts.growth <= 1.0)
		S.opts.growth = 1.25;
	S.page_size = opts->item_max > PAGE_SIZE_MIN ? opts->item_max : PAGE_SIZE_MIN;
	S.npages_max = opts->mem_limit / S.page_size;
	if (S.npages_max == 0)
		S.npages_max = 1;
	clock_gettime(CLOCK_MONOTONIC_COARSE, &S.start);
	S.start_unix = time(NULL);
	S.next_cas = 1;

	/* memcached's class sizes: 96, 120, 152, 192, 240, ... (factor 1.25, 8-byte aligned) */
	size_t size = SMALLEST_CHUNK;
	unsigned n = 0;
	while (n < CLASS_MAX - 2 && size < S.page_size / 2) {
		n++;
		S.classes[n].size = size;
		size_t next = (size_t)((double)size * S.opts.growth);
		next = (next + CHUNK_ALIGN - 1) & ~(size_t)(CHUNK_ALIGN - 1);
		size = next > size ? next : size + CHUNK_ALIGN;
	}
	n++;
	S.classes[n].size = S.page_size;
	S.nclasses = n;
	for (unsigned i = 1; i <= n; i++)
		S.classes[i].perpage = (unsigned)(S.page_size / S.classes[i].size);

	if (opts->prealloc && prealloc_pages(err, errlen) != 0)
		return -1;
	S.pages = calloc(S.npages_max, sizeof(*S.pages));
	S.hashpower = opts->hashpower ? opts->hashpower : HASH_POWER_INIT;
	S.table = calloc((size_t)1 << S.hashpower, sizeof(*S.table));
	if (!S.pages || !S.table || pthread_mutex_init(&S.lock, NULL) != 0) {
		snprintf(err, errlen, "slab storage: out of memory");
		free(S.pages);
		free(S.table);
		if (S.arena)
			munmap(S.arena, S.arena_len);
		return -1;
	}
	return 0;
}

void storage_teardown(void)
{
	if (S.arena)
		munmap(S.arena, S.arena_len);
	else
		for (size_t i = 0; i < S.npages; i++)
			free(S.pages[i].mem);
	free(S.pages);
	free(S.table);
	free(S.old_table);
	pthread_mutex_destroy(&S.lock);
	memset(&S, 0, sizeof(S));
}

int storage_reserve(const void *key, size_t nkey, uint32_t flags, int64_t exptime, size_t vlen,
		    struct storage_reservation **out)
{
	if (!key || !out || nkey == 0 || nkey > STORAGE_KEY_MAX)
		return STORAGE_INVALID;
	if (memcached_total(nkey, flags, vlen) > S.opts.item_max ||
	    item_total(nkey, vlen) > S.page_size)
		return STORAGE_TOO_LARGE;
	pthread_mutex_lock(&S.lock);
	struct item *it = item_alloc(key, nkey, flags, store_expiry(exptime), vlen);
	pthread_mutex_unlock(&S.lock);
	if (!it)
		return STORAGE_NO_MEMORY;
	*out = (struct storage_reservation *)it;
	return STORAGE_OK;
}

int storage_fill(struct storage_reservation *r, const void *data, size_t len)
{
	struct item *it = (struct item *)r;
	if (!it || (len && !data) || len > it->nbytes - it->time)
		return STORAGE_INVALID;
	memcpy(item_value(it) + it->time, data, len);
	it->time += (uint32_t)len;
	return STORAGE_OK;
}

void storage_cancel(struct storage_reservation *r)
{
	if (!r)
		return;
	pthread_mutex_lock(&S.lock);
	item_release((struct item *)r);
	pthread_mutex_unlock(&S.lock);
}

/* Builds old+add (append) or add+old (prepend) into a new item. Lock held. */
static int combine(struct item *old, struct item *add, bool append, struct item **out)
{
	size_t n = (size_t)old->nbytes + add->nbytes;
	if (memcached_total(old->nkey, old->flags, n) > S.opts.item_max ||
	    item_total(old->nkey, n) > S.page_size)
		return STORAGE_TOO_LARGE;
	old->refcount++; /* keep old in place while allocating (it may be evicted otherwise) */
	struct item *it = item_alloc(item_key(old), old->nkey, old->flags, old->exptime, n);
	old->refcount--;
	if (!it)
		return STORAGE_NO_MEMORY;
	struct item *first = append ? old : add, *second = append ? add : old;
	memcpy(item_value(it), item_value(first), first->nbytes);
	memcpy(item_value(it) + first->nbytes, item_value(second), second->nbytes);
	*out = it;
	return STORAGE_OK;
}

/* Makes the filled, unlinked item it visible according to op and drops the writer's
 * reference to it, whatever the result. Lock held. */
static int commit_locked(struct item *it, uint64_t hv, enum storage_op op, uint64_t cas,
			 uint64_t *cas_out)
{
	int rc;
	struct item *old = find_live(item_key(it), it->nkey, hv);
	struct item *store = it;
	switch (op) {
	case STORAGE_SET: rc = STORAGE_STORED; break;
	case STORAGE_ADD:
		rc = old ? STORAGE_NOT_STORED : STORAGE_STORED;
		if (old) { /* memcached refreshes the existing item's recency */
			lru_unlink(old);
			lru_push(old);
		}
		break;
	case STORAGE_REPLACE: rc = old ? STORAGE_STORED : STORAGE_NOT_STORED; break;
	case STORAGE_CAS:
	case STORAGE_CAS_STALE:
		if (!old) {
			rc = STORAGE_NOT_FOUND;
		} else if (S.opts.cas_enabled && old->cas == cas) {
			rc = STORAGE_STORED;
		} else if (op == STORAGE_CAS_STALE && S.opts.cas_enabled && cas != 0 &&
			   cas < old->cas) {
			/* memcached's ms I: an older cas still stores, marked stale, keeping the
			 * old item's exptime and win-token mark */
			it->exptime = old->exptime;
			it->it_flags |= ITEM_STALE | (old->it_flags & ITEM_TOKEN_SENT);
			rc = STORAGE_STORED;
		} else {
			rc = STORAGE_EXISTS;
		}
		break;
	case STORAGE_APPEND:
	case STORAGE_PREPEND:
		if (!old) {
			rc = STORAGE_NOT_STORED;
			break;
		}
		if (cas != 0 && (S.opts.cas_enabled ? old->cas : 0) != cas) {
			rc = STORAGE_EXISTS;
			break;
		}
		rc = combine(old, it, op == STORAGE_APPEND, &store);
		if (rc == STORAGE_OK)
			rc = STORAGE_STORED;
		break;
	default: rc = STORAGE_INVALID;
	}
	if (rc == STORAGE_STORED) {
		if (old)
			item_unlink(old);
		item_link(store, hv);
		if (cas_out)
			*cas_out = S.opts.cas_enabled ? store->cas : 0;
		if (store != it)
			item_release(store);
	}
	item_release(it);
	return rc;
}

int storage_commit(struct storage_reservation *r, enum storage_op op, uint64_t cas,
		   uint64_t *cas_out)
{
	struct item *it = (struct item *)r;
	if (!it)
		return STORAGE_INVALID;
	if (it->time != it->nbytes) {
		storage_cancel(r);
		return STORAGE_INVALID;
	}
	uint64_t hv = hash_key(item_key(it), it->nkey);
	pthread_mutex_lock(&S.lock);
	int rc = commit_locked(it, hv, op, cas, cas_out);
	pthread_mutex_unlock(&S.lock);
	return rc;
}

int storage_store(const void *key, size_t nkey, uint32_t flags, int64_t exptime, const void *value,
		  size_t vlen, enum storage_op op, uint64_t cas, uint64_t *cas_out)
{
	if (!key || (vlen && !value) || nkey == 0 || nkey > STORAGE_KEY_MAX)
		return STORAGE_INVALID;
	if (memcached_total(nkey, flags, vlen) > S.opts.item_max ||
	    item_total(nkey, vlen) > S.page_size)
		return STORAGE_TOO_LARGE;
	uint64_t hv = hash_key(key, nkey);
	pthread_mutex_lock(&S.lock);
	struct item *it = item_alloc(key, nkey, flags, store_expiry(exptime), vlen);
	int rc = STORAGE_NO_MEMORY;
	if (it) {
		memcpy(item_value(it), value, vlen);
		it->time = (uint32_t)vlen; /* filled */
		rc = commit_locked(it, hv, op, cas, cas_out);
	}
	pthread_mutex_unlock(&S.lock);
	return rc;
}

int64_t storage_ttl_left(uint32_t expires)
{
	return expires ? (int64_t)expires - (int64_t)store_now() : -1;
}

#define ITEM_UPDATE_INTERVAL 60 /* memcached: a read refreshes the access time this rarely */

/* A counted read: memcached's LRU bump, fetched mark and (coarse) last-access time. */
static void item_bump(struct item *it)
{
	lru_unlink(it);
	lru_push(it);
	it->it_flags |= ITEM_FETCHED;
	uint32_t now = store_now();
	if (it->time + ITEM_UPDATE_INTERVAL < now)
		it->time = now;
}

static void fill_view(struct item *it, struct storage_view *out)
{
	it->refcount++;
	out->value = item_value(it);
	out->len = it->nbytes;
	out->flags = it->flags;
	out->cas = S.opts.cas_enabled ? it->cas : 0;
	out->expires = it->exptime;
	out->pin = (struct storage_pin *)it;
}

static void pin_view(struct item *it, struct storage_view *out)
{
	item_bump(it);
	fill_view(it, out);
}

int storage_get(const void *key, size_t nkey, struct storage_view *out)
{
	if (!key || !out || nkey == 0 || nkey > STORAGE_KEY_MAX)
		return STORAGE_NOT_FOUND;
	uint64_t hv = hash_key(key, nkey);
	pthread_mutex_lock(&S.lock);
	struct item *it = find_live(key, nkey, hv);
	if (it)
		pin_view(it, out);
	pthread_mutex_unlock(&S.lock);
	return it ? STORAGE_OK : STORAGE_NOT_FOUND;
}

int storage_get_copy(const void *key, size_t nkey, void *buf, size_t cap, struct storage_view *out)
{
	if (!key || !out || (!buf && cap) || nkey == 0 || nkey > STORAGE_KEY_MAX)
		return STORAGE_NOT_FOUND;
	uint64_t hv = hash_key(key, nkey);
	pthread_mutex_lock(&S.lock);
	struct item *it = find_live(key, nkey, hv);
	if (it && it->nbytes <= cap) {
		item_bump(it);
		if (it->nbytes)
			memcpy(buf, item_value(it), it->nbytes);
		out->value = buf;
		out->len = it->nbytes;
		out->flags = it->flags;
		out->cas = S.opts.cas_enabled ? it->cas : 0;
		out->expires = it->exptime;
		out->pin = NULL;
	} else if (it) {
		pin_view(it, out);
	}
	pthread_mutex_unlock(&S.lock);
	return it ? STORAGE_OK : STORAGE_NOT_FOUND;
}

int storage_gat(const void *key, size_t nkey, int64_t exptime, struct storage_view *out)
{
	if (!key || !out || nkey == 0 || nkey > STORAGE_KEY_MAX)
		return STORAGE_NOT_FOUND;
	uint64_t hv = hash_key(key, nkey);
	pthread_mutex_lock(&S.lock);
	struct item *it = find_live(key, nkey, hv);
	if (it) {
		it->exptime = store_expiry(exptime);
		pin_view(it, out);
	}
	pthread_mutex_unlock(&S.lock);
	return it ? STORAGE_OK : STORAGE_NOT_FOUND;
}

void storage_release(struct storage_pin *pin)
{
	if (!pin)
		return;
	pthread_mutex_lock(&S.lock);
	item_release((struct item *)pin);
	pthread_mutex_unlock(&S.lock);
}

int storage_delete(const void *key, size_t nkey)
{
	if (!key || nkey == 0 || nkey > STORAGE_KEY_MAX)
		return STORAGE_NOT_FOUND;
	uint64_t hv = hash_key(key, nkey);
	pthread_mutex_lock(&S.lock);
	struct item *it = find_live(key, nkey, hv);
	if (it)
		item_unlink(it);
	pthread_mutex_unlock(&S.lock);
	return it ? STORAGE_DELETED : STORAGE_NOT_FOUND;
}

int storage_touch(const void *key, size_t nkey, int64_t exptime)
{
	if (!key || nkey == 0 || nkey > STORAGE_KEY_MAX)
		return STORAGE_NOT_FOUND;
	uint64_t hv = hash_key(key, nkey);
	pthread_mutex_lock(&S.lock);
	struct item *it = find_live(key, nkey, hv);
	if (it) {
		item_bump(it); /* memcached's touch reads the item as a get does */
		it->exptime = store_expiry(exptime);
	}
	pthread_mutex_unlock(&S.lock);
	return it ? STORAGE_OK : STORAGE_NOT_FOUND;
}

void storage_set_key_binary(struct storage_reservation *r)
{
	if (r)
		((struct item *)r)->it_flags |= ITEM_KEY_BINARY;
}

static void fill_meta(const struct item *it, struct storage_meta *meta)
{
	meta->fetched = it->it_flags & ITEM_FETCHED;
	meta->stale = it->it_flags & ITEM_STALE;
	meta->win_token_sent = it->it_flags & ITEM_TOKEN_SENT;
	meta->key_binary = it->it_flags & ITEM_KEY_BINARY;
	meta->last_access = store_now() - it->time;
	meta->expires_before = it->exptime;
	meta->cls = it->clsid;
	meta->size = item_total(it->nkey, it->nbytes);
}

/* mg N: an empty item, linked, with the win token handed out unless a->no_win. Lock held. */
static int vivify(const void *key, size_t nkey, uint64_t hv, const struct storage_mget_args *a,
		  struct storage_view *out, struct storage_meta *meta)
{
	if (memcached_total(nkey, 0, 0) > S.opts.item_max)
		return STORAGE_TOO_LARGE;
	struct item *it = item_alloc(key, nkey, 0, store_expiry(a->vivify_exptime), 0);
	if (!it)
		return STORAGE_NO_MEMORY;
	item_link(it, hv);
	fill_meta(it, meta);
	meta->created = true;
	meta->expires_before = 0;
	meta->won = !a->no_win;
	if (meta->won)
		it->it_flags |= ITEM_TOKEN_SENT;
	if (!a->no_bump)
		item_bump(it); /* memcached counts the creating read (after its reply) */
	fill_view(it, out);
	item_release(it); /* the allocation's reference; the view's pin remains */
	return STORAGE_OK;
}

int storage_mget(const void *key, size_t nkey, const struct storage_mget_args *a,
		 struct storage_view *out, struct storage_meta *meta)
{
	if (!key || !a || !out || !meta || nkey == 0 || nkey > STORAGE_KEY_MAX)
		return STORAGE_NOT_FOUND;
	memset(meta, 0, sizeof(*meta));
	uint64_t hv = hash_key(key, nkey);
	pthread_mutex_lock(&S.lock);
	struct item *it = find_live(key, nkey, hv);
	if (!it) {
		int rc = a->vivify ? vivify(key, nkey, hv, a, out, meta) : STORAGE_NOT_FOUND;
		pthread_mutex_unlock(&S.lock);
		return rc;
	}
	fill_meta(it, meta);
	uint32_t exp = a->touch ? store_expiry(a->exptime) : it->exptime;
	uint32_t r_exp = a->touch_before_recache ? exp : it->exptime;
	bool recache = a->recache && r_exp != 0 && r_exp < store_expiry(a->recache_exptime);
	meta->won = !a->no_win && !meta->win_token_sent && (recache || meta->stale);
	if (meta->won)
		it->it_flags |= ITEM_TOKEN_SENT;
	it->exptime = exp;
	if (a->no_bump)
		fill_view(it, out);
	else
		pin_view(it, out);
	pthread_mutex_unlock(&S.lock);
	return STORAGE_OK;
}

int storage_mdelete(const void *key, size_t nkey, bool check_cas, uint64_t cas, bool mark_stale,
		    bool set_exptime, int64_t exptime)
{
	if (!key || nkey == 0 || nkey > STORAGE_KEY_MAX)
		return STORAGE_NOT_FOUND;
	uint64_t hv = hash_key(key, nkey);
	int rc = STORAGE_DELETED;
	pthread_mutex_lock(&S.lock);
	struct item *it = find_live(key, nkey, hv);
	if (!it) {
		rc = STORAGE_NOT_FOUND;
	} else if (check_cas && (S.opts.cas_enabled ? it->cas : 0) != cas) {
		rc = STORAGE_EXISTS;
	} else if (mark_stale) {
		it->it_flags = (it->it_flags | ITEM_STALE) & ~ITEM_TOKEN_SENT;
		it->cas = S.next_cas++;
		if (set_exptime)
			it->exptime = store_expiry(exptime);
	} else {
		item_unlink(it);
	}
	pthread_mutex_unlock(&S.lock);
	return rc;
}

/* memcached's safe_strtoull on a value: digits, optional leading space, ends at space/end. */
static bool parse_counter(const char *v, size_t n, uint64_t *out)
{
	char small[32];
	char *buf = n < sizeof(small) ? small : malloc(n + 1);
	if (!buf)
		return false;
	memcpy(buf, v, n);
	buf[n] = '\0';
	char *end;
	errno = 0;
	unsigned long long l = strtoull(buf, &end, 10);
	bool ok = errno != ERANGE && end != buf &&
		  (*end == '\0' || *end == ' ' || (*end >= '\t' && *end <= '\r'));
	if (ok && (long long)l < 0 && memchr(buf, '-', (size_t)(end - buf)))
		ok = false;
	if (buf != small)
		free(buf);
	*out = l;
	return ok;
}

int storage_incr(const void *key, size_t nkey, bool incr, uint64_t delta, uint64_t expect_cas,
		 uint64_t *result, uint64_t *cas_out)
{
	if (!key || !result || nkey == 0 || nkey > STORAGE_KEY_MAX)
		return STORAGE_NOT_FOUND;
	uint64_t hv = hash_key(key, nkey);
	int rc = STORAGE_OK;
	pthread_mutex_lock(&S.lock);
	struct item *it = find_live(key, nkey, hv);
	uint64_t v = 0;
	if (!it) {
		rc = STORAGE_NOT_FOUND;
	} else if (it->nbytes == 0) {
		rc = STORAGE_NON_NUMERIC; /* memcached refuses an empty value before the cas check */
	} else if (expect_cas != 0 && (S.opts.cas_enabled ? it->cas : 0) != expect_cas) {
		rc = STORAGE_EXISTS; /* and compares the cas before it reads the value */
	} else if (!parse_counter(item_value(it), it->nbytes, &v)) {
		rc = STORAGE_NON_NUMERIC;
	} else {
		v = incr ? v + delta : (delta > v ? 0 : v - delta);
		char num[24];
		int len = snprintf(num, sizeof(num), "%" PRIu64, v);
		if ((size_t)len <= it->nbytes && it->refcount == 0) {
			/* in place, padded with spaces to the old length (memcached does the same) */
			memset(item_value(it), ' ', it->nbytes);
			memcpy(item_value(it), num, (size_t)len);
			it->cas = S.next_cas++;
			if (cas_out)
				*cas_out = S.opts.cas_enabled ? it->cas : 0;
		} else {
			it->refcount++;
			struct item *n = item_alloc(key, nkey, it->flags, it->exptime, (size_t)len);
			it->refcount--;
			if (!n) {
				rc = STORAGE_NO_MEMORY;
			} else {
				memcpy(item_value(n), num, (size_t)len);
				n->time = (uint32_t)len;
				item_unlink(it);
				item_link(n, hv);
				if (cas_out)
					*cas_out = S.opts.cas_enabled ? n->cas : 0;
				item_release(n);
			}
		}
		*result = v;
	}
	pthread_mutex_unlock(&S.lock);
	return rc;
}

int storage_flush(uint32_t delay)
{
	pthread_mutex_lock(&S.lock);
	if (delay == 0) {
		/* memcached takes a cas id for the boundary: later items number from one past it */
		S.oldest_cas = S.next_cas++;
		S.oldest_live = 0;
	} else {
		S.oldest_live = store_now() + delay - 1;
	}
	pthread_mutex_unlock(&S.lock);
	return STORAGE_OK;
}

static void stat_u64(storage_stat_fn fn, void *ctx, const char *name, uint64_t v)
{
	char buf[32];
	snprintf(buf, sizeof(buf), "%" PRIu64, v);
	fn(ctx, name, buf);
}

/* "<prefix><class>:<name> <value>" */
static void class_stat(storage_stat_fn fn, void *ctx, const char *prefix, unsigned id,
		       const char *name, uint64_t v)
{
	char key[64];
	snprintf(key, sizeof(key), "%s%u:%s", prefix, id, name);
	stat_u64(fn, ctx, key, v);
}

void storage_stats_items(storage_stat_fn fn, void *ctx)
{
	pthread_mutex_lock(&S.lock);
	uint32_t now = store_now();
	for (unsigned i = 1; i <= S.nclasses; i++) {
		struct slab_class *c = &S.classes[i];
		uint64_t n = S.linked[i];
		if (n == 0 || !c->lru_tail)
			continue;
		/* one LRU per class: every item counts as "cold" (memcached's main LRU) */
		class_stat(fn, ctx, "items:", i, "number", n);
		class_stat(fn, ctx, "items:", i, "number_hot", 0);
		class_stat(fn, ctx, "items:", i, "number_warm", 0);
		class_stat(fn, ctx, "items:", i, "number_cold", n);
		class_stat(fn, ctx, "items:", i, "age_hot", 0);
		class_stat(fn, ctx, "items:", i, "age_warm", 0);
		class_stat(fn, ctx, "items:", i, "age", now - c->lru_tail->time);
		class_stat(fn, ctx, "items:", i, "mem_requested", S.requested[i]);
		class_stat(fn, ctx, "items:", i, "evicted", c->evictions);
	}
	pthread_mutex_unlock(&S.lock);
}

void storage_stats_slabs(storage_stat_fn fn, void *ctx)
{
	pthread_mutex_lock(&S.lock);
	uint64_t active = 0;
	for (unsigned i = 1; i <= S.nclasses; i++) {
		struct slab_class *c = &S.classes[i];
		if (c->pages == 0)
			continue;
		active++;
		class_stat(fn, ctx, "", i, "chunk_size", c->size);
		class_stat(fn, ctx, "", i, "chunks_per_page", c->perpage);
		class_stat(fn, ctx, "", i, "total_pages", c->pages);
		class_stat(fn, ctx, "", i, "total_chunks", c->pages * c->perpage);
		class_stat(fn, ctx, "", i, "used_chunks", c->used);
		class_stat(fn, ctx, "", i, "free_chunks", c->free_count);
		class_stat(fn, ctx, "", i, "free_chunks_end", 0);
	}
	uint64_t malloced = (uint64_t)S.npages * S.page_size;
	pthread_mutex_unlock(&S.lock);
	stat_u64(fn, ctx, "active_slabs", active);
	stat_u64(fn, ctx, "total_malloced", malloced);
}

void storage_stats(storage_stat_fn fn, void *ctx)
{
	pthread_mutex_lock(&S.lock);
	uint64_t pages = S.npages, hashpower = S.hashpower, expanding = S.expanding;
	uint64_t curr = S.curr_items, total = S.total_items, bytes = S.bytes;
	uint64_t ev = S.evictions, pev = S.page_evictions, recl = S.reclaimed, fl = S.flushed;
	uint64_t classes = S.nclasses, psize = S.page_size;
	pthread_mutex_unlock(&S.lock);
	stat_u64(fn, ctx, "curr_items", curr);
	stat_u64(fn, ctx, "total_items", total);
	stat_u64(fn, ctx, "bytes", bytes);
	stat_u64(fn, ctx, "evictions", ev);
	stat_u64(fn, ctx, "reclaimed", recl);
	stat_u64(fn, ctx, "limit_maxbytes", S.opts.mem_limit);
	stat_u64(fn, ctx, "hash_power_level", hashpower);
	stat_u64(fn, ctx, "hash_bytes", (uint64_t)sizeof(void *) << hashpower);
	stat_u64(fn, ctx, "hash_is_expanding", expanding);
	stat_u64(fn, ctx, "slab_page_size", psize);
	stat_u64(fn, ctx, "slab_classes", classes);
	stat_u64(fn, ctx, "slab_pages_allocated", pages);
	stat_u64(fn, ctx, "slab_pages_total_bytes", pages * psize);
	stat_u64(fn, ctx, "slab_page_evictions", pev);
	stat_u64(fn, ctx, "slab_items_flushed", fl);
}
