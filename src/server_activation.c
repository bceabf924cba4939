/* SPDX-License-Identifier: MIT */
/*
 * Socket activation: listening sockets that systemd (heraldd.socket) or systemd-socket-activate
 * opened and passed (sd_listen_fds).
 *
 * libwebsockets cannot take over a listening socket: lws_create_vhost always makes its own
 * (socket, bind, listen in _lws_vhost_init_server_af, 4.1 and 4.3 alike), and
 * LWS_SERVER_OPTION_ADOPT_APPLY_LISTEN_ACCEPT_CONFIG only chooses the role and protocol of the
 * connections its own listener accepts. What lws can adopt is a connected socket
 * (lws_adopt_descriptor_vhost). So the listener's vhost is made without a listening socket
 * (CONTEXT_PORT_NO_LISTEN_SERVER: still a server, with its TLS context), and heraldd accepts
 * on the passed socket itself, applies the accept-time limits lws's listener would have asked
 * for (srv_peer_accept), and hands each connection to lws.
 */
#define _GNU_SOURCE /* accept4 */
#include "server_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "log.h"

/* Accepts per wake-up: other connections get their turn between batches. */
#define ACCEPT_BATCH 64

static int passed_n = -1; /* sd_listen_fds(), read once */
static bool taken[HD_MAX_LISTENERS];

int srv_activation_fds(void)
{
    if (passed_n < 0) {
        /* 1: unset LISTEN_FDS, so nothing heraldd starts takes them for its own. */
        int n = sd_listen_fds(1);
        passed_n = n > 0 ? (n > HD_MAX_LISTENERS ? HD_MAX_LISTENERS : n) : 0;
        if (n < 0)
            hd_log_warn("LISTEN_FDS is set but unusable; binding the listeners", "error=%d", n);
    }
    return passed_n;
}

/* The address and port of listener l, as the socket would report them. */
static bool listener_addr(const struct hd_listener *l, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, l->address, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons(l->port);
        return true;
    }
    if (inet_pton(AF_INET6, l->address, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(l->port);
        return true;
    }
    return false;
}

static bool same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return false;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
    return x->sin6_port == y->sin6_port &&
           memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
}

int srv_activation_find(const struct hd_listener *l)
{
    struct sockaddr_storage want;
    if (!srv_activation_fds() || !listener_addr(l, &want))
        return -1;
    for (int i = 0; i < passed_n; i++) {
        int fd = SD_LISTEN_FDS_START + i;
        struct sockaddr_storage have;
        socklen_t len = sizeof(have);
        if (taken[i] || sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, 1) <= 0 ||
            getsockname(fd, (struct sockaddr *)&have, &len))
            continue;
        /* Port 0 in the configuration takes whatever port the passed socket has. */
        if (l->port == 0) {
            if (have.ss_family == AF_INET)
                ((struct sockaddr_in *)&want)->sin_port = ((struct sockaddr_in *)&have)->sin_port;
            else if (have.ss_family == AF_INET6)
                ((struct sockaddr_in6 *)&want)->sin6_port =
                    ((struct sockaddr_in6 *)&have)->sin6_port;
        }
        if (same_addr(&want, &have)) {
            taken[i] = true;
            return fd;
        }
    }
    return -1;
}

void srv_activation_unused(void)
{
    for (int i = 0; i < passed_n; i++)
        if (!taken[i])
            hd_log_warn("systemd passed a socket that no listener names; it is not served",
                        "fd=%d hint=\"make ListenStream= match the listen addresses\"",
                        SD_LISTEN_FDS_START + i);
}

int srv_activation_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len))
        return -1;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return -1;
}

static void on_listen_ready(uv_poll_t *h, int status, int events)
{
    struct srv_listen_sock *ls = h->data;
    (void)events;
    if (status < 0)
        return;
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        int fd = accept4(ls->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                hd_log_debug("accept failed", "errno=%d", errno);
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (srv_peer_accept(ls->s, ls->tls, fd, &ss, len)) {
            close(fd);
            continue;
        }
        lws_sock_file_fd_type d = {.sockfd = fd};
        int type = LWS_ADOPT_SOCKET | LWS_ADOPT_HTTP | (ls->tls ? LWS_ADOPT_ALLOW_SSL : 0);
        /* On failure lws has closed fd. */
        if (!lws_adopt_descriptor_vhost(ls->vh, (lws_adoption_type)type, d, NULL, NULL)) {
            hd_log_debug("lws did not adopt an accepted connection", "fd=%d", fd);
            srv_peer_unadopted(ls->s);
        }
    }
}

int srv_activation_start(struct hd_server *s, struct srv_listen_sock *ls)
{
    ls->s = s;
    if (uv_poll_init(s->loop, &ls->poll, ls->fd))
        return -EINVAL;
    ls->poll.data = ls;
    ls->started = true;
    return uv_poll_start(&ls->poll, UV_READABLE, on_listen_ready) ? -EINVAL : 0;
}

void srv_activation_stop(struct srv_listen_sock *ls)
{
    if (ls->started) {
        uv_poll_stop(&ls->poll);
        uv_close((uv_handle_t *)&ls->poll, NULL);
        ls->started = false;
    }
}
