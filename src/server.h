/* SPDX-License-Identifier: MIT */
/*
 * The network transport: libwebsockets on the caller's libuv loop, one vhost per listener,
 * serving WebSocket (/v1/ws, subprotocol herald.v1) and the HTTP API on the same port. Only
 * lws callbacks live here; every decision is the broker's or the API module's.
 */
#ifndef HD_SERVER_H
#define HD_SERVER_H

#include <stdbool.h>
#include <sys/types.h>
#include <uv.h>

#include "broker.h"
#include "config.h"

struct hd_server;

/*
 * Creates the lws context on `loop` and binds every listener in cfg (borrowed, must
 * outlive the server). Logs one `msg="listening"` line per bound listener. Returns NULL
 * when lws cannot start at all; when a listener cannot be bound it returns the server with
 * hd_server_failed() true, to be torn down like a running one (destroy, run, free).
 */
struct hd_server *hd_server_new(uv_loop_t *loop, struct hd_broker *b, const struct hd_config *cfg);
bool hd_server_failed(const struct hd_server *s);

/*
 * SIGHUP for the transport: rereads every TLS listener's certificate and key (from `next`
 * where it has the same listener, borrowed for the call only) and installs them for new
 * handshakes. All files are loaded and checked before any is installed, so on failure
 * (returned as -EINVAL with the reason in err) every listener keeps its current
 * certificate. Listener additions, removals and moves are logged and wait for a restart.
 */
int hd_server_reload(struct hd_server *s, const struct hd_config *next, char *err, size_t cap);

/* Starts the clean stop: the broker closes its clients; the server then winds lws down. */
void hd_server_drain(struct hd_server *s);

/* Destroys the lws context; call, then run the loop until idle, then hd_server_free. */
void hd_server_destroy(struct hd_server *s);
void hd_server_free(struct hd_server *s);

/*
 * recv() for the sockets lws reads (recvguard.c makes it heraldd's recv): a plaintext HTTP
 * connection's bytes are checked (h1frame.c) before lws parses them, and what lws cannot
 * parse is answered here. Other sockets and flags go straight to the kernel. Returns as
 * recv() does; -1 with EAGAIN when all that arrived was dropped or answered.
 */
ssize_t hd_guard_recv(int fd, void *buf, size_t len, int flags);

#endif
