#include "check.h"

int check_failures;

void check_fail(const char *file, int line, const char *what)
{
	fprintf(stderr, "%s:%d: check failed: %s\n", file, line, what);
	check_failures++;
}

void check_fail_status(const char *file, int line, const char *expr, uint32_t got, uint32_t want)
{
	fprintf(stderr, "%s:%d: %s returned %u (%s), expected %u (%s)\n", file, line, expr,
		got, p99_status_str(got), want, p99_status_str(want));
	check_failures++;
}

void check_fail_int(const char *file, int line, const char *expr, long long got, long long want)
{
	fprintf(stderr, "%s:%d: check failed: %s (%lld != %lld)\n", file, line, expr, got, want);
	check_failures++;
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
