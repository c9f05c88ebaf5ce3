/* pingserver-c-p99: the same ping protocol code as pingserver-c, with the I/O loop handed to
 * the libp99 engine (io_uring where the kernel allows it, epoll otherwise). SIGINT/SIGTERM
 * stop it. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include <p99.h>

#include "ping_args.h"
#include "ping_proto.h"

/* Reply buffer of the worker thread running the callback. */
static __thread struct ping_out tls_out;

static bool on_accept(void *user, p99_worker *w, p99_conn conn)
{
	(void)user;
	struct ping_parser *p = malloc(sizeof(*p));
	if (!p)
		return false;
	ping_parser_init(p);
	if (p99_worker_set_conn_user(w, conn, p) != P99_STATUS_OK) {
		free(p);
		return false;
	}
	return true;
}

static void on_data(void *user, p99_worker *w, p99_conn conn, const uint8_t *data, size_t len)
{
	(void)user;
	void *p = NULL;
	if (p99_worker_conn_user(w, conn, &p) != P99_STATUS_OK || !p)
		return;
	tls_out.len = 0;
	int r = ping_feed(p, (const char *)data, len, &tls_out);
	if (tls_out.len > 0)
		p99_worker_send(w, conn, (const uint8_t *)tls_out.buf, tls_out.len);
	if (r != 0)
		p99_worker_close(w, conn);
}

static void on_close(void *user, p99_worker *w, p99_conn conn)
{
	(void)user;
	void *p = NULL;
	if (p99_worker_conn_user(w, conn, &p) == P99_STATUS_OK)
		free(p);
}

static void on_worker_stop(void *user, p99_worker *w)
{
	(void)user;
	(void)w;
	ping_out_free(&tls_out);
}

int main(int argc, char **argv)
{
	struct ping_args a;
	ping_args_parse(&a, argc, argv, "pingserver-c-p99");
	if (a.burn_ns != 0) {
		fprintf(stderr, "pingserver-c-p99: -b is only implemented by pingserver-c\n");
		return 2;
	}
	int nthreads = a.threads > 0 ? a.threads : ping_affinity_cpus();
	ping_fd_limit(&a, nthreads, "pingserver-c-p99");

	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);

	p99_engine_config cfg = { .struct_size = sizeof cfg };
	p99_engine_config_defaults(&cfg);
	cfg.addr = a.addr;
	cfg.port = (uint16_t)a.port;
	cfg.workers = (uint32_t)nthreads;
	cfg.max_conns = (uint32_t)a.maxconn; /* -c: one limit for the process, not per worker */
	/* TLS is the engine's: the callbacks below see plaintext either way. */
	p99_tls_config tls = { .struct_size = sizeof tls };
	p99_tls_config_defaults(&tls);
	if (a.tls_cert) {
		tls.cert_chain_file = a.tls_cert;
		tls.key_file = a.tls_key;
		cfg.tls = &tls;
	}

	p99_engine_callbacks cb = { .struct_size = sizeof cb };
	p99_engine_callbacks_defaults(&cb);
	cb.on_accept = on_accept;
	cb.on_data = on_data;
	cb.on_close = on_close;
	cb.on_worker_stop = on_worker_stop;

	p99_engine *e = NULL;
	p99_status st = p99_engine_start(&cfg, &cb, &e);
	if (st == P99_STATUS_TLS_CONFIG) {
		fprintf(stderr, "pingserver-c-p99: cannot start: %s (--tls-cert %s --tls-key %s)\n",
			p99_status_str(st), a.tls_cert, a.tls_key);
		return 1;
	}
	if (st != P99_STATUS_OK) {
		fprintf(stderr, "pingserver-c-p99: cannot start: %s (%s)\n", p99_status_str(st),
			p99_last_error_message());
		return 1;
	}
	uint16_t port = 0;
	p99_engine_port(e, &port);
	printf("pingserver-c-p99: listening on %s:%u (backend %s, %d workers%s)\n", a.addr, port,
	       p99_engine_backend() == P99_BACKEND_URING ? "io_uring" : "epoll", nthreads,
	       a.tls_cert ? ", TLS" : "");
	fflush(stdout);

	int sig;
	sigwait(&set, &sig);
	p99_engine_stop(e, 500);
	uint64_t enters = 0, subs = 0, comps = 0, bytes_in = 0;
	for (int i = 0; i < nthreads; i++) {
		p99_worker_stats s = { .struct_size = sizeof(s) };
		if (p99_engine_stats(e, (uint32_t)i, &s) == P99_STATUS_OK) {
			enters += s.enters;
			subs += s.submissions;
			comps += s.completions;
			bytes_in += s.bytes_in;
		}
	}
	p99_engine_free(e);
	fprintf(stderr,
		"pingserver-c-p99: stopped (enters %llu, submissions %llu, completions %llu, "
		"bytes_in %llu)\n",
		(unsigned long long)enters, (unsigned long long)subs, (unsigned long long)comps,
		(unsigned long long)bytes_in);
	return 0;
}
