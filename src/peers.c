/* SPDX-License-Identifier: MIT */
/*
 * Per-address connection counts: a chained hash table keyed by the (masked) address bytes.
 * Entries are individually allocated so the pointer handed to a connection stays valid
 * while the table grows; the bucket array only grows, bounded by the peak number of
 * distinct peers.
 */
#include "peers.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct hd_peer {
    struct hd_peer *next;
    struct hd_peer_addr addr;
    uint32_t hash;
    uint32_t count;
};

struct hd_peers {
    struct hd_peer **buckets;
    size_t n_buckets; /* a power of two */
    size_t n;
};

int hd_peer_addr_from(struct hd_peer_addr *out, const struct sockaddr *sa, socklen_t len)
{
    memset(out, 0, sizeof(*out));
    if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        out->family = 4;
        memcpy(out->bytes, &in->sin_addr, 4);
        return 0;
    }
    if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
            out->family = 4;
            memcpy(out->bytes, in6->sin6_addr.s6_addr + 12, 4);
            return 0;
        }
        out->family = 6;
        memcpy(out->bytes, in6->sin6_addr.s6_addr, 8); /* the /64; the rest stays zero */
        return 0;
    }
    return -EAFNOSUPPORT;
}

void hd_peer_addr_format(const struct hd_peer_addr *a, char *out, size_t cap)
{
    char text[INET6_ADDRSTRLEN];
    if (!cap)
        return;
    if (!inet_ntop(a->family == 4 ? AF_INET : AF_INET6, a->bytes, text, sizeof(text)))
        snprintf(text, sizeof(text), "?");
    snprintf(out, cap, "%s%s", text, a->family == 6 ? "/64" : "");
}

static uint32_t addr_hash(const struct hd_peer_addr *a)
{
    uint32_t h = 2166136261u ^ a->family; /* FNV-1a */
    for (size_t i = 0; i < sizeof(a->bytes); i++)
        h = (h ^ a->bytes[i]) * 16777619u;
    return h;
}

static bool addr_eq(const struct hd_peer_addr *x, const struct hd_peer_addr *y)
{
    return x->family == y->family && memcmp(x->bytes, y->bytes, sizeof(x->bytes)) == 0;
}

struct hd_peers *hd_peers_new(void)
{
    struct hd_peers *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->n_buckets = 64;
    p->buckets = calloc(p->n_buckets, sizeof(*p->buckets));
    if (!p->buckets) {
        free(p);
        return NULL;
    }
    return p;
}

void hd_peers_free(struct hd_peers *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->n_buckets; i++)
        for (struct hd_peer *e = p->buckets[i], *next; e; e = next) {
            next = e->next;
            free(e);
        }
    free(p->buckets);
    free(p);
}

static struct hd_peer *find(const struct hd_peers *p, const struct hd_peer_addr *a, uint32_t h)
{
    for (struct hd_peer *e = p->buckets[h & (p->n_buckets - 1)]; e; e = e->next)
        if (e->hash == h && addr_eq(&e->addr, a))
            return e;
    return NULL;
}

uint32_t hd_peers_count(const struct hd_peers *p, const struct hd_peer_addr *a)
{
    const struct hd_peer *e = find(p, a, addr_hash(a));
    return e ? e->count : 0;
}

/* Doubles the bucket array; on allocation failure the table just stays denser. */
static void grow(struct hd_peers *p)
{
    size_t nb = p->n_buckets * 2;
    struct hd_peer **b = calloc(nb, sizeof(*b));
    if (!b)
        return;
    for (size_t i = 0; i < p->n_buckets; i++)
        for (struct hd_peer *e = p->buckets[i], *next; e; e = next) {
            next = e->next;
            e->next = b[e->hash & (nb - 1)];
            b[e->hash & (nb - 1)] = e;
        }
    free(p->buckets);
    p->buckets = b;
    p->n_buckets = nb;
}

struct hd_peer *hd_peers_acquire(struct hd_peers *p, const struct hd_peer_addr *a, uint32_t limit,
                                 bool *refused)
{
    *refused = false;
    uint32_t h = addr_hash(a);
    struct hd_peer *e = find(p, a, h);
    if (e) {
        if (limit && e->count >= limit) {
            *refused = true;
            return NULL;
        }
        e->count++;
        return e;
    }
    e = calloc(1, sizeof(*e));
    if (!e)
        return NULL;
    e->addr = *a;
    e->hash = h;
    e->count = 1;
    if (p->n >= p->n_buckets)
        grow(p);
    struct hd_peer **slot = &p->buckets[h & (p->n_buckets - 1)];
    e->next = *slot;
    *slot = e;
    p->n++;
    return e;
}

void hd_peers_release(struct hd_peers *p, struct hd_peer *e)
{
    if (!e || --e->count)
        return;
    for (struct hd_peer **pp = &p->buckets[e->hash & (p->n_buckets - 1)]; *pp; pp = &(*pp)->next)
        if (*pp == e) {
            *pp = e->next;
            p->n--;
            free(e);
            return;
        }
}

size_t hd_peers_size(const struct hd_peers *p)
{
    return p->n;
}

const struct hd_peer_addr *hd_peer_addr_of(const struct hd_peer *e)
{
    return &e->addr;
}
