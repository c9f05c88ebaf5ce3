/*
 * proto.c - the memcached 1.6 text protocol (doc/protocol.txt of memcached) on io.h and
 * storage.h.
 *
 * Each connection is a small state machine: reading a command line, filling a value into a
 * storage reservation, checking the "\r\n" after a value, or swallowing a refused value.
 * Input is borrowed from the I/O module, so a line that has not fully arrived is copied into
 * the connection's own buffer; values go straight into the store. Replies are queued through
 * io.h; large values are queued by reference to the pinned item and unpinned once written.
 * Reply strings, limits and their order of checks follow memcached 1.6 (proto_text.c).
 */
#include "proto.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "storage.h"

#define MC_VERSION "1.6.18-mcserver"
#define LINE_MAX_PLAIN 2048            /* memcached closes a connection past this without '\n' */
#define LINE_MAX_GET (4 * 1024 * 1024) /* multi-get lines may be long; cap them all the same */
#define MAX_TOKENS 24                  /* tokens looked at for non-get commands */
#define COPY_VALUE_MAX 1024            /* values up to this size are copied into the reply */
#define VALUE_HEAD_MAX (STORAGE_KEY_MAX + 96) /* "VALUE <key> <flags> <bytes> <cas>\r\n" */
#define REALTIME_MAXDELTA (60 * 60 * 24 * 30)

enum conn_state { ST_LINE, ST_DATA, ST_DATA_END, ST_SWALLOW, ST_CLOSED };

struct pconn {
	struct io_conn *io;
	enum conn_state state;
	char *line;             /* partial command line */
	size_t len, cap;
	bool seen_input;
	/* value being received */
	struct storage_reservation *res;
	size_t left;
	char term[2];
	size_t nterm;
	enum storage_op op;
	uint64_t cas;
	bool noreply;
};

struct token {
	const char *s;
	size_t n;
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

static void count(_Atomic uint64_t *c) { atomic_fetch_add_explicit(c, 1, memory_order_relaxed); }

static uint64_t load(_Atomic uint64_t *c) { return atomic_load_explicit(c, memory_order_relaxed); }

/* --- replies -------------------------------------------------------------------------------- */

static void send_str(struct pconn *c, const char *s) { io_send_copy(c->io, s, strlen(s)); }

/* memcached's out_string: suppressed (once) by noreply. */
static void reply(struct pconn *c, const char *s)
{
	if (c->noreply) {
		c->noreply = false;
		return;
	}
	send_str(c, s);
}

/* --- number parsing with memcached's safe_strto* rules ------------------------------------- */

/* A NUL-terminated copy of a token; *heap set when it had to be allocated. */
static char *tok_cstr(struct token t, char *small, size_t cap, char **heap)
{
	*heap = NULL;
	char *s = small;
	if (t.n >= cap) {
		s = *heap = malloc(t.n + 1);
		if (!s)
			return NULL;
	}
	memcpy(s, t.s, t.n);
	s[t.n] = '\0';
	return s;
}

static bool ends_ok(const char *s, const char *end)
{
	return isspace((unsigned char)*end) || (*end == '\0' && end != s);
}

static bool parse_u64(struct token t, uint64_t *out)
{
	char small[64], *heap;
	char *s = tok_cstr(t, small, sizeof(small), &heap);
	if (!s)
		return false;
	char *end;
	errno = 0;
	unsigned long long l = strtoull(s, &end, 10);
	bool ok = errno != ERANGE && end != s && ends_ok(s, end);
	if (ok && (long long)l < 0 && strchr(s, '-'))
		ok = false;
	free(heap);
	if (ok)
		*out = l;
	return ok;
}

static bool parse_u32(struct token t, uint32_t *out)
{
	uint64_t v;
	/* strtoul on a 64-bit long: same rules as strtoull, then truncated (memcached's quirk) */
	if (!parse_u64(t, &v))
		return false;
	*out = (uint32_t)v;
	return true;
}

static bool parse_i32(struct token t, int32_t *out)
{
	char small[64], *heap;
	char *s = tok_cstr(t, small, sizeof(small), &heap);
	if (!s)
		return false;
	char *end;
	errno = 0;
	long l = strtol(s, &end, 10);
	bool ok = errno != ERANGE && end != s && ends_ok(s, end);
	free(heap);
	if (ok)
		*out = (int32_t)l; /* truncated like memcached's safe_strtol into an int32 */
	return ok;
}

static bool tok_is(struct token t, const char *s)
{
	size_t n = strlen(s);
	return t.n == n && memcmp(t.s, s, n) == 0;
}

/* memcached's exptime rules as seconds from now (0 never, <0 already past): flush_all's delay. */
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

static bool set_noreply_maybe(struct pconn *c, const struct token *tok, size_t n)
{
	c->noreply = tok_is(tok[n - 1], "noreply");
	return c->noreply;
}

/* --- commands --------------------------------------------------------------------------------- */

static void release_pin(void *pin) { storage_release(pin); }

/* One VALUE reply: header, then a value of up to COPY_VALUE_MAX bytes at VALUE_HEAD_MAX (where
 * storage_get_copy puts it), then "\r\n". */
struct value_reply {
	char buf[VALUE_HEAD_MAX + COPY_VALUE_MAX + 2];
};

static void send_value(struct pconn *c, struct token key, const struct storage_view *v,
		       bool with_cas, struct value_reply *r)
{
	char head[VALUE_HEAD_MAX];
	int n = with_cas ? snprintf(head, sizeof(head), "VALUE %.*s %" PRIu32 " %zu %" PRIu64 "\r\n",
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

static void cmd_get(struct pconn *c, const struct token *tok, size_t n, bool with_cas,
		    bool touch)
{
	size_t first = 1;
	int32_t exptime = 0;
	if (touch) {
		if (!parse_i32(tok[1], &exptime)) {
			reply(c, "CLIENT_ERROR invalid exptime argument\r\n");
			return;
		}
		first = 2;
	}
	struct value_reply r;
	/* A key over the limit makes memcached drop the whole reply, after it has already looked
	 * up (and for gat, touched) the keys before it: do the same, without sending them. */
	size_t bad = first;
	while (bad < n && tok[bad].n <= STORAGE_KEY_MAX)
		bad++;
	if (bad < n) {
		for (size_t i = first; i < bad; i++) {
			struct storage_view v;
			int rc = touch ? storage_gat(tok[i].s, tok[i].n, exptime, &v)
				       : storage_get_copy(tok[i].s, tok[i].n, r.buf + VALUE_HEAD_MAX,
							  COPY_VALUE_MAX, &v);
			if (rc == STORAGE_OK)
				storage_release(v.pin);
		}
		reply(c, "CLIENT_ERROR bad command line format\r\n");
		return;
	}
	for (size_t i = first; i < n; i++) {
		struct storage_view v;
		int rc = touch ? storage_gat(tok[i].s, tok[i].n, exptime, &v)
			       : storage_get_copy(tok[i].s, tok[i].n, r.buf + VALUE_HEAD_MAX,
						  COPY_VALUE_MAX, &v);
		if (touch)
			count(&stats.cmd_touch);
		count(&stats.cmd_get);
		if (rc == STORAGE_OK) {
			count(touch ? &stats.touch_hits : &stats.get_hits);
			send_value(c, tok[i], &v, with_cas, &r);
		} else {
			count(touch ? &stats.touch_misses : &stats.get_misses);
		}
	}
	send_str(c, "END\r\n");
}

static void cmd_update(struct pconn *c, const struct token *tok, size_t n, enum storage_op op)
{
	set_noreply_maybe(c, tok, n);
	uint32_t flags;
	int32_t exptime, vlen;
	uint64_t cas = 0;
	if (tok[1].n > STORAGE_KEY_MAX) {
		reply(c, "CLIENT_ERROR bad command line format\r\n");
		return;
	}
	if (!parse_u32(tok[2], &flags) || !parse_i32(tok[3], &exptime) ||
	    !parse_i32(tok[4], &vlen)) {
		reply(c, "CLIENT_ERROR bad command line format\r\n");
		return;
	}
	if (op == STORAGE_CAS && !parse_u64(tok[5], &cas)) {
		reply(c, "CLIENT_ERROR bad command line format\r\n");
		return;
	}
	if (vlen < 0 || vlen > INT_MAX - 2) {
		reply(c, "CLIENT_ERROR bad command line format\r\n");
		return;
	}
	count(&stats.cmd_set);
	struct storage_reservation *res;
	int rc = storage_reserve(tok[1].s, tok[1].n, flags, exptime, (size_t)vlen, &res);
	if (rc != STORAGE_OK) {
		reply(c, rc == STORAGE_TOO_LARGE ? "SERVER_ERROR object too large for cache\r\n"
						 : "SERVER_ERROR out of memory storing object\r\n");
		c->state = ST_SWALLOW;
		c->left = (size_t)vlen + 2;
		/* memcached: never leave the old value behind a failed set */
		if (op == STORAGE_SET)
			storage_delete(tok[1].s, tok[1].n);
		return;
	}
	c->res = res;
	c->op = op;
	c->cas = cas;
	c->left = (size_t)vlen;
	c->nterm = 0;
	c->state = ST_DATA;
}

static void finish_update(struct pconn *c)
{
	struct storage_reservation *res = c->res;
	c->res = NULL;
	c->state = ST_LINE;
	if (c->term[0] != '\r' || c->term[1] != '\n') {
		storage_cancel(res);
		reply(c, "CLIENT_ERROR bad data chunk\r\n");
		return;
	}
	enum storage_op op = c->op;
	int rc = storage_commit(res, op, c->cas, NULL);
	if (op == STORAGE_CAS) {
		count(rc == STORAGE_STORED ? &stats.cas_hits
		      : rc == STORAGE_EXISTS ? &stats.cas_badval : &stats.cas_misses);
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

static void cmd_incr(struct pconn *c, const struct token *tok, size_t n, bool incr)
{
	set_noreply_maybe(c, tok, n);
	if (tok[1].n > STORAGE_KEY_MAX) {
		reply(c, "CLIENT_ERROR bad command line format\r\n");
		return;
	}
	uint64_t delta, result;
	if (!parse_u64(tok[2], &delta)) {
		reply(c, "CLIENT_ERROR invalid numeric delta argument\r\n");
		return;
	}
	int rc = storage_incr(tok[1].s, tok[1].n, incr, delta, &result);
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
	case STORAGE_NO_MEMORY:
		reply(c, "SERVER_ERROR out of memory\r\n");
		break;
	default:
		count(incr ? &stats.incr_misses : &stats.decr_misses);
		reply(c, "NOT_FOUND\r\n");
	}
}

static void cmd_delete(struct pconn *c, const struct token *tok, size_t n)
{
	if (n > 2) {
		bool hold_is_zero = tok_is(tok[2], "0");
		bool noreply = set_noreply_maybe(c, tok, n);
		bool valid = (n == 3 && (hold_is_zero || noreply)) ||
			     (n == 4 && hold_is_zero && noreply);
		if (!valid) {
			reply(c, "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n");
			return;
		}
	}
	if (tok[1].n > STORAGE_KEY_MAX) {
		reply(c, "CLIENT_ERROR bad command line format\r\n");
		return;
	}
	if (storage_delete(tok[1].s, tok[1].n) == STORAGE_DELETED) {
		count(&stats.delete_hits);
		reply(c, "DELETED\r\n");
	} else {
		count(&stats.delete_misses);
		reply(c, "NOT_FOUND\r\n");
	}
}

static void cmd_touch(struct pconn *c, const struct token *tok, size_t n)
{
	set_noreply_maybe(c, tok, n);
	if (tok[1].n > STORAGE_KEY_MAX) {
		reply(c, "CLIENT_ERROR bad command line format\r\n");
		return;
	}
	int32_t exptime;
	if (!parse_i32(tok[2], &exptime)) {
		reply(c, "CLIENT_ERROR invalid exptime argument\r\n");
		return;
	}
	count(&stats.cmd_touch);
	if (storage_touch(tok[1].s, tok[1].n, exptime) == STORAGE_OK) {
		count(&stats.touch_hits);
		reply(c, "TOUCHED\r\n");
	} else {
		count(&stats.touch_misses);
		reply(c, "NOT_FOUND\r\n");
	}
}

static void cmd_flush_all(struct pconn *c, const struct token *tok, size_t n)
{
	bool noreply = set_noreply_maybe(c, tok, n);
	int32_t exptime = 0;
	if (n != (noreply ? 2u : 1u) && !parse_i32(tok[1], &exptime)) {
		reply(c, "CLIENT_ERROR invalid exptime argument\r\n");
		return;
	}
	count(&stats.cmd_flush);
	uint32_t delay = 0;
	if (exptime > 0) {
		int64_t ttl = ttl_from_exptime(exptime);
		delay = ttl > 0 ? (uint32_t)ttl : 0;
	}
	storage_flush(delay);
	reply(c, "OK\r\n");
}

static void cmd_verbosity(struct pconn *c, const struct token *tok, size_t n)
{
	set_noreply_maybe(c, tok, n);
	uint32_t level;
	if (!parse_u32(tok[1], &level)) {
		reply(c, "CLIENT_ERROR bad command line format\r\n");
		return;
	}
	atomic_store(&verbosity, level > 2 ? 2 : (int)level);
	reply(c, "OK\r\n");
}

static void stat_line(void *ctx, const char *name, const char *value)
{
	struct pconn *c = ctx;
	char buf[256];
	int n = snprintf(buf, sizeof(buf), "STAT %s %s\r\n", name, value);
	io_send_copy(c->io, buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
}

static void stat_u64(struct pconn *c, const char *name, uint64_t v)
{
	char buf[32];
	snprintf(buf, sizeof(buf), "%" PRIu64, v);
	stat_line(c, name, buf);
}

static void stats_general(struct pconn *c)
{
	time_t now = time(NULL);
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	char buf[64];
	stat_u64(c, "pid", (uint64_t)getpid());
	stat_u64(c, "uptime", (uint64_t)(now - process_started));
	stat_u64(c, "time", (uint64_t)now);
	stat_line(c, "version", MC_VERSION);
	stat_u64(c, "pointer_size", sizeof(void *) * 8);
	snprintf(buf, sizeof(buf), "%ld.%06ld", (long)ru.ru_utime.tv_sec, (long)ru.ru_utime.tv_usec);
	stat_line(c, "rusage_user", buf);
	snprintf(buf, sizeof(buf), "%ld.%06ld", (long)ru.ru_stime.tv_sec, (long)ru.ru_stime.tv_usec);
	stat_line(c, "rusage_system", buf);
	struct io_stats ios = {0};
	if (server)
		io_get_stats(server, &ios);
	stat_u64(c, "max_connections", settings.max_conns);
	stat_u64(c, "curr_connections", ios.curr_connections);
	stat_u64(c, "total_connections", ios.total_connections);
	stat_u64(c, "rejected_connections", ios.rejected_connections);
	stat_u64(c, "cmd_get", load(&stats.cmd_get));
	stat_u64(c, "cmd_set", load(&stats.cmd_set));
	stat_u64(c, "cmd_flush", load(&stats.cmd_flush));
	stat_u64(c, "cmd_touch", load(&stats.cmd_touch));
	stat_u64(c, "get_hits", load(&stats.get_hits));
	stat_u64(c, "get_misses", load(&stats.get_misses));
	stat_u64(c, "delete_misses", load(&stats.delete_misses));
	stat_u64(c, "delete_hits", load(&stats.delete_hits));
	stat_u64(c, "incr_misses", load(&stats.incr_misses));
	stat_u64(c, "incr_hits", load(&stats.incr_hits));
	stat_u64(c, "decr_misses", load(&stats.decr_misses));
	stat_u64(c, "decr_hits", load(&stats.decr_hits));
	stat_u64(c, "cas_misses", load(&stats.cas_misses));
	stat_u64(c, "cas_hits", load(&stats.cas_hits));
	stat_u64(c, "cas_badval", load(&stats.cas_badval));
	stat_u64(c, "touch_hits", load(&stats.touch_hits));
	stat_u64(c, "touch_misses", load(&stats.touch_misses));
	stat_u64(c, "bytes_read", ios.bytes_read);
	stat_u64(c, "bytes_written", ios.bytes_written);
	stat_u64(c, "threads", settings.threads);
	stat_line(c, "storage", storage_name());
	stat_line(c, "io", io_name());
	storage_stats(stat_line, c);
}

static void stats_settings(struct pconn *c)
{
	char buf[32];
	stat_u64(c, "maxbytes", settings.mem_limit);
	stat_u64(c, "maxconns", settings.max_conns);
	stat_u64(c, "tcpport", settings.port);
	stat_u64(c, "udpport", 0);
	stat_line(c, "inter", settings.addr ? settings.addr : "NULL");
	stat_u64(c, "verbosity", (uint64_t)atomic_load(&verbosity));
	stat_u64(c, "num_threads", settings.threads);
	snprintf(buf, sizeof(buf), "%.2f", settings.growth);
	stat_line(c, "growth_factor", buf);
	stat_line(c, "cas_enabled", settings.cas_enabled ? "yes" : "no");
	stat_u64(c, "item_size_max", settings.item_max);
	stat_line(c, "binding_protocol", "ascii");
	stat_line(c, "storage", storage_name());
	stat_line(c, "io", io_name());
}

static void reset_counters(void)
{
	_Atomic uint64_t *all[] = {
		&stats.cmd_get, &stats.cmd_set, &stats.cmd_flush, &stats.cmd_touch,
		&stats.get_hits, &stats.get_misses, &stats.delete_hits, &stats.delete_misses,
		&stats.incr_hits, &stats.incr_misses, &stats.decr_hits, &stats.decr_misses,
		&stats.cas_hits, &stats.cas_misses, &stats.cas_badval, &stats.touch_hits,
		&stats.touch_misses,
	};
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
		atomic_store(all[i], 0);
}

static void cmd_stats(struct pconn *c, const struct token *tok, size_t n)
{
	if (n == 1) {
		stats_general(c);
	} else if (n == 2 && tok_is(tok[1], "settings")) {
		stats_settings(c);
	} else if (n == 2 && tok_is(tok[1], "storage")) {
		storage_stats(stat_line, c);
	} else if (n == 2 && tok_is(tok[1], "reset")) {
		reset_counters();
		send_str(c, "RESET\r\n");
		return;
	} else {
		send_str(c, "ERROR\r\n");
		return;
	}
	send_str(c, "END\r\n");
}

static size_t tokenize(const char *s, size_t len, struct token *tok, size_t max)
{
	size_t n = 0, i = 0;
	while (i < len && n < max) {
		while (i < len && s[i] == ' ')
			i++;
		if (i == len)
			break;
		size_t start = i;
		while (i < len && s[i] != ' ')
			i++;
		tok[n].s = s + start;
		tok[n].n = i - start;
		n++;
	}
	return n;
}

static void close_conn(struct pconn *c)
{
	c->state = ST_CLOSED;
	io_close(c->io);
}

/* One complete command line, without its "\r\n". */
static void process_line(struct pconn *c, const char *s, size_t len)
{
	const char *nul = memchr(s, '\0', len); /* memcached's tokenizer stops at a NUL */
	if (nul)
		len = (size_t)(nul - s);
	c->noreply = false;

	struct token small[MAX_TOKENS + 1];
	struct token *tok = small;
	size_t max = MAX_TOKENS + 1;
	bool multi = (len > 4 && (memcmp(s, "get ", 4) == 0 || memcmp(s, "gat ", 4) == 0)) ||
		     (len > 5 && (memcmp(s, "gets ", 5) == 0 || memcmp(s, "gats ", 5) == 0));
	if (multi) { /* multi-gets: any number of keys */
		max = len / 2 + 2;
		if (max > MAX_TOKENS + 1 && !(tok = malloc(max * sizeof(*tok)))) {
			send_str(c, "SERVER_ERROR out of memory reading request\r\n");
			return;
		}
	}
	size_t n = tokenize(s, len, tok, max);
	if (n == 0) {
		send_str(c, "ERROR\r\n");
		goto out;
	}
	struct token cmd = tok[0];
	if (tok_is(cmd, "get") || tok_is(cmd, "gets")) {
		if (n >= 2)
			cmd_get(c, tok, n, cmd.n == 4, false);
		else
			send_str(c, "ERROR\r\n");
	} else if (tok_is(cmd, "gat") || tok_is(cmd, "gats")) {
		if (n >= 2)
			cmd_get(c, tok, n, cmd.n == 4, true);
		else
			send_str(c, "ERROR\r\n");
	} else if (tok_is(cmd, "set") || tok_is(cmd, "add") || tok_is(cmd, "replace") ||
		   tok_is(cmd, "append") || tok_is(cmd, "prepend")) {
		enum storage_op op = cmd.s[0] == 's' ? STORAGE_SET
				     : cmd.s[0] == 'r' ? STORAGE_REPLACE
				     : cmd.s[0] == 'p' ? STORAGE_PREPEND
				     : cmd.s[1] == 'd' ? STORAGE_ADD : STORAGE_APPEND;
		if (n == 5 || n == 6)
			cmd_update(c, tok, n, op);
		else
			send_str(c, "ERROR\r\n");
	} else if (tok_is(cmd, "cas")) {
		if (n == 6 || n == 7)
			cmd_update(c, tok, n, STORAGE_CAS);
		else
			send_str(c, "ERROR\r\n");
	} else if (tok_is(cmd, "incr") || tok_is(cmd, "decr")) {
		if (n == 3 || n == 4)
			cmd_incr(c, tok, n, cmd.s[0] == 'i');
		else
			send_str(c, "ERROR\r\n");
	} else if (tok_is(cmd, "delete")) {
		if (n >= 2 && n <= 4)
			cmd_delete(c, tok, n);
		else
			send_str(c, "ERROR\r\n");
	} else if (tok_is(cmd, "touch")) {
		if (n == 3 || n == 4)
			cmd_touch(c, tok, n);
		else
			send_str(c, "ERROR\r\n");
	} else if (tok_is(cmd, "stats")) {
		cmd_stats(c, tok, n);
	} else if (tok[n - 1].n >= 5 && memcmp(tok[n - 1].s, "HTTP/", 5) == 0) {
		close_conn(c); /* memcached drops HTTP requests silently */
	} else if (tok_is(cmd, "flush_all")) {
		if (n <= 3)
			cmd_flush_all(c, tok, n);
		else
			send_str(c, "ERROR\r\n");
	} else if (tok_is(cmd, "version")) {
		send_str(c, "VERSION " MC_VERSION "\r\n");
	} else if (tok_is(cmd, "quit")) {
		close_conn(c);
	} else if (tok_is(cmd, "verbosity")) {
		if (n == 2 || n == 3)
			cmd_verbosity(c, tok, n);
		else
			send_str(c, "ERROR\r\n");
	} else {
		send_str(c, "ERROR\r\n");
	}
out:
	c->noreply = c->state == ST_LINE ? false : c->noreply;
	if (tok != small)
		free(tok);
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

static bool line_allowed_to_grow(const char *s, size_t len)
{
	size_t i = 0;
	while (i < len && s[i] == ' ')
		i++;
	if (i > 100)
		return false;
	return (len - i >= 4 && memcmp(s + i, "get ", 4) == 0) ||
	       (len - i >= 5 && memcmp(s + i, "gets ", 5) == 0);
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
			if ((c->len > LINE_MAX_PLAIN && !line_allowed_to_grow(c->line, c->len)) ||
			    c->len > LINE_MAX_GET)
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
			if (c->cap > 64 * 1024) { /* do not keep a huge buffer for a whole connection */
				free(c->line);
				c->line = NULL;
				c->cap = 0;
			}
		} else {
			handle_line(c, data, k - 1);
		}
		data += k;
		len -= k;
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

void proto_set_server(struct io_server *srv) { server = srv; }
