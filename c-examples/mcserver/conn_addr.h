/*
 * conn_addr.h - what "stats conns" shows of a socket, shared by the I/O modules: its address
 * in memcached's form ("tcp:127.0.0.1:11211", "tcp6:[::1]:11211") and a seconds clock.
 */
#ifndef MCSERVER_CONN_ADDR_H
#define MCSERVER_CONN_ADDR_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>
#include <time.h>

#define CONN_ADDR_LEN 64 /* "tcp6:[" + INET6_ADDRSTRLEN + "]:65535" fits */

/*
 * Writes fd's peer address (peer != 0) or its own address (peer == 0) to out. On failure
 * (socket gone, not TCP/IP) writes "unknown", so a listing never has a blank field.
 */
static inline void conn_addr_format(int fd, int peer, char *out, size_t outlen)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	int rc = peer ? getpeername(fd, (struct sockaddr *)&ss, &len)
		      : getsockname(fd, (struct sockaddr *)&ss, &len);
	char ip[INET6_ADDRSTRLEN];
	if (rc == 0 && ss.ss_family == AF_INET) {
		const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
		if (inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip))) {
			snprintf(out, outlen, "tcp:%s:%u", ip, (unsigned)ntohs(a->sin_port));
			return;
		}
	} else if (rc == 0 && ss.ss_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
		if (inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip))) {
			snprintf(out, outlen, "tcp6:[%s]:%u", ip, (unsigned)ntohs(a->sin6_port));
			return;
		}
	}
	snprintf(out, outlen, "unknown");
}

/* Whole seconds of a monotonic clock (a command's time; immune to clock changes). */
static inline int64_t conn_clock_secs(void)
{
	struct timespec ts;
	if (clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) != 0)
		return 0;
	return (int64_t)ts.tv_sec;
}

/* Seconds from then to now (both conn_clock_secs()), 0 if now is not later. */
static inline uint64_t conn_secs_since(int64_t then, int64_t now)
{
	return now > then ? (uint64_t)(now - then) : 0;
}

#endif
