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

#define MC_KEY_MAX 250   /* longest key memcached accepts (KEY_MAX_LENGTH) */
#define MC_MAX_TOKENS 24 /* tokens memcached looks at in a non-retrieval line */

/* A run of bytes inside the parsed line. */
struct mc_token {
	const char *s;
	size_t n;
};

enum mc_verb {
	MC_ERROR,      /* unknown command or wrong number of tokens: "ERROR" */
	MC_HTTP,       /* an HTTP request line: memcached closes without a reply */
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
};

/* How a recognised command's arguments failed; the text is memcached's reply. */
enum mc_error {
	MC_OK,
	MC_ERR_FORMAT,       /* "CLIENT_ERROR bad command line format" */
	MC_ERR_EXPTIME,      /* "CLIENT_ERROR invalid exptime argument" */
	MC_ERR_DELTA,        /* "CLIENT_ERROR invalid numeric delta argument" */
	MC_ERR_DELETE_USAGE, /* "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]" */
};

enum mc_stats_group {
	MC_STATS_GENERAL,  /* "stats" */
	MC_STATS_SETTINGS, /* "stats settings" */
	MC_STATS_STORAGE,  /* "stats storage" */
	MC_STATS_RESET,    /* "stats reset" */
};

struct mc_request {
	enum mc_verb verb;
	enum mc_error error;     /* MC_OK, or the reply for a recognised but malformed command */
	bool noreply;            /* "noreply" ended the line: suppress this command's reply */
	/* Keys: a span of the line holding nkeys keys separated by spaces (mc_next_key walks
	 * it). Single-key commands have nkeys 1 and keys is that key. For a retrieval whose key
	 * nkeys+1 is over MC_KEY_MAX, error is MC_ERR_FORMAT and keys holds the keys before it,
	 * which memcached still looks up (and for gat touches) before it refuses the line. */
	struct mc_token keys;
	size_t nkeys;
	uint32_t flags;          /* set family: client flags */
	int32_t exptime;         /* set family, gat, touch, flush_all: memcached's exptime */
	int32_t vlen;            /* set family: value length, 0 .. INT_MAX - 2 */
	uint64_t cas;            /* cas: the unique the client read */
	uint64_t delta;          /* incr/decr */
	uint32_t level;          /* verbosity */
	enum mc_stats_group stats;
};

/*
 * Parses one command line, given without its "\n" and the '\r' before it (a NUL ends the
 * line, as memcached's tokenizer stops there). Always fills *req; never fails otherwise.
 */
void mc_parse(const char *line, size_t len, struct mc_request *req);

/*
 * The next key of a request's key span: *cursor starts at req->keys.s, end is
 * req->keys.s + req->keys.n. Call it exactly req->nkeys times.
 */
struct mc_token mc_next_key(const char **cursor, const char *end);

#endif
