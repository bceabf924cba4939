/* SPDX-License-Identifier: MIT */
/*
 * Shared by the protocol module's files (protocol.c: command parsing; json.c: the canonical
 * JSON recognizer; encode.c: encoders and the compact dumper), nobody else.
 */
#ifndef HD_JSON_INT_H
#define HD_JSON_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* The length of the valid UTF-8 sequence at s (at most `left` bytes), or 0 when it is not
 * one: overlong forms, surrogates and code points past U+10FFFF are refused, as jansson
 * refuses them. */
size_t hd__utf8_seq_len(const unsigned char *s, size_t left);

/*
 * How many bytes at the start of s (n bytes) a JSON string holds as they are: printable ASCII
 * other than '"' and '\\'. Eight at a time while none of them is another byte (word-wide
 * tests, each exact for whether any byte matches), because strings are most of what the
 * recognizer and the escaper read and a byte at a time cost about 16 instructions each.
 */
static inline size_t hd__json_plain_span(const unsigned char *s, size_t n)
{
    const uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;
    size_t k = 0;
    while (n - k >= 8) {
        uint64_t x;
        memcpy(&x, s + k, 8);
        uint64_t quote = x ^ ('"' * ones), bslash = x ^ ('\\' * ones);
        /* below 0x20; 0x7f or above (x + 1 carries into the high bit, or it is set); '"'; '\\' */
        if ((((x - 0x20 * ones) & ~x) | (x + ones) | x | ((quote - ones) & ~quote) |
             ((bslash - ones) & ~bslash)) &
            highs)
            break;
        k += 8;
    }
    while (k < n && s[k] >= 0x20 && s[k] < 0x7f && s[k] != '"' && s[k] != '\\')
        k++;
    return k;
}

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
