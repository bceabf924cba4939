/* SPDX-License-Identifier: MIT */
/*
 * The idempotency-key table: a chained hash of entries that are also on one list in the order
 * they were recorded, so expiry and the count bound both pop from the head. An entry's time
 * is when it was recorded here (a remembered key uses the event's time, so a recovered key
 * expires when it would have), which keeps the list close to time order; expiry stops at the
 * first entry still inside the window or still in flight, so a rare out-of-order entry only
 * lives a little longer than its window, never shorter.
 */
#include "dedupe.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct waiter {
    struct waiter *next;
    hd_dedupe_wait_fn fn;
    void *arg;
};

struct entry {
    struct entry *chain;         /* hash bucket */
    struct entry *older, *newer; /* recording order */
    uint32_t hash;
    bool done;
    int64_t time_ms;
    struct hd_dedupe_answer answer;
    struct waiter *waiters; /* in flight only */
    char key[];
};

struct hd_dedupe {
    uint32_t window_s, max_keys;
    struct entry **buckets;
    size_t nbuckets, count;
    struct entry *oldest, *newest;
};

static uint32_t hash_str(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

struct hd_dedupe *hd_dedupe_new(uint32_t window_s, uint32_t max_keys)
{
    struct hd_dedupe *d = calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    d->nbuckets = 64;
    d->buckets = calloc(d->nbuckets, sizeof(*d->buckets));
    if (!d->buckets) {
        free(d);
        return NULL;
    }
    d->window_s = window_s;
    d->max_keys = max_keys;
    return d;
}

void hd_dedupe_set_limits(struct hd_dedupe *d, uint32_t window_s, uint32_t max_keys)
{
    d->window_s = window_s;
    d->max_keys = max_keys;
}

size_t hd_dedupe_count(const struct hd_dedupe *d)
{
    return d->count;
}

static struct entry **slot_of(struct hd_dedupe *d, const char *key, uint32_t h)
{
    struct entry **p = &d->buckets[h & (d->nbuckets - 1)];
    while (*p && ((*p)->hash != h || strcmp((*p)->key, key) != 0))
        p = &(*p)->chain;
    return p;
}

static void unlink_entry(struct hd_dedupe *d, struct entry *e)
{
    struct entry **p = slot_of(d, e->key, e->hash);
    *p = e->chain;
    if (e->older)
        e->older->newer = e->newer;
    else
        d->oldest = e->newer;
    if (e->newer)
        e->newer->older = e->older;
    else
        d->newest = e->older;
    d->count--;
}

static void call_waiters(struct entry *e, int err)
{
    struct waiter *w = e->waiters;
    e->waiters = NULL;
    while (w) {
        struct waiter *next = w->next;
        w->fn(w->arg, err, err ? NULL : &e->answer);
        free(w);
        w = next;
    }
}

/* Pops expired and surplus entries from the old end; in-flight entries stop the walk. */
static void expire(struct hd_dedupe *d, int64_t now_ms)
{
    int64_t cut = now_ms - (int64_t)d->window_s * 1000;
    while (d->oldest && d->oldest->done && (d->oldest->time_ms < cut || d->count > d->max_keys)) {
        struct entry *e = d->oldest;
        unlink_entry(d, e);
        free(e);
    }
}

static void grow(struct hd_dedupe *d)
{
    size_t n = d->nbuckets * 2;
    struct entry **b = calloc(n, sizeof(*b));
    if (!b)
        return; /* longer chains, still correct */
    for (size_t i = 0; i < d->nbuckets; i++)
        for (struct entry *e = d->buckets[i], *next; e; e = next) {
            next = e->chain;
            e->chain = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
        }
    free(d->buckets);
    d->buckets = b;
    d->nbuckets = n;
}

static struct entry *insert(struct hd_dedupe *d, const char *key, uint32_t h, int64_t time_ms)
{
    size_t len = strlen(key);
    struct entry *e = calloc(1, sizeof(*e) + len + 1);
    if (!e)
        return NULL;
    memcpy(e->key, key, len + 1);
    e->hash = h;
    e->time_ms = time_ms;
    if (d->count >= d->nbuckets)
        grow(d);
    struct entry **b = &d->buckets[h & (d->nbuckets - 1)];
    e->chain = *b;
    *b = e;
    e->older = d->newest;
    if (d->newest)
        d->newest->newer = e;
    else
        d->oldest = e;
    d->newest = e;
    d->count++;
    return e;
}

int hd_dedupe_begin(struct hd_dedupe *d, const char *key, int64_t now_ms,
                    struct hd_dedupe_answer *out, hd_dedupe_wait_fn fn, void *arg)
{
    expire(d, now_ms);
    uint32_t h = hash_str(key);
    struct entry *e = *slot_of(d, key, h);
    if (e && e->done) {
        *out = e->answer;
        return HD_DEDUPE_DONE;
    }
    if (e) {
        struct waiter *w = malloc(sizeof(*w));
        if (!w)
            return -ENOMEM;
        *w = (struct waiter){.next = e->waiters, .fn = fn, .arg = arg};
        e->waiters = w;
        return HD_DEDUPE_WAITING;
    }
    return insert(d, key, h, now_ms) ? HD_DEDUPE_NEW : -ENOMEM;
}

void hd_dedupe_finish(struct hd_dedupe *d, const char *key, const struct hd_dedupe_answer *a)
{
    struct entry *e = *slot_of(d, key, hash_str(key));
    if (!e || e->done)
        return;
    e->done = true;
    e->answer = *a;
    call_waiters(e, 0);
}

void hd_dedupe_abort(struct hd_dedupe *d, const char *key, int err)
{
    struct entry *e = *slot_of(d, key, hash_str(key));
    if (!e || e->done)
        return;
    unlink_entry(d, e);
    call_waiters(e, err ? err : -EIO);
    free(e);
}

int hd_dedupe_remember(struct hd_dedupe *d, const char *key, const struct hd_dedupe_answer *a,
                       int64_t now_ms)
{
    expire(d, now_ms);
    uint32_t h = hash_str(key);
    struct entry *e = *slot_of(d, key, h);
    if (e) {
        hd_dedupe_finish(d, key, a);
        return 0;
    }
    if (now_ms - a->time_ms > (int64_t)d->window_s * 1000)
        return 0; /* already outside the window */
    e = insert(d, key, h, a->time_ms);
    if (!e)
        return -ENOMEM;
    e->done = true;
    e->answer = *a;
    return 0;
}

void hd_dedupe_free(struct hd_dedupe *d)
{
    if (!d)
        return;
    for (struct entry *e = d->oldest, *next; e; e = next) {
        next = e->newer;
        call_waiters(e, -ESHUTDOWN);
        free(e);
    }
    free(d->buckets);
    free(d);
}
