/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer harness for the topic grammar (src/topic.c) and pattern coverage (src/auth.c).
 * The input is two strings separated by '\n'. Checks run on exact-size buffers so over-reads
 * show up, and the functions are held to each other: a valid topic is a literal pattern that
 * matches itself; covers(a, a) for every valid pattern; covers(a, t) == match(a, t) for a
 * topic t; and for a pattern b, covers(a, b) holds exactly when a matches every instance of b
 * built with a segment that a does not mention (the witness argument in covers_check).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "topic.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static size_t seg_count(const char *p)
{
    size_t n = 1;
    for (; *p; p++)
        n += *p == '.';
    return n;
}

static bool has_segment(const char *p, const char *seg)
{
    size_t n = strlen(seg);
    for (;;) {
        size_t k = strcspn(p, ".");
        if (k == n && memcmp(p, seg, n) == 0)
            return true;
        if (!p[k])
            return false;
        p += k + 1;
    }
}

/*
 * Writes pattern b with every `*` replaced by `fresh` and a trailing `>` by k copies of it.
 * Returns false when the result would not be a valid topic length.
 */
static bool instance(const char *b, const char *fresh, size_t k, char *out)
{
    size_t n = 0, fl = strlen(fresh);
    for (const char *p = b;;) {
        size_t sl = strcspn(p, ".");
        size_t reps = (sl == 1 && (*p == '*' || *p == '>')) ? (*p == '>' ? k : 1) : 0;
        for (size_t r = 0; r < (reps ? reps : 1); r++) {
            const char *src = reps ? fresh : p;
            size_t len = reps ? fl : sl;
            if (n + len + 1 > HD_TOPIC_MAX + 1)
                return false;
            memcpy(out + n, src, len);
            n += len;
            out[n++] = '.';
        }
        if (!p[sl])
            break;
        p += sl + 1;
    }
    out[n - 1] = '\0';
    return n - 1 <= HD_TOPIC_MAX;
}

static void covers_check(const char *a, const char *b)
{
    char fresh[16];
    for (unsigned i = 0;; i++) {
        snprintf(fresh, sizeof(fresh), "f%u", i);
        if (!has_segment(a, fresh))
            break;
    }
    bool all = true, complete = true;
    char inst[HD_TOPIC_MAX + 2];
    size_t kmax = strstr(b, ">") ? seg_count(a) + 1 : 1;
    for (size_t k = 1; k <= kmax; k++) {
        if (!instance(b, fresh, k, inst)) {
            complete = false;
            continue;
        }
        int tc = hd_topic_check(inst, strlen(inst));
        if (tc != 0 && tc != -EPERM)
            abort(); /* the instance of a valid pattern must be a topic */
        if (!hd_pattern_match(b, inst))
            abort(); /* ...that the pattern matches */
        if (!hd_pattern_match(a, inst))
            all = false;
    }
    bool cov = hd_pattern_covers(a, b);
    if (cov && !all)
        abort(); /* unsound: a topic of b that a does not match */
    if (complete && !cov && all)
        abort(); /* incomplete: a matched every witness */
}

/* Runs the validators on an exact-size copy so a read past `len` is caught. */
static void check_exact(const uint8_t *s, size_t len, int *tc, int *pc)
{
    char *copy = malloc(len ? len : 1);
    if (!copy)
        abort();
    memcpy(copy, s, len);
    *tc = hd_topic_check(copy, len);
    *pc = hd_pattern_check(copy, len);
    free(copy);
    if ((*tc != 0 && *tc != -EPERM && *tc != -EINVAL) || (*pc != 0 && *pc != -EINVAL))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nl = memchr(data, '\n', size);
    size_t alen = nl ? (size_t)(nl - data) : size;
    const uint8_t *bd = nl ? nl + 1 : data;
    size_t blen = nl ? size - alen - 1 : size;
    int ta, pa, tb, pb;
    check_exact(data, alen, &ta, &pa);
    check_exact(bd, blen, &tb, &pb);
    /* The NUL-terminated functions cannot see past an embedded NUL: stop here then. */
    if (alen > HD_TOPIC_MAX || blen > HD_TOPIC_MAX || memchr(data, 0, alen) || memchr(bd, 0, blen))
        return 0;
    char a[HD_TOPIC_MAX + 1], b[HD_TOPIC_MAX + 1];
    memcpy(a, data, alen);
    a[alen] = '\0';
    memcpy(b, bd, blen);
    b[blen] = '\0';
    bool a_topic = ta == 0 || ta == -EPERM, b_topic = tb == 0 || tb == -EPERM;
    if (a_topic && (pa != 0 || !hd_pattern_is_literal(a) || !hd_pattern_match(a, a) ||
                    !hd_pattern_covers(a, a)))
        abort();
    if (pa == 0 && (!hd_pattern_covers(a, a) || hd_pattern_is_literal(a) != a_topic))
        abort();
    if (pa != 0 && hd_pattern_covers(a, b))
        abort(); /* invalid patterns are never covered nor covering */
    if (pa == 0 && b_topic) {
        if (hd_pattern_covers(a, b) != hd_pattern_match(a, b))
            abort();
        if (tb == -EPERM && a[0] != '$' && hd_pattern_match(a, b))
            abort(); /* only a `$` pattern reaches a reserved topic */
    }
    if (pa == 0 && pb == 0)
        covers_check(a, b);
    return 0;
}
