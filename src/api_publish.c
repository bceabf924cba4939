/* SPDX-License-Identifier: MIT */
/*
 * The HTTP publish routes (PROTOCOL.md section 3): POST /v1/topics/{topic} with one event in
 * its body, and POST /v1/publish with an NDJSON batch. This file turns bodies into events and
 * answers into JSON; every policy question (rights, size, rate, keys, readiness) is the
 * broker's admission point, asked once per event, so HTTP and WebSocket publishers get the
 * same answers.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api_int.h"
#include "log.h"
#include "topic.h"

static bool ctype_is(const char *ctype, const char *want)
{
    if (!ctype)
        return false;
    size_t n = strlen(want);
    return strncasecmp(ctype, want, n) == 0 &&
           (ctype[n] == '\0' || ctype[n] == ';' || ctype[n] == ' ');
}

/* Anonymous HTTP publishers are rate-limited per client address. */
static struct hd_publisher publisher_of(const struct hd_http_req *req,
                                        const struct hd_identity *who)
{
    return (struct hd_publisher){.identity = who, .peer_addr = req->peer_addr, .peer = req->peer};
}

static void refuse_too_large(struct hd_http_resp *resp, size_t limit, const char *key)
{
    char msg[160];
    snprintf(msg, sizeof(msg), "the request body is larger than allowed: at most %zu bytes (%s)",
             limit, key);
    hd_api_error(resp, HD_ERR_TOO_LARGE, msg);
}

enum hd_http_next hd__api_publish_route(struct hd_broker *b, const struct hd_http_req *req,
                                        const char *topic, struct hd_http_resp *resp)
{
    int t = hd_topic_check(topic, strlen(topic));
    if (t == -EPERM) {
        hd_api_error(resp, HD_ERR_FORBIDDEN, "topics starting with $ are reserved for the server");
        return HD_HTTP_RESPOND;
    }
    if (t) {
        hd_api_error(resp, HD_ERR_INVALID_TOPIC,
                     "a topic is 1-255 bytes of dot-separated segments of A-Z a-z 0-9 _ - : @");
        return HD_HTTP_RESPOND;
    }
    char ev[HD_EVENT_KIND_MAX + 2];
    int n = hd_query_get(req->query, "event", ev, sizeof(ev));
    if (n == -2 || (n >= 0 && !hd_event_kind_valid(ev, (size_t)n))) {
        hd_api_error(resp, HD_ERR_BAD_REQUEST, "event must be 1-64 bytes of A-Z a-z 0-9 _ - . :");
        return HD_HTTP_RESPOND;
    }
    const struct hd_identity *who = hd__api_who(b, req, resp);
    if (!who)
        return HD_HTTP_RESPOND;
    /* Everything but the data is known now: refuse before reading the body. */
    struct hd_publisher p = publisher_of(req, who);
    struct hd_pub pub = {.topic = topic, .key = req->idempotency_key};
    struct hd_error err = {0};
    if (hd_broker_publish_check(b, &p, &pub, &err) != HD_ERR_NONE) {
        hd__api_refuse(resp, &err);
        return HD_HTTP_RESPOND;
    }
    size_t limit = hd_api_body_limit(b, req);
    if (req->content_length >= 0 && (uint64_t)req->content_length > limit) {
        refuse_too_large(resp, limit, "limits.max_event_bytes + 16384");
        return HD_HTTP_RESPOND;
    }
    return HD_HTTP_READ_BODY;
}

enum hd_http_next hd__api_batch_route(struct hd_broker *b, const struct hd_http_req *req,
                                      struct hd_http_resp *resp)
{
    if (!ctype_is(req->content_type, "application/x-ndjson")) {
        hd_api_error(resp, HD_ERR_BAD_REQUEST,
                     "a batch is sent as Content-Type: application/x-ndjson, one JSON object a "
                     "line");
        return HD_HTTP_RESPOND;
    }
    if (!hd__api_who(b, req, resp))
        return HD_HTTP_RESPOND;
    if (hd_broker_draining(b)) {
        hd_api_error(resp, HD_ERR_UNAVAILABLE, "the server is shutting down");
        return HD_HTTP_RESPOND;
    }
    size_t limit = hd_api_body_limit(b, req);
    if (req->content_length >= 0 && (uint64_t)req->content_length > limit) {
        refuse_too_large(resp, limit, "limits.max_batch_bytes");
        return HD_HTTP_RESPOND;
    }
    return HD_HTTP_READ_BODY;
}

/* ---- one event -------------------------------------------------------------------------- */

struct pub_ctx {
    struct hd_broker *b;
    bool in_call;
    bool completed;
    struct hd_http_resp *sync_resp;
    hd_api_done_fn done;
    void *arg;
    char topic[HD_TOPIC_MAX + 1];
};

/* The topic a repeated key's first publish went to: "the first publish's answer again" even
 * when the repeat names another topic (while history still holds the event). */
static const char *first_topic(struct hd_broker *b, const struct hd_publish_result *res,
                               const char *topic)
{
    const struct hd_msg *m = res->duplicate ? hd_history_get(hd_broker_history(b), res->seq) : NULL;
    return m ? m->topic : topic;
}

static void fill_publish_reply(struct hd_http_resp *resp, const char *topic,
                               const struct hd_error *err, const struct hd_publish_result *res)
{
    if (err) {
        hd__api_refuse(resp, err);
        return;
    }
    char id[HD_EVENT_ID_LEN + 1];
    hd_event_id_format(res->seq, id);
    size_t len = 0;
    char *body =
        hd_encode_publish_reply(id, topic, res->time_ms, res->receivers, res->duplicate, &len);
    hd__api_body(resp, 202, "application/json", body, len);
}

static void http_publish_done(void *arg, const struct hd_error *err,
                              const struct hd_publish_result *res)
{
    struct pub_ctx *ctx = arg;
    ctx->completed = true;
    const char *topic = res ? first_topic(ctx->b, res, ctx->topic) : ctx->topic;
    if (ctx->in_call) {
        fill_publish_reply(ctx->sync_resp, topic, err, res);
        return;
    }
    struct hd_http_resp *resp = calloc(1, sizeof(*resp));
    if (resp)
        fill_publish_reply(resp, topic, err, res);
    ctx->done(ctx->arg, resp);
    free(ctx);
}

/*
 * The event's data from a body: a JSON value (Content-Type: application/json) or the body as
 * a string. A body already in compact canonical form is used as it came: parsing and dumping
 * it would give the same bytes at many times the cost. Returns the text (in *dump when
 * made, which the caller frees), or NULL with resp filled.
 */
static const char *body_data(const struct hd_http_req *req, const char *body, size_t len,
                             size_t *dlen, char **dump, struct hd_http_resp *resp)
{
    bool json = ctype_is(req->content_type, "application/json");
    *dump = NULL;
    *dlen = len;
    if (json && hd_json_canonical(body, len))
        return body;
    json_t *data;
    if (json) {
        json_error_t jerr;
        data = json_loadb(body, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
        if (!data) {
            char msg[256];
            snprintf(msg, sizeof(msg), "the body is not valid JSON: %.100s (line %d, column %d)",
                     jerr.text, jerr.line, jerr.column);
            hd_api_error(resp, HD_ERR_BAD_REQUEST, msg);
            return NULL;
        }
    } else {
        data = json_stringn(body, len);
        if (!data) {
            hd_api_error(resp, HD_ERR_BAD_REQUEST, "the body is not valid UTF-8");
            return NULL;
        }
    }
    *dump = hd_json_dump_compact(data, dlen);
    json_decref(data);
    if (!*dump)
        hd_api_error(resp, HD_ERR_INTERNAL, "out of memory");
    return *dump;
}

static int publish_one(struct hd_broker *b, const struct hd_http_req *req, const char *topic,
                       const char *body, size_t len, struct hd_http_resp *resp, hd_api_done_fn done,
                       void *arg)
{
    char ev[HD_EVENT_KIND_MAX + 2];
    if (hd_query_get(req->query, "event", ev, sizeof(ev)) < 0)
        strcpy(ev, HD_DEFAULT_EVENT);
    const struct hd_identity *who = hd__api_who(b, req, resp);
    if (!who)
        return HD_HTTP_RESPOND;
    size_t dlen;
    char *dump;
    const char *data = body_data(req, body, len, &dlen, &dump, resp);
    if (!data)
        return HD_HTTP_RESPOND;
    struct pub_ctx *ctx = malloc(sizeof(*ctx));
    if (!ctx) {
        free(dump);
        hd_api_error(resp, HD_ERR_INTERNAL, "out of memory");
        return HD_HTTP_RESPOND;
    }
    /* Member by member: a compound literal would zero the topic buffer first. */
    ctx->b = b;
    ctx->in_call = true;
    ctx->completed = false;
    ctx->sync_resp = resp;
    ctx->done = done;
    ctx->arg = arg;
    size_t tlen = strnlen(topic, HD_TOPIC_MAX); /* the route checked it: at most that */
    memcpy(ctx->topic, topic, tlen);
    ctx->topic[tlen] = '\0';
    struct hd_publisher p = publisher_of(req, who);
    p.rights_checked = true; /* hd__api_publish_route checked them before the body */
    struct hd_pub pub = {.topic = topic,
                         .event = ev,
                         .data_json = data,
                         .data_len = dlen,
                         .key = req->idempotency_key};
    struct hd_error err = {0};
    enum hd_err e = hd_broker_publish(b, &p, &pub, http_publish_done, ctx, &err);
    free(dump);
    if (e != HD_ERR_NONE) {
        free(ctx);
        hd__api_refuse(resp, &err);
        return HD_HTTP_RESPOND;
    }
    if (ctx->completed) {
        free(ctx);
        return HD_HTTP_RESPOND;
    }
    ctx->in_call = false;
    return -1;
}

/* ---- batches ---------------------------------------------------------------------------- */

struct batch;

struct line {
    struct batch *bt;
    size_t number; /* 1-based line of the body */
    char topic[HD_TOPIC_MAX + 1];
    char event[HD_EVENT_KIND_MAX + 1];
    char key[HD_IDEM_KEY_MAX + 1];
    bool has_key;
    char *data;
    size_t data_len;
    bool done;
    struct hd_publish_result res;
};

struct batch {
    struct hd_broker *b;
    struct line *lines;
    size_t n, outstanding;
    bool in_call, submitting;
    size_t failed; /* index + 1 of the first line that failed after admission, 0: none */
    struct hd_error err;
    struct hd_http_resp *sync_resp;
    hd_api_done_fn done;
    void *arg;
};

static void batch_free(struct batch *bt)
{
    for (size_t i = 0; i < bt->n; i++)
        free(bt->lines[i].data);
    free(bt->lines);
    free(bt);
}

/* The documented error body plus the line it is about. */
static void refuse_line(struct hd_http_resp *resp, const struct hd_error *err, size_t line)
{
    hd__api_refuse(resp, err);
    json_t *o = json_pack("{s:s, s:s, s:s, s:I}", "type", "error", "code", hd_err_name(err->code),
                          "message", err->message, "line", (json_int_t)line);
    size_t len = 0;
    char *text = o ? hd_json_dump_compact(o, &len) : NULL;
    json_decref(o);
    hd__api_body(resp, hd_err_http(err->code), "application/json", text, len);
}

static void line_error(struct hd_http_resp *resp, size_t line, enum hd_err code, const char *fmt,
                       const char *what)
{
    struct hd_error err = {0};
    hd_error_set(&err, code, fmt, what);
    refuse_line(resp, &err, line);
}

/* Reads one NDJSON line into ln. Returns false with resp filled when it is not a valid
 * publish object. */
static bool parse_line(const char *s, size_t len, struct line *ln, struct hd_http_resp *resp)
{
    json_error_t jerr;
    json_t *o = json_loadb(s, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    if (!o || !json_is_object(o)) {
        line_error(resp, ln->number, HD_ERR_BAD_REQUEST, "%s",
                   o ? "a line must be a JSON object" : "a line is not valid JSON");
        json_decref(o);
        return false;
    }
    bool ok = false;
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v)
    {
        if (strcmp(k, "topic") && strcmp(k, "event") && strcmp(k, "data") && strcmp(k, "key")) {
            line_error(resp, ln->number, HD_ERR_BAD_REQUEST,
                       "unknown member \"%.40s\" (a line has topic, event, data and key)", k);
            goto out;
        }
    }
    json_t *topic = json_object_get(o, "topic"), *event = json_object_get(o, "event");
    json_t *key = json_object_get(o, "key");
    if (!json_is_string(topic)) {
        line_error(resp, ln->number, HD_ERR_BAD_REQUEST, "%s", "\"topic\" must be a string");
        goto out;
    }
    int t = hd_topic_check(json_string_value(topic), json_string_length(topic));
    if (t) {
        line_error(resp, ln->number, t == -EPERM ? HD_ERR_FORBIDDEN : HD_ERR_INVALID_TOPIC, "%s",
                   t == -EPERM ? "topics starting with $ are reserved for the server"
                               : "a topic is 1-255 bytes of dot-separated segments of A-Z a-z "
                                 "0-9 _ - : @");
        goto out;
    }
    snprintf(ln->topic, sizeof(ln->topic), "%s", json_string_value(topic));
    if (event && (!json_is_string(event) ||
                  !hd_event_kind_valid(json_string_value(event), json_string_length(event)))) {
        line_error(resp, ln->number, HD_ERR_BAD_REQUEST, "%s",
                   "\"event\" must be 1-64 bytes of A-Z a-z 0-9 _ - . :");
        goto out;
    }
    snprintf(ln->event, sizeof(ln->event), "%s",
             event ? json_string_value(event) : HD_DEFAULT_EVENT);
    if (key && (!json_is_string(key) ||
                !hd_idem_key_valid(json_string_value(key), json_string_length(key)))) {
        line_error(resp, ln->number, HD_ERR_BAD_REQUEST, "%s",
                   "\"key\" must be 1-128 visible ASCII characters");
        goto out;
    }
    if (key) {
        snprintf(ln->key, sizeof(ln->key), "%s", json_string_value(key));
        ln->has_key = true;
    }
    json_t *data = json_object_get(o, "data");
    ln->data = hd_json_dump_compact(data ? data : json_null(), &ln->data_len);
    if (!ln->data) {
        line_error(resp, ln->number, HD_ERR_INTERNAL, "%s", "out of memory");
        goto out;
    }
    ok = true;
out:
    json_decref(o);
    return ok;
}

/* Splits the body into lines (blank lines are skipped but counted). Returns false with
 * resp filled on the first bad line. */
static bool parse_batch(struct batch *bt, const char *body, size_t len, uint32_t max,
                        struct hd_http_resp *resp)
{
    size_t cap = 0, number = 0;
    for (size_t at = 0; at < len;) {
        const char *nl = memchr(body + at, '\n', len - at);
        size_t end = nl ? (size_t)(nl - body) : len, l = end - at;
        const char *s = body + at;
        at = end + 1;
        number++;
        while (l && (s[l - 1] == '\r' || s[l - 1] == ' ' || s[l - 1] == '\t'))
            l--;
        size_t lead = 0;
        while (lead < l && (s[lead] == ' ' || s[lead] == '\t'))
            lead++;
        if (lead == l)
            continue;
        if (bt->n == max) {
            char msg[120];
            snprintf(msg, sizeof(msg), "a batch has at most %u events (limits.max_batch_events)",
                     max);
            line_error(resp, number, HD_ERR_TOO_LARGE, "%s", msg);
            return false;
        }
        if (bt->n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            struct line *n = realloc(bt->lines, ncap * sizeof(*n));
            if (!n) {
                line_error(resp, number, HD_ERR_INTERNAL, "%s", "out of memory");
                return false;
            }
            bt->lines = n;
            cap = ncap;
        }
        struct line *ln = &bt->lines[bt->n];
        *ln = (struct line){.bt = bt, .number = number};
        if (!parse_line(s + lead, l - lead, ln, resp))
            return false;
        bt->n++;
    }
    if (!bt->n) {
        hd_api_error(resp, HD_ERR_BAD_REQUEST, "the batch has no events");
        return false;
    }
    return true;
}

static void batch_answer(struct batch *bt, struct hd_http_resp *resp)
{
    if (bt->failed) {
        /* Lines before it may have been published: keys make resending the batch safe. */
        refuse_line(resp, &bt->err, bt->lines[bt->failed - 1].number);
        return;
    }
    size_t cap = 16 + bt->n * (HD_TOPIC_MAX + 96);
    char *body = malloc(cap);
    if (!body) {
        hd_api_error(resp, HD_ERR_INTERNAL, "out of memory");
        return;
    }
    size_t o = (size_t)snprintf(body, cap, "{\"events\":[");
    for (size_t i = 0; i < bt->n; i++) {
        char id[HD_EVENT_ID_LEN + 1];
        const struct hd_publish_result *r = &bt->lines[i].res;
        hd_event_id_format(r->seq, id);
        o += (size_t)snprintf(body + o, cap - o,
                              "%s{\"id\":\"%s\",\"topic\":\"%s\",\"time\":%" PRId64
                              ",\"receivers\":%" PRIu32 "%s}",
                              i ? "," : "", id, bt->lines[i].topic, r->time_ms, r->receivers,
                              r->duplicate ? ",\"duplicate\":true" : "");
    }
    o += (size_t)snprintf(body + o, cap - o, "]}");
    hd__api_body(resp, 202, "application/json", body, o);
}

static void batch_finish(struct batch *bt)
{
    if (bt->outstanding || bt->submitting)
        return;
    if (bt->in_call) {
        batch_answer(bt, bt->sync_resp);
        return; /* the caller frees bt */
    }
    struct hd_http_resp *resp = calloc(1, sizeof(*resp));
    if (resp)
        batch_answer(bt, resp);
    bt->done(bt->arg, resp);
    batch_free(bt);
}

static void batch_line_done(void *arg, const struct hd_error *err,
                            const struct hd_publish_result *res)
{
    struct line *ln = arg;
    struct batch *bt = ln->bt;
    size_t i = (size_t)(ln - bt->lines);
    ln->done = true;
    if (err && (!bt->failed || i + 1 < bt->failed)) {
        bt->failed = i + 1;
        bt->err = *err;
    } else if (res) {
        ln->res = *res;
        const char *t = first_topic(bt->b, res, ln->topic);
        if (t != ln->topic) /* copied: history may let the event go before the answer */
            snprintf(ln->topic, sizeof(ln->topic), "%s", t);
    }
    bt->outstanding--;
    batch_finish(bt);
}

static int publish_batch(struct hd_broker *b, const struct hd_http_req *req, const char *body,
                         size_t len, struct hd_http_resp *resp, hd_api_done_fn done, void *arg)
{
    const struct hd_identity *who = hd__api_who(b, req, resp);
    if (!who)
        return HD_HTTP_RESPOND;
    struct batch *bt = calloc(1, sizeof(*bt));
    if (!bt) {
        hd_api_error(resp, HD_ERR_INTERNAL, "out of memory");
        return HD_HTTP_RESPOND;
    }
    *bt = (struct batch){.b = b, .in_call = true, .sync_resp = resp, .done = done, .arg = arg};
    if (!parse_batch(bt, body, len, hd_broker_config(b)->limits.max_batch_events, resp)) {
        batch_free(bt);
        return HD_HTTP_RESPOND;
    }
    struct hd_publisher p = publisher_of(req, who);
    struct hd_error err = {0};
    /* Every line is admitted, and the rate taken for all, before any is published. */
    for (size_t i = 0; i < bt->n; i++) {
        struct line *ln = &bt->lines[i];
        struct hd_pub pub = {.topic = ln->topic,
                             .event = ln->event,
                             .data_json = ln->data,
                             .data_len = ln->data_len,
                             .key = ln->has_key ? ln->key : NULL};
        if (hd_broker_publish_check(b, &p, &pub, &err) != HD_ERR_NONE) {
            refuse_line(resp, &err, ln->number);
            batch_free(bt);
            return HD_HTTP_RESPOND;
        }
    }
    uint32_t fits = 0;
    if (hd_broker_publish_take(b, &p, (uint32_t)bt->n, &fits, &err) != HD_ERR_NONE) {
        refuse_line(resp, &err, bt->lines[fits < bt->n ? fits : bt->n - 1].number);
        batch_free(bt);
        return HD_HTTP_RESPOND;
    }
    bt->submitting = true;
    for (size_t i = 0; i < bt->n && !bt->failed; i++) {
        struct line *ln = &bt->lines[i];
        struct hd_pub pub = {.topic = ln->topic,
                             .event = ln->event,
                             .data_json = ln->data,
                             .data_len = ln->data_len,
                             .key = ln->has_key ? ln->key : NULL};
        bt->outstanding++;
        if (hd_broker_publish_submit(b, &p, &pub, batch_line_done, ln, &err) != HD_ERR_NONE) {
            bt->outstanding--;
            if (!bt->failed) {
                bt->failed = i + 1;
                bt->err = err;
            }
        }
    }
    bt->submitting = false;
    if (!bt->outstanding) {
        batch_answer(bt, resp);
        batch_free(bt);
        return HD_HTTP_RESPOND;
    }
    bt->in_call = false;
    return -1;
}

int hd_api_publish(struct hd_broker *b, const struct hd_http_req *req, const char *body, size_t len,
                   struct hd_http_resp *resp, hd_api_done_fn done, void *arg)
{
    if (strcmp(req->path, "/v1/publish") == 0)
        return publish_batch(b, req, body, len, resp, done, arg);
    if (strncmp(req->path, "/v1/events/", 11) == 0) /* a status gathered over the cluster */
        return hd__api_status_gather(b, req, resp, done, arg);
    if (req->method == HD_M_GET && resp->stream) /* a poll the engine replays */
        return hd__api_poll_replay(b, resp, done, arg);
    const char *prefix = "/v1/topics/";
    if (strncmp(req->path, prefix, strlen(prefix)) != 0) {
        hd_api_error(resp, HD_ERR_NOT_FOUND, "no such endpoint");
        return HD_HTTP_RESPOND;
    }
    return publish_one(b, req, req->path + strlen(prefix), body, len, resp, done, arg);
}
