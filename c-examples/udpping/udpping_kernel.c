/* udpping-kernel: UDP ping responder on a kernel UDP socket, batched with recvmmsg/sendmmsg
 * (the fair baseline for udpping-xdp). A datagram whose payload starts with "PING" gets the
 * same payload back with "PING" replaced by "PONG"; anything else is ignored.
 *
 *   udpping-kernel -p PORT [-l ADDR] [-b BATCH]     (defaults: 127.0.0.1, batch 64)
 *
 * Runs until SIGINT/SIGTERM, then prints its counters to stderr. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define MAX_BATCH 256
#define BUF_SIZE 2048

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static void usage(const char *argv0)
{
	fprintf(stderr, "usage: %s -p PORT [-l ADDR] [-b BATCH]\n", argv0);
	exit(2);
}

int main(int argc, char **argv)
{
	const char *addr = "127.0.0.1";
	long port = -1, batch = 64;
	int opt;
	while ((opt = getopt(argc, argv, "p:l:b:h")) != -1) {
		switch (opt) {
		case 'p': port = strtol(optarg, NULL, 10); break;
		case 'l': addr = optarg; break;
		case 'b': batch = strtol(optarg, NULL, 10); break;
		default: usage(argv[0]);
		}
	}
	if (port < 0 || port > 65535 || batch < 1 || batch > MAX_BATCH)
		usage(argv[0]);

	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		perror("socket");
		return 1;
	}
	int big = 16 << 20;
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1) {
		fprintf(stderr, "bad address %s\n", addr);
		return 2;
	}
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		perror("bind");
		return 1;
	}
	/* Wake up periodically so a signal stops the loop even without traffic. */
	struct timeval tv = { .tv_sec = 0, .tv_usec = 200000 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	struct sigaction act = { .sa_handler = on_signal };
	sigaction(SIGINT, &act, NULL);
	sigaction(SIGTERM, &act, NULL);
	socklen_t slen = sizeof(sa);
	getsockname(fd, (struct sockaddr *)&sa, &slen);
	fprintf(stderr, "udpping-kernel: serving %s:%u\n", addr, ntohs(sa.sin_port));

	static char bufs[MAX_BATCH][BUF_SIZE];
	static struct sockaddr_in peers[MAX_BATCH];
	static struct iovec iov[MAX_BATCH], out_iov[MAX_BATCH];
	static struct mmsghdr in[MAX_BATCH], out[MAX_BATCH];
	unsigned long long received = 0, answered = 0, ignored = 0, send_errors = 0;

	while (!stop) {
		for (int i = 0; i < batch; i++) {
			iov[i].iov_base = bufs[i];
			iov[i].iov_len = BUF_SIZE;
			memset(&in[i].msg_hdr, 0, sizeof(in[i].msg_hdr));
			in[i].msg_hdr.msg_name = &peers[i];
			in[i].msg_hdr.msg_namelen = sizeof(peers[i]);
			in[i].msg_hdr.msg_iov = &iov[i];
			in[i].msg_hdr.msg_iovlen = 1;
		}
		/* Block for the first datagram, then take whatever else is queued. */
		int n = recvmmsg(fd, in, (unsigned)batch, MSG_WAITFORONE, NULL);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
				continue;
			perror("recvmmsg");
			break;
		}
		received += (unsigned)n;
		int k = 0;
		for (int i = 0; i < n; i++) {
			unsigned len = in[i].msg_len;
			if (len < 4 || (in[i].msg_hdr.msg_flags & MSG_TRUNC) ||
			    memcmp(bufs[i], "PING", 4) != 0) {
				ignored++;
				continue;
			}
			memcpy(bufs[i], "PONG", 4);
			out_iov[k].iov_base = bufs[i];
			out_iov[k].iov_len = len;
			memset(&out[k].msg_hdr, 0, sizeof(out[k].msg_hdr));
			out[k].msg_hdr.msg_name = &peers[i];
			out[k].msg_hdr.msg_namelen = in[i].msg_hdr.msg_namelen;
			out[k].msg_hdr.msg_iov = &out_iov[k];
			out[k].msg_hdr.msg_iovlen = 1;
			k++;
		}
		int done = 0;
		while (done < k) {
			int s = sendmmsg(fd, out + done, (unsigned)(k - done), 0);
			if (s < 0) {
				if (errno == EINTR)
					continue;
				send_errors += (unsigned)(k - done);
				break;
			}
			done += s;
		}
		answered += (unsigned)done;
	}
	fprintf(stderr,
		"udpping-kernel: received %llu answered %llu ignored %llu send_errors %llu\n",
		received, answered, ignored, send_errors);
	close(fd);
	return 0;
}
