/* SPDX-License-Identifier: MIT */
/*
 * Subscriptions as a connection sees them: adding a pattern with its replay (from history,
 * or from the engine when history no longer holds the cursor, while live events wait), the
 * ok, gap and unsubscribed notices in each transport's form (a WebSocket frame, an SSE
 * event), and ending a subscription the rules no longer allow. The no-duplicate, no-gap
 * boundary between replay and live events is kept here.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker_int.h"
#include "log.h"
#include "topic.h"

static struct hd_conn_sub *find_sub(struct hd_conn *c, const char *pattern)
{
    for (uint32_t i = 0; i < c->n_subs; i++)
        if (strcmp(hd_sub_pattern(c->subs[i].reg), pattern) == 0)
            return &c->subs[i];
    return NULL;
}

/* True when one of c's subscriptions other than `self` (NULL: none excepted) already
 * brought (or will bring) this event. */
static bool already_covered(const struct hd_conn *c, const struct hd_msg *m,
                            const struct hd_sub *self)
{
    for (uint32_t i = 0; i < c->n_subs; i++)
        if (c->subs[i].reg != self && m->seq > c->subs[i].covered_from &&
            hd_pattern_match(hd_sub_pattern(c->subs[i].reg), m->topic))
            return true;
    return false;
}

/*
 * Adds `pattern` to c and collects the replay after `since` (NULL: live only) into *replay
 * (malloc'd, borrowed message pointers, *n of them) for the caller to queue after its reply.
 * Both happen in one loop turn, so no live event can slip between them: live events carry
 * ids above the replay snapshot and reach the queue only after it.
 */
static enum hd_err subscribe_core(struct hd_conn *c, const char *pattern, const char *since,
                                  bool *gap, uint64_t *live_from, struct hd_msg ***replay_out,
                                  size_t *n_out, uint64_t *engine_after, struct hd_error *err)
{
    struct hd_broker *b = c->broker;
    *gap = false;
    *replay_out = NULL;
    *n_out = 0;
    *live_from = hd_history_last_seq(b->hist);
    *engine_after = 0;
    /* A broker without an authenticator (unit tests) allows everything. */
    enum hd_err right = b->auth ? hd_auth_can_subscribe(&c->identity, pattern) : HD_ERR_NONE;
    if (right != HD_ERR_NONE)
        return hd_error_set(err, right,
                            right == HD_ERR_UNAUTHORIZED
                                ? "subscribing to this pattern needs credentials"
                                : "these credentials may not subscribe to this pattern");
    if (find_sub(c, pattern))
        return HD_ERR_NONE; /* already subscribed: idempotent, nothing is replayed twice */
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
        struct hd_since cur = hd_since_parse(since);
        after = hd_history_resolve(b->hist, pattern, cur, gap);
        /* A well-formed cursor older than history: the engine may still hold what follows
         * it (a cluster's stream). Then it replays, and live events wait for it. */
        if (*gap && cur.kind == HD_SINCE_ID && cur.seq < upto && b->engine &&
            b->engine->ops->replay) {
            *engine_after = cur.seq;
            *gap = false;
            after = cur.seq;
        }
        size_t count = *engine_after ? 0 : hd_history_count(b->hist, pattern, after, upto);
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
        if (!already_covered(c, replay[i], NULL))
            replay[kept++] = replay[i];
    c->subs[c->n_subs++] = (struct hd_conn_sub){.reg = s, .covered_from = after};
    b->metrics.subscriptions++;
    *replay_out = replay;
    *n_out = kept;
    return HD_ERR_NONE;
}

/* Queues a replay; replayed bytes are shared with history, so they do not count against
 * the live limit (the replay is bounded by what history retains). Frees the array. */
static void push_replay(struct hd_conn *c, struct hd_msg **replay, size_t n)
{
    for (size_t i = 0; i < n && !c->closing; i++)
        hd__conn_enqueue_event(c, replay[i], HD_PUSH_SHARED);
    free(replay);
}

/* Queues a notice on an SSE stream: `event: <name>` with the JSON frame as its data. */
static void send_sse_notice(struct hd_conn *c, const char *name, char *json, size_t len)
{
    size_t cap = len + strlen(name) + 24;
    char *text = json ? malloc(cap) : NULL;
    if (text) {
        int n = snprintf(text, cap, "event: %s\ndata: %s\n\n", name, json);
        hd__conn_send_owned(c, text, (size_t)n);
    } else {
        hd__conn_close(c, HD_CLOSE_INTERNAL, "out of memory");
    }
    free(json);
}

/* Tells c that events of `pattern` before the cursor `next` may be missing. */
static void send_gap(struct hd_conn *c, const char *pattern, uint64_t next)
{
    char id[HD_EVENT_ID_LEN + 1];
    hd_event_id_format(next, id);
    size_t len;
    char *json = hd_encode_gap(pattern, id, &len);
    if (c->kind == HD_CONN_SSE)
        send_sse_notice(c, "gap", json, len);
    else
        hd__conn_send_owned(c, json, len);
}

/* ---- replay from the engine ------------------------------------------------------------ */

/*
 * An engine replay in flight for one new subscription. Until every replay of a connection
 * is done, its live events wait in c->held (bounded like its queue), so the replay is
 * queued first and nothing is missed or repeated at the boundary.
 */
struct replay_wait {
    struct hd_broker *b;
    struct hd_conn *c;  /* NULL once the connection went away */
    struct hd_sub *reg; /* the subscription it fills */
    uint64_t after;     /* the client's cursor */
    uint64_t upto;      /* where the live part began */
    bool ws_reply, has_id;
    int64_t id;
    struct replay_wait *prev, *next; /* b->replays */
    char pattern[];
};

static void replay_unlink(struct replay_wait *rw)
{
    struct hd_broker *b = rw->b;
    if (rw->prev)
        rw->prev->next = rw->next;
    else
        b->replays = rw->next;
    if (rw->next)
        rw->next->prev = rw->prev;
}

/* Moves what waited behind the replays into the queue, in the order it arrived. */
static void release_held(struct hd_conn *c)
{
    struct hd_queue *held = c->held;
    c->held = NULL;
    struct hd_msg *m;
    while ((m = hd_queue_pop(held))) {
        if (!c->closing && !hd_queue_push(&c->q, m, HD_PUSH_FORCE))
            hd__conn_request_write(c);
        hd_msg_unref(m);
    }
    hd_queue_clear(held);
    free(held);
}

void hd__conn_cancel_replays(struct hd_conn *c)
{
    for (struct replay_wait *rw = c->broker->replays; rw; rw = rw->next)
        if (rw->c == c)
            rw->c = NULL;
    if (c->held) {
        c->broker->metrics.events_dropped[HD_DROP_DISCONNECT] += hd_queue_clear(c->held);
        free(c->held);
        c->held = NULL;
    }
    c->replays = 0;
}

static bool has_sub(const struct hd_conn *c, const struct hd_sub *reg)
{
    for (uint32_t i = 0; i < c->n_subs; i++)
        if (c->subs[i].reg == reg)
            return true;
    return false;
}

static void replay_done(void *arg, int err, struct hd_msg **msgs, size_t n, bool gap)
{
    struct replay_wait *rw = arg;
    struct hd_conn *c = rw->c;
    replay_unlink(rw);
    if (!c) {
        free(rw);
        return;
    }
    struct hd_broker *b = c->broker;
    struct hd_msg **local = NULL;
    if (err) {
        /* Serve what history has, and say that more may be missing. */
        hd_log_warn("engine replay failed; serving history with a gap", "conn=%" PRIu64 " err=%d",
                    c->id, err);
        gap = true;
        size_t count = hd_history_count(b->hist, rw->pattern, 0, rw->upto);
        local = count ? malloc(sizeof(*local) * count) : NULL;
        n = local ? hd_history_collect(b->hist, rw->pattern, 0, rw->upto, local, count) : 0;
        msgs = local;
    }
    bool live = has_sub(c, rw->reg) && !c->closing;
    size_t kept = 0;
    for (size_t i = 0; live && i < n; i++)
        if (msgs[i]->seq > (err ? 0 : rw->after) && msgs[i]->seq <= rw->upto &&
            !already_covered(c, msgs[i], rw->reg))
            kept++;
    if (rw->ws_reply) {
        char next[HD_EVENT_ID_LEN + 1];
        hd_event_id_format(rw->upto, next);
        size_t len = 0;
        char *text = hd_encode_ok_subscribe(rw->has_id, rw->id, rw->pattern, kept, gap, next, &len);
        hd__conn_send_owned(c, text, len);
    } else if (gap && c->kind == HD_CONN_SSE) {
        send_gap(c, rw->pattern, 0);
    }
    /* Not part of history: the bytes count against the queue (FORCE: a replay is bounded
     * by what the engine sends, and must not close the reader halfway). */
    for (size_t i = 0; live && i < n && !c->closing; i++)
        if (msgs[i]->seq > (err ? 0 : rw->after) && msgs[i]->seq <= rw->upto &&
            !already_covered(c, msgs[i], rw->reg))
            hd__conn_enqueue_event(c, msgs[i], HD_PUSH_FORCE);
    free(local);
    b->metrics.engine_replays++;
    if (--c->replays == 0 && c->held)
        release_held(c);
    free(rw);
}

static enum hd_err start_replay(struct hd_conn *c, const char *pattern, uint64_t after,
                                uint64_t upto, bool ws_reply, bool has_id, int64_t id,
                                struct hd_error *err)
{
    struct hd_broker *b = c->broker;
    size_t plen = strlen(pattern);
    struct replay_wait *rw = calloc(1, sizeof(*rw) + plen + 1);
    if (!rw)
        return hd_error_set(err, HD_ERR_INTERNAL, "out of memory");
    if (!c->held) {
        c->held = malloc(sizeof(*c->held));
        if (!c->held) {
            free(rw);
            return hd_error_set(err, HD_ERR_INTERNAL, "out of memory");
        }
        hd_queue_init(c->held, b->cfg->limits.max_queue_bytes);
        c->held->shared_total = &b->metrics.queued_bytes;
    }
    struct hd_conn_sub *sub = find_sub(c, pattern);
    *rw = (struct replay_wait){.b = b,
                               .c = c,
                               .reg = sub ? sub->reg : NULL,
                               .after = after,
                               .upto = upto,
                               .ws_reply = ws_reply,
                               .has_id = has_id,
                               .id = id,
                               .next = b->replays};
    memcpy(rw->pattern, pattern, plen + 1);
    if (b->replays)
        b->replays->prev = rw;
    b->replays = rw;
    c->replays++;
    int r = b->engine->ops->replay(b->engine, pattern, after, upto, replay_done, rw);
    if (r)
        replay_done(rw, r, NULL, 0, true); /* answers from history, with a gap */
    return HD_ERR_NONE;
}

enum hd_err hd_conn_subscribe(struct hd_conn *c, const char *pattern, const char *since, bool *gap,
                              struct hd_error *err)
{
    struct hd_msg **replay;
    size_t n;
    uint64_t live_from, engine_after;
    /* A long poll answers from history itself: it only waits for what comes next. */
    enum hd_err e = subscribe_core(c, pattern, c->kind == HD_CONN_POLL ? NULL : since, gap,
                                   &live_from, &replay, &n, &engine_after, err);
    if (e != HD_ERR_NONE)
        return e;
    hd_log_debug("subscribe", "conn=%" PRIu64 " pattern=%s replayed=%zu gap=%d", c->id, pattern, n,
                 *gap);
    if (engine_after)
        return start_replay(c, pattern, engine_after, live_from, false, false, 0, err);
    if (*gap && c->kind == HD_CONN_SSE)
        send_gap(c, pattern, 0); /* before the replay: everything retained follows it */
    push_replay(c, replay, n);
    return HD_ERR_NONE;
}

enum hd_err hd__conn_subscribe_ws(struct hd_conn *c, bool has_id, int64_t id, const char *pattern,
                                  const char *since, struct hd_error *err)
{
    struct hd_msg **replay;
    size_t n, len;
    bool gap;
    uint64_t live_from, engine_after;
    enum hd_err e =
        subscribe_core(c, pattern, since, &gap, &live_from, &replay, &n, &engine_after, err);
    if (e != HD_ERR_NONE)
        return e;
    hd_log_debug("subscribe", "conn=%" PRIu64 " pattern=%s replayed=%zu gap=%d", c->id, pattern, n,
                 gap);
    if (engine_after) /* the ok follows the engine's answer */
        return start_replay(c, pattern, engine_after, live_from, true, has_id, id, err);
    char next[HD_EVENT_ID_LEN + 1];
    hd_event_id_format(live_from, next);
    char *text = hd_encode_ok_subscribe(has_id, id, pattern, n, gap, next, &len);
    hd__conn_send_owned(c, text, len);
    push_replay(c, replay, n);
    return HD_ERR_NONE;
}

void hd__conn_unsubscribe_ws(struct hd_conn *c, bool has_id, int64_t id, const char *pattern)
{
    struct hd_conn_sub *s = find_sub(c, pattern);
    if (s) {
        hd_registry_remove(c->broker->reg, s->reg);
        *s = c->subs[--c->n_subs];
        c->broker->metrics.subscriptions--;
    }
    size_t len;
    char *text = hd_encode_ok(has_id, id, &len);
    hd__conn_send_owned(c, text, len);
}

/*
 * Sends a connection its notice that the server ended one subscription, then drops it
 * (PROTOCOL.md section 7: never silently). An SSE stream or a long poll has exactly one
 * pattern, so it ends too: the stream after the notice, the poll with the error.
 */
void hd__conn_end_subscription(struct hd_conn *c, uint32_t i, enum hd_err code, const char *why)
{
    struct hd_broker *b = c->broker;
    const char *pattern = hd_sub_pattern(c->subs[i].reg);
    size_t len;
    char *json = hd_encode_unsubscribed(pattern, code, why, &len);
    hd_log_info("subscription ended by the server", "conn=%" PRIu64 " reason=%s", c->id,
                hd_err_name(code));
    if (c->kind == HD_CONN_WS) {
        hd__conn_send_owned(c, json, len);
    } else if (c->kind == HD_CONN_SSE) {
        send_sse_notice(c, "unsubscribed", json, len);
        hd__conn_close(c, HD_CLOSE_POLICY, "subscription ended by the server");
    } else {
        free(json);
        c->ended = code;
        hd__conn_close(c, HD_CLOSE_POLICY, "subscription ended by the server");
    }
    hd_registry_remove(b->reg, c->subs[i].reg);
    c->subs[i] = c->subs[--c->n_subs];
    b->metrics.subscriptions--;
}

void hd__broker_gap(struct hd_broker *b, uint64_t next_seq)
{
    uint64_t cursor = next_seq ? next_seq - 1 : 0;
    for (uint32_t k = b->n_clocks; k-- > 0;) { /* backwards: see hd_broker_drain */
        if (k >= b->n_clocks)
            continue;
        struct hd_conn *c = b->clocks[k].c;
        if (c->closing)
            continue;
        if (c->kind == HD_CONN_POLL) {
            if (c->n_subs && !c->want_pending) { /* it answers from history, gap included */
                c->want_pending = true;
                c->ops->want_write(c);
            }
            continue;
        }
        for (uint32_t i = 0; i < c->n_subs && !c->closing; i++)
            send_gap(c, hd_sub_pattern(c->subs[i].reg), cursor);
    }
}
