/* SPDX-License-Identifier: MIT */
/*
 * Reconnect backoff: delays grow exponentially to the cap, each jittered into [base/2, base],
 * start over after a reset, and two clients with different seeds do not retry in lockstep.
 */
#include <check.h>
#include <stdlib.h>

#include "internal.h"

START_TEST(grows_doubles_and_caps)
{
    struct herald__backoff b;
    herald__backoff_init(&b, 100, 1000, 42);
    const unsigned base[] = {100, 200, 400, 800, 1000, 1000, 1000, 1000};
    for (size_t i = 0; i < sizeof(base) / sizeof(base[0]); i++) {
        unsigned d = herald__backoff_next(&b);
        ck_assert_msg(d >= base[i] / 2 && d <= base[i], "attempt %zu: %u not in [%u, %u]", i, d,
                      base[i] / 2, base[i]);
    }
}
END_TEST

START_TEST(reset_starts_over)
{
    struct herald__backoff b;
    herald__backoff_init(&b, 250, 30000, 7);
    for (int i = 0; i < 20; i++)
        herald__backoff_next(&b);
    ck_assert_uint_ge(herald__backoff_next(&b), 15000);
    herald__backoff_reset(&b);
    unsigned d = herald__backoff_next(&b);
    ck_assert_uint_ge(d, 125);
    ck_assert_uint_le(d, 250);
}
END_TEST

START_TEST(jitter_spreads_clients)
{
    /* 50 clients, same schedule, different seeds: their third retries are spread out. */
    unsigned lo = ~0u, hi = 0;
    for (uint64_t seed = 1; seed <= 50; seed++) {
        struct herald__backoff b;
        herald__backoff_init(&b, 1000, 60000, seed * 0x9E3779B97F4A7C15ULL);
        herald__backoff_next(&b);
        herald__backoff_next(&b);
        unsigned d = herald__backoff_next(&b); /* base 4000 */
        ck_assert_uint_ge(d, 2000);
        ck_assert_uint_le(d, 4000);
        lo = d < lo ? d : lo;
        hi = d > hi ? d : hi;
    }
    ck_assert_msg(hi - lo >= 1000, "jitter too narrow: %u..%u", lo, hi);
}
END_TEST

START_TEST(same_seed_same_schedule)
{
    struct herald__backoff a, b;
    herald__backoff_init(&a, 10, 5000, 99);
    herald__backoff_init(&b, 10, 5000, 99);
    for (int i = 0; i < 30; i++)
        ck_assert_uint_eq(herald__backoff_next(&a), herald__backoff_next(&b));
}
END_TEST

START_TEST(degenerate_settings)
{
    struct herald__backoff b;
    herald__backoff_init(&b, 0, 0, 0); /* zero initial and cap, zero seed */
    for (int i = 0; i < 100; i++)
        ck_assert_uint_le(herald__backoff_next(&b), 1);
    herald__backoff_init(&b, 500, 100, 3); /* cap below initial: the initial is the cap */
    for (int i = 0; i < 10; i++) {
        unsigned d = herald__backoff_next(&b);
        ck_assert_uint_ge(d, 250);
        ck_assert_uint_le(d, 500);
    }
    herald__backoff_init(&b, 4000000000u, 4000000000u, 5); /* no overflow near UINT_MAX */
    for (int i = 0; i < 100; i++)
        ck_assert_uint_ge(herald__backoff_next(&b), 2000000000u);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("libherald_backoff");
    TCase *tc = tcase_create("backoff");
    tcase_add_test(tc, grows_doubles_and_caps);
    tcase_add_test(tc, reset_starts_over);
    tcase_add_test(tc, jitter_spreads_clients);
    tcase_add_test(tc, same_seed_same_schedule);
    tcase_add_test(tc, degenerate_settings);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
