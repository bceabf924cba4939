/* SPDX-License-Identifier: MIT */
/*
 * Check suite for the configuration module (src/config.c): zero-setup defaults, a file using
 * every key, the shipped config/heraldd.json, each kind of bad file with the file:line:column
 * the operator sees, the cross-field rules of hd_config_validate and the command line.
 * Expected positions are computed here independently (from a marker substring), so a locator
 * that drifts by a character fails.
 */
#include "config.h"

#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef HD_SOURCE_DIR
#define HD_SOURCE_DIR "."
#endif

static const unsigned char test_digest[32] = {
    /* sha256("example-token-change-me"), as in config/heraldd.json and full.json */
    0x33, 0x00, 0x8e, 0xa3, 0x74, 0xa9, 0x3b, 0x18, 0x29, 0x7c, 0x7f, 0xf1, 0x5b, 0x32, 0x4d, 0x59,
    0x9c, 0x30, 0xcb, 0xea, 0xc8, 0xa9, 0x07, 0x3b, 0x82, 0xf7, 0x83, 0x7f, 0xe0, 0x04, 0x9e, 0x27,
};

static int load(struct hd_config *cfg, const char *json, struct hd_config_error *err)
{
    ck_assert_int_eq(hd_config_defaults(cfg), 0);
    return hd_config_load_string(cfg, json, strlen(json), "t.json", err);
}

/* Line and column (1-based, ASCII input) of the first occurrence of `marker` in `json`. */
static void marker_pos(const char *json, const char *marker, int *line, int *col)
{
    const char *at = strstr(json, marker);
    ck_assert_msg(at != NULL, "test bug: marker %s not in %s", marker, json);
    *line = 1;
    *col = 1;
    for (const char *p = json; p < at; p++) {
        if (*p == '\n')
            ++*line, *col = 1;
        else
            ++*col;
    }
}

/* Loading `json` fails with -EINVAL at `marker`, and the formatted message contains `needle`. */
static void expect_error(const char *json, const char *marker, const char *needle)
{
    struct hd_config cfg;
    struct hd_config_error err;
    char msg[600];
    int line, col;
    int rc = load(&cfg, json, &err);
    hd_config_error_format(&err, msg, sizeof(msg));
    ck_assert_msg(rc == -EINVAL, "expected -EINVAL for %s, got %d", json, rc);
    marker_pos(json, marker, &line, &col);
    ck_assert_msg(err.line == line && err.column == col, "%s: wanted %d:%d for %s", msg, line, col,
                  json);
    ck_assert_msg(strstr(msg, needle) != NULL, "message \"%s\" lacks \"%s\"", msg, needle);
    hd_config_free(&cfg);
}

static void expect_ok(const char *json, struct hd_config *cfg)
{
    struct hd_config_error err;
    char msg[600];
    int rc = load(cfg, json, &err);
    hd_config_error_format(&err, msg, sizeof(msg));
    ck_assert_msg(rc == 0, "%s: %s", json, msg);
}

START_TEST(defaults)
{
    struct hd_config cfg;
    struct hd_config_error err;
    ck_assert_int_eq(hd_config_defaults(&cfg), 0);
    ck_assert_uint_eq(cfg.n_listeners, 1);
    ck_assert_str_eq(cfg.listeners[0].address, "127.0.0.1");
    ck_assert_uint_eq(cfg.listeners[0].port, 7070);
    ck_assert(cfg.listeners[0].loopback);
    ck_assert_ptr_null(cfg.listeners[0].tls_cert);
    ck_assert_str_eq(cfg.data_dir, ".");
    ck_assert_int_eq(cfg.history.store, HD_STORE_MEMORY);
    ck_assert_int_eq(cfg.history.durability, HD_DURABILITY_SYNC);
    ck_assert_uint_eq(cfg.history.max_events_per_topic, 1000);
    ck_assert_uint_eq(cfg.history.max_age_s, 86400);
    ck_assert_uint_eq(cfg.history.max_memory_bytes, 256u << 20);
    ck_assert_uint_eq(cfg.limits.max_connections, 100000);
    ck_assert_uint_eq(cfg.limits.max_connections_per_ip, 0);
    ck_assert_uint_eq(cfg.limits.max_event_bytes, 65536);
    ck_assert_uint_eq(cfg.limits.max_subscriptions_per_connection, 1000);
    ck_assert_uint_eq(cfg.limits.max_queue_bytes, 1u << 20);
    ck_assert_uint_eq(cfg.limits.publish_rate, 0);
    ck_assert_uint_eq(cfg.limits.publish_burst, 0);
    ck_assert_uint_eq(cfg.limits.max_header_bytes, 4096);
    ck_assert_uint_eq(cfg.limits.handshake_timeout_s, 10);
    ck_assert_uint_eq(cfg.limits.max_batch_events, 1000);
    ck_assert_uint_eq(cfg.limits.max_batch_bytes, 16u << 20);
    ck_assert_uint_eq(cfg.history.dedupe_window_s, 120);
    ck_assert_uint_eq(cfg.history.dedupe_max_keys, 1000000);
    ck_assert_uint_eq(cfg.heartbeat_s, 25);
    ck_assert_uint_eq(cfg.cors_origins.n, 1);
    ck_assert_str_eq(cfg.cors_origins.v[0], "*");
    ck_assert(cfg.console.enabled);
    ck_assert(!cfg.auth.present);
    ck_assert_uint_eq(cfg.auth.n_tokens, 0);
    ck_assert_ptr_null(cfg.auth.jwt_secret_file);
    ck_assert_int_eq(cfg.log_level, HD_LOG_INFO);
    ck_assert_ptr_null(cfg.path);
    ck_assert_int_eq(hd_config_validate(&cfg, &err), 0);
    hd_config_free(&cfg);
    ck_assert_ptr_null(cfg.listeners);
    hd_config_free(&cfg); /* twice is harmless */
}
END_TEST

START_TEST(full_file)
{
    struct hd_config cfg;
    struct hd_config_error err;
    char msg[600];
    ck_assert_int_eq(hd_config_defaults(&cfg), 0);
    int rc = hd_config_load_file(&cfg, HD_SOURCE_DIR "/tests/data/config/full.json", &err);
    hd_config_error_format(&err, msg, sizeof(msg));
    ck_assert_msg(rc == 0, "%s", msg);
    ck_assert_str_eq(cfg.path, HD_SOURCE_DIR "/tests/data/config/full.json");
    ck_assert_uint_eq(cfg.n_listeners, 2);
    ck_assert_str_eq(cfg.listeners[0].address, "127.0.0.1");
    ck_assert_uint_eq(cfg.listeners[0].port, 7070);
    ck_assert(cfg.listeners[0].loopback);
    ck_assert_ptr_null(cfg.listeners[0].tls_cert);
    ck_assert_str_eq(cfg.listeners[1].address, "::");
    ck_assert_uint_eq(cfg.listeners[1].port, 0);
    ck_assert(!cfg.listeners[1].loopback);
    ck_assert_str_eq(cfg.listeners[1].tls_cert, "/etc/herald/cert.pem");
    ck_assert_str_eq(cfg.listeners[1].tls_key, "/etc/herald/key.pem");
    ck_assert_str_eq(cfg.data_dir, "/var/lib/herald-test");
    ck_assert_int_eq(cfg.history.store, HD_STORE_SQLITE);
    ck_assert_int_eq(cfg.history.durability, HD_DURABILITY_ASYNC);
    ck_assert_uint_eq(cfg.history.max_events_per_topic, 500);
    ck_assert_uint_eq(cfg.history.max_age_s, 3600);
    ck_assert_uint_eq(cfg.history.max_memory_bytes, 64u << 20);
    ck_assert_uint_eq(cfg.limits.max_connections, 5000);
    ck_assert_uint_eq(cfg.limits.max_connections_per_ip, 50);
    ck_assert_uint_eq(cfg.limits.max_event_bytes, 131072);
    ck_assert_uint_eq(cfg.limits.max_subscriptions_per_connection, 200);
    ck_assert_uint_eq(cfg.limits.max_queue_bytes, 2u << 20);
    ck_assert_uint_eq(cfg.limits.publish_rate, 100);
    ck_assert_uint_eq(cfg.limits.publish_burst, 300);
    ck_assert_uint_eq(cfg.limits.max_header_bytes, 8192);
    ck_assert_uint_eq(cfg.limits.handshake_timeout_s, 5);
    ck_assert_uint_eq(cfg.heartbeat_s, 30);
    ck_assert_uint_eq(cfg.cors_origins.n, 2);
    ck_assert_str_eq(cfg.cors_origins.v[0], "https://app.example.com");
    ck_assert_str_eq(cfg.cors_origins.v[1], "http://localhost:8080");
    ck_assert(cfg.auth.present);
    ck_assert_uint_eq(cfg.auth.anonymous.publish.n, 1);
    ck_assert_str_eq(cfg.auth.anonymous.publish.v[0], "public.chat");
    ck_assert_uint_eq(cfg.auth.anonymous.subscribe.n, 2);
    ck_assert_str_eq(cfg.auth.anonymous.subscribe.v[1], "status");
    ck_assert(cfg.auth.anonymous.allow_remote_publish);
    ck_assert_uint_eq(cfg.auth.n_tokens, 2);
    ck_assert_str_eq(cfg.auth.tokens[0].name, "auth-service");
    ck_assert_mem_eq(cfg.auth.tokens[0].sha256, test_digest, 32);
    ck_assert_uint_eq(cfg.auth.tokens[0].publish.n, 2);
    ck_assert_str_eq(cfg.auth.tokens[0].publish.v[1], "user.*.inbox");
    ck_assert_uint_eq(cfg.auth.tokens[0].subscribe.n, 0);
    ck_assert_str_eq(cfg.auth.tokens[1].name, "reader");
    /* upper-case hex decodes too: sha256("test") */
    ck_assert_uint_eq(cfg.auth.tokens[1].sha256[0], 0x9f);
    ck_assert_uint_eq(cfg.auth.tokens[1].sha256[31], 0x08);
    ck_assert_str_eq(cfg.auth.tokens[1].subscribe.v[0], "user.{sub}.>");
    ck_assert_str_eq(cfg.auth.jwt_secret_file, "/etc/herald/jwt.secret");
    ck_assert_int_eq(cfg.log_level, HD_LOG_DEBUG);
    ck_assert_int_eq(hd_config_validate(&cfg, &err), 0);
    hd_config_free(&cfg);
}
END_TEST

START_TEST(shipped_config)
{
    struct hd_config cfg;
    struct hd_config_error err;
    char msg[600];
    ck_assert_int_eq(hd_config_defaults(&cfg), 0);
    int rc = hd_config_load_file(&cfg, HD_SOURCE_DIR "/config/heraldd.json", &err);
    hd_config_error_format(&err, msg, sizeof(msg));
    ck_assert_msg(rc == 0, "%s", msg);
    rc = hd_config_validate(&cfg, &err);
    hd_config_error_format(&err, msg, sizeof(msg));
    ck_assert_msg(rc == 0, "%s", msg);
    ck_assert_uint_eq(cfg.n_listeners, 1);
    ck_assert_str_eq(cfg.listeners[0].address, "127.0.0.1");
    ck_assert_uint_eq(cfg.listeners[0].port, 7070);
    ck_assert_ptr_null(cfg.listeners[0].tls_cert); /* starts without certificate files */
    ck_assert_str_eq(cfg.data_dir, "/var/lib/herald");
    ck_assert_int_eq(cfg.history.store, HD_STORE_SQLITE);
    ck_assert_uint_eq(cfg.limits.publish_rate, 1000);
    ck_assert_uint_eq(cfg.limits.publish_burst, 2000);
    ck_assert(cfg.auth.present);
    ck_assert_uint_eq(cfg.auth.anonymous.publish.n, 0);
    ck_assert_str_eq(cfg.auth.anonymous.subscribe.v[0], "public.>");
    /* No token ships: a published digest would be a credential every install shares. */
    ck_assert_uint_eq(cfg.auth.n_tokens, 0);
    ck_assert_ptr_null(cfg.auth.jwt_secret_file);
    ck_assert(cfg.console.enabled);
    ck_assert_int_eq(cfg.engine.type, HD_ENGINE_LOCAL); /* one node; README "Cluster" for more */
    hd_config_free(&cfg);
}
END_TEST

START_TEST(console_switch)
{
    struct hd_config cfg;
    expect_ok("{\"console\": {\"enabled\": false}}", &cfg);
    ck_assert(!cfg.console.enabled);
    hd_config_free(&cfg);
    expect_error("{\"console\": {\"enabled\": 0}}", "0}", "console.enabled: must be true or false");
    expect_error("{\"console\": {\"path\": \"/x\"}}", "\"path\"", "console.path");
}
END_TEST

START_TEST(syntax_error)
{
    struct hd_config cfg;
    struct hd_config_error err;
    char msg[600];
    ck_assert_int_eq(load(&cfg, "{\n  \"heartbeat_s\": 25,\n}", &err), -EINVAL);
    hd_config_error_format(&err, msg, sizeof(msg));
    ck_assert_int_eq(err.line, 3);
    ck_assert_int_eq(err.column, 1);
    ck_assert_msg(strncmp(msg, "t.json:3:1: invalid JSON:", 25) == 0, "%s", msg);
    hd_config_free(&cfg);
}
END_TEST

START_TEST(duplicate_key)
{
    struct hd_config cfg;
    struct hd_config_error err;
    char msg[600];
    ck_assert_int_eq(load(&cfg, "{\n  \"heartbeat_s\": 25,\n  \"heartbeat_s\": 30\n}", &err),
                     -EINVAL);
    hd_config_error_format(&err, msg, sizeof(msg));
    ck_assert_int_eq(err.line, 3);
    ck_assert_msg(strstr(msg, "duplicate") != NULL, "%s", msg);
    hd_config_free(&cfg);
}
END_TEST

START_TEST(unknown_keys)
{
    const char *nested = "{\n  \"limits\": {\n    \"max_connections\": 10,\n"
                         "    \"max_evnt_bytes\": 100\n  }\n}";
    struct hd_config cfg;
    struct hd_config_error err;
    char msg[600];
    ck_assert_int_eq(load(&cfg, nested, &err), -EINVAL);
    hd_config_error_format(&err, msg, sizeof(msg));
    ck_assert_str_eq(msg, "t.json:4:5: limits.max_evnt_bytes: unknown key (did you mean "
                          "\"max_event_bytes\"?)");
    hd_config_free(&cfg);

    expect_error("{\n  \"listen_on\": []\n}", "\"listen_on\"", "listen_on: unknown key");
    expect_error("{\"_comment\": \"x\"}", "\"_comment\"", "_comment: unknown key");
    expect_error("{\"listen\": [{\"address\": \"::1\", \"port\": 1, \"tsl\": {}}]}", "\"tsl\"",
                 "listen[0].tsl: unknown key (did you mean \"tls\"?)");
    expect_error("{\"auth\": {\"tokens\": [{\"name\": \"a\", \"sha\": \"\"}]}}", "\"sha\"",
                 "auth.tokens[0].sha: unknown key");
    expect_error("{\"auth\": {\"anonymous\": {\"publish\": [], \"allow\": true}}}", "\"allow\"",
                 "auth.anonymous.allow: unknown key");
    expect_error("{\"listen\": [{\"address\": \"::1\", \"port\": 1, \"tls\": {\"cert\": \"c\", "
                 "\"key\": \"k\", \"ca\": \"x\"}}]}",
                 "\"ca\"", "listen[0].tls.ca: unknown key");
}
END_TEST

START_TEST(wrong_types)
{
    expect_error("{\n  \"heartbeat_s\": \"25\"\n}", "\"25\"", "heartbeat_s: must be an integer");
    expect_error("{\"history\": {\"max_age_s\": 1.5}}", "1.5",
                 "history.max_age_s: must be an "
                 "integer (got a fractional number)");
    expect_error("{\"history\": {\"store\": 1}}", "1}", "history.store: must be \"memory\" or");
    expect_error("{\"listen\": {}}", "{}", "listen: must be an array of objects");
    expect_error("{\"listen\": [7070]}", "7070", "listen[0]: must be an object");
    expect_error("{\"cors\": {\"origins\": \"*\"}}", "\"*\"", "cors.origins: must be an array");
    expect_error("{\"cors\": {\"origins\": [\"*\", 5]}}", "5", "cors.origins[1]: must be a string");
    expect_error("{\"auth\": {\"anonymous\": {\"allow_remote_publish\": \"yes\"}}}", "\"yes\"",
                 "auth.anonymous.allow_remote_publish: must be true or false");
    expect_error("{\"limits\": null}", "null", "limits: must be an object (got null)");
    expect_error("{\"data_dir\": [\"/tmp\"]}", "[", "data_dir: must be a string");
    expect_error("[]", "[", "top level: must be an object (got an array)");
}
END_TEST

START_TEST(out_of_range)
{
    expect_error("{\"limits\": {\"max_event_bytes\": 63}}", "63",
                 "limits.max_event_bytes: must be between 64 and 16777216 (got 63)");
    expect_error("{\"limits\": {\"max_event_bytes\": 16777217}}", "16777217",
                 "limits.max_event_bytes: must be between 64 and 16777216 (got 16777217)");
    expect_error("{\"history\": {\"max_events_per_topic\": 0}}", "0}",
                 "history.max_events_per_topic: must be between 1 and 10000000");
    expect_error("{\"history\": {\"max_events_per_topic\": 10000001}}", "10000001",
                 "(got 10000001)");
    expect_error("{\"history\": {\"max_memory_bytes\": 1048575}}", "1048575",
                 "between 1048576 and "
                 "1099511627776");
    expect_error("{\"heartbeat_s\": 0}", "0", "heartbeat_s: must be between 1 and 3600 (got 0)");
    expect_error("{\"heartbeat_s\": 3601}", "3601", "(got 3601)");
    expect_error("{\"heartbeat_s\": -1}", "-1", "(got -1)");
    expect_error("{\"limits\": {\"max_queue_bytes\": 4095}}", "4095", "limits.max_queue_bytes");
    expect_error("{\"limits\": {\"max_header_bytes\": 65537}}", "65537", "1024 and 65536");
    expect_error("{\"limits\": {\"handshake_timeout_s\": 301}}", "301", "1 and 300");
    expect_error("{\"limits\": {\"max_batch_events\": 0}}", "0}", "limits.max_batch_events");
    expect_error("{\"limits\": {\"max_batch_bytes\": 100}}", "100", "limits.max_batch_bytes");
    expect_error("{\"history\": {\"dedupe_window_s\": 604801}}", "604801",
                 "history.dedupe_window_s");
    expect_error("{\"history\": {\"dedupe_max_keys\": 10}}", "10}", "history.dedupe_max_keys");
    expect_error("{\"limits\": {\"publish_rate\": 10, \"publish_burst\": 0}}", "0}",
                 "limits.publish_burst: must be at least 1 when publish_rate is set");
    expect_error("{\"data_dir\": \"\"}", "\"\"", "data_dir: must not be empty");

    /* The ends themselves are accepted. */
    struct hd_config cfg;
    expect_ok("{\"limits\": {\"max_event_bytes\": 64, \"max_connections_per_ip\": 0}, "
              "\"history\": {\"max_age_s\": 0}, \"heartbeat_s\": 3600}",
              &cfg);
    ck_assert_uint_eq(cfg.limits.max_event_bytes, 64);
    ck_assert_uint_eq(cfg.history.max_age_s, 0);
    ck_assert_uint_eq(cfg.heartbeat_s, 3600);
    hd_config_free(&cfg);
    expect_ok("{\"limits\": {\"max_event_bytes\": 16777216, \"max_queue_bytes\": 1073741824}}",
              &cfg);
    ck_assert_uint_eq(cfg.limits.max_queue_bytes, 1u << 30);
    hd_config_free(&cfg);
}
END_TEST

START_TEST(bad_enums)
{
    expect_error("{\"history\": {\"store\": \"redis\"}}", "\"redis\"",
                 "history.store: must be \"memory\" or \"sqlite\" (got \"redis\")");
    expect_error("{\"history\": {\"durability\": \"fsync\"}}", "\"fsync\"",
                 "\"sync\" or \"async\"");
    expect_error("{\"log\": {\"level\": \"verbose\"}}", "\"verbose\"",
                 "log.level: must be \"error\"");
    /* Control characters from the file never reach the terminal. */
    expect_error("{\"log\": {\"level\": \"a\\nb\"}}", "\"a", "(got \"a?b\")");
}
END_TEST

START_TEST(bad_listen)
{
    expect_error("{\"listen\": []}", "[]", "listen: must not be empty");
    expect_error("{\"listen\": [{\"address\": \"localhost\", \"port\": 1}]}", "\"localhost\"",
                 "listen[0].address: \"localhost\" is not a numeric IPv4 or IPv6 address (host "
                 "names are not accepted)");
    expect_error("{\"listen\": [{\"address\": \"[::1]\", \"port\": 1}]}", "\"[::1]\"",
                 "without brackets");
    expect_error("{\"listen\": [{\"address\": \"1.2.3.4.5\", \"port\": 1}]}", "\"1.2.3.4.5\"",
                 "not a numeric");
    expect_error("{\"listen\": [{\"address\": \"::1\", \"port\": 1},\n"
                 "            {\"address\": \"::1\", \"port\": 65536}]}",
                 "65536", "listen[1].port: must be between 0 and 65535 (got 65536)");
    expect_error("{\"listen\": [{\"address\": \"::1\", \"port\": -1}]}", "-1", "listen[0].port");
    expect_error("{\"listen\": [{\"address\": \"::1\"}]}", "{\"address\"",
                 "listen[0]: missing required key \"port\"");
    expect_error("{\"listen\": [{\"address\": \"::1\", \"port\": 1, \"tls\": {\"cert\": \"c\"}}]}",
                 "{\"cert\"", "listen[0].tls: missing required key \"key\"");
}
END_TEST

START_TEST(bad_auth)
{
    static const char *const good = "\"33008ea374a93b18297c7ff15b324d599c30cbeac8a9073b82f7837fe0"
                                    "049e27\"";
    char json[512];
    expect_error("{\"auth\": {\"tokens\": [{\"name\": \"a\", \"sha256\": \"abc\"}]}}", "\"abc\"",
                 "auth.tokens[0].sha256: must be the SHA-256 of the token as 64 hex digits");
    /* 64 characters, one of them not hex */
    expect_error("{\"auth\": {\"tokens\": [{\"name\": \"a\", \"sha256\": \"g3008ea374a93b18297c7ff1"
                 "5b324d599c30cbeac8a9073b82f7837fe0049e27\"}]}}",
                 "\"g3", "64 hex digits");
    expect_error("{\"auth\": {\"tokens\": [{\"name\": \"a\", \"sha256\": \"33008ea374a93b18297c7ff1"
                 "5b324d599c30cbeac8a9073b82f7837fe0049e2\"}]}}",
                 "\"330", "64 hex digits");
    snprintf(json, sizeof(json), "{\"auth\": {\"tokens\": [{\"sha256\": %s}]}}", good);
    expect_error(json, "{\"sha256\"", "auth.tokens[0]: missing required key \"name\"");
    snprintf(json, sizeof(json), "{\"auth\": {\"tokens\": [{\"name\": \"\", \"sha256\": %s}]}}",
             good);
    expect_error(json, "\"\"", "auth.tokens[0].name: must not be empty");
    snprintf(json, sizeof(json), "{\"auth\": {\"tokens\": [{\"name\": \"a b\", \"sha256\": %s}]}}",
             good);
    expect_error(json, "\"a b\"", "auth.tokens[0].name: may only use");
    snprintf(json, sizeof(json),
             "{\"auth\": {\"tokens\": [{\"name\": \"a\", \"sha256\": %s},\n"
             "{\"name\": \"a\", \"sha256\": %s}]}}",
             good, good);
    expect_error(json,
                 "\"a\", \"sha256\": \"33008ea374a93b18297c7ff15b324d599c30cbeac8a9073b82f7"
                 "837fe0049e27\"}]",
                 "auth.tokens[1].name: same name as auth.tokens[0]");
    snprintf(json, sizeof(json),
             "{\"auth\": {\"tokens\": [{\"name\": \"a\", \"sha256\": %s},\n"
             "{\"name\": \"b\", \"sha256\": %s}]}}",
             good, good);
    expect_error(json, "\"33008ea374a93b18297c7ff15b324d599c30cbeac8a9073b82f7837fe0049e27\"}]",
                 "auth.tokens[1].sha256: same digest as auth.tokens[0]");
    expect_error("{\"auth\": {\"anonymous\": {\"subscribe\": [\"a.b\", \"a..b\"]}}}", "\"a..b\"",
                 "auth.anonymous.subscribe[1]: \"a..b\" is not a valid pattern");
    expect_error("{\"auth\": {\"anonymous\": {\"publish\": [\"a.>.b\"]}}}", "\"a.>",
                 "not a valid pattern");
    expect_error("{\"auth\": {\"anonymous\": {\"subscribe\": [\"user.{sub}\"]}}}", "\"user",
                 "anonymous clients have no subject");
    snprintf(json, sizeof(json),
             "{\"auth\": {\"tokens\": [{\"name\": \"a\", \"sha256\": %s, "
             "\"publish\": [\"{sup}\"]}]}}",
             good);
    expect_error(json, "\"{sup}\"", "auth.tokens[0].publish[0]");
    expect_error("{\"auth\": {\"jwt\": {}}}", "{}}",
                 "auth.jwt: missing required key "
                 "\"secret_file\"");
    expect_error("{\"cors\": {\"origins\": [\"https://app.example.com/\"]}}", "\"https",
                 "cors.origins[0]: \"https://app.example.com/\" is not an origin");
    expect_error("{\"cors\": {\"origins\": [\"app.example.com\"]}}", "\"app", "is not an origin");
    expect_error("{\"cors\": {\"origins\": [\"http://h:99999\"]}}", "\"http", "is not an origin");

    /* {sub} inside and as a segment is fine for tokens; origins with port and IPv6 too. */
    struct hd_config cfg;
    snprintf(json, sizeof(json),
             "{\"auth\": {\"tokens\": [{\"name\": \"a\", \"sha256\": %s, "
             "\"publish\": [\"u-{sub}.x\", \"{sub}\", \"$sys.{sub}.>\"]}]}, "
             "\"cors\": {\"origins\": [\"http://[::1]:8080\", "
             "\"https://a-b.example:443\"]}}",
             good);
    expect_ok(json, &cfg);
    ck_assert_uint_eq(cfg.auth.tokens[0].publish.n, 3);
    ck_assert_uint_eq(cfg.cors_origins.n, 2);
    hd_config_free(&cfg);
}
END_TEST

START_TEST(locator)
{
    /* Escaped keys, and strings holding brackets, quotes and commas before the target. */
    expect_error("{\"data_dir\": \"a}\\\"{[,\", \"listen\": [{\"address\": \"::1\", \"port\": 1, "
                 "\"tls\": {\"cert\": \"]}\\\\\", \"key\": \"{[\"}}],\n"
                 "  \"\\u006cimits\": {\"max_connections\": 5, \"max_event_bytes\": 1}}",
                 "1}}", "limits.max_event_bytes");
    expect_error("{\"cors\": {\"origins\": [\"*\", \"*\",\n   \"nope\"]}}", "\"nope\"",
                 "cors.origins[2]");
    /* Escapes in keys are decoded when matching; control characters print as '?'. */
    expect_error("{\"heartbeat_s\": 25, \"a\\tb\\\"\": 1}", "\"a\\t", "a?b\": unknown key");
    /* A key containing a surrogate pair is matched and named. */
    expect_error("{\"\\ud83d\\ude00\": 1}", "\"\\ud83d", "\xf0\x9f\x98\x80: unknown key");
    /* Columns count characters, as jansson does: "é" is one column. */
    struct hd_config cfg;
    struct hd_config_error err;
    ck_assert_int_eq(load(&cfg, "{\"data_dir\": \"\xc3\xa9\", \"heartbeat_s\": 0}", &err), -EINVAL);
    ck_assert_int_eq(err.column, 34);
    hd_config_free(&cfg);
}
END_TEST

START_TEST(burst_default)
{
    struct hd_config cfg;
    expect_ok("{\"limits\": {\"publish_rate\": 100}}", &cfg);
    ck_assert_uint_eq(cfg.limits.publish_burst, 200);
    hd_config_free(&cfg);
    expect_ok("{\"limits\": {\"publish_rate\": 100, \"publish_burst\": 5}}", &cfg);
    ck_assert_uint_eq(cfg.limits.publish_burst, 5);
    hd_config_free(&cfg);
    expect_ok("{\"limits\": {\"max_connections\": 7}}", &cfg);
    ck_assert_uint_eq(cfg.limits.publish_rate, 0);
    ck_assert_uint_eq(cfg.limits.publish_burst, 0);
    hd_config_free(&cfg);
}
END_TEST

static int validate_json(const char *json, char *msg, size_t cap)
{
    struct hd_config cfg;
    struct hd_config_error err;
    expect_ok(json, &cfg);
    int rc = hd_config_validate(&cfg, &err);
    hd_config_error_format(&err, msg, cap);
    hd_config_free(&cfg);
    return rc;
}

START_TEST(validate_loopback)
{
    char msg[600];
    ck_assert_int_eq(validate_json("{\"listen\": [{\"address\": \"::1\", \"port\": 1}, "
                                   "{\"address\": \"0.0.0.0\", \"port\": 2}]}",
                                   msg, sizeof(msg)),
                     -EINVAL);
    ck_assert_str_eq(msg, "listen[1]: 0.0.0.0 is not loopback; without an \"auth\" section heraldd "
                          "only listens on loopback; add an auth section");
    ck_assert_int_eq(validate_json("{\"listen\": [{\"address\": \"127.1.2.3\", \"port\": 0}, "
                                   "{\"address\": \"::1\", \"port\": 0}]}",
                                   msg, sizeof(msg)),
                     0);
    ck_assert_int_eq(validate_json("{\"listen\": [{\"address\": \"0.0.0.0\", \"port\": 1}], "
                                   "\"auth\": {}}",
                                   msg, sizeof(msg)),
                     0);
}
END_TEST

START_TEST(validate_remote_publish)
{
    char msg[600];
    ck_assert_int_eq(validate_json("{\"listen\": [{\"address\": \"::\", \"port\": 1}], \"auth\": "
                                   "{\"anonymous\": {\"publish\": [\">\"]}}}",
                                   msg, sizeof(msg)),
                     -EINVAL);
    ck_assert_msg(strstr(msg, "auth.anonymous.publish:") == msg, "%s", msg);
    ck_assert_msg(strstr(msg, "set auth.anonymous.allow_remote_publish to true") != NULL, "%s",
                  msg);
    ck_assert_int_eq(validate_json("{\"listen\": [{\"address\": \"::\", \"port\": 1}], \"auth\": "
                                   "{\"anonymous\": {\"publish\": [\">\"], "
                                   "\"allow_remote_publish\": true}}}",
                                   msg, sizeof(msg)),
                     0);
    /* Loopback-only anonymous publish needs no consent; subscribe-only never does. */
    ck_assert_int_eq(
        validate_json("{\"auth\": {\"anonymous\": {\"publish\": [\">\"]}}}", msg, sizeof(msg)), 0);
    ck_assert_int_eq(validate_json("{\"listen\": [{\"address\": \"::\", \"port\": 1}], \"auth\": "
                                   "{\"anonymous\": {\"subscribe\": [\">\"]}}}",
                                   msg, sizeof(msg)),
                     0);
}
END_TEST

START_TEST(validate_misc)
{
    struct hd_config cfg;
    struct hd_config_error err;
    char msg[600];
    ck_assert_int_eq(validate_json("{\"listen\": [{\"address\": \"::1\", \"port\": 9}, "
                                   "{\"address\": \"::1\", \"port\": 9}]}",
                                   msg, sizeof(msg)),
                     -EINVAL);
    ck_assert_str_eq(msg, "listen[1]: same address and port as listen[0]");
    ck_assert_int_eq(
        validate_json("{\"limits\": {\"max_event_bytes\": 2000000}}", msg, sizeof(msg)), -EINVAL);
    ck_assert_msg(strstr(msg, "limits.max_queue_bytes") == msg, "%s", msg);

    ck_assert_int_eq(hd_config_defaults(&cfg), 0);
    cfg.history.store = HD_STORE_SQLITE;
    cfg.data_dir[0] = '\0';
    ck_assert_int_eq(hd_config_validate(&cfg, &err), -EINVAL);
    ck_assert_str_eq(err.text, "data_dir: the sqlite store needs a data directory");
    cfg.data_dir[0] = '.';
    cfg.listeners[0].tls_cert = strdup("c");
    ck_assert_int_eq(hd_config_validate(&cfg, &err), -EINVAL);
    ck_assert_str_eq(err.text, "listen[0].tls: cert and key must both be given");
    hd_config_free(&cfg); /* frees the half TLS pair too */
}
END_TEST

START_TEST(load_file_errors)
{
    struct hd_config cfg;
    struct hd_config_error err;
    char msg[600];
    ck_assert_int_eq(hd_config_defaults(&cfg), 0);
    ck_assert_int_eq(hd_config_load_file(&cfg, "/nonexistent/heraldd.json", &err), -ENOENT);
    hd_config_error_format(&err, msg, sizeof(msg));
    ck_assert_str_eq(msg, "/nonexistent/heraldd.json: cannot open: No such file or directory");
    ck_assert_ptr_null(cfg.path);

    ck_assert_int_eq(
        hd_config_load_file(&cfg, HD_SOURCE_DIR "/tests/data/config/bad_range.json", &err),
        -EINVAL);
    hd_config_error_format(&err, msg, sizeof(msg));
    ck_assert_str_eq(msg, HD_SOURCE_DIR
                     "/tests/data/config/bad_range.json:3:24: "
                     "limits.max_event_bytes: must be between 64 and 16777216 (got 10)");
    ck_assert_int_eq(hd_config_load_file(&cfg, HD_SOURCE_DIR "/tests", &err), -EISDIR);
    hd_config_free(&cfg);
}
END_TEST

START_TEST(partial_free)
{
    /* Fails in the second token, after the first was filled: everything must still be freed
     * (ASan and valgrind runs catch a leak here). */
    struct hd_config cfg;
    struct hd_config_error err;
    const char *json =
        "{\"cors\": {\"origins\": [\"http://a\", \"http://b\"]}, \"auth\": {"
        "\"anonymous\": {\"subscribe\": [\"x\"]}, \"jwt\": {\"secret_file\": \"f\"}, "
        "\"tokens\": [{\"name\": \"a\", \"sha256\": \"33008ea374a93b18297c7ff15b324d5"
        "99c30cbeac8a9073b82f7837fe0049e27\", \"publish\": [\"a\"]}, {\"name\": \"b\","
        " \"publish\": [\"ok\", \"bad..\"]}]}}";
    ck_assert_int_eq(load(&cfg, json, &err), -EINVAL);
    ck_assert_msg(strstr(err.text, "auth.tokens[1].publish[1]") == err.text, "%s", err.text);
    hd_config_free(&cfg);
    struct hd_config zero = {0};
    hd_config_free(&zero);
    hd_config_free(NULL);
    /* A second load replaces lists and listeners instead of leaking the first. */
    expect_ok("{\"listen\": [{\"address\": \"::1\", \"port\": 1}], \"data_dir\": \"/a\"}", &cfg);
    ck_assert_int_eq(hd_config_load_string(&cfg, json, 60, "t", &err), -EINVAL); /* cut short */
    const char *second = "{\"listen\": [{\"address\": \"::1\", \"port\": 2}], "
                         "\"data_dir\": \"/b\", \"cors\": {\"origins\": []}}";
    ck_assert_int_eq(hd_config_load_string(&cfg, second, strlen(second), "t", &err), 0);
    ck_assert_uint_eq(cfg.listeners[0].port, 2);
    ck_assert_str_eq(cfg.data_dir, "/b");
    ck_assert_uint_eq(cfg.cors_origins.n, 0);
    hd_config_free(&cfg);
}
END_TEST

START_TEST(error_format)
{
    struct hd_config_error err = {.file = "h.json", .line = 7, .column = 18, .text = "x: bad"};
    char out[600];
    hd_config_error_format(&err, out, sizeof(out));
    ck_assert_str_eq(out, "h.json:7:18: x: bad");
    err.line = err.column = 0;
    hd_config_error_format(&err, out, sizeof(out));
    ck_assert_str_eq(out, "h.json: x: bad");
    err.file[0] = '\0';
    hd_config_error_format(&err, out, sizeof(out));
    ck_assert_str_eq(out, "x: bad");
}
END_TEST

START_TEST(listener_parse)
{
    static const struct {
        const char *in, *address;
        int port; /* -1: must be rejected */
        bool loopback;
    } cases[] = {
        {"127.0.0.1:7070", "127.0.0.1", 7070, true},
        {"127.9.9.9:1", "127.9.9.9", 1, true},
        {"0.0.0.0:7070", "0.0.0.0", 7070, false},
        {"10.1.2.3:65535", "10.1.2.3", 65535, false},
        {"[::1]:7070", "::1", 7070, true},
        {"[::1]:0", "::1", 0, true},
        {"[::]:7070", "::", 7070, false},
        {"[fe80::1]:80", "fe80::1", 80, false},
        {"[::ffff:127.0.0.1]:5", "::ffff:127.0.0.1", 5, true},
        {"127.0.0.1:65536", NULL, -1, false},
        {"127.0.0.1:-1", NULL, -1, false},
        {"127.0.0.1:abc", NULL, -1, false},
        {"127.0.0.1:", NULL, -1, false},
        {"127.0.0.1:007070", NULL, -1, false},
        {"127.0.0.1", NULL, -1, false},
        {"localhost:7070", NULL, -1, false},
        {"example.com:80", NULL, -1, false},
        {"::1:7070", NULL, -1, false},
        {"[::1]7070", NULL, -1, false},
        {"[::1:7070", NULL, -1, false},
        {"[127.0.0.1]:7070", NULL, -1, false},
        {"[]:1", NULL, -1, false},
        {":7070", NULL, -1, false},
        {"", NULL, -1, false},
        {"1.2.3:7070", NULL, -1, false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct hd_listener l;
        int rc = hd_listener_parse(cases[i].in, &l);
        if (cases[i].port < 0) {
            ck_assert_msg(rc == -EINVAL, "\"%s\" accepted", cases[i].in);
            continue;
        }
        ck_assert_msg(rc == 0, "\"%s\" rejected", cases[i].in);
        ck_assert_str_eq(l.address, cases[i].address);
        ck_assert_int_eq(l.port, cases[i].port);
        ck_assert_msg(l.loopback == cases[i].loopback, "loopback of %s", cases[i].in);
        ck_assert_ptr_null(l.tls_cert);
    }
}
END_TEST

/* Runs hd_cli_parse on a NULL-terminated list of arguments after "heraldd". */
#define CLI(cli, err, ...)                                                                         \
    ({                                                                                             \
        char *argv_[] = {"heraldd", __VA_ARGS__, NULL};                                            \
        hd_cli_parse((int)(sizeof(argv_) / sizeof(argv_[0])) - 1, argv_, (cli), (err),             \
                     sizeof(err));                                                                 \
    })

START_TEST(cli_flags)
{
    struct hd_cli cli;
    char err[256];
    char *none[] = {"heraldd", NULL};
    ck_assert_int_eq(hd_cli_parse(1, none, &cli, err, sizeof(err)), 0);
    ck_assert_ptr_null(cli.config_path);
    ck_assert_uint_eq(cli.n_listen, 0);
    ck_assert(!cli.check_config && !cli.version && !cli.help);
    hd_cli_free(&cli);

    ck_assert_int_eq(CLI(&cli, err, "-c", "/etc/h.json", "--listen", "127.0.0.1:0", "--data-dir",
                         "/d", "--store", "sqlite", "--log-level", "debug", "--check-config",
                         "--version", "--help"),
                     0);
    ck_assert_str_eq(cli.config_path, "/etc/h.json");
    ck_assert_uint_eq(cli.n_listen, 1);
    ck_assert_str_eq(cli.listen[0], "127.0.0.1:0");
    ck_assert_str_eq(cli.data_dir, "/d");
    ck_assert_str_eq(cli.store, "sqlite");
    ck_assert_str_eq(cli.log_level, "debug");
    ck_assert(cli.check_config && cli.version && cli.help);
    hd_cli_free(&cli);

    ck_assert_int_eq(CLI(&cli, err, "--config=/x.json", "--listen=[::1]:7070", "--data-dir=/e",
                         "--store=memory", "--log-level=warn"),
                     0);
    ck_assert_str_eq(cli.config_path, "/x.json");
    ck_assert_str_eq(cli.listen[0], "[::1]:7070");
    ck_assert_str_eq(cli.data_dir, "/e");
    ck_assert_str_eq(cli.store, "memory");
    ck_assert_str_eq(cli.log_level, "warn");
    hd_cli_free(&cli);
    ck_assert_int_eq(CLI(&cli, err, "-h"), 0);
    ck_assert(cli.help);
    hd_cli_free(&cli);
    ck_assert_ptr_nonnull(strstr(hd_cli_usage(), "--check-config"));
}
END_TEST

START_TEST(cli_overrides_file)
{
    struct hd_cli cli;
    struct hd_config cfg;
    struct hd_config_error err;
    char msg[256];
    ck_assert_int_eq(CLI(&cli, msg, "--listen", "[::1]:0", "--listen=127.0.0.1:7071", "--data-dir",
                         "/srv/h", "--store", "memory", "--log-level", "error"),
                     0);
    ck_assert_uint_eq(cli.n_listen, 2);
    expect_ok("{\"listen\": [{\"address\": \"0.0.0.0\", \"port\": 1, \"tls\": {\"cert\": "
              "\"c\", \"key\": \"k\"}}], \"history\": {\"store\": \"sqlite\"}, "
              "\"log\": {\"level\": \"debug\"}}",
              &cfg);
    ck_assert_int_eq(hd_config_apply_cli(&cfg, &cli, &err), 0);
    ck_assert_uint_eq(cfg.n_listeners, 2);
    ck_assert_str_eq(cfg.listeners[0].address, "::1");
    ck_assert_uint_eq(cfg.listeners[0].port, 0);
    ck_assert_ptr_null(cfg.listeners[0].tls_cert);
    ck_assert_str_eq(cfg.listeners[1].address, "127.0.0.1");
    ck_assert_uint_eq(cfg.listeners[1].port, 7071);
    ck_assert_str_eq(cfg.data_dir, "/srv/h");
    ck_assert_int_eq(cfg.history.store, HD_STORE_MEMORY);
    ck_assert_int_eq(cfg.log_level, HD_LOG_ERROR);
    /* The file's 0.0.0.0 is gone, so the no-auth loopback rule is satisfied. */
    ck_assert_int_eq(hd_config_validate(&cfg, &err), 0);
    hd_cli_free(&cli);

    /* Without --listen the file's listeners stay. */
    ck_assert_int_eq(CLI(&cli, msg, "--store", "sqlite"), 0);
    ck_assert_int_eq(hd_config_apply_cli(&cfg, &cli, &err), 0);
    ck_assert_uint_eq(cfg.n_listeners, 2);
    ck_assert_int_eq(cfg.history.store, HD_STORE_SQLITE);
    hd_cli_free(&cli);

    /* A hand-built bad value is refused with a message and no file name. */
    char *bad[] = {"nowhere:1"};
    struct hd_cli manual = {.listen = bad, .n_listen = 1};
    ck_assert_int_eq(hd_config_apply_cli(&cfg, &manual, &err), -EINVAL);
    hd_config_error_format(&err, msg, sizeof(msg));
    ck_assert_msg(strstr(msg, "--listen \"nowhere:1\": \"nowhere\" is not") == msg, "%s", msg);
    ck_assert_uint_eq(cfg.n_listeners, 2);
    hd_config_free(&cfg);
}
END_TEST

START_TEST(cli_errors)
{
    static const struct {
        const char *args[3];
        const char *needle;
    } cases[] = {
        {{"--bogus"}, "unknown or ambiguous option \"--bogus\""},
        {{"-x"}, "unknown option -x"},
        {{"--listen"}, "option --listen needs a value"},
        {{"-c"}, "option -c needs a value"},
        {{"--config"}, "option --config needs a value"},
        {{"--store"}, "option --store needs a value"},
        {{"--version=yes"}, "option --version takes no value"},
        {{"--listen", "localhost:7070"},
         "--listen \"localhost:7070\": \"localhost\" is not a "
         "numeric IPv4 address (host names are not accepted)"},
        {{"--listen", "127.0.0.1:65536"}, "port must be a number from 0 to 65535"},
        {{"--listen="}, "--listen \"\": expected ADDR:PORT"},
        {{"--store", "redis"}, "--store must be memory or sqlite (got \"redis\")"},
        {{"--log-level=loud"}, "--log-level must be error, warn, info or debug"},
        {{"--data-dir="}, "--data-dir needs a directory"},
        {{"serve"}, "unexpected argument \"serve\""},
        {{"--check-config", "extra"}, "unexpected argument \"extra\""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *argv[5] = {"heraldd"};
        int argc = 1;
        for (size_t k = 0; k < 3 && cases[i].args[k]; k++)
            argv[argc++] = (char *)cases[i].args[k];
        struct hd_cli cli;
        char err[256] = "";
        ck_assert_msg(hd_cli_parse(argc, argv, &cli, err, sizeof(err)) == -EINVAL, "case %zu", i);
        ck_assert_msg(strstr(err, cases[i].needle) != NULL, "\"%s\" lacks \"%s\"", err,
                      cases[i].needle);
        ck_assert_ptr_null(cli.listen);
        hd_cli_free(&cli);
    }
}
END_TEST

START_TEST(engine_keys)
{
    struct hd_config cfg;
    struct hd_config_error err;
    /* Defaults: local, nothing of NATS set, the contract's stream name. */
    ck_assert_int_eq(hd_config_defaults(&cfg), 0);
    ck_assert_int_eq(cfg.engine.type, HD_ENGINE_LOCAL);
    ck_assert_uint_eq(cfg.engine.servers.n, 0);
    ck_assert_str_eq(cfg.engine.stream, "HERALD");
    ck_assert_str_eq(cfg.engine.subject_prefix, "herald");
    ck_assert_uint_eq(cfg.engine.replicas, 1);
    ck_assert_ptr_null(cfg.engine.node);
    ck_assert_ptr_null(cfg.engine.creds_file);
    ck_assert_ptr_null(cfg.engine.tls_ca);
    hd_config_free(&cfg);

    /* Every key, as CONFIG.md shows them. */
    expect_ok("{\"engine\": {\"type\": \"nats\", \"servers\": [\"nats://10.0.0.5:4222\", "
              "\"tls://nats.example.com\", \"nats://u:p@[::1]:4223\"], \"stream\": \"EV-1\", "
              "\"subject_prefix\": \"acme.herald\", \"replicas\": 3, \"node\": \"web-1\", "
              "\"creds_file\": \"/etc/herald/nats.creds\", "
              "\"tls\": {\"ca\": \"/etc/herald/nats-ca.pem\"}}}",
              &cfg);
    ck_assert_int_eq(cfg.engine.type, HD_ENGINE_NATS);
    ck_assert_uint_eq(cfg.engine.servers.n, 3);
    ck_assert_str_eq(cfg.engine.servers.v[0], "nats://10.0.0.5:4222");
    ck_assert_str_eq(cfg.engine.servers.v[1], "tls://nats.example.com");
    ck_assert_str_eq(cfg.engine.servers.v[2], "nats://u:p@[::1]:4223");
    ck_assert_str_eq(cfg.engine.stream, "EV-1");
    ck_assert_str_eq(cfg.engine.subject_prefix, "acme.herald");
    ck_assert_uint_eq(cfg.engine.replicas, 3);
    ck_assert_str_eq(cfg.engine.node, "web-1");
    ck_assert_str_eq(cfg.engine.creds_file, "/etc/herald/nats.creds");
    ck_assert_str_eq(cfg.engine.tls_ca, "/etc/herald/nats-ca.pem");
    ck_assert_int_eq(hd_config_validate(&cfg, &err), 0);
    hd_config_free(&cfg);

    /* Bad values, each at its position. */
    expect_error("{\"engine\": {\"type\": \"redis\"}}", "\"redis\"",
                 "engine.type: must be \"local\" or \"nats\" (got \"redis\")");
    expect_error("{\"engine\": {\"servers\": [\"nats://a:4222\", \"http://b:4222\"]}}",
                 "\"http://b", "engine.servers[1]: \"http://b:4222\" is not a NATS server URL");
    expect_error("{\"engine\": {\"servers\": [\"nats://a:99999\"]}}", "\"nats://a:9",
                 "is not a NATS server URL");
    expect_error("{\"engine\": {\"servers\": [\"nats://\"]}}", "\"nats://\"",
                 "is not a NATS server URL");
    expect_error("{\"engine\": {\"servers\": [\"nats://a:1/x\"]}}", "\"nats://a:1/x",
                 "is not a NATS server URL");
    expect_error("{\"engine\": {\"servers\": \"nats://a\"}}", "\"nats://a\"",
                 "must be an array of strings");
    expect_error("{\"engine\": {\"stream\": \"HER.ALD\"}}", "\"HER.ALD\"",
                 "engine.stream: may only use A-Z a-z 0-9 and _-");
    expect_error("{\"engine\": {\"subject_prefix\": \"herald.>\"}}", "\"herald.>\"",
                 "is not a subject prefix");
    expect_error("{\"engine\": {\"subject_prefix\": \"a..b\"}}", "\"a..b\"",
                 "is not a subject prefix");
    expect_error("{\"engine\": {\"replicas\": 0}}", "0}", "must be between 1 and 5 (got 0)");
    expect_error("{\"engine\": {\"replicas\": 7}}", "7}", "must be between 1 and 5 (got 7)");
    expect_error("{\"engine\": {\"node\": \"web 1\"}}", "\"web 1\"", "engine.node: may only use");
    expect_error("{\"engine\": {\"tls\": {}}}", "{}}", "missing required key \"ca\"");
    expect_error("{\"engine\": {\"server\": []}}", "\"server\"",
                 "unknown key (did you mean \"servers\"?)");
}
END_TEST

static void expect_invalid(const char *json, const char *needle)
{
    struct hd_config cfg;
    struct hd_config_error err;
    char msg[600];
    expect_ok(json, &cfg);
    ck_assert_int_eq(hd_config_validate(&cfg, &err), -EINVAL);
    hd_config_error_format(&err, msg, sizeof(msg));
    ck_assert_msg(strstr(msg, needle) != NULL, "message \"%s\" lacks \"%s\"", msg, needle);
    hd_config_free(&cfg);
}

/* The README "Cluster" walk-through's node configurations load, validate and say what it says. */
START_TEST(cluster_configs)
{
    static const char *const nodes[] = {"a", "b", "c"};
    for (size_t i = 0; i < 3; i++) {
        struct hd_config cfg;
        struct hd_config_error err;
        char path[512], msg[600];
        snprintf(path, sizeof(path), HD_SOURCE_DIR "/config/cluster/heraldd-%s.json", nodes[i]);
        ck_assert_int_eq(hd_config_defaults(&cfg), 0);
        int rc = hd_config_load_file(&cfg, path, &err);
        hd_config_error_format(&err, msg, sizeof(msg));
        ck_assert_msg(rc == 0, "%s", msg);
        rc = hd_config_validate(&cfg, &err);
        hd_config_error_format(&err, msg, sizeof(msg));
        ck_assert_msg(rc == 0, "%s", msg);
        ck_assert_int_eq(cfg.engine.type, HD_ENGINE_NATS);
        ck_assert_uint_eq(cfg.engine.servers.n, 3);
        ck_assert_uint_eq(cfg.engine.replicas, 3);
        ck_assert_str_eq(cfg.engine.node, nodes[i]);
        ck_assert_uint_eq(cfg.listeners[0].port, 7070 + i);
        hd_config_free(&cfg);
    }
}
END_TEST

START_TEST(engine_validate)
{
    expect_invalid("{\"engine\": {\"type\": \"nats\"}}",
                   "engine.servers: engine type \"nats\" needs at least one server");
    expect_invalid("{\"engine\": {\"type\": \"nats\", \"servers\": []}}",
                   "needs at least one server");
    expect_invalid("{\"engine\": {\"servers\": [\"nats://a:4222\"]}}",
                   "engine.servers: only used with engine type \"nats\"");
}
END_TEST

START_TEST(engine_cli)
{
    struct hd_cli cli;
    struct hd_config cfg;
    struct hd_config_error err;
    char msg[256];

    /* --nats alone: cluster mode with these servers, other keys at their defaults. */
    ck_assert_int_eq(CLI(&cli, msg, "--nats", "nats://127.0.0.1:4222,nats://127.0.0.1:4223"), 0);
    ck_assert_str_eq(cli.nats, "nats://127.0.0.1:4222,nats://127.0.0.1:4223");
    ck_assert_int_eq(hd_config_defaults(&cfg), 0);
    ck_assert_int_eq(hd_config_apply_cli(&cfg, &cli, &err), 0);
    ck_assert_int_eq(cfg.engine.type, HD_ENGINE_NATS);
    ck_assert_uint_eq(cfg.engine.servers.n, 2);
    ck_assert_str_eq(cfg.engine.servers.v[0], "nats://127.0.0.1:4222");
    ck_assert_str_eq(cfg.engine.servers.v[1], "nats://127.0.0.1:4223");
    ck_assert_str_eq(cfg.engine.stream, "HERALD");
    ck_assert_int_eq(hd_config_validate(&cfg, &err), 0);
    hd_config_free(&cfg);
    hd_cli_free(&cli);

    /* Over a file: replaces the servers and sets the type, keeps the file's other keys. */
    ck_assert_int_eq(CLI(&cli, msg, "--nats=tls://n1:4222"), 0);
    expect_ok("{\"engine\": {\"servers\": [\"nats://old:1\", \"nats://old:2\"], "
              "\"type\": \"nats\", \"replicas\": 3, \"stream\": \"S\"}}",
              &cfg);
    ck_assert_int_eq(hd_config_apply_cli(&cfg, &cli, &err), 0);
    ck_assert_uint_eq(cfg.engine.servers.n, 1);
    ck_assert_str_eq(cfg.engine.servers.v[0], "tls://n1:4222");
    ck_assert_uint_eq(cfg.engine.replicas, 3);
    ck_assert_str_eq(cfg.engine.stream, "S");
    hd_config_free(&cfg);
    hd_cli_free(&cli);

    static const struct {
        const char *arg;
        const char *needle;
    } bad[] = {
        {"--nats=", "--nats: expected URL[,URL...] with no empty entries"},
        {"--nats=nats://a:1,,nats://b:2", "no empty entries"},
        {"--nats=nats://a:1,", "no empty entries"},
        {"--nats=127.0.0.1:4222", "--nats: \"127.0.0.1:4222\" is not a NATS server URL"},
        {"--nats", "option --nats needs a value"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *argv[] = {"heraldd", (char *)bad[i].arg, NULL};
        char e[256] = "";
        ck_assert_msg(hd_cli_parse(2, argv, &cli, e, sizeof(e)) == -EINVAL, "case %zu", i);
        ck_assert_msg(strstr(e, bad[i].needle) != NULL, "\"%s\" lacks \"%s\"", e, bad[i].needle);
        hd_cli_free(&cli);
    }
    ck_assert_ptr_nonnull(strstr(hd_cli_usage(), "--nats URL[,URL...]"));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("config");
    tcase_add_test(tc, defaults);
    tcase_add_test(tc, full_file);
    tcase_add_test(tc, shipped_config);
    tcase_add_test(tc, console_switch);
    tcase_add_test(tc, syntax_error);
    tcase_add_test(tc, duplicate_key);
    tcase_add_test(tc, unknown_keys);
    tcase_add_test(tc, wrong_types);
    tcase_add_test(tc, out_of_range);
    tcase_add_test(tc, bad_enums);
    tcase_add_test(tc, bad_listen);
    tcase_add_test(tc, bad_auth);
    tcase_add_test(tc, locator);
    tcase_add_test(tc, burst_default);
    tcase_add_test(tc, validate_loopback);
    tcase_add_test(tc, validate_remote_publish);
    tcase_add_test(tc, validate_misc);
    tcase_add_test(tc, load_file_errors);
    tcase_add_test(tc, partial_free);
    tcase_add_test(tc, error_format);
    tcase_add_test(tc, listener_parse);
    tcase_add_test(tc, cli_flags);
    tcase_add_test(tc, cli_overrides_file);
    tcase_add_test(tc, cli_errors);
    tcase_add_test(tc, engine_keys);
    tcase_add_test(tc, engine_validate);
    tcase_add_test(tc, cluster_configs);
    tcase_add_test(tc, engine_cli);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
