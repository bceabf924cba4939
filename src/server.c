/* SPDX-License-Identifier: MIT */
/*
 * libwebsockets adapter: the context on the caller's libuv loop (epoll; lws installs no
 * signal handlers of its own), one vhost per listener, accept-time limits, and the end of
 * each loop turn, where queued frames are written and request bodies acted on. WebSocket
 * connections live in server_ws.c, HTTP requests in server_http.c, SSE streams and long polls
 * in server_stream.c.
 */
#include "server.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "api.h"
#include "log.h"
#include "peers.h"
#include "server_int.h"
#include "tls.h"

_Static_assert(HD_MSG_HEADROOM >= LWS_PRE, "message headroom must fit an lws frame header");

/* Nothing to do: an active idle handle only makes the loop poll without blocking. */
static void turn_idle_cb(uv_idle_t *h)
{
    (void)h;
}

void srv_turn_add(struct hd_server *s, struct turn_link *head, struct turn_link *l)
{
    turn_link_add(head, l);
    if (s->turn_started)
        uv_idle_start(&s->turn_idle, turn_idle_cb);
}

bool hd_server_failed(const struct hd_server *s)
{
    return !s || s->failed;
}

bool srv_copy_header(struct lws *wsi, enum lws_token_indexes t, char *out, int cap)
{
    int n = lws_hdr_total_length(wsi, t);
    if (n <= 0 || n >= cap)
        return false;
    return lws_hdr_copy(wsi, out, cap, t) >= 0;
}

size_t srv_format_resp(char *out, size_t cap, const struct hd_http_resp *resp)
{
    static const char *const reasons[] = {[400] = "Bad Request",
                                          [401] = "Unauthorized",
                                          [403] = "Forbidden",
                                          [404] = "Not Found",
                                          [405] = "Method Not Allowed",
                                          [411] = "Length Required",
                                          [413] = "Content Too Large",
                                          [414] = "URI Too Long",
                                          [426] = "Upgrade Required",
                                          [429] = "Too Many Requests",
                                          [431] = "Request Header Fields Too Large",
                                          [500] = "Internal Server Error",
                                          [503] = "Service Unavailable"};
    int status = resp->status >= 100 && resp->status < 600 ? resp->status : 500;
    const char *reason = status < (int)(sizeof(reasons) / sizeof(reasons[0])) && reasons[status]
                             ? reasons[status]
                             : "Error";
    int n = snprintf(out, cap, "HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %zu\r\n",
                     status, reason, resp->content_type ? resp->content_type : "application/json",
                     resp->body_len);
    for (size_t i = 0; i < resp->n_headers && n > 0 && (size_t)n < cap; i++)
        n += snprintf(out + n, cap - (size_t)n, "%s %s\r\n", resp->headers[i].name,
                      resp->headers[i].value);
    if (n > 0 && (size_t)n < cap)
        n += snprintf(out + n, cap - (size_t)n, "connection: close\r\nserver: heraldd\r\n\r\n");
    if (n < 0 || (size_t)n + resp->body_len >= cap)
        return 0;
    memcpy(out + n, resp->body, resp->body_len);
    return (size_t)n + resp->body_len;
}

size_t srv_format_refusal(char *out, size_t cap, enum hd_err code, const char *message)
{
    struct hd_http_resp resp = {0};
    hd_api_error(&resp, code, message);
    if (code == HD_ERR_RATE_LIMITED || code == HD_ERR_UNAVAILABLE)
        hd_http_resp_header(&resp, "retry-after:", "1");
    size_t n = srv_format_resp(out, cap, &resp);
    hd_http_resp_clear(&resp);
    return n;
}

static bool vhost_is_tls(const struct hd_server *s, const struct lws_vhost *vh)
{
    for (size_t i = 0; i < s->cfg->n_listeners && i < HD_MAX_LISTENERS; i++)
        if (s->vhosts[i] == vh)
            return s->cfg->listeners[i].tls_cert != NULL;
    return false;
}

static void conn_free(struct hd_server *s, struct srv_conn *c)
{
    if (c) {
        srv_guard_close(c->fd, c->guard);
        hd_broker_peer_close(s->broker, c->peer);
        free(c);
    }
}

static bool is_loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (ss->ss_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
    }
    return false;
}

/*
 * A new TCP connection, before lws reads a byte of it: it counts against
 * limits.max_connections (a loopback peer past it gets one of a few reserve places, for
 * health checks and metrics only) and against its address (limits.max_connections_per_ip).
 * A refused plaintext peer still gets a short 503 or 429 so a person with curl learns why;
 * a TLS peer just sees the connection close.
 */
static int peer_filter(struct hd_server *s, bool tls, const struct lws_filter_network_conn_args *a)
{
    srv_peer_unadopted(s); /* before the new guard: the two may share a descriptor number */
    uint64_t guard = srv_guard_open(a->accept_fd, tls);
    struct hd_error err = {0};
    const char *why = "max_connections";
    uint32_t max = s->cfg->limits.max_connections;
    struct srv_conn *c = calloc(1, sizeof(*c));
    if (!c) {
        hd_error_set(&err, HD_ERR_UNAVAILABLE, "out of memory");
        goto refuse;
    }
    c->fd = a->accept_fd;
    c->guard = guard;
    if (s->conns_open >= max) {
        if (!is_loopback(&a->cli_addr) || s->reserve_open >= SRV_RESERVE_CONNS) {
            hd_error_set(&err, HD_ERR_UNAVAILABLE,
                         "the server is at limits.max_connections (%u); try again later", max);
            hd_broker_metrics(s->broker)->connections_refused++;
            goto refuse;
        }
        c->reserve = true;
    }
    bool refused;
    c->peer = hd_broker_peer_open(s->broker, (const struct sockaddr *)&a->cli_addr, a->clilen,
                                  &refused, &err);
    if (!refused) {
        s->pending = c;
        return 0;
    }
    why = "per_ip_limit";
refuse:
    free(c);
    srv_guard_close(a->accept_fd, guard);
    /* One line a second at most: a flood must not turn into a log flood. */
    uint64_t now_s = hd_now_ns() / 1000000000u;
    s->refused_unlogged++;
    if (now_s != s->refused_logged_s) {
        hd_log_info("connection refused", "reason=%s count=%" PRIu64 " error=\"%s\"", why,
                    s->refused_unlogged, err.message);
        s->refused_logged_s = now_s;
        s->refused_unlogged = 0;
    }
    if (!tls) {
        char buf[1024];
        size_t n = srv_format_refusal(buf, sizeof(buf), err.code, err.message);
        /* Best effort into an empty socket buffer: never blocks, never raises SIGPIPE. */
        if (n && send(a->accept_fd, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
            hd_log_debug("refusal not sent", "errno=%d", errno);
    }
    return -1;
}

int srv_peer_accept(struct hd_server *s, bool tls, int fd, const struct sockaddr_storage *addr,
                    socklen_t len)
{
    struct lws_filter_network_conn_args a;
    memset(&a, 0, sizeof(a));
    a.cli_addr = *addr;
    a.clilen = len;
    a.accept_fd = fd;
    return peer_filter(s, tls, &a);
}

/* lws adopts a socket its filter let through in the same call (ops-listen.c, adopt.c), so a
 * pending connection still here after that call, or at the turn's end, was dropped: its count
 * and its guard go now, before anything else (libnats' next socket, say) gets that descriptor
 * number and has its reads taken for HTTP. */
void srv_peer_unadopted(struct hd_server *s)
{
    conn_free(s, s->pending);
    s->pending = NULL;
}

bool srv_peer_lifecycle(struct hd_server *s, struct lws *wsi, enum lws_callback_reasons reason,
                        void *user, int *ret)
{
    *ret = 0;
    switch (reason) {
    case LWS_CALLBACK_FILTER_NETWORK_CONNECTION:
        *ret = peer_filter(s, vhost_is_tls(s, lws_get_vhost(wsi)), user);
        return true;
    case LWS_CALLBACK_OPENSSL_LOAD_EXTRA_SERVER_VERIFY_CERTS:
        /* lws's one look at a vhost's SSL_CTX (user), while lws_create_vhost runs. */
        if (s->creating < HD_MAX_LISTENERS)
            s->ssl_ctx[s->creating] = user;
        return true;
    case LWS_CALLBACK_SERVER_NEW_CLIENT_INSTANTIATED: {
        /* The wsi's opaque pointer outlives the per-transaction pss and the upgrade. */
        struct srv_conn *c = s->pending;
        s->pending = NULL;
        lws_set_opaque_user_data(wsi, c);
        if (c)
            (*(c->reserve ? &s->reserve_open : &s->conns_open))++;
        return true;
    }
    case LWS_CALLBACK_WSI_DESTROY: {
        struct srv_conn *c = lws_get_opaque_user_data(wsi);
        if (c)
            (*(c->reserve ? &s->reserve_open : &s->conns_open))--;
        conn_free(s, c);
        lws_set_opaque_user_data(wsi, NULL);
        return true;
    }
    default:
        return false;
    }
}

/* Wakes the loop for publishes held by backpressure: the turn it ends runs on_turn_end,
 * which looks at them again. */
static void hold_timer_cb(uv_timer_t *t)
{
    (void)t;
}

/*
 * The end of a loop turn: first the rest of what WebSocket clients sent (lws read one chunk
 * of each), so pipelined publishes share this turn's writes; then every WebSocket connection
 * with frames queued (what the sockets take no longer counts against publishers), then
 * request bodies and paused WebSocket readers whose publishes may go now (they queue
 * frames), then those frames, so a burst read in one turn leaves in one write per
 * connection.
 */
static void on_turn_end(uv_check_t *h)
{
    struct hd_server *s = h->data;
    if (s->pending)
        srv_peer_unadopted(s);
    srv_ws_read_more(s);
    srv_ws_flush_all(s);
    uint64_t now = hd_now_ns();
    srv_http_turn(s, now);
    srv_ws_resume(s, now);
    srv_ws_flush_all(s);
    uv_idle_stop(&s->turn_idle);
    if (!turn_empty(&s->http_ready) || !turn_empty(&s->ws_paused))
        uv_timer_start(&s->hold_timer, hold_timer_cb, 2, 0);
}

/* --- Context ----------------------------------------------------------------------- */

enum { PROTO_HTTP, PROTO_WS };

/*
 * lws's own lines, at heraldd's debug level only its warnings (its notice and info levels
 * are a line per socket event, which buried heraldd's own records). Errors heraldd already
 * reports better itself, or that are not errors, are dropped.
 */
static void lws_logger(int level, const char *line)
{
    /* lws_http_mark_sse() on HTTP/1 calls lws_mux_mark_immortal(), which complains that
     * the connection is not an h2 stream: once per SSE stream, and harmless. */
    if (strstr(line, "not h2 substream"))
        return;
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == ' '))
        n--;
    hd_log(level & LLL_ERR ? HD_LOG_WARN : HD_LOG_DEBUG, "libwebsockets", "lws=\"%.*s\"", (int)n,
           line);
}

/* Why lws could not listen: it does not say, so the bind is tried once more to find out. */
static const char *bind_error(const char *address, unsigned port, char *buf, size_t cap)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai = NULL;
    char service[8];
    snprintf(service, sizeof(service), "%u", port);
    int r = getaddrinfo(address, service, &hints, &ai);
    if (r) {
        snprintf(buf, cap, "%s", gai_strerror(r));
        return buf;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0), e = 0;
    int one = 1;
    if (fd < 0)
        e = errno;
    else if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
             bind(fd, ai->ai_addr, ai->ai_addrlen) || listen(fd, 1))
        e = errno;
    if (fd >= 0)
        close(fd);
    freeaddrinfo(ai);
    snprintf(buf, cap, "%s", e ? strerror(e) : "libwebsockets could not set it up");
    return buf;
}

/* The lws context on s->loop, with the limits of s->cfg. 0, or -1 (logged). */
static int context_create(struct hd_server *s)
{
    const struct hd_config *cfg = s->cfg;
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof(info));
    void *foreign[] = {s->loop};
    info.options = LWS_SERVER_OPTION_LIBUV | LWS_SERVER_OPTION_EXPLICIT_VHOSTS |
                   LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
    info.foreign_loops = foreign;
    info.user = s;
    info.protocols = s->protocols;
    /* limits.max_header_bytes is enforced before lws parses (server_guard.c). */
    srv_guard_init(cfg);
    info.max_http_header_data = (unsigned short)srv_guard_lws_header_bytes(cfg);
    info.timeout_secs = cfg->limits.handshake_timeout_s;
    info.timeout_secs_ah_idle = cfg->limits.handshake_timeout_s;
    info.keepalive_timeout = 60;
    info.server_string = "heraldd";
    /* limits.max_connections is held at accept (peer_filter), where the connections past it
     * are answered: lws's fd table, which silently stops accepting when full, has room for
     * them, the reserve, the listeners, the store and lws's own descriptors. Bounded by
     * RLIMIT_NOFILE. */
    info.fd_limit_per_thread =
        cfg->limits.max_connections + SRV_RESERVE_CONNS + 64 + (unsigned)cfg->n_listeners;
    s->ctx = lws_create_context(&info);
    if (!s->ctx) {
        hd_log_error("cannot create the libwebsockets context",
                     "hint=\"is libwebsockets-evlib-uv installed?\"");
        return -1;
    }
    /* All zero: no lws validity timers (the broker's tick runs heartbeats, see broker.c). */
    s->retry = (lws_retry_bo_t){0};
    /* WebSocket upgrades without Sec-WebSocket-Protocol still land on herald.v1. */
    s->pvo_default = (struct lws_protocol_vhost_options){.name = "default", .value = ""};
    s->pvo = (struct lws_protocol_vhost_options){
        .name = "herald.v1", .options = &s->pvo_default, .value = ""};
    return 0;
}

/* A TLS listener's certificate, key and protocol in its vhost's creation info. */
static void vhost_tls(const struct hd_listener *l, struct lws_context_creation_info *vi)
{
    vi->options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
    vi->ssl_cert_filepath = l->tls_cert;
    vi->ssl_private_key_filepath = l->tls_key;
    /* HTTP/1.1 only: WebSocket over h2 and long-lived h2 streams are not worth the
     * idle-timer trouble in lws 4.1. */
    vi->alpn = "http/1.1";
}

/* Listener i's vhost creation info: its address (or, for a socket systemd passed, no listener
 * of lws's own), IP version, timeouts and TLS. */
static void vhost_info(struct hd_server *s, size_t i, struct lws_context_creation_info *vi)
{
    const struct hd_listener *l = &s->cfg->listeners[i];
    const struct srv_listen_sock *ls = &s->activated[i % HD_MAX_LISTENERS];
    memset(vi, 0, sizeof(*vi));
    /* lws keeps the pointer, not a copy. */
    snprintf(s->names[i % HD_MAX_LISTENERS], sizeof(s->names[0]), "listener%zu", i);
    vi->vhost_name = s->names[i % HD_MAX_LISTENERS];
    vi->port = l->port; /* 0: the kernel picks one (listener_start logs it) */
    vi->iface = l->address;
    if (ls->fd >= 0) {
        vi->port = CONTEXT_PORT_NO_LISTEN_SERVER;
        vi->iface = NULL;
    }
    vi->protocols = s->protocols;
    vi->pvo = &s->pvo;
    vi->retry_and_idle_policy = &s->retry;
    vi->options = LWS_SERVER_OPTION_FAIL_UPON_UNABLE_TO_BIND;
    if (strchr(l->address, ':'))
        vi->options |= LWS_SERVER_OPTION_IPV6_V6ONLY_MODIFY | LWS_SERVER_OPTION_IPV6_V6ONLY_VALUE;
    else
        vi->options |= LWS_SERVER_OPTION_DISABLE_IPV6;
    vi->keepalive_timeout = 60;
    vi->timeout_secs = s->cfg->limits.handshake_timeout_s;
    /* lws reads this per vhost (10 s when 0), not from the context. */
    vi->timeout_secs_ah_idle = s->cfg->limits.handshake_timeout_s;
    if (l->tls_cert)
        vhost_tls(l, vi);
}

/* Starts accepting on listener i, whose vhost is vh: on the socket systemd passed, or on lws's
 * own listener. 0, or -1 (logged). */
static int listener_start(struct hd_server *s, size_t i, struct lws_vhost *vh)
{
    const struct hd_listener *l = &s->cfg->listeners[i];
    struct srv_listen_sock *ls = &s->activated[i % HD_MAX_LISTENERS];
    if (ls->fd >= 0) {
        ls->vh = vh;
        if (srv_activation_start(s, ls)) {
            hd_log_error("cannot watch the socket systemd passed", "fd=%d", ls->fd);
            return -1;
        }
        hd_log_info("listening", "address=%s port=%d tls=%s from=systemd", l->address,
                    srv_activation_port(ls->fd), l->tls_cert ? "yes" : "no");
    } else {
        hd_log_info("listening", "address=%s port=%d tls=%s", l->address,
                    lws_get_vhost_listen_port(vh), l->tls_cert ? "yes" : "no");
    }
    if (l->tls_cert && !s->ssl_ctx[i % HD_MAX_LISTENERS])
        hd_log_warn("this TLS listener's certificate cannot be reloaded", "address=%s", l->address);
    return 0;
}

/* Listener i: its vhost (bound, unless systemd passed its socket) and accepting. 0, or -1
 * (logged). */
static int listener_open(struct hd_server *s, size_t i)
{
    const struct hd_listener *l = &s->cfg->listeners[i];
    /* A socket systemd passed for this address: heraldd accepts on it, lws listens on
     * nothing (server_activation.c). */
    struct srv_listen_sock *ls = &s->activated[i % HD_MAX_LISTENERS];
    ls->fd = srv_activation_find(l);
    ls->tls = l->tls_cert != NULL;
    struct lws_context_creation_info vi;
    vhost_info(s, i, &vi);
    s->creating = i; /* srv_peer_lifecycle records its SSL_CTX */
    struct lws_vhost *vh = lws_create_vhost(s->ctx, &vi);
    s->creating = SIZE_MAX;
    if (!vh) {
        char why[128], msg[300];
        snprintf(msg, sizeof(msg), "cannot listen on %s%s%s:%u: %s",
                 strchr(l->address, ':') ? "[" : "", l->address, strchr(l->address, ':') ? "]" : "",
                 l->port, bind_error(l->address, l->port, why, sizeof(why)));
        hd_log_error(msg, "address=%s port=%u", l->address, l->port);
        return -1;
    }
    s->vhosts[i % HD_MAX_LISTENERS] = vh;
    return listener_start(s, i, vh);
}

/* The epoll set held-open requests are watched in (server_stream.c), on the loop. 0, or -1
 * (logged). */
static int stream_watcher_start(struct hd_server *s)
{
    s->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (s->epfd < 0 || uv_poll_init(s->loop, &s->ep_watch, s->epfd)) {
        hd_log_error("cannot create the stream watcher", "errno=%d", errno);
        if (s->epfd >= 0)
            close(s->epfd);
        s->epfd = -1;
        return -1;
    }
    s->ep_watch.data = s;
    uv_poll_start(&s->ep_watch, UV_READABLE, srv_stream_on_ep_ready);
    s->ep_started = true;
    return 0;
}

/* The end-of-turn work (on_turn_end) on the loop. */
static void turn_end_start(struct hd_server *s)
{
    uv_check_init(s->loop, &s->turn_end);
    uv_idle_init(s->loop, &s->turn_idle);
    uv_timer_init(s->loop, &s->hold_timer);
    s->turn_end.data = s;
    uv_check_start(&s->turn_end, on_turn_end);
    s->turn_started = true;
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
    s->protocols[PROTO_HTTP] = srv_http_protocol;
    s->protocols[PROTO_WS] = srv_ws_protocol;
    lws_set_log_level(LLL_ERR | (hd_log_enabled(HD_LOG_DEBUG) ? LLL_WARN : 0), lws_logger);
    if (context_create(s)) {
        free(s);
        return NULL;
    }
    /* From here a failure returns s marked failed: the caller tears it down and exits. */
    for (size_t i = 0; i < cfg->n_listeners; i++) {
        if (listener_open(s, i)) {
            s->failed = true;
            return s;
        }
    }
    srv_activation_unused();
    if (stream_watcher_start(s)) {
        s->failed = true;
        return s;
    }
    turn_end_start(s);
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
    for (size_t i = 0; i < HD_MAX_LISTENERS; i++)
        srv_activation_stop(&s->activated[i]);
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
    conn_free(s, s->pending);
    free(s);
}
