/* Command-line flags shared by the C ping servers (memcached style). */
#ifndef PING_ARGS_H
#define PING_ARGS_H

struct ping_args {
	const char *addr; /* -l, default 127.0.0.1 */
	int port; /* -p, default 12321; 0 = any free port (printed) */
	int threads; /* -t, default 0 = one per CPU of the affinity mask */
	int maxconn; /* -c, default 65536 (or what RLIMIT_NOFILE allows) */
	int maxconn_given; /* -c was on the command line */
	long burn_ns; /* -b, default 0; test only: CPU ns burnt per request (pingserver-c) */
	const char *tls_cert; /* --tls-cert FILE: serve TLS with this PEM certificate chain */
	const char *tls_key; /* --tls-key FILE: its private key (PEM); both or neither */
};

/* Parses argv; prints usage and exits on a bad flag. */
void ping_args_parse(struct ping_args *a, int argc, char **argv, const char *prog);

/*
 * Raises RLIMIT_NOFILE to what -c needs with `threads` workers. When it cannot: an explicit
 * -c is refused (message, exit 1); the default is lowered to what the limit allows.
 */
void ping_fd_limit(struct ping_args *a, int threads, const char *prog);

/* Number of CPUs in the process's affinity mask (at least 1). */
int ping_affinity_cpus(void);

#endif
