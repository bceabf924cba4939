/* SPDX-License-Identifier: MIT */
/*
 * libherald's internal interfaces, shared by its source files and its unit tests and never
 * installed. The pure modules (URL parsing, backoff, pattern matching, wire encoding and
 * decoding, the subscription table with its resume cursors) know nothing of sockets or
 * threads; client.c and api.c put them together around one libwebsockets context.
 * Internal names are `herald__*` (libuv's `uv__` convention) and hidden from the ABI.
 */
#ifndef HERALD_INTERNAL_H
#define HERALD_INTERNAL_H

#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "herald.h"
#include "jsonspan.h"

/* ---- errors (error.c) ------------------------------------------------------------------- */

/*
 * Fills `err` (may be NULL) with status, server code (NULL: none) and a printf-style
 * message truncated to fit, and returns `status` so callers can `return herald__err(...)`.
 */
int herald__err(herald_error *err, int status, const char *server_code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Copies src (any bytes) into dst of `cap` bytes as printable ASCII, for messages. */
void herald__sanitize(char *dst, size_t cap, const char *src, size_t len);

/* ---- options (options.c) ---------------------------------------------------------------- */

#define HERALD__DEFAULT_CONNECT_TIMEOUT_MS 10000

/* The options object behind the opaque herald_options; strings are owned. */
struct herald_options {
    char *token, *ca_file;
    bool insecure;
    int connect_timeout_ms;
    bool retry_first_connect;
    unsigned backoff_initial_ms, backoff_max_ms;
    size_t max_queued_events, max_queued_bytes, max_pending;
    herald_event_fn on_event;
    void *user;
    bool keep_lws_log;
};

void herald__options_defaults(struct herald_options *o);
/* Makes `dst` a deep copy of `src` (NULL: the defaults). Returns 0 or HERALD_E_NOMEM (then
 * `dst` holds nothing to free). */
int herald__options_copy(struct herald_options *dst, const struct herald_options *src);
/* Frees the strings `o` owns. */
void herald__options_clear(struct herald_options *o);
/* Checks a bearer token: 1-4096 printable ASCII bytes without spaces. Returns 0 or
 * HERALD_E_INVALID with a sentence in `err` (may be NULL). */
int herald__check_token(const char *t, herald_error *err);

/* ---- URLs (url.c) ----------------------------------------------------------------------- */

#define HERALD__HOST_MAX 253
#define HERALD__DEFAULT_PORT 7070 /* heraldd's, for URLs typed without a scheme */
#define HERALD__PATH_MAX 1024

struct herald__url {
    bool tls;
    char host[HERALD__HOST_MAX + 1]; /* without IPv6 brackets */
    int port;
    char path[HERALD__PATH_MAX + 1];        /* WebSocket path and query, starts with '/' */
    char prefix[HERALD__PATH_MAX + 1];      /* path before "/v1/ws" for the HTTP endpoints */
    char query[HERALD__PATH_MAX + 1];       /* the query without '?', also sent over HTTP */
    char host_header[HERALD__HOST_MAX + 9]; /* host[:port], IPv6 in brackets */
};

/*
 * Parses ws://, wss://, http:// or https:// URLs: host (name, IPv4 or [IPv6]), optional
 * port 1-65535, optional path and query. Without a scheme (no "://"), HOST[:PORT][/PATH] is
 * taken as ws:// with port 7070 unless given. A ws(s) path names the WebSocket endpoint (default
 * /v1/ws; the HTTP endpoints live under what precedes "/v1/ws"); an http(s) path names the
 * server's base (the WebSocket is at base + "/v1/ws"). Refuses user info, fragments,
 * whitespace and control bytes and anything longer than the fields. Returns 0 or
 * HERALD_E_INVALID with a sentence in `err`.
 */
int herald__url_parse(const char *url, struct herald__url *u, herald_error *err);

#define HERALD__URL_LIST_MAX 16

/*
 * Parses a comma-separated list of 1-16 URLs (spaces around the commas ignored; a comma
 * inside a URL must be written %2C), each as herald__url_parse does. On success *out is a
 * malloc'd array of *n URLs. Returns 0, HERALD_E_INVALID (an empty entry, a bad URL, too
 * many) or HERALD_E_NOMEM, with *out NULL.
 */
int herald__url_list_parse(const char *list, struct herald__url **out, size_t *n,
                           herald_error *err);

/* The URL a new connection attempt uses after `cur`: the next one, round the list. */
size_t herald__url_next(size_t cur, size_t n);

/* ---- backoff (backoff.c) ---------------------------------------------------------------- */

struct herald__backoff {
    unsigned initial_ms, max_ms;
    unsigned attempt; /* delays handed out since the last reset */
    uint64_t rng;     /* xorshift64* state, never 0 */
};

/* Sets up the schedule; initial 0 becomes 1 ms, max below initial becomes initial. */
void herald__backoff_init(struct herald__backoff *b, unsigned initial_ms, unsigned max_ms,
                          uint64_t seed);
/* The next delay: base = min(max, initial * 2^attempt), jittered into [base/2, base]. */
unsigned herald__backoff_next(struct herald__backoff *b);
/* Starts over at the initial delay (after a connection that stayed up). */
void herald__backoff_reset(struct herald__backoff *b);

/* ---- topics and patterns (match.c) ------------------------------------------------------ */

/* True when `topic` matches `pattern` (`*` one segment, final `>` one or more; a wildcard in
 * the first segment does not match a `$` topic), the server's rule. */
bool herald__pattern_match(const char *pattern, const char *topic);

/* ---- wire format (wire.c) ----------------------------------------------------------------- */

enum herald__frame_type {
    HERALD__F_WELCOME,
    HERALD__F_OK,
    HERALD__F_PONG,
    HERALD__F_ERROR,
    HERALD__F_EVENT,
    HERALD__F_OTHER /* a type this client does not know: ignored, for forward compatibility */
};

/* One parsed server frame. Strings borrow from `root`; release with herald__frame_clear. */
struct herald__frame {
    enum herald__frame_type type;
    bool has_id;
    int64_t id;
    /* ok */
    bool is_subscribe_ok; /* it carried "replayed" */
    size_t replayed;
    bool gap;
    const char *next;     /* subscribe ok: where its live part begins (NULL: not sent) */
    const char *event_id; /* publish ok */
    size_t receivers;
    bool duplicate; /* publish ok: the server already had this key (PROTOCOL.md section 3) */
    /* error */
    const char *code, *message;
    /* event */
    const char *topic, *ev_id, *kind;
    int64_t time_ms;
    size_t data_off, data_len; /* span of "data" in the frame text */
    /* welcome */
    size_t max_event_bytes;
    int heartbeat_s;
    json_t *root;
};

/*
 * Parses one text frame of `len` bytes. Returns 0 with `f` filled (clear it afterwards), or
 * HERALD_E_PROTOCOL with `err` set when it is not JSON, not an object, or a known type misses
 * or mistypes a member this client relies on.
 */
int herald__frame_parse(const char *text, size_t len, struct herald__frame *f, herald_error *err);
void herald__frame_clear(struct herald__frame *f);

/*
 * Command encoders. Each returns a malloc'd buffer with `headroom` unused bytes in front of
 * the frame text (libwebsockets writes its header there); *len is the text length. NULL when
 * out of memory or when a string is not valid UTF-8. `since` may be NULL or "".
 */
unsigned char *herald__encode_subscribe(size_t headroom, int64_t id, const char *pattern,
                                        const char *since, size_t *len);
unsigned char *herald__encode_unsubscribe(size_t headroom, int64_t id, const char *pattern,
                                          size_t *len);
/* `data_json` must already have passed herald__check_json; `key` (NULL or "": none) is the
 * idempotency key (PROTOCOL.md section 3). */
unsigned char *herald__encode_publish(size_t headroom, int64_t id, const char *topic,
                                      const char *kind, const char *key, const char *data_json,
                                      size_t *len);

/* One NDJSON line of a batch (without the newline): {"topic","event","data","key"}; `kind`
 * and `key` may be NULL; `data_json` compact. malloc'd, NULL when out of memory or not UTF-8. */
unsigned char *herald__encode_batch_line(const char *topic, const char *kind, const char *key,
                                         const char *data_json, size_t *len);

/* An idempotency key as the protocol allows it: 1-128 visible ASCII bytes. */
bool herald__key_valid(const char *key);
/* The key the client makes for its `seq`th publish: "<prefix>-<seq>" into `out`. */
void herald__key_make(char *out, size_t cap, const char *prefix, uint64_t seq);
unsigned char *herald__encode_ping(size_t headroom, int64_t id, size_t *len);

/* Checks that `text` is exactly one JSON value without duplicate object keys. Returns 0 or
 * HERALD_E_INVALID with the parser's complaint in `err`. */
int herald__check_json(const char *text, herald_error *err);

/* The length of `text` (valid JSON) without its insignificant whitespace: the size the
 * server measures against max_event_bytes at most. With `out` (strlen(text) + 1 bytes) also
 * writes that compact text there. */
size_t herald__json_compact(const char *text, char *out);

/* Returns the JSON string literal for `text` (malloc'd), or NULL when not UTF-8 / OOM. */
char *herald__json_quote(const char *text);

/* ---- subscriptions and resume cursors (subs.c) ------------------------------------------- */

enum herald__sub_state {
    HERALD__SUB_UNSENT,    /* must be (re)sent on this connection */
    HERALD__SUB_SENT,      /* subscribe sent, no reply yet */
    HERALD__SUB_REPLAYING, /* ok received, replayed events still arriving */
    HERALD__SUB_LIVE       /* ok received, replay done */
};

/* Where the delivered range of a subscription starts once its first event arrives. */
enum herald__start { HERALD__START_VALUE, HERALD__START_FIRST_LIVE };

struct herald__req;

/*
 * One subscription the application wants. The range [lo, hi] (ids compare as strings) is
 * what the client knows it delivered: every event matching the pattern with lo <= id <= hi
 * reached the application. hi is where the subscription resumes; the range also lets the
 * client drop an event that a resumed, overlapping subscription brings a second time.
 */
struct herald__sub {
    struct herald__sub *next;
    char pattern[HERALD_TOPIC_MAX + 1];
    char since[HERALD_ID_SIZE];      /* as the application asked: "", "all", "latest", id */
    char sent_since[HERALD_ID_SIZE]; /* what the last subscribe on the wire carried */
    enum herald__sub_state state;
    int64_t wire_id; /* id of that subscribe */
    bool was_live;   /* the server accepted it at least once */
    bool blind;      /* the last resume had no position (may have missed) */
    bool has_range;
    char lo[HERALD_ID_SIZE], hi[HERALD_ID_SIZE];
    enum herald__start start_kind;
    char start[HERALD_ID_SIZE];
    /* The ok's `next` when it replayed nothing: where a resume starts while no event has
     * arrived yet (then nothing is missed and no gap is reported). "" when unknown. */
    char next_pos[HERALD_ID_SIZE];
    /* What the application was handed, as opposed to what reached the queue (hi): the
     * cursor it may save. `uid` names the subscription in queued events; an event counts
     * for a live subscription when it arrived after `live_since` (see herald__evmark). */
    uint64_t uid, live_since;
    bool has_handed;
    char handed[HERALD_ID_SIZE];
    struct herald__req *waiters; /* application requests waiting for the ok */
};

/* Which subscriptions an accepted event advanced: its replay's owner (uid), or, when
 * owner is 0, every subscription that was live before `rseq`. Kept with the queued event
 * so that handing it to the application can move the saved cursors exactly that far. */
struct herald__evmark {
    uint64_t rseq, owner;
};

struct herald__subs {
    struct herald__sub *head;
    size_t n;
    /* The server sends a subscription's replayed events right after its ok, contiguously;
     * until `replay_left` reaches 0 events belong to that replay (the sub may be gone). */
    struct herald__sub *replay_sub;
    size_t replay_left;
    uint64_t rseq;     /* events seen (each gets the next value) */
    uint64_t next_uid; /* last uid given to a subscription */
};

struct herald__sub *herald__subs_find(struct herald__subs *s, const char *pattern);
struct herald__sub *herald__subs_find_wire(struct herald__subs *s, int64_t wire_id);
/* Adds an UNSENT subscription (appended, so resubscribes keep the application's order).
 * `since` NULL means live. Returns NULL when out of memory or a string does not fit. */
struct herald__sub *herald__subs_add(struct herald__subs *s, const char *pattern,
                                     const char *since);
/* Unlinks and frees `sub`; its waiters must have been taken off first. */
void herald__subs_remove(struct herald__subs *s, struct herald__sub *sub);
/* Frees every subscription (waiters must be gone). */
void herald__subs_clear(struct herald__subs *s);

/* The connection went away: every subscription must be sent again. */
void herald__subs_disconnected(struct herald__subs *s);

/*
 * The `since` a subscribe for `sub` must carry now ("" = none) into `out`, and marks it SENT
 * with `wire_id`. Sets sub->blind when the subscription was accepted before but has no
 * position to resume from (it then resumes from "latest" and events may have been missed).
 */
void herald__sub_sent(struct herald__sub *sub, int64_t wire_id, char out[HERALD_ID_SIZE]);

/* The server accepted `sub` (NULL when the application dropped it meanwhile). `next` is the
 * ok's `next` (NULL when the server did not send one). */
void herald__subs_on_ok(struct herald__subs *s, struct herald__sub *sub, size_t replayed, bool gap,
                        const char *next);

/*
 * An event arrived. Updates the ranges and returns true when the application should get it,
 * false when it is one it already got. `mark` (may be NULL) receives what to pass to
 * herald__subs_handed() when the event reaches the application.
 */
bool herald__subs_on_event(struct herald__subs *s, const char *topic, const char *id,
                           struct herald__evmark *mark);

/* The event `id` with `mark` was handed to the application: moves the saved cursors of the
 * subscriptions it advanced. */
void herald__subs_handed(struct herald__subs *s, const char *id, const struct herald__evmark *mark);

/* Nothing is waiting for the application: everything every range covers was handed. */
void herald__subs_caught_up(struct herald__subs *s);

/* Where `sub` resumes on the next connection (the top of what reached the queue). */
void herald__sub_cursor(const struct herald__sub *sub, char out[HERALD_ID_SIZE]);

/* Where the application may resume `sub` in a later run (herald_subscription_cursor): the
 * last position it was handed, else where the subscription started, else "". */
void herald__sub_app_cursor(const struct herald__sub *sub, char out[HERALD_ID_SIZE]);

/* ---- batches (batch.c) ---------------------------------------------------------------- */

/* The NDJSON body of `b` (borrowed) and its length. */
const char *herald__batch_body(const struct herald_batch *b, size_t *len);
/*
 * Reads a POST /v1/publish answer for a batch of `lines` events: 2xx with one event per line
 * gives 0; an error gives HERALD_E_SERVER or HERALD_E_AUTH with the server's code and, when
 * it named one, the 1-based `line` in *bad_line (may be NULL) and the message; a 2xx that
 * does not list one event per line gives HERALD_E_PROTOCOL.
 */
int herald__batch_answer(int status, const char *body, size_t len, size_t lines, size_t *bad_line,
                         herald_error *err);

/* ---- HTTP (http.c) ----------------------------------------------------------------------- */

/*
 * One GET of `path_and_query` (already percent-encoded) on the server of `u`, with the
 * options' token and TLS settings. On success returns 0 with the status and the body
 * (malloc'd, NUL-terminated, at most 16 MiB). Returns HERALD_E_CONNECT / TIMEOUT / NOMEM.
 */
int herald__http_get(const struct herald__url *u, const herald_options *o,
                     const char *path_and_query, int timeout_ms, int *status, char **body,
                     size_t *body_len, herald_error *err);

/* herald__http_get, or with `ctype` a POST of `req_len` bytes of `req_body` (borrowed) with
 * that Content-Type. */
int herald__http_request(const struct herald__url *u, const herald_options *o, const char *ctype,
                         const void *req_body, size_t req_len, const char *path_and_query,
                         int timeout_ms, int *status, char **body, size_t *body_len,
                         herald_error *err);

/*
 * herald__http_request on the servers of the URL list `list` in turn: `path` (with its
 * query) goes after each server's prefix, and the next server is tried only when one could
 * not be reached (HERALD_E_CONNECT). Returns as herald__http_request.
 */
int herald__http_any(const char *list, const herald_options *opts, const char *ctype,
                     const void *req_body, size_t req_len, const char *path, int timeout_ms,
                     int *status, char **body, size_t *body_len, herald_error *err);

/* Appends `s` percent-encoded for a path segment or query value to `out`; returns 0 or -1
 * when it does not fit. */
int herald__pct_encode(char *out, size_t cap, const char *s);

/* Shared with client.c: silences lws logging once unless asked not to; serializes context
 * creation and destruction, which touch process-wide state. */
void herald__lws_global_lock(void);
void herald__lws_global_unlock(void);
void herald__lws_quiet(const herald_options *o);

#endif
