/* SPDX-License-Identifier: MIT */
/*
 * The local engine: orders publishes in this process, hands them to the store, and delivers
 * and acknowledges them once stored. With the memory store that is immediate; with SQLite
 * and durability sync it happens when the group commit that holds the event reaches the
 * disk, in id order, so subscribers never see an event a crash could take back. Delivery
 * comes before the acknowledgement, so the broker's answer can count the receivers at once.
 * It never reports a feed gap (sink.gap); at recovery it reports where the store's retention
 * cut history (sink.recovered_pruned), and it is ready once recovery is done.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "log.h"
#include "metrics.h"
#include "store.h"

struct local_engine {
    struct hd_engine base;
    struct hd_store *store; /* NULL with the memory store, and after stop */
    struct hd_store_info info;
    uint64_t last_seq;
    size_t pending;
    bool draining;
};

/* One publish waiting for its commit. */
struct job {
    struct local_engine *le;
    struct hd_msg *msg;
    char *key;
    hd_pub_ack_fn ack;
    void *arg;
};

/* Ids are microseconds of the wall clock, or one more than the last when that is ahead. */
static uint64_t next_seq(uint64_t last_seq)
{
    uint64_t now_us = (uint64_t)hd_wall_ms() * 1000;
    return now_us > last_seq ? now_us : last_seq + 1;
}

static void deliver_and_ack(struct local_engine *le, struct hd_msg *m, const char *key,
                            hd_pub_ack_fn ack, void *arg)
{
    struct hd_engine_sink *s = &le->base.sink;
    s->deliver(s->broker, m, key);
    struct hd_pub_ack a = {.seq = m->seq, .time_ms = m->time_ms};
    ack(arg, 0, &a);
}

static void stored(void *arg, int err)
{
    struct job *j = arg;
    j->le->pending--;
    if (err)
        j->ack(j->arg, -EIO, NULL);
    else
        deliver_and_ack(j->le, j->msg, j->key, j->ack, j->arg);
    hd_msg_unref(j->msg);
    free(j->key);
    free(j);
}

static int local_publish(struct hd_engine *e, const struct hd_pub *pub, hd_pub_ack_fn ack,
                         void *arg)
{
    struct local_engine *le = (struct local_engine *)e;
    if (le->draining)
        return -ESHUTDOWN;
    if (le->store && hd_store_failing(le->store))
        return -EIO;
    uint64_t seq = next_seq(le->last_seq);
    struct hd_msg *m =
        hd_msg_new_event(seq, hd_wall_ms(), pub->topic, pub->event, pub->data_json, pub->data_len);
    if (!m)
        return -ENOMEM;
    m->accept_ns = hd_now_ns();
    if (!le->store) {
        le->last_seq = seq;
        deliver_and_ack(le, m, pub->key, ack, arg);
        hd_msg_unref(m);
        return 0;
    }
    struct job *j = malloc(sizeof(*j));
    char *key = pub->key ? strdup(pub->key) : NULL;
    if (!j || (pub->key && !key)) {
        free(j);
        free(key);
        hd_msg_unref(m);
        return -ENOMEM;
    }
    *j = (struct job){.le = le, .msg = m, .key = key, .ack = ack, .arg = arg};
    le->pending++;
    /* With async durability `stored` runs inside the append: the id is taken before. */
    uint64_t prev = le->last_seq;
    le->last_seq = seq;
    int r = hd_store_append(le->store, m, pub->key, stored, j);
    if (r) {
        le->last_seq = prev;
        le->pending--;
        hd_msg_unref(m);
        free(key);
        free(j);
        return r;
    }
    return 0;
}

static void recovered(void *arg, struct hd_msg *m)
{
    struct local_engine *le = arg;
    struct hd_engine_sink *s = &le->base.sink;
    s->recovered(s->broker, m, NULL);
    hd_msg_unref(m);
}

static void recovered_key(void *arg, const char *key, uint64_t seq, int64_t time_ms)
{
    struct local_engine *le = arg;
    struct hd_engine_sink *s = &le->base.sink;
    s->recovered_key(s->broker, key, seq, time_ms);
}

static void recovered_pruned(void *arg, const char *topic, uint64_t upto)
{
    struct local_engine *le = arg;
    struct hd_engine_sink *s = &le->base.sink;
    if (s->recovered_pruned)
        s->recovered_pruned(s->broker, topic, upto);
}

static int local_start(struct hd_engine *e, char *why, size_t why_len)
{
    struct local_engine *le = (struct local_engine *)e;
    struct hd_engine_sink *s = &e->sink;
    if (le->store) {
        const struct hd_store_info *info = &le->info;
        s->recover_base(s->broker, info->base_seq);
        le->last_seq = info->last_seq > info->base_seq - 1 ? info->last_seq : info->base_seq - 1;
        int r = hd_store_load(le->store, recovered, recovered_pruned, recovered_key, le);
        if (r) {
            snprintf(why, why_len, "cannot load history from the event store: %s", strerror(-r));
            return r;
        }
        hd_log_info("history recovered", "events=%" PRIu64 " last_id=%016" PRIx64, info->events,
                    le->last_seq);
    } else {
        /* Without a store nothing survives a restart: ids before now name nothing. */
        uint64_t base = next_seq(0);
        s->recover_base(s->broker, base);
        le->last_seq = base - 1;
    }
    s->ready(s->broker, true);
    return 0;
}

static size_t local_pending(const struct hd_engine *e)
{
    return ((const struct local_engine *)e)->pending;
}

static void local_drain(struct hd_engine *e)
{
    ((struct local_engine *)e)->draining = true;
}

static void local_reload(struct hd_engine *e, const struct hd_config *cfg)
{
    struct local_engine *le = (struct local_engine *)e;
    if (le->store) {
        struct hd_history_limits lim = hd_history_limits_of(cfg);
        hd_store_set_limits(le->store, &lim);
    }
}

/* Closing the store commits what is queued and runs the remaining completions. */
static void local_stop(struct hd_engine *e)
{
    struct local_engine *le = (struct local_engine *)e;
    le->draining = true;
    if (le->store) {
        hd_store_close(le->store);
        le->store = NULL;
    }
}

static void local_destroy(struct hd_engine *e)
{
    local_stop(e);
    free(e);
}

static const struct hd_engine_ops local_ops = {
    .name = "local",
    .start = local_start,
    .publish = local_publish,
    .pending = local_pending,
    .drain = local_drain,
    .reload = local_reload,
    .stop = local_stop,
    .destroy = local_destroy,
};

struct hd_engine *hd_engine_local_new(uv_loop_t *loop, const struct hd_config *cfg,
                                      struct hd_histogram *commit_hist, char *why, size_t why_len)
{
    struct local_engine *le = calloc(1, sizeof(*le));
    if (!le) {
        snprintf(why, why_len, "out of memory");
        return NULL;
    }
    le->base.ops = &local_ops;
    if (cfg->history.store == HD_STORE_SQLITE) {
        struct hd_history_limits lim = hd_history_limits_of(cfg);
        le->store = hd_store_open(loop, cfg->data_dir, cfg->history.durability, &lim, next_seq(0),
                                  &le->info, why, why_len);
        if (!le->store) {
            free(le);
            return NULL;
        }
        hd_store_set_commit_histogram(le->store, commit_hist);
    }
    return &le->base;
}
