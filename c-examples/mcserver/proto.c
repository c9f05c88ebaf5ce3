/*
 * proto.c - the memcached 1.6 text protocol (doc/protocol.txt of memcached) on io.h and
 * storage.h: connection framing and the executor of requests parsed by parse.c.
 *
 * Each connection is a small state machine: reading a command line, filling a value into a
 * storage reservation, checking the "\r\n" after a value, or swallowing a refused value.
 * Input is borrowed from the I/O module, so a line that has not fully arrived is copied into
 * the connection's own buffer; values go straight into the store. Replies are queued through
 * io.h; large values are queued by reference to the pinned item and unpinned once written.
 * A complete line goes through mc_parse() (pure: line -> struct mc_request) and execute(), a
 * switch on the verb that calls the store and queues the replies. Reply strings, limits and
 * their order of checks follow memcached 1.6 (proto_text.c).
 */
#include "proto.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "parse.h"
#include "stat.h"
#include "storage.h"

#define SERVER_VERSION "1.6.18-mcserver"
#define LINE_MAX_PLAIN 2048 /* memcached closes a connection past this without '\n' */
#define LINE_MAX_READ (16 * 1024) /* memcached's read buffer (READ_BUFFER_SIZE) */
#define LINE_MAX_GET (4 * 1024 * 1024) /* multi-get lines may be long; cap them all the same */
#define COPY_VALUE_MAX 1024 /* values up to this size are copied into the reply */
#define VALUE_HEAD_MAX (STORAGE_KEY_MAX + 96) /* "VALUE <key> <flags> <bytes> <cas>\r\n" */
#define REALTIME_MAXDELTA (60 * 60 * 24 * 30)

enum conn_state {
	ST_LINE,
	ST_VALUE_START, /* a classic storage command's line is in, nothing reserved yet */
	ST_DATA,
	ST_DATA_END,
	ST_SWALLOW,
	ST_CLOSED
};

struct pconn {
	struct io_conn *io;
	enum conn_state state;
	char *line; /* partial command line */
	size_t len, cap;
	bool seen_input;
	/* value being received */
	struct storage_reservation *res;
	size_t left;
	char term[2];
	size_t nterm;
	enum storage_op op;
	uint64_t cas;
	uint32_t flags; /* ST_VALUE_START: the write's client flags and exptime (key in key) */
	int32_t exptime;
	bool noreply;
	/* an ms value: its reply ("HD"/"NS"/"EX"/"NF" and the O, k, c fields in the order given)
	 * is written once the value is in */
	bool meta_set;
	bool meta_quiet;
	char meta_fields[MC_MAX_TOKENS]; /* 'O', 'k', 'c' in request order, NUL-terminated */
	bool meta_key_binary; /* ms b: the k field is base64 */
	char opaque[MC_OPAQUE_MAX];
	size_t nopaque;
	char key[STORAGE_KEY_MAX];
	size_t nkey;
};

struct counters {
	_Atomic uint64_t cmd_get, cmd_set, cmd_flush, cmd_touch, get_hits, get_misses;
	_Atomic uint64_t delete_hits, delete_misses, incr_hits, incr_misses, decr_hits, decr_misses;
	_Atomic uint64_t cas_hits, cas_misses, cas_badval, touch_hits, touch_misses;
};

static struct proto_settings settings;
static struct io_server *server;
static struct counters stats;
static time_t process_started;
static _Atomic int verbosity;
static _Atomic int automove = 1; /* slabs automove: memcached's default is 1 */
static _Atomic double automove_ratio = 0.8; /* slabs automove ratio (only reported) */

static void count(_Atomic uint64_t *c)
{
	atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

static uint64_t load(_Atomic uint64_t *c)
{
	return atomic_load_explicit(c, memory_order_relaxed);
}

/* --- replies -------------------------------------------------------------------------------- */

static void send_str(struct pconn *c, const char *s)
{
	io_send_copy(c->io, s, strlen(s));
}

/* memcached's out_string: suppressed (once) by noreply. */
static void reply(struct pconn *c, const char *s)
{
	if (c->noreply) {
		c->noreply = false;
		return;
	}
	send_str(c, s);
}

/* memcached's exptime rules as seconds from now (0 never, <0 already past): flush_all's delay,
 * and what a meta t reports after a T. */
static int64_t ttl_from_exptime(int32_t exptime)
{
	if (exptime == 0)
		return 0;
	if (exptime < 0)
		return -1;
	if (exptime <= REALTIME_MAXDELTA)
		return exptime;
	int64_t ttl = (int64_t)exptime - (int64_t)time(NULL);
	return ttl > 0 ? ttl : -1;
}

/* --- commands --------------------------------------------------------------------------------- */

static void release_pin(void *pin)
{
	storage_release(pin);
}

/* One VALUE reply: header, then a value of up to COPY_VALUE_MAX bytes at VALUE_HEAD_MAX (where
 * storage_get_copy puts it), then "\r\n". */
struct value_reply {
	char buf[VALUE_HEAD_MAX + COPY_VALUE_MAX + 2];
};

static void send_value(struct pconn *c, struct mc_token key, const struct storage_view *v,
		       bool with_cas, struct value_reply *r)
{
	char head[VALUE_HEAD_MAX];
	int n = with_cas
			? snprintf(head, sizeof(head), "VALUE %.*s %" PRIu32 " %zu %" PRIu64 "\r\n",
				   (int)key.n, key.s, v->flags, v->len, v->cas)
			: snprintf(head, sizeof(head), "VALUE %.*s %" PRIu32 " %zu\r\n", (int)key.n,
				   key.s, v->flags, v->len);
	if (v->len <= COPY_VALUE_MAX) {
		char *val = r->buf + VALUE_HEAD_MAX;
		if (v->value != val)
			memcpy(val, v->value, v->len);
		memcpy(val - n, head, (size_t)n);
		memcpy(val + v->len, "\r\n", 2);
		io_send_copy(c->io, val - n, (size_t)n + v->len + 2);
		storage_release(v->pin);
	} else {
		io_send_copy(c->io, head, (size_t)n);
		io_send_ref(c->io, v->value, v->len, release_pin, v->pin);
		io_send_copy(c->io, "\r\n", 2);
	}
}

static void cmd_get(struct pconn *c, const struct mc_request *req)
{
	bool touch = req->verb == MC_GAT || req->verb == MC_GATS;
	bool with_cas = req->verb == MC_GETS || req->verb == MC_GATS;
	const char *p = req->keys.s, *end = req->keys.s + req->keys.n;
	struct value_reply r;
	if (req->error != MC_OK) {
		/* A key over the limit makes memcached drop the whole reply, after it has already
		 * looked up (and for gat, touched) the keys before it: do the same, without sending
		 * them. */
		for (size_t i = 0; i < req->nkeys; i++) {
			struct mc_token key = mc_next_key(&p, end);
			struct storage_view v;
			int rc = touch ? storage_gat(key.s, key.n, req->exptime, &v)
				       : storage_get_copy(key.s, key.n, r.buf + VALUE_HEAD_MAX,
							  COPY_VALUE_MAX, &v);
			if (rc == STORAGE_OK)
				storage_release(v.pin);
		}
		reply(c, "CLIENT_ERROR bad command line format\r\n");
		return;
	}
	for (size_t i = 0; i < req->nkeys; i++) {
		/* one key (the common case) is the whole span: no second walk over it */
		struct mc_token key = req->nkeys == 1 ? req->keys : mc_next_key(&p, end);
		struct storage_view v;
		int rc = touch ? storage_gat(key.s, key.n, req->exptime, &v)
			       : storage_get_copy(key.s, key.n, r.buf + VALUE_HEAD_MAX,
						  COPY_VALUE_MAX, &v);
		if (touch)
			count(&stats.cmd_touch);
		count(&stats.cmd_get);
		if (rc == STORAGE_OK) {
			count(touch ? &stats.touch_hits : &stats.get_hits);
			send_value(c, key, &v, with_cas, &r);
		} else {
			count(touch ? &stats.touch_misses : &stats.get_misses);
		}
	}
	send_str(c, "END\r\n");
}

/* --- meta commands ---------------------------------------------------------------------------- */

/* A reply line being built (the longest: "VA", numbers, an opaque and a base64 key). */
struct line {
	char b[1024];
	size_t n;
};

static void line_mem(struct line *l, const void *p, size_t n)
{
	if (n > sizeof(l->b) - l->n)
		n = sizeof(l->b) - l->n; /* cannot happen with the limits parse.c enforces */
	memcpy(l->b + l->n, p, n);
	l->n += n;
}

static void line_str(struct line *l, const char *s)
{
	line_mem(l, s, strlen(s));
}

static void line_fmt(struct line *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void line_fmt(struct line *l, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(l->b + l->n, sizeof(l->b) - l->n, fmt, ap);
	va_end(ap);
	if (n > 0)
		l->n += (size_t)n < sizeof(l->b) - l->n ? (size_t)n : sizeof(l->b) - l->n - 1;
}

static void line_send(struct pconn *c, struct line *l)
{
	line_str(l, "\r\n");
	io_send_copy(c->io, l->b, l->n);
}

/* " k<key>", base64 with a trailing " b" when the client sent it that way. */
static void line_key(struct line *l, const void *key, size_t n, bool binary)
{
	line_str(l, " k");
	if (!binary) {
		line_mem(l, key, n);
		return;
	}
	char enc[(MC_KEY_MAX + 2) / 3 * 4];
	line_mem(l, enc, mc_base64_encode(key, n, enc));
	line_str(l, " b");
}

/* The flag tokens of a meta request, one at a time (NULL-free: t.n == 0 at the end). */
static struct mc_token next_flag(const char **p, const struct mc_meta *m)
{
	return mc_next_key(p, m->tokens.s + m->tokens.n);
}

/* The O and k fields, in request order (the replies that carry nothing else). */
static void line_opaque_key(struct line *l, const struct mc_meta *m, struct mc_token key)
{
	const char *p = m->tokens.s;
	for (size_t i = 0; i < m->ntokens; i++) {
		struct mc_token t = next_flag(&p, m);
		if (t.s[0] == 'O') {
			line_str(l, " ");
			line_mem(l, t.s, t.n);
		} else if (t.s[0] == 'k') {
			line_key(l, key.s, key.n, m->key_binary);
		}
	}
}

/*
 * What memcached prints for t: the seconds left, or -1 for never. An already expired item
 * holds memcached's internal time 1, printed as 1 - now on its 32-bit clock (which starts 62 s
 * before the process): mirrored here from this server's own start.
 */
static void line_ttl(struct line *l, int64_t ttl)
{
	if (ttl == 0)
		line_str(l, " t-1");
	else if (ttl > 0)
		line_fmt(l, " t%" PRId64, ttl);
	else
		line_fmt(l, " t%" PRIu32, (uint32_t)(1 - (time(NULL) - process_started + 62)));
}

/* storage_ttl_left's figure as a ttl for line_ttl: -1 (never) is 0; an item read while live
 * has at least 1 second left, as memcached would print for it. */
static int64_t view_ttl(int64_t ttl)
{
	return ttl == -1 ? 0 : ttl < 1 ? 1 : ttl;
}

/* Whether flag token a comes before flag token b (both present). */
static bool flag_before(const struct mc_meta *m, char a, char b)
{
	const char *p = m->tokens.s;
	for (size_t i = 0; i < m->ntokens; i++) {
		struct mc_token t = next_flag(&p, m);
		if (t.s[0] == a)
			return true;
		if (t.s[0] == b)
			return false;
	}
	return false;
}

/*
 * The expiry memcached's mg and ma give an item they create (N): the item starts without one,
 * then the reply loop applies T and N in order, stopping at an O token that is too long.
 */
static int32_t vivify_exptime(const struct mc_request *req)
{
	const struct mc_meta *m = &req->meta;
	int32_t exptime = 0;
	const char *p = m->tokens.s;
	for (size_t i = 0; i < m->ntokens; i++) {
		struct mc_token t = next_flag(&p, m);
		if (t.s[0] == 'O' && t.n > MC_OPAQUE_MAX)
			break;
		if (t.s[0] == 'T')
			exptime = req->exptime;
		else if (t.s[0] == 'N')
			exptime = m->vivify_exptime;
	}
	return exptime;
}

static void cmd_mg(struct pconn *c, const struct mc_request *req, struct mc_token key)
{
	const struct mc_meta *m = &req->meta;
	bool late_error = req->error == MC_ERR_OPAQUE;
	/* memcached fails a too-long O while writing the reply: T flags before it were applied,
	 * and no win token is handed out */
	/* memcached reads these flags' items locked and counts the read after the reply, which a
	 * late error skips; the others are counted at the lookup */
	bool locked = m->has_ttl || m->vivify || m->has_recache || mc_meta_has(m, 'h') ||
		      mc_meta_has(m, 'l');
	struct storage_mget_args a = {
		.no_bump = mc_meta_has(m, 'u') || (late_error && locked),
		.touch = m->has_ttl && (!late_error || m->ttl_before_opaque),
		.vivify = m->vivify,
		.recache = m->has_recache,
		.touch_before_recache = flag_before(m, 'T', 'R'),
		.no_win = late_error,
		.exptime = req->exptime,
		.vivify_exptime = m->vivify ? vivify_exptime(req) : 0,
		.recache_exptime = m->recache_exptime,
	};
	struct storage_view v;
	struct storage_meta meta;
	int rc = storage_mget(key.s, key.n, &a, &v, &meta);
	if (m->has_ttl)
		count(&stats.cmd_touch);
	else
		count(&stats.cmd_get);
	if (rc == STORAGE_OK)
		count(m->has_ttl ? &stats.touch_hits : &stats.get_hits);
	else
		count(m->has_ttl ? &stats.touch_misses : &stats.get_misses);
	if (late_error) {
		if (rc == STORAGE_OK)
			storage_release(v.pin);
		send_str(c, "CLIENT_ERROR opaque token too long\r\n");
		return;
	}
	struct line l = { .n = 0 };
	if (rc != STORAGE_OK) { /* a miss, or no room to vivify (memcached answers EN too) */
		if (m->quiet)
			return;
		line_str(&l, "EN");
		line_opaque_key(&l, m, key);
		line_send(c, &l);
		return;
	}
	if (m->value)
		line_fmt(&l, "VA %zu", v.len);
	else
		line_str(&l, "HD");
	/* the ttl as memcached's reply loop sees it: T (and N on a created item) set it in order */
	int64_t ttl = meta.created ? 0 : view_ttl(storage_ttl_left(meta.expires_before));
	const char *p = m->tokens.s;
	for (size_t i = 0; i < m->ntokens; i++) {
		struct mc_token t = next_flag(&p, m);
		switch (t.s[0]) {
		case 'T': ttl = ttl_from_exptime(req->exptime); break;
		case 'N':
			if (meta.created)
				ttl = ttl_from_exptime(m->vivify_exptime);
			break;
		case 's': line_fmt(&l, " s%zu", v.len); break;
		case 't': line_ttl(&l, ttl); break;
		case 'c': line_fmt(&l, " c%" PRIu64, v.cas); break;
		case 'f': line_fmt(&l, " f%" PRIu32, v.flags); break;
		case 'l': line_fmt(&l, " l%" PRIu32, meta.last_access); break;
		case 'h': line_str(&l, meta.fetched ? " h1" : " h0"); break;
		case 'O':
			line_str(&l, " ");
			line_mem(&l, t.s, t.n);
			break;
		/* the key as the item was stored: base64 only if it was written with ms b */
		case 'k': line_key(&l, key.s, key.n, meta.key_binary); break;
		default: break;
		}
	}
	/* memcached's order: Z (a token was already out), X (stale), W (this read won) */
	if (meta.win_token_sent)
		line_str(&l, " Z");
	if (meta.stale)
		line_str(&l, " X");
	if (meta.won)
		line_str(&l, " W");
	if (!m->value) {
		line_send(c, &l);
		storage_release(v.pin);
		return;
	}
	line_str(&l, "\r\n");
	if (v.len <= COPY_VALUE_MAX && l.n + v.len + 2 <= sizeof(l.b)) {
		line_mem(&l, v.value, v.len);
		line_send(c, &l);
		storage_release(v.pin);
	} else {
		io_send_copy(c->io, l.b, l.n);
		io_send_ref(c->io, v.value, v.len, release_pin, v.pin);
		io_send_copy(c->io, "\r\n", 2);
	}
}

/* ms's mode as a commit op: with C, set and replace compare (I: stale if older), append and
 * prepend compare a nonzero cas, add ignores it (memcached 1.6.18's process_mset_command). */
static enum storage_op meta_set_op(const struct mc_meta *m)
{
	enum storage_op cas_op = mc_meta_has(m, 'I') ? STORAGE_CAS_STALE : STORAGE_CAS;
	switch (m->mode) {
	case 'E': return STORAGE_ADD;
	case 'A': return STORAGE_APPEND;
	case 'P': return STORAGE_PREPEND;
	case 'R': return m->has_cas ? cas_op : STORAGE_REPLACE;
	default: return m->has_cas ? cas_op : STORAGE_SET;
	}
}

static void cmd_ms(struct pconn *c, const struct mc_request *req, struct mc_token key)
{
	const struct mc_meta *m = &req->meta;
	count(&stats.cmd_set);
	struct storage_reservation *res;
	int rc = storage_reserve(key.s, key.n, req->flags, req->exptime, (size_t)req->vlen, &res);
	if (rc != STORAGE_OK) {
		send_str(c, rc == STORAGE_TOO_LARGE
				    ? "SERVER_ERROR object too large for cache\r\n"
				    : "SERVER_ERROR out of memory storing object\r\n");
		c->state = ST_SWALLOW;
		c->left = (size_t)req->vlen + 2;
		storage_delete(key.s, key.n); /* memcached drops the old value whatever the mode */
		return;
	}
	c->meta_set = true;
	c->meta_quiet = m->quiet;
	size_t nf = 0;
	const char *p = m->tokens.s;
	for (size_t i = 0; i < m->ntokens; i++) {
		struct mc_token t = next_flag(&p, m);
		if (t.s[0] == 'O' || t.s[0] == 'k' || t.s[0] == 'c')
			c->meta_fields[nf++] = t.s[0];
		if (t.s[0] == 'O') {
			memcpy(c->opaque, t.s, t.n);
			c->nopaque = t.n;
		}
	}
	c->meta_fields[nf] = '\0';
	c->meta_key_binary = m->key_binary;
	if (m->key_binary)
		storage_set_key_binary(res);
	memcpy(c->key, key.s, key.n);
	c->nkey = key.n;
	c->res = res;
	c->op = meta_set_op(m);
	c->cas = m->has_cas ? req->cas : 0;
	c->left = (size_t)req->vlen;
	c->nterm = 0;
	c->state = ST_DATA;
}

/* The reply to an ms once its value is in: rc from storage_commit, cas the new one (or 0). */
static void finish_meta_set(struct pconn *c, int rc, uint64_t cas)
{
	c->meta_set = false;
	if (rc == STORAGE_STORED && c->meta_quiet)
		return;
	struct line l = { .n = 0 };
	switch (rc) {
	case STORAGE_STORED: line_str(&l, "HD"); break;
	case STORAGE_EXISTS: line_str(&l, "EX"); break;
	case STORAGE_NOT_FOUND: line_str(&l, "NF"); break;
	default: line_str(&l, "NS"); break; /* not stored, or an append that no longer fits */
	}
	for (const char *f = c->meta_fields; *f; f++) {
		if (*f == 'O') {
			line_str(&l, " ");
			line_mem(&l, c->opaque, c->nopaque);
		} else if (*f == 'k') {
			line_key(&l, c->key, c->nkey, c->meta_key_binary);
		} else {
			line_fmt(&l, " c%" PRIu64, rc == STORAGE_STORED ? cas : 0);
		}
	}
	line_send(c, &l);
}

static void cmd_md(struct pconn *c, const struct mc_request *req, struct mc_token key)
{
	const struct mc_meta *m = &req->meta;
	struct line l = { .n = 0 };
	bool stale = mc_meta_has(m, 'I'); /* I: keep the item, marked stale (T sets its ttl) */
	int rc = storage_mdelete(key.s, key.n, m->has_cas, req->cas, stale, stale && m->has_ttl,
				 req->exptime);
	switch (rc) {
	case STORAGE_DELETED:
		if (!stale)
			count(&stats.delete_hits);
		if (m->quiet)
			return;
		line_str(&l, "HD");
		break;
	case STORAGE_EXISTS:
		count(&stats.delete_misses);
		line_str(&l, "EX");
		break;
	case STORAGE_NO_MEMORY: send_str(c, "SERVER_ERROR out of memory\r\n"); return;
	default: count(&stats.delete_misses); line_str(&l, "NF");
	}
	line_opaque_key(&l, m, key);
	line_send(c, &l);
}

/*
 * ma's N: creates the counter at J. memcached creates it without expiry, then its reply loop
 * applies T and N in order, stopping at an O token that is too long: same result here.
 */
static int meta_vivify(const struct mc_request *req, struct mc_token key, uint64_t *cas)
{
	const struct mc_meta *m = &req->meta;
	int32_t exptime = vivify_exptime(req);
	char num[24];
	int n = snprintf(num, sizeof(num), "%" PRIu64, m->initial);
	struct storage_reservation *res;
	int rc = storage_reserve(key.s, key.n, 0, exptime, (size_t)n, &res);
	if (rc != STORAGE_OK)
		return rc;
	storage_fill(res, num, (size_t)n);
	return storage_commit(res, STORAGE_ADD, 0, cas);
}

static void cmd_ma(struct pconn *c, const struct mc_request *req, struct mc_token key)
{
	const struct mc_meta *m = &req->meta;
	bool incr = m->mode != 'D' && m->mode != '-';
	bool late_error = req->error == MC_ERR_OPAQUE;
	/*
	 * memcached applies T to the item it incremented in place; when the number grew longer
	 * it stored a new item and T lands on the old, unlinked one (the reply's t still shows
	 * it). So look at the old length (and ttl) first.
	 */
	size_t old_len = 0;
	int64_t ttl = 0;
	if (m->has_ttl || mc_meta_has(m, 't')) {
		/* a look that memcached's ma does not count as a read */
		struct storage_mget_args look = { .no_bump = true, .no_win = true };
		struct storage_view v;
		struct storage_meta meta;
		if (storage_mget(key.s, key.n, &look, &v, &meta) == STORAGE_OK) {
			old_len = v.len;
			ttl = view_ttl(storage_ttl_left(v.expires));
			storage_release(v.pin);
		}
	}
	uint64_t value = 0, cas = 0;
	int rc = storage_incr(key.s, key.n, incr, req->delta, m->has_cas ? req->cas : 0, &value,
			      &cas);
	bool created = false;
	struct line l = { .n = 0 };
	switch (rc) {
	case STORAGE_OK: count(incr ? &stats.incr_hits : &stats.decr_hits); break;
	case STORAGE_NON_NUMERIC:
		send_str(c, "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n");
		return;
	case STORAGE_NO_MEMORY: send_str(c, "SERVER_ERROR out of memory\r\n"); return;
	case STORAGE_EXISTS: /* C given and the item's cas differs */
		if (late_error) {
			send_str(c, "CLIENT_ERROR opaque token too long\r\n");
			return;
		}
		line_str(&l, "EX");
		line_opaque_key(&l, m, key);
		line_send(c, &l);
		return;
	default:
		if (!m->vivify) {
			count(incr ? &stats.incr_misses : &stats.decr_misses);
			if (late_error) {
				send_str(c, "CLIENT_ERROR opaque token too long\r\n");
				return;
			}
			line_str(&l, "NF");
			line_opaque_key(&l, m, key);
			line_send(c, &l);
			return;
		}
		rc = meta_vivify(req, key, &cas);
		if (rc == STORAGE_TOO_LARGE || rc == STORAGE_NO_MEMORY) {
			send_str(c, "SERVER_ERROR Out of memory allocating new item\r\n");
			return;
		}
		if (rc != STORAGE_STORED) { /* another client created it meanwhile */
			line_str(&l, "NS");
			line_opaque_key(&l, m, key);
			line_send(c, &l);
			return;
		}
		created = true;
		value = m->initial;
	}
	char num[24];
	int nnum = snprintf(num, sizeof(num), "%" PRIu64, value);
	bool in_place = !created && (size_t)nnum <= old_len;
	if (in_place && m->has_ttl && (!late_error || m->ttl_before_opaque)) {
		/* memcached sets the expiry on the item it holds: not a read (no fetched mark) */
		struct storage_mget_args t = {
			.no_bump = true, .no_win = true, .touch = true, .exptime = req->exptime
		};
		struct storage_view v;
		struct storage_meta meta;
		if (storage_mget(key.s, key.n, &t, &v, &meta) == STORAGE_OK)
			storage_release(v.pin);
	}
	if (late_error) {
		send_str(c, "CLIENT_ERROR opaque token too long\r\n");
		return;
	}
	if (rc == STORAGE_OK && m->quiet)
		return;
	/* the ttl as memcached's reply loop sees it: T (and N on a new item) set it in order */
	if (created)
		ttl = 0;
	if (m->value)
		line_fmt(&l, "VA %d", nnum);
	else
		line_str(&l, "HD");
	const char *p = m->tokens.s;
	for (size_t i = 0; i < m->ntokens; i++) {
		struct mc_token t = next_flag(&p, m);
		switch (t.s[0]) {
		case 'c': line_fmt(&l, " c%" PRIu64, cas); break;
		case 't': line_ttl(&l, ttl); break;
		case 'T': ttl = ttl_from_exptime(req->exptime); break;
		case 'N':
			if (created)
				ttl = ttl_from_exptime(m->vivify_exptime);
			break;
		case 'O':
			line_str(&l, " ");
			line_mem(&l, t.s, t.n);
			break;
		case 'k': line_key(&l, key.s, key.n, m->key_binary); break;
		default: break;
		}
	}
	if (m->value) {
		line_str(&l, "\r\n");
		line_mem(&l, num, (size_t)nnum);
	}
	line_send(c, &l);
}

/*
 * me: memcached's debug line for an item, "ME <key> exp=<-ttl or -1> la=<secs> cas=<n>
 * fetch=<yes|no> cls=<class> size=<bytes>" (exp is the time since expiry, so negative while the
 * item lives). Nothing is counted as a read. cls and size are this store's own (README).
 */
static void cmd_me(struct pconn *c, struct mc_token key)
{
	struct storage_mget_args look = { .no_bump = true, .no_win = true };
	struct storage_view v;
	struct storage_meta meta;
	if (storage_mget(key.s, key.n, &look, &v, &meta) != STORAGE_OK) {
		send_str(c, "EN\r\n");
		return;
	}
	int64_t left = storage_ttl_left(v.expires);
	struct line l = { .n = 0 };
	line_str(&l, "ME ");
	if (meta.key_binary) {
		char enc[(MC_KEY_MAX + 2) / 3 * 4];
		line_mem(&l, enc, mc_base64_encode((const unsigned char *)key.s, key.n, enc));
	} else {
		line_mem(&l, key.s, key.n);
	}
	line_fmt(&l, " exp=%" PRId64 " la=%" PRIu32 " cas=%" PRIu64 " fetch=%s cls=%u size=%zu",
		 left == -1 ? -1 : -left, meta.last_access, v.cas, meta.fetched ? "yes" : "no",
		 meta.cls, meta.size);
	storage_release(v.pin);
	line_send(c, &l);
}

static const char *meta_error(enum mc_error e)
{
	switch (e) {
	case MC_ERR_DUP_FLAG: return "CLIENT_ERROR duplicate flag\r\n";
	case MC_ERR_INVALID_FLAG: return "CLIENT_ERROR invalid flag\r\n";
	case MC_ERR_FLAG_MD_MA: return "CLIENT_ERROR invalid or duplicate flag\r\n";
	case MC_ERR_BAD_TOKEN: return "CLIENT_ERROR bad token in command line format\r\n";
	case MC_ERR_KEY_DECODE: return "CLIENT_ERROR error decoding key\r\n";
	case MC_ERR_M_LENGTH: return "CLIENT_ERROR incorrect length for M token\r\n";
	case MC_ERR_INITIAL: return "CLIENT_ERROR invalid numeric initial value\r\n";
	case MC_ERR_DELTA_VALUE: return "CLIENT_ERROR invalid numeric delta value\r\n";
	case MC_ERR_MS_MODE: return "CLIENT_ERROR invalid mode for ms M token\r\n";
	case MC_ERR_MA_MODE: return "CLIENT_ERROR invalid mode for ma M token\r\n";
	case MC_ERR_OPAQUE: return "CLIENT_ERROR opaque token too long\r\n";
	case MC_ERR_MG_TOO_LONG: return "CLIENT_ERROR options flags are too long\r\n";
	case MC_ERR_TOO_LONG: return "CLIENT_ERROR options flags too long\r\n";
	default: return "CLIENT_ERROR bad command line format\r\n";
	}
}

/* mg, ms, md, ma: errors are always sent (q hides only the nominal replies). */
static void cmd_meta(struct pconn *c, const struct mc_request *req)
{
	const struct mc_meta *m = &req->meta;
	bool late = req->error == MC_ERR_OPAQUE && (req->verb == MC_MG || req->verb == MC_MA);
	if (req->verb == MC_ME && req->error != MC_OK) {
		send_str(c, "CLIENT_ERROR bad command line format\r\n");
		return;
	}
	const char *err = NULL;
	if (req->error != MC_OK && !late)
		err = meta_error(req->error);
	if (err) {
		send_str(c, err);
		if (req->verb == MC_MS && m->data_follows) {
			c->state = ST_SWALLOW;
			c->left = (size_t)req->vlen + 2;
		}
		return;
	}
	struct mc_token key = req->keys;
	unsigned char decoded[MC_KEY_MAX];
	if (m->key_binary) {
		key.n = mc_base64_decode(req->keys.s, req->keys.n, decoded);
		key.s = (const char *)decoded;
	}
	switch (req->verb) {
	case MC_MG: cmd_mg(c, req, key); break;
	case MC_MS: cmd_ms(c, req, key); break;
	case MC_MD: cmd_md(c, req, key); break;
	case MC_ME: cmd_me(c, key); break;
	default: cmd_ma(c, req, key); break;
	}
}

static enum storage_op storage_op_of(enum mc_verb verb)
{
	switch (verb) {
	case MC_ADD: return STORAGE_ADD;
	case MC_REPLACE: return STORAGE_REPLACE;
	case MC_APPEND: return STORAGE_APPEND;
	case MC_PREPEND: return STORAGE_PREPEND;
	case MC_CAS: return STORAGE_CAS;
	default: return STORAGE_SET;
	}
}

/* A classic storage command's line: its value comes next (see start_value). */
static void cmd_update(struct pconn *c, const struct mc_request *req)
{
	struct mc_token key = req->keys;
	count(&stats.cmd_set);
	memcpy(c->key, key.s, key.n);
	c->nkey = key.n;
	c->op = storage_op_of(req->verb);
	c->cas = req->cas;
	c->flags = req->flags;
	c->exptime = req->exptime;
	c->left = (size_t)req->vlen;
	c->state = ST_VALUE_START;
}

/* A write that could not start (or, stored in one call, could not fit): memcached's reply,
 * and a set never leaves the old value behind. */
static void write_failed(struct pconn *c, int rc)
{
	reply(c, rc == STORAGE_TOO_LARGE ? "SERVER_ERROR object too large for cache\r\n"
					 : "SERVER_ERROR out of memory storing object\r\n");
	if (c->op == STORAGE_SET)
		storage_delete(c->key, c->nkey);
}

/* The reply to a classic storage command once its value is in: rc from the commit. */
static void report_write(struct pconn *c, int rc)
{
	if (c->op == STORAGE_CAS) {
		count(rc == STORAGE_STORED   ? &stats.cas_hits
		      : rc == STORAGE_EXISTS ? &stats.cas_badval
					     : &stats.cas_misses);
	}
	switch (rc) {
	case STORAGE_STORED: reply(c, "STORED\r\n"); break;
	case STORAGE_NOT_STORED: reply(c, "NOT_STORED\r\n"); break;
	case STORAGE_EXISTS: reply(c, "EXISTS\r\n"); break;
	case STORAGE_NOT_FOUND: reply(c, "NOT_FOUND\r\n"); break;
	case STORAGE_TOO_LARGE: reply(c, "SERVER_ERROR object too large for cache\r\n"); break;
	default: reply(c, "SERVER_ERROR out of memory storing object\r\n"); break;
	}
}

/*
 * The value of a classic storage command starts at data (len bytes received so far, maybe
 * none). When all of it and its "\r\n" are there (the common case: the value came with its
 * command line) it is stored in one call, straight from the receive buffer; otherwise room is
 * reserved now, as the command line asks, and filled as the value arrives. Returns the bytes
 * used.
 */
static size_t start_value(struct pconn *c, const char *data, size_t len)
{
	size_t vlen = c->left;
	if (len >= vlen && len - vlen >= 2 && data[vlen] == '\r' && data[vlen + 1] == '\n') {
		c->state = ST_LINE;
		int rc = storage_store(c->key, c->nkey, c->flags, c->exptime, data, vlen, c->op,
				       c->cas, NULL);
		/* the errors a reserve would have given: the same reply as then */
		if (rc == STORAGE_TOO_LARGE || rc == STORAGE_NO_MEMORY || rc == STORAGE_INVALID)
			write_failed(c, rc);
		else
			report_write(c, rc);
		return vlen + 2;
	}
	struct storage_reservation *res;
	int rc = storage_reserve(c->key, c->nkey, c->flags, c->exptime, vlen, &res);
	if (rc != STORAGE_OK) {
		write_failed(c, rc);
		c->state = ST_SWALLOW;
		c->left = vlen + 2;
		return 0;
	}
	c->res = res;
	c->nterm = 0;
	c->state = ST_DATA;
	return 0;
}

static void finish_update(struct pconn *c)
{
	struct storage_reservation *res = c->res;
	c->res = NULL;
	c->state = ST_LINE;
	if (c->term[0] != '\r' || c->term[1] != '\n') {
		storage_cancel(res);
		c->noreply = c->noreply && !c->meta_set; /* an ms always reports it */
		c->meta_set = false;
		reply(c, "CLIENT_ERROR bad data chunk\r\n");
		return;
	}
	uint64_t new_cas = 0;
	int rc = storage_commit(res, c->op, c->cas, &new_cas);
	if (c->meta_set) {
		if (c->op == STORAGE_CAS) {
			count(rc == STORAGE_STORED   ? &stats.cas_hits
			      : rc == STORAGE_EXISTS ? &stats.cas_badval
						     : &stats.cas_misses);
		}
		finish_meta_set(c, rc, new_cas);
		return;
	}
	report_write(c, rc);
}

static void cmd_incr(struct pconn *c, const struct mc_request *req)
{
	bool incr = req->verb == MC_INCR;
	struct mc_token key = req->keys;
	uint64_t result;
	int rc = storage_incr(key.s, key.n, incr, req->delta, 0, &result, NULL);
	char buf[32];
	switch (rc) {
	case STORAGE_OK:
		count(incr ? &stats.incr_hits : &stats.decr_hits);
		snprintf(buf, sizeof(buf), "%" PRIu64 "\r\n", result);
		reply(c, buf);
		break;
	case STORAGE_NON_NUMERIC:
		reply(c, "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n");
		break;
	case STORAGE_NO_MEMORY: reply(c, "SERVER_ERROR out of memory\r\n"); break;
	default: count(incr ? &stats.incr_misses : &stats.decr_misses); reply(c, "NOT_FOUND\r\n");
	}
}

static void cmd_delete(struct pconn *c, const struct mc_request *req)
{
	struct mc_token key = req->keys;
	if (storage_delete(key.s, key.n) == STORAGE_DELETED) {
		count(&stats.delete_hits);
		reply(c, "DELETED\r\n");
	} else {
		count(&stats.delete_misses);
		reply(c, "NOT_FOUND\r\n");
	}
}

static void cmd_touch(struct pconn *c, const struct mc_request *req)
{
	struct mc_token key = req->keys;
	count(&stats.cmd_touch);
	if (storage_touch(key.s, key.n, req->exptime) == STORAGE_OK) {
		count(&stats.touch_hits);
		reply(c, "TOUCHED\r\n");
	} else {
		count(&stats.touch_misses);
		reply(c, "NOT_FOUND\r\n");
	}
}

static void cmd_flush_all(struct pconn *c, const struct mc_request *req)
{
	uint32_t delay = 0;
	if (req->exptime > 0) {
		int64_t ttl = ttl_from_exptime(req->exptime);
		delay = ttl > 0 ? (uint32_t)ttl : 0;
	}
	storage_flush(delay);
	reply(c, "OK\r\n");
}

static void cmd_verbosity(struct pconn *c, const struct mc_request *req)
{
	atomic_store(&verbosity, req->level > 2 ? 2 : (int)req->level);
	reply(c, "OK\r\n");
}

static void cmd_slabs_automove(struct pconn *c, const struct mc_request *req)
{
	/* this server has no slab mover to drive: the setting is kept for "stats settings" */
	if (req->ratio)
		automove_ratio = req->ratio_value;
	else
		atomic_store(&automove, (int)req->level);
	reply(c, "OK\r\n");
}

static void stat_line(void *ctx, const char *name, const char *value)
{
	struct pconn *c = ctx;
	char buf[256];
	int n = snprintf(buf, sizeof(buf), "STAT %s %s\r\n", name, value);
	io_send_copy(c->io, buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
}

static void stats_general(struct pconn *c)
{
	time_t now = time(NULL);
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	char buf[64];
	stat_u64(stat_line, c, "pid", (uint64_t)getpid());
	stat_u64(stat_line, c, "uptime", (uint64_t)(now - process_started));
	stat_u64(stat_line, c, "time", (uint64_t)now);
	stat_line(c, "version", SERVER_VERSION);
	stat_u64(stat_line, c, "pointer_size", sizeof(void *) * 8);
	snprintf(buf, sizeof(buf), "%ld.%06ld", (long)ru.ru_utime.tv_sec,
		 (long)ru.ru_utime.tv_usec);
	stat_line(c, "rusage_user", buf);
	snprintf(buf, sizeof(buf), "%ld.%06ld", (long)ru.ru_stime.tv_sec,
		 (long)ru.ru_stime.tv_usec);
	stat_line(c, "rusage_system", buf);
	struct io_stats ios = { 0 };
	if (server)
		io_get_stats(server, &ios);
	stat_u64(stat_line, c, "max_connections", settings.max_conns);
	stat_u64(stat_line, c, "curr_connections", ios.curr_connections);
	stat_u64(stat_line, c, "total_connections", ios.total_connections);
	stat_u64(stat_line, c, "rejected_connections", ios.rejected_connections);
	stat_u64(stat_line, c, "cmd_get", load(&stats.cmd_get));
	stat_u64(stat_line, c, "cmd_set", load(&stats.cmd_set));
	stat_u64(stat_line, c, "cmd_flush", load(&stats.cmd_flush));
	stat_u64(stat_line, c, "cmd_touch", load(&stats.cmd_touch));
	stat_u64(stat_line, c, "get_hits", load(&stats.get_hits));
	stat_u64(stat_line, c, "get_misses", load(&stats.get_misses));
	stat_u64(stat_line, c, "delete_misses", load(&stats.delete_misses));
	stat_u64(stat_line, c, "delete_hits", load(&stats.delete_hits));
	stat_u64(stat_line, c, "incr_misses", load(&stats.incr_misses));
	stat_u64(stat_line, c, "incr_hits", load(&stats.incr_hits));
	stat_u64(stat_line, c, "decr_misses", load(&stats.decr_misses));
	stat_u64(stat_line, c, "decr_hits", load(&stats.decr_hits));
	stat_u64(stat_line, c, "cas_misses", load(&stats.cas_misses));
	stat_u64(stat_line, c, "cas_hits", load(&stats.cas_hits));
	stat_u64(stat_line, c, "cas_badval", load(&stats.cas_badval));
	stat_u64(stat_line, c, "touch_hits", load(&stats.touch_hits));
	stat_u64(stat_line, c, "touch_misses", load(&stats.touch_misses));
	stat_u64(stat_line, c, "bytes_read", ios.bytes_read);
	stat_u64(stat_line, c, "bytes_written", ios.bytes_written);
	stat_u64(stat_line, c, "threads", settings.threads);
	stat_line(c, "storage", storage_name());
	stat_line(c, "io", io_name());
	storage_stats(stat_line, c);
}

static void stats_settings(struct pconn *c)
{
	char buf[32];
	stat_u64(stat_line, c, "maxbytes", settings.mem_limit);
	stat_u64(stat_line, c, "maxconns", settings.max_conns);
	stat_u64(stat_line, c, "tcpport", settings.port);
	stat_u64(stat_line, c, "udpport", 0);
	stat_line(c, "inter", settings.addr ? settings.addr : "NULL");
	stat_u64(stat_line, c, "verbosity", (uint64_t)atomic_load(&verbosity));
	stat_u64(stat_line, c, "num_threads", settings.threads);
	snprintf(buf, sizeof(buf), "%.2f", settings.growth);
	stat_line(c, "growth_factor", buf);
	stat_line(c, "cas_enabled", settings.cas_enabled ? "yes" : "no");
	stat_u64(stat_line, c, "item_size_max", settings.item_max);
	stat_u64(stat_line, c, "slab_automove", (uint64_t)atomic_load(&automove));
	snprintf(buf, sizeof(buf), "%.2f", atomic_load(&automove_ratio));
	stat_line(c, "slab_automove_ratio", buf);
	stat_line(c, "flush_enabled", settings.flush_disabled ? "no" : "yes");
	stat_line(c, "binding_protocol", "ascii");
	stat_line(c, "storage", storage_name());
	stat_line(c, "io", io_name());
}

/* "stats conns": the lines are gathered under the I/O module's lock, sent after it. */
struct conns_listing {
	char *buf;
	size_t len, cap;
	bool failed; /* out of memory: the listing is cut short */
};

static void conns_append(struct conns_listing *l, const char *fmt, int fd, const char *value)
{
	char line[160];
	int n = snprintf(line, sizeof(line), fmt, fd, value);
	if (n < 0 || l->failed)
		return;
	size_t len = (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1;
	if (l->len + len > l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 4096;
		while (cap < l->len + len)
			cap *= 2;
		char *p = realloc(l->buf, cap);
		if (!p) {
			l->failed = true;
			return;
		}
		l->buf = p;
		l->cap = cap;
	}
	memcpy(l->buf + l->len, line, len);
	l->len += len;
}

static void conns_line(void *ctx, const struct io_conn_info *info)
{
	struct conns_listing *l = ctx;
	char secs[24];
	snprintf(secs, sizeof(secs), "%" PRIu64, info->secs_since_last_cmd);
	conns_append(l, "STAT %d:addr %s\r\n", info->fd, info->addr);
	if (info->listen_addr)
		conns_append(l, "STAT %d:listen_addr %s\r\n", info->fd, info->listen_addr);
	conns_append(l, "STAT %d:state %s\r\n", info->fd, info->state);
	conns_append(l, "STAT %d:secs_since_last_cmd %s\r\n", info->fd, secs);
}

static void stats_conns(struct pconn *c)
{
	struct conns_listing l = { 0 };
	if (server)
		io_for_each_conn(server, c->io, conns_line, &l);
	if (l.failed) {
		free(l.buf);
		send_str(c, "SERVER_ERROR out of memory writing stats conns\r\n");
		return;
	}
	if (l.len)
		io_send_copy(c->io, l.buf, l.len);
	free(l.buf);
	send_str(c, "END\r\n");
}

static void reset_counters(void)
{
	_Atomic uint64_t *all[] = {
		&stats.cmd_get,      &stats.cmd_set,     &stats.cmd_flush,   &stats.cmd_touch,
		&stats.get_hits,     &stats.get_misses,  &stats.delete_hits, &stats.delete_misses,
		&stats.incr_hits,    &stats.incr_misses, &stats.decr_hits,   &stats.decr_misses,
		&stats.cas_hits,     &stats.cas_misses,  &stats.cas_badval,  &stats.touch_hits,
		&stats.touch_misses,
	};
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
		atomic_store(all[i], 0);
}

static void cmd_stats(struct pconn *c, const struct mc_request *req)
{
	switch (req->stats) {
	case MC_STATS_GENERAL: stats_general(c); break;
	case MC_STATS_SETTINGS: stats_settings(c); break;
	case MC_STATS_STORAGE: storage_stats(stat_line, c); break;
	case MC_STATS_ITEMS: storage_stats_items(stat_line, c); break;
	case MC_STATS_SLABS: storage_stats_slabs(stat_line, c); break;
	case MC_STATS_SIZES: /* item size histograms are not kept (memcached's default too) */
		stat_line(c, "sizes_status", "disabled");
		break;
	case MC_STATS_CONNS: stats_conns(c); return;
	case MC_STATS_RESET:
		reset_counters();
		send_str(c, "RESET\r\n");
		return;
	}
	send_str(c, "END\r\n");
}

static void close_conn(struct pconn *c)
{
	c->state = ST_CLOSED;
	io_close(c->io);
}

static const char *error_reply(enum mc_error e)
{
	switch (e) {
	case MC_ERR_EXPTIME: return "CLIENT_ERROR invalid exptime argument\r\n";
	case MC_ERR_DELTA: return "CLIENT_ERROR invalid numeric delta argument\r\n";
	case MC_ERR_DELETE_USAGE:
		return "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n";
	case MC_ERR_PLAIN: return "ERROR\r\n";
	default: return "CLIENT_ERROR bad command line format\r\n";
	}
}

/* Runs one parsed request: its store calls and its replies. */
static void execute(struct pconn *c, const struct mc_request *req)
{
	c->noreply = req->noreply;
	switch (req->verb) {
	case MC_MG:
	case MC_MS:
	case MC_MD:
	case MC_MA:
	case MC_ME: cmd_meta(c, req); return;
	case MC_MN: send_str(c, "MN\r\n"); return;
	default: break;
	}
	if (req->verb == MC_FLUSH_ALL) {
		/* memcached counts the command, then refuses it (-F) before reading its delay */
		count(&stats.cmd_flush);
		if (settings.flush_disabled) {
			reply(c, "CLIENT_ERROR flush_all not allowed\r\n");
			return;
		}
	}
	bool retrieval = req->verb == MC_GET || req->verb == MC_GETS || req->verb == MC_GAT ||
			 req->verb == MC_GATS;
	if (req->error != MC_OK && !(retrieval && req->error == MC_ERR_FORMAT)) {
		reply(c, error_reply(req->error));
		return;
	}
	switch (req->verb) {
	case MC_ERROR: send_str(c, "ERROR\r\n"); break;
	case MC_HTTP: close_conn(c); break; /* memcached drops HTTP requests silently */
	case MC_GET:
	case MC_GETS:
	case MC_GAT:
	case MC_GATS: cmd_get(c, req); break;
	case MC_SET:
	case MC_ADD:
	case MC_REPLACE:
	case MC_APPEND:
	case MC_PREPEND:
	case MC_CAS: cmd_update(c, req); break;
	case MC_INCR:
	case MC_DECR: cmd_incr(c, req); break;
	case MC_DELETE: cmd_delete(c, req); break;
	case MC_TOUCH: cmd_touch(c, req); break;
	case MC_STATS: cmd_stats(c, req); break;
	case MC_FLUSH_ALL: cmd_flush_all(c, req); break;
	case MC_VERSION: send_str(c, "VERSION " SERVER_VERSION "\r\n"); break;
	case MC_VERBOSITY: cmd_verbosity(c, req); break;
	case MC_QUIT: close_conn(c); break;
	case MC_SLABS_AUTOMOVE: cmd_slabs_automove(c, req); break;
	default: break; /* the meta commands, run above */
	}
}

/* One complete command line, without its "\r\n". */
static void process_line(struct pconn *c, const char *s, size_t len)
{
	struct mc_request req;
	mc_parse(s, len, &req);
	execute(c, &req);
	/* a set's noreply applies to the reply after its value */
	c->noreply = c->state == ST_LINE ? false : c->noreply;
}

/* Consumes value bytes (and the 2 bytes after the value); returns how many were used. */
static size_t consume_value(struct pconn *c, const char *data, size_t len)
{
	size_t used = 0;
	if (c->state == ST_DATA) {
		size_t k = len < c->left ? len : c->left;
		storage_fill(c->res, data, k);
		c->left -= k;
		used = k;
		if (c->left == 0)
			c->state = ST_DATA_END;
	}
	while (c->state == ST_DATA_END && used < len) {
		c->term[c->nterm++] = data[used++];
		if (c->nterm == 2)
			finish_update(c);
	}
	return used;
}

/*
 * The longest a line may grow while its '\n' has not arrived. memcached closes a connection
 * whose unfinished line passes 2048 bytes, unless it is a get/gets (any length); a line that
 * reaches it whole within one 16 KiB read is accepted, so the retrieval-and-touch commands
 * (whose keys make long lines) may be that long however the bytes are split across reads.
 */
static size_t line_limit(const char *s, size_t len)
{
	size_t i = 0;
	while (i < len && s[i] == ' ')
		i++;
	if (i > 100)
		return LINE_MAX_PLAIN;
	if ((len - i >= 4 && memcmp(s + i, "get ", 4) == 0) ||
	    (len - i >= 5 && memcmp(s + i, "gets ", 5) == 0))
		return LINE_MAX_GET;
	if ((len - i >= 4 && memcmp(s + i, "gat ", 4) == 0) ||
	    (len - i >= 5 && memcmp(s + i, "gats ", 5) == 0))
		return LINE_MAX_READ;
	return LINE_MAX_PLAIN;
}

static bool buffer_append(struct pconn *c, const char *data, size_t len)
{
	if (c->len + len > c->cap) {
		size_t cap = c->cap ? c->cap : 256;
		while (cap < c->len + len)
			cap *= 2;
		char *p = realloc(c->line, cap);
		if (!p)
			return false;
		c->line = p;
		c->cap = cap;
	}
	memcpy(c->line + c->len, data, len);
	c->len += len;
	return true;
}

static void handle_line(struct pconn *c, const char *s, size_t len)
{
	if (len > 0 && s[len - 1] == '\r')
		len--;
	process_line(c, s, len);
}

static void on_data(struct io_conn *io, void *state, const char *data, size_t len)
{
	struct pconn *c = state;
	(void)io;
	if (!c->seen_input && len > 0) {
		c->seen_input = true;
		if ((unsigned char)data[0] == 0x80) { /* binary protocol: not spoken here */
			close_conn(c);
			return;
		}
	}
	while (len > 0 && c->state != ST_CLOSED) {
		if (c->state == ST_SWALLOW) {
			size_t k = len < c->left ? len : c->left;
			c->left -= k;
			data += k;
			len -= k;
			if (c->left == 0)
				c->state = ST_LINE;
			continue;
		}
		if (c->state == ST_DATA || c->state == ST_DATA_END) {
			size_t k = consume_value(c, data, len);
			data += k;
			len -= k;
			continue;
		}
		const char *nl = memchr(data, '\n', len);
		if (!nl) {
			if (!buffer_append(c, data, len)) {
				send_str(c, "SERVER_ERROR out of memory reading request\r\n");
				close_conn(c);
				return;
			}
			if (c->len > line_limit(c->line, c->len))
				close_conn(c);
			return;
		}
		size_t k = (size_t)(nl - data) + 1;
		if (c->len > 0) {
			if (!buffer_append(c, data, k)) {
				send_str(c, "SERVER_ERROR out of memory reading request\r\n");
				close_conn(c);
				return;
			}
			handle_line(c, c->line, c->len - 1);
			c->len = 0;
			if (c->cap >
			    64 * 1024) { /* do not keep a huge buffer for a whole connection */
				free(c->line);
				c->line = NULL;
				c->cap = 0;
			}
		} else {
			handle_line(c, data, k - 1);
		}
		data += k;
		len -= k;
		if (c->state == ST_VALUE_START) {
			k = start_value(c, data, len);
			data += k;
			len -= k;
		}
	}
}

static void *on_accept(struct io_conn *io, void *ctx)
{
	(void)ctx;
	struct pconn *c = calloc(1, sizeof(*c));
	if (c)
		c->io = io;
	return c;
}

static void on_close(struct io_conn *io, void *state)
{
	(void)io;
	struct pconn *c = state;
	if (!c)
		return;
	if (c->res)
		storage_cancel(c->res);
	free(c->line);
	free(c);
}

void proto_init(const struct proto_settings *s, struct io_callbacks *cb)
{
	settings = *s;
	atomic_store(&verbosity, s->verbose);
	process_started = time(NULL);
	cb->on_accept = on_accept;
	cb->on_data = on_data;
	cb->on_close = on_close;
	cb->ctx = NULL;
}

void proto_set_server(struct io_server *srv)
{
	server = srv;
}
