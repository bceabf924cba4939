/* SPDX-License-Identifier: MIT */
/*
 * A fake transport for broker-level Check suites: connections that record write requests,
 * closes and pings, and helpers that read their queued frames as JSON. Header-only, static:
 * each suite that includes it gets its own copy and its own `b` (the broker under test).
 */
#ifndef HD_TEST_FAKE_CONN_H
#define HD_TEST_FAKE_CONN_H

#include <check.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"

/* ---- a fake transport ------------------------------------------------------------------- */

struct tconn {
    struct hd_conn c; /* first: the ops get &c */
    int want_writes;
    int closes;
    int close_code;
    int pings;
    bool detach_on_close; /* like a transport that tears down at once */
};

static inline void t_want_write(struct hd_conn *c)
{
    ((struct tconn *)c)->want_writes++;
}

static inline void t_close(struct hd_conn *c, int code, const char *reason)
{
    struct tconn *t = (struct tconn *)c;
    ck_assert_ptr_nonnull(reason);
    t->closes++;
    t->close_code = code;
    if (t->detach_on_close)
        hd_conn_detach(c);
}

static inline void t_ping(struct hd_conn *c)
{
    ((struct tconn *)c)->pings++;
}

static const struct hd_conn_ops t_ops
    __attribute__((unused)) = {.want_write = t_want_write, .close = t_close};
static const struct hd_conn_ops t_ops_ping
    __attribute__((unused)) = {.want_write = t_want_write, .close = t_close, .ping = t_ping};

#define MAX_CONNS 16
static struct hd_broker *b;
static struct tconn *conns[MAX_CONNS];
static size_t n_conns;

/* A test connection, not yet attached; teardown frees it. */
static inline struct tconn *new_tconn(void)
{
    ck_assert_uint_lt(n_conns, MAX_CONNS);
    struct tconn *t = calloc(1, sizeof(*t));
    ck_assert_ptr_nonnull(t);
    conns[n_conns++] = t;
    return t;
}

static inline struct tconn *open_kind(enum hd_conn_kind kind)
{
    struct tconn *t = new_tconn();
    ck_assert_int_eq(hd_conn_attach(b, &t->c, kind, &t_ops), 0);
    return t;
}

/* Pops the next frame as JSON (caller decrefs), or NULL when the queue is empty. */
static inline json_t *next_frame(struct tconn *t)
{
    struct hd_msg *m = hd_conn_peek(&t->c);
    if (!m)
        return NULL;
    json_error_t e;
    json_t *j = json_loadb((const char *)hd_msg_payload(m), m->len, 0, &e);
    ck_assert_msg(j != NULL, "frame is not JSON: %s: %s", e.text, (char *)hd_msg_payload(m));
    hd_conn_writable(&t->c);
    hd_conn_wrote(&t->c);
    return j;
}

static inline json_t *expect_frame(struct tconn *t, const char *type)
{
    json_t *j = next_frame(t);
    ck_assert_msg(j != NULL, "expected a %s frame, the queue is empty", type);
    const char *got = json_string_value(json_object_get(j, "type"));
    ck_assert_msg(got && strcmp(got, type) == 0, "expected a %s frame, got %s", type,
                  got ? got : "(no type)");
    return j;
}

static inline void expect_empty(struct tconn *t)
{
    json_t *j = next_frame(t);
    if (j) {
        char *s = json_dumps(j, JSON_COMPACT);
        ck_abort_msg("unexpected frame %s", s);
    }
}

/* An open WebSocket connection with its welcome frame already read. */
static inline struct tconn *open_ws(void)
{
    struct tconn *t = open_kind(HD_CONN_WS);
    json_decref(expect_frame(t, "welcome"));
    return t;
}

static inline void cmd(struct tconn *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static inline void cmd(struct tconn *t, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    ck_assert(n > 0 && (size_t)n < sizeof(buf));
    hd_conn_on_text(&t->c, buf, (size_t)n);
}

static inline int64_t jint(json_t *j, const char *key)
{
    json_t *v = json_object_get(j, key);
    ck_assert_msg(json_is_integer(v), "\"%s\" is not an integer", key);
    return json_integer_value(v);
}

static inline const char *jstr(json_t *j, const char *key)
{
    const char *s = json_string_value(json_object_get(j, key));
    ck_assert_msg(s != NULL, "\"%s\" is not a string", key);
    return s;
}

#endif
