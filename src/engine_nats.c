/* SPDX-License-Identifier: MIT */
/*
 * The NATS JetStream engine (engine_nats.h). Three kinds of thread meet here:
 * - the loop thread owns all engine state, the publishes in flight and every sink call;
 * - libnats' threads run our callbacks (feed messages, publish acks, connection events,
 *   status requests); they only turn what they got into an item and push it onto the
 *   hand-off queue (handoff.c), waking the loop with uv_async_send;
 * - one worker thread of ours makes every synchronous NATS call (connect, stream info and
 *   creation, consumer creation, replays, message gets), so the loop never waits on the
 *   network (NATS_NOTES: a synchronous call must not run on the loop).
 * The loop drains the queue in order, a bounded batch per wake-up.
 *
 * The feed is one ordered consumer over "<prefix>.>" per attach. Each attach gets a
 * generation number; the feed callback checks-and-pushes under feed_lock, and an attach
 * bumps the generation under the same lock, so a superseded consumer can never interleave
 * its messages with its successor's, and the successor starts right after the last message
 * pushed. Ids are the stream's epoch base plus the sequence (natsid.c).
 */
#include "engine_nats.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <nats/nats.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config.h"
#include "fanout.h"
#include "handoff.h"
#include "history.h"
#include "log.h"
#include "metrics.h"
#include "natsid.h"
#include "protocol.h"
#include "topic.h"

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
    IT_FEED,       /* a stream message, already turned into an event (or skipped) */
    IT_ACK,        /* a publish ack or failure */
    IT_CONN,       /* connected / disconnected / closed */
    IT_ATTACHED,   /* the worker attached the feed to the stream */
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
    /* IT_FEED */
    uint64_t seq, gen;
    struct hd_msg *msg; /* NULL: not a Herald event (skipped, but the sequence counts) */
    char *key;
    uint64_t pending; /* consumer's NumPending after this message */
    /* IT_ACK */
    natsMsg *nmsg;
    bool ok, duplicate;
    natsStatus st;
    jsErrCode jerr;
    /* IT_CONN */
    bool up;
    /* IT_ATTACHED / IT_CHECKED */
    uint64_t base, first_seq, last_seq, start_seq;
    bool present;
    /* IT_DUP_TIME */
    struct pub *pub;
    int64_t time_ms;
    /* IT_REPLAY */
    struct replay *replay;
    /* IT_STATUS_* */
    uint64_t id; /* the event; for an answer, the gather it answers */
    char *reply;
    struct hd_status_counts counts;
};

/* A publish in flight, keyed in `pubs` by its natsMsg (the ack handler hands it back). */
struct pub {
    natsMsg *msg; /* owned while not handed to libnats */
    hd_pub_ack_fn ack;
    void *arg;
    int64_t time_ms;
    uint64_t deadline_ns;
    unsigned attempts;
    uint64_t retry_at_ns; /* backoff: 250 ms doubling to 2 s while no leader answers */
    bool retrying, awaiting_time;
    struct pub *next_retry;
};

enum job_kind { JOB_ATTACH, JOB_CHECK, JOB_DUP_TIME, JOB_REPLAY, JOB_STOP };

struct job {
    struct job *next;
    enum job_kind kind;
    struct pub *pub;
    uint64_t seq;
    struct replay *replay;
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

struct feed_closure {
    struct nats_engine *e;
    uint64_t gen;
    struct feed_closure *older; /* retired ones, freed at destroy */
};

struct nats_engine {
    struct hd_engine base;
    uv_loop_t *loop;
    uv_async_t async;
    uv_timer_t retry_timer, check_timer;
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
    natsSubscription *feed_sub, *status_sub;
    struct feed_closure *feed_closure;

    /* Shared with the feed callback, under feed_lock. */
    pthread_mutex_t feed_lock;
    uint64_t feed_gen, feed_base, feed_seq, feed_start;

    /* Worker. */
    pthread_t worker;
    bool worker_started;
    pthread_mutex_t job_lock;
    pthread_cond_t job_cond;
    struct job *jobs, *jobs_tail;
    bool attach_queued, check_queued;
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
    uint64_t msgid_counter;
    struct pub **pubs; /* open addressing by natsMsg pointer */
    size_t pubs_cap, n_pubs;
    struct pub *retry_head;
    struct hd_metrics *metrics;
    hd_status_lookup_fn status_lookup;
    void *status_arg;
    struct gather *gathers; /* open ones; answers find theirs by id */
};

static const struct hd_engine_ops nats_ops;

static struct nats_engine *E(struct hd_engine *e)
{
    return (struct nats_engine *)e;
}

/* ---- publishes in flight: a pointer-keyed open-addressing table ------------------------- */

static size_t slot_of(const struct nats_engine *e, const natsMsg *m)
{
    uintptr_t h = (uintptr_t)m;
    h ^= h >> 17;
    h *= 0x9E3779B97F4A7C15ULL;
    return (size_t)(h >> 20) & (e->pubs_cap - 1);
}

static int pubs_grow(struct nats_engine *e)
{
    size_t cap = e->pubs_cap ? e->pubs_cap * 2 : 1024;
    struct pub **old = e->pubs, **t = calloc(cap, sizeof(*t));
    size_t old_cap = e->pubs_cap;
    if (!t)
        return -ENOMEM;
    e->pubs = t;
    e->pubs_cap = cap;
    for (size_t i = 0; i < old_cap; i++) {
        if (!old[i])
            continue;
        size_t s = slot_of(e, old[i]->msg);
        while (e->pubs[s])
            s = (s + 1) & (cap - 1);
        e->pubs[s] = old[i];
    }
    free(old);
    return 0;
}

static int pubs_put(struct nats_engine *e, struct pub *p)
{
    if ((e->n_pubs + 1) * 2 > e->pubs_cap && pubs_grow(e) < 0)
        return -ENOMEM;
    size_t s = slot_of(e, p->msg);
    while (e->pubs[s])
        s = (s + 1) & (e->pubs_cap - 1);
    e->pubs[s] = p;
    e->n_pubs++;
    return 0;
}

static struct pub *pubs_find(struct nats_engine *e, const natsMsg *m, size_t *slot)
{
    if (!e->pubs_cap)
        return NULL;
    for (size_t s = slot_of(e, m); e->pubs[s]; s = (s + 1) & (e->pubs_cap - 1)) {
        if (e->pubs[s]->msg == m) {
            *slot = s;
            return e->pubs[s];
        }
    }
    return NULL;
}

/* Backward-shift deletion keeps probe chains intact without tombstones. */
static void pubs_del_slot(struct nats_engine *e, size_t s)
{
    size_t mask = e->pubs_cap - 1;
    e->pubs[s] = NULL;
    e->n_pubs--;
    for (size_t j = (s + 1) & mask; e->pubs[j]; j = (j + 1) & mask) {
        size_t home = slot_of(e, e->pubs[j]->msg);
        /* Move j back to s when its home is not in the (s, j] range. */
        if ((j > s && (home <= s || home > j)) || (j < s && home <= s && home > j)) {
            e->pubs[s] = e->pubs[j];
            e->pubs[j] = NULL;
            s = j;
        }
    }
}

static void update_gauges(struct nats_engine *e)
{
    if (!e->metrics)
        return;
    e->metrics->engine_connected = e->ready;
    e->metrics->engine_publishes_pending = (int64_t)e->n_pubs;
    e->metrics->engine_feed_lag =
        e->stream_last_seq > e->last_seq ? (int64_t)(e->stream_last_seq - e->last_seq) : 0;
}

/* ---- hand-off to the loop --------------------------------------------------------------- */

static void post(struct nats_engine *e, struct item *it)
{
    if (hd_handoff_push(&e->inbox, &it->node))
        uv_async_send(&e->async);
}

static struct item *item_new(enum item_kind kind)
{
    struct item *it = calloc(1, sizeof(*it));
    if (it)
        it->kind = kind;
    else
        hd_log_error("out of memory in the NATS engine", "where=item");
    return it;
}

/* ---- the worker thread ------------------------------------------------------------------ */

static void job_post(struct nats_engine *e, struct job *j)
{
    pthread_mutex_lock(&e->job_lock);
    if (j->kind == JOB_STOP) { /* jumps the queue */
        j->next = e->jobs;
        e->jobs = j;
        if (!e->jobs_tail)
            e->jobs_tail = j;
    } else {
        j->next = NULL;
        if (e->jobs_tail)
            e->jobs_tail->next = j;
        else
            e->jobs = j;
        e->jobs_tail = j;
    }
    pthread_cond_signal(&e->job_cond);
    pthread_mutex_unlock(&e->job_lock);
}

/* Posts a job of a kind that must not queue twice (attach, check). */
static void job_post_once(struct nats_engine *e, enum job_kind kind)
{
    bool *flag = kind == JOB_ATTACH ? &e->attach_queued : &e->check_queued;
    pthread_mutex_lock(&e->job_lock);
    bool already = *flag;
    *flag = true;
    pthread_mutex_unlock(&e->job_lock);
    if (already)
        return;
    struct job *j = calloc(1, sizeof(*j));
    if (!j) {
        pthread_mutex_lock(&e->job_lock);
        *flag = false;
        pthread_mutex_unlock(&e->job_lock);
        return;
    }
    j->kind = kind;
    job_post(e, j);
}

static void first_outcome(struct nats_engine *e, int outcome, const char *why)
{
    pthread_mutex_lock(&e->job_lock);
    if (e->first_outcome == 0) {
        e->first_outcome = outcome;
        if (why)
            snprintf(e->first_why, sizeof(e->first_why), "%s", why);
        pthread_cond_broadcast(&e->job_cond);
    }
    pthread_mutex_unlock(&e->job_lock);
}

/* Reads the INFO line a NATS server sends first on a plain TCP connection, for its version
 * (libnats 3.4 does not expose it). Bounded: 2 s, 8 KiB. Returns 0 with major/minor set. */
static int server_version(const char *url, int *major, int *minor, char *text, size_t cap)
{
    char host[256] = "", port[8] = "4222";
    const char *p = strstr(url, "://");
    p = p ? p + 3 : url;
    const char *at = strrchr(p, '@');
    if (at)
        p = at + 1;
    const char *end = *p == '[' ? strchr(p, ']') : NULL;
    const char *colon = end ? strchr(end, ':') : strrchr(p, ':');
    size_t hl = colon ? (size_t)(colon - p) : strlen(p);
    if (*p == '[') {
        p++;
        hl = end ? (size_t)(end - p) : hl;
    }
    if (hl == 0 || hl >= sizeof(host))
        return -EINVAL;
    memcpy(host, p, hl);
    if (colon)
        snprintf(port, sizeof(port), "%.5s", colon + 1);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
    if (getaddrinfo(host, port, &hints, &ai) != 0 || !ai)
        return -EHOSTUNREACH;
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int rc = fd < 0 ? -errno : 0;
    if (rc == 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS)
        rc = -errno;
    freeaddrinfo(ai);
    char buf[8192];
    size_t n = 0;
    while (rc == 0 && n < sizeof(buf) - 1 && !memchr(buf, '\n', n)) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, 2000) <= 0) {
            rc = -ETIMEDOUT;
            break;
        }
        ssize_t r = read(fd, buf + n, sizeof(buf) - 1 - n);
        if (r <= 0)
            rc = r < 0 ? -errno : -ECONNRESET;
        else
            n += (size_t)r;
    }
    if (fd >= 0)
        close(fd);
    if (rc < 0)
        return rc;
    buf[n] = '\0';
    return hd_natsid_info_version(buf, major, minor, text, cap);
}

static void log_nats_error(const char *msg, natsStatus s, jsErrCode jerr)
{
    const char *last = nats_GetLastError(NULL);
    hd_log_warn(msg, "status=\"%s\" js_error=%d detail=\"%s\"", natsStatus_GetText(s), (int)jerr,
                last ? last : "");
}

/*
 * Checks an existing stream against what Herald needs. Returns 0, or -EINVAL with a sentence
 * in `why` that says what to change.
 */
static int stream_fits(struct nats_engine *e, const jsStreamInfo *si, char *why, size_t cap)
{
    const jsStreamConfig *c = si->Config;
    char want[160];
    snprintf(want, sizeof(want), "%s.>", e->prefix);
    bool subj = false;
    for (int i = 0; c && i < c->SubjectsLen; i++)
        subj = subj || strcmp(c->Subjects[i], want) == 0;
    if (!c || !subj) {
        snprintf(why, cap,
                 "stream %s exists but does not take the subjects \"%s\": delete it or set "
                 "engine.stream/engine.subject_prefix to match it",
                 e->stream, want);
        return -EINVAL;
    }
    if (c->Retention != js_LimitsPolicy) {
        snprintf(why, cap,
                 "stream %s has a work-queue or interest retention policy, which deletes events "
                 "once read; Herald needs the limits policy",
                 e->stream);
        return -EINVAL;
    }
    if (c->Replicas != e->replicas) {
        snprintf(why, cap,
                 "stream %s has %d replicas but engine.replicas is %d: set engine.replicas to "
                 "%d, or change the stream's replicas with the nats CLI",
                 e->stream, (int)c->Replicas, e->replicas, (int)c->Replicas);
        return -EINVAL;
    }
    if (c->Duplicates < (int64_t)e->dedupe_window_s * 1000000000) {
        snprintf(why, cap,
                 "stream %s keeps message ids for %llds, less than the %ds Herald relies on "
                 "to make retried publishes safe",
                 e->stream, (long long)(c->Duplicates / 1000000000), (int)e->dedupe_window_s);
        return -EINVAL;
    }
    if (c->NoAck || c->Sealed) {
        snprintf(why, cap, "stream %s is %s: it cannot acknowledge publishes", e->stream,
                 c->Sealed ? "sealed" : "configured with no_ack");
        return -EINVAL;
    }
    if (hd_natsid_base(si->Created) == 0) {
        snprintf(why, cap, "stream %s reports no plausible creation time", e->stream);
        return -EINVAL;
    }
    return 0;
}

/* Gets the stream's info, creating the stream when it is missing. Worker thread. Returns 0,
 * -EINVAL (does not fit; `why` set) or -EAGAIN (NATS trouble, try again). */
static int stream_ensure(struct nats_engine *e, jsStreamInfo **out, char *why, size_t cap)
{
    jsErrCode jerr = 0;
    jsStreamInfo *si = NULL;
    natsStatus s = js_GetStreamInfo(&si, e->js, e->stream, NULL, &jerr);
    if (s == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr) {
        char subject[160];
        const char *subjects[] = {subject};
        jsStreamConfig sc;
        snprintf(subject, sizeof(subject), "%s.>", e->prefix);
        jsStreamConfig_Init(&sc);
        sc.Name = e->stream;
        sc.Subjects = subjects;
        sc.SubjectsLen = 1;
        sc.Retention = js_LimitsPolicy;
        sc.Storage = js_FileStorage;
        sc.Replicas = e->replicas;
        sc.Duplicates = (int64_t)e->dedupe_window_s * 1000000000;
        sc.MaxAge = (int64_t)e->max_age_s * 1000000000;
        sc.MaxMsgSize = (int32_t)(e->max_event_bytes + 4096);
        sc.AllowDirect = true;
        jerr = 0;
        s = js_AddStream(&si, e->js, &sc, NULL, &jerr);
        if (s == NATS_OK)
            hd_log_info("created the JetStream stream", "stream=%s subjects=%s replicas=%d",
                        e->stream, subject, e->replicas);
    }
    if (s != NATS_OK) {
        /* Not enough servers for the replicas, JetStream disabled, no permission: say so. */
        const char *last = nats_GetLastError(NULL);
        snprintf(why, cap, "cannot get or create stream %s: %s (js error %d) %s", e->stream,
                 natsStatus_GetText(s), (int)jerr, last ? last : "");
        jsStreamInfo_Destroy(si);
        /* A config the cluster can never satisfy is fatal; anything else may pass. */
        return jerr == JSStreamReplicasNotSupportedErr || jerr == JSNotEnabledErr ? -EINVAL
                                                                                  : -EAGAIN;
    }
    int rc = stream_fits(e, si, why, cap);
    if (rc < 0) {
        jsStreamInfo_Destroy(si);
        return rc;
    }
    *out = si;
    return 0;
}

static void on_feed_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure);

/*
 * Attaches the feed: stream info (creating the stream when missing), then a new ordered
 * consumer from just after the last message pushed, or from the recovery point on the first
 * attach or a new epoch. Worker thread.
 */
static void do_attach(struct nats_engine *e)
{
    char why[400] = "";
    jsStreamInfo *si = NULL;
    if (!atomic_load(&e->connected_flag)) {
        first_outcome(e, -EAGAIN, "not connected");
        return; /* the reconnect callback asks again */
    }
    int rc = stream_ensure(e, &si, why, sizeof(why));
    if (rc == -EINVAL) {
        hd_log_error("the JetStream stream does not fit", "why=\"%s\"", why);
        first_outcome(e, -EINVAL, why);
        struct item *it = item_new(IT_FATAL);
        if (it)
            post(e, it);
        return;
    }
    if (rc < 0) {
        hd_log_warn("cannot attach to the stream yet; retrying", "why=\"%s\"", why);
        first_outcome(e, -EAGAIN, why);
        return; /* the periodic check tries again */
    }
    uint64_t base = hd_natsid_base(si->Created);
    uint64_t first = si->State.FirstSeq, last = si->State.LastSeq, start;
    jsStreamInfo_Destroy(si);

    /* Retire the old consumer; its callbacks are fenced off by the generation. */
    pthread_mutex_lock(&e->feed_lock);
    e->feed_gen++;
    bool same = e->feed_base == base;
    if (same) {
        start = e->feed_seq ? e->feed_seq + 1 : e->feed_start;
    } else {
        start = last + 1 > RECOVER_MAX ? last + 1 - RECOVER_MAX : 1;
        if (start < first)
            start = first;
        e->feed_base = base;
        e->feed_seq = 0;
        e->feed_start = start;
    }
    uint64_t gen = e->feed_gen;
    struct item *it = item_new(IT_ATTACHED);
    if (it) {
        *it = (struct item){.kind = IT_ATTACHED,
                            .base = base,
                            .first_seq = first,
                            .last_seq = last,
                            .start_seq = start,
                            .gen = gen,
                            .present = same};
        post(e, it); /* under the lock: before any message of the new generation */
    }
    pthread_mutex_unlock(&e->feed_lock);
    if (e->feed_sub) {
        natsSubscription_Unsubscribe(e->feed_sub);
        natsSubscription_Destroy(e->feed_sub);
        e->feed_sub = NULL;
    }
    struct feed_closure *fc = calloc(1, sizeof(*fc));
    if (!fc)
        return;
    *fc = (struct feed_closure){.e = e, .gen = gen};
    char subject[160];
    snprintf(subject, sizeof(subject), "%s.>", e->prefix);
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = e->stream;
    so.Ordered = true;
    so.Config.DeliverPolicy = js_DeliverByStartSequence;
    so.Config.OptStartSeq = start;
    /* Heartbeats every second: a consumer lost with its server is noticed in ~3 s. */
    so.Config.Heartbeat = (int64_t)FEED_HEARTBEAT_MS * 1000000;
    jsErrCode jerr = 0;
    natsSubscription *sub = NULL;
    natsStatus s = js_Subscribe(&sub, e->js, subject, on_feed_msg, fc, NULL, &so, &jerr);
    if (s != NATS_OK) {
        log_nats_error("cannot create the stream consumer; retrying", s, jerr);
        free(fc);
        first_outcome(e, -EAGAIN, "cannot create the stream consumer");
        /* Not attached after all: the loop goes unready and its check timer tries again. */
        struct item *d = item_new(IT_DETACHED);
        if (d)
            post(e, d);
        return;
    }
    /* Room for a catch-up burst: libnats drops (slow consumer) past its pending limits. */
    natsSubscription_SetPendingLimits(sub, 1 << 20, 1 << 30);
    e->feed_sub = sub;
    /* A callback of a retired consumer may still be running with its closure: libnats has
     * no barrier for that, so retired closures (a few bytes per reattach) live until destroy. */
    fc->older = e->feed_closure;
    e->feed_closure = fc;
    first_outcome(e, 1, NULL);
}

static void do_check(struct nats_engine *e)
{
    jsErrCode jerr = 0;
    jsStreamInfo *si = NULL;
    if (!atomic_load(&e->connected_flag))
        return;
    natsStatus s = js_GetStreamInfo(&si, e->js, e->stream, NULL, &jerr);
    struct item *it = item_new(IT_CHECKED);
    if (!it) {
        jsStreamInfo_Destroy(si);
        return;
    }
    if (s == NATS_OK) {
        it->present = true;
        it->base = hd_natsid_base(si->Created);
        it->first_seq = si->State.FirstSeq;
        it->last_seq = si->State.LastSeq;
    } else if (s == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr) {
        it->present = false;
    } else {
        free(it); /* NATS trouble: the connection callbacks will tell */
        jsStreamInfo_Destroy(si);
        return;
    }
    jsStreamInfo_Destroy(si);
    post(e, it);
}

/* The time of the event at `seq`, from its header. Worker thread. */
static void do_dup_time(struct nats_engine *e, struct pub *p, uint64_t seq)
{
    int64_t t = -1;
    natsStatus s = NATS_OK;
    /* A stream that just got a new leader may not answer at once: a few tries, ~1 s. */
    for (int attempt = 0; t < 0 && attempt < 5; attempt++) {
        natsMsg *m = NULL;
        jsErrCode jerr = 0;
        if (attempt) {
            struct timespec ts = {.tv_nsec = 200000000};
            nanosleep(&ts, NULL);
        }
        s = js_GetMsg(&m, e->js, e->stream, seq, NULL, &jerr);
        if (s == NATS_OK) {
            const char *v = NULL;
            uint64_t x;
            if (natsMsgHeader_Get(m, HDR_TIME, &v) == NATS_OK && hd_natsid_parse_u64(v, &x) == 0)
                t = (int64_t)x;
            natsMsg_Destroy(m);
            if (t < 0)
                break; /* not one of ours: no time to find */
        }
    }
    if (t < 0)
        hd_log_warn("cannot read the time of a duplicate publish's first event; answering with "
                    "this publish's time",
                    "seq=%llu status=\"%s\"", (unsigned long long)seq, natsStatus_GetText(s));
    struct item *it = item_new(IT_DUP_TIME);
    if (!it)
        return; /* the publish stays pending until destroy fails it */
    it->pub = p;
    it->seq = seq;
    it->time_ms = t;
    post(e, it);
}

/* Turns a stream message into an event; NULL when it is not a Herald event. Any thread. */
static struct hd_msg *event_of(struct nats_engine *e, natsMsg *m, uint64_t id, char **key)
{
    const char *topic = hd_natsid_topic(e->prefix, natsMsg_GetSubject(m));
    const char *ev = NULL, *tm = NULL, *k = NULL;
    uint64_t t;
    *key = NULL;
    if (!topic || hd_topic_check(topic, strlen(topic)) != 0)
        return NULL;
    if (natsMsgHeader_Get(m, HDR_EVENT, &ev) != NATS_OK || !hd_event_kind_valid(ev, strlen(ev)))
        return NULL;
    if (natsMsgHeader_Get(m, HDR_TIME, &tm) != NATS_OK || hd_natsid_parse_u64(tm, &t) < 0)
        return NULL;
    const char *data = natsMsg_GetData(m);
    size_t len = (size_t)natsMsg_GetDataLength(m);
    struct hd_msg *out = NULL;
    if (data && hd_json_canonical(data, len)) {
        out = hd_msg_new_event(id, (int64_t)t, topic, ev, data, len);
    } else {
        /* Not what heraldd writes: accept valid JSON from other publishers, compacted. */
        json_t *j = data ? json_loadb(data, len, JSON_DECODE_ANY, NULL) : NULL;
        size_t n = 0;
        char *c = j ? hd_json_dump_compact(j, &n) : NULL;
        if (c)
            out = hd_msg_new_event(id, (int64_t)t, topic, ev, c, n);
        free(c);
        json_decref(j);
        if (!j)
            return NULL;
    }
    if (out && natsMsgHeader_Get(m, HDR_KEY, &k) == NATS_OK && k && *k)
        *key = strdup(k);
    return out;
}

/* Serves a replay with a filtered ordered consumer read synchronously. Worker thread. */
static void do_replay(struct nats_engine *e, struct replay *r)
{
    pthread_mutex_lock(&e->feed_lock);
    uint64_t base = e->feed_base;
    pthread_mutex_unlock(&e->feed_lock);
    uint64_t after_seq = 0, upto_seq = 0;
    r->err = 0;
    if (base == 0 || hd_natsid_seq(base, r->upto_id, &upto_seq) < 0) {
        r->err = -EAGAIN;
        goto out;
    }
    if (hd_natsid_seq(base, r->after_id + 1, &after_seq) < 0) {
        after_seq = 0; /* a cursor from an earlier epoch: everything we have, with a gap */
        r->gap = r->after_id != 0;
    } else {
        after_seq--;
    }
    jsErrCode jerr = 0;
    jsStreamInfo *si = NULL;
    if (js_GetStreamInfo(&si, e->js, e->stream, NULL, &jerr) != NATS_OK) {
        r->err = -EIO;
        goto out;
    }
    if (si->State.FirstSeq > after_seq + 1)
        r->gap = true; /* the stream's head moved past the cursor */
    jsStreamInfo_Destroy(si);
    if (upto_seq <= after_seq)
        goto out;
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = e->stream;
    so.Ordered = true;
    so.Config.DeliverPolicy = js_DeliverByStartSequence;
    so.Config.OptStartSeq = after_seq + 1;
    natsSubscription *sub = NULL;
    if (js_SubscribeSync(&sub, e->js, r->subject, NULL, &so, &jerr) != NATS_OK) {
        r->err = -EIO;
        goto out;
    }
    /* Anything to read at all? NumPending alone is not enough: the server may already have
     * pushed every match to us. After that, each message's metadata says how many follow. */
    jsConsumerInfo *ci = NULL;
    uint64_t pending = 1;
    if (natsSubscription_GetConsumerInfo(&ci, sub, NULL, &jerr) == NATS_OK) {
        pending = ci->NumPending + ci->Delivered.Consumer;
        jsConsumerInfo_Destroy(ci);
    }
    size_t cap = 0;
    while (pending > 0) {
        natsMsg *m = NULL;
        jsMsgMetaData *meta = NULL;
        if (natsSubscription_NextMsg(&m, sub, 5000) != NATS_OK) {
            r->err = -ETIMEDOUT;
            break;
        }
        if (natsMsg_GetMetaData(&meta, m) != NATS_OK) {
            natsMsg_Destroy(m);
            continue;
        }
        uint64_t seq = meta->Sequence.Stream;
        pending = meta->NumPending;
        jsMsgMetaData_Destroy(meta);
        if (seq > upto_seq) {
            natsMsg_Destroy(m);
            break;
        }
        char *key = NULL;
        struct hd_msg *ev = event_of(e, m, hd_natsid_make(base, seq), &key);
        free(key);
        natsMsg_Destroy(m);
        if (!ev)
            continue;
        if (r->n == REPLAY_MAX) { /* keep the newest; the oldest are a gap */
            hd_msg_unref(r->msgs[0]);
            memmove(r->msgs, r->msgs + 1, (r->n - 1) * sizeof(*r->msgs));
            r->n--;
            r->gap = true;
        }
        if (r->n == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            struct hd_msg **v = realloc(r->msgs, ncap * sizeof(*v));
            if (!v) {
                hd_msg_unref(ev);
                r->err = -ENOMEM;
                break;
            }
            r->msgs = v;
            cap = ncap;
        }
        r->msgs[r->n++] = ev;
        if (seq == upto_seq)
            break;
    }
    natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
out:;
    struct item *it = item_new(IT_REPLAY);
    if (!it)
        return; /* leaks the replay; only when out of memory */
    it->replay = r;
    post(e, it);
}

static void *worker_main(void *arg)
{
    struct nats_engine *e = arg;
    for (;;) {
        pthread_mutex_lock(&e->job_lock);
        while (!e->jobs)
            pthread_cond_wait(&e->job_cond, &e->job_lock);
        struct job *j = e->jobs;
        e->jobs = j->next;
        if (!e->jobs)
            e->jobs_tail = NULL;
        if (j->kind == JOB_ATTACH)
            e->attach_queued = false;
        if (j->kind == JOB_CHECK)
            e->check_queued = false;
        pthread_mutex_unlock(&e->job_lock);
        enum job_kind kind = j->kind;
        switch (kind) {
        case JOB_ATTACH:
            do_attach(e);
            break;
        case JOB_CHECK:
            do_check(e);
            break;
        case JOB_DUP_TIME:
            do_dup_time(e, j->pub, j->seq);
            break;
        case JOB_REPLAY:
            do_replay(e, j->replay);
            break;
        case JOB_STOP:
            break;
        }
        free(j);
        if (kind == JOB_STOP)
            return NULL;
    }
}

/* ---- libnats callbacks (libnats' threads) ---------------------------------------------- */

static void on_feed_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    struct feed_closure *fc = closure;
    struct nats_engine *e = fc->e;
    jsMsgMetaData *meta = NULL;
    if (natsMsg_GetMetaData(&meta, msg) != NATS_OK) {
        natsMsg_Destroy(msg);
        return;
    }
    uint64_t seq = meta->Sequence.Stream, pending = meta->NumPending;
    jsMsgMetaData_Destroy(meta);
    pthread_mutex_lock(&e->feed_lock);
    if (fc->gen != e->feed_gen || seq <= e->feed_seq) {
        pthread_mutex_unlock(&e->feed_lock);
        natsMsg_Destroy(msg);
        return;
    }
    struct item *it = item_new(IT_FEED);
    if (!it) {
        /* Cannot hand it over: leave feed_seq behind so a later attach fetches it again. */
        pthread_mutex_unlock(&e->feed_lock);
        natsMsg_Destroy(msg);
        return;
    }
    it->seq = seq;
    it->gen = fc->gen;
    it->pending = pending;
    it->msg = event_of(e, msg, hd_natsid_make(e->feed_base, seq), &it->key);
    e->feed_seq = seq;
    post(e, it);
    pthread_mutex_unlock(&e->feed_lock);
    natsMsg_Destroy(msg);
}

static void on_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    struct nats_engine *e = closure;
    struct item *it = item_new(IT_ACK);
    if (!it)
        return;     /* the publish times out at destroy; nothing better to do without memory */
    it->nmsg = msg; /* ownership passes to the loop */
    if (pa) {
        it->ok = true;
        it->seq = pa->Sequence;
        it->duplicate = pa->Duplicate;
    } else {
        it->st = pae ? pae->Err : NATS_ERR;
        it->jerr = pae ? pae->ErrCode : 0;
    }
    post(e, it);
}

static void on_conn(struct nats_engine *e, bool up)
{
    atomic_store(&e->connected_flag, up);
    struct item *it = item_new(IT_CONN);
    if (!it)
        return;
    it->up = up;
    post(e, it);
}

static void on_connected(natsConnection *nc, void *closure)
{
    on_conn(closure, true);
}

static void on_disconnected(natsConnection *nc, void *closure)
{
    on_conn(closure, false);
}

static void on_async_error(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure)
{
    struct nats_engine *e = closure;
    hd_log_warn("NATS reported an asynchronous error", "status=\"%s\"", natsStatus_GetText(err));
    /* The server holding our ordered consumer went away without our connection noticing
     * (we are connected to another one): attach a new consumer from where the feed stands.
     * Only JetStream subscriptions have heartbeats; a replay's ends on its own. */
    if (err == NATS_MISSED_HEARTBEAT) {
        struct item *it = item_new(IT_DETACHED);
        if (it)
            post(e, it);
    }
}

static void on_status_request(natsConnection *nc, natsSubscription *sub, natsMsg *msg,
                              void *closure)
{
    struct nats_engine *e = closure;
    const char *from = NULL, *reply = natsMsg_GetReply(msg);
    uint64_t id = 0;
    char idtext[HD_EVENT_ID_LEN + 1];
    int len = natsMsg_GetDataLength(msg);
    if (reply && len == HD_EVENT_ID_LEN) {
        memcpy(idtext, natsMsg_GetData(msg), HD_EVENT_ID_LEN);
        idtext[HD_EVENT_ID_LEN] = '\0';
        if (hd_event_id_parse(idtext, &id) == 0 &&
            !(natsMsgHeader_Get(msg, "Herald-From", &from) == NATS_OK && from &&
              strcmp(from, e->instance) == 0)) {
            struct item *it = item_new(IT_STATUS_REQ);
            if (it) {
                it->id = id;
                it->reply = strdup(reply);
                if (it->reply)
                    post(e, it);
                else
                    free(it);
            }
        }
    }
    natsMsg_Destroy(msg);
}

/* Answers arrive on "_INBOX.herald.<instance>.<gather id>"; the closure is the engine, so a
 * late answer never touches a gather that is already gone. */
static void on_status_answer(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    struct nats_engine *e = closure;
    const char *subj = natsMsg_GetSubject(msg), *dot = subj ? strrchr(subj, '.') : NULL;
    uint64_t gid = 0;
    json_error_t je;
    json_t *j = json_loadb(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), 0, &je);
    json_int_t q = -1, w = -1, d = -1;
    if (dot && hd_natsid_parse_u64(dot + 1, &gid) == 0 && j &&
        json_unpack(j, "{s:I, s:I, s:I}", "queued", &q, "written", &w, "dropped", &d) == 0 &&
        q >= 0 && w >= 0 && d >= 0) {
        struct item *it = item_new(IT_STATUS_ANS);
        if (it) {
            it->id = gid;
            it->counts = (struct hd_status_counts){
                .queued = (uint64_t)q, .written = (uint64_t)w, .dropped = (uint64_t)d};
            post(e, it);
        }
    }
    json_decref(j);
    natsMsg_Destroy(msg);
}

/* ---- the loop side ---------------------------------------------------------------------- */

static void set_ready(struct nats_engine *e, bool ready)
{
    if (e->ready == ready)
        return;
    e->ready = ready;
    hd_log_info(ready ? "cluster engine ready" : "cluster engine not ready", "node=%s stream=%s",
                e->node, e->stream);
    update_gauges(e);
    if (e->base.sink.ready)
        e->base.sink.ready(e->base.sink.broker, ready);
}

static void maybe_ready(struct nats_engine *e)
{
    set_ready(e, e->connected && e->attached && !e->recovering && !e->fatal && !e->stopping);
}

static void pub_finish(struct nats_engine *e, struct pub *p, int err, uint64_t seq, int64_t time_ms,
                       bool duplicate)
{
    size_t slot;
    if (pubs_find(e, p->msg, &slot) == p)
        pubs_del_slot(e, slot);
    if (p->msg)
        natsMsg_Destroy(p->msg);
    struct hd_pub_ack a = {.seq = seq, .time_ms = time_ms, .duplicate = duplicate};
    p->ack(p->arg, err, err == 0 ? &a : NULL);
    free(p);
    update_gauges(e);
}

static int send_pub(struct nats_engine *e, struct pub *p)
{
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = ACK_WAIT_MS;
    natsMsg *m = p->msg;
    p->attempts++;
    natsStatus s = js_PublishMsgAsync(e->js, &m, &po);
    if (s == NATS_OK)
        return 0;
    return s == NATS_TIMEOUT ? -EAGAIN : -EIO;
}

static bool retriable(const struct item *it)
{
    switch (it->st) {
    case NATS_TIMEOUT:
    case NATS_NO_RESPONDERS:
    case NATS_CONNECTION_CLOSED:
    case NATS_CONNECTION_DISCONNECTED:
    case NATS_NOT_YET_CONNECTED:
    case NATS_STALE_CONNECTION:
    case NATS_IO_ERROR:
        return true;
    default:
        /* JetStream's own "try again" answers (no quorum, leader election). */
        return it->jerr == JSClusterNotAvailErr || it->jerr == JSStreamOfflineErr;
    }
}

static void on_retry_timer(uv_timer_t *t);

static void handle_ack(struct nats_engine *e, struct item *it)
{
    size_t slot;
    struct pub *p = pubs_find(e, it->nmsg, &slot);
    if (!p) {
        natsMsg_Destroy(it->nmsg); /* cannot happen: every message we send is in the table */
        return;
    }
    if (it->ok && it->duplicate) {
        /* The first publish with this key holds the id; its time is in its header. */
        struct job *j = calloc(1, sizeof(*j));
        if (j) {
            p->awaiting_time = true;
            *j = (struct job){.kind = JOB_DUP_TIME, .pub = p, .seq = it->seq};
            job_post(e, j);
            return;
        }
        pub_finish(e, p, 0, hd_natsid_make(e->ep_base, it->seq), p->time_ms, true);
        return;
    }
    if (it->ok) {
        pub_finish(e, p, 0, hd_natsid_make(e->ep_base, it->seq), p->time_ms, false);
        return;
    }
    if (retriable(it) && !e->stopping && hd_now_ns() < p->deadline_ns) {
        hd_log_debug("publish not acknowledged yet; retrying", "status=\"%s\" attempts=%u",
                     natsStatus_GetText(it->st), p->attempts);
        p->retrying = true;
        unsigned shift = p->attempts < 4 ? p->attempts : 4;
        p->retry_at_ns = hd_now_ns() + ((uint64_t)RETRY_EVERY_MS << shift) / 2 * 1000000;
        e->n_retrying++;
        p->next_retry = e->retry_head;
        e->retry_head = p;
        if (!uv_is_active((uv_handle_t *)&e->retry_timer))
            uv_timer_start(&e->retry_timer, on_retry_timer, RETRY_EVERY_MS, RETRY_EVERY_MS);
        return;
    }
    hd_log_warn("publish failed", "status=\"%s\" js_error=%d attempts=%u",
                natsStatus_GetText(it->st), (int)it->jerr, p->attempts);
    /* Sent at least once and never refused outright: it may exist; a retry is safe. */
    pub_finish(e, p, retriable(it) ? -ETIMEDOUT : -EIO, 0, 0, false);
}

static void on_retry_timer(uv_timer_t *t)
{
    struct nats_engine *e = t->data;
    struct pub *list = e->retry_head, *keep = NULL;
    e->retry_head = NULL;
    uint64_t now = hd_now_ns();
    while (list) {
        struct pub *p = list;
        list = p->next_retry;
        if (now >= p->deadline_ns || e->stopping) {
            /* Sent at least once: it may exist, so not -ESHUTDOWN (engine.h). */
            e->n_retrying--;
            pub_finish(e, p, -ETIMEDOUT, 0, 0, false);
            continue;
        }
        if (now >= p->retry_at_ns && e->ready && send_pub(e, p) == 0) {
            e->n_retrying--;
            p->retrying = false;
            continue;
        }
        p->next_retry = keep;
        keep = p;
    }
    e->retry_head = keep;
    if (!keep)
        uv_timer_stop(t);
}

static void handle_feed(struct nats_engine *e, struct item *it)
{
    switch (hd_natsid_follow(e->last_seq, e->start_seq, it->seq)) {
    case HD_FOLLOW_DUP:
        return;
    case HD_FOLLOW_GAP:
        hd_log_warn("the stream no longer holds events this node missed",
                    "from_seq=%llu to_seq=%llu", (unsigned long long)e->last_seq + 1,
                    (unsigned long long)it->seq - 1);
        if (e->base.sink.gap)
            e->base.sink.gap(e->base.sink.broker, hd_natsid_make(e->ep_base, it->seq));
        break;
    case HD_FOLLOW_NEXT:
        break;
    }
    e->last_seq = it->seq;
    if (it->msg) {
        if (e->recovering && it->seq <= e->recover_until) {
            if (e->base.sink.recovered)
                e->base.sink.recovered(e->base.sink.broker, it->msg, it->key);
        } else if (e->base.sink.deliver) {
            e->base.sink.deliver(e->base.sink.broker, it->msg, it->key);
        }
    }
    if (e->recovering && it->seq >= e->recover_until) {
        e->recovering = false;
        hd_log_info("recovered history from the stream", "last_seq=%llu",
                    (unsigned long long)e->last_seq);
        maybe_ready(e);
    }
    if (e->stream_last_seq < it->seq + it->pending)
        e->stream_last_seq = it->seq + it->pending;
    update_gauges(e);
}

static void handle_attached(struct nats_engine *e, struct item *it)
{
    enum hd_epoch_change ch =
        hd_natsid_epoch_change(e->ep_base, hd_natsid_make(e->ep_base, e->last_seq), it->base);
    e->attached = true;
    e->stream_last_seq = it->last_seq;
    if (!e->recover_base_sent) {
        /* First attach of this node's life: history starts at the recovery point. */
        e->recover_base_sent = true;
        e->ep_base = it->base;
        e->start_seq = it->start_seq;
        e->last_seq = 0;
        e->recover_until = it->last_seq;
        e->recovering = it->last_seq >= it->start_seq;
        if (e->base.sink.recover_base)
            e->base.sink.recover_base(e->base.sink.broker, hd_natsid_make(it->base, it->start_seq));
        hd_log_info("attached to the stream",
                    "stream=%s first_seq=%llu last_seq=%llu "
                    "recovering_from=%llu",
                    e->stream, (unsigned long long)it->first_seq, (unsigned long long)it->last_seq,
                    (unsigned long long)it->start_seq);
    } else if (ch != HD_EPOCH_SAME) {
        if (ch == HD_EPOCH_OVERLAP)
            hd_log_error("the recreated stream's ids overlap ones already delivered (a NATS "
                         "server clock behind?); events up to the old ids are not delivered",
                         "stream=%s", e->stream);
        else
            hd_log_warn("the stream was recreated: a new epoch; older cursors resolve with a gap",
                        "stream=%s", e->stream);
        e->ep_base = it->base;
        e->start_seq = it->start_seq;
        e->last_seq = 0;
        e->recovering = false;
        if (e->base.sink.gap)
            e->base.sink.gap(e->base.sink.broker, hd_natsid_make(it->base, it->start_seq));
    }
    maybe_ready(e);
    update_gauges(e);
}

static void handle_checked(struct nats_engine *e, struct item *it)
{
    if (!it->present || (e->ep_base && it->base != e->ep_base)) {
        /* Deleted, or deleted and created again: attach anew (creating it when missing). */
        if (!it->present)
            hd_log_warn("the stream is gone; creating it again", "stream=%s", e->stream);
        e->attached = false;
        maybe_ready(e);
        job_post_once(e, JOB_ATTACH);
        return;
    }
    if (it->last_seq > e->stream_last_seq)
        e->stream_last_seq = it->last_seq;
    /* Recovery ends with the last event that existed at start; if the limits removed it
     * before we read it, nothing will arrive to say so: the stream's head does. */
    if (e->recovering && it->first_seq > e->recover_until) {
        e->recovering = false;
        maybe_ready(e);
    }
    update_gauges(e);
}

static void handle_status_req(struct nats_engine *e, struct item *it)
{
    struct hd_status_counts c;
    if (!e->status_lookup || e->status_lookup(e->status_arg, it->id, &c) < 0 || !e->nc)
        return;
    char body[160];
    int n = snprintf(body, sizeof(body),
                     "{\"node\":\"%s\",\"queued\":%llu,\"written\":%llu,\"dropped\":%llu}", e->node,
                     (unsigned long long)c.queued, (unsigned long long)c.written,
                     (unsigned long long)c.dropped);
    if (n > 0 && (size_t)n < sizeof(body))
        natsConnection_Publish(e->nc, it->reply, body, n);
}

static void gather_finish(struct gather *g, int err);

static void handle_item(struct nats_engine *e, struct item *it)
{
    switch (it->kind) {
    case IT_FEED:
        handle_feed(e, it);
        break;
    case IT_ACK:
        handle_ack(e, it);
        break;
    case IT_CONN:
        if (e->connected != it->up)
            hd_log_info(it->up ? "connected to NATS" : "lost NATS", "node=%s", e->node);
        e->connected = it->up;
        if (!it->up) {
            e->attached = false;
        } else if (!e->stopping) {
            job_post_once(e, JOB_ATTACH);
        }
        maybe_ready(e);
        break;
    case IT_ATTACHED:
        handle_attached(e, it);
        break;
    case IT_DETACHED:
        e->attached = false;
        maybe_ready(e);
        if (e->connected && !e->stopping)
            job_post_once(e, JOB_ATTACH);
        break;
    case IT_FATAL:
        e->fatal = true;
        maybe_ready(e);
        break;
    case IT_CHECKED:
        handle_checked(e, it);
        break;
    case IT_DUP_TIME: {
        struct pub *p = it->pub;
        pub_finish(e, p, 0, hd_natsid_make(e->ep_base, it->seq),
                   it->time_ms >= 0 ? it->time_ms : p->time_ms, true);
        break;
    }
    case IT_REPLAY: {
        struct replay *r = it->replay;
        r->done(r->arg, r->err, r->msgs, r->n, r->gap);
        for (size_t i = 0; i < r->n; i++)
            hd_msg_unref(r->msgs[i]);
        free(r->msgs);
        free(r->subject);
        free(r);
        break;
    }
    case IT_STATUS_REQ:
        handle_status_req(e, it);
        break;
    case IT_STATUS_ANS:
        for (struct gather *g = e->gathers; g; g = g->next) {
            if (g->id == it->id) {
                g->sum.queued += it->counts.queued;
                g->sum.written += it->counts.written;
                g->sum.dropped += it->counts.dropped;
                g->nodes++;
                break;
            }
        }
        break;
    }
}

static void item_free(struct item *it)
{
    if (it->kind == IT_FEED)
        hd_msg_unref(it->msg);
    free(it->key);
    free(it->reply);
    free(it);
}

static void on_async(uv_async_t *a)
{
    struct nats_engine *e = a->data;
    bool more = false;
    struct hd_handoff_node *n = hd_handoff_pop(&e->inbox, DRAIN_BATCH, &more);
    while (n) {
        struct item *it = (struct item *)n;
        n = n->next;
        handle_item(e, it);
        item_free(it);
    }
    if (more)
        uv_async_send(&e->async); /* the rest on the next turn, after I/O */
}

static void on_check_timer(uv_timer_t *t)
{
    struct nats_engine *e = t->data;
    if (e->connected && !e->stopping)
        job_post_once(e, e->attached ? JOB_CHECK : JOB_ATTACH);
}

/* ---- ops -------------------------------------------------------------------------------- */

static int nats_start(struct hd_engine *base, char *why, size_t why_len)
{
    struct nats_engine *e = E(base);
    natsStatus s;
    if (nats_Open(-1) != NATS_OK) {
        snprintf(why, why_len, "cannot initialise libnats");
        return -EIO;
    }
    s = natsOptions_Create(&e->opts);
    if (s == NATS_OK)
        s = natsOptions_SetServers(e->opts, (const char **)e->servers, e->n_servers);
    if (s == NATS_OK) {
        char name[128];
        snprintf(name, sizeof(name), "heraldd %s", e->node);
        s = natsOptions_SetName(e->opts, name);
    }
    if (s == NATS_OK)
        s = natsOptions_SetMaxReconnect(e->opts, -1);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectWait(e->opts, 500);
    if (s == NATS_OK)
        s = natsOptions_SetPingInterval(e->opts, 2000);
    if (s == NATS_OK)
        s = natsOptions_SetMaxPingsOut(e->opts, 2);
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(e->opts, 2000);
    if (s == NATS_OK)
        s = natsOptions_SetRetryOnFailedConnect(e->opts, true, on_connected, e);
    if (s == NATS_OK)
        s = natsOptions_SetDisconnectedCB(e->opts, on_disconnected, e);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectedCB(e->opts, on_connected, e);
    if (s == NATS_OK)
        s = natsOptions_SetErrorHandler(e->opts, on_async_error, e);
    if (s == NATS_OK && e->creds)
        s = natsOptions_SetUserCredentialsFromFiles(e->opts, e->creds, NULL);
    if (s == NATS_OK && e->ca)
        s = natsOptions_LoadCATrustedCertificates(e->opts, e->ca);
    if (s != NATS_OK) {
        const char *last = nats_GetLastError(NULL);
        snprintf(why, why_len, "NATS options: %s %s", natsStatus_GetText(s), last ? last : "");
        return -EINVAL;
    }
    /* With RetryOnFailedConnect the connect returns at once when no server answers yet
     * (NATS_NOT_YET_CONNECTED) and keeps trying in the background. */
    s = natsConnection_Connect(&e->nc, e->opts);
    if (s != NATS_OK && s != NATS_NOT_YET_CONNECTED) {
        const char *last = nats_GetLastError(NULL);
        snprintf(why, why_len, "cannot connect to NATS: %s %s", natsStatus_GetText(s),
                 last ? last : "");
        return -EIO;
    }
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = 3000; /* JetStream API calls: short, so that attaches retry soon during elections */
    jo.PublishAsync.MaxPending = MAX_INFLIGHT;
    jo.PublishAsync.AckHandler = on_ack;
    jo.PublishAsync.AckHandlerClosure = e;
    jo.PublishAsync.StallWait = 1; /* never hold the loop: past MaxPending, answer 503 */
    s = natsConnection_JetStream(&e->js, e->nc, &jo);
    if (s == NATS_OK)
        s = natsConnection_Subscribe(&e->status_sub, e->nc, e->status_subject, on_status_request,
                                     e);
    if (s != NATS_OK) {
        snprintf(why, why_len, "NATS JetStream context: %s", natsStatus_GetText(s));
        return -EIO;
    }
    if (pthread_create(&e->worker, NULL, worker_main, e) != 0) {
        snprintf(why, why_len, "cannot start the NATS worker thread");
        return -EAGAIN;
    }
    e->worker_started = true;
    e->started = true;
    bool up = s == NATS_OK && natsConnection_Status(e->nc) == NATS_CONN_STATUS_CONNECTED;
    if (up) {
        atomic_store(&e->connected_flag, true);
        char url[256] = "";
        int major = 0, minor = 0;
        char ver[32] = "";
        natsConnection_GetConnectedUrl(e->nc, url, sizeof(url));
        if (server_version(url, &major, &minor, ver, sizeof(ver)) == 0 &&
            (major < 2 || (major == 2 && minor < 10)))
            hd_log_warn("nats-server is older than 2.10: acknowledged events can be lost when a "
                        "stream leader dies; upgrade it",
                        "version=%s", ver);
        e->connected = true; /* the loop is not running yet: set it here, not by an item */
        job_post_once(e, JOB_ATTACH);
        /* Wait (bounded) for the first attach: a stream that does not fit stops the daemon. */
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += START_WAIT_MS / 1000;
        pthread_mutex_lock(&e->job_lock);
        while (e->first_outcome == 0 &&
               pthread_cond_timedwait(&e->job_cond, &e->job_lock, &until) == 0)
            ;
        int outcome = e->first_outcome;
        pthread_mutex_unlock(&e->job_lock);
        if (outcome == -EINVAL) {
            snprintf(why, why_len, "%s", e->first_why);
            return -EINVAL;
        }
        if (outcome != 1)
            hd_log_warn("not attached to the stream yet; publishes get 503 until it is",
                        "why=\"%s\"", e->first_why[0] ? e->first_why : "timed out");
    } else {
        hd_log_warn("no NATS server reachable yet; publishes get 503 until one is", "servers=%d",
                    e->n_servers);
    }
    uv_timer_start(&e->check_timer, on_check_timer, CHECK_EVERY_MS, CHECK_EVERY_MS);
    return 0;
}

static int nats_publish(struct hd_engine *base, const struct hd_pub *pub, hd_pub_ack_fn ack,
                        void *arg)
{
    struct nats_engine *e = E(base);
    char subject[512], msgid[96], tbuf[24];
    natsMsg *m = NULL;
    if (e->stopping || e->draining)
        return -ESHUTDOWN;
    if (!e->ready)
        return -EAGAIN;
    if (e->n_pubs >= MAX_INFLIGHT)
        return -EAGAIN;
    if (hd_natsid_subject(e->prefix, pub->topic, subject, sizeof(subject)) < 0)
        return -EINVAL;
    int64_t now = hd_wall_ms();
    snprintf(tbuf, sizeof(tbuf), "%lld", (long long)now);
    if (!pub->key)
        snprintf(msgid, sizeof(msgid), "hd-%s-%llu", e->instance,
                 (unsigned long long)++e->msgid_counter);
    if (natsMsg_Create(&m, subject, NULL, pub->data_json, (int)pub->data_len) != NATS_OK)
        return -ENOMEM;
    if (natsMsgHeader_Set(m, HDR_MSGID, pub->key ? pub->key : msgid) != NATS_OK ||
        natsMsgHeader_Set(m, HDR_TIME, tbuf) != NATS_OK ||
        natsMsgHeader_Set(m, HDR_EVENT, pub->event) != NATS_OK ||
        (pub->key && natsMsgHeader_Set(m, HDR_KEY, pub->key) != NATS_OK)) {
        natsMsg_Destroy(m);
        return -ENOMEM;
    }
    struct pub *p = calloc(1, sizeof(*p));
    if (p)
        p->msg = m;
    if (!p || pubs_put(e, p) < 0) {
        free(p);
        natsMsg_Destroy(m);
        return -ENOMEM;
    }
    p->ack = ack;
    p->arg = arg;
    p->time_ms = now;
    p->deadline_ns = hd_now_ns() + (uint64_t)PUBLISH_DEADLINE_MS * 1000000;
    int rc = send_pub(e, p);
    if (rc < 0) {
        size_t slot;
        if (pubs_find(e, m, &slot) == p)
            pubs_del_slot(e, slot);
        natsMsg_Destroy(m);
        free(p);
        update_gauges(e);
        return rc == -EIO ? -EAGAIN : rc; /* connection trouble in all likelihood: 503 */
    }
    update_gauges(e);
    return 0;
}

static int nats_replay(struct hd_engine *base, const char *pattern, uint64_t after, uint64_t upto,
                       hd_replay_fn done, void *arg)
{
    struct nats_engine *e = E(base);
    if (!e->ready)
        return -EAGAIN;
    struct replay *r = calloc(1, sizeof(*r));
    struct job *j = calloc(1, sizeof(*j));
    size_t n = strlen(e->prefix) + 1 + strlen(pattern) + 1;
    char *subject = malloc(n);
    if (!r || !j || !subject) {
        free(r), free(j), free(subject);
        return -ENOMEM;
    }
    /* Herald's "*" and trailing ">" are NATS's own wildcards: the pattern maps as it is. */
    hd_natsid_subject(e->prefix, pattern, subject, n);
    *r = (struct replay){
        .subject = subject, .after_id = after, .upto_id = upto, .done = done, .arg = arg};
    *j = (struct job){.kind = JOB_REPLAY, .replay = r};
    job_post(e, j);
    return 0;
}

static size_t nats_pending(const struct hd_engine *base)
{
    return ((const struct nats_engine *)base)->n_pubs;
}

static void nats_drain(struct hd_engine *base)
{
    E(base)->draining = true;
}

/* The engine's memory goes with the last of its handles, or at destroy if that comes later. */
static void on_handle_closed(uv_handle_t *h)
{
    struct nats_engine *e = h->data;
    if (--e->handles_open == 0 && e->destroyed)
        free(e);
}

static void free_config(struct nats_engine *e)
{
    for (int i = 0; i < e->n_servers; i++)
        free(e->servers[i]);
    free(e->servers);
    free(e->stream);
    free(e->prefix);
    free(e->node);
    free(e->creds);
    free(e->ca);
    free(e->status_subject);
}

static void fail_replay(struct replay *r)
{
    r->done(r->arg, -ESHUTDOWN, NULL, 0, true);
    for (size_t i = 0; i < r->n; i++)
        hd_msg_unref(r->msgs[i]);
    free(r->msgs);
    free(r->subject);
    free(r);
}

/* Handles whatever libnats and the worker handed over, all of it. Loop thread. */
static void drain_inbox(struct nats_engine *e)
{
    bool more = true;
    while (more) {
        struct hd_handoff_node *n = hd_handoff_pop(&e->inbox, SIZE_MAX, &more);
        while (n) {
            struct item *it = (struct item *)n;
            n = n->next;
            handle_item(e, it);
            item_free(it);
        }
    }
}

/*
 * Completes what is in flight: publishes get up to STOP_WAIT_MS for their acks (the loop
 * is not running, so this thread handles the hand-off queue itself), then the connection
 * closes and whatever is left fails. Replays and gathers end with -ESHUTDOWN.
 */
static void nats_stop(struct hd_engine *base)
{
    struct nats_engine *e = E(base);
    if (e->stopped)
        return;
    e->stopped = e->stopping = true;
    while (e->gathers)
        gather_finish(e->gathers, -ESHUTDOWN);
    uint64_t until = hd_now_ns() + (uint64_t)STOP_WAIT_MS * 1000000;
    drain_inbox(e);
    while (e->n_pubs > e->n_retrying && hd_now_ns() < until) {
        struct timespec ts = {.tv_nsec = 2000000};
        nanosleep(&ts, NULL);
        drain_inbox(e);
    }
    if (e->worker_started) {
        struct job *j = calloc(1, sizeof(*j));
        if (j) {
            j->kind = JOB_STOP;
            job_post(e, j);
            pthread_join(e->worker, NULL);
            e->worker_started = false;
        }
    }
    /* Jobs the worker did not get to. */
    for (struct job *j = e->jobs, *next; j; j = next) {
        next = j->next;
        if (j->kind == JOB_REPLAY)
            fail_replay(j->replay);
        else if (j->kind == JOB_DUP_TIME)
            pub_finish(e, j->pub, -ESHUTDOWN, 0, 0, false);
        free(j);
    }
    e->jobs = e->jobs_tail = NULL;
    if (e->feed_sub) {
        natsSubscription_Unsubscribe(e->feed_sub);
        natsSubscription_Destroy(e->feed_sub);
        e->feed_sub = NULL;
    }
    if (e->status_sub) {
        natsSubscription_Unsubscribe(e->status_sub);
        natsSubscription_Destroy(e->status_sub);
        e->status_sub = NULL;
    }
    if (e->nc)
        natsConnection_Close(e->nc);
    drain_inbox(e);
    /* Still unanswered: sent at least once, so the event may exist; a retry with the same
     * key is safe (engine.h: -ETIMEDOUT). */
    for (size_t i = 0; i < e->pubs_cap; i++) {
        struct pub *p = e->pubs[i];
        if (!p)
            continue;
        e->pubs[i] = NULL;
        if (p->retrying) /* handed back by libnats: ours to free */
            natsMsg_Destroy(p->msg);
        p->msg = NULL; /* otherwise libnats still owns it, and frees it with the context */
        p->ack(p->arg, -ETIMEDOUT, NULL);
        free(p);
    }
    e->n_pubs = e->n_retrying = 0;
    e->retry_head = NULL;
    e->ready = false;
    update_gauges(e);
    if (e->metrics)
        e->metrics->engine_node = NULL; /* the name is freed with the engine */
    uv_close((uv_handle_t *)&e->async, on_handle_closed);
    uv_close((uv_handle_t *)&e->retry_timer, on_handle_closed);
    uv_close((uv_handle_t *)&e->check_timer, on_handle_closed);
}

static void nats_destroy(struct hd_engine *base)
{
    struct nats_engine *e = E(base);
    if (!e)
        return;
    nats_stop(base);
    free(e->pubs);
    e->pubs = NULL;
    jsCtx_Destroy(e->js);
    e->js = NULL;
    if (e->nc)
        natsConnection_Destroy(e->nc);
    e->nc = NULL;
    natsOptions_Destroy(e->opts);
    e->opts = NULL;
    if (e->started)
        nats_CloseAndWait(2000); /* libnats' threads are gone: no callback can reach us now */
    while (e->feed_closure) {
        struct feed_closure *fc = e->feed_closure;
        e->feed_closure = fc->older;
        free(fc);
    }
    free_config(e);
    /* Posted after stop drained the queue (libnats' disconnect callback as the connection
     * closed): nothing is left to act on it, so it is only freed. */
    for (bool more = true; more;) {
        struct hd_handoff_node *n = hd_handoff_pop(&e->inbox, SIZE_MAX, &more);
        if (!n)
            break;
        while (n) {
            struct item *it = (struct item *)n;
            n = n->next;
            item_free(it);
        }
    }
    hd_handoff_destroy(&e->inbox);
    pthread_mutex_destroy(&e->feed_lock);
    pthread_mutex_destroy(&e->job_lock);
    pthread_cond_destroy(&e->job_cond);
    e->destroyed = true;
    if (e->handles_open == 0)
        free(e);
}

static const struct hd_engine_ops nats_ops = {
    .name = "nats",
    .start = nats_start,
    .publish = nats_publish,
    .replay = nats_replay,
    .pending = nats_pending,
    .drain = nats_drain,
    .stop = nats_stop,
    .destroy = nats_destroy,
};

bool hd_engine_is_nats(const struct hd_engine *e)
{
    return e && e->ops == &nats_ops;
}

static char *dup_or_null(const char *s, bool *oom)
{
    char *d = s ? strdup(s) : NULL;
    if (s && !d)
        *oom = true;
    return d;
}

struct hd_engine *hd_engine_nats_new(uv_loop_t *loop, const struct hd_config *cfg)
{
    struct nats_engine *e = calloc(1, sizeof(*e));
    bool oom = false;
    if (!e)
        return NULL;
    if (cfg->history.store == HD_STORE_SQLITE)
        hd_log_info("history.store sqlite is not used in cluster mode: JetStream is the durable "
                    "history",
                    "");
    e->base.ops = &nats_ops;
    e->loop = loop;
    e->n_servers = (int)cfg->engine.servers.n;
    e->servers = calloc(cfg->engine.servers.n ? cfg->engine.servers.n : 1, sizeof(char *));
    oom = !e->servers;
    for (size_t i = 0; !oom && i < cfg->engine.servers.n; i++)
        e->servers[i] = dup_or_null(cfg->engine.servers.v[i], &oom);
    e->stream = dup_or_null(cfg->engine.stream ? cfg->engine.stream : "HERALD", &oom);
    e->prefix =
        dup_or_null(cfg->engine.subject_prefix ? cfg->engine.subject_prefix : "herald", &oom);
    char host[64] = "heraldd";
    if (!cfg->engine.node && gethostname(host, sizeof(host) - 1) < 0)
        snprintf(host, sizeof(host), "heraldd");
    host[sizeof(host) - 1] = '\0';
    e->node = dup_or_null(cfg->engine.node ? cfg->engine.node : host, &oom);
    e->creds = dup_or_null(cfg->engine.creds_file, &oom);
    e->ca = dup_or_null(cfg->engine.tls_ca, &oom);
    e->replicas = (int)(cfg->engine.replicas ? cfg->engine.replicas : 1);
    e->max_age_s = cfg->history.max_age_s;
    e->max_event_bytes = cfg->limits.max_event_bytes;
    e->dedupe_window_s = cfg->history.dedupe_window_s > DEDUPE_WINDOW_S
                             ? cfg->history.dedupe_window_s
                             : DEDUPE_WINDOW_S;
    char subj[128];
    snprintf(subj, sizeof(subj), STATUS_SUBJECT_FMT, e->stream ? e->stream : "");
    e->status_subject = dup_or_null(subj, &oom);
    /* An instance id per process: message ids of keyless publishes and status requests. */
    uint64_t r = hd_now_ns() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)hd_wall_ms() * 1000003;
    snprintf(e->instance, sizeof(e->instance), "%016llx", (unsigned long long)r);
    if (oom || hd_handoff_init(&e->inbox) != 0) {
        free_config(e);
        free(e);
        return NULL;
    }
    pthread_mutex_init(&e->feed_lock, NULL);
    pthread_mutex_init(&e->job_lock, NULL);
    pthread_cond_init(&e->job_cond, NULL);
    uv_async_init(loop, &e->async, on_async);
    uv_timer_init(loop, &e->retry_timer);
    uv_timer_init(loop, &e->check_timer);
    e->async.data = e->retry_timer.data = e->check_timer.data = e;
    e->handles_open = 3;
    return &e->base;
}

void hd_engine_nats_set_metrics(struct hd_engine *base, struct hd_metrics *m)
{
    struct nats_engine *e = E(base);
    e->metrics = m;
    if (m)
        m->engine_node = e->node;
    update_gauges(e);
}

void hd_engine_nats_set_status_lookup(struct hd_engine *base, hd_status_lookup_fn lookup, void *arg)
{
    E(base)->status_lookup = lookup;
    E(base)->status_arg = arg;
}

/* Answers a status request from this node's history: the counts of an event it still holds. */
static int history_lookup(void *arg, uint64_t id, struct hd_status_counts *out)
{
    const struct hd_msg *m = hd_history_get(arg, id);
    if (!m)
        return -ENOENT;
    *out = (struct hd_status_counts){
        .queued = m->queued, .written = m->written, .dropped = m->dropped};
    return 0;
}

void hd_engine_nats_wire(struct hd_engine *e, struct hd_metrics *m, struct hd_history *h)
{
    hd_engine_nats_set_metrics(e, m);
    hd_engine_nats_set_status_lookup(e, history_lookup, h);
}

/* ---- delivery status across nodes ----------------------------------------------------- */

static void on_gather_closed(uv_handle_t *h)
{
    free(h->data);
}

static void gather_finish(struct gather *g, int err)
{
    if (g->finished)
        return;
    g->finished = true;
    for (struct gather **pp = &g->e->gathers; *pp; pp = &(*pp)->next) {
        if (*pp == g) {
            *pp = g->next;
            break;
        }
    }
    if (g->sub) {
        natsSubscription_Unsubscribe(g->sub);
        natsSubscription_Destroy(g->sub);
        g->sub = NULL;
    }
    g->done(g->arg, err, &g->sum, g->nodes);
    uv_close((uv_handle_t *)&g->timer, on_gather_closed);
}

static void on_gather_timer(uv_timer_t *t)
{
    struct gather *g = t->data;
    /* Answers pushed before the deadline but not yet drained still count. */
    on_async(&g->e->async);
    gather_finish(g, 0);
}

int hd_engine_status_gather(struct hd_engine *base, uint64_t id, unsigned deadline_ms,
                            hd_status_gather_fn done, void *arg)
{
    if (!hd_engine_is_nats(base))
        return -ENOTSUP;
    struct nats_engine *e = E(base);
    if (!e->connected || !e->nc || e->stopping)
        return -EAGAIN;
    struct gather *g = calloc(1, sizeof(*g));
    if (!g)
        return -ENOMEM;
    g->e = e;
    g->done = done;
    g->arg = arg;
    g->id = ++e->msgid_counter;
    char inbox[96], idtext[HD_EVENT_ID_LEN + 1];
    snprintf(inbox, sizeof(inbox), "_INBOX.herald.%s.%llu", e->instance, (unsigned long long)g->id);
    hd_event_id_format(id, idtext);
    natsMsg *req = NULL;
    natsStatus s = natsConnection_Subscribe(&g->sub, e->nc, inbox, on_status_answer, e);
    if (s == NATS_OK)
        s = natsMsg_Create(&req, e->status_subject, inbox, idtext, HD_EVENT_ID_LEN);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(req, "Herald-From", e->instance);
    if (s == NATS_OK)
        s = natsConnection_PublishMsg(e->nc, req);
    natsMsg_Destroy(req);
    if (s != NATS_OK) {
        if (g->sub)
            natsSubscription_Destroy(g->sub);
        free(g);
        return -EAGAIN;
    }
    uv_timer_init(e->loop, &g->timer);
    g->timer.data = g;
    uv_timer_start(&g->timer, on_gather_timer, deadline_ms, 0);
    g->next = e->gathers;
    e->gathers = g;
    return 0;
}
