/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer harness for the HTTP/1.1 framing check (src/h1frame.c), differential: the input is
 * fed, in pieces of the sizes its first bytes choose, both to hd_h1_feed and to the plain
 * byte-at-a-time version it replaced (h1frame_ref.inc), driven the way server_guard.c drives it
 * (bodies read past the check, answers between requests). Every step must give the same
 * verdict, the same bytes for lws and the same answer: the fast paths may not weaken the check.
 * The first byte also picks the limits, so the refusals at max_head_bytes, max_headers and
 * max_params are reached with short inputs.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "h1frame.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define hd_h1_feed ref_h1_feed
#define hd_h1_ws_scan ref_h1_ws_scan
#define hd_h1_took_body ref_h1_took_body
#define hd_h1_answered ref_h1_answered
enum hd_h1_verdict ref_h1_feed(struct hd_h1 *h, const struct hd_h1_opts *o, const char *in,
                               size_t n, char *out, size_t cap, size_t *consumed, size_t *out_len,
                               struct hd_h1_refusal *ref);
enum hd_h1_verdict ref_h1_ws_scan(struct hd_h1 *h, const char *p, size_t n, size_t *ok,
                                  struct hd_h1_refusal *ref);
void ref_h1_took_body(struct hd_h1 *h, size_t n);
void ref_h1_answered(struct hd_h1 *h);
#include "h1frame_ref.inc"
#undef hd_h1_feed
#undef hd_h1_ws_scan
#undef hd_h1_took_body
#undef hd_h1_answered

static void same_refusal(enum hd_h1_verdict v, const struct hd_h1_refusal *a,
                         const struct hd_h1_refusal *b)
{
    if (v == H1_OK)
        return;
    if (a->status != b->status || strcmp(a->message, b->message) != 0)
        abort();
    if (v == H1_REFUSE && (a->code != b->code || (a->allow == NULL) != (b->allow == NULL)))
        abort();
}

static void same_state(const struct hd_h1 *a, const struct hd_h1 *b)
{
    if (a->state != b->state || a->pipelined != b->pipelined || a->body_left != b->body_left ||
        a->ws_pos != b->ws_pos)
        abort();
}

/* The WebSocket frame check alone, from a connection already upgraded. */
static void ws_only(const uint8_t *data, size_t size, size_t step)
{
    struct hd_h1 a = {.state = H1_WS}, b = {.state = H1_WS};
    size_t at = 0;
    while (at < size) {
        size_t piece = size - at < step ? size - at : step;
        struct hd_h1_refusal ra = {0}, rb = {0};
        size_t oka = 0, okb = 0;
        enum hd_h1_verdict va = hd_h1_ws_scan(&a, (const char *)data + at, piece, &oka, &ra);
        enum hd_h1_verdict vb = ref_h1_ws_scan(&b, (const char *)data + at, piece, &okb, &rb);
        if (va != vb || oka != okb)
            abort();
        same_refusal(va, &ra, &rb);
        same_state(&a, &b);
        if (va != H1_OK)
            return;
        at += piece;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    uint8_t mode = data[0], split = data[1], answer = data[2];
    data += 3;
    size -= 3;
    /* pieces of 1-16 bytes, or the rest whole */
    size_t step = split & 0x10 ? size + 1 : (size_t)(split & 0x0f) + 1;
    if (mode & 0x80) {
        ws_only(data, size, step);
        return 0;
    }
    struct hd_h1_opts o = {.max_head_bytes = mode & 0x40 ? 64u + (mode & 0x0f) * 16u : 4096,
                           .max_headers = mode & 0x20 ? 1u + (mode & 0x03) : 64,
                           .max_params = mode & 0x20 ? 1u + (mode >> 2 & 0x03) : 24,
                           .pipelining = mode & 0x10,
                           .chunked = split & 0x20};
    struct hd_h1 a = {0}, b = {0};
    char *oa = malloc(size + 2), *ob = malloc(size + 2);
    if (!oa || !ob)
        abort();
    size_t at = 0, turn = 0;
    while (at < size) {
        size_t piece = size - at < step ? size - at : step;
        if (a.state == H1_BODY) {
            /* server_guard.c reads a body past the check, up to its end */
            size_t take = piece < a.body_left ? piece : (size_t)a.body_left;
            hd_h1_took_body(&a, take);
            ref_h1_took_body(&b, take);
            same_state(&a, &b);
            at += take;
            continue;
        }
        if (a.state == H1_AWAIT && answer >> (turn++ & 7) & 1) {
            hd_h1_answered(&a);
            ref_h1_answered(&b);
        }
        struct hd_h1_refusal ra = {0}, rb = {0};
        size_t ca = 0, cb = 0, la = 0, lb = 0;
        /* server_guard.c reads one byte less than lws's buffer holds */
        enum hd_h1_verdict va =
            hd_h1_feed(&a, &o, (const char *)data + at, piece, oa, piece + 1, &ca, &la, &ra);
        enum hd_h1_verdict vb =
            ref_h1_feed(&b, &o, (const char *)data + at, piece, ob, piece + 1, &cb, &lb, &rb);
        if (va != vb || ca != cb || la != lb || memcmp(oa, ob, la) != 0)
            abort();
        same_refusal(va, &ra, &rb);
        same_state(&a, &b);
        if (va != H1_OK || a.state == H1_REFUSED || a.state == H1_DISCARD)
            break;
        if (!ca)
            abort(); /* no progress: the guard would spin */
        at += ca;
    }
    free(oa);
    free(ob);
    return 0;
}
