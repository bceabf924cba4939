/* SPDX-License-Identifier: MIT */
/*
 * Check suite for the thread hand-off queue (src/handoff.c): order, bounded pops, the
 * wake-up rule (push says "wake" exactly when the consumer may be asleep), and several
 * producer threads racing one consumer without losing, repeating or reordering an item.
 */
#include "handoff.h"

#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

struct item {
    struct hd_handoff_node node; /* first: a node pointer is an item pointer */
    unsigned producer;
    unsigned long n;
};

START_TEST(order_and_bounds)
{
    struct hd_handoff q;
    struct item it[10];
    bool more = true;
    ck_assert_int_eq(hd_handoff_init(&q), 0);
    ck_assert_ptr_null(hd_handoff_pop(&q, 4, &more));
    ck_assert(!more);
    for (unsigned i = 0; i < 10; i++) {
        it[i].n = i;
        /* Only the first push finds the queue empty and asks for a wake-up. */
        ck_assert(hd_handoff_push(&q, &it[i].node) == (i == 0));
    }
    ck_assert_uint_eq(hd_handoff_count(&q), 10);
    /* A bounded pop takes the oldest four, in order, and says more remain. */
    struct hd_handoff_node *c = hd_handoff_pop(&q, 4, &more);
    ck_assert(more);
    unsigned k = 0;
    for (; c; c = c->next, k++)
        ck_assert_uint_eq(((struct item *)c)->n, k);
    ck_assert_uint_eq(k, 4);
    ck_assert_uint_eq(hd_handoff_count(&q), 6);
    /* max 0 takes nothing but reports what waits. */
    ck_assert_ptr_null(hd_handoff_pop(&q, 0, &more));
    ck_assert(more);
    /* Pushing onto a non-empty queue needs no wake-up (the consumer will come back). */
    struct item extra = {.n = 10};
    ck_assert(!hd_handoff_push(&q, &extra.node));
    c = hd_handoff_pop(&q, 100, &more);
    ck_assert(!more);
    for (; c; c = c->next, k++)
        ck_assert_uint_eq(((struct item *)c)->n, k);
    ck_assert_uint_eq(k, 11);
    ck_assert_uint_eq(hd_handoff_count(&q), 0);
    ck_assert_uint_eq(q.max_count, 10);
    /* Emptied, the next push asks for a wake-up again; and exactly-max pops say no more. */
    ck_assert(hd_handoff_push(&q, &it[0].node));
    ck_assert_ptr_eq(hd_handoff_pop(&q, 1, &more), &it[0].node);
    ck_assert(!more);
    hd_handoff_destroy(&q);
}
END_TEST

#define PRODUCERS 4
#define PER_PRODUCER 50000UL

struct race {
    struct hd_handoff q;
    struct item *items;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool woken;
    atomic_uint wakes;
};

struct producer {
    struct race *r;
    struct item *mine;
};

static void *produce(void *arg)
{
    struct race *r = ((struct producer *)arg)->r;
    struct item *mine = ((struct producer *)arg)->mine;
    for (unsigned long i = 0; i < PER_PRODUCER; i++) {
        if (hd_handoff_push(&r->q, &mine[i].node)) {
            atomic_fetch_add(&r->wakes, 1);
            pthread_mutex_lock(&r->lock);
            r->woken = true;
            pthread_cond_signal(&r->cond);
            pthread_mutex_unlock(&r->lock);
        }
    }
    return NULL;
}

/* The consumer sleeps whenever a pop leaves nothing behind and relies on push's answer to be
 * woken: if the wake-up rule were wrong, it would sleep forever (the test's timeout). */
START_TEST(threads_race)
{
    struct race r = {0};
    pthread_t th[PRODUCERS];
    struct producer args[PRODUCERS];
    unsigned long next[PRODUCERS] = {0}, total = 0;
    ck_assert_int_eq(hd_handoff_init(&r.q), 0);
    pthread_mutex_init(&r.lock, NULL);
    pthread_cond_init(&r.cond, NULL);
    r.items = calloc(PRODUCERS * PER_PRODUCER, sizeof(*r.items));
    ck_assert_ptr_nonnull(r.items);
    for (unsigned p = 0; p < PRODUCERS; p++) {
        args[p] = (struct producer){.r = &r, .mine = r.items + p * PER_PRODUCER};
        for (unsigned long i = 0; i < PER_PRODUCER; i++)
            args[p].mine[i] = (struct item){.producer = p, .n = i};
        ck_assert_int_eq(pthread_create(&th[p], NULL, produce, &args[p]), 0);
    }
    while (total < PRODUCERS * PER_PRODUCER) {
        bool more;
        pthread_mutex_lock(&r.lock);
        while (!r.woken)
            pthread_cond_wait(&r.cond, &r.lock);
        r.woken = false;
        pthread_mutex_unlock(&r.lock);
        do {
            struct hd_handoff_node *c = hd_handoff_pop(&r.q, 64, &more);
            size_t batch = 0;
            for (; c; c = c->next, batch++, total++) {
                struct item *it = (struct item *)c;
                ck_assert_uint_lt(it->producer, PRODUCERS);
                /* Each producer's items arrive in its order, none twice, none skipped. */
                ck_assert_uint_eq(it->n, next[it->producer]);
                next[it->producer]++;
            }
            ck_assert_uint_le(batch, 64);
        } while (more); /* a bounded pop that leaves items behind comes back by itself */
    }
    for (unsigned p = 0; p < PRODUCERS; p++) {
        pthread_join(th[p], NULL);
        ck_assert_uint_eq(next[p], PER_PRODUCER);
    }
    ck_assert_uint_eq(hd_handoff_count(&r.q), 0);
    ck_assert_uint_ge(atomic_load(&r.wakes), 1);
    free(r.items);
    pthread_cond_destroy(&r.cond);
    pthread_mutex_destroy(&r.lock);
    hd_handoff_destroy(&r.q);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("handoff");
    TCase *tc = tcase_create("handoff");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, order_and_bounds);
    tcase_add_test(tc, threads_race);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
