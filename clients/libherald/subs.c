/* SPDX-License-Identifier: MIT */
/*
 * The subscription table and its resume cursors: what makes a reconnect lose nothing and
 * repeat nothing. Each subscription remembers the range of ids it knows it delivered; on a
 * reconnect it resubscribes with `since` = the top of that range, and an event that falls
 * inside the range of any matching subscription is dropped as already delivered (overlapping
 * patterns resumed from different points would otherwise bring it twice).
 *
 * Which events extend a range follows from how the server queues frames on one connection:
 * a subscription's replayed events come right after its ok, contiguously, and every other
 * event is live, queued in id order after every subscription already accepted. So a live
 * event proves that all matching events up to its id were delivered to every subscription
 * that was accepted (and done replaying) before it; a replayed event only proves it for its
 * own subscription. Plain C, no sockets: unit-tested in test_libherald_subs.c.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static bool copy(char *dst, size_t cap, const char *src)
{
    size_t n = strlen(src);
    if (n >= cap)
        return false;
    memcpy(dst, src, n + 1);
    return true;
}

/* `since` names a position the server can resume from by itself. */
static bool positional(const char *since)
{
    return since[0] && strcmp(since, "latest") != 0;
}

struct herald__sub *herald__subs_find(struct herald__subs *s, const char *pattern)
{
    for (struct herald__sub *p = s->head; p; p = p->next)
        if (strcmp(p->pattern, pattern) == 0)
            return p;
    return NULL;
}

struct herald__sub *herald__subs_find_wire(struct herald__subs *s, int64_t wire_id)
{
    for (struct herald__sub *p = s->head; p; p = p->next)
        if (p->state == HERALD__SUB_SENT && p->wire_id == wire_id)
            return p;
    return NULL;
}

struct herald__sub *herald__subs_add(struct herald__subs *s, const char *pattern, const char *since)
{
    struct herald__sub *sub = calloc(1, sizeof(*sub));
    if (!sub)
        return NULL;
    if (!copy(sub->pattern, sizeof(sub->pattern), pattern) ||
        !copy(sub->since, sizeof(sub->since), since ? since : "")) {
        free(sub);
        return NULL;
    }
    sub->state = HERALD__SUB_UNSENT;
    sub->uid = ++s->next_uid;
    struct herald__sub **tail = &s->head;
    while (*tail)
        tail = &(*tail)->next;
    *tail = sub;
    s->n++;
    return sub;
}

void herald__subs_remove(struct herald__subs *s, struct herald__sub *sub)
{
    for (struct herald__sub **pp = &s->head; *pp; pp = &(*pp)->next) {
        if (*pp == sub) {
            *pp = sub->next;
            s->n--;
            break;
        }
    }
    if (s->replay_sub == sub)
        s->replay_sub = NULL; /* its replay keeps arriving and is still counted */
    free(sub);
}

void herald__subs_clear(struct herald__subs *s)
{
    while (s->head)
        herald__subs_remove(s, s->head);
    s->replay_left = 0;
}

void herald__subs_disconnected(struct herald__subs *s)
{
    for (struct herald__sub *p = s->head; p; p = p->next)
        p->state = HERALD__SUB_UNSENT;
    s->replay_sub = NULL;
    s->replay_left = 0;
}

void herald__sub_sent(struct herald__sub *sub, int64_t wire_id, char out[HERALD_ID_SIZE])
{
    const char *since;
    sub->blind = false;
    if (sub->has_range) {
        since = sub->hi;
    } else if (sub->next_pos[0]) {
        since = sub->next_pos; /* live, nothing arrived yet: the server said where it began */
    } else if (positional(sub->since)) {
        since = sub->since; /* nothing delivered yet: the original request still holds */
    } else if (sub->was_live) {
        /* Live since an unknown point and nothing arrived to name it: resume from now and
         * say that something may be missing. */
        since = "latest";
        sub->blind = true;
    } else {
        since = sub->since;
    }
    copy(sub->sent_since, sizeof(sub->sent_since), since);
    copy(out, HERALD_ID_SIZE, since);
    sub->wire_id = wire_id;
    sub->state = HERALD__SUB_SENT;
}

void herald__subs_on_ok(struct herald__subs *s, struct herald__sub *sub, size_t replayed, bool gap,
                        const char *next)
{
    s->replay_sub = sub;
    s->replay_left = replayed;
    if (!sub)
        return;
    sub->was_live = true;
    sub->state = replayed ? HERALD__SUB_REPLAYING : HERALD__SUB_LIVE;
    sub->live_since = s->rseq;
    /* Only a position with nothing before it still to come: after a replay the range's top
     * is where it resumes (and a replay cut short must resume inside it, not after). */
    if (!replayed && !sub->has_range && next && *next && strcmp(next, "latest") != 0 &&
        strcmp(next, "all") != 0)
        copy(sub->next_pos, sizeof(sub->next_pos), next);
    if (sub->has_range)
        return; /* a resume continues the range it had */
    if (gap || strcmp(sub->sent_since, "all") == 0) {
        sub->start_kind = HERALD__START_VALUE;
        sub->start[0] = '\0'; /* from the oldest retained event */
    } else if (positional(sub->sent_since)) {
        sub->start_kind = HERALD__START_VALUE;
        copy(sub->start, sizeof(sub->start), sub->sent_since);
    } else {
        sub->start_kind = HERALD__START_FIRST_LIVE;
    }
}

static void extend(struct herald__sub *sub, const char *id)
{
    if (!sub->has_range) {
        sub->has_range = true;
        copy(sub->lo, sizeof(sub->lo), sub->start_kind == HERALD__START_VALUE ? sub->start : id);
        copy(sub->hi, sizeof(sub->hi), id);
    } else if (strcmp(id, sub->hi) > 0) {
        copy(sub->hi, sizeof(sub->hi), id);
    }
}

bool herald__subs_on_event(struct herald__subs *s, const char *topic, const char *id,
                           struct herald__evmark *mark)
{
    bool replay = s->replay_left > 0;
    struct herald__sub *owner = replay ? s->replay_sub : NULL;
    uint64_t rseq = ++s->rseq;
    if (mark)
        *mark = (struct herald__evmark){.rseq = rseq, .owner = owner ? owner->uid : 0};
    bool dup = false;
    for (struct herald__sub *p = s->head; p && !dup; p = p->next)
        dup = p->has_range && strcmp(p->lo, id) <= 0 && strcmp(id, p->hi) <= 0 &&
              herald__pattern_match(p->pattern, topic);
    if (replay) {
        if (owner)
            extend(owner, id);
        if (--s->replay_left == 0) {
            if (owner) {
                owner->state = HERALD__SUB_LIVE;
                owner->live_since = rseq;
            }
            s->replay_sub = NULL;
        }
    } else {
        for (struct herald__sub *p = s->head; p; p = p->next)
            if (p->state == HERALD__SUB_LIVE)
                extend(p, id);
    }
    return !dup;
}

static void handed(struct herald__sub *sub, const char *id)
{
    if (!sub->has_handed || strcmp(id, sub->handed) > 0) {
        sub->has_handed = true;
        copy(sub->handed, sizeof(sub->handed), id);
    }
}

/*
 * The events that extend a subscription's range arrive in id order (its replay, then live
 * events, then after a reconnect what follows its top) and the queue hands them over in
 * that order, so the last one handed is a position with nothing matching before it still
 * waiting. A live subscription that lost its connection meanwhile got a new live_since:
 * events of the old connection no longer move it, which can only make the cursor lag
 * (repeats at the next start), never run ahead (losses).
 */
void herald__subs_handed(struct herald__subs *s, const char *id, const struct herald__evmark *mark)
{
    for (struct herald__sub *p = s->head; p; p = p->next) {
        if (mark->owner ? p->uid == mark->owner
                        : p->state == HERALD__SUB_LIVE && p->live_since < mark->rseq) {
            handed(p, id);
            if (mark->owner)
                return;
        }
    }
}

void herald__subs_caught_up(struct herald__subs *s)
{
    for (struct herald__sub *p = s->head; p; p = p->next)
        if (p->has_range)
            handed(p, p->hi);
}

void herald__sub_app_cursor(const struct herald__sub *sub, char out[HERALD_ID_SIZE])
{
    if (sub->has_handed)
        copy(out, HERALD_ID_SIZE, sub->handed);
    else if (sub->next_pos[0])
        copy(out, HERALD_ID_SIZE, sub->next_pos);
    else if (positional(sub->since))
        copy(out, HERALD_ID_SIZE, sub->since);
    else
        out[0] = '\0';
}

void herald__sub_cursor(const struct herald__sub *sub, char out[HERALD_ID_SIZE])
{
    if (sub->has_range)
        copy(out, HERALD_ID_SIZE, sub->hi);
    else if (sub->next_pos[0])
        copy(out, HERALD_ID_SIZE, sub->next_pos);
    else if (positional(sub->since))
        copy(out, HERALD_ID_SIZE, sub->since);
    else
        out[0] = '\0';
}
