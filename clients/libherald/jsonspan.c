/* SPDX-License-Identifier: MIT */
/*
 * Byte spans inside JSON text that is already known to be valid: the value of one member of
 * an object, the elements of an array. Used so that event data reaches applications exactly
 * as the server wrote it (a re-serialization would respell numbers such as 0.1). Bounded by
 * the given length; never allocates. Also compiled into the herald CLI.
 */
#include <stdbool.h>
#include <string.h>

#include "jsonspan.h"

static size_t skip_ws(const char *s, size_t i, size_t len)
{
    while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    return i;
}

/* Index just past the string starting at s[i] == '"'. */
static size_t skip_string(const char *s, size_t i, size_t len)
{
    for (i++; i < len; i++) {
        if (s[i] == '\\')
            i++;
        else if (s[i] == '"')
            return i + 1;
    }
    return len;
}

/* Index just past the value starting at s[i] (valid JSON assumed, so nesting is balanced). */
static size_t skip_value(const char *s, size_t i, size_t len)
{
    if (i >= len)
        return len;
    if (s[i] == '"')
        return skip_string(s, i, len);
    if (s[i] == '{' || s[i] == '[') {
        size_t depth = 0;
        for (; i < len; i++) {
            char c = s[i];
            if (c == '"') {
                i = skip_string(s, i, len) - 1;
            } else if (c == '{' || c == '[') {
                depth++;
            } else if (c == '}' || c == ']') {
                if (--depth == 0)
                    return i + 1;
            }
        }
        return len;
    }
    while (i < len && s[i] != ',' && s[i] != '}' && s[i] != ']' && s[i] != ' ' && s[i] != '\t' &&
           s[i] != '\n' && s[i] != '\r')
        i++;
    return i;
}

int herald__json_member_span(const char *text, size_t len, const char *key, size_t *off,
                             size_t *vlen)
{
    size_t klen = strlen(key);
    size_t i = skip_ws(text, 0, len);
    if (i >= len || text[i] != '{')
        return -1;
    i++;
    for (;;) {
        i = skip_ws(text, i, len);
        if (i >= len || text[i] != '"')
            return -1;
        size_t ks = i + 1;
        size_t ke = skip_string(text, i, len); /* past the closing quote */
        /* Keys we look for contain no escapes, so a raw compare is exact. */
        bool hit = ke - 1 - ks == klen && memcmp(text + ks, key, klen) == 0;
        i = skip_ws(text, ke, len);
        if (i >= len || text[i] != ':')
            return -1;
        i = skip_ws(text, i + 1, len);
        size_t ve = skip_value(text, i, len);
        if (hit) {
            *off = i;
            *vlen = ve - i;
            return 0;
        }
        i = skip_ws(text, ve, len);
        if (i >= len || text[i] != ',')
            return -1;
        i++;
    }
}

int herald__json_array_next(const char *text, size_t len, size_t *pos, size_t *off, size_t *vlen)
{
    size_t i = skip_ws(text, *pos, len);
    if (i >= len)
        return -1;
    if (text[i] == '[' || text[i] == ',')
        i = skip_ws(text, i + 1, len);
    if (i >= len || text[i] == ']')
        return -1;
    size_t ve = skip_value(text, i, len);
    *off = i;
    *vlen = ve - i;
    *pos = ve;
    return 0;
}
