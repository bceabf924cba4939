/* SPDX-License-Identifier: MIT */
/*
 * Refcounted messages and bounded per-connection queues. The queue ring grows by doubling
 * from a small start and shrinks back when it drains, so 100k idle connections cost no ring
 * memory at all, while a burst to one connection is bounded by max_bytes.
 */
#include "fanout.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocol.h"

struct hd_msg *hd_msg_new_text(const char *text, size_t len)
{
    if (len > UINT32_MAX - HD_MSG_HEADROOM - 1)
        return NULL;
    struct hd_msg *m = malloc(sizeof(*m) + HD_MSG_HEADROOM + len + 1);
    if (!m)
        return NULL;
    *m = (struct hd_msg){.refs = 1, .len = (uint32_t)len};
    memcpy(hd_msg_payload(m), text, len);
    hd_msg_payload(m)[len] = '\0';
    return m;
}

struct hd_msg *hd_msg_new_event(uint64_t seq, int64_t time_ms, const char *topic, const char *event,
                                const char *data_json, size_t data_len)
{
    char id[HD_EVENT_ID_LEN + 1];
    hd_event_id_format(seq, id);
    size_t need = hd_encode_event(NULL, 0, topic, id, time_ms, event, data_json, data_len);
    size_t tlen = strlen(topic), elen = strlen(event);
    if (need > UINT32_MAX / 2)
        return NULL;
    struct hd_msg *m = malloc(sizeof(*m) + HD_MSG_HEADROOM + need + 1 + tlen + 1 + elen + 1);
    if (!m)
        return NULL;
    *m = (struct hd_msg){.refs = 1, .len = (uint32_t)need, .seq = seq, .time_ms = time_ms};
    char *p = (char *)hd_msg_payload(m);
    hd_encode_event(p, need + 1, topic, id, time_ms, event, data_json, data_len);
    char *t = p + need + 1;
    memcpy(t, topic, tlen + 1);
    char *e = t + tlen + 1;
    memcpy(e, event, elen + 1);
    m->topic = t;
    m->event = e;
    return m;
}

void hd_msg_unref(struct hd_msg *m)
{
    if (!m || --m->refs)
        return;
    free(m->sse);
    free(m);
}

const char *hd_msg_sse(struct hd_msg *m, size_t *len)
{
    if (!m->sse) {
        char id[HD_EVENT_ID_LEN + 1];
        hd_event_id_format(m->seq, id);
        const char *kind = m->event ? m->event : HD_DEFAULT_EVENT;
        /* The payload is compact JSON: it holds no raw newline, so one data: line suffices. */
        size_t need = strlen("id: \nevent: \ndata: \n\n") + HD_EVENT_ID_LEN + strlen(kind) + m->len;
        char *s = malloc(HD_MSG_HEADROOM + need + 1);
        if (!s)
            return NULL;
        int n = snprintf(s + HD_MSG_HEADROOM, need + 1, "id: %s\nevent: %s\ndata: %s\n\n", id, kind,
                         (const char *)hd_msg_payload(m));
        if (n < 0 || (size_t)n != need) {
            free(s);
            return NULL;
        }
        m->sse = s;
        m->sse_len = (uint32_t)n;
    }
    *len = m->sse_len;
    return m->sse + HD_MSG_HEADROOM;
}

void hd_queue_init(struct hd_queue *q, size_t max_bytes)
{
    *q = (struct hd_queue){.max_bytes = max_bytes};
    /* The byte limit bounds the count too; this only guards the ring size arithmetic. */
    q->max_msgs = 1u << 24;
}

static int grow(struct hd_queue *q)
{
    uint32_t ncap = q->cap ? q->cap * 2 : 4;
    if (ncap > q->max_msgs)
        return -ENOBUFS;
    struct hd_msg **n = malloc(sizeof(*n) * ncap);
    if (!n)
        return -ENOMEM;
    for (uint32_t i = 0; i < q->count; i++)
        n[i] = q->ring[(q->head + i) & (q->cap - 1)];
    free(q->ring);
    q->ring = n;
    q->head = 0;
    q->cap = ncap;
    return 0;
}

int hd_queue_push(struct hd_queue *q, struct hd_msg *m, enum hd_push how)
{
    if (how == HD_PUSH_LIVE && q->bytes + m->len > q->max_bytes)
        return -ENOBUFS;
    if (q->count == q->cap) {
        int r = grow(q);
        if (r)
            return r;
    }
    struct hd_msg *slot = hd_msg_ref(m);
    if (how == HD_PUSH_SHARED)
        slot = (struct hd_msg *)((uintptr_t)slot | 1);
    else {
        q->bytes += m->len;
        if (q->shared_total)
            *q->shared_total += m->len;
    }
    q->ring[(q->head + q->count) & (q->cap - 1)] = slot;
    q->count++;
    return 0;
}

struct hd_msg *hd_queue_pop(struct hd_queue *q)
{
    if (!q->count)
        return NULL;
    struct hd_msg *slot = q->ring[q->head];
    struct hd_msg *m = hd_queue_slot_msg(slot);
    q->head = (q->head + 1) & (q->cap - 1);
    q->count--;
    if (slot == m) {
        q->bytes -= m->len;
        if (q->shared_total)
            *q->shared_total -= m->len;
    }
    if (!q->count && q->cap > 64) {
        /* A burst is over: give the big ring back rather than keep it per idle connection. */
        free(q->ring);
        q->ring = NULL;
        q->cap = 0;
        q->head = 0;
    }
    return m;
}

size_t hd_queue_clear(struct hd_queue *q)
{
    size_t dropped = 0;
    struct hd_msg *m;
    while ((m = hd_queue_pop(q))) {
        if (m->seq) {
            m->dropped++;
            dropped++;
        }
        hd_msg_unref(m);
    }
    free(q->ring);
    q->ring = NULL;
    q->cap = 0;
    q->head = 0;
    return dropped;
}

struct hd_msg *hd_msg_new_event_encoded(uint64_t seq, int64_t time_ms, const char *topic,
                                        const char *event, const char *payload, size_t len)
{
    size_t tlen = strlen(topic), elen = strlen(event);
    if (len > UINT32_MAX / 2)
        return NULL;
    struct hd_msg *m = malloc(sizeof(*m) + HD_MSG_HEADROOM + len + 1 + tlen + 1 + elen + 1);
    if (!m)
        return NULL;
    *m = (struct hd_msg){.refs = 1, .len = (uint32_t)len, .seq = seq, .time_ms = time_ms};
    char *p = (char *)hd_msg_payload(m);
    memcpy(p, payload, len);
    p[len] = '\0';
    char *t = p + len + 1;
    memcpy(t, topic, tlen + 1);
    char *e = t + tlen + 1;
    memcpy(e, event, elen + 1);
    m->topic = t;
    m->event = e;
    return m;
}
