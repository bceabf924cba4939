/* SPDX-License-Identifier: MIT */
/*
 * The NATS engine's connection (options, reconnects, the server's version, its I/O on our
 * loop) and the callbacks libnats runs on its own threads: they turn what they got into items
 * for the loop and never touch loop-owned state (engine_nats_int.h).
 */
#include "engine_nats_int.h"

/* libnats' own libuv adapter (it defines its functions: included by this file only). Its
 * socket reads happen on the loop; attach and interest changes asked for from another thread
 * (the reconnect thread, the worker's requests) reach the loop through its uv_async. */
#include <nats/adapters/libuv.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "natsid.h"

void ne_post(struct nats_engine *e, struct item *it)
{
    if (hd_handoff_push(&e->inbox, &it->node))
        uv_async_send(&e->async);
}

struct item *ne_item_new(enum item_kind kind)
{
    struct item *it = calloc(1, sizeof(*it));
    if (it)
        it->kind = kind;
    else
        hd_log_error("out of memory in the NATS engine", "where=item");
    return it;
}
/* Reads the INFO line a NATS server sends first on a plain TCP connection, for its version
 * (libnats 3.4 does not expose it). Bounded: 2 s, 8 KiB. Returns 0 with major/minor set. */
static int server_version(const char *url, int *major, int *minor, char *text, size_t cap)
{
    char host[256] = "", port[8] = "4222";
    const char *p = strstr(url, "://");
    p = p ? p + 3 : url;
    const char *at = strrchr(p, '@');
    if (at)
        p = at + 1;
    const char *end = *p == '[' ? strchr(p, ']') : NULL;
    const char *colon = end ? strchr(end, ':') : strrchr(p, ':');
    size_t hl = colon ? (size_t)(colon - p) : strlen(p);
    if (*p == '[') {
        p++;
        hl = end ? (size_t)(end - p) : hl;
    }
    if (hl == 0 || hl >= sizeof(host))
        return -EINVAL;
    memcpy(host, p, hl);
    if (colon)
        snprintf(port, sizeof(port), "%.5s", colon + 1);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
    if (getaddrinfo(host, port, &hints, &ai) != 0 || !ai)
        return -EHOSTUNREACH;
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int rc = fd < 0 ? -errno : 0;
    if (rc == 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS)
        rc = -errno;
    freeaddrinfo(ai);
    char buf[8192];
    size_t n = 0;
    while (rc == 0 && n < sizeof(buf) - 1 && !memchr(buf, '\n', n)) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, 2000) <= 0) {
            rc = -ETIMEDOUT;
            break;
        }
        ssize_t r = read(fd, buf + n, sizeof(buf) - 1 - n);
        if (r <= 0)
            rc = r < 0 ? -errno : -ECONNRESET;
        else
            n += (size_t)r;
    }
    if (fd >= 0)
        close(fd);
    if (rc < 0)
        return rc;
    buf[n] = '\0';
    return hd_natsid_info_version(buf, major, minor, text, cap);
}
static void on_conn(struct nats_engine *e, bool up)
{
    atomic_store(&e->connected_flag, up);
    struct item *it = ne_item_new(IT_CONN);
    if (!it)
        return;
    it->up = up;
    ne_post(e, it);
}

static void on_connected(natsConnection *nc, void *closure)
{
    on_conn(closure, true);
}

static void on_disconnected(natsConnection *nc, void *closure)
{
    on_conn(closure, false);
}

static void on_async_error(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure)
{
    struct nats_engine *e = closure;
    hd_log_warn("NATS reported an asynchronous error", "status=\"%s\"", natsStatus_GetText(err));
    /* The server holding our ordered consumer went away without our connection noticing
     * (we are connected to another one): attach a new consumer from where the feed stands.
     * Only JetStream subscriptions have heartbeats; a replay's ends on its own. */
    if (err == NATS_MISSED_HEARTBEAT) {
        struct item *it = ne_item_new(IT_DETACHED);
        if (it)
            ne_post(e, it);
    }
}

/* 0 when the server at `url` answers; warns when it is older than 2.10. */
static int check_server(const char *url)
{
    int major = 0, minor = 0;
    char ver[32] = "";
    if (server_version(url, &major, &minor, ver, sizeof(ver)) < 0)
        return -EHOSTUNREACH;
    if (major < 2 || (major == 2 && minor < 10))
        hd_log_warn("nats-server is older than 2.10: acknowledged events can be lost when a "
                    "stream leader dies; upgrade it",
                    "version=%s", ver);
    return 0;
}

void ne_warn_old_server(struct nats_engine *e)
{
    char url[256] = "";
    natsConnection_GetConnectedUrl(e->nc, url, sizeof(url));
    check_server(url);
}

int ne_connect(struct nats_engine *e, char *why, size_t why_len)
{
    natsStatus s;
    if (nats_Open(-1) != NATS_OK) {
        snprintf(why, why_len, "cannot initialise libnats");
        return -EIO;
    }
    natsLibuv_Init();
    natsLibuv_SetThreadLocalLoop(e->loop); /* this is the loop thread */
    s = natsOptions_Create(&e->opts);
    if (s == NATS_OK)
        s = natsOptions_SetEventLoop(e->opts, e->loop, natsLibuv_Attach, natsLibuv_Read,
                                     natsLibuv_Write, natsLibuv_Detach);
    /* Written as soon as the loop can: libnats' flusher thread would be woken per publish
     * and wake the loop back through the adapter (measured: about a tenth more CPU per
     * delivery at a steady 300 publishes/s). */
    if (s == NATS_OK)
        s = natsOptions_SetSendAsap(e->opts, true);
    if (s == NATS_OK)
        s = natsOptions_SetServers(e->opts, (const char **)e->servers, e->n_servers);
    if (s == NATS_OK) {
        char name[128];
        snprintf(name, sizeof(name), "heraldd %s", e->node);
        s = natsOptions_SetName(e->opts, name);
    }
    if (s == NATS_OK)
        s = natsOptions_SetMaxReconnect(e->opts, -1);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectWait(e->opts, 500);
    if (s == NATS_OK)
        s = natsOptions_SetPingInterval(e->opts, 2000);
    if (s == NATS_OK)
        s = natsOptions_SetMaxPingsOut(e->opts, 2);
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(e->opts, 2000);
    if (s == NATS_OK)
        s = natsOptions_SetDisconnectedCB(e->opts, on_disconnected, e);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectedCB(e->opts, on_connected, e);
    if (s == NATS_OK)
        s = natsOptions_SetErrorHandler(e->opts, on_async_error, e);
    if (s == NATS_OK && e->creds)
        s = natsOptions_SetUserCredentialsFromFiles(e->opts, e->creds, NULL);
    if (s == NATS_OK && e->ca)
        s = natsOptions_LoadCATrustedCertificates(e->opts, e->ca);
    if (s != NATS_OK) {
        const char *last = nats_GetLastError(NULL);
        snprintf(why, why_len, "NATS options: %s %s", natsStatus_GetText(s), last ? last : "");
        return -EINVAL;
    }
    /* Publishes are plain NATS publishes with a reply subject of ours, answered by JetStream
     * there and read on the loop: libnats' asynchronous JetStream publish would answer on its
     * own threads and wake a timer thread per publish. */
    snprintf(e->reply_prefix, sizeof(e->reply_prefix), "_INBOX.hd%s.", e->instance);
    ne_connect_try(e, -1); /* not connected: the worker's probe says when to try again */
    return 0;
}

/* libnats' libuv adapter must make a connection's first attach on the loop thread, so the
 * first connection is made here rather than by libnats' reconnect thread (RetryOnFailedConnect
 * would attach from there and fail); later reconnects are libnats' own. The worker's probe
 * (JOB_PROBE) says when and which server answers, so a server that is down costs the loop
 * nothing. */
int ne_connect_try(struct nats_engine *e, int first)
{
    /* natsConnection_Connect blocks the loop while it tries the servers: the one the probe
     * heard goes first, so a server that swallows connections (a dead host, a firewall)
     * costs the loop nothing. Without a probe (at start) libnats' random order stands. */
    if (first >= 0 && first < e->n_servers) {
        /* A rotated copy: the worker's next probe may be reading e->servers meanwhile. */
        const char **order = malloc((size_t)e->n_servers * sizeof(*order));
        if (!order)
            return -EAGAIN; /* the next probe tries again */
        for (int i = 0; i < e->n_servers; i++)
            order[i] = e->servers[(first + i) % e->n_servers];
        natsStatus s = natsOptions_SetServers(e->opts, order, e->n_servers);
        free(order);
        if (s != NATS_OK || natsOptions_SetNoRandomize(e->opts, true) != NATS_OK)
            return -EAGAIN;
    }
    natsConnection *nc = NULL;
    natsStatus s = natsConnection_Connect(&nc, e->opts);
    if (s != NATS_OK) {
        const char *last = nats_GetLastError(NULL);
        hd_log_debug("cannot connect to NATS yet", "status=\"%s\" detail=\"%s\"",
                     natsStatus_GetText(s), last ? last : "");
        return -EAGAIN;
    }
    e->nc = nc;
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = 3000; /* JetStream API calls: short, so that attaches retry soon during elections */
    s = natsConnection_JetStream(&e->js, e->nc, &jo);
    char acks[64];
    snprintf(acks, sizeof(acks), "%s*", e->reply_prefix);
    if (s == NATS_OK)
        s = natsConnection_SubscribeSync(&e->ack_sub, e->nc, acks);
    if (s == NATS_OK)
        s = natsSubscription_SetPendingLimits(e->ack_sub, MAX_INFLIGHT * 2, 1 << 30);
    if (s == NATS_OK)
        s = natsConnection_Subscribe(&e->status_sub, e->nc, e->status_subject, ne_on_status_request,
                                     e);
    if (s != NATS_OK) {
        hd_log_error("cannot set up the NATS connection", "status=\"%s\"", natsStatus_GetText(s));
        /* As if never connected: the next probe tries again from scratch. */
        natsSubscription_Destroy(e->ack_sub);
        natsSubscription_Destroy(e->status_sub);
        jsCtx_Destroy(e->js);
        natsConnection_Destroy(e->nc);
        e->ack_sub = e->status_sub = NULL;
        e->js = NULL;
        e->nc = NULL;
        return -EIO;
    }
    atomic_store(&e->connected_flag, true); /* after e->js: the worker reads it then */
    return 0;
}

int ne_probe_servers(struct nats_engine *e)
{
    for (int i = 0; i < e->n_servers; i++) {
        if (check_server(e->servers[i]) == 0)
            return i;
    }
    return -EHOSTUNREACH;
}
