/* SPDX-License-Identifier: MIT */
/*
 * Topic and pattern grammar (PROTOCOL.md section 1). A topic is 1-255 bytes of `.`-separated
 * segments of [A-Za-z0-9_:@-]; a pattern may also use `*` for one whole segment and `>` as the
 * last segment for one or more remaining segments. A leading `$` marks a server-reserved topic:
 * valid to subscribe to, never publishable by clients, and not matched by a leading wildcard.
 * Pure functions, no allocation.
 */
#ifndef HD_TOPIC_H
#define HD_TOPIC_H

#include <stdbool.h>
#include <stddef.h>

#define HD_TOPIC_MAX 255
/* A 255-byte topic has at most 128 segments; patterns are bounded by the same length. */
#define HD_TOPIC_MAX_SEGMENTS 128

/*
 * Checks a concrete topic (no wildcards) of `len` bytes (need not be NUL-terminated).
 * Returns 0 when valid, -EPERM when valid but reserved (first byte `$` followed by a valid
 * topic), -EINVAL otherwise.
 */
int hd_topic_check(const char *s, size_t len);

/* Checks a subscription pattern. Returns 0 when valid, -EINVAL otherwise. */
int hd_pattern_check(const char *s, size_t len);

/* True when the pattern has no `*` or `>` segment. Assumes a valid pattern. */
bool hd_pattern_is_literal(const char *pattern);

/*
 * Reference matcher: true when valid pattern `pattern` matches valid topic `topic` (both
 * NUL-terminated). Used to filter history; the registry has its own trie walk.
 */
bool hd_pattern_match(const char *pattern, const char *topic);

#endif
