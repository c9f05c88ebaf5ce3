/*
 * main.c - mcserver: a memcached-compatible cache server whose storage and I/O modules are
 * chosen at build time (storage.h, io.h). Command line as memcached's where it applies.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fd_limits.h"
#include "io.h"
#include "proto.h"
#include "storage.h"

#define OUT_HIGH_WATER (1024 * 1024)

static void usage(FILE *f, const char *prog)
{
	fprintf(f,
		"usage: %s [options]\n"
		"  -p <num>                  TCP port to listen on (default: 11211; 0 = any free "
		"port)\n"
		"  -l <addr>                 interface to listen on (default: 127.0.0.1)\n"
		"  -t <num>                  number of worker threads (default: 4)\n"
		"  -c <num>                  max simultaneous connections (default: 1024)\n"
		"  -m <num>                  item memory in megabytes (default: 64)\n"
		"  -I <num>                  largest item, with k/m suffix (default: 1m; 1k..%zum\n"
		"                            with this storage module)\n"
		"  -f <num>                  chunk size growth factor (default: 1.25)\n"
		"  -L                        back all of -m with memory (huge pages where the "
		"kernel\n"
		"                            gives them) at start-up, so writes never page-fault\n"
		"  -C                        disable use of CAS\n"
		"  -F                        disable flush_all\n"
		"  -U <num>                  UDP port: only 0 (off) is supported\n"
		"  -Z                        serve TLS (the p99 I/O module only); needs -o below\n"
		"  -o "
		"ssl_chain_cert=<file>,ssl_key=<file>[,ssl_ca_cert=<file>][,ssl_verify_mode=<0-3>]"
		"\n"
		"                            TLS certificate chain, key, client CA and client\n"
		"                            certificate mode (0 none, 1 optional, 2/3 required)\n"
		"  -o hashpower=<12-32>      size the hash table for 1.5 x 2^N items up front\n"
		"  -v                        verbose (repeat for more)\n"
		"  -h                        print this help and exit\n"
		"storage module: %s, I/O module: %s\n",
		prog, storage_item_max_limit() >> 20, storage_name(), io_name());
}

static bool parse_ulong(const char *s, unsigned long max, unsigned long *out)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno || end == s || *end != '\0' || v > max || s[0] == '-')
		return false;
	*out = v;
	return true;
}

/* One -o list (memcached's extended options): the TLS ones and hashpower are known here.
 * Returns false, with a message printed, on an unknown or malformed option. */
static bool parse_ext_options(char *list, struct io_tls *tls, unsigned *hashpower)
{
	for (char *save = NULL, *opt = strtok_r(list, ",", &save); opt;
	     opt = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(opt, '=');
		if (!eq || eq[1] == '\0') {
			fprintf(stderr, "mcserver: -o %s: expected name=value\n", opt);
			return false;
		}
		*eq = '\0';
		const char *val = eq + 1;
		unsigned long v;
		if (strcmp(opt, "ssl_chain_cert") == 0) {
			tls->chain_cert = val;
		} else if (strcmp(opt, "ssl_key") == 0) {
			tls->key = val;
		} else if (strcmp(opt, "ssl_ca_cert") == 0) {
			tls->ca_cert = val;
		} else if (strcmp(opt, "ssl_verify_mode") == 0 && parse_ulong(val, 3, &v)) {
			tls->verify_mode = (int)v;
		} else if (strcmp(opt, "hashpower") == 0) {
			if (!parse_ulong(val, ULONG_MAX, &v) || v < 12 || v > 32) {
				fprintf(stderr, "mcserver: -o hashpower=%s: expected 12..32\n",
					val);
				return false;
			}
			*hashpower = (unsigned)v;
		} else {
			fprintf(stderr, "mcserver: -o %s=%s: not supported\n", opt, val);
			return false;
		}
	}
	return true;
}

static bool parse_size(const char *s, size_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || s[0] == '-')
		return false;
	if (*end == 'k' || *end == 'K') {
		v *= 1024;
		end++;
	} else if (*end == 'm' || *end == 'M') {
		v *= 1024 * 1024;
		end++;
	}
	if (*end != '\0')
		return false;
	*out = (size_t)v;
	return true;
}

int main(int argc, char **argv)
{
	struct proto_settings ps = {
		.addr = "127.0.0.1",
		.port = 11211,
		.threads = 4,
		.max_conns = 1024,
		.mem_limit = 64u << 20,
		.item_max = 1u << 20,
		.growth = 1.25,
		.cas_enabled = true,
	};
	unsigned long v;
	int opt;
	bool tls_on = false;
	struct io_tls tls = { 0 };
	unsigned hashpower = 0;
	bool prealloc = false;
	while ((opt = getopt(argc, argv, "p:l:t:c:m:I:f:LCFU:vhZo:")) != -1) {
		switch (opt) {
		case 'p':
			if (!parse_ulong(optarg, 65535, &v))
				goto bad;
			ps.port = (uint16_t)v;
			break;
		case 'l': ps.addr = optarg; break;
		case 't':
			if (!parse_ulong(optarg, 256, &v) || v == 0)
				goto bad;
			ps.threads = (unsigned)v;
			break;
		case 'c':
			if (!parse_ulong(optarg, 1000000, &v) || v == 0)
				goto bad;
			ps.max_conns = (unsigned)v;
			break;
		case 'm':
			if (!parse_ulong(optarg, 1024 * 1024, &v) || v == 0)
				goto bad;
			ps.mem_limit = (size_t)v << 20;
			break;
		case 'I':
			if (!parse_size(optarg, &ps.item_max) || ps.item_max < 1024 ||
			    ps.item_max > storage_item_max_limit()) {
				fprintf(stderr,
					"mcserver: -I must be between 1k and %zum with the %s "
					"storage "
					"module\n",
					storage_item_max_limit() >> 20, storage_name());
				return 1;
			}
			break;
		case 'f':
			ps.growth = strtod(optarg, NULL);
			if (ps.growth <= 1.0 || ps.growth > 4.0)
				goto bad;
			break;
		case 'L': prealloc = true; break;
		case 'C': ps.cas_enabled = false; break;
		case 'F': ps.flush_disabled = true; break;
		case 'U':
			if (strcmp(optarg, "0") != 0) {
				fprintf(stderr, "mcserver: UDP is not supported; only -U 0\n");
				return 1;
			}
			break;
		case 'v': ps.verbose++; break;
		case 'Z': tls_on = true; break;
		case 'o':
			if (!parse_ext_options(optarg, &tls, &hashpower))
				return 1;
			break;
		case 'h': usage(stdout, argv[0]); return 0;
		default: usage(stderr, argv[0]); return 1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "mcserver: unexpected argument '%s'\n", argv[optind]);
		return 1;
	}
	if (tls_on && !io_supports_tls()) {
		fprintf(stderr,
			"mcserver: -Z: TLS comes with the p99 I/O module; this build's I/O module "
			"is %s (use an mcserver-*-uring build)\n",
			io_name());
		return 1;
	}
	if (tls_on && (!tls.chain_cert || !tls.key)) {
		fprintf(stderr, "mcserver: -Z needs -o ssl_chain_cert=FILE,ssl_key=FILE\n");
		return 1;
	}
	if (tls_on && tls.verify_mode > 0 && !tls.ca_cert) {
		fprintf(stderr, "mcserver: ssl_verify_mode=%d needs -o ssl_ca_cert=FILE\n",
			tls.verify_mode);
		return 1;
	}
	if (ps.item_max > ps.mem_limit) {
		fprintf(stderr, "mcserver: -I cannot be larger than -m\n");
		return 1;
	}

	char err[256];
	struct storage_options so = {
		.mem_limit = ps.mem_limit,
		.item_max = ps.item_max,
		.cas_enabled = ps.cas_enabled,
		.growth = ps.growth,
		.hashpower = hashpower,
		.prealloc = prealloc,
	};
	if (storage_setup(&so, err, sizeof(err)) != 0) {
		fprintf(stderr, "mcserver: %s\n", err);
		return 1;
	}
	/* like memcached: raise the descriptor limit to what -c needs, or refuse to start */
	if (fd_limit_ensure(ps.max_conns + fd_reserve_for(ps.threads), NULL, err, sizeof(err)) !=
	    0) {
		fprintf(stderr, "mcserver: -c %u: %s\n", ps.max_conns, err);
		storage_teardown();
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL); /* workers inherit: only sigwait sees them */

	struct io_callbacks cb;
	proto_init(&ps, &cb);
	struct io_options io = {
		.addr = ps.addr,
		.port = ps.port,
		.threads = ps.threads,
		.max_conns = ps.max_conns,
		.out_high_water = OUT_HIGH_WATER,
		.verbose = ps.verbose,
		.tls = tls_on ? &tls : NULL,
	};
	struct io_server *srv = io_start(&io, &cb, err, sizeof(err));
	if (!srv) {
		fprintf(stderr, "mcserver: %s\n", err);
		storage_teardown();
		return 1;
	}
	proto_set_server(srv);
	if (ps.verbose)
		fprintf(stderr, "mcserver: listening on %s:%u (storage %s, io %s, %u threads)\n",
			ps.addr, io_port(srv), storage_name(), io_name(), ps.threads);

	int sig = 0;
	sigwait(&sigs, &sig);
	if (ps.verbose)
		fprintf(stderr, "mcserver: signal %d, shutting down\n", sig);
	proto_set_server(NULL);
	io_stop(srv);
	storage_teardown();
	return 0;
bad:
	fprintf(stderr, "mcserver: bad value for -%c: '%s'\n", opt, optarg);
	usage(stderr, argv[0]);
	return 1;
}
