/* SPDX-License-Identifier: MIT */
/*
 * Shared by the configuration module's files: config.c (the tables of keys, defaults and
 * freeing), config_value.c (the checks of single values), config_json.c (applying a JSON file
 * to the struct through the tables, and placing an error at its file:line:column),
 * config_cli.c (the command line, its overrides and the cross-field checks). Nobody else
 * includes it.
 */
#ifndef HD_CONFIG_INT_H
#define HD_CONFIG_INT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

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
#define MAX_NATS_SERVERS 64

/* Enum fields are written through int *; that is only sound while they are int-sized. */
_Static_assert(sizeof(enum hd_store_kind) == sizeof(int), "enum size");
_Static_assert(sizeof(enum hd_durability) == sizeof(int), "enum size");
_Static_assert(sizeof(enum hd_log_level) == sizeof(int), "enum size");
_Static_assert(sizeof(enum hd_engine_kind) == sizeof(int), "enum size");

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

/* The table of the top-level object (config.c). */
extern const struct table hd__cfg_root_table;

/* Records an error at the current key path (its value or its key), with the position found in
 * the source; returns -EINVAL. With a reporter installed (hd_config_report_all) loading goes
 * on and hd__cfg_go_on says so. */
int hd__cfg_fail(struct ctx *c, enum at at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* After an error at depth d: true when a reporter wants the next key or element checked too. */
bool hd__cfg_go_on(struct ctx *c, int rc, size_t depth);
/* Enters a key (or, with key NULL, an array index) of the path. 0 or -EINVAL. */
int hd__cfg_push(struct ctx *c, const char *key, size_t idx);
/* Applies a JSON object to base through its table (config_json.c). 0 or a negative errno. */
int hd__cfg_apply_table(struct ctx *c, const struct table *tb, void *base, json_t *obj);

/* Hands an error to the reporter hd_config_report_all installed, if any (config_json.c). */
void hd__cfg_report(const struct hd_config_error *e);
bool hd__cfg_reporting(void);
/* Replaces control characters in an error text (config_json.c). */
void hd__cfg_scrub(char *s);
/* The row of `key` in a table, or NULL (config_json.c). */
const struct row *hd__cfg_find_row(const struct table *tb, const char *key);

/* Table-driven defaults and freeing (config.c). */
void hd__cfg_strlist_free(struct hd_strlist *l);
void hd__cfg_free_table(const struct table *tb, void *base);
int hd__cfg_defaults_table(const struct table *tb, void *base);

/*
 * Single values (config_value.c), for the tables' rows and the command line. The parsers
 * write an enum's value through *out; the checks borrow s and, when they refuse it, write
 * the reason into why (cap bytes). Both return 0 or -EINVAL.
 */
/* True for an address on loopback (127.0.0.0/8, ::1, or IPv4-mapped 127.x). */
bool hd__cfg_is_loopback(const char *address);
int hd__cfg_parse_store(const char *s, int *out);
int hd__cfg_parse_durability(const char *s, int *out);
int hd__cfg_parse_engine(const char *s, int *out);
int hd__cfg_parse_log_level(const char *s, int *out);
/* ADDR:PORT or [IPv6]:PORT, a numeric address, into *out (overwritten). */
int hd__cfg_listener_parse(const char *s, struct hd_listener *out, char *why, size_t cap);
/* A pattern; `{sub}` (the JWT subject) counts as a valid segment. */
int hd__cfg_check_pattern(const char *s, char *why, size_t cap);
/* A pattern for anonymous clients: as hd__cfg_check_pattern, without `{sub}`. */
int hd__cfg_check_anon_pattern(const char *s, char *why, size_t cap);
/* "*" or scheme://host[:port]. */
int hd__cfg_check_origin(const char *s, char *why, size_t cap);
/* A NATS server URL (nats:// or tls://, host, optional port). */
int hd__cfg_check_nats_url(const char *s, char *why, size_t cap);
/* A JetStream stream name: one plain word. */
int hd__cfg_check_stream(const char *s, char *why, size_t cap);
/* A NATS subject prefix: dot-separated segments, no wildcards. */
int hd__cfg_check_subject_prefix(const char *s, char *why, size_t cap);
/* A token name: one plain word. */
int hd__cfg_check_name(const char *s, char *why, size_t cap);
/* A numeric IPv4 or IPv6 address (no brackets, no host names). */
int hd__cfg_check_any_address(const char *s, char *why, size_t cap);

#endif
