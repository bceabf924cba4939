/* SPDX-License-Identifier: MIT */
/*
 * The engine seam: where a publish crosses the process boundary. The broker hands every
 * accepted publish to an engine; the engine orders it (assigns the id), makes it durable as
 * configured, and calls back with the encoded message, which the broker then fans out to
 * its local subscribers. The local engine (engine_local.c) does this in-process over the
 * store; a Redis engine would publish to Redis and call back when the event comes back, so
 * that every node fans out the same ids.
 */
#ifndef HD_ENGINE_H
#define HD_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "fanout.h"

struct hd_engine;

/* One publish request. Everything is borrowed for the duration of the publish call. */
struct hd_pub {
    const char *topic;     /* valid, non-reserved */
    const char *event;     /* valid event kind */
    const char *data_json; /* compact JSON text of the data */
    size_t data_len;
};

/*
 * Completion of a publish, on the loop thread, in id order. On success `err` is 0 and `msg`
 * is the event (borrowed; take a reference to keep it). On failure `err` is negative
 * (-ENOMEM, -EIO when the store failed, -ESHUTDOWN when stopping) and `msg` is NULL:
 * nothing was stored or delivered.
 */
typedef void (*hd_pub_done_fn)(void *arg, int err, struct hd_msg *msg);

/*
 * Called by the engine, on the loop thread and in id order, for every event to deliver
 * locally (also those published on other nodes). Returns the number of local receivers.
 */
typedef size_t (*hd_deliver_fn)(void *broker, struct hd_msg *msg);

struct hd_engine_ops {
    const char *name;
    /*
     * Starts a publish. Returns 0 when `done` will be called exactly once (possibly before
     * publish returns), or a negative errno when it will not (nothing happened).
     */
    int (*publish)(struct hd_engine *e, const struct hd_pub *pub, hd_pub_done_fn done, void *arg);
    /* Stops accepting publishes and finishes those in flight (their `done` runs). */
    void (*drain)(struct hd_engine *e);
    void (*destroy)(struct hd_engine *e);
};

struct hd_engine {
    const struct hd_engine_ops *ops;
    hd_deliver_fn deliver;
    void *broker;
};

#endif

struct hd_store;

/*
 * The local engine: ids come from a hybrid clock (max(last id + 1, wall clock in
 * microseconds)), so they are ordered, unique and keep increasing across restarts even when
 * history is not persisted. `last_seq` is the newest id already issued (0 when unknown).
 * With a `store` (borrowed; NULL for the memory store) an event is delivered only once the
 * store has it (with durability sync: on disk), so nothing a crash could take back is ever
 * seen by a subscriber. Returns NULL when out of memory.
 */
struct hd_engine *hd_engine_local_new(uint64_t last_seq, struct hd_store *store);

/* Publishes accepted but not yet completed (waiting for a commit). */
size_t hd_engine_local_pending(const struct hd_engine *e);

/* The id the local engine would assign next if published now (for history's base). */
uint64_t hd_engine_local_next_seq(uint64_t last_seq);
