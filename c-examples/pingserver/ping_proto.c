#include "ping_proto.h"

#include <stdlib.h>
#include <string.h>

static const char PONG[] = "PONG\r\n";
static const char ERR[] = "ERROR\r\n";

void ping_parser_init(struct ping_parser *p)
{
	p->len = 0;
}

static int out_append(struct ping_out *out, const char *s, size_t n)
{
	if (out->len + n > out->cap) {
		size_t cap = out->cap ? out->cap : 256;
		while (cap < out->len + n)
			cap *= 2;
		char *b = realloc(out->buf, cap);
		if (!b)
			return -1;
		out->buf = b;
		out->cap = cap;
	}
	memcpy(out->buf + out->len, s, n);
	out->len += n;
	return 0;
}

static int is_ping(const char *l, size_t n)
{
	return n == 6 && (l[0] | 0x20) == 'p' && (l[1] | 0x20) == 'i' && (l[2] | 0x20) == 'n' &&
	       (l[3] | 0x20) == 'g' && l[4] == '\r' && l[5] == '\n';
}

static int reply(struct ping_out *out, const char *line, size_t n)
{
	return is_ping(line, n) ? out_append(out, PONG, 6) : out_append(out, ERR, 7);
}

int ping_feed(struct ping_parser *p, const char *data, size_t len, struct ping_out *out)
{
	while (len > 0) {
		const char *nl = memchr(data, '\n', len);
		if (!nl) {
			if (p->len + len > PING_MAX_LINE)
				return 1;
			memcpy(p->line + p->len, data, len);
			p->len += len;
			return 0;
		}
		size_t n = (size_t)(nl - data) + 1;
		if (p->len + n - 1 > PING_MAX_LINE)
			return 1;
		int r;
		if (p->len == 0) {
			r = reply(out, data, n);
		} else {
			memcpy(p->line + p->len, data, n);
			r = reply(out, p->line, p->len + n);
			p->len = 0;
		}
		if (r < 0)
			return -1;
		data += n;
		len -= n;
	}
	return 0;
}

void ping_out_free(struct ping_out *out)
{
	free(out->buf);
	out->buf = NULL;
	out->len = out->cap = 0;
}
