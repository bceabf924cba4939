/* SPDX-License-Identifier: MIT */
/*
 * Client-side topic matching, the same rule the server applies: `*` matches exactly one
 * segment, a final `>` one or more, and a wildcard in the first segment never matches a
 * server (`$`) topic. The client needs it only to know which of its subscriptions an event
 * belongs to when it resumes them; validation stays the server's business.
 */
#include <string.h>

#include "internal.h"

static const char *seg_end(const char *s)
{
    while (*s && *s != '.')
        s++;
    return s;
}

/* Borrows both strings; false for NULL. */
bool herald__pattern_match(const char *pattern, const char *topic)
{
    if (!pattern || !topic || !*pattern || !*topic)
        return false;
    if (topic[0] == '$' && (pattern[0] == '*' || pattern[0] == '>') &&
        (pattern[1] == '.' || pattern[1] == '\0'))
        return false;
    const char *p = pattern, *t = topic;
    for (;;) {
        const char *pe = seg_end(p), *te = seg_end(t);
        size_t pn = (size_t)(pe - p);
        if (pn == 1 && *p == '>')
            return !*pe; /* only valid as the last segment; t has at least one left */
        if (!(pn == 1 && *p == '*') && (pn != (size_t)(te - t) || memcmp(p, t, pn) != 0))
            return false;
        if (!*pe || !*te)
            return !*pe && !*te;
        p = pe + 1;
        t = te + 1;
    }
}
