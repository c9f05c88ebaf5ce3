#define _GNU_SOURCE
#include "ping_args.h"

#include "fd_limits.h"

#include <getopt.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static void usage(const char *prog)
{
	fprintf(stderr,
		"usage: %s [-p PORT] [-l ADDR] [-t THREADS] [-c MAXCONN] [-b NS]\n"
		"          [--tls-cert FILE --tls-key FILE]\n"
		"  -b NS  test only: burn NS ns of CPU per request (a server slowed on purpose)\n"
		"  --tls-cert FILE --tls-key FILE  serve TLS 1.2/1.3 with this PEM chain and key\n",
		prog);
	exit(2);
}

static int parse_int(const char *s, int lo, int hi, const char *prog)
{
	char *end;
	long v = strtol(s, &end, 10);
	if (*s == '\0' || *end != '\0' || v < lo || v > hi)
		usage(prog);
	return (int)v;
}

void ping_args_parse(struct ping_args *a, int argc, char **argv, const char *prog)
{
	a->addr = "127.0.0.1";
	a->port = 12321;
	a->threads = 0;
	a->maxconn = 65536;
	a->maxconn_given = 0;
	a->burn_ns = 0;
	a->tls_cert = NULL;
	a->tls_key = NULL;
	static const struct option longs[] = {
		{ "tls-cert", required_argument, NULL, 'C' },
		{ "tls-key", required_argument, NULL, 'K' },
		{ NULL, 0, NULL, 0 },
	};
	int c;
	while ((c = getopt_long(argc, argv, "p:l:t:c:b:", longs, NULL)) != -1) {
		switch (c) {
		case 'p': a->port = parse_int(optarg, 0, 65535, prog); break;
		case 'l': a->addr = optarg; break;
		case 't': a->threads = parse_int(optarg, 0, 255, prog); break;
		case 'c':
			a->maxconn = parse_int(optarg, 1, 1 << 24, prog);
			a->maxconn_given = 1;
			break;
		case 'b': a->burn_ns = parse_int(optarg, 0, 1000000, prog); break;
		case 'C': a->tls_cert = optarg; break;
		case 'K': a->tls_key = optarg; break;
		default: usage(prog);
		}
	}
	if (optind != argc)
		usage(prog);
	if ((a->tls_cert == NULL) != (a->tls_key == NULL)) {
		fprintf(stderr, "%s: --tls-cert and --tls-key go together\n", prog);
		exit(2);
	}
}

int ping_affinity_cpus(void)
{
	cpu_set_t set;
	if (sched_getaffinity(0, sizeof(set), &set) != 0)
		return 1;
	int n = CPU_COUNT(&set);
	return n > 0 ? n : 1;
}

void ping_fd_limit(struct ping_args *a, int threads, const char *prog)
{
	unsigned long reserve = fd_reserve_for((unsigned)threads), allowed = 0;
	char err[256];
	if (fd_limit_ensure((unsigned long)a->maxconn + reserve, &allowed, err, sizeof(err)) == 0)
		return;
	if (a->maxconn_given || allowed <= reserve) {
		fprintf(stderr, "%s: -c %d: %s\n", prog, a->maxconn, err);
		exit(1);
	}
	a->maxconn = (int)(allowed - reserve);
}
