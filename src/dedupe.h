/* SPDX-License-Identifier: MIT */
/*
 * Idempotency keys (PROTOCOL.md section 3): which keys this node has seen within
 * history.dedupe_window_s, and the answer each publish got, so a repeat gets the same answer
 * instead of a second event. A key whose publish is still in flight holds the repeats as
 * waiters until it completes. Keys are opaque strings the broker has already scoped to the
 * publisher's identity. Bounded by the window and by a key count (oldest first). Loop-thread
 * only; no I/O: the engine persists keys with the events, and hands them back on recovery.
 */
#ifndef HD_DEDUPE_H
#define HD_DEDUPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct hd_dedupe;

/* The first publish's answer. */
struct hd_dedupe_answer {
    uint64_t seq;
    int64_t time_ms;
    uint32_t receivers;
};

/* A repeat waiting for the first publish: err 0 with its answer, or the first one's error. */
typedef void (*hd_dedupe_wait_fn)(void *arg, int err, const struct hd_dedupe_answer *a);

enum hd_dedupe_state {
    HD_DEDUPE_NEW,     /* first sight: the key is now in flight; finish or abort it */
    HD_DEDUPE_DONE,    /* seen: *out holds the answer */
    HD_DEDUPE_WAITING, /* in flight: `fn` runs when it completes */
};

/* Returns a table with the given bounds, or NULL when out of memory. */
struct hd_dedupe *hd_dedupe_new(uint32_t window_s, uint32_t max_keys);
/* Frees the table; waiters still registered are called with -ESHUTDOWN first. */
void hd_dedupe_free(struct hd_dedupe *d);
void hd_dedupe_set_limits(struct hd_dedupe *d, uint32_t window_s, uint32_t max_keys);

/*
 * Looks `key` (borrowed) up at `now_ms`. Returns NEW (the key is recorded as in flight), DONE
 * with *out filled, or WAITING with (fn, arg) registered. Returns -ENOMEM when the key or a
 * waiter cannot be recorded (the caller refuses the publish).
 */
int hd_dedupe_begin(struct hd_dedupe *d, const char *key, int64_t now_ms,
                    struct hd_dedupe_answer *out, hd_dedupe_wait_fn fn, void *arg);
/* The in-flight publish of `key` completed with `a`: its waiters get it. Unknown keys and
 * keys already done are ignored. */
void hd_dedupe_finish(struct hd_dedupe *d, const char *key, const struct hd_dedupe_answer *a);
/* The in-flight publish of `key` failed: its waiters get `err` and the key is forgotten, so
 * a later retry publishes. */
void hd_dedupe_abort(struct hd_dedupe *d, const char *key, int err);
/* Records a key known from elsewhere (recovery, another node's event) as done at `time_ms`.
 * A key in flight is finished with `a`. Returns 0 or -ENOMEM. */
int hd_dedupe_remember(struct hd_dedupe *d, const char *key, const struct hd_dedupe_answer *a,
                       int64_t now_ms);
size_t hd_dedupe_count(const struct hd_dedupe *d);

#endif
