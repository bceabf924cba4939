/* SPDX-License-Identifier: MIT */
/*
 * `herald poll` and `herald status`: the HTTP side of the protocol. poll fetches the events
 * after a cursor (optionally waiting for the first one: a long poll) and prints them like
 * subscribe does; with --state it reads its cursor from the file and stores the server's
 * `next`, so repeated runs continue without loss or repetition. status prints the delivery
 * status of one event as the server's JSON.
 */
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "jsonspan.h"

static void poll_usage(FILE *out)
{
    fprintf(out, "Usage: herald poll [OPTIONS] PATTERN\n\n"
                 "Fetches events matching PATTERN over HTTP and prints them one per line.\n\n"
                 "Options:\n"
                 "  -s, --since ID|all|latest  start after event ID (default: all)\n"
                 "  -w, --wait S      wait up to S seconds (0-60) for a first event (long poll)\n"
                 "  -l, --limit N     at most N events (1-1000, default: the server's 100)\n"
                 "  -f, --format F    json (default) or text\n"
                 "      --raw         print the server's answer as is (events, next, gap)\n"
                 "      --state FILE  take the cursor from FILE and store the next one "
                 "there\n" CLI_GLOBAL_HELP);
}

static void status_usage(FILE *out)
{
    fprintf(out, "Usage: herald status [OPTIONS] ID\n\n"
                 "Prints the delivery status of event ID as JSON: the event, and how many\n"
                 "subscriptions it was queued to, written to and dropped from.\n\n"
                 "Options:\n" CLI_GLOBAL_HELP);
}

/* Prints each element of the answer's "events" array exactly as the server wrote it. */
static int print_events(const char *body, size_t len, enum cli_format fmt)
{
    size_t off, alen, pos = 0, eo, el;
    if (herald__json_member_span(body, len, "events", &off, &alen) < 0) {
        fprintf(stderr, "herald: the server's answer has no events\n");
        return EXIT_CONNECT;
    }
    while (herald__json_array_next(body + off, alen, &pos, &eo, &el) == 0)
        if (cli_print_event(stdout, fmt, body + off + eo, el) < 0)
            return EXIT_CONNECT;
    return fflush(stdout) == 0 ? EXIT_OK : EXIT_CONNECT;
}

int cmd_poll(struct cli *cli, int argc, char **argv)
{
    enum { OPT_RAW = OPT_FIRST_LOCAL, OPT_STATE };
    static const struct option longopts[] = {
        CLI_GLOBAL_LONGOPTS,
        {"since", required_argument, NULL, 's'},
        {"wait", required_argument, NULL, 'w'},
        {"limit", required_argument, NULL, 'l'},
        {"format", required_argument, NULL, 'f'},
        {"raw", no_argument, NULL, OPT_RAW},
        {"state", required_argument, NULL, OPT_STATE},
        {NULL, 0, NULL, 0},
    };
    const char *since = NULL, *state = NULL;
    unsigned long wait_s = 0, limit = 0;
    enum cli_format fmt = FORMAT_JSON;
    bool raw = false;
    int opt;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":s:w:l:f:qh", longopts, NULL)) != -1) {
        int g = cli_global_option(cli, "poll", opt, optarg);
        if (g < 0)
            return EXIT_USAGE;
        if (g > 0)
            continue;
        switch (opt) {
        case 's':
            if (!*optarg || strlen(optarg) > HERALD_ID_MAX)
                return cli_usage_error("poll", "--since needs an id, all or latest");
            since = optarg;
            break;
        case 'w':
            if (cli_parse_uint(optarg, 0, 60, &wait_s) < 0)
                return cli_usage_error("poll", "--wait needs seconds between 0 and 60");
            break;
        case 'l':
            if (cli_parse_uint(optarg, 1, 1000, &limit) < 0)
                return cli_usage_error("poll", "--limit needs a number between 1 and 1000");
            break;
        case 'f':
            if (cli_parse_format(optarg, &fmt) < 0)
                return cli_usage_error("poll", "--format is json or text");
            break;
        case OPT_RAW:
            raw = true;
            break;
        case OPT_STATE:
            state = optarg;
            break;
        case 'h':
            poll_usage(stdout);
            return EXIT_OK;
        case ':':
            return cli_usage_error("poll", "option '%s' needs a value", argv[optind - 1]);
        default:
            return cli_usage_error("poll", "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (argc - optind != 1)
        return cli_usage_error("poll",
                               argc - optind < 1 ? "missing PATTERN" : "give exactly one PATTERN");
    const char *pattern = argv[optind];
    json_t *cursors = NULL;
    if (state) {
        cursors = cli_state_load(state);
        if (!cursors)
            return EXIT_USAGE;
        const char *saved = json_string_value(json_object_get(cursors, pattern));
        if (saved && *saved)
            since = saved;
    }
    herald_options *o = cli_lib_options(cli);
    if (!o) {
        json_decref(cursors);
        return EXIT_USAGE;
    }
    herald_error e = {0};
    char *body = NULL;
    int rc;
    cli_exit_on_signals();
    rc = herald_poll(cli->url, o, pattern, since, (unsigned)limit, (unsigned)wait_s, &body, &e);
    herald_options_free(o);
    if (rc != 0) {
        json_decref(cursors);
        return e.status == HERALD_E_SERVER || e.status == HERALD_E_AUTH ? cli_fail(&e)
                                                                        : cli_fail_connect(&e);
    }
    size_t len = strlen(body);
    json_t *answer = json_loadb(body, len, 0, NULL);
    if (json_is_true(json_object_get(answer, "gap")))
        fprintf(stderr,
                "herald: warning: events matching \"%s\" may have been missed (the "
                "server no longer has the position \"%s\")\n",
                pattern, since ? since : "all");
    if (raw) {
        printf("%s\n", body);
        rc = fflush(stdout) == 0 ? EXIT_OK : EXIT_CONNECT;
    } else {
        rc = print_events(body, len, fmt);
    }
    const char *next = json_string_value(json_object_get(answer, "next"));
    if (rc == EXIT_OK && state && next && *next) {
        json_object_set_new(cursors, pattern, json_string(next));
        if (cli_state_save(state, cursors, NULL) < 0)
            rc = EXIT_USAGE;
    }
    json_decref(answer);
    json_decref(cursors);
    herald_free(body);
    return rc;
}

int cmd_status(struct cli *cli, int argc, char **argv)
{
    static const struct option longopts[] = {CLI_GLOBAL_LONGOPTS, {NULL, 0, NULL, 0}};
    int opt;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":qh", longopts, NULL)) != -1) {
        int g = cli_global_option(cli, "status", opt, optarg);
        if (g < 0)
            return EXIT_USAGE;
        if (g > 0)
            continue;
        switch (opt) {
        case 'h':
            status_usage(stdout);
            return EXIT_OK;
        case ':':
            return cli_usage_error("status", "option '%s' needs a value", argv[optind - 1]);
        default:
            return cli_usage_error("status", "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (argc - optind != 1)
        return cli_usage_error("status", argc - optind < 1 ? "missing ID" : "give exactly one ID");
    herald_options *o = cli_lib_options(cli);
    if (!o)
        return EXIT_USAGE;
    herald_error e = {0};
    char *body = NULL;
    cli_exit_on_signals();
    int r = herald_event_status(cli->url, o, argv[optind], &body, &e);
    herald_options_free(o);
    if (r != 0)
        return e.status == HERALD_E_SERVER || e.status == HERALD_E_AUTH ? cli_fail(&e)
                                                                        : cli_fail_connect(&e);
    printf("%s\n", body);
    herald_free(body);
    return fflush(stdout) == 0 ? EXIT_OK : EXIT_CONNECT;
}
