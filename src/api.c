/* SPDX-License-Identifier: MIT */
/*
 * HTTP API policy: which path and method does what, what a request must look like, and
 * what comes back. Every error answers with the documented JSON body and changes nothing.
 * The bytes on the wire are the transport's business (src/server*.c).
 */
#include "api_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "assets.h"
#include "engine_nats.h"
#include "log.h"
#include "topic.h"

int hd_http_resp_header(struct hd_http_resp *resp, const char *name, const char *value)
{
    if (resp->n_headers >= HD_HTTP_MAX_HEADERS)
        return -ENOSPC;
    resp->headers[resp->n_headers].name = name;
    resp->headers[resp->n_headers].value = value;
    resp->n_headers++;
    return 0;
}

int hd_http_resp_header_uint(struct hd_http_resp *resp, const char *name, unsigned value)
{
    char *at = resp->text + resp->text_used;
    size_t left = sizeof(resp->text) - resp->text_used;
    int n = snprintf(at, left, "%u", value);
    if (n < 0 || (size_t)n >= left || hd_http_resp_header(resp, name, at))
        return -ENOSPC;
    resp->text_used += (size_t)n + 1;
    return 0;
}

void hd_http_resp_clear(struct hd_http_resp *resp)
{
    free(resp->body);
    free(resp->stream);
    if (resp->who) {
        hd_identity_clear(resp->who);
        free(resp->who);
    }
    free(resp->credential);
    memset(resp, 0, sizeof(*resp));
}

void hd__api_body(struct hd_http_resp *resp, int status, const char *ctype, char *body, size_t len)
{
    free(resp->body);
    resp->status = status;
    resp->content_type = ctype;
    resp->body = body;
    resp->body_len = body ? len : 0;
    if (!body) { /* out of memory: an empty 500 is still an answer */
        resp->status = 500;
        resp->content_type = "application/json";
    }
}

void hd_api_error(struct hd_http_resp *resp, enum hd_err code, const char *message)
{
    size_t len = 0;
    char *body = hd_encode_error(false, false, 0, code, message, &len);
    hd__api_body(resp, hd_err_http(code), "application/json", body, len);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int hd_url_decode(const char *src, size_t len, char *dst, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char c = src[i];
        if (c == '%') {
            if (i + 2 >= len)
                return -EINVAL;
            int a = hexval(src[i + 1]), b = hexval(src[i + 2]);
            if (a < 0 || b < 0)
                return -EINVAL;
            c = (char)(a * 16 + b);
            if (!c)
                return -EINVAL;
            i += 2;
        } else if (c == '+') {
            c = ' ';
        }
        if (o + 1 >= cap)
            return -EINVAL;
        dst[o++] = c;
    }
    if (!cap)
        return -EINVAL;
    dst[o] = '\0';
    return 0;
}

int hd_query_get(const char *query, const char *name, char *out, size_t cap)
{
    if (!query)
        return -1;
    size_t nlen = strlen(name);
    const char *p = query;
    while (*p) {
        const char *end = strchr(p, '&');
        size_t seglen = end ? (size_t)(end - p) : strlen(p);
        if (seglen >= nlen && strncmp(p, name, nlen) == 0 && (seglen == nlen || p[nlen] == '=')) {
            const char *v = seglen == nlen ? p + nlen : p + nlen + 1;
            size_t vlen = seglen == nlen ? 0 : seglen - nlen - 1;
            if (hd_url_decode(v, vlen, out, cap))
                return -2;
            return (int)strlen(out);
        }
        if (!end)
            break;
        p = end + 1;
    }
    return -1;
}
bool hd_api_origin_allowed(const struct hd_broker *b, const char *origin)
{
    const struct hd_strlist *o = &hd_broker_config(b)->cors_origins;
    if (!origin)
        return true; /* CLI tools and servers send none: not an outside origin */
    for (size_t i = 0; i < o->n; i++)
        if (strcmp(o->v[i], "*") == 0 || strcasecmp(o->v[i], origin) == 0)
            return true;
    return false;
}

void hd_api_cors(const struct hd_broker *b, const struct hd_http_req *req,
                 struct hd_http_resp *resp)
{
    const struct hd_strlist *o = &hd_broker_config(b)->cors_origins;
    bool star = false;
    for (size_t i = 0; i < o->n; i++)
        star |= strcmp(o->v[i], "*") == 0;
    if (star) {
        hd_http_resp_header(resp, "access-control-allow-origin:", "*");
    } else if (req->origin && hd_api_origin_allowed(b, req->origin)) {
        hd_http_resp_header(resp, "access-control-allow-origin:", req->origin);
        hd_http_resp_header(resp, "vary:", "Origin");
    }
    hd_http_resp_header(resp, "access-control-expose-headers:", "Retry-After");
}

size_t hd_api_body_limit(const struct hd_broker *b, const struct hd_http_req *req)
{
    const struct hd_config *cfg = hd_broker_config(b);
    if (strcmp(req->path, "/v1/publish") == 0)
        return (size_t)cfg->limits.max_batch_bytes;
    /* The same slack WebSocket frames get: JSON whitespace and escapes around the data. */
    return (size_t)cfg->limits.max_event_bytes + 16384;
}

void hd__api_refuse(struct hd_http_resp *resp, const struct hd_error *err)
{
    enum hd_err code = err->code ? err->code : HD_ERR_INTERNAL;
    hd_api_error(resp, code, err->message[0] ? err->message : hd_err_name(code));
    if (err->retry_after)
        hd_http_resp_header_uint(resp, "retry-after:", err->retry_after);
    if (code == HD_ERR_UNAUTHORIZED)
        hd_http_resp_header(resp, "www-authenticate:", "Bearer realm=\"herald\"");
}

const struct hd_identity *hd__api_who(struct hd_broker *b, const struct hd_http_req *req,
                                      struct hd_http_resp *resp)
{
    if (resp->who)
        return resp->who;
    /* malloc, not calloc: glibc's calloc passes by the per-thread cache that free fills. */
    struct hd_identity *id = malloc(sizeof(*id));
    if (!id) {
        hd_api_error(resp, HD_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    *id = (struct hd_identity){0};
    if (hd_api_authenticate(b, req, id, &resp->credential, resp)) {
        free(id);
        return NULL;
    }
    resp->who = id;
    return id;
}

/* Routes: each path shape lists the methods it answers, for 405 Allow and preflights. */
enum route {
    R_NONE,
    R_HEALTH,
    R_METRICS,
    R_WS,
    R_PUBLISH,
    R_BATCH,
    R_POLL,
    R_SSE,
    R_STATUS,
    R_ASSET
};

static const char *const route_allow[] = {
    [R_HEALTH] = "GET, HEAD, OPTIONS", [R_METRICS] = "GET, HEAD, OPTIONS",
    [R_WS] = "GET, OPTIONS",           [R_PUBLISH] = "POST, OPTIONS",
    [R_POLL] = "GET, OPTIONS",         [R_SSE] = "GET, OPTIONS",
    [R_STATUS] = "GET, OPTIONS",       [R_BATCH] = "POST, OPTIONS",
    [R_ASSET] = "GET, HEAD, OPTIONS",
};

/* Splits the path into a route and its one variable part (topic, pattern or id). */
static enum route match_route(const char *path, char *var, size_t cap)
{
    if (strcmp(path, "/healthz") == 0)
        return R_HEALTH;
    if (strcmp(path, "/metrics") == 0)
        return R_METRICS;
    if (strcmp(path, "/v1/ws") == 0)
        return R_WS;
    if (strcmp(path, "/v1/publish") == 0)
        return R_BATCH;
    const char *rest;
    enum route r = R_NONE;
    if (strncmp(path, "/v1/topics/", 11) == 0) {
        rest = path + 11;
        const char *slash = strchr(rest, '/');
        size_t vlen = slash ? (size_t)(slash - rest) : strlen(rest);
        if (!slash)
            r = R_PUBLISH;
        else if (strcmp(slash, "/events") == 0)
            r = R_POLL;
        else if (strcmp(slash, "/sse") == 0)
            r = R_SSE;
        else
            return R_NONE;
        if (vlen == 0)
            return R_NONE;
        if (vlen >= cap) { /* too long: leave it empty so the grammar check refuses it */
            var[0] = '\0';
            return r;
        }
        memcpy(var, rest, vlen);
        var[vlen] = '\0';
        return r;
    }
    /* After the topic routes: no embedded asset lives under /v1/topics/, and a publish
     * should not pay for the asset table's string compares. */
    if (hd_asset_route(path))
        return R_ASSET;
    if (strncmp(path, "/v1/events/", 11) == 0) {
        rest = path + 11;
        size_t vlen = strlen(rest);
        if (!vlen || strchr(rest, '/'))
            return R_NONE;
        if (vlen >= cap) {
            var[0] = '\0';
            return R_STATUS;
        }
        memcpy(var, rest, vlen + 1);
        return R_STATUS;
    }
    return R_NONE;
}

static bool method_ok(enum route r, enum hd_method m)
{
    switch (r) {
    case R_HEALTH:
    case R_METRICS:
    case R_ASSET:
        return m == HD_M_GET || m == HD_M_HEAD;
    case R_PUBLISH:
    case R_BATCH:
        return m == HD_M_POST;
    case R_WS:
    case R_POLL:
    case R_SSE:
    case R_STATUS:
        return m == HD_M_GET;
    case R_NONE:
        break;
    }
    return false;
}

static void respond_text(struct hd_http_resp *resp, int status, const char *ctype, const char *s)
{
    size_t len = strlen(s);
    char *body = malloc(len + 1);
    if (body)
        memcpy(body, s, len + 1);
    hd__api_body(resp, status, ctype, body, len);
}

int hd_api_authenticate(struct hd_broker *b, const struct hd_http_req *req, struct hd_identity *id,
                        char **credential, struct hd_http_resp *resp)
{
    char token[4097];
    int tlen = hd_query_get(req->query, "token", token, sizeof(token));
    bool has_token = tlen >= 0;
    struct hd_error err = {0};
    if (credential)
        *credential = NULL;
    if (tlen == -2) { /* a credential that cannot be read is wrong, never anonymous */
        hd_api_error(resp, HD_ERR_UNAUTHORIZED,
                     "?token= is not valid percent-encoding or is longer than 4096 bytes");
        hd_http_resp_header(resp, "www-authenticate:", "Bearer realm=\"herald\"");
        return -1;
    }
    if (hd_auth_authenticate(hd_broker_auth(b), req->authorization, has_token ? token : NULL,
                             hd_wall_ms(), id, &err)) {
        hd_api_error(resp, HD_ERR_UNAUTHORIZED, err.message[0] ? err.message : "invalid token");
        hd_http_resp_header(resp, "www-authenticate:", "Bearer realm=\"herald\"");
        return -1;
    }
    if (credential && (req->authorization || has_token)) {
        /* Keep it in the same form hd_auth_authenticate accepts as a header value. */
        const char *src = req->authorization;
        char buf[4200];
        if (!src) {
            snprintf(buf, sizeof(buf), "Bearer %s", token);
            src = buf;
        }
        *credential = strdup(src);
        if (!*credential) {
            hd_identity_clear(id);
            hd_api_error(resp, HD_ERR_INTERNAL, "out of memory");
            return -1;
        }
    }
    return 0;
}

bool hd__api_allowed(struct hd_broker *b, const struct hd_http_req *req, const char *what,
                     struct hd_http_resp *resp)
{
    const struct hd_identity *id = hd__api_who(b, req, resp);
    if (!id)
        return false;
    enum hd_err right = hd_auth_can_subscribe(id, what);
    if (right == HD_ERR_NONE)
        return true;
    struct hd_error err = {0};
    hd_error_set(&err, right,
                 right == HD_ERR_UNAUTHORIZED ? "reading this pattern needs credentials"
                                              : "these credentials may not read this pattern");
    hd__api_refuse(resp, &err);
    return false;
}

/* The status body: this node's counts plus the other nodes' (nodes 0: no "nodes" member). */
static void status_body(struct hd_http_resp *resp, const char *event_json, size_t len,
                        const struct hd_status_counts *c, unsigned nodes)
{
    size_t cap = len + 160;
    char *body = malloc(cap);
    if (!body) {
        hd_api_error(resp, HD_ERR_INTERNAL, "out of memory");
        return;
    }
    int n = snprintf(body, cap,
                     "{\"event\":%.*s,\"queued\":%" PRIu64 ",\"written\":%" PRIu64
                     ",\"dropped\":%" PRIu64,
                     (int)len, event_json, c->queued, c->written, c->dropped);
    if (nodes)
        n += snprintf(body + n, cap - (size_t)n, ",\"nodes\":%u", nodes);
    n += snprintf(body + n, cap - (size_t)n, "}");
    hd__api_body(resp, 200, "application/json", body, (size_t)n);
}

static struct hd_msg *status_event(struct hd_broker *b, const char *id)
{
    uint64_t seq;
    return hd_event_id_parse(id, &seq) == 0 ? hd_history_get(hd_broker_history(b), seq) : NULL;
}

/*
 * GET /v1/events/{id}. In cluster mode the other nodes' counts are gathered over the engine
 * within a short deadline, so the answer comes later (HD_HTTP_READ_BODY of an empty body, then
 * hd_api_publish, which calls hd__api_status_gather).
 */
static enum hd_http_next status_route(struct hd_broker *b, const struct hd_http_req *req,
                                      const char *id, struct hd_http_resp *resp)
{
    struct hd_msg *m = status_event(b, id);
    if (!m) {
        hd_api_error(resp, HD_ERR_NOT_FOUND, "no such event in history");
        return HD_HTTP_RESPOND;
    }
    /* The status carries the event itself: it takes the right to read its topic. */
    if (!hd__api_allowed(b, req, m->topic, resp))
        return HD_HTTP_RESPOND;
    struct hd_engine *e = hd_broker_engine(b);
    if (e && hd_engine_is_nats(e))
        return HD_HTTP_READ_BODY;
    struct hd_status_counts c = {.queued = m->queued, .written = m->written, .dropped = m->dropped};
    status_body(resp, (const char *)hd_msg_payload(m), m->len, &c, 0);
    return HD_HTTP_RESPOND;
}

struct status_ctx {
    struct hd_broker *b;
    bool in_call, completed;
    struct hd_http_resp *sync_resp;
    hd_api_done_fn done;
    void *arg;
    char id[HD_EVENT_ID_LEN + 1];
};

static void status_fill(struct status_ctx *ctx, struct hd_http_resp *resp,
                        const struct hd_status_counts *others, unsigned nodes)
{
    struct hd_msg *m = status_event(ctx->b, ctx->id);
    if (!m) { /* it left history while the other nodes answered */
        hd_api_error(resp, HD_ERR_NOT_FOUND, "no such event in history");
        return;
    }
    struct hd_status_counts c = {.queued = m->queued + others->queued,
                                 .written = m->written + others->written,
                                 .dropped = m->dropped + others->dropped};
    status_body(resp, (const char *)hd_msg_payload(m), m->len, &c, 1 + nodes);
}

static void status_gathered(void *arg, int err, const struct hd_status_counts *sum, unsigned nodes)
{
    struct status_ctx *ctx = arg;
    static const struct hd_status_counts none = {0};
    if (err || !sum) {
        sum = &none;
        nodes = 0;
    }
    ctx->completed = true;
    if (ctx->in_call) {
        status_fill(ctx, ctx->sync_resp, sum, nodes);
        return;
    }
    struct hd_http_resp *resp = calloc(1, sizeof(*resp));
    if (resp)
        status_fill(ctx, resp, sum, nodes);
    ctx->done(ctx->arg, resp);
    free(ctx);
}

int hd__api_status_gather(struct hd_broker *b, const struct hd_http_req *req,
                          struct hd_http_resp *resp, hd_api_done_fn done, void *arg)
{
    struct status_ctx *ctx = calloc(1, sizeof(*ctx));
    if (!ctx) {
        hd_api_error(resp, HD_ERR_INTERNAL, "out of memory");
        return HD_HTTP_RESPOND;
    }
    *ctx =
        (struct status_ctx){.b = b, .in_call = true, .sync_resp = resp, .done = done, .arg = arg};
    snprintf(ctx->id, sizeof(ctx->id), "%.*s", HD_EVENT_ID_LEN, req->path + strlen("/v1/events/"));
    uint64_t seq = 0;
    hd_event_id_parse(ctx->id, &seq);
    /* 250 ms: a status is a quick look; a node slower than that is left out of the sum. */
    int r = hd_engine_status_gather(hd_broker_engine(b), seq, 250, status_gathered, ctx);
    if (r) {
        static const struct hd_status_counts none = {0};
        status_fill(ctx, resp, &none, 0); /* NATS unreachable: this node alone */
        free(ctx);
        return HD_HTTP_RESPOND;
    }
    if (ctx->completed) {
        free(ctx);
        return HD_HTTP_RESPOND;
    }
    ctx->in_call = false;
    return -1;
}
/* The WebSocket endpoint: an upgrade passes origin, drain and credential checks here, with
 * the identity kept in resp->who for the connection; a plain GET learns what to do. */
static enum hd_http_next ws_route(struct hd_broker *b, const struct hd_http_req *req,
                                  struct hd_http_resp *resp)
{
    if (!req->upgrade) {
        hd_api_error(resp, HD_ERR_BAD_REQUEST,
                     "this endpoint speaks WebSocket (subprotocol herald.v1)");
        hd_http_resp_header(resp, "upgrade:", "websocket");
        resp->status = 426;
        return HD_HTTP_RESPOND;
    }
    if (!hd_api_origin_allowed(b, req->origin)) {
        hd_log_info("websocket upgrade refused", "reason=origin origin=\"%.100s\"", req->origin);
        hd_api_error(resp, HD_ERR_FORBIDDEN, "this origin may not open WebSockets");
        return HD_HTTP_RESPOND;
    }
    if (hd_broker_draining(b)) {
        hd_api_error(resp, HD_ERR_UNAVAILABLE, "the server is shutting down");
        return HD_HTTP_RESPOND;
    }
    /* Browsers cannot set headers on a WebSocket: ?token= is accepted there too. */
    return hd__api_who(b, req, resp) ? HD_HTTP_UPGRADE : HD_HTTP_RESPOND;
}

void hd_api_take_identity(struct hd_http_resp *resp, struct hd_identity *id, char **credential)
{
    *id = *resp->who;
    free(resp->who);
    resp->who = NULL;
    *credential = resp->credential;
    resp->credential = NULL;
}

enum hd_http_next hd_api_route(struct hd_broker *b, const struct hd_http_req *req,
                               struct hd_http_resp *resp)
{
    char var[HD_TOPIC_MAX + 2];
    enum route r = match_route(req->path, var, sizeof(var));
    hd_broker_metrics(b)->http_requests++;
    if (r == R_NONE) {
        hd_api_error(resp, HD_ERR_NOT_FOUND, "no such endpoint");
        return HD_HTTP_RESPOND;
    }
    if (req->method == HD_M_OPTIONS) {
        /* A CORS preflight or a plain OPTIONS: both get the methods this path answers. */
        free(resp->body);
        resp->body = NULL;
        resp->body_len = 0;
        resp->status = 204;
        resp->content_type = NULL;
        hd_http_resp_header(resp, "allow:", route_allow[r]);
        hd_http_resp_header(resp, "access-control-allow-methods:", route_allow[r]);
        hd_http_resp_header(resp, "access-control-allow-headers:",
                            "Authorization, Content-Type, Last-Event-ID, Idempotency-Key");
        hd_http_resp_header(resp, "access-control-max-age:", "86400");
        return HD_HTTP_RESPOND;
    }
    if (!method_ok(r, req->method)) {
        hd_api_error(resp, HD_ERR_METHOD_NOT_ALLOWED, "method not allowed on this path");
        hd_http_resp_header(resp, "allow:", route_allow[r]);
        return HD_HTTP_RESPOND;
    }
    switch (r) {
    case R_HEALTH:
        if (hd_broker_draining(b))
            respond_text(resp, 503, "text/plain; charset=utf-8", "draining\n");
        else if (!hd_broker_ready(b)) /* a cluster node cut off from NATS takes no publishes */
            respond_text(resp, 503, "text/plain; charset=utf-8", "engine unavailable\n");
        else
            respond_text(resp, 200, "text/plain; charset=utf-8", "ok\n");
        return HD_HTTP_RESPOND;
    case R_METRICS: {
        size_t len;
        char *text = hd_metrics_render(hd_broker_metrics(b), &len);
        hd__api_body(resp, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
        return HD_HTTP_RESPOND;
    }
    case R_WS:
        return ws_route(b, req, resp);
    case R_BATCH:
        return hd__api_batch_route(b, req, resp);
    case R_PUBLISH:
        return hd__api_publish_route(b, req, var, resp);
    case R_POLL:
        return hd__api_poll_route(b, req, var, resp);
    case R_SSE:
        return hd__api_sse_route(b, req, var, resp);
    case R_STATUS:
        return status_route(b, req, var, resp);
    case R_ASSET:
        hd_asset_respond(req, hd_broker_config(b)->console.enabled, resp);
        return HD_HTTP_RESPOND;
    case R_NONE:
        break;
    }
    hd_api_error(resp, HD_ERR_NOT_FOUND, "no such endpoint");
    return HD_HTTP_RESPOND;
}
