/* SPDX-License-Identifier: MIT */
/*
 * One-shot HTTP GETs for polling (GET /v1/topics/{pattern}/events) and delivery status
 * (GET /v1/events/{id}). Each call builds a small libwebsockets client context on the calling
 * thread, runs one request to completion or to its deadline, and tears it down: these are
 * occasional calls, so simplicity beats connection reuse. Bodies are capped; error bodies are
 * turned into herald_error values with the server's code.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

#include <libwebsockets.h>

#define BODY_MAX (16u << 20)
#define BODY_SLICE 16384

struct http_req {
    const herald_options *opts;
    const char *ctype;          /* request body's Content-Type; NULL: no body */
    const unsigned char *rbody; /* borrowed */
    size_t rlen, roff;
    int status;
    char *body;
    size_t len, cap;
    bool done, failed, too_big;
    char error[160];
    lws_sorted_usec_list_t sul;
    struct lws_context *ctx;
    uint64_t deadline_us; /* CLOCK_MONOTONIC */
    bool timed_out;
};

/* How often the request loop looks at its deadline. */
#define TICK_US (100 * LWS_US_PER_MS)

static uint64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static int append(struct http_req *h, const char *in, size_t len)
{
    if (h->len + len > BODY_MAX) {
        h->too_big = true;
        return -1;
    }
    if (h->len + len + 1 > h->cap) {
        size_t cap = h->cap ? h->cap : 4096;
        while (cap < h->len + len + 1)
            cap *= 2;
        char *n = realloc(h->body, cap);
        if (!n)
            return -1;
        h->body = n;
        h->cap = cap;
    }
    memcpy(h->body + h->len, in, len);
    h->len += len;
    h->body[h->len] = '\0';
    return 0;
}

static int http_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                   size_t len)
{
    struct http_req *h = lws_context_user(lws_get_context(wsi));
    (void)user;
    if (!h)
        return 0;
    switch (reason) {
    case LWS_CALLBACK_CLIENT_APPEND_HANDSHAKE_HEADER: {
        unsigned char **p = in, *end = *p + len;
        if (h->ctype) {
            if (lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_CONTENT_TYPE,
                                             (const unsigned char *)h->ctype, (int)strlen(h->ctype),
                                             p, end) ||
                lws_add_http_header_content_length(wsi, h->rlen, p, end))
                return -1;
            lws_client_http_body_pending(wsi, 1);
            lws_callback_on_writable(wsi);
        }
        if (!h->opts->token)
            return 0;
        char hdr[8 + 4096 + 1];
        int n = snprintf(hdr, sizeof(hdr), "Bearer %s", h->opts->token);
        if (n < 0 || (size_t)n >= sizeof(hdr) ||
            lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_AUTHORIZATION, (unsigned char *)hdr, n,
                                         p, end))
            return -1;
        return 0;
    }
    case LWS_CALLBACK_CLIENT_HTTP_WRITEABLE: {
        /* The body in slices, one per writable callback (lws writes from its own headroom). */
        unsigned char buf[LWS_PRE + BODY_SLICE];
        size_t n = h->rlen - h->roff < BODY_SLICE ? h->rlen - h->roff : BODY_SLICE;
        bool last = h->roff + n == h->rlen;
        memcpy(buf + LWS_PRE, h->rbody + h->roff, n);
        if (lws_write(wsi, buf + LWS_PRE, n, last ? LWS_WRITE_HTTP_FINAL : LWS_WRITE_HTTP) !=
            (int)n)
            return -1;
        h->roff += n;
        if (last)
            lws_client_http_body_pending(wsi, 0);
        else
            lws_callback_on_writable(wsi);
        return 0;
    }
    case LWS_CALLBACK_ESTABLISHED_CLIENT_HTTP:
        h->status = (int)lws_http_client_http_response(wsi);
        return 0;
    case LWS_CALLBACK_RECEIVE_CLIENT_HTTP: {
        char buf[LWS_PRE + 4096];
        char *px = buf + LWS_PRE;
        int lenx = (int)sizeof(buf) - LWS_PRE;
        return lws_http_client_read(wsi, &px, &lenx) < 0 ? -1 : 0;
    }
    case LWS_CALLBACK_RECEIVE_CLIENT_HTTP_READ:
        return append(h, in, len);
    case LWS_CALLBACK_COMPLETED_CLIENT_HTTP:
        h->done = true;
        lws_cancel_service(lws_get_context(wsi));
        return 0;
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
        herald__sanitize(h->error, sizeof(h->error), in ? in : "connection failed",
                         in ? strlen(in) : 17);
        h->failed = true;
        h->done = true;
        return 0;
    case LWS_CALLBACK_CLOSED_CLIENT_HTTP:
        if (!h->done) {
            h->failed = !h->status;
            if (h->failed && !h->error[0])
                snprintf(h->error, sizeof(h->error), "connection closed");
            h->done = true;
        }
        return 0;
    default:
        return 0;
    }
}

/*
 * The whole request has one deadline, checked on our own clock: a single lws timer for it
 * was seen to be skipped when lws closed a silent connection on its own timeout at the same
 * moment (the call then took 30 s instead of 2). A short periodic tick keeps lws_service()
 * returning, and lws's own per-state timeouts are set beyond the deadline.
 */
static void on_tick(lws_sorted_usec_list_t *sul)
{
    struct http_req *h = lws_container_of(sul, struct http_req, sul);
    if (mono_us() >= h->deadline_us) {
        h->timed_out = true;
        h->done = true;
        return;
    }
    lws_sul_schedule(h->ctx, 0, &h->sul, on_tick, TICK_US);
}

int herald__pct_encode(char *out, size_t cap, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = strlen(out);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        bool plain = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                     (ch >= '0' && ch <= '9') || strchr("-._~:@*", ch);
        if (o + (plain ? 1 : 3) >= cap)
            return -1;
        if (plain) {
            out[o++] = (char)ch;
        } else {
            out[o++] = '%';
            out[o++] = hex[ch >> 4];
            out[o++] = hex[ch & 15];
        }
    }
    out[o] = '\0';
    return 0;
}

int herald__http_get(const struct herald__url *u, const herald_options *o,
                     const char *path_and_query, int timeout_ms, int *status, char **body,
                     size_t *body_len, herald_error *err)
{
    return herald__http_request(u, o, NULL, NULL, 0, path_and_query, timeout_ms, status, body,
                                body_len, err);
}

int herald__http_request(const struct herald__url *u, const herald_options *o, const char *ctype,
                         const void *req_body, size_t req_len, const char *path_and_query,
                         int timeout_ms, int *status, char **body, size_t *body_len,
                         herald_error *err)
{
    static const struct lws_protocols protocols[] = {
        {.name = "herald-http", .callback = http_cb},
        {.name = NULL},
    };
    struct http_req h = {.opts = o, .ctype = ctype, .rbody = req_body, .rlen = req_len};
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof(info));
    info.port = CONTEXT_PORT_NO_LISTEN;
    info.protocols = protocols;
    info.user = &h;
    info.gid = (gid_t)-1;
    info.uid = (uid_t)-1;
    info.timeout_secs = (unsigned)(timeout_ms + 999) / 1000 + 10; /* ours comes first */
    if (u->tls) {
        info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
        info.client_ssl_ca_filepath = o->ca_file;
    }
    herald__lws_global_lock();
    herald__lws_quiet(o);
    struct lws_context *ctx = lws_create_context(&info);
    herald__lws_global_unlock();
    if (!ctx)
        return herald__err(err, HERALD_E_CONNECT, NULL, "cannot set up libwebsockets");

    struct lws_client_connect_info i;
    memset(&i, 0, sizeof(i));
    i.context = ctx;
    i.address = u->host;
    i.port = u->port;
    i.path = path_and_query;
    i.host = u->host_header;
    i.method = ctype ? "POST" : "GET";
    i.protocol = protocols[0].name;
    i.alpn = "http/1.1";
    if (u->tls) {
        i.ssl_connection = LCCSCF_USE_SSL;
        if (o->insecure)
            i.ssl_connection |= LCCSCF_ALLOW_SELFSIGNED | LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK |
                                LCCSCF_ALLOW_EXPIRED | LCCSCF_ALLOW_INSECURE;
    }
    h.ctx = ctx;
    h.deadline_us = mono_us() + (uint64_t)timeout_ms * 1000u;
    lws_sul_schedule(ctx, 0, &h.sul, on_tick, TICK_US);
    if (!lws_client_connect_via_info(&i) && !h.done) {
        h.failed = true;
        h.done = true;
        snprintf(h.error, sizeof(h.error), "cannot start the request");
    }
    while (!h.done) {
        if (lws_service(ctx, 0) < 0)
            break;
        if (!h.done && mono_us() >= h.deadline_us) {
            h.timed_out = true;
            h.done = true;
        }
    }
    lws_sul_cancel(&h.sul);
    herald__lws_global_lock();
    lws_context_destroy(ctx);
    herald__lws_global_unlock();

    if (h.timed_out || !h.done || h.failed || h.too_big) {
        free(h.body);
        if (h.too_big)
            return herald__err(err, HERALD_E_PROTOCOL, NULL, "the response is over %u bytes",
                               BODY_MAX);
        if (h.timed_out)
            return herald__err(err, HERALD_E_TIMEOUT, NULL, "no answer from %s within %d ms",
                               u->host_header, timeout_ms);
        return herald__err(err, HERALD_E_CONNECT, NULL, "cannot connect to %s: %s", u->host_header,
                           h.error[0] ? h.error : "connection failed");
    }
    if (!h.body && append(&h, "", 0) < 0)
        return herald__err(err, HERALD_E_NOMEM, NULL, "out of memory");
    *status = h.status;
    *body = h.body;
    *body_len = h.len;
    return 0;
}

/* Turns a non-2xx response into an error value; takes ownership of body. */
static int http_error(int status, char *body, herald_error *err)
{
    json_t *v = json_loads(body, 0, NULL);
    const char *code = json_string_value(json_object_get(v, "code"));
    const char *msg = json_string_value(json_object_get(v, "message"));
    int st = (status == 401 || status == 403) ? HERALD_E_AUTH : HERALD_E_SERVER;
    if (code)
        herald__err(err, st, code, "%s: %s", code, msg ? msg : "");
    else
        herald__err(err, st, NULL, "the server answered HTTP %d", status);
    json_decref(v);
    free(body);
    return st;
}

int herald__http_any(const char *list, const herald_options *opts, const char *ctype,
                     const void *req_body, size_t req_len, const char *path, int timeout_ms,
                     int *status, char **body, size_t *body_len, herald_error *err)
{
    struct herald__url *urls;
    size_t n;
    int r = herald__url_list_parse(list, &urls, &n, err);
    if (r)
        return r;
    struct herald_options o;
    if (opts)
        o = *opts; /* borrowed: the strings stay the caller's */
    else
        herald__options_defaults(&o);
    for (size_t k = 0; k < n; k++) {
        const struct herald__url *u = &urls[k];
        char full[4 * HERALD__PATH_MAX];
        const char *sep = u->query[0] ? (strchr(path, '?') ? "&" : "?") : "";
        int len = snprintf(full, sizeof(full), "%s%s%s%s", u->prefix, path, sep, u->query);
        if (len < 0 || (size_t)len >= sizeof(full)) {
            r = herald__err(err, HERALD_E_INVALID, NULL, "request path too long");
            break;
        }
        r = herald__http_request(u, &o, ctype, req_body, req_len, full, timeout_ms, status, body,
                                 body_len, err);
        /* Only a server that could not be reached is skipped: after a timeout the request
         * may be under way there, and the deadline is spent. */
        if (r != HERALD_E_CONNECT)
            break;
    }
    free(urls);
    return r;
}

static int get_json(const char *list, const herald_options *opts, const char *path, int timeout,
                    char **body_out, herald_error *err)
{
    int status = 0;
    char *body = NULL;
    size_t len = 0;
    int r = herald__http_any(list, opts, NULL, NULL, 0, path, timeout, &status, &body, &len, err);
    if (r)
        return r;
    if (status < 200 || status > 299)
        return http_error(status, body, err);
    json_t *v = json_loadb(body, len, 0, NULL);
    bool obj = json_is_object(v);
    json_decref(v);
    if (!obj) {
        free(body);
        return herald__err(err, HERALD_E_PROTOCOL, NULL,
                           "the server's answer is not a JSON "
                           "object");
    }
    *body_out = body;
    return 0;
}

HERALD_API int herald_poll(const char *url, const herald_options *opts, const char *pattern,
                           const char *since, unsigned limit, unsigned wait_s, char **body_out,
                           herald_error *err)
{
    if (!body_out)
        return herald__err(err, HERALD_E_INVALID, NULL, "no place for the answer");
    *body_out = NULL;
    if (!pattern || !*pattern || strlen(pattern) > HERALD_TOPIC_MAX)
        return herald__err(err, HERALD_E_INVALID, NULL, "the pattern must be 1-%d bytes",
                           HERALD_TOPIC_MAX);
    if (since && strlen(since) > HERALD_ID_MAX)
        return herald__err(err, HERALD_E_INVALID, NULL, "since is longer than %d bytes",
                           HERALD_ID_MAX);
    if (wait_s > 60)
        return herald__err(err, HERALD_E_INVALID, NULL, "wait must be 0-60 seconds");
    if (limit > 1000)
        return herald__err(err, HERALD_E_INVALID, NULL, "limit must be 1-1000");
    char path[2 * HERALD__PATH_MAX] = "/v1/topics/"; /* after each server's prefix */
    char num[48];
    if (herald__pct_encode(path, sizeof(path), pattern) < 0)
        return herald__err(err, HERALD_E_INVALID, NULL, "request path too long");
    snprintf(num, sizeof(num), "/events?wait=%u", wait_s);
    if (strlen(path) + strlen(num) + 1 > sizeof(path))
        return herald__err(err, HERALD_E_INVALID, NULL, "request path too long");
    strcat(path, num);
    if (limit) {
        snprintf(num, sizeof(num), "&limit=%u", limit);
        if (strlen(path) + strlen(num) + 1 > sizeof(path))
            return herald__err(err, HERALD_E_INVALID, NULL, "request path too long");
        strcat(path, num);
    }
    if (since) {
        if (strlen(path) + 7 > sizeof(path))
            return herald__err(err, HERALD_E_INVALID, NULL, "request path too long");
        strcat(path, "&since=");
        if (herald__pct_encode(path, sizeof(path), since) < 0)
            return herald__err(err, HERALD_E_INVALID, NULL, "request path too long");
    }
    int timeout =
        (int)wait_s * 1000 + (opts ? opts->connect_timeout_ms : HERALD__DEFAULT_CONNECT_TIMEOUT_MS);
    return get_json(url, opts, path, timeout, body_out, err);
}

HERALD_API int herald_event_status(const char *url, const herald_options *opts, const char *id,
                                   char **body_out, herald_error *err)
{
    if (!body_out)
        return herald__err(err, HERALD_E_INVALID, NULL, "no place for the answer");
    *body_out = NULL;
    if (!id || !*id || strlen(id) > HERALD_ID_MAX)
        return herald__err(err, HERALD_E_INVALID, NULL, "the id must be 1-%d bytes", HERALD_ID_MAX);
    char path[2 * HERALD__PATH_MAX] = "/v1/events/";
    if (herald__pct_encode(path, sizeof(path), id) < 0)
        return herald__err(err, HERALD_E_INVALID, NULL, "request path too long");
    int timeout = opts ? opts->connect_timeout_ms : HERALD__DEFAULT_CONNECT_TIMEOUT_MS;
    return get_json(url, opts, path, timeout, body_out, err);
}
