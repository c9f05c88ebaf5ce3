/*
 * fd_limits.c - see fd_limits.h.
 */
#define _GNU_SOURCE
#include "fd_limits.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

unsigned long fd_reserve_for(unsigned threads)
{
	return 16 + 4ul * (threads ? threads : 1);
}

int fd_limit_ensure(unsigned long need, unsigned long *allowed, char *err, size_t errlen)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
		snprintf(err, errlen, "getrlimit(RLIMIT_NOFILE): %s", strerror(errno));
		return -1;
	}
	if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= need) {
		if (allowed)
			*allowed = rl.rlim_cur == RLIM_INFINITY ? (unsigned long)-1 : rl.rlim_cur;
		return 0;
	}
	struct rlimit want = rl;
	want.rlim_cur = need;
	if (want.rlim_max != RLIM_INFINITY && want.rlim_max < need)
		want.rlim_max = need; /* permitted with CAP_SYS_RESOURCE */
	if (setrlimit(RLIMIT_NOFILE, &want) == 0) {
		if (allowed)
			*allowed = need;
		return 0;
	}
	/* at least go as far as the hard limit allows */
	if (rl.rlim_cur < rl.rlim_max) {
		struct rlimit up = { rl.rlim_max, rl.rlim_max };
		if (setrlimit(RLIMIT_NOFILE, &up) == 0)
			rl.rlim_cur = rl.rlim_max;
	}
	if (allowed)
		*allowed = rl.rlim_cur;
	snprintf(err, errlen,
		 "the connection limit needs %lu file descriptors but RLIMIT_NOFILE allows %llu "
		 "(hard limit %llu) and cannot be raised: raise it (ulimit -n) or lower -c",
		 need, (unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max);
	return -1;
}

int fd_spare_init(struct fd_spare *s)
{
	pthread_rwlockattr_t attr;
	pthread_rwlockattr_init(&attr);
	/* a worker waiting to spend the spare must not wait behind a stream of accepts */
	pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	int rc = pthread_rwlock_init(&s->lock, &attr);
	pthread_rwlockattr_destroy(&attr);
	if (rc != 0) {
		errno = rc;
		return -1;
	}
	s->fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (s->fd < 0) {
		int e = errno;
		pthread_rwlock_destroy(&s->lock);
		errno = e;
		return -1;
	}
	return 0;
}

void fd_spare_destroy(struct fd_spare *s)
{
	if (s->fd >= 0)
		close(s->fd);
	s->fd = -1;
	pthread_rwlock_destroy(&s->lock);
}

/* Out of descriptors: spend the spare on one waiting client, under the write lock. */
static enum accept_result refuse_one(struct fd_spare *s, int listen_fd, int flags,
				     void (*refuse)(int fd, void *ctx), void *ctx)
{
	enum accept_result r = ACCEPT_EXHAUSTED;
	pthread_rwlock_wrlock(&s->lock);
	if (s->fd < 0) /* lost earlier (ENFILE: another process took it): try to get it back */
		s->fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (s->fd >= 0) {
		close(s->fd);
		int fd;
		do
			fd = accept4(listen_fd, NULL, NULL, flags);
		while (fd < 0 && errno == EINTR);
		if (fd >= 0) {
			refuse(fd, ctx);
			r = ACCEPT_REFUSED;
		} else {
			r = (errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNABORTED)
				    ? ACCEPT_EMPTY
				    : ACCEPT_EXHAUSTED;
		}
		s->fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	}
	pthread_rwlock_unlock(&s->lock);
	return r;
}

enum accept_result fd_spare_accept(struct fd_spare *s, int listen_fd, int flags,
				   void (*refuse)(int fd, void *ctx), void *ctx, int *fd)
{
	for (;;) {
		pthread_rwlock_rdlock(&s->lock);
		*fd = accept4(listen_fd, NULL, NULL, flags);
		int e = errno;
		pthread_rwlock_unlock(&s->lock);
		if (*fd >= 0)
			return ACCEPT_OK;
		if (e == EINTR || e == ECONNABORTED)
			continue;
		if (e == EAGAIN || e == EWOULDBLOCK)
			return ACCEPT_EMPTY;
		if (e == EMFILE || e == ENFILE)
			return refuse_one(s, listen_fd, flags, refuse, ctx);
		errno = e;
		return ACCEPT_FAILED;
	}
}

static void listener_poll(struct listener_pause *p, bool on)
{
	struct epoll_event ev = { .events = on ? EPOLLIN : 0, .data.ptr = p->tag };
	epoll_ctl(p->epfd, EPOLL_CTL_MOD, p->fd, &ev);
	p->paused = !on;
}

void listener_pause(struct listener_pause *p)
{
	listener_poll(p, false);
	clock_gettime(CLOCK_MONOTONIC, &p->resume);
	p->resume.tv_nsec += LISTENER_PAUSE_MS * 1000000L;
	if (p->resume.tv_nsec >= 1000000000L) {
		p->resume.tv_sec++;
		p->resume.tv_nsec -= 1000000000L;
	}
}

int listener_pause_timeout(struct listener_pause *p)
{
	if (!p->paused)
		return -1;
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	long ms = (p->resume.tv_sec - now.tv_sec) * 1000L +
		  (p->resume.tv_nsec - now.tv_nsec) / 1000000L;
	if (ms > 0)
		return (int)ms;
	listener_poll(p, true);
	return -1;
}
