/* SPDX-License-Identifier: MIT */
/*
 * Check suite for the fan-out building blocks (src/fanout.c): that a message lives exactly as
 * long as its last reference, that an event is encoded once into the exact wire JSON and its
 * SSE rendering is built once and shared, and that a connection's queue keeps order across
 * growth and wrap-around and enforces its byte limit the way each push kind promises.
 */
#include "fanout.h"

#include <check.h>
#include <errno.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct hd_msg *event(uint64_t seq, const char *topic, const char *data)
{
    struct hd_msg *m =
        hd_msg_new_event(seq, 1764288000123, topic, "message", data, data ? strlen(data) : 0);
    ck_assert_ptr_nonnull(m);
    return m;
}

static struct hd_msg *text(const char *s)
{
    struct hd_msg *m = hd_msg_new_text(s, strlen(s));
    ck_assert_ptr_nonnull(m);
    return m;
}

/* ---- messages --------------------------------------------------------------------------- */

START_TEST(msg_refcount)
{
    struct hd_msg *m = event(7, "chat.room1", "1");
    ck_assert_uint_eq(m->refs, 1);
    ck_assert_ptr_eq(hd_msg_ref(m), m);
    hd_msg_ref(m);
    ck_assert_uint_eq(m->refs, 3);
    hd_msg_unref(m);
    hd_msg_unref(m);
    /* Still alive with one reference: reading it must be valid (ASan catches a free). */
    ck_assert_uint_eq(m->refs, 1);
    ck_assert_str_eq(m->topic, "chat.room1");
    hd_msg_unref(m);
    hd_msg_unref(NULL); /* ignored */
}
END_TEST

START_TEST(msg_queue_keeps_reference)
{
    struct hd_queue q;
    hd_queue_init(&q, 1 << 20);
    struct hd_msg *m = event(1, "a", "\"x\"");
    ck_assert_int_eq(hd_queue_push(&q, m, HD_PUSH_LIVE), 0);
    ck_assert_uint_eq(m->refs, 2);
    hd_msg_unref(m); /* the publisher lets go; the queue still holds it */
    struct hd_msg *p = hd_queue_pop(&q);
    ck_assert_ptr_eq(p, m);
    ck_assert_uint_eq(p->refs, 1);
    ck_assert_str_eq(p->topic, "a");
    hd_msg_unref(p);
    hd_queue_clear(&q);
}
END_TEST

START_TEST(event_encoding)
{
    const char *data = "{\"from\":\"alice\",\"text\":\"hi\"}";
    struct hd_msg *m =
        hd_msg_new_event(0x1234, 1764288000123, "chat.room1", "login", data, strlen(data));
    ck_assert_ptr_nonnull(m);
    const char *want = "{\"type\":\"event\",\"topic\":\"chat.room1\",\"id\":\"0000000000001234\","
                       "\"time\":1764288000123,\"event\":\"login\","
                       "\"data\":{\"from\":\"alice\",\"text\":\"hi\"}}";
    ck_assert_str_eq((const char *)hd_msg_payload(m), want);
    ck_assert_uint_eq(m->len, strlen(want));
    ck_assert_ptr_eq(hd_msg_payload(m), m->buf + HD_MSG_HEADROOM);
    ck_assert_uint_eq(m->seq, 0x1234);
    ck_assert_int_eq(m->time_ms, 1764288000123);
    ck_assert_str_eq(m->topic, "chat.room1");
    ck_assert_str_eq(m->event, "login");
    ck_assert_uint_eq(m->queued + m->written + m->dropped, 0);

    /* It is valid JSON with the documented fields. */
    json_error_t jerr;
    json_t *root = json_loadb((const char *)hd_msg_payload(m), m->len, 0, &jerr);
    ck_assert_msg(root != NULL, "payload is not JSON: %s", jerr.text);
    ck_assert_str_eq(json_string_value(json_object_get(root, "type")), "event");
    ck_assert_str_eq(json_string_value(json_object_get(root, "id")), "0000000000001234");
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(root, "data"), "from")),
                     "alice");
    json_decref(root);

    /* Rebuilding from the stored encoding gives the same bytes. */
    struct hd_msg *r = hd_msg_new_event_encoded(m->seq, m->time_ms, m->topic, m->event,
                                                (const char *)hd_msg_payload(m), m->len);
    ck_assert_ptr_nonnull(r);
    ck_assert_uint_eq(r->len, m->len);
    ck_assert_str_eq((const char *)hd_msg_payload(r), want);
    ck_assert_str_eq(r->topic, "chat.room1");
    ck_assert_str_eq(r->event, "login");
    ck_assert_uint_eq(r->seq, 0x1234);
    hd_msg_unref(r);
    hd_msg_unref(m);
}
END_TEST

START_TEST(event_null_data)
{
    struct hd_msg *m = hd_msg_new_event(1, 5, "t", "message", NULL, 0);
    ck_assert_ptr_nonnull(m);
    ck_assert_str_eq((const char *)hd_msg_payload(m),
                     "{\"type\":\"event\",\"topic\":\"t\",\"id\":\"0000000000000001\",\"time\":5,"
                     "\"event\":\"message\",\"data\":null}");
    hd_msg_unref(m);
}
END_TEST

START_TEST(text_message)
{
    const char *s = "{\"type\":\"pong\",\"id\":4}";
    struct hd_msg *m = text(s);
    ck_assert_uint_eq(m->len, strlen(s));
    ck_assert_str_eq((const char *)hd_msg_payload(m), s);
    ck_assert_uint_eq(m->seq, 0);
    ck_assert_ptr_null(m->topic);
    ck_assert_uint_eq(m->refs, 1);
    hd_msg_unref(m);
}
END_TEST

START_TEST(sse_format_built_once)
{
    struct hd_msg *m = event(0xabc, "chat.room1", "{\"k\":[1,2]}");
    size_t len1 = 0, len2 = 0;
    const char *s1 = hd_msg_sse(m, &len1);
    ck_assert_ptr_nonnull(s1);
    char want[512];
    snprintf(want, sizeof(want), "id: 0000000000000abc\nevent: message\ndata: %s\n\n",
             (const char *)hd_msg_payload(m));
    ck_assert_uint_eq(len1, strlen(want));
    ck_assert_mem_eq(s1, want, len1);
    const char *s2 = hd_msg_sse(m, &len2);
    ck_assert_ptr_eq(s1, s2); /* built once, shared by every SSE receiver */
    ck_assert_uint_eq(len1, len2);
    /* The headroom before it is the message's to write a frame header into. */
    memset((char *)s1 - HD_MSG_HEADROOM, 'h', HD_MSG_HEADROOM);
    ck_assert_mem_eq(s1, want, len1);
    hd_msg_unref(m);
}
END_TEST

START_TEST(sse_event_kind)
{
    struct hd_msg *m = hd_msg_new_event(2, 1, "user.42.inbox", "logout", "true", 4);
    ck_assert_ptr_nonnull(m);
    size_t len;
    const char *s = hd_msg_sse(m, &len);
    ck_assert_ptr_nonnull(s);
    char want[512];
    snprintf(want, sizeof(want), "id: 0000000000000002\nevent: logout\ndata: %s\n\n",
             (const char *)hd_msg_payload(m));
    ck_assert_uint_eq(len, strlen(want));
    ck_assert_mem_eq(s, want, len);
    hd_msg_unref(m);
}
END_TEST

/* ---- queues ----------------------------------------------------------------------------- */

#define NMSG 300
static struct hd_msg *msgs[NMSG];

static void msgs_setup(void)
{
    for (int i = 0; i < NMSG; i++) {
        char t[32];
        snprintf(t, sizeof(t), "t.%d", i);
        msgs[i] = event((uint64_t)i + 1, t, "0");
    }
}

static void msgs_teardown(void)
{
    for (int i = 0; i < NMSG; i++) {
        ck_assert_uint_eq(msgs[i]->refs, 1); /* every queue reference was given back */
        hd_msg_unref(msgs[i]);
        msgs[i] = NULL;
    }
}

/* Pops one message and checks it is msgs[want]. */
static void pop_expect(struct hd_queue *q, int want)
{
    struct hd_msg *m = hd_queue_pop(q);
    ck_assert_msg(m == msgs[want], "popped seq %llu, expected %d",
                  m ? (unsigned long long)m->seq : 0ULL, want + 1);
    hd_msg_unref(m);
}

START_TEST(queue_order_wrap_and_growth)
{
    struct hd_queue q;
    hd_queue_init(&q, SIZE_MAX);
    ck_assert_ptr_null(hd_queue_peek(&q));
    ck_assert_ptr_null(hd_queue_pop(&q));
    int next_in = 0, next_out = 0;
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(hd_queue_push(&q, msgs[next_in++], HD_PUSH_LIVE), 0);
    for (int i = 0; i < 3; i++)
        pop_expect(&q, next_out++);
    /* The head is now mid-ring: growing must keep the wrapped order. */
    for (int i = 0; i < 100; i++)
        ck_assert_int_eq(hd_queue_push(&q, msgs[next_in++], HD_PUSH_LIVE), 0);
    ck_assert_uint_eq(q.count, 102);
    for (uint32_t i = 0; i < q.count; i++)
        ck_assert_ptr_eq(hd_queue_at(&q, i), msgs[next_out + (int)i]);
    ck_assert_ptr_eq(hd_queue_peek(&q), msgs[next_out]);
    for (int i = 0; i < 50; i++)
        pop_expect(&q, next_out++);
    for (int i = 0; i < 150; i++)
        ck_assert_int_eq(hd_queue_push(&q, msgs[next_in++], HD_PUSH_LIVE), 0);
    while (next_out < next_in)
        pop_expect(&q, next_out++);
    ck_assert_uint_eq(q.count, 0);
    ck_assert_uint_eq(q.bytes, 0);
    ck_assert_ptr_null(hd_queue_pop(&q));
    /* After draining (the big ring is given back) the queue still works. */
    ck_assert_int_eq(hd_queue_push(&q, msgs[0], HD_PUSH_LIVE), 0);
    ck_assert_int_eq(hd_queue_push(&q, msgs[1], HD_PUSH_LIVE), 0);
    pop_expect(&q, 0);
    pop_expect(&q, 1);
    hd_queue_clear(&q);
}
END_TEST

START_TEST(queue_interleaved_model)
{
    /* Pseudo-random push/pop runs against a simple FIFO model. */
    struct hd_queue q;
    hd_queue_init(&q, SIZE_MAX);
    int model[4096], mh = 0, mt = 0;
    uint32_t x = 12345;
    for (int step = 0; step < 3000; step++) {
        x = x * 1103515245u + 12345u;
        int burst = (int)((x >> 16) % 40);
        bool push = ((x >> 8) & 3) != 0 || mh == mt;
        for (int k = 0; k < burst; k++) {
            if (push && mt - mh < NMSG) {
                int i = (int)((x >> 3) + (uint32_t)k) % NMSG;
                ck_assert_int_eq(hd_queue_push(&q, msgs[i], HD_PUSH_LIVE), 0);
                model[mt++ % 4096] = i;
            } else if (!push && mh < mt) {
                pop_expect(&q, model[mh++ % 4096]);
            }
        }
        ck_assert_uint_eq(q.count, (uint32_t)(mt - mh));
    }
    while (mh < mt)
        pop_expect(&q, model[mh++ % 4096]);
    hd_queue_clear(&q);
}
END_TEST

START_TEST(queue_live_limit)
{
    size_t len = msgs[0]->len;
    struct hd_queue q;
    hd_queue_init(&q, 3 * len); /* room for exactly three */
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(hd_queue_push(&q, msgs[i], HD_PUSH_LIVE), 0);
    ck_assert_uint_eq(q.bytes, 3 * len);
    ck_assert_int_eq(hd_queue_push(&q, msgs[3], HD_PUSH_LIVE), -ENOBUFS);
    /* Nothing changed: no count, no bytes, no reference taken. */
    ck_assert_uint_eq(q.count, 3);
    ck_assert_uint_eq(q.bytes, 3 * len);
    ck_assert_uint_eq(msgs[3]->refs, 1);
    ck_assert_ptr_eq(hd_queue_at(&q, 2), msgs[2]);
    /* Popping one makes room again. */
    pop_expect(&q, 0);
    ck_assert_uint_eq(q.bytes, 2 * len);
    ck_assert_int_eq(hd_queue_push(&q, msgs[3], HD_PUSH_LIVE), 0);
    pop_expect(&q, 1);
    pop_expect(&q, 2);
    pop_expect(&q, 3);
    ck_assert_uint_eq(q.bytes, 0);
    hd_queue_clear(&q);
}
END_TEST

START_TEST(queue_force_counts)
{
    size_t len = msgs[0]->len;
    struct hd_queue q;
    hd_queue_init(&q, len);
    ck_assert_int_eq(hd_queue_push(&q, msgs[0], HD_PUSH_LIVE), 0);
    struct hd_msg *r = text("{\"type\":\"error\",\"id\":null,\"code\":\"bad_request\"}");
    ck_assert_int_eq(hd_queue_push(&q, r, HD_PUSH_FORCE), 0); /* over the limit, accepted */
    ck_assert_uint_eq(q.count, 2);
    ck_assert_uint_eq(q.bytes, len + r->len);
    /* The forced bytes count: a live push is now refused. */
    ck_assert_int_eq(hd_queue_push(&q, msgs[1], HD_PUSH_LIVE), -ENOBUFS);
    pop_expect(&q, 0);
    ck_assert_uint_eq(q.bytes, r->len);
    struct hd_msg *p = hd_queue_pop(&q);
    ck_assert_ptr_eq(p, r);
    hd_msg_unref(p);
    ck_assert_uint_eq(q.bytes, 0);
    hd_msg_unref(r);
    hd_queue_clear(&q);
}
END_TEST

START_TEST(queue_shared_not_counted)
{
    size_t len = msgs[0]->len;
    struct hd_queue q;
    hd_queue_init(&q, msgs[11]->len); /* room for one of msgs[0] or msgs[11] */
    ck_assert_int_eq(hd_queue_push(&q, msgs[0], HD_PUSH_LIVE), 0);
    for (int i = 1; i <= 10; i++)
        ck_assert_int_eq(hd_queue_push(&q, msgs[i], HD_PUSH_SHARED), 0);
    ck_assert_uint_eq(q.count, 11);
    ck_assert_uint_eq(q.bytes, len); /* only the live one counts */
    /* Shared slots hand back the real message, not a tagged pointer. */
    ck_assert_ptr_eq(hd_queue_at(&q, 5), msgs[5]);
    pop_expect(&q, 0);
    ck_assert_uint_eq(q.bytes, 0);
    /* Popping shared messages must not take their bytes off (no underflow). */
    for (int i = 1; i <= 10; i++) {
        ck_assert_ptr_eq(hd_queue_peek(&q), msgs[i]);
        pop_expect(&q, i);
        ck_assert_uint_eq(q.bytes, 0);
    }
    /* And the limit still works afterwards. */
    ck_assert_int_eq(hd_queue_push(&q, msgs[11], HD_PUSH_LIVE), 0);
    ck_assert_int_eq(hd_queue_push(&q, msgs[12], HD_PUSH_LIVE), -ENOBUFS);
    pop_expect(&q, 11);
    hd_queue_clear(&q);
}
END_TEST

START_TEST(queue_clear_counts_events)
{
    struct hd_queue q;
    hd_queue_init(&q, SIZE_MAX);
    struct hd_msg *r1 = text("{\"type\":\"welcome\"}");
    struct hd_msg *r2 = text("{\"type\":\"ok\"}");
    ck_assert_int_eq(hd_queue_push(&q, r1, HD_PUSH_FORCE), 0);
    ck_assert_int_eq(hd_queue_push(&q, msgs[0], HD_PUSH_LIVE), 0);
    ck_assert_int_eq(hd_queue_push(&q, r2, HD_PUSH_FORCE), 0);
    ck_assert_int_eq(hd_queue_push(&q, msgs[1], HD_PUSH_SHARED), 0);
    ck_assert_int_eq(hd_queue_push(&q, msgs[2], HD_PUSH_LIVE), 0);
    msgs[1]->dropped = 4; /* other connections already lost it */
    ck_assert_uint_eq(hd_queue_clear(&q), 3);
    ck_assert_uint_eq(q.count, 0);
    ck_assert_uint_eq(q.bytes, 0);
    ck_assert_ptr_null(q.ring);
    ck_assert_uint_eq(msgs[0]->dropped, 1);
    ck_assert_uint_eq(msgs[1]->dropped, 5);
    ck_assert_uint_eq(msgs[2]->dropped, 1);
    ck_assert_uint_eq(msgs[3]->dropped, 0);
    ck_assert_uint_eq(r1->dropped, 0);
    ck_assert_uint_eq(r1->refs, 1);
    ck_assert_uint_eq(r2->refs, 1);
    hd_msg_unref(r1);
    hd_msg_unref(r2);
    /* Clearing an empty queue is harmless and drops nothing. */
    ck_assert_uint_eq(hd_queue_clear(&q), 0);
    /* The queue can be used again after a clear. */
    ck_assert_int_eq(hd_queue_push(&q, msgs[4], HD_PUSH_LIVE), 0);
    pop_expect(&q, 4);
    hd_queue_clear(&q);
}
END_TEST

static Suite *fanout_suite(void)
{
    Suite *s = suite_create("fanout");
    TCase *tc = tcase_create("msg");
    tcase_add_test(tc, msg_refcount);
    tcase_add_test(tc, msg_queue_keeps_reference);
    tcase_add_test(tc, event_encoding);
    tcase_add_test(tc, event_null_data);
    tcase_add_test(tc, text_message);
    tcase_add_test(tc, sse_format_built_once);
    tcase_add_test(tc, sse_event_kind);
    suite_add_tcase(s, tc);

    tc = tcase_create("queue");
    tcase_add_checked_fixture(tc, msgs_setup, msgs_teardown);
    tcase_add_test(tc, queue_order_wrap_and_growth);
    tcase_add_test(tc, queue_interleaved_model);
    tcase_add_test(tc, queue_live_limit);
    tcase_add_test(tc, queue_force_counts);
    tcase_add_test(tc, queue_shared_not_counted);
    tcase_add_test(tc, queue_clear_counts_events);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(fanout_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
