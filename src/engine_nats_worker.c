/* SPDX-License-Identifier: MIT */
/*
 * The NATS engine's worker thread: every synchronous JetStream call (stream info, creation and
 * checks, attaching the feed's ordered consumer, message gets, replays from JetStream), so
 * the loop never waits on the network. Results go to the loop as items
 * (engine_nats_int.h).
 */
#include "engine_nats_int.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fanout.h"
#include "log.h"
#include "natsid.h"
#include "protocol.h"
#include "topic.h"

void ne_job_post(struct nats_engine *e, struct job *j)
{
    pthread_mutex_lock(&e->job_lock);
    if (j->kind == JOB_STOP || j->kind == JOB_RETIRE) { /* jump the queue */
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
void ne_job_post_once(struct nats_engine *e, enum job_kind kind)
{
    bool *flag = kind == JOB_ATTACH  ? &e->attach_queued
                 : kind == JOB_PROBE ? &e->probe_queued
                                     : &e->check_queued;
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
    ne_job_post(e, j);
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
/* A new ordered consumer over the whole stream from `start`, read synchronously by the loop.
 * Returns it, or NULL having logged why. Worker thread. */
static natsSubscription *feed_subscribe(struct nats_engine *e, uint64_t start)
{
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
    natsStatus s = js_SubscribeSync(&sub, e->js, subject, NULL, &so, &jerr);
    if (s != NATS_OK) {
        log_nats_error("cannot create the stream consumer; retrying", s, jerr);
        return NULL;
    }
    /* Room for a catch-up burst: libnats drops (slow consumer) past its pending limits. */
    natsSubscription_SetPendingLimits(sub, 1 << 20, 1 << 30);
    return sub;
}

/*
 * Attaches the feed: stream info (creating the stream when missing), then a new ordered
 * consumer from just after the last message the loop took, or from the recovery point on the
 * first attach or a new epoch, handed to the loop in IT_ATTACHED. Worker thread.
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
        struct item *it = ne_item_new(IT_FATAL);
        if (it)
            ne_post(e, it);
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

    pthread_mutex_lock(&e->feed_lock);
    if (e->feed_base == base) {
        start = e->feed_seq ? e->feed_seq + 1 : e->feed_start;
    } else {
        start = last + 1 > RECOVER_MAX ? last + 1 - RECOVER_MAX : 1;
        if (start < first)
            start = first;
        e->feed_base = base;
        e->feed_seq = 0;
        e->feed_start = start;
    }
    pthread_mutex_unlock(&e->feed_lock);
    natsSubscription *sub = feed_subscribe(e, start);
    struct item *it = sub ? ne_item_new(IT_ATTACHED) : NULL;
    if (!it) {
        natsSubscription_Destroy(sub);
        first_outcome(e, -EAGAIN, "cannot create the stream consumer");
        /* Not attached after all: the loop goes unready and its check timer tries again. */
        struct item *d = ne_item_new(IT_DETACHED);
        if (d)
            ne_post(e, d);
        return;
    }
    *it = (struct item){.kind = IT_ATTACHED,
                        .base = base,
                        .first_seq = first,
                        .last_seq = last,
                        .start_seq = start,
                        .sub = sub};
    ne_post(e, it);
    first_outcome(e, 1, NULL);
}

static void do_check(struct nats_engine *e)
{
    jsErrCode jerr = 0;
    jsStreamInfo *si = NULL;
    if (!atomic_load(&e->connected_flag))
        return;
    natsStatus s = js_GetStreamInfo(&si, e->js, e->stream, NULL, &jerr);
    struct item *it = ne_item_new(IT_CHECKED);
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
    ne_post(e, it);
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
    struct item *it = ne_item_new(IT_DUP_TIME);
    if (!it)
        return; /* the publish stays pending until destroy fails it */
    it->pub = p;
    it->seq = seq;
    it->time_ms = t;
    ne_post(e, it);
}

/* Turns a stream message into an event; NULL when it is not a Herald event. Any thread. */
struct hd_msg *ne_event_of(struct nats_engine *e, natsMsg *m, uint64_t id, char **key)
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

/* Appends `ev` (taken) to the replay's result; past REPLAY_MAX the oldest go and make a gap.
 * Returns 0, or -ENOMEM (r->err set, ev dropped). */
static int replay_keep(struct replay *r, struct hd_msg *ev, size_t *cap)
{
    if (r->n == REPLAY_MAX) { /* keep the newest; the oldest are a gap */
        hd_msg_unref(r->msgs[0]);
        memmove(r->msgs, r->msgs + 1, (r->n - 1) * sizeof(*r->msgs));
        r->n--;
        r->gap = true;
    }
    if (r->n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 64;
        struct hd_msg **v = realloc(r->msgs, ncap * sizeof(*v));
        if (!v) {
            hd_msg_unref(ev);
            r->err = -ENOMEM;
            return -ENOMEM;
        }
        r->msgs = v;
        *cap = ncap;
    }
    r->msgs[r->n++] = ev;
    return 0;
}

/* Reads the replay's consumer up to `upto_seq` (or until nothing is pending). Worker thread. */
static void replay_read(struct nats_engine *e, struct replay *r, natsSubscription *sub,
                        uint64_t base, uint64_t upto_seq, uint64_t pending)
{
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
        struct hd_msg *ev = ne_event_of(e, m, hd_natsid_make(base, seq), &key);
        free(key);
        natsMsg_Destroy(m);
        if (!ev)
            continue;
        if (replay_keep(r, ev, &cap) < 0)
            break;
        if (seq == upto_seq)
            break;
    }
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
    replay_read(e, r, sub, base, upto_seq, pending);
    natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
out:;
    struct item *it = ne_item_new(IT_REPLAY);
    if (!it)
        return; /* leaks the replay; only when out of memory */
    it->replay = r;
    ne_post(e, it);
}

void *ne_worker_main(void *arg)
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
        if (j->kind == JOB_PROBE)
            e->probe_queued = false;
        pthread_mutex_unlock(&e->job_lock);
        enum job_kind kind = j->kind;
        switch (kind) {
        case JOB_ATTACH:
            do_attach(e);
            break;
        case JOB_CHECK:
            do_check(e);
            break;
        case JOB_PROBE: {
            int server = ne_probe_servers(e);
            struct item *it = server >= 0 ? ne_item_new(IT_REACHABLE) : NULL;
            if (it) {
                it->server = server;
                ne_post(e, it);
            }
            break;
        }
        case JOB_DUP_TIME:
            do_dup_time(e, j->pub, j->seq);
            break;
        case JOB_REPLAY:
            do_replay(e, j->replay);
            break;
        case JOB_RETIRE:
            /* Unsubscribing deletes its consumer on the server: a request, so here. */
            natsSubscription_Unsubscribe(j->sub);
            natsSubscription_Destroy(j->sub);
            break;
        case JOB_STOP:
            break;
        }
        free(j);
        if (kind == JOB_STOP) {
            atomic_store(&e->worker_done, true);
            return NULL;
        }
    }
}
