/* SPDX-License-Identifier: MIT */
/*
 * Reconnect delays: exponential backoff with jitter. The base delay doubles per attempt up
 * to a cap, and each delay is drawn from [base/2, base] ("equal jitter"): the half that is
 * fixed keeps a crowd of clients from hammering a broker that just came back, the half that
 * is random spreads them out. A small private PRNG keeps it reproducible under test and
 * independent of rand()'s global state.
 */
#include "internal.h"

static uint64_t next_rand(struct herald__backoff *b)
{
    /* xorshift64*: plenty for spreading retries; not for anything secret. */
    uint64_t x = b->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    b->rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

void herald__backoff_init(struct herald__backoff *b, unsigned initial_ms, unsigned max_ms,
                          uint64_t seed)
{
    b->initial_ms = initial_ms ? initial_ms : 1;
    b->max_ms = max_ms < b->initial_ms ? b->initial_ms : max_ms;
    b->attempt = 0;
    b->rng = seed ? seed : 0x9E3779B97F4A7C15ULL;
}

unsigned herald__backoff_next(struct herald__backoff *b)
{
    uint64_t base = b->initial_ms;
    for (unsigned i = 0; i < b->attempt && base < b->max_ms; i++)
        base *= 2;
    if (base > b->max_ms)
        base = b->max_ms;
    if (b->attempt < 64)
        b->attempt++;
    uint64_t half = base / 2;
    uint64_t span = base - half; /* the random part, so the result never exceeds base */
    return (unsigned)(half + (span ? next_rand(b) % (span + 1) : 0));
}

void herald__backoff_reset(struct herald__backoff *b)
{
    b->attempt = 0;
}
