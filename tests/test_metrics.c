/* SPDX-License-Identifier: MIT */
/*
 * Check suite for metrics: histogram bucket placement at every boundary, the clocks, and the
 * Prometheus text a scraper reads (HELP/TYPE before samples, cumulative buckets, +Inf equal to
 * _count, exact _sum, counters and gauges with their values).
 */
#include "metrics.h"

#include <check.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const uint64_t bounds_ns[HD_HIST_BUCKETS] = {
    50000,    100000,   250000,    500000,    1000000,   2500000,    5000000,     10000000,
    25000000, 50000000, 100000000, 250000000, 500000000, 1000000000, 2500000000u, 10000000000u,
};

static size_t bucket_of(const struct hd_histogram *h)
{
    size_t found = HD_HIST_BUCKETS + 1;
    for (size_t i = 0; i <= HD_HIST_BUCKETS; i++) {
        if (atomic_load(&h->buckets[i])) {
            ck_assert_msg(found == HD_HIST_BUCKETS + 1, "two buckets used");
            found = i;
        }
    }
    return found;
}

START_TEST(bucket_boundaries)
{
    for (size_t i = 0; i < HD_HIST_BUCKETS; i++) {
        /* A value equal to a bound belongs to that bucket (le = less or equal)... */
        struct hd_histogram h = {.count = 0};
        hd_histogram_observe(&h, bounds_ns[i]);
        ck_assert_uint_eq(bucket_of(&h), i);
        /* ...and one nanosecond more to the next (the last one's next is +Inf). */
        struct hd_histogram g = {.count = 0};
        hd_histogram_observe(&g, bounds_ns[i] + 1);
        ck_assert_uint_eq(bucket_of(&g), i + 1);
    }
    struct hd_histogram h = {.count = 0};
    hd_histogram_observe(&h, 0);
    ck_assert_uint_eq(bucket_of(&h), 0);
    struct hd_histogram g = {.count = 0};
    hd_histogram_observe(&g, UINT64_MAX);
    ck_assert_uint_eq(bucket_of(&g), HD_HIST_BUCKETS);

    struct hd_histogram s = {.count = 0};
    hd_histogram_observe(&s, 1000);
    hd_histogram_observe(&s, 2000000);
    hd_histogram_observe(&s, 2000000);
    ck_assert_uint_eq(atomic_load(&s.count), 3);
    ck_assert_uint_eq(atomic_load(&s.sum_ns), 4001000);
    ck_assert_uint_eq(atomic_load(&s.buckets[0]), 1);
    ck_assert_uint_eq(atomic_load(&s.buckets[5]), 2); /* 2 ms <= 2.5 ms */
}
END_TEST

START_TEST(clocks)
{
    uint64_t a = hd_now_ns();
    struct timespec d = {.tv_nsec = 2000000};
    nanosleep(&d, NULL);
    uint64_t b = hd_now_ns();
    ck_assert_uint_ge(b - a, 2000000);
    ck_assert_uint_lt(b - a, 5000000000u);

    int64_t ms = hd_wall_ms();
    int64_t t = (int64_t)time(NULL) * 1000;
    ck_assert_int_ge(ms, t - 2000);
    ck_assert_int_le(ms, t + 2000);
}
END_TEST

static bool has_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)) != NULL; p++) {
        if ((p == text || p[-1] == '\n') && p[n] == '\n')
            return true;
    }
    return false;
}

#define ASSERT_LINE(text, line) ck_assert_msg(has_line((text), (line)), "missing line: %s", (line))

START_TEST(render_values)
{
    static struct hd_metrics m; /* static: atomics start at zero */
    memset(&m, 0, sizeof(m));
    m.connections = 3;
    m.sse_streams = 2;
    m.long_polls = 1;
    m.subscriptions = 17;
    m.history_events = 1000;
    m.history_bytes = -1; /* a gauge is signed; a bug going negative must show, not wrap */
    m.connections_total = 42;
    m.connections_refused = 13;
    m.events_published = 123456789012u;
    m.deliveries_written = 7;
    m.events_dropped[HD_DROP_SLOW_CONSUMER] = 5;
    m.events_dropped[HD_DROP_DISCONNECT] = 6;
    m.slow_consumer_disconnects = 8;
    m.protocol_errors = 9;
    m.http_requests = 10;
    m.publish_rejected = 11;
    m.publishes_held = 14;
    m.ws_writes = 15;
    hd_histogram_observe(&m.publish_to_write, 40000);       /* bucket 0 */
    hd_histogram_observe(&m.publish_to_write, 100000);      /* bucket 1, on the bound */
    hd_histogram_observe(&m.publish_to_write, 3000000);     /* <= 5 ms */
    hd_histogram_observe(&m.publish_to_write, 20000000000); /* +Inf */
    hd_histogram_observe(&m.store_commit, 1500000000);      /* <= 2.5 s */

    size_t len = 0;
    char *t = hd_metrics_render(&m, &len);
    ck_assert_ptr_nonnull(t);
    ck_assert_uint_eq(strlen(t), len);

    ASSERT_LINE(t, "# TYPE herald_connections gauge");
    ASSERT_LINE(t, "herald_connections 3");
    ASSERT_LINE(t, "herald_sse_streams 2");
    ASSERT_LINE(t, "herald_long_polls 1");
    ASSERT_LINE(t, "herald_subscriptions 17");
    ASSERT_LINE(t, "herald_history_events 1000");
    ASSERT_LINE(t, "herald_history_bytes -1");
    ASSERT_LINE(t, "# TYPE herald_connections_total counter");
    ASSERT_LINE(t, "herald_connections_total 42");
    ASSERT_LINE(t, "# TYPE herald_connections_refused_total counter");
    ASSERT_LINE(t, "herald_connections_refused_total 13");
    ASSERT_LINE(t, "herald_events_published_total 123456789012");
    ASSERT_LINE(t, "herald_publish_holds_total 14");
    ASSERT_LINE(t, "herald_deliveries_written_total 7");
    ASSERT_LINE(t, "# TYPE herald_ws_writes_total counter");
    ASSERT_LINE(t, "herald_ws_writes_total 15");
    ASSERT_LINE(t, "# TYPE herald_events_dropped_total counter");
    ASSERT_LINE(t, "herald_events_dropped_total{reason=\"slow_consumer\"} 5");
    ASSERT_LINE(t, "herald_events_dropped_total{reason=\"disconnect\"} 6");
    ASSERT_LINE(t, "herald_slow_consumer_disconnects_total 8");
    ASSERT_LINE(t, "herald_protocol_errors_total 9");
    ASSERT_LINE(t, "herald_http_requests_total 10");
    ASSERT_LINE(t, "herald_publish_rejected_total 11");

    ASSERT_LINE(t, "# TYPE herald_publish_to_write_seconds histogram");
    ASSERT_LINE(t, "herald_publish_to_write_seconds_bucket{le=\"5e-05\"} 1");
    ASSERT_LINE(t, "herald_publish_to_write_seconds_bucket{le=\"0.0001\"} 2");
    ASSERT_LINE(t, "herald_publish_to_write_seconds_bucket{le=\"0.0025\"} 2");
    ASSERT_LINE(t, "herald_publish_to_write_seconds_bucket{le=\"0.005\"} 3");
    ASSERT_LINE(t, "herald_publish_to_write_seconds_bucket{le=\"10\"} 3");
    ASSERT_LINE(t, "herald_publish_to_write_seconds_bucket{le=\"+Inf\"} 4");
    ASSERT_LINE(t, "herald_publish_to_write_seconds_count 4");
    ASSERT_LINE(t, "herald_publish_to_write_seconds_sum 20.003140000");
    ASSERT_LINE(t, "# TYPE herald_store_commit_seconds histogram");
    ASSERT_LINE(t, "herald_store_commit_seconds_bucket{le=\"1\"} 0");
    ASSERT_LINE(t, "herald_store_commit_seconds_bucket{le=\"2.5\"} 1");
    ASSERT_LINE(t, "herald_store_commit_seconds_bucket{le=\"+Inf\"} 1");
    ASSERT_LINE(t, "herald_store_commit_seconds_sum 1.500000000");
    ASSERT_LINE(t, "herald_store_commit_seconds_count 1");
    free(t);
}
END_TEST

/*
 * Structural check of the whole exposition: every sample's family has HELP then TYPE before
 * it, bucket counts never decrease, each histogram has 17 buckets and +Inf equals _count.
 */
START_TEST(render_structure)
{
    static struct hd_metrics m;
    memset(&m, 0, sizeof(m));
    for (uint64_t ns = 1; ns < 30000000000u; ns = ns * 3 + 7)
        hd_histogram_observe(&m.store_commit, ns);
    char *t = hd_metrics_render(&m, NULL);
    ck_assert_ptr_nonnull(t);
    ck_assert(t[strlen(t) - 1] == '\n');

    char help[128] = "", type[128] = "";
    uint64_t last_bucket = 0, inf = 0;
    int buckets = 0, families = 0;
    char *save = NULL;
    for (char *line = strtok_r(t, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char name[128], kind[32];
        if (sscanf(line, "# HELP %127s", name) == 1) {
            ck_assert_msg(strlen(line) > strlen(name) + 8, "empty help: %s", line);
            strcpy(help, name);
            families++;
            buckets = 0;
            last_bucket = 0;
            continue;
        }
        if (sscanf(line, "# TYPE %127s %31s", name, kind) == 2) {
            ck_assert_str_eq(name, help);
            ck_assert(!strcmp(kind, "gauge") || !strcmp(kind, "counter") ||
                      !strcmp(kind, "histogram"));
            strcpy(type, name);
            continue;
        }
        ck_assert_msg(line[0] != '#', "stray comment: %s", line);
        ck_assert_msg(strncmp(line, type, strlen(type)) == 0, "%s outside family %s", line, type);
        ck_assert_str_eq(type, help);
        unsigned long long v;
        char le[32];
        const char *bk = strstr(line, "_bucket{le=\"");
        if (bk && sscanf(bk, "_bucket{le=\"%31[^\"]\"} %llu", le, &v) == 2) {
            ck_assert_uint_ge(v, last_bucket);
            last_bucket = v;
            buckets++;
            if (!strcmp(le, "+Inf")) {
                ck_assert_int_eq(buckets, HD_HIST_BUCKETS + 1);
                inf = v;
            }
        } else if (strstr(line, "_count ")) {
            ck_assert_uint_eq(strtoull(strchr(line, ' ') + 1, NULL, 10), inf);
        }
    }
    ck_assert_int_eq(families, 24);
    ck_assert_int_eq(buckets, HD_HIST_BUCKETS + 1);
    ck_assert_uint_eq(inf, atomic_load(&m.store_commit.count));
    free(t);
}
END_TEST

static Suite *metrics_suite(void)
{
    Suite *s = suite_create("metrics");
    TCase *tc = tcase_create("metrics");
    tcase_add_test(tc, bucket_boundaries);
    tcase_add_test(tc, clocks);
    tcase_add_test(tc, render_values);
    tcase_add_test(tc, render_structure);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(metrics_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
