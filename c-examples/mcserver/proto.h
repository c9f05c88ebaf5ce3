/*
 * proto.h - the memcached text protocol, between io.h and storage.h.
 *
 * proto.c parses requests (pipelined, split anywhere across reads), runs them against the
 * store and queues the replies, with memcached 1.6's exact reply strings. It knows nothing of
 * sockets or of how items are kept.
 */
#ifndef MCSERVER_PROTO_H
#define MCSERVER_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "io.h"

/* Server settings, reported by "stats settings" and used for limits. */
struct proto_settings {
	const char *addr;
	uint16_t port;
	unsigned threads;
	unsigned max_conns;
	size_t mem_limit;
	size_t item_max;
	double growth;
	bool cas_enabled;
	bool flush_disabled; /* -F: flush_all answers CLIENT_ERROR flush_all not allowed */
	int verbose;
};

/* Fills cb with the protocol's callbacks. settings is copied. */
void proto_init(const struct proto_settings *settings, struct io_callbacks *cb);

/* Tells the protocol which server to ask for connection figures ("stats"); NULL to forget. */
void proto_set_server(struct io_server *srv);

#endif
