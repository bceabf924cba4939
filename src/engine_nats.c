/* SPDX-License-Identifier: MIT */
/*
 * The NATS JetStream engine's ops (engine.h): start, publish, replay, stop and destroy, and its
 * construction from the configuration. The threads and the other files: engine_nats_int.h.
 */
#include "engine_nats_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "fanout.h"
#include "log.h"
#include "metrics.h"
#include "natsid.h"
#include "protocol.h"

static int first_outcome(struct nats_engine *e)
{
    pthread_mutex_lock(&e->job_lock);
    int outcome = e->first_outcome;
    pthread_mutex_unlock(&e->job_lock);
    return outcome;
}

/* Waits (bounded) for the first attach: a stream that does not fit stops the daemon. The
 * loop runs meanwhile, since the worker's requests are answered through it. Returns 0, also
 * when the attach is still pending (logged), or -EINVAL with `why` set. */
static int wait_first_attach(struct nats_engine *e, char *why, size_t why_len)
{
    uint64_t until = hd_now_ns() + (uint64_t)START_WAIT_MS * 1000000;
    while (first_outcome(e) == 0 && hd_now_ns() < until)
        ne_pump(e);
    int outcome = first_outcome(e);
    if (outcome == -EINVAL) {
        snprintf(why, why_len, "%s", e->first_why);
        return -EINVAL;
    }
    if (outcome != 1)
        hd_log_warn("not attached to the stream yet; publishes get 503 until it is", "why=\"%s\"",
                    e->first_why[0] ? e->first_why : "timed out");
    return 0;
}

static int nats_start(struct hd_engine *base, char *why, size_t why_len)
{
    struct nats_engine *e = E(base);
    int rc = ne_connect(e, why, why_len);
    if (rc < 0)
        return rc;
    if (pthread_create(&e->worker, NULL, ne_worker_main, e) != 0) {
        snprintf(why, why_len, "cannot start the NATS worker thread");
        return -EAGAIN;
    }
    e->worker_started = true;
    e->started = true;
    uv_check_start(&e->turn_check, ne_on_turn);
    bool up = e->nc != NULL;
    if (up) {
        ne_warn_old_server(e);
        ne_set_connected(e, true);
        rc = wait_first_attach(e, why, why_len);
        if (rc < 0)
            return rc;
    } else {
        hd_log_warn("no NATS server reachable yet; publishes get 503 until one is", "servers=%d",
                    e->n_servers);
    }
    uv_timer_start(&e->check_timer, ne_on_check_timer, CHECK_EVERY_MS, CHECK_EVERY_MS);
    return 0;
}

static int nats_publish(struct hd_engine *base, const struct hd_pub *pub, hd_pub_ack_fn ack,
                        void *arg)
{
    struct nats_engine *e = E(base);
    char subject[512], msgid[96], tbuf[24], reply[80];
    natsMsg *m = NULL;
    if (e->stopping || e->draining)
        return -ESHUTDOWN;
    if (!e->ready)
        return -EAGAIN;
    if (e->n_pubs >= MAX_INFLIGHT)
        return -EAGAIN;
    if (hd_natsid_subject(e->prefix, pub->topic, subject, sizeof(subject)) < 0)
        return -EINVAL;
    int64_t now = hd_wall_ms();
    snprintf(tbuf, sizeof(tbuf), "%lld", (long long)now);
    if (!pub->key)
        snprintf(msgid, sizeof(msgid), "hd-%s-%llu", e->instance,
                 (unsigned long long)++e->msgid_counter);
    uint64_t token = ++e->token_counter;
    snprintf(reply, sizeof(reply), "%s%llu", e->reply_prefix, (unsigned long long)token);
    if (natsMsg_Create(&m, subject, reply, pub->data_json, (int)pub->data_len) != NATS_OK)
        return -ENOMEM;
    if (natsMsgHeader_Set(m, HDR_MSGID, pub->key ? pub->key : msgid) != NATS_OK ||
        natsMsgHeader_Set(m, HDR_TIME, tbuf) != NATS_OK ||
        natsMsgHeader_Set(m, HDR_EVENT, pub->event) != NATS_OK ||
        (pub->key && natsMsgHeader_Set(m, HDR_KEY, pub->key) != NATS_OK)) {
        natsMsg_Destroy(m);
        return -ENOMEM;
    }
    struct pub *p = calloc(1, sizeof(*p));
    if (p) {
        p->msg = m;
        p->token = token;
    }
    if (!p || ne_pubs_put(e, p) < 0) {
        free(p);
        natsMsg_Destroy(m);
        return -ENOMEM;
    }
    p->ack = ack;
    p->arg = arg;
    p->time_ms = now;
    p->deadline_ns = hd_now_ns() + (uint64_t)PUBLISH_DEADLINE_MS * 1000000;
    int rc = ne_send_pub(e, p);
    if (rc < 0) {
        size_t slot;
        if (ne_pubs_find(e, token, &slot) == p)
            ne_pubs_del_slot(e, slot);
        natsMsg_Destroy(m);
        free(p);
        ne_update_gauges(e);
        return rc == -EIO ? -EAGAIN : rc; /* connection trouble in all likelihood: 503 */
    }
    ne_update_gauges(e);
    return 0;
}

static int nats_replay(struct hd_engine *base, const char *pattern, uint64_t after, uint64_t upto,
                       hd_replay_fn done, void *arg)
{
    struct nats_engine *e = E(base);
    if (!e->ready)
        return -EAGAIN;
    struct replay *r = calloc(1, sizeof(*r));
    struct job *j = calloc(1, sizeof(*j));
    size_t n = strlen(e->prefix) + 1 + strlen(pattern) + 1;
    char *subject = malloc(n);
    if (!r || !j || !subject) {
        free(r), free(j), free(subject);
        return -ENOMEM;
    }
    /* Herald's "*" and trailing ">" are NATS's own wildcards: the pattern maps as it is. */
    hd_natsid_subject(e->prefix, pattern, subject, n);
    *r = (struct replay){
        .subject = subject, .after_id = after, .upto_id = upto, .done = done, .arg = arg};
    *j = (struct job){.kind = JOB_REPLAY, .replay = r};
    ne_job_post(e, j);
    return 0;
}

static size_t nats_pending(const struct hd_engine *base)
{
    return ((const struct nats_engine *)base)->n_pubs;
}

static void nats_drain(struct hd_engine *base)
{
    E(base)->draining = true;
}

/* The engine's memory goes with the last of its handles, or at destroy if that comes later. */
static void on_handle_closed(uv_handle_t *h)
{
    struct nats_engine *e = h->data;
    if (--e->handles_open == 0 && e->destroyed)
        free(e);
}

static void free_config(struct nats_engine *e)
{
    for (int i = 0; i < e->n_servers; i++)
        free(e->servers[i]);
    free(e->servers);
    free(e->stream);
    free(e->prefix);
    free(e->node);
    free(e->creds);
    free(e->ca);
    free(e->status_subject);
}

static void fail_replay(struct replay *r)
{
    r->done(r->arg, -ESHUTDOWN, NULL, 0, true);
    for (size_t i = 0; i < r->n; i++)
        hd_msg_unref(r->msgs[i]);
    free(r->msgs);
    free(r->subject);
    free(r);
}

/*
 * Completes what is in flight: publishes get up to STOP_WAIT_MS for their acks (the loop
 * is not running, so this thread handles the hand-off queue itself), then the connection
 * closes and whatever is left fails. Replays and gathers end with -ESHUTDOWN.
 */
static void nats_stop(struct hd_engine *base)
{
    struct nats_engine *e = E(base);
    if (e->stopped)
        return;
    e->stopped = e->stopping = true;
    while (e->gathers)
        ne_gather_finish(e->gathers, -ESHUTDOWN);
    /* The loop runs while we wait: acks and the worker's replies are read on it. */
    uint64_t until = hd_now_ns() + (uint64_t)STOP_WAIT_MS * 1000000;
    while (e->n_pubs > e->n_retrying && hd_now_ns() < until)
        ne_pump(e);
    uv_check_stop(&e->turn_check);
    uv_idle_stop(&e->turn_more);
    if (e->worker_started) {
        struct job *j = calloc(1, sizeof(*j));
        if (j) {
            j->kind = JOB_STOP;
            ne_job_post(e, j);
            /* The feed's consumer is deleted on the server first: a retire jumps the queue
             * too, ahead of the stop. */
            if (e->feed_sub) {
                ne_retire_sub(e, e->feed_sub);
                e->feed_sub = NULL;
            }
            until = hd_now_ns() + (uint64_t)STOP_WAIT_MS * 1000000;
            while (!atomic_load(&e->worker_done) && hd_now_ns() < until)
                ne_pump(e);
            pthread_join(e->worker, NULL);
            e->worker_started = false;
        }
    }
    /* Jobs the worker did not get to. */
    for (struct job *j = e->jobs, *next; j; j = next) {
        next = j->next;
        if (j->kind == JOB_REPLAY)
            fail_replay(j->replay);
        else if (j->kind == JOB_DUP_TIME)
            ne_pub_finish(e, j->pub, -ESHUTDOWN, 0, 0, false);
        else if (j->kind == JOB_RETIRE)
            natsSubscription_Destroy(j->sub); /* no request now: the server drops it idle */
        free(j);
    }
    e->jobs = e->jobs_tail = NULL;
    if (e->feed_sub) {
        natsSubscription_Destroy(e->feed_sub);
        e->feed_sub = NULL;
    }
    if (e->status_sub) {
        natsSubscription_Unsubscribe(e->status_sub);
        natsSubscription_Destroy(e->status_sub);
        e->status_sub = NULL;
    }
    if (e->ack_sub) {
        natsSubscription_Destroy(e->ack_sub);
        e->ack_sub = NULL;
    }
    if (e->nc)
        natsConnection_Close(e->nc);
    ne_drain_inbox(e);
    /* Still unanswered: sent at least once, so the event may exist; a retry with the same
     * key is safe (engine.h: -ETIMEDOUT). */
    for (size_t i = 0; i < e->pubs_cap; i++) {
        struct pub *p = e->pubs[i];
        if (!p)
            continue;
        e->pubs[i] = NULL;
        natsMsg_Destroy(p->msg);
        p->ack(p->arg, -ETIMEDOUT, NULL);
        free(p);
    }
    e->n_pubs = e->n_retrying = 0;
    e->retry_head = NULL;
    e->ready = false;
    ne_update_gauges(e);
    if (e->metrics)
        e->metrics->engine_node = NULL; /* the name is freed with the engine */
    uv_close((uv_handle_t *)&e->async, on_handle_closed);
    uv_close((uv_handle_t *)&e->retry_timer, on_handle_closed);
    uv_close((uv_handle_t *)&e->check_timer, on_handle_closed);
    uv_close((uv_handle_t *)&e->pump_timer, on_handle_closed);
    uv_close((uv_handle_t *)&e->turn_check, on_handle_closed);
    uv_close((uv_handle_t *)&e->turn_more, on_handle_closed);
}

static void nats_destroy(struct hd_engine *base)
{
    struct nats_engine *e = E(base);
    if (!e)
        return;
    nats_stop(base);
    free(e->pubs);
    e->pubs = NULL;
    jsCtx_Destroy(e->js);
    e->js = NULL;
    if (e->nc)
        natsConnection_Destroy(e->nc);
    e->nc = NULL;
    natsOptions_Destroy(e->opts);
    e->opts = NULL;
    if (e->started)
        nats_CloseAndWait(2000); /* libnats' threads are gone: no callback can reach us now */
    free_config(e);
    /* Posted after stop drained the queue (libnats' disconnect callback as the connection
     * closed): nothing is left to act on it, so it is only freed. */
    for (bool more = true; more;) {
        struct hd_handoff_node *n = hd_handoff_pop(&e->inbox, SIZE_MAX, &more);
        if (!n)
            break;
        while (n) {
            struct item *it = (struct item *)n;
            n = n->next;
            ne_item_free(it);
        }
    }
    hd_handoff_destroy(&e->inbox);
    pthread_mutex_destroy(&e->feed_lock);
    pthread_mutex_destroy(&e->job_lock);
    pthread_cond_destroy(&e->job_cond);
    e->destroyed = true;
    if (e->handles_open == 0)
        free(e);
}

static const struct hd_engine_ops nats_ops = {
    .name = "nats",
    .start = nats_start,
    .publish = nats_publish,
    .replay = nats_replay,
    .pending = nats_pending,
    .drain = nats_drain,
    .stop = nats_stop,
    .destroy = nats_destroy,
};

bool hd_engine_is_nats(const struct hd_engine *e)
{
    return e && e->ops == &nats_ops;
}

static char *dup_or_null(const char *s, bool *oom)
{
    char *d = s ? strdup(s) : NULL;
    if (s && !d)
        *oom = true;
    return d;
}

struct hd_engine *hd_engine_nats_new(uv_loop_t *loop, const struct hd_config *cfg)
{
    struct nats_engine *e = calloc(1, sizeof(*e));
    bool oom = false;
    if (!e)
        return NULL;
    if (cfg->history.store == HD_STORE_SQLITE)
        hd_log_info("history.store sqlite is not used in cluster mode: JetStream is the durable "
                    "history",
                    "");
    e->base.ops = &nats_ops;
    e->loop = loop;
    e->n_servers = (int)cfg->engine.servers.n;
    e->servers = calloc(cfg->engine.servers.n ? cfg->engine.servers.n : 1, sizeof(char *));
    oom = !e->servers;
    for (size_t i = 0; !oom && i < cfg->engine.servers.n; i++)
        e->servers[i] = dup_or_null(cfg->engine.servers.v[i], &oom);
    e->stream = dup_or_null(cfg->engine.stream ? cfg->engine.stream : "HERALD", &oom);
    e->prefix =
        dup_or_null(cfg->engine.subject_prefix ? cfg->engine.subject_prefix : "herald", &oom);
    char host[64] = "heraldd";
    if (!cfg->engine.node && gethostname(host, sizeof(host) - 1) < 0)
        snprintf(host, sizeof(host), "heraldd");
    host[sizeof(host) - 1] = '\0';
    e->node = dup_or_null(cfg->engine.node ? cfg->engine.node : host, &oom);
    e->creds = dup_or_null(cfg->engine.creds_file, &oom);
    e->ca = dup_or_null(cfg->engine.tls_ca, &oom);
    e->replicas = (int)(cfg->engine.replicas ? cfg->engine.replicas : 1);
    e->max_age_s = cfg->history.max_age_s;
    e->max_event_bytes = cfg->limits.max_event_bytes;
    e->dedupe_window_s = cfg->history.dedupe_window_s > DEDUPE_WINDOW_S
                             ? cfg->history.dedupe_window_s
                             : DEDUPE_WINDOW_S;
    char subj[128];
    snprintf(subj, sizeof(subj), STATUS_SUBJECT_FMT, e->stream ? e->stream : "");
    e->status_subject = dup_or_null(subj, &oom);
    /* An instance id per process: message ids of keyless publishes and status requests. */
    uint64_t r = hd_now_ns() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)hd_wall_ms() * 1000003;
    snprintf(e->instance, sizeof(e->instance), "%016llx", (unsigned long long)r);
    if (oom || hd_handoff_init(&e->inbox) != 0) {
        free_config(e);
        free(e);
        return NULL;
    }
    pthread_mutex_init(&e->feed_lock, NULL);
    pthread_mutex_init(&e->job_lock, NULL);
    pthread_cond_init(&e->job_cond, NULL);
    uv_async_init(loop, &e->async, ne_on_async);
    uv_timer_init(loop, &e->retry_timer);
    uv_timer_init(loop, &e->check_timer);
    uv_timer_init(loop, &e->pump_timer);
    uv_check_init(loop, &e->turn_check);
    uv_idle_init(loop, &e->turn_more);
    e->async.data = e->retry_timer.data = e->check_timer.data = e;
    e->pump_timer.data = e->turn_check.data = e->turn_more.data = e;
    e->handles_open = 6;
    return &e->base;
}

void hd_engine_nats_set_metrics(struct hd_engine *base, struct hd_metrics *m)
{
    struct nats_engine *e = E(base);
    e->metrics = m;
    if (m)
        m->engine_node = e->node;
    ne_update_gauges(e);
}
