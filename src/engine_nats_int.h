/* SPDX-License-Identifier: MIT */
/*
 * Shared by the NATS JetStream engine's files (engine_nats.h is the public side); nobody else
 * includes it. Three kinds of thread meet in the engine:
 * - the loop thread owns all engine state, the publishes in flight and every sink call. It
 *   also does the connection's I/O: libnats runs on our libuv loop through its libuv adapter,
 *   so the feed's messages are read, parsed and delivered on this thread with no hand-off;
 * - libnats' threads run our other callbacks (publish acks, connection events, status
 *   requests); they only turn what they got into an item and push it onto the hand-off
 *   queue (handoff.c), waking the loop with uv_async_send;
 * - one worker thread of ours makes every synchronous NATS call (stream info and creation,
 *   consumer creation and deletion, replays, message gets): with the connection's I/O on the
 *   loop, such a call made on the loop would wait for a reply only the loop can read
 *   (NATS_NOTES: a synchronous call must not run on the loop).
 * The loop drains the queue in order, a bounded batch per wake-up.
 *
 * The feed is one ordered consumer over "<prefix>.>" per attach, read as a synchronous
 * subscription that the loop empties after each turn's I/O (a uv_check handle). The worker
 * creates each new consumer from just after the last message the loop took (feed_seq, under
 * feed_lock) and hands it over in IT_ATTACHED; the loop then stops reading its predecessor
 * and gives it back to the worker to delete. Anything the two overlap on is a duplicate the
 * loop drops by sequence. Ids are the stream's epoch base plus the sequence (natsid.c).
 *
 * The files: engine_nats.c (the engine's ops: start, publish, replay, stop; construction),
 * engine_nats_conn.c (the connection and libnats' callbacks), engine_nats_worker.c (the
 * worker thread: stream creation and checks, attaches, replays), engine_nats_loop.c (the
 * loop side: publishes in flight and their acks, the feed into the sink, readiness) and
 * engine_nats_status.c (delivery status across nodes by request/reply).
 */
#ifndef HD_ENGINE_NATS_INT_H
#define HD_ENGINE_NATS_INT_H

#include <nats/nats.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "engine_nats.h"
#include "handoff.h"

#define DRAIN_BATCH 256           /* items per loop wake-up (NATS_NOTES: cap each drain) */
#define ACK_WAIT_MS 5000          /* one attempt's wait for JetStream's ack */
#define PUBLISH_DEADLINE_MS 30000 /* give up retrying after this (leader elections take ~8 s) */
#define RETRY_EVERY_MS 250
#define CHECK_EVERY_MS 2000    /* stream info: epoch changes, lag, a stream gone */
#define RECOVER_MAX 100000     /* newest events read back into history at start-up */
#define START_WAIT_MS 10000    /* start() waits this long for a first attach */
#define MAX_INFLIGHT 65536     /* async publishes in flight before 503 */
#define DEDUPE_WINDOW_S 120    /* the stream's duplicate window (Nats-Msg-Id) */
#define REPLAY_MAX 100000      /* events one replay may return */
#define FEED_HEARTBEAT_MS 1000 /* the feed consumer's idle heartbeat */
#define STOP_WAIT_MS 5000      /* at stop, how long publishes in flight may take */
#define HDR_TIME "Herald-Time"
#define HDR_EVENT "Herald-Event"
#define HDR_KEY "Herald-Key"
#define HDR_MSGID "Nats-Msg-Id"
#define STATUS_SUBJECT_FMT "_herald.%s.status" /* outside the stream's "<prefix>.>" */

enum item_kind {
    IT_CONN,       /* connected / disconnected / closed */
    IT_REACHABLE,  /* not connected yet, and server `server` answers: connect now */
    IT_ATTACHED,   /* the worker attached the feed to the stream: a new consumer in `sub` */
    IT_DETACHED,   /* an attach failed half-way (no consumer): attach again */
    IT_FATAL,      /* the stream does not fit: stay unready */
    IT_CHECKED,    /* periodic stream info */
    IT_DUP_TIME,   /* the time of the event a duplicate publish named */
    IT_REPLAY,     /* a replay's result */
    IT_STATUS_REQ, /* another node asks for an event's status */
    IT_STATUS_ANS, /* an answer to our gather */
};

struct pub;

struct item {
    struct hd_handoff_node node; /* first */
    enum item_kind kind;
    /* IT_CONN */
    bool up;
    /* IT_REACHABLE: an index in e->servers */
    int server;
    /* IT_ATTACHED / IT_CHECKED */
    uint64_t base, first_seq, last_seq, start_seq;
    natsSubscription *sub; /* IT_ATTACHED: the feed's new consumer, owned by the item */
    bool present;          /* IT_CHECKED: the stream exists */
    /* IT_DUP_TIME */
    uint64_t seq;
    struct pub *pub;
    int64_t time_ms;
    /* IT_REPLAY */
    struct replay *replay;
    /* IT_STATUS_* */
    uint64_t id; /* the event; for an answer, the gather it answers */
    char *reply;
    struct hd_status_counts counts;
};

/* A publish in flight, keyed in `pubs` by its token: JetStream answers to the reply subject
 * <reply_prefix><token>, whichever attempt it answers. */
struct pub {
    uint64_t token;
    natsMsg *msg;       /* owned; its reply subject carries the token */
    uint64_t ack_by_ns; /* the current attempt's answer is overdue after this */
    hd_pub_ack_fn ack;
    void *arg;
    int64_t time_ms;
    uint64_t deadline_ns;
    unsigned attempts;
    uint64_t retry_at_ns; /* backoff: 250 ms doubling to 2 s while no leader answers */
    bool retrying, awaiting_time;
    struct pub *next_retry;
};

enum job_kind { JOB_ATTACH, JOB_CHECK, JOB_PROBE, JOB_DUP_TIME, JOB_REPLAY, JOB_RETIRE, JOB_STOP };

struct job {
    struct job *next;
    enum job_kind kind;
    struct pub *pub;
    uint64_t seq;
    struct replay *replay;
    natsSubscription *sub; /* JOB_RETIRE: a superseded feed consumer to delete (owned) */
};

struct replay {
    char *subject;
    uint64_t after_id, upto_id;
    hd_replay_fn done;
    void *arg;
    /* results, filled by the worker */
    struct hd_msg **msgs;
    size_t n;
    bool gap;
    int err;
};

struct gather {
    struct nats_engine *e;
    struct gather *next;
    uint64_t id;
    natsSubscription *sub;
    uv_timer_t timer;
    hd_status_gather_fn done;
    void *arg;
    struct hd_status_counts sum;
    unsigned nodes;
    bool finished;
};

struct nats_engine {
    struct hd_engine base;
    uv_loop_t *loop;
    uv_async_t async;
    uv_timer_t retry_timer, check_timer;
    uv_check_t turn_check; /* takes acks and the feed after each turn's I/O */
    uv_idle_t turn_more;   /* keeps the loop from sleeping while a drained batch left more */
    uv_timer_t pump_timer; /* bounds each turn ne_pump runs */
    int handles_open;
    struct hd_handoff inbox;

    /* Copied configuration. */
    char **servers;
    int n_servers;
    char *stream, *prefix, *node, *creds, *ca, *status_subject;
    int replicas;
    uint32_t max_age_s, max_event_bytes;
    uint32_t dedupe_window_s; /* the stream's duplicate window: history.dedupe_window_s, and at
                                 least DEDUPE_WINDOW_S for our own retries */
    char instance[24];        /* tells our own status requests apart from other nodes' */

    /* libnats objects: created by the worker, used by the loop only while attached. */
    natsOptions *opts;
    natsConnection *nc;
    jsCtx *js;
    natsSubscription *feed_sub; /* the loop's; the worker creates and deletes them */
    natsSubscription *ack_sub;  /* publish answers: <reply_prefix>*, read by the loop */
    natsSubscription *status_sub;
    char reply_prefix[48];

    /* Where the feed stands, for the worker's next attach: under feed_lock. */
    pthread_mutex_t feed_lock;
    uint64_t feed_base, feed_seq, feed_start;

    /* Worker. */
    pthread_t worker;
    bool worker_started;
    atomic_bool worker_done; /* set as the worker returns, so stop() can run the loop till then */
    pthread_mutex_t job_lock;
    pthread_cond_t job_cond;
    struct job *jobs, *jobs_tail;
    bool attach_queued, check_queued, probe_queued;
    /* start() waits for the first attach outcome. */
    int first_outcome; /* 0 pending, 1 attached, -errno */
    char first_why[256];
    atomic_bool connected_flag; /* libnats' view, for the worker */

    /* Loop-owned. */
    bool started, connected, attached, ready, recovering, recover_base_sent, draining, stopping,
        stopped, destroyed, fatal;
    size_t n_retrying;  /* publishes in the retry list (sent, failed, waiting to be resent) */
    uint64_t ep_base;   /* epoch base of the stream we follow (0: none yet) */
    uint64_t last_seq;  /* last stream sequence delivered (or recovered) */
    uint64_t start_seq; /* where the current feed started */
    uint64_t recover_until;
    uint64_t stream_last_seq;
    uint64_t msgid_counter, token_counter;
    struct pub **pubs; /* open addressing by natsMsg pointer */
    size_t pubs_cap, n_pubs;
    struct pub *retry_head;
    struct hd_metrics *metrics;
    hd_status_lookup_fn status_lookup;
    void *status_arg;
    struct gather *gathers; /* open ones; answers find theirs by id */
};

static inline struct nats_engine *E(struct hd_engine *e)
{
    return (struct nats_engine *)e;
}

/* engine_nats_conn.c: the connection and libnats' callbacks */

/* Makes the options and tries a first connection (ne_connect_try). Returns 0, also when there
 * is none yet, or -EINVAL/-EIO (libnats or its options) with a sentence in `why`. Loop thread. */
int ne_connect(struct nats_engine *e, char *why, size_t why_len);
/* Connects (libnats reconnects by itself from then on) and makes the JetStream context and
 * the acknowledgement and status subscriptions, trying e->servers[first] first (-1: in
 * libnats' random order). 0, -EAGAIN (no server answered) or -EIO. Loop thread: libnats'
 * libuv adapter attaches a new connection only there. */
int ne_connect_try(struct nats_engine *e, int first);
/* The index of the first server in e->servers that answers with its INFO line (bounded: 2 s
 * each), else -EHOSTUNREACH. Worker thread. */
int ne_probe_servers(struct nats_engine *e);
/* Logs a warning when the server connected to is older than 2.10 (bounded: 2 s). */
void ne_warn_old_server(struct nats_engine *e);
/* Pushes `it` (taken) onto the hand-off queue and wakes the loop. Any thread. */
void ne_post(struct nats_engine *e, struct item *it);
/* A zeroed item of `kind` (the caller owns it), or NULL when out of memory (logged). */
struct item *ne_item_new(enum item_kind kind);
/* Runs the loop for one turn (waking at least every 50 ms): start() and stop() wait this way
 * for what only the loop can read, since the connection's I/O is on it. Loop thread, outside
 * any loop callback. */
void ne_pump(struct nats_engine *e);

/* engine_nats_worker.c: the worker thread */

/* The worker thread's body; arg is the engine. Returns at JOB_STOP. */
void *ne_worker_main(void *arg);
/* Queues `j` (taken) for the worker; JOB_STOP jumps the queue. Any thread. */
void ne_job_post(struct nats_engine *e, struct job *j);
/* Queues a job of a kind that must not queue twice (attach, check); nothing when out of
 * memory (the check timer asks again). */
void ne_job_post_once(struct nats_engine *e, enum job_kind kind);
/* Turns a stream message (borrowed) into an event with `id`, and its key into *key (owned
 * by the caller); NULL when it is not a Herald event. Any thread. */
struct hd_msg *ne_event_of(struct nats_engine *e, natsMsg *m, uint64_t id, char **key);

/* engine_nats_loop.c: the loop side (loop thread only) */

/* The table of publishes in flight, keyed by token. put: 0 or -ENOMEM. */
int ne_pubs_put(struct nats_engine *e, struct pub *p);
struct pub *ne_pubs_find(struct nats_engine *e, uint64_t token, size_t *slot);
void ne_pubs_del_slot(struct nats_engine *e, size_t s);
/* Sends `p` (its message stays ours until libnats takes it). 0, -EAGAIN or -EIO. */
int ne_send_pub(struct nats_engine *e, struct pub *p);
/* Answers `p` (freed, with its message) with err, or with the id made of seq. */
void ne_pub_finish(struct nats_engine *e, struct pub *p, int err, uint64_t seq, int64_t time_ms,
                   bool duplicate);
void ne_update_gauges(struct nats_engine *e);
/* Acts on one item from the hand-off queue (borrowed: free it with ne_item_free). */
void ne_handle_item(struct nats_engine *e, struct item *it);
void ne_item_free(struct item *it);
/* Handles everything queued, not a batch: stop() runs it while the loop does not. */
void ne_drain_inbox(struct nats_engine *e);
void ne_on_async(uv_async_t *a);
void ne_on_check_timer(uv_timer_t *t);
/* Gives a superseded feed consumer (taken) to the worker to delete; destroys it here when the
 * worker is gone or memory is (no deletion then: the server drops an idle one itself). */
void ne_retire_sub(struct nats_engine *e, natsSubscription *sub);
/* The connection is up or down (libnats' callbacks, or our own first connection): attach
 * when up, and readiness follows. */
void ne_set_connected(struct nats_engine *e, bool up);
/* After each turn's I/O: takes the publish answers and feed messages libnats read (bounded
 * batches) into the publishes in flight and the sink. */
void ne_on_turn(uv_check_t *c);

/* engine_nats_status.c: delivery status across nodes */

/* The status subject's callback (libnats' thread); closure is the engine. */
void ne_on_status_request(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure);
/* Answers another node's request with this node's counts. Loop thread. */
void ne_handle_status_req(struct nats_engine *e, struct item *it);
/* Adds an answer to the gather it belongs to (none: too late, dropped). Loop thread. */
void ne_status_answered(struct nats_engine *e, const struct item *it);
/* Ends a gather: calls its callback with err and what was summed, and frees it. */
void ne_gather_finish(struct gather *g, int err);

#endif
