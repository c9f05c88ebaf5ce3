/*
 * Threads sharing one p99_cache and handing work to each other, built for ThreadSanitizer
 * (make test-tsan; also run under ASan and Valgrind with the other tests): a reservation is
 * filled on one thread and committed on another, a pin is taken on one thread and its value
 * read and released on another, as a server's I/O workers do. The hand-off goes through a
 * mutex, so the C side is race-free only if libp99 keeps its promise that a reservation or
 * a pin may be finished on any thread.
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

#include "check.h"

#define THREADS 4
#define ROUNDS 4000
#define KEYS 200
#define HANDOFF_MAX 64

enum job_kind {
	JOB_COMMIT,
	JOB_RELEASE
};

struct job {
	enum job_kind kind;
	p99_cache_reservation *res; /* JOB_COMMIT: filled, to be committed */
	p99_cache_item *item; /* JOB_RELEASE: pinned, to be read and released */
	char key[16];
};

/* Jobs waiting for any thread, last in first out. */
static struct {
	pthread_mutex_t lock;
	struct job jobs[HANDOFF_MAX];
	int n;
} handoff = { .lock = PTHREAD_MUTEX_INITIALIZER };

static p99_cache *cache;

static bool push(const struct job *j)
{
	bool ok = false;
	pthread_mutex_lock(&handoff.lock);
	if (handoff.n < HANDOFF_MAX) {
		handoff.jobs[handoff.n++] = *j;
		ok = true;
	}
	pthread_mutex_unlock(&handoff.lock);
	return ok;
}

static bool pop(struct job *j)
{
	bool ok = false;
	pthread_mutex_lock(&handoff.lock);
	if (handoff.n > 0) {
		*j = handoff.jobs[--handoff.n];
		ok = true;
	}
	pthread_mutex_unlock(&handoff.lock);
	return ok;
}

/* Finishes a job another thread (or this one) started. 0, or a code naming the failure. */
static int finish(struct job *j)
{
	size_t klen = strlen(j->key);
	if (j->kind == JOB_COMMIT) {
		p99_status st = p99_cache_commit(cache, j->res, P99_CACHE_MODE_SET, 0, NULL);
		free(j->res);
		return st == P99_STATUS_OK || st == P99_STATUS_OUT_OF_MEMORY ? 0 : 10;
	}
	/* Every value starts with its key: a torn or misplaced value shows here. */
	int rc = 0;
	if (j->item->value_len < klen || memcmp(j->item->value, j->key, klen) != 0)
		rc = 11;
	if (p99_cache_item_release(cache, j->item) != P99_STATUS_OK)
		rc = 12;
	free(j->item);
	return rc;
}

static int start_write(int id, int i)
{
	struct job j = { .kind = JOB_COMMIT };
	snprintf(j.key, sizeof(j.key), "k%d", (i * 7 + id) % KEYS);
	char val[48];
	int n = snprintf(val, sizeof(val), "%s:%d:%d", j.key, id, i);
	j.res = malloc(sizeof(*j.res));
	if (!j.res)
		return 20;
	p99_status st = p99_cache_reserve(cache, (const uint8_t *)j.key, strlen(j.key), (size_t)n,
					  0, 0, j.res);
	if (st != P99_STATUS_OK) {
		free(j.res);
		return st == P99_STATUS_OUT_OF_MEMORY ? 0 : 21;
	}
	/* In two pieces, the second straight into the value buffer. */
	size_t half = (size_t)n / 2;
	if (p99_cache_reservation_write(j.res, (const uint8_t *)val, half) != P99_STATUS_OK)
		return 22;
	memcpy(j.res->value + half, val + half, (size_t)n - half);
	if (p99_cache_reservation_advance(j.res, (size_t)n - half) != P99_STATUS_OK)
		return 23;
	return push(&j) ? 0 : finish(&j);
}

static int start_read(int id, int i)
{
	struct job j = { .kind = JOB_RELEASE };
	snprintf(j.key, sizeof(j.key), "k%d", (i * 13 + id * 5) % KEYS);
	j.item = malloc(sizeof(*j.item));
	if (!j.item)
		return 30;
	p99_status st = p99_cache_get(cache, (const uint8_t *)j.key, strlen(j.key), j.item);
	if (st != P99_STATUS_OK) {
		free(j.item);
		return st == P99_STATUS_NOT_FOUND ? 0 : 31;
	}
	return push(&j) ? 0 : finish(&j);
}

static void *worker(void *arg)
{
	int id = (int)(intptr_t)arg;
	for (int i = 0; i < ROUNDS; i++) {
		int rc = start_write(id, i);
		if (!rc)
			rc = start_read(id, i);
		struct job j;
		if (!rc && pop(&j))
			rc = finish(&j);
		if (rc)
			return (void *)(intptr_t)rc;
	}
	return NULL;
}

int main(void)
{
	p99_cache_config cfg = { .struct_size = sizeof cfg };
	CHECK_OK(p99_cache_config_defaults(&cfg));
	cfg.heap_bytes = 4u << 20;
	cfg.segment_bytes = 64u << 10;
	cfg.item_max = 64u << 10;
	CHECK_OK(p99_cache_new(&cfg, &cache));
	pthread_t t[THREADS];
	for (int i = 0; i < THREADS; i++)
		CHECK(pthread_create(&t[i], NULL, worker, (void *)(intptr_t)i) == 0);
	for (int i = 0; i < THREADS; i++) {
		void *r;
		pthread_join(t[i], &r);
		CHECK_EQ((intptr_t)r, 0);
	}
	struct job j;
	while (pop(&j))
		CHECK_EQ(finish(&j), 0);
	p99_cache_stats st = { .struct_size = sizeof st };
	CHECK_OK(p99_cache_get_stats(cache, &st));
	CHECK_EQ(st.pinned, 0);
	CHECK(st.sets > 0 && st.hits > 0);
	CHECK_OK(p99_cache_free(cache));
	return check_done("cache_handoff");
}
