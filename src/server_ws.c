/* SPDX-License-Identifier: MIT */
/*
 * WebSocket connections (/v1/ws, subprotocol herald.v1). Each embeds a struct hd_conn; the
 * broker queues shared, already encoded messages to it, and at the end of the loop turn
 * every connection with frames queued gets them in one send (server.c runs the turn).
 */
#include "server_int.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "api.h"
#include "log.h"

struct ws_pss {
    struct hd_conn conn; /* first: the broker hands it back to us */
    struct lws *wsi;
    struct turn_link dirty;  /* in the server's ws_dirty list: frames to write this turn */
    struct turn_link paused; /* in ws_paused: not read while publishers are held */
    uint64_t paused_ns;
    char *rx;                 /* reassembly buffer, only while a message spans several callbacks */
    const char *close_reason; /* a string literal (the broker's close contract) */
    /* Small fields packed: 18,000 idle connections pay for every byte here. */
    uint32_t rx_len;      /* under max_event_bytes (at most 16 MiB) plus the envelope */
    uint16_t close_code;  /* WebSocket close codes are under 5000 */
    bool in_callback : 1; /* close requested from inside this wsi's own callback */
    bool rx_discard : 1;  /* a receive callback asked lws to close: ignore what follows */
    bool authed : 1;      /* identity filled at the upgrade */
    bool ping_due : 1;
    bool read_more : 1; /* listed in the server's read_more this turn */
};

static void ws_want_write(struct hd_conn *c)
{
    struct ws_pss *pss = (struct ws_pss *)c;
    struct hd_server *s = lws_context_user(lws_get_context(pss->wsi));
    srv_turn_add(s, &s->ws_dirty, &pss->dirty);
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
    pss->close_code = (uint16_t)code;
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

/*
 * Refuses a WebSocket upgrade with the documented JSON error body. lws_return_http_status()
 * would answer HTTP/1.0 with an HTML page, which WebSocket clients reject unread. Returns -1
 * for the callback to close the connection.
 */
static int refuse_upgrade(struct lws *wsi, const struct hd_http_resp *resp)
{
    unsigned char buf[LWS_PRE + 2048];
    size_t n = srv_format_resp((char *)buf + LWS_PRE, 2048, resp);
    if (n)
        lws_write(wsi, buf + LWS_PRE, n, LWS_WRITE_HTTP_HEADERS);
    return -1;
}

/* Asks the API's WebSocket route whether this upgrade may proceed; answers a refusal with
 * the route's status and body. The headers are copied out: lws drops them after the upgrade. */
static int ws_filter(struct hd_server *s, struct lws *wsi, struct ws_pss *pss)
{
    static char path[HD_TOPIC_MAX + 64], origin[HDR_SMALL], auth[4200], token[4097];
    const struct srv_conn *sc = srv_conn_of(wsi);
    if (sc && sc->reserve) {
        /* Past limits.max_connections: this loopback place serves health and metrics only. */
        struct hd_http_resp busy = {0};
        hd_api_error(&busy, HD_ERR_UNAVAILABLE,
                     "the server is at limits.max_connections; try again later");
        hd_http_resp_header(&busy, "retry-after:", "1");
        hd_broker_metrics(s->broker)->connections_refused++;
        int r = refuse_upgrade(wsi, &busy);
        hd_http_resp_clear(&busy);
        return r;
    }
    char query[4200];
    struct hd_http_req req = {
        .method = HD_M_GET, .path = "/", .content_length = -1, .upgrade = true};
    if (srv_copy_header(wsi, WSI_TOKEN_GET_URI, path, sizeof(path)))
        req.path = path;
    if (srv_copy_header(wsi, WSI_TOKEN_ORIGIN, origin, sizeof(origin)))
        req.origin = origin;
    if (srv_copy_header(wsi, WSI_TOKEN_HTTP_AUTHORIZATION, auth, sizeof(auth)))
        req.authorization = auth;
    /* lws copies the whole "token=..." fragment and returns where the value starts. */
    const char *value = lws_get_urlarg_by_name(wsi, "token=", token, sizeof(token));
    if (value) {
        snprintf(query, sizeof(query), "token=%s", value);
        req.query = query;
    }
    struct hd_http_resp resp = {0};
    memset(pss, 0, sizeof(*pss));
    int r = 0;
    if (hd_api_route(s->broker, &req, &resp) == HD_HTTP_UPGRADE) {
        hd_api_take_identity(&resp, &pss->conn.identity, &pss->conn.credential);
        pss->authed = true;
    } else {
        r = refuse_upgrade(wsi, &resp);
    }
    hd_http_resp_clear(&resp);
    return r;
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
    /* The buffer's size is srv_rx_capacity() of what it holds (not stored: idle connections
     * pay for every byte here), so a message of many fragments is copied O(log n) times. */
    size_t have = pss->rx ? srv_rx_capacity(pss->rx_len + 1, limit + 1) : 0;
    size_t need = srv_rx_capacity(pss->rx_len + len + 1, limit + 1);
    if (need > have) {
        char *n = realloc(pss->rx, need);
        if (!n) {
            lws_close_reason(wsi, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, NULL, 0);
            return -1;
        }
        pss->rx = n;
    }
    memcpy(pss->rx + pss->rx_len, in, len);
    pss->rx_len += (uint32_t)len;
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
    hd_broker_metrics(pss->conn.broker)->ws_writes++;
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
    if (srv_peer_lifecycle(s, wsi, reason, user, &r))
        return r;
    switch (reason) {
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
        return ws_filter(s, wsi, pss);
    case LWS_CALLBACK_ESTABLISHED:
        if (!pss->authed) /* the filter runs before every upgrade; never trust a zero pss */
            return -1;
        pss->wsi = wsi;
        if (hd_conn_attach(s->broker, &pss->conn, HD_CONN_WS, &ws_ops)) {
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
        /* lws 4.3 keeps passing data frames up while its close frame waits for POLLOUT, and
         * a second -1 then kills the socket without that frame (the peer saw EOF, not 1009). */
        if (pss->rx_discard)
            return 0;
        hd_conn_touch(&pss->conn);
        if (!pss->read_more && s->n_read_more < WS_READ_MORE_CONNS) {
            pss->read_more = true;
            s->read_more[s->n_read_more++] = pss;
        }
        pss->in_callback = true;
        r = ws_receive(s, pss, wsi, in, len);
        pss->in_callback = false;
        if (!r && !pss->close_code && !pss->paused.next) {
            /* Backpressure: read nothing more from this client until queues drain. */
            uint64_t now = hd_now_ns();
            if (hd_broker_publish_held(s->broker, now, now) && !lws_rx_flow_control(wsi, 0)) {
                pss->paused_ns = now;
                srv_turn_add(s, &s->ws_paused, &pss->paused);
            }
        }
        if (r || !pss->close_code) {
            pss->rx_discard = r != 0;
            return r;
        }
        if (!hd_conn_peek(&pss->conn)) {
            pss->rx_discard = true;
            return ws_finish_close(pss, false);
        }
        lws_callback_on_writable(wsi); /* flush the replies that explain the close first */
        lws_set_timeout(wsi, PENDING_TIMEOUT_LAGGING, 4);
        return 0;
    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
        /* RFC 6455 5.5.1: a close payload is empty or starts with a 2-byte code; lws 4.1
         * would echo a 1-byte one back. */
        if (len == 1) {
            lws_close_reason(wsi, LWS_CLOSE_STATUS_PROTOCOL_ERR,
                             (unsigned char *)"a close frame's payload cannot be 1 byte", 40);
            return -1;
        }
        hd_log_debug("peer closed", "conn=%" PRIu64 " code=%d", pss->conn.id,
                     len >= 2 ? ((const unsigned char *)in)[0] << 8 | ((const unsigned char *)in)[1]
                              : 1005);
        return 0;
    case LWS_CALLBACK_SERVER_WRITEABLE:
        return ws_writable(pss, wsi);
    case LWS_CALLBACK_CLOSED:
        turn_del(&pss->dirty);
        turn_del(&pss->paused);
        for (uint32_t i = 0; pss->read_more && i < s->n_read_more; i++)
            if (s->read_more[i] == pss)
                s->read_more[i] = NULL;
        pss->read_more = false;
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

/* Whether lws may be asked to read this connection again now: open, not closing, not paused
 * for backpressure, and its socket holds unread bytes (returned in *avail). */
static bool ws_more_to_read(struct ws_pss *pss, int *avail)
{
    *avail = 0;
    if (!pss->conn.broker || pss->conn.closing || pss->close_code || pss->rx_discard ||
        pss->paused.next)
        return false;
    int fd = lws_get_socket_fd(pss->wsi);
    return fd >= 0 && ioctl(fd, FIONREAD, avail) == 0 && *avail > 0;
}

/*
 * lws 4.1 reads one rx_buffer_size chunk per connection per loop turn, so a publisher with K
 * publishes in flight would get one processed per turn and their fan-out would go out one
 * event per write. Here the connections read this turn are serviced again, as libuv would
 * for a readable socket (lws_service_fd with POLLIN, outside any lws callback), in rounds of
 * WS_READ_MORE_PER_ROUND reads each, until their sockets are empty, they are paused or
 * closing, or the turn's budget is spent. A connection that closes inside lws_service_fd has
 * its entry cleared by the CLOSED callback (or here, when lws reports it closed).
 * What is read fans out to subscribers' queues before anything is written, so a burst could
 * fill a healthy subscriber's queue (limits.max_queue_bytes) within the turn and have it
 * closed as a slow consumer: after every quarter of that limit read here, the queued frames
 * are written first (an event frame is the published data plus an envelope of about 100
 * bytes, so a quarter leaves room for small publishes too).
 */
void srv_ws_read_more(struct hd_server *s)
{
    unsigned budget = WS_READ_MORE_BUDGET;
    uint32_t live = s->n_read_more;
    uint64_t flush_at = hd_broker_config(s->broker)->limits.max_queue_bytes / 4, since_flush = 0;
    while (live && budget) {
        live = 0;
        for (uint32_t i = 0; i < s->n_read_more && budget; i++) {
            struct ws_pss *pss = s->read_more[i];
            int avail;
            if (!pss)
                continue;
            if (!ws_more_to_read(pss, &avail)) {
                pss->read_more = false;
                s->read_more[i] = NULL;
                continue;
            }
            unsigned reads = ((unsigned)avail + WS_RX_CHUNK - 1) / WS_RX_CHUNK;
            if (reads > WS_READ_MORE_PER_ROUND)
                reads = WS_READ_MORE_PER_ROUND;
            for (; reads && budget && s->read_more[i]; reads--, budget--) {
                struct lws_pollfd pfd = {
                    .fd = lws_get_socket_fd(pss->wsi), .events = LWS_POLLIN, .revents = LWS_POLLIN};
                if (since_flush >= flush_at) {
                    srv_ws_flush_all(s);
                    since_flush = 0;
                }
                since_flush += WS_RX_CHUNK;
                hd_broker_metrics(s->broker)->ws_reads_ahead++;
                /* Closed inside (our CLOSED callback cleared the entry, or lws says so):
                 * the wsi and pss may be gone. */
                if (lws_service_fd(lws_get_context(pss->wsi), &pfd) || !s->read_more[i]) {
                    s->read_more[i] = NULL;
                    break;
                }
                if (pss->conn.closing || pss->close_code || pss->rx_discard || pss->paused.next)
                    break;
            }
            live += s->read_more[i] != NULL;
        }
    }
    for (uint32_t i = 0; i < s->n_read_more; i++)
        if (s->read_more[i])
            s->read_more[i]->read_more = false;
    s->n_read_more = 0;
}

void srv_ws_flush_all(struct hd_server *s)
{
    struct turn_link *l;
    while ((l = turn_pop(&s->ws_dirty)))
        ws_flush(container_of(l, struct ws_pss, dirty));
}

void srv_ws_resume(struct hd_server *s, uint64_t now_ns)
{
    for (struct turn_link *next, *p = s->ws_paused.next; p != &s->ws_paused; p = next) {
        next = p->next;
        struct ws_pss *pss = container_of(p, struct ws_pss, paused);
        if (!hd_broker_publish_held(s->broker, pss->paused_ns, now_ns)) {
            turn_del(p);
            lws_rx_flow_control(pss->wsi, 1);
        }
    }
}

const struct lws_protocols srv_ws_protocol = {.name = "herald.v1",
                                              .callback = callback_ws,
                                              .per_session_data_size = sizeof(struct ws_pss),
                                              /* A chunk size, not a message limit (we
                                               * reassemble); see WS_RX_CHUNK. */
                                              .rx_buffer_size = WS_RX_CHUNK,
                                              .tx_packet_size = TX_CHUNK};
