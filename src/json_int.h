/* SPDX-License-Identifier: MIT */
/*
 * Shared by the protocol module's files (protocol.c: command parsing; json.c: the canonical
 * JSON recognizer; encode.c: encoders and the compact dumper), nobody else.
 */
#ifndef HD_JSON_INT_H
#define HD_JSON_INT_H

#include <stdbool.h>
#include <stddef.h>

/* The length of the valid UTF-8 sequence at s (at most `left` bytes), or 0 when it is not
 * one: overlong forms, surrogates and code points past U+10FFFF are refused, as jansson
 * refuses them. */
size_t hd__utf8_seq_len(const unsigned char *s, size_t left);

/* One member of an object read in place: spans of the input, unescaped by construction. */
#define CANON_MAX_KEYS 16
struct canon_member {
    const char *key;
    size_t key_len;
    const char *val;
    size_t val_len;
};

/*
 * Reads a canonical object at *pp (advanced past it on success) into at most CANON_MAX_KEYS
 * members. False when the text is not provably what jansson would read and write back the
 * same; the caller then hands it to jansson.
 */
bool hd__canon_object(const unsigned char **pp, const unsigned char *end, int depth,
                      struct canon_member *out, size_t *n_out);

#endif
