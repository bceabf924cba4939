/* SPDX-License-Identifier: MIT */
/*
 * Compact canonical JSON, recognised without parsing: text that jansson would read and our
 * dumper would write back byte for byte is used as it came (commands read in place, publish
 * bodies passed on), because parsing and re-serialising it cost more than the rest of a
 * publish. Also the UTF-8 validity rules the recognizer, the escaper and error messages
 * share. Anything not proven canonical goes to jansson; fuzz_cmd checks the two agree.
 */
#include "json_int.h"
#include "protocol.h"

#include <stdint.h>
#include <string.h>

size_t hd__utf8_seq_len(const unsigned char *s, size_t left)
{
    unsigned c = s[0];
    size_t n;
    unsigned cp;

    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
        cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
        n = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (left < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    /* Overlong forms and surrogates are invalid UTF-8 and would be refused by any decoder. */
    if (n == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff)))
        return 0;
    if (n == 4 && (cp < 0x10000 || cp > 0x10ffff))
        return 0;
    return n;
}

/* ---- canonical JSON recognizer ------------------------------------------------------- */

/*
 * hd_json_canonical and the in-place command reader. Every rule here mirrors what jansson
 * accepts and what dump() below writes; anything outside the rules is "not proven" and goes
 * to jansson. fuzz_cmd checks the two paths against each other.
 */
#define CANON_MAX_DEPTH 32
#define CANON_MAX_DIGITS 18 /* always fits json_int_t, so the writer gives the same digits */

static bool canon_value(const unsigned char **pp, const unsigned char *end, int depth);

/* A string with no escapes: printable ASCII but '"', '\\' and DEL (wr_jesc escapes those),
 * or valid UTF-8 (wr_jesc and jansson agree on what that is: utf8_seq_len). */
static bool canon_string(const unsigned char **pp, const unsigned char *end)
{
    const unsigned char *p = *pp + 1;
    while (p < end) {
        p += hd__json_plain_span(p, (size_t)(end - p));
        if (p == end)
            break;
        unsigned c = *p;
        if (c == '"') {
            *pp = p + 1;
            return true;
        }
        if (c < 0x20 || c == '\\' || c == 0x7f)
            return false;
        if (c < 0x80) {
            p++;
            continue;
        }
        size_t n = hd__utf8_seq_len(p, (size_t)(end - p));
        if (!n)
            return false;
        p += n;
    }
    return false;
}

/* An integer as wr_i64 writes it: no "-0", no leading zeros, no fraction or exponent. */
static bool canon_integer(const unsigned char **pp, const unsigned char *end)
{
    const unsigned char *p = *pp;
    bool neg = *p == '-';
    if (neg)
        p++;
    if (p == end || *p < '0' || *p > '9')
        return false;
    const unsigned char *digits = p;
    if (*p == '0') {
        p++;
        if (neg)
            return false;
    } else {
        while (p < end && *p >= '0' && *p <= '9')
            p++;
        if (p - digits > CANON_MAX_DIGITS)
            return false;
    }
    if (p < end && ((*p >= '0' && *p <= '9') || *p == '.' || *p == 'e' || *p == 'E'))
        return false;
    *pp = p;
    return true;
}

static bool canon_literal(const unsigned char **pp, const unsigned char *end, const char *lit)
{
    size_t n = strlen(lit);
    if ((size_t)(end - *pp) < n || memcmp(*pp, lit, n) != 0)
        return false;
    *pp += n;
    return true;
}

/* An object whose keys are distinct (compared as bytes: they hold no escapes). Its members
 * go to out[] (CANON_MAX_KEYS entries) when out is not NULL. */
bool hd__canon_object(const unsigned char **pp, const unsigned char *end, int depth,
                      struct canon_member *out, size_t *n_out)
{
    struct canon_member m[CANON_MAX_KEYS];
    size_t n = 0;
    const unsigned char *p = *pp + 1;
    if (p < end && *p == '}') {
        *pp = p + 1;
        if (n_out)
            *n_out = 0;
        return true;
    }
    for (;;) {
        if (p == end || *p != '"' || n == CANON_MAX_KEYS)
            return false;
        const unsigned char *key = p + 1;
        if (!canon_string(&p, end))
            return false;
        size_t key_len = (size_t)(p - 1 - key);
        for (size_t i = 0; i < n; i++)
            if (m[i].key_len == key_len && memcmp(m[i].key, key, key_len) == 0)
                return false;
        if (p == end || *p != ':')
            return false;
        const unsigned char *val = ++p;
        if (!canon_value(&p, end, depth + 1))
            return false;
        m[n++] = (struct canon_member){.key = (const char *)key,
                                       .key_len = key_len,
                                       .val = (const char *)val,
                                       .val_len = (size_t)(p - val)};
        if (p < end && *p == ',') {
            p++;
            continue;
        }
        if (p == end || *p != '}')
            return false;
        *pp = p + 1;
        if (out)
            memcpy(out, m, n * sizeof(m[0]));
        if (n_out)
            *n_out = n;
        return true;
    }
}

static bool canon_array(const unsigned char **pp, const unsigned char *end, int depth)
{
    const unsigned char *p = *pp + 1;
    if (p < end && *p == ']') {
        *pp = p + 1;
        return true;
    }
    for (;;) {
        if (!canon_value(&p, end, depth + 1))
            return false;
        if (p < end && *p == ',') {
            p++;
            continue;
        }
        if (p == end || *p != ']')
            return false;
        *pp = p + 1;
        return true;
    }
}

static bool canon_value(const unsigned char **pp, const unsigned char *end, int depth)
{
    if (*pp == end || depth >= CANON_MAX_DEPTH)
        return false;
    switch (**pp) {
    case '{':
        return hd__canon_object(pp, end, depth, NULL, NULL);
    case '[':
        return canon_array(pp, end, depth);
    case '"':
        return canon_string(pp, end);
    case 't':
        return canon_literal(pp, end, "true");
    case 'f':
        return canon_literal(pp, end, "false");
    case 'n':
        return canon_literal(pp, end, "null");
    default:
        return canon_integer(pp, end);
    }
}

bool hd_json_canonical(const char *s, size_t len)
{
    if (!s || len == 0)
        return false;
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    return canon_value(&p, end, 0) && p == end;
}
