/*
 * Gives every storage.h function (and the harness entry point) a per-variant prefix, so the C
 * slab store and the libp99 adapter, which implement the same process-wide API, can live in one
 * benchmark binary. Force-included (-include) before any other header, with STOREBENCH_PREFIX
 * set to the variant's name.
 */
#ifndef STOREBENCH_RENAME_H
#define STOREBENCH_RENAME_H

#ifndef STOREBENCH_PREFIX
#error "STOREBENCH_PREFIX must name the variant"
#endif

#define STOREBENCH_CAT2(p, n) p##_##n
#define STOREBENCH_CAT(p, n) STOREBENCH_CAT2(p, n)

#define storage_setup STOREBENCH_CAT(STOREBENCH_PREFIX, storage_setup)
#define storage_teardown STOREBENCH_CAT(STOREBENCH_PREFIX, storage_teardown)
#define storage_name STOREBENCH_CAT(STOREBENCH_PREFIX, storage_name)
#define storage_item_max_limit STOREBENCH_CAT(STOREBENCH_PREFIX, storage_item_max_limit)
#define storage_reserve STOREBENCH_CAT(STOREBENCH_PREFIX, storage_reserve)
#define storage_fill STOREBENCH_CAT(STOREBENCH_PREFIX, storage_fill)
#define storage_commit STOREBENCH_CAT(STOREBENCH_PREFIX, storage_commit)
#define storage_cancel STOREBENCH_CAT(STOREBENCH_PREFIX, storage_cancel)
#define storage_store STOREBENCH_CAT(STOREBENCH_PREFIX, storage_store)
#define storage_get STOREBENCH_CAT(STOREBENCH_PREFIX, storage_get)
#define storage_gat STOREBENCH_CAT(STOREBENCH_PREFIX, storage_gat)
#define storage_get_copy STOREBENCH_CAT(STOREBENCH_PREFIX, storage_get_copy)
#define storage_release STOREBENCH_CAT(STOREBENCH_PREFIX, storage_release)
#define storage_delete STOREBENCH_CAT(STOREBENCH_PREFIX, storage_delete)
#define storage_touch STOREBENCH_CAT(STOREBENCH_PREFIX, storage_touch)
#define storage_incr STOREBENCH_CAT(STOREBENCH_PREFIX, storage_incr)
#define storage_flush STOREBENCH_CAT(STOREBENCH_PREFIX, storage_flush)
#define storage_ttl_left STOREBENCH_CAT(STOREBENCH_PREFIX, storage_ttl_left)
#define storage_stats STOREBENCH_CAT(STOREBENCH_PREFIX, storage_stats)
#define storage_mget STOREBENCH_CAT(STOREBENCH_PREFIX, storage_mget)
#define storage_mdelete STOREBENCH_CAT(STOREBENCH_PREFIX, storage_mdelete)
#define storage_set_key_binary STOREBENCH_CAT(STOREBENCH_PREFIX, storage_set_key_binary)
#define storage_stats_items STOREBENCH_CAT(STOREBENCH_PREFIX, storage_stats_items)
#define storage_stats_slabs STOREBENCH_CAT(STOREBENCH_PREFIX, storage_stats_slabs)
#define harness_run STOREBENCH_CAT(STOREBENCH_PREFIX, harness_run)
#define harness_line_transfer_ns STOREBENCH_CAT(STOREBENCH_PREFIX, harness_line_transfer_ns)

#endif
