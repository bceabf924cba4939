/* SPDX-License-Identifier: MIT */
/*
 * The broker's insides, shared by its files and nobody else: broker.c (connections, commands,
 * subscriptions and streams), publish.c (the admission point for every publish, and the engine
 * sink that delivers events and joins them with their acknowledgements).
 */
#ifndef HD_BROKER_INT_H
#define HD_BROKER_INT_H

#include "broker.h"
#include "dedupe.h"
#include "ratelimit.h"

/* A WebSocket publish whose answer is still owed to its connection. */
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
 * broker's only list of connections (drain, reload, new auth rules and gaps walk it).
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

/* The receivers of recently delivered events, for acknowledgements that come after. */
#define HD_RECENT 256

struct pub_op;
struct replay_wait;

struct hd_broker {
    const struct hd_config *cfg;
    struct hd_registry *reg;
    struct hd_history *hist;
    struct hd_engine *engine;
    struct hd_metrics metrics;
    uint64_t next_conn_id;
    bool draining;
    bool engine_ready;
    struct pending_pub *pending; /* publishes from WebSocket connections in flight */
    struct hd_auth *auth;
    struct hd_peers *peers;    /* open connections per source address */
    struct conn_clock *clocks; /* one per attached connection */
    uint32_t n_clocks, cap_clocks;
    /* The publish path (publish.c). */
    struct hd_ratelimit *rate;
    struct hd_dedupe *dedupe;
    uint64_t delivered_seq;                 /* the newest id delivered (or recovered) here */
    struct pub_op *awaiting, *awaiting_end; /* acknowledged, not yet delivered; by id */
    size_t n_awaiting;
    struct pub_op *spare_ops; /* finished ones kept for the next publishes (a malloc each) */
    uint32_t n_spare_ops;
    struct {
        uint64_t seq;
        uint32_t receivers;
    } recent[HD_RECENT];
    uint32_t recent_next;
    struct replay_wait *replays; /* engine replays in flight (subscribe.c) */
};

/* Queues one event to c (LIVE counts against max_queue_bytes). Returns false when c was
 * closed as a slow consumer instead. */
bool hd__conn_enqueue_event(struct hd_conn *c, struct hd_msg *m, enum hd_push how);
/* Asks the transport for a write unless one is pending. */
void hd__conn_request_write(struct hd_conn *c);
/* Closes c once with a close code (a literal reason). */
void hd__conn_close(struct hd_conn *c, int code, const char *reason);
/* Queues a reply or notice the connection owns (text malloc'd, freed here; NULL = out of
 * memory, which closes the connection). */
void hd__conn_send_owned(struct hd_conn *c, char *text, size_t len);
/* The WebSocket subscribe and unsubscribe commands (subscribe.c). */
enum hd_err hd__conn_subscribe_ws(struct hd_conn *c, bool has_id, int64_t id, const char *pattern,
                                  const char *since, struct hd_error *err);
void hd__conn_unsubscribe_ws(struct hd_conn *c, bool has_id, int64_t id, const char *pattern);
/* Ends c's i-th subscription with a notice (PROTOCOL.md section 7: never silently). */
void hd__conn_end_subscription(struct hd_conn *c, uint32_t i, enum hd_err code, const char *why);
/* Forgets c in engine replays still in flight (detach). */
void hd__conn_cancel_replays(struct hd_conn *c);
/* Tells every live subscription that events before next_seq may be missing. */
void hd__broker_gap(struct hd_broker *b, uint64_t next_seq);
/* The engine's sink, wired to the broker (publish.c). */
void hd__broker_sink(struct hd_broker *b, struct hd_engine_sink *sink);
/* Fails every publish still waiting for its delivery (shutdown). */
void hd__broker_publish_free(struct hd_broker *b);

#endif
