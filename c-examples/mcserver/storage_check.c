/*
 * storage_check.c - checks that storage_store (the one-call write) does exactly what
 * storage_reserve + storage_fill + storage_commit do, for every storage_op, on whichever store
 * it is linked with. Each case prepares two keys the same way, writes one in two phases and
 * the other in one call, and compares the results, the cas handed back and what a read finds.
 * Exits 0 when every case agrees, 1 otherwise (each disagreement is printed).
 */
#include "storage.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static int failures;

static void check(bool ok, const char *what, const char *name)
{
	if (!ok) {
		fprintf(stderr, "storage-check (%s): %s: %s\n", storage_name(), name, what);
		failures++;
	}
}

/* The item's state as a read sees it (missing: found == false). */
struct state {
	bool found;
	char value[64];
	size_t len;
	uint32_t flags;
	uint64_t cas;
};

static struct state read_state(const char *key)
{
	struct state s = { .found = false };
	struct storage_view v;
	if (storage_get(key, strlen(key), &v) != STORAGE_OK)
		return s;
	s.found = true;
	s.len = v.len < sizeof(s.value) ? v.len : sizeof(s.value);
	memcpy(s.value, v.value, s.len);
	s.flags = v.flags;
	s.cas = v.cas;
	storage_release(v.pin);
	return s;
}

static int write_two_phase(const char *key, uint32_t flags, const char *value, enum storage_op op,
			   uint64_t cas, uint64_t *cas_out)
{
	struct storage_reservation *r = NULL;
	int rc = storage_reserve(key, strlen(key), flags, 0, strlen(value), &r);
	if (rc != STORAGE_OK)
		return rc;
	if (storage_fill(r, value, strlen(value)) != STORAGE_OK) {
		storage_cancel(r);
		return STORAGE_INVALID;
	}
	return storage_commit(r, op, cas, cas_out);
}

/* How the cas given to the write relates to the existing item's. */
enum cas_given {
	CAS_NONE,
	CAS_MATCH,
	CAS_OLDER,
	CAS_NEWER
};

static uint64_t cas_for(const char *key, enum cas_given g)
{
	uint64_t c = read_state(key).cas;
	switch (g) {
	case CAS_MATCH: return c;
	case CAS_OLDER: return c > 1 ? c - 1 : 0;
	case CAS_NEWER: return c + 1000;
	default: return 0;
	}
}

static void one_case(enum storage_op op, bool present, enum cas_given g, const char *name)
{
	static unsigned n;
	char kr[32], ks[32];
	n++;
	snprintf(kr, sizeof(kr), "check-%u-two-phase", n);
	snprintf(ks, sizeof(ks), "check-%u-one-call", n);
	if (present) {
		check(write_two_phase(kr, 7, "old", STORAGE_SET, 0, NULL) == STORAGE_STORED,
		      "preparing the two-phase key", name);
		check(storage_store(ks, strlen(ks), 7, 0, "old", 3, STORAGE_SET, 0, NULL) ==
			      STORAGE_STORED,
		      "preparing the one-call key", name);
	}
	/* The two keys' cas values differ, so each write gets its own key's cas. */
	uint64_t cr = cas_for(kr, g), cs = cas_for(ks, g);
	uint64_t out_r = 0, out_s = 0;
	int rr = write_two_phase(kr, 9, "new", op, cr, &out_r);
	int rs = storage_store(ks, strlen(ks), 9, 0, "new", 3, op, cs, &out_s);
	check(rr == rs, "results differ", name);
	struct state a = read_state(kr), b = read_state(ks);
	check(a.found == b.found, "one key exists, the other not", name);
	if (a.found && b.found) {
		check(a.len == b.len && memcmp(a.value, b.value, a.len) == 0, "values differ",
		      name);
		check(a.flags == b.flags, "flags differ", name);
		/* the cas handed back is the item's */
		check(rr != STORAGE_STORED || (out_r == a.cas && out_s == b.cas),
		      "cas_out is not the stored item's cas", name);
	}
}

int main(void)
{
	struct storage_options o = {
		.mem_limit = 64u << 20,
		.item_max = 1u << 20,
		.cas_enabled = true,
	};
	char err[256];
	if (storage_setup(&o, err, sizeof(err)) != 0) {
		fprintf(stderr, "storage-check: %s\n", err);
		return 1;
	}
	static const struct {
		enum storage_op op;
		const char *name;
	} ops[] = {
		{ STORAGE_SET, "set" },
		{ STORAGE_ADD, "add" },
		{ STORAGE_REPLACE, "replace" },
		{ STORAGE_APPEND, "append" },
		{ STORAGE_PREPEND, "prepend" },
		{ STORAGE_CAS, "cas" },
		{ STORAGE_CAS_STALE, "cas-stale" },
	};
	static const char *const given[] = { "no cas", "matching cas", "older cas", "newer cas" };
	for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
		for (int present = 0; present <= 1; present++) {
			for (int g = CAS_NONE; g <= CAS_NEWER; g++) {
				char name[96];
				snprintf(name, sizeof(name), "%s, key %s, %s", ops[i].name,
					 present ? "present" : "missing", given[g]);
				one_case(ops[i].op, present, (enum cas_given)g, name);
			}
		}
	}
	/* The errors a reserve gives come from the one-call write too. */
	char big[300];
	memset(big, 'k', sizeof(big));
	check(storage_store(big, sizeof(big), 0, 0, "v", 1, STORAGE_SET, 0, NULL) ==
		      STORAGE_INVALID,
	      "a key over 250 bytes is not refused", "long key");
	static char huge[2u << 20];
	check(storage_store("huge", 4, 0, 0, huge, sizeof(huge), STORAGE_SET, 0, NULL) ==
		      STORAGE_TOO_LARGE,
	      "a value over item_max is not refused", "huge value");
	check(!read_state("huge").found, "a refused write left an item", "huge value");
	/* Expiry: an exptime in the past stores an item never seen again. */
	check(storage_store("gone", 4, 0, -1, "v", 1, STORAGE_SET, 0, NULL) == STORAGE_STORED,
	      "not stored", "negative exptime");
	check(!read_state("gone").found, "an already expired item is visible", "negative exptime");
	storage_teardown();
	if (failures) {
		fprintf(stderr, "storage-check (%s): %d failure(s)\n", storage_name(), failures);
		return 1;
	}
	printf("storage-check (%s): storage_store agrees with reserve/fill/commit\n",
	       storage_name());
	return 0;
}
