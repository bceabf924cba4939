/* SPDX-License-Identifier: MIT */
/*
 * The subscription registry: a trie of topic segments whose nodes hold the subscriptions
 * ending there. It owns the trie nodes, the per-node child hash tables and the hd_sub
 * handles (each with its own copy of the pattern); it borrows the hd_subscriber owners and
 * never looks inside them beyond `match_gen`. Not thread-safe: the loop thread owns it.
 */
#include "registry.h"

#include "topic.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

/*
 * How matching works
 * ==================
 *
 * Patterns are stored in a trie keyed by segment. The pattern `user.42.inbox` lives at the
 * node reached by the edges "user", "42", "inbox"; `chat.*` at the node reached by "chat"
 * and then the special `*` edge. The `>` segment never becomes a node: `user.42.>` is kept
 * on a separate list (`rest`) of the node for its prefix `user.42`, because `>` means "one
 * or more further segments, whatever they are", which is a property of the prefix node, not
 * a place further down. So each node carries:
 *
 *     exact   subscriptions whose pattern ends exactly at this node
 *     rest    subscriptions whose pattern is "<this node's path>.>" (at the root: `>`)
 *     star    the child reached by a `*` segment (at most one)
 *     slots   the literal children, in an open-addressed hash table
 *
 * To match a topic we split it into segments once (at most HD_TOPIC_MAX_SEGMENTS, hashing
 * each segment once) and walk from the root, carrying the index of the next segment:
 *
 *     walk(node, i):
 *         if i == nsegs:        deliver node.exact; stop      (the topic ends here)
 *         deliver node.rest                                    (segments i.. remain: >= 1)
 *         walk(node.child[seg i], i + 1)   if that literal child exists
 *         walk(node.star, i + 1)           if there is a star child
 *
 * `rest` is delivered only while a segment remains, which is exactly why `chat.>` does not
 * match `chat`: at the node "chat" with no segment left we deliver `exact` only. And `chat.*`
 * cannot match `chat.a.b` because the walk through the star child still has "b" left and
 * that node has no children.
 *
 * Reserved topics: a topic whose first segment starts with `$` (`$sys.stats`) must not be
 * reached by a wildcard in the first position (MQTT convention: `>` and `*.stats` are
 * client patterns, server topics are opt-in). So at the root, for such a topic, we skip both
 * the root's `rest` (pattern `>`) and the root's `star` child; the literal child "$sys" is
 * followed as usual, so `$sys.>` and `$sys.*` match. Below the root wildcards act normally.
 *
 * Cost. Each step does one hash lookup (expected O(1) whatever the number of siblings: a
 * node with 10,000 children is never scanned) and follows at most two children, so the
 * walk visits only nodes that are a prefix of some pattern that can still match; every
 * subscription it delivers does match. The work is O(nodes visited + matching subs), and
 * the total number of subscriptions does not appear. The hash is SipHash-1-3 keyed with
 * random bytes per registry, because the segments come from clients: with a fixed hash a
 * client could subscribe to thousands of colliding sibling topics and turn every lookup
 * at that node into a linear scan.
 *
 * One event, one delivery per owner. A connection may hold overlapping patterns (`chat.>`
 * and `chat.*` and `chat.room1`); it must receive the event once. Every match starts a new
 * generation (a registry-wide counter). Delivering a subscription compares its owner's
 * `match_gen` with the current generation: equal means this owner was already called for
 * this event, so it is skipped; otherwise it is stamped and called. No set, no allocation,
 * O(1) per matching subscription.
 *
 * Removal. Subscriptions sit on intrusive doubly-linked lists, so removing one is O(1)
 * whatever else is at its node. A node left with no subscriptions and no children is freed
 * and unlinked from its parent, and so on up the chain; a child table left empty is freed
 * and one mostly empty is shrunk. Removing every subscription returns the registry to its
 * initial footprint: a root node with no table.
 *
 * Out of memory. hd_registry_add allocates the handle first, then creates the missing nodes
 * top-down. If any allocation fails, the nodes it created are still empty, so pruning from
 * the deepest one removes exactly them and the trie is as it was.
 */

struct node {
    struct node *parent;
    struct node *star;    /* child for a `*` segment; not in `slots` */
    struct node **slots;  /* literal children, linear probing; NULL when nkids == 0 */
    uint32_t nkids;       /* literal children in `slots` */
    uint32_t cap;         /* power of two, or 0 */
    struct hd_sub *exact; /* patterns ending here */
    struct hd_sub *rest;  /* patterns "<path>.>" */
    uint64_t hash;        /* of `seg`, keyed by the registry; unused for root and star */
    size_t seglen;
    char seg[];
};

struct hd_sub {
    struct hd_sub *prev, *next;
    struct node *node;
    struct hd_subscriber *owner;
    bool rest; /* on node->rest (the pattern ended in `>`) rather than node->exact */
    char pattern[];
};

struct hd_registry {
    struct node *root;
    uint64_t gen;
    uint64_t key[2];
    size_t nsubs;
    size_t nnodes;       /* excluding the root */
    unsigned fail_after; /* fault injection for tests: 0 off, n: the n-th allocation fails */
};

/* ---- keyed hash ---------------------------------------------------------------------- */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                   \
    do {                                                                                           \
        v0 += v1;                                                                                  \
        v1 = ROTL(v1, 13);                                                                         \
        v1 ^= v0;                                                                                  \
        v0 = ROTL(v0, 32);                                                                         \
        v2 += v3;                                                                                  \
        v3 = ROTL(v3, 16);                                                                         \
        v3 ^= v2;                                                                                  \
        v0 += v3;                                                                                  \
        v3 = ROTL(v3, 21);                                                                         \
        v3 ^= v0;                                                                                  \
        v2 += v1;                                                                                  \
        v1 = ROTL(v1, 17);                                                                         \
        v1 ^= v2;                                                                                  \
        v2 = ROTL(v2, 32);                                                                         \
    } while (0)

/* SipHash-1-3 (as in redis' dict), little-endian loads so the result is portable. */
static uint64_t seg_hash(const uint64_t key[2], const char *s, size_t len)
{
    const unsigned char *in = (const unsigned char *)s;
    uint64_t v0 = 0x736f6d6570736575ULL ^ key[0], v1 = 0x646f72616e646f6dULL ^ key[1];
    uint64_t v2 = 0x6c7967656e657261ULL ^ key[0], v3 = 0x7465646279746573ULL ^ key[1];
    uint64_t m;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        m = 0;
        for (int k = 0; k < 8; k++)
            m |= (uint64_t)in[i + k] << (8 * k);
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
    }
    m = (uint64_t)len << 56;
    for (int k = 0; i + (size_t)k < len; k++)
        m |= (uint64_t)in[i + (size_t)k] << (8 * k);
    v3 ^= m;
    SIPROUND;
    v0 ^= m;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

static void seed_key(struct hd_registry *reg)
{
    if (getrandom(reg->key, sizeof(reg->key), GRND_NONBLOCK) == (ssize_t)sizeof(reg->key))
        return;
    /* Early boot without entropy: weaker, but matching still works; only flooding suffers. */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    reg->key[0] = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ULL ^ (uint64_t)(uintptr_t)reg;
    reg->key[1] = (uint64_t)ts.tv_sec * 0xbf58476d1ce4e5b9ULL ^ (uint64_t)(uintptr_t)&ts;
}

/* ---- allocation and child tables ----------------------------------------------------- */

static void *reg_calloc(struct hd_registry *reg, size_t n, size_t size)
{
    if (reg->fail_after && --reg->fail_after == 0)
        return NULL;
    return calloc(n, size);
}

static void table_put(struct node **slots, uint32_t cap, struct node *child)
{
    uint32_t mask = cap - 1, i = (uint32_t)child->hash & mask;
    while (slots[i])
        i = (i + 1) & mask;
    slots[i] = child;
}

/* Rehashes `n`'s children into a table of `cap` slots. Returns false (table unchanged) on OOM. */
static bool table_resize(struct hd_registry *reg, struct node *n, uint32_t cap)
{
    struct node **slots = reg_calloc(reg, cap, sizeof(*slots));
    if (!slots)
        return false;
    for (uint32_t i = 0; i < n->cap; i++)
        if (n->slots[i])
            table_put(slots, cap, n->slots[i]);
    free(n->slots);
    n->slots = slots;
    n->cap = cap;
    return true;
}

static struct node *table_find(const struct node *n, const char *seg, size_t len, uint64_t hash)
{
    if (!n->cap)
        return NULL;
    uint32_t mask = n->cap - 1;
    /* The load factor stays <= 3/4, so an empty slot ends every probe. */
    for (uint32_t i = (uint32_t)hash & mask; n->slots[i]; i = (i + 1) & mask) {
        const struct node *c = n->slots[i];
        if (c->hash == hash && c->seglen == len && memcmp(c->seg, seg, len) == 0)
            return n->slots[i];
    }
    return NULL;
}

/* Backward-shift deletion keeps linear probing free of tombstones. */
static void table_del(struct hd_registry *reg, struct node *n, struct node *child)
{
    uint32_t mask = n->cap - 1, i = (uint32_t)child->hash & mask;
    while (n->slots[i] != child)
        i = (i + 1) & mask;
    for (uint32_t j = (i + 1) & mask; n->slots[j]; j = (j + 1) & mask) {
        uint32_t home = (uint32_t)n->slots[j]->hash & mask;
        /* Move slots[j] into the hole at i unless its home lies cyclically in (i, j]. */
        bool stays = i < j ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            n->slots[i] = n->slots[j];
            i = j;
        }
    }
    n->slots[i] = NULL;
    if (--n->nkids == 0) {
        free(n->slots);
        n->slots = NULL;
        n->cap = 0;
    } else if (n->cap > 8 && n->nkids * 8 <= n->cap) {
        (void)table_resize(reg, n, n->cap / 4); /* on OOM the bigger table simply stays */
    }
}

static bool node_empty(const struct node *n)
{
    return !n->exact && !n->rest && !n->star && n->nkids == 0;
}

/* Frees `n` and each ancestor left empty, stopping at the root or a node still in use. */
static void prune(struct hd_registry *reg, struct node *n)
{
    while (n != reg->root && node_empty(n)) {
        struct node *parent = n->parent;
        if (parent->star == n)
            parent->star = NULL;
        else
            table_del(reg, parent, n);
        free(n);
        reg->nnodes--;
        n = parent;
    }
}

static struct node *node_new(struct hd_registry *reg, struct node *parent, const char *seg,
                             size_t len, uint64_t hash)
{
    struct node *n = reg_calloc(reg, 1, sizeof(*n) + len + 1);
    if (!n)
        return NULL;
    *n = (struct node){.parent = parent, .hash = hash, .seglen = len};
    memcpy(n->seg, seg, len);
    n->seg[len] = '\0';
    reg->nnodes++;
    return n;
}

/* Finds or creates the child of `n` for segment `seg`. Returns NULL on OOM (`n` unchanged). */
static struct node *child_get(struct hd_registry *reg, struct node *n, const char *seg, size_t len)
{
    if (len == 1 && seg[0] == '*') {
        if (!n->star)
            n->star = node_new(reg, n, seg, len, 0);
        return n->star;
    }
    uint64_t hash = seg_hash(reg->key, seg, len);
    struct node *c = table_find(n, seg, len, hash);
    if (c)
        return c;
    c = node_new(reg, n, seg, len, hash);
    if (!c)
        return NULL;
    if ((uint64_t)(n->nkids + 1) * 4 > (uint64_t)n->cap * 3 &&
        !table_resize(reg, n, n->cap ? n->cap * 2 : 4)) {
        free(c);
        reg->nnodes--;
        return NULL;
    }
    table_put(n->slots, n->cap, c);
    n->nkids++;
    return c;
}

static void free_subtree(struct node *n)
{
    for (struct hd_sub *s = n->exact, *next; s; s = next) {
        next = s->next;
        free(s);
    }
    for (struct hd_sub *s = n->rest, *next; s; s = next) {
        next = s->next;
        free(s);
    }
    if (n->star)
        free_subtree(n->star);
    for (uint32_t i = 0; i < n->cap; i++)
        if (n->slots[i])
            free_subtree(n->slots[i]);
    free(n->slots);
    free(n);
}

/* ---- public API ---------------------------------------------------------------------- */

struct hd_registry *hd_registry_new(void)
{
    struct hd_registry *reg = calloc(1, sizeof(*reg));
    if (!reg)
        return NULL;
    reg->root = calloc(1, sizeof(*reg->root));
    if (!reg->root) {
        free(reg);
        return NULL;
    }
    seed_key(reg);
    return reg;
}

void hd_registry_free(struct hd_registry *reg)
{
    if (!reg)
        return;
    free_subtree(reg->root);
    free(reg);
}

static const char *seg_end(const char *s)
{
    while (*s && *s != '.')
        s++;
    return s;
}

struct hd_sub *hd_registry_add(struct hd_registry *reg, const char *pattern,
                               struct hd_subscriber *owner)
{
    size_t len = strnlen(pattern, HD_TOPIC_MAX + 1);
    if (hd_pattern_check(pattern, len) != 0)
        return NULL; /* a caller bug; refusing keeps the trie's invariants */
    struct hd_sub *sub = reg_calloc(reg, 1, sizeof(*sub) + len + 1);
    if (!sub)
        return NULL;
    memcpy(sub->pattern, pattern, len + 1);

    struct node *n = reg->root;
    const char *p = sub->pattern;
    for (;;) {
        const char *e = seg_end(p);
        if (e - p == 1 && *p == '>') {
            sub->rest = true;
            break;
        }
        struct node *c = child_get(reg, n, p, (size_t)(e - p));
        if (!c) {
            prune(reg, n); /* removes only the nodes this call created: they are empty */
            free(sub);
            return NULL;
        }
        n = c;
        if (!*e)
            break;
        p = e + 1;
    }

    struct hd_sub **head = sub->rest ? &n->rest : &n->exact;
    sub->node = n;
    sub->owner = owner;
    sub->next = *head;
    if (*head)
        (*head)->prev = sub;
    *head = sub;
    reg->nsubs++;
    return sub;
}

void hd_registry_remove(struct hd_registry *reg, struct hd_sub *sub)
{
    if (!sub)
        return;
    struct node *n = sub->node;
    if (sub->prev)
        sub->prev->next = sub->next;
    else if (sub->rest)
        n->rest = sub->next;
    else
        n->exact = sub->next;
    if (sub->next)
        sub->next->prev = sub->prev;
    free(sub);
    reg->nsubs--;
    prune(reg, n);
}

const char *hd_sub_pattern(const struct hd_sub *sub)
{
    return sub->pattern;
}

struct seg {
    const char *s;
    size_t len;
    uint64_t hash;
};

struct walk {
    const struct seg *segs;
    size_t nsegs;
    uint64_t gen;
    hd_match_fn fn;
    void *arg;
    size_t owners;
};

static void deliver(struct walk *w, const struct hd_sub *s)
{
    for (; s; s = s->next) {
        if (s->owner->match_gen == w->gen)
            continue;
        s->owner->match_gen = w->gen;
        w->owners++;
        w->fn(s->owner, w->arg);
    }
}

/* Recursion depth is bounded by HD_TOPIC_MAX_SEGMENTS. */
static void walk(struct walk *w, const struct node *n, size_t i)
{
    if (i == w->nsegs) {
        deliver(w, n->exact);
        return;
    }
    bool guard = i == 0 && w->segs[0].s[0] == '$'; /* no leading wildcard for `$` topics */
    if (!guard)
        deliver(w, n->rest);
    const struct seg *sg = &w->segs[i];
    const struct node *c = table_find(n, sg->s, sg->len, sg->hash);
    if (c)
        walk(w, c, i + 1);
    if (n->star && !guard)
        walk(w, n->star, i + 1);
}

size_t hd_registry_match(struct hd_registry *reg, const char *topic, hd_match_fn fn, void *arg)
{
    struct seg segs[HD_TOPIC_MAX_SEGMENTS];
    size_t nsegs = 0;
    const char *p = topic;
    /* The topic is valid by contract; the bounds only keep a bad one from overrunning. */
    for (;;) {
        const char *e = seg_end(p);
        if (nsegs == HD_TOPIC_MAX_SEGMENTS || e == p)
            return 0;
        segs[nsegs++] = (struct seg){.s = p, .len = (size_t)(e - p)};
        if (!*e)
            break;
        p = e + 1;
    }
    if (!reg->root->cap && !reg->root->star && !reg->root->rest)
        return 0; /* nothing subscribed: skip hashing the segments */
    for (size_t i = 0; i < nsegs; i++)
        segs[i].hash = seg_hash(reg->key, segs[i].s, segs[i].len);

    struct walk w = {
        .segs = segs,
        .nsegs = nsegs,
        .gen = ++reg->gen,
        .fn = fn,
        .arg = arg,
    };
    walk(&w, reg->root, 0);
    return w.owners;
}

size_t hd_registry_count(const struct hd_registry *reg)
{
    return reg->nsubs;
}

size_t hd_registry_node_count(const struct hd_registry *reg)
{
    return reg->nnodes;
}

void hd_registry_fail_alloc_after(struct hd_registry *reg, unsigned n)
{
    reg->fail_after = n;
}
