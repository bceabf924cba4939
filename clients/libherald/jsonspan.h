/* SPDX-License-Identifier: MIT */
/*
 * Byte spans in valid JSON text (see jsonspan.c). Internal to libherald and the herald CLI,
 * which compiles the same source; not installed.
 */
#ifndef HERALD_JSONSPAN_H
#define HERALD_JSONSPAN_H

#include <stddef.h>

/*
 * Finds the value of the top-level member `key` (no escapes in it) of the JSON object `text`
 * and returns 0 with its byte span, or -1 when absent or `text` is not an object.
 */
int herald__json_member_span(const char *text, size_t len, const char *key, size_t *off,
                             size_t *vlen);

/*
 * Iterates the elements of the JSON array `text` (or a span of one: pass its length). Start
 * with *pos = 0; each call returns 0 with the next element's span, or -1 at the end.
 */
int herald__json_array_next(const char *text, size_t len, size_t *pos, size_t *off, size_t *vlen);

#endif
