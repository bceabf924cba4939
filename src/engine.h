/* SPDX-License-Identifier: MIT */
/*
 * The engine seam: where a publish crosses the process boundary. The broker hands every
 * admitted publish to an engine; the engine orders it (assigns the id and time), makes it
 * durable as configured and acknowledges it. Separately, the engine hands the broker every
 * event to deliver on this node, in id order, through the sink: its own publishes and, in a
 * cluster, everyone else's. Acknowledgement and delivery are independent; either may come
 * first, and the broker joins them to answer the publisher with its local receivers.
 *
 * The local engine (engine_local.c) does all of this in-process over the store; the NATS
 * engine publishes to a JetStream stream and delivers what its consumer reads back, so every
 * node fans out the same ids. The broker cannot tell them apart.
 *
 * Everything here runs on the loop thread: an engine with threads of its own hands their
 * results to the loop (a queue and a uv_async_t) before calling the sink or a callback.
 */
#ifndef HD_ENGINE_H
#define HD_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "config.h"
#include "fanout.h"
#include "metrics.h"

struct hd_engine;

/* One publish request. Everything is borrowed for the duration of the publish call. */
struct hd_pub {
    const char *topic;     /* valid, non-reserved */
    const char *event;     /* valid event kind */
    const char *data_json; /* compact JSON text of the data */
    size_t data_len;
    /* Idempotency key already scoped by the broker to the publisher's identity (opaque,
     * printable ASCII, at most HD_ENGINE_KEY_MAX bytes), or NULL. An engine that keeps
     * events durably keeps the key with the event and hands it back on recovery and
     * delivery, so that a repeat is recognised after a restart and on other nodes. */
    const char *key;
};

#define HD_ENGINE_KEY_MAX 200

/* What the engine says about an accepted publish. */
struct hd_pub_ack {
    uint64_t seq;    /* the event's id */
    int64_t time_ms; /* the event's time */
    bool duplicate;  /* the engine already had this key: seq/time are the first publish's */
};

/*
 * Completion of a publish, on the loop thread. `err` 0: `ack` (borrowed) says what the event
 * is; the event is durable as configured and will be (or was) delivered through the sink,
 * unless the sink reports a gap over it. `err` < 0: nothing was published; -ESHUTDOWN when
 * stopping, -EAGAIN when the engine is not ready (cluster unreachable), -EIO when the store
 * or the engine failed, -ENOMEM. A publish whose outcome is unknown (a timeout in a
 * cluster) fails with -ETIMEDOUT: the event may exist, and a retry with the same key is safe.
 */
typedef void (*hd_pub_ack_fn)(void *arg, int err, const struct hd_pub_ack *ack);

/*
 * Completion of an engine replay: `msgs` (borrowed; take references to keep them) are the
 * events matching the pattern with after < seq <= upto, in id order. `gap`: the engine
 * no longer holds everything after `after` either. `err` < 0: the replay failed (the
 * broker then serves what its history has and reports a gap).
 */
typedef void (*hd_replay_fn)(void *arg, int err, struct hd_msg **msgs, size_t n, bool gap);

/* How an engine talks to the broker. Every call is on the loop thread. */
struct hd_engine_sink {
    void *broker;
    /*
     * An event to deliver on this node (`msg` borrowed, made by the engine with
     * hd_msg_new_event), in strictly increasing id order; the sink ignores an id it has
     * already seen (an engine may deliver a duplicate after a reconnect). `key` is the
     * publish's scoped idempotency key or NULL. Sets msg->receivers and returns them.
     */
    size_t (*deliver)(void *broker, struct hd_msg *msg, const char *key);
    /*
     * Start-up recovery: `base_seq` first, once, before anything else (history treats
     * cursors below it as unknown), then each recovered event in id order (they go to
     * history only: they were delivered in an earlier life), with its key.
     */
    void (*recover_base)(void *broker, uint64_t base_seq);
    void (*recovered)(void *broker, struct hd_msg *msg, const char *key);
    /* A key whose event is not (or no longer) recovered, with the first publish's answer;
     * for engines that keep keys apart from events (the SQLite store keeps them for
     * history.dedupe_window_s, however long the events themselves are retained). */
    void (*recovered_key)(void *broker, const char *key, uint64_t seq, int64_t time_ms);
    /*
     * Optional for engines (one whose history has no holes never calls it), after the
     * recovered events: retention of an earlier life dropped events of `topic` (borrowed;
     * NULL: of any topic) with ids up to `upto`, so cursors before it resolve with a gap.
     */
    void (*recovered_pruned)(void *broker, const char *topic, uint64_t upto);
    /*
     * A discontinuity: events before `next_seq` that were not delivered may be missing
     * (a node cut off from its cluster for longer than the stream keeps). Live subscribers
     * get a gap frame, and cursors before it resolve with a gap.
     */
    void (*gap)(void *broker, uint64_t next_seq);
    /* Readiness changed (a cluster engine lost or regained its servers). */
    void (*ready)(void *broker, bool ready);
};

struct hd_engine_ops {
    const char *name;
    /*
     * Brings the engine up: recovery through sink->recover_base/recovered (synchronously or
     * not), then sink->ready(true) once it can take publishes. Returns 0, or a negative
     * errno with a message in `why` when the engine cannot start (the daemon exits 2).
     */
    int (*start)(struct hd_engine *e, char *why, size_t why_len);
    /*
     * Starts a publish. Returns 0 when `ack` will be called exactly once (possibly before
     * publish returns), or a negative errno when it will not (nothing happened).
     */
    int (*publish)(struct hd_engine *e, const struct hd_pub *pub, hd_pub_ack_fn ack, void *arg);
    /*
     * Optional (NULL: the broker's history is all there is). Fetches events matching
     * `pattern` with after < seq <= upto that are older than the broker's history retains.
     * Returns 0 when `done` will be called exactly once, later, on the loop thread, or a
     * negative errno when it will not.
     */
    int (*replay)(struct hd_engine *e, const char *pattern, uint64_t after, uint64_t upto,
                  hd_replay_fn done, void *arg);
    /* Publishes accepted and not yet acknowledged. */
    size_t (*pending)(const struct hd_engine *e);
    /* Stops accepting publishes; those in flight still complete. */
    void (*drain)(struct hd_engine *e);
    /* Applies what a reload may change (retention, limits). Optional. */
    void (*reload)(struct hd_engine *e, const struct hd_config *cfg);
    /*
     * Completes everything in flight (every `ack` runs, each delivered event reaches the
     * sink) and releases what the engine holds outside memory (files, connections). Called
     * once the loop stopped serving, while transports can still write the answers; the loop
     * must run afterwards for handles to close.
     */
    void (*stop)(struct hd_engine *e);
    /* Frees the engine (after stop, or when start failed). */
    void (*destroy)(struct hd_engine *e);
};

struct hd_engine {
    const struct hd_engine_ops *ops;
    struct hd_engine_sink sink; /* set by the broker (hd_broker_set_engine) before start */
};

/*
 * The local engine: ids come from a hybrid clock (max(last id + 1, wall clock in
 * microseconds)), so they are ordered, unique and keep increasing across restarts even when
 * history is not persisted. With history.store sqlite it opens the store in data_dir on
 * `loop` (commit durations go to `commit_hist`, borrowed), start() recovers history from it,
 * and an event is delivered and acknowledged only once the store has it (with durability
 * sync: on disk), so nothing a crash could take back is ever seen by a subscriber. `cfg` is
 * borrowed until reload. Returns NULL with a sentence in `why` when the store cannot be
 * opened or memory runs out.
 */
struct hd_engine *hd_engine_local_new(uv_loop_t *loop, const struct hd_config *cfg,
                                      struct hd_histogram *commit_hist, char *why, size_t why_len);

#endif
