/* pingserver-c: the baseline a C shop runs today. Pure C, no libp99: one thread per CPU
 * (or -t), each pinned, each with its own SO_REUSEPORT listener and a level-triggered epoll
 * loop; reads into a per-thread buffer, writes replies at once, queues the rest for EPOLLOUT
 * (and stops reading a connection while its queue is above PENDING_HIGH_WATER).
 * SIGINT/SIGTERM stop it.
 *
 * Why this loop is not mcserver's io_epoll.c: it is the yardstick the engine is measured
 * against (make parity, tests/ping_parity.rs), so it stays the smallest loop a C programmer
 * would write for a one-line protocol: replies go out with one send() from the read path,
 * and only what the socket refuses is copied into a single pending buffer. io_epoll.c serves
 * a cache instead: a callback boundary, per-connection segment queues and borrowed,
 * released-later values, none of which a ping reply needs and all of which would change the
 * baseline's cost. What both loops must get right the same way, accepting when out of
 * descriptors and the descriptor limit at start, is shared (c-examples/common/fd_limits.h).
 *
 * With --tls-cert/--tls-key it serves TLS through OpenSSL the way a C shop adds it to such a
 * loop: one SSL per connection on the non-blocking socket, SSL_read until it wants more
 * input (it buffers whole records, so level-triggered readiness alone would miss data),
 * SSL_write for replies (partial writes on, a refused write retried from the pending
 * buffer), SSL_shutdown's close_notify on an orderly close. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "fd_limits.h"
#include "ping_args.h"
#include "ping_proto.h"

#define READ_SIZE 4096
/* While more than this many reply bytes wait for a client that does not read, the
 * connection is not read from (EPOLLIN dropped); reading resumes once the queue has drained
 * back to or below it. This bounds the memory one pipelining, never-reading client can pin. */
#define PENDING_HIGH_WATER (64 * 1024)

struct conn {
	int fd;
	SSL *ssl; /* with --tls-cert: the connection's TLS state */
	int tls_wants_write; /* SSL_read needs the socket writable to go on (handshake) */
	int closing; /* close once the pending output is written */
	uint32_t events; /* current epoll interest */
	struct ping_parser parser;
	struct ping_out pending; /* replies the socket did not take yet */
	size_t pending_off;
};

struct worker {
	pthread_t thread;
	int index;
	int cpu;
	int listen_fd;
	int stop_fd; /* eventfd: readable when the server stops */
	int epfd;
	struct fd_spare *spare; /* shared by the workers: accepting when out of fds */
	struct listener_pause pause;
};

/* -c is one limit for the process, however the kernel spreads connections over the workers'
 * listeners: each accept takes a place from this count before it is served. */
static atomic_int open_conns;
static int max_conns;

/* -b (test only): CPU time burnt per request, so a benchmark can be shown a server that is
 * slower by a known amount. Set before the workers start, read-only after. */
static long burn_ns;

/* --tls-cert/--tls-key: every connection is TLS. Set before the workers start. */
static SSL_CTX *tls_ctx;

static long thread_cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (long)ts.tv_sec * 1000000000L + ts.tv_nsec;
}

/* Spins until this thread has used `ns` more CPU time (time preempted does not count). */
static void burn_cpu(long ns)
{
	long until = thread_cpu_ns() + ns;
	while (thread_cpu_ns() < until)
		;
}

static long count_requests(const char *buf, size_t n)
{
	long lines = 0;
	const char *p = buf, *end = buf + n;
	while ((p = memchr(p, '\n', (size_t)(end - p))) != NULL) {
		lines++;
		p++;
	}
	return lines;
}

static int make_listener(const struct sockaddr_storage *ss, socklen_t sslen)
{
	int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	int one = 1;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
	    bind(fd, (const struct sockaddr *)ss, sslen) < 0 || listen(fd, 1024) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static void conn_free(int epfd, struct conn *c)
{
	epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
	if (c->ssl)
		SSL_free(c->ssl);
	close(c->fd);
	ping_out_free(&c->pending);
	free(c);
	atomic_fetch_sub(&open_conns, 1);
}

static int set_events(int epfd, struct conn *c, uint32_t ev)
{
	if (ev == c->events)
		return 0;
	struct epoll_event e = { .events = ev, .data.ptr = c };
	if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &e) < 0)
		return -1;
	c->events = ev;
	return 0;
}

/* Writes up to `len` bytes: the count written, 0 when the socket takes nothing now, -1
 * when the connection is dead. Over TLS the bytes are encrypted first; a write OpenSSL could
 * not finish is retried later with the same bytes at the same place (they stay pending). */
static ssize_t conn_write(struct conn *c, const char *buf, size_t len)
{
	if (c->ssl) {
		ERR_clear_error();
		int n = SSL_write(c->ssl, buf, (int)(len > INT32_MAX ? INT32_MAX : len));
		if (n > 0)
			return n;
		int e = SSL_get_error(c->ssl, n);
		return e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ ? 0 : -1;
	}
	ssize_t n = send(c->fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
	if (n < 0)
		return errno == EAGAIN || errno == EINTR ? 0 : -1;
	return n;
}

/* Writes what is pending; returns -1 when the connection is dead. */
static int flush_pending(int epfd, struct conn *c)
{
	while (c->pending_off < c->pending.len) {
		ssize_t n = conn_write(c, c->pending.buf + c->pending_off,
				       c->pending.len - c->pending_off);
		if (n < 0)
			return -1;
		if (n == 0)
			break;
		c->pending_off += (size_t)n;
	}
	if (c->pending_off == c->pending.len) {
		c->pending.len = 0;
		c->pending_off = 0;
	}
	/* pending.len counts the written prefix too (the buffer is only reset once drained), so
	 * it is what bounds the buffer's size. */
	int want_read = !c->closing && c->pending.len <= PENDING_HIGH_WATER;
	uint32_t ev = want_read ? (EPOLLIN | EPOLLRDHUP) : 0;
	if (c->pending.len > 0 || c->tls_wants_write)
		ev |= EPOLLOUT;
	return set_events(epfd, c, ev);
}

/* Sends close_notify on an orderly TLS close (best effort: the socket is closed next). */
static void conn_close(int epfd, struct conn *c)
{
	if (c->ssl) {
		ERR_clear_error();
		SSL_shutdown(c->ssl);
	}
	conn_free(epfd, c);
}

/* Reads into `buf`: the byte count, 0 at the peer's orderly end, -1 when nothing is ready
 * now (EAGAIN), -2 when the connection is dead. Over TLS this also drives the handshake. */
static ssize_t conn_read(struct conn *c, char *buf)
{
	if (c->ssl) {
		ERR_clear_error();
		c->tls_wants_write = 0;
		int n = SSL_read(c->ssl, buf, READ_SIZE);
		if (n > 0)
			return n;
		switch (SSL_get_error(c->ssl, n)) {
		case SSL_ERROR_WANT_READ: return -1;
		case SSL_ERROR_WANT_WRITE: c->tls_wants_write = 1; return -1;
		case SSL_ERROR_ZERO_RETURN: return 0;
		default: return -2;
		}
	}
	ssize_t n = recv(c->fd, buf, READ_SIZE, MSG_DONTWAIT);
	if (n < 0)
		return errno == EAGAIN || errno == EINTR ? -1 : -2;
	return n;
}

/* One read's worth of input: parse, answer. Returns -1 once `c` is freed. */
static int on_input(int epfd, struct conn *c, char *buf, ssize_t n, struct ping_out *out);

static void on_readable(int epfd, struct conn *c, char *buf, struct ping_out *out)
{
	/* TLS: SSL_read until OpenSSL has no whole record left, or it may sit on input that
	 * epoll will never report again. Plaintext: one read per readiness, as before. */
	do {
		ssize_t n = conn_read(c, buf);
		if (n == -2) {
			conn_free(epfd, c);
			return;
		}
		if (n == -1)
			break;
		if (on_input(epfd, c, buf, n, out) < 0)
			return;
	} while (c->ssl && !c->closing);
	if (flush_pending(epfd, c) < 0)
		conn_free(epfd, c);
	else if (c->closing && c->pending.len == 0)
		conn_close(epfd, c);
}

static int on_input(int epfd, struct conn *c, char *buf, ssize_t n, struct ping_out *out)
{
	if (n == 0) {
		/* Half-close: answer what was asked, then close. */
		c->closing = 1;
	} else {
		out->len = 0;
		int r = ping_feed(&c->parser, buf, (size_t)n, out);
		if (burn_ns > 0)
			burn_cpu(burn_ns * count_requests(buf, (size_t)n));
		if (r != 0)
			c->closing = 1;
		if (out->len > 0) {
			size_t off = 0;
			if (c->pending.len == 0) {
				ssize_t s = conn_write(c, out->buf, out->len);
				if (s < 0) {
					conn_free(epfd, c);
					return -1;
				}
				off = (size_t)s;
			}
			if (off < out->len) {
				/* Queue the remainder behind what is already pending. */
				size_t need = c->pending.len + (out->len - off);
				if (need > c->pending.cap) {
					char *b = realloc(c->pending.buf, need);
					if (!b) {
						conn_free(epfd, c);
						return -1;
					}
					c->pending.buf = b;
					c->pending.cap = need;
				}
				memcpy(c->pending.buf + c->pending.len, out->buf + off,
				       out->len - off);
				c->pending.len = need;
			}
		}
	}
	return 0;
}

/* Out of descriptors: the ping protocol has no error line, the client is just closed. */
static void refuse(int fd, void *ctx)
{
	(void)ctx;
	close(fd);
}

static void accept_all(int epfd, struct worker *w)
{
	for (int i = 0; i < 64; i++) {
		int fd;
		enum accept_result r = fd_spare_accept(
			w->spare, w->listen_fd, SOCK_NONBLOCK | SOCK_CLOEXEC, refuse, NULL, &fd);
		if (r == ACCEPT_REFUSED)
			continue;
		if (r == ACCEPT_EXHAUSTED || r == ACCEPT_FAILED)
			listener_pause(&w->pause);
		if (r != ACCEPT_OK)
			return;
		if (atomic_fetch_add(&open_conns, 1) >= max_conns) {
			atomic_fetch_sub(&open_conns, 1);
			close(fd);
			continue;
		}
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		struct conn *c = calloc(1, sizeof(*c));
		if (!c) {
			atomic_fetch_sub(&open_conns, 1);
			close(fd);
			continue;
		}
		c->fd = fd;
		if (tls_ctx) {
			c->ssl = SSL_new(tls_ctx);
			if (!c->ssl || SSL_set_fd(c->ssl, fd) != 1) {
				SSL_free(c->ssl);
				atomic_fetch_sub(&open_conns, 1);
				close(fd);
				free(c);
				continue;
			}
			SSL_set_accept_state(c->ssl);
		}
		c->events = EPOLLIN | EPOLLRDHUP;
		ping_parser_init(&c->parser);
		struct epoll_event e = { .events = c->events, .data.ptr = c };
		if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &e) < 0) {
			atomic_fetch_sub(&open_conns, 1);
			close(fd);
			SSL_free(c->ssl);
			free(c);
			continue;
		}
	}
}

/* The listener and the stop eventfd are told apart from connections by these tags. */
static char listen_tag, stop_tag;

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	if (w->cpu >= 0) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(w->cpu, &set);
		pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
	}
	int epfd = w->epfd;
	char *buf = malloc(READ_SIZE);
	struct ping_out out = { 0 };
	struct epoll_event evs[256];
	int running = 1;
	while (running) {
		int n = epoll_wait(epfd, evs, 256, listener_pause_timeout(&w->pause));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			perror("epoll_wait");
			exit(1);
		}
		for (int i = 0; i < n; i++) {
			void *p = evs[i].data.ptr;
			if (p == &listen_tag) {
				accept_all(epfd, w);
			} else if (p == &stop_tag) {
				running = 0;
			} else {
				struct conn *c = p;
				if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
					if (c->closing) {
						if (evs[i].events & (EPOLLHUP | EPOLLERR))
							conn_free(epfd, c);
						continue;
					}
					on_readable(epfd, c, buf, &out);
				} else if (evs[i].events & EPOLLOUT) {
					if (c->tls_wants_write)
						on_readable(epfd, c, buf, &out);
					else if (flush_pending(epfd, c) < 0)
						conn_free(epfd, c);
					else if (c->closing && c->pending.len == 0)
						conn_close(epfd, c);
				}
			}
		}
	}
	free(buf);
	ping_out_free(&out);
	return NULL;
}

/* The worker's epoll set, made before the server says it is listening (so a caller that
 * counts its descriptors then sees them all). Returns -1 on failure. */
static int worker_epoll(struct worker *w)
{
	w->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (w->epfd < 0)
		return -1;
	struct epoll_event e = { .events = EPOLLIN, .data.ptr = &listen_tag };
	struct epoll_event s = { .events = EPOLLIN, .data.ptr = &stop_tag };
	if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->listen_fd, &e) < 0 ||
	    epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->stop_fd, &s) < 0)
		return -1;
	w->pause =
		(struct listener_pause){ .epfd = w->epfd, .fd = w->listen_fd, .tag = &listen_tag };
	return 0;
}

/* The server's TLS context from --tls-cert/--tls-key: TLS 1.2 and 1.3, session tickets on
 * (OpenSSL's default), partial writes so a reply can go out in pieces. NULL with a message
 * on failure. */
static SSL_CTX *tls_context(const char *cert, const char *key)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	if (!ctx || SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
	    SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
	    SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(ctx) != 1) {
		char err[256];
		ERR_error_string_n(ERR_get_error(), err, sizeof(err));
		fprintf(stderr, "pingserver-c: TLS (--tls-cert %s --tls-key %s): %s\n", cert, key,
			err);
		SSL_CTX_free(ctx);
		return NULL;
	}
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
				      SSL_MODE_RELEASE_BUFFERS);
	return ctx;
}

int main(int argc, char **argv)
{
	struct ping_args a;
	ping_args_parse(&a, argc, argv, "pingserver-c");
	if (a.tls_cert && !(tls_ctx = tls_context(a.tls_cert, a.tls_key)))
		return 1;
	/* OpenSSL writes with write(2), not send(MSG_NOSIGNAL): a peer gone mid-write must not
	 * kill the server. */
	signal(SIGPIPE, SIG_IGN);
	burn_ns = a.burn_ns;
	int ncpu = ping_affinity_cpus();
	int nthreads = a.threads > 0 ? a.threads : ncpu;
	ping_fd_limit(&a, nthreads, "pingserver-c");
	max_conns = a.maxconn;
	struct fd_spare spare;
	if (fd_spare_init(&spare) != 0) {
		perror("pingserver-c: spare descriptor");
		return 1;
	}

	struct sockaddr_storage ss;
	socklen_t sslen;
	memset(&ss, 0, sizeof(ss));
	struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
	if (inet_pton(AF_INET, a.addr, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)a.port);
		sslen = sizeof(*sin);
	} else if (inet_pton(AF_INET6, a.addr, &sin6->sin6_addr) == 1) {
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)a.port);
		sslen = sizeof(*sin6);
	} else {
		fprintf(stderr, "pingserver-c: bad address %s\n", a.addr);
		return 2;
	}

	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);

	cpu_set_t mask;
	int cpus[CPU_SETSIZE];
	int ncpus = 0;
	if (sched_getaffinity(0, sizeof(mask), &mask) == 0)
		for (int c = 0; c < CPU_SETSIZE; c++)
			if (CPU_ISSET(c, &mask))
				cpus[ncpus++] = c;

	struct worker *ws = calloc((size_t)nthreads, sizeof(*ws));
	int port = a.port;
	for (int i = 0; i < nthreads; i++) {
		/* With -p 0 the first bind picks the port; the others join it. */
		if (ss.ss_family == AF_INET)
			sin->sin_port = htons((uint16_t)port);
		else
			sin6->sin6_port = htons((uint16_t)port);
		ws[i].listen_fd = make_listener(&ss, sslen);
		if (ws[i].listen_fd < 0) {
			perror("pingserver-c: listen");
			return 1;
		}
		struct sockaddr_storage got;
		socklen_t gl = sizeof(got);
		getsockname(ws[i].listen_fd, (struct sockaddr *)&got, &gl);
		port = ntohs(got.ss_family == AF_INET ? ((struct sockaddr_in *)&got)->sin_port
						      : ((struct sockaddr_in6 *)&got)->sin6_port);
		ws[i].stop_fd = eventfd(0, EFD_CLOEXEC);
		if (ws[i].stop_fd < 0 || worker_epoll(&ws[i]) < 0) {
			perror("pingserver-c: epoll");
			return 1;
		}
		ws[i].index = i;
		ws[i].spare = &spare;
		ws[i].cpu = ncpus > 0 ? cpus[i % ncpus] : -1;
	}
	for (int i = 0; i < nthreads; i++)
		pthread_create(&ws[i].thread, NULL, worker_main, &ws[i]);
	printf("pingserver-c: listening on %s:%d (backend epoll, %d workers%s)\n", a.addr, port,
	       nthreads, tls_ctx ? ", TLS" : "");
	fflush(stdout);

	int sig;
	sigwait(&set, &sig);
	for (int i = 0; i < nthreads; i++) {
		uint64_t one = 1;
		if (write(ws[i].stop_fd, &one, sizeof(one)) < 0)
			perror("pingserver-c: stop");
	}
	for (int i = 0; i < nthreads; i++) {
		pthread_join(ws[i].thread, NULL);
		close(ws[i].listen_fd);
		close(ws[i].stop_fd);
		close(ws[i].epfd);
	}
	free(ws);
	fd_spare_destroy(&spare);
	SSL_CTX_free(tls_ctx);
	fprintf(stderr, "pingserver-c: stopped\n");
	return 0;
}
