/* SPDX-License-Identifier: MIT */
/*
 * loadgen: WebSocket/HTTP load generator and exact-delivery checker for Herald (protocol v1),
 * with adapters for nginx+nchan (HTTP publish, WebSocket subscribe) and Mosquitto (MQTT 3.1.1
 * over WebSocket) so the same run can be pointed at the brokers Herald is compared with.
 * One process, one thread, one epoll loop, loopback targets only: it opens N subscribers over
 * M topics (paced), publishes E sequenced, timestamped events, checks every delivery for loss,
 * duplication and reordering, and prints one JSON line of results. Wire codecs live in
 * wsclient.c and mqtt.c; this file owns sockets, buffers, phases and statistics.
 */
#define _GNU_SOURCE
#include "mqtt.h"
#include "wsclient.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RBUF_CAP (4u << 20)      /* shared read buffer: carry + one read */
#define READ_CHUNK (256u << 10)  /* one recv(); a partial frame grows by this much per read */
#define MAX_MSG (2u << 20)       /* largest frame or reassembled message accepted */
#define MAX_OUT (16u << 20)      /* per-connection pending output */
#define MAX_HTTP_BODY (1u << 20) /* largest publish reply body */
#define MAX_CLOSE_CODES 32
#define MAX_RECONNECTS 1000          /* publisher reconnects over a whole run */
#define BITMAP_MAX_BITS (1ULL << 30) /* 128 MB: above it, duplicates are guessed from order */
#define HIST_BUCKETS 4096
#define LINGER_NS 250000000LL /* --check-exact waits this long for late duplicates */
#define NS 1000000000LL
/* What is carried between reads is less than one frame, HTTP head or reply, so it fits. */
_Static_assert(RBUF_CAP >= MAX_MSG + WSC_MAX_CLIENT_HDR + READ_CHUNK, "read buffer too small");
_Static_assert(RBUF_CAP >= WSC_MAX_HTTP_HEAD + MAX_HTTP_BODY + READ_CHUNK, "read buffer too small");

enum kind { K_SUB, K_WSPUB, K_HTTPPUB };
/* Which server speaks on the other end (--target). */
enum target { T_HERALD, T_NCHAN, T_MQTT };
static const char *const TARGET_NAMES[] = {"herald", "nchan", "mosquitto"};
/* MQTT keepalive: the largest that Mosquitto's default max_keepalive admits, so idle
 * subscribers need no PINGREQ during a run. */
#define MQTT_KEEPALIVE 65535
enum state { ST_CLOSED, ST_CONNECTING, ST_UPGRADING, ST_OPEN };
enum phase { PH_CONNECT, PH_HOLD, PH_PUBCONNECT, PH_RUN, PH_LINGER };
/* conn_down() close codes that are not on the wire */
enum { CLOSE_NONE = 0, CLOSE_HTTP = -1 };

struct buf {
    unsigned char *p;
    size_t len, cap;
};

/* One publish request: events seq .. seq+n-1 (n > 1 only for --batch). */
struct req {
    uint64_t seq;
    uint32_t n;
};

struct conn {
    int fd;
    uint32_t gen; /* bumped at each open/close; stale epoll events carry an old one */
    uint8_t kind, state, frag_op;
    bool ready, ever_ready, queued, got_welcome, got_ok, in_frag, want_out, dead;
    uint32_t topic;
    struct buf in, out, frag;
    struct buf mq; /* MQTT target: bytes of an MQTT packet split across WebSocket messages */
    char accept[WSC_ACCEPT_LEN + 1];
    int64_t last_seq; /* subscriber: highest seq seen */
    uint64_t unique;  /* subscriber: distinct events of its topic */
    /* publisher: requests awaiting their replies, oldest first (a ring of --pipeline) */
    struct req *rq;
    uint32_t rq_head, rq_len;
    bool answered; /* publisher: a request was answered since the connection opened */
};

static struct {
    /* options */
    char host[256];
    int port;
    struct sockaddr_storage addr;
    socklen_t alen;
    char host_hdr[300];
    uint32_t subs, topics, size, inflight, connect_inflight, source_addrs;
    uint32_t pipeline, batch; /* requests in flight per publisher; events per request */
    uint64_t events;
    enum target target;
    bool events_set, mode_set, mode_ws, check_exact, allow_reorder, force_ordered;
    bool ordered; /* at most one publish per topic in flight */
    double rate, timeout, idle_hold;
    int server_pid;      /* the first of server_pids: its RSS is reported */
    int server_pids[16]; /* CPU is summed over these (cluster nodes) */
    unsigned n_server_pids;
    int other_pids[16]; /* --other-pids: CPU reported apart (e.g. nats-server) */
    unsigned n_other_pids;
    int port2; /* --sub-port2: odd subscribers connect here */
    struct sockaddr_storage addr2;
    /* runtime */
    int ep;
    enum phase phase;
    int64_t now;
    uint64_t rng;
    struct conn *conns;
    uint32_t nconns;
    unsigned char *rbuf, *sbuf;
    size_t sbuf_cap;
    uint32_t sub_opened, sub_pending, sub_ready, sub_closed;
    /* publishing */
    uint32_t *free_pubs, nfree, free_head, pub_ready, pub_dead, reconnects;
    uint64_t next_seq, acked, pub_errors, inflight_now, requests_ok, resent;
    /* requests to send again: their connection closed after `Connection: close` */
    struct req *retry;
    uint32_t retry_head, nretry, retry_cap, idle_reconnects;
    bool pipeline_refused; /* a server closed a connection with requests unanswered */
    unsigned char *bbuf;   /* a batch body */
    bool pub_aborted, connect_failed;
    uint8_t *topic_busy;
    uint64_t *acked_topic;
    uint32_t *open_subs;
    int64_t remaining, next_due, run_t0, last_progress, last_ack;
    char pub_err[200], conn_err[200], proto_err[200];
    /* delivery statistics */
    uint64_t hist[HIST_BUCKETS], lat_n, lat_max;
    uint64_t delivered, duplicates, reordered, stray, malformed, protocol_errors;
    uint8_t *seen;
    uint64_t per_topic;
    struct {
        int code;
        uint64_t n;
    } closes[MAX_CLOSE_CODES];
    int ncloses;
} G;

static const char *const USAGE =
    "usage: loadgen [options]\n"
    "  --host H             target address, loopback only (127.0.0.1)\n"
    "  --target T           herald (protocol v1), nchan (POST /pub?id=<topic>, WebSocket\n"
    "                       /sub/<topic>, --mode http) or mosquitto (MQTT 3.1.1 over\n"
    "                       WebSocket, QoS 0, --mode ws) (herald)\n"
    "  --port P             target port (required)\n"
    "  --subs N             WebSocket subscribers (1000)\n"
    "  --topics M           topics bench.t0..bench.t<M-1>; subscriber j takes topic j%M (10)\n"
    "  --events E           events to publish, round-robin over topics (10000; 0 with "
    "--idle-hold)\n"
    "  --size S             bytes of each event's data, 64..1048576 (100)\n"
    "  --inflight K         publisher connections (4)\n"
    "  --pipeline P         requests in flight on each publisher connection: HTTP requests\n"
    "                       pipelined, WebSocket publishes or MQTT PUBLISH+PINGREQ sent ahead\n"
    "                       of their replies (1)\n"
    "  --batch B            events per request: POST /v1/publish with B NDJSON lines (herald,\n"
    "                       --mode http) (1: one event per POST /v1/topics/..)\n"
    "  --mode http|ws       publish with POST /v1/topics/.. or WebSocket op publish (http)\n"
    "  --rate R             events per second, 0 = as fast as replies allow (0)\n"
    "  --timeout T          seconds allowed for each phase (connect, run) (60)\n"
    "  --connect-inflight C handshakes in flight while opening subscribers (256)\n"
    "  --source-addrs A     spread IPv4 connections over 127.0.0.1..127.0.0.A (16)\n"
    "  --server-pid PID[,PID...]  report server CPU (summed) and RSS (of the first) from /proc\n"
    "  --other-pids PID,...  report these processes' CPU apart (other_cpu_s), e.g. NATS\n"
    "  --sub-port2 P        odd-numbered subscribers connect to port P (a second cluster node)\n"
    "  --idle-hold S        after subscribing, hold the connections idle for S seconds\n"
    "  --ordered            at most one publish per topic in flight, so the send order is the\n"
    "                       server's order (default with --check-exact)\n"
    "  --allow-reorder      with --check-exact: let publishes to one topic overlap and do not\n"
    "                       fail on reordered deliveries\n"
    "  --check-exact        exit 1 unless every subscriber got every event of its topic\n"
    "                       exactly once and in order\n"
    "  --self-test          run the codec self-checks and exit\n"
    "  --help\n"
    "Prints one JSON line on stdout. Exit: 0 ok, 1 check failed, 2 usage or connect error.\n";

__attribute__((format(printf, 2, 3), noreturn)) static void die(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("loadgen: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(code);
}

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS + ts.tv_nsec;
}

static uint64_t rnd(void)
{
    /* xorshift64*: mask keys and handshake nonces need to vary, not to be secret. */
    G.rng ^= G.rng >> 12;
    G.rng ^= G.rng << 25;
    G.rng ^= G.rng >> 27;
    return G.rng * 2685821657736338717ULL;
}

static void buf_put(struct buf *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        unsigned char *np = realloc(b->p, cap);
        if (!np)
            die(2, "out of memory (%zu bytes)", cap);
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

static void buf_free(struct buf *b)
{
    free(b->p);
    *b = (struct buf){0};
}

static void note(char *dst, size_t cap, const char *what, uint32_t idx, const char *why)
{
    if (!dst[0])
        snprintf(dst, cap, "%s %u: %s", what, idx, why);
}

static uint32_t conn_idx(const struct conn *c)
{
    return (uint32_t)(c - G.conns);
}

/* ---- latency histogram: log-linear, 64 sub-buckets per power of two (<1% error) ---- */

static unsigned hist_index(uint64_t v)
{
    if (v < 128)
        return (unsigned)v;
    unsigned shift = (unsigned)(63 - __builtin_clzll(v)) - 6;
    return shift * 64 + (unsigned)(v >> shift);
}

static uint64_t hist_value(unsigned idx)
{
    if (idx < 128)
        return idx;
    unsigned shift = idx / 64 - 1;
    uint64_t top = idx - shift * 64;
    return (top << shift) + ((1ULL << shift) >> 1);
}

static double hist_pct_us(double q)
{
    if (!G.lat_n)
        return 0;
    uint64_t want = (uint64_t)(q * (double)G.lat_n + 0.999999), acc = 0;
    if (want < 1)
        want = 1;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        acc += G.hist[i];
        if (acc >= want) {
            uint64_t v = hist_value(i);
            return (double)(v < G.lat_max ? v : G.lat_max) / 1000.0;
        }
    }
    return (double)G.lat_max / 1000.0;
}

/* ---- sockets ---- */

static void set_events(struct conn *c, bool want_out)
{
    if (c->want_out == want_out)
        return;
    struct epoll_event ev = {
        .events = EPOLLIN | (want_out ? EPOLLOUT : 0),
        .data.u64 = (uint64_t)c->gen << 32 | conn_idx(c),
    };
    if (epoll_ctl(G.ep, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        die(2, "epoll_ctl: %s", strerror(errno));
    c->want_out = want_out;
}

/* Sends or queues bytes. Returns 0, or a negative errno when the connection is broken. */
static int conn_send(struct conn *c, const void *data, size_t len)
{
    const unsigned char *p = data;
    if (c->fd < 0)
        return -EBADF;
    if (c->out.len == 0) {
        ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR)
                return -errno;
            n = 0;
        }
        if ((size_t)n == len)
            return 0;
        p += n;
        len -= (size_t)n;
    }
    if (c->out.len + len > MAX_OUT)
        return -ENOBUFS;
    buf_put(&c->out, p, len);
    set_events(c, true);
    return 0;
}

static int send_ws(struct conn *c, int op, const void *payload, size_t len)
{
    unsigned char f[WSC_MAX_CLIENT_HDR + 125];
    if (len > 125)
        return -EINVAL; /* only used for control frames and short commands */
    size_t hl = wsc_client_hdr_len(len);
    memcpy(f + hl, payload, len);
    size_t n = wsc_client_frame_finish(f, op, len, (uint32_t)rnd());
    return conn_send(c, f, n);
}

static void conn_open(struct conn *c);
static void pub_complete(struct conn *c, bool ok, const char *why);

/* A publisher's requests in flight, oldest first: a ring of G.pipeline. */
static void rq_push(struct conn *c, struct req r)
{
    c->rq[(c->rq_head + c->rq_len++) % G.pipeline] = r;
}

static struct req rq_pop(struct conn *c)
{
    struct req r = c->rq[c->rq_head];
    c->rq_head = (c->rq_head + 1) % G.pipeline;
    c->rq_len--;
    return r;
}

/* Requests to send again, in the order they were first sent: a ring of G.retry_cap (every
 * request in flight fits). */
static void retry_push(struct req r)
{
    G.retry[(G.retry_head + G.nretry++) % G.retry_cap] = r;
}

static void count_close(int code)
{
    for (int i = 0; i < G.ncloses; i++) {
        if (G.closes[i].code == code) {
            G.closes[i].n++;
            return;
        }
    }
    if (G.ncloses < MAX_CLOSE_CODES)
        G.closes[G.ncloses++] = (typeof(G.closes[0])){.code = code, .n = 1};
}

/*
 * The connection is gone: `code` is the peer's close code, 1006 for an abnormal end,
 * CLOSE_NONE for our own protocol error (`why`), CLOSE_HTTP for an HTTP Connection: close.
 * Subscribers that never became ready end the run (exit 2); publishers reconnect.
 */
static void conn_down(struct conn *c, int code, const char *why)
{
    bool was_ready = c->ready;
    uint32_t idx = conn_idx(c);
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->gen++;
    c->state = ST_CLOSED;
    c->ready = c->want_out = c->in_frag = false;
    c->in.len = c->out.len = c->frag.len = c->mq.len = 0;
    if (code > 0) {
        count_close(code);
    } else if (code == CLOSE_NONE) {
        G.protocol_errors++;
        note(G.proto_err, sizeof(G.proto_err), c->kind == K_SUB ? "subscriber" : "publisher", idx,
             why);
    }

    if (c->kind == K_SUB) {
        if (!was_ready)
            die(2, "subscriber %u could not subscribe at %s: %s", idx, G.host_hdr, why);
        G.sub_closed++;
        G.open_subs[c->topic]--;
        G.remaining -= (int64_t)G.acked_topic[c->topic] - (int64_t)c->unique;
        return;
    }
    if (c->rq_len && code == CLOSE_HTTP) {
        /* The server answered a request with `Connection: close` (lws 4.1 does to a client
         * that pipelines) and did not process what followed it (RFC 9112 section 9.3.2):
         * those requests go out again on a new connection. */
        G.pipeline_refused = true;
        while (c->rq_len) {
            struct req r = rq_pop(c);
            G.resent += r.n;
            retry_push(r);
        }
    }
    while (c->rq_len)
        pub_complete(c, false, why);
    if (!was_ready && G.phase == PH_PUBCONNECT)
        die(2, "publisher %u could not connect to %s: %s", idx, G.host_hdr, why);
    /* A connection that got answers made progress: only reconnects without one are bounded
     * (a server that closes after every answer still gets through the run). */
    if (was_ready && G.phase == PH_RUN && (c->answered || G.idle_reconnects < MAX_RECONNECTS)) {
        G.reconnects++;
        G.idle_reconnects += !c->answered;
        conn_open(c);
        return;
    }
    if (!was_ready) {
        G.connect_failed = true;
        note(G.conn_err, sizeof(G.conn_err), "publisher", idx, why);
    }
    c->dead = true;
    if (++G.pub_dead < G.inflight)
        return;
    G.pub_aborted = true;
    for (; G.nretry; G.nretry--, G.retry_head = (G.retry_head + 1) % G.retry_cap) {
        struct req r = G.retry[G.retry_head]; /* nobody left to send them */
        G.inflight_now--;
        G.pub_errors += r.n;
        for (uint32_t i = 0; i < r.n; i++)
            G.topic_busy[(r.seq + i) % G.topics] = 0;
    }
}

static void conn_fail_errno(struct conn *c, int err)
{
    conn_down(c, 1006, strerror(err));
}

/*
 * With one source address, connect() searches the ephemeral ports linearly for a free
 * 4-tuple: the kernel's cost per connect grows with the connections already open (18,000
 * took 5-10 s, nearly all in __inet_hash_connect). Spreading IPv4 connections over
 * 127.0.0.1..127.0.0.<--source-addrs> (all of 127/8 is local on Linux) keeps that search short;
 * IP_BIND_ADDRESS_NO_PORT leaves the port choice to connect(), which knows the whole tuple.
 */
static void bind_source(struct conn *c)
{
    if (G.addr.ss_family != AF_INET || G.source_addrs <= 1)
        return;
    int one = 1;
    struct sockaddr_in src = {
        .sin_family = AF_INET,
        .sin_addr.s_addr = htonl(0x7f000001u + conn_idx(c) % G.source_addrs),
    };
    if (setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one)) < 0 ||
        bind(c->fd, (struct sockaddr *)&src, sizeof(src)) < 0) {
        fprintf(stderr, "loadgen: cannot bind source 127.0.0.x (%s), using one source address\n",
                strerror(errno));
        G.source_addrs = 1; /* the socket is still unbound: connect() picks as usual */
    }
}

static void conn_open(struct conn *c)
{
    c->gen++;
    c->fd = socket(G.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        die(2, "socket: %s", strerror(errno));
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    bind_source(c);
    c->state = ST_CONNECTING;
    c->want_out = true;
    c->got_welcome = c->got_ok = c->answered = false;
    struct epoll_event ev = {
        .events = EPOLLIN | EPOLLOUT,
        .data.u64 = (uint64_t)c->gen << 32 | conn_idx(c),
    };
    if (epoll_ctl(G.ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
        die(2, "epoll_ctl: %s", strerror(errno));
    const struct sockaddr_storage *to =
        G.port2 && c->kind == K_SUB && conn_idx(c) % 2 == 1 ? &G.addr2 : &G.addr;
    if (connect(c->fd, (const struct sockaddr *)to, G.alen) < 0 && errno != EINPROGRESS) {
        if (errno == EADDRNOTAVAIL || errno == EAGAIN)
            die(2, "connect: %s (out of local ports?)", strerror(errno));
        conn_fail_errno(c, errno); /* reported through the normal path, e.g. refused */
    }
}

/*
 * Queues an idle, open publisher (at most once). First in, first out, so every connection
 * stays in use: one left idle at the bottom of a stack would meet the server's idle timeout.
 */
static void pub_idle(struct conn *c)
{
    if (!c->queued) {
        c->queued = true;
        G.free_pubs[(G.free_head + G.nfree++) % G.inflight] = conn_idx(c);
    }
}

static void pub_became_ready(struct conn *c)
{
    if (!c->ever_ready) {
        c->ever_ready = true;
        G.pub_ready++;
    }
    c->ready = true;
    pub_idle(c);
}

/* The WebSocket subprotocol asked for and required in the 101, or NULL for none. */
static const char *ws_proto(void)
{
    return G.target == T_HERALD ? "herald.v1" : G.target == T_MQTT ? "mqtt" : NULL;
}

static void sub_became_ready(struct conn *c)
{
    c->ready = true;
    G.sub_ready++;
    G.sub_pending--;
    G.open_subs[c->topic]++;
}

static void on_connected(struct conn *c)
{
    int err = 0;
    socklen_t el = sizeof(err);
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0)
        err = errno;
    if (err) {
        conn_fail_errno(c, err);
        return;
    }
    c->want_out = true; /* registered with EPOLLOUT while connecting */
    if (c->kind == K_HTTPPUB) {
        c->state = ST_OPEN;
        set_events(c, false);
        pub_became_ready(c);
        return;
    }
    unsigned char nonce[16];
    uint64_t a = rnd(), b = rnd();
    memcpy(nonce, &a, 8);
    memcpy(nonce + 8, &b, 8);
    char key[WSC_KEY_LEN + 4], req[512], path[64];
    wsc_base64(nonce, sizeof(nonce), key);
    wsc_accept_for_key(key, c->accept);
    /* nchan picks the channel from the path; Herald and MQTT subscribe after the upgrade. */
    if (G.target == T_NCHAN)
        snprintf(path, sizeof(path), "/sub/bench.t%u", c->topic);
    else
        snprintf(path, sizeof(path), "%s", G.target == T_MQTT ? "/mqtt" : "/v1/ws");
    int n = wsc_handshake_request(req, sizeof(req), G.host_hdr, path, ws_proto(), key);
    if (n < 0)
        die(2, "handshake request does not fit");
    c->state = ST_UPGRADING;
    set_events(c, false);
    int r = conn_send(c, req, (size_t)n);
    if (r < 0)
        conn_fail_errno(c, -r);
}

/* ---- messages ---- */

/* The raw value of the "type" string (length in *tl), or NULL. */
static const char *msg_type(const char *p, const char *end, long *tl)
{
    const char *v = wsc_json_find(p, end, "type", 4), *s = NULL;
    *tl = v ? wsc_json_str(v, end, &s) : -1;
    return *tl >= 0 ? s : NULL;
}

/* The integer "id", or -1 when absent or null. */
static long long msg_id(const char *p, const char *end)
{
    const char *v = wsc_json_find(p, end, "id", 2);
    long long id;
    return v && wsc_json_int(v, end, &id) == 0 ? id : -1;
}

static bool type_is(const char *t, long tl, const char *want)
{
    return t && (size_t)tl == strlen(want) && memcmp(t, want, (size_t)tl) == 0;
}

static void sub_data(struct conn *c, const char *d, const char *end);

/* A Herald event frame: the loadgen's data object is the value of "data". */
static void sub_event(struct conn *c, const char *p, const char *end)
{
    const char *d = wsc_json_find(p, end, "data", 4);
    if (!d || *d != '{') {
        G.malformed++;
        return;
    }
    sub_data(c, d, end);
}

/* Counts one delivery of the data object at d ({"s":..,"t":..,"p":..}) to subscriber c. */
static void sub_data(struct conn *c, const char *d, const char *end)
{
    if (d >= end || *d != '{') {
        G.malformed++;
        return;
    }
    const char *sv = wsc_json_find(d, end, "s", 1), *tv = wsc_json_find(d, end, "t", 1);
    long long s, t;
    if (!sv || !tv || wsc_json_int(sv, end, &s) < 0 || wsc_json_int(tv, end, &t) < 0) {
        G.malformed++;
        return;
    }
    if (s < 0 || (uint64_t)s >= G.events || (uint64_t)s % G.topics != c->topic) {
        G.stray++;
        return;
    }
    int64_t lat = G.now - t;
    uint64_t ul = lat > 0 ? (uint64_t)lat : 0;
    G.hist[hist_index(ul)]++;
    G.lat_n++;
    if (ul > G.lat_max)
        G.lat_max = ul;
    G.delivered++;
    G.last_progress = G.now;

    if (G.seen) {
        uint64_t bit = (uint64_t)conn_idx(c) * G.per_topic + (uint64_t)s / G.topics;
        uint8_t m = (uint8_t)(1u << (bit & 7));
        if (G.seen[bit >> 3] & m) {
            G.duplicates++;
            return;
        }
        G.seen[bit >> 3] |= m;
    } else if (s == c->last_seq) {
        G.duplicates++;
        return;
    }
    if (s < c->last_seq)
        G.reordered++;
    else
        c->last_seq = s;
    c->unique++;
    G.remaining--;
}

static int mqtt_feed(struct conn *c, const unsigned char *p, size_t len);

/* Returns -1 when the connection was closed while handling the message. */
static int on_message(struct conn *c, const unsigned char *up, size_t len)
{
    const char *p = (const char *)up, *end = p + len;
    if (G.target == T_MQTT)
        return mqtt_feed(c, up, len);
    if (G.target == T_NCHAN) {
        if (c->kind == K_SUB && c->ready)
            sub_data(c, p, end); /* nchan sends the published body as it is */
        return 0;
    }
    if (c->kind == K_SUB && len > 15 && memcmp(p, "{\"type\":\"event\"", 15) == 0) {
        sub_event(c, p, end); /* fast path: the server writes "type" first */
        return 0;
    }
    long tl;
    const char *t = msg_type(p, end, &tl);
    if (c->kind == K_SUB) {
        if (type_is(t, tl, "event")) {
            sub_event(c, p, end);
        } else if (!c->ready && type_is(t, tl, "welcome")) {
            c->got_welcome = true;
        } else if (!c->ready && type_is(t, tl, "ok") && msg_id(p, end) == 1) {
            c->got_ok = true;
        } else if (type_is(t, tl, "error")) {
            char why[160];
            snprintf(why, sizeof(why), "error frame %.*s", (int)(len < 120 ? len : 120), p);
            conn_down(c, CLOSE_NONE, why);
            return -1;
        }
        if (!c->ready && c->got_welcome && c->got_ok)
            sub_became_ready(c);
        return 0;
    }
    /* WebSocket publisher */
    if (type_is(t, tl, "welcome")) {
        if (!c->ready)
            pub_became_ready(c);
    } else if (type_is(t, tl, "ok") || type_is(t, tl, "error")) {
        if (!c->rq_len || msg_id(p, end) != (long long)c->rq[c->rq_head].seq + 1) {
            conn_down(c, CLOSE_NONE, "reply to a command not in flight");
            return -1;
        }
        char why[160] = "";
        if (type_is(t, tl, "error"))
            snprintf(why, sizeof(why), "%.*s", (int)(len < 150 ? len : 150), p);
        pub_complete(c, !why[0], why);
        pub_idle(c);
    }
    return 0;
}

/* ---- MQTT over WebSocket (--target mosquitto) ---- */

/* Sends CONNECT (after the upgrade): client ids are unique per connection within a run. */
static int mqtt_send_connect(struct conn *c)
{
    unsigned char pk[64];
    char id[32];
    snprintf(id, sizeof(id), "loadgen-%c%u", c->kind == K_SUB ? 's' : 'p', conn_idx(c));
    int n = mqtt_connect(pk, sizeof(pk), id, MQTT_KEEPALIVE);
    return n < 0 ? n : send_ws(c, WSC_OP_BINARY, pk, (size_t)n);
}

/* Handles one MQTT packet (body: k->len bytes). Returns -1 when c was closed. */
static int mqtt_packet(struct conn *c, const struct mqtt_pkt *k, const unsigned char *body)
{
    unsigned char pk[64];
    char topic[32];
    switch (k->type) {
    case MQTT_CONNACK:
        if (c->ready || k->len != 2 || body[1] != 0) {
            conn_down(c, CLOSE_NONE, "CONNACK refused or unexpected");
            return -1;
        }
        if (c->kind != K_SUB) {
            pub_became_ready(c);
            return 0;
        }
        snprintf(topic, sizeof(topic), "bench.t%u", c->topic);
        int n = mqtt_subscribe(pk, sizeof(pk), 1, topic, 0);
        if (n < 0 || send_ws(c, WSC_OP_BINARY, pk, (size_t)n) < 0) {
            conn_down(c, 1006, "write failed");
            return -1;
        }
        return 0;
    case MQTT_SUBACK:
        /* packet id 1, one return code: 0x00-0x02 granted, 0x80 refused */
        if (c->kind != K_SUB || c->ready || k->len != 3 || body[0] != 0 || body[1] != 1 ||
            body[2] > 2) {
            conn_down(c, CLOSE_NONE, "SUBACK refused or unexpected");
            return -1;
        }
        sub_became_ready(c);
        return 0;
    case MQTT_PUBLISH: {
        struct mqtt_publish m;
        if (mqtt_publish_parse(body, k->len, k->flags, &m) < 0) {
            conn_down(c, CLOSE_NONE, "malformed PUBLISH");
            return -1;
        }
        if (c->kind == K_SUB && c->ready)
            sub_data(c, (const char *)m.payload, (const char *)m.payload + m.payload_len);
        return 0;
    }
    case MQTT_PINGRESP:
        /*
         * QoS 0 has no acknowledgement, so each PUBLISH is followed by a PINGREQ: the broker
         * handles a connection's packets in order, so the PINGRESP says the PUBLISH was
         * processed (routed to the subscribers' queues), as Herald's "ok" and nchan's 201 do.
         */
        if (c->kind == K_SUB)
            return 0;
        if (!c->rq_len) {
            conn_down(c, CLOSE_NONE, "PINGRESP without a publish in flight");
            return -1;
        }
        pub_complete(c, true, NULL);
        pub_idle(c);
        return 0;
    default:
        return 0; /* nothing else is expected at QoS 0; ignore rather than guess */
    }
}

/*
 * MQTT over WebSocket is a byte stream: a message may hold several packets or part of one.
 * Whole packets are handled where they lie; a partial one is carried in c->mq.
 * Returns -1 when c was closed.
 */
static int mqtt_feed(struct conn *c, const unsigned char *p, size_t len)
{
    bool carried = c->mq.len > 0;
    if (carried) {
        if (c->mq.len + len > MAX_MSG + 8) {
            conn_down(c, CLOSE_NONE, "MQTT packet too large");
            return -1;
        }
        buf_put(&c->mq, p, len);
        p = c->mq.p;
        len = c->mq.len;
    }
    size_t off = 0;
    while (off < len) {
        struct mqtt_pkt k;
        int r = mqtt_parse(p + off, len - off, &k);
        if (r == -EAGAIN)
            break;
        if (r < 0 || k.len > MAX_MSG) {
            conn_down(c, CLOSE_NONE, r < 0 ? "bad MQTT packet" : "MQTT packet too large");
            return -1;
        }
        if (len - off < k.hdr_len + k.len)
            break;
        const unsigned char *body = p + off + k.hdr_len;
        off += k.hdr_len + k.len;
        if (mqtt_packet(c, &k, body) < 0)
            return -1;
    }
    if (carried) {
        memmove(c->mq.p, c->mq.p + off, len - off);
        c->mq.len = len - off;
    } else if (off < len) {
        buf_put(&c->mq, p + off, len - off);
    }
    return 0;
}

static int on_frame(struct conn *c, const struct wsc_frame *f, const unsigned char *pl)
{
    size_t len = (size_t)f->len;
    switch (f->opcode) {
    case WSC_OP_TEXT:
    case WSC_OP_BINARY:
        if (c->in_frag) {
            conn_down(c, CLOSE_NONE, "new message inside a fragmented one");
            return -1;
        }
        if (f->fin)
            return on_message(c, pl, len);
        c->in_frag = true;
        c->frag.len = 0;
        buf_put(&c->frag, pl, len);
        return 0;
    case WSC_OP_CONT:
        if (!c->in_frag || c->frag.len + len > MAX_MSG) {
            conn_down(c, CLOSE_NONE, c->in_frag ? "message too large" : "stray continuation");
            return -1;
        }
        buf_put(&c->frag, pl, len);
        if (!f->fin)
            return 0;
        c->in_frag = false;
        return on_message(c, c->frag.p, c->frag.len);
    case WSC_OP_PING:
        if (send_ws(c, WSC_OP_PONG, pl, len) < 0) {
            conn_down(c, 1006, "write failed");
            return -1;
        }
        return 0;
    case WSC_OP_PONG:
        return 0;
    default: { /* close: echo the code, then drop the socket */
        int code = len >= 2 ? pl[0] << 8 | pl[1] : 1005;
        char why[160];
        snprintf(why, sizeof(why), "closed by server with %d \"%.*s\"", code,
                 len > 2 ? (int)len - 2 : 0, (const char *)pl + 2);
        send_ws(c, WSC_OP_CLOSE, pl, len >= 2 ? 2 : 0);
        conn_down(c, code, why);
        return -1;
    }
    }
}

/* Handles a publish reply (HTTP). Returns -1 when the connection was closed. */
static int http_reply(struct conn *c, const struct wsc_http_head *h, const char *body)
{
    if (!c->rq_len) {
        conn_down(c, CLOSE_NONE, "HTTP reply without a request");
        return -1;
    }
    /* nchan answers 201 when the channel has subscribers, 202 when it has none. */
    if (h->status == 202 || (G.target == T_NCHAN && h->status == 201)) {
        pub_complete(c, true, NULL);
    } else {
        char why[200];
        long bl = h->content_length < 120 ? (long)h->content_length : 120;
        snprintf(why, sizeof(why), "HTTP %d %.*s", h->status, (int)bl, body);
        pub_complete(c, false, why);
    }
    if (h->conn_close) {
        conn_down(c, CLOSE_HTTP, "Connection: close");
        return -1;
    }
    pub_idle(c);
    return 0;
}

/* Consumes whole replies/frames from buf; returns bytes used, or -1 if c was closed. */
static ssize_t consume(struct conn *c, unsigned char *buf, size_t len)
{
    size_t off = 0;
    struct wsc_http_head h;
    if (c->state == ST_UPGRADING) {
        int r = wsc_http_parse_head((const char *)buf, len, &h);
        if (r == -EAGAIN)
            return 0;
        const char *bad =
            r < 0 ? "malformed upgrade response" : wsc_handshake_check(&h, c->accept, ws_proto());
        if (bad) {
            conn_down(c, CLOSE_NONE, bad);
            return -1;
        }
        c->state = ST_OPEN;
        off = h.head_len;
        if (G.target == T_NCHAN) {
            sub_became_ready(c); /* the path named the channel: subscribed by the upgrade */
        } else if (G.target == T_MQTT) {
            if (mqtt_send_connect(c) < 0) {
                conn_down(c, 1006, "write failed");
                return -1;
            }
        } else if (c->kind == K_SUB) {
            char cmd[96];
            int n = snprintf(cmd, sizeof(cmd),
                             "{\"op\":\"subscribe\",\"id\":1,\"topic\":\"bench.t%u\"}", c->topic);
            if (send_ws(c, WSC_OP_TEXT, cmd, (size_t)n) < 0) {
                conn_down(c, 1006, "write failed");
                return -1;
            }
        }
    }
    if (c->kind == K_HTTPPUB) {
        while (off < len) {
            int r = wsc_http_parse_head((const char *)buf + off, len - off, &h);
            if (r == -EAGAIN)
                break;
            const char *bad = r < 0                  ? "malformed HTTP reply"
                              : h.content_length < 0 ? "HTTP reply without Content-Length"
                              : h.content_length > MAX_HTTP_BODY ? "HTTP reply body too large"
                                                                 : NULL;
            if (bad) {
                conn_down(c, CLOSE_NONE, bad);
                return -1;
            }
            size_t total = h.head_len + (size_t)h.content_length;
            if (len - off < total)
                break;
            const char *body = (const char *)buf + off + h.head_len;
            off += total;
            if (http_reply(c, &h, body) < 0)
                return -1;
        }
        return (ssize_t)off;
    }
    while (off < len) {
        struct wsc_frame f;
        int r = wsc_frame_parse(buf + off, len - off, &f);
        if (r == -EAGAIN)
            break;
        if (r < 0 || f.masked || f.len > MAX_MSG) {
            conn_down(c, CLOSE_NONE,
                      r < 0      ? "bad frame"
                      : f.masked ? "masked server frame"
                                 : "frame too large");
            return -1;
        }
        if (len - off < f.hdr_len + f.len)
            break;
        const unsigned char *pl = buf + off + f.hdr_len;
        off += f.hdr_len + (size_t)f.len;
        if (on_frame(c, &f, pl) < 0)
            return -1;
    }
    return (ssize_t)off;
}

static void on_readable(struct conn *c)
{
    /* Partial frames are carried per connection; whole ones are parsed in the shared buffer. */
    size_t have = c->in.len;
    if (have)
        memcpy(G.rbuf, c->in.p, have);
    ssize_t n = recv(c->fd, G.rbuf + have, READ_CHUNK, 0);
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR)
            conn_fail_errno(c, errno);
        return;
    }
    if (n == 0) {
        conn_down(c, c->kind == K_HTTPPUB && !c->rq_len ? CLOSE_HTTP : 1006,
                  "connection closed without a close frame");
        return;
    }
    G.now = mono_ns();
    size_t len = have + (size_t)n;
    ssize_t used = consume(c, G.rbuf, len);
    if (used < 0)
        return;
    c->in.len = 0;
    if ((size_t)used < len)
        buf_put(&c->in, G.rbuf + used, len - (size_t)used);
}

static void flush_out(struct conn *c)
{
    ssize_t n = send(c->fd, c->out.p, c->out.len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR)
            conn_fail_errno(c, errno);
        return;
    }
    memmove(c->out.p, c->out.p + n, c->out.len - (size_t)n);
    c->out.len -= (size_t)n;
    if (!c->out.len)
        set_events(c, false);
}

/* ---- publishing ---- */

static size_t put(unsigned char *p, const char *s)
{
    size_t n = strlen(s);
    memcpy(p, s, n);
    return n;
}

/* Writes the event data, exactly G.size bytes: {"s":<seq>,"t":<ns>,"p":"xxx..."} */
static size_t build_data(unsigned char *p, uint64_t seq, int64_t t)
{
    char ds[21], dt[21];
    size_t ls = wsc_u64toa(seq, ds), lt = wsc_u64toa((uint64_t)t, dt), o = 0;
    size_t pad = G.size - (ls + lt + 18);
    o += put(p + o, "{\"s\":");
    memcpy(p + o, ds, ls);
    o += ls;
    o += put(p + o, ",\"t\":");
    memcpy(p + o, dt, lt);
    o += lt;
    o += put(p + o, ",\"p\":\"");
    memset(p + o, 'x', pad);
    o += pad;
    o += put(p + o, "\"}");
    return o;
}

/* Writes the NDJSON body of a batch (one {"topic":..,"data":..} line per event of r) to out;
 * returns its length. out holds G.batch * (G.size + 48) bytes. */
static size_t build_batch(unsigned char *out, struct req r, int64_t t)
{
    size_t o = 0;
    for (uint32_t i = 0; i < r.n; i++) {
        o += put(out + o, "{\"topic\":\"bench.t");
        o += wsc_u64toa((r.seq + i) % G.topics, (char *)out + o);
        o += put(out + o, "\",\"data\":");
        o += build_data(out + o, r.seq + i, t);
        o += put(out + o, "}\n");
    }
    return o;
}

static void pub_send(struct conn *c, struct req r)
{
    uint64_t seq = r.seq;
    uint32_t k = (uint32_t)(seq % G.topics);
    size_t o = 0;
    unsigned char *p = G.sbuf;
    if (c->kind == K_HTTPPUB && G.batch > 1) {
        size_t bl = build_batch(G.bbuf, r, mono_ns());
        o += put(p + o, "POST /v1/publish HTTP/1.1\r\nHost: ");
        o += put(p + o, G.host_hdr);
        o += put(p + o, "\r\nContent-Type: application/x-ndjson\r\nContent-Length: ");
        o += wsc_u64toa(bl, (char *)p + o);
        o += put(p + o, "\r\n\r\n");
        memcpy(p + o, G.bbuf, bl);
        o += bl;
    } else if (c->kind == K_HTTPPUB) {
        o += put(p + o, G.target == T_NCHAN ? "POST /pub?id=bench.t" : "POST /v1/topics/bench.t");
        o += wsc_u64toa(k, (char *)p + o);
        o += put(p + o, " HTTP/1.1\r\nHost: ");
        o += put(p + o, G.host_hdr);
        o += put(p + o, "\r\nContent-Type: application/json\r\nContent-Length: ");
        o += wsc_u64toa(G.size, (char *)p + o);
        o += put(p + o, "\r\n\r\n");
        o += build_data(p + o, seq, mono_ns());
    } else if (G.target == T_MQTT) {
        /* PUBLISH (QoS 0) in one binary message, then a PINGREQ as the reply fence. */
        char topic[32];
        size_t tl = (size_t)snprintf(topic, sizeof(topic), "bench.t%u", k);
        size_t plen = mqtt_publish_len(tl, G.size), hl = wsc_client_hdr_len(plen);
        build_data(p + hl + mqtt_publish_head_len(tl, G.size), seq, mono_ns());
        mqtt_publish_finish(p + hl, topic, tl, G.size);
        o = wsc_client_frame_finish(p, WSC_OP_BINARY, plen, (uint32_t)rnd());
        static const unsigned char ping[2] = {MQTT_PINGREQ << 4, 0};
        memcpy(p + o + wsc_client_hdr_len(sizeof(ping)), ping, sizeof(ping));
        o += wsc_client_frame_finish(p + o, WSC_OP_BINARY, sizeof(ping), (uint32_t)rnd());
    } else {
        /* The payload length is known before the timestamp, so the header size is too. */
        static const char pre[] = "{\"op\":\"publish\",\"id\":", mid[] = ",\"topic\":\"bench.t",
                          dat[] = "\",\"data\":";
        char ids[21], ks[21];
        size_t idl = wsc_u64toa(seq + 1, ids), kl = wsc_u64toa(k, ks);
        size_t plen = sizeof(pre) - 1 + idl + sizeof(mid) - 1 + kl + sizeof(dat) - 1 + G.size + 1;
        size_t hl = wsc_client_hdr_len(plen);
        unsigned char *q = p + hl;
        size_t w = 0;
        w += put(q + w, pre);
        memcpy(q + w, ids, idl);
        w += idl;
        w += put(q + w, mid);
        memcpy(q + w, ks, kl);
        w += kl;
        w += put(q + w, dat);
        w += build_data(q + w, seq, mono_ns());
        q[w++] = '}';
        if (w != plen)
            die(2, "internal: publish frame length %zu != %zu", w, plen);
        o = wsc_client_frame_finish(p, WSC_OP_TEXT, plen, (uint32_t)rnd());
    }
    rq_push(c, r);
    int e = conn_send(c, p, o);
    if (e < 0) {
        /* A server that answered with `Connection: close` and closed makes a pipelined send
         * fail: read that answer first, so what it left unanswered is sent again. */
        uint32_t gen = c->gen;
        if (c->kind == K_HTTPPUB)
            on_readable(c);
        if (c->gen == gen)
            conn_fail_errno(c, -e);
    }
}

/* The oldest request in flight on c was answered (ok) or failed. */
static void pub_complete(struct conn *c, bool ok, const char *why)
{
    struct req r = rq_pop(c);
    G.inflight_now--;
    G.last_progress = G.now;
    c->answered = true;
    for (uint32_t i = 0; i < r.n; i++) {
        uint32_t k = (uint32_t)((r.seq + i) % G.topics);
        G.topic_busy[k] = 0;
        if (ok) {
            G.acked_topic[k]++;
            G.remaining += G.open_subs[k];
        }
    }
    if (ok) {
        G.acked += r.n;
        G.requests_ok++;
        G.last_ack = G.now;
    } else {
        G.pub_errors += r.n;
        if (!G.pub_err[0])
            snprintf(G.pub_err, sizeof(G.pub_err), "seq %" PRIu64 ": %s", r.seq, why);
    }
}

/*
 * Sends requests while a publisher has room (fewer than --pipeline in flight): first those to
 * send again, then new ones. Publishers with room wait in a FIFO and go to its back after
 * each request, so requests are spread round-robin over the connections.
 */
static void pub_pump(void)
{
    G.next_due = 0;
    while ((G.nretry || G.next_seq < G.events) && !G.pub_aborted && G.nfree) {
        struct req r;
        if (G.nretry) {
            r = G.retry[G.retry_head]; /* its topics are still marked busy */
        } else {
            uint64_t left = G.events - G.next_seq;
            r = (struct req){.seq = G.next_seq, .n = left < G.batch ? (uint32_t)left : G.batch};
            for (uint32_t i = 0; G.ordered && i < r.n; i++)
                if (G.topic_busy[(r.seq + i) % G.topics])
                    return; /* one publish per topic in flight: the send order is the server's */
            if (G.rate > 0) {
                int64_t due = G.run_t0 + (int64_t)((double)r.seq * 1e9 / G.rate);
                if (G.now < due) {
                    G.next_due = due;
                    return;
                }
            }
        }
        struct conn *c = &G.conns[G.free_pubs[G.free_head]];
        G.free_head = (G.free_head + 1) % G.inflight;
        G.nfree--;
        c->queued = false;
        if (c->fd < 0 || !c->ready || c->rq_len >= G.pipeline)
            continue; /* went down while idle; reconnect pushes it again */
        if (G.nretry) {
            G.retry_head = (G.retry_head + 1) % G.retry_cap;
            G.nretry--;
        } else {
            for (uint32_t i = 0; i < r.n; i++)
                G.topic_busy[(r.seq + i) % G.topics] = 1;
            G.next_seq += r.n;
            G.inflight_now++;
        }
        pub_send(c, r);
        if (c->fd >= 0 && c->ready && c->rq_len < G.pipeline)
            pub_idle(c);
    }
}

/* ---- self-checks of what this file encodes (--self-test) ---- */

static int lg_check(bool ok, const char *what)
{
    if (!ok)
        fprintf(stderr, "selftest: loadgen: %s\n", what);
    return !ok;
}

/* The NDJSON batch body and the request rings. Returns the number of failed checks. */
static int loadgen_selftest(void)
{
    int failed = 0;
    uint32_t topics = G.topics, size = G.size, pipeline = G.pipeline;
    G.topics = 3;
    G.size = 100;
    G.pipeline = 3;
    unsigned char body[4 * (100 + 48)];
    size_t n = build_batch(body, (struct req){.seq = 7, .n = 4}, 123456789);
    const char *p = (const char *)body, *end = p + n;
    for (uint64_t i = 0; i < 4; i++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p)), *ts = NULL;
        char want[32];
        long long sv = -1, tv = -1;
        if (lg_check(nl != NULL, "batch line without a newline"))
            return failed + 1;
        const char *t = wsc_json_find(p, nl, "topic", 5), *d = wsc_json_find(p, nl, "data", 4);
        long tl = t ? wsc_json_str(t, nl, &ts) : -1;
        int wl = snprintf(want, sizeof(want), "bench.t%" PRIu64, (7 + i) % 3);
        failed += lg_check(p[0] == '{' && nl[-1] == '}', "batch line is not one object");
        failed += lg_check(tl == wl && memcmp(ts, want, (size_t)wl) == 0, "batch line topic");
        failed += lg_check(d && nl - 1 - d == 100, "batch line data is not --size bytes");
        if (d) {
            const char *s1 = wsc_json_find(d, nl, "s", 1), *t1 = wsc_json_find(d, nl, "t", 1);
            failed += lg_check(s1 && wsc_json_int(s1, nl, &sv) == 0 && sv == (long long)(7 + i),
                               "batch line seq");
            failed += lg_check(t1 && wsc_json_int(t1, nl, &tv) == 0 && tv == 123456789,
                               "batch line time");
        }
        p = nl + 1;
    }
    failed += lg_check(p == end, "batch body has more than its lines");

    struct req rq[3];
    struct conn c = {.rq = rq};
    for (uint64_t i = 0; i < 3; i++)
        rq_push(&c, (struct req){.seq = i, .n = 1});
    bool fifo = rq_pop(&c).seq == 0;
    rq_push(&c, (struct req){.seq = 3, .n = 1}); /* wraps around */
    for (uint64_t i = 1; i < 4; i++)
        fifo = fifo && c.rq_len == 4 - i && rq_pop(&c).seq == i;
    failed += lg_check(fifo && c.rq_len == 0, "pipeline ring is not first in, first out");
    G.topics = topics;
    G.size = size;
    G.pipeline = pipeline;
    return failed;
}

/* ---- the loop ---- */

static void pump(void)
{
    if (G.phase == PH_CONNECT) {
        while (G.sub_opened < G.subs && G.sub_pending < G.connect_inflight) {
            struct conn *c = &G.conns[G.sub_opened++];
            G.sub_pending++;
            conn_open(c);
        }
    } else if (G.phase == PH_RUN) {
        pub_pump();
    }
}

static bool run_done(void)
{
    return (G.next_seq == G.events || G.pub_aborted) && G.inflight_now == 0 && G.remaining <= 0 &&
           (!G.nretry || G.pub_aborted);
}

/* Runs the loop until done() or the deadline; returns true when done() became true. */
static bool run_loop(bool (*done)(void), int64_t deadline)
{
    static struct epoll_event evs[1024];
    for (;;) {
        G.now = mono_ns();
        pump();
        if (done && done())
            return true;
        if (G.now >= deadline)
            return false;
        int64_t wake = deadline;
        if (G.next_due && G.next_due < wake)
            wake = G.next_due;
        int64_t ms = (wake - G.now + 999999) / 1000000;
        int n = epoll_wait(G.ep, evs, 1024, (int)(ms > 1000 ? 1000 : ms));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die(2, "epoll_wait: %s", strerror(errno));
        }
        G.now = mono_ns();
        for (int i = 0; i < n; i++) {
            uint32_t idx = (uint32_t)evs[i].data.u64, gen = (uint32_t)(evs[i].data.u64 >> 32);
            struct conn *c = &G.conns[idx];
            uint32_t e = evs[i].events;
            if (c->gen != gen || c->fd < 0)
                continue;
            if (c->state == ST_CONNECTING) {
                if (e & (EPOLLOUT | EPOLLERR | EPOLLHUP))
                    on_connected(c);
                continue;
            }
            if (e & (EPOLLIN | EPOLLERR | EPOLLHUP))
                on_readable(c);
            if (c->gen == gen && c->fd >= 0 && (e & EPOLLOUT) && c->out.len)
                flush_out(c);
        }
    }
}

static bool connect_done(void)
{
    return G.sub_ready == G.subs;
}

static bool pubconnect_done(void)
{
    return G.pub_ready == G.inflight;
}

/* ---- server figures from /proc ---- */

static long long proc_cpu_ticks(int pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')'); /* the command name may contain spaces */
    unsigned long long ut, st;
    if (!p ||
        sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (long long)(ut + st);
}

/* Sum over `n` processes; -1 when any cannot be read. */
static long long cpu_ticks_sum(const int *pids, unsigned n)
{
    long long sum = 0;
    for (unsigned i = 0; i < n; i++) {
        long long t = proc_cpu_ticks(pids[i]);
        if (t < 0)
            return -1;
        sum += t;
    }
    return sum;
}

static long long proc_rss_kb(int pid)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long long kb = -1;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "VmRSS: %lld kB", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

/* ---- options ---- */

static uint64_t opt_u64(const char *name, const char *s, uint64_t min, uint64_t max)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v < min || v > max)
        die(2, "--%s: expected an integer in %" PRIu64 "..%" PRIu64 ", got '%s'", name, min, max,
            s);
    return v;
}

/* "PID[,PID...]" (at most 16) into `out`; returns the count or dies. */
static unsigned pid_list(const char *name, const char *arg, int *out)
{
    unsigned n = 0;
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", arg);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (n == 16)
            die(2, "--%s: at most 16 processes", name);
        out[n++] = (int)opt_u64(name, t, 1, 4194304);
    }
    if (!n)
        die(2, "--%s: expected PID[,PID...]", name);
    return n;
}

static double opt_double(const char *name, const char *s, double min, double max)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= min && v <= max))
        die(2, "--%s: expected a number in %g..%g, got '%s'", name, min, max, s);
    return v;
}

static void parse_options(int argc, char **argv)
{
    enum {
        O_HOST = 256,
        O_PORT,
        O_SUBS,
        O_TOPICS,
        O_EVENTS,
        O_SIZE,
        O_INFLIGHT,
        O_MODE,
        O_RATE,
        O_TIMEOUT,
        O_PID,
        O_OTHER,
        O_PORT2,
        O_CHECK,
        O_HOLD,
        O_CONNIN,
        O_REORDER,
        O_ORDERED,
        O_SRC,
        O_SELFTEST,
        O_HELP,
        O_TARGET,
        O_PIPELINE,
        O_BATCH
    };
    static const struct option opts[] = {
        {"host", required_argument, NULL, O_HOST},
        {"port", required_argument, NULL, O_PORT},
        {"subs", required_argument, NULL, O_SUBS},
        {"topics", required_argument, NULL, O_TOPICS},
        {"events", required_argument, NULL, O_EVENTS},
        {"size", required_argument, NULL, O_SIZE},
        {"inflight", required_argument, NULL, O_INFLIGHT},
        {"mode", required_argument, NULL, O_MODE},
        {"rate", required_argument, NULL, O_RATE},
        {"timeout", required_argument, NULL, O_TIMEOUT},
        {"server-pid", required_argument, NULL, O_PID},
        {"other-pids", required_argument, NULL, O_OTHER},
        {"sub-port2", required_argument, NULL, O_PORT2},
        {"check-exact", no_argument, NULL, O_CHECK},
        {"idle-hold", required_argument, NULL, O_HOLD},
        {"connect-inflight", required_argument, NULL, O_CONNIN},
        {"allow-reorder", no_argument, NULL, O_REORDER},
        {"ordered", no_argument, NULL, O_ORDERED},
        {"source-addrs", required_argument, NULL, O_SRC},
        {"self-test", no_argument, NULL, O_SELFTEST},
        {"target", required_argument, NULL, O_TARGET},
        {"pipeline", required_argument, NULL, O_PIPELINE},
        {"batch", required_argument, NULL, O_BATCH},
        {"help", no_argument, NULL, O_HELP},
        {0},
    };
    snprintf(G.host, sizeof(G.host), "127.0.0.1");
    G.subs = 1000;
    G.topics = 10;
    G.events = 10000;
    G.size = 100;
    G.inflight = 4;
    G.pipeline = 1;
    G.batch = 1;
    G.timeout = 60;
    G.connect_inflight = 256;
    G.source_addrs = 16;
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case O_HOST:
            if (strlen(optarg) >= sizeof(G.host))
                die(2, "--host: too long");
            snprintf(G.host, sizeof(G.host), "%s", optarg);
            break;
        case O_PORT:
            G.port = (int)opt_u64("port", optarg, 1, 65535);
            break;
        case O_SUBS:
            G.subs = (uint32_t)opt_u64("subs", optarg, 0, 1000000);
            break;
        case O_TOPICS:
            G.topics = (uint32_t)opt_u64("topics", optarg, 1, 1000000);
            break;
        case O_EVENTS:
            G.events = opt_u64("events", optarg, 0, 1000000000);
            G.events_set = true;
            break;
        case O_SIZE:
            G.size = (uint32_t)opt_u64("size", optarg, 64, 1u << 20);
            break;
        case O_INFLIGHT:
            G.inflight = (uint32_t)opt_u64("inflight", optarg, 1, 4096);
            break;
        case O_PIPELINE:
            G.pipeline = (uint32_t)opt_u64("pipeline", optarg, 1, 1024);
            break;
        case O_BATCH:
            G.batch = (uint32_t)opt_u64("batch", optarg, 1, 100000);
            break;
        case O_MODE:
            if (strcmp(optarg, "http") && strcmp(optarg, "ws"))
                die(2, "--mode: expected http or ws");
            G.mode_ws = strcmp(optarg, "ws") == 0;
            G.mode_set = true;
            break;
        case O_TARGET: {
            size_t t = 0;
            while (t < 3 && strcmp(optarg, TARGET_NAMES[t]))
                t++;
            if (t == 3)
                die(2, "--target: expected herald, nchan or mosquitto");
            G.target = (enum target)t;
            break;
        }
        case O_RATE:
            G.rate = opt_double("rate", optarg, 0, 1e8);
            break;
        case O_TIMEOUT:
            G.timeout = opt_double("timeout", optarg, 0.1, 86400);
            break;
        case O_PID:
            G.n_server_pids = pid_list("server-pid", optarg, G.server_pids);
            G.server_pid = G.server_pids[0];
            break;
        case O_OTHER:
            G.n_other_pids = pid_list("other-pids", optarg, G.other_pids);
            break;
        case O_PORT2:
            G.port2 = (int)opt_u64("sub-port2", optarg, 1, 65535);
            break;
        case O_CHECK:
            G.check_exact = true;
            break;
        case O_HOLD:
            G.idle_hold = opt_double("idle-hold", optarg, 0, 86400);
            break;
        case O_CONNIN:
            G.connect_inflight = (uint32_t)opt_u64("connect-inflight", optarg, 1, 100000);
            break;
        case O_REORDER:
            G.allow_reorder = true;
            break;
        case O_ORDERED:
            G.force_ordered = true;
            break;
        case O_SRC:
            G.source_addrs = (uint32_t)opt_u64("source-addrs", optarg, 1, 254);
            break;
        case O_SELFTEST: {
            int failed = wsc_selftest() + mqtt_selftest() + loadgen_selftest();
            fprintf(stderr, "selftest: %s\n", failed ? "FAILED" : "ok");
            exit(failed ? 1 : 0);
        }
        case O_HELP:
            fputs(USAGE, stdout);
            exit(0);
        default:
            fputs(USAGE, stderr);
            exit(2);
        }
    }
    if (optind < argc)
        die(2, "unexpected argument '%s' (see --help)", argv[optind]);
    if (!G.port)
        die(2, "--port is required (see --help)");
    /* nchan's WebSocket publisher has no per-message reply; MQTT has no HTTP publish. */
    if (G.target == T_NCHAN && G.mode_set && G.mode_ws)
        die(2, "--target nchan publishes over HTTP only (--mode http)");
    if (G.target == T_MQTT && G.mode_set && !G.mode_ws)
        die(2, "--target mosquitto publishes over MQTT/WebSocket only (--mode ws)");
    if (G.target != T_HERALD)
        G.mode_ws = G.target == T_MQTT;
    if (G.batch > 1 && (G.target != T_HERALD || G.mode_ws))
        die(2, "--batch needs --target herald --mode http (POST /v1/publish)");
    if (G.idle_hold > 0 && !G.events_set)
        G.events = 0;
    if (G.allow_reorder && G.force_ordered)
        die(2, "--ordered and --allow-reorder contradict each other");
    /*
     * Overlapping publishes to one topic may reach the server in either order, so "publish
     * order" is only defined when they do not overlap: the exact check needs that, while a
     * benchmark wants all K requests in flight whatever the topic count.
     */
    G.ordered = G.force_ordered || (G.check_exact && !G.allow_reorder);
}

/* Resolves --host and refuses anything that is not loopback: this tool floods its target. */
static void resolve_target(void)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *res;
    char port[8];
    snprintf(port, sizeof(port), "%d", G.port);
    int r = getaddrinfo(G.host, port, &hints, &res);
    if (r)
        die(2, "cannot resolve %s: %s", G.host, gai_strerror(r));
    bool loop = false;
    if (res->ai_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)res->ai_addr;
        loop = (ntohl(a->sin_addr.s_addr) >> 24) == 127;
        snprintf(G.host_hdr, sizeof(G.host_hdr), "%s:%d", inet_ntoa(a->sin_addr), G.port);
    } else if (res->ai_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)res->ai_addr;
        loop = IN6_IS_ADDR_LOOPBACK(&a->sin6_addr) ||
               (IN6_IS_ADDR_V4MAPPED(&a->sin6_addr) && a->sin6_addr.s6_addr[12] == 127);
        snprintf(G.host_hdr, sizeof(G.host_hdr), "[::1]:%d", G.port);
    }
    if (!loop || res->ai_addrlen > sizeof(G.addr)) {
        freeaddrinfo(res);
        die(2, "refusing target %s: only 127.0.0.0/8 and ::1 are allowed", G.host);
    }
    memcpy(&G.addr, res->ai_addr, res->ai_addrlen);
    G.alen = res->ai_addrlen;
    G.addr2 = G.addr;
    if (G.addr2.ss_family == AF_INET)
        ((struct sockaddr_in *)&G.addr2)->sin_port = htons((uint16_t)G.port2);
    else
        ((struct sockaddr_in6 *)&G.addr2)->sin6_port = htons((uint16_t)G.port2);
    freeaddrinfo(res);
}

static void setup(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    uint64_t need = (uint64_t)G.subs + (G.events ? G.inflight : 0) + 16;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && need > rl.rlim_cur)
        die(2, "need %" PRIu64 " file descriptors, the limit is %llu", need,
            (unsigned long long)rl.rlim_cur);
    signal(SIGPIPE, SIG_IGN);
    if (getrandom(&G.rng, sizeof(G.rng), 0) != sizeof(G.rng) || !G.rng)
        G.rng = (uint64_t)mono_ns() | 1;

    G.nconns = G.subs + (G.events ? G.inflight : 0);
    G.conns = calloc(G.nconns ? G.nconns : 1, sizeof(*G.conns));
    G.rbuf = malloc(RBUF_CAP);
    G.sbuf_cap = (size_t)G.batch * (G.size + 48) + 1024;
    G.sbuf = malloc(G.sbuf_cap);
    G.bbuf = malloc((size_t)G.batch * (G.size + 48));
    G.retry_cap = G.inflight * G.pipeline;
    G.retry = calloc(G.retry_cap, sizeof(*G.retry));
    G.free_pubs = calloc(G.inflight, sizeof(*G.free_pubs));
    G.topic_busy = calloc(G.topics, 1);
    G.acked_topic = calloc(G.topics, sizeof(*G.acked_topic));
    G.open_subs = calloc(G.topics, sizeof(*G.open_subs));
    if (!G.conns || !G.rbuf || !G.sbuf || !G.bbuf || !G.retry || !G.free_pubs || !G.topic_busy ||
        !G.acked_topic || !G.open_subs)
        die(2, "out of memory");
    for (uint32_t i = 0; i < G.nconns; i++) {
        struct conn *c = &G.conns[i];
        *c = (struct conn){.fd = -1, .last_seq = -1};
        c->kind = i < G.subs ? K_SUB : G.mode_ws ? K_WSPUB : K_HTTPPUB;
        c->topic = i < G.subs ? i % G.topics : 0;
        if (i >= G.subs && !(c->rq = calloc(G.pipeline, sizeof(*c->rq))))
            die(2, "out of memory");
    }
    /* A bit per (subscriber, event of its topic) tells duplicates from reorders exactly. */
    G.per_topic = (G.events + G.topics - 1) / G.topics;
    uint64_t bits = (uint64_t)G.subs * G.per_topic;
    if (bits && bits <= BITMAP_MAX_BITS)
        G.seen = calloc((size_t)((bits + 7) / 8), 1); /* NULL: fall back to order only */
    G.ep = epoll_create1(EPOLL_CLOEXEC);
    if (G.ep < 0)
        die(2, "epoll_create1: %s", strerror(errno));
    if (G.server_pid && (proc_cpu_ticks(G.server_pid) < 0 || proc_rss_kb(G.server_pid) < 0))
        die(2, "cannot read /proc/%d/stat and status", G.server_pid);
}

static void teardown(void)
{
    for (uint32_t i = 0; i < G.nconns; i++) {
        struct conn *c = &G.conns[i];
        if (c->fd >= 0 && c->kind != K_HTTPPUB && c->state == ST_OPEN)
            send_ws(c, WSC_OP_CLOSE, "\x03\xe8", 2); /* 1000: a normal end, not a crash */
        if (c->fd >= 0)
            close(c->fd);
        buf_free(&c->in);
        buf_free(&c->out);
        buf_free(&c->frag);
        buf_free(&c->mq);
        free(c->rq);
    }
    close(G.ep);
    free(G.conns);
    free(G.rbuf);
    free(G.sbuf);
    free(G.bbuf);
    free(G.retry);
    free(G.free_pubs);
    free(G.topic_busy);
    free(G.acked_topic);
    free(G.open_subs);
    free(G.seen);
}

/* ---- report ---- */

static double self_cpu_s(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) < 0)
        return 0;
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

struct figures {
    long long rss_before, rss_connect, rss_end, cpu_c0, cpu_c1, cpu_r0, cpu_r1, oth_r0, oth_r1;
    double connect_s, elapsed_s, publish_s, client_cpu_s;
    bool timed_out;
};

static void put_num(const char *key, double v, bool valid)
{
    if (valid)
        printf(",\"%s\":%.3f", key, v);
    else
        printf(",\"%s\":null", key);
}

static void put_kb(const char *key, long long v)
{
    if (v >= 0)
        printf(",\"%s\":%lld", key, v);
    else
        printf(",\"%s\":null", key);
}

/* Prints the JSON line; returns the reason --check-exact fails, or NULL. */
static const char *report(const struct figures *fg, uint64_t expected, uint64_t missing)
{
    static char why[400];
    double tck = (double)sysconf(_SC_CLK_TCK);
    bool srv = G.server_pid > 0 && fg->cpu_r0 >= 0 && fg->cpu_r1 >= 0;
    double cpu_s = srv ? (double)(fg->cpu_r1 - fg->cpu_r0) / tck : 0;
    double cpu_cs =
        srv && fg->cpu_c0 >= 0 && fg->cpu_c1 >= 0 ? (double)(fg->cpu_c1 - fg->cpu_c0) / tck : 0;

    printf("{\"target\":\"%s\",\"subs\":%u,\"topics\":%u,\"events\":%" PRIu64
           ",\"size\":%u,\"mode\":\"%s\",\"inflight\":%u,\"pipeline\":%u,\"batch\":%u"
           ",\"rate\":%g,\"expected\":%" PRIu64 ",\"delivered\":%" PRIu64 ",\"duplicates\":%" PRIu64
           ",\"reordered\":%" PRIu64 ",\"missing\":%" PRIu64 ",\"unexpected\":%" PRIu64
           ",\"malformed\":%" PRIu64 ",\"published\":%" PRIu64 ",\"publish_errors\":%" PRIu64,
           TARGET_NAMES[G.target], G.subs, G.topics, G.events, G.size, G.mode_ws ? "ws" : "http",
           G.inflight, G.pipeline, G.batch, G.rate, expected, G.delivered, G.duplicates,
           G.reordered, missing, G.stray, G.malformed, G.acked, G.pub_errors);
    printf(",\"requests\":%" PRIu64 ",\"resent\":%" PRIu64 ",\"pipeline_refused\":%s",
           G.requests_ok, G.resent, G.pipeline_refused ? "true" : "false");
    printf(",\"ordered\":%s,\"timed_out\":%s", G.ordered ? "true" : "false",
           fg->timed_out ? "true" : "false");
    put_num("connect_s", fg->connect_s, true);
    put_num("idle_hold_s", G.idle_hold, true);
    put_num("elapsed_s", fg->elapsed_s, true);
    put_num("deliveries_per_s", fg->elapsed_s > 0 ? (double)G.delivered / fg->elapsed_s : 0, true);
    put_num("publish_per_s", fg->publish_s > 0 ? (double)G.acked / fg->publish_s : 0, true);
    printf(",\"lat_us\":{\"p50\":%.1f,\"p90\":%.1f,\"p99\":%.1f,\"p999\":%.1f,\"max\":%.1f}",
           hist_pct_us(0.50), hist_pct_us(0.90), hist_pct_us(0.99), hist_pct_us(0.999),
           (double)G.lat_max / 1000.0);
    put_num("client_cpu_s", fg->client_cpu_s, true);
    put_num("server_cpu_s", cpu_s, srv);
    put_num("server_cpu_us_per_delivery", G.delivered ? cpu_s * 1e6 / (double)G.delivered : 0,
            srv && G.delivered);
    put_num("server_cpu_us_per_event", G.acked ? cpu_s * 1e6 / (double)G.acked : 0, srv && G.acked);
    put_num("server_cpu_s_connect", cpu_cs, srv);
    bool oth = fg->oth_r0 >= 0 && fg->oth_r1 >= 0;
    double oth_s = oth ? (double)(fg->oth_r1 - fg->oth_r0) / tck : 0;
    put_num("other_cpu_s", oth_s, oth);
    put_num("other_cpu_us_per_publish", G.acked ? oth_s * 1e6 / (double)G.acked : 0,
            oth && G.acked);
    put_kb("server_rss_kb_before", fg->rss_before);
    put_kb("server_rss_kb_after_connect", fg->rss_connect);
    put_kb("server_rss_kb_end", fg->rss_end);
    bool rss = fg->rss_before >= 0 && fg->rss_connect >= 0 && G.subs;
    if (rss)
        printf(",\"rss_per_conn_bytes\":%lld",
               (fg->rss_connect - fg->rss_before) * 1024 / (long long)G.subs);
    else
        printf(",\"rss_per_conn_bytes\":null");
    printf(",\"subs_closed\":%u,\"publisher_reconnects\":%u,\"protocol_errors\":%" PRIu64
           ",\"closes\":{",
           G.sub_closed, G.reconnects, G.protocol_errors);
    for (int i = 0; i < G.ncloses; i++)
        printf("%s\"%d\":%" PRIu64, i ? "," : "", G.closes[i].code, G.closes[i].n);
    printf("}}\n");
    fflush(stdout);

    if (fg->timed_out)
        snprintf(why, sizeof(why),
                 "timed out: %" PRIu64 " of %" PRIu64 " deliveries missing, %" PRIu64 " of %" PRIu64
                 " events published",
                 missing, expected, G.acked, G.events);
    else if (G.pub_errors)
        snprintf(why, sizeof(why), "%" PRIu64 " publishes failed, first: %s", G.pub_errors,
                 G.pub_err);
    else if (G.acked != G.events)
        snprintf(why, sizeof(why), "only %" PRIu64 " of %" PRIu64 " events published%s%s", G.acked,
                 G.events, G.conn_err[0] ? ": " : "", G.conn_err);
    else if (G.duplicates)
        snprintf(why, sizeof(why), "%" PRIu64 " duplicate deliveries", G.duplicates);
    else if (G.reordered && G.ordered)
        snprintf(why, sizeof(why), "%" PRIu64 " deliveries out of publish order", G.reordered);
    else if (missing || G.delivered != expected)
        snprintf(why, sizeof(why),
                 "%" PRIu64 " deliveries missing (expected %" PRIu64 ", delivered %" PRIu64
                 ", %u subscribers closed)",
                 missing, expected, G.delivered, G.sub_closed);
    else if (G.stray || G.malformed)
        snprintf(why, sizeof(why),
                 "%" PRIu64 " events of other topics or out of range, %" PRIu64 " malformed events",
                 G.stray, G.malformed);
    else if (G.protocol_errors)
        snprintf(why, sizeof(why), "protocol error: %s", G.proto_err);
    else if (G.sub_closed)
        snprintf(why, sizeof(why), "%u subscribers closed by the server", G.sub_closed);
    else
        return NULL;
    return why;
}

int main(int argc, char **argv)
{
    parse_options(argc, argv);
    resolve_target();
    setup();

    struct figures fg = {.rss_before = -1,
                         .rss_connect = -1,
                         .rss_end = -1,
                         .cpu_c0 = -1,
                         .cpu_c1 = -1,
                         .cpu_r0 = -1,
                         .cpu_r1 = -1,
                         .oth_r0 = -1,
                         .oth_r1 = -1};
    int pid = G.server_pid;
    if (pid) {
        fg.rss_before = proc_rss_kb(pid);
        fg.cpu_c0 = cpu_ticks_sum(G.server_pids, G.n_server_pids);
    }

    /* 1. Subscribers, paced: at most --connect-inflight handshakes+subscribes at a time. */
    G.phase = PH_CONNECT;
    int64_t t0 = mono_ns();
    if (!run_loop(connect_done, t0 + (int64_t)(G.timeout * 1e9)))
        die(2, "only %u of %u subscribers ready after %.1f s", G.sub_ready, G.subs, G.timeout);
    fg.connect_s = (double)(mono_ns() - t0) / 1e9;
    if (pid)
        fg.cpu_c1 = cpu_ticks_sum(G.server_pids, G.n_server_pids);

    /* 2. Optional idle hold: pings are still answered, nothing is published. */
    if (G.idle_hold > 0) {
        G.phase = PH_HOLD;
        run_loop(NULL, mono_ns() + (int64_t)(G.idle_hold * 1e9));
    }
    if (pid)
        fg.rss_connect = proc_rss_kb(pid);

    /* 3. Publishers. */
    if (G.events) {
        G.phase = PH_PUBCONNECT;
        for (uint32_t i = G.subs; i < G.nconns; i++)
            conn_open(&G.conns[i]);
        if (!run_loop(pubconnect_done, mono_ns() + (int64_t)(G.timeout * 1e9)))
            die(2, "only %u of %u publishers connected after %.1f s", G.pub_ready, G.inflight,
                G.timeout);
    }

    /* 4. Publish and collect until every expected delivery arrived or the timeout. */
    G.phase = PH_RUN;
    if (pid)
        fg.cpu_r0 = cpu_ticks_sum(G.server_pids, G.n_server_pids);
    fg.oth_r0 = G.n_other_pids ? cpu_ticks_sum(G.other_pids, G.n_other_pids) : -1;
    fg.client_cpu_s = self_cpu_s();
    G.run_t0 = G.last_progress = mono_ns();
    bool done = run_loop(run_done, G.run_t0 + (int64_t)(G.timeout * 1e9));
    int64_t t_end = done ? mono_ns() : G.last_progress;
    if (pid) {
        fg.cpu_r1 = cpu_ticks_sum(G.server_pids, G.n_server_pids);
        fg.rss_end = proc_rss_kb(pid);
    }
    fg.oth_r1 = G.n_other_pids ? cpu_ticks_sum(G.other_pids, G.n_other_pids) : -1;
    fg.client_cpu_s = self_cpu_s() - fg.client_cpu_s;
    fg.timed_out = !done;
    fg.elapsed_s = (double)(t_end - G.run_t0) / 1e9;
    fg.publish_s = G.acked ? (double)(G.last_ack - G.run_t0) / 1e9 : 0;
    if (G.check_exact && done) {
        G.phase = PH_LINGER; /* late duplicates would show up now */
        run_loop(NULL, mono_ns() + LINGER_NS);
    }

    uint64_t expected = 0, unique = 0;
    for (uint32_t i = 0; i < G.subs; i++) {
        expected += G.acked_topic[G.conns[i].topic];
        unique += G.conns[i].unique;
    }
    uint64_t missing = expected > unique ? expected - unique : 0;
    const char *why = report(&fg, expected, missing);
    int rc = 0;
    if (G.connect_failed) {
        fprintf(stderr, "loadgen: cannot connect: %s\n", G.conn_err);
        rc = 2;
    } else if (G.check_exact && why) {
        fprintf(stderr, "loadgen: check failed: %s\n", why);
        rc = 1;
    }
    teardown();
    return rc;
}
