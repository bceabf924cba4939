/* SPDX-License-Identifier: MIT */
/*
 * In-memory retained history. Two views of the same events:
 *  - per topic, a ring of message references in id order, bounded by max_events_per_topic;
 *  - globally, a ring of (seq, msg) slots in id order, for lookups by id (binary search),
 *    pattern scans after a cursor, and eviction of the oldest events by age or memory.
 * Removing a topic's oldest event for the per-topic bound leaves a tombstone in the global
 * ring; tombstones at the head are popped at once and the ring is compacted when more than
 * half of it is tombstones, so both views stay O(retained events) in memory.
 *
 * Gap detection: each topic remembers the newest id it has pruned. A cursor older than that,
 * for a topic the pattern matches, may have missed events. Topics emptied by age or memory
 * eviction are forgotten, folding their pruned id into one global horizon: since eviction
 * takes the globally oldest events first, that horizon only flags cursors older than
 * anything retained, not recent ones. After a restart the store's record of what retention
 * dropped sets the same two (hd_history_mark_pruned).
 */
#include "history.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "protocol.h"
#include "topic.h"

struct topic_state {
    struct topic_state *chain;
    uint32_t hash;
    uint32_t head, count, cap;
    struct hd_msg **ring;
    uint64_t pruned_upto;
    uint64_t memo_gen; /* pattern-match memo for scans */
    bool memo_match;
    char name[];
};

struct gslot {
    uint64_t seq;
    struct hd_msg *msg; /* NULL = tombstone */
};

struct hd_history {
    struct hd_history_limits lim;
    uint64_t base_seq, last_seq, forgotten_upto, gen;
    struct topic_state **buckets;
    size_t nbuckets, ntopics;
    struct gslot *g;
    size_t ghead, gcount, gcap, gtomb;
    size_t events, bytes;
};

static uint32_t hash_str(const char *s)
{
    uint32_t h = 2166136261u; /* FNV-1a: topics are short, this is plenty */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

struct hd_history_limits hd_history_limits_of(const struct hd_config *cfg)
{
    return (struct hd_history_limits){
        .max_events_per_topic = cfg->history.max_events_per_topic,
        .max_age_s = cfg->history.max_age_s,
        .max_bytes = cfg->history.max_memory_bytes,
        .key_window_s = cfg->history.dedupe_window_s,
    };
}

struct hd_history *hd_history_new(const struct hd_history_limits *lim, uint64_t base_seq)
{
    struct hd_history *h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    h->lim = *lim;
    h->base_seq = base_seq ? base_seq : 1;
    h->last_seq = h->base_seq - 1;
    h->nbuckets = 64;
    h->buckets = calloc(h->nbuckets, sizeof(*h->buckets));
    if (!h->buckets) {
        free(h);
        return NULL;
    }
    return h;
}

void hd_history_set_limits(struct hd_history *h, const struct hd_history_limits *lim)
{
    h->lim = *lim;
}

static void topic_free(struct topic_state *t)
{
    for (uint32_t i = 0; i < t->count; i++)
        hd_msg_unref(t->ring[(t->head + i) % t->cap]);
    free(t->ring);
    free(t);
}

void hd_history_free(struct hd_history *h)
{
    if (!h)
        return;
    for (size_t b = 0; b < h->nbuckets; b++) {
        struct topic_state *t = h->buckets[b], *n;
        for (; t; t = n) {
            n = t->chain;
            topic_free(t);
        }
    }
    free(h->buckets);
    free(h->g);
    free(h);
}

static struct topic_state *topic_find(const struct hd_history *h, const char *name, uint32_t hash)
{
    for (struct topic_state *t = h->buckets[hash & (h->nbuckets - 1)]; t; t = t->chain)
        if (t->hash == hash && strcmp(t->name, name) == 0)
            return t;
    return NULL;
}

static void rehash(struct hd_history *h)
{
    size_t n = h->nbuckets * 2;
    struct topic_state **b = calloc(n, sizeof(*b));
    if (!b)
        return; /* keep the longer chains; correctness does not depend on it */
    for (size_t i = 0; i < h->nbuckets; i++) {
        struct topic_state *t = h->buckets[i], *next;
        for (; t; t = next) {
            next = t->chain;
            t->chain = b[t->hash & (n - 1)];
            b[t->hash & (n - 1)] = t;
        }
    }
    free(h->buckets);
    h->buckets = b;
    h->nbuckets = n;
}

static void topic_unlink(struct hd_history *h, struct topic_state *t)
{
    struct topic_state **pp = &h->buckets[t->hash & (h->nbuckets - 1)];
    while (*pp != t)
        pp = &(*pp)->chain;
    *pp = t->chain;
    h->ntopics--;
}

/* Logical index i of the global ring. */
static inline struct gslot *gat(const struct hd_history *h, size_t i)
{
    return &h->g[(h->ghead + i) % h->gcap];
}

/* First logical index whose seq is > after (gcount when none). */
static size_t gsearch(const struct hd_history *h, uint64_t after)
{
    size_t lo = 0, hi = h->gcount;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (gat(h, mid)->seq <= after)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static void gcompact(struct hd_history *h)
{
    size_t w = 0;
    for (size_t i = 0; i < h->gcount; i++) {
        struct gslot s = *gat(h, i);
        if (s.msg)
            h->g[w++] = s; /* w <= logical i, and we read ahead of writes in ring order */
    }
    /* The loop above is only safe when the ring does not wrap; ensure that first. */
    h->ghead = 0;
    h->gcount = w;
    h->gtomb = 0;
}

static void gnormalize(struct hd_history *h)
{
    /* Rotate so the ring starts at 0; then in-place compaction cannot overwrite unread slots. */
    if (h->ghead == 0)
        return;
    struct gslot *n = malloc(sizeof(*n) * h->gcap);
    if (!n)
        return;
    for (size_t i = 0; i < h->gcount; i++)
        n[i] = *gat(h, i);
    free(h->g);
    h->g = n;
    h->ghead = 0;
}

static void gpop_tombstones(struct hd_history *h)
{
    while (h->gcount && !gat(h, 0)->msg) {
        h->ghead = (h->ghead + 1) % h->gcap;
        h->gcount--;
        h->gtomb--;
    }
    if (h->gtomb > 64 && h->gtomb > h->gcount / 2) {
        gnormalize(h);
        if (h->ghead == 0)
            gcompact(h);
    }
}

static void account_remove(struct hd_history *h, struct hd_msg *m)
{
    h->events--;
    h->bytes -= m->len;
}

/* Removes topic t's oldest event (which must exist). */
static void topic_pop_oldest(struct hd_history *h, struct topic_state *t, bool tombstone)
{
    struct hd_msg *m = t->ring[t->head];
    t->head = (t->head + 1) % t->cap;
    t->count--;
    if (m->seq > t->pruned_upto)
        t->pruned_upto = m->seq;
    if (tombstone) {
        size_t i = gsearch(h, m->seq - 1);
        if (i < h->gcount && gat(h, i)->seq == m->seq) {
            gat(h, i)->msg = NULL;
            h->gtomb++;
        }
    }
    m->hist_topic = NULL;
    account_remove(h, m);
    hd_msg_unref(m);
}

/* Evicts the globally oldest event (age or memory). Returns false when empty. */
static bool evict_oldest(struct hd_history *h)
{
    gpop_tombstones(h);
    if (!h->gcount)
        return false;
    struct gslot *s = gat(h, 0);
    struct topic_state *t = s->msg->hist_topic;
    h->ghead = (h->ghead + 1) % h->gcap;
    h->gcount--;
    topic_pop_oldest(h, t, false);
    if (!t->count) {
        if (t->pruned_upto > h->forgotten_upto)
            h->forgotten_upto = t->pruned_upto;
        topic_unlink(h, t);
        topic_free(t);
    }
    return true;
}

static int ring_grow(struct hd_msg ***ring, uint32_t *head, uint32_t count, uint32_t *cap,
                     uint32_t max)
{
    uint32_t ncap = *cap ? *cap * 2 : 8;
    if (ncap > max)
        ncap = max;
    struct hd_msg **n = malloc(sizeof(*n) * ncap);
    if (!n)
        return -ENOMEM;
    for (uint32_t i = 0; i < count; i++)
        n[i] = (*ring)[(*head + i) % *cap];
    free(*ring);
    *ring = n;
    *head = 0;
    *cap = ncap;
    return 0;
}

static int gring_reserve(struct hd_history *h)
{
    if (h->gcount < h->gcap)
        return 0;
    size_t ncap = h->gcap ? h->gcap * 2 : 64;
    struct gslot *n = malloc(sizeof(*n) * ncap);
    if (!n)
        return -ENOMEM;
    for (size_t i = 0; i < h->gcount; i++)
        n[i] = *gat(h, i);
    free(h->g);
    h->g = n;
    h->ghead = 0;
    h->gcap = ncap;
    return 0;
}

int hd_history_append(struct hd_history *h, struct hd_msg *m)
{
    uint32_t hash = hash_str(m->topic);
    struct topic_state *t = topic_find(h, m->topic, hash);
    bool fresh = false;
    if (!t) {
        size_t nlen = strlen(m->topic);
        t = calloc(1, sizeof(*t) + nlen + 1);
        if (!t)
            return -ENOMEM;
        memcpy(t->name, m->topic, nlen + 1);
        t->hash = hash;
        fresh = true;
    }
    uint32_t max = h->lim.max_events_per_topic ? h->lim.max_events_per_topic : 1;
    if ((t->count == t->cap && t->cap < max &&
         ring_grow(&t->ring, &t->head, t->count, &t->cap, max)) ||
        gring_reserve(h)) {
        if (fresh) {
            free(t->ring);
            free(t);
        }
        return -ENOMEM;
    }
    if (fresh) {
        t->chain = h->buckets[hash & (h->nbuckets - 1)];
        h->buckets[hash & (h->nbuckets - 1)] = t;
        if (++h->ntopics > h->nbuckets)
            rehash(h);
    }
    /* At max_events_per_topic the oldest go (more than one when a reload lowered it). */
    while (t->count && t->count >= max)
        topic_pop_oldest(h, t, true);
    t->ring[(t->head + t->count) % t->cap] = hd_msg_ref(m);
    t->count++;
    m->hist_topic = t;
    *gat(h, h->gcount) = (struct gslot){.seq = m->seq, .msg = m};
    h->gcount++;
    h->events++;
    h->bytes += m->len;
    if (m->seq > h->last_seq)
        h->last_seq = m->seq;
    while (h->bytes > h->lim.max_bytes && h->events > 1)
        evict_oldest(h);
    gpop_tombstones(h);
    return 0;
}

size_t hd_history_expire(struct hd_history *h, int64_t now_ms)
{
    if (!h->lim.max_age_s)
        return 0;
    int64_t cutoff = now_ms - (int64_t)h->lim.max_age_s * 1000;
    size_t n = 0;
    for (;;) {
        gpop_tombstones(h);
        if (!h->gcount || gat(h, 0)->msg->time_ms >= cutoff)
            break;
        evict_oldest(h);
        n++;
    }
    return n;
}

struct hd_msg *hd_history_get(const struct hd_history *h, uint64_t seq)
{
    if (!seq)
        return NULL;
    size_t i = gsearch(h, seq - 1);
    if (i < h->gcount && gat(h, i)->seq == seq)
        return gat(h, i)->msg;
    return NULL;
}

struct hd_since hd_since_parse(const char *s)
{
    if (!s || strcmp(s, "all") == 0)
        return (struct hd_since){.kind = HD_SINCE_ALL};
    if (strcmp(s, "latest") == 0)
        return (struct hd_since){.kind = HD_SINCE_LATEST};
    uint64_t seq;
    if (hd_event_id_parse(s, &seq) == 0)
        return (struct hd_since){.kind = HD_SINCE_ID, .seq = seq};
    return (struct hd_since){.kind = HD_SINCE_INVALID};
}

static bool topic_matches(struct hd_history *h, struct topic_state *t, const char *pattern)
{
    if (t->memo_gen != h->gen) {
        t->memo_gen = h->gen;
        t->memo_match = hd_pattern_match(pattern, t->name);
    }
    return t->memo_match;
}

int hd_history_set_base(struct hd_history *h, uint64_t base_seq)
{
    if (h->events)
        return -EBUSY;
    h->base_seq = base_seq ? base_seq : 1;
    h->last_seq = h->base_seq - 1;
    h->forgotten_upto = 0;
    return 0;
}

void hd_history_mark_gap(struct hd_history *h, uint64_t next_seq)
{
    /* The same horizon eviction uses: cursors older than it may have missed events. */
    if (next_seq && next_seq - 1 > h->forgotten_upto)
        h->forgotten_upto = next_seq - 1;
    if (next_seq && next_seq - 1 > h->last_seq)
        h->last_seq = next_seq - 1;
}

void hd_history_mark_pruned(struct hd_history *h, const char *topic, uint64_t upto)
{
    struct topic_state *t = topic ? topic_find(h, topic, hash_str(topic)) : NULL;
    if (t && upto > t->pruned_upto)
        t->pruned_upto = upto;
    else if (!t && upto > h->forgotten_upto)
        h->forgotten_upto = upto;
    /* `upto` was an id: a cursor at it is valid even when nothing after it is retained. */
    if (upto > h->last_seq)
        h->last_seq = upto;
}

uint64_t hd_history_resolve(struct hd_history *h, const char *pattern, struct hd_since since,
                            bool *gap)
{
    *gap = false;
    switch (since.kind) {
    case HD_SINCE_ALL:
        return 0;
    case HD_SINCE_LATEST:
        return h->last_seq;
    case HD_SINCE_INVALID:
        *gap = true;
        return 0;
    case HD_SINCE_ID:
        break;
    }
    uint64_t x = since.seq;
    if (x < h->base_seq - 1 || x > h->last_seq || x < h->forgotten_upto) {
        *gap = true;
        return 0;
    }
    if (hd_pattern_is_literal(pattern)) {
        struct topic_state *t = topic_find(h, pattern, hash_str(pattern));
        *gap = t && t->pruned_upto > x;
    } else {
        for (size_t b = 0; b < h->nbuckets && !*gap; b++)
            for (struct topic_state *t = h->buckets[b]; t && !*gap; t = t->chain)
                if (t->pruned_upto > x && hd_pattern_match(pattern, t->name))
                    *gap = true;
    }
    return *gap ? 0 : x;
}

/* Calls visit for each matching event with after < seq <= upto, in order, until it returns
 * false. Literal patterns walk their topic's ring; wildcards scan the global ring. */
static void scan(struct hd_history *h, const char *pattern, uint64_t after, uint64_t upto,
                 bool (*visit)(struct hd_msg *, void *), void *arg)
{
    if (!upto)
        upto = UINT64_MAX;
    if (hd_pattern_is_literal(pattern)) {
        struct topic_state *t = topic_find(h, pattern, hash_str(pattern));
        if (!t)
            return;
        uint32_t lo = 0, hi = t->count;
        while (lo < hi) {
            uint32_t mid = lo + (hi - lo) / 2;
            if (t->ring[(t->head + mid) % t->cap]->seq <= after)
                lo = mid + 1;
            else
                hi = mid;
        }
        for (uint32_t i = lo; i < t->count; i++) {
            struct hd_msg *m = t->ring[(t->head + i) % t->cap];
            if (m->seq > upto || !visit(m, arg))
                return;
        }
        return;
    }
    h->gen++;
    for (size_t i = gsearch(h, after); i < h->gcount; i++) {
        struct gslot *s = gat(h, i);
        if (s->seq > upto)
            return;
        if (s->msg && topic_matches(h, s->msg->hist_topic, pattern) && !visit(s->msg, arg))
            return;
    }
}

struct collect_ctx {
    struct hd_msg **out;
    size_t n, limit;
};

static bool collect_visit(struct hd_msg *m, void *arg)
{
    struct collect_ctx *c = arg;
    if (c->n >= c->limit)
        return false;
    c->out[c->n++] = m;
    return c->n < c->limit;
}

size_t hd_history_collect(struct hd_history *h, const char *pattern, uint64_t after, uint64_t upto,
                          struct hd_msg **out, size_t limit)
{
    struct collect_ctx c = {.out = out, .limit = limit};
    if (limit)
        scan(h, pattern, after, upto, collect_visit, &c);
    return c.n;
}

static bool count_visit(struct hd_msg *m, void *arg)
{
    (void)m;
    (*(size_t *)arg)++;
    return true;
}

size_t hd_history_count(struct hd_history *h, const char *pattern, uint64_t after, uint64_t upto)
{
    size_t n = 0;
    scan(h, pattern, after, upto, count_visit, &n);
    return n;
}

uint64_t hd_history_last_seq(const struct hd_history *h)
{
    return h->last_seq;
}
size_t hd_history_events(const struct hd_history *h)
{
    return h->events;
}
size_t hd_history_bytes(const struct hd_history *h)
{
    return h->bytes;
}
