/* SPDX-License-Identifier: MIT */
/*
 * SSE streams and long polls: the HTTP requests held open. Each attaches a struct hd_conn like
 * a WebSocket (the broker queues what it says), is watched for a peer that leaves or sends
 * more (lws 4.1 reads neither while a request is held), and keeps a half-second timer for SSE
 * keepalives and long-poll deadlines. Routing, the headers copied from the request and the
 * plain answer are server_http.c's.
 */
#include "server_http_int.h"

#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>

#include "api.h"

/* SSE keepalive comment period (the protocol promises one at least every 30 s). */
#define SSE_KEEPALIVE_TICKS 15
/* Timer resolution for keepalives and long-poll deadlines. */
#define STREAM_TICK_US (LWS_US_PER_SEC / 2)

static void stream_unwatch(struct hd_server *s, struct http_pss *pss)
{
    if (pss->watched) {
        epoll_ctl(s->epfd, EPOLL_CTL_DEL, lws_get_socket_fd(pss->wsi), NULL);
        pss->watched = false;
    }
}

static void stream_watch(struct hd_server *s, struct http_pss *pss)
{
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = pss};
    if (s->epfd >= 0 && epoll_ctl(s->epfd, EPOLL_CTL_ADD, lws_get_socket_fd(pss->wsi), &ev) == 0)
        pss->watched = true;
}

/* A held-open request's peer left or sent more than its one request: close it now. */
void srv_stream_on_ep_ready(uv_poll_t *h, int status, int events)
{
    struct hd_server *s = h->data;
    struct epoll_event evs[64];
    int n = epoll_wait(s->epfd, evs, 64, 0);
    for (int i = 0; i < n; i++) {
        struct http_pss *pss = evs[i].data.ptr;
        stream_unwatch(s, pss);
        lws_set_timeout(pss->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
    }
    if (n > 0)
        lws_cancel_service(s->ctx); /* we run outside lws service: have it act now */
}

void srv_stream_end(struct hd_server *s, struct http_pss *pss)
{
    stream_unwatch(s, pss);
    lws_sul_cancel(&pss->sul);
    if (pss->conn.broker)
        hd_conn_detach(&pss->conn);
    pss->mode = H_PLAIN;
}

static void stream_want_write(struct hd_conn *c)
{
    struct http_pss *pss = container_of(c, struct http_pss, conn);
    if (pss->mode == H_POLL)
        pss->poll_ready = true;
    lws_callback_on_writable(pss->wsi);
}

static void stream_close(struct hd_conn *c, int code, const char *reason)
{
    (void)code;
    (void)reason;
    struct http_pss *pss = container_of(c, struct http_pss, conn);
    if (pss->mode == H_POLL)
        pss->poll_ready = true; /* a drain answers waiting polls at once */
    else
        pss->stream_closing = true;
    lws_callback_on_writable(pss->wsi);
}

static const struct hd_conn_ops stream_ops = {.want_write = stream_want_write,
                                              .close = stream_close};

static void sul_stream_tick(lws_sorted_usec_list_t *sul)
{
    struct http_pss *pss = container_of(sul, struct http_pss, sul);
    pss->ticks++;
    if (pss->mode == H_POLL) {
        if (pss->ticks >= pss->deadline_ticks) {
            pss->poll_ready = true;
            lws_callback_on_writable(pss->wsi);
            return;
        }
    } else {
        if (pss->ticks % (SSE_KEEPALIVE_TICKS * 2) == 0) {
            pss->keepalive_due = true;
            lws_callback_on_writable(pss->wsi);
        }
    }
    lws_sul_schedule(lws_get_context(pss->wsi), 0, &pss->sul, sul_stream_tick, STREAM_TICK_US);
}

/* Writes response headers with CORS; for SSE no Content-Length. Returns 0 or -1. */
static int write_headers(struct hd_server *s, struct http_pss *pss, int status, const char *ctype,
                         lws_filepos_t clen)
{
    unsigned char buf[LWS_PRE + 2048];
    unsigned char *start = buf + LWS_PRE, *p = start, *end = buf + sizeof(buf) - 1;
    struct hd_http_resp *r = &pss->resp;
    if (lws_add_http_common_headers(pss->wsi, (unsigned int)status, ctype, clen, &p, end))
        return -1;
    for (size_t i = 0; i < r->n_headers; i++)
        if (lws_add_http_header_by_name(pss->wsi, (const unsigned char *)r->headers[i].name,
                                        (const unsigned char *)r->headers[i].value,
                                        (int)strlen(r->headers[i].value), &p, end))
            return -1;
    const char *cc = pss->mode == H_SSE ? "no-cache" : "no-store";
    if (lws_add_http_header_by_name(pss->wsi, (const unsigned char *)"cache-control:",
                                    (const unsigned char *)cc, (int)strlen(cc), &p, end))
        return -1;
    (void)s;
    return lws_finalize_write_http_header(pss->wsi, start, &p, end) ? -1 : 0;
}

/* Gives a streaming request the identity the route authenticated (for rights, expiry and
 * reload) and attaches it. */
static int stream_attach(struct hd_server *s, struct http_pss *pss, enum hd_conn_kind kind)
{
    hd_api_take_identity(&pss->resp, &pss->conn.identity, &pss->conn.credential);
    if (hd_conn_attach(s->broker, &pss->conn, kind, &stream_ops)) {
        hd_identity_clear(&pss->conn.identity);
        free(pss->conn.credential);
        pss->conn.credential = NULL;
        return -1;
    }
    return 0;
}

int srv_sse_start(struct hd_server *s, struct http_pss *pss)
{
    struct hd_http_stream st = *pss->resp.stream;
    hd_api_cors(s->broker, &pss->req, &pss->resp);
    hd_http_resp_header(&pss->resp, "x-accel-buffering:", "no");
    pss->mode = H_SSE;
    if (stream_attach(s, pss, HD_CONN_SSE))
        return -1;
    if (write_headers(s, pss, 200, "text/event-stream", LWS_ILLEGAL_HTTP_CONTENT_LEN))
        return -1;
    lws_http_mark_sse(pss->wsi);
    lws_set_timeout(pss->wsi, NO_PENDING_TIMEOUT, 0);
    stream_watch(s, pss);
    bool gap = false;
    struct hd_error err;
    /* The broker queues the replay, after a gap notice when there is one. */
    if (hd_conn_subscribe(&pss->conn, st.pattern, st.has_since ? st.since : NULL, &gap, &err))
        return -1;
    hd_http_resp_clear(&pss->resp);
    lws_sul_schedule(lws_get_context(pss->wsi), 0, &pss->sul, sul_stream_tick, STREAM_TICK_US);
    lws_callback_on_writable(pss->wsi);
    return 0;
}

int srv_poll_start(struct hd_server *s, struct http_pss *pss)
{
    pss->mode = H_POLL;
    if (stream_attach(s, pss, HD_CONN_POLL))
        return -1;
    bool gap;
    struct hd_error err;
    if (hd_conn_subscribe(&pss->conn, pss->resp.stream->pattern, NULL, &gap, &err))
        return -1;
    /* lws gives a request 5 s for its content; a long poll keeps its own deadline. */
    lws_set_timeout(pss->wsi, NO_PENDING_TIMEOUT, 0);
    stream_watch(s, pss);
    pss->deadline_ticks = pss->resp.stream->wait_s * 2;
    lws_sul_schedule(lws_get_context(pss->wsi), 0, &pss->sul, sul_stream_tick, STREAM_TICK_US);
    return 0;
}

int srv_sse_writable(struct http_pss *pss, struct lws *wsi)
{
    hd_conn_writable(&pss->conn);
    struct hd_msg *m = hd_conn_peek(&pss->conn);
    /* A stream the broker ended still sends what it queued first (the notice saying why). */
    if (pss->stream_closing && !m)
        return -1;
    if (m) {
        size_t len = m->len;
        const char *data = m->seq ? hd_msg_sse(m, &len) : (const char *)hd_msg_payload(m);
        if (!data || lws_write(wsi, (unsigned char *)data, len, LWS_WRITE_HTTP) < (int)len)
            return -1;
        hd_conn_wrote(&pss->conn);
        if (hd_conn_peek(&pss->conn) || pss->keepalive_due || pss->stream_closing) {
            pss->conn.want_pending = true;
            lws_callback_on_writable(wsi);
        }
        return 0;
    }
    if (pss->keepalive_due) {
        unsigned char buf[LWS_PRE + 16];
        memcpy(buf + LWS_PRE, ": keepalive\n\n", 13);
        pss->keepalive_due = false;
        if (lws_write(wsi, buf + LWS_PRE, 13, LWS_WRITE_HTTP) < 13)
            return -1;
    }
    return 0;
}

bool srv_poll_answer(struct hd_server *s, struct http_pss *pss)
{
    if (!pss->poll_ready)
        return false;
    struct hd_http_stream st = *pss->resp.stream;
    enum hd_err ended = pss->conn.ended;
    srv_stream_end(s, pss);
    if (ended)
        hd_api_error(&pss->resp, ended, "the server's rules no longer allow reading this pattern");
    else
        hd_api_poll_answer(s->broker, &st, &pss->resp);
    hd_api_cors(s->broker, &pss->req, &pss->resp);
    pss->response_ready = true;
    return true;
}
