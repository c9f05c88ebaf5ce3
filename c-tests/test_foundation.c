/* The shared C ABI machinery: status codes and their texts, version macros against the
 * run-time version, the thread-local errno, and that the sanitizers are really linked when the
 * build says so. */
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

static void test_status_values_are_fixed(void)
{
	/* The numeric values are ABI: they must never change. */
	CHECK_EQ(P99_STATUS_OK, 0);
	CHECK_EQ(P99_STATUS_NULL_PARAMETER, 1);
	CHECK_EQ(P99_STATUS_INVALID_ARGUMENT, 2);
	CHECK_EQ(P99_STATUS_OUT_OF_MEMORY, 3);
	CHECK_EQ(P99_STATUS_TOO_LARGE, 4);
	CHECK_EQ(P99_STATUS_NOT_FOUND, 5);
	CHECK_EQ(P99_STATUS_EXISTS, 6);
	CHECK_EQ(P99_STATUS_NOT_STORED, 7);
	CHECK_EQ(P99_STATUS_BUSY, 8);
	CHECK_EQ(P99_STATUS_WOULD_BLOCK, 9);
	CHECK_EQ(P99_STATUS_UNSUPPORTED, 10);
	CHECK_EQ(P99_STATUS_IO_ERROR, 11);
	CHECK_EQ(P99_STATUS_PANIC, 12);
	CHECK_EQ(P99_STATUS_WRONG_THREAD, 13);
	CHECK_EQ(P99_STATUS_STALE_HANDLE, 14);
	CHECK_EQ(P99_STATUS_BUFFER_TOO_SMALL, 15);
	CHECK_EQ(P99_STATUS_NON_NUMERIC, 16);
	CHECK_EQ(P99_STATUS_INVALID_STATE, 17);
	CHECK_EQ(P99_STATUS_CLOSED, 18);
	CHECK_EQ(P99_STATUS_TIMED_OUT, 19);
	CHECK_EQ(P99_STATUS_PERMISSION_DENIED, 20);
	CHECK_EQ(P99_STATUS_NO_DEVICE, 21);
	CHECK_EQ(sizeof(p99_status), 4);
}

static void test_status_str(void)
{
	CHECK(strcmp(p99_status_str(P99_STATUS_OK), "ok") == 0);
	CHECK(strcmp(p99_status_str(P99_STATUS_NULL_PARAMETER),
		     "a required pointer argument was NULL") == 0);
	CHECK(strcmp(p99_status_str(P99_STATUS_PANIC), "internal panic caught at the C boundary") ==
	      0);
	/* Every known value has its own non-empty text; an unknown value still gets one. */
	for (uint32_t s = 0; s <= P99_STATUS_NO_DEVICE; s++) {
		const char *t = p99_status_str(s);
		CHECK(t != NULL && t[0] != '\0');
		CHECK(strcmp(t, "unknown status") != 0);
		for (uint32_t o = 0; o < s; o++)
			CHECK(strcmp(t, p99_status_str(o)) != 0);
	}
	CHECK(strcmp(p99_status_str(P99_STATUS_NO_DEVICE + 1000), "unknown status") == 0);
	CHECK(strcmp(p99_status_str(UINT32_MAX), "unknown status") == 0);
}

static void test_version_agrees(void)
{
	char want[64];
	snprintf(want, sizeof(want), "%d.%d.%d", P99_VERSION_MAJOR, P99_VERSION_MINOR,
		 P99_VERSION_PATCH);
	CHECK(strcmp(p99_version(), want) == 0);
	CHECK_EQ(P99_VERSION_NUMBER,
		 P99_VERSION_MAJOR * 1000000 + P99_VERSION_MINOR * 1000 + P99_VERSION_PATCH);
	CHECK_EQ(p99_version_number(), P99_VERSION_NUMBER);
#ifdef P99_EXPECT_VERSION
	/* Passed by CMake from the package version (which comes from Cargo.toml). */
	CHECK(strcmp(p99_version(), P99_EXPECT_VERSION) == 0);
#endif
}

static void test_last_errno_starts_at_zero(void)
{
	/* No libp99 call on this thread has failed with an OS error yet. */
	CHECK_EQ(p99_last_errno(), 0);
}

static void test_last_error_message(void)
{
	/* Nothing has failed on this thread yet. */
	CHECK(strcmp(p99_last_error_message(), "") == 0);
	/* A failure with more to say than its status names the argument. */
	CHECK_STATUS(p99_xdp_umem_config_defaults(NULL), P99_STATUS_NULL_PARAMETER);
	const char *m = p99_last_error_message();
	CHECK(strcmp(m, "`config` is NULL") == 0);
	/* A success leaves it alone (the pointer stays valid until the next failure). */
	CHECK_EQ(p99_xdp_udp_ping_reply((uint8_t *)"", 0, 0, &(uint32_t){ 0 }),
		 P99_STATUS_NOT_FOUND);
	CHECK(strcmp(p99_last_error_message(), "not found") == 0);
	CHECK(strcmp(p99_version(), "") != 0);
}

static void test_sanitizers_linked(void)
{
#ifdef P99_SANITIZE
	/* Found only if the sanitizer runtimes are really linked into this process. */
	CHECK(dlsym(RTLD_DEFAULT, "__asan_init") != NULL);
	CHECK(dlsym(RTLD_DEFAULT, "__ubsan_handle_add_overflow") != NULL);
	printf("sanitizers: ASan and UBSan runtimes are linked\n");
#else
	printf("sanitizers: not in this build\n");
#endif
}

int main(void)
{
	test_status_values_are_fixed();
	test_status_str();
	test_version_agrees();
	test_last_errno_starts_at_zero();
	test_last_error_message();
	test_sanitizers_linked();
	return check_done("foundation");
}
