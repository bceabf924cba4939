/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer harness for HTTP publish (src/api.c: the POST /v1/topics/{topic} route, then
 * hd_api_publish over its body) against a real broker: local engine, memory history, an auth
 * section. Beyond "no crash, no leak" it checks the contract of PROTOCOL.md section 3: only the
 * documented statuses, every error body is the documented JSON and changes nothing, and a 202
 * names an event that history holds with exactly the topic, kind and data that were sent.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "auth.h"
#include "broker.h"
#include "config.h"
#include "engine.h"
#include "history.h"
#include "log.h"
#include "topic.h"

/*
 * Input layout. Byte 0: bits 0-2 pick the Content-Type (ctypes; 7 = the next line of the
 * input), bit 3 says an Authorization line follows, bits 4-5 pick the Content-Length
 * (0 and 3 exact, 1 absent, 2 past the body limit). Then '\n'-terminated lines: the request
 * target "path[?query]", the Authorization value if asked for, the Content-Type if 7. The
 * rest is the body. A missing '\n' makes the rest that line, with an empty body.
 */
enum body_kind { AS_JSON, AS_STRING, AS_EITHER };
static const struct {
    const char *value;
    enum body_kind kind;
} ctypes[7] = {
    {.value = "application/json", .kind = AS_JSON},
    {.value = "application/json; charset=utf-8", .kind = AS_JSON},
    {.value = "text/plain", .kind = AS_STRING},
    {.value = NULL, .kind = AS_STRING},
    {.value = "application/jsonp", .kind = AS_STRING},
    {.value = "Application/JSON", .kind = AS_JSON}, /* media types are case-insensitive */
    {.value = "application/x-www-form-urlencoded", .kind = AS_STRING},
};

#define MAX_EVENT_BYTES 4096

/* sha256("static-one"): a token that may publish only under a.> (403 elsewhere). */
#define FUZZ_CONFIG                                                                                \
    "{\"history\":{\"max_events_per_topic\":4,\"max_age_s\":0,\"max_memory_bytes\":1048576},"      \
    "\"limits\":{\"max_event_bytes\":4096},"                                                       \
    "\"auth\":{\"anonymous\":{\"publish\":[\">\"],\"subscribe\":[\">\"]},\"tokens\":["             \
    "{\"name\":\"one\",\"sha256\":"                                                                \
    "\"ed52fdf010cd84531be972533152a14eebf0da49e686b61cbb5772cb373f4a54\","                        \
    "\"publish\":[\"a.>\"]}]}}"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct hd_config cfg;
static struct hd_broker *broker;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_http_publish: check failed at line %d: %s\n", __LINE__, #cond);  \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Built once and kept for the process: history stays bounded by the config above. */
static struct hd_broker *get_broker(void)
{
    if (broker)
        return broker;
    struct hd_config_error cerr;
    char err[256];
    hd_log_set_level(HD_LOG_ERROR);
    CHECK(hd_config_defaults(&cfg) == 0);
    CHECK(hd_config_load_string(&cfg, FUZZ_CONFIG, strlen(FUZZ_CONFIG), "fuzz", &cerr) == 0);
    CHECK(cfg.limits.max_event_bytes == MAX_EVENT_BYTES);
    broker = hd_broker_new(&cfg);
    CHECK(broker);
    struct hd_engine *e = hd_engine_local_new(NULL, &cfg, NULL, err, sizeof(err));
    CHECK(e);
    hd_broker_set_engine(broker, e);
    CHECK(hd_broker_start(broker, err, sizeof(err)) == 0);
    struct hd_auth *a = hd_auth_new(&cfg, err, sizeof(err));
    CHECK(a);
    hd_broker_set_auth(broker, a);
    return broker;
}

/* Takes the next '\n'-terminated field as a malloc'd C string (NULs inside end it early). */
static char *take_line(const uint8_t **p, size_t *left)
{
    const uint8_t *nl = memchr(*p, '\n', *left);
    size_t n = nl ? (size_t)(nl - *p) : *left;
    char *s = malloc(n + 1);
    CHECK(s);
    memcpy(s, *p, n);
    s[n] = '\0';
    *p += nl ? n + 1 : n;
    *left -= nl ? n + 1 : n;
    return s;
}

static void done_never(void *arg, struct hd_http_resp *resp)
{
    /* The memory store completes inside the publish call; a deferred answer would leak. */
    abort();
}

/* Checks that resp is the documented error body (type, code, message) for its status. */
static void check_error(const struct hd_http_resp *resp)
{
    CHECK(resp->body && resp->body_len == strlen(resp->body));
    CHECK(resp->content_type && strcmp(resp->content_type, "application/json") == 0);
    json_t *j = json_loadb(resp->body, resp->body_len, JSON_REJECT_DUPLICATES, NULL);
    CHECK(j && json_is_object(j) && json_object_size(j) == 3);
    const char *type = json_string_value(json_object_get(j, "type"));
    const char *code = json_string_value(json_object_get(j, "code"));
    const char *msg = json_string_value(json_object_get(j, "message"));
    CHECK(type && strcmp(type, "error") == 0 && code && msg && msg[0]);
    int e = HD_ERR_NONE + 1;
    while (e < HD_ERR__COUNT && strcmp(hd_err_name(e), code) != 0)
        e++;
    CHECK(e < HD_ERR__COUNT && hd_err_http(e) == resp->status);
    if (resp->status == 401) {
        bool challenge = false;
        for (size_t i = 0; i < resp->n_headers; i++)
            challenge |= strcmp(resp->headers[i].name, "www-authenticate:") == 0;
        CHECK(challenge);
    }
    json_decref(j);
}

/*
 * A 202: the reply names the newest event in history, which carries the topic and kind sent
 * and data equal to `want` or, when the Content-Type was fuzzed, to `alt` (either reading).
 */
static void check_accepted(struct hd_broker *b, const struct hd_http_resp *resp, const char *topic,
                           const char *kind, const json_t *want, const json_t *alt)
{
    CHECK(resp->body && resp->body_len == strlen(resp->body));
    CHECK(resp->content_type && strcmp(resp->content_type, "application/json") == 0);
    json_t *r = json_loadb(resp->body, resp->body_len, JSON_REJECT_DUPLICATES, NULL);
    CHECK(r && json_is_object(r) && json_object_size(r) == 4);
    const char *id = json_string_value(json_object_get(r, "id"));
    const char *rtopic = json_string_value(json_object_get(r, "topic"));
    json_t *time = json_object_get(r, "time"), *receivers = json_object_get(r, "receivers");
    CHECK(id && rtopic && strcmp(rtopic, topic) == 0 && json_is_integer(time));
    CHECK(json_is_integer(receivers) && json_integer_value(receivers) == 0); /* no subscribers */
    uint64_t seq;
    CHECK(hd_event_id_parse(id, &seq) == 0 && seq == hd_history_last_seq(hd_broker_history(b)));
    struct hd_msg *m = hd_history_get(hd_broker_history(b), seq);
    CHECK(m);
    json_t *ev = json_loadb((const char *)hd_msg_payload(m), m->len,
                            JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, NULL);
    CHECK(ev && json_is_object(ev));
    const char *etype = json_string_value(json_object_get(ev, "type"));
    const char *etopic = json_string_value(json_object_get(ev, "topic"));
    const char *eid = json_string_value(json_object_get(ev, "id"));
    const char *ekind = json_string_value(json_object_get(ev, "event"));
    CHECK(etype && strcmp(etype, "event") == 0 && etopic && strcmp(etopic, topic) == 0);
    CHECK(eid && strcmp(eid, id) == 0 && ekind && strcmp(ekind, kind) == 0);
    CHECK(json_integer_value(json_object_get(ev, "time")) == json_integer_value(time));
    json_t *d = json_object_get(ev, "data");
    CHECK((want && json_equal(d, (json_t *)want)) || (alt && json_equal(d, (json_t *)alt)));
    json_decref(ev);
    json_decref(r);
}

/* Routes one request and, when the route asks for the body, publishes it; checks both. */
static void run(struct hd_broker *b, const struct hd_http_req *req, enum body_kind kind,
                const char *body, size_t len)
{
    struct hd_history *h = hd_broker_history(b);
    uint64_t last = hd_history_last_seq(h);
    uint64_t published = hd_broker_metrics(b)->events_published;
    struct hd_http_resp resp = {0};

    enum hd_http_next next = hd_api_route(b, req, &resp);
    if (next == HD_HTTP_RESPOND) {
        CHECK(resp.status == 400 || resp.status == 401 || resp.status == 403 ||
              resp.status == 404 || resp.status == 405 || resp.status == 413);
        check_error(&resp);
        CHECK(hd_history_last_seq(h) == last);
        hd_http_resp_clear(&resp);
        return;
    }
    /* The route accepted it: a publish path with a valid, non-reserved topic. */
    CHECK(next == HD_HTTP_READ_BODY && strncmp(req->path, "/v1/topics/", 11) == 0);
    const char *topic = req->path + 11;
    CHECK(hd_topic_check(topic, strlen(topic)) == 0);
    if (len > hd_api_body_limit(b, req)) {
        hd_http_resp_clear(&resp); /* the transport answers 413 without reading it */
        return;
    }
    char kind_s[HD_EVENT_KIND_MAX + 2];
    if (hd_query_get(req->query, "event", kind_s, sizeof(kind_s)) < 0)
        strcpy(kind_s, HD_DEFAULT_EVENT);

    int r = hd_api_publish(b, req, body, len, &resp, done_never, NULL);
    CHECK(r == HD_HTTP_RESPOND);
    CHECK(resp.status == 202 || resp.status == 400 || resp.status == 413);

    /* The two readings of the body; a fixed Content-Type allows only one of them. */
    json_t *as_json =
        kind != AS_STRING ? json_loadb(body, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL) : NULL;
    json_t *as_string = kind != AS_JSON ? json_stringn(body, len) : NULL;
    if (kind != AS_EITHER) {
        json_t *want = as_json ? as_json : as_string;
        CHECK((resp.status == 400) == (want == NULL));
        if (want) {
            size_t dlen = 0;
            char *dump = hd_json_dump_compact(want, &dlen);
            CHECK(dump);
            free(dump);
            CHECK((resp.status == 413) == (dlen > MAX_EVENT_BYTES));
        }
    } else if (!as_json && !as_string) {
        CHECK(resp.status == 400);
    }
    if (resp.status == 202) {
        CHECK(hd_history_last_seq(h) > last);
        CHECK(hd_broker_metrics(b)->events_published == published + 1);
        check_accepted(b, &resp, topic, kind_s, as_json, as_string);
    } else {
        check_error(&resp); /* and it changed nothing */
        CHECK(hd_history_last_seq(h) == last);
        CHECK(hd_broker_metrics(b)->events_published == published);
    }
    json_decref(as_json);
    json_decref(as_string);
    hd_http_resp_clear(&resp);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    struct hd_broker *b = get_broker();
    uint8_t flags = data[0];
    const uint8_t *p = data + 1;
    size_t left = size - 1;

    char *target = take_line(&p, &left);
    char *auth = flags & 8 ? take_line(&p, &left) : NULL;
    unsigned ct = flags & 7;
    char *ctype_in = ct == 7 ? take_line(&p, &left) : NULL;

    /* The body gets its exact size, no terminator, so reads past it are caught. */
    char *body = malloc(left ? left : 1);
    CHECK(body);
    memcpy(body, p, left);

    char *query = strchr(target, '?');
    if (query)
        *query++ = '\0';
    int64_t clen = (int64_t)left;
    switch ((flags >> 4) & 3) {
    case 1:
        clen = -1;
        break;
    case 2:
        clen = (int64_t)hd_api_body_limit(b, &(struct hd_http_req){.path = target}) + 1 +
               (int64_t)left;
        break;
    default:
        break;
    }
    struct hd_http_req req = {
        .method = HD_M_POST,
        .path = target,
        .query = query,
        .content_type = ct == 7 ? ctype_in : ctypes[ct].value,
        .authorization = auth,
        .peer = "127.0.0.1",
        .content_length = clen,
    };
    run(b, &req, ct == 7 ? AS_EITHER : ctypes[ct].kind, body, left);

    free(body);
    free(ctype_in);
    free(auth);
    free(target);
    return 0;
}
