/* SPDX-License-Identifier: MIT */
/*
 * The HTTP API's reading routes: polls (short and long) and Server-Sent Events. Checks the
 * pattern, the right to read it and the cursor, and answers polls from history, or from an
 * engine replay when the cursor is older than this node's history and the engine holds more.
 */
#include "api_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "log.h"
#include "topic.h"

/*
 * Reads an unsigned query parameter within [min, max]; absent gives `def`. Only plain ASCII
 * digits count as a number: a sign, a space (decoded from `+` or `%20`) or a value too long
 * to hold is -1, never a number or absent.
 */
static int query_uint(const char *query, const char *name, uint32_t min, uint32_t max, uint32_t def,
                      uint32_t *out)
{
    char buf[16];
    int n = hd_query_get(query, name, buf, sizeof(buf));
    if (n == -2)
        return -1; /* there, but undecodable or longer than any number in range */
    if (n < 0) {
        *out = def;
        return 0;
    }
    if (n == 0 || n > 10)
        return -1;
    uint64_t v = 0;
    for (int i = 0; i < n; i++) {
        if (buf[i] < '0' || buf[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(buf[i] - '0');
    }
    if (v < min || v > max)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

static bool pattern_param(const char *pattern, struct hd_http_stream *st, struct hd_http_resp *resp)
{
    if (hd_pattern_check(pattern, strlen(pattern))) {
        hd_api_error(resp, HD_ERR_INVALID_TOPIC,
                     "a pattern is a topic whose segments may also be * or a final >");
        return false;
    }
    snprintf(st->pattern, sizeof(st->pattern), "%s", pattern);
    return true;
}

/* Answers a poll with `events` (n of them, borrowed) and the cursor to poll from next. */
static void poll_body(struct hd_http_resp *resp, struct hd_msg *const *events, size_t n,
                      uint64_t next, bool gap)
{
    size_t cap = 64 + HD_EVENT_ID_LEN;
    for (size_t i = 0; i < n; i++)
        cap += events[i]->len + 1;
    char *body = malloc(cap);
    if (!body) {
        hd_api_error(resp, HD_ERR_INTERNAL, "out of memory");
        return;
    }
    /* The events are spliced in as encoded at publish: no re-encoding per poll. */
    size_t o = 0;
    memcpy(body, "{\"events\":[", 11);
    o = 11;
    for (size_t i = 0; i < n; i++) {
        if (i)
            body[o++] = ',';
        memcpy(body + o, hd_msg_payload(events[i]), events[i]->len);
        o += events[i]->len;
        events[i]->queued++;
        events[i]->written++;
    }
    char id[HD_EVENT_ID_LEN + 1];
    hd_event_id_format(next, id);
    o += (size_t)snprintf(body + o, cap - o, "],\"next\":\"%s\",\"gap\":%s}", id,
                          gap ? "true" : "false");
    hd__api_body(resp, 200, "application/json", body, o);
}

void hd_api_poll_answer(struct hd_broker *b, const struct hd_http_stream *st,
                        struct hd_http_resp *resp)
{
    struct hd_history *h = hd_broker_history(b);
    struct hd_msg *stack[64], **events = stack;
    if (st->limit > 64) {
        events = malloc(sizeof(*events) * st->limit);
        if (!events) {
            hd_api_error(resp, HD_ERR_INTERNAL, "out of memory");
            return;
        }
    }
    size_t n = hd_history_collect(h, st->pattern, st->after, 0, events, st->limit);
    /* With nothing new, the cursor moves to the newest id: nothing matching lies between. */
    uint64_t next = n ? events[n - 1]->seq : hd_history_last_seq(h);
    if (next < st->after)
        next = st->after;
    poll_body(resp, events, n, next, st->gap);
    if (events != stack)
        free(events);
}

/* ---- polls the engine replays ---------------------------------------------------------- */

/* A poll waiting for its engine replay. The request's own stream is freed with its response
 * when the connection goes, so the poll's parameters are copied here. */
struct poll_replay {
    struct hd_broker *b;
    bool in_call, completed;
    struct hd_http_resp *sync_resp; /* while in_call */
    hd_api_done_fn done;
    void *arg;
    struct hd_http_stream st;
    uint64_t upto; /* history's newest id when the replay began */
};

static void poll_replay_fill(struct poll_replay *pr, struct hd_http_resp *resp, int err,
                             struct hd_msg **msgs, size_t n, bool gap)
{
    if (err) {
        /* Serve what history has, and say that more may be missing (as a subscription does). */
        hd_log_warn("engine replay failed; polling history with a gap", "err=%d", err);
        pr->st.gap = true;
        hd_api_poll_answer(pr->b, &pr->st, resp);
        return;
    }
    /* In id order: the page is one run of the engine's (borrowed) array. */
    size_t first = 0, kept = 0;
    while (first < n && msgs[first]->seq <= pr->st.replay_after)
        first++;
    while (first + kept < n && kept < pr->st.limit && msgs[first + kept]->seq <= pr->upto)
        kept++;
    /* A full page ends at its last event; otherwise everything up to upto was looked at. */
    uint64_t next = kept == pr->st.limit ? msgs[first + kept - 1]->seq : pr->upto;
    poll_body(resp, msgs + first, kept, next, gap);
    hd_broker_metrics(pr->b)->engine_replays++;
}

static void poll_replayed(void *arg, int err, struct hd_msg **msgs, size_t n, bool gap)
{
    struct poll_replay *pr = arg;
    pr->completed = true;
    if (pr->in_call) {
        poll_replay_fill(pr, pr->sync_resp, err, msgs, n, gap);
        return;
    }
    struct hd_http_resp *resp = calloc(1, sizeof(*resp));
    if (resp)
        poll_replay_fill(pr, resp, err, msgs, n, gap);
    pr->done(pr->arg, resp);
    free(pr);
}

int hd__api_poll_replay(struct hd_broker *b, struct hd_http_resp *resp, hd_api_done_fn done,
                        void *arg)
{
    struct hd_engine *e = hd_broker_engine(b);
    struct poll_replay *pr = calloc(1, sizeof(*pr));
    if (!pr) {
        hd_api_error(resp, HD_ERR_INTERNAL, "out of memory");
        return HD_HTTP_RESPOND;
    }
    *pr = (struct poll_replay){.b = b,
                               .in_call = true,
                               .sync_resp = resp,
                               .done = done,
                               .arg = arg,
                               .st = *resp->stream,
                               .upto = hd_history_last_seq(hd_broker_history(b))};
    int r = e && e->ops->replay ? e->ops->replay(e, pr->st.pattern, pr->st.replay_after, pr->upto,
                                                 poll_replayed, pr)
                                : -ENOTSUP;
    if (r)
        poll_replayed(pr, r, NULL, 0, true);
    if (pr->completed) {
        free(pr);
        return HD_HTTP_RESPOND;
    }
    pr->in_call = false;
    return -1;
}

/*
 * The parameters of an SSE or long-poll request, attached to resp; NULL when resp already holds
 * the answer (out of memory, a bad pattern, no right to read it).
 */
static struct hd_http_stream *stream_begin(struct hd_broker *b, const struct hd_http_req *req,
                                           const char *pattern, struct hd_http_resp *resp)
{
    struct hd_http_stream *st = calloc(1, sizeof(*st));
    if (!st) {
        hd_api_error(resp, HD_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    free(resp->stream);
    resp->stream = st;
    if (!pattern_param(pattern, st, resp) || !hd__api_allowed(b, req, st->pattern, resp))
        return NULL;
    return st;
}

enum hd_http_next hd__api_poll_route(struct hd_broker *b, const struct hd_http_req *req,
                                     const char *pattern, struct hd_http_resp *resp)
{
    struct hd_http_stream *st = stream_begin(b, req, pattern, resp);
    if (!st)
        return HD_HTTP_RESPOND;
    if (query_uint(req->query, "limit", 1, 1000, 100, &st->limit)) {
        hd_api_error(resp, HD_ERR_BAD_REQUEST, "limit must be a whole number from 1 to 1000");
        return HD_HTTP_RESPOND;
    }
    if (query_uint(req->query, "wait", 0, 60, 0, &st->wait_s)) {
        hd_api_error(resp, HD_ERR_BAD_REQUEST, "wait must be a whole number of seconds, 0 to 60");
        return HD_HTTP_RESPOND;
    }
    char since[256];
    int n = hd_query_get(req->query, "since", since, sizeof(since));
    struct hd_since cur = hd_since_parse(n >= 0 ? since : NULL);
    if (n == -2)
        cur.kind = HD_SINCE_INVALID; /* present but undecodable or too long: a gap */
    struct hd_history *h = hd_broker_history(b);
    st->after = hd_history_resolve(h, st->pattern, cur, &st->gap);
    /* A well-formed cursor older than history: the engine may still hold what follows it (a
     * cluster's stream). It is asked, and the answer comes later (HD_HTTP_READ_BODY of an
     * empty body, then hd_api_publish, which calls hd__api_poll_replay). */
    struct hd_engine *e = hd_broker_engine(b);
    if (st->gap && cur.kind == HD_SINCE_ID && cur.seq < hd_history_last_seq(h) && e &&
        e->ops->replay && !hd_broker_draining(b)) {
        st->replay_after = cur.seq;
        return HD_HTTP_READ_BODY;
    }
    if (st->wait_s == 0 || st->gap || hd_history_count(h, st->pattern, st->after, 0) > 0 ||
        hd_broker_draining(b)) {
        hd_api_poll_answer(b, st, resp);
        return HD_HTTP_RESPOND;
    }
    return HD_HTTP_LONGPOLL;
}

enum hd_http_next hd__api_sse_route(struct hd_broker *b, const struct hd_http_req *req,
                                    const char *pattern, struct hd_http_resp *resp)
{
    struct hd_http_stream *st = stream_begin(b, req, pattern, resp);
    if (!st)
        return HD_HTTP_RESPOND;
    if (hd_broker_draining(b)) {
        hd_api_error(resp, HD_ERR_UNAVAILABLE, "the server is shutting down");
        return HD_HTTP_RESPOND;
    }
    /* A reconnecting EventSource repeats its URL and adds Last-Event-ID: the header wins. */
    if (req->last_event_id) {
        snprintf(st->since, sizeof(st->since), "%s", req->last_event_id);
        st->has_since = true;
    } else {
        int n = hd_query_get(req->query, "since", st->since, sizeof(st->since));
        if (n == -2) /* present but undecodable or too long: a gap */
            snprintf(st->since, sizeof(st->since), "invalid");
        st->has_since = n != -1;
    }
    return HD_HTTP_SSE;
}
