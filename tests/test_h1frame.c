/* SPDX-License-Identifier: MIT */
/*
 * Check suite for HTTP/1.1 request framing (src/h1frame.c): what lws is handed, where a
 * request ends, and which heads are refused with which status. Every request is also fed one
 * byte at a time, since a client may split it anywhere.
 */
#include "h1frame.h"

#include <check.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "server_int.h" /* srv_rx_capacity: the WebSocket reassembly buffer's growth */

static const struct hd_h1_opts opts = {
    .max_head_bytes = 4096, .max_headers = 64, .max_params = 24, .pipelining = false};

struct result {
    enum hd_h1_verdict v;
    int status;
    enum hd_err code;
    char out[16384];
    size_t out_len, consumed;
    struct hd_h1 h;
};

/* Feeds `in` in pieces of `step` bytes (0: whole), as recv() would, until all is consumed. */
static void feed(const char *in, size_t n, size_t step, struct result *r)
{
    memset(r, 0, sizeof(*r));
    size_t at = 0;
    while (at < n) {
        size_t piece = step && n - at > step ? step : n - at;
        size_t consumed = 0, out = 0;
        struct hd_h1_refusal ref;
        r->v = hd_h1_feed(&r->h, &opts, in + at, piece, r->out + r->out_len,
                          sizeof(r->out) - r->out_len, &consumed, &out, &ref);
        if (r->v == H1_REFUSE) {
            r->status = ref.status;
            r->code = ref.code;
            ck_assert_str_ne(ref.message, "");
            return;
        }
        ck_assert_uint_le(consumed, piece);
        ck_assert(consumed > 0);
        r->out_len += out;
        at += consumed;
        r->consumed = at;
    }
}

static void expect_status(const char *in, size_t n, int status, enum hd_err code)
{
    struct result r;
    for (size_t step = 0; step <= 1; step++) {
        feed(in, n, step, &r);
        ck_assert_int_eq(r.v, H1_REFUSE);
        ck_assert_int_eq(r.status, status);
        ck_assert_int_eq(r.code, code);
    }
}

#define S(lit) lit, sizeof(lit) - 1

START_TEST(plain_requests_pass_unchanged)
{
    static const char get[] = "GET /healthz?a=1&b=2 HTTP/1.1\r\nHost: x\r\nX-A: b c\r\n\r\n";
    static const char post[] = "POST /v1/topics/a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
    static const char lf[] = "GET / HTTP/1.0\nHost: x\n\n";
    const char *reqs[] = {get, post, lf};
    for (size_t i = 0; i < 3; i++)
        for (size_t step = 0; step <= 3; step++) {
            struct result r;
            feed(reqs[i], strlen(reqs[i]), step, &r);
            ck_assert_int_eq(r.v, H1_OK);
            ck_assert_uint_eq(r.out_len, strlen(reqs[i]));
            ck_assert(memcmp(r.out, reqs[i], r.out_len) == 0);
            ck_assert_int_eq(r.h.state, H1_AWAIT);
            ck_assert(!r.h.pipelined);
        }
}
END_TEST

START_TEST(pipelined_bytes_are_dropped_and_flagged)
{
    static const char two[] = "POST /v1/topics/a HTTP/1.1\r\nContent-Length: 3\r\n\r\n"
                              "abcGET / HTTP/1.1\r\n\r\n";
    size_t first = strlen(two) - strlen("GET / HTTP/1.1\r\n\r\n");
    for (size_t step = 0; step <= 1; step++) {
        struct result r;
        feed(two, strlen(two), step, &r);
        ck_assert_int_eq(r.v, H1_OK);
        ck_assert_uint_eq(r.out_len, first);
        ck_assert(r.h.pipelined);
        ck_assert_int_eq(r.h.state, H1_DISCARD);
    }
}
END_TEST

START_TEST(answered_starts_the_next_request)
{
    struct result r;
    feed(S("GET / HTTP/1.1\r\n\r\n"), 0, &r);
    hd_h1_answered(&r.h);
    ck_assert_int_eq(r.h.state, H1_HEAD);
    size_t consumed, out;
    char buf[64];
    struct hd_h1_refusal ref;
    ck_assert_int_eq(hd_h1_feed(&r.h, &opts, S("GET / HTTP/1.1\r\n\r\n"), buf, sizeof(buf),
                                &consumed, &out, &ref),
                     H1_OK);
    ck_assert_uint_eq(out, 18);
    ck_assert(!r.h.pipelined);
}
END_TEST

START_TEST(smuggling_constructs_are_refused)
{
    expect_status(S("POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
                  400, HD_ERR_BAD_REQUEST);
    expect_status(S("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-length: 3\r\n\r\n"),
                  400, HD_ERR_BAD_REQUEST);
    expect_status(S("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"), 400,
                  HD_ERR_BAD_REQUEST);
    expect_status(S("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"), 400, HD_ERR_BAD_REQUEST);
    expect_status(S("POST / HTTP/1.1\r\nContent-Length: \r\n\r\n"), 400, HD_ERR_BAD_REQUEST);
    expect_status(S("POST / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n"), 400, HD_ERR_BAD_REQUEST);
    expect_status(S("POST / HTTP/1.1\r\nContent-Length : 3\r\n\r\n"), 400, HD_ERR_BAD_REQUEST);
    expect_status(S("GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n"), 400, HD_ERR_BAD_REQUEST);
    expect_status(S("GET / HTTP/1.1\r\nX: a\rb\r\n\r\n"), 400, HD_ERR_BAD_REQUEST);
    /* equal duplicates are one length */
    struct result r;
    feed(S("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length:  3 \r\n\r\nabc"), 1, &r);
    ck_assert_int_eq(r.v, H1_OK);
    ck_assert_int_eq(r.h.state, H1_AWAIT);
}
END_TEST

START_TEST(bad_heads_get_their_status)
{
    expect_status(S("GET /a\0b HTTP/1.1\r\n\r\n"), 400, HD_ERR_BAD_REQUEST);
    expect_status(S("GET / HTTP/1.1\r\nX: a\0\r\n\r\n"), 400, HD_ERR_BAD_REQUEST);
    expect_status(S("GET /?a=%00 HTTP/1.1\r\n\r\n"), 400, HD_ERR_BAD_REQUEST);
    expect_status(S("GET /?a=%zz HTTP/1.1\r\n\r\n"), 400, HD_ERR_BAD_REQUEST);
    expect_status(S("GET /?a=% HTTP/1.1\r\n\r\n"), 400, HD_ERR_BAD_REQUEST);
    expect_status(S("GET / HTTP/2.0\r\n\r\n"), 400, HD_ERR_BAD_REQUEST);
    expect_status(S("GET ftp://x/ HTTP/1.1\r\n\r\n"), 400, HD_ERR_BAD_REQUEST);
    expect_status(S("CONNECT h:1 HTTP/1.1\r\n\r\n"), 405, HD_ERR_METHOD_NOT_ALLOWED);
    expect_status(S("get / HTTP/1.1\r\n\r\n"), 405, HD_ERR_METHOD_NOT_ALLOWED);
    char big[6000];
    int n = snprintf(big, sizeof(big), "GET /%0*d HTTP/1.1\r\n\r\n", 5000, 0);
    expect_status(big, (size_t)n, 414, HD_ERR_TOO_LARGE);
    n = snprintf(big, sizeof(big), "GET / HTTP/1.1\r\nX: %0*d\r\n\r\n", 5000, 0);
    expect_status(big, (size_t)n, 431, HD_ERR_TOO_LARGE);
    size_t at = (size_t)snprintf(big, sizeof(big), "GET / HTTP/1.1\r\n");
    for (int i = 0; i < 65; i++)
        at += (size_t)snprintf(big + at, sizeof(big) - at, "X%d: v\r\n", i);
    at += (size_t)snprintf(big + at, sizeof(big) - at, "\r\n");
    expect_status(big, at, 431, HD_ERR_TOO_LARGE);
    at = (size_t)snprintf(big, sizeof(big), "GET /?");
    for (int i = 0; i < 25; i++)
        at += (size_t)snprintf(big + at, sizeof(big) - at, "a=%d&", i);
    at += (size_t)snprintf(big + at, sizeof(big) - at, " HTTP/1.1\r\n\r\n");
    expect_status(big, at, 400, HD_ERR_BAD_REQUEST);
}
END_TEST

/* Feeds `in` in two pieces, split after `split` bytes (0: whole). */
static void feed_split(const char *in, size_t n, size_t split, struct result *r)
{
    memset(r, 0, sizeof(*r));
    for (size_t at = 0; at < n;) {
        size_t piece = at < split && split < n ? split - at : n - at;
        size_t consumed = 0, out = 0;
        struct hd_h1_refusal ref;
        r->v = hd_h1_feed(&r->h, &opts, in + at, piece, r->out + r->out_len,
                          sizeof(r->out) - r->out_len, &consumed, &out, &ref);
        if (r->v != H1_OK) {
            r->status = ref.status;
            return;
        }
        ck_assert_uint_eq(consumed, piece);
        r->out_len += out;
        at += piece;
    }
}

START_TEST(tracked_headers_in_any_case_at_any_split)
{
    /* The usual parts of a head are read in runs (plain_run), the rest a byte at a time: a
     * read may end anywhere, and header names are matched whatever their case. */
    static const char post[] = "POST /v1/topics/a?x=1&y=2 HTTP/1.1\r\nHost: h\r\n"
                               "CONTENT-length:  3 \r\nX-Y: z\r\n\r\nabc";
    static const char both[] = "POST / HTTP/1.1\r\ncontent-LENGTH: 3\r\n"
                               "Transfer-ENCODING: chunked\r\n\r\n";
    static const char two[] = "POST / HTTP/1.1\r\nContent-Length: 3\r\nCONTENT-LENGTH: 4\r\n\r\n";
    static const char up[] = "GET /v1/ws HTTP/1.1\r\nUPGRADE: WebSocket\r\n\r\n";
    for (size_t split = 0; split < sizeof(post) - 1; split++) {
        struct result r;
        feed_split(S(post), split, &r);
        ck_assert_int_eq(r.v, H1_OK);
        ck_assert_int_eq(r.h.state, H1_AWAIT);
        ck_assert_int_eq(r.h.cl, 3);
        ck_assert_uint_eq(r.out_len, sizeof(post) - 1);
        ck_assert(memcmp(r.out, post, r.out_len) == 0);
    }
    for (size_t split = 0; split < sizeof(both) - 1; split++) {
        struct result r;
        feed_split(S(both), split, &r);
        ck_assert_int_eq(r.v, H1_REFUSE);
        ck_assert_int_eq(r.status, 400);
    }
    for (size_t split = 0; split < sizeof(two) - 1; split++) {
        struct result r;
        feed_split(S(two), split, &r);
        ck_assert_int_eq(r.v, H1_REFUSE);
        ck_assert_int_eq(r.status, 400);
    }
    for (size_t split = 0; split < sizeof(up) - 1; split++) {
        struct result r;
        feed_split(S(up), split, &r);
        ck_assert_int_eq(r.v, H1_OK);
        ck_assert_int_eq(r.h.state, H1_WS);
    }
}
END_TEST

START_TEST(value_bytes_are_checked_wherever_they_fall)
{
    /* Values are scanned eight bytes at a time: a control character, DEL or NUL is refused
     * at any offset of a long value, and a tab is a value byte at any offset. */
    for (size_t at = 0; at < 24; at++) {
        static const char bad[] = {0x00, 0x01, 0x0b, 0x1f, 0x7f};
        char req[128];
        for (size_t b = 0; b < sizeof(bad); b++) {
            int n = snprintf(req, sizeof(req), "GET / HTTP/1.1\r\nX-Long: %.*sZ%.*s\r\n\r\n",
                             (int)at, "abcdefghijklmnopqrstuvwxyz", (int)(24 - at),
                             "abcdefghijklmnopqrstuvwxyz");
            char *z = strchr(req, 'Z');
            *z = bad[b];
            expect_status(req, (size_t)n, 400, HD_ERR_BAD_REQUEST);
        }
        int n = snprintf(req, sizeof(req), "GET / HTTP/1.1\r\nX-Long: %.*s\t%.*s\r\n\r\n", (int)at,
                         "abcdefghijklmnopqrstuvwxyz", (int)(24 - at),
                         "\x80\xff\x20~bcdefghijklmnopqrstuvwxyz");
        struct result r;
        feed(req, (size_t)n, 0, &r);
        ck_assert_int_eq(r.v, H1_OK);
        ck_assert_int_eq(r.h.state, H1_AWAIT);
    }
}
END_TEST

START_TEST(absolute_form_becomes_its_path)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"GET http://h:1/healthz?x=1 HTTP/1.1\r\n\r\n", "GET /healthz?x=1 HTTP/1.1\r\n\r\n"},
        {"GET HTTPS://h/v1/ws HTTP/1.1\r\n\r\n", "GET /v1/ws HTTP/1.1\r\n\r\n"},
        {"GET http://h HTTP/1.1\r\n\r\n", "GET / HTTP/1.1\r\n\r\n"},
        {"GET http://h?x HTTP/1.1\r\n\r\n", "GET /?x HTTP/1.1\r\n\r\n"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        for (size_t step = 0; step <= 1; step++) {
            struct result r;
            feed(cases[i].in, strlen(cases[i].in), step, &r);
            ck_assert_int_eq(r.v, H1_OK);
            r.out[r.out_len] = '\0';
            ck_assert_str_eq(r.out, cases[i].out);
        }
}
END_TEST

START_TEST(upgrades_hand_over_after_the_head)
{
    static const char up[] = "GET /v1/ws HTTP/1.1\r\nUpgrade: WebSocket\r\n\r\n\x81\x80xxxx";
    struct result r;
    feed(S(up), 0, &r);
    ck_assert_int_eq(r.h.state, H1_WS);
    ck_assert_uint_eq(r.out_len, sizeof(up) - 1);
    feed(S("GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\nanything"), 0, &r);
    ck_assert_int_eq(r.h.state, H1_PASS);
}
END_TEST

/* A masked client frame header with payload length n (under 126) and zero mask. */
static size_t ws_frame(char *p, unsigned char op, size_t n, bool masked)
{
    p[0] = (char)(0x80 | op);
    p[1] = (char)((masked ? 0x80 : 0) | n);
    size_t h = masked ? 6 : 2;
    memset(p + 2, 0, h - 2);
    memset(p + h, 'x', n);
    return h + n;
}

START_TEST(websocket_frames_must_be_masked)
{
    struct hd_h1 h = {.state = H1_WS};
    char buf[512];
    size_t at = 0;
    at += ws_frame(buf + at, 1, 100, true);
    at += ws_frame(buf + at, 9, 0, true);
    size_t good = at;
    at += ws_frame(buf + at, 1, 5, false);
    struct hd_h1_refusal ref;
    size_t ok;
    /* split anywhere, the good frames pass and the unmasked one is found */
    for (size_t split = 1; split < at; split++) {
        h = (struct hd_h1){.state = H1_WS};
        enum hd_h1_verdict v = hd_h1_ws_scan(&h, buf, split, &ok, &ref);
        if (split <= good + 1) {
            ck_assert_int_eq(v, H1_OK);
            v = hd_h1_ws_scan(&h, buf + split, at - split, &ok, &ref);
            ck_assert_uint_eq(split + ok, good + 1);
        } else {
            ck_assert_uint_eq(ok, good + 1);
        }
        ck_assert_int_eq(v, H1_WS_CLOSE);
        ck_assert_int_eq(ref.status, 1002);
    }
    /* a 16-bit length is skipped whole */
    h = (struct hd_h1){.state = H1_WS};
    unsigned char big[4 + 4 + 300] = {0x81, 0x80 | 126, 0x01, 0x2c};
    memset(big + 8, 0, 300); /* unmasked-looking bytes inside the payload are payload */
    ck_assert_int_eq(hd_h1_ws_scan(&h, (char *)big, sizeof(big), &ok, &ref), H1_OK);
    ck_assert_uint_eq(h.body_left, 0);
    ck_assert_uint_eq(h.ws_pos, 0);
}
END_TEST

START_TEST(rx_capacity_doubles)
{
    /* 2,400 fragments of 256 bytes: the buffer is reallocated about log2(600 KB / 1 KB)
     * times, not once per fragment. */
    size_t limit = 1024 * 1024 + 16384, len = 0, grows = 0, have = 0;
    for (int i = 0; i < 2400; i++) {
        size_t need = srv_rx_capacity(len + 256 + 1, limit + 1);
        ck_assert_uint_ge(need, len + 256 + 1);
        if (need > have) {
            grows++;
            have = need;
        }
        len += 256;
        ck_assert_uint_eq(have, srv_rx_capacity(len + 1, limit + 1));
    }
    ck_assert_uint_le(grows, 12);
    ck_assert_uint_eq(srv_rx_capacity(limit + 1, limit + 1), limit + 1);
}
END_TEST

static Suite *h1frame_suite(void)
{
    Suite *s = suite_create("h1frame");
    TCase *tc = tcase_create("framing");
    tcase_add_test(tc, plain_requests_pass_unchanged);
    tcase_add_test(tc, pipelined_bytes_are_dropped_and_flagged);
    tcase_add_test(tc, answered_starts_the_next_request);
    tcase_add_test(tc, smuggling_constructs_are_refused);
    tcase_add_test(tc, bad_heads_get_their_status);
    tcase_add_test(tc, tracked_headers_in_any_case_at_any_split);
    tcase_add_test(tc, value_bytes_are_checked_wherever_they_fall);
    tcase_add_test(tc, absolute_form_becomes_its_path);
    tcase_add_test(tc, upgrades_hand_over_after_the_head);
    tcase_add_test(tc, websocket_frames_must_be_masked);
    tcase_add_test(tc, rx_capacity_doubles);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(h1frame_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
