/* SPDX-License-Identifier: MIT */
/*
 * The wire protocol's data layer (PROTOCOL.md sections 2, 3 and 7): parse WebSocket commands
 * into plain structs, encode replies, errors and events as JSON text. No sockets, no state:
 * the broker decides what a command means, this module only says what it says.
 */
#ifndef HD_PROTOCOL_H
#define HD_PROTOCOL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Documented error codes; hd_err_name gives the wire string, hd_err_http the HTTP status. */
enum hd_err {
    HD_ERR_NONE = 0,
    HD_ERR_BAD_REQUEST,
    HD_ERR_INVALID_TOPIC,
    HD_ERR_UNKNOWN_OP,
    HD_ERR_UNAUTHORIZED,
    HD_ERR_FORBIDDEN,
    HD_ERR_NOT_FOUND,
    HD_ERR_METHOD_NOT_ALLOWED,
    HD_ERR_TOO_LARGE,
    HD_ERR_RATE_LIMITED,
    HD_ERR_LIMIT_EXCEEDED,
    HD_ERR_UNAVAILABLE,
    HD_ERR_INTERNAL,
    HD_ERR__COUNT
};

const char *hd_err_name(enum hd_err err);
int hd_err_http(enum hd_err err);

/* An error with a human sentence (copied into the struct; truncated if longer). */
struct hd_error {
    enum hd_err code;
    uint32_t retry_after; /* rate_limited: seconds until a retry can pass; else 0 */
    char message[160];
};

/* Sets err (may be NULL) and returns `code`, so policy functions can
 * `return hd_error_set(...)`. */
enum hd_err hd_error_set(struct hd_error *err, enum hd_err code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define HD_EVENT_KIND_MAX 64
#define HD_DEFAULT_EVENT "message"

/* Idempotency keys (PROTOCOL.md section 3): 1-128 visible ASCII bytes (0x21-0x7e). */
#define HD_IDEM_KEY_MAX 128
bool hd_idem_key_valid(const char *s, size_t len);

/* Checks an event kind: 1-64 bytes of [A-Za-z0-9_.:-]. */
bool hd_event_kind_valid(const char *s, size_t len);

enum hd_op { HD_OP_SUBSCRIBE, HD_OP_UNSUBSCRIBE, HD_OP_PUBLISH, HD_OP_PING };

/*
 * One parsed client command; release with hd_cmd_clear. A frame that is already in compact
 * canonical form (what clients almost always send) is read in place without building a jansson
 * tree: then `root` and `data` are NULL, the strings live in the buffers below and the publish
 * data is a span of the frame, so the frame must outlive the command, and the struct points
 * into itself, so it must not be copied. Read the data with hd_cmd_data, which covers both.
 */
struct hd_cmd {
    enum hd_op op;
    bool has_id; /* the frame had an integer "id" */
    int64_t id;
    const char *topic;     /* subscribe/unsubscribe: pattern; publish: topic. Validated. */
    const char *since;     /* subscribe only; NULL when absent */
    const char *event;     /* publish only; defaults to HD_DEFAULT_EVENT */
    const char *key;       /* publish only: the idempotency key, validated; NULL when absent */
    json_t *data;          /* publish, jansson path: borrowed from root; JSON null when absent */
    const char *data_json; /* publish, in-place path: the data's text in the frame */
    size_t data_len;
    json_t *root;
    char topic_buf[256]; /* in-place path: NUL-terminated copies of validated members */
    char since_buf[256];
    char event_buf[HD_EVENT_KIND_MAX + 1];
    char key_buf[HD_IDEM_KEY_MAX + 1];
};

/*
 * Parses one text frame of `len` bytes. On success fills `cmd` (caller must hd_cmd_clear it)
 * and returns HD_ERR_NONE. On failure returns the error code and fills `err` (bad_request for bad
 * JSON / wrong types / non-object / "id" not an integer, unknown_op, invalid_topic for a bad topic
 * or pattern, forbidden for a publish to a reserved `$` topic, bad_request for an invalid event
 * kind) and sets cmd->has_id/cmd->id when the id could be read, so the error reply can echo it;
 * nothing needs clearing then. Fields that do not belong to an op are ignored.
 */
enum hd_err hd_cmd_parse(const char *buf, size_t len, struct hd_cmd *cmd, struct hd_error *err);
void hd_cmd_clear(struct hd_cmd *cmd);

/*
 * A publish command's data as compact JSON text (length in *len): the frame's own bytes when
 * it was read in place, else written into *owned, which the caller frees. NULL on OOM.
 */
const char *hd_cmd_data(const struct hd_cmd *cmd, size_t *len, char **owned);

/*
 * Encoders. Each returns a malloc'd NUL-terminated string (length in *len when len is not
 * NULL), or NULL when out of memory. `id` is echoed when has_id is true, else JSON null
 * (errors) or omitted (ok/pong replies without an id).
 */
char *hd_encode_error(bool ws, bool has_id, int64_t id, enum hd_err code, const char *message,
                      size_t *len);
char *hd_encode_welcome(const char *session, const char *version, int heartbeat_s,
                        size_t max_event_bytes, size_t *len);
/* The subscribe ok; `next` is the cursor where the live part begins (PROTOCOL.md §7). */
char *hd_encode_ok_subscribe(bool has_id, int64_t id, const char *pattern, size_t replayed,
                             bool gap, const char *next, size_t *len);
/* {"type":"gap","topic":P,"next":N}: events before N may be missing for pattern P. */
char *hd_encode_gap(const char *pattern, const char *next, size_t *len);
/* {"type":"unsubscribed","topic":P,"code":C,"message":M}: the server ended a subscription. */
char *hd_encode_unsubscribed(const char *pattern, enum hd_err code, const char *message,
                             size_t *len);
char *hd_encode_ok(bool has_id, int64_t id, size_t *len);
char *hd_encode_ok_publish(bool has_id, int64_t id, const char *event_id, size_t receivers,
                           bool duplicate, size_t *len);
char *hd_encode_pong(bool has_id, int64_t id, size_t *len);
/* The HTTP publish reply: {"id":..,"topic":..,"time":..,"receivers":..[,"duplicate":true]}. */
char *hd_encode_publish_reply(const char *event_id, const char *topic, int64_t time_ms,
                              size_t receivers, bool duplicate, size_t *len);

/*
 * Writes the event object
 * {"type":"event","topic":T,"id":I,"time":MS,"event":E,"data":<data_json>}
 * into `out` (capacity `cap`). `data_json` is already-serialized compact JSON of `data_len`
 * bytes, copied verbatim. Returns the length written (without NUL), or the length that
 * would be needed when it exceeds cap (snprintf style). Topic/event need no escaping (the
 * grammar forbids quotes and backslashes) but the id is likewise grammar-safe.
 */
size_t hd_encode_event(char *out, size_t cap, const char *topic, const char *event_id,
                       int64_t time_ms, const char *event, const char *data_json, size_t data_len);

/* Event ids: 16 lowercase hex digits of a 64-bit sequence, so ids sort as strings. */
#define HD_EVENT_ID_LEN 16
void hd_event_id_format(uint64_t seq, char out[HD_EVENT_ID_LEN + 1]);
/* Returns 0 and the sequence, or -EINVAL for anything not exactly 16 hex digits. */
int hd_event_id_parse(const char *s, uint64_t *seq);

/*
 * Serializes `data` (any JSON value) compactly. Returns malloc'd text or NULL on OOM.
 * Used once per event so every receiver shares the bytes.
 */
char *hd_json_dump_compact(const json_t *data, size_t *len);

/*
 * True when `s` (len bytes) is one JSON value that hd_json_dump_compact would write back
 * byte for byte after jansson parsed it (JSON_DECODE_ANY | JSON_REJECT_DUPLICATES |
 * JSON_ALLOW_NUL): no whitespace, no escapes, no 0x7f, integers of at most 18 digits and no
 * reals, at most 32 levels deep and 16 keys per object, no duplicate keys, valid UTF-8.
 * False means only "not proven", and the caller takes the jansson path; jansson stays the
 * judge of every input this does not recognise. It exists because parsing and re-dumping a
 * small publish costs more than all of the rest of the broker's work for it.
 */
bool hd_json_canonical(const char *s, size_t len);

#endif
