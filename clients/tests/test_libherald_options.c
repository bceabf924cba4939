/* SPDX-License-Identifier: MIT */
/*
 * The opaque options object (issue 13: herald_options is no longer a public struct, so
 * adding an option keeps the ABI): defaults, setters that validate before changing anything,
 * and the deep copy a client keeps.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

START_TEST(defaults)
{
    herald_options *o = herald_options_new();
    ck_assert_ptr_nonnull(o);
    ck_assert_ptr_null(o->token);
    ck_assert_ptr_null(o->ca_file);
    ck_assert_int_eq(o->connect_timeout_ms, 10000);
    ck_assert_uint_eq(o->backoff_initial_ms, 250);
    ck_assert_uint_eq(o->backoff_max_ms, 30000);
    ck_assert_uint_eq(o->max_queued_events, 10000);
    ck_assert_uint_eq(o->max_queued_bytes, 64u << 20);
    ck_assert_uint_eq(o->max_pending, 10000);
    ck_assert(!o->insecure && !o->retry_first_connect && !o->keep_lws_log);
    ck_assert_ptr_null(o->on_event);
    herald_options_free(o);
    herald_options_free(NULL);
}
END_TEST

static void on_event(herald_client *c, const herald_event *ev, void *user)
{
    (void)c;
    (void)ev;
    (void)user;
}

START_TEST(setters_validate_before_changing)
{
    herald_options *o = herald_options_new();
    ck_assert_int_eq(herald_options_set_token(o, "abc.def-1"), 0);
    ck_assert_str_eq(o->token, "abc.def-1");
    ck_assert_int_eq(herald_options_set_token(o, "has space"), HERALD_E_INVALID);
    ck_assert_str_eq(o->token, "abc.def-1"); /* unchanged */
    char big[4098];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    ck_assert_int_eq(herald_options_set_token(o, big), HERALD_E_INVALID);
    ck_assert_int_eq(herald_options_set_token(o, ""), 0);
    ck_assert_ptr_null(o->token);
    ck_assert_int_eq(herald_options_set_connect_timeout(o, 0), HERALD_E_INVALID);
    ck_assert_int_eq(o->connect_timeout_ms, 10000);
    ck_assert_int_eq(herald_options_set_connect_timeout(o, 1500), 0);
    ck_assert_int_eq(o->connect_timeout_ms, 1500);
    ck_assert_int_eq(herald_options_set_backoff(o, 100, 50), HERALD_E_INVALID);
    ck_assert_int_eq(herald_options_set_backoff(o, 0, 50), HERALD_E_INVALID);
    ck_assert_int_eq(herald_options_set_backoff(o, 100, 5000), 0);
    ck_assert_uint_eq(o->backoff_initial_ms, 100);
    ck_assert_int_eq(herald_options_set_queue_limits(o, 5, 0), 0);
    ck_assert_uint_eq(o->max_queued_events, 5);
    ck_assert_uint_eq(o->max_queued_bytes, 64u << 20);
    ck_assert_int_eq(herald_options_set_max_pending(o, 0), 0);
    ck_assert_uint_eq(o->max_pending, 10000);
    int user;
    ck_assert_int_eq(herald_options_set_event_callback(o, on_event, &user), 0);
    ck_assert_ptr_eq(o->user, &user);
    ck_assert_int_eq(herald_options_set_insecure(o, true), 0);
    ck_assert_int_eq(herald_options_set_retry_first_connect(o, true), 0);
    ck_assert_int_eq(herald_options_set_keep_lws_log(o, true), 0);
    ck_assert(o->insecure && o->retry_first_connect && o->keep_lws_log);
    ck_assert_int_eq(herald_options_set_ca_file(o, "/etc/ssl/x.pem"), 0);
    ck_assert_str_eq(o->ca_file, "/etc/ssl/x.pem");
    herald_options_free(o);
    /* NULL objects are refused, never dereferenced. */
    ck_assert_int_eq(herald_options_set_token(NULL, "x"), HERALD_E_INVALID);
    ck_assert_int_eq(herald_options_set_insecure(NULL, true), HERALD_E_INVALID);
}
END_TEST

START_TEST(copy_is_deep)
{
    herald_options *o = herald_options_new();
    herald_options_set_token(o, "tok");
    herald_options_set_ca_file(o, "ca.pem");
    herald_options_set_connect_timeout(o, 777);
    struct herald_options copy;
    ck_assert_int_eq(herald__options_copy(&copy, o), 0);
    herald_options_free(o); /* the copy does not borrow from it */
    ck_assert_str_eq(copy.token, "tok");
    ck_assert_str_eq(copy.ca_file, "ca.pem");
    ck_assert_int_eq(copy.connect_timeout_ms, 777);
    herald__options_clear(&copy);
    ck_assert_int_eq(herald__options_copy(&copy, NULL), 0); /* NULL: the defaults */
    ck_assert_int_eq(copy.connect_timeout_ms, 10000);
    herald__options_clear(&copy);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("libherald_options");
    TCase *tc = tcase_create("options");
    tcase_add_test(tc, defaults);
    tcase_add_test(tc, setters_validate_before_changing);
    tcase_add_test(tc, copy_is_deep);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
