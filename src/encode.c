/* SPDX-License-Identifier: MIT */
/*
 * The wire protocol's encoders: every reply, error and event frame as JSON text, the event-id
 * format, and the compact dumper that writes event data once for every receiver. Output goes
 * through one small bounded writer so the hot-path event encoder needs no allocation, and
 * every string that may come from a user is escaped and forced to valid UTF-8 on the way out.
 */
#include "json_int.h"
#include "protocol.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- bounded writer ------------------------------------------------------------------- */

/*
 * Two modes. Fixed: writes into caller memory of `cap` bytes, never past it, always leaving
 * room for the NUL, and keeps counting so the caller learns the size needed (snprintf style).
 * Grow: owns a malloc'd buffer that doubles as needed; `oom` latches on the first failure.
 */
struct wr {
    char *p;
    size_t cap;
    size_t n;
    bool grow;
    bool oom;
};

static bool wr_reserve(struct wr *w, size_t more)
{
    if (w->oom)
        return false;
    if (more > SIZE_MAX / 2 - w->n) {
        w->oom = true;
        return false;
    }
    size_t need = w->n + more + 1;
    if (need <= w->cap)
        return true;
    size_t cap = w->cap ? w->cap : 128;
    while (cap < need)
        cap *= 2;
    char *p = realloc(w->p, cap);
    if (!p) {
        w->oom = true;
        return false;
    }
    w->p = p;
    w->cap = cap;
    return true;
}

static void wr_mem_slow(struct wr *w, const void *s, size_t len)
{
    if (w->grow) {
        if (!wr_reserve(w, len))
            return;
        memcpy(w->p + w->n, s, len);
    } else if (w->n + 1 < w->cap) {
        size_t room = w->cap - 1 - w->n;
        memcpy(w->p + w->n, s, len < room ? len : room);
    }
    w->n += len;
}

/* What fits (with the NUL after it) is copied here, inline, in either mode: an encoder writes
 * a dozen short pieces, and a call that checks the mode and the room for each cost more than
 * the copy. */
static inline void wr_mem(struct wr *w, const void *s, size_t len)
{
    if (w->n < w->cap && len < w->cap - w->n) {
        memcpy(w->p + w->n, s, len);
        w->n += len;
        return;
    }
    wr_mem_slow(w, s, len);
}

#define wr_lit(w, s) wr_mem((w), (s), sizeof(s) - 1)

static void wr_str(struct wr *w, const char *s)
{
    wr_mem(w, s, strlen(s));
}

/* The decimal digits of v at the end of buf, two per division (a millisecond time has 13,
 * and each event's is written three times); returns where they start. */
static size_t fmt_u64(char buf[24], uint64_t v)
{
    static const char pairs[] = "00010203040506070809101112131415161718192021222324252627282930"
                                "31323334353637383940414243444546474849505152535455565758596061"
                                "62636465666768697071727374757677787980818283848586878889909192"
                                "93949596979899";
    size_t i = 24;
    while (v >= 100) {
        unsigned d = (unsigned)(v % 100) * 2;
        v /= 100;
        buf[--i] = pairs[d + 1];
        buf[--i] = pairs[d];
    }
    if (v >= 10) {
        buf[--i] = pairs[v * 2 + 1];
        buf[--i] = pairs[v * 2];
    } else {
        buf[--i] = (char)('0' + v);
    }
    return i;
}

/* v as text at the end of buf (with its '-'); returns where it starts. */
static size_t fmt_i64(char buf[24], int64_t v)
{
    if (v >= 0)
        return fmt_u64(buf, (uint64_t)v);
    /* Negate in unsigned arithmetic: -INT64_MIN overflows int64_t. */
    size_t i = fmt_u64(buf, (uint64_t)0 - (uint64_t)v);
    buf[--i] = '-';
    return i;
}

static void wr_u64(struct wr *w, uint64_t v)
{
    char buf[24];
    size_t i = fmt_u64(buf, v);
    wr_mem(w, buf + i, sizeof(buf) - i);
}

static void wr_i64(struct wr *w, int64_t v)
{
    char buf[24];
    size_t i = fmt_i64(buf, v);
    wr_mem(w, buf + i, sizeof(buf) - i);
}

/*
 * Writes the inside of a JSON string. Control characters, quotes and backslashes are escaped;
 * bytes that are not valid UTF-8 become U+FFFD, so the frame is valid JSON whatever the input.
 */
static void wr_jesc(struct wr *w, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    size_t run = 0; /* start of the pending run of bytes that need no escaping */

    for (size_t i = 0; i < len;) {
        i += hd__json_plain_span(u + i, len - i);
        if (i == len)
            break;
        unsigned c = u[i];
        size_t n = 1;
        if (c >= 0x20 && c != '"' && c != '\\' && c < 0x7f) {
            i++;
            continue;
        }
        if (c >= 0x80) {
            n = hd__utf8_seq_len(u + i, len - i);
            if (n) {
                i += n;
                continue;
            }
            n = 1;
        }
        wr_mem(w, s + run, i - run);
        switch (c) {
        case '"':
            wr_lit(w, "\\\"");
            break;
        case '\\':
            wr_lit(w, "\\\\");
            break;
        case '\n':
            wr_lit(w, "\\n");
            break;
        case '\r':
            wr_lit(w, "\\r");
            break;
        case '\t':
            wr_lit(w, "\\t");
            break;
        case '\b':
            wr_lit(w, "\\b");
            break;
        case '\f':
            wr_lit(w, "\\f");
            break;
        default:
            if (c >= 0x80) {
                wr_lit(w, "\\ufffd");
            } else {
                char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
                wr_mem(w, esc, sizeof(esc));
            }
        }
        i += n;
        run = i;
    }
    wr_mem(w, s + run, len - run);
}

static void wr_jstr(struct wr *w, const char *s, size_t len)
{
    wr_lit(w, "\"");
    wr_jesc(w, s, len);
    wr_lit(w, "\"");
}

static void wr_jstr0(struct wr *w, const char *s)
{
    wr_jstr(w, s ? s : "", s ? strlen(s) : 0);
}

static void wr_start(struct wr *w)
{
    *w = (struct wr){.grow = true};
}

/* Finishes a grow-mode writer: the malloc'd text, or NULL (and nothing leaked) on OOM. */
static char *wr_finish(struct wr *w, size_t *len)
{
    if (!wr_reserve(w, 0)) {
        free(w->p);
        return NULL;
    }
    w->p[w->n] = '\0';
    if (len)
        *len = w->n;
    return w->p;
}

/* ---- encoders ------------------------------------------------------------------------- */

/* Writes `{"type":"<type>"` and, when wanted, `,"id":<id>` (or null for WebSocket errors). */
static void wr_head(struct wr *w, const char *type, bool want_id, bool has_id, int64_t id)
{
    wr_lit(w, "{\"type\":\"");
    wr_str(w, type);
    wr_lit(w, "\"");
    if (!want_id)
        return;
    wr_lit(w, ",\"id\":");
    if (has_id)
        wr_i64(w, id);
    else
        wr_lit(w, "null");
}

/*
 * Error frame or HTTP error body; borrows `message` (any bytes: escaped and made valid UTF-8).
 * WebSocket frames always carry "id" (null without one); HTTP bodies never do. NULL on OOM.
 */
char *hd_encode_error(bool ws, bool has_id, int64_t id, enum hd_err code, const char *message,
                      size_t *len)
{
    struct wr w;
    wr_start(&w);
    wr_head(&w, "error", ws, has_id, id);
    wr_lit(&w, ",\"code\":\"");
    wr_str(&w, hd_err_name(code));
    wr_lit(&w, "\",\"message\":");
    wr_jstr0(&w, message);
    wr_lit(&w, "}");
    return wr_finish(&w, len);
}

/* The welcome frame; borrows both strings. NULL on OOM. */
char *hd_encode_welcome(const char *session, const char *version, int heartbeat_s,
                        size_t max_event_bytes, size_t *len)
{
    struct wr w;
    wr_start(&w);
    wr_head(&w, "welcome", false, false, 0);
    wr_lit(&w, ",\"session\":");
    wr_jstr0(&w, session);
    wr_lit(&w, ",\"server\":\"heraldd/");
    wr_jesc(&w, version ? version : "", version ? strlen(version) : 0);
    wr_lit(&w, "\"");
    wr_lit(&w, ",\"heartbeat\":");
    wr_i64(&w, heartbeat_s);
    wr_lit(&w, ",\"max_event_bytes\":");
    wr_u64(&w, max_event_bytes);
    wr_lit(&w, "}");
    return wr_finish(&w, len);
}

/* The reply to subscribe; borrows `pattern`. NULL on OOM. */
char *hd_encode_ok_subscribe(bool has_id, int64_t id, const char *pattern, size_t replayed,
                             bool gap, const char *next, size_t *len)
{
    struct wr w;
    wr_start(&w);
    wr_head(&w, "ok", has_id, has_id, id);
    wr_lit(&w, ",\"topic\":");
    wr_jstr0(&w, pattern);
    wr_lit(&w, ",\"replayed\":");
    wr_u64(&w, replayed);
    if (gap)
        wr_lit(&w, ",\"gap\":true");
    else
        wr_lit(&w, ",\"gap\":false");
    wr_lit(&w, ",\"next\":");
    wr_jstr0(&w, next);
    wr_lit(&w, "}");
    return wr_finish(&w, len);
}

char *hd_encode_gap(const char *pattern, const char *next, size_t *len)
{
    struct wr w;
    wr_start(&w);
    wr_lit(&w, "{\"type\":\"gap\",\"topic\":");
    wr_jstr0(&w, pattern);
    wr_lit(&w, ",\"next\":");
    wr_jstr0(&w, next);
    wr_lit(&w, "}");
    return wr_finish(&w, len);
}

char *hd_encode_unsubscribed(const char *pattern, enum hd_err code, const char *message,
                             size_t *len)
{
    struct wr w;
    wr_start(&w);
    wr_lit(&w, "{\"type\":\"unsubscribed\",\"topic\":");
    wr_jstr0(&w, pattern);
    wr_lit(&w, ",\"code\":");
    wr_jstr0(&w, hd_err_name(code));
    wr_lit(&w, ",\"message\":");
    wr_jstr0(&w, message);
    wr_lit(&w, "}");
    return wr_finish(&w, len);
}

char *hd_encode_ok(bool has_id, int64_t id, size_t *len)
{
    struct wr w;
    wr_start(&w);
    wr_head(&w, "ok", has_id, has_id, id);
    wr_lit(&w, "}");
    return wr_finish(&w, len);
}

/* The reply to a WebSocket publish; borrows `event_id`. NULL on OOM. */
char *hd_encode_ok_publish(bool has_id, int64_t id, const char *event_id, size_t receivers,
                           bool duplicate, size_t *len)
{
    struct wr w;
    wr_start(&w);
    wr_head(&w, "ok", has_id, has_id, id);
    wr_lit(&w, ",\"event_id\":");
    wr_jstr0(&w, event_id);
    wr_lit(&w, ",\"receivers\":");
    wr_u64(&w, receivers);
    if (duplicate)
        wr_lit(&w, ",\"duplicate\":true");
    wr_lit(&w, "}");
    return wr_finish(&w, len);
}

/* The reply to ping. NULL on OOM. */
char *hd_encode_pong(bool has_id, int64_t id, size_t *len)
{
    struct wr w;
    wr_start(&w);
    wr_head(&w, "pong", has_id, has_id, id);
    wr_lit(&w, "}");
    return wr_finish(&w, len);
}

/* The 202 body of an HTTP publish; borrows both strings. NULL on OOM. */
char *hd_encode_publish_reply(const char *event_id, const char *topic, int64_t time_ms,
                              size_t receivers, bool duplicate, size_t *len)
{
    struct wr w;
    wr_start(&w);
    wr_lit(&w, "{\"id\":");
    wr_jstr0(&w, event_id);
    wr_lit(&w, ",\"topic\":");
    wr_jstr0(&w, topic);
    wr_lit(&w, ",\"time\":");
    wr_i64(&w, time_ms);
    wr_lit(&w, ",\"receivers\":");
    wr_u64(&w, receivers);
    if (duplicate)
        wr_lit(&w, ",\"duplicate\":true");
    wr_lit(&w, "}");
    return wr_finish(&w, len);
}

/*
 * Hot path: one pass, no allocation. Borrows everything. topic, event and event_id must already
 * be validated (their grammars exclude anything JSON would escape) and are copied verbatim, as
 * is data_json; a NULL or empty data_json is written as null so the frame stays valid JSON.
 */
size_t hd_encode_event(char *out, size_t cap, const char *topic, const char *event_id,
                       int64_t time_ms, const char *event, const char *data_json, size_t data_len)
{
    static const char head[] = "{\"type\":\"event\",\"topic\":\"", id_key[] = "\",\"id\":\"",
                      time_key[] = "\",\"time\":", event_key[] = ",\"event\":\"",
                      data_key[] = "\",\"data\":";
    char tbuf[24];
    size_t ti = fmt_i64(tbuf, time_ms), tl = sizeof(tbuf) - ti;
    size_t topic_len = strlen(topic), id_len = strlen(event_id), event_len = strlen(event);
    if (!data_json || !data_len) {
        data_json = "null";
        data_len = 4;
    }
    /* Each sizeof counts a NUL: five of them, less the one byte of the closing brace. */
    size_t need = sizeof(head) + sizeof(id_key) + sizeof(time_key) + sizeof(event_key) +
                  sizeof(data_key) - 5 + 1 + topic_len + id_len + tl + event_len + data_len;
    /* The caller measures (out NULL) and then writes: the measure is arithmetic, not a
     * second pass over the pieces. */
    if (!out || !cap)
        return need;
    struct wr w = {.p = out, .cap = cap};
    wr_mem(&w, head, sizeof(head) - 1);
    wr_mem(&w, topic, topic_len);
    wr_mem(&w, id_key, sizeof(id_key) - 1);
    wr_mem(&w, event_id, id_len);
    wr_mem(&w, time_key, sizeof(time_key) - 1);
    wr_mem(&w, tbuf + ti, tl);
    wr_mem(&w, event_key, sizeof(event_key) - 1);
    wr_mem(&w, event, event_len);
    wr_mem(&w, data_key, sizeof(data_key) - 1);
    wr_mem(&w, data_json, data_len);
    wr_lit(&w, "}");
    out[w.n < w.cap ? w.n : w.cap - 1] = '\0';
    return w.n;
}

/* ---- event ids ------------------------------------------------------------------------ */

/* The 8 lowercase hex digits of v into out (no NUL), in a word: the nibbles spread one to a
 * byte (the least significant in the lowest), made digits together, stored most significant
 * first. */
static void hex8(uint32_t v, char *out)
{
    const uint64_t ones = 0x0101010101010101u;
    uint64_t x = v;
    x = (x | x << 16) & 0x0000ffff0000ffffu;
    x = (x | x << 8) & 0x00ff00ff00ff00ffu;
    x = (x | x << 4) & 0x0f0f0f0f0f0f0f0fu;
    /* 10-15 reach bit 4 when 6 is added: those bytes go on from '9' + 1 to 'a' */
    x += '0' * ones + (((x + 6 * ones) >> 4) & ones) * ('a' - '0' - 10);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    x = __builtin_bswap64(x);
#endif
    memcpy(out, &x, 8);
}

/* Writes the 16 lowercase hex digits of `seq` and a NUL into `out`: a word at a time, as a
 * publish writes its id twice. */
void hd_event_id_format(uint64_t seq, char out[HD_EVENT_ID_LEN + 1])
{
    hex8((uint32_t)(seq >> 32), out);
    hex8((uint32_t)seq, out + 8);
    out[HD_EVENT_ID_LEN] = '\0';
}

/*
 * Parses an id made by hd_event_id_format. Only lowercase is accepted: ids are compared as
 * strings, so "00AB..." must not name the same event as "00ab...". Returns 0, or -EINVAL (seq
 * untouched) for NULL or anything but exactly 16 lowercase hex digits.
 */
int hd_event_id_parse(const char *s, uint64_t *seq)
{
    uint64_t v = 0;
    if (!s)
        return -EINVAL;
    for (int i = 0; i < HD_EVENT_ID_LEN; i++) {
        char c = s[i];
        if (c >= '0' && c <= '9')
            v = (v << 4) | (uint64_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v = (v << 4) | (uint64_t)(c - 'a' + 10);
        else
            return -EINVAL; /* also stops at a NUL before 16 digits */
    }
    if (s[HD_EVENT_ID_LEN] != '\0')
        return -EINVAL;
    if (seq)
        *seq = v;
    return 0;
}

/* ---- JSON serialization --------------------------------------------------------------- */

/* Deeper than jansson's parser allows (2048), so any parsed value fits; bounds the recursion. */
#define DUMP_MAX_DEPTH 4096

/*
 * The shortest of %.15g/%.16g/%.17g that reads back as the same double, so 0.1 stays "0.1"
 * (jansson's fixed %.17g would publish 0.10000000000000001). Assumes the C numeric locale,
 * which the daemon never changes; a ',' decimal separator is still mapped back to '.'.
 */
static void wr_real(struct wr *w, double v)
{
    char buf[40];
    int n = 0;
    if (!isfinite(v)) { /* jansson cannot hold these; write null rather than invalid JSON */
        wr_lit(w, "null");
        return;
    }
    for (int prec = 15; prec <= 17; prec++) {
        n = snprintf(buf, sizeof(buf), "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    if (n < 0 || (size_t)n >= sizeof(buf)) {
        wr_lit(w, "null");
        return;
    }
    bool looks_real = false;
    for (int i = 0; i < n; i++) {
        if (buf[i] == ',')
            buf[i] = '.';
        if (buf[i] == '.' || buf[i] == 'e')
            looks_real = true;
    }
    wr_mem(w, buf, (size_t)n);
    if (!looks_real)
        wr_lit(w, ".0"); /* keep it a real: 1.0 must not come back as the integer 1 */
}

static bool dump(struct wr *w, const json_t *v, int depth)
{
    if (depth > DUMP_MAX_DEPTH)
        return false;
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        bool first = true;
        wr_lit(w, "{");
        for (void *it = json_object_iter((json_t *)v); it;
             it = json_object_iter_next((json_t *)v, it)) {
            if (!first)
                wr_lit(w, ",");
            first = false;
            wr_jstr(w, json_object_iter_key(it), json_object_iter_key_len(it));
            wr_lit(w, ":");
            if (!dump(w, json_object_iter_value(it), depth + 1))
                return false;
        }
        wr_lit(w, "}");
        return true;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(v);
        wr_lit(w, "[");
        for (size_t i = 0; i < n; i++) {
            if (i)
                wr_lit(w, ",");
            if (!dump(w, json_array_get(v, i), depth + 1))
                return false;
        }
        wr_lit(w, "]");
        return true;
    }
    case JSON_STRING:
        wr_jstr(w, json_string_value(v), json_string_length(v));
        return true;
    case JSON_INTEGER:
        wr_i64(w, (int64_t)json_integer_value(v));
        return true;
    case JSON_REAL:
        wr_real(w, json_real_value(v));
        return true;
    case JSON_TRUE:
        wr_lit(w, "true");
        return true;
    case JSON_FALSE:
        wr_lit(w, "false");
        return true;
    case JSON_NULL:
        wr_lit(w, "null");
        return true;
    }
    return false;
}

/*
 * Compact serialization of any JSON value (borrowed), byte-compatible with
 * json_dumps(JSON_COMPACT | JSON_ENCODE_ANY) except that reals use the shortest exact form.
 * Own code rather than json_dumps only for that. Returns malloc'd text (length in *len), or
 * NULL on OOM, for a NULL value, or for nesting deeper than DUMP_MAX_DEPTH.
 */
char *hd_json_dump_compact(const json_t *data, size_t *len)
{
    struct wr w;
    if (!data)
        return NULL;
    wr_start(&w);
    if (!dump(&w, data, 0)) {
        free(w.p);
        return NULL;
    }
    return wr_finish(&w, len);
}
