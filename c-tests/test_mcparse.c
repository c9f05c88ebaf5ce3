/* mcserver's protocol parser (c-examples/mcserver/parse.c) on its own: every classic command,
 * memcached's limits, noreply, token counts and malformed lines, with the request each line
 * must become. Runs under ASan+UBSan and Valgrind like the other C tests. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "parse.h"

static struct mc_request parse(const char *line)
{
	struct mc_request req;
	/* a heap copy of exactly the line, so ASan catches any read past its end */
	size_t n = strlen(line);
	char *copy = malloc(n ? n : 1);
	CHECK(copy != NULL);
	memcpy(copy, line, n);
	mc_parse(copy, n, &req);
	/* keys must point into the line: rebase them onto the literal before freeing */
	if (req.keys.n > 0 || req.nkeys > 0) {
		CHECK(req.keys.s >= copy && req.keys.s + req.keys.n <= copy + n);
		req.keys.s = line + (req.keys.s - copy);
	}
	if (req.meta.tokens.s) { /* the same for a meta command's flags */
		CHECK(req.meta.tokens.s >= copy &&
		      req.meta.tokens.s + req.meta.tokens.n <= copy + n);
		req.meta.tokens.s = line + (req.meta.tokens.s - copy);
	}
	free(copy);
	return req;
}

/* The request's keys, joined by '|' (so tests compare one string). */
static const char *keys_of(const struct mc_request *req)
{
	static char out[8192];
	size_t o = 0;
	const char *p = req->keys.s, *end = req->keys.s + req->keys.n;
	for (size_t i = 0; i < req->nkeys; i++) {
		struct mc_token k = mc_next_key(&p, end);
		CHECK(k.n > 0);
		if (i)
			out[o++] = '|';
		memcpy(out + o, k.s, k.n);
		o += k.n;
	}
	out[o] = '\0';
	CHECK(mc_next_key(&p, end).n == 0); /* nothing left in the span */
	return out;
}

#define CHECK_STR(got, want) CHECK(strcmp((got), (want)) == 0)

static char *repeat(char c, size_t n)
{
	char *s = malloc(n + 1);
	memset(s, c, n);
	s[n] = '\0';
	return s;
}

static void retrieval(void)
{
	struct mc_request r = parse("get foo");
	CHECK_EQ(r.verb, MC_GET);
	CHECK_EQ(r.error, MC_OK);
	CHECK_EQ(r.noreply, false);
	CHECK_STR(keys_of(&r), "foo");

	r = parse("gets a  b   c");
	CHECK_EQ(r.verb, MC_GETS);
	CHECK_EQ(r.nkeys, 3);
	CHECK_STR(keys_of(&r), "a|b|c");

	r = parse("gat 100 k1 k2");
	CHECK_EQ(r.verb, MC_GAT);
	CHECK_EQ(r.exptime, 100);
	CHECK_STR(keys_of(&r), "k1|k2");

	r = parse("gats -1 k");
	CHECK_EQ(r.verb, MC_GATS);
	CHECK_EQ(r.exptime, -1);
	CHECK_STR(keys_of(&r), "k");

	r = parse("gat 10"); /* no keys: memcached answers END */
	CHECK_EQ(r.verb, MC_GAT);
	CHECK_EQ(r.error, MC_OK);
	CHECK_EQ(r.nkeys, 0);

	CHECK_EQ(parse("get").verb, MC_ERROR);
	CHECK_EQ(parse("get ").verb, MC_ERROR);
	CHECK_EQ(parse("gets    ").verb, MC_ERROR);
	CHECK_EQ(parse("gat").verb, MC_ERROR);

	r = parse("gat abc k");
	CHECK_EQ(r.verb, MC_GAT);
	CHECK_EQ(r.error, MC_ERR_EXPTIME);

	/* "get" in another case is not a command */
	CHECK_EQ(parse("GET foo").verb, MC_ERROR);
	/* "noreply" is a key to a retrieval */
	r = parse("get a noreply");
	CHECK_EQ(r.noreply, false);
	CHECK_STR(keys_of(&r), "a|noreply");
}

static void key_limits(void)
{
	char *k250 = repeat('k', MC_KEY_MAX), *k251 = repeat('k', MC_KEY_MAX + 1);
	char line[1024];

	snprintf(line, sizeof(line), "get %s", k250);
	struct mc_request r = parse(line);
	CHECK_EQ(r.error, MC_OK);
	CHECK_EQ(r.nkeys, 1);
	CHECK_EQ(r.keys.n, MC_KEY_MAX);

	/* a key over the limit: the keys before it are kept (memcached looks them up first) */
	snprintf(line, sizeof(line), "gat 5 a b %s c", k251);
	r = parse(line);
	CHECK_EQ(r.verb, MC_GAT);
	CHECK_EQ(r.error, MC_ERR_FORMAT);
	CHECK_STR(keys_of(&r), "a|b");

	snprintf(line, sizeof(line), "get %s", k251);
	r = parse(line);
	CHECK_EQ(r.error, MC_ERR_FORMAT);
	CHECK_EQ(r.nkeys, 0);

	const char *single[] = { "set %s 0 0 1", "cas %s 0 0 1 5", "incr %s 1",
				 "delete %s",    "touch %s 10",    "append %s 0 0 1" };
	for (size_t i = 0; i < sizeof(single) / sizeof(single[0]); i++) {
		snprintf(line, sizeof(line), single[i], k250);
		r = parse(line);
		CHECK_EQ(r.error, MC_OK);
		CHECK_EQ(r.keys.n, MC_KEY_MAX);
		snprintf(line, sizeof(line), single[i], k251);
		CHECK_EQ(parse(line).error, MC_ERR_FORMAT);
	}
	/* the key is checked before the numbers: a long key with a bad delta is a format error */
	snprintf(line, sizeof(line), "incr %s x", k251);
	CHECK_EQ(parse(line).error, MC_ERR_FORMAT);
	snprintf(line, sizeof(line), "touch %s x", k251);
	CHECK_EQ(parse(line).error, MC_ERR_FORMAT);
	free(k250);
	free(k251);
}

static void many_keys(void)
{
	/* a line that starts with the command takes any number of keys */
	size_t nkeys = 1000;
	char *line = malloc(4 + nkeys * 4 + 1);
	strcpy(line, "get");
	for (size_t i = 0; i < nkeys; i++)
		sprintf(line + strlen(line), " k%02zu", i % 100);
	struct mc_request r = parse(line);
	CHECK_EQ(r.error, MC_OK);
	CHECK_EQ(r.nkeys, nkeys);
	keys_of(&r);

	/* with a leading space memcached's 24-token tokenizer bounds the keys: 24 for get,
	 * 23 for gat (the exptime is a token) */
	line[0] = ' ';
	memmove(line + 1, line, strlen(line) + 1);
	memcpy(line + 1, "get", 3);
	r = parse(line);
	CHECK_EQ(r.verb, MC_GET);
	CHECK_EQ(r.nkeys, MC_MAX_TOKENS);
	r = parse(" gat 0 a b c d e f g h i j k l m n o p q r s t u v w x y z");
	CHECK_EQ(r.verb, MC_GAT);
	CHECK_EQ(r.nkeys, MC_MAX_TOKENS - 1);
	CHECK_STR(keys_of(&r), "a|b|c|d|e|f|g|h|i|j|k|l|m|n|o|p|q|r|s|t|u|v|w");
	free(line);
}

static void updates(void)
{
	struct mc_request r = parse("set k 5 100 3");
	CHECK_EQ(r.verb, MC_SET);
	CHECK_EQ(r.error, MC_OK);
	CHECK_STR(keys_of(&r), "k");
	CHECK_EQ(r.flags, 5);
	CHECK_EQ(r.exptime, 100);
	CHECK_EQ(r.vlen, 3);
	CHECK_EQ(r.noreply, false);

	CHECK_EQ(parse("add k 0 0 1").verb, MC_ADD);
	CHECK_EQ(parse("replace k 0 0 1").verb, MC_REPLACE);
	CHECK_EQ(parse("append k 0 0 1").verb, MC_APPEND);
	CHECK_EQ(parse("prepend k 0 0 1").verb, MC_PREPEND);

	r = parse("set k 0 0 1 noreply");
	CHECK_EQ(r.noreply, true);
	CHECK_EQ(r.error, MC_OK);
	r = parse("set k 0 0 1 other"); /* a sixth token that is not noreply is ignored */
	CHECK_EQ(r.noreply, false);
	CHECK_EQ(r.error, MC_OK);
	/* noreply is taken from the last token even when it stands where a number should */
	r = parse("set k 0 0 noreply");
	CHECK_EQ(r.noreply, true);
	CHECK_EQ(r.error, MC_ERR_FORMAT);

	r = parse("cas k 1 2 3 99");
	CHECK_EQ(r.verb, MC_CAS);
	CHECK_EQ(r.cas, 99);
	CHECK_EQ(r.vlen, 3);
	r = parse("cas k 1 2 3 18446744073709551615 noreply");
	CHECK(r.cas == UINT64_MAX);
	CHECK_EQ(r.noreply, true);
	CHECK_EQ(parse("cas k 1 2 3 x").error, MC_ERR_FORMAT);
	CHECK_EQ(parse("cas k 1 2 3 -1").error, MC_ERR_FORMAT);

	/* token counts */
	CHECK_EQ(parse("set k 0 0").verb, MC_ERROR);
	CHECK_EQ(parse("set k 0 0 1 noreply x").verb, MC_ERROR);
	CHECK_EQ(parse("cas k 0 0 1").verb, MC_ERROR);
	CHECK_EQ(parse("cas k 0 0 1 1 noreply x").verb, MC_ERROR);

	/* numbers: flags is 32 bits, truncated like memcached's strtoul; exptime and length are
	 * 32-bit signed; the length must be 0 .. INT_MAX - 2 */
	CHECK_EQ(parse("set k 4294967295 0 1").flags, 4294967295u);
	CHECK_EQ(parse("set k 4294967296 0 1").flags, 0);
	CHECK_EQ(parse("set k -1 0 1").error, MC_ERR_FORMAT);
	CHECK_EQ(parse("set k 1x 0 1").error, MC_ERR_FORMAT);
	CHECK_EQ(parse("set k 0 -5 1").exptime, -5);
	CHECK_EQ(parse("set k 0 abc 1").error, MC_ERR_FORMAT);
	CHECK_EQ(parse("set k 0 0 -1").error, MC_ERR_FORMAT);
	CHECK_EQ(parse("set k 0 0 2147483645").vlen, INT_MAX - 2);
	CHECK_EQ(parse("set k 0 0 2147483646").error, MC_ERR_FORMAT);
	CHECK_EQ(parse("set k 0 0 99999999999999999999").error, MC_ERR_FORMAT);
	CHECK_EQ(parse("set k 0 0 0").vlen, 0);
	CHECK_EQ(parse("set k 0 0 +7").vlen, 7);
}

static void arithmetic(void)
{
	struct mc_request r = parse("incr n 5");
	CHECK_EQ(r.verb, MC_INCR);
	CHECK_STR(keys_of(&r), "n");
	CHECK_EQ(r.delta, 5);
	r = parse("decr n 18446744073709551615 noreply");
	CHECK_EQ(r.verb, MC_DECR);
	CHECK(r.delta == UINT64_MAX);
	CHECK_EQ(r.noreply, true);
	CHECK_EQ(parse("incr n 18446744073709551616").error, MC_ERR_DELTA);
	CHECK_EQ(parse("incr n -1").error, MC_ERR_DELTA);
	CHECK_EQ(parse("incr n abc").error, MC_ERR_DELTA);
	CHECK_EQ(parse("incr n").verb, MC_ERROR);
	CHECK_EQ(parse("incr n 1 noreply x").verb, MC_ERROR);
}

static void deletes_and_touch(void)
{
	struct mc_request r = parse("delete k");
	CHECK_EQ(r.verb, MC_DELETE);
	CHECK_EQ(r.error, MC_OK);
	CHECK_STR(keys_of(&r), "k");
	CHECK_EQ(parse("delete k 0").error, MC_OK);
	r = parse("delete k noreply");
	CHECK_EQ(r.noreply, true);
	CHECK_EQ(r.error, MC_OK);
	CHECK_EQ(parse("delete k 0 noreply").error, MC_OK);
	CHECK_EQ(parse("delete k 5").error, MC_ERR_DELETE_USAGE);
	CHECK_EQ(parse("delete k 0 0").error, MC_ERR_DELETE_USAGE);
	r = parse("delete k x noreply"); /* a usage error, and its reply suppressed */
	CHECK_EQ(r.error, MC_ERR_DELETE_USAGE);
	CHECK_EQ(r.noreply, true);
	CHECK_EQ(parse("delete").verb, MC_ERROR);
	CHECK_EQ(parse("delete k 0 noreply x").verb, MC_ERROR);

	r = parse("touch k 30");
	CHECK_EQ(r.verb, MC_TOUCH);
	CHECK_EQ(r.exptime, 30);
	CHECK_EQ(parse("touch k 30 noreply").noreply, true);
	CHECK_EQ(parse("touch k soon").error, MC_ERR_EXPTIME);
	CHECK_EQ(parse("touch k").verb, MC_ERROR);
}

static void other_commands(void)
{
	CHECK_EQ(parse("stats").stats, MC_STATS_GENERAL);
	CHECK_EQ(parse("stats settings").stats, MC_STATS_SETTINGS);
	CHECK_EQ(parse("stats storage").stats, MC_STATS_STORAGE);
	CHECK_EQ(parse("stats reset").stats, MC_STATS_RESET);
	CHECK_EQ(parse("stats reset").verb, MC_STATS);
	CHECK_EQ(parse("stats items").stats, MC_STATS_ITEMS);
	CHECK_EQ(parse("stats items x").stats, MC_STATS_ITEMS); /* memcached ignores the rest */
	CHECK_EQ(parse("stats slabs").stats, MC_STATS_SLABS);
	CHECK_EQ(parse("stats sizes").stats, MC_STATS_SIZES);
	CHECK_EQ(parse("stats conns").stats, MC_STATS_CONNS);
	CHECK_EQ(parse("stats conns x").stats, MC_STATS_CONNS);
	CHECK_EQ(parse("stats conns").verb, MC_STATS);
	CHECK_EQ(parse("stats detail").verb, MC_ERROR);
	CHECK_EQ(parse("stats settings x").verb, MC_ERROR);

	struct mc_request r = parse("flush_all");
	CHECK_EQ(r.verb, MC_FLUSH_ALL);
	CHECK_EQ(r.exptime, 0);
	CHECK_EQ(parse("flush_all 60").exptime, 60);
	CHECK_EQ(parse("flush_all noreply").noreply, true);
	CHECK_EQ(parse("flush_all noreply").error, MC_OK);
	r = parse("flush_all 5 noreply");
	CHECK_EQ(r.exptime, 5);
	CHECK_EQ(r.noreply, true);
	CHECK_EQ(parse("flush_all soon").error, MC_ERR_EXPTIME);
	CHECK_EQ(parse("flush_all 1 2 3").verb, MC_ERROR);

	CHECK_EQ(parse("version").verb, MC_VERSION);
	CHECK_EQ(parse("version extra").verb, MC_VERSION);
	CHECK_EQ(parse("quit").verb, MC_QUIT);

	r = parse("verbosity 1");
	CHECK_EQ(r.verb, MC_VERBOSITY);
	CHECK_EQ(r.level, 1);
	CHECK_EQ(parse("verbosity 1 noreply").noreply, true);
	CHECK_EQ(parse("verbosity x").error, MC_ERR_FORMAT);
	CHECK_EQ(parse("verbosity").verb, MC_ERROR);
	CHECK_EQ(parse("verbosity -1").error, MC_ERR_FORMAT);
	CHECK_EQ(parse("verbosity 1 2").error, MC_OK);
	CHECK_EQ(parse("verbosity 1 2 3").verb, MC_ERROR);

	/* slabs automove: 0/1/2, ratio <r>; a non-number is a format error, other numbers ERROR */
	for (unsigned i = 0; i <= 2; i++) {
		char line[32];
		snprintf(line, sizeof(line), "slabs automove %u", i);
		r = parse(line);
		CHECK_EQ(r.verb, MC_SLABS_AUTOMOVE);
		CHECK_EQ(r.error, MC_OK);
		CHECK_EQ(r.level, i);
	}
	CHECK_EQ(parse("slabs automove 3").error, MC_ERR_PLAIN);
	CHECK_EQ(parse("slabs automove x").error, MC_ERR_FORMAT);
	CHECK_EQ(parse("slabs automove -1").error, MC_ERR_FORMAT);
	CHECK_EQ(parse("slabs automove 4294967296").level, 0); /* truncated like memcached */
	CHECK_EQ(parse("slabs automove 1 noreply").noreply, true);
	CHECK_EQ(parse("slabs automove").verb, MC_ERROR);
	CHECK_EQ(parse("slabs reassign 1 2").verb, MC_ERROR);
	CHECK_EQ(parse("slabs").verb, MC_ERROR);
	r = parse("slabs automove ratio 0.5");
	CHECK_EQ(r.ratio, true);
	CHECK_EQ(r.error, MC_OK);
	CHECK(r.ratio_value == 0.5);
	CHECK_EQ(parse("slabs automove ratio").error, MC_ERR_PLAIN);
	CHECK_EQ(parse("slabs automove ratio x").error, MC_ERR_PLAIN);
}

static void malformed(void)
{
	CHECK_EQ(parse("").verb, MC_ERROR);
	CHECK_EQ(parse("    ").verb, MC_ERROR);
	CHECK_EQ(parse("bogus").verb, MC_ERROR);
	CHECK_EQ(parse("me foo").verb, MC_ME);
	CHECK_EQ(parse("me foo").error, MC_OK);
	CHECK_EQ(parse("me foo x y").error, MC_OK); /* only a "b" second token is looked at */
	CHECK_EQ(parse("me Zm9v b").meta.key_binary, true);
	CHECK_EQ(parse("me foo b").error, MC_ERR_FORMAT); /* does not decode */
	CHECK_EQ(parse("me").error, MC_ERR_FORMAT);
	CHECK_EQ(parse("mg k R30").meta.has_recache, true);
	CHECK_EQ(parse("mg k R30").meta.recache_exptime, 30);
	CHECK_EQ(parse("mx foo").verb, MC_ERROR);
	CHECK_EQ(parse("mgg foo").verb, MC_ERROR);

	/* HTTP request lines are dropped silently, but only after the storage commands */
	CHECK_EQ(parse("GET / HTTP/1.1").verb, MC_HTTP);
	CHECK_EQ(parse("version HTTP/1.0").verb, MC_HTTP);
	CHECK_EQ(parse("stats HTTP/1.1").verb, MC_ERROR);
	CHECK_EQ(parse("get HTTP/1.1").verb, MC_GET);

	/* a NUL ends the line */
	struct mc_request r;
	mc_parse("get a\0b", 7, &r);
	CHECK_STR(keys_of(&r), "a");
	mc_parse("\0get a", 6, &r);
	CHECK_EQ(r.verb, MC_ERROR);

	/* more than 24 tokens: the 25th is looked at, the line refused */
	CHECK_EQ(parse("set a b c d e f g h i j k l m n o p q r s t u v w x y z").verb, MC_ERROR);
	CHECK_EQ(parse("delete a b c d e f g h i j k l m n o p q r s t u v w x y HTTP/1.1").verb,
		 MC_ERROR);
	CHECK_EQ(parse("x a b c d e f g h i j k l m n o p q r s t u v w HTTP/1.1").verb, MC_HTTP);
	CHECK_EQ(parse("x a b c d e f g h i j k l m n o p q r s t u v w x HTTP/1.1").verb,
		 MC_ERROR);

	/* tabs are not separators (memcached splits on ' ' only) */
	CHECK_EQ(parse("get\tfoo").verb, MC_ERROR);
	r = parse("set k\t0 0 0 1");
	CHECK_EQ(r.verb, MC_SET);
	CHECK_STR(keys_of(&r), "k\t0");
}

/* The flag tokens of a meta request, as one string. */
static const char *flags_of(const struct mc_request *req)
{
	static char out[1024];
	memcpy(out, req->meta.tokens.s, req->meta.tokens.n);
	out[req->meta.tokens.n] = '\0';
	return out;
}

static void meta_commands(void)
{
	struct mc_request r = parse("mn");
	CHECK_EQ(r.verb, MC_MN);
	CHECK_EQ(parse("mn anything at all").verb, MC_MN);

	r = parse("mg foo v k c f s t O123 q u T30");
	CHECK_EQ(r.verb, MC_MG);
	CHECK_EQ(r.error, MC_OK);
	CHECK_STR(keys_of(&r), "foo");
	CHECK_EQ(r.meta.value, true);
	CHECK_EQ(r.meta.quiet, true);
	CHECK_EQ(r.meta.has_ttl, true);
	CHECK_EQ(r.exptime, 30);
	CHECK_EQ(r.meta.ntokens, 10);
	CHECK_STR(flags_of(&r), "v k c f s t O123 q u T30");
	CHECK(mc_meta_has(&r.meta, 'u') && mc_meta_has(&r.meta, 'O') && !mc_meta_has(&r.meta, 'h'));
	r = parse("mg foo");
	CHECK_EQ(r.error, MC_OK);
	CHECK_EQ(r.meta.ntokens, 0);
	CHECK_EQ(r.meta.tokens.n, 0);
	CHECK_EQ(parse("mg").verb, MC_ERROR);
	CHECK_EQ(parse("mg foo vv").meta.value, true); /* only the first character counts */

	/* errors, in memcached's order */
	CHECK_EQ(parse("mg foo v v").error, MC_ERR_DUP_FLAG);
	CHECK_EQ(parse("mg foo \xff").error, MC_ERR_DUP_FLAG); /* bytes >= 127: memcached's text */
	CHECK_EQ(parse("mg foo E5").error, MC_ERR_INVALID_FLAG); /* E came after 1.6.18 */
	CHECK_EQ(parse("mg foo Z").error, MC_ERR_INVALID_FLAG);
	CHECK_EQ(parse("mg foo Tx").error, MC_ERR_BAD_TOKEN);
	CHECK_EQ(parse("mg foo T").error, MC_ERR_BAD_TOKEN);
	CHECK_EQ(parse("mg foo Fx").error, MC_ERR_FORMAT); /* F has no message of its own */
	CHECK_EQ(parse("mg foo Tx Fx").error, MC_ERR_BAD_TOKEN);
	CHECK_EQ(parse("mg foo Tx Z").error, MC_ERR_INVALID_FLAG); /* unknown stops the pass */
	CHECK_EQ(parse("mg foo Tx Dx").error, MC_ERR_DELTA_VALUE); /* the last number error */
	CHECK_EQ(parse("mg foo Jx").error, MC_ERR_INITIAL);
	CHECK_EQ(parse("mg foo MSS").error, MC_ERR_M_LENGTH);
	CHECK_EQ(parse("mg foo Cx").error, MC_ERR_BAD_TOKEN);
	CHECK_EQ(parse("mg foo Nx").error, MC_ERR_BAD_TOKEN);
	CHECK_EQ(parse("mg foo Rx").error, MC_ERR_BAD_TOKEN);
	char *key = repeat('k', 251);
	char line[600];
	snprintf(line, sizeof(line), "mg %s v", key);
	CHECK_EQ(parse(line).error, MC_ERR_FORMAT);
	snprintf(line, sizeof(line), "mg %s a b c d e f g h i j k l m n o p q r s", key);
	CHECK_EQ(parse(line).error, MC_ERR_FORMAT); /* the key is checked before the count */
	free(key);
	/* 20 tokens with memcached's terminal one: the limit; 19 pass */
	CHECK_EQ(parse("mg k a b c d e f g h i j k l m n o p q r").error, MC_ERR_MG_TOO_LONG);
	CHECK_EQ(parse("mg k v k c f s t q u O1 T1 F1 N1 R1 h l P I").error, MC_OK);
	CHECK_EQ(parse("md k a b c d e f g h i j k l m n o p q r").error, MC_ERR_TOO_LONG);

	/* opaque: up to 32 characters with its O; longer is found late (after the lookup) */
	r = parse("mg foo OAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
	CHECK_EQ(r.error, MC_OK);
	r = parse("mg foo T5 OAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
	CHECK_EQ(r.error, MC_ERR_OPAQUE);
	CHECK_EQ(r.meta.ttl_before_opaque, true);
	r = parse("mg foo OAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA T5");
	CHECK_EQ(r.meta.ttl_before_opaque, false);

	/* base64 keys */
	r = parse("mg Zm9v b k");
	CHECK_EQ(r.error, MC_OK);
	CHECK_EQ(r.meta.key_binary, true);
	CHECK_STR(keys_of(&r), "Zm9v"); /* the executor decodes it */
	CHECK_EQ(parse("mg Zm9v= b").error, MC_ERR_KEY_DECODE);
	CHECK_EQ(parse("mg Zm9v== b").error, MC_ERR_KEY_DECODE);
	CHECK_EQ(parse("mg Z b").error, MC_ERR_KEY_DECODE);

	/* ms: datalen first, then flags; every error after the datalen swallows the value */
	r = parse("ms foo 5 T100 F7 C99 MA I q k O1 c");
	CHECK_EQ(r.verb, MC_MS);
	CHECK_EQ(r.error, MC_OK);
	CHECK_EQ(r.vlen, 5);
	CHECK_EQ(r.flags, 7);
	CHECK_EQ(r.cas, 99);
	CHECK_EQ(r.meta.has_cas, true);
	CHECK_EQ(r.meta.mode, 'A');
	CHECK_EQ(r.meta.data_follows, true);
	CHECK_STR(flags_of(&r), "T100 F7 C99 MA I q k O1 c");
	CHECK_EQ(parse("ms").verb, MC_ERROR);
	r = parse("ms foo");
	CHECK_EQ(r.error, MC_ERR_FORMAT);
	CHECK_EQ(r.meta.data_follows, false);
	CHECK_EQ(parse("ms foo x").meta.data_follows, false);
	CHECK_EQ(parse("ms foo -1").error, MC_ERR_FORMAT);
	CHECK_EQ(parse("ms foo 2147483646").error, MC_ERR_FORMAT);
	CHECK_EQ(parse("ms foo 2147483645").error, MC_OK);
	CHECK_EQ(parse("ms k 2 a b c d e f g h i j k l m n o p q").error, MC_ERR_TOO_LONG);
	r = parse("ms foo 2 S2");
	CHECK_EQ(r.error, MC_ERR_INVALID_FLAG); /* the old S<len> syntax */
	CHECK_EQ(r.meta.data_follows, true);
	CHECK_EQ(parse("ms foo 2 MZ").error, MC_ERR_MS_MODE);
	CHECK_EQ(parse("ms foo 2 Ms").error, MC_ERR_MS_MODE);
	CHECK_EQ(parse("ms foo 2 MZ OAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").error,
		 MC_ERR_MS_MODE);
	CHECK_EQ(parse("ms foo 2 OAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").error, MC_ERR_OPAQUE);
	for (const char *m = "EAPRS"; *m; m++) {
		snprintf(line, sizeof(line), "ms foo 2 M%c", *m);
		CHECK_EQ(parse(line).meta.mode, *m);
	}

	/* md, ma: every flag error is one message */
	CHECK_EQ(parse("md foo q q").error, MC_ERR_FLAG_MD_MA);
	CHECK_EQ(parse("md foo Z").error, MC_ERR_FLAG_MD_MA);
	CHECK_EQ(parse("ma foo Dx").error, MC_ERR_FLAG_MD_MA);
	CHECK_EQ(parse("md foo OAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").error, MC_ERR_OPAQUE);
	r = parse("ma foo");
	CHECK_EQ(r.verb, MC_MA);
	CHECK_EQ(r.delta, 1); /* default */
	r = parse("ma foo N30 J5 D7 MD T60 t c v k q");
	CHECK_EQ(r.error, MC_OK);
	CHECK_EQ(r.meta.vivify, true);
	CHECK_EQ(r.meta.vivify_exptime, 30);
	CHECK_EQ(r.meta.initial, 5);
	CHECK_EQ(r.delta, 7);
	CHECK_EQ(r.meta.mode, 'D');
	CHECK_EQ(r.exptime, 60);
	CHECK_EQ(parse("ma foo D18446744073709551615").delta, UINT64_MAX);
	CHECK_EQ(parse("ma foo D18446744073709551616").error, MC_ERR_FLAG_MD_MA);
	for (const char *m = "I+D-"; *m; m++) {
		snprintf(line, sizeof(line), "ma foo M%c", *m);
		CHECK_EQ(parse(line).error, MC_OK);
	}
	CHECK_EQ(parse("ma foo MS").error, MC_ERR_MA_MODE);
	CHECK_EQ(parse("ma foo Mi").error, MC_ERR_MA_MODE);
}

/* memcached's base64, including its lenient decoding rules. */
static void base64(void)
{
	unsigned char out[64];
	char enc[64];
	CHECK_EQ(mc_base64_decode("Zm9v", 4, out), 3);
	CHECK(memcmp(out, "foo", 3) == 0);
	CHECK_EQ(mc_base64_decode("Zm8=", 4, out), 2);
	CHECK(memcmp(out, "fo", 2) == 0);
	CHECK_EQ(mc_base64_decode("Zg==", 4, out), 1);
	CHECK_EQ(mc_base64_decode("Zg==Zm9v", 8, out), 1); /* stops after the padded group */
	CHECK_EQ(mc_base64_decode("Z!m-9.v", 7, out), 3); /* other characters are skipped */
	CHECK_EQ(mc_base64_decode("Zm9", 3, out), 0);
	CHECK_EQ(mc_base64_decode("Z===", 4, out), 0);
	CHECK_EQ(mc_base64_decode("====", 4, out), 0);
	CHECK_EQ(mc_base64_decode("", 0, out), 0);
	CHECK_EQ(mc_base64_encode((const unsigned char *)"foo", 3, enc), 4);
	CHECK(memcmp(enc, "Zm9v", 4) == 0);
	CHECK_EQ(mc_base64_encode((const unsigned char *)"fo", 2, enc), 4);
	CHECK(memcmp(enc, "Zm8=", 4) == 0);
	CHECK_EQ(mc_base64_encode((const unsigned char *)"f", 1, enc), 4);
	CHECK(memcmp(enc, "Zg==", 4) == 0);
	/* round trip of every byte value */
	unsigned char all[48];
	for (size_t i = 0; i < sizeof(all); i++)
		all[i] = (unsigned char)(i * 37 + 11);
	size_t n = mc_base64_encode(all, sizeof(all), enc);
	CHECK_EQ(n, 64);
	CHECK_EQ(mc_base64_decode(enc, n, out), sizeof(all));
	CHECK(memcmp(out, all, sizeof(all)) == 0);
}

int main(void)
{
	retrieval();
	key_limits();
	many_keys();
	updates();
	arithmetic();
	deletes_and_touch();
	other_commands();
	malformed();
	meta_commands();
	base64();
	return check_done("mcparse");
}
