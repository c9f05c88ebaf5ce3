// sources: c-examples/mcserver/parse.c
/*
 * mcparse.c - libFuzzer target for mcserver's protocol parser (parse.c) alone.
 *
 * Any bytes are a command line (the framing strips "\r\n" before the parser sees a line, so
 * the input may hold anything else, NULs included). Besides ASan/UBSan findings, it checks
 * the request's promises: the key span lies inside the line, walking it yields exactly nkeys
 * non-empty keys, none longer than MC_KEY_MAX unless the request is refused for that key, and
 * the fields are in their documented ranges.
 *
 * Build and run: make fuzz FUZZ_TARGETS=mcparse [FUZZ_SECS=60] (fuzz/run.sh)
 */
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "parse.h"

static void require(int ok)
{
	if (!ok)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *line = (const char *)data;
	struct mc_request req;
	mc_parse(line, size, &req);

	require(req.verb <= MC_ME);
	require(req.error <= MC_ERR_TOO_LONG);
	int retrieval = req.verb == MC_GET || req.verb == MC_GETS || req.verb == MC_GAT ||
			req.verb == MC_GATS;
	if (req.nkeys > 0) {
		require(req.keys.s >= line && req.keys.n <= size &&
			(size_t)(req.keys.s - line) <= size - req.keys.n);
		const char *p = req.keys.s, *end = req.keys.s + req.keys.n;
		for (size_t i = 0; i < req.nkeys; i++) {
			struct mc_token k = mc_next_key(&p, end);
			require(k.n > 0);
			/* a refused single-key command still names its key, whatever its length */
			require(k.n <= MC_KEY_MAX || (!retrieval && req.error != MC_OK));
			require(memchr(k.s, ' ', k.n) == NULL && memchr(k.s, '\0', k.n) == NULL);
		}
		require(mc_next_key(&p, end).n == 0);
	}
	switch (req.verb) {
	case MC_SET:
	case MC_ADD:
	case MC_REPLACE:
	case MC_APPEND:
	case MC_PREPEND:
	case MC_CAS:
		if (req.error == MC_OK)
			require(req.nkeys == 1 && req.vlen >= 0 && req.vlen <= INT_MAX - 2);
		break;
	case MC_INCR:
	case MC_DECR:
	case MC_DELETE:
	case MC_TOUCH: require(req.nkeys == 1); break;
	case MC_ERROR:
	case MC_HTTP: require(req.error == MC_OK && !req.noreply); break;
	case MC_MG:
	case MC_MS:
	case MC_MD:
	case MC_MA: {
		/* meta: one key; the flag span inside the line, walked into exactly ntokens flags */
		const struct mc_meta *m = &req.meta;
		require(req.nkeys == 1 && !req.noreply);
		if (req.error == MC_OK || req.error == MC_ERR_OPAQUE) {
			require(req.keys.n <= MC_KEY_MAX);
			require(m->tokens.s >= line && (size_t)(m->tokens.s - line) <= size &&
				m->tokens.n <= size - (size_t)(m->tokens.s - line));
			const char *p = m->tokens.s, *end = m->tokens.s + m->tokens.n;
			for (size_t i = 0; i < m->ntokens; i++)
				require(mc_next_key(&p, end).n > 0);
			require(mc_next_key(&p, end).n == 0);
			require(m->ntokens <= 18);
			if (m->key_binary) {
				unsigned char out[MC_KEY_MAX];
				require(mc_base64_decode(req.keys.s, req.keys.n, out) > 0);
			}
		}
		if (req.verb == MC_MS && m->data_follows)
			require(req.vlen >= 0 && req.vlen <= INT_MAX - 2);
		if (req.verb == MC_MA && req.error == MC_OK)
			require(m->mode == 0 || strchr("I+D-", m->mode));
		break;
	}
	default: break;
	}
	return 0;
}
