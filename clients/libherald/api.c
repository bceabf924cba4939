/* SPDX-License-Identifier: MIT */
/*
 * The public calls of libherald: creating and closing clients, queuing requests for the
 * I/O thread (client.c) and waiting for their answers (synchronous calls) or leaving them to
 * herald_process() (asynchronous ones). The queues towards the application and the event
 * stream are in queue.c. Every shared structure is guarded by the client's mutex; the I/O
 * thread is woken with lws_cancel_service().
 */
#define _GNU_SOURCE /* pipe2 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "client.h"

#define KIND_MAX 64

/* ---- process-wide libwebsockets state ------------------------------------------------------ */

static pthread_mutex_t g_lws_mu = PTHREAD_MUTEX_INITIALIZER;
static bool g_quiet;

void herald__lws_global_lock(void)
{
    pthread_mutex_lock(&g_lws_mu);
}
void herald__lws_global_unlock(void)
{
    pthread_mutex_unlock(&g_lws_mu);
}

static void discard_log(int level, const char *line)
{
    (void)level;
    (void)line;
}

/* Caller holds the global lock. lws logging is process-wide: a library must not print, so
 * it is silenced once unless the application asked to keep its own settings. */
void herald__lws_quiet(const herald_options *o)
{
    if (o->keep_lws_log || g_quiet)
        return;
    lws_set_log_level(0, discard_log);
    g_quiet = true;
}

/* ---- creating and closing ------------------------------------------------------------------- */

static void destroy(struct herald_client *c)
{
    if (c->pipe_rd >= 0)
        close(c->pipe_rd);
    if (c->pipe_wr >= 0)
        close(c->pipe_wr);
    pthread_cond_destroy(&c->cond);
    pthread_mutex_destroy(&c->mu);
    herald__options_clear(&c->opts);
    free(c->urls);
    free(c->rx);
    free(c->wbuf);
    free(c);
}

static struct herald_client *create(const char *url, const herald_options *opts, herald_error *err)
{
    struct herald_client *c = calloc(1, sizeof(*c));
    if (!c) {
        herald__err(err, HERALD_E_NOMEM, NULL, "out of memory");
        return NULL;
    }
    c->pipe_rd = c->pipe_wr = -1;
    if (herald__url_list_parse(url, &c->urls, &c->n_urls, err)) {
        free(c);
        return NULL;
    }
    if (herald__options_copy(&c->opts, opts)) {
        free(c->urls);
        free(c);
        herald__err(err, HERALD_E_NOMEM, NULL, "out of memory");
        return NULL;
    }
    const struct herald_options o = c->opts; /* a view for the set-up below */
    c->max_event_bytes = 65536;
    pthread_mutexattr_t ma;
    pthread_condattr_t ca;
    pthread_mutexattr_init(&ma);
    /* lws may call back into client.c from inside calls that client.c makes while holding
     * the lock (connect errors, closes): recursion is the simple, safe answer. */
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&c->mu, &ma);
    pthread_mutexattr_destroy(&ma);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->cond, &ca);
    pthread_condattr_destroy(&ca);
    int fds[2];
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) {
        herald__err(err, HERALD_E_NOMEM, NULL, "cannot allocate the client: %s", strerror(errno));
        destroy(c);
        return NULL;
    }
    c->pipe_rd = fds[0];
    c->pipe_wr = fds[1];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^
                    ((uint64_t)getpid() << 40) ^ (uint64_t)(uintptr_t)c;
    herald__backoff_init(&c->backoff, o.backoff_initial_ms, o.backoff_max_ms, seed);
    /* Keys must not collide with another client's within the server's dedupe window:
     * 64 random bits from the kernel (the clock and address mix as a last resort). */
    uint64_t rnd = 0;
    if (getrandom(&rnd, sizeof(rnd), GRND_NONBLOCK) != (ssize_t)sizeof(rnd))
        rnd = seed * 0x9E3779B97F4A7C15ull;
    snprintf(c->key_prefix, sizeof(c->key_prefix), "hl%016llx", (unsigned long long)rnd);
    if (herald__ctx_create(c, err)) {
        destroy(c);
        return NULL;
    }
    /* The I/O thread takes no signals: they belong to the application, and a SIGPIPE from
     * a write to a dead socket stays pending there instead of killing the process. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int r = pthread_create(&c->thread, NULL, herald__thread_main, c);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (r) {
        herald__lws_global_lock();
        lws_context_destroy(c->ctx);
        herald__lws_global_unlock();
        herald__err(err, HERALD_E_NOMEM, NULL, "cannot start the client thread: %s", strerror(r));
        destroy(c);
        return NULL;
    }
    c->thread_started = true;
    return c;
}

HERALD_API herald_client *herald_connect(const char *url, const herald_options *opts,
                                         herald_error *err)
{
    struct herald_client *c = create(url, opts, err);
    if (!c)
        return NULL;
    struct timespec dl;
    /* Without retries each server gets its own attempt, and the I/O thread's deadlines fire
     * first and say more. */
    herald__deadline_in(&dl, c->opts.retry_first_connect
                                 ? c->opts.connect_timeout_ms
                                 : (int)c->n_urls * (c->opts.connect_timeout_ms + 100) + 2000);
    pthread_mutex_lock(&c->mu);
    int rc = 0;
    while (!c->connected && !c->fatal && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&c->cond, &c->mu, &dl);
    bool ok = c->connected;
    if (!ok) {
        if (c->fatal && err)
            *err = c->fatal_err;
        else
            herald__err(err, HERALD_E_TIMEOUT, NULL, "could not connect to %s within %d ms",
                        herald__cur_url(c)->host_header, c->opts.connect_timeout_ms);
    }
    pthread_mutex_unlock(&c->mu);
    if (!ok) {
        herald_close(c);
        return NULL;
    }
    return c;
}

HERALD_API herald_client *herald_connect_async(const char *url, const herald_options *opts,
                                               herald_error *err)
{
    return create(url, opts, err);
}

HERALD_API void herald_close(herald_client *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->mu);
    c->closing = true;
    pthread_mutex_unlock(&c->mu);
    if (c->thread_started) {
        lws_cancel_service(c->ctx);
        pthread_join(c->thread, NULL);
    }
    herald__lws_global_lock();
    lws_context_destroy(c->ctx);
    herald__lws_global_unlock();

    /* Single-threaded from here. Completions already made run with their results; the
     * rest are cancelled, so every async callback runs exactly once. */
    herald_error e;
    herald__err(&e, HERALD_E_CLOSED, NULL, "the client was closed");
    pthread_mutex_lock(&c->mu);
    herald__fail_all(c, &e);
    struct herald__req *cbs = c->cbq;
    c->cbq = c->cbq_tail = NULL;
    while (c->evq) {
        struct herald__evitem *it = c->evq;
        c->evq = it->next;
        free(it);
    }
    c->evq_tail = NULL;
    for (struct herald__sub *s = c->subs.head; s; s = s->next)
        s->waiters = NULL; /* all completed above */
    herald__subs_clear(&c->subs);
    pthread_mutex_unlock(&c->mu);
    herald__run_completions(c, cbs);
    destroy(c);
}

/* ---- requests ------------------------------------------------------------------------------ */

static struct herald__req *req_new(enum herald__req_kind kind, const char *pattern, bool sync,
                                   herald_reply_fn cb, void *arg)
{
    struct herald__req *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->kind = kind;
    r->sync = sync;
    r->cb = cb;
    r->arg = arg;
    if (pattern)
        snprintf(r->pattern, sizeof(r->pattern), "%s", pattern);
    return r;
}

static void push_outq(struct herald_client *c, struct herald__req *r)
{
    r->next = NULL;
    if (c->outq_tail)
        c->outq_tail->next = r;
    else
        c->outq = r;
    c->outq_tail = r;
}

/* Common admission checks; mu held. */
static int admit(struct herald_client *c, herald_error *err)
{
    if (c->fatal) {
        if (err)
            *err = c->fatal_err;
        return herald__err(err, HERALD_E_CLOSED, c->fatal_err.server_code,
                           "the client has stopped: %s", c->fatal_err.message);
    }
    if (c->closing)
        return herald__err(err, HERALD_E_CLOSED, NULL, "the client is closing");
    if (c->n_pending >= c->opts.max_pending)
        return herald__err(err, HERALD_E_BUSY, NULL, "%zu requests are already pending",
                           c->n_pending);
    return 0;
}

static int check_name(const char *s, size_t max, const char *what, herald_error *err)
{
    if (!s || !*s)
        return herald__err(err, HERALD_E_INVALID, NULL, "no %s given", what);
    if (strnlen(s, max + 1) > max)
        return herald__err(err, HERALD_E_INVALID, NULL, "the %s is longer than %zu bytes", what,
                           max);
    char *q = herald__json_quote(s);
    if (!q)
        return herald__err(err, HERALD_E_INVALID, NULL, "the %s is not valid UTF-8", what);
    free(q);
    return 0;
}

/* Takes a timed-out synchronous request back; mu held. */
static void abandon(struct herald_client *c, struct herald__req *r)
{
    for (struct herald__req **pp = &c->outq, *prev = NULL; *pp; prev = *pp, pp = &(*pp)->next) {
        if (*pp == r) {
            *pp = r->next;
            if (c->outq_tail == r)
                c->outq_tail = prev;
            c->n_pending--;
            herald__req_free(r);
            return;
        }
    }
    for (struct herald__sub *s = c->subs.head; s; s = s->next) {
        for (struct herald__req **pp = &s->waiters; *pp; pp = &(*pp)->next) {
            if (*pp == r) {
                *pp = r->next;
                c->n_pending--;
                herald__req_free(r);
                return;
            }
        }
    }
    r->abandoned = true; /* in flight: freed by the I/O thread when the answer comes */
}

/*
 * Waits for a synchronous request; mu held. Returns 0 when it completed (the caller reads the
 * result and frees it) or HERALD_E_TIMEOUT with `err` set (the request is no longer the
 * caller's).
 */
static int wait_req(struct herald_client *c, struct herald__req *r, int timeout_ms,
                    const char *what, herald_error *err)
{
    struct timespec dl;
    if (timeout_ms >= 0)
        herald__deadline_in(&dl, timeout_ms);
    while (!r->done) {
        if (timeout_ms < 0) {
            pthread_cond_wait(&c->cond, &c->mu);
        } else if (pthread_cond_timedwait(&c->cond, &c->mu, &dl) == ETIMEDOUT && !r->done) {
            bool sent = r->sent || r->resent; /* a requeued publish went out once */
            abandon(c, r);
            if (sent)
                return herald__err(err, HERALD_E_TIMEOUT, NULL,
                                   "no answer to the %s within "
                                   "%d ms; it may or may not have taken effect",
                                   what, timeout_ms);
            return herald__err(err, HERALD_E_TIMEOUT, NULL,
                               "the %s could not be sent within "
                               "%d ms (%s)",
                               what, timeout_ms, c->connected ? "queue busy" : "not connected");
        }
    }
    if (r->status && err)
        *err = r->err;
    return 0;
}

static int subscribe(struct herald_client *c, const char *pattern, const char *since, bool sync,
                     herald_reply_fn cb, void *arg, struct herald__req **out, herald_error *err)
{
    if (!c)
        return herald__err(err, HERALD_E_INVALID, NULL, "no client");
    int r = check_name(pattern, HERALD_TOPIC_MAX, "pattern", err);
    if (r)
        return r;
    if (since && (strnlen(since, HERALD_ID_MAX + 1) > HERALD_ID_MAX || !*since))
        return herald__err(err, HERALD_E_INVALID, NULL, "since must be 1-%d bytes", HERALD_ID_MAX);
    if (since && (r = check_name(since, HERALD_ID_MAX, "since", err)) != 0)
        return r;
    struct herald__req *req = req_new(HERALD__REQ_SUB, pattern, sync, cb, arg);
    if (!req)
        return herald__err(err, HERALD_E_NOMEM, NULL, "out of memory");
    pthread_mutex_lock(&c->mu);
    if ((r = admit(c, err)) != 0) {
        pthread_mutex_unlock(&c->mu);
        herald__req_free(req);
        return r;
    }
    struct herald__sub *s = herald__subs_find(&c->subs, pattern);
    c->n_pending++;
    if (s && s->was_live) {
        /* Already subscribed: a no-op, as on the server (nothing is replayed twice). */
        herald__complete(c, req, 0, NULL);
    } else {
        struct herald__req *marker = NULL;
        if (!s) {
            s = herald__subs_add(&c->subs, pattern, since);
            marker = req_new(HERALD__REQ_SUBSEND, pattern, false, NULL, NULL);
            if (!s || !marker) {
                if (s)
                    herald__subs_remove(&c->subs, s);
                c->n_pending--;
                pthread_mutex_unlock(&c->mu);
                herald__req_free(marker);
                herald__req_free(req);
                return herald__err(err, HERALD_E_NOMEM, NULL, "out of memory");
            }
            push_outq(c, marker);
        }
        req->next = s->waiters;
        s->waiters = req;
    }
    *out = req;
    pthread_mutex_unlock(&c->mu);
    lws_cancel_service(c->ctx);
    return 0;
}

HERALD_API int herald_subscribe(herald_client *c, const char *pattern, const char *since,
                                int timeout_ms, herald_sub_info *info, herald_error *err)
{
    struct herald__req *req = NULL;
    int r = subscribe(c, pattern, since, true, NULL, NULL, &req, err);
    if (r)
        return r;
    pthread_mutex_lock(&c->mu);
    r = wait_req(c, req, timeout_ms, "subscribe", err);
    if (r == 0) {
        r = req->status;
        if (info && r == 0)
            *info = (herald_sub_info){.replayed = req->replayed, .gap = req->gap};
        herald__req_free(req);
    }
    pthread_mutex_unlock(&c->mu);
    return r;
}

HERALD_API int herald_subscribe_async(herald_client *c, const char *pattern, const char *since,
                                      herald_reply_fn cb, void *arg, herald_error *err)
{
    struct herald__req *req = NULL;
    return subscribe(c, pattern, since, false, cb, arg, &req, err);
}

static int unsubscribe(struct herald_client *c, const char *pattern, bool sync, herald_reply_fn cb,
                       void *arg, struct herald__req **out, herald_error *err)
{
    if (!c)
        return herald__err(err, HERALD_E_INVALID, NULL, "no client");
    int r = check_name(pattern, HERALD_TOPIC_MAX, "pattern", err);
    if (r)
        return r;
    struct herald__req *req = req_new(HERALD__REQ_UNSUB, pattern, sync, cb, arg);
    if (!req)
        return herald__err(err, HERALD_E_NOMEM, NULL, "out of memory");
    pthread_mutex_lock(&c->mu);
    if ((r = admit(c, err)) != 0) {
        pthread_mutex_unlock(&c->mu);
        herald__req_free(req);
        return r;
    }
    struct herald__sub *s = herald__subs_find(&c->subs, pattern);
    /* The server must hear of it when it may hold the subscription; an unknown pattern still
     * goes out while connected, so its ok comes after any unsubscribe still in flight. */
    bool on_server = c->connected && (!s || s->state != HERALD__SUB_UNSENT);
    if (s) {
        herald_error e;
        herald__err(&e, HERALD_E_CLOSED, NULL, "unsubscribed before the server answered");
        struct herald__req *w;
        while ((w = s->waiters) != NULL) {
            s->waiters = w->next;
            herald__complete(c, w, HERALD_E_CLOSED, &e);
        }
        herald__subs_remove(&c->subs, s);
    }
    c->n_pending++;
    if (on_server) {
        req->wire_id = ++c->next_wire_id;
        req->frame = herald__encode_unsubscribe(LWS_PRE, req->wire_id, pattern, &req->frame_len);
        if (!req->frame) {
            c->n_pending--;
            pthread_mutex_unlock(&c->mu);
            herald__req_free(req);
            return herald__err(err, HERALD_E_NOMEM, NULL, "out of memory");
        }
        push_outq(c, req);
    } else {
        herald__complete(c, req, 0, NULL);
    }
    *out = req;
    pthread_mutex_unlock(&c->mu);
    lws_cancel_service(c->ctx);
    return 0;
}

HERALD_API int herald_unsubscribe(herald_client *c, const char *pattern, int timeout_ms,
                                  herald_error *err)
{
    struct herald__req *req = NULL;
    int r = unsubscribe(c, pattern, true, NULL, NULL, &req, err);
    if (r)
        return r;
    pthread_mutex_lock(&c->mu);
    r = wait_req(c, req, timeout_ms, "unsubscribe", err);
    if (r == 0) {
        r = req->status;
        herald__req_free(req);
    }
    pthread_mutex_unlock(&c->mu);
    return r;
}

HERALD_API int herald_unsubscribe_async(herald_client *c, const char *pattern, herald_reply_fn cb,
                                        void *arg, herald_error *err)
{
    struct herald__req *req = NULL;
    return unsubscribe(c, pattern, false, cb, arg, &req, err);
}

static int publish(struct herald_client *c, enum herald__req_kind kind, const char *topic,
                   const char *kind_name, const char *key, const char *data_json, bool sync,
                   herald_reply_fn cb, void *arg, struct herald__req **out, herald_error *err)
{
    int r;
    if (!c)
        return herald__err(err, HERALD_E_INVALID, NULL, "no client");
    if (key && !herald__key_valid(key))
        return herald__err(err, HERALD_E_INVALID, NULL, "the key must be 1-%d visible ASCII bytes",
                           HERALD_KEY_MAX);
    if (kind == HERALD__REQ_PUB) {
        if ((r = check_name(topic, HERALD_TOPIC_MAX, "topic", err)) != 0)
            return r;
        if (kind_name && (r = check_name(kind_name, KIND_MAX, "event kind", err)) != 0)
            return r;
        if (data_json && (r = herald__check_json(data_json, err)) != 0)
            return r;
    }
    struct herald__req *req = req_new(kind, topic, sync, cb, arg);
    if (!req)
        return herald__err(err, HERALD_E_NOMEM, NULL, "out of memory");
    pthread_mutex_lock(&c->mu);
    if ((r = admit(c, err)) != 0) {
        pthread_mutex_unlock(&c->mu);
        herald__req_free(req);
        return r;
    }
    /* The server measures the data, not the frame, against the max_event_bytes its welcome
     * announced (at most the compact text: whitespace may be dropped before measuring). */
    size_t dlen = data_json ? herald__json_compact(data_json, NULL) : 4;
    if (kind == HERALD__REQ_PUB && dlen > c->max_event_bytes) {
        size_t limit = c->max_event_bytes;
        pthread_mutex_unlock(&c->mu);
        herald__req_free(req);
        return herald__err(err, HERALD_E_TOO_LARGE, "too_large",
                           "the event's data is %zu bytes, over the server's limit of %zu "
                           "(max_event_bytes); it was not sent",
                           dlen, limit);
    }
    req->wire_id = ++c->next_wire_id;
    if (kind == HERALD__REQ_PUB) {
        if (key)
            snprintf(req->key, sizeof(req->key), "%s", key);
        else
            herald__key_make(req->key, sizeof(req->key), c->key_prefix, ++c->key_seq);
        /* Whitespace could push a frame whose data fits past the frame limit (the server
         * closes such a connection with 1009): send the compact text then. */
        char *compact = NULL;
        if (data_json && strlen(data_json) + 1024 > c->max_event_bytes &&
            dlen < strlen(data_json)) {
            compact = malloc(strlen(data_json) + 1);
            if (compact)
                herald__json_compact(data_json, compact);
        }
        req->frame = herald__encode_publish(LWS_PRE, req->wire_id, topic, kind_name, req->key,
                                            compact ? compact : data_json, &req->frame_len);
        free(compact);
    } else {
        req->frame = herald__encode_ping(LWS_PRE, req->wire_id, &req->frame_len);
    }
    if (!req->frame) {
        pthread_mutex_unlock(&c->mu);
        herald__req_free(req);
        return herald__err(err, HERALD_E_NOMEM, NULL, "out of memory");
    }
    c->n_pending++;
    push_outq(c, req);
    *out = req;
    pthread_mutex_unlock(&c->mu);
    lws_cancel_service(c->ctx);
    return 0;
}

HERALD_API int herald_publish_key(herald_client *c, const char *topic, const char *kind,
                                  const char *data_json, const char *key, int timeout_ms,
                                  char *id_out, bool *duplicate, herald_error *err)
{
    struct herald__req *req = NULL;
    int r = publish(c, HERALD__REQ_PUB, topic, kind, key, data_json, true, NULL, NULL, &req, err);
    if (r)
        return r;
    pthread_mutex_lock(&c->mu);
    r = wait_req(c, req, timeout_ms, "publish", err);
    if (r == 0) {
        r = req->status;
        if (r == 0 && id_out)
            memcpy(id_out, req->event_id, HERALD_ID_SIZE);
        if (r == 0 && duplicate)
            *duplicate = req->duplicate;
        herald__req_free(req);
    }
    pthread_mutex_unlock(&c->mu);
    return r;
}

HERALD_API int herald_publish(herald_client *c, const char *topic, const char *kind,
                              const char *data_json, int timeout_ms, char *id_out,
                              herald_error *err)
{
    return herald_publish_key(c, topic, kind, data_json, NULL, timeout_ms, id_out, NULL, err);
}

HERALD_API int herald_publish_text(herald_client *c, const char *topic, const char *kind,
                                   const char *text, int timeout_ms, char *id_out,
                                   herald_error *err)
{
    if (!text)
        return herald__err(err, HERALD_E_INVALID, NULL, "no text given");
    char *q = herald__json_quote(text);
    if (!q)
        return herald__err(err, HERALD_E_INVALID, NULL, "the text is not valid UTF-8");
    int r = herald_publish(c, topic, kind, q, timeout_ms, id_out, err);
    free(q);
    return r;
}

HERALD_API int herald_publish_async(herald_client *c, const char *topic, const char *kind,
                                    const char *data_json, herald_reply_fn cb, void *arg,
                                    herald_error *err)
{
    struct herald__req *req = NULL;
    return publish(c, HERALD__REQ_PUB, topic, kind, NULL, data_json, false, cb, arg, &req, err);
}

HERALD_API int herald_publish_key_async(herald_client *c, const char *topic, const char *kind,
                                        const char *data_json, const char *key, herald_reply_fn cb,
                                        void *arg, herald_error *err)
{
    struct herald__req *req = NULL;
    return publish(c, HERALD__REQ_PUB, topic, kind, key, data_json, false, cb, arg, &req, err);
}

HERALD_API int herald_ping(herald_client *c, int timeout_ms, herald_error *err)
{
    struct herald__req *req = NULL;
    int r = publish(c, HERALD__REQ_PING, NULL, NULL, NULL, NULL, true, NULL, NULL, &req, err);
    if (r)
        return r;
    pthread_mutex_lock(&c->mu);
    r = wait_req(c, req, timeout_ms, "ping", err);
    if (r == 0) {
        r = req->status;
        herald__req_free(req);
    }
    pthread_mutex_unlock(&c->mu);
    return r;
}

HERALD_API bool herald_connected(const herald_client *c)
{
    if (!c)
        return false;
    struct herald_client *m = (struct herald_client *)c; /* the lock is not part of the value */
    pthread_mutex_lock(&m->mu);
    bool r = m->connected;
    pthread_mutex_unlock(&m->mu);
    return r;
}

HERALD_API int herald_subscription_cursor(herald_client *c, const char *pattern, char *out)
{
    if (!c || !pattern || !out)
        return HERALD_E_INVALID;
    pthread_mutex_lock(&c->mu);
    if (!c->evq && !c->in_hand)
        herald__subs_caught_up(&c->subs);
    struct herald__sub *s = herald__subs_find(&c->subs, pattern);
    if (s)
        herald__sub_app_cursor(s, out);
    pthread_mutex_unlock(&c->mu);
    return s ? 0 : HERALD_E_INVALID;
}
