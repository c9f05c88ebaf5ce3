/*
 * io_epoll.c - io.h on epoll: one worker thread per -t, each with its own epoll instance and
 * its own SO_REUSEPORT listener, so the kernel spreads connections and no lock is shared on
 * the I/O path.
 *
 * Sockets are nonblocking and level-triggered. Each read goes into the worker's buffer and is
 * lent to on_data; replies are queued per connection as a list of segments (owned copies,
 * or borrowed references with a release callback) and written with writev. While a
 * connection's queued output is above the high-water mark it is not read from, so a client
 * that sends but never reads costs at most that much memory, plus the replies to one read.
 */
#define _GNU_SOURCE
#include "io.h"

#include "conn_addr.h"
#include "fd_limits.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define READ_BUF_SIZE (16 * 1024)
#define CHUNK_SIZE (16 * 1024)
/* A copy queued right behind a reference starts a chunk this small: a pipeline of gets of large
 * values alternates "\r\n" + the next VALUE line (copies) with values (references), and one
 * 16 KiB read of such gets queued hundreds of 16 KiB chunks (a page of each touched) before the
 * high-water mark could stop reading: about 1.9 MiB per connection that never reads. */
#define CHUNK_AFTER_REF 512
#define MAX_EVENTS 128
#define MAX_IOV 64
#define READS_PER_EVENT 4 /* fairness: then give other connections a turn */

struct segment {
	const char *data;
	size_t len;
	char *owned; /* chunk to free (copies), or NULL */
	size_t cap; /* capacity of owned */
	io_release_fn release; /* for references */
	void *cookie;
};

struct worker;

struct io_conn {
	int fd;
	struct worker *w;
	void *state;
	struct io_conn *prev, *next;
	struct segment *segs;
	size_t head, nsegs, segcap; /* queued segments are segs[head .. nsegs) */
	size_t head_off; /* bytes of segs[head] already written */
	size_t queued; /* bytes queued, not yet written */
	bool closing; /* io_close: close once output drained */
	bool dead; /* socket failed: close now */
	bool reading; /* EPOLLIN armed */
	bool writing; /* EPOLLOUT armed */
	char addr[CONN_ADDR_LEN]; /* peer, for "stats conns" (set before it is listed) */
	char local[CONN_ADDR_LEN]; /* own address */
	_Atomic int64_t last_cmd; /* conn_clock_secs() when data last arrived */
};

struct worker {
	struct io_server *srv;
	pthread_t thread;
	int epfd, listen_fd, stop_fd;
	struct listener_pause pause; /* out of fds with no spare: listener not polled a while */
	/* The conns list; taken by this worker only to link or unlink, and by io_for_each_conn
	 * from any thread to walk it (it then reads only fd, addr, local, last_cmd). */
	pthread_mutex_t conns_lock;
	bool lock_made;
	struct io_conn *conns;
	char listen_addr[CONN_ADDR_LEN];
	int64_t started; /* conn_clock_secs() at start: a listener's "last command" */
	char rbuf[READ_BUF_SIZE];
	_Atomic uint64_t curr, total, rejected, bytes_read, bytes_written;
};

struct io_server {
	struct io_options opts;
	struct io_callbacks cb;
	unsigned nworkers;
	struct worker *workers;
	uint16_t port;
	_Atomic unsigned conns;
	struct fd_spare spare; /* accept-and-refuse when out of descriptors (fd_limits.h) */
};

static void add(_Atomic uint64_t *v, uint64_t n)
{
	atomic_fetch_add_explicit(v, n, memory_order_relaxed);
}

const char *io_name(void)
{
	return "epoll";
}

/* --- output queue -------------------------------------------------------------------------- */

static struct segment *seg_push(struct io_conn *c)
{
	if (c->head > 0 && c->head == c->nsegs) {
		c->head = c->nsegs = 0;
	} else if (c->nsegs == c->segcap && c->head > 0) {
		memmove(c->segs, c->segs + c->head, (c->nsegs - c->head) * sizeof(*c->segs));
		c->nsegs -= c->head;
		c->head = 0;
	}
	if (c->nsegs == c->segcap) {
		size_t cap = c->segcap ? c->segcap * 2 : 8;
		struct segment *s = realloc(c->segs, cap * sizeof(*s));
		if (!s)
			return NULL;
		c->segs = s;
		c->segcap = cap;
	}
	struct segment *s = &c->segs[c->nsegs++];
	memset(s, 0, sizeof(*s));
	return s;
}

static void seg_done(struct segment *s)
{
	if (s->release)
		s->release(s->cookie);
	free(s->owned);
	s->release = NULL;
	s->owned = NULL;
}

int io_send_copy(struct io_conn *c, const void *data, size_t len)
{
	if (c->closing || c->dead)
		return -1;
	if (len == 0)
		return 0;
	struct segment *last = c->nsegs > c->head ? &c->segs[c->nsegs - 1] : NULL;
	if (last && last->owned && last->cap - last->len >= len) {
		memcpy(last->owned + last->len, data, len);
		last->len += len;
		c->queued += len;
		return 0;
	}
	size_t want = last && !last->owned ? CHUNK_AFTER_REF : CHUNK_SIZE;
	size_t cap = len > want ? len : want;
	char *chunk = malloc(cap);
	struct segment *s = chunk ? seg_push(c) : NULL;
	if (!s) {
		free(chunk);
		c->dead = true; /* cannot keep the reply stream intact: drop the connection */
		return -1;
	}
	memcpy(chunk, data, len);
	s->owned = chunk;
	s->data = chunk;
	s->cap = cap;
	s->len = len;
	c->queued += len;
	return 0;
}

int io_send_ref(struct io_conn *c, const void *data, size_t len, io_release_fn release,
		void *cookie)
{
	struct segment *s = (c->closing || c->dead) ? NULL : seg_push(c);
	if (!s) {
		if (!c->closing)
			c->dead = true;
		if (release)
			release(cookie);
		return -1;
	}
	s->data = data;
	s->len = len;
	s->release = release;
	s->cookie = cookie;
	c->queued += len;
	return 0;
}

void io_close(struct io_conn *c)
{
	c->closing = true;
}

/* Writes what the socket takes. Returns false when the connection has failed. */
static bool flush(struct io_conn *c)
{
	while (c->head < c->nsegs) {
		struct iovec iov[MAX_IOV];
		int n = 0;
		for (size_t i = c->head; i < c->nsegs && n < MAX_IOV; i++, n++) {
			size_t off = i == c->head ? c->head_off : 0;
			iov[n].iov_base = (void *)(c->segs[i].data + off);
			iov[n].iov_len = c->segs[i].len - off;
		}
		ssize_t w = writev(c->fd, iov, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return true;
			return false;
		}
		add(&c->w->bytes_written, (uint64_t)w);
		c->queued -= (size_t)w;
		size_t left = (size_t)w;
		while (left > 0 || (c->head < c->nsegs && c->segs[c->head].len == c->head_off)) {
			struct segment *s = &c->segs[c->head];
			size_t rem = s->len - c->head_off;
			if (left < rem) {
				c->head_off += left;
				left = 0;
				break;
			}
			left -= rem;
			seg_done(s);
			c->head++;
			c->head_off = 0;
		}
	}
	c->head = c->nsegs = 0;
	/* a long burst of output leaves a big segment array: give it back */
	if (c->segcap > 256) {
		free(c->segs);
		c->segs = NULL;
		c->segcap = 0;
	}
	return true;
}

/* --- connections ---------------------------------------------------------------------------- */

static void conn_close(struct io_conn *c)
{
	struct worker *w = c->w;
	epoll_ctl(w->epfd, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	for (size_t i = c->head; i < c->nsegs; i++)
		seg_done(&c->segs[i]);
	free(c->segs);
	pthread_mutex_lock(&w->conns_lock);
	if (c->prev)
		c->prev->next = c->next;
	else
		w->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	pthread_mutex_unlock(&w->conns_lock);
	w->srv->cb.on_close(c, c->state);
	atomic_fetch_sub(&w->srv->conns, 1);
	atomic_fetch_sub_explicit(&w->curr, 1, memory_order_relaxed);
	if (w->srv->opts.verbose > 1)
		fprintf(stderr, "<%d connection closed.\n", c->fd);
	free(c);
}

static void conn_arm(struct io_conn *c)
{
	bool want_read = !c->closing && c->queued < c->w->srv->opts.out_high_water;
	bool want_write = c->queued > 0;
	if (want_read == c->reading && want_write == c->writing)
		return;
	struct epoll_event ev = {
		.events = (want_read ? EPOLLIN : 0) | (want_write ? EPOLLOUT : 0),
		.data.ptr = c,
	};
	epoll_ctl(c->w->epfd, EPOLL_CTL_MOD, c->fd, &ev);
	c->reading = want_read;
	c->writing = want_write;
}

/* After any activity: write, then close or re-arm. */
static void conn_settle(struct io_conn *c)
{
	if (!c->dead && c->queued > 0 && !flush(c))
		c->dead = true;
	if (c->dead || (c->closing && c->queued == 0)) {
		conn_close(c);
		return;
	}
	conn_arm(c);
}

static void conn_readable(struct io_conn *c)
{
	struct worker *w = c->w;
	for (int i = 0; i < READS_PER_EVENT; i++) {
		ssize_t r = read(c->fd, w->rbuf, sizeof(w->rbuf));
		if (r > 0) {
			add(&w->bytes_read, (uint64_t)r);
			atomic_store_explicit(&c->last_cmd, conn_clock_secs(),
					      memory_order_relaxed);
			w->srv->cb.on_data(c, c->state, w->rbuf, (size_t)r);
			if (c->closing || c->dead || (size_t)r < sizeof(w->rbuf))
				break;
			if (c->queued >= w->srv->opts.out_high_water)
				break;
			continue;
		}
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		/* EOF or error: send what is queued if the socket still takes it, then close */
		c->closing = true;
		if (r < 0)
			c->dead = true;
		break;
	}
	conn_settle(c);
}

/* Tells a client over the limit so and closes it (fd_spare_accept's refuse callback too). */
static void reject(int fd, void *ctx)
{
	struct worker *w = ctx;
	static const char msg[] = "ERROR Too many open connections\r\n";
	ssize_t r = write(fd, msg, sizeof(msg) - 1);
	(void)r;
	close(fd);
	add(&w->rejected, 1);
}

static void accept_all(struct worker *w)
{
	struct io_server *srv = w->srv;
	for (;;) {
		int fd;
		switch (fd_spare_accept(&srv->spare, w->listen_fd, SOCK_NONBLOCK | SOCK_CLOEXEC,
					reject, w, &fd)) {
		case ACCEPT_OK: break;
		case ACCEPT_REFUSED: continue;
		case ACCEPT_EMPTY: return;
		case ACCEPT_EXHAUSTED:
		case ACCEPT_FAILED: /* the listener stays readable: poll it again later */
			listener_pause(&w->pause);
			return;
		}
		if (atomic_fetch_add(&srv->conns, 1) >= srv->opts.max_conns) {
			atomic_fetch_sub(&srv->conns, 1);
			reject(fd, w);
			continue;
		}
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		struct io_conn *c = calloc(1, sizeof(*c));
		if (!c) {
			atomic_fetch_sub(&srv->conns, 1);
			close(fd);
			continue;
		}
		c->fd = fd;
		c->w = w;
		c->reading = true;
		conn_addr_format(fd, 1, c->addr, sizeof(c->addr));
		conn_addr_format(fd, 0, c->local, sizeof(c->local));
		atomic_init(&c->last_cmd, conn_clock_secs());
		struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
		if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
			atomic_fetch_sub(&srv->conns, 1);
			close(fd);
			free(c);
			continue;
		}
		pthread_mutex_lock(&w->conns_lock);
		c->next = w->conns;
		if (w->conns)
			w->conns->prev = c;
		w->conns = c;
		pthread_mutex_unlock(&w->conns_lock);
		add(&w->curr, 1);
		add(&w->total, 1);
		c->state = srv->cb.on_accept(c, srv->cb.ctx);
		if (srv->opts.verbose > 1)
			fprintf(stderr, "<%d new client connection\n", fd);
		if (!c->state) {
			c->closing = true;
			conn_settle(c);
		}
	}
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct epoll_event events[MAX_EVENTS];
	for (;;) {
		int n = epoll_wait(w->epfd, events, MAX_EVENTS, listener_pause_timeout(&w->pause));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			perror("mcserver: epoll_wait");
			break;
		}
		bool stop = false;
		for (int i = 0; i < n; i++) {
			void *p = events[i].data.ptr;
			if (p == &w->listen_fd) {
				accept_all(w);
			} else if (p == &w->stop_fd) {
				stop = true;
			} else {
				struct io_conn *c = p;
				uint32_t e = events[i].events;
				if (!c->reading && (e & (EPOLLHUP | EPOLLERR)))
					c->dead =
						true; /* paused and the peer is gone: nothing to deliver */
				if (c->reading && (e & (EPOLLIN | EPOLLHUP | EPOLLERR)))
					conn_readable(c);
				else
					conn_settle(c);
			}
		}
		if (stop)
			break;
	}
	while (w->conns) {
		w->conns->dead = true;
		conn_close(w->conns);
	}
	return NULL;
}

/* --- server ----------------------------------------------------------------------------------- */

static int listen_socket(const struct io_options *o, uint16_t port, uint16_t *bound, char *err,
			 size_t errlen)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC,
				  .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
	struct addrinfo *res;
	char portstr[8];
	snprintf(portstr, sizeof(portstr), "%u", port);
	int rc = getaddrinfo(o->addr, portstr, &hints, &res);
	if (rc != 0) {
		snprintf(err, errlen, "cannot resolve %s: %s", o->addr ? o->addr : "*",
			 gai_strerror(rc));
		return -1;
	}
	int fd = -1;
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0)
			continue;
		int one = 1;
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 1024) == 0)
			break;
		snprintf(err, errlen, "cannot listen on %s:%u: %s", o->addr ? o->addr : "*", port,
			 strerror(errno));
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd >= 0) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		getsockname(fd, (struct sockaddr *)&ss, &sl);
		*bound = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
							: ((struct sockaddr_in *)&ss)->sin_port);
	} else if (!err[0]) {
		snprintf(err, errlen, "no usable address for %s", o->addr ? o->addr : "*");
	}
	return fd;
}

static void worker_free(struct worker *w)
{
	if (w->epfd >= 0)
		close(w->epfd);
	if (w->listen_fd >= 0)
		close(w->listen_fd);
	if (w->stop_fd >= 0)
		close(w->stop_fd);
	if (w->lock_made)
		pthread_mutex_destroy(&w->conns_lock);
}

/* TLS belongs to the p99 I/O module (the engine terminates it); this loop is plaintext. */
int io_supports_tls(void)
{
	return 0;
}

struct io_server *io_start(const struct io_options *opts, const struct io_callbacks *cb, char *err,
			   size_t errlen)
{
	err[0] = '\0';
	if (opts->tls) {
		snprintf(err, errlen,
			 "TLS (-Z) comes with the p99 I/O module: use an mcserver-*-uring build");
		return NULL;
	}
	struct io_server *srv = calloc(1, sizeof(*srv));
	if (!srv) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	srv->opts = *opts;
	srv->cb = *cb;
	srv->nworkers = opts->threads ? opts->threads : 1;
	srv->workers = calloc(srv->nworkers, sizeof(*srv->workers));
	if (!srv->workers) {
		snprintf(err, errlen, "out of memory");
		free(srv);
		return NULL;
	}
	if (fd_spare_init(&srv->spare) != 0) {
		snprintf(err, errlen, "spare descriptor: %s", strerror(errno));
		free(srv->workers);
		free(srv);
		return NULL;
	}
	uint16_t port = opts->port;
	unsigned made = 0;
	for (; made < srv->nworkers; made++) {
		struct worker *w = &srv->workers[made];
		w->srv = srv;
		w->stop_fd = w->epfd = -1;
		w->listen_fd = listen_socket(opts, port, &port, err, errlen);
		if (w->listen_fd < 0)
			break;
		if (pthread_mutex_init(&w->conns_lock, NULL) != 0) {
			snprintf(err, errlen, "cannot create a mutex");
			worker_free(w);
			break;
		}
		w->lock_made = true;
		conn_addr_format(w->listen_fd, 0, w->listen_addr, sizeof(w->listen_addr));
		w->started = conn_clock_secs();
		w->epfd = epoll_create1(EPOLL_CLOEXEC);
		w->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		w->pause = (struct listener_pause){ .epfd = w->epfd,
						    .fd = w->listen_fd,
						    .tag = &w->listen_fd };
		struct epoll_event le = { .events = EPOLLIN, .data.ptr = &w->listen_fd };
		struct epoll_event se = { .events = EPOLLIN, .data.ptr = &w->stop_fd };
		if (w->epfd < 0 || w->stop_fd < 0 ||
		    epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->listen_fd, &le) != 0 ||
		    epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->stop_fd, &se) != 0) {
			snprintf(err, errlen, "epoll setup: %s", strerror(errno));
			worker_free(w);
			break;
		}
	}
	srv->port = port;
	unsigned started = 0;
	if (made == srv->nworkers) {
		for (; started < made; started++) {
			struct worker *w = &srv->workers[started];
			if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
				snprintf(err, errlen, "cannot start worker thread");
				break;
			}
		}
	}
	if (started == srv->nworkers && made == srv->nworkers)
		return srv;
	for (unsigned i = 0; i < started; i++) {
		uint64_t one = 1;
		ssize_t r = write(srv->workers[i].stop_fd, &one, sizeof(one));
		(void)r;
		pthread_join(srv->workers[i].thread, NULL);
	}
	for (unsigned i = 0; i < made; i++)
		worker_free(&srv->workers[i]);
	fd_spare_destroy(&srv->spare);
	free(srv->workers);
	free(srv);
	return NULL;
}

uint16_t io_port(const struct io_server *srv)
{
	return srv->port;
}

void io_stop(struct io_server *srv)
{
	for (unsigned i = 0; i < srv->nworkers; i++) {
		uint64_t one = 1;
		ssize_t r = write(srv->workers[i].stop_fd, &one, sizeof(one));
		(void)r;
	}
	for (unsigned i = 0; i < srv->nworkers; i++) {
		pthread_join(srv->workers[i].thread, NULL);
		worker_free(&srv->workers[i]);
	}
	fd_spare_destroy(&srv->spare);
	free(srv->workers);
	free(srv);
}

void io_get_stats(const struct io_server *srv, struct io_stats *out)
{
	memset(out, 0, sizeof(*out));
	for (unsigned i = 0; i < srv->nworkers; i++) {
		struct worker *w = &srv->workers[i];
		out->curr_connections += atomic_load_explicit(&w->curr, memory_order_relaxed);
		out->total_connections += atomic_load_explicit(&w->total, memory_order_relaxed);
		out->rejected_connections +=
			atomic_load_explicit(&w->rejected, memory_order_relaxed);
		out->bytes_read += atomic_load_explicit(&w->bytes_read, memory_order_relaxed);
		out->bytes_written += atomic_load_explicit(&w->bytes_written, memory_order_relaxed);
	}
}

void io_for_each_conn(struct io_server *srv, const struct io_conn *self, io_conn_fn fn, void *ctx)
{
	int64_t now = conn_clock_secs();
	for (unsigned i = 0; i < srv->nworkers; i++) {
		struct worker *w = &srv->workers[i];
		struct io_conn_info li = { .fd = w->listen_fd,
					   .addr = w->listen_addr,
					   .state = "conn_listening",
					   .secs_since_last_cmd =
						   conn_secs_since(w->started, now) };
		fn(ctx, &li);
		pthread_mutex_lock(&w->conns_lock);
		for (const struct io_conn *c = w->conns; c; c = c->next) {
			int64_t last = atomic_load_explicit(&c->last_cmd, memory_order_relaxed);
			struct io_conn_info ci = {
				.fd = c->fd,
				.addr = c->addr,
				.listen_addr = c->local,
				.state = c == self ? "conn_parse_cmd" : "conn_read",
				.secs_since_last_cmd = conn_secs_since(last, now)
			};
			fn(ctx, &ci);
		}
		pthread_mutex_unlock(&w->conns_lock);
	}
}
