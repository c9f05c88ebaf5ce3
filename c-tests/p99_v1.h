/* Frozen copies of the growable structs as libp99 0.2.0 first published them ("v1"), under
 * other names. A caller compiled against this header must keep working with every later
 * libp99 0.x/1.x whose soname it links: the library accepts a struct from its first published
 * size up and writes no more than the caller's struct_size. Never edit these layouts; a
 * library version that grows a struct appends fields to p99.h only. test_growth.c checks at
 * compile time that each one is still a prefix of the current struct. */
#ifndef P99_V1_H
#define P99_V1_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <p99.h>

typedef struct p99_v1_cache_config {
	uint32_t struct_size;
	uint32_t segment_bytes;
	uint64_t heap_bytes;
	uint64_t expected_items;
	uint32_t item_max;
	bool cas;
	bool manual_clock;
	uint32_t eviction;
	uint32_t shards;
	uint32_t manual_clock_start;
} p99_v1_cache_config;

typedef struct p99_v1_cache_stats {
	uint32_t struct_size;
	uint32_t shards;
	uint64_t items, item_bytes, key_value_bytes, total_bytes, segment_bytes_allocated;
	uint64_t hash_bytes, heap_limit_bytes, hits, misses, sets, deletes, touches, evictions;
	uint64_t evicted_items, merged_items, expirations, expired_segments, flushes;
	uint64_t segments_total, segments_used, segments_free, segments_retired, pinned;
	uint64_t table_grows;
} p99_v1_cache_stats;

typedef struct p99_v1_cache_value_info {
	uint32_t struct_size;
	uint32_t flags;
	size_t value_len;
	uint64_t cas;
	uint32_t expiry;
} p99_v1_cache_value_info;

typedef struct p99_v1_engine_config {
	uint32_t struct_size;
	const char *addr;
	uint16_t port;
	uint32_t workers;
	bool pin_workers;
	bool tcp_nodelay;
	uint32_t max_conns_per_worker;
	uint32_t rx_buf_size;
	uint32_t rx_buf_count;
	uint32_t sq_entries;
	uint64_t out_high_water;
	uint32_t close_linger_ms;
	int32_t backlog;
} p99_v1_engine_config;

typedef struct p99_v1_engine_callbacks {
	uint32_t struct_size;
	void *user;
	void (*on_worker_start)(void *user, struct p99_worker *worker);
	bool (*on_accept)(void *user, struct p99_worker *worker, p99_conn conn);
	void (*on_data)(void *user, struct p99_worker *worker, p99_conn conn, const uint8_t *data,
			size_t len);
	void (*on_send_done)(void *user, struct p99_worker *worker, p99_conn conn, uint64_t cookie,
			     bool sent);
	void (*on_close)(void *user, struct p99_worker *worker, p99_conn conn);
	void (*on_worker_stop)(void *user, struct p99_worker *worker);
} p99_v1_engine_callbacks;

typedef struct p99_v1_worker_stats {
	uint32_t struct_size;
	uint64_t accepted, open, rejected, bytes_in, bytes_out, submissions, enters, completions;
	uint64_t bufring_empty;
} p99_v1_worker_stats;

typedef struct p99_v1_xdp_umem_config {
	uint32_t struct_size;
	uint32_t frame_size;
	uint32_t frame_count;
	uint32_t headroom;
	uint32_t fill_size;
	uint32_t comp_size;
} p99_v1_xdp_umem_config;

typedef struct p99_v1_xdp_frame_counts {
	uint32_t struct_size;
	uint32_t free, in_fill, held, in_tx;
} p99_v1_xdp_frame_counts;

typedef struct p99_v1_xdp_socket_config {
	uint32_t struct_size;
	uint32_t rx_size;
	uint32_t tx_size;
	uint32_t bind_mode;
	uint32_t need_wakeup;
	uint32_t bind_retry_ms;
} p99_v1_xdp_socket_config;

typedef struct p99_v1_xdp_stats {
	uint32_t struct_size;
	uint64_t rx_dropped, rx_invalid_descs, tx_invalid_descs, rx_ring_full;
	uint64_t rx_fill_ring_empty_descs, tx_ring_empty_descs, rx_packets, tx_queued;
	uint64_t tx_completed, tx_kernel_dropped, rejected_descs, tx_kicks, fill_wakeups;
	uint64_t bind_retries;
} p99_v1_xdp_stats;

#endif
