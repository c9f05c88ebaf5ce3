/* ABI growth (DESIGN.md "Growth"): a caller compiled against the first published layouts
 * (p99_v1.h) and a caller whose structs carry one more field than this library knows both
 * work; a struct whose unknown tail is not zero is refused; a struct the library fills gets
 * at most struct_size bytes written, and fields this library does not know come back zero. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "p99_v1.h"

/* Each v1 field still sits where v1 put it, with the same size: v1 is a prefix of today's
 * struct. Fails to compile if a field is inserted, reordered or resized. */
#define SAME_FIELD(v1, cur, f)                                                                  \
	_Static_assert(offsetof(v1, f) == offsetof(cur, f) &&                                      \
			       sizeof(((v1 *)0)->f) == sizeof(((cur *)0)->f),                      \
		       #cur "." #f " moved or changed size since v1")
#define NOT_SMALLER(v1, cur) _Static_assert(sizeof(v1) <= sizeof(cur), #cur " shrank below v1")

NOT_SMALLER(p99_v1_xdp_umem_config, p99_xdp_umem_config);
SAME_FIELD(p99_v1_xdp_umem_config, p99_xdp_umem_config, struct_size);
SAME_FIELD(p99_v1_xdp_umem_config, p99_xdp_umem_config, frame_size);
SAME_FIELD(p99_v1_xdp_umem_config, p99_xdp_umem_config, frame_count);
SAME_FIELD(p99_v1_xdp_umem_config, p99_xdp_umem_config, headroom);
SAME_FIELD(p99_v1_xdp_umem_config, p99_xdp_umem_config, fill_size);
SAME_FIELD(p99_v1_xdp_umem_config, p99_xdp_umem_config, comp_size);

NOT_SMALLER(p99_v1_xdp_frame_counts, p99_xdp_frame_counts);
SAME_FIELD(p99_v1_xdp_frame_counts, p99_xdp_frame_counts, struct_size);
SAME_FIELD(p99_v1_xdp_frame_counts, p99_xdp_frame_counts, free);
SAME_FIELD(p99_v1_xdp_frame_counts, p99_xdp_frame_counts, in_fill);
SAME_FIELD(p99_v1_xdp_frame_counts, p99_xdp_frame_counts, held);
SAME_FIELD(p99_v1_xdp_frame_counts, p99_xdp_frame_counts, in_tx);

NOT_SMALLER(p99_v1_xdp_socket_config, p99_xdp_socket_config);
SAME_FIELD(p99_v1_xdp_socket_config, p99_xdp_socket_config, struct_size);
SAME_FIELD(p99_v1_xdp_socket_config, p99_xdp_socket_config, rx_size);
SAME_FIELD(p99_v1_xdp_socket_config, p99_xdp_socket_config, tx_size);
SAME_FIELD(p99_v1_xdp_socket_config, p99_xdp_socket_config, bind_mode);
SAME_FIELD(p99_v1_xdp_socket_config, p99_xdp_socket_config, need_wakeup);
SAME_FIELD(p99_v1_xdp_socket_config, p99_xdp_socket_config, bind_retry_ms);

NOT_SMALLER(p99_v1_xdp_stats, p99_xdp_stats);
SAME_FIELD(p99_v1_xdp_stats, p99_xdp_stats, struct_size);
SAME_FIELD(p99_v1_xdp_stats, p99_xdp_stats, rx_dropped);
SAME_FIELD(p99_v1_xdp_stats, p99_xdp_stats, rx_packets);
SAME_FIELD(p99_v1_xdp_stats, p99_xdp_stats, tx_completed);
SAME_FIELD(p99_v1_xdp_stats, p99_xdp_stats, bind_retries);

/* A caller built against a newer header: the struct as this library knows it plus one more
 * field. */
#define GROWN(cur)                                                                              \
	struct {                                                                                \
		cur s;                                                                          \
		uint64_t newer_field;                                                           \
	}

/* A struct of the caller's size followed by a canary the library must not touch. */
#define GUARDED(t)                                                                              \
	struct {                                                                                \
		t s;                                                                            \
		uint64_t canary;                                                                \
	}
#define CANARY 0x5a5a5a5a5a5a5a5aull

static void test_xdp_defaults_fill_v1_and_grown_structs(void)
{
	GUARDED(p99_v1_xdp_umem_config) v1;
	memset(&v1, 0xab, sizeof v1);
	v1.s.struct_size = sizeof v1.s;
	v1.canary = CANARY;
	CHECK_OK(p99_xdp_umem_config_defaults((p99_xdp_umem_config *)&v1.s));
	CHECK_EQ(v1.s.struct_size, sizeof v1.s);
	CHECK_EQ(v1.s.frame_size, 4096);
	CHECK_EQ(v1.s.comp_size, 2048);
	CHECK(v1.canary == CANARY);

	GROWN(p99_xdp_umem_config) grown;
	memset(&grown, 0xff, sizeof grown);
	grown.s.struct_size = sizeof grown;
	CHECK_OK(p99_xdp_umem_config_defaults(&grown.s));
	CHECK_EQ(grown.s.struct_size, sizeof grown); /* left as the caller set it */
	CHECK_EQ(grown.s.frame_count, 4096);
	CHECK(grown.newer_field == 0); /* unknown to this library: zeroed */

	GUARDED(p99_v1_xdp_socket_config) sv1;
	memset(&sv1, 0xab, sizeof sv1);
	sv1.s.struct_size = sizeof sv1.s;
	sv1.canary = CANARY;
	CHECK_OK(p99_xdp_socket_config_defaults((p99_xdp_socket_config *)&sv1.s));
	CHECK_EQ(sv1.s.bind_mode, P99_XDP_BIND_COPY);
	CHECK_EQ(sv1.s.rx_size, 2048);
	CHECK(sv1.canary == CANARY);

	GROWN(p99_xdp_socket_config) sgrown;
	memset(&sgrown, 0xff, sizeof sgrown);
	sgrown.s.struct_size = sizeof sgrown;
	CHECK_OK(p99_xdp_socket_config_defaults(&sgrown.s));
	CHECK_EQ(sgrown.s.tx_size, 2048);
	CHECK(sgrown.newer_field == 0);

	/* Sizes below the first layout, or absurd ones, are refused and nothing is written. */
	p99_xdp_umem_config small;
	memset(&small, 0x11, sizeof small);
	small.struct_size = sizeof(p99_v1_xdp_umem_config) - 4;
	CHECK_STATUS(p99_xdp_umem_config_defaults(&small), P99_STATUS_INVALID_ARGUMENT);
	CHECK(strstr(p99_last_error_message(), "smaller than the first published") != NULL);
	CHECK_EQ(small.frame_size, 0x11111111);
	small.struct_size = 1u << 20;
	CHECK_STATUS(p99_xdp_umem_config_defaults(&small), P99_STATUS_INVALID_ARGUMENT);
	CHECK_EQ(small.frame_size, 0x11111111);
}

static void test_xdp_structs_in_and_out(void)
{
	if (geteuid() != 0) {
		printf("SKIP xdp umem/socket growth: not root (a umem needs CAP_NET_RAW)\n");
		return;
	}
	/* Caller-filled: a v1 config, then a grown one with a zero tail: both accepted. */
	p99_v1_xdp_umem_config v1 = {.struct_size = sizeof v1};
	CHECK_OK(p99_xdp_umem_config_defaults((p99_xdp_umem_config *)&v1));
	v1.frame_count = 64, v1.fill_size = 32, v1.comp_size = 32;
	p99_xdp_umem *u = NULL;
	CHECK_OK(p99_xdp_umem_create((const p99_xdp_umem_config *)&v1, &u));
	if (!u)
		return;

	GROWN(p99_xdp_umem_config) grown;
	memset(&grown, 0, sizeof grown);
	grown.s.struct_size = sizeof grown;
	CHECK_OK(p99_xdp_umem_config_defaults(&grown.s));
	grown.s.frame_count = 64, grown.s.fill_size = 32, grown.s.comp_size = 32;
	p99_xdp_umem *u2 = NULL;
	CHECK_OK(p99_xdp_umem_create(&grown.s, &u2));
	CHECK_OK(p99_xdp_umem_free(u2));

	/* A newer field set to something this library cannot honour: refused, nothing made. */
	grown.newer_field = 1;
	u2 = NULL;
	CHECK_STATUS(p99_xdp_umem_create(&grown.s, &u2), P99_STATUS_INVALID_ARGUMENT);
	CHECK(strstr(p99_last_error_message(), "is not zero") != NULL);
	CHECK(u2 == NULL);

	/* Library-filled: at most struct_size bytes written; unknown fields zeroed. */
	GUARDED(p99_v1_xdp_frame_counts) fc;
	memset(&fc, 0xab, sizeof fc);
	fc.s.struct_size = sizeof fc.s;
	fc.canary = CANARY;
	CHECK_OK(p99_xdp_umem_frame_counts(u, (p99_xdp_frame_counts *)&fc.s));
	CHECK_EQ(fc.s.struct_size, sizeof fc.s);
	CHECK_EQ(fc.s.free + fc.s.in_fill + fc.s.held + fc.s.in_tx, 64);
	CHECK_EQ(fc.s.free, 64);
	CHECK(fc.canary == CANARY);
	GROWN(p99_xdp_frame_counts) gfc;
	memset(&gfc, 0xff, sizeof gfc);
	gfc.s.struct_size = sizeof gfc;
	CHECK_OK(p99_xdp_umem_frame_counts(u, &gfc.s));
	CHECK_EQ(gfc.s.free, 64);
	CHECK(gfc.newer_field == 0);

	/* The socket config is read before the bind: an unknown bind mode is reported by name
	 * when the struct was accepted, a non-zero tail when it was not. */
	GUARDED(p99_v1_xdp_socket_config) sv1;
	memset(&sv1, 0, sizeof sv1);
	sv1.s.struct_size = sizeof sv1.s;
	CHECK_OK(p99_xdp_socket_config_defaults((p99_xdp_socket_config *)&sv1.s));
	sv1.s.bind_mode = 7;
	sv1.canary = CANARY; /* beyond the caller's struct: never read */
	p99_xdp_socket *sock = NULL;
	CHECK_STATUS(p99_xdp_socket_create(u, "lo", 0, (const p99_xdp_socket_config *)&sv1.s, &sock),
		     P99_STATUS_INVALID_ARGUMENT);
	CHECK(strstr(p99_last_error_message(), "bind_mode") != NULL);
	GROWN(p99_xdp_socket_config) sgrown;
	memset(&sgrown, 0, sizeof sgrown);
	sgrown.s.struct_size = sizeof sgrown;
	CHECK_OK(p99_xdp_socket_config_defaults(&sgrown.s));
	sgrown.s.bind_mode = 7;
	CHECK_STATUS(p99_xdp_socket_create(u, "lo", 0, &sgrown.s, &sock), P99_STATUS_INVALID_ARGUMENT);
	CHECK(strstr(p99_last_error_message(), "bind_mode") != NULL);
	sgrown.newer_field = 3;
	CHECK_STATUS(p99_xdp_socket_create(u, "lo", 0, &sgrown.s, &sock), P99_STATUS_INVALID_ARGUMENT);
	CHECK(strstr(p99_last_error_message(), "is not zero") != NULL);
	CHECK(sock == NULL);
	CHECK_OK(p99_xdp_umem_free(u));
}

int main(void)
{
	test_xdp_defaults_fill_v1_and_grown_structs();
	test_xdp_structs_in_and_out();
	return check_done("growth");
}
