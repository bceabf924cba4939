/* SPDX-License-Identifier: MIT */
/*
 * Topic and pattern grammar (PROTOCOL.md section 1): validation of client-supplied topics and
 * patterns, and a reference matcher used to filter history and to cross-check the registry's
 * trie. Everything here is a pure, bounded scan of at most HD_TOPIC_MAX bytes; the registry
 * (registry.c) owns the fast matching path.
 */
#include "topic.h"

#include <errno.h>
#include <string.h>

/* Segment characters: A-Z a-z 0-9 _ - : @ */
static const bool seg_char[256] = {
    ['a' ... 'z'] = 1, ['A' ... 'Z'] = 1, ['0' ... '9'] = 1, ['_'] = 1,
    ['-'] = 1,         [':'] = 1,         ['@'] = 1};

/*
 * One scanner for both grammars so topics and patterns cannot drift apart. Returns 0,
 * -EPERM for a well-formed reserved (`$`) topic or pattern, -EINVAL otherwise. The `$` is a
 * prefix of the first segment, which must still have at least one ordinary character after
 * it: `$` alone, `$*` and `$>` are not reserved names, they are malformed. One pass, a table
 * look-up a byte: every publish checks its topic more than once.
 */
static int scan(const char *s, size_t len, bool pattern)
{
    if (!s || len == 0 || len > HD_TOPIC_MAX)
        return -EINVAL;
    const unsigned char *u = (const unsigned char *)s;
    bool reserved = u[0] == '$';
    size_t i = reserved ? 1 : 0;
    for (;;) {
        size_t start = i;
        while (i < len && seg_char[u[i]])
            i++;
        if (i < len && u[i] != '.') {
            /* Not a segment character: only a pattern's wildcard, as a whole segment. */
            if (!pattern || i != start || (u[i] != '*' && u[i] != '>'))
                return -EINVAL;
            i++;
            if (i < len && u[i] != '.')
                return -EINVAL;
            if (reserved && start == 1)
                return -EINVAL;
            if (u[start] == '>' && i != len)
                return -EINVAL;
        }
        if (i == start)
            return -EINVAL;
        if (i == len)
            break;
        i++; /* the '.'; a trailing one leaves an empty segment, rejected above */
    }
    return reserved ? -EPERM : 0;
}

int hd_topic_check(const char *s, size_t len)
{
    return scan(s, len, false);
}

int hd_pattern_check(const char *s, size_t len)
{
    int r = scan(s, len, true);
    return r == -EPERM ? 0 : r; /* subscribing to `$sys.>` is allowed */
}

bool hd_pattern_is_literal(const char *pattern)
{
    /* In a valid pattern `*` and `>` only ever appear as whole segments. */
    return strpbrk(pattern, "*>") == NULL;
}

static const char *seg_end(const char *s)
{
    while (*s && *s != '.')
        s++;
    return s;
}

static bool is_wild_seg(const char *s)
{
    return (s[0] == '*' || s[0] == '>') && (s[1] == '.' || s[1] == '\0');
}

bool hd_pattern_match(const char *pattern, const char *topic)
{
    /* MQTT's rule: a wildcard in the first segment never reaches server topics. */
    if (topic[0] == '$' && is_wild_seg(pattern))
        return false;
    const char *p = pattern, *t = topic;
    for (;;) {
        const char *pe = seg_end(p), *te = seg_end(t);
        size_t pn = (size_t)(pe - p);
        if (pn == 1 && *p == '>')
            return true; /* `t` is at a segment, so at least one remains */
        if (!(pn == 1 && *p == '*') && (pn != (size_t)(te - t) || memcmp(p, t, pn) != 0))
            return false;
        if (!*pe || !*te)
            return !*pe && !*te;
        p = pe + 1;
        t = te + 1;
    }
}
