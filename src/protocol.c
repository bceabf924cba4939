/* SPDX-License-Identifier: MIT */
/*
 * The wire protocol's data layer: parses WebSocket command frames into struct hd_cmd and
 * encodes every reply, error and event frame as JSON text. It owns the error-code table and
 * the event-id format; it knows nothing about connections, subscriptions or history. Output is
 * written by one small bounded writer so the hot-path event encoder needs no allocation, and
 * every string that may come from a user is escaped and forced to valid UTF-8 on the way out.
 */
#include "protocol.h"

#include "topic.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- error codes ---------------------------------------------------------------------- */

static const struct {
    const char *name;
    int http;
} err_table[HD_ERR__COUNT] = {
    [HD_ERR_NONE] = {"internal", 500}, /* not an error; reported as internal if ever sent */
    [HD_ERR_BAD_REQUEST] = {"bad_request", 400},
    [HD_ERR_INVALID_TOPIC] = {"invalid_topic", 400},
    [HD_ERR_UNKNOWN_OP] = {"unknown_op", 400},
    [HD_ERR_UNAUTHORIZED] = {"unauthorized", 401},
    [HD_ERR_FORBIDDEN] = {"forbidden", 403},
    [HD_ERR_NOT_FOUND] = {"not_found", 404},
    [HD_ERR_METHOD_NOT_ALLOWED] = {"method_not_allowed", 405},
    [HD_ERR_TOO_LARGE] = {"too_large", 413},
    [HD_ERR_RATE_LIMITED] = {"rate_limited", 429},
    [HD_ERR_LIMIT_EXCEEDED] = {"limit_exceeded", 400},
    [HD_ERR_UNAVAILABLE] = {"unavailable", 503},
    [HD_ERR_INTERNAL] = {"internal", 500},
};

/* Returns the wire name of `err`; HD_ERR_NONE and out-of-range values give "internal". */
const char *hd_err_name(enum hd_err err)
{
    return (unsigned)err < HD_ERR__COUNT ? err_table[err].name : "internal";
}

/* Returns the HTTP status for `err`; HD_ERR_NONE and out-of-range values give 500. */
int hd_err_http(enum hd_err err)
{
    return (unsigned)err < HD_ERR__COUNT ? err_table[err].http : 500;
}

/* Length of the valid UTF-8 sequence starting at s (1-4), or 0 when the bytes are not one. */
static size_t utf8_seq_len(const unsigned char *s, size_t left)
{
    unsigned c = s[0];
    size_t n;
    unsigned cp;

    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
        cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
        n = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (left < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    /* Overlong forms and surrogates are invalid UTF-8 and would be refused by any decoder. */
    if (n == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff)))
        return 0;
    if (n == 4 && (cp < 0x10000 || cp > 0x10ffff))
        return 0;
    return n;
}

/* ---- canonical JSON recognizer ------------------------------------------------------- */

/*
 * hd_json_canonical and the in-place command reader. Every rule here mirrors what jansson
 * accepts and what dump() below writes; anything outside the rules is "not proven" and goes
 * to jansson. fuzz_cmd checks the two paths against each other.
 */
#define CANON_MAX_DEPTH 32
#define CANON_MAX_KEYS 16
#define CANON_MAX_DIGITS 18 /* always fits json_int_t, so wr_i64 writes the same digits */

struct canon_member {
    const char *key;
    size_t key_len;
    const char *val;
    size_t val_len;
};

static bool canon_value(const unsigned char **pp, const unsigned char *end, int depth);

/* A string with no escapes: printable ASCII but '"', '\\' and DEL (wr_jesc escapes those),
 * or valid UTF-8 (wr_jesc and jansson agree on what that is: utf8_seq_len). */
static bool canon_string(const unsigned char **pp, const unsigned char *end)
{
    const unsigned char *p = *pp + 1;
    while (p < end) {
        unsigned c = *p;
        if (c == '"') {
            *pp = p + 1;
            return true;
        }
        if (c < 0x20 || c == '\\' || c == 0x7f)
            return false;
        if (c < 0x80) {
            p++;
            continue;
        }
        size_t n = utf8_seq_len(p, (size_t)(end - p));
        if (!n)
            return false;
        p += n;
    }
    return false;
}

/* An integer as wr_i64 writes it: no "-0", no leading zeros, no fraction or exponent. */
static bool canon_integer(const unsigned char **pp, const unsigned char *end)
{
    const unsigned char *p = *pp;
    bool neg = *p == '-';
    if (neg)
        p++;
    if (p == end || *p < '0' || *p > '9')
        return false;
    const unsigned char *digits = p;
    if (*p == '0') {
        p++;
        if (neg)
            return false;
    } else {
        while (p < end && *p >= '0' && *p <= '9')
            p++;
        if (p - digits > CANON_MAX_DIGITS)
            return false;
    }
    if (p < end && ((*p >= '0' && *p <= '9') || *p == '.' || *p == 'e' || *p == 'E'))
        return false;
    *pp = p;
    return true;
}

static bool canon_literal(const unsigned char **pp, const unsigned char *end, const char *lit)
{
    size_t n = strlen(lit);
    if ((size_t)(end - *pp) < n || memcmp(*pp, lit, n) != 0)
        return false;
    *pp += n;
    return true;
}

/* An object whose keys are distinct (compared as bytes: they hold no escapes). Its members
 * go to out[] (CANON_MAX_KEYS entries) when out is not NULL. */
static bool canon_object(const unsigned char **pp, const unsigned char *end, int depth,
                         struct canon_member *out, size_t *n_out)
{
    struct canon_member m[CANON_MAX_KEYS];
    size_t n = 0;
    const unsigned char *p = *pp + 1;
    if (p < end && *p == '}') {
        *pp = p + 1;
        if (n_out)
            *n_out = 0;
        return true;
    }
    for (;;) {
        if (p == end || *p != '"' || n == CANON_MAX_KEYS)
            return false;
        const unsigned char *key = p + 1;
        if (!canon_string(&p, end))
            return false;
        size_t key_len = (size_t)(p - 1 - key);
        for (size_t i = 0; i < n; i++)
            if (m[i].key_len == key_len && memcmp(m[i].key, key, key_len) == 0)
                return false;
        if (p == end || *p != ':')
            return false;
        const unsigned char *val = ++p;
        if (!canon_value(&p, end, depth + 1))
            return false;
        m[n++] = (struct canon_member){.key = (const char *)key,
                                       .key_len = key_len,
                                       .val = (const char *)val,
                                       .val_len = (size_t)(p - val)};
        if (p < end && *p == ',') {
            p++;
            continue;
        }
        if (p == end || *p != '}')
            return false;
        *pp = p + 1;
        if (out)
            memcpy(out, m, n * sizeof(m[0]));
        if (n_out)
            *n_out = n;
        return true;
    }
}

static bool canon_array(const unsigned char **pp, const unsigned char *end, int depth)
{
    const unsigned char *p = *pp + 1;
    if (p < end && *p == ']') {
        *pp = p + 1;
        return true;
    }
    for (;;) {
        if (!canon_value(&p, end, depth + 1))
            return false;
        if (p < end && *p == ',') {
            p++;
            continue;
        }
        if (p == end || *p != ']')
            return false;
        *pp = p + 1;
        return true;
    }
}

static bool canon_value(const unsigned char **pp, const unsigned char *end, int depth)
{
    if (*pp == end || depth >= CANON_MAX_DEPTH)
        return false;
    switch (**pp) {
    case '{':
        return canon_object(pp, end, depth, NULL, NULL);
    case '[':
        return canon_array(pp, end, depth);
    case '"':
        return canon_string(pp, end);
    case 't':
        return canon_literal(pp, end, "true");
    case 'f':
        return canon_literal(pp, end, "false");
    case 'n':
        return canon_literal(pp, end, "null");
    default:
        return canon_integer(pp, end);
    }
}

bool hd_json_canonical(const char *s, size_t len)
{
    if (!s || len == 0)
        return false;
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    return canon_value(&p, end, 0) && p == end;
}

/*
 * Sets err (when not NULL) and returns -1. The message is truncated to fit; a truncation that
 * would split a UTF-8 sequence drops the partial sequence so the message stays valid text.
 */
enum hd_err hd_error_set(struct hd_error *err, enum hd_err code, const char *fmt, ...)
{
    if (!err)
        return code;
    err->code = code;
    err->message[0] = '\0';
    err->retry_after = 0;
    if (!fmt)
        return code;
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    if (w < 0) {
        err->message[0] = '\0';
    } else if ((size_t)w >= sizeof(err->message)) {
        size_t n = sizeof(err->message) - 1;
        size_t i = n;
        while (i > 0 && n - i < 3 && ((unsigned char)err->message[i - 1] & 0xc0) == 0x80)
            i--;
        if (i > 0 && (unsigned char)err->message[i - 1] >= 0xc0 &&
            utf8_seq_len((const unsigned char *)err->message + i - 1, n - (i - 1)) == 0)
            err->message[i - 1] = '\0';
    }
    return code;
}

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

static void wr_mem(struct wr *w, const void *s, size_t len)
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

#define wr_lit(w, s) wr_mem((w), (s), sizeof(s) - 1)

static void wr_str(struct wr *w, const char *s)
{
    wr_mem(w, s, strlen(s));
}

static void wr_u64(struct wr *w, uint64_t v)
{
    char buf[24];
    size_t i = sizeof(buf);
    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    wr_mem(w, buf + i, sizeof(buf) - i);
}

static void wr_i64(struct wr *w, int64_t v)
{
    if (v < 0) {
        wr_lit(w, "-");
        /* Negate in unsigned arithmetic: -INT64_MIN overflows int64_t. */
        wr_u64(w, (uint64_t)0 - (uint64_t)v);
    } else {
        wr_u64(w, (uint64_t)v);
    }
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
        unsigned c = u[i];
        size_t n = 1;
        if (c >= 0x20 && c != '"' && c != '\\' && c < 0x7f) {
            i++;
            continue;
        }
        if (c >= 0x80) {
            n = utf8_seq_len(u + i, len - i);
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

/* ---- command parsing ------------------------------------------------------------------ */

/* Bounds "since": no real cursor, "all" or "latest" comes near it. */
#define SINCE_MAX 255
/* How much of a bad value is echoed into an error message. */
#define ECHO_MAX 32

/*
 * Copies up to ECHO_MAX bytes of untrusted input for an error message: printable ASCII only
 * (anything else becomes '?') so a message never carries control bytes or broken UTF-8.
 */
static const char *echo(char out[ECHO_MAX + 4], const char *s, size_t len)
{
    size_t n = len < ECHO_MAX ? len : ECHO_MAX;
    for (size_t i = 0; i < n; i++)
        out[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
    if (len > ECHO_MAX) {
        memcpy(out + n, "...", 4);
    } else {
        out[n] = '\0';
    }
    return out;
}

static bool kind_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-' || c == '.' || c == ':';
}

/* Checks an event kind of `len` bytes (need not be NUL-terminated); NULL is never valid. */
bool hd_event_kind_valid(const char *s, size_t len)
{
    if (!s || len == 0 || len > HD_EVENT_KIND_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (!kind_char((unsigned char)s[i]))
            return false;
    }
    return true;
}

/*
 * Where a command's members are read from: jansson's tree, or the members of a canonical frame
 * read in place. Both give the same answers (fuzz_cmd compares them).
 */
struct fields {
    json_t *root; /* NULL: read m[] */
    const struct canon_member *m;
    size_t n;
};

enum field_kind { F_ABSENT, F_STRING, F_INTEGER, F_OTHER };

static const struct canon_member *span_find(const struct fields *f, const char *key)
{
    size_t klen = strlen(key);
    for (size_t i = 0; i < f->n; i++)
        if (f->m[i].key_len == klen && memcmp(f->m[i].key, key, klen) == 0)
            return &f->m[i];
    return NULL;
}

/* The kind of member `key`, with its text (strings: not NUL-terminated when read in place)
 * or its value (integers). */
static enum field_kind field(const struct fields *f, const char *key, const char **s, size_t *len,
                             int64_t *i)
{
    if (f->root) {
        json_t *v = json_object_get(f->root, key);
        if (!v)
            return F_ABSENT;
        if (json_is_string(v)) {
            *s = json_string_value(v);
            *len = json_string_length(v);
            return F_STRING;
        }
        if (json_is_integer(v)) {
            *i = (int64_t)json_integer_value(v);
            return F_INTEGER;
        }
        return F_OTHER;
    }
    const struct canon_member *m = span_find(f, key);
    if (!m)
        return F_ABSENT;
    char c = m->val[0];
    if (c == '"') {
        *s = m->val + 1;
        *len = m->val_len - 2;
        return F_STRING;
    }
    if (c == '-' || (c >= '0' && c <= '9')) { /* canon_integer: at most 18 digits */
        int64_t v = 0;
        for (size_t k = c == '-'; k < m->val_len; k++)
            v = v * 10 + (m->val[k] - '0');
        *i = c == '-' ? -v : v;
        return F_INTEGER;
    }
    return F_OTHER;
}

/*
 * Looks up an optional string member. Returns 1 with s and len set when present, 0 when absent,
 * or -1 (err set to bad_request) when present but not a string.
 */
static int get_str(const struct fields *f, const char *key, const char **s, size_t *len,
                   struct hd_error *err)
{
    int64_t ignored;
    switch (field(f, key, s, len, &ignored)) {
    case F_ABSENT:
        return 0;
    case F_STRING:
        return 1;
    default:
        hd_error_set(err, HD_ERR_BAD_REQUEST, "\"%s\" must be a string", key);
        return -1;
    }
}

/* A validated member as a C string: jansson's own, or a copy (it fits: validated lengths). */
static const char *keep(const struct fields *f, char *buf, size_t cap, const char *s, size_t len)
{
    if (f->root || len >= cap)
        return s;
    memcpy(buf, s, len);
    buf[len] = '\0';
    return buf;
}

_Static_assert(sizeof(((struct hd_cmd *)0)->topic_buf) > HD_TOPIC_MAX, "topic_buf");
_Static_assert(sizeof(((struct hd_cmd *)0)->since_buf) > SINCE_MAX, "since_buf");
_Static_assert(sizeof(((struct hd_cmd *)0)->event_buf) > HD_EVENT_KIND_MAX, "event_buf");
_Static_assert(sizeof(((struct hd_cmd *)0)->key_buf) > HD_IDEM_KEY_MAX, "key_buf");

bool hd_idem_key_valid(const char *s, size_t len)
{
    if (len < 1 || len > HD_IDEM_KEY_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
            return false;
    return true;
}

static enum hd_err parse_pattern(struct hd_cmd *cmd, const struct fields *f, struct hd_error *err)
{
    const char *s = NULL;
    size_t len = 0;
    char e[ECHO_MAX + 4];
    int r = get_str(f, "topic", &s, &len, err);
    if (r < 0)
        return err->code;
    if (r == 0)
        return hd_error_set(err, HD_ERR_BAD_REQUEST, "missing \"topic\"");
    if (hd_pattern_check(s, len) != 0)
        return hd_error_set(err, HD_ERR_INVALID_TOPIC,
                            "invalid pattern \"%s\": use '.'-separated segments of "
                            "[A-Za-z0-9_:@-], '*' for one segment or a final '>'",
                            echo(e, s, len));
    cmd->topic = keep(f, cmd->topic_buf, sizeof(cmd->topic_buf), s, len);
    return 0;
}

static enum hd_err parse_subscribe(struct hd_cmd *cmd, const struct fields *f, struct hd_error *err)
{
    const char *s = NULL;
    size_t len = 0;
    enum hd_err e = parse_pattern(cmd, f, err);
    if (e != HD_ERR_NONE)
        return e;
    int r = get_str(f, "since", &s, &len, err);
    if (r < 0)
        return err->code;
    if (r == 0)
        return 0;
    /*
     * Any content is accepted (an unknown or malformed cursor means a gap later, never an
     * error), but the value is handed on as a C string, so it must be one, and it is bounded.
     */
    if (len > SINCE_MAX)
        return hd_error_set(err, HD_ERR_BAD_REQUEST, "\"since\" is longer than %d bytes",
                            SINCE_MAX);
    if (memchr(s, '\0', len))
        return hd_error_set(err, HD_ERR_BAD_REQUEST, "\"since\" must not contain NUL");
    cmd->since = keep(f, cmd->since_buf, sizeof(cmd->since_buf), s, len);
    return 0;
}

static enum hd_err parse_publish(struct hd_cmd *cmd, const struct fields *f, struct hd_error *err)
{
    const char *s = NULL;
    size_t len = 0;
    char e[ECHO_MAX + 4];
    int r = get_str(f, "topic", &s, &len, err);
    if (r < 0)
        return err->code;
    if (r == 0)
        return hd_error_set(err, HD_ERR_BAD_REQUEST, "missing \"topic\"");
    r = hd_topic_check(s, len);
    if (r == -EPERM)
        return hd_error_set(err, HD_ERR_FORBIDDEN,
                            "topics starting with $ are reserved for the server");
    if (r != 0 && hd_pattern_check(s, len) == 0)
        return hd_error_set(err, HD_ERR_INVALID_TOPIC,
                            "invalid topic \"%s\": wildcards are only allowed when subscribing",
                            echo(e, s, len));
    if (r != 0)
        return hd_error_set(err, HD_ERR_INVALID_TOPIC,
                            "invalid topic \"%s\": use 1-255 bytes of '.'-separated segments of "
                            "[A-Za-z0-9_:@-]",
                            echo(e, s, len));
    cmd->topic = keep(f, cmd->topic_buf, sizeof(cmd->topic_buf), s, len);

    r = get_str(f, "event", &s, &len, err);
    if (r < 0)
        return err->code;
    if (r == 0) {
        cmd->event = HD_DEFAULT_EVENT;
    } else if (!hd_event_kind_valid(s, len)) {
        return hd_error_set(err, HD_ERR_BAD_REQUEST,
                            "invalid event kind \"%s\": use 1-%d bytes of [A-Za-z0-9_.:-]",
                            echo(e, s, len), HD_EVENT_KIND_MAX);
    } else {
        cmd->event = keep(f, cmd->event_buf, sizeof(cmd->event_buf), s, len);
    }

    r = get_str(f, "key", &s, &len, err);
    if (r < 0)
        return err->code;
    if (r == 1) {
        if (!hd_idem_key_valid(s, len))
            return hd_error_set(err, HD_ERR_BAD_REQUEST,
                                "\"key\" must be 1-%d visible ASCII characters", HD_IDEM_KEY_MAX);
        cmd->key = keep(f, cmd->key_buf, sizeof(cmd->key_buf), s, len);
    }

    if (f->root) {
        cmd->data = json_object_get(f->root, "data");
        if (!cmd->data)
            cmd->data = json_null(); /* a static singleton: nothing to release */
        return 0;
    }
    const struct canon_member *m = span_find(f, "data");
    cmd->data_json = m ? m->val : "null";
    cmd->data_len = m ? m->val_len : 4;
    return 0;
}

static const struct {
    const char *name;
    size_t len;
    enum hd_op op;
} ops[] = {
    {.name = "subscribe", .len = 9, .op = HD_OP_SUBSCRIBE},
    {.name = "unsubscribe", .len = 11, .op = HD_OP_UNSUBSCRIBE},
    {.name = "publish", .len = 7, .op = HD_OP_PUBLISH},
    {.name = "ping", .len = 4, .op = HD_OP_PING},
};

static enum hd_err parse_fields(struct hd_cmd *cmd, const struct fields *f, struct hd_error *err)
{
    char e[ECHO_MAX + 4];
    const char *s = NULL;
    size_t len = 0;
    int64_t id;

    /* The id comes first so that every later error can be matched to its command. */
    switch (field(f, "id", &s, &len, &id)) {
    case F_ABSENT:
        break;
    case F_INTEGER:
        cmd->has_id = true;
        cmd->id = id;
        break;
    default:
        return hd_error_set(err, HD_ERR_BAD_REQUEST, "\"id\" must be an integer");
    }

    int r = get_str(f, "op", &s, &len, err);
    if (r < 0)
        return err->code;
    if (r == 0)
        return hd_error_set(err, HD_ERR_BAD_REQUEST, "missing \"op\"");
    size_t i = 0;
    while (i < sizeof(ops) / sizeof(ops[0]) && !(len == ops[i].len && !memcmp(s, ops[i].name, len)))
        i++;
    if (i == sizeof(ops) / sizeof(ops[0]))
        return hd_error_set(err, HD_ERR_UNKNOWN_OP,
                            "unknown op \"%s\": expected subscribe, unsubscribe, publish or ping",
                            echo(e, s, len));
    cmd->op = ops[i].op;

    switch (cmd->op) {
    case HD_OP_SUBSCRIBE:
        return parse_subscribe(cmd, f, err);
    case HD_OP_UNSUBSCRIBE:
        return parse_pattern(cmd, f, err);
    case HD_OP_PUBLISH:
        return parse_publish(cmd, f, err);
    case HD_OP_PING:
        return 0;
    }
    return hd_error_set(err, HD_ERR_INTERNAL, "unhandled op");
}

/*
 * Parses one frame; borrows `buf`. On success `cmd` owns the parsed tree (release with
 * hd_cmd_clear). On failure returns -1 with `err` filled, cmd->has_id/id set when the id was
 * read, and nothing left to release (hd_cmd_clear is still harmless).
 *
 * A frame already in canonical form is read in place (no allocation). Anything else goes to
 * jansson with these flags: JSON_DECODE_ANY so that `42` or `"x"` get the precise "must be a
 * JSON object" rather than a parser message; JSON_REJECT_DUPLICATES because two "topic" keys
 * would let different readers of the same frame (a proxy, a log, us) disagree about what was
 * asked; JSON_ALLOW_NUL because "\u0000" is valid JSON inside data: members we hand on as C
 * strings are checked by length, so an embedded NUL fails validation instead of truncating.
 * Invalid UTF-8, trailing garbage and nesting beyond JSON_PARSER_MAX_DEPTH (2048) are refused
 * by jansson.
 */
enum hd_err hd_cmd_parse(const char *buf, size_t len, struct hd_cmd *cmd, struct hd_error *err)
{
    json_error_t jerr;
    char e[sizeof(jerr.text)];
    struct canon_member m[CANON_MAX_KEYS];
    struct fields f = {.m = m};
    struct hd_error scratch;
    if (!err)
        err = &scratch; /* the parsers below read the code back */

    cmd->root = NULL;
    cmd->data = NULL;
    cmd->data_json = cmd->topic = cmd->since = cmd->event = cmd->key = NULL;
    cmd->data_len = 0;
    cmd->has_id = false;
    cmd->id = 0;
    cmd->op = HD_OP_PING;
    if (!buf || len == 0)
        return hd_error_set(err, HD_ERR_BAD_REQUEST, "empty command: expected a JSON object");
    const unsigned char *p = (const unsigned char *)buf, *end = p + len;
    if (*p == '{' && canon_object(&p, end, 0, m, &f.n) && p == end)
        goto fields;
    cmd->root =
        json_loadb(buf, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    if (!cmd->root) {
        /* jansson quotes input near the error; keep only printable ASCII of it. */
        size_t n = strnlen(jerr.text, sizeof(jerr.text) - 1);
        for (size_t i = 0; i < n; i++)
            e[i] = (jerr.text[i] >= 0x20 && jerr.text[i] < 0x7f) ? jerr.text[i] : '?';
        e[n] = '\0';
        return hd_error_set(err, HD_ERR_BAD_REQUEST, "invalid JSON at byte %d: %s", jerr.position,
                            e);
    }
    if (!json_is_object(cmd->root)) {
        hd_cmd_clear(cmd);
        return hd_error_set(err, HD_ERR_BAD_REQUEST, "command must be a JSON object");
    }
    f.root = cmd->root;
fields:;
    enum hd_err rc = parse_fields(cmd, &f, err);
    if (rc != HD_ERR_NONE) {
        bool has_id = cmd->has_id;
        int64_t id = cmd->id;
        hd_cmd_clear(cmd);
        cmd->has_id = has_id;
        cmd->id = id;
    }
    return rc;
}

/* Releases the parsed tree and resets every field; safe on a zeroed or cleared cmd. */
void hd_cmd_clear(struct hd_cmd *cmd)
{
    if (!cmd)
        return;
    json_decref(cmd->root);
    cmd->root = cmd->data = NULL;
    cmd->data_json = cmd->topic = cmd->since = cmd->event = cmd->key = NULL;
    cmd->data_len = 0;
    cmd->has_id = false;
    cmd->id = 0;
    cmd->op = HD_OP_PING;
}

const char *hd_cmd_data(const struct hd_cmd *cmd, size_t *len, char **owned)
{
    *owned = NULL;
    if (cmd->data_json) {
        *len = cmd->data_len;
        return cmd->data_json;
    }
    *owned = hd_json_dump_compact(cmd->data ? cmd->data : json_null(), len);
    return *owned;
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
    struct wr w = {.p = out, .cap = out ? cap : 0};
    wr_lit(&w, "{\"type\":\"event\",\"topic\":\"");
    wr_str(&w, topic);
    wr_lit(&w, "\",\"id\":\"");
    wr_str(&w, event_id);
    wr_lit(&w, "\",\"time\":");
    wr_i64(&w, time_ms);
    wr_lit(&w, ",\"event\":\"");
    wr_str(&w, event);
    wr_lit(&w, "\",\"data\":");
    if (data_json && data_len)
        wr_mem(&w, data_json, data_len);
    else
        wr_lit(&w, "null");
    wr_lit(&w, "}");
    if (w.cap)
        out[w.n < w.cap ? w.n : w.cap - 1] = '\0';
    return w.n;
}

/* ---- event ids ------------------------------------------------------------------------ */

/* Writes the 16 lowercase hex digits of `seq` and a NUL into `out`. */
void hd_event_id_format(uint64_t seq, char out[HD_EVENT_ID_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    for (int i = HD_EVENT_ID_LEN - 1; i >= 0; i--) {
        out[i] = hex[seq & 15];
        seq >>= 4;
    }
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
