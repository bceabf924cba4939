/* SPDX-License-Identifier: MIT */
/*
 * uv_poll_start() without the epoll churn.
 *
 * libuv's uv_poll_start() always stops the handle first: it removes the descriptor from epoll
 * at once (EPOLL_CTL_DEL) and adds it back at the next loop turn (EPOLL_CTL_ADD), even when
 * only POLLOUT changes or nothing changes at all (libuv issue #2201). lws's libuv event lib
 * calls it for every change of a connection's wanted events, and an HTTP/1.1 keep-alive
 * request makes several (lws waits for POLLOUT before it reads the next request): strace
 * counted 6 epoll_ctl per request, about a tenth of the server's time when publishing over
 * HTTP.
 *
 * heraldd exports its own uv_poll_start, which the lws event-lib plugin binds to. When the
 * handle is already polling its descriptor it changes the wanted events the way libuv's own
 * streams do (uv__io_start / uv__io_stop): the watcher goes on the loop's watcher queue and
 * the next turn issues one EPOLL_CTL_MOD, or nothing when the change is undone within the
 * turn. Every other case, and any libuv whose internals were not checked, goes to libuv's.
 *
 * The fields used (uv_poll_t.io_watcher, uv_loop_t.watcher_queue and .watchers) are in
 * libuv's installed headers; how uv__io_poll() consumes the watcher queue is libuv 1.44's
 * (Debian 12), which is the only version the fast path runs on.
 */
#define _GNU_SOURCE
#include "uvpoll.h"

#include <dlfcn.h>
#include <poll.h>
#include <stdbool.h>

typedef int (*poll_start_fn)(uv_poll_t *, int, uv_poll_cb);

static poll_start_fn libuv_poll_start;
static bool fast_ok;
static uint64_t fast_total;

#if defined(__linux__) && UV_VERSION_MAJOR == 1 && UV_VERSION_MINOR == 44
#define UVPOLL_BUILT 1
#else
#define UVPOLL_BUILT 0
#endif

static poll_start_fn resolve(void)
{
    if (!libuv_poll_start)
        libuv_poll_start = (poll_start_fn)dlsym(RTLD_NEXT, "uv_poll_start");
    return libuv_poll_start;
}

bool hd_uvpoll_init(void)
{
    unsigned v = uv_version();
    fast_ok = UVPOLL_BUILT && resolve() && (v >> 8) == ((1u << 8) | 44u);
    return fast_ok;
}

uint64_t hd_uvpoll_fast_total(void)
{
    return fast_total;
}

#if UVPOLL_BUILT
/* libuv's intrusive queue (its src/queue.h) over the void *[2] fields of its headers. */
typedef void *uvq[2];
#define Q_NEXT(q) (*(uvq **)&((*(q))[0]))
#define Q_PREV(q) (*(uvq **)&((*(q))[1]))

static bool q_empty(uvq *q)
{
    return q == Q_NEXT(q);
}

static void q_remove(uvq *q)
{
    Q_NEXT(Q_PREV(q)) = Q_NEXT(q);
    Q_PREV(Q_NEXT(q)) = Q_PREV(q);
    Q_NEXT(q) = q;
    Q_PREV(q) = q;
}

static void q_insert_tail(uvq *h, uvq *q)
{
    Q_NEXT(q) = h;
    Q_PREV(q) = Q_PREV(h);
    Q_NEXT(Q_PREV(q)) = q;
    Q_PREV(h) = q;
}

/* The handle polls its descriptor now: started, not closing, and the loop's watcher for it. */
static bool polling(uv_poll_t *h)
{
    uv__io_t *w = &h->io_watcher;
    uv_loop_t *loop = h->loop;
    return uv_is_active((uv_handle_t *)h) && !uv_is_closing((uv_handle_t *)h) && w->fd >= 0 &&
           (unsigned)w->fd < loop->nwatchers && loop->watchers[w->fd] == w && w->pevents;
}
#endif

int uv_poll_start(uv_poll_t *h, int events, uv_poll_cb cb)
{
#if UVPOLL_BUILT
    /* Only plain read/write changes; disconnect and priority go through libuv. */
    if (fast_ok && events && !(events & ~(UV_READABLE | UV_WRITABLE)) && polling(h)) {
        uv__io_t *w = &h->io_watcher;
        unsigned pe = (events & UV_READABLE ? POLLIN : 0) | (events & UV_WRITABLE ? POLLOUT : 0);
        h->poll_cb = cb;
        fast_total++;
        if (pe == w->pevents)
            return 0;
        w->pevents = pe;
        uvq *wq = &w->watcher_queue;
        if (pe == w->events) { /* back to what epoll has: nothing to tell it */
            if (!q_empty(wq))
                q_remove(wq);
        } else if (q_empty(wq)) {
            q_insert_tail(&h->loop->watcher_queue, wq);
        }
        return 0;
    }
#endif
    poll_start_fn real = resolve();
    return real ? real(h, events, cb) : UV_ENOSYS;
}
