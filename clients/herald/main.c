/* SPDX-License-Identifier: MIT */
/*
 * herald: the command-line client of the Herald broker, in the style of git and ntfy: one
 * binary, a subcommand per task (publish, subscribe, poll, status). This file reads the
 * global options and the environment ($HERALD_URL, $HERALD_TOKEN) and dispatches; each
 * subcommand lives in its own file. Exit codes: 0 ok, 1 usage, 2 connection, 3 refused, 128+signal
 * interrupted.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const struct {
    const char *name;
    int (*run)(struct cli *cli, int argc, char **argv);
    const char *summary;
} commands[] = {
    {.name = "publish", .run = cmd_publish, .summary = "publish an event, print its id"},
    {.name = "subscribe", .run = cmd_subscribe, .summary = "print events as they arrive"},
    {.name = "poll", .run = cmd_poll, .summary = "fetch events over HTTP (short or long poll)"},
    {.name = "status", .run = cmd_status, .summary = "show the delivery status of an event"},
};

static void usage(FILE *out)
{
    fprintf(out, "Usage: herald [OPTIONS] COMMAND [ARGS]...\n\n"
                 "Publish to and subscribe from a Herald push broker.\n\nCommands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(out, "  %-10s  %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\nOptions (also accepted after the command):\n" CLI_GLOBAL_HELP
                 "  --version       print the version\n\n"
                 "Exit status: 0 ok, 1 usage error or bad input, 2 connection failed, 3 refused\n"
                 "(by the server, or too large to send), 130 interrupted (poll, status).\nRun "
                 "'herald COMMAND --help' for a command's options.\n");
}

int main(int argc, char **argv)
{
    /* Writes to a closed pipe (herald subscribe | head) end in EPIPE, handled, not death. */
    signal(SIGPIPE, SIG_IGN);
    struct cli cli = {
        .url = getenv("HERALD_URL"),
        .token = getenv("HERALD_TOKEN"),
        .timeout_ms = 10000,
    };
    if (!cli.url || !*cli.url)
        cli.url = DEFAULT_URL;

    enum { OPT_VERSION = OPT_FIRST_LOCAL };
    static const struct option longopts[] = {
        CLI_GLOBAL_LONGOPTS,
        {"version", no_argument, NULL, OPT_VERSION},
        {NULL, 0, NULL, 0},
    };
    int opt;
    opterr = 0;
    /* "+": stop at the command name; the command parses the rest. */
    while ((opt = getopt_long(argc, argv, "+:qh", longopts, NULL)) != -1) {
        int g = cli_global_option(&cli, NULL, opt, optarg);
        if (g < 0)
            return EXIT_USAGE;
        if (g > 0)
            continue;
        switch (opt) {
        case 'h':
            usage(stdout);
            return EXIT_OK;
        case OPT_VERSION:
            printf("herald %s (libherald %s)\n", HERALD_VERSION_STRING, herald_version());
            return EXIT_OK;
        case ':':
            return cli_usage_error(NULL, "option '%s' needs a value", argv[optind - 1]);
        default:
            return cli_usage_error(NULL, "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return EXIT_USAGE;
    }
    const char *name = argv[optind];
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(name, commands[i].name) == 0) {
            optind++;
            /* The command sees argv[0] = its name, then its own arguments. */
            int sub_argc = argc - optind + 1;
            char **sub_argv = argv + optind - 1;
            optind = 0; /* glibc: 0 re-initializes getopt for the next scan */
            return commands[i].run(&cli, sub_argc, sub_argv);
        }
    }
    return cli_usage_error(NULL, "unknown command '%s'", name);
}
