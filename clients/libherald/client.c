/* SPDX-License-Identifier: MIT */
/*
 * The I/O thread: one libwebsockets client context per herald_client, serviced by a thread
 * of its own. It connects, waits for the welcome, (re)sends subscriptions with their resume
 * cursors, writes queued requests one frame per writable callback, matches replies to
 * requests, turns events into the application's stream, and on any loss schedules a
 * jittered reconnect. It never runs application code and never blocks on the application:
 * when the application stops taking events it stops reading the socket instead.
 * Public calls and the queues they share with this thread are in api.c.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"

/* A connection that stayed up this long resets the backoff to its initial delay. */
#define STEADY_US (10 * LWS_US_PER_SEC)
/* How long a closing client waits for the close handshake. */
#define CLOSE_GRACE_US (1 * LWS_US_PER_SEC)
/* Incoming frames may exceed max_event_bytes by the event's envelope; this is plenty. */
#define FRAME_SLACK 65536

static void on_retry(lws_sorted_usec_list_t *sul);

static struct herald_client *client_of(struct lws *wsi)
{
    return lws_context_user(lws_get_context(wsi));
}

/* ---- fatal stop and reconnect (mu held) -------------------------------------------------- */

static void go_fatal(struct herald_client *c, const herald_error *why)
{
    c->fatal = true;
    c->fatal_err = *why;
    c->cstate = HERALD__C_STOPPED;
    c->connected = false;
    herald__fail_all(c, why);
    struct herald__evitem *it = herald__event_new(HERALD_EV_ERROR, NULL, why, 0);
    if (it) {
        it->ev.fatal = true;
        herald__push_event(c, it);
    }
    c->stop_thread = true;
    herald__notify(c);
}

static void schedule_retry(struct herald_client *c, const herald_error *why)
{
    lws_usec_t now = lws_now_usecs();
    if (c->open_since_us && (uint64_t)now - c->open_since_us >= STEADY_US)
        herald__backoff_reset(&c->backoff);
    c->open_since_us = 0;
    /* Before any connection, the rest of the list is tried at once; after that the delays
     * grow as usual whichever server comes next. */
    unsigned delay =
        !c->ever_connected && c->attempts < c->n_urls ? 1 : herald__backoff_next(&c->backoff);
    c->cstate = HERALD__C_WAITING;
    struct herald__evitem *it = herald__event_new(HERALD_EV_DISCONNECTED, NULL, why, 0);
    if (it) {
        it->ev.retry_ms = delay;
        herald__push_event(c, it);
    }
    lws_sul_schedule(c->ctx, 0, &c->sul_retry, on_retry, (lws_usec_t)delay * LWS_US_PER_MS);
    herald__notify(c);
}

/*
 * The connection is gone. Requests that were sent cannot be known to have happened
 * (publishes fail as interrupted) or died with the connection (unsubscribes succeed);
 * subscriptions go back to unsent and are restored from their cursors on the next one.
 */
static void after_loss(struct herald_client *c)
{
    herald_error e;
    herald__err(&e, HERALD_E_INTERRUPTED, NULL,
                "the connection was lost before the server answered; the request may or may "
                "not have taken effect");
    /* A publish carries its idempotency key: sent once more on the next connection, the
     * server answers it (with "duplicate" when it already had it) and it exists once. */
    struct herald__req *again = NULL, **again_tail = &again;
    while (c->inflight) {
        struct herald__req *r = c->inflight;
        c->inflight = r->next;
        if (r->kind == HERALD__REQ_UNSUB) {
            herald__complete(c, r, 0, NULL);
        } else if (r->kind == HERALD__REQ_PUB && !r->resent && !r->abandoned && r->frame) {
            r->resent = true;
            r->sent = false;
            r->next = NULL;
            *again_tail = r;
            again_tail = &r->next;
        } else {
            herald__complete(c, r, HERALD_E_INTERRUPTED, &e);
        }
    }
    if (again) {
        *again_tail = c->outq;
        c->outq = again;
    }
    struct herald__req **pp = &c->outq;
    c->outq_tail = NULL;
    while (*pp) {
        struct herald__req *r = *pp;
        if (r->kind == HERALD__REQ_SUBSEND) { /* rebuilt for every subscription on reconnect */
            *pp = r->next;
            free(r);
        } else {
            c->outq_tail = r;
            pp = &r->next;
        }
    }
    herald__subs_disconnected(&c->subs);
}

static void ended(struct herald_client *c, herald_error *why, bool fatal)
{
    lws_sul_cancel(&c->sul_deadline);
    c->wsi = NULL;
    free(c->rx);
    c->rx = NULL;
    c->rx_len = 0;
    c->rx_paused = false;
    c->connected = false;
    if (c->closing) {
        c->cstate = HERALD__C_STOPPED;
        c->stop_thread = true;
        herald__notify(c);
        return;
    }
    if (c->fatal)
        return;
    after_loss(c);
    if (why->status == 0)
        herald__err(why, HERALD_E_CONNECT, NULL, "connection to %s lost",
                    herald__cur_url(c)->host_header);
    /* A first connection that fails is returned, once every server was tried. */
    if (fatal || (!c->ever_connected && !c->opts.retry_first_connect && c->attempts >= c->n_urls)) {
        go_fatal(c, why);
        return;
    }
    schedule_retry(c, why);
}

/* ---- connecting -------------------------------------------------------------------------- */

/*
 * The attempt took too long. lws does not always report the end of a wsi it kills while
 * connecting, so the attempt is ended here and the wsi forgotten at once: callbacks that
 * still come for it no longer match c->wsi and are ignored.
 */
static void on_deadline(lws_sorted_usec_list_t *sul)
{
    struct herald_client *c = lws_container_of(sul, struct herald_client, sul_deadline);
    pthread_mutex_lock(&c->mu);
    if (c->cstate == HERALD__C_CONNECTING || c->cstate == HERALD__C_HANDSHAKE) {
        herald_error why = {0};
        herald__err(&why, HERALD_E_TIMEOUT, NULL, "no answer from %s within %d ms",
                    herald__cur_url(c)->host_header, c->opts.connect_timeout_ms);
        if (c->wsi)
            lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
        ended(c, &why, false);
    }
    pthread_mutex_unlock(&c->mu);
}

static void start_connect(struct herald_client *c)
{
    pthread_mutex_lock(&c->mu);
    if (c->closing || c->fatal) {
        pthread_mutex_unlock(&c->mu);
        return;
    }
    c->cstate = HERALD__C_CONNECTING;
    c->close_code = 0;
    c->close_reason[0] = '\0';
    /* Each new attempt goes to the next server of the list (the same one when there is
     * one); subscriptions resume there from their cursors as they would on the same one. */
    if (c->attempts++)
        c->cur_url = herald__url_next(c->cur_url, c->n_urls);
    const struct herald__url *u = herald__cur_url(c); /* the array never changes */
    pthread_mutex_unlock(&c->mu);

    struct lws_client_connect_info i;
    memset(&i, 0, sizeof(i));
    i.context = c->ctx;
    i.address = u->host;
    i.port = u->port;
    i.path = u->path;
    i.host = u->host_header;
    i.origin = NULL; /* no Origin: not a browser, so not an outside origin */
    i.protocol = "herald.v1";
    i.pwsi = &c->wsi;
    i.retry_and_idle_policy = &c->idle_policy;
    if (u->tls) {
        i.ssl_connection = LCCSCF_USE_SSL;
        if (c->opts.insecure)
            i.ssl_connection |= LCCSCF_ALLOW_SELFSIGNED | LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK |
                                LCCSCF_ALLOW_EXPIRED | LCCSCF_ALLOW_INSECURE;
    }
    lws_sul_schedule(c->ctx, 0, &c->sul_deadline, on_deadline,
                     (lws_usec_t)c->opts.connect_timeout_ms * LWS_US_PER_MS);
    struct lws *w = lws_client_connect_via_info(&i);
    if (!w) {
        pthread_mutex_lock(&c->mu);
        if (c->cstate == HERALD__C_CONNECTING) { /* no error callback reported it */
            herald_error why = {0};
            herald__err(&why, HERALD_E_CONNECT, NULL, "cannot connect to %s",
                        herald__cur_url(c)->host_header);
            ended(c, &why, false);
        }
        pthread_mutex_unlock(&c->mu);
    }
}

static void on_retry(lws_sorted_usec_list_t *sul)
{
    start_connect(lws_container_of(sul, struct herald_client, sul_retry));
}

static void on_close_grace(lws_sorted_usec_list_t *sul)
{
    struct herald_client *c = lws_container_of(sul, struct herald_client, sul_close);
    pthread_mutex_lock(&c->mu);
    c->stop_thread = true;
    pthread_mutex_unlock(&c->mu);
}

/* ---- frames from the server (mu held) ------------------------------------------------------ */

static struct herald__req *take_inflight(struct herald_client *c, int64_t id)
{
    for (struct herald__req **pp = &c->inflight; *pp; pp = &(*pp)->next) {
        if ((*pp)->wire_id == id) {
            struct herald__req *r = *pp;
            *pp = r->next;
            return r;
        }
    }
    return NULL;
}

static int welcome(struct herald_client *c, const struct herald__frame *f, herald_error *why)
{
    lws_sul_cancel(&c->sul_deadline);
    c->cstate = HERALD__C_OPEN;
    c->connected = true;
    c->ever_connected = true;
    c->open_since_us = (uint64_t)lws_now_usecs();
    c->max_event_bytes = f->max_event_bytes;
    /* Every subscription goes first, in the application's order, before queued requests. */
    struct herald__req *head = NULL, *last = NULL;
    for (struct herald__sub *s = c->subs.head; s; s = s->next) {
        struct herald__req *m = calloc(1, sizeof(*m));
        if (!m) {
            while (head) {
                m = head;
                head = m->next;
                free(m);
            }
            return herald__err(why, HERALD_E_NOMEM, NULL,
                               "out of memory restoring "
                               "subscriptions");
        }
        m->kind = HERALD__REQ_SUBSEND;
        memcpy(m->pattern, s->pattern, sizeof(m->pattern));
        if (last)
            last->next = m;
        else
            head = m;
        last = m;
    }
    if (head) {
        last->next = c->outq;
        if (!c->outq)
            c->outq_tail = last;
        c->outq = head;
    }
    herald_error hello;
    herald__err(&hello, 0, NULL, "connected to %s", herald__cur_url(c)->host_header);
    struct herald__evitem *it = herald__event_new(HERALD_EV_CONNECTED, NULL, &hello, 0);
    if (it)
        herald__push_event(c, it);
    if (c->outq)
        lws_callback_on_writable(c->wsi);
    herald__notify(c);
    return 0;
}

static void sub_gap_event(struct herald_client *c, const struct herald__sub *s, bool blind)
{
    herald_error e;
    if (blind)
        herald__err(&e, 0, NULL,
                    "\"%s\" was resumed without a position (nothing had arrived "
                    "on it): events published while disconnected may have been missed",
                    s->pattern);
    else
        herald__err(&e, 0, NULL,
                    "the server no longer has events after \"%s\" for \"%s\": "
                    "events may have been missed",
                    s->sent_since, s->pattern);
    struct herald__evitem *it = herald__event_new(HERALD_EV_GAP, s->pattern, &e, 0);
    if (it)
        herald__push_event(c, it);
}

static void subscribe_ok(struct herald_client *c, const struct herald__frame *f)
{
    struct herald__sub *s = f->has_id ? herald__subs_find_wire(&c->subs, f->id) : NULL;
    herald__subs_on_ok(&c->subs, s, f->replayed, f->gap, f->next);
    if (!s)
        return; /* unsubscribed meanwhile; its replay is still counted */
    if (f->gap || s->blind)
        sub_gap_event(c, s, !f->gap);
    while (s->waiters) {
        struct herald__req *r = s->waiters;
        s->waiters = r->next;
        r->replayed = f->replayed;
        r->gap = f->gap;
        herald__complete(c, r, 0, NULL);
    }
}

static void server_error(struct herald_client *c, const struct herald__frame *f)
{
    herald_error e;
    herald__err(&e, HERALD_E_SERVER, f->code, "%s: %s", f->code, f->message);
    struct herald__sub *s = f->has_id ? herald__subs_find_wire(&c->subs, f->id) : NULL;
    if (s) {
        /* A refused subscription is dropped, not retried: the same request would be refused
         * again. When nobody waits for the answer (a resume), the stream says so. */
        bool told = s->waiters != NULL;
        while (s->waiters) {
            struct herald__req *r = s->waiters;
            s->waiters = r->next;
            herald__complete(c, r, HERALD_E_SERVER, &e);
        }
        if (!told || s->was_live) {
            struct herald__evitem *it = herald__event_new(HERALD_EV_ERROR, s->pattern, &e, 0);
            if (it)
                herald__push_event(c, it);
        }
        herald__subs_remove(&c->subs, s);
        return;
    }
    struct herald__req *r = f->has_id ? take_inflight(c, f->id) : NULL;
    if (r) {
        herald__complete(c, r, HERALD_E_SERVER, &e);
        return;
    }
    struct herald__evitem *it = herald__event_new(HERALD_EV_ERROR, NULL, &e, 0);
    if (it)
        herald__push_event(c, it);
}

static int event_frame(struct herald_client *c, const char *text, size_t len,
                       const struct herald__frame *f, herald_error *why)
{
    size_t tl = strlen(f->topic), il = strlen(f->ev_id), kl = strlen(f->kind);
    struct herald__evitem *it =
        herald__event_new(HERALD_EV_EVENT, NULL, NULL, tl + il + kl + f->data_len + len + 5);
    if (!it) {
        /* Dropping the event silently would break the promise: drop the connection instead
         * (before the cursors moved) so the subscription resumes before this event. */
        return herald__err(why, HERALD_E_NOMEM, NULL, "out of memory receiving an event");
    }
    if (!herald__subs_on_event(&c->subs, f->topic, f->ev_id, &it->mark)) {
        herald_event_free(&it->ev); /* delivered before, through an overlapping pattern */
        return 0;
    }
    char *p = it->buf;
    memcpy(p, f->topic, tl + 1);
    it->ev.topic = p;
    p += tl + 1;
    memcpy(p, f->ev_id, il + 1);
    it->ev.id = p;
    p += il + 1;
    memcpy(p, f->kind, kl + 1);
    it->ev.kind = p;
    p += kl + 1;
    if (f->data_len)
        memcpy(p, text + f->data_off, f->data_len);
    else
        memcpy(p, "null", 4);
    size_t dl = f->data_len ? f->data_len : 4;
    p[dl] = '\0';
    it->ev.data = p;
    it->ev.data_len = dl;
    p += dl + 1;
    memcpy(p, text, len);
    p[len] = '\0';
    it->ev.json = p;
    it->ev.json_len = len;
    it->ev.time_ms = f->time_ms;
    it->has_mark = true;
    herald__push_event(c, it);
    return 0;
}

/* Returns 0, or -1 to drop the connection (reason in *why). */
static int handle_text(struct herald_client *c, const char *text, size_t len, herald_error *why)
{
    struct herald__frame f;
    if (herald__frame_parse(text, len, &f, why) < 0)
        return -1;
    if (c->cstate == HERALD__C_HANDSHAKE) {
        if (f.type != HERALD__F_WELCOME) {
            herald__frame_clear(&f);
            herald__err(why, HERALD_E_PROTOCOL, NULL, "the server did not send a welcome");
            return -1;
        }
        int w = welcome(c, &f, why);
        herald__frame_clear(&f);
        return w;
    }
    struct herald__req *r;
    int ret = 0;
    switch (f.type) {
    case HERALD__F_OK:
        if (f.is_subscribe_ok) {
            subscribe_ok(c, &f);
        } else if (f.has_id && (r = take_inflight(c, f.id)) != NULL) {
            if (f.event_id)
                snprintf(r->event_id, sizeof(r->event_id), "%s", f.event_id);
            r->receivers = f.receivers;
            r->duplicate = f.duplicate;
            herald__complete(c, r, 0, NULL);
        }
        break;
    case HERALD__F_PONG:
        if (f.has_id && (r = take_inflight(c, f.id)) != NULL)
            herald__complete(c, r, 0, NULL);
        break;
    case HERALD__F_ERROR:
        server_error(c, &f);
        break;
    case HERALD__F_EVENT:
        ret = event_frame(c, text, len, &f, why);
        break;
    case HERALD__F_WELCOME:
    case HERALD__F_OTHER:
        break;
    }
    herald__frame_clear(&f);
    if (ret)
        return ret;
    if (herald__evq_full(c) && !c->rx_paused && c->wsi) {
        /* Backpressure instead of unbounded memory: the server keeps the events (and
         * closes us as a slow consumer if this lasts; we then resume from the cursor). */
        c->rx_paused = true;
        lws_rx_flow_control(c->wsi, 0);
    }
    return 0;
}

static int receive(struct herald_client *c, struct lws *wsi, const char *in, size_t len,
                   herald_error *why)
{
    if (lws_frame_is_binary(wsi)) {
        herald__err(why, HERALD_E_PROTOCOL, NULL, "the server sent a binary frame");
        return -1;
    }
    bool first = lws_is_first_fragment(wsi), final = lws_is_final_fragment(wsi);
    size_t remaining = lws_remaining_packet_payload(wsi);
    size_t cap = c->max_event_bytes + FRAME_SLACK;
    if (first)
        c->rx_len = 0;
    if (first && final && !remaining)
        return handle_text(c, in, len, why);
    if (c->rx_len + len + remaining > cap) {
        herald__err(why, HERALD_E_PROTOCOL, NULL, "the server sent a frame over %zu bytes", cap);
        return -1;
    }
    unsigned char *n = realloc(c->rx, c->rx_len + len + 1);
    if (!n) {
        herald__err(why, HERALD_E_NOMEM, NULL, "out of memory reading a frame");
        return -1;
    }
    c->rx = n;
    memcpy(c->rx + c->rx_len, in, len);
    c->rx_len += len;
    if (!final || remaining)
        return 0;
    size_t total = c->rx_len;
    c->rx_len = 0;
    return handle_text(c, (const char *)c->rx, total, why);
}

/* ---- writing (mu held) --------------------------------------------------------------------- */

static struct herald__req *pop_outq(struct herald_client *c)
{
    struct herald__req *r = c->outq;
    if (r) {
        c->outq = r->next;
        if (!c->outq)
            c->outq_tail = NULL;
        r->next = NULL;
    }
    return r;
}

static void push_inflight(struct herald_client *c, struct herald__req *r)
{
    /* Appended: replies come in order, so the one wanted is nearly always the first. */
    struct herald__req **pp = &c->inflight;
    while (*pp)
        pp = &(*pp)->next;
    *pp = r;
}

static int writable(struct herald_client *c, struct lws *wsi, herald_error *why)
{
    if (c->closing) {
        lws_close_reason(wsi, LWS_CLOSE_STATUS_NORMAL, (unsigned char *)"client closed", 13);
        return -1;
    }
    if (c->cstate != HERALD__C_OPEN)
        return 0;
    struct herald__req *r;
    while ((r = pop_outq(c)) != NULL) {
        if (r->kind == HERALD__REQ_SUBSEND) {
            struct herald__sub *s = herald__subs_find(&c->subs, r->pattern);
            free(r);
            if (!s || s->state != HERALD__SUB_UNSENT)
                continue; /* gone, or already sent by an earlier marker */
            char since[HERALD_ID_SIZE];
            int64_t id = ++c->next_wire_id;
            herald__sub_sent(s, id, since);
            size_t len = 0;
            unsigned char *buf = herald__encode_subscribe(LWS_PRE, id, s->pattern, since, &len);
            if (!buf) {
                herald__err(why, HERALD_E_NOMEM, NULL, "out of memory encoding a subscribe");
                return -1;
            }
            int n = lws_write(wsi, buf + LWS_PRE, len, LWS_WRITE_TEXT);
            free(buf);
            if (n < (int)len) {
                herald__err(why, HERALD_E_CONNECT, NULL, "write to the server failed");
                return -1;
            }
            break;
        }
        /* Written from a scratch copy: lws masks the payload in place, and a publish keeps
         * its frame until answered, to be sent again after a lost connection. */
        if (c->wbuf_cap < LWS_PRE + r->frame_len) {
            unsigned char *nb = realloc(c->wbuf, LWS_PRE + r->frame_len);
            if (!nb) {
                r->next = c->outq;
                c->outq = r;
                if (!c->outq_tail)
                    c->outq_tail = r;
                herald__err(why, HERALD_E_NOMEM, NULL, "out of memory writing a request");
                return -1;
            }
            c->wbuf = nb;
            c->wbuf_cap = LWS_PRE + r->frame_len;
        }
        memcpy(c->wbuf + LWS_PRE, r->frame + LWS_PRE, r->frame_len);
        int n = lws_write(wsi, c->wbuf + LWS_PRE, r->frame_len, LWS_WRITE_TEXT);
        if (n < (int)r->frame_len) {
            r->next = c->outq; /* not sent: it goes out on the next connection */
            c->outq = r;
            if (!c->outq_tail)
                c->outq_tail = r;
            herald__err(why, HERALD_E_CONNECT, NULL, "write to the server failed");
            return -1;
        }
        r->sent = true;
        if (r->kind != HERALD__REQ_PUB) {
            free(r->frame);
            r->frame = NULL;
        }
        push_inflight(c, r);
        break;
    }
    if (c->outq)
        lws_callback_on_writable(wsi);
    return 0;
}

/* ---- the lws callback ------------------------------------------------------------------- */

static int close_status(struct herald_client *c)
{
    return c->close_code == 1008 ? HERALD_E_AUTH : HERALD_E_CONNECT;
}

static void closed_why(struct herald_client *c, herald_error *why)
{
    if (why->status)
        return;
    if (c->close_code > 0)
        herald__err(why, close_status(c), c->close_code == 1008 ? "unauthorized" : NULL,
                    "the server closed the connection (%d%s%s)", c->close_code,
                    c->close_reason[0] ? ": " : "", c->close_reason);
}

static void connection_error(struct herald_client *c, const char *in)
{
    herald_error why = {0};
    char msg[160];
    herald__sanitize(msg, sizeof(msg), in ? in : "", in ? strlen(in) : 0);
    unsigned status = c->wsi ? lws_http_client_http_response(c->wsi) : 0;
    bool fatal = false;
    if (status == 401 || status == 403) {
        herald__err(&why, HERALD_E_AUTH, status == 401 ? "unauthorized" : "forbidden",
                    "%s refused the connection with HTTP %u: %s", herald__cur_url(c)->host_header,
                    status, status == 401 ? "missing or invalid credentials" : "not allowed");
        fatal = true; /* retrying the same credentials cannot help */
    } else if (status) {
        herald__err(&why, HERALD_E_CONNECT, NULL,
                    "%s refused the WebSocket upgrade with HTTP "
                    "%u",
                    herald__cur_url(c)->host_header, status);
    } else {
        herald__err(&why, HERALD_E_CONNECT, NULL, "cannot connect to %s: %s",
                    herald__cur_url(c)->host_header, msg[0] ? msg : "connection failed");
    }
    ended(c, &why, fatal);
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                    size_t len)
{
    struct herald_client *c = client_of(wsi);
    herald_error why = {0};
    int r = 0;
    (void)user;
    if (!c)
        return 0;
    switch (reason) {
    case LWS_CALLBACK_CLIENT_APPEND_HANDSHAKE_HEADER: {
        if (!c->opts.token)
            return 0;
        unsigned char **p = in, *end = *p + len;
        char hdr[8 + 4096 + 1];
        int n = snprintf(hdr, sizeof(hdr), "Bearer %s", c->opts.token);
        if (n < 0 || (size_t)n >= sizeof(hdr) ||
            lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_AUTHORIZATION, (unsigned char *)hdr, n,
                                         p, end))
            return -1;
        return 0;
    }
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
        pthread_mutex_lock(&c->mu);
        if (wsi == c->wsi || (c->cstate == HERALD__C_CONNECTING && !c->wsi))
            connection_error(c, in);
        pthread_mutex_unlock(&c->mu);
        return 0;
    case LWS_CALLBACK_CLIENT_ESTABLISHED:
        pthread_mutex_lock(&c->mu);
        if (wsi == c->wsi)
            c->cstate = HERALD__C_HANDSHAKE;
        if (c->closing)
            lws_callback_on_writable(wsi);
        pthread_mutex_unlock(&c->mu);
        return 0;
    case LWS_CALLBACK_CLIENT_RECEIVE:
        pthread_mutex_lock(&c->mu);
        if (wsi == c->wsi && !c->closing)
            r = receive(c, wsi, in, len, &why);
        if (r)
            c->drop_why = why;
        pthread_mutex_unlock(&c->mu);
        return r;
    case LWS_CALLBACK_CLIENT_WRITEABLE:
        pthread_mutex_lock(&c->mu);
        if (wsi == c->wsi)
            r = writable(c, wsi, &why);
        if (r && !c->closing)
            c->drop_why = why;
        pthread_mutex_unlock(&c->mu);
        return r;
    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
        pthread_mutex_lock(&c->mu);
        if (wsi == c->wsi && len >= 2) {
            const unsigned char *p = in;
            c->close_code = p[0] << 8 | p[1];
            herald__sanitize(c->close_reason, sizeof(c->close_reason), (const char *)p + 2,
                             len - 2);
        }
        pthread_mutex_unlock(&c->mu);
        return 0;
    case LWS_CALLBACK_CLIENT_CLOSED:
    /* WSI_DESTROY is the safety net: a wsi that goes away without a close or error callback
     * still ends its attempt, so c->wsi never points to freed memory. */
    case LWS_CALLBACK_WSI_DESTROY:
        pthread_mutex_lock(&c->mu);
        if (wsi == c->wsi) {
            why = c->drop_why;
            c->drop_why = (herald_error){0};
            closed_why(c, &why);
            /* 1008: authentication failed or the token expired; the same token would fail
             * again, so the application has to act. Other closes are retried. */
            ended(c, &why, c->close_code == 1008);
        }
        pthread_mutex_unlock(&c->mu);
        return 0;
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
        pthread_mutex_lock(&c->mu);
        if (c->closing && !c->stop_thread) {
            if (c->wsi && (c->cstate == HERALD__C_OPEN || c->cstate == HERALD__C_HANDSHAKE)) {
                /* Say goodbye (1000) from the writable callback; give up after a grace. */
                lws_callback_on_writable(c->wsi);
                lws_sul_schedule(c->ctx, 0, &c->sul_close, on_close_grace, CLOSE_GRACE_US);
            } else {
                /* Nothing to say goodbye on: destroying the context closes any attempt. */
                c->wsi = NULL;
                c->stop_thread = true;
            }
        } else if (c->wsi && c->cstate == HERALD__C_OPEN) {
            if (c->outq)
                lws_callback_on_writable(c->wsi);
            if (c->rx_paused && !herald__evq_full(c)) {
                c->rx_paused = false;
                lws_rx_flow_control(c->wsi, 1);
            }
        }
        pthread_mutex_unlock(&c->mu);
        return 0;
    default:
        return 0;
    }
}

static void start_first(lws_sorted_usec_list_t *sul)
{
    start_connect(lws_container_of(sul, struct herald_client, sul_retry));
}

void *herald__thread_main(void *arg)
{
    struct herald_client *c = arg;
    pthread_mutex_lock(&c->mu);
    lws_sul_schedule(c->ctx, 0, &c->sul_retry, start_first, 1);
    pthread_mutex_unlock(&c->mu);
    for (;;) {
        pthread_mutex_lock(&c->mu);
        bool stop = c->stop_thread;
        pthread_mutex_unlock(&c->mu);
        if (stop)
            break;
        if (lws_service(c->ctx, 0) < 0) {
            pthread_mutex_lock(&c->mu);
            if (!c->closing && !c->fatal) {
                herald_error e;
                herald__err(&e, HERALD_E_CONNECT, NULL, "the network event loop failed");
                go_fatal(c, &e);
            }
            pthread_mutex_unlock(&c->mu);
            break;
        }
    }
    pthread_mutex_lock(&c->mu);
    lws_sul_cancel(&c->sul_retry);
    lws_sul_cancel(&c->sul_deadline);
    lws_sul_cancel(&c->sul_close);
    c->stop_thread = true;
    herald__notify(c);
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

int herald__ctx_create(struct herald_client *c, herald_error *err)
{
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof(info));
    c->protocols[0] = (struct lws_protocols){
        .name = "herald.v1", .callback = callback, .per_session_data_size = 0, .rx_buffer_size = 0};
    memset(&c->protocols[1], 0, sizeof(c->protocols[1]));
    info.port = CONTEXT_PORT_NO_LISTEN;
    info.protocols = c->protocols;
    info.user = c;
    info.gid = (gid_t)-1;
    info.uid = (uid_t)-1;
    info.timeout_secs = (unsigned)(c->opts.connect_timeout_ms + 999) / 1000;
    bool tls = false;
    for (size_t k = 0; k < c->n_urls; k++)
        tls = tls || c->urls[k].tls;
    if (tls) {
        info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
        info.client_ssl_ca_filepath = c->opts.ca_file;
    }
    /* The server pings every heartbeat; ours only matter when it stops talking altogether. */
    c->idle_policy = (lws_retry_bo_t){.secs_since_valid_ping = 30, .secs_since_valid_hangup = 75};
    herald__lws_global_lock();
    herald__lws_quiet(&c->opts);
    c->ctx = lws_create_context(&info);
    herald__lws_global_unlock();
    if (!c->ctx)
        return herald__err(err, HERALD_E_CONNECT, NULL, "cannot set up libwebsockets%s",
                           tls ? " with TLS" : "");
    return 0;
}
