/* SPDX-License-Identifier: MIT */
/*
 * Configuration: what the keys are. Every JSON object of the file has a table of {key, type,
 * offset, min, max, default} rows; the same tables set the defaults, parse the file
 * (config_json.c) and free the struct. The checks across the keys of one object (the tables'
 * post functions) live here too; those of single values (patterns, origins, names, addresses)
 * are config_value.c's. Nothing here opens sockets or applies a setting.
 */
#include "config_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

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
     .check = hd__cfg_check_any_address},
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
     .parse_enum = hd__cfg_parse_durability,
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
     .check = hd__cfg_check_origin},
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
     .check = hd__cfg_check_anon_pattern},
    {.key = "subscribe",
     .type = T_STRLIST,
     .offset = CFG(auth.anonymous.subscribe),
     .max = MAX_LIST,
     .check = hd__cfg_check_anon_pattern},
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
     .check = hd__cfg_check_name},
    {.key = "sha256", .type = T_SHA256, .offset = TOK(sha256), .required = true},
    {.key = "publish",
     .type = T_STRLIST,
     .offset = TOK(publish),
     .max = MAX_LIST,
     .check = hd__cfg_check_pattern},
    {.key = "subscribe",
     .type = T_STRLIST,
     .offset = TOK(subscribe),
     .max = MAX_LIST,
     .check = hd__cfg_check_pattern},
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
     .parse_enum = hd__cfg_parse_engine,
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
     .check = hd__cfg_check_stream},
    {.key = "subject_prefix",
     .type = T_STRING,
     .offset = CFG(engine.subject_prefix),
     .min = 1,
     .max = 64,
     .def_str = "herald",
     .check = hd__cfg_check_subject_prefix},
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
     .check = hd__cfg_check_name},
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
