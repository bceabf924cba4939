/* SPDX-License-Identifier: MIT */
/*
 * libwebsockets adapter. WebSocket connections embed a struct hd_conn; the broker queues
 * shared messages to it and this file writes them one frame per writable callback into the
 * headroom the message reserved. HTTP requests are copied into a struct hd_http_req, routed
 * by api.c, and the response written back. lws runs on a foreign libuv loop (epoll), so lws
 * installs no signal handlers of its own.
 */
#include "server.h"

#include <errno.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stddef.h>
#include <stdint.h>
#include <inttypes.h>
#include <libwebsockets.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "log.h"
#include "peers.h"
#include "tls.h"
#include "topic.h"

_Static_assert(HD_MSG_HEADROOM >= LWS_PRE, "message headroom must fit an lws frame header");

#define HDR_SMALL 256
#define HD_MAX_LISTENERS 64 /* the config allows at most 64 */

/* Membership in one of the server's end-of-turn lists; all zero when in none. */
struct turn_link {
    struct turn_link *prev, *next;
};

struct hd_server {
    struct lws_context *ctx;
    struct hd_broker *broker;
    const struct hd_config *cfg;
    uv_loop_t *loop;
    lws_retry_bo_t retry;
    struct lws_protocol_vhost_options pvo_default, pvo;
    /* Held-open requests (SSE, waiting long polls) are watched here for a peer that
     * leaves or sends more: lws 4.1 reads neither in that state and would spin. */
    int epfd;
    uv_poll_t ep_watch;
    bool ep_started;
    char names[HD_MAX_LISTENERS][32];
    struct lws_vhost *vhosts[HD_MAX_LISTENERS];
    void *ssl_ctx[HD_MAX_LISTENERS]; /* each TLS vhost's SSL_CTX, for certificate reloads */
    size_t creating;                 /* the listener whose vhost lws is creating */
    /* Counted at accept, handed to the wsi lws creates for it right after. */
    struct hd_peer *pending_peer;
    uint64_t refused_logged_s, refused_unlogged;
    bool failed; /* a listener could not be bound: tear down and exit */
    /* Work done at the end of each loop turn, after libuv ran every ready socket: queued
     * WebSocket frames written straight away and request bodies acted on, instead of
     * asking lws for a writable callback (two epoll_ctl calls and a loop turn each). */
    uv_check_t turn_end;
    uv_idle_t turn_idle;   /* running while work is listed: the loop must not block */
    uv_timer_t hold_timer; /* wakes the loop to look at held publishers again */
    bool turn_started;
    /* List heads: connections with frames to write, requests whose body is to be acted on
     * (or held: see hd_broker_publish_held), WebSocket readers paused for backpressure. */
    struct turn_link ws_dirty, http_ready, ws_paused;
};

/* Nothing to do: an active idle handle only makes the loop poll without blocking. */
static void turn_idle_cb(uv_idle_t *h)
{
    (void)h;
}

static void turn_link_add(struct turn_link *head, struct turn_link *l)
{
    if (l->next)
        return;
    l->prev = head->prev;
    l->next = head;
    head->prev->next = l;
    head->prev = l;
}

/* Lists work for the end of this turn, which the loop then reaches without blocking. */
static void turn_add(struct hd_server *s, struct turn_link *head, struct turn_link *l)
{
    turn_link_add(head, l);
    if (s->turn_started)
        uv_idle_start(&s->turn_idle, turn_idle_cb);
}

static bool turn_empty(const struct turn_link *head)
{
    return head->next == head;
}

static void turn_del(struct turn_link *l)
{
    if (!l->next)
        return;
    l->prev->next = l->next;
    l->next->prev = l->prev;
    l->prev = l->next = NULL;
}

static struct turn_link *turn_pop(struct turn_link *head)
{
    struct turn_link *l = head->next;
    if (l == head)
        return NULL;
    turn_del(l);
    return l;
}

bool hd_server_failed(const struct hd_server *s)
{
    return !s || s->failed;
}

/* --- WebSocket --------------------------------------------------------------------- */

struct ws_pss {
    struct hd_conn conn; /* first: the broker hands it back to us */
    struct lws *wsi;
    struct turn_link dirty;  /* in the server's ws_dirty list: frames to write this turn */
    struct turn_link paused; /* in ws_paused: not read while publishers are held */
    uint64_t paused_ns;
    char *rx; /* reassembly buffer, only while a message spans several callbacks */
    size_t rx_len;
    int close_code;
    const char *close_reason; /* a string literal (the broker's close contract) */
    bool in_callback;         /* close requested from inside this wsi's own callback */
    bool rx_discard;
    bool authed; /* identity filled at the upgrade */
    bool ping_due;
};

static void ws_want_write(struct hd_conn *c)
{
    struct ws_pss *pss = (struct ws_pss *)c;
    struct hd_server *s = lws_context_user(lws_get_context(pss->wsi));
    turn_add(s, &s->ws_dirty, &pss->dirty);
}

/*
 * Sends the close frame the broker asked for; the caller returns -1 from its callback.
 * From a receive callback lws_close_reason() is enough, but lws 4.1.6 drops the frame when
 * the close comes from a writable callback, so there we write it ourselves (opcode 8,
 * LWS_WRITE_CLOSE, which lws keeps out of its public enum).
 */
static int ws_finish_close(struct ws_pss *pss, bool writable)
{
    /* A close frame's payload is at most 125 bytes: the code and up to 123 of reason. */
    size_t rlen = pss->close_reason ? strnlen(pss->close_reason, 120) : 0;
    if (!writable) {
        lws_close_reason(pss->wsi, (enum lws_close_status)pss->close_code,
                         (unsigned char *)pss->close_reason, rlen);
        return -1;
    }
    unsigned char buf[LWS_PRE + 2 + 120];
    unsigned char *p = buf + LWS_PRE;
    p[0] = (unsigned char)(pss->close_code >> 8);
    p[1] = (unsigned char)pss->close_code;
    memcpy(p + 2, pss->close_reason, rlen);
    lws_write(pss->wsi, p, 2 + rlen, (enum lws_write_protocol)4 /* LWS_WRITE_CLOSE */);
    return -1;
}

static void ws_ping(struct hd_conn *c)
{
    struct ws_pss *pss = (struct ws_pss *)c;
    pss->ping_due = true;
    lws_callback_on_writable(pss->wsi);
}

static void ws_close(struct hd_conn *c, int code, const char *reason)
{
    struct ws_pss *pss = (struct ws_pss *)c;
    if (!code) { /* an unresponsive peer: no close handshake to wait for */
        lws_set_timeout(pss->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
        /* Called from our timer, outside lws service: make lws look at its timers now. */
        lws_cancel_service(lws_get_context(pss->wsi));
        return;
    }
    pss->close_code = code;
    pss->close_reason = reason;
    if (pss->in_callback)
        return; /* the callback's tail sees close_code */
    /* Replies already queued go out first, then the close frame; a peer that stops reading
     * is cut off after a short grace instead of holding the connection (and a drain) open. */
    lws_callback_on_writable(pss->wsi);
    lws_set_timeout(pss->wsi, PENDING_TIMEOUT_LAGGING, code == HD_CLOSE_SLOW_CONSUMER ? 2 : 4);
    lws_cancel_service(lws_get_context(pss->wsi));
}

static const struct hd_conn_ops ws_ops = {
    .want_write = ws_want_write, .close = ws_close, .ping = ws_ping};

static bool copy_header(struct lws *wsi, enum lws_token_indexes t, char *out, int cap)
{
    int n = lws_hdr_total_length(wsi, t);
    if (n <= 0 || n >= cap)
        return false;
    return lws_hdr_copy(wsi, out, cap, t) >= 0;
}

/*
 * Refuses a WebSocket upgrade with the documented JSON error body. lws_return_http_status()
 * would answer HTTP/1.0 with an HTML page, which WebSocket clients reject unread. Returns -1
 * for the callback to close the connection.
 */
/*
 * A complete HTTP/1.1 error response with the JSON error body, written raw where lws would
 * not answer properly (it labels its own status line HTTP/1.0). Returns its length, 0 when
 * it does not fit.
 */
static size_t format_refusal(char *out, size_t cap, enum hd_err code, const char *message)
{
    static const char *const reasons[] = {
        [400] = "Bad Request", [401] = "Unauthorized",      [403] = "Forbidden",
        [404] = "Not Found",   [429] = "Too Many Requests", [503] = "Service Unavailable"};
    size_t blen = 0;
    char *body = hd_encode_error(false, false, 0, code, message, &blen);
    int status = hd_err_http(code);
    int n = -1;
    if (body && status < 600)
        n = snprintf(out, cap,
                     "HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                     "content-length: %zu\r\n%sconnection: close\r\nserver: heraldd\r\n\r\n%s",
                     status, reasons[status] ? reasons[status] : "Error", blen,
                     status == 429 ? "retry-after: 1\r\n" : "", body);
    free(body);
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

static int refuse_upgrade(struct lws *wsi, enum hd_err code, const char *message)
{
    unsigned char buf[LWS_PRE + 1024];
    size_t n = format_refusal((char *)buf + LWS_PRE, 1024, code, message);
    if (n)
        lws_write(wsi, buf + LWS_PRE, n, LWS_WRITE_HTTP_HEADERS);
    return -1;
}

static bool vhost_is_tls(const struct hd_server *s, const struct lws_vhost *vh)
{
    for (size_t i = 0; i < s->cfg->n_listeners && i < HD_MAX_LISTENERS; i++)
        if (s->vhosts[i] == vh)
            return s->cfg->listeners[i].tls_cert != NULL;
    return false;
}

/*
 * A new TCP connection, before lws reads a byte of it: the broker counts it against its
 * address (limits.max_connections_per_ip). A refused plaintext peer still gets a short
 * 429 so a person with curl learns why; a TLS peer just sees the connection close.
 */
static int peer_filter(struct hd_server *s, struct lws *wsi,
                       const struct lws_filter_network_conn_args *a)
{
    /* lws adopted nothing for the last accepted socket: its count must not stay behind. */
    hd_broker_peer_close(s->broker, s->pending_peer);
    s->pending_peer = NULL;
    bool refused;
    struct hd_error err = {0};
    s->pending_peer = hd_broker_peer_open(s->broker, (const struct sockaddr *)&a->cli_addr,
                                          a->clilen, &refused, &err);
    if (!refused)
        return 0;
    /* One line a second at most: a flood must not turn into a log flood. */
    uint64_t now_s = hd_now_ns() / 1000000000u;
    s->refused_unlogged++;
    if (now_s != s->refused_logged_s) {
        hd_log_info("connection refused", "reason=per_ip_limit count=%" PRIu64 " error=\"%s\"",
                    s->refused_unlogged, err.message);
        s->refused_logged_s = now_s;
        s->refused_unlogged = 0;
    }
    if (!vhost_is_tls(s, lws_get_vhost(wsi))) {
        char buf[1024];
        size_t n = format_refusal(buf, sizeof(buf), err.code, err.message);
        /* Best effort into an empty socket buffer: never blocks, never raises SIGPIPE. */
        if (n && send(a->accept_fd, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
            hd_log_debug("refusal not sent", "errno=%d", errno);
    }
    return -1;
}

/*
 * The accept-to-destroy life of every TCP connection, whichever protocol lws routes it to
 * (the upgrade default makes that herald.v1 for some of these). True when handled.
 */
static bool peer_lifecycle(struct hd_server *s, struct lws *wsi, enum lws_callback_reasons reason,
                           void *user, int *ret)
{
    *ret = 0;
    switch (reason) {
    case LWS_CALLBACK_FILTER_NETWORK_CONNECTION:
        *ret = peer_filter(s, wsi, user);
        return true;
    case LWS_CALLBACK_OPENSSL_LOAD_EXTRA_SERVER_VERIFY_CERTS:
        /* lws's one look at a vhost's SSL_CTX (user), while lws_create_vhost runs. */
        if (s->creating < HD_MAX_LISTENERS)
            s->ssl_ctx[s->creating] = user;
        return true;
    case LWS_CALLBACK_SERVER_NEW_CLIENT_INSTANTIATED:
        /* The wsi's opaque pointer outlives the per-transaction pss and the upgrade. */
        lws_set_opaque_user_data(wsi, s->pending_peer);
        s->pending_peer = NULL;
        return true;
    case LWS_CALLBACK_WSI_DESTROY:
        hd_broker_peer_close(s->broker, lws_get_opaque_user_data(wsi));
        lws_set_opaque_user_data(wsi, NULL);
        return true;
    default:
        return false;
    }
}

/* Decides whether an upgrade may proceed; answers the refusal itself. */
static int ws_filter(struct hd_server *s, struct lws *wsi, struct ws_pss *pss)
{
    char path[64];
    if (!copy_header(wsi, WSI_TOKEN_GET_URI, path, sizeof(path)) || strcmp(path, "/v1/ws") != 0) {
        return refuse_upgrade(wsi, HD_ERR_NOT_FOUND, "WebSocket is served on /v1/ws");
    }
    char origin[HDR_SMALL];
    bool has_origin = copy_header(wsi, WSI_TOKEN_ORIGIN, origin, sizeof(origin));
    if (!hd_api_origin_allowed(s->broker, has_origin ? origin : NULL)) {
        hd_log_info("websocket upgrade refused", "reason=origin origin=\"%s\"", origin);
        return refuse_upgrade(wsi, HD_ERR_FORBIDDEN, "this origin may not open WebSockets");
    }
    if (hd_broker_draining(s->broker)) {
        return refuse_upgrade(wsi, HD_ERR_UNAVAILABLE, "the server is shutting down");
    }
    /* Browsers cannot set headers on a WebSocket: ?token= is accepted there too. */
    static char auth[4200], token[4097];
    struct hd_http_req req = {.method = HD_M_GET, .path = "/v1/ws", .content_length = -1};
    char query[4200];
    if (copy_header(wsi, WSI_TOKEN_HTTP_AUTHORIZATION, auth, sizeof(auth)))
        req.authorization = auth;
    /* lws copies the whole "token=..." fragment and returns where the value starts. */
    const char *value = lws_get_urlarg_by_name(wsi, "token=", token, sizeof(token));
    if (value) {
        snprintf(query, sizeof(query), "token=%s", value);
        req.query = query;
    }
    struct hd_http_resp resp = {0};
    memset(pss, 0, sizeof(*pss));
    int r = hd_api_authenticate(s->broker, &req, &pss->conn.identity, &pss->conn.credential, &resp);
    if (r) {
        r = refuse_upgrade(wsi, HD_ERR_UNAUTHORIZED,
                           resp.body ? "invalid or expired credentials" : "unauthorized");
        hd_http_resp_clear(&resp);
        return r;
    }
    hd_http_resp_clear(&resp);
    pss->authed = true;
    return 0;
}

/* Reassembles fragments and enforces the frame limit; returns -1 to close. */
static int ws_receive(struct hd_server *s, struct ws_pss *pss, struct lws *wsi, const char *in,
                      size_t len)
{
    size_t limit = (size_t)hd_broker_config(s->broker)->limits.max_event_bytes + 16384;
    if (lws_frame_is_binary(wsi)) {
        lws_close_reason(wsi, LWS_CLOSE_STATUS_UNACCEPTABLE_OPCODE,
                         (unsigned char *)"binary frames are not supported", 31);
        return -1;
    }
    bool first = lws_is_first_fragment(wsi), final = lws_is_final_fragment(wsi);
    size_t remaining = lws_remaining_packet_payload(wsi);
    if (first && final && !remaining && !pss->rx) {
        if (len > limit)
            goto too_big;
        hd_conn_on_text(&pss->conn, in, len);
        return 0;
    }
    if (first && !pss->rx_len) {
        free(pss->rx);
        pss->rx = NULL;
    }
    if (pss->rx_len + len + remaining > limit)
        goto too_big;
    char *n = realloc(pss->rx, pss->rx_len + len + 1);
    if (!n) {
        lws_close_reason(wsi, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, NULL, 0);
        return -1;
    }
    pss->rx = n;
    memcpy(pss->rx + pss->rx_len, in, len);
    pss->rx_len += len;
    if (final && !remaining) {
        hd_conn_on_text(&pss->conn, pss->rx, pss->rx_len);
        free(pss->rx);
        pss->rx = NULL;
        pss->rx_len = 0;
    }
    return 0;
too_big:
    lws_close_reason(wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, (unsigned char *)"frame too large",
                     15);
    return -1;
}

/* Bytes gathered into one send when several frames are queued to a connection. */
#define COALESCE_MAX (64 * 1024)

/* Writes the RFC 6455 header of an unmasked final text frame; returns its length. */
static size_t frame_header(unsigned char *p, size_t len)
{
    p[0] = 0x81;
    if (len < 126) {
        p[1] = (unsigned char)len;
        return 2;
    }
    if (len < 65536) {
        p[1] = 126;
        p[2] = (unsigned char)(len >> 8);
        p[3] = (unsigned char)len;
        return 4;
    }
    p[1] = 127;
    for (int i = 0; i < 8; i++)
        p[2 + i] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
    return 10;
}

/*
 * One send per writable callback. When several messages are queued (a burst of fan-out),
 * their frames are gathered into one buffer and handed to lws as raw bytes (lws_write with
 * LWS_WRITE_HTTP bypasses its framing on a WebSocket connection), so a connection that fell
 * a few events behind catches up in one syscall instead of one per event. A single message
 * goes out directly from its shared buffer, the frame header written into its headroom.
 */
/* Writes what is queued (one send); asks for a writable callback when more is left. */
static int ws_write_queued(struct ws_pss *pss, struct lws *wsi)
{
    static unsigned char gather[LWS_PRE + COALESCE_MAX];
    struct hd_queue *q = &pss->conn.q;
    struct hd_msg *m = hd_conn_peek(&pss->conn);
    if (!m)
        return 0;
    uint32_t n = 0;
    size_t used = 0;
    while (n < q->count) {
        struct hd_msg *x = hd_queue_at(q, n);
        if (used + 10 + x->len > COALESCE_MAX)
            break;
        used += frame_header(gather + LWS_PRE + used, x->len);
        memcpy(gather + LWS_PRE + used, hd_msg_payload(x), x->len);
        used += x->len;
        n++;
    }
    if (n >= 2) {
        if (lws_write(wsi, gather + LWS_PRE, used, LWS_WRITE_HTTP) < (int)used)
            return -1;
        while (n--)
            hd_conn_wrote(&pss->conn);
    } else {
        if (lws_write(wsi, hd_msg_payload(m), m->len, LWS_WRITE_TEXT) < (int)m->len)
            return -1;
        hd_conn_wrote(&pss->conn);
    }
    if (hd_conn_peek(&pss->conn) || pss->close_code) {
        pss->conn.want_pending = true;
        lws_callback_on_writable(wsi);
    }
    return 0;
}

static int ws_writable(struct ws_pss *pss, struct lws *wsi)
{
    hd_conn_writable(&pss->conn);
    if (pss->ping_due && !pss->close_code) {
        /* lws 4.1 reports a pong to us only when it carries a payload. */
        unsigned char ping[LWS_PRE + 2] = {[LWS_PRE] = 'h', [LWS_PRE + 1] = 'b'};
        pss->ping_due = false;
        if (lws_write(wsi, ping + LWS_PRE, 2, LWS_WRITE_PING) < 0)
            return -1;
        if (hd_conn_peek(&pss->conn)) {
            pss->conn.want_pending = true;
            lws_callback_on_writable(wsi);
        }
        return 0;
    }
    if (!hd_conn_peek(&pss->conn))
        return pss->close_code ? ws_finish_close(pss, true) : 0;
    return ws_write_queued(pss, wsi);
}

/*
 * End of turn for one connection with frames queued: write them now, from outside any lws
 * callback. While lws still holds part of an earlier send (or a ping or close is due), the
 * frames wait for the writable callback instead, which keeps everything in order.
 */
static void ws_flush(struct ws_pss *pss)
{
    struct lws *wsi = pss->wsi;
    if (pss->ping_due || pss->close_code || lws_partial_buffered(wsi)) {
        lws_callback_on_writable(wsi);
        return;
    }
    hd_conn_writable(&pss->conn);
    if (ws_write_queued(pss, wsi) < 0) /* not inside a callback: close asynchronously */
        lws_set_timeout(wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
}

static int callback_ws(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                       size_t len)
{
    struct hd_server *s = lws_context_user(lws_get_context(wsi));
    struct ws_pss *pss = user;
    int r = 0;
    if (peer_lifecycle(s, wsi, reason, user, &r))
        return r;
    switch (reason) {
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
        return ws_filter(s, wsi, pss);
    case LWS_CALLBACK_ESTABLISHED:
        if (!pss->authed) /* the filter runs before every upgrade; never trust a zero pss */
            return -1;
        pss->wsi = wsi;
        if (hd_conn_attach(s->broker, &pss->conn, HD_CONN_WS, &ws_ops, wsi)) {
            hd_identity_clear(&pss->conn.identity);
            free(pss->conn.credential);
            pss->conn.credential = NULL;
            lws_close_reason(wsi, LWS_CLOSE_STATUS_GOINGAWAY, NULL, 0);
            return -1;
        }
        return 0;
    case LWS_CALLBACK_RECEIVE_PONG:
        hd_conn_touch(&pss->conn);
        return 0;
    case LWS_CALLBACK_RECEIVE:
        hd_conn_touch(&pss->conn);
        pss->in_callback = true;
        r = ws_receive(s, pss, wsi, in, len);
        pss->in_callback = false;
        if (!r && !pss->close_code && !pss->paused.next) {
            /* Backpressure: read nothing more from this client until queues drain. */
            uint64_t now = hd_now_ns();
            if (hd_broker_publish_held(s->broker, now, now) && !lws_rx_flow_control(wsi, 0)) {
                pss->paused_ns = now;
                turn_add(s, &s->ws_paused, &pss->paused);
            }
        }
        if (r || !pss->close_code)
            return r;
        if (!hd_conn_peek(&pss->conn))
            return ws_finish_close(pss, false);
        lws_callback_on_writable(wsi); /* flush the replies that explain the close first */
        lws_set_timeout(wsi, PENDING_TIMEOUT_LAGGING, 4);
        return 0;
    case LWS_CALLBACK_SERVER_WRITEABLE:
        return ws_writable(pss, wsi);
    case LWS_CALLBACK_CLOSED:
        turn_del(&pss->dirty);
        turn_del(&pss->paused);
        if (pss->conn.broker) {
            hd_conn_detach(&pss->conn);
        } else if (pss->authed) { /* closed between the upgrade and ESTABLISHED */
            hd_identity_clear(&pss->conn.identity);
            free(pss->conn.credential);
            pss->conn.credential = NULL;
        }
        free(pss->rx);
        pss->rx = NULL;
        return 0;
    default:
        return 0;
    }
}

/* --- HTTP -------------------------------------------------------------------------- */

struct http_pending; /* a publish waiting for its commit */

enum http_mode { H_PLAIN, H_SSE, H_POLL };

struct http_pss {
    struct hd_conn conn;    /* attached while streaming (SSE) or waiting (long poll) */
    struct turn_link ready; /* in the server's http_ready list: the body is to be acted on */
    uint64_t ready_ns;      /* when it was listed, for the backpressure bound */
    enum http_mode mode;
    lws_sorted_usec_list_t sul; /* SSE keepalive or long-poll deadline */
    bool keepalive_due, poll_ready, stream_closing;
    bool watched;   /* in the server's epoll set of held-open requests */
    bool busy;      /* a request is being answered on this connection */
    bool body_done; /* the body is complete; it is acted on at the end of the turn */
    bool publish_started;
    uint32_t ticks, deadline_ticks;
    struct lws *wsi;
    struct hd_http_req req;
    /* This request's path, query and header copies, in one allocation sized to them: the
     * pss is zeroed for every transaction, so it stays small. */
    char *strings;
    bool close_after; /* answered before its body was read: close instead of keep-alive */
    char *body;
    size_t body_len;
    bool body_too_large;
    bool reading_body;
    bool response_ready;
    bool head;
    struct hd_http_resp resp;
    struct http_pending *pending;
};

struct http_pending {
    struct http_pss *pss; /* NULL when the client went away first */
};

static enum hd_method method_of(int m)
{
    switch (m) {
    case LWSHUMETH_GET:
        return HD_M_GET;
    case LWSHUMETH_POST:
        return HD_M_POST;
    case LWSHUMETH_OPTIONS:
        return HD_M_OPTIONS;
    case LWSHUMETH_HEAD:
        return HD_M_HEAD;
    case LWSHUMETH_PUT:
        return HD_M_PUT;
    case LWSHUMETH_PATCH:
        return HD_M_PATCH;
    case LWSHUMETH_DELETE:
        return HD_M_DELETE;
    default:
        return HD_M_OTHER;
    }
}

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
static void on_ep_ready(uv_poll_t *h, int status, int events)
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

static void stream_end(struct hd_server *s, struct http_pss *pss)
{
    stream_unwatch(s, pss);
    lws_sul_cancel(&pss->sul);
    if (pss->conn.broker)
        hd_conn_detach(&pss->conn);
    struct hd_metrics *m = hd_broker_metrics(s->broker);
    if (pss->mode == H_SSE)
        m->sse_streams--;
    else if (pss->mode == H_POLL)
        m->long_polls--;
    pss->mode = H_PLAIN;
}

/* Frees what one request holds. lws frees the pss itself when a transaction completes. */
static void http_release(struct http_pss *pss)
{
    turn_del(&pss->ready);
    if (pss->mode != H_PLAIN)
        stream_end(lws_context_user(lws_get_context(pss->wsi)), pss);
    free(pss->body);
    pss->body = NULL;
    free(pss->strings);
    pss->strings = NULL;
    hd_http_resp_clear(&pss->resp);
    if (pss->pending) {
        pss->pending->pss = NULL;
        pss->pending = NULL;
    }
}

static void http_reset(struct http_pss *pss)
{
    http_release(pss);
    struct lws *wsi = pss->wsi;
    memset(pss, 0, sizeof(*pss));
    pss->wsi = wsi;
}

static int http_writable(struct hd_server *s, struct http_pss *pss, struct lws *wsi);

/*
 * Writes the response now (a response is small; lws buffers what the socket does not take).
 * Called from LWS_CALLBACK_HTTP for requests without a body, from the writable callback
 * after acting on a body, and from a publish completion. Returns -1 to close.
 */
static int http_respond(struct hd_server *s, struct http_pss *pss)
{
    hd_api_cors(s->broker, &pss->req, &pss->resp);
    pss->response_ready = true;
    return http_writable(s, pss, pss->wsi);
}

/* Longest accepted: over these a header is ignored (the query refuses the request). */
#define QUERY_MAX 4607
#define CTYPE_MAX 127
#define ORIGIN_MAX (HDR_SMALL - 1)
#define LAST_EVENT_ID_MAX 255
#define AUTHORIZATION_MAX 4199
#define PEER_MAX 63

/* The query's length as copy_query joins it; -1 when over QUERY_MAX. */
static int query_length(struct lws *wsi)
{
    int total = 0;
    for (int i = 0; i < 64; i++) {
        int flen = lws_hdr_fragment_length(wsi, WSI_TOKEN_HTTP_URI_ARGS, i);
        if (flen <= 0)
            break;
        total += flen + (i ? 1 : 0);
        if (total > QUERY_MAX)
            return -1;
    }
    return total;
}

/* Joins the query string at *at: lws keeps each `&`-separated fragment apart. */
static const char *copy_query(struct lws *wsi, char **at, const char *end)
{
    char *q = *at, *o = q;
    for (int i = 0; i < 64; i++) {
        if (o > q)
            *o++ = '&';
        int n = lws_hdr_copy_fragment(wsi, o, (int)(end - o), WSI_TOKEN_HTTP_URI_ARGS, i);
        if (n <= 0) {
            if (o > q)
                o--; /* no fragment after the separator */
            break;
        }
        o += n;
    }
    *o = '\0';
    *at = o + 1;
    return o > q ? q : NULL;
}

/* Copies header t to *at and moves past it; NULL when absent or longer than max. */
static const char *take_header(struct lws *wsi, enum lws_token_indexes t, int max, char **at,
                               const char *end)
{
    int n = lws_hdr_total_length(wsi, t);
    if (n <= 0 || n > max || n + 1 > end - *at)
        return NULL;
    int c = lws_hdr_copy(wsi, *at, n + 1, t);
    if (c < 0)
        return NULL;
    const char *r = *at;
    *at += c + 1;
    return r;
}

#define container_of(p, type, member) ((type *)((char *)(p)-offsetof(type, member)))

/* SSE keepalive comment period (the protocol promises one at least every 30 s). */
#define SSE_KEEPALIVE_TICKS 15
/* Timer resolution for keepalives and long-poll deadlines. */
#define STREAM_TICK_US (LWS_US_PER_SEC / 2)

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

/* Gives a streaming request its identity (for rights, expiry and reload) and attaches it. */
static int stream_attach(struct hd_server *s, struct http_pss *pss, enum hd_conn_kind kind)
{
    struct hd_http_resp scratch = {0};
    int r = hd_api_authenticate(s->broker, &pss->req, &pss->conn.identity, &pss->conn.credential,
                                &scratch);
    hd_http_resp_clear(&scratch);
    if (r)
        return -1; /* the route already checked; only a reload in between gets here */
    if (hd_conn_attach(s->broker, &pss->conn, kind, &stream_ops, pss->wsi)) {
        hd_identity_clear(&pss->conn.identity);
        free(pss->conn.credential);
        pss->conn.credential = NULL;
        return -1;
    }
    return 0;
}

static int sse_start(struct hd_server *s, struct http_pss *pss)
{
    struct hd_http_stream st = pss->resp.stream;
    hd_api_cors(s->broker, &pss->req, &pss->resp);
    hd_http_resp_header(&pss->resp, "x-accel-buffering:", "no");
    pss->mode = H_SSE;
    hd_broker_metrics(s->broker)->sse_streams++;
    if (stream_attach(s, pss, HD_CONN_SSE))
        return -1;
    if (write_headers(s, pss, 200, "text/event-stream", LWS_ILLEGAL_HTTP_CONTENT_LEN))
        return -1;
    lws_http_mark_sse(pss->wsi);
    lws_set_timeout(pss->wsi, NO_PENDING_TIMEOUT, 0);
    stream_watch(s, pss);
    bool gap = false;
    struct hd_error err;
    /* The reply-free subscribe queues the replay; a gap is announced before it. */
    if (hd_conn_subscribe(&pss->conn, st.pattern, st.has_since ? st.since : NULL, &gap, &err))
        return -1;
    if (gap) {
        static const char note[] = "event: gap\ndata: {\"type\":\"gap\"}\n\n";
        /* Put the notice first: the replay already queued follows it. */
        struct hd_msg *m = hd_msg_new_text(note, sizeof(note) - 1);
        if (!m)
            return -1;
        struct hd_queue *q = &pss->conn.q;
        if (hd_queue_push(q, m, HD_PUSH_FORCE)) {
            hd_msg_unref(m);
            return -1;
        }
        hd_msg_unref(m);
        /* rotate the notice to the front */
        for (uint32_t i = 0; i + 1 < q->count; i++) {
            struct hd_msg *x = hd_queue_pop(q);
            hd_queue_push(q, x, x->seq ? HD_PUSH_SHARED : HD_PUSH_FORCE);
            hd_msg_unref(x);
        }
    }
    hd_http_resp_clear(&pss->resp);
    lws_sul_schedule(lws_get_context(pss->wsi), 0, &pss->sul, sul_stream_tick, STREAM_TICK_US);
    lws_callback_on_writable(pss->wsi);
    return 0;
}

static int poll_start(struct hd_server *s, struct http_pss *pss)
{
    pss->mode = H_POLL;
    hd_broker_metrics(s->broker)->long_polls++;
    if (stream_attach(s, pss, HD_CONN_POLL))
        return -1;
    bool gap;
    struct hd_error err;
    if (hd_conn_subscribe(&pss->conn, pss->resp.stream.pattern, NULL, &gap, &err))
        return -1;
    /* lws gives a request 5 s for its content; a long poll keeps its own deadline. */
    lws_set_timeout(pss->wsi, NO_PENDING_TIMEOUT, 0);
    stream_watch(s, pss);
    pss->deadline_ticks = pss->resp.stream.wait_s * 2;
    lws_sul_schedule(lws_get_context(pss->wsi), 0, &pss->sul, sul_stream_tick, STREAM_TICK_US);
    return 0;
}

static int sse_writable(struct http_pss *pss, struct lws *wsi)
{
    if (pss->stream_closing)
        return -1;
    hd_conn_writable(&pss->conn);
    struct hd_msg *m = hd_conn_peek(&pss->conn);
    if (m) {
        size_t len = m->len;
        const char *data = m->seq ? hd_msg_sse(m, &len) : (const char *)hd_msg_payload(m);
        if (!data || lws_write(wsi, (unsigned char *)data, len, LWS_WRITE_HTTP) < (int)len)
            return -1;
        hd_conn_wrote(&pss->conn);
        if (hd_conn_peek(&pss->conn) || pss->keepalive_due) {
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

/*
 * The body is complete: act on it at the end of this loop turn, never here. lws 4.1 re-feeds
 * stored input from the request line when the headers of a request with a body came from
 * pipelined input, so the first body it reports may be garbage and a second completion
 * follows; answering here would also hang lws in a loop that never returns to libuv.
 */
static int body_complete(struct http_pss *pss)
{
    if (pss->body_done)
        return -1; /* a second completion: the pipelining bug above; drop the client */
    pss->body_done = true;
    pss->reading_body = false;
    struct hd_server *s = lws_context_user(lws_get_context(pss->wsi));
    pss->ready_ns = hd_now_ns();
    turn_add(s, &s->http_ready, &pss->ready);
    return 0;
}

static int http_request(struct hd_server *s, struct http_pss *pss, struct lws *wsi)
{
    http_reset(pss);
    pss->wsi = wsi;
    pss->busy = true; /* until the answer completes the transaction */
    char *uri;
    int ulen;
    int m = lws_http_get_uri_and_method(wsi, &uri, &ulen);
    pss->req.method = method_of(m);
    pss->head = pss->req.method == HD_M_HEAD;
    /* lws has already percent-decoded the path and split off the query. */
    if (ulen < 0 || ulen > HD_TOPIC_MAX + 63) {
        pss->req.path = "/";
        hd_api_error(&pss->resp, HD_ERR_NOT_FOUND, "path too long");
        return http_respond(s, pss);
    }
    int qlen = query_length(wsi);
    int lid = lws_hdr_custom_length(wsi, "last-event-id:", 14);
    size_t cap = (size_t)ulen + (size_t)(qlen > 0 ? qlen : 0) + CTYPE_MAX + ORIGIN_MAX +
                 (size_t)(lid > 0 && lid <= LAST_EVENT_ID_MAX ? lid : 0) +
                 (size_t)lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_AUTHORIZATION) + PEER_MAX + 8;
    pss->strings = malloc(cap);
    if (!pss->strings) {
        pss->req.path = "/";
        hd_api_error(&pss->resp, HD_ERR_INTERNAL, "out of memory");
        pss->close_after = true;
        return http_respond(s, pss);
    }
    char *at = pss->strings, *end = pss->strings + cap;
    memcpy(at, uri, (size_t)ulen);
    at[ulen] = '\0';
    pss->req.path = at;
    at += ulen + 1;
    if (qlen < 0) {
        hd_api_error(&pss->resp, HD_ERR_BAD_REQUEST, "the query string is too long");
        pss->close_after = true;
        return http_respond(s, pss);
    }
    pss->req.query = copy_query(wsi, &at, end);
    pss->req.content_type = take_header(wsi, WSI_TOKEN_HTTP_CONTENT_TYPE, CTYPE_MAX, &at, end);
    pss->req.origin = take_header(wsi, WSI_TOKEN_ORIGIN, ORIGIN_MAX, &at, end);
    /* Last-Event-ID is not a token lws knows: read it as a custom header. */
    if (lid > 0 && lid <= LAST_EVENT_ID_MAX &&
        lws_hdr_custom_copy(wsi, at, (int)(end - at), "last-event-id:", 14) >= 0) {
        pss->req.last_event_id = at;
        at += strlen(at) + 1;
    }
    pss->req.authorization =
        take_header(wsi, WSI_TOKEN_HTTP_AUTHORIZATION, AUTHORIZATION_MAX, &at, end);
    /* The address counted at accept, formatted without another getpeername(). */
    const struct hd_peer *peer = lws_get_opaque_user_data(wsi);
    if (peer) {
        hd_peer_addr_format(hd_peer_addr_of(peer), at, PEER_MAX + 1);
        pss->req.peer = at;
    } else if (lws_get_peer_simple(wsi, at, PEER_MAX + 1)) {
        pss->req.peer = at;
    }
    char cl[32];
    pss->req.content_length = -1;
    if (copy_header(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH, cl, sizeof(cl)))
        pss->req.content_length = strtoll(cl, NULL, 10);

    /* No long requests yet: keep lws's content timeout for the body, or respond now. */
    enum hd_http_next next = hd_api_route(s->broker, &pss->req, &pss->resp);
    if (next == HD_HTTP_SSE)
        return sse_start(s, pss) ? -1 : 0;
    if (next == HD_HTTP_LONGPOLL) {
        if (poll_start(s, pss) == 0)
            return 0;
        stream_end(s, pss);
        hd_api_error(&pss->resp, HD_ERR_INTERNAL, "out of memory");
        return http_respond(s, pss);
    }
    if (next == HD_HTTP_READ_BODY) {
        if (pss->req.content_length < 0) {
            if (lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING) > 0) {
                /* lws 4.1 does not decode chunked request bodies. */
                hd_api_error(&pss->resp, HD_ERR_BAD_REQUEST,
                             "send the body with a Content-Length (chunked is not supported)");
                pss->resp.status = 411;
                pss->close_after = true;
                return http_respond(s, pss);
            }
            /* No length and no chunking: an empty body, and lws reports no completion. */
            pss->body_done = true;
            pss->ready_ns = hd_now_ns();
            turn_add(s, &s->http_ready, &pss->ready);
            return 0;
        }
        pss->reading_body = true; /* lws reports completion even for an empty body */
        return 0;
    }
    /* Refused before its body was read: lws 4.1 would parse that body as the next request
     * (and can hang doing so), so the connection closes after this answer. */
    if (pss->req.content_length > 0 ||
        lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING) > 0)
        pss->close_after = true;
    return http_respond(s, pss);
}

static void http_publish_done(void *arg, struct hd_http_resp *resp)
{
    struct http_pending *p = arg;
    struct http_pss *pss = p->pss;
    if (pss) {
        struct hd_server *s = lws_context_user(lws_get_context(pss->wsi));
        pss->pending = NULL;
        if (resp)
            pss->resp = *resp;
        else
            hd_api_error(&pss->resp, HD_ERR_INTERNAL, "out of memory");
        free(resp);
        /* Outside any lws callback: a failed write closes the connection asynchronously. */
        struct lws *wsi = pss->wsi; /* a completed transaction may free pss */
        if (http_respond(s, pss))
            lws_set_timeout(wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
    } else if (resp) {
        hd_http_resp_clear(resp);
        free(resp);
    }
    free(p);
}

static int http_body_complete(struct hd_server *s, struct http_pss *pss)
{
    pss->reading_body = false;
    if (pss->body_too_large) {
        hd_api_error(&pss->resp, HD_ERR_TOO_LARGE, "the request body is larger than allowed");
        return http_respond(s, pss);
    }
    struct http_pending *p = calloc(1, sizeof(*p));
    if (!p) {
        hd_api_error(&pss->resp, HD_ERR_INTERNAL, "out of memory");
        return http_respond(s, pss);
    }
    p->pss = pss;
    int r = hd_api_publish(s->broker, &pss->req, pss->body ? pss->body : "", pss->body_len,
                           &pss->resp, http_publish_done, p);
    if (r == HD_HTTP_RESPOND) {
        free(p);
        return http_respond(s, pss);
    }
    pss->pending = p;
    return 0;
}

static int http_body(struct hd_server *s, struct http_pss *pss, const char *in, size_t len)
{
    if (!pss->reading_body || pss->body_too_large)
        return 0;
    size_t limit = hd_api_body_limit(s->broker);
    if (pss->body_len + len > limit) {
        pss->body_too_large = true;
        free(pss->body);
        pss->body = NULL;
        pss->body_len = 0;
        return 0;
    }
    if (!len)
        return 0; /* lws may report an empty chunk with no buffer */
    char *n = realloc(pss->body, pss->body_len + len + 1);
    if (!n)
        return -1;
    pss->body = n;
    memcpy(pss->body + pss->body_len, in, len);
    pss->body_len += len;
    pss->body[pss->body_len] = '\0';
    return 0;
}

static int http_writable(struct hd_server *s, struct http_pss *pss, struct lws *wsi)
{
    if (pss->mode == H_SSE)
        return sse_writable(pss, wsi);
    if (pss->body_done && !pss->publish_started) {
        pss->publish_started = true;
        return http_body_complete(s, pss); /* responds, now or when the commit is done */
    }
    if (pss->mode == H_POLL) {
        if (!pss->poll_ready)
            return 0;
        hd_conn_discard_queue(&pss->conn);
        struct hd_http_stream st = pss->resp.stream;
        stream_end(s, pss);
        hd_api_poll_answer(s->broker, &st, &pss->resp);
        hd_api_cors(s->broker, &pss->req, &pss->resp);
        pss->response_ready = true;
    }
    if (!pss->response_ready)
        return 0;
    struct hd_http_resp *r = &pss->resp;
    size_t hcap = 2048;
    size_t body_len = pss->head ? 0 : r->body_len;
    unsigned char *buf = malloc(LWS_PRE + hcap + body_len);
    if (!buf)
        return -1;
    unsigned char *start = buf + LWS_PRE, *p = start, *end = start + hcap - 1;
    int status = r->status ? r->status : 500;
    /* RFC 9110: no Content-Length on a 204. */
    if (lws_add_http_common_headers(wsi, (unsigned int)status, r->content_type,
                                    status == 204 ? LWS_ILLEGAL_HTTP_CONTENT_LEN : r->body_len, &p,
                                    end))
        goto fail;
    for (size_t i = 0; i < r->n_headers; i++)
        if (lws_add_http_header_by_name(wsi, (const unsigned char *)r->headers[i].name,
                                        (const unsigned char *)r->headers[i].value,
                                        (int)strlen(r->headers[i].value), &p, end))
            goto fail;
    if (lws_add_http_header_by_name(wsi, (const unsigned char *)"cache-control:",
                                    (const unsigned char *)"no-store", 8, &p, end))
        goto fail;
    if (pss->close_after && lws_add_http_header_by_name(wsi, (const unsigned char *)"connection:",
                                                        (const unsigned char *)"close", 5, &p, end))
        goto fail;
    if (lws_finalize_http_header(wsi, &p, end))
        goto fail;
    /* Head and body in one send: a response is small, and a second send for the body cost
     * a syscall per request. */
    if (body_len)
        memcpy(p, r->body, body_len);
    p += body_len;
    if (lws_write(wsi, start, (size_t)(p - start), LWS_WRITE_HTTP_HEADERS) != (int)(p - start))
        goto fail;
    free(buf);
    pss->response_ready = false;
    /* lws frees and re-zeroes the pss when the transaction completes: release first and
     * touch nothing after. */
    bool close_after = pss->close_after;
    http_release(pss);
    pss->busy = false;
    if (close_after)
        return -1;
    return lws_http_transaction_completed(wsi) ? -1 : 0;
fail:
    free(buf);
    return -1;
}

static int callback_http(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                         size_t len)
{
    struct hd_server *s = lws_context_user(lws_get_context(wsi));
    struct http_pss *pss = user;
    int r;
    if (peer_lifecycle(s, wsi, reason, user, &r))
        return r;
    switch (reason) {
    case LWS_CALLBACK_HTTP:
        if (!pss)
            return -1;
        /* A new request while the last is unanswered is a pipelining client; lws 4.1
         * cannot serve those reliably (see body_complete), so it is dropped. */
        if (pss->busy)
            return -1;
        pss->wsi = wsi;
        /* An inline answer completes the transaction and lws frees pss: do not touch it. */
        return http_request(s, pss, wsi) ? -1 : 0;
    case LWS_CALLBACK_HTTP_BODY:
        return http_body(s, pss, in, len);
    case LWS_CALLBACK_HTTP_BODY_COMPLETION:
        return pss->reading_body || pss->body_done ? body_complete(pss) : 0;
    case LWS_CALLBACK_HTTP_WRITEABLE:
        return http_writable(s, pss, wsi);
    case LWS_CALLBACK_CLOSED_HTTP:
        if (pss)
            http_reset(pss);
        return 0;
    default:
        return lws_callback_http_dummy(wsi, reason, user, in, len);
    }
}

/*
 * The end of a loop turn: request bodies first (their publishes queue frames), then every
 * WebSocket connection with frames queued, so a burst read in one turn leaves in one
 * write per connection.
 */
static void hold_timer_cb(uv_timer_t *t)
{
    (void)t; /* the turn it ends runs on_turn_end, which looks at the held work again */
}

static void on_turn_end(uv_check_t *h)
{
    struct hd_server *s = h->data;
    struct turn_link *l, held = {&held, &held};
    /* Frames first: what the sockets take now no longer counts against publishers. */
    while ((l = turn_pop(&s->ws_dirty)))
        ws_flush(container_of(l, struct ws_pss, dirty));
    uint64_t now = hd_now_ns();
    while ((l = turn_pop(&s->http_ready))) {
        struct http_pss *pss = container_of(l, struct http_pss, ready);
        if (hd_broker_publish_held(s->broker, pss->ready_ns, now)) {
            turn_link_add(&held, l);
            continue;
        }
        struct lws *wsi = pss->wsi; /* a completed transaction may free pss */
        if (pss->body_done && !pss->publish_started) {
            pss->publish_started = true;
            if (http_body_complete(s, pss))
                lws_set_timeout(wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
        }
    }
    while ((l = turn_pop(&held)))
        turn_link_add(&s->http_ready, l);
    for (struct turn_link *next, *p = s->ws_paused.next; p != &s->ws_paused; p = next) {
        next = p->next;
        struct ws_pss *pss = container_of(p, struct ws_pss, paused);
        if (!hd_broker_publish_held(s->broker, pss->paused_ns, now)) {
            turn_del(p);
            lws_rx_flow_control(pss->wsi, 1);
        }
    }
    while ((l = turn_pop(&s->ws_dirty)))
        ws_flush(container_of(l, struct ws_pss, dirty));
    uv_idle_stop(&s->turn_idle);
    if (!turn_empty(&s->http_ready) || !turn_empty(&s->ws_paused))
        uv_timer_start(&s->hold_timer, hold_timer_cb, 2, 0);
}

/* --- Context ----------------------------------------------------------------------- */

enum { PROTO_HTTP, PROTO_WS };

/* lws 4.1 hands the socket at most tx_packet_size (else rx_buffer_size) bytes per send and
 * parks the rest in a copy drained one writable callback at a time; it also closes after its
 * own error pages without draining that copy (a 403 arrived cut at rx_buffer_size). One
 * chunk must hold a whole coalesced write. */
#define TX_CHUNK (COALESCE_MAX + 16)

static const struct lws_protocols protocols[] = {
    [PROTO_HTTP] = {.name = "http",
                    .callback = callback_http,
                    .per_session_data_size = sizeof(struct http_pss),
                    .rx_buffer_size = 0,
                    .tx_packet_size = TX_CHUNK},
    [PROTO_WS] = {.name = "herald.v1",
                  .callback = callback_ws,
                  .per_session_data_size = sizeof(struct ws_pss),
                  /* A chunk size, not a message limit (we reassemble): small keeps idle
                   * connections cheap. */
                  .rx_buffer_size = 128,
                  .tx_packet_size = TX_CHUNK},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

static void lws_logger(int level, const char *line)
{
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == ' '))
        n--;
    hd_log(level & LLL_ERR ? HD_LOG_WARN : HD_LOG_DEBUG, "libwebsockets", "lws=\"%.*s\"", (int)n,
           line);
}

struct hd_server *hd_server_new(uv_loop_t *loop, struct hd_broker *b, const struct hd_config *cfg)
{
    struct hd_server *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->broker = b;
    s->cfg = cfg;
    s->loop = loop;
    s->epfd = -1;
    s->creating = SIZE_MAX;
    s->ws_dirty.prev = s->ws_dirty.next = &s->ws_dirty;
    s->http_ready.prev = s->http_ready.next = &s->http_ready;
    s->ws_paused.prev = s->ws_paused.next = &s->ws_paused;
    lws_set_log_level(LLL_ERR |
                          (hd_log_enabled(HD_LOG_DEBUG) ? (LLL_WARN | LLL_NOTICE | LLL_INFO) : 0),
                      lws_logger);

    struct lws_context_creation_info info;
    memset(&info, 0, sizeof(info));
    void *foreign[] = {loop};
    info.options = LWS_SERVER_OPTION_LIBUV | LWS_SERVER_OPTION_EXPLICIT_VHOSTS |
                   LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
    info.foreign_loops = foreign;
    info.user = s;
    info.protocols = protocols;
    info.max_http_header_data = (unsigned short)cfg->limits.max_header_bytes;
    info.timeout_secs = cfg->limits.handshake_timeout_s;
    info.timeout_secs_ah_idle = cfg->limits.handshake_timeout_s;
    info.keepalive_timeout = 60;
    info.server_string = "heraldd";
    /* lws stops accepting at its fd table size: that is limits.max_connections (plus the
     * listeners, the store and lws's own descriptors), bounded by RLIMIT_NOFILE. */
    info.fd_limit_per_thread = cfg->limits.max_connections + 32 + (unsigned)cfg->n_listeners;
    s->ctx = lws_create_context(&info);
    if (!s->ctx) {
        hd_log_error("cannot create the libwebsockets context",
                     "hint=\"is libwebsockets-evlib-uv installed?\"");
        free(s);
        return NULL;
    }

    /* All zero: no lws validity timers (the broker's tick runs heartbeats, see broker.c). */
    s->retry = (lws_retry_bo_t){0};
    /* WebSocket upgrades without Sec-WebSocket-Protocol still land on herald.v1. */
    s->pvo_default = (struct lws_protocol_vhost_options){.name = "default", .value = ""};
    s->pvo = (struct lws_protocol_vhost_options){
        .name = "herald.v1", .options = &s->pvo_default, .value = ""};
    for (size_t i = 0; i < cfg->n_listeners; i++) {
        const struct hd_listener *l = &cfg->listeners[i];
        struct lws_context_creation_info vi;
        memset(&vi, 0, sizeof(vi));
        /* lws keeps the pointer, not a copy. */
        snprintf(s->names[i % HD_MAX_LISTENERS], sizeof(s->names[0]), "listener%zu", i);
        vi.vhost_name = s->names[i % HD_MAX_LISTENERS];
        vi.port = l->port; /* 0: the kernel picks one; lws reports it back below */
        vi.iface = l->address;
        vi.protocols = protocols;
        vi.pvo = &s->pvo;
        vi.retry_and_idle_policy = &s->retry;
        vi.options = LWS_SERVER_OPTION_FAIL_UPON_UNABLE_TO_BIND;
        if (strchr(l->address, ':'))
            vi.options |=
                LWS_SERVER_OPTION_IPV6_V6ONLY_MODIFY | LWS_SERVER_OPTION_IPV6_V6ONLY_VALUE;
        else
            vi.options |= LWS_SERVER_OPTION_DISABLE_IPV6;
        vi.keepalive_timeout = 60;
        vi.timeout_secs = cfg->limits.handshake_timeout_s;
        /* lws reads this per vhost (10 s when 0), not from the context. */
        vi.timeout_secs_ah_idle = cfg->limits.handshake_timeout_s;
        if (l->tls_cert) {
            vi.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
            vi.ssl_cert_filepath = l->tls_cert;
            vi.ssl_private_key_filepath = l->tls_key;
            /* HTTP/1.1 only: WebSocket over h2 and long-lived h2 streams are not worth
             * the idle-timer trouble in lws 4.1. */
            vi.alpn = "http/1.1";
        }
        s->creating = i;
        struct lws_vhost *vh = lws_create_vhost(s->ctx, &vi);
        s->creating = SIZE_MAX;
        if (!vh) {
            hd_log_error("cannot listen", "address=%s port=%u", l->address, l->port);
            s->failed = true;
            return s;
        }
        s->vhosts[i % HD_MAX_LISTENERS] = vh;
        hd_log_info("listening", "address=%s port=%d tls=%s", l->address,
                    lws_get_vhost_listen_port(vh), l->tls_cert ? "yes" : "no");
        if (l->tls_cert && !s->ssl_ctx[i % HD_MAX_LISTENERS])
            hd_log_warn("this TLS listener's certificate cannot be reloaded", "address=%s",
                        l->address);
    }
    s->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (s->epfd < 0 || uv_poll_init(loop, &s->ep_watch, s->epfd)) {
        hd_log_error("cannot create the stream watcher", "errno=%d", errno);
        if (s->epfd >= 0)
            close(s->epfd);
        s->epfd = -1;
        s->failed = true;
        return s;
    }
    s->ep_watch.data = s;
    uv_poll_start(&s->ep_watch, UV_READABLE, on_ep_ready);
    s->ep_started = true;
    uv_check_init(loop, &s->turn_end);
    uv_idle_init(loop, &s->turn_idle);
    uv_timer_init(loop, &s->hold_timer);
    s->turn_end.data = s;
    uv_check_start(&s->turn_end, on_turn_end);
    s->turn_started = true;
    return s;
}

static const struct hd_listener *same_listener(const struct hd_config *cfg,
                                               const struct hd_listener *l)
{
    for (size_t i = 0; i < cfg->n_listeners; i++)
        if (cfg->listeners[i].port == l->port && strcmp(cfg->listeners[i].address, l->address) == 0)
            return &cfg->listeners[i];
    return NULL;
}

int hd_server_reload(struct hd_server *s, const struct hd_config *next, char *err, size_t cap)
{
    const struct hd_config *cur = s->cfg;
    bool changed = next->n_listeners != cur->n_listeners;
    struct hd_tls_pair *pairs[HD_MAX_LISTENERS] = {0};
    size_t n = cur->n_listeners < HD_MAX_LISTENERS ? cur->n_listeners : HD_MAX_LISTENERS;
    int r = 0;
    for (size_t i = 0; i < n; i++) {
        const struct hd_listener *l = &cur->listeners[i];
        const struct hd_listener *nl = same_listener(next, l);
        if (!nl || !nl->tls_cert != !l->tls_cert) {
            changed = true;
            nl = l; /* reread the files this listener started with */
        }
        if (!l->tls_cert || !s->ssl_ctx[i])
            continue;
        char why[400];
        pairs[i] = hd_tls_pair_load(nl->tls_cert, nl->tls_key, why, sizeof(why));
        if (!pairs[i]) {
            snprintf(err, cap, "listen[%zu].tls: %s", i, why);
            r = -EINVAL;
            goto out;
        }
    }
    if (changed)
        hd_log_warn(
            "listeners are unchanged until a restart",
            "hint=\"a reload rereads certificates, but adds, removes or moves no listener\"");
    for (size_t i = 0; i < n; i++) {
        if (!pairs[i])
            continue;
        char why[400], until[32];
        int expired;
        if (hd_tls_pair_install(pairs[i], s->ssl_ctx[i], why, sizeof(why))) {
            snprintf(err, cap, "listen[%zu].tls: %s", i, why);
            r = -EINVAL;
            continue;
        }
        hd_tls_pair_not_after(pairs[i], until, sizeof(until), &expired);
        if (expired)
            hd_log_warn("TLS certificate loaded, but it has expired", "listener=%zu not_after=%s",
                        i, until);
        else
            hd_log_info("TLS certificate loaded", "listener=%zu not_after=%s", i, until);
    }
out:
    for (size_t i = 0; i < n; i++)
        hd_tls_pair_free(pairs[i]);
    return r;
}

void hd_server_drain(struct hd_server *s)
{
    hd_broker_drain(s->broker);
}

void hd_server_destroy(struct hd_server *s)
{
    if (!s)
        return;
    if (s->ctx)
        lws_context_destroy(s->ctx); /* first half: lws closes its libuv handles */
    if (s->ep_started) {
        uv_poll_stop(&s->ep_watch);
        uv_close((uv_handle_t *)&s->ep_watch, NULL);
        s->ep_started = false;
    }
    if (s->turn_started) {
        uv_close((uv_handle_t *)&s->turn_end, NULL);
        uv_close((uv_handle_t *)&s->turn_idle, NULL);
        uv_close((uv_handle_t *)&s->hold_timer, NULL);
        s->turn_started = false;
    }
}

/* Call after the loop ran the close callbacks. */
void hd_server_free(struct hd_server *s)
{
    if (!s)
        return;
    /* On a foreign loop lws frees the context only on a second destroy, once its handles
     * have closed (LWS_NOTES.md); without it the context leaks at exit. */
    if (s->ctx)
        lws_context_destroy(s->ctx);
    if (s->epfd >= 0)
        close(s->epfd);
    hd_broker_peer_close(s->broker, s->pending_peer);
    free(s);
}
