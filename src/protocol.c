/* SPDX-License-Identifier: MIT */
/*
 * The wire protocol's command side: the error-code table, struct hd_error, and the parser
 * that turns a WebSocket command frame into struct hd_cmd (in place when the frame is compact
 * canonical JSON, json.c; through jansson otherwise). It knows nothing about connections,
 * subscriptions or history; encoders live in encode.c.
 */
#include "json_int.h"
#include "protocol.h"

#include "topic.h"

#include <errno.h>
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
/*
 * Sets err (when not NULL) and returns `code`. The message is truncated to fit; a truncation
 * that would split a UTF-8 sequence drops the partial sequence so the message stays valid text.
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
            hd__utf8_seq_len((const unsigned char *)err->message + i - 1, n - (i - 1)) == 0)
            err->message[i - 1] = '\0';
    }
    return code;
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
    /* Compared in line, without strlen and memcmp calls: a command has a handful of short
     * members, and most differ from the key in their first byte. */
    for (size_t i = 0; i < f->n; i++) {
        const char *k = f->m[i].key;
        size_t n = f->m[i].key_len, j = 1;
        if (!n || k[0] != key[0])
            continue;
        while (j < n && key[j] && k[j] == key[j])
            j++;
        if (j == n && !key[j])
            return &f->m[i];
    }
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
    if (*p == '{' && hd__canon_object(&p, end, 0, m, &f.n) && p == end)
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
