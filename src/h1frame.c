/* SPDX-License-Identifier: MIT */
/*
 * HTTP/1.1 request framing (RFC 9112), as a state machine fed one byte at a time (head_byte) so
 * that a request split across reads is checked the same as one read whole; plain_run takes the
 * usual parts of a head in runs, to the same effect. It checks only what decides where a request
 * ends or what lws 4.1 cannot parse: methods, the request target, header syntax, the head's
 * size, Content-Length and Transfer-Encoding. The meaning of a request stays api.c's.
 */
#include "h1frame.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

/* Where in the head the next byte goes. */
enum part {
    P_START, /* before the method (empty lines are skipped, RFC 9112 2.2) */
    P_METHOD,
    P_TARGET0, /* the target's first byte */
    P_SCHEME,  /* absolute form: "http://" or "https://" */
    P_AUTHORITY,
    P_TARGET,
    P_VERSION,
    P_LINE_LF, /* CR seen after the request line */
    P_NAME0,   /* a header line's first byte, or the empty line */
    P_NAME,
    P_VALUE,
    P_VALUE_LF,
    P_END_LF,
};

enum tracked { T_OTHER, T_CL, T_TE, T_UPGRADE };

/* Methods something in Herald answers; api.c answers 405 for the ones a path does not. */
static const struct {
    uint8_t len;
    char name[8];
} known_methods[] = {{3, "GET"},   {4, "HEAD"},   {4, "POST"},   {3, "PUT"},
                     {5, "PATCH"}, {6, "DELETE"}, {7, "OPTIONS"}};
#define ALLOW_ANY "GET, HEAD, POST, OPTIONS"

/* RFC 9110 5.6.2 token characters: methods and header names. */
static const bool token[256] = {
    ['0' ... '9'] = 1, ['A' ... 'Z'] = 1, ['a' ... 'z'] = 1, ['!'] = 1, ['#'] = 1, ['$'] = 1,
    ['%'] = 1,         ['&'] = 1,         ['\''] = 1,        ['*'] = 1, ['+'] = 1, ['-'] = 1,
    ['.'] = 1,         ['^'] = 1,         ['_'] = 1,         ['`'] = 1, ['|'] = 1, ['~'] = 1};

/* A header value's bytes (RFC 9110 5.5): any but the control characters other than HTAB. */
static const bool field_byte[256] = {['\t'] = 1, [0x20 ... 0x7e] = 1, [0x80 ... 0xff] = 1};

/* Request target bytes that need no attention: all but space, control characters, and the
 * '%' of an escape and '?', '&', ';' that start and separate query parameters. */
static const bool target_plain[256] = {[0x21 ... 0x24] = 1,
                                       [0x27 ... 0x3a] = 1,
                                       [0x3c ... 0x3e] = 1,
                                       [0x40 ... 0x7e] = 1,
                                       [0x80 ... 0xff] = 1};

/* Where the run of bytes of class cls that starts at s[k] ends (at most lim); four at a time
 * while it lasts, the usual runs being names and values of a few dozen bytes. */
static inline size_t span(const bool cls[256], const unsigned char *s, size_t k, size_t lim)
{
    while (lim - k >= 4 && (cls[s[k]] & cls[s[k + 1]] & cls[s[k + 2]] & cls[s[k + 3]]))
        k += 4;
    while (k < lim && cls[s[k]])
        k++;
    return k;
}

/* As span(field_byte, ...), eight bytes at a time while none of them is below 0x20 or 0x7f
 * (a word-wide test: the "haszero" bit trick, exact for whether any byte is below n <= 128).
 * A value with a tab goes on a byte at a time. */
static inline size_t value_span(const unsigned char *s, size_t k, size_t lim)
{
    const uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;
    while (lim - k >= 8) {
        uint64_t x;
        memcpy(&x, s + k, 8);
        uint64_t del = x ^ (0x7f * ones);
        if (((x - 0x20 * ones) & ~x & highs) | ((del - ones) & ~del & highs))
            break;
        k += 8;
    }
    return span(field_byte, s, k, lim);
}

static bool tchar(unsigned char c)
{
    return token[c];
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static enum hd_h1_verdict refuse(struct hd_h1 *h, struct hd_h1_refusal *ref, int status,
                                 enum hd_err code, const char *message)
{
    h->state = H1_REFUSED;
    ref->status = status;
    ref->code = code;
    ref->allow = NULL;
    snprintf(ref->message, sizeof(ref->message), "%s", message);
    return H1_REFUSE;
}

static bool method_known(const struct hd_h1 *h)
{
    for (size_t i = 0; i < sizeof(known_methods) / sizeof(known_methods[0]); i++)
        /* h->method is zero past method_len (a request's state starts all zero): one 8-byte
         * comparison */
        if (known_methods[i].len == h->method_len &&
            memcmp(known_methods[i].name, h->method, sizeof(known_methods[i].name)) == 0)
            return true;
    return false;
}

/* A head that may have a body (not both Content-Length and Transfer-Encoding) is complete:
 * where does the body end? */
static void head_framed(struct hd_h1 *h, const struct hd_h1_opts *o)
{
    if (h->websocket) {
        h->state = H1_WS; /* frames from here on (a refused upgrade closes) */
        h->body_left = 0;
    } else if (h->upgrade) {
        h->state = H1_PASS; /* another protocol: lws's to frame */
    } else if (h->te) {
        h->state = o->chunked ? H1_PASS : H1_DISCARD; /* see hd_h1_opts.chunked */
    } else if (h->cl > 0) {
        h->body_left = (uint64_t)h->cl;
        h->state = H1_BODY;
    } else {
        h->state = H1_AWAIT;
    }
}

/* The head is complete: where does the body end? */
static enum hd_h1_verdict head_done(struct hd_h1 *h, const struct hd_h1_opts *o,
                                    struct hd_h1_refusal *ref)
{
    if (h->te && h->cl_seen)
        /* RFC 9112 6.3: a request with both is a smuggling attempt or a broken proxy. */
        return refuse(h, ref, 400, HD_ERR_BAD_REQUEST,
                      "a request may not have both Content-Length and Transfer-Encoding");
    head_framed(h, o);
    return H1_OK;
}

static enum hd_h1_verdict header_done(struct hd_h1 *h, struct hd_h1_refusal *ref)
{
    switch ((enum tracked)h->hdr) {
    case T_CL:
        if (!h->cl_digit)
            return refuse(h, ref, 400, HD_ERR_BAD_REQUEST,
                          "Content-Length must be a number of bytes (digits only)");
        if (h->cl_seen && h->cl != h->cl_value)
            return refuse(h, ref, 400, HD_ERR_BAD_REQUEST,
                          "two Content-Length headers with different values");
        h->cl = h->cl_value;
        h->cl_seen = true;
        break;
    case T_TE:
        h->te = true;
        break;
    case T_UPGRADE:
        h->upgrade = true;
        break;
    case T_OTHER:
        break;
    }
    h->hdr = T_OTHER;
    h->part = P_NAME0;
    return H1_OK;
}

/* A header name ended (with its ':', counted): which header is it (name and len, borrowed: all
 * of it, or the first sizeof(h->name) bytes and its length), and its value follows. */
static void name_known(struct hd_h1 *h, const char *name, size_t len)
{
    h->hdr = T_OTHER;
    if (len == 14 && strncasecmp(name, "content-length", 14) == 0)
        h->hdr = T_CL;
    else if (len == 17 && strncasecmp(name, "transfer-encoding", 17) == 0)
        h->hdr = T_TE;
    else if (len == 7 && strncasecmp(name, "upgrade", 7) == 0)
        h->hdr = T_UPGRADE;
    h->cl_value = 0;
    h->cl_digit = h->cl_end = false;
    h->part = P_VALUE;
}

static enum hd_h1_verdict name_done(struct hd_h1 *h, const struct hd_h1_opts *o,
                                    struct hd_h1_refusal *ref)
{
    if (!h->name_len)
        return refuse(h, ref, 400, HD_ERR_BAD_REQUEST, "a header line without a name");
    if (++h->headers > o->max_headers) {
        char m[100];
        snprintf(m, sizeof(m), "more than %u header lines", o->max_headers);
        return refuse(h, ref, 431, HD_ERR_TOO_LARGE, m);
    }
    name_known(h, h->name, h->name_len);
    return H1_OK;
}

/* One byte of the head. Returns H1_OK (with *emit saying whether lws gets it) or a refusal. */
static enum hd_h1_verdict head_byte(struct hd_h1 *h, const struct hd_h1_opts *o, unsigned char c,
                                    char *out, size_t *w, size_t cap, struct hd_h1_refusal *ref)
{
    char m[160];
    if (++h->head_len > o->max_head_bytes) {
        bool line = h->part <= P_LINE_LF;
        snprintf(m, sizeof(m), "the request %s longer than limits.max_header_bytes (%u bytes)",
                 line ? "line is" : "headers are", o->max_head_bytes);
        return refuse(h, ref, line ? 414 : 431, HD_ERR_TOO_LARGE, m);
    }
    switch ((enum part)h->part) {
    case P_START:
        if (c == '\r' || c == '\n')
            return H1_OK; /* not given to lws: it would take the empty line as a method */
        h->part = P_METHOD;
        /* fall through */
    case P_METHOD:
        if (c == ' ') {
            if (!h->method_len)
                return refuse(h, ref, 400, HD_ERR_BAD_REQUEST, "a request line without a method");
            if (!method_known(h)) {
                snprintf(m, sizeof(m), "the %.*s method is not served here", h->method_len,
                         h->method);
                refuse(h, ref, 405, HD_ERR_METHOD_NOT_ALLOWED, m);
                ref->allow = ALLOW_ANY;
                return H1_REFUSE;
            }
            h->part = P_TARGET0;
            break;
        }
        if (!tchar(c))
            return refuse(h, ref, 400, HD_ERR_BAD_REQUEST, "not an HTTP request line");
        if (h->method_len < sizeof(h->method))
            h->method[h->method_len] = (char)c;
        if (h->method_len < 255)
            h->method_len++;
        break;
    case P_TARGET0:
        if (c == '/') {
            h->part = P_TARGET;
            break;
        }
        if (c == 'h' || c == 'H') {
            h->absolute = true;
            h->abs_len = 1;
            h->part = P_SCHEME;
            return H1_OK; /* the scheme and authority are not lws's to see */
        }
        return refuse(h, ref, 400, HD_ERR_BAD_REQUEST,
                      "the request target must be a path, or an absolute http:// URI");
    case P_SCHEME: {
        static const char http[] = "http://", https[] = "https://";
        size_t i = h->abs_len++;
        unsigned char lc = (unsigned char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
        if (i == 4 && lc == 's') {
            h->pct = 1; /* https: one more byte before "://" */
            return H1_OK;
        }
        const char *want = h->pct ? https : http;
        if (i >= strlen(want) || lc != (unsigned char)want[i])
            return refuse(h, ref, 400, HD_ERR_BAD_REQUEST,
                          "the request target must be a path, or an absolute http:// URI");
        if (i + 1 == strlen(want)) {
            h->pct = 0;
            h->part = P_AUTHORITY;
        }
        return H1_OK;
    }
    case P_AUTHORITY:
        if (c == '/' || c == '?' || c == ' ') {
            /* The path begins (RFC 9112 3.2.2: the Host header is ignored). */
            if (*w + 2 > cap)
                return refuse(h, ref, 400, HD_ERR_BAD_REQUEST, "request too long to rewrite");
            out[(*w)++] = '/';
            h->part = P_TARGET;
            if (c == '/')
                return H1_OK;
            return head_byte(h, o, c, out, w, cap, ref); /* the '?' or ' ': part of the path */
        }
        if (c <= 0x20 || c >= 0x7f)
            return refuse(h, ref, 400, HD_ERR_BAD_REQUEST,
                          "a control character or NUL in the request target");
        return H1_OK;
    case P_TARGET:
        if (c == ' ') {
            if (h->pct)
                return refuse(h, ref, 400, HD_ERR_BAD_REQUEST,
                              "bad percent-encoding in the request target");
            h->part = P_VERSION;
            break;
        }
        if (c < 0x20 || c == 0x7f)
            return refuse(h, ref, 400, HD_ERR_BAD_REQUEST,
                          "a control character or NUL in the request target");
        if (h->pct) {
            /* pct: 1 after '%', 2 after "%<hex>", 3 after "%0" */
            if (hexval(c) < 0)
                return refuse(h, ref, 400, HD_ERR_BAD_REQUEST,
                              "bad percent-encoding in the request target");
            if (h->pct == 1) {
                h->pct = c == '0' ? 3 : 2;
            } else {
                if (h->pct == 3 && c == '0')
                    return refuse(h, ref, 400, HD_ERR_BAD_REQUEST,
                                  "%00 (NUL) in the request target");
                h->pct = 0;
            }
            break;
        }
        if (c == '%') {
            h->pct = 1;
        } else if (c == '?' && !h->in_query) {
            h->in_query = true;
            h->params = 1;
        } else if (h->in_query && (c == '&' || c == ';') && ++h->params > o->max_params) {
            snprintf(m, sizeof(m), "more than %u query parameters", o->max_params);
            return refuse(h, ref, 400, HD_ERR_BAD_REQUEST, m);
        }
        break;
    case P_VERSION:
        if (c == '\r' || c == '\n') {
            if (h->version_len != 8 ||
                (memcmp(h->version, "HTTP/1.1", 8) != 0 && memcmp(h->version, "HTTP/1.0", 8) != 0))
                return refuse(h, ref, 400, HD_ERR_BAD_REQUEST,
                              "only HTTP/1.0 and HTTP/1.1 requests are served");
            h->part = c == '\r' ? P_LINE_LF : P_NAME0;
            break;
        }
        if (h->version_len >= 8)
            return refuse(h, ref, 400, HD_ERR_BAD_REQUEST,
                          "only HTTP/1.0 and HTTP/1.1 requests are served");
        h->version[h->version_len++] = (char)c;
        break;
    case P_LINE_LF:
        if (c != '\n')
            return refuse(h, ref, 400, HD_ERR_BAD_REQUEST, "a CR without LF");
        h->part = P_NAME0;
        break;
    case P_NAME0:
        if (c == '\r') {
            h->part = P_END_LF;
            break;
        }
        if (c == '\n') {
            out[(*w)++] = (char)c;
            return head_done(h, o, ref);
        }
        if (c == ' ' || c == '\t')
            /* RFC 9112 5.2: obsolete line folding is refused. */
            return refuse(h, ref, 400, HD_ERR_BAD_REQUEST, "folded header lines are refused");
        h->name_len = 0;
        h->part = P_NAME;
        /* fall through */
    case P_NAME:
        if (c == ':') {
            out[(*w)++] = (char)c;
            return name_done(h, o, ref);
        }
        if (!tchar(c))
            return refuse(h, ref, 400, HD_ERR_BAD_REQUEST,
                          "a header name with a space, control character or NUL");
        if (h->name_len < sizeof(h->name))
            h->name[h->name_len] = (char)c;
        if (h->name_len < 255)
            h->name_len++;
        break;
    case P_VALUE:
        if (c == '\r') {
            h->part = P_VALUE_LF;
            break;
        }
        if (c == '\n') {
            out[(*w)++] = (char)c;
            return header_done(h, ref);
        }
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return refuse(h, ref, 400, HD_ERR_BAD_REQUEST,
                          "a control character or NUL in a header value");
        if (h->hdr == T_UPGRADE && !h->websocket) {
            static const char ws[] = "websocket";
            unsigned char lc = (unsigned char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
            h->ws_match = lc == (unsigned char)ws[h->ws_match] ? h->ws_match + 1 : lc == 'w';
            h->websocket = h->ws_match == 9;
        }
        if (h->hdr == T_CL) {
            if (c == ' ' || c == '\t') {
                if (h->cl_digit)
                    h->cl_end = true;
            } else if (c >= '0' && c <= '9' && !h->cl_end) {
                h->cl_digit = true;
                if (h->cl_value > 99999999999999) /* 15 digits: far above any body limit */
                    return refuse(h, ref, 413, HD_ERR_TOO_LARGE,
                                  "the Content-Length is larger than allowed");
                h->cl_value = h->cl_value * 10 + (c - '0');
            } else {
                return refuse(h, ref, 400, HD_ERR_BAD_REQUEST,
                              "Content-Length must be a number of bytes (digits only)");
            }
        }
        break;
    case P_VALUE_LF:
        if (c != '\n')
            return refuse(h, ref, 400, HD_ERR_BAD_REQUEST, "a CR without LF");
        out[(*w)++] = (char)c;
        return header_done(h, ref);
    case P_END_LF:
        if (c != '\n')
            return refuse(h, ref, 400, HD_ERR_BAD_REQUEST, "a CR without LF");
        out[(*w)++] = (char)c;
        return head_done(h, o, ref);
    }
    out[(*w)++] = (char)c;
    return H1_OK;
}

/* One byte of a WebSocket frame header from the client. */
static enum hd_h1_verdict ws_header_byte(struct hd_h1 *h, unsigned char c,
                                         struct hd_h1_refusal *ref)
{
    switch (h->ws_pos++) {
    case 0:
        h->ws_b0 = c;
        return H1_OK;
    case 1:
        h->ws_b1 = c;
        if (!(c & 0x80)) {
            /* RFC 6455 5.1: the server MUST close on an unmasked frame from a client. */
            h->state = H1_REFUSED;
            ref->status = 1002;
            snprintf(ref->message, sizeof(ref->message), "client frames must be masked");
            return H1_WS_CLOSE;
        }
        h->ws_need = (uint8_t)(2 + ((c & 0x7f) == 126 ? 2 : (c & 0x7f) == 127 ? 8 : 0) + 4);
        h->body_left = c & 0x7f;
        if (h->body_left >= 126)
            h->body_left = 0;
        break;
    default:
        if (h->ws_pos <= h->ws_need - 4) /* an extended length, most significant byte first */
            h->body_left = h->body_left << 8 | c;
        break;
    }
    if (h->ws_pos == h->ws_need)
        h->ws_pos = 0; /* the payload follows */
    return H1_OK;
}

enum hd_h1_verdict hd_h1_ws_scan(struct hd_h1 *h, const char *p, size_t n, size_t *ok,
                                 struct hd_h1_refusal *ref)
{
    size_t i = 0;
    while (i < n) {
        if (h->ws_pos == 0 && h->body_left) {
            size_t take = n - i < h->body_left ? n - i : (size_t)h->body_left;
            i += take;
            h->body_left -= take;
            continue;
        }
        if (h->ws_pos == 0 && n - i >= 2 && (p[i + 1] & 0x80)) {
            /* A masked frame's whole header in this read (the usual case): taken at once. */
            unsigned char b1 = (unsigned char)p[i + 1];
            size_t ext = (b1 & 0x7f) == 126 ? 2 : (b1 & 0x7f) == 127 ? 8 : 0;
            if (n - i >= 2 + ext + 4) {
                uint64_t len = ext ? 0 : b1 & 0x7f;
                for (size_t j = 0; j < ext; j++)
                    len = len << 8 | (unsigned char)p[i + 2 + j];
                h->ws_b0 = (uint8_t)p[i];
                h->ws_b1 = b1;
                h->ws_need = (uint8_t)(2 + ext + 4);
                h->body_left = len;
                i += 2 + ext + 4;
                continue;
            }
        }
        enum hd_h1_verdict v = ws_header_byte(h, (unsigned char)p[i], ref);
        if (v != H1_OK) {
            *ok = i;
            return v;
        }
        i++;
    }
    *ok = i;
    return H1_OK;
}

void hd_h1_took_body(struct hd_h1 *h, size_t n)
{
    h->body_left -= n < h->body_left ? n : h->body_left;
    if (!h->body_left)
        h->state = H1_AWAIT;
}

/* Notes n bytes of a method or header name (token bytes) in buf, as far as it has room. */
static void note_token(char *buf, size_t size, uint8_t *len, const unsigned char *s, size_t n)
{
    if (*len < size)
        memcpy(buf + *len, s, n < size - *len ? n : size - *len);
    *len = (uint8_t)(*len + n < 255 ? *len + n : 255);
}

/*
 * Reads Content-Length value bytes from s[*k] up to lim as head_byte does (digits, and blanks
 * around them), stopping at any other byte. False when head_byte must refuse the byte at *k.
 */
static bool cl_digits(struct hd_h1 *h, const unsigned char *s, size_t lim, size_t *k)
{
    for (; *k < lim; (*k)++) {
        unsigned char c = s[*k];
        if (c == ' ' || c == '\t') {
            if (h->cl_digit)
                h->cl_end = true;
        } else if (c >= '0' && c <= '9' && !h->cl_end) {
            if (h->cl_value > 99999999999999)
                return false;
            h->cl_digit = true;
            h->cl_value = h->cl_value * 10 + (c - '0');
        } else {
            break;
        }
    }
    return true;
}

/*
 * How many bytes at the start of s need nothing but copying to lws, with the state they leave:
 * the usual parts of a head, taken a run at a time with one table look-up per byte (a known
 * method, an origin-form target, the version, header names, Content-Length digits, other
 * headers' values, the CRLFs and colons between them and the empty line). Whatever else needs
 * a decision (a '%' escape, an absolute URI, the Upgrade and Transfer-Encoding values, a bare
 * LF, and every error) stops the run and goes to head_byte, which has the last word on every
 * refusal: the run only takes what head_byte would take without one. It also stops before the
 * byte that would pass max_head_bytes, so head_byte refuses that one. tests/fuzz/fuzz_h1frame.c
 * holds the two paths to the byte-at-a-time original.
 */
static size_t plain_run(struct hd_h1 *h, const struct hd_h1_opts *o, const unsigned char *s,
                        size_t n)
{
    size_t left = o->max_head_bytes > h->head_len ? o->max_head_bytes - h->head_len : 0;
    size_t lim = n < left ? n : left, k = 0;
    for (;;) {
        size_t b = k;
        switch ((enum part)h->part) {
        case P_START:
            if (k == lim || !token[s[k]])
                goto out;
            h->part = P_METHOD;
            /* fall through */
        case P_METHOD:
            k = span(token, s, k, lim);
            note_token(h->method, sizeof(h->method), &h->method_len, s + b, k - b);
            if (k == lim || s[k] != ' ' || !h->method_len || !method_known(h))
                goto out; /* head_byte refuses it, or the method goes on in the next read */
            k++;
            h->part = P_TARGET0;
            break;
        case P_TARGET0:
            if (k == lim || s[k] != '/')
                goto out;
            k++;
            h->part = P_TARGET;
            /* fall through */
        case P_TARGET:
            if (h->pct)
                goto out;
            k = span(target_plain, s, k, lim);
            if (k == lim)
                goto out;
            if (s[k] == ' ') {
                k++;
                h->part = P_VERSION;
                break;
            }
            if (s[k] == '?') {
                if (!h->in_query)
                    h->params = 1;
                h->in_query = true;
                k++;
                break;
            }
            if ((s[k] == '&' || s[k] == ';') && (!h->in_query || h->params < o->max_params)) {
                h->params += h->in_query;
                k++;
                break;
            }
            goto out;
        case P_VERSION:
            if (h->version_len || lim - k < 10 ||
                (memcmp(s + k, "HTTP/1.1\r\n", 10) != 0 && memcmp(s + k, "HTTP/1.0\r\n", 10) != 0))
                goto out;
            memcpy(h->version, s + k, 8);
            h->version_len = 8;
            k += 10;
            h->part = P_NAME0;
            /* fall through */
        case P_NAME0:
            if (lim - k >= 2 && s[k] == '\r' && s[k + 1] == '\n' && !(h->te && h->cl_seen)) {
                k += 2; /* the empty line: the head ends */
                head_framed(h, o);
                goto out;
            }
            if (k == lim || !token[s[k]])
                goto out; /* a bare LF ends the head, or an error */
            b = k;
            h->name_len = 0;
            h->part = P_NAME;
            /* fall through */
        case P_NAME:
            k = span(token, s, k, lim);
            if (k < lim && s[k] == ':' && !h->name_len && k > b && h->headers < o->max_headers) {
                /* the whole name is in this read: no need to keep it */
                h->headers++;
                name_known(h, (const char *)s + b, k - b);
                k++;
                break;
            }
            note_token(h->name, sizeof(h->name), &h->name_len, s + b, k - b);
            if (k == lim || s[k] != ':' || !h->name_len || h->headers >= o->max_headers)
                goto out; /* head_byte refuses what name_done would */
            k++;
            h->headers++;
            name_known(h, h->name, h->name_len);
            break;
        case P_VALUE:
            if (h->hdr == T_CL) {
                if (!cl_digits(h, s, lim, &k))
                    goto out;
            } else if (h->hdr == T_OTHER) {
                k = value_span(s, k, lim);
            } else {
                goto out;
            }
            if (lim - k < 2 || s[k] != '\r' || s[k + 1] != '\n')
                goto out;
            if (h->hdr == T_CL) {
                if (!h->cl_digit || (h->cl_seen && h->cl != h->cl_value))
                    goto out; /* head_byte refuses it at the LF */
                h->cl = h->cl_value;
                h->cl_seen = true;
                h->hdr = T_OTHER;
            }
            k += 2;
            h->part = P_NAME0; /* header_done */
            break;
        default:
            goto out;
        }
    }
out:
    h->head_len += (uint32_t)k;
    return k;
}

enum hd_h1_verdict hd_h1_feed(struct hd_h1 *h, const struct hd_h1_opts *o, const char *in, size_t n,
                              char *out, size_t cap, size_t *consumed, size_t *out_len,
                              struct hd_h1_refusal *ref)
{
    size_t i = 0, w = 0;
    /* The output outgrows the input by one byte at most (the '/' in place of an absolute
     * URI's authority, whose scheme was in an earlier read): cap > n leaves room for it. */
    while (i < n && w < cap) {
        switch ((enum hd_h1_state)h->state) {
        case H1_HEAD: {
            size_t run =
                plain_run(h, o, (const unsigned char *)in + i, (n - i < cap - w ? n - i : cap - w));
            if (run) {
                memcpy(out + w, in + i, run);
                w += run;
                i += run;
                break;
            }
            enum hd_h1_verdict v = head_byte(h, o, (unsigned char)in[i++], out, &w, cap, ref);
            if (v != H1_OK) {
                *consumed = i;
                *out_len = 0;
                return v;
            }
            break;
        }
        case H1_BODY: {
            size_t take = n - i < cap - w ? n - i : cap - w;
            if (take > h->body_left)
                take = (size_t)h->body_left;
            memcpy(out + w, in + i, take);
            w += take;
            i += take;
            h->body_left -= take;
            if (!h->body_left)
                h->state = H1_AWAIT;
            break;
        }
        case H1_AWAIT:
            /* More before the answer: this lws cannot parse it (hd_h1_opts.pipelining). */
            h->pipelined = true;
            h->state = H1_DISCARD;
            break;
        case H1_DISCARD:
        case H1_REFUSED:
            i = n;
            break;
        case H1_PASS: {
            size_t take = n - i < cap - w ? n - i : cap - w;
            memcpy(out + w, in + i, take);
            w += take;
            i += take;
            break;
        }
        case H1_WS: {
            size_t take = n - i < cap - w ? n - i : cap - w;
            size_t ok = 0;
            enum hd_h1_verdict v = hd_h1_ws_scan(h, in + i, take, &ok, ref);
            memcpy(out + w, in + i, ok);
            w += ok;
            i += ok;
            if (v != H1_OK) {
                *consumed = i + 1;
                *out_len = w; /* the frames before this one are lws's */
                return v;
            }
            break;
        }
        }
        if (h->state == H1_AWAIT && o->pipelining)
            hd_h1_answered(h); /* lws parses the next request itself */
    }
    *consumed = i;
    *out_len = w;
    return H1_OK;
}

void hd_h1_answered(struct hd_h1 *h)
{
    if (h->state == H1_AWAIT)
        memset(h, 0, sizeof(*h));
}
