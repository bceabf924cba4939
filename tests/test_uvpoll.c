/* SPDX-License-Identifier: MIT */
/*
 * Check suite for heraldd's uv_poll_start (src/uvpoll.c): on a real libuv loop and a socket
 * pair, a poll handle sees writability exactly while it asks for it and readability whenever
 * it asks for it, epoll's registration (read back from /proc) follows the wanted events, a
 * change undone within one loop turn never reaches epoll, and stop, restart, close and a
 * reused descriptor number still behave as libuv documents.
 *
 * The fast path runs on libuv 1.44 only (Debian 12): elsewhere its cases are skipped, with the
 * reason printed, and one case checks that the override is off and polling still works.
 */
#include "uvpoll.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

struct seen {
    int calls;
    int events; /* union of what the callbacks saw */
};

static void on_poll(uv_poll_t *h, int status, int events)
{
    struct seen *s = h->data;
    ck_assert_int_eq(status, 0);
    s->calls++;
    s->events |= events;
}

/* One turn of the loop that does not block; what the callbacks saw during it. */
static struct seen turn(uv_loop_t *loop, uv_poll_t *h)
{
    struct seen *s = h->data;
    memset(s, 0, sizeof(*s));
    uv_run(loop, UV_RUN_NOWAIT);
    return *s;
}

/* The event mask epoll holds for fd, from /proc/self/fdinfo of the loop's epoll descriptor;
 * -1 when fd is not registered. */
static int epoll_mask(uv_loop_t *loop, int fd)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", uv_backend_fd(loop));
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    int mask = -1, tfd;
    unsigned ev;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "tfd: %d events: %x", &tfd, &ev) == 2 && tfd == fd)
            mask = (int)ev;
    fclose(f);
    return mask;
}

struct rig {
    uv_loop_t loop;
    uv_poll_t h;
    struct seen seen;
    int sv[2];
};

/* fast: whether the override is expected on (libuv 1.44) or off (any other). */
static void rig_open(struct rig *r, bool fast)
{
    ck_assert(hd_uvpoll_init() == fast);
    ck_assert_int_eq(uv_loop_init(&r->loop), 0);
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, r->sv), 0);
    ck_assert_int_eq(uv_poll_init(&r->loop, &r->h, r->sv[0]), 0);
    r->h.data = &r->seen;
}

static void rig_close(struct rig *r)
{
    uv_close((uv_handle_t *)&r->h, NULL);
    uv_run(&r->loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(uv_loop_close(&r->loop), 0);
    close(r->sv[0]);
    close(r->sv[1]);
}

/* The cases below read libuv 1.44's internals (a plain two-pointer watcher_queue; 1.45 made
 * it a struct uv__queue), so they are compiled only where the fast path is. */
#if defined(__linux__) && UV_VERSION_MAJOR == 1 && UV_VERSION_MINOR == 44
#define FAST_PATH_CASES 1

START_TEST(writable_only_while_asked)
{
    struct rig r;
    rig_open(&r, true);
    ck_assert_int_eq(uv_poll_start(&r.h, UV_READABLE, on_poll), 0);
    ck_assert_int_eq(turn(&r.loop, &r.h).calls, 0); /* nothing to read, write not asked */
    ck_assert_int_eq(epoll_mask(&r.loop, r.sv[0]) & (EPOLLIN | EPOLLOUT), EPOLLIN);

    uint64_t fast = hd_uvpoll_fast_total();
    ck_assert_int_eq(uv_poll_start(&r.h, UV_READABLE | UV_WRITABLE, on_poll), 0);
    ck_assert_uint_eq(hd_uvpoll_fast_total(), fast + 1); /* an active handle: the fast path */
    struct seen s = turn(&r.loop, &r.h);
    ck_assert_int_eq(s.calls, 1);
    ck_assert_int_eq(s.events, UV_WRITABLE);
    ck_assert_int_eq(epoll_mask(&r.loop, r.sv[0]) & (EPOLLIN | EPOLLOUT), EPOLLIN | EPOLLOUT);

    ck_assert_int_eq(uv_poll_start(&r.h, UV_READABLE, on_poll), 0);
    ck_assert_int_eq(turn(&r.loop, &r.h).calls, 0);
    ck_assert_int_eq(epoll_mask(&r.loop, r.sv[0]) & (EPOLLIN | EPOLLOUT), EPOLLIN);

    /* Readable arrives as readable alone: writability is no longer reported. */
    ck_assert_int_eq(write(r.sv[1], "x", 1), 1);
    s = turn(&r.loop, &r.h);
    ck_assert_int_eq(s.calls, 1);
    ck_assert_int_eq(s.events, UV_READABLE);
    char c;
    ck_assert_int_eq(read(r.sv[0], &c, 1), 1);
    rig_close(&r);
}
END_TEST

START_TEST(undone_within_a_turn)
{
    struct rig r;
    rig_open(&r, true);
    ck_assert_int_eq(uv_poll_start(&r.h, UV_READABLE, on_poll), 0);
    turn(&r.loop, &r.h);
    /* On and off before the loop polls again: epoll never hears of it, nothing fires. */
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(uv_poll_start(&r.h, UV_READABLE | UV_WRITABLE, on_poll), 0);
        ck_assert_int_eq(uv_poll_start(&r.h, UV_READABLE, on_poll), 0);
    }
    /* No change is queued for the next epoll_wait (libuv's watcher queue is empty). */
    ck_assert_ptr_eq(r.loop.watcher_queue[0], &r.loop.watcher_queue);
    ck_assert_int_eq(turn(&r.loop, &r.h).calls, 0);
    ck_assert_int_eq(epoll_mask(&r.loop, r.sv[0]) & (EPOLLIN | EPOLLOUT), EPOLLIN);
    /* The same request twice is one change. */
    ck_assert_int_eq(uv_poll_start(&r.h, UV_WRITABLE, on_poll), 0);
    ck_assert_int_eq(uv_poll_start(&r.h, UV_WRITABLE, on_poll), 0);
    struct seen s = turn(&r.loop, &r.h);
    ck_assert_int_eq(s.calls, 1);
    ck_assert_int_eq(s.events, UV_WRITABLE);
    ck_assert_int_eq(epoll_mask(&r.loop, r.sv[0]) & (EPOLLIN | EPOLLOUT), EPOLLOUT);
    /* Write-only does not report data waiting. */
    ck_assert_int_eq(write(r.sv[1], "x", 1), 1);
    s = turn(&r.loop, &r.h);
    ck_assert_int_eq(s.events, UV_WRITABLE);
    rig_close(&r);
}
END_TEST

START_TEST(stop_restart_and_libuv_cases)
{
    struct rig r;
    rig_open(&r, true);
    uint64_t fast = hd_uvpoll_fast_total();
    /* A handle not yet started goes to libuv. */
    ck_assert_int_eq(uv_poll_start(&r.h, UV_READABLE, on_poll), 0);
    ck_assert_uint_eq(hd_uvpoll_fast_total(), fast);
    /* Events beyond read and write go to libuv. */
    ck_assert_int_eq(uv_poll_start(&r.h, UV_READABLE | UV_DISCONNECT, on_poll), 0);
    ck_assert_uint_eq(hd_uvpoll_fast_total(), fast);
    turn(&r.loop, &r.h);
    ck_assert_int_eq(uv_poll_start(&r.h, UV_WRITABLE, on_poll), 0);
    ck_assert_uint_eq(hd_uvpoll_fast_total(), fast + 1);
    /* Stopped with a change still queued: epoll forgets the descriptor, nothing fires. */
    ck_assert_int_eq(uv_poll_stop(&r.h), 0);
    ck_assert_int_eq(turn(&r.loop, &r.h).calls, 0);
    ck_assert_int_eq(epoll_mask(&r.loop, r.sv[0]), -1);
    /* Restarted (libuv's path again), it works as new. */
    ck_assert_int_eq(uv_poll_start(&r.h, UV_READABLE | UV_WRITABLE, on_poll), 0);
    ck_assert_uint_eq(hd_uvpoll_fast_total(), fast + 1);
    struct seen s = turn(&r.loop, &r.h);
    ck_assert_int_eq(s.events, UV_WRITABLE);
    rig_close(&r);
}
END_TEST

START_TEST(reused_descriptor)
{
    /* Close a polled descriptor with a change queued, then poll the socket that reuses its
     * number: the new handle sees only its own events. */
    struct rig a;
    rig_open(&a, true);
    ck_assert_int_eq(uv_poll_start(&a.h, UV_READABLE, on_poll), 0);
    turn(&a.loop, &a.h);
    ck_assert_int_eq(uv_poll_start(&a.h, UV_READABLE | UV_WRITABLE, on_poll), 0);
    int fd = a.sv[0];
    ck_assert_int_eq(uv_poll_stop(&a.h), 0);
    uv_close((uv_handle_t *)&a.h, NULL);
    close(a.sv[0]);
    close(a.sv[1]);
    int sv[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    ck_assert_int_eq(sv[0], fd); /* the lowest free number: the one just closed */
    uv_poll_t h2;
    struct seen seen2;
    ck_assert_int_eq(uv_poll_init(&a.loop, &h2, sv[0]), 0);
    h2.data = &seen2;
    ck_assert_int_eq(uv_poll_start(&h2, UV_READABLE, on_poll), 0);
    ck_assert_int_eq(turn(&a.loop, &h2).calls, 0);
    ck_assert_int_eq(write(sv[1], "y", 1), 1);
    struct seen s = turn(&a.loop, &h2);
    ck_assert_int_eq(s.calls, 1);
    ck_assert_int_eq(s.events, UV_READABLE);
    uv_close((uv_handle_t *)&h2, NULL);
    uv_run(&a.loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(uv_loop_close(&a.loop), 0);
    close(sv[0]);
    close(sv[1]);
}
END_TEST

#else
#define FAST_PATH_CASES 0
#endif

START_TEST(override_off_elsewhere)
{
    /* Not libuv 1.44 (or not the one loaded): every call is libuv's own, which still polls. */
    struct rig r;
    rig_open(&r, false);
    ck_assert_int_eq(uv_poll_start(&r.h, UV_READABLE, on_poll), 0);
    ck_assert_int_eq(turn(&r.loop, &r.h).calls, 0);
    ck_assert_int_eq(epoll_mask(&r.loop, r.sv[0]) & (EPOLLIN | EPOLLOUT), EPOLLIN);
    ck_assert_int_eq(uv_poll_start(&r.h, UV_READABLE | UV_WRITABLE, on_poll), 0);
    struct seen s = turn(&r.loop, &r.h);
    ck_assert_int_eq(s.calls, 1);
    ck_assert_int_eq(s.events, UV_WRITABLE);
    ck_assert_int_eq(write(r.sv[1], "x", 1), 1);
    ck_assert_int_eq(uv_poll_start(&r.h, UV_READABLE, on_poll), 0);
    s = turn(&r.loop, &r.h);
    ck_assert_int_eq(s.events, UV_READABLE);
    ck_assert_uint_eq(hd_uvpoll_fast_total(), 0);
    rig_close(&r);
}
END_TEST

static Suite *uvpoll_suite(bool fast)
{
    Suite *s = suite_create("uvpoll");
    TCase *tc = tcase_create("uvpoll");
#if FAST_PATH_CASES
    if (fast) {
        tcase_add_test(tc, writable_only_while_asked);
        tcase_add_test(tc, undone_within_a_turn);
        tcase_add_test(tc, stop_restart_and_libuv_cases);
        tcase_add_test(tc, reused_descriptor);
    }
#endif
    if (!fast)
        tcase_add_test(tc, override_off_elsewhere);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    bool fast = hd_uvpoll_init();
    if (!fast)
        printf("test_uvpoll: SKIPPED the fast-path cases: the uv_poll_start override runs on "
               "libuv 1.44 only (built against %d.%d, running %s); checking it is off instead\n",
               UV_VERSION_MAJOR, UV_VERSION_MINOR, uv_version_string());
    SRunner *sr = srunner_create(uvpoll_suite(fast));
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
