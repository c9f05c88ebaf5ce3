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
#define SAME_FIELD(v1, cur, f)                                                                     \
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

NOT_SMALLER(p99_v1_cache_config, p99_cache_config);
SAME_FIELD(p99_v1_cache_config, p99_cache_config, struct_size);
SAME_FIELD(p99_v1_cache_config, p99_cache_config, segment_bytes);
SAME_FIELD(p99_v1_cache_config, p99_cache_config, heap_bytes);
SAME_FIELD(p99_v1_cache_config, p99_cache_config, expected_items);
SAME_FIELD(p99_v1_cache_config, p99_cache_config, item_max);
SAME_FIELD(p99_v1_cache_config, p99_cache_config, cas);
SAME_FIELD(p99_v1_cache_config, p99_cache_config, manual_clock);
SAME_FIELD(p99_v1_cache_config, p99_cache_config, eviction);
SAME_FIELD(p99_v1_cache_config, p99_cache_config, shards);
SAME_FIELD(p99_v1_cache_config, p99_cache_config, manual_clock_start);

NOT_SMALLER(p99_v1_cache_stats, p99_cache_stats);
SAME_FIELD(p99_v1_cache_stats, p99_cache_stats, struct_size);
SAME_FIELD(p99_v1_cache_stats, p99_cache_stats, shards);
SAME_FIELD(p99_v1_cache_stats, p99_cache_stats, items);
SAME_FIELD(p99_v1_cache_stats, p99_cache_stats, hits);
SAME_FIELD(p99_v1_cache_stats, p99_cache_stats, sets);
SAME_FIELD(p99_v1_cache_stats, p99_cache_stats, pinned);
SAME_FIELD(p99_v1_cache_stats, p99_cache_stats, table_grows);

NOT_SMALLER(p99_v1_cache_value_info, p99_cache_value_info);
SAME_FIELD(p99_v1_cache_value_info, p99_cache_value_info, struct_size);
SAME_FIELD(p99_v1_cache_value_info, p99_cache_value_info, flags);
SAME_FIELD(p99_v1_cache_value_info, p99_cache_value_info, value_len);
SAME_FIELD(p99_v1_cache_value_info, p99_cache_value_info, cas);
SAME_FIELD(p99_v1_cache_value_info, p99_cache_value_info, expiry);

NOT_SMALLER(p99_v1_engine_config, p99_engine_config);
SAME_FIELD(p99_v1_engine_config, p99_engine_config, struct_size);
SAME_FIELD(p99_v1_engine_config, p99_engine_config, addr);
SAME_FIELD(p99_v1_engine_config, p99_engine_config, port);
SAME_FIELD(p99_v1_engine_config, p99_engine_config, workers);
SAME_FIELD(p99_v1_engine_config, p99_engine_config, pin_workers);
SAME_FIELD(p99_v1_engine_config, p99_engine_config, tcp_nodelay);
SAME_FIELD(p99_v1_engine_config, p99_engine_config, max_conns_per_worker);
SAME_FIELD(p99_v1_engine_config, p99_engine_config, rx_buf_size);
SAME_FIELD(p99_v1_engine_config, p99_engine_config, rx_buf_count);
SAME_FIELD(p99_v1_engine_config, p99_engine_config, sq_entries);
SAME_FIELD(p99_v1_engine_config, p99_engine_config, out_high_water);
SAME_FIELD(p99_v1_engine_config, p99_engine_config, close_linger_ms);
SAME_FIELD(p99_v1_engine_config, p99_engine_config, backlog);

NOT_SMALLER(p99_v1_engine_callbacks, p99_engine_callbacks);
SAME_FIELD(p99_v1_engine_callbacks, p99_engine_callbacks, struct_size);
SAME_FIELD(p99_v1_engine_callbacks, p99_engine_callbacks, user);
SAME_FIELD(p99_v1_engine_callbacks, p99_engine_callbacks, on_worker_start);
SAME_FIELD(p99_v1_engine_callbacks, p99_engine_callbacks, on_accept);
SAME_FIELD(p99_v1_engine_callbacks, p99_engine_callbacks, on_data);
SAME_FIELD(p99_v1_engine_callbacks, p99_engine_callbacks, on_send_done);
SAME_FIELD(p99_v1_engine_callbacks, p99_engine_callbacks, on_close);
SAME_FIELD(p99_v1_engine_callbacks, p99_engine_callbacks, on_worker_stop);

NOT_SMALLER(p99_v1_worker_stats, p99_worker_stats);
SAME_FIELD(p99_v1_worker_stats, p99_worker_stats, struct_size);
SAME_FIELD(p99_v1_worker_stats, p99_worker_stats, accepted);
SAME_FIELD(p99_v1_worker_stats, p99_worker_stats, bytes_in);
SAME_FIELD(p99_v1_worker_stats, p99_worker_stats, bufring_empty);

/* Room for a caller's struct of any size used here, plus what follows it. */
struct caller_buf {
	union {
		uint64_t align;
		unsigned char bytes[512];
	} u;
};
#define CANARY 0x5a5a5a5a5a5a5a5aull
/* One more field than this library knows: a caller built against a newer header. */
#define NEWER_FIELD 8

/* Lays out a caller's struct of `size` bytes in `b`: `garbage` everywhere, struct_size set, and
 * a canary right after the struct that the library must neither read nor write. */
static void *as_caller(struct caller_buf *b, size_t size, unsigned char garbage)
{
	uint32_t s = (uint32_t)size;
	uint64_t canary = CANARY;
	memset(b, garbage, sizeof *b);
	memcpy(b->u.bytes, &s, sizeof s);
	memcpy(b->u.bytes + size, &canary, sizeof canary);
	return b->u.bytes;
}

/* Nothing past the caller's `size` bytes was written. */
static int untouched_after(const struct caller_buf *b, size_t size)
{
	uint64_t canary;
	memcpy(&canary, b->u.bytes + size, sizeof canary);
	return canary == CANARY;
}

/* The bytes [from, to) are zero: fields this library does not know. */
static int zero_between(const struct caller_buf *b, size_t from, size_t to)
{
	for (size_t i = from; i < to; i++)
		if (b->u.bytes[i] != 0)
			return 0;
	return 1;
}

/* Sets the field after this library's struct (a newer caller's extra field). */
static void set_newer_field(struct caller_buf *b, size_t ours, uint64_t v)
{
	memcpy(b->u.bytes + ours, &v, sizeof v);
}

static void test_xdp_defaults_fill_v1_and_grown_structs(void)
{
	struct caller_buf b;
	p99_v1_xdp_umem_config *v1 = as_caller(&b, sizeof *v1, 0xab);
	CHECK_OK(p99_xdp_umem_config_defaults((p99_xdp_umem_config *)v1));
	CHECK_EQ(v1->struct_size, sizeof *v1);
	CHECK_EQ(v1->frame_size, 4096);
	CHECK_EQ(v1->comp_size, 2048);
	CHECK(untouched_after(&b, sizeof *v1));

	const size_t gsize = sizeof(p99_xdp_umem_config) + NEWER_FIELD;
	p99_xdp_umem_config *g = as_caller(&b, gsize, 0xff);
	CHECK_OK(p99_xdp_umem_config_defaults(g));
	CHECK_EQ(g->struct_size, gsize); /* left as the caller set it */
	CHECK_EQ(g->frame_count, 4096);
	CHECK(zero_between(&b, sizeof *g, gsize)); /* unknown to this library: zeroed */
	CHECK(untouched_after(&b, gsize));

	p99_v1_xdp_socket_config *sv1 = as_caller(&b, sizeof *sv1, 0xab);
	CHECK_OK(p99_xdp_socket_config_defaults((p99_xdp_socket_config *)sv1));
	CHECK_EQ(sv1->bind_mode, P99_XDP_BIND_COPY);
	CHECK_EQ(sv1->rx_size, 2048);
	CHECK(untouched_after(&b, sizeof *sv1));

	const size_t sgsize = sizeof(p99_xdp_socket_config) + NEWER_FIELD;
	p99_xdp_socket_config *sg = as_caller(&b, sgsize, 0xff);
	CHECK_OK(p99_xdp_socket_config_defaults(sg));
	CHECK_EQ(sg->tx_size, 2048);
	CHECK(zero_between(&b, sizeof *sg, sgsize));

	/* Sizes below the first layout, or absurd ones, are refused and nothing is written. */
	p99_xdp_umem_config *small = as_caller(&b, sizeof(p99_v1_xdp_umem_config) - 4, 0x11);
	CHECK_STATUS(p99_xdp_umem_config_defaults(small), P99_STATUS_INVALID_ARGUMENT);
	CHECK(strstr(p99_last_error_message(), "smaller than the first published") != NULL);
	CHECK_EQ(small->frame_size, 0x11111111);
	small->struct_size = 1u << 20;
	CHECK_STATUS(p99_xdp_umem_config_defaults(small), P99_STATUS_INVALID_ARGUMENT);
	CHECK_EQ(small->frame_size, 0x11111111);
}

static void test_xdp_structs_in_and_out(void)
{
	if (geteuid() != 0) {
		printf("SKIP xdp umem/socket growth: not root (a umem needs CAP_NET_RAW)\n");
		return;
	}
	/* Caller-filled: a v1 config, then a grown one with a zero tail: both accepted. */
	struct caller_buf b;
	p99_v1_xdp_umem_config *v1 = as_caller(&b, sizeof *v1, 0xab);
	CHECK_OK(p99_xdp_umem_config_defaults((p99_xdp_umem_config *)v1));
	v1->frame_count = 64, v1->fill_size = 32, v1->comp_size = 32;
	p99_xdp_umem *u = NULL;
	CHECK_OK(p99_xdp_umem_create((const p99_xdp_umem_config *)v1, &u));
	if (!u)
		return;

	const size_t gsize = sizeof(p99_xdp_umem_config) + NEWER_FIELD;
	p99_xdp_umem_config *g = as_caller(&b, gsize, 0xff);
	CHECK_OK(p99_xdp_umem_config_defaults(g));
	g->frame_count = 64, g->fill_size = 32, g->comp_size = 32;
	p99_xdp_umem *u2 = NULL;
	CHECK_OK(p99_xdp_umem_create(g, &u2));
	CHECK_OK(p99_xdp_umem_free(u2));
	/* A newer field set to something this library cannot honour: refused, nothing made. */
	set_newer_field(&b, sizeof *g, 1);
	u2 = NULL;
	CHECK_STATUS(p99_xdp_umem_create(g, &u2), P99_STATUS_INVALID_ARGUMENT);
	CHECK(strstr(p99_last_error_message(), "is not zero") != NULL);
	CHECK(u2 == NULL);

	/* Library-filled: at most struct_size bytes written; unknown fields zeroed. */
	p99_v1_xdp_frame_counts *fc = as_caller(&b, sizeof *fc, 0xab);
	CHECK_OK(p99_xdp_umem_frame_counts(u, (p99_xdp_frame_counts *)fc));
	CHECK_EQ(fc->struct_size, sizeof *fc);
	CHECK_EQ(fc->free, 64);
	CHECK_EQ(fc->free + fc->in_fill + fc->held + fc->in_tx, 64);
	CHECK(untouched_after(&b, sizeof *fc));
	const size_t fcsize = sizeof(p99_xdp_frame_counts) + NEWER_FIELD;
	p99_xdp_frame_counts *gfc = as_caller(&b, fcsize, 0xff);
	CHECK_OK(p99_xdp_umem_frame_counts(u, gfc));
	CHECK_EQ(gfc->free, 64);
	CHECK(zero_between(&b, sizeof *gfc, fcsize));
	CHECK(untouched_after(&b, fcsize));

	/* The socket config is read before the bind: an unknown bind mode is reported by name
	 * when the struct was accepted, a non-zero tail when it was not. */
	p99_v1_xdp_socket_config *sv1 = as_caller(&b, sizeof *sv1, 0);
	CHECK_OK(p99_xdp_socket_config_defaults((p99_xdp_socket_config *)sv1));
	sv1->bind_mode = 7;
	p99_xdp_socket *sock = NULL;
	CHECK_STATUS(p99_xdp_socket_create(u, "lo", 0, (const p99_xdp_socket_config *)sv1, &sock),
		     P99_STATUS_INVALID_ARGUMENT);
	CHECK(strstr(p99_last_error_message(), "bind_mode") != NULL);
	const size_t sgsize = sizeof(p99_xdp_socket_config) + NEWER_FIELD;
	p99_xdp_socket_config *sg = as_caller(&b, sgsize, 0);
	CHECK_OK(p99_xdp_socket_config_defaults(sg));
	sg->bind_mode = 7;
	CHECK_STATUS(p99_xdp_socket_create(u, "lo", 0, sg, &sock), P99_STATUS_INVALID_ARGUMENT);
	CHECK(strstr(p99_last_error_message(), "bind_mode") != NULL);
	set_newer_field(&b, sizeof *sg, 3);
	CHECK_STATUS(p99_xdp_socket_create(u, "lo", 0, sg, &sock), P99_STATUS_INVALID_ARGUMENT);
	CHECK(strstr(p99_last_error_message(), "is not zero") != NULL);
	CHECK(sock == NULL);
	CHECK_OK(p99_xdp_umem_free(u));
}

static void test_cache_structs(void)
{
	/* Defaults into a v1 struct, and a cache made from it. */
	struct caller_buf b;
	p99_v1_cache_config *v1 = as_caller(&b, sizeof *v1, 0xab);
	CHECK_OK(p99_cache_config_defaults((p99_cache_config *)v1));
	CHECK(untouched_after(&b, sizeof *v1));
	CHECK_EQ(v1->heap_bytes, 64u << 20);
	v1->heap_bytes = 4u << 20;
	v1->shards = 1;
	p99_cache *c = NULL;
	CHECK_OK(p99_cache_new((const p99_cache_config *)v1, &c));
	if (!c)
		return;

	/* A v1 stats struct gets v1's bytes only; a grown one gets its unknown field zeroed. */
	CHECK_OK(p99_cache_store(c, (const uint8_t *)"k", 1, (const uint8_t *)"v", 1, 0, 0,
				 P99_CACHE_MODE_SET, 0, NULL));
	struct caller_buf sb;
	p99_v1_cache_stats *st = as_caller(&sb, sizeof *st, 0xab);
	CHECK_OK(p99_cache_get_stats(c, (p99_cache_stats *)st));
	CHECK_EQ(st->struct_size, sizeof *st);
	CHECK_EQ(st->items, 1);
	CHECK_EQ(st->sets, 1);
	CHECK_EQ(st->shards, 1);
	CHECK(untouched_after(&sb, sizeof *st));
	const size_t gssize = sizeof(p99_cache_stats) + NEWER_FIELD;
	p99_cache_stats *gst = as_caller(&sb, gssize, 0xff);
	CHECK_OK(p99_cache_get_stats(c, gst));
	CHECK_EQ(gst->items, 1);
	CHECK(zero_between(&sb, sizeof *gst, gssize));
	CHECK(untouched_after(&sb, gssize));

	/* The same for the copy-out read's value info, on OK and on BUFFER_TOO_SMALL. */
	char buf[8];
	p99_v1_cache_value_info *vi = as_caller(&sb, sizeof *vi, 0xab);
	CHECK_OK(p99_cache_get_copy(c, (const uint8_t *)"k", 1, (uint8_t *)buf, sizeof buf,
				    (p99_cache_value_info *)vi));
	CHECK_EQ(vi->struct_size, sizeof *vi);
	CHECK_EQ(vi->value_len, 1);
	CHECK(untouched_after(&sb, sizeof *vi));
	const size_t gvsize = sizeof(p99_cache_value_info) + NEWER_FIELD;
	p99_cache_value_info *gvi = as_caller(&sb, gvsize, 0xff);
	CHECK_STATUS(p99_cache_get_copy(c, (const uint8_t *)"k", 1, NULL, 0, gvi),
		     P99_STATUS_BUFFER_TOO_SMALL);
	CHECK_EQ(gvi->value_len, 1);
	CHECK(zero_between(&sb, sizeof *gvi, gvsize));
	CHECK(untouched_after(&sb, gvsize));
	CHECK_OK(p99_cache_free(c));

	/* A grown config: accepted with a zero tail, refused with a non-zero one. */
	const size_t gsize = sizeof(p99_cache_config) + NEWER_FIELD;
	p99_cache_config *g = as_caller(&b, gsize, 0xff);
	CHECK_OK(p99_cache_config_defaults(g));
	CHECK(zero_between(&b, sizeof *g, gsize));
	g->heap_bytes = 4u << 20;
	c = NULL;
	CHECK_OK(p99_cache_new(g, &c));
	CHECK_OK(p99_cache_free(c));
	set_newer_field(&b, sizeof *g, 42);
	c = NULL;
	CHECK_STATUS(p99_cache_new(g, &c), P99_STATUS_INVALID_ARGUMENT);
	CHECK(strstr(p99_last_error_message(), "is not zero") != NULL);
	CHECK(c == NULL);
}

static void on_data(void *user, struct p99_worker *w, p99_conn conn, const uint8_t *data,
		    size_t len)
{
	(void)user, (void)w, (void)conn, (void)data, (void)len;
}

/* Starts an engine from the caller's structs, reads worker stats into a v1 and a grown
 * struct, and stops it. */
static void start_stop(const p99_engine_config *cfg, const p99_engine_callbacks *cb)
{
	p99_engine *e = NULL;
	CHECK_OK(p99_engine_start(cfg, cb, &e));
	if (!e)
		return;
	struct caller_buf b;
	p99_v1_worker_stats *st = as_caller(&b, sizeof *st, 0xab);
	CHECK_OK(p99_engine_stats(e, 0, (p99_worker_stats *)st));
	CHECK_EQ(st->accepted, 0);
	CHECK_EQ(st->open, 0);
	CHECK(untouched_after(&b, sizeof *st));
	const size_t gsize = sizeof(p99_worker_stats) + NEWER_FIELD;
	p99_worker_stats *g = as_caller(&b, gsize, 0xff);
	CHECK_OK(p99_engine_stats(e, 0, g));
	CHECK_EQ(g->rejected, 0);
	CHECK(zero_between(&b, sizeof *g, gsize));
	CHECK(untouched_after(&b, gsize));
	CHECK_OK(p99_engine_stop(e, 0));
	CHECK_OK(p99_engine_free(e));
}

static void test_engine_structs(void)
{
	struct caller_buf cb_, cbb;
	p99_v1_engine_config *v1 = as_caller(&cb_, sizeof *v1, 0xab);
	CHECK_OK(p99_engine_config_defaults((p99_engine_config *)v1));
	CHECK(untouched_after(&cb_, sizeof *v1));
	CHECK(v1->addr == NULL);
	v1->workers = 1;
	v1->pin_workers = false;
	p99_v1_engine_callbacks *cb1 = as_caller(&cbb, sizeof *cb1, 0xab);
	CHECK_OK(p99_engine_callbacks_defaults((p99_engine_callbacks *)cb1));
	CHECK(untouched_after(&cbb, sizeof *cb1));
	CHECK(cb1->on_accept == NULL && cb1->user == NULL);
	cb1->on_data = on_data;
	/* Exactly v1's bytes on the heap: under ASan a read past them would fail the test. */
	p99_v1_engine_config *hv1 = malloc(sizeof *hv1);
	p99_v1_engine_callbacks *hcb1 = malloc(sizeof *hcb1);
	if (!hv1 || !hcb1)
		abort();
	memcpy(hv1, v1, sizeof *hv1);
	memcpy(hcb1, cb1, sizeof *hcb1);
	start_stop((const p99_engine_config *)hv1, (const p99_engine_callbacks *)hcb1);
	free(hv1);
	free(hcb1);

	const size_t gsize = sizeof(p99_engine_config) + NEWER_FIELD;
	p99_engine_config *g = as_caller(&cb_, gsize, 0xff);
	CHECK_OK(p99_engine_config_defaults(g));
	CHECK(zero_between(&cb_, sizeof *g, gsize));
	g->workers = 1;
	g->pin_workers = false;
	const size_t gcbsize = sizeof(p99_engine_callbacks) + NEWER_FIELD;
	p99_engine_callbacks *gcb = as_caller(&cbb, gcbsize, 0xff);
	CHECK_OK(p99_engine_callbacks_defaults(gcb));
	CHECK(zero_between(&cbb, sizeof *gcb, gcbsize));
	gcb->on_data = on_data;
	start_stop(g, gcb);

	p99_engine *e = NULL;
	set_newer_field(&cb_, sizeof *g, 1);
	CHECK_STATUS(p99_engine_start(g, gcb, &e), P99_STATUS_INVALID_ARGUMENT);
	CHECK(strstr(p99_last_error_message(), "p99_engine_config") != NULL);
	set_newer_field(&cb_, sizeof *g, 0);
	set_newer_field(&cbb, sizeof *gcb, 1); /* e.g. a callback this library does not know */
	CHECK_STATUS(p99_engine_start(g, gcb, &e), P99_STATUS_INVALID_ARGUMENT);
	CHECK(strstr(p99_last_error_message(), "p99_engine_callbacks") != NULL);
	CHECK(e == NULL);
}

int main(void)
{
	test_xdp_defaults_fill_v1_and_grown_structs();
	test_xdp_structs_in_and_out();
	test_cache_structs();
	test_engine_structs();
	return check_done("growth");
}
