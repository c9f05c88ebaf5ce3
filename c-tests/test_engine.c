/* The I/O engine from C: every p99_engine_* / p99_worker_* / p99_conn_* function, used
 * correctly and misused (NULL arguments, bad struct sizes, NULL callbacks, calls from the
 * wrong thread, stale connection handles, use after stop), each giving a clear status. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

static const char BORROWED[] = "borrowed-bytes;";

/* Shared between callbacks (worker thread) and the test (main thread). */
static _Atomic int accepted, closed, worker_started, worker_stopped, timer_fired, task_ran;
static _Atomic int send_done_ok, send_done_cookie_ok, in_callback_checks_ok;
static _Atomic(p99_worker *) seen_worker;
static _Atomic p99_conn last_conn;
static _Atomic int stale_status = -1, stop_in_worker_status = -1, reentrant_stop_status = -1;
static _Atomic int free_in_worker_status = -1;
static int user_marker;
static p99_engine *the_engine;

static void on_worker_start(void *user, p99_worker *w)
{
	CHECK(user == &user_marker);
	uint32_t idx = 99;
	CHECK_OK(p99_worker_index(w, &idx));
	CHECK_EQ(idx, 0);
	CHECK_STATUS(p99_worker_index(w, NULL), P99_STATUS_NULL_PARAMETER);
	atomic_store(&seen_worker, w);
	atomic_fetch_add(&worker_started, 1);
}

static void on_worker_stop(void *user, p99_worker *w)
{
	(void)user;
	(void)w;
	atomic_fetch_add(&worker_stopped, 1);
}

static bool on_accept(void *user, p99_worker *w, p99_conn conn)
{
	(void)user;
	CHECK(conn != 0);
	CHECK_EQ(p99_conn_worker(conn), 0);
	CHECK_OK(p99_worker_set_conn_user(w, conn, &user_marker));
	int fd = -1;
	CHECK_OK(p99_worker_conn_fd(w, conn, &fd));
	CHECK(fd >= 0);
	CHECK_STATUS(p99_worker_conn_fd(w, conn, NULL), P99_STATUS_NULL_PARAMETER);
	atomic_store(&last_conn, conn);
	atomic_fetch_add(&accepted, 1);
	return true;
}

static void on_timer(void *arg, p99_worker *w)
{
	CHECK(arg == &user_marker);
	CHECK(w != NULL);
	atomic_fetch_add(&timer_fired, 1);
}

static void never(void *arg, p99_worker *w)
{
	(void)arg;
	(void)w;
	CHECK(!"a cancelled timer ran");
}

static void on_data(void *user, p99_worker *w, p99_conn conn, const uint8_t *data, size_t len)
{
	CHECK(user == &user_marker);
	void *cu = NULL;
	CHECK_OK(p99_worker_conn_user(w, conn, &cu));
	CHECK(cu == &user_marker);
	CHECK_STATUS(p99_worker_conn_user(w, conn, NULL), P99_STATUS_NULL_PARAMETER);

	/* Echo by copy, then a borrowed send with a cookie; order must be kept. */
	CHECK_OK(p99_worker_send(w, conn, data, len));
	struct iovec iov[2] = { { (void *)BORROWED, 9 },
				{ (void *)(BORROWED + 9), sizeof(BORROWED) - 10 } };
	CHECK_OK(p99_worker_send_iov(w, conn, iov, 2, 0xC00C1E));

	/* Misuse inside a callback. */
	CHECK_STATUS(p99_worker_send(w, conn, NULL, 1), P99_STATUS_NULL_PARAMETER);
	CHECK_OK(p99_worker_send(w, conn, NULL, 0));
	CHECK_STATUS(p99_worker_send_iov(w, conn, iov, -1, 1), P99_STATUS_INVALID_ARGUMENT);
	CHECK_STATUS(p99_worker_send_iov(w, conn, NULL, 1, 1), P99_STATUS_NULL_PARAMETER);
	struct iovec bad = { NULL, 4 };
	CHECK_STATUS(p99_worker_send_iov(w, conn, &bad, 1, 1), P99_STATUS_INVALID_ARGUMENT);
	CHECK_STATUS(p99_worker_send(w, conn + 1, data, len), P99_STATUS_STALE_HANDLE);
	CHECK_STATUS(p99_worker_send(w, 0, data, len), P99_STATUS_STALE_HANDLE);
	/* A handle naming another worker. */
	CHECK_STATUS(p99_worker_send(w, conn | ((p99_conn)5 << 56), data, len),
		     P99_STATUS_WRONG_THREAD);
	CHECK_STATUS(p99_worker_send(NULL, conn, data, len), P99_STATUS_NULL_PARAMETER);

	/* Pause and resume are accepted; the stop from a worker is refused, not deadlocked. */
	CHECK_OK(p99_worker_pause_recv(w, conn));
	CHECK_OK(p99_worker_resume_recv(w, conn));
	atomic_store(&reentrant_stop_status, (int)p99_engine_stop(the_engine, 0));

	uint64_t id = 0;
	CHECK_OK(p99_worker_add_timer(w, 10, on_timer, &user_marker, &id));
	CHECK(id != 0);
	CHECK_OK(p99_worker_add_timer(w, 1, on_timer, &user_marker, NULL));
	uint64_t id2 = 0;
	CHECK_OK(p99_worker_add_timer(w, 5, never, NULL, &id2));
	CHECK_OK(p99_worker_cancel_timer(w, id2));
	CHECK_STATUS(p99_worker_cancel_timer(w, id2), P99_STATUS_NOT_FOUND);
	CHECK_STATUS(p99_worker_add_timer(w, 5, NULL, NULL, NULL), P99_STATUS_NULL_PARAMETER);
	atomic_fetch_add(&in_callback_checks_ok, 1);
}

static void on_send_done(void *user, p99_worker *w, p99_conn conn, uint64_t cookie, bool sent)
{
	(void)user;
	(void)w;
	(void)conn;
	if (cookie == 0xC00C1E)
		atomic_fetch_add(&send_done_cookie_ok, 1);
	if (sent)
		atomic_fetch_add(&send_done_ok, 1);
}

static void on_close(void *user, p99_worker *w, p99_conn conn)
{
	(void)user;
	/* The handle is already stale for sends during on_close. */
	CHECK_STATUS(p99_worker_send(w, conn, (const uint8_t *)"x", 1), P99_STATUS_CLOSED);
	atomic_fetch_add(&closed, 1);
}

static void stale_task(void *arg, p99_worker *w)
{
	p99_conn old = *(p99_conn *)arg;
	atomic_store(&stale_status, (int)p99_worker_send(w, old, (const uint8_t *)"x", 1));
	atomic_store(&stop_in_worker_status, (int)p99_engine_stop(the_engine, 0));
	atomic_store(&free_in_worker_status, (int)p99_engine_free(the_engine));
	atomic_fetch_add(&task_ran, 1);
}

static int connect_to(uint16_t port)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons(port) };
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0) {
		close(fd);
		return -1;
	}
	struct timeval tv = { 5, 0 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	return fd;
}

static size_t read_n(int fd, char *buf, size_t n)
{
	size_t got = 0;
	while (got < n) {
		ssize_t r = read(fd, buf + got, n - got);
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	return got;
}

static void test_defaults_and_bad_start(void)
{
	CHECK_STATUS(p99_engine_config_defaults(NULL), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_engine_callbacks_defaults(NULL), P99_STATUS_NULL_PARAMETER);
	p99_engine_config cfg = { .struct_size = sizeof cfg };
	CHECK_OK(p99_engine_config_defaults(&cfg));
	CHECK_EQ(cfg.struct_size, sizeof(cfg));
	CHECK_EQ(cfg.rx_buf_count, 1024);
	CHECK_EQ(cfg.rx_buf_size, 4096);
	CHECK_EQ(cfg.port, 0);
	CHECK_EQ(cfg.max_conns, 65536);
	CHECK(cfg.addr == NULL);
	p99_engine_callbacks cb = { .struct_size = sizeof cb };
	CHECK_OK(p99_engine_callbacks_defaults(&cb));
	CHECK_EQ(cb.struct_size, sizeof(cb));
	CHECK(cb.on_data == NULL);

	p99_engine *e = (p99_engine *)&user_marker; /* must stay untouched on failure */
	CHECK_STATUS(p99_engine_start(NULL, &cb, &e), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_engine_start(&cfg, NULL, &e), P99_STATUS_NULL_PARAMETER);
	cb.on_data = on_data;
	CHECK_STATUS(p99_engine_start(&cfg, &cb, NULL), P99_STATUS_NULL_PARAMETER);
	/* NULL on_data: the one required callback. */
	cb.on_data = NULL;
	CHECK_STATUS(p99_engine_start(&cfg, &cb, &e), P99_STATUS_INVALID_ARGUMENT);
	CHECK(strstr(p99_last_error_message(), "on_data") != NULL);
	cb.on_data = on_data;
	p99_engine_config small = cfg;
	small.struct_size = 4;
	CHECK_STATUS(p99_engine_start(&small, &cb, &e), P99_STATUS_INVALID_ARGUMENT);
	/* A caller built before max_conns existed: its struct ends before the field, which is
	 * then neither read nor required (the default applies). */
	p99_engine_config v1 = cfg;
	v1.struct_size = (uint32_t)offsetof(p99_engine_config, max_conns);
	v1.max_conns = 0; /* out of range if it were read */
	v1.workers = 1;
	v1.pin_workers = false;
	p99_engine *ev1 = NULL;
	CHECK_OK(p99_engine_start(&v1, &cb, &ev1));
	CHECK(ev1 != NULL);
	CHECK_OK(p99_engine_free(ev1));
	p99_engine_config bad = cfg;
	bad.max_conns = 0;
	CHECK_STATUS(p99_engine_start(&bad, &cb, &e), P99_STATUS_INVALID_ARGUMENT);
	bad = cfg;
	bad.addr = "not-an-address";
	CHECK_STATUS(p99_engine_start(&bad, &cb, &e), P99_STATUS_INVALID_ARGUMENT);
	CHECK(strstr(p99_last_error_message(),
		     "\"not-an-address\" is not an IPv4 or IPv6 address") != NULL);
	bad = cfg;
	bad.rx_buf_count = 3;
	CHECK_STATUS(p99_engine_start(&bad, &cb, &e), P99_STATUS_INVALID_ARGUMENT);
	/* Configuration errors name what is wrong. */
	CHECK(strstr(p99_last_error_message(), "rx_buf_count must be a power of two") != NULL);
	CHECK(e == (p99_engine *)&user_marker);

	p99_backend b = p99_engine_backend();
	CHECK(b == P99_BACKEND_URING || b == P99_BACKEND_EPOLL);
	const char *why = p99_engine_backend_reason();
	CHECK(why != NULL && why[0] != '\0');
}

static void test_running_engine(void)
{
	p99_engine_config cfg = { .struct_size = sizeof cfg };
	p99_engine_config_defaults(&cfg);
	cfg.addr = "127.0.0.1";
	cfg.workers = 1;
	cfg.pin_workers = false;
	p99_engine_callbacks cb = { .struct_size = sizeof cb };
	p99_engine_callbacks_defaults(&cb);
	cb.user = &user_marker;
	cb.on_worker_start = on_worker_start;
	cb.on_worker_stop = on_worker_stop;
	cb.on_accept = on_accept;
	cb.on_data = on_data;
	cb.on_send_done = on_send_done;
	cb.on_close = on_close;

	p99_engine *e = NULL;
	CHECK_OK(p99_engine_start(&cfg, &cb, &e));
	if (!e)
		return;
	the_engine = e;
	CHECK(check_wait_for(&worker_started, 1));

	uint16_t port = 0;
	CHECK_OK(p99_engine_port(e, &port));
	CHECK(port != 0);
	CHECK_STATUS(p99_engine_port(NULL, &port), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_engine_port(e, NULL), P99_STATUS_NULL_PARAMETER);
	uint32_t nw = 0;
	CHECK_OK(p99_engine_workers(e, &nw));
	CHECK_EQ(nw, 1);
	CHECK_STATUS(p99_engine_workers(e, NULL), P99_STATUS_NULL_PARAMETER);

	int fd = connect_to(port);
	CHECK(fd >= 0);
	CHECK(write(fd, "hello", 5) == 5);
	char buf[64] = { 0 };
	size_t want = 5 + sizeof(BORROWED) - 1;
	CHECK_EQ(read_n(fd, buf, want), want);
	CHECK(memcmp(buf, "hello", 5) == 0);
	CHECK(memcmp(buf + 5, BORROWED, sizeof(BORROWED) - 1) == 0);
	CHECK(check_wait_for(&in_callback_checks_ok, 1));
	CHECK(check_wait_for(&send_done_cookie_ok, 1));
	CHECK(check_wait_for(&send_done_ok, 1));
	CHECK(check_wait_for(&timer_fired, 2));
	CHECK_EQ(reentrant_stop_status, P99_STATUS_WRONG_THREAD);

	/* Worker functions from the main thread are refused without touching the worker. */
	p99_worker *w = atomic_load(&seen_worker);
	p99_conn conn = atomic_load(&last_conn);
	CHECK_STATUS(p99_worker_send(w, conn, (const uint8_t *)"x", 1), P99_STATUS_WRONG_THREAD);
	CHECK_STATUS(p99_worker_send_iov(w, conn, NULL, 0, 1), P99_STATUS_WRONG_THREAD);
	CHECK_STATUS(p99_worker_close(w, conn), P99_STATUS_WRONG_THREAD);
	CHECK_STATUS(p99_worker_pause_recv(w, conn), P99_STATUS_WRONG_THREAD);
	CHECK_STATUS(p99_worker_resume_recv(w, conn), P99_STATUS_WRONG_THREAD);
	CHECK_STATUS(p99_worker_set_conn_user(w, conn, NULL), P99_STATUS_WRONG_THREAD);
	void *u;
	CHECK_STATUS(p99_worker_conn_user(w, conn, &u), P99_STATUS_WRONG_THREAD);
	int cfd;
	CHECK_STATUS(p99_worker_conn_fd(w, conn, &cfd), P99_STATUS_WRONG_THREAD);
	uint32_t idx;
	CHECK_STATUS(p99_worker_index(w, &idx), P99_STATUS_WRONG_THREAD);
	CHECK_STATUS(p99_worker_add_timer(w, 1, on_timer, NULL, NULL), P99_STATUS_WRONG_THREAD);
	CHECK_STATUS(p99_worker_cancel_timer(w, 1), P99_STATUS_WRONG_THREAD);

	/* The peer closes: on_close once, then the old handle is stale on its worker. */
	close(fd);
	CHECK(check_wait_for(&closed, 1));
	static p99_conn old;
	old = conn;
	CHECK_STATUS(p99_engine_post(e, 0, NULL, NULL), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_engine_post(e, 7, stale_task, &old), P99_STATUS_INVALID_ARGUMENT);
	CHECK_STATUS(p99_engine_post(NULL, 0, stale_task, &old), P99_STATUS_NULL_PARAMETER);
	CHECK_OK(p99_engine_post(e, 0, stale_task, &old));
	CHECK(check_wait_for(&task_ran, 1));
	CHECK_EQ(stale_status, P99_STATUS_STALE_HANDLE);
	CHECK_EQ(stop_in_worker_status, P99_STATUS_WRONG_THREAD);
	/* Refused on a worker, and the engine is untouched: it still serves and stops below. */
	CHECK_EQ(free_in_worker_status, P99_STATUS_WRONG_THREAD);

	p99_worker_stats st = { .struct_size = sizeof(st) };
	CHECK_OK(p99_engine_stats(e, 0, &st));
	CHECK_EQ(st.accepted, 1);
	CHECK_EQ(st.open, 0);
	CHECK_EQ(st.bytes_in, 5);
	CHECK(st.bytes_out >= want);
	CHECK(st.enters > 0 && st.completions > 0 && st.submissions > 0);
	CHECK_STATUS(p99_engine_stats(e, 1, &st), P99_STATUS_INVALID_ARGUMENT);
	CHECK_EQ(st.struct_size, sizeof(st));
	/* A caller built against a newer, larger struct: struct_size is kept as the caller set it
	 * and the fields this library does not know are zeroed, up to struct_size and no further. */
	union {
		p99_worker_stats st;
		unsigned char bytes[sizeof(p99_worker_stats) + 16];
	} big;
	memset(&big, 0xAB, sizeof(big));
	big.st.struct_size = (uint32_t)sizeof(big) - 8;
	CHECK_OK(p99_engine_stats(e, 0, &big.st));
	CHECK_EQ(big.st.struct_size, sizeof(big) - 8);
	CHECK_EQ(big.st.accepted, 1);
	CHECK_EQ(big.st.bytes_in, 5);
	for (size_t i = sizeof(p99_worker_stats); i < sizeof(big) - 8; i++)
		CHECK_EQ(big.bytes[i], 0);
	for (size_t i = sizeof(big) - 8; i < sizeof(big); i++)
		CHECK_EQ(big.bytes[i], 0xAB);
	p99_worker_stats tiny = { .struct_size = 8 };
	CHECK_STATUS(p99_engine_stats(e, 0, &tiny), P99_STATUS_INVALID_ARGUMENT);
	CHECK_STATUS(p99_engine_stats(e, 0, NULL), P99_STATUS_NULL_PARAMETER);

	/* A connection still open at stop is closed by the stop, with its on_close. */
	int fd2 = connect_to(port);
	CHECK(fd2 >= 0);
	CHECK(check_wait_for(&accepted, 2));
	CHECK_STATUS(p99_engine_request_stop(NULL, 0), P99_STATUS_NULL_PARAMETER);
	CHECK_OK(p99_engine_request_stop(e, 100));
	CHECK_OK(p99_engine_stop(e, 100));
	CHECK_OK(p99_engine_stop(e, 100)); /* second stop: no-op */
	CHECK_STATUS(p99_engine_stop(NULL, 0), P99_STATUS_NULL_PARAMETER);
	CHECK_EQ(closed, 2);
	CHECK_EQ(worker_stopped, 1);
	CHECK_STATUS(p99_engine_post(e, 0, stale_task, &old), P99_STATUS_CLOSED);
	CHECK_OK(p99_engine_stats(e, 0, &st)); /* still readable after stop */
	CHECK_EQ(read_n(fd2, buf, 1), 0);
	close(fd2);
	CHECK_OK(p99_engine_free(e));
	CHECK_OK(p99_engine_free(NULL));
}

/* Concurrent p99_engine_stop: every caller returns only once the workers have stopped. */
static _Atomic int slow_stopped;
static p99_engine *concurrent_engine;

static void slow_worker_stop(void *user, p99_worker *w)
{
	(void)user;
	(void)w;
	check_sleep_ms(200);
	atomic_fetch_add(&slow_stopped, 1);
}

static void ignore_data(void *user, p99_worker *w, p99_conn conn, const uint8_t *data, size_t len)
{
	(void)user;
	(void)w;
	(void)conn;
	(void)data;
	(void)len;
}

static void *stop_thread(void *arg)
{
	int *seen = arg;
	CHECK_OK(p99_engine_stop(concurrent_engine, 10));
	*seen = atomic_load(&slow_stopped);
	return NULL;
}

static void test_concurrent_stop(void)
{
	p99_engine_config cfg = { .struct_size = sizeof cfg };
	p99_engine_config_defaults(&cfg);
	cfg.addr = "127.0.0.1";
	cfg.workers = 2;
	cfg.pin_workers = false;
	p99_engine_callbacks cb = { .struct_size = sizeof cb };
	p99_engine_callbacks_defaults(&cb);
	cb.on_data = ignore_data;
	cb.on_worker_stop = slow_worker_stop;
	CHECK_OK(p99_engine_start(&cfg, &cb, &concurrent_engine));
	pthread_t t[3];
	int seen[3] = { -1, -1, -1 };
	for (int i = 0; i < 3; i++)
		CHECK_EQ(pthread_create(&t[i], NULL, stop_thread, &seen[i]), 0);
	for (int i = 0; i < 3; i++) {
		pthread_join(t[i], NULL);
		CHECK_EQ(seen[i], 2);
	}
	CHECK_OK(p99_engine_free(concurrent_engine));
}

int main(void)
{
	test_defaults_and_bad_start();
	test_running_engine();
	test_concurrent_stop();
	return check_done("engine");
}
