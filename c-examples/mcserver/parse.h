/*
 * parse.h - one memcached text-protocol command line -> a request, with no I/O and no store.
 *
 * mc_parse() is a pure function of the line: it tokenizes, recognises the command, checks
 * token counts, key lengths and numbers with memcached 1.6's rules (proto_text.c) and records
 * which reply memcached gives for a malformed line. Executing the request (proto.c) is a
 * switch on the verb; a unit test and a fuzzer can call the parser alone.
 *
 * The request borrows from the line: keys point into it, so the line must outlive the
 * request. Numbers are named fields rather than token positions, and keys are a span of the
 * line walked with mc_next_key(), so memcached's meta commands (mg/ms/md/ma/mn/me, where the
 * same values arrive as flags: T ttl, F flags, C cas, D delta, q quiet) fill the same fields;
 * they would add verbs, a flag set and a reply mode, not change what is here.
 */
#ifndef MCSERVER_PARSE_H
#define MCSERVER_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MC_KEY_MAX 250 /* longest key memcached accepts (KEY_MAX_LENGTH) */
#define MC_MAX_TOKENS 24 /* tokens memcached looks at in a non-retrieval line */

/* A run of bytes inside the parsed line. */
struct mc_token {
	const char *s;
	size_t n;
};

enum mc_verb {
	MC_ERROR, /* unknown command or wrong number of tokens: "ERROR" */
	MC_HTTP, /* an HTTP request line: memcached closes without a reply */
	MC_GET,
	MC_GETS,
	MC_GAT,
	MC_GATS,
	MC_SET,
	MC_ADD,
	MC_REPLACE,
	MC_APPEND,
	MC_PREPEND,
	MC_CAS,
	MC_INCR,
	MC_DECR,
	MC_DELETE,
	MC_TOUCH,
	MC_STATS,
	MC_FLUSH_ALL,
	MC_VERSION,
	MC_VERBOSITY,
	MC_QUIT,
	MC_SLABS_AUTOMOVE, /* slabs automove <0|1|2> | ratio <r> [noreply] */
	MC_MN, /* meta no-op: "MN" */
	MC_MG, /* meta get:        mg <key> <flag>* */
	MC_MS, /* meta set:        ms <key> <datalen> <flag>* */
	MC_MD, /* meta delete:     md <key> <flag>* */
	MC_MA, /* meta arithmetic: ma <key> <flag>* */
	MC_ME, /* meta debug:      me <key> [b] */
};

/* How a recognised command's arguments failed; the text is memcached's reply. */
enum mc_error {
	MC_OK,
	MC_ERR_FORMAT, /* "CLIENT_ERROR bad command line format" */
	MC_ERR_EXPTIME, /* "CLIENT_ERROR invalid exptime argument" */
	MC_ERR_DELTA, /* "CLIENT_ERROR invalid numeric delta argument" */
	MC_ERR_DELETE_USAGE, /* "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]" */
	MC_ERR_PLAIN, /* "ERROR", after noreply was parsed (so noreply hides it) */
	/* meta commands (never hidden by q) */
	MC_ERR_DUP_FLAG, /* "CLIENT_ERROR duplicate flag" */
	MC_ERR_INVALID_FLAG, /* "CLIENT_ERROR invalid flag" */
	MC_ERR_FLAG_MD_MA, /* "CLIENT_ERROR invalid or duplicate flag" (md, ma: any flag error) */
	MC_ERR_BAD_TOKEN, /* "CLIENT_ERROR bad token in command line format" */
	MC_ERR_KEY_DECODE, /* "CLIENT_ERROR error decoding key" */
	MC_ERR_M_LENGTH, /* "CLIENT_ERROR incorrect length for M token" */
	MC_ERR_INITIAL, /* "CLIENT_ERROR invalid numeric initial value" */
	MC_ERR_DELTA_VALUE, /* "CLIENT_ERROR invalid numeric delta value" */
	MC_ERR_MS_MODE, /* "CLIENT_ERROR invalid mode for ms M token" */
	MC_ERR_MA_MODE, /* "CLIENT_ERROR invalid mode for ma M token" */
	MC_ERR_OPAQUE, /* "CLIENT_ERROR opaque token too long" (see mc_meta.late_error) */
	MC_ERR_MG_TOO_LONG, /* "CLIENT_ERROR options flags are too long" (mg) */
	MC_ERR_TOO_LONG, /* "CLIENT_ERROR options flags too long" (ms, md, ma) */
};

enum mc_stats_group {
	MC_STATS_GENERAL, /* "stats" */
	MC_STATS_SETTINGS, /* "stats settings" */
	MC_STATS_STORAGE, /* "stats storage" */
	MC_STATS_RESET, /* "stats reset" */
	MC_STATS_ITEMS, /* "stats items" */
	MC_STATS_SLABS, /* "stats slabs" */
	MC_STATS_SIZES, /* "stats sizes" */
	MC_STATS_CONNS, /* "stats conns" */
};

#define MC_OPAQUE_MAX 32 /* longest O token, its 'O' included */

/*
 * A meta command's flags (memcached 1.6.18's _meta_flag_preparse). Flags that carry a number
 * fill the request's classic fields: T -> exptime, F -> flags, C -> cas, D -> delta (1 when
 * absent), J -> initial, N -> vivify_exptime; ms's datalen is vlen. The flag tokens, in the
 * order given, are the span `tokens`: the executor walks it (mc_next_key) for the return
 * flags, whose order is the order of the reply's fields.
 */
struct mc_meta {
	uint64_t seen[2]; /* flag characters present (bit c of the 128) */
	struct mc_token tokens; /* the flag tokens */
	size_t ntokens;
	char mode; /* M<mode> (ms, ma); 0 when absent */
	bool key_binary; /* b: the key is base64 (already checked to decode) */
	bool quiet; /* q: hide the nominal reply (EN for mg, HD for ms/md/ma) */
	bool value; /* v */
	bool has_ttl; /* T given: exptime holds it */
	bool has_cas; /* C given: cas holds it */
	bool vivify; /* N given */
	int32_t vivify_exptime; /* N's exptime */
	int32_t recache_exptime; /* R's exptime */
	uint64_t initial; /* J (ma) */
	/*
	 * MC_ERR_OPAQUE is found by memcached while it writes the reply, after the lookup (mg)
	 * or the arithmetic (ma), and after the T flags before the O token were applied:
	 * ttl_before_opaque tells whether T came before it.
	 */
	bool ttl_before_opaque;
	bool data_follows; /* ms: the value follows and is read, or swallowed on error */
	bool has_recache; /* R given: recache_exptime holds it */
};

/* True when meta flag character c was given. */
static inline bool mc_meta_has(const struct mc_meta *m, unsigned char c)
{
	return c < 128 && (m->seen[c >> 6] >> (c & 63)) & 1;
}

struct mc_request {
	enum mc_verb verb;
	enum mc_error error; /* MC_OK, or the reply for a recognised but malformed command */
	bool noreply; /* "noreply" ended the line: suppress this command's reply */
	/* Keys: a span of the line holding nkeys keys separated by spaces (mc_next_key walks
	 * it). Single-key commands have nkeys 1 and keys is that key. For a retrieval whose key
	 * nkeys+1 is over MC_KEY_MAX, error is MC_ERR_FORMAT and keys holds the keys before it,
	 * which memcached still looks up (and for gat touches) before it refuses the line. */
	struct mc_token keys;
	size_t nkeys;
	uint32_t flags; /* set family: client flags */
	int32_t exptime; /* set family, gat, touch, flush_all: memcached's exptime */
	int32_t vlen; /* set family: value length, 0 .. INT_MAX - 2 */
	uint64_t cas; /* cas: the unique the client read */
	uint64_t delta; /* incr/decr */
	uint32_t level; /* verbosity, slabs automove (when !ratio) */
	bool ratio; /* slabs automove ratio <ratio_value> */
	double ratio_value;
	struct mc_meta meta; /* MC_MG, MC_MS, MC_MD, MC_MA */
	enum mc_stats_group stats;
};

/*
 * Parses one command line, given without its "\n" and the '\r' before it (a NUL ends the
 * line, as memcached's tokenizer stops there). Always fills *req; never fails otherwise.
 */
void mc_parse(const char *line, size_t len, struct mc_request *req);

/*
 * memcached's base64 (the meta commands' b flag). Decoding skips characters outside the
 * alphabet, needs a nonzero multiple of 4 alphabet characters (padding included), stops after
 * the first padded block and fails on more than 2 '='; it returns the decoded length, 0 on
 * failure. out must hold n * 3 / 4 bytes. Encoding writes ((n + 2) / 3) * 4 bytes, padded.
 */
size_t mc_base64_decode(const char *in, size_t n, unsigned char *out);
size_t mc_base64_encode(const unsigned char *in, size_t n, char *out);

/*
 * The next key of a request's key span: *cursor starts at req->keys.s, end is
 * req->keys.s + req->keys.n. Call it exactly req->nkeys times.
 */
struct mc_token mc_next_key(const char **cursor, const char *end);

#endif
