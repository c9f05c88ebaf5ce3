/* Minimal assertion helpers for the C tests: each failure names the file, line and both sides,
 * and makes the test exit non-zero. */
#ifndef P99_CHECK_H
#define P99_CHECK_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <p99.h>

extern int check_failures;

void check_fail(const char *file, int line, const char *what);
void check_fail_status(const char *file, int line, const char *expr, uint32_t got, uint32_t want);
void check_fail_int(const char *file, int line, const char *expr, long long got, long long want);
/* Sleeps `ms` milliseconds. */
void check_sleep_ms(int ms);
/* Polls `*v` (set by another thread) until it reaches `want`: 1 when it did within 5 s. */
int check_wait_for(_Atomic int *v, int want);
/* Prints a summary and returns the process exit code (0 when every check passed). */
int check_done(const char *test_name);

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond))                                                                       \
			check_fail(__FILE__, __LINE__, #cond);                                     \
	} while (0)

/* CHECK_STATUS(call, P99_STATUS_X): the call must return exactly that status. */
#define CHECK_STATUS(call, want)                                                                   \
	do {                                                                                       \
		uint32_t got_ = (uint32_t)(call);                                                  \
		if (got_ != (uint32_t)(want))                                                      \
			check_fail_status(__FILE__, __LINE__, #call, got_, (uint32_t)(want));      \
	} while (0)

#define CHECK_OK(call) CHECK_STATUS(call, P99_STATUS_OK)

#define CHECK_EQ(a, b)                                                                             \
	do {                                                                                       \
		long long a_ = (long long)(a), b_ = (long long)(b);                                \
		if (a_ != b_)                                                                      \
			check_fail_int(__FILE__, __LINE__, #a " == " #b, a_, b_);                  \
	} while (0)

#endif
