/* SPDX-License-Identifier: MIT */
/*
 * Check suite for the NATS engine's pure rules (src/natsid.c): ids from a stream's epoch and
 * sequence, what a recreated stream does to old cursors, topic <-> subject mapping, header
 * values and the feed's next/duplicate/gap decision. No server, no threads.
 */
#include "natsid.h"

#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

/* 2026-12-07T01:00:00Z, as JetStream reports a stream's Created (nanoseconds). */
#define CREATED_NS 1796605200123456789LL

START_TEST(base_from_creation)
{
    ck_assert_uint_eq(hd_natsid_base(CREATED_NS), 1796605200123456ULL);
    /* Sub-microsecond differences collapse; a microsecond apart is another epoch. */
    ck_assert_uint_eq(hd_natsid_base(CREATED_NS + 999 - 789), hd_natsid_base(CREATED_NS));
    ck_assert_uint_gt(hd_natsid_base(CREATED_NS + 1000), hd_natsid_base(CREATED_NS));
    /* Implausible creation times are refused, not turned into tiny or huge bases. */
    ck_assert_uint_eq(hd_natsid_base(0), 0);
    ck_assert_uint_eq(hd_natsid_base(-5), 0);
    ck_assert_uint_eq(hd_natsid_base(946684799LL * 1000000000), 0);
    ck_assert_uint_ne(hd_natsid_base(946684800LL * 1000000000), 0);
    ck_assert_uint_eq(hd_natsid_base(7258118400LL * 1000000000), 0);
}
END_TEST

START_TEST(ids_round_trip)
{
    uint64_t base = hd_natsid_base(CREATED_NS), seq = 0;
    /* Sequences map to consecutive ids above the base, and back. */
    for (uint64_t s = 1; s < 1000; s += 37) {
        uint64_t id = hd_natsid_make(base, s);
        ck_assert_uint_eq(id, base + s);
        ck_assert_int_eq(hd_natsid_seq(base, id, &seq), 0);
        ck_assert_uint_eq(seq, s);
    }
    ck_assert_uint_lt(hd_natsid_make(base, 1), hd_natsid_make(base, 2));
    /* 16 hex digits, like every other id the daemon prints. */
    char hex[32];
    snprintf(hex, sizeof(hex), "%016llx", (unsigned long long)hd_natsid_make(base, 42));
    ck_assert_uint_eq(strlen(hex), 16);
    ck_assert_str_eq(hex, "00066200bec1466a");
    /* Sequence 0 does not exist in JetStream; ids never pass 2^63 - 1. */
    ck_assert_uint_eq(hd_natsid_make(base, 0), 0);
    ck_assert_uint_eq(hd_natsid_make(base, HD_NATSID_MAX - base), HD_NATSID_MAX);
    ck_assert_uint_eq(hd_natsid_make(base, HD_NATSID_MAX - base + 1), 0);
    ck_assert_uint_eq(hd_natsid_make(HD_NATSID_MAX, 1), 0);
    ck_assert_uint_eq(hd_natsid_make(base, UINT64_MAX), 0);
    /* The base itself and anything below it are not ids of this epoch. */
    ck_assert_int_eq(hd_natsid_seq(base, base, &seq), -ERANGE);
    ck_assert_int_eq(hd_natsid_seq(base, 5, &seq), -ERANGE);
    ck_assert_int_eq(hd_natsid_seq(base, HD_NATSID_MAX + 1, &seq), -ERANGE);
}
END_TEST

/* The contract's promise: a recreated stream never lets an old cursor name a new event. */
START_TEST(recreated_stream)
{
    uint64_t old_base = hd_natsid_base(CREATED_NS);
    /* The old stream took 20,000 publishes in its first 200 ms (100k/s), then was deleted and
     * created again one second after its own creation. */
    uint64_t old_last = hd_natsid_make(old_base, 20000);
    uint64_t new_base = hd_natsid_base(CREATED_NS + 1000000000LL);
    uint64_t seq;
    ck_assert_int_eq(hd_natsid_epoch_change(old_base, old_last, new_base), HD_EPOCH_NEW);
    /* Every old id lies below every new one, and none decodes in the new epoch. */
    ck_assert_uint_lt(old_last, hd_natsid_make(new_base, 1));
    for (uint64_t s = 1; s <= 20000; s += 999)
        ck_assert_int_eq(hd_natsid_seq(new_base, hd_natsid_make(old_base, s), &seq), -ERANGE);
    ck_assert_int_eq(hd_natsid_seq(new_base, old_last, &seq), -ERANGE);

    /* Attaching again to the same stream is no change, whatever was delivered. */
    ck_assert_int_eq(hd_natsid_epoch_change(old_base, old_last, old_base), HD_EPOCH_SAME);
    ck_assert_int_eq(hd_natsid_epoch_change(old_base, 0, old_base), HD_EPOCH_SAME);
    /* First attach of a node's life. */
    ck_assert_int_eq(hd_natsid_epoch_change(0, 0, new_base), HD_EPOCH_NEW);
    /* A new stream created "before" ids already delivered (a server clock behind) overlaps;
     * so does an older stream reappearing. */
    ck_assert_int_eq(hd_natsid_epoch_change(old_base, old_last, old_base + 19999),
                     HD_EPOCH_OVERLAP);
    ck_assert_int_eq(hd_natsid_epoch_change(new_base, hd_natsid_make(new_base, 3), old_base),
                     HD_EPOCH_OVERLAP);
    /* Exactly at the boundary: the new first id is last + 1, still above. */
    ck_assert_int_eq(hd_natsid_epoch_change(old_base, old_last, old_last), HD_EPOCH_NEW);
}
END_TEST

START_TEST(subjects)
{
    char buf[32];
    ck_assert_int_eq(hd_natsid_subject("herald", "chat.room1", buf, sizeof(buf)), 17);
    ck_assert_str_eq(buf, "herald.chat.room1");
    ck_assert_int_eq(hd_natsid_subject("acme.herald", "a", buf, sizeof(buf)), 13);
    ck_assert_str_eq(buf, "acme.herald.a");
    /* Exactly fitting, and one byte short. */
    ck_assert_int_eq(hd_natsid_subject("herald", "0123456789", buf, 18), 17);
    ck_assert_int_eq(hd_natsid_subject("herald", "01234567890", buf, 18), -ENAMETOOLONG);

    ck_assert_str_eq(hd_natsid_topic("herald", "herald.chat.room1"), "chat.room1");
    ck_assert_str_eq(hd_natsid_topic("acme.herald", "acme.herald.x"), "x");
    ck_assert_ptr_null(hd_natsid_topic("herald", "heraldx.chat"));
    ck_assert_ptr_null(hd_natsid_topic("herald", "herald."));
    ck_assert_ptr_null(hd_natsid_topic("herald", "herald"));
    ck_assert_ptr_null(hd_natsid_topic("herald", "other.chat"));
    ck_assert_ptr_null(hd_natsid_topic("acme.herald", "acme.chat"));
}
END_TEST

START_TEST(header_numbers)
{
    uint64_t v = 7;
    ck_assert_int_eq(hd_natsid_parse_u64("0", &v), 0);
    ck_assert_uint_eq(v, 0);
    ck_assert_int_eq(hd_natsid_parse_u64("1764288000123", &v), 0);
    ck_assert_uint_eq(v, 1764288000123ULL);
    ck_assert_int_eq(hd_natsid_parse_u64("9999999999999999999", &v), 0);
    ck_assert_uint_eq(v, 9999999999999999999ULL);
    static const char *const bad[] = {
        "", "-1", "+1", " 1", "1 ", "1e3", "0x10", "99999999999999999999", "12a"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        v = 7;
        ck_assert_msg(hd_natsid_parse_u64(bad[i], &v) == -EINVAL, "\"%s\"", bad[i]);
        ck_assert_uint_eq(v, 7);
    }
    ck_assert_int_eq(hd_natsid_parse_u64(NULL, &v), -EINVAL);
}
END_TEST

START_TEST(follow)
{
    /* First delivery: anything from the start point is next, earlier is a repeat. */
    ck_assert_int_eq(hd_natsid_follow(0, 100, 100), HD_FOLLOW_NEXT);
    ck_assert_int_eq(hd_natsid_follow(0, 100, 250), HD_FOLLOW_NEXT);
    ck_assert_int_eq(hd_natsid_follow(0, 100, 99), HD_FOLLOW_DUP);
    /* Then strictly one after another. */
    ck_assert_int_eq(hd_natsid_follow(100, 100, 101), HD_FOLLOW_NEXT);
    ck_assert_int_eq(hd_natsid_follow(100, 100, 100), HD_FOLLOW_DUP);
    ck_assert_int_eq(hd_natsid_follow(100, 100, 7), HD_FOLLOW_DUP);
    ck_assert_int_eq(hd_natsid_follow(100, 100, 102), HD_FOLLOW_GAP);
    ck_assert_int_eq(hd_natsid_follow(100, 1, 5000), HD_FOLLOW_GAP);
}
END_TEST

START_TEST(server_version)
{
    int ma = 0, mi = 0;
    char text[32];
    ck_assert_int_eq(hd_natsid_info_version("INFO {\"server_id\":\"N\",\"version\":\"2.10.27\","
                                            "\"go\":\"go1.24\"}\r\n",
                                            &ma, &mi, text, sizeof(text)),
                     0);
    ck_assert_int_eq(ma, 2);
    ck_assert_int_eq(mi, 10);
    ck_assert_str_eq(text, "2.10.27");
    ck_assert_int_eq(hd_natsid_info_version("INFO {\"version\":\"2.9.10\"}", &ma, &mi, text, 4), 0);
    ck_assert_int_eq(ma, 2);
    ck_assert_int_eq(mi, 9);
    ck_assert_str_eq(text, "2.9");
    ck_assert_int_eq(hd_natsid_info_version("INFO {\"proto\":1}", &ma, &mi, text, 32), -EINVAL);
    ck_assert_int_eq(hd_natsid_info_version("-ERR \"version\":\"2.10.1\"", &ma, &mi, text, 32),
                     -EINVAL);
    ck_assert_int_eq(hd_natsid_info_version("INFO {\"version\":\"x\"}", &ma, &mi, text, 32),
                     -EINVAL);
    ck_assert_int_eq(hd_natsid_info_version("INFO {\"version\":\"2.10", &ma, &mi, text, 32),
                     -EINVAL);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("natsid");
    TCase *tc = tcase_create("natsid");
    tcase_add_test(tc, base_from_creation);
    tcase_add_test(tc, ids_round_trip);
    tcase_add_test(tc, recreated_stream);
    tcase_add_test(tc, subjects);
    tcase_add_test(tc, header_numbers);
    tcase_add_test(tc, follow);
    tcase_add_test(tc, server_version);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
