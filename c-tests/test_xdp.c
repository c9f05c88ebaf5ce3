/* C tests of every p99_xdp_* function: argument checks without privileges, then (as root) a
 * real round trip on a veth pair inside a private network namespace of this process. */
#define _GNU_SOURCE
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"

static size_t build_ping(uint8_t *b, uint16_t dport, uint32_t seq)
{
	static const uint8_t mac_a[6] = { 2, 0x99, 0, 0, 0, 0x0a },
			     mac_b[6] = { 2, 0x99, 0, 0, 0, 0x0b };
	const size_t payload = 12, ip_total = 20 + 8 + payload;
	memcpy(b, mac_b, 6);
	memcpy(b + 6, mac_a, 6);
	b[12] = 0x08, b[13] = 0x00;
	uint8_t *ip = b + 14;
	memset(ip, 0, 20);
	ip[0] = 0x45, ip[2] = (uint8_t)(ip_total >> 8), ip[3] = (uint8_t)ip_total;
	ip[8] = 64, ip[9] = 17;
	ip[12] = 10, ip[13] = 99, ip[14] = 0, ip[15] = 1;
	ip[16] = 10, ip[17] = 99, ip[18] = 0, ip[19] = 2;
	uint32_t sum = 0;
	for (int i = 0; i < 20; i += 2)
		sum += (uint32_t)(ip[i] << 8 | ip[i + 1]);
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	ip[10] = (uint8_t)(~sum >> 8), ip[11] = (uint8_t)~sum;
	uint8_t *udp = ip + 20;
	udp[0] = 0x9c, udp[1] = 0x40; /* 40000 */
	udp[2] = (uint8_t)(dport >> 8), udp[3] = (uint8_t)dport;
	udp[4] = 0, udp[5] = (uint8_t)(8 + payload), udp[6] = 0, udp[7] = 0;
	memcpy(udp + 8, "PING", 4);
	memcpy(udp + 12, &seq, 4);
	memset(udp + 16, 0xab, payload - 8);
	return 14 + ip_total;
}

static void test_defaults_and_argument_checks(void)
{
	p99_xdp_umem_config uc = { .struct_size = sizeof uc };
	CHECK_STATUS(p99_xdp_umem_config_defaults(NULL), P99_STATUS_NULL_PARAMETER);
	CHECK_OK(p99_xdp_umem_config_defaults(&uc));
	CHECK_EQ(uc.struct_size, sizeof(uc));
	CHECK_EQ(uc.frame_size, 4096);
	CHECK_EQ(uc.frame_count, 4096);
	CHECK_EQ(uc.headroom, 0);
	p99_xdp_socket_config sc = { .struct_size = sizeof sc };
	CHECK_OK(p99_xdp_socket_config_defaults(&sc));
	CHECK_EQ(sc.struct_size, sizeof(sc));
	CHECK_EQ(sc.bind_mode, P99_XDP_BIND_COPY);
	CHECK(sc.need_wakeup != 0);

	p99_xdp_umem *u = (p99_xdp_umem *)0x1;
	CHECK_STATUS(p99_xdp_umem_create(&uc, NULL), P99_STATUS_NULL_PARAMETER);
	uc.frame_size = 3000;
	CHECK_STATUS(p99_xdp_umem_create(&uc, &u), P99_STATUS_INVALID_ARGUMENT);
	CHECK(u == (p99_xdp_umem *)0x1); /* outputs untouched on failure */
	CHECK(strstr(p99_last_error_message(), "frame size") != NULL);
	CHECK_OK(p99_xdp_umem_config_defaults(&uc));
	uc.fill_size = 1000;
	CHECK_STATUS(p99_xdp_umem_create(&uc, &u), P99_STATUS_INVALID_ARGUMENT);
	CHECK_OK(p99_xdp_umem_config_defaults(&uc));
	uc.headroom = 4000;
	CHECK_STATUS(p99_xdp_umem_create(&uc, &u), P99_STATUS_INVALID_ARGUMENT);
	CHECK_OK(p99_xdp_umem_config_defaults(&uc));
	uc.struct_size = 4;
	CHECK_STATUS(p99_xdp_umem_create(&uc, &u), P99_STATUS_INVALID_ARGUMENT);
	CHECK(strstr(p99_last_error_message(), "struct_size 4 is smaller") != NULL);
	CHECK_STATUS(p99_xdp_umem_config_defaults(&uc),
		     P99_STATUS_INVALID_ARGUMENT); /* size unset */
	CHECK_EQ(uc.struct_size, 4); /* nothing written */
	uc.struct_size = sizeof uc;

	CHECK_OK(p99_xdp_umem_free(NULL));
	CHECK_OK(p99_xdp_socket_free(NULL));
	CHECK_OK(p99_xdp_prog_free(NULL));
	CHECK_EQ(p99_xdp_socket_fd(NULL), -1);
	uint32_t n = 0;
	p99_xdp_desc d = { 0 };
	uint8_t *data = NULL;
	p99_xdp_frame_counts fc = { .struct_size = sizeof fc };
	p99_xdp_stats st = { .struct_size = sizeof st };
	CHECK_STATUS(p99_xdp_umem_fill(NULL, 1, &n), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_xdp_umem_reap(NULL, &n), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_xdp_umem_alloc(NULL, &d, 1, &n), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_xdp_umem_release(NULL, &d, 1), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_xdp_umem_data(NULL, 0, 1, &data), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_xdp_umem_frame_counts(NULL, &fc), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_xdp_socket_create(NULL, "lo", 0, NULL, NULL), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_xdp_socket_recv(NULL, &d, 1, &n), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_xdp_socket_send(NULL, &d, 1, &n), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_xdp_socket_kick(NULL, &n), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_xdp_socket_wait(NULL, 0, &n), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_xdp_socket_mode(NULL, &n, &n), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_xdp_socket_stats(NULL, &st), P99_STATUS_NULL_PARAMETER);
	p99_xdp_prog *p = NULL;
	CHECK_STATUS(p99_xdp_prog_load(P99_XDP_PROG_REDIRECT_ALL, 0, 4, NULL),
		     P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_xdp_prog_load(7, 0, 4, &p), P99_STATUS_INVALID_ARGUMENT);
	CHECK_STATUS(p99_xdp_prog_attach(NULL, "lo", P99_XDP_ATTACH_AUTO),
		     P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_xdp_prog_detach(NULL), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_xdp_prog_mode(NULL, &n), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_xdp_prog_register(NULL, NULL), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_xdp_prog_unregister(NULL, 0), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_xdp_prog_test_run(NULL, data, 0, &n), P99_STATUS_NULL_PARAMETER);

	/* The packet helper needs no privileges. */
	uint8_t f[128];
	size_t len = build_ping(f, 7000, 42);
	uint32_t rlen = 0;
	CHECK_STATUS(p99_xdp_udp_ping_reply(f, (uint32_t)len, 7001, &rlen), P99_STATUS_NOT_FOUND);
	CHECK_OK(p99_xdp_udp_ping_reply(f, (uint32_t)len, 7000, &rlen));
	CHECK_EQ(rlen, len);
	CHECK(memcmp(f + 42, "PONG", 4) == 0);
	CHECK_EQ(f[14 + 12 + 3], 2); /* source now 10.99.0.2 */
	CHECK_EQ(f[14 + 20 + 1], 0x58); /* source port 7000 = 0x1b58 */
	CHECK_STATUS(p99_xdp_udp_ping_reply(f, (uint32_t)len, 0, &rlen),
		     P99_STATUS_NOT_FOUND); /* PONG */
	build_ping(f, 7000, 1);
	CHECK_STATUS(p99_xdp_udp_ping_reply(f, 40, 0, &rlen), P99_STATUS_NOT_FOUND); /* truncated */
	f[17] = 0xff; /* IP total length beyond the frame */
	CHECK_STATUS(p99_xdp_udp_ping_reply(f, (uint32_t)len, 0, &rlen), P99_STATUS_NOT_FOUND);
	CHECK_STATUS(p99_xdp_udp_ping_reply(NULL, 10, 0, &rlen), P99_STATUS_NULL_PARAMETER);
	CHECK_STATUS(p99_xdp_udp_ping_reply(f, (uint32_t)len, 0, NULL), P99_STATUS_NULL_PARAMETER);
}

static int sh(const char *cmd)
{
	int r = system(cmd);
	if (r != 0)
		fprintf(stderr, "command failed (%d): %s\n", r, cmd);
	return r;
}

/* Whether the effective capability set holds CAP_NET_ADMIN (12) and CAP_SYS_ADMIN (21). */
static int has_net_and_sys_admin(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	unsigned long long caps = 0;
	int found = 0;
	if (!f)
		return 0;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "CapEff: %llx", &caps) == 1) {
			found = 1;
			break;
		}
	fclose(f);
	return found && (caps >> 12 & 1) && (caps >> 21 & 1);
}

static void test_round_trip_on_veth(void)
{
	/* Only missing privileges skip; with them, a namespace that cannot be made fails. */
	if (geteuid() != 0) {
		printf("SKIP veth round trip: not root (needs CAP_NET_ADMIN, CAP_SYS_ADMIN, "
		       "CAP_BPF)\n");
		return;
	}
	if (!has_net_and_sys_admin()) {
		printf("SKIP veth round trip: root without CAP_NET_ADMIN and CAP_SYS_ADMIN\n");
		return;
	}
	if (unshare(CLONE_NEWNET) != 0) {
		perror("unshare(CLONE_NEWNET)");
		CHECK(!"unshare(CLONE_NEWNET) failed although privileged");
		return;
	}
	if (sh("ip link add va numtxqueues 4 numrxqueues 4 address 02:99:00:00:00:0a type veth "
	       "peer name vb numtxqueues 4 numrxqueues 4 address 02:99:00:00:00:0b") != 0 ||
	    sh("ip link set va up && ip link set vb up")) {
		CHECK(!"veth setup");
		return;
	}

	/* Program: load, test-run, attach, conflicts, mode. */
	p99_xdp_prog *prog = NULL, *other = NULL;
	CHECK_STATUS(p99_xdp_prog_load(P99_XDP_PROG_UDP_PORT, 0, 4, &prog),
		     P99_STATUS_INVALID_ARGUMENT);
	CHECK_STATUS(p99_xdp_prog_load(P99_XDP_PROG_UDP_PORT, 7000, 0, &prog),
		     P99_STATUS_INVALID_ARGUMENT);
	CHECK_OK(p99_xdp_prog_load(P99_XDP_PROG_UDP_PORT, 7000, 4, &prog));
	uint8_t f[128];
	size_t len = build_ping(f, 7001, 0);
	uint32_t action = 99, mode = 99, n = 0;
	CHECK_OK(p99_xdp_prog_test_run(prog, f, len, &action));
	CHECK_EQ(action, P99_XDP_PASS);
	CHECK_STATUS(p99_xdp_prog_test_run(prog, f, 4, &action), P99_STATUS_INVALID_ARGUMENT);
	CHECK_STATUS(p99_xdp_prog_mode(prog, &mode), P99_STATUS_INVALID_STATE);
	CHECK_STATUS(p99_xdp_prog_attach(prog, "nosuchdev0", P99_XDP_ATTACH_GENERIC),
		     P99_STATUS_NO_DEVICE);
	CHECK(strstr(p99_last_error_message(), "no interface named nosuchdev0") != NULL);
	CHECK_STATUS(p99_xdp_prog_attach(prog, "", P99_XDP_ATTACH_GENERIC),
		     P99_STATUS_INVALID_ARGUMENT);
	CHECK_STATUS(p99_xdp_prog_attach(prog, "sixteen-chars-xx", P99_XDP_ATTACH_GENERIC),
		     P99_STATUS_INVALID_ARGUMENT); /* IFNAMSIZ counts the NUL */
	CHECK_STATUS(p99_xdp_prog_attach(prog, "vb", 9), P99_STATUS_INVALID_ARGUMENT);
	CHECK_STATUS(p99_xdp_prog_attach(prog, NULL, P99_XDP_ATTACH_GENERIC),
		     P99_STATUS_NULL_PARAMETER);
	CHECK_OK(p99_xdp_prog_attach(prog, "vb", P99_XDP_ATTACH_GENERIC));
	CHECK_STATUS(p99_xdp_prog_attach(prog, "vb", P99_XDP_ATTACH_GENERIC),
		     P99_STATUS_INVALID_STATE);
	CHECK_OK(p99_xdp_prog_mode(prog, &mode));
	CHECK_EQ(mode, P99_XDP_ATTACH_GENERIC);
	CHECK_OK(p99_xdp_prog_load(P99_XDP_PROG_REDIRECT_ALL, 0, 4, &other));
	CHECK_STATUS(p99_xdp_prog_attach(other, "vb", P99_XDP_ATTACH_GENERIC), P99_STATUS_BUSY);
	CHECK(strstr(p99_last_error_message(), "busy") != NULL);

	/* Receiver on vb queue 1; sender on va queue 2 (generic XDP on veth sees TX queue q as
	 * RX queue q - 1). */
	p99_xdp_umem_config uc = { .struct_size = sizeof uc };
	CHECK_OK(p99_xdp_umem_config_defaults(&uc));
	uc.frame_count = 256, uc.fill_size = 128, uc.comp_size = 128;
	p99_xdp_socket_config sc = { .struct_size = sizeof sc };
	CHECK_OK(p99_xdp_socket_config_defaults(&sc));
	sc.rx_size = 128, sc.tx_size = 128;
	p99_xdp_umem *ru = NULL, *tu = NULL;
	p99_xdp_socket *rs = NULL, *ts = NULL, *dup = NULL;
	CHECK_OK(p99_xdp_umem_create(&uc, &ru));
	CHECK_OK(p99_xdp_umem_create(NULL, &tu));
	if (!ru || !tu) {
		p99_xdp_umem_free(ru);
		p99_xdp_umem_free(tu);
		p99_xdp_prog_free(prog);
		p99_xdp_prog_free(other);
		return;
	}
	CHECK_STATUS(p99_xdp_socket_create(ru, "vb", 17, &sc, &rs), P99_STATUS_NO_DEVICE);
	CHECK_STATUS(p99_xdp_socket_create(ru, "nosuchdev0", 1, &sc, &rs), P99_STATUS_NO_DEVICE);
	sc.bind_mode = 7;
	CHECK_STATUS(p99_xdp_socket_create(ru, "vb", 1, &sc, &rs), P99_STATUS_INVALID_ARGUMENT);
	sc.bind_mode = P99_XDP_BIND_ZEROCOPY;
	CHECK_STATUS(p99_xdp_socket_create(ru, "vb", 1, &sc, &rs), P99_STATUS_UNSUPPORTED);
	sc.bind_mode = P99_XDP_BIND_COPY;
	CHECK_OK(p99_xdp_socket_create(ru, "vb", 1, &sc, &rs));
	CHECK_STATUS(p99_xdp_socket_create(ru, "vb", 2, &sc, &dup), P99_STATUS_INVALID_STATE);
	CHECK_OK(p99_xdp_socket_create(tu, "va", 2, NULL, &ts));
	if (!rs || !ts)
		goto out;
	CHECK(p99_xdp_socket_fd(rs) >= 0);
	uint32_t queue = 99;
	CHECK_OK(p99_xdp_socket_mode(rs, &mode, &queue));
	CHECK_EQ(mode, P99_XDP_BIND_COPY);
	CHECK_EQ(queue, 1);
	CHECK_OK(p99_xdp_prog_register(prog, rs));
	CHECK_OK(p99_xdp_umem_fill(ru, 1000, &n));
	CHECK_EQ(n, 128);

	uint32_t ready = 9;
	CHECK_OK(p99_xdp_socket_wait(rs, 50, &ready));
	CHECK_EQ(ready, 0);

	/* Send 8 pings (plus 2 to another port, which the filter passes to the stack). */
	p99_xdp_desc d[16];
	CHECK_OK(p99_xdp_umem_alloc(tu, d, 10, &n));
	CHECK_EQ(n, 10);
	for (uint32_t i = 0; i < 10; i++) {
		uint8_t *data = NULL;
		CHECK_OK(p99_xdp_umem_data(tu, d[i].addr, 128, &data));
		if (data)
			d[i].len = (uint32_t)build_ping(data, i < 8 ? 7000 : 7001, i);
	}
	p99_xdp_desc bad = d[0];
	bad.addr = 4096ull * 5000; /* outside the umem */
	CHECK_STATUS(p99_xdp_socket_send(ts, &bad, 1, &n), P99_STATUS_INVALID_ARGUMENT);
	bad = d[0];
	bad.len = 5000; /* crosses the frame */
	CHECK_STATUS(p99_xdp_socket_send(ts, &bad, 1, &n), P99_STATUS_INVALID_ARGUMENT);
	uint32_t queued = 0, pending = 99;
	CHECK_OK(p99_xdp_socket_send(ts, d, 10, &queued));
	CHECK_EQ(queued, 10);
	CHECK_STATUS(p99_xdp_socket_send(ts, d, 1, &queued),
		     P99_STATUS_INVALID_ARGUMENT); /* sent already */
	CHECK_OK(p99_xdp_socket_kick(ts, &pending));
	CHECK_EQ(pending, 0);

	uint32_t got = 0;
	for (int tries = 0; tries < 100 && got < 8; tries++) {
		CHECK_OK(p99_xdp_socket_wait(rs, 20, &ready));
		CHECK_OK(p99_xdp_socket_recv(rs, d + got, 16 - got, &n));
		got += n;
	}
	CHECK_EQ(got, 8);
	for (uint32_t i = 0; i < got; i++) {
		uint8_t *data = NULL;
		uint32_t seq = 99, rlen = 0;
		CHECK_OK(p99_xdp_umem_data(ru, d[i].addr, d[i].len, &data));
		if (!data)
			continue;
		memcpy(&seq, data + 46, 4);
		CHECK_EQ(seq, i);
		CHECK_OK(p99_xdp_udp_ping_reply(data, d[i].len, 7000, &rlen));
		d[i].len = rlen;
	}
	p99_xdp_frame_counts fc = { .struct_size = sizeof fc };
	CHECK_OK(p99_xdp_umem_frame_counts(ru, &fc));
	CHECK_EQ(fc.held, 8);
	CHECK_EQ(fc.free + fc.in_fill + fc.held + fc.in_tx, 256);
	/* Answer 4 from the same frames on the receiving socket; release the other 4. */
	CHECK_OK(p99_xdp_socket_send(rs, d, 4, &queued));
	CHECK_EQ(queued, 4);
	CHECK_OK(p99_xdp_umem_release(ru, d + 4, 4));
	CHECK_STATUS(p99_xdp_umem_release(ru, d + 4, 1), P99_STATUS_INVALID_ARGUMENT); /* twice */
	uint8_t *data = NULL;
	CHECK_STATUS(p99_xdp_umem_data(ru, d[4].addr, 10, &data), P99_STATUS_INVALID_ARGUMENT);
	uint32_t reaped = 0;
	for (int tries = 0; tries < 100; tries++) {
		uint32_t r = 0;
		CHECK_OK(p99_xdp_umem_reap(ru, &r));
		reaped += r;
		CHECK_OK(p99_xdp_umem_frame_counts(ru, &fc));
		if (fc.in_tx == 0)
			break;
		usleep(1000);
	}
	CHECK_OK(p99_xdp_umem_frame_counts(ru, &fc));
	CHECK_EQ(fc.held, 0);
	CHECK_EQ(fc.in_tx, 0);
	CHECK_OK(p99_xdp_umem_reap(tu, &reaped));

	p99_xdp_stats st = { .struct_size = sizeof st };
	CHECK_OK(p99_xdp_socket_stats(rs, &st));
	CHECK_EQ(st.rx_packets, 8);
	CHECK_EQ(st.tx_queued, 4);
	CHECK_EQ(st.tx_completed, 4);
	CHECK_OK(p99_xdp_socket_stats(ts, &st));
	CHECK_EQ(st.tx_queued, 10);
	CHECK_EQ(st.tx_completed, 10);
	CHECK_EQ(st.rejected_descs, 3);

	CHECK_OK(p99_xdp_prog_unregister(prog, 1));
	CHECK_STATUS(p99_xdp_prog_unregister(prog, 4), P99_STATUS_INVALID_ARGUMENT);
	CHECK_OK(p99_xdp_prog_detach(prog));
	CHECK_OK(p99_xdp_prog_detach(prog));
	CHECK_STATUS(p99_xdp_prog_mode(prog, &mode), P99_STATUS_INVALID_STATE);
	CHECK_OK(p99_xdp_prog_attach(other, "vb", P99_XDP_ATTACH_AUTO));
out:
	/* Any free order is fine: a socket keeps its umem's memory alive. */
	CHECK_OK(p99_xdp_umem_free(ru));
	CHECK_OK(p99_xdp_socket_free(rs));
	CHECK_OK(p99_xdp_socket_free(ts));
	CHECK_OK(p99_xdp_umem_free(tu));
	CHECK_OK(p99_xdp_prog_free(prog));
	CHECK_OK(p99_xdp_prog_free(other));
}

int main(void)
{
	test_defaults_and_argument_checks();
	test_round_trip_on_veth();
	return check_done("xdp");
}
