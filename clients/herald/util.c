/* SPDX-License-Identifier: MIT */
/*
 * Helpers shared by the herald subcommands: global options, error reporting and exit codes,
 * event printing in the two output formats, and the state file that lets `subscribe` and
 * `poll` continue where the previous run stopped.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "jsonspan.h"

int cli_global_option(struct cli *cli, const char *cmd, int opt, const char *arg)
{
    unsigned long v;
    switch (opt) {
    case OPT_URL:
        cli->url = arg;
        return 1;
    case OPT_TOKEN:
        cli->token = arg;
        return 1;
    case OPT_CACERT:
        cli->cacert = arg;
        return 1;
    case OPT_INSECURE:
        cli->insecure = true;
        return 1;
    case OPT_TIMEOUT:
        if (cli_parse_uint(arg, 1, 3600000, &v) < 0) {
            cli_usage_error(cmd, "--timeout needs milliseconds between 1 and 3600000");
            return -1;
        }
        cli->timeout_ms = (int)v;
        return 1;
    case 'q':
        cli->quiet = true;
        return 1;
    default:
        return 0;
    }
}

herald_options *cli_lib_options(const struct cli *cli)
{
    herald_options *o = herald_options_new();
    if (!o) {
        fprintf(stderr, "herald: out of memory\n");
        return NULL;
    }
    if (herald_options_set_token(o, cli->token) != 0) {
        fprintf(stderr, "herald: the token must be 1-4096 bytes of printable ASCII without "
                        "spaces\n");
        herald_options_free(o);
        return NULL;
    }
    if (herald_options_set_ca_file(o, cli->cacert) != 0 ||
        herald_options_set_insecure(o, cli->insecure) != 0 ||
        herald_options_set_connect_timeout(o, cli->timeout_ms) != 0) {
        fprintf(stderr, "herald: out of memory\n");
        herald_options_free(o);
        return NULL;
    }
    return o;
}

int cli_exit_code(const herald_error *e)
{
    switch (e->status) {
    case HERALD_E_SERVER:
    case HERALD_E_AUTH:
        return EXIT_REJECTED;
    case HERALD_E_TOO_LARGE:
        /* Over the limit the server announced: what the server would answer, found before
         * sending (so not "rejected by the server", which never saw it). */
        return EXIT_REJECTED;
    case HERALD_E_INVALID:
        return EXIT_USAGE;
    default:
        return EXIT_CONNECT;
    }
}

int cli_fail(const herald_error *e)
{
    int code = cli_exit_code(e);
    if (e->status == HERALD_E_TOO_LARGE)
        fprintf(stderr, "herald: %s: %s\n", e->server_code, e->message);
    else if (code == EXIT_REJECTED)
        fprintf(stderr, "herald: rejected by the server: %s\n", e->message);
    else
        fprintf(stderr, "herald: %s\n", e->message[0] ? e->message : herald_strerror(e->status));
    return code;
}

int cli_fail_connect(const herald_error *e)
{
    /* A malformed URL or token is bad input (1), like any other bad argument. */
    if (e->status == HERALD_E_AUTH || e->status == HERALD_E_SERVER || e->status == HERALD_E_INVALID)
        return cli_fail(e);
    fprintf(stderr, "herald: %s\n", e->message[0] ? e->message : herald_strerror(e->status));
    return EXIT_CONNECT;
}

static void exit_on_signal(int sig)
{
    static const char msg[] = "herald: interrupted\n";
    ssize_t n = write(STDERR_FILENO, msg, sizeof(msg) - 1);
    (void)n;
    _exit(EXIT_SIGNAL_BASE + sig);
}

void cli_exit_on_signals(void)
{
    /* Installed even when the shell started us with SIGINT ignored (a background job of a
     * script): `herald poll -w 30 & kill -INT $!` must not end as if the poll succeeded. */
    struct sigaction sa = {.sa_handler = exit_on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "herald%s%s: ", cmd ? " " : "", cmd ? cmd : "");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'herald%s%s --help'.\n", cmd ? " " : "", cmd ? cmd : "");
    return EXIT_USAGE;
}

void cli_notice(const struct cli *cli, const char *fmt, ...)
{
    if (cli->quiet)
        return;
    va_list ap;
    fputs("herald: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

int cli_parse_uint(const char *s, unsigned long min, unsigned long max, unsigned long *out)
{
    if (!s || !*s || *s == '-' || *s == '+')
        return -1;
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

int cli_parse_format(const char *s, enum cli_format *out)
{
    if (strcmp(s, "json") == 0)
        *out = FORMAT_JSON;
    else if (strcmp(s, "text") == 0)
        *out = FORMAT_TEXT;
    else
        return -1;
    return 0;
}

/* Writes a string with the bytes that would break "one event per line" escaped. */
static void put_text(FILE *out, const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '\n')
            fputs("\\n", out);
        else if (ch == '\r')
            fputs("\\r", out);
        else if (ch == '\\')
            fputs("\\\\", out);
        else if (ch < 0x20 && ch != '\t')
            fprintf(out, "\\x%02x", ch);
        else
            fputc(ch, out);
    }
}

int cli_print_event(FILE *out, enum cli_format fmt, const char *json, size_t len)
{
    if (fmt == FORMAT_JSON) {
        fwrite(json, 1, len, out);
        fputc('\n', out);
        return ferror(out) ? -1 : 0;
    }
    json_t *ev = json_loadb(json, len, JSON_ALLOW_NUL, NULL);
    const char *topic = json_string_value(json_object_get(ev, "topic"));
    const char *kind = json_string_value(json_object_get(ev, "event"));
    json_t *data = json_object_get(ev, "data");
    fprintf(out, "%s %s ", topic ? topic : "?", kind ? kind : "message");
    size_t off, dl;
    if (json_is_string(data))
        put_text(out, json_string_value(data), json_string_length(data));
    else if (herald__json_member_span(json, len, "data", &off, &dl) == 0)
        put_text(out, json + off, dl);
    else
        fputs("null", out);
    fputc('\n', out);
    json_decref(ev);
    return ferror(out) ? -1 : 0;
}

json_t *cli_state_load(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        if (errno == ENOENT)
            return json_object();
        fprintf(stderr, "herald: cannot read the state file %s: %s\n", path, strerror(errno));
        return NULL;
    }
    json_error_t jerr;
    json_t *root = json_loadf(f, JSON_REJECT_DUPLICATES, &jerr);
    fclose(f);
    json_t *cursors = json_object_get(root, "cursors");
    if (!json_is_object(cursors)) {
        fprintf(stderr, "herald: the state file %s is not a herald state file%s%s\n", path,
                root ? "" : ": ", root ? "" : jerr.text);
        json_decref(root);
        return NULL;
    }
    const char *k;
    json_t *v;
    json_object_foreach(cursors, k, v)
    {
        if (!json_is_string(v) || json_string_length(v) > HERALD_ID_MAX) {
            fprintf(stderr, "herald: the state file %s has a bad cursor for \"%s\"\n", path, k);
            json_decref(root);
            return NULL;
        }
    }
    json_incref(cursors);
    json_decref(root);
    return cursors;
}

int cli_state_save(const char *path, json_t *cursors, const char *last)
{
    char tmp[4096];
    int n = snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    if (n < 0 || (size_t)n >= sizeof(tmp)) {
        fprintf(stderr, "herald: state file path too long\n");
        return -1;
    }
    json_t *root = json_pack("{s:i,s:O}", "version", 1, "cursors", cursors);
    if (root && last && *last)
        json_object_set_new(root, "last", json_string(last));
    char *text = root ? json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(root);
    if (!text) {
        fprintf(stderr, "herald: out of memory writing the state file\n");
        return -1;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    size_t len = strlen(text);
    bool ok = fd >= 0 && write(fd, text, len) == (ssize_t)len && write(fd, "\n", 1) == 1 &&
              fsync(fd) == 0;
    int saved = errno;
    if (fd >= 0 && close(fd) != 0)
        ok = false;
    free(text);
    /* rename() is atomic: a reader (or the next run after a crash) sees old or new, whole. */
    if (!ok || rename(tmp, path) != 0) {
        if (ok)
            saved = errno;
        unlink(tmp);
        fprintf(stderr, "herald: cannot write the state file %s: %s\n", path, strerror(saved));
        return -1;
    }
    return 0;
}

char *cli_read_all(FILE *f, size_t max, size_t *len)
{
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    if (!buf)
        return NULL;
    for (;;) {
        if (n + 1 >= cap) {
            if (cap > max) {
                free(buf);
                errno = EFBIG;
                return NULL;
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                return NULL;
            }
            buf = nb;
            cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - 1 - n, f);
        n += r;
        if (r == 0)
            break;
    }
    if (ferror(f) || n > max) {
        free(buf);
        errno = n > max ? EFBIG : EIO;
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}
