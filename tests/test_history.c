/* SPDX-License-Identifier: MIT */
/*
 * Check suite for retained history (src/history.c): what a client replaying, polling or
 * asking for delivery status would see. Covers lookup by id, the per-topic, age and memory
 * bounds, pattern scans with cursors and limits, gap detection for `since`, memory given
 * back when everything expires, tombstone compaction under a long run, and a randomized
 * cross-check of collect/count/resolve against a simple model.
 */
#include "history.h"
#include "protocol.h"
#include "topic.h"

#include <check.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SANITIZE_ADDRESS__)
/* From <sanitizer/allocator_interface.h>, which not every toolchain installs. */
size_t __sanitizer_get_current_allocated_bytes(void);
#endif

/* Heap bytes in use by this process, or 0 when it cannot be measured (e.g. valgrind). */
static size_t heap_in_use(void)
{
#if defined(__SANITIZE_ADDRESS__)
    return __sanitizer_get_current_allocated_bytes();
#else
    return mallinfo2().uordblks;
#endif
}

static struct hd_history *new_history(uint32_t per_topic, uint32_t max_age_s, uint64_t max_bytes,
                                      uint64_t base_seq)
{
    struct hd_history_limits lim = {
        .max_events_per_topic = per_topic,
        .max_age_s = max_age_s,
        .max_bytes = max_bytes,
    };
    struct hd_history *h = hd_history_new(&lim, base_seq);
    ck_assert_ptr_nonnull(h);
    return h;
}

/* Appends an event; history keeps its own reference. Returns the message (borrowed). */
static struct hd_msg *append_t(struct hd_history *h, uint64_t seq, const char *topic,
                               int64_t time_ms)
{
    char data[32];
    int n = snprintf(data, sizeof(data), "{\"n\":%llu}", (unsigned long long)seq);
    struct hd_msg *m = hd_msg_new_event(seq, time_ms, topic, "message", data, (size_t)n);
    ck_assert_ptr_nonnull(m);
    ck_assert_int_eq(hd_history_append(h, m), 0);
    hd_msg_unref(m);
    return m;
}

static struct hd_msg *append(struct hd_history *h, uint64_t seq, const char *topic)
{
    return append_t(h, seq, topic, 1000);
}

static struct hd_since since_id(uint64_t seq)
{
    char id[HD_EVENT_ID_LEN + 1];
    hd_event_id_format(seq, id);
    struct hd_since s = hd_since_parse(id);
    ck_assert_int_eq(s.kind, HD_SINCE_ID);
    ck_assert_uint_eq(s.seq, seq);
    return s;
}

/* Collects into a fixed array and checks the seqs are exactly `want` (n of them). */
static void expect_collect(struct hd_history *h, const char *pattern, uint64_t after, uint64_t upto,
                           size_t limit, const uint64_t *want, size_t n)
{
    struct hd_msg *out[256];
    ck_assert_uint_le(limit, 256);
    size_t got = hd_history_collect(h, pattern, after, upto, out, limit);
    ck_assert_msg(got == n, "collect(%s, %llu, %llu, %zu): %zu events, expected %zu", pattern,
                  (unsigned long long)after, (unsigned long long)upto, limit, got, n);
    for (size_t i = 0; i < n; i++) {
        ck_assert_msg(out[i]->seq == want[i], "collect(%s)[%zu] = %llu, expected %llu", pattern, i,
                      (unsigned long long)out[i]->seq, (unsigned long long)want[i]);
        ck_assert_msg(hd_pattern_match(pattern, out[i]->topic), "%s does not match %s",
                      out[i]->topic, pattern);
    }
}

#define SEQS(...) ((const uint64_t[]){__VA_ARGS__}), (sizeof((const uint64_t[]){__VA_ARGS__}) / 8)

START_TEST(empty)
{
    struct hd_history *h = new_history(10, 0, 1 << 20, 500);
    ck_assert_uint_eq(hd_history_last_seq(h), 499);
    ck_assert_uint_eq(hd_history_events(h), 0);
    ck_assert_uint_eq(hd_history_bytes(h), 0);
    ck_assert_ptr_null(hd_history_get(h, 500));
    ck_assert_ptr_null(hd_history_get(h, 0));
    struct hd_msg *out[4];
    ck_assert_uint_eq(hd_history_collect(h, ">", 0, 0, out, 4), 0);
    ck_assert_uint_eq(hd_history_count(h, "a", 0, 0), 0);
    /* "latest" on an empty history gives a cursor that, handed back, is not a gap. */
    bool gap = true;
    uint64_t pos = hd_history_resolve(h, ">", hd_since_parse("latest"), &gap);
    ck_assert(!gap);
    ck_assert_uint_eq(pos, 499);
    ck_assert_uint_eq(hd_history_resolve(h, ">", since_id(pos), &gap), 499);
    ck_assert(!gap);
    hd_history_free(h);
    hd_history_free(NULL);
}
END_TEST

START_TEST(append_and_get)
{
    struct hd_history *h = new_history(100, 0, 1 << 20, 1);
    struct hd_msg *a = append(h, 10, "chat.room1");
    struct hd_msg *b = append(h, 11, "chat.room2");
    struct hd_msg *c = append(h, 15, "chat.room1");
    ck_assert_ptr_eq(hd_history_get(h, 10), a);
    ck_assert_ptr_eq(hd_history_get(h, 11), b);
    ck_assert_ptr_eq(hd_history_get(h, 15), c);
    ck_assert_ptr_null(hd_history_get(h, 9));
    ck_assert_ptr_null(hd_history_get(h, 12));
    ck_assert_ptr_null(hd_history_get(h, 16));
    ck_assert_uint_eq(hd_history_last_seq(h), 15);
    ck_assert_uint_eq(hd_history_events(h), 3);
    ck_assert_uint_eq(hd_history_bytes(h), (size_t)a->len + b->len + c->len);
    /* History holds its own reference. */
    ck_assert_uint_eq(a->refs, 1);
    hd_msg_ref(a);
    hd_history_free(h);
    /* Freeing history gives its references back; ours survives. */
    ck_assert_uint_eq(a->refs, 1);
    ck_assert_str_eq(a->topic, "chat.room1");
    hd_msg_unref(a);
}
END_TEST

START_TEST(since_parse)
{
    ck_assert_int_eq(hd_since_parse(NULL).kind, HD_SINCE_ALL);
    ck_assert_int_eq(hd_since_parse("all").kind, HD_SINCE_ALL);
    ck_assert_int_eq(hd_since_parse("latest").kind, HD_SINCE_LATEST);
    struct hd_since s = hd_since_parse("00000000000000ff");
    ck_assert_int_eq(s.kind, HD_SINCE_ID);
    ck_assert_uint_eq(s.seq, 255);
    const char *bad[] = {"",
                         "ALL",
                         "Latest",
                         "ff",
                         "00000000000000FF",
                         "00000000000000ff0",
                         "0000000000000 ff",
                         "-1",
                         "00000000000000fg"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(hd_since_parse(bad[i]).kind == HD_SINCE_INVALID, "'%s' accepted", bad[i]);
}
END_TEST

START_TEST(per_topic_cap)
{
    struct hd_history *h = new_history(3, 0, 1 << 20, 1);
    append(h, 1, "b");
    for (uint64_t s = 2; s <= 6; s++)
        append(h, s, "a"); /* a: 2..6, only 4,5,6 retained */
    append(h, 7, "b");
    append(h, 8, "c");
    for (uint64_t s = 9; s <= 10; s++)
        append(h, s, "a"); /* a: now 6,9,10 */

    expect_collect(h, "a", 0, 0, 100, SEQS(6, 9, 10));
    expect_collect(h, "b", 0, 0, 100, SEQS(1, 7));
    expect_collect(h, "c", 0, 0, 100, SEQS(8));
    expect_collect(h, ">", 0, 0, 100, SEQS(1, 6, 7, 8, 9, 10));
    for (uint64_t s = 2; s <= 5; s++)
        ck_assert_msg(hd_history_get(h, s) == NULL, "pruned event %llu still found",
                      (unsigned long long)s);
    ck_assert_ptr_nonnull(hd_history_get(h, 1)); /* other topics untouched */
    ck_assert_ptr_nonnull(hd_history_get(h, 6));
    ck_assert_uint_eq(hd_history_events(h), 6);
    struct hd_msg *out[8];
    size_t n = hd_history_collect(h, ">", 0, 0, out, 8);
    size_t bytes = 0;
    for (size_t i = 0; i < n; i++)
        bytes += out[i]->len;
    ck_assert_uint_eq(hd_history_bytes(h), bytes);
    hd_history_free(h);
}
END_TEST

START_TEST(per_topic_cap_of_one)
{
    struct hd_history *h = new_history(1, 0, 1 << 20, 1);
    for (uint64_t s = 1; s <= 50; s++)
        append(h, s, s % 2 ? "odd" : "even");
    expect_collect(h, ">", 0, 0, 10, SEQS(49, 50));
    ck_assert_uint_eq(hd_history_events(h), 2);
    hd_history_free(h);
}
END_TEST

START_TEST(cap_change_at_runtime)
{
    struct hd_history *h = new_history(3, 0, 1 << 20, 1);
    for (uint64_t s = 1; s <= 5; s++)
        append(h, s, "a");
    expect_collect(h, "a", 0, 0, 100, SEQS(3, 4, 5));
    /* Raising the limit lets the topic grow to it. */
    struct hd_history_limits lim = {.max_events_per_topic = 5, .max_bytes = 1 << 20};
    hd_history_set_limits(h, &lim);
    for (uint64_t s = 6; s <= 9; s++)
        append(h, s, "a");
    expect_collect(h, "a", 0, 0, 100, SEQS(5, 6, 7, 8, 9));
    /* Lowering it (a config reload): the topic's next append leaves only the newest 2. */
    lim.max_events_per_topic = 2;
    hd_history_set_limits(h, &lim);
    append(h, 10, "a");
    expect_collect(h, "a", 0, 0, 100, SEQS(9, 10));
    ck_assert_uint_eq(hd_history_events(h), 2);
    hd_history_free(h);
}
END_TEST

/* A small mixed history for the scan tests: seqs 1..12 on several topics. */
static struct hd_history *scan_history(void)
{
    struct hd_history *h = new_history(100, 0, 1 << 20, 1);
    const char *topics[] = {"chat.room1",    "chat.room2", "user.42.inbox", "chat.room1",
                            "logins",        "chat.room1", "user.7.inbox",  "chat.room2",
                            "user.42.inbox", "chat",       "chat.room1.x",  "logins"};
    for (uint64_t s = 1; s <= 12; s++)
        append(h, s, topics[s - 1]);
    return h;
}

START_TEST(collect_patterns)
{
    struct hd_history *h = scan_history();
    expect_collect(h, "chat.room1", 0, 0, 100, SEQS(1, 4, 6));
    expect_collect(h, "chat.*", 0, 0, 100, SEQS(1, 2, 4, 6, 8));
    expect_collect(h, "chat.>", 0, 0, 100, SEQS(1, 2, 4, 6, 8, 11));
    expect_collect(h, "user.*.inbox", 0, 0, 100, SEQS(3, 7, 9));
    expect_collect(h, "*", 0, 0, 100, SEQS(5, 10, 12));
    expect_collect(h, ">", 0, 0, 100, SEQS(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12));
    expect_collect(h, "nothing", 0, 0, 100, NULL, 0);
    expect_collect(h, "nothing.*", 0, 0, 100, NULL, 0);
    hd_history_free(h);
}
END_TEST

START_TEST(collect_bounds)
{
    struct hd_history *h = scan_history();
    /* after */
    expect_collect(h, "chat.room1", 1, 0, 100, SEQS(4, 6));
    expect_collect(h, "chat.room1", 4, 0, 100, SEQS(6));
    expect_collect(h, "chat.room1", 6, 0, 100, NULL, 0);
    expect_collect(h, "chat.*", 3, 0, 100, SEQS(4, 6, 8));
    expect_collect(h, ">", 11, 0, 100, SEQS(12));
    expect_collect(h, ">", 12, 0, 100, NULL, 0);
    /* upto (inclusive) */
    expect_collect(h, "chat.room1", 0, 4, 100, SEQS(1, 4));
    expect_collect(h, "chat.*", 1, 6, 100, SEQS(2, 4, 6));
    expect_collect(h, ">", 5, 5, 100, NULL, 0);
    expect_collect(h, ">", 4, 5, 100, SEQS(5));
    /* limit: the oldest first, so `next` continues without skipping */
    expect_collect(h, ">", 0, 0, 3, SEQS(1, 2, 3));
    expect_collect(h, ">", 3, 0, 3, SEQS(4, 5, 6));
    expect_collect(h, "chat.room1", 0, 0, 2, SEQS(1, 4));
    expect_collect(h, "chat.>", 2, 8, 2, SEQS(4, 6));
    struct hd_msg *out[1];
    ck_assert_uint_eq(hd_history_collect(h, ">", 0, 0, out, 0), 0);
    hd_history_free(h);
}
END_TEST

START_TEST(count_agrees_with_collect)
{
    struct hd_history *h = scan_history();
    const char *patterns[] = {"chat.room1", "chat.*", "chat.>", "user.*.inbox", "*",
                              ">",          "logins", "none",   "user.>"};
    for (size_t p = 0; p < sizeof(patterns) / sizeof(patterns[0]); p++)
        for (uint64_t after = 0; after <= 13; after++)
            for (uint64_t upto = 0; upto <= 13; upto++) {
                struct hd_msg *out[32];
                size_t n = hd_history_collect(h, patterns[p], after, upto, out, 32);
                size_t c = hd_history_count(h, patterns[p], after, upto);
                ck_assert_msg(n == c, "%s after %llu upto %llu: collect %zu, count %zu",
                              patterns[p], (unsigned long long)after, (unsigned long long)upto, n,
                              c);
                for (size_t i = 1; i < n; i++)
                    ck_assert_uint_lt(out[i - 1]->seq, out[i]->seq);
            }
    hd_history_free(h);
}
END_TEST

START_TEST(resolve_cursors)
{
    /* base 100; a.x gets 6 events with a cap of 3, so 101..103 are pruned. */
    struct hd_history *h = new_history(3, 0, 1 << 20, 100);
    append(h, 100, "b.1");
    for (uint64_t s = 101; s <= 106; s++)
        append(h, s, "a.x");
    append(h, 107, "b.2");
    bool gap;

    ck_assert_uint_eq(hd_history_resolve(h, "a.x", hd_since_parse(NULL), &gap), 0);
    ck_assert(!gap);
    ck_assert_uint_eq(hd_history_resolve(h, ">", hd_since_parse("all"), &gap), 0);
    ck_assert(!gap);
    ck_assert_uint_eq(hd_history_resolve(h, "a.x", hd_since_parse("latest"), &gap), 107);
    ck_assert(!gap);

    /* A retained id: continue right after it. */
    ck_assert_uint_eq(hd_history_resolve(h, "a.x", since_id(105), &gap), 105);
    ck_assert(!gap);
    ck_assert_uint_eq(hd_history_resolve(h, ">", since_id(104), &gap), 104);
    ck_assert(!gap);
    /* The newest pruned id itself: nothing after it was lost. */
    ck_assert_uint_eq(hd_history_resolve(h, "a.x", since_id(103), &gap), 103);
    ck_assert(!gap);

    /* Older than what a.x pruned, for patterns matching a.x: gap, replay everything. */
    const char *matching[] = {"a.x", "a.*", "a.>", "*.x", ">"};
    for (size_t i = 0; i < sizeof(matching) / sizeof(matching[0]); i++) {
        gap = false;
        ck_assert_uint_eq(hd_history_resolve(h, matching[i], since_id(102), &gap), 0);
        ck_assert_msg(gap, "no gap for %s since 102", matching[i]);
        gap = false;
        hd_history_resolve(h, matching[i], since_id(100), &gap);
        ck_assert_msg(gap, "no gap for %s since 100", matching[i]);
    }
    /* The same old id for patterns that only match untouched topics: no gap. */
    const char *untouched[] = {"b.1", "b.*", "b.>", "c", "a.y", "*.1"};
    for (size_t i = 0; i < sizeof(untouched) / sizeof(untouched[0]); i++) {
        gap = true;
        ck_assert_uint_eq(hd_history_resolve(h, untouched[i], since_id(100), &gap), 100);
        ck_assert_msg(!gap, "gap for %s since 100", untouched[i]);
    }

    /* Malformed, above the newest, below the base: unknown to this server, so a gap. */
    gap = false;
    ck_assert_uint_eq(hd_history_resolve(h, "b.1", hd_since_parse("nonsense"), &gap), 0);
    ck_assert(gap);
    gap = false;
    ck_assert_uint_eq(hd_history_resolve(h, "b.1", since_id(108), &gap), 0);
    ck_assert(gap);
    gap = false;
    ck_assert_uint_eq(hd_history_resolve(h, "b.1", since_id(UINT64_MAX), &gap), 0);
    ck_assert(gap);
    gap = false;
    ck_assert_uint_eq(hd_history_resolve(h, "b.1", since_id(50), &gap), 0);
    ck_assert(gap);
    gap = false;
    ck_assert_uint_eq(hd_history_resolve(h, "b.1", since_id(0), &gap), 0);
    ck_assert(gap);
    hd_history_free(h);
}
END_TEST

/* Resolves `since` on `pattern` and returns whether it is a gap. */
static bool gap_of(struct hd_history *h, const char *pattern, uint64_t since)
{
    bool gap = false;
    hd_history_resolve(h, pattern, since_id(since), &gap);
    return gap;
}

/*
 * Boundaries recovered from a store (what retention dropped in an earlier life) act like the
 * history's own pruning: per topic for a topic that has events, as the horizon for every topic
 * for one that has none (not kept by name) and for topic NULL; an id at a boundary is a valid
 * cursor even when nothing after it is retained.
 */
START_TEST(mark_pruned_recovered_boundaries)
{
    struct hd_history *h = new_history(10, 0, 1 << 20, 100);
    append(h, 110, "a");
    append(h, 120, "b");
    hd_history_mark_pruned(h, "a", 105); /* "a" lost 100..105 */
    ck_assert(gap_of(h, "a", 104));
    ck_assert(gap_of(h, "*", 104));
    ck_assert(!gap_of(h, "a", 105));
    ck_assert(!gap_of(h, "b", 100));     /* "b" lost nothing */
    hd_history_mark_pruned(h, "a", 103); /* a lower boundary changes nothing */
    ck_assert(gap_of(h, "a", 104));

    /* A topic with no retained event: every topic's cursors before it are cut. */
    hd_history_mark_pruned(h, "gone", 102);
    ck_assert(gap_of(h, "gone", 101));
    ck_assert(gap_of(h, "b", 101));
    ck_assert(!gap_of(h, "b", 102));
    ck_assert(!gap_of(h, "gone", 102));
    hd_history_mark_pruned(h, NULL, 103);
    ck_assert(gap_of(h, "b", 102));
    ck_assert(!gap_of(h, "b", 103));
    ck_assert_uint_eq(hd_history_events(h), 2); /* nothing retained is dropped */
    hd_history_free(h);

    /* Everything was dropped: the newest dropped id is still a valid cursor, and "latest". */
    h = new_history(10, 0, 1 << 20, 100);
    hd_history_mark_pruned(h, NULL, 150);
    ck_assert(gap_of(h, "x", 149));
    ck_assert(!gap_of(h, "x", 150));
    ck_assert(gap_of(h, "x", 151));
    ck_assert_uint_eq(hd_history_last_seq(h), 150);
    append(h, 160, "x");
    ck_assert(gap_of(h, "x", 149));
    ck_assert(!gap_of(h, "x", 150));
    hd_history_free(h);
}
END_TEST

START_TEST(max_bytes_evicts_oldest)
{
    /* Every event here has the same size; room for three and a half. */
    struct hd_msg *probe = hd_msg_new_event(11, 1000, "t.a", "message", "{\"n\":11}", 8);
    ck_assert_ptr_nonnull(probe);
    size_t sz = probe->len;
    hd_msg_unref(probe);
    struct hd_history *h = new_history(100, 0, sz * 7 / 2, 1);
    const char *topics[] = {"t.a", "t.b", "t.a", "t.c", "t.b", "t.d"};
    for (uint64_t s = 11; s <= 16; s++) {
        struct hd_msg *m = append(h, s, topics[s - 11]);
        ck_assert_uint_eq(m->len, sz);
        ck_assert_uint_le(hd_history_bytes(h), sz * 7 / 2);
    }
    ck_assert_uint_eq(hd_history_events(h), 3);
    ck_assert_uint_eq(hd_history_bytes(h), 3 * sz);
    for (uint64_t s = 11; s <= 13; s++)
        ck_assert_ptr_null(hd_history_get(h, s));
    expect_collect(h, ">", 0, 0, 10, SEQS(14, 15, 16));
    expect_collect(h, "t.a", 0, 0, 10, NULL, 0);
    expect_collect(h, "t.b", 0, 0, 10, SEQS(15));
    /* t.b lost event 12 to memory: a cursor before it is a gap, after it is not. */
    bool gap = false;
    hd_history_resolve(h, "t.b", since_id(11), &gap);
    ck_assert(gap);
    ck_assert_uint_eq(hd_history_resolve(h, "t.b", since_id(14), &gap), 14);
    ck_assert(!gap);
    /* A single event larger than the whole budget is still retained (the newest always is). */
    struct hd_history_limits lim = {.max_events_per_topic = 100, .max_bytes = 1};
    hd_history_set_limits(h, &lim);
    append(h, 17, "t.e");
    ck_assert_uint_eq(hd_history_events(h), 1);
    expect_collect(h, ">", 0, 0, 10, SEQS(17));
    hd_history_free(h);
}
END_TEST

START_TEST(max_age_expiry)
{
    struct hd_history *h = new_history(100, 60, 1 << 20, 1);
    /* old: 1..4 at t=0..3 s; mix: 5 old, 8 recent; new: 6,7,9 recent. */
    for (uint64_t s = 1; s <= 4; s++)
        append_t(h, s, "old", (int64_t)(s - 1) * 1000);
    append_t(h, 5, "mix", 4000);
    append_t(h, 6, "new", 100000);
    append_t(h, 7, "new", 101000);
    append_t(h, 8, "mix", 102000);
    append_t(h, 9, "new", 103000);
    ck_assert_uint_eq(hd_history_expire(h, 50000), 0); /* nothing older than 60 s yet */
    ck_assert_uint_eq(hd_history_events(h), 9);
    /* Exactly 60 s old is not older than 60 s. */
    ck_assert_uint_eq(hd_history_expire(h, 61000), 1);
    ck_assert_ptr_null(hd_history_get(h, 1));
    ck_assert_ptr_nonnull(hd_history_get(h, 2));
    /* Everything at or after now - 60 s stays. */
    ck_assert_uint_eq(hd_history_expire(h, 61001), 1); /* t=1000 */
    expect_collect(h, ">", 0, 0, 20, SEQS(3, 4, 5, 6, 7, 8, 9));
    ck_assert_uint_eq(hd_history_expire(h, 130000), 3);
    ck_assert_uint_eq(hd_history_events(h), 4);
    for (uint64_t s = 1; s <= 5; s++)
        ck_assert_ptr_null(hd_history_get(h, s));
    expect_collect(h, ">", 0, 0, 20, SEQS(6, 7, 8, 9));
    expect_collect(h, "old", 0, 0, 20, NULL, 0);

    bool gap = false;
    hd_history_resolve(h, "old", since_id(2), &gap);
    ck_assert_msg(gap, "cursor older than expired events of its topic: no gap");
    gap = false;
    hd_history_resolve(h, "mix", since_id(4), &gap);
    ck_assert_msg(gap, "cursor older than an expired event of a live topic: no gap");
    ck_assert_uint_eq(hd_history_resolve(h, "old", since_id(4), &gap), 4);
    ck_assert_msg(!gap, "cursor at the newest expired event of its topic: gap");
    ck_assert_uint_eq(hd_history_resolve(h, "mix", since_id(5), &gap), 5);
    ck_assert(!gap);
    /* Recent ids on any topic are fine. */
    ck_assert_uint_eq(hd_history_resolve(h, "new", since_id(6), &gap), 6);
    ck_assert(!gap);
    ck_assert_uint_eq(hd_history_resolve(h, ">", since_id(7), &gap), 7);
    ck_assert(!gap);
    ck_assert_uint_eq(hd_history_resolve(h, "old", since_id(8), &gap), 8);
    ck_assert(!gap);
    hd_history_free(h);
}
END_TEST

START_TEST(no_age_limit)
{
    struct hd_history *h = new_history(100, 0, 1 << 20, 1);
    append_t(h, 1, "a", 0);
    ck_assert_uint_eq(hd_history_expire(h, INT64_MAX / 2), 0);
    ck_assert_ptr_nonnull(hd_history_get(h, 1));
    hd_history_free(h);
}
END_TEST

START_TEST(many_topics_expire_all)
{
    size_t base = heap_in_use();
    struct hd_history *h = new_history(100, 10, UINT64_MAX, 1);
    char t[32];
    for (uint64_t s = 1; s <= 10000; s++) {
        snprintf(t, sizeof(t), "dev.%llu.state", (unsigned long long)s);
        append_t(h, s, t, 1000);
    }
    size_t peak = heap_in_use();
    ck_assert_uint_eq(hd_history_events(h), 10000);
    ck_assert_uint_eq(hd_history_count(h, "dev.*.state", 0, 0), 10000);
    ck_assert_uint_eq(hd_history_count(h, "dev.777.state", 0, 0), 1);
    ck_assert_uint_eq(hd_history_expire(h, 1000 + 10 * 1000 + 1), 10000);
    ck_assert_uint_eq(hd_history_events(h), 0);
    ck_assert_uint_eq(hd_history_bytes(h), 0);
    ck_assert_uint_eq(hd_history_count(h, ">", 0, 0), 0);
    ck_assert_uint_eq(hd_history_count(h, "dev.777.state", 0, 0), 0);
    ck_assert_ptr_null(hd_history_get(h, 5000));
    ck_assert_uint_eq(hd_history_last_seq(h), 10000);
    /* The expired topics' memory is given back (index arrays may keep their size). */
    size_t after = heap_in_use();
    if (peak > base)
        ck_assert_msg(after - base < (peak - base) / 4,
                      "%zu bytes still held after expiring everything (peak %zu)", after - base,
                      peak - base);
    /* Still usable, and a topic that comes back starts afresh. */
    append_t(h, 10001, "dev.777.state", 20000);
    expect_collect(h, "dev.777.state", 0, 0, 10, SEQS(10001));
    ck_assert_uint_eq(hd_history_events(h), 1);
    bool gap;
    ck_assert_uint_eq(hd_history_resolve(h, "dev.1.state", since_id(10000), &gap), 10000);
    ck_assert(!gap);
    hd_history_resolve(h, "dev.1.state", since_id(500), &gap);
    ck_assert(gap);
    hd_history_free(h);
}
END_TEST

START_TEST(tombstone_compaction)
{
    /* "rare" keeps its first events at the head of the global order while "hot" prunes
     * behind them: the pruned slots cannot be popped from the head and must be compacted. */
    size_t base = heap_in_use();
    struct hd_history *h = new_history(10, 0, UINT64_MAX, 1);
    uint64_t rare[10];
    size_t nrare = 0;
    for (uint64_t s = 1; s <= 100000; s++) {
        if (s % 10000 == 31) { /* after 30 hot ones, so the head has moved */
            append(h, s, "rare");
            rare[nrare++] = s;
        } else {
            append(h, s, "hot");
        }
        if (s % 997 == 0) {
            ck_assert_uint_eq(hd_history_events(h), nrare + 10);
            ck_assert_ptr_nonnull(hd_history_get(h, s));
            for (uint64_t k = s - 30; k < s - 11; k++)
                if (k % 10000 != 31)
                    ck_assert_ptr_null(hd_history_get(h, k));
            ck_assert_uint_eq(hd_history_count(h, "hot", 0, 0), 10);
        }
    }
    ck_assert_uint_eq(nrare, 10);
    ck_assert_uint_eq(hd_history_events(h), 20);
    /* 20 retained events of a few hundred bytes: the index must not have kept a slot for
     * each of the 100,000 appends (that would be over 1.5 MB). */
    size_t held = heap_in_use() - base;
    ck_assert_msg(held < 256 * 1024, "%zu bytes held for 20 retained events", held);
    uint64_t want[20];
    for (size_t i = 0; i < 10; i++)
        want[i] = rare[i];
    for (size_t i = 0; i < 10; i++)
        want[10 + i] = 99991 + i;
    expect_collect(h, ">", 0, 0, 100, want, 20);
    expect_collect(h, "hot", 0, 0, 100, want + 10, 10);
    expect_collect(h, "rare", 0, 0, 100, want, 10);
    expect_collect(h, "*", 50000, 0, 100, want + 5, 15);
    ck_assert_uint_eq(hd_history_count(h, ">", 0, 0), 20);
    for (size_t i = 0; i < 20; i++) {
        struct hd_msg *m = hd_history_get(h, want[i]);
        ck_assert_ptr_nonnull(m);
        ck_assert_uint_eq(m->seq, want[i]);
    }
    for (uint64_t s = 2; s < 99991; s += 7)
        if (s % 10000 != 31)
            ck_assert_ptr_null(hd_history_get(h, s));
    hd_history_free(h);
}
END_TEST

/* ---- randomized cross-check against a model --------------------------------------------- */

struct model_ev {
    uint64_t seq;
    int topic;
    size_t len;
    bool retained;
};

static const char *mtopics[] = {"a", "a.b", "a.c", "b.x", "b.y.z", "c", "a.b.c"};
static const char *mpatterns[] = {"a",     "a.*", "a.>",     "b.>", "*",    ">",
                                  "*.y.*", "c",   "nomatch", "a.b", "*.b.>"};
#define NT (sizeof(mtopics) / sizeof(mtopics[0]))
#define NP (sizeof(mpatterns) / sizeof(mpatterns[0]))
#define NEV 4000

static uint32_t rnd(uint32_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 17;
    *x ^= *x << 5;
    return *x;
}

static void model_run(uint32_t cap, uint64_t max_bytes, uint32_t seed)
{
    static struct model_ev ev[NEV];
    struct hd_history *h = new_history(cap, 0, max_bytes, 1);
    uint32_t x = seed;
    size_t n = 0, retained = 0, bytes = 0, oldest = 0; /* oldest: first possibly retained */
    uint64_t seq = 0;
    for (int step = 0; step < NEV; step++) {
        seq += 1 + rnd(&x) % 3;
        int t = (int)(rnd(&x) % NT);
        int dlen = (int)(rnd(&x) % 50);
        char data[64];
        data[0] = '"';
        memset(data + 1, 'x', (size_t)dlen);
        data[dlen + 1] = '"';
        struct hd_msg *m =
            hd_msg_new_event(seq, 1000, mtopics[t], "message", data, (size_t)dlen + 2);
        ck_assert_ptr_nonnull(m);
        ck_assert_int_eq(hd_history_append(h, m), 0);
        /* Model: per-topic cap first, then add, then evict the globally oldest. */
        size_t in_topic = 0, first = SIZE_MAX;
        for (size_t i = oldest; i < n; i++)
            if (ev[i].retained && ev[i].topic == t) {
                in_topic++;
                if (first == SIZE_MAX)
                    first = i;
            }
        if (in_topic == cap) {
            ev[first].retained = false;
            retained--;
            bytes -= ev[first].len;
        }
        ev[n++] = (struct model_ev){.seq = seq, .topic = t, .len = m->len, .retained = true};
        retained++;
        bytes += m->len;
        hd_msg_unref(m);
        while (bytes > max_bytes && retained > 1) {
            while (!ev[oldest].retained)
                oldest++;
            ev[oldest].retained = false;
            retained--;
            bytes -= ev[oldest].len;
        }
        ck_assert_uint_eq(hd_history_events(h), retained);
        ck_assert_uint_eq(hd_history_bytes(h), bytes);
        if (step % 40 != 0)
            continue;
        /* Compare scans, lookups and cursors. */
        for (size_t p = 0; p < NP; p++) {
            uint64_t after = seq ? rnd(&x) % (seq + 1) : 0;
            uint64_t upto = rnd(&x) % 3 ? 0 : after + rnd(&x) % 40;
            size_t limit = 1 + rnd(&x) % 30;
            struct hd_msg *out[32];
            size_t got = hd_history_collect(h, mpatterns[p], after, upto, out, limit);
            size_t want = 0, total = 0;
            for (size_t i = 0; i < n; i++) {
                if (!ev[i].retained || ev[i].seq <= after || (upto && ev[i].seq > upto) ||
                    !hd_pattern_match(mpatterns[p], mtopics[ev[i].topic]))
                    continue;
                total++;
                if (want < limit) {
                    ck_assert_msg(want < got && out[want]->seq == ev[i].seq,
                                  "step %d %s: collect[%zu] wrong", step, mpatterns[p], want);
                    want++;
                }
            }
            ck_assert_uint_eq(got, want);
            ck_assert_uint_eq(hd_history_count(h, mpatterns[p], after, upto), total);

            /* Gap: must be reported whenever a matching event after the cursor is gone;
             * with only the per-topic cap in play, exactly then. */
            uint64_t c = rnd(&x) % (seq + 1);
            bool missed = false;
            for (size_t i = 0; i < n && !missed; i++)
                missed = !ev[i].retained && ev[i].seq > c &&
                         hd_pattern_match(mpatterns[p], mtopics[ev[i].topic]);
            bool gap;
            uint64_t pos = hd_history_resolve(h, mpatterns[p], since_id(c), &gap);
            if (missed)
                ck_assert_msg(gap, "step %d %s since %llu: events missed, no gap", step,
                              mpatterns[p], (unsigned long long)c);
            if (max_bytes == UINT64_MAX)
                ck_assert_msg(gap == missed, "step %d %s since %llu: gap %d, missed %d", step,
                              mpatterns[p], (unsigned long long)c, gap, missed);
            ck_assert_uint_eq(pos, gap ? 0 : c);
        }
        for (size_t i = 0; i < n; i += 1 + rnd(&x) % 20) {
            struct hd_msg *g = hd_history_get(h, ev[i].seq);
            ck_assert_msg(ev[i].retained ? g != NULL : g == NULL, "get(%llu)",
                          (unsigned long long)ev[i].seq);
            if (g)
                ck_assert_uint_eq(g->seq, ev[i].seq);
        }
    }
    hd_history_free(h);
}

START_TEST(model_cap_only)
{
    model_run(7, UINT64_MAX, 0x9e3779b9u);
}
END_TEST

START_TEST(model_cap_and_bytes)
{
    model_run(25, 3000, 0x12345678u);
}
END_TEST

START_TEST(model_bytes_only)
{
    model_run(100000, 1500, 0xdeadbeefu);
}
END_TEST

static Suite *history_suite(void)
{
    Suite *s = suite_create("history");
    TCase *tc = tcase_create("basic");
    tcase_add_test(tc, empty);
    tcase_add_test(tc, append_and_get);
    tcase_add_test(tc, since_parse);
    tcase_add_test(tc, per_topic_cap);
    tcase_add_test(tc, per_topic_cap_of_one);
    tcase_add_test(tc, cap_change_at_runtime);
    suite_add_tcase(s, tc);

    tc = tcase_create("scan");
    tcase_add_test(tc, collect_patterns);
    tcase_add_test(tc, collect_bounds);
    tcase_add_test(tc, count_agrees_with_collect);
    tcase_add_test(tc, resolve_cursors);
    tcase_add_test(tc, mark_pruned_recovered_boundaries);
    suite_add_tcase(s, tc);

    tc = tcase_create("eviction");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, max_bytes_evicts_oldest);
    tcase_add_test(tc, max_age_expiry);
    tcase_add_test(tc, no_age_limit);
    tcase_add_test(tc, many_topics_expire_all);
    tcase_add_test(tc, tombstone_compaction);
    suite_add_tcase(s, tc);

    tc = tcase_create("model");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, model_cap_only);
    tcase_add_test(tc, model_cap_and_bytes);
    tcase_add_test(tc, model_bytes_only);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(history_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
