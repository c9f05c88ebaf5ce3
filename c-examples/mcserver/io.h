/*
 * io.h - the network I/O boundary of mcserver.
 *
 * The I/O module owns listening sockets, worker threads, connections and output queues; the
 * protocol module (proto.c) sees only the callbacks and calls below. Implementations, chosen
 * at build time:
 *
 *   io_epoll.c  one epoll loop per worker thread, SO_REUSEPORT listener per worker
 *   io_p99.c    libp99's p99_engine (io_uring, epoll fallback)
 *
 * Model (event-driven, callback based):
 *   - on_accept: a new connection; returns the protocol's per-connection state.
 *   - on_data: bytes arrived. They are BORROWED for the duration of the call only; the protocol
 *     consumes what it can and copies any partial request into its own buffer.
 *   - on_close: the connection is gone (peer closed, error, io_close, or server stop); called
 *     exactly once per accepted connection, after which the conn handle is invalid.
 *
 * Output is queued per connection, in call order, and written when the socket allows:
 *   - io_send_copy(): the bytes are copied at once.
 *   - io_send_ref(): the bytes are borrowed; release(cookie) is called exactly once when they
 *     are no longer needed (fully written, or the connection closed). This lets a pinned cache
 *     value go to the socket without a copy and be unpinned afterwards.
 *
 * Back-pressure: when a connection's queued output passes the high-water mark the I/O module
 * stops reading from it (no more on_data) until the output drains, so a client that never
 * reads cannot make the server's memory grow without bound.
 *
 * Threading: all callbacks for one connection run on the same worker thread, one at a time.
 * io_send_copy/io_send_ref/io_close may be called only from within a callback of that
 * connection (on its worker thread). io_start/io_stop are called from the main thread.
 */
#ifndef MCSERVER_IO_H
#define MCSERVER_IO_H

#include <stddef.h>
#include <stdint.h>

struct io_conn; /* one client connection (opaque) */
struct io_server; /* the running I/O module (opaque) */

typedef void (*io_release_fn)(void *cookie);

struct io_callbacks {
	/* New connection. Returns the protocol's state for it (NULL refuses: conn closed). */
	void *(*on_accept)(struct io_conn *conn, void *ctx);
	/* Bytes received, borrowed for this call only. len > 0. */
	void (*on_data)(struct io_conn *conn, void *state, const char *data, size_t len);
	/* Connection closed; free state. No io_* call on conn after this returns. */
	void (*on_close)(struct io_conn *conn, void *state);
	void *ctx; /* passed to on_accept */
};

/* TLS settings (memcached's -Z -o ssl_chain_cert=,ssl_key=,ssl_ca_cert=,ssl_verify_mode=). */
struct io_tls {
	const char *chain_cert; /* PEM certificate chain, leaf first */
	const char *key; /* PEM private key of the leaf */
	const char *ca_cert; /* PEM CA list for client certificates, or NULL */
	int verify_mode; /* 0: no client certificate asked (default); 1: asked, verified
	                            when given; 2 or 3: required */
};

struct io_options {
	const char *addr; /* listen address (IPv4/IPv6 literal or host name) */
	uint16_t port; /* TCP port; 0 lets the kernel pick (see io_port) */
	unsigned threads; /* worker threads, >= 1 */
	unsigned max_conns; /* simultaneous connections; beyond it a client gets
	                            "ERROR Too many open connections" and is closed */
	size_t out_high_water; /* queued output bytes above which reading pauses */
	int verbose; /* -v level: log connection events to stderr */
	const struct io_tls *tls; /* serve TLS (only where io_supports_tls()); NULL: plaintext */
};

/* Whether this I/O module can serve TLS (-Z). */
int io_supports_tls(void);

/* Connection counters for "stats". */
struct io_stats {
	uint64_t curr_connections;
	uint64_t total_connections;
	uint64_t rejected_connections;
	uint64_t bytes_read;
	uint64_t bytes_written;
};

/*
 * Binds, listens and starts the worker threads. Returns the server, or NULL with a message in
 * err. Signals should be blocked by the caller before, so the workers inherit the mask.
 */
struct io_server *io_start(const struct io_options *opts, const struct io_callbacks *cb, char *err,
			   size_t errlen);

/* The TCP port actually bound (useful with port 0). */
uint16_t io_port(const struct io_server *srv);

/*
 * Stops accepting, closes every connection (on_close for each, pending ref releases called),
 * joins the workers and frees the server. Call once, from the thread that called io_start.
 */
void io_stop(struct io_server *srv);

/* Sums the connection counters of all workers (any thread; figures may be slightly stale). */
void io_get_stats(const struct io_server *srv, struct io_stats *out);

/* One line group of "stats conns" (memcached's format; see README.md for what differs). */
struct io_conn_info {
	int fd; /* the socket's descriptor */
	const char *addr; /* peer address, or a listener's own: "tcp:IP:PORT", "tcp6:[IP]:PORT" */
	const char *listen_addr; /* a connection's local address; NULL for a listener */
	const char *state; /* memcached's state name: conn_listening, conn_read, ... */
	uint64_t secs_since_last_cmd; /* since data last arrived (since accept if none) */
};

typedef void (*io_conn_fn)(void *ctx, const struct io_conn_info *info);

/*
 * Calls fn for each listener and each open connection of every worker, from any thread. The
 * module holds its connection registry lock around each call, so fn must only copy what it
 * needs (no io_* calls); the strings are valid during the call only. self, the connection
 * asking (or NULL), is reported as conn_parse_cmd like memcached reports the one it serves.
 */
void io_for_each_conn(struct io_server *srv, const struct io_conn *self, io_conn_fn fn, void *ctx);

/* Short name of the implementation, e.g. "epoll". */
const char *io_name(void);

/* Queues a copy of data. Returns 0, or -1 if the connection is closing (data dropped). */
int io_send_copy(struct io_conn *conn, const void *data, size_t len);

/*
 * Queues borrowed bytes; release(cookie) is called once they are written or dropped. Even on
 * failure (-1, connection closing) release is called (possibly before this returns).
 */
int io_send_ref(struct io_conn *conn, const void *data, size_t len, io_release_fn release,
		void *cookie);

/*
 * Closes the connection once the output already queued has been written (or could not be).
 * No more on_data after this; on_close follows.
 */
void io_close(struct io_conn *conn);

#endif
