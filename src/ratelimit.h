/* SPDX-License-Identifier: MIT */
/*
 * The one publish rate limiter (limits.publish_rate / publish_burst): a token bucket per
 * publisher key. The broker keys a publisher by its credential name when it has one (so a
 * token shares one bucket across all its connections and requests), else by its WebSocket
 * connection, else by its client address. Buckets live in a fixed table: a key that lands on
 * a slot held by another evicts it, and an evicted bucket starts full again, which only ever
 * errs towards letting a publisher through. Loop-thread only, no allocation after creation.
 */
#ifndef HD_RATELIMIT_H
#define HD_RATELIMIT_H

#include <stdint.h>

struct hd_ratelimit;

/* Returns a limiter, or NULL when out of memory. */
struct hd_ratelimit *hd_ratelimit_new(void);
void hd_ratelimit_free(struct hd_ratelimit *rl);

/*
 * Takes `n` tokens from `key`'s bucket (borrowed; longer keys are cut to the slot size),
 * refilled at `rate` per second up to `burst` (0: twice the rate), at monotonic `now_ns`.
 * All or nothing: returns 0 when taken, else the whole seconds (>= 1) until `n` would be
 * there, or UINT32_MAX when `n` exceeds the bucket itself; *fits (may be NULL) is then how
 * many of the `n` the bucket holds now. Rate 0 always returns 0.
 */
uint32_t hd_ratelimit_take(struct hd_ratelimit *rl, const char *key, uint32_t n, uint32_t rate,
                           uint32_t burst, uint64_t now_ns, uint32_t *fits);

#endif
