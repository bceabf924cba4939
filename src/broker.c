/* SPDX-License-Identifier: MIT */
/*
 * The broker core: attaches transport connections, runs WebSocket commands, replays history
 * and fans events out. Fan-out is one registry match per event and one queue push per
 * receiving connection; the message bytes are shared. A connection whose queue would pass
 * max_queue_bytes is closed (4000) rather than allowed to slow anyone else down. Every
 * check of a command happens before any state changes.
 */
#include "broker_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "peers.h"
#include "topic.h"

static uint32_t ms32(void)
{
    return (uint32_t)(hd_now_ns() / 1000000);
}

/* The identity's expiry in whole seconds, rounded up (JWT exp is in seconds anyway). */
static uint32_t expiry_s(int64_t expires_ms)
{
    if (expires_ms <= 0)
        return 0;
    int64_t s = (expires_ms + 999) / 1000;
    return s > UINT32_MAX ? UINT32_MAX : (uint32_t)s;
}

struct hd_broker *hd_broker_new(const struct hd_config *cfg)
{
    struct hd_broker *b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    b->cfg = cfg;
    struct hd_history_limits lim = hd_history_limits_of(cfg);
    b->reg = hd_registry_new();
    b->hist = hd_history_new(&lim, 1);
    b->peers = hd_peers_new();
    b->rate = hd_ratelimit_new();
    b->dedupe = hd_dedupe_new(cfg->history.dedupe_window_s, cfg->history.dedupe_max_keys);
    if (!b->reg || !b->hist || !b->peers || !b->rate || !b->dedupe) {
        hd_registry_free(b->reg);
        hd_history_free(b->hist);
        hd_peers_free(b->peers);
        hd_ratelimit_free(b->rate);
        hd_dedupe_free(b->dedupe);
        free(b);
        return NULL;
    }
    return b;
}

void hd_broker_free(struct hd_broker *b)
{
    if (!b)
        return;
    while (b->n_clocks)
        hd_conn_detach(b->clocks[b->n_clocks - 1].c);
    if (b->engine)
        b->engine->ops->destroy(b->engine);
    /* Engines fail every publish in flight on destroy; what is left is only memory. */
    hd__broker_publish_free(b);
    while (b->pending) {
        struct pending_pub *p = b->pending;
        b->pending = p->next;
        free(p);
    }
    hd_registry_free(b->reg);
    hd_history_free(b->hist);
    hd_auth_free(b->auth);
    hd_peers_free(b->peers);
    hd_ratelimit_free(b->rate);
    hd_dedupe_free(b->dedupe);
    free(b->clocks);
    free(b);
}

struct hd_auth *hd_broker_auth(const struct hd_broker *b)
{
    return b->auth;
}

void hd_broker_set_engine(struct hd_broker *b, struct hd_engine *e)
{
    b->engine = e;
    hd__broker_sink(b, &e->sink);
}

int hd_broker_start(struct hd_broker *b, char *why, size_t why_len)
{
    if (!b->engine) {
        snprintf(why, why_len, "no engine");
        return -EINVAL;
    }
    return b->engine->ops->start(b->engine, why, why_len);
}

bool hd_broker_ready(const struct hd_broker *b)
{
    return b->engine_ready && !b->draining;
}

struct hd_metrics *hd_broker_metrics(struct hd_broker *b)
{
    return &b->metrics;
}
struct hd_history *hd_broker_history(struct hd_broker *b)
{
    return b->hist;
}
const struct hd_config *hd_broker_config(const struct hd_broker *b)
{
    return b->cfg;
}
bool hd_broker_draining(const struct hd_broker *b)
{
    return b->draining;
}
size_t hd_broker_publishes_in_flight(const struct hd_broker *b)
{
    size_t n = b->engine && b->engine->ops->pending ? b->engine->ops->pending(b->engine) : 0;
    return n + b->n_awaiting;
}

size_t hd_broker_connections(const struct hd_broker *b)
{
    return b->n_clocks; /* one clock per attached connection */
}

void hd_broker_reload(struct hd_broker *b, const struct hd_config *cfg)
{
    b->cfg = cfg;
    struct hd_history_limits lim = hd_history_limits_of(cfg);
    hd_history_set_limits(b->hist, &lim);
    hd_dedupe_set_limits(b->dedupe, cfg->history.dedupe_window_s, cfg->history.dedupe_max_keys);
    if (b->engine && b->engine->ops->reload)
        b->engine->ops->reload(b->engine, cfg);
    for (uint32_t i = 0; i < b->n_clocks; i++)
        b->clocks[i].c->q.max_bytes = cfg->limits.max_queue_bytes;
}

struct hd_peer *hd_broker_peer_open(struct hd_broker *b, const struct sockaddr *sa, socklen_t len,
                                    bool *refused, struct hd_error *err)
{
    *refused = false;
    struct hd_peer_addr a;
    if (hd_peer_addr_from(&a, sa, len))
        return NULL; /* not an IP peer (a UNIX socket): nothing to count it under */
    uint32_t limit = b->cfg->limits.max_connections_per_ip;
    struct hd_peer *p = hd_peers_acquire(b->peers, &a, limit, refused);
    if (*refused) {
        char text[64];
        hd_peer_addr_format(&a, text, sizeof(text));
        b->metrics.connections_refused++;
        hd_error_set(err, HD_ERR_RATE_LIMITED,
                     "too many connections from %s: at most %u per address", text, limit);
    }
    return p;
}

bool hd_broker_publish_held(struct hd_broker *b, uint64_t since_ns, uint64_t now_ns)
{
    if (b->metrics.queued_bytes <= HD_PUBLISH_HOLD_BYTES ||
        now_ns - since_ns >= (uint64_t)HD_PUBLISH_HOLD_MAX_MS * 1000000u)
        return false;
    b->metrics.publishes_held++;
    return true;
}

void hd_broker_peer_close(struct hd_broker *b, struct hd_peer *p)
{
    hd_peers_release(b->peers, p);
}

void hd__conn_request_write(struct hd_conn *c)
{
    if (!c->want_pending && !c->closing) {
        c->want_pending = true;
        c->ops->want_write(c);
    }
}

void hd__conn_close(struct hd_conn *c, int code, const char *reason)
{
    if (c->closing)
        return;
    c->closing = true;
    hd_log_debug("close", "conn=%" PRIu64 " code=%d reason=\"%s\"", c->id, code,
                 reason ? reason : "");
    c->ops->close(c, code, reason);
}

void hd_broker_drain(struct hd_broker *b)
{
    if (b->draining)
        return;
    b->draining = true;
    if (b->engine && b->engine->ops->drain)
        b->engine->ops->drain(b->engine);
    /* Backwards, as the tick walks: a close that detaches at once moves a visited entry. */
    for (uint32_t i = b->n_clocks; i-- > 0;)
        if (i < b->n_clocks)
            hd__conn_close(b->clocks[i].c, HD_CLOSE_GOING_AWAY, "server shutting down");
}

int hd_conn_attach(struct hd_broker *b, struct hd_conn *c, enum hd_conn_kind kind,
                   const struct hd_conn_ops *ops)
{
    if (b->draining)
        return -ESHUTDOWN;
    if (b->n_clocks == b->cap_clocks) {
        uint32_t ncap = b->cap_clocks ? b->cap_clocks * 2 : 64;
        struct conn_clock *n = ncap > b->cap_clocks ? realloc(b->clocks, ncap * sizeof(*n)) : NULL;
        if (!n)
            return -ENOMEM;
        b->clocks = n;
        b->cap_clocks = ncap;
    }
    uint32_t now_ms = ms32();
    c->clock = b->n_clocks++;
    b->clocks[c->clock] = (struct conn_clock){
        .c = c,
        .last_rx_ms = now_ms,
        .last_ping_ms = now_ms,
        .expires_s = expiry_s(c->identity.expires_ms),
        .pings = kind == HD_CONN_WS && ops->ping,
    };
    c->broker = b;
    c->ops = ops;
    c->kind = kind;
    c->id = ++b->next_conn_id;
    hd_log_debug("connect", "conn=%" PRIu64 " kind=%s", c->id,
                 kind == HD_CONN_WS    ? "ws"
                 : kind == HD_CONN_SSE ? "sse"
                                       : "poll");
    hd_queue_init(&c->q, b->cfg->limits.max_queue_bytes);
    c->q.shared_total = &b->metrics.queued_bytes;
    if (kind == HD_CONN_SSE)
        b->metrics.sse_streams++;
    else if (kind == HD_CONN_POLL)
        b->metrics.long_polls++;
    if (kind == HD_CONN_WS) {
        b->metrics.connections++;
        b->metrics.connections_total++;
        size_t len;
        char session[24];
        snprintf(session, sizeof(session), "%016" PRIx64, c->id ^ (uint64_t)hd_now_ns() << 20);
        char *w = hd_encode_welcome(session, HERALD_VERSION, (int)b->cfg->heartbeat_s,
                                    b->cfg->limits.max_event_bytes, &len);
        if (!w || hd_conn_send_text(c, w, len)) {
            free(w);
            hd_conn_detach(c);
            return -ENOMEM;
        }
        free(w);
    }
    return 0;
}

static void drop_subs(struct hd_conn *c)
{
    struct hd_broker *b = c->broker;
    for (uint32_t i = 0; i < c->n_subs; i++)
        hd_registry_remove(b->reg, c->subs[i].reg);
    b->metrics.subscriptions -= c->n_subs;
    free(c->subs);
    c->subs = NULL;
    c->n_subs = c->cap_subs = 0;
}

void hd_conn_detach(struct hd_conn *c)
{
    struct hd_broker *b = c->broker;
    if (!b)
        return;
    hd__conn_cancel_replays(c);
    drop_subs(c);
    size_t dropped = hd_queue_clear(&c->q);
    b->metrics.events_dropped[HD_DROP_DISCONNECT] += dropped;
    for (struct pending_pub *p = b->pending; p; p = p->next)
        if (p->conn == c)
            p->conn = NULL;
    hd_identity_clear(&c->identity);
    free(c->credential);
    c->credential = NULL;
    /* The last entry takes its place (the tick walks backwards, so that is safe mid-tick). */
    struct conn_clock *last = &b->clocks[--b->n_clocks];
    if (c->clock != b->n_clocks) {
        b->clocks[c->clock] = *last;
        last->c->clock = c->clock;
    }
    if (c->kind == HD_CONN_WS)
        b->metrics.connections--;
    else if (c->kind == HD_CONN_SSE)
        b->metrics.sse_streams--;
    else
        b->metrics.long_polls--;
    hd_log_debug("disconnect", "conn=%" PRIu64 " dropped=%zu", c->id, dropped);
    c->broker = NULL;
}

int hd_conn_send_text(struct hd_conn *c, const char *text, size_t len)
{
    if (c->closing)
        return 0;
    struct hd_msg *m = hd_msg_new_text(text, len);
    if (!m)
        return -ENOMEM;
    int r = hd_queue_push(&c->q, m, HD_PUSH_FORCE);
    hd_msg_unref(m);
    if (r == 0)
        hd__conn_request_write(c);
    return r;
}

void hd_conn_wrote(struct hd_conn *c)
{
    struct hd_msg *m = hd_queue_pop(&c->q);
    if (!m)
        return;
    if (m->seq) {
        m->written++;
        c->broker->metrics.deliveries_written++;
        hd_histogram_observe(&c->broker->metrics.publish_to_write, hd_now_ns() - m->accept_ns);
    }
    hd_msg_unref(m);
}

/* Queues an error reply; counts it towards the 4001 limit. */
static void send_error(struct hd_conn *c, bool has_id, int64_t id, const struct hd_error *err)
{
    struct hd_broker *b = c->broker;
    b->metrics.protocol_errors++;
    size_t len;
    char *e = hd_encode_error(true, has_id, id, err->code, err->message, &len);
    if (!e || hd_conn_send_text(c, e, len))
        hd__conn_close(c, HD_CLOSE_INTERNAL, "out of memory");
    free(e);
    if (++c->bad_in_row >= HD_MAX_BAD_IN_ROW)
        hd__conn_close(c, HD_CLOSE_TOO_MANY_ERRORS, "too many protocol errors");
}

void hd__conn_send_owned(struct hd_conn *c, char *text, size_t len)
{
    if (!text || hd_conn_send_text(c, text, len))
        hd__conn_close(c, HD_CLOSE_INTERNAL, "out of memory");
    free(text);
}

bool hd__conn_enqueue_event(struct hd_conn *c, struct hd_msg *m, enum hd_push how)
{
    struct hd_broker *b = c->broker;
    /* While an engine replay is in flight, live events wait behind it (subscribe.c). */
    bool hold = c->held && how == HD_PUSH_LIVE;
    int r = hd_queue_push(hold ? c->held : &c->q, m, how);
    if (r == 0) {
        m->queued++;
        if (!hold)
            hd__conn_request_write(c);
        return true;
    }
    /* Everything this connection still holds is lost to it: count it, free it at once. This
     * event was never queued to it, so its own delivery counters leave it out. */
    b->metrics.events_dropped[HD_DROP_SLOW_CONSUMER] += 1 + hd_queue_clear(&c->q);
    b->metrics.slow_consumer_disconnects++;
    hd_log_warn("slow consumer closed", "conn=%" PRIu64 " max_queue_bytes=%zu", c->id,
                c->q.max_bytes);
    hd__conn_close(c, HD_CLOSE_SLOW_CONSUMER, "slow consumer");
    return false;
}

static void pending_unlink(struct pending_pub *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else
        p->broker->pending = p->next;
    if (p->next)
        p->next->prev = p->prev;
}

static void ws_publish_done(void *arg, const struct hd_error *err,
                            const struct hd_publish_result *res)
{
    struct pending_pub *p = arg;
    struct hd_conn *c = p->conn;
    pending_unlink(p);
    if (c && !c->closing) {
        if (err) {
            send_error(c, p->has_id, p->id, err);
        } else {
            size_t len;
            char id[HD_EVENT_ID_LEN + 1];
            hd_event_id_format(res->seq, id);
            char *text =
                hd_encode_ok_publish(p->has_id, p->id, id, res->receivers, res->duplicate, &len);
            hd__conn_send_owned(c, text, len);
        }
    }
    free(p);
}

static enum hd_err ws_publish(struct hd_conn *c, const struct hd_cmd *cmd, struct hd_error *err)
{
    struct hd_broker *b = c->broker;
    size_t dlen;
    char *owned;
    const char *data = hd_cmd_data(cmd, &dlen, &owned);
    if (!data)
        return hd_error_set(err, HD_ERR_INTERNAL, "out of memory");
    struct pending_pub *p = calloc(1, sizeof(*p));
    if (!p) {
        free(owned);
        return hd_error_set(err, HD_ERR_INTERNAL, "out of memory");
    }
    *p = (struct pending_pub){.broker = b, .conn = c, .has_id = cmd->has_id, .id = cmd->id};
    p->next = b->pending;
    if (b->pending)
        b->pending->prev = p;
    b->pending = p;
    struct hd_publisher who = {.identity = &c->identity, .conn_id = c->id};
    struct hd_pub pub = {.topic = cmd->topic,
                         .event = cmd->event,
                         .data_json = data,
                         .data_len = dlen,
                         .key = cmd->key};
    enum hd_err e = hd_broker_publish(b, &who, &pub, ws_publish_done, p, err);
    free(owned);
    if (e != HD_ERR_NONE) {
        pending_unlink(p);
        free(p);
    }
    return e;
}

void hd_conn_on_text(struct hd_conn *c, const char *buf, size_t len)
{
    if (c->closing)
        return;
    struct hd_cmd cmd;
    struct hd_error err = {0};
    if (hd_cmd_parse(buf, len, &cmd, &err) != HD_ERR_NONE) {
        send_error(c, cmd.has_id, cmd.id, &err);
        return;
    }
    enum hd_err r = HD_ERR_NONE;
    size_t n;
    switch (cmd.op) {
    case HD_OP_SUBSCRIBE:
        r = hd__conn_subscribe_ws(c, cmd.has_id, cmd.id, cmd.topic, cmd.since, &err);
        break;
    case HD_OP_UNSUBSCRIBE:
        hd__conn_unsubscribe_ws(c, cmd.has_id, cmd.id, cmd.topic);
        break;
    case HD_OP_PUBLISH:
        r = ws_publish(c, &cmd, &err);
        break;
    case HD_OP_PING: {
        char *text = hd_encode_pong(cmd.has_id, cmd.id, &n);
        hd__conn_send_owned(c, text, n);
        break;
    }
    }
    if (r)
        send_error(c, cmd.has_id, cmd.id, &err);
    else
        c->bad_in_row = 0;
    hd_cmd_clear(&cmd);
}

void hd_conn_touch(struct hd_conn *c)
{
    if (c->broker) {
        struct conn_clock *k = &c->broker->clocks[c->clock];
        k->last_rx_ms = k->last_ping_ms = ms32();
    }
}

/*
 * Heartbeats are ours, not lws's: lws 4.1 keeps every connection's ping timer in one sorted
 * list that each HTTP request then walks (O(connections) per request); one walk per second
 * here costs less. A connection silent for a heartbeat gets a ping; silent for two, it is
 * dropped.
 */
static void heartbeat(struct hd_broker *b, struct conn_clock *k, uint32_t now_ms)
{
    /* The tick is 1 s: allow it some slack so a ping goes out once per heartbeat. */
    uint64_t hb = (uint64_t)b->cfg->heartbeat_s * 1000;
    uint32_t idle = now_ms - k->last_rx_ms, since_ping = now_ms - k->last_ping_ms;
    if (idle >= 2 * hb) {
        if (k->c->closing)
            return;
        hd_log_debug("heartbeat timeout", "conn=%" PRIu64 " idle_ms=%" PRIu32, k->c->id, idle);
        hd__conn_close(k->c, 0, "heartbeat timeout");
    } else if (idle + 200ull >= hb && since_ping + 200ull >= hb && !k->c->closing) {
        k->last_ping_ms = now_ms;
        k->c->ops->ping(k->c);
    }
}

void hd_broker_tick(struct hd_broker *b)
{
    int64_t now = hd_wall_ms();
    uint32_t now_ms = ms32();
    /* Backwards: a connection detached meanwhile moves the last entry, already seen, into
     * its slot. Only entries that are due touch their connection. */
    for (uint32_t i = b->n_clocks; i-- > 0;) {
        if (i >= b->n_clocks)
            continue;
        struct conn_clock *k = &b->clocks[i];
        /* The same 5 s of clock skew the JWT check allows (auth.c). */
        if (k->expires_s && (int64_t)k->expires_s * 1000 + 5000 <= now && !k->c->closing) {
            hd_log_info("token expired", "conn=%" PRIu64 " name=%s", k->c->id,
                        hd_identity_name(&k->c->identity));
            hd__conn_close(k->c, HD_CLOSE_POLICY, "token expired");
        }
        if (i < b->n_clocks && b->clocks[i].pings)
            heartbeat(b, &b->clocks[i], now_ms);
    }
    hd_history_expire(b->hist, now);
    b->metrics.history_events = (int64_t)hd_history_events(b->hist);
    b->metrics.history_bytes = (int64_t)hd_history_bytes(b->hist);
}

void hd_broker_set_auth(struct hd_broker *b, struct hd_auth *a)
{
    hd_auth_free(b->auth);
    b->auth = a;
    int64_t now = hd_wall_ms();
    for (uint32_t k = b->n_clocks; k-- > 0;) { /* backwards: see hd_broker_drain */
        if (k >= b->n_clocks)
            continue;
        struct hd_conn *c = b->clocks[k].c;
        if (c->closing)
            continue;
        struct hd_identity id;
        struct hd_error err;
        if (hd_auth_authenticate(a, c->credential, NULL, now, &id, &err)) {
            hd__conn_close(c, HD_CLOSE_POLICY, "credentials no longer valid");
            continue;
        }
        hd_identity_clear(&c->identity);
        c->identity = id;
        b->clocks[c->clock].expires_s = expiry_s(id.expires_ms);
        /* Keep only what the new rules still allow. */
        for (uint32_t i = 0; i < c->n_subs;) {
            if (hd_auth_can_subscribe(&c->identity, hd_sub_pattern(c->subs[i].reg)) ==
                HD_ERR_NONE) {
                i++;
                continue;
            }
            hd__conn_end_subscription(c, i, HD_ERR_FORBIDDEN,
                                      "the server's rules no longer allow this subscription");
        }
    }
}
