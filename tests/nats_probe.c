/* SPDX-License-Identifier: MIT */
/*
 * Drives the NATS engine alone, without the broker, against real nats-servers
 * (tests/integration/test_engine_nats.py starts them): publishes events, follows the feed
 * and prints one JSON line per happening so the test can check ids, order, acks, gaps and
 * readiness. Commands come on stdin, one per line, so a test can interleave them with
 * killing servers:
 *   pub N [TOPIC [KEY]]  publish N events (KEY: the same key each time)
 *   wait-acks            print {"acked":..} once every publish so far is answered
 *   replay PATTERN AFTER UPTO   (ids in hex) print the replay's result
 *   status ID            gather delivery status from the other nodes
 *   quit
 * Output lines: {"ready":true|false}, {"deliver":"<id>","topic":..,"key":..},
 * {"recover_base":"<id>"}, {"recovered":"<id>"}, {"gap":"<id>"}, {"ack":"<id>","dup":..,
 * "err":..}, {"replay":[ids],"gap":..,"err":..}, {"status_nodes":n,...}.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "config.h"
#include "engine_nats.h"
#include "fanout.h"
#include "metrics.h"
#include "protocol.h"

static struct hd_engine *engine;
static uv_loop_t loop;
static uv_pipe_t in;
static char line[4096];
static size_t line_len;
static size_t outstanding, acked, failed;
static bool want_acks;
static struct hd_metrics metrics;
static bool quitting;

static void idhex(uint64_t id, char out[HD_EVENT_ID_LEN + 1])
{
    hd_event_id_format(id, out);
}

static size_t s_deliver(void *b, struct hd_msg *m, const char *key)
{
    char id[HD_EVENT_ID_LEN + 1];
    idhex(m->seq, id);
    printf("{\"deliver\":\"%s\",\"topic\":\"%s\",\"time\":%lld,\"key\":%s%s%s}\n", id, m->topic,
           (long long)m->time_ms, key ? "\"" : "", key ? key : "null", key ? "\"" : "");
    return 0;
}

static void s_recover_base(void *b, uint64_t base)
{
    char id[HD_EVENT_ID_LEN + 1];
    idhex(base, id);
    printf("{\"recover_base\":\"%s\"}\n", id);
}

static void s_recovered(void *b, struct hd_msg *m, const char *key)
{
    char id[HD_EVENT_ID_LEN + 1];
    idhex(m->seq, id);
    printf("{\"recovered\":\"%s\"}\n", id);
}

static void s_gap(void *b, uint64_t next)
{
    char id[HD_EVENT_ID_LEN + 1];
    idhex(next, id);
    printf("{\"gap\":\"%s\"}\n", id);
}

static void s_ready(void *b, bool ready)
{
    printf("{\"ready\":%s}\n", ready ? "true" : "false");
}

static void check_acks(void)
{
    if (want_acks && outstanding == 0) {
        want_acks = false;
        printf("{\"acked\":%zu,\"failed\":%zu,\"pending\":%zu}\n", acked, failed,
               engine->ops->pending(engine));
    }
}

static void on_ack(void *arg, int err, const struct hd_pub_ack *a)
{
    char id[HD_EVENT_ID_LEN + 1] = "";
    if (!err)
        idhex(a->seq, id);
    printf("{\"ack\":\"%s\",\"dup\":%s,\"err\":%d,\"n\":%zu,\"time\":%lld}\n", id,
           !err && a->duplicate ? "true" : "false", err, (size_t)(uintptr_t)arg,
           err ? 0LL : (long long)a->time_ms);
    outstanding--;
    if (err)
        failed++;
    else
        acked++;
    check_acks();
}

static void on_replay(void *arg, int err, struct hd_msg **msgs, size_t n, bool gap)
{
    printf("{\"replay\":[");
    for (size_t i = 0; i < n; i++) {
        char id[HD_EVENT_ID_LEN + 1];
        idhex(msgs[i]->seq, id);
        printf("%s\"%s\"", i ? "," : "", id);
    }
    printf("],\"gap\":%s,\"err\":%d}\n", gap ? "true" : "false", err);
}

static void on_gather(void *arg, int err, const struct hd_status_counts *sum, unsigned nodes)
{
    printf("{\"status_nodes\":%u,\"queued\":%llu,\"written\":%llu,\"err\":%d}\n", nodes,
           (unsigned long long)sum->queued, (unsigned long long)sum->written, err);
}

/* Every node claims one queued and one written delivery for any event it is asked about. */
static int lookup(void *arg, uint64_t id, struct hd_status_counts *out)
{
    *out = (struct hd_status_counts){.queued = 1, .written = 1};
    return 0;
}

static void command(char *cmd)
{
    char a[256] = "", b[256] = "", c[256] = "";
    int n = sscanf(cmd, "%255s %255s %255s", a, b, c);
    if (n <= 0)
        return;
    if (strcmp(a, "pub") == 0) {
        long count = n >= 2 ? atol(b) : 1;
        char topic[256] = "probe.t", key[256] = "";
        sscanf(cmd, "pub %*s %255s %255s", topic, key);
        for (long i = 0; i < count; i++) {
            char data[64];
            int len = snprintf(data, sizeof(data), "{\"n\":%ld}", i);
            struct hd_pub p = {.topic = topic,
                               .event = "message",
                               .data_json = data,
                               .data_len = (size_t)len,
                               .key = key[0] ? key : NULL};
            outstanding++;
            int rc = engine->ops->publish(engine, &p, on_ack, (void *)(uintptr_t)i);
            if (rc < 0) {
                outstanding--;
                failed++;
                printf("{\"publish_refused\":%d,\"n\":%ld}\n", rc, i);
            }
        }
        check_acks();
    } else if (strcmp(a, "wait-acks") == 0) {
        want_acks = true;
        check_acks();
    } else if (strcmp(a, "replay") == 0) {
        uint64_t after = strtoull(c, NULL, 16), upto = 0;
        char d[64] = "";
        sscanf(cmd, "replay %*s %*s %63s", d);
        upto = strtoull(d, NULL, 16);
        int rc = engine->ops->replay(engine, b, after, upto, on_replay, NULL);
        if (rc < 0)
            printf("{\"replay_refused\":%d}\n", rc);
    } else if (strcmp(a, "status") == 0) {
        int rc = hd_engine_status_gather(engine, strtoull(b, NULL, 16), 300, on_gather, NULL);
        if (rc < 0)
            printf("{\"status_refused\":%d}\n", rc);
    } else if (strcmp(a, "metrics") == 0) {
        printf("{\"connected\":%lld,\"lag\":%lld,\"pending\":%lld,\"replays\":%llu}\n",
               (long long)metrics.engine_connected, (long long)metrics.engine_feed_lag,
               (long long)metrics.engine_publishes_pending,
               (unsigned long long)metrics.engine_replays);
    } else if (strcmp(a, "quit") == 0) {
        /* The engine stops outside any callback: it runs the loop itself while it waits. */
        quitting = true;
        uv_stop(&loop);
    }
    fflush(stdout);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    static char b[65536];
    *buf = uv_buf_init(b, sizeof(b));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    if (n < 0) {
        if (!quitting)
            command("quit");
        return;
    }
    for (ssize_t i = 0; i < n && !quitting; i++) {
        if (buf->base[i] == '\n') {
            line[line_len] = '\0';
            line_len = 0;
            command(line);
        } else if (line_len < sizeof(line) - 1) {
            line[line_len++] = buf->base[i];
        }
    }
}

int main(int argc, char **argv)
{
    struct hd_config cfg;
    struct hd_cli cli;
    struct hd_config_error err;
    char why[512];
    int rc = 2;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (hd_cli_parse(1, argv, &cli, why, sizeof(why)) < 0)
        return 2;
    if (hd_config_defaults(&cfg) < 0) {
        hd_cli_free(&cli);
        return 2;
    }
    uv_loop_init(&loop);
    /* argv: SERVERS [STREAM [REPLICAS [NODE]]] */
    if (argc < 2) {
        fprintf(stderr, "usage: nats_probe URL[,URL...] [STREAM [REPLICAS [NODE]]]\n");
        goto out;
    }
    cli.nats = argv[1];
    if (hd_config_apply_cli(&cfg, &cli, &err) < 0) {
        fprintf(stderr, "%s\n", err.text);
        goto out;
    }
    if (argc > 2) {
        free(cfg.engine.stream);
        cfg.engine.stream = strdup(argv[2]);
    }
    if (argc > 3)
        cfg.engine.replicas = (uint32_t)atoi(argv[3]);
    if (argc > 4) {
        free(cfg.engine.node);
        cfg.engine.node = strdup(argv[4]);
    }
    engine = hd_engine_nats_new(&loop, &cfg);
    if (!engine)
        goto out;
    engine->sink = (struct hd_engine_sink){.deliver = s_deliver,
                                           .recover_base = s_recover_base,
                                           .recovered = s_recovered,
                                           .gap = s_gap,
                                           .ready = s_ready};
    hd_engine_nats_set_metrics(engine, &metrics);
    hd_engine_nats_set_status_lookup(engine, lookup, NULL);
    if (engine->ops->start(engine, why, sizeof(why)) < 0) {
        /* A refused start (a stream that does not fit) exits 2, and as cleanly as a quit:
         * the sanitizer build checks this path for leaks too (test_engine_nats). */
        printf("{\"start_failed\":\"%s\"}\n", why);
        goto out;
    }
    printf("{\"started\":true}\n");
    uv_pipe_init(&loop, &in, 0);
    uv_pipe_open(&in, 0);
    uv_read_start((uv_stream_t *)&in, on_alloc, on_read);
    uv_run(&loop, UV_RUN_DEFAULT);
    engine->ops->stop(engine);
    /* Only our pipe: libnats' adapter closes its own handles, in its own order. */
    if (!uv_is_closing((uv_handle_t *)&in))
        uv_close((uv_handle_t *)&in, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    rc = 0;
out:
    if (engine)
        engine->ops->destroy(engine);
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop))
        fprintf(stderr, "loop not closed cleanly\n");
    hd_config_free(&cfg);
    hd_cli_free(&cli);
    return rc;
}
