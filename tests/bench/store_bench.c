/* SPDX-License-Identifier: MIT */
/*
 * Store micro-benchmark: appends/s through src/store.c with durability sync and async, 64
 * appends in flight, on a real directory (default /tmp), no network. It measures the group
 * commit, not the daemon. Built by hand (see the command below); prints one line per mode.
 *
 *   gcc -std=gnu11 -O2 -Isrc tests/bench/store_bench.c src/store.c src/fanout.c \
 *       src/protocol.c src/topic.c src/log.c src/metrics.c \
 *       $(pkg-config --cflags --libs sqlite3 libuv jansson) -lpthread -lm -o store_bench
 *   ./store_bench [dir] [events] [inflight]
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "metrics.h"
#include "store.h"

static struct {
    struct hd_store *st;
    uint64_t next, end, done, inflight_max;
    uint64_t *lat_ns; /* per event, sync only */
    uint64_t *start_ns;
    uint64_t t_acked; /* async: when the last append was answered */
    int errors;
} b;

static int append_one(hd_store_done_fn done);

static void on_done(void *arg, int err)
{
    uint64_t seq = (uint64_t)(uintptr_t)arg;
    b.lat_ns[seq - 1] = hd_now_ns() - b.start_ns[seq - 1];
    b.errors += err != 0;
    b.done++;
    if (b.next <= b.end && append_one(on_done) != 0)
        b.errors++;
}

static int append_one(hd_store_done_fn done)
{
    char data[160];
    uint64_t seq = b.next++;
    int n = snprintf(data, sizeof(data),
                     "{\"user\":\"u%" PRIu64 "\",\"action\":\"login\",\"ip\":\"192.0.2.%u\","
                     "\"agent\":\"bench/1.0\"}",
                     seq % 1000, (unsigned)(seq % 250));
    char topic[32];
    snprintf(topic, sizeof(topic), "bench.t%u", (unsigned)(seq % 16));
    struct hd_msg *m = hd_msg_new_event(seq, hd_wall_ms(), topic, "login", data, (size_t)n);
    if (!m)
        return -1;
    b.start_ns[seq - 1] = hd_now_ns();
    int r = hd_store_append(b.st, m, NULL, done, (void *)(uintptr_t)seq);
    hd_msg_unref(m);
    return r;
}

static void on_idle(uv_idle_t *h)
{
    /* Async: done runs inside append, so "in flight" is a burst per loop turn. */
    for (uint64_t i = 0; i < b.inflight_max && b.next <= b.end; i++)
        if (append_one(NULL) != 0)
            b.errors++;
    if (b.next > b.end) {
        b.t_acked = hd_now_ns();
        uv_idle_stop(h);
    }
}

static int cmp_u64(const void *x, const void *y)
{
    uint64_t a = *(const uint64_t *)x, c = *(const uint64_t *)y;
    return a < c ? -1 : a > c;
}

static int run(const char *base, enum hd_durability d, uint64_t events, uint64_t inflight)
{
    char dir[512];
    snprintf(dir, sizeof(dir), "%s/store-bench-XXXXXX", base);
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct hd_history_limits lim = {.max_events_per_topic = 100000, .max_bytes = 1u << 30};
    struct hd_store_info info;
    char err[512];
    memset(&b, 0, sizeof(b));
    b.st = hd_store_open(&loop, dir, d, &lim, 1, &info, err, sizeof(err));
    if (!b.st) {
        fprintf(stderr, "store_bench: %s\n", err);
        return 1;
    }
    b.next = 1;
    b.end = events;
    b.inflight_max = inflight;
    b.lat_ns = calloc(events, sizeof(uint64_t));
    b.start_ns = calloc(events, sizeof(uint64_t));
    if (!b.lat_ns || !b.start_ns)
        return 1;
    uv_idle_t idle;
    uv_idle_init(&loop, &idle);
    uint64_t t0 = hd_now_ns();
    if (d == HD_DURABILITY_SYNC) {
        for (uint64_t i = 0; i < inflight && b.next <= b.end; i++)
            if (append_one(on_done) != 0)
                b.errors++;
    } else {
        uv_idle_start(&idle, on_idle);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    uint64_t t_acked = b.t_acked ? b.t_acked : hd_now_ns();
    uint64_t commits = hd_store_commits(b.st);
    hd_store_close(b.st); /* async: commits what is still queued */
    uint64_t t_end = hd_now_ns();
    uv_close((uv_handle_t *)&idle, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    commits = commits > 0 ? commits : 1;
    double secs = (double)(t_end - t0) / 1e9;
    if (d == HD_DURABILITY_SYNC) {
        qsort(b.lat_ns, events, sizeof(uint64_t), cmp_u64);
        printf("durability=sync inflight=%" PRIu64 " events=%" PRIu64 " appends_per_s=%.0f "
               "commits=%" PRIu64 " events_per_commit=%.1f p50_ms=%.2f p99_ms=%.2f errors=%d\n",
               inflight, events, (double)events / secs, commits, (double)events / commits,
               (double)b.lat_ns[events / 2] / 1e6, (double)b.lat_ns[events * 99 / 100] / 1e6,
               b.errors);
    } else {
        printf("durability=async burst=%" PRIu64 " events=%" PRIu64 " acked_per_s=%.0f "
               "committed_per_s=%.0f commits_before_close=%" PRIu64 " errors=%d\n",
               inflight, events, (double)events / ((double)(t_acked - t0) / 1e9),
               (double)events / secs, commits, b.errors);
    }
    free(b.lat_ns);
    free(b.start_ns);
    static const char *const files[] = {"herald.db", "herald.db-wal", "herald.db-shm"};
    for (size_t i = 0; i < 3; i++) {
        char p[600];
        snprintf(p, sizeof(p), "%s/%s", dir, files[i]);
        unlink(p);
    }
    rmdir(dir);
    return b.errors != 0;
}

int main(int argc, char **argv)
{
    const char *base = argc > 1 ? argv[1] : "/tmp";
    uint64_t events = argc > 2 ? strtoull(argv[2], NULL, 10) : 100000;
    uint64_t inflight = argc > 3 ? strtoull(argv[3], NULL, 10) : 64;
    if (!events || !inflight) {
        fprintf(stderr, "usage: store_bench [dir] [events] [inflight]\n");
        return 2;
    }
    int r = run(base, HD_DURABILITY_SYNC, events, inflight);
    r |= run(base, HD_DURABILITY_ASYNC, events, inflight);
    return r;
}
