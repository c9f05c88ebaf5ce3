/*
 * io_p99.c - mcserver's I/O module (io.h) on libp99's p99_engine: one pinned worker per
 * thread with its own SO_REUSEPORT listener, io_uring (multishot accept and recv, provided
 * buffer ring, ordered sends) where the kernel allows it and epoll otherwise.
 *
 * io.h's calls take only the connection, while p99's worker calls also need the worker: every
 * callback records its worker in a thread-local before calling into the protocol, and io.h
 * allows io_send_* / io_close only from within a callback of that connection, on its thread.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <p99.h>

#include "conn_addr.h"
#include "io.h"

struct io_conn {
	p99_conn id;
	void *state;
	struct io_server *srv;
	bool over_limit; /* accepted beyond max_conns: told so, then closed */
	/* "stats conns": fixed at accept, before the connection is listed */
	int fd;
	char addr[CONN_ADDR_LEN];
	char local[CONN_ADDR_LEN];
	_Atomic int64_t last_cmd; /* conn_clock_secs() when data last arrived */
	struct io_conn *prev, *next; /* in io_server.listed, under conns_lock */
};

struct io_server {
	p99_engine *engine;
	struct io_callbacks cb;
	struct io_options opts;
	_Atomic uint64_t conns; /* open, counted against max_conns */
	_Atomic uint64_t total;
	_Atomic uint64_t rejected;
	uint32_t workers;
	/* Every listed connection of every worker: linked and unlinked by its worker, walked by
	 * io_for_each_conn from any thread (reading only the fields fixed at accept and
	 * last_cmd). */
	pthread_mutex_t conns_lock;
	struct io_conn *listed;
};

/* A borrowed send's release, carried through the engine as the send-done cookie. */
struct ref {
	io_release_fn release;
	void *cookie;
};

static __thread p99_worker *tls_worker;

const char *io_name(void)
{
	return "p99";
}

static void release_ref(struct ref *r)
{
	if (r->release)
		r->release(r->cookie);
	free(r);
}

static bool on_accept(void *user, p99_worker *w, p99_conn id)
{
	struct io_server *srv = user;
	tls_worker = w;
	struct io_conn *c = calloc(1, sizeof(*c));
	if (!c)
		return false;
	c->id = id;
	c->srv = srv;
	if (p99_worker_set_conn_user(w, id, c) != P99_STATUS_OK) {
		free(c);
		return false;
	}
	atomic_fetch_add(&srv->total, 1);
	if (atomic_fetch_add(&srv->conns, 1) >= srv->opts.max_conns) {
		static const char msg[] = "ERROR Too many open connections\r\n";
		c->over_limit = true;
		atomic_fetch_add(&srv->rejected, 1);
		p99_worker_send(w, id, (const uint8_t *)msg, sizeof(msg) - 1);
		p99_worker_close(w, id);
		return true;
	}
	c->fd = -1;
	p99_worker_conn_fd(w, id, &c->fd);
	conn_addr_format(c->fd, 1, c->addr, sizeof(c->addr));
	conn_addr_format(c->fd, 0, c->local, sizeof(c->local));
	atomic_init(&c->last_cmd, conn_clock_secs());
	pthread_mutex_lock(&srv->conns_lock);
	c->next = srv->listed;
	if (srv->listed)
		srv->listed->prev = c;
	srv->listed = c;
	pthread_mutex_unlock(&srv->conns_lock);
	if (srv->opts.verbose > 1)
		fprintf(stderr, "<%d new client connection\n", c->fd);
	c->state = srv->cb.on_accept(c, srv->cb.ctx);
	if (!c->state)
		p99_worker_close(w, id);
	return true;
}

static struct io_conn *conn_of(p99_worker *w, p99_conn id)
{
	void *c = NULL;
	if (p99_worker_conn_user(w, id, &c) != P99_STATUS_OK)
		return NULL;
	return c;
}

static void on_data(void *user, p99_worker *w, p99_conn id, const uint8_t *data, size_t len)
{
	(void)user;
	tls_worker = w;
	struct io_conn *c = conn_of(w, id);
	if (!c || c->over_limit || !c->state || len == 0)
		return;
	atomic_store_explicit(&c->last_cmd, conn_clock_secs(), memory_order_relaxed);
	c->srv->cb.on_data(c, c->state, (const char *)data, len);
}

static void on_send_done(void *user, p99_worker *w, p99_conn id, uint64_t cookie, bool sent)
{
	(void)user;
	(void)id;
	(void)sent;
	tls_worker = w;
	release_ref((struct ref *)(uintptr_t)cookie);
}

static void on_close(void *user, p99_worker *w, p99_conn id)
{
	struct io_server *srv = user;
	tls_worker = w;
	struct io_conn *c = conn_of(w, id);
	if (!c)
		return;
	if (!c->over_limit) {
		if (srv->opts.verbose > 1) {
			int fd = -1;
			p99_worker_conn_fd(w, id, &fd);
			fprintf(stderr, "<%d connection closed.\n", fd);
		}
		srv->cb.on_close(c, c->state);
		pthread_mutex_lock(&srv->conns_lock);
		if (c->prev)
			c->prev->next = c->next;
		else
			srv->listed = c->next;
		if (c->next)
			c->next->prev = c->prev;
		pthread_mutex_unlock(&srv->conns_lock);
	}
	atomic_fetch_sub(&srv->conns, 1);
	free(c);
}

/* The engine wants an address literal; io.h allows host names too. */
static int resolve(const char *addr, char *out, size_t outlen)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC,
				  .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_PASSIVE };
	struct addrinfo *res = NULL;
	if (getaddrinfo(addr, NULL, &hints, &res) != 0 || !res)
		return -1;
	const void *src = res->ai_family == AF_INET
				  ? (const void *)&((struct sockaddr_in *)res->ai_addr)->sin_addr
				  : (const void *)&((struct sockaddr_in6 *)res->ai_addr)->sin6_addr;
	const char *ok = inet_ntop(res->ai_family, src, out, (socklen_t)outlen);
	freeaddrinfo(res);
	return ok ? 0 : -1;
}

/* The engine terminates TLS: the callbacks below see plaintext either way. */
int io_supports_tls(void)
{
	return 1;
}

struct io_server *io_start(const struct io_options *opts, const struct io_callbacks *cb, char *err,
			   size_t errlen)
{
	char literal[INET6_ADDRSTRLEN];
	if (resolve(opts->addr ? opts->addr : "127.0.0.1", literal, sizeof(literal)) != 0) {
		snprintf(err, errlen, "cannot resolve listen address %s", opts->addr);
		return NULL;
	}
	struct io_server *srv = calloc(1, sizeof(*srv));
	if (!srv) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	srv->cb = *cb;
	srv->opts = *opts;
	if (pthread_mutex_init(&srv->conns_lock, NULL) != 0) {
		snprintf(err, errlen, "cannot create a mutex");
		free(srv);
		return NULL;
	}
	srv->workers = opts->threads ? opts->threads : 1;

	p99_engine_config cfg = { .struct_size = sizeof cfg };
	p99_engine_config_defaults(&cfg);
	cfg.addr = literal;
	cfg.port = opts->port;
	cfg.workers = srv->workers;
	/* The limit is enforced here, so an extra client gets the error line; the engine's own
	 * process-wide limit only bounds the clients being told so. */
	cfg.max_conns = opts->max_conns + 1024;
	cfg.out_high_water = opts->out_high_water ? opts->out_high_water : cfg.out_high_water;
	p99_tls_config tls = { .struct_size = sizeof tls };
	p99_tls_config_defaults(&tls);
	if (opts->tls) {
		tls.cert_chain_file = opts->tls->chain_cert;
		tls.key_file = opts->tls->key;
		if (opts->tls->verify_mode > 0) {
			tls.client_ca_file = opts->tls->ca_cert;
			tls.client_cert_optional = opts->tls->verify_mode == 1;
		}
		cfg.tls = &tls;
	}

	p99_engine_callbacks ecb = { .struct_size = sizeof ecb };
	p99_engine_callbacks_defaults(&ecb);
	ecb.user = srv;
	ecb.on_accept = on_accept;
	ecb.on_data = on_data;
	ecb.on_send_done = on_send_done;
	ecb.on_close = on_close;

	p99_status st = p99_engine_start(&cfg, &ecb, &srv->engine);
	if (st == P99_STATUS_TLS_CONFIG) {
		snprintf(err, errlen, "TLS: %s (ssl_chain_cert=%s, ssl_key=%s%s%s)",
			 p99_status_str(st), opts->tls->chain_cert, opts->tls->key,
			 tls.client_ca_file ? ", ssl_ca_cert=" : "",
			 tls.client_ca_file ? tls.client_ca_file : "");
		pthread_mutex_destroy(&srv->conns_lock);
		free(srv);
		return NULL;
	}
	if (st != P99_STATUS_OK) {
		snprintf(err, errlen, "p99_engine_start: %s (%s)", p99_status_str(st),
			 p99_last_error_message());
		pthread_mutex_destroy(&srv->conns_lock);
		free(srv);
		return NULL;
	}
	return srv;
}

uint16_t io_port(const struct io_server *srv)
{
	uint16_t port = 0;
	p99_engine_port(srv->engine, &port);
	return port;
}

void io_stop(struct io_server *srv)
{
	p99_engine_stop(srv->engine, 1000);
	p99_engine_free(srv->engine);
	pthread_mutex_destroy(&srv->conns_lock);
	free(srv);
}

void io_get_stats(const struct io_server *srv, struct io_stats *out)
{
	memset(out, 0, sizeof(*out));
	for (uint32_t i = 0; i < srv->workers; i++) {
		p99_worker_stats s = { .struct_size = sizeof(s) };
		if (p99_engine_stats(srv->engine, i, &s) == P99_STATUS_OK) {
			out->bytes_read += s.bytes_in;
			out->bytes_written += s.bytes_out;
		}
	}
	uint64_t rejected = atomic_load(&((struct io_server *)srv)->rejected);
	uint64_t open = atomic_load(&((struct io_server *)srv)->conns);
	out->rejected_connections = rejected;
	out->total_connections = atomic_load(&((struct io_server *)srv)->total) - rejected;
	out->curr_connections = open;
}

int io_send_copy(struct io_conn *conn, const void *data, size_t len)
{
	return p99_worker_send(tls_worker, conn->id, data, len) == P99_STATUS_OK ? 0 : -1;
}

int io_send_ref(struct io_conn *conn, const void *data, size_t len, io_release_fn release,
		void *cookie)
{
	struct ref *r = malloc(sizeof(*r));
	if (!r) {
		if (release)
			release(cookie);
		return -1;
	}
	r->release = release;
	r->cookie = cookie;
	struct iovec iov = { (void *)data, len };
	if (p99_worker_send_iov(tls_worker, conn->id, &iov, 1, (uint64_t)(uintptr_t)r) !=
	    P99_STATUS_OK) {
		release_ref(r);
		return -1;
	}
	return 0;
}

void io_close(struct io_conn *conn)
{
	p99_worker_close(tls_worker, conn->id);
}

/* The engine owns its listeners and does not expose them: only connections are listed. */
void io_for_each_conn(struct io_server *srv, const struct io_conn *self, io_conn_fn fn, void *ctx)
{
	int64_t now = conn_clock_secs();
	pthread_mutex_lock(&srv->conns_lock);
	for (const struct io_conn *c = srv->listed; c; c = c->next) {
		int64_t last = atomic_load_explicit(&c->last_cmd, memory_order_relaxed);
		struct io_conn_info ci = { .fd = c->fd,
					   .addr = c->addr,
					   .listen_addr = c->local,
					   .state = c == self ? "conn_parse_cmd" : "conn_read",
					   .secs_since_last_cmd = conn_secs_since(last, now) };
		fn(ctx, &ci);
	}
	pthread_mutex_unlock(&srv->conns_lock);
}
