/* SPDX-License-Identifier: MIT */
/*
 * Check suite for the HTTP API's policy (src/api.c, src/api_publish.c) without sockets: each
 * test fills a struct hd_http_req the way server_http.c does, routes it with hd_api_route,
 * hands the body to hd_api_publish when the route asks for it, and reads the struct
 * hd_http_resp back. Behind it is a real broker with the authenticator built from the config
 * and the local engine on the memory store, so publishes answer within the call and land in
 * the broker's history, which the tests inspect. Subscribers are SSE connections on the
 * shared fake transport (fake_conn.h): what answers report as receivers is what they hold.
 */
#define _GNU_SOURCE /* strcasestr */
#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "broker.h"
#include "engine.h"
#include "fake_conn.h"

/* Static tokens of the auth configs below: sha256 digests of "svc-token" and "lim-token". */
#define SVC_TOKEN "svc-token"
#define SVC_SHA "840f135a0cd6a2ca7c9865624d5434f90a072d562d58ec4503fc480d1b65a25d"
#define LIM_TOKEN "lim-token"
#define LIM_SHA "7c3440c3c3ee076609776a4c97891121aa4d2a15dca72c02ac09879020feeac7"

/* Anonymous may publish and read only under public.; svc may do everything; lim may publish
 * only to lim.out and read lim.*. */
#define AUTH_JSON                                                                                  \
    "{\"auth\":{\"anonymous\":{\"publish\":[\"public.>\"],\"subscribe\":[\"public.>\"]},"          \
    "\"tokens\":[{\"name\":\"svc\",\"sha256\":\"" SVC_SHA "\",\"publish\":[\">\"],"                \
    "\"subscribe\":[\">\"]},{\"name\":\"lim\",\"sha256\":\"" LIM_SHA "\","                         \
    "\"publish\":[\"lim.out\"],\"subscribe\":[\"lim.*\"]}]}}"

/* ---- fixture ------------------------------------------------------------------------- */

static struct hd_config cfg;
static struct hd_http_resp resp;

static void setup(void)
{
    ck_assert_int_eq(hd_config_defaults(&cfg), 0);
    hd_log_set_level(HD_LOG_ERROR); /* keep the expected refusals out of the test output */
    b = NULL;
    n_conns = 0;
    memset(&resp, 0, sizeof(resp));
}

static void teardown(void)
{
    hd_http_resp_clear(&resp);
    hd_broker_free(b); /* detaches the subscribers */
    b = NULL;
    for (size_t i = 0; i < n_conns; i++)
        free(conns[i]);
    n_conns = 0;
    hd_config_free(&cfg);
}

/* Loads JSON config text over the defaults (before boot). */
static void load(const char *json)
{
    struct hd_config_error err;
    int rc = hd_config_load_string(&cfg, json, strlen(json), "test.json", &err);
    ck_assert_msg(rc == 0, "config: %s", err.text);
}

/* The broker over cfg as the test adjusted it: its authenticator, the local engine on the
 * memory store (which needs no loop), started. */
static void boot(void)
{
    char why[256] = "";
    b = hd_broker_new(&cfg);
    ck_assert_ptr_nonnull(b);
    struct hd_auth *a = hd_auth_new(&cfg, why, sizeof(why));
    ck_assert_msg(a != NULL, "auth: %s", why);
    hd_broker_set_auth(b, a);
    struct hd_engine *e = hd_engine_local_new(NULL, &cfg, NULL, why, sizeof(why));
    ck_assert_msg(e != NULL, "engine: %s", why);
    hd_broker_set_engine(b, e);
    ck_assert_int_eq(hd_broker_start(b, why, sizeof(why)), 0);
}

/* An SSE subscriber on `pattern`; its queue holds what it was sent. */
static struct tconn *subscriber(const char *pattern)
{
    struct tconn *t = new_tconn();
    t->c.identity.everything = true; /* what a config without an auth section grants */
    ck_assert_int_eq(hd_conn_attach(b, &t->c, HD_CONN_SSE, &t_ops), 0);
    struct hd_error err = {0};
    bool gap = false;
    ck_assert_int_eq(hd_conn_subscribe(&t->c, pattern, NULL, &gap, &err), HD_ERR_NONE);
    return t;
}

/* Messages waiting in a subscriber's queue (consumed). */
static size_t drain_queue(struct tconn *t)
{
    size_t n = 0;
    while (hd_conn_peek(&t->c)) {
        hd_conn_writable(&t->c);
        hd_conn_wrote(&t->c);
        n++;
    }
    return n;
}

static struct hd_http_req req_of(enum hd_method m, const char *path, const char *query)
{
    return (struct hd_http_req){
        .method = m, .path = path, .query = query, .content_length = -1, .peer = "192.0.2.1"};
}

/* Routes `req` into the fixture's response (cleared first). */
static enum hd_http_next route(const struct hd_http_req *req)
{
    hd_http_resp_clear(&resp);
    return hd_api_route(b, req, &resp);
}

static void never_done(void *arg, struct hd_http_resp *r)
{
    (void)arg;
    (void)r;
    ck_abort_msg("the memory engine answers within the call: no later completion expected");
}

/* What the transport does for a POST: route, read the body when asked, publish. Returns the
 * status of the response left in `resp`. */
static int post_len(struct hd_http_req *req, const char *body, size_t len)
{
    if (req->content_length < 0)
        req->content_length = (int64_t)len;
    enum hd_http_next next = route(req);
    if (next == HD_HTTP_READ_BODY) {
        ck_assert_uint_le(len, hd_api_body_limit(b, req));
        int r = hd_api_publish(b, req, body, len, &resp, never_done, NULL);
        ck_assert_int_eq(r, HD_HTTP_RESPOND);
    } else {
        ck_assert_int_eq(next, HD_HTTP_RESPOND);
    }
    ck_assert_int_ne(resp.status, 0);
    return resp.status;
}

static int post(struct hd_http_req *req, const char *body)
{
    return post_len(req, body, strlen(body));
}

/* The response body as JSON (caller decrefs). */
static json_t *body_json(void)
{
    json_error_t e;
    ck_assert_ptr_nonnull(resp.body);
    json_t *j = json_loadb(resp.body, resp.body_len, 0, &e);
    ck_assert_msg(j != NULL, "body is not JSON (%s): %.*s", e.text, (int)resp.body_len, resp.body);
    return j;
}

/* Checks the documented error body and returns nothing; `code` is the wire name. */
static void expect_error(int status, const char *code)
{
    ck_assert_msg(resp.status == status, "status %d, expected %d: %.*s", resp.status, status,
                  (int)resp.body_len, resp.body ? resp.body : "");
    json_t *j = body_json();
    ck_assert_str_eq(json_string_value(json_object_get(j, "type")), "error");
    ck_assert_str_eq(json_string_value(json_object_get(j, "code")), code);
    ck_assert_ptr_nonnull(json_string_value(json_object_get(j, "message")));
    json_decref(j);
}

/* The error body's message must mention `what`. */
static void expect_message_has(const char *what)
{
    json_t *j = body_json();
    const char *m = json_string_value(json_object_get(j, "message"));
    ck_assert_msg(m && strstr(m, what), "message \"%s\" does not mention %s", m ? m : "", what);
    json_decref(j);
}

/* A response header's value, or NULL. `name` as the API writes it: lower case with ':'. */
static const char *header(const char *name)
{
    for (size_t i = 0; i < resp.n_headers; i++)
        if (strcmp(resp.headers[i].name, name) == 0)
            return resp.headers[i].value;
    return NULL;
}

static size_t history_count(const char *pattern)
{
    return hd_history_count(hd_broker_history(b), pattern, 0, 0);
}

/* Publishes `body` as JSON to `topic` anonymously and returns the answer (caller decrefs). */
static json_t *publish_ok(const char *topic, const char *body)
{
    char path[300];
    snprintf(path, sizeof(path), "/v1/topics/%s", topic);
    struct hd_http_req req = req_of(HD_M_POST, path, NULL);
    req.content_type = "application/json";
    ck_assert_int_eq(post(&req, body), 202);
    return body_json();
}

static uint64_t id_of(json_t *o)
{
    uint64_t seq = 0;
    const char *id = json_string_value(json_object_get(o, "id"));
    ck_assert_ptr_nonnull(id);
    ck_assert_int_eq(hd_event_id_parse(id, &seq), 0);
    return seq;
}

/* ---- routes, methods, CORS, health, metrics ------------------------------------------ */

START_TEST(unknown_paths_404)
{
    boot();
    static const char *const paths[] = {"/",           "/nope",          "/v1",
                                        "/v1/topics/", "/v1/topics/a/b", "/v1/topics/a/events/x",
                                        "/v1/events/", "/v1/events/a/b", "/healthz/x",
                                        "/v1/wss"};
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
        struct hd_http_req req = req_of(HD_M_GET, paths[i], NULL);
        ck_assert_int_eq(route(&req), HD_HTTP_RESPOND);
        expect_error(404, "not_found");
    }
    ck_assert_int_eq(hd_broker_metrics(b)->http_requests, 10);
}
END_TEST

START_TEST(wrong_method_405_with_allow)
{
    boot();
    static const struct {
        enum hd_method m;
        const char *path, *allow;
    } cases[] = {
        {HD_M_POST, "/healthz", "GET, HEAD, OPTIONS"},
        {HD_M_DELETE, "/metrics", "GET, HEAD, OPTIONS"},
        {HD_M_POST, "/v1/ws", "GET, OPTIONS"},
        {HD_M_GET, "/v1/topics/chat", "POST, OPTIONS"},
        {HD_M_PUT, "/v1/topics/chat", "POST, OPTIONS"},
        {HD_M_GET, "/v1/publish", "POST, OPTIONS"},
        {HD_M_POST, "/v1/topics/chat/events", "GET, OPTIONS"},
        {HD_M_HEAD, "/v1/topics/chat/sse", "GET, OPTIONS"},
        {HD_M_PATCH, "/v1/events/0000000000000001", "GET, OPTIONS"},
        {HD_M_OTHER, "/healthz", "GET, HEAD, OPTIONS"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct hd_http_req req = req_of(cases[i].m, cases[i].path, NULL);
        ck_assert_int_eq(route(&req), HD_HTTP_RESPOND);
        expect_error(405, "method_not_allowed");
        ck_assert_pstr_eq(header("allow:"), cases[i].allow);
    }
    ck_assert_uint_eq(history_count(">"), 0);
}
END_TEST

START_TEST(options_preflight)
{
    boot();
    static const struct {
        const char *path, *allow;
    } cases[] = {
        {"/healthz", "GET, HEAD, OPTIONS"},   {"/v1/topics/chat", "POST, OPTIONS"},
        {"/v1/publish", "POST, OPTIONS"},     {"/v1/topics/chat.*/events", "GET, OPTIONS"},
        {"/v1/topics/>/sse", "GET, OPTIONS"}, {"/v1/ws", "GET, OPTIONS"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct hd_http_req req = req_of(HD_M_OPTIONS, cases[i].path, NULL);
        req.origin = "https://app.example";
        ck_assert_int_eq(route(&req), HD_HTTP_RESPOND);
        ck_assert_int_eq(resp.status, 204);
        ck_assert_ptr_null(resp.body);
        ck_assert_pstr_eq(header("allow:"), cases[i].allow);
        ck_assert_pstr_eq(header("access-control-allow-methods:"), cases[i].allow);
        const char *h = header("access-control-allow-headers:");
        ck_assert_ptr_nonnull(h);
        ck_assert_ptr_nonnull(strstr(h, "Authorization"));
        ck_assert_ptr_nonnull(strstr(h, "Content-Type"));
        ck_assert_ptr_nonnull(header("access-control-max-age:"));
    }
    /* An OPTIONS on a path that does not exist is still a 404. */
    struct hd_http_req req = req_of(HD_M_OPTIONS, "/nope", NULL);
    route(&req);
    expect_error(404, "not_found");
}
END_TEST

/*
 * A browser that publishes with an Idempotency-Key header (PROTOCOL.md section 3) from another
 * origin sends a preflight asking for it: the preflight must allow it, or the browser never
 * sends the publish.
 */
START_TEST(preflight_allows_idempotency_key)
{
    boot();
    struct hd_http_req req = req_of(HD_M_OPTIONS, "/v1/topics/chat", NULL);
    req.origin = "https://app.example";
    route(&req);
    const char *h = header("access-control-allow-headers:");
    ck_assert_ptr_nonnull(h);
    ck_assert_ptr_nonnull(strcasestr(h, "Idempotency-Key"));
}
END_TEST

START_TEST(cors_headers)
{
    boot(); /* default origins: ["*"] */
    struct hd_http_req req = req_of(HD_M_GET, "/healthz", NULL);
    req.origin = "https://anywhere.example";
    route(&req);
    hd_api_cors(b, &req, &resp);
    ck_assert_pstr_eq(header("access-control-allow-origin:"), "*");
    ck_assert_pstr_eq(header("access-control-expose-headers:"), "Retry-After");
    teardown(); /* a second broker, over a list of origins */
    setup();

    load("{\"cors\":{\"origins\":[\"https://app.example\"]}}");
    boot();
    req.origin = "https://APP.example"; /* origins compare without case */
    route(&req);
    hd_api_cors(b, &req, &resp);
    ck_assert_pstr_eq(header("access-control-allow-origin:"), "https://APP.example");
    ck_assert_pstr_eq(header("vary:"), "Origin");
    req.origin = "https://evil.example";
    route(&req);
    hd_api_cors(b, &req, &resp);
    ck_assert_ptr_null(header("access-control-allow-origin:"));
    req.origin = NULL;
    route(&req);
    hd_api_cors(b, &req, &resp);
    ck_assert_ptr_null(header("access-control-allow-origin:"));
    ck_assert(hd_api_origin_allowed(b, NULL));
    ck_assert(hd_api_origin_allowed(b, "https://app.example"));
    ck_assert(!hd_api_origin_allowed(b, "https://app.example.evil"));
}
END_TEST

START_TEST(health_and_drain)
{
    boot();
    struct hd_http_req req = req_of(HD_M_GET, "/healthz", NULL);
    ck_assert_int_eq(route(&req), HD_HTTP_RESPOND);
    ck_assert_int_eq(resp.status, 200);
    ck_assert_uint_eq(resp.body_len, 3);
    ck_assert(memcmp(resp.body, "ok\n", 3) == 0);
    req.method = HD_M_HEAD;
    route(&req);
    ck_assert_int_eq(resp.status, 200);

    hd_broker_drain(b);
    req.method = HD_M_GET;
    route(&req);
    ck_assert_int_eq(resp.status, 503);
    ck_assert(resp.body_len == 9 && memcmp(resp.body, "draining\n", 9) == 0);
    /* Publishes and new streams are refused while draining, with the documented body. */
    struct hd_http_req pub = req_of(HD_M_POST, "/v1/topics/public.x", NULL);
    post(&pub, "hi");
    expect_error(503, "unavailable");
    struct hd_http_req sse = req_of(HD_M_GET, "/v1/topics/public.x/sse", NULL);
    route(&sse);
    expect_error(503, "unavailable");
    ck_assert_uint_eq(history_count(">"), 0);
}
END_TEST

START_TEST(metrics_route)
{
    boot();
    json_decref(publish_ok("m.one", "1"));
    struct hd_http_req req = req_of(HD_M_GET, "/metrics", NULL);
    ck_assert_int_eq(route(&req), HD_HTTP_RESPOND);
    ck_assert_int_eq(resp.status, 200);
    ck_assert_str_eq(resp.content_type, "text/plain; version=0.0.4; charset=utf-8");
    char *text = strndup(resp.body, resp.body_len);
    ck_assert_ptr_nonnull(strstr(text, "\nherald_events_published_total 1\n"));
    ck_assert_ptr_nonnull(strstr(text, "\nherald_http_requests_total 2\n")); /* this one too */
    free(text);
}
END_TEST

/* ---- the WebSocket route ------------------------------------------------------------- */

START_TEST(ws_plain_get_426)
{
    boot();
    struct hd_http_req req = req_of(HD_M_GET, "/v1/ws", NULL);
    ck_assert_int_eq(route(&req), HD_HTTP_RESPOND);
    ck_assert_int_eq(resp.status, 426);
    ck_assert_pstr_eq(header("upgrade:"), "websocket");
    json_t *j = body_json();
    ck_assert_str_eq(json_string_value(json_object_get(j, "type")), "error");
    json_decref(j);
}
END_TEST

START_TEST(ws_upgrade_identity)
{
    load(AUTH_JSON);
    boot();
    /* No credentials: the anonymous identity. */
    struct hd_http_req req = req_of(HD_M_GET, "/v1/ws", NULL);
    req.upgrade = true;
    ck_assert_int_eq(route(&req), HD_HTTP_UPGRADE);
    ck_assert_ptr_nonnull(resp.who);
    ck_assert_int_eq(resp.who->kind, HD_ID_ANONYMOUS);

    /* A browser's ?token= is the credential, kept in the form a reload checks again. */
    req.query = "token=" SVC_TOKEN;
    ck_assert_int_eq(route(&req), HD_HTTP_UPGRADE);
    struct hd_identity id;
    char *cred = NULL;
    hd_api_take_identity(&resp, &id, &cred);
    ck_assert_ptr_null(resp.who);
    ck_assert_int_eq(id.kind, HD_ID_TOKEN);
    ck_assert_str_eq(hd_identity_name(&id), "svc");
    ck_assert_pstr_eq(cred, "Bearer " SVC_TOKEN);
    hd_identity_clear(&id);
    free(cred);

    /* The header works as well, and wins. */
    req.query = NULL;
    req.authorization = "Bearer " LIM_TOKEN;
    ck_assert_int_eq(route(&req), HD_HTTP_UPGRADE);
    ck_assert_str_eq(hd_identity_name(resp.who), "lim");
    ck_assert_pstr_eq(resp.credential, "Bearer " LIM_TOKEN);
}
END_TEST

START_TEST(ws_refusals)
{
    load("{\"cors\":{\"origins\":[\"https://app.example\"]}}");
    boot();
    struct hd_http_req req = req_of(HD_M_GET, "/v1/ws", NULL);
    req.upgrade = true;
    req.origin = "https://evil.example";
    ck_assert_int_eq(route(&req), HD_HTTP_RESPOND);
    expect_error(403, "forbidden");
    ck_assert_ptr_null(resp.who);
    req.origin = "https://app.example";
    ck_assert_int_eq(route(&req), HD_HTTP_UPGRADE);
    req.origin = NULL; /* CLI tools send none */
    ck_assert_int_eq(route(&req), HD_HTTP_UPGRADE);

    /* Credentials that do not authenticate: 401, never anonymous. */
    req.authorization = "Bearer not-a-token";
    ck_assert_int_eq(route(&req), HD_HTTP_RESPOND);
    expect_error(401, "unauthorized");
    ck_assert_ptr_nonnull(header("www-authenticate:"));
    ck_assert_ptr_null(resp.who);
    req.authorization = NULL;
    req.query = "token=nope";
    ck_assert_int_eq(route(&req), HD_HTTP_RESPOND);
    expect_error(401, "unauthorized");

    req.query = NULL;
    hd_broker_drain(b);
    ck_assert_int_eq(route(&req), HD_HTTP_RESPOND);
    expect_error(503, "unavailable");
}
END_TEST

/*
 * A ?token= that cannot be decoded (a bad percent escape, or longer than 4096 bytes) is a
 * wrong credential, 401, never no credential at all (which would fall back to anonymous).
 */
START_TEST(ws_malformed_query_token_401)
{
    load(AUTH_JSON);
    boot();
    static char long_token[5000];
    memcpy(long_token, "token=", 6);
    memset(long_token + 6, 'a', sizeof(long_token) - 7);
    const char *queries[] = {"token=%zz", long_token};
    for (size_t i = 0; i < 2; i++) {
        struct hd_http_req req = req_of(HD_M_GET, "/v1/ws", queries[i]);
        req.upgrade = true;
        ck_assert_msg(route(&req) == HD_HTTP_RESPOND, "query %zu upgraded as %s", i,
                      resp.who && resp.who->kind == HD_ID_ANONYMOUS ? "anonymous" : "?");
        expect_error(401, "unauthorized");
    }
}
END_TEST

/* ---- one event ----------------------------------------------------------------------- */

START_TEST(publish_json)
{
    boot();
    struct tconn *sub = subscriber("chat.*");
    struct hd_http_req req = req_of(HD_M_POST, "/v1/topics/chat.room1", "event=login");
    req.content_type = "application/json; charset=utf-8";
    int64_t before = hd_wall_ms();
    ck_assert_int_eq(post(&req, "{ \"from\" : \"alice\",\n \"n\": [1, 2.5, null] }"), 202);
    ck_assert_str_eq(resp.content_type, "application/json");
    json_t *j = body_json();
    ck_assert_str_eq(json_string_value(json_object_get(j, "topic")), "chat.room1");
    ck_assert_int_eq(json_integer_value(json_object_get(j, "receivers")), 1);
    ck_assert_int_ge(json_integer_value(json_object_get(j, "time")), before);
    ck_assert_ptr_null(json_object_get(j, "duplicate"));
    uint64_t seq = id_of(j);
    /* The event in history is the one answered, its data made compact. */
    struct hd_msg *m = hd_history_get(hd_broker_history(b), seq);
    ck_assert_ptr_nonnull(m);
    ck_assert_int_eq(m->time_ms, json_integer_value(json_object_get(j, "time")));
    json_decref(j);
    json_error_t e;
    json_t *ev = json_loadb((const char *)hd_msg_payload(m), m->len, 0, &e);
    ck_assert_ptr_nonnull(ev);
    ck_assert_str_eq(json_string_value(json_object_get(ev, "event")), "login");
    char *data = json_dumps(json_object_get(ev, "data"), JSON_COMPACT | JSON_SORT_KEYS);
    ck_assert_str_eq(data, "{\"from\":\"alice\",\"n\":[1,2.5,null]}");
    free(data);
    json_decref(ev);
    ck_assert_uint_eq(drain_queue(sub), 1);
    ck_assert_ptr_nonnull(strstr((const char *)hd_msg_payload(m), "\"data\":{\"from\":\"alice\""));
}
END_TEST

START_TEST(publish_canonical_json_as_sent)
{
    boot();
    /* Already compact and canonical: the bytes are the data as they came. */
    const char *body = "{\"a\":[1,{\"b\":\"caf\xc3\xa9\"}],\"t\":true}";
    json_t *j = publish_ok("c.one", body);
    struct hd_msg *m = hd_history_get(hd_broker_history(b), id_of(j));
    json_decref(j);
    ck_assert_ptr_nonnull(m);
    char want[128];
    snprintf(want, sizeof(want), "\"data\":%s}", body);
    ck_assert_ptr_nonnull(strstr((const char *)hd_msg_payload(m), want));
    /* A scalar is a JSON value too. */
    j = publish_ok("c.two", "42");
    m = hd_history_get(hd_broker_history(b), id_of(j));
    json_decref(j);
    ck_assert_ptr_nonnull(strstr((const char *)hd_msg_payload(m), "\"data\":42}"));
}
END_TEST

START_TEST(publish_plain_text)
{
    boot();
    struct hd_http_req req = req_of(HD_M_POST, "/v1/topics/text", NULL);
    ck_assert_int_eq(post(&req, "hello \"world\"\n"), 202);
    json_t *j = body_json();
    struct hd_msg *m = hd_history_get(hd_broker_history(b), id_of(j));
    json_decref(j);
    ck_assert_ptr_nonnull(m);
    ck_assert_ptr_nonnull(strstr((const char *)hd_msg_payload(m),
                                 "\"event\":\"message\",\"data\":\"hello \\\"world\\\"\\n\"}"));
    /* A JSON-looking body without the JSON content type is still a string. */
    req = req_of(HD_M_POST, "/v1/topics/text", NULL);
    req.content_type = "text/plain";
    ck_assert_int_eq(post(&req, "{\"a\":1}"), 202);
    j = body_json();
    m = hd_history_get(hd_broker_history(b), id_of(j));
    json_decref(j);
    ck_assert_ptr_nonnull(strstr((const char *)hd_msg_payload(m), "\"data\":\"{\\\"a\\\":1}\""));
}
END_TEST

START_TEST(publish_bad_bodies_400)
{
    boot();
    struct hd_http_req req = req_of(HD_M_POST, "/v1/topics/bad", NULL);
    req.content_type = "application/json";
    post(&req, "{\"a\":");
    expect_error(400, "bad_request");
    expect_message_has("JSON");
    req = req_of(HD_M_POST, "/v1/topics/bad", NULL);
    req.content_type = "application/json";
    post(&req, "");
    expect_error(400, "bad_request");
    req = req_of(HD_M_POST, "/v1/topics/bad", NULL);
    post_len(&req, "caf\xc3(", 5);
    expect_error(400, "bad_request");
    expect_message_has("UTF-8");
    req = req_of(HD_M_POST, "/v1/topics/bad", "event=no%20spaces");
    post(&req, "x");
    expect_error(400, "bad_request");
    req = req_of(HD_M_POST, "/v1/topics/bad", "event=");
    post(&req, "x");
    expect_error(400, "bad_request");
    ck_assert_uint_eq(history_count(">"), 0);
}
END_TEST

/*
 * An ?event= that cannot be decoded (a bad percent escape, or longer than any kind) is refused
 * like an invalid kind, never taken as absent (which would publish kind "message").
 */
START_TEST(publish_unreadable_event_kind_400)
{
    boot();
    char query[96] = "event=";
    memset(query + 6, 'e', 70);
    query[76] = '\0';
    const char *queries[] = {"event=%zz", query};
    for (size_t i = 0; i < 2; i++) {
        struct hd_http_req req = req_of(HD_M_POST, "/v1/topics/ev", queries[i]);
        post(&req, "x");
        expect_error(400, "bad_request");
    }
    ck_assert_uint_eq(history_count(">"), 0);
}
END_TEST

START_TEST(publish_topic_errors)
{
    boot();
    static const char *const bad[] = {"/v1/topics/a..b",   "/v1/topics/.a",     "/v1/topics/a.",
                                      "/v1/topics/sp ace", "/v1/topics/chat.*", "/v1/topics/>"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct hd_http_req req = req_of(HD_M_POST, bad[i], NULL);
        post(&req, "x");
        expect_error(400, "invalid_topic");
    }
    char path[400] = "/v1/topics/";
    memset(path + 11, 'a', 256); /* one byte over the limit */
    path[11 + 256] = '\0';
    struct hd_http_req req = req_of(HD_M_POST, path, NULL);
    post(&req, "x");
    expect_error(400, "invalid_topic");
    path[11 + 255] = '\0'; /* exactly the limit */
    req = req_of(HD_M_POST, path, NULL);
    ck_assert_int_eq(post(&req, "x"), 202);

    req = req_of(HD_M_POST, "/v1/topics/$sys.stats", NULL);
    post(&req, "x");
    expect_error(403, "forbidden");
    ck_assert_uint_eq(history_count(">"), 1);
}
END_TEST

START_TEST(publish_too_large_413)
{
    cfg.limits.max_event_bytes = 64;
    boot();
    /* A declared length over the body limit is refused before the body is read. */
    struct hd_http_req req = req_of(HD_M_POST, "/v1/topics/big", NULL);
    ck_assert_uint_eq(hd_api_body_limit(b, &req), 64 + 16384);
    req.content_length = 64 + 16384 + 1;
    ck_assert_int_eq(route(&req), HD_HTTP_RESPOND);
    expect_error(413, "too_large");
    expect_message_has("limits.max_event_bytes");
    /* Data over max_event_bytes once encoded: the body fits the slack, the event does not. */
    char body[80];
    memset(body, 'x', 63);
    body[63] = '\0';
    req = req_of(HD_M_POST, "/v1/topics/big", NULL);
    post(&req, body); /* 63 bytes become a 65-byte JSON string */
    expect_error(413, "too_large");
    expect_message_has("limits.max_event_bytes");
    body[62] = '\0';
    req = req_of(HD_M_POST, "/v1/topics/big", NULL);
    ck_assert_int_eq(post(&req, body), 202); /* exactly 64 */
    ck_assert_uint_eq(history_count(">"), 1);
}
END_TEST

/* ---- idempotency keys ---------------------------------------------------------------- */

START_TEST(idempotency_same_key)
{
    boot();
    struct tconn *sub = subscriber("orders");
    struct hd_http_req req = req_of(HD_M_POST, "/v1/topics/orders", NULL);
    req.idempotency_key = "order-17";
    ck_assert_int_eq(post(&req, "first"), 202);
    json_t *a = body_json();
    ck_assert_ptr_null(json_object_get(a, "duplicate"));
    req = req_of(HD_M_POST, "/v1/topics/orders", NULL);
    req.idempotency_key = "order-17";
    ck_assert_int_eq(post(&req, "second body, same key"), 202);
    json_t *r = body_json();
    ck_assert(json_is_true(json_object_get(r, "duplicate")));
    ck_assert_str_eq(json_string_value(json_object_get(r, "id")),
                     json_string_value(json_object_get(a, "id")));
    ck_assert_int_eq(json_integer_value(json_object_get(r, "time")),
                     json_integer_value(json_object_get(a, "time")));
    ck_assert_int_eq(json_integer_value(json_object_get(r, "receivers")), 1);
    json_decref(a);
    json_decref(r);
    ck_assert_uint_eq(history_count(">"), 1);
    ck_assert_uint_eq(drain_queue(sub), 1);
    ck_assert_int_eq(hd_broker_metrics(b)->publish_duplicates, 1);
    /* Another key publishes. */
    req = req_of(HD_M_POST, "/v1/topics/orders", NULL);
    req.idempotency_key = "order-18";
    ck_assert_int_eq(post(&req, "third"), 202);
    ck_assert_uint_eq(history_count(">"), 2);
}
END_TEST

START_TEST(idempotency_scoped_to_identity)
{
    load(AUTH_JSON);
    boot();
    struct hd_http_req req = req_of(HD_M_POST, "/v1/topics/public.x", NULL);
    req.idempotency_key = "k1";
    ck_assert_int_eq(post(&req, "anon"), 202);
    json_t *a = body_json();
    req = req_of(HD_M_POST, "/v1/topics/public.x", NULL);
    req.idempotency_key = "k1";
    req.authorization = "Bearer " SVC_TOKEN;
    ck_assert_int_eq(post(&req, "svc"), 202);
    json_t *s = body_json();
    ck_assert_ptr_null(json_object_get(s, "duplicate"));
    ck_assert_uint_gt(id_of(s), id_of(a));
    /* Each identity's repeat gets its own first answer. */
    req = req_of(HD_M_POST, "/v1/topics/public.x", NULL);
    req.idempotency_key = "k1";
    req.query = "token=" SVC_TOKEN;
    ck_assert_int_eq(post(&req, "svc again"), 202);
    json_t *s2 = body_json();
    ck_assert(json_is_true(json_object_get(s2, "duplicate")));
    ck_assert_uint_eq(id_of(s2), id_of(s));
    json_decref(a);
    json_decref(s);
    json_decref(s2);
    ck_assert_uint_eq(history_count(">"), 2);
}
END_TEST

START_TEST(idempotency_invalid_key_400)
{
    boot();
    char longkey[HD_IDEM_KEY_MAX + 2];
    memset(longkey, 'k', sizeof(longkey) - 1);
    longkey[sizeof(longkey) - 1] = '\0';
    const char *bad[] = {"", "has space", "tab\there", "caf\xc3\xa9", longkey};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct hd_http_req req = req_of(HD_M_POST, "/v1/topics/k", NULL);
        req.idempotency_key = bad[i];
        post(&req, "x");
        expect_error(400, "bad_request");
    }
    ck_assert_uint_eq(history_count(">"), 0);
    longkey[HD_IDEM_KEY_MAX] = '\0'; /* exactly the limit */
    struct hd_http_req req = req_of(HD_M_POST, "/v1/topics/k", NULL);
    req.idempotency_key = longkey;
    ck_assert_int_eq(post(&req, "x"), 202);
}
END_TEST

START_TEST(idempotency_window_zero_ignores_keys)
{
    cfg.history.dedupe_window_s = 0;
    boot();
    for (int i = 0; i < 2; i++) {
        struct hd_http_req req = req_of(HD_M_POST, "/v1/topics/k", NULL);
        req.idempotency_key = "same";
        ck_assert_int_eq(post(&req, "x"), 202);
        json_t *j = body_json();
        ck_assert_ptr_null(json_object_get(j, "duplicate"));
        json_decref(j);
    }
    ck_assert_uint_eq(history_count(">"), 2);
}
END_TEST

START_TEST(idempotency_max_keys_oldest_forgotten)
{
    cfg.history.dedupe_max_keys = 2;
    boot();
    static const char *const keys[] = {"a", "b", "c", "a", "c"};
    static const bool dup[] = {false, false, false, false, true};
    for (size_t i = 0; i < 5; i++) {
        struct hd_http_req req = req_of(HD_M_POST, "/v1/topics/k", NULL);
        req.idempotency_key = keys[i];
        ck_assert_int_eq(post(&req, "x"), 202);
        json_t *j = body_json();
        ck_assert_msg(json_is_true(json_object_get(j, "duplicate")) == dup[i], "publish %zu", i);
        json_decref(j);
    }
    ck_assert_uint_eq(history_count(">"), 4);
}
END_TEST

/*
 * A repeated key gets "the first publish's answer again" (PROTOCOL.md section 3), its topic
 * included, also when the repeat names another topic.
 */
START_TEST(idempotency_repeat_answers_first_topic)
{
    boot();
    struct hd_http_req req = req_of(HD_M_POST, "/v1/topics/t.one", NULL);
    req.idempotency_key = "same";
    ck_assert_int_eq(post(&req, "x"), 202);
    req = req_of(HD_M_POST, "/v1/topics/t.two", NULL);
    req.idempotency_key = "same";
    ck_assert_int_eq(post(&req, "x"), 202);
    json_t *j = body_json();
    ck_assert(json_is_true(json_object_get(j, "duplicate")));
    struct hd_msg *m = hd_history_get(hd_broker_history(b), id_of(j));
    ck_assert_ptr_nonnull(m);
    ck_assert_str_eq(m->topic, "t.one");
    ck_assert_str_eq(json_string_value(json_object_get(j, "topic")), m->topic);
    json_decref(j);
}
END_TEST

/* ---- rate limiting, auth ------------------------------------------------------------- */

START_TEST(rate_limit_per_address)
{
    cfg.limits.publish_rate = 1;
    cfg.limits.publish_burst = 2;
    boot();
    for (int i = 0; i < 2; i++) {
        struct hd_http_req req = req_of(HD_M_POST, "/v1/topics/r", NULL);
        ck_assert_int_eq(post(&req, "x"), 202);
    }
    struct hd_http_req req = req_of(HD_M_POST, "/v1/topics/r", NULL);
    post(&req, "x");
    expect_error(429, "rate_limited");
    const char *ra = header("retry-after:");
    ck_assert_ptr_nonnull(ra);
    ck_assert_int_ge(atoi(ra), 1);
    /* Another address has its own bucket. */
    req = req_of(HD_M_POST, "/v1/topics/r", NULL);
    req.peer = "192.0.2.2";
    ck_assert_int_eq(post(&req, "x"), 202);
    ck_assert_uint_eq(history_count(">"), 3);
}
END_TEST

START_TEST(rate_limit_token_shared)
{
    load(AUTH_JSON);
    cfg.limits.publish_rate = 1;
    cfg.limits.publish_burst = 2;
    boot();
    /* One token from three addresses: one bucket. */
    static const char *const peers[] = {"192.0.2.1", "192.0.2.2", "192.0.2.3"};
    for (int i = 0; i < 3; i++) {
        struct hd_http_req req = req_of(HD_M_POST, "/v1/topics/t", NULL);
        req.peer = peers[i];
        req.authorization = "Bearer " SVC_TOKEN;
        post(&req, "x");
        if (i < 2)
            ck_assert_int_eq(resp.status, 202);
        else
            expect_error(429, "rate_limited");
    }
    ck_assert_ptr_nonnull(header("retry-after:"));
    /* Anonymous from the same address is counted apart. */
    struct hd_http_req req = req_of(HD_M_POST, "/v1/topics/public.t", NULL);
    req.peer = peers[2];
    ck_assert_int_eq(post(&req, "x"), 202);
    ck_assert_uint_eq(history_count(">"), 3);
}
END_TEST

START_TEST(auth_refusals)
{
    load(AUTH_JSON);
    boot();
    /* Anonymous outside its rule: 401 with a challenge, before the body is read. */
    struct hd_http_req req = req_of(HD_M_POST, "/v1/topics/private", NULL);
    req.content_length = 1;
    ck_assert_int_eq(route(&req), HD_HTTP_RESPOND);
    expect_error(401, "unauthorized");
    ck_assert_pstr_eq(header("www-authenticate:"), "Bearer realm=\"herald\"");
    /* A wrong token: 401, not anonymous (public.x would be allowed anonymously). */
    req = req_of(HD_M_POST, "/v1/topics/public.x", NULL);
    req.authorization = "Bearer wrong";
    post(&req, "x");
    expect_error(401, "unauthorized");
    ck_assert_ptr_nonnull(header("www-authenticate:"));
    req = req_of(HD_M_POST, "/v1/topics/public.x", NULL);
    req.authorization = "Basic dXNlcjpwYXNz";
    post(&req, "x");
    expect_error(401, "unauthorized");
    /* A token without the right: 403, no challenge. */
    req = req_of(HD_M_POST, "/v1/topics/public.x", NULL);
    req.authorization = "Bearer " LIM_TOKEN;
    post(&req, "x");
    expect_error(403, "forbidden");
    ck_assert_ptr_null(header("www-authenticate:"));
    req = req_of(HD_M_POST, "/v1/topics/lim.out", NULL);
    req.authorization = "Bearer " LIM_TOKEN;
    ck_assert_int_eq(post(&req, "x"), 202);
    ck_assert_uint_eq(history_count(">"), 1);
    /* Reading: the same answers on polls and event status. */
    struct hd_http_req poll = req_of(HD_M_GET, "/v1/topics/lim.*/events", NULL);
    route(&poll);
    expect_error(401, "unauthorized");
    ck_assert_ptr_nonnull(header("www-authenticate:"));
    poll.authorization = "Bearer " LIM_TOKEN;
    ck_assert_int_eq(route(&poll), HD_HTTP_RESPOND);
    ck_assert_int_eq(resp.status, 200);
    poll = req_of(HD_M_GET, "/v1/topics/>/events", NULL);
    poll.authorization = "Bearer " LIM_TOKEN;
    route(&poll);
    expect_error(403, "forbidden");
    /* The status of an event carries it: the right to read its topic. */
    struct hd_msg *ev[1];
    ck_assert_uint_eq(hd_history_collect(hd_broker_history(b), "lim.out", 0, 0, ev, 1), 1);
    char path[64], id[HD_EVENT_ID_LEN + 1];
    hd_event_id_format(ev[0]->seq, id);
    snprintf(path, sizeof(path), "/v1/events/%s", id);
    struct hd_http_req st = req_of(HD_M_GET, path, NULL);
    route(&st);
    expect_error(401, "unauthorized");
    st.authorization = "Bearer " LIM_TOKEN;
    route(&st);
    ck_assert_int_eq(resp.status, 200);
}
END_TEST

/* ---- batches ------------------------------------------------------------------------- */

static struct hd_http_req batch_req(void)
{
    struct hd_http_req req = req_of(HD_M_POST, "/v1/publish", NULL);
    req.content_type = "application/x-ndjson";
    return req;
}

/* The batch answer's events array (borrowed from *root, which the caller decrefs). */
static json_t *batch_events(json_t **root, size_t n)
{
    *root = body_json();
    json_t *ev = json_object_get(*root, "events");
    ck_assert(json_is_array(ev));
    ck_assert_uint_eq(json_array_size(ev), n);
    return ev;
}

static void expect_line(size_t line)
{
    json_t *j = body_json();
    ck_assert_int_eq(json_integer_value(json_object_get(j, "line")), (json_int_t)line);
    json_decref(j);
}

START_TEST(batch_in_order)
{
    boot();
    struct tconn *sub = subscriber("b.one");
    struct hd_http_req req = batch_req();
    const char *body = "{\"topic\":\"b.one\",\"data\":{\"n\":1}}\n"
                       "{\"topic\":\"b.two\",\"event\":\"login\",\"data\":\"two\"}\r\n"
                       "  {\"topic\":\"b.one\"}  \n";
    ck_assert_int_eq(post(&req, body), 202);
    json_t *root;
    json_t *ev = batch_events(&root, 3);
    static const char *const topics[] = {"b.one", "b.two", "b.one"};
    static const int receivers[] = {1, 0, 1};
    uint64_t prev = 0;
    for (size_t i = 0; i < 3; i++) {
        json_t *e = json_array_get(ev, i);
        ck_assert_str_eq(json_string_value(json_object_get(e, "topic")), topics[i]);
        ck_assert_int_eq(json_integer_value(json_object_get(e, "receivers")), receivers[i]);
        ck_assert_ptr_null(json_object_get(e, "duplicate"));
        uint64_t seq = id_of(e);
        ck_assert_uint_gt(seq, prev);
        prev = seq;
        struct hd_msg *m = hd_history_get(hd_broker_history(b), seq);
        ck_assert_ptr_nonnull(m);
        ck_assert_str_eq(m->topic, topics[i]);
        ck_assert_int_eq(m->time_ms, json_integer_value(json_object_get(e, "time")));
    }
    struct hd_msg *m = hd_history_get(hd_broker_history(b), id_of(json_array_get(ev, 1)));
    ck_assert_ptr_nonnull(
        strstr((const char *)hd_msg_payload(m), "\"event\":\"login\",\"data\":\"two\"}"));
    m = hd_history_get(hd_broker_history(b), id_of(json_array_get(ev, 2)));
    ck_assert_ptr_nonnull(strstr((const char *)hd_msg_payload(m), "\"data\":null}"));
    json_decref(root);
    ck_assert_uint_eq(history_count(">"), 3);
    ck_assert_uint_eq(drain_queue(sub), 2);
}
END_TEST

START_TEST(batch_keys_resend)
{
    boot();
    const char *body = "{\"topic\":\"k.a\",\"key\":\"a-1\",\"data\":1}\n"
                       "{\"topic\":\"k.b\",\"key\":\"b-1\",\"data\":2}\n";
    struct hd_http_req req = batch_req();
    ck_assert_int_eq(post(&req, body), 202);
    json_t *first;
    json_t *ev1 = batch_events(&first, 2);
    req = batch_req();
    ck_assert_int_eq(post(&req, body), 202);
    json_t *again;
    json_t *ev2 = batch_events(&again, 2);
    for (size_t i = 0; i < 2; i++) {
        json_t *x = json_array_get(ev1, i), *y = json_array_get(ev2, i);
        ck_assert_uint_eq(id_of(x), id_of(y));
        ck_assert_int_eq(json_integer_value(json_object_get(x, "time")),
                         json_integer_value(json_object_get(y, "time")));
        ck_assert(json_is_true(json_object_get(y, "duplicate")));
    }
    json_decref(first);
    json_decref(again);
    ck_assert_uint_eq(history_count(">"), 2);
    /* A single publish with the same key, from the same identity, is the same publish. */
    struct hd_http_req one = req_of(HD_M_POST, "/v1/topics/k.a", NULL);
    one.idempotency_key = "a-1";
    ck_assert_int_eq(post(&one, "1"), 202);
    json_t *j = body_json();
    ck_assert(json_is_true(json_object_get(j, "duplicate")));
    json_decref(j);
    ck_assert_uint_eq(history_count(">"), 2);
}
END_TEST

START_TEST(batch_bad_line_refuses_all)
{
    static const struct {
        const char *body;
        int status;
        const char *code;
        size_t line;
    } cases[] = {
        {"{\"topic\":\"a\"}\n{\"topic\":\"b\"}\n{\"topic\":\n", 400, "bad_request", 3},
        {"{\"topic\":\"a\"}\n\n\n{\"topic\":\"a..b\"}\n", 400, "invalid_topic", 4},
        {"\n{\"topic\":\"a\"}\n{\"topic\":\"$sys\"}", 403, "forbidden", 3},
        {"{\"topic\":\"a\",\"extra\":1}\n", 400, "bad_request", 1},
        {"{\"topic\":\"a\"}\n[1,2]\n", 400, "bad_request", 2},
        {"{\"topic\":7}\n", 400, "bad_request", 1},
        {"{\"topic\":\"a\"}\n{\"topic\":\"a\",\"event\":\"bad kind\"}\n", 400, "bad_request", 2},
        {"{\"topic\":\"a\"}\n{\"topic\":\"a\",\"key\":\"bad key\"}\n", 400, "bad_request", 2},
        {"{\"topic\":\"a\",\"topic\":\"b\"}\n", 400, "bad_request", 1},
        {"{\"topic\":\"a\"}\n\t\n{\"topic\":\"a\",\"data\":\"" /* 70 bytes of data */
         "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}\n",
         413, "too_large", 3},
    };
    cfg.limits.max_event_bytes = 64;
    boot();
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct hd_http_req req = batch_req();
        post(&req, cases[i].body);
        expect_error(cases[i].status, cases[i].code);
        expect_line(cases[i].line);
    }
    ck_assert_uint_eq(history_count(">"), 0);
    /* A batch with no events at all. */
    struct hd_http_req req = batch_req();
    post(&req, "\n  \n");
    expect_error(400, "bad_request");
    ck_assert_uint_eq(history_count(">"), 0);
}
END_TEST

START_TEST(batch_limits)
{
    cfg.limits.max_batch_events = 2;
    cfg.limits.max_batch_bytes = 1000;
    boot();
    struct hd_http_req req = batch_req();
    post(&req, "{\"topic\":\"a\"}\n\n{\"topic\":\"a\"}\n{\"topic\":\"a\"}\n");
    expect_error(413, "too_large");
    expect_message_has("limits.max_batch_events");
    expect_line(4);
    ck_assert_uint_eq(history_count(">"), 0);
    req = batch_req();
    ck_assert_int_eq(post(&req, "{\"topic\":\"a\"}\n{\"topic\":\"a\"}\n\n\n"), 202);
    ck_assert_uint_eq(history_count(">"), 2);
    /* A declared body over max_batch_bytes is refused unread, naming the limit. */
    req = batch_req();
    ck_assert_uint_eq(hd_api_body_limit(b, &req), 1000);
    req.content_length = 1001;
    ck_assert_int_eq(route(&req), HD_HTTP_RESPOND);
    expect_error(413, "too_large");
    expect_message_has("limits.max_batch_bytes");
}
END_TEST

START_TEST(batch_content_type)
{
    boot();
    static const char *const bad[] = {NULL, "application/json", "text/plain",
                                      "application/x-ndjsonx"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct hd_http_req req = batch_req();
        req.content_type = bad[i];
        post(&req, "{\"topic\":\"a\"}\n");
        expect_error(400, "bad_request");
    }
    ck_assert_uint_eq(history_count(">"), 0);
    struct hd_http_req req = batch_req();
    req.content_type = "Application/X-NDJSON; charset=utf-8";
    ck_assert_int_eq(post(&req, "{\"topic\":\"a\"}\n"), 202);
}
END_TEST

START_TEST(batch_rate_limit)
{
    cfg.limits.publish_rate = 1;
    cfg.limits.publish_burst = 3;
    boot();
    /* Four events never fit a bucket of three: refused whole, naming the first that does not
     * fit, and no token is taken. */
    struct hd_http_req req = batch_req();
    post(&req, "{\"topic\":\"a\"}\n{\"topic\":\"a\"}\n{\"topic\":\"a\"}\n{\"topic\":\"a\"}\n");
    expect_error(429, "rate_limited");
    ck_assert_ptr_nonnull(header("retry-after:"));
    expect_line(4);
    ck_assert_uint_eq(history_count(">"), 0);
    /* So two fit afterwards, and then two more do not (one token left). */
    req = batch_req();
    ck_assert_int_eq(post(&req, "{\"topic\":\"a\"}\n{\"topic\":\"a\"}\n"), 202);
    req = batch_req();
    post(&req, "{\"topic\":\"a\"}\n{\"topic\":\"a\"}\n");
    expect_error(429, "rate_limited");
    expect_line(2);
    ck_assert_uint_eq(history_count(">"), 2);
    /* The refused batch took nothing: the last token is still there for a single publish. */
    struct hd_http_req one = req_of(HD_M_POST, "/v1/topics/a", NULL);
    ck_assert_int_eq(post(&one, "x"), 202);
    one = req_of(HD_M_POST, "/v1/topics/a", NULL);
    post(&one, "x");
    expect_error(429, "rate_limited");
    ck_assert_uint_eq(history_count(">"), 3);
}
END_TEST

START_TEST(batch_auth)
{
    load(AUTH_JSON);
    boot();
    struct hd_http_req req = batch_req();
    req.authorization = "Bearer " LIM_TOKEN;
    post(&req, "{\"topic\":\"lim.out\"}\n{\"topic\":\"lim.other\"}\n");
    expect_error(403, "forbidden");
    expect_line(2);
    req = batch_req();
    req.authorization = "Bearer nope";
    post(&req, "{\"topic\":\"lim.out\"}\n");
    expect_error(401, "unauthorized");
    req = batch_req();
    post(&req, "{\"topic\":\"public.a\"}\n{\"topic\":\"private\"}\n");
    expect_error(401, "unauthorized");
    expect_line(2);
    ck_assert_uint_eq(history_count(">"), 0);
}
END_TEST

/* ---- polls and status ---------------------------------------------------------------- */

/* Polls `pattern` with `query` and returns the answer (caller decrefs). */
static json_t *poll(const char *pattern, const char *query)
{
    char path[300];
    snprintf(path, sizeof(path), "/v1/topics/%s/events", pattern);
    struct hd_http_req req = req_of(HD_M_GET, path, query);
    ck_assert_int_eq(route(&req), HD_HTTP_RESPOND);
    ck_assert_int_eq(resp.status, 200);
    return body_json();
}

START_TEST(poll_pages)
{
    boot();
    uint64_t ids[5];
    for (int i = 0; i < 5; i++) {
        json_t *j = publish_ok(i == 2 ? "other" : "p.x", "1");
        ids[i] = id_of(j);
        json_decref(j);
    }
    /* Four matching events, pages of three: 3, then 1, then an empty page. */
    json_t *j = poll("p.*", "limit=3");
    json_t *ev = json_object_get(j, "events");
    ck_assert_uint_eq(json_array_size(ev), 3);
    ck_assert_uint_eq(id_of(json_array_get(ev, 0)), ids[0]);
    ck_assert_uint_eq(id_of(json_array_get(ev, 1)), ids[1]);
    ck_assert_uint_eq(id_of(json_array_get(ev, 2)), ids[3]);
    ck_assert(json_is_false(json_object_get(j, "gap")));
    char next[64], q[96];
    snprintf(next, sizeof(next), "%s", json_string_value(json_object_get(j, "next")));
    json_decref(j);
    snprintf(q, sizeof(q), "since=%s&limit=3", next);
    j = poll("p.*", q);
    ev = json_object_get(j, "events");
    ck_assert_uint_eq(json_array_size(ev), 1);
    ck_assert_uint_eq(id_of(json_array_get(ev, 0)), ids[4]);
    snprintf(next, sizeof(next), "%s", json_string_value(json_object_get(j, "next")));
    json_decref(j);
    snprintf(q, sizeof(q), "since=%s", next);
    j = poll("p.*", q);
    ck_assert_uint_eq(json_array_size(json_object_get(j, "events")), 0);
    ck_assert_str_eq(json_string_value(json_object_get(j, "next")), next);
    ck_assert(json_is_false(json_object_get(j, "gap")));
    json_decref(j);
    /* latest: nothing, and a cursor that continues from now. */
    j = poll("p.*", "since=latest");
    ck_assert_uint_eq(json_array_size(json_object_get(j, "events")), 0);
    ck_assert(json_is_string(json_object_get(j, "next")));
    json_decref(j);
}
END_TEST

START_TEST(poll_unknown_cursor_gap)
{
    boot();
    json_decref(publish_ok("g", "1"));
    json_decref(publish_ok("g", "2"));
    /* Malformed, older than this server's first id, undecodable, and newer than any event. */
    static const char *const cursors[] = {"since=garbage", "since=0000000000000001", "since=%zz",
                                          "since=7fffffffffffffff"};
    for (size_t i = 0; i < sizeof(cursors) / sizeof(cursors[0]); i++) {
        json_t *j = poll("g", cursors[i]);
        ck_assert_msg(json_is_true(json_object_get(j, "gap")), "no gap for %s", cursors[i]);
        ck_assert_uint_eq(json_array_size(json_object_get(j, "events")), 2);
        json_decref(j);
    }
    json_t *j = poll("g", "since=all");
    ck_assert(json_is_false(json_object_get(j, "gap")));
    ck_assert_uint_eq(json_array_size(json_object_get(j, "events")), 2);
    json_decref(j);
}
END_TEST

START_TEST(poll_parameters)
{
    boot();
    static const char *const bad[] = {"limit=0", "limit=1001", "limit=-1", "limit=abc",
                                      "limit=",  "wait=61",    "wait=x",   "wait=%2B1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct hd_http_req req = req_of(HD_M_GET, "/v1/topics/p/events", bad[i]);
        ck_assert_msg(route(&req) == HD_HTTP_RESPOND, "%s was accepted", bad[i]);
        expect_error(400, "bad_request");
    }
    struct hd_http_req req = req_of(HD_M_GET, "/v1/topics/a..b/events", NULL);
    route(&req);
    expect_error(400, "invalid_topic");
    req = req_of(HD_M_GET, "/v1/topics/a.>.b/events", NULL);
    route(&req);
    expect_error(400, "invalid_topic");
    /* Nothing to answer yet with a wait: a long poll, with what the API validated. */
    req = req_of(HD_M_GET, "/v1/topics/p.*/events", "wait=60&limit=1000");
    ck_assert_int_eq(route(&req), HD_HTTP_LONGPOLL);
    ck_assert_ptr_nonnull(resp.stream);
    ck_assert_str_eq(resp.stream->pattern, "p.*");
    ck_assert_uint_eq(resp.stream->wait_s, 60);
    ck_assert_uint_eq(resp.stream->limit, 1000);
    ck_assert_ptr_nonnull(resp.who);
    /* Something to answer: at once. */
    json_decref(publish_ok("p.q", "1"));
    req = req_of(HD_M_GET, "/v1/topics/p.*/events", "wait=60");
    ck_assert_int_eq(route(&req), HD_HTTP_RESPOND);
    ck_assert_int_eq(resp.status, 200);
    /* The waiting answer, once woken, comes from history. */
    struct hd_http_stream st = {.pattern = "p.*", .limit = 10};
    hd_http_resp_clear(&resp);
    hd_api_poll_answer(b, &st, &resp);
    json_t *j = body_json();
    ck_assert_uint_eq(json_array_size(json_object_get(j, "events")), 1);
    json_decref(j);
}
END_TEST

/* A limit or wait that is there but cannot be decoded (a bad escape, or longer than any
 * number in range) is refused like any other bad value, not taken as absent. */
START_TEST(poll_unreadable_parameters_400)
{
    boot();
    static const char *const bad[] = {"limit=%zz", "limit=00000000000000001", "wait=%zz",
                                      "wait=00000000000000001"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct hd_http_req req = req_of(HD_M_GET, "/v1/topics/p/events", bad[i]);
        route(&req);
        ck_assert_msg(resp.status == 400, "%s: status %d", bad[i], resp.status);
    }
}
END_TEST

START_TEST(sse_route_params)
{
    boot();
    struct hd_http_req req = req_of(HD_M_GET, "/v1/topics/s.*/sse", "since=abc");
    ck_assert_int_eq(route(&req), HD_HTTP_SSE);
    ck_assert_str_eq(resp.stream->pattern, "s.*");
    ck_assert(resp.stream->has_since);
    ck_assert_str_eq(resp.stream->since, "abc");
    req.last_event_id = "0000000000000042"; /* the header wins */
    ck_assert_int_eq(route(&req), HD_HTTP_SSE);
    ck_assert_str_eq(resp.stream->since, "0000000000000042");
    req = req_of(HD_M_GET, "/v1/topics/s.*/sse", NULL);
    ck_assert_int_eq(route(&req), HD_HTTP_SSE);
    ck_assert(!resp.stream->has_since);
    req = req_of(HD_M_GET, "/v1/topics/s..x/sse", NULL);
    ck_assert_int_eq(route(&req), HD_HTTP_RESPOND);
    expect_error(400, "invalid_topic");
}
END_TEST

START_TEST(status_route)
{
    boot();
    struct tconn *sub = subscriber("st");
    json_t *j = publish_ok("st", "{\"v\":1}");
    char path[64];
    snprintf(path, sizeof(path), "/v1/events/%s", json_string_value(json_object_get(j, "id")));
    json_decref(j);
    struct hd_http_req req = req_of(HD_M_GET, path, NULL);
    ck_assert_int_eq(route(&req), HD_HTTP_RESPOND);
    ck_assert_int_eq(resp.status, 200);
    j = body_json();
    ck_assert_int_eq(json_integer_value(json_object_get(j, "queued")), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "written")), 0);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "dropped")), 0);
    json_t *ev = json_object_get(j, "event");
    ck_assert_str_eq(json_string_value(json_object_get(ev, "topic")), "st");
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(ev, "data"), "v")), 1);
    json_decref(j);
    ck_assert_uint_eq(drain_queue(sub), 1);
    route(&req);
    j = body_json();
    ck_assert_int_eq(json_integer_value(json_object_get(j, "written")), 1);
    json_decref(j);

    static const char *const unknown[] = {"/v1/events/0000000000000001", "/v1/events/zz",
                                          "/v1/events/ffffffffffffffffffff"};
    for (size_t i = 0; i < 3; i++) {
        req = req_of(HD_M_GET, unknown[i], NULL);
        route(&req);
        expect_error(404, "not_found");
    }
}
END_TEST

static Suite *api_suite(void)
{
    Suite *s = suite_create("api");
    TCase *tc = tcase_create("routes");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, unknown_paths_404);
    tcase_add_test(tc, wrong_method_405_with_allow);
    tcase_add_test(tc, options_preflight);
    tcase_add_test(tc, preflight_allows_idempotency_key);
    (void)preflight_allows_idempotency_key;
    tcase_add_test(tc, cors_headers);
    tcase_add_test(tc, health_and_drain);
    tcase_add_test(tc, metrics_route);
    tcase_add_test(tc, ws_plain_get_426);
    tcase_add_test(tc, ws_upgrade_identity);
    tcase_add_test(tc, ws_refusals);
    tcase_add_test(tc, ws_malformed_query_token_401);
    (void)ws_malformed_query_token_401;
    suite_add_tcase(s, tc);

    tc = tcase_create("publish");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, publish_json);
    tcase_add_test(tc, publish_canonical_json_as_sent);
    tcase_add_test(tc, publish_plain_text);
    tcase_add_test(tc, publish_bad_bodies_400);
    tcase_add_test(tc, publish_unreadable_event_kind_400);
    (void)publish_unreadable_event_kind_400;
    tcase_add_test(tc, publish_topic_errors);
    tcase_add_test(tc, publish_too_large_413);
    tcase_add_test(tc, idempotency_same_key);
    tcase_add_test(tc, idempotency_scoped_to_identity);
    tcase_add_test(tc, idempotency_invalid_key_400);
    tcase_add_test(tc, idempotency_window_zero_ignores_keys);
    tcase_add_test(tc, idempotency_max_keys_oldest_forgotten);
    tcase_add_test(tc, idempotency_repeat_answers_first_topic);
    (void)idempotency_repeat_answers_first_topic;
    tcase_add_test(tc, rate_limit_per_address);
    tcase_add_test(tc, rate_limit_token_shared);
    tcase_add_test(tc, auth_refusals);
    suite_add_tcase(s, tc);

    tc = tcase_create("batch");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, batch_in_order);
    tcase_add_test(tc, batch_keys_resend);
    tcase_add_test(tc, batch_bad_line_refuses_all);
    tcase_add_test(tc, batch_limits);
    tcase_add_test(tc, batch_content_type);
    tcase_add_test(tc, batch_rate_limit);
    tcase_add_test(tc, batch_auth);
    suite_add_tcase(s, tc);

    tc = tcase_create("read");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, poll_pages);
    tcase_add_test(tc, poll_unknown_cursor_gap);
    tcase_add_test(tc, poll_parameters);
    tcase_add_test(tc, poll_unreadable_parameters_400);
    tcase_add_test(tc, sse_route_params);
    tcase_add_test(tc, status_route);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(api_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
