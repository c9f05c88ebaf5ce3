/*
 * parse.c - memcached text-protocol command lines -> struct mc_request (see parse.h).
 *
 * The order of the checks is memcached 1.6's (proto_text.c), because it decides which error a
 * line with several faults gets: token count first, then "noreply", then the key length, then
 * the numbers. Numbers follow memcached's safe_strto* helpers, quirks included (a 32-bit
 * field is parsed as 64 bits and truncated; leading blanks and a sign are accepted as strtol
 * does).
 */
#include "parse.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* --- tokens -------------------------------------------------------------------------------- */

/* The next space-separated token at or after *p; false (and *p at end) when there is none. */
static bool next_token(const char **p, const char *end, struct mc_token *t)
{
	const char *s = *p;
	while (s < end && *s == ' ')
		s++;
	*p = s;
	if (s == end)
		return false;
	const char *space = memchr(s, ' ', (size_t)(end - s));
	t->s = s;
	t->n = (size_t)((space ? space : end) - s);
	*p = s + t->n;
	return true;
}

struct mc_token mc_next_key(const char **cursor, const char *end)
{
	struct mc_token t = { *cursor, 0 };
	next_token(cursor, end, &t);
	return t;
}

static bool tok_is(struct mc_token t, const char *s)
{
	size_t n = strlen(s);
	return t.n == n && memcmp(t.s, s, n) == 0;
}

/* --- numbers, with memcached's safe_strto* rules ------------------------------------------- */

/* A NUL-terminated copy of a token; *heap set when it had to be allocated. */
static char *tok_cstr(struct mc_token t, char *small, size_t cap, char **heap)
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

static bool parse_u64(struct mc_token t, uint64_t *out)
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

static bool parse_u32(struct mc_token t, uint32_t *out)
{
	uint64_t v;
	/* strtoul on a 64-bit long: same rules as strtoull, then truncated (memcached's quirk) */
	if (!parse_u64(t, &v))
		return false;
	*out = (uint32_t)v;
	return true;
}

static bool parse_i32(struct mc_token t, int32_t *out)
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

static bool parse_double(struct mc_token t, double *out)
{
	char small[64], *heap;
	char *s = tok_cstr(t, small, sizeof(small), &heap);
	if (!s)
		return false;
	char *end;
	errno = 0;
	double d = strtod(s, &end);
	bool ok = errno != ERANGE && end != s && ends_ok(s, end);
	free(heap);
	if (ok)
		*out = d;
	return ok;
}

static void set_key(struct mc_request *req, struct mc_token key)
{
	req->keys = key;
	req->nkeys = 1;
}

/* --- meta commands (mg, ms, md, ma, mn) ------------------------------------------------------ */

/* The 6-bit value of a base64 character; '=' counts as 0 (padding); -1 outside the alphabet. */
static int b64_digit(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	switch (c) {
	case '+': return 62;
	case '/': return 63;
	case '=': return 0;
	default: return -1;
	}
}

size_t mc_base64_decode(const char *in, size_t n, unsigned char *out)
{
	size_t digits = 0;
	for (size_t i = 0; i < n; i++)
		digits += b64_digit((unsigned char)in[i]) >= 0;
	if (digits == 0 || digits % 4 != 0)
		return 0;
	size_t o = 0;
	uint32_t group = 0;
	unsigned got = 0, pads = 0;
	for (size_t i = 0; i < n; i++) {
		int d = b64_digit((unsigned char)in[i]);
		if (d < 0)
			continue;
		pads += in[i] == '=';
		group = (group << 6) | (uint32_t)d;
		if (++got < 4)
			continue;
		out[o++] = (unsigned char)(group >> 16);
		out[o++] = (unsigned char)(group >> 8);
		out[o++] = (unsigned char)group;
		got = 0;
		group = 0;
		if (pads > 2)
			return 0;
		if (pads > 0) { /* the first padded group ends the input */
			o -= pads;
			break;
		}
	}
	return o;
}

size_t mc_base64_encode(const unsigned char *in, size_t n, char *out)
{
	static const char alphabet[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t o = 0;
	for (size_t i = 0; i < n; i += 3) {
		size_t left = n - i;
		uint32_t group = (uint32_t)in[i] << 16;
		if (left > 1)
			group |= (uint32_t)in[i + 1] << 8;
		if (left > 2)
			group |= in[i + 2];
		out[o++] = alphabet[(group >> 18) & 63];
		out[o++] = alphabet[(group >> 12) & 63];
		out[o++] = left > 1 ? alphabet[(group >> 6) & 63] : '=';
		out[o++] = left > 2 ? alphabet[group & 63] : '=';
	}
	return o;
}

/*
 * memcached's pass over a meta command's flags, in order: a repeated flag (or a byte >= 127)
 * or an unknown one stops it at once; a bad number records its error and the pass goes on, so
 * the last such error is the one reported (F's keeps the earlier text).
 */
static enum mc_error parse_meta_flags(struct mc_request *req, const struct mc_token *tok,
				      size_t first, size_t n)
{
	struct mc_meta *m = &req->meta;
	enum mc_error err = MC_ERR_FORMAT;
	bool failed = false;
	for (size_t i = first; i < n; i++) {
		unsigned char f = (unsigned char)tok[i].s[0];
		if (f >= 127 || mc_meta_has(m, f))
			return MC_ERR_DUP_FLAG;
		m->seen[f >> 6] |= (uint64_t)1 << (f & 63);
		struct mc_token arg = { tok[i].s + 1, tok[i].n - 1 };
		switch (f) {
		case 'b': {
			unsigned char scratch[MC_KEY_MAX];
			m->key_binary = true;
			if (mc_base64_decode(req->keys.s, req->keys.n, scratch) == 0) {
				err = MC_ERR_KEY_DECODE;
				failed = true;
			}
			break;
		}
		case 'N':
			m->vivify = true;
			if (!parse_i32(arg, &m->vivify_exptime)) {
				err = MC_ERR_BAD_TOKEN;
				failed = true;
			}
			break;
		case 'T':
			if (!parse_i32(arg, &req->exptime)) {
				err = MC_ERR_BAD_TOKEN;
				failed = true;
			} else {
				m->has_ttl = true;
			}
			break;
		case 'R':
			if (!parse_i32(arg, &m->recache_exptime)) {
				err = MC_ERR_BAD_TOKEN;
				failed = true;
			} else {
				m->has_recache = true;
			}
			break;
		case 'C':
			if (!parse_u64(arg, &req->cas)) {
				err = MC_ERR_BAD_TOKEN;
				failed = true;
			} else {
				m->has_cas = true;
			}
			break;
		case 'F':
			if (!parse_u32(arg, &req->flags))
				failed = true; /* memcached sets no message of its own for F */
			break;
		case 'M':
			if (tok[i].n != 2) {
				err = MC_ERR_M_LENGTH;
				failed = true;
			} else {
				m->mode = tok[i].s[1];
			}
			break;
		case 'J':
			if (!parse_u64(arg, &m->initial)) {
				err = MC_ERR_INITIAL;
				failed = true;
			}
			break;
		case 'D':
			if (!parse_u64(arg, &req->delta)) {
				err = MC_ERR_DELTA_VALUE;
				failed = true;
			}
			break;
		case 'v': m->value = true; break;
		case 'q': m->quiet = true; break;
		case 'O':
		case 'P':
		case 'L':
		case 'k':
		case 's':
		case 't':
		case 'c':
		case 'f':
		case 'l':
		case 'h':
		case 'u':
		case 'I': break;
		default: return MC_ERR_INVALID_FLAG;
		}
	}
	return failed ? err : MC_OK;
}

/* Whether tokens first..n-1 hold an O token over MC_OPAQUE_MAX, and whether a T came first. */
static bool opaque_too_long(const struct mc_token *tok, size_t first, size_t n, bool *ttl_first)
{
	bool ttl = false;
	for (size_t i = first; i < n; i++) {
		if (tok[i].s[0] == 'T')
			ttl = true;
		if (tok[i].s[0] == 'O' && tok[i].n > MC_OPAQUE_MAX) {
			*ttl_first = ttl;
			return true;
		}
	}
	return false;
}

/* mg, ms, md and ma, in memcached 1.6.18's order of checks (proto_text.c). */
static void parse_meta(struct mc_request *req, const struct mc_token *tok, size_t n)
{
	struct mc_meta *m = &req->meta;
	if (n < 2) {
		req->verb = MC_ERROR;
		return;
	}
	set_key(req, tok[1]);
	if (tok[1].n > MC_KEY_MAX) {
		req->error = MC_ERR_FORMAT;
		return;
	}
	size_t first = 2;
	if (req->verb == MC_MS) {
		first = 3;
		if (n == 2) {
			req->error = MC_ERR_FORMAT;
			return;
		}
	}
	/* memcached counts its terminal token too: more than 20 is refused */
	if (n + 1 > 20) {
		req->error = req->verb == MC_MG ? MC_ERR_MG_TOO_LONG : MC_ERR_TOO_LONG;
		return;
	}
	if (req->verb == MC_MS) {
		if (!parse_i32(tok[2], &req->vlen) || req->vlen < 0 || req->vlen > INT_MAX - 2) {
			req->error = MC_ERR_FORMAT;
			return;
		}
		m->data_follows = true; /* from here on every error swallows the value */
	}
	if (req->verb == MC_MA)
		req->delta = 1;
	if (n > first) {
		m->tokens.s = tok[first].s;
		m->tokens.n = (size_t)(tok[n - 1].s + tok[n - 1].n - tok[first].s);
		m->ntokens = n - first;
	} else {
		m->tokens.s = tok[n - 1].s + tok[n - 1].n;
	}
	enum mc_error e = parse_meta_flags(req, tok, first, n);
	if (e != MC_OK) {
		req->error = req->verb == MC_MD || req->verb == MC_MA ? MC_ERR_FLAG_MD_MA : e;
		return;
	}
	bool opaque = opaque_too_long(tok, first, n, &m->ttl_before_opaque);
	if (req->verb == MC_MS && m->mode && !strchr("EAPRS", m->mode))
		req->error = MC_ERR_MS_MODE;
	else if (req->verb == MC_MA && m->mode && !strchr("I+D-", m->mode))
		req->error = MC_ERR_MA_MODE;
	else if (opaque)
		req->error = MC_ERR_OPAQUE;
}

/*
 * me <key> [b]: memcached checks only the key (present, at most 250 bytes) and, when a second
 * token "b" follows, that the key decodes; anything else is "bad command line format".
 */
static void parse_me(struct mc_request *req, const struct mc_token *tok, size_t n)
{
	if (n < 2) {
		req->error = MC_ERR_FORMAT;
		return;
	}
	set_key(req, tok[1]);
	if (tok[1].n > MC_KEY_MAX) {
		req->error = MC_ERR_FORMAT;
		return;
	}
	if (n >= 3 && tok_is(tok[2], "b")) {
		unsigned char scratch[MC_KEY_MAX];
		req->meta.key_binary = true;
		if (mc_base64_decode(tok[1].s, tok[1].n, scratch) == 0)
			req->error = MC_ERR_FORMAT;
	}
}

/* --- commands ------------------------------------------------------------------------------ */

/*
 * get/gets/gat/gats after the command word, at most maxkeys keys (memcached looks at any
 * number of keys only when the line starts with the command; otherwise its 24 tokens bound
 * them).
 */
static void parse_retrieval(struct mc_request *req, const char *p, const char *end, size_t maxkeys)
{
	struct mc_token t;
	if (!next_token(&p, end, &t)) {
		req->verb = MC_ERROR;
		return;
	}
	bool more = true; /* t holds the next key */
	if (req->verb == MC_GAT || req->verb == MC_GATS) {
		if (!parse_i32(t, &req->exptime)) {
			req->error = MC_ERR_EXPTIME;
			return;
		}
		more = next_token(&p, end, &t);
	}
	const char *first = NULL, *last = p;
	size_t n = 0;
	while (more && n < maxkeys) {
		if (t.n > MC_KEY_MAX) {
			req->error = MC_ERR_FORMAT;
			break;
		}
		if (!first)
			first = t.s;
		last = t.s + t.n;
		n++;
		more = n < maxkeys && next_token(&p, end, &t);
	}
	req->keys.s = first ? first : last;
	req->keys.n = first ? (size_t)(last - first) : 0;
	req->nkeys = n;
}

/* set/add/replace/append/prepend <key> <flags> <exptime> <bytes> [noreply], and cas with
 * <cas unique> before [noreply]. */
static void parse_update(struct mc_request *req, const struct mc_token *tok, size_t n)
{
	bool cas = req->verb == MC_CAS;
	if (n != (cas ? 6u : 5u) && n != (cas ? 7u : 6u)) {
		req->verb = MC_ERROR;
		return;
	}
	req->noreply = tok_is(tok[n - 1], "noreply");
	set_key(req, tok[1]);
	if (tok[1].n > MC_KEY_MAX || !parse_u32(tok[2], &req->flags) ||
	    !parse_i32(tok[3], &req->exptime) || !parse_i32(tok[4], &req->vlen) ||
	    (cas && !parse_u64(tok[5], &req->cas)) || req->vlen < 0 || req->vlen > INT_MAX - 2)
		req->error = MC_ERR_FORMAT;
}

/*
 * The common head of "<cmd> <key> <arg> [noreply]": token count, noreply, key length. Returns
 * true when the argument is still to be parsed.
 */
static bool parse_key_and_arg(struct mc_request *req, const struct mc_token *tok, size_t n)
{
	if (n != 3 && n != 4) {
		req->verb = MC_ERROR;
		return false;
	}
	req->noreply = tok_is(tok[n - 1], "noreply");
	set_key(req, tok[1]);
	if (tok[1].n > MC_KEY_MAX) {
		req->error = MC_ERR_FORMAT;
		return false;
	}
	return true;
}

/* incr/decr <key> <delta> [noreply] */
static void parse_arith(struct mc_request *req, const struct mc_token *tok, size_t n)
{
	if (parse_key_and_arg(req, tok, n) && !parse_u64(tok[2], &req->delta))
		req->error = MC_ERR_DELTA;
}

/* delete <key> [0] [noreply]: memcached still accepts a hold time, if it is 0. */
static void parse_delete(struct mc_request *req, const struct mc_token *tok, size_t n)
{
	if (n < 2 || n > 4) {
		req->verb = MC_ERROR;
		return;
	}
	set_key(req, tok[1]);
	if (n > 2) {
		bool hold_is_zero = tok_is(tok[2], "0");
		req->noreply = tok_is(tok[n - 1], "noreply");
		bool valid = (n == 3 && (hold_is_zero || req->noreply)) ||
			     (n == 4 && hold_is_zero && req->noreply);
		if (!valid) {
			req->error = MC_ERR_DELETE_USAGE;
			return;
		}
	}
	if (tok[1].n > MC_KEY_MAX)
		req->error = MC_ERR_FORMAT;
}

/* touch <key> <exptime> [noreply] */
static void parse_touch(struct mc_request *req, const struct mc_token *tok, size_t n)
{
	if (parse_key_and_arg(req, tok, n) && !parse_i32(tok[2], &req->exptime))
		req->error = MC_ERR_EXPTIME;
}

static void parse_stats(struct mc_request *req, const struct mc_token *tok, size_t n)
{
	if (n == 1)
		req->stats = MC_STATS_GENERAL;
	else if (n == 2 && tok_is(tok[1], "settings"))
		req->stats = MC_STATS_SETTINGS;
	else if (n == 2 && tok_is(tok[1], "storage"))
		req->stats = MC_STATS_STORAGE;
	else if (n == 2 && tok_is(tok[1], "reset"))
		req->stats = MC_STATS_RESET;
	else if (tok_is(tok[1], "items")) /* memcached ignores further tokens */
		req->stats = MC_STATS_ITEMS;
	else if (tok_is(tok[1], "slabs"))
		req->stats = MC_STATS_SLABS;
	else if (tok_is(tok[1], "sizes"))
		req->stats = MC_STATS_SIZES;
	else if (tok_is(tok[1], "conns")) /* further tokens ignored, as memcached does */
		req->stats = MC_STATS_CONNS;
	else
		req->verb = MC_ERROR;
}

/* flush_all [delay] [noreply] */
static void parse_flush_all(struct mc_request *req, const struct mc_token *tok, size_t n)
{
	if (n > 3) {
		req->verb = MC_ERROR;
		return;
	}
	req->noreply = tok_is(tok[n - 1], "noreply");
	if (n != (req->noreply ? 2u : 1u) && !parse_i32(tok[1], &req->exptime))
		req->error = MC_ERR_EXPTIME;
}

static void parse_verbosity(struct mc_request *req, const struct mc_token *tok, size_t n)
{
	if (n != 2 && n != 3) {
		req->verb = MC_ERROR;
		return;
	}
	req->noreply = tok_is(tok[n - 1], "noreply");
	if (!parse_u32(tok[1], &req->level))
		req->error = MC_ERR_FORMAT;
}

/*
 * slabs automove <level> [noreply] | slabs automove ratio <ratio> [noreply]. memcached takes
 * levels 0, 1 and 2; a level that is not a number is a format error, any other number a plain
 * ERROR (which noreply hides). Other "slabs" subcommands are not offered: ERROR.
 */
static void parse_slabs(struct mc_request *req, const struct mc_token *tok, size_t n)
{
	if (n < 3 || !tok_is(tok[1], "automove")) {
		req->verb = MC_ERROR;
		return;
	}
	req->verb = MC_SLABS_AUTOMOVE;
	req->noreply = tok_is(tok[n - 1], "noreply");
	if (tok_is(tok[2], "ratio")) {
		req->ratio = true;
		if (n < 4 || !parse_double(tok[3], &req->ratio_value))
			req->error = MC_ERR_PLAIN;
		return;
	}
	if (!parse_u32(tok[2], &req->level))
		req->error = MC_ERR_FORMAT;
	else if (req->level > 2)
		req->error = MC_ERR_PLAIN;
}

/* The verb named by a command word (MC_ERROR when none). */
static enum mc_verb verb_of(struct mc_token cmd)
{
	static const struct {
		const char *name;
		enum mc_verb verb;
	} verbs[] = {
		{ "get", MC_GET },         { "gets", MC_GETS },
		{ "gat", MC_GAT },         { "gats", MC_GATS },
		{ "set", MC_SET },         { "add", MC_ADD },
		{ "replace", MC_REPLACE }, { "append", MC_APPEND },
		{ "prepend", MC_PREPEND }, { "cas", MC_CAS },
		{ "incr", MC_INCR },       { "decr", MC_DECR },
		{ "delete", MC_DELETE },   { "touch", MC_TOUCH },
		{ "stats", MC_STATS },     { "flush_all", MC_FLUSH_ALL },
		{ "version", MC_VERSION }, { "verbosity", MC_VERBOSITY },
		{ "quit", MC_QUIT },       { "slabs", MC_SLABS_AUTOMOVE },
	};
	for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
		if (tok_is(cmd, verbs[i].name))
			return verbs[i].verb;
	return MC_ERROR;
}

/* A line that starts with a retrieval command and a space: its keys are not bounded. */
static enum mc_verb multi_key_verb(const char *s, size_t len)
{
	if (len > 4 && memcmp(s, "get ", 4) == 0)
		return MC_GET;
	if (len > 4 && memcmp(s, "gat ", 4) == 0)
		return MC_GAT;
	if (len > 5 && memcmp(s, "gets ", 5) == 0)
		return MC_GETS;
	if (len > 5 && memcmp(s, "gats ", 5) == 0)
		return MC_GATS;
	return MC_ERROR;
}

void mc_parse(const char *line, size_t len, struct mc_request *req)
{
	memset(req, 0, sizeof(*req));
	req->verb = MC_ERROR;
	const char *nul = memchr(line, '\0', len);
	if (nul)
		len = (size_t)(nul - line);
	const char *end = line + len;

	enum mc_verb multi = multi_key_verb(line, len);
	if (multi != MC_ERROR) {
		req->verb = multi;
		parse_retrieval(req, line + (multi == MC_GET || multi == MC_GAT ? 3 : 4), end,
				SIZE_MAX);
		return;
	}

	struct mc_token tok[MC_MAX_TOKENS + 1];
	size_t n = 0;
	const char *p = line;
	while (n < MC_MAX_TOKENS + 1 && next_token(&p, end, &tok[n]))
		n++;
	if (n == 0)
		return;
	if (tok[0].n == 2 && tok[0].s[0] == 'm') {
		switch (tok[0].s[1]) {
		case 'n': req->verb = MC_MN; return;
		case 'g': req->verb = MC_MG; break;
		case 's': req->verb = MC_MS; break;
		case 'd': req->verb = MC_MD; break;
		case 'a': req->verb = MC_MA; break;
		case 'e':
			req->verb = MC_ME;
			parse_me(req, tok, n);
			return;
		default: return; /* unknown meta commands: ERROR */
		}
		parse_meta(req, tok, n);
		return;
	}
	req->verb = verb_of(tok[0]);
	switch (req->verb) {
	case MC_GET:
	case MC_GETS: parse_retrieval(req, tok[0].s + tok[0].n, end, n - 1); return;
	case MC_GAT:
	case MC_GATS: parse_retrieval(req, tok[0].s + tok[0].n, end, n >= 2 ? n - 2 : 0); return;
	case MC_SET:
	case MC_ADD:
	case MC_REPLACE:
	case MC_APPEND:
	case MC_PREPEND:
	case MC_CAS: parse_update(req, tok, n); return;
	case MC_INCR:
	case MC_DECR: parse_arith(req, tok, n); return;
	case MC_DELETE: parse_delete(req, tok, n); return;
	case MC_TOUCH: parse_touch(req, tok, n); return;
	case MC_STATS: parse_stats(req, tok, n); return;
	case MC_SLABS_AUTOMOVE: parse_slabs(req, tok, n); return;
	default: break;
	}
	/* memcached drops an HTTP request silently; it looks only after the commands above */
	if (tok[n - 1].n >= 5 && memcmp(tok[n - 1].s, "HTTP/", 5) == 0) {
		req->verb = MC_HTTP;
		return;
	}
	switch (req->verb) {
	case MC_FLUSH_ALL: parse_flush_all(req, tok, n); return;
	case MC_VERBOSITY: parse_verbosity(req, tok, n); return;
	default: /* version and quit take no arguments and ignore any; ERROR stays */ return;
	}
}
