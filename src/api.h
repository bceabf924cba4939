/* SPDX-License-Identifier: MIT */
/*
 * The HTTP API's policy (PROTOCOL.md sections 3-6 and 9): routing, methods, CORS, request
 * validation and response bodies. Transport-neutral: server_http.c copies what lws parsed
 * into a struct hd_http_req and writes back the struct hd_http_resp this module fills.
 */
#ifndef HD_API_H
#define HD_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "broker.h"
#include "peers.h"
#include "topic.h"

enum hd_method {
    HD_M_GET,
    HD_M_POST,
    HD_M_OPTIONS,
    HD_M_HEAD,
    HD_M_PUT,
    HD_M_PATCH,
    HD_M_DELETE,
    HD_M_OTHER
};

struct hd_http_req {
    enum hd_method method;
    const char *path;  /* percent-decoded, NUL-terminated, without the query */
    const char *query; /* raw query string without '?', or NULL */
    const char *content_type, *origin, *authorization, *last_event_id; /* NULL when absent */
    const char *idempotency_key;                                       /* NULL when absent */
    const char *host, *if_none_match; /* NULL when absent (for the embedded files) */
    /* The client's address, for per-address limits: peer_addr (formatted only when a limit
     * needs it), else the text in peer, else unknown. */
    const struct hd_peer_addr *peer_addr;
    const char *peer;
    int64_t content_length; /* -1 when absent */
    bool upgrade;           /* a WebSocket upgrade (GET with Upgrade: websocket) */
};

#define HD_HTTP_MAX_HEADERS 10

/* What a streaming or waiting request asked for, as the API validated it. */
struct hd_http_stream {
    char pattern[HD_TOPIC_MAX + 1];
    char since[256]; /* SSE: the cursor (query or Last-Event-ID), "" for live only */
    bool has_since;
    uint64_t after;        /* long poll: answer with matching events after this id */
    uint64_t replay_after; /* poll: a cursor older than history for the engine to replay, or 0 */
    bool gap;
    uint32_t limit;
    uint32_t wait_s;
};

struct hd_http_resp {
    int status;
    const char *content_type; /* static string */
    char *body;               /* malloc'd, owned by the response */
    size_t body_len;
    size_t n_headers;
    struct {
        const char *name;
        const char *value; /* static, the request's, or in text[] */
    } headers[HD_HTTP_MAX_HEADERS];
    char text[24]; /* formatted header values */
    size_t text_used;
    struct hd_http_stream *stream; /* HD_HTTP_SSE and HD_HTTP_LONGPOLL: owned, NULL otherwise */
    /* Who the request authenticated as, kept from routing to the body or the stream so a
     * request is authenticated once: owned, NULL until then. */
    struct hd_identity *who;
    char *credential; /* the credential `who` came from (malloc'd, NULL for anonymous) */
};

/* What the transport does next with a routed request. */
enum hd_http_next {
    HD_HTTP_RESPOND,   /* resp is complete: write it */
    HD_HTTP_READ_BODY, /* collect up to hd_api_body_limit bytes, then hd_api_publish */
    HD_HTTP_SSE,       /* start an event stream for resp->stream */
    HD_HTTP_LONGPOLL,  /* wait up to stream.wait_s for an event, then hd_api_poll_answer */
    HD_HTTP_UPGRADE,   /* accept the WebSocket upgrade; resp->who is the client */
};

/*
 * Adds a response header. The value is borrowed: a static string or one of the request's
 * strings, which live until the response is written. Returns 0 or -ENOSPC. The response is
 * kept small because the transport holds one in every HTTP connection's state, which lws
 * allocates and zeroes for every request.
 */
int hd_http_resp_header(struct hd_http_resp *resp, const char *name, const char *value);
/* Adds a header whose value is a number, formatted into the response. 0 or -ENOSPC. */
int hd_http_resp_header_uint(struct hd_http_resp *resp, const char *name, unsigned value);
/* Frees what the response owns and zeroes it. */
void hd_http_resp_clear(struct hd_http_resp *resp);

/* Routes a request whose headers are complete. Fills resp when it returns RESPOND. */
enum hd_http_next hd_api_route(struct hd_broker *b, const struct hd_http_req *req,
                               struct hd_http_resp *resp);

/* The largest body accepted for this routed request (bigger bodies get 413 unread). */
size_t hd_api_body_limit(const struct hd_broker *b, const struct hd_http_req *req);

/* Completion of an HTTP publish: `resp` is owned by the callee (clear it when written). */
typedef void (*hd_api_done_fn)(void *arg, struct hd_http_resp *resp);

/*
 * Publishes the body of a routed POST (one event, or an NDJSON batch on /v1/publish). Either
 * fills `resp` and returns HD_HTTP_RESPOND (errors; or success when the engine completed at
 * once), or returns -1 meaning `done` will be called later with the response. `done` is
 * never called when this returns RESPOND.
 */
int hd_api_publish(struct hd_broker *b, const struct hd_http_req *req, const char *body, size_t len,
                   struct hd_http_resp *resp, hd_api_done_fn done, void *arg);

/*
 * Authenticates a request from its Authorization header or ?token= query parameter. Returns
 * 0 with `id` filled (release with hd_identity_clear), or -1 with a 401 in `resp`. When
 * `credential` is not NULL it receives a malloc'd copy of the credential used (NULL for
 * none), for connections that must be checked again on reload.
 */
int hd_api_authenticate(struct hd_broker *b, const struct hd_http_req *req, struct hd_identity *id,
                        char **credential, struct hd_http_resp *resp);

/*
 * Moves the identity a routed request authenticated as (resp->who, which must be set: after
 * HD_HTTP_UPGRADE, HD_HTTP_SSE or HD_HTTP_LONGPOLL) into `id`, and its credential into
 * *credential (malloc'd or NULL), for a connection that outlives the request.
 */
void hd_api_take_identity(struct hd_http_resp *resp, struct hd_identity *id, char **credential);

/* Answers a poll from history: {"events":[...],"next":"<id>","gap":<bool>}. */
void hd_api_poll_answer(struct hd_broker *b, const struct hd_http_stream *st,
                        struct hd_http_resp *resp);

/* Adds the CORS headers this request's Origin earns. */
void hd_api_cors(const struct hd_broker *b, const struct hd_http_req *req,
                 struct hd_http_resp *resp);

/* True when a WebSocket upgrade from `origin` (NULL: none) is allowed. */
bool hd_api_origin_allowed(const struct hd_broker *b, const char *origin);

/* Fills resp with the documented error body for `code`. */
void hd_api_error(struct hd_http_resp *resp, enum hd_err code, const char *message);

/* Percent-decodes src into dst (capacity cap). Returns 0, or -EINVAL on a bad escape, a
 * decoded NUL or when it does not fit. */
int hd_url_decode(const char *src, size_t len, char *dst, size_t cap);

/* Finds `name` in a raw query string and decodes its value into out. Returns the decoded
 * length, -1 when absent, or -2 when present but malformed (a bad escape, a decoded NUL, or
 * longer than cap allows). */
int hd_query_get(const char *query, const char *name, char *out, size_t cap);

#endif
