/* SPDX-License-Identifier: MIT */
/*
 * `herald subscribe`: subscribes to one or more patterns and prints every event as one line
 * (the event's JSON by default, so the output pipes into jq). It keeps running across broker
 * restarts: the library reconnects and resumes each pattern from the last event printed.
 * With --state FILE the per-pattern cursors are saved whenever output has caught up (after
 * stdout is flushed, so the file never claims more than was written) and on exit, and the
 * next run resumes from them.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#define MAX_PATTERNS 1000
/* How often the loop looks at the stop flag while waiting for events. */
#define TICK_MS 250

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static void usage(FILE *out)
{
    fprintf(out, "Usage: herald subscribe [OPTIONS] PATTERN...\n\n"
                 "Prints events published to topics matching PATTERN (`*` matches one segment,\n"
                 "a final `>` the rest), one per line, until interrupted. Reconnects and resumes\n"
                 "by itself when the connection drops.\n\n"
                 "Options:\n"
                 "  -s, --since ID|all|latest  start after event ID, with everything retained\n"
                 "                    (all), or with new events only (latest, the default)\n"
                 "  -n, --count N     exit after N events\n"
                 "  -f, --format F    json (default: the event object) or text (TOPIC KIND DATA)\n"
                 "      --state FILE  resume from FILE and keep it up to date\n" CLI_GLOBAL_HELP);
}

struct sub_run {
    struct cli *cli;
    herald_client *c;
    char **patterns;
    int n_patterns;
    const char *state_path;
    json_t *cursors; /* from the state file, updated before each save */
    char last[HERALD_ID_SIZE];
    bool dirty;
    bool output_failed; /* stdout refused an event: the state must not claim it */
};

static int save_state(struct sub_run *s)
{
    if (!s->state_path || !s->dirty)
        return 0;
    for (int i = 0; i < s->n_patterns; i++) {
        char cur[HERALD_ID_SIZE];
        if (herald_subscription_cursor(s->c, s->patterns[i], cur) == 0 && cur[0])
            json_object_set_new(s->cursors, s->patterns[i], json_string(cur));
    }
    if (cli_state_save(s->state_path, s->cursors, s->last) < 0)
        return -1;
    s->dirty = false;
    return 0;
}

/* Returns -1 to keep going, else the exit code. */
static int handle(struct sub_run *s, const herald_event *ev, enum cli_format fmt,
                  unsigned long *printed, unsigned long count, bool *was_down)
{
    switch (ev->type) {
    case HERALD_EV_EVENT:
        if (cli_print_event(stdout, fmt, ev->json, ev->json_len) < 0) {
            s->output_failed = true;
            return errno == EPIPE ? EXIT_OK : EXIT_CONNECT; /* the reader went away */
        }
        snprintf(s->last, sizeof(s->last), "%s", ev->id);
        s->dirty = true;
        if (count && ++*printed >= count)
            return EXIT_OK;
        return -1;
    case HERALD_EV_GAP:
        fprintf(stderr, "herald: warning: %s\n", ev->error.message);
        return -1;
    case HERALD_EV_DISCONNECTED:
        *was_down = true;
        cli_notice(s->cli, "%s; reconnecting in %.1f s", ev->error.message, ev->retry_ms / 1000.0);
        return -1;
    case HERALD_EV_CONNECTED:
        if (*was_down) /* the library says which server: with a list it may be another */
            cli_notice(s->cli, "re%s", ev->error.message);
        *was_down = false;
        return -1;
    case HERALD_EV_ERROR:
        if (ev->fatal)
            return cli_fail(&ev->error);
        if (ev->pattern) {
            fprintf(stderr, "herald: subscription \"%s\" dropped: %s\n", ev->pattern,
                    ev->error.message);
            for (int i = 0; i < s->n_patterns; i++) {
                char cur[HERALD_ID_SIZE];
                if (herald_subscription_cursor(s->c, s->patterns[i], cur) == 0)
                    return -1;
            }
            return EXIT_REJECTED; /* nothing left to listen to */
        }
        fprintf(stderr, "herald: %s\n", ev->error.message);
        return -1;
    }
    return -1;
}

/* True when stdout is a pipe whose reader went away (`herald subscribe ... | head -1`):
 * without this the next write would only tell us when the next event comes. */
static bool reader_gone(void)
{
    struct pollfd p = {.fd = fileno(stdout), .events = 0};
    return poll(&p, 1, 0) == 1 && (p.revents & (POLLERR | POLLHUP));
}

static int run(struct sub_run *s, enum cli_format fmt, unsigned long count)
{
    unsigned long printed = 0;
    bool was_down = false;
    int rc = -1;
    while (rc < 0 && !g_stop) {
        herald_event *ev = NULL;
        int r = herald_next_event(s->c, &ev, 0);
        if (r == HERALD_E_TIMEOUT) {
            /* Caught up: make the output visible, then record how far it got. */
            if (fflush(stdout) != 0) {
                s->output_failed = true;
                return errno == EPIPE ? EXIT_OK : EXIT_CONNECT;
            }
            if (save_state(s) < 0)
                return EXIT_USAGE;
            r = herald_next_event(s->c, &ev, TICK_MS);
            if (r == HERALD_E_TIMEOUT) {
                if (reader_gone())
                    return EXIT_OK;
                continue;
            }
        }
        if (r == HERALD_E_CLOSED)
            return EXIT_CONNECT;
        if (r)
            continue;
        rc = handle(s, ev, fmt, &printed, count, &was_down);
        herald_event_free(ev);
    }
    return rc < 0 ? EXIT_OK : rc;
}

int cmd_subscribe(struct cli *cli, int argc, char **argv)
{
    enum { OPT_STATE = OPT_FIRST_LOCAL };
    static const struct option longopts[] = {
        CLI_GLOBAL_LONGOPTS,
        {"since", required_argument, NULL, 's'},
        {"count", required_argument, NULL, 'n'},
        {"format", required_argument, NULL, 'f'},
        {"state", required_argument, NULL, OPT_STATE},
        {NULL, 0, NULL, 0},
    };
    const char *since = NULL;
    unsigned long count = 0;
    enum cli_format fmt = FORMAT_JSON;
    struct sub_run s = {.cli = cli};
    int opt;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":s:n:f:qh", longopts, NULL)) != -1) {
        int g = cli_global_option(cli, "subscribe", opt, optarg);
        if (g < 0)
            return EXIT_USAGE;
        if (g > 0)
            continue;
        switch (opt) {
        case 's':
            if (!*optarg || strlen(optarg) > HERALD_ID_MAX)
                return cli_usage_error("subscribe", "--since needs an id, all or latest");
            since = optarg;
            break;
        case 'n':
            if (cli_parse_uint(optarg, 1, 1000000000UL, &count) < 0)
                return cli_usage_error("subscribe", "--count needs a positive number");
            break;
        case 'f':
            if (cli_parse_format(optarg, &fmt) < 0)
                return cli_usage_error("subscribe", "--format is json or text");
            break;
        case OPT_STATE:
            s.state_path = optarg;
            break;
        case 'h':
            usage(stdout);
            return EXIT_OK;
        case ':':
            return cli_usage_error("subscribe", "option '%s' needs a value", argv[optind - 1]);
        default:
            return cli_usage_error("subscribe", "unknown option '%s'", argv[optind - 1]);
        }
    }
    s.n_patterns = argc - optind;
    s.patterns = argv + optind;
    if (s.n_patterns < 1)
        return cli_usage_error("subscribe", "missing PATTERN");
    if (s.n_patterns > MAX_PATTERNS)
        return cli_usage_error("subscribe", "at most %d patterns", MAX_PATTERNS);
    if (s.state_path) {
        s.cursors = cli_state_load(s.state_path);
        if (!s.cursors)
            return EXIT_USAGE;
    }

    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    herald_options *o = cli_lib_options(cli);
    if (!o) {
        json_decref(s.cursors);
        return EXIT_USAGE;
    }
    herald_error e = {0};
    s.c = herald_connect(cli->url, o, &e);
    herald_options_free(o);
    if (!s.c) {
        json_decref(s.cursors);
        return cli_fail_connect(&e);
    }
    int rc = EXIT_OK;
    for (int i = 0; i < s.n_patterns && rc == EXIT_OK; i++) {
        const char *from = since;
        const char *saved = json_string_value(json_object_get(s.cursors, s.patterns[i]));
        if (saved && *saved)
            from = saved; /* the state file wins: it is where the last run stopped */
        herald_sub_info info;
        if (herald_subscribe(s.c, s.patterns[i], from, cli->timeout_ms, &info, &e) != 0)
            rc = cli_fail(&e);
    }
    if (rc == EXIT_OK)
        rc = run(&s, fmt, count);
    /* The state moves only past what reached stdout: after a failed write it keeps what the
     * last successful flush recorded. */
    if (fflush(stdout) != 0)
        s.output_failed = true;
    if (s.output_failed)
        s.dirty = false;
    else
        s.dirty = s.dirty || (s.state_path && rc == EXIT_OK);
    if (save_state(&s) < 0 && rc == EXIT_OK)
        rc = EXIT_USAGE;
    herald_close(s.c);
    json_decref(s.cursors);
    return rc;
}
