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
