/* udpping-xdp: UDP ping responder on libp99's AF_XDP sockets. The built-in filter program
 * redirects IPv4/UDP datagrams to PORT on queue QUEUE of IFACE to this process; everything
 * else (ARP, other ports, IPv6) passes to the kernel stack, so the host keeps working. Each
 * PING is answered from the very frame it arrived in: "PING" -> "PONG", addresses swapped.
 *
 *   udpping-xdp -p PORT -i IFACE [-q QUEUE] [-m auto|native|generic] [-b BATCH] [-B]
 *
 * -B busy-polls instead of sleeping in poll(). One socket serves one queue: on a multi-queue
 * NIC steer the port's flows to QUEUE (ethtool -N) or run one process per queue.
 * Runs until SIGINT/SIGTERM, then prints its counters to stderr. Needs root (CAP_NET_ADMIN,
 * CAP_BPF, CAP_NET_RAW). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <p99.h>

#define MAX_BATCH 256

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static void usage(const char *argv0)
{
	fprintf(stderr,
		"usage: %s -p PORT -i IFACE [-q QUEUE] [-m auto|native|generic] [-b BATCH] [-B]\n",
		argv0);
	exit(2);
}

static int fail(const char *what, p99_status s)
{
	fprintf(stderr, "udpping-xdp: %s: %s (%s)\n", what, p99_status_str(s),
		p99_last_error_message());
	return 1;
}

int main(int argc, char **argv)
{
	long port = -1, queue = 0, batch = 64;
	const char *iface = NULL, *mode_name = "auto";
	int busy = 0, opt;
	while ((opt = getopt(argc, argv, "p:i:q:m:b:Bh")) != -1) {
		switch (opt) {
		case 'p': port = strtol(optarg, NULL, 10); break;
		case 'i': iface = optarg; break;
		case 'q': queue = strtol(optarg, NULL, 10); break;
		case 'm': mode_name = optarg; break;
		case 'b': batch = strtol(optarg, NULL, 10); break;
		case 'B': busy = 1; break;
		default: usage(argv[0]);
		}
	}
	if (port < 1 || port > 65535 || !iface || queue < 0 || queue > 4095 || batch < 1 ||
	    batch > MAX_BATCH)
		usage(argv[0]);
	uint32_t mode;
	if (strcmp(mode_name, "auto") == 0)
		mode = P99_XDP_ATTACH_AUTO;
	else if (strcmp(mode_name, "native") == 0)
		mode = P99_XDP_ATTACH_NATIVE;
	else if (strcmp(mode_name, "generic") == 0)
		mode = P99_XDP_ATTACH_GENERIC;
	else
		usage(argv[0]);

	p99_xdp_prog *prog = NULL;
	p99_xdp_umem *umem = NULL;
	p99_xdp_socket *sock = NULL;
	p99_status s;
	int rc = 0;
	if ((s = p99_xdp_prog_load(P99_XDP_PROG_UDP_PORT, (uint16_t)port, (uint32_t)queue + 1,
				   &prog)))
		return fail("load program", s);
	p99_xdp_umem_config uc = { .struct_size = sizeof uc };
	p99_xdp_socket_config sc = { .struct_size = sizeof sc };
	if ((s = p99_xdp_umem_config_defaults(&uc)) || (s = p99_xdp_socket_config_defaults(&sc))) {
		rc = fail("config defaults", s);
		goto out;
	}
	uc.frame_size = 2048;
	uc.frame_count = 8192;
	uc.fill_size = 4096;
	uc.comp_size = 2048;
	sc.rx_size = 2048;
	sc.tx_size = 2048;
	if ((s = p99_xdp_umem_create(&uc, &umem))) {
		rc = fail("create umem", s);
		goto out;
	}
	if ((s = p99_xdp_socket_create(umem, iface, (uint32_t)queue, &sc, &sock))) {
		rc = fail("bind socket", s);
		goto out;
	}
	if ((s = p99_xdp_prog_attach(prog, iface, mode))) {
		rc = fail("attach program", s);
		goto out;
	}
	if ((s = p99_xdp_prog_register(prog, sock))) {
		rc = fail("register socket", s);
		goto out;
	}
	p99_xdp_umem_fill(umem, UINT32_MAX, NULL);
	struct sigaction act = { .sa_handler = on_signal };
	sigaction(SIGINT, &act, NULL);
	sigaction(SIGTERM, &act, NULL);
	fprintf(stderr, "udpping-xdp: serving UDP port %ld on %s queue %ld (%s XDP)\n", port, iface,
		queue, mode_name);

	p99_xdp_desc rx[MAX_BATCH], tx[MAX_BATCH], drop[MAX_BATCH];
	unsigned long long answered = 0, ignored = 0;
	while (!stop) {
		uint32_t n = 0, ready = 0;
		if ((s = p99_xdp_socket_recv(sock, rx, (uint32_t)batch, &n))) {
			rc = fail("recv", s);
			break;
		}
		if (n == 0) {
			if (!busy)
				p99_xdp_socket_wait(sock, 200, &ready);
			continue;
		}
		uint32_t nt = 0, nd = 0;
		for (uint32_t i = 0; i < n; i++) {
			uint8_t *data = NULL;
			uint32_t len = 0;
			if (p99_xdp_umem_data(umem, rx[i].addr, rx[i].len, &data) ==
				    P99_STATUS_OK &&
			    p99_xdp_udp_ping_reply(data, rx[i].len, (uint16_t)port, &len) ==
				    P99_STATUS_OK) {
				tx[nt] = rx[i];
				tx[nt++].len = len;
			} else {
				drop[nd++] = rx[i];
			}
		}
		if (nd) {
			p99_xdp_umem_release(umem, drop, nd);
			ignored += nd;
		}
		uint32_t off = 0;
		while (off < nt && !stop) {
			uint32_t q = 0;
			if ((s = p99_xdp_socket_send(sock, tx + off, nt - off, &q))) {
				rc = fail("send", s);
				stop = 1;
				break;
			}
			off += q;
		}
		answered += off;
		if (off < nt)
			p99_xdp_umem_release(umem, tx + off, nt - off);
		p99_xdp_umem_fill(umem, UINT32_MAX, NULL);
	}
	p99_xdp_stats st = { .struct_size = sizeof st };
	if (p99_xdp_socket_stats(sock, &st) == P99_STATUS_OK)
		fprintf(stderr,
			"udpping-xdp: answered %llu ignored %llu rx %llu tx_completed %llu "
			"tx_kernel_dropped %llu "
			"rx_dropped %llu rx_ring_full %llu fill_empty %llu kicks %llu fill_wakeups "
			"%llu\n",
			answered, ignored, (unsigned long long)st.rx_packets,
			(unsigned long long)st.tx_completed,
			(unsigned long long)st.tx_kernel_dropped, (unsigned long long)st.rx_dropped,
			(unsigned long long)st.rx_ring_full,
			(unsigned long long)st.rx_fill_ring_empty_descs,
			(unsigned long long)st.tx_kicks, (unsigned long long)st.fill_wakeups);
out:
	p99_xdp_socket_free(sock);
	p99_xdp_umem_free(umem);
	p99_xdp_prog_free(prog);
	return rc;
}
