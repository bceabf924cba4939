/* SPDX-License-Identifier: MIT */
/*
 * The command line (getopt_long), its overrides of the file, the checks across keys done
 * last, and the one-line form of a configuration error.
 */
#include "config_int.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- command line ----------------------------------------------------------------------- */

enum { OPT_LISTEN = 256, OPT_DATA_DIR, OPT_STORE, OPT_LOG_LEVEL, OPT_CHECK, OPT_VERSION, OPT_HELP };

static const struct option long_opts[] = {
    {.name = "config", .has_arg = required_argument, .val = 'c'},
    {.name = "listen", .has_arg = required_argument, .val = OPT_LISTEN},
    {.name = "data-dir", .has_arg = required_argument, .val = OPT_DATA_DIR},
    {.name = "store", .has_arg = required_argument, .val = OPT_STORE},
    {.name = "log-level", .has_arg = required_argument, .val = OPT_LOG_LEVEL},
    {.name = "check-config", .has_arg = no_argument, .val = OPT_CHECK},
    {.name = "version", .has_arg = no_argument, .val = OPT_VERSION},
    {.name = "help", .has_arg = no_argument, .val = OPT_HELP},
    {0},
};

const char *hd_cli_usage(void)
{
    return "Usage: heraldd [-c FILE | --config FILE] [--listen ADDR:PORT]... [--data-dir DIR]\n"
           "               [--store memory|sqlite] [--log-level error|warn|info|debug]\n"
           "               [--check-config] [--version] [--help]\n"
           "\n"
           "  -c, --config FILE    JSON configuration file (example: config/heraldd.json)\n"
           "  --listen ADDR:PORT   listen here instead of the file's listeners; repeatable.\n"
           "                       127.0.0.1:7070, 0.0.0.0:7070, [::1]:7070; port 0 picks one\n"
           "  --data-dir DIR       directory of the sqlite history file (default: .)\n"
           "  --store KIND         history store: memory (default) or sqlite\n"
           "  --log-level LEVEL    error, warn, info (default) or debug\n"
           "  --check-config       check the configuration, print what is wrong, exit 0 or 1\n"
           "  --version            print the version and exit\n"
           "  -h, --help           print this help and exit\n"
           "\n"
           "Without options heraldd listens on 127.0.0.1:7070, keeps history in memory and lets\n"
           "local clients publish and subscribe without credentials.\n";
}

static const char *long_name(int val)
{
    for (const struct option *o = long_opts; o->name; o++)
        if (o->val == val)
            return o->name;
    return "?";
}

__attribute__((format(printf, 4, 5))) static int usage_error(struct hd_cli *cli, char *err,
                                                             size_t errlen, const char *fmt, ...)
{
    va_list ap;
    if (err && errlen) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
        hd__cfg_scrub(err);
    }
    hd_cli_free(cli);
    return -EINVAL;
}

int hd_cli_parse(int argc, char **argv, struct hd_cli *cli, char *err, size_t errlen)
{
    char why[160];
    struct hd_listener tmp;
    int ch, x = 0;
    memset(cli, 0, sizeof(*cli));
    if (err && errlen)
        err[0] = '\0';
    if (argc > 1 && !(cli->listen = calloc((size_t)argc, sizeof(char *))))
        return -ENOMEM;
    optind = 0; /* glibc: reinitialise, so the parser can run more than once (tests, reload) */
    opterr = 0;
    /* '+': stop at the first non-option instead of permuting argv; ':': report missing values */
    while ((ch = getopt_long(argc, argv, "+:c:h", long_opts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            cli->config_path = optarg;
            break;
        case OPT_LISTEN:
            if (hd__cfg_listener_parse(optarg, &tmp, why, sizeof(why)) < 0)
                return usage_error(cli, err, errlen, "--listen \"%.60s\": %s", optarg, why);
            if (cli->n_listen == MAX_LISTENERS)
                return usage_error(cli, err, errlen, "at most %d --listen options", MAX_LISTENERS);
            cli->listen[cli->n_listen++] = optarg;
            break;
        case OPT_DATA_DIR:
            if (!optarg[0])
                return usage_error(cli, err, errlen, "--data-dir needs a directory, not \"\"");
            cli->data_dir = optarg;
            break;
        case OPT_STORE:
            if (hd__cfg_parse_store(optarg, &x) < 0)
                return usage_error(cli, err, errlen,
                                   "--store must be memory or sqlite (got "
                                   "\"%.40s\")",
                                   optarg);
            cli->store = optarg;
            break;
        case OPT_LOG_LEVEL:
            if (hd__cfg_parse_log_level(optarg, &x) < 0)
                return usage_error(cli, err, errlen,
                                   "--log-level must be error, warn, info or "
                                   "debug (got \"%.40s\")",
                                   optarg);
            cli->log_level = optarg;
            break;
        case OPT_CHECK:
            cli->check_config = true;
            break;
        case OPT_VERSION:
            cli->version = true;
            break;
        case 'h':
        case OPT_HELP:
            cli->help = true;
            break;
        case ':':
            /* glibc has moved optind past the option, so this is what the user typed. */
            return usage_error(cli, err, errlen, "option %.40s needs a value", argv[optind - 1]);
        default:
            if (optopt >= OPT_LISTEN)
                return usage_error(cli, err, errlen, "option --%s takes no value",
                                   long_name(optopt));
            if (optopt)
                return usage_error(cli, err, errlen, "unknown option -%c",
                                   optopt > 32 && optopt < 127 ? optopt : '?');
            return usage_error(cli, err, errlen, "unknown or ambiguous option \"%.60s\"",
                               argv[optind - 1]);
        }
    }
    if (optind < argc)
        return usage_error(cli, err, errlen,
                           "unexpected argument \"%.60s\": heraldd takes only options",
                           argv[optind]);
    return 0;
}

void hd_cli_free(struct hd_cli *cli)
{
    if (!cli)
        return;
    free(cli->listen);
    memset(cli, 0, sizeof(*cli));
}

__attribute__((format(printf, 2, 3))) static int invalid(struct hd_config_error *err,
                                                         const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->text, sizeof(err->text), fmt, ap);
    va_end(ap);
    hd__cfg_scrub(err->text);
    err->line = err->column = 0;
    hd__cfg_report(err);
    return -EINVAL;
}

int hd_config_apply_cli(struct hd_config *cfg, const struct hd_cli *cli,
                        struct hd_config_error *err)
{
    struct hd_config_error scratch;
    char why[160];
    int x = 0; /* set by the parsers; gcc cannot see through hd_log_level_parse */
    if (!err)
        err = &scratch;
    memset(err, 0, sizeof(*err));
    if (cli->n_listen > MAX_LISTENERS)
        return invalid(err, "at most %d --listen options", MAX_LISTENERS);
    if (cli->n_listen > 0) {
        struct hd_listener *l = calloc(cli->n_listen, sizeof(*l));
        if (!l)
            return -ENOMEM;
        for (size_t i = 0; i < cli->n_listen; i++) {
            if (hd__cfg_listener_parse(cli->listen[i], &l[i], why, sizeof(why)) < 0) {
                free(l);
                return invalid(err, "--listen \"%.60s\": %s", cli->listen[i], why);
            }
        }
        const struct table one = {.rows = hd__cfg_find_row(&hd__cfg_root_table, "listen"), .n = 1};
        hd__cfg_free_table(&one, cfg);
        cfg->listeners = l;
        cfg->n_listeners = cli->n_listen;
    }
    if (cli->data_dir) {
        if (!cli->data_dir[0])
            return invalid(err, "--data-dir needs a directory, not \"\"");
        char *d = strdup(cli->data_dir);
        if (!d)
            return -ENOMEM;
        free(cfg->data_dir);
        cfg->data_dir = d;
    }
    if (cli->store) {
        if (hd__cfg_parse_store(cli->store, &x) < 0)
            return invalid(err, "--store must be memory or sqlite (got \"%.40s\")", cli->store);
        cfg->history.store = (enum hd_store_kind)x;
    }
    if (cli->log_level) {
        if (hd__cfg_parse_log_level(cli->log_level, &x) < 0)
            return invalid(err, "--log-level must be error, warn, info or debug (got \"%.40s\")",
                           cli->log_level);
        cfg->log_level = (enum hd_log_level)x;
    }
    return 0;
}

/* ---- cross-field checks ----------------------------------------------------------------- */

int hd_config_validate(const struct hd_config *cfg, struct hd_config_error *err)
{
    struct hd_config_error scratch;
    if (!err)
        err = &scratch;
    memset(err, 0, sizeof(*err));
    snprintf(err->file, sizeof(err->file), "%s", cfg->path ? cfg->path : "");
    int rc = 0;
/* With a reporter every failed check is reported; without, the first one returns. */
#define CHECK_FAILED(call)                                                                         \
    do {                                                                                           \
        rc = (call);                                                                               \
        if (!hd__cfg_reporting())                                                                  \
            return rc;                                                                             \
    } while (0)
    if (cfg->n_listeners == 0)
        CHECK_FAILED(invalid(err, "listen: no listener; give one in \"listen\" or with --listen"));
    for (size_t i = 0; i < cfg->n_listeners; i++) {
        const struct hd_listener *l = &cfg->listeners[i];
        if (!l->tls_cert != !l->tls_key)
            CHECK_FAILED(invalid(err, "listen[%zu].tls: cert and key must both be given", i));
        if (!cfg->auth.present && !l->loopback)
            CHECK_FAILED(invalid(err,
                                 "listen[%zu]: %s is not loopback; without an \"auth\" "
                                 "section heraldd only listens on loopback; add an auth section",
                                 i, l->address));
        for (size_t j = 0; j < i; j++)
            if (l->port != 0 && l->port == cfg->listeners[j].port &&
                strcmp(l->address, cfg->listeners[j].address) == 0)
                CHECK_FAILED(
                    invalid(err, "listen[%zu]: same address and port as listen[%zu]", i, j));
    }
    if (cfg->auth.present && cfg->auth.anonymous.publish.n > 0 &&
        !cfg->auth.anonymous.allow_remote_publish) {
        for (size_t i = 0; i < cfg->n_listeners; i++)
            if (!cfg->listeners[i].loopback)
                CHECK_FAILED(invalid(err,
                                     "auth.anonymous.publish: anyone reaching listen[%zu] (%s, "
                                     "not loopback) could publish without credentials; set "
                                     "auth.anonymous.allow_remote_publish to true to allow it",
                                     i, cfg->listeners[i].address));
    }
    if (cfg->history.store == HD_STORE_SQLITE && (!cfg->data_dir || !cfg->data_dir[0]))
        CHECK_FAILED(invalid(err, "data_dir: the sqlite store needs a data directory"));
    if (cfg->limits.max_queue_bytes < cfg->limits.max_event_bytes)
        CHECK_FAILED(invalid(err,
                             "limits.max_queue_bytes (%llu) is smaller than "
                             "limits.max_event_bytes (%u): one event would overflow a queue",
                             (unsigned long long)cfg->limits.max_queue_bytes,
                             cfg->limits.max_event_bytes));
#undef CHECK_FAILED
    return rc;
}

void hd_config_error_format(const struct hd_config_error *err, char *out, size_t cap)
{
    if (!err->file[0])
        snprintf(out, cap, "%s", err->text);
    else if (err->line > 0)
        snprintf(out, cap, "%s:%d:%d: %s", err->file, err->line, err->column, err->text);
    else
        snprintf(out, cap, "%s: %s", err->file, err->text);
}
