#define _GNU_SOURCE
#include "check.h"

#include <stdatomic.h>
#include <time.h>

int check_failures;

void check_fail(const char *file, int line, const char *what)
{
	fprintf(stderr, "%s:%d: check failed: %s\n", file, line, what);
	check_failures++;
}

void check_fail_status(const char *file, int line, const char *expr, uint32_t got, uint32_t want)
{
	fprintf(stderr, "%s:%d: %s returned %u (%s), expected %u (%s)\n", file, line, expr, got,
		p99_status_str(got), want, p99_status_str(want));
	check_failures++;
}

void check_fail_int(const char *file, int line, const char *expr, long long got, long long want)
{
	fprintf(stderr, "%s:%d: check failed: %s (%lld != %lld)\n", file, line, expr, got, want);
	check_failures++;
}

void check_sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

int check_wait_for(_Atomic int *v, int want)
{
	for (int i = 0; i < 1000; i++) {
		if (atomic_load(v) >= want)
			return 1;
		check_sleep_ms(5);
	}
	return 0;
}

int check_done(const char *test_name)
{
	if (check_failures) {
		fprintf(stderr, "%s: %d check(s) FAILED\n", test_name, check_failures);
		return 1;
	}
	printf("%s: all checks passed\n", test_name);
	return 0;
}
