/* SPDX-License-Identifier: MIT */
/*
 * Batch publishing (PROTOCOL.md section 3): a herald_batch collects events as NDJSON lines
 * (one {"topic","event","data","key"} object each, data embedded as the caller wrote it), and
 * herald_publish_batch() POSTs them to /v1/publish in one request. Every line carries a key
 * (the caller's, or one the batch makes), so sending the same batch again after a failure
 * publishes each event at most once. Building and answer parsing are plain C, unit-tested
 * in test_libherald_batch.c; the request itself goes through http.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "internal.h"

/* Bounds: a batch never grows past these, whatever the caller feeds it. */
#define BATCH_MAX_LINES 1000000u
#define BATCH_MAX_BYTES (256u << 20)
#define KIND_MAX 64

struct herald_batch {
    char *buf; /* the NDJSON body */
    size_t len, cap;
    size_t n;
    char prefix[24]; /* for the keys the batch makes */
};

HERALD_API herald_batch *herald_batch_new(void)
{
    struct herald_batch *b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    uint64_t rnd = 0;
    if (getrandom(&rnd, sizeof(rnd), GRND_NONBLOCK) != (ssize_t)sizeof(rnd)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        rnd = ((uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^ (uint64_t)(uintptr_t)b) *
              0x9E3779B97F4A7C15ull;
    }
    snprintf(b->prefix, sizeof(b->prefix), "hb%016llx", (unsigned long long)rnd);
    return b;
}

HERALD_API void herald_batch_free(herald_batch *b)
{
    if (b) {
        free(b->buf);
        free(b);
    }
}

HERALD_API size_t herald_batch_count(const herald_batch *b)
{
    return b ? b->n : 0;
}

static bool name_ok(const char *s, size_t max)
{
    if (!s || !*s || strnlen(s, max + 1) > max)
        return false;
    char *q = herald__json_quote(s);
    free(q);
    return q != NULL;
}

HERALD_API int herald_batch_add(herald_batch *b, const char *topic, const char *kind,
                                const char *data_json, const char *key, herald_error *err)
{
    if (!b)
        return herald__err(err, HERALD_E_INVALID, NULL, "no batch");
    if (!name_ok(topic, HERALD_TOPIC_MAX))
        return herald__err(err, HERALD_E_INVALID, NULL, "the topic must be 1-%d bytes of UTF-8",
                           HERALD_TOPIC_MAX);
    if (kind && !name_ok(kind, KIND_MAX))
        return herald__err(err, HERALD_E_INVALID, NULL,
                           "the event kind must be 1-%d bytes of UTF-8", KIND_MAX);
    if (key && !herald__key_valid(key))
        return herald__err(err, HERALD_E_INVALID, NULL, "the key must be 1-%d visible ASCII bytes",
                           HERALD_KEY_MAX);
    int r;
    if (data_json && (r = herald__check_json(data_json, err)) != 0)
        return r;
    if (b->n >= BATCH_MAX_LINES)
        return herald__err(err, HERALD_E_INVALID, NULL, "a batch holds at most %u events",
                           BATCH_MAX_LINES);
    char made[HERALD_KEY_MAX + 1];
    if (!key) {
        herald__key_make(made, sizeof(made), b->prefix, (uint64_t)b->n + 1);
        key = made;
    }
    /* Compact data: NDJSON needs the line to have no newline, and whitespace outside
     * strings is the only place JSON text can hold one. */
    const char *data = data_json ? data_json : "null";
    char *compact = malloc(strlen(data) + 1);
    if (!compact)
        return herald__err(err, HERALD_E_NOMEM, NULL, "out of memory");
    herald__json_compact(data, compact);
    size_t len = 0;
    unsigned char *line = herald__encode_batch_line(topic, kind, key, compact, &len);
    free(compact);
    if (!line)
        return herald__err(err, HERALD_E_NOMEM, NULL, "out of memory");
    if (b->len + len + 1 > BATCH_MAX_BYTES) {
        free(line);
        return herald__err(err, HERALD_E_INVALID, NULL, "a batch holds at most %u bytes",
                           BATCH_MAX_BYTES);
    }
    if (b->len + len + 2 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + len + 2)
            cap *= 2;
        char *nb = realloc(b->buf, cap);
        if (!nb) {
            free(line);
            return herald__err(err, HERALD_E_NOMEM, NULL, "out of memory");
        }
        b->buf = nb;
        b->cap = cap;
    }
    memcpy(b->buf + b->len, line, len);
    b->len += len;
    b->buf[b->len++] = '\n';
    b->buf[b->len] = '\0';
    b->n++;
    free(line);
    return 0;
}

HERALD_API int herald_batch_add_line(herald_batch *b, const char *line, herald_error *err)
{
    if (!line)
        return herald__err(err, HERALD_E_INVALID, NULL, "no line");
    json_error_t jerr;
    json_t *v = json_loads(line, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    if (!v) {
        char why[sizeof(jerr.text)];
        herald__sanitize(why, sizeof(why), jerr.text, strlen(jerr.text));
        return herald__err(err, HERALD_E_INVALID, NULL, "not JSON: %s (column %d)", why,
                           jerr.column);
    }
    int r = 0;
    const char *k;
    json_t *m;
    if (!json_is_object(v)) {
        r = herald__err(err, HERALD_E_INVALID, NULL, "not a JSON object");
        goto out;
    }
    json_object_foreach(v, k, m)
    {
        bool known = strcmp(k, "topic") == 0 || strcmp(k, "event") == 0 || strcmp(k, "data") == 0 ||
                     strcmp(k, "key") == 0;
        bool str = json_is_string(m) || strcmp(k, "data") == 0;
        if (!known || !str) {
            char shown[40];
            herald__sanitize(shown, sizeof(shown), k, strlen(k));
            r = herald__err(err, HERALD_E_INVALID, NULL,
                            known ? "\"%s\" must be a string"
                                  : "unknown member \"%s\" (use "
                                    "topic, event, data, key)",
                            shown);
            goto out;
        }
    }
    const char *topic = json_string_value(json_object_get(v, "topic"));
    if (!topic) {
        r = herald__err(err, HERALD_E_INVALID, NULL, "no \"topic\"");
        goto out;
    }
    /* The data as the line wrote it (numbers keep their spelling), not re-serialized. */
    char *data = NULL;
    size_t off, dl;
    if (herald__json_member_span(line, strlen(line), "data", &off, &dl) == 0) {
        data = malloc(dl + 1);
        if (!data) {
            r = herald__err(err, HERALD_E_NOMEM, NULL, "out of memory");
            goto out;
        }
        memcpy(data, line + off, dl);
        data[dl] = '\0';
    }
    r = herald_batch_add(b, topic, json_string_value(json_object_get(v, "event")), data,
                         json_string_value(json_object_get(v, "key")), err);
    free(data);
out:
    json_decref(v);
    return r;
}

const char *herald__batch_body(const struct herald_batch *b, size_t *len)
{
    *len = b->len;
    return b->buf ? b->buf : "";
}

int herald__batch_answer(int status, const char *body, size_t len, size_t lines, size_t *bad_line,
                         herald_error *err)
{
    json_t *v = json_loadb(body, len, 0, NULL);
    int r = 0;
    if (status >= 200 && status <= 299) {
        json_t *evs = json_object_get(v, "events");
        if (!json_is_array(evs) || json_array_size(evs) != lines)
            r = herald__err(err, HERALD_E_PROTOCOL, NULL,
                            "the server's answer does not list one event per line (%zu lines)",
                            lines);
        json_decref(v);
        return r;
    }
    const char *code = json_string_value(json_object_get(v, "code"));
    const char *msg = json_string_value(json_object_get(v, "message"));
    json_t *line = json_object_get(v, "line");
    int st = (status == 401 || status == 403) ? HERALD_E_AUTH : HERALD_E_SERVER;
    if (json_is_integer(line) && json_integer_value(line) >= 1 &&
        (size_t)json_integer_value(line) <= lines) {
        size_t n = (size_t)json_integer_value(line);
        if (bad_line)
            *bad_line = n;
        r = herald__err(err, st, code, "line %zu: %s: %s", n, code ? code : "error",
                        msg ? msg : "");
    } else if (code) {
        r = herald__err(err, st, code, "%s: %s", code, msg ? msg : "");
    } else {
        r = herald__err(err, st, NULL, "the server answered HTTP %d", status);
    }
    json_decref(v);
    return r;
}

HERALD_API int herald_publish_batch(const char *url, const herald_options *opts,
                                    const herald_batch *b, char **body_out, size_t *bad_line,
                                    herald_error *err)
{
    if (bad_line)
        *bad_line = 0;
    if (!body_out || !b)
        return herald__err(err, HERALD_E_INVALID, NULL, "no batch or no place for the answer");
    *body_out = NULL;
    if (!b->n)
        return herald__err(err, HERALD_E_INVALID, NULL, "the batch is empty");
    int status = 0;
    char *body = NULL;
    size_t len = 0, blen;
    const char *req = herald__batch_body(b, &blen);
    int timeout = opts ? opts->connect_timeout_ms : HERALD__DEFAULT_CONNECT_TIMEOUT_MS;
    int r = herald__http_any(url, opts, "application/x-ndjson", req, blen, "/v1/publish", timeout,
                             &status, &body, &len, err);
    if (r)
        return r;
    r = herald__batch_answer(status, body, len, b->n, bad_line, err);
    if (r) {
        free(body);
        return r;
    }
    *body_out = body;
    return 0;
}
