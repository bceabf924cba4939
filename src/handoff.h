/* SPDX-License-Identifier: MIT */
/*
 * A hand-off queue from other threads to the loop: libnats runs its callbacks (messages,
 * publish acks, connection events) on its own threads, and our worker thread runs the
 * synchronous JetStream calls; all of them push here, and the loop pops in order, a bounded
 * batch per wake-up so a burst never holds the loop for long. Items are intrusive (embed a
 * struct hd_handoff_node); the queue never allocates. Who wakes the loop is the caller's
 * business: push says when a wake-up is needed.
 */
#ifndef HD_HANDOFF_H
#define HD_HANDOFF_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

struct hd_handoff_node {
    struct hd_handoff_node *next;
};

struct hd_handoff {
    pthread_mutex_t lock;
    struct hd_handoff_node *head, *tail;
    size_t count;
    size_t max_count; /* high-water mark, for metrics and tests */
};

/* Initialises an empty queue. Returns 0 or a negative errno from pthread_mutex_init. */
int hd_handoff_init(struct hd_handoff *q);

/* Destroys the queue; items still in it are not touched (pop them first). */
void hd_handoff_destroy(struct hd_handoff *q);

/*
 * Appends `n` (the queue borrows it until it is popped). Any thread. Returns true when the
 * queue was empty, i.e. when the consumer must be woken (uv_async_send); a consumer that
 * leaves items behind after a bounded pop wakes itself.
 */
bool hd_handoff_push(struct hd_handoff *q, struct hd_handoff_node *n);

/*
 * Detaches up to `max` of the oldest items, in push order, as a NULL-terminated chain (the
 * caller owns them again). *more says whether items remain. Returns NULL when empty.
 */
struct hd_handoff_node *hd_handoff_pop(struct hd_handoff *q, size_t max, bool *more);

/* Items waiting. Any thread (takes the lock). */
size_t hd_handoff_count(struct hd_handoff *q);

#endif
