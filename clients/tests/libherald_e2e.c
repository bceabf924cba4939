/* SPDX-License-Identifier: MIT */
/*
 * End-to-end driver for libherald against a running heraldd, used by
 * tests/integration/test_cli.py (and run there under valgrind too). Two scenarios the CLI does
 * not reach:
 *   threads URL T N   T threads publish N events each through one shared client (synchronous
 *                     calls from many threads) while an on_event subscriber counts them via
 *                     herald_process(): every event exactly once, in order per publisher.
 *   slow URL N SIZE   a consumer that stops reading (a tiny event queue) so the server closes
 *                     it as a slow consumer (4000) and it resumes; N events published with the
 *                     asynchronous API must all arrive, in order, once, with no gap.
 * Prints "ok ..." and exits 0, or prints what went wrong and exits 1.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "herald.h"

#define MAX_THREADS 16

static int fail(const char *what, const herald_error *e)
{
    printf("FAIL %s: %s\n", what, e ? e->message : "");
    return 1;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- threads ------------------------------------------------------------------------------ */

struct counts {
    long next[MAX_THREADS]; /* next expected data value per publisher thread */
    long total, bad;
};

static void count_event(herald_client *c, const herald_event *ev, void *user)
{
    struct counts *k = user;
    (void)c;
    if (ev->type != HERALD_EV_EVENT)
        return;
    int t = atoi(ev->topic + 3); /* "mt.<t>" */
    long v = atol(ev->data + 1); /* "\"<i>\"" */
    if (t < 0 || t >= MAX_THREADS || v != k->next[t]) {
        if (k->bad++ < 5)
            printf("unexpected %s %s (wanted %ld)\n", ev->topic, ev->data,
                   t >= 0 && t < MAX_THREADS ? k->next[t] : -1L);
    } else {
        k->next[t]++;
    }
    k->total++;
}

struct pub_arg {
    herald_client *c;
    int t, n;
    int rc;
};

static void *publisher(void *arg)
{
    struct pub_arg *a = arg;
    char topic[32], data[32], id[HERALD_ID_SIZE], prev[HERALD_ID_SIZE] = "";
    snprintf(topic, sizeof(topic), "mt.%d", a->t);
    for (int i = 0; i < a->n; i++) {
        herald_error e;
        snprintf(data, sizeof(data), "%d", i);
        if (herald_publish_text(a->c, topic, NULL, data, 10000, id, &e) != 0) {
            a->rc = fail("publish", &e);
            return NULL;
        }
        if (strcmp(id, prev) <= 0) {
            printf("FAIL ids not increasing: %s after %s\n", id, prev);
            a->rc = 1;
            return NULL;
        }
        memcpy(prev, id, sizeof(prev));
    }
    return NULL;
}

static void *poker(void *arg)
{
    herald_client *c = arg;
    char cur[HERALD_ID_SIZE];
    for (int i = 0; i < 50; i++) {
        herald_ping(c, 5000, NULL);
        herald_subscription_cursor(c, "mt.>", cur);
        (void)herald_connected(c);
    }
    return NULL;
}

static int run_threads(const char *url, int nthreads, int each)
{
    struct counts k = {.total = 0};
    herald_options *o = herald_options_new();
    if (!o || herald_options_set_event_callback(o, count_event, &k) != 0)
        return fail("options", NULL);
    herald_error e;
    herald_client *sub = herald_connect(url, o, &e);
    herald_options_free(o);
    if (!sub)
        return fail("connect subscriber", &e);
    if (herald_subscribe(sub, "mt.>", NULL, 10000, NULL, &e) != 0)
        return fail("subscribe", &e);
    herald_client *pub = herald_connect(url, NULL, &e);
    if (!pub)
        return fail("connect publisher", &e);

    pthread_t th[MAX_THREADS + 1];
    struct pub_arg args[MAX_THREADS];
    for (int t = 0; t < nthreads; t++) {
        args[t] = (struct pub_arg){.c = pub, .t = t, .n = each};
        pthread_create(&th[t], NULL, publisher, &args[t]);
    }
    pthread_create(&th[nthreads], NULL, poker, sub);
    long want = (long)nthreads * each;
    double deadline = now_s() + 120;
    while (k.total < want && now_s() < deadline)
        if (herald_process(sub, 200) < 0)
            break;
    int rc = 0;
    for (int t = 0; t <= nthreads; t++)
        pthread_join(th[t], NULL);
    for (int t = 0; t < nthreads; t++)
        rc |= args[t].rc;
    herald_process(sub, 300); /* anything extra would be a duplicate */
    herald_close(pub);
    herald_close(sub);
    if (rc || k.bad || k.total != want) {
        printf("FAIL received %ld of %ld, %ld out of order\n", k.total, want, k.bad);
        return 1;
    }
    printf("ok received=%ld\n", k.total);
    return 0;
}

/* ---- slow consumer ------------------------------------------------------------------------ */

struct slow {
    herald_client *c;
    int n;
    int got, disconnects, gaps, bad;
    /* Set by the publisher once every publish was answered (or it gave up). */
    pthread_mutex_t mu;
    pthread_cond_t published;
    int publishing_done;
};

static void *consumer(void *arg)
{
    struct slow *s = arg;
    /* Fall behind on purpose: read nothing until all N events (far more bytes than the
     * socket buffers and the server's queue hold) were accepted, so the server must have cut
     * this connection off. A fixed head start instead left it to the machine's speed: a
     * publisher slowed by load published too little in it and the cut never came. */
    pthread_mutex_lock(&s->mu);
    while (!s->publishing_done)
        pthread_cond_wait(&s->published, &s->mu);
    pthread_mutex_unlock(&s->mu);
    double deadline = now_s() + 300;
    while (s->got < s->n && now_s() < deadline) {
        herald_event *ev;
        int r = herald_next_event(s->c, &ev, 1000);
        if (r == HERALD_E_TIMEOUT)
            continue;
        if (r)
            break;
        if (ev->type == HERALD_EV_EVENT) {
            /* data is {"i":<n>,"pad":"..."} */
            const char *p = strstr(ev->data, "\"i\":");
            long v = p ? atol(p + 4) : -1;
            if (v != s->got && s->bad++ < 5)
                printf("unexpected event %ld, wanted %d\n", v, s->got);
            s->got++;
        } else if (ev->type == HERALD_EV_DISCONNECTED) {
            s->disconnects++;
        } else if (ev->type == HERALD_EV_GAP) {
            s->gaps++;
            printf("gap: %s\n", ev->error.message);
        }
        herald_event_free(ev);
    }
    return NULL;
}

struct pub_state {
    int done, failed;
};

static void on_published(herald_client *c, const herald_reply *r, void *arg)
{
    struct pub_state *p = arg;
    (void)c;
    p->done++;
    if (r->status != 0 && p->failed++ < 3)
        printf("publish failed: %s\n", r->error.message);
}

static int run_slow(const char *url, int n, int size)
{
    herald_options *o = herald_options_new();
    if (!o || herald_options_set_queue_limits(o, 50, 0) != 0 ||
        herald_options_set_backoff(o, 50, 30000) != 0)
        return fail("options", NULL);
    herald_error e;
    struct slow s = {
        .n = n, .mu = PTHREAD_MUTEX_INITIALIZER, .published = PTHREAD_COND_INITIALIZER};
    s.c = herald_connect(url, o, &e);
    herald_options_free(o);
    if (!s.c)
        return fail("connect consumer", &e);
    if (herald_subscribe(s.c, "slow", NULL, 10000, NULL, &e) != 0)
        return fail("subscribe", &e);
    herald_client *pub = herald_connect(url, NULL, &e);
    if (!pub)
        return fail("connect publisher", &e);
    pthread_t th;
    pthread_create(&th, NULL, consumer, &s);

    char *data = malloc((size_t)size + 64);
    char *pad = malloc((size_t)size + 1);
    if (!data || !pad)
        return fail("out of memory", NULL);
    memset(pad, 'p', (size_t)size);
    pad[size] = '\0';
    struct pub_state ps = {0};
    int sent = 0;
    double deadline = now_s() + 300;
    while (ps.done < n && now_s() < deadline) {
        while (sent < n && sent - ps.done < 128) {
            snprintf(data, (size_t)size + 64, "{\"i\":%d,\"pad\":\"%s\"}", sent, pad);
            if (herald_publish_async(pub, "slow", NULL, data, on_published, &ps, &e) != 0) {
                printf("FAIL publish_async: %s\n", e.message);
                break;
            }
            sent++;
        }
        if (herald_process(pub, 1000) < 0)
            break;
    }
    free(data);
    free(pad);
    pthread_mutex_lock(&s.mu);
    s.publishing_done = 1;
    pthread_cond_signal(&s.published);
    pthread_mutex_unlock(&s.mu);
    pthread_join(th, NULL);
    herald_close(pub);
    herald_close(s.c);
    if (ps.failed || ps.done != n || s.got != n || s.bad || s.gaps) {
        printf("FAIL published %d (%d failed), received %d of %d, %d out of order, %d gaps\n",
               ps.done, ps.failed, s.got, n, s.bad, s.gaps);
        return 1;
    }
    printf("ok received=%d reconnects=%d\n", s.got, s.disconnects);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 5 && strcmp(argv[1], "threads") == 0) {
        int t = atoi(argv[3]);
        if (t < 1 || t > MAX_THREADS)
            return 2;
        return run_threads(argv[2], t, atoi(argv[4]));
    }
    if (argc == 5 && strcmp(argv[1], "slow") == 0)
        return run_slow(argv[2], atoi(argv[3]), atoi(argv[4]));
    fprintf(stderr, "usage: libherald_e2e threads URL THREADS EACH | slow URL N SIZE\n");
    return 2;
}
