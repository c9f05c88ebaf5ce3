/*
 * fd_limits.h - file descriptors for the example servers: the start-up check that the process
 * may open as many as its connection limit needs, and accepting when none are left.
 *
 * Shared by mcserver's epoll module and pingserver-c (whose own loop stays separate, see its
 * header), and the start-up check by every C server here.
 */
#ifndef EXAMPLES_FD_LIMITS_H
#define EXAMPLES_FD_LIMITS_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <time.h>

/*
 * Descriptors a server needs besides its connections: stdio, a listener, an epoll or ring
 * and a stop eventfd per worker, the spare below, the client refused at the limit, slack.
 */
unsigned long fd_reserve_for(unsigned threads);

/*
 * Makes RLIMIT_NOFILE allow `need` descriptors, raising the soft limit up to the hard one and
 * the hard one where permitted (as memcached does at start). Returns 0, or -1 with a message
 * in err naming the limit. *allowed (may be NULL) receives the soft limit in force after the
 * call, so a caller with a default (not user-given) connection limit can lower it instead.
 */
int fd_limit_ensure(unsigned long need, unsigned long *allowed, char *err, size_t errlen);

/*
 * Accepting when the process is out of descriptors. A level-triggered listener with a client
 * waiting stays readable, so a failing accept would spin; instead one spare descriptor is
 * held back, and on EMFILE/ENFILE it is closed, the waiting client accepted, refused (told so
 * and closed) and the spare reopened. The spare is shared by every worker of a process and
 * guarded by a read-write lock: workers accept under the read lock, and the spare is spent
 * only under the write lock, so no other worker's accept can take the descriptor it frees
 * (which would lose the spare for good and leave the listener spinning).
 */
struct fd_spare {
	pthread_rwlock_t lock;
	int fd; /* /dev/null, or -1 when it could not be (re)opened */
};

enum accept_result {
	ACCEPT_OK, /* *fd is a new connection */
	ACCEPT_EMPTY, /* nothing waiting (EAGAIN), or a client vanished before accept */
	ACCEPT_REFUSED, /* out of fds: one waiting client was refused; call again */
	ACCEPT_EXHAUSTED, /* out of fds and no spare: stop polling the listener for a while */
	ACCEPT_FAILED, /* another accept error (errno set) */
};

/* Opens the spare. Returns 0, or -1 (errno set). */
int fd_spare_init(struct fd_spare *s);
void fd_spare_destroy(struct fd_spare *s);

/*
 * accept4(listen_fd, flags) with the spare's protocol. On ACCEPT_REFUSED refuse(fd, ctx) was
 * called with the refused client's descriptor and must close it (it may write a line first).
 */
enum accept_result fd_spare_accept(struct fd_spare *s, int listen_fd, int flags,
				   void (*refuse)(int fd, void *ctx), void *ctx, int *fd);

/*
 * A listener in an epoll set that is not polled for a while after ACCEPT_EXHAUSTED (or
 * another accept failure), since it stays readable and would make the loop spin.
 */
struct listener_pause {
	int epfd, fd;
	void *tag; /* the listener's epoll_event data.ptr */
	bool paused;
	struct timespec resume;
};

/* Stops polling the listener for LISTENER_PAUSE_MS. */
#define LISTENER_PAUSE_MS 100
void listener_pause(struct listener_pause *p);

/* epoll_wait's timeout for the loop: -1 unless paused; polls the listener again when due. */
int listener_pause_timeout(struct listener_pause *p);

#endif
