/* SPDX-License-Identifier: MIT */
/*
 * The read side of every plaintext HTTP connection, below libwebsockets. lws 4.1 has no hook
 * between the socket and its header parser (lib/roles/http/parsers.c: a head it cannot parse
 * is dropped without an answer or gets its own 403 page), so heraldd supplies the recv() lws
 * calls (recvguard.c) and each connection's bytes pass hd_h1_feed (h1frame.c) first. TLS
 * connections are read by OpenSSL and are not checked here.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "api.h"
#include "h1frame.h"
#include "log.h"
#include "server.h"
#include "server_int.h"

/*
 * THE lws version decisions for HTTP/1.1 framing.
 *
 * Pipelining: lws 4.1 (Debian 12) re-reads a pipelined body from the start of its buffer
 * (LWS_NOTES.md). lws 4.3.5 (Debian 13) is no better: its HTTP/1 server never sets
 * content_length_given, so a request body is everything in the read buffer, the next request
 * included, and the request never completes (the client waits for ever; upstream fixed it
 * after v4.4.1, in "Audit fixes", cae06c63a). So on every lws Debian ships: one request per
 * read, and a pipelining client gets `Connection: close` and retries (RFC 9112 9.3.2).
 *
 * Chunked request bodies: neither 4.1 nor 4.3 decodes them. On 4.3 lws hands the raw chunked
 * bytes to the HTTP_BODY callback (a body without Content-Length is read as "up to 100 MB"),
 * and heraldd decodes them itself (server_http.c); on 4.1 the request is refused with
 * 411 as before. Both are decided at build time from lws_config.h.
 */
static const struct {
    bool pipelining, chunked;
} lws_h1 = {.pipelining = false,
            .chunked = LWS_LIBRARY_VERSION_MAJOR > 4 ||
                       (LWS_LIBRARY_VERSION_MAJOR == 4 && LWS_LIBRARY_VERSION_MINOR >= 3)};

bool srv_lws_decodes_chunked(void)
{
    return lws_h1.chunked;
}

/* lws keeps each known header and each query part in a fragment of a fixed table
 * (WSI_TOKEN_COUNT, about 95 in 4.1) and drops the request when it runs out: the
 * two limits below keep the sum under it. */
#define GUARD_MAX_HEADERS 64
#define GUARD_MAX_PARAMS 24

struct guard {
    bool on;        /* a plaintext HTTP connection lws accepted */
    uint64_t token; /* which one */
    struct hd_h1 h;
};

static struct guard *guards;
static size_t n_guards;
static uint64_t last_token;
static struct hd_h1_opts opts;
/* The loop thread, the only one lws reads on. Every other thread's recv() goes straight to the
 * socket: `guards` is not safe to read off the loop. (libnats' socket is read on the loop in
 * cluster mode; it is never guarded because a guard ends with its connection, or with the
 * turn lws declined to adopt it in: srv_peer_unadopted.) */
static pthread_t loop_thread;
static atomic_bool loop_thread_set;

void srv_guard_init(const struct hd_config *cfg)
{
    loop_thread = pthread_self();
    atomic_store_explicit(&loop_thread_set, true, memory_order_release);
    opts = (struct hd_h1_opts){.max_head_bytes = cfg->limits.max_header_bytes,
                               .max_headers = GUARD_MAX_HEADERS,
                               .max_params = GUARD_MAX_PARAMS,
                               .pipelining = lws_h1.pipelining,
                               .chunked = lws_h1.chunked};
}

unsigned srv_guard_lws_header_bytes(const struct hd_config *cfg)
{
    /* lws stores 8 bytes more per unknown header than the request carries: room for them,
     * so that limits.max_header_bytes is enforced (with a 431) here and never by lws. */
    unsigned n = cfg->limits.max_header_bytes + 8 * GUARD_MAX_HEADERS + 256;
    return n > 65535 ? 65535 : n;
}

static struct guard *guard_of(int fd)
{
    return fd >= 0 && (size_t)fd < n_guards && guards[fd].on ? &guards[fd] : NULL;
}

uint64_t srv_guard_open(int fd, bool tls)
{
    if (fd < 0)
        return 0;
    if ((size_t)fd >= n_guards) {
        if (tls)
            return 0;
        size_t n = n_guards ? n_guards : 1024;
        while (n <= (size_t)fd)
            n *= 2;
        struct guard *g = realloc(guards, n * sizeof(*g));
        if (!g) {
            hd_log_warn("out of memory: this connection's HTTP framing is not checked", "fd=%d",
                        fd);
            return 0;
        }
        memset(g + n_guards, 0, (n - n_guards) * sizeof(*g));
        guards = g;
        n_guards = n;
    }
    guards[fd] = (struct guard){.on = !tls, .token = ++last_token};
    return last_token;
}

void srv_guard_close(int fd, uint64_t token)
{
    if (fd >= 0 && (size_t)fd < n_guards && guards[fd].token == token)
        guards[fd] = (struct guard){0};
}

bool srv_guard_pipelined(int fd)
{
    struct guard *g = guard_of(fd);
    return g && g->h.pipelined;
}

void srv_guard_answered(int fd)
{
    struct guard *g = guard_of(fd);
    if (g)
        hd_h1_answered(&g->h);
}

/* Reads and throws away what the peer has sent: recv()'s answer for a connection that is
 * past its last request. 0 at the peer's end, else -1 with errno (EAGAIN: nothing more). */
static ssize_t discard(int fd)
{
    char sink[4096];
    for (int i = 0; i < 64; i++) {
        ssize_t n = recvfrom(fd, sink, sizeof(sink), MSG_DONTWAIT, NULL, NULL);
        if (n <= 0)
            return n;
    }
    errno = EAGAIN; /* the rest at the next wake-up: one connection must not hold the loop */
    return -1;
}

static void send_refusal(int fd, const struct hd_h1_refusal *ref)
{
    struct hd_http_resp resp = {0};
    hd_api_error(&resp, ref->code, ref->message);
    resp.status = ref->status; /* 414 and 431 carry too_large's body */
    if (ref->allow)
        hd_http_resp_header(&resp, "allow:", ref->allow);
    char buf[1024];
    size_t n = srv_format_resp(buf, sizeof(buf), &resp);
    hd_http_resp_clear(&resp);
    /* Into an empty send buffer (nothing else was written on this request): never blocks. */
    if (n && send(fd, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
        hd_log_debug("refusal not sent", "errno=%d", errno);
    /* The FIN goes after the answer; what the peer still sends is read and dropped until it
     * closes (or lws's header timeout does), so the answer is not lost to a reset. */
    shutdown(fd, SHUT_WR);
    hd_log_debug("request refused", "status=%d code=%s reason=\"%s\"", ref->status,
                 hd_err_name(ref->code), ref->message);
}

/*
 * A close frame (RFC 6455 5.5.1) straight to the socket, and a shutdown so that lws writes
 * nothing after it. Should lws hold the unsent part of a frame at that moment (a client that
 * breaks the protocol while it reads too slowly), the close cuts into it: that client is
 * closed either way.
 */
static void send_ws_close(int fd, const struct hd_h1_refusal *ref)
{
    unsigned char f[2 + 2 + sizeof(ref->message)];
    size_t rlen = strnlen(ref->message, 120);
    f[0] = 0x88;
    f[1] = (unsigned char)(2 + rlen);
    f[2] = (unsigned char)(ref->status >> 8);
    f[3] = (unsigned char)ref->status;
    memcpy(f + 4, ref->message, rlen);
    if (send(fd, f, 4 + rlen, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
        hd_log_debug("close frame not sent", "errno=%d", errno);
    shutdown(fd, SHUT_WR);
    hd_log_debug("websocket closed", "code=%d reason=\"%s\"", ref->status, ref->message);
}

ssize_t hd_guard_recv(int fd, void *buf, size_t len, int flags)
{
    if (!atomic_load_explicit(&loop_thread_set, memory_order_acquire) ||
        !pthread_equal(pthread_self(), loop_thread))
        return recvfrom(fd, buf, len, flags, NULL, NULL);
    struct guard *g = flags ? NULL : guard_of(fd);
    /* (lws reads into buffers of hundreds of bytes or more; a 1-byte read is not its.) */
    if (!g || g->h.state == H1_PASS || len < 2)
        return recvfrom(fd, buf, len, flags, NULL, NULL);
    if (g->h.state == H1_DISCARD || g->h.state == H1_REFUSED)
        return discard(fd);
    struct hd_h1_refusal ref;
    if (g->h.state == H1_WS) {
        /* Frames are never held back or rewritten: read them straight into lws's buffer. */
        ssize_t n = recvfrom(fd, buf, len, 0, NULL, NULL);
        size_t ok;
        if (n > 0 && hd_h1_ws_scan(&g->h, buf, (size_t)n, &ok, &ref) != H1_OK) {
            send_ws_close(fd, &ref);
            return discard(fd);
        }
        return n;
    }
    if (g->h.state == H1_BODY) {
        /* A body is read up to its end and not a byte further: no need to look first. */
        ssize_t n =
            recvfrom(fd, buf, len < g->h.body_left ? len : (size_t)g->h.body_left, 0, NULL, NULL);
        if (n > 0)
            hd_h1_took_body(&g->h, (size_t)n);
        return n;
    }
    /*
     * Read into our own buffer and hand lws what the check lets through. One byte short of
     * lws's buffer: the check may put a '/' in place of an absolute URI's authority, so its
     * output is at most one byte longer than its input, and it then always takes all of it
     * (a second request's bytes are dropped, not left for later; see hd_h1_opts).
     */
    static char in[65536];
    size_t want = len - 1 < sizeof(in) ? len - 1 : sizeof(in);
    ssize_t n = recvfrom(fd, in, want, 0, NULL, NULL);
    if (n <= 0)
        return n;
    size_t consumed = 0, out = 0;
    enum hd_h1_verdict v = hd_h1_feed(&g->h, &opts, in, (size_t)n, buf, len, &consumed, &out, &ref);
    if (v == H1_REFUSE) {
        send_refusal(fd, &ref);
        return discard(fd);
    }
    if (v == H1_WS_CLOSE) {
        send_ws_close(fd, &ref);
        return discard(fd);
    }
    if (g->h.state == H1_DISCARD) {
        ssize_t d = discard(fd); /* pipelined: those requests are retried after the close */
        if (!out)
            return d;
    }
    if (!out) {
        errno = EAGAIN; /* all of it was dropped (an absolute URI's authority): wait for more */
        return -1;
    }
    return (ssize_t)out;
}
