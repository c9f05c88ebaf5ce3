/* The ping protocol, shared by the C ping servers: a line "PING" (any case) ending in "\r\n"
 * gets "PONG\r\n", any other line "ERROR\r\n"; a line longer than PING_MAX_LINE bytes before
 * its '\n' closes the connection, however the bytes are split. */
#ifndef PING_PROTO_H
#define PING_PROTO_H

#include <stddef.h>

#define PING_MAX_LINE 1024

struct ping_parser {
	size_t len; /* bytes of the unfinished line */
	char line[PING_MAX_LINE + 1]; /* room for the line and its '\n' */
};

/* A growable output buffer. */
struct ping_out {
	char *buf;
	size_t len;
	size_t cap;
};

void ping_parser_init(struct ping_parser *p);

/* Appends one reply per complete line of data[0..len) to out. Returns 0 to keep the
 * connection, 1 when it must be closed (after sending what out holds), -1 when out of
 * memory. */
int ping_feed(struct ping_parser *p, const char *data, size_t len, struct ping_out *out);

void ping_out_free(struct ping_out *out);

#endif
