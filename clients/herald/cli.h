/* SPDX-License-Identifier: MIT */
/*
 * The herald command line: shared options, exit codes, output and state-file helpers used
 * by the subcommands (cmd_*.c). stdout carries only data (ids, events, JSON answers); every
 * human message goes to stderr as one line starting with "herald".
 */
#ifndef HERALD_CLI_H
#define HERALD_CLI_H

#include <getopt.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>

#include "herald.h"

enum {
    EXIT_OK = 0,
    EXIT_USAGE = 1,    /* bad options or input */
    EXIT_CONNECT = 2,  /* bad URL, connection refused or lost, timeout */
    EXIT_REJECTED = 3, /* the server refused: its code and message are on stderr */
    /* Interrupted by SIGINT or SIGTERM before the answer came (poll, status): 128 + the
     * signal's number, as a shell reports a command killed by it (130 for SIGINT). */
    EXIT_SIGNAL_BASE = 128
};

/* For one-shot commands (poll, status): SIGINT and SIGTERM end the process at once with
 * EXIT_SIGNAL_BASE + the signal, saving nothing (there is nothing half-done to keep). */
void cli_exit_on_signals(void);

#define DEFAULT_URL "ws://127.0.0.1:7070"

struct cli {
    const char *url, *token, *cacert;
    bool insecure, quiet;
    int timeout_ms;
};

/* Long options every subcommand accepts, handled by cli_global_option. */
enum {
    OPT_URL = 1000,
    OPT_TOKEN,
    OPT_CACERT,
    OPT_INSECURE,
    OPT_TIMEOUT,
    OPT_HELP,
    OPT_FIRST_LOCAL /* subcommands number their own options from here */
};
#define CLI_GLOBAL_LONGOPTS                                                                        \
    {"url", required_argument, NULL, OPT_URL}, {"token", required_argument, NULL, OPT_TOKEN},      \
        {"cacert", required_argument, NULL, OPT_CACERT},                                           \
        {"insecure", no_argument, NULL, OPT_INSECURE},                                             \
        {"timeout", required_argument, NULL, OPT_TIMEOUT}, {"quiet", no_argument, NULL, 'q'},      \
    {                                                                                              \
        "help", no_argument, NULL, 'h'                                                             \
    }
#define CLI_GLOBAL_HELP                                                                            \
    "  --url URL       server (default $HERALD_URL, else " DEFAULT_URL "); HOST:PORT\n"            \
    "                  without a scheme means ws://HOST:PORT\n"                                    \
    "  --token TOKEN   bearer token (default $HERALD_TOKEN)\n"                                     \
    "  --cacert FILE   trust the CAs in FILE for wss:// and https://\n"                            \
    "  --insecure      do not check the server's certificate (testing only)\n"                     \
    "  --timeout MS    connect and answer timeout in milliseconds (default 10000)\n"               \
    "  -q, --quiet     no notices on stderr (errors are still printed)\n"                          \
    "  -h, --help      this help\n"

/*
 * Handles a global option: returns 1 when `opt` was one (and applied), 0 when it is not a
 * global option, or -1 after printing a usage error.
 */
int cli_global_option(struct cli *cli, const char *cmd, int opt, const char *arg);

/* Library options from the command line (free with herald_options_free), or NULL after
 * printing why (a bad token: a usage error). */
herald_options *cli_lib_options(const struct cli *cli);

/* Maps a library error to an exit code. */
int cli_exit_code(const herald_error *e);

/* Prints the error as one line on stderr and returns its exit code. */
int cli_fail(const herald_error *e);

/* cli_fail for herald_connect(): a bad URL or token is a usage error (1), a refusal 3,
 * anything else a connection failure (2). */
int cli_fail_connect(const herald_error *e);

/* Prints "herald CMD: <message>" and a hint to stderr; returns EXIT_USAGE. */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prints a notice on stderr unless --quiet. */
void cli_notice(const struct cli *cli, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Parses a non-negative integer option in [min, max]; returns 0 or -1. */
int cli_parse_uint(const char *s, unsigned long min, unsigned long max, unsigned long *out);

enum cli_format { FORMAT_JSON, FORMAT_TEXT };

/* Parses --format; returns 0 or -1. */
int cli_parse_format(const char *s, enum cli_format *out);

/*
 * Prints one event (its JSON object text, `len` bytes) to `out` as a line: the object itself
 * for FORMAT_JSON; "TOPIC KIND DATA" for FORMAT_TEXT, where string data is printed as text
 * with newlines escaped and other data as compact JSON. Returns 0, or -1 on a write error.
 */
int cli_print_event(FILE *out, enum cli_format fmt, const char *json, size_t len);

/*
 * The state file: {"cursors":{"<pattern>":"<cursor>",...},"last":"<id>"}. Load returns the
 * cursors object (new reference; empty when the file does not exist) or NULL after printing
 * why. Save replaces the file atomically (write, fsync, rename) and returns 0 or -1.
 */
json_t *cli_state_load(const char *path);
int cli_state_save(const char *path, json_t *cursors, const char *last);

/* Reads all of `f` (at most `max` bytes) into a malloc'd NUL-terminated string. */
char *cli_read_all(FILE *f, size_t max, size_t *len);

int cmd_publish(struct cli *cli, int argc, char **argv);
int cmd_subscribe(struct cli *cli, int argc, char **argv);
int cmd_poll(struct cli *cli, int argc, char **argv);
int cmd_status(struct cli *cli, int argc, char **argv);

#endif
