/* SPDX-License-Identifier: MIT */
/*
 * Check suite for the local engine (src/engine_local.c) through a real broker, as publishers
 * and subscribers see it: with the memory store, ids increase and an event reaches the
 * subscribers before its publisher is answered; with the SQLite store (a fresh temporary
 * data_dir and a real uv loop, run until the store's completions arrive), nothing is
 * delivered or acknowledged before its commit, a restart over the same directory recovers
 * history and continues the ids, a cursor into what retention dropped (by count, by age while
 * down, or by a limit lowered between lives) still resolves with a gap, idempotency keys
 * survive the restart for history.dedupe_window_s and no longer, and a failing store refuses
 * with 503 and changes nothing. Publishes go through hd_broker_publish and, where the
 * answer's shape matters, the HTTP API (hd_api_route / hd_api_publish), whose asynchronous
 * completion only a durable store exercises. Subscribers are SSE connections on the shared
 * fake transport (fake_conn.h).
 */
#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api.h"
#include "broker.h"
#include "engine.h"
#include "fake_conn.h"

/* ---- fixture ------------------------------------------------------------------------- */

static char dir[64];
static uv_loop_t loop;
static struct hd_config cfg;
static struct hd_engine *eng; /* owned by b */

/* The publisher of the direct publishes: anonymous, as over HTTP without credentials. */
static struct hd_identity anon = {.kind = HD_ID_ANONYMOUS, .everything = true};
static const struct hd_publisher who = {.identity = &anon, .peer = "192.0.2.1"};

static void setup(void)
{
    ck_assert_int_eq(hd_config_defaults(&cfg), 0);
    hd_log_set_level(HD_LOG_ERROR); /* keep the expected store failures out of the output */
    snprintf(dir, sizeof(dir), "/tmp/herald-engine-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    b = NULL;
    eng = NULL;
    n_conns = 0;
}

static void free_conns(void)
{
    for (size_t i = 0; i < n_conns; i++)
        free(conns[i]);
    n_conns = 0;
}

/* Frees the broker (which stops and destroys the engine: the store closes) and lets the
 * loop close the store's handle. */
static void shutdown_broker(void)
{
    hd_broker_free(b);
    b = NULL;
    eng = NULL;
    free_conns();
    uv_run(&loop, UV_RUN_DEFAULT);
}

static void teardown(void)
{
    shutdown_broker();
    ck_assert_int_eq(uv_loop_close(&loop), 0);
    static const char *const files[] = {"herald.db", "herald.db-wal", "herald.db-shm"};
    char p[128];
    for (size_t i = 0; i < 3; i++) {
        snprintf(p, sizeof(p), "%s/%s", dir, files[i]);
        unlink(p);
    }
    rmdir(dir);
    hd_config_free(&cfg);
}

static void use_sqlite(void)
{
    cfg.history.store = HD_STORE_SQLITE;
    cfg.history.durability = HD_DURABILITY_SYNC;
    free(cfg.data_dir);
    cfg.data_dir = strdup(dir);
    ck_assert_ptr_nonnull(cfg.data_dir);
}

/* A broker over cfg with its authenticator and the local engine, started (recovery done). */
static void boot(void)
{
    char why[256] = "";
    b = hd_broker_new(&cfg);
    ck_assert_ptr_nonnull(b);
    struct hd_auth *a = hd_auth_new(&cfg, why, sizeof(why));
    ck_assert_msg(a != NULL, "auth: %s", why);
    hd_broker_set_auth(b, a);
    eng = hd_engine_local_new(&loop, &cfg, &hd_broker_metrics(b)->store_commit, why, sizeof(why));
    ck_assert_msg(eng != NULL, "engine: %s", why);
    ck_assert_str_eq(eng->ops->name, "local");
    hd_broker_set_engine(b, eng);
    ck_assert_int_eq(hd_broker_start(b, why, sizeof(why)), 0);
    ck_assert(hd_broker_ready(b));
}

static void restart(void)
{
    shutdown_broker();
    boot();
}

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

static size_t queued(const struct tconn *t)
{
    return t->c.q.count;
}

static size_t history_count(void)
{
    return hd_history_count(hd_broker_history(b), ">", 0, 0);
}

/* Rows of the database matching `where`, read through a connection of our own. The store
 * locks the file exclusively while open (a second heraldd must fail): only when it is
 * closed. */
static int64_t db_count(const char *table, const char *where)
{
    char path[128], sql[256];
    snprintf(path, sizeof(path), "%s/herald.db", dir);
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s WHERE %s", table, where);
    sqlite3 *db;
    ck_assert_int_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    sqlite3_stmt *s;
    ck_assert_int_eq(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_step(s), SQLITE_ROW);
    int64_t n = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    sqlite3_close(db);
    return n;
}

static void db_exec(const char *sql)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/herald.db", dir);
    sqlite3 *db;
    ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    char *err = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &err);
    ck_assert_msg(rc == SQLITE_OK, "%s: %s", sql, err ? err : "?");
    sqlite3_close(db);
}

static void on_sleep(uv_timer_t *t)
{
    (void)t;
}

/* Runs the loop for `ms`. */
static void sleep_loop(unsigned ms)
{
    uv_timer_t t;
    uv_timer_init(&loop, &t);
    uv_timer_start(&t, on_sleep, ms, 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
}

/* ---- publishing ---------------------------------------------------------------------- */

/* What one publish's completion said, and what the world looked like then. */
struct result {
    int calls;
    enum hd_err code; /* HD_ERR_NONE on success */
    uint32_t retry_after;
    struct hd_publish_result res;
    size_t queued_then;    /* in `watch`'s queue when the answer came */
    uint64_t commits_then; /* group commits the store had made then */
    struct tconn *watch;   /* may be NULL */
};

static void on_done(void *arg, const struct hd_error *err, const struct hd_publish_result *res)
{
    struct result *r = arg;
    r->calls++;
    ck_assert((err == NULL) != (res == NULL));
    if (err) {
        r->code = err->code;
        r->retry_after = err->retry_after;
        return;
    }
    r->code = HD_ERR_NONE;
    r->res = *res;
    if (r->watch)
        r->queued_then = queued(r->watch);
    r->commits_then = hd_broker_metrics(b)->store_commit.count;
}

/* Starts a publish; returns the admission's answer (HD_ERR_NONE: `r` will be completed). */
static enum hd_err publish(const char *topic, const char *key, struct result *r)
{
    struct hd_pub p = {
        .topic = topic, .event = "message", .data_json = "{\"x\":1}", .data_len = 7, .key = key};
    struct hd_error err = {0};
    enum hd_err e = hd_broker_publish(b, &who, &p, on_done, r, &err);
    if (e != HD_ERR_NONE) {
        r->code = e;
        r->retry_after = err.retry_after;
        ck_assert_ptr_nonnull(strchr(err.message, ' ')); /* a sentence */
    }
    return e;
}

/* Publishes and runs the loop until answered; returns the answer. */
static struct result publish_wait(const char *topic, const char *key)
{
    struct result r = {0};
    if (publish(topic, key, &r) == HD_ERR_NONE) {
        uv_run(&loop, UV_RUN_DEFAULT);
        ck_assert_int_eq(r.calls, 1);
    }
    return r;
}

/* ---- over HTTP ----------------------------------------------------------------------- */

static struct hd_http_resp *late; /* the asynchronous answer, owned here once it came */
static int late_calls;

static void on_http_done(void *arg, struct hd_http_resp *r)
{
    (void)arg;
    late_calls++;
    ck_assert_ptr_nonnull(r);
    late = r;
}

static void late_free(void)
{
    if (late) {
        hd_http_resp_clear(late);
        free(late);
        late = NULL;
    }
}

/* POSTs `body` to `path` and returns the response's JSON body once the store answered
 * (caller decrefs), with its status in *status. */
static json_t *http_post(const char *path, const char *ctype, const char *key, const char *body,
                         int *status)
{
    struct hd_http_req req = {.method = HD_M_POST,
                              .path = path,
                              .content_type = ctype,
                              .idempotency_key = key,
                              .peer = "192.0.2.1",
                              .content_length = (int64_t)strlen(body)};
    struct hd_http_resp resp = {0};
    late_calls = 0;
    ck_assert_int_eq(hd_api_route(b, &req, &resp), HD_HTTP_READ_BODY);
    int r = hd_api_publish(b, &req, body, strlen(body), &resp, on_http_done, NULL);
    struct hd_http_resp *out = &resp;
    if (r != HD_HTTP_RESPOND) {
        ck_assert_int_eq(r, -1);
        ck_assert_int_eq(late_calls, 0); /* not before the commit */
        uv_run(&loop, UV_RUN_DEFAULT);
        ck_assert_int_eq(late_calls, 1);
        out = late;
    }
    *status = out->status;
    json_error_t e;
    json_t *j = json_loadb(out->body, out->body_len, 0, &e);
    ck_assert_msg(j != NULL, "not JSON: %s", e.text);
    hd_http_resp_clear(&resp);
    late_free();
    return j;
}

static uint64_t id_of(json_t *o)
{
    uint64_t seq = 0;
    const char *id = json_string_value(json_object_get(o, "id"));
    ck_assert_ptr_nonnull(id);
    ck_assert_int_eq(hd_event_id_parse(id, &seq), 0);
    return seq;
}

/* ---- memory store -------------------------------------------------------------------- */

START_TEST(memory_ids_increase_delivered_first)
{
    boot();
    struct tconn *sub = subscriber("m.*");
    struct tconn *other = subscriber("other");
    int64_t before_ms = hd_wall_ms();
    uint64_t prev = 0;
    for (size_t i = 0; i < 50; i++) {
        struct result r = {.watch = sub};
        ck_assert_int_eq(publish("m.a", NULL, &r), HD_ERR_NONE);
        ck_assert_int_eq(r.calls, 1); /* the memory store answers within the call */
        ck_assert_int_eq(r.code, HD_ERR_NONE);
        ck_assert_uint_gt(r.res.seq, prev);
        prev = r.res.seq;
        ck_assert_uint_eq(r.res.receivers, 1);
        ck_assert_uint_eq(r.queued_then, i + 1); /* delivered before the answer */
        ck_assert_int_ge(r.res.time_ms, before_ms);
        ck_assert(!r.res.duplicate);
        struct hd_msg *m = hd_history_get(hd_broker_history(b), r.res.seq);
        ck_assert_ptr_nonnull(m);
        ck_assert_int_eq(m->time_ms, r.res.time_ms);
    }
    /* Ids are microseconds of the wall clock or above: they keep increasing across restarts
     * even though nothing is kept. */
    ck_assert_uint_ge(prev, (uint64_t)before_ms * 1000);
    ck_assert_uint_eq(queued(other), 0);
    ck_assert_uint_eq(history_count(), 50);
    ck_assert_uint_eq(eng->ops->pending(eng), 0);
    ck_assert_uint_eq(hd_broker_publishes_in_flight(b), 0);

    /* The memory store keeps nothing, so a new life starts at the wall clock: only past the
     * last id once the clock is (a real restart takes far longer than these microseconds). */
    uint64_t last = prev;
    for (int i = 0; i < 1000 && (uint64_t)hd_wall_ms() * 1000 <= last; i++)
        sleep_loop(1);
    restart();
    struct result r = {0};
    ck_assert_int_eq(publish("m.a", NULL, &r), HD_ERR_NONE);
    ck_assert_uint_gt(r.res.seq, last);
    ck_assert_uint_eq(history_count(), 1); /* the memory store keeps nothing */
}
END_TEST

START_TEST(memory_drain_refuses)
{
    boot();
    struct tconn *sub = subscriber(">");
    /* The engine refuses once drained, although the broker still admits: -ESHUTDOWN. */
    struct hd_pub p = {.topic = "d", .event = "message", .data_json = "1", .data_len = 1};
    eng->ops->drain(eng);
    struct result r = {0};
    ck_assert_int_eq(eng->ops->publish(eng, &p, NULL, NULL), -ESHUTDOWN);
    ck_assert_int_eq(publish("d", NULL, &r), HD_ERR_UNAVAILABLE);
    ck_assert_int_eq(r.calls, 0);
    ck_assert_uint_eq(r.retry_after, 0); /* shutting down: retrying here will not help */
    int status = 0;
    struct hd_http_req req = {
        .method = HD_M_POST, .path = "/v1/topics/d", .peer = "192.0.2.1", .content_length = 1};
    struct hd_http_resp resp = {0};
    ck_assert_int_eq(hd_api_route(b, &req, &resp), HD_HTTP_READ_BODY);
    ck_assert_int_eq(hd_api_publish(b, &req, "x", 1, &resp, on_http_done, NULL), HD_HTTP_RESPOND);
    status = resp.status;
    ck_assert_int_eq(status, 503);
    ck_assert_ptr_nonnull(strstr(resp.body, "\"code\":\"unavailable\""));
    hd_http_resp_clear(&resp);
    ck_assert_uint_eq(history_count(), 0);
    ck_assert_uint_eq(queued(sub), 0);
    ck_assert_uint_eq(hd_broker_metrics(b)->publish_rejected, 2);
}
END_TEST

/* ---- SQLite store -------------------------------------------------------------------- */

START_TEST(sqlite_ack_after_commit)
{
    use_sqlite();
    boot();
    struct tconn *sub = subscriber("s.*");
    struct result r = {.watch = sub};
    ck_assert_int_eq(publish("s.a", NULL, &r), HD_ERR_NONE);
    /* Nothing is answered or delivered before the commit. */
    ck_assert_int_eq(r.calls, 0);
    ck_assert_uint_eq(queued(sub), 0);
    ck_assert_uint_eq(history_count(), 0);
    ck_assert_uint_eq(eng->ops->pending(eng), 1);
    ck_assert_uint_eq(hd_broker_publishes_in_flight(b), 1);
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(r.calls, 1);
    ck_assert_int_eq(r.code, HD_ERR_NONE);
    ck_assert_uint_eq(r.commits_then, 1); /* committed when answered */
    ck_assert_uint_eq(r.queued_then, 1);
    ck_assert_uint_eq(r.res.receivers, 1);
    ck_assert_uint_eq(eng->ops->pending(eng), 0);
    ck_assert_uint_eq(history_count(), 1);
    ck_assert_uint_ge(hd_broker_metrics(b)->store_commit.count, 1);

    /* Over HTTP the answer comes later, through the completion. */
    int status;
    json_t *j = http_post("/v1/topics/s.b", "application/json", NULL, "{\"n\":2}", &status);
    ck_assert_int_eq(status, 202);
    ck_assert_uint_gt(id_of(j), r.res.seq);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "receivers")), 1);
    json_decref(j);
    /* And so does a batch, in line order. */
    j = http_post("/v1/publish", "application/x-ndjson", NULL,
                  "{\"topic\":\"s.c\",\"data\":1}\n{\"topic\":\"x\",\"data\":2}\n"
                  "{\"topic\":\"s.c\",\"data\":3}\n",
                  &status);
    ck_assert_int_eq(status, 202);
    json_t *ev = json_object_get(j, "events");
    ck_assert_uint_eq(json_array_size(ev), 3);
    ck_assert_uint_lt(id_of(json_array_get(ev, 0)), id_of(json_array_get(ev, 1)));
    ck_assert_uint_lt(id_of(json_array_get(ev, 1)), id_of(json_array_get(ev, 2)));
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(ev, 1), "receivers")), 0);
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(ev, 2), "receivers")), 1);
    json_decref(j);
    ck_assert_uint_eq(queued(sub), 4);
    shutdown_broker();
    ck_assert_int_eq(db_count("events", "1"), 5);
}
END_TEST

/* With durability async the answer comes within the call; the commit follows, and a restart
 * finds the event. */
START_TEST(sqlite_async_answers_at_once)
{
    use_sqlite();
    cfg.history.durability = HD_DURABILITY_ASYNC;
    boot();
    struct tconn *sub = subscriber(">");
    struct result r = {.watch = sub};
    ck_assert_int_eq(publish("a", "k", &r), HD_ERR_NONE);
    ck_assert_int_eq(r.calls, 1);
    ck_assert_int_eq(r.code, HD_ERR_NONE);
    ck_assert_uint_eq(r.queued_then, 1);
    uv_run(&loop, UV_RUN_DEFAULT);
    restart();
    ck_assert_ptr_nonnull(hd_history_get(hd_broker_history(b), r.res.seq));
    struct result again = {0};
    ck_assert_int_eq(publish("a", "k", &again), HD_ERR_NONE);
    ck_assert(again.res.duplicate);
    ck_assert_uint_eq(again.res.seq, r.res.seq);
}
END_TEST

START_TEST(sqlite_restart_recovers)
{
    use_sqlite();
    boot();
    uint64_t seqs[3];
    int64_t times[3];
    static const char *const topics[] = {"r.a", "r.b", "r.a"};
    for (int i = 0; i < 3; i++) {
        struct result r = publish_wait(topics[i], NULL);
        ck_assert_int_eq(r.code, HD_ERR_NONE);
        seqs[i] = r.res.seq;
        times[i] = r.res.time_ms;
    }
    struct hd_msg *first = hd_history_get(hd_broker_history(b), seqs[0]);
    char payload[256];
    snprintf(payload, sizeof(payload), "%.*s", (int)first->len,
             (const char *)hd_msg_payload(first));

    restart();
    ck_assert_uint_eq(history_count(), 3);
    for (int i = 0; i < 3; i++) {
        struct hd_msg *m = hd_history_get(hd_broker_history(b), seqs[i]);
        ck_assert_msg(m != NULL, "event %d not recovered", i);
        ck_assert_str_eq(m->topic, topics[i]);
        ck_assert_int_eq(m->time_ms, times[i]);
    }
    struct hd_msg *m = hd_history_get(hd_broker_history(b), seqs[0]);
    ck_assert_uint_eq(m->len, strlen(payload));
    ck_assert(memcmp(hd_msg_payload(m), payload, m->len) == 0);

    /* Ids continue above the old ones, and the old cursors still name events. */
    struct result r = publish_wait("r.a", NULL);
    ck_assert_uint_gt(r.res.seq, seqs[2]);
    struct hd_since since = {0};
    char id[HD_EVENT_ID_LEN + 1];
    hd_event_id_format(seqs[0], id);
    since = hd_since_parse(id);
    bool gap = true;
    uint64_t after = hd_history_resolve(hd_broker_history(b), "r.a", since, &gap);
    ck_assert(!gap);
    ck_assert_uint_eq(hd_history_count(hd_broker_history(b), "r.a", after, 0), 2);

    restart();
    ck_assert_uint_eq(history_count(), 4);
    struct result r2 = publish_wait("r.a", NULL);
    ck_assert_uint_gt(r2.res.seq, r.res.seq);

    /* Ids stay above the stored ones when the clock is behind them (stepped back an hour). */
    shutdown_broker();
    uint64_t ahead = (uint64_t)hd_wall_ms() * 1000 + 3600ull * 1000000;
    char sql[128];
    snprintf(sql, sizeof(sql), "UPDATE meta SET value = %" PRIu64 " WHERE key = 'last_seq'", ahead);
    db_exec(sql);
    boot();
    struct result r3 = publish_wait("r.a", NULL);
    ck_assert_uint_eq(r3.res.seq, ahead + 1);
}
END_TEST

START_TEST(sqlite_key_survives_restart)
{
    use_sqlite();
    boot();
    int status;
    json_t *a = http_post("/v1/topics/k.a", NULL, "order-1", "first", &status);
    ck_assert_int_eq(status, 202);
    struct result d = publish_wait("k.b", "direct-1");
    ck_assert_int_eq(d.code, HD_ERR_NONE);
    shutdown_broker();
    ck_assert_int_eq(db_count("keys", "1"), 2);
    boot();
    /* The same key over HTTP: the first answer, nothing published. */
    json_t *r = http_post("/v1/topics/k.a", NULL, "order-1", "second", &status);
    ck_assert_int_eq(status, 202);
    ck_assert(json_is_true(json_object_get(r, "duplicate")));
    ck_assert_uint_eq(id_of(r), id_of(a));
    ck_assert_int_eq(json_integer_value(json_object_get(r, "time")),
                     json_integer_value(json_object_get(a, "time")));
    json_decref(a);
    json_decref(r);
    struct result d2 = {0};
    ck_assert_int_eq(publish("k.b", "direct-1", &d2), HD_ERR_NONE);
    ck_assert_int_eq(d2.calls, 1); /* known: answered at once, no commit */
    ck_assert(d2.res.duplicate);
    ck_assert_uint_eq(d2.res.seq, d.res.seq);
    ck_assert_int_eq(d2.res.time_ms, d.res.time_ms);
    ck_assert_uint_eq(history_count(), 2);
    /* A new key still publishes. */
    struct result n = publish_wait("k.b", "direct-2");
    ck_assert(!n.res.duplicate);
    ck_assert_uint_gt(n.res.seq, d.res.seq);
    ck_assert_uint_eq(history_count(), 3);
}
END_TEST

/* A repeat that arrives while the first publish waits for its commit waits with it, and gets
 * its answer; within one batch too. */
START_TEST(sqlite_same_key_in_flight)
{
    use_sqlite();
    boot();
    struct tconn *sub = subscriber(">");
    struct result first = {0}, repeat = {0};
    ck_assert_int_eq(publish("i", "twice", &first), HD_ERR_NONE);
    ck_assert_int_eq(publish("i", "twice", &repeat), HD_ERR_NONE);
    ck_assert_int_eq(first.calls + repeat.calls, 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(first.calls, 1);
    ck_assert_int_eq(repeat.calls, 1);
    ck_assert(!first.res.duplicate);
    ck_assert(repeat.res.duplicate);
    ck_assert_uint_eq(repeat.res.seq, first.res.seq);
    ck_assert_int_eq(repeat.res.time_ms, first.res.time_ms);
    ck_assert_uint_eq(repeat.res.receivers, 1);
    ck_assert_uint_eq(queued(sub), 1);
    ck_assert_uint_eq(history_count(), 1);

    int status;
    json_t *j =
        http_post("/v1/publish", "application/x-ndjson", NULL,
                  "{\"topic\":\"i\",\"key\":\"b\"}\n{\"topic\":\"i\",\"key\":\"b\"}\n", &status);
    ck_assert_int_eq(status, 202);
    json_t *ev = json_object_get(j, "events");
    ck_assert_uint_eq(json_array_size(ev), 2);
    ck_assert_uint_eq(id_of(json_array_get(ev, 0)), id_of(json_array_get(ev, 1)));
    ck_assert_ptr_null(json_object_get(json_array_get(ev, 0), "duplicate"));
    ck_assert(json_is_true(json_object_get(json_array_get(ev, 1), "duplicate")));
    json_decref(j);
    ck_assert_uint_eq(queued(sub), 2);
    ck_assert_uint_eq(history_count(), 2);
}
END_TEST

/* Whether a cursor at `seq` on `pattern` resolves with a gap. */
static bool cursor_gap(const char *pattern, uint64_t seq)
{
    char id[HD_EVENT_ID_LEN + 1];
    hd_event_id_format(seq, id);
    bool gap = false;
    hd_history_resolve(hd_broker_history(b), pattern, hd_since_parse(id), &gap);
    return gap;
}

/*
 * Retention's cut survives a restart (issue 13). With max_events_per_topic 2, four events
 * e1..e4 on one topic leave e3 and e4; a client whose cursor is e1 missed e2, so its cursor
 * resolves with a gap (PROTOCOL.md section 5), before the restart and after it, on the topic
 * and on a wildcard that matches it; e2, the oldest id whose successors are all retained, is a
 * valid cursor. The store records the boundary with the deletion, so it holds across any
 * number of restarts.
 */
START_TEST(sqlite_restart_keeps_retention_gap)
{
    use_sqlite();
    cfg.history.max_events_per_topic = 2;
    boot();
    uint64_t seq[4];
    for (int i = 0; i < 4; i++)
        seq[i] = publish_wait("t", NULL).res.seq;
    uint64_t other = publish_wait("u", NULL).res.seq;
    ck_assert_uint_eq(hd_history_count(hd_broker_history(b), "t", 0, 0), 2);
    ck_assert(cursor_gap("t", seq[0]));
    ck_assert(!cursor_gap("t", seq[1]));
    for (int life = 0; life < 2; life++) {
        restart();
        ck_assert_uint_eq(hd_history_count(hd_broker_history(b), "t", 0, 0), 2);
        ck_assert(!cursor_gap("t", seq[1]));
        ck_assert_msg(cursor_gap("t", seq[0]),
                      "a cursor before a pruned event resolves without gap (life %d)", life);
        ck_assert(cursor_gap(">", seq[0]));
        ck_assert(!cursor_gap(">", seq[1]));
        ck_assert(!cursor_gap("u", seq[0])); /* "u" lost nothing */
        ck_assert(!cursor_gap("t", other));  /* the newest id, of another topic */
    }
    shutdown_broker();
    ck_assert_int_eq(db_count("pruned", "topic = 't'"), 1);
}
END_TEST

/*
 * A limit lowered between two lives cuts history at start, before the writer deletes anything:
 * the skipped events are as gone as pruned ones, and stay so once the writer prunes them.
 */
START_TEST(sqlite_lower_limit_at_restart_gives_gap)
{
    use_sqlite();
    cfg.history.max_events_per_topic = 10;
    boot();
    uint64_t seq[4];
    for (int i = 0; i < 4; i++)
        seq[i] = publish_wait("l", NULL).res.seq;
    ck_assert(!cursor_gap("l", seq[0]));
    shutdown_broker();
    cfg.history.max_events_per_topic = 2;
    boot();
    ck_assert_uint_eq(hd_history_count(hd_broker_history(b), "l", 0, 0), 2);
    ck_assert(cursor_gap("l", seq[0]));
    ck_assert(!cursor_gap("l", seq[1]));
    uint64_t last = publish_wait("l", NULL).res.seq; /* the writer now prunes e1..e3 */
    shutdown_broker();
    ck_assert_int_eq(db_count("events", "topic = 'l'"), 2);
    boot();
    ck_assert(cursor_gap("l", seq[0]));
    ck_assert(cursor_gap("l", seq[1]));
    ck_assert(!cursor_gap("l", seq[2])); /* e3 was pruned, but nothing after it */
    ck_assert(!cursor_gap("l", seq[3]));
    ck_assert(!cursor_gap("l", last));
}
END_TEST

/*
 * Every event of a topic expired while the daemon was down (history.max_age_s): no event of it
 * is recovered, and still a cursor before its last event resolves with a gap, after the
 * start-up skips them and after the writer deleted them. The newest id stays a valid cursor.
 */
START_TEST(sqlite_restart_gap_when_topic_expired)
{
    use_sqlite();
    cfg.history.max_age_s = 3600;
    boot();
    uint64_t g1 = publish_wait("gone", NULL).res.seq;
    uint64_t g2 = publish_wait("gone", NULL).res.seq;
    shutdown_broker();
    /* As if "gone" had been published two hours ago. */
    db_exec("UPDATE events SET time_ms = time_ms - 7200000 WHERE topic = 'gone'");
    boot();
    ck_assert_uint_eq(history_count(), 0);
    ck_assert(cursor_gap("gone", g1));
    ck_assert(!cursor_gap("gone", g2));
    /* The writer's age check, due from its start, deletes them in its first transaction. A
     * fixed wait for it (300 ms) was not always enough on a loaded machine, and the store's
     * file cannot be read while it is open: a commit on another topic is that transaction
     * or a later one, so once it is answered the deletion is committed too. */
    publish_wait("sync", NULL);
    shutdown_broker();
    ck_assert_int_eq(db_count("events", "topic = 'gone'"), 0);
    boot();
    ck_assert(cursor_gap("gone", g1));
    ck_assert(cursor_gap(">", g1));
    ck_assert(!cursor_gap("gone", g2));
    /* A new event in this life does not make the old cursor valid again. */
    uint64_t n = publish_wait("gone", NULL).res.seq;
    ck_assert_uint_gt(n, g2);
    ck_assert(cursor_gap("gone", g1));
    ck_assert(!cursor_gap("gone", g2));
}
END_TEST

START_TEST(sqlite_keys_expire_with_window)
{
    use_sqlite();
    cfg.history.dedupe_window_s = 60;
    boot();
    struct result old = publish_wait("w", "old-key");
    struct result kept = publish_wait("w", "kept-key");
    ck_assert_int_eq(old.code, HD_ERR_NONE);
    ck_assert_int_eq(kept.code, HD_ERR_NONE);
    shutdown_broker();
    /* As if "old-key" had been published 61 s ago (the window is 60 s); its event stays. */
    db_exec("UPDATE keys SET time_ms = time_ms - 61000 WHERE key LIKE '%:old-key'");
    ck_assert_int_eq(db_count("keys", "key LIKE '%:old-key'"), 1); /* the key really is there */
    boot();
    ck_assert_uint_eq(history_count(), 2);
    struct result again = publish_wait("w", "old-key");
    ck_assert_int_eq(again.code, HD_ERR_NONE);
    ck_assert(!again.res.duplicate);
    ck_assert_uint_gt(again.res.seq, kept.res.seq);
    struct result dup = publish_wait("w", "kept-key");
    ck_assert(dup.res.duplicate);
    ck_assert_uint_eq(dup.res.seq, kept.res.seq);
    ck_assert_uint_eq(history_count(), 3);
}
END_TEST

START_TEST(sqlite_window_zero_keeps_no_keys)
{
    use_sqlite();
    cfg.history.dedupe_window_s = 0;
    boot();
    struct result a = publish_wait("z", "k");
    shutdown_broker();
    ck_assert_int_eq(db_count("keys", "1"), 0);
    boot();
    struct result b2 = publish_wait("z", "k");
    ck_assert(!b2.res.duplicate);
    ck_assert_uint_gt(b2.res.seq, a.res.seq);
    ck_assert_uint_eq(history_count(), 2);
}
END_TEST

/*
 * The store is private to the engine and locks its file while open, so its failure is made in
 * the database between two lives: a trigger that aborts every insert into events fails the
 * writer's commits as a full disk would (running as root, a read-only data_dir would not).
 * Recovery within one life is test_store's; here the failure must reach publishers as 503
 * and change nothing, so that a retry with the same key publishes once the disk is back.
 */
START_TEST(sqlite_store_failure_503)
{
    use_sqlite();
    boot();
    ck_assert_int_eq(publish_wait("f", NULL).code, HD_ERR_NONE);
    shutdown_broker();
    db_exec("CREATE TRIGGER fail BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'full'); END");
    boot();
    ck_assert_uint_eq(history_count(), 1);
    struct tconn *sub = subscriber(">");

    struct result r = {.watch = sub}, repeat = {0};
    ck_assert_int_eq(publish("f", "retry-me", &r), HD_ERR_NONE);
    ck_assert_int_eq(publish("f", "retry-me", &repeat), HD_ERR_NONE); /* waits for the first */
    ck_assert_int_eq(r.calls, 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(r.calls, 1);
    ck_assert_int_eq(repeat.calls, 1);
    ck_assert_int_eq(repeat.code, HD_ERR_UNAVAILABLE); /* the first one's failure */
    ck_assert_int_eq(r.code, HD_ERR_UNAVAILABLE);
    ck_assert_int_eq(hd_err_http(r.code), 503);
    ck_assert_uint_eq(r.retry_after, 1);
    ck_assert_uint_eq(queued(sub), 0); /* nothing delivered */
    ck_assert_uint_eq(history_count(), 1);
    ck_assert_uint_eq(eng->ops->pending(eng), 0);
    ck_assert_uint_eq(hd_broker_publishes_in_flight(b), 0);

    /* While failing, an HTTP publish is refused with 503 and Retry-After (at once while the
     * store says it is failing, else when its commit fails). */
    int status;
    json_t *j = http_post("/v1/topics/f", NULL, NULL, "x", &status);
    ck_assert_int_eq(status, 503);
    ck_assert_str_eq(json_string_value(json_object_get(j, "code")), "unavailable");
    json_decref(j);
    /* A batch admitted before its commits failed: 503 naming the first line that failed. */
    j = http_post("/v1/publish", "application/x-ndjson", NULL,
                  "{\"topic\":\"f\"}\n{\"topic\":\"f\"}\n", &status);
    ck_assert_int_eq(status, 503);
    ck_assert_str_eq(json_string_value(json_object_get(j, "code")), "unavailable");
    ck_assert_int_eq(json_integer_value(json_object_get(j, "line")), 1);
    json_decref(j);
    ck_assert_uint_eq(history_count(), 1);
    ck_assert_uint_eq(queued(sub), 0);

    shutdown_broker();
    ck_assert_int_eq(db_count("events", "1"), 1);
    ck_assert_int_eq(db_count("keys", "1"), 0); /* the failed publish's key is not kept */
    db_exec("DROP TRIGGER fail");
    boot();
    sub = subscriber(">");
    struct result ok = {.watch = sub};
    ck_assert_int_eq(publish("f", "retry-me", &ok), HD_ERR_NONE);
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(ok.code, HD_ERR_NONE);
    ck_assert(!ok.res.duplicate);
    ck_assert_uint_eq(ok.queued_then, 1);
    ck_assert_uint_eq(history_count(), 2);
}
END_TEST

START_TEST(sqlite_drain_completes_in_flight)
{
    use_sqlite();
    boot();
    struct result r = {0};
    ck_assert_int_eq(publish("q", NULL, &r), HD_ERR_NONE);
    hd_broker_drain(b);
    struct result late_r = {0};
    ck_assert_int_eq(publish("q", NULL, &late_r), HD_ERR_UNAVAILABLE);
    ck_assert_int_eq(late_r.calls, 0);
    /* What was admitted before the drain is still committed and answered. */
    ck_assert_uint_eq(hd_broker_publishes_in_flight(b), 1);
    eng->ops->stop(eng);
    ck_assert_int_eq(r.calls, 1);
    ck_assert_int_eq(r.code, HD_ERR_NONE);
    ck_assert_int_eq(db_count("events", "1"), 1);
}
END_TEST

static Suite *engine_suite(void)
{
    Suite *s = suite_create("engine_local");
    TCase *tc = tcase_create("memory");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, memory_ids_increase_delivered_first);
    tcase_add_test(tc, memory_drain_refuses);
    suite_add_tcase(s, tc);

    tc = tcase_create("sqlite");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, sqlite_ack_after_commit);
    tcase_add_test(tc, sqlite_async_answers_at_once);
    tcase_add_test(tc, sqlite_restart_recovers);
    tcase_add_test(tc, sqlite_key_survives_restart);
    tcase_add_test(tc, sqlite_same_key_in_flight);
    tcase_add_test(tc, sqlite_keys_expire_with_window);
    tcase_add_test(tc, sqlite_restart_keeps_retention_gap);
    tcase_add_test(tc, sqlite_lower_limit_at_restart_gives_gap);
    tcase_add_test(tc, sqlite_restart_gap_when_topic_expired);
    tcase_add_test(tc, sqlite_window_zero_keeps_no_keys);
    tcase_add_test(tc, sqlite_store_failure_503);
    tcase_add_test(tc, sqlite_drain_completes_in_flight);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(engine_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
