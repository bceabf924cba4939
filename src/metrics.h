/* SPDX-License-Identifier: MIT */
/*
 * Metrics: plain counters and fixed-bucket histograms updated from the loop thread (and the
 * store thread for store latency, through atomics), rendered in Prometheus text format.
 * Never carries topic names or tokens.
 */
#ifndef HD_METRICS_H
#define HD_METRICS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* Buckets in seconds, chosen for loopback-to-WAN latencies: 50us .. 10s, then +Inf. */
#define HD_HIST_BUCKETS 16

struct hd_histogram {
    _Atomic uint64_t buckets[HD_HIST_BUCKETS + 1]; /* last is +Inf; non-cumulative */
    _Atomic uint64_t count;
    _Atomic uint64_t sum_ns;
};

enum hd_drop_reason {
    HD_DROP_SLOW_CONSUMER = 0, /* queued to a connection closed for falling behind */
    HD_DROP_DISCONNECT,        /* queued to a connection that closed before writing it */
    HD_DROP__COUNT
};

struct hd_metrics {
    /* Gauges, maintained by whoever owns the thing counted. */
    int64_t connections;    /* WebSocket connections open */
    int64_t sse_streams;    /* SSE streams open */
    int64_t long_polls;     /* long polls waiting */
    int64_t subscriptions;  /* patterns subscribed across all connections */
    int64_t history_events; /* events retained */
    int64_t history_bytes;  /* bytes retained */
    int64_t queued_bytes;   /* bytes waiting in connection queues (live pushes) */
    /* Counters. */
    uint64_t connections_total;
    uint64_t connections_refused; /* over limits.max_connections_per_ip */
    uint64_t events_published;
    uint64_t deliveries_written;
    uint64_t events_dropped[HD_DROP__COUNT];
    uint64_t slow_consumer_disconnects;
    uint64_t protocol_errors;
    uint64_t http_requests;
    uint64_t publish_rejected;
    uint64_t publish_duplicates; /* publishes answered from an earlier one with the same key */
    uint64_t feed_gaps;          /* discontinuities the engine reported */
    uint64_t engine_replays;     /* subscriptions and polls answered by an engine replay */
    uint64_t publishes_held;     /* loop turns a publish waited for queues to drain */
    uint64_t ws_reads_ahead;     /* end-of-turn reads of WebSocket frames (server_ws.c) */
    uint64_t ws_writes;          /* writes of queued WebSocket frames (server_ws.c) */
    /* Cluster engine (engine.type nats), kept by engine_nats_loop.c on the loop thread; rendered
     * only when engine_node is set, labelled with it (a name of A-Z a-z 0-9 _ . : @ -). */
    const char *engine_node;
    int64_t engine_connected;             /* 1 while connected to NATS with the stream attached */
    int64_t engine_feed_lag;              /* stream's last sequence minus the last delivered */
    int64_t engine_publishes_pending;     /* publishes awaiting JetStream's acknowledgement */
    struct hd_histogram publish_to_write; /* from accept to the frame handed to the kernel */
    struct hd_histogram store_commit;     /* one group commit */
};

/* Observes a duration in nanoseconds. Thread-safe. */
void hd_histogram_observe(struct hd_histogram *h, uint64_t ns);

/* Monotonic clock in nanoseconds. */
uint64_t hd_now_ns(void);
/* Wall clock in milliseconds since the Unix epoch. */
int64_t hd_wall_ms(void);

/*
 * Renders all metrics in Prometheus text exposition format (version 0.0.4) into a malloc'd
 * buffer. Returns it (length in *len), or NULL when out of memory.
 */
char *hd_metrics_render(const struct hd_metrics *m, size_t *len);

#endif
