/* SPDX-License-Identifier: MIT */
/*
 * The herald.v1 wire format as the client sees it: encoding commands and decoding server
 * frames (PROTOCOL.md section 7). Strings are quoted by jansson so escaping is never
 * hand-rolled; a publish's data is embedded exactly as the application wrote it (after
 * checking it is one JSON value), so numbers keep their spelling. Incoming event data is
 * handed on as the byte span the server sent, not re-serialized, for the same reason.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

char *herald__json_quote(const char *text)
{
    json_t *s = json_stringn(text, strlen(text)); /* NULL for invalid UTF-8 */
    if (!s)
        return NULL;
    char *out = json_dumps(s, JSON_ENCODE_ANY | JSON_COMPACT);
    json_decref(s);
    return out;
}

int herald__check_json(const char *text, herald_error *err)
{
    json_error_t jerr;
    /* The server refuses duplicate keys (two readers could disagree on the value): say so
     * here, with the position, rather than as a bare bad_request from the server. */
    json_t *v = json_loads(text, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    if (!v) {
        char why[sizeof(jerr.text)];
        herald__sanitize(why, sizeof(why), jerr.text, strlen(jerr.text));
        return herald__err(err, HERALD_E_INVALID, NULL,
                           "data is not one JSON value: %s "
                           "(line %d, column %d)",
                           why, jerr.line, jerr.column);
    }
    json_decref(v);
    return 0;
}

size_t herald__json_compact(const char *text, char *out)
{
    size_t n = 0;
    bool in_str = false, esc = false;
    for (const char *p = text; *p; p++) {
        char ch = *p;
        if (in_str) {
            if (esc)
                esc = false;
            else if (ch == '\\')
                esc = true;
            else if (ch == '"')
                in_str = false;
        } else if (ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r') {
            continue;
        } else if (ch == '"') {
            in_str = true;
        }
        if (out)
            out[n] = ch;
        n++;
    }
    if (out)
        out[n] = '\0';
    return n;
}

bool herald__key_valid(const char *key)
{
    size_t n = strnlen(key, HERALD_KEY_MAX + 1);
    if (n == 0 || n > HERALD_KEY_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)key[i] <= 0x20 || (unsigned char)key[i] >= 0x7f)
            return false;
    return true;
}

void herald__key_make(char *out, size_t cap, const char *prefix, uint64_t seq)
{
    snprintf(out, cap, "%s-%llu", prefix, (unsigned long long)seq);
}

/* A growing byte buffer with `headroom` reserved in front; `oom` latches. */
struct buf {
    unsigned char *p;
    size_t len, cap, head;
    bool oom;
};

static void put(struct buf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->head + b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->head + b->len + n + 1)
            cap *= 2;
        unsigned char *np = realloc(b->p, cap);
        if (!np) {
            b->oom = true;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->head + b->len, s, n);
    b->len += n;
    b->p[b->head + b->len] = '\0';
}

static void puts_(struct buf *b, const char *s)
{
    put(b, s, strlen(s));
}

static void put_quoted(struct buf *b, const char *s)
{
    char *q = herald__json_quote(s);
    if (!q) {
        b->oom = true; /* invalid UTF-8 or no memory: either way no frame */
        return;
    }
    puts_(b, q);
    free(q);
}

static void start(struct buf *b, size_t headroom, const char *op, int64_t id)
{
    *b = (struct buf){.head = headroom};
    char num[32];
    snprintf(num, sizeof(num), "%lld", (long long)id);
    puts_(b, "{\"op\":\"");
    puts_(b, op);
    puts_(b, "\",\"id\":");
    puts_(b, num);
}

static unsigned char *finish(struct buf *b, size_t *len)
{
    puts_(b, "}");
    if (b->oom) {
        free(b->p);
        return NULL;
    }
    *len = b->len;
    return b->p;
}

unsigned char *herald__encode_subscribe(size_t headroom, int64_t id, const char *pattern,
                                        const char *since, size_t *len)
{
    struct buf b;
    start(&b, headroom, "subscribe", id);
    puts_(&b, ",\"topic\":");
    put_quoted(&b, pattern);
    if (since && *since) {
        puts_(&b, ",\"since\":");
        put_quoted(&b, since);
    }
    return finish(&b, len);
}

unsigned char *herald__encode_unsubscribe(size_t headroom, int64_t id, const char *pattern,
                                          size_t *len)
{
    struct buf b;
    start(&b, headroom, "unsubscribe", id);
    puts_(&b, ",\"topic\":");
    put_quoted(&b, pattern);
    return finish(&b, len);
}

unsigned char *herald__encode_publish(size_t headroom, int64_t id, const char *topic,
                                      const char *kind, const char *key, const char *data_json,
                                      size_t *len)
{
    struct buf b;
    start(&b, headroom, "publish", id);
    puts_(&b, ",\"topic\":");
    put_quoted(&b, topic);
    if (kind) {
        puts_(&b, ",\"event\":");
        put_quoted(&b, kind);
    }
    if (key && *key) {
        puts_(&b, ",\"key\":");
        put_quoted(&b, key);
    }
    puts_(&b, ",\"data\":");
    puts_(&b, data_json ? data_json : "null");
    return finish(&b, len);
}

unsigned char *herald__encode_batch_line(const char *topic, const char *kind, const char *key,
                                         const char *data_json, size_t *len)
{
    struct buf b = {.head = 0};
    puts_(&b, "{\"topic\":");
    put_quoted(&b, topic);
    if (kind) {
        puts_(&b, ",\"event\":");
        put_quoted(&b, kind);
    }
    puts_(&b, ",\"data\":");
    puts_(&b, data_json ? data_json : "null");
    if (key && *key) {
        puts_(&b, ",\"key\":");
        put_quoted(&b, key);
    }
    return finish(&b, len);
}

unsigned char *herald__encode_ping(size_t headroom, int64_t id, size_t *len)
{
    struct buf b;
    start(&b, headroom, "ping", id);
    return finish(&b, len);
}

/* ---- decoding ---------------------------------------------------------------------------- */

static const char *str_member(json_t *root, const char *key)
{
    json_t *v = json_object_get(root, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static int proto(herald_error *err, struct herald__frame *f, const char *what)
{
    herald__frame_clear(f);
    return herald__err(err, HERALD_E_PROTOCOL, NULL, "unexpected frame from the server: %s", what);
}

static bool count_member(json_t *root, const char *key, size_t *out)
{
    json_t *v = json_object_get(root, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return false;
    *out = (size_t)json_integer_value(v);
    return true;
}

int herald__frame_parse(const char *text, size_t len, struct herald__frame *f, herald_error *err)
{
    json_error_t jerr;
    *f = (struct herald__frame){.root = NULL};
    f->root = json_loadb(text, len, JSON_ALLOW_NUL, &jerr);
    if (!f->root)
        return proto(err, f, "not JSON");
    if (!json_is_object(f->root))
        return proto(err, f, "not a JSON object");
    const char *type = str_member(f->root, "type");
    if (!type)
        return proto(err, f, "no \"type\"");
    json_t *id = json_object_get(f->root, "id");
    if (json_is_integer(id)) {
        f->has_id = true;
        f->id = (int64_t)json_integer_value(id);
    }
    if (strcmp(type, "event") == 0) {
        f->type = HERALD__F_EVENT;
        f->topic = str_member(f->root, "topic");
        f->ev_id = str_member(f->root, "id");
        f->kind = str_member(f->root, "event");
        json_t *t = json_object_get(f->root, "time");
        if (!f->topic || !f->ev_id || !json_is_integer(t))
            return proto(err, f, "event without topic, id or time");
        if (strlen(f->ev_id) > HERALD_ID_MAX || strlen(f->topic) > HERALD_TOPIC_MAX)
            return proto(err, f, "event id or topic too long");
        if (!f->kind)
            f->kind = "message";
        f->time_ms = (int64_t)json_integer_value(t);
        if (herald__json_member_span(text, len, "data", &f->data_off, &f->data_len) < 0) {
            f->data_off = 0;
            f->data_len = 0;
        }
        return 0;
    }
    if (strcmp(type, "ok") == 0) {
        f->type = HERALD__F_OK;
        if (json_object_get(f->root, "replayed")) {
            if (!count_member(f->root, "replayed", &f->replayed))
                return proto(err, f, "\"replayed\" is not a count");
            f->is_subscribe_ok = true;
            f->gap = json_is_true(json_object_get(f->root, "gap"));
            f->next = str_member(f->root, "next");
            if (f->next && (!*f->next || strlen(f->next) > HERALD_ID_MAX))
                return proto(err, f, "\"next\" is not an id");
        }
        f->event_id = str_member(f->root, "event_id");
        if (f->event_id && strlen(f->event_id) > HERALD_ID_MAX)
            return proto(err, f, "event id too long");
        count_member(f->root, "receivers", &f->receivers);
        f->duplicate = json_is_true(json_object_get(f->root, "duplicate"));
        return 0;
    }
    if (strcmp(type, "error") == 0) {
        f->type = HERALD__F_ERROR;
        f->code = str_member(f->root, "code");
        f->message = str_member(f->root, "message");
        if (!f->code)
            f->code = "internal";
        if (!f->message)
            f->message = "";
        return 0;
    }
    if (strcmp(type, "welcome") == 0) {
        f->type = HERALD__F_WELCOME;
        if (!count_member(f->root, "max_event_bytes", &f->max_event_bytes))
            f->max_event_bytes = 65536;
        size_t hb = 0;
        f->heartbeat_s = count_member(f->root, "heartbeat", &hb) && hb < 86400 ? (int)hb : 0;
        return 0;
    }
    f->type = strcmp(type, "pong") == 0 ? HERALD__F_PONG : HERALD__F_OTHER;
    return 0;
}

void herald__frame_clear(struct herald__frame *f)
{
    if (!f)
        return;
    json_decref(f->root);
    *f = (struct herald__frame){.root = NULL};
}
