/* SPDX-License-Identifier: MIT */
/*
 * heraldd's recv(): libwebsockets calls recv() to read every plaintext connection, and the
 * definition in the executable is the one its library binds to, so each byte passes
 * hd_guard_recv (server_guard.c) first. Not in the core library: it would replace recv() in
 * every test program too.
 */
#include <sys/socket.h>

#include "server.h"

ssize_t recv(int fd, void *buf, size_t len, int flags)
{
    return hd_guard_recv(fd, buf, len, flags);
}
