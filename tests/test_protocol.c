/* SPDX-License-Identifier: MIT */
/*
 * Check suite for the protocol module: every refusal hd_cmd_parse can give (code, whether the
 * id is echoed, the human message where it matters), every accepted command shape, the exact
 * bytes of every encoder, the bounded event encoder, event ids and compact JSON serialization.
 * Links the real topic.c; no sockets.
 */
#include "protocol.h"

#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers -------------------------------------------------------------------------- */

/* A struct hd_cmd may point into itself, so outcomes point to one of these, never copy it. */
static struct hd_cmd cmd_pool[8];
static unsigned cmd_next;

struct outcome {
    int rc;
    struct hd_cmd *cmd;
    struct hd_error err;
};

/* The publish data as a malloc'd C string, whichever path read the frame. */
static char *data_text(const struct hd_cmd *cmd)
{
    size_t len = 0;
    char *owned = NULL;
    const char *d = hd_cmd_data(cmd, &len, &owned);
    ck_assert_ptr_nonnull(d);
    char *copy = strndup(d, len);
    ck_assert_ptr_nonnull(copy);
    ck_assert_uint_eq(strlen(copy), len);
    free(owned);
    return copy;
}

static bool same_str(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/*
 * Parses the frame; a frame in canonical form (read in place, without jansson) is parsed a
 * second time with a trailing space, which sends it through jansson, and the two results must
 * agree in every field. So every test here also checks the in-place reader against jansson.
 */
static struct outcome parse_n(const char *buf, size_t len)
{
    struct outcome o = {.cmd = &cmd_pool[cmd_next++ % 8]};
    o.err.code = HD_ERR_NONE;
    o.rc = hd_cmd_parse(buf, len, o.cmd, &o.err);
    if (!hd_json_canonical(buf, len) || buf[0] != '{')
        return o;
    ck_assert_ptr_null(o.cmd->root);
    char *spaced = malloc(len + 1);
    ck_assert_ptr_nonnull(spaced);
    memcpy(spaced, buf, len);
    spaced[len] = ' ';
    struct hd_cmd jcmd;
    struct outcome j = {.cmd = &jcmd};
    j.rc = hd_cmd_parse(spaced, len + 1, j.cmd, &j.err);
    ck_assert_int_eq(o.rc, j.rc);
    ck_assert_int_eq(o.err.code, j.err.code);
    ck_assert_str_eq(o.err.message, j.err.message);
    ck_assert_int_eq(o.cmd->has_id, j.cmd->has_id);
    ck_assert(o.cmd->id == j.cmd->id);
    if (o.rc == 0) {
        ck_assert_ptr_nonnull(j.cmd->root);
        ck_assert_int_eq(o.cmd->op, j.cmd->op);
        ck_assert(same_str(o.cmd->topic, j.cmd->topic));
        ck_assert(same_str(o.cmd->since, j.cmd->since));
        ck_assert(same_str(o.cmd->event, j.cmd->event));
        if (o.cmd->op == HD_OP_PUBLISH) {
            char *a = data_text(o.cmd), *b = data_text(j.cmd);
            ck_assert_str_eq(a, b);
            free(a);
            free(b);
        }
    }
    hd_cmd_clear(j.cmd);
    free(spaced);
    return o;
}

static struct outcome parse(const char *s)
{
    return parse_n(s, strlen(s));
}

/* Asserts a refusal with `code`; has_id/id say what the error reply must echo. */
#define ASSERT_REFUSED(o, code_, has_id_, id_)                                                     \
    do {                                                                                           \
        ck_assert_int_ne((o).rc, HD_ERR_NONE);                                                     \
        ck_assert_str_eq(hd_err_name((o).err.code), hd_err_name(code_));                           \
        ck_assert_int_eq((o).cmd->has_id, (has_id_));                                              \
        if (has_id_)                                                                               \
            ck_assert_int_eq((o).cmd->id, (id_));                                                  \
        ck_assert_ptr_null((o).cmd->root);                                                         \
        ck_assert_uint_gt(strlen((o).err.message), 0);                                             \
    } while (0)

static void refused(const char *frame, enum hd_err code, bool has_id, int64_t id)
{
    struct outcome o = parse(frame);
    ck_assert_msg(o.rc != HD_ERR_NONE, "accepted: %s", frame);
    ck_assert_msg(o.err.code == code, "frame %s: got %s (%s), want %s", frame,
                  hd_err_name(o.err.code), o.err.message, hd_err_name(code));
    ASSERT_REFUSED(o, code, has_id, id);
}

static char *repeat(char c, size_t n)
{
    char *s = malloc(n + 1);
    ck_assert_ptr_nonnull(s);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

static char *fmt(const char *f, const char *arg)
{
    size_t n = strlen(f) + strlen(arg) + 1;
    char *s = malloc(n);
    ck_assert_ptr_nonnull(s);
    snprintf(s, n, f, arg);
    return s;
}

/* ---- error table ---------------------------------------------------------------------- */

START_TEST(err_table)
{
    static const struct {
        enum hd_err e;
        const char *name;
        int http;
    } want[] = {
        {HD_ERR_BAD_REQUEST, "bad_request", 400},
        {HD_ERR_INVALID_TOPIC, "invalid_topic", 400},
        {HD_ERR_UNKNOWN_OP, "unknown_op", 400},
        {HD_ERR_UNAUTHORIZED, "unauthorized", 401},
        {HD_ERR_FORBIDDEN, "forbidden", 403},
        {HD_ERR_NOT_FOUND, "not_found", 404},
        {HD_ERR_METHOD_NOT_ALLOWED, "method_not_allowed", 405},
        {HD_ERR_TOO_LARGE, "too_large", 413},
        {HD_ERR_RATE_LIMITED, "rate_limited", 429},
        {HD_ERR_LIMIT_EXCEEDED, "limit_exceeded", 400},
        {HD_ERR_UNAVAILABLE, "unavailable", 503},
        {HD_ERR_INTERNAL, "internal", 500},
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        ck_assert_str_eq(hd_err_name(want[i].e), want[i].name);
        ck_assert_int_eq(hd_err_http(want[i].e), want[i].http);
    }
    ck_assert_str_eq(hd_err_name(HD_ERR__COUNT), "internal");
    ck_assert_int_eq(hd_err_http((enum hd_err)999), 500);
}
END_TEST

START_TEST(error_set_truncates)
{
    struct hd_error e;
    char *long_s = repeat('x', 500);
    ck_assert_int_eq(hd_error_set(&e, HD_ERR_TOO_LARGE, "big %s", long_s), HD_ERR_TOO_LARGE);
    ck_assert_int_eq(e.code, HD_ERR_TOO_LARGE);
    ck_assert_uint_eq(strlen(e.message), sizeof(e.message) - 1);
    ck_assert(strncmp(e.message, "big xxx", 7) == 0);
    free(long_s);
    ck_assert_int_eq(hd_error_set(NULL, HD_ERR_INTERNAL, "x"), HD_ERR_INTERNAL);

    /* A 2-byte character straddling the end is dropped whole, not split. */
    char buf[sizeof(e.message) + 8];
    memset(buf, 'a', sizeof(e.message) - 2);
    strcpy(buf + sizeof(e.message) - 2, "\xc3\xa9zz");
    hd_error_set(&e, HD_ERR_BAD_REQUEST, "%s", buf);
    ck_assert_uint_eq(strlen(e.message), sizeof(e.message) - 2);
    ck_assert_int_eq(e.message[strlen(e.message) - 1], 'a');
}
END_TEST

/* ---- hd_cmd_parse refusals ------------------------------------------------------------ */

START_TEST(refuse_malformed)
{
    struct outcome o = parse_n(NULL, 0);
    ASSERT_REFUSED(o, HD_ERR_BAD_REQUEST, false, 0);
    o = parse_n("", 0);
    ASSERT_REFUSED(o, HD_ERR_BAD_REQUEST, false, 0);
    ck_assert_str_eq(o.err.message, "empty command: expected a JSON object");

    refused("   \n", HD_ERR_BAD_REQUEST, false, 0);
    refused("{\"op\":", HD_ERR_BAD_REQUEST, false, 0);
    refused("{\"op\":\"ping\",\"id\":1", HD_ERR_BAD_REQUEST, false, 0);
    refused("{\"op\":\"ping\",\"id\":1} x", HD_ERR_BAD_REQUEST, false, 0);
    refused("{\"op\":\"ping\",\"id\":1}{}", HD_ERR_BAD_REQUEST, false, 0);
    refused("{'op':'ping'}", HD_ERR_BAD_REQUEST, false, 0);
    /* Duplicate keys are refused, even when both say the same thing. */
    refused("{\"op\":\"ping\",\"op\":\"ping\",\"id\":1}", HD_ERR_BAD_REQUEST, false, 0);
    refused("{\"op\":\"publish\",\"topic\":\"a\",\"topic\":\"$b\"}", HD_ERR_BAD_REQUEST, false, 0);
    /* An id out of int64 range is a parse error, so it cannot be echoed. */
    refused("{\"op\":\"ping\",\"id\":99999999999999999999}", HD_ERR_BAD_REQUEST, false, 0);

    o = parse("{\"op\":");
    ck_assert_msg(strncmp(o.err.message, "invalid JSON at byte ", 21) == 0, "%s", o.err.message);
}
END_TEST

START_TEST(refuse_non_object)
{
    const char *roots[] = {
        "42", "\"ping\"", "null", "true", "1.5", "[]", "[{\"op\":\"ping\",\"id\":1}]"};
    for (size_t i = 0; i < sizeof(roots) / sizeof(roots[0]); i++) {
        struct outcome o = parse(roots[i]);
        ASSERT_REFUSED(o, HD_ERR_BAD_REQUEST, false, 0);
        ck_assert_str_eq(o.err.message, "command must be a JSON object");
    }
}
END_TEST

START_TEST(refuse_bad_bytes)
{
    /* Invalid UTF-8 in a string, raw and as an overlong encoding of '/'. */
    refused("{\"op\":\"ping\",\"id\":1,\"x\":\"\xff\"}", HD_ERR_BAD_REQUEST, false, 0);
    refused("{\"op\":\"ping\",\"id\":1,\"x\":\"\xc0\xaf\"}", HD_ERR_BAD_REQUEST, false, 0);
    refused("{\"op\":\"ping\",\"id\":1,\"x\":\"\xed\xa0\x80\"}", HD_ERR_BAD_REQUEST, false, 0);
    refused("\xef\xbb\xbf{\"op\":\"ping\"}", HD_ERR_BAD_REQUEST, false, 0); /* BOM */
    /* A lone surrogate escape is not a character. */
    refused("{\"op\":\"ping\",\"x\":\"\\ud800\"}", HD_ERR_BAD_REQUEST, false, 0);

    /* Raw NUL bytes: inside a string, after the object, and alone. */
    static const char in_str[] = "{\"op\":\"ping\",\"x\":\"a\0b\"}";
    struct outcome o = parse_n(in_str, sizeof(in_str) - 1);
    ASSERT_REFUSED(o, HD_ERR_BAD_REQUEST, false, 0);
    static const char after[] = "{\"op\":\"ping\"}\0";
    o = parse_n(after, sizeof(after) - 1);
    ASSERT_REFUSED(o, HD_ERR_BAD_REQUEST, false, 0);
    o = parse_n("\0", 1);
    ASSERT_REFUSED(o, HD_ERR_BAD_REQUEST, false, 0);

    /* The message quotes only printable ASCII of what jansson saw. */
    o = parse("{\"op\":\"\x01\xfe\"}");
    ck_assert_int_ne(o.rc, HD_ERR_NONE);
    for (const char *p = o.err.message; *p; p++)
        ck_assert_msg(*p >= 0x20 && *p < 0x7f, "byte 0x%02x in message", (unsigned char)*p);
}
END_TEST

START_TEST(refuse_deep_nesting)
{
    /* jansson bounds depth at JSON_PARSER_MAX_DEPTH (2048); one deeper is a bad request. */
    size_t depth = 2049;
    size_t cap = 64 + 2 * depth;
    char *buf = malloc(cap);
    ck_assert_ptr_nonnull(buf);
    size_t n = (size_t)snprintf(buf, cap, "{\"op\":\"publish\",\"id\":5,\"topic\":\"t\",\"data\":");
    for (size_t i = 0; i < depth - 1; i++)
        buf[n++] = '[';
    for (size_t i = 0; i < depth - 1; i++)
        buf[n++] = ']';
    buf[n++] = '}';
    struct outcome o = parse_n(buf, n);
    ASSERT_REFUSED(o, HD_ERR_BAD_REQUEST, false, 0);

    /* 2048 levels in all (the command object plus 2047 arrays) still parse. */
    n = (size_t)snprintf(buf, cap, "{\"op\":\"publish\",\"id\":5,\"topic\":\"t\",\"data\":");
    for (size_t i = 0; i < depth - 2; i++)
        buf[n++] = '[';
    for (size_t i = 0; i < depth - 2; i++)
        buf[n++] = ']';
    buf[n++] = '}';
    o = parse_n(buf, n);
    ck_assert_int_eq(o.rc, 0);
    char *dump = data_text(o.cmd);
    ck_assert_uint_eq(strlen(dump), 2 * (depth - 2));
    free(dump);
    hd_cmd_clear(o.cmd);
    free(buf);
}
END_TEST

START_TEST(refuse_bad_id)
{
    refused("{\"op\":\"ping\",\"id\":\"1\"}", HD_ERR_BAD_REQUEST, false, 0);
    refused("{\"op\":\"ping\",\"id\":1.5}", HD_ERR_BAD_REQUEST, false, 0);
    refused("{\"op\":\"ping\",\"id\":1.0}", HD_ERR_BAD_REQUEST, false, 0);
    refused("{\"op\":\"ping\",\"id\":1e3}", HD_ERR_BAD_REQUEST, false, 0);
    refused("{\"op\":\"ping\",\"id\":null}", HD_ERR_BAD_REQUEST, false, 0);
    refused("{\"op\":\"ping\",\"id\":true}", HD_ERR_BAD_REQUEST, false, 0);
    refused("{\"op\":\"ping\",\"id\":[1]}", HD_ERR_BAD_REQUEST, false, 0);
    /* The id is checked before the op, so a bad id wins over a bad op. */
    struct outcome o = parse("{\"op\":\"frobnicate\",\"id\":\"x\"}");
    ASSERT_REFUSED(o, HD_ERR_BAD_REQUEST, false, 0);
    ck_assert_str_eq(o.err.message, "\"id\" must be an integer");
}
END_TEST

START_TEST(refuse_op)
{
    struct outcome o = parse("{\"id\":7}");
    ASSERT_REFUSED(o, HD_ERR_BAD_REQUEST, true, 7);
    ck_assert_str_eq(o.err.message, "missing \"op\"");

    o = parse("{\"id\":7,\"op\":1}");
    ASSERT_REFUSED(o, HD_ERR_BAD_REQUEST, true, 7);
    ck_assert_str_eq(o.err.message, "\"op\" must be a string");
    refused("{\"id\":7,\"op\":null}", HD_ERR_BAD_REQUEST, true, 7);
    refused("{\"id\":7,\"op\":[\"ping\"]}", HD_ERR_BAD_REQUEST, true, 7);

    o = parse("{\"op\":\"frobnicate\",\"id\":-3}");
    ASSERT_REFUSED(o, HD_ERR_UNKNOWN_OP, true, -3);
    ck_assert_str_eq(o.err.message,
                     "unknown op \"frobnicate\": expected subscribe, unsubscribe, publish or ping");
    refused("{\"op\":\"PING\"}", HD_ERR_UNKNOWN_OP, false, 0);
    refused("{\"op\":\"\"}", HD_ERR_UNKNOWN_OP, false, 0);
    refused("{\"op\":\"pin\"}", HD_ERR_UNKNOWN_OP, false, 0);
    refused("{\"op\":\"pingg\"}", HD_ERR_UNKNOWN_OP, false, 0);
    refused("{\"op\":\"ping\\u0000\",\"id\":2}", HD_ERR_UNKNOWN_OP, true, 2);

    /* The echo is bounded to 32 bytes of printable ASCII. */
    char *long_op = repeat('z', 300);
    char *frame = fmt("{\"op\":\"%s\"}", long_op);
    o = parse(frame);
    ASSERT_REFUSED(o, HD_ERR_UNKNOWN_OP, false, 0);
    ck_assert_msg(strstr(o.err.message, "\"zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz...\"") != NULL, "%s",
                  o.err.message);
    ck_assert_ptr_null(strstr(o.err.message, "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"));
    free(frame);
    free(long_op);
    o = parse("{\"op\":\"a\\n\\\"b\\u00e9\"}");
    ASSERT_REFUSED(o, HD_ERR_UNKNOWN_OP, false, 0);
    ck_assert_msg(strncmp(o.err.message, "unknown op \"a?\"b??\"", 19) == 0, "%s", o.err.message);
}
END_TEST

START_TEST(refuse_topic)
{
    static const char *const ops[] = {"subscribe", "unsubscribe", "publish"};
    for (size_t i = 0; i < 3; i++) {
        char frame[128];
        snprintf(frame, sizeof(frame), "{\"op\":\"%s\",\"id\":11}", ops[i]);
        struct outcome o = parse(frame);
        ASSERT_REFUSED(o, HD_ERR_BAD_REQUEST, true, 11);
        ck_assert_str_eq(o.err.message, "missing \"topic\"");

        snprintf(frame, sizeof(frame), "{\"op\":\"%s\",\"id\":11,\"topic\":5}", ops[i]);
        o = parse(frame);
        ASSERT_REFUSED(o, HD_ERR_BAD_REQUEST, true, 11);
        ck_assert_str_eq(o.err.message, "\"topic\" must be a string");

        snprintf(frame, sizeof(frame), "{\"op\":\"%s\",\"id\":11,\"topic\":null}", ops[i]);
        refused(frame, HD_ERR_BAD_REQUEST, true, 11);

        static const char *const bad[] = {"",    "a..b",     ".a",   "a.",        "a b",
                                          "a/b", "chat.>.x", "a.b*", "a\\u0000b", "\\u00e9"};
        for (size_t j = 0; j < sizeof(bad) / sizeof(bad[0]); j++) {
            snprintf(frame, sizeof(frame), "{\"op\":\"%s\",\"id\":12,\"topic\":\"%s\"}", ops[i],
                     bad[j]);
            refused(frame, HD_ERR_INVALID_TOPIC, true, 12);
        }
    }

    struct outcome o = parse("{\"op\":\"subscribe\",\"topic\":\"a..b\"}");
    ck_assert_msg(strncmp(o.err.message, "invalid pattern \"a..b\"", 22) == 0, "%s", o.err.message);

    /* Topics over 255 bytes. */
    char *t = repeat('a', 256);
    char *frame = fmt("{\"op\":\"publish\",\"id\":1,\"topic\":\"%s\"}", t);
    refused(frame, HD_ERR_INVALID_TOPIC, true, 1);
    free(frame);
    frame = fmt("{\"op\":\"subscribe\",\"id\":1,\"topic\":\"%s\"}", t);
    refused(frame, HD_ERR_INVALID_TOPIC, true, 1);
    free(frame);
    free(t);
}
END_TEST

START_TEST(refuse_publish_topic)
{
    struct outcome o = parse("{\"op\":\"publish\",\"id\":3,\"topic\":\"chat.*\"}");
    ASSERT_REFUSED(o, HD_ERR_INVALID_TOPIC, true, 3);
    ck_assert_str_eq(o.err.message,
                     "invalid topic \"chat.*\": wildcards are only allowed when subscribing");
    refused("{\"op\":\"publish\",\"id\":3,\"topic\":\">\"}", HD_ERR_INVALID_TOPIC, true, 3);
    o = parse("{\"op\":\"publish\",\"id\":3,\"topic\":\"a..b\"}");
    ck_assert_msg(strncmp(o.err.message, "invalid topic \"a..b\"", 20) == 0, "%s", o.err.message);

    o = parse("{\"op\":\"publish\",\"id\":3,\"topic\":\"$sys.stats\",\"data\":1}");
    ASSERT_REFUSED(o, HD_ERR_FORBIDDEN, true, 3);
    ck_assert_str_eq(o.err.message, "topics starting with $ are reserved for the server");
    refused("{\"op\":\"publish\",\"topic\":\"$x\"}", HD_ERR_FORBIDDEN, false, 0);
    /* "$" followed by something that is not a topic is simply invalid. */
    refused("{\"op\":\"publish\",\"topic\":\"$\"}", HD_ERR_INVALID_TOPIC, false, 0);
}
END_TEST

START_TEST(refuse_event_kind)
{
    char *k65 = repeat('k', 65);
    char *frame = fmt("{\"op\":\"publish\",\"id\":9,\"topic\":\"t\",\"event\":\"%s\"}", k65);
    struct outcome o = parse(frame);
    ASSERT_REFUSED(o, HD_ERR_BAD_REQUEST, true, 9);
    ck_assert_msg(strncmp(o.err.message, "invalid event kind \"", 20) == 0, "%s", o.err.message);
    free(frame);
    free(k65);

    static const char *const bad[] = {"", "a b", "a/b", "a\\\"b", "caf\\u00e9", "a\\u0000", "x@y"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char f[128];
        snprintf(f, sizeof(f), "{\"op\":\"publish\",\"id\":9,\"topic\":\"t\",\"event\":\"%s\"}",
                 bad[i]);
        refused(f, HD_ERR_BAD_REQUEST, true, 9);
    }
    o = parse("{\"op\":\"publish\",\"id\":9,\"topic\":\"t\",\"event\":7}");
    ASSERT_REFUSED(o, HD_ERR_BAD_REQUEST, true, 9);
    ck_assert_str_eq(o.err.message, "\"event\" must be a string");
    refused("{\"op\":\"publish\",\"id\":9,\"topic\":\"t\",\"event\":null}", HD_ERR_BAD_REQUEST,
            true, 9);
}
END_TEST

START_TEST(refuse_since)
{
    struct outcome o = parse("{\"op\":\"subscribe\",\"id\":4,\"topic\":\"a\",\"since\":12}");
    ASSERT_REFUSED(o, HD_ERR_BAD_REQUEST, true, 4);
    ck_assert_str_eq(o.err.message, "\"since\" must be a string");
    refused("{\"op\":\"subscribe\",\"id\":4,\"topic\":\"a\",\"since\":null}", HD_ERR_BAD_REQUEST,
            true, 4);
    refused("{\"op\":\"subscribe\",\"id\":4,\"topic\":\"a\",\"since\":\"x\\u0000y\"}",
            HD_ERR_BAD_REQUEST, true, 4);
    char *s = repeat('0', 256);
    char *frame = fmt("{\"op\":\"subscribe\",\"id\":4,\"topic\":\"a\",\"since\":\"%s\"}", s);
    refused(frame, HD_ERR_BAD_REQUEST, true, 4);
    free(frame);
    free(s);
    /* The topic is checked before since. */
    refused("{\"op\":\"subscribe\",\"id\":4,\"topic\":\"a..\",\"since\":12}", HD_ERR_INVALID_TOPIC,
            true, 4);
}
END_TEST

/* ---- hd_cmd_parse accepts ------------------------------------------------------------- */

START_TEST(accept_subscribe)
{
    struct outcome o = parse("{\"op\":\"subscribe\",\"id\":1,\"topic\":\"chat.>\",\"since\":"
                             "\"00000000000000a0\"}");
    ck_assert_int_eq(o.rc, 0);
    ck_assert_int_eq(o.cmd->op, HD_OP_SUBSCRIBE);
    ck_assert(o.cmd->has_id);
    ck_assert_int_eq(o.cmd->id, 1);
    ck_assert_str_eq(o.cmd->topic, "chat.>");
    ck_assert_str_eq(o.cmd->since, "00000000000000a0");
    hd_cmd_clear(o.cmd);
    ck_assert_ptr_null(o.cmd->root);
    hd_cmd_clear(o.cmd); /* twice is harmless */

    o = parse("  {\"topic\":\"user.42.*\",\"op\":\"subscribe\"}\n");
    ck_assert_int_eq(o.rc, 0);
    ck_assert(!o.cmd->has_id);
    ck_assert_str_eq(o.cmd->topic, "user.42.*");
    ck_assert_ptr_null(o.cmd->since);
    hd_cmd_clear(o.cmd);

    /* Any since string is accepted (unknown ids mean a gap later), up to 255 bytes. */
    static const char *const since[] = {"all", "latest", "", "garbage!", "\\u00e9\\n"};
    for (size_t i = 0; i < sizeof(since) / sizeof(since[0]); i++) {
        char f[128];
        snprintf(f, sizeof(f), "{\"op\":\"subscribe\",\"topic\":\">\",\"since\":\"%s\"}", since[i]);
        o = parse(f);
        ck_assert_msg(o.rc == 0, "%s: %s", f, o.err.message);
        ck_assert_ptr_nonnull(o.cmd->since);
        hd_cmd_clear(o.cmd);
    }
    char *s = repeat('f', 255);
    char *frame = fmt("{\"op\":\"subscribe\",\"topic\":\"a\",\"since\":\"%s\"}", s);
    o = parse(frame);
    ck_assert_int_eq(o.rc, 0);
    ck_assert_str_eq(o.cmd->since, s);
    hd_cmd_clear(o.cmd);
    free(frame);
    free(s);

    /* Reserved topics may be subscribed to; extra members are ignored. */
    o = parse("{\"op\":\"subscribe\",\"topic\":\"$sys.>\",\"data\":1,\"event\":\"bad kind\"}");
    ck_assert_int_eq(o.rc, 0);
    ck_assert_str_eq(o.cmd->topic, "$sys.>");
    hd_cmd_clear(o.cmd);
}
END_TEST

START_TEST(accept_unsubscribe_ping)
{
    struct outcome o = parse("{\"op\":\"unsubscribe\",\"id\":2,\"topic\":\"chat.>\",\"since\":5}");
    ck_assert_int_eq(o.rc, 0);
    ck_assert_int_eq(o.cmd->op, HD_OP_UNSUBSCRIBE);
    ck_assert_int_eq(o.cmd->id, 2);
    ck_assert_str_eq(o.cmd->topic, "chat.>");
    ck_assert_ptr_null(o.cmd->since); /* since does not belong to unsubscribe: ignored */
    hd_cmd_clear(o.cmd);

    o = parse("{\"op\":\"ping\",\"id\":4}");
    ck_assert_int_eq(o.rc, 0);
    ck_assert_int_eq(o.cmd->op, HD_OP_PING);
    ck_assert(o.cmd->has_id);
    ck_assert_int_eq(o.cmd->id, 4);
    hd_cmd_clear(o.cmd);

    o = parse("{\"op\":\"ping\",\"topic\":\"not..checked\"}");
    ck_assert_int_eq(o.rc, 0);
    ck_assert(!o.cmd->has_id);
    hd_cmd_clear(o.cmd);

    o = parse("{\"op\":\"ping\",\"id\":-9223372036854775808}");
    ck_assert_int_eq(o.rc, 0);
    ck_assert(o.cmd->id == INT64_MIN);
    hd_cmd_clear(o.cmd);
    o = parse("{\"op\":\"ping\",\"id\":9223372036854775807}");
    ck_assert_int_eq(o.rc, 0);
    ck_assert(o.cmd->id == INT64_MAX);
    hd_cmd_clear(o.cmd);
}
END_TEST

START_TEST(accept_publish)
{
    struct outcome o = parse("{\"op\":\"publish\",\"id\":3,\"topic\":\"chat.room1\",\"event\":"
                             "\"login\",\"data\":{\"from\":\"alice\",\"text\":\"hi\"}}");
    ck_assert_int_eq(o.rc, 0);
    ck_assert_int_eq(o.cmd->op, HD_OP_PUBLISH);
    ck_assert_int_eq(o.cmd->id, 3);
    ck_assert_str_eq(o.cmd->topic, "chat.room1");
    ck_assert_str_eq(o.cmd->event, "login");
    char *d = data_text(o.cmd);
    ck_assert_str_eq(d, "{\"from\":\"alice\",\"text\":\"hi\"}");
    free(d);
    hd_cmd_clear(o.cmd);

    /* Defaults: event "message", data null. */
    o = parse("{\"op\":\"publish\",\"topic\":\"logins\"}");
    ck_assert_int_eq(o.rc, 0);
    ck_assert(!o.cmd->has_id);
    ck_assert_str_eq(o.cmd->event, "message");
    d = data_text(o.cmd);
    ck_assert_str_eq(d, "null");
    free(d);
    hd_cmd_clear(o.cmd);

    char *k64 = repeat('K', 64);
    char *frame = fmt("{\"op\":\"publish\",\"topic\":\"t\",\"event\":\"%s\"}", k64);
    o = parse(frame);
    ck_assert_int_eq(o.rc, 0);
    ck_assert_str_eq(o.cmd->event, k64);
    hd_cmd_clear(o.cmd);
    free(frame);
    free(k64);

    o = parse("{\"op\":\"publish\",\"topic\":\"t\",\"event\":\"a.B-9_:z\"}");
    ck_assert_int_eq(o.rc, 0);
    ck_assert_str_eq(o.cmd->event, "a.B-9_:z");
    hd_cmd_clear(o.cmd);

    /* Data of every JSON type, serialized back as it came. */
    static const char *const data[] = {
        "{}",
        "{\"a\":[1,2,{\"b\":null}]}",
        "[]",
        "[1,\"x\",true]",
        "\"hello\"",
        "\"\"",
        "0",
        "-17",
        "9223372036854775807",
        "1.5",
        "0.1",
        "-2.5e-07",
        "true",
        "false",
        "null",
        "\"caf\xc3\xa9 \\u0000 \\\"q\\\" \\n\"",
    };
    for (size_t i = 0; i < sizeof(data) / sizeof(data[0]); i++) {
        char f[256];
        snprintf(f, sizeof(f), "{\"op\":\"publish\",\"id\":1,\"topic\":\"t\",\"data\":%s}",
                 data[i]);
        o = parse(f);
        ck_assert_msg(o.rc == 0, "%s: %s", f, o.err.message);
        d = data_text(o.cmd);
        ck_assert_str_eq(d, data[i]);
        free(d);
        hd_cmd_clear(o.cmd);
    }
    o = parse("{\"op\":\"publish\",\"topic\":\"t\",\"data\":null}");
    ck_assert_int_eq(o.rc, 0);
    d = data_text(o.cmd);
    ck_assert_str_eq(d, "null");
    free(d);
    hd_cmd_clear(o.cmd);

    /* Not canonical (spaces, an escape, a real): jansson reads it and the data is dumped. */
    o = parse("{ \"op\": \"publish\", \"topic\": \"t\", \"data\": {\"a\": [1.50, \"\\u0041\"]} }");
    ck_assert_int_eq(o.rc, 0);
    ck_assert_ptr_nonnull(o.cmd->root);
    d = data_text(o.cmd);
    ck_assert_str_eq(d, "{\"a\":[1.5,\"A\"]}");
    free(d);
    hd_cmd_clear(o.cmd);
}
END_TEST

/* Pseudo-random frames and mutations of valid ones: never a crash, always a definite answer. */
START_TEST(robust_random)
{
    static const char *const seeds[] = {
        "{\"op\":\"publish\",\"id\":3,\"topic\":\"chat.room1\",\"event\":\"m\",\"data\":[1,{}]}",
        "{\"op\":\"subscribe\",\"id\":1,\"topic\":\"chat.>\",\"since\":\"all\"}",
        "{\"op\":\"ping\",\"id\":4}",
    };
    uint64_t x = 0x9e3779b97f4a7c15u;
    char buf[256];
    for (int round = 0; round < 20000; round++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        size_t len;
        if (round % 2) {
            const char *s = seeds[x % 3];
            len = strlen(s);
            memcpy(buf, s, len);
            for (int k = 0; k < 1 + (int)(x >> 60); k++) {
                x = x * 6364136223846793005u + 1442695040888963407u;
                buf[(x >> 33) % len] = (char)(x >> 24);
            }
        } else {
            len = (x >> 40) % sizeof(buf);
            for (size_t k = 0; k < len; k++) {
                x = x * 6364136223846793005u + 1442695040888963407u;
                buf[k] = (char)(x >> 56);
            }
        }
        struct hd_cmd cmd;
        struct hd_error err = {.code = HD_ERR_NONE};
        int rc = hd_cmd_parse(buf, len, &cmd, &err);
        if (rc == 0) {
            if (cmd.op != HD_OP_PING)
                ck_assert_ptr_nonnull(cmd.topic);
            hd_cmd_clear(&cmd);
            continue;
        }
        ck_assert_int_eq(rc, (int)err.code);
        ck_assert_int_ne(err.code, HD_ERR_NONE);
        size_t elen = 0;
        char *e = hd_encode_error(true, cmd.has_id, cmd.id, err.code, err.message, &elen);
        ck_assert_ptr_nonnull(e);
        json_error_t jerr;
        json_t *back = json_loadb(e, elen, 0, &jerr);
        ck_assert_msg(back != NULL, "not JSON: %s", e);
        ck_assert_str_eq(json_string_value(json_object_get(back, "message")), err.message);
        json_decref(back);
        free(e);
    }
}
END_TEST

/* ---- encoders ------------------------------------------------------------------------- */

#define ASSERT_ENCODED(expr, want)                                                                 \
    do {                                                                                           \
        size_t len_ = 12345;                                                                       \
        char *got_ = (expr);                                                                       \
        ck_assert_ptr_nonnull(got_);                                                               \
        ck_assert_str_eq(got_, (want));                                                            \
        ck_assert_uint_eq(len_, strlen(want));                                                     \
        free(got_);                                                                                \
    } while (0)

START_TEST(encode_replies)
{
    ASSERT_ENCODED(hd_encode_ok_subscribe(true, 1, "chat.>", 0, false, "00000000000000ff", &len_),
                   "{\"type\":\"ok\",\"id\":1,\"topic\":\"chat.>\",\"replayed\":0,\"gap\":false,"
                   "\"next\":\"00000000000000ff\"}");
    ASSERT_ENCODED(hd_encode_ok_subscribe(false, 1, "a.*", 12, true, "0000000000000001", &len_),
                   "{\"type\":\"ok\",\"topic\":\"a.*\",\"replayed\":12,\"gap\":true,"
                   "\"next\":\"0000000000000001\"}");
    ASSERT_ENCODED(hd_encode_gap("a.*", "0000000000000002", &len_),
                   "{\"type\":\"gap\",\"topic\":\"a.*\",\"next\":\"0000000000000002\"}");
    ASSERT_ENCODED(hd_encode_unsubscribed("a.>", HD_ERR_FORBIDDEN, "no \"more\"", &len_),
                   "{\"type\":\"unsubscribed\",\"topic\":\"a.>\",\"code\":\"forbidden\","
                   "\"message\":\"no \\\"more\\\"\"}");
    ASSERT_ENCODED(hd_encode_ok(true, 2, &len_), "{\"type\":\"ok\",\"id\":2}");
    ASSERT_ENCODED(hd_encode_ok(false, 2, &len_), "{\"type\":\"ok\"}");
    ASSERT_ENCODED(hd_encode_ok_publish(true, 3, "00000000000000ff", 7, false, &len_),
                   "{\"type\":\"ok\",\"id\":3,\"event_id\":\"00000000000000ff\",\"receivers\":7}");
    ASSERT_ENCODED(hd_encode_ok_publish(true, 3, "00000000000000ff", 7, true, &len_),
                   "{\"type\":\"ok\",\"id\":3,\"event_id\":\"00000000000000ff\",\"receivers\":7,"
                   "\"duplicate\":true}");
    ASSERT_ENCODED(hd_encode_ok_publish(false, 0, "0000000000000001", 0, false, &len_),
                   "{\"type\":\"ok\",\"event_id\":\"0000000000000001\",\"receivers\":0}");
    ASSERT_ENCODED(hd_encode_pong(true, 4, &len_), "{\"type\":\"pong\",\"id\":4}");
    ASSERT_ENCODED(hd_encode_pong(false, 4, &len_), "{\"type\":\"pong\"}");
    ASSERT_ENCODED(hd_encode_pong(true, INT64_MIN, &len_),
                   "{\"type\":\"pong\",\"id\":-9223372036854775808}");
    ASSERT_ENCODED(hd_encode_pong(true, INT64_MAX, &len_),
                   "{\"type\":\"pong\",\"id\":9223372036854775807}");
    ASSERT_ENCODED(hd_encode_welcome("s-1f2e", "0.1.0", 25, 65536, &len_),
                   "{\"type\":\"welcome\",\"session\":\"s-1f2e\",\"server\":\"heraldd/0.1.0\","
                   "\"heartbeat\":25,\"max_event_bytes\":65536}");
    ASSERT_ENCODED(
        hd_encode_publish_reply("000000000000002a", "chat.room1", 1764288000123, 3, false, &len_),
        "{\"id\":\"000000000000002a\",\"topic\":\"chat.room1\",\"time\":1764288000123,"
        "\"receivers\":3}");
    ASSERT_ENCODED(
        hd_encode_publish_reply("000000000000002a", "chat.room1", 1764288000123, 3, true, &len_),
        "{\"id\":\"000000000000002a\",\"topic\":\"chat.room1\",\"time\":1764288000123,"
        "\"receivers\":3,\"duplicate\":true}");
    /* len may be NULL. */
    char *s = hd_encode_ok(true, 5, NULL);
    ck_assert_str_eq(s, "{\"type\":\"ok\",\"id\":5}");
    free(s);
}
END_TEST

START_TEST(encode_errors)
{
    ASSERT_ENCODED(hd_encode_error(true, true, 7, HD_ERR_UNKNOWN_OP, "unknown op \"x\"", &len_),
                   "{\"type\":\"error\",\"id\":7,\"code\":\"unknown_op\","
                   "\"message\":\"unknown op \\\"x\\\"\"}");
    ASSERT_ENCODED(hd_encode_error(true, false, 7, HD_ERR_BAD_REQUEST, "bad", &len_),
                   "{\"type\":\"error\",\"id\":null,\"code\":\"bad_request\",\"message\":\"bad\"}");
    /* HTTP bodies never carry an id, even when one is known. */
    ASSERT_ENCODED(hd_encode_error(false, true, 7, HD_ERR_RATE_LIMITED, "slow down", &len_),
                   "{\"type\":\"error\",\"code\":\"rate_limited\",\"message\":\"slow down\"}");
    ASSERT_ENCODED(hd_encode_error(false, false, 0, HD_ERR_NOT_FOUND, NULL, &len_),
                   "{\"type\":\"error\",\"code\":\"not_found\",\"message\":\"\"}");

    /* Quotes, backslashes, control bytes, DEL, UTF-8 and invalid bytes, parsed back. */
    const char *msg = "q\"b\\n\n\r\t\b\f\x01\x1f\x7f caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"
                      " bad:\xff\xc3(\xed\xa0\x80|\xc0\xaf.";
    size_t len = 0;
    char *e = hd_encode_error(true, true, 1, HD_ERR_BAD_REQUEST, msg, &len);
    ck_assert_ptr_nonnull(e);
    ck_assert_uint_eq(strlen(e), len);
    json_error_t jerr;
    json_t *j = json_loadb(e, len, 0, &jerr);
    ck_assert_msg(j != NULL, "%s: %s", e, jerr.text);
    ck_assert_str_eq(json_string_value(json_object_get(j, "message")),
                     "q\"b\\n\n\r\t\b\f\x01\x1f\x7f caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"
                     " bad:\xef\xbf\xbd\xef\xbf\xbd(\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd|"
                     "\xef\xbf\xbd\xef\xbf\xbd.");
    json_decref(j);
    ck_assert_msg(strstr(e, "\\u0001\\u001f\\u007f") != NULL, "%s", e);
    ck_assert_msg(strstr(e, "\\n\\r\\t\\b\\f") != NULL, "%s", e);
    free(e);

    /* Other user-supplied strings are escaped too. */
    e = hd_encode_welcome("a\"b", "1\\2", 0, 0, &len);
    j = json_loadb(e, len, 0, &jerr);
    ck_assert_ptr_nonnull(j);
    ck_assert_str_eq(json_string_value(json_object_get(j, "session")), "a\"b");
    ck_assert_str_eq(json_string_value(json_object_get(j, "server")), "heraldd/1\\2");
    json_decref(j);
    free(e);
}
END_TEST

START_TEST(encode_event)
{
    static const char want[] = "{\"type\":\"event\",\"topic\":\"chat.room1\",\"id\":"
                               "\"00000000000000a0\",\"time\":1764288000123,\"event\":\"message\","
                               "\"data\":{\"from\":\"alice\",\"text\":\"hi\"}}";
    const char *data = "{\"from\":\"alice\",\"text\":\"hi\"}";
    char buf[512];
    size_t n = hd_encode_event(buf, sizeof(buf), "chat.room1", "00000000000000a0", 1764288000123,
                               "message", data, strlen(data));
    ck_assert_uint_eq(n, sizeof(want) - 1);
    ck_assert_str_eq(buf, want);

    /* Measuring with no buffer. */
    ck_assert_uint_eq(hd_encode_event(NULL, 0, "chat.room1", "00000000000000a0", 1764288000123,
                                      "message", data, strlen(data)),
                      n);

    /* Every too-small capacity: needed length returned, prefix written, canary intact. */
    for (size_t cap = 1; cap <= n + 1; cap++) {
        char small[sizeof(want) + 16];
        memset(small, 0xA5, sizeof(small));
        size_t r = hd_encode_event(small, cap, "chat.room1", "00000000000000a0", 1764288000123,
                                   "message", data, strlen(data));
        ck_assert_uint_eq(r, n);
        ck_assert_uint_eq(strlen(small), cap - 1);
        ck_assert(memcmp(small, want, cap - 1) == 0);
        for (size_t k = cap; k < sizeof(small); k++)
            ck_assert_msg((unsigned char)small[k] == 0xA5, "cap %zu wrote byte %zu", cap, k);
    }
    /* cap 0 writes nothing at all. */
    char c = 'Z';
    ck_assert_uint_eq(hd_encode_event(&c, 0, "t", "0000000000000000", 0, "m", "1", 1),
                      strlen("{\"type\":\"event\",\"topic\":\"t\",\"id\":\"0000000000000000\","
                             "\"time\":0,\"event\":\"m\",\"data\":1}"));
    ck_assert_int_eq(c, 'Z');

    /* Negative time, absent data, and the output parses back. */
    n = hd_encode_event(buf, sizeof(buf), "t", "0000000000000001", -5, "login", NULL, 0);
    ck_assert_str_eq(buf, "{\"type\":\"event\",\"topic\":\"t\",\"id\":\"0000000000000001\","
                          "\"time\":-5,\"event\":\"login\",\"data\":null}");
    json_error_t jerr;
    json_t *j = json_loadb(buf, n, 0, &jerr);
    ck_assert_ptr_nonnull(j);
    ck_assert(json_is_null(json_object_get(j, "data")));
    ck_assert_int_eq(json_integer_value(json_object_get(j, "time")), -5);
    json_decref(j);
}
END_TEST

/* ---- event ids ------------------------------------------------------------------------ */

START_TEST(event_ids)
{
    char id[HD_EVENT_ID_LEN + 1];
    hd_event_id_format(0, id);
    ck_assert_str_eq(id, "0000000000000000");
    hd_event_id_format(0xdeadbeef0badf00du, id);
    ck_assert_str_eq(id, "deadbeef0badf00d");
    hd_event_id_format(UINT64_MAX, id);
    ck_assert_str_eq(id, "ffffffffffffffff");

    uint64_t v = 0x0123456789abcdefu, got = 0;
    char prev[HD_EVENT_ID_LEN + 1];
    hd_event_id_format(0, prev);
    for (int i = 0; i < 1000; i++) {
        v = v * 6364136223846793005u + 1442695040888963407u;
        uint64_t seq = (i % 2) ? v : (uint64_t)i;
        hd_event_id_format(seq, id);
        ck_assert_int_eq(hd_event_id_parse(id, &got), 0);
        ck_assert(got == seq);
        /* Ids sort as strings in sequence order. */
        if (i > 0 && i % 2 == 0)
            ck_assert(strcmp(prev, id) < 0);
        if (i % 2 == 0)
            memcpy(prev, id, sizeof(id));
    }

    got = 42;
    static const char *const bad[] = {"",
                                      "000000000000000",
                                      "00000000000000000",
                                      "DEADBEEF0BADF00D",
                                      "deadbeef0badf00D",
                                      "000000000000000g",
                                      " 000000000000000",
                                      "0x00000000000000",
                                      "-000000000000001",
                                      "00000000000000 1",
                                      "latest",
                                      "all"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(hd_event_id_parse(bad[i], &got) == -EINVAL, "accepted %s", bad[i]);
    ck_assert_int_eq(hd_event_id_parse("00000000\0"
                                       "00000001",
                                       &got),
                     -EINVAL);
    ck_assert_int_eq(hd_event_id_parse(NULL, &got), -EINVAL);
    ck_assert(got == 42);
}
END_TEST

START_TEST(event_kinds)
{
    ck_assert(hd_event_kind_valid("message", 7));
    ck_assert(hd_event_kind_valid("a", 1));
    ck_assert(hd_event_kind_valid("A-z_0.9:x", 9));
    ck_assert(!hd_event_kind_valid("", 0));
    ck_assert(!hd_event_kind_valid(NULL, 3));
    ck_assert(!hd_event_kind_valid("a b", 3));
    ck_assert(!hd_event_kind_valid("a\0b", 3));
    ck_assert(!hd_event_kind_valid("\xc3\xa9", 2));
    char k[66];
    memset(k, 'k', sizeof(k));
    ck_assert(hd_event_kind_valid(k, 64));
    ck_assert(!hd_event_kind_valid(k, 65));
}
END_TEST

/* ---- compact JSON --------------------------------------------------------------------- */

static void dump_is(json_t *v, const char *want)
{
    size_t len = 0;
    char *s = hd_json_dump_compact(v, &len);
    ck_assert_ptr_nonnull(s);
    ck_assert_str_eq(s, want);
    ck_assert_uint_eq(len, strlen(want));
    free(s);
    json_decref(v);
}

/*
 * hd_json_canonical: what it accepts must be exactly what jansson plus hd_json_dump_compact
 * give back; what it refuses includes everything where they would differ or jansson refuses.
 */
START_TEST(json_canonical)
{
    static const char *const yes[] = {
        "{}",
        "[]",
        "\"\"",
        "0",
        "-1",
        "123456789012345678",
        "-123456789012345678",
        "true",
        "false",
        "null",
        "{\"a\":1,\"b\":[true,false,null],\"c\":{\"d\":\"e\"}}",
        "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"",
        "[[[[]]]]",
        "{\"s\":1,\"t\":2,\"p\":\"xxxxxxxxxxxxxxxx\"}",
        "{\"k1\":1,\"k2\":2,\"k3\":3,\"k4\":4,\"k5\":5,\"k6\":6,\"k7\":7,\"k8\":8,\"k9\":9,"
        "\"k10\":10,\"k11\":11,\"k12\":12,\"k13\":13,\"k14\":14,\"k15\":15,\"k16\":16}",
    };
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        size_t n = strlen(yes[i]);
        ck_assert_msg(hd_json_canonical(yes[i], n), "refused %s", yes[i]);
        json_error_t je;
        json_t *j = json_loadb(yes[i], n, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &je);
        ck_assert_msg(j != NULL, "jansson refuses %s", yes[i]);
        size_t dlen = 0;
        char *d = hd_json_dump_compact(j, &dlen);
        ck_assert_str_eq(d, yes[i]);
        free(d);
        json_decref(j);
    }
    static const char *const no[] = {
        "",
        " {}",
        "{} ",
        "{ }",
        "[1, 2]",
        "{\"a\" :1}",
        "\"\\n\"",
        "\"\\u0041\"",
        "\"a\\/b\"",
        "1.0",
        "1e3",
        "1E3",
        "-0",
        "01",
        "-01",
        "1234567890123456789",
        "+1",
        "-",
        "tru",
        "nul",
        "truex",
        "\"\x7f\"",
        "\"\x01\"",
        "\"\xc3\"",
        "\"\xc0\xaf\"",
        "\"\xed\xa0\x80\"",
        "\"\xf4\x90\x80\x80\"",
        "\"\xff\"",
        "{\"a\":1,\"a\":2}",
        "{\"a\":1,}",
        "[1,]",
        "{,}",
        "[",
        "{",
        "\"abc",
        "{\"a\"}",
        "{\"a\":}",
        "{1:2}",
        "[]]",
        "{}{}",
        "nan",
        "{\"k1\":1,\"k2\":2,\"k3\":3,\"k4\":4,\"k5\":5,\"k6\":6,\"k7\":7,\"k8\":8,\"k9\":9,"
        "\"k10\":10,\"k11\":11,\"k12\":12,\"k13\":13,\"k14\":14,\"k15\":15,\"k16\":16,\"k17\":17}",
    };
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
        ck_assert_msg(!hd_json_canonical(no[i], strlen(no[i])), "accepted %s", no[i]);
    ck_assert(!hd_json_canonical(NULL, 0));
    ck_assert(!hd_json_canonical("\"a\0b\"", 5)); /* a raw NUL is not JSON */

    /* 33 levels is one too many for the in-place path (jansson still takes it). */
    char deep[80];
    for (int levels = 32; levels <= 33; levels++) {
        memset(deep, '[', (size_t)levels);
        memset(deep + levels, ']', (size_t)levels);
        ck_assert(hd_json_canonical(deep, 2 * (size_t)levels) == (levels == 32));
    }
}
END_TEST

START_TEST(json_dump)
{
    dump_is(json_null(), "null");
    dump_is(json_true(), "true");
    dump_is(json_false(), "false");
    dump_is(json_integer(-42), "-42");
    dump_is(json_string("x\"\n"), "\"x\\\"\\n\"");
    dump_is(json_stringn("a\0b", 3), "\"a\\u0000b\"");
    /* Reals: shortest form that reads back exactly, and still a real. */
    dump_is(json_real(0.1), "0.1");
    dump_is(json_real(1.0), "1.0");
    dump_is(json_real(-0.0), "-0.0");
    dump_is(json_real(1e300), "1e+300");
    dump_is(json_real(0.1 + 0.2), "0.30000000000000004");
    dump_is(json_real(123456789.125), "123456789.125");
    dump_is(json_pack("{s:i,s:[i,s,n],s:{}}", "b", 1, "a", 2, "z", "c"),
            "{\"b\":1,\"a\":[2,\"z\",null],\"c\":{}}");
    ck_assert_ptr_null(hd_json_dump_compact(NULL, NULL));

    /* Whatever the value, the output parses back to an equal value. */
    const char *doc = "{\"n\":[0,-1,3.25,1e-9,6.02214076e23,-1.7976931348623157e308],"
                      "\"s\":\"\xe2\x82\xac\\u0001\",\"o\":{\"\":[[],{}]},\"t\":true}";
    json_error_t jerr;
    json_t *a = json_loads(doc, 0, &jerr);
    ck_assert_ptr_nonnull(a);
    size_t len = 0;
    char *s = hd_json_dump_compact(a, &len);
    ck_assert_ptr_nonnull(s);
    json_t *b = json_loadb(s, len, 0, &jerr);
    ck_assert_msg(b != NULL, "%s", s);
    ck_assert(json_equal(a, b));
    json_decref(a);
    json_decref(b);
    free(s);
}
END_TEST

static Suite *protocol_suite(void)
{
    Suite *s = suite_create("protocol");
    TCase *tc = tcase_create("errors");
    tcase_add_test(tc, err_table);
    tcase_add_test(tc, error_set_truncates);
    suite_add_tcase(s, tc);

    tc = tcase_create("parse_refusals");
    tcase_add_test(tc, refuse_malformed);
    tcase_add_test(tc, refuse_non_object);
    tcase_add_test(tc, refuse_bad_bytes);
    tcase_add_test(tc, refuse_deep_nesting);
    tcase_add_test(tc, refuse_bad_id);
    tcase_add_test(tc, refuse_op);
    tcase_add_test(tc, refuse_topic);
    tcase_add_test(tc, refuse_publish_topic);
    tcase_add_test(tc, refuse_event_kind);
    tcase_add_test(tc, refuse_since);
    suite_add_tcase(s, tc);

    tc = tcase_create("parse_accepts");
    tcase_add_test(tc, accept_subscribe);
    tcase_add_test(tc, accept_unsubscribe_ping);
    tcase_add_test(tc, accept_publish);
    tcase_add_test(tc, robust_random);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);

    tc = tcase_create("encoders");
    tcase_add_test(tc, encode_replies);
    tcase_add_test(tc, encode_errors);
    tcase_add_test(tc, encode_event);
    tcase_add_test(tc, event_ids);
    tcase_add_test(tc, event_kinds);
    tcase_add_test(tc, json_dump);
    tcase_add_test(tc, json_canonical);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(protocol_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
