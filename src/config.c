/* SPDX-License-Identifier: MIT */
/*
 * Configuration: what the keys are. Every JSON object of the file has a table of {key, type,
 * offset, min, max, default} rows; the same tables set the defaults, parse the file
 * (config_json.c) and free the struct. Checks of single values (patterns, origins, names,
 * addresses) and of the keys of one object (the tables' post functions) live here too. Nothing
 * here opens sockets or applies a setting.
 */
#include "config_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "topic.h"

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

int hd__cfg_parse_store(const char *s, int *out)
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

static int parse_engine(const char *s, int *out)
{
    static const char *const names[] = {[HD_ENGINE_LOCAL] = "local", [HD_ENGINE_NATS] = "nats"};
    return lookup(names, 2, s, out);
}

int hd__cfg_parse_log_level(const char *s, int *out)
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

/*
 * A NATS server URL as libnats takes it: nats:// or tls://, optional user[:password]@, a host
 * name or address ([v6] in brackets), an optional port, nothing after. Commas and spaces are
 * refused because --nats and libnats both split lists on them.
 */
int hd__cfg_check_nats_url(const char *s, char *why, size_t cap)
{
    const char *p, *host, *at;
    if (strncmp(s, "nats://", 7) == 0)
        p = s + 7;
    else if (strncmp(s, "tls://", 6) == 0)
        p = s + 6;
    else
        goto bad;
    at = strrchr(p, '@');
    if (at)
        p = at + 1;
    host = p;
    if (*p == '[') {
        p = strchr(p, ']');
        if (!p)
            goto bad;
        p++;
    } else {
        while (*p &&
               strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_", *p))
            p++;
    }
    if (p == host)
        goto bad;
    if (*p == ':') {
        const char *d = ++p;
        while (*p >= '0' && *p <= '9')
            p++;
        if (p == d || p - d > 5 || atol(d) < 1 || atol(d) > 65535)
            goto bad;
    }
    if (*p == '/')
        p++;
    if (*p == '\0' && !strpbrk(s, " ,\t"))
        return 0;
bad:
    snprintf(why, cap,
             "\"%.60s\" is not a NATS server URL: expected nats://HOST[:PORT] or "
             "tls://HOST[:PORT]",
             s);
    return -EINVAL;
}

/* A plain word: letters, digits and the characters in `extra` (named in the message). */
static int check_word(const char *s, const char *extra, char *why, size_t cap)
{
    for (const char *p = s; *p; p++) {
        bool alnum =
            (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9');
        if (!alnum && !strchr(extra, *p)) {
            snprintf(why, cap, "may only use A-Z a-z 0-9 and %s", extra);
            return -EINVAL;
        }
    }
    return 0;
}

/* JetStream stream names become subjects and file names: keep them to one plain word. */
static int check_stream(const char *s, char *why, size_t cap)
{
    return check_word(s, "_-", why, cap);
}

/* Dot-separated segments without wildcards: events go to "<prefix>.<topic>". */
static int check_subject_prefix(const char *s, char *why, size_t cap)
{
    size_t n = strlen(s);
    if (hd_pattern_check(s, n) == 0 && !strpbrk(s, "*>"))
        return 0;
    snprintf(why, cap,
             "\"%.60s\" is not a subject prefix: dot-separated segments of A-Z a-z 0-9 _ : @ -, "
             "no wildcards",
             s);
    return -EINVAL;
}

/* Token names go into log fields unquoted, so keep them to one plain word. */
static int check_name(const char *s, char *why, size_t cap)
{
    return check_word(s, "_.:@-", why, cap);
}

/* ---- listeners ------------------------------------------------------------------------- */

bool hd__cfg_is_loopback(const char *address)
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

int hd__cfg_listener_parse(const char *s, struct hd_listener *out, char *why, size_t cap)
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
    out->loopback = hd__cfg_is_loopback(addr);
    return 0;
}

int hd_listener_parse(const char *s, struct hd_listener *out)
{
    char why[128];
    return s ? hd__cfg_listener_parse(s, out, why, sizeof(why)) : -EINVAL;
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
     .parse_enum = hd__cfg_parse_store,
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

static const struct row console_rows[] = {
    {.key = "enabled", .type = T_BOOL, .offset = CFG(console.enabled), .def = true},
};
static const struct table console_table = TABLE(console_rows, NULL);

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
     .parse_enum = hd__cfg_parse_log_level,
     .choices = "\"error\", \"warn\", \"info\" or \"debug\""},
};
static const struct table log_table = TABLE(log_rows, NULL);

static const struct row engine_tls_rows[] = {
    {.key = "ca",
     .type = T_STRING,
     .offset = CFG(engine.tls_ca),
     .min = 1,
     .max = MAX_STR,
     .required = true},
};
static const struct table engine_tls_table = TABLE(engine_tls_rows, NULL);

static const struct row engine_rows[] = {
    {.key = "type",
     .type = T_ENUM,
     .offset = CFG(engine.type),
     .def = HD_ENGINE_LOCAL,
     .parse_enum = parse_engine,
     .choices = "\"local\" or \"nats\""},
    {.key = "servers",
     .type = T_STRLIST,
     .offset = CFG(engine.servers),
     .max = MAX_NATS_SERVERS,
     .check = hd__cfg_check_nats_url},
    {.key = "stream",
     .type = T_STRING,
     .offset = CFG(engine.stream),
     .min = 1,
     .max = 64,
     .def_str = "HERALD",
     .check = check_stream},
    {.key = "subject_prefix",
     .type = T_STRING,
     .offset = CFG(engine.subject_prefix),
     .min = 1,
     .max = 64,
     .def_str = "herald",
     .check = check_subject_prefix},
    /* JetStream allows at most 5 replicas; 3 is what production wants (a quorum of 2). */
    {.key = "replicas",
     .type = T_U32,
     .offset = CFG(engine.replicas),
     .min = 1,
     .max = 5,
     .def = 1},
    {.key = "node",
     .type = T_STRING,
     .offset = CFG(engine.node),
     .min = 1,
     .max = 64,
     .check = check_name},
    {.key = "creds_file",
     .type = T_STRING,
     .offset = CFG(engine.creds_file),
     .min = 1,
     .max = MAX_STR},
    {.key = "tls", .type = T_OBJECT, .sub = &engine_tls_table},
};
static const struct table engine_table = TABLE(engine_rows, NULL);

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
    {.key = "console", .type = T_OBJECT, .sub = &console_table},
    {.key = "auth", .type = T_OBJECT, .sub = &auth_table},
    {.key = "log", .type = T_OBJECT, .sub = &log_table},
    {.key = "engine", .type = T_OBJECT, .sub = &engine_table},
};
const struct table hd__cfg_root_table = TABLE(root_rows, NULL);

/* ---- defaults and freeing, both driven by the tables ---------------------------------- */

void hd__cfg_strlist_free(struct hd_strlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    *l = (struct hd_strlist){0};
}

void hd__cfg_free_table(const struct table *tb, void *base)
{
    for (size_t r = 0; r < tb->n; r++) {
        const struct row *row = &tb->rows[r];
        switch (row->type) {
        case T_STRING:
            free(*FIELD(base, row->offset, char *));
            *FIELD(base, row->offset, char *) = NULL;
            break;
        case T_STRLIST:
            hd__cfg_strlist_free(FIELD(base, row->offset, struct hd_strlist));
            break;
        case T_OBJECT:
            hd__cfg_free_table(row->sub, base);
            break;
        case T_ARRAY: {
            char *arr = *FIELD(base, row->offset, char *);
            size_t *n = FIELD(base, row->count_offset, size_t);
            for (size_t i = 0; arr && i < *n; i++)
                hd__cfg_free_table(row->sub, arr + i * row->elem_size);
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

int hd__cfg_defaults_table(const struct table *tb, void *base)
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
            int rc = hd__cfg_defaults_table(row->sub, base);
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
    if (hd__cfg_defaults_table(&hd__cfg_root_table, cfg) < 0 ||
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
    hd__cfg_free_table(&hd__cfg_root_table, cfg);
    free(cfg->path);
    memset(cfg, 0, sizeof(*cfg));
}

static int listener_post(struct ctx *c, void *base, json_t *obj)
{
    struct hd_listener *l = base;
    l->loopback = hd__cfg_is_loopback(l->address);
    return 0;
}

static int limits_post(struct ctx *c, void *base, json_t *obj)
{
    struct hd_config *cfg = base;
    if (!json_object_get(obj, "publish_burst")) {
        cfg->limits.publish_burst = 2 * cfg->limits.publish_rate;
    } else if (cfg->limits.publish_rate > 0 && cfg->limits.publish_burst == 0) {
        hd__cfg_push(c, "publish_burst", 0);
        return hd__cfg_fail(c, AT_VALUE,
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
                hd__cfg_push(c, "tokens", 0);
                hd__cfg_push(c, NULL, j);
                hd__cfg_push(c, same_name ? "name" : "sha256", 0);
                return hd__cfg_fail(c, AT_VALUE, "same %s as auth.tokens[%zu]",
                                    same_name ? "name" : "digest", i);
            }
        }
    }
    return 0;
}
