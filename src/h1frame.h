/* SPDX-License-Identifier: MIT */
/*
 * HTTP/1.1 request framing, checked before libwebsockets parses a byte (RFC 9112). lws 4.1
 * drops or mis-frames what it cannot parse (oversized heads, NUL, unknown methods, conflicting
 * Content-Length, pipelined requests), so every plaintext byte lws reads goes through
 * hd_h1_feed first: it answers what lws would drop, and hands lws one request at a time.
 * Plain C, no sockets: server_guard.c does the reading.
 */
#ifndef HD_H1FRAME_H
#define HD_H1FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "protocol.h"

/* Which HTTP/1.1 features the lws underneath can be trusted with. */
struct hd_h1_opts {
    uint32_t max_head_bytes; /* request line plus headers: over it 431 (414 for the line) */
    uint32_t max_headers;    /* header lines: over it 431 */
    uint32_t max_params;     /* `&`/`;`-separated query parts: over it 400 */
    /* lws parses a second request that arrives before the first is answered. When false, the
     * bytes after a complete request are discarded and the answer closes the connection, so
     * the client retries them (RFC 9112 9.3.2). */
    bool pipelining;
    /* Chunked request bodies reach heraldd (lws 4.3 hands them over raw and server_http.c
     * decodes them). When false the request is answered (411 for a publish) and closed, and
     * the body is dropped unparsed; when true it goes to lws unchecked, the connection's later
     * bytes are lws's alone (this check has no chunk decoder), and the answer closes it. */
    bool chunked;
};

enum hd_h1_state {
    H1_HEAD,    /* reading a request line and headers */
    H1_BODY,    /* reading a Content-Length body */
    H1_AWAIT,   /* one request complete, its answer not yet written */
    H1_PASS,    /* a body lws frames itself (chunked, when it can): no longer checked */
    H1_WS,      /* after a WebSocket upgrade: frame headers are checked (RFC 6455 5.2) */
    H1_DISCARD, /* pipelined bytes after a request (no pipelining): thrown away */
    H1_REFUSED, /* answered with an error: nothing more is read */
};

/* One connection's framing state; all zero is a fresh connection. */
struct hd_h1 {
    uint8_t state, part, pct, method_len, name_len, version_len;
    uint8_t hdr;     /* the header being read: 0 other, else one of the tracked ones */
    uint8_t ws_pos;  /* bytes of the current WebSocket frame header seen */
    uint8_t ws_need; /* that header's length, once its second byte is known */
    uint8_t ws_b0, ws_b1;
    bool absolute; /* the target came in absolute form: its scheme and authority are dropped */
    bool in_query, cl_seen, cl_digit, cl_end, te, upgrade, websocket, pipelined;
    uint8_t ws_match; /* bytes of "websocket" matched in the Upgrade header */
    uint16_t headers, params;
    uint32_t line_len, head_len, abs_len;
    int64_t cl, cl_value;
    uint64_t body_left; /* of a Content-Length body, or of a WebSocket frame's payload */
    char method[12];
    char name[20];
    char version[9];
};

/* What the feed decided. */
enum hd_h1_verdict {
    H1_OK,       /* give lws out_len bytes (out_len may be 0: nothing to parse yet) */
    H1_REFUSE,   /* answer with the refusal and close; lws gets nothing more */
    H1_WS_CLOSE, /* a WebSocket protocol error: send a close frame with ref's code, close */
};

/* An answer the framing gives itself. */
struct hd_h1_refusal {
    int status; /* HTTP status, or the WebSocket close code for H1_WS_CLOSE */
    enum hd_err code;
    const char *allow; /* the Allow header of a 405, else NULL */
    char message[160];
};

/*
 * Feeds the n bytes the peer sent next (in, borrowed) and says what to do with them. On
 * H1_OK the first *consumed bytes are taken from the peer (all n when cap > n) and the
 * *out_len bytes written to out (capacity cap) are what lws is to parse: the bytes of this
 * request, less an absolute-form target's scheme and authority, and none of a request sent
 * before this one was answered (hd_h1_opts.pipelining). On H1_REFUSE or H1_WS_CLOSE, `ref`
 * says what to answer; nothing more is to be read.
 */
enum hd_h1_verdict hd_h1_feed(struct hd_h1 *h, const struct hd_h1_opts *o, const char *in, size_t n,
                              char *out, size_t cap, size_t *consumed, size_t *out_len,
                              struct hd_h1_refusal *ref);

/*
 * The n bytes at p (borrowed) came from a WebSocket client (state H1_WS): checks the frame
 * headers among them. Returns H1_OK, or H1_WS_CLOSE with the close code in ref->status and
 * in *ok how many bytes came before the offending frame's header.
 */
enum hd_h1_verdict hd_h1_ws_scan(struct hd_h1 *h, const char *p, size_t n, size_t *ok,
                                 struct hd_h1_refusal *ref);

/* n bytes of a Content-Length body (state H1_BODY) were read past hd_h1_feed. */
void hd_h1_took_body(struct hd_h1 *h, size_t n);

/* The request was answered and the connection stays open: the next request may begin. */
void hd_h1_answered(struct hd_h1 *h);

#endif
