/* SPDX-License-Identifier: MIT */
/*
 * Applying a JSON configuration file to struct hd_config through the tables of config.c:
 * types, ranges and unknown keys (with the closest known key suggested), and where each
 * error is. jansson keeps no positions for values, so an error is placed by re-scanning the
 * source text for the key path being parsed (locate()).
 */
#include "config_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
void hd__cfg_scrub(char *s)
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

bool hd__cfg_reporting(void)
{
    return report_fn != NULL;
}

void hd__cfg_report(const struct hd_config_error *e)
{
    if (report_fn)
        report_fn(report_arg, e);
}

int hd__cfg_fail(struct ctx *c, enum at at, const char *fmt, ...)
{
    char path[128], msg[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    path_format(c, path, sizeof(path));
    snprintf(c->err->text, sizeof(c->err->text), "%.127s: %.126s", path[0] ? path : "top level",
             msg);
    hd__cfg_scrub(c->err->text);
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
bool hd__cfg_go_on(struct ctx *c, int rc, size_t depth)
{
    if (rc != -EINVAL || !report_fn)
        return false;
    c->depth = depth;
    return true;
}

int hd__cfg_push(struct ctx *c, const char *key, size_t idx)
{
    if (c->depth >= MAX_DEPTH) /* the tables are shallower; this guards a table mistake */
        return hd__cfg_fail(c, AT_KEY, "nested too deeply");
    c->path[c->depth++] = (struct seg){.key = key, .idx = idx};
    return 0;
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

const struct row *hd__cfg_find_row(const struct table *tb, const char *key)
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
        return hd__cfg_fail(c, AT_KEY, "unknown key (did you mean \"%s\"?)", best);
    return hd__cfg_fail(c, AT_KEY, "unknown key");
}

/* Checks a JSON string against a string row's length bounds and check hook. */
static int check_string(struct ctx *c, const struct row *r, json_t *v)
{
    char why[200];
    if (!json_is_string(v))
        return hd__cfg_fail(c, AT_VALUE, "must be a string (got %s)", type_name(v));
    size_t len = json_string_length(v);
    if (len < r->min)
        return hd__cfg_fail(c, AT_VALUE, "must not be empty");
    if (len > r->max)
        return hd__cfg_fail(c, AT_VALUE, "must be at most %llu bytes long",
                            (unsigned long long)r->max);
    if (r->check && r->check(json_string_value(v), why, sizeof(why)) < 0)
        return hd__cfg_fail(c, AT_VALUE, "%s", why);
    return 0;
}

static int apply_strlist(struct ctx *c, const struct row *r, void *base, json_t *v)
{
    struct hd_strlist l = {0};
    size_t i;
    json_t *e;
    if (!json_is_array(v))
        return hd__cfg_fail(c, AT_VALUE, "must be an array of strings (got %s)", type_name(v));
    if (json_array_size(v) > r->max)
        return hd__cfg_fail(c, AT_VALUE, "must have at most %llu entries",
                            (unsigned long long)r->max);
    if (json_array_size(v) && !(l.v = calloc(json_array_size(v), sizeof(char *))))
        return -ENOMEM;
    const struct row entry = {.type = T_STRING, .min = 1, .max = MAX_STR, .check = r->check};
    json_array_foreach(v, i, e)
    {
        int rc = hd__cfg_push(c, NULL, i);
        if (rc == 0)
            rc = check_string(c, &entry, e);
        if (rc == 0 && !(l.v[l.n++] = strdup(json_string_value(e))))
            rc = -ENOMEM;
        if (rc < 0) {
            hd__cfg_strlist_free(&l);
            return rc;
        }
        c->depth--;
    }
    hd__cfg_strlist_free(FIELD(base, r->offset, struct hd_strlist));
    *FIELD(base, r->offset, struct hd_strlist) = l;
    return 0;
}

static int apply_array(struct ctx *c, const struct row *r, void *base, json_t *v)
{
    size_t i, n = json_array_size(v);
    json_t *e;
    if (!json_is_array(v))
        return hd__cfg_fail(c, AT_VALUE, "must be an array of objects (got %s)", type_name(v));
    if (n < r->min)
        return hd__cfg_fail(c, AT_VALUE, "must not be empty");
    if (n > r->max)
        return hd__cfg_fail(c, AT_VALUE, "must have at most %llu entries",
                            (unsigned long long)r->max);
    /* Replace the old array first: on a later error the struct stays consistent to free. */
    const struct row only = *r;
    const struct table one = {.rows = &only, .n = 1};
    hd__cfg_free_table(&one, base);
    char *arr = n ? calloc(n, r->elem_size) : NULL;
    if (n && !arr)
        return -ENOMEM;
    *FIELD(base, r->offset, char *) = arr;
    *FIELD(base, r->count_offset, size_t) = n;
    size_t depth = c->depth;
    json_array_foreach(v, i, e)
    {
        int rc = hd__cfg_push(c, NULL, i);
        if (rc == 0)
            rc = hd__cfg_defaults_table(r->sub, arr + i * r->elem_size);
        if (rc == 0)
            rc = hd__cfg_apply_table(c, r->sub, arr + i * r->elem_size, e);
        if (hd__cfg_go_on(c, rc, depth))
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
            return hd__cfg_fail(c, AT_VALUE, "must be true or false (got %s)", type_name(v));
        *FIELD(base, r->offset, bool) = json_is_true(v);
        return 0;
    case T_U16:
    case T_U32:
    case T_U64: {
        if (!json_is_integer(v))
            return hd__cfg_fail(c, AT_VALUE, "must be an integer (got %s)", type_name(v));
        json_int_t x = json_integer_value(v);
        if (x < 0 || (uint64_t)x < r->min || (uint64_t)x > r->max)
            return hd__cfg_fail(c, AT_VALUE, "must be between %llu and %llu (got %lld)",
                                (unsigned long long)r->min, (unsigned long long)r->max,
                                (long long)x);
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
            return hd__cfg_fail(c, AT_VALUE, "must be %s (got %s)", r->choices, type_name(v));
        if (r->parse_enum(json_string_value(v), &x) < 0)
            return hd__cfg_fail(c, AT_VALUE, "must be %s (got \"%.40s\")", r->choices,
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
            return hd__cfg_fail(c, AT_VALUE,
                                "must be the SHA-256 of the token as 64 hex digits "
                                "(e.g. from: printf %%s TOKEN | sha256sum)");
        for (size_t i = 0; i < 32; i++)
            out[i] = (unsigned char)(hexdigit(s[2 * i]) << 4 | hexdigit(s[2 * i + 1]));
        return 0;
    }
    case T_OBJECT:
        return hd__cfg_apply_table(c, r->sub, base, v);
    case T_ARRAY:
        return apply_array(c, r, base, v);
    }
    return -EINVAL;
}

int hd__cfg_apply_table(struct ctx *c, const struct table *tb, void *base, json_t *obj)
{
    const char *key;
    json_t *v;
    if (!json_is_object(obj))
        return hd__cfg_fail(c, AT_VALUE, "must be an object (got %s)", type_name(obj));
    /* jansson keeps keys in source order, so the first error reported is the first in the file. */
    size_t depth = c->depth;
    json_object_foreach(obj, key, v)
    {
        const struct row *r = hd__cfg_find_row(tb, key);
        int rc = hd__cfg_push(c, key, 0);
        if (rc == 0)
            rc = r ? apply_row(c, r, base, v) : unknown_key(c, tb, key);
        if (hd__cfg_go_on(c, rc, depth))
            continue;
        if (rc < 0)
            return rc;
        c->depth--;
    }
    for (size_t r = 0; r < tb->n; r++)
        if (tb->rows[r].required && !json_object_get(obj, tb->rows[r].key)) {
            int rc = hd__cfg_fail(c, AT_VALUE, "missing required key \"%s\"", tb->rows[r].key);
            if (!hd__cfg_go_on(c, rc, depth))
                return rc;
        }
    return tb->post ? tb->post(c, base, obj) : 0;
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
    int rc = hd__cfg_apply_table(&c, &hd__cfg_root_table, cfg, root);
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
