/* SPDX-License-Identifier: MIT */
/*
 * Wire helpers for the load generator: WebSocket handshake (RFC 6455 section 4), frame
 * header parsing and masked client frames (section 5), an HTTP/1.1 response head parser and
 * bounded JSON key scanners. Everything works on caller-owned buffers and never allocates;
 * sockets, buffering and statistics live in loadgen.c. Every parser is bounded by the length
 * it is given and never reads a NUL terminator it was not promised.
 */
#define _GNU_SOURCE /* memmem */
#include "wsclient.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <openssl/sha.h>

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char WS_GUID[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

size_t wsc_base64(const unsigned char *in, size_t n, char *out)
{
    size_t o = 0, i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = B64[v >> 18];
        out[o++] = B64[(v >> 12) & 63];
        out[o++] = B64[(v >> 6) & 63];
        out[o++] = B64[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0);
        out[o++] = B64[v >> 18];
        out[o++] = B64[(v >> 12) & 63];
        out[o++] = i + 1 < n ? B64[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    out[o] = '\0';
    return o;
}

int wsc_accept_for_key(const char *key, char out[WSC_ACCEPT_LEN + 1])
{
    char buf[128];
    size_t kl = strlen(key);
    if (kl + sizeof(WS_GUID) > sizeof(buf))
        return -EINVAL;
    memcpy(buf, key, kl);
    memcpy(buf + kl, WS_GUID, sizeof(WS_GUID) - 1);
    unsigned char md[SHA_DIGEST_LENGTH];
    /* One-shot SHA1() is not deprecated in OpenSSL 3 (only the SHA1_Init family is). */
    SHA1((const unsigned char *)buf, kl + sizeof(WS_GUID) - 1, md);
    wsc_base64(md, sizeof(md), out);
    return 0;
}

int wsc_handshake_request(char *out, size_t cap, const char *host_hdr, const char *path,
                          const char *proto, const char *key)
{
    int n = snprintf(out, cap,
                     "GET %s HTTP/1.1\r\n"
                     "Host: %s\r\n"
                     "Upgrade: websocket\r\n"
                     "Connection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n"
                     "%s%s%s"
                     "\r\n",
                     path, host_hdr, key, proto ? "Sec-WebSocket-Protocol: " : "",
                     proto ? proto : "", proto ? "\r\n" : "");
    if (n < 0 || (size_t)n >= cap)
        return -ENOSPC;
    return n;
}

/* Case-insensitive search for the token `word` in a header value (not NUL-terminated). */
static bool ci_contains(const char *v, size_t vlen, const char *word)
{
    size_t wl = strlen(word);
    for (size_t i = 0; i + wl <= vlen; i++)
        if (strncasecmp(v + i, word, wl) == 0)
            return true;
    return false;
}

static bool ci_equals(const char *v, size_t vlen, const char *word)
{
    return strlen(word) == vlen && strncasecmp(v, word, vlen) == 0;
}

static void copy_value(char *dst, size_t cap, const char *v, size_t vlen)
{
    if (vlen >= cap)
        vlen = cap - 1;
    memcpy(dst, v, vlen);
    dst[vlen] = '\0';
}

static int parse_header_line(const char *l, size_t n, struct wsc_http_head *h)
{
    const char *colon = memchr(l, ':', n);
    if (!colon || colon == l)
        return -EPROTO;
    size_t nl = (size_t)(colon - l);
    const char *v = colon + 1, *ve = l + n;
    while (v < ve && (*v == ' ' || *v == '\t'))
        v++;
    while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
        ve--;
    size_t vl = (size_t)(ve - v);

    if (ci_equals(l, nl, "content-length")) {
        long long cl = 0;
        if (vl == 0 || vl > 15)
            return -EPROTO;
        for (size_t i = 0; i < vl; i++) {
            if (!isdigit((unsigned char)v[i]))
                return -EPROTO;
            cl = cl * 10 + (v[i] - '0');
        }
        h->content_length = cl;
    } else if (ci_equals(l, nl, "connection")) {
        if (ci_contains(v, vl, "close"))
            h->conn_close = true;
        if (ci_contains(v, vl, "upgrade"))
            h->conn_upgrade = true;
    } else if (ci_equals(l, nl, "upgrade")) {
        h->upgrade_websocket = ci_equals(v, vl, "websocket");
    } else if (ci_equals(l, nl, "transfer-encoding")) {
        h->chunked = ci_contains(v, vl, "chunked");
    } else if (ci_equals(l, nl, "sec-websocket-accept")) {
        copy_value(h->accept, sizeof(h->accept), v, vl);
    } else if (ci_equals(l, nl, "sec-websocket-protocol")) {
        copy_value(h->protocol, sizeof(h->protocol), v, vl);
    }
    return 0;
}

int wsc_http_parse_head(const char *buf, size_t len, struct wsc_http_head *h)
{
    size_t lim = len < WSC_MAX_HTTP_HEAD ? len : WSC_MAX_HTTP_HEAD;
    const char *end = memmem(buf, lim, "\r\n\r\n", 4);
    if (!end)
        return len >= WSC_MAX_HTTP_HEAD ? -EMSGSIZE : -EAGAIN;

    *h = (struct wsc_http_head){.content_length = -1};
    h->head_len = (size_t)(end - buf) + 4;

    /* Status line: HTTP/1.x SP 3DIGIT [SP reason] */
    const char *le = memmem(buf, (size_t)(end - buf) + 2, "\r\n", 2);
    size_t sl = (size_t)(le - buf);
    if (sl < 12 || memcmp(buf, "HTTP/1.", 7) != 0 || buf[8] != ' ' ||
        !isdigit((unsigned char)buf[9]) || !isdigit((unsigned char)buf[10]) ||
        !isdigit((unsigned char)buf[11]) || (sl > 12 && buf[12] != ' '))
        return -EPROTO;
    h->status = (buf[9] - '0') * 100 + (buf[10] - '0') * 10 + (buf[11] - '0');

    const char *p = le + 2;
    while (p < end + 2) {
        const char *e = memmem(p, (size_t)(end + 2 - p), "\r\n", 2);
        if (!e)
            return -EPROTO;
        int r = parse_header_line(p, (size_t)(e - p), h);
        if (r < 0)
            return r;
        p = e + 2;
    }
    return 0;
}

const char *wsc_handshake_check(const struct wsc_http_head *h, const char *want_accept,
                                const char *want_proto)
{
    if (h->status != 101)
        return "upgrade refused (status is not 101)";
    if (!h->upgrade_websocket)
        return "101 without Upgrade: websocket";
    if (!h->conn_upgrade)
        return "101 without Connection: upgrade";
    if (strcmp(h->accept, want_accept) != 0)
        return "wrong Sec-WebSocket-Accept";
    if (want_proto && strcmp(h->protocol, want_proto) != 0)
        return "server did not select the subprotocol";
    return NULL;
}

int wsc_frame_parse(const unsigned char *buf, size_t avail, struct wsc_frame *f)
{
    if (avail < 2)
        return -EAGAIN;
    unsigned b0 = buf[0], b1 = buf[1];
    if (b0 & 0x70) /* RSV1-3: no extension was negotiated */
        return -EPROTO;
    int op = (int)(b0 & 0x0f);
    if (op != WSC_OP_CONT && op != WSC_OP_TEXT && op != WSC_OP_BINARY && op != WSC_OP_CLOSE &&
        op != WSC_OP_PING && op != WSC_OP_PONG)
        return -EPROTO;
    size_t hl = 2;
    uint64_t len = b1 & 0x7f;
    if (len == 126) {
        if (avail < 4)
            return -EAGAIN;
        len = (uint64_t)buf[2] << 8 | buf[3];
        hl = 4;
    } else if (len == 127) {
        if (avail < 10)
            return -EAGAIN;
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | buf[2 + i];
        if (len >> 63)
            return -EPROTO;
        hl = 10;
    }
    bool masked = b1 & 0x80;
    if (masked)
        hl += 4;
    if (avail < hl)
        return -EAGAIN;
    bool fin = b0 & 0x80;
    if ((op & 0x8) && (!fin || len > 125))
        return -EPROTO;
    *f = (struct wsc_frame){.fin = fin, .masked = masked, .opcode = op, .len = len, .hdr_len = hl};
    return 0;
}

size_t wsc_client_hdr_len(uint64_t len)
{
    return len < 126 ? 6 : len <= 0xffff ? 8 : 14;
}

void wsc_mask(unsigned char *p, size_t len, uint32_t mask, size_t phase)
{
    unsigned char m[4] = {(unsigned char)(mask >> 24), (unsigned char)(mask >> 16),
                          (unsigned char)(mask >> 8), (unsigned char)mask};
    unsigned char m8[8];
    for (size_t i = 0; i < 8; i++)
        m8[i] = m[(phase + i) & 3];
    uint64_t w8;
    memcpy(&w8, m8, 8);
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        w ^= w8;
        memcpy(p + i, &w, 8);
    }
    for (; i < len; i++)
        p[i] ^= m8[i & 7];
}

size_t wsc_client_frame_finish(unsigned char *frame, int opcode, uint64_t len, uint32_t mask)
{
    size_t hl = wsc_client_hdr_len(len);
    frame[0] = (unsigned char)(0x80 | (opcode & 0x0f));
    if (len < 126) {
        frame[1] = (unsigned char)(0x80 | len);
    } else if (len <= 0xffff) {
        frame[1] = 0x80 | 126;
        frame[2] = (unsigned char)(len >> 8);
        frame[3] = (unsigned char)len;
    } else {
        frame[1] = 0x80 | 127;
        for (int i = 0; i < 8; i++)
            frame[2 + i] = (unsigned char)(len >> (56 - 8 * i));
    }
    frame[hl - 4] = (unsigned char)(mask >> 24);
    frame[hl - 3] = (unsigned char)(mask >> 16);
    frame[hl - 2] = (unsigned char)(mask >> 8);
    frame[hl - 1] = (unsigned char)mask;
    wsc_mask(frame + hl, (size_t)len, mask, 0);
    return hl + (size_t)len;
}

static bool is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

const char *wsc_json_find(const char *p, const char *end, const char *key, size_t keylen)
{
    char needle[66];
    if (keylen + 2 > sizeof(needle) || p >= end)
        return NULL;
    needle[0] = '"';
    memcpy(needle + 1, key, keylen);
    needle[keylen + 1] = '"';
    size_t nl = keylen + 2;
    while (p < end) {
        const char *q = memmem(p, (size_t)(end - p), needle, nl);
        if (!q)
            return NULL;
        const char *r = q + nl;
        while (r < end && is_blank(*r))
            r++;
        if (r < end && *r == ':') {
            r++;
            while (r < end && is_blank(*r))
                r++;
            return r < end ? r : NULL;
        }
        p = q + 1;
    }
    return NULL;
}

int wsc_json_int(const char *p, const char *end, long long *out)
{
    bool neg = false;
    if (p < end && *p == '-') {
        neg = true;
        p++;
    }
    if (p >= end || *p < '0' || *p > '9')
        return -EINVAL;
    unsigned long long v = 0;
    for (; p < end && *p >= '0' && *p <= '9'; p++) {
        if (v > (unsigned long long)(9223372036854775807LL - 9) / 10)
            return -EINVAL;
        v = v * 10 + (unsigned)(*p - '0');
    }
    *out = neg ? -(long long)v : (long long)v;
    return 0;
}

long wsc_json_str(const char *p, const char *end, const char **s)
{
    if (p >= end || *p != '"')
        return -1;
    for (const char *q = p + 1; q < end; q++) {
        if (*q == '\\') {
            q++;
            continue;
        }
        if (*q == '"') {
            *s = p + 1;
            return (long)(q - p - 1);
        }
    }
    return -1;
}

size_t wsc_u64toa(uint64_t v, char *out)
{
    char tmp[21];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

/* ---- self-test ---- */

static int st_fail;

static void st_check(bool ok, const char *what, int line)
{
    if (!ok) {
        fprintf(stderr, "selftest: FAIL line %d: %s\n", line, what);
        st_fail++;
    }
}
#define CHECK(cond) st_check((cond), #cond, __LINE__)

static void st_codec(void)
{
    char out[64];
    CHECK(wsc_base64((const unsigned char *)"", 0, out) == 0 && strcmp(out, "") == 0);
    wsc_base64((const unsigned char *)"f", 1, out);
    CHECK(strcmp(out, "Zg==") == 0);
    wsc_base64((const unsigned char *)"fo", 2, out);
    CHECK(strcmp(out, "Zm8=") == 0);
    wsc_base64((const unsigned char *)"foobar", 6, out);
    CHECK(strcmp(out, "Zm9vYmFy") == 0);

    char acc[WSC_ACCEPT_LEN + 1];
    /* The worked example of RFC 6455 section 1.3. */
    CHECK(wsc_accept_for_key("dGhlIHNhbXBsZSBub25jZQ==", acc) == 0);
    CHECK(strcmp(acc, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") == 0);

    char num[21];
    CHECK(wsc_u64toa(0, num) == 1 && num[0] == '0');
    CHECK(wsc_u64toa(18446744073709551615ULL, num) == 20 &&
          memcmp(num, "18446744073709551615", 20) == 0);
}

static void st_frames(void)
{
    struct wsc_frame f;
    CHECK(wsc_frame_parse((const unsigned char *)"\x81\x05Hello", 7, &f) == 0);
    CHECK(f.fin && f.opcode == WSC_OP_TEXT && f.len == 5 && f.hdr_len == 2 && !f.masked);
    CHECK(wsc_frame_parse((const unsigned char *)"\x01\x03Hel", 5, &f) == 0 && !f.fin);
    CHECK(wsc_frame_parse((const unsigned char *)"\x81", 1, &f) == -EAGAIN);
    CHECK(wsc_frame_parse((const unsigned char *)"\x81\x7e\x01", 3, &f) == -EAGAIN);
    CHECK(wsc_frame_parse((const unsigned char *)"\x81\x7e\x01\x00", 4, &f) == 0 && f.len == 256 &&
          f.hdr_len == 4);
    CHECK(wsc_frame_parse((const unsigned char *)"\x82\x7f\0\0\0\0\0\x01\0\0", 10, &f) == 0 &&
          f.len == 65536 && f.hdr_len == 10 && f.opcode == WSC_OP_BINARY);
    CHECK(wsc_frame_parse((const unsigned char *)"\xc1\x00", 2, &f) == -EPROTO); /* RSV1 */
    CHECK(wsc_frame_parse((const unsigned char *)"\x83\x00", 2, &f) == -EPROTO); /* opcode */
    CHECK(wsc_frame_parse((const unsigned char *)"\x09\x00", 2, &f) == -EPROTO); /* frag ping */
    CHECK(wsc_frame_parse((const unsigned char *)"\x89\x7e\0\x80", 4, &f) == -EPROTO);

    /* RFC 6455 section 5.7: masked "Hello" with key 37 fa 21 3d. */
    unsigned char fr[32];
    memcpy(fr + wsc_client_hdr_len(5), "Hello", 5);
    size_t n = wsc_client_frame_finish(fr, WSC_OP_TEXT, 5, 0x37fa213du);
    CHECK(n == 11 && memcmp(fr, "\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58", 11) == 0);
    CHECK(wsc_frame_parse(fr, n, &f) == 0 && f.masked && f.hdr_len == 6 && f.len == 5);

    /* Longer payloads: 16-bit length, and the word-at-a-time mask agrees with bytewise. */
    static unsigned char big[300], ref[300];
    for (size_t i = 0; i < 200; i++)
        big[8 + i] = ref[i] = (unsigned char)(i * 7);
    n = wsc_client_frame_finish(big, WSC_OP_TEXT, 200, 0x01020304u);
    CHECK(n == 208 && big[1] == (0x80 | 126) && big[2] == 0 && big[3] == 200);
    bool same = true;
    for (size_t i = 0; i < 200; i++)
        same = same && (big[8 + i] ^ ref[i]) == (unsigned char)(i % 4 + 1);
    CHECK(same);
    wsc_mask(big + 8 + 3, 197, 0x01020304u, 3);
    CHECK(memcmp(big + 8 + 3, ref + 3, 197) == 0);
}

static void st_http(void)
{
    struct wsc_http_head h;
    const char *up = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                     "Sec-WebSocket-Protocol: herald.v1\r\n\r\n\x81\x02hi";
    CHECK(wsc_http_parse_head(up, strlen(up), &h) == 0);
    CHECK(h.status == 101 && h.head_len == strlen(up) - 4);
    CHECK(wsc_handshake_check(&h, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "herald.v1") == NULL);
    CHECK(wsc_handshake_check(&h, "xx", "herald.v1") != NULL);
    CHECK(wsc_handshake_check(&h, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "other") != NULL);
    CHECK(wsc_http_parse_head(up, 40, &h) == -EAGAIN);

    /* The subprotocol header is optional (nchan's plain WebSocket subscriber has none). */
    char req[512];
    int rn = wsc_handshake_request(req, sizeof(req), "127.0.0.1:1", "/sub/x", NULL, "k");
    CHECK(rn > 0 && strstr(req, "GET /sub/x HTTP/1.1\r\n") == req &&
          !strstr(req, "Sec-WebSocket-Protocol") && strstr(req, "\r\n\r\n") == req + rn - 4);
    rn = wsc_handshake_request(req, sizeof(req), "127.0.0.1:1", "/mqtt", "mqtt", "k");
    CHECK(rn > 0 && strstr(req, "\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n") == req + rn - 34);
    volatile size_t small = 40; /* hides the truncation from -Wformat-truncation */
    CHECK(wsc_handshake_request(req, small, "127.0.0.1:1", "/mqtt", "mqtt", "k") == -ENOSPC);

    const char *acc = "HTTP/1.1 202 Accepted\r\ncontent-length: 12\r\nConnection: close\r\n\r\n";
    CHECK(wsc_http_parse_head(acc, strlen(acc), &h) == 0);
    CHECK(h.status == 202 && h.content_length == 12 && h.conn_close);
    CHECK(wsc_handshake_check(&h, "", NULL) != NULL);
    const char *bad = "HTTX/1.1 200 OK\r\n\r\n";
    CHECK(wsc_http_parse_head(bad, strlen(bad), &h) == -EPROTO);
    const char *badcl = "HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n";
    CHECK(wsc_http_parse_head(badcl, strlen(badcl), &h) == -EPROTO);
    static char huge[WSC_MAX_HTTP_HEAD + 10];
    memset(huge, 'a', sizeof(huge));
    CHECK(wsc_http_parse_head(huge, sizeof(huge), &h) == -EMSGSIZE);
}

static void st_json(void)
{
    const char *j = "{\"type\":\"event\",\"topic\":\"s\",\"data\": {\"p\":\"xx\",\"s\" : 12,"
                    "\"t\":-34}}";
    const char *end = j + strlen(j);
    const char *v = wsc_json_find(j, end, "type", 4);
    const char *s;
    CHECK(v && wsc_json_str(v, end, &s) == 5 && memcmp(s, "event", 5) == 0);
    const char *d = wsc_json_find(j, end, "data", 4);
    CHECK(d && *d == '{');
    long long x = 0;
    v = wsc_json_find(d, end, "s", 1);
    CHECK(v && wsc_json_int(v, end, &x) == 0 && x == 12);
    v = wsc_json_find(d, end, "t", 1);
    CHECK(v && wsc_json_int(v, end, &x) == 0 && x == -34);
    CHECK(wsc_json_find(j, end, "missing", 7) == NULL);
    CHECK(wsc_json_int("abc", "abc" + 3, &x) == -EINVAL);
    CHECK(wsc_json_int("99999999999999999999", "99999999999999999999" + 20, &x) == -EINVAL);
    const char *esc = "\"a\\\"b\"";
    CHECK(wsc_json_str(esc, esc + strlen(esc), &s) == 4);
    CHECK(wsc_json_str("\"abc", "\"abc" + 4, &s) == -1);
}

int wsc_selftest(void)
{
    st_fail = 0;
    st_codec();
    st_frames();
    st_http();
    st_json();
    return st_fail;
}
