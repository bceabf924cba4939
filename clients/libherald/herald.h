/* SPDX-License-Identifier: MIT */
/*
 * libherald: the C client of the Herald push broker (protocol herald.v1, see PROTOCOL.md).
 * A client connects to one broker by URL, keeps its subscriptions across reconnects and
 * resumes each from the last event it delivered, so an application neither loses nor repeats
 * events while the broker keeps them in history. It offers a synchronous style (each call
 * blocks until the server answered) and an asynchronous one (calls return at once; results and
 * events come through callbacks run by herald_process(), which an application drives from its
 * own event loop when herald_fd() is readable). Both styles can be mixed on one client.
 *
 * Threads. Each client runs its network I/O on one internal thread that owns the
 * libwebsockets context; it never runs application code. Every function may be called from
 * any thread, concurrently, except herald_close(), which must be the last call on a client
 * and must not run inside one of its callbacks. Callbacks run only inside herald_process() (and
 * herald_close() for cancelled requests), on the thread that called it. Synchronous calls may
 * be made from inside callbacks: they do not need herald_process() to make progress.
 *
 * Errors are values: functions return 0 or a negative herald_status and, when given a
 * herald_error, fill it with a code and a sentence. The library never prints and never
 * exits. Signals: writing to a socket the peer closed may raise SIGPIPE in TLS code paths;
 * applications that do not want to die of it ignore SIGPIPE (most network programs do).
 */
#ifndef HERALD_H
#define HERALD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define HERALD_API
#elif defined(HERALD_BUILDING_LIBRARY)
#define HERALD_API __attribute__((visibility("default")))
#else
#define HERALD_API
#endif

#define HERALD_VERSION_MAJOR 0
#define HERALD_VERSION_MINOR 2
#define HERALD_VERSION_PATCH 0
#define HERALD_VERSION_STRING "0.2.0"

/* Event ids and `since` cursors are at most this many bytes (plus the NUL). */
#define HERALD_ID_MAX 255
#define HERALD_ID_SIZE (HERALD_ID_MAX + 1)
/* Topics and patterns are at most this many bytes. */
#define HERALD_TOPIC_MAX 255
/* Idempotency keys are 1 to this many visible ASCII bytes. */
#define HERALD_KEY_MAX 128

/* What a call returns. 0 is success; everything else is negative. */
typedef enum herald_status {
    HERALD_OK = 0,
    HERALD_E_INVALID = -1,      /* a bad argument: NULL, too long, bad URL, data not JSON */
    HERALD_E_NOMEM = -2,        /* out of memory */
    HERALD_E_CONNECT = -3,      /* could not connect, or the TLS/WebSocket handshake failed */
    HERALD_E_TIMEOUT = -4,      /* no answer within the timeout; nothing more is known */
    HERALD_E_SERVER = -5,       /* the server refused the request: see error.server_code */
    HERALD_E_AUTH = -6,         /* credentials refused (HTTP 401/403 on connect, close 1008) */
    HERALD_E_CLOSED = -7,       /* the client is closed, or stopped after a fatal error */
    HERALD_E_PROTOCOL = -8,     /* the peer does not speak herald.v1 as documented */
    HERALD_E_STATE = -9,        /* the call does not fit the client's mode (see the function) */
    HERALD_E_BUSY = -10,        /* too many requests waiting to be sent */
    HERALD_E_INTERRUPTED = -11, /* the connection dropped after the request was sent: a
                                 * publish may or may not have happened */
    HERALD_E_TOO_LARGE = -12    /* the event's data is over the size the server announced
                                 * (max_event_bytes); it was not sent (server_code
                                 * "too_large", as when the server refuses it) */
} herald_status;

/* An error: the status, the server's error code when it sent one, and a sentence. */
typedef struct herald_error {
    int status;           /* a herald_status */
    char server_code[32]; /* the protocol's code: e.g. "invalid_topic", "forbidden" from the
                           * server, "too_large" also for HERALD_E_TOO_LARGE; else "" */
    char message[256];    /* one line, no trailing newline, valid UTF-8 */
} herald_error;

/* A short constant description of a status, e.g. "connection failed". */
HERALD_API const char *herald_strerror(int status);
/* The library's version string (HERALD_VERSION_STRING of the build). */
HERALD_API const char *herald_version(void);

typedef struct herald_client herald_client;

/* What the event stream carries. Applications may ignore every type but HERALD_EV_EVENT. */
typedef enum herald_event_type {
    HERALD_EV_EVENT = 1,    /* an event published to a topic you subscribed to */
    HERALD_EV_GAP,          /* events matching `pattern` may have been missed: resynchronize */
    HERALD_EV_DISCONNECTED, /* the connection was lost; the client retries in `retry_ms` */
    HERALD_EV_CONNECTED,    /* the client (re)connected ("connected to HOST:PORT" in error.message,
                             * status 0); subscriptions are being restored */
    HERALD_EV_ERROR         /* see `error`; when `fatal` the client has stopped for good */
} herald_event_type;

/*
 * One item of the event stream. All strings are NUL-terminated and valid while the event is:
 * during the callback, or until herald_event_free() for herald_next_event().
 */
typedef struct herald_event {
    herald_event_type type;
    const char *topic; /* EVENT: the topic it was published to */
    const char *id;    /* EVENT: its id; hand the last one back as `since` to resume */
    const char *kind;  /* EVENT: the event kind, "message" unless the publisher said */
    int64_t time_ms;   /* EVENT: when the server accepted it, ms since the Unix epoch */
    const char *data;  /* EVENT: the data as JSON text, exactly as the server sent it */
    size_t data_len;
    const char *json; /* EVENT: the whole event object as one line of JSON */
    size_t json_len;
    const char *pattern; /* GAP, ERROR (when about one subscription): the pattern; else NULL */
    unsigned retry_ms;   /* DISCONNECTED: the delay before the next attempt */
    bool fatal;          /* ERROR: the client stopped; no more events will come */
    herald_error error;  /* GAP, DISCONNECTED, ERROR: why */
} herald_event;

/* Releases an event returned by herald_next_event(). NULL is ignored. */
HERALD_API void herald_event_free(herald_event *ev);

typedef void (*herald_event_fn)(herald_client *c, const herald_event *ev, void *user);

/*
 * Connection options: an opaque object made by herald_options_new() and changed only through
 * the setters below, the way nats.c (natsOptions), libcurl and zstd do it. A public struct
 * cannot grow without breaking every program compiled against the smaller one (the library
 * would read fields past its end); a leading size field needs every caller to get the size
 * right, and every library version to carry the old layouts. With an opaque object the
 * library alone knows the layout, so options can be added in any release of libherald.so.0
 * and old programs keep working. One options object may serve any number of clients: it is
 * copied (with its strings) when a client is made, and may be freed or changed afterwards.
 * Every setter returns 0, or HERALD_E_INVALID for a NULL object or an argument out of range
 * (the object is then unchanged), or HERALD_E_NOMEM.
 */
typedef struct herald_options herald_options;

/* Returns options with every default, or NULL when out of memory. */
HERALD_API herald_options *herald_options_new(void);
/* Frees `o`; NULL is ignored. Clients made with it keep their copy. */
HERALD_API void herald_options_free(herald_options *o);

/* Sent as "Authorization: Bearer <token>" (1-4096 printable ASCII bytes, no spaces; copied).
 * NULL or "": none (the default). */
HERALD_API int herald_options_set_token(herald_options *o, const char *token);
/* A PEM file of CAs to trust for wss:// and https:// (copied; NULL: the system's). */
HERALD_API int herald_options_set_ca_file(herald_options *o, const char *path);
/* wss:// without certificate checks (tests only; default false). */
HERALD_API int herald_options_set_insecure(herald_options *o, bool insecure);
/* herald_connect() gives up after `ms` (1 or more; default 10000); also the deadline of one
 * HTTP request (herald_poll adds its wait to it). */
HERALD_API int herald_options_set_connect_timeout(herald_options *o, int ms);
/* Keep retrying when the first connection fails (default false: the failure is returned;
 * later losses are always retried). */
HERALD_API int herald_options_set_retry_first_connect(herald_options *o, bool retry);
/* Reconnect delays: the first `initial_ms` (default 250), doubling up to `max_ms` (default
 * 30000); each is jittered to between half and all of its value. */
HERALD_API int herald_options_set_backoff(herald_options *o, unsigned initial_ms, unsigned max_ms);
/* Events waiting for the application before the client stops reading from the socket
 * (default 10000 events, 64 MiB); 0 keeps the default. */
HERALD_API int herald_options_set_queue_limits(herald_options *o, size_t max_events,
                                               size_t max_bytes);
/* Requests waiting to be sent or answered (default 10000; 0 keeps the default). */
HERALD_API int herald_options_set_max_pending(herald_options *o, size_t max_pending);
/* Deliver events by callback from herald_process() (`fn` NULL: they wait for
 * herald_next_event(), the default); `user` is passed to it. */
HERALD_API int herald_options_set_event_callback(herald_options *o, herald_event_fn fn, void *user);
/* Leave libwebsockets' process-wide logging alone (default false: the library silences it,
 * since a library must not print). */
HERALD_API int herald_options_set_keep_lws_log(herald_options *o, bool keep);

/*
 * Connects to `url` (ws://host[:port][/path], wss://...; http:// and https:// are taken as
 * ws:// and wss://; host[:port] without a scheme as ws:// on port 7070; the path defaults to
 * /v1/ws; a ?token= query is passed on as is) and waits for the server's welcome. `url` may
 * list up to 16 servers separated by commas ("ws://a:7070,ws://b:7070"; a comma inside a URL
 * is written %2C): the first connection tries each in turn (failing once all failed), and
 * every later reconnect goes to the next server of the list, resuming each subscription
 * there from its last id. The HTTP calls below take the same lists and use the first
 * server that accepts the connection. `opts` may
 * be NULL for the defaults; it is copied.
 * Returns the client, or NULL with `err` filled (HERALD_E_INVALID for a bad URL,
 * HERALD_E_CONNECT, HERALD_E_AUTH, HERALD_E_TIMEOUT). With opts->retry_first_connect it waits
 * for success until connect_timeout_ms passes.
 */
HERALD_API herald_client *herald_connect(const char *url, const herald_options *opts,
                                         herald_error *err);

/*
 * Like herald_connect() but returns at once; the connection is made in the background and
 * reported as HERALD_EV_CONNECTED (or HERALD_EV_ERROR, fatal unless retry_first_connect).
 * Requests made meanwhile are queued. Returns NULL only for a bad URL or out of memory.
 */
HERALD_API herald_client *herald_connect_async(const char *url, const herald_options *opts,
                                               herald_error *err);

/*
 * Closes the connection (status 1000), stops the thread and frees the client. Async
 * requests not yet completed get their callback with HERALD_E_CLOSED, on this thread, before
 * it returns; undelivered events are dropped. NULL is ignored.
 */
HERALD_API void herald_close(herald_client *c);

/* ---- synchronous calls: block until the server answered or timeout_ms passed -----------
 * timeout_ms < 0 waits without limit. While the connection is down they wait for the
 * reconnect within the same timeout. */

typedef struct herald_sub_info {
    size_t replayed; /* events from history that follow, before live ones */
    bool gap;        /* `since` was older than history or unknown: events may be missing */
} herald_sub_info;

/*
 * Subscribes to `pattern` (a topic, or with `*` for one segment and a final `>` for the
 * rest). `since` is NULL (live events only), "all" (everything retained first), "latest", or
 * an event id (what came after it). The subscription is kept across reconnects and resumed
 * from the last event delivered. Subscribing to a pattern you already have is a successful
 * no-op (replayed 0). `info` may be NULL. Returns 0 or a negative herald_status; a pattern the
 * server refuses gives HERALD_E_SERVER (e.g. "invalid_topic", "forbidden").
 */
HERALD_API int herald_subscribe(herald_client *c, const char *pattern, const char *since,
                                int timeout_ms, herald_sub_info *info, herald_error *err);

/* Ends a subscription; no event of it arrives after this returns. Unknown patterns are ok. */
HERALD_API int herald_unsubscribe(herald_client *c, const char *pattern, int timeout_ms,
                                  herald_error *err);

/*
 * Publishes to `topic` an event of kind `kind` (NULL: "message") whose data is the JSON text
 * `data_json` (NULL: null; it must be one JSON value). On success copies the event id into
 * `id_out` (HERALD_ID_SIZE bytes, may be NULL). Every publish carries an idempotency key (a
 * random per-client prefix and a counter): when the connection drops before the answer, the
 * client sends it once more, with the same key, on the next connection, and the server
 * publishes it at most once (PROTOCOL.md section 3). A timeout, or HERALD_E_INTERRUPTED
 * (the second connection dropped too), leaves it unknown whether the event was published.
 * Data over the server's max_event_bytes gives HERALD_E_TOO_LARGE without sending.
 */
HERALD_API int herald_publish(herald_client *c, const char *topic, const char *kind,
                              const char *data_json, int timeout_ms, char *id_out,
                              herald_error *err);

/*
 * herald_publish() with the caller's idempotency key (1-HERALD_KEY_MAX visible ASCII bytes;
 * NULL: one the client makes): resending with the same key, even from another process,
 * publishes nothing new while the server remembers it (history.dedupe_window_s) and answers
 * with the first publish's id. `*duplicate` (may be NULL) is then set true: the server
 * already had this key, so this call published nothing new.
 */
HERALD_API int herald_publish_key(herald_client *c, const char *topic, const char *kind,
                                  const char *data_json, const char *key, int timeout_ms,
                                  char *id_out, bool *duplicate, herald_error *err);

/* herald_publish() with a string as data: `text` (UTF-8) is sent as a JSON string. */
HERALD_API int herald_publish_text(herald_client *c, const char *topic, const char *kind,
                                   const char *text, int timeout_ms, char *id_out,
                                   herald_error *err);

/* Round trip to the server (a WebSocket-level ping is sent by the server itself). */
HERALD_API int herald_ping(herald_client *c, int timeout_ms, herald_error *err);

/*
 * Waits up to timeout_ms (< 0: forever, 0: just look) for the next item of the event stream
 * and hands it over in *ev (free with herald_event_free()). Returns 0, HERALD_E_TIMEOUT,
 * HERALD_E_CLOSED once the client stopped and everything was handed over, or HERALD_E_STATE
 * when the client delivers events through opts.on_event instead.
 */
HERALD_API int herald_next_event(herald_client *c, herald_event **ev, int timeout_ms);

/* ---- asynchronous calls: return at once; `cb` runs later from herald_process() ----------- */

/* The library fills it and the application only reads it, so members may be added at the
 * end in later versions without breaking programs built against this one. */
typedef struct herald_reply {
    int status;           /* 0 or a negative herald_status */
    herald_error error;   /* when status != 0 */
    const char *pattern;  /* subscribe, unsubscribe */
    const char *event_id; /* publish */
    size_t receivers;     /* publish: connections the server queued the event to */
    size_t replayed;      /* subscribe */
    bool gap;             /* subscribe */
    bool duplicate;       /* publish: the server already had its key; nothing new published */
    const char *key;      /* publish: the idempotency key it carried */
} herald_reply;

typedef void (*herald_reply_fn)(herald_client *c, const herald_reply *r, void *arg);

/*
 * Each returns 0 when the request was queued (then `cb`, which may be NULL, runs exactly once
 * from herald_process() or herald_close()), or a negative status when it was not (then `cb`
 * never runs). Arguments are as for the synchronous calls; the reply is valid during `cb`.
 */
HERALD_API int herald_subscribe_async(herald_client *c, const char *pattern, const char *since,
                                      herald_reply_fn cb, void *arg, herald_error *err);
HERALD_API int herald_unsubscribe_async(herald_client *c, const char *pattern, herald_reply_fn cb,
                                        void *arg, herald_error *err);
HERALD_API int herald_publish_async(herald_client *c, const char *topic, const char *kind,
                                    const char *data_json, herald_reply_fn cb, void *arg,
                                    herald_error *err);
HERALD_API int herald_publish_key_async(herald_client *c, const char *topic, const char *kind,
                                        const char *data_json, const char *key, herald_reply_fn cb,
                                        void *arg, herald_error *err);

/*
 * A file descriptor that becomes readable when herald_process() has work (completions, or
 * events when on_event is set); add it to your poll/epoll/libuv loop. Do not read or close
 * it. It may be readable with nothing to do.
 */
HERALD_API int herald_fd(const herald_client *c);

/*
 * Runs the callbacks that are due, waiting up to timeout_ms (< 0: forever, 0: no wait) for
 * the first. Returns how many ran, or HERALD_E_CLOSED when the client stopped and nothing is
 * left to run.
 */
HERALD_API int herald_process(herald_client *c, int timeout_ms);

/* ---- state ------------------------------------------------------------------------------ */

/* True while a connection is up and welcomed. */
HERALD_API bool herald_connected(const herald_client *c);

/*
 * Copies into `out` (HERALD_ID_SIZE bytes) where a later run may resume `pattern`: the
 * position of the last event of it handed to the application (returned by
 * herald_next_event() or passed to on_event; events still queued inside the client do not
 * count), else where the subscription started (the server's `next`, or the `since` it was
 * subscribed with: "all" or an id), else "". Save it and pass it as `since` in a later run
 * to continue there with nothing missed. Returns 0, or HERALD_E_INVALID when the client has
 * no such subscription.
 */
HERALD_API int herald_subscription_cursor(herald_client *c, const char *pattern, char *out);

/* ---- HTTP: polling and delivery status (one request each, on the calling thread) ---------- */

/*
 * GET /v1/topics/{pattern}/events?since=..&limit=..&wait=.. on the server of `url` (ws:// or
 * http:// forms alike). `since` may be NULL; limit 0 means the server's default; wait_s 0..60
 * (0: answer at once). On success *body_out is the response JSON
 * {"events":[...],"next":"..","gap":..} (free with herald_free()).
 */
HERALD_API int herald_poll(const char *url, const herald_options *opts, const char *pattern,
                           const char *since, unsigned limit, unsigned wait_s, char **body_out,
                           herald_error *err);

/*
 * GET /v1/events/{id}: on success *body_out is {"event":{..},"queued":n,"written":n,
 * "dropped":n} (free with herald_free()). An id no longer in history gives HERALD_E_SERVER
 * with server_code "not_found".
 */
HERALD_API int herald_event_status(const char *url, const herald_options *opts, const char *id,
                                   char **body_out, herald_error *err);

/* ---- batches: many events in one HTTP request (POST /v1/publish, NDJSON) ---------------- */

/*
 * A batch of events to publish in one request: all are checked by the server before any is
 * published, and the first bad one refuses the whole batch. Every event carries an
 * idempotency key (the caller's, or one the batch makes), so sending the same batch again
 * after a timeout or a 503 publishes each event at most once.
 */
typedef struct herald_batch herald_batch;

/* Returns an empty batch, or NULL when out of memory. */
HERALD_API herald_batch *herald_batch_new(void);
HERALD_API void herald_batch_free(herald_batch *b);
/* How many events `b` holds. */
HERALD_API size_t herald_batch_count(const herald_batch *b);
/*
 * Appends an event: `topic`, `kind` (NULL: "message"), `data_json` (one JSON value; NULL:
 * null) and `key` (NULL: the batch makes one), checked as herald_publish() checks them.
 * Returns 0, HERALD_E_INVALID (nothing appended) or HERALD_E_NOMEM.
 */
HERALD_API int herald_batch_add(herald_batch *b, const char *topic, const char *kind,
                                const char *data_json, const char *key, herald_error *err);
/*
 * Appends an event given as one NDJSON line: a JSON object with "topic" and optionally
 * "event", "data" and "key" (nothing else), as PROTOCOL.md section 3 writes batch lines.
 */
HERALD_API int herald_batch_add_line(herald_batch *b, const char *line, herald_error *err);
/*
 * POST /v1/publish with the batch on the server of `url` (ws:// or http:// forms alike),
 * within opts' connect timeout. On success *body_out is the answer
 * {"events":[{"id":..,"topic":..,"time":..,"receivers":..}, ...]}, one per event in order
 * (free with herald_free()). A refused batch gives HERALD_E_SERVER (or HERALD_E_AUTH) with
 * the server's code; when the server named the event at fault, *bad_line (may be NULL) is
 * its 1-based position in the batch, else 0. A batch refused with a 4xx published nothing;
 * one cut short (503, a timeout, a lost connection) may have published a prefix: send the
 * same batch again, its keys make that safe.
 */
HERALD_API int herald_publish_batch(const char *url, const herald_options *opts,
                                    const herald_batch *b, char **body_out, size_t *bad_line,
                                    herald_error *err);

/* Frees memory the library handed over (herald_poll, herald_event_status). */
HERALD_API void herald_free(void *p);

#ifdef __cplusplus
}
#endif

#endif
