/* SPDX-License-Identifier: MIT */
/*
 * URL parsing of libherald: what a user types after --url becomes host, port, TLS and the
 * WebSocket and HTTP paths, and everything malformed is refused with a sentence rather than
 * connecting somewhere unexpected.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static struct herald__url parse_ok(const char *s)
{
    struct herald__url u;
    herald_error e = {0};
    int r = herald__url_parse(s, &u, &e);
    ck_assert_msg(r == 0, "%s: %s", s, e.message);
    return u;
}

static void parse_bad(const char *s, const char *why)
{
    struct herald__url u;
    herald_error e = {0};
    ck_assert_int_eq(herald__url_parse(s, &u, &e), HERALD_E_INVALID);
    ck_assert_int_eq(e.status, HERALD_E_INVALID);
    ck_assert_msg(strstr(e.message, why) != NULL, "%s: message \"%s\" lacks \"%s\"", s ? s : "-",
                  e.message, why);
    ck_assert_str_eq(u.host, "");
}

START_TEST(default_port_and_path)
{
    struct herald__url u = parse_ok("ws://127.0.0.1:7070");
    ck_assert(!u.tls);
    ck_assert_str_eq(u.host, "127.0.0.1");
    ck_assert_int_eq(u.port, 7070);
    ck_assert_str_eq(u.path, "/v1/ws");
    ck_assert_str_eq(u.prefix, "");
    ck_assert_str_eq(u.host_header, "127.0.0.1:7070");

    u = parse_ok("ws://example.org");
    ck_assert_int_eq(u.port, 80);
    ck_assert_str_eq(u.host_header, "example.org"); /* default port not repeated */
    u = parse_ok("wss://example.org/");
    ck_assert(u.tls);
    ck_assert_int_eq(u.port, 443);
    ck_assert_str_eq(u.path, "/v1/ws");
}
END_TEST

START_TEST(http_schemes_name_the_server)
{
    struct herald__url u = parse_ok("http://h:8080");
    ck_assert(!u.tls);
    ck_assert_str_eq(u.path, "/v1/ws");
    u = parse_ok("HTTPS://h/herald/");
    ck_assert(u.tls);
    ck_assert_int_eq(u.port, 443);
    ck_assert_str_eq(u.prefix, "/herald");
    ck_assert_str_eq(u.path, "/herald/v1/ws");
}
END_TEST

START_TEST(ws_path_and_query)
{
    struct herald__url u = parse_ok("wss://h:9/base/v1/ws?token=abc&x=1");
    ck_assert_str_eq(u.path, "/base/v1/ws?token=abc&x=1");
    ck_assert_str_eq(u.prefix, "/base");
    ck_assert_str_eq(u.query, "token=abc&x=1");
    u = parse_ok("ws://h/custom");
    ck_assert_str_eq(u.path, "/custom");
    ck_assert_str_eq(u.prefix, "");
    u = parse_ok("ws://h?token=t");
    ck_assert_str_eq(u.path, "/v1/ws?token=t");
}
END_TEST

START_TEST(ipv6)
{
    struct herald__url u = parse_ok("ws://[::1]:7070");
    ck_assert_str_eq(u.host, "::1");
    ck_assert_int_eq(u.port, 7070);
    ck_assert_str_eq(u.host_header, "[::1]:7070");
    u = parse_ok("wss://[2001:db8::5]");
    ck_assert_str_eq(u.host_header, "[2001:db8::5]");
}
END_TEST

START_TEST(without_a_scheme_is_ws_on_heralds_port)
{
    struct herald__url u = parse_ok("localhost:7070");
    ck_assert(!u.tls);
    ck_assert_str_eq(u.host, "localhost");
    ck_assert_int_eq(u.port, 7070);
    ck_assert_str_eq(u.path, "/v1/ws");
    u = parse_ok("10.0.0.5");
    ck_assert_int_eq(u.port, 7070);
    ck_assert_str_eq(u.host_header, "10.0.0.5:7070");
    u = parse_ok("[::1]:8080/base/v1/ws");
    ck_assert_int_eq(u.port, 8080);
    ck_assert_str_eq(u.prefix, "/base");
    parse_bad("not a url", "spaces");
}
END_TEST

START_TEST(url_lists)
{
    struct herald__url *u;
    size_t n;
    herald_error e = {0};
    ck_assert_int_eq(
        herald__url_list_parse("ws://a:7070,ws://b:7071/base/v1/ws, wss://c", &u, &n, &e), 0);
    ck_assert_uint_eq(n, 3);
    ck_assert_str_eq(u[0].host_header, "a:7070");
    ck_assert_str_eq(u[1].host, "b");
    ck_assert_int_eq(u[1].port, 7071);
    ck_assert_str_eq(u[1].prefix, "/base");
    ck_assert(u[2].tls);
    ck_assert_int_eq(u[2].port, 443);
    free(u);
    ck_assert_int_eq(herald__url_list_parse("localhost:7070", &u, &n, &e), 0);
    ck_assert_uint_eq(n, 1);
    ck_assert_int_eq(u[0].port, 7070);
    free(u);
    /* Query commas must be encoded: a comma always separates. */
    ck_assert_int_eq(herald__url_list_parse("ws://a/v1/ws?token=x%2Cy", &u, &n, &e), 0);
    ck_assert_str_eq(u[0].query, "token=x%2Cy");
    free(u);
    const char *bad[] = {"",
                         ",",
                         "ws://a,",
                         ",ws://a",
                         "ws://a,,ws://b",
                         "ws://a, ,ws://b",
                         "ws://a,ftp://b",
                         "ws://a,not a url"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        u = (struct herald__url *)1;
        ck_assert_msg(herald__url_list_parse(bad[i], &u, &n, &e) == HERALD_E_INVALID,
                      "accepted \"%s\"", bad[i]);
        ck_assert_ptr_null(u);
    }
    char many[17 * 12 + 1] = "";
    for (int i = 0; i < 17; i++)
        strcat(many, i ? ",ws://h:1" : "ws://h:1");
    ck_assert_int_eq(herald__url_list_parse(many, &u, &n, &e), HERALD_E_INVALID);
    ck_assert_ptr_nonnull(strstr(e.message, "at most 16"));
    ck_assert_int_eq(herald__url_list_parse(NULL, &u, &n, &e), HERALD_E_INVALID);
}
END_TEST

START_TEST(rotation_goes_round_the_list)
{
    size_t cur = 0, seen[3] = {0};
    for (int i = 0; i < 9; i++) {
        cur = herald__url_next(cur, 3);
        seen[cur]++;
    }
    ck_assert_uint_eq(seen[0], 3);
    ck_assert_uint_eq(seen[1], 3);
    ck_assert_uint_eq(seen[2], 3);
    ck_assert_uint_eq(herald__url_next(0, 1), 0); /* one server: always the same */
    ck_assert_uint_eq(herald__url_next(1, 2), 0);
}
END_TEST

START_TEST(refusals)
{
    parse_bad(NULL, "no URL");
    parse_bad("", "missing host");
    parse_bad("x://h", "use ws://");
    parse_bad("ftp://h", "use ws://");
    parse_bad("ws://", "missing host");
    parse_bad("ws://:7070", "missing host");
    parse_bad("ws://h:", "empty port");
    parse_bad("ws://h:0", "port out of range");
    parse_bad("ws://h:65536", "port out of range");
    parse_bad("ws://h:12ab", "port must be a number");
    parse_bad("ws://user:pw@h", "user info");
    parse_bad("ws://h/a b", "spaces");
    parse_bad("ws://h/\r\nX: y", "control");
    parse_bad("ws://h/#frag", "fragments");
    parse_bad("ws://[::1", "IPv6");
    parse_bad("ws://[zz]", "IPv6");
    parse_bad("ws://h_!/", "host name");
}
END_TEST

START_TEST(bounds)
{
    char big[600];
    memset(big, 'a', sizeof(big));
    memcpy(big, "ws://", 5);
    big[sizeof(big) - 1] = '\0';
    parse_bad(big, "host name too long");

    size_t n = 5000;
    char *huge = malloc(n + 1);
    ck_assert_ptr_nonnull(huge);
    memcpy(huge, "ws://h/", 7);
    memset(huge + 7, 'p', n - 7);
    huge[n] = '\0';
    parse_bad(huge, "too long");
    huge[1100] = '\0'; /* a path just over the field */
    parse_bad(huge, "too long");
    free(huge);
}
END_TEST

START_TEST(error_messages_are_printable)
{
    herald_error e;
    struct herald__url u;
    herald__url_parse("ws://h\x1b[31m", &u, &e);
    for (const char *p = e.message; *p; p++)
        ck_assert_msg((unsigned char)*p >= 0x20 && (unsigned char)*p != 0x7f, "control byte");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("libherald_url");
    TCase *tc = tcase_create("url");
    tcase_add_test(tc, default_port_and_path);
    tcase_add_test(tc, http_schemes_name_the_server);
    tcase_add_test(tc, ws_path_and_query);
    tcase_add_test(tc, ipv6);
    tcase_add_test(tc, without_a_scheme_is_ws_on_heralds_port);
    tcase_add_test(tc, url_lists);
    tcase_add_test(tc, rotation_goes_round_the_list);
    tcase_add_test(tc, refusals);
    tcase_add_test(tc, bounds);
    tcase_add_test(tc, error_messages_are_printable);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
