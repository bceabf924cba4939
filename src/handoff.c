/* SPDX-License-Identifier: MIT */
/*
 * The thread hand-off queue (handoff.h): a mutex-protected singly linked FIFO. The critical
 * sections are a few pointer moves, so producers (libnats threads delivering 100k+ messages/s)
 * and the loop never wait long on each other; the loop takes a whole batch under one lock.
 */
#include "handoff.h"

#include <errno.h>

int hd_handoff_init(struct hd_handoff *q)
{
    *q = (struct hd_handoff){0};
    return -pthread_mutex_init(&q->lock, NULL);
}

void hd_handoff_destroy(struct hd_handoff *q)
{
    pthread_mutex_destroy(&q->lock);
}

bool hd_handoff_push(struct hd_handoff *q, struct hd_handoff_node *n)
{
    bool was_empty;
    n->next = NULL;
    pthread_mutex_lock(&q->lock);
    was_empty = q->head == NULL;
    if (was_empty)
        q->head = n;
    else
        q->tail->next = n;
    q->tail = n;
    if (++q->count > q->max_count)
        q->max_count = q->count;
    pthread_mutex_unlock(&q->lock);
    return was_empty;
}

struct hd_handoff_node *hd_handoff_pop(struct hd_handoff *q, size_t max, bool *more)
{
    struct hd_handoff_node *first, *last;
    size_t n = 1;
    pthread_mutex_lock(&q->lock);
    first = q->head;
    if (!first || max == 0) {
        *more = first != NULL;
        pthread_mutex_unlock(&q->lock);
        return NULL;
    }
    for (last = first; n < max && last->next; n++)
        last = last->next;
    q->head = last->next;
    if (!q->head)
        q->tail = NULL;
    q->count -= n;
    *more = q->head != NULL;
    pthread_mutex_unlock(&q->lock);
    last->next = NULL;
    return first;
}

size_t hd_handoff_count(struct hd_handoff *q)
{
    pthread_mutex_lock(&q->lock);
    size_t n = q->count;
    pthread_mutex_unlock(&q->lock);
    return n;
}
