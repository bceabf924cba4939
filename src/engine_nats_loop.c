/* SPDX-License-Identifier: MIT */
/*
 * The NATS engine's loop side: publishes in flight, their acks and retries, the feed into
 * the sink (deliveries, recovery, gaps, epochs), readiness and gauges. Loop thread only
 * (engine_nats_int.h).
 */
#include "engine_nats_int.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "fanout.h"
#include "log.h"
#include "metrics.h"
#include "natsid.h"

/* Publishes in flight: an open-addressing table keyed by reply token. */

static size_t slot_of(const struct nats_engine *e, uint64_t token)
{
    uint64_t h = token;
    h ^= h >> 17;
    h *= 0x9E3779B97F4A7C15ULL;
    return (size_t)(h >> 20) & (e->pubs_cap - 1);
}

static int pubs_grow(struct nats_engine *e)
{
    size_t cap = e->pubs_cap ? e->pubs_cap * 2 : 1024;
    struct pub **old = e->pubs, **t = calloc(cap, sizeof(*t));
    size_t old_cap = e->pubs_cap;
    if (!t)
        return -ENOMEM;
    e->pubs = t;
    e->pubs_cap = cap;
    for (size_t i = 0; i < old_cap; i++) {
        if (!old[i])
            continue;
        size_t s = slot_of(e, old[i]->token);
        while (e->pubs[s])
            s = (s + 1) & (cap - 1);
        e->pubs[s] = old[i];
    }
    free(old);
    return 0;
}

int ne_pubs_put(struct nats_engine *e, struct pub *p)
{
    if ((e->n_pubs + 1) * 2 > e->pubs_cap && pubs_grow(e) < 0)
        return -ENOMEM;
    size_t s = slot_of(e, p->token);
    while (e->pubs[s])
        s = (s + 1) & (e->pubs_cap - 1);
    e->pubs[s] = p;
    e->n_pubs++;
    return 0;
}

struct pub *ne_pubs_find(struct nats_engine *e, uint64_t token, size_t *slot)
{
    if (!e->pubs_cap)
        return NULL;
    for (size_t s = slot_of(e, token); e->pubs[s]; s = (s + 1) & (e->pubs_cap - 1)) {
        if (e->pubs[s]->token == token) {
            *slot = s;
            return e->pubs[s];
        }
    }
    return NULL;
}

/* Backward-shift deletion keeps probe chains intact without tombstones. */
void ne_pubs_del_slot(struct nats_engine *e, size_t s)
{
    size_t mask = e->pubs_cap - 1;
    e->pubs[s] = NULL;
    e->n_pubs--;
    for (size_t j = (s + 1) & mask; e->pubs[j]; j = (j + 1) & mask) {
        size_t home = slot_of(e, e->pubs[j]->token);
        /* Move j back to s when its home is not in the (s, j] range. */
        if ((j > s && (home <= s || home > j)) || (j < s && home <= s && home > j)) {
            e->pubs[s] = e->pubs[j];
            e->pubs[j] = NULL;
            s = j;
        }
    }
}

void ne_update_gauges(struct nats_engine *e)
{
    if (!e->metrics)
        return;
    e->metrics->engine_connected = e->ready;
    e->metrics->engine_publishes_pending = (int64_t)e->n_pubs;
    e->metrics->engine_feed_lag =
        e->stream_last_seq > e->last_seq ? (int64_t)(e->stream_last_seq - e->last_seq) : 0;
}
static void set_ready(struct nats_engine *e, bool ready)
{
    if (e->ready == ready)
        return;
    e->ready = ready;
    hd_log_info(ready ? "cluster engine ready" : "cluster engine not ready", "node=%s stream=%s",
                e->node, e->stream);
    ne_update_gauges(e);
    if (e->base.sink.ready)
        e->base.sink.ready(e->base.sink.broker, ready);
}

static void maybe_ready(struct nats_engine *e)
{
    set_ready(e, e->connected && e->attached && !e->recovering && !e->fatal && !e->stopping);
}

void ne_pub_finish(struct nats_engine *e, struct pub *p, int err, uint64_t seq, int64_t time_ms,
                   bool duplicate)
{
    size_t slot;
    if (ne_pubs_find(e, p->token, &slot) == p)
        ne_pubs_del_slot(e, slot);
    natsMsg_Destroy(p->msg);
    struct hd_pub_ack a = {.seq = seq, .time_ms = time_ms, .duplicate = duplicate};
    p->ack(p->arg, err, err == 0 ? &a : NULL);
    free(p);
    ne_update_gauges(e);
}

int ne_send_pub(struct nats_engine *e, struct pub *p)
{
    p->attempts++;
    p->ack_by_ns = hd_now_ns() + (uint64_t)ACK_WAIT_MS * 1000000;
    natsStatus s = natsConnection_PublishMsg(e->nc, p->msg);
    if (s == NATS_OK)
        return 0;
    return s == NATS_TIMEOUT ? -EAGAIN : -EIO;
}

/* What JetStream answered to a publish. */
struct ack {
    bool ok, duplicate;
    uint64_t seq;
    natsStatus st; /* when not ok */
    int jerr;      /* JetStream's error code, when it gave one */
};

/* Reads a publish's answer: {"stream":..,"seq":N[,"duplicate":true]} or {"error":{"code":..,
 * "err_code":..}}. */
static void parse_ack(natsMsg *m, struct ack *a)
{
    *a = (struct ack){.st = NATS_ERR};
    int len = natsMsg_GetDataLength(m);
    json_t *j = len > 0 ? json_loadb(natsMsg_GetData(m), (size_t)len, 0, NULL) : NULL;
    json_t *err = json_object_get(j, "error"), *seq = json_object_get(j, "seq");
    if (err) {
        a->jerr = (int)json_integer_value(json_object_get(err, "err_code"));
    } else if (json_is_integer(seq) && json_integer_value(seq) > 0) {
        a->ok = true;
        a->seq = (uint64_t)json_integer_value(seq);
        a->duplicate = json_is_true(json_object_get(j, "duplicate"));
    }
    json_decref(j);
}

static bool retriable(const struct ack *it)
{
    switch (it->st) {
    case NATS_TIMEOUT:
    case NATS_NO_RESPONDERS:
    case NATS_CONNECTION_CLOSED:
    case NATS_CONNECTION_DISCONNECTED:
    case NATS_NOT_YET_CONNECTED:
    case NATS_STALE_CONNECTION:
    case NATS_IO_ERROR:
        return true;
    default:
        /* JetStream's own "try again" answers (no quorum, leader election). */
        return it->jerr == JSClusterNotAvailErr || it->jerr == JSStreamOfflineErr;
    }
}

static void on_retry_timer(uv_timer_t *t);

/* Takes `p` off the retry list (an answer to an earlier attempt came after all). */
static void retry_unlink(struct nats_engine *e, struct pub *p)
{
    for (struct pub **pp = &e->retry_head; *pp; pp = &(*pp)->next_retry) {
        if (*pp == p) {
            *pp = p->next_retry;
            e->n_retrying--;
            p->retrying = false;
            return;
        }
    }
}

static void handle_ack(struct nats_engine *e, struct pub *p, const struct ack *it)
{
    if (p->retrying) {
        if (!it->ok)
            return; /* already waiting to be sent again */
        retry_unlink(e, p);
    }
    if (it->ok && it->duplicate) {
        /* The first publish with this key holds the id; its time is in its header. */
        struct job *j = calloc(1, sizeof(*j));
        if (j) {
            p->awaiting_time = true;
            *j = (struct job){.kind = JOB_DUP_TIME, .pub = p, .seq = it->seq};
            ne_job_post(e, j);
            return;
        }
        ne_pub_finish(e, p, 0, hd_natsid_make(e->ep_base, it->seq), p->time_ms, true);
        return;
    }
    if (it->ok) {
        ne_pub_finish(e, p, 0, hd_natsid_make(e->ep_base, it->seq), p->time_ms, false);
        return;
    }
    if (retriable(it) && !e->stopping && hd_now_ns() < p->deadline_ns) {
        hd_log_debug("publish not acknowledged yet; retrying", "status=\"%s\" attempts=%u",
                     natsStatus_GetText(it->st), p->attempts);
        p->retrying = true;
        unsigned shift = p->attempts < 4 ? p->attempts : 4;
        p->retry_at_ns = hd_now_ns() + ((uint64_t)RETRY_EVERY_MS << shift) / 2 * 1000000;
        e->n_retrying++;
        p->next_retry = e->retry_head;
        e->retry_head = p;
        if (!uv_is_active((uv_handle_t *)&e->retry_timer))
            uv_timer_start(&e->retry_timer, on_retry_timer, RETRY_EVERY_MS, RETRY_EVERY_MS);
        return;
    }
    hd_log_warn("publish failed", "status=\"%s\" js_error=%d attempts=%u",
                natsStatus_GetText(it->st), (int)it->jerr, p->attempts);
    /* Sent at least once and never refused outright: it may exist; a retry is safe. */
    ne_pub_finish(e, p, retriable(it) ? -ETIMEDOUT : -EIO, 0, 0, false);
}

static void on_retry_timer(uv_timer_t *t)
{
    struct nats_engine *e = t->data;
    struct pub *list = e->retry_head, *keep = NULL;
    e->retry_head = NULL;
    uint64_t now = hd_now_ns();
    while (list) {
        struct pub *p = list;
        list = p->next_retry;
        if (now >= p->deadline_ns || e->stopping) {
            /* Sent at least once: it may exist, so not -ESHUTDOWN (engine.h). */
            e->n_retrying--;
            ne_pub_finish(e, p, -ETIMEDOUT, 0, 0, false);
            continue;
        }
        if (now >= p->retry_at_ns && e->ready && ne_send_pub(e, p) == 0) {
            e->n_retrying--;
            p->retrying = false;
            continue;
        }
        p->next_retry = keep;
        keep = p;
    }
    e->retry_head = keep;
    if (!keep)
        uv_timer_stop(t);
}

/* One stream message at `seq` (NULL msg: not a Herald event, but its sequence counts) with
 * `pending` more behind it in the consumer. msg and key are borrowed. */
static void handle_feed(struct nats_engine *e, uint64_t seq, uint64_t pending, struct hd_msg *msg,
                        const char *key)
{
    switch (hd_natsid_follow(e->last_seq, e->start_seq, seq)) {
    case HD_FOLLOW_DUP:
        return;
    case HD_FOLLOW_GAP:
        hd_log_warn("the stream no longer holds events this node missed",
                    "from_seq=%llu to_seq=%llu", (unsigned long long)e->last_seq + 1,
                    (unsigned long long)seq - 1);
        if (e->base.sink.gap)
            e->base.sink.gap(e->base.sink.broker, hd_natsid_make(e->ep_base, seq));
        break;
    case HD_FOLLOW_NEXT:
        break;
    }
    e->last_seq = seq;
    /* The worker's next attach starts after it; an older epoch's sequence must not count. */
    pthread_mutex_lock(&e->feed_lock);
    if (e->feed_base == e->ep_base)
        e->feed_seq = seq;
    pthread_mutex_unlock(&e->feed_lock);
    if (msg) {
        if (e->recovering && seq <= e->recover_until) {
            if (e->base.sink.recovered)
                e->base.sink.recovered(e->base.sink.broker, msg, key);
        } else if (e->base.sink.deliver) {
            e->base.sink.deliver(e->base.sink.broker, msg, key);
        }
    }
    if (e->recovering && seq >= e->recover_until) {
        e->recovering = false;
        hd_log_info("recovered history from the stream", "last_seq=%llu",
                    (unsigned long long)e->last_seq);
        maybe_ready(e);
    }
    if (e->stream_last_seq < seq + pending)
        e->stream_last_seq = seq + pending;
    ne_update_gauges(e);
}

void ne_retire_sub(struct nats_engine *e, natsSubscription *sub)
{
    struct job *j =
        e->worker_started && !atomic_load(&e->worker_done) ? calloc(1, sizeof(*j)) : NULL;
    if (!j) {
        natsSubscription_Destroy(sub);
        return;
    }
    *j = (struct job){.kind = JOB_RETIRE, .sub = sub};
    ne_job_post(e, j);
}

static void ne_on_turn_more(uv_idle_t *h)
{
    (void)h; /* an active idle handle is what keeps the loop's poll from waiting */
}

/* One publish answer: to <reply_prefix><token>. */
static void take_ack(struct nats_engine *e, natsMsg *m)
{
    size_t plen = strlen(e->reply_prefix), slot;
    const char *subj = natsMsg_GetSubject(m);
    uint64_t token = 0;
    struct pub *p = NULL;
    if (strncmp(subj, e->reply_prefix, plen) == 0 && hd_natsid_parse_u64(subj + plen, &token) == 0)
        p = ne_pubs_find(e, token, &slot);
    /* None: a later answer to a publish already answered (a retry's duplicate). */
    if (p && !p->awaiting_time) {
        struct ack a;
        parse_ack(m, &a);
        handle_ack(e, p, &a);
    }
}

/* One stream message from the feed's consumer. */
static void take_feed(struct nats_engine *e, natsMsg *m)
{
    jsMsgMetaData *meta = NULL;
    if (natsMsg_GetMetaData(&meta, m) != NATS_OK)
        return;
    uint64_t seq = meta->Sequence.Stream, pending = meta->NumPending;
    jsMsgMetaData_Destroy(meta);
    if (seq <= e->last_seq)
        return; /* a duplicate: not worth decoding */
    char *key = NULL;
    struct hd_msg *ev = ne_event_of(e, m, hd_natsid_make(e->ep_base, seq), &key);
    handle_feed(e, seq, pending, ev, key);
    hd_msg_unref(ev);
    free(key);
}

/* Takes what libnats queued on *sub this turn, a bounded batch. Returns true when more are
 * waiting. */
static bool drain(struct nats_engine *e, natsSubscription *const *sub,
                  void (*take)(struct nats_engine *, natsMsg *))
{
    int waiting = 0;
    if (!*sub || natsSubscription_GetPending(*sub, &waiting, NULL) != NATS_OK || waiting == 0)
        return false;
    for (int i = 0; i < DRAIN_BATCH && *sub; i++) {
        natsMsg *m = NULL;
        natsStatus st = natsSubscription_NextMsg(&m, *sub, 0);
        /* Notices, each given once. A no-responders answer (no stream leader) is consumed
         * without the message, so we cannot tell whose it was: that publish times out and is
         * retried. Past a slow-consumer drop or a consumer reset by libnats the messages stay
         * queued, and the feed repairs itself by sequence (handle_feed). */
        if (st == NATS_NO_RESPONDERS || st == NATS_SLOW_CONSUMER || st == NATS_MISMATCH)
            continue;
        if (st != NATS_OK)
            return false;
        take(e, m);
        natsMsg_Destroy(m);
    }
    return *sub && natsSubscription_GetPending(*sub, &waiting, NULL) == NATS_OK && waiting > 0;
}

void ne_on_turn(uv_check_t *c)
{
    struct nats_engine *e = c->data;
    bool more = drain(e, &e->ack_sub, take_ack);
    more = drain(e, &e->feed_sub, take_feed) || more;
    /* More than a batch: come back after the next turn's I/O without sleeping in between. */
    if (more)
        uv_idle_start(&e->turn_more, ne_on_turn_more);
    else
        uv_idle_stop(&e->turn_more);
}

/* Publishes whose answer is overdue are treated as timed out (and so retried): the answer may
 * have been lost with a server. Scanned from the check timer: the table is small and the
 * wait long. */
static void expire_acks(struct nats_engine *e)
{
    uint64_t now = hd_now_ns();
    for (size_t i = 0; i < e->pubs_cap; i++) {
        struct pub *p = e->pubs[i];
        if (p && !p->retrying && !p->awaiting_time && now >= p->ack_by_ns)
            handle_ack(e, p, &(struct ack){.st = NATS_TIMEOUT});
    }
}

static void handle_attached(struct nats_engine *e, struct item *it)
{
    if (e->stopping)
        return; /* ne_item_free destroys the consumer */
    if (e->feed_sub)
        ne_retire_sub(e, e->feed_sub);
    e->feed_sub = it->sub;
    it->sub = NULL;
    enum hd_epoch_change ch =
        hd_natsid_epoch_change(e->ep_base, hd_natsid_make(e->ep_base, e->last_seq), it->base);
    e->attached = true;
    e->stream_last_seq = it->last_seq;
    if (!e->recover_base_sent) {
        /* First attach of this node's life: history starts at the recovery point. */
        e->recover_base_sent = true;
        e->ep_base = it->base;
        e->start_seq = it->start_seq;
        e->last_seq = 0;
        e->recover_until = it->last_seq;
        e->recovering = it->last_seq >= it->start_seq;
        if (e->base.sink.recover_base)
            e->base.sink.recover_base(e->base.sink.broker, hd_natsid_make(it->base, it->start_seq));
        hd_log_info("attached to the stream",
                    "stream=%s first_seq=%llu last_seq=%llu "
                    "recovering_from=%llu",
                    e->stream, (unsigned long long)it->first_seq, (unsigned long long)it->last_seq,
                    (unsigned long long)it->start_seq);
    } else if (ch != HD_EPOCH_SAME) {
        if (ch == HD_EPOCH_OVERLAP)
            hd_log_error("the recreated stream's ids overlap ones already delivered (a NATS "
                         "server clock behind?); events up to the old ids are not delivered",
                         "stream=%s", e->stream);
        else
            hd_log_warn("the stream was recreated: a new epoch; older cursors resolve with a gap",
                        "stream=%s", e->stream);
        e->ep_base = it->base;
        e->start_seq = it->start_seq;
        e->last_seq = 0;
        e->recovering = false;
        if (e->base.sink.gap)
            e->base.sink.gap(e->base.sink.broker, hd_natsid_make(it->base, it->start_seq));
    }
    maybe_ready(e);
    ne_update_gauges(e);
}

static void handle_checked(struct nats_engine *e, struct item *it)
{
    if (!it->present || (e->ep_base && it->base != e->ep_base)) {
        /* Deleted, or deleted and created again: attach anew (creating it when missing). */
        if (!it->present)
            hd_log_warn("the stream is gone; creating it again", "stream=%s", e->stream);
        e->attached = false;
        maybe_ready(e);
        ne_job_post_once(e, JOB_ATTACH);
        return;
    }
    if (it->last_seq > e->stream_last_seq)
        e->stream_last_seq = it->last_seq;
    /* Recovery ends with the last event that existed at start; if the limits removed it
     * before we read it, nothing will arrive to say so: the stream's head does. */
    if (e->recovering && it->first_seq > e->recover_until) {
        e->recovering = false;
        maybe_ready(e);
    }
    ne_update_gauges(e);
}

void ne_set_connected(struct nats_engine *e, bool up)
{
    if (e->connected != up)
        hd_log_info(up ? "connected to NATS" : "lost NATS", "node=%s", e->node);
    e->connected = up;
    if (!up)
        e->attached = false;
    else if (!e->stopping)
        ne_job_post_once(e, JOB_ATTACH);
    maybe_ready(e);
}

void ne_handle_item(struct nats_engine *e, struct item *it)
{
    switch (it->kind) {
    case IT_CONN:
        ne_set_connected(e, it->up);
        break;
    case IT_REACHABLE: /* the first connection, made after start */
        if (!e->nc && !e->stopping && ne_connect_try(e, it->server) == 0)
            ne_set_connected(e, true);
        break;
    case IT_ATTACHED:
        handle_attached(e, it);
        break;
    case IT_DETACHED:
        e->attached = false;
        maybe_ready(e);
        if (e->connected && !e->stopping)
            ne_job_post_once(e, JOB_ATTACH);
        break;
    case IT_FATAL:
        e->fatal = true;
        maybe_ready(e);
        break;
    case IT_CHECKED:
        handle_checked(e, it);
        break;
    case IT_DUP_TIME: {
        struct pub *p = it->pub;
        ne_pub_finish(e, p, 0, hd_natsid_make(e->ep_base, it->seq),
                      it->time_ms >= 0 ? it->time_ms : p->time_ms, true);
        break;
    }
    case IT_REPLAY: {
        struct replay *r = it->replay;
        r->done(r->arg, r->err, r->msgs, r->n, r->gap);
        for (size_t i = 0; i < r->n; i++)
            hd_msg_unref(r->msgs[i]);
        free(r->msgs);
        free(r->subject);
        free(r);
        break;
    }
    case IT_STATUS_REQ:
        ne_handle_status_req(e, it);
        break;
    case IT_STATUS_ANS:
        ne_status_answered(e, it);
        break;
    }
}

void ne_item_free(struct item *it)
{
    if (it->kind == IT_ATTACHED && it->sub)
        natsSubscription_Destroy(it->sub);
    free(it->reply);
    free(it);
}

void ne_on_async(uv_async_t *a)
{
    struct nats_engine *e = a->data;
    bool more = false;
    struct hd_handoff_node *n = hd_handoff_pop(&e->inbox, DRAIN_BATCH, &more);
    while (n) {
        struct item *it = (struct item *)n;
        n = n->next;
        ne_handle_item(e, it);
        ne_item_free(it);
    }
    if (more)
        uv_async_send(&e->async); /* the rest on the next turn, after I/O */
}

static void on_pump_timer(uv_timer_t *t)
{
    (void)t; /* only ends the turn's wait */
}

void ne_pump(struct nats_engine *e)
{
    uv_timer_start(&e->pump_timer, on_pump_timer, 50, 0);
    uv_run(e->loop, UV_RUN_ONCE);
}

void ne_on_check_timer(uv_timer_t *t)
{
    struct nats_engine *e = t->data;
    if (e->n_pubs > e->n_retrying)
        expire_acks(e);
    if (!e->nc && !e->stopping)
        ne_job_post_once(e, JOB_PROBE);
    if (e->connected && !e->stopping)
        ne_job_post_once(e, e->attached ? JOB_CHECK : JOB_ATTACH);
}
/* Handles whatever libnats and the worker handed over, all of it. Loop thread. */
void ne_drain_inbox(struct nats_engine *e)
{
    bool more = true;
    while (more) {
        struct hd_handoff_node *n = hd_handoff_pop(&e->inbox, SIZE_MAX, &more);
        while (n) {
            struct item *it = (struct item *)n;
            n = n->next;
            ne_handle_item(e, it);
            ne_item_free(it);
        }
    }
}
