/* SPDX-License-Identifier: MIT */
/*
 * libherald's wire format: command frames are valid JSON that the server's parser accepts
 * (escaped strings, data embedded verbatim, no duplicate keys), server frames are read as
 * documented, event data is handed on byte for byte, and error values stay one printable,
 * valid-UTF-8 line.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* `len` is read only after the encoder (evaluated as an argument) has set it. */
static json_t *frame_json(unsigned char *buf, size_t head, const size_t *lenp)
{
    size_t len = *lenp;
    ck_assert_ptr_nonnull(buf);
    json_error_t e;
    json_t *v = json_loadb((const char *)buf + head, len, JSON_REJECT_DUPLICATES, &e);
    ck_assert_msg(v != NULL, "not JSON: %.*s (%s)", (int)len, buf + head, e.text);
    free(buf);
    return v;
}

START_TEST(subscribe_frame)
{
    size_t len;
    json_t *v = frame_json(herald__encode_subscribe(16, 7, "chat.>", "all", &len), 16, &len);
    ck_assert_str_eq(json_string_value(json_object_get(v, "op")), "subscribe");
    ck_assert_int_eq(json_integer_value(json_object_get(v, "id")), 7);
    ck_assert_str_eq(json_string_value(json_object_get(v, "topic")), "chat.>");
    ck_assert_str_eq(json_string_value(json_object_get(v, "since")), "all");
    json_decref(v);
    v = frame_json(herald__encode_subscribe(0, 8, "x", "", &len), 0, &len);
    ck_assert_ptr_null(json_object_get(v, "since")); /* live: no since at all */
    json_decref(v);
    /* A pattern with quotes and control bytes stays one valid string (the server judges it). */
    v = frame_json(herald__encode_subscribe(0, 9, "a\"b\\c\n", NULL, &len), 0, &len);
    ck_assert_str_eq(json_string_value(json_object_get(v, "topic")), "a\"b\\c\n");
    json_decref(v);
    ck_assert_ptr_null(herald__encode_subscribe(0, 1, "bad\xff", NULL, &len)); /* not UTF-8 */
}
END_TEST

START_TEST(publish_frame_keeps_data_verbatim)
{
    size_t len;
    unsigned char *b =
        herald__encode_publish(0, 3, "t", "login", NULL, "{\"n\":0.1,\"big\":1e400}", &len);
    ck_assert_ptr_nonnull(b);
    ck_assert_ptr_nonnull(strstr((char *)b, "\"data\":{\"n\":0.1,\"big\":1e400}"));
    free(b);
    json_t *v = frame_json(herald__encode_publish(0, 4, "t", NULL, NULL, NULL, &len), 0, &len);
    ck_assert(json_is_null(json_object_get(v, "data")));
    ck_assert_ptr_null(json_object_get(v, "event"));
    ck_assert_ptr_null(json_object_get(v, "key"));
    json_decref(v);
    v = frame_json(herald__encode_publish(0, 7, "t", NULL, "k-1", "1", &len), 0, &len);
    ck_assert_str_eq(json_string_value(json_object_get(v, "key")), "k-1");
    json_decref(v);
    v = frame_json(herald__encode_unsubscribe(0, 5, "p", &len), 0, &len);
    ck_assert_str_eq(json_string_value(json_object_get(v, "op")), "unsubscribe");
    json_decref(v);
    v = frame_json(herald__encode_ping(0, 6, &len), 0, &len);
    ck_assert_str_eq(json_string_value(json_object_get(v, "op")), "ping");
    json_decref(v);
}
END_TEST

START_TEST(check_json)
{
    herald_error e = {0};
    ck_assert_int_eq(herald__check_json("{\"a\":1}", &e), 0);
    ck_assert_int_eq(herald__check_json("\"s\"", &e), 0);
    ck_assert_int_eq(herald__check_json("42", &e), 0);
    ck_assert_int_eq(herald__check_json("{\"a\":1,\"a\":2}", &e), HERALD_E_INVALID);
    ck_assert_ptr_nonnull(strstr(e.message, "duplicate"));
    ck_assert_int_eq(herald__check_json("{\"a\":1} x", &e), HERALD_E_INVALID);
    ck_assert_int_eq(herald__check_json("", &e), HERALD_E_INVALID);
    ck_assert_int_eq(herald__check_json("hello", &e), HERALD_E_INVALID);
}
END_TEST

static struct herald__frame parse(const char *s)
{
    struct herald__frame f;
    herald_error e = {0};
    ck_assert_msg(herald__frame_parse(s, strlen(s), &f, &e) == 0, "%s: %s", s, e.message);
    return f;
}

START_TEST(event_frame)
{
    const char *s = "{\"type\":\"event\",\"topic\":\"chat.r\",\"id\":\"00000000000000ff\","
                    "\"time\":1764288000123,\"event\":\"login\",\"data\":{\"x\":[1,\"]}\"],"
                    "\"n\":0.1}}";
    struct herald__frame f = parse(s);
    ck_assert_int_eq(f.type, HERALD__F_EVENT);
    ck_assert_str_eq(f.topic, "chat.r");
    ck_assert_str_eq(f.ev_id, "00000000000000ff");
    ck_assert_str_eq(f.kind, "login");
    ck_assert_int_eq(f.time_ms, 1764288000123LL);
    ck_assert_int_eq((int)f.data_len, (int)strlen("{\"x\":[1,\"]}\"],\"n\":0.1}"));
    ck_assert(memcmp(s + f.data_off, "{\"x\":[1,\"]}\"],\"n\":0.1}", f.data_len) == 0);
    herald__frame_clear(&f);

    /* Member order is not fixed; data may come first; kind defaults to message. */
    s = "{ \"data\" : \"a\\\"b\" , \"type\":\"event\",\"topic\":\"t\",\"id\":\"1\",\"time\":5}";
    f = parse(s);
    ck_assert_str_eq(f.kind, "message");
    ck_assert(f.data_len == 6 && memcmp(s + f.data_off, "\"a\\\"b\"", 6) == 0);
    herald__frame_clear(&f);
}
END_TEST

START_TEST(reply_frames)
{
    struct herald__frame f = parse("{\"type\":\"ok\",\"id\":1,\"topic\":\"a.>\",\"replayed\":3,"
                                   "\"gap\":true}");
    ck_assert(f.type == HERALD__F_OK && f.is_subscribe_ok && f.has_id && f.id == 1);
    ck_assert_uint_eq(f.replayed, 3);
    ck_assert(f.gap);
    ck_assert_ptr_null(f.next); /* an older server: no next */
    herald__frame_clear(&f);
    f = parse("{\"type\":\"ok\",\"id\":1,\"topic\":\"a\",\"replayed\":0,\"gap\":false,"
              "\"next\":\"00000000000000ff\"}");
    ck_assert_str_eq(f.next, "00000000000000ff");
    herald__frame_clear(&f);
    f = parse("{\"type\":\"ok\",\"id\":2,\"event_id\":\"abc\",\"receivers\":4}");
    ck_assert(!f.is_subscribe_ok);
    ck_assert_str_eq(f.event_id, "abc");
    ck_assert_uint_eq(f.receivers, 4);
    herald__frame_clear(&f);
    f = parse("{\"type\":\"error\",\"id\":null,\"code\":\"bad_request\",\"message\":\"m\"}");
    ck_assert(f.type == HERALD__F_ERROR && !f.has_id);
    ck_assert_str_eq(f.code, "bad_request");
    herald__frame_clear(&f);
    f = parse("{\"type\":\"welcome\",\"session\":\"s\",\"server\":\"heraldd/0.1.0\","
              "\"heartbeat\":25,\"max_event_bytes\":1000}");
    ck_assert(f.type == HERALD__F_WELCOME && f.max_event_bytes == 1000 && f.heartbeat_s == 25);
    herald__frame_clear(&f);
    f = parse("{\"type\":\"pong\",\"id\":9}");
    ck_assert(f.type == HERALD__F_PONG && f.id == 9);
    herald__frame_clear(&f);
    f = parse("{\"type\":\"something_new\"}"); /* forward compatible: ignored */
    ck_assert_int_eq(f.type, HERALD__F_OTHER);
    herald__frame_clear(&f);
}
END_TEST

START_TEST(idempotency_keys)
{
    ck_assert(herald__key_valid("a"));
    ck_assert(herald__key_valid("order-42:retry~x"));
    ck_assert(!herald__key_valid(""));
    ck_assert(!herald__key_valid("has space"));
    ck_assert(!herald__key_valid("tab\there"));
    ck_assert(!herald__key_valid("caf\xc3\xa9"));
    char k[HERALD_KEY_MAX + 2];
    memset(k, 'k', HERALD_KEY_MAX);
    k[HERALD_KEY_MAX] = '\0';
    ck_assert(herald__key_valid(k));
    k[HERALD_KEY_MAX] = 'k';
    k[HERALD_KEY_MAX + 1] = '\0';
    ck_assert(!herald__key_valid(k));
    char out[HERALD_KEY_MAX + 1];
    herald__key_make(out, sizeof(out), "hl5f3a9c0e1d2b4a6c", 18446744073709551615ull);
    ck_assert_str_eq(out, "hl5f3a9c0e1d2b4a6c-18446744073709551615");
    ck_assert(herald__key_valid(out));
    struct herald__frame f = parse("{\"type\":\"ok\",\"id\":3,\"event_id\":\"e\",\"receivers\":0,"
                                   "\"duplicate\":true}");
    ck_assert(f.duplicate);
    herald__frame_clear(&f);
    f = parse("{\"type\":\"ok\",\"id\":3,\"event_id\":\"e\",\"receivers\":0}");
    ck_assert(!f.duplicate);
    herald__frame_clear(&f);
}
END_TEST

START_TEST(bad_frames)
{
    const char *bad[] = {
        "",
        "nope",
        "[1]",
        "{\"id\":1}",
        "{\"type\":\"event\",\"topic\":\"t\"}",
        "{\"type\":\"event\",\"topic\":\"t\",\"id\":\"1\",\"time\":\"x\"}",
        "{\"type\":\"ok\",\"replayed\":-1}",
        "{\"type\":\"ok\",\"replayed\":\"3\"}",
        "{\"type\":\"ok\",\"replayed\":0,\"next\":\"\"}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct herald__frame f;
        herald_error e = {0};
        ck_assert_msg(herald__frame_parse(bad[i], strlen(bad[i]), &f, &e) == HERALD_E_PROTOCOL,
                      "accepted: %s", bad[i]);
        ck_assert_ptr_null(f.root);
        ck_assert_int_eq(e.status, HERALD_E_PROTOCOL);
    }
}
END_TEST

START_TEST(json_spans)
{
    const char *s = "{\"events\":[{\"a\":\"[\"},2, \"x\" ,[3,{}]],\"next\":\"n\",\"gap\":false}";
    size_t off, len, pos = 0, eo, el;
    ck_assert_int_eq(herald__json_member_span(s, strlen(s), "next", &off, &len), 0);
    ck_assert(len == 3 && memcmp(s + off, "\"n\"", 3) == 0);
    ck_assert_int_eq(herald__json_member_span(s, strlen(s), "gap", &off, &len), 0);
    ck_assert(len == 5 && memcmp(s + off, "false", 5) == 0);
    ck_assert_int_eq(herald__json_member_span(s, strlen(s), "missing", &off, &len), -1);
    ck_assert_int_eq(herald__json_member_span("[1]", 3, "a", &off, &len), -1);
    ck_assert_int_eq(herald__json_member_span(s, strlen(s), "events", &off, &len), 0);
    const char *want[] = {"{\"a\":\"[\"}", "2", "\"x\"", "[3,{}]"};
    for (size_t i = 0; i < 4; i++) {
        ck_assert_int_eq(herald__json_array_next(s + off, len, &pos, &eo, &el), 0);
        ck_assert_msg(el == strlen(want[i]) && memcmp(s + off + eo, want[i], el) == 0,
                      "element %zu: %.*s", i, (int)el, s + off + eo);
    }
    ck_assert_int_eq(herald__json_array_next(s + off, len, &pos, &eo, &el), -1);
    pos = 0;
    ck_assert_int_eq(herald__json_array_next("[ ]", 3, &pos, &eo, &el), -1);
}
END_TEST

START_TEST(error_values)
{
    herald_error e;
    ck_assert_int_eq(herald__err(&e, HERALD_E_SERVER, "forbidden", "a\nb\x01%s", "c"),
                     HERALD_E_SERVER);
    ck_assert_str_eq(e.message, "a b c");
    ck_assert_str_eq(e.server_code, "forbidden");
    ck_assert_int_eq(herald__err(NULL, HERALD_E_NOMEM, NULL, "x"), HERALD_E_NOMEM);
    /* A long message cut inside a multi-byte character drops the partial character. */
    char big[400];
    size_t n = 0;
    while (n + 2 < sizeof(big)) {
        big[n++] = (char)0xc3;
        big[n++] = (char)0xa9; /* é */
    }
    big[n] = '\0';
    herald__err(&e, HERALD_E_SERVER, NULL, "x%s", big);
    json_t *s = json_string(e.message);
    ck_assert_msg(s != NULL, "message is not valid UTF-8");
    json_decref(s);
    ck_assert_str_eq(herald_strerror(HERALD_E_CONNECT), "connection failed");
    ck_assert_str_eq(herald_strerror(0), "ok");
    ck_assert_str_eq(herald_strerror(-999), "unknown error");
    ck_assert_str_eq(herald_strerror(5), "unknown error");
}
END_TEST

START_TEST(percent_encoding)
{
    char out[64] = "/v1/topics/";
    ck_assert_int_eq(herald__pct_encode(out, sizeof(out), "a.*.>"), 0);
    ck_assert_str_eq(out, "/v1/topics/a.*.%3E");
    char small[8] = "";
    ck_assert_int_eq(herald__pct_encode(small, sizeof(small), "abcdefgh"), -1);
    char sp[32] = "";
    ck_assert_int_eq(herald__pct_encode(sp, sizeof(sp), "a b&c=d/e"), 0);
    ck_assert_str_eq(sp, "a%20b%26c%3Dd%2Fe");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("libherald_wire");
    TCase *tc = tcase_create("wire");
    tcase_add_test(tc, subscribe_frame);
    tcase_add_test(tc, publish_frame_keeps_data_verbatim);
    tcase_add_test(tc, idempotency_keys);
    tcase_add_test(tc, check_json);
    tcase_add_test(tc, event_frame);
    tcase_add_test(tc, reply_frames);
    tcase_add_test(tc, bad_frames);
    tcase_add_test(tc, json_spans);
    tcase_add_test(tc, error_values);
    tcase_add_test(tc, percent_encoding);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
