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

/*
 * What each kind of connection receives. WS: the welcome, replies and event frames. SSE: the
 * event stream's text (events, gap and unsubscribed notices), ready to write. POLL: nothing
 * is queued; a waiting long poll is woken (want_write) when a matching event arrives, or
 * closed (close) when the server ends it, and then answers from history.
 */

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
    uint8_t ended;         /* enum hd_err: why the server ended the subscription (long polls) */
    uint16_t replays;      /* engine replays in flight for new subscriptions */
    struct hd_queue *held; /* live events waiting behind those replays, else NULL */
    /* Who this is: set by the transport before hd_conn_attach, released by detach. The raw
     * credential (malloc'd, NULL for anonymous) is kept to re-check it on SIGHUP. */
    struct hd_identity identity;
    char *credential;
};

/* The peer showed signs of life (any frame, including a pong). */
void hd_conn_touch(struct hd_conn *c);

/* Close codes (PROTOCOL.md section 7; RFC 6455 section 7.4.1). */
enum {
    HD_CLOSE_GOING_AWAY = 1001,
    HD_CLOSE_PROTOCOL_ERROR = 1002,
    HD_CLOSE_UNSUPPORTED = 1003,
    HD_CLOSE_POLICY = 1008,
    HD_CLOSE_TOO_BIG = 1009,
    HD_CLOSE_INTERNAL = 1011,
    HD_CLOSE_SLOW_CONSUMER = 4000,
    HD_CLOSE_TOO_MANY_ERRORS = 4001,
};

/* Consecutive refused commands after which a connection is closed with 4001. */
#define HD_MAX_BAD_IN_ROW 100

/*
 * Creates the broker over `cfg` (borrowed; must outlive the broker or be replaced with
 * hd_broker_reload). History starts empty; the engine's start-up recovery fills it. Returns
 * NULL when out of memory.
 */
struct hd_broker *hd_broker_new(const struct hd_config *cfg);
void hd_broker_free(struct hd_broker *b);

/* Installs the engine (ownership taken; destroyed by hd_broker_free) and wires its sink. */
void hd_broker_set_engine(struct hd_broker *b, struct hd_engine *e);
/*
 * Starts the engine: recovery into history, then readiness (engine.h). Returns 0, or a
 * negative errno with a sentence in `why` (the daemon exits 2).
 */
int hd_broker_start(struct hd_broker *b, char *why, size_t why_len);
/* The installed engine (borrowed), or NULL. */
struct hd_engine *hd_broker_engine(const struct hd_broker *b);
/* True while publishes can be taken: the engine is ready and the broker is not draining. */
bool hd_broker_ready(const struct hd_broker *b);

/*
 * Installs the authenticator (ownership taken; the previous one is freed). Existing
 * connections are checked again: credentials that no longer authenticate close with 1008,
 * and subscriptions no longer allowed are dropped.
 */
void hd_broker_set_auth(struct hd_broker *b, struct hd_auth *a);
struct hd_auth *hd_broker_auth(const struct hd_broker *b);

struct hd_metrics *hd_broker_metrics(struct hd_broker *b);
struct hd_history *hd_broker_history(struct hd_broker *b);
const struct hd_config *hd_broker_config(const struct hd_broker *b);
/* Switches to a new config (borrowed) for what can change at run time (limits, log level). */
void hd_broker_reload(struct hd_broker *b, const struct hd_config *cfg);

/* Draining: new connections and publishes are refused, WebSocket clients are closed 1001. */
void hd_broker_drain(struct hd_broker *b);
bool hd_broker_draining(const struct hd_broker *b);
size_t hd_broker_connections(const struct hd_broker *b);
/* Publishes admitted and not yet answered (the drain waits for them). */
size_t hd_broker_publishes_in_flight(const struct hd_broker *b);

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

/* Who publishes: the identity (borrowed) and, for an anonymous one, what its rate is counted
 * under: its WebSocket connection (conn_id), else its address (peer_addr, else the text in
 * peer). Formatted into a limiter key only when a rate limit is set. */
struct hd_publisher {
    const struct hd_identity *identity;
    uint64_t conn_id;
    const struct hd_peer_addr *peer_addr;
    const char *peer;
    /* hd_broker_publish_check already passed for this identity, topic and key (an HTTP
     * publish is checked before its body is read): the rights and the key are not asked
     * again, the state (draining, readiness, size, queues) is. */
    bool rights_checked;
};

/* The answer to a publish (PROTOCOL.md section 3). */
struct hd_publish_result {
    uint64_t seq;
    int64_t time_ms;
    uint32_t receivers; /* connections on this node the event was queued to */
    bool duplicate;     /* answered from an earlier publish with the same key */
};

/* Completion of an admitted publish: exactly one of err (refused or failed: nothing was
 * published) and res is non-NULL; both are borrowed for the call. */
typedef void (*hd_publish_done_fn)(void *arg, const struct hd_error *err,
                                   const struct hd_publish_result *res);

/*
 * The admission point every publish passes (HTTP single and batch, WebSocket). `p->key` is
 * the client's idempotency key or NULL; the other fields are validated by the caller's
 * parser (topic, event kind, data as compact JSON). Checks everything, takes one rate token,
 * then hands the publish on. Returns HD_ERR_NONE when `done` will run exactly once (perhaps
 * before this returns), or the refusal with `err` filled (retry_after for rate_limited and
 * unavailable), when nothing happened and `done` will not run.
 */
enum hd_err hd_broker_publish(struct hd_broker *b, const struct hd_publisher *who,
                              const struct hd_pub *p, hd_publish_done_fn done, void *arg,
                              struct hd_error *err);
/* The parts of hd_broker_publish, for batches, where every line is checked and the rate
 * taken for all of them before any is submitted. check changes nothing; take takes `n`
 * tokens or none (*fits, when not NULL, says how many would have passed). */
enum hd_err hd_broker_publish_check(struct hd_broker *b, const struct hd_publisher *who,
                                    const struct hd_pub *p, struct hd_error *err);
enum hd_err hd_broker_publish_take(struct hd_broker *b, const struct hd_publisher *who, uint32_t n,
                                   uint32_t *fits, struct hd_error *err);
enum hd_err hd_broker_publish_submit(struct hd_broker *b, const struct hd_publisher *who,
                                     const struct hd_pub *p, hd_publish_done_fn done, void *arg,
                                     struct hd_error *err);

/*
 * Subscribes an SSE or long-poll connection (no reply frame). SSE: adds the pattern and
 * queues the replay after `since` (NULL: live only), preceded by a gap notice when *gap.
 * POLL: `since` is ignored; the connection only waits for the next matching event. Returns
 * HD_ERR_NONE, or the refusal with `err` (rights, limit, out of memory).
 */
enum hd_err hd_conn_subscribe(struct hd_conn *c, const char *pattern, const char *since, bool *gap,
                              struct hd_error *err);

/* Periodic housekeeping (history age expiry). */
void hd_broker_tick(struct hd_broker *b);

#endif
