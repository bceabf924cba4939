/* SPDX-License-Identifier: MIT */
/*
 * rawfan: the "raw epoll fan-out server, no features" of performance issue #7, the floor that
 * Herald's fan-out is measured against in compare.sh. One thread, one level-triggered epoll
 * loop, loopback only. It speaks exactly the part of Herald protocol v1 that `loadgen --target
 * herald` uses (WebSocket /v1/ws with subscribe and publish, HTTP POST /v1/topics/{topic}),
 * keeps topic -> subscriber lists for exact topics, encodes each event once and hands it to
 * each subscriber with one write(); what the kernel does not take is queued per connection, in
 * order, and flushed on EPOLLOUT. No history, patterns, auth, heartbeats or limits beyond
 * bounded parsers and a per-connection backlog cap.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_HEAD 8192                 /* HTTP request head */
#define MAX_EVENT 65536               /* event data, as Herald's default max_event_bytes */
#define MAX_FRAME (MAX_EVENT + 16384) /* client frame payload, as Herald */
#define MAX_BODY MAX_EVENT            /* HTTP publish body */
#define MAX_BACKLOG (16u << 20)       /* queued output per connection: over it, close */
#define MAX_SUBS 64                   /* topics per connection */
#define READ_CHUNK (64u << 10)        /* one read() */
#define RBUF_CAP (256u << 10)         /* carry (less than one request or frame) + a read */
#define JSON_DEPTH 32
_Static_assert(RBUF_CAP >= 14 + MAX_FRAME + READ_CHUNK, "read buffer too small");
_Static_assert(RBUF_CAP >= MAX_HEAD + MAX_BODY + READ_CHUNK, "read buffer too small");

enum { ST_HTTP, ST_WS };

struct topic;
struct csub {
    struct topic *t;
    uint32_t idx; /* position of the connection in t->subs */
};

struct conn {
    int fd;
    uint8_t state;
    bool dead, closing, want_out;
    struct conn *prev, *next, *next_dead;
    unsigned char *in; /* bytes of an unfinished request or frame, carried between reads */
    size_t in_len;
    unsigned char *out; /* backlog: out[out_off..out_len) is still to be written */
    size_t out_off, out_len, out_cap;
    struct csub *subs;
    uint16_t nsubs, subs_cap;
};

struct topic {
    struct topic *next;
    uint32_t hash, nsubs, cap;
    struct conn **subs;
    size_t len;
    char name[];
};

struct span {
    const char *p;
    size_t n;
};

static struct {
    int ep, lfd;
    struct conn *conns, *dead;
    struct topic **buckets;
    size_t nbuckets, ntopics;
    uint64_t seq, frames, slow_closed;
    unsigned char rbuf[RBUF_CAP];
    unsigned char ebuf[MAX_EVENT + 1024]; /* the event frame being fanned out */
    bool accept_paused;
} G;

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
    stop_flag = sig;
}

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n);
    if (!q) {
        fprintf(stderr, "rawfan: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return q;
}

/* ---- connections and output ---- */

static void set_out(struct conn *c, bool on)
{
    if (c->want_out == on)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(G.ep, EPOLL_CTL_MOD, c->fd, &ev) == 0)
        c->want_out = on;
}

/* Marks c for closing at the end of this epoll batch, so lists being walked stay intact. */
static void conn_kill(struct conn *c)
{
    if (c->dead)
        return;
    c->dead = true;
    c->next_dead = G.dead;
    G.dead = c;
}

/*
 * The one write() per connection and message. With a backlog, the bytes join it instead (a
 * write now would overtake it). What the kernel does not take is queued for EPOLLOUT.
 */
static void conn_send(struct conn *c, const void *data, size_t len)
{
    const unsigned char *p = data;
    if (c->dead)
        return;
    if (c->out_len == c->out_off) {
        ssize_t n = write(c->fd, p, len);
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR) {
                conn_kill(c);
                return;
            }
            n = 0;
        }
        if ((size_t)n == len)
            return;
        p += n;
        len -= (size_t)n;
        c->out_off = c->out_len = 0;
    }
    size_t queued = c->out_len - c->out_off;
    if (queued + len > MAX_BACKLOG) {
        G.slow_closed++;
        conn_kill(c);
        return;
    }
    if (c->out_off && c->out_len + len > c->out_cap) {
        memmove(c->out, c->out + c->out_off, queued);
        c->out_off = 0;
        c->out_len = queued;
    }
    if (c->out_len + len > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 4096;
        while (cap < c->out_len + len)
            cap *= 2;
        c->out = xrealloc(c->out, cap);
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, p, len);
    c->out_len += len;
    set_out(c, true);
}

static void conn_flush(struct conn *c)
{
    ssize_t n = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR)
            conn_kill(c);
        return;
    }
    c->out_off += (size_t)n;
    if (c->out_off < c->out_len)
        return;
    c->out_off = c->out_len = 0;
    if (c->out_cap > (256u << 10)) { /* a burst is over: do not keep its memory */
        free(c->out);
        c->out = NULL;
        c->out_cap = 0;
    }
    set_out(c, false);
    if (c->closing)
        conn_kill(c);
}

/* Sends what is left to say and closes once it is written; later input is ignored. */
static void conn_close_after(struct conn *c, const void *data, size_t len)
{
    conn_send(c, data, len);
    c->closing = true;
    if (c->out_len == c->out_off)
        conn_kill(c);
}

/* ---- topics: exact names, chained hash table, subscriber arrays ---- */

static uint32_t fnv1a(const char *p, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 16777619u;
    return h;
}

static struct topic **topic_slot(const char *name, size_t len, uint32_t h)
{
    struct topic **pp = &G.buckets[h & (G.nbuckets - 1)];
    while (*pp && ((*pp)->hash != h || (*pp)->len != len || memcmp((*pp)->name, name, len)))
        pp = &(*pp)->next;
    return pp;
}

static struct topic *topic_find(const char *name, size_t len)
{
    return *topic_slot(name, len, fnv1a(name, len));
}

static struct topic *topic_get(const char *name, size_t len)
{
    uint32_t h = fnv1a(name, len);
    struct topic **pp = topic_slot(name, len, h);
    if (*pp)
        return *pp;
    struct topic *t = xrealloc(NULL, sizeof(*t) + len);
    *t = (struct topic){.hash = h, .len = len};
    memcpy(t->name, name, len);
    *pp = t;
    if (++G.ntopics > G.nbuckets) { /* keep chains short: double and rehash */
        size_t nb = G.nbuckets * 2;
        struct topic **b = calloc(nb, sizeof(*b));
        if (!b)
            return t; /* longer chains, still correct */
        for (size_t i = 0; i < G.nbuckets; i++) {
            for (struct topic *x = G.buckets[i], *nx; x; x = nx) {
                nx = x->next;
                x->next = b[x->hash & (nb - 1)];
                b[x->hash & (nb - 1)] = x;
            }
        }
        free(G.buckets);
        G.buckets = b;
        G.nbuckets = nb;
    }
    return t;
}

/* Adds c to topic `name`; 0, or -EEXIST (already subscribed) or -ENOSPC (MAX_SUBS). */
static int topic_subscribe(struct conn *c, const char *name, size_t len)
{
    for (unsigned i = 0; i < c->nsubs; i++)
        if (c->subs[i].t->len == len && memcmp(c->subs[i].t->name, name, len) == 0)
            return -EEXIST;
    if (c->nsubs == MAX_SUBS)
        return -ENOSPC; /* checked first: an empty topic would never be freed */
    struct topic *t = topic_get(name, len);
    if (c->nsubs == c->subs_cap) {
        c->subs_cap = c->subs_cap ? c->subs_cap * 2 : 1;
        c->subs = xrealloc(c->subs, c->subs_cap * sizeof(*c->subs));
    }
    if (t->nsubs == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 4;
        t->subs = xrealloc(t->subs, t->cap * sizeof(*t->subs));
    }
    c->subs[c->nsubs++] = (struct csub){.t = t, .idx = t->nsubs};
    t->subs[t->nsubs++] = c;
    return 0;
}

/* Removes every subscription of c (swap-remove; each subscriber's own order is kept). */
static void topic_unsubscribe_all(struct conn *c)
{
    for (unsigned i = 0; i < c->nsubs; i++) {
        struct topic *t = c->subs[i].t;
        uint32_t idx = c->subs[i].idx;
        struct conn *last = t->subs[--t->nsubs];
        t->subs[idx] = last;
        for (unsigned j = 0; last != c && j < last->nsubs; j++)
            if (last->subs[j].t == t)
                last->subs[j].idx = idx;
        if (t->nsubs == 0) {
            struct topic **pp = topic_slot(t->name, t->len, t->hash);
            *pp = t->next;
            G.ntopics--;
            free(t->subs);
            free(t);
        }
    }
    free(c->subs);
    c->subs = NULL;
    c->nsubs = c->subs_cap = 0;
}

/* Topic syntax of PROTOCOL.md section 1, exact topics only (no patterns). */
static bool topic_valid(const char *p, size_t n)
{
    if (n < 1 || n > 255 || p[0] == '.' || p[n - 1] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = p[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '_' || ch == '-' || ch == ':' || ch == '@' ||
                  (ch == '.' && p[i + 1] != '.');
        if (!ok)
            return false;
    }
    return p[0] != '$';
}

/* ---- WebSocket frames (server side: unmasked out, masked in) ---- */

static size_t ws_hdr(unsigned char *h, int op, size_t len)
{
    h[0] = (unsigned char)(0x80 | op);
    if (len < 126) {
        h[1] = (unsigned char)len;
        return 2;
    }
    if (len <= 0xffff) {
        h[1] = 126;
        h[2] = (unsigned char)(len >> 8);
        h[3] = (unsigned char)len;
        return 4;
    }
    h[1] = 127;
    for (int i = 0; i < 8; i++)
        h[2 + i] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
    return 10;
}

/* One small frame (replies, control frames): payload of at most 1000 bytes. */
static void ws_send(struct conn *c, int op, const void *payload, size_t len)
{
    unsigned char f[1024];
    size_t hl = ws_hdr(f, op, len);
    memcpy(f + hl, payload, len);
    conn_send(c, f, hl + len);
}

static void ws_close(struct conn *c, unsigned code)
{
    unsigned char f[4] = {0x88, 2, (unsigned char)(code >> 8), (unsigned char)code};
    conn_close_after(c, f, sizeof(f));
}

/* ---- minimal JSON: skip one value, read a top-level object's keys ---- */

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

static const char *skip_string(const char *p, const char *end)
{
    for (p++; p < end; p++) {
        if (*p == '"')
            return p + 1;
        if ((unsigned char)*p < 0x20)
            return NULL;
        if (*p == '\\' && ++p == end)
            return NULL;
    }
    return NULL;
}

/* Returns the end of the JSON value at p, or NULL if it is not one (structure only). */
static const char *skip_value(const char *p, const char *end, int depth)
{
    if (p >= end || depth > JSON_DEPTH)
        return NULL;
    if (*p == '"')
        return skip_string(p, end);
    if (*p == '{' || *p == '[') {
        char close = *p == '{' ? '}' : ']';
        p = skip_ws(p + 1, end);
        if (p < end && *p == close)
            return p + 1;
        for (;;) {
            if (close == '}') {
                if (p >= end || *p != '"' || !(p = skip_string(p, end)))
                    return NULL;
                p = skip_ws(p, end);
                if (p >= end || *p != ':')
                    return NULL;
                p = skip_ws(p + 1, end);
            }
            if (!(p = skip_value(p, end, depth + 1)))
                return NULL;
            p = skip_ws(p, end);
            if (p < end && *p == close)
                return p + 1;
            if (p >= end || *p != ',')
                return NULL;
            p = skip_ws(p + 1, end);
        }
    }
    static const char *const lits[] = {"true", "false", "null"};
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(lits[i]);
        if ((size_t)(end - p) >= n && memcmp(p, lits[i], n) == 0)
            return p + n;
    }
    const char *s = p;
    while (p < end && *p && strchr("0123456789+-.eE", *p))
        p++;
    return p > s && (*s == '-' || (*s >= '0' && *s <= '9')) ? p : NULL;
}

/* The values of "op", "id", "topic" and "data" in a command; the rest is skipped. */
struct cmd {
    struct span op, id, topic, data;
};

static int parse_cmd(const char *p, const char *end, struct cmd *m)
{
    *m = (struct cmd){0};
    p = skip_ws(p, end);
    if (p >= end || *p != '{')
        return -EPROTO;
    p = skip_ws(p + 1, end);
    if (p < end && *p == '}')
        return skip_ws(p + 1, end) == end ? 0 : -EPROTO;
    for (;;) {
        if (p >= end || *p != '"')
            return -EPROTO;
        const char *k = p + 1, *ke = skip_string(p, end);
        if (!ke)
            return -EPROTO;
        size_t kl = (size_t)(ke - 1 - k);
        p = skip_ws(ke, end);
        if (p >= end || *p != ':')
            return -EPROTO;
        const char *v = skip_ws(p + 1, end), *ve = skip_value(v, end, 1);
        if (!ve)
            return -EPROTO;
        struct span *dst = kl == 2 && !memcmp(k, "op", 2)      ? &m->op
                           : kl == 2 && !memcmp(k, "id", 2)    ? &m->id
                           : kl == 5 && !memcmp(k, "topic", 5) ? &m->topic
                           : kl == 4 && !memcmp(k, "data", 4)  ? &m->data
                                                               : NULL;
        if (dst)
            *dst = (struct span){v, (size_t)(ve - v)};
        p = skip_ws(ve, end);
        if (p < end && *p == '}')
            return skip_ws(p + 1, end) == end ? 0 : -EPROTO;
        if (p >= end || *p != ',')
            return -EPROTO;
        p = skip_ws(p + 1, end);
    }
}

/* A string value without escapes, quotes stripped (topics and ops never need escapes). */
static bool plain_string(struct span v, struct span *out)
{
    if (v.n < 2 || v.p[0] != '"' || memchr(v.p, '\\', v.n))
        return false;
    *out = (struct span){v.p + 1, v.n - 2};
    return true;
}

static bool span_is(struct span s, const char *lit)
{
    return s.n == strlen(lit) && memcmp(s.p, lit, s.n) == 0;
}

/* ---- publish: encode once, one write() per subscriber ---- */

static size_t put(unsigned char *p, const void *s, size_t n)
{
    memcpy(p, s, n);
    return n;
}

/* Fans data (one JSON value) out to topic's subscribers; returns how many got it. */
static uint32_t publish(struct span topic, struct span data, char id[17], long long *time_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    *time_ms = (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    snprintf(id, 17, "%016" PRIx64, G.seq++);
    struct topic *t = topic_find(topic.p, topic.n);
    if (!t)
        return 0;

    unsigned char *pl = G.ebuf + 10, *f;
    char num[32];
    size_t n = 0;
    n += put(pl + n, "{\"type\":\"event\",\"topic\":\"", 25);
    n += put(pl + n, topic.p, topic.n);
    n += put(pl + n, "\",\"id\":\"", 8);
    n += put(pl + n, id, 16);
    n += put(pl + n, num, (size_t)snprintf(num, sizeof(num), "\",\"time\":%lld", *time_ms));
    n += put(pl + n, ",\"event\":\"message\",\"data\":", 26);
    n += put(pl + n, data.p, data.n);
    pl[n++] = '}';
    unsigned char h[10];
    size_t hl = ws_hdr(h, 0x1, n);
    f = pl - hl;
    memcpy(f, h, hl);

    uint32_t receivers = 0;
    for (uint32_t i = 0; i < t->nsubs; i++) {
        struct conn *s = t->subs[i];
        if (s->dead || s->closing)
            continue;
        conn_send(s, f, hl + n);
        receivers++;
    }
    G.frames += receivers;
    return receivers;
}

/* ---- WebSocket commands ---- */

/* The id to echo: the integer as sent, or null. */
static struct span reply_id(struct span id)
{
    size_t i = id.n && id.p[0] == '-';
    bool ok = id.n > i && id.n - i <= 19;
    for (size_t j = i; ok && j < id.n; j++)
        ok = id.p[j] >= '0' && id.p[j] <= '9';
    return ok ? id : (struct span){"null", 4};
}

static void ws_error(struct conn *c, struct span id, const char *code, const char *msg)
{
    char b[400];
    int n = snprintf(b, sizeof(b),
                     "{\"type\":\"error\",\"id\":%.*s,\"code\":\"%s\",\"message\":\"%s\"}",
                     (int)id.n, id.p, code, msg);
    ws_send(c, 0x1, b, (size_t)n);
}

static void ws_command(struct conn *c, const char *p, size_t len)
{
    struct cmd m;
    struct span op, topic, id = {"null", 4};
    char b[600];
    if (parse_cmd(p, p + len, &m) < 0) {
        ws_error(c, id, "bad_request", "not a JSON object");
        return;
    }
    id = reply_id(m.id);
    if (!plain_string(m.op, &op)) {
        ws_error(c, id, "bad_request", "op missing");
        return;
    }
    bool sub = span_is(op, "subscribe"), pub = span_is(op, "publish");
    if (!sub && !pub) {
        ws_error(c, id, "unknown_op", "rawfan knows subscribe and publish only");
        return;
    }
    if (!plain_string(m.topic, &topic) || !topic_valid(topic.p, topic.n)) {
        ws_error(c, id, "invalid_topic", "exact topics only");
        return;
    }
    int n;
    if (sub) {
        if (topic_subscribe(c, topic.p, topic.n) == -ENOSPC) {
            ws_error(c, id, "limit_exceeded", "too many subscriptions");
            return;
        }
        n = snprintf(b, sizeof(b),
                     "{\"type\":\"ok\",\"id\":%.*s,\"topic\":\"%.*s\",\"replayed\":0,"
                     "\"gap\":false}",
                     (int)id.n, id.p, (int)topic.n, topic.p);
    } else {
        if (!m.data.p || m.data.n > MAX_EVENT) {
            ws_error(c, id, m.data.p ? "too_large" : "bad_request", "data missing or too large");
            return;
        }
        char eid[17];
        long long ms;
        uint32_t r = publish(topic, m.data, eid, &ms);
        n = snprintf(b, sizeof(b),
                     "{\"type\":\"ok\",\"id\":%.*s,\"event_id\":\"%s\",\"receivers\":%u}",
                     (int)id.n, id.p, eid, r);
    }
    ws_send(c, 0x1, b, (size_t)n);
}

/* Handles whole client frames in buf; returns the bytes used, or -1 when c is closing. */
static ssize_t ws_consume(struct conn *c, unsigned char *buf, size_t len)
{
    size_t off = 0;
    while (off < len && !c->closing && !c->dead) {
        unsigned char *b = buf + off;
        size_t avail = len - off, hl = 2;
        if (avail < 2)
            break;
        int op = b[0] & 0x0f;
        bool fin = b[0] & 0x80;
        uint64_t pl = b[1] & 0x7f;
        if ((b[0] & 0x70) || !(b[1] & 0x80)) { /* reserved bits, or an unmasked client frame */
            ws_close(c, 1002);
            return -1;
        }
        if (pl == 126) {
            if (avail < 4)
                break;
            pl = (uint64_t)b[2] << 8 | b[3];
            hl = 4;
        } else if (pl == 127) {
            if (avail < 10)
                break;
            pl = 0;
            for (int i = 0; i < 8; i++)
                pl = pl << 8 | b[2 + i];
            hl = 10;
        }
        if (pl > MAX_FRAME) {
            ws_close(c, 1009);
            return -1;
        }
        if ((op & 0x8) && (!fin || pl > 125)) {
            ws_close(c, 1002);
            return -1;
        }
        if (avail < hl + 4 + pl)
            break;
        unsigned char *mk = b + hl, *d = b + hl + 4;
        for (uint64_t i = 0; i < pl; i++)
            d[i] ^= mk[i & 3];
        off += hl + 4 + (size_t)pl;
        switch (op) {
        case 0x1:
            if (fin) {
                ws_command(c, (const char *)d, (size_t)pl);
                break;
            }
            __attribute__((fallthrough)); /* fragmented messages are not supported */
        case 0x0:
        case 0x2:
            ws_close(c, 1003);
            return -1;
        case 0x8: { /* echo the code, then close */
            unsigned char f[4] = {0x88, 0};
            if (pl >= 2) {
                f[1] = 2;
                f[2] = d[0];
                f[3] = d[1];
            }
            conn_close_after(c, f, pl >= 2 ? 4 : 2);
            return -1;
        }
        case 0x9:
            ws_send(c, 0xA, d, (size_t)pl);
            break;
        case 0xA:
            break;
        default:
            ws_close(c, 1002);
            return -1;
        }
    }
    return (ssize_t)off;
}

/* ---- HTTP: the upgrade and POST /v1/topics/{topic} ---- */

struct req {
    struct span method, path, key;
    bool http10, conn_close, keep_alive, conn_upgrade, upgrade_ws, proto_ok, chunked;
    long long content_length;
    size_t head_len;
};

/* Whether the comma-separated header value v holds `tok` (case-insensitive). */
static bool has_token(const char *v, size_t n, const char *tok)
{
    size_t tl = strlen(tok), i = 0;
    while (i < n) {
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t s = i;
        while (i < n && v[i] != ',')
            i++;
        size_t e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
            e--;
        if (e - s == tl && strncasecmp(v + s, tok, tl) == 0)
            return true;
    }
    return false;
}

static bool name_is(const char *p, size_t n, const char *want)
{
    return n == strlen(want) && strncasecmp(p, want, n) == 0;
}

/* 0 with r filled, -EAGAIN (head incomplete), -EMSGSIZE (head too long), -EPROTO. */
static int parse_req(const char *buf, size_t len, struct req *r)
{
    const char *end = memmem(buf, len < MAX_HEAD ? len : MAX_HEAD, "\r\n\r\n", 4);
    if (!end)
        return len >= MAX_HEAD ? -EMSGSIZE : -EAGAIN;
    *r = (struct req){.content_length = -1, .head_len = (size_t)(end - buf) + 4};
    const char *le = memmem(buf, (size_t)(end - buf) + 2, "\r\n", 2);
    const char *sp1 = memchr(buf, ' ', (size_t)(le - buf));
    const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(le - sp1 - 1)) : NULL;
    if (!sp2 || le - sp2 != 9 || memcmp(sp2 + 1, "HTTP/1.", 7) || (sp2[8] != '0' && sp2[8] != '1'))
        return -EPROTO;
    r->http10 = sp2[8] == '0';
    r->method = (struct span){buf, (size_t)(sp1 - buf)};
    const char *q = memchr(sp1 + 1, '?', (size_t)(sp2 - sp1 - 1));
    r->path = (struct span){sp1 + 1, (size_t)((q ? q : sp2) - sp1 - 1)};
    for (const char *p = le + 2; p < end + 2;) {
        const char *e = memmem(p, (size_t)(end + 2 - p), "\r\n", 2), *colon;
        if (!e || !(colon = memchr(p, ':', (size_t)(e - p))))
            return -EPROTO;
        const char *v = colon + 1, *ve = e;
        while (v < ve && (*v == ' ' || *v == '\t'))
            v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        size_t nl = (size_t)(colon - p), vl = (size_t)(ve - v);
        if (name_is(p, nl, "Connection")) {
            r->conn_close |= has_token(v, vl, "close");
            r->keep_alive |= has_token(v, vl, "keep-alive");
            r->conn_upgrade |= has_token(v, vl, "upgrade");
        } else if (name_is(p, nl, "Upgrade")) {
            r->upgrade_ws |= has_token(v, vl, "websocket");
        } else if (name_is(p, nl, "Sec-WebSocket-Key")) {
            r->key = (struct span){v, vl};
        } else if (name_is(p, nl, "Sec-WebSocket-Protocol")) {
            r->proto_ok |= has_token(v, vl, "herald.v1");
        } else if (name_is(p, nl, "Transfer-Encoding")) {
            r->chunked = true;
        } else if (name_is(p, nl, "Content-Length")) {
            long long cl = 0;
            for (size_t i = 0; i < vl; i++) {
                if (v[i] < '0' || v[i] > '9' || cl > MAX_BODY)
                    return -EPROTO;
                cl = cl * 10 + (v[i] - '0');
            }
            if (vl == 0)
                return -EPROTO;
            r->content_length = cl;
        }
        p = e + 2;
    }
    return 0;
}

static void http_reply(struct conn *c, int status, const char *body, bool close_after)
{
    static const struct {
        int code;
        const char *text;
    } reasons[] = {{202, "Accepted"},          {400, "Bad Request"},
                   {404, "Not Found"},         {411, "Length Required"},
                   {413, "Payload Too Large"}, {431, "Request Header Fields Too Large"}};
    const char *reason = "Error";
    for (size_t i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++)
        if (reasons[i].code == status)
            reason = reasons[i].text;
    char b[1024];
    size_t bl = strlen(body);
    int n = snprintf(b, sizeof(b),
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n%s\r\n%s",
                     status, reason, bl, close_after ? "Connection: close\r\n" : "", body);
    if (close_after)
        conn_close_after(c, b, (size_t)n);
    else
        conn_send(c, b, (size_t)n);
}

static void http_error(struct conn *c, int status, const char *code, const char *msg)
{
    char b[300];
    snprintf(b, sizeof(b), "{\"type\":\"error\",\"code\":\"%s\",\"message\":\"%s\"}", code, msg);
    http_reply(c, status, b, true); /* the rest of the request may be unread: start afresh */
}

static void ws_upgrade(struct conn *c, const struct req *r)
{
    if (!r->upgrade_ws || !r->conn_upgrade || r->key.n == 0 || r->key.n > 64 || !r->proto_ok) {
        http_error(c, 400, "bad_request", "WebSocket upgrade with subprotocol herald.v1 expected");
        return;
    }
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    unsigned char kg[64 + sizeof(guid)], dig[SHA_DIGEST_LENGTH];
    char acc[32], b[512];
    memcpy(kg, r->key.p, r->key.n);
    memcpy(kg + r->key.n, guid, sizeof(guid) - 1);
    SHA1(kg, r->key.n + sizeof(guid) - 1, dig);
    EVP_EncodeBlock((unsigned char *)acc, dig, SHA_DIGEST_LENGTH);
    int n = snprintf(b, sizeof(b),
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n"
                     "Sec-WebSocket-Protocol: herald.v1\r\n\r\n",
                     acc);
    /* The welcome frame rides in the same write as the 101. */
    int w = snprintf(b + n + 2, sizeof(b) - (size_t)n - 2,
                     "{\"type\":\"welcome\",\"session\":\"%d\",\"server\":\"rawfan\","
                     "\"heartbeat\":0,\"max_event_bytes\":%d}",
                     c->fd, MAX_EVENT);
    ws_hdr((unsigned char *)b + n, 0x1, (size_t)w);
    conn_send(c, b, (size_t)n + 2 + (size_t)w);
    c->state = ST_WS;
}

static void http_publish(struct conn *c, const struct req *r, const char *body)
{
    struct span topic = {r->path.p + 11, r->path.n - 11};
    const char *e =
        skip_value(skip_ws(body, body + r->content_length), body + r->content_length, 1);
    if (!topic_valid(topic.p, topic.n)) {
        http_error(c, 400, "invalid_topic", "exact topics only");
        return;
    }
    if (!e || skip_ws(e, body + r->content_length) != body + r->content_length) {
        http_error(c, 400, "bad_request", "the body must be one JSON value");
        return;
    }
    const char *d = skip_ws(body, e);
    char id[17], b[400];
    long long ms;
    uint32_t n = publish(topic, (struct span){d, (size_t)(e - d)}, id, &ms);
    snprintf(b, sizeof(b), "{\"id\":\"%s\",\"topic\":\"%.*s\",\"time\":%lld,\"receivers\":%u}", id,
             (int)topic.n, topic.p, ms, n);
    http_reply(c, 202, b, r->conn_close || (r->http10 && !r->keep_alive));
}

/* Handles whole requests in buf; returns the bytes used, or -1 when c is closing. */
static ssize_t http_consume(struct conn *c, unsigned char *buf, size_t len)
{
    size_t off = 0;
    while (off < len && c->state == ST_HTTP && !c->closing && !c->dead) {
        struct req r;
        const char *p = (const char *)buf + off;
        int rc = parse_req(p, len - off, &r);
        if (rc == -EAGAIN)
            break;
        if (rc < 0) {
            if (rc == -EMSGSIZE)
                http_error(c, 431, "bad_request", "request head too long");
            else
                http_error(c, 400, "bad_request", "malformed request");
            return -1;
        }
        if (span_is(r.method, "GET") && span_is(r.path, "/v1/ws")) {
            off += r.head_len;
            ws_upgrade(c, &r);
        } else if (span_is(r.method, "POST") && r.path.n > 11 &&
                   memcmp(r.path.p, "/v1/topics/", 11) == 0) {
            if (r.chunked || r.content_length < 0) {
                http_error(c, 411, "bad_request", "Content-Length required");
                return -1;
            }
            if (r.content_length > MAX_BODY) {
                http_error(c, 413, "too_large", "body too large");
                return -1;
            }
            if (len - off < r.head_len + (size_t)r.content_length)
                break;
            off += r.head_len + (size_t)r.content_length;
            http_publish(c, &r, p + r.head_len);
        } else {
            http_error(c, 404, "not_found", "rawfan serves /v1/ws and POST /v1/topics/{topic}");
            return -1;
        }
    }
    if (c->state == ST_WS && off < len && !c->closing && !c->dead) {
        ssize_t w = ws_consume(c, buf + off, len - off);
        return w < 0 ? -1 : (ssize_t)off + w;
    }
    return (ssize_t)off;
}

static void conn_readable(struct conn *c)
{
    size_t have = c->in_len;
    if (have)
        memcpy(G.rbuf, c->in, have);
    ssize_t n = read(c->fd, G.rbuf + have, READ_CHUNK);
    if (n <= 0) {
        if (n == 0 || (errno != EAGAIN && errno != EINTR))
            conn_kill(c);
        return; /* the carry, if any, is still in c->in */
    }
    free(c->in);
    c->in = NULL;
    c->in_len = 0;
    if (c->closing)
        return; /* said goodbye: input is no longer read, only the backlog written */
    size_t len = have + (size_t)n;
    ssize_t used = c->state == ST_HTTP ? http_consume(c, G.rbuf, len) : ws_consume(c, G.rbuf, len);
    if (used < 0 || c->dead || c->closing || (size_t)used == len)
        return;
    c->in_len = len - (size_t)used;
    c->in = memcpy(xrealloc(NULL, c->in_len), G.rbuf + used, c->in_len);
}

/* ---- the loop ---- */

static void conn_free(struct conn *c)
{
    topic_unsubscribe_all(c);
    close(c->fd); /* also leaves the epoll set */
    if (c->prev)
        c->prev->next = c->next;
    else
        G.conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    free(c->in);
    free(c->out);
    free(c);
}

static void on_accept(void)
{
    for (int i = 0; i < 256; i++) {
        int fd = accept4(G.lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE) { /* retry in 100 ms instead of spinning */
                fprintf(stderr, "rawfan: accept: %s\n", strerror(errno));
                epoll_ctl(G.ep, EPOLL_CTL_DEL, G.lfd, NULL);
                G.accept_paused = true;
            }
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        struct conn *c = xrealloc(NULL, sizeof(*c));
        *c = (struct conn){.fd = fd, .state = ST_HTTP, .next = G.conns};
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(G.ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
            close(fd);
            free(c);
            continue;
        }
        if (G.conns)
            G.conns->prev = c;
        G.conns = c;
    }
}

static int listen_on(const char *host, const char *port)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST | AI_PASSIVE},
                    *res;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc) {
        fprintf(stderr, "rawfan: %s port %s: %s\n", host, port, gai_strerror(rc));
        return -1;
    }
    bool loop = false;
    if (res->ai_family == AF_INET)
        loop = ntohl(((struct sockaddr_in *)res->ai_addr)->sin_addr.s_addr) >> 24 == 127;
    else if (res->ai_family == AF_INET6)
        loop = IN6_IS_ADDR_LOOPBACK(&((struct sockaddr_in6 *)res->ai_addr)->sin6_addr);
    int fd = -1, one = 1;
    if (!loop)
        fprintf(stderr, "rawfan: refusing %s: loopback addresses only\n", host);
    else if ((fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0 ||
             setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
             bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, 4096) < 0) {
        fprintf(stderr, "rawfan: listen on %s port %s: %s\n", host, port, strerror(errno));
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
}

int main(int argc, char **argv)
{
    if (argc > 3 || (argc > 1 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")))) {
        fprintf(stderr, "usage: rawfan [ADDRESS [PORT]]   (127.0.0.1 0; loopback only)\n"
                        "Prints the port it listens on, then serves until SIGTERM or SIGINT.\n");
        return 2;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    /* Blocked except inside epoll_pwait, so a stop cannot slip in between check and wait. */
    struct sigaction sa = {.sa_handler = on_signal};
    sigset_t stop_sigs, wait_mask;
    sigemptyset(&stop_sigs);
    sigaddset(&stop_sigs, SIGTERM);
    sigaddset(&stop_sigs, SIGINT);
    sigprocmask(SIG_BLOCK, &stop_sigs, &wait_mask);
    sigdelset(&wait_mask, SIGTERM);
    sigdelset(&wait_mask, SIGINT);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    G.lfd = listen_on(argc > 1 ? argv[1] : "127.0.0.1", argc > 2 ? argv[2] : "0");
    if (G.lfd < 0)
        return 1;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    getsockname(G.lfd, (struct sockaddr *)&ss, &sl);
    printf("%u\n", ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                                 : ((struct sockaddr_in6 *)&ss)->sin6_port));
    fflush(stdout);

    G.nbuckets = 64;
    G.buckets = calloc(G.nbuckets, sizeof(*G.buckets));
    G.ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    if (!G.buckets || G.ep < 0 || epoll_ctl(G.ep, EPOLL_CTL_ADD, G.lfd, &lev) < 0) {
        fprintf(stderr, "rawfan: setup: %s\n", strerror(errno));
        return 1;
    }
    static struct epoll_event evs[512];
    while (!stop_flag) {
        int n = epoll_pwait(G.ep, evs, 512, G.accept_paused ? 100 : -1, &wait_mask);
        if (n < 0 && errno != EINTR) {
            fprintf(stderr, "rawfan: epoll_pwait: %s\n", strerror(errno));
            break;
        }
        if (G.accept_paused && epoll_ctl(G.ep, EPOLL_CTL_ADD, G.lfd, &lev) == 0)
            G.accept_paused = false;
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c) {
                on_accept();
                continue;
            }
            if (!c->dead && (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
                conn_readable(c);
            if (!c->dead && (evs[i].events & EPOLLOUT) && c->out_len > c->out_off)
                conn_flush(c);
        }
        while (G.dead) { /* closes wait until no list is being walked */
            struct conn *c = G.dead;
            G.dead = c->next_dead;
            conn_free(c);
        }
    }
    while (G.conns)
        conn_free(G.conns);
    close(G.lfd);
    close(G.ep);
    free(G.buckets);
    fprintf(stderr,
            "rawfan: %" PRIu64 " events, %" PRIu64 " frames, %" PRIu64 " slow consumers closed\n",
            G.seq, G.frames, G.slow_closed);
    return 0;
}
