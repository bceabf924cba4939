/* SPDX-License-Identifier: MIT */
/*
 * Check suite for the topic grammar (src/topic.c): what a client may publish to, what it may
 * subscribe to, and which topics a pattern matches. Tables of valid and invalid inputs
 * include the length boundaries and the reserved `$` prefix.
 */
#include "topic.h"

#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

static int topic_check(const char *s)
{
    return hd_topic_check(s, strlen(s));
}

static int pattern_check(const char *s)
{
    return hd_pattern_check(s, strlen(s));
}

/* A string of `len` bytes made of `unit` repeated (and cut), in a static buffer. */
static const char *repeat(const char *unit, size_t len)
{
    static char buf[512];
    size_t u = strlen(unit);
    for (size_t i = 0; i < len; i++)
        buf[i] = unit[i % u];
    buf[len] = '\0';
    return buf;
}

START_TEST(topic_valid)
{
    static const char *const ok[] = {
        "a", "logins", "chat.room1", "user.42.inbox", "A-Z_a:z@09", "x.y.z.w.v", "@", "-._",
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        ck_assert_msg(topic_check(ok[i]) == 0, "rejected %s", ok[i]);
    /* `-._` above is "-" "." "_": two one-char segments. */
}
END_TEST

START_TEST(topic_invalid)
{
    static const char *const bad[] = {
        "",   ".",      "a..b",        ".a",    "a.",      "a b",   " a",   "a/b",
        "a#", "a+b",    "caf\xc3\xa9", "\x7f",  "a\tb",    "a*",    ">b",   "*",
        ">",  "chat.*", "chat.>",      "a.*.b", "$",       "$.a",   "a.$b", "$$a",
        "a$", "a.$",    "$*",          "$>",    "$sys..x", "$sys.", "a,b",  "a\nb",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(topic_check(bad[i]) == -EINVAL, "accepted \"%s\"", bad[i]);
}
END_TEST

START_TEST(topic_reserved)
{
    ck_assert_int_eq(topic_check("$sys.stats"), -EPERM);
    ck_assert_int_eq(topic_check("$sys"), -EPERM);
    ck_assert_int_eq(topic_check("$a.b.c"), -EPERM);
    ck_assert_int_eq(topic_check("$sys.*"), -EINVAL);
    /* The rest of a reserved topic obeys the same grammar. */
    ck_assert_int_eq(topic_check("$sys.a b"), -EINVAL);
}
END_TEST

START_TEST(topic_length_bounds)
{
    ck_assert_int_eq(topic_check(repeat("a", 255)), 0);
    ck_assert_int_eq(topic_check(repeat("a", 256)), -EINVAL);
    /* 128 one-byte segments is exactly 255 bytes. */
    ck_assert_int_eq(topic_check(repeat("a.", 255)), 0);
    ck_assert_int_eq(topic_check(repeat("ab.", 254)), 0);
    ck_assert_int_eq(topic_check(repeat("ab.", 255)), -EINVAL); /* ends in "." */
    ck_assert_int_eq(topic_check(repeat("a.", 256)), -EINVAL);
    char buf[300];
    buf[0] = '$';
    memset(buf + 1, 'x', 254);
    ck_assert_int_eq(hd_topic_check(buf, 255), -EPERM);
    buf[255] = 'x';
    ck_assert_int_eq(hd_topic_check(buf, 256), -EINVAL);
    ck_assert_int_eq(hd_topic_check("abc", 0), -EINVAL);
    ck_assert_int_eq(hd_topic_check(NULL, 0), -EINVAL);
}
END_TEST

START_TEST(topic_len_not_nul)
{
    /* Only `len` bytes are read: a prefix of a longer string, or a buffer with no NUL. */
    ck_assert_int_eq(hd_topic_check("chat.room1 junk", 10), 0);
    ck_assert_int_eq(hd_topic_check("ab.", 3), -EINVAL);
    ck_assert_int_eq(hd_topic_check("ab.", 2), 0);
    char *heap = malloc(4); /* exact size, so a read past `len` is caught by the sanitizers */
    ck_assert_ptr_nonnull(heap);
    memcpy(heap, "a.bc", 4);
    ck_assert_int_eq(hd_topic_check(heap, 4), 0);
    ck_assert_int_eq(hd_pattern_check(heap, 4), 0);
    free(heap);
    /* An embedded NUL inside `len` is just another forbidden byte. */
    ck_assert_int_eq(hd_topic_check("a\0b", 3), -EINVAL);
    ck_assert_int_eq(hd_pattern_check("a\0b", 3), -EINVAL);
}
END_TEST

START_TEST(pattern_valid)
{
    static const char *const ok[] = {
        "a",     "chat.room1", "chat.*", "user.42.>", ">",      "*",   "*.*",      "*.b",
        "a.*.c", "*.>",        "$sys",   "$sys.>",    "$sys.*", "a.>", "$sys.*.x", "x.*.*.>",
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        ck_assert_msg(pattern_check(ok[i]) == 0, "rejected %s", ok[i]);
}
END_TEST

START_TEST(pattern_invalid)
{
    static const char *const bad[] = {
        "",     "a*",    ">b", "*a",  "a>",   "a.>.b", ">.a",  "**",    "*>",
        ">>",   "$*",    "$>", "$.a", "$",    "a.$b",  "a..b", "a.",    ".a",
        "a.*.", "a b.>", "$$", ".>",  "*..b", "a.**",  "a.>>", "x.>.>", "\xc3",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(pattern_check(bad[i]) == -EINVAL, "accepted \"%s\"", bad[i]);
    ck_assert_int_eq(hd_pattern_check("a.*\0b", 5), -EINVAL);
}
END_TEST

START_TEST(pattern_length_bounds)
{
    ck_assert_int_eq(pattern_check(repeat("*.", 255)), 0);
    ck_assert_int_eq(pattern_check(repeat("*.", 256)), -EINVAL);
    char buf[300];
    memcpy(buf, repeat("a", 253), 253);
    memcpy(buf + 253, ".>", 3);
    ck_assert_int_eq(pattern_check(buf), 0); /* 255 bytes ending in `>` */
    ck_assert_int_eq(pattern_check(repeat("b", 256)), -EINVAL);
}
END_TEST

START_TEST(pattern_literal)
{
    ck_assert(hd_pattern_is_literal("a"));
    ck_assert(hd_pattern_is_literal("chat.room1"));
    ck_assert(hd_pattern_is_literal("$sys.x"));
    ck_assert(!hd_pattern_is_literal("*"));
    ck_assert(!hd_pattern_is_literal(">"));
    ck_assert(!hd_pattern_is_literal("a.*.b"));
    ck_assert(!hd_pattern_is_literal("a.>"));
}
END_TEST

static const struct {
    const char *pattern, *topic;
    bool match;
} match_table[] = {
    {"chat.room1", "chat.room1", true},
    {"chat.room1", "chat.room2", false},
    {"chat.room1", "chat.room10", false},
    {"chat.room10", "chat.room1", false},
    {"chat.room1", "chat", false},
    {"chat", "chat.room1", false},
    {"chat.*", "chat.a", true},
    {"chat.*", "chat.a.b", false},
    {"chat.*", "chat", false},
    {"chat.>", "chat.a", true},
    {"chat.>", "chat.a.b.c", true},
    {"chat.>", "chat", false},
    {"chat.>", "chatter.a", false},
    {"*.b", "a.b", true},
    {"*.b", "a.c", false},
    {"*.b", "b", false},
    {"*", "a", true},
    {"*", "a.b", false},
    {"a.*.c", "a.b.c", true},
    {"a.*.c", "a.b.d", false},
    {"a.*.c", "a.c", false},
    {"*.*", "a.b", true},
    {"*.>", "a.b", true},
    {"*.>", "a", false},
    {">", "a", true},
    {">", "a.b.c", true},
    {">", "$sys.x", false},
    {">", "$sys", false},
    {"*", "$sys", false},
    {"*.x", "$sys.x", false},
    {"*.>", "$sys.x", false},
    {"$sys.>", "$sys.x", true},
    {"$sys.>", "$sys", false},
    {"$sys.*", "$sys.x", true},
    {"$sys", "$sys", true},
    {"$sys.x", "$sys.x", true},
    {"sys.x", "$sys.x", false},
    {"$sys.x", "sys.x", false},
    {"a.*", "a.b", true},
    {"user.42.>", "user.42.inbox", true},
    {"user.42.>", "user.43.inbox", false},
};

START_TEST(pattern_match)
{
    const char *p = match_table[_i].pattern, *t = match_table[_i].topic;
    ck_assert_msg(hd_pattern_match(p, t) == match_table[_i].match, "%s vs %s: expected %d", p, t,
                  match_table[_i].match);
}
END_TEST

START_TEST(pattern_match_long)
{
    char topic[256], pattern[256];
    strcpy(topic, repeat("a.", 255));
    ck_assert(hd_pattern_match(topic, topic));
    strcpy(pattern, repeat("*.", 255));
    ck_assert(hd_pattern_match(pattern, topic));
    pattern[254] = '>'; /* "*.*....*.>": 127 stars then `>` covering the last segment */
    ck_assert(hd_pattern_match(pattern, topic));
    ck_assert(!hd_pattern_match(pattern, repeat("a.", 253)));
}
END_TEST

static Suite *topic_suite(void)
{
    Suite *s = suite_create("topic");
    TCase *tc = tcase_create("check");
    tcase_add_test(tc, topic_valid);
    tcase_add_test(tc, topic_invalid);
    tcase_add_test(tc, topic_reserved);
    tcase_add_test(tc, topic_length_bounds);
    tcase_add_test(tc, topic_len_not_nul);
    tcase_add_test(tc, pattern_valid);
    tcase_add_test(tc, pattern_invalid);
    tcase_add_test(tc, pattern_length_bounds);
    tcase_add_test(tc, pattern_literal);
    suite_add_tcase(s, tc);
    TCase *tm = tcase_create("match");
    tcase_add_loop_test(tm, pattern_match, 0, sizeof(match_table) / sizeof(match_table[0]));
    tcase_add_test(tm, pattern_match_long);
    suite_add_tcase(s, tm);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(topic_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
