/* SPDX-License-Identifier: MIT */
/*
 * Inside the transport: what server.c (context, listeners, accept-time limits, the end of
 * each loop turn), server_ws.c (WebSocket connections), server_http.c (HTTP requests) and
 * server_stream.c (SSE, long polls) share, with server_activation.c and server_guard.c.
 * Nothing outside the server files includes it.
 */
#ifndef HD_SERVER_INT_H
#define HD_SERVER_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <libwebsockets.h>
#include <uv.h>

#include "api.h"
#include "broker.h"
#include "config.h"
#include "protocol.h"

#define HDR_SMALL 256
#define HD_MAX_LISTENERS 64 /* the config allows at most 64 */
/* Bytes gathered into one send when several frames are queued to a connection. */
#define COALESCE_MAX (64 * 1024)
/* lws 4.1 hands the socket at most tx_packet_size (else rx_buffer_size) bytes per send and
 * parks the rest in a copy drained one writable callback at a time; it also closes after its
 * own error pages without draining that copy (a 403 arrived cut at rx_buffer_size). One
 * chunk must hold a whole coalesced write. */
#define TX_CHUNK (COALESCE_MAX + 16)
/* lws 4.1 reads at most a WebSocket protocol's rx_buffer_size per connection and loop turn
 * into a buffer it allocates per connection: 192 takes a small publish (100 bytes of data and
 * its envelope) in one read while an idle connection stays under 2 KB. */
#define WS_RX_CHUNK 192
/* At the end of a turn, the WebSocket connections lws read from in it are read again while
 * their sockets hold more (srv_ws_read_more), so a publisher's pipelined frames are processed
 * together and their fan-out leaves in one write per subscriber. At most this many
 * connections are listed per turn (later ones get lws's one read per turn, as before) ... */
#define WS_READ_MORE_CONNS 64
/* ... and at most this many extra reads (WS_RX_CHUNK bytes each, 48 KB, about 250 small
 * publishes) are made per turn, shared round-robin, so a busy publisher delays the rest of
 * the loop (other connections, timers) by a bounded amount and cannot starve them. */
#define WS_READ_MORE_BUDGET 256
/* Reads per connection per round-robin round: fewer rounds, and at most 768 bytes read ahead
 * of a slower neighbour. */
#define WS_READ_MORE_PER_ROUND 4

#define container_of(p, type, member) ((type *)((char *)(p)-offsetof(type, member)))

struct ws_pss;

/* Loopback connections past limits.max_connections kept for /healthz and /metrics. */
#define SRV_RESERVE_CONNS 8

/* Each accepted TCP connection's record: the wsi's opaque pointer, from accept to destroy. */
struct srv_conn {
    struct hd_peer *peer; /* counted for limits.max_connections_per_ip, or NULL */
    int fd;               /* the accepted socket, for its framing guard */
    uint64_t guard;       /* srv_guard_open's token */
    bool reserve;         /* past limits.max_connections: health and metrics, then close */
};

/* The record of an accepted connection's wsi, NULL for any other wsi. */
static inline const struct srv_conn *srv_conn_of(struct lws *wsi)
{
    return lws_get_opaque_user_data(wsi);
}

/* Membership in one of the server's end-of-turn lists; all zero when in none. */
struct turn_link {
    struct turn_link *prev, *next;
};

/* A listening socket systemd passed, accepted on by heraldd (server_activation.c). */
struct srv_listen_sock {
    uv_poll_t poll;
    int fd; /* -1: this listener's vhost has lws's own listener */
    bool tls, started;
    struct lws_vhost *vh;
    struct hd_server *s;
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
    struct srv_listen_sock activated[HD_MAX_LISTENERS];
    void *ssl_ctx[HD_MAX_LISTENERS]; /* each TLS vhost's SSL_CTX, for certificate reloads */
    size_t creating;                 /* the listener whose vhost lws is creating */
    /* Made at accept, handed to the wsi lws creates for it right after. */
    struct srv_conn *pending;
    /* Accepted connections open: counted against limits.max_connections, and loopback ones
     * past it that may only ask for /healthz or /metrics. */
    uint32_t conns_open, reserve_open;
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
    /* WebSocket connections lws read from this turn (see WS_READ_MORE_CONNS); an entry is
     * NULL once its connection closed. */
    struct ws_pss *read_more[WS_READ_MORE_CONNS];
    uint32_t n_read_more;
    /* The connection whose keep-alive transaction the last answer completed (see
     * srv_http_turn), or NULL. */
    struct lws *http_completed;
    struct lws_protocols protocols[3]; /* lws keeps the pointer */
};

/* Lists work for the end of this turn, which the loop then reaches without blocking. */
void srv_turn_add(struct hd_server *s, struct turn_link *head, struct turn_link *l);

static inline void turn_link_add(struct turn_link *head, struct turn_link *l)
{
    if (l->next)
        return;
    l->prev = head->prev;
    l->next = head;
    head->prev->next = l;
    head->prev = l;
}

static inline bool turn_empty(const struct turn_link *head)
{
    return head->next == head;
}

static inline void turn_del(struct turn_link *l)
{
    if (!l->next)
        return;
    l->prev->next = l->next;
    l->next->prev = l->prev;
    l->prev = l->next = NULL;
}

static inline struct turn_link *turn_pop(struct turn_link *head)
{
    struct turn_link *l = head->next;
    if (l == head)
        return NULL;
    turn_del(l);
    return l;
}

/*
 * The size of a reassembly buffer holding `need` bytes: the next power of two from 1 KiB,
 * at most `max` (but never under need). Growing by doubling keeps a message of many small
 * fragments from being copied once per fragment.
 */
static inline size_t srv_rx_capacity(size_t need, size_t max)
{
    size_t c = 1024;
    while (c < need)
        c *= 2;
    if (c > max)
        c = max;
    return c < need ? need : c;
}

/* Copies header t into out when present and shorter than cap. */
bool srv_copy_header(struct lws *wsi, enum lws_token_indexes t, char *out, int cap);

/*
 * A complete HTTP/1.1 error response with the JSON error body, written raw where lws would
 * not answer properly (it labels its own status line HTTP/1.0), with Retry-After on a 429
 * or 503. Returns its length, 0 when it does not fit.
 */
size_t srv_format_refusal(char *out, size_t cap, enum hd_err code, const char *message);
/* The same for a whole response the API filled (status, headers, body), with
 * `connection: close`. Returns its length, 0 when it does not fit. */
size_t srv_format_resp(char *out, size_t cap, const struct hd_http_resp *resp);

/*
 * The accept-to-destroy life of every TCP connection, whichever protocol lws routes it to
 * (the upgrade default makes that herald.v1 for some of these). True when handled, with
 * the callback's return value in *ret.
 */
bool srv_peer_lifecycle(struct hd_server *s, struct lws *wsi, enum lws_callback_reasons reason,
                        void *user, int *ret);

/* server_ws.c */
extern const struct lws_protocols srv_ws_protocol;
/* Reads again from the WebSocket connections lws read from this turn while their sockets hold
 * more, within WS_READ_MORE_BUDGET; empties the list. */
void srv_ws_read_more(struct hd_server *s);
/* Writes what every listed WebSocket connection has queued. */
void srv_ws_flush_all(struct hd_server *s);
/* Reads again from paused WebSocket publishers once they may go on. */
void srv_ws_resume(struct hd_server *s, uint64_t now_ns);

/* server.c: the accept-time limits for a connection heraldd accepted itself (tls: on a TLS
 * listener). 0: hand fd to lws; -1: refused (answered if plaintext), the caller closes fd. */
int srv_peer_accept(struct hd_server *s, bool tls, int fd, const struct sockaddr_storage *addr,
                    socklen_t len);
/* The connection srv_peer_accept (or lws's filter) let through last was not adopted by lws:
 * releases its count and its HTTP guard. */
void srv_peer_unadopted(struct hd_server *s);

/* server_activation.c: listening sockets passed by systemd (sd_listen_fds) */
/* How many sockets were passed (read once; LISTEN_FDS is then unset). */
int srv_activation_fds(void);
/* The passed listening socket whose address is listener l's (borrowed), or -1. */
int srv_activation_find(const struct hd_listener *l);
/* Warns about passed sockets no listener took. */
void srv_activation_unused(void);
/* The port a socket is bound to, or -1. */
int srv_activation_port(int fd);
/* Starts accepting on ls->fd into ls->vh (ls is s's, and must stay put); 0 or -EINVAL. */
int srv_activation_start(struct hd_server *s, struct srv_listen_sock *ls);
/* Stops accepting and closes the poll handle (the loop must run its close callback). */
void srv_activation_stop(struct srv_listen_sock *ls);

/* server_guard.c: HTTP/1.1 framing checked below lws (see hd_guard_recv in server.h) */
/* Takes the limits from cfg (borrowed for the call). */
void srv_guard_init(const struct hd_config *cfg);
/* The header buffer lws needs so that it never refuses a head the framing let through. */
unsigned srv_guard_lws_header_bytes(const struct hd_config *cfg);
/* Whether chunked request bodies reach heraldd (lws 4.3 hands them over raw and
 * server_http.c decodes them; false on 4.1: 411). */
bool srv_lws_decodes_chunked(void);
/* A connection was accepted on fd: checked from its first byte unless it is TLS. Returns
 * the token srv_guard_close wants (0: nothing to close). */
uint64_t srv_guard_open(int fd, bool tls);
/* The connection `token` is gone: its descriptor number may now be anyone's (libnats' socket
 * is read on the loop thread too, and must not be taken for an HTTP connection). A token
 * from an earlier connection on the same number is ignored. */
void srv_guard_close(int fd, uint64_t token);
/* True when the client sent more after its request, before the answer: answer, then close. */
bool srv_guard_pipelined(int fd);
/* The request on fd was answered and the connection stays open for the next one. */
void srv_guard_answered(int fd);

/* server_http.c */
extern const struct lws_protocols srv_http_protocol;
/* Acts on the request bodies completed this turn, unless publishers are held. */
void srv_http_turn(struct hd_server *s, uint64_t now_ns);

/* server_stream.c */
/* The watcher of held-open requests (SSE, waiting long polls) saw its epoll set ready. */
void srv_stream_on_ep_ready(uv_poll_t *h, int status, int events);

#endif
