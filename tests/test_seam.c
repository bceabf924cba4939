/* SPDX-License-Identifier: MIT */
/*
 * Check suite for the engine seam (src/engine.h) as the broker sees it, with a scripted
 * engine that does what a networked engine does and the local one never does: acknowledge
 * before or after the event comes back for delivery, acknowledge out of order, hand an
 * event over twice, report a gap, go unready, and answer a replay later. The broker's
 * answers (publish replies with receivers, subscribe ok, gap frames, event order, the
 * no-duplicate boundary between replay and live) must stay right through all of it.
 */
#include <check.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "auth.h"
#include "broker.h"
#include "fake_conn.h"

/* ---- a scripted engine ---------------------------------------------------------------- */

#define MAX_PUBS 64

struct script_pub {
    hd_pub_ack_fn ack;
    void *arg;
    struct hd_msg *msg;
    char *key;
    bool acked;
};

struct script_engine {
    struct hd_engine base;
    uint64_t next_seq;
    struct script_pub pubs[MAX_PUBS];
    size_t n_pubs;
    /* One replay waiting for the test to answer it. */
    hd_replay_fn replay_done;
    void *replay_arg;
    char replay_pattern[64];
    uint64_t replay_after, replay_upto;
    bool has_replay;
};

static struct script_engine *eng;
static struct hd_config cfg;

static int se_start(struct hd_engine *e, char *why, size_t why_len)
{
    (void)why;
    (void)why_len;
    e->sink.recover_base(e->sink.broker, 90); /* older cursors are before history */
    e->sink.ready(e->sink.broker, true);
    return 0;
}

/* Takes the publish and does nothing yet: the test decides when to ack and deliver. */
static int se_publish(struct hd_engine *e, const struct hd_pub *pub, hd_pub_ack_fn ack, void *arg)
{
    struct script_engine *se = (struct script_engine *)e;
    ck_assert_uint_lt(se->n_pubs, MAX_PUBS);
    struct hd_msg *m = hd_msg_new_event(se->next_seq++, 1000 + (int64_t)se->n_pubs, pub->topic,
                                        pub->event, pub->data_json, pub->data_len);
    ck_assert_ptr_nonnull(m);
    se->pubs[se->n_pubs++] = (struct script_pub){
        .ack = ack, .arg = arg, .msg = m, .key = pub->key ? strdup(pub->key) : NULL};
    return 0;
}

static int se_replay(struct hd_engine *e, const char *pattern, uint64_t after, uint64_t upto,
                     hd_replay_fn done, void *arg)
{
    struct script_engine *se = (struct script_engine *)e;
    ck_assert(!se->has_replay);
    se->has_replay = true;
    se->replay_done = done;
    se->replay_arg = arg;
    snprintf(se->replay_pattern, sizeof(se->replay_pattern), "%s", pattern);
    se->replay_after = after;
    se->replay_upto = upto;
    return 0;
}

static void se_noop(struct hd_engine *e)
{
    (void)e;
}

static void se_destroy(struct hd_engine *e)
{
    struct script_engine *se = (struct script_engine *)e;
    for (size_t i = 0; i < se->n_pubs; i++) {
        /* Every test settles what it published: the answers live in its own frame. */
        ck_assert_msg(se->pubs[i].acked, "publish %zu was never acknowledged", i);
        hd_msg_unref(se->pubs[i].msg);
        free(se->pubs[i].key);
    }
    free(e);
}

static const struct hd_engine_ops se_ops = {.name = "script",
                                            .start = se_start,
                                            .publish = se_publish,
                                            .replay = se_replay,
                                            .drain = se_noop,
                                            .stop = se_noop,
                                            .destroy = se_destroy};

static const struct hd_engine_ops se_ops_noreplay = {.name = "script",
                                                     .start = se_start,
                                                     .publish = se_publish,
                                                     .drain = se_noop,
                                                     .stop = se_noop,
                                                     .destroy = se_destroy};

static void ack(size_t i)
{
    struct script_pub *p = &eng->pubs[i];
    p->acked = true;
    p->ack(p->arg, 0, &(struct hd_pub_ack){.seq = p->msg->seq, .time_ms = p->msg->time_ms});
}

static void fail_pub(size_t i, int err)
{
    struct script_pub *p = &eng->pubs[i];
    p->acked = true;
    p->ack(p->arg, err, NULL);
}

static size_t deliver(size_t i)
{
    struct script_pub *p = &eng->pubs[i];
    return eng->base.sink.deliver(eng->base.sink.broker, p->msg, p->key);
}

/* ---- fixture ---------------------------------------------------------------------------- */

static void setup(void)
{
    ck_assert_int_eq(hd_config_defaults(&cfg), 0);
    hd_log_set_level(HD_LOG_ERROR);
    b = hd_broker_new(&cfg);
    ck_assert_ptr_nonnull(b);
    eng = calloc(1, sizeof(*eng));
    ck_assert_ptr_nonnull(eng);
    eng->base.ops = &se_ops;
    eng->next_seq = 100;
    hd_broker_set_engine(b, &eng->base);
    char why[64];
    ck_assert_int_eq(hd_broker_start(b, why, sizeof(why)), 0);
    n_conns = 0;
}

/* HTTP requests go through the authenticator (here: no auth section, everything allowed). */
static void setup_http(void)
{
    setup();
    char why[64];
    struct hd_auth *a = hd_auth_new(&cfg, why, sizeof(why));
    ck_assert_msg(a != NULL, "auth: %s", why);
    hd_broker_set_auth(b, a);
}

static void teardown(void)
{
    hd_broker_free(b);
    b = NULL;
    for (size_t i = 0; i < n_conns; i++)
        free(conns[i]);
    n_conns = 0;
    hd_config_free(&cfg);
}

struct answer {
    int calls;
    enum hd_err err;
    struct hd_publish_result res;
};

static void on_answer(void *arg, const struct hd_error *err, const struct hd_publish_result *res)
{
    struct answer *a = arg;
    a->calls++;
    a->err = err ? err->code : HD_ERR_NONE;
    if (res)
        a->res = *res;
}

static const struct hd_identity anon = {.kind = HD_ID_ANONYMOUS, .everything = true};
static const struct hd_publisher who = {.identity = &anon, .peer = "test"};

static enum hd_err publish_key(const char *topic, const char *key, struct answer *a)
{
    struct hd_pub p = {
        .topic = topic, .event = "message", .data_json = "1", .data_len = 1, .key = key};
    struct hd_error err = {0};
    return hd_broker_publish(b, &who, &p, on_answer, a, &err);
}

static void publish(const char *topic, struct answer *a)
{
    ck_assert_int_eq(publish_key(topic, NULL, a), HD_ERR_NONE);
}

static uint64_t event_seq(struct tconn *t)
{
    json_t *ev = expect_frame(t, "event");
    uint64_t seq;
    ck_assert_int_eq(hd_event_id_parse(jstr(ev, "id"), &seq), 0);
    json_decref(ev);
    return seq;
}

static json_t *subscribe_ok(struct tconn *t, const char *pattern, const char *since)
{
    if (since)
        cmd(t, "{\"op\":\"subscribe\",\"id\":7,\"topic\":\"%s\",\"since\":\"%s\"}", pattern, since);
    else
        cmd(t, "{\"op\":\"subscribe\",\"id\":7,\"topic\":\"%s\"}", pattern);
    return expect_frame(t, "ok");
}

/* ---- acknowledgement and delivery ------------------------------------------------------- */

START_TEST(ack_after_delivery)
{
    struct tconn *t = open_ws();
    json_decref(subscribe_ok(t, "a", NULL));
    struct answer a = {0};
    publish("a", &a);
    ck_assert_int_eq(a.calls, 0); /* nothing from the engine yet */
    ck_assert_uint_eq(deliver(0), 1);
    ck_assert_int_eq(a.calls, 0); /* delivered here, but not acknowledged: no answer */
    ack(0);
    ck_assert_int_eq(a.calls, 1);
    ck_assert_int_eq(a.err, HD_ERR_NONE);
    ck_assert_uint_eq(a.res.seq, 100);
    ck_assert_uint_eq(a.res.receivers, 1);
    ck_assert_int_eq(a.res.time_ms, 1000);
    ck_assert_uint_eq(event_seq(t), 100);
}
END_TEST

START_TEST(ack_before_delivery)
{
    struct tconn *t = open_ws(), *u = open_ws();
    json_decref(subscribe_ok(t, "a", NULL));
    json_decref(subscribe_ok(u, ">", NULL));
    struct answer a = {0};
    publish("a", &a);
    ack(0);
    /* Acknowledged (durable) but not back yet: the answer waits for the receivers. */
    ck_assert_int_eq(a.calls, 0);
    ck_assert_uint_eq(hd_broker_publishes_in_flight(b), 1);
    deliver(0);
    ck_assert_int_eq(a.calls, 1);
    ck_assert_uint_eq(a.res.receivers, 2);
    ck_assert_uint_eq(hd_broker_publishes_in_flight(b), 0);
}
END_TEST

START_TEST(acks_out_of_order)
{
    struct tconn *t = open_ws();
    json_decref(subscribe_ok(t, ">", NULL));
    struct answer a[3] = {{0}};
    publish("a", &a[0]);
    publish("b", &a[1]);
    publish("c", &a[2]);
    ack(2);
    ack(0);
    ck_assert_int_eq(a[0].calls + a[1].calls + a[2].calls, 0);
    deliver(0);
    ck_assert_int_eq(a[0].calls, 1);
    ck_assert_int_eq(a[2].calls, 0); /* 102 is not here yet */
    deliver(1);
    ck_assert_int_eq(a[1].calls, 0); /* delivered, not acknowledged */
    deliver(2);
    ck_assert_int_eq(a[2].calls, 1);
    ck_assert_uint_eq(a[2].res.seq, 102);
    ack(1);
    ck_assert_int_eq(a[1].calls, 1);
    ck_assert_uint_eq(a[1].res.receivers, 1); /* from the delivery that came first */
    ck_assert_uint_eq(event_seq(t), 100);
    ck_assert_uint_eq(event_seq(t), 101);
    ck_assert_uint_eq(event_seq(t), 102);
    expect_empty(t);
}
END_TEST

START_TEST(duplicate_delivery_is_ignored)
{
    struct tconn *t = open_ws();
    json_decref(subscribe_ok(t, ">", NULL));
    struct answer a[2] = {{0}};
    publish("a", &a[0]);
    publish("a", &a[1]);
    deliver(0);
    deliver(1);
    ck_assert_uint_eq(deliver(0), 0); /* an engine that reconnected hands them over again */
    ck_assert_uint_eq(deliver(1), 0);
    ck_assert_uint_eq(event_seq(t), 100);
    ck_assert_uint_eq(event_seq(t), 101);
    expect_empty(t);
    ck_assert_uint_eq(hd_history_events(hd_broker_history(b)), 2);
    ack(0);
    ack(1);
    ck_assert_uint_eq(a[0].res.receivers, 1);
    ck_assert_uint_eq(a[1].res.receivers, 1);
}
END_TEST

START_TEST(engine_failure_refuses)
{
    struct answer a = {0};
    publish("a", &a);
    fail_pub(0, -EAGAIN);
    ck_assert_int_eq(a.calls, 1);
    ck_assert_int_eq(a.err, HD_ERR_UNAVAILABLE);
}
END_TEST

/* ---- gaps and readiness ----------------------------------------------------------------- */

START_TEST(gap_reaches_live_subscribers)
{
    struct tconn *t = open_ws();
    json_decref(subscribe_ok(t, "a.>", NULL));
    struct answer a[3] = {{0}};
    publish("a.x", &a[0]);
    publish("a.x", &a[1]); /* lost in the hole */
    publish("a.x", &a[2]);
    deliver(0);
    ack(0);
    ack(1);
    ck_assert_int_eq(a[1].calls, 0);
    eng->base.sink.gap(eng->base.sink.broker, 102);
    /* The acknowledged event inside the hole exists but never reached this node. */
    ck_assert_int_eq(a[1].calls, 1);
    ck_assert_uint_eq(a[1].res.receivers, 0);
    deliver(2);
    ack(2);
    ck_assert_uint_eq(event_seq(t), 100);
    json_t *g = expect_frame(t, "gap");
    ck_assert_str_eq(jstr(g, "topic"), "a.>");
    char next[HD_EVENT_ID_LEN + 1];
    hd_event_id_format(101, next);
    ck_assert_str_eq(jstr(g, "next"), next);
    json_decref(g);
    ck_assert_uint_eq(event_seq(t), 102);
    /* A cursor from before the hole resolves with a gap; one at its edge does not. */
    struct tconn *u = open_ws();
    char since[HD_EVENT_ID_LEN + 1];
    hd_event_id_format(100, since);
    eng->base.ops = &se_ops_noreplay; /* history is all there is */
    json_t *ok = subscribe_ok(u, "a.>", since);
    ck_assert(json_is_true(json_object_get(ok, "gap")));
    json_decref(ok);
    struct tconn *v = open_ws();
    ok = subscribe_ok(v, "a.>", next);
    ck_assert(json_is_false(json_object_get(ok, "gap")));
    ck_assert_int_eq(jint(ok, "replayed"), 1);
    json_decref(ok);
    eng->base.ops = &se_ops;
}
END_TEST

START_TEST(unready_engine_gets_503)
{
    eng->base.sink.ready(eng->base.sink.broker, false);
    ck_assert(!hd_broker_ready(b));
    struct answer a = {0};
    ck_assert_int_eq(publish_key("a", NULL, &a), HD_ERR_UNAVAILABLE);
    ck_assert_int_eq(a.calls, 0);
    ck_assert_uint_eq(eng->n_pubs, 0);
    eng->base.sink.ready(eng->base.sink.broker, true);
    publish("a", &a);
    ck_assert_uint_eq(eng->n_pubs, 1);
    deliver(0);
    ack(0);
    ck_assert_int_eq(a.calls, 1);
}
END_TEST

/* ---- idempotency keys ------------------------------------------------------------------- */

START_TEST(key_repeats_get_the_first_answer)
{
    struct answer a = {0}, again = {0}, later = {0};
    ck_assert_int_eq(publish_key("a", "k1", &a), HD_ERR_NONE);
    /* A repeat while the first is in flight waits for it, and publishes nothing. */
    ck_assert_int_eq(publish_key("a", "k1", &again), HD_ERR_NONE);
    ck_assert_uint_eq(eng->n_pubs, 1);
    ck_assert_int_eq(again.calls, 0);
    deliver(0);
    ack(0);
    ck_assert_int_eq(a.calls, 1);
    ck_assert(!a.res.duplicate);
    ck_assert_int_eq(again.calls, 1);
    ck_assert(again.res.duplicate);
    ck_assert_uint_eq(again.res.seq, a.res.seq);
    ck_assert_int_eq(again.res.time_ms, a.res.time_ms);
    /* And after it, at once. */
    ck_assert_int_eq(publish_key("a", "k1", &later), HD_ERR_NONE);
    ck_assert_int_eq(later.calls, 1);
    ck_assert(later.res.duplicate);
    ck_assert_uint_eq(later.res.seq, 100);
    ck_assert_uint_eq(eng->n_pubs, 1);
    /* The key the engine was given is scoped to the publisher, not the client's alone. */
    ck_assert_ptr_nonnull(eng->pubs[0].key);
    ck_assert_str_ne(eng->pubs[0].key, "k1");
    ck_assert_ptr_nonnull(strstr(eng->pubs[0].key, "k1"));
}
END_TEST

START_TEST(key_after_failure_publishes_again)
{
    struct answer a = {0}, retry = {0};
    ck_assert_int_eq(publish_key("a", "k2", &a), HD_ERR_NONE);
    fail_pub(0, -ETIMEDOUT);
    ck_assert_int_eq(a.err, HD_ERR_UNAVAILABLE);
    ck_assert_int_eq(publish_key("a", "k2", &retry), HD_ERR_NONE);
    ck_assert_uint_eq(eng->n_pubs, 2); /* the engine dedupes by key if it already had it */
    deliver(1);
    ack(1);
    ck_assert(!retry.res.duplicate);
}
END_TEST

START_TEST(key_known_from_another_node)
{
    /* An event published elsewhere arrives with its key: a retry here is a duplicate. */
    int64_t t = hd_wall_ms() - 1000; /* inside the dedupe window */
    struct hd_msg *m = hd_msg_new_event(500, t, "a", "message", "1", 1);
    const char *scoped = "0:k3"; /* anonymous kind, no name, the client's key */
    eng->base.sink.deliver(eng->base.sink.broker, m, scoped);
    hd_msg_unref(m);
    struct answer a = {0};
    ck_assert_int_eq(publish_key("a", "k3", &a), HD_ERR_NONE);
    ck_assert_int_eq(a.calls, 1);
    ck_assert(a.res.duplicate);
    ck_assert_uint_eq(a.res.seq, 500);
    ck_assert_int_eq(a.res.time_ms, t);
    ck_assert_uint_eq(eng->n_pubs, 0);
}
END_TEST

START_TEST(engine_duplicate_ack)
{
    struct answer a = {0};
    ck_assert_int_eq(publish_key("a", "k4", &a), HD_ERR_NONE);
    struct script_pub *p = &eng->pubs[0];
    p->acked = true;
    p->ack(p->arg, 0, &(struct hd_pub_ack){.seq = 77, .time_ms = 5, .duplicate = true});
    ck_assert_int_eq(a.calls, 1);
    ck_assert(a.res.duplicate);
    ck_assert_uint_eq(a.res.seq, 77);
}
END_TEST

/* ---- replay from the engine ------------------------------------------------------------- */

START_TEST(replay_from_engine_then_live)
{
    /* History holds 100..101; a cursor at 50 is older, so the engine is asked. */
    struct answer a[4] = {{0}};
    for (int i = 0; i < 2; i++) {
        publish("a", &a[i]);
        deliver((size_t)i);
        ack((size_t)i);
    }
    struct tconn *t = open_ws();
    char since[HD_EVENT_ID_LEN + 1];
    hd_event_id_format(50, since);
    cmd(t, "{\"op\":\"subscribe\",\"id\":7,\"topic\":\"a\",\"since\":\"%s\"}", since);
    ck_assert(eng->has_replay);
    ck_assert_uint_eq(eng->replay_after, 50);
    ck_assert_uint_eq(eng->replay_upto, 101);
    expect_empty(t); /* no ok until the engine answers */
    /* Live events meanwhile wait behind the replay. */
    publish("a", &a[2]);
    deliver(2);
    ack(2);
    ck_assert_uint_eq(a[2].res.receivers, 1);
    expect_empty(t);
    struct hd_msg *old[3] = {hd_msg_new_event(60, 1, "a", "message", "0", 1),
                             hd_history_get(hd_broker_history(b), 100),
                             hd_history_get(hd_broker_history(b), 101)};
    eng->has_replay = false;
    eng->replay_done(eng->replay_arg, 0, old, 3, false);
    hd_msg_unref(old[0]);
    json_t *ok = expect_frame(t, "ok");
    ck_assert_int_eq(jint(ok, "replayed"), 3);
    ck_assert(json_is_false(json_object_get(ok, "gap")));
    json_decref(ok);
    ck_assert_uint_eq(event_seq(t), 60);
    ck_assert_uint_eq(event_seq(t), 100);
    ck_assert_uint_eq(event_seq(t), 101);
    ck_assert_uint_eq(event_seq(t), 102);
    expect_empty(t);
    publish("a", &a[3]);
    deliver(3);
    ack(3);
    ck_assert_uint_eq(event_seq(t), 103);
}
END_TEST

START_TEST(replay_failure_falls_back_to_history_with_gap)
{
    struct answer a = {0};
    publish("a", &a);
    deliver(0);
    ack(0);
    struct tconn *t = open_ws();
    cmd(t, "{\"op\":\"subscribe\",\"id\":7,\"topic\":\"a\",\"since\":\"0000000000000005\"}");
    eng->has_replay = false;
    eng->replay_done(eng->replay_arg, -EAGAIN, NULL, 0, false);
    json_t *ok = expect_frame(t, "ok");
    ck_assert(json_is_true(json_object_get(ok, "gap")));
    ck_assert_int_eq(jint(ok, "replayed"), 1);
    json_decref(ok);
    ck_assert_uint_eq(event_seq(t), 100);
}
END_TEST

START_TEST(replay_outlived_by_connection)
{
    struct answer a = {0};
    publish("a", &a);
    deliver(0);
    ack(0);
    struct tconn *t = open_ws();
    cmd(t, "{\"op\":\"subscribe\",\"id\":7,\"topic\":\"a\",\"since\":\"0000000000000005\"}");
    hd_conn_detach(&t->c);
    eng->has_replay = false;
    eng->replay_done(eng->replay_arg, 0, NULL, 0, false); /* must not touch the connection */
}
END_TEST

/* ---- polls the engine replays -------------------------------------------------------- */

struct poll_done {
    int calls;
    struct hd_http_resp *resp;
};

static void on_poll_done(void *arg, struct hd_http_resp *resp)
{
    struct poll_done *d = arg;
    d->calls++;
    d->resp = resp;
}

/* Routes GET /v1/topics/a/events?since=<since><more>; returns what routing said, with the
 * response in *resp (cleared by the caller). */
static enum hd_http_next poll_start(uint64_t since, const char *more, struct hd_http_resp *resp)
{
    char id[HD_EVENT_ID_LEN + 1], query[128];
    hd_event_id_format(since, id);
    snprintf(query, sizeof(query), "since=%s%s", id, more);
    struct hd_http_req req = {
        .method = HD_M_GET, .path = "/v1/topics/a/events", .query = query, .content_length = -1};
    return hd_api_route(b, &req, resp);
}

/* The ids a poll's body lists, its next and gap. */
static size_t poll_ids(const struct hd_http_resp *resp, uint64_t *ids, size_t cap, uint64_t *next,
                       bool *gap)
{
    ck_assert_int_eq(resp->status, 200);
    json_error_t jerr;
    json_t *body = json_loadb(resp->body, resp->body_len, 0, &jerr);
    ck_assert_ptr_nonnull(body);
    json_t *events = json_object_get(body, "events");
    size_t n = json_array_size(events);
    ck_assert_uint_le(n, cap);
    for (size_t i = 0; i < n; i++)
        ck_assert_int_eq(
            hd_event_id_parse(json_string_value(json_object_get(json_array_get(events, i), "id")),
                              &ids[i]),
            0);
    ck_assert_int_eq(hd_event_id_parse(json_string_value(json_object_get(body, "next")), next), 0);
    *gap = json_is_true(json_object_get(body, "gap"));
    json_decref(body);
    return n;
}

static void history_of_two(void)
{
    struct answer a[2] = {{0}};
    for (int i = 0; i < 2; i++) {
        publish("a", &a[i]);
        deliver((size_t)i);
        ack((size_t)i);
    }
}

static void poll_old_cursor(const char *more, struct poll_done *d)
{
    history_of_two(); /* history holds 100..101 */
    struct hd_http_resp resp = {0};
    char id[HD_EVENT_ID_LEN + 1], query[128];
    hd_event_id_format(50, id);
    snprintf(query, sizeof(query), "since=%s%s", id, more);
    struct hd_http_req req = {
        .method = HD_M_GET, .path = "/v1/topics/a/events", .query = query, .content_length = -1};
    ck_assert_int_eq(hd_api_route(b, &req, &resp), HD_HTTP_READ_BODY);
    ck_assert_int_eq(hd_api_publish(b, &req, "", 0, &resp, on_poll_done, d), -1);
    hd_http_resp_clear(&resp); /* the connection's own response: the answer comes in d */
    ck_assert(eng->has_replay);
    ck_assert_str_eq(eng->replay_pattern, "a");
    ck_assert_uint_eq(eng->replay_after, 50);
    ck_assert_uint_eq(eng->replay_upto, 101);
    ck_assert_int_eq(d->calls, 0);
}

static void answer_replay(int err, bool gap)
{
    struct hd_msg *old[4] = {hd_msg_new_event(40, 1, "a", "message", "0", 1), /* before since */
                             hd_msg_new_event(60, 1, "a", "message", "0", 1),
                             hd_history_get(hd_broker_history(b), 100),
                             hd_history_get(hd_broker_history(b), 101)};
    eng->has_replay = false;
    eng->replay_done(eng->replay_arg, err, err ? NULL : old, err ? 0 : 4, gap);
    hd_msg_unref(old[0]);
    hd_msg_unref(old[1]);
}

static void poll_done_clear(struct poll_done *d)
{
    hd_http_resp_clear(d->resp);
    free(d->resp);
}

START_TEST(poll_of_old_cursor_replays_from_engine)
{
    struct poll_done d = {0};
    poll_old_cursor("", &d);
    answer_replay(0, false);
    ck_assert_int_eq(d.calls, 1);
    uint64_t ids[8], next;
    bool gap;
    size_t n = poll_ids(d.resp, ids, 8, &next, &gap);
    ck_assert_uint_eq(n, 3);
    ck_assert_uint_eq(ids[0], 60);
    ck_assert_uint_eq(ids[1], 100);
    ck_assert_uint_eq(ids[2], 101);
    ck_assert_uint_eq(next, 101);
    ck_assert(!gap);
    poll_done_clear(&d);
}
END_TEST

START_TEST(poll_replay_pages_with_limit)
{
    struct poll_done d = {0};
    poll_old_cursor("&limit=2", &d);
    answer_replay(0, true); /* the engine lost some too: the poll says so */
    uint64_t ids[8], next;
    bool gap;
    size_t n = poll_ids(d.resp, ids, 8, &next, &gap);
    ck_assert_uint_eq(n, 2);
    ck_assert_uint_eq(ids[0], 60);
    ck_assert_uint_eq(ids[1], 100);
    ck_assert_uint_eq(next, 100); /* the page ends at its last event, not at history's end */
    ck_assert(gap);
    poll_done_clear(&d);
}
END_TEST

START_TEST(poll_replay_failure_answers_history_with_gap)
{
    struct poll_done d = {0};
    poll_old_cursor("", &d);
    answer_replay(-EAGAIN, false);
    uint64_t ids[8], next;
    bool gap;
    size_t n = poll_ids(d.resp, ids, 8, &next, &gap);
    ck_assert_uint_eq(n, 2);
    ck_assert_uint_eq(ids[0], 100);
    ck_assert_uint_eq(ids[1], 101);
    ck_assert(gap);
    poll_done_clear(&d);
}
END_TEST

START_TEST(poll_within_history_does_not_ask_the_engine)
{
    history_of_two();
    struct hd_http_resp resp = {0};
    ck_assert_int_eq(poll_start(100, "", &resp), HD_HTTP_RESPOND);
    ck_assert(!eng->has_replay);
    uint64_t ids[8], next;
    bool gap;
    ck_assert_uint_eq(poll_ids(&resp, ids, 8, &next, &gap), 1);
    ck_assert_uint_eq(ids[0], 101);
    ck_assert(!gap);
    hd_http_resp_clear(&resp);
}
END_TEST

START_TEST(poll_without_engine_replay_is_a_gap)
{
    eng->base.ops = &se_ops_noreplay; /* history is all there is */
    history_of_two();
    struct hd_http_resp resp = {0};
    ck_assert_int_eq(poll_start(50, "", &resp), HD_HTTP_RESPOND);
    uint64_t ids[8], next;
    bool gap;
    ck_assert_uint_eq(poll_ids(&resp, ids, 8, &next, &gap), 2);
    ck_assert(gap);
    hd_http_resp_clear(&resp);
}
END_TEST

static Suite *seam_suite(void)
{
    Suite *s = suite_create("seam");
    TCase *tc = tcase_create("ack");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, ack_after_delivery);
    tcase_add_test(tc, ack_before_delivery);
    tcase_add_test(tc, acks_out_of_order);
    tcase_add_test(tc, duplicate_delivery_is_ignored);
    tcase_add_test(tc, engine_failure_refuses);
    suite_add_tcase(s, tc);
    tc = tcase_create("gap");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, gap_reaches_live_subscribers);
    tcase_add_test(tc, unready_engine_gets_503);
    suite_add_tcase(s, tc);
    tc = tcase_create("keys");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, key_repeats_get_the_first_answer);
    tcase_add_test(tc, key_after_failure_publishes_again);
    tcase_add_test(tc, key_known_from_another_node);
    tcase_add_test(tc, engine_duplicate_ack);
    suite_add_tcase(s, tc);
    tc = tcase_create("replay");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, replay_from_engine_then_live);
    tcase_add_test(tc, replay_failure_falls_back_to_history_with_gap);
    tcase_add_test(tc, replay_outlived_by_connection);
    suite_add_tcase(s, tc);
    tc = tcase_create("poll");
    tcase_add_checked_fixture(tc, setup_http, teardown);
    tcase_add_test(tc, poll_of_old_cursor_replays_from_engine);
    tcase_add_test(tc, poll_replay_pages_with_limit);
    tcase_add_test(tc, poll_replay_failure_answers_history_with_gap);
    tcase_add_test(tc, poll_within_history_does_not_ask_the_engine);
    tcase_add_test(tc, poll_without_engine_replay_is_a_gap);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(seam_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
