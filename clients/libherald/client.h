/* SPDX-License-Identifier: MIT */
/*
 * The client object, shared by client.c (the I/O thread: libwebsockets callbacks, connect,
 * reconnect, frames), api.c (the public calls: requests and waiting) and queue.c (the event
 * stream and completions towards the application).
 * Everything below `mu` is guarded by it; the lws context and wsi are touched only by the
 * I/O thread (other threads wake it with lws_cancel_service(), the one thread-safe lws call).
 */
#ifndef HERALD_CLIENT_H
#define HERALD_CLIENT_H

#include <libwebsockets.h>
#include <pthread.h>
#include <time.h>

#include "internal.h"

enum herald__req_kind {
    HERALD__REQ_SUB,     /* an application subscribe, waiting on its subscription */
    HERALD__REQ_SUBSEND, /* queue marker: send the subscribe of `pattern` if still unsent */
    HERALD__REQ_UNSUB,
    HERALD__REQ_PUB,
    HERALD__REQ_PING
};

struct herald__req {
    struct herald__req *next;
    enum herald__req_kind kind;
    int64_t wire_id;
    char pattern[HERALD_TOPIC_MAX + 1]; /* pattern or topic */
    unsigned char *frame;               /* LWS_PRE headroom, then frame_len bytes of text */
    size_t frame_len;
    char key[HERALD_KEY_MAX + 1]; /* publish: its idempotency key */
    bool resent;                  /* publish: already sent again after a lost connection */
    bool sent;
    bool sync, done, abandoned;
    herald_reply_fn cb;
    void *arg;
    /* result */
    int status;
    herald_error err;
    char event_id[HERALD_ID_SIZE];
    size_t receivers, replayed;
    bool gap, duplicate;
};

/* An item of the event stream: the public event plus its strings in one allocation. */
struct herald__evitem {
    struct herald__evitem *next;
    size_t bytes;
    bool has_mark; /* an EVENT: handing it over moves the saved cursors (subs.c) */
    struct herald__evmark mark;
    herald_event ev;
    char buf[];
};

enum herald__cstate {
    HERALD__C_IDLE,       /* not started */
    HERALD__C_CONNECTING, /* TCP/TLS/HTTP upgrade in progress */
    HERALD__C_HANDSHAKE,  /* WebSocket open, waiting for the welcome */
    HERALD__C_OPEN,       /* welcomed: requests flow */
    HERALD__C_WAITING,    /* waiting to retry */
    HERALD__C_STOPPED     /* fatal error or closing */
};

struct herald_client {
    pthread_mutex_t mu;
    pthread_cond_t cond; /* broadcast on every change a caller may be waiting for */
    int pipe_rd, pipe_wr;
    bool fd_signalled;
    pthread_t thread;
    bool thread_started;

    /* Immutable after creation. */
    struct lws_context *ctx;
    struct herald__url *urls; /* the servers, tried in turn (herald__url_list_parse) */
    size_t n_urls;
    struct herald_options opts; /* the client's own copy */
    lws_retry_bo_t idle_policy;
    struct lws_protocols protocols[2];

    /* I/O thread only. */
    struct lws *wsi;
    unsigned char *wbuf; /* lws masks what it writes in place: frames are written from here */
    size_t wbuf_cap;
    struct herald__backoff backoff;
    lws_sorted_usec_list_t sul_retry, sul_deadline, sul_close;
    uint64_t open_since_us;
    unsigned char *rx;
    size_t rx_len;
    int close_code; /* from the server's close frame, 0 when none came */
    char close_reason[124];
    herald_error drop_why; /* why we are dropping the connection ourselves */
    bool rx_paused;

    /* Guarded by mu. */
    size_t cur_url;  /* index in urls of the current or last attempt */
    size_t attempts; /* connection attempts made, the first included */
    enum herald__cstate cstate;
    bool connected, ever_connected;
    size_t max_event_bytes;
    struct herald__subs subs;
    struct herald__req *outq, *outq_tail; /* to send, in order */
    struct herald__req *inflight;         /* sent, waiting for the reply */
    size_t n_pending;
    int64_t next_wire_id;
    char key_prefix[24]; /* random per client: its publishes' keys are "<prefix>-<n>" */
    uint64_t key_seq;
    struct herald__evitem *evq, *evq_tail;
    size_t evq_n, evq_bytes;
    size_t in_hand; /* taken off evq by herald_process(), callbacks not yet run */
    struct herald__req *cbq, *cbq_tail; /* async completions for herald_process */
    bool closing, stop_thread, fatal;
    herald_error fatal_err;
};

/* The server of the current (or last) connection attempt; mu held, or the I/O thread. */
static inline const struct herald__url *herald__cur_url(const struct herald_client *c)
{
    return &c->urls[c->cur_url];
}

/* client.c: runs on the I/O thread. */
void *herald__thread_main(void *arg);
/* Builds the lws context for `c` (URL, options and protocols already set). Returns 0 or
 * HERALD_E_NOMEM / HERALD_E_CONNECT with `err` set. */
int herald__ctx_create(struct herald_client *c, herald_error *err);

/* queue.c: the queues towards the application; all but the last three require `mu` held. */
void herald__notify(struct herald_client *c);
void herald__complete(struct herald_client *c, struct herald__req *r, int status,
                      const herald_error *err);
void herald__push_event(struct herald_client *c, struct herald__evitem *it);
struct herald__evitem *herald__event_new(herald_event_type type, const char *pattern,
                                         const herald_error *err, size_t extra);
bool herald__evq_full(const struct herald_client *c);
/* Fails every request (queued, in flight, waiting on subscriptions) with `err`. */
void herald__fail_all(struct herald_client *c, const herald_error *err);
/* Empties the herald_fd() pipe once nothing is left for the application. */
void herald__drain_fd(struct herald_client *c);
/* Frees a request and its frame; NULL is ignored. */
void herald__req_free(struct herald__req *r);
/* Sets *ts to `ms` from now on CLOCK_MONOTONIC (the clock of the client's condvar). */
void herald__deadline_in(struct timespec *ts, int ms);
/* Runs the async callbacks of `list` (taken off the queue, mu NOT held) and frees them. */
void herald__run_completions(struct herald_client *c, struct herald__req *list);

#endif
