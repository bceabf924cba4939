/* SPDX-License-Identifier: MIT */
/*
 * The broker core: attaches transport connections, runs WebSocket commands, replays history
 * and fans events out. Fan-out is one registry match per event and one queue push per
 * receiving connection; the message bytes are shared. A connection whose queue would pass
 * max_queue_bytes is closed (4000) rather than allowed to slow anyone else down. Every
 * check of a command happens before any state changes.
 */
#include "broker.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "peers.h"
#include "topic.h"

/* A publish whose completion is still pending, e.g. waiting for its commit. */
struct pending_pub {
    struct hd_broker *broker;
    struct hd_conn *conn; /* NULL once the connection went away */
    struct pending_pub *next, *prev;
    bool has_id;
    int64_t id;
};

/*
 * What the once-a-second tick looks at, one entry per attached connection in a dense array:
 * scanning 18,000 connections through a linked list took 2-3 ms of cache misses every second,
 * stalling every delivery behind it; the array is read in about a tenth of that. It is also the
 * broker's only list of connections (drain, reload and new auth rules walk it).
 */
struct conn_clock {
    struct hd_conn *c;
    /* Monotonic milliseconds, kept to 32 bits and compared by wrapping difference: a
     * connection the heartbeat watches is never idle for more than 2 heartbeats, far below
     * the 49 days that wrap at. Receiving also counts as the last ping, so neither lags. */
    uint32_t last_rx_ms, last_ping_ms;
    uint32_t expires_s; /* the identity's expiry, seconds since the epoch; 0 = never */
    bool pings;         /* a WebSocket that the heartbeat applies to */
};

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

struct hd_broker {
    const struct hd_config *cfg;
    struct hd_registry *reg;
    struct hd_history *hist;
    struct hd_engine *engine;
    struct hd_metrics metrics;
    uint64_t next_conn_id;
    bool draining;
    struct pending_pub *pending; /* publishes from WebSocket connections in flight */
    struct hd_auth *auth;
    struct hd_peers *peers;    /* open connections per source address */
    struct conn_clock *clocks; /* one per attached connection */
    uint32_t n_clocks, cap_clocks;
};

static struct hd_history_limits limits_of(const struct hd_config *cfg)
{
    return (struct hd_history_limits){
        .max_events_per_topic = cfg->history.max_events_per_topic,
        .max_age_s = cfg->history.max_age_s,
        .max_bytes = cfg->history.max_memory_bytes,
    };
}

struct hd_broker *hd_broker_new(const struct hd_config *cfg, uint64_t base_seq)
{
    struct hd_broker *b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    b->cfg = cfg;
    struct hd_history_limits lim = limits_of(cfg);
    b->reg = hd_registry_new();
    b->hist = hd_history_new(&lim, base_seq);
    b->peers = hd_peers_new();
    if (!b->reg || !b->hist || !b->peers) {
        hd_registry_free(b->reg);
        hd_history_free(b->hist);
        hd_peers_free(b->peers);
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
    /* Engines run every pending completion on destroy; anything left is only memory. */
    while (b->pending) {
        struct pending_pub *p = b->pending;
        b->pending = p->next;
        free(p);
    }
    hd_registry_free(b->reg);
    hd_history_free(b->hist);
    hd_auth_free(b->auth);
    hd_peers_free(b->peers);
    free(b->clocks);
    free(b);
}

struct hd_auth *hd_broker_auth(const struct hd_broker *b)
{
    return b->auth;
}

uint32_t hd_broker_rate_take(const struct hd_broker *b, double *tokens, uint64_t *stamp_ns)
{
    uint32_t rate = b->cfg->limits.publish_rate;
    if (!rate)
        return 0;
    double burst = b->cfg->limits.publish_burst ? b->cfg->limits.publish_burst : rate;
    uint64_t now = hd_now_ns();
    if (!*stamp_ns) {
        *tokens = burst;
    } else {
        *tokens += (double)(now - *stamp_ns) / 1e9 * rate;
        if (*tokens > burst)
            *tokens = burst;
    }
    *stamp_ns = now;
    if (*tokens >= 1.0) {
        *tokens -= 1.0;
        return 0;
    }
    double wait = (1.0 - *tokens) / rate;
    return wait < 1.0 ? 1 : (uint32_t)(wait + 0.999);
}

void hd_broker_set_engine(struct hd_broker *b, struct hd_engine *e)
{
    b->engine = e;
    e->deliver = hd_broker_deliver;
    e->broker = b;
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
size_t hd_broker_connections(const struct hd_broker *b)
{
    return b->n_clocks; /* one clock per attached connection */
}

void hd_broker_reload(struct hd_broker *b, const struct hd_config *cfg)
{
    b->cfg = cfg;
    struct hd_history_limits lim = limits_of(cfg);
    hd_history_set_limits(b->hist, &lim);
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

static void request_write(struct hd_conn *c)
{
    if (!c->want_pending && !c->closing) {
        c->want_pending = true;
        c->ops->want_write(c);
    }
}

static void conn_close(struct hd_conn *c, int code, const char *reason)
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
            conn_close(b->clocks[i].c, HD_CLOSE_GOING_AWAY, "server shutting down");
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
        request_write(c);
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
        conn_close(c, 1011, "out of memory");
    free(e);
    if (++c->bad_in_row >= HD_MAX_BAD_IN_ROW)
        conn_close(c, HD_CLOSE_TOO_MANY_ERRORS, "too many protocol errors");
}

static void send_owned(struct hd_conn *c, char *text, size_t len)
{
    if (!text || hd_conn_send_text(c, text, len))
        conn_close(c, 1011, "out of memory");
    free(text);
}

static struct hd_conn_sub *find_sub(struct hd_conn *c, const char *pattern)
{
    for (uint32_t i = 0; i < c->n_subs; i++)
        if (strcmp(hd_sub_pattern(c->subs[i].reg), pattern) == 0)
            return &c->subs[i];
    return NULL;
}

/* True when one of c's subscriptions already brought (or will bring) this event. */
static bool already_covered(const struct hd_conn *c, const struct hd_msg *m)
{
    for (uint32_t i = 0; i < c->n_subs; i++)
        if (m->seq > c->subs[i].covered_from &&
            hd_pattern_match(hd_sub_pattern(c->subs[i].reg), m->topic))
            return true;
    return false;
}

/*
 * Pushes one event to a connection's queue. Returns false when the connection was closed
 * as a slow consumer instead.
 */
static bool enqueue_event(struct hd_conn *c, struct hd_msg *m, enum hd_push how)
{
    struct hd_broker *b = c->broker;
    int r = hd_queue_push(&c->q, m, how);
    if (r == 0) {
        m->queued++;
        request_write(c);
        return true;
    }
    /* Everything this connection still holds is lost to it: count it, free it at once. This
     * event was never queued to it, so its own delivery counters leave it out. */
    b->metrics.events_dropped[HD_DROP_SLOW_CONSUMER] += 1 + hd_queue_clear(&c->q);
    b->metrics.slow_consumer_disconnects++;
    hd_log_warn("slow consumer closed", "conn=%" PRIu64 " max_queue_bytes=%zu", c->id,
                c->q.max_bytes);
    conn_close(c, HD_CLOSE_SLOW_CONSUMER, "slow consumer");
    return false;
}

/*
 * Adds `pattern` to c and collects the replay after `since` (NULL: live only) into *replay
 * (malloc'd, borrowed message pointers, *n of them) for the caller to queue after its reply.
 * Both happen in one loop turn, so no live event can slip between them: live events carry
 * ids above the replay snapshot and reach the queue only after it.
 */
static int subscribe_core(struct hd_conn *c, const char *pattern, const char *since, bool *gap,
                          struct hd_msg ***replay_out, size_t *n_out, struct hd_error *err)
{
    struct hd_broker *b = c->broker;
    *gap = false;
    *replay_out = NULL;
    *n_out = 0;
    /* A broker without an authenticator (unit tests) allows everything. */
    enum hd_err right = b->auth ? hd_auth_can_subscribe(&c->identity, pattern) : HD_ERR_NONE;
    if (right != HD_ERR_NONE)
        return hd_error_set(err, right,
                            right == HD_ERR_UNAUTHORIZED
                                ? "subscribing to this pattern needs credentials"
                                : "these credentials may not subscribe to this pattern");
    if (find_sub(c, pattern))
        return 0; /* already subscribed: idempotent, and nothing is replayed twice */
    if (c->n_subs >= b->cfg->limits.max_subscriptions_per_connection)
        return hd_error_set(err, HD_ERR_LIMIT_EXCEEDED, "at most %u subscriptions per connection",
                            b->cfg->limits.max_subscriptions_per_connection);
    if (c->n_subs == c->cap_subs) {
        uint32_t ncap = c->cap_subs ? c->cap_subs * 2 : 1; /* most connections keep one */
        struct hd_conn_sub *n = realloc(c->subs, sizeof(*n) * ncap);
        if (!n)
            return hd_error_set(err, HD_ERR_INTERNAL, "out of memory");
        c->subs = n;
        c->cap_subs = ncap;
    }
    uint64_t upto = hd_history_last_seq(b->hist);
    uint64_t after = upto;
    struct hd_msg **replay = NULL;
    size_t n = 0;
    if (since) {
        after = hd_history_resolve(b->hist, pattern, hd_since_parse(since), gap);
        size_t count = hd_history_count(b->hist, pattern, after, upto);
        if (count) {
            replay = malloc(sizeof(*replay) * count);
            if (!replay)
                return hd_error_set(err, HD_ERR_INTERNAL, "out of memory");
            n = hd_history_collect(b->hist, pattern, after, upto, replay, count);
        }
    }
    struct hd_sub *s = hd_registry_add(b->reg, pattern, &c->subscriber);
    if (!s) {
        free(replay);
        return hd_error_set(err, HD_ERR_INTERNAL, "out of memory");
    }
    /* Drop what another subscription of this connection already brought, checked before
     * this one joins the list so only the others count. */
    size_t kept = 0;
    for (size_t i = 0; i < n; i++)
        if (!already_covered(c, replay[i]))
            replay[kept++] = replay[i];
    c->subs[c->n_subs++] = (struct hd_conn_sub){.reg = s, .covered_from = after};
    b->metrics.subscriptions++;
    *replay_out = replay;
    *n_out = kept;
    return 0;
}

/* Queues a replay; replayed bytes are shared with history, so they do not count against
 * the live limit (the replay is bounded by what history retains). Frees the array. */
static void push_replay(struct hd_conn *c, struct hd_msg **replay, size_t n)
{
    for (size_t i = 0; i < n && !c->closing; i++)
        enqueue_event(c, replay[i], HD_PUSH_SHARED);
    free(replay);
}

int hd_conn_subscribe(struct hd_conn *c, const char *pattern, const char *since, bool *gap,
                      struct hd_error *err)
{
    struct hd_msg **replay;
    size_t n;
    if (subscribe_core(c, pattern, since, gap, &replay, &n, err))
        return -1;
    hd_log_debug("subscribe", "conn=%" PRIu64 " pattern=%s replayed=%zu gap=%d", c->id, pattern, n,
                 *gap);
    push_replay(c, replay, n);
    return 0;
}

static int subscribe(struct hd_conn *c, bool has_id, int64_t id, const char *pattern,
                     const char *since, struct hd_error *err)
{
    struct hd_msg **replay;
    size_t n, len;
    bool gap;
    if (subscribe_core(c, pattern, since, &gap, &replay, &n, err))
        return -1;
    hd_log_debug("subscribe", "conn=%" PRIu64 " pattern=%s replayed=%zu gap=%d", c->id, pattern, n,
                 gap);
    char *text = hd_encode_ok_subscribe(has_id, id, pattern, n, gap, &len);
    send_owned(c, text, len);
    push_replay(c, replay, n);
    return 0;
}

static void unsubscribe(struct hd_conn *c, bool has_id, int64_t id, const char *pattern)
{
    struct hd_conn_sub *s = find_sub(c, pattern);
    if (s) {
        hd_registry_remove(c->broker->reg, s->reg);
        *s = c->subs[--c->n_subs];
        c->broker->metrics.subscriptions--;
    }
    size_t len;
    char *text = hd_encode_ok(has_id, id, &len);
    send_owned(c, text, len);
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

static void ws_publish_done(void *arg, int err, struct hd_msg *msg)
{
    struct pending_pub *p = arg;
    struct hd_conn *c = p->conn;
    pending_unlink(p);
    if (c && !c->closing) {
        size_t len;
        if (err) {
            struct hd_error e;
            hd_error_set(&e, HD_ERR_UNAVAILABLE, "the event could not be stored");
            send_error(c, p->has_id, p->id, &e);
        } else {
            char id[HD_EVENT_ID_LEN + 1];
            hd_event_id_format(msg->seq, id);
            char *text = hd_encode_ok_publish(p->has_id, p->id, id, msg->receivers, &len);
            send_owned(c, text, len);
        }
    }
    free(p);
}

static int ws_publish(struct hd_conn *c, const struct hd_cmd *cmd, struct hd_error *err)
{
    struct hd_broker *b = c->broker;
    enum hd_err right = b->auth ? hd_auth_can_publish(&c->identity, cmd->topic) : HD_ERR_NONE;
    if (right != HD_ERR_NONE)
        return hd_error_set(err, right,
                            right == HD_ERR_UNAUTHORIZED
                                ? "publishing to this topic needs credentials"
                                : "these credentials may not publish to this topic");
    uint32_t wait = hd_broker_rate_take(b, &c->tokens, &c->tokens_ns);
    if (wait)
        return hd_error_set(err, HD_ERR_RATE_LIMITED,
                            "more than %u events per second; retry in %u s",
                            b->cfg->limits.publish_rate, wait);
    size_t dlen;
    char *owned;
    const char *data = hd_cmd_data(cmd, &dlen, &owned);
    if (!data)
        return hd_error_set(err, HD_ERR_INTERNAL, "out of memory");
    if (dlen > b->cfg->limits.max_event_bytes) {
        free(owned);
        return hd_error_set(err, HD_ERR_TOO_LARGE, "data is %zu bytes, the limit is %u", dlen,
                            b->cfg->limits.max_event_bytes);
    }
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
    struct hd_pub pub = {
        .topic = cmd->topic, .event = cmd->event, .data_json = data, .data_len = dlen};
    int r = hd_broker_publish(b, &pub, ws_publish_done, p, err);
    free(owned);
    if (r) {
        pending_unlink(p);
        free(p);
    }
    return r;
}

void hd_conn_on_text(struct hd_conn *c, const char *buf, size_t len)
{
    if (c->closing)
        return;
    struct hd_cmd cmd;
    struct hd_error err = {0};
    if (hd_cmd_parse(buf, len, &cmd, &err)) {
        send_error(c, cmd.has_id, cmd.id, &err);
        return;
    }
    int r = 0;
    size_t n;
    switch (cmd.op) {
    case HD_OP_SUBSCRIBE:
        r = subscribe(c, cmd.has_id, cmd.id, cmd.topic, cmd.since, &err);
        break;
    case HD_OP_UNSUBSCRIBE:
        unsubscribe(c, cmd.has_id, cmd.id, cmd.topic);
        break;
    case HD_OP_PUBLISH:
        r = ws_publish(c, &cmd, &err);
        break;
    case HD_OP_PING: {
        char *text = hd_encode_pong(cmd.has_id, cmd.id, &n);
        send_owned(c, text, n);
        break;
    }
    }
    if (r)
        send_error(c, cmd.has_id, cmd.id, &err);
    else
        c->bad_in_row = 0;
    hd_cmd_clear(&cmd);
}

int hd_broker_publish(struct hd_broker *b, const struct hd_pub *pub, hd_pub_done_fn done, void *arg,
                      struct hd_error *err)
{
    if (b->draining || !b->engine)
        return hd_error_set(err, HD_ERR_UNAVAILABLE, "the server is shutting down"), -ESHUTDOWN;
    if ((uint64_t)b->metrics.queued_bytes > b->cfg->limits.max_total_queue_bytes) {
        b->metrics.publish_rejected++;
        hd_error_set(err, HD_ERR_UNAVAILABLE, "the server is overloaded; retry shortly");
        return -EBUSY;
    }
    int r = b->engine->ops->publish(b->engine, pub, done, arg);
    hd_log_debug("publish", "topic=%s event=%s bytes=%zu result=%d", pub->topic,
                 pub->event ? pub->event : "message", pub->data_len, r);
    if (r) {
        b->metrics.publish_rejected++;
        if (r == -ESHUTDOWN)
            hd_error_set(err, HD_ERR_UNAVAILABLE, "the server is shutting down");
        else if (r == -ENOMEM)
            hd_error_set(err, HD_ERR_INTERNAL, "out of memory");
        else
            hd_error_set(err, HD_ERR_UNAVAILABLE, "the event store is failing");
    }
    return r;
}

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
    if (enqueue_event(c, f->msg, HD_PUSH_LIVE))
        f->receivers++;
}

size_t hd_broker_deliver(void *broker, struct hd_msg *msg)
{
    struct hd_broker *b = broker;
    if (hd_history_append(b->hist, msg))
        hd_log_warn("event not retained in history", "reason=ENOMEM seq=%" PRIu64, msg->seq);
    b->metrics.events_published++;
    b->metrics.history_events = (int64_t)hd_history_events(b->hist);
    b->metrics.history_bytes = (int64_t)hd_history_bytes(b->hist);
    struct fan f = {.msg = msg};
    hd_registry_match(b->reg, msg->topic, fan_one, &f);
    return f.receivers;
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
        conn_close(k->c, 0, "heartbeat timeout");
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
            conn_close(k->c, HD_CLOSE_POLICY, "token expired");
        }
        if (i < b->n_clocks && b->clocks[i].pings)
            heartbeat(b, &b->clocks[i], now_ms);
    }
    hd_history_expire(b->hist, now);
    b->metrics.history_events = (int64_t)hd_history_events(b->hist);
    b->metrics.history_bytes = (int64_t)hd_history_bytes(b->hist);
}

void hd_conn_discard_queue(struct hd_conn *c)
{
    struct hd_msg *m;
    while ((m = hd_queue_pop(&c->q))) {
        if (m->seq && m->queued)
            m->queued--; /* the long poll's answer, built from history, counts it instead */
        hd_msg_unref(m);
    }
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
            conn_close(c, HD_CLOSE_POLICY, "credentials no longer valid");
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
            hd_registry_remove(b->reg, c->subs[i].reg);
            c->subs[i] = c->subs[--c->n_subs];
            b->metrics.subscriptions--;
        }
    }
}
