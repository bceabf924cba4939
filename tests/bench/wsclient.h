/* SPDX-License-Identifier: MIT */
/*
 * Wire helpers for the load generator: the client side of the WebSocket opening handshake
 * (key, accept check), RFC 6455 frame header parsing and masked client frame encoding, an
 * HTTP/1.1 response head parser, and a few bounded JSON scanners that find one key without
 * parsing the whole document. Pure functions over caller-owned buffers: no sockets, no
 * allocation, so they can be checked by the built-in self-test (`loadgen --self-test`).
 */
#ifndef WSCLIENT_H
#define WSCLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum {
    WSC_OP_CONT = 0x0,
    WSC_OP_TEXT = 0x1,
    WSC_OP_BINARY = 0x2,
    WSC_OP_CLOSE = 0x8,
    WSC_OP_PING = 0x9,
    WSC_OP_PONG = 0xA,
};

/* Length of a Sec-WebSocket-Key (base64 of 16 bytes) and of a Sec-WebSocket-Accept value. */
#define WSC_KEY_LEN 24
#define WSC_ACCEPT_LEN 28
/* Longest client frame header: 2 + 8 (64-bit length) + 4 (mask). */
#define WSC_MAX_CLIENT_HDR 14
/* Longest HTTP response head we accept before calling it malformed. */
#define WSC_MAX_HTTP_HEAD 16384

/* A parsed frame header (server to client). */
struct wsc_frame {
    bool fin;
    bool masked;
    int opcode;
    uint64_t len;   /* payload length */
    size_t hdr_len; /* bytes of header, payload starts here */
};

/* The parts of an HTTP/1.1 response head the load generator looks at. */
struct wsc_http_head {
    int status;
    long long content_length; /* -1 when absent */
    bool conn_close;          /* Connection: close */
    bool conn_upgrade;        /* Connection contains the token "upgrade" */
    bool upgrade_websocket;   /* Upgrade: websocket */
    bool chunked;             /* Transfer-Encoding: chunked */
    char accept[WSC_ACCEPT_LEN + 4];
    char protocol[64];
    size_t head_len; /* bytes up to and including the blank line */
};

/*
 * Base64-encodes n bytes of `in` into `out`, which must hold 4 * ((n + 2) / 3) + 1 bytes.
 * Returns the encoded length (without the NUL it writes).
 */
size_t wsc_base64(const unsigned char *in, size_t n, char *out);

/*
 * Computes the Sec-WebSocket-Accept value for `key` (borrowed, NUL-terminated) into
 * `out` (WSC_ACCEPT_LEN + 1 bytes). Returns 0, or -EINVAL when the key is too long.
 */
int wsc_accept_for_key(const char *key, char out[WSC_ACCEPT_LEN + 1]);

/*
 * Writes the upgrade request for `path` with subprotocol `proto` (NULL: no
 * Sec-WebSocket-Protocol header) and key `key` to `out`. `host_hdr` is the Host header value
 * ("127.0.0.1:7070"). Returns the request length, or -ENOSPC when `cap` is too small.
 */
int wsc_handshake_request(char *out, size_t cap, const char *host_hdr, const char *path,
                          const char *proto, const char *key);

/*
 * Parses an HTTP/1.1 response head from `buf` (borrowed, not NUL-terminated). Returns 0 with
 * `h` filled, -EAGAIN when the blank line has not arrived yet, -EMSGSIZE when the head is
 * longer than WSC_MAX_HTTP_HEAD, -EPROTO when the status line or a header is malformed.
 */
int wsc_http_parse_head(const char *buf, size_t len, struct wsc_http_head *h);

/*
 * Checks a parsed 101 response against the expected accept value and subprotocol.
 * Returns NULL when it is a valid upgrade, else a static string saying what is wrong.
 */
const char *wsc_handshake_check(const struct wsc_http_head *h, const char *want_accept,
                                const char *want_proto);

/*
 * Parses a frame header from `buf`. Returns 0 when the header is complete (the payload may
 * still be incomplete: compare f->hdr_len + f->len with what you have), -EAGAIN when more
 * bytes are needed, -EPROTO for reserved bits, unknown opcodes, or fragmented or oversized
 * (>125 bytes) control frames.
 */
int wsc_frame_parse(const unsigned char *buf, size_t avail, struct wsc_frame *f);

/* Header length of a masked client frame with a payload of `len` bytes. */
size_t wsc_client_hdr_len(uint64_t len);

/*
 * Finishes a masked client frame in `frame`: the payload (`len` bytes) must already sit at
 * frame + wsc_client_hdr_len(len). Writes the header with FIN set and masks the payload in
 * place with `mask`. Returns the total frame length.
 */
size_t wsc_client_frame_finish(unsigned char *frame, int opcode, uint64_t len, uint32_t mask);

/* XORs `len` bytes at `p` with the 4-byte mask, starting at mask byte `phase` (0-3). */
void wsc_mask(unsigned char *p, size_t len, uint32_t mask, size_t phase);

/*
 * Finds the object key `key` (keylen bytes, without quotes) in [p, end) and returns a pointer
 * to its value (after the colon and any blanks), or NULL. It matches "key" followed by
 * optional blanks and a colon, so a string value equal to the key is skipped; it does not
 * track nesting, so search inside the object you mean.
 */
const char *wsc_json_find(const char *p, const char *end, const char *key, size_t keylen);

/* Parses a JSON integer at p. Returns 0 with *out set, or -EINVAL (not a number, overflow). */
int wsc_json_int(const char *p, const char *end, long long *out);

/*
 * If p starts a JSON string, returns its raw length (between the quotes, escapes left as
 * they are) and sets *s to its first byte; returns -1 otherwise or when it is unterminated.
 */
long wsc_json_str(const char *p, const char *end, const char **s);

/* Writes the decimal form of v to out (at least 21 bytes) without a NUL; returns its length. */
size_t wsc_u64toa(uint64_t v, char *out);

/* Runs the codec's self-checks; prints failures to stderr and returns how many failed. */
int wsc_selftest(void);

#endif
