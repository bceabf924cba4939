/* SPDX-License-Identifier: MIT */
/*
 * The local engine: orders publishes in this process and hands them straight to the
 * broker's delivery. With the memory store that is the whole story; a durable store slots in
 * between ordering and delivery so nothing is delivered that a crash could take back.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>

#include "engine.h"
#include "metrics.h"

struct local_engine {
    struct hd_engine base;
    uint64_t last_seq;
    bool draining;
};

uint64_t hd_engine_local_next_seq(uint64_t last_seq)
{
    uint64_t now_us = (uint64_t)hd_wall_ms() * 1000;
    return now_us > last_seq ? now_us : last_seq + 1;
}

static int local_publish(struct hd_engine *e, const struct hd_pub *pub, hd_pub_done_fn done,
                         void *arg)
{
    struct local_engine *le = (struct local_engine *)e;
    if (le->draining)
        return -ESHUTDOWN;
    uint64_t seq = hd_engine_local_next_seq(le->last_seq);
    int64_t now_ms = hd_wall_ms();
    struct hd_msg *m =
        hd_msg_new_event(seq, now_ms, pub->topic, pub->event, pub->data_json, pub->data_len);
    if (!m)
        return -ENOMEM;
    m->accept_ns = hd_now_ns();
    le->last_seq = seq;
    e->deliver(e->broker, m);
    done(arg, 0, m);
    hd_msg_unref(m);
    return 0;
}

static void local_drain(struct hd_engine *e) { ((struct local_engine *)e)->draining = true; }

static void local_destroy(struct hd_engine *e) { free(e); }

static const struct hd_engine_ops local_ops = {
    .name = "local",
    .publish = local_publish,
    .drain = local_drain,
    .destroy = local_destroy,
};

struct hd_engine *hd_engine_local_new(uint64_t last_seq)
{
    struct local_engine *le = calloc(1, sizeof(*le));
    if (!le)
        return NULL;
    le->base.ops = &local_ops;
    le->last_seq = last_seq;
    return &le->base;
}
