/* SPDX-License-Identifier: MIT */
/*
 * Check suite for the subscription registry (src/registry.c): who receives an event for a
 * topic, that a connection with overlapping patterns counts once, that removal stops
 * delivery and gives every trie node back, that out-of-memory leaves the registry as it was,
 * and a randomized cross-check of the trie walk against the reference matcher.
 */
#include "registry.h"
#include "topic.h"

#include <check.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_GOT 64

struct got {
    struct hd_subscriber *who[MAX_GOT];
    size_t n;
};

static void collect(struct hd_subscriber *sub, void *arg)
{
    struct got *g = arg;
    ck_assert_uint_lt(g->n, MAX_GOT);
    g->who[g->n++] = sub;
}

/* Matches `topic` and checks the returned count equals the number of callbacks. */
static size_t match(struct hd_registry *reg, const char *topic, struct got *g)
{
    memset(g, 0, sizeof(*g));
    size_t n = hd_registry_match(reg, topic, collect, g);
    ck_assert_uint_eq(n, g->n);
    return n;
}

static bool got_has(const struct got *g, const struct hd_subscriber *s)
{
    for (size_t i = 0; i < g->n; i++)
        if (g->who[i] == s)
            return true;
    return false;
}

static struct hd_sub *add(struct hd_registry *reg, const char *pattern, struct hd_subscriber *o)
{
    struct hd_sub *h = hd_registry_add(reg, pattern, o);
    ck_assert_msg(h != NULL, "add %s failed", pattern);
    return h;
}

static struct hd_registry *reg;

static void setup(void)
{
    reg = hd_registry_new();
    ck_assert_ptr_nonnull(reg);
}

static void teardown(void)
{
    hd_registry_free(reg);
    reg = NULL;
}

START_TEST(empty)
{
    struct got g;
    ck_assert_uint_eq(match(reg, "a", &g), 0);
    ck_assert_uint_eq(match(reg, "$sys.x", &g), 0);
    ck_assert_uint_eq(hd_registry_count(reg), 0);
    ck_assert_uint_eq(hd_registry_node_count(reg), 0);
}
END_TEST

START_TEST(exact)
{
    struct hd_subscriber a = {0};
    struct got g;
    struct hd_sub *h = add(reg, "chat.room1", &a);
    ck_assert_str_eq(hd_sub_pattern(h), "chat.room1");
    ck_assert_uint_eq(hd_registry_count(reg), 1);
    ck_assert_uint_eq(match(reg, "chat.room1", &g), 1);
    ck_assert_ptr_eq(g.who[0], &a);
    ck_assert_uint_eq(match(reg, "chat.room2", &g), 0);
    ck_assert_uint_eq(match(reg, "chat", &g), 0);
    ck_assert_uint_eq(match(reg, "chat.room1.x", &g), 0);
    ck_assert_uint_eq(match(reg, "room1", &g), 0);
    /* The same event matched again is delivered again: dedup is per event. */
    ck_assert_uint_eq(match(reg, "chat.room1", &g), 1);
}
END_TEST

START_TEST(pattern_is_copied)
{
    struct hd_subscriber a = {0};
    struct got g;
    char buf[16];
    strcpy(buf, "x.y");
    struct hd_sub *h = add(reg, buf, &a);
    strcpy(buf, "q.q");
    ck_assert_str_eq(hd_sub_pattern(h), "x.y");
    ck_assert_uint_eq(match(reg, "x.y", &g), 1);
    ck_assert_uint_eq(match(reg, "q.q", &g), 0);
}
END_TEST

START_TEST(star)
{
    struct hd_subscriber a = {0}, b = {0};
    struct got g;
    add(reg, "chat.*", &a);
    add(reg, "*.b", &b);
    ck_assert_uint_eq(match(reg, "chat.a", &g), 1);
    ck_assert(got_has(&g, &a));
    ck_assert_uint_eq(match(reg, "chat.a.b", &g), 0);
    ck_assert_uint_eq(match(reg, "chat", &g), 0);
    ck_assert_uint_eq(match(reg, "a.b", &g), 1);
    ck_assert(got_has(&g, &b));
    ck_assert_uint_eq(match(reg, "chat.b", &g), 2);
    ck_assert_uint_eq(match(reg, "$sys.b", &g), 0); /* leading `*` skips reserved topics */
}
END_TEST

START_TEST(gt)
{
    struct hd_subscriber a = {0}, all = {0}, sys = {0}, sysstar = {0};
    struct got g;
    add(reg, "chat.>", &a);
    add(reg, ">", &all);
    add(reg, "$sys.>", &sys);
    add(reg, "$sys.*", &sysstar);
    ck_assert_uint_eq(match(reg, "chat", &g), 1);
    ck_assert(got_has(&g, &all) && !got_has(&g, &a));
    ck_assert_uint_eq(match(reg, "chat.a", &g), 2);
    ck_assert(got_has(&g, &a) && got_has(&g, &all));
    ck_assert_uint_eq(match(reg, "chat.a.b.c", &g), 2);
    ck_assert_uint_eq(match(reg, "news", &g), 1);
    ck_assert_uint_eq(match(reg, "$sys.x", &g), 2);
    ck_assert(got_has(&g, &sys) && got_has(&g, &sysstar) && !got_has(&g, &all));
    ck_assert_uint_eq(match(reg, "$sys.x.y", &g), 1);
    ck_assert(got_has(&g, &sys));
    ck_assert_uint_eq(match(reg, "$sys", &g), 0);
    ck_assert_uint_eq(match(reg, "$other.x", &g), 0);
}
END_TEST

START_TEST(overlap_counted_once)
{
    struct hd_subscriber a = {0}, b = {0};
    struct got g;
    add(reg, "chat.>", &a);
    add(reg, "chat.*", &a);
    add(reg, "chat.room1", &a);
    add(reg, ">", &a);
    add(reg, "*.room1", &a);
    add(reg, "chat.room1", &b);
    for (int round = 0; round < 3; round++) {
        ck_assert_uint_eq(match(reg, "chat.room1", &g), 2);
        ck_assert(got_has(&g, &a) && got_has(&g, &b));
    }
    ck_assert_uint_eq(match(reg, "chat.room2", &g), 1);
    ck_assert_ptr_eq(g.who[0], &a);
}
END_TEST

START_TEST(several_owners_and_remove)
{
    struct hd_subscriber a = {0}, b = {0}, c = {0};
    struct got g;
    struct hd_sub *ha = add(reg, "chat.*", &a);
    struct hd_sub *hb = add(reg, "chat.room1", &b);
    struct hd_sub *hc = add(reg, "news.>", &c);
    ck_assert_uint_eq(match(reg, "chat.room1", &g), 2);
    ck_assert(got_has(&g, &a) && got_has(&g, &b) && !got_has(&g, &c));
    ck_assert_uint_eq(match(reg, "news.x", &g), 1);
    ck_assert(got_has(&g, &c));

    hd_registry_remove(reg, hb);
    ck_assert_uint_eq(hd_registry_count(reg), 2);
    ck_assert_uint_eq(match(reg, "chat.room1", &g), 1);
    ck_assert(got_has(&g, &a));
    hd_registry_remove(reg, ha);
    ck_assert_uint_eq(match(reg, "chat.room1", &g), 0);
    ck_assert_uint_eq(match(reg, "news.x", &g), 1);
    hd_registry_remove(reg, hc);
    ck_assert_uint_eq(match(reg, "news.x", &g), 0);
    ck_assert_uint_eq(hd_registry_count(reg), 0);
    ck_assert_uint_eq(hd_registry_node_count(reg), 0);
    hd_registry_remove(reg, NULL); /* harmless */
}
END_TEST

START_TEST(duplicate_pattern_same_owner)
{
    struct hd_subscriber a = {0};
    struct got g;
    struct hd_sub *h1 = add(reg, "x.y", &a);
    struct hd_sub *h2 = add(reg, "x.y", &a);
    ck_assert_ptr_ne(h1, h2);
    ck_assert_uint_eq(hd_registry_count(reg), 2);
    ck_assert_uint_eq(match(reg, "x.y", &g), 1);
    hd_registry_remove(reg, h1);
    ck_assert_uint_eq(match(reg, "x.y", &g), 1);
    ck_assert_ptr_eq(g.who[0], &a);
    hd_registry_remove(reg, h2);
    ck_assert_uint_eq(match(reg, "x.y", &g), 0);
    ck_assert_uint_eq(hd_registry_node_count(reg), 0);
}
END_TEST

START_TEST(remove_all_restores_baseline)
{
    static const char *const pats[] = {
        "a",   "a.b",    "a.b.c",  "a.*",       "a.*.c", "a.>",     ">",   "*",
        "*.>", "$sys.>", "$sys.x", "b.c.d.e.f", "a.b.c", "x.*.*.>", "a.b",
    };
    enum { N = sizeof(pats) / sizeof(pats[0]) };
    struct hd_subscriber o[N] = {{0}};
    struct hd_sub *h[N];
    struct got g;
    for (int round = 0; round < 2; round++) {
        for (size_t i = 0; i < N; i++)
            h[i] = add(reg, pats[i], &o[i]);
        ck_assert_uint_gt(hd_registry_node_count(reg), 0);
        ck_assert_uint_eq(hd_registry_count(reg), N);
        /* Remove in an order unlike the insertion order so pruning meets shared prefixes. */
        for (size_t i = 0; i < N; i++)
            hd_registry_remove(reg, h[(i * 7) % N]);
        ck_assert_uint_eq(hd_registry_count(reg), 0);
        ck_assert_uint_eq(hd_registry_node_count(reg), 0);
        ck_assert_uint_eq(match(reg, "a.b.c", &g), 0);
    }
}
END_TEST

START_TEST(ten_thousand_siblings)
{
    enum { N = 10000 };
    struct hd_subscriber *o = calloc(N, sizeof(*o));
    struct hd_sub **h = calloc(N, sizeof(*h));
    ck_assert(o && h);
    char topic[32];
    for (int i = 0; i < N; i++) {
        snprintf(topic, sizeof(topic), "t.%d", i);
        h[i] = add(reg, topic, &o[i]);
    }
    ck_assert_uint_eq(hd_registry_count(reg), N);
    ck_assert_uint_eq(hd_registry_node_count(reg), N + 1);
    struct got g;
    for (int i = 0; i < N; i += 997) {
        snprintf(topic, sizeof(topic), "t.%d", i);
        ck_assert_uint_eq(match(reg, topic, &g), 1);
        ck_assert_ptr_eq(g.who[0], &o[i]);
    }
    ck_assert_uint_eq(match(reg, "t.10000", &g), 0);
    ck_assert_uint_eq(match(reg, "t", &g), 0);
    ck_assert_uint_eq(match(reg, "t.42.x", &g), 0);
    /* Removing most of them shrinks the child table; the survivors must still be found. */
    for (int i = 0; i < N; i++)
        if (i % 1000 != 5)
            hd_registry_remove(reg, h[i]);
    ck_assert_uint_eq(hd_registry_count(reg), 10);
    for (int i = 5; i < N; i += 1000) {
        snprintf(topic, sizeof(topic), "t.%d", i);
        ck_assert_uint_eq(match(reg, topic, &g), 1);
        ck_assert_ptr_eq(g.who[0], &o[i]);
    }
    ck_assert_uint_eq(match(reg, "t.6", &g), 0);
    for (int i = 5; i < N; i += 1000)
        hd_registry_remove(reg, h[i]);
    ck_assert_uint_eq(hd_registry_node_count(reg), 0);
    free(h);
    free(o);
}
END_TEST

/* A registry state summary used to check that a failed add changed nothing. */
static void snapshot(size_t out[4])
{
    struct got g;
    out[0] = hd_registry_count(reg);
    out[1] = hd_registry_node_count(reg);
    out[2] = match(reg, "a.deep.path", &g);
    out[3] = match(reg, "a.b", &g);
}

START_TEST(oom_leaves_registry_unchanged)
{
    struct hd_subscriber a = {0}, b = {0};
    struct got g;
    add(reg, "a.b", &a);
    add(reg, "c", &a);
    add(reg, "d", &a); /* root now has 3 literal children: the 4th forces a table resize */
    add(reg, "a.>", &a);
    size_t before[4], after[4];
    snapshot(before);
    ck_assert_uint_eq(before[2], 1);
    unsigned failures = 0;
    struct hd_sub *h = NULL;
    for (unsigned k = 1; k < 100 && !h; k++) {
        hd_registry_fail_alloc_after(reg, k);
        h = hd_registry_add(reg, "e.new.deep.*.x.>", &b);
        hd_registry_fail_alloc_after(reg, 0);
        if (!h) {
            failures++;
            snapshot(after);
            ck_assert_mem_eq(before, after, sizeof(before));
        }
    }
    ck_assert_ptr_nonnull(h);
    /* The handle, five nodes, the root's table growth and three new child tables. */
    ck_assert_uint_ge(failures, 7);
    ck_assert_uint_eq(match(reg, "e.new.deep.q.x.y", &g), 1);
    ck_assert(got_has(&g, &b));

    /* Failing allocations inside an existing path: only the handle is allocated. */
    hd_registry_fail_alloc_after(reg, 1);
    ck_assert_ptr_null(hd_registry_add(reg, "a.b", &b));
    hd_registry_fail_alloc_after(reg, 0);
    ck_assert_uint_eq(match(reg, "a.b", &g), 1);
    ck_assert(got_has(&g, &a) && !got_has(&g, &b));
}
END_TEST

START_TEST(oom_during_shrink)
{
    enum { N = 200 };
    struct hd_subscriber o[N] = {{0}};
    struct hd_sub *h[N];
    char topic[32];
    struct got g;
    for (int i = 0; i < N; i++) {
        snprintf(topic, sizeof(topic), "s.%d", i);
        h[i] = add(reg, topic, &o[i]);
    }
    /* Every shrink attempt during these removals fails; removal must still work. */
    for (int i = 0; i < N - 3; i++) {
        hd_registry_fail_alloc_after(reg, 1);
        hd_registry_remove(reg, h[i]);
    }
    hd_registry_fail_alloc_after(reg, 0);
    for (int i = N - 3; i < N; i++) {
        snprintf(topic, sizeof(topic), "s.%d", i);
        ck_assert_uint_eq(match(reg, topic, &g), 1);
        ck_assert_ptr_eq(g.who[0], &o[i]);
    }
    ck_assert_uint_eq(match(reg, "s.0", &g), 0);
    for (int i = N - 3; i < N; i++)
        hd_registry_remove(reg, h[i]);
    ck_assert_uint_eq(hd_registry_node_count(reg), 0);
}
END_TEST

START_TEST(invalid_pattern_refused)
{
    struct hd_subscriber a = {0};
    ck_assert_ptr_null(hd_registry_add(reg, "a..b", &a));
    ck_assert_ptr_null(hd_registry_add(reg, "a.>.b", &a));
    ck_assert_uint_eq(hd_registry_count(reg), 0);
    ck_assert_uint_eq(hd_registry_node_count(reg), 0);
}
END_TEST

/* ---- randomized cross-check against hd_pattern_match ---------------------------------- */

static uint64_t rng_state;

static uint32_t rnd(uint32_t n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state % n);
}

static const char *const words[] = {"a", "b", "c", "$s"};

static void random_topic(char *out)
{
    size_t depth = 1 + rnd(4);
    out[0] = '\0';
    for (size_t i = 0; i < depth; i++) {
        if (i)
            strcat(out, ".");
        strcat(out, words[rnd(i == 0 ? 4 : 3)]);
    }
}

static void random_pattern(char *out)
{
    size_t depth = 1 + rnd(4);
    out[0] = '\0';
    for (size_t i = 0; i < depth; i++) {
        if (i)
            strcat(out, ".");
        uint32_t r = rnd(10);
        if (i + 1 == depth && r < 2)
            strcat(out, ">");
        else if (r < 4)
            strcat(out, "*");
        else
            strcat(out, words[rnd(i == 0 ? 4 : 3)]);
    }
}

enum { OWNERS = 12, LIVE_MAX = 64 };

struct live {
    struct hd_sub *h;
    int owner;
    char pattern[32];
};

START_TEST(random_cross_check)
{
    struct hd_subscriber owners[OWNERS] = {{0}};
    struct live live[LIVE_MAX];
    size_t nlive = 0, checked_hits = 0;
    rng_state = 0x9e3779b97f4a7c15ULL;
    for (int step = 0; step < 3000; step++) {
        if (nlive < LIVE_MAX && (nlive == 0 || rnd(100) < 55)) {
            struct live *l = &live[nlive++];
            random_pattern(l->pattern);
            ck_assert_int_eq(hd_pattern_check(l->pattern, strlen(l->pattern)), 0);
            l->owner = (int)rnd(OWNERS);
            l->h = add(reg, l->pattern, &owners[l->owner]);
            ck_assert_str_eq(hd_sub_pattern(l->h), l->pattern);
        } else {
            size_t i = rnd((uint32_t)nlive);
            hd_registry_remove(reg, live[i].h);
            live[i] = live[--nlive];
        }
        ck_assert_uint_eq(hd_registry_count(reg), nlive);
        for (int q = 0; q < 4; q++) {
            char topic[32];
            random_topic(topic);
            bool expect[OWNERS] = {false};
            size_t nexpect = 0;
            for (size_t i = 0; i < nlive; i++) {
                if (!expect[live[i].owner] && hd_pattern_match(live[i].pattern, topic)) {
                    expect[live[i].owner] = true;
                    nexpect++;
                }
            }
            struct got g;
            ck_assert_msg(match(reg, topic, &g) == nexpect, "topic %s: %zu owners, expected %zu",
                          topic, g.n, nexpect);
            for (int o = 0; o < OWNERS; o++)
                ck_assert_msg(got_has(&g, &owners[o]) == expect[o], "topic %s owner %d", topic, o);
            checked_hits += nexpect;
        }
    }
    ck_assert_uint_gt(checked_hits, 1000); /* the walk was exercised, not just empty sets */
    while (nlive)
        hd_registry_remove(reg, live[--nlive].h);
    ck_assert_uint_eq(hd_registry_node_count(reg), 0);
}
END_TEST

static Suite *registry_suite(void)
{
    Suite *s = suite_create("registry");
    TCase *tc = tcase_create("registry");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, empty);
    tcase_add_test(tc, exact);
    tcase_add_test(tc, pattern_is_copied);
    tcase_add_test(tc, star);
    tcase_add_test(tc, gt);
    tcase_add_test(tc, overlap_counted_once);
    tcase_add_test(tc, several_owners_and_remove);
    tcase_add_test(tc, duplicate_pattern_same_owner);
    tcase_add_test(tc, remove_all_restores_baseline);
    tcase_add_test(tc, ten_thousand_siblings);
    tcase_add_test(tc, oom_leaves_registry_unchanged);
    tcase_add_test(tc, oom_during_shrink);
    tcase_add_test(tc, invalid_pattern_refused);
    tcase_add_test(tc, random_cross_check);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(registry_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
