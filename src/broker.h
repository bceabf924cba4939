/* SPDX-License-Identifier: MIT */
/*
 * The broker: connections, their subscriptions and outbound queues, command handling and
 * fan-out. It decides every policy question (limits, errors, ordering, slow consumers) and
 * knows nothing of sockets: a transport attaches a connection with a small ops table that
 * can ask for a write and close with a code, and feeds it whole text messages.
 */
#ifndef HD_BROKER_H
#define HD_BROKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "auth.h"
#include "config.h"
#include "engine.h"
#include "fanout.h"
#include "history.h"
#include "metrics.h"
#include "protocol.h"
#include "registry.h"

struct hd_broker;
struct hd_conn;
struct hd_peer;

/* What a transport provides for one connection. */
struct hd_conn_ops {
    /* Ask to be told (hd_conn_writable) when the peer can take more bytes. */
    void (*want_write)(struct hd_conn *c);
    /* Close as soon as possible with a WebSocket close code and reason (code 0: drop the
     * connection without a close frame, for a peer that no longer answers). `reason` is a
     * string literal, kept by pointer. The broker calls it at most once per connection and
     * then no longer queues anything to it. */
    void (*close)(struct hd_conn *c, int code, const char *reason);
    /* Send a WebSocket ping (heartbeat). NULL for transports without one. */
    void (*ping)(struct hd_conn *c);
};

enum hd_conn_kind { HD_CONN_WS, HD_CONN_SSE, HD_CONN_POLL };

/* One subscription of a connection. */
struct hd_conn_sub {
    struct hd_sub *reg;    /* registry handle */
    uint64_t covered_from; /* events of this pattern with seq > this reached the queue */
};

struct hd_conn {
    struct hd_subscriber subscriber; /* registry owner; first member */
    const struct hd_conn_ops *ops;
    struct hd_broker *broker;
    uint64_t id;
    struct hd_queue q;
    struct hd_conn_sub *subs;
    uint32_t n_subs, cap_subs;
    uint32_t clock; /* its entry in the broker's dense array of attached connections */
    /* Small fields together: an idle connection's size is what 18,000 of them cost. */
    enum hd_conn_kind kind;
    uint16_t bad_in_row; /* at most HD_MAX_BAD_IN_ROW */
    bool closing;        /* close requested: nothing more is queued */
    bool want_pending;
    /* Token bucket for publish_rate. */
    double tokens;
    uint64_t tokens_ns;
    /* Who this is: set by the transport before hd_conn_attach, released by detach. The raw
     * credential (malloc'd, NULL for anonymous) is kept to re-check it on SIGHUP. */
    struct hd_identity identity;
    char *credential;
};

/* The peer showed signs of life (any frame, including a pong). */
void hd_conn_touch(struct hd_conn *c);

/* Close codes (PROTOCOL.md section 7). */
enum {
    HD_CLOSE_GOING_AWAY = 1001,
    HD_CLOSE_UNSUPPORTED = 1003,
    HD_CLOSE_POLICY = 1008,
    HD_CLOSE_TOO_BIG = 1009,
    HD_CLOSE_SLOW_CONSUMER = 4000,
    HD_CLOSE_TOO_MANY_ERRORS = 4001,
};

/* Consecutive refused commands after which a connection is closed with 4001. */
#define HD_MAX_BAD_IN_ROW 100

/*
 * Creates the broker over `cfg` (borrowed; must outlive the broker or be replaced with
 * hd_broker_reload). `start_seq` is the first id the engine will assign; `base_seq` the
 * oldest id history can know (see history.h). Returns NULL when out of memory.
 */
struct hd_broker *hd_broker_new(const struct hd_config *cfg, uint64_t base_seq);
void hd_broker_free(struct hd_broker *b);

/* Installs the engine (ownership taken; destroyed by hd_broker_free). */
void hd_broker_set_engine(struct hd_broker *b, struct hd_engine *e);
/* The delivery entry point engines call (hd_deliver_fn). */
size_t hd_broker_deliver(void *broker, struct hd_msg *msg);

/*
 * Installs the authenticator (ownership taken; the previous one is freed). Existing
 * connections are checked again: credentials that no longer authenticate close with 1008,
 * and subscriptions no longer allowed are dropped.
 */
void hd_broker_set_auth(struct hd_broker *b, struct hd_auth *a);
struct hd_auth *hd_broker_auth(const struct hd_broker *b);

/*
 * Takes one publish token from a bucket refilled at limits.publish_rate per second up to
 * limits.publish_burst. Returns 0, or the seconds to wait (>= 1) when empty. Rate 0: always 0.
 */
uint32_t hd_broker_rate_take(const struct hd_broker *b, double *tokens, uint64_t *stamp_ns);

struct hd_metrics *hd_broker_metrics(struct hd_broker *b);
struct hd_history *hd_broker_history(struct hd_broker *b);
const struct hd_config *hd_broker_config(const struct hd_broker *b);
/* Switches to a new config (borrowed) for what can change at run time (limits, log level). */
void hd_broker_reload(struct hd_broker *b, const struct hd_config *cfg);

/* Draining: new connections and publishes are refused, WebSocket clients are closed 1001. */
void hd_broker_drain(struct hd_broker *b);
bool hd_broker_draining(const struct hd_broker *b);
size_t hd_broker_connections(const struct hd_broker *b);

/*
 * Admits a new TCP connection from `sa` under limits.max_connections_per_ip. Returns the
 * count to hand back to hd_broker_peer_close when the connection ends; NULL with *refused
 * set (and err filled, code rate_limited) when the address is at its limit, or NULL with
 * *refused clear when the peer is admitted uncounted (not IP, or out of memory).
 */
struct hd_peer *hd_broker_peer_open(struct hd_broker *b, const struct sockaddr *sa, socklen_t len,
                                    bool *refused, struct hd_error *err);
/*
 * Publisher backpressure. While connection queues hold more than HD_PUBLISH_HOLD_BYTES,
 * a publish that became ready at `since_ns` is held (the transport leaves it unread) for
 * up to HD_PUBLISH_HOLD_MAX_MS, so fast publishers wait for subscribers to drain instead of
 * growing queues and latency. The wait is bounded so that a few readers that stopped
 * cannot stall every publisher: they fall behind until max_queue_bytes cuts them off.
 */
#define HD_PUBLISH_HOLD_BYTES (4 * 1024 * 1024)
#define HD_PUBLISH_HOLD_MAX_MS 20
bool hd_broker_publish_held(struct hd_broker *b, uint64_t since_ns, uint64_t now_ns);

/* Uncounts a connection admitted by hd_broker_peer_open; NULL is ignored. */
void hd_broker_peer_close(struct hd_broker *b, struct hd_peer *p);

/*
 * Attaches a connection the transport allocated (zeroed, owned by the transport). For
 * WebSocket connections the welcome frame is queued. Returns 0, or -ENOMEM / -ESHUTDOWN
 * (the transport should refuse the connection).
 */
int hd_conn_attach(struct hd_broker *b, struct hd_conn *c, enum hd_conn_kind kind,
                   const struct hd_conn_ops *ops);

/* Detaches: drops subscriptions and queued messages (counted as dropped). */
void hd_conn_detach(struct hd_conn *c);

/*
 * Handles one complete text message from a WebSocket client. Replies and errors are queued.
 * May call ops->close (e.g. 4001); the transport learns of it through that call.
 */
void hd_conn_on_text(struct hd_conn *c, const char *buf, size_t len);

/* The message to write next (borrowed), or NULL when the queue is empty. */
static inline struct hd_msg *hd_conn_peek(const struct hd_conn *c)
{
    return hd_queue_peek(&c->q);
}

/* The transport handed the peeked message to the kernel: counts it and dequeues it. */
void hd_conn_wrote(struct hd_conn *c);

/* Called by the transport in its writable callback before writing: clears the pending flag. */
static inline void hd_conn_writable(struct hd_conn *c)
{
    c->want_pending = false;
}

/* Queues a reply/control frame (takes no ownership of text). Returns 0 or -ENOMEM. */
int hd_conn_send_text(struct hd_conn *c, const char *text, size_t len);

/*
 * Publishes on behalf of an HTTP or WebSocket client after every check passed. `done` runs
 * with the result (see engine.h). Returns 0 or a negative errno with `err` filled (nothing
 * happened, `done` will not run).
 */
int hd_broker_publish(struct hd_broker *b, const struct hd_pub *pub, hd_pub_done_fn done, void *arg,
                      struct hd_error *err);

/*
 * Subscribes an SSE or long-poll connection (no reply frame): adds the pattern and queues
 * the replay after `since` (NULL: live only). Returns 0, or -1 with `err` (limit, OOM).
 */
int hd_conn_subscribe(struct hd_conn *c, const char *pattern, const char *since, bool *gap,
                      struct hd_error *err);

/* Drops queued messages without counting them as lost (a long poll answers from history). */
void hd_conn_discard_queue(struct hd_conn *c);

/* Periodic housekeeping (history age expiry). */
void hd_broker_tick(struct hd_broker *b);

#endif
