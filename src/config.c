/* SPDX-License-Identifier: MIT */
/*
 * Configuration: the command line (getopt_long) and the JSON file (jansson), both filling
 * struct hd_config. Every JSON object has a table of {key, type, offset, min, max, default}
 * rows; the same tables set the defaults, parse the file and free the struct. jansson keeps no
 * positions for values, so an error is placed by re-scanning the source text for the key path
 * being parsed (locate()). Nothing here opens sockets or applies a setting.
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "topic.h"

#define MIB (1024ULL * 1024)
#define GIB (1024ULL * MIB)
#define TIB (1024ULL * GIB)
#define TEN_YEARS_S (10ULL * 366 * 86400)
#define MAX_FILE_BYTES (1 * MIB) /* a config file is a few KiB; refuse to slurp anything huge */
#define MAX_STR 4096             /* paths, names, patterns */
#define MAX_LIST 1024            /* entries in a pattern or origin list */
#define MAX_LISTENERS 64
#define MAX_TOKENS 4096 /* static tokens; JWT is the answer for more identities */
#define MAX_DEPTH 8     /* key path depth; the deepest is auth.tokens[i].publish[j] */
#define DEFAULT_LISTEN "127.0.0.1:7070"

/* Enum fields are written through int *; that is only sound while they are int-sized. */
_Static_assert(sizeof(enum hd_store_kind) == sizeof(int), "enum size");
_Static_assert(sizeof(enum hd_durability) == sizeof(int), "enum size");
_Static_assert(sizeof(enum hd_log_level) == sizeof(int), "enum size");

enum ftype {
    T_BOOL,
    T_U16,
    T_U32,
    T_U64,
    T_STRING,
    T_ENUM,
    T_STRLIST,
    T_ADDR,
    T_SHA256,
    T_OBJECT,
    T_ARRAY
};

struct ctx;
struct table;

struct row {
    const char *key;
    enum ftype type;
    size_t offset;
    uint64_t min, max;   /* numbers: the range; strings: length; lists and arrays: entries */
    uint64_t def;        /* numbers, bools and enums */
    const char *def_str; /* strings; a strlist's single default entry */
    bool required;
    int (*parse_enum)(const char *s, int *out);         /* T_ENUM */
    const char *choices;                                /* T_ENUM, for the message */
    int (*check)(const char *s, char *why, size_t cap); /* T_STRING, each T_STRLIST entry */
    const struct table *sub;                            /* T_OBJECT (same base), T_ARRAY */
    size_t count_offset, elem_size;                     /* T_ARRAY */
};

struct table {
    const struct row *rows;
    size_t n;
    /* Derived fields and checks across the keys of one object, once they are applied. */
    int (*post)(struct ctx *c, void *base, json_t *obj);
};

/* One step of the key path being parsed: an object key, or an array index when key is NULL. */
struct seg {
    const char *key;
    size_t idx;
};

struct ctx {
    const char *text; /* the JSON source, for positions */
    size_t len;
    struct hd_config_error *err;
    struct seg path[MAX_DEPTH];
    size_t depth;
    bool failed; /* an error was reported (and loading went on: hd_config_report_all) */
};

enum at { AT_KEY, AT_VALUE };

#define FIELD(p, off, type) ((type *)(void *)((char *)(p) + (off)))

/* ---- enums and string checks ---------------------------------------------------------- */

static int lookup(const char *const *names, size_t n, const char *s, int *out)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(s, names[i]) == 0) {
            *out = (int)i;
            return 0;
        }
    }
    return -EINVAL;
}

static int parse_store(const char *s, int *out)
{
    static const char *const names[] = {[HD_STORE_MEMORY] = "memory", [HD_STORE_SQLITE] = "sqlite"};
    return lookup(names, 2, s, out);
}

static int parse_durability(const char *s, int *out)
{
    static const char *const names[] = {
        [HD_DURABILITY_SYNC] = "sync", [HD_DURABILITY_ASYNC] = "async"};
    return lookup(names, 2, s, out);
}

static int parse_log_level(const char *s, int *out)
{
    enum hd_log_level l;
    int rc = hd_log_level_parse(s, &l);
    if (rc == 0)
        *out = (int)l;
    return rc;
}

/* Checks a pattern; `{sub}` (the JWT subject) is replaced by a valid segment first. */
static int check_pattern(const char *s, char *why, size_t cap)
{
    char buf[MAX_STR + 1];
    size_t n = 0;
    for (const char *p = s; *p && n < sizeof(buf) - 1;) {
        if (strncmp(p, "{sub}", 5) == 0) {
            buf[n++] = 'x';
            p += 5;
        } else {
            buf[n++] = *p++;
        }
    }
    if (n > 0 && hd_pattern_check(buf, n) == 0)
        return 0;
    snprintf(why, cap,
             "\"%.60s\" is not a valid pattern (dot-separated segments of A-Z a-z 0-9 "
             "_ : @ -, * for one segment, > last)",
             s);
    return -EINVAL;
}

static int check_anon_pattern(const char *s, char *why, size_t cap)
{
    if (strstr(s, "{sub}")) {
        snprintf(why, cap, "anonymous clients have no subject, so {sub} cannot be used here");
        return -EINVAL;
    }
    return check_pattern(s, why, cap);
}

/* "*" or scheme://host[:port], the form browsers send in the Origin header. */
static int check_origin(const char *s, char *why, size_t cap)
{
    if (strcmp(s, "*") == 0)
        return 0;
    const char *p = s, *host;
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')))
        goto bad;
    while (*p && *p != ':' &&
           (strchr("+.-", *p) || (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') ||
            (*p >= 'A' && *p <= 'Z')))
        p++;
    if (strncmp(p, "://", 3) != 0)
        goto bad;
    host = p += 3;
    if (*p == '[') {
        p = strchr(p, ']');
        if (!p)
            goto bad;
        p++;
    } else {
        while (*p && strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-", *p))
            p++;
    }
    if (p == host)
        goto bad;
    if (*p == ':') {
        const char *d = ++p;
        while (*p >= '0' && *p <= '9')
            p++;
        if (p == d || p - d > 5 || atol(d) > 65535)
            goto bad;
    }
    if (*p == '\0')
        return 0;
bad:
    snprintf(why, cap,
             "\"%.60s\" is not an origin: expected \"*\" or scheme://host[:port] with "
             "no path or trailing slash",
             s);
    return -EINVAL;
}

/* Token names go into log fields unquoted, so keep them to one plain word. */
static int check_name(const char *s, char *why, size_t cap)
{
    for (const char *p = s; *p; p++) {
        if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:@-", *p)) {
            snprintf(why, cap, "may only use A-Z a-z 0-9 _ . : @ -");
            return -EINVAL;
        }
    }
    return 0;
}

/* ---- listeners ------------------------------------------------------------------------- */

static bool is_loopback(const char *address)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, address, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, address, &a6) != 1)
        return false;
    if (IN6_IS_ADDR_LOOPBACK(&a6))
        return true;
    return IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127;
}

/* Numeric only: resolving names would make the bound address depend on DNS at start-up. */
static int check_address(const char *s, int family, char *why, size_t cap)
{
    unsigned char bin[sizeof(struct in6_addr)];
    if ((family != AF_INET6 && inet_pton(AF_INET, s, bin) == 1) ||
        (family != AF_INET && inet_pton(AF_INET6, s, bin) == 1))
        return 0;
    if (s[0] == '[')
        snprintf(why, cap, "write IPv6 addresses without brackets here, e.g. \"::1\"");
    else
        snprintf(why, cap, "\"%.60s\" is not a numeric %s address (host names are not accepted)", s,
                 family == AF_INET6  ? "IPv6"
                 : family == AF_INET ? "IPv4"
                                     : "IPv4 or IPv6");
    return -EINVAL;
}

static int check_any_address(const char *s, char *why, size_t cap)
{
    return check_address(s, AF_UNSPEC, why, cap);
}

static int parse_port(const char *s, uint16_t *out)
{
    size_t n = strspn(s, "0123456789");
    if (n == 0 || n > 5 || s[n] != '\0' || atol(s) > 65535)
        return -EINVAL;
    *out = (uint16_t)atol(s);
    return 0;
}

static int listener_parse(const char *s, struct hd_listener *out, char *why, size_t cap)
{
    char addr[sizeof(out->address)];
    const char *a, *a_end, *colon;
    int family;
    memset(out, 0, sizeof(*out));
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':') {
            snprintf(why, cap, "expected [IPv6]:PORT, e.g. [::1]:7070");
            return -EINVAL;
        }
        a = s + 1;
        a_end = close;
        colon = close + 1;
        family = AF_INET6;
    } else {
        colon = strrchr(s, ':');
        if (!colon) {
            snprintf(why, cap, "expected ADDR:PORT, e.g. 127.0.0.1:7070 or [::1]:7070");
            return -EINVAL;
        }
        if (memchr(s, ':', (size_t)(colon - s))) {
            snprintf(why, cap, "IPv6 addresses need brackets, e.g. [::1]:7070");
            return -EINVAL;
        }
        a = s;
        a_end = colon;
        family = AF_INET;
    }
    size_t alen = (size_t)(a_end - a);
    if (alen >= sizeof(addr)) {
        snprintf(why, cap, "the address is too long");
        return -EINVAL;
    }
    memcpy(addr, a, alen);
    addr[alen] = '\0';
    if (check_address(addr, family, why, cap) < 0)
        return -EINVAL;
    if (parse_port(colon + 1, &out->port) < 0) {
        snprintf(why, cap, "the port must be a number from 0 to 65535");
        return -EINVAL;
    }
    memcpy(out->address, addr, alen + 1);
    out->loopback = is_loopback(addr);
    return 0;
}

int hd_listener_parse(const char *s, struct hd_listener *out)
{
    char why[128];
    return s ? listener_parse(s, out, why, sizeof(why)) : -EINVAL;
}

/* ---- where an error is: path names and positions in the source ------------------------- */

/* Copies a key for a message: control bytes become '?', long keys are cut on a UTF-8 boundary. */
static void sanitize(const char *s, char *out, size_t cap)
{
    size_t n = 0, len = strlen(s);
    if (len > cap - 1) {
        len = cap - 4;
        while (len > 0 && ((unsigned char)s[len] & 0xC0) == 0x80)
            len--;
    }
    for (; n < len; n++)
        out[n] = ((unsigned char)s[n] < 0x20 || s[n] == 0x7f) ? '?' : s[n];
    if (len < strlen(s))
        memcpy(out + n, "...", 3), n += 3;
    out[n] = '\0';
}

/* Values quoted in messages come from the file or argv; keep control bytes off the terminal. */
static void scrub(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            *s = '?';
}

static void path_format(const struct ctx *c, char *out, size_t cap)
{
    size_t n = 0;
    out[0] = '\0';
    for (size_t d = 0; d < c->depth && n < cap; d++) {
        char k[48];
        int w;
        if (c->path[d].key) {
            sanitize(c->path[d].key, k, sizeof(k));
            w = snprintf(out + n, cap - n, "%s%s", d ? "." : "", k);
        } else {
            w = snprintf(out + n, cap - n, "[%zu]", c->path[d].idx);
        }
        if (w < 0)
            break;
        n += (size_t)w;
    }
}

static size_t skip_ws(const char *t, size_t len, size_t i)
{
    while (i < len && (t[i] == ' ' || t[i] == '\t' || t[i] == '\n' || t[i] == '\r'))
        i++;
    return i;
}

/* From an opening quote to just past the closing one. */
static size_t skip_string(const char *t, size_t len, size_t i)
{
    for (i++; i < len; i++) {
        if (t[i] == '\\')
            i++;
        else if (t[i] == '"')
            return i + 1;
    }
    return len;
}

static size_t skip_value(const char *t, size_t len, size_t i)
{
    if (i < len && t[i] == '"')
        return skip_string(t, len, i);
    if (i < len && (t[i] == '{' || t[i] == '[')) {
        size_t depth = 0;
        while (i < len) {
            if (t[i] == '"') {
                i = skip_string(t, len, i);
                continue;
            }
            if (t[i] == '{' || t[i] == '[')
                depth++;
            else if ((t[i] == '}' || t[i] == ']') && --depth == 0)
                return i + 1;
            i++;
        }
        return len;
    }
    while (i < len && !strchr(",}] \t\r\n", t[i]))
        i++;
    return i;
}

static int hexdigit(char ch)
{
    return ch >= '0' && ch <= '9'   ? ch - '0'
           : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
           : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                    : -1;
}

static bool hex4(const char *t, size_t len, size_t i, unsigned *out)
{
    unsigned v = 0;
    for (size_t k = 0; k < 4; k++) {
        int d = i + k < len ? hexdigit(t[i + k]) : -1;
        if (d < 0)
            return false;
        v = v * 16 + (unsigned)d;
    }
    *out = v;
    return true;
}

/* Decodes the JSON string starting at t[i] (a quote) and compares it with UTF-8 `want`. */
static bool string_equals(const char *t, size_t len, size_t i, const char *want)
{
    size_t w = 0;
    for (i++; i < len && t[i] != '"';) {
        unsigned char b[4];
        size_t n = 1;
        if (t[i] != '\\') {
            b[0] = (unsigned char)t[i++];
        } else if (i + 1 < len && t[i + 1] != 'u') {
            static const char from[] = "bfnrt", to[] = "\b\f\n\r\t";
            const char *e = t[i + 1] ? strchr(from, t[i + 1]) : NULL;
            b[0] = (unsigned char)(e ? to[e - from] : t[i + 1]); /* \" \\ \/ stand for themselves */
            i += 2;
        } else {
            unsigned cp, lo;
            if (!hex4(t, len, i + 2, &cp))
                return false;
            i += 6;
            if (cp >= 0xD800 && cp < 0xDC00 && i + 1 < len && t[i] == '\\' && t[i + 1] == 'u' &&
                hex4(t, len, i + 2, &lo) && lo >= 0xDC00 && lo < 0xE000) {
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                i += 6;
            }
            if (cp < 0x80) {
                b[0] = (unsigned char)cp;
            } else if (cp < 0x800) {
                b[0] = (unsigned char)(0xC0 | cp >> 6), b[1] = (unsigned char)(0x80 | (cp & 63));
                n = 2;
            } else if (cp < 0x10000) {
                b[0] = (unsigned char)(0xE0 | cp >> 12);
                b[1] = (unsigned char)(0x80 | ((cp >> 6) & 63));
                b[2] = (unsigned char)(0x80 | (cp & 63));
                n = 3;
            } else {
                b[0] = (unsigned char)(0xF0 | cp >> 18);
                b[1] = (unsigned char)(0x80 | ((cp >> 12) & 63));
                b[2] = (unsigned char)(0x80 | ((cp >> 6) & 63));
                b[3] = (unsigned char)(0x80 | (cp & 63));
                n = 4;
            }
        }
        for (size_t k = 0; k < n; k++, w++)
            if ((unsigned char)want[w] != b[k])
                return false;
    }
    return want[w] == '\0';
}

/*
 * Finds the byte offset of the current path's key (AT_KEY) or value (AT_VALUE) in the source.
 * jansson has already accepted the text, so it is valid JSON without duplicate keys; the walk
 * only visits the containers on the path and stops at the end of the text regardless.
 */
static bool locate(const struct ctx *c, enum at at, size_t *out)
{
    const char *t = c->text;
    size_t len = c->len, i = skip_ws(t, len, 0), key_at = i;
    for (size_t d = 0; d < c->depth; d++) {
        const struct seg *s = &c->path[d];
        bool found = false;
        if (i >= len || t[i] != (s->key ? '{' : '['))
            return false;
        i = skip_ws(t, len, i + 1);
        if (!s->key) {
            for (size_t n = 0; n < s->idx; n++) {
                i = skip_ws(t, len, skip_value(t, len, i));
                if (i >= len || t[i] != ',')
                    return false;
                i = skip_ws(t, len, i + 1);
            }
            key_at = i;
            continue;
        }
        while (!found && i < len && t[i] == '"') {
            size_t k = i;
            found = string_equals(t, len, i, s->key);
            i = skip_ws(t, len, skip_string(t, len, i));
            if (i >= len || t[i] != ':')
                return false;
            i = skip_ws(t, len, i + 1);
            if (found) {
                key_at = k;
            } else {
                i = skip_ws(t, len, skip_value(t, len, i));
                if (i < len && t[i] == ',')
                    i = skip_ws(t, len, i + 1);
            }
        }
        if (!found)
            return false;
    }
    *out = at == AT_KEY ? key_at : i;
    return *out < len;
}

/* 1-based line and column, columns counted in characters as jansson counts them. */
static void position(const char *t, size_t off, int *line, int *col)
{
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < off; i++) {
        if (t[i] == '\n')
            ++*line, *col = 1;
        else if (((unsigned char)t[i] & 0xC0) != 0x80)
            ++*col;
    }
}

static void (*report_fn)(void *arg, const struct hd_config_error *e);
static void *report_arg;

void hd_config_report_all(void (*fn)(void *arg, const struct hd_config_error *e), void *arg)
{
    report_fn = fn;
    report_arg = arg;
}

__attribute__((format(printf, 3, 4))) static int fail(struct ctx *c, enum at at, const char *fmt,
                                                      ...)
{
    char path[128], msg[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    path_format(c, path, sizeof(path));
    snprintf(c->err->text, sizeof(c->err->text), "%.127s: %.126s", path[0] ? path : "top level",
             msg);
    scrub(c->err->text);
    size_t off;
    c->err->line = c->err->column = 0;
    if (locate(c, at, &off))
        position(c->text, off, &c->err->line, &c->err->column);
    c->failed = true;
    if (report_fn)
        report_fn(report_arg, c->err);
    return -EINVAL;
}

/* After an error at depth d: with a reporter, go on with the next key or element. */
static bool go_on(struct ctx *c, int rc, size_t depth)
{
    if (rc != -EINVAL || !report_fn)
        return false;
    c->depth = depth;
    return true;
}

static int push(struct ctx *c, const char *key, size_t idx)
{
    if (c->depth >= MAX_DEPTH) /* the tables are shallower; this guards a table mistake */
        return fail(c, AT_KEY, "nested too deeply");
    c->path[c->depth++] = (struct seg){.key = key, .idx = idx};
    return 0;
}

/* ---- tables ----------------------------------------------------------------------------- */

static int listener_post(struct ctx *c, void *base, json_t *obj);
static int limits_post(struct ctx *c, void *base, json_t *obj);
static int auth_post(struct ctx *c, void *base, json_t *obj);

#define CFG(m) offsetof(struct hd_config, m)
#define LST(m) offsetof(struct hd_listener, m)
#define TOK(m) offsetof(struct hd_token, m)
#define TABLE(r, p)                                                                                \
    {                                                                                              \
        .rows = r, .n = sizeof(r) / sizeof(r[0]), .post = p                                        \
    }

static const struct row tls_rows[] = {
    {.key = "cert",
     .type = T_STRING,
     .offset = LST(tls_cert),
     .min = 1,
     .max = MAX_STR,
     .required = true},
    {.key = "key",
     .type = T_STRING,
     .offset = LST(tls_key),
     .min = 1,
     .max = MAX_STR,
     .required = true},
};
static const struct table tls_table = TABLE(tls_rows, NULL);

static const struct row listener_rows[] = {
    {.key = "address",
     .type = T_ADDR,
     .offset = LST(address),
     .required = true,
     .max = sizeof(((struct hd_listener *)0)->address) - 1,
     .check = check_any_address},
    {.key = "port", .type = T_U16, .offset = LST(port), .min = 0, .max = 65535, .required = true},
    {.key = "tls", .type = T_OBJECT, .sub = &tls_table},
};
static const struct table listener_table = TABLE(listener_rows, listener_post);

static const struct row history_rows[] = {
    {.key = "store",
     .type = T_ENUM,
     .offset = CFG(history.store),
     .def = HD_STORE_MEMORY,
     .parse_enum = parse_store,
     .choices = "\"memory\" or \"sqlite\""},
    {.key = "durability",
     .type = T_ENUM,
     .offset = CFG(history.durability),
     .def = HD_DURABILITY_SYNC,
     .parse_enum = parse_durability,
     .choices = "\"sync\" or \"async\""},
    {.key = "max_events_per_topic",
     .type = T_U32,
     .offset = CFG(history.max_events_per_topic),
     .min = 1,
     .max = 10000000,
     .def = 1000},
    /* 0 keeps events until max_events_per_topic or max_memory_bytes pushes them out. */
    {.key = "max_age_s",
     .type = T_U32,
     .offset = CFG(history.max_age_s),
     .min = 0,
     .max = TEN_YEARS_S,
     .def = 86400},
    {.key = "max_memory_bytes",
     .type = T_U64,
     .offset = CFG(history.max_memory_bytes),
     .min = MIB,
     .max = TIB,
     .def = 256 * MIB},
    /* How long an Idempotency-Key is remembered; 0 turns keys off (they are then ignored). */
    {.key = "dedupe_window_s",
     .type = T_U32,
     .offset = CFG(history.dedupe_window_s),
     .min = 0,
     .max = 7 * 86400,
     .def = 120},
    /* Bounds the dedupe table's memory (about 100 bytes a key); the oldest keys go first. */
    {.key = "dedupe_max_keys",
     .type = T_U32,
     .offset = CFG(history.dedupe_max_keys),
     .min = 1000,
     .max = 100000000,
     .def = 1000000},
};
static const struct table history_table = TABLE(history_rows, NULL);

static const struct row limits_rows[] = {
    {.key = "max_connections",
     .type = T_U32,
     .offset = CFG(limits.max_connections),
     .min = 1,
     .max = 10000000,
     .def = 100000},
    /* 0 turns the per-address cap off (the default: NATs put many users behind one address). */
    {.key = "max_connections_per_ip",
     .type = T_U32,
     .offset = CFG(limits.max_connections_per_ip),
     .min = 0,
     .max = 10000000,
     .def = 0},
    {.key = "max_event_bytes",
     .type = T_U32,
     .offset = CFG(limits.max_event_bytes),
     .min = 64,
     .max = 16 * MIB,
     .def = 65536},
    {.key = "max_subscriptions_per_connection",
     .type = T_U32,
     .offset = CFG(limits.max_subscriptions_per_connection),
     .min = 1,
     .max = 1000000,
     .def = 1000},
    {.key = "max_queue_bytes",
     .type = T_U64,
     .offset = CFG(limits.max_queue_bytes),
     .min = 4096,
     .max = GIB,
     .def = MIB},
    /* Past this many bytes queued to all connections together, publishes get 503: load is
     * shed at the door instead of growing memory. */
    {.key = "max_total_queue_bytes",
     .type = T_U64,
     .offset = CFG(limits.max_total_queue_bytes),
     .min = MIB,
     .max = 1024 * GIB,
     .def = 512 * MIB},
    /* 0 turns rate limiting off; publish_burst then defaults to twice the rate (limits_post). */
    {.key = "publish_rate",
     .type = T_U32,
     .offset = CFG(limits.publish_rate),
     .min = 0,
     .max = 10000000,
     .def = 0},
    {.key = "publish_burst",
     .type = T_U32,
     .offset = CFG(limits.publish_burst),
     .min = 0,
     .max = 1000000000,
     .def = 0},
    {.key = "max_header_bytes",
     .type = T_U32,
     .offset = CFG(limits.max_header_bytes),
     .min = 1024,
     .max = 65536,
     .def = 4096},
    {.key = "handshake_timeout_s",
     .type = T_U32,
     .offset = CFG(limits.handshake_timeout_s),
     .min = 1,
     .max = 300,
     .def = 10},
    {.key = "max_batch_events",
     .type = T_U32,
     .offset = CFG(limits.max_batch_events),
     .min = 1,
     .max = 100000,
     .def = 1000},
    /* A batch body is read whole before any of it is published: this bounds that memory. */
    {.key = "max_batch_bytes",
     .type = T_U64,
     .offset = CFG(limits.max_batch_bytes),
     .min = 1024,
     .max = GIB,
     .def = 16 * MIB},
};
static const struct table limits_table = TABLE(limits_rows, limits_post);

static const struct row cors_rows[] = {
    {.key = "origins",
     .type = T_STRLIST,
     .offset = CFG(cors_origins),
     .max = MAX_LIST,
     .def_str = "*",
     .check = check_origin},
};
static const struct table cors_table = TABLE(cors_rows, NULL);

static const struct row anonymous_rows[] = {
    {.key = "publish",
     .type = T_STRLIST,
     .offset = CFG(auth.anonymous.publish),
     .max = MAX_LIST,
     .check = check_anon_pattern},
    {.key = "subscribe",
     .type = T_STRLIST,
     .offset = CFG(auth.anonymous.subscribe),
     .max = MAX_LIST,
     .check = check_anon_pattern},
    {.key = "allow_remote_publish",
     .type = T_BOOL,
     .offset = CFG(auth.anonymous.allow_remote_publish),
     .def = false},
};
static const struct table anonymous_table = TABLE(anonymous_rows, NULL);

static const struct row token_rows[] = {
    {.key = "name",
     .type = T_STRING,
     .offset = TOK(name),
     .min = 1,
     .max = 128,
     .required = true,
     .check = check_name},
    {.key = "sha256", .type = T_SHA256, .offset = TOK(sha256), .required = true},
    {.key = "publish",
     .type = T_STRLIST,
     .offset = TOK(publish),
     .max = MAX_LIST,
     .check = check_pattern},
    {.key = "subscribe",
     .type = T_STRLIST,
     .offset = TOK(subscribe),
     .max = MAX_LIST,
     .check = check_pattern},
};
static const struct table token_table = TABLE(token_rows, NULL);

static const struct row jwt_rows[] = {
    {.key = "secret_file",
     .type = T_STRING,
     .offset = CFG(auth.jwt_secret_file),
     .min = 1,
     .max = MAX_STR,
     .required = true},
};
static const struct table jwt_table = TABLE(jwt_rows, NULL);

static const struct row auth_rows[] = {
    {.key = "anonymous", .type = T_OBJECT, .sub = &anonymous_table},
    {.key = "tokens",
     .type = T_ARRAY,
     .offset = CFG(auth.tokens),
     .min = 0,
     .max = MAX_TOKENS,
     .sub = &token_table,
     .count_offset = CFG(auth.n_tokens),
     .elem_size = sizeof(struct hd_token)},
    {.key = "jwt", .type = T_OBJECT, .sub = &jwt_table},
};
static const struct table auth_table = TABLE(auth_rows, auth_post);

static const struct row log_rows[] = {
    {.key = "level",
     .type = T_ENUM,
     .offset = CFG(log_level),
     .def = HD_LOG_INFO,
     .parse_enum = parse_log_level,
     .choices = "\"error\", \"warn\", \"info\" or \"debug\""},
};
static const struct table log_table = TABLE(log_rows, NULL);

static const struct row root_rows[] = {
    {.key = "listen",
     .type = T_ARRAY,
     .offset = CFG(listeners),
     .min = 1,
     .max = MAX_LISTENERS,
     .sub = &listener_table,
     .count_offset = CFG(n_listeners),
     .elem_size = sizeof(struct hd_listener)},
    /* "." so that a zero-setup run keeps its files wherever it was started. */
    {.key = "data_dir",
     .type = T_STRING,
     .offset = CFG(data_dir),
     .min = 1,
     .max = MAX_STR,
     .def_str = "."},
    {.key = "history", .type = T_OBJECT, .sub = &history_table},
    {.key = "limits", .type = T_OBJECT, .sub = &limits_table},
    {.key = "heartbeat_s",
     .type = T_U32,
     .offset = CFG(heartbeat_s),
     .min = 1,
     .max = 3600,
     .def = 25},
    {.key = "cors", .type = T_OBJECT, .sub = &cors_table},
    {.key = "auth", .type = T_OBJECT, .sub = &auth_table},
    {.key = "log", .type = T_OBJECT, .sub = &log_table},
};
static const struct table root_table = TABLE(root_rows, NULL);

/* ---- defaults and freeing, both driven by the tables ---------------------------------- */

static void strlist_free(struct hd_strlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    *l = (struct hd_strlist){0};
}

static void free_table(const struct table *tb, void *base)
{
    for (size_t r = 0; r < tb->n; r++) {
        const struct row *row = &tb->rows[r];
        switch (row->type) {
        case T_STRING:
            free(*FIELD(base, row->offset, char *));
            *FIELD(base, row->offset, char *) = NULL;
            break;
        case T_STRLIST:
            strlist_free(FIELD(base, row->offset, struct hd_strlist));
            break;
        case T_OBJECT:
            free_table(row->sub, base);
            break;
        case T_ARRAY: {
            char *arr = *FIELD(base, row->offset, char *);
            size_t *n = FIELD(base, row->count_offset, size_t);
            for (size_t i = 0; arr && i < *n; i++)
                free_table(row->sub, arr + i * row->elem_size);
            free(arr);
            *FIELD(base, row->offset, char *) = NULL;
            *n = 0;
            break;
        }
        default:
            break;
        }
    }
}

static int defaults_table(const struct table *tb, void *base)
{
    for (size_t r = 0; r < tb->n; r++) {
        const struct row *row = &tb->rows[r];
        switch (row->type) {
        case T_BOOL:
            *FIELD(base, row->offset, bool) = row->def != 0;
            break;
        case T_U16:
            *FIELD(base, row->offset, uint16_t) = (uint16_t)row->def;
            break;
        case T_U32:
            *FIELD(base, row->offset, uint32_t) = (uint32_t)row->def;
            break;
        case T_U64:
            *FIELD(base, row->offset, uint64_t) = row->def;
            break;
        case T_ENUM:
            *FIELD(base, row->offset, int) = (int)row->def;
            break;
        case T_STRING:
            if (row->def_str && !(*FIELD(base, row->offset, char *) = strdup(row->def_str)))
                return -ENOMEM;
            break;
        case T_STRLIST:
            if (row->def_str) {
                struct hd_strlist *l = FIELD(base, row->offset, struct hd_strlist);
                if (!(l->v = calloc(1, sizeof(char *))))
                    return -ENOMEM;
                if (!(l->v[0] = strdup(row->def_str)))
                    return -ENOMEM;
                l->n = 1;
            }
            break;
        case T_OBJECT: {
            int rc = defaults_table(row->sub, base);
            if (rc < 0)
                return rc;
            break;
        }
        default:
            break;
        }
    }
    return 0;
}

int hd_config_defaults(struct hd_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    if (defaults_table(&root_table, cfg) < 0 ||
        !(cfg->listeners = calloc(1, sizeof(*cfg->listeners)))) {
        hd_config_free(cfg);
        return -ENOMEM;
    }
    cfg->n_listeners = 1;
    hd_listener_parse(DEFAULT_LISTEN, &cfg->listeners[0]);
    return 0;
}

void hd_config_free(struct hd_config *cfg)
{
    if (!cfg)
        return;
    free_table(&root_table, cfg);
    free(cfg->path);
    memset(cfg, 0, sizeof(*cfg));
}

/* ---- applying JSON to the struct -------------------------------------------------------- */

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a fractional number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    default:
        return "null";
    }
}

static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), prev[64], cur[64];
    if (la >= 64 || lb >= 64)
        return SIZE_MAX;
    for (size_t j = 0; j <= lb; j++)
        prev[j] = j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            size_t ins = (prev[j] < cur[j - 1] ? prev[j] : cur[j - 1]) + 1;
            cur[j] = sub < ins ? sub : ins;
        }
        memcpy(prev, cur, sizeof(prev));
    }
    return prev[lb];
}

static const struct row *find_row(const struct table *tb, const char *key)
{
    for (size_t r = 0; r < tb->n; r++)
        if (strcmp(tb->rows[r].key, key) == 0)
            return &tb->rows[r];
    return NULL;
}

static int unknown_key(struct ctx *c, const struct table *tb, const char *key)
{
    const char *best = NULL;
    size_t best_d = 3; /* suggest only near misses */
    for (size_t r = 0; r < tb->n; r++) {
        size_t d = edit_distance(key, tb->rows[r].key);
        if (d < best_d)
            best = tb->rows[r].key, best_d = d;
    }
    if (best)
        return fail(c, AT_KEY, "unknown key (did you mean \"%s\"?)", best);
    return fail(c, AT_KEY, "unknown key");
}

/* Checks a JSON string against a string row's length bounds and check hook. */
static int check_string(struct ctx *c, const struct row *r, json_t *v)
{
    char why[200];
    if (!json_is_string(v))
        return fail(c, AT_VALUE, "must be a string (got %s)", type_name(v));
    size_t len = json_string_length(v);
    if (len < r->min)
        return fail(c, AT_VALUE, "must not be empty");
    if (len > r->max)
        return fail(c, AT_VALUE, "must be at most %llu bytes long", (unsigned long long)r->max);
    if (r->check && r->check(json_string_value(v), why, sizeof(why)) < 0)
        return fail(c, AT_VALUE, "%s", why);
    return 0;
}

static int apply_table(struct ctx *c, const struct table *tb, void *base, json_t *obj);

static int apply_strlist(struct ctx *c, const struct row *r, void *base, json_t *v)
{
    struct hd_strlist l = {0};
    size_t i;
    json_t *e;
    if (!json_is_array(v))
        return fail(c, AT_VALUE, "must be an array of strings (got %s)", type_name(v));
    if (json_array_size(v) > r->max)
        return fail(c, AT_VALUE, "must have at most %llu entries", (unsigned long long)r->max);
    if (json_array_size(v) && !(l.v = calloc(json_array_size(v), sizeof(char *))))
        return -ENOMEM;
    const struct row entry = {.type = T_STRING, .min = 1, .max = MAX_STR, .check = r->check};
    json_array_foreach(v, i, e)
    {
        int rc = push(c, NULL, i);
        if (rc == 0)
            rc = check_string(c, &entry, e);
        if (rc == 0 && !(l.v[l.n++] = strdup(json_string_value(e))))
            rc = -ENOMEM;
        if (rc < 0) {
            strlist_free(&l);
            return rc;
        }
        c->depth--;
    }
    strlist_free(FIELD(base, r->offset, struct hd_strlist));
    *FIELD(base, r->offset, struct hd_strlist) = l;
    return 0;
}

static int apply_array(struct ctx *c, const struct row *r, void *base, json_t *v)
{
    size_t i, n = json_array_size(v);
    json_t *e;
    if (!json_is_array(v))
        return fail(c, AT_VALUE, "must be an array of objects (got %s)", type_name(v));
    if (n < r->min)
        return fail(c, AT_VALUE, "must not be empty");
    if (n > r->max)
        return fail(c, AT_VALUE, "must have at most %llu entries", (unsigned long long)r->max);
    /* Replace the old array first: on a later error the struct stays consistent to free. */
    const struct row only = *r;
    const struct table one = {.rows = &only, .n = 1};
    free_table(&one, base);
    char *arr = n ? calloc(n, r->elem_size) : NULL;
    if (n && !arr)
        return -ENOMEM;
    *FIELD(base, r->offset, char *) = arr;
    *FIELD(base, r->count_offset, size_t) = n;
    size_t depth = c->depth;
    json_array_foreach(v, i, e)
    {
        int rc = push(c, NULL, i);
        if (rc == 0)
            rc = defaults_table(r->sub, arr + i * r->elem_size);
        if (rc == 0)
            rc = apply_table(c, r->sub, arr + i * r->elem_size, e);
        if (go_on(c, rc, depth))
            continue;
        if (rc < 0)
            return rc;
        c->depth--;
    }
    return 0;
}

static int apply_row(struct ctx *c, const struct row *r, void *base, json_t *v)
{
    switch (r->type) {
    case T_BOOL:
        if (!json_is_boolean(v))
            return fail(c, AT_VALUE, "must be true or false (got %s)", type_name(v));
        *FIELD(base, r->offset, bool) = json_is_true(v);
        return 0;
    case T_U16:
    case T_U32:
    case T_U64: {
        if (!json_is_integer(v))
            return fail(c, AT_VALUE, "must be an integer (got %s)", type_name(v));
        json_int_t x = json_integer_value(v);
        if (x < 0 || (uint64_t)x < r->min || (uint64_t)x > r->max)
            return fail(c, AT_VALUE, "must be between %llu and %llu (got %lld)",
                        (unsigned long long)r->min, (unsigned long long)r->max, (long long)x);
        if (r->type == T_U16)
            *FIELD(base, r->offset, uint16_t) = (uint16_t)x;
        else if (r->type == T_U32)
            *FIELD(base, r->offset, uint32_t) = (uint32_t)x;
        else
            *FIELD(base, r->offset, uint64_t) = (uint64_t)x;
        return 0;
    }
    case T_STRING: {
        int rc = check_string(c, r, v);
        char *s = rc == 0 ? strdup(json_string_value(v)) : NULL;
        if (rc < 0 || !s)
            return rc < 0 ? rc : -ENOMEM;
        free(*FIELD(base, r->offset, char *));
        *FIELD(base, r->offset, char *) = s;
        return 0;
    }
    case T_ENUM: {
        int x = 0;
        if (!json_is_string(v))
            return fail(c, AT_VALUE, "must be %s (got %s)", r->choices, type_name(v));
        if (r->parse_enum(json_string_value(v), &x) < 0)
            return fail(c, AT_VALUE, "must be %s (got \"%.40s\")", r->choices,
                        json_string_value(v));
        *FIELD(base, r->offset, int) = x;
        return 0;
    }
    case T_STRLIST:
        return apply_strlist(c, r, base, v);
    case T_ADDR: {
        char *dst = FIELD(base, r->offset, char);
        const struct row s = {.type = T_STRING, .min = 1, .max = r->max, .check = r->check};
        int rc = check_string(c, &s, v);
        if (rc == 0)
            memcpy(dst, json_string_value(v), json_string_length(v) + 1);
        return rc;
    }
    case T_SHA256: {
        const char *s = json_is_string(v) ? json_string_value(v) : NULL;
        unsigned char *out = FIELD(base, r->offset, unsigned char);
        if (!s || json_string_length(v) != 64 || strspn(s, "0123456789abcdefABCDEF") != 64)
            return fail(c, AT_VALUE,
                        "must be the SHA-256 of the token as 64 hex digits "
                        "(e.g. from: printf %%s TOKEN | sha256sum)");
        for (size_t i = 0; i < 32; i++)
            out[i] = (unsigned char)(hexdigit(s[2 * i]) << 4 | hexdigit(s[2 * i + 1]));
        return 0;
    }
    case T_OBJECT:
        return apply_table(c, r->sub, base, v);
    case T_ARRAY:
        return apply_array(c, r, base, v);
    }
    return -EINVAL;
}

static int apply_table(struct ctx *c, const struct table *tb, void *base, json_t *obj)
{
    const char *key;
    json_t *v;
    if (!json_is_object(obj))
        return fail(c, AT_VALUE, "must be an object (got %s)", type_name(obj));
    /* jansson keeps keys in source order, so the first error reported is the first in the file. */
    size_t depth = c->depth;
    json_object_foreach(obj, key, v)
    {
        const struct row *r = find_row(tb, key);
        int rc = push(c, key, 0);
        if (rc == 0)
            rc = r ? apply_row(c, r, base, v) : unknown_key(c, tb, key);
        if (go_on(c, rc, depth))
            continue;
        if (rc < 0)
            return rc;
        c->depth--;
    }
    for (size_t r = 0; r < tb->n; r++)
        if (tb->rows[r].required && !json_object_get(obj, tb->rows[r].key)) {
            int rc = fail(c, AT_VALUE, "missing required key \"%s\"", tb->rows[r].key);
            if (!go_on(c, rc, depth))
                return rc;
        }
    return tb->post ? tb->post(c, base, obj) : 0;
}

static int listener_post(struct ctx *c, void *base, json_t *obj)
{
    struct hd_listener *l = base;
    l->loopback = is_loopback(l->address);
    return 0;
}

static int limits_post(struct ctx *c, void *base, json_t *obj)
{
    struct hd_config *cfg = base;
    if (!json_object_get(obj, "publish_burst")) {
        cfg->limits.publish_burst = 2 * cfg->limits.publish_rate;
    } else if (cfg->limits.publish_rate > 0 && cfg->limits.publish_burst == 0) {
        push(c, "publish_burst", 0);
        return fail(c, AT_VALUE,
                    "must be at least 1 when publish_rate is set (0 would refuse "
                    "every publish)");
    }
    return 0;
}

static int auth_post(struct ctx *c, void *base, json_t *obj)
{
    struct hd_config *cfg = base;
    cfg->auth.present = true;
    /* Quadratic, but tokens are capped at MAX_TOKENS and this runs once per load. */
    for (size_t j = 1; j < cfg->auth.n_tokens; j++) {
        const struct hd_token *t = &cfg->auth.tokens[j];
        for (size_t i = 0; i < j; i++) {
            bool same_name = strcmp(t->name, cfg->auth.tokens[i].name) == 0;
            if (same_name || memcmp(t->sha256, cfg->auth.tokens[i].sha256, 32) == 0) {
                push(c, "tokens", 0);
                push(c, NULL, j);
                push(c, same_name ? "name" : "sha256", 0);
                return fail(c, AT_VALUE, "same %s as auth.tokens[%zu]",
                            same_name ? "name" : "digest", i);
            }
        }
    }
    return 0;
}

int hd_config_load_string(struct hd_config *cfg, const char *json, size_t len, const char *name,
                          struct hd_config_error *err)
{
    struct hd_config_error scratch;
    json_error_t je;
    if (!err)
        err = &scratch;
    memset(err, 0, sizeof(*err));
    snprintf(err->file, sizeof(err->file), "%s", name ? name : "");
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        err->line = je.line > 0 ? je.line : 0;
        err->column = err->line ? (je.column > 0 ? je.column : 1) : 0;
        snprintf(err->text, sizeof(err->text), "invalid JSON: %s", je.text);
        return -EINVAL;
    }
    struct ctx c = {.text = json, .len = len, .err = err};
    int rc = apply_table(&c, &root_table, cfg, root);
    if (rc == 0 && c.failed)
        rc = -EINVAL; /* every error was reported, and loading went on */
    json_decref(root);
    if (rc == -ENOMEM)
        snprintf(err->text, sizeof(err->text), "out of memory");
    return rc;
}

int hd_config_load_file(struct hd_config *cfg, const char *path, struct hd_config_error *err)
{
    struct hd_config_error scratch;
    if (!err)
        err = &scratch;
    memset(err, 0, sizeof(*err));
    snprintf(err->file, sizeof(err->file), "%s", path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int rc = -errno;
        snprintf(err->text, sizeof(err->text), "cannot open: %s", strerror(-rc));
        return rc;
    }
    char *buf = malloc(MAX_FILE_BYTES + 1);
    size_t n = 0;
    int rc = buf ? 0 : -ENOMEM;
    while (rc == 0 && n <= MAX_FILE_BYTES) {
        ssize_t r = read(fd, buf + n, MAX_FILE_BYTES + 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            rc = -errno;
        else if (r == 0)
            break;
        else
            n += (size_t)r;
    }
    close(fd);
    if (rc == 0 && n > MAX_FILE_BYTES)
        rc = -EFBIG;
    if (rc < 0)
        snprintf(err->text, sizeof(err->text), "cannot read: %s", strerror(-rc));
    else
        rc = hd_config_load_string(cfg, buf, n, path, err);
    free(buf);
    if (rc == 0) {
        free(cfg->path);
        if (!(cfg->path = strdup(path)))
            rc = -ENOMEM;
    }
    return rc;
}

/* ---- command line ----------------------------------------------------------------------- */

enum { OPT_LISTEN = 256, OPT_DATA_DIR, OPT_STORE, OPT_LOG_LEVEL, OPT_CHECK, OPT_VERSION, OPT_HELP };

static const struct option long_opts[] = {
    {.name = "config", .has_arg = required_argument, .val = 'c'},
    {.name = "listen", .has_arg = required_argument, .val = OPT_LISTEN},
    {.name = "data-dir", .has_arg = required_argument, .val = OPT_DATA_DIR},
    {.name = "store", .has_arg = required_argument, .val = OPT_STORE},
    {.name = "log-level", .has_arg = required_argument, .val = OPT_LOG_LEVEL},
    {.name = "check-config", .has_arg = no_argument, .val = OPT_CHECK},
    {.name = "version", .has_arg = no_argument, .val = OPT_VERSION},
    {.name = "help", .has_arg = no_argument, .val = OPT_HELP},
    {0},
};

const char *hd_cli_usage(void)
{
    return "Usage: heraldd [-c FILE | --config FILE] [--listen ADDR:PORT]... [--data-dir DIR]\n"
           "               [--store memory|sqlite] [--log-level error|warn|info|debug]\n"
           "               [--check-config] [--version] [--help]\n"
           "\n"
           "  -c, --config FILE    JSON configuration file (example: config/heraldd.json)\n"
           "  --listen ADDR:PORT   listen here instead of the file's listeners; repeatable.\n"
           "                       127.0.0.1:7070, 0.0.0.0:7070, [::1]:7070; port 0 picks one\n"
           "  --data-dir DIR       directory of the sqlite history file (default: .)\n"
           "  --store KIND         history store: memory (default) or sqlite\n"
           "  --log-level LEVEL    error, warn, info (default) or debug\n"
           "  --check-config       check the configuration, print what is wrong, exit 0 or 1\n"
           "  --version            print the version and exit\n"
           "  -h, --help           print this help and exit\n"
           "\n"
           "Without options heraldd listens on 127.0.0.1:7070, keeps history in memory and lets\n"
           "local clients publish and subscribe without credentials.\n";
}

static const char *long_name(int val)
{
    for (const struct option *o = long_opts; o->name; o++)
        if (o->val == val)
            return o->name;
    return "?";
}

__attribute__((format(printf, 4, 5))) static int usage_error(struct hd_cli *cli, char *err,
                                                             size_t errlen, const char *fmt, ...)
{
    va_list ap;
    if (err && errlen) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
        scrub(err);
    }
    hd_cli_free(cli);
    return -EINVAL;
}

int hd_cli_parse(int argc, char **argv, struct hd_cli *cli, char *err, size_t errlen)
{
    char why[160];
    struct hd_listener tmp;
    int ch, x = 0;
    memset(cli, 0, sizeof(*cli));
    if (err && errlen)
        err[0] = '\0';
    if (argc > 1 && !(cli->listen = calloc((size_t)argc, sizeof(char *))))
        return -ENOMEM;
    optind = 0; /* glibc: reinitialise, so the parser can run more than once (tests, reload) */
    opterr = 0;
    /* '+': stop at the first non-option instead of permuting argv; ':': report missing values */
    while ((ch = getopt_long(argc, argv, "+:c:h", long_opts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            cli->config_path = optarg;
            break;
        case OPT_LISTEN:
            if (listener_parse(optarg, &tmp, why, sizeof(why)) < 0)
                return usage_error(cli, err, errlen, "--listen \"%.60s\": %s", optarg, why);
            if (cli->n_listen == MAX_LISTENERS)
                return usage_error(cli, err, errlen, "at most %d --listen options", MAX_LISTENERS);
            cli->listen[cli->n_listen++] = optarg;
            break;
        case OPT_DATA_DIR:
            if (!optarg[0])
                return usage_error(cli, err, errlen, "--data-dir needs a directory, not \"\"");
            cli->data_dir = optarg;
            break;
        case OPT_STORE:
            if (parse_store(optarg, &x) < 0)
                return usage_error(cli, err, errlen,
                                   "--store must be memory or sqlite (got "
                                   "\"%.40s\")",
                                   optarg);
            cli->store = optarg;
            break;
        case OPT_LOG_LEVEL:
            if (parse_log_level(optarg, &x) < 0)
                return usage_error(cli, err, errlen,
                                   "--log-level must be error, warn, info or "
                                   "debug (got \"%.40s\")",
                                   optarg);
            cli->log_level = optarg;
            break;
        case OPT_CHECK:
            cli->check_config = true;
            break;
        case OPT_VERSION:
            cli->version = true;
            break;
        case 'h':
        case OPT_HELP:
            cli->help = true;
            break;
        case ':':
            /* glibc has moved optind past the option, so this is what the user typed. */
            return usage_error(cli, err, errlen, "option %.40s needs a value", argv[optind - 1]);
        default:
            if (optopt >= OPT_LISTEN)
                return usage_error(cli, err, errlen, "option --%s takes no value",
                                   long_name(optopt));
            if (optopt)
                return usage_error(cli, err, errlen, "unknown option -%c",
                                   optopt > 32 && optopt < 127 ? optopt : '?');
            return usage_error(cli, err, errlen, "unknown or ambiguous option \"%.60s\"",
                               argv[optind - 1]);
        }
    }
    if (optind < argc)
        return usage_error(cli, err, errlen,
                           "unexpected argument \"%.60s\": heraldd takes only options",
                           argv[optind]);
    return 0;
}

void hd_cli_free(struct hd_cli *cli)
{
    if (!cli)
        return;
    free(cli->listen);
    memset(cli, 0, sizeof(*cli));
}

__attribute__((format(printf, 2, 3))) static int invalid(struct hd_config_error *err,
                                                         const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->text, sizeof(err->text), fmt, ap);
    va_end(ap);
    scrub(err->text);
    err->line = err->column = 0;
    if (report_fn)
        report_fn(report_arg, err);
    return -EINVAL;
}

int hd_config_apply_cli(struct hd_config *cfg, const struct hd_cli *cli,
                        struct hd_config_error *err)
{
    struct hd_config_error scratch;
    char why[160];
    int x = 0; /* set by the parsers; gcc cannot see through hd_log_level_parse */
    if (!err)
        err = &scratch;
    memset(err, 0, sizeof(*err));
    if (cli->n_listen > MAX_LISTENERS)
        return invalid(err, "at most %d --listen options", MAX_LISTENERS);
    if (cli->n_listen > 0) {
        struct hd_listener *l = calloc(cli->n_listen, sizeof(*l));
        if (!l)
            return -ENOMEM;
        for (size_t i = 0; i < cli->n_listen; i++) {
            if (listener_parse(cli->listen[i], &l[i], why, sizeof(why)) < 0) {
                free(l);
                return invalid(err, "--listen \"%.60s\": %s", cli->listen[i], why);
            }
        }
        const struct table one = {.rows = find_row(&root_table, "listen"), .n = 1};
        free_table(&one, cfg);
        cfg->listeners = l;
        cfg->n_listeners = cli->n_listen;
    }
    if (cli->data_dir) {
        if (!cli->data_dir[0])
            return invalid(err, "--data-dir needs a directory, not \"\"");
        char *d = strdup(cli->data_dir);
        if (!d)
            return -ENOMEM;
        free(cfg->data_dir);
        cfg->data_dir = d;
    }
    if (cli->store) {
        if (parse_store(cli->store, &x) < 0)
            return invalid(err, "--store must be memory or sqlite (got \"%.40s\")", cli->store);
        cfg->history.store = (enum hd_store_kind)x;
    }
    if (cli->log_level) {
        if (parse_log_level(cli->log_level, &x) < 0)
            return invalid(err, "--log-level must be error, warn, info or debug (got \"%.40s\")",
                           cli->log_level);
        cfg->log_level = (enum hd_log_level)x;
    }
    return 0;
}

/* ---- cross-field checks ----------------------------------------------------------------- */

int hd_config_validate(const struct hd_config *cfg, struct hd_config_error *err)
{
    struct hd_config_error scratch;
    if (!err)
        err = &scratch;
    memset(err, 0, sizeof(*err));
    snprintf(err->file, sizeof(err->file), "%s", cfg->path ? cfg->path : "");
    int rc = 0;
/* With a reporter every failed check is reported; without, the first one returns. */
#define CHECK_FAILED(call)                                                                         \
    do {                                                                                           \
        rc = (call);                                                                               \
        if (!report_fn)                                                                            \
            return rc;                                                                             \
    } while (0)
    if (cfg->n_listeners == 0)
        CHECK_FAILED(invalid(err, "listen: no listener; give one in \"listen\" or with --listen"));
    for (size_t i = 0; i < cfg->n_listeners; i++) {
        const struct hd_listener *l = &cfg->listeners[i];
        if (!l->tls_cert != !l->tls_key)
            CHECK_FAILED(invalid(err, "listen[%zu].tls: cert and key must both be given", i));
        if (!cfg->auth.present && !l->loopback)
            CHECK_FAILED(invalid(err,
                                 "listen[%zu]: %s is not loopback; without an \"auth\" "
                                 "section heraldd only listens on loopback; add an auth section",
                                 i, l->address));
        for (size_t j = 0; j < i; j++)
            if (l->port != 0 && l->port == cfg->listeners[j].port &&
                strcmp(l->address, cfg->listeners[j].address) == 0)
                CHECK_FAILED(
                    invalid(err, "listen[%zu]: same address and port as listen[%zu]", i, j));
    }
    if (cfg->auth.present && cfg->auth.anonymous.publish.n > 0 &&
        !cfg->auth.anonymous.allow_remote_publish) {
        for (size_t i = 0; i < cfg->n_listeners; i++)
            if (!cfg->listeners[i].loopback)
                CHECK_FAILED(invalid(err,
                                     "auth.anonymous.publish: anyone reaching listen[%zu] (%s, "
                                     "not loopback) could publish without credentials; set "
                                     "auth.anonymous.allow_remote_publish to true to allow it",
                                     i, cfg->listeners[i].address));
    }
    if (cfg->history.store == HD_STORE_SQLITE && (!cfg->data_dir || !cfg->data_dir[0]))
        CHECK_FAILED(invalid(err, "data_dir: the sqlite store needs a data directory"));
    if (cfg->limits.max_queue_bytes < cfg->limits.max_event_bytes)
        CHECK_FAILED(invalid(err,
                             "limits.max_queue_bytes (%llu) is smaller than "
                             "limits.max_event_bytes (%u): one event would overflow a queue",
                             (unsigned long long)cfg->limits.max_queue_bytes,
                             cfg->limits.max_event_bytes));
#undef CHECK_FAILED
    return rc;
}

void hd_config_error_format(const struct hd_config_error *err, char *out, size_t cap)
{
    if (!err->file[0])
        snprintf(out, cap, "%s", err->text);
    else if (err->line > 0)
        snprintf(out, cap, "%s:%d:%d: %s", err->file, err->line, err->column, err->text);
    else
        snprintf(out, cap, "%s: %s", err->file, err->text);
}
