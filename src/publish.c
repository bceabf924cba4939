/* SPDX-License-Identifier: MIT */
/*
 * The publish path. Every publish, whatever its transport (HTTP single or batch, WebSocket),
 * passes one admission point here: readiness, rights, key, size, overload and the one rate
 * limiter are checked before anything changes. Then idempotency: a key seen before gets the
 * first answer again, a key in flight waits for it. Then the engine, whose acknowledgement
 * is joined with the event's local delivery (either may come first) so the answer can say
 * how many connections on this node it reached.
 *
 * This file is also the engine's sink: events to deliver (history, then fan-out), recovered
 * events, gaps and readiness. It does not know sockets or JSON frames; broker.c does the
 * connections.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker_int.h"
#include "log.h"
#include "peers.h"

/* One admitted publish waiting for its engine acknowledgement and/or its local delivery. */
struct pub_op {
    struct hd_broker *b;
    hd_publish_done_fn done;
    void *arg;
    char *key; /* scoped idempotency key (owned), or NULL */
    struct hd_publish_result res;
    struct pub_op *prev, *next; /* b->awaiting, ascending seq */
};

/* A repeat of a key whose first publish is still in flight. */
struct dup_wait {
    hd_publish_done_fn done;
    void *arg;
};

static const char *engine_error_text(int err)
{
    switch (err) {
    case -ESHUTDOWN:
        return "the server is shutting down";
    case -EAGAIN:
        return "the event engine is unreachable; retry shortly";
    case -ETIMEDOUT:
        return "the event engine did not confirm the event in time; retry with the same key";
    case -ENOMEM:
        return "out of memory";
    default:
        return "the event could not be stored";
    }
}

static void engine_error(struct hd_error *e, int err)
{
    hd_error_set(e, err == -ENOMEM ? HD_ERR_INTERNAL : HD_ERR_UNAVAILABLE, "%s",
                 engine_error_text(err));
    if (err != -ESHUTDOWN && err != -ENOMEM)
        e->retry_after = 1;
}

/* The receivers of an event delivered here already: the recent ring, else history. */
static uint32_t receivers_of(struct hd_broker *b, uint64_t seq)
{
    for (uint32_t i = 0; i < HD_RECENT; i++) {
        uint32_t k = (b->recent_next - 1 - i) % HD_RECENT;
        if (b->recent[k].seq == seq)
            return b->recent[k].receivers;
        if (b->recent[k].seq < seq)
            break; /* the ring is in id order: older entries cannot match */
    }
    struct hd_msg *m = hd_history_get(b->hist, seq);
    return m ? m->receivers : 0;
}

/* Spare pub_ops kept: a few more than the publishes usually in flight at once. */
#define SPARE_OPS 64

static struct pub_op *op_new(struct hd_broker *b)
{
    struct pub_op *op = b->spare_ops;
    if (op) {
        b->spare_ops = op->next;
        b->n_spare_ops--;
    } else if (!(op = malloc(sizeof(*op)))) {
        return NULL;
    }
    *op = (struct pub_op){.b = b};
    return op;
}

/* Frees op, or keeps it for the next publish; its key is freed either way. */
static void op_release(struct pub_op *op)
{
    struct hd_broker *b = op->b;
    free(op->key);
    if (b->n_spare_ops >= SPARE_OPS) {
        free(op);
        return;
    }
    op->next = b->spare_ops;
    b->spare_ops = op;
    b->n_spare_ops++;
}

static void op_succeed(struct pub_op *op, uint32_t receivers)
{
    struct hd_broker *b = op->b;
    op->res.receivers = receivers;
    if (op->key && !op->res.duplicate)
        hd_dedupe_finish(b->dedupe, op->key,
                         &(struct hd_dedupe_answer){.seq = op->res.seq,
                                                    .time_ms = op->res.time_ms,
                                                    .receivers = receivers});
    op->done(op->arg, NULL, &op->res);
    op_release(op);
}

static void op_fail(struct pub_op *op, int err)
{
    struct hd_broker *b = op->b;
    struct hd_error e = {0};
    engine_error(&e, err);
    b->metrics.publish_rejected++;
    if (op->key)
        hd_dedupe_abort(b->dedupe, op->key, err);
    op->done(op->arg, &e, NULL);
    op_release(op);
}

static void awaiting_unlink(struct hd_broker *b, struct pub_op *op)
{
    b->n_awaiting--;
    if (op->prev)
        op->prev->next = op->next;
    else
        b->awaiting = op->next;
    if (op->next)
        op->next->prev = op->prev;
    else
        b->awaiting_end = op->prev;
}

/* Acks come nearly in id order: the insertion walks back from the end. */
static void awaiting_insert(struct hd_broker *b, struct pub_op *op)
{
    b->n_awaiting++;
    struct pub_op *after = b->awaiting_end;
    while (after && after->res.seq > op->res.seq)
        after = after->prev;
    op->prev = after;
    op->next = after ? after->next : b->awaiting;
    if (op->next)
        op->next->prev = op;
    else
        b->awaiting_end = op;
    if (after)
        after->next = op;
    else
        b->awaiting = op;
}

static void on_ack(void *arg, int err, const struct hd_pub_ack *ack)
{
    struct pub_op *op = arg;
    struct hd_broker *b = op->b;
    if (err) {
        op_fail(op, err);
        return;
    }
    op->res.seq = ack->seq;
    op->res.time_ms = ack->time_ms;
    op->res.duplicate = ack->duplicate;
    if (ack->duplicate || ack->seq <= b->delivered_seq) {
        op_succeed(op, receivers_of(b, ack->seq));
        return;
    }
    awaiting_insert(b, op);
}

void hd__broker_publish_free(struct hd_broker *b)
{
    while (b->awaiting) {
        struct pub_op *op = b->awaiting;
        awaiting_unlink(b, op);
        op_fail(op, -ESHUTDOWN);
    }
    while (b->spare_ops) {
        struct pub_op *op = b->spare_ops;
        b->spare_ops = op->next;
        free(op);
    }
    b->n_spare_ops = 0;
}

/* ---- admission ---------------------------------------------------------------------------- */

enum hd_err hd_broker_publish_check(struct hd_broker *b, const struct hd_publisher *who,
                                    const struct hd_pub *p, struct hd_error *err)
{
    const struct hd_config *cfg = b->cfg;
    if (b->draining || !b->engine)
        return hd_error_set(err, HD_ERR_UNAVAILABLE, "the server is shutting down");
    /* A broker without an authenticator (unit tests) allows everything. */
    enum hd_err right = b->auth && !who->rights_checked
                            ? hd_auth_can_publish(who->identity, p->topic)
                            : HD_ERR_NONE;
    if (right != HD_ERR_NONE)
        return hd_error_set(err, right,
                            right == HD_ERR_UNAUTHORIZED
                                ? "publishing to this topic needs credentials"
                                : "these credentials may not publish to this topic");
    if (p->key && !who->rights_checked && !hd_idem_key_valid(p->key, strlen(p->key)))
        return hd_error_set(err, HD_ERR_BAD_REQUEST,
                            "an idempotency key is 1-%d visible ASCII characters", HD_IDEM_KEY_MAX);
    if (p->data_len > cfg->limits.max_event_bytes)
        return hd_error_set(err, HD_ERR_TOO_LARGE,
                            "data is %zu bytes, the limit is %u (limits.max_event_bytes)",
                            p->data_len, cfg->limits.max_event_bytes);
    if (!b->engine_ready) {
        hd_error_set(err, HD_ERR_UNAVAILABLE, "the event engine is not ready; retry shortly");
        err->retry_after = 1;
        return HD_ERR_UNAVAILABLE;
    }
    if ((uint64_t)b->metrics.queued_bytes > cfg->limits.max_total_queue_bytes) {
        hd_error_set(err, HD_ERR_UNAVAILABLE, "the server is overloaded; retry shortly");
        err->retry_after = 1;
        return HD_ERR_UNAVAILABLE;
    }
    return HD_ERR_NONE;
}

/* hd_broker_publish_take with a rate limit set (apart: the usual path without one is short). */
__attribute__((noinline)) static enum hd_err rate_take(struct hd_broker *b,
                                                       const struct hd_publisher *who, uint32_t n,
                                                       uint32_t *fits, struct hd_error *err)
{
    const struct hd_config *cfg = b->cfg;
    char key[80];
    const char *name = hd_identity_name(who->identity);
    if (who->identity->kind != HD_ID_ANONYMOUS && name) {
        snprintf(key, sizeof(key), "id:%s", name);
    } else if (who->conn_id) {
        snprintf(key, sizeof(key), "conn:%" PRIu64, who->conn_id);
    } else if (who->peer_addr) {
        memcpy(key, "ip:", 3);
        hd_peer_addr_format(who->peer_addr, key + 3, sizeof(key) - 3);
    } else {
        snprintf(key, sizeof(key), "ip:%s", who->peer ? who->peer : "?");
    }
    uint32_t wait = hd_ratelimit_take(b->rate, key, n, cfg->limits.publish_rate,
                                      cfg->limits.publish_burst, hd_now_ns(), fits);
    if (!wait)
        return HD_ERR_NONE;
    b->metrics.publish_rejected++;
    if (wait == UINT32_MAX) {
        hd_error_set(err, HD_ERR_RATE_LIMITED,
                     "%u events at once is more than limits.publish_burst allows", n);
        err->retry_after = 1;
    } else {
        hd_error_set(err, HD_ERR_RATE_LIMITED, "more than %u events per second; retry in %u s",
                     cfg->limits.publish_rate, wait);
        err->retry_after = wait;
    }
    return HD_ERR_RATE_LIMITED;
}

enum hd_err hd_broker_publish_take(struct hd_broker *b, const struct hd_publisher *who, uint32_t n,
                                   uint32_t *fits, struct hd_error *err)
{
    if (fits)
        *fits = n;
    if (!b->cfg->limits.publish_rate)
        return HD_ERR_NONE;
    return rate_take(b, who, n, fits, err);
}

static void on_duplicate_done(void *arg, int err, const struct hd_dedupe_answer *a)
{
    struct dup_wait *w = arg;
    if (err) {
        struct hd_error e = {0};
        engine_error(&e, err);
        w->done(w->arg, &e, NULL);
    } else {
        struct hd_publish_result res = {
            .seq = a->seq, .time_ms = a->time_ms, .receivers = a->receivers, .duplicate = true};
        w->done(w->arg, NULL, &res);
    }
    free(w);
}

/* Scopes a client's key to its identity: two tokens may use the same key independently. */
static char *scoped_key(const struct hd_publisher *who, const char *key)
{
    const char *name = hd_identity_name(who->identity);
    size_t nlen = name ? strlen(name) : 0, klen = strlen(key);
    char *s = malloc(nlen + klen + 3);
    if (!s)
        return NULL;
    /* The kind keeps "token alice" and "JWT subject alice" apart; ':' cannot be in a kind. */
    s[0] = (char)('0' + who->identity->kind);
    memcpy(s + 1, name ? name : "", nlen);
    s[1 + nlen] = ':';
    memcpy(s + 2 + nlen, key, klen + 1);
    return s;
}

enum hd_err hd_broker_publish_submit(struct hd_broker *b, const struct hd_publisher *who,
                                     const struct hd_pub *p, hd_publish_done_fn done, void *arg,
                                     struct hd_error *err)
{
    struct pub_op *op = op_new(b);
    if (!op)
        return hd_error_set(err, HD_ERR_INTERNAL, "out of memory");
    op->done = done;
    op->arg = arg;
    if (p->key && b->cfg->history.dedupe_window_s) {
        op->key = scoped_key(who, p->key);
        struct hd_dedupe_answer a;
        struct dup_wait *w = malloc(sizeof(*w));
        int st = op->key && w
                     ? hd_dedupe_begin(b->dedupe, op->key, hd_wall_ms(), &a, on_duplicate_done, w)
                     : -ENOMEM;
        if (st != HD_DEDUPE_WAITING)
            free(w);
        if (st < 0) {
            op_release(op);
            return hd_error_set(err, HD_ERR_INTERNAL, "out of memory");
        }
        if (st != HD_DEDUPE_NEW) {
            if (st == HD_DEDUPE_WAITING)
                *w = (struct dup_wait){.done = done, .arg = arg};
            op_release(op);
            b->metrics.publish_duplicates++;
            if (st == HD_DEDUPE_DONE) {
                struct hd_publish_result res = {.seq = a.seq,
                                                .time_ms = a.time_ms,
                                                .receivers = a.receivers,
                                                .duplicate = true};
                done(arg, NULL, &res);
            }
            return HD_ERR_NONE;
        }
    }
    struct hd_pub ep = *p;
    ep.key = op->key;
    int r = b->engine->ops->publish(b->engine, &ep, on_ack, op);
    hd_log_debug("publish", "topic=%s event=%s bytes=%zu result=%d", ep.topic,
                 ep.event ? ep.event : "message", ep.data_len, r);
    if (r) {
        if (op->key)
            hd_dedupe_abort(b->dedupe, op->key, r);
        op_release(op);
        b->metrics.publish_rejected++;
        struct hd_error scratch;
        engine_error(err ? err : &scratch, r);
        return err ? err->code : scratch.code;
    }
    return HD_ERR_NONE;
}

enum hd_err hd_broker_publish(struct hd_broker *b, const struct hd_publisher *who,
                              const struct hd_pub *p, hd_publish_done_fn done, void *arg,
                              struct hd_error *err)
{
    enum hd_err e = hd_broker_publish_check(b, who, p, err);
    if (e == HD_ERR_NONE)
        e = hd_broker_publish_take(b, who, 1, NULL, err);
    if (e == HD_ERR_UNAVAILABLE)
        b->metrics.publish_rejected++;
    if (e != HD_ERR_NONE)
        return e;
    return hd_broker_publish_submit(b, who, p, done, arg, err);
}

/* ---- the engine's sink -------------------------------------------------------------------- */

struct fan {
    struct hd_msg *msg;
    size_t receivers;
};

static void fan_one(struct hd_subscriber *s, void *arg)
{
    struct fan *f = arg;
    struct hd_conn *c = (struct hd_conn *)s; /* subscriber is the first member */
    if (c->closing)
        return;
    if (c->kind == HD_CONN_POLL) {
        /* A waiting long poll answers from history: it only needs waking, once. */
        f->receivers++;
        if (!c->want_pending) {
            c->want_pending = true;
            c->ops->want_write(c);
        }
        return;
    }
    if (hd__conn_enqueue_event(c, f->msg, HD_PUSH_LIVE))
        f->receivers++;
}

static size_t sink_deliver(void *broker, struct hd_msg *msg, const char *key)
{
    struct hd_broker *b = broker;
    if (msg->seq <= b->delivered_seq)
        return 0; /* an engine may hand an event over twice (after a reconnect): once is all */
    if (hd_history_append(b->hist, msg))
        hd_log_warn("event not retained in history", "reason=ENOMEM seq=%" PRIu64, msg->seq);
    b->metrics.events_published++;
    b->metrics.history_events = (int64_t)hd_history_events(b->hist);
    b->metrics.history_bytes = (int64_t)hd_history_bytes(b->hist);
    struct fan f = {.msg = msg};
    hd_registry_match(b->reg, msg->topic, fan_one, &f);
    msg->receivers = (uint32_t)f.receivers;
    b->delivered_seq = msg->seq;
    b->recent[b->recent_next % HD_RECENT].seq = msg->seq;
    b->recent[b->recent_next % HD_RECENT].receivers = msg->receivers;
    b->recent_next++;
    if (key && b->cfg->history.dedupe_window_s &&
        hd_dedupe_remember(b->dedupe, key,
                           &(struct hd_dedupe_answer){.seq = msg->seq,
                                                      .time_ms = msg->time_ms,
                                                      .receivers = msg->receivers},
                           hd_wall_ms()))
        hd_log_warn("idempotency key not remembered", "reason=ENOMEM seq=%" PRIu64, msg->seq);
    while (b->awaiting && b->awaiting->res.seq <= msg->seq) {
        struct pub_op *op = b->awaiting;
        awaiting_unlink(b, op);
        op_succeed(op, op->res.seq == msg->seq ? msg->receivers : receivers_of(b, op->res.seq));
    }
    return f.receivers;
}

static void sink_recover_base(void *broker, uint64_t base_seq)
{
    struct hd_broker *b = broker;
    /* In place: the engine may hold the history pointer (a cluster node answers status
     * requests from it). Recovery comes before any event. */
    if (hd_history_set_base(b->hist, base_seq))
        hd_log_error("recovery base set after events", "base=%016" PRIx64, base_seq);
    b->delivered_seq = base_seq ? base_seq - 1 : 0;
}
static void sink_recovered(void *broker, struct hd_msg *msg, const char *key)
{
    struct hd_broker *b = broker;
    if (msg->seq <= b->delivered_seq)
        return;
    /* Recovered events go back into history only: they were delivered in an earlier life. */
    if (hd_history_append(b->hist, msg))
        hd_log_warn("recovered event not retained", "reason=ENOMEM");
    b->delivered_seq = msg->seq;
    b->metrics.history_events = (int64_t)hd_history_events(b->hist);
    b->metrics.history_bytes = (int64_t)hd_history_bytes(b->hist);
    if (key && b->cfg->history.dedupe_window_s)
        hd_dedupe_remember(b->dedupe, key,
                           &(struct hd_dedupe_answer){.seq = msg->seq, .time_ms = msg->time_ms},
                           hd_wall_ms());
}

static void sink_recovered_key(void *broker, const char *key, uint64_t seq, int64_t time_ms)
{
    struct hd_broker *b = broker;
    if (b->cfg->history.dedupe_window_s)
        hd_dedupe_remember(b->dedupe, key,
                           &(struct hd_dedupe_answer){.seq = seq, .time_ms = time_ms},
                           hd_wall_ms());
}

static void sink_recovered_pruned(void *broker, const char *topic, uint64_t upto)
{
    struct hd_broker *b = broker;
    hd_history_mark_pruned(b->hist, topic, upto);
}

static void sink_gap(void *broker, uint64_t next_seq)
{
    struct hd_broker *b = broker;
    hd_log_warn("event feed discontinuous; live subscribers get a gap",
                "after=%016" PRIx64 " next=%016" PRIx64, b->delivered_seq, next_seq);
    hd_history_mark_gap(b->hist, next_seq);
    if (next_seq > b->delivered_seq + 1)
        b->delivered_seq = next_seq - 1;
    /* Publishes acknowledged inside the hole exist but never reached this node. */
    while (b->awaiting && b->awaiting->res.seq < next_seq) {
        struct pub_op *op = b->awaiting;
        awaiting_unlink(b, op);
        op_succeed(op, 0);
    }
    b->metrics.feed_gaps++;
    hd__broker_gap(b, next_seq);
}

static void sink_ready(void *broker, bool ready)
{
    struct hd_broker *b = broker;
    if (b->engine_ready != ready)
        hd_log_info(ready ? "engine ready" : "engine not ready; publishes get 503", "engine=%s",
                    b->engine->ops->name);
    b->engine_ready = ready;
}

void hd__broker_sink(struct hd_broker *b, struct hd_engine_sink *sink)
{
    *sink = (struct hd_engine_sink){
        .broker = b,
        .deliver = sink_deliver,
        .recover_base = sink_recover_base,
        .recovered = sink_recovered,
        .recovered_key = sink_recovered_key,
        .recovered_pruned = sink_recovered_pruned,
        .gap = sink_gap,
        .ready = sink_ready,
    };
}
