/* SPDX-License-Identifier: MIT */
/*
 * Configuration: the command line and the JSON file (CONFIG.md). Parsing is table-driven
 * ({key, type, offset, min, max, default} rows); unknown keys, wrong types and out-of-range
 * values are errors naming the key and file:line:column. This module validates and fills a
 * plain struct; it never opens sockets or applies anything.
 */
#ifndef HD_CONFIG_H
#define HD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "log.h"

enum hd_store_kind { HD_STORE_MEMORY = 0, HD_STORE_SQLITE };
enum hd_durability { HD_DURABILITY_SYNC = 0, HD_DURABILITY_ASYNC };

struct hd_strlist {
    char **v; /* each malloc'd */
    size_t n;
};

struct hd_listener {
    char address[64]; /* numeric IPv4 or IPv6 without brackets, e.g. "127.0.0.1", "::1" */
    uint16_t port;    /* 0 picks a free port */
    bool loopback;    /* address is in 127.0.0.0/8 or is ::1 */
    char *tls_cert;   /* NULL when no TLS */
    char *tls_key;
};

struct hd_token {
    char *name;
    unsigned char sha256[32]; /* digest of the token, from 64 hex digits */
    struct hd_strlist publish, subscribe;
};

struct hd_config {
    struct hd_listener *listeners;
    size_t n_listeners;
    char *data_dir; /* default "." for zero-setup; "/var/lib/herald" is only the example */

    struct {
        enum hd_store_kind store;
        enum hd_durability durability;
        uint32_t max_events_per_topic; /* default 1000, 1..10,000,000 */
        uint32_t max_age_s;            /* default 86400, 0 = no age limit */
        uint64_t max_memory_bytes;     /* global cap on retained history, default 256 MiB */
        uint32_t dedupe_window_s;      /* Idempotency-Key memory, default 120, 0 = off */
        uint32_t dedupe_max_keys;      /* keys remembered at most, default 1,000,000 */
    } history;

    struct {
        uint32_t max_connections;                  /* default 100000 */
        uint32_t max_connections_per_ip;           /* default 0 = unlimited */
        uint32_t max_event_bytes;                  /* default 65536, 64..16 MiB */
        uint32_t max_subscriptions_per_connection; /* default 1000 */
        uint64_t max_queue_bytes;                  /* default 1 MiB per connection */
        uint64_t max_total_queue_bytes;            /* all queues together, default 512 MiB */
        uint32_t publish_rate;                     /* events/s, 0 = off (default) */
        uint32_t publish_burst;                    /* bucket size, default 2x rate */
        uint32_t max_header_bytes;                 /* default 4096 */
        uint32_t handshake_timeout_s;              /* default 10 */
        uint32_t max_batch_events;                 /* lines per POST /v1/publish, default 1000 */
        uint64_t max_batch_bytes;                  /* a batch body, default 16 MiB */
    } limits;

    uint32_t heartbeat_s; /* default 25, 1..3600 */

    struct hd_strlist cors_origins; /* default ["*"] */

    struct {
        bool present; /* an "auth" object was given */
        struct {
            struct hd_strlist publish, subscribe;
            /* Explicit consent to anonymous publish on a non-loopback listener. */
            bool allow_remote_publish;
        } anonymous;
        struct hd_token *tokens;
        size_t n_tokens;
        char *jwt_secret_file; /* NULL when no JWT */
    } auth;

    enum hd_log_level log_level; /* default info */

    char *path; /* the config file, NULL when none; kept for SIGHUP */
};

/* What main() was asked to do, beyond the config itself. */
struct hd_cli {
    const char *config_path; /* -c/--config; NULL when absent */
    bool check_config;
    bool version;
    bool help;
    /* Overrides, applied after the file by hd_config_apply_cli. */
    char **listen; /* --listen values, in order (borrowed from argv) */
    size_t n_listen;
    const char *data_dir;
    const char *store;
    const char *log_level;
};

/* Where a config error is, and what. */
struct hd_config_error {
    char file[256];
    int line, column; /* 0 when not tied to a position */
    char text[256];   /* "limits.max_event_bytes: must be between 64 and 16777216" */
};

/*
 * To see every error (--check-config): from now on each one found by the load, apply_cli
 * and validate functions is handed to `fn` (the error is borrowed for the call) and the
 * function goes on with the next key or check, the failed key keeping its default; it
 * still fails. NULL (the default) stops at the first error. Process-wide: set it around
 * one load.
 */
void hd_config_report_all(void (*fn)(void *arg, const struct hd_config_error *e), void *arg);

/* Fills `cfg` with the zero-setup defaults (one listener 127.0.0.1:7070, memory store, no
 * auth section). Returns 0 or -ENOMEM. */
int hd_config_defaults(struct hd_config *cfg);

/*
 * Parses the command line. Returns 0 on success, -EINVAL with a sentence in `err` on a usage
 * error. `cli` borrows from argv. The listen array is malloc'd: free with hd_cli_free.
 */
int hd_cli_parse(int argc, char **argv, struct hd_cli *cli, char *err, size_t errlen);
void hd_cli_free(struct hd_cli *cli);
/* Usage text for --help. */
const char *hd_cli_usage(void);

/*
 * Loads the JSON file at `path` over the defaults already in `cfg`. Returns 0, or -EINVAL
 * (bad content; `err` says where) or a negative errno from opening the file.
 */
int hd_config_load_file(struct hd_config *cfg, const char *path, struct hd_config_error *err);

/* Same from a string (tests, fuzzing); `name` is used as the file name in errors. */
int hd_config_load_string(struct hd_config *cfg, const char *json, size_t len, const char *name,
                          struct hd_config_error *err);

/* Applies command-line overrides (--listen replaces the file's listeners). */
int hd_config_apply_cli(struct hd_config *cfg, const struct hd_cli *cli,
                        struct hd_config_error *err);

/*
 * Cross-field checks done last: e.g. without an auth section only loopback listeners are
 * allowed; anonymous publish on a non-loopback listener needs allow_remote_publish; sqlite
 * store needs a data_dir. Returns 0 or -EINVAL with `err`.
 */
int hd_config_validate(const struct hd_config *cfg, struct hd_config_error *err);

/* Parses "ADDR:PORT", "[v6]:PORT". Returns 0 or -EINVAL. */
int hd_listener_parse(const char *s, struct hd_listener *out);

/* Frees everything cfg owns and zeroes it. */
void hd_config_free(struct hd_config *cfg);

/* Formats err as "file:line:column: text" (or "file: text"). */
void hd_config_error_format(const struct hd_config_error *err, char *out, size_t cap);

#endif
