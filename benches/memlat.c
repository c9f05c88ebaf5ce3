/*
 * Latency of a dependent random load over buffers of 1 to 256 MiB: one pointer chase through
 * a random cycle of cache lines (huge pages advised, 4M loads per size). What a store's miss
 * in its hash table costs on the machine at hand, by how much memory the table and what
 * evicts it span.
 *
 *     cc -O2 -o build/memlat benches/memlat.c && build/memlat
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

static double now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

int main(void)
{
	const size_t loads = 4000000;
	uint64_t rng = 0x9e3779b97f4a7c15ull;
	for (size_t mib = 1; mib <= 256; mib *= 2) {
		size_t lines = mib * 1024 * 1024 / 64;
		uint64_t *buf = aligned_alloc(2 << 20, lines * 64);
		size_t *order = malloc(lines * sizeof(size_t));
		if (!buf || !order) {
			fprintf(stderr, "memlat: out of memory at %zu MiB\n", mib);
			return 1;
		}
		madvise(buf, lines * 64, MADV_HUGEPAGE);
		for (size_t i = 0; i < lines; i++)
			order[i] = i;
		for (size_t i = lines - 1; i > 0; i--) { /* Fisher-Yates with xorshift */
			rng ^= rng << 13;
			rng ^= rng >> 7;
			rng ^= rng << 17;
			size_t j = rng % (i + 1), t = order[i];
			order[i] = order[j];
			order[j] = t;
		}
		for (size_t i = 0; i < lines; i++) /* one word per line: the next line's index */
			buf[order[i] * 8] = order[(i + 1) % lines] * 8;
		size_t p = 0;
		double t0 = now_ns();
		for (size_t i = 0; i < loads; i++)
			p = buf[p];
		double t1 = now_ns();
		/* p is printed (as nothing: it is never -1) so the chase cannot be optimised away */
		printf("%4zu MiB: %6.1f ns per dependent load%s\n", mib, (t1 - t0) / (double)loads,
		       p == (size_t)-1 ? " " : "");
		free(buf);
		free(order);
	}
	return 0;
}
