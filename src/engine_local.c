/* SPDX-License-Identifier: MIT */
/*
 * The local engine: orders publishes in this process, hands them to the store, and delivers
 * them to the broker once stored. With the memory store that is immediate; with SQLite and
 * durability sync it happens when the group commit that holds the event reaches the disk,
 * in id order, so subscribers never see an event a crash could take back.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>

#include "engine.h"
#include "metrics.h"
#include "store.h"

struct local_engine {
    struct hd_engine base;
    struct hd_store *store;
    uint64_t last_seq;
    size_t pending;
    bool draining;
};

/* One publish waiting for its commit. */
struct job {
    struct local_engine *le;
    struct hd_msg *msg;
    hd_pub_done_fn done;
    void *arg;
};

uint64_t hd_engine_local_next_seq(uint64_t last_seq)
{
    uint64_t now_us = (uint64_t)hd_wall_ms() * 1000;
    return now_us > last_seq ? now_us : last_seq + 1;
}

static void stored(void *arg, int err)
{
    struct job *j = arg;
    struct local_engine *le = j->le;
    le->pending--;
    if (err) {
        j->done(j->arg, -EIO, NULL);
    } else {
        j->msg->receivers = (uint32_t)le->base.deliver(le->base.broker, j->msg);
        j->done(j->arg, 0, j->msg);
    }
    hd_msg_unref(j->msg);
    free(j);
}

static int local_publish(struct hd_engine *e, const struct hd_pub *pub, hd_pub_done_fn done,
                         void *arg)
{
    struct local_engine *le = (struct local_engine *)e;
    if (le->draining)
        return -ESHUTDOWN;
    if (le->store && hd_store_failing(le->store))
        return -EIO;
    uint64_t seq = hd_engine_local_next_seq(le->last_seq);
    struct hd_msg *m =
        hd_msg_new_event(seq, hd_wall_ms(), pub->topic, pub->event, pub->data_json, pub->data_len);
    if (!m)
        return -ENOMEM;
    m->accept_ns = hd_now_ns();
    if (!le->store) {
        le->last_seq = seq;
        m->receivers = (uint32_t)e->deliver(e->broker, m);
        done(arg, 0, m);
        hd_msg_unref(m);
        return 0;
    }
    struct job *j = malloc(sizeof(*j));
    if (!j) {
        hd_msg_unref(m);
        return -ENOMEM;
    }
    *j = (struct job){.le = le, .msg = m, .done = done, .arg = arg};
    le->pending++;
    /* With async durability `stored` runs inside the append: the id is taken before. */
    uint64_t prev = le->last_seq;
    le->last_seq = seq;
    int r = hd_store_append(le->store, m, stored, j);
    if (r) {
        le->last_seq = prev;
        le->pending--;
        hd_msg_unref(m);
        free(j);
        return r;
    }
    return 0;
}

static void local_drain(struct hd_engine *e)
{
    ((struct local_engine *)e)->draining = true;
}

static void local_destroy(struct hd_engine *e)
{
    free(e);
}

static const struct hd_engine_ops local_ops = {
    .name = "local",
    .publish = local_publish,
    .drain = local_drain,
    .destroy = local_destroy,
};

struct hd_engine *hd_engine_local_new(uint64_t last_seq, struct hd_store *store)
{
    struct local_engine *le = calloc(1, sizeof(*le));
    if (!le)
        return NULL;
    le->base.ops = &local_ops;
    le->last_seq = last_seq;
    le->store = store;
    return &le->base;
}

size_t hd_engine_local_pending(const struct hd_engine *e)
{
    return ((const struct local_engine *)e)->pending;
}
