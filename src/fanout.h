/* SPDX-License-Identifier: MIT */
/*
 * Fan-out building blocks: the refcounted outbound message (an event encoded once, or a
 * reply) and the bounded per-connection queue of references to such messages. Every receiver
 * of an event shares the same bytes, which never change after the message is made; only its
 * bookkeeping does (refs, the delivery counters of PROTOCOL.md section 4, receivers, and the
 * SSE rendering made on first use). A message is freed when its last reference goes.
 * Loop-thread only: refcounts and counters are not atomic.
 */
#ifndef HD_FANOUT_H
#define HD_FANOUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Bytes reserved before every payload so a transport can write a frame header in place
 * (libwebsockets needs LWS_PRE, 16 on 64-bit; server.c asserts this is enough). */
#define HD_MSG_HEADROOM 16

struct hd_msg {
    uint32_t refs;
    uint32_t len;       /* payload bytes (the JSON text), excluding headroom and NUL */
    uint64_t seq;       /* event sequence; 0 for replies and other control frames */
    int64_t time_ms;    /* wall clock at accept (events) */
    uint64_t accept_ns; /* monotonic clock at accept, for publish-to-write latency */
    /* Delivery status (PROTOCOL.md section 4), events only. */
    uint32_t queued, written, dropped;
    uint32_t receivers; /* connections the publish reached on this node (the reply's count) */
    const char *topic;  /* events: points into this allocation; NULL for replies */
    const char *event;  /* events: the event kind, likewise */
    /* Owned by the history module while the event is retained (see history.c). */
    void *hist_topic;
    /* SSE rendering of the event, built on first use and shared like the payload. */
    char *sse;
    uint32_t sse_len;
    unsigned char buf[]; /* HD_MSG_HEADROOM, then len payload bytes, then NUL, then strings */
};

static inline unsigned char *hd_msg_payload(struct hd_msg *m)
{
    return m->buf + HD_MSG_HEADROOM;
}

/*
 * Makes a reply/control message by copying `len` bytes of `text`. Returns it with one
 * reference, or NULL when out of memory.
 */
struct hd_msg *hd_msg_new_text(const char *text, size_t len);

/*
 * Makes an event message: encodes the event JSON once (protocol.h hd_encode_event) and stores
 * topic and event kind in the same allocation. `data_json` is borrowed compact JSON. Returns
 * it with one reference, or NULL when out of memory.
 */
struct hd_msg *hd_msg_new_event(uint64_t seq, int64_t time_ms, const char *topic, const char *event,
                                const char *data_json, size_t data_len);

static inline struct hd_msg *hd_msg_ref(struct hd_msg *m)
{
    m->refs++;
    return m;
}

/* Drops one reference; frees the message with the last. NULL is ignored. */
void hd_msg_unref(struct hd_msg *m);

/*
 * Returns the SSE rendering ("id: ...\nevent: ...\ndata: <json>\n\n"), building it on first
 * use, with HD_MSG_HEADROOM writable bytes before it like the payload; NULL when out of
 * memory. Owned by the message.
 */
const char *hd_msg_sse(struct hd_msg *m, size_t *len);

/*
 * A connection's outbound queue: a ring of message references bounded in bytes. Starts
 * empty with no allocation so an idle connection costs a few words.
 */
struct hd_queue {
    struct hd_msg **ring;
    uint32_t head, count, cap;
    uint32_t max_msgs;
    size_t bytes, max_bytes;
    int64_t *shared_total; /* when set, counted bytes are added here too (all queues) */
};

void hd_queue_init(struct hd_queue *q, size_t max_bytes);

/*
 * How a push counts against the byte limit. LIVE is limited; FORCE ignores the limit but
 * counts the bytes (small control replies, so a client always hears why); SHARED ignores
 * the limit and does not count (history replay: the bytes are already held by history, the
 * queue only adds a pointer, and the replay itself is bounded by the caller).
 */
enum hd_push { HD_PUSH_LIVE, HD_PUSH_FORCE, HD_PUSH_SHARED };

/*
 * Appends a new reference to `m` (taken by the queue). Returns 0, -ENOBUFS when a LIVE push
 * would exceed the limit (nothing queued), or -ENOMEM.
 */
int hd_queue_push(struct hd_queue *q, struct hd_msg *m, enum hd_push how);

/* Ring slots carry a tag in bit 0: set when the message's bytes were not counted. */
static inline struct hd_msg *hd_queue_slot_msg(struct hd_msg *slot)
{
    return (struct hd_msg *)((uintptr_t)slot & ~(uintptr_t)1);
}

/* The oldest queued message (still owned by the queue), or NULL. */
static inline struct hd_msg *hd_queue_peek(const struct hd_queue *q)
{
    return q->count ? hd_queue_slot_msg(q->ring[q->head]) : NULL;
}

/* The i-th queued message (0 = oldest), i < count. */
static inline struct hd_msg *hd_queue_at(const struct hd_queue *q, uint32_t i)
{
    return hd_queue_slot_msg(q->ring[(q->head + i) & (q->cap - 1)]);
}

/* Removes the oldest message and returns the reference the queue held (caller unrefs). */
struct hd_msg *hd_queue_pop(struct hd_queue *q);

/*
 * Drops every queued message, counting events as dropped, and frees the ring. Returns the
 * number of events dropped.
 */
size_t hd_queue_clear(struct hd_queue *q);

/*
 * Rebuilds an event from its stored encoding (`payload` is the event JSON exactly as
 * hd_msg_new_event produced it). Returns it with one reference, or NULL when out of memory.
 */
struct hd_msg *hd_msg_new_event_encoded(uint64_t seq, int64_t time_ms, const char *topic,
                                        const char *event, const char *payload, size_t len);

#endif
