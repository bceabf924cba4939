/* SPDX-License-Identifier: MIT */
/*
 * Metrics: fixed-bucket latency histograms, the two clocks, and the Prometheus text rendering
 * (exposition format 0.0.4) of struct hd_metrics. It does not decide what is counted: the
 * modules that own connections, history and the store update the fields; this file only reads
 * them. No labels ever carry topic names or tokens.
 */
#include "metrics.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Upper bounds in nanoseconds, and the `le` labels as Prometheus' own clients spell them. */
static const struct {
    uint64_t ns;
    const char *le;
} bounds[HD_HIST_BUCKETS] = {
    {50000, "5e-05"},    {100000, "0.0001"},  {250000, "0.00025"},  {500000, "0.0005"},
    {1000000, "0.001"},  {2500000, "0.0025"}, {5000000, "0.005"},   {10000000, "0.01"},
    {25000000, "0.025"}, {50000000, "0.05"},  {100000000, "0.1"},   {250000000, "0.25"},
    {500000000, "0.5"},  {1000000000, "1"},   {2500000000u, "2.5"}, {10000000000u, "10"},
};

/* Observes `ns` into the first bucket whose bound is >= ns (Prometheus `le` semantics). */
void hd_histogram_observe(struct hd_histogram *h, uint64_t ns)
{
    size_t i = 0;
    while (i < HD_HIST_BUCKETS && ns > bounds[i].ns)
        i++;
    atomic_fetch_add_explicit(&h->buckets[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_ns, ns, memory_order_relaxed);
}

/* CLOCK_MONOTONIC in nanoseconds; for durations only. */
uint64_t hd_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* CLOCK_REALTIME in milliseconds since the Unix epoch; for event timestamps. */
int64_t hd_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A growable text buffer; `oom` latches on the first failed allocation. */
struct buf {
    char *p;
    size_t n;
    size_t cap;
    bool oom;
};

static void __attribute__((format(printf, 2, 3))) put(struct buf *b, const char *fmt, ...)
{
    if (b->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int w = vsnprintf(b->p + b->n, b->cap - b->n, fmt, ap);
        va_end(ap);
        if (w < 0) {
            b->oom = true; /* only an encoding error; treat like any failure to render */
            return;
        }
        if ((size_t)w < b->cap - b->n) {
            b->n += (size_t)w;
            return;
        }
        size_t cap = b->cap * 2;
        while (cap - b->n <= (size_t)w)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
}

static void family(struct buf *b, const char *name, const char *type, const char *help)
{
    put(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void gauge(struct buf *b, const char *name, const char *help, int64_t v)
{
    family(b, name, "gauge", help);
    put(b, "%s %" PRId64 "\n", name, v);
}

static void counter(struct buf *b, const char *name, const char *help, uint64_t v)
{
    family(b, name, "counter", help);
    put(b, "%s %" PRIu64 "\n", name, v);
}

/*
 * The count is the sum of the buckets as read here, not h->count: observations race with
 * rendering, and Prometheus requires the +Inf bucket to equal _count in every scrape.
 */
static void histogram(struct buf *b, const char *name, const char *help,
                      const struct hd_histogram *h)
{
    uint64_t cum = 0;
    family(b, name, "histogram", help);
    for (size_t i = 0; i < HD_HIST_BUCKETS; i++) {
        cum += atomic_load_explicit(&h->buckets[i], memory_order_relaxed);
        put(b, "%s_bucket{le=\"%s\"} %" PRIu64 "\n", name, bounds[i].le, cum);
    }
    cum += atomic_load_explicit(&h->buckets[HD_HIST_BUCKETS], memory_order_relaxed);
    put(b, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n", name, cum);
    /* Seconds printed from integer nanoseconds: exact, with no float rounding. */
    uint64_t sum = atomic_load_explicit(&h->sum_ns, memory_order_relaxed);
    put(b, "%s_sum %" PRIu64 ".%09" PRIu64 "\n", name, sum / 1000000000u, sum % 1000000000u);
    put(b, "%s_count %" PRIu64 "\n", name, cum);
}

/*
 * Borrows `m` (read without locks: the gauges and counters belong to the loop thread, which is
 * the thread that renders; histograms are atomics). Returns malloc'd text, length in *len
 * (may be NULL), or NULL when out of memory.
 */
char *hd_metrics_render(const struct hd_metrics *m, size_t *len)
{
    struct buf b = {.cap = 4096};
    b.p = malloc(b.cap);
    if (!b.p)
        return NULL;

    gauge(&b, "herald_connections", "WebSocket connections open.", m->connections);
    gauge(&b, "herald_sse_streams", "Server-Sent Events streams open.", m->sse_streams);
    gauge(&b, "herald_long_polls", "Long polls waiting for events.", m->long_polls);
    gauge(&b, "herald_subscriptions", "Patterns subscribed across all connections.",
          m->subscriptions);
    gauge(&b, "herald_history_events", "Events retained in history.", m->history_events);
    gauge(&b, "herald_history_bytes", "Bytes of events retained in history.", m->history_bytes);
    gauge(&b, "herald_queued_bytes", "Bytes waiting in connection queues.", m->queued_bytes);

    counter(&b, "herald_connections_total", "WebSocket connections accepted.",
            m->connections_total);
    counter(&b, "herald_connections_refused_total",
            "Connections refused: over limits.max_connections or max_connections_per_ip.",
            m->connections_refused);
    counter(&b, "herald_publish_holds_total",
            "Loop turns a ready publish waited for connection queues to drain (backpressure).",
            m->publishes_held);
    counter(&b, "herald_ws_reads_ahead_total",
            "Reads of WebSocket frames made at the end of a loop turn because the socket held "
            "more than one read (a client with several commands in flight).",
            m->ws_reads_ahead);
    counter(&b, "herald_ws_writes_total",
            "Writes of queued frames to WebSocket connections, each one or more frames coalesced "
            "into one send; herald_deliveries_written_total over this is events per write.",
            m->ws_writes);
    counter(&b, "herald_events_published_total", "Events accepted for publishing.",
            m->events_published);
    counter(&b, "herald_deliveries_written_total",
            "Event frames fully handed to the kernel, one per receiver.", m->deliveries_written);
    family(&b, "herald_events_dropped_total", "counter",
           "Deliveries queued but never written, by reason.");
    put(&b, "herald_events_dropped_total{reason=\"slow_consumer\"} %" PRIu64 "\n",
        m->events_dropped[HD_DROP_SLOW_CONSUMER]);
    put(&b, "herald_events_dropped_total{reason=\"disconnect\"} %" PRIu64 "\n",
        m->events_dropped[HD_DROP_DISCONNECT]);
    counter(&b, "herald_slow_consumer_disconnects_total",
            "Connections closed because their outbound queue exceeded its limit.",
            m->slow_consumer_disconnects);
    counter(&b, "herald_protocol_errors_total", "WebSocket commands refused with an error.",
            m->protocol_errors);
    counter(&b, "herald_http_requests_total", "HTTP requests received.", m->http_requests);
    counter(&b, "herald_publish_rejected_total", "Publish requests refused.", m->publish_rejected);
    counter(&b, "herald_publish_duplicates_total",
            "Publishes answered from an earlier publish with the same idempotency key.",
            m->publish_duplicates);
    counter(&b, "herald_feed_gaps_total",
            "Discontinuities in the event feed (live subscribers were sent a gap).", m->feed_gaps);
    counter(&b, "herald_engine_replays_total",
            "Subscriptions and polls answered from the engine because history no longer held the "
            "events.",
            m->engine_replays);

    if (m->engine_node) {
        const char *n = m->engine_node;
        family(&b, "herald_engine_connected", "gauge",
               "1 while this node is connected to NATS with the stream attached.");
        put(&b, "herald_engine_connected{node=\"%s\"} %" PRId64 "\n", n, m->engine_connected);
        family(&b, "herald_engine_feed_lag", "gauge",
               "Stream sequence minus the last sequence this node delivered.");
        put(&b, "herald_engine_feed_lag{node=\"%s\"} %" PRId64 "\n", n, m->engine_feed_lag);
        family(&b, "herald_engine_publishes_pending", "gauge",
               "Publishes sent to JetStream and not yet acknowledged.");
        put(&b, "herald_engine_publishes_pending{node=\"%s\"} %" PRId64 "\n", n,
            m->engine_publishes_pending);
    }

    histogram(&b, "herald_publish_to_write_seconds",
              "Time from accepting an event to handing its frame to the kernel.",
              &m->publish_to_write);
    histogram(&b, "herald_store_commit_seconds", "Duration of one history store commit.",
              &m->store_commit);

    if (b.oom) {
        free(b.p);
        return NULL;
    }
    if (len)
        *len = b.n;
    return b.p;
}
