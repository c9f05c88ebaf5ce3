/*
 * stat.h - one "STAT name value" figure in memcached's format, for every module that reports
 * figures through a name/value callback (storage.h's storage_stat_fn has this shape).
 */
#ifndef MCSERVER_STAT_H
#define MCSERVER_STAT_H

#include <inttypes.h>
#include <stdio.h>

typedef void (*stat_emit_fn)(void *ctx, const char *name, const char *value);

/* Emits an unsigned figure in decimal. */
static inline void stat_u64(stat_emit_fn emit, void *ctx, const char *name, uint64_t v)
{
	char buf[24];
	snprintf(buf, sizeof(buf), "%" PRIu64, v);
	emit(ctx, name, buf);
}

#endif
