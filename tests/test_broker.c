/* SPDX-License-Identifier: MIT */
/*
 * Check suite for the broker (src/broker.c) as a WebSocket client sees it, without sockets:
 * a fake transport records write requests and close codes, commands go in through
 * hd_conn_on_text and frames come out of the connection's queue. A tiny in-memory engine
 * stands in for engine_local.c (which needs the SQLite store) and assigns increasing ids.
 * Covers replies, fan-out once per connection, replay without duplicates, the protocol
 * error and subscription limits, slow consumers, drain, and delivery status counters.
 */
#include "broker.h"
#include "fake_conn.h"

#include <check.h>
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- a tiny engine ---------------------------------------------------------------------- */

struct test_engine {
    struct hd_engine base;
    uint64_t next_seq;
    bool drained;
    size_t last_receivers; /* what the broker's deliver returned for the last event */
};

static int te_start(struct hd_engine *e, char *why, size_t why_len)
{
    (void)why;
    (void)why_len;
    e->sink.recover_base(e->sink.broker, 1);
    e->sink.ready(e->sink.broker, true);
    return 0;
}

/* Delivers, then acknowledges, at once: what engine_local.c does with the memory store. */
static int te_publish(struct hd_engine *e, const struct hd_pub *pub, hd_pub_ack_fn ack, void *arg)
{
    struct test_engine *te = (struct test_engine *)e;
    if (te->drained)
        return -ESHUTDOWN;
    struct hd_msg *m = hd_msg_new_event(te->next_seq++, hd_wall_ms(), pub->topic, pub->event,
                                        pub->data_json, pub->data_len);
    if (!m)
        return -ENOMEM;
    m->accept_ns = hd_now_ns();
    te->last_receivers = e->sink.deliver(e->sink.broker, m, pub->key);
    ack(arg, 0, &(struct hd_pub_ack){.seq = m->seq, .time_ms = m->time_ms});
    hd_msg_unref(m);
    return 0;
}

static void te_drain(struct hd_engine *e)
{
    ((struct test_engine *)e)->drained = true;
}
static void te_stop(struct hd_engine *e)
{
    (void)e;
}
static void te_destroy(struct hd_engine *e)
{
    free(e);
}

static const struct hd_engine_ops te_ops = {.name = "test",
                                            .start = te_start,
                                            .publish = te_publish,
                                            .drain = te_drain,
                                            .stop = te_stop,
                                            .destroy = te_destroy};

/* ---- fixture ---------------------------------------------------------------------------- */

static struct hd_config cfg, cfg2; /* cfg2: a reloaded config */
static struct test_engine *eng;

static void setup(void)
{
    ck_assert_int_eq(hd_config_defaults(&cfg), 0);
    hd_log_set_level(HD_LOG_ERROR); /* keep the expected warnings out of the test output */
    b = NULL;
    n_conns = 0;
}

static void teardown(void)
{
    hd_broker_free(b); /* detaches what is still attached */
    b = NULL;
    hd_config_free(&cfg2); /* when a test that reloads stopped early */
    for (size_t i = 0; i < n_conns; i++) {
        ck_assert_int_le(conns[i]->closes, 1); /* the broker closes at most once */
        free(conns[i]);
    }
    n_conns = 0;
    hd_config_free(&cfg);
}

/* Creates the broker over cfg as the test adjusted it. */
static void boot(void)
{
    b = hd_broker_new(&cfg);
    ck_assert_ptr_nonnull(b);
    eng = calloc(1, sizeof(*eng));
    ck_assert_ptr_nonnull(eng);
    eng->base.ops = &te_ops;
    eng->next_seq = 1;
    hd_broker_set_engine(b, &eng->base);
    char why[64];
    ck_assert_int_eq(hd_broker_start(b, why, sizeof(why)), 0);
}

/* Subscribes over the WebSocket and checks the ok reply; returns `replayed`. */
static int64_t subscribe(struct tconn *t, const char *pattern, const char *since, bool *gap)
{
    static int64_t id = 100;
    id++;
    if (since)
        cmd(t, "{\"op\":\"subscribe\",\"id\":%lld,\"topic\":\"%s\",\"since\":\"%s\"}",
            (long long)id, pattern, since);
    else
        cmd(t, "{\"op\":\"subscribe\",\"id\":%lld,\"topic\":\"%s\"}", (long long)id, pattern);
    json_t *ok = expect_frame(t, "ok");
    ck_assert_int_eq(jint(ok, "id"), id);
    ck_assert_str_eq(jstr(ok, "topic"), pattern);
    int64_t replayed = jint(ok, "replayed");
    json_t *g = json_object_get(ok, "gap");
    ck_assert(json_is_boolean(g));
    if (gap)
        *gap = json_is_true(g);
    json_decref(ok);
    return replayed;
}

struct pub_result {
    bool done;
    enum hd_err err;
    struct hd_publish_result res;
};

static void pub_done(void *arg, const struct hd_error *err, const struct hd_publish_result *res)
{
    struct pub_result *r = arg;
    r->done = true;
    r->err = err ? err->code : HD_ERR_NONE;
    if (res)
        r->res = *res;
}

static const struct hd_identity anon = {.kind = HD_ID_ANONYMOUS, .everything = true};
static const struct hd_publisher anon_pub = {.identity = &anon, .peer = "test"};

/* Publishes as the HTTP API would; returns the event (a reference the caller drops). */
static struct hd_msg *publish(const char *topic, const char *data)
{
    struct hd_pub p = {
        .topic = topic, .event = "message", .data_json = data, .data_len = strlen(data)};
    struct pub_result r = {0};
    struct hd_error err;
    ck_assert_int_eq(hd_broker_publish(b, &anon_pub, &p, pub_done, &r, &err), HD_ERR_NONE);
    ck_assert(r.done);
    ck_assert_int_eq(r.err, HD_ERR_NONE);
    struct hd_msg *m = hd_history_get(hd_broker_history(b), r.res.seq);
    ck_assert_ptr_nonnull(m);
    ck_assert_uint_eq(m->receivers, r.res.receivers);
    return hd_msg_ref(m);
}

static void publish_drop(const char *topic, const char *data)
{
    hd_msg_unref(publish(topic, data));
}

/* Expects the next frame to be the event with this seq and topic. */
static void expect_event(struct tconn *t, uint64_t seq, const char *topic)
{
    json_t *ev = expect_frame(t, "event");
    char id[HD_EVENT_ID_LEN + 1];
    hd_event_id_format(seq, id);
    ck_assert_str_eq(jstr(ev, "id"), id);
    ck_assert_str_eq(jstr(ev, "topic"), topic);
    json_decref(ev);
}

static void id_of(uint64_t seq, char out[HD_EVENT_ID_LEN + 1])
{
    hd_event_id_format(seq, out);
}

/* ---- tests ------------------------------------------------------------------------------ */

START_TEST(welcome_and_attach)
{
    cfg.heartbeat_s = 17;
    cfg.limits.max_event_bytes = 4096;
    boot();
    struct tconn *t = open_kind(HD_CONN_WS);
    ck_assert_int_eq(t->want_writes, 1);
    json_t *w = expect_frame(t, "welcome");
    ck_assert_str_eq(jstr(w, "server"), "heraldd/" HERALD_VERSION);
    ck_assert_int_eq(jint(w, "heartbeat"), 17);
    ck_assert_int_eq(jint(w, "max_event_bytes"), 4096);
    ck_assert_uint_gt(strlen(jstr(w, "session")), 0);
    json_decref(w);
    expect_empty(t);
    struct tconn *t2 = open_ws();
    ck_assert_uint_eq(hd_broker_connections(b), 2);
    ck_assert_int_eq(hd_broker_metrics(b)->connections, 2);
    /* An SSE stream gets no welcome frame and is not a WebSocket connection. */
    struct tconn *s = open_kind(HD_CONN_SSE);
    expect_empty(s);
    ck_assert_int_eq(hd_broker_metrics(b)->connections, 2);
    ck_assert_uint_eq(hd_broker_connections(b), 3);
    (void)t2;
}
END_TEST

START_TEST(want_write_once_until_writable)
{
    boot();
    struct tconn *t = open_kind(HD_CONN_WS);
    ck_assert_int_eq(t->want_writes, 1);
    cmd(t, "{\"op\":\"ping\",\"id\":4}");
    ck_assert_int_eq(t->want_writes, 1); /* already pending */
    hd_conn_writable(&t->c);
    hd_conn_wrote(&t->c); /* the welcome */
    cmd(t, "{\"op\":\"ping\",\"id\":5}");
    ck_assert_int_eq(t->want_writes, 2);
    json_t *p = expect_frame(t, "pong");
    ck_assert_int_eq(jint(p, "id"), 4);
    json_decref(p);
    p = expect_frame(t, "pong");
    ck_assert_int_eq(jint(p, "id"), 5);
    json_decref(p);
}
END_TEST

START_TEST(subscribe_reply)
{
    boot();
    struct tconn *t = open_ws();
    cmd(t, "{\"op\":\"subscribe\",\"id\":1,\"topic\":\"chat.>\"}");
    json_t *ok = expect_frame(t, "ok");
    ck_assert_int_eq(jint(ok, "id"), 1);
    ck_assert_str_eq(jstr(ok, "topic"), "chat.>");
    ck_assert_int_eq(jint(ok, "replayed"), 0);
    ck_assert(json_is_false(json_object_get(ok, "gap")));
    json_decref(ok);
    expect_empty(t);
    ck_assert_int_eq(hd_broker_metrics(b)->subscriptions, 1);
    /* Subscribing again to the same pattern is idempotent. */
    ck_assert_int_eq(subscribe(t, "chat.>", NULL, NULL), 0);
    ck_assert_int_eq(hd_broker_metrics(b)->subscriptions, 1);
    struct hd_msg *m = publish("chat.room1", "1");
    ck_assert_uint_eq(eng->last_receivers, 1);
    expect_event(t, m->seq, "chat.room1");
    expect_empty(t);
    hd_msg_unref(m);
}
END_TEST

START_TEST(publish_over_ws)
{
    boot();
    struct tconn *p = open_ws(), *s1 = open_ws(), *s2 = open_ws();
    subscribe(s1, "chat.>", NULL, NULL);
    subscribe(s2, "chat.room1", NULL, NULL);
    cmd(p, "{\"op\":\"publish\",\"id\":3,\"topic\":\"chat.room1\",\"event\":\"login\","
           "\"data\":{\"from\":\"alice\",\"n\":[1,2]}}");
    json_t *ok = expect_frame(p, "ok");
    ck_assert_int_eq(jint(ok, "id"), 3);
    ck_assert_int_eq(jint(ok, "receivers"), 2);
    const char *eid = jstr(ok, "event_id");
    ck_assert_uint_eq(strlen(eid), HD_EVENT_ID_LEN);
    expect_empty(p); /* the publisher did not subscribe */
    struct tconn *subs[] = {s1, s2};
    for (int i = 0; i < 2; i++) {
        json_t *ev = expect_frame(subs[i], "event");
        ck_assert_str_eq(jstr(ev, "id"), eid);
        ck_assert_str_eq(jstr(ev, "topic"), "chat.room1");
        ck_assert_str_eq(jstr(ev, "event"), "login");
        ck_assert(json_is_integer(json_object_get(ev, "time")));
        json_t *want = json_loads("{\"from\":\"alice\",\"n\":[1,2]}", 0, NULL);
        ck_assert(json_equal(json_object_get(ev, "data"), want));
        json_decref(want);
        json_decref(ev);
        expect_empty(subs[i]);
    }
    /* The event is in history under that id. */
    uint64_t seq;
    ck_assert_int_eq(hd_event_id_parse(eid, &seq), 0);
    json_decref(ok);
    ck_assert_ptr_nonnull(hd_history_get(hd_broker_history(b), seq));
    ck_assert_uint_eq(hd_broker_metrics(b)->events_published, 1);
}
END_TEST

START_TEST(ping_and_errors)
{
    boot();
    struct tconn *t = open_ws();
    cmd(t, "{\"op\":\"ping\",\"id\":4}");
    json_t *j = expect_frame(t, "pong");
    ck_assert_int_eq(jint(j, "id"), 4);
    json_decref(j);
    /* Unparseable: id present and null. */
    cmd(t, "{not json");
    j = expect_frame(t, "error");
    ck_assert(json_is_null(json_object_get(j, "id")));
    ck_assert_str_eq(jstr(j, "code"), "bad_request");
    ck_assert_uint_gt(strlen(jstr(j, "message")), 0);
    json_decref(j);
    struct {
        const char *frame, *code;
    } cases[] = {
        {"{\"op\":\"fly\",\"id\":7}", "unknown_op"},
        {"{\"op\":\"subscribe\",\"id\":7,\"topic\":\"a..b\"}", "invalid_topic"},
        {"{\"op\":\"publish\",\"id\":7,\"topic\":\"chat.*\",\"data\":1}", "invalid_topic"},
        {"{\"op\":\"publish\",\"id\":7,\"topic\":\"$sys.x\",\"data\":1}", "forbidden"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        cmd(t, "%s", cases[i].frame);
        j = expect_frame(t, "error");
        ck_assert_int_eq(jint(j, "id"), 7);
        ck_assert_str_eq(jstr(j, "code"), cases[i].code);
        json_decref(j);
    }
    expect_empty(t);
    ck_assert_int_eq(t->closes, 0);
}
END_TEST

START_TEST(publish_too_large)
{
    cfg.limits.max_event_bytes = 64;
    boot();
    struct tconn *p = open_ws(), *s = open_ws();
    subscribe(s, ">", NULL, NULL);
    char big[200];
    memset(big, 'x', 100);
    big[100] = '\0';
    cmd(p, "{\"op\":\"publish\",\"id\":9,\"topic\":\"a\",\"data\":\"%s\"}", big);
    json_t *j = expect_frame(p, "error");
    ck_assert_str_eq(jstr(j, "code"), "too_large");
    ck_assert_int_eq(jint(j, "id"), 9);
    json_decref(j);
    expect_empty(s); /* nothing happened */
    ck_assert_uint_eq(hd_history_events(hd_broker_history(b)), 0);
}
END_TEST

START_TEST(publish_rate_limited)
{
    cfg.limits.publish_rate = 1;
    cfg.limits.publish_burst = 2;
    boot();
    struct tconn *p = open_ws(), *s = open_ws();
    subscribe(s, ">", NULL, NULL);
    for (int i = 1; i <= 2; i++) {
        cmd(p, "{\"op\":\"publish\",\"id\":%d,\"topic\":\"a\",\"data\":%d}", i, i);
        json_decref(expect_frame(p, "ok"));
    }
    /* The burst is spent; at 1/s the next token is most of a second away. */
    cmd(p, "{\"op\":\"publish\",\"id\":3,\"topic\":\"a\",\"data\":3}");
    json_t *j = expect_frame(p, "error");
    ck_assert_str_eq(jstr(j, "code"), "rate_limited");
    ck_assert_int_eq(jint(j, "id"), 3);
    json_decref(j);
    json_decref(expect_frame(s, "event"));
    json_decref(expect_frame(s, "event"));
    expect_empty(s); /* the refused publish changed nothing */
    ck_assert_uint_eq(hd_history_events(hd_broker_history(b)), 2);
    /* The bucket is per connection. */
    struct tconn *q = open_ws();
    cmd(q, "{\"op\":\"publish\",\"id\":1,\"topic\":\"a\",\"data\":1}");
    json_decref(expect_frame(q, "ok"));
}
END_TEST

START_TEST(reload_applies_queue_limit)
{
    boot();
    struct tconn *t = open_ws();
    subscribe(t, ">", NULL, NULL);
    for (int i = 0; i < 20; i++)
        publish_drop("a", "\"0123456789012345678901234567890123456789\"");
    ck_assert_int_eq(t->closes, 0); /* 1 MiB by default */
    for (int i = 0; i < 20; i++)
        json_decref(expect_frame(t, "event"));
    ck_assert_int_eq(hd_config_defaults(&cfg2), 0);
    cfg2.limits.max_queue_bytes = 500;
    cfg2.history.max_events_per_topic = 5;
    hd_broker_reload(b, &cfg2);
    ck_assert_ptr_eq(hd_broker_config(b), &cfg2);
    for (int i = 0; i < 20 && !t->closes; i++)
        publish_drop("a", "\"0123456789012345678901234567890123456789\"");
    ck_assert_int_eq(t->closes, 1);
    ck_assert_int_eq(t->close_code, HD_CLOSE_SLOW_CONSUMER);
    ck_assert_uint_le(hd_history_count(hd_broker_history(b), "a", 0, 0), 5);
    hd_broker_free(b); /* before cfg2 goes */
    b = NULL;
    hd_config_free(&cfg2);
}
END_TEST

START_TEST(fanout_once_per_connection)
{
    boot();
    struct tconn *a = open_ws(), *c = open_ws(), *other = open_ws();
    subscribe(a, "chat.>", NULL, NULL);
    subscribe(c, "chat.*", NULL, NULL);
    subscribe(c, "chat.room1", NULL, NULL); /* overlaps chat.* */
    subscribe(c, ">", NULL, NULL);          /* and again */
    subscribe(other, "logins", NULL, NULL);
    struct hd_msg *m = publish("chat.room1", "{\"x\":1}");
    ck_assert_uint_eq(eng->last_receivers, 2);
    ck_assert_uint_eq(m->queued, 2);
    expect_event(a, m->seq, "chat.room1");
    expect_empty(a);
    expect_event(c, m->seq, "chat.room1");
    expect_empty(c);
    expect_empty(other);
    /* Every receiver shares the one message. */
    ck_assert_uint_eq(m->written, 2);
    hd_msg_unref(m);
}
END_TEST

START_TEST(unsubscribe_stops_delivery)
{
    boot();
    struct tconn *t = open_ws(), *u = open_ws();
    subscribe(t, "chat.>", NULL, NULL);
    subscribe(u, "chat.>", NULL, NULL);
    subscribe(u, "chat.room1", NULL, NULL);
    cmd(t, "{\"op\":\"unsubscribe\",\"id\":2,\"topic\":\"chat.>\"}");
    json_t *ok = expect_frame(t, "ok");
    ck_assert_int_eq(jint(ok, "id"), 2);
    json_decref(ok);
    cmd(u, "{\"op\":\"unsubscribe\",\"id\":3,\"topic\":\"chat.>\"}");
    json_decref(expect_frame(u, "ok"));
    ck_assert_int_eq(hd_broker_metrics(b)->subscriptions, 1);
    struct hd_msg *m1 = publish("chat.room1", "1");
    struct hd_msg *m2 = publish("chat.room2", "2");
    expect_empty(t);
    expect_event(u, m1->seq, "chat.room1"); /* still subscribed to chat.room1 */
    expect_empty(u);
    /* Unsubscribing from something never subscribed is fine too. */
    cmd(t, "{\"op\":\"unsubscribe\",\"id\":4,\"topic\":\"x.y\"}");
    json_decref(expect_frame(t, "ok"));
    hd_msg_unref(m1);
    hd_msg_unref(m2);
}
END_TEST

START_TEST(replay_since)
{
    boot();
    struct hd_msg *e1 = publish("a.x", "1");
    struct hd_msg *e2 = publish("b.z", "2");
    struct hd_msg *e3 = publish("a.y", "3");
    struct hd_msg *e4 = publish("a.x", "4");
    struct tconn *t = open_ws();
    bool gap = true;
    ck_assert_int_eq(subscribe(t, "a.>", "all", &gap), 3);
    ck_assert(!gap);
    expect_event(t, e1->seq, "a.x");
    expect_event(t, e3->seq, "a.y");
    expect_event(t, e4->seq, "a.x");
    expect_empty(t);
    /* Then live. */
    struct hd_msg *e5 = publish("a.z", "5");
    expect_event(t, e5->seq, "a.z");
    expect_empty(t);

    struct tconn *u = open_ws();
    char id[HD_EVENT_ID_LEN + 1];
    id_of(e1->seq, id);
    ck_assert_int_eq(subscribe(u, "a.x", id, &gap), 1);
    ck_assert(!gap);
    expect_event(u, e4->seq, "a.x");
    expect_empty(u);

    struct tconn *v = open_ws();
    ck_assert_int_eq(subscribe(v, ">", "latest", &gap), 0);
    ck_assert(!gap);
    expect_empty(v);
    ck_assert_uint_eq(e1->queued, 1); /* replays count as queued too */
    hd_msg_unref(e1);
    hd_msg_unref(e2);
    hd_msg_unref(e3);
    hd_msg_unref(e4);
    hd_msg_unref(e5);
}
END_TEST

START_TEST(replay_no_duplicates)
{
    boot();
    struct tconn *t = open_ws();
    subscribe(t, "a.>", NULL, NULL);
    struct hd_msg *m = publish("a.x", "1");
    expect_event(t, m->seq, "a.x");
    bool gap = true;
    /* a.x already arrived through a.>: nothing to replay. */
    ck_assert_int_eq(subscribe(t, "a.x", "all", &gap), 0);
    ck_assert(!gap);
    expect_empty(t);
    /* And a new a.x event arrives once, not once per pattern. */
    struct hd_msg *m2 = publish("a.x", "2");
    expect_event(t, m2->seq, "a.x");
    expect_empty(t);
    hd_msg_unref(m);
    hd_msg_unref(m2);
}
END_TEST

START_TEST(replay_fills_only_what_was_missed)
{
    boot();
    struct hd_msg *e0 = publish("a.x", "0"); /* before any subscription */
    struct tconn *t = open_ws();
    subscribe(t, "a.x", NULL, NULL);
    struct hd_msg *e1 = publish("a.x", "1"); /* arrives live */
    struct hd_msg *e2 = publish("a.y", "2"); /* not subscribed yet */
    expect_event(t, e1->seq, "a.x");
    expect_empty(t);
    bool gap = true;
    /* e0 never arrived and e2 did not match: both are replayed, e1 is not. */
    ck_assert_int_eq(subscribe(t, "a.>", "all", &gap), 2);
    ck_assert(!gap);
    expect_event(t, e0->seq, "a.x");
    expect_event(t, e2->seq, "a.y");
    expect_empty(t);
    struct hd_msg *e3 = publish("a.x", "3");
    expect_event(t, e3->seq, "a.x");
    expect_empty(t);
    hd_msg_unref(e0);
    hd_msg_unref(e1);
    hd_msg_unref(e2);
    hd_msg_unref(e3);
}
END_TEST

START_TEST(replay_gap)
{
    cfg.history.max_events_per_topic = 2;
    boot();
    struct hd_msg *e[4];
    for (int i = 0; i < 4; i++)
        e[i] = publish("a", "0");
    struct tconn *t = open_ws();
    bool gap = false;
    /* Malformed: a gap, and everything retained is replayed. */
    ck_assert_int_eq(subscribe(t, "a", "not-an-id", &gap), 2);
    ck_assert(gap);
    expect_event(t, e[2]->seq, "a");
    expect_event(t, e[3]->seq, "a");
    expect_empty(t);
    /* An id older than what the topic retains: also a gap. */
    struct tconn *u = open_ws();
    char id[HD_EVENT_ID_LEN + 1];
    id_of(e[0]->seq, id);
    gap = false;
    ck_assert_int_eq(subscribe(u, "a", id, &gap), 2);
    ck_assert(gap);
    /* The newest pruned id: no gap. */
    struct tconn *v = open_ws();
    id_of(e[1]->seq, id);
    ck_assert_int_eq(subscribe(v, "a", id, &gap), 2);
    ck_assert(!gap);
    for (int i = 0; i < 4; i++)
        hd_msg_unref(e[i]);
}
END_TEST

START_TEST(sse_subscribe_replays)
{
    boot();
    struct hd_msg *e1 = publish("a", "1");
    struct tconn *s = open_kind(HD_CONN_SSE);
    bool gap = true;
    struct hd_error err;
    ck_assert_int_eq(hd_conn_subscribe(&s->c, "a", "all", &gap, &err), 0);
    ck_assert(!gap);
    expect_event(s, e1->seq, "a");
    expect_empty(s);
    struct hd_msg *e2 = publish("a", "2");
    expect_event(s, e2->seq, "a");
    hd_msg_unref(e1);
    hd_msg_unref(e2);
}
END_TEST

START_TEST(too_many_errors_closes)
{
    boot();
    struct tconn *t = open_ws();
    for (int i = 0; i < 99; i++)
        cmd(t, i % 2 ? "{\"op\":\"nope\"}" : "][");
    ck_assert_int_eq(t->closes, 0);
    cmd(t, "{\"op\":\"subscribe\",\"topic\":\"..\"}");
    ck_assert_int_eq(t->closes, 1);
    ck_assert_int_eq(t->close_code, HD_CLOSE_TOO_MANY_ERRORS);
    /* Every refused command got its error frame first. */
    for (int i = 0; i < 100; i++)
        json_decref(expect_frame(t, "error"));
    /* After the close nothing more is handled or queued. */
    cmd(t, "{\"op\":\"ping\",\"id\":1}");
    expect_empty(t);
    ck_assert_int_eq(t->closes, 1);
}
END_TEST

START_TEST(good_command_resets_error_count)
{
    boot();
    struct tconn *t = open_ws();
    for (int i = 0; i < 99; i++)
        cmd(t, "{\"op\":\"nope\",\"id\":%d}", i);
    cmd(t, "{\"op\":\"ping\",\"id\":1}");
    for (int i = 0; i < 99; i++)
        cmd(t, "{\"op\":\"subscribe\",\"topic\":\"a.>.b\"}");
    ck_assert_int_eq(t->closes, 0);
    for (int i = 0; i < 99; i++)
        json_decref(expect_frame(t, "error"));
    json_decref(expect_frame(t, "pong"));
    for (int i = 0; i < 99; i++)
        json_decref(expect_frame(t, "error"));
    expect_empty(t);
}
END_TEST

START_TEST(subscription_limit)
{
    cfg.limits.max_subscriptions_per_connection = 3;
    boot();
    struct tconn *t = open_ws();
    subscribe(t, "a", NULL, NULL);
    subscribe(t, "b", NULL, NULL);
    subscribe(t, "c.>", NULL, NULL);
    cmd(t, "{\"op\":\"subscribe\",\"id\":42,\"topic\":\"d\"}");
    json_t *j = expect_frame(t, "error");
    ck_assert_str_eq(jstr(j, "code"), "limit_exceeded");
    ck_assert_int_eq(jint(j, "id"), 42);
    json_decref(j);
    ck_assert_int_eq(hd_broker_metrics(b)->subscriptions, 3);
    /* The refused pattern receives nothing. */
    publish_drop("d", "1");
    expect_empty(t);
    /* Re-subscribing to an existing pattern is not a new subscription. */
    subscribe(t, "b", NULL, NULL);
    /* Making room makes it possible again. */
    cmd(t, "{\"op\":\"unsubscribe\",\"topic\":\"a\"}");
    json_decref(expect_frame(t, "ok"));
    subscribe(t, "d", NULL, NULL);
    /* The limit is per connection. */
    struct tconn *u = open_ws();
    subscribe(u, "d", NULL, NULL);
}
END_TEST

START_TEST(publish_backpressure_is_bounded)
{
    cfg.limits.max_queue_bytes = 64 * 1024 * 1024;
    boot();
    struct tconn *stalled = open_ws(), *pub = open_ws();
    subscribe(stalled, ">", NULL, NULL);
    struct hd_metrics *mx = hd_broker_metrics(b);
    uint64_t t0 = 1000000000000u, ms = 1000000u;
    /* Queues nearly empty: nothing is held. */
    ck_assert(!hd_broker_publish_held(b, t0, t0));
    /* A reader that stopped reading: queue past the watermark through real publishes. */
    char data[900];
    memset(data, 'x', sizeof(data) - 1);
    data[sizeof(data) - 1] = '\0';
    int n = 0;
    while ((uint64_t)mx->queued_bytes <= HD_PUBLISH_HOLD_BYTES) {
        cmd(pub, "{\"op\":\"publish\",\"id\":%d,\"topic\":\"bp\",\"data\":\"%s\"}", n, data);
        json_decref(expect_frame(pub, "ok"));
        ck_assert_int_lt(++n, 10000);
    }
    uint64_t held_before = mx->publishes_held;
    ck_assert(hd_broker_publish_held(b, t0, t0));
    ck_assert(hd_broker_publish_held(b, t0, t0 + (HD_PUBLISH_HOLD_MAX_MS - 1) * ms));
    /* The wait is bounded: past it the publish goes ahead although nobody drained. */
    ck_assert(!hd_broker_publish_held(b, t0, t0 + HD_PUBLISH_HOLD_MAX_MS * ms));
    ck_assert_uint_eq(mx->publishes_held, held_before + 2);
    /* The reader catches up: below the watermark nothing is held. */
    while ((uint64_t)mx->queued_bytes > HD_PUBLISH_HOLD_BYTES / 2 && hd_conn_peek(&stalled->c)) {
        hd_conn_writable(&stalled->c);
        hd_conn_wrote(&stalled->c);
    }
    ck_assert(!hd_broker_publish_held(b, t0, t0));
    ck_assert_int_eq(stalled->closes, 0);
}
END_TEST

START_TEST(slow_consumer)
{
    cfg.limits.max_queue_bytes = 2000;
    boot();
    struct tconn *slow = open_ws(), *fast = open_ws(), *pub = open_ws();
    subscribe(slow, ">", NULL, NULL);
    subscribe(fast, ">", NULL, NULL);
    struct hd_metrics *mx = hd_broker_metrics(b);
    struct hd_msg *killer = NULL;
    size_t queued_to_slow = 0;
    for (int i = 0; i < 60; i++) {
        size_t before = slow->c.q.count;
        cmd(pub, "{\"op\":\"publish\",\"id\":%d,\"topic\":\"t.%d\",\"data\":\"%080d\"}", i, i, i);
        json_t *ok = expect_frame(pub, "ok");
        uint64_t seq;
        ck_assert_int_eq(hd_event_id_parse(jstr(ok, "event_id"), &seq), 0);
        json_decref(ok);
        if (!killer && slow->closes) {
            killer = hd_history_get(hd_broker_history(b), seq);
            ck_assert_ptr_nonnull(killer);
            ck_assert_uint_eq(eng->last_receivers, 1);
            queued_to_slow = before; /* events in the queue when it overflowed */
        }
        /* The fast one keeps up. */
        char topic[16];
        snprintf(topic, sizeof(topic), "t.%d", i);
        expect_event(fast, seq, topic);
    }
    ck_assert_ptr_nonnull(killer);
    ck_assert_int_eq(slow->closes, 1);
    ck_assert_int_eq(slow->close_code, HD_CLOSE_SLOW_CONSUMER);
    ck_assert_uint_eq(mx->slow_consumer_disconnects, 1);
    /* The overflowing event plus every event still queued (welcome and ok are replies). */
    ck_assert_uint_eq(mx->events_dropped[HD_DROP_SLOW_CONSUMER], queued_to_slow + 1);
    /* The overflowing event was never queued to the slow one, so its own counters leave it
     * out: queued 1 (the fast one), written 1. */
    ck_assert_uint_eq(killer->queued, 1);
    ck_assert_uint_eq(killer->dropped, 0);
    ck_assert_uint_eq(killer->written, 1);
    /* Nothing was queued to it after the close, and detaching drops nothing more. */
    ck_assert_ptr_null(hd_conn_peek(&slow->c));
    hd_conn_detach(&slow->c);
    ck_assert_uint_eq(mx->events_dropped[HD_DROP_DISCONNECT], 0);
    ck_assert_uint_eq(mx->slow_consumer_disconnects, 1);
}
END_TEST

/*
 * limits.max_total_queue_bytes: once everything queued to all connections together passes
 * the cap, publishes are refused with unavailable (load shed at the door), nothing is
 * delivered, and publishing works again once the queues drain.
 */
START_TEST(global_queue_cap_sheds_publishes)
{
    cfg.limits.max_total_queue_bytes = 2000;
    boot();
    struct tconn *sub = open_ws(), *pub = open_ws();
    subscribe(sub, "g.>", NULL, NULL);
    int refused = 0;
    for (int i = 0; i < 40 && !refused; i++) {
        cmd(pub, "{\"op\":\"publish\",\"id\":%d,\"topic\":\"g.x\",\"data\":\"%0100d\"}", i, i);
        json_t *r = next_frame(pub);
        ck_assert_ptr_nonnull(r);
        if (strcmp(json_string_value(json_object_get(r, "type")), "error") == 0) {
            ck_assert_str_eq(json_string_value(json_object_get(r, "code")), "unavailable");
            refused = i;
        }
        json_decref(r);
    }
    ck_assert_msg(refused > 0, "the cap never refused a publish");
    ck_assert_int_gt(hd_broker_metrics(b)->queued_bytes, 2000);
    /* Drain the subscriber: the queue empties and publishing is accepted again. */
    while (hd_conn_peek(&sub->c))
        hd_conn_wrote(&sub->c);
    ck_assert_int_eq(hd_broker_metrics(b)->queued_bytes, 0);
    cmd(pub, "{\"op\":\"publish\",\"id\":99,\"topic\":\"g.x\",\"data\":1}");
    json_decref(expect_frame(pub, "ok"));
}
END_TEST

/*
 * PROTOCOL.md section 3: `receivers` is how many connections the event was queued to. The
 * event that overflows a slow consumer is not queued to it (it is closed instead), so it must
 * not be counted, and the reply must agree with what the broker's deliver returned.
 */
START_TEST(receivers_exclude_slow_consumer)
{
    cfg.limits.max_queue_bytes = 600;
    boot();
    struct tconn *slow = open_ws(), *fast = open_ws(), *pub = open_ws();
    subscribe(slow, ">", NULL, NULL);
    subscribe(fast, ">", NULL, NULL);
    for (int i = 0; i < 20 && !slow->closes; i++) {
        cmd(pub, "{\"op\":\"publish\",\"id\":%d,\"topic\":\"t\",\"data\":\"%080d\"}", i, i);
        json_t *ok = expect_frame(pub, "ok");
        int64_t want = slow->closes ? 1 : 2;
        ck_assert_int_eq(eng->last_receivers, (size_t)want);
        ck_assert_msg(jint(ok, "receivers") == want,
                      "publish %d: receivers %lld, but the event was queued to %lld "
                      "connection(s)%s",
                      i, (long long)jint(ok, "receivers"), (long long)want,
                      slow->closes ? " (the other was closed as a slow consumer)" : "");
        json_decref(ok);
        json_decref(expect_frame(fast, "event"));
    }
    ck_assert_int_eq(slow->closes, 1);
}
END_TEST

/* The tick reads every connection's times from a dense array that detaches reorder (the last
 * entry moves into the hole), also while the tick itself closes and detaches connections. */
START_TEST(tick_sees_every_connection)
{
    cfg.heartbeat_s = 1;
    boot();
    enum { N = 14 };
    struct tconn *t[N];
    for (int i = 0; i < N; i++) {
        t[i] = new_tconn();
        if (i == 3 || i == 7 || i == 10) { /* tokens that expired a while ago */
            t[i]->c.identity.expires_ms = hd_wall_ms() - 10000;
            t[i]->detach_on_close = true;
        }
        enum hd_conn_kind kind = i == 13 ? HD_CONN_SSE : HD_CONN_WS;
        ck_assert_int_eq(hd_conn_attach(b, &t[i]->c, kind, &t_ops_ping), 0);
    }
    hd_conn_detach(&t[5]->c); /* 13 takes its place */
    hd_conn_detach(&t[9]->c); /* and 12 this one */
    /* Idle for most of a heartbeat, except connections 0 and 12, which just sent something. */
    struct timespec nap = {.tv_nsec = 850 * 1000000L};
    nanosleep(&nap, NULL);
    hd_conn_touch(&t[0]->c);
    hd_conn_touch(&t[12]->c);
    hd_broker_tick(b);
    for (int i = 0; i < N; i++) {
        bool expired = i == 3 || i == 7 || i == 10;
        ck_assert_int_eq(t[i]->closes, expired);
        if (expired)
            ck_assert_int_eq(t[i]->close_code, HD_CLOSE_POLICY);
        bool pinged = !expired && i != 0 && i != 12 && i != 5 && i != 9 && i != 13;
        ck_assert_msg(t[i]->pings == pinged, "connection %d pinged %d times", i, t[i]->pings);
    }
    /* Once per heartbeat: an immediate second tick pings nobody. */
    hd_broker_tick(b);
    int pings = 0;
    for (int i = 0; i < N; i++)
        pings += t[i]->pings;
    ck_assert_int_eq(pings, 6);
}
END_TEST

START_TEST(drain)
{
    boot();
    struct tconn *a = open_ws(), *c = open_ws();
    subscribe(a, ">", NULL, NULL);
    ck_assert(!hd_broker_draining(b));
    hd_broker_drain(b);
    ck_assert(hd_broker_draining(b));
    ck_assert(eng->drained);
    ck_assert_int_eq(a->closes, 1);
    ck_assert_int_eq(a->close_code, HD_CLOSE_GOING_AWAY);
    ck_assert_int_eq(c->closes, 1);
    ck_assert_int_eq(c->close_code, HD_CLOSE_GOING_AWAY);
    struct hd_pub p = {.topic = "a", .event = "message", .data_json = "1", .data_len = 1};
    struct pub_result r = {0};
    struct hd_error err = {0};
    ck_assert_int_eq(hd_broker_publish(b, &anon_pub, &p, pub_done, &r, &err), HD_ERR_UNAVAILABLE);
    ck_assert_int_eq(err.code, HD_ERR_UNAVAILABLE);
    ck_assert(!r.done); /* done never ran */
    ck_assert_uint_eq(hd_history_events(hd_broker_history(b)), 0);
    /* New connections are refused. */
    struct tconn *late = calloc(1, sizeof(*late));
    ck_assert_ptr_nonnull(late);
    ck_assert_int_eq(hd_conn_attach(b, &late->c, HD_CONN_WS, &t_ops), -ESHUTDOWN);
    free(late);
    hd_broker_drain(b); /* twice is harmless */
    ck_assert_int_eq(a->closes, 1);
}
END_TEST

/* Drain closes every connection once, also when some transports detach inside the close. */
START_TEST(drain_with_detaching_closes)
{
    boot();
    enum { N = 9 };
    struct tconn *t[N];
    for (int i = 0; i < N; i++) {
        t[i] = new_tconn();
        t[i]->detach_on_close = i % 3 != 1;
        ck_assert_int_eq(hd_conn_attach(b, &t[i]->c, HD_CONN_WS, &t_ops), 0);
    }
    hd_conn_detach(&t[2]->c); /* the array is no longer in attach order */
    ck_assert_uint_eq(hd_broker_connections(b), N - 1);
    hd_broker_drain(b);
    for (int i = 0; i < N; i++) {
        ck_assert_msg(t[i]->closes == (i != 2), "connection %d closed %d times", i, t[i]->closes);
        if (i != 2)
            ck_assert_int_eq(t[i]->close_code, HD_CLOSE_GOING_AWAY);
    }
    ck_assert_uint_eq(hd_broker_connections(b), 3); /* 1, 4, 7 close later */
}
END_TEST

START_TEST(detach_counts_dropped)
{
    boot();
    struct tconn *t = open_ws(), *keep = open_ws();
    subscribe(t, "a.>", NULL, NULL);
    subscribe(t, "a.x", NULL, NULL);
    subscribe(keep, "a.>", NULL, NULL);
    struct hd_msg *m1 = publish("a.x", "1");
    struct hd_msg *m2 = publish("a.y", "2");
    struct hd_msg *m3 = publish("a.x", "3");
    expect_event(t, m1->seq, "a.x"); /* written */
    cmd(t, "{\"op\":\"ping\"}");     /* a reply in the queue is not an event */
    ck_assert_int_eq(hd_broker_metrics(b)->subscriptions, 3);
    hd_conn_detach(&t->c);
    struct hd_metrics *mx = hd_broker_metrics(b);
    ck_assert_uint_eq(mx->events_dropped[HD_DROP_DISCONNECT], 2);
    ck_assert_uint_eq(m1->dropped, 0);
    ck_assert_uint_eq(m2->dropped, 1);
    ck_assert_uint_eq(m3->dropped, 1);
    ck_assert_int_eq(mx->subscriptions, 1);
    ck_assert_int_eq(mx->connections, 1);
    ck_assert_uint_eq(hd_broker_connections(b), 1);
    ck_assert_int_eq(t->closes, 0); /* the transport closed it; the broker does not again */
    /* The detached connection no longer receives anything. */
    struct hd_msg *m4 = publish("a.x", "4");
    ck_assert_uint_eq(eng->last_receivers, 1);
    ck_assert_uint_eq(m4->queued, 1);
    hd_conn_detach(&t->c); /* twice is harmless */
    hd_msg_unref(m1);
    hd_msg_unref(m2);
    hd_msg_unref(m3);
    hd_msg_unref(m4);
}
END_TEST

START_TEST(delivery_counters)
{
    boot();
    struct tconn *a = open_ws(), *c = open_ws(), *d = open_ws();
    subscribe(a, "t", NULL, NULL);
    subscribe(c, "t", NULL, NULL);
    subscribe(d, "*", NULL, NULL);
    struct hd_msg *m = publish("t", "{}");
    ck_assert_uint_eq(m->queued, 3);
    ck_assert_uint_eq(m->written + m->dropped, 0);
    expect_event(a, m->seq, "t");
    ck_assert_uint_eq(m->written, 1);
    expect_event(c, m->seq, "t");
    ck_assert_uint_eq(m->written, 2);
    hd_conn_detach(&d->c);
    ck_assert_uint_eq(m->queued, 3);
    ck_assert_uint_eq(m->written, 2);
    ck_assert_uint_eq(m->dropped, 1);
    ck_assert_uint_eq(hd_broker_metrics(b)->deliveries_written, 2);
    /* Replies are not deliveries. */
    cmd(a, "{\"op\":\"ping\"}");
    json_decref(expect_frame(a, "pong"));
    ck_assert_uint_eq(hd_broker_metrics(b)->deliveries_written, 2);
    /* The handle history serves is the same message. */
    ck_assert_ptr_eq(hd_history_get(hd_broker_history(b), m->seq), m);
    hd_msg_unref(m);
}
END_TEST

static Suite *broker_suite(void)
{
    Suite *s = suite_create("broker");
    TCase *tc = tcase_create("commands");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, welcome_and_attach);
    tcase_add_test(tc, want_write_once_until_writable);
    tcase_add_test(tc, subscribe_reply);
    tcase_add_test(tc, publish_over_ws);
    tcase_add_test(tc, ping_and_errors);
    tcase_add_test(tc, publish_too_large);
    tcase_add_test(tc, too_many_errors_closes);
    tcase_add_test(tc, good_command_resets_error_count);
    tcase_add_test(tc, subscription_limit);
    tcase_add_test(tc, publish_rate_limited);
    tcase_add_test(tc, reload_applies_queue_limit);
    suite_add_tcase(s, tc);

    tc = tcase_create("fanout");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, fanout_once_per_connection);
    tcase_add_test(tc, unsubscribe_stops_delivery);
    tcase_add_test(tc, replay_since);
    tcase_add_test(tc, replay_no_duplicates);
    tcase_add_test(tc, replay_fills_only_what_was_missed);
    tcase_add_test(tc, replay_gap);
    tcase_add_test(tc, sse_subscribe_replays);
    tcase_add_test(tc, slow_consumer);
    tcase_add_test(tc, publish_backpressure_is_bounded);
    tcase_add_test(tc, receivers_exclude_slow_consumer);
    tcase_add_test(tc, global_queue_cap_sheds_publishes);
    tcase_add_test(tc, tick_sees_every_connection);
    tcase_add_test(tc, drain);
    tcase_add_test(tc, drain_with_detaching_closes);
    tcase_add_test(tc, detach_counts_dropped);
    tcase_add_test(tc, delivery_counters);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(broker_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
