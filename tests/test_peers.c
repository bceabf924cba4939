/* SPDX-License-Identifier: MIT */
/*
 * Check suite for per-address connection counting: the limit admits exactly N connections
 * per address and frees a slot when one closes, addresses do not share counts (but IPv6
 * peers in one /64 and IPv4-mapped peers do, as documented), entries vanish with their last
 * connection, and thousands of peers survive table growth.
 */
#include "peers.h"

#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct hd_peer_addr v4(const char *text)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    ck_assert_int_eq(inet_pton(AF_INET, text, &sa.sin_addr), 1);
    struct hd_peer_addr a;
    ck_assert_int_eq(hd_peer_addr_from(&a, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return a;
}

static struct hd_peer_addr v6(const char *text)
{
    struct sockaddr_in6 sa = {.sin6_family = AF_INET6};
    ck_assert_int_eq(inet_pton(AF_INET6, text, &sa.sin6_addr), 1);
    struct hd_peer_addr a;
    ck_assert_int_eq(hd_peer_addr_from(&a, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return a;
}

START_TEST(limit_admits_exactly_n)
{
    struct hd_peers *p = hd_peers_new();
    struct hd_peer_addr a = v4("192.0.2.7");
    struct hd_peer *held[3];
    bool refused;
    for (int i = 0; i < 3; i++) {
        held[i] = hd_peers_acquire(p, &a, 3, &refused);
        ck_assert_ptr_nonnull(held[i]);
        ck_assert(!refused);
    }
    ck_assert_uint_eq(hd_peers_count(p, &a), 3);
    ck_assert_ptr_null(hd_peers_acquire(p, &a, 3, &refused));
    ck_assert(refused);
    ck_assert_uint_eq(hd_peers_count(p, &a), 3); /* a refusal counts nothing */

    /* Another address is not affected by this one's limit. */
    struct hd_peer_addr b = v4("192.0.2.8");
    struct hd_peer *other = hd_peers_acquire(p, &b, 3, &refused);
    ck_assert_ptr_nonnull(other);
    ck_assert_uint_eq(hd_peers_size(p), 2);

    /* Closing one frees exactly one slot. */
    hd_peers_release(p, held[0]);
    held[0] = hd_peers_acquire(p, &a, 3, &refused);
    ck_assert_ptr_nonnull(held[0]);
    ck_assert_ptr_null(hd_peers_acquire(p, &a, 3, &refused));

    /* A lowered limit (SIGHUP) refuses new ones but keeps what is open. */
    ck_assert_ptr_null(hd_peers_acquire(p, &a, 1, &refused));
    ck_assert(refused);
    ck_assert_uint_eq(hd_peers_count(p, &a), 3);

    /* 0 is no limit. */
    struct hd_peer *more = hd_peers_acquire(p, &a, 0, &refused);
    ck_assert_ptr_nonnull(more);
    ck_assert_uint_eq(hd_peers_count(p, &a), 4);

    hd_peers_release(p, more);
    for (int i = 0; i < 3; i++)
        hd_peers_release(p, held[i]);
    hd_peers_release(p, other);
    hd_peers_release(p, NULL);
    ck_assert_uint_eq(hd_peers_count(p, &a), 0);
    ck_assert_uint_eq(hd_peers_size(p), 0);
    hd_peers_free(p);
}
END_TEST

START_TEST(address_keys)
{
    char text[64];
    struct hd_peer_addr a = v6("2001:db8:1:2:aaaa::1");
    struct hd_peer_addr b = v6("2001:db8:1:2:bbbb::9");
    struct hd_peer_addr c = v6("2001:db8:1:3::1");
    hd_peer_addr_format(&a, text, sizeof(text));
    ck_assert_str_eq(text, "2001:db8:1:2::/64");

    struct hd_peers *p = hd_peers_new();
    bool refused;
    struct hd_peer *pa = hd_peers_acquire(p, &a, 1, &refused);
    ck_assert_ptr_nonnull(pa);
    ck_assert_ptr_null(hd_peers_acquire(p, &b, 1, &refused)); /* same /64 */
    ck_assert(refused);
    struct hd_peer *pc = hd_peers_acquire(p, &c, 1, &refused); /* next /64 */
    ck_assert_ptr_nonnull(pc);

    /* An IPv4 client on a dual-stack socket counts as its IPv4 address. */
    struct hd_peer_addr mapped = v6("::ffff:198.51.100.4");
    struct hd_peer_addr plain = v4("198.51.100.4");
    hd_peer_addr_format(&mapped, text, sizeof(text));
    ck_assert_str_eq(text, "198.51.100.4");
    struct hd_peer *pm = hd_peers_acquire(p, &mapped, 1, &refused);
    ck_assert_ptr_nonnull(pm);
    ck_assert_ptr_null(hd_peers_acquire(p, &plain, 1, &refused));

    struct sockaddr_un_like {
        sa_family_t family;
        char path[20];
    } unix_sa = {.family = AF_UNIX};
    struct hd_peer_addr u;
    ck_assert_int_eq(hd_peer_addr_from(&u, (struct sockaddr *)&unix_sa, sizeof(unix_sa)),
                     -EAFNOSUPPORT);
    /* A truncated address is refused, not read past its end. */
    struct sockaddr_in short_sa = {.sin_family = AF_INET};
    ck_assert_int_eq(hd_peer_addr_from(&u, (struct sockaddr *)&short_sa, 4), -EAFNOSUPPORT);

    hd_peers_release(p, pa);
    hd_peers_release(p, pc);
    hd_peers_release(p, pm);
    ck_assert_uint_eq(hd_peers_size(p), 0);
    hd_peers_free(p);
}
END_TEST

START_TEST(many_peers)
{
    enum { N = 5000 };
    struct hd_peers *p = hd_peers_new();
    static struct hd_peer *held[N][2];
    bool refused;
    char text[32];
    for (int i = 0; i < N; i++) {
        snprintf(text, sizeof(text), "10.%d.%d.1", i / 256, i % 256);
        struct hd_peer_addr a = v4(text);
        held[i][0] = hd_peers_acquire(p, &a, 2, &refused);
        held[i][1] = hd_peers_acquire(p, &a, 2, &refused);
        ck_assert_ptr_nonnull(held[i][1]);
        ck_assert_ptr_null(hd_peers_acquire(p, &a, 2, &refused));
    }
    ck_assert_uint_eq(hd_peers_size(p), N);
    for (int i = 0; i < N; i++) {
        snprintf(text, sizeof(text), "10.%d.%d.1", i / 256, i % 256);
        struct hd_peer_addr a = v4(text);
        ck_assert_uint_eq(hd_peers_count(p, &a), 2); /* growth kept every count */
        hd_peers_release(p, held[i][0]);
        ck_assert_uint_eq(hd_peers_count(p, &a), 1);
    }
    for (int i = N - 1; i >= 0; i--)
        hd_peers_release(p, held[i][1]);
    ck_assert_uint_eq(hd_peers_size(p), 0);
    hd_peers_free(p);
}
END_TEST

static Suite *peers_suite(void)
{
    Suite *s = suite_create("peers");
    TCase *tc = tcase_create("peers");
    tcase_add_test(tc, limit_admits_exactly_n);
    tcase_add_test(tc, address_keys);
    tcase_add_test(tc, many_peers);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(peers_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
