/* SPDX-License-Identifier: MIT */
/*
 * Delivery status across nodes (PROTOCOL.md section 10): a node asks on
 * "_herald.<stream>.status", outside the event stream; every node answers with its counts
 * for the event and the asking node sums what arrives before its deadline.
 */
#include "engine_nats_int.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fanout.h"
#include "history.h"
#include "natsid.h"
#include "protocol.h"

void ne_on_status_request(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    struct nats_engine *e = closure;
    const char *from = NULL, *reply = natsMsg_GetReply(msg);
    uint64_t id = 0;
    char idtext[HD_EVENT_ID_LEN + 1];
    int len = natsMsg_GetDataLength(msg);
    if (reply && len == HD_EVENT_ID_LEN) {
        memcpy(idtext, natsMsg_GetData(msg), HD_EVENT_ID_LEN);
        idtext[HD_EVENT_ID_LEN] = '\0';
        if (hd_event_id_parse(idtext, &id) == 0 &&
            !(natsMsgHeader_Get(msg, "Herald-From", &from) == NATS_OK && from &&
              strcmp(from, e->instance) == 0)) {
            struct item *it = ne_item_new(IT_STATUS_REQ);
            if (it) {
                it->id = id;
                it->reply = strdup(reply);
                if (it->reply)
                    ne_post(e, it);
                else
                    free(it);
            }
        }
    }
    natsMsg_Destroy(msg);
}

/* Answers arrive on "_INBOX.herald.<instance>.<gather id>"; the closure is the engine, so a
 * late answer never touches a gather that is already gone. */
static void on_status_answer(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    struct nats_engine *e = closure;
    const char *subj = natsMsg_GetSubject(msg), *dot = subj ? strrchr(subj, '.') : NULL;
    uint64_t gid = 0;
    json_error_t je;
    json_t *j = json_loadb(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), 0, &je);
    json_int_t q = -1, w = -1, d = -1;
    if (dot && hd_natsid_parse_u64(dot + 1, &gid) == 0 && j &&
        json_unpack(j, "{s:I, s:I, s:I}", "queued", &q, "written", &w, "dropped", &d) == 0 &&
        q >= 0 && w >= 0 && d >= 0) {
        struct item *it = ne_item_new(IT_STATUS_ANS);
        if (it) {
            it->id = gid;
            it->counts = (struct hd_status_counts){
                .queued = (uint64_t)q, .written = (uint64_t)w, .dropped = (uint64_t)d};
            ne_post(e, it);
        }
    }
    json_decref(j);
    natsMsg_Destroy(msg);
}
void ne_handle_status_req(struct nats_engine *e, struct item *it)
{
    struct hd_status_counts c;
    if (!e->status_lookup || e->status_lookup(e->status_arg, it->id, &c) < 0 || !e->nc)
        return;
    char body[160];
    int n = snprintf(body, sizeof(body),
                     "{\"node\":\"%s\",\"queued\":%llu,\"written\":%llu,\"dropped\":%llu}", e->node,
                     (unsigned long long)c.queued, (unsigned long long)c.written,
                     (unsigned long long)c.dropped);
    if (n > 0 && (size_t)n < sizeof(body))
        natsConnection_Publish(e->nc, it->reply, body, n);
}

void ne_status_answered(struct nats_engine *e, const struct item *it)
{
    for (struct gather *g = e->gathers; g; g = g->next) {
        if (g->id == it->id) {
            g->sum.queued += it->counts.queued;
            g->sum.written += it->counts.written;
            g->sum.dropped += it->counts.dropped;
            g->nodes++;
            break;
        }
    }
}

static void on_gather_closed(uv_handle_t *h)
{
    free(h->data);
}

void ne_gather_finish(struct gather *g, int err)
{
    if (g->finished)
        return;
    g->finished = true;
    for (struct gather **pp = &g->e->gathers; *pp; pp = &(*pp)->next) {
        if (*pp == g) {
            *pp = g->next;
            break;
        }
    }
    if (g->sub) {
        natsSubscription_Unsubscribe(g->sub);
        natsSubscription_Destroy(g->sub);
        g->sub = NULL;
    }
    g->done(g->arg, err, &g->sum, g->nodes);
    uv_close((uv_handle_t *)&g->timer, on_gather_closed);
}

static void on_gather_timer(uv_timer_t *t)
{
    struct gather *g = t->data;
    /* Answers pushed before the deadline but not yet drained still count. */
    ne_on_async(&g->e->async);
    ne_gather_finish(g, 0);
}

int hd_engine_status_gather(struct hd_engine *base, uint64_t id, unsigned deadline_ms,
                            hd_status_gather_fn done, void *arg)
{
    if (!hd_engine_is_nats(base))
        return -ENOTSUP;
    struct nats_engine *e = E(base);
    if (!e->connected || !e->nc || e->stopping)
        return -EAGAIN;
    struct gather *g = calloc(1, sizeof(*g));
    if (!g)
        return -ENOMEM;
    g->e = e;
    g->done = done;
    g->arg = arg;
    g->id = ++e->msgid_counter;
    char inbox[96], idtext[HD_EVENT_ID_LEN + 1];
    snprintf(inbox, sizeof(inbox), "_INBOX.herald.%s.%llu", e->instance, (unsigned long long)g->id);
    hd_event_id_format(id, idtext);
    natsMsg *req = NULL;
    natsStatus s = natsConnection_Subscribe(&g->sub, e->nc, inbox, on_status_answer, e);
    if (s == NATS_OK)
        s = natsMsg_Create(&req, e->status_subject, inbox, idtext, HD_EVENT_ID_LEN);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(req, "Herald-From", e->instance);
    if (s == NATS_OK)
        s = natsConnection_PublishMsg(e->nc, req);
    natsMsg_Destroy(req);
    if (s != NATS_OK) {
        if (g->sub)
            natsSubscription_Destroy(g->sub);
        free(g);
        return -EAGAIN;
    }
    uv_timer_init(e->loop, &g->timer);
    g->timer.data = g;
    uv_timer_start(&g->timer, on_gather_timer, deadline_ms, 0);
    g->next = e->gathers;
    e->gathers = g;
    return 0;
}

void hd_engine_nats_set_status_lookup(struct hd_engine *base, hd_status_lookup_fn lookup, void *arg)
{
    E(base)->status_lookup = lookup;
    E(base)->status_arg = arg;
}

/* Answers a status request from this node's history: the counts of an event it still holds. */
static int history_lookup(void *arg, uint64_t id, struct hd_status_counts *out)
{
    const struct hd_msg *m = hd_history_get(arg, id);
    if (!m)
        return -ENOENT;
    *out = (struct hd_status_counts){
        .queued = m->queued, .written = m->written, .dropped = m->dropped};
    return 0;
}

void hd_engine_nats_wire(struct hd_engine *e, struct hd_metrics *m, struct hd_history *h)
{
    hd_engine_nats_set_metrics(e, m);
    hd_engine_nats_set_status_lookup(e, history_lookup, h);
}
