/* SPDX-License-Identifier: MIT */
/*
 * Batches (issue 18, PROTOCOL.md section 3): the NDJSON request a herald_batch builds (one
 * object per line, data verbatim but on one line, a key on every line) and how the answer
 * of POST /v1/publish is read (one event per line; an error naming its line).
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Line `i` (0-based) of the batch body as a JSON object. */
static json_t *line_json(const herald_batch *b, size_t i)
{
    size_t len;
    const char *body = herald__batch_body(b, &len);
    const char *p = body;
    for (size_t k = 0; k < i; k++) {
        p = memchr(p, '\n', len - (size_t)(p - body));
        ck_assert_ptr_nonnull(p);
        p++;
    }
    const char *nl = memchr(p, '\n', len - (size_t)(p - body));
    ck_assert_ptr_nonnull(nl);
    json_t *v = json_loadb(p, (size_t)(nl - p), 0, NULL);
    ck_assert_ptr_nonnull(v);
    return v;
}

START_TEST(lines_in_order_with_keys)
{
    herald_batch *b = herald_batch_new();
    ck_assert_ptr_nonnull(b);
    herald_error e = {0};
    ck_assert_int_eq(
        herald_batch_add(b, "a.b", "login", "{\"user\": \"alice\",\n \"n\": 1.50}", NULL, &e), 0);
    ck_assert_int_eq(herald_batch_add(b, "c", NULL, NULL, "mine-1", &e), 0);
    ck_assert_uint_eq(herald_batch_count(b), 2);
    size_t len;
    const char *body = herald__batch_body(b, &len);
    ck_assert_uint_eq(strlen(body), len);
    ck_assert_int_eq(body[len - 1], '\n');
    /* Data on one line, numbers as written. */
    ck_assert_ptr_nonnull(strstr(body, "\"data\":{\"user\":\"alice\",\"n\":1.50}"));
    json_t *l1 = line_json(b, 0), *l2 = line_json(b, 1);
    ck_assert_str_eq(json_string_value(json_object_get(l1, "topic")), "a.b");
    ck_assert_str_eq(json_string_value(json_object_get(l1, "event")), "login");
    const char *k1 = json_string_value(json_object_get(l1, "key"));
    ck_assert_ptr_nonnull(k1);
    ck_assert(herald__key_valid(k1));
    ck_assert_str_eq(json_string_value(json_object_get(l2, "key")), "mine-1");
    ck_assert(json_is_null(json_object_get(l2, "data")));
    ck_assert_ptr_null(json_object_get(l2, "event"));
    json_decref(l1);
    json_decref(l2);
    herald_batch_free(b);
}
END_TEST

START_TEST(made_keys_differ_between_batches)
{
    herald_batch *a = herald_batch_new(), *b = herald_batch_new();
    ck_assert_int_eq(herald_batch_add(a, "t", NULL, "1", NULL, NULL), 0);
    ck_assert_int_eq(herald_batch_add(a, "t", NULL, "2", NULL, NULL), 0);
    ck_assert_int_eq(herald_batch_add(b, "t", NULL, "1", NULL, NULL), 0);
    json_t *a1 = line_json(a, 0), *a2 = line_json(a, 1), *b1 = line_json(b, 0);
    const char *ka1 = json_string_value(json_object_get(a1, "key"));
    ck_assert_str_ne(ka1, json_string_value(json_object_get(a2, "key")));
    ck_assert_str_ne(ka1, json_string_value(json_object_get(b1, "key")));
    json_decref(a1);
    json_decref(a2);
    json_decref(b1);
    herald_batch_free(a);
    herald_batch_free(b);
}
END_TEST

START_TEST(bad_events_are_refused_and_not_appended)
{
    herald_batch *b = herald_batch_new();
    herald_error e = {0};
    ck_assert_int_eq(herald_batch_add(b, "", NULL, "1", NULL, &e), HERALD_E_INVALID);
    ck_assert_int_eq(herald_batch_add(b, "t", NULL, "{bad", NULL, &e), HERALD_E_INVALID);
    ck_assert_int_eq(herald_batch_add(b, "t", NULL, "1", "has space", &e), HERALD_E_INVALID);
    ck_assert_int_eq(herald_batch_add(b, "t", "", "1", NULL, &e), HERALD_E_INVALID);
    ck_assert_int_eq(herald_batch_add(NULL, "t", NULL, "1", NULL, &e), HERALD_E_INVALID);
    ck_assert_uint_eq(herald_batch_count(b), 0);
    herald_batch_free(b);
}
END_TEST

START_TEST(ndjson_lines)
{
    herald_batch *b = herald_batch_new();
    herald_error e = {0};
    ck_assert_int_eq(
        herald_batch_add_line(b, "{\"topic\":\"x\",\"data\":[1, 2.0e3],\"key\":\"k\"}", &e), 0);
    ck_assert_int_eq(herald_batch_add_line(b, "{\"topic\":\"y\",\"event\":\"ping\"}", &e), 0);
    size_t len;
    const char *body = herald__batch_body(b, &len);
    ck_assert_ptr_nonnull(strstr(body, "\"data\":[1,2.0e3]"));
    const char *bad[] = {
        "nope",
        "[1]",
        "{\"data\":1}",
        "{\"topic\":\"x\",\"extra\":1}",
        "{\"topic\":1}",
        "{\"topic\":\"x\",\"key\":\"\"}",
        "{\"topic\":\"x\",\"topic\":\"y\"}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(herald_batch_add_line(b, bad[i], &e) == HERALD_E_INVALID, "took %s", bad[i]);
    ck_assert_uint_eq(herald_batch_count(b), 2);
    herald_batch_free(b);
}
END_TEST

START_TEST(answers)
{
    herald_error e = {0};
    size_t line = 99;
    const char *ok = "{\"events\":[{\"id\":\"1\",\"topic\":\"t\",\"time\":1,\"receivers\":0},"
                     "{\"id\":\"2\",\"topic\":\"t\",\"time\":1,\"receivers\":3}]}";
    ck_assert_int_eq(herald__batch_answer(202, ok, strlen(ok), 2, &line, &e), 0);
    ck_assert_int_eq(herald__batch_answer(202, ok, strlen(ok), 3, &line, &e), HERALD_E_PROTOCOL);
    const char *bad = "{\"type\":\"error\",\"code\":\"invalid_topic\",\"message\":\"invalid topic "
                      "\\\"a..b\\\"\",\"line\":2}";
    line = 0;
    ck_assert_int_eq(herald__batch_answer(400, bad, strlen(bad), 3, &line, &e), HERALD_E_SERVER);
    ck_assert_uint_eq(line, 2);
    ck_assert_str_eq(e.server_code, "invalid_topic");
    ck_assert_ptr_nonnull(strstr(e.message, "line 2"));
    const char *denied =
        "{\"type\":\"error\",\"code\":\"forbidden\",\"message\":\"no\",\"line\":1}";
    ck_assert_int_eq(herald__batch_answer(403, denied, strlen(denied), 1, &line, &e),
                     HERALD_E_AUTH);
    line = 0;
    const char *busy = "{\"type\":\"error\",\"code\":\"unavailable\",\"message\":\"store\"}";
    ck_assert_int_eq(herald__batch_answer(503, busy, strlen(busy), 4, &line, &e), HERALD_E_SERVER);
    ck_assert_uint_eq(line, 0);
    ck_assert_int_eq(herald__batch_answer(500, "<html>", 6, 4, &line, &e), HERALD_E_SERVER);
    ck_assert_ptr_nonnull(strstr(e.message, "HTTP 500"));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("libherald_batch");
    TCase *tc = tcase_create("batch");
    tcase_add_test(tc, lines_in_order_with_keys);
    tcase_add_test(tc, made_keys_differ_between_batches);
    tcase_add_test(tc, bad_events_are_refused_and_not_appended);
    tcase_add_test(tc, ndjson_lines);
    tcase_add_test(tc, answers);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
