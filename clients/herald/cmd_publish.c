/* SPDX-License-Identifier: MIT */
/*
 * `herald publish`: publishes one event (DATA, or standard input with `-`), or one event per
 * line of standard input with --lines, and prints each event's id on its own line. Lines are
 * pipelined through the asynchronous API (a window of requests in flight), and ids are
 * printed in input order; a line the server refuses is reported on stderr with its number
 * and the others still go out.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#define INPUT_MAX (16u << 20)
#define WINDOW 64

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: herald publish [OPTIONS] TOPIC [DATA|-]\n"
            "       herald publish [OPTIONS] --batch FILE|-\n\n"
            "Publishes DATA (or standard input when DATA is '-' or absent) to TOPIC and\n"
            "prints the event id. Data is sent as a JSON string unless --json is given.\n\n"
            "Options:\n"
            "  -e, --event KIND  the event kind (default: message)\n"
            "  -j, --json        DATA is JSON (an object, array, number, ...)\n"
            "  -l, --lines       publish each line of standard input as one event,\n"
            "                    printing one id per line (blank lines are skipped)\n"
            "  -b, --batch FILE  publish the NDJSON lines of FILE ('-': standard input) in one\n"
            "                    request: each line "
            "{\"topic\":..,\"event\":..,\"data\":..,\"key\":..}\n"
            "                    (event, data, key optional; blank lines skipped); all or none\n"
            "                    are published; prints one id per line\n"
            "  -k, --key KEY     idempotency key (1-128 visible ASCII bytes): publishing again\n"
            "                    with the same key publishes nothing new and prints the first\n"
            "                    event's id (default: a fresh key, which the client reuses\n"
            "                    when it resends after a lost connection)\n" CLI_GLOBAL_HELP);
}

/* Turns input into the data JSON for the library: as given for --json, else a string. */
static char *to_json(const char *text, bool json)
{
    if (json)
        return strdup(text);
    json_t *s = json_string(text);
    char *out = s ? json_dumps(s, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
    json_decref(s);
    return out;
}

static int publish_one(struct cli *cli, herald_client *c, const char *topic, const char *kind,
                       const char *key, const char *text, bool json)
{
    char *data = to_json(text, json);
    if (!data) {
        fprintf(stderr, "herald: the data is not valid UTF-8 text\n");
        return EXIT_USAGE;
    }
    char id[HERALD_ID_SIZE];
    herald_error e = {0};
    bool dup = false;
    int r = herald_publish_key(c, topic, kind, data, key, cli->timeout_ms, id, &dup, &e);
    free(data);
    if (r)
        return cli_fail(&e);
    if (dup)
        cli_notice(cli, "the server already had this event (same key); nothing new was published");
    printf("%s\n", id);
    return fflush(stdout) == 0 ? EXIT_OK : EXIT_CONNECT;
}

/* ---- --lines ------------------------------------------------------------------------------ */

struct slot {
    bool done;
    int status;
    herald_error err;
    char id[HERALD_ID_SIZE];
    unsigned long line;
};

struct lines {
    struct slot ring[WINDOW];
    size_t head, count;
    int rc; /* exit code of the first failure */
};

static void on_reply(herald_client *c, const herald_reply *r, void *arg)
{
    struct slot *s = arg;
    (void)c;
    s->done = true;
    s->status = r->status;
    s->err = r->error;
    if (r->status == 0 && r->event_id)
        snprintf(s->id, sizeof(s->id), "%s", r->event_id);
}

static void fail_line(struct lines *l, unsigned long line, const herald_error *e)
{
    int code = cli_exit_code(e);
    if (e->status == HERALD_E_TOO_LARGE)
        fprintf(stderr, "herald: line %lu: %s: %s\n", line, e->server_code, e->message);
    else if (code == EXIT_REJECTED)
        fprintf(stderr, "herald: line %lu: rejected by the server: %s\n", line, e->message);
    else
        fprintf(stderr, "herald: line %lu: %s\n", line, e->message);
    if (!l->rc)
        l->rc = code;
}

/* Prints finished results in input order. */
static void flush_ready(struct lines *l)
{
    while (l->count && l->ring[l->head].done) {
        struct slot *s = &l->ring[l->head];
        if (s->status == 0)
            printf("%s\n", s->id);
        else
            fail_line(l, s->line, &s->err);
        l->head = (l->head + 1) % WINDOW;
        l->count--;
    }
    if (fflush(stdout) != 0 && !l->rc)
        l->rc = EXIT_CONNECT;
}

/* Runs callbacks until fewer than `max_pending` requests remain; false on no progress. */
static bool drain(struct cli *cli, herald_client *c, struct lines *l, size_t max_pending)
{
    while (l->count > max_pending) {
        int n = herald_process(c, cli->timeout_ms);
        flush_ready(l);
        if (n == 0 || n == HERALD_E_CLOSED) {
            if (l->count <= max_pending)
                break;
            fprintf(stderr, "herald: no answer from the server within %d ms\n", cli->timeout_ms);
            return false;
        }
    }
    return true;
}

/* Reads one line of at most max bytes (the newline is dropped). Returns its length, -1 at
 * the end of input, or -2 for a longer line (which is skipped). */
static long read_line(FILE *f, char **buf, size_t *cap, size_t max)
{
    size_t n = 0;
    int ch;
    bool any = false, too_long = false;
    while ((ch = fgetc(f)) != EOF) {
        any = true;
        if (ch == '\n')
            break;
        if (too_long)
            continue;
        if (n + 2 > *cap) {
            size_t ncap = *cap ? *cap * 2 : 256;
            char *nb = n + 2 > max ? NULL : realloc(*buf, ncap);
            if (!nb) {
                too_long = true;
                continue;
            }
            *buf = nb;
            *cap = ncap;
        }
        (*buf)[n++] = (char)ch;
    }
    if (!any)
        return -1;
    if (too_long)
        return -2;
    if (!*buf) { /* an empty first line: nothing was stored yet */
        *buf = malloc(256);
        if (!*buf)
            return -2;
        *cap = 256;
    }
    if (n && (*buf)[n - 1] == '\r')
        n--;
    (*buf)[n] = '\0';
    return (long)n;
}

static int publish_lines(struct cli *cli, herald_client *c, const char *topic, const char *kind,
                         bool json)
{
    struct lines l = {.rc = 0};
    char *buf = NULL;
    size_t cap = 0;
    unsigned long lineno = 0;
    long n;
    while ((n = read_line(stdin, &buf, &cap, INPUT_MAX)) != -1) {
        lineno++;
        if (n == -2) {
            herald_error e = {.status = HERALD_E_INVALID};
            snprintf(e.message, sizeof(e.message), "longer than %u bytes", INPUT_MAX);
            fail_line(&l, lineno, &e);
            continue;
        }
        if (n == 0)
            continue;
        if (!drain(cli, c, &l, WINDOW - 1)) {
            free(buf);
            return EXIT_CONNECT;
        }
        struct slot *s = &l.ring[(l.head + l.count) % WINDOW];
        *s = (struct slot){.line = lineno};
        l.count++;
        char *data = to_json(buf, json);
        int r = data ? herald_publish_async(c, topic, kind, data, on_reply, s, &s->err)
                     : HERALD_E_INVALID;
        if (!data)
            snprintf(s->err.message, sizeof(s->err.message), "not valid UTF-8 text");
        free(data);
        if (r) {
            s->done = true;
            s->status = s->err.status = r;
        }
        flush_ready(&l);
    }
    free(buf);
    if (ferror(stdin)) {
        fprintf(stderr, "herald: cannot read standard input: %s\n", strerror(errno));
        return EXIT_USAGE;
    }
    if (!drain(cli, c, &l, 0))
        return EXIT_CONNECT;
    return l.rc;
}

/* ---- --batch ------------------------------------------------------------------------------ */

/* Prints each event id of a batch answer on its own line. */
static int print_batch_ids(const char *body)
{
    json_t *v = json_loads(body, 0, NULL);
    json_t *evs = json_object_get(v, "events"), *ev;
    size_t i;
    json_array_foreach(evs, i, ev)
    {
        const char *id = json_string_value(json_object_get(ev, "id"));
        printf("%s\n", id ? id : "");
    }
    json_decref(v);
    return fflush(stdout) == 0 ? EXIT_OK : EXIT_CONNECT;
}

static int publish_batch(struct cli *cli, const char *path)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
    if (!f) {
        fprintf(stderr, "herald: cannot read %s: %s\n", path, strerror(errno));
        return EXIT_USAGE;
    }
    herald_batch *b = herald_batch_new();
    unsigned long *lines = NULL; /* the input line of each event, for messages */
    size_t n = 0, cap_lines = 0, cap = 0;
    char *buf = NULL;
    unsigned long lineno = 0;
    long len;
    int rc = b ? EXIT_OK : EXIT_CONNECT;
    herald_error e = {0};
    while (rc == EXIT_OK && (len = read_line(f, &buf, &cap, INPUT_MAX)) != -1) {
        lineno++;
        if (len == -2) {
            fprintf(stderr, "herald: line %lu: longer than %u bytes\n", lineno, INPUT_MAX);
            rc = EXIT_USAGE;
            break;
        }
        if (len == 0 || strspn(buf, " \t") == (size_t)len)
            continue;
        if (n == cap_lines) {
            size_t nc = cap_lines ? cap_lines * 2 : 256;
            unsigned long *nl = realloc(lines, nc * sizeof(*nl));
            if (!nl) {
                fprintf(stderr, "herald: out of memory\n");
                rc = EXIT_CONNECT;
                break;
            }
            lines = nl;
            cap_lines = nc;
        }
        if (herald_batch_add_line(b, buf, &e) != 0) {
            fprintf(stderr, "herald: line %lu: %s\n", lineno, e.message);
            rc = EXIT_USAGE;
            break;
        }
        lines[n++] = lineno;
    }
    free(buf);
    if (rc == EXIT_OK && ferror(f)) {
        fprintf(stderr, "herald: cannot read %s: %s\n", path, strerror(errno));
        rc = EXIT_USAGE;
    }
    if (f != stdin)
        fclose(f);
    if (rc == EXIT_OK && n == 0) {
        fprintf(stderr, "herald: %s has no events\n", path);
        rc = EXIT_USAGE;
    }
    herald_options *o = rc == EXIT_OK ? cli_lib_options(cli) : NULL;
    if (rc == EXIT_OK && !o)
        rc = EXIT_USAGE;
    if (rc == EXIT_OK) {
        char *body = NULL;
        size_t bad = 0;
        cli_exit_on_signals();
        if (herald_publish_batch(cli->url, o, b, &body, &bad, &e) == 0) {
            rc = print_batch_ids(body);
            herald_free(body);
        } else if (bad > 0 && bad <= n) {
            /* The server counts the events it got; say which input line that was. */
            const char *msg = strchr(e.message, ':');
            fprintf(stderr, "herald: line %lu: rejected by the server:%s\n", lines[bad - 1],
                    msg ? msg + 1 : e.message);
            rc = cli_exit_code(&e);
        } else {
            rc = e.status == HERALD_E_INVALID ? cli_fail_connect(&e) : cli_fail(&e);
        }
    }
    herald_options_free(o);
    herald_batch_free(b);
    free(lines);
    return rc;
}

int cmd_publish(struct cli *cli, int argc, char **argv)
{
    enum { OPT_EVENT = OPT_FIRST_LOCAL, OPT_JSON, OPT_LINES };
    static const struct option longopts[] = {
        CLI_GLOBAL_LONGOPTS,
        {"event", required_argument, NULL, 'e'},
        {"json", no_argument, NULL, 'j'},
        {"lines", no_argument, NULL, 'l'},
        {"key", required_argument, NULL, 'k'},
        {"batch", required_argument, NULL, 'b'},
        {NULL, 0, NULL, 0},
    };
    const char *kind = NULL, *key = NULL, *batch = NULL;
    bool json = false, lines = false;
    int opt;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":e:jlk:b:qh", longopts, NULL)) != -1) {
        int g = cli_global_option(cli, "publish", opt, optarg);
        if (g < 0)
            return EXIT_USAGE;
        if (g > 0)
            continue;
        switch (opt) {
        case 'e':
            kind = optarg;
            break;
        case 'j':
            json = true;
            break;
        case 'l':
            lines = true;
            break;
        case 'b':
            batch = optarg;
            break;
        case 'k':
            if (!*optarg || strlen(optarg) > HERALD_KEY_MAX)
                return cli_usage_error("publish", "--key needs 1-%d visible ASCII bytes",
                                       HERALD_KEY_MAX);
            for (const char *p = optarg; *p; p++)
                if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f)
                    return cli_usage_error("publish", "--key needs 1-%d visible ASCII bytes",
                                           HERALD_KEY_MAX);
            key = optarg;
            break;
        case 'h':
            usage(stdout);
            return EXIT_OK;
        case ':':
            return cli_usage_error("publish", "option '%s' needs a value", argv[optind - 1]);
        default:
            return cli_usage_error("publish", "unknown option '%s'", argv[optind - 1]);
        }
    }
    int left = argc - optind;
    if (batch) {
        if (left > 0 || lines || key || kind || json)
            return cli_usage_error("publish", "--batch takes everything from its lines: no "
                                              "TOPIC, DATA, --lines, --key, --event or --json");
        return publish_batch(cli, batch);
    }
    if (left < 1)
        return cli_usage_error("publish", "missing TOPIC");
    if (left > 2)
        return cli_usage_error("publish", "too many arguments (quote DATA with spaces)");
    const char *topic = argv[optind];
    const char *data = left == 2 ? argv[optind + 1] : NULL;
    bool from_stdin = !data || strcmp(data, "-") == 0;
    if (lines && !from_stdin)
        return cli_usage_error("publish", "--lines reads standard input: give '-' or no DATA");
    if (lines && key)
        return cli_usage_error("publish", "--key names one event; it cannot go with --lines");

    char *input = NULL;
    if (from_stdin && !lines) {
        size_t len = 0;
        input = cli_read_all(stdin, INPUT_MAX, &len);
        if (!input) {
            fprintf(stderr, "herald: cannot read standard input: %s\n",
                    errno == EFBIG ? "more than 16 MiB" : strerror(errno));
            return EXIT_USAGE;
        }
        if (strlen(input) != len) {
            free(input);
            fprintf(stderr, "herald: standard input contains a NUL byte\n");
            return EXIT_USAGE;
        }
        /* `echo hello | herald publish t -` publishes "hello", not "hello\n". */
        if (len && input[len - 1] == '\n')
            input[--len] = '\0';
        if (len && input[len - 1] == '\r')
            input[--len] = '\0';
        data = input;
    }

    if (json && !lines) {
        /* Bad input is a usage error whether or not the server is up: check before connecting. */
        json_error_t jerr;
        json_t *v = json_loads(data, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
        if (!v) {
            fprintf(stderr, "herald: DATA is not JSON: %s (line %d, column %d)\n", jerr.text,
                    jerr.line, jerr.column);
            free(input);
            return EXIT_USAGE;
        }
        json_decref(v);
    }

    herald_options *o = cli_lib_options(cli);
    if (!o) {
        free(input);
        return EXIT_USAGE;
    }
    herald_error e = {0};
    herald_client *c = herald_connect(cli->url, o, &e);
    herald_options_free(o);
    if (!c) {
        free(input);
        return cli_fail_connect(&e);
    }
    int rc = lines ? publish_lines(cli, c, topic, kind, json)
                   : publish_one(cli, c, topic, kind, key, data, json);
    herald_close(c);
    free(input);
    return rc;
}
