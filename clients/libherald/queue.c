/* SPDX-License-Identifier: MIT */
/*
 * The queues between the I/O thread and the application: completions of requests (run as
 * callbacks by herald_process()), the event stream (herald_next_event() or the on_event
 * callback), and the pipe that makes herald_fd() readable when either has work. The I/O
 * thread only appends, under the client's mutex; callbacks always run on the application's
 * thread with the mutex released, so they may call the library again.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "client.h"

void herald__notify(struct herald_client *c)
{
    pthread_cond_broadcast(&c->cond);
    if (!c->fd_signalled && (c->cbq || c->evq || c->fatal)) {
        ssize_t n = write(c->pipe_wr, "x", 1);
        c->fd_signalled = n == 1;
    }
}

void herald__drain_fd(struct herald_client *c)
{
    if (!c->fd_signalled || c->cbq || c->evq)
        return;
    char buf[64];
    while (read(c->pipe_rd, buf, sizeof(buf)) > 0)
        ;
    c->fd_signalled = false;
}

void herald__req_free(struct herald__req *r)
{
    if (r) {
        free(r->frame);
        free(r);
    }
}

void herald__complete(struct herald_client *c, struct herald__req *r, int status,
                      const herald_error *err)
{
    r->next = NULL;
    r->status = status;
    if (err)
        r->err = *err;
    else
        memset(&r->err, 0, sizeof(r->err));
    c->n_pending--;
    if (r->sync) {
        r->done = true;
        if (r->abandoned)
            herald__req_free(r);
        pthread_cond_broadcast(&c->cond);
        return;
    }
    if (c->cbq_tail)
        c->cbq_tail->next = r;
    else
        c->cbq = r;
    c->cbq_tail = r;
    herald__notify(c);
}

struct herald__evitem *herald__event_new(herald_event_type type, const char *pattern,
                                         const herald_error *err, size_t extra)
{
    size_t pl = pattern ? strlen(pattern) + 1 : 0;
    size_t bytes = sizeof(struct herald__evitem) + pl + extra;
    struct herald__evitem *it = calloc(1, bytes);
    if (!it)
        return NULL;
    it->bytes = bytes;
    it->ev.type = type;
    if (err)
        it->ev.error = *err;
    if (pattern) {
        memcpy(it->buf, pattern, pl);
        it->ev.pattern = it->buf;
    }
    return it;
}

void herald__push_event(struct herald_client *c, struct herald__evitem *it)
{
    it->next = NULL;
    if (c->evq_tail)
        c->evq_tail->next = it;
    else
        c->evq = it;
    c->evq_tail = it;
    c->evq_n++;
    c->evq_bytes += it->bytes;
    herald__notify(c);
}

bool herald__evq_full(const struct herald_client *c)
{
    return c->evq_n >= c->opts.max_queued_events || c->evq_bytes >= c->opts.max_queued_bytes;
}

/* Hysteresis: reading resumes once half the queue is gone, not after every event. */
static bool evq_low(const struct herald_client *c)
{
    return c->evq_n <= c->opts.max_queued_events / 2 &&
           c->evq_bytes <= c->opts.max_queued_bytes / 2;
}

static struct herald__evitem *pop_event(struct herald_client *c)
{
    struct herald__evitem *it = c->evq;
    if (!it)
        return NULL;
    c->evq = it->next;
    if (!c->evq)
        c->evq_tail = NULL;
    c->evq_n--;
    c->evq_bytes -= it->bytes;
    if (c->rx_paused && evq_low(c))
        lws_cancel_service(c->ctx);
    return it;
}

/* `it` reaches the application now (mu held): the saved cursors move past it, and past
 * everything the ranges cover once nothing else waits. */
static void handed(struct herald_client *c, const struct herald__evitem *it)
{
    if (it->has_mark)
        herald__subs_handed(&c->subs, it->ev.id, &it->mark);
    if (!c->evq && !c->in_hand)
        herald__subs_caught_up(&c->subs);
}

void herald__fail_all(struct herald_client *c, const herald_error *err)
{
    struct herald__req *r;
    while ((r = c->outq) != NULL) {
        c->outq = r->next;
        if (r->kind == HERALD__REQ_SUBSEND)
            herald__req_free(r);
        else
            herald__complete(c, r, err->status, err);
    }
    c->outq_tail = NULL;
    while ((r = c->inflight) != NULL) {
        c->inflight = r->next;
        herald__complete(c, r, err->status, err);
    }
    for (struct herald__sub *s = c->subs.head; s; s = s->next) {
        while ((r = s->waiters) != NULL) {
            s->waiters = r->next;
            herald__complete(c, r, err->status, err);
        }
    }
}

HERALD_API void herald_event_free(herald_event *ev)
{
    if (ev)
        free((char *)ev - offsetof(struct herald__evitem, ev));
}

HERALD_API void herald_free(void *p)
{
    free(p);
}

void herald__deadline_in(struct timespec *ts, int ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static bool timed_wait(struct herald_client *c, int timeout_ms, const struct timespec *dl)
{
    if (timeout_ms < 0)
        return pthread_cond_wait(&c->cond, &c->mu) == 0;
    return pthread_cond_timedwait(&c->cond, &c->mu, dl) != ETIMEDOUT;
}

HERALD_API int herald_next_event(herald_client *c, herald_event **ev, int timeout_ms)
{
    if (!c || !ev)
        return HERALD_E_INVALID;
    *ev = NULL;
    struct timespec dl;
    if (timeout_ms > 0)
        herald__deadline_in(&dl, timeout_ms);
    pthread_mutex_lock(&c->mu);
    if (c->opts.on_event) {
        pthread_mutex_unlock(&c->mu);
        return HERALD_E_STATE;
    }
    while (!c->evq) {
        if (c->fatal || c->closing) {
            pthread_mutex_unlock(&c->mu);
            return HERALD_E_CLOSED;
        }
        if (timeout_ms == 0 || !timed_wait(c, timeout_ms, &dl)) {
            if (c->evq)
                break;
            pthread_mutex_unlock(&c->mu);
            return HERALD_E_TIMEOUT;
        }
    }
    struct herald__evitem *it = pop_event(c);
    handed(c, it);
    herald__drain_fd(c);
    pthread_mutex_unlock(&c->mu);
    *ev = &it->ev;
    return 0;
}

void herald__run_completions(struct herald_client *c, struct herald__req *list)
{
    while (list) {
        struct herald__req *r = list;
        list = r->next;
        if (r->cb) {
            herald_reply rep = {
                .status = r->status,
                .error = r->err,
                .pattern = r->kind == HERALD__REQ_PUB ? NULL : r->pattern,
                .event_id = r->kind == HERALD__REQ_PUB && r->status == 0 ? r->event_id : NULL,
                .receivers = r->receivers,
                .replayed = r->replayed,
                .gap = r->gap,
                .duplicate = r->kind == HERALD__REQ_PUB && r->status == 0 && r->duplicate,
                .key = r->kind == HERALD__REQ_PUB ? r->key : NULL,
            };
            r->cb(c, &rep, r->arg);
        }
        herald__req_free(r);
    }
}

HERALD_API int herald_process(herald_client *c, int timeout_ms)
{
    if (!c)
        return HERALD_E_INVALID;
    struct timespec dl;
    if (timeout_ms > 0)
        herald__deadline_in(&dl, timeout_ms);
    pthread_mutex_lock(&c->mu);
    bool events = c->opts.on_event != NULL;
    while (!c->cbq && !(events && c->evq)) {
        if (c->fatal || c->closing) {
            herald__drain_fd(c);
            pthread_mutex_unlock(&c->mu);
            return HERALD_E_CLOSED;
        }
        if (timeout_ms == 0 || !timed_wait(c, timeout_ms, &dl)) {
            if (c->cbq || (events && c->evq))
                break;
            herald__drain_fd(c);
            pthread_mutex_unlock(&c->mu);
            return 0;
        }
    }
    struct herald__req *cbs = c->cbq;
    c->cbq = c->cbq_tail = NULL;
    struct herald__evitem *evs = NULL, **tail = &evs;
    while (events && c->evq) {
        struct herald__evitem *it = pop_event(c);
        *tail = it;
        tail = &it->next;
        c->in_hand++;
    }
    *tail = NULL;
    herald__drain_fd(c);
    pthread_mutex_unlock(&c->mu);

    int n = 0;
    for (struct herald__req *r = cbs; r; r = r->next)
        n++;
    herald__run_completions(c, cbs);
    while (evs) {
        struct herald__evitem *it = evs;
        evs = it->next;
        pthread_mutex_lock(&c->mu);
        c->in_hand--;
        handed(c, it);
        pthread_mutex_unlock(&c->mu);
        c->opts.on_event(c, &it->ev, c->opts.user);
        free(it);
        n++;
    }
    return n;
}

HERALD_API int herald_fd(const herald_client *c)
{
    return c ? c->pipe_rd : -1;
}
