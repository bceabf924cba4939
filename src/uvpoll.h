/* SPDX-License-Identifier: MIT */
/*
 * uvpoll: heraldd's uv_poll_start(), which changes an active poll handle's events with one
 * EPOLL_CTL_MOD instead of libuv's remove-and-add (see uvpoll.c). Linked into the daemon
 * executable only, which exports the symbol so that lws's libuv plugin binds to it.
 */
#ifndef HD_UVPOLL_H
#define HD_UVPOLL_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

/* Checks the libuv loaded at run time; false: every call goes to libuv's own. */
bool hd_uvpoll_init(void);

/* Calls that took the fast path (for tests). */
uint64_t hd_uvpoll_fast_total(void);

#endif
