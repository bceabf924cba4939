/* SPDX-License-Identifier: MIT */
/*
 * The subscription table's resume cursors and duplicate filter, driven as the I/O thread
 * drives them (send, ok with a replay count, event frames), without sockets. These are the
 * rules behind "an app loses nothing and sees nothing twice across reconnects".
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Ids as the server makes them: 16 hex digits that sort as strings. */
static const char *id(unsigned n)
{
    static char buf[8][17];
    static int k;
    char *p = buf[k++ % 8];
    snprintf(p, 17, "%016x", n);
    return p;
}

static int64_t wire;

/* Sends a subscribe for `s` and returns the since it carried. */
static const char *send_sub(struct herald__sub *s)
{
    static char since[HERALD_ID_SIZE];
    herald__sub_sent(s, ++wire, since);
    ck_assert_int_eq(s->state, HERALD__SUB_SENT);
    return since;
}

static void ok(struct herald__subs *t, struct herald__sub *s, size_t replayed, bool gap)
{
    herald__subs_on_ok(t, herald__subs_find_wire(t, s->wire_id), replayed, gap, NULL);
}

static bool ev(struct herald__subs *t, const char *topic, unsigned n)
{
    return herald__subs_on_event(t, topic, id(n), NULL);
}

static const char *cursor(struct herald__sub *s)
{
    static char out[HERALD_ID_SIZE];
    herald__sub_cursor(s, out);
    return out;
}

START_TEST(live_subscription_resumes_after_last_event)
{
    struct herald__subs t = {0};
    struct herald__sub *s = herald__subs_add(&t, "chat.>", NULL);
    ck_assert_str_eq(send_sub(s), ""); /* first time: live, no since */
    ok(&t, s, 0, false);
    ck_assert_str_eq(cursor(s), "");
    ck_assert(ev(&t, "chat.a", 10));
    ck_assert(ev(&t, "chat.b", 11));
    ck_assert(ev(&t, "other", 12)); /* not ours, but proves ours is complete up to 12 */
    ck_assert_str_eq(cursor(s), id(12));

    herald__subs_disconnected(&t);
    ck_assert_int_eq(s->state, HERALD__SUB_UNSENT);
    ck_assert_str_eq(send_sub(s), id(12));
    ck_assert(!s->blind);
    herald__subs_clear(&t);
}
END_TEST

START_TEST(replay_then_live)
{
    struct herald__subs t = {0};
    struct herald__sub *s = herald__subs_add(&t, "a.*", "all");
    ck_assert_str_eq(send_sub(s), "all");
    ok(&t, s, 3, false);
    ck_assert_int_eq(s->state, HERALD__SUB_REPLAYING);
    ck_assert(ev(&t, "a.x", 1));
    ck_assert(ev(&t, "a.y", 2));
    ck_assert_int_eq(s->state, HERALD__SUB_REPLAYING);
    ck_assert(ev(&t, "a.x", 5));
    ck_assert_int_eq(s->state, HERALD__SUB_LIVE);
    ck_assert(ev(&t, "a.z", 9));
    ck_assert_str_eq(cursor(s), id(9));
    herald__subs_clear(&t);
}
END_TEST

START_TEST(interrupted_replay_resumes_inside_it)
{
    /* S1 is live at 100; S2 replays from "all" and the connection drops after two of five.
     * S2 must resume after its own second event, not after S1's position. */
    struct herald__subs t = {0};
    struct herald__sub *s1 = herald__subs_add(&t, "x.>", NULL);
    struct herald__sub *s2 = herald__subs_add(&t, "y.>", "all");
    send_sub(s1);
    ok(&t, s1, 0, false);
    ck_assert(ev(&t, "x.1", 100));
    send_sub(s2);
    ok(&t, s2, 5, false);
    ck_assert(ev(&t, "y.1", 20));
    ck_assert(ev(&t, "y.2", 30));
    ck_assert_str_eq(cursor(s1), id(100)); /* replayed events say nothing about S1 */
    herald__subs_disconnected(&t);
    ck_assert_str_eq(send_sub(s1), id(100));
    ck_assert_str_eq(send_sub(s2), id(30));
    herald__subs_clear(&t);
}
END_TEST

START_TEST(pending_subscription_is_not_advanced_by_live_events)
{
    struct herald__subs t = {0};
    struct herald__sub *s1 = herald__subs_add(&t, "x.>", NULL);
    struct herald__sub *s2 = herald__subs_add(&t, "x.1", "0000000000000005");
    send_sub(s1);
    ok(&t, s1, 0, false);
    send_sub(s2);                 /* sent, no ok yet */
    ck_assert(ev(&t, "x.1", 50)); /* live for S1, queued before S2 was accepted */
    ck_assert_str_eq(cursor(s2), "0000000000000005");
    ok(&t, s2, 0, false);
    ck_assert(ev(&t, "x.1", 60));
    ck_assert_str_eq(cursor(s2), id(60));
    herald__subs_clear(&t);
}
END_TEST

START_TEST(overlapping_resume_drops_duplicates)
{
    /* "a.>" delivered everything up to 100; "a.b" was mid-replay at 40. After the reconnect
     * the server replays "a.b" from 40, including 60 and 90 which "a.>" already delivered. */
    struct herald__subs t = {0};
    struct herald__sub *wide = herald__subs_add(&t, "a.>", NULL); /* live from ~50 */
    struct herald__sub *narrow = herald__subs_add(&t, "a.b", "all");
    send_sub(wide);
    ok(&t, wide, 0, false);
    ck_assert(ev(&t, "a.b", 60));
    ck_assert(ev(&t, "a.c", 90));
    ck_assert(ev(&t, "a.b", 100));
    send_sub(narrow);
    ok(&t, narrow, 4, false);
    ck_assert(ev(&t, "a.b", 10)); /* before "a.>" existed: new to the app */
    ck_assert(ev(&t, "a.b", 40));
    herald__subs_disconnected(&t);

    ck_assert_str_eq(send_sub(wide), id(100));
    ok(&t, wide, 1, false);
    ck_assert(ev(&t, "a.x", 120)); /* published during the outage */
    ck_assert_str_eq(send_sub(narrow), id(40));
    ok(&t, narrow, 2, false);
    ck_assert(!ev(&t, "a.b", 60)); /* already delivered through "a.>" */
    ck_assert(!ev(&t, "a.b", 100));
    ck_assert_str_eq(cursor(narrow), id(100));
    ck_assert(ev(&t, "a.b", 130)); /* live again: delivered once */
    ck_assert_str_eq(cursor(wide), id(130));
    ck_assert_str_eq(cursor(narrow), id(130));
    herald__subs_clear(&t);
}
END_TEST

START_TEST(gap_on_resume_keeps_range_and_drops_repeats)
{
    struct herald__subs t = {0};
    struct herald__sub *s = herald__subs_add(&t, "t", NULL);
    send_sub(s);
    ok(&t, s, 0, false);
    ck_assert(ev(&t, "t", 10));
    ck_assert(ev(&t, "t", 20));
    herald__subs_disconnected(&t);
    ck_assert_str_eq(send_sub(s), id(20));
    ok(&t, s, 3, true);          /* the server lost the position: replays all it retains */
    ck_assert(!ev(&t, "t", 20)); /* seen */
    ck_assert(ev(&t, "t", 25));
    ck_assert(ev(&t, "t", 30));
    ck_assert_str_eq(cursor(s), id(30));
    herald__subs_clear(&t);
}
END_TEST

START_TEST(quiet_live_subscription_resumes_blind)
{
    struct herald__subs t = {0};
    struct herald__sub *s = herald__subs_add(&t, "quiet", NULL);
    send_sub(s);
    ck_assert(!s->blind);
    ok(&t, s, 0, false);
    herald__subs_disconnected(&t);
    ck_assert_str_eq(send_sub(s), "latest");
    ck_assert(s->blind); /* the client must report a possible gap */
    ok(&t, s, 0, false);
    ck_assert(ev(&t, "quiet", 7));
    herald__subs_disconnected(&t);
    ck_assert_str_eq(send_sub(s), id(7));
    ck_assert(!s->blind);
    herald__subs_clear(&t);
}
END_TEST

START_TEST(never_accepted_resends_original_request)
{
    struct herald__subs t = {0};
    struct herald__sub *s = herald__subs_add(&t, "p", "latest");
    ck_assert_str_eq(send_sub(s), "latest");
    herald__subs_disconnected(&t); /* dropped before the ok */
    ck_assert_str_eq(send_sub(s), "latest");
    ck_assert(!s->blind);
    struct herald__sub *s2 = herald__subs_add(&t, "q", "00000000000000aa");
    send_sub(s2);
    ok(&t, s2, 0, false);
    herald__subs_disconnected(&t);
    ck_assert_str_eq(send_sub(s2), "00000000000000aa"); /* nothing came: same position */
    ck_assert_str_eq(cursor(s2), "00000000000000aa");
    herald__subs_clear(&t);
}
END_TEST

START_TEST(removed_during_replay_still_counts_frames)
{
    struct herald__subs t = {0};
    struct herald__sub *live = herald__subs_add(&t, "z.>", NULL);
    struct herald__sub *r = herald__subs_add(&t, "r", "all");
    send_sub(live);
    ok(&t, live, 0, false);
    send_sub(r);
    ok(&t, r, 2, false);
    herald__subs_remove(&t, r); /* the application unsubscribed; its replay is in flight */
    ck_assert(ev(&t, "r", 3));
    ck_assert(ev(&t, "r", 4));
    ck_assert_str_eq(cursor(live), ""); /* replay frames are not live frames */
    ck_assert(ev(&t, "z.q", 50));
    ck_assert_str_eq(cursor(live), id(50));
    herald__subs_clear(&t);
}
END_TEST

START_TEST(orphan_ok_counts_its_replay)
{
    struct herald__subs t = {0};
    struct herald__sub *live = herald__subs_add(&t, "k", NULL);
    send_sub(live);
    ok(&t, live, 0, false);
    herald__subs_on_ok(&t, NULL, 1, false, NULL); /* ok for a subscription already dropped */
    ck_assert(ev(&t, "k", 3));
    ck_assert_str_eq(cursor(live), "");
    herald__subs_clear(&t);
}
END_TEST

/* An event as client.c queues it, with the mark handing it over needs. */
static bool evm(struct herald__subs *t, const char *topic, unsigned n, struct herald__evmark *m)
{
    return herald__subs_on_event(t, topic, id(n), m);
}

static const char *app_cursor(struct herald__sub *s)
{
    static char out[HERALD_ID_SIZE];
    herald__sub_app_cursor(s, out);
    return out;
}

START_TEST(saved_cursor_moves_only_past_handed_events)
{
    /* `herald subscribe --since all --count 2 --state F` on three events: the third is in
     * the client's queue but was never printed, so the saved cursor must stay at the second. */
    struct herald__subs t = {0};
    struct herald__sub *s = herald__subs_add(&t, "st.>", "all");
    send_sub(s);
    ok(&t, s, 3, false);
    struct herald__evmark m[3];
    ck_assert(evm(&t, "st.a", 1, &m[0]));
    ck_assert(evm(&t, "st.a", 2, &m[1]));
    ck_assert(evm(&t, "st.a", 3, &m[2]));
    ck_assert_str_eq(cursor(s), id(3));     /* a reconnect resumes after what is queued */
    ck_assert_str_eq(app_cursor(s), "all"); /* nothing handed yet */
    herald__subs_handed(&t, id(1), &m[0]);
    herald__subs_handed(&t, id(2), &m[1]);
    ck_assert_str_eq(app_cursor(s), id(2));
    herald__subs_handed(&t, id(3), &m[2]);
    ck_assert_str_eq(app_cursor(s), id(3));
    herald__subs_clear(&t);
}
END_TEST

START_TEST(saved_cursor_follows_live_events_of_live_subscriptions_only)
{
    struct herald__subs t = {0};
    struct herald__sub *a = herald__subs_add(&t, "a", NULL);
    struct herald__sub *b = herald__subs_add(&t, "b", "0000000000000005");
    send_sub(a);
    ok(&t, a, 0, false);
    send_sub(b); /* no ok yet */
    struct herald__evmark m1, m2, m3;
    ck_assert(evm(&t, "a", 10, &m1)); /* live before b was accepted */
    ok(&t, b, 1, false);
    ck_assert(evm(&t, "b", 8, &m2));  /* b's replay */
    ck_assert(evm(&t, "a", 12, &m3)); /* live for both */
    herald__subs_handed(&t, id(10), &m1);
    ck_assert_str_eq(app_cursor(a), id(10));
    ck_assert_str_eq(app_cursor(b), "0000000000000005"); /* 10 arrived before b was live */
    herald__subs_handed(&t, id(8), &m2);
    ck_assert_str_eq(app_cursor(a), id(10));
    ck_assert_str_eq(app_cursor(b), id(8));
    herald__subs_handed(&t, id(12), &m3);
    ck_assert_str_eq(app_cursor(a), id(12));
    ck_assert_str_eq(app_cursor(b), id(12));
    herald__subs_clear(&t);
}
END_TEST

START_TEST(caught_up_moves_saved_cursor_to_the_top)
{
    /* Events the client drops as repeats still extend a range; once nothing waits for the
     * application, everything the range covers was handed. */
    struct herald__subs t = {0};
    struct herald__sub *s = herald__subs_add(&t, "x", NULL);
    send_sub(s);
    ok(&t, s, 0, false);
    struct herald__evmark m;
    ck_assert(evm(&t, "x", 4, &m));
    ck_assert(evm(&t, "y", 9, NULL)); /* not ours, proves ours up to 9 */
    herald__subs_handed(&t, id(4), &m);
    ck_assert_str_eq(app_cursor(s), id(4));
    herald__subs_caught_up(&t);
    ck_assert_str_eq(app_cursor(s), id(9));
    herald__subs_clear(&t);
}
END_TEST

START_TEST(quiet_subscription_resumes_from_the_oks_next)
{
    struct herald__subs t = {0};
    struct herald__sub *s = herald__subs_add(&t, "quiet", NULL);
    send_sub(s);
    herald__subs_on_ok(&t, herald__subs_find_wire(&t, s->wire_id), 0, false, id(42));
    ck_assert_str_eq(app_cursor(s), id(42)); /* a later run continues from there */
    herald__subs_disconnected(&t);
    ck_assert_str_eq(send_sub(s), id(42));
    ck_assert(!s->blind); /* nothing missed: no gap to report */
    herald__subs_on_ok(&t, herald__subs_find_wire(&t, s->wire_id), 1, false, id(50));
    ck_assert(ev(&t, "quiet", 47)); /* published during the outage */
    ck_assert_str_eq(cursor(s), id(47));
    herald__subs_disconnected(&t);
    ck_assert_str_eq(send_sub(s), id(47));
    herald__subs_clear(&t);
}
END_TEST

START_TEST(next_after_a_replay_is_not_a_resume_point)
{
    /* A replay cut short must resume inside it, not after the ok's next. */
    struct herald__subs t = {0};
    struct herald__sub *s = herald__subs_add(&t, "r", "all");
    send_sub(s);
    herald__subs_on_ok(&t, herald__subs_find_wire(&t, s->wire_id), 2, false, id(20));
    herald__subs_disconnected(&t);
    ck_assert_str_eq(send_sub(s), "all");
    herald__subs_clear(&t);
}
END_TEST

START_TEST(table_basics)
{
    struct herald__subs t = {0};
    ck_assert_ptr_nonnull(herald__subs_add(&t, "a", NULL));
    ck_assert_ptr_nonnull(herald__subs_add(&t, "b", "all"));
    ck_assert_ptr_null(herald__subs_find(&t, "c"));
    ck_assert_str_eq(herald__subs_find(&t, "b")->since, "all");
    ck_assert_uint_eq(t.n, 2);
    char big[HERALD_ID_SIZE + 10];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    ck_assert_ptr_null(herald__subs_add(&t, big, NULL)); /* does not fit: refused */
    ck_assert_ptr_null(herald__subs_add(&t, "c", big));
    ck_assert_uint_eq(t.n, 2);
    ck_assert_str_eq(t.head->pattern, "a"); /* application order is kept */
    herald__subs_clear(&t);
    ck_assert_uint_eq(t.n, 0);
}
END_TEST

START_TEST(pattern_matching)
{
    ck_assert(herald__pattern_match("a.b", "a.b"));
    ck_assert(!herald__pattern_match("a.b", "a.b.c"));
    ck_assert(herald__pattern_match("a.*", "a.b"));
    ck_assert(!herald__pattern_match("a.*", "a.b.c"));
    ck_assert(!herald__pattern_match("a.*", "a"));
    ck_assert(herald__pattern_match("a.>", "a.b.c"));
    ck_assert(!herald__pattern_match("a.>", "a"));
    ck_assert(herald__pattern_match(">", "x"));
    ck_assert(herald__pattern_match("*.b", "x.b"));
    ck_assert(!herald__pattern_match(">", "$sys.x")); /* first-segment wildcard */
    ck_assert(!herald__pattern_match("*.x", "$sys.x"));
    ck_assert(herald__pattern_match("$sys.>", "$sys.x"));
    ck_assert(!herald__pattern_match("ab", "a"));
    ck_assert(!herald__pattern_match(NULL, "a"));
    ck_assert(!herald__pattern_match("a", ""));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("libherald_subs");
    TCase *tc = tcase_create("subs");
    tcase_add_test(tc, live_subscription_resumes_after_last_event);
    tcase_add_test(tc, replay_then_live);
    tcase_add_test(tc, interrupted_replay_resumes_inside_it);
    tcase_add_test(tc, pending_subscription_is_not_advanced_by_live_events);
    tcase_add_test(tc, overlapping_resume_drops_duplicates);
    tcase_add_test(tc, gap_on_resume_keeps_range_and_drops_repeats);
    tcase_add_test(tc, quiet_live_subscription_resumes_blind);
    tcase_add_test(tc, never_accepted_resends_original_request);
    tcase_add_test(tc, removed_during_replay_still_counts_frames);
    tcase_add_test(tc, orphan_ok_counts_its_replay);
    tcase_add_test(tc, saved_cursor_moves_only_past_handed_events);
    tcase_add_test(tc, saved_cursor_follows_live_events_of_live_subscriptions_only);
    tcase_add_test(tc, caught_up_moves_saved_cursor_to_the_top);
    tcase_add_test(tc, quiet_subscription_resumes_from_the_oks_next);
    tcase_add_test(tc, next_after_a_replay_is_not_a_resume_point);
    tcase_add_test(tc, table_basics);
    tcase_add_test(tc, pattern_matching);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
