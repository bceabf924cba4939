/* SPDX-License-Identifier: MIT */
/*
 * The NATS JetStream engine (cluster mode, CONFIG.md "Engine", PROTOCOL.md section 10): every
 * node publishes into one stream and delivers what one ordered consumer over the whole stream
 * reads back, so every node fans out the same ids in the same order. Also here: delivery
 * status gathered from every node by request/reply over NATS, and the engine's metrics.
 */
#ifndef HD_ENGINE_NATS_H
#define HD_ENGINE_NATS_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "engine.h"

struct hd_config;
struct hd_metrics;

/*
 * Makes the NATS engine from `cfg` (engine.*, history.max_age_s, limits.max_event_bytes;
 * everything needed is copied). Nothing connects before start(). Returns NULL when out of
 * memory or when libnats cannot be initialised (logged).
 */
struct hd_engine *hd_engine_nats_new(uv_loop_t *loop, const struct hd_config *cfg);

/* True when `e` is a NATS engine. */
bool hd_engine_is_nats(const struct hd_engine *e);

/*
 * Where the engine keeps its gauges and counters (engine_* fields of struct hd_metrics;
 * borrowed, must outlive the engine). Optional; call before start.
 */
void hd_engine_nats_set_metrics(struct hd_engine *e, struct hd_metrics *m);

struct hd_history;

/*
 * The usual wiring in one call (main.c): gauges into `m` (hd_engine_nats_set_metrics) and
 * status requests from other nodes answered from `h`, this node's history (borrowed; both
 * must outlive the engine).
 */
void hd_engine_nats_wire(struct hd_engine *e, struct hd_metrics *m, struct hd_history *h);

/* Delivery status of one event on this node (PROTOCOL.md section 4). */
struct hd_status_counts {
    uint64_t queued, written, dropped;
};

/*
 * How the engine answers other nodes' status requests: `lookup` (on the loop thread) fills
 * `out` for event `id` and returns 0, or returns -ENOENT when this node does not know it (no
 * answer is sent). Call before start; without it the node answers nothing.
 */
typedef int (*hd_status_lookup_fn)(void *arg, uint64_t id, struct hd_status_counts *out);
void hd_engine_nats_set_status_lookup(struct hd_engine *e, hd_status_lookup_fn lookup, void *arg);

/*
 * Completion of a gather, on the loop thread: `sum` (borrowed) adds up the answers of the
 * *other* nodes that answered within the deadline, `nodes` how many did. err < 0: nothing
 * could be asked (-EAGAIN: not connected, -ENOTSUP: not a NATS engine is never called back).
 */
typedef void (*hd_status_gather_fn)(void *arg, int err, const struct hd_status_counts *sum,
                                    unsigned nodes);

/*
 * Asks every other node for the delivery status of event `id` and calls `done` once, after
 * `deadline_ms` (or sooner when stopping). The API adds this node's own counts and answers
 * `nodes` = 1 + nodes. Returns 0 when `done` will be called, -ENOTSUP for an engine that is
 * not NATS, -EAGAIN when NATS is unreachable, -ENOMEM; `done` is not called then.
 */
int hd_engine_status_gather(struct hd_engine *e, uint64_t id, unsigned deadline_ms,
                            hd_status_gather_fn done, void *arg);

#endif
